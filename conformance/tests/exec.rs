//! EXEC-4: events taken as records by a wait call, and the AEM context
//! watched with poll/select/epoll.
//!
//! The tests share the process's AEM context: run with --test-threads=1.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aem::Options;
use aem_conformance::{eventfd, eventfd_add, watch_in};

fn register_eventfd(fd: &std::os::fd::OwnedFd) -> aem::Registration {
    watch_in(&fd, Options::default()).unwrap()
}

#[test]
fn exec_4_wait_returns_nothing_after_its_timeout() {
    let start = Instant::now();
    let recs = aem::wait(4, Some(Duration::from_millis(50))).unwrap();
    assert!(recs.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn exec_4_wait_takes_a_batch_of_at_most_max() {
    let fds: Vec<_> = (0..5).map(|_| eventfd()).collect();
    let regs: Vec<_> = fds.iter().map(register_eventfd).collect();
    for fd in &fds {
        eventfd_add(fd, 1);
    }
    let first = aem::wait(3, Some(Duration::from_secs(1))).unwrap();
    let rest = aem::wait(8, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(rest.len(), 2);
    let mut ids: Vec<u32> = first.iter().chain(&rest).map(|r| r.id).collect();
    ids.sort_unstable();
    let mut want: Vec<u32> = regs.iter().map(|r| r.id()).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "each event exactly once");
}

#[test]
fn exec_4_context_fd_works_with_epoll() {
    let ctx = aem::context_fd().unwrap();
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 7,
    };
    // SAFETY: `ev` is a valid epoll_event.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ctx.as_raw_fd(), &mut ev) };
    assert_eq!(r, 0);
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `out` has room for 4 events.
    let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 0) };
    assert_eq!(n, 0, "nothing pending yet");

    let efd = eventfd();
    let reg = register_eventfd(&efd);
    eventfd_add(&efd, 1);
    // SAFETY: as above.
    let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 1000) };
    assert_eq!(n, 1);
    assert_eq!({ out[0].u64 }, 7);
    let recs = aem::wait(4, Some(Duration::ZERO)).unwrap();
    assert_eq!(recs.iter().map(|r| r.id).collect::<Vec<_>>(), [reg.id()]);
    // SAFETY: as above.
    let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 0) };
    assert_eq!(n, 0, "drained");
    // SAFETY: closes our epoll descriptor.
    unsafe { libc::close(ep) };
}

#[test]
fn exec_4_context_fd_works_with_select() {
    let ctx = aem::context_fd().unwrap();
    let efd = eventfd();
    let reg = register_eventfd(&efd);
    eventfd_add(&efd, 1);
    // SAFETY: fd_set manipulation on a zeroed set with an fd below
    // FD_SETSIZE.
    unsafe {
        let mut set: libc::fd_set = std::mem::zeroed();
        libc::FD_SET(ctx.as_raw_fd(), &mut set);
        let mut tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        let n = libc::select(
            ctx.as_raw_fd() + 1,
            &mut set,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut tv,
        );
        assert_eq!(n, 1);
        assert!(libc::FD_ISSET(ctx.as_raw_fd(), &set));
    }
    let recs = aem::wait(4, Some(Duration::ZERO)).unwrap();
    assert_eq!(recs.iter().map(|r| r.id).collect::<Vec<_>>(), [reg.id()]);
}

#[test]
fn exec_4_zero_timeout_polls_at_once_and_is_not_interrupted_by_signals() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    extern "C" fn ignore(_: libc::c_int) {}
    const POLLS: u32 = 20_000;
    let code = aem_conformance::in_child(|| {
        // SAFETY: the handler does nothing; no SA_RESTART, so a signal that
        // interrupts a sleeping call shows as EINTR.
        unsafe { libc::signal(libc::SIGUSR1, ignore as *const () as libc::sighandler_t) };
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let storm = std::thread::spawn(move || {
            while !s.load(SeqCst) {
                // SAFETY: signals this process's main thread.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), me, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        let mut recs = [aem_syscalls::uapi::aem_record::default(); 4];
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let (mut polled, mut eintr) = (0, 0);
        for _ in 0..POLLS {
            // SAFETY: a live buffer of 4 records and a live timespec.
            match unsafe { aem_syscalls::aem_wait(recs.as_mut_ptr(), 4, &zero, 0) } {
                Ok(0) => polled += 1,
                Err(aem_syscalls::Error::Os(aem_syscalls::Errno::EINTR)) => eintr += 1,
                other => panic!("{other:?}"),
            }
        }
        stop.store(true, SeqCst);
        storm.join().unwrap();
        assert_eq!(polled + eintr, POLLS);
        // The exit status: how many polls a signal turned into EINTR,
        // capped.
        eintr.min(100) as i32
    });
    assert_eq!(
        code, 0,
        "a zero-timeout wait, with nothing pending, returned EINTR (of {POLLS}, capped at 100)"
    );
}
