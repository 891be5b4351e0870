//! Safe access to the Asynchronous Event Mechanism (AEM).
//!
//! AEM lets a program register handlers that the kernel runs when events
//! fire, inline in the program's main flow like signal handlers.  This
//! crate is the typed layer over the raw `aem-syscalls` crate, in three
//! modes: events taken as records ([`wait`]), closures run where the
//! program asks ([`on_event`] and [`dispatch`]: safe, whatever they do),
//! and preemptive inline handlers ([`register_inline`]: the fastest, and
//! `unsafe` to register, its caller vouching for what the handler touches;
//! see [Handler safety](#handler-safety)).  Every failure is an [`Error`].
//!
//! Every program starts with the feature query:
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
//! - [`Source`] (made with [`Source::fd`], [`Source::periodic`], ...) and
//!   [`Options`] (made with [`Options::new`] and chainable setters): what
//!   an event watches and how it is delivered, in every mode below.
//! - [`Topic`] (opened with [`TopicOptions`]) and [`ModuleType`]: the
//!   sources that are not files -- named publish/subscribe channels
//!   between processes and from the kernel ([`Source::topic`],
//!   [`EventData::Topic`]), and the event types drivers and modules add
//!   ([`Source::module`], [`EventData::Module`]).
//! - [`Pressure`] and [`wake_watchers`]: the sources that watch the
//!   system and memory -- CPU, memory or I/O pressure crossing a
//!   threshold, a PSI trigger ([`Source::overload`],
//!   [`EventData::Overload`]), and a 32-bit word changed, told by a
//!   futex wake after the store, from the process or through shared
//!   memory ([`Source::memory_watch`], [`Sharing`],
//!   [`EventData::MemoryWatch`]).
//! - [`register`], [`Registration`], [`wait`], [`context_fd`]: events
//!   taken as records (polled delivery), with RAII registrations.  A
//!   [`Record`] owns what it carries: an accepted connection not taken out
//!   of it ([`Record::take_accepted`]) is closed with it.
//! - [`Context`], [`Events`]: polled delivery for event loops: a
//!   descriptor that poll and epoll see readable while records are
//!   pending, and a nonblocking [`Context::try_wait`] into a reused
//!   buffer.  With the feature `mio`, a `Context` is a `mio::event::Source`;
//!   with the feature `tokio`, `AsyncContext` awaits records in a tokio
//!   runtime.  [`register_read`]: reads the kernel completes into a buffer
//!   the registration owns, delivered as records.
//! - [`on_event`], [`dispatch`], [`DispatchRegistration`]: closures for
//!   polled events, run by [`dispatch`] on the thread that calls it, where
//!   `std` printing, locks, any allocator and any `log` backend work.
//! - [`register_inline`] (`unsafe`): closures the kernel runs in the main
//!   flow, like signal handlers ([`Action`], [`block`], [`run`]).
//! - [`on_accept`], [`on_read`], [`on_read_shared`], [`on_socket_state`]
//!   (`unsafe`): the socket sources, typed: the kernel accepts, reads
//!   (into a buffer per registration, or one per thread), or reports TCP
//!   state changes, and the closure gets an `OwnedFd`, the bytes, or a
//!   [`StateChange`].
//! - [`Pool`], [`PoolRegistration`]: closures the kernel runs on a set of
//!   threads the pool owns (a handler pool), highest priority first,
//!   where, as in [`dispatch`], any Rust works.
//! - [`spawn_on_event`], [`on_event_forked`] (`unsafe`): a new process
//!   per event (the pre-fork server): a program run with the accepted
//!   connection as its standard I/O, or a closure run in a forked child;
//!   [`Reap`] chooses who reaps it.
//! - [`on_signals`] (`unsafe`): signals as events, handled by closures
//!   that may do what any inline handler may.
//! - [`critical_section`], [`critical`]: code handlers must not
//!   interrupt, blocked through a word shared with the kernel, with no
//!   system call.
//! - Helpers handlers and the main flow can share: [`println!`] and
//!   friends ([`io`]), the `lock_api` locks of [`sync`] ([`sync::Mutex`],
//!   [`sync::RwLock`], their mapped guards and timed attempts),
//!   [`HandlerSafeAlloc`] (over a heap apart from the C library's:
//!   [`HandlerSafeAlloc::separate`]), a `log` backend ([`mod@log`]), a
//!   `tracing-subscriber` writer (`aem::tracing`, feature `tracing`), and a
//!   panic hook ([`panic::install_hook`]).
//! - [`Error`]: every way an AEM call can fail.
//!
//! # Handler safety
//!
//! An inline handler interrupts its thread between any two instructions,
//! as a signal handler does; it never interrupts another handler of the
//! process.  Safe code could cause undefined behaviour through it -- a
//! thread-local `Cell<Option<Box<T>>>` that the main flow and a handler
//! both `take()` from is freed twice; `std`'s `println!` interrupted by
//! one that prints finds standard output's buffer borrowed; a
//! `std::sync::Mutex` held by the interrupted code deadlocks a handler
//! that locks it -- and the compiler cannot see what a closure will touch.
//! So the functions that register preemptive handlers ([`register_inline`],
//! [`on_accept`], [`on_read`], [`on_socket_state`], [`on_signals`]) are
//! `unsafe fn`, as `signal_hook_registry::register` is for signal actions:
//! their caller promises that the handler keeps the contract stated once,
//! in the [`# Safety` section of `register_inline`](register_inline#safety).
//!
//! In short (the contract has the details), what a handler may call:
//!
//! - anything of this crate except [`run`], [`wait`], [`dispatch`],
//!   [`on_event`] and dropping a [`DispatchRegistration`] (see the
//!   contract for how debug builds catch the first ones, and
//!   [`not_handler_safe`]);
//! - atomics, and data shared with the main flow behind [`sync::Mutex`]
//!   or [`sync::RwLock`], or touched by the main flow only inside a
//!   [`critical_section`];
//! - output only through this crate's macros ([`io`]), and logging through
//!   [`log`]'s macros with this crate's backend ([`mod@log`]), or through
//!   `tracing` events with this crate's writer, under the conditions that
//!   `aem::tracing` lists (one global subscriber, no spans in handlers);
//! - the heap only when the program's global allocator is
//!   [`HandlerSafeAlloc`] -- [`HandlerSafeAlloc::separate`], unless the
//!   main flow never calls C code that allocates (`opendir`, so
//!   `std::fs::read_dir`, `getaddrinfo`, `setenv`, ...; see
//!   [Which heap](crate::HandlerSafeAlloc#which-heap)).
//!
//! A panic in an inline handler aborts the program.  `std`'s default
//! panic hook is not handler-safe (it takes a `std` lock that the
//! interrupted code may hold, and allocates for backtraces):
//! [`panic::install_hook`] installs one that is, which reports the panic
//! with the handler's event and aborts at once.
//!
//! `errno` is saved and restored around every handler.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!(
    "AEM exists on x86_64 Linux only: its system calls and handler frames are x86_64 Linux ones"
);

mod alloc;
#[cfg(feature = "tokio")]
mod async_context;
mod context;
mod critical;
mod dispatch;
mod error;
mod event;
mod features;
mod fork;
mod inline;
pub mod io;
pub mod log;
mod memory_watch;
mod module_type;
mod overload;
mod owner;
pub mod panic;
mod pool;
mod read;
mod signal;
mod socket;
pub mod sync;
mod topic;
#[cfg(feature = "tracing")]
pub mod tracing;

pub use alloc::{HandlerSafeAlloc, SeparateHeap};
#[cfg(feature = "tokio")]
pub use async_context::AsyncContext;
pub use context::{Context, Events};
pub use critical::{critical, critical_depth, critical_section, CriticalSection};
pub use dispatch::{dispatch, on_event, DispatchRegistration};
pub use error::{Errno, Error};
pub use event::{
    context_fd, register, wait, Clock, EventData, Expiry, FdEvents, Options, Process, Record,
    Registration, Source, ONSTACK_MIN_SIZE,
};
pub use features::{features, FeatureSet, Features, SourceKind, SourceSet};
pub use fork::{on_event_forked, spawn_on_event, ForkRegistration, Reap};
pub use inline::{
    block, in_handler, not_handler_safe, register_inline, run, unblock, Action, InlineRegistration,
};
pub use memory_watch::{wake_watchers, Sharing};
pub use module_type::ModuleType;
pub use overload::{Pressure, Resource, Stall};
pub use pool::{Pool, PoolRegistration, WakeOrder};
pub use read::{register_read, ReadRegistration};
pub use signal::{on_signals, Signal, SignalRegistration};
pub use socket::{
    on_accept, on_read, on_read_shared, on_socket_state, AcceptFlags, ReadEvent, StateChange,
    TcpState, SHARED_READ_BUFFER,
};
pub use topic::{Topic, TopicInfo, TopicOptions};
