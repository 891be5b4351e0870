//! Records for tokio (feature `tokio`): an [`AsyncContext`] is a
//! [`Context`] in tokio's reactor, so that a task awaits records as it
//! awaits a socket.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use std::net::TcpListener;
//! use std::os::fd::AsFd;
//! use aem::{AcceptFlags, AsyncContext, Events, Options, Source};
//!
//! let listener = TcpListener::bind("127.0.0.1:8080")?;
//! let _accepting = aem::register(
//!     Source::accept(listener.as_fd(), AcceptFlags::NONBLOCK | AcceptFlags::CLOEXEC),
//!     Options::new(),
//! )?;
//! let ctx = AsyncContext::new()?;
//! let mut events = Events::with_capacity(64);
//! loop {
//!     // The kernel accepted these connections while taking the records.
//!     ctx.wait(&mut events).await?;
//!     for mut record in events.drain() {
//!         // The record owns the new connection until it is taken.
//!         if let Some(conn) = record.take_accepted() {
//!             println!("accepted {conn:?}");
//!         }
//!     }
//! }
//! # }
//! ```

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::context::{Context, Events};

/// A [`Context`] registered with the tokio reactor of the runtime it was
/// made in (feature `tokio`).
///
/// Records are the process's, whoever takes them: see
/// [Whose records](crate::Context#whose-records).  Several tasks may wait
/// on one `AsyncContext` (it is `Sync`); each record goes to one of them.
#[derive(Debug)]
pub struct AsyncContext {
    inner: AsyncFd<Context>,
}

impl AsyncContext {
    /// A new [`Context`], registered with the current tokio runtime's
    /// reactor.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without its I/O driver
    /// (`enable_io`), as [`AsyncFd::new`] does.
    pub fn new() -> io::Result<AsyncContext> {
        AsyncContext::from_context(Context::new()?)
    }

    /// Register `ctx` with the current tokio runtime's reactor (see
    /// [`AsyncContext::new`] for the panics).
    pub fn from_context(ctx: Context) -> io::Result<AsyncContext> {
        // SAFETY: a `Context` owns its descriptor (an `OwnedFd` it never
        // replaces), so the descriptor stays open and names the same file
        // until the `AsyncFd` gives the `Context` back or drops it, and
        // `as_raw_fd()` returns that one descriptor every time.
        let inner = unsafe { AsyncFd::register_with_interest(ctx, Interest::READABLE) }?;
        Ok(AsyncContext { inner })
    }

    /// The context.
    pub fn get_ref(&self) -> &Context {
        self.inner.get_ref()
    }

    /// Leave the reactor; the context again.
    pub fn into_inner(self) -> Context {
        self.inner.into_inner()
    }

    /// Wait until records are pending and take them, up to `events`'
    /// capacity; returns how many (at least 1).  What `events` held before
    /// is dropped.
    ///
    /// Cancel-safe: records are taken in the same poll that returns them,
    /// so a `wait` dropped unfinished (in `tokio::select!`) took none.
    pub async fn wait(&self, events: &mut Events) -> io::Result<usize> {
        loop {
            let mut ready = self.inner.readable().await?;
            // WouldBlock clears the readiness (unless an edge came since),
            // and we wait for the next.
            match ready.try_io(|ctx| ctx.get_ref().try_wait(events).map_err(io::Error::from)) {
                Ok(taken) => return taken,
                Err(_would_block) => continue,
            }
        }
    }
}
