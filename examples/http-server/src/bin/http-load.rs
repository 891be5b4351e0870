//! `http-load`: a single-threaded, epoll-driven HTTP/1.1 load generator.
//!
//! Load mode opens `--idle` connections that never send anything (they
//! only make the server watch many descriptors), then runs `--clients`
//! closed-loop keep-alive clients, each sending its next request as soon as
//! the last response is in, and reports throughput and latency over the
//! measuring window that follows `--warmup`.
//!
//! Storm mode (`--connect-storm N`) opens N connections at once, each
//! sending one `Connection: close` request and reading the reply to EOF.
//!
//! Being event-driven, one thread holds thousands of connections, so the
//! generator can share a small VM with the server it measures.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aem_http::Epoll;

const USAGE: &str = "usage: http-load [--addr HOST:PORT] [--idle N] [--clients M] \
[--duration SECS] [--warmup SECS] [--path PATH] [--timeout SECS]\n       \
http-load [--addr HOST:PORT] --connect-storm N [--timeout SECS]";

/// At most this many connects in flight while opening idle connections, so
/// as not to overflow the server's accept queue and wait out SYN retries.
const MAX_CONNECTING: usize = 1024;

/// A response head larger than this is an error.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

struct Args {
    addr: SocketAddr,
    idle: usize,
    clients: usize,
    duration: Duration,
    warmup: Duration,
    path: String,
    timeout: Duration,
    storm: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = "127.0.0.1:8080".to_string();
    let mut args = Args {
        addr: ([127, 0, 0, 1], 8080).into(),
        idle: 0,
        clients: 1,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        path: "/".into(),
        timeout: Duration::from_secs(10),
        storm: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let v = match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            _ => it.next().ok_or(format!("{arg} needs a value"))?,
        };
        let count = || v.parse::<usize>().map_err(|_| format!("bad {arg} {v}"));
        let secs = || {
            v.parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or(format!("bad {arg} {v}"))
        };
        match arg.as_str() {
            "--addr" => addr = v.clone(),
            "--idle" => args.idle = count()?,
            "--clients" => args.clients = count()?,
            "--connect-storm" => args.storm = Some(count()?),
            "--duration" => args.duration = secs()?,
            "--warmup" => args.warmup = secs()?,
            "--timeout" => args.timeout = secs()?,
            "--path" if v.starts_with('/') => args.path = v,
            _ => return Err(format!("unknown argument {arg} {v}")),
        }
    }
    args.addr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(format!("cannot resolve {addr}"))?;
    Ok(args)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Connects, then sends nothing; the server closing it is an error.
    Idle,
    /// Closed-loop keep-alive client.
    Active,
    /// One `Connection: close` request, reply read to EOF.
    Storm,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Sending,
    Receiving,
    /// Idle connection, established.
    Open,
}

struct Peer {
    stream: TcpStream,
    role: Role,
    phase: Phase,
    /// The epoll events currently watched for.
    interest: u32,
    /// How much of the request is written.
    sent: usize,
    /// Response bytes received so far.
    buf: Vec<u8>,
    /// When the current request started.
    started: Instant,
}

/// What the event loop does with a peer after an event.
enum Outcome {
    Keep,
    /// A complete, valid response to a request sent at the first instant
    /// and completed at the second (storm: the connection is done).
    Response(Instant, Instant),
    Failed(String),
}

/// The generator: every connection, indexed by descriptor number.
struct Load {
    ep: Epoll,
    addr: SocketAddr,
    peers: Vec<Option<Peer>>,
    request: Vec<u8>,
    storm_request: Vec<u8>,
    connecting: usize,
    errors: usize,
    /// The first few error messages, for stderr.
    messages: Vec<String>,
}

impl Load {
    fn new(addr: SocketAddr, path: &str) -> io::Result<Self> {
        Ok(Load {
            ep: Epoll::new()?,
            addr,
            peers: Vec::new(),
            request: format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            storm_request: b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            connecting: 0,
            errors: 0,
            messages: Vec::new(),
        })
    }

    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.messages.len() < 5 {
            self.messages.push(msg);
        }
    }

    /// Starts one connection.
    fn connect(&mut self, role: Role) {
        let stream = match aem_http::connect_nonblocking(&self.addr) {
            Ok(s) => s,
            Err(e) => return self.error(format!("connect: {e}")),
        };
        let fd = stream.as_raw_fd();
        let interest = libc::EPOLLOUT as u32;
        if let Err(e) = self.ep.add(fd, interest, fd as u64) {
            return self.error(format!("epoll_ctl: {e}"));
        }
        let slot = fd as usize;
        if self.peers.len() <= slot {
            self.peers.resize_with(slot + 1, || None);
        }
        self.peers[slot] = Some(Peer {
            stream,
            role,
            phase: Phase::Connecting,
            interest,
            sent: 0,
            buf: Vec::new(),
            started: Instant::now(),
        });
        self.connecting += 1;
    }

    /// Waits up to `timeout` for events and handles them; `on_response` is
    /// called with each request's start and end.
    fn poll(
        &mut self,
        timeout: Duration,
        events: &mut [libc::epoll_event],
        mut on_response: impl FnMut(Instant, Instant),
    ) -> io::Result<()> {
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let ready: Vec<(u32, u64)> = self.ep.wait(events, ms)?.collect();
        for (ev, token) in ready {
            let slot = token as usize;
            let Some(mut peer) = self.peers.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            let was_connecting = peer.phase == Phase::Connecting;
            let outcome = self.handle(&mut peer, ev);
            if was_connecting && peer.phase != Phase::Connecting {
                self.connecting -= 1;
            }
            match outcome {
                Outcome::Keep => self.peers[slot] = Some(peer),
                Outcome::Response(began, done) => {
                    on_response(began, done);
                    if peer.role == Role::Active {
                        self.peers[slot] = Some(peer);
                    }
                }
                Outcome::Failed(msg) => {
                    if was_connecting && peer.phase == Phase::Connecting {
                        self.connecting -= 1;
                    }
                    self.error(msg);
                }
            }
        }
        Ok(())
    }

    fn handle(&self, peer: &mut Peer, ev: u32) -> Outcome {
        let result = match peer.phase {
            Phase::Connecting => self.connected(peer, ev),
            Phase::Open => Err("server closed an idle connection".into()),
            Phase::Sending => self.send(peer),
            Phase::Receiving => self.receive(peer),
        };
        result.unwrap_or_else(Outcome::Failed)
    }

    fn connected(&self, peer: &mut Peer, ev: u32) -> Result<Outcome, String> {
        if let Some(e) = peer.stream.take_error().map_err(|e| e.to_string())? {
            return Err(format!("connect: {e}"));
        }
        if ev & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            return Err("connect: connection refused or reset".into());
        }
        if peer.role == Role::Idle {
            peer.phase = Phase::Open;
            // Only a hangup from the server is of interest now.
            self.watch(peer, libc::EPOLLRDHUP as u32)?;
            return Ok(Outcome::Keep);
        }
        self.start_request(peer)
    }

    fn start_request(&self, peer: &mut Peer) -> Result<Outcome, String> {
        peer.phase = Phase::Sending;
        peer.sent = 0;
        peer.buf.clear();
        peer.started = Instant::now();
        self.send(peer)
    }

    fn send(&self, peer: &mut Peer) -> Result<Outcome, String> {
        let request = match peer.role {
            Role::Storm => &self.storm_request,
            _ => &self.request,
        };
        while peer.sent < request.len() {
            match peer.stream.write(&request[peer.sent..]) {
                Ok(n) => peer.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.watch(peer, libc::EPOLLOUT as u32)?;
                    return Ok(Outcome::Keep);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        peer.phase = Phase::Receiving;
        self.watch(peer, libc::EPOLLIN as u32)?;
        Ok(Outcome::Keep)
    }

    fn receive(&self, peer: &mut Peer) -> Result<Outcome, String> {
        let mut chunk = [0u8; 16 * 1024];
        let eof = loop {
            match peer.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    peer.buf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        let response = Outcome::Response(peer.started, Instant::now());
        let complete = parse_response(&peer.buf)?;
        match (peer.role, complete) {
            (Role::Storm, _) if !eof => Ok(Outcome::Keep),
            (Role::Storm, Some(len)) if len == peer.buf.len() => Ok(response),
            (Role::Storm, _) => Err("response does not end at EOF".into()),
            (_, Some(len)) if len == peer.buf.len() => {
                self.start_request(peer)?;
                Ok(response)
            }
            (_, Some(_)) => Err("unexpected bytes after the response".into()),
            (_, None) if eof => Err("server closed a keep-alive connection".into()),
            (_, None) => Ok(Outcome::Keep),
        }
    }

    fn watch(&self, peer: &mut Peer, interest: u32) -> Result<(), String> {
        if peer.interest != interest {
            let fd = peer.stream.as_raw_fd();
            self.ep
                .modify(fd, interest, fd as u64)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            peer.interest = interest;
        }
        Ok(())
    }

    /// Connections still waiting for something, by role.
    fn busy(&self, role: Role) -> impl Iterator<Item = &Peer> {
        self.peers
            .iter()
            .flatten()
            .filter(move |p| p.role == role && p.phase != Phase::Open)
    }
}

/// The length of the complete `200` response at the start of `buf`, or
/// `None` if more is to come.
fn parse_response(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err("response head too large".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..head]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(format!("unexpected status line {status:?}"));
    }
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or("response without a valid Content-Length")?;
    Ok((buf.len() >= head + length).then_some(head + length))
}

fn storm(args: &Args, n: usize) -> io::Result<bool> {
    let mut load = Load::new(args.addr, &args.path)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let start = Instant::now();
    for _ in 0..n {
        load.connect(Role::Storm);
    }
    let mut ok = 0;
    while ok + load.errors < n {
        let left = args.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            let stuck = n - ok - load.errors;
            load.errors += stuck;
            load.messages.push(format!("{stuck} connections timed out"));
            break;
        }
        load.poll(left, &mut events, |_, _| ok += 1)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let errors = load.errors;
    report_errors(&load);
    println!("http-load: storm connections={n} ok={ok} errors={errors} seconds={seconds:.3}");
    Ok(errors == 0 && ok == n)
}

fn run_load(args: &Args) -> io::Result<bool> {
    let mut load = Load::new(args.addr, &args.path)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];

    // Idle connections first, a bounded number at a time.
    let deadline = Instant::now() + args.timeout;
    let mut to_open = args.idle;
    while to_open > 0 || load.connecting > 0 {
        while to_open > 0 && load.connecting < MAX_CONNECTING {
            load.connect(Role::Idle);
            to_open -= 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            load.errors += load.connecting;
            load.messages
                .push(format!("{} idle connects timed out", load.connecting));
            break;
        }
        load.poll(left, &mut events, |_, _| {})?;
    }
    let idle = load
        .peers
        .iter()
        .flatten()
        .filter(|p| p.phase == Phase::Open)
        .count();

    // Then the active clients, straight into warm-up.
    let mut latencies: Vec<u32> = Vec::new();
    let start = Instant::now() + args.warmup;
    let end = start + args.duration;
    for _ in 0..args.clients {
        load.connect(Role::Active);
    }
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        load.poll(end - now, &mut events, |began, done| {
            if done >= start && done < end {
                latencies.push((done - began).as_micros().min(u32::MAX as u128) as u32);
            }
        })?;
    }
    let stuck = load
        .busy(Role::Active)
        .filter(|p| end.saturating_duration_since(p.started) > args.timeout)
        .count();
    if stuck > 0 {
        load.errors += stuck;
        load.messages.push(format!("{stuck} requests timed out"));
    }

    report_errors(&load);
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies.get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
    };
    let secs = args.duration.as_secs_f64();
    println!(
        "http-load: requests={} seconds={secs:.3} rps={:.0} p50_us={} p99_us={} max_us={} errors={} idle={idle} clients={}",
        latencies.len(),
        latencies.len() as f64 / secs,
        pct(50).unwrap_or(&0),
        pct(99).unwrap_or(&0),
        latencies.last().unwrap_or(&0),
        load.errors,
        args.clients,
    );
    if latencies.is_empty() {
        eprintln!("http-load: no request completed in the measuring window");
    }
    Ok(load.errors == 0 && !latencies.is_empty())
}

fn report_errors(load: &Load) {
    for msg in &load.messages {
        eprintln!("http-load: {msg}");
    }
    if load.errors > load.messages.len() {
        eprintln!("http-load: ... {} errors in all", load.errors);
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("http-load: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let fds = args.idle + args.clients + args.storm.unwrap_or(0) + 64;
    if let Err(e) = aem_http::raise_nofile(fds as u64) {
        eprintln!("http-load: cannot raise RLIMIT_NOFILE to {fds}: {e}");
    }
    let result = match args.storm {
        Some(n) => storm(&args, n),
        None => run_load(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("http-load: {e}");
            ExitCode::FAILURE
        }
    }
}
