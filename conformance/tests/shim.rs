//! SHIM-1 to SHIM-4, and DELIV-4 through the shim: critical sections on
//! the shared word, and the helpers handlers and the main flow share --
//! output, allocation, a mutex, errno -- against the real kernel.
//!
//! This test binary allocates through the shim's handler-safe allocator,
//! as a program whose handlers allocate must.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use aem::{Action, FdEvents, Options, Record, Source};
use aem_conformance::{
    eventfd, eventfd_add, in_child, in_child_status, kill_on_syscalls, proc_row,
};

#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc = aem::HandlerSafeAlloc::system();

fn readable(fd: &OwnedFd) -> Source<'_> {
    Source::fd(fd.as_fd(), FdEvents::IN)
}

/// An inline handler on `efd` counting runs and activations.
fn counted(efd: &OwnedFd) -> (aem::InlineRegistration, Arc<AtomicU64>, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    let activations = Arc::new(AtomicU64::new(0));
    let (r, a) = (runs.clone(), activations.clone());
    // SAFETY: the handler only touches atomics.
    let reg = unsafe {
        aem::register_inline(readable(efd), Options::default(), move |rec| {
            r.fetch_add(1, SeqCst);
            a.fetch_add(rec.count, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    (reg, runs, activations)
}

#[test]
fn shim_2_event_in_a_critical_section_runs_right_after_it_exactly_once() {
    let efd = eventfd();
    let (reg, runs, activations) = counted(&efd);
    {
        let _section = aem::critical_section();
        eventfd_add(&efd, 1);
        eventfd_add(&efd, 1);
        // A sleep, a file read: system calls do not let it in either.
        std::thread::sleep(Duration::from_millis(20));
        let row = proc_row(reg.id()).unwrap();
        assert_eq!((row.pending, row.deliveries), (2, 0));
        assert_eq!(runs.load(SeqCst), 0, "ran inside the section");
    }
    assert_eq!(runs.load(SeqCst), 1, "did not run as the section closed");
    assert_eq!(activations.load(SeqCst), 2);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(runs.load(SeqCst), 1, "ran more than once");
    let row = proc_row(reg.id()).unwrap();
    assert_eq!((row.pending, row.deliveries), (0, 1));
}

#[test]
fn shim_2_nested_sections_deliver_when_the_outermost_closes() {
    let efd = eventfd();
    let (_reg, runs, _) = counted(&efd);
    let outer = aem::critical_section();
    aem::critical(|| {
        assert_eq!(aem::critical_depth(), 2);
        eventfd_add(&efd, 1);
    });
    assert_eq!(aem::critical_depth(), 1);
    assert_eq!(runs.load(SeqCst), 0, "an inner section's end delivered");
    drop(outer);
    assert_eq!(runs.load(SeqCst), 1);
    // Guards may close in any order; the depth still counts them.
    let a = aem::critical_section();
    let b = aem::critical_section();
    eventfd_add(&efd, 1);
    drop(a);
    assert_eq!(runs.load(SeqCst), 1);
    drop(b);
    assert_eq!(runs.load(SeqCst), 2);
}

#[test]
fn shim_2_sections_combine_with_the_system_call_block() {
    let efd = eventfd();
    let (_reg, runs, _) = counted(&efd);
    aem::block().unwrap();
    aem::critical(|| eventfd_add(&efd, 1));
    assert_eq!(runs.load(SeqCst), 0, "AEM_CTL_BLOCK still holds");
    aem::unblock().unwrap();
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn shim_2_sections_make_no_system_call_unless_an_event_waits() {
    let nrs = [aem_syscalls::nr::AEM_CTL, aem_syscalls::nr::AEM_THREAD_AREA];
    // 100,000 sections with no event: no AEM call, or SIGSYS kills.
    let idle = eventfd();
    let status = in_child_status(|| {
        // The thread's one registration of its area, for its handler.
        let (reg, _, _) = counted(&idle);
        kill_on_syscalls(&nrs).unwrap();
        for i in 0..100_000u64 {
            let _section = aem::critical_section();
            std::hint::black_box(i);
        }
        // Unregistering would be an AEM call: the exit ends it.
        std::mem::forget(reg);
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "a section made an AEM system call (status {status:#x})"
    );
    // The control: a section an event waited in makes the call.
    let efd = eventfd();
    let status = in_child_status(|| {
        let (_reg, _, _) = counted(&efd);
        let section = aem::critical_section();
        kill_on_syscalls(&nrs).unwrap();
        eventfd_add(&efd, 1);
        drop(section);
        0
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "closing a section with an event waiting made no call (status {status:#x})"
    );
}

#[test]
fn shim_2_a_handler_registered_inside_a_section_waits_for_its_end() {
    // A new thread: its first inline handler registers its area while a
    // section is open, and the kernel must honour that section.
    std::thread::spawn(|| {
        let efd = eventfd();
        let section = aem::critical_section();
        let (_reg, runs, _) = aem::critical(|| counted(&efd));
        eventfd_add(&efd, 1);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(runs.load(SeqCst), 0, "ran inside the section");
        assert_eq!(aem::critical_depth(), 1);
        drop(section);
        assert_eq!(runs.load(SeqCst), 1, "did not run as the section closed");
        eventfd_add(&efd, 1);
        assert_eq!(runs.load(SeqCst), 2, "still blocked after the section");
    })
    .join()
    .unwrap();
}

#[test]
fn deliv_4_leaked_section_keeps_events_pending_in_proc() {
    let code = in_child(|| {
        let efd = eventfd();
        let (reg, runs, _) = counted(&efd);
        std::mem::forget(aem::critical_section());
        for _ in 0..5 {
            eventfd_add(&efd, 1);
        }
        std::thread::sleep(Duration::from_millis(20));
        let row = proc_row(reg.id()).unwrap();
        i32::from(runs.load(SeqCst) != 0) | i32::from(row.pending != 5) << 1
    });
    assert_eq!(code, 0, "failure bits: 1 delivered, 2 not pending in /proc");
}

thread_local! {
    static SELF_DROPPING: std::cell::RefCell<Option<aem::InlineRegistration>> =
        const { std::cell::RefCell::new(None) };
}

#[test]
fn shim_1_registration_dropped_by_its_own_handler_is_freed_after_it() {
    let efd = eventfd();
    let state = Arc::new(AtomicU64::new(0));
    let s = state.clone();
    // SAFETY: the handler touches an atomic and SELF_DROPPING, which the
    // main flow touches only inside aem::critical; dropping the
    // registration frees memory, and this binary's global allocator is
    // aem::HandlerSafeAlloc.
    let reg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), move |_| {
            s.fetch_add(1, SeqCst);
            // Unregisters the event; the closure -- running now -- must live
            // until it returns.
            drop(SELF_DROPPING.with(|r| r.borrow_mut().take()));
            s.fetch_add(1, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    let id = reg.id();
    aem::critical(|| SELF_DROPPING.with(|r| *r.borrow_mut() = Some(reg)));
    assert_eq!(Arc::strong_count(&state), 2);
    eventfd_add(&efd, 1);
    assert_eq!(state.load(SeqCst), 2, "the handler ran to its end");
    assert_eq!(Arc::strong_count(&state), 1, "the closure was not freed");
    assert!(proc_row(id).is_none(), "the event is still registered");
    eventfd_add(&efd, 1);
    assert_eq!(state.load(SeqCst), 2);
}

#[test]
fn shim_3_errno_is_the_same_after_a_handler() {
    let efd = eventfd();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let fail_and_note_errno = move |_: &mut Record| {
        // A failing call sets errno inside the handler.
        // SAFETY: close(-1) only fails.
        unsafe { libc::close(-1) };
        // SAFETY: this thread's errno.
        s.store(unsafe { *libc::__errno_location() } as u64, SeqCst);
        Action::Rearm
    };
    // SAFETY: the handler only calls close(2), which is async-signal-safe,
    // reads errno (which the shim saves and restores around it) and
    // stores to an atomic.
    let _reg =
        unsafe { aem::register_inline(readable(&efd), Options::default(), fail_and_note_errno) }
            .unwrap();
    let one = 1u64.to_ne_bytes();
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = 4242 };
    // SAFETY: an 8-byte write to a live eventfd; it succeeds, so it leaves
    // errno alone, and the handler runs on its way back.
    let n = unsafe { libc::write(efd.as_raw_fd(), one.as_ptr().cast(), 8) };
    // SAFETY: this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    assert_eq!(n, 8);
    assert_eq!(
        seen.load(SeqCst),
        libc::EBADF as u64,
        "the handler did not run"
    );
    assert_eq!(errno, 4242, "the handler's errno leaked into the main flow");
}

static SHARED: aem::sync::Mutex<Vec<u64>> = aem::sync::Mutex::new(Vec::new());

#[test]
fn shim_3_mutex_held_by_the_main_flow_defers_its_handlers() {
    let efd = eventfd();
    // SAFETY: the handler only pushes to SHARED, an aem::sync::Mutex, which
    // may allocate: this binary's global allocator is aem::HandlerSafeAlloc.
    let _reg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), |rec: &mut Record| {
            SHARED.lock().push(rec.count);
            Action::Rearm
        })
    }
    .unwrap();
    {
        let mut v = SHARED.lock();
        v.clear();
        // With an ordinary lock the handler would wait here for ever.
        eventfd_add(&efd, 1);
        assert!(v.is_empty(), "the handler ran while the lock was held");
        v.push(100);
    }
    assert_eq!(
        *SHARED.lock(),
        vec![100, 1],
        "the handler ran after the release"
    );
}

#[test]
fn shim_4_not_handler_safe_helper_in_a_handler_is_caught_by_name() {
    let efd = eventfd();
    let (status, err) = aem_conformance::in_child_stderr(|| {
        // libtest captures std's panic output: send it to the pipe.
        std::panic::set_hook(Box::new(|info| aem::eprintln!("{info}")));
        // SAFETY: this handler breaks the contract on purpose, in a child
        // process: it calls aem::wait, which the shim must catch (in debug
        // builds, as tests are, with a panic naming it and the abort that
        // follows).  It runs on the way back from this thread's own
        // eventfd write below, and the panic hook prints with
        // aem::eprintln!.
        let _reg = unsafe {
            aem::register_inline(readable(&efd), Options::default(), |_| {
                let _ = aem::wait(1, Some(Duration::ZERO));
                Action::Rearm
            })
        }
        .unwrap();
        eventfd_add(&efd, 1);
        0
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "status {status:#x}, stderr {err:?}"
    );
    assert!(
        err.contains("aem::wait is not handler-safe"),
        "the message does not name the helper: {err:?}"
    );
    // From the main flow it is fine.
    assert!(aem::wait(1, Some(Duration::ZERO)).unwrap().is_empty());
}

/// Shared by the stress test's handler and main flow.
#[derive(Default)]
struct Tally {
    handler_runs: u64,
    activations: u64,
    main_rounds: u64,
}

static TALLY: aem::sync::Mutex<Tally> = aem::sync::Mutex::new(Tally {
    handler_runs: 0,
    activations: 0,
    main_rounds: 0,
});

/// A line that shows whether it arrived whole: its payload repeats one
/// letter `len` times, and it ends with the length again.
fn line(who: &str, n: u64) -> String {
    let len = (n % 97) as usize + 1;
    let letter = (b'a' + (n % 26) as u8) as char;
    format!("{who} {n} {} {len}", letter.to_string().repeat(len))
}

fn line_is_whole(l: &str) -> bool {
    let mut f = l.split(' ');
    match (f.next(), f.next().and_then(|n| n.parse::<u64>().ok())) {
        (Some(who @ ("handler" | "main")), Some(n)) => l == line(who, n),
        _ => false,
    }
}

/// In a child process whose descriptor `fd` is a pipe, after `setup()`:
/// an inline handler (`on_event`) on an eventfd that another thread fires `events` times,
/// while the main flow runs `main_round(1, 2, ...)` until the firing is
/// done (and at least 1000 rounds); then `finish()`.  Returns the child's
/// wait status and what it wrote to `fd`.
///
/// # Safety
///
/// `on_event` must keep the contract of [`aem::register_inline`], with
/// `main_round` as the main flow it interrupts.
unsafe fn interleaved(
    fd: i32,
    setup: fn(),
    events: u64,
    on_event: fn(&Record),
    main_round: fn(u64),
    finish: fn(),
) -> (i32, String) {
    let (status, out) = aem_conformance::in_child_output(fd, || {
        setup();
        let efd = eventfd();
        // SAFETY: our caller vouches for `on_event`.
        let _reg = unsafe {
            aem::register_inline(readable(&efd), Options::default(), move |rec| {
                on_event(rec);
                Action::Rearm
            })
        }
        .unwrap();
        // Another thread fires the events while this one works: they
        // interrupt the main flow anywhere.
        // SAFETY: dup of a live descriptor; the thread owns the copy.
        let efd2 = unsafe { OwnedFd::from_raw_fd(libc::dup(efd.as_raw_fd())) };
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let firer = std::thread::spawn(move || {
            for _ in 0..events {
                eventfd_add(&efd2, 1);
            }
            d.store(true, SeqCst);
        });
        let mut i = 0u64;
        while !done.load(SeqCst) || i < 1000 {
            i += 1;
            main_round(i);
        }
        firer.join().unwrap();
        // Every activation has kicked this thread; a return from the
        // kernel lets the last ones in.
        std::thread::sleep(Duration::from_millis(10));
        finish();
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    (status, out)
}

#[test]
fn shim_3_handlers_and_main_flow_print_allocate_and_lock_through_100000_events() {
    const EVENTS: u64 = 100_000;
    // SAFETY: the handler touches TALLY, an aem::sync::Mutex, prints with
    // aem::println! and allocates, with this binary's global allocator
    // aem::HandlerSafeAlloc.
    let (_, out) = unsafe {
        interleaved(
            1,
            || {},
            EVENTS,
            |rec| {
                let n = {
                    let mut t = TALLY.lock();
                    t.handler_runs += 1;
                    t.activations += rec.count;
                    t.handler_runs
                };
                // Allocates (the line, the Vec) and prints, inside the handler.
                let words: Vec<String> = vec![line("handler", n)];
                aem::println!("{}", words[0]);
            },
            |i| {
                let s = line("main", i);
                aem::println!("{s}");
                let mut t = TALLY.lock();
                t.main_rounds += 1;
            },
            || {
                let t = TALLY.lock();
                aem::println!(
                    "total handler_runs={} activations={} main_rounds={}",
                    t.handler_runs,
                    t.activations,
                    t.main_rounds
                );
            },
        )
    };
    let mut lines: Vec<&str> = out.lines().collect();
    let total = lines.pop().expect("no output");
    let kv: Vec<u64> = total
        .split(' ')
        .skip(1)
        .map(|f| f.split('=').nth(1).unwrap().parse().unwrap())
        .collect();
    let (handler_runs, activations, main_rounds) = (kv[0], kv[1], kv[2]);
    assert_eq!(activations, EVENTS, "activations lost or invented");
    let broken: Vec<&&str> = lines.iter().filter(|l| !line_is_whole(l)).take(5).collect();
    assert!(broken.is_empty(), "broken lines: {broken:?}");
    let handler_lines = lines.iter().filter(|l| l.starts_with("handler ")).count() as u64;
    let main_lines = lines.iter().filter(|l| l.starts_with("main ")).count() as u64;
    assert_eq!(handler_lines, handler_runs);
    assert_eq!(main_lines, main_rounds);
    assert!(handler_runs > 1, "the events were never interleaved");
}

#[test]
fn shim_1_signals_arrive_as_events_with_their_numbers() {
    let got = Arc::new(aem::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    // SAFETY: the handler only pushes to an aem::sync::Mutex, which may
    // allocate: this binary's global allocator is aem::HandlerSafeAlloc.
    let reg = unsafe {
        aem::on_signals(
            &[aem::Signal::USR1, aem::Signal::USR2],
            Options::default(),
            move |sig| {
                // What a signal handler may not do: lock, allocate.
                g.lock().push(sig);
                Action::Rearm
            },
        )
    }
    .unwrap();
    // SAFETY: raise(3) to this thread; the signals are blocked and read
    // from the registration's signalfd, so no signal handler runs.
    unsafe {
        libc::raise(libc::SIGUSR2);
        libc::raise(libc::SIGUSR1);
    }
    std::thread::sleep(Duration::from_millis(10));
    let mut got_now = got.lock().clone();
    got_now.sort_by_key(|s| s.0);
    assert_eq!(got_now, vec![aem::Signal::USR1, aem::Signal::USR2]);
    drop(reg);
    // Bad input: not a signal number.
    // SAFETY: the handler touches nothing.
    let bad =
        unsafe { aem::on_signals(&[aem::Signal(4096)], Options::default(), |_| Action::Rearm) };
    assert_eq!(bad.unwrap_err(), aem::Error::Os(aem::Errno(libc::EINVAL)));
}

#[test]
fn shim_1_wait_for_more_records_than_a_call_takes_is_capped() {
    // 1,100 polled timers expired; asking for usize::MAX records used to
    // try to allocate that many (a capacity-overflow panic).
    let regs: Vec<aem::Registration> = (0..1100)
        .map(|_| {
            let timer = Source::after(Duration::from_millis(1));
            aem::register(timer, Options::default()).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let first = aem::wait(usize::MAX, Some(Duration::ZERO)).unwrap();
    assert_eq!(first.len(), 1024, "one call takes AEM_WAIT_MAX_RECORDS");
    let rest = aem::wait(usize::MAX, Some(Duration::ZERO)).unwrap();
    assert_eq!(rest.len(), 76);
    assert_eq!(
        aem::wait(0, Some(Duration::ZERO)),
        Err(aem::Error::Os(aem::Errno(libc::EINVAL)))
    );
    drop(regs);
}

fn blocked_in_this_thread(sig: nix::sys::signal::Signal) -> bool {
    let set = nix::sys::signal::SigSet::thread_get_mask().expect("pthread_sigmask");
    set.contains(sig)
}

#[test]
fn shim_1_failed_on_signals_leaves_the_signal_mask_as_it_was() {
    std::thread::spawn(|| {
        assert!(!blocked_in_this_thread(nix::sys::signal::Signal::SIGUSR2));
        // Priority 100 is refused by the kernel, after the signals were
        // blocked for the signalfd.
        let bad = Options::new().priority(100);
        // SAFETY: the handler touches nothing.
        let r = unsafe { aem::on_signals(&[aem::Signal::USR2], bad, |_| Action::Rearm) };
        assert_eq!(r.unwrap_err(), aem::Error::Os(aem::Errno(libc::EINVAL)));
        assert!(
            !blocked_in_this_thread(nix::sys::signal::Signal::SIGUSR2),
            "SIGUSR2 left blocked with nobody to read it"
        );
    })
    .join()
    .unwrap();
}

/// Another library's thread area, for the thread of the errno test.
static OTHER_AREA: AtomicU64 = AtomicU64::new(0);
/// errno after the first handler and section, u64::MAX if the setup
/// failed, u64::MAX - 1 if the handler did not run once.
static ERRNO_AFTER: AtomicU64 = AtomicU64::new(0);

/// A thread that allocates nothing through the shim before its first
/// section (the test binary's allocator opens sections itself).
extern "C" fn first_section_beside_another_area(_: *mut libc::c_void) -> *mut libc::c_void {
    let area = OTHER_AREA
        .as_ptr()
        .cast::<aem_syscalls::uapi::aem_thread_area>();
    // SAFETY: a static area, unregistered before the thread ends.
    if unsafe { aem_syscalls::aem_thread_area(area, 8, 0) }.is_err() {
        ERRNO_AFTER.store(u64::MAX, SeqCst);
        return std::ptr::null_mut();
    }
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = libc::EBADMSG };
    // The shim's own registration of an area, for the first handler,
    // fails (EBUSY): its sections block with system calls instead, and
    // neither may leave EBUSY in errno.
    let efd = eventfd();
    let (reg, runs, _) = counted(&efd);
    aem::critical(|| eventfd_add(&efd, 1));
    // SAFETY: as above.
    let errno = unsafe { *libc::__errno_location() };
    // The section did block, and the handler ran as it closed.
    let ran = runs.load(SeqCst);
    drop(reg);
    ERRNO_AFTER.store(if ran == 1 { errno as u64 } else { u64::MAX - 1 }, SeqCst);
    // SAFETY: unregistering only makes the kernel forget the pointer.
    let _ = unsafe {
        aem_syscalls::aem_thread_area(area, 8, aem_syscalls::uapi::AEM_THREAD_AREA_UNREGISTER)
    };
    std::ptr::null_mut()
}

#[test]
fn shim_3_first_section_beside_another_area_keeps_errno() {
    let mut t: libc::pthread_t = 0;
    // SAFETY: a plain thread running a function that takes no argument.
    let rc = unsafe {
        libc::pthread_create(
            &mut t,
            std::ptr::null(),
            first_section_beside_another_area,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: `t` was created above and is joined once.
    assert_eq!(unsafe { libc::pthread_join(t, std::ptr::null_mut()) }, 0);
    let errno = ERRNO_AFTER.load(SeqCst);
    assert_ne!(errno, u64::MAX, "the other area could not be registered");
    assert_ne!(
        errno,
        u64::MAX - 1,
        "the handler did not run once after the section"
    );
    assert_eq!(
        errno,
        libc::EBADMSG as u64,
        "the first section changed errno"
    );
}

fn hour_timer() -> Source<'static> {
    Source::after(Duration::from_secs(3600))
}

#[test]
fn shim_1_handle_inherited_over_fork_leaves_the_childs_event_alone() {
    let code = in_child(|| {
        let inherited = aem::register(hour_timer(), Options::default()).unwrap();
        let efd = eventfd();
        // SAFETY: the handler touches nothing.
        let inherited_inline =
            unsafe { aem::register_inline(readable(&efd), Options::default(), |_| Action::Rearm) }
                .unwrap();
        in_child(|| {
            // A new context numbers its events from 1 again: the child's
            // own events take the ids of the copies it inherited.
            let mine = aem::register(hour_timer(), Options::default()).unwrap();
            // SAFETY: the handler touches nothing.
            let mine_inline = unsafe {
                aem::register_inline(readable(&efd), Options::default(), |_| Action::Rearm)
            }
            .unwrap();
            if (mine.id(), mine_inline.id()) != (inherited.id(), inherited_inline.id()) {
                eprintln!("ids differ: the test proves nothing");
                return 2;
            }
            if inherited.disable() != Err(aem::Error::Os(aem::Errno(libc::ENOENT))) {
                eprintln!("the inherited handle reached the child's event");
                return 3;
            }
            drop(inherited);
            drop(inherited_inline);
            if proc_row(mine.id()).is_none() || proc_row(mine_inline.id()).is_none() {
                eprintln!("dropping inherited handles unregistered the child's events");
                return 1;
            }
            0
        })
    });
    assert_eq!(code, 0);
}

/// A one-shot timer that fires at once.
fn soon() -> Source<'static> {
    Source::after(Duration::from_micros(100))
}

#[test]
fn shim_1_handles_of_events_the_kernel_ended_make_no_unregister_call() {
    use aem_conformance::{trap_syscall_op, TRAPPED};
    use aem_syscalls::uapi;
    let oneshot = Options::new().oneshot(true);
    let code = in_child(|| {
        let fired = Arc::new(AtomicU64::new(0));
        let f = fired.clone();
        // SAFETY: the handlers touch an atomic.
        let (inline_oneshot, inline_unregistered) = unsafe {
            let f2 = f.clone();
            (
                aem::register_inline(soon(), oneshot, move |_| {
                    f.fetch_add(1, SeqCst);
                    Action::Rearm
                })
                .unwrap(),
                aem::register_inline(soon(), Options::default(), move |_| {
                    f2.fetch_add(1, SeqCst);
                    Action::Unregister
                })
                .unwrap(),
            )
        };
        let polled_oneshot = aem::register(soon(), oneshot).unwrap();
        let f = fired.clone();
        let dispatched_unregistered = aem::on_event(soon(), Options::default(), move |_| {
            f.fetch_add(1, SeqCst);
            Action::Unregister
        })
        .unwrap();
        let f = fired.clone();
        let dispatched_oneshot = aem::on_event(soon(), oneshot, move |_| {
            f.fetch_add(1, SeqCst);
            Action::Rearm
        })
        .unwrap();
        let live = aem::register(hour_timer(), Options::default()).unwrap();
        // Take the polled records: the one-shot's, and the dispatched ones
        // (run by dispatch).
        let mut polled = 0;
        while fired.load(SeqCst) < 4 || polled < 1 {
            // EINTR: an inline handler ran meanwhile.
            if let Ok(others) = aem::dispatch(Some(Duration::from_millis(10))) {
                polled += others
                    .iter()
                    .filter(|r| r.id == polled_oneshot.id())
                    .count();
            }
        }
        // Each of these events is gone from the kernel: their ids are free
        // to go to new events, which their handles must leave alone.
        for id in [
            inline_oneshot.id(),
            inline_unregistered.id(),
            polled_oneshot.id(),
            dispatched_unregistered.id(),
            dispatched_oneshot.id(),
        ] {
            if proc_row(id).is_some() {
                eprintln!("event {id} is still registered");
                return 2;
            }
        }
        let enoent = Err(aem::Error::Os(aem::Errno(libc::ENOENT)));
        trap_syscall_op(uapi::__NR_aem_ctl as libc::c_long, uapi::AEM_CTL_UNREGISTER).unwrap();
        if inline_oneshot.disable() != enoent || polled_oneshot.disable() != enoent {
            eprintln!("an ended handle's call did not fail with ENOENT");
            return 3;
        }
        drop(inline_oneshot);
        drop(inline_unregistered);
        drop(polled_oneshot);
        drop(dispatched_unregistered);
        drop(dispatched_oneshot);
        let stale = TRAPPED.load(SeqCst);
        // The filter works: a live handle's drop is caught.
        drop(live);
        let caught = TRAPPED.load(SeqCst) - stale;
        (stale * 10 + caught) as i32
    });
    assert_eq!(
        code, 1,
        "tens: unregister calls made by handles of ended events; ones: by the live one"
    );
}

#[test]
fn shim_3_log_records_from_handlers_and_main_flow_are_whole_lines() {
    static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
    static MAIN_ROUNDS: AtomicU64 = AtomicU64::new(0);
    // SAFETY: the handler touches an atomic and logs through log's macros
    // with aem::log installed (by `setup`), formatting a line that
    // allocates, with this binary's global allocator aem::HandlerSafeAlloc.
    let (_, out) = unsafe {
        interleaved(
            2,
            || aem::log::init(log::LevelFilter::Info).unwrap(),
            20_000,
            |_| {
                let n = HANDLER_RUNS.fetch_add(1, SeqCst) + 1;
                log::info!("{}", line("handler", n));
                log::debug!("filtered out");
            },
            |i| {
                log::warn!("{}", line("main", i));
                MAIN_ROUNDS.fetch_add(1, SeqCst);
            },
            || {
                log::error!(
                    "total {} {}",
                    HANDLER_RUNS.load(SeqCst),
                    MAIN_ROUNDS.load(SeqCst)
                )
            },
        )
    };
    let mut lines: Vec<&str> = out.lines().collect();
    let total: Vec<u64> = lines
        .pop()
        .and_then(|l| l.strip_prefix("ERROR shim: total "))
        .expect("no total line")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let broken: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            !(l.strip_prefix("INFO  shim: ")
                .is_some_and(|m| m.starts_with("handler "))
                || l.strip_prefix("WARN  shim: ")
                    .is_some_and(|m| m.starts_with("main ")))
                || !line_is_whole(l.split_once(": ").unwrap().1)
        })
        .take(5)
        .collect();
    assert!(broken.is_empty(), "broken lines: {broken:?}");
    let handler_lines = lines.iter().filter(|l| l.starts_with("INFO")).count() as u64;
    assert_eq!(handler_lines, total[0]);
    assert_eq!(lines.len() as u64 - handler_lines, total[1]);
    assert!(total[0] > 1, "the events were never interleaved");
}

#[test]
fn shim_4_handler_returning_with_a_section_open_aborts_with_a_message() {
    let efd = eventfd();
    let (status, err) = aem_conformance::in_child_stderr(|| {
        // SAFETY: the handler breaks nothing but its own section, on
        // purpose, in a child: it opens one and leaks it.
        let _reg = unsafe {
            aem::register_inline(readable(&efd), Options::default(), |_| {
                std::mem::forget(aem::critical_section());
                Action::Rearm
            })
        }
        .unwrap();
        eventfd_add(&efd, 1);
        0
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "status {status:#x}, stderr {err:?}"
    );
    assert!(
        err.contains("returned with 1 critical section(s) still open"),
        "{err:?}"
    );
}

#[test]
fn shim_4_no_allocator_warning_with_handler_safe_alloc() {
    let efd = eventfd();
    let (status, err) = aem_conformance::in_child_stderr(|| {
        // SAFETY: the handler does nothing.
        let reg =
            unsafe { aem::register_inline(readable(&efd), Options::default(), |_| Action::Rearm) };
        i32::from(reg.is_err())
    });
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert!(err.is_empty(), "{err:?}");
}

#[test]
fn shim_1_a_closure_is_dropped_without_handlers_interrupting_its_destructors() {
    static TICKS: AtomicU64 = AtomicU64::new(0);
    static SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
    /// Owned by the closure: its destructor spins 50 ms and notes how
    /// many ticks of another handler interrupted it.
    struct SlowDrop;
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            let before = TICKS.load(SeqCst);
            let end = std::time::Instant::now() + Duration::from_millis(50);
            while std::time::Instant::now() < end {
                std::hint::spin_loop();
            }
            SEEN.store(TICKS.load(SeqCst) - before, SeqCst);
        }
    }
    let tick = Duration::from_millis(1);
    let timer = Source::periodic(tick);
    // SAFETY: the handler only touches an atomic.
    let ticker = unsafe {
        aem::register_inline(timer, Options::default(), |_| {
            TICKS.fetch_add(1, SeqCst);
            Action::Rearm
        })
    }
    .unwrap();
    let efd = eventfd();
    let owned = SlowDrop;
    // SAFETY: the handler never runs (nothing writes the eventfd); its
    // closure only owns `owned`.
    let reg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), move |_| {
            let _keep = &owned;
            Action::Rearm
        })
    }
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(TICKS.load(SeqCst) > 0, "the ticker does not run");
    drop(reg);
    assert_eq!(
        SEEN.load(SeqCst),
        0,
        "handlers ran inside the closure's destructor"
    );
    drop(ticker);
}

static RW: aem::sync::RwLock<Vec<u64>> = aem::sync::RwLock::new(Vec::new());

#[test]
fn shim_3_rwlock_held_by_the_main_flow_defers_its_handlers() {
    let efd = eventfd();
    // SAFETY: the handler only pushes to RW, an aem::sync::RwLock, which
    // may allocate: this binary's global allocator is aem::HandlerSafeAlloc.
    let _reg = unsafe {
        aem::register_inline(readable(&efd), Options::default(), |rec: &mut Record| {
            RW.write().push(rec.count);
            Action::Rearm
        })
    }
    .unwrap();
    RW.write().clear();
    {
        // A reader: with an ordinary lock the handler's write would wait
        // here for ever.
        let v = RW.read();
        eventfd_add(&efd, 1);
        assert!(v.is_empty(), "the handler ran while the lock was held");
        assert_eq!(aem::critical_depth(), 1);
    }
    assert_eq!(*RW.read(), vec![1], "the handler ran after the release");
    {
        // A writer, narrowed to a part of the data, and a timed attempt.
        let mut first = aem::sync::RwLockWriteGuard::map(RW.write(), |v| &mut v[0]);
        eventfd_add(&efd, 1);
        *first = 10;
        assert!(RW.try_read_for(Duration::from_millis(1)).is_none());
    }
    // Its count of activations since it last ran.
    assert_eq!(*RW.read(), vec![10, 1]);
    assert_eq!(aem::critical_depth(), 0);
}

/// The child of the panic tests: an inline handler that panics with a
/// formatted message, fired by another thread while the main flow holds
/// `std`'s standard error lock, writes through it, and captures backtraces
/// (which holds `std`'s backtrace lock, the one `std`'s default panic hook
/// takes).  It never ends by itself.
fn panic_in_a_handler_amid_std_locks(efd: &OwnedFd) -> i32 {
    use std::io::Write;
    // SAFETY: the handler panics on purpose, in a child: the panic aborts
    // the program.  Formatting the message allocates, with this binary's
    // aem::HandlerSafeAlloc.
    let _reg = unsafe {
        aem::register_inline(readable(efd), Options::default(), |rec| {
            panic!("handler boom {}", rec.count)
        })
    }
    .unwrap();
    // SAFETY: dup of a live descriptor; the thread owns the copy.
    let efd2 = unsafe { OwnedFd::from_raw_fd(libc::dup(efd.as_raw_fd())) };
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        eventfd_add(&efd2, 1);
    });
    let mut err = std::io::stderr().lock();
    for i in 0u64.. {
        let bt = std::backtrace::Backtrace::force_capture();
        let _ = writeln!(err, "main {i} {:?}", bt.status());
    }
    0
}

/// With `std`'s default hook instead of aem's, this child deadlocks
/// whenever the handler interrupts a backtrace capture (the hook waits for
/// the backtrace lock its own thread holds: 3 runs of 4 in the guest), and
/// otherwise the report goes to libtest's capture buffer, lost.
#[test]
fn shim_4_a_handler_panic_amid_std_locks_is_reported_and_aborts() {
    let efd = eventfd();
    let (status, err) = aem_conformance::in_child_output_within(2, Duration::from_secs(10), || {
        aem::panic::install_hook();
        panic_in_a_handler_amid_std_locks(&efd)
    });
    let tail = &err[err.len().saturating_sub(600)..];
    assert!(
        !aem_conformance::killed_by_watchdog(status),
        "deadlocked: {tail:?}"
    );
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "status {status:#x}, stderr ends {tail:?}"
    );
    // The message comes whole, on a line of its own, even though the main
    // flow was writing through std's lock.
    let at = err.find("thread 'main' (").expect(tail);
    let report = &err[at..];
    let first = report.lines().next().unwrap();
    assert!(
        first.contains(" panicked at conformance/tests/shim.rs:")
            && first.contains(" in the inline handler of AEM event "),
        "{report:?}"
    );
    assert!(
        report
            .contains(":\nhandler boom 1\naem: a panic in an inline handler aborts the program\n"),
        "{report:?}"
    );
}

#[test]
fn shim_3_tracing_events_from_handlers_and_main_flow_are_whole_lines() {
    static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
    static MAIN_ROUNDS: AtomicU64 = AtomicU64::new(0);
    // SAFETY: the handler touches an atomic and emits tracing events (no
    // spans) through the one global subscriber with aem's writer, set up
    // and warmed up on this thread by `setup`, as aem::tracing requires;
    // formatting allocates, with this binary's aem::HandlerSafeAlloc.
    let (_, out) = unsafe {
        interleaved(
            2,
            || {
                tracing_subscriber::fmt()
                    .with_writer(aem::tracing::LineWriter::stderr())
                    .without_time()
                    .with_target(false)
                    .init();
                tracing::info!("warm-up");
            },
            20_000,
            |_| {
                let n = HANDLER_RUNS.fetch_add(1, SeqCst) + 1;
                tracing::info!("{}", line("handler", n));
                tracing::debug!("filtered out");
            },
            |i| {
                tracing::warn!("{}", line("main", i));
                MAIN_ROUNDS.fetch_add(1, SeqCst);
            },
            || {
                tracing::error!(
                    "total {} {}",
                    HANDLER_RUNS.load(SeqCst),
                    MAIN_ROUNDS.load(SeqCst)
                )
            },
        )
    };
    // " INFO message": the level, right-aligned, then the message.
    let parse = |l: &str| {
        let (level, message) = l.trim_start().split_once(' ')?;
        Some((level.to_string(), message.to_string()))
    };
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied().and_then(parse),
        Some(("INFO".into(), "warm-up".into()))
    );
    lines.remove(0);
    let (level, total) = lines.pop().and_then(parse).expect("no total line");
    assert_eq!(level, "ERROR");
    let total: Vec<u64> = total
        .strip_prefix("total ")
        .expect("no total line")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let broken: Vec<&&str> = lines
        .iter()
        .filter(|l| match parse(l) {
            Some((level, message)) => {
                !((level == "INFO" && message.starts_with("handler "))
                    || (level == "WARN" && message.starts_with("main ")))
                    || !line_is_whole(&message)
            }
            None => true,
        })
        .take(5)
        .collect();
    assert!(broken.is_empty(), "broken lines: {broken:?}");
    let handler_lines = lines.iter().filter(|l| l.contains("INFO")).count() as u64;
    assert_eq!(handler_lines, total[0]);
    assert_eq!(lines.len() as u64 - handler_lines, total[1]);
    assert!(total[0] > 1, "the events were never interleaved");
}
