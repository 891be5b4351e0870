//! Safe access to the Asynchronous Event Mechanism (AEM).
//!
//! AEM lets a program register handlers that the kernel runs when events
//! fire, inline in the program's main flow like signal handlers.  This
//! crate is the typed layer over the raw `aem-syscalls` crate: users never
//! write `unsafe`, and every failure is an [`Error`].
//!
//! Today it offers the feature query, the safe entry point every program
//! starts with:
//!
//! ```no_run
//! match aem::features() {
//!     Ok(f) => println!("AEM ABI {} with {:?}", f.abi_version, f.features),
//!     Err(aem::Error::NotAvailable) => eprintln!("not an AEM kernel"),
//!     Err(e) => eprintln!("{e}"),
//! }
//! ```
//!
//! # Layout
//!
//! - [`features`]: what the running kernel implements ([`Features`]).
//! - [`register`], [`Registration`], [`wait`], [`context_fd`]: events
//!   taken as records (polled delivery), with RAII registrations.
//! - [`register_inline`]: closures the kernel runs in the main flow, like
//!   signal handlers ([`Action`], [`block`], [`run`]).
//! - [`on_accept`], [`on_read`], [`on_socket_state`]: the socket sources,
//!   typed: the kernel accepts, reads, or reports TCP state changes, and
//!   the closure gets an `OwnedFd`, the bytes, or a [`StateChange`].
//! - [`Error`]: every way an AEM call can fail.
//!
//! As the kernel side grows, so does this crate, one module per concern:
//! critical sections
//! that defer delivery through the per-thread word (`critical`), and
//! helpers that are safe to call from handlers and the main flow alike:
//! output, allocation and locks (`io`, `alloc`, `sync`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod event;
mod features;
mod inline;
mod socket;

pub use error::{Errno, Error};
pub use event::{
    context_fd, register, wait, Clock, EventData, Expiry, FdEvents, Options, Record, Registration,
    Source,
};
pub use features::{features, FeatureSet, Features, SourceKind, SourceSet};
pub use inline::{block, register_inline, run, unblock, Action, InlineRegistration};
pub use socket::{
    on_accept, on_read, on_socket_state, AcceptFlags, ReadEvent, StateChange, TcpState,
};
