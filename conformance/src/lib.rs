//! Helpers for the AEM conformance suite (`tests/`, one file per
//! requirement area).
//!
//! The suite runs in the guest against the real AEM kernel (`make test`
//! boots it through `qemu/cargo-runner.sh`).  Test names start with the
//! MISSION.md requirement ID they prove, in snake case (`api_3_...`).

#![warn(missing_docs)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

pub mod patterns;

/// Write an embedded static executable to a temporary file and run it.
///
/// Panics with a clear message when `image` is empty (the build had no
/// patched UAPI headers) or the program cannot be started.
pub fn run_embedded(name: &str, image: &[u8]) -> Output {
    assert!(
        !image.is_empty(),
        "{name} was not built: the build had no patched UAPI headers (run `make kernel`)"
    );
    let path = std::env::temp_dir().join(format!("{name}.{}", std::process::id()));
    std::fs::write(&path, image).expect("write embedded program");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod embedded program");
    let out = Command::new(&path).output().expect("run embedded program");
    let _ = std::fs::remove_file(&path);
    out
}

/// An anonymous mapping, private or shared, unmapped on drop.
pub struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Map `pages` private pages with protection `prot` (`libc::PROT_*`).
    pub fn new(pages: usize, prot: libc::c_int) -> io::Result<Mapping> {
        Mapping::map(pages, prot, libc::MAP_PRIVATE)
    }

    /// Map `pages` pages shared across `fork()` with protection `prot`
    /// (`libc::PROT_*`).
    pub fn shared(pages: usize, prot: libc::c_int) -> io::Result<Mapping> {
        Mapping::map(pages, prot, libc::MAP_SHARED)
    }

    /// Map `pages` anonymous pages, `MAP_PRIVATE` or `MAP_SHARED` (`kind`).
    fn map(pages: usize, prot: libc::c_int, kind: libc::c_int) -> io::Result<Mapping> {
        let len = pages * page_size();
        // SAFETY: an anonymous mapping at a kernel-chosen address touches
        // no existing memory.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                kind | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    /// The start of the mapping.
    pub fn addr(&self) -> *mut u8 {
        self.addr.cast()
    }

    /// Remove access to page `index` (so it faults).
    pub fn protect_page(&self, index: usize, prot: libc::c_int) {
        let ps = page_size();
        assert!(index * ps < self.len);
        // SAFETY: the range lies inside this mapping, which we own.
        let r = unsafe { libc::mprotect(self.addr.cast::<u8>().add(index * ps).cast(), ps, prot) };
        assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing refers to it any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Install, on the calling thread only, a seccomp filter that makes system
/// call `nr` fail with `ENOSYS`: the view a program has of a kernel without
/// that call.  Use it on a thread of its own; the filter cannot be removed.
pub fn deny_syscall_with_enosys(nr: libc::c_long) -> io::Result<()> {
    filter_syscalls(&[nr], libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32)
}

/// Install, on the calling thread only, a seccomp filter that kills the
/// process (SIGSYS) if the thread makes any of the system calls `nrs`:
/// proof that a code path makes none of them.  Use it in a child process.
pub fn kill_on_syscalls(nrs: &[libc::c_long]) -> io::Result<()> {
    filter_syscalls(nrs, libc::SECCOMP_RET_KILL_PROCESS)
}

/// System calls [`trap_syscall_op`] trapped (and so did not make).
pub static TRAPPED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn count_trap(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TRAPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Install, on the calling thread only, a seccomp filter that stops
/// system call `nr` whenever its second argument is `op` (an `aem_ctl()`
/// operation, say): the call is not made, fails with `ENOSYS`, and counts
/// in [`TRAPPED`].  Proof of which calls a code path makes.  Use it in a
/// child process.
pub fn trap_syscall_op(nr: libc::c_long, op: u32) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::SigAction(count_trap),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only bumps an atomic.
    unsafe { sigaction(Signal::SIGSYS, &sa) }?;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    // Offsets in struct seccomp_data: nr, arch, args[1]'s low word.
    const NR_OFF: u32 = 0;
    const ARCH_OFF: u32 = 4;
    const ARG1_OFF: u32 = 24;
    let ld = |k| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt, jf| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        ld(ARCH_OFF),
        jeq(AUDIT_ARCH_X86_64, 0, 4),
        ld(NR_OFF),
        jeq(nr as u32, 0, 2),
        ld(ARG1_OFF),
        jeq(op, 1, 0),
        ret(libc::SECCOMP_RET_ALLOW),
        ret(libc::SECCOMP_RET_TRAP),
    ];
    install_filter(&filter)
}

/// Load the seccomp program `filter` on the calling thread.
fn install_filter(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with these arguments only sets a per-thread flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at a valid filter that outlives the call (the
    // kernel copies it).  Without SECCOMP_FILTER_FLAG_TSYNC it applies to
    // this thread only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A seccomp filter: `action` for the system calls `nrs`, allow the rest.
fn filter_syscalls(nrs: &[libc::c_long], action: u32) -> io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    // Offsets in struct seccomp_data.
    const NR_OFF: u32 = 0;
    const ARCH_OFF: u32 = 4;
    let ld = |k| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt, jf| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // arch check; then one compare per call, jumping to the action.
    let n = nrs.len() as u8;
    let mut filter = vec![ld(ARCH_OFF), jeq(AUDIT_ARCH_X86_64, 0, n + 1), ld(NR_OFF)];
    for (i, &nr) in nrs.iter().enumerate() {
        filter.push(jeq(nr as u32, n - i as u8, 0));
    }
    filter.push(ret(libc::SECCOMP_RET_ALLOW));
    filter.push(ret(action));
    install_filter(&filter)
}

/// Fork; the child runs `f` and exits with its return value (99 if it
/// panics).  Returns the child's pid, for [`reap`], [`reap_status`] or
/// [`await_word`].
pub fn spawn(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs `f` and leaves with _exit; the tests keep to
    // what is safe after fork in a process whose other threads are gone.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: _exit ends the child without running the parent's
        // destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Reap the child `pid`; its wait status.
pub fn reap_status(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a valid int to fill.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// Reap the child `pid`; its exit code.  Panics if it died of a signal.
pub fn reap(pid: libc::pid_t) -> i32 {
    let status = reap_status(pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Fork; the child runs `f` and exits with its return value (99 if it
/// panics).  Returns the child's wait status, for [`in_child`] or a check
/// of how it died.
pub fn in_child_status(f: impl FnOnce() -> i32) -> i32 {
    reap_status(spawn(f))
}

/// Fork; the child runs `f` and exits with its return value, which this
/// returns.  Panics if the child died of a signal.
pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
    reap(spawn(f))
}

/// Wait up to 5 s for `word` of `shared` to be `value`, set by the child
/// `pid` (or, in a child, by the parent: `None`); a child that exits
/// first fails the test with its status.
pub fn await_word(shared: SharedWords, word: usize, value: u64, pid: Option<libc::pid_t>) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shared.get(word) != value {
        if let Some(pid) = pid {
            let mut status = 0;
            // SAFETY: `status` is a valid int to fill; WNOHANG does not
            // block.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                panic!("the child ended (status {status:#x}) before word {word} was {value}");
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "word {word} is not {value}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Become `uid`, with group `gid` and the supplementary `groups` (none:
/// `&[]`): for a child process.
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) {
    // SAFETY: credential calls with a live array of `groups.len()` ids.
    unsafe {
        assert_eq!(libc::setgroups(groups.len(), groups.as_ptr()), 0);
        assert_eq!(libc::setresgid(gid, gid, gid), 0);
        assert_eq!(libc::setresuid(uid, uid, uid), 0);
        // The uid change made the process undumpable, and its /proc files
        // root's: make its fdinfo readable to it again.
        assert_eq!(libc::prctl(libc::PR_SET_DUMPABLE, 1), 0);
    }
}

/// The safe API's error for the errno `errno`.
pub fn err(errno: i32) -> aem::Error {
    aem::Error::Os(aem::Errno(errno))
}

/// The next polled record (`aem::wait`), within 5 s.
pub fn next_record() -> aem::Record {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut recs = aem::wait(1, Some(std::time::Duration::from_millis(100))).unwrap();
        if let Some(rec) = recs.pop() {
            return rec;
        }
        assert!(std::time::Instant::now() < end, "no record within 5 s");
    }
}

/// Whether no polled record comes within 50 ms.
pub fn nothing_pending() -> bool {
    aem::wait(8, Some(std::time::Duration::from_millis(50)))
        .unwrap()
        .is_empty()
}

/// `aem_register` of the raw `attr`, of exactly its size: the new id.
pub fn register_attr(
    attr: &aem_syscalls::uapi::aem_event_attr,
) -> Result<u32, aem_syscalls::Error> {
    // SAFETY: `attr` is a live aem_event_attr of the size passed.
    unsafe {
        aem_syscalls::aem_register(
            attr,
            std::mem::size_of::<aem_syscalls::uapi::aem_event_attr>(),
            0,
        )
    }
}

/// `AEM_CTL_UNREGISTER` of the registration `id`; panics if it fails.
pub fn unregister_id(id: u32) {
    aem_syscalls::aem_ctl(id as i32, aem_syscalls::uapi::AEM_CTL_UNREGISTER, 0)
        .expect("unregister");
}

/// The raw polled records (`aem_wait`, up to 8) pending within `wait`;
/// none if a signal interrupts the wait.
pub fn raw_records(wait: std::time::Duration) -> Vec<aem_syscalls::uapi::aem_record> {
    use aem_syscalls::{Errno, Error};
    // SAFETY: aem_record is plain old data.
    let mut recs: [aem_syscalls::uapi::aem_record; 8] = unsafe { std::mem::zeroed() };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `recs` holds 8 records, `ts` is a live timespec.
    match unsafe { aem_syscalls::aem_wait(recs.as_mut_ptr(), 8, &ts, 0) } {
        Ok(n) => recs[..n as usize].to_vec(),
        Err(Error::Os(Errno::EINTR)) => Vec::new(),
        Err(e) => panic!("aem_wait: {e}"),
    }
}

/// [`in_child_status`] with the child's descriptor `fd` (1 or 2, say)
/// captured: returns its wait status and what it wrote there.
pub fn in_child_output(fd: i32, f: impl FnOnce() -> i32) -> (i32, String) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (r, w) = pipe();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut out);
        out
    });
    let status = in_child_status(|| {
        // SAFETY: `fd` becomes the pipe's write end.
        unsafe { libc::dup2(w.as_raw_fd(), fd) };
        f()
    });
    drop(w);
    (status, reader.join().expect("output reader"))
}

/// [`in_child_output`] of standard error.
pub fn in_child_stderr(f: impl FnOnce() -> i32) -> (i32, String) {
    in_child_output(2, f)
}

/// [`in_child_output`] with a watchdog: a child still running after
/// `limit` (deadlocked, say) is killed with `SIGKILL`, which its status
/// then shows (see [`killed_by_watchdog`]).
pub fn in_child_output_within(
    fd: i32,
    limit: std::time::Duration,
    f: impl FnOnce() -> i32,
) -> (i32, String) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (r, w) = pipe();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut out);
        out
    });
    // SAFETY: as in `in_child_status`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: `fd` becomes the pipe's write end.
        unsafe { libc::dup2(w.as_raw_fd(), fd) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: _exit ends the child without running the parent's
        // destructors.
        unsafe { libc::_exit(code) };
    }
    drop(w);
    let deadline = std::time::Instant::now() + limit;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int to fill.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", io::Error::last_os_error());
        if r == pid {
            break;
        }
        if std::time::Instant::now() >= deadline {
            // SAFETY: our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (status, reader.join().expect("output reader"))
}

/// Whether a wait status is that of a child the watchdog of
/// [`in_child_output_within`] killed.
pub fn killed_by_watchdog(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> std::os::fd::OwnedFd {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    EventFd::from_value_and_flags(0, flags)
        .expect("eventfd")
        .into()
}

/// Write `bytes` to `fd`, asserting it all went.  Allocation-free unless
/// the assertion fails: handlers may call it.
pub fn write_fd(fd: &impl std::os::fd::AsFd, bytes: &[u8]) {
    let r = nix::unistd::write(fd, bytes);
    assert_eq!(r, Ok(bytes.len()), "write");
}

/// One line of `/proc/<pid>/aem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcAemRow {
    /// Registration id.
    pub id: u32,
    /// Source name ("fd", "timer", ...).
    pub source: String,
    /// Priority.
    pub prio: u32,
    /// Flags, comma-separated, or "-".
    pub flags: String,
    /// "enabled", "disabled", or "shed" (load shedding).
    pub state: String,
    /// Activations since registration.
    pub activations: u64,
    /// Deliveries since registration.
    pub deliveries: u64,
    /// Activations not delivered yet.
    pub pending: u64,
}

/// Parse the registrations of `/proc/<pid>/aem` (`pid` "self" for the
/// caller); the comment lines (`#`, the limits) are skipped.
pub fn proc_aem(pid: &str) -> Vec<ProcAemRow> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/aem")).expect("read /proc/pid/aem");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id\tsource\tprio\tflags\tstate\tactivations\tdeliveries\tpending")
    );
    lines
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 8, "bad /proc/pid/aem line: {l:?}");
            ProcAemRow {
                id: f[0].parse().unwrap(),
                source: f[1].to_string(),
                prio: f[2].parse().unwrap(),
                flags: f[3].to_string(),
                state: f[4].to_string(),
                activations: f[5].parse().unwrap(),
                deliveries: f[6].parse().unwrap(),
                pending: f[7].parse().unwrap(),
            }
        })
        .collect()
}

/// The two counts of the `# <what>:` comment line of `/proc/<pid>/aem`
/// (`pid` "self" for the caller): the first and fourth words after the
/// colon.  For `what` "pool", "# pool: N idle threads, M events queued",
/// (idle threads, queued events); for "fork", "# fork: N children
/// started, M refused", (children started, refused).  Panics, showing the
/// file, if it has no such line.
pub fn proc_aem_counts(pid: &str, what: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/aem")).expect("read /proc/pid/aem");
    let prefix = format!("# {what}: ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {what} line in:\n{text}"));
    let words: Vec<&str> = line[prefix.len()..].split_whitespace().collect();
    let count = |i: usize| -> u64 {
        let word = words.get(i).map(|w| w.trim_end_matches(','));
        word.and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("bad {what} line: {line:?}"))
    };
    (count(0), count(3))
}

/// The `/proc/self/aem` row of registration `id`.
pub fn proc_row(id: u32) -> Option<ProcAemRow> {
    proc_aem("self").into_iter().find(|r| r.id == id)
}

/// Register `fd`'s readability (`EPOLLIN`) as a polled AEM event.
pub fn watch_in(
    fd: &impl std::os::fd::AsFd,
    options: aem::Options,
) -> Result<aem::Registration, aem::Error> {
    aem::register(aem::Source::fd(fd.as_fd(), aem::FdEvents::IN), options)
}

/// Add `n` to an eventfd's counter (a readiness wake-up).
pub fn eventfd_add(fd: &impl std::os::fd::AsFd, n: u64) {
    write_fd(fd, &n.to_ne_bytes());
}

/// Let another thread add 1 to the eventfd `efd`, again and again for
/// `duration` (a write every few microseconds, so that the events come
/// one by one and interrupt, or wait for, the calling thread's work
/// anywhere in it), while this one runs `round(1)`, `round(2)`, ... until
/// the adding is done and at least `min_rounds` ran.  Returns the rounds
/// run and the writes made.
pub fn fire_while(
    efd: &impl std::os::fd::AsFd,
    duration: std::time::Duration,
    min_rounds: u64,
    mut round: impl FnMut(u64),
) -> (u64, u64) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    // The thread owns the copy.
    let copy = nix::unistd::dup(efd).expect("dup");
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let firer = std::thread::spawn(move || {
        let end = std::time::Instant::now() + duration;
        let mut writes = 0;
        while std::time::Instant::now() < end {
            eventfd_add(&copy, 1);
            writes += 1;
            if writes % 4 == 0 {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
        d.store(true, SeqCst);
        writes
    });
    let mut i = 0;
    while !done.load(SeqCst) || i < min_rounds {
        i += 1;
        round(i);
    }
    (i, firer.join().expect("eventfd firer"))
}

/// Kill the calling process with `SIGALRM` after `secs` seconds: the
/// watchdog of a child that could deadlock.
pub fn watchdog(secs: u32) {
    // SAFETY: alarm has no memory-safety preconditions; SIGALRM's default
    // action ends the process.
    unsafe { libc::alarm(secs) };
}

/// The memory cgroup the calling process runs in, made for a test:
/// cgroup2 mounted if needed, the memory controller enabled, the process
/// moved into `/sys/fs/cgroup/<name>`.
pub struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    /// Create (or reuse) the group `name` and move the process into it.
    pub fn enter(name: &str) -> MemoryCgroup {
        let root = std::path::Path::new("/sys/fs/cgroup");
        if !root.join("cgroup.controllers").exists() {
            let c = |s: &str| std::ffi::CString::new(s).unwrap();
            // SAFETY: plain mount(2) with valid C strings.
            let rc = unsafe {
                libc::mount(
                    c("cgroup2").as_ptr(),
                    c("/sys/fs/cgroup").as_ptr(),
                    c("cgroup2").as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "mount cgroup2: {}", io::Error::last_os_error());
        }
        std::fs::write(root.join("cgroup.subtree_control"), "+memory")
            .expect("enable the memory controller");
        let dir = root.join(name);
        let _ = std::fs::create_dir(&dir);
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .expect("enter the cgroup");
        MemoryCgroup { dir }
    }

    /// The group's slab bytes (`slab` of `memory.stat`).
    pub fn slab(&self) -> u64 {
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).expect("memory.stat");
        stat.lines()
            .find_map(|l| l.strip_prefix("slab ")?.trim().parse().ok())
            .expect("slab in memory.stat")
    }
}

/// tracefs, mounted on first use, with the aem events enabled and the
/// buffer cleared.
pub fn start_aem_tracing() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from("/sys/kernel/tracing");
    if !dir.join("events").exists() {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        // SAFETY: plain mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                c("tracefs").as_ptr(),
                c("/sys/kernel/tracing").as_ptr(),
                c("tracefs").as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount tracefs: {}", std::io::Error::last_os_error());
    }
    std::fs::write(dir.join("trace"), "").unwrap();
    std::fs::write(dir.join("events/aem/enable"), "1").expect("the aem trace events");
    dir
}

/// Disable the aem trace events and return the trace.
pub fn stop_aem_tracing(dir: &std::path::Path) -> String {
    std::fs::write(dir.join("events/aem/enable"), "0").unwrap();
    std::fs::read_to_string(dir.join("trace")).unwrap()
}

/// Counters shared across `fork()`: an anonymous shared mapping of
/// 64-bit words.  Copies name the same words; the mapping is never
/// unmapped (a test's worth of memory).
#[derive(Clone, Copy, Debug)]
pub struct SharedWords {
    words: *const std::sync::atomic::AtomicU64,
    len: usize,
}

// SAFETY: the words are atomics in a mapping that is never unmapped.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// `len` zeroed words.
    pub fn new(len: usize) -> SharedWords {
        // SAFETY: a fresh anonymous shared mapping; zero-filled.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        SharedWords {
            words: p.cast(),
            len,
        }
    }

    fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < self.len);
        // SAFETY: in bounds of the live mapping.
        unsafe { &*self.words.add(i) }
    }

    /// Word `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.word(i).load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Set word `i`.
    pub fn set(&self, i: usize, v: u64) {
        self.word(i).store(v, std::sync::atomic::Ordering::SeqCst)
    }

    /// Add `n` to word `i`, returning its old value.
    pub fn fetch_add(&self, i: usize, n: u64) -> u64 {
        self.word(i)
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst)
    }
}

/// Set `kernel.aem_boost_max_us` for the life of the guard (restored on
/// drop).
pub struct BoostBudget(String);

impl BoostBudget {
    /// Set the budget to `us` microseconds.
    pub fn set(us: u64) -> BoostBudget {
        let path = "/proc/sys/kernel/aem_boost_max_us";
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, us.to_string()).unwrap();
        BoostBudget(old)
    }
}

impl Drop for BoostBudget {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/aem_boost_max_us", self.0.trim());
    }
}
