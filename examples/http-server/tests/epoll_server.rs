//! Runs `http-epoll` on an ephemeral port and drives it with `http-load`.

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

#[test]
fn serves_load_and_storm() {
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_http-epoll"))
            .args(["--addr", "127.0.0.1:0", "--max-conns", "2000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start http-epoll"),
    );
    let mut line = String::new();
    let stdout = server.0.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("http-epoll: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();

    // One request by hand, as a client would write it.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\nhello from http-epoll\n"),
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

    // SIGTERM is a clean shutdown.
    let pid = server.0.id() as libc::pid_t;
    // SAFETY: signals the child this test started and has not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server.0.wait().unwrap();
    assert!(status.success(), "http-epoll exited with {status}");
}
