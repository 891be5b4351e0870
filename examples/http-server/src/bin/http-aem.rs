//! `http-aem`: the same single-threaded HTTP/1.1 server as `http-epoll`,
//! on AEM alone, in the shape of the 2003 AEM web server: the kernel
//! accepts each connection and reads each request, and the handlers, run
//! inline in the main flow, parse and reply.  The main flow does nothing
//! but wait (`aem::run`); idle connections cost a registration each and no
//! work at all.  Every connection's requests are read into the thread's one
//! shared buffer (`aem::on_read_shared`), as io_uring's provided buffers
//! serve many sockets: an idle connection holds no buffer.
//!
//! Handlers never nest (the kernel does not interrupt a handler with
//! another event of the process), and the main flow never touches the
//! connection table, so the table lives in a thread-local `RefCell`.
//!
//! A handler that ends its connection drops the connection's
//! registrations, its own included: the shim frees a running closure when
//! it returns.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use aem::{AcceptFlags, Action, FdEvents, InlineRegistration, Options, ReadEvent, Source};
use aem_http::{shutdown_signals, Conn, ServerArgs};

const USAGE: &str = "usage: http-aem [--addr HOST:PORT] [--max-conns N]";

/// The handlers allocate (requests, replies, closures): every allocation
/// goes through a critical section, so one never interrupts another.  The
/// C library's heap suffices here, since the main flow makes no C call
/// that allocates behind Rust's back (`HandlerSafeAlloc::separate()` is
/// the choice for programs that do), and keeps the benchmark comparable
/// with `http-epoll`'s.
#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc = aem::HandlerSafeAlloc::system();

/// One client connection.
///
/// Fields drop in order: the registrations go before the stream closes its
/// descriptor.
struct Client {
    /// The kernel reads requests into the thread's shared buffer.
    reader: Option<InlineRegistration>,
    /// Registered while a reply waits for room in the socket.
    writer: Option<InlineRegistration>,
    stream: TcpStream,
    http: Conn,
    /// Responses not yet written; `out[sent..]` is what is left.
    out: Vec<u8>,
    sent: usize,
}

/// What a write attempt left.
enum Flushed {
    All,
    Blocked,
    Failed,
}

impl Client {
    fn flush(&mut self) -> Flushed {
        loop {
            while self.sent < self.out.len() {
                match (&self.stream).write(&self.out[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Flushed::Failed,
                }
            }
            self.out.clear();
            self.sent = 0;
            // `Conn` pauses behind a large reply; let it go on.
            let _ = self.http.on_bytes(&[], &mut self.out);
            if self.out.is_empty() {
                return Flushed::All;
            }
        }
    }
}

thread_local! {
    /// Connections by descriptor number, which the kernel keeps small.
    static CLIENTS: RefCell<Vec<Option<Client>>> = const { RefCell::new(Vec::new()) };
    static OPEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static MAX_CONNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// End a connection from a handler of one of its registrations, `own`.
fn close(fd: RawFd, own: Option<InlineRegistration>) {
    let client = CLIENTS.with(|c| c.borrow_mut().get_mut(fd as usize).and_then(Option::take));
    if client.is_some() {
        OPEN.with(|o| o.set(o.get() - 1));
    }
    // Unregistered now; the running handler's closure is freed when it
    // returns.
    drop(own);
    drop(client);
}

fn on_accept(conn: Result<OwnedFd, aem::Errno>) -> Action {
    let fd = match conn {
        Ok(fd) => fd,
        Err(e) => {
            // EMFILE and the like: the connection waits in the backlog.
            aem::eprintln!("http-aem: accept: {e}");
            return Action::Rearm;
        }
    };
    if OPEN.with(|o| o.get()) >= MAX_CONNS.with(|m| m.get()) {
        return Action::Rearm; // dropping `fd` closes it
    }
    let raw = fd.as_raw_fd();
    let stream = TcpStream::from(fd);
    // SAFETY: `on_request_bytes` touches CLIENTS, a thread-local RefCell
    // only handlers use (handlers never nest), writes with write(2),
    // registers and drops registrations, and allocates through this
    // binary's HandlerSafeAlloc.
    let reader = unsafe {
        aem::on_read_shared(stream.as_fd(), Options::default(), move |ev| {
            on_request_bytes(raw, ev)
        })
    };
    match reader {
        Ok(reader) => {
            let client = Client {
                reader: Some(reader),
                writer: None,
                stream,
                http: Conn::new("http-aem"),
                out: Vec::new(),
                sent: 0,
            };
            CLIENTS.with(|c| {
                let mut clients = c.borrow_mut();
                let slot = raw as usize;
                if clients.len() <= slot {
                    clients.resize_with(slot + 1, || None);
                }
                clients[slot] = Some(client);
            });
            OPEN.with(|o| o.set(o.get() + 1));
        }
        Err(e) => aem::eprintln!("http-aem: cannot watch a connection: {e}"),
    }
    Action::Rearm
}

fn on_request_bytes(fd: RawFd, ev: ReadEvent<'_>) -> Action {
    let outcome = CLIENTS.with(|c| {
        let mut clients = c.borrow_mut();
        let Some(client) = clients.get_mut(fd as usize).and_then(Option::as_mut) else {
            return Flushed::Failed;
        };
        let ReadEvent::Data(bytes) = ev else {
            return Flushed::Failed; // end of stream or error
        };
        // A malformed request gets its error reply and `wants_close`.
        let _ = client.http.on_bytes(bytes, &mut client.out);
        match client.flush() {
            Flushed::All if client.http.wants_close() => Flushed::Failed,
            other => other,
        }
    });
    match outcome {
        Flushed::All => Action::Rearm,
        Flushed::Blocked => {
            // Stop reading until the reply is out.
            // SAFETY: as for the reader (see `on_accept`): `on_writable`
            // touches CLIENTS, writes, and allocates through
            // HandlerSafeAlloc.
            let writer = unsafe {
                aem::register_inline(
                    Source::fd(stream_fd(fd), FdEvents::OUT),
                    Options::default(),
                    move |_| on_writable(fd),
                )
            };
            match writer {
                Ok(w) => {
                    CLIENTS.with(|c| {
                        if let Some(client) =
                            c.borrow_mut().get_mut(fd as usize).and_then(Option::as_mut)
                        {
                            client.writer = Some(w);
                        }
                    });
                    Action::Disarm
                }
                Err(_) => end_from_reader(fd),
            }
        }
        Flushed::Failed => end_from_reader(fd),
    }
}

/// The descriptor of a connection, borrowed for a registration.
fn stream_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the registration made with it is dropped before the
    // connection's stream closes the descriptor (both live in `Client`,
    // and `close` drops the registrations first), and the kernel holds its
    // own reference to the file meanwhile.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn end_from_reader(fd: RawFd) -> Action {
    let own = CLIENTS.with(|c| {
        c.borrow_mut()
            .get_mut(fd as usize)
            .and_then(Option::as_mut)
            .and_then(|cl| cl.reader.take())
    });
    close(fd, own);
    Action::Unregister
}

fn on_writable(fd: RawFd) -> Action {
    let outcome = CLIENTS.with(|c| {
        let mut clients = c.borrow_mut();
        match clients.get_mut(fd as usize).and_then(Option::as_mut) {
            Some(client) => match client.flush() {
                Flushed::All if client.http.wants_close() => Flushed::Failed,
                other => other,
            },
            None => Flushed::Failed,
        }
    });
    match outcome {
        Flushed::Blocked => Action::Rearm,
        Flushed::All => {
            let own = CLIENTS.with(|c| {
                let mut clients = c.borrow_mut();
                let client = clients.get_mut(fd as usize).and_then(Option::as_mut)?;
                if let Some(reader) = &client.reader {
                    // Back to reading requests.
                    let _ = reader.enable();
                }
                client.writer.take()
            });
            drop(own);
            Action::Unregister
        }
        Flushed::Failed => {
            let own = CLIENTS.with(|c| {
                c.borrow_mut()
                    .get_mut(fd as usize)
                    .and_then(Option::as_mut)
                    .and_then(|cl| cl.writer.take())
            });
            close(fd, own);
            Action::Unregister
        }
    }
}

fn run(args: ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let max_conns = args.fit_nofile("http-aem")?;
    MAX_CONNS.with(|m| m.set(max_conns));
    let backlog = i32::try_from(args.max_conns).unwrap_or(i32::MAX);
    let listener = aem_http::listen(&args.addr, backlog)?;
    let signals = shutdown_signals()?;
    // Printed before any handler can run: std's stdout is not
    // handler-safe.
    let mut out = io::stdout().lock();
    writeln!(out, "http-aem: listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    // SAFETY: `on_accept` touches OPEN, MAX_CONNS and CLIENTS,
    // thread-locals the main flow no longer uses (handlers never nest),
    // registers readers (see there), allocates through HandlerSafeAlloc
    // and prints with aem::eprintln!.
    let _accepting = unsafe {
        aem::on_accept(
            listener.as_fd(),
            AcceptFlags::NONBLOCK | AcceptFlags::CLOEXEC,
            Options::default(),
            on_accept,
        )
    }?;
    // SAFETY: std::process::exit is not async-signal-safe: it flushes
    // std's stdout and runs atexit handlers.  Registered last, this handler
    // can only interrupt the main flow in aem::run, which holds nothing,
    // or run between two other handlers, which never hold anything across
    // their return.
    let _shutdown = unsafe {
        aem::register_inline(
            Source::fd(signals.as_fd(), FdEvents::IN),
            Options::new().priority(99),
            |_| std::process::exit(0),
        )
    }?;
    Err(Box::new(aem::run()))
}

fn main() -> ExitCode {
    let args = match ServerArgs::parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("http-aem: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-aem: {e}");
            ExitCode::FAILURE
        }
    }
}
