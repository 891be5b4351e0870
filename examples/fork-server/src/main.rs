//! `aem-fork-server`: the pre-fork telecom server of EXEC-2, a TCP echo
//! server that handles each connection in a new process, forked for it by
//! the kernel.
//!
//! # The pattern: one process per connection
//!
//! The listener's accept event is registered with
//! [`aem::on_event_forked`]: the kernel accepts each connection and, where
//! it would have run an inline handler in the main thread, forks that
//! thread instead.  The child -- one thread, a copy-on-write copy of the
//! server -- runs the closure on the event's record, which holds the
//! connection (the child's descriptor; the kernel closes the server's
//! copy), echoes until the client closes, and exits with the closure's
//! return value as its status.
//!
//! Each connection thus lives in an address space of its own: a crash, a
//! leak or a hang in one connection's handling ends (or stays) with its
//! process, and neither the server nor any other connection sees it.
//! With [`aem::Reap::Auto`] the kernel reaps each child as it exits
//! (`AEM_EV_NOCLDWAIT`): no zombies, no `SIGCHLD`, so no `SIGCHLD` handler
//! and no `waitpid` loop in the server.
//!
//! # The server's flow is never interrupted
//!
//! No handler runs in the server: it only waits.  Its main thread blocks
//! SIGTERM and SIGINT and waits for them in `sigtimedwait(2)`.  A fork does
//! cut that wait short: the kernel wakes the thread to fork it on its way
//! out of the system call, which then returns `EINTR`, as after a signal
//! handler (the signal waits are never restarted; glibc's `sigwait(3)`
//! would retry unseen), so the thread simply waits again.  Once a second
//! without a stop signal it also enables the accept event: the kernel
//! disables it when it cannot fork a child (`RLIMIT_NPROC`, memory: the
//! `# fork: N children started, M refused` line of `/proc/<pid>/aem`
//! counts them) or accept a connection (`ENFILE`, `ENOMEM`), keeping the
//! connection for later; enabling an enabled event does nothing.
//!
//! # What a child may do
//!
//! The child is a `fork()` of the main thread at whatever point it had
//! reached -- inside `malloc`, holding the lock of `std`'s standard
//! output, anywhere -- so until it exits it may do only what is
//! async-signal-safe (the contract of [`aem::on_event_forked`]).  The
//! closure makes raw system calls (`read`, `write`, `close`,
//! `sigprocmask`) on a buffer on its stack, and adds to atomics; it never
//! allocates, prints with `std`, or takes a lock.  It first closes what
//! it inherited and does not need -- the listener, so that the port is
//! the server's alone and is free once the server exits, and standard
//! output, so that whoever reads the server's output sees it end with the
//! server -- and unblocks SIGTERM and SIGINT, so that a child can be
//! stopped like any process (as an interactive ^C stops the children with
//! the server).
//!
//! # Totals
//!
//! Only the children see the bytes, and their memory is their own, so the
//! counts live in a shared anonymous mapping (`MAP_SHARED`) made before
//! the first fork: each child adds its connection and the bytes it echoes
//! to atomics there, and the server reads them when it stops.  The
//! atomics are all that the processes share, and no lock: a child that
//! dies leaves them consistent.
//!
//! # Protocol
//!
//! Shared with `aem-echo-server` and `aem-pool-server`: `--addr
//! HOST:PORT` (default `127.0.0.1:7007`); the first line on standard
//! output is `listening on ADDR`; on SIGTERM or SIGINT the server prints
//! `served N connections, B bytes` and exits with status 0: N counts the
//! connections children took over, B the bytes they echoed, those of
//! children still serving included as far as they got.  Children still
//! serving when the server stops finish their connections on their own.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use aem::{AcceptFlags, EventData, ForkRegistration, Options, Reap, Record, Source};

const USAGE: &str = "usage: aem-fork-server [--addr HOST:PORT]";

/// Bytes a child reads at a time, on its stack.
const READ_BUFFER: usize = 16 * 1024;

/// How long the server waits for a stop signal before it enables the
/// accept event again, in case the kernel disabled it.
const RESUME_EVERY: libc::timespec = libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// What the children did, in memory they share with the server.
struct Totals {
    /// Connections children took over.
    connections: AtomicU64,
    /// Bytes children echoed (wrote back).
    bytes: AtomicU64,
}

impl Totals {
    /// Zeroed totals in a shared anonymous mapping, inherited as shared
    /// by every child; never unmapped.
    fn shared() -> io::Result<&'static Totals> {
        // SAFETY: a new anonymous mapping; no memory of ours is touched.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size_of::<Totals>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: page-aligned, zeroed by the kernel (zero is a valid
        // AtomicU64), large enough, and mapped for the rest of the
        // process's life; only shared references are made to it.
        Ok(unsafe { &*p.cast::<Totals>() })
    }
}

/// The calling thread's `errno`.
fn errno() -> i32 {
    // SAFETY: the thread's own errno location, always valid.
    unsafe { *libc::__errno_location() }
}

/// In a child: write all of `bytes` to `fd`, through partial writes and
/// `EINTR`.  Async-signal-safe.
fn write_all(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: a live buffer of the length passed.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// In a child: echo the connection `fd` until the client closes it (0), or
/// until it fails (1).  Async-signal-safe: a stack buffer, raw calls.
fn echo(fd: RawFd, totals: &Totals) -> i32 {
    let mut buf = [0u8; READ_BUFFER];
    loop {
        // SAFETY: a live buffer of the length passed.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return 0;
        }
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return 1;
        }
        let chunk = &buf[..n as usize];
        if !write_all(fd, chunk) {
            return 1;
        }
        totals
            .bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// In a child: `aem-fork-server: accept failed: errno N` on standard
/// error, formatted on the stack.  Async-signal-safe.
fn report_accept_error(err: i32) {
    const PREFIX: &[u8] = b"aem-fork-server: accept failed: errno ";
    let mut line = [0u8; PREFIX.len() + 12];
    line[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 11];
    let mut len = 0;
    let mut v = err.unsigned_abs();
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut end = PREFIX.len();
    for &d in digits[..len].iter().rev() {
        line[end] = d;
        end += 1;
    }
    line[end] = b'\n';
    write_all(libc::STDERR_FILENO, &line[..=end]);
}

/// The forked handler: runs in the child the kernel forked for one
/// accepted connection, and returns its exit status.  Async-signal-safe
/// throughout (see the module docs).
fn serve_in_child(rec: &mut Record, totals: &Totals, stop: &libc::sigset_t) -> i32 {
    // SAFETY: plain calls on the child's own descriptors and signal
    // mask; the listener and standard output are used by no code of the
    // child (the server's objects that own them are never dropped here:
    // the child ends with this handler).
    unsafe {
        libc::sigprocmask(libc::SIG_UNBLOCK, stop, core::ptr::null_mut());
        if let EventData::Accept { listener, .. } = rec.data {
            libc::close(listener);
        }
        libc::close(libc::STDOUT_FILENO);
    }
    if let Some(conn) = rec.take_accepted() {
        totals.connections.fetch_add(1, Ordering::Relaxed);
        // Dropping `conn` closes the connection: `close(2)`.
        return echo(conn.as_raw_fd(), totals);
    }
    if let EventData::Accept { conn: Err(e), .. } = &rec.data {
        report_accept_error(e.0);
    }
    1
}

/// SIGTERM and SIGINT.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset fills the set it is given; sigaddset with valid
    // signal numbers.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Wait for a signal of `stop` (blocked), through the interruptions of
/// the forks; enable `accepting` again whenever a second passes without
/// one.
fn wait_for_stop(stop: &libc::sigset_t, accepting: &ForkRegistration) -> io::Result<()> {
    loop {
        // SAFETY: a valid signal set and timeout; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(stop, core::ptr::null_mut(), &RESUME_EVERY) };
        if sig > 0 {
            return Ok(());
        }
        match errno() {
            // The kernel forked this thread for a connection on its way
            // out of the wait.
            libc::EINTR => {}
            // A quiet second: accept again if the kernel had to stop.
            libc::EAGAIN => {
                if let Err(e) = accepting.enable() {
                    eprintln!("aem-fork-server: cannot resume accepting: {e}");
                }
            }
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// `--addr HOST:PORT`; `Err` holds the problem, empty for `--help`.
fn parse_args() -> Result<String, String> {
    let mut addr = "127.0.0.1:7007".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => addr = it.next().ok_or("--addr needs a value")?,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(addr)
}

fn run(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    // Blocked before anything can fork, and waited for below; each child
    // unblocks them.  The server has this one thread.
    let stop = stop_signals();
    // SAFETY: a valid signal set; the old mask is not wanted.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &stop, core::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    // Declared before the registration, so dropped after it.
    let listener = TcpListener::bind(addr)?;
    let totals = Totals::shared()?;
    // Blocking connections: each child reads and writes its own.
    let source = Source::accept(listener.as_fd(), AcceptFlags::CLOEXEC);
    // SAFETY: the handler runs in a child forked from this thread at any
    // point of its flow, possibly with std's stdout lock or the C
    // allocator's lock held; it takes neither.  It is async-signal-safe
    // as the contract asks: `serve_in_child` calls only sigprocmask,
    // close, read and write (signal-safe system calls) on a buffer on the
    // child's stack, moves the connection out of the record (no
    // allocation) and closes it, adds to atomics in a shared mapping
    // (lock-free) and returns; it never allocates, prints with `std`,
    // takes a lock, or panics on its own (its one slicing is in bounds).
    // The closure owns copies of `stop` and of a `'static` reference.
    let accepting = unsafe {
        aem::on_event_forked(source, Options::new(), Reap::Auto, move |rec| {
            serve_in_child(rec, totals, &stop)
        })
    }?;

    println!("listening on {}", listener.local_addr()?);
    // All the serving happens in the children; this thread only waits.
    wait_for_stop(&stop, &accepting)?;
    println!(
        "served {} connections, {} bytes",
        totals.connections.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}

fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-fork-server: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-fork-server: {e}");
            ExitCode::FAILURE
        }
    }
}
