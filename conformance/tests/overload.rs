//! SRC-8: overload notification on PSI triggers, system-wide and per
//! cgroup, and SCHED-5's shedding driven by a PSI trigger.
//!
//! The tests create real pressure in the guest: more busy threads than
//! CPUs (CPU "some" pressure), and a cgroup whose tasks allocate past its
//! memory.high (memory pressure: the kernel throttles them).  They use the
//! raw system calls, to check the ABI of `struct aem_overload_source`.
//!
//! The tests share the process's AEM context and sysctls: run with
//! --test-threads=1.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aem_conformance::{in_child, raw_records, register_attr, unregister_id};
use aem_syscalls::uapi;
use aem_syscalls::{Errno, Error};

const SOURCE: u32 = uapi::aem_source_kind::AEM_SOURCE_OVERLOAD;

fn overload_attr(resource: u32, threshold_us: u32, window_us: u32) -> uapi::aem_event_attr {
    // SAFETY: aem_event_attr is plain old data; all zeroes is valid.
    let mut attr: uapi::aem_event_attr = unsafe { std::mem::zeroed() };
    attr.source = SOURCE;
    // SAFETY: writing the union member of this source.
    let o = unsafe { &mut attr.__bindgen_anon_1.overload };
    o.resource = resource;
    o.threshold_us = threshold_us;
    o.window_us = window_us;
    o.cgroup_fd = -1;
    attr
}

/// Wait up to `within` for a record of `id` whose data[0] is `state`.
fn await_state(id: u32, state: u64, within: Duration) -> uapi::aem_record {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < end {
        for rec in raw_records(Duration::from_millis(200)) {
            assert_eq!(rec.id, id);
            if rec.data[0] == state {
                return rec;
            }
            seen.push(rec);
        }
    }
    panic!("no record with state {state} within {within:?}; seen {seen:?}");
}

/// Busy threads, more than the CPUs: CPU pressure while alive.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start(n: usize) -> Hogs {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[test]
fn src_8_cpu_pressure_fires_the_event_and_its_end_clears_it() {
    // "some" CPU stall of 50 ms in a 500 ms window: root may use short
    // windows (CAP_SYS_RESOURCE), as with /proc/pressure/cpu.
    let id = register_attr(&overload_attr(uapi::AEM_OVERLOAD_CPU, 50_000, 500_000)).unwrap();
    // Nothing while the guest is idle.
    let idle = raw_records(Duration::from_millis(700));
    assert!(idle.iter().all(|r| r.data[0] == 0), "{idle:?}");

    let hogs = Hogs::start(cpus() * 3);
    let rec = await_state(id, 1, Duration::from_secs(10));
    assert!(rec.data[1] >= 1, "a firing counted: {rec:?}");
    drop(hogs);
    // Two quiet windows after the last firing, the source says it cleared.
    let rec = await_state(id, 0, Duration::from_secs(10));
    assert_eq!(rec.source, SOURCE);
    unregister_id(id);
}

/// A cgroup v2 hierarchy at /sys/fs/cgroup, mounted if needed.
fn cgroup_root() -> &'static str {
    let root = "/sys/fs/cgroup";
    if !std::path::Path::new(&format!("{root}/cgroup.controllers")).exists() {
        std::fs::create_dir_all(root).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none", root])
            .status()
            .unwrap();
        assert!(status.success(), "mount cgroup2");
    }
    root
}

fn open_dir(path: &str) -> OwnedFd {
    std::fs::File::open(path).expect("open the cgroup").into()
}

#[test]
fn src_8_memory_pressure_in_a_cgroup_fires_its_event() {
    let root = cgroup_root();
    let _ = std::fs::write(format!("{root}/cgroup.subtree_control"), "+memory");
    let dir = format!("{root}/aem-src8");
    let _ = std::fs::create_dir(&dir);
    std::fs::write(format!("{dir}/memory.high"), "4M").unwrap();
    let cg = open_dir(&dir);

    let mut attr = overload_attr(uapi::AEM_OVERLOAD_MEMORY, 20_000, 500_000);
    attr.__bindgen_anon_1.overload.cgroup_fd = cg.as_raw_fd();
    let id = register_attr(&attr).unwrap();

    // A child in the cgroup touches 64 MiB: past memory.high the kernel
    // reclaims and throttles it, and that stall is memory pressure.
    let go = Arc::new(AtomicBool::new(true));
    let procs = format!("{dir}/cgroup.procs");
    // SAFETY: the child only writes its pid, touches memory and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        std::fs::write(&procs, std::process::id().to_string()).unwrap();
        let mut v: Vec<u8> = Vec::new();
        loop {
            v.clear();
            v.resize(64 << 20, 1);
            if !go.load(SeqCst) {
                // SAFETY: leaves the child without the parent's destructors.
                unsafe { libc::_exit(0) };
            }
        }
    }
    let rec = await_state(id, 1, Duration::from_secs(20));
    assert!(rec.data[1] >= 1);
    // SAFETY: kill and reap our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    await_state(id, 0, Duration::from_secs(10));
    unregister_id(id);
    drop(cg);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn src_8_without_cap_sys_resource_windows_are_multiples_of_2_s() {
    let status = in_child(|| {
        // SAFETY: setgid/setuid have no memory-safety preconditions.
        unsafe {
            if libc::setgid(1000) != 0 || libc::setuid(1000) != 0 {
                return 2;
            }
        }
        let short = register_attr(&overload_attr(uapi::AEM_OVERLOAD_CPU, 50_000, 500_000));
        if short != Err(Error::Os(Errno::EINVAL)) {
            eprintln!("a 500 ms window for an unprivileged user: {short:?}");
            return 3;
        }
        match register_attr(&overload_attr(uapi::AEM_OVERLOAD_CPU, 100_000, 2_000_000)) {
            Ok(id) => {
                unregister_id(id);
                0
            }
            Err(e) => {
                eprintln!("a 2 s window for an unprivileged user: {e}");
                4
            }
        }
    });
    assert_eq!(status, 0);
}

#[test]
fn src_8_bad_arguments_get_clear_errnos() {
    let einval = Err(Error::Os(Errno::EINVAL));
    type Breaker = fn(&mut uapi::aem_overload_source);
    let cases: [(&str, Breaker); 8] = [
        ("resource 3", |o| o.resource = 3),
        ("unknown flag", |o| o.flags = 2),
        ("reserved", |o| o.reserved = 1),
        ("threshold 0", |o| o.threshold_us = 0),
        ("threshold above the window", |o| o.threshold_us = 600_000),
        ("window 0", |o| o.window_us = 0),
        ("window above 10 s", |o| {
            o.window_us = 20_000_000;
            o.threshold_us = 1_000;
        }),
        ("cgroup fd -2", |o| o.cgroup_fd = -2),
    ];
    for (what, breaker) in cases {
        let mut attr = overload_attr(uapi::AEM_OVERLOAD_CPU, 50_000, 500_000);
        // SAFETY: the union member of this source.
        breaker(unsafe { &mut attr.__bindgen_anon_1.overload });
        let want = if what == "cgroup fd -2" {
            Err(Error::Os(Errno(libc::EBADF)))
        } else {
            einval
        };
        assert_eq!(register_attr(&attr), want, "{what}");
    }
    let mut attr = overload_attr(uapi::AEM_OVERLOAD_CPU, 50_000, 500_000);
    // SAFETY: the union member of this source.
    unsafe { attr.__bindgen_anon_1.raw[3] = 1 };
    assert_eq!(register_attr(&attr), einval, "unused union bytes");
    // Not a cgroup: a plain directory, and a descriptor that is not open.
    let tmp = open_dir("/tmp");
    for fd in [tmp.as_raw_fd(), 999] {
        let mut attr = overload_attr(uapi::AEM_OVERLOAD_CPU, 50_000, 500_000);
        attr.__bindgen_anon_1.overload.cgroup_fd = fd;
        assert_eq!(
            register_attr(&attr),
            Err(Error::Os(Errno(libc::EBADF))),
            "fd {fd}"
        );
    }
}

const TRIGGER: &str = "/proc/sys/kernel/aem_overload_trigger";
const OVERLOAD: &str = "/proc/sys/kernel/aem_overload";

fn overloaded() -> bool {
    std::fs::read_to_string(OVERLOAD).unwrap().trim() == "1"
}

fn wait_for(what: &str, within: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the trigger and ends overload even when the test fails.
struct TriggerGuard;

impl Drop for TriggerGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(TRIGGER, "\n");
        let _ = std::fs::write(OVERLOAD, "0");
    }
}

#[test]
fn sched_5_a_psi_trigger_sets_and_clears_overload_by_itself() {
    let _guard = TriggerGuard;
    std::fs::write(TRIGGER, "cpu some 50000 500000").unwrap();
    assert_eq!(
        std::fs::read_to_string(TRIGGER).unwrap().trim(),
        "cpu some 50000 500000"
    );
    assert!(!overloaded());

    let hogs = Hogs::start(cpus() * 3);
    wait_for(
        "overload set by the trigger",
        Duration::from_secs(10),
        overloaded,
    );
    drop(hogs);
    wait_for("overload cleared", Duration::from_secs(10), || {
        !overloaded()
    });

    // Removing the trigger leaves the manual switch working.
    std::fs::write(TRIGGER, "\n").unwrap();
    assert_eq!(std::fs::read_to_string(TRIGGER).unwrap().trim(), "");
    std::fs::write(OVERLOAD, "1").unwrap();
    assert!(overloaded());
    std::fs::write(OVERLOAD, "0").unwrap();
}

#[test]
fn sched_5_a_bad_trigger_is_refused_and_keeps_the_old_one() {
    let _guard = TriggerGuard;
    std::fs::write(TRIGGER, "memory some 100000 1000000").unwrap();
    for bad in [
        "cpu",
        "disk some 1 2",
        "cpu most 100000 1000000",
        "cpu some 0 1000000",
        "cpu some 2000000 1000000",
        "cpu some x y",
    ] {
        let err = std::fs::write(TRIGGER, bad).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        assert_eq!(
            std::fs::read_to_string(TRIGGER).unwrap().trim(),
            "memory some 100000 1000000",
            "after {bad:?}"
        );
    }
}
