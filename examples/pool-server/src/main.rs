//! `aem-pool-server`: the worker-pool server of EXEC-3, a TCP echo server
//! whose every event is handled by a closure on an [`aem::Pool`], a set of
//! threads the kernel hands events to.  Safe Rust throughout.
//!
//! # The pattern, and why there is no epoll thread
//!
//! The usual worker-pool server has one thread in `epoll_wait` that hands
//! each ready connection to a worker through a queue: a wake-up, a context
//! switch and a lock per event, and a thread that does nothing but relay.
//! Here the kernel is the queue.  Each pool thread sleeps in
//! `aem_wait(AEM_WAIT_SERVE)`; when the listener or a connection is ready,
//! the kernel wakes the most recently idle pool thread (the warmest cache,
//! as an I/O completion port does), which runs that event's closure on its
//! way out of the call and goes back to sleep.  Pending events wait on one
//! queue for the whole pool, highest priority first, and a thread that
//! returns from a handler takes the next at once.  No thread of the
//! program polls, and nothing is handed over in user space: the main
//! thread only waits for the signal that stops the server.
//!
//! # Per-connection state
//!
//! The kernel never runs one event's handler on two threads at once, so a
//! connection's reader is serialised with itself, while different
//! connections are served in parallel.  Each connection's state (its
//! stream, read buffer and unsent bytes) lives in its closures, behind an
//! `Arc<Mutex<_>>` shared by the reader and, while one is needed, the
//! writer; the two never run at once (the reader is disabled while a
//! writer exists), so the lock is taken without contention, and a pool
//! closure may use `std` locks, printing and allocation as any thread
//! may.  A connection ends by dropping its registrations from its own
//! handler (the `aem` crate frees a running closure when it returns); the
//! last closure to go drops the stream, which closes the connection.
//!
//! # Back-pressure
//!
//! As in `aem-echo-server`: writes never block (connections are
//! nonblocking).  When the socket takes only part of a chunk, the rest is
//! kept, the connection's reader is disabled (nothing more is read from
//! the client, so TCP flow control pushes back on it) and a level-triggered
//! writability event (`Source::Fd`, `OUT`) finishes the chunk on the pool;
//! then it drops itself and enables the reader again.  A connection thus
//! holds at most one read buffer of unsent bytes, however fast its client
//! sends and however slowly it reads.
//!
//! # Protocol
//!
//! Shared with `aem-echo-server` and `aem-tokio-echo`: `--addr HOST:PORT`
//! (default `127.0.0.1:7007`); the first line on standard output is
//! `listening on ADDR`; on SIGTERM or SIGINT the server prints
//! `served N connections, B bytes` and exits with status 0.  `--threads N`
//! sets the pool's size (default 4).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use aem::{
    AcceptFlags, Action, EventData, FdEvents, Options, Pool, PoolRegistration, Record, Source,
};
use nix::sys::signal::{SigSet, Signal};

const USAGE: &str = "usage: aem-pool-server [--addr HOST:PORT] [--threads N]";

/// Pool threads, unless `--threads` says otherwise.
const DEFAULT_THREADS: usize = 4;

/// Bytes read per delivery, per connection; also the most a connection
/// ever holds unsent.
const READ_BUFFER: usize = 16 * 1024;

/// How long accepting pauses after the kernel could not accept for want of
/// descriptors (`EMFILE` and the like).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The handler pool.  In a static, not in a handler's closure: handlers
/// register further events with it, and a pool must never be dropped by
/// one of its own threads (its drop joins them).
static POOL: OnceLock<Pool> = OnceLock::new();

/// The listener's accept event, enabled again after a failed accept.
static ACCEPTING: OnceLock<PoolRegistration> = OnceLock::new();

/// The one-shot timer that resumes accepting, while one is pending.
static ACCEPT_RESUME: Mutex<Option<PoolRegistration>> = Mutex::new(None);

/// Connections accepted.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Bytes echoed (written back).
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The pool, once [`run`] started it.
fn pool() -> &'static Pool {
    POOL.get()
        .expect("the pool starts before any event is registered")
}

/// Lock `m`.  A panicking handler aborts the process (the `aem` crate
/// lets no panic unwind out of a handler), so a poisoned lock is never
/// seen by anyone: taking it as it is costs nothing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client connection, shared by its reader's and writer's closures.
struct Conn {
    /// Level-triggered readability of the stream: runs [`on_readable`].
    /// `None` once the connection is closed.
    reader: Option<PoolRegistration>,
    /// Registered while `unsent` waits for room in the socket: runs
    /// [`on_writable`].
    writer: Option<PoolRegistration>,
    /// The connection, nonblocking.
    stream: TcpStream,
    /// Where the reader reads into.
    buf: Box<[u8]>,
    /// Bytes read but not yet written back.
    unsent: Vec<u8>,
}

/// A connection as its closures hold it.
type Shared = Arc<Mutex<Conn>>;

/// How a write attempt ended.
enum Sent {
    /// Everything was written.
    All,
    /// The socket is full.
    Blocked,
    /// The connection is broken.
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

/// Count `n` bytes echoed.
fn count_echoed(n: usize) {
    BYTES.fetch_add(n as u64, Ordering::Relaxed);
}

/// End the connection `c`, from a handler of one of its events: both
/// events are unregistered, and each closure is freed at once or, for the
/// one running this, when it returns; the last of them drops the stream.
/// Returns the verdict for the calling handler.
fn close(mut c: MutexGuard<'_, Conn>) -> Action {
    let (reader, writer) = (c.reader.take(), c.writer.take());
    // Unlocked first: freeing a closure drops its share of the connection.
    drop(c);
    drop(writer);
    drop(reader);
    Action::Unregister
}

/// The accept event's handler: serve the connection the kernel accepted.
fn on_accept(rec: &mut Record) -> Action {
    if let Some(fd) = rec.take_accepted() {
        serve(fd);
    } else if let EventData::Accept { conn: Err(e), .. } = &rec.data {
        // The connection waits in the backlog, and the kernel disabled
        // the event until it is enabled again.
        eprintln!("aem-pool-server: accept: {e}");
        resume_accepting_later();
    }
    Action::Rearm
}

/// Enable the accept event again after [`ACCEPT_RETRY`], when descriptors
/// may have been freed, with a one-shot timer on the pool.
fn resume_accepting_later() {
    let timer = pool().on_event(
        Source::after(ACCEPT_RETRY),
        Options::new().oneshot(true),
        |_| {
            if let Some(Err(e)) = ACCEPTING.get().map(PoolRegistration::enable) {
                eprintln!("aem-pool-server: cannot resume accepting: {e}");
            }
            Action::Unregister
        },
    );
    match timer {
        // Replaces (and drops) the previous one, long fired.
        Ok(timer) => *lock(&ACCEPT_RESUME) = Some(timer),
        Err(e) => eprintln!("aem-pool-server: cannot schedule accepting: {e}"),
    }
}

/// Register the new connection `fd`'s reader on the pool.
fn serve(fd: OwnedFd) {
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let conn: Shared = Arc::new(Mutex::new(Conn {
        reader: None,
        writer: None,
        stream: TcpStream::from(fd),
        buf: vec![0; READ_BUFFER].into_boxed_slice(),
        unsent: Vec::new(),
    }));
    let mut c = lock(&conn);
    let shared = Arc::clone(&conn);
    // Registered disabled, and enabled once the connection holds it: the
    // reader may need its own registration as soon as it runs.
    let reader = pool().on_event(
        Source::fd(c.stream.as_fd(), FdEvents::IN),
        Options::new().level(true).disabled(true),
        move |_| on_readable(&shared),
    );
    match reader {
        Ok(reader) => {
            if let Err(e) = c.reader.insert(reader).enable() {
                eprintln!("aem-pool-server: cannot read a connection: {e}");
                close(c);
            }
        }
        // The closure is gone with the registration: dropping `conn`
        // closes the connection.
        Err(e) => eprintln!("aem-pool-server: cannot watch a connection: {e}"),
    }
}

/// The reader's handler: read what the client sent and echo it.
fn on_readable(shared: &Shared) -> Action {
    let mut c = lock(shared);
    let conn = &mut *c;
    let n = match (&conn.stream).read(&mut conn.buf) {
        // End of stream.
        Ok(0) => return close(c),
        Ok(n) => n,
        // Nothing after all, or a signal: level-triggered, so the kernel
        // calls again while the stream is readable.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Action::Rearm
        }
        Err(_) => return close(c),
    };
    let (sent, how) = write_some(&conn.stream, &conn.buf[..n]);
    count_echoed(sent);
    match how {
        Sent::All => Action::Rearm,
        Sent::Failed => close(c),
        Sent::Blocked => {
            conn.unsent.extend_from_slice(&conn.buf[sent..n]);
            // Read no more until the rest is out.  Disabled here, under
            // the lock, and not with `Action::Disarm`: the verdict is
            // applied only once this handler has returned, after the lock
            // is released, so it could come after the writer has already
            // finished and enabled the reader, and leave the connection
            // stalled for good.
            let disabled = conn.reader.as_ref().map(PoolRegistration::disable);
            if !matches!(disabled, Some(Ok(()))) {
                return close(c);
            }
            let shared = Arc::clone(shared);
            // Level-triggered: delivered whenever the socket has room, so
            // no wakeup is lost between the failed write and now.
            let writer = pool().on_event(
                Source::fd(conn.stream.as_fd(), FdEvents::OUT),
                Options::new().level(true),
                move |_| on_writable(&shared),
            );
            match writer {
                Ok(writer) => {
                    conn.writer = Some(writer);
                    // Rearm leaves a disabled event disabled.
                    Action::Rearm
                }
                Err(e) => {
                    eprintln!("aem-pool-server: cannot watch a connection: {e}");
                    close(c)
                }
            }
        }
    }
}

/// The writer's handler: the socket has room for what is left.
fn on_writable(shared: &Shared) -> Action {
    let mut c = lock(shared);
    let conn = &mut *c;
    let (sent, how) = write_some(&conn.stream, &conn.unsent);
    count_echoed(sent);
    conn.unsent.drain(..sent);
    match how {
        // Level-triggered: called again when there is room.
        Sent::Blocked => Action::Rearm,
        Sent::Failed => close(c),
        Sent::All => {
            // Back to reading, and this event is done: it drops its own
            // registration (its closure is freed when it returns).
            let own = conn.writer.take();
            let enabled = conn.reader.as_ref().map(PoolRegistration::enable);
            let action = match enabled {
                Some(Ok(())) => {
                    drop(c);
                    Action::Unregister
                }
                _ => close(c),
            };
            drop(own);
            action
        }
    }
}

/// What the command line asks for.
struct Args {
    /// `--addr`: where to listen.
    addr: String,
    /// `--threads`: the pool's size.
    threads: usize,
}

/// `--addr HOST:PORT`, `--threads N`; `Err` holds the problem, empty for
/// `--help`.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:7007".to_string(),
        threads: DEFAULT_THREADS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => args.addr = it.next().ok_or("--addr needs a value")?,
            "--threads" => {
                let n = it.next().ok_or("--threads needs a value")?;
                args.threads = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--threads: not a positive number: {n}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Blocked before the pool threads start, so that they inherit the
    // mask: the stop signals then wait for the `wait` below, whichever
    // thread they were sent to.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()?;

    let listener = TcpListener::bind(&args.addr)?;
    let pool = Pool::new(args.threads)?;
    let pool = POOL.get_or_init(move || pool);
    // Registered disabled, and enabled once the resume timer can find it.
    let accepting = pool.on_event(
        Source::accept(
            listener.as_fd(),
            AcceptFlags::NONBLOCK | AcceptFlags::CLOEXEC,
        ),
        Options::new().disabled(true),
        on_accept,
    )?;
    ACCEPTING.get_or_init(move || accepting).enable()?;

    println!("listening on {}", listener.local_addr()?);
    // All the serving happens on the pool; this thread only waits to stop.
    stop.wait()?;
    println!(
        "served {} connections, {} bytes",
        CONNECTIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-pool-server: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-pool-server: {e}");
            ExitCode::FAILURE
        }
    }
}
