//! Output that handlers and the main flow can share.
//!
//! `std`'s `println!` is not handler-safe: a handler that prints while it
//! interrupted a `println!` of its own thread finds standard output's
//! buffer borrowed, and panics, or splices its line into the middle of the
//! other.  [`crate::println!`] and its siblings format into a buffer on the
//! stack and write it with `write(2)` while they hold a process-wide
//! [`Mutex`], which defers the thread's events: lines from handlers, the
//! main flow and other threads never mix, and nothing can deadlock.
//!
//! They write straight to the file descriptor, unbuffered.  Mixing them
//! with `std`'s macros on a stream that inline handlers write to is not
//! line-safe: `std` writes a line in more than one `write(2)` when it is
//! longer than its 1 KiB buffer, or as it formats, and takes no lock of
//! this module, so a line of these macros -- from a handler that
//! interrupted `std::println!`, or from another thread -- can land inside
//! one of `std`'s.  Seen on 6.12.117-aem: with 1.5 KiB `std` lines in the
//! main flow and `aem::println!` in handlers, 50 to 228 split lines in
//! 2 s.  So in a program with inline handlers, print with these macros on
//! both sides; closures run by [`crate::dispatch`] interrupt nothing and
//! may use `std`'s.  Errors are ignored, as a handler could not act on
//! them; use [`write_fmt`] to see them.

use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use crate::sync::Mutex;

/// Serializes the macros' output across threads, and, being a [`Mutex`],
/// defers the writing thread's events.
static OUTPUT: Mutex<()> = Mutex::new(());

/// Stack buffer size: a line longer than this goes out in several writes,
/// still under the lock.  Small enough for an alternate signal stack.
const CHUNK: usize = 1024;

struct FdWriter {
    fd: RawFd,
    buf: [u8; CHUNK],
    len: usize,
    error: Option<io::Error>,
}

impl FdWriter {
    fn flush(&mut self) {
        let mut done = 0;
        while done < self.len && self.error.is_none() {
            let rest = &self.buf[done..self.len];
            // SAFETY: `rest` is a live, initialised byte slice.
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    self.error = Some(e);
                }
            } else if n == 0 {
                // write(2) took nothing and said no error: asking again
                // would spin for ever.
                self.error = Some(io::ErrorKind::WriteZero.into());
            } else {
                done += n as usize;
            }
        }
        self.len = 0;
    }
}

impl fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Bytes, not chars: a chunk may end inside a UTF-8 sequence, whose
        // rest follows in the next write.
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == CHUNK {
                self.flush();
            }
            let take = bytes.len().min(CHUNK - self.len);
            self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
        }
        Ok(())
    }
}

/// Format `args` and write them to `fd` as one unit: no other output of
/// this module (from any thread or handler) comes in between.
/// Handler-safe.
pub fn write_fmt(fd: BorrowedFd<'_>, args: fmt::Arguments<'_>) -> io::Result<()> {
    write_raw(fd.as_raw_fd(), args)
}

/// [`write_fmt`] to a descriptor number: the macros' standard output and
/// error, which may be closed (then `EBADF`, ignored).
fn write_raw(fd: RawFd, args: fmt::Arguments<'_>) -> io::Result<()> {
    if output_held_here() {
        // Output from inside output (a `Display` implementation that
        // prints, or a panic hook's message): waiting for the lock would
        // wait for ever; it goes out inside the line being written.
        return write_unlocked(fd, args);
    }
    let _lock = lock_output();
    write_unlocked(fd, args)
}

/// [`write_raw`] without the lock: for a caller that holds it, or one
/// whose own thread does ([`output_held_here`]).
pub(crate) fn write_unlocked(fd: RawFd, args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut w = FdWriter {
        fd,
        buf: [0; CHUNK],
        len: 0,
        error: None,
    };
    if w.write_fmt(args).is_err() {
        return Err(io::Error::other("a Display implementation failed"));
    }
    w.flush();
    w.error.map_or(Ok(()), Err)
}

/// The thread that holds [`OUTPUT`] (the address of its [`ME`]), or 0:
/// a panic hook must not wait for a lock its own thread holds (a
/// `Display` implementation that panics inside `aem::println!`).
static OUTPUT_OWNER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Its address names the thread (one fs-relative access, no system
    /// call).
    static ME: u8 = const { 0 };
}

fn me() -> usize {
    ME.with(|m| m as *const u8 as usize)
}

/// [`OUTPUT`], held: the lock and the critical section of its
/// [`Mutex`], with the owner noted.
pub(crate) struct OutputLock {
    _guard: crate::sync::MutexGuard<'static, ()>,
}

/// Take the output lock that the macros, the log backend and the panic
/// hook share.
pub(crate) fn lock_output() -> OutputLock {
    let guard = OUTPUT.lock();
    OUTPUT_OWNER.store(me(), Ordering::Relaxed);
    OutputLock { _guard: guard }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Before the guard (a field) releases the lock.
        OUTPUT_OWNER.store(0, Ordering::Relaxed);
    }
}

/// Whether the calling thread holds the output lock.  (Only the holder
/// writes its own address, inside the lock's critical section.)
pub(crate) fn output_held_here() -> bool {
    OUTPUT_OWNER.load(Ordering::Relaxed) == me()
}

/// Write all of `bytes` to `fd` (the caller holds the output lock):
/// retried on `EINTR` and short writes.
#[cfg(feature = "tracing")]
pub(crate) fn write_all_unlocked(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live, initialised byte slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        } else {
            bytes = &bytes[n as usize..];
        }
    }
    Ok(())
}

#[doc(hidden)]
pub fn _print(fd: RawFd, args: fmt::Arguments<'_>) {
    let _ = write_raw(fd, args);
}

/// `print!` that handlers and the main flow can share (see [`crate::io`]).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::io::_print(1, ::core::format_args!($($arg)*))
    };
}

/// `println!` that handlers and the main flow can share: each line is
/// written whole, never mixed with another (see [`crate::io`]).
#[macro_export]
macro_rules! println {
    () => {
        $crate::io::_print(1, ::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::io::_print(1, ::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// `eprint!` that handlers and the main flow can share.
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::io::_print(2, ::core::format_args!($($arg)*))
    };
}

/// `eprintln!` that handlers and the main flow can share.
#[macro_export]
macro_rules! eprintln {
    () => {
        $crate::io::_print(2, ::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::io::_print(2, ::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (r.into(), w.into())
    }

    #[test]
    fn long_output_is_written_whole() {
        let (mut r, w) = pipe();
        let line = "x".repeat(3 * CHUNK + 17);
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        });
        write_fmt(w.as_fd(), format_args!("{line}\n")).unwrap();
        drop(w);
        assert_eq!(reader.join().unwrap(), format!("{line}\n"));
    }

    #[test]
    fn errors_are_reported() {
        let e = write_raw(-1, format_args!("x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
