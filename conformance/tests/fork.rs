//! EXEC-2: a new process per event (`AEM_EV_FORK`, `AEM_EV_NOCLDWAIT`),
//! through `aem::on_event_forked` and `aem::spawn_on_event`, and SEC-4 for
//! the children.  Each test runs in a child of the test process (one
//! thread, its own children), so that waiting for "any child" sees only
//! the test's.  Forked handlers keep to async-signal-safe calls: raw
//! system calls on stack buffers.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use aem::{Options, Reap, Source};
use aem_conformance::{eventfd, eventfd_add, in_child, pipe, proc_aem_counts, proc_row};
use aem_syscalls::uapi;

fn readable(fd: &OwnedFd) -> Source<'_> {
    Source::fd(fd.as_fd(), aem::FdEvents::IN)
}

/// What a forked handler reports through a pipe: its pid, its parent's,
/// the record's count, and a word of the test's choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    pid: i32,
    ppid: i32,
    count: u64,
    word: u64,
}

/// In a forked handler: write a report, allocation-free.
fn report(fd: i32, count: u64, word: u64) {
    let mut buf = [0u8; 24];
    // SAFETY: getpid and getppid have no preconditions.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    buf[..4].copy_from_slice(&pid.to_ne_bytes());
    buf[4..8].copy_from_slice(&ppid.to_ne_bytes());
    buf[8..16].copy_from_slice(&count.to_ne_bytes());
    buf[16..].copy_from_slice(&word.to_ne_bytes());
    // SAFETY: a live buffer of the length passed.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// In a forked handler: field `index` of `/proc/self/stat` counted from
/// the one after the command name (0: the state), allocation-free.
fn raw_stat_field(index: usize) -> i64 {
    let mut buf = [0u8; 512];
    let path = b"/proc/self/stat\0";
    // SAFETY: a NUL-terminated path, a stack buffer.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY);
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let stat = &buf[..n.max(0) as usize];
    let after_comm = stat.iter().rposition(|&b| b == b')').unwrap_or(0) + 2;
    stat[after_comm..]
        .split(|&b| b == b' ')
        .nth(index)
        .and_then(|f| core::str::from_utf8(f).ok())
        .and_then(|f| f.parse::<i64>().ok())
        .unwrap_or(i64::MIN)
}

/// In the parent: read one report (blocking).
fn read_report(fd: &OwnedFd) -> Report {
    let mut buf = [0u8; 24];
    std::fs::File::from(fd.try_clone().unwrap())
        .read_exact(&mut buf)
        .unwrap();
    Report {
        pid: i32::from_ne_bytes(buf[..4].try_into().unwrap()),
        ppid: i32::from_ne_bytes(buf[4..8].try_into().unwrap()),
        count: u64::from_ne_bytes(buf[8..16].try_into().unwrap()),
        word: u64::from_ne_bytes(buf[16..].try_into().unwrap()),
    }
}

/// Drain an eventfd from a forked handler (the counter is the file's,
/// shared with the parent).
fn drain_raw(fd: i32) {
    let mut v = 0u64;
    // SAFETY: an 8-byte buffer for an eventfd read.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

fn waitpid(pid: i32, flags: i32) -> (i32, i32) {
    let mut status = 0;
    // SAFETY: `status` is a valid int to fill.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    (r, status)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// The `# fork:` line of `/proc/self/aem`: (children started, refused).
fn fork_line() -> (u64, u64) {
    proc_aem_counts("self", "fork")
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fork event on a new eventfd whose child drains it, reports (word 0),
/// then returns what `then` returns: (the eventfd, the report pipe's read
/// end, the registration).  `then` runs in the child: async-signal-safe.
fn reporting_event(
    reap: Reap,
    then: impl FnMut() -> i32 + Send + 'static,
) -> (OwnedFd, OwnedFd, aem::ForkRegistration) {
    reporting_event_with(Options::new(), reap, then)
}

/// [`reporting_event`] with `options`.
fn reporting_event_with(
    options: Options,
    reap: Reap,
    mut then: impl FnMut() -> i32 + Send + 'static,
) -> (OwnedFd, OwnedFd, aem::ForkRegistration) {
    let efd = eventfd();
    let (r, w) = pipe();
    let raw_efd = efd.as_raw_fd();
    let handler = move |rec: &mut aem::Record| {
        drain_raw(raw_efd);
        // The write end lives in the closure, so with the registration.
        report(w.as_raw_fd(), rec.count, 0);
        then()
    };
    // SAFETY: the handler makes raw system calls, and `then` keeps to
    // async-signal-safe ones.
    let reg = unsafe { aem::on_event_forked(readable(&efd), options, reap, handler) };
    (efd, r, reg.unwrap())
}

#[test]
fn exec_2_each_delivery_runs_the_handler_in_a_new_child() {
    assert_eq!(
        in_child(|| {
            let (efd, r, reg) = reporting_event(Reap::ByParent, move || 42);
            let me = std::process::id() as i32;
            let mut children = Vec::new();
            for round in 1..=3u64 {
                eventfd_add(&efd, round);
                // The registering thread sleeps in read(): the fork does
                // not interrupt it (the read restarts, no EINTR).
                let rep = read_report(&r);
                assert_eq!(rep.ppid, me);
                assert_ne!(rep.pid, me);
                assert_eq!(rep.count, 1);
                let (pid, status) = waitpid(rep.pid, 0);
                assert_eq!(pid, rep.pid);
                assert!(libc::WIFEXITED(status), "status {status:#x}");
                assert_eq!(libc::WEXITSTATUS(status), 42, "the handler's return");
                children.push(rep.pid);
            }
            children.dedup();
            assert_eq!(children.len(), 3, "one child per delivery");
            assert_eq!(fork_line(), (3, 0));
            let row = proc_row(reg.id()).unwrap();
            assert_eq!(row.flags, "fork");
            assert_eq!(row.deliveries, 3);
            0
        }),
        0
    );
}

#[test]
fn exec_2_a_fork_event_waits_for_the_registering_threads_critical_section() {
    // The child must not be a copy taken inside a section (a lock of the
    // shim held, the heap half-changed): the fork waits for its end.
    assert_eq!(
        in_child(|| {
            let (efd, r, reg) = reporting_event(Reap::Auto, || 0);
            let section = aem::critical_section();
            eventfd_add(&efd, 1);
            std::thread::sleep(Duration::from_millis(50));
            let mut pfd = libc::pollfd {
                fd: r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            let early = unsafe { libc::poll(&mut pfd, 1, 0) };
            let pending = proc_row(reg.id()).unwrap().pending;
            drop(section);
            let rep = read_report(&r);
            assert_eq!(rep.count, 1);
            i32::from(early != 0) | i32::from(pending != 1) << 1
        }),
        0,
        "failure bits: 1 forked inside the section, 2 not pending meanwhile"
    );
}

#[test]
fn exec_2_auto_reaped_children_leave_no_zombie_and_send_no_sigchld() {
    assert_eq!(
        in_child(|| {
            // SAFETY: a blocked signal set for this thread.
            unsafe {
                let mut set: libc::sigset_t = core::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                assert_eq!(
                    libc::sigprocmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()),
                    0
                );
            }
            let (efd, r, reg) = reporting_event(Reap::Auto, move || 0);
            eventfd_add(&efd, 1);
            let rep = read_report(&r);
            until("the child to vanish", || {
                !std::path::Path::new(&format!("/proc/{}", rep.pid)).exists()
            });
            // Reaped by the kernel: nothing to wait for, no SIGCHLD.
            assert_eq!(waitpid(-1, libc::WNOHANG | libc::__WALL).0, -1);
            assert_eq!(errno(), libc::ECHILD);
            // SAFETY: a set to fill.
            unsafe {
                let mut pending: libc::sigset_t = core::mem::zeroed();
                assert_eq!(libc::sigpending(&mut pending), 0);
                assert_eq!(libc::sigismember(&pending, libc::SIGCHLD), 0);
            }
            assert_eq!(proc_row(reg.id()).unwrap().flags, "fork,nocldwait");
            0
        }),
        0
    );
}

#[test]
fn exec_2_the_child_has_one_thread_and_none_of_the_parents_events() {
    assert_eq!(
        in_child(|| {
            let efd = eventfd();
            let other = eventfd();
            let (r, w) = pipe();
            let (raw_efd, raw_w) = (efd.as_raw_fd(), w.as_raw_fd());
            // A second thread in the parent, and a second event pending.
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let _ = stop_rx.recv();
            });
            let pending = aem::register(readable(&other), Options::new()).unwrap();
            eventfd_add(&other, 1);
            let pending_id = pending.id();
            let handler = move |rec: &mut aem::Record| {
                drain_raw(raw_efd);
                // Threads: /proc/self/stat field 20.
                let threads = raw_stat_field(17).max(0) as u64;
                // The parent's events are not the child's: ENOENT.
                let ctl = aem_syscalls::aem_ctl(pending_id as i32, uapi::AEM_CTL_DISABLE, 0);
                let enoent = matches!(ctl, Err(aem_syscalls::Error::Os(e)) if e.0 == libc::ENOENT);
                report(raw_w, rec.count, threads << 1 | u64::from(enoent));
                0
            };
            // SAFETY: the handler makes raw system calls only.
            let reg = unsafe {
                aem::on_event_forked(readable(&efd), Options::new(), Reap::Auto, handler)
            }
            .unwrap();
            eventfd_add(&efd, 1);
            let rep = read_report(&r);
            assert_eq!(rep.word >> 1, 1, "threads in the child");
            assert_eq!(rep.word & 1, 1, "the parent's event is not the child's");
            // The parent's pending event is still the parent's.
            assert_eq!(proc_row(pending_id).unwrap().pending, 1);
            drop(reg);
            stop_tx.send(()).unwrap();
            thread.join().unwrap();
            0
        }),
        0
    );
}

#[test]
fn exec_2_a_spawned_program_gets_the_connection_and_the_parent_closes_its_copy() {
    assert_eq!(
        in_child(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut command = std::process::Command::new("sh");
            command
                .arg("-c")
                .arg("read line; echo \"got $line from $GREETING\"")
                .env("GREETING", "aem");
            let reg = aem::spawn_on_event(
                Source::accept(listener.as_fd(), aem::AcceptFlags::empty()),
                Options::new(),
                Reap::Auto,
                &command,
            )
            .unwrap();
            let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
            let before = fds();
            for i in 0..3 {
                let mut conn = std::net::TcpStream::connect(addr).unwrap();
                writeln!(conn, "hello{i}").unwrap();
                let mut answer = String::new();
                conn.read_to_string(&mut answer).unwrap();
                assert_eq!(answer, format!("got hello{i} from aem\n"));
            }
            until("three children", || fork_line() == (3, 0));
            // The accepted descriptors went to the children only.
            assert_eq!(fds(), before);
            drop(reg);
            0
        }),
        0
    );
}

/// The connection is the program's standard input and output even when
/// it is accepted as descriptor 0 (`dup2(0, 0)` does nothing, so its
/// close-on-exec flag must be cleared another way) in a process whose
/// standard input is closed.
#[test]
fn exec_2_a_spawned_program_gets_the_connection_when_it_is_fd_0() {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
    // The program's complaints, if any, and the child's go to its
    // standard error.
    let (status, stderr) = aem_conformance::in_child_stderr(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("not IPv4");
        };
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg("read line; echo \"got $line\"");
        // Close-on-exec, as `AcceptFlags::default()` makes it.
        let reg = aem::spawn_on_event(
            Source::accept(listener.as_fd(), aem::AcceptFlags::CLOEXEC),
            Options::new(),
            Reap::Auto,
            &command,
        )
        .unwrap();
        // The client's socket first, then no standard input: the
        // lowest free descriptor, the accepted one, is 0.
        let client = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        // SAFETY: closes this process's standard input, unused.
        assert_eq!(unsafe { libc::close(0) }, 0);
        socket::connect(client.as_raw_fd(), &SockaddrIn::from(addr)).unwrap();
        let mut conn = std::net::TcpStream::from(client);
        writeln!(conn, "hello").unwrap();
        let mut answer = String::new();
        if let Err(e) = conn.read_to_string(&mut answer) {
            answer = format!("{answer}<{e}>");
        }
        if answer != "got hello\n" {
            // Written to descriptor 2 itself, past the test's capture.
            let _ = writeln!(std::io::stderr(), "the program answered {answer:?}");
            return 1;
        }
        until("the child", || fork_line() == (1, 0));
        // The parent closed its copy: 0 is free again.
        // SAFETY: a flags query.
        assert_eq!(unsafe { libc::fcntl(0, libc::F_GETFD) }, -1);
        assert_eq!(errno(), libc::EBADF);
        drop(reg);
        0
    });
    assert_eq!(status, 0, "the child: {stderr}");
}

/// A child of `reap` that waits for a go, then exits with 9: watched as a
/// process-exit event (SRC-6), whose record must carry the 9.  Returns
/// the child's pid.
fn child_exit_is_reported(reap: Reap) -> i32 {
    let (go_r, go_w) = pipe();
    let (efd, r, _reg) = reporting_event(reap, move || {
        // Wait for the parent to watch, then end with 9.
        let mut b = 0u8;
        // SAFETY: a one-byte buffer.
        unsafe { libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        9
    });
    eventfd_add(&efd, 1);
    let rep = read_report(&r);
    let _watch = aem::register(Source::child_exit(rep.pid), Options::new()).unwrap();
    aem_conformance::write_fd(&go_w, b"x");
    let rec = aem::wait(1, Some(Duration::from_secs(10)))
        .unwrap()
        .into_iter()
        .next()
        .expect("the exit record");
    match rec.data {
        aem::EventData::ProcessExit { status, .. } => {
            assert_eq!(status.expect("a status").code(), Some(9));
        }
        other => panic!("not a process exit: {other:?}"),
    }
    rep.pid
}

#[test]
fn exec_2_the_exit_of_a_child_is_a_process_exit_event() {
    assert_eq!(
        in_child(|| {
            let pid = child_exit_is_reported(Reap::ByParent);
            // The event reported it; reaping is still the parent's.
            assert_eq!(waitpid(pid, 0).0, pid);
            0
        }),
        0
    );
}

#[test]
fn src_6_an_auto_reaped_child_reports_its_status_before_it_vanishes() {
    assert_eq!(
        in_child(|| {
            let pid = child_exit_is_reported(Reap::Auto);
            // Reaped by the kernel: nothing left to wait for.
            until("the child to be reaped", || {
                !std::path::Path::new(&format!("/proc/{pid}")).exists()
            });
            assert_eq!(waitpid(pid, libc::WNOHANG | libc::__WALL).0, -1);
            assert_eq!(errno(), libc::ECHILD);
            0
        }),
        0
    );
}

#[test]
fn exec_2_a_refused_fork_keeps_the_event_disabled_and_counted_until_enabled() {
    let (status, stderr) = aem_conformance::in_child_stderr(|| {
        let limit = |n| libc::rlimit {
            rlim_cur: n,
            rlim_max: libc::RLIM_INFINITY,
        };
        // An unprivileged user, allowed no more processes than it has
        // (the hard limit set first, while root may raise it).
        // SAFETY: setrlimit/setgid/setuid/prctl: valid arguments, no
        // memory preconditions.
        unsafe {
            assert_eq!(libc::setrlimit(libc::RLIMIT_NPROC, &limit(0)), 0);
            assert_eq!(libc::setgid(65534), 0);
            assert_eq!(libc::setuid(65534), 0);
            assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 1), 0);
        }
        let (efd, r, reg) = reporting_event(Reap::Auto, || 0);
        eventfd_add(&efd, 1);
        until("the refusal", || fork_line() == (0, 1));
        let row = proc_row(reg.id()).unwrap();
        assert_eq!(row.state, "disabled");
        assert_eq!(row.pending, 1, "the activation is kept");
        // More activations are counted, not lost, and fork nothing.
        eventfd_add(&efd, 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(fork_line(), (0, 1));
        // Room again, and an enable: the child runs.
        let room = limit(libc::RLIM_INFINITY);
        // SAFETY: a valid rlimit.
        let raised = unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &room) };
        assert_eq!(raised, 0);
        reg.enable().unwrap();
        let rep = read_report(&r);
        assert!(rep.count >= 1);
        assert_eq!(fork_line(), (1, 1));
        0
    });
    assert_eq!(status, 0, "the child: {stderr}");
}

#[test]
fn exec_2_bad_fork_flags_are_refused() {
    use aem_syscalls::{aem_register, Errno, Error};
    let efd = eventfd();
    let base = || {
        let mut attr = uapi::aem_event_attr {
            source: uapi::aem_source_kind::AEM_SOURCE_FD,
            ..Default::default()
        };
        attr.__bindgen_anon_1.fd = uapi::aem_fd_source {
            fd: efd.as_raw_fd(),
            events: libc::EPOLLIN as u32,
        };
        attr
    };
    let einval = Err(Error::Os(Errno(libc::EINVAL)));
    let handler = exec_2_bad_fork_flags_are_refused as *const () as u64;
    for (flags, with_handler, what) in [
        (uapi::AEM_EV_FORK, false, "a fork event needs a handler"),
        (uapi::AEM_EV_FORK | uapi::AEM_EV_POOL, true, "fork and pool"),
        (uapi::AEM_EV_NOCLDWAIT, true, "nocldwait without fork"),
        (uapi::AEM_EV_NOCLDWAIT, false, "nocldwait alone"),
    ] {
        let mut attr = base();
        attr.flags = flags;
        if with_handler {
            attr.handler = handler;
            attr.restorer = handler;
        }
        // SAFETY: a live attr of the size passed.
        let r = unsafe { aem_register(&attr, core::mem::size_of_val(&attr), 0) };
        assert_eq!(r, einval.map(|()| 0), "{what}");
    }
    // The crate's check of a program that is not there.
    let r = aem::spawn_on_event(
        readable(&efd),
        Options::new(),
        Reap::Auto,
        &std::process::Command::new("no-such-program-aem"),
    );
    assert_eq!(r.unwrap_err(), aem::Error::Os(aem::Errno(libc::ENOENT)));
    assert!(aem_conformance::proc_aem("self")
        .iter()
        .all(|r| !r.flags.contains("fork")));
}

#[test]
fn exec_2_a_flood_of_fork_events_is_coalesced_and_ends_with_its_unregistration() {
    assert_eq!(
        in_child(|| {
            use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
            use std::sync::{mpsc, Arc};
            // A timer far faster than a fork: activations coalesce (one
            // child per delivery, one delivery per way out to user mode),
            // and the process's other threads run on.  The registering
            // thread itself may get no time of its own while the flood
            // lasts (a fork is slower than the timer): it registers the
            // event disabled, and this thread enables it.
            let spins = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (s, st) = (spins.clone(), stop.clone());
            let (id_tx, id_rx) = mpsc::channel();
            let spinner = std::thread::spawn(move || {
                // SAFETY: the handler does nothing.
                let reg = unsafe {
                    aem::on_event_forked(
                        Source::periodic(Duration::from_micros(20)),
                        Options::new().disabled(true),
                        Reap::Auto,
                        |_| 0,
                    )
                }
                .unwrap();
                id_tx.send(reg.id()).unwrap();
                while !st.load(Relaxed) {
                    s.fetch_add(1, Relaxed);
                }
                // Unregistered by the main thread already: ENOENT, ignored.
                drop(reg);
            });
            let id = id_rx.recv().unwrap();
            aem_syscalls::aem_ctl(id as i32, uapi::AEM_CTL_ENABLE, 0).unwrap();
            until("a few children", || fork_line().0 >= 3);
            let first = fork_line().0;
            let row = proc_row(id).unwrap();
            let then = fork_line().0;
            assert!(
                row.activations > row.deliveries,
                "activations did not coalesce: {} activations, {} deliveries",
                row.activations,
                row.deliveries
            );
            // One child per delivery (a delivery is counted just before
            // its fork: one may be under way).
            assert!(
                (first..=then + 1).contains(&row.deliveries),
                "{} deliveries, {first}..{then} children",
                row.deliveries
            );
            // Another thread ends the flood; once that returns, no child
            // starts any more (the fork runs under the lock it takes).
            aem_syscalls::aem_ctl(id as i32, uapi::AEM_CTL_UNREGISTER, 0).unwrap();
            let (started, refused) = fork_line();
            assert_eq!(refused, 0);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                fork_line().0,
                started,
                "a child started after the unregistration"
            );
            // The registering thread is free again.
            let before = spins.load(Relaxed);
            until("the registering thread to run", || {
                spins.load(Relaxed) > before
            });
            stop.store(true, Relaxed);
            spinner.join().unwrap();
            0
        }),
        0
    );
}

#[test]
fn exec_2_a_fork_event_that_stays_pending_lets_its_thread_run() {
    assert_eq!(
        in_child(|| {
            use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
            // A level event on an eventfd that stays readable is pending
            // again after every fork.  Each fork write-protects the
            // thread's memory, so its next write faults; were the way out
            // of that fault to fork again, the write would never complete.
            // The thread must get on with its own work, writing private
            // memory, while children keep starting.  A livelock ends at
            // the watchdog's SIGALRM, and fails the test.
            aem_conformance::watchdog(30);
            let efd = eventfd();
            eventfd_add(&efd, 1);
            let options = Options::new().level(true);
            // SAFETY: the handler does nothing.
            let reg = unsafe { aem::on_event_forked(readable(&efd), options, Reap::Auto, |_| 0) }
                .unwrap();
            let counter = Box::new(AtomicU64::new(0));
            let mut page = vec![0u8; 4096];
            let end = Instant::now() + Duration::from_secs(2);
            let mut i = 0usize;
            while Instant::now() < end {
                page[i % 4096] = i as u8;
                counter.fetch_add(1, Relaxed);
                i += 1;
            }
            let (children, refused) = fork_line();
            drop(reg);
            assert_eq!(refused, 0);
            assert!(
                children >= 2,
                "{children} children: the event did not fire on"
            );
            assert!(
                counter.load(Relaxed) > 1000,
                "{} iterations beside {children} forks: the thread did not run",
                counter.load(Relaxed)
            );
            std::hint::black_box(&page);
            0
        }),
        0
    );
}

#[test]
fn exec_2_the_child_runs_at_the_events_priority() {
    assert_eq!(
        in_child(|| {
            // A new child's first steps are copy-on-write faults, slow
            // under a debug kernel in TCG: a budget (kernel.aem_boost_max_us)
            // that they cannot use up before the handler reads its priority.
            let _budget = aem_conformance::BoostBudget::set(1_000_000);
            // Its exit status: the priority /proc shows (field 18), + 100.
            let options = Options::new().priority(60);
            let (efd, r, _reg) = reporting_event_with(options, Reap::ByParent, || {
                (raw_stat_field(15) + 100) as i32
            });
            eventfd_add(&efd, 1);
            let rep = read_report(&r);
            let (_, status) = waitpid(rep.pid, 0);
            assert!(libc::WIFEXITED(status), "status {status:#x}");
            // The real-time band: AEM priority 60 is rt_priority 11, shown
            // as -12; the parent thread is back to its own priority.
            assert_eq!(libc::WEXITSTATUS(status) as i64 - 100, -(60 - 48));
            let parent = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let rest = &parent[parent.rfind(')').unwrap() + 2..];
            let now: i64 = rest.split(' ').nth(15).unwrap().parse().unwrap();
            assert!(now >= 0, "the parent stayed boosted: {now}");
            0
        }),
        0
    );
}

#[test]
fn sec_4_a_crashing_forked_handler_ends_only_its_child() {
    assert_eq!(
        in_child(|| {
            let (efd, r, reg) = reporting_event(Reap::ByParent, move || {
                // SAFETY: the default action, then the crash it gives.
                unsafe {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::raise(libc::SIGSEGV);
                }
                0
            });
            for _ in 0..2 {
                eventfd_add(&efd, 1);
                let rep = read_report(&r);
                let (pid, status) = waitpid(rep.pid, 0);
                assert_eq!(pid, rep.pid);
                assert!(libc::WIFSIGNALED(status), "status {status:#x}");
                assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
            }
            // The parent and its event live on.
            assert_eq!(proc_row(reg.id()).unwrap().state, "enabled");
            assert_eq!(fork_line(), (2, 0));
            0
        }),
        0
    );
}
