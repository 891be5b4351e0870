//! Registrations are small and charged to the process (MISSION.md PERF-3,
//! SEC-2): each is one slab object accounted to the process's memory
//! cgroup, so the cgroup's limits bound them, and unregistering gives the
//! memory back.

use std::os::fd::OwnedFd;

use aem::Options;
use aem_conformance::{eventfd, watch_in, MemoryCgroup};

const N: u64 = 50_000;

fn raise_nofile(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: `lim` is a valid rlimit; the guest runs as root.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

#[test]
fn perf_3_registrations_are_charged_to_the_process_memory_cgroup() {
    raise_nofile(2 * N + 1024);
    let cg = MemoryCgroup::enter("aem-conformance-mem");
    let fds: Vec<OwnedFd> = (0..N).map(|_| eventfd()).collect();
    let before = cg.slab();
    let regs: Vec<_> = fds
        .iter()
        .map(|fd| watch_in(fd, Options::default()).unwrap())
        .collect();
    let charged = cg.slab() - before;
    let per = charged / N;
    // One 144-byte object each, its cgroup pointer and the id table's share
    // (~161 bytes; a KASAN kernel adds its redzones, ~230).
    assert!(
        (144..=512).contains(&per),
        "{per} bytes per fd registration ({charged} for {N})"
    );
    drop(regs);
    // The id table's nodes are freed after an RCU grace period, and the
    // cgroup's counters are flushed in per-CPU batches: give both time.
    let mut left = cg.slab().saturating_sub(before);
    for _ in 0..30 {
        if left < charged / 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = cg.slab().saturating_sub(before);
    }
    assert!(
        left < charged / 10,
        "unregistering kept {left} of {charged} bytes"
    );
}
