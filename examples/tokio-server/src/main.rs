//! `aem-tokio-echo`: a TCP echo server on a tokio runtime whose accepts
//! and reads the kernel completes, and which receives them as AEM records
//! -- kernel-completed I/O for tokio without io_uring.
//!
//! The listening socket is an AEM accept source ([`aem::Source::Accept`]):
//! the kernel accepts each connection when the server takes the record,
//! and the record carries the new descriptor.  Each connection is an AEM
//! read source ([`aem::register_read`]): the kernel reads its bytes into
//! the registration's buffer when the record is taken, and the record
//! carries the count.  One [`aem::AsyncContext`], in tokio's reactor,
//! hands the main task every record; a batch of accepts and reads of many
//! connections costs one system call.
//!
//! Writes go through tokio (`tokio::net::TcpStream`), one task per
//! connection.  A connection's reader is rearmed only once its last chunk
//! is written back, so the kernel reads no more from a client that does
//! not read its echo, and TCP flow control pushes back on it.
//!
//! Nothing here runs in a handler: records are taken where the main task
//! awaits them, so std printing, tokio and any allocator are fine (the
//! safe, polled mode of the `aem` crate).
//!
//! Protocol (shared with `aem-echo-server`): the first line on standard
//! output is `listening on ADDR`; on SIGTERM or SIGINT the server prints
//! `served N connections, B bytes` and exits with status 0.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aem::{
    AcceptFlags, AsyncContext, EventData, Events, Options, ReadEvent, ReadRegistration, Record,
    Source,
};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

const USAGE: &str = "usage: aem-tokio-echo [--addr HOST:PORT]";

/// Bytes the kernel reads per record, per connection; also the most a
/// connection holds unsent.
const READ_BUFFER: usize = 16 * 1024;

/// Records taken per system call, at most.
const BATCH: usize = 256;

/// What the main task hands a connection's task.
enum Chunk {
    /// Bytes the kernel read: write them back, then rearm the reader.
    Data(Vec<u8>),
    /// The stream ended, or reading it failed.
    End,
}

/// A connection, as the main task keeps it.
struct Conn {
    /// The kernel reads the client's bytes into this registration.
    reader: Arc<ReadRegistration>,
    /// To the connection's task.
    chunks: mpsc::UnboundedSender<Chunk>,
}

/// A connection's task: write back each chunk, then let the kernel read
/// the next.  Its end (the client's end, or a failed write) is reported on
/// `closed`, where the main task drops the reader, which releases the
/// socket.
async fn serve(
    id: u64,
    mut stream: tokio::net::TcpStream,
    reader: Arc<ReadRegistration>,
    mut chunks: mpsc::UnboundedReceiver<Chunk>,
    closed: mpsc::UnboundedSender<u64>,
    echoed: Arc<AtomicU64>,
) {
    while let Some(Chunk::Data(bytes)) = chunks.recv().await {
        let mut done = 0;
        while done < bytes.len() {
            match stream.write(&bytes[done..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    done += n;
                    echoed.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        if done < bytes.len() || reader.rearm().is_err() {
            break;
        }
    }
    // The reader holds the socket: shut our side now, so the client sees
    // the end whenever the main task gets to dropping the reader.
    let _ = stream.shutdown().await;
    drop(reader);
    let _ = closed.send(id);
}

/// The server's state, in the main task.
struct Server {
    accepting: aem::Registration,
    /// The kernel stopped accepting for want of descriptors.
    accept_paused: bool,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    connections: u64,
    echoed: Arc<AtomicU64>,
    closed: mpsc::UnboundedSender<u64>,
}

impl Server {
    fn on_record(&mut self, record: Record) {
        if record.id == self.accepting.id() {
            if let EventData::Accept { conn, .. } = record.data {
                match conn {
                    Ok(fd) => self.on_accept(fd),
                    Err(e) => {
                        // EMFILE and the like: the connection waits in the
                        // backlog, the kernel disabled the event; a closed
                        // connection enables it again.
                        eprintln!("aem-tokio-echo: accept: {e}");
                        self.accept_paused = true;
                    }
                }
            }
            return;
        }
        let Some(conn) = self.conns.get(&record.cookie) else {
            return;
        };
        let mut bytes = Vec::new();
        let chunk = match conn.reader.take(&record, &mut bytes) {
            Some(ReadEvent::Data(_)) => Chunk::Data(bytes),
            Some(ReadEvent::Eof) | Some(ReadEvent::Error(_)) => Chunk::End,
            None => return,
        };
        // The task is gone only after it reported on `closed`.
        let _ = conn.chunks.send(chunk);
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        self.connections += 1;
        let id = self.next_id;
        self.next_id += 1;
        let stream = std::net::TcpStream::from(fd);
        let reader =
            match aem::register_read(stream.as_fd(), READ_BUFFER, Options::new().cookie(id)) {
                Ok(reader) => Arc::new(reader),
                Err(e) => {
                    eprintln!("aem-tokio-echo: cannot read a connection: {e}");
                    return;
                }
            };
        // Nonblocking already: accepted with AcceptFlags::nonblocking.
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("aem-tokio-echo: cannot serve a connection: {e}");
                return;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(
            id,
            stream,
            reader.clone(),
            rx,
            self.closed.clone(),
            self.echoed.clone(),
        ));
        self.conns.insert(id, Conn { reader, chunks: tx });
    }

    fn on_closed(&mut self, id: u64) {
        // Unregisters the reader: the kernel lets go of the socket.
        self.conns.remove(&id);
        if std::mem::take(&mut self.accept_paused) {
            if let Err(e) = self.accepting.enable() {
                eprintln!("aem-tokio-echo: cannot resume accepting: {e}");
            }
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

async fn run(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let accepting = aem::register(
        Source::accept(
            listener.as_fd(),
            AcceptFlags::NONBLOCK | AcceptFlags::CLOEXEC,
        ),
        Options::default(),
    )?;
    let ctx = AsyncContext::new()?;
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let mut server = Server {
        accepting,
        accept_paused: false,
        conns: HashMap::new(),
        next_id: 1,
        connections: 0,
        echoed: Arc::new(AtomicU64::new(0)),
        closed: closed_tx,
    };
    let mut events = Events::with_capacity(BATCH);

    println!("listening on {}", listener.local_addr()?);
    loop {
        tokio::select! {
            // Cancel-safe: a wait that loses the race took no record.
            taken = ctx.wait(&mut events) => {
                taken?;
                for record in events.drain() {
                    server.on_record(record);
                }
            }
            Some(id) = closed.recv() => server.on_closed(id),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    println!(
        "served {} connections, {} bytes",
        server.connections,
        server.echoed.load(Ordering::Relaxed)
    );
    Ok(())
}

fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-tokio-echo: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aem-tokio-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-tokio-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
