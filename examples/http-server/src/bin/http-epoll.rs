//! `http-epoll`: a single-threaded HTTP/1.1 server on epoll alone, the
//! baseline for the AEM server.
//!
//! One level-triggered epoll set holds the listener, a signalfd for
//! SIGTERM/SIGINT and every connection. A connection is watched for input
//! while it has no output pending and for output while it has, which also
//! stops a client that does not read its responses from making the server
//! buffer ever more of them.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::process::ExitCode;

use aem_http::{shutdown_signals, Conn, Epoll, ServerArgs};
use nix::errno::Errno;
use nix::sys::socket::{accept4, SockFlag};

const USAGE: &str = "usage: http-epoll [--addr HOST:PORT] [--max-conns N]";

/// One client connection.
struct Client {
    stream: TcpStream,
    http: Conn,
    /// Responses not yet written; `out[sent..]` is what is left.
    out: Vec<u8>,
    sent: usize,
    /// Watched for EPOLLOUT rather than EPOLLIN.
    writing: bool,
    /// The client shut down its side; close once the output is sent.
    eof: bool,
}

impl Client {
    /// Handles readiness: reads what arrived, writes what is queued. Returns
    /// whether to keep the connection; the caller closes it otherwise.
    fn service(&mut self, ep: &Epoll, scratch: &mut [u8]) -> io::Result<bool> {
        if !self.writing {
            loop {
                match self.stream.read(scratch) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        // A malformed request gets its error response queued
                        // and `wants_close` set, which ends the connection
                        // below; there is nothing else to do about it.
                        let _ = self.http.on_bytes(&scratch[..n], &mut self.out);
                        // Level-triggered: a short read means the socket is
                        // drained, so skip the read that would say EAGAIN.
                        if n < scratch.len() || !self.out.is_empty() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        loop {
            while self.sent < self.out.len() {
                match self.stream.write(&self.out[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.watch(ep, true)?;
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.out.clear();
            self.sent = 0;
            if self.http.wants_close() || self.eof {
                return Ok(false);
            }
            // Everything is sent: answer requests `Conn` held back while
            // the output was large.
            let _ = self.http.on_bytes(&[], &mut self.out);
            if self.out.is_empty() {
                break;
            }
        }
        self.watch(ep, false)?;
        Ok(true)
    }

    fn watch(&mut self, ep: &Epoll, writing: bool) -> io::Result<()> {
        if self.writing != writing {
            let events = if writing {
                libc::EPOLLOUT
            } else {
                libc::EPOLLIN
            };
            let fd = self.stream.as_raw_fd();
            ep.modify(fd, events as u32, fd as u64)?;
            self.writing = writing;
        }
        Ok(())
    }
}

/// Accepts every pending connection, dropping those beyond `max_conns`.
fn accept_all(
    listener: &TcpListener,
    ep: &Epoll,
    clients: &mut Vec<Option<Client>>,
    open: &mut usize,
    max_conns: usize,
) -> io::Result<()> {
    loop {
        // accept4 rather than TcpListener::accept: the new socket comes out
        // non-blocking, without a second syscall.
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = match accept4(listener.as_raw_fd(), flags) {
            Ok(fd) => fd,
            Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        };
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        if *open >= max_conns {
            // Shed the connection rather than leave it in the backlog, which
            // would keep the listener readable and the loop spinning.
            continue;
        }
        ep.add(fd, libc::EPOLLIN as u32, fd as u64)?;
        let slot = fd as usize;
        if clients.len() <= slot {
            clients.resize_with(slot + 1, || None);
        }
        clients[slot] = Some(Client {
            stream,
            http: Conn::new("http-epoll"),
            out: Vec::new(),
            sent: 0,
            writing: false,
            eof: false,
        });
        *open += 1;
    }
}

fn run(args: ServerArgs) -> io::Result<()> {
    let max_conns = args.fit_nofile("http-epoll")?;
    let backlog = i32::try_from(args.max_conns).unwrap_or(i32::MAX);
    let listener = aem_http::listen(&args.addr, backlog)?;
    listener.set_nonblocking(true)?;
    let signals = shutdown_signals()?;

    let ep = Epoll::new()?;
    let lfd: RawFd = listener.as_raw_fd();
    let sfd: RawFd = signals.as_raw_fd();
    ep.add(lfd, libc::EPOLLIN as u32, lfd as u64)?;
    ep.add(sfd, libc::EPOLLIN as u32, sfd as u64)?;

    let mut out = io::stdout().lock();
    writeln!(out, "http-epoll: listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);

    // Connections are indexed by descriptor number, which the kernel keeps
    // small and unique among open descriptors.
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut open = 0;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        for (_, token) in ep.wait(&mut events, -1)? {
            let fd = token as RawFd;
            if fd == lfd {
                accept_all(&listener, &ep, &mut clients, &mut open, max_conns)?;
            } else if fd == sfd {
                return Ok(());
            } else if let Some(client) = clients.get_mut(fd as usize).and_then(Option::as_mut) {
                // Errors (mostly resets) end just this connection.
                if !client.service(&ep, &mut scratch).unwrap_or(false) {
                    // Dropping the stream closes it, which also removes it
                    // from the epoll set.
                    clients[fd as usize] = None;
                    open -= 1;
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match ServerArgs::parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("http-epoll: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-epoll: {e}");
            ExitCode::FAILURE
        }
    }
}
