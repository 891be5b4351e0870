//! A `tracing-subscriber` writer that handlers and the main flow can
//! share (SHIM-3; feature `tracing`).
//!
//! [`LineWriter`] is a [`MakeWriter`] for `tracing-subscriber`'s `fmt`
//! layer: each event's formatted line goes out whole, with `write(2)`,
//! under the output lock of [`crate::io`] (an [`crate::sync::Mutex`], so
//! the writing thread's handlers wait meanwhile).  Lines from handlers, the
//! main flow, other threads, [`crate::println!`] and [`crate::log`] never
//! mix.  It allocates nothing and ignores write errors, as the macros do
//! (an error returned to the `fmt` layer would make it report it with
//! `std`'s `eprintln!`).
//!
//! ```no_run
//! tracing_subscriber::fmt()
//!     .with_writer(aem::tracing::LineWriter::stderr())
//!     .init();
//! tracing::info!(port = 8080, "serving");
//! ```
//!
//! # What of `tracing` is handler-safe
//!
//! The writer is; `tracing` and `tracing-subscriber` were not written for
//! code that interrupts them, and an inline handler that emits events
//! relies on the following (read in `tracing-core` 0.1.36 and
//! `tracing-subscriber` 0.3.23):
//!
//! - **One global subscriber.**  With only a global default
//!   (`init()`, `set_global_default`), an event reaches the subscriber
//!   through a static, with no lock.  Once a scoped dispatcher exists
//!   (`with_default`, `set_default`), each event goes through a
//!   thread-local with a re-entrancy guard, and an event from a handler
//!   that interrupted the main flow inside `tracing` is silently dropped.
//! - **The heap.**  The `fmt` layer formats into a thread-local `String`;
//!   a handler that interrupted the main flow while it formats finds the
//!   buffer borrowed and formats into a new `String`.  Formatting
//!   allocates: the global allocator must be [`crate::HandlerSafeAlloc`].
//! - **A first event on each thread before its handlers run.**  The first
//!   use of that buffer, and of the registry's per-thread span stack, on a
//!   thread registers thread-local destructors, which calls the C
//!   library's `calloc` (not covered by [`crate::HandlerSafeAlloc`]), and
//!   the span stack's first use takes a global `std` mutex.  Emit an
//!   event (any level that is enabled) on the thread first.
//! - **No spans in handlers.**  Creating, entering or closing a span
//!   updates the registry's per-thread span stack (a `RefCell`) and its
//!   slab of spans, whose per-thread free lists are not atomic: a handler
//!   that did so while the interrupted code did the same would corrupt
//!   them.  Events only.
//! - **Spans in the main flow: inside critical sections, or not at
//!   all.**  The `fmt` layer looks up the current span for every event,
//!   borrowing the span stack; a handler's event that interrupts the main
//!   flow while `Span::enter` or the guard's drop holds that `RefCell`
//!   mutably (a few instructions) panics, which aborts the program.  A
//!   main flow that enters spans only inside [`crate::critical`] (or on
//!   threads without inline handlers) is safe.
//! - **No thread names or ids in the output.**  `with_thread_names` and
//!   `with_thread_ids` call `std::thread::current()`, which allocates on
//!   threads that have no handle yet (the main thread, in current `std`)
//!   and aborts the program if it interrupted itself doing so.
//! - **Filters without locks.**  A `LevelFilter` is an atomic; `EnvFilter`
//!   keeps per-thread scope stacks and locks (not enabled by this crate).
//!
//! Callsite registration (an event's first firing) is lock-free with one
//! dispatcher: a handler that hits a callsite the main flow is
//! registering sees it as "sometimes" interesting, and goes on.
//!
//! Where these cannot be kept, log from polled handlers ([`crate::dispatch`])
//! instead, where everything of `tracing` works as usual, or through
//! [`crate::log`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use tracing_subscriber::fmt::MakeWriter;

use crate::io::{lock_output, output_held_here, write_all_unlocked, OutputLock};

/// A [`MakeWriter`] whose writers write each event whole under this
/// crate's output lock (see [the module](self)).
#[derive(Debug, Clone, Copy)]
pub struct LineWriter {
    fd: RawFd,
}

impl LineWriter {
    /// Events to standard error (descriptor 2, which may be closed:
    /// then nothing is written).
    pub const fn stderr() -> LineWriter {
        LineWriter { fd: 2 }
    }

    /// Events to standard output (descriptor 1).
    pub const fn stdout() -> LineWriter {
        LineWriter { fd: 1 }
    }

    /// Events to `fd`, which stays open for the program's life.
    pub fn new(fd: BorrowedFd<'static>) -> LineWriter {
        LineWriter { fd: fd.as_raw_fd() }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            fd: self.fd,
            lock: None,
            started: false,
        }
    }
}

/// The writer of one event ([`LineWriter`]'s): it takes the output lock
/// at its first write and keeps it until dropped, so everything written
/// through it goes out together.  The `fmt` layer writes each event with
/// one `write_all`.  Not `Send`: the lock's critical section belongs to
/// the thread.
///
/// Printing with [`crate::println!`] and friends from the same thread
/// while holding one does not wait for ever (its line goes out inside the
/// event's).
pub struct EventWriter {
    fd: RawFd,
    lock: Option<OutputLock>,
    started: bool,
}

impl io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.started {
            self.started = true;
            // From inside this crate's output (a `Display` implementation
            // that emits an event while `aem::println!` formats it), the
            // thread holds the lock already.
            if !output_held_here() {
                self.lock = Some(lock_output());
            }
        }
        // Errors are ignored, as the macros ignore them.
        let _ = write_all_unlocked(self.fd, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl core::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EventWriter")
            .field("fd", &self.fd)
            .field("locked", &self.lock.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::critical::critical_depth;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, OwnedFd};

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (r.into(), w)
    }

    #[test]
    fn a_writer_holds_the_output_lock_from_its_first_write() {
        let w = LineWriter::stdout();
        let mut e = w.make_writer();
        assert_eq!(critical_depth(), 0);
        assert_eq!(e.write(b"").unwrap(), 0);
        assert_eq!(critical_depth(), 1);
        assert!(output_held_here());
        // Output from the same thread goes out, and does not wait.
        crate::print!("");
        drop(e);
        assert_eq!(critical_depth(), 0);
        assert!(!output_held_here());
    }

    /// Threads that log through `tracing` with this writer, each event a
    /// line longer than a pipe writes atomically (`PIPE_BUF`, 4 KiB): every
    /// line arrives whole, and every one arrives.
    #[test]
    fn events_from_threads_are_whole_lines() {
        const THREADS: usize = 4;
        const EVENTS: usize = 500;
        let (mut r, w) = pipe();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        });
        // Leaked: the writer needs it for the program's life.
        let fd: &'static OwnedFd = Box::leak(Box::new(w));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(LineWriter::new(fd.as_fd()))
            .without_time()
            .with_target(false)
            .finish();
        let dispatch = ::tracing::Dispatch::new(subscriber);
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let dispatch = dispatch.clone();
                std::thread::spawn(move || {
                    ::tracing::dispatcher::with_default(&dispatch, || {
                        for n in 0..EVENTS {
                            let len = 5000 + n % 3000;
                            let payload = char::from(b'a' + (n % 26) as u8).to_string().repeat(len);
                            ::tracing::info!(t, n, len, payload = %payload, "event");
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(dispatch);
        // SAFETY: the last writer is gone; this closes the pipe's write
        // end so that the reader sees its end.
        unsafe { libc::close(fd.as_raw_fd()) };
        let out = reader.join().unwrap();
        let mut seen = vec![0usize; THREADS];
        for line in out.lines() {
            let field = |k: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or_else(|| panic!("no {k} in a broken line: {line:.80}"))
            };
            let len: usize = field("len").parse().unwrap();
            let payload = field("payload");
            assert_eq!(payload.len(), len, "a broken line: {line:.80}");
            let first = payload.as_bytes()[0];
            assert!(payload.bytes().all(|b| b == first), "mixed: {line:.80}");
            seen[field("t").parse::<usize>().unwrap()] += 1;
        }
        assert_eq!(seen, vec![EVENTS; THREADS]);
    }
}
