//! SEC: no local user can hang, crash or exhaust the kernel through AEM
//! (MISSION.md SEC-2 per-user limits, SEC-3 hostile callers, SEC-4 a
//! crashing or exiting owner frees what it held).
//!
//! Most tests run in a child process (`in_child`): they lower limits,
//! change uid or leave registrations behind on purpose.  Run with
//! --test-threads=1 (as `make test` does): the tests share sysctls.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use aem::{Action, Clock, Errno, Error, EventData, Expiry, FdEvents, Options, Source};
use aem_conformance::{in_child, pipe, proc_aem, proc_row, SharedWords};

const SEC: Duration = Duration::from_secs(1);

fn after(d: Duration, interval: Option<Duration>) -> Source<'static> {
    Source::timer(Clock::Monotonic, Expiry::After(d), interval)
}

fn watch_in(fd: &impl AsFd) -> Result<aem::Registration, Error> {
    aem::register(Source::fd(fd.as_fd(), FdEvents::IN), Options::default())
}

fn epoll_create() -> OwnedFd {
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(fd >= 0, "epoll_create1: {}", io::Error::last_os_error());
    // SAFETY: just created; we own it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn epoll_add(epoll: &impl AsRawFd, fd: RawFd) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the call.
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(r, 0, "epoll_ctl ADD: {}", io::Error::last_os_error());
}

/// Take records for up to `limit` until every id in `want` has been seen.
fn wait_for_ids(want: &[u32], limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut seen = vec![false; want.len()];
    while seen.iter().any(|s| !s) {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!("ids {want:?}, seen {seen:?}"));
        }
        for rec in aem::wait(16, Some(left)).map_err(|e| e.to_string())? {
            if let Some(i) = want.iter().position(|&id| id == rec.id) {
                seen[i] = true;
            }
        }
    }
    Ok(())
}

/// One process: its context fd in a chain of `depth` nested epoll sets,
/// an fd event on the outermost, a timer.  `watch_first`: the fd event is
/// registered before the context fd enters the chain.
fn nested_epoll_loop(depth: usize, watch_first: bool) -> i32 {
    let ctx = aem::context_fd().unwrap();
    let epolls: Vec<OwnedFd> = (0..depth).map(|_| epoll_create()).collect();
    let outer = epolls.last().unwrap();
    let watch = if watch_first {
        Some(watch_in(outer).unwrap())
    } else {
        None
    };
    epoll_add(&epolls[0], ctx.as_raw_fd());
    for i in 1..depth {
        epoll_add(&epolls[i], epolls[i - 1].as_raw_fd());
    }
    let watch = watch.unwrap_or_else(|| watch_in(outer).unwrap());
    let timer = aem::register(after(Duration::from_millis(5), None), Options::default()).unwrap();
    // Before the fix the guest locks up here, when the timer fires.
    match wait_for_ids(&[timer.id(), watch.id()], 5 * SEC) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("depth {depth}: {e}");
            1
        }
    }
}

#[test]
fn sec_3_context_fd_in_nested_epoll_watched_by_its_own_process_does_not_lock_up() {
    // epoll allows four levels of nesting (EP_MAX_NESTS) under a watch.
    for depth in 1..=4 {
        for watch_first in [false, true] {
            assert_eq!(
                in_child(|| nested_epoll_loop(depth, watch_first)),
                0,
                "depth {depth}, watch registered first: {watch_first}"
            );
        }
    }
}

#[test]
fn sec_3_a_ready_file_added_to_an_epoll_set_holding_the_context_does_not_lock_up() {
    // The loop starts in epoll: epoll_ctl(ADD) of a ready file wakes the
    // set's queue, the AEM watch on the set activates, the context's
    // wake-up reaches the set again (found by aem-fuzz --repro
    // ctx-epoll-add).
    let code = in_child(|| {
        let ctx = aem::context_fd().unwrap();
        let set = epoll_create();
        epoll_add(&set, ctx.as_raw_fd());
        let watch = watch_in(&set).unwrap();
        let ready = aem_conformance::eventfd();
        aem_conformance::eventfd_add(&ready, 1);
        epoll_add(&set, ready.as_raw_fd());
        match wait_for_ids(&[watch.id()], 5 * SEC) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        }
    });
    assert_eq!(code, 0);
}

fn pidfd_getfd(pid: libc::pid_t, fd: RawFd) -> OwnedFd {
    // SAFETY: pidfd_open and pidfd_getfd take no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    assert!(pidfd >= 0, "pidfd_open: {}", io::Error::last_os_error());
    // SAFETY: as above.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as RawFd;
    assert!(got >= 0, "pidfd_getfd: {}", io::Error::last_os_error());
    // SAFETY: both descriptors are new and ours.
    unsafe {
        libc::close(pidfd);
        OwnedFd::from_raw_fd(got)
    }
}

#[test]
fn sec_3_wake_up_chain_into_an_unpolled_context_of_another_process_is_clean() {
    // A timer wakes this process's context, whose file is in an epoll
    // set; another process watches the set, and its own context is in no
    // epoll set, so its wake-up runs at once, nested in the first one's
    // (the debug kernel's lockdep checks the nesting).
    let code = in_child(|| {
        let ctx = aem::context_fd().unwrap();
        let set = epoll_create();
        epoll_add(&set, ctx.as_raw_fd());
        let shared = SharedWords::new(1);
        let watcher = in_child_async(|| {
            let watch = watch_in(&set).unwrap();
            shared.set(0, 1);
            match wait_for_ids(&[watch.id()], 5 * SEC) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("the watcher: {e}");
                    1
                }
            }
        });
        let deadline = Instant::now() + 5 * SEC;
        while shared.get(0) == 0 {
            assert!(Instant::now() < deadline, "the watcher did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        let timer =
            aem::register(after(Duration::from_millis(5), None), Options::default()).unwrap();
        let mine = wait_for_ids(&[timer.id()], 5 * SEC);
        let mut status = 0;
        // SAFETY: `status` is a valid int.
        assert_eq!(unsafe { libc::waitpid(watcher, &mut status, 0) }, watcher);
        match (
            mine,
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        ) {
            (Ok(()), true) => 0,
            (r, _) => {
                eprintln!("timer: {r:?}, watcher status {status:#x}");
                1
            }
        }
    });
    assert_eq!(code, 0);
}

/// Fork; the child runs `f` and exits with its value; returns its pid.
fn in_child_async(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs `f` and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: leave the child at once.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// A ring of `n` processes.  Process i puts its context fd in an epoll
/// set E_i; process i + 1 (its child, which inherits E_i) watches E_i, and
/// process 0 watches E_(n-1), taken with pidfd_getfd: every context's
/// wake-up goes through the next one and back.  Each has a timer, and
/// must see both its timer and its watch.
fn ring_member(i: usize, n: usize, shared: SharedWords, prev_epoll: Option<OwnedFd>) -> i32 {
    let ctx = aem::context_fd().unwrap();
    let mine = epoll_create();
    epoll_add(&mine, ctx.as_raw_fd());
    // SAFETY: getpid has no preconditions.
    shared.set(2 * i, unsafe { libc::getpid() } as u64);
    shared.set(2 * i + 1, mine.as_raw_fd() as u64);
    let child = if i + 1 < n {
        Some(in_child_async(|| ring_member(i + 1, n, shared, Some(mine))))
    } else {
        None
    };
    // Everyone's epoll set exists once the last member has started.
    let deadline = Instant::now() + 10 * SEC;
    while shared.get(2 * (n - 1)) == 0 {
        assert!(Instant::now() < deadline, "ring did not form");
        std::thread::sleep(Duration::from_millis(1));
    }
    let watched = match prev_epoll {
        Some(e) => e,
        None => pidfd_getfd(
            shared.get(2 * (n - 1)) as libc::pid_t,
            shared.get(2 * (n - 1) + 1) as RawFd,
        ),
    };
    let watch = watch_in(&watched).unwrap();
    shared.fetch_add(2 * n, 1);
    while shared.get(2 * n) < n as u64 {
        assert!(Instant::now() < deadline, "ring members did not all watch");
        std::thread::sleep(Duration::from_millis(1));
    }
    let timer = aem::register(after(Duration::from_millis(5), None), Options::default()).unwrap();
    let mut code = match wait_for_ids(&[timer.id(), watch.id()], 5 * SEC) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ring of {n}, member {i}: {e}");
            1
        }
    };
    // Stay until the whole ring is done, so no one's watch ends early.
    shared.fetch_add(2 * n + 1, 1);
    while shared.get(2 * n + 1) < n as u64 && Instant::now() < deadline + 10 * SEC {
        let _ = aem::wait(16, Some(Duration::from_millis(5)));
    }
    if let Some(pid) = child {
        let mut status = 0;
        // SAFETY: `status` is a valid int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            code = 2;
        }
    }
    code
}

#[test]
fn sec_3_contexts_watching_each_other_through_epoll_do_not_lock_up() {
    for n in 1..=5 {
        let shared = SharedWords::new(2 * n + 2);
        assert_eq!(
            in_child(|| ring_member(0, n, shared, None)),
            0,
            "ring of {n} processes"
        );
    }
}

fn set_nofile(limit: u64) {
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: `rl` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
}

/// The "# files held: N of M" and "# user's registrations: N of M" lines.
fn proc_limits() -> ((u64, u64), (u64, u64)) {
    let text = std::fs::read_to_string("/proc/self/aem").unwrap();
    let pair = |prefix: &str| -> (u64, u64) {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {text}"));
        let mut words = line.split_whitespace();
        let used = words.next().unwrap().parse().unwrap();
        assert_eq!(words.next(), Some("of"));
        let max = words.next().unwrap().parse().unwrap();
        (used, max)
    };
    (pair("# files held: "), pair("# user's registrations: "))
}

#[test]
fn sec_2_registrations_holding_files_count_against_rlimit_nofile() {
    let code = in_child(|| {
        set_nofile(64);
        let mut regs = Vec::new();
        let mut refused = None;
        for round in 0..20_000 {
            let (r, w) = pipe();
            match watch_in(&r) {
                Ok(reg) => regs.push(reg),
                Err(e) => {
                    refused = Some((round, e));
                    break;
                }
            }
            drop((r, w));
        }
        assert_eq!(refused, Some((64, Error::Os(Errno(libc::EMFILE)))));
        assert_eq!(proc_limits().0, (64, 64));
        // An unregistered watch gives its file back.
        drop(regs.pop());
        let (r, _w) = pipe();
        regs.push(watch_in(&r).expect("room for one again"));
        // Timers hold no file: not counted.
        let _t = aem::register(after(SEC * 100, None), Options::default()).unwrap();
        assert_eq!(proc_limits().0, (64, 64));
        drop(regs);
        assert_eq!(proc_limits().0 .0, 0);
        0
    });
    assert_eq!(code, 0);
}

const MAX_EVENTS: &str = "/proc/sys/user/max_aem_events";

fn read_max_events() -> u64 {
    std::fs::read_to_string(MAX_EVENTS)
        .expect("user.max_aem_events")
        .trim()
        .parse()
        .unwrap()
}

fn become_user(uid: u32) {
    // SAFETY: setgid/setuid have no memory-safety preconditions.
    unsafe {
        assert_eq!(libc::setgid(uid), 0);
        assert_eq!(libc::setuid(uid), 0);
        // The uid change made the process undumpable, and its /proc files
        // root's: make /proc/self/aem readable to it again.
        assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 1), 0);
    }
}

#[test]
fn sec_2_default_user_limit_is_sized_from_memory() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    // 4% of memory at 256 bytes a registration, as aem.rst documents:
    // of the memory at boot, before the kernel freed its init sections
    // and the initramfs, which MemTotal counts.
    let full = total_kib * 1024 / 25 / 256;
    let max = read_max_events();
    assert!(
        (full * 9 / 10..=full).contains(&max),
        "user.max_aem_events {max}, 4% of MemTotal makes {full}"
    );
}

#[test]
fn sec_2_per_user_limit_refuses_with_enospc_and_counts_per_user() {
    let default = read_max_events();
    std::fs::write(MAX_EVENTS, "50").unwrap();
    let register_up_to_limit = |uid: u32| {
        in_child(move || {
            become_user(uid);
            let mut regs = Vec::new();
            for _ in 0..50 {
                regs.push(aem::register(after(SEC * 100, None), Options::default()).unwrap());
            }
            let over = aem::register(after(SEC * 100, None), Options::default());
            assert_eq!(over.err(), Some(Error::Os(Errno(libc::ENOSPC))));
            // Watches of one pipe are refused the same way, duplicates or not.
            let (r, _w) = pipe();
            assert_eq!(watch_in(&r).err(), Some(Error::Os(Errno(libc::ENOSPC))));
            assert_eq!(proc_limits().1, (50, 50));
            // An unregistration gives its charge back.
            drop(regs.pop());
            let _watch = watch_in(&r).expect("room for one again");
            assert_eq!(watch_in(&r).err(), Some(Error::Os(Errno(libc::ENOSPC))));
            0
        })
    };
    let a = register_up_to_limit(65534);
    // Another user has a budget of its own.
    let b = register_up_to_limit(65533);
    std::fs::write(MAX_EVENTS, default.to_string()).unwrap();
    assert_eq!((a, b), (0, 0));
}

#[test]
fn sec_2_a_million_watches_of_one_pipe_are_refused() {
    let code = in_child(|| {
        become_user(65534);
        let (r, _w) = pipe();
        let mut regs = Vec::new();
        let err = loop {
            match watch_in(&r) {
                Ok(reg) => regs.push(reg),
                Err(e) => break e,
            }
            assert!(regs.len() < 1_000_000, "a million watches accepted");
        };
        // RLIMIT_NOFILE (1024 in the guest) comes first.
        let nofile = proc_limits().0 .1 as usize;
        assert_eq!(err, Error::Os(Errno(libc::EMFILE)));
        assert_eq!(regs.len(), nofile);
        0
    });
    assert_eq!(code, 0);
}

fn tcp_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

#[test]
fn sec_3_accept_on_a_shut_down_listener_reports_once_then_disables() {
    let listener = tcp_listener();
    let reg = aem::register(
        Source::accept(listener.as_fd(), Default::default()),
        Options::default(),
    )
    .unwrap();
    // SAFETY: shutdown takes no pointers.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    assert_eq!(rc, 0);
    let recs = aem::wait(16, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1, "{recs:?}");
    match &recs[0].data {
        EventData::Accept { conn, .. } => assert_eq!(conn.as_ref().err(), Some(&Errno::EINVAL)),
        other => panic!("{other:?}"),
    }
    // Before the fix: a record per delivery, for ever.
    let more = aem::wait(16, Some(Duration::from_millis(300))).unwrap();
    assert!(more.is_empty(), "{} more records: {:?}", more.len(), more);
    assert_eq!(proc_row(reg.id()).unwrap().state, "disabled");
}

#[test]
fn sec_2_inline_registrations_end_with_their_thread() {
    let before = proc_aem("self").len();
    static RAN: AtomicU64 = AtomicU64::new(0);
    let threads: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(|| {
                // SAFETY: the handler only touches an atomic.
                let reg = unsafe {
                    aem::register_inline(
                        after(Duration::from_millis(1), Some(Duration::from_millis(1))),
                        Options::default(),
                        |_| {
                            RAN.fetch_add(1, SeqCst);
                            Action::Rearm
                        },
                    )
                }
                .unwrap();
                // Left registered on purpose: the thread's exit must end it.
                std::mem::forget(reg);
                std::thread::sleep(Duration::from_millis(5));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rows = proc_aem("self");
    assert_eq!(rows.len(), before, "left behind: {:?}", &rows[before..]);
    assert!(
        RAN.load(SeqCst) > 0,
        "the handlers ran while their threads lived"
    );
}

#[test]
fn sec_3_short_aem_wait_timeouts_always_return() {
    // Before the fix, a deadline that passed between aem_wait's own check
    // and its sleep became a sleep until a signal.
    let code = in_child(|| {
        let stuck = SharedWords::new(2);
        let watchdog = std::thread::spawn(move || {
            let mut last = 0;
            loop {
                std::thread::sleep(Duration::from_secs(2));
                let now = stuck.get(0);
                if stuck.get(1) == 1 {
                    return 0;
                }
                if now == last {
                    // The main thread is stuck in aem_wait: fail now.
                    // SAFETY: _exit ends the child without unwinding.
                    unsafe { libc::_exit(1) };
                }
                last = now;
            }
        });
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..100_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let ts = libc::timespec {
                tv_sec: 0,
                // Around the time aem_wait takes to look for records.
                tv_nsec: (rng % 10_000) as libc::c_long,
            };
            let mut rec = aem_syscalls::aem_record::default();
            // SAFETY: one record's room, a live timespec.
            let n = unsafe { aem_syscalls::aem_wait(&mut rec, 1, &ts, 0) }.unwrap();
            assert_eq!(n, 0);
            stuck.set(0, i + 1);
        }
        stuck.set(1, 1);
        watchdog.join().unwrap()
    });
    assert_eq!(code, 0, "an aem_wait with a short timeout did not return");
}

#[test]
fn sec_3_periodic_timer_nobody_consumes_stops_until_delivered() {
    let reg = aem::register(
        after(Duration::from_millis(1), Some(Duration::from_millis(1))),
        Options::default(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let row = proc_row(reg.id()).unwrap();
    // One activation queued the event; the next found it pending and
    // parked the timer.  Before the fix: one per millisecond.
    assert!(row.activations <= 2, "{row:?}");
    let start = Instant::now();
    let recs = aem::wait(4, Some(SEC)).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(recs.len(), 1);
    // Every period is still counted, the missed ones at delivery.
    let EventData::Timer { expirations } = recs[0].data else {
        panic!("{recs:?}")
    };
    let lower = 299;
    let upper = (Duration::from_millis(300) + elapsed).as_millis() as u64 + 300;
    assert!(
        (lower..upper).contains(&expirations),
        "{expirations} expirations"
    );
    // And it runs again once delivered.
    let recs = aem::wait(4, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1, "the timer did not resume");
}

/// Handlers that crash, each registered raw (no shim: nothing between the
/// kernel and the bad code).
extern "C" fn crash_on_bad_store(_id: i64, _rec: *const u8, _uc: *mut u8) -> i64 {
    // SAFETY: not safe at all -- the point: a store to address 8, in the
    // unmapped first page.
    unsafe {
        std::ptr::NonNull::<u64>::dangling()
            .as_ptr()
            .write_volatile(1)
    };
    0
}

/// Recurse until the stack runs out (the bound is never reached).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 512]);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(frame[depth as usize % 512])
}

extern "C" fn overflow_the_stack(_id: i64, _rec: *const u8, _uc: *mut u8) -> i64 {
    recurse(0) as i64
}

extern "C" fn return_normally(_id: i64, _rec: *const u8, _uc: *mut u8) -> i64 {
    0
}

/// Register a one-shot 1 ms inline timer with this handler and restorer.
fn register_raw_inline(handler: u64, restorer: u64) -> Result<u32, aem_syscalls::Error> {
    let mut attr = aem_syscalls::aem_event_attr {
        source: aem_syscalls::uapi::aem_source_kind::AEM_SOURCE_TIMER,
        flags: aem_syscalls::uapi::AEM_EV_ONESHOT,
        handler,
        restorer,
        ..Default::default()
    };
    attr.__bindgen_anon_1.timer = aem_syscalls::uapi::aem_timer_source {
        clockid: libc::CLOCK_MONOTONIC as u32,
        flags: 0,
        value_ns: 1_000_000,
        interval_ns: 0,
    };
    // SAFETY: `attr` is a live attribute structure of the size passed.
    unsafe { aem_syscalls::aem_register(&attr, std::mem::size_of_val(&attr), 0) }
}

#[test]
fn sec_4_a_crashing_handler_kills_only_its_process_and_frees_its_registrations() {
    // The parent's own event keeps running through every child's crash.
    let mine = aem::register(
        after(Duration::from_millis(10), Some(Duration::from_millis(10))),
        Options::default(),
    )
    .unwrap();
    let users_before = proc_limits().1 .0;
    // What the signal disposition says: SIGSEGV's default, but for the
    // stack overflow, which std's own SIGSEGV handler (on its alternate
    // stack) reports and turns into an abort.
    let cases: [(&str, u64, u64, i32); 4] = [
        (
            "a fault in the handler",
            crash_on_bad_store as *const () as u64,
            return_normally as *const () as u64,
            libc::SIGSEGV,
        ),
        (
            "a stack overflow",
            overflow_the_stack as *const () as u64,
            return_normally as *const () as u64,
            libc::SIGABRT,
        ),
        (
            "an unmapped handler address",
            0x1000,
            return_normally as *const () as u64,
            libc::SIGSEGV,
        ),
        (
            "a bad restorer",
            return_normally as *const () as u64,
            0x1000,
            libc::SIGSEGV,
        ),
    ];
    for (what, handler, restorer, signal) in cases {
        let status = aem_conformance::in_child_status(|| {
            // A hundred registrations to free, besides the crashing one.
            let _held: Vec<_> = (0..100)
                .map(|_| aem::register(after(SEC * 100, None), Options::default()).unwrap())
                .collect();
            register_raw_inline(handler, restorer).expect("register");
            std::thread::sleep(SEC * 5);
            0
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == signal,
            "{what}: child status {status:#x}, not killed by signal {signal}"
        );
        // Everything the child registered is gone with it.
        assert_eq!(proc_limits().1 .0, users_before, "{what}");
        let recs = aem::wait(4, Some(SEC)).unwrap();
        assert!(recs.iter().any(|r| r.id == mine.id()), "{what}: {recs:?}");
    }
}

#[test]
fn sec_2_watches_of_one_socket_are_bounded() {
    // A state change walks its socket's watches in softirq: at most 16,
    // from all processes together.
    let listener = tcp_listener();
    let conn = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let watch = || aem::register(Source::socket_state(conn.as_fd()), Options::default());
    let mut watches: Vec<_> = (0..16).map(|_| watch().unwrap()).collect();
    assert_eq!(watch().err(), Some(Error::Os(Errno(libc::EBUSY))));
    drop(watches.pop());
    watches.push(watch().expect("room for one again"));
    // Every one of them sees the connection's changes.
    drop(conn);
    let deadline = Instant::now() + 5 * SEC;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < watches.len() && Instant::now() < deadline {
        for rec in aem::wait(64, Some(Duration::from_millis(100))).unwrap() {
            seen.insert(rec.id);
        }
    }
    assert_eq!(seen.len(), watches.len());
}

const OVERLOAD: &str = "/proc/sys/kernel/aem_overload";

/// `struct uffdio_api` and `struct uffdio_register` (linux/userfaultfd.h).
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// A userfaultfd for missing pages of `len` bytes at `start`, a mapping
/// of ours: their first touch blocks until the fd is served.
fn register_userfaultfd(start: u64, len: u64) -> RawFd {
    // SAFETY: userfaultfd takes no pointers.
    let uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as RawFd;
    assert!(uffd >= 0, "userfaultfd: {}", io::Error::last_os_error());
    let mut api = UffdioApi {
        api: 0xaa,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: `api` is a live struct uffdio_api.
    assert_eq!(unsafe { libc::ioctl(uffd, UFFDIO_API, &mut api) }, 0);
    let mut reg = UffdioRegister {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `reg` is a live struct uffdio_register for our mapping.
    let rc = unsafe { libc::ioctl(uffd, UFFDIO_REGISTER, &mut reg) };
    assert_eq!(rc, 0, "UFFDIO_REGISTER: {}", io::Error::last_os_error());
    uffd
}

/// A page whose first touch blocks until the process is killed: a
/// userfaultfd range that nobody serves.
fn unserved_page() -> *mut u8 {
    let page = aem_conformance::Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    register_userfaultfd(page.addr() as u64, aem_conformance::page_size() as u64);
    let addr = page.addr();
    // Both stay for the life of the (short-lived) process.
    std::mem::forget(page);
    addr
}

#[test]
fn sec_3_a_process_stalled_on_its_own_memory_holds_up_nobody_else() {
    let shared = SharedWords::new(1);
    std::fs::write(OVERLOAD, "1").unwrap();
    // SAFETY: the child makes system calls and leaves by _exit or SIGKILL.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let page = unserved_page();
        // A shed event: the end of the overload has this context to visit.
        let efd = aem_conformance::eventfd();
        let _shed = watch_in(&efd).unwrap();
        aem_conformance::eventfd_add(&efd, 1);
        // Another thread of the process waits for the context's lock.
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
            let _ = aem_syscalls::aem_ctl(1, aem_syscalls::uapi::AEM_CTL_ENABLE, 0);
        });
        shared.set(0, 1);
        // The record slot is the unserved page: the call stalls there,
        // holding the context's lock, until the process is killed.
        // SAFETY: the kernel only writes a record to the page.
        let _ = unsafe { aem_syscalls::aem_wait(page.cast(), 1, std::ptr::null(), 0) };
        // SAFETY: leave at once.
        unsafe { libc::_exit(3) };
    }
    while shared.get(0) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Ending the overload visits every context with shed events; before
    // the fix it waited for this one's lock for ever.
    let start = Instant::now();
    std::fs::write(OVERLOAD, "0").unwrap();
    let took = start.elapsed();
    // And SIGKILL ends the stalled process, both of its threads.
    // SAFETY: kill takes no pointers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + 10 * SEC;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(Instant::now() < deadline, "the stalled process did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(took < 2 * SEC, "aem_overload=0 took {took:?}");
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

// Item 12: a record whose source acted (a connection accepted, bytes read)
// but which could not be written to user space is delivered later, not
// lost.

std::arch::global_asm!(
    ".pushsection .text.aem_sec_restorers, \"ax\"",
    ".globl aem_sec_restorer",
    "aem_sec_restorer:",
    "mov rdi, rax",
    "mov eax, {nr}",
    "syscall",
    "ud2",
    // Returns through the copy of the handler's frame at aem_sec_moved_sp.
    ".globl aem_sec_moved_frame_restorer",
    "aem_sec_moved_frame_restorer:",
    "mov rdi, rax",
    "mov rsp, qword ptr [rip + aem_sec_moved_sp]",
    "mov eax, {nr}",
    "syscall",
    "ud2",
    ".popsection",
    ".pushsection .data.aem_sec_moved_sp, \"aw\"",
    ".balign 8",
    ".globl aem_sec_moved_sp",
    "aem_sec_moved_sp:",
    ".quad 0",
    ".popsection",
    nr = const aem_syscalls::uapi::__NR_aem_return,
);

extern "C" {
    fn aem_sec_restorer();
    fn aem_sec_moved_frame_restorer();
    static mut aem_sec_moved_sp: u64;
}

/// What the trigger handler makes ready: a connection to this port, or
/// bytes in the pipe whose write end is this fd.
static MAKE_CONNECTION_TO: AtomicU64 = AtomicU64::new(0);
static MAKE_BYTES_ON: AtomicU64 = AtomicU64::new(u64::MAX);
static LISTENER_FD: AtomicU64 = AtomicU64::new(0);
static CLIENT_FD: AtomicU64 = AtomicU64::new(u64::MAX);
/// A page-aligned mapping the trigger handler moves its frame to.
static MOVED_FRAME_PAGE: AtomicU64 = AtomicU64::new(0);
static RECORDS: AtomicU64 = AtomicU64::new(0);
static RECORD_DATA: AtomicU64 = AtomicU64::new(0);

/// Bytes of `struct rt_sigframe` (440) and then some: the frame's extended
/// FPU state stays where it is, found through its pointer in the context.
const FRAME_COPY: usize = 512;

/// The trigger: makes the second event pending while it runs (a handler is
/// never interrupted by another), then returns through a read-only copy of
/// its own frame.  aem_return() chains the pending event's handler on that
/// frame: the source acts, and the record cannot be written.
extern "C" fn make_ready_then_return_on_a_read_only_frame(
    _id: i64,
    _rec: *const u8,
    uc: *mut u8,
) -> i64 {
    let port = MAKE_CONNECTION_TO.load(SeqCst) as u16;
    // SAFETY: plain system calls on this test's descriptors and memory;
    // the frame is the kernel's, FRAME_COPY bytes of it are readable
    // (the signal context, and the FPU state above it), and the page is
    // this test's mapping.
    unsafe {
        if port != 0 {
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            libc::connect(
                s,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&sin) as u32,
            );
            CLIENT_FD.store(s as u64, SeqCst);
            // The connection is in the backlog when the listener polls in.
            let mut pfd = libc::pollfd {
                fd: LISTENER_FD.load(SeqCst) as i32,
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut pfd, 1, 2000);
        } else {
            libc::write(
                MAKE_BYTES_ON.load(SeqCst) as i32,
                b"kept".as_ptr().cast(),
                4,
            );
        }
        let page = MOVED_FRAME_PAGE.load(SeqCst) as *mut u8;
        // The frame starts 8 bytes below the context (the return
        // address); the copy keeps its alignment, (frame + 8) % 16 == 0.
        let frame = uc.sub(8);
        std::ptr::copy_nonoverlapping(frame, page.add(8), FRAME_COPY);
        libc::mprotect(page.cast(), aem_conformance::page_size(), libc::PROT_READ);
        *std::ptr::addr_of_mut!(aem_sec_moved_sp) = page as u64 + 16;
    }
    aem_syscalls::uapi::AEM_HANDLER_UNREGISTER as i64
}

extern "C" fn note_record(_id: i64, rec: *const aem_syscalls::aem_record, _uc: *mut u8) -> i64 {
    // SAFETY: the kernel passes the record it wrote into the frame.
    RECORD_DATA.store(unsafe { (*rec).data[0] }, SeqCst);
    RECORDS.fetch_add(1, SeqCst);
    aem_syscalls::uapi::AEM_HANDLER_DISARM as i64
}

fn register_inline_attr(
    mut attr: aem_syscalls::aem_event_attr,
    handler: u64,
    restorer: unsafe extern "C" fn(),
) -> u32 {
    attr.handler = handler;
    attr.restorer = restorer as *const () as u64;
    // SAFETY: `attr` is a live attribute structure of the size passed.
    unsafe { aem_syscalls::aem_register(&attr, std::mem::size_of_val(&attr), 0) }.expect("register")
}

/// Runs the scenario for an accept or read registration `attr`; returns
/// how many records its handler got and the last one's data[0].
fn deliver_through_a_failing_chained_frame(attr: aem_syscalls::aem_event_attr) -> (u64, u64) {
    use aem_syscalls::uapi;
    let page = aem_conformance::Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    MOVED_FRAME_PAGE.store(page.addr() as u64, SeqCst);
    let trigger = aem_conformance::eventfd();
    let mut trig_attr = aem_syscalls::aem_event_attr {
        source: uapi::aem_source_kind::AEM_SOURCE_FD,
        flags: uapi::AEM_EV_ONESHOT,
        ..Default::default()
    };
    trig_attr.__bindgen_anon_1.fd = uapi::aem_fd_source {
        fd: trigger.as_raw_fd(),
        events: libc::EPOLLIN as u32,
    };
    register_inline_attr(attr, note_record as *const () as u64, aem_sec_restorer);
    register_inline_attr(
        trig_attr,
        make_ready_then_return_on_a_read_only_frame as *const () as u64,
        aem_sec_moved_frame_restorer,
    );
    // Both handlers run on the way back from this write.
    aem_conformance::eventfd_add(&trigger, 1);
    let end = Instant::now() + SEC;
    while RECORDS.load(SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    (RECORDS.load(SeqCst), RECORD_DATA.load(SeqCst))
}

#[test]
fn sec_3_accepted_connection_survives_a_record_that_could_not_be_written() {
    let code = in_child(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        MAKE_CONNECTION_TO.store(u64::from(l.local_addr().unwrap().port()), SeqCst);
        LISTENER_FD.store(l.as_raw_fd() as u64, SeqCst);
        let mut attr = aem_syscalls::aem_event_attr {
            source: aem_syscalls::uapi::aem_source_kind::AEM_SOURCE_ACCEPT,
            ..Default::default()
        };
        attr.__bindgen_anon_1.accept = aem_syscalls::uapi::aem_accept_source {
            fd: l.as_raw_fd(),
            flags: aem_syscalls::uapi::AEM_ACCEPT_CLOEXEC,
        };
        let (records, data) = deliver_through_a_failing_chained_frame(attr);
        if records != 1 {
            eprintln!("{records} accept records: the accepted connection was lost");
            return 1;
        }
        let fd = data as i64;
        if fd < 0 {
            eprintln!("accept record with error {fd}");
            return 2;
        }
        // SAFETY: the record hands this process the new descriptor.
        let accepted = unsafe { std::net::TcpStream::from_raw_fd(fd as RawFd) };
        // SAFETY: CLIENT_FD is the client socket the handler made.
        let client = unsafe { std::net::TcpStream::from_raw_fd(CLIENT_FD.load(SeqCst) as RawFd) };
        if accepted.peer_addr().unwrap() != client.local_addr().unwrap() {
            eprintln!("the record's fd is not the connection made");
            return 3;
        }
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn sec_3_bytes_read_survive_a_record_that_could_not_be_written() {
    static mut BUF: [u8; 16] = [0; 16];
    let code = in_child(|| {
        let (r, w) = pipe();
        MAKE_BYTES_ON.store(w.as_raw_fd() as u64, SeqCst);
        let mut attr = aem_syscalls::aem_event_attr {
            source: aem_syscalls::uapi::aem_source_kind::AEM_SOURCE_READ,
            ..Default::default()
        };
        attr.__bindgen_anon_1.read = aem_syscalls::uapi::aem_read_source {
            fd: r.as_raw_fd(),
            len: 16,
            buf: std::ptr::addr_of_mut!(BUF) as u64,
        };
        let (records, data) = deliver_through_a_failing_chained_frame(attr);
        if records != 1 || data != 4 {
            eprintln!("{records} read records, last {data}: the bytes read were lost");
            return 1;
        }
        // SAFETY: the kernel wrote the buffer before the record; no
        // handler runs any more (the event disarmed itself).
        let buf = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(BUF)) };
        if &buf[..4] != b"kept" {
            eprintln!("the buffer does not hold the bytes");
            return 2;
        }
        0
    });
    assert_eq!(code, 0);
}

// Item 8: an event shed while its record was out, then requeued, stays on
// the shed list alone (before the fix it was linked into the inline queue
// as well, and ending the overload walked a corrupt list).

static SHED_TARGET_EFD: AtomicU64 = AtomicU64::new(0);
/// Two pages: the first ordinary, the second registered with userfaultfd.
static SPLIT_FRAME_PAGES: AtomicU64 = AtomicU64::new(0);
static RECORD_COUNT: AtomicU64 = AtomicU64::new(0);

/// Offset of `info` in the x86_64 `struct rt_sigframe`: the return
/// address (8) and the `ucontext` (304) come first.
const FRAME_INFO_OFFSET: usize = 312;

/// Activates the target event while it runs, then returns through a copy
/// of its frame whose context sits on the ordinary page and whose record
/// slot is the first byte of the userfaultfd page: aem_return() dequeues
/// the target to chain it, and stalls writing its record.
extern "C" fn activate_then_return_on_a_split_frame(_id: i64, _rec: *const u8, uc: *mut u8) -> i64 {
    aem_conformance::eventfd_add(
        // SAFETY: the eventfd outlives the child process's use of it.
        &unsafe { std::os::fd::BorrowedFd::borrow_raw(SHED_TARGET_EFD.load(SeqCst) as RawFd) },
        1,
    );
    let second_page = SPLIT_FRAME_PAGES.load(SeqCst) as usize + aem_conformance::page_size();
    // (frame + 8) % 16 == 0 holds: second_page - 312 is 8 modulo 16.
    let moved = (second_page - FRAME_INFO_OFFSET) as *mut u8;
    // SAFETY: the frame's return address and context are readable on the
    // stack, and `moved` has FRAME_INFO_OFFSET bytes of the first page.
    unsafe {
        std::ptr::copy_nonoverlapping(uc.sub(8), moved, FRAME_INFO_OFFSET);
        *std::ptr::addr_of_mut!(aem_sec_moved_sp) = moved as u64 + 8;
    }
    aem_syscalls::uapi::AEM_HANDLER_UNREGISTER as i64
}

extern "C" fn note_count(_id: i64, rec: *const aem_syscalls::aem_record, _uc: *mut u8) -> i64 {
    // SAFETY: the kernel passes the record it wrote into the frame.
    RECORD_COUNT.fetch_add(unsafe { (*rec).count }, SeqCst);
    RECORDS.fetch_add(1, SeqCst);
    aem_syscalls::uapi::AEM_HANDLER_REARM as i64
}

/// `struct uffdio_range` (linux/userfaultfd.h).
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;

#[test]
fn sec_2_event_shed_while_its_record_is_out_is_requeued_once() {
    use aem_syscalls::uapi;
    std::fs::write(OVERLOAD, "0").unwrap();
    let code = in_child(|| {
        let page = aem_conformance::page_size();
        let pages = aem_conformance::Mapping::new(2, libc::PROT_READ | libc::PROT_WRITE).unwrap();
        // SAFETY: the first page is ours to write.
        unsafe { std::ptr::write_bytes(pages.addr(), 0, page) };
        SPLIT_FRAME_PAGES.store(pages.addr() as u64, SeqCst);
        let second = pages.addr() as u64 + page as u64;
        let uffd = register_userfaultfd(second, page as u64);

        let target = aem_conformance::eventfd();
        SHED_TARGET_EFD.store(target.as_raw_fd() as u64, SeqCst);
        let trigger = aem_conformance::eventfd();
        let mut attr = aem_syscalls::aem_event_attr {
            source: uapi::aem_source_kind::AEM_SOURCE_FD,
            ..Default::default()
        };
        attr.__bindgen_anon_1.fd = uapi::aem_fd_source {
            fd: target.as_raw_fd(),
            events: libc::EPOLLIN as u32,
        };
        let target_id =
            register_inline_attr(attr, note_count as *const () as u64, aem_sec_restorer);
        attr.flags = uapi::AEM_EV_ONESHOT;
        attr.__bindgen_anon_1.fd.fd = trigger.as_raw_fd();
        register_inline_attr(
            attr,
            activate_then_return_on_a_split_frame as *const () as u64,
            aem_sec_moved_frame_restorer,
        );

        // While this thread stalls on the record slot, with the target
        // dequeued: overload, activate the target again (it is shed),
        // then make the slot fail.
        let server = std::thread::spawn(move || {
            let mut pfd = libc::pollfd {
                fd: uffd,
                events: libc::POLLIN,
                revents: 0,
            };
            let mut msg = [0u8; 32];
            // SAFETY: poll and read into live buffers; mprotect and the
            // wake-up concern the test's own page.
            unsafe {
                assert_eq!(
                    libc::poll(&mut pfd, 1, 10_000),
                    1,
                    "no fault on the record slot"
                );
                assert_eq!(libc::read(uffd, msg.as_mut_ptr().cast(), 32), 32);
                std::fs::write(OVERLOAD, "1").unwrap();
                aem_conformance::eventfd_add(
                    &std::os::fd::BorrowedFd::borrow_raw(SHED_TARGET_EFD.load(SeqCst) as RawFd),
                    1,
                );
                assert_eq!(
                    libc::mprotect(second as *mut libc::c_void, page, libc::PROT_NONE),
                    0
                );
                let mut range = UffdioRange {
                    start: second,
                    len: page as u64,
                };
                assert_eq!(libc::ioctl(uffd, UFFDIO_WAKE, &mut range), 0);
            }
        });
        aem_conformance::eventfd_add(&trigger, 1);
        server.join().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        if RECORDS.load(SeqCst) != 0 {
            eprintln!("the shed event ran during the overload");
            return 1;
        }
        let row = proc_row(target_id).unwrap();
        if row.pending != 2 {
            eprintln!("{row:?}: two activations should be pending");
            return 2;
        }
        // The end of the overload queues it, once, with both activations.
        std::fs::write(OVERLOAD, "0").unwrap();
        let end = Instant::now() + SEC;
        while RECORDS.load(SeqCst) == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        if (RECORDS.load(SeqCst), RECORD_COUNT.load(SeqCst)) != (1, 2) {
            eprintln!(
                "{} records, count {}: want 1 record of 2 activations",
                RECORDS.load(SeqCst),
                RECORD_COUNT.load(SeqCst)
            );
            return 3;
        }
        0
    });
    std::fs::write(OVERLOAD, "0").unwrap();
    assert_eq!(code, 0);
}
