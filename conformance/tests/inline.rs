//! Inline handlers: EXEC-1, EXEC-5, DELIV-3, DELIV-4, DELIV-5, DELIV-7.
//!
//! Handlers run on the test's thread, between any two of its
//! instructions, so they only touch atomics (and make async-signal-safe
//! system calls): each registration says so in its `SAFETY` comment.  The
//! tests share the process's AEM context: run with --test-threads=1.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use aem::{Action, Clock, EventData, Expiry, FdEvents, Options, Source};
use aem_conformance::{eventfd, eventfd_add, pipe, proc_row, write_fd};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::os::fd::{AsFd, AsRawFd};

/// A signal action running `handler`, with no flags and an empty mask.
fn plain_handler(handler: extern "C" fn(libc::c_int)) -> SigAction {
    SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::empty(),
        SigSet::empty(),
    )
}

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn readable(fd: &std::os::fd::OwnedFd) -> Source<'_> {
    Source::fd(fd.as_fd(), FdEvents::IN)
}

fn after(d: Duration, interval: Option<Duration>) -> Source<'static> {
    Source::timer(Clock::Monotonic, Expiry::After(d), interval)
}

#[test]
fn exec_1_handler_runs_on_registering_thread_with_record() {
    static TID: AtomicI64 = AtomicI64::new(0);
    static FD: AtomicI64 = AtomicI64::new(-1);
    static READY: AtomicU64 = AtomicU64::new(0);
    let efd = eventfd();
    let raw_fd = efd.as_raw_fd();
    // SAFETY: the handler only calls gettid(2) and stores to atomics.
    let reg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), |rec| {
            TID.store(gettid(), SeqCst);
            if let EventData::Fd { fd, ready } = rec.data {
                FD.store(i64::from(fd), SeqCst);
                READY.store(u64::from(ready.bits()), SeqCst);
            }
            Action::Rearm
        })
    }
    .unwrap();
    assert_eq!(TID.load(SeqCst), 0);
    // The activation happens inside write(); the handler runs on the way
    // back to user mode, before write() returns to us.
    eventfd_add(&efd, 1);
    assert_eq!(
        TID.load(SeqCst),
        gettid(),
        "handler did not run inline on this thread"
    );
    assert_eq!(FD.load(SeqCst), i64::from(raw_fd));
    assert_ne!(READY.load(SeqCst) & libc::EPOLLIN as u64, 0);
    assert_eq!(proc_row(reg.id()).unwrap().deliveries, 1);
}

unsafe extern "C" {
    static mut aem_exec1_flag: u64;
    fn aem_exec1_spin() -> i32;
    fn aem_exec1_clobber();
}

#[test]
fn exec_1_registers_and_avx_state_survive_a_clobbering_handler() {
    assert!(
        std::is_x86_feature_detected!("avx2"),
        "the guest CPU has no AVX2 (boot QEMU with -cpu max)"
    );
    // SAFETY: only this test and its handler touch the flag.
    unsafe { *std::ptr::addr_of_mut!(aem_exec1_flag) = 0 };
    let clobber = |_: &mut aem::Record| {
        // SAFETY: the clobber follows the C ABI; the flag is a plain
        // word the spinning code polls.
        unsafe {
            aem_exec1_clobber();
            std::ptr::write_volatile(std::ptr::addr_of_mut!(aem_exec1_flag), 1);
        }
        Action::Rearm
    };
    // SAFETY: the handler only clobbers registers and stores to a word
    // that the main flow polls with volatile loads (in assembly).
    let _reg = unsafe {
        aem::register_inline(
            after(Duration::from_millis(20), None),
            Options::new().oneshot(true),
            clobber,
        )
    }
    .unwrap();
    // SAFETY: the spin function follows the C ABI.
    let bad = unsafe { aem_exec1_spin() };
    assert_eq!(
        bad, 0,
        "register {bad} was not restored (1-15 GPR, 100+ ymm)"
    );
}

#[test]
fn exec_1_registers_survive_a_burst_of_chained_handlers() {
    // Four timers due at the same instant fire in one interrupt: their
    // handlers run back to back on one frame (aem_return chains them), and
    // the context they interrupted must still come back intact.
    static RAN: AtomicU64 = AtomicU64::new(0);
    // SAFETY: only this test and its handlers touch the flag.
    unsafe { *std::ptr::addr_of_mut!(aem_exec1_flag) = 0 };
    RAN.store(0, SeqCst);
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let due = Duration::new(now.tv_sec as u64, now.tv_nsec as u32) + Duration::from_millis(30);
    let regs: Vec<_> = (0..4)
        .map(|_| {
            let clobber = |_: &mut aem::Record| {
                // SAFETY: as in the test above.
                unsafe { aem_exec1_clobber() };
                if RAN.fetch_add(1, SeqCst) == 3 {
                    // SAFETY: as in the test above.
                    unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!(aem_exec1_flag), 1) };
                }
                Action::Rearm
            };
            // SAFETY: as in the test above, and an atomic.
            unsafe {
                aem::register_inline(
                    Source::timer(aem::Clock::Monotonic, aem::Expiry::At(due), None),
                    Options::new().oneshot(true),
                    clobber,
                )
            }
            .unwrap()
        })
        .collect();
    // SAFETY: the spin function follows the C ABI.
    let bad = unsafe { aem_exec1_spin() };
    assert_eq!(RAN.load(SeqCst), 4);
    assert_eq!(
        bad, 0,
        "register {bad} was not restored (1-15 GPR, 100+ ymm)"
    );
    drop(regs);
}

#[test]
fn deliv_5_handler_is_not_interrupted_by_another_event() {
    static IN_A: AtomicBool = AtomicBool::new(false);
    static B_INSIDE_A: AtomicBool = AtomicBool::new(false);
    static B_RAN: AtomicBool = AtomicBool::new(false);
    let a_fd = eventfd();
    let b_fd = eventfd();
    let b_raw = b_fd.as_raw_fd();
    // SAFETY: the handler only touches atomics.
    let _b = unsafe {
        aem::register_inline(readable(&b_fd), Options::default(), |_| {
            B_INSIDE_A.store(IN_A.load(SeqCst), SeqCst);
            B_RAN.store(true, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    let a = move |_: &mut aem::Record| {
        IN_A.store(true, SeqCst);
        // Activate B from inside A: a system call whose return would
        // deliver B, were A interruptible.
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer.
        unsafe { libc::write(b_raw, one.as_ptr().cast(), 8) };
        IN_A.store(false, SeqCst);
        Action::Rearm
    };
    // SAFETY: the handler only touches atomics and calls write(2), which
    // is async-signal-safe.
    let _a = unsafe { aem::register_inline(readable(&a_fd), Options::default(), a) }.unwrap();
    eventfd_add(&a_fd, 1);
    assert!(B_RAN.load(SeqCst), "B never ran");
    assert!(!B_INSIDE_A.load(SeqCst), "B interrupted A's handler");
}

/// The calling thread's voluntary context switches (async-signal-safe).
fn voluntary_switches() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage.ru_nvcsw
    }
}

#[test]
fn deliv_5_events_queued_during_a_handler_do_not_wake_its_blocking_call() {
    const EVENTS: usize = 40;
    static IN_HANDLER: AtomicBool = AtomicBool::new(false);
    static SLEEPS: AtomicI64 = AtomicI64::new(-1);
    static LATER: AtomicU64 = AtomicU64::new(0);
    let flood: Vec<_> = (0..EVENTS).map(|_| eventfd()).collect();
    let _flood_regs: Vec<_> = flood
        .iter()
        .map(|fd| {
            // SAFETY: the handler only touches an atomic.
            unsafe {
                aem::register_inline(readable(fd), Options::default(), |_| {
                    LATER.fetch_add(1, SeqCst);
                    Action::Rearm
                })
            }
            .unwrap()
        })
        .collect();
    let (r, w) = pipe();
    let r_raw = r.as_raw_fd();
    let a_fd = eventfd();
    // SAFETY: the handler touches atomics and makes the async-signal-safe
    // calls read(2) and getrusage(2).
    let _a = unsafe {
        aem::register_inline(readable(&a_fd), Options::default(), move |_| {
            IN_HANDLER.store(true, SeqCst);
            let before = voluntary_switches();
            let mut buf = [0u8; 8];
            // Inside the registration's unsafe block: reads into a live
            // buffer of its length.
            libc::read(r_raw, buf.as_mut_ptr().cast(), buf.len());
            SLEEPS.store(voluntary_switches() - before, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    let raw: Vec<i32> = flood.iter().map(|fd| fd.as_raw_fd()).collect();
    let firer = std::thread::spawn(move || {
        while !IN_HANDLER.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The handler sleeps in read() now; each event queued for its
        // thread used to wake it, to restart the read.
        std::thread::sleep(Duration::from_millis(20));
        let one = 1u64.to_ne_bytes();
        for fd in raw {
            // SAFETY: writes 8 bytes from a live buffer.
            unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
            std::thread::sleep(Duration::from_millis(3));
        }
        std::thread::sleep(Duration::from_millis(20));
        write_fd(&w, b"done");
    });
    eventfd_add(&a_fd, 1);
    firer.join().unwrap();
    assert_eq!(
        LATER.load(SeqCst),
        EVENTS as u64,
        "the events queued during the handler did not all run after it"
    );
    let sleeps = SLEEPS.load(SeqCst);
    assert!(
        (1..=EVENTS as i64 / 4).contains(&sleeps),
        "the handler's read() slept {sleeps} times while {EVENTS} events were queued for its thread"
    );
}

#[test]
fn deliv_3_handler_return_disarms_or_unregisters() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let efd = eventfd();
    // SAFETY: the handler only touches an atomic.
    let disarm = unsafe {
        aem::register_inline(readable(&efd), Options::default(), |_| {
            CALLS.fetch_add(1, SeqCst);
            Action::Disarm
        })
    }
    .unwrap();
    eventfd_add(&efd, 1);
    assert_eq!(CALLS.load(SeqCst), 1);
    assert_eq!(proc_row(disarm.id()).unwrap().state, "disabled");
    eventfd_add(&efd, 1);
    eventfd_add(&efd, 1);
    assert_eq!(CALLS.load(SeqCst), 1, "a disarmed event ran");
    assert_eq!(proc_row(disarm.id()).unwrap().pending, 2);
    disarm.enable().unwrap();
    assert_eq!(
        CALLS.load(SeqCst),
        2,
        "enable runs the pending activations once"
    );
    drop(disarm);

    static GONE: AtomicU64 = AtomicU64::new(0);
    let efd = eventfd();
    // SAFETY: the handler only touches an atomic.
    let unreg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), |_| {
            GONE.fetch_add(1, SeqCst);
            Action::Unregister
        })
    }
    .unwrap();
    eventfd_add(&efd, 1);
    assert_eq!(GONE.load(SeqCst), 1);
    assert_eq!(proc_row(unreg.id()), None);
}

#[test]
fn deliv_4_blocked_event_runs_once_right_after_unblock() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let efd = eventfd();
    // SAFETY: the handler only touches atomics.
    let _reg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), |rec| {
            CALLS.fetch_add(1, SeqCst);
            COUNT.fetch_add(rec.count, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    aem::block().unwrap();
    aem::block().unwrap();
    for _ in 0..5 {
        eventfd_add(&efd, 1);
    }
    aem::unblock().unwrap();
    assert_eq!(CALLS.load(SeqCst), 0, "ran while still blocked once");
    aem::unblock().unwrap();
    assert_eq!(CALLS.load(SeqCst), 1);
    assert_eq!(COUNT.load(SeqCst), 5, "five activations, one delivery");
    assert_eq!(
        aem::unblock(),
        Err(aem::Error::Os(aem::Errno::EINVAL)),
        "unblock below zero"
    );
}

#[test]
fn deliv_4_a_thread_blocking_delivery_is_not_interrupted_by_its_events() {
    static RAN: AtomicU64 = AtomicU64::new(0);
    // First expiry well inside the epoll_wait below: only the activation
    // that queues the event kicks the thread.
    // SAFETY: the handler only touches an atomic.
    let _timer = unsafe {
        aem::register_inline(
            after(Duration::from_millis(100), Some(Duration::from_millis(5))),
            Options::default(),
            |_| {
                RAN.fetch_add(1, SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    let block = |op| aem_syscalls::aem_ctl(0, op, 0).unwrap();
    block(aem_syscalls::uapi::AEM_CTL_BLOCK);
    // SAFETY: epoll_create1 takes no pointers.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0);
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    let start = Instant::now();
    // SAFETY: room for one event; the set is empty.
    let n = unsafe { libc::epoll_wait(epfd, &mut ev, 1, 300) };
    let err = std::io::Error::last_os_error();
    let took = start.elapsed();
    // Before the fix: EINTR after the first expiry, though nothing can run.
    assert_eq!(n, 0, "epoll_wait: {err} after {took:?}");
    assert!(took >= Duration::from_millis(300));
    assert_eq!(RAN.load(SeqCst), 0);
    block(aem_syscalls::uapi::AEM_CTL_UNBLOCK);
    assert!(RAN.load(SeqCst) >= 1, "the expiries ran at the unblock");
    // SAFETY: our descriptor.
    unsafe { libc::close(epfd) };
}

#[test]
fn deliv_7_blocking_read_restarts_after_a_handler() {
    static RAN: AtomicBool = AtomicBool::new(false);
    let (r, w) = pipe();
    // SAFETY: the handler only touches an atomic.
    let _reg = unsafe {
        aem::register_inline(
            after(Duration::from_millis(30), None),
            Options::new().oneshot(true),
            |_| {
                RAN.store(true, SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        write_fd(&w, b"late");
    });
    let start = Instant::now();
    let mut buf = [0u8; 8];
    let n = nix::unistd::read(&r, &mut buf);
    writer.join().unwrap();
    assert!(
        RAN.load(SeqCst),
        "the timer's handler did not run during read()"
    );
    assert_eq!(n, Ok(4), "read() was not restarted");
    assert_eq!(&buf[..4], b"late");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

extern "C" fn on_usr1(_: libc::c_int) {}

#[test]
fn exec_5_keepalive_runs_handlers_until_a_signal() {
    static TICKS: AtomicU64 = AtomicU64::new(0);
    // SAFETY: the handler only touches an atomic.
    let _reg = unsafe {
        aem::register_inline(
            after(Duration::from_millis(10), Some(Duration::from_millis(10))),
            Options::default(),
            |rec| {
                if let EventData::Timer { expirations } = rec.data {
                    TICKS.fetch_add(expirations, SeqCst);
                }
                Action::Rearm
            },
        )
    }
    .unwrap();
    // SAFETY: installs a handler that does nothing.
    unsafe { sigaction(Signal::SIGUSR1, &plain_handler(on_usr1)) }.expect("sigaction");
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: the target thread is waiting for this signal.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
    });
    let err = aem::run();
    t.join().unwrap();
    assert_eq!(err, aem::Error::Os(aem::Errno(libc::EINTR)));
    assert!(
        TICKS.load(SeqCst) >= 10,
        "only {} ticks",
        TICKS.load(SeqCst)
    );
}

static USR1_HANDLED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_usr1(_: libc::c_int) {
    USR1_HANDLED.store(true, SeqCst);
}

#[test]
fn exec_5_keepalive_ends_when_a_signal_handler_runs_on_top_of_an_aem_handler() {
    // The SIGTERM a busy server gets arrives while a handler runs: the
    // signal's handler runs on top of it, and the keepalive the AEM
    // handler interrupted must still end, not sleep on.
    let code = aem_conformance::in_child(|| {
        // SAFETY: installs handlers that only store to an atomic or do
        // nothing; the watchdog alarm ends a keepalive that sleeps on.
        unsafe {
            sigaction(Signal::SIGUSR1, &plain_handler(note_usr1)).expect("sigaction");
            sigaction(Signal::SIGALRM, &plain_handler(on_usr1)).expect("sigaction");
        }
        let raise_usr1 = |_: &mut aem::Record| {
            // SAFETY: raise() only sends a signal to this thread; its
            // handler runs on the way back from the call.
            unsafe { libc::raise(libc::SIGUSR1) };
            Action::Rearm
        };
        // The event fires once this thread sleeps in the keepalive (a
        // timer could fire before it got there, on a slow machine, and
        // its handler would interrupt something else).
        let efd = eventfd();
        // SAFETY: the handler only calls raise(3), which is
        // async-signal-safe (and the signal handler it runs only stores to
        // an atomic).
        let _reg = unsafe {
            aem::register_inline(
                Source::fd(efd.as_fd(), FdEvents::IN),
                Options::default().oneshot(true),
                raise_usr1,
            )
        }
        .unwrap();
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) };
        let waiting = format!("/proc/self/task/{me}/syscall");
        let theirs = efd.try_clone().unwrap();
        let firer = std::thread::spawn(move || {
            let wait_nr = format!("{} ", aem_syscalls::uapi::__NR_aem_wait);
            while !std::fs::read_to_string(&waiting)
                .unwrap_or_default()
                .starts_with(&wait_nr)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            eventfd_add(&theirs, 1);
        });
        // SAFETY: alarm has no preconditions.
        unsafe { libc::alarm(3) };
        let start = Instant::now();
        let err = aem::run();
        let took = start.elapsed();
        // SAFETY: as above.
        unsafe { libc::alarm(0) };
        firer.join().unwrap();
        if err != aem::Error::Os(aem::Errno(libc::EINTR)) || !USR1_HANDLED.load(SeqCst) {
            eprintln!(
                "keepalive: {err:?}, SIGUSR1 handled: {}",
                USR1_HANDLED.load(SeqCst)
            );
            return 1;
        }
        if took >= Duration::from_secs(2) {
            eprintln!("the keepalive slept on for {took:?} after the signal handler ran");
            return 2;
        }
        0
    });
    assert_eq!(code, 0);
}

/// The system call the thread `tid` of this process is in, from
/// `/proc/self/task/<tid>/syscall` (`None` when it runs in user mode).
fn syscall_of(tid: i64) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    text.split(' ').next()?.trim().parse().ok()
}

/// Wait up to 10 s for `cond`.
fn within_10s(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[test]
fn exec_5_keepalive_sleeps_between_handlers_in_aem_return_and_still_ends_on_a_signal() {
    // A thread that lives in its handlers: after the first, it waits for
    // the next inside aem_return(), on the same frame, not back in
    // aem_wait().  A signal without a handler does not end that wait; one
    // with a handler ends the keepalive with EINTR, as before.
    static SERVED: AtomicU64 = AtomicU64::new(0);
    let code = aem_conformance::in_child(|| {
        // SAFETY: installs handlers that only store to an atomic or do
        // nothing; the watchdog alarm ends a keepalive that sleeps on.
        unsafe {
            sigaction(Signal::SIGUSR1, &plain_handler(note_usr1)).expect("sigaction");
            sigaction(Signal::SIGALRM, &plain_handler(on_usr1)).expect("sigaction");
        }
        let efd = eventfd();
        let fd = efd.as_fd().as_raw_fd();
        let drain = move |_: &mut aem::Record| {
            let mut b = [0u8; 8];
            // SAFETY: a live 8-byte buffer.
            unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
            SERVED.fetch_add(1, SeqCst);
            Action::Rearm
        };
        // SAFETY: the handler makes a read(2) and touches an atomic.
        let _reg = unsafe {
            aem::register_inline(
                Source::fd(efd.as_fd(), FdEvents::IN),
                Options::default(),
                drain,
            )
        }
        .unwrap();
        // SAFETY: gettid and pthread_self have no preconditions.
        let (me, me_pthread) = unsafe {
            (
                libc::syscall(libc::SYS_gettid),
                libc::pthread_self() as usize,
            )
        };
        let theirs = efd.try_clone().unwrap();
        let firer = std::thread::spawn(move || -> Result<(), String> {
            let (wait, ret) = (
                aem_syscalls::uapi::__NR_aem_wait,
                aem_syscalls::nr::AEM_RETURN as u32,
            );
            if !within_10s(|| syscall_of(me) == Some(wait)) {
                return Err("never in aem_wait".into());
            }
            for round in 1..=50u64 {
                eventfd_add(&theirs, 1);
                if !within_10s(|| SERVED.load(SeqCst) == round && syscall_of(me) == Some(ret)) {
                    return Err(format!(
                        "round {round}: {} served, in system call {:?}",
                        SERVED.load(SeqCst),
                        syscall_of(me)
                    ));
                }
                if round == 25 {
                    // SIGWINCH has no handler: ignored, it must not end
                    // the keepalive.
                    // SAFETY: a signal to a thread of this process.
                    unsafe { libc::pthread_kill(me_pthread as libc::pthread_t, libc::SIGWINCH) };
                }
            }
            // SAFETY: as above; SIGUSR1 has a handler.
            unsafe { libc::pthread_kill(me_pthread as libc::pthread_t, libc::SIGUSR1) };
            Ok(())
        });
        // SAFETY: alarm has no preconditions.
        unsafe { libc::alarm(30) };
        let err = aem::run();
        // SAFETY: as above.
        unsafe { libc::alarm(0) };
        if let Err(e) = firer.join().unwrap() {
            eprintln!("{e}");
            return 1;
        }
        if err != aem::Error::Os(aem::Errno(libc::EINTR)) || !USR1_HANDLED.load(SeqCst) {
            eprintln!(
                "keepalive: {err:?}, SIGUSR1 handled: {}",
                USR1_HANDLED.load(SeqCst)
            );
            return 2;
        }
        0
    });
    assert_eq!(code, 0);
}

/// Turn the calling thread's alternate signal stack off (before the memory
/// it used goes).
fn disable_altstack() {
    let off = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: disables the alternate stack; no pointer is kept.
    assert_eq!(unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) }, 0);
}

#[test]
fn exec_1_onstack_without_a_handler_sized_alternate_stack_is_einval() {
    std::thread::spawn(|| {
        let efd = eventfd();
        let onstack = Options::new().onstack(true);
        // A std thread has std's own small alternate stack only.
        // SAFETY: the handler touches nothing.
        let r = unsafe { aem::register_inline(readable(&efd), onstack, |_| Action::Rearm) };
        assert_eq!(r.err(), Some(aem::Error::Os(aem::Errno(libc::EINVAL))));
        let mut alt = vec![0u8; aem::ONSTACK_MIN_SIZE];
        let ss = libc::stack_t {
            ss_sp: alt.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: alt.len(),
        };
        // SAFETY: `alt` outlives the registration and the stack's use
        // (disabled below).
        assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
        // SAFETY: the handler touches nothing.
        let reg = unsafe { aem::register_inline(readable(&efd), onstack, |_| Action::Rearm) };
        assert!(reg.is_ok(), "{reg:?}");
        drop(reg);
        disable_altstack();
    })
    .join()
    .unwrap();
}

#[test]
fn exec_1_onstack_handler_runs_on_the_alternate_stack() {
    static SP: AtomicU64 = AtomicU64::new(0);
    let mut alt = vec![0u8; 64 * 1024];
    let ss = libc::stack_t {
        ss_sp: alt.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: alt.len(),
    };
    // SAFETY: `alt` outlives the alternate stack's use (disabled below).
    assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
    let efd = eventfd();
    // SAFETY: the handler only stores to an atomic.
    let reg = unsafe {
        aem::register_inline(readable(&efd), Options::new().onstack(true), |_| {
            let local = 0u8;
            SP.store(std::hint::black_box(&local) as *const u8 as u64, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    eventfd_add(&efd, 1);
    drop(reg);
    disable_altstack();
    let sp = SP.load(SeqCst);
    let range = alt.as_ptr() as u64..alt.as_ptr() as u64 + alt.len() as u64;
    assert!(
        range.contains(&sp),
        "handler stack {sp:#x} not in {range:x?}"
    );

    // Without a handler there is no stack to choose: refused.
    let polled = aem::register(readable(&efd), Options::new().onstack(true));
    assert_eq!(polled.unwrap_err(), aem::Error::Os(aem::Errno::EINVAL));
}

#[test]
fn deliv_1_inline_events_run_by_priority_then_activation_order() {
    static ORDER: AtomicU64 = AtomicU64::new(0);
    // Each handler appends its tag (one hex digit) to ORDER.
    fn tagger(tag: u64) -> impl FnMut(&mut aem::Record) -> Action + Send + 'static {
        move |_| {
            let old = ORDER.load(SeqCst);
            ORDER.store(old << 4 | tag, SeqCst);
            Action::Rearm
        }
    }
    let fds: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let prio = |priority| Options::new().priority(priority);
    // SAFETY: a tagger only touches an atomic.
    let _low = unsafe { aem::register_inline(readable(&fds[0]), prio(1), tagger(1)) }.unwrap();
    // SAFETY: as above.
    let _high = unsafe { aem::register_inline(readable(&fds[1]), prio(90), tagger(2)) }.unwrap();
    // SAFETY: as above.
    let _mid_a = unsafe { aem::register_inline(readable(&fds[2]), prio(50), tagger(3)) }.unwrap();
    // SAFETY: as above.
    let _mid_b = unsafe { aem::register_inline(readable(&fds[3]), prio(50), tagger(4)) }.unwrap();
    aem::block().unwrap();
    for i in [0, 3, 2, 1] {
        eventfd_add(&fds[i], 1);
    }
    assert_eq!(ORDER.load(SeqCst), 0, "ran while blocked");
    aem::unblock().unwrap();
    assert_eq!(ORDER.load(SeqCst), 0x2431, "high, mid_b, mid_a, low");
}

#[test]
fn api_3_aem_return_outside_a_handler_is_einval() {
    // SAFETY: aem_return takes no pointer; outside a handler it must fail
    // without touching the caller's registers.
    let r = unsafe { libc::syscall(aem_syscalls::nr::AEM_RETURN, 0) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EINVAL)
    );
}

#[test]
fn deliv_2_ten_thousand_timer_activations_while_blocked_all_accounted() {
    static EXPIRATIONS: AtomicU64 = AtomicU64::new(0);
    static ACTIVATIONS: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let interval = Duration::from_micros(100);
    aem::block().unwrap();
    // SAFETY: the handler only touches atomics.
    let reg = unsafe {
        aem::register_inline(after(interval, Some(interval)), Options::default(), |rec| {
            CALLS.fetch_add(1, SeqCst);
            ACTIVATIONS.fetch_add(rec.count, SeqCst);
            if let EventData::Timer { expirations } = rec.data {
                EXPIRATIONS.fetch_add(expirations, SeqCst);
            }
            Action::Disarm
        })
    }
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(CALLS.load(SeqCst), 0, "a handler ran while blocked");
    aem::unblock().unwrap();
    // One delivery carries everything counted while blocked; the handler
    // disarmed the event, so the books can be closed.
    assert_eq!(CALLS.load(SeqCst), 1);
    let row = proc_row(reg.id()).unwrap();
    assert_eq!(row.deliveries, 1);
    assert_eq!(
        ACTIVATIONS.load(SeqCst) + row.pending,
        row.activations,
        "{row:?}"
    );
    assert!(
        EXPIRATIONS.load(SeqCst) >= 10_000,
        "{} expirations in 1 s of 100 us periods",
        EXPIRATIONS.load(SeqCst)
    );
}

// An rseq critical section for the rseq test: spins `iters` times inside
// the section.  Returns 1 when it completed, 0 when the kernel aborted it
// (to the abort handler, preceded by glibc's RSEQ_SIG).
std::arch::global_asm!(
    ".pushsection .data.aem_rseq_cs, \"aw\"",
    ".balign 32",
    "aem_rseq_cs:",
    ".long 0, 0",
    ".quad aem_rseq_start",
    ".quad aem_rseq_end - aem_rseq_start",
    ".quad aem_rseq_abort",
    ".popsection",
    ".pushsection .text.aem_rseq_spin, \"ax\"",
    ".globl aem_rseq_spin",
    ".type aem_rseq_spin, @function",
    "aem_rseq_spin:",
    "lea rax, [rip + aem_rseq_cs]",
    "mov qword ptr [rdi + 8], rax",
    "aem_rseq_start:",
    "dec rsi",
    "jnz aem_rseq_start",
    "aem_rseq_end:",
    "mov qword ptr [rdi + 8], 0",
    "mov eax, 1",
    "ret",
    ".long 0x53053053",
    "aem_rseq_abort:",
    "xor eax, eax",
    "ret",
    ".size aem_rseq_spin, . - aem_rseq_spin",
    ".popsection",
    // Spins `iters` times with the direction flag set.
    ".pushsection .text.aem_df_spin, \"ax\"",
    ".globl aem_df_spin",
    ".type aem_df_spin, @function",
    "aem_df_spin:",
    "std",
    "2:",
    "dec rdi",
    "jnz 2b",
    "cld",
    "ret",
    ".size aem_df_spin, . - aem_df_spin",
    ".popsection",
);

extern "C" {
    fn aem_rseq_spin(rseq: *mut u8, iters: u64) -> u64;
    fn aem_df_spin(iters: u64);
    /// glibc: where this thread's struct rseq is, from the thread pointer.
    static __rseq_offset: isize;
    /// glibc: the size of the registered area, 0 when rseq is not used.
    static __rseq_size: u32;
}

/// The calling thread's struct rseq, as glibc registered it.
fn rseq_area() -> *mut u8 {
    // SAFETY: reading glibc's constants, set before main.
    assert_ne!(unsafe { __rseq_size }, 0, "glibc did not register rseq");
    let tp: usize;
    // SAFETY: %fs:0 holds the thread pointer (the TCB points at itself).
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp) };
    // SAFETY: as above.
    (tp as isize + unsafe { __rseq_offset }) as *mut u8
}

#[test]
fn exec_1_inline_handler_aborts_the_rseq_section_it_interrupts() {
    static RAN: AtomicU64 = AtomicU64::new(0);
    let rseq = rseq_area();
    // SAFETY: the handler only touches an atomic.
    let _timer = unsafe {
        aem::register_inline(
            after(Duration::from_millis(2), Some(Duration::from_millis(2))),
            Options::default(),
            |_| {
                RAN.fetch_add(1, SeqCst);
                Action::Rearm
            },
        )
    }
    .unwrap();
    let (mut aborted, mut completed) = (0u64, 0u64);
    let start = Instant::now();
    while RAN.load(SeqCst) < 40 && start.elapsed() < Duration::from_secs(20) {
        // SAFETY: `rseq` is this thread's registered area; the section
        // only spins.
        match unsafe { aem_rseq_spin(rseq, 200_000) } {
            0 => aborted += 1,
            _ => completed += 1,
        }
    }
    let ran = RAN.load(SeqCst);
    assert!(ran >= 40, "{ran} handlers in 20 s");
    // Nearly all the time is spent in the section: nearly every handler
    // interrupted it, and a signal there aborts it (as SIGALRM does).
    assert!(
        aborted * 2 >= ran,
        "{aborted} aborts, {completed} completions, {ran} handlers"
    );
}

#[test]
fn exec_1_inline_handler_starts_with_the_direction_flag_clear() {
    static RAN: AtomicU64 = AtomicU64::new(0);
    static DF_SET: AtomicU64 = AtomicU64::new(0);
    let check_df = |_: &mut aem::Record| {
        let flags: u64;
        // SAFETY: reads RFLAGS only.
        unsafe { std::arch::asm!("pushfq", "pop {}", out(reg) flags) };
        if flags & (1 << 10) != 0 {
            DF_SET.fetch_add(1, SeqCst);
        }
        RAN.fetch_add(1, SeqCst);
        Action::Rearm
    };
    // SAFETY: the handler only reads RFLAGS and touches atomics.
    let _timer = unsafe {
        aem::register_inline(
            after(Duration::from_millis(2), Some(Duration::from_millis(2))),
            Options::default(),
            check_df,
        )
    }
    .unwrap();
    let start = Instant::now();
    while RAN.load(SeqCst) < 40 && start.elapsed() < Duration::from_secs(20) {
        // SAFETY: the spin touches no memory; it clears DF before it returns.
        unsafe { aem_df_spin(200_000) };
    }
    assert!(RAN.load(SeqCst) >= 40);
    // The ABI: DF is clear at function entry, and a handler is entered as
    // a function.
    assert_eq!(DF_SET.load(SeqCst), 0, "handlers entered with DF set");
}

#[test]
fn shim_4_inline_handler_without_handler_safe_alloc_is_warned_once() {
    // This binary keeps the system allocator.
    let efd = eventfd();
    let (status, err) = aem_conformance::in_child_stderr(|| {
        for _ in 0..2 {
            // SAFETY: the handler only returns.
            let reg = unsafe {
                aem::register_inline(readable(&efd), Options::default(), |_| Action::Rearm)
            };
            std::mem::forget(reg.unwrap());
        }
        0
    });
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(
        err.matches("the global allocator is not aem::HandlerSafeAlloc")
            .count(),
        1,
        "{err:?}"
    );
}
