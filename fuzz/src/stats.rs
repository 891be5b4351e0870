//! Counters shared by every process of a run: a `MAP_SHARED` anonymous
//! mapping made before the first fork, updated with atomics (also from
//! inline handlers and forked children), read by the parent for the
//! summary.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The six AEM system calls, in system call number order.
pub const SYSCALL_NAMES: [&str; 6] = [
    "aem_query",
    "aem_register",
    "aem_ctl",
    "aem_wait",
    "aem_return",
    "aem_thread_area",
];

/// Histogram slots per system call: 0 counts successes, `e` errno `e`
/// (1 ..= 133), the last one anything else.
pub const ERRNO_SLOTS: usize = 135;

/// Named event counters (indexes into [`Stats::counters`]).
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Counter {
    /// Fuzzer operations made by main flows.
    Ops,
    /// Other system calls made to set things up (fds, forks, ...).
    OtherCalls,
    /// Inline handler invocations.
    HandlerRuns,
    /// Handlers that ended by calling aem_return() themselves.
    DirectReturns,
    /// Handlers that returned through a copied, altered frame.
    CraftedReturns,
    /// Forks made from inline handlers.
    HandlerForks,
    /// Forks made by main flows (children that run a short fuzz).
    Forks,
    /// Exec children that started.
    Execs,
    /// Sacrificial children started (crafted frames, bad handlers, ...).
    Sacrifices,
    /// Sacrificial or forked children that died of a signal (expected).
    ChildSignals,
    /// Polled records taken by aem_wait().
    Records,
    /// Short-lived threads spawned.
    Threads,
    /// Storms broken by a handler (too many runs without progress).
    Storms,
    /// Overload toggles written to kernel.aem_overload.
    Overloads,
    /// Topics opened or created (AEM_CTL_TOPIC_OPEN that returned an fd).
    TopicOpens,
    /// Payloads published to topics (8 bytes written each).
    Publications,
    /// Memory watches registered (AEM_SOURCE_MEMORY_WATCH, successful).
    Watches,
    /// Overload registrations made (AEM_SOURCE_OVERLOAD, successful).
    OverloadRegs,
    /// Futex wakes (and waits) made on words that may be watched.
    FutexWakes,
    /// Writes to kernel.aem_overload_trigger.
    TriggerWrites,
    /// Cgroups created (mkdir under /sys/fs/cgroup).
    Cgroups,
    /// Deliveries of memory watches: handler runs, and polled records
    /// read back from a thread's own pages.
    WatchRecords,
    /// Deliveries of overload events, counted the same way.
    OverloadRecords,
}

/// How many [`Counter`]s there are.
pub const COUNTERS: usize = 23;

/// Names of the counters, in [`Counter`] order.
pub const COUNTER_NAMES: [&str; COUNTERS] = [
    "ops",
    "other_calls",
    "handler_runs",
    "direct_returns",
    "crafted_returns",
    "handler_forks",
    "forks",
    "execs",
    "sacrifices",
    "child_signals",
    "records",
    "threads",
    "storms",
    "overloads",
    "topic_opens",
    "publications",
    "watches",
    "overload_regs",
    "futex_wakes",
    "trigger_writes",
    "cgroups",
    "watch_records",
    "overload_records",
];

/// Most worker threads a run tracks (for the "last operation" report).
pub const MAX_WORKERS: usize = 256;

/// What a worker thread did last, for the report on a hang or a crash.
#[derive(Debug)]
pub struct WorkerSlot {
    /// The worker's derived seed.
    pub seed: AtomicU64,
    /// How many operations it started.
    pub op_index: AtomicU64,
    /// The kind of its current operation (an index into the op table).
    pub op_kind: AtomicU64,
    /// Its process id.
    pub pid: AtomicU64,
}

/// The shared counters.
#[derive(Debug)]
pub struct Stats {
    /// Per system call, successes and errno values.
    pub calls: [[AtomicU64; ERRNO_SLOTS]; 6],
    /// The named counters.
    pub counters: [AtomicU64; COUNTERS],
    /// Per worker thread, what it is doing.
    pub workers: [WorkerSlot; MAX_WORKERS],
}

impl Stats {
    /// Map zeroed, shared counters; children forked afterwards share them.
    pub fn map_shared() -> &'static Stats {
        let len = core::mem::size_of::<Stats>();
        // SAFETY: an anonymous shared mapping; no existing memory is
        // touched.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "aem-fuzz: mmap of the counters failed"
        );
        // SAFETY: the mapping is zero-filled, page aligned, large enough,
        // never unmapped; all-zero bytes are valid AtomicU64s.
        unsafe { &*(p as *const Stats) }
    }

    /// Count one call of AEM system call `sys` (0 ..= 5) that returned `ret`
    /// (the raw kernel value: >= 0, or -errno).
    pub fn record(&self, sys: usize, ret: i64) {
        let slot = if ret >= 0 {
            0
        } else if -ret < ERRNO_SLOTS as i64 - 1 {
            (-ret) as usize
        } else {
            ERRNO_SLOTS - 1
        };
        self.calls[sys][slot].fetch_add(1, Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Relaxed);
    }

    /// All AEM system calls made so far.
    pub fn total_calls(&self) -> u64 {
        self.calls
            .iter()
            .flat_map(|row| row.iter())
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// The summary: one line, calls and the errno histogram per system call.
    pub fn summary(&self) -> String {
        let mut s = format!("calls={}", self.total_calls());
        for (sys, name) in SYSCALL_NAMES.iter().enumerate() {
            let row = &self.calls[sys];
            let total: u64 = row.iter().map(|c| c.load(Relaxed)).sum();
            s += &format!(" | {name} {total}:");
            for (slot, c) in row.iter().enumerate() {
                let n = c.load(Relaxed);
                if n == 0 {
                    continue;
                }
                s += &format!(" {}={n}", errno_name(slot));
            }
        }
        s += " |";
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            s += &format!(" {name}={}", self.counters[i].load(Relaxed));
        }
        s
    }
}

/// A histogram slot's name: "ok", "EINVAL", ...
pub fn errno_name(slot: usize) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EINTR, "EINTR"),
        (libc::EBADF, "EBADF"),
        (libc::ECHILD, "ECHILD"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENFILE, "ENFILE"),
        (libc::EMFILE, "EMFILE"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::E2BIG, "E2BIG"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTSOCK, "ENOTSOCK"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::ENOBUFS, "ENOBUFS"),
        (libc::ECONNABORTED, "ECONNABORTED"),
    ];
    if slot == 0 {
        return "ok".into();
    }
    if slot == ERRNO_SLOTS - 1 {
        return "other".into();
    }
    NAMES
        .iter()
        .find(|(e, _)| *e as usize == slot)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or_else(|| format!("E{slot}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_slots() {
        let s = Stats::map_shared();
        s.record(1, 3);
        s.record(1, -(libc::EINVAL as i64));
        s.record(1, -(libc::EINVAL as i64));
        s.record(2, -100_000);
        assert_eq!(s.total_calls(), 4);
        let line = s.summary();
        assert!(line.contains("aem_register 3: ok=1 EINVAL=2"), "{line}");
        assert!(line.contains("aem_ctl 1: other=1"), "{line}");
        assert_eq!(errno_name(libc::EFAULT as usize), "EFAULT");
        assert_eq!(errno_name(121), "E121");
    }
}
