//! `aem-fuzz`: a seeded, reproducible fuzzer of the six AEM system calls
//! (`aem_query`, `aem_register`, `aem_ctl`, `aem_wait`, `aem_return`,
//! `aem_thread_area`), run in the guest by `make fuzz` (MISSION.md SEC-3),
//! with every event source: descriptors, timers, processes, topics
//! (`AEM_CTL_TOPIC_OPEN`, publications by write()), overload (PSI
//! triggers, system-wide and on cgroups, and kernel.aem_overload_trigger),
//! memory watches (words of the workers' memory, changed and woken with
//! futex calls by threads and children) and the event types of loaded
//! modules (/sys/kernel/aem/types).
//!
//! ```text
//! aem-fuzz [--seed N] [--calls N] [--procs P] [--threads T]
//!          [--unprivileged] [--avoid CLASS,...] [--watchdog SECS]
//!          [--cap N] [--nofile N] [--verbose]
//! aem-fuzz --repro NAME     (a minimal reproducer of a bug found)
//! ```
//!
//! P processes of T threads each make `--calls` AEM system calls between
//! them; each thread's operations come from a generator seeded from
//! (seed, process, thread), so the same command line makes the same
//! sequence of operations.  Forked, exec'd and sacrificial children come
//! and go meanwhile.  The last line is the summary: calls made and, per
//! system call, the histogram of results (ok, EINVAL, ...).  Exit status
//! 0 when every worker finished; 1 when one hung (killed by its watchdog
//! alarm) or died of a signal, or a handler ran nested in another.
//!
//! Input classes that hang or corrupt the current kernel can be left out
//! with `--avoid` (see [`AVOID_NAMES`]); `--avoid known` leaves out every
//! known-bad class.  By default everything runs.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

mod handler;
mod repro;
mod rng;
mod sacrifice;
mod stats;
mod sys;
mod worker;

use stats::{Stats, MAX_WORKERS};
use worker::{Shared, Worker};

/// Avoid: fd watches on epoll sets that hold (directly or nested) an AEM
/// context fd -- with a firing timer, a hard lockup (known bug a).
pub const AVOID_CTX_EPOLL: u32 = 1 << 0;
/// Avoid: writing kernel.aem_overload / aem_shed_below (load shedding;
/// known bug b, list corruption).
pub const AVOID_OVERLOAD: u32 = 1 << 1;
/// Avoid: more registrations than half the RLIMIT_NOFILE (known bug c,
/// registrations pile up past the limit).
pub const AVOID_PILEUP: u32 = 1 << 2;
/// Avoid: forked children running the fuzz loop.
pub const AVOID_FORK: u32 = 1 << 3;
/// Avoid: exec children.
pub const AVOID_EXEC: u32 = 1 << 4;
/// Avoid: sacrificial children (bad handlers, crafted frames, ...).
pub const AVOID_SACRIFICE: u32 = 1 << 5;
/// Avoid: short-lived threads.
pub const AVOID_THREADS: u32 = 1 << 6;
/// Avoid: forks from inside inline handlers.
pub const AVOID_HANDLER_FORK: u32 = 1 << 7;
/// Avoid: fork events that stay pending (level fd watches and topic
/// subscriptions with AEM_EV_FORK) get AEM_EV_DISPATCH, one fork per
/// enable -- a thread with such an event pending forks on every way out
/// of its copy-on-write fault and never runs again (bug d, fixed by
/// kernel patch 0053; `--repro fork-cow-livelock` checks a kernel for it).
/// A thread blocked in a system call with such an event pending forks on
/// each restart of the call, as fast as when it runs (some 350 a second
/// under TCG): a level event whose descriptor stays ready fires after
/// every delivery, and each delivery of a fork event is a fork -- bounded
/// by RLIMIT_NPROC and charged to the user, like a fork loop.
pub const AVOID_FORK_LIVELOCK: u32 = 1 << 8;

/// The per-user topic limit, which root workers change now and then.
const TOPICS_LIMIT: &str = "/proc/sys/user/max_aem_topics";

/// The classes `--avoid` knows, by name.
pub const AVOID_NAMES: &[(&str, u32)] = &[
    ("ctx-epoll-loop", AVOID_CTX_EPOLL),
    ("overload", AVOID_OVERLOAD),
    ("nofile-pileup", AVOID_PILEUP),
    ("fork", AVOID_FORK),
    ("exec", AVOID_EXEC),
    ("sacrifice", AVOID_SACRIFICE),
    ("threads", AVOID_THREADS),
    ("handler-fork", AVOID_HANDLER_FORK),
    ("fork-livelock", AVOID_FORK_LIVELOCK),
    (
        "known",
        AVOID_CTX_EPOLL | AVOID_OVERLOAD | AVOID_PILEUP | AVOID_FORK_LIVELOCK,
    ),
];

/// A run's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The seed every generator derives from.
    pub seed: u64,
    /// AEM system calls to make, over all workers.
    pub calls: u64,
    /// Worker processes.
    pub procs: u32,
    /// Threads per worker process.
    pub threads: u32,
    /// Drop to uid/gid 65534 (after setup) with a low RLIMIT_NOFILE.
    pub unprivileged: bool,
    /// The RLIMIT_NOFILE of unprivileged workers.
    pub nofile: u64,
    /// AVOID_* bits.
    pub avoid: u32,
    /// Seconds without progress after which a worker is killed (a hang).
    pub watchdog: u32,
    /// Most live registrations per process (from the main flows).
    pub cap: usize,
    /// Print per-worker lines.
    pub verbose: bool,
}

impl Config {
    /// Whether class `bit` (AVOID_*) is left out.
    pub fn avoids(&self, bit: u32) -> bool {
        self.avoid & bit != 0
    }
}

const USAGE: &str = "usage: aem-fuzz [--seed N] [--calls N] [--procs P] [--threads T] \
[--unprivileged] [--avoid CLASS,...] [--watchdog SECS] [--cap N] [--nofile N] [--verbose]\n\
classes: ctx-epoll-loop overload nofile-pileup fork exec sacrifice threads handler-fork \
fork-livelock known (= ctx-epoll-loop, overload, nofile-pileup, fork-livelock)";

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        seed: 1,
        calls: 100_000,
        procs: 4,
        threads: 2,
        unprivileged: false,
        nofile: 128,
        avoid: 0,
        watchdog: 120,
        cap: 500,
        verbose: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> Result<String, String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |s: String| -> Result<u64, String> {
            let s = s.replace('_', "");
            if let Some(hex) = s.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).map_err(|e| format!("{s}: {e}"))
            } else {
                s.parse().map_err(|e| format!("{s}: {e}"))
            }
        };
        match a.as_str() {
            "--seed" => cfg.seed = num(val(a)?)?,
            "--calls" => cfg.calls = num(val(a)?)?,
            "--procs" => cfg.procs = num(val(a)?)?.clamp(1, 64) as u32,
            "--threads" => cfg.threads = num(val(a)?)?.clamp(1, 16) as u32,
            "--watchdog" => cfg.watchdog = num(val(a)?)?.clamp(1, 3600) as u32,
            "--cap" => cfg.cap = num(val(a)?)?.clamp(1, 100_000) as usize,
            "--nofile" => cfg.nofile = num(val(a)?)?.clamp(16, 1 << 20),
            "--unprivileged" => cfg.unprivileged = true,
            "--verbose" | "-v" => cfg.verbose = true,
            "--avoid" => {
                for name in val(a)?.split(',').filter(|s| !s.is_empty()) {
                    let bit = AVOID_NAMES
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, b)| *b)
                        .ok_or_else(|| format!("--avoid: unknown class {name}"))?;
                    cfg.avoid |= bit;
                }
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if (cfg.procs * cfg.threads) as usize > MAX_WORKERS {
        return Err(format!("at most {MAX_WORKERS} workers (procs x threads)"));
    }
    Ok(cfg)
}

fn avoid_list(bits: u32) -> String {
    let names: Vec<&str> = AVOID_NAMES
        .iter()
        .filter(|(n, b)| *n != "known" && bits & b != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// cgroup v2 at /sys/fs/cgroup, for the overload registrations on cgroups
/// (as root: mounted when it is not, as the conformance tests do).
fn mount_cgroup2() {
    let root = worker::CGROUP_ROOT;
    if std::path::Path::new(&format!("{root}/cgroup.controllers")).exists() {
        return;
    }
    let _ = std::fs::create_dir_all(root);
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    // SAFETY: plain mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            c("cgroup2").as_ptr(),
            c(root).as_ptr(),
            c("cgroup2").as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!(
            "aem-fuzz: mount cgroup2 on {root}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Remove the cgroups the workers made and left under `dir` (the deepest
/// first; their tasks are gone by now).
fn remove_cgroups(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(worker::CGROUP_PREFIX)
            && e.file_type().map(|t| t.is_dir()).unwrap_or(false)
        {
            remove_cgroups(&e.path());
            if let Err(err) = std::fs::remove_dir(e.path()) {
                eprintln!("aem-fuzz: rmdir {}: {err}", e.path().display());
            }
        }
    }
}

/// Report a worker process whose threads started no operation for
/// `quiet` seconds, once, before its watchdog kills it: each thread's
/// state, wait channel, system call and kernel stack (as root), and the
/// process's registrations -- what a hang report needs, gone after.
fn watch_for_stalls(stats: &stats::Stats, pids: &[(i32, u32)], threads: u32, quiet: u32) {
    let progress = |p: u32| -> u64 {
        (0..threads)
            .map(|t| {
                stats.workers[(p * threads + t) as usize]
                    .op_index
                    .load(Relaxed)
            })
            .sum()
    };
    let mut seen: Vec<(u64, std::time::Instant, bool)> = pids
        .iter()
        .map(|&(_, p)| (progress(p), std::time::Instant::now(), false))
        .collect();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for (i, &(pid, p)) in pids.iter().enumerate() {
            let now = progress(p);
            let (last, since, reported) = &mut seen[i];
            if now != *last {
                (*last, *since, *reported) = (now, std::time::Instant::now(), false);
                continue;
            }
            if *reported || since.elapsed().as_secs() < u64::from(quiet) {
                continue;
            }
            *reported = true;
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            println!("aem-fuzz: process {p} (pid {pid}): no operation for {quiet} s:");
            let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
            for task in tasks.flatten() {
                let dir = task.path();
                let stat = read(dir.join("stat"));
                let state = stat.rsplit(") ").next().unwrap_or("").split(' ').next();
                println!(
                    "aem-fuzz:   task {}: {} wchan {} syscall {}{}",
                    task.file_name().to_string_lossy(),
                    state.unwrap_or("?"),
                    read(dir.join("wchan")),
                    read(dir.join("syscall")).trim(),
                    read(dir.join("stack"))
                        .lines()
                        .map(|l| format!("\n    {l}"))
                        .collect::<String>()
                );
            }
            print!("{}", read(format!("/proc/{pid}/aem").into()));
        }
    }
}

extern "C" fn noop_signal(_: libc::c_int) {}

/// A worker's fatal signal: say where (what the kernel reported), then die
/// of it.  Only raw calls and a stack buffer: it may interrupt anything.
extern "C" fn fatal_signal(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext.
    let (code, addr, rip, rsp) = unsafe {
        let uc = &*(uc as *const libc::ucontext_t);
        (
            (*info).si_code,
            (*info).si_addr() as u64,
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64,
            uc.uc_mcontext.gregs[libc::REG_RSP as usize] as u64,
        )
    };
    let mut line = [0u8; 320];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < line.len() {
                line[n] = b;
                n += 1;
            }
        }
    };
    let hex = |mut v: u64, out: &mut [u8; 18]| {
        out[0] = b'0';
        out[1] = b'x';
        for i in (2..18).rev() {
            out[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
        }
    };
    let mut h = [0u8; 18];
    put(b"aem-fuzz: worker pid ");
    hex(sys::getpid() as u64, &mut h);
    put(&h);
    put(b" tid ");
    hex(sys::gettid() as u64, &mut h);
    put(&h);
    put(b": signal ");
    hex(sig as u64, &mut h);
    put(&h);
    put(b" code ");
    hex(code as u64, &mut h);
    put(&h);
    put(b" addr ");
    hex(addr, &mut h);
    put(&h);
    put(b" rip ");
    hex(rip, &mut h);
    put(&h);
    put(b" rsp ");
    hex(rsp, &mut h);
    put(&h);
    put(b" handler ");
    hex(handler::handler(), &mut h);
    put(&h);
    put(b"\n");
    // SAFETY: a write of a live buffer, then the default action again.
    unsafe {
        sys::raw(
            libc::SYS_write,
            [2, line.as_ptr() as u64, n as u64, 0, 0, 0],
        );
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
        sys::raw(
            libc::SYS_tgkill,
            [
                sys::getpid() as u64,
                sys::gettid() as u64,
                sig as u64,
                0,
                0,
                0,
            ],
        );
    }
}

/// Report the fatal signals of a worker (`on`), or leave them to their
/// default action (children that may die of them).
pub fn report_fatal_signals(on: bool) {
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
        // SAFETY: installing a handler that only writes and re-raises, or
        // the default action.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = if on {
                fatal_signal as *const () as usize
            } else {
                libc::SIG_DFL
            };
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Signal set-up of a worker process: SIGUSR1 (signalfd's) and SIGUSR2
/// (wake-ups) get a no-op handler without SA_RESTART, SIGUSR1 is blocked,
/// SIGPIPE ignored.  SIGALRM keeps its default action: the watchdog.
fn setup_signals() {
    // SAFETY: installing handlers that do nothing, and ignoring SIGPIPE.
    unsafe {
        for sig in [libc::SIGUSR1, libc::SIGUSR2] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Drop privileges: RLIMIT_NOFILE to `nofile`, then uid and gid 65534.
fn drop_privileges(nofile: u64) -> Result<(), String> {
    let rl = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: plain credential and limit calls with live arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0
        {
            return Err(format!(
                "setuid(65534): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// One worker process: `threads` threads, each with its share of calls.
fn worker_process(cfg: Config, p: u32, stats: &'static Stats) -> i32 {
    setup_signals();
    report_fatal_signals(true);
    let mut flags = 0;
    if cfg.avoids(AVOID_CTX_EPOLL) {
        flags |= handler::F_NO_CTX_FD;
    }
    if cfg.avoids(AVOID_HANDLER_FORK) || cfg.avoids(AVOID_FORK) {
        flags |= handler::F_NO_FORK;
    }
    if cfg.avoids(AVOID_EXEC) {
        flags |= handler::F_NO_EXEC;
    }
    handler::FLAGS.store(flags, Relaxed);
    if cfg.unprivileged {
        if let Err(e) = drop_privileges(cfg.nofile) {
            eprintln!("aem-fuzz: process {p}: {e}");
            return 2;
        }
    }
    let sh = Shared {
        cfg,
        mem: sys::Mem::new(),
        fdlock: Mutex::new(()),
    };
    let workers = u64::from(cfg.procs * cfg.threads);
    let share = (cfg.calls / workers).max(1);
    std::thread::scope(|s| {
        for t in 0..cfg.threads {
            let sh = &sh;
            let index = (p * cfg.threads + t) as usize;
            let seed = rng::derive(cfg.seed, index as u64);
            let body = move || {
                let mut w = Worker::new(sh, seed, Some(&stats.workers[index]), None);
                w.run(share);
            };
            if t + 1 == cfg.threads {
                body();
            } else {
                s.spawn(body);
            }
        }
    });
    if handler::nested_count() > 0 {
        eprintln!("aem-fuzz: process {p}: a handler ran inside another (DELIV-5)");
        return 3;
    }
    0
}

/// `--exec-child SEED`: the program an exec child becomes: a short fuzz
/// of its own, one thread, no children, private counters.
fn exec_child_main(seed: u64) -> ! {
    sys::set_stats(Stats::map_shared());
    setup_signals();
    handler::FLAGS.store(handler::F_NO_FORK | handler::F_NO_EXEC, Relaxed);
    sys::alarm(20);
    let cfg = Config {
        seed,
        calls: 100,
        procs: 1,
        threads: 1,
        unprivileged: false,
        nofile: 128,
        avoid: AVOID_FORK | AVOID_EXEC | AVOID_SACRIFICE | AVOID_THREADS | AVOID_CTX_EPOLL,
        watchdog: 20,
        cap: 50,
        verbose: false,
    };
    let sh = Shared {
        cfg,
        mem: sys::Mem::new(),
        fdlock: Mutex::new(()),
    };
    let mut w = Worker::new(&sh, seed, None, None);
    w.run(rng::Rng::new(seed).range(5, 100));
    sys::exit_group(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--exec-child") {
        let seed = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        exec_child_main(seed);
    }
    if args.first().map(String::as_str) == Some("--repro") {
        sys::set_stats(Stats::map_shared());
        std::process::exit(repro::run(args.get(1).map(String::as_str).unwrap_or("")));
    }
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-fuzz: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let stats = Stats::map_shared();
    sys::set_stats(stats);
    handler::EXEC_SEED.store(cfg.seed, Relaxed);

    let mut info = aem_syscalls::aem_features::default();
    // SAFETY: a live aem_features of the size passed.
    if let Err(e) = unsafe { aem_syscalls::aem_query(&mut info, std::mem::size_of_val(&info), 0) } {
        eprintln!("aem-fuzz: {e}");
        std::process::exit(2);
    }
    println!(
        "aem-fuzz: seed={} calls={} procs={} threads={} unprivileged={} avoid={} \
         (abi {}, features {:#x}, sources {:#x})",
        cfg.seed,
        cfg.calls,
        cfg.procs,
        cfg.threads,
        cfg.unprivileged,
        avoid_list(cfg.avoid),
        info.abi_version,
        info.features,
        info.sources
    );
    // The event types of loaded modules, read once, before the workers
    // fork (the sample module's "sample" when ci/fuzz.sh loaded it).
    let types = worker::module_types();
    println!(
        "aem-fuzz: module event types: {}",
        if types.is_empty() {
            "none".to_string()
        } else {
            types
                .iter()
                .map(|(n, t)| format!("{n}={t}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    // Root workers lower user.max_aem_topics at times: put it back after.
    let max_topics = std::fs::read_to_string(TOPICS_LIMIT).ok();
    if !cfg.unprivileged {
        mount_cgroup2();
    }

    // Orphans (children of workers that finished first) come back to us.
    // SAFETY: a prctl without pointers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let start = std::time::Instant::now();
    let mut pids = Vec::new();
    for p in 0..cfg.procs {
        // SAFETY: fork before any thread exists; the child exits through
        // exit_group.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            sys::exit_group(worker_process(cfg, p, stats));
        }
        if pid < 0 {
            eprintln!("aem-fuzz: fork: {}", std::io::Error::last_os_error());
            std::process::exit(2);
        }
        pids.push((pid, p));
    }

    // After the forks: a thread here must not be copied into a worker.
    let stalled = pids.clone();
    let threads = cfg.threads;
    let quiet = cfg.watchdog.saturating_sub(10).max(5);
    std::thread::spawn(move || watch_for_stalls(stats, &stalled, threads, quiet));

    let mut failed = false;
    let mut left = pids.len();
    while left > 0 {
        let mut status = 0;
        // SAFETY: a live int.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            break;
        }
        let Some(&(_, p)) = pids.iter().find(|(q, _)| *q == pid) else {
            continue; // an orphaned grandchild
        };
        left -= 1;
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if !ok || cfg.verbose {
            let how = if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                if sig == libc::SIGALRM {
                    format!("hung: no progress for {} s (watchdog)", cfg.watchdog)
                } else {
                    format!("killed by signal {sig}")
                }
            } else {
                format!("exit {}", libc::WEXITSTATUS(status))
            };
            println!("aem-fuzz: process {p} (pid {pid}): {how}");
            for t in 0..cfg.threads {
                let slot = &stats.workers[(p * cfg.threads + t) as usize];
                println!(
                    "aem-fuzz:   thread {t}: seed {:#x}, op #{} ({})",
                    slot.seed.load(Relaxed),
                    slot.op_index.load(Relaxed),
                    worker::op_name(slot.op_kind.load(Relaxed))
                );
            }
        }
        failed |= !ok;
    }
    // Orphans have watchdogs of their own (a few seconds): wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: a live int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            break;
        }
        if pid == 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    if !cfg.avoids(AVOID_OVERLOAD) && !cfg.unprivileged {
        // The trigger first: removing it ends the overload it declared.
        let _ = std::fs::write(worker::OVERLOAD_TRIGGER, "\n");
        let _ = std::fs::write("/proc/sys/kernel/aem_overload", "0");
        let _ = std::fs::write("/proc/sys/kernel/aem_shed_below", "10");
    }
    if let (Some(max), false) = (max_topics, cfg.unprivileged) {
        let _ = std::fs::write(TOPICS_LIMIT, max);
    }
    if !cfg.unprivileged {
        remove_cgroups(std::path::Path::new(worker::CGROUP_ROOT));
    }
    println!(
        "aem-fuzz: {} in {:.1} s: {}",
        if failed { "FAILED" } else { "done" },
        start.elapsed().as_secs_f64(),
        stats.summary()
    );
    std::process::exit(i32::from(failed));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_command_line() {
        let c = parse_args(&args(
            "--seed 0x10 --calls 1_000 --procs 3 --threads 2 --unprivileged",
        ))
        .unwrap();
        assert_eq!(
            (c.seed, c.calls, c.procs, c.threads, c.unprivileged),
            (16, 1000, 3, 2, true)
        );
        assert_eq!(c.avoid, 0);
        let c = parse_args(&args("--avoid ctx-epoll-loop,overload")).unwrap();
        assert!(c.avoids(AVOID_CTX_EPOLL) && c.avoids(AVOID_OVERLOAD) && !c.avoids(AVOID_PILEUP));
        let c = parse_args(&args("--avoid known")).unwrap();
        assert_eq!(
            avoid_list(c.avoid),
            "ctx-epoll-loop,overload,nofile-pileup,fork-livelock"
        );
        assert!(parse_args(&args("--avoid nonsense")).is_err());
        assert!(parse_args(&args("--bogus")).is_err());
    }

    #[test]
    fn worker_seeds_reproduce() {
        // The per-thread generators of a run depend on the seed alone.
        let a: Vec<u64> = (0..8)
            .map(|i| rng::Rng::new(rng::derive(5, i)).next_u64())
            .collect();
        let b: Vec<u64> = (0..8)
            .map(|i| rng::Rng::new(rng::derive(5, i)).next_u64())
            .collect();
        assert_eq!(a, b);
    }
}
