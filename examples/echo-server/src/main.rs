//! `aem-echo-server`: a single-threaded TCP echo server on AEM inline
//! handlers, written with the `aem` API alone.  Its only `unsafe` is the
//! registration of those handlers, each with why its handler keeps the
//! contract of [`aem::register_inline`] (what a handler may touch).
//!
//! Which mode: the preemptive one, for the lowest latency (a connection's
//! bytes are echoed wherever the main flow is) at the price of that
//! contract.  `aem-tokio-echo` (`examples/tokio-server`) is the same
//! server in the safe records mode: the kernel still accepts and reads,
//! and the program takes the results where it awaits them, free to use
//! any library.
//!
//! The kernel accepts each connection ([`aem::on_accept`]) and reads each
//! one into a buffer ([`aem::on_read`]); the handlers, run inline in the
//! main flow, write the bytes straight back.  The main flow only waits
//! ([`aem::run`]).
//!
//! Writes never block: connections are nonblocking.  When the socket takes
//! only part of a chunk, the rest is kept, the connection's reader is
//! disarmed (the kernel stops reading it, so TCP flow control pushes back
//! on the client) and a level-triggered writability registration
//! (`Source::Fd`, `OUT`) finishes the chunk; then it drops itself and
//! re-enables the reader.  A connection thus buffers at most one read
//! buffer of unsent bytes, however fast its client sends.
//!
//! Connections live in a thread-local table keyed by descriptor: handlers
//! never nest and the main flow never touches it, so a `RefCell` is enough.
//! A handler may drop its own registration (the `aem` crate frees the
//! closure when the handler returns), which is how connections end.
//!
//! SIGTERM and SIGINT arrive as one more event ([`aem::on_signals`]),
//! whose handler (at the highest priority) prints the totals and exits
//! with status 0.  A handler has to end the program itself: inline handlers
//! never end [`aem::run`], only a signal handler does, and one caught
//! while another handler runs would be lost to the restarted wait.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use aem::{AcceptFlags, Action, FdEvents, InlineRegistration, Options, ReadEvent, Source};

#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc<aem::SeparateHeap> = aem::HandlerSafeAlloc::separate();

const USAGE: &str = "usage: aem-echo-server [--addr HOST:PORT]";

/// Bytes the kernel reads per delivery, per connection; also the most a
/// connection ever holds unsent.
const READ_BUFFER: usize = 16 * 1024;

/// What the server did, for the last line it prints.
struct Stats {
    /// Connections accepted.
    connections: u64,
    /// Bytes echoed (written back).
    bytes: u64,
}

/// Written by the connection handlers, read by the shutdown handler.
static STATS: aem::sync::Mutex<Stats> = aem::sync::Mutex::new(Stats {
    connections: 0,
    bytes: 0,
});

/// One client connection.
///
/// Fields drop in order: the registrations go before the stream closes the
/// descriptor they watch.
struct Conn {
    /// The kernel reads the client's bytes into this registration's buffer.
    reader: Option<InlineRegistration>,
    /// Registered while `unsent` waits for room in the socket.
    writer: Option<InlineRegistration>,
    stream: TcpStream,
    /// Bytes read but not yet written back.
    unsent: Vec<u8>,
}

thread_local! {
    /// Open connections by descriptor; touched only by handlers.
    static CONNS: RefCell<BTreeMap<RawFd, Conn>> = const { RefCell::new(BTreeMap::new()) };
    /// The accepting registration, to enable again after `EMFILE`.
    static ACCEPTING: RefCell<Option<InlineRegistration>> = const { RefCell::new(None) };
    /// The kernel stopped accepting for want of descriptors.
    static ACCEPT_PAUSED: Cell<bool> = const { Cell::new(false) };
}

/// How a write attempt ended.
enum Sent {
    All,
    Blocked,
    Failed,
}

/// Write as much of `bytes` as the socket takes now; returns how much it
/// took and why it stopped.
fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> (usize, Sent) {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return (done, Sent::Failed),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (done, Sent::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (done, Sent::Failed),
        }
    }
    (done, Sent::All)
}

fn count_echoed(n: usize) {
    if n > 0 {
        STATS.lock().bytes += n as u64;
    }
}

/// What a handler decided for its connection.
enum Next {
    /// Everything was echoed: read on.
    Read,
    /// Bytes wait for room in the socket: the writer is registered.
    Write,
    /// End of stream or an error: close.
    Close,
}

/// End the connection on `fd`, from a handler of one of its registrations
/// (which may drop its own registration).
fn close(fd: RawFd) {
    let conn = CONNS.with(|c| c.borrow_mut().remove(&fd));
    // Unregisters both events, then closes the descriptor.
    drop(conn);
    if ACCEPT_PAUSED.replace(false) {
        // A descriptor is free again: accept what waits in the backlog.
        ACCEPTING.with(|a| {
            if let Some(accepting) = &*a.borrow() {
                if let Err(e) = accepting.enable() {
                    aem::eprintln!("aem-echo-server: cannot resume accepting: {e}");
                }
            }
        });
    }
}

fn on_accept(conn: Result<OwnedFd, aem::Errno>) -> Action {
    let fd = match conn {
        Ok(fd) => fd,
        Err(e) => {
            // EMFILE and the like: the connection waits in the backlog and
            // the kernel disabled the event; a `close` enables it again.
            aem::eprintln!("aem-echo-server: accept: {e}");
            ACCEPT_PAUSED.set(true);
            return Action::Rearm;
        }
    };
    let raw = fd.as_raw_fd();
    let stream = TcpStream::from(fd);
    STATS.lock().connections += 1;
    // The reader's handler cannot run before this one returns (handlers
    // never nest), so the connection is in the table by then.
    // SAFETY: `on_bytes` touches CONNS, a thread-local RefCell that only
    // handlers use (and handlers never nest), and STATS, an
    // aem::sync::Mutex; it writes with write(2), prints with
    // aem::eprintln!, registers and drops registrations, and allocates,
    // with this binary's global allocator aem::HandlerSafeAlloc.
    let reader = unsafe {
        aem::on_read(stream.as_fd(), READ_BUFFER, Options::default(), move |ev| {
            on_bytes(raw, ev)
        })
    };
    match reader {
        Ok(reader) => {
            let conn = Conn {
                reader: Some(reader),
                writer: None,
                stream,
                unsent: Vec::new(),
            };
            CONNS.with(|c| c.borrow_mut().insert(raw, conn));
        }
        // Dropping `stream` closes the connection.
        Err(e) => aem::eprintln!("aem-echo-server: cannot read a connection: {e}"),
    }
    Action::Rearm
}

/// The reader's handler: echo what the kernel read.
fn on_bytes(fd: RawFd, ev: ReadEvent<'_>) -> Action {
    let ReadEvent::Data(bytes) = ev else {
        // End of stream, or an error: the kernel disabled the reader.
        close(fd);
        return Action::Unregister;
    };
    let next = CONNS.with(|c| {
        let mut conns = c.borrow_mut();
        let Some(conn) = conns.get_mut(&fd) else {
            return Next::Close;
        };
        let (n, sent) = write_some(&conn.stream, bytes);
        count_echoed(n);
        match sent {
            Sent::All => Next::Read,
            Sent::Failed => Next::Close,
            Sent::Blocked => {
                conn.unsent.extend_from_slice(&bytes[n..]);
                // Level-triggered: delivered whenever the socket has room,
                // so no wakeup is lost between the failed write and now.
                // SAFETY: `on_writable` touches the same state as this
                // handler, in the same handler-safe ways (see `on_accept`).
                let writer = unsafe {
                    aem::register_inline(
                        Source::fd(conn.stream.as_fd(), FdEvents::OUT),
                        Options::new().level(true),
                        move |_| on_writable(fd),
                    )
                };
                match writer {
                    Ok(writer) => {
                        conn.writer = Some(writer);
                        Next::Write
                    }
                    Err(e) => {
                        aem::eprintln!("aem-echo-server: cannot watch a connection: {e}");
                        Next::Close
                    }
                }
            }
        }
    });
    match next {
        Next::Read => Action::Rearm,
        // Read no more until the rest is out.
        Next::Write => Action::Disarm,
        Next::Close => {
            close(fd);
            Action::Unregister
        }
    }
}

/// The writer's handler: the socket has room for what is left.
fn on_writable(fd: RawFd) -> Action {
    let next = CONNS.with(|c| {
        let mut conns = c.borrow_mut();
        let Some(conn) = conns.get_mut(&fd) else {
            return Next::Close;
        };
        let (n, sent) = write_some(&conn.stream, &conn.unsent);
        count_echoed(n);
        conn.unsent.drain(..n);
        match sent {
            Sent::Blocked => Next::Write,
            Sent::Failed => Next::Close,
            Sent::All => {
                // Back to reading.  Dropping our own registration here is
                // allowed: the closure is freed when this handler returns.
                drop(conn.writer.take());
                match conn.reader.as_ref().map(InlineRegistration::enable) {
                    Some(Ok(())) => Next::Read,
                    _ => Next::Close,
                }
            }
        }
    });
    match next {
        Next::Write => Action::Rearm,
        // The writer is already unregistered (dropped above).
        Next::Read => Action::Unregister,
        Next::Close => {
            close(fd);
            Action::Unregister
        }
    }
}

/// The shutdown handler: report, and end the program.
fn on_shutdown() -> ! {
    let (connections, bytes) = {
        let stats = STATS.lock();
        (stats.connections, stats.bytes)
    };
    aem::println!("served {connections} connections, {bytes} bytes");
    std::process::exit(0)
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
    let listener = TcpListener::bind(addr)?;
    // SAFETY: `on_shutdown` locks STATS, an aem::sync::Mutex, and prints
    // with aem::println!.  Its std::process::exit is not async-signal-safe
    // (libc exit() runs atexit handlers, flushes C stdio and runs this
    // thread's TLS destructors, CONNS's among them): that is sound only
    // because, while this is registered, the main flow uses neither C
    // stdio nor atexit, never touches CONNS, touches ACCEPTING only inside
    // a critical section, and std's exit-time flush of its stdout only
    // try-locks it (the main flow prints with aem::println! alone).
    let _shutdown = unsafe {
        aem::on_signals(
            &[aem::Signal::TERM, aem::Signal::INT],
            Options::new().priority(99),
            |_| on_shutdown(),
        )
    }?;
    // SAFETY: `on_accept` touches ACCEPT_PAUSED and CONNS, thread-locals
    // that only handlers use (handlers never nest), ACCEPTING, which the
    // main flow writes only inside aem::critical, and STATS, an
    // aem::sync::Mutex; it prints with aem::eprintln!, registers readers
    // (see there) and allocates, with this binary's global allocator
    // aem::HandlerSafeAlloc.
    let accepting = unsafe {
        aem::on_accept(
            listener.as_fd(),
            AcceptFlags::NONBLOCK | AcceptFlags::CLOEXEC,
            Options::default(),
            on_accept,
        )
    }?;
    // Handlers read ACCEPTING: keep them out while the main flow writes it.
    aem::critical(|| ACCEPTING.with(|a| *a.borrow_mut() = Some(accepting)));

    aem::println!("listening on {}", listener.local_addr()?);
    loop {
        // Returns only after a signal handler ran (none is installed: the
        // shutdown signals are blocked and read through the signalfd).
        match aem::run() {
            aem::Error::Os(e)
                if io::Error::from_raw_os_error(e.0).kind() == io::ErrorKind::Interrupted => {}
            e => return Err(e.into()),
        }
    }
}

fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(e) => {
            if !e.is_empty() {
                aem::eprintln!("aem-echo-server: {e}");
            }
            aem::eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            aem::eprintln!("aem-echo-server: {e}");
            ExitCode::FAILURE
        }
    }
}
