//! DELIV: delivery semantics (MISSION.md DELIV-1, -2, -3, -6, -7) for
//! polled delivery.
//!
//! The tests share the process's AEM context: run with --test-threads=1.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::time::Duration;

use aem::{Options, Source};
use aem_conformance::{eventfd, eventfd_add, in_child, pipe, proc_row, watch_in};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

const SEC: Duration = Duration::from_secs(1);

fn prio(priority: u8) -> Options {
    Options::new().priority(priority)
}

#[test]
fn deliv_1_higher_priority_first_then_activation_order() {
    let fds: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let low = watch_in(&fds[0], prio(1)).unwrap();
    let high = watch_in(&fds[1], prio(90)).unwrap();
    let mid_a = watch_in(&fds[2], prio(50)).unwrap();
    let mid_b = watch_in(&fds[3], prio(50)).unwrap();
    // Activate low first, then mid_b before mid_a.
    for i in [0, 3, 2, 1] {
        eventfd_add(&fds[i], 1);
    }
    let order: Vec<u32> = aem::wait(8, Some(SEC))
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(order, [high.id(), mid_b.id(), mid_a.id(), low.id()]);
}

#[test]
fn deliv_1_priority_change_moves_a_pending_event() {
    let fds: Vec<_> = (0..2).map(|_| eventfd()).collect();
    let a = watch_in(&fds[0], prio(10)).unwrap();
    let b = watch_in(&fds[1], prio(20)).unwrap();
    eventfd_add(&fds[0], 1);
    eventfd_add(&fds[1], 1);
    a.set_priority(30).unwrap();
    let order: Vec<u32> = aem::wait(8, Some(SEC))
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(order, [a.id(), b.id()]);
}

#[test]
fn deliv_2_ten_thousand_activations_while_disabled_are_counted_exactly() {
    let efd = eventfd();
    let reg = watch_in(&efd, Options::new().disabled(true)).unwrap();
    for _ in 0..10_000 {
        eventfd_add(&efd, 1);
    }
    let row = proc_row(reg.id()).unwrap();
    assert_eq!(
        (row.activations, row.pending, row.deliveries),
        (10_000, 10_000, 0)
    );
    assert!(aem::wait(8, Some(Duration::from_millis(20)))
        .unwrap()
        .is_empty());
    reg.enable().unwrap();
    let recs = aem::wait(8, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].count, 10_000);
    let row = proc_row(reg.id()).unwrap();
    assert_eq!(
        (row.activations, row.pending, row.deliveries),
        (10_000, 0, 1)
    );
}

#[test]
fn deliv_2_timer_activations_while_disabled_all_delivered() {
    let interval = Duration::from_micros(100);
    let reg = aem::register(Source::periodic(interval), Options::new().disabled(true)).unwrap();
    // Wait until 10,000 expirations have happened (under TCG the timer may
    // run late; its overruns are counted in the expirations).
    std::thread::sleep(Duration::from_millis(1000));
    let before = proc_row(reg.id()).unwrap();
    reg.enable().unwrap();
    let recs = aem::wait(8, Some(SEC)).unwrap();
    drop(reg);
    // The timer keeps firing while aem_wait() collects: still one record,
    // since one call reports each event once.
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert!(
        recs[0].count >= before.pending,
        "{} < {}",
        recs[0].count,
        before.pending
    );
    let aem::EventData::Timer { expirations } = recs[0].data else {
        panic!()
    };
    assert!(expirations >= recs[0].count);
    assert!(
        expirations >= 10_000,
        "{expirations} expirations in 1 s of 100 us periods"
    );
}

#[test]
fn deliv_3_oneshot_unregisters_after_delivery() {
    let efd = eventfd();
    let reg = watch_in(&efd, Options::new().oneshot(true)).unwrap();
    eventfd_add(&efd, 1);
    assert_eq!(aem::wait(8, Some(SEC)).unwrap().len(), 1);
    assert_eq!(proc_row(reg.id()), None);
    assert_eq!(reg.disable(), Err(aem::Error::Os(aem::Errno(libc::ENOENT))));
}

#[test]
fn deliv_3_dispatch_disables_until_enabled_and_keeps_counting() {
    let efd = eventfd();
    let reg = watch_in(&efd, Options::new().dispatch(true)).unwrap();
    eventfd_add(&efd, 1);
    assert_eq!(aem::wait(8, Some(SEC)).unwrap().len(), 1);
    assert_eq!(proc_row(reg.id()).unwrap().state, "disabled");
    eventfd_add(&efd, 1);
    eventfd_add(&efd, 1);
    assert!(aem::wait(8, Some(Duration::from_millis(20)))
        .unwrap()
        .is_empty());
    reg.enable().unwrap();
    let recs = aem::wait(8, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].count, 2);
}

#[test]
fn deliv_3_enabling_a_ready_level_dispatch_event_delivers_it_again() {
    // A level-triggered event disabled by its dispatch delivery while the
    // fd stays ready: enabling it must notice the fd is still ready.
    let efd = eventfd();
    eventfd_add(&efd, 1);
    let reg = watch_in(&efd, Options::new().level(true).dispatch(true)).unwrap();
    let sec = Some(Duration::from_secs(1));
    assert_eq!(aem::wait(4, sec).unwrap().len(), 1);
    assert!(
        aem::wait(4, Some(Duration::ZERO)).unwrap().is_empty(),
        "disabled"
    );
    reg.enable().unwrap();
    let recs = aem::wait(4, sec).unwrap();
    assert_eq!(recs.iter().map(|r| r.id).collect::<Vec<_>>(), [reg.id()]);
}

#[test]
fn deliv_3_unregister_discards_pending() {
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    eventfd_add(&efd, 1);
    reg.unregister().unwrap();
    assert!(aem::wait(8, Some(Duration::from_millis(20)))
        .unwrap()
        .is_empty());
}

/// Whether the pipe's read end is still open somewhere: a writer sees
/// EPOLLERR once every reader is gone.
fn pipe_has_reader(w: &std::os::fd::OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: w.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
    pfd.revents & libc::POLLERR == 0
}

#[test]
fn deliv_6_fork_child_inherits_no_registrations() {
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    let id = reg.id() as i32;
    let code = in_child(|| {
        let none = aem_conformance::proc_aem("self").is_empty();
        let enoent = aem_syscalls::aem_ctl(id, aem_syscalls::uapi::AEM_CTL_DISABLE, 0)
            == Err(aem_syscalls::Error::Os(aem_syscalls::Errno(libc::ENOENT)));
        if none && enoent {
            0
        } else {
            1
        }
    });
    assert_eq!(code, 0);
    assert!(
        proc_row(reg.id()).is_some(),
        "the parent keeps its registration"
    );
}

#[test]
fn deliv_6_exit_releases_registrations_and_their_files() {
    let (r, w) = pipe();
    let code = in_child(|| {
        let reg = watch_in(&r, Options::default());
        // The registration holds the file; closing the fd does not end it.
        // SAFETY: closes the child's copy only.
        unsafe { libc::close(r.as_raw_fd()) };
        std::mem::forget(reg);
        0
    });
    assert_eq!(code, 0);
    drop(r);
    assert!(
        !pipe_has_reader(&w),
        "the exited child's registration still holds the pipe"
    );
}

#[test]
fn deliv_6_exec_drops_every_registration() {
    let (r, w) = pipe();
    let cat = CString::new("/bin/cat").unwrap();
    let arg = CString::new("/proc/self/aem").unwrap();
    let (out_r, out_w) = pipe();
    // SAFETY: the child only makes system calls, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let reg = watch_in(&r, Options::default());
        std::mem::forget(reg);
        // SAFETY: plain descriptor and exec calls in the forked child.
        unsafe {
            libc::close(r.as_raw_fd());
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::execv(
                cat.as_ptr(),
                [cat.as_ptr(), arg.as_ptr(), std::ptr::null()].as_ptr(),
            );
            libc::_exit(127);
        }
    }
    drop(out_w);
    drop(r);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(out_r), &mut out).unwrap();
    let mut status = 0;
    // SAFETY: `status` is a valid int to fill.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        out.lines().count(),
        1,
        "registrations survived exec: {out:?}"
    );
    assert!(
        !pipe_has_reader(&w),
        "the registration's file survived exec"
    );
}

extern "C" fn on_signal(_: libc::c_int) {}

/// Install a do-nothing SIGUSR1 handler with `flags`, and have another
/// thread signal this one after 100 ms.
fn signal_me_soon(flags: SaFlags) -> std::thread::JoinHandle<()> {
    let sa = SigAction::new(SigHandler::Handler(on_signal), flags, SigSet::empty());
    // SAFETY: installs a handler that does nothing.
    unsafe { sigaction(Signal::SIGUSR1, &sa) }.expect("sigaction");
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: the target thread waits for this signal in the test.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
    })
}

#[test]
fn deliv_7_signal_interrupts_aem_wait_with_eintr() {
    let eintr = Err(aem::Error::Os(aem::Errno(libc::EINTR)));
    let t = signal_me_soon(SaFlags::empty());
    assert_eq!(aem::wait(8, Some(10 * SEC)), eintr);
    t.join().unwrap();
    // SA_RESTART does not change that: aem_wait is never restarted.
    let t = signal_me_soon(SaFlags::SA_RESTART);
    assert_eq!(aem::wait(8, Some(10 * SEC)), eintr);
    t.join().unwrap();
}
