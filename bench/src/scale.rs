//! PERF-2 and PERF-3: what registrations cost when there are many.
//!
//! PERF-2 measures the event-to-handler latency of one inline handler (as
//! PERF-1's "same thread") while 0 to 999,999 other registrations sit idle:
//! one-shot timers an hour away, which live in the same registration
//! table, id space and slab as the measured event.  The ratio is to the
//! figure with no idle registration.
//!
//! PERF-3 measures kernel memory per registration through the memory
//! cgroup the benchmark runs in: registrations are charged to the process
//! (SLAB_ACCOUNT), so the cgroup's `slab` counter grows by exactly what
//! they cost, alignment and the cgroup's own per-object pointer included.
//! The peer is epoll: the same number of distinct eventfds, each added to
//! one epoll instance.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use aem_conformance::MemoryCgroup;

use crate::{eventfd, inline_handler_on, measure_same_thread, pct};

fn raise_nofile(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: `lim` is a valid rlimit; the guest runs as root.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc,
        0,
        "RLIMIT_NOFILE {n}: {}",
        std::io::Error::last_os_error()
    );
}

/// `n` idle registrations: one-shot timers an hour away.
fn idle_timers(n: usize) -> Vec<aem::Registration> {
    (0..n)
        .map(|_| {
            aem::register(
                aem::Source::after(Duration::from_secs(3600)),
                aem::Options::default(),
            )
            .expect("idle timer")
        })
        .collect()
}

/// Let this user hold `n` registrations: the per-user limit
/// (`user.max_aem_events`) defaults to 4% of memory, fewer than a million
/// in a 2 GiB guest; an administrator raises it as for epoll's
/// `max_user_watches`.
fn raise_max_events(n: usize) {
    const PATH: &str = "/proc/sys/user/max_aem_events";
    // A kernel from before the limit (a baseline run) has no such file.
    let Ok(now) = std::fs::read_to_string(PATH) else {
        return;
    };
    let now: usize = now.trim().parse().expect("a number");
    if now < n {
        std::fs::write(PATH, n.to_string()).expect("raise user.max_aem_events");
    }
}

/// PERF-2: rows of (idle registrations, p50, p99, ratio to none idle).
pub fn perf2() {
    raise_max_events(1_000_100);
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id", "inline handler latency (guest-clock ns)", "p50", "p99", "ratio"
    );
    let mut base = 0;
    let mut last = 0;
    for total in [1usize, 1_000, 100_000, 1_000_000] {
        let idle = idle_timers(total - 1);
        let efd = eventfd();
        let reg = inline_handler_on(&efd);
        let lat = measure_same_thread(&efd, &efd);
        drop(reg);
        drop(idle);
        if total == 1 {
            base = pct(&lat, 50);
        }
        last = pct(&lat, 50);
        crate::row(
            "PERF-2",
            &format!("{total} registrations (1 firing)"),
            &lat,
            base,
        );
    }
    let ratio = last as f64 / base as f64;
    println!(
        "{:<8} aim: p50 with 1,000,000 registrations within 10% of 1's: {ratio:.2}x {}",
        "PERF-2",
        crate::verdict(ratio <= 1.10)
    );
}

/// Bytes per item that `f` costs, for `n` items: the growth of the memory
/// cgroup's slab.
fn per_item<T>(cg: &MemoryCgroup, n: usize, f: impl FnOnce() -> T) -> (f64, T) {
    let before = cg.slab();
    let kept = f();
    let after = cg.slab();
    (after.saturating_sub(before) as f64 / n as f64, kept)
}

fn epoll_add_all(fds: &[OwnedFd]) -> OwnedFd {
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    // SAFETY: a new descriptor nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for fd in fds {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: `ev` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
        };
        assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }
    ep
}

fn watch(fd: &OwnedFd) -> aem::Source<'_> {
    aem::Source::fd(fd.as_fd(), aem::FdEvents::IN)
}

/// PERF-3: kernel memory per registration, against epoll per watched fd.
pub fn perf3() {
    const N: usize = 100_000;
    raise_nofile(2 * N as u64 + 1024);
    raise_max_events(N + 100);
    let cg = MemoryCgroup::enter("aem-perf3");
    let fds: Vec<OwnedFd> = (0..N).map(|_| eventfd()).collect();

    let (epoll, ep) = per_item(&cg, N, || epoll_add_all(&fds));
    drop(ep);
    let (polled, regs) = per_item(&cg, N, || {
        fds.iter()
            .map(|fd| aem::register(watch(fd), aem::Options::default()).expect("register"))
            .collect::<Vec<_>>()
    });
    drop(regs);
    let (inline, regs) = per_item(&cg, N, || {
        fds.iter()
            .map(|fd| {
                // SAFETY: the handler touches nothing.
                unsafe {
                    aem::register_inline(watch(fd), aem::Options::default(), |_| aem::Action::Rearm)
                }
                .expect("register_inline")
            })
            .collect::<Vec<_>>()
    });
    drop(regs);
    let (timer, regs) = per_item(&cg, N, || idle_timers(N));
    drop(regs);

    println!(
        "{:<8} {:<44} {:>9} {:>6}",
        "id", "kernel memory per watch (memcg slab bytes)", "bytes", "ratio"
    );
    let line = |name: &str, bytes: f64| {
        println!(
            "{:<8} {name:<44} {bytes:>9.1} {:>6.2}",
            "PERF-3",
            bytes / epoll
        )
    };
    println!(
        "{:<8} {:<44} {epoll:>9.1} {:>6.2}",
        "peer", "epoll, one eventfd per item", 1.0
    );
    line("AEM fd registration, polled", polled);
    line("AEM fd registration, inline handler", inline);
    line("AEM timer registration (for reference)", timer);
    println!(
        "{:<8} aim: a polled fd registration <= 0.75x epoll's memory: {:.2}x {}",
        "PERF-3",
        polled / epoll,
        crate::verdict(polled <= 0.75 * epoll)
    );
    println!("(N = {N} items; `slab` of memory.stat in the process's memory cgroup)");
}
