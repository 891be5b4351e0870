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
//! - [`on_signals`]: signals as events, handled by closures that may do
//!   what any handler may.
//! - [`critical_section`], [`critical`]: code handlers must not
//!   interrupt, blocked through a word shared with the kernel, with no
//!   system call.
//! - Helpers handlers and the main flow can share: [`println!`] and
//!   friends ([`io`]), [`sync::Mutex`], [`HandlerSafeAlloc`].
//! - [`Error`]: every way an AEM call can fail.
//!
//! # Handler safety
//!
//! An inline handler interrupts its thread between any two instructions,
//! as a signal handler does; it never interrupts another handler of the
//! process.  What a handler may call:
//!
//! - anything of this crate except [`run`] and [`wait`], which would hold
//!   back every other event of the thread (in debug builds, calling them
//!   from a handler panics with a message naming them; mark functions of
//!   your own the same way with [`not_handler_safe`]);
//! - data shared with the main flow only behind [`sync::Mutex`], or
//!   touched by the main flow only inside a [`critical_section`];
//! - output only through this crate's macros, not `std`'s, and logging
//!   through [`log`]'s macros with this crate's backend ([`mod@log`]);
//! - the heap only when the program's global allocator is
//!   [`HandlerSafeAlloc`].
//!
//! `errno` is saved and restored around every handler.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod alloc;
mod critical;
mod error;
mod event;
mod features;
mod inline;
pub mod io;
pub mod log;
mod owner;
mod signal;
mod socket;
pub mod sync;

pub use alloc::HandlerSafeAlloc;
pub use critical::{critical, critical_depth, critical_section, CriticalSection};
pub use error::{Errno, Error};
pub use event::{
    context_fd, register, wait, Clock, EventData, Expiry, FdEvents, Options, Record, Registration,
    Source, ONSTACK_MIN_SIZE,
};
pub use features::{features, FeatureSet, Features, SourceKind, SourceSet};
pub use inline::{
    block, in_handler, not_handler_safe, register_inline, run, unblock, Action, InlineRegistration,
};
pub use signal::{on_signals, Signal, SignalRegistration};
pub use socket::{
    on_accept, on_read, on_socket_state, AcceptFlags, ReadEvent, StateChange, TcpState,
};
