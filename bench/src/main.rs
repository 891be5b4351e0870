//! `aem-bench`: AEM benchmarks, run in the guest by `make bench`.
//!
//! Prints one table row per figure: id, benchmark, p50, p99, and the ratio
//! of p50 to the peer mechanism measured in the same run.  TCG time is not
//! hardware time, so only the ratios travel.
//!
//! Today: the wake-up latency of a thread blocked in `aem_wait()` on an fd
//! event (polled AEM), against a thread blocked in `epoll_wait()` on the
//! same kind of event.  PERF-1 proper (inline handlers, RT signals,
//! io_uring) grows here with inline delivery.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

const ROUNDS: usize = 2000;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd has no memory-safety preconditions.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: eventfd just returned this descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn poke(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
}

/// A way to block until the eventfd fires.
type Waiter = Box<dyn FnMut() + Send>;

/// Ping-pong `ROUNDS` times: the main thread stamps the time and pokes the
/// eventfd; the waiter thread, blocked in the mechanism under test, records
/// how long the wake-up took.  Returns the latencies in nanoseconds, sorted.
fn measure(make_waiter: impl FnOnce(&OwnedFd) -> Waiter) -> Vec<u64> {
    let efd = eventfd();
    let mut wait = make_waiter(&efd);
    let stamp = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    let waiter_fd = efd.try_clone().expect("dup");
    let waiter_stamp = stamp.clone();
    let waiter = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            wait();
            let woke = now_ns();
            drain(&waiter_fd);
            let sent = waiter_stamp.load(std::sync::atomic::Ordering::Acquire);
            done_tx.send(woke - sent).expect("report");
        }
    });
    let mut lat = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        // Let the waiter block before the event fires.
        std::thread::sleep(Duration::from_micros(200));
        stamp.store(now_ns(), std::sync::atomic::Ordering::Release);
        poke(&efd);
        lat.push(done_rx.recv().expect("latency"));
    }
    waiter.join().expect("waiter");
    lat.sort_unstable();
    lat
}

fn pct(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn row(id: &str, name: &str, lat: &[u64], peer_p50: u64) {
    let p50 = pct(lat, 50);
    println!(
        "{id:<8} {name:<44} {p50:>9} {:>9} {:>6.2}",
        pct(lat, 99),
        p50 as f64 / peer_p50 as f64
    );
}

fn epoll_waiter(efd: &OwnedFd) -> Waiter {
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    // SAFETY: epoll_create1 just returned this descriptor.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: `ev` is a valid epoll_event.
    let r = unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            efd.as_raw_fd(),
            &mut ev,
        )
    };
    assert_eq!(r, 0);
    Box::new(move || {
        let mut out = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one live epoll_event to fill.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut out, 1, -1) };
        assert_eq!(n, 1, "epoll_wait: {}", std::io::Error::last_os_error());
    })
}

fn aem_waiter(efd: &OwnedFd) -> Waiter {
    let reg = aem::register(
        aem::Source::Fd {
            fd: efd.as_fd(),
            events: aem::FdEvents::IN,
        },
        aem::Options::default(),
    )
    .expect("aem_register");
    Box::new(move || {
        let _keep = &reg;
        while aem::wait(1, None).expect("aem_wait").is_empty() {}
    })
}

fn main() {
    let epoll = measure(epoll_waiter);
    let aem = measure(aem_waiter);
    let peer = pct(&epoll, 50);
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id", "benchmark (guest-clock ns)", "p50", "p99", "ratio"
    );
    row("peer", "eventfd -> epoll_wait thread wakes", &epoll, peer);
    row(
        "PERF-1*",
        "eventfd -> aem_wait thread wakes (polled)",
        &aem,
        peer,
    );
}
