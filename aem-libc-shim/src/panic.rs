//! A panic hook that handlers and the main flow can share (SHIM-4).
//!
//! `std`'s default hook is not handler-safe.  It takes a process-wide
//! `std` mutex (the one `std::backtrace::Backtrace` takes while it walks
//! or resolves a stack) before it prints, so an inline handler that panics
//! while its own thread captures a backtrace -- error types that carry
//! one do, in the main flow of many programs -- waits for ever; with
//! `RUST_BACKTRACE` set it then walks and symbolizes the stack, which
//! allocates, opens files and takes the unwinder's locks, from a handler
//! that interrupted anything.
//!
//! [`install_hook`] replaces it with one that formats
//!
//! ```text
//! thread '<name>' (<tid>) panicked at <file>:<line>:<column>:
//! <message>
//! ```
//!
//! into a buffer on the stack and writes it to standard error with
//! `write(2)` under this crate's output lock ([`crate::io`]): no heap, no
//! `std` lock, no backtrace (`RUST_BACKTRACE` is ignored).  In an inline
//! handler it names the event (`panicked at <location> in the inline
//! handler of AEM event <id>:`) and then aborts the program at once, in
//! the hook: a handler's panic aborts the program anyway (at the
//! handler's boundary), and unwinding out of a handler would run the
//! unwinder -- which allocates the exception and takes the C library's
//! loader lock -- over a main flow that may be inside it (a backtrace
//! capture, a `dlopen`).  So a `catch_unwind` inside a handler does not
//! catch a panic while this hook is installed.  In the main flow the hook
//! returns and the panic unwinds as usual.
//!
//! What stays outside the hook's reach, done by `std` before it calls any
//! hook: a panic with a formatted message (`panic!("{x}")`, `unwrap` on an
//! error) formats the message into a `String`, which allocates through
//! the global allocator ([`crate::HandlerSafeAlloc`] makes that safe in a
//! handler; `panic!("a literal")` allocates nothing); and `std` reads its
//! hook under a `std` `RwLock`, so install the hook before registering
//! handlers, not while they may run.
//!
//! The thread's name is the kernel's (`comm`, at most 15 bytes), as
//! `std` cannot be asked for its own name of the thread without, on some
//! threads, allocating: `main` for the main thread, the name `std` gave a
//! named thread (cut to 15 bytes), and for an unnamed thread the name it
//! inherited from the thread that created it.
//!
//! ```no_run
//! aem::panic::install_hook();
//! ```

use core::any::Any;
use core::fmt;
use std::panic::PanicHookInfo;

/// Make [`hook`] the program's panic hook, replacing the one there was
/// (`std`'s default, usually), which is dropped.  Call it before
/// registering inline handlers.
pub fn install_hook() {
    std::panic::set_hook(Box::new(hook));
}

/// Like [`install_hook`], but a panic outside inline handlers goes to the
/// hook installed before (`std`'s default, with its backtraces, usually),
/// and only a panic in an inline handler to [`hook`].  The main flow's
/// panics then take `std`'s locks and may allocate, as they always did;
/// that is safe, since handlers keep out of `std`'s output and locks.
pub fn install_hook_chained() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::in_handler() {
            hook(info);
        } else {
            previous(info);
        }
    }));
}

/// The hook itself, for programs that install their own and call it:
/// prints the panic as the [module](self) describes and, in an inline
/// handler, aborts the program.  Handler-safe.
pub fn hook(info: &PanicHookInfo<'_>) {
    let message = payload_str(info.payload());
    let name = ThreadName::current();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let event = crate::inline::running_event();
    let args = format_args!(
        "thread '{name}' ({tid}) panicked at {location}{in_handler}:\n{message}\n{abort}",
        location = Location(info.location()),
        in_handler = InHandler(event),
        abort = if event.is_some() {
            "aem: a panic in an inline handler aborts the program\n"
        } else {
            ""
        },
    );
    // (From inside this crate's own output -- a `Display` implementation
    // that panicked in `aem::println!` -- it does not wait for the lock
    // its own thread holds.)
    crate::io::_print(2, args);
    if event.is_some() {
        std::process::abort();
    }
}

/// The panic's message, if it is a string (as `panic!` makes it).
pub(crate) fn payload_str(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "Box<dyn Any>"
    }
}

struct Location<'a>(Option<&'a core::panic::Location<'a>>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => fmt::Display::fmt(l, f),
            None => f.write_str("<unknown>"),
        }
    }
}

struct InHandler(Option<u32>);

impl fmt::Display for InHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " in the inline handler of AEM event {id}"),
            None => Ok(()),
        }
    }
}

/// The calling thread's name, on the stack: `main` for the main thread,
/// else the kernel's `comm`.
struct ThreadName {
    buf: [u8; 16],
    len: usize,
}

impl ThreadName {
    fn current() -> ThreadName {
        let mut name = ThreadName {
            buf: [0; 16],
            len: 0,
        };
        // SAFETY: getpid and gettid have no preconditions.
        let main = unsafe { libc::getpid() as libc::c_long == libc::syscall(libc::SYS_gettid) };
        if main {
            name.buf[..4].copy_from_slice(b"main");
            name.len = 4;
            return name;
        }
        // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into
        // the buffer, which has 16.
        if unsafe { libc::prctl(libc::PR_GET_NAME, name.buf.as_mut_ptr()) } == 0 {
            name.len = name.buf.iter().position(|&b| b == 0).unwrap_or(16);
        }
        name
    }
}

impl fmt::Display for ThreadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) if !s.is_empty() => f.write_str(s),
            // Cut inside a UTF-8 sequence, or unknown.
            _ => f.write_str("<unnamed>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_as_std_reads_them() {
        let s: Box<dyn Any + Send> = Box::new("lit");
        assert_eq!(payload_str(&*s), "lit");
        let s: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(payload_str(&*s), "owned");
        let s: Box<dyn Any + Send> = Box::new(7);
        assert_eq!(payload_str(&*s), "Box<dyn Any>");
    }

    #[test]
    fn thread_names_are_the_kernels() {
        let t = std::thread::Builder::new()
            .name("a-long-thread-name".into())
            .spawn(|| ThreadName::current().to_string())
            .unwrap();
        // std names the OS thread, cut to 15 bytes.
        assert_eq!(t.join().unwrap(), "a-long-thread-n");
    }
}
