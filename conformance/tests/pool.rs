//! EXEC-3 and SEC-4: handler pools.  Pool events run on the threads of
//! the process's handler pool (`aem_wait(AEM_WAIT_SERVE)`), highest
//! priority first across the pool, one thread at a time per event, on the
//! most recently idle thread; a busy pool keeps them pending and loses
//! none.  Checked through `aem::Pool` and, for the bad inputs, the raw
//! calls.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use aem::{Action, FdEvents, Options, Pool, Source, WakeOrder};
use aem_conformance::{
    eventfd, eventfd_add, in_child, in_child_status, proc_aem, proc_aem_counts, proc_row,
    BoostBudget,
};
use aem_syscalls::uapi;

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// Read an eventfd's counter (0 if it is not readable).
fn drain(fd: &OwnedFd) -> u64 {
    let mut buf = [0u8; 8];
    match nix::unistd::read(fd, &mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => 0,
    }
}

fn readable(fd: &OwnedFd) -> Source<'_> {
    Source::fd(fd.as_fd(), FdEvents::IN)
}

/// Wait until `cond` holds, for at most 10 s.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}\n{}",
            state()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a timeout shows: the registrations and every thread's state.
fn state() -> String {
    let mut out = std::fs::read_to_string("/proc/self/aem").unwrap();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
        let syscall = std::fs::read_to_string(path.join("syscall")).unwrap_or_default();
        out += &format!("{} | {wchan} | {}", stat.trim(), syscall);
    }
    out
}

/// The pool line of `/proc/self/aem`: (idle threads, queued events).
fn pool_line() -> (u64, u64) {
    proc_aem_counts("self", "pool")
}

/// Senders that each let one busy pool handler return.
type Releases = Vec<mpsc::Sender<()>>;

/// `n` events that each hold a pool thread until released (a send, or the
/// drop of its sender): once this returns, all `n` handlers are running.
fn occupy(pool: &Pool, n: usize) -> (Vec<aem::PoolRegistration>, Vec<OwnedFd>, Releases) {
    let started = Arc::new(AtomicU32::new(0));
    let mut regs = Vec::new();
    let mut fds = Vec::new();
    let mut releases = Vec::new();
    for _ in 0..n {
        let efd = eventfd();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let s = started.clone();
        let theirs = efd.try_clone().unwrap();
        regs.push(
            pool.on_event(readable(&efd), Options::new(), move |_| {
                drain(&theirs);
                s.fetch_add(1, SeqCst);
                let _ = released.lock().unwrap().recv();
                Action::Rearm
            })
            .unwrap(),
        );
        eventfd_add(&efd, 1);
        fds.push(efd);
        releases.push(release);
    }
    until("the pool to be busy", || started.load(SeqCst) == n as u32);
    (regs, fds, releases)
}

#[test]
fn exec_3_pool_handlers_run_on_pool_threads_where_std_locks_and_printing_work() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.threads(), 2);
    let efd = eventfd();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, theirs) = (seen.clone(), efd.try_clone().unwrap());
    let _reg = pool
        .on_event(readable(&efd), Options::new(), move |rec| {
            let n = drain(&theirs);
            let name = std::thread::current().name().map(str::to_owned);
            // std printing, a std lock and the default allocator.
            println!(
                "pool handler: event {} count {} value {n}",
                rec.id, rec.count
            );
            s.lock().unwrap().push((gettid(), name, format!("{n}")));
            Action::Rearm
        })
        .unwrap();
    let main = gettid();
    for i in 1..=20u64 {
        eventfd_add(&efd, i);
        until("the handler", || seen.lock().unwrap().len() == i as usize);
    }
    let seen = seen.lock().unwrap();
    for (i, (tid, name, value)) in seen.iter().enumerate() {
        assert_ne!(*tid, main, "ran on the registering thread");
        assert_eq!(name.as_deref(), Some("aem-pool"));
        assert_eq!(value, &format!("{}", i + 1));
    }
}

#[test]
fn exec_3_pending_pool_events_run_highest_priority_first_across_the_pool() {
    let pool = Pool::new(4).unwrap();
    let (_busy, _fds, mut releases) = occupy(&pool, 4);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut regs = Vec::new();
    let mut fds = Vec::new();
    for prio in [5u8, 40, 10, 30, 20] {
        let efd = eventfd();
        let (o, theirs) = (order.clone(), efd.try_clone().unwrap());
        regs.push(
            pool.on_event(readable(&efd), Options::new().priority(prio), move |_| {
                drain(&theirs);
                o.lock().unwrap().push(prio);
                Action::Rearm
            })
            .unwrap(),
        );
        eventfd_add(&efd, 1);
        fds.push(efd);
    }
    // All five wait, counted, while the four threads are busy.
    assert_eq!(pool_line(), (0, 5));
    for reg in &regs {
        let row = proc_row(reg.id()).unwrap();
        assert_eq!((row.flags.as_str(), row.pending), ("pool", 1), "{row:?}");
    }
    // One thread set free takes them all, one after another, from the
    // pool's one queue: highest priority first.
    releases.pop();
    until("the five handlers", || order.lock().unwrap().len() == 5);
    assert_eq!(*order.lock().unwrap(), vec![40, 30, 20, 10, 5]);
    drop(releases);
}

#[test]
fn exec_3_a_busy_pool_keeps_events_pending_counted_and_loses_none() {
    let pool = Pool::new(2).unwrap();
    let (_busy, _fds, releases) = occupy(&pool, 2);
    let total = Arc::new(AtomicU64::new(0));
    let mut regs = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..10 {
        let efd = eventfd();
        let (t, theirs) = (total.clone(), efd.try_clone().unwrap());
        regs.push(
            pool.on_event(readable(&efd), Options::new(), move |_| {
                t.fetch_add(drain(&theirs), SeqCst);
                Action::Rearm
            })
            .unwrap(),
        );
        fds.push(efd);
    }
    let mut written = 0;
    for round in 1..=50u64 {
        for fd in &fds {
            eventfd_add(fd, round);
            written += round;
        }
    }
    let activations: u64 = regs.iter().map(|r| proc_row(r.id()).unwrap().pending).sum();
    assert_eq!(
        activations, 500,
        "every write counted while the pool is busy"
    );
    assert_eq!(total.load(SeqCst), 0, "nothing ran on a busy pool");
    drop(releases);
    until("every value read", || total.load(SeqCst) == written);
    until("the pool idle again", || pool_line() == (2, 0));
}

/// Events queued together wake as many idle threads, round after round:
/// a thread woken for one event must not take the wake-up of the next
/// (it did, while it rejoined the idle list on its way out of the wait,
/// and the next event then waited for a busy thread with one idle).
#[test]
fn exec_3_events_queued_together_wake_as_many_idle_threads() {
    const THREADS: u32 = 4;
    const ROUNDS: u32 = 150;
    /// Releases every handler when the test ends, also by a panic: the
    /// pool's drop waits for them.
    struct ReleaseAll(Arc<AtomicU32>);
    impl Drop for ReleaseAll {
        fn drop(&mut self) {
            self.0.store(u32::MAX, SeqCst);
        }
    }
    let pool = Pool::new(THREADS as usize).unwrap();
    let started = Arc::new(AtomicU32::new(0));
    let released = Arc::new(AtomicU32::new(0));
    let _release_all = ReleaseAll(released.clone());
    let mut regs = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..THREADS {
        let efd = eventfd();
        let (s, r, theirs) = (started.clone(), released.clone(), efd.try_clone().unwrap());
        regs.push(
            pool.on_event(readable(&efd), Options::new(), move |_| {
                drain(&theirs);
                // Held until every event of its round has started.
                let round = s.fetch_add(1, SeqCst) / THREADS;
                while r.load(SeqCst) <= round {
                    std::thread::sleep(Duration::from_micros(100));
                }
                Action::Rearm
            })
            .unwrap(),
        );
        fds.push(efd);
    }
    for round in 1..=ROUNDS {
        until("every thread idle", || {
            pool_line() == (u64::from(THREADS), 0)
        });
        for fd in &fds {
            eventfd_add(fd, 1);
        }
        until(&format!("round {round}: one thread per event"), || {
            started.load(SeqCst) == round * THREADS
        });
        released.store(round, SeqCst);
    }
}

#[test]
fn exec_3_one_event_never_runs_on_two_threads_at_once_but_two_events_do() {
    let pool = Pool::new(4).unwrap();
    // One event, activated as fast as the main thread can: its handler
    // sleeps, and counts how many run at once.
    let efd = eventfd();
    let inside = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let runs = Arc::new(AtomicU64::new(0));
    let (i, m, r) = (inside.clone(), most.clone(), runs.clone());
    let _reg = pool
        .on_event(readable(&efd), Options::new(), move |_| {
            let now = i.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            std::thread::sleep(Duration::from_micros(300));
            r.fetch_add(1, SeqCst);
            i.fetch_sub(1, SeqCst);
            Action::Rearm
        })
        .unwrap();
    // Writes while the handler runs: counted, and queued when it returns.
    let end = Instant::now() + Duration::from_secs(10);
    while runs.load(SeqCst) < 50 {
        assert!(Instant::now() < end, "timed out:\n{}", state());
        eventfd_add(&efd, 1);
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(
        most.load(SeqCst),
        1,
        "one event's handler ran on two threads at once"
    );

    // Two events whose handlers each wait for the other to run: only a
    // pool that runs them at once gets both past the rendezvous.  (With a
    // deadline, not a Barrier: a failure must fail, not hang the pool's
    // drop on a handler that waits for good.)
    let both = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let mut regs = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..2 {
        let fd = eventfd();
        let (b, d, theirs) = (both.clone(), done.clone(), fd.try_clone().unwrap());
        regs.push(
            pool.on_event(readable(&fd), Options::new(), move |_| {
                drain(&theirs);
                b.fetch_add(1, SeqCst);
                let end = Instant::now() + Duration::from_secs(20);
                while b.load(SeqCst) < 2 && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if b.load(SeqCst) >= 2 {
                    d.fetch_add(1, SeqCst);
                }
                Action::Rearm
            })
            .unwrap(),
        );
        eventfd_add(&fd, 1);
        fds.push(fd);
    }
    until("both handlers together", || done.load(SeqCst) == 2);
}

/// Run `n` events on `pool`, one at a time, each once all of its threads
/// are idle again (after the last one went back to sleep): the thread
/// ids that ran them, in order.
fn record_tids(pool: &Pool, n: usize) -> Vec<i64> {
    let threads = pool.threads() as u64;
    let efd = eventfd();
    let tids = Arc::new(Mutex::new(Vec::new()));
    let (t, theirs) = (tids.clone(), efd.try_clone().unwrap());
    let _reg = pool
        .on_event(readable(&efd), Options::new(), move |_| {
            drain(&theirs);
            t.lock().unwrap().push(gettid());
            Action::Rearm
        })
        .unwrap();
    for i in 1..=n {
        until("an idle pool", || pool_line().0 == threads);
        eventfd_add(&efd, 1);
        until("the handler", || tids.lock().unwrap().len() == i);
    }
    let tids = tids.lock().unwrap().clone();
    tids
}

#[test]
fn exec_3_the_most_recently_idle_thread_takes_the_next_event() {
    let pool = Pool::new(4).unwrap();
    let tids = record_tids(&pool, 30);
    // LIFO: the thread that ran the last event is the first idle one.
    assert!(
        tids[1..].iter().all(|t| *t == tids[1]),
        "the events rotated over the pool threads: {tids:?}"
    );
}

#[test]
fn exec_3_a_round_robin_pool_wakes_its_threads_in_turn() {
    let pool = Pool::with_wake_order(3, WakeOrder::RoundRobin).unwrap();
    let tids = record_tids(&pool, 12);
    // FIFO: the longest idle thread is woken, so the three take turns.
    let mut first: Vec<i64> = tids[..3].to_vec();
    first.sort_unstable();
    first.dedup();
    assert_eq!(first.len(), 3, "not all threads took a turn: {tids:?}");
    assert!(
        (3..tids.len()).all(|i| tids[i] == tids[i - 3]),
        "the threads did not take turns: {tids:?}"
    );
}

#[test]
fn exec_3_a_pool_thread_runs_at_its_event_priority_and_drops_it_after() {
    fn stat_priority() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(15).unwrap().parse().unwrap()
    }
    // A budget a loaded host's stolen time cannot use up (a TCG guest
    // counts the time its vCPU thread waits on the host as run time).
    let _budget = BoostBudget::set(1_000_000);
    let pool = Pool::new(2).unwrap();
    let efd = eventfd();
    let (tx, rx) = mpsc::channel();
    let theirs = efd.try_clone().unwrap();
    let _reg = pool
        .on_event(readable(&efd), Options::new().priority(60), move |_| {
            drain(&theirs);
            tx.send((gettid(), stat_priority())).unwrap();
            Action::Rearm
        })
        .unwrap();
    eventfd_add(&efd, 1);
    let (tid, in_handler) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The real-time band: AEM priority 60 is rt_priority 11, shown as -12.
    assert_eq!(in_handler, -(60 - 48), "the pool thread was not boosted");
    until("the pool idle again", || pool_line().0 == 2);
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let after: i64 = rest.split(' ').nth(15).unwrap().parse().unwrap();
    assert!(
        after >= 0,
        "the boost outlived the handler: priority {after}"
    );
}

#[test]
fn exec_3_pool_events_outlive_their_pool_and_wait_for_the_next() {
    let efd = eventfd();
    let total = Arc::new(AtomicU64::new(0));
    let reg = {
        let pool = Pool::new(1).unwrap();
        let (t, theirs) = (total.clone(), efd.try_clone().unwrap());
        pool.on_event(readable(&efd), Options::new(), move |_| {
            t.fetch_add(drain(&theirs), SeqCst);
            Action::Rearm
        })
        .unwrap()
    };
    // No pool thread left: the activation waits, counted.
    eventfd_add(&efd, 7);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(total.load(SeqCst), 0);
    assert_eq!(proc_row(reg.id()).unwrap().pending, 1);
    assert_eq!(pool_line(), (0, 1));
    let _next = Pool::new(1).unwrap();
    until("the next pool to run it", || total.load(SeqCst) == 7);
}

#[test]
fn exec_3_a_pool_dropped_by_its_own_handler_stops_every_thread() {
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let pool = Arc::new(Mutex::new(Some(Pool::new(3).unwrap())));
    let efd = eventfd();
    let ran = Arc::new(AtomicU32::new(0));
    let (p, r, theirs) = (pool.clone(), ran.clone(), efd.try_clone().unwrap());
    let reg = pool
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .on_event(readable(&efd), Options::new(), move |_| {
            drain(&theirs);
            // Joins the other two; this one stops once it returns.
            drop(p.lock().unwrap().take());
            r.fetch_add(1, SeqCst);
            Action::Rearm
        })
        .unwrap();
    eventfd_add(&efd, 1);
    until("every pool thread to end", || {
        ran.load(SeqCst) == 1 && threads() == before
    });
    assert!(pool.lock().unwrap().is_none());
    assert_eq!(pool_line().0, 0);
    // The event outlives its pool, as any pool event does.
    assert_eq!(proc_row(reg.id()).unwrap().flags, "pool");
}

#[test]
fn exec_3_a_registration_dropped_while_its_handler_runs_frees_it_after() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let pool = Pool::new(2).unwrap();
    let efd = eventfd();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Flag(dropped.clone());
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let theirs = efd.try_clone().unwrap();
    let reg = pool
        .on_event(readable(&efd), Options::new(), move |_| {
            let _keep = &flag;
            drain(&theirs);
            entered_tx.send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
            Action::Rearm
        })
        .unwrap();
    let id = reg.id();
    eventfd_add(&efd, 1);
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(reg);
    assert!(proc_row(id).is_none(), "still registered after the drop");
    assert!(!dropped.load(SeqCst), "freed while its handler ran");
    go.send(()).unwrap();
    until("the closure freed after its handler", || {
        dropped.load(SeqCst)
    });
    // Nothing runs it again.
    eventfd_add(&efd, 1);
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn exec_3_bad_pool_arguments_are_refused() {
    use aem_syscalls::{aem_ctl, aem_register, aem_wait, Errno, Error};
    let einval = Err(Error::Os(Errno(libc::EINVAL)));
    // A pool event needs a handler.
    let efd = eventfd();
    let mut attr = uapi::aem_event_attr {
        source: uapi::aem_source_kind::AEM_SOURCE_FD,
        flags: uapi::AEM_EV_POOL,
        ..Default::default()
    };
    attr.__bindgen_anon_1.fd = uapi::aem_fd_source {
        fd: std::os::fd::AsRawFd::as_raw_fd(&efd),
        events: libc::EPOLLIN as u32,
    };
    // SAFETY: a live attr of the size passed.
    let r = unsafe { aem_register(&attr, core::mem::size_of_val(&attr), 0) };
    assert_eq!(r, einval.map(|()| 0));
    // Serving takes no records, count or timeout.
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut rec = uapi::aem_record::default();
    // SAFETY: valid pointers (the kernel must refuse them all the same).
    unsafe {
        assert_eq!(
            aem_wait(&mut rec, 1, core::ptr::null(), uapi::AEM_WAIT_SERVE),
            einval.map(|()| 0)
        );
        assert_eq!(
            aem_wait(core::ptr::null_mut(), 0, &ts, uapi::AEM_WAIT_SERVE),
            einval.map(|()| 0)
        );
        assert_eq!(
            aem_wait(
                core::ptr::null_mut(),
                0,
                core::ptr::null(),
                uapi::AEM_WAIT_SERVE | uapi::AEM_WAIT_KEEPALIVE
            ),
            einval.map(|()| 0)
        );
        // Round robin is a way to serve, nothing else.
        for flags in [
            uapi::AEM_WAIT_ROUND_ROBIN,
            uapi::AEM_WAIT_ROUND_ROBIN | uapi::AEM_WAIT_KEEPALIVE,
        ] {
            assert_eq!(
                aem_wait(core::ptr::null_mut(), 0, core::ptr::null(), flags),
                einval.map(|()| 0),
                "flags {flags:#x}"
            );
        }
        assert_eq!(
            aem_wait(&mut rec, 1, &ts, uapi::AEM_WAIT_ROUND_ROBIN),
            einval.map(|()| 0)
        );
    }
    // A thread that blocks delivery could run no handler: EBUSY.
    aem_ctl(0, uapi::AEM_CTL_BLOCK, 0).unwrap();
    // SAFETY: no pointers.
    let r = unsafe {
        aem_wait(
            core::ptr::null_mut(),
            0,
            core::ptr::null(),
            uapi::AEM_WAIT_SERVE,
        )
    };
    aem_ctl(0, uapi::AEM_CTL_UNBLOCK, 0).unwrap();
    assert_eq!(r, Err(Error::Os(Errno(libc::EBUSY))));
    assert_eq!(aem_ctl(1, uapi::AEM_CTL_END_WAIT, 0), einval.map(|()| 0));
    assert_eq!(aem_ctl(0, uapi::AEM_CTL_END_WAIT, 1), einval.map(|()| 0));
    // The crate's checks.
    assert_eq!(
        Pool::new(0).unwrap_err(),
        aem::Error::Os(aem::Errno(libc::EINVAL))
    );
    let pool = Pool::new(1).unwrap();
    let r = pool.on_event(readable(&efd), Options::new().onstack(true), |_| {
        Action::Rearm
    });
    assert_eq!(r.unwrap_err(), aem::Error::Os(aem::Errno(libc::EINVAL)));
    assert!(proc_aem("self").iter().all(|r| r.flags != "pool"));
}

#[test]
fn exec_3_end_wait_ends_a_keepalive_with_zero_now_or_next() {
    use aem_syscalls::{aem_ctl, aem_wait};
    let code = in_child(|| {
        // SAFETY: no pointers.
        let keepalive = || unsafe {
            aem_wait(
                core::ptr::null_mut(),
                0,
                core::ptr::null(),
                uapi::AEM_WAIT_KEEPALIVE,
            )
        };
        // Asked outside a wait: the next keepalive returns at once.
        aem_ctl(0, uapi::AEM_CTL_END_WAIT, 0).unwrap();
        if keepalive() != Ok(0) {
            return 1;
        }
        // From a handler that interrupted it.
        let efd = eventfd();
        // SAFETY: the handler only makes a system call.
        let _reg = unsafe {
            aem::register_inline(readable(&efd), Options::new(), |_| {
                let _ = aem_ctl(0, uapi::AEM_CTL_END_WAIT, 0);
                Action::Rearm
            })
        }
        .unwrap();
        let writer = efd.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            eventfd_add(&writer, 1);
        });
        let r = keepalive();
        t.join().unwrap();
        if r != Ok(0) {
            return 2;
        }
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn sec_4_a_fatal_signal_in_a_pool_handler_ends_the_process_as_its_disposition_says() {
    let status = in_child_status(|| {
        // Rust's runtime handles SIGSEGV (stack overflows): the default
        // disposition, as a C program has it.
        // SAFETY: SIG_DFL for a signal no other code of the child uses.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        let pool = Pool::new(2).unwrap();
        let efd = eventfd();
        let _reg = pool
            .on_event(readable(&efd), Options::new(), |_| {
                // SAFETY: raising a signal has no memory preconditions.
                unsafe { libc::raise(libc::SIGSEGV) };
                Action::Rearm
            })
            .unwrap();
        eventfd_add(&efd, 1);
        std::thread::sleep(Duration::from_secs(10));
        3
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
        "status {status:#x}"
    );
}

/// A pool thread that is no Rust thread: serves until `AEM_CTL_END_WAIT`.
extern "C" fn raw_pool_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: no pointers are passed.
    while unsafe {
        aem_syscalls::aem_wait(
            core::ptr::null_mut(),
            0,
            core::ptr::null(),
            uapi::AEM_WAIT_SERVE,
        )
    }
    .is_err()
    {}
    core::ptr::null_mut()
}

#[test]
fn sec_4_a_pool_thread_that_exits_in_its_handler_hands_the_event_to_the_pool() {
    let (status, err) = aem_conformance::in_child_stderr(|| {
        aem::panic::install_hook();
        let pool = Pool::new(1).unwrap();
        // A thread of our own joins the pool last: the most recently idle,
        // it takes the first event.
        let mut raw: libc::pthread_t = 0;
        // SAFETY: a thread running a function that takes no argument.
        let rc = unsafe {
            libc::pthread_create(
                &mut raw,
                core::ptr::null(),
                raw_pool_thread,
                core::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0);
        until("two idle pool threads", || pool_line().0 == 2);
        let efd = eventfd();
        let first = Arc::new(AtomicI64::new(0));
        let (f, theirs) = (first.clone(), efd.try_clone().unwrap());
        let reg = pool
            .on_event(readable(&efd), Options::new(), move |_| {
                drain(&theirs);
                f.store(gettid(), SeqCst);
                // SAFETY: ends this thread, at once, inside its handler,
                // as an exiting thread would; the child is left soon after.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
                Action::Rearm
            })
            .unwrap();
        eventfd_add(&efd, 1);
        until("the first handler", || first.load(SeqCst) != 0);
        let tid = first.load(SeqCst);
        until("its thread gone", || {
            !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
        });
        // The event is not held by the dead thread: the next activation
        // is delivered, to the pool thread left.  (The closure is not run
        // again: the crate saw its run begin and never end.)
        eventfd_add(&efd, 1);
        until("the second delivery", || {
            proc_row(reg.id()).is_some_and(|r| r.deliveries == 2 && r.pending == 0)
        });
        std::mem::forget(pool);
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}: {err}"
    );
}
