//! Runs `http-uring` on an ephemeral port, drives it with `http-load`, and
//! checks that it answers a pipelined exchange byte for byte like
//! `http-epoll`. Skipped, with a message, where io_uring is unavailable
//! (`kernel.io_uring_disabled`, a seccomp filter, an old kernel).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};

/// The server process, killed if the test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Starts `exe` on an ephemeral port; returns it and its address.
    fn start(exe: &str, name: &str) -> (Server, String) {
        let mut server = Server(
            Command::new(exe)
                .args(["--addr", "127.0.0.1:0", "--max-conns", "2000"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}")),
        );
        let mut line = String::new();
        let stdout = server.0.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix(&format!("{name}: listening on "))
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
            .to_string();
        (server, addr)
    }

    /// SIGTERM, which must be a clean shutdown.
    fn stop(mut self, name: &str) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: signals the child this test started and has not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.0.wait().unwrap();
        assert!(status.success(), "{name} exited with {status}");
    }
}

/// Whether this host lets the process set up an io_uring.
fn io_uring_available() -> bool {
    match io_uring::IoUring::new(8) {
        Ok(_) => true,
        Err(e) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled");
            eprintln!(
                "SKIPPED: io_uring_setup fails here ({e}; kernel.io_uring_disabled = {}), \
                 so http-uring cannot run",
                disabled.as_deref().unwrap_or("?").trim()
            );
            false
        }
    }
}

fn load(addr: &str, args: &[&str]) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_http-load"))
        .args(["--addr", addr])
        .args(args)
        .output()
        .expect("run http-load");
    let stdout = String::from_utf8(stdout).unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        status.success(),
        "http-load {args:?}: {status}\n{stdout}{stderr}"
    );
    assert!(stdout.contains(" errors=0"), "{stdout}");
    stdout
}

/// Pipelined requests on one connection, replies larger than the socket
/// buffers among them, the last with `Connection: close`; returns
/// everything the server sent back.
fn pipelined(addr: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut requests = Vec::new();
    for _ in 0..4 {
        requests.extend_from_slice(
            b"GET /bytes/1048576 HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
              HEAD / HTTP/1.1\r\nHost: t\r\n\r\n",
        );
    }
    requests.extend_from_slice(b"GET /bytes/777 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(&requests).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    all
}

#[test]
fn serves_load_and_storm() {
    if !io_uring_available() {
        return;
    }
    let (server, addr) = Server::start(env!("CARGO_BIN_EXE_http-uring"), "http-uring");

    // One request by hand, as a client would write it.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\nhello from http-uring\n"),
        "{reply}"
    );

    // A request split across many receives, then EOF after a malformed one.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_nodelay(true).unwrap();
    for b in b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
    }
    s.write_all(b"BROKEN\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("\r\n\r\n01234HTTP/1.1 400 Bad Request\r\n"),
        "{reply}"
    );

    let out = load(&addr, &["--connect-storm", "200"]);
    assert!(out.contains("storm connections=200 ok=200 "), "{out}");

    let out = load(
        &addr,
        &[
            "--idle",
            "200",
            "--clients",
            "8",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
        ],
    );
    assert!(out.contains(" idle=200 clients=8"), "{out}");
    assert!(!out.contains(" requests=0 "), "{out}");

    let uring = pipelined(&addr);
    server.stop("http-uring");

    let (epoll_server, epoll_addr) = Server::start(env!("CARGO_BIN_EXE_http-epoll"), "http-epoll");
    let epoll = pipelined(&epoll_addr);
    epoll_server.stop("http-epoll");
    assert!(uring.len() > 4 << 20, "{} bytes", uring.len());
    assert!(uring == epoll, "http-uring and http-epoll answer alike");
}

/// A client that pipelines requests for large replies and reads nothing
/// must not make the server buffer without bound, nor stall it for others.
#[test]
fn a_client_that_does_not_read_is_held_back() {
    if !io_uring_available() {
        return;
    }
    let (server, addr) = Server::start(env!("CARGO_BIN_EXE_http-uring"), "http-uring");
    let pid = server.0.id();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let mut hog = TcpStream::connect(&addr).unwrap();
    hog.set_write_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let request = b"GET /bytes/1048576 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
    let mut written = 0;
    // Write until the server stops taking requests (the write times out).
    for _ in 0..25_000 {
        match hog.write(&request) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    // 100 MB of requests were offered; what was taken is in socket buffers.
    assert!(written < 50 << 20, "the server took {written} bytes");
    assert!(rss() < 64 * 1024, "http-uring holds {} KiB", rss());
    let out = load(&addr, &["--clients", "2", "--duration", "0.2"]);
    assert!(!out.contains(" requests=0 "), "{out}");
    drop(hog);
    server.stop("http-uring");
}
