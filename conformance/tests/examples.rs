//! SHIM-1: the example programs written with the safe `aem` API alone
//! (`examples/echo-server`, `examples/tokio-server`,
//! `examples/periodic-timer`), EXEC-3's worker-pool server
//! (`examples/pool-server`), EXEC-2's pre-fork server
//! (`examples/fork-server`), and the examples of the sources SRC-7 to
//! SRC-10 (`examples/topic-pubsub`, `examples/pressure-watch`,
//! `examples/word-watch`, `examples/module-events`), run as they ship,
//! from the guest's PATH (the rootfs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aem_conformance::{proc_aem, proc_aem_counts, ProcAemRow};

/// Wait up to `limit` for `child`; kill it and fail past that.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running echo server (`aem-echo-server`, or `aem-tokio-echo`,
/// `aem-pool-server` or `aem-fork-server`, which speak the same) on an
/// ephemeral port; killed if a test fails before [`EchoServer::stop`].
struct EchoServer {
    child: Child,
    out: BufReader<ChildStdout>,
    addr: String,
    name: &'static str,
}

impl EchoServer {
    fn start() -> EchoServer {
        EchoServer::start_named("aem-echo-server")
    }

    fn start_named(name: &'static str) -> EchoServer {
        let mut child = Command::new(name)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect(name);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name} said {line:?}"))
            .to_string();
        EchoServer {
            child,
            out,
            addr,
            name,
        }
    }

    /// Its registrations, as `/proc/<pid>/aem` lists them.
    fn registrations(&self) -> Vec<ProcAemRow> {
        proc_aem(&self.child.id().to_string())
    }

    /// Its handler pool, as `/proc/<pid>/aem` shows it: (idle threads,
    /// queued events).
    fn pool(&self) -> (u64, u64) {
        proc_aem_counts(&self.child.id().to_string(), "pool")
    }

    /// Its fork events' children, as `/proc/<pid>/aem` counts them:
    /// (started, refused).
    fn forks(&self) -> (u64, u64) {
        proc_aem_counts(&self.child.id().to_string(), "fork")
    }

    /// SIGTERM it; it must exit 0 with its totals as its last line, which
    /// is returned.
    fn stop(&mut self) -> String {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child.
        let killed = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(killed, 0, "kill: {}", std::io::Error::last_os_error());
        let status = wait_within(&mut self.child, Duration::from_secs(30), self.name);
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        assert!(status.success(), "{}: {status}; said {rest:?}", self.name);
        rest.lines().last().unwrap_or_default().to_string()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Message sizes each client sends, in order: small, odd, around the
/// server's 16 KiB read buffer, and one of 1 MiB.
const SIZES: [usize; 7] = [1, 7, 1000, 16 * 1024, 16 * 1024 + 1, 1 << 20, 4321];

/// Bytes of message `m` of client `c`: distinct per client and message.
fn message(c: usize, m: usize, len: usize) -> Vec<u8> {
    let mut x = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (m as u64 + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One client: each message round-trips, written from a second thread
/// while this one reads (the echo of 1 MiB does not fit in socket buffers).
fn echo_client(addr: &str, c: usize) -> u64 {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("client {c}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut sent = 0;
    for (m, &len) in SIZES.iter().enumerate() {
        let msg = message(c, m, len);
        let mut echo = vec![0u8; len];
        std::thread::scope(|s| {
            let (mut w, mut r) = (&stream, &stream);
            let msg = &msg;
            let writer = s.spawn(move || w.write_all(msg));
            r.read_exact(&mut echo)
                .unwrap_or_else(|e| panic!("client {c}, message {m} ({len} bytes): {e}"));
            writer.join().unwrap().unwrap();
        });
        assert!(
            echo == msg,
            "client {c}, message {m} ({len} bytes): the echo differs at byte {:?}",
            echo.iter().zip(&msg).position(|(a, b)| a != b)
        );
        sent += len as u64;
    }
    // Nothing more comes back once we stop sending.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "client {c}: {} unexpected bytes",
        rest.len()
    );
    sent
}

/// `CLIENTS` clients at once, each message echoed exactly; the server's
/// totals count them all.
fn echoes_every_client(name: &'static str) {
    const CLIENTS: usize = 20;
    let mut server = EchoServer::start_named(name);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = server.addr.clone();
            std::thread::spawn(move || echo_client(&addr, c))
        })
        .collect();
    let total: u64 = clients.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        server.stop(),
        format!("served {CLIENTS} connections, {total} bytes")
    );
}

#[test]
fn shim_1_echo_server_example_echoes_every_client() {
    echoes_every_client("aem-echo-server");
}

/// The tokio server: accepts and reads completed by the kernel, taken as
/// records through `aem::AsyncContext`, replies written with tokio.
#[test]
fn shim_1_tokio_echo_example_echoes_every_client() {
    echoes_every_client("aem-tokio-echo");
}

/// The worker-pool server (EXEC-3): accepts and reads handled by closures
/// on a pool of 4 threads, connections served in parallel.
#[test]
fn exec_3_pool_server_example_echoes_every_client() {
    echoes_every_client("aem-pool-server");
}

/// The pre-fork server (EXEC-2): each connection echoed by a child
/// process of its own, forked by the kernel for the accept event; the
/// children's totals, counted in memory they share with the server.
#[test]
fn exec_2_fork_server_example_echoes_every_client() {
    echoes_every_client("aem-fork-server");
}

/// Wait up to ten seconds for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < end, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes a client that does not read sends.
const LATE_LEN: usize = 8 << 20;

/// Connect to `server` and send it [`LATE_LEN`] bytes (message 0 of
/// client `c`) without reading, until the echo fills the sockets and
/// `full` (`what`) holds; then read the whole echo and check it.  Returns
/// the connection, still open.
fn echo_to_a_late_reader(
    server: &EchoServer,
    c: usize,
    what: &str,
    full: impl FnMut() -> bool,
) -> TcpStream {
    let stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let msg = message(c, 0, LATE_LEN);
    let mut echo = vec![0u8; LATE_LEN];
    std::thread::scope(|s| {
        let (mut w, mut r) = (&stream, &stream);
        let msg = &msg;
        let writer = s.spawn(move || w.write_all(msg));
        eventually(what, full);
        r.read_exact(&mut echo).unwrap();
        writer.join().unwrap().unwrap();
    });
    assert!(
        echo == msg,
        "the echo differs at byte {:?}",
        echo.iter().zip(&msg).position(|(a, b)| a != b)
    );
    stream
}

#[test]
fn shim_1_echo_server_example_waits_for_a_client_that_does_not_read() {
    const LEN: usize = LATE_LEN;
    let mut server = EchoServer::start();
    // We do not read yet: the echo fills the server's socket, so the
    // server waits for room (a level fd registration at the default
    // priority; the signalfd's is at 99) and stops reading.
    let stream = echo_to_a_late_reader(&server, 99, "the server waiting for room", || {
        let rows = server.registrations();
        rows.iter().any(|r| r.source == "fd" && r.prio == 0)
            && rows
                .iter()
                .any(|r| r.source == "read" && r.state == "disabled")
    });
    // All echoed: the writer dropped itself, the reader reads again.
    eventually("the server reading again", || {
        let rows = server.registrations();
        !rows.iter().any(|r| r.source == "fd" && r.prio == 0)
            && rows
                .iter()
                .any(|r| r.source == "read" && r.state == "enabled")
    });
    drop(stream);
    // The connection's end unregisters its reader.
    eventually("the connection closed", || {
        !server.registrations().iter().any(|r| r.source == "read")
    });
    assert_eq!(server.stop(), format!("served 1 connections, {LEN} bytes"));
}

/// The tokio server stops having the kernel read a client that does not
/// read its echo (its reader stays disarmed while the echo waits), and
/// reads again once the client catches up.
#[test]
fn shim_1_tokio_echo_example_waits_for_a_client_that_does_not_read() {
    const LEN: usize = LATE_LEN;
    let mut server = EchoServer::start_named("aem-tokio-echo");
    // We do not read yet: the echo fills the server's socket, its write
    // waits, and its reader stays disarmed: no read for 300 ms.
    let reader = || {
        server
            .registrations()
            .into_iter()
            .find(|r| r.source == "read")
            .map(|r| (r.id, r.state, r.deliveries))
    };
    let stream =
        echo_to_a_late_reader(&server, 98, "the server's reader disarmed for good", || {
            let before = reader();
            std::thread::sleep(Duration::from_millis(300));
            matches!(&before, Some((_, state, _)) if state == "disabled") && reader() == before
        });
    // All echoed: the reader is armed again.
    eventually("the server reading again", || {
        server
            .registrations()
            .iter()
            .any(|r| r.source == "read" && r.state == "enabled")
    });
    drop(stream);
    // The connection's end unregisters its reader.
    eventually("the connection closed", || {
        !server.registrations().iter().any(|r| r.source == "read")
    });
    assert_eq!(server.stop(), format!("served 1 connections, {LEN} bytes"));
}

/// Whether `row` is a pool event (EXEC-3) of source `source`.
fn pool_event(row: &ProcAemRow, source: &str) -> bool {
    row.source == source && row.flags.split(',').any(|f| f == "pool")
}

/// The pool-server connection events among `rows` (level-triggered fd
/// pool events), by state: (enabled, disabled).
fn connection_events(rows: &[ProcAemRow]) -> (usize, usize) {
    let conns = rows
        .iter()
        .filter(|r| pool_event(r, "fd") && r.flags.split(',').any(|f| f == "level"));
    let enabled = conns.clone().filter(|r| r.state == "enabled").count();
    (enabled, conns.count() - enabled)
}

/// The worker-pool server stops reading a client that does not read its
/// echo: the connection's reader (a level-triggered fd event on the pool)
/// is disabled while a level-triggered writability event, on the pool too,
/// waits for room; once the client catches up, the writer drops itself
/// and the reader reads again.  No event thread: the server's events are
/// all pool events (beside the pool threads' own stop events), and a quiet
/// server has its 4 pool threads idle.
#[test]
fn exec_3_pool_server_example_waits_for_a_client_that_does_not_read() {
    let mut server = EchoServer::start_named("aem-pool-server");
    eventually("the server's pool idle", || server.pool() == (4, 0));
    let rows = server.registrations();
    let pool_events: Vec<_> = rows
        .iter()
        .filter(|r| r.flags.split(',').any(|f| f == "pool"))
        .collect();
    assert!(
        pool_events.len() == 1 && pool_events[0].source == "accept",
        "the listener's accept event on the pool: {rows:?}"
    );
    // We do not read yet: the echo fills the server's socket, so the
    // server waits for room and stops reading.
    let stream = echo_to_a_late_reader(&server, 97, "the server waiting for room", || {
        // The writer enabled, the reader disabled.
        connection_events(&server.registrations()) == (1, 1)
    });
    // All echoed: the writer dropped itself, the reader reads again.
    eventually("the server reading again", || {
        connection_events(&server.registrations()) == (1, 0)
    });
    drop(stream);
    // The connection's end unregisters its reader; the pool is idle.
    eventually("the connection closed", || {
        connection_events(&server.registrations()) == (0, 0) && server.pool() == (4, 0)
    });
    assert_eq!(
        server.stop(),
        format!("served 1 connections, {LATE_LEN} bytes")
    );
}

/// The children of process `pid`, zombies included, by pid.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            // A process that is gone meanwhile is no child any more.
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // After the command: the state, then the parent's pid.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(1) == Some(pid.to_string().as_str())
            })
        })
        .collect();
    children.sort_unstable();
    children
}

/// The inodes of the sockets process `pid` holds.
fn sockets_of(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The inode of the server's end of `client`'s connection (local and
/// remote ports swapped), from `/proc/net/tcp`.
fn server_end(client: &TcpStream) -> u64 {
    let (client_port, server_port) = (
        client.local_addr().unwrap().port(),
        client.peer_addr().unwrap().port(),
    );
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        // sl, local, remote, state, queues, timer, retransmits, uid,
        // timeout, inode.
        .find(|f| port(f[1]) == server_port && port(f[2]) == client_port)
        .map(|f| f[9].parse().unwrap())
        .unwrap_or_else(|| panic!("no server end of port {client_port} in:\n{tcp}"))
}

/// Bytes of each message in [`exec_2_fork_server_example_handles_each_connection_in_its_own_process`].
const ROUND_TRIP: usize = 1000;

/// Send message `m` of client `c` on `stream` and read its echo; returns
/// its length.
fn round_trip(stream: &TcpStream, c: usize, m: usize) -> u64 {
    let msg = message(c, m, ROUND_TRIP);
    (&*stream).write_all(&msg).unwrap();
    let mut echo = vec![0u8; msg.len()];
    (&*stream)
        .read_exact(&mut echo)
        .unwrap_or_else(|e| panic!("client {c}, message {m}: {e}"));
    assert!(echo == msg, "client {c}, message {m}: the echo differs");
    msg.len() as u64
}

/// The pre-fork server (EXEC-2) serves each connection in a child process
/// of its own: each connection's server end is held by exactly one
/// process, a child of the server (the server closed its copy), a
/// different child per connection, and `/proc/<pid>/aem` counts one
/// child started per connection.  A child killed mid-connection ends that
/// connection alone: the server and the other connections go on.  The
/// children are reaped by the kernel: once their clients close, the
/// server has no child left, not even a zombie.
#[test]
fn exec_2_fork_server_example_handles_each_connection_in_its_own_process() {
    let mut server = EchoServer::start_named("aem-fork-server");
    let pid = server.child.id();
    let rows = server.registrations();
    assert!(
        rows.len() == 1
            && rows[0].source == "accept"
            && ["fork", "nocldwait"]
                .iter()
                .all(|f| rows[0].flags.split(',').any(|g| g == *f)),
        "the listener's accept event, forking auto-reaped children: {rows:?}"
    );
    let mut bytes = 0;
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|c| {
            let stream = TcpStream::connect(&server.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            bytes += round_trip(&stream, c, 0);
            stream
        })
        .collect();
    assert_eq!(server.forks(), (3, 0), "one child per connection");
    let children = children_of(pid);
    assert_eq!(children.len(), 3, "the server's children: {children:?}");
    let server_sockets = sockets_of(pid);
    let servers: Vec<u32> = clients
        .iter()
        .map(|client| {
            let end = server_end(client);
            assert!(
                !server_sockets.contains(&end),
                "the server kept its copy of a connection"
            );
            let holders: Vec<u32> = children
                .iter()
                .copied()
                .filter(|&child| sockets_of(child).contains(&end))
                .collect();
            assert_eq!(holders.len(), 1, "the children holding a connection");
            holders[0]
        })
        .collect();
    let mut distinct = servers.clone();
    distinct.sort_unstable();
    assert_eq!(distinct, children, "each connection in its own child");

    // Kill the first connection's child once it waits for more (in
    // read(2), system call 0), past counting its echo.
    let victim = servers[0];
    eventually("the first child waiting in read", || {
        std::fs::read_to_string(format!("/proc/{victim}/syscall"))
            .is_ok_and(|s| s.starts_with("0 "))
    });
    // SAFETY: kill(2) on a child of our child.
    let killed = unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill: {}", std::io::Error::last_os_error());
    // Its connection ends (closed with the process), ...
    let mut rest = Vec::new();
    match (&clients[0]).read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{} bytes after the kill", rest.len()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // ... its process is reaped, and nothing else changes.
    eventually("the killed child reaped", || {
        children_of(pid) == [servers[1], servers[2]]
    });
    for (c, client) in clients.iter().enumerate().skip(1) {
        bytes += round_trip(client, c, 1);
    }
    let late = TcpStream::connect(&server.addr).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    bytes += round_trip(&late, 3, 0);
    clients.push(late);
    assert_eq!(server.forks(), (4, 0));
    assert_eq!(children_of(pid).len(), 3);

    // The clients close: each child sees the end of its stream, returns,
    // and is reaped by the kernel.
    drop(clients);
    eventually("no child of the server left, zombies included", || {
        children_of(pid).is_empty()
    });
    assert_eq!(
        server.stop(),
        format!("served 4 connections, {bytes} bytes")
    );
}

/// One line of `aem-periodic-timer`.
#[derive(Debug, PartialEq, Eq)]
enum TimerLine {
    Tick { i: u64, expirations: u64 },
    Main(u64),
    Done { ticks: u64, expirations: u64 },
}

fn number(s: &str) -> Option<u64> {
    // Digits only: no sign, no spaces, nothing spliced in.
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn parse_timer_line(line: &str) -> Option<TimerLine> {
    if let Some(rest) = line.strip_prefix("tick ") {
        let (i, exp) = rest.split_once(" expirations=")?;
        return Some(TimerLine::Tick {
            i: number(i)?,
            expirations: number(exp)?,
        });
    }
    if let Some(rest) = line.strip_prefix("main ") {
        return Some(TimerLine::Main(number(rest)?));
    }
    let rest = line.strip_prefix("done ticks=")?;
    let (ticks, exp) = rest.split_once(" expirations=")?;
    Some(TimerLine::Done {
        ticks: number(ticks)?,
        expirations: number(exp)?,
    })
}

#[test]
fn shim_1_periodic_timer_example_ticks_then_exits() {
    const TICKS: u64 = 10;
    let mut child = Command::new("aem-periodic-timer")
        .args(["--period-ms", "20", "--ticks", &TICKS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aem-periodic-timer");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let status = wait_within(&mut child, Duration::from_secs(60), "aem-periodic-timer");
    let text = reader.join().unwrap().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "{status}; stdout {text:?}, stderr {err:?}"
    );
    assert!(text.ends_with('\n'), "unterminated last line: {text:?}");

    let lines: Vec<TimerLine> = text
        .lines()
        .map(|l| parse_timer_line(l).unwrap_or_else(|| panic!("malformed line {l:?} in {text:?}")))
        .collect();
    let (last, body) = lines.split_last().expect("no output");
    let &TimerLine::Done { ticks, expirations } = last else {
        panic!("last line {last:?}, not done=...: {text:?}");
    };
    let mut tick_lines = 0;
    let mut sum = 0;
    let mut mains = 0;
    for line in body {
        match *line {
            TimerLine::Tick { i, expirations } => {
                tick_lines += 1;
                assert_eq!(i, tick_lines, "ticks out of order: {text:?}");
                assert!(expirations >= 1, "a tick with no expiration: {text:?}");
                sum += expirations;
            }
            TimerLine::Main(j) => {
                mains += 1;
                assert_eq!(j, mains, "main lines out of order: {text:?}");
            }
            TimerLine::Done { .. } => panic!("done before the end: {text:?}"),
        }
    }
    assert_eq!(ticks, tick_lines, "done counts other ticks: {text:?}");
    assert_eq!(expirations, sum, "done sums other expirations: {text:?}");
    assert!(expirations >= TICKS, "ended early: {text:?}");
    // The last tick is the one that reached the target.
    assert!(
        sum - expirations_of_last_tick(body) < TICKS,
        "ran on: {text:?}"
    );
    assert!(mains > 0, "the main flow did nothing: {text:?}");
}

fn expirations_of_last_tick(lines: &[TimerLine]) -> u64 {
    lines
        .iter()
        .rev()
        .find_map(|l| match *l {
            TimerLine::Tick { expirations, .. } => Some(expirations),
            _ => None,
        })
        .unwrap_or(0)
}

#[test]
fn shim_1_timer_lines_are_parsed_strictly() {
    assert_eq!(
        parse_timer_line("tick 3 expirations=2"),
        Some(TimerLine::Tick {
            i: 3,
            expirations: 2
        })
    );
    assert_eq!(parse_timer_line("main 12"), Some(TimerLine::Main(12)));
    assert_eq!(
        parse_timer_line("done ticks=9 expirations=10"),
        Some(TimerLine::Done {
            ticks: 9,
            expirations: 10
        })
    );
    for bad in [
        "tick 3 expirations=2main 4",
        "main 1tick 2 expirations=1",
        "tick  expirations=1",
        "main -1",
        "",
    ] {
        assert_eq!(parse_timer_line(bad), None, "{bad:?}");
    }
}

/// What an example run to its end said.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Its standard output, line by line.
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; stdout {:?}, stderr {:?}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Read all of `pipe` in a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        pipe.read_to_string(&mut s).unwrap();
        s
    })
}

/// Wait up to `limit` for `child`, spawned with its standard output and
/// error piped, and collect them.
fn finish(mut child: Child, limit: Duration, what: &str) -> Run {
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = wait_within(&mut child, limit, what);
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Run the example `name` with `args` to its end, within `limit`.
fn run_example(name: &str, args: &[&str], limit: Duration) -> Run {
    let child = Command::new(name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    finish(child, limit, name)
}

/// The numbers `line` holds after `prefix`, between the words of
/// `shape` (`"seq= payload= count="`: the numbers follow each `=`), or
/// `None` when it is not of that shape.
fn numbers_of(line: &str, prefix: &str, shape: &str) -> Option<Vec<u64>> {
    let mut rest = line.strip_prefix(prefix)?;
    let mut found = Vec::new();
    let keys: Vec<&str> = shape.split_inclusive('=').collect();
    for (i, key) in keys.iter().enumerate() {
        rest = rest.strip_prefix(key.trim_start_matches(' '))?;
        let end = match keys.get(i + 1) {
            Some(_) => rest.find(' ')?,
            None => rest.len(),
        };
        found.push(number(&rest[..end])?);
        rest = rest[end..].strip_prefix(' ').unwrap_or(&rest[end..]);
    }
    rest.is_empty().then_some(found)
}

#[test]
fn src_7_example_lines_are_parsed_strictly() {
    let shape = "seq= payload= count=";
    assert_eq!(
        numbers_of("polled: seq=3 payload=9 count=1", "polled: ", shape),
        Some(vec![3, 9, 1])
    );
    for bad in [
        "polled: seq=3 payload=9 count=1 ",
        "polled: seq=3 payload=9",
        "polled: seq=3 payload=-9 count=1",
        "polled: seq=3 payload=9 count=1polled: seq=4 payload=16 count=1",
        "dispatched: seq=3 payload=9 count=1",
    ] {
        assert_eq!(numbers_of(bad, "polled: ", shape), None, "{bad:?}");
    }
}

/// `aem-topic-pubsub`: a publisher and two forked subscribers, one
/// dispatched, one polled.  Each subscriber's records, in the order it
/// printed them, are the topic's publications in order, with nothing lost
/// (a record standing for `count` publications, when the subscriber fell
/// behind, advances the sequence number by `count`), each payload the one
/// published, and the counts add up to exactly what was published.
#[test]
fn src_7_topic_pubsub_example_every_subscriber_sees_every_publication() {
    const N: u64 = 300;
    let run = run_example(
        "aem-topic-pubsub",
        &["--payloads", &N.to_string()],
        Duration::from_secs(90),
    );
    assert!(run.status.success(), "{run}");
    let lines = run.lines();
    for who in ["dispatched", "polled"] {
        let prefix = format!("{who}: ");
        let mine: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let (summary, records) = mine.split_last().expect("no lines");
        let (mut last_seq, mut total) = (0, 0);
        for line in records {
            let v = numbers_of(line, &prefix, "seq= payload= count=")
                .unwrap_or_else(|| panic!("malformed line {line:?}: {run}"));
            let (seq, payload, count) = (v[0], v[1], v[2]);
            assert!(count >= 1, "{line:?}: {run}");
            assert_eq!(seq, last_seq + count, "{line:?}: a gap or a repeat: {run}");
            assert_eq!(payload, seq * seq, "{line:?}: another payload: {run}");
            last_seq = seq;
            total += count;
        }
        assert_eq!(total, N, "{who}: the counts add up to another total: {run}");
        assert_eq!(
            *summary,
            format!(
                "{who}: {N} publications in {} records, last seq {N}",
                records.len()
            ),
            "{run}"
        );
    }
    assert!(
        lines.contains(&format!("published {N} payloads").as_str()),
        "{run}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("ok: 2 subscribers saw all {N} publications").as_str()),
        "{run}"
    );
    // Nothing else was said.
    let known = lines.iter().filter(|l| {
        l.starts_with("dispatched: ")
            || l.starts_with("polled: ")
            || l.starts_with("published ")
            || l.starts_with("ok: ")
    });
    assert_eq!(known.count(), lines.len(), "{run}");
    assert!(run.stderr.is_empty(), "{run}");
}

/// `aem-pressure-watch`: busy threads make CPU pressure; the overload
/// event reports "overloaded" while they run, and "cleared" after they
/// stopped, in that order, and the program exits 0.
#[test]
fn src_8_pressure_watch_example_reports_overloaded_then_cleared() {
    let run = run_example(
        "aem-pressure-watch",
        &["--busy-secs", "2", "--timeout", "60"],
        Duration::from_secs(90),
    );
    assert!(run.status.success(), "{run}");
    let lines = run.lines();
    assert_eq!(
        lines.first().copied(),
        Some("watching cpu some 50 ms / 500 ms"),
        "{run}"
    );
    let busy = lines
        .get(1)
        .and_then(|l| number(l.strip_prefix("busy: ")?.strip_suffix(" threads")?));
    assert!(busy.is_some_and(|n| n >= 3), "{run}");
    let idle = lines
        .iter()
        .position(|l| *l == "idle")
        .unwrap_or_else(|| panic!("no idle: {run}"));
    let state = |l: &str, what: &str| {
        numbers_of(l, &format!("{what} "), "firings= count=")
            .unwrap_or_else(|| panic!("malformed line {l:?}: {run}"))
    };
    let overloaded: Vec<Vec<u64>> = lines[2..idle]
        .iter()
        .filter(|l| l.starts_with("overloaded "))
        .map(|l| state(l, "overloaded"))
        .collect();
    assert!(
        !overloaded.is_empty(),
        "no overloaded record before idle: {run}"
    );
    // firings= count=: each counted, at least one.
    assert!(
        overloaded.iter().all(|v| v[0] >= 1 && v[1] >= v[0]),
        "{run}"
    );
    let (last, after) = lines[idle + 1..].split_last().expect("nothing after idle");
    assert_eq!(*last, "done: overloaded, then cleared", "{run}");
    let cleared = after
        .last()
        .unwrap_or_else(|| panic!("no record after idle: {run}"));
    // The clearing is counted, but is no firing: a record of it alone
    // has firings=0 count=1.
    let v = state(cleared, "cleared");
    assert!(v[1] > v[0], "{run}");
    assert!(run.stderr.is_empty(), "{run}");
}

/// Without `CAP_SYS_RESOURCE`, PSI refuses a window below 2 s: the
/// example says so, with the way out, and exits 1.
#[test]
fn src_8_pressure_watch_example_without_root_asks_for_a_2_s_window() {
    use std::os::unix::process::CommandExt;
    let child = Command::new("aem-pressure-watch")
        .uid(1000)
        .gid(1000)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aem-pressure-watch");
    let run = finish(child, Duration::from_secs(30), "aem-pressure-watch");
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    assert!(run.stderr.contains("--window-ms 2000"), "{run}");
}

/// `aem-word-watch`: the child stores each value to the shared word and
/// wakes it; the parent's inline handler tells each change, previous ->
/// new, once per wake, before the child's next store (the child waits
/// for its acknowledgement): the lines alternate.
#[test]
fn src_9_word_watch_example_sees_every_change_in_order() {
    const N: u64 = 8;
    let run = run_example(
        "aem-word-watch",
        &["--values", &N.to_string()],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run}");
    let mut expected = Vec::new();
    let mut previous = 0;
    for i in 1..=N {
        let v = i * 1001;
        expected.push(format!("child: store {v}"));
        expected.push(format!("watch: {previous} -> {v} (wakes=1)"));
        previous = v;
    }
    expected.push(format!("done: {N} changes seen"));
    assert_eq!(run.lines(), expected, "{run}");
    assert!(run.stderr.is_empty(), "{run}");
}

const SAMPLE_KO: &str = "/lib/modules/aem_sample.ko";
const SAMPLE_FIRE: &str = "/sys/kernel/aem_sample/fire";

fn sample_loaded() -> bool {
    std::path::Path::new("/sys/module/aem_sample").exists()
}

/// `rmmod aem_sample`; whether it succeeded.
fn rmmod_sample() -> bool {
    Command::new("rmmod")
        .arg("aem_sample")
        .stderr(Stdio::null())
        .status()
        .expect("run rmmod")
        .success()
}

/// The sample module, loaded for a test; unloaded when dropped.
struct SampleModule;

impl SampleModule {
    fn load() -> SampleModule {
        if sample_loaded() {
            assert!(rmmod_sample(), "rmmod the sample module a test left");
        }
        let status = Command::new("insmod")
            .arg(SAMPLE_KO)
            .status()
            .expect("run insmod");
        assert!(status.success(), "insmod {SAMPLE_KO}: {status}");
        SampleModule
    }
}

impl Drop for SampleModule {
    fn drop(&mut self) {
        if sample_loaded() {
            rmmod_sample();
        }
    }
}

/// `aem-module-events`: registered on the sample module's type, it
/// prints the notifications written to the module's `fire` file --
/// coalesced or not, their counts and data add up -- and exits after
/// `--count` of them.  While it runs the module cannot be unloaded;
/// after, it can.
#[test]
fn src_10_module_events_example_prints_each_notification() {
    const N: u64 = 5;
    let module = SampleModule::load();
    let type_ = std::fs::read_to_string("/sys/kernel/aem/types/sample/type").unwrap();
    let mut child = Command::new("aem-module-events")
        .args(["--count", &N.to_string(), "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aem-module-events");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(
        first,
        format!(
            "waiting for {N} notifications of type sample ({})\n",
            type_.trim()
        )
    );
    assert!(
        !rmmod_sample(),
        "rmmod succeeded while the example is registered"
    );
    // Data 10, 20, ..., one write (one notification) each.
    for i in 1..=N {
        std::fs::write(SAMPLE_FIRE, (i * 10).to_string()).expect("write fire");
    }
    child.stdout = None;
    let rest = read_all(out);
    let err = read_all(child.stderr.take().unwrap());
    let status = wait_within(&mut child, Duration::from_secs(60), "aem-module-events");
    let run = Run {
        status,
        stdout: first + &rest.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(run.status.success(), "{run}");
    let lines = run.lines();
    let (last, records) = lines[1..].split_last().expect("no records");
    let (mut count, mut data) = (0, 0);
    for line in records {
        let v = numbers_of(line, "notified: ", "count= data=")
            .unwrap_or_else(|| panic!("malformed line {line:?}: {run}"));
        assert!(v[0] >= 1, "{run}");
        count += v[0];
        data += v[1];
    }
    let sum: u64 = (1..=N).map(|i| i * 10).sum();
    assert_eq!((count, data), (N, sum), "{run}");
    assert_eq!(
        *last,
        format!(
            "done: {N} notifications in {} records, data sum {sum}",
            records.len()
        ),
        "{run}"
    );
    assert!(run.stderr.is_empty(), "{run}");
    // The example's registration ended with it: the module goes.
    assert!(rmmod_sample(), "rmmod after the example exited");
    assert!(!sample_loaded());
    drop(module);
}

/// Without the sample module, `aem-module-events` says how to load it
/// and exits 1.
#[test]
fn src_10_module_events_example_without_the_module_says_how_to_load_it() {
    if sample_loaded() {
        assert!(rmmod_sample(), "rmmod the sample module a test left");
    }
    let run = run_example("aem-module-events", &[], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    assert!(run.stderr.contains(&format!("insmod {SAMPLE_KO}")), "{run}");
}
