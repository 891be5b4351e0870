//! SCHED-1 to SCHED-4: the boost of the task that runs an inline handler,
//! observed from the task itself (`/proc/thread-self/stat`'s priority,
//! the `aem:aem_boost` tracepoint), against the real scheduler.
//!
//! The priority field of `stat` is the effective priority minus 100: 20
//! for a nice-0 fair task, -1 - rt_priority for a real-time one.  An AEM
//! priority P of the real-time band (50 and up) shows as rt_priority
//! P - 49, that is -(P - 48).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aem::{Action, FdEvents, Options, Source};
use aem_conformance::{
    eventfd, eventfd_add, in_child, reap, spawn, start_aem_tracing, stop_aem_tracing, BoostBudget,
    SharedWords,
};

/// The calling thread's effective priority as `stat` shows it.
fn stat_priority() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(15).unwrap().parse().unwrap()
}

/// What `sched_getscheduler` and `getpriority` report.
fn policy_and_nice() -> (i32, i32) {
    // SAFETY: plain queries of the calling thread.
    unsafe {
        (
            libc::sched_getscheduler(0),
            libc::getpriority(libc::PRIO_PROCESS, 0),
        )
    }
}

fn rt_band_priority(aem_prio: u8) -> i64 {
    -(i64::from(aem_prio) - 48)
}

/// An inline handler on `efd` that records the thread's priority, policy
/// and nice value as it runs.
///
/// Only this thread may activate `efd`, and only where it holds no lock
/// and is not inside the allocator (see the registration's `SAFETY`).
fn recording(efd: &OwnedFd, priority: u8) -> (aem::InlineRegistration, Arc<[AtomicI64; 3]>) {
    let seen = Arc::new([
        AtomicI64::new(i64::MIN),
        AtomicI64::new(0),
        AtomicI64::new(0),
    ]);
    let s = seen.clone();
    // SAFETY: outside the letter of the contract: besides atomics and
    // plain system calls, the handler reads /proc with std::fs, which
    // allocates through the system allocator (this binary does not install
    // aem::HandlerSafeAlloc).  Sound here because the handler runs only
    // where the test thread itself delivers it -- on the way back from its
    // own eventfd write, sysctl write or critical-section end -- never
    // inside malloc or with a lock held.
    let reg = unsafe {
        aem::register_inline(
            Source::fd(efd.as_fd(), FdEvents::IN),
            Options::new().priority(priority),
            move |_| {
                let (policy, nice) = policy_and_nice();
                s[0].store(stat_priority(), SeqCst);
                s[1].store(i64::from(policy), SeqCst);
                s[2].store(i64::from(nice), SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    (reg, seen)
}

#[test]
fn sched_1_rt_band_boost_shows_while_the_handler_runs_and_is_gone_after() {
    // The handler's /proc read must not run out the decay budget: as the
    // first test of a binary under TCG it also pays for translating the
    // code it runs (a -smp 1 CI pass saw the boost decayed by then).
    let _budget = BoostBudget::set(1_000_000);
    let before = stat_priority();
    let (policy, nice) = policy_and_nice();
    let efd = eventfd();
    let (_reg, seen) = recording(&efd, 60);
    eventfd_add(&efd, 1);
    assert_eq!(
        seen[0].load(SeqCst),
        rt_band_priority(60),
        "not boosted in the handler"
    );
    assert_eq!(
        seen[1].load(SeqCst),
        i64::from(policy),
        "the policy changed"
    );
    assert_eq!(
        seen[2].load(SeqCst),
        i64::from(nice),
        "the nice value changed"
    );
    assert_eq!(stat_priority(), before, "the boost outlived the handler");
    assert_eq!(policy_and_nice(), (policy, nice));
}

/// `/proc/self/aem` as a handler of priority `priority` on `efd` sees it.
fn proc_aem_in_handler(efd: &OwnedFd, priority: u8) -> String {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let s = seen.clone();
    // SAFETY: as in `recording`: the handler reads /proc with std::fs and
    // takes a lock, which is sound because it runs only where this thread
    // delivers it, on the way back from its own eventfd write, holding no
    // lock and outside the allocator.
    let reg = unsafe {
        aem::register_inline(
            Source::fd(efd.as_fd(), FdEvents::IN),
            Options::new().priority(priority),
            move |_| {
                *s.lock().unwrap() = std::fs::read_to_string("/proc/self/aem").unwrap();
                Action::Rearm
            },
        )
    }
    .unwrap();
    eventfd_add(efd, 1);
    drop(reg);
    let text = seen.lock().unwrap().clone();
    assert!(!text.is_empty(), "the handler did not run");
    text
}

#[test]
fn obs_1_proc_aem_shows_a_thread_boost_only_while_its_handler_runs() {
    let _budget = BoostBudget::set(1_000_000);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let rt = proc_aem_in_handler(&eventfd(), 60);
    assert!(
        rt.lines()
            .any(|l| l == format!("# thread {tid}: boost 60 real-time")),
        "no real-time boost line for thread {tid}:\n{rt}"
    );
    let fair = proc_aem_in_handler(&eventfd(), 30);
    assert!(
        fair.lines()
            .any(|l| l == format!("# thread {tid}: boost 30 fair")),
        "no fair boost line for thread {tid}:\n{fair}"
    );
    let plain = proc_aem_in_handler(&eventfd(), 0);
    assert!(
        !plain.contains("# thread"),
        "priority 0 does not boost:\n{plain}"
    );
    let after = std::fs::read_to_string("/proc/self/aem").unwrap();
    assert!(
        !after.contains("# thread"),
        "a boost line outlived the handler:\n{after}"
    );
}

#[test]
fn sched_1_fair_band_boost_is_traced_and_leaves_the_priority_alone() {
    // A decay would add boost lines to the trace (see above).
    let _budget = BoostBudget::set(1_000_000);
    let before = stat_priority();
    let dir = start_aem_tracing();
    // Priority 0, the default, does not boost at all.
    let plain = eventfd();
    let (_plain_reg, plain_seen) = recording(&plain, 0);
    eventfd_add(&plain, 1);
    let efd = eventfd();
    let (_reg, seen) = recording(&efd, 30);
    eventfd_add(&efd, 1);
    let trace = stop_aem_tracing(&dir);
    assert_eq!(plain_seen[0].load(SeqCst), before);
    let boosts = trace.lines().filter(|l| l.contains("aem_boost: ")).count();
    assert_eq!(
        boosts, 2,
        "one boost and its end, for the priority-30 event:\n{trace}"
    );
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    assert_eq!(
        seen[0].load(SeqCst),
        before,
        "the fair band changed the priority"
    );
    let raised = trace
        .lines()
        .position(|l| l.contains(&format!("aem_boost: pid={tid} aem_prio=30 ")))
        .unwrap_or_else(|| panic!("no boost in the trace:\n{trace}"));
    let dropped = trace
        .lines()
        .position(|l| l.contains(&format!("aem_boost: pid={tid} aem_prio=-1 ")))
        .unwrap_or_else(|| panic!("no end of boost in the trace:\n{trace}"));
    assert!(raised < dropped, "{trace}");
}

#[test]
fn sched_2_pending_events_boost_to_their_maximum_then_step_down() {
    // Time boosted in the section must not run out the decay budget (the
    // debug kernel is slow); decay has its own test.
    let _budget = BoostBudget::set(1_000_000);
    let before = stat_priority();
    let low = eventfd();
    let high = eventfd();
    let (_l, seen_low) = recording(&low, 55);
    let (_h, seen_high) = recording(&high, 70);
    {
        let _section = aem::critical_section();
        eventfd_add(&low, 1);
        eventfd_add(&high, 1);
        // Blocked, the thread is not boosted for what it keeps out.
        assert_eq!(stat_priority(), before, "boosted in a critical section");
    }
    // The 70 ran first at its boost; the 55 after, at its own.
    assert_eq!(seen_high[0].load(SeqCst), rt_band_priority(70));
    assert_eq!(seen_low[0].load(SeqCst), rt_band_priority(55));
    assert_eq!(stat_priority(), before, "the thread is not as before");
}

#[test]
fn sched_2_raising_a_pending_event_raises_the_boost() {
    let _budget = BoostBudget::set(1_000_000);
    let before = stat_priority();
    let efd = eventfd();
    let (reg, seen) = recording(&efd, 52);
    let raise = |prio| {
        aem_syscalls::aem_ctl(
            reg.id() as i32,
            aem_syscalls::uapi::AEM_CTL_SET_PRIORITY,
            prio,
        )
        .unwrap()
    };
    // Pending in a critical section: the raise waits, with the rest of the
    // boost, for the section's end; the handler then runs at 75.
    let block = aem::critical_section();
    eventfd_add(&efd, 1);
    assert_eq!(stat_priority(), before);
    raise(75);
    assert_eq!(stat_priority(), before, "boosted in a critical section");
    drop(block);
    assert_eq!(seen[0].load(SeqCst), rt_band_priority(75));
    assert_eq!(stat_priority(), before);
    // Pending in a handler of its own, which does not block delivery: a
    // raise boosts the thread while the handler still runs.
    let outer = eventfd();
    let seen_outer = Arc::new([AtomicI64::new(i64::MIN), AtomicI64::new(i64::MIN)]);
    let s = seen_outer.clone();
    let inner_efd = efd.try_clone().unwrap();
    let inner_id = reg.id() as i32;
    raise(52);
    // SAFETY: the handler makes plain system calls, reads /proc (see
    // recording()) and touches atomics; it runs only on this thread's way
    // back from its own eventfd write.
    let _outer = unsafe {
        aem::register_inline(
            Source::fd(outer.as_fd(), FdEvents::IN),
            Options::new().priority(51),
            move |_| {
                eventfd_add(&inner_efd, 1);
                s[0].store(stat_priority(), SeqCst);
                aem_syscalls::aem_ctl(inner_id, aem_syscalls::uapi::AEM_CTL_SET_PRIORITY, 80)
                    .unwrap();
                s[1].store(stat_priority(), SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    eventfd_add(&outer, 1);
    assert_eq!(seen_outer[0].load(SeqCst), rt_band_priority(52));
    assert_eq!(seen_outer[1].load(SeqCst), rt_band_priority(80));
    assert_eq!(seen[0].load(SeqCst), rt_band_priority(80));
    assert_eq!(stat_priority(), before);
}

/// Both ways of blocking delivery keep the boost off until the block
/// ends; the handler then runs boosted.
#[test]
fn sched_2_a_thread_that_blocks_delivery_is_boosted_only_when_the_block_ends() {
    let _budget = BoostBudget::set(1_000_000);
    let before = stat_priority();
    let efd = eventfd();
    let (_reg, seen) = recording(&efd, 60);
    let ctl = |op| aem_syscalls::aem_ctl(0, op, 0).unwrap();
    ctl(aem_syscalls::uapi::AEM_CTL_BLOCK);
    eventfd_add(&efd, 1);
    eventfd_add(&efd, 1);
    assert_eq!(stat_priority(), before, "boosted under AEM_CTL_BLOCK");
    assert_eq!(seen[0].load(SeqCst), i64::MIN, "ran while blocked");
    ctl(aem_syscalls::uapi::AEM_CTL_UNBLOCK);
    assert_eq!(seen[0].load(SeqCst), rt_band_priority(60));
    assert_eq!(stat_priority(), before);

    // The thread area: the kernel learns of the block from the first
    // event, and takes its boost back on the way to user mode.
    seen[0].store(i64::MIN, SeqCst);
    {
        let _section = aem::critical_section();
        for _ in 0..3 {
            eventfd_add(&efd, 1);
            assert_eq!(stat_priority(), before, "boosted in a critical section");
        }
    }
    assert_eq!(seen[0].load(SeqCst), rt_band_priority(60));
    assert_eq!(stat_priority(), before);
}

#[test]
fn sched_2_a_long_handler_loses_its_boost_after_the_budget() {
    let _budget = BoostBudget::set(20_000);
    let before = stat_priority();
    let efd = eventfd();
    let first = Arc::new(AtomicI64::new(0));
    let last = Arc::new(AtomicI64::new(0));
    let (f, l) = (first.clone(), last.clone());
    // SAFETY: as for `recording`: the handler allocates (std::fs) with the
    // system allocator, outside the letter of the contract, which is sound
    // because it runs only on the way back from this thread's own
    // eventfd_add below; otherwise it touches atomics and the clock.
    let _reg = unsafe {
        aem::register_inline(
            Source::fd(efd.as_fd(), FdEvents::IN),
            Options::new().priority(80),
            move |_| {
                f.store(stat_priority(), SeqCst);
                // Far more CPU than the budget; the boost decays on a tick.
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(300) {
                    std::hint::black_box(0);
                }
                l.store(stat_priority(), SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    eventfd_add(&efd, 1);
    assert_eq!(first.load(SeqCst), rt_band_priority(80));
    assert_eq!(last.load(SeqCst), before, "the boost did not decay");
    // The next event is boosted again.
    let again = Arc::new(AtomicI64::new(0));
    let (efd2, a) = (eventfd(), again.clone());
    // SAFETY: as for the first registration of this test.
    let _reg2 = unsafe {
        aem::register_inline(
            Source::fd(efd2.as_fd(), FdEvents::IN),
            Options::new().priority(80),
            move |_| {
                a.store(stat_priority(), SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    eventfd_add(&efd2, 1);
    assert_eq!(again.load(SeqCst), rt_band_priority(80));
}

/// Drop every capability and set RLIMIT_RTPRIO, for the rest of the
/// (child) process.
fn unprivileged(rtprio_limit: u64) {
    let lim = libc::rlimit {
        rlim_cur: rtprio_limit,
        rlim_max: rtprio_limit,
    };
    // SAFETY: setrlimit with a valid struct; setresuid to nobody drops
    // the capabilities of a root process.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_RTPRIO, &lim), 0);
        assert_eq!(libc::setresuid(65534, 65534, 65534), 0);
    }
}

#[test]
fn sched_3_rt_band_needs_cap_sys_nice_or_rlimit_rtprio() {
    let efd = eventfd();
    let code = in_child(|| {
        unprivileged(5);
        let reg = |priority: u8, noboost: bool| {
            // SAFETY: the handler touches nothing.
            unsafe {
                aem::register_inline(
                    Source::fd(efd.as_fd(), FdEvents::IN),
                    Options::new().priority(priority).noboost(noboost),
                    |_| Action::Rearm,
                )
            }
        };
        let eperm = aem::Error::Os(aem::Errno(libc::EPERM));
        let mut fails = 0;
        if reg(49, false).is_err() {
            fails |= 1; // the fair band is for everyone
        }
        if reg(54, false).is_err() {
            fails |= 2; // rt_priority 5: within RLIMIT_RTPRIO
        }
        if reg(55, false).err() != Some(eperm) {
            fails |= 4;
        }
        if reg(99, true).is_err() {
            fails |= 8; // no boost, no privilege needed
        }
        // Raising a fair-band event into the real-time band.
        match reg(10, false) {
            Ok(r) => {
                let set = aem_syscalls::aem_ctl(
                    r.id() as i32,
                    aem_syscalls::uapi::AEM_CTL_SET_PRIORITY,
                    90,
                );
                if set != Err(aem_syscalls::Error::Os(aem_syscalls::Errno(libc::EPERM))) {
                    fails |= 16;
                }
            }
            Err(_) => fails |= 16,
        }
        fails
    });
    assert_eq!(
        code, 0,
        "failure bits: 1 fair, 2 rlimit, 4 EPERM, 8 noboost, 16 set-priority"
    );
}

/// Pin the calling thread to CPU 0.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// CPU time of the calling process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    pid_cpu_ns(0)
}

/// Register `handler` inline for `efd` readable, in the fair band
/// (priority 49), boosting.
///
/// # Safety
///
/// As `aem::register_inline`: `handler` may interrupt the thread anywhere.
unsafe fn fair_band_on_eventfd(
    efd: &OwnedFd,
    handler: impl FnMut(&mut aem::Record) -> Action + Send + 'static,
) -> aem::InlineRegistration {
    // SAFETY: our caller's contract.
    unsafe {
        aem::register_inline(
            Source::fd(efd.as_fd(), FdEvents::IN),
            Options::new().priority(49),
            handler,
        )
    }
    .unwrap()
}

#[test]
fn sched_3_unprivileged_event_flood_cannot_starve_a_busy_task() {
    // A busy task and an unprivileged process flooding itself with
    // fair-band events whose handlers burn CPU, on one CPU: the busy
    // task keeps about its fair half (at least 40%, documented bound).
    pin_to_cpu0();
    // SAFETY: fork; the child only spins and exits with _exit.
    let hog = unsafe { libc::fork() };
    if hog == 0 {
        pin_to_cpu0();
        let start = Instant::now();
        let cpu0 = process_cpu_ns();
        while start.elapsed() < Duration::from_secs(2) {
            std::hint::black_box(0);
        }
        let used = process_cpu_ns() - cpu0;
        // Percent of the wall time this task got.
        let pct = used * 100 / start.elapsed().as_nanos() as u64;
        // SAFETY: leave the child at once.
        unsafe { libc::_exit(pct as i32) };
    }
    let flood = in_child(|| {
        pin_to_cpu0();
        unprivileged(0);
        let efd = eventfd();
        // SAFETY: the handler only reads the clock.
        let _reg = unsafe {
            fair_band_on_eventfd(&efd, |_| {
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(500) {
                    std::hint::black_box(0);
                }
                Action::Rearm
            })
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            eventfd_add(&efd, 1);
        }
        0
    });
    assert_eq!(flood, 0);
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(hog, &mut status, 0) }, hog);
    let pct = libc::WEXITSTATUS(status);
    assert!(
        pct >= 40,
        "the busy task got {pct}% of the CPU against the flood"
    );
}

#[test]
fn sched_1_a_boosted_task_asleep_in_its_handler_is_not_run_when_requeued() {
    // A task boosted in the fair band that goes to sleep inside its
    // handler having run ahead of its share stays queued, delayed
    // (DELAY_DEQUEUE), until it is eligible again.  Requeued meanwhile --
    // here by renicing it, as migration or a cgroup move would -- it must
    // not be made the runqueue's next buddy: the next pick would run a
    // task that sleeps (a debug kernel warns: "->next will never be
    // delayed").  Everything on CPU 0: a hog, the target, and this
    // thread renicing the target every 200 us for 2 s.
    pin_to_cpu0();
    // [stop, target's pid]
    let shared = SharedWords::new(2);
    let hog = spawn(|| {
        pin_to_cpu0();
        while shared.get(0) == 0 {
            std::hint::black_box(0);
        }
        0
    });
    let target = spawn(|| {
        pin_to_cpu0();
        // SAFETY: getpid has no preconditions.
        shared.set(1, unsafe { libc::getpid() } as u64);
        let efd = eventfd();
        // SAFETY: the handler reads the clock and sleeps.
        let _reg = unsafe {
            fair_band_on_eventfd(&efd, |_| {
                // Run a varying while, so that the sleep finds the task
                // behind or ahead of its share.
                let start = Instant::now();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let spin = Duration::from_micros(u64::from(now.subsec_micros() % 200));
                while start.elapsed() < spin {
                    std::hint::black_box(0);
                }
                std::thread::sleep(Duration::from_micros(500));
                Action::Rearm
            })
        };
        while shared.get(0) == 0 {
            eventfd_add(&efd, 1);
        }
        0
    });
    let start = Instant::now();
    while shared.get(1) == 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::yield_now();
    }
    let pid = shared.get(1) as libc::id_t;
    assert_ne!(pid, 0, "the target did not start in 30 s");
    let start = Instant::now();
    let mut nice = 0;
    while start.elapsed() < Duration::from_secs(2) {
        nice = 1 - nice;
        // SAFETY: plain call; root may renice its child either way.
        let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, nice) };
        assert_eq!(set, 0, "setpriority: {}", std::io::Error::last_os_error());
        std::thread::sleep(Duration::from_micros(200));
    }
    shared.set(0, 1);
    assert_eq!((reap(target), reap(hog)), (0, 0));
}

/// CPU time consumed so far by process `pid` (0: the calling process), in
/// nanoseconds.
fn pid_cpu_ns(pid: libc::pid_t) -> u64 {
    let mut clock = 0;
    // SAFETY: a valid clockid_t to fill.
    assert_eq!(unsafe { libc::clock_getcpuclockid(pid, &mut clock) }, 0);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn sched_3_a_task_boosting_itself_with_a_timer_gets_no_more_than_its_twin() {
    // Two unprivileged processes spin on CPU 0, each with a 100 us
    // periodic timer whose inline handler does nothing: one boosted in
    // the fair band (priority 49), its twin not (AEM_EV_NOBOOST).  Half
    // the expiries find the boosted one waiting for the CPU, having run
    // ahead of its share: a boost that forgave that debt would hand it
    // more than its half, at every expiry.
    //
    // The parent samples both CPU clocks at the same two instants, 3 s
    // apart, once both spin: each child timing its own window would skew
    // the comparison by however long one waited to leave the gate, which
    // on a slow (debug) kernel, where handlers eat most of each period,
    // is up to a second.
    let mut gate = [0i32; 2];
    // SAFETY: a live array of two ints.
    assert_eq!(unsafe { libc::pipe(gate.as_mut_ptr()) }, 0);
    let [gate_r, gate_w] = gate;
    // [children spinning, stop]
    let shared = SharedWords::new(2);
    let spinner = |boost: bool| {
        spawn(move || {
            pin_to_cpu0();
            unprivileged(0);
            // SAFETY: the handler does nothing.
            let _reg = unsafe {
                aem::register_inline(
                    Source::periodic(Duration::from_micros(100)),
                    Options::new().priority(49).noboost(!boost),
                    |_| Action::Rearm,
                )
            }
            .unwrap();
            // Both start together: when the parent closes the gate.
            let mut b = [0u8; 1];
            // SAFETY: our copy of the write end; a live one-byte buffer.
            unsafe {
                libc::close(gate_w);
                while libc::read(gate_r, b.as_mut_ptr().cast(), 1) < 0 {}
            }
            shared.fetch_add(0, 1);
            let start = Instant::now();
            while shared.get(1) == 0 && start.elapsed() < Duration::from_secs(60) {
                std::hint::black_box(0);
            }
            0
        })
    };
    let boosted = spinner(true);
    let twin = spinner(false);
    // SAFETY: our descriptors, closed once.
    unsafe {
        libc::close(gate_w);
        libc::close(gate_r);
    }
    let start = Instant::now();
    while shared.get(0) < 2 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(shared.get(0), 2, "the spinners did not start in 30 s");
    std::thread::sleep(Duration::from_millis(100));
    let sample = || (Instant::now(), pid_cpu_ns(boosted), pid_cpu_ns(twin));
    let (t0, boosted0, twin0) = sample();
    std::thread::sleep(Duration::from_secs(3));
    let (t1, boosted1, twin1) = sample();
    shared.set(1, 1);
    assert_eq!((reap(boosted), reap(twin)), (0, 0));
    // Per mille of the common window each got.
    let wall = (t1 - t0).as_nanos() as u64;
    let (boosted, twin) = (
        (boosted1 - boosted0) * 1000 / wall,
        (twin1 - twin0) * 1000 / wall,
    );
    println!("boosted {boosted}‰, twin {twin}‰");
    assert!(
        twin >= 300,
        "the twin got {twin}‰ of the CPU, the boosted one {boosted}‰: not contended as meant"
    );
    assert!(
        boosted <= twin + 10,
        "the task boosted by its timer got {boosted}‰ of the CPU, its unboosted twin {twin}‰"
    );
}

/// `/proc/sys/kernel/<name>` as a number.
fn sysctl(name: &str) -> i64 {
    let path = format!("/proc/sys/kernel/{name}");
    let text = std::fs::read_to_string(&path).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{path}: {text}"))
}

#[test]
fn sched_3_rt_band_flood_is_held_to_sched_rt_runtime() {
    // On CPU 0 for 2 s: a busy fair task, and a process whose handlers
    // (priority 90, the real-time band) each burn 500 us and activate the
    // next, so that the process is always boosted.  The decay is put out
    // of reach: RT throttling alone must leave the busy task its share,
    // 1 - sched_rt_runtime_us / sched_rt_period_us of the CPU.
    let runtime = sysctl("sched_rt_runtime_us");
    let period = sysctl("sched_rt_period_us");
    assert!(
        runtime > 0 && runtime < period,
        "RT throttling is off: sched_rt_runtime_us {runtime}, period {period}"
    );
    let _budget = BoostBudget::set(100_000_000);
    let mut gate = [0i32; 2];
    // SAFETY: a live array of two ints.
    assert_eq!(unsafe { libc::pipe(gate.as_mut_ptr()) }, 0);
    let [gate_r, gate_w] = gate;
    let wait_gate = move || {
        let mut b = [0u8; 1];
        // SAFETY: our copy of the write end; a live one-byte buffer.
        unsafe {
            libc::close(gate_w);
            while libc::read(gate_r, b.as_mut_ptr().cast(), 1) < 0 {}
        }
    };
    // Per mille of the wall time each got: [flood, busy task].
    let got = SharedWords::new(2);
    let window = Duration::from_secs(2);
    let flood = spawn(move || {
        pin_to_cpu0();
        let efd = eventfd();
        let next = efd.try_clone().unwrap();
        wait_gate();
        let start = Instant::now();
        // SAFETY: the handler reads the clock and writes an eventfd.
        let _reg = unsafe {
            aem::register_inline(
                Source::fd(efd.as_fd(), FdEvents::IN),
                Options::new().priority(90),
                move |_| {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(500) {
                        std::hint::black_box(0);
                    }
                    if start.elapsed() < window {
                        eventfd_add(&next, 1);
                    }
                    Action::Rearm
                },
            )
        }
        .unwrap();
        let cpu0 = process_cpu_ns();
        // Its handler runs on the way back, and the next, and the next...
        eventfd_add(&efd, 1);
        let used = process_cpu_ns() - cpu0;
        got.set(0, used * 1000 / start.elapsed().as_nanos() as u64);
        0
    });
    let busy = spawn(move || {
        pin_to_cpu0();
        wait_gate();
        let start = Instant::now();
        let cpu0 = process_cpu_ns();
        while start.elapsed() < window {
            std::hint::black_box(0);
        }
        let used = process_cpu_ns() - cpu0;
        got.set(1, used * 1000 / start.elapsed().as_nanos() as u64);
        0
    });
    // SAFETY: our descriptors, closed once.
    unsafe {
        libc::close(gate_w);
        libc::close(gate_r);
    }
    assert_eq!((reap(flood), reap(busy)), (0, 0));
    let (flood, busy) = (got.get(0) as i64, got.get(1) as i64);
    let rt_share = runtime * 1000 / period;
    println!("flood {flood}‰, busy task {busy}‰, sched_rt_runtime_us {runtime}/{period}");
    assert!(
        flood >= 800,
        "the flood got {flood}‰ of the CPU, the busy task {busy}‰: not boosted into the real-time band"
    );
    assert!(
        flood <= rt_share + 20,
        "the boosted flood got {flood}‰ of the CPU, above sched_rt_runtime_us's {rt_share}‰"
    );
    assert!(
        busy >= (1000 - rt_share) / 2,
        "the busy task got {busy}‰ of the CPU against a real-time-band flood (throttling leaves it {}‰)",
        1000 - rt_share
    );
}

#[test]
fn sched_4_higher_priority_handler_runs_first_across_processes() {
    // Two processes on CPU 0 wait for their events (AEM priorities 60 and
    // 80); this thread, SCHED_FIFO 90 on the same CPU, fires the low one
    // first, then the high one, then sleeps: the CPU goes to the highest
    // boost first.
    let order = aem_conformance::SharedWords::new(4);
    let (low, high) = (eventfd(), eventfd());
    let mut pids = Vec::new();
    for (slot, (efd, prio)) in [(&low, 60u8), (&high, 80u8)].into_iter().enumerate() {
        let words = order;
        // SAFETY: fork; the child waits for its event and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            pin_to_cpu0();
            // SAFETY: the handler only touches shared atomic words.
            let _reg = unsafe {
                aem::register_inline(
                    Source::fd(efd.as_fd(), FdEvents::IN),
                    Options::new().priority(prio),
                    move |_| {
                        // Take a ticket: the order handlers ran in.
                        words.set(slot + 1, words.fetch_add(0, 1) + 1);
                        Action::Unregister
                    },
                )
            }
            .unwrap();
            words.fetch_add(3, 1); // ready
            let _ = aem::run();
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    while order.get(3) < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: SCHED_FIFO for this thread only, undone below.
    unsafe {
        pin_to_cpu0();
        let p = libc::sched_param { sched_priority: 90 };
        assert_eq!(libc::sched_setscheduler(0, libc::SCHED_FIFO, &p), 0);
    }
    eventfd_add(&low, 1);
    eventfd_add(&high, 1);
    // SAFETY: back to SCHED_OTHER; this lets the CPU go.
    unsafe {
        let p = libc::sched_param { sched_priority: 0 };
        assert_eq!(libc::sched_setscheduler(0, libc::SCHED_OTHER, &p), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while order.get(0) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for pid in pids {
        // SAFETY: our children, parked in aem::run().
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    assert_eq!(
        (order.get(2), order.get(1)),
        (1, 2),
        "the 80 handler must run first, then the 60"
    );
}

/// Set `kernel.aem_overload` and `kernel.aem_shed_below`; the guard ends
/// the overload and restores the threshold.
struct Overload(String);

impl Overload {
    fn declare(shed_below: u32) -> Overload {
        let below = "/proc/sys/kernel/aem_shed_below";
        let old = std::fs::read_to_string(below).unwrap();
        std::fs::write(below, shed_below.to_string()).unwrap();
        std::fs::write("/proc/sys/kernel/aem_overload", "1").unwrap();
        Overload(old)
    }

    fn end(&self) {
        std::fs::write("/proc/sys/kernel/aem_overload", "0").unwrap();
    }
}

impl Drop for Overload {
    fn drop(&mut self) {
        self.end();
        let _ = std::fs::write("/proc/sys/kernel/aem_shed_below", self.0.trim());
    }
}

#[test]
fn sched_5_shed_events_wait_counted_and_visible_then_run_when_overload_ends() {
    let (low, high, polled_fd) = (eventfd(), eventfd(), eventfd());
    let (low_reg, low_seen) = recording(&low, 5);
    let (_high_reg, high_seen) = recording(&high, 30);
    let low_count = Arc::new(AtomicI64::new(0));
    let lc = low_count.clone();
    // SAFETY: the handler only touches an atomic.
    let counting = unsafe {
        aem::register_inline(
            Source::fd(low.as_fd(), FdEvents::IN),
            Options::new().priority(5),
            move |rec| {
                lc.fetch_add(rec.count as i64, SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    let polled = aem_conformance::watch_in(&polled_fd, Options::new().priority(1)).unwrap();

    let overload = Overload::declare(20);
    for _ in 0..3 {
        eventfd_add(&low, 1);
        eventfd_add(&high, 1);
        eventfd_add(&polled_fd, 1);
    }
    // Above the threshold: handled as usual.
    assert_ne!(
        high_seen[0].load(SeqCst),
        i64::MIN,
        "the priority-30 event was shed"
    );
    // Below it: held, counted, shown.
    assert_eq!(
        low_seen[0].load(SeqCst),
        i64::MIN,
        "a priority-5 handler ran"
    );
    assert!(aem::wait(1, Some(Duration::from_millis(20)))
        .unwrap()
        .is_empty());
    for id in [low_reg.id(), counting.id(), polled.id()] {
        let row = aem_conformance::proc_row(id).unwrap();
        assert_eq!((row.state.as_str(), row.pending), ("shed", 3), "event {id}");
    }
    overload.end();
    // Run on the way back from ending it, with exact counts.
    assert_ne!(
        low_seen[0].load(SeqCst),
        i64::MIN,
        "not run after the overload"
    );
    assert_eq!(low_count.load(SeqCst), 3);
    let records = aem::wait(4, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].count, 3);
    let row = aem_conformance::proc_row(counting.id()).unwrap();
    assert_eq!((row.state.as_str(), row.pending), ("enabled", 0));
}
