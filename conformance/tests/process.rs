//! SRC-6: process exit as an event, by a child's pid or by a pidfd, with
//! the status `waitid(2)` reports.
//!
//! The tests share the process's AEM context: run with --test-threads=1
//! (as `make test` does).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use aem::{Action, Errno, Error, EventData, Options, Record, Source};
use aem_conformance::{in_child, pipe, write_fd};
use aem_syscalls::uapi;

/// A child that exits with `code` once a byte arrives on its pipe (or the
/// pipe closes).  Returns its pid and the pipe's write end.
fn child_exiting_on_cue(code: i32) -> (libc::pid_t, OwnedFd) {
    let (r, w) = pipe();
    // SAFETY: the child only reads a pipe and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut b = 0u8;
        // SAFETY: closes the child's copy of the write end (so that the
        // parent's close is end of file), reads one byte into a live u8.
        unsafe {
            libc::close(w.as_raw_fd());
            libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(code)
        };
    }
    (pid, w)
}

fn pidfd_open(pid: libc::pid_t, flags: u32) -> Result<OwnedFd, i32> {
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reap `pid`; its wait status.
fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a live int.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// The next polled record, within 5 s.
fn next_record() -> Record {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut recs = aem::wait(1, Some(Duration::from_millis(100))).unwrap();
        if let Some(rec) = recs.pop() {
            return rec;
        }
        assert!(Instant::now() < end, "no record within 5 s");
    }
}

fn exit_status(rec: &Record) -> Option<ExitStatus> {
    match rec.data {
        EventData::ProcessExit { status } => status,
        ref other => panic!("not a process-exit record: {other:?}"),
    }
}

fn nothing_pending() -> bool {
    aem::wait(4, Some(Duration::from_millis(50)))
        .unwrap()
        .is_empty()
}

#[test]
fn src_6_child_exit_by_pid_reports_its_code_and_leaves_the_zombie() {
    let (pid, cue) = child_exiting_on_cue(7);
    let reg = aem::register(Source::child_exit(pid), Options::new().cookie(6)).unwrap();
    assert!(nothing_pending(), "the child has not exited yet");
    write_fd(&cue, b"x");
    let rec = next_record();
    assert_eq!((rec.id, rec.cookie, rec.count), (reg.id(), 6, 1));
    assert_eq!(exit_status(&rec).and_then(|s| s.code()), Some(7));
    // The event does not reap: the parent still does.
    let status = reap(pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7);
    assert!(nothing_pending(), "a process exits once");
}

#[test]
fn src_6_pidfd_exit_reports_the_killing_signal() {
    let (pid, _cue) = child_exiting_on_cue(0);
    let pidfd = pidfd_open(pid, 0).unwrap();
    let reg = aem::register(Source::process_exit(pidfd.as_fd()), Options::new()).unwrap();
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let rec = next_record();
    assert_eq!(rec.id, reg.id());
    let status = exit_status(&rec).expect("a status");
    assert_eq!(
        (status.code(), status.signal()),
        (None, Some(libc::SIGKILL))
    );
    assert!(!status.core_dumped());
    reap(pid);
}

#[test]
fn src_6_a_process_that_is_not_a_child_is_watched_through_its_pidfd() {
    // An intermediate child forks the grandchild, tells us its pid, and
    // reaps it: the grandchild is not ours.
    let (pid_r, pid_w) = pipe();
    let (cue_r, cue_w) = pipe();
    // SAFETY: the child forks, writes a pipe, waits and leaves with _exit.
    let middle = unsafe { libc::fork() };
    assert!(middle >= 0);
    if middle == 0 {
        // SAFETY: as above; the grandchild reads its cue and exits.
        unsafe {
            let grandchild = libc::fork();
            if grandchild == 0 {
                let mut b = 0u8;
                libc::read(cue_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(5);
            }
            libc::write(pid_w.as_raw_fd(), (&grandchild as *const i32).cast(), 4);
            let mut status = 0;
            libc::waitpid(grandchild, &mut status, 0);
            libc::_exit(0);
        }
    }
    drop(cue_r);
    let mut grandchild: libc::pid_t = 0;
    // SAFETY: reads 4 bytes into a live pid_t.
    let n = unsafe { libc::read(pid_r.as_raw_fd(), (&mut grandchild as *mut i32).cast(), 4) };
    assert_eq!(n, 4);
    assert_eq!(
        aem::register(Source::child_exit(grandchild), Options::new()).unwrap_err(),
        Error::Os(Errno(libc::ECHILD)),
        "by pid: only children"
    );
    let pidfd = pidfd_open(grandchild, 0).unwrap();
    let reg = aem::register(Source::process_exit(pidfd.as_fd()), Options::new()).unwrap();
    write_fd(&cue_w, b"x");
    let rec = next_record();
    assert_eq!(rec.id, reg.id());
    assert_eq!(exit_status(&rec).and_then(|s| s.code()), Some(5));
    reap(middle);
}

#[test]
fn src_6_a_process_already_gone_fires_at_registration() {
    let (pid, cue) = child_exiting_on_cue(3);
    let pidfd = pidfd_open(pid, 0).unwrap();
    drop(cue);
    // A zombie: its status is still there.
    let mut info: libc::siginfo_t =
        // SAFETY: siginfo_t is plain data.
        unsafe { std::mem::zeroed() };
    // SAFETY: waits without reaping (WNOWAIT) into a live siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as u32,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(r, 0);
    let zombie = aem::register(Source::child_exit(pid), Options::new()).unwrap();
    let rec = next_record();
    assert_eq!(rec.id, zombie.id());
    assert_eq!(exit_status(&rec).and_then(|s| s.code()), Some(3));
    // Reaped: gone, and its status with it.
    reap(pid);
    let reaped = aem::register(Source::process_exit(pidfd.as_fd()), Options::new()).unwrap();
    let rec = next_record();
    assert_eq!(rec.id, reaped.id());
    assert_eq!(exit_status(&rec), None);
    assert!(nothing_pending());
}

#[test]
fn src_6_a_child_reaped_at_once_still_reports_its_status() {
    let code = in_child(|| {
        // SIGCHLD ignored: children are reaped as they exit.
        // SAFETY: changes this test child's own disposition.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        let (pid, cue) = child_exiting_on_cue(9);
        let _reg = aem::register(Source::child_exit(pid), Options::new()).unwrap();
        write_fd(&cue, b"x");
        let rec = next_record();
        let got = exit_status(&rec).and_then(|s| s.code());
        // SAFETY: a null status pointer is allowed.
        let gone = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } == -1;
        i32::from(got == Some(9)) + 2 * i32::from(gone)
    });
    assert_eq!(
        code, 3,
        "1: the status arrived, 2: the child was auto-reaped"
    );
}

#[test]
fn src_6_inline_handler_receives_the_exit_status() {
    static CODE: AtomicI32 = AtomicI32::new(-1);
    let (pid, cue) = child_exiting_on_cue(42);
    // SAFETY: the handler only stores to an atomic.
    let _reg = unsafe {
        aem::register_inline(Source::child_exit(pid), Options::new(), |rec| {
            if let EventData::ProcessExit { status: Some(s) } = rec.data {
                CODE.store(s.code().unwrap_or(-2), SeqCst);
            }
            Action::Rearm
        })
    }
    .unwrap();
    write_fd(&cue, b"x");
    let end = Instant::now() + Duration::from_secs(5);
    while CODE.load(SeqCst) == -1 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(CODE.load(SeqCst), 42);
    reap(pid);
}

#[test]
fn src_6_a_watch_unregistered_before_the_exit_hears_nothing() {
    let (pid, cue) = child_exiting_on_cue(1);
    let reg = aem::register(Source::child_exit(pid), Options::new()).unwrap();
    let id = reg.id();
    drop(reg);
    write_fd(&cue, b"x");
    reap(pid);
    assert!(nothing_pending());
    assert!(aem_conformance::proc_row(id).is_none());
}

/// `aem_register()` of a process source with these raw arguments.
fn register_raw(
    pidfd: i32,
    pid: i32,
    flags: u32,
    reserved: u32,
    ev_flags: u32,
) -> Result<u32, Error> {
    let mut attr = uapi::aem_event_attr {
        source: aem::SourceKind::ProcessExit.raw(),
        flags: ev_flags,
        ..Default::default()
    };
    attr.__bindgen_anon_1.process = uapi::aem_process_source {
        pidfd,
        pid,
        flags,
        reserved,
    };
    // SAFETY: a live attr of the size passed.
    let r = unsafe {
        aem_syscalls::aem_register(&attr, std::mem::size_of::<uapi::aem_event_attr>(), 0)
    };
    let id = r.map_err(Error::from)?;
    aem_syscalls::aem_ctl(id as i32, uapi::AEM_CTL_UNREGISTER, 0).unwrap();
    Ok(id)
}

#[test]
fn src_6_rejects_bad_process_arguments() {
    let (pid, cue) = child_exiting_on_cue(0);
    let pidfd = pidfd_open(pid, 0).unwrap();
    let efd = aem_conformance::eventfd();
    let einval = Err(Error::Os(Errno(libc::EINVAL)));
    let echild = Err(Error::Os(Errno(libc::ECHILD)));
    let fd = pidfd.as_raw_fd();
    assert!(register_raw(fd, 0, 0, 0, 0).is_ok(), "the good case");
    assert!(
        register_raw(-1, pid, 0, 0, 0).is_ok(),
        "the good case by pid"
    );
    assert_eq!(register_raw(fd, pid, 0, 0, 0), einval, "pidfd and pid");
    assert_eq!(register_raw(-1, 0, 0, 0, 0), einval, "pid 0");
    assert_eq!(register_raw(-1, -7, 0, 0, 0), einval, "negative pid");
    assert_eq!(register_raw(-2, pid, 0, 0, 0), einval, "pidfd -2");
    assert_eq!(register_raw(fd, 0, 1, 0, 0), einval, "flags");
    assert_eq!(register_raw(fd, 0, 0, 1, 0), einval, "reserved");
    assert_eq!(
        register_raw(fd, 0, 0, 0, uapi::AEM_EV_LEVEL),
        einval,
        "level: an exit happens once"
    );
    assert_eq!(
        register_raw(efd.as_raw_fd(), 0, 0, 0, 0),
        Err(Error::Os(Errno(libc::EBADF))),
        "not a pidfd"
    );
    assert_eq!(
        register_raw(9999, 0, 0, 0, 0),
        Err(Error::Os(Errno(libc::EBADF))),
        "no such descriptor"
    );
    // SAFETY: getpid and gettid have no preconditions.
    let (me, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    assert_eq!(register_raw(-1, me, 0, 0, 0), echild, "itself");
    assert_eq!(register_raw(-1, 1, 0, 0, 0), echild, "init: not a child");
    assert_eq!(
        register_raw(-1, 999_999, 0, 0, 0),
        echild,
        "no such process"
    );
    const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
    let thread_pidfd = pidfd_open(tid, PIDFD_THREAD).unwrap();
    assert_eq!(
        register_raw(thread_pidfd.as_raw_fd(), 0, 0, 0, 0),
        einval,
        "a thread's pidfd"
    );
    drop(cue);
    reap(pid);
}
