//! EXEC-3: handler pools against an epoll thread that hands work to a pool
//! of workers through a channel (the way servers spread events over
//! threads without AEM).
//!
//! - Latency: from just before the write(2) that makes an eventfd
//!   readable to the first thing the handling code does, on an idle
//!   thread: an `aem::Pool` handler (4 threads) against the peer, an
//!   `epoll_wait()` thread that sends the event to 4 workers blocked on a
//!   shared channel.  Aim: at most 0.7x the peer's p50.
//! - Throughput: 8 clients, each with one request outstanding at a time
//!   (an eventfd written by the client, answered on a second eventfd that
//!   the client blocks reading); the handler drains the request, does a
//!   little work, and answers.  4 pool threads against epoll + 4 workers.
//! - Which thread wakes: the pool as a completion port wakes it (the most
//!   recently idle thread, LIFO) and in turn (round robin, FIFO), both in
//!   the latency and the throughput figure.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use aem::{Action, FdEvents, Options, Pool, Source, WakeOrder};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::unistd;

use crate::{drain, eventfd, now_ns, pct, poke, record_hit, row, HITS, ROUNDS, STAMP};

/// Pool threads, and the peer's workers.
const THREADS: usize = 4;
/// Clients of the throughput figure.
const CLIENTS: usize = 8;
/// Requests each client makes.
const REQUESTS: usize = 500;
/// The handler's work per request, in loop iterations.
const WORK: u64 = 2000;

/// `ROUNDS` events, 200 us apart, to an idle handling thread; the
/// handling code calls [`record_hit`] first.  Sorted latencies.
fn latency(fd: &OwnedFd) -> Vec<u64> {
    let mut lat = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        std::thread::sleep(Duration::from_micros(200));
        let hits = HITS.load(SeqCst);
        let t0 = now_ns();
        poke(fd);
        while HITS.load(SeqCst) == hits {
            std::thread::yield_now();
        }
        lat.push(STAMP.load(SeqCst) - t0);
    }
    lat.sort_unstable();
    lat
}

fn epoll_on(fds: &[OwnedFd]) -> OwnedFd {
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    // SAFETY: epoll_create1 just returned this descriptor.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for (i, fd) in fds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` is a valid epoll_event.
        let r = unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
        };
        assert_eq!(r, 0, "epoll_ctl");
    }
    ep
}

/// The peer: one thread in `epoll_wait()` on `fds`, sending each ready
/// index to `THREADS` workers that share the channel's receiver and run
/// `work(index)`.  Runs until `stop` (an extra eventfd) fires.
struct Handoff {
    stop: OwnedFd,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Handoff {
    fn start(fds: Vec<OwnedFd>, work: impl Fn(usize) + Send + Sync + 'static) -> Handoff {
        let stop = eventfd();
        let mut all: Vec<OwnedFd> = fds;
        let stop_index = all.len();
        all.push(stop.try_clone().expect("dup"));
        let ep = epoll_on(&all);
        let (tx, rx) = mpsc::channel::<usize>();
        let rx = Arc::new(Mutex::new(rx));
        let work = Arc::new(work);
        let mut threads = Vec::new();
        for _ in 0..THREADS {
            let rx = rx.clone();
            let work = work.clone();
            threads.push(std::thread::spawn(move || loop {
                let job = rx.lock().expect("channel").recv();
                match job {
                    Ok(i) => work(i),
                    Err(_) => break,
                }
            }));
        }
        threads.push(std::thread::spawn(move || {
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 16];
            loop {
                // SAFETY: `out` is 16 live epoll_events to fill.
                let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 16, -1) };
                if n < 0 {
                    assert_eq!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EINTR)
                    );
                    continue;
                }
                for ev in &out[..n as usize] {
                    let i = ev.u64 as usize;
                    if i == stop_index {
                        return; // drops `tx`: the workers end
                    }
                    tx.send(i).expect("workers");
                }
            }
        }));
        Handoff { stop, threads }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        poke(&self.stop);
        for t in self.threads.drain(..) {
            t.join().expect("peer thread");
        }
    }
}

fn latency_pool(order: WakeOrder) -> Vec<u64> {
    let pool = Pool::with_wake_order(THREADS, order).expect("aem::Pool");
    let efd = eventfd();
    let theirs = efd.try_clone().expect("dup");
    let _reg = pool
        .on_event(
            Source::fd(efd.as_fd(), FdEvents::IN),
            Options::new(),
            move |_| {
                record_hit();
                drain(&theirs);
                Action::Rearm
            },
        )
        .expect("pool event");
    latency(&efd)
}

fn latency_handoff() -> Vec<u64> {
    let efd = eventfd();
    let theirs = efd.try_clone().expect("dup");
    let _peer = Handoff::start(vec![efd.try_clone().expect("dup")], move |_| {
        record_hit();
        drain(&theirs);
    });
    latency(&efd)
}

/// A client's two eventfds: requests (non-blocking, watched by the
/// server) and replies (blocking, read by the client).
struct Client {
    request: OwnedFd,
    reply: OwnedFd,
}

fn clients() -> Vec<Client> {
    (0..CLIENTS)
        .map(|_| Client {
            request: eventfd(),
            reply: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .expect("eventfd")
                .into(),
        })
        .collect()
}

/// What the server does for one request.
fn serve(client: &Client) {
    drain(&client.request);
    let mut x = 0u64;
    for i in 0..WORK {
        x = std::hint::black_box(x.wrapping_add(i));
    }
    std::hint::black_box(x);
    poke(&client.reply);
}

/// Run the clients to the end; requests per second of guest time.
fn drive(clients: &[Arc<Client>]) -> f64 {
    let t0 = now_ns();
    let threads: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..REQUESTS {
                    poke(&c.request);
                    let mut buf = [0u8; 8];
                    assert_eq!(unistd::read(&c.reply, &mut buf), Ok(8));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    (CLIENTS * REQUESTS) as f64 * 1e9 / (now_ns() - t0) as f64
}

fn throughput_pool(order: WakeOrder) -> f64 {
    let pool = Pool::with_wake_order(THREADS, order).expect("aem::Pool");
    let clients: Vec<Arc<Client>> = clients().into_iter().map(Arc::new).collect();
    let _regs: Vec<_> = clients
        .iter()
        .map(|c| {
            let mine = c.clone();
            pool.on_event(
                Source::fd(c.request.as_fd(), FdEvents::IN),
                Options::new(),
                move |_| {
                    serve(&mine);
                    Action::Rearm
                },
            )
            .expect("pool event")
        })
        .collect();
    drive(&clients)
}

fn throughput_handoff() -> f64 {
    let clients: Vec<Arc<Client>> = clients().into_iter().map(Arc::new).collect();
    let fds = clients
        .iter()
        .map(|c| c.request.try_clone().expect("dup"))
        .collect();
    let theirs = clients.clone();
    let _peer = Handoff::start(fds, move |i| serve(&theirs[i]));
    drive(&clients)
}

/// `aem-bench exec3`: the table.
pub fn exec3() {
    let peer = latency_handoff();
    let peer_p50 = pct(&peer, 50);
    let lifo = latency_pool(WakeOrder::MostRecentlyIdle);
    let fifo = latency_pool(WakeOrder::RoundRobin);
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id", "event -> handler, idle thread (guest ns)", "p50", "p99", "ratio"
    );
    row(
        "peer",
        "epoll thread + 4 workers (channel)",
        &peer,
        peer_p50,
    );
    row(
        "EXEC-3",
        "AEM pool of 4, most recently idle (LIFO)",
        &lifo,
        peer_p50,
    );
    row(
        "EXEC-3",
        "AEM pool of 4, round robin (FIFO)",
        &fifo,
        peer_p50,
    );
    println!();

    let peer = throughput_handoff();
    let lifo = throughput_pool(WakeOrder::MostRecentlyIdle);
    let fifo = throughput_pool(WakeOrder::RoundRobin);
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id",
        format!("{CLIENTS} clients x {REQUESTS} requests"),
        "req/s",
        "",
        "ratio"
    );
    let line = |id: &str, name: &str, rps: f64| {
        println!(
            "{id:<8} {name:<44} {rps:>9.0} {:>9} {:>6.2}",
            "",
            rps / peer
        );
    };
    line("peer", "epoll thread + 4 workers (channel)", peer);
    line("EXEC-3", "AEM pool of 4, most recently idle (LIFO)", lifo);
    line("EXEC-3", "AEM pool of 4, round robin (FIFO)", fifo);
}
