//! A fuzzing thread: a loop of random operations -- the six AEM system
//! calls with random and hostile arguments, and what gives them something
//! to act on: file descriptors of every kind, readiness, epoll sets
//! (nested, holding AEM context fds), topics (opened and created under a
//! few names shared by every worker, published to, subscribed to), the
//! event types of loaded modules, words to watch (a shared page, heap
//! words, pages mapped, unmapped and protected under the watches) and
//! the futex wakes that tell their changes, from threads and children,
//! PSI triggers on the system and on cgroups (made, opened, removed under
//! the registrations), closes and dup2()s under registrations, forks,
//! execs, short-lived threads, sacrificial children that die of crafted
//! frames, resource limits, the overload switch and its PSI trigger.
//!
//! Every choice comes from the thread's [`Rng`], so a seed reproduces the
//! sequence of operations (what the kernel answers may still differ with
//! timing).

use std::ffi::CString;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use aem_syscalls::uapi;

use crate::handler::{self, MAX_ID};
use crate::rng::{derive, Rng};
use crate::stats::{Counter, WorkerSlot};
use crate::sys::{self, aem, ctl, Mem};
use crate::Config;

/// The operations of the main flow, with their weights and names (the
/// name of the current one is reported when a worker hangs or dies).
const OPS: &[(&str, u32)] = &[
    ("query", 30),
    ("register", 300),
    ("ctl", 150),
    ("wait", 100),
    ("return", 20),
    ("thread_area", 40),
    ("fd_new", 120),
    ("fd_close", 40),
    ("fd_dup2", 30),
    ("fd_poke", 90),
    ("fd_drain", 40),
    ("epoll_add", 50),
    ("ctx_fd", 20),
    ("fork", 3),
    ("exec", 2),
    ("sacrifice", 3),
    ("thread", 3),
    ("overload", 4),
    ("proc_read", 10),
    ("block_word", 25),
    ("sleep", 25),
    ("unregister", 60),
    ("rlimit", 3),
    ("keepalive", 8),
    ("ctx_epoll", 4),
    ("topic_open", 30),
    ("topic_publish", 45),
    ("futex_poke", 40),
    ("watch_mem", 12),
    ("cgroup", 5),
    ("overload_trigger", 3),
];

/// The name of operation `i`, for reports.
pub fn op_name(i: u64) -> &'static str {
    OPS.get(i as usize).map(|o| o.0).unwrap_or("?")
}

/// What a pool descriptor was when the worker made it (it may since have
/// been closed or replaced by another thread: the kernel decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipe,
    Eventfd,
    Timerfd,
    Signalfd,
    Epoll,
    TcpListen,
    Tcp,
    Udp,
    Unix,
    UnixListen,
    Proc,
    File,
    Dev,
    Ctx,
    /// An AEM topic (AEM_CTL_TOPIC_OPEN), readable, writable or both.
    Topic,
    /// A cgroup v2 directory (for overload registrations), or, now and
    /// then, another directory or a file that is not one.
    Cgroup,
    Other,
}

/// What the fuzzer remembers of a registration of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    /// Nothing in particular.
    Plain,
    /// An inline periodic timer (kept slow and few).
    PeriodicInline,
    /// An overload registration: a PSI trigger (kept few).
    Overload,
    /// A root one whose window is not a multiple of 2 s, which PSI's
    /// real-time poller polls every tenth of its window (kept fewer).
    ShortOverload,
}

impl Reg {
    fn is_overload(self) -> bool {
        matches!(self, Reg::Overload | Reg::ShortOverload)
    }
}

/// Live overload registrations per worker thread: each is a PSI trigger,
/// which a root one has PSI's real-time poller (a kthread per cgroup, or
/// the system's) poll.  Beyond that, a new one now and then replaces the
/// oldest; else it is not made.
const MAX_OVERLOADS: usize = 3;
/// Of those, the root ones whose window is not a multiple of 2 s (polled
/// every tenth of the window); beyond that, a new one gets a longer
/// window.
const MAX_SHORT_OVERLOADS: usize = 1;
/// Words of each worker's heap words (malloc'd memory to watch).
const HEAP_WORDS: usize = 64;
/// Regions a worker maps to watch words of, at most.
const MAX_MAPS: usize = 4;
/// Watched words a worker remembers, to wake them.
const MAX_WATCHED: usize = 32;
/// Cgroups a worker made and keeps, at most (then it removes one).
const MAX_CGROUPS: usize = 4;
/// Where cgroup v2 is (mounted by the run's parent when it is not).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The prefix of the cgroups the fuzzer makes (removed after the run).
pub const CGROUP_PREFIX: &str = "aem-fuzz.";
/// The load-shedding PSI trigger, which root workers set now and then.
pub const OVERLOAD_TRIGGER: &str = "/proc/sys/kernel/aem_overload_trigger";
/// futex_wake(2) (Linux 6.7), not in the libc crate yet.
const SYS_FUTEX_WAKE: i64 = 454;
/// futex2 flags: a 32-bit word, a private futex.
const FUTEX2_SIZE_U32: u64 = 0x02;
const FUTEX2_PRIVATE: u64 = 128;

/// A region a worker mapped to watch words of.
#[derive(Debug, Clone, Copy)]
struct WatchMap {
    addr: u64,
    len: u64,
    /// Mapped PROT_READ | PROT_WRITE now (the worker may store to it).
    writable: bool,
    /// MAP_SHARED (children forked later share it).
    shared: bool,
}

/// Whether an overload window (us) is one PSI takes from root only, and
/// polls in real time: valid, and not a multiple of 2 s.
fn is_short_window(window: u64) -> bool {
    window != 0 && window <= 10_000_000 && window % 2_000_000 != 0
}

/// Topic names every worker uses, so that threads and processes meet on
/// the same topics: created by one, opened, published to and subscribed
/// to by others, freed when the last descriptor or subscription goes and
/// created again.  "kernel.aem_sample" is the sample module's topic (when
/// it is loaded: only root may publish to it), "kernel.fuzz" a name user
/// space may not create (EPERM).
const TOPIC_NAMES: &[&str] = &[
    "fuzz.a",
    "fuzz.b",
    "fuzz.c",
    "fuzz.d",
    "fuzz",
    "f",
    "kernel.aem_sample",
    "kernel.fuzz",
];

/// Where a topic_open op puts its struct aem_topic_open in the own pages:
/// past the thread area words (own + 0 .. 32, which the kernel writes),
/// with room for a page of zeros after it.
const TOPIC_OPEN_AT: u64 = 64;
/// Where it puts the topic's name.
const TOPIC_NAME_AT: u64 = 8192;
// The own pages hold the struct, a page of zeros after it, and a name of
// up to 300 bytes with its NUL, before aem_wait()'s timeout.
const _: () = assert!(TOPIC_OPEN_AT + 24 + 4096 <= TOPIC_NAME_AT);
const _: () = assert!(TOPIC_NAME_AT + 301 <= sys::OWN as u64 - 64);

/// The event types of loaded modules and drivers, as (name, number), from
/// /sys/kernel/aem/types/<name>/type: read once, at the first call (the
/// run's start, before the workers fork).
pub fn module_types() -> &'static [(String, u32)] {
    static TYPES: OnceLock<Vec<(String, u32)>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut types = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/sys/kernel/aem/types") {
            for e in dir.flatten() {
                let num = std::fs::read_to_string(e.path().join("type"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                if let Some(n) = num {
                    types.push((e.file_name().to_string_lossy().into_owned(), n));
                }
            }
        }
        types.sort();
        types
    })
}

/// Per-process state shared by the worker threads.
#[derive(Debug)]
pub struct Shared {
    /// The run's configuration.
    pub cfg: Config,
    /// The memory handed to the kernel.
    pub mem: Mem,
    /// With the ctx-epoll-loop class avoided: held while an fd number may
    /// become an AEM context fd (context fds, dup2) and while a check and
    /// an epoll_ctl(ADD) go together.
    pub fdlock: Mutex<()>,
}

/// The per-thread part of the fuzzer.
pub struct Worker<'a> {
    sh: &'a Shared,
    rng: Rng,
    seed: u64,
    own: u64,
    ids: Vec<(u32, Reg)>,
    fds: Vec<(i32, Kind)>,
    /// Words of this thread's heap to watch (given back to malloc, for
    /// new ones, now and then: the watches stay on freed memory).
    heap: Vec<AtomicU32>,
    /// Regions mapped to watch words of.
    maps: Vec<WatchMap>,
    /// Words with watches (registered by this thread): (address, shared).
    watched: Vec<(u64, bool)>,
    /// Cgroups this worker made (paths).
    cgroups: Vec<String>,
    ports: Vec<u16>,
    unix_names: Vec<Vec<u8>>,
    block_depth: u32,
    slot: Option<&'static WorkerSlot>,
    /// A forked child (one thread; locks may be held by threads that are
    /// not there): no locks, no forks, no threads.
    child: bool,
    wake_timer: Option<libc::timer_t>,
    serial: u64,
    cap: usize,
}

const EPOLL_BITS: [u32; 12] = [
    libc::EPOLLIN as u32,
    libc::EPOLLOUT as u32,
    libc::EPOLLPRI as u32,
    libc::EPOLLERR as u32,
    libc::EPOLLHUP as u32,
    libc::EPOLLRDHUP as u32,
    libc::EPOLLRDNORM as u32,
    libc::EPOLLWRNORM as u32,
    libc::EPOLLET as u32,
    libc::EPOLLONESHOT as u32,
    libc::EPOLLEXCLUSIVE as u32,
    libc::EPOLLWAKEUP as u32,
];

/// Ignore a libc return value on purpose: failures are part of fuzzing.
fn ign<T>(_: T) {}

impl<'a> Worker<'a> {
    /// A worker of `sh` with `seed`; `slot` reports its progress; `child`
    /// for a forked child's single thread.
    pub fn new(
        sh: &'a Shared,
        seed: u64,
        slot: Option<&'static WorkerSlot>,
        own: Option<u64>,
    ) -> Worker<'a> {
        let own = own.unwrap_or_else(sys::own_pages);
        handler::thread_init(seed, own);
        handler::WORDS.store(sh.mem.words, Relaxed);
        if let Some(s) = slot {
            s.seed.store(seed, Relaxed);
            s.pid.store(sys::getpid() as u64, Relaxed);
        }
        let threads = sh.cfg.threads.max(1) as usize;
        let mut cap = sh.cfg.cap / threads;
        if sh.cfg.avoids(crate::AVOID_PILEUP) {
            cap = cap.min(nofile_soft() as usize / 2 / threads);
        }
        Worker {
            sh,
            rng: Rng::new(seed),
            seed,
            own,
            ids: Vec::new(),
            fds: Vec::new(),
            heap: (0..HEAP_WORDS).map(|_| AtomicU32::new(0)).collect(),
            maps: Vec::new(),
            watched: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
            unix_names: Vec::new(),
            block_depth: 0,
            slot,
            child: false,
            wake_timer: None,
            serial: 0,
            cap: cap.max(4),
        }
    }

    /// Run until the thread has made `calls` AEM system calls (its
    /// handlers' included), then clean up, or not, at random.
    pub fn run(&mut self, calls: u64) {
        if self.wake_timer.is_none() {
            self.setup_thread();
        }
        let weights: Vec<u32> = OPS.iter().map(|o| o.1).collect();
        let start = sys::thread_calls();
        let mut i = 0u64;
        while sys::thread_calls() - start < calls {
            if handler::FORKED_CHILD.load(Relaxed) {
                sys::exit_group(0);
            }
            if handler::main_progress() {
                restore_mask();
            }
            if i % 32 == 0 && !self.child {
                sys::alarm(self.sh.cfg.watchdog);
            }
            if i % 16 == 0 {
                self.reap();
            }
            let op = self.rng.weighted(&weights);
            if let Some(s) = self.slot {
                s.op_index.store(i, Relaxed);
                s.op_kind.store(op as u64, Relaxed);
            }
            sys::stats().add(Counter::Ops, 1);
            self.op(op);
            i += 1;
        }
        while self.block_depth > 0 {
            ctl(0, u64::from(uapi::AEM_CTL_UNBLOCK), 0);
            self.block_depth -= 1;
        }
        if self.rng.chance(1, 2) {
            for (id, _) in std::mem::take(&mut self.ids) {
                ctl(u64::from(id), u64::from(uapi::AEM_CTL_UNREGISTER), 0);
            }
        }
        if self.rng.chance(1, 2) {
            for (fd, _) in std::mem::take(&mut self.fds) {
                sys::close(fd);
            }
        }
        if self.rng.chance(1, 2) {
            // Under the watches left behind, or not.
            for m in std::mem::take(&mut self.maps) {
                // SAFETY: a region this thread mapped for watch words.
                ign(unsafe { libc::munmap(m.addr as *mut _, m.len as usize) });
            }
        }
        if let Some(t) = self.wake_timer.take() {
            // SAFETY: our own timer, created in setup_thread().
            ign(unsafe { libc::timer_delete(t) });
        }
        self.reap();
    }

    fn setup_thread(&mut self) {
        // The wake-up of aem_wait(KEEPALIVE) and of waits for ever:
        // SIGUSR2 to this thread.
        // SAFETY: an all-zero sigevent is valid; the fields are set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGUSR2;
        sev.sigev_notify_thread_id = sys::gettid();
        let mut t: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `t` are live.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut t) } == 0 {
            self.wake_timer = Some(t);
        }
        // An alternate signal stack for AEM_EV_ONSTACK handlers, kept for
        // the thread's life (long-lived threads only: it is never freed).
        if self.slot.is_some() && self.rng.chance(3, 4) {
            let stack = sys::map(64 << 10, libc::PROT_READ | libc::PROT_WRITE);
            let ss = libc::stack_t {
                ss_sp: stack.cast(),
                ss_flags: 0,
                ss_size: 64 << 10,
            };
            // SAFETY: a fresh mapping the thread never unmaps.
            ign(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) });
        }
    }

    /// Arm this thread's wake-up timer: SIGUSR2 in `ns` nanoseconds, then
    /// every `ns` (0: disarm).  Periodic, because one signal may be
    /// consumed without ending the wait: when it arrives while an inline
    /// handler interrupted aem_wait(KEEPALIVE), the sleep restarts after
    /// the handler.
    fn arm_wake(&mut self, ns: u64) -> bool {
        let Some(t) = self.wake_timer else {
            return false;
        };
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        let its = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: our own timer and a live itimerspec.
        unsafe { libc::timer_settime(t, 0, &its, std::ptr::null_mut()) == 0 }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'a, ()>> {
        if self.child || !self.sh.cfg.avoids(crate::AVOID_CTX_EPOLL) {
            return None;
        }
        Some(self.sh.fdlock.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn op(&mut self, op: usize) {
        match OPS[op].0 {
            "query" => self.query(),
            "register" => self.register(),
            "ctl" => self.ctl(),
            "wait" => self.wait(),
            "return" => self.aem_return(),
            "thread_area" => self.thread_area(),
            "fd_new" => self.fd_new(),
            "fd_close" => self.fd_close(),
            "fd_dup2" => self.fd_dup2(),
            "fd_poke" => self.fd_poke(),
            "fd_drain" => {
                if let Some(fd) = self.pool_fd() {
                    handler::drain(fd);
                }
            }
            "epoll_add" => self.epoll_add(),
            "ctx_fd" => self.ctx_fd(),
            "fork" => self.fork(),
            "exec" => self.exec(),
            "sacrifice" => self.sacrifice(),
            "thread" => self.thread(),
            "overload" => self.overload(),
            "proc_read" => self.proc_read(),
            "block_word" => self.block_word(),
            "sleep" => self.sleep(),
            "unregister" => self.unregister_some(),
            "rlimit" => self.rlimit(),
            "keepalive" => self.keepalive(),
            "ctx_epoll" => self.ctx_epoll(),
            "topic_open" => self.topic_open(),
            "topic_publish" => self.topic_publish(),
            "futex_poke" => self.futex_poke(),
            "watch_mem" => self.watch_mem(),
            "cgroup" => self.cgroup(),
            "overload_trigger" => self.overload_trigger(),
            other => unreachable!("op {other}"),
        }
    }

    // ---- AEM calls ----

    fn query(&mut self) {
        let size = match self.rng.below(6) {
            0 => 24,
            1 => self.rng.below(24),
            2 => self.rng.range(25, 4096),
            3 => self.rng.range(4097, 8192),
            4 => self.rng.interesting_u64(),
            _ => 32,
        };
        let ptr = self
            .sh
            .mem
            .write_ptr(&mut self.rng, self.own, size.min(8192));
        let flags = if self.rng.chance(1, 8) {
            self.rng.interesting_u64()
        } else {
            0
        };
        // SAFETY: a Mem pointer (see its invariant).
        unsafe { aem(sys::QUERY, [ptr, size, flags, 0, 0, 0]) };
    }

    /// A descriptor for a registration: mostly from the pool, sometimes
    /// closed, invalid or one of 0, 1, 2.
    fn any_fd(&mut self) -> i32 {
        match self.rng.weighted(&[85, 5, 4, 3, 3]) {
            0 => self.pool_fd().unwrap_or(-1),
            1 => self.rng.below(1024) as i32,
            2 => -(self.rng.below(3) as i32) - 1,
            3 => self.rng.below(3) as i32,
            _ => self.rng.next_u32() as i32,
        }
    }

    fn pool_fd(&mut self) -> Option<i32> {
        if self.fds.is_empty() {
            None
        } else {
            Some(self.fds[self.rng.below(self.fds.len() as u64) as usize].0)
        }
    }

    fn pool_fd_of(&mut self, kinds: &[Kind]) -> Option<i32> {
        let matching: Vec<i32> = self
            .fds
            .iter()
            .filter(|(_, k)| kinds.contains(k))
            .map(|(fd, _)| *fd)
            .collect();
        if matching.is_empty() {
            None
        } else {
            Some(self.rng.pick(&matching))
        }
    }

    fn epoll_events(&mut self) -> u32 {
        if self.rng.chance(1, 10) {
            return self.rng.next_u32();
        }
        let mut ev = 0;
        for _ in 0..self.rng.range(1, 4) {
            ev |= self.rng.pick(&EPOLL_BITS);
        }
        ev
    }

    fn register(&mut self) {
        if self.ids.len() >= self.cap {
            self.unregister_some();
            return;
        }
        let r = &mut self.rng;
        let mut a = [0u64; 11];
        let source = match r.weighted(&[25, 10, 12, 10, 30, 8, 16, 7, 5, 14, 3, 2, 3]) {
            0 => uapi::aem_source_kind::AEM_SOURCE_FD,
            1 => uapi::aem_source_kind::AEM_SOURCE_ACCEPT,
            2 => uapi::aem_source_kind::AEM_SOURCE_READ,
            3 => uapi::aem_source_kind::AEM_SOURCE_SOCKET_STATE,
            4 => uapi::aem_source_kind::AEM_SOURCE_TIMER,
            5 => uapi::aem_source_kind::AEM_SOURCE_PROCESS_EXIT,
            6 => uapi::aem_source_kind::AEM_SOURCE_TOPIC,
            7 => uapi::aem_source_kind::AEM_SOURCE_MODULE,
            8 => uapi::aem_source_kind::AEM_SOURCE_OVERLOAD,
            9 => uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH,
            10 => 0,
            // The first numbers past the last kind.
            11 => r.range(11, 13) as u32,
            _ => r.next_u32(),
        };
        let mut flags = 0u32;
        if r.chance(3, 5) {
            // Up to AEM_EV_NOCLDWAIT (bit 8).
            for bit in 0..9 {
                if r.chance(1, 5) {
                    flags |= 1 << bit;
                }
            }
            // Mostly self-reaping fork children: zombies would pile up in
            // workers that never wait.
            if flags & uapi::AEM_EV_FORK != 0 && r.chance(3, 4) {
                flags |= uapi::AEM_EV_NOCLDWAIT;
            }
        }
        if r.chance(1, 30) {
            flags |= 1 << r.range(9, 31);
        }
        let prio = match r.below(10) {
            0..=5 => r.below(50) as u32,
            6..=8 => r.range(50, 99) as u32,
            _ => r.interesting_u64() as u32,
        };
        let inline = match r.weighted(&[45, 45, 4, 3, 3]) {
            0 => {
                a[2] = handler::handler();
                a[3] = handler::restorer();
                true
            }
            1 => false,
            2 => {
                a[2] = handler::handler();
                false
            }
            3 => {
                a[3] = handler::restorer();
                false
            }
            _ => {
                // Beyond the user address space, whether the guest pages
                // with four levels or five: refused.
                a[2] = if r.chance(1, 2) {
                    (1 << 56) + r.below(1 << 20)
                } else {
                    0xffff_8000_0000_0000 + r.below(1 << 40)
                };
                a[3] = handler::restorer();
                false
            }
        };
        if !inline && r.chance(9, 10) {
            // ONSTACK, NOBOOST, POOL and FORK are for inline handlers.
            flags &= !(uapi::AEM_EV_ONSTACK
                | uapi::AEM_EV_NOBOOST
                | uapi::AEM_EV_POOL
                | uapi::AEM_EV_FORK
                | uapi::AEM_EV_NOCLDWAIT);
        }
        a[0] = u64::from(source) | (u64::from(flags) << 32);
        a[1] = u64::from(prio)
            | if r.chance(1, 40) {
                u64::from(r.next_u32()) << 32
            } else {
                0
            };
        a[4] = r.next_u64();
        let mut reg = Reg::Plain;
        match source {
            uapi::aem_source_kind::AEM_SOURCE_FD => {
                let fd = self.any_fd();
                let ev = self.epoll_events();
                a[5] = u64::from(fd as u32) | (u64::from(ev) << 32);
            }
            uapi::aem_source_kind::AEM_SOURCE_ACCEPT => {
                let fd = if self.rng.chance(3, 4) {
                    self.pool_fd_of(&[Kind::TcpListen, Kind::UnixListen])
                        .unwrap_or(-1)
                } else {
                    self.any_fd()
                };
                let fl = if self.rng.chance(1, 10) {
                    self.rng.next_u32()
                } else {
                    self.rng.below(4) as u32
                };
                a[5] = u64::from(fd as u32) | (u64::from(fl) << 32);
            }
            uapi::aem_source_kind::AEM_SOURCE_READ => {
                let fd = self.any_fd();
                let len = match self.rng.below(8) {
                    0 => 0,
                    1 => 1,
                    2 => u64::from(uapi::AEM_READ_MAX_LEN),
                    3 => u64::from(uapi::AEM_READ_MAX_LEN) + 1,
                    4 => self.rng.next_u32().into(),
                    5 => self.rng.range(4096, 200_000),
                    _ => self.rng.range(1, 4096),
                };
                a[5] = u64::from(fd as u32) | (len << 32);
                a[6] = self
                    .sh
                    .mem
                    .write_ptr(&mut self.rng, self.own, len.min(1 << 20));
            }
            uapi::aem_source_kind::AEM_SOURCE_SOCKET_STATE => {
                let fd = if self.rng.chance(3, 4) {
                    self.pool_fd_of(&[Kind::Tcp, Kind::TcpListen]).unwrap_or(-1)
                } else {
                    self.any_fd()
                };
                let fl = if self.rng.chance(1, 8) {
                    self.rng.next_u32()
                } else {
                    0
                };
                a[5] = u64::from(fd as u32) | (u64::from(fl) << 32);
            }
            uapi::aem_source_kind::AEM_SOURCE_TIMER => {
                let r = &mut self.rng;
                let clock = match r.below(10) {
                    0..=4 => libc::CLOCK_MONOTONIC as u32,
                    5 | 6 => libc::CLOCK_REALTIME as u32,
                    7 | 8 => libc::CLOCK_BOOTTIME as u32,
                    _ => r.below(16) as u32,
                };
                let abs = r.chance(1, 6);
                let tflags = if r.chance(1, 20) {
                    r.next_u32()
                } else {
                    u32::from(abs)
                };
                let mut value = match r.below(10) {
                    0 => 0,
                    1 => 1,
                    2 => r.interesting_u64(),
                    3 => r.range(1, 1000),
                    _ => r.range(100_000, 10_000_000),
                };
                if abs && r.chance(3, 4) {
                    value = sys::now_ns(clock as i32).wrapping_add(value % 20_000_000);
                }
                let mut interval = match r.below(10) {
                    0..=4 => 0,
                    5 => r.range(1, 999),
                    6 => r.interesting_u64(),
                    7 => r.range(1000, 100_000),
                    _ => r.range(1_000_000, 20_000_000),
                };
                if inline && interval != 0 {
                    // A fast periodic inline timer keeps its thread in
                    // handlers (the storm breaker ends it, slowly): keep
                    // them slow and few.
                    let periodic = self
                        .ids
                        .iter()
                        .filter(|(_, p)| *p == Reg::PeriodicInline)
                        .count();
                    if periodic >= 6 {
                        interval = 0;
                    } else {
                        interval = interval.max(1_000_000);
                        reg = Reg::PeriodicInline;
                    }
                }
                a[5] = u64::from(clock) | (u64::from(tflags) << 32);
                a[6] = value;
                a[7] = interval;
            }
            uapi::aem_source_kind::AEM_SOURCE_PROCESS_EXIT => {
                let (pidfd, pid) = self.process_target();
                let (fl, reserved) = if self.rng.chance(1, 10) {
                    (self.rng.next_u32(), self.rng.next_u32())
                } else {
                    (0, 0)
                };
                a[5] = u64::from(pidfd as u32) | (u64::from(pid as u32) << 32);
                a[6] = u64::from(fl) | (u64::from(reserved) << 32);
            }
            uapi::aem_source_kind::AEM_SOURCE_TOPIC => {
                // A topic of the pool (one is opened when there is none),
                // which may have been opened write-only (EBADF); or any
                // descriptor (EINVAL: not a topic).
                if self.pool_fd_of(&[Kind::Topic]).is_none() && self.rng.chance(1, 2) {
                    self.topic_open();
                }
                let fd = if self.rng.chance(4, 5) {
                    self.pool_fd_of(&[Kind::Topic]).unwrap_or(-1)
                } else {
                    self.any_fd()
                };
                let fl = if self.rng.chance(1, 10) {
                    self.rng.next_u32()
                } else {
                    0
                };
                a[5] = u64::from(fd as u32) | (u64::from(fl) << 32);
            }
            uapi::aem_source_kind::AEM_SOURCE_MODULE => {
                let types = module_types();
                let ty = match self.rng.weighted(&[80, 8, 4, 4, 4]) {
                    0 if !types.is_empty() => types[self.rng.below(types.len() as u64) as usize].1,
                    0 | 1 => self.rng.range(1, 16) as u32,
                    2 => 0,
                    3 => self.rng.next_u32(),
                    _ => self.rng.interesting_u64() as u32,
                };
                let fl = if self.rng.chance(1, 10) {
                    self.rng.next_u32()
                } else {
                    0
                };
                a[5] = u64::from(ty) | (u64::from(fl) << 32);
            }
            uapi::aem_source_kind::AEM_SOURCE_OVERLOAD => {
                let o = self.overload_args();
                a[5..8].copy_from_slice(&o);
            }
            uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH => {
                let (addr, shared) = self.watch_addr();
                let r = &mut self.rng;
                let fl = match r.weighted(&[88, 6, 6]) {
                    0 => {
                        // Mostly the key the word's writers wake.
                        if r.chance(if shared { 3 } else { 1 }, 4) {
                            uapi::AEM_WATCH_SHARED
                        } else {
                            0
                        }
                    }
                    1 => r.next_u32(),
                    _ => 1 << r.below(32),
                };
                let reserved = if r.chance(1, 25) { r.next_u32() | 1 } else { 0 };
                a[5] = addr;
                a[6] = u64::from(fl) | (u64::from(reserved) << 32);
            }
            _ => {
                for w in a.iter_mut().skip(5) {
                    if self.rng.chance(1, 3) {
                        *w = self.rng.interesting_u64();
                    }
                }
            }
        }
        // Junk in the unused part of the union (refused).
        if self.rng.chance(1, 30) {
            let at = self.rng.range(5, 10) as usize;
            a[at] = self.rng.interesting_u64();
        }
        // Half the registrations are made sane -- every field valid, the
        // source's arguments aside -- so that events exist and fire; the
        // other half keep their hostile fields.
        let sane = self.rng.chance(1, 2);
        if sane {
            sanitize(&mut a);
        }
        pace_fork_timer(&mut a);
        if self.sh.cfg.avoids(crate::AVOID_FORK_LIVELOCK) {
            dispatch_pending_forks(&mut a);
        }
        if (a[0] & 0xffff_ffff) as u32 == uapi::aem_source_kind::AEM_SOURCE_OVERLOAD {
            match self.bound_overloads(&mut a) {
                Some(r) => reg = r,
                None => return,
            }
        }
        let size: u64 = match self.rng.weighted(&[85, 3, 4, 4, 2, 2]) {
            _ if sane => 88,
            0 => 88,
            1 => self.rng.below(88),
            2 => self.rng.range(89, 4096),
            3 => 4096,
            4 => 4097,
            _ => self.rng.interesting_u64(),
        };
        // The attributes go to the own pages, with zeros after them (or,
        // sometimes, one non-zero byte: E2BIG).
        let own = self.own;
        let fill = size.clamp(88, sys::OWN as u64 - 8) as usize;
        // SAFETY: the own pages are ours, OWN bytes; nothing holds a
        // reference into them.
        unsafe {
            std::ptr::write_bytes(own as *mut u8, 0, fill);
            std::ptr::copy_nonoverlapping(a.as_ptr().cast::<u8>(), own as *mut u8, 88);
            if size > 88 && size < fill as u64 + 1 && self.rng.chance(1, 10) {
                let at = self.rng.range(88, size - 1);
                *((own + at) as *mut u8) = 1;
            }
        }
        let ptr = self.sh.mem.read_ptr(&mut self.rng, own);
        let rflags = if !sane && self.rng.chance(1, 20) {
            self.rng.interesting_u64()
        } else {
            0
        };
        // SAFETY: a Mem pointer; the kernel only reads it.
        let id = unsafe { aem(sys::REGISTER, [ptr, size, rflags, 0, 0, 0]) };
        if id > 0 {
            MAX_ID.fetch_max(id as u32, Relaxed);
            self.ids.push((id as u32, reg));
            match (a[0] & 0xffff_ffff) as u32 {
                uapi::aem_source_kind::AEM_SOURCE_OVERLOAD => {
                    sys::stats().add(Counter::OverloadRegs, 1)
                }
                uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH => {
                    sys::stats().add(Counter::Watches, 1);
                    let shared = a[6] & u64::from(uapi::AEM_WATCH_SHARED) != 0;
                    self.remember_watched(a[5], shared);
                    if self.rng.chance(1, 3) {
                        // A change at once, for a delivery (registrations
                        // do not live long here).
                        self.poke(a[5], shared);
                    }
                }
                _ => {}
            }
        }
    }

    fn some_id(&mut self) -> u64 {
        match self.rng.weighted(&[80, 8, 4, 4, 4]) {
            0 if !self.ids.is_empty() => {
                u64::from(self.ids[self.rng.below(self.ids.len() as u64) as usize].0)
            }
            1 | 0 => self.rng.below(u64::from(MAX_ID.load(Relaxed)) + 3),
            2 => 0,
            3 => (-(self.rng.below(3) as i64) - 1) as u64,
            _ => self.rng.interesting_u64(),
        }
    }

    fn ctl(&mut self) {
        let op = match self.rng.weighted(&[20, 20, 20, 8, 4, 8, 8, 6, 3, 6]) {
            0 => uapi::AEM_CTL_ENABLE,
            1 => uapi::AEM_CTL_DISABLE,
            2 => uapi::AEM_CTL_SET_PRIORITY,
            3 => uapi::AEM_CTL_UNREGISTER,
            4 => uapi::AEM_CTL_CONTEXT_FD,
            5 => uapi::AEM_CTL_BLOCK,
            6 => uapi::AEM_CTL_UNBLOCK,
            7 => uapi::AEM_CTL_DELIVER,
            8 => uapi::AEM_CTL_END_WAIT,
            _ => self.rng.next_u32() % 16,
        };
        let mut id = self.some_id();
        if (uapi::AEM_CTL_CONTEXT_FD..=uapi::AEM_CTL_END_WAIT).contains(&op)
            && self.rng.chance(9, 10)
        {
            id = 0;
        }
        let arg = match op {
            uapi::AEM_CTL_SET_PRIORITY => {
                if self.rng.chance(9, 10) {
                    self.rng.below(100)
                } else {
                    self.rng.interesting_u64()
                }
            }
            uapi::AEM_CTL_CONTEXT_FD => {
                if self.rng.chance(1, 2) {
                    0
                } else if self.rng.chance(4, 5) {
                    libc::O_CLOEXEC as u64
                } else {
                    self.rng.interesting_u64()
                }
            }
            _ if self.rng.chance(1, 12) => self.rng.interesting_u64(),
            _ => 0,
        };
        if op == uapi::AEM_CTL_UNBLOCK && self.block_depth == 0 && self.rng.chance(3, 4) {
            return;
        }
        if op == uapi::AEM_CTL_BLOCK && self.block_depth >= 3 {
            ctl(0, u64::from(uapi::AEM_CTL_UNBLOCK), 0);
            self.block_depth -= 1;
            return;
        }
        let guard = if op == uapi::AEM_CTL_CONTEXT_FD {
            self.lock()
        } else {
            None
        };
        let r = ctl(id, u64::from(op), arg);
        drop(guard);
        if r >= 0 {
            match op {
                uapi::AEM_CTL_CONTEXT_FD if id == 0 => self.add_fd(r as i32, Kind::Ctx),
                uapi::AEM_CTL_BLOCK if id == 0 && arg == 0 => self.block_depth += 1,
                uapi::AEM_CTL_UNBLOCK if id == 0 && arg == 0 => {
                    self.block_depth = self.block_depth.saturating_sub(1)
                }
                uapi::AEM_CTL_UNREGISTER => self.ids.retain(|(i, _)| u64::from(*i) != id),
                _ => {}
            }
        } else if r == -(libc::ENOENT as i64) {
            self.ids.retain(|(i, _)| u64::from(*i) != id);
        }
        // Blocked delivery starves handlers: unblock soon.
        if self.block_depth > 0 && self.rng.chance(1, 3) {
            ctl(0, u64::from(uapi::AEM_CTL_UNBLOCK), 0);
            self.block_depth -= 1;
        }
    }

    fn wait(&mut self) {
        let max = match self.rng.weighted(&[60, 20, 5, 5, 5, 5]) {
            0 => self.rng.range(1, 16),
            1 => self.rng.range(17, 1024),
            2 => 0,
            3 => 1025,
            4 => u64::from(self.rng.next_u32()),
            _ => 1024,
        };
        let recs = self
            .sh
            .mem
            .write_ptr(&mut self.rng, self.own, max.min(1024) * 40);
        // The timeout, in the own pages past where attributes go.
        let ts_at = self.own + sys::OWN as u64 - 64;
        let (sec, nsec): (i64, i64) = match self.rng.weighted(&[70, 10, 5, 5, 5]) {
            0 => (0, self.rng.below(3_000_000) as i64),
            1 => (0, 0),
            2 => (0, 1_000_000_000 + self.rng.below(1 << 20) as i64),
            3 => (-1, 0),
            _ => (0, -(self.rng.below(1000) as i64) - 1),
        };
        // SAFETY: the end of the own pages; no reference points there.
        unsafe {
            std::ptr::write_unaligned(ts_at as *mut i64, sec);
            std::ptr::write_unaligned((ts_at + 8) as *mut i64, nsec);
        }
        let timeout = match self.rng.weighted(&[85, 5, 5, 5]) {
            0 => ts_at,
            1 => 0, // for ever
            2 => self.sh.mem.read_ptr(&mut self.rng, self.own) | 1,
            _ => self.rng.below(0x10000),
        };
        // Whatever the timeout turns out to be (for ever, or whatever
        // bytes a misaligned pointer finds), the wake-up timer ends the
        // wait.
        let wake_ns = self.rng.range(100_000, 3_000_000);
        if !self.arm_wake(wake_ns) {
            return;
        }
        let flags = if self.rng.chance(1, 20) {
            self.rng.interesting_u64() & !1
        } else {
            0
        };
        // SAFETY: Mem pointers (records written there, timeout read).
        let n = unsafe { aem(sys::WAIT, [recs, max, timeout, flags, 0, 0]) };
        if n > 0 {
            sys::stats().add(Counter::Records, n as u64);
            let size = std::mem::size_of::<uapi::aem_record>() as u64;
            if recs >= self.own && recs + n as u64 * size <= self.own + sys::OWN as u64 {
                for i in 0..n as u64 {
                    // SAFETY: within this thread's own pages, where the
                    // kernel just wrote the records.
                    let rec = unsafe {
                        std::ptr::read_unaligned((recs + i * size) as *const uapi::aem_record)
                    };
                    handler::count_record(&rec);
                }
            }
        }
        self.arm_wake(0);
    }

    fn keepalive(&mut self) {
        let odd = self.rng.chance(1, 10);
        let args = if odd {
            [self.rng.below(2) * self.own, self.rng.below(2), 0, 1, 0, 0]
        } else if self.rng.chance(1, 2) {
            // Serve: run the process's pool events too.
            [0, 0, 0, u64::from(uapi::AEM_WAIT_SERVE), 0, 0]
        } else {
            [0, 0, 0, u64::from(uapi::AEM_WAIT_KEEPALIVE), 0, 0]
        };
        let wake_ns = self.rng.range(200_000, 5_000_000);
        if !self.arm_wake(wake_ns) {
            return;
        }
        // SAFETY: null pointers, or the own pages.
        unsafe { aem(sys::WAIT, args) };
        self.arm_wake(0);
    }

    fn aem_return(&mut self) {
        // No handler runs on this thread here: EINVAL, nothing restored.
        let v = self.rng.interesting_u64();
        // SAFETY: no frame is taken when no handler runs; the call fails.
        unsafe { aem(sys::RETURN, [v, self.rng.next_u64(), 0, 0, 0, 0]) };
    }

    fn thread_area(&mut self) {
        let r = &mut self.rng;
        let area = match r.weighted(&[60, 10, 10, 5, 5, 5, 5]) {
            0 => self.own + 8 * r.below(64),
            1 => self.own + r.below(512),
            2 => self.sh.mem.scratch + 8 * r.below(1024),
            3 => self.sh.mem.ro,
            4 => self.sh.mem.scratch + sys::SCRATCH as u64 - 8 * r.below(2),
            5 => r.below(0x10000),
            _ => 0xffff_8880_0000_0000 + 8 * r.below(1 << 30),
        };
        let size = match r.weighted(&[70, 10, 10, 5, 5]) {
            0 => 8,
            1 => r.below(8),
            2 => r.range(9, 4096),
            3 => 4097,
            _ => r.interesting_u64() & 0xffff_ffff,
        };
        let flags = match r.weighted(&[55, 35, 10]) {
            0 => 0,
            1 => u64::from(uapi::AEM_THREAD_AREA_UNREGISTER),
            _ => r.interesting_u64() & 0xffff_ffff,
        };
        // SAFETY: a Mem-style pointer: own pages or scratch (never
        // unmapped, only the kernel's target), or not writable memory.
        unsafe { aem(sys::THREAD_AREA, [area, size, flags, 0, 0, 0]) };
    }

    /// Store to the block word of the areas the thread may have
    /// registered in its own pages, then ask for delivery.
    fn block_word(&mut self) {
        let at = self.own + 8 * self.rng.below(4);
        let v = if self.rng.chance(1, 2) {
            0
        } else {
            self.rng.range(1, 3) as u32
        };
        // SAFETY: own pages, no references into them.
        unsafe { std::ptr::write_volatile(at as *mut u32, v) };
        if v == 0 || self.rng.chance(1, 4) {
            ctl(0, u64::from(uapi::AEM_CTL_DELIVER), 0);
        }
        if v != 0 && self.rng.chance(1, 2) {
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(at as *mut u32, 0) };
        }
    }

    fn unregister_some(&mut self) {
        for _ in 0..self.rng.range(1, 8) {
            if self.ids.is_empty() {
                return;
            }
            let i = self.rng.below(self.ids.len() as u64) as usize;
            // Overload events mostly stay: they fire a window or more
            // after their registration (and are few).
            if self.ids[i].1.is_overload() && !self.rng.chance(1, 8) {
                continue;
            }
            let (id, _) = self.ids.swap_remove(i);
            ctl(u64::from(id), u64::from(uapi::AEM_CTL_UNREGISTER), 0);
        }
    }

    // ---- descriptors ----

    fn add_fd(&mut self, fd: i32, kind: Kind) {
        if fd < 0 {
            return;
        }
        if self.fds.len() >= 40 {
            let i = self.rng.below(self.fds.len() as u64) as usize;
            let (old, _) = self.fds.swap_remove(i);
            if old != fd {
                sys::close(old);
            }
        }
        self.fds.push((fd, kind));
    }

    fn nonblock(&mut self) -> i32 {
        if self.rng.chance(4, 5) {
            libc::O_NONBLOCK
        } else {
            0
        }
    }

    fn fd_new(&mut self) {
        let _guard = self.lock();
        sys::stats().add(Counter::OtherCalls, 1);
        let nb = self.nonblock();
        // SAFETY (for the calls below): libc calls creating descriptors,
        // with live arguments.
        match self
            .rng
            .weighted(&[14, 8, 6, 4, 10, 8, 10, 6, 8, 5, 6, 5, 4, 3])
        {
            0 => {
                let mut p = [0i32; 2];
                // SAFETY: see above.
                if unsafe { libc::pipe2(p.as_mut_ptr(), nb | libc::O_CLOEXEC) } == 0 {
                    self.add_fd(p[0], Kind::Pipe);
                    self.add_fd(p[1], Kind::Pipe);
                }
            }
            1 => {
                let fl = if nb != 0 { libc::EFD_NONBLOCK } else { 0 }
                    | if self.rng.chance(1, 3) {
                        libc::EFD_SEMAPHORE
                    } else {
                        0
                    };
                // SAFETY: see above.
                let fd = unsafe { libc::eventfd(self.rng.below(3) as u32, fl) };
                self.add_fd(fd, Kind::Eventfd);
            }
            2 => {
                // SAFETY: see above.
                let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
                if fd >= 0 {
                    self.timerfd_arm(fd);
                }
                self.add_fd(fd, Kind::Timerfd);
            }
            3 => {
                // SAFETY: an empty set, then SIGUSR1 in it.
                let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
                // SAFETY: `set` is live.
                unsafe {
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR1);
                }
                // SAFETY: see above.
                let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK) };
                self.add_fd(fd, Kind::Signalfd);
            }
            4 => {
                // SAFETY: see above.
                let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                self.add_fd(fd, Kind::Epoll);
            }
            5 => self.tcp_listen(),
            6 => self.tcp_connect(),
            7 => {
                // SAFETY: see above.
                let fd = unsafe {
                    libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0)
                };
                if fd >= 0 {
                    let sa = sockaddr_in(0);
                    // SAFETY: a live sockaddr_in of that size.
                    ign(unsafe {
                        libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), size_of_sin())
                    });
                }
                self.add_fd(fd, Kind::Udp);
            }
            8 => {
                let ty =
                    self.rng
                        .pick(&[libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET]);
                let mut p = [0i32; 2];
                // SAFETY: see above.
                if unsafe {
                    libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_NONBLOCK, 0, p.as_mut_ptr())
                } == 0
                {
                    self.add_fd(p[0], Kind::Unix);
                    self.add_fd(p[1], Kind::Unix);
                }
            }
            9 => self.unix_listen_or_connect(),
            10 => {
                let path = self.rng.pick(&[
                    "/proc/self/stat",
                    "/proc/self/aem",
                    "/proc/loadavg",
                    "/proc/self/status",
                    "/proc/pressure/cpu",
                    "/proc/self/mounts",
                    "/proc/self/fdinfo/0",
                    "/proc/sys/kernel/aem_overload",
                ]);
                let c = CString::new(path).expect("no NUL");
                // SAFETY: a NUL-terminated path.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | nb) };
                self.add_fd(fd, Kind::Proc);
            }
            11 => {
                self.serial += 1;
                let dir = if self.rng.chance(1, 2) {
                    "/tmp"
                } else {
                    "/dev/shm"
                };
                let path = format!(
                    "{dir}/aem-fuzz.{}.{}.{}",
                    sys::getpid(),
                    sys::gettid(),
                    self.serial
                );
                let c = CString::new(path).expect("no NUL");
                // SAFETY: a NUL-terminated path.
                let fd =
                    unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT | nb, 0o600) };
                if fd >= 0 {
                    let data = [0x5au8; 512];
                    let n = self.rng.below(512) as usize;
                    // SAFETY: `data` is live; then the name goes.
                    unsafe {
                        ign(libc::write(fd, data.as_ptr().cast(), n));
                        libc::unlink(c.as_ptr());
                    }
                }
                self.add_fd(fd, Kind::File);
            }
            12 => {
                let path = self
                    .rng
                    .pick(&["/dev/null", "/dev/zero", "/dev/urandom", "/dev/full"]);
                let c = CString::new(path).expect("no NUL");
                // SAFETY: a NUL-terminated path.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | nb) };
                self.add_fd(fd, Kind::Dev);
            }
            _ => {
                // SAFETY: see above.
                let fd = match self.rng.below(3) {
                    // SAFETY: no pointers.
                    0 => unsafe { libc::inotify_init1(libc::IN_NONBLOCK) },
                    // SAFETY: no pointers.
                    1 => unsafe { libc::syscall(libc::SYS_pidfd_open, sys::getpid(), 0) as i32 },
                    // SAFETY: a C string literal.
                    _ => unsafe { libc::memfd_create(c"aem-fuzz".as_ptr(), 0) },
                };
                self.add_fd(fd, Kind::Other);
            }
        }
    }

    fn timerfd_arm(&mut self, fd: i32) {
        let ns = self.rng.range(100_000, 5_000_000) as i64;
        let iv = if self.rng.chance(1, 2) { ns } else { 0 };
        let its = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: iv,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: ns,
            },
        };
        // SAFETY: a live itimerspec.
        ign(unsafe { libc::timerfd_settime(fd, 0, &its, std::ptr::null_mut()) });
    }

    fn tcp_listen(&mut self) {
        // SAFETY: plain socket calls with live arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return;
        }
        let sa = sockaddr_in(0);
        let mut got = sockaddr_in(0);
        let mut len = size_of_sin();
        // SAFETY: live sockaddrs of the sizes passed.
        let ok = unsafe {
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), size_of_sin()) == 0
                && libc::listen(fd, self.rng.range(0, 16) as i32) == 0
                && libc::getsockname(fd, (&mut got as *mut libc::sockaddr_in).cast(), &mut len) == 0
        };
        if ok {
            let port = u16::from_be(got.sin_port);
            if self.ports.len() >= 8 {
                self.ports.remove(0);
            }
            self.ports.push(port);
        }
        self.add_fd(fd, Kind::TcpListen);
    }

    fn tcp_connect(&mut self) {
        // Some port of ours (listening, or since closed: a reset), or one
        // nobody listens on.
        let port = if !self.ports.is_empty() && self.rng.chance(4, 5) {
            self.rng.pick(&self.ports)
        } else {
            self.rng.range(1, 1023) as u16
        };
        // SAFETY: plain socket calls with live arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return;
        }
        let sa = sockaddr_in(port);
        // SAFETY: a live sockaddr_in.
        ign(unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), size_of_sin()) });
        self.add_fd(fd, Kind::Tcp);
    }

    fn unix_listen_or_connect(&mut self) {
        // SAFETY: plain socket calls with live arguments.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return;
        }
        let listen = self.unix_names.is_empty() || self.rng.chance(1, 3);
        let name = if listen {
            self.serial += 1;
            format!(
                "\0aem-fuzz-{}-{}-{}",
                sys::getpid(),
                sys::gettid(),
                self.serial
            )
            .into_bytes()
        } else {
            self.rng
                .pick(&self.unix_names.iter().collect::<Vec<_>>())
                .clone()
        };
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as u16;
        for (d, s) in sa.sun_path.iter_mut().zip(name.iter()) {
            *d = *s as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + name.len()) as u32;
        let sp = (&sa as *const libc::sockaddr_un).cast();
        if listen {
            // SAFETY: a live sockaddr_un of at least `len` bytes.
            if unsafe { libc::bind(fd, sp, len) == 0 && libc::listen(fd, 8) == 0 } {
                if self.unix_names.len() >= 8 {
                    self.unix_names.remove(0);
                }
                self.unix_names.push(name);
            }
            self.add_fd(fd, Kind::UnixListen);
        } else {
            // SAFETY: as above.
            ign(unsafe { libc::connect(fd, sp, len) });
            self.add_fd(fd, Kind::Unix);
        }
    }

    fn fd_close(&mut self) {
        if self.fds.is_empty() {
            return;
        }
        let i = self.rng.below(self.fds.len() as u64) as usize;
        let (fd, _) = self.fds.swap_remove(i);
        if self.rng.chance(1, 5) {
            // An abortive close of a TCP socket: a reset.
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a live linger.
            ign(unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lg as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            });
        }
        sys::close(fd);
    }

    fn fd_dup2(&mut self) {
        let Some(src) = self.pool_fd() else {
            return;
        };
        let _guard = self.lock();
        let kind = self
            .fds
            .iter()
            .find(|(f, _)| *f == src)
            .map(|x| x.1)
            .unwrap_or(Kind::Other);
        let dst = if self.rng.chance(2, 3) {
            self.pool_fd().unwrap_or(3)
        } else {
            self.rng.range(3, 200) as i32
        };
        if dst <= 2 {
            return;
        }
        sys::stats().add(Counter::OtherCalls, 1);
        // SAFETY: dup2 onto a descriptor the fuzzer owns (everything but
        // 0, 1 and 2 is the fuzzer's).
        let r = unsafe { libc::dup2(src, dst) };
        if r >= 0 && !self.fds.iter().any(|(f, _)| *f == dst) {
            self.add_fd(dst, kind);
        }
    }

    /// Make something happen on a descriptor: data, a connection, a
    /// shutdown, a signal, a timer.
    fn fd_poke(&mut self) {
        let Some((fd, kind)) = (if self.fds.is_empty() {
            None
        } else {
            Some(self.fds[self.rng.below(self.fds.len() as u64) as usize])
        }) else {
            return;
        };
        sys::stats().add(Counter::OtherCalls, 1);
        let buf = [0x41u8; 256];
        let n = self.rng.range(1, 256) as usize;
        match kind {
            Kind::TcpListen | Kind::UnixListen if self.rng.chance(1, 2) => {
                let _guard = self.lock();
                // SAFETY: accept without an address.
                let c = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK,
                    )
                };
                self.add_fd(
                    c,
                    if kind == Kind::TcpListen {
                        Kind::Tcp
                    } else {
                        Kind::Unix
                    },
                );
            }
            Kind::TcpListen => self.tcp_connect(),
            Kind::UnixListen => self.unix_listen_or_connect(),
            Kind::Tcp | Kind::Unix | Kind::Udp if self.rng.chance(1, 6) => {
                let how = self
                    .rng
                    .pick(&[libc::SHUT_RD, libc::SHUT_WR, libc::SHUT_RDWR]);
                // SAFETY: no pointers.
                ign(unsafe { libc::shutdown(fd, how) });
            }
            Kind::Udp => {
                let mut me = sockaddr_in(0);
                let mut len = size_of_sin();
                // SAFETY: live buffers of the sizes passed.
                unsafe {
                    if libc::getsockname(fd, (&mut me as *mut libc::sockaddr_in).cast(), &mut len)
                        == 0
                    {
                        ign(libc::sendto(
                            fd,
                            buf.as_ptr().cast(),
                            n,
                            libc::MSG_DONTWAIT,
                            (&me as *const libc::sockaddr_in).cast(),
                            len,
                        ));
                    }
                }
            }
            Kind::Tcp | Kind::Unix => {
                // SAFETY: a live buffer.
                ign(unsafe {
                    libc::send(
                        fd,
                        buf.as_ptr().cast(),
                        n,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                });
            }
            Kind::Signalfd => {
                // SAFETY: a signal to this thread; SIGUSR1 is blocked and
                // has a no-op handler.
                ign(unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        sys::getpid(),
                        sys::gettid(),
                        libc::SIGUSR1,
                    )
                });
            }
            Kind::Timerfd => self.timerfd_arm(fd),
            Kind::Topic => self.publish(fd),
            Kind::Eventfd => {
                let v: u64 = self.rng.range(1, 3);
                if self.writable(fd) {
                    // SAFETY: a live u64.
                    ign(unsafe { libc::write(fd, (&v as *const u64).cast(), 8) });
                }
            }
            _ => {
                if self.writable(fd) {
                    // SAFETY: a live buffer; the fd was writable: at most
                    // a race with another thread makes this block, and
                    // the watchdog is there for that.
                    ign(unsafe { libc::write(fd, buf.as_ptr().cast(), n.min(64)) });
                }
            }
        }
    }

    fn writable(&self, fd: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: a live pollfd.
        unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLOUT != 0 }
    }

    fn epoll_add(&mut self) {
        let Some(ep) = self.pool_fd_of(&[Kind::Epoll]) else {
            self.fd_new();
            return;
        };
        let guard = self.lock();
        let avoid = self.sh.cfg.avoids(crate::AVOID_CTX_EPOLL);
        // Context fds first, when there are some: the nested sets that
        // hold them are what the ctx-epoll-loop class is about.
        let target = if !avoid && self.rng.chance(1, 3) {
            self.pool_fd_of(&[Kind::Ctx, Kind::Epoll])
                .or_else(|| self.pool_fd())
        } else {
            self.pool_fd()
        };
        let Some(target) = target else {
            return;
        };
        // Avoided: no context fd goes into a set.  (A forked child, one
        // thread, checks without the lock; so does everything after the
        // check: the lock keeps other threads from putting a context fd
        // at that number meanwhile.)
        if avoid && is_context_fd(target) {
            return;
        }
        let mut ev = libc::epoll_event {
            events: self.epoll_events(),
            u64: self.rng.next_u64(),
        };
        let op = self.rng.pick(&[
            libc::EPOLL_CTL_ADD,
            libc::EPOLL_CTL_ADD,
            libc::EPOLL_CTL_MOD,
            libc::EPOLL_CTL_DEL,
        ]);
        sys::stats().add(Counter::OtherCalls, 1);
        // SAFETY: a live epoll_event.
        ign(unsafe { libc::epoll_ctl(ep, op, target, &mut ev) });
        drop(guard);
        if self.rng.chance(1, 3) {
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
            // SAFETY: a live array of 8 events.
            ign(unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, self.rng.below(2) as i32) });
        }
    }

    /// The ctx-epoll-loop class on purpose: the process's context fd in an
    /// epoll set (maybe nested in another), an fd watch on the set, and a
    /// timer whose records make the context readable.
    fn ctx_epoll(&mut self) {
        if self.sh.cfg.avoids(crate::AVOID_CTX_EPOLL) {
            return;
        }
        sys::stats().add(Counter::OtherCalls, 1);
        let ctx = ctl(
            0,
            u64::from(uapi::AEM_CTL_CONTEXT_FD),
            libc::O_CLOEXEC as u64,
        );
        if ctx < 0 {
            return;
        }
        let ctx = ctx as i32;
        // SAFETY: no pointers.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let mut ev = libc::epoll_event {
            events: self.epoll_events() | libc::EPOLLIN as u32,
            u64: 1,
        };
        // SAFETY: a live epoll_event.
        ign(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ctx, &mut ev) });
        let mut watched = ep;
        if self.rng.chance(1, 2) {
            // SAFETY: as above.
            let outer = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            // SAFETY: a live epoll_event.
            ign(unsafe { libc::epoll_ctl(outer, libc::EPOLL_CTL_ADD, ep, &mut ev) });
            self.add_fd(outer, Kind::Epoll);
            watched = outer;
        }
        self.add_fd(ep, Kind::Epoll);
        self.add_fd(ctx, Kind::Ctx);
        let inline = self.rng.chance(1, 3);
        let mut a = [0u64; 11];
        a[0] = u64::from(uapi::aem_source_kind::AEM_SOURCE_FD)
            | if self.rng.chance(1, 2) {
                u64::from(uapi::AEM_EV_LEVEL) << 32
            } else {
                0
            };
        if inline {
            a[2] = handler::handler();
            a[3] = handler::restorer();
        }
        a[5] = u64::from(watched as u32) | ((libc::EPOLLIN as u64) << 32);
        // SAFETY: `a` is 88 bytes, the size passed.
        let id = unsafe { aem(sys::REGISTER, [a.as_ptr() as u64, 88, 0, 0, 0, 0]) };
        if id > 0 {
            MAX_ID.fetch_max(id as u32, Relaxed);
            self.ids.push((id as u32, Reg::Plain));
        }
        let mut t = [0u64; 11];
        t[0] = u64::from(uapi::aem_source_kind::AEM_SOURCE_TIMER);
        t[5] = libc::CLOCK_MONOTONIC as u64;
        t[6] = self.rng.range(100_000, 2_000_000);
        t[7] = if self.rng.chance(1, 2) {
            self.rng.range(100_000, 2_000_000)
        } else {
            0
        };
        // SAFETY: `t` is 88 bytes, the size passed.
        let id = unsafe { aem(sys::REGISTER, [t.as_ptr() as u64, 88, 0, 0, 0, 0]) };
        if id > 0 {
            MAX_ID.fetch_max(id as u32, Relaxed);
            self.ids.push((id as u32, Reg::Plain));
        }
    }

    fn ctx_fd(&mut self) {
        let _guard = self.lock();
        let arg = if self.rng.chance(1, 2) {
            libc::O_CLOEXEC as u64
        } else {
            0
        };
        let fd = ctl(0, u64::from(uapi::AEM_CTL_CONTEXT_FD), arg);
        if fd >= 0 {
            self.add_fd(fd as i32, Kind::Ctx);
        }
    }

    // ---- topics ----

    /// Copy `bytes` to the own pages at offset `at`.
    fn put_own(&self, at: u64, bytes: &[u8]) {
        assert!(at + bytes.len() as u64 <= sys::OWN as u64);
        // SAFETY: within the own pages, which are ours; nothing holds a
        // reference into them.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (self.own + at) as *mut u8, bytes.len())
        };
    }

    /// The name argument of a topic_open: mostly one of the shared
    /// names, in the own pages; sometimes names the kernel refuses (too
    /// long, empty, with a '/', reserved) or other odd ones, names that
    /// run into a guard page, and bad pointers.
    fn topic_name(&mut self) -> u64 {
        let at = TOPIC_NAME_AT;
        let name: Vec<u8> = match self.rng.weighted(&[82, 3, 3, 1, 2, 2, 3, 1, 2, 1]) {
            0 => {
                // The first names most, the kernel's least.
                let i = self.rng.weighted(&[30, 25, 15, 10, 8, 6, 4, 2]);
                TOPIC_NAMES[i].into()
            }
            1 => format!("kernel.{}", self.rng.below(4)).into_bytes(),
            2 => {
                let s = self.rng.pick(&["/", "fuzz/a", "a/", "//", "fuzz.a/"]);
                s.into()
            }
            3 => Vec::new(),
            4 => {
                // The longest names (one of a few, so they collide too),
                // or one byte too long: ENAMETOOLONG.
                let len = if self.rng.chance(2, 3) {
                    uapi::AEM_TOPIC_NAME_MAX as usize
                } else {
                    self.rng.range(256, 300) as usize
                };
                let mut v = vec![b'a' + self.rng.below(3) as u8; len];
                v[0] = b'L';
                v
            }
            5 => {
                // Odd bytes, from a small alphabet so that they collide.
                let len = self.rng.range(1, 6) as usize;
                (0..len)
                    .map(|_| self.rng.pick(b" .\x01\x7f\xff*-_\n\\"))
                    .collect()
            }
            6 => {
                // Without its NUL, up to the guard page: EFAULT.
                let len = self.rng.range(1, 300);
                let v = vec![b'g'; len as usize];
                let start = sys::OWN as u64 - len;
                self.put_own(start, &v);
                return self.own + start;
            }
            7 => {
                // Whatever bytes the scratch area holds (what the kernel
                // wrote there).
                return self.sh.mem.scratch + self.rng.below(sys::SCRATCH as u64);
            }
            8 => {
                let p = self.sh.mem.read_ptr(&mut self.rng, self.own);
                return if p == self.own { 0 } else { p };
            }
            _ => return self.rng.interesting_u64(),
        };
        let mut z = name;
        z.push(0);
        self.put_own(at, &z);
        self.own + at
    }

    /// aem_ctl(AEM_CTL_TOPIC_OPEN): open or create a topic, mostly with
    /// valid arguments (random access, O_CREAT, O_EXCL, O_CLOEXEC and
    /// modes), sometimes with bad flags, modes, sizes, reserved fields,
    /// names or pointers.  Its descriptor goes into the pool.  Also, at
    /// times, a new umask, or (as root) a new user.max_aem_topics.
    fn topic_open(&mut self) {
        if self.rng.chance(1, 100) {
            let mask = self
                .rng
                .pick(&[0o022, 0o022, 0o077, 0o000, 0o777, 0o002, 0o222]);
            // SAFETY: no pointers; the process-wide umask only changes
            // the modes of what the fuzzer creates.
            unsafe { libc::umask(mask) };
        }
        if self.rng.chance(1, 150) && !self.sh.cfg.unprivileged && self.slot.is_some() {
            // ENOSPC for the topics of a user over the limit (restored at
            // the end of the run; by the main flows only, which are over
            // by then).
            let max = self.rng.pick(&[0, 1, 4, 16, 64, 1024, 1024, 1024]);
            sys::stats().add(Counter::OtherCalls, 1);
            let _ = std::fs::write("/proc/sys/user/max_aem_topics", max.to_string());
        }
        let name = self.topic_name();
        let r = &mut self.rng;
        let acc = match r.weighted(&[35, 20, 40, 5]) {
            0 => libc::O_RDONLY,
            1 => libc::O_WRONLY,
            2 => libc::O_RDWR,
            _ => libc::O_ACCMODE, // EINVAL
        } as u32;
        let mut flags = acc;
        if r.chance(3, 5) {
            flags |= libc::O_CREAT as u32;
            if r.chance(1, 5) {
                flags |= libc::O_EXCL as u32;
            }
        } else if r.chance(1, 20) {
            flags |= libc::O_EXCL as u32; // without O_CREAT: EINVAL
        }
        if r.chance(1, 2) {
            flags |= libc::O_CLOEXEC as u32;
        }
        if r.chance(1, 25) {
            flags |= 1 << r.below(32);
        }
        let mode = match r.weighted(&[70, 20, 10]) {
            0 => r.pick(&[
                0o600, 0o644, 0o666, 0o640, 0o660, 0o604, 0o606, 0o400, 0o200, 0o000, 0o777, 0o444,
                0o222,
            ]),
            1 => r.below(0o1000) as u32,
            _ => r.interesting_u64() as u32,
        };
        let reserved = if r.chance(1, 25) {
            r.interesting_u64() as u32 | 1
        } else {
            0
        };
        let size: u64 = match r.weighted(&[82, 4, 5, 3, 2, 2, 2]) {
            0 => 24,
            1 => r.below(24),
            2 => r.range(25, 4095),
            3 => 4096,
            4 => 4097,
            5 => r.range(4098, 1 << 20),
            _ => r.interesting_u64() & 0xffff_ffff,
        };
        let name = if r.chance(1, 50) {
            name | (1 << 63)
        } else {
            name
        };
        let mut st = [0u8; 24];
        st[0..4].copy_from_slice(&(size as u32).to_ne_bytes());
        st[4..8].copy_from_slice(&flags.to_ne_bytes());
        st[8..12].copy_from_slice(&mode.to_ne_bytes());
        st[12..16].copy_from_slice(&reserved.to_ne_bytes());
        st[16..24].copy_from_slice(&name.to_ne_bytes());
        // The struct, then zeros up to the size the kernel reads (a page
        // at most), or one byte that is not: E2BIG.
        let tail = (size.min(4096) as usize).saturating_sub(24);
        let mut buf = vec![0u8; 24 + tail];
        buf[..24].copy_from_slice(&st);
        if tail > 0 && self.rng.chance(1, 8) {
            let at = self.rng.range(24, 24 + tail as u64 - 1) as usize;
            buf[at] = 1 + self.rng.below(255) as u8;
        }
        self.put_own(TOPIC_OPEN_AT, &buf);
        let ptr = match self.rng.weighted(&[90, 4, 6]) {
            0 => self.own + TOPIC_OPEN_AT,
            1 => {
                // Up to the guard page: the size readable, the rest not.
                let keep = self.rng.range(4, 23);
                let start = sys::OWN as u64 - keep;
                self.put_own(start, &st[..keep as usize]);
                self.own + start
            }
            _ => {
                let p = self.sh.mem.read_ptr(&mut self.rng, self.own);
                if p == self.own {
                    p + TOPIC_OPEN_AT + 1 // misaligned
                } else {
                    p
                }
            }
        };
        let id = if self.rng.chance(1, 40) {
            self.rng.range(1, 100)
        } else {
            0
        };
        // SAFETY: the kernel only reads through `ptr` (and the name's
        // pointer in it): own pages, scratch, or memory that is not
        // readable.
        let fd = unsafe {
            aem(
                sys::CTL,
                [id, u64::from(uapi::AEM_CTL_TOPIC_OPEN), ptr, 0, 0, 0],
            )
        };
        if fd >= 0 {
            sys::stats().add(Counter::TopicOpens, 1);
            self.add_fd(fd as i32, Kind::Topic);
        }
    }

    /// write() to a topic of the pool (opening one when there is none),
    /// or now and then to another descriptor of the pool.
    fn topic_publish(&mut self) {
        let fd = if self.rng.chance(9, 10) {
            match self.pool_fd_of(&[Kind::Topic]) {
                Some(fd) => fd,
                None => {
                    self.topic_open();
                    return;
                }
            }
        } else {
            match self.pool_fd() {
                Some(fd) if fd > 2 => fd,
                _ => return,
            }
        };
        self.publish(fd);
    }

    /// Publish on `fd`: payloads of 8 bytes, from one to more than a page
    /// of them (the kernel takes a page at most per call); lengths that
    /// are not multiples of 8 (EINVAL); buffers that run into a guard
    /// page (the payloads before it are published) or are not readable.
    fn publish(&mut self, fd: i32) {
        // A topic never blocks a writer, but the number may be something
        // else by now (another thread closed it, or dup2()ed onto it): a
        // blocking pipe or eventfd would block a write of a page, or of a
        // large count.  Blocking descriptors must be topics.
        // SAFETY: no pointers.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl >= 0 && fl & libc::O_NONBLOCK == 0 && !is_topic_fd(fd) {
            return;
        }
        let r = &mut self.rng;
        let len: u64 = match r.weighted(&[50, 25, 4, 3, 4, 5, 5]) {
            0 => 8,
            1 => 8 * r.range(2, 16),
            2 => 4096,
            3 => 8 * r.range(513, 1024),
            4 => 0,
            5 => r.range(1, 7),
            _ => 8 * r.range(1, 16) + r.range(1, 7),
        };
        // Payloads: a tag of this thread and a count, or odd values.
        self.serial += 1;
        let tag = (u64::from(sys::gettid() as u32) << 32) | (self.serial & 0xffff_ffff);
        let words = len.div_ceil(8) as usize;
        let payloads: Vec<u64> = (0..words)
            .map(|i| {
                if self.rng.chance(1, 8) {
                    self.rng.interesting_u64()
                } else {
                    tag.wrapping_add(i as u64)
                }
            })
            .collect();
        let buf = match self.rng.weighted(&[88, 4, 4, 2, 2]) {
            0 => payloads.as_ptr() as u64,
            1 => {
                // The last words before the scratch area's guard.
                let fit = self.rng.range(0, words as u64);
                self.sh.mem.scratch + sys::SCRATCH as u64 - 8 * fit
            }
            2 => self.sh.mem.ro + 8 * self.rng.below(512),
            3 => self.rng.below(0x10000),
            _ => 0xffff_8880_0000_0000 + 8 * self.rng.below(1 << 30),
        };
        sys::stats().add(Counter::OtherCalls, 1);
        // SAFETY: write() only reads `len` bytes at `buf`: the payloads
        // (live for the call), the scratch area and its guard, the
        // read-only page, or memory that is not user memory.
        let n = unsafe { libc::write(fd, buf as *const libc::c_void, len as usize) };
        if n > 0 && self.fds.iter().any(|&(f, k)| f == fd && k == Kind::Topic) {
            sys::stats().add(Counter::Publications, n as u64 / 8);
        }
    }

    // ---- memory watches and futexes ----

    /// Remember a watched word, to wake it later (the latest last).
    fn remember_watched(&mut self, addr: u64, shared: bool) {
        self.watched.retain(|&(a, s)| a != addr || s != shared);
        if self.watched.len() >= MAX_WATCHED {
            self.watched.remove(0);
        }
        self.watched.push((addr, shared));
    }

    /// A word index: mostly one of the first few (so that watches and
    /// wakes meet), sometimes any of `n`.
    fn word_index(&mut self, n: u64) -> u64 {
        if self.rng.chance(3, 4) {
            self.rng.below(8.min(n))
        } else {
            self.rng.below(n)
        }
    }

    /// A word of the process's shared page of words.
    fn page_word(&mut self) -> u64 {
        self.sh.mem.words + 4 * self.word_index((sys::WORDS / 4) as u64)
    }

    /// A word of this thread's heap words.
    fn heap_word(&mut self) -> u64 {
        let i = self.word_index(self.heap.len() as u64);
        self.heap.as_ptr() as u64 + 4 * i
    }

    /// A word of a region this thread mapped (mapping one when there is
    /// none): (address, MAP_SHARED), or None when mmap failed.
    fn map_word(&mut self) -> Option<(u64, bool)> {
        if self.maps.is_empty() {
            self.map_words();
        }
        if self.maps.is_empty() {
            return None;
        }
        let m = self.maps[self.rng.below(self.maps.len() as u64) as usize];
        let page = self.rng.below(m.len / 4096);
        let i = self.word_index(1024);
        Some((m.addr + 4096 * page + 4 * i, m.shared))
    }

    /// The word a memory watch names, and whether AEM_WATCH_SHARED suits
    /// it (its writers are other processes): mostly words the workers
    /// wake -- the shared page of words, heap words, pages this thread
    /// maps -- sometimes words nobody wakes (the own pages, where thread
    /// areas are, the scratch area, the read-only page, the stack), and
    /// addresses that are misaligned, unmapped or not user memory.
    fn watch_addr(&mut self) -> (u64, bool) {
        match self.rng.weighted(&[30, 18, 15, 8, 4, 3, 3, 2, 5, 5, 5]) {
            0 => (self.page_word(), true),
            1 => (self.heap_word(), false),
            2 => self.map_word().unwrap_or((self.sh.mem.words, true)),
            3 if !self.watched.is_empty() => self.rng.pick(&self.watched),
            3 | 4 => (self.own + 4 * self.rng.below(16), false),
            5 => (self.sh.mem.scratch + 4 * self.rng.below(256), false),
            6 => (self.sh.mem.ro + 4 * self.rng.below(1024), false),
            7 => {
                // This frame's: another call's by the time it is read.
                let local = 0u32;
                (std::ptr::addr_of!(local) as u64, false)
            }
            8 => {
                let base = if self.rng.chance(1, 2) {
                    self.page_word()
                } else {
                    self.heap_word()
                };
                (base + self.rng.range(1, 3), true)
            }
            9 => {
                let mem = self.sh.mem;
                let addr = match self.rng.below(3) {
                    0 => mem.scratch + sys::SCRATCH as u64 + 4 * self.rng.below(1024),
                    1 => self.own + sys::OWN as u64 + 4 * self.rng.below(1024),
                    _ => 4 * self.rng.below(0x4000),
                };
                (addr, self.rng.chance(1, 2))
            }
            _ => {
                let addr = match self.rng.below(4) {
                    0 => 0xffff_8880_0000_0000 + 4 * self.rng.below(1 << 30),
                    1 => 0x0000_8000_0000_0000 - 4 * self.rng.range(0, 2),
                    2 => u64::MAX - 3,
                    _ => self.rng.interesting_u64(),
                };
                (addr, self.rng.chance(1, 2))
            }
        }
    }

    /// The heap word at `addr`, if it is one of this thread's.
    fn heap_slot(&self, addr: u64) -> Option<&AtomicU32> {
        let base = self.heap.as_ptr() as u64;
        if addr % 4 != 0 || addr < base {
            return None;
        }
        self.heap.get(((addr - base) / 4) as usize)
    }

    /// The word at `addr` if this thread may store to it: a word of the
    /// shared page, of its heap words, or of a region it mapped that is
    /// mapped writable now.  (Other threads' regions and freed heap words
    /// may hold anything by now: watched, woken, but not written.)
    fn storable(&self, addr: u64) -> Option<&AtomicU32> {
        if let Some(w) = self.heap_slot(addr) {
            return Some(w);
        }
        let ours = self.sh.mem.is_word(addr)
            || (addr % 4 == 0
                && self
                    .maps
                    .iter()
                    .any(|m| m.writable && (m.addr..m.addr + m.len).contains(&addr)));
        // SAFETY: an aligned word of memory that stays mapped and writable
        // while this thread uses it (the shared page is never unmapped;
        // this thread's regions only by this thread), and that only
        // serves as the target of watches and futexes.
        ours.then(|| unsafe { &*(addr as *const AtomicU32) })
    }

    /// A futex(2) call, counted as "other".
    ///
    /// # Safety
    ///
    /// Whatever the operation writes (FUTEX_WAKE_OP: `uaddr2`) must be
    /// memory the fuzzer does not rely on, or not writable.
    unsafe fn futex(&self, uaddr: u64, op: u64, val: u64, val2: u64, uaddr2: u64, val3: u64) {
        sys::stats().add(Counter::FutexWakes, 1);
        // SAFETY: forwarded to the caller.
        unsafe { sys::other(libc::SYS_futex, [uaddr, op, val, val2, uaddr2, val3]) };
    }

    /// Change a word and wake it, as a writer that shares it with waiters
    /// would: a watched word, another word of ours, or any address (a
    /// wake alone); a new value, or the same one (nothing to tell); then
    /// FUTEX_WAKE private or shared, FUTEX_WAKE_BITSET, FUTEX_WAKE_OP on
    /// two words, FUTEX_CMP_REQUEUE or futex_wake(2), with nr 0 at times;
    /// sometimes a short FUTEX_WAIT instead, so that wakes find real
    /// waiters too; or a child that pokes the shared words from another
    /// process.  Threads and forked children run it too.
    fn futex_poke(&mut self) {
        if !self.child && !self.sh.cfg.avoids(crate::AVOID_FORK) && self.rng.chance(1, 25) {
            self.poker_child();
            return;
        }
        let (addr, shared) = match self.rng.weighted(&[50, 20, 10, 8, 6, 6]) {
            0 if !self.watched.is_empty() => {
                // The latest watches mostly (older ones may be gone).
                let n = self.watched.len();
                let from = if self.rng.chance(2, 3) {
                    n.saturating_sub(3)
                } else {
                    0
                };
                self.rng.pick(&self.watched[from..])
            }
            0 | 1 => (self.page_word(), true),
            2 => (self.heap_word(), false),
            3 => self.map_word().unwrap_or((self.sh.mem.words, true)),
            4 => (self.own + 4 * self.rng.below(16), false),
            _ => self.watch_addr(),
        };
        self.poke(addr, shared);
    }

    /// Change the word at `addr` (when it is ours to change), then wake
    /// it, mostly with the key a watch with AEM_WATCH_SHARED (`shared`)
    /// or without it has.
    fn poke(&mut self, addr: u64, shared: bool) {
        let old = self.storable(addr).map(|w| w.load(Relaxed));
        if let (Some(old), true) = (old, self.rng.chance(4, 5)) {
            let v = match self.rng.weighted(&[50, 25, 10, 15]) {
                0 => old.wrapping_add(1),
                1 => self.rng.next_u32(),
                2 => 0,
                _ => old, // unchanged: the wake tells nothing
            };
            if let Some(w) = self.storable(addr) {
                w.store(v, Relaxed);
            }
        }
        // Mostly the key the watch (if any) has.
        let private = if self.rng.chance(4, 5) {
            !shared
        } else {
            self.rng.chance(1, 2)
        };
        self.wake(addr, private);
    }

    /// Wake the futex at `addr`, one way or another.
    fn wake(&mut self, addr: u64, private: bool) {
        let pflag = if private {
            libc::FUTEX_PRIVATE_FLAG as u64
        } else {
            0
        };
        let nr = match self.rng.weighted(&[50, 20, 15, 10, 5]) {
            0 => 1,
            1 => i32::MAX as u64,
            2 => 0,
            3 => self.rng.below(4),
            _ => self.rng.interesting_u64() & 0xffff_ffff,
        };
        match self.rng.weighted(&[40, 12, 14, 12, 6, 8]) {
            0 => {
                // SAFETY: FUTEX_WAKE writes nothing.
                unsafe { self.futex(addr, libc::FUTEX_WAKE as u64 | pflag, nr, 0, 0, 0) };
            }
            1 => {
                let bitset = match self.rng.weighted(&[70, 20, 10]) {
                    0 => u64::from(u32::MAX), // FUTEX_BITSET_MATCH_ANY
                    1 => self.rng.next_u32().into(),
                    _ => 0, // EINVAL, before the wake
                };
                let op = libc::FUTEX_WAKE_BITSET as u64 | pflag;
                // SAFETY: FUTEX_WAKE_BITSET writes nothing.
                unsafe { self.futex(addr, op, nr, 0, 0, bitset) };
            }
            2 => {
                // The second word, which the operation changes: one we
                // may store to, or (now and then) the read-only page or
                // an unmapped one (EFAULT, nothing written).
                let addr2 = match self.rng.weighted(&[60, 25, 8, 7]) {
                    0 => self.page_word(),
                    1 if !self.watched.is_empty() => {
                        let (a, _) = self.rng.pick(&self.watched);
                        if self.storable(a).is_some() {
                            a
                        } else {
                            self.heap_word()
                        }
                    }
                    1 => self.heap_word(),
                    2 => self.sh.mem.ro + 4 * self.rng.below(1024),
                    _ => self.sh.mem.scratch + sys::SCRATCH as u64 + 4 * self.rng.below(1024),
                };
                let r = &mut self.rng;
                // FUTEX_OP(op, oparg, cmp, cmparg): set, add, or, andn,
                // xor, maybe with FUTEX_OP_OPARG_SHIFT (oparg < 32); a
                // comparison; sometimes bad ops or comparisons.
                let op = if r.chance(1, 10) {
                    r.below(16)
                } else {
                    r.below(5) | (r.below(2) * 8)
                };
                let oparg = if op & 8 != 0 {
                    r.below(32)
                } else {
                    r.below(4096)
                };
                let cmp = if r.chance(1, 10) {
                    r.below(16)
                } else {
                    r.below(6)
                };
                let encoded = (op << 28) | (cmp << 24) | (oparg << 12) | r.below(4096);
                let nr2 = r.below(3);
                let fop = libc::FUTEX_WAKE_OP as u64 | pflag;
                // SAFETY: FUTEX_WAKE_OP writes the word at `addr2`: one of
                // the shared page, of this thread's heap words (atomics)
                // or of its regions mapped writable, or not writable.
                unsafe { self.futex(addr, fop, nr, nr2, addr2, encoded & 0xffff_ffff) };
            }
            3 => {
                let mask = match self.rng.weighted(&[70, 15, 10, 5]) {
                    0 => u64::from(u32::MAX),
                    1 => u64::MAX,
                    2 => self.rng.next_u64(),
                    _ => 0,
                };
                let mut flags = FUTEX2_SIZE_U32 | if private { FUTEX2_PRIVATE } else { 0 };
                if self.rng.chance(1, 15) {
                    flags = self.rng.interesting_u64() & 0xffff_ffff;
                }
                sys::stats().add(Counter::FutexWakes, 1);
                // SAFETY: futex_wake(2) writes nothing.
                unsafe { sys::other(SYS_FUTEX_WAKE, [addr, mask, nr, flags, 0, 0]) };
            }
            4 => {
                // Waiters of `addr` (if any) requeued to another word,
                // when `addr` holds `val3`.
                let addr2 = self.page_word();
                let cur = self.storable(addr).map(|w| w.load(Relaxed));
                let val3 = match cur {
                    Some(v) if self.rng.chance(3, 4) => v.into(),
                    _ => self.rng.next_u32().into(),
                };
                let op = libc::FUTEX_CMP_REQUEUE as u64 | pflag;
                let requeue = self.rng.below(3);
                // SAFETY: FUTEX_CMP_REQUEUE writes nothing.
                unsafe { self.futex(addr, op, nr, requeue, addr2, val3) };
            }
            _ => {
                // A waiter, for other threads' (and processes') wakes:
                // its value (or another: EAGAIN at once), a few ms.
                let cur = self.storable(addr).map(|w| w.load(Relaxed));
                let val = match cur {
                    Some(v) if self.rng.chance(4, 5) => v.into(),
                    _ => self.rng.next_u32().into(),
                };
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: self.rng.below(3_000_000) as i64,
                };
                let op = libc::FUTEX_WAIT as u64 | pflag;
                // SAFETY: FUTEX_WAIT reads `ts` (live) and writes nothing.
                unsafe { self.futex(addr, op, val, &ts as *const _ as u64, 0, 0) };
            }
        }
    }

    /// A child that stores to words of the shared page and wakes them
    /// shared, from another process (the watches with AEM_WATCH_SHARED
    /// see it; the others do not), then exits.
    fn poker_child(&mut self) {
        let seed = self.rng.next_u64();
        self.spawn_child(|w| {
            w.rng = Rng::new(seed);
            for _ in 0..w.rng.range(1, 30) {
                let addr = match w.watched.iter().filter(|x| w.sh.mem.is_word(x.0)).count() {
                    0 => w.page_word(),
                    _ if w.rng.chance(1, 4) => w.page_word(),
                    _ => {
                        let mine: Vec<u64> = w
                            .watched
                            .iter()
                            .filter(|x| w.sh.mem.is_word(x.0))
                            .map(|x| x.0)
                            .collect();
                        w.rng.pick(&mine)
                    }
                };
                if let Some(word) = w.storable(addr) {
                    word.fetch_add(1, Relaxed);
                }
                let private = w.rng.chance(1, 8);
                w.wake(addr, private);
                if w.rng.chance(1, 4) {
                    // SAFETY: no pointers.
                    unsafe { libc::usleep(w.rng.below(2000) as u32) };
                }
            }
        });
    }

    /// A watch on the word where this (short-lived) thread's tid is, which
    /// the kernel clears and wakes (shared: FUTEX_WAKE) when the thread
    /// exits (CLONE_CHILD_CLEARTID): polled, mostly with AEM_WATCH_SHARED,
    /// so that it outlives the thread and tells its end.
    fn watch_tid_word(&mut self) {
        let tid = sys::gettid() as u32;
        // SAFETY: pthread_self() is this thread's descriptor, mapped (at
        // the top of its stack) while it runs; the first 2 KiB of it are
        // read only.
        let me = unsafe { libc::pthread_self() } as *const u32;
        // SAFETY: as above.
        let Some(i) = (0..512).find(|&i| unsafe { std::ptr::read_volatile(me.add(i)) } == tid)
        else {
            return;
        };
        let addr = me as u64 + 4 * i as u64;
        let shared = self.rng.chance(3, 4);
        let mut a = [0u64; 11];
        a[0] = u64::from(uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH);
        a[1] = self.rng.below(100);
        a[4] = self.rng.next_u64();
        a[5] = addr;
        a[6] = u64::from(shared);
        // SAFETY: `a` is 88 bytes, the size passed.
        let id = unsafe { aem(sys::REGISTER, [a.as_ptr() as u64, 88, 0, 0, 0, 0]) };
        if id > 0 {
            MAX_ID.fetch_max(id as u32, Relaxed);
            sys::stats().add(Counter::Watches, 1);
            self.ids.push((id as u32, Reg::Plain));
        }
    }

    /// Map a region to watch words of: one to three pages, private or
    /// shared (anonymous, or a memfd's), written to or not.
    fn map_words(&mut self) {
        if self.maps.len() >= MAX_MAPS {
            let i = self.rng.below(self.maps.len() as u64) as usize;
            let m = self.maps.swap_remove(i);
            // SAFETY: a region this thread mapped for watch words.
            ign(unsafe { libc::munmap(m.addr as *mut _, m.len as usize) });
        }
        let len = 4096 * self.rng.range(1, 3);
        let (flags, fd) = match self.rng.weighted(&[45, 40, 15]) {
            0 => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
            1 => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
            _ => {
                // SAFETY: a C string literal.
                let fd =
                    unsafe { libc::memfd_create(c"aem-fuzz-words".as_ptr(), libc::MFD_CLOEXEC) };
                // SAFETY: no pointers.
                if fd < 0 || unsafe { libc::ftruncate(fd, len as i64) } != 0 {
                    sys::close(fd);
                    return;
                }
                (libc::MAP_SHARED, fd)
            }
        };
        // SAFETY: a new mapping, placed by the kernel: it touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        sys::close(fd);
        if p == libc::MAP_FAILED {
            return;
        }
        let m = WatchMap {
            addr: p as u64,
            len,
            writable: true,
            shared: flags & libc::MAP_SHARED != 0,
        };
        if self.rng.chance(3, 4) {
            // Faulted in (else the watch's registration faults it in).
            for page in 0..len / 4096 {
                let v = self.rng.below(4) as u32;
                if let Some(w) = self.storable(m.addr + 4096 * page) {
                    w.store(v, Relaxed);
                }
            }
        }
        self.maps.push(m);
    }

    /// The memory under the watches: regions mapped, unmapped (whole or a
    /// page of them), made read-only or inaccessible, or dropped
    /// (MADV_DONTNEED: zeros again) or moved (mremap: a shared key stays,
    /// the watched address does not); the heap words given back to malloc
    /// for new ones.  Watches whose words go are told -EFAULT; a word of
    /// the region is woken first at times, so that a delivery may find
    /// it gone.
    fn watch_mem(&mut self) {
        sys::stats().add(Counter::OtherCalls, 1);
        let what = self.rng.weighted(&[30, 25, 20, 10, 10, 6]);
        if what == 0 || self.maps.is_empty() {
            if what == 4 {
                self.heap = (0..HEAP_WORDS).map(|_| AtomicU32::new(0)).collect();
            } else {
                self.map_words();
            }
            return;
        }
        let i = self.rng.below(self.maps.len() as u64) as usize;
        let m = self.maps[i];
        if what != 4 && self.rng.chance(1, 2) {
            let inside: Vec<(u64, bool)> = self
                .watched
                .iter()
                .filter(|(a, _)| (m.addr..m.addr + m.len).contains(a))
                .copied()
                .collect();
            let (addr, shared) = if inside.is_empty() {
                (m.addr + 4 * self.word_index(1024), m.shared)
            } else {
                self.rng.pick(&inside)
            };
            self.poke(addr, shared);
        }
        match what {
            1 => {
                let pages = m.len / 4096;
                if pages > 1 && self.rng.chance(1, 2) {
                    // The first or the last page only.
                    let first = self.rng.chance(1, 2);
                    let at = if first { m.addr } else { m.addr + m.len - 4096 };
                    // SAFETY: a page of a region this thread mapped.
                    ign(unsafe { libc::munmap(at as *mut _, 4096) });
                    let rest = &mut self.maps[i];
                    rest.len -= 4096;
                    if first {
                        rest.addr += 4096;
                    }
                } else {
                    self.maps.swap_remove(i);
                    // SAFETY: a region this thread mapped.
                    ign(unsafe { libc::munmap(m.addr as *mut _, m.len as usize) });
                }
            }
            2 => {
                let prot = self.rng.pick(&[
                    libc::PROT_NONE,
                    libc::PROT_READ,
                    libc::PROT_READ | libc::PROT_WRITE,
                ]);
                // SAFETY: a region this thread mapped; it stores to it
                // only while it is writable.
                if unsafe { libc::mprotect(m.addr as *mut _, m.len as usize, prot) } == 0 {
                    self.maps[i].writable = prot & libc::PROT_WRITE != 0;
                }
            }
            3 => {
                // SAFETY: a region this thread mapped; nothing relies on
                // its contents.
                ign(unsafe {
                    libc::madvise(m.addr as *mut _, m.len as usize, libc::MADV_DONTNEED)
                });
            }
            4 => self.heap = (0..HEAP_WORDS).map(|_| AtomicU32::new(0)).collect(),
            _ => {
                // Grown only when private: a shared region (shmem, a
                // memfd) has no pages past its size (SIGBUS).
                let len = m.len
                    + if m.shared {
                        0
                    } else {
                        4096 * self.rng.below(2)
                    };
                // SAFETY: a region this thread mapped, moved where the
                // kernel likes (or grown in place); its old range is
                // unmapped and forgotten.
                let p = unsafe {
                    libc::mremap(
                        m.addr as *mut _,
                        m.len as usize,
                        len as usize,
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if p != libc::MAP_FAILED {
                    self.maps[i].addr = p as u64;
                    self.maps[i].len = len;
                }
            }
        }
    }

    // ---- overload: PSI triggers, cgroups ----

    /// The arguments of an overload registration (the union's words 0 to
    /// 2): mostly valid -- a resource, some or full, a window PSI takes
    /// (short ones from root only, now and then), a threshold within it,
    /// the system or a cgroup -- sometimes not.
    fn overload_args(&mut self) -> [u64; 3] {
        let root = !self.sh.cfg.unprivileged;
        let r = &mut self.rng;
        let resource = match r.weighted(&[30, 30, 30, 5, 5]) {
            0 => uapi::AEM_OVERLOAD_CPU,
            1 => uapi::AEM_OVERLOAD_MEMORY,
            2 => uapi::AEM_OVERLOAD_IO,
            3 => r.range(3, 8) as u32,
            _ => r.interesting_u64() as u32,
        };
        let kind = match r.weighted(&[55, 35, 5, 5]) {
            0 => 0,
            1 => uapi::AEM_OVERLOAD_FULL,
            2 => r.next_u32(),
            _ => 1 << r.below(32),
        };
        let window: u64 = match r.weighted(&[60, if root { 15 } else { 2 }, 2, 4, 4, 4, 4]) {
            0 => 2_000_000 * r.range(1, 5),
            // Root only: PSI's real-time poller.
            1 => {
                let any = r.range(500_001, 9_999_999);
                r.pick(&[500_000, 1_000_000, 1_500_000, any])
            }
            // Below the documented 500 ms.
            2 => r.range(1, 499_999),
            3 => 0,
            4 => r.pick(&[10_000_001, 12_000_000, 20_000_000, u64::from(u32::MAX)]),
            5 => r.interesting_u64() & 0xffff_ffff,
            // Not a multiple of 2 s: root only.
            _ => 2_000_000 * r.range(1, 4) + r.pick(&[1, 1000, 1_000_000]),
        };
        let w = window.clamp(1, u64::from(u32::MAX));
        let threshold: u64 = match r.weighted(&[40, 25, 8, 6, 6, 5, 5]) {
            0 => r.range(1, (w / 10).max(1)),
            1 => r.range(1, w),
            2 => w,
            3 => (w + 1) & 0xffff_ffff,
            4 => 0,
            5 => 1,
            _ => r.interesting_u64() & 0xffff_ffff,
        };
        let cgroup_fd: i32 = match self.rng.weighted(&[55, 25, 8, 4, 4, 4]) {
            0 => -1,
            1 => self.cgroup_fd(),
            2 => self.any_fd(),
            3 => self.rng.pick(&[-2, -3, i32::MIN, i32::MAX]),
            4 => self.rng.below(1024) as i32,
            _ => self.rng.next_u32() as i32,
        };
        let reserved = if self.rng.chance(1, 25) {
            self.rng.next_u32() | 1
        } else {
            0
        };
        [
            u64::from(resource) | (u64::from(kind) << 32),
            threshold | (window << 32),
            u64::from(cgroup_fd as u32) | (u64::from(reserved) << 32),
        ]
    }

    /// Keep PSI's costs bounded, whatever the attributes `a` of an
    /// overload registration: at most [`MAX_OVERLOADS`] live ones per
    /// thread (one in a forked child) -- beyond that, now and then the
    /// oldest goes for the new one, else there is none (None: they live
    /// long enough to fire, a window or more); at most
    /// [`MAX_SHORT_OVERLOADS`] with short windows (root's: polled in real
    /// time), a longer window otherwise.  Returns what to remember of the
    /// registration.
    fn bound_overloads(&mut self, a: &mut [u64; 11]) -> Option<Reg> {
        let max = if self.child { 1 } else { MAX_OVERLOADS };
        if self.ids.iter().filter(|(_, r)| r.is_overload()).count() >= max {
            if !self.rng.chance(1, 4) {
                return None;
            }
            while self.ids.iter().filter(|(_, r)| r.is_overload()).count() >= max {
                let Some(i) = self.ids.iter().position(|(_, r)| r.is_overload()) else {
                    break;
                };
                let (id, _) = self.ids.remove(i);
                ctl(u64::from(id), u64::from(uapi::AEM_CTL_UNREGISTER), 0);
            }
        }
        let window = a[6] >> 32;
        if self.sh.cfg.unprivileged || !is_short_window(window) {
            return Some(Reg::Overload);
        }
        let short = self
            .ids
            .iter()
            .filter(|(_, r)| *r == Reg::ShortOverload)
            .count();
        if self.child || short >= MAX_SHORT_OVERLOADS {
            let longer = window.div_ceil(2_000_000) * 2_000_000;
            a[6] = (a[6] & 0xffff_ffff) | (longer << 32);
            return Some(Reg::Overload);
        }
        Some(Reg::ShortOverload)
    }

    /// A cgroup's descriptor for an overload registration: from the pool
    /// mostly, or opened now; -1 when there is none.
    fn cgroup_fd(&mut self) -> i32 {
        if let Some(fd) = self.pool_fd_of(&[Kind::Cgroup]) {
            if self.rng.chance(3, 4) {
                return fd;
            }
        }
        self.cgroup_open();
        self.pool_fd_of(&[Kind::Cgroup]).unwrap_or(-1)
    }

    /// Cgroups for the overload registrations: made (as root) and opened
    /// into the pool, removed while registrations hold them, with busy
    /// children in them (pressure), their controllers or their PSI
    /// accounting (cgroup.pressure) changed; and now and then a directory
    /// or a file that is not a cgroup.
    fn cgroup(&mut self) {
        sys::stats().add(Counter::OtherCalls, 1);
        match self.rng.weighted(&[30, 25, 25, 12, 4, 4]) {
            0 => self.cgroup_mkdir(),
            1 => self.cgroup_open(),
            2 => self.cgroup_rmdir(),
            3 => self.cgroup_busy_child(),
            4 => {
                let dir = if !self.cgroups.is_empty() && self.rng.chance(1, 2) {
                    self.rng
                        .pick(&self.cgroups.iter().collect::<Vec<_>>())
                        .clone()
                } else {
                    CGROUP_ROOT.to_string()
                };
                if self.rng.chance(1, 3) {
                    // PSI accounting of the cgroup off (its pressure files
                    // hidden) and on again, under the triggers on it.
                    let on = self.rng.pick(&["0", "1", "1"]);
                    let _ = std::fs::write(format!("{dir}/cgroup.pressure"), on);
                } else {
                    let ctl = self.rng.pick(&[
                        "+memory",
                        "+cpu",
                        "+io",
                        "+memory +io",
                        "-memory",
                        "-cpu",
                        "-io",
                    ]);
                    let _ = std::fs::write(format!("{dir}/cgroup.subtree_control"), ctl);
                }
            }
            _ => {
                let path = self.rng.pick(&[
                    "/tmp",
                    "/proc",
                    "/sys/fs/cgroup/cgroup.procs",
                    "/sys/fs/cgroup/cpu.pressure",
                    "/proc/pressure/cpu",
                ]);
                let c = CString::new(path).expect("no NUL");
                // SAFETY: a NUL-terminated path.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                self.add_fd(fd, Kind::Cgroup);
            }
        }
    }

    /// Make a cgroup (as root): under the root, or under one of ours.
    fn cgroup_mkdir(&mut self) {
        if self.sh.cfg.unprivileged {
            return;
        }
        if self.cgroups.len() >= MAX_CGROUPS {
            let old = self.cgroups.remove(0);
            let _ = std::fs::remove_dir(old);
        }
        let parent = if !self.cgroups.is_empty() && self.rng.chance(1, 5) {
            self.rng
                .pick(&self.cgroups.iter().collect::<Vec<_>>())
                .clone()
        } else {
            CGROUP_ROOT.to_string()
        };
        self.serial += 1;
        let path = format!(
            "{parent}/{CGROUP_PREFIX}{}.{}.{}",
            sys::getpid(),
            sys::gettid(),
            self.serial
        );
        if std::fs::create_dir(&path).is_ok() {
            sys::stats().add(Counter::Cgroups, 1);
            self.cgroups.push(path.clone());
            self.open_dir(&path);
        }
    }

    /// Open a cgroup into the pool: one of ours, the root, or another one
    /// there (another worker's).
    fn cgroup_open(&mut self) {
        let path = match self.rng.weighted(&[50, 25, 25]) {
            0 if !self.cgroups.is_empty() => self
                .rng
                .pick(&self.cgroups.iter().collect::<Vec<_>>())
                .clone(),
            2 => {
                let others = subdirs(CGROUP_ROOT);
                if others.is_empty() {
                    CGROUP_ROOT.to_string()
                } else {
                    self.rng.pick(&others.iter().collect::<Vec<_>>()).clone()
                }
            }
            _ => CGROUP_ROOT.to_string(),
        };
        self.open_dir(&path);
    }

    fn open_dir(&mut self, path: &str) {
        let Ok(c) = CString::new(path) else {
            return;
        };
        // SAFETY: a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        self.add_fd(fd, Kind::Cgroup);
    }

    /// Remove one of our cgroups: registrations may hold it (and the pool
    /// its descriptor); a cgroup with tasks or children stays (EBUSY).
    fn cgroup_rmdir(&mut self) {
        if self.cgroups.is_empty() {
            return;
        }
        let i = self.rng.below(self.cgroups.len() as u64) as usize;
        match std::fs::remove_dir(&self.cgroups[i]) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {}
            _ => {
                self.cgroups.swap_remove(i);
            }
        }
    }

    /// A child that moves into one of our cgroups (maybe with a low
    /// memory.high first) and keeps a CPU busy, and maybe touches some
    /// memory, for a few ms: pressure there for the registrations on it.
    fn cgroup_busy_child(&mut self) {
        if self.cgroups.is_empty() || self.sh.cfg.avoids(crate::AVOID_FORK) {
            return;
        }
        let dir = self
            .rng
            .pick(&self.cgroups.iter().collect::<Vec<_>>())
            .clone();
        if self.rng.chance(1, 4) {
            let high = self.rng.pick(&["1M", "4M", "max"]);
            let _ = std::fs::write(format!("{dir}/memory.high"), high);
        }
        let ms = self.rng.range(5, 50);
        let touch = if self.rng.chance(1, 3) {
            (self.rng.range(1, 4) << 20) as usize
        } else {
            0
        };
        self.spawn_child(|_| {
            let _ = std::fs::write(format!("{dir}/cgroup.procs"), "0");
            if touch > 0 {
                let p = sys::map(touch, libc::PROT_READ | libc::PROT_WRITE);
                for off in (0..touch).step_by(4096) {
                    // SAFETY: within the fresh mapping.
                    unsafe { std::ptr::write_volatile(p.add(off), 1) };
                }
            }
            let end = sys::now_ns(libc::CLOCK_MONOTONIC) + ms * 1_000_000;
            while sys::now_ns(libc::CLOCK_MONOTONIC) < end {
                std::hint::spin_loop();
            }
        });
    }

    /// Write kernel.aem_overload_trigger (root, main flows: it is removed
    /// at the end of the run): valid triggers, whose firings set and clear
    /// kernel.aem_overload by themselves; removals; and triggers PSI or
    /// the parser refuses (EINVAL, the previous one stays).
    fn overload_trigger(&mut self) {
        if self.sh.cfg.unprivileged
            || self.sh.cfg.avoids(crate::AVOID_OVERLOAD)
            || self.slot.is_none()
        {
            return;
        }
        let r = &mut self.rng;
        let res = |r: &mut Rng| r.pick(&["cpu", "memory", "io"]);
        let kind = |r: &mut Rng| r.pick(&["some", "full"]);
        let text: Vec<u8> = match r.weighted(&[55, 12, 20, 5, 5, 3]) {
            0 => {
                let window = match r.weighted(&[60, 30, 10]) {
                    0 => 2_000_000 * r.range(1, 5),
                    1 => r.range(500_000, 10_000_000),
                    _ => r.range(1, 499_999),
                };
                let threshold = if r.chance(2, 3) {
                    r.range(1, (window / 10).max(1))
                } else {
                    r.range(1, window)
                };
                let (res, kind) = (res(r), kind(r));
                let nl = if r.chance(1, 2) { "\n" } else { "" };
                format!("{res} {kind} {threshold} {window}{nl}").into_bytes()
            }
            1 => r.pick(&["\n", "", " \n", "\t\n"]).into(),
            2 => {
                let (res, kind) = (res(r), kind(r));
                let bad = match r.below(10) {
                    0 => "irq full 1000 1000000".to_string(),
                    1 => "CPU some 1000 2000000".to_string(),
                    2 => format!("{res} half 1000 2000000"),
                    3 => format!("{res} {kind} 0 2000000"),
                    4 => format!("{res} {kind} 3000000 2000000"),
                    5 => format!("{res} {kind} 1000 0"),
                    6 => format!("{res} {kind} 1000 10000001"),
                    7 => format!("{res} {kind} 1000"),
                    8 => format!("{res} {kind} -1 -1"),
                    _ => format!("{res} {kind} 99999999999 99999999999"),
                };
                bad.into_bytes()
            }
            3 => {
                // Longer than the sysctl's 64 bytes: cut.
                let (res, kind) = (res(r), kind(r));
                format!(
                    "{res} {kind} 100000 2000000{}",
                    " 1".repeat(r.range(20, 60) as usize)
                )
                .into_bytes()
            }
            4 => {
                let (res, kind) = (res(r), kind(r));
                format!(
                    "  {res}   {kind}\t{} {} extra",
                    r.range(1, 100_000),
                    2_000_000 * r.range(1, 5)
                )
                .into_bytes()
            }
            _ => (0..r.range(1, 70))
                .map(|_| r.pick(b"cpu somefull0123456789 \n\0\xff\t-"))
                .collect(),
        };
        sys::stats().add(Counter::TriggerWrites, 1);
        sys::stats().add(Counter::OtherCalls, 1);
        let _ = std::fs::write(OVERLOAD_TRIGGER, &text);
        if self.rng.chance(1, 4) {
            let _ = std::fs::read(OVERLOAD_TRIGGER);
        }
    }

    // ---- processes, threads, the system ----

    /// The process a process-exit registration names: (pidfd, pid), with
    /// pidfd -1 for a child by pid.  Children that exit within
    /// milliseconds (with a random code, or killed by a random signal),
    /// by pid or by pidfd; this process or its parent by pidfd; any
    /// descriptor as a pidfd; pids that are not children.
    fn process_target(&mut self) -> (i32, i32) {
        match self.rng.below(8) {
            0..=2 => {
                let child = self.short_lived_child();
                if self.rng.chance(1, 2) {
                    return (-1, child);
                }
                // SAFETY: no pointers.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as i32;
                self.add_fd(fd, Kind::Other);
                (fd, 0)
            }
            3 => {
                let who = if self.rng.chance(1, 2) {
                    sys::getpid()
                } else {
                    // SAFETY: no arguments.
                    unsafe { libc::getppid() }
                };
                let flags = if self.rng.chance(1, 4) {
                    libc::O_EXCL as u32 // PIDFD_THREAD
                } else {
                    0
                };
                // SAFETY: no pointers.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, who, flags) } as i32;
                self.add_fd(fd, Kind::Other);
                (fd, 0)
            }
            4 => (self.any_fd(), 0),
            5 => (-1, self.rng.range(1, 500) as i32),
            _ => (
                self.rng.interesting_u64() as i32,
                self.rng.interesting_u64() as i32,
            ),
        }
    }

    /// A child that exits within a few milliseconds, or -1; reaped by
    /// [`Self::reap`].
    fn short_lived_child(&mut self) -> i32 {
        if self.child {
            return -1;
        }
        let delay_us = self.rng.below(3000) as u32;
        let code = self.rng.below(256) as i32;
        let signal =
            [0, 0, libc::SIGKILL, libc::SIGTERM, libc::SIGSEGV][self.rng.below(5) as usize];
        // SAFETY: the child makes only async-signal-safe calls and leaves
        // with _exit (or dies of the signal).
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::usleep(delay_us);
                if signal != 0 {
                    libc::signal(signal, libc::SIG_DFL);
                    libc::raise(signal);
                }
                libc::_exit(code);
            }
            pid
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: a live int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if libc::WIFSIGNALED(status) {
                sys::stats().add(Counter::ChildSignals, 1);
            }
        }
    }

    /// fork(); in the child, `f` runs, then the child exits.
    fn spawn_child(&mut self, f: impl FnOnce(&mut Self)) -> bool {
        if self.child {
            return false;
        }
        // SAFETY: fork in a threaded process: the child runs the fuzz
        // loop as a single thread (no locks it could find held), then
        // exits without unwinding.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            crate::report_fatal_signals(false);
            self.child = true;
            self.slot = None;
            sys::alarm(10);
            f(self);
            sys::exit_group(0);
        }
        pid > 0
    }

    fn fork(&mut self) {
        if self.sh.cfg.avoids(crate::AVOID_FORK) {
            return;
        }
        let seed = self.rng.next_u64();
        if self.spawn_child(|w| {
            w.rng = Rng::new(seed);
            let n = w.rng.range(10, 200);
            w.run(n);
        }) {
            sys::stats().add(Counter::Forks, 1);
        }
    }

    fn exec(&mut self) {
        if self.sh.cfg.avoids(crate::AVOID_EXEC) {
            return;
        }
        let seed = self.rng.next_u64();
        let spawned = self.spawn_child(|w| {
            w.rng = Rng::new(seed);
            // Leave some registrations, an area and blocked delivery
            // behind for exec to tear down.
            let n = w.rng.range(5, 40);
            w.run(n);
            if w.rng.chance(1, 2) {
                ctl(0, u64::from(uapi::AEM_CTL_BLOCK), 0);
            }
            if w.rng.chance(1, 3) {
                // exec from a second thread: de_thread() kills the first.
                let t = std::thread::spawn(move || handler::exec_child(seed));
                let _ = t.join();
            } else {
                handler::exec_child(seed);
            }
        });
        if spawned {
            sys::stats().add(Counter::Execs, 1);
        }
    }

    fn sacrifice(&mut self) {
        if self.sh.cfg.avoids(crate::AVOID_SACRIFICE) {
            return;
        }
        let seed = self.rng.next_u64();
        if self.spawn_child(|w| crate::sacrifice::run(w, seed)) {
            sys::stats().add(Counter::Sacrifices, 1);
        }
    }

    fn thread(&mut self) {
        if self.child || self.slot.is_none() || self.sh.cfg.avoids(crate::AVOID_THREADS) {
            return;
        }
        sys::stats().add(Counter::Threads, 1);
        let seed = derive(self.seed, self.rng.next_u64());
        let sh = self.sh;
        let own = self.own;
        let watched = self.watched.clone();
        // A short-lived thread: inline registrations, maybe an area, then
        // it ends with them still registered (or not).  It borrows this
        // thread's own pages, unused while this one waits for it.
        let ids = std::thread::scope(|s| {
            s.spawn(move || {
                let mut w = Worker::new(sh, seed, None, Some(own));
                // It wakes this thread's watched words too.
                w.watched = watched;
                if w.rng.chance(1, 2) {
                    w.watch_tid_word();
                }
                let calls = w.rng.range(3, 30);
                w.run(calls);
                w.ids.clone()
            })
            .join()
            .unwrap_or_default()
        });
        for (id, reg) in ids {
            let overloads = self.ids.iter().filter(|(_, r)| r.is_overload()).count();
            if self.ids.len() < self.cap && (!reg.is_overload() || overloads < MAX_OVERLOADS) {
                self.ids.push((id, reg));
            } else {
                ctl(u64::from(id), u64::from(uapi::AEM_CTL_UNREGISTER), 0);
            }
        }
    }

    fn overload(&mut self) {
        if self.sh.cfg.avoids(crate::AVOID_OVERLOAD) {
            return;
        }
        sys::stats().add(Counter::Overloads, 1);
        let (path, value) = if self.rng.chance(2, 3) {
            (
                "/proc/sys/kernel/aem_overload",
                self.rng.below(2).to_string(),
            )
        } else {
            (
                "/proc/sys/kernel/aem_shed_below",
                self.rng.below(101).to_string(),
            )
        };
        let _ = std::fs::write(path, value);
    }

    fn proc_read(&mut self) {
        sys::stats().add(Counter::OtherCalls, 1);
        let pid = if self.rng.chance(1, 2) {
            sys::getpid()
        } else {
            // Some other process of the run, maybe gone.
            sys::getpid() + self.rng.range(0, 40) as i32 - 20
        };
        let file = match self.pool_fd() {
            // A descriptor of ours (a topic's says its name, owner, mode,
            // publications and subscribers).
            Some(fd) if self.rng.chance(1, 3) => format!("fdinfo/{fd}"),
            _ => self
                .rng
                .pick(&["aem", "status", "fdinfo/3", "stat"])
                .to_string(),
        };
        let _ = std::fs::read(format!("/proc/{pid}/{file}"));
    }

    fn sleep(&mut self) {
        let ms = self.rng.below(3) as i32;
        let mut pfds: Vec<libc::pollfd> = self
            .fds
            .iter()
            .take(16)
            .map(|(fd, _)| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            })
            .collect();
        sys::stats().add(Counter::OtherCalls, 1);
        // SAFETY: a live array of that many pollfds.
        ign(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as u64, ms) });
    }

    fn rlimit(&mut self) {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: live rlimits.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
                rl.rlim_cur = self.rng.range(64, rl.rlim_max.clamp(64, 1024));
                ign(libc::setrlimit(libc::RLIMIT_NOFILE, &rl));
            }
        }
        if self.sh.cfg.avoids(crate::AVOID_PILEUP) {
            let threads = self.sh.cfg.threads.max(1) as usize;
            self.cap = (self.sh.cfg.cap / threads)
                .min(nofile_soft() as usize / 2 / threads)
                .max(4);
        }
    }

    /// Run the sacrificial scenarios' fuzz loop (a sacrificial child).
    pub fn run_sacrificial(&mut self, calls: u64) {
        self.run(calls);
    }

    /// This worker's memory (for the sacrificial scenarios).
    pub fn mem(&self) -> Mem {
        self.sh.mem
    }
}

/// A periodic fork event costs its thread a fork per period: under a
/// debug kernel a fork takes milliseconds, and a faster timer leaves the
/// thread no time of its own (as an inline handler slower than its timer
/// would), which the watchdog takes for a hang.  Keep such timers at 50 ms
/// or slower, whether the rest of `a` is sane or not.
fn pace_fork_timer(a: &mut [u64; 11]) {
    let flags = (a[0] >> 32) as u32;
    if flags & uapi::AEM_EV_FORK != 0
        && (a[0] & 0xffff_ffff) as u32 == uapi::aem_source_kind::AEM_SOURCE_TIMER
    {
        const MIN_NS: u64 = 50_000_000;
        if a[7] != 0 && a[7] < MIN_NS {
            a[7] = MIN_NS;
        }
        if a[6] < MIN_NS {
            a[6] = MIN_NS;
        }
    }
}

/// A fork event that stays pending -- a level fd watch (on an fd that
/// stays ready), a topic subscription (level by nature, with publishers
/// that keep publishing) -- forks on every way out to user mode, the way
/// out of the page fault its own fork's copy-on-write causes included:
/// its thread never runs again (known bug d, `--repro
/// fork-cow-livelock`).  With the class avoided, such events get
/// AEM_EV_DISPATCH: one fork, then disabled until an enable.
fn dispatch_pending_forks(a: &mut [u64; 11]) {
    let source = (a[0] & 0xffff_ffff) as u32;
    let flags = (a[0] >> 32) as u32;
    let pending = match source {
        uapi::aem_source_kind::AEM_SOURCE_FD => flags & uapi::AEM_EV_LEVEL != 0,
        uapi::aem_source_kind::AEM_SOURCE_TOPIC => true,
        _ => false,
    };
    if flags & uapi::AEM_EV_FORK != 0 && pending {
        a[0] |= u64::from(uapi::AEM_EV_DISPATCH) << 32;
    }
}

/// Make the attributes `a` (as u64 words) valid but for the source's
/// arguments: a known source, known flags, a priority in range, no
/// reserved or stray bits, a timer that the kernel takes.
fn sanitize(a: &mut [u64; 11]) {
    let mut source = (a[0] & 0xffff_ffff) as u32;
    if !is_sanitized_kind(source) {
        source = uapi::aem_source_kind::AEM_SOURCE_TIMER;
    }
    let mut flags = ((a[0] >> 32) as u32) & 0x1ff;
    let inline = a[2] != 0 && a[3] != 0;
    if !inline {
        a[2] = 0;
        a[3] = 0;
        flags &= !(uapi::AEM_EV_ONSTACK
            | uapi::AEM_EV_NOBOOST
            | uapi::AEM_EV_POOL
            | uapi::AEM_EV_FORK
            | uapi::AEM_EV_NOCLDWAIT);
    } else {
        a[2] = handler::handler();
        a[3] = handler::restorer();
    }
    if source == uapi::aem_source_kind::AEM_SOURCE_TIMER {
        flags &= !uapi::AEM_EV_LEVEL;
        let clock = (a[5] & 0xffff_ffff) as i32;
        if ![
            libc::CLOCK_MONOTONIC,
            libc::CLOCK_REALTIME,
            libc::CLOCK_BOOTTIME,
        ]
        .contains(&clock)
        {
            a[5] = libc::CLOCK_MONOTONIC as u64;
        }
        a[5] &= 0x1_ffff_ffff; // ABSTIME at most
        if a[6] == 0 || a[6] > i64::MAX as u64 {
            a[6] = 2_000_000;
        }
        if a[7] != 0 && !(1000..=i64::MAX as u64).contains(&a[7]) {
            a[7] = 0;
        }
        if inline && a[7] != 0 {
            a[7] = a[7].max(1_000_000);
        }
        a[8..].fill(0);
    } else if source == uapi::aem_source_kind::AEM_SOURCE_READ {
        let len = (a[5] >> 32).clamp(1, 1 << 16);
        a[5] = (a[5] & 0xffff_ffff) | (len << 32);
        a[7..].fill(0);
    } else if source == uapi::aem_source_kind::AEM_SOURCE_PROCESS_EXIT {
        // An exit happens once: no level.
        flags &= !uapi::AEM_EV_LEVEL;
        a[6..].fill(0);
    } else if source == uapi::aem_source_kind::AEM_SOURCE_TOPIC
        || source == uapi::aem_source_kind::AEM_SOURCE_MODULE
    {
        // The fd or the type, flags 0.  A module type has no level to
        // re-arm on (the kernel refuses AEM_EV_LEVEL); a topic is
        // level-triggered whatever the flags say.
        if source == uapi::aem_source_kind::AEM_SOURCE_MODULE {
            flags &= !uapi::AEM_EV_LEVEL;
        }
        a[5] &= 0xffff_ffff;
        a[6..].fill(0);
    } else if source == uapi::aem_source_kind::AEM_SOURCE_OVERLOAD {
        // A known resource and kind, a window PSI takes (from root at
        // least: windows that are not a multiple of 2 s are kept), a
        // threshold within it, reserved 0; the cgroup fd is the source's
        // argument.  No level (the kernel refuses it).
        flags &= !uapi::AEM_EV_LEVEL;
        let resource = (a[5] & 0xffff_ffff) % 3;
        let kind = (a[5] >> 32) & u64::from(uapi::AEM_OVERLOAD_FULL);
        a[5] = resource | (kind << 32);
        let mut window = a[6] >> 32;
        if !(500_000..=10_000_000).contains(&window) {
            window = 2_000_000 * (1 + window % 5);
        }
        let mut threshold = a[6] & 0xffff_ffff;
        if threshold == 0 || threshold > window {
            threshold = 1 + threshold % window;
        }
        a[6] = threshold | (window << 32);
        a[7] &= 0xffff_ffff;
        a[8..].fill(0);
    } else if source == uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH {
        // An aligned address (mapped or not: the source's argument), the
        // flags the kernel knows, reserved 0.  No level.
        flags &= !uapi::AEM_EV_LEVEL;
        a[5] &= !3;
        a[6] &= u64::from(uapi::AEM_WATCH_SHARED);
        a[7..].fill(0);
    } else {
        a[6..].fill(0);
    }
    // A child runs a fork event's handler, or a pool thread: not both;
    // and children that reap themselves.
    if flags & uapi::AEM_EV_FORK != 0 {
        flags &= !uapi::AEM_EV_POOL;
        flags |= uapi::AEM_EV_NOCLDWAIT;
    } else {
        flags &= !uapi::AEM_EV_NOCLDWAIT;
    }
    a[0] = u64::from(source) | (u64::from(flags) << 32);
    a[1] %= 100;
}

/// Whether [`sanitize`] keeps source kind `source`: the kinds the
/// kernel knows, whose arguments the fuzzer models.
fn is_sanitized_kind(source: u32) -> bool {
    matches!(source, 1..=10)
}

/// The subdirectories of `dir`, as paths.  Not with std::fs::read_dir,
/// which panics when closedir() fails: another thread may have closed
/// or replaced its descriptor meanwhile (fd_close, fd_dup2).
fn subdirs(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(c) = CString::new(dir) else {
        return out;
    };
    // SAFETY: a NUL-terminated path; the entries are read before the
    // next readdir(), the stream closed once (its errors ignored).
    unsafe {
        let d = libc::opendir(c.as_ptr());
        if d.is_null() {
            return out;
        }
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
            let name = name.to_string_lossy();
            if (*e).d_type == libc::DT_DIR && name != "." && name != ".." {
                out.push(format!("{dir}/{name}"));
            }
        }
        libc::closedir(d);
    }
    out
}

/// Whether `fd` is an AEM topic now.
fn is_topic_fd(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().contains("[aem-topic]"))
        .unwrap_or(false)
}

/// Whether `fd` is an AEM context file now.
fn is_context_fd(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().contains("[aem]"))
        .unwrap_or(false)
}

/// The soft RLIMIT_NOFILE.
pub fn nofile_soft() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur
    } else {
        1024
    }
}

/// Unblock every signal but SIGUSR1 (signalfd's), after a handler
/// returned through a frame with another mask.
fn restore_mask() {
    // SAFETY: a local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn sockaddr_in(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn size_of_sin() -> u32 {
    std::mem::size_of::<libc::sockaddr_in>() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitized_attributes_are_valid() {
        let mut r = Rng::new(3);
        let mut seen = [false; 11];
        for i in 0..2000 {
            let mut a = [0u64; 11];
            for w in a.iter_mut() {
                *w = r.interesting_u64();
            }
            if i % 2 == 0 {
                // Each kind in turn (0 becomes a timer).
                a[0] = (a[0] & !0xffff_ffff) | (i / 2 % 11) as u64;
            }
            sanitize(&mut a);
            let source = a[0] as u32;
            let flags = (a[0] >> 32) as u32;
            assert!(is_sanitized_kind(source), "source {source}");
            seen[source as usize] = true;
            assert_eq!(flags & !0x1ff, 0);
            if flags & uapi::AEM_EV_FORK != 0 {
                assert_eq!(flags & uapi::AEM_EV_POOL, 0, "fork and pool");
                assert_ne!(
                    flags & uapi::AEM_EV_NOCLDWAIT,
                    0,
                    "children reap themselves"
                );
            } else {
                assert_eq!(flags & uapi::AEM_EV_NOCLDWAIT, 0, "nocldwait alone");
            }
            assert!(a[1] < 100, "priority and reserved0");
            assert_eq!(a[2] == 0, a[3] == 0, "handler and restorer go together");
            if source == uapi::aem_source_kind::AEM_SOURCE_TIMER {
                assert!(a[6] != 0 && a[6] <= i64::MAX as u64);
                assert!(a[7] == 0 || a[7] >= 1000);
                assert!(a[8..].iter().all(|&w| w == 0));
            }
            if source == uapi::aem_source_kind::AEM_SOURCE_TOPIC
                || source == uapi::aem_source_kind::AEM_SOURCE_MODULE
            {
                assert_eq!(a[5] >> 32, 0, "topic and module flags are 0");
                assert!(a[6..].iter().all(|&w| w == 0), "rest of the union");
            }
            if source == uapi::aem_source_kind::AEM_SOURCE_MODULE {
                assert_eq!(flags & uapi::AEM_EV_LEVEL, 0, "a module type has no level");
            }
            if source == uapi::aem_source_kind::AEM_SOURCE_OVERLOAD {
                assert_eq!(flags & uapi::AEM_EV_LEVEL, 0, "overload has no level");
                assert!(a[5] & 0xffff_ffff <= u64::from(uapi::AEM_OVERLOAD_IO));
                assert_eq!(a[5] >> 32 & !u64::from(uapi::AEM_OVERLOAD_FULL), 0);
                let (threshold, window) = (a[6] & 0xffff_ffff, a[6] >> 32);
                assert!((500_000..=10_000_000).contains(&window), "window {window}");
                assert!((1..=window).contains(&threshold), "threshold {threshold}");
                assert_eq!(a[7] >> 32, 0, "reserved");
                assert!(a[8..].iter().all(|&w| w == 0), "rest of the union");
            }
            if source == uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH {
                assert_eq!(flags & uapi::AEM_EV_LEVEL, 0, "a watch has no level");
                assert_eq!(a[5] % 4, 0, "aligned");
                assert_eq!(a[6] & !u64::from(uapi::AEM_WATCH_SHARED), 0);
                assert!(a[7..].iter().all(|&w| w == 0), "rest of the union");
            }
        }
        for (kind, seen) in seen.iter().enumerate().skip(1) {
            assert!(seen, "source {kind} never kept");
        }
        assert!(!is_sanitized_kind(0) && !is_sanitized_kind(11));
    }

    #[test]
    fn short_windows() {
        assert!(is_short_window(500_000) && is_short_window(1) && is_short_window(3_000_000));
        assert!(!is_short_window(2_000_000) && !is_short_window(10_000_000));
        assert!(!is_short_window(0) && !is_short_window(10_000_001));
    }

    #[test]
    fn op_names() {
        assert_eq!(op_name(0), "query");
        assert_eq!(op_name(9999), "?");
        assert!(OPS.iter().all(|o| o.1 > 0));
        for name in [
            "topic_open",
            "topic_publish",
            "futex_poke",
            "watch_mem",
            "cgroup",
            "overload_trigger",
        ] {
            assert!(OPS.iter().any(|o| o.0 == name), "{name}");
        }
        // Names are unique: a report names one operation.
        for (i, o) in OPS.iter().enumerate() {
            assert!(OPS[..i].iter().all(|p| p.0 != o.0), "{} twice", o.0);
        }
    }

    #[test]
    fn topic_names_are_valid() {
        for name in TOPIC_NAMES {
            assert!(!name.is_empty() && name.len() <= uapi::AEM_TOPIC_NAME_MAX as usize);
            assert!(!name.contains('/') && !name.contains('\0'));
        }
    }
}
