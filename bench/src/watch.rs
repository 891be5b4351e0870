//! `aem-bench src9`: what the memory watch (SRC-9) costs, against what
//! its design chose between.
//!
//! The watch sees a word's writers through their FUTEX_WAKE.  Measured:
//! - the writer's store + FUTEX_WAKE_PRIVATE on a word, with no watch in
//!   the system (the static branch off), with a watch on another word (a
//!   hash-table miss) and with a watch on this word (an activation);
//! - the peer for that writer cost: a write to a write-protected page
//!   caught by its SIGSEGV and let through with mprotect(), the userland
//!   form of the page-protection design (the kernel form would fault the
//!   same way on every write to the page);
//! - from the store to the watcher: a thread in aem_wait() taking the
//!   record, against a thread blocked in FUTEX_WAIT on the word, the
//!   mechanism the watch rides on.
//!
//! Hardware watchpoints need perf events, which the default kernel does
//! not build; docs/benchmarks.md says what that choice rests on instead.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use aem_conformance::{register_attr, unregister_id, Mapping};
use aem_syscalls::uapi;

use super::{now_ns, pct, row};

const OPS: usize = 20_000;
const BATCH: usize = 100;
const ROUNDS: usize = 1_000;

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only reads the word's key; the word is live.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            0,
            0,
            0,
        )
    };
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live word; returns on a wake or a change.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
            0,
            0,
        )
    };
}

fn watch(word: &AtomicU32) -> u32 {
    // SAFETY: aem_event_attr is plain old data; all zeroes is valid.
    let mut attr: uapi::aem_event_attr = unsafe { std::mem::zeroed() };
    attr.source = uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH;
    attr.__bindgen_anon_1.memory.addr = word.as_ptr() as u64;
    register_attr(&attr).expect("register a memory watch")
}

/// ns per operation, one figure per batch of BATCH, sorted.
fn per_op(mut op: impl FnMut(u32)) -> Vec<u64> {
    let mut v: Vec<u64> = (0..OPS / BATCH)
        .map(|b| {
            let t0 = now_ns();
            for i in 0..BATCH {
                op((b * BATCH + i) as u32);
            }
            (now_ns() - t0) / BATCH as u64
        })
        .collect();
    v.sort_unstable();
    v
}

fn store_and_wake(word: &AtomicU32) -> Vec<u64> {
    per_op(|i| {
        word.store(i, SeqCst);
        futex_wake(word);
    })
}

static FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_segv(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    FAULTS.fetch_add(1, SeqCst);
    // SAFETY: lets the faulting write through: the page is ours.
    unsafe {
        libc::mprotect(
            PAGE.load(SeqCst) as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
}

/// A write caught by page protection: the fault, the signal, and the two
/// mprotect() calls that let it through and arm the next.
fn protected_write() -> Vec<u64> {
    // A fresh private page, unmapped at the end.
    let mapping = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).expect("mmap");
    let page = mapping.addr().cast::<libc::c_void>();
    PAGE.store(page as u64, SeqCst);
    // SAFETY: sigaction is plain old data; all zeroes is valid.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs a SIGSEGV handler that only touches atomics and
    // calls mprotect(), both async-signal-safe; restored at the end.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSEGV, &sa, &mut old);
    }
    let word = page as *mut u32;
    let before = FAULTS.load(SeqCst);
    let v = per_op(|i| {
        // SAFETY: arms the page, then writes the mapped word: the fault
        // is caught by the handler above, which lets the write through.
        unsafe {
            libc::mprotect(page, 4096, libc::PROT_READ);
            std::ptr::write_volatile(word, i);
        }
    });
    assert_eq!(
        FAULTS.load(SeqCst) - before,
        OPS as u64,
        "one fault per write"
    );
    // SAFETY: restores the old action.
    unsafe { libc::sigaction(libc::SIGSEGV, &old, std::ptr::null_mut()) };
    drop(mapping);
    v
}

/// From the store to a thread woken by `wait`, one sample per round.
fn notify_latency(word: &'static AtomicU32, wait: impl FnMut(u32) + Send + 'static) -> Vec<u64> {
    let sent = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, g, st) = (sent.clone(), got.clone(), stop.clone());
    let mut wait = wait;
    // Read here, not in the thread: a thread that started after the first
    // store would wait for a change it already missed, and the writer for
    // it, for ever (seen in the wall-clock lens, 2 CPUs).
    let mut seen = word.load(SeqCst);
    let waiter = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(ROUNDS);
        while lat.len() < ROUNDS && !st.load(SeqCst) {
            wait(seen);
            let now = now_ns();
            let v = word.load(SeqCst);
            if v != seen {
                lat.push(now - s.load(SeqCst));
                seen = v;
                g.store(v as u64, SeqCst);
            }
        }
        lat
    });
    for i in 1..=ROUNDS as u32 {
        std::thread::sleep(Duration::from_micros(200));
        sent.store(now_ns(), SeqCst);
        word.store(i, SeqCst);
        futex_wake(word);
        // Yield, not spin: with one CPU (the icount lens) the waiter
        // must get it.
        while got.load(SeqCst) != i as u64 {
            std::thread::yield_now();
        }
    }
    stop.store(true, SeqCst);
    let mut lat = waiter.join().unwrap();
    lat.sort_unstable();
    lat
}

pub fn src9() {
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id", "writer: store + FUTEX_WAKE (guest ns/op)", "p50", "p99", "ratio"
    );
    let word = Box::new(AtomicU32::new(0));
    let other = Box::new(AtomicU32::new(0));
    let unwatched = store_and_wake(&word);
    let peer_p50 = pct(&unwatched, 50);
    row("peer", "no watch in the system", &unwatched, peer_p50);
    let id = watch(&other);
    row(
        "SRC-9",
        "a watch on another word",
        &store_and_wake(&word),
        peer_p50,
    );
    unregister_id(id);
    let id = watch(&word);
    row(
        "SRC-9",
        "a watch on this word",
        &store_and_wake(&word),
        peer_p50,
    );
    unregister_id(id);
    row(
        "peer",
        "write caught by page protection (SIGSEGV)",
        &protected_write(),
        peer_p50,
    );
    println!();

    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id", "store -> watcher runs (guest ns)", "p50", "p99", "ratio"
    );
    let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let peer = notify_latency(word, move |seen| futex_wait(word, seen));
    let peer_p50 = pct(&peer, 50);
    row(
        "peer",
        "a thread in FUTEX_WAIT on the word",
        &peer,
        peer_p50,
    );
    let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let id = watch(word);
    let aem = notify_latency(word, |_| {
        // SAFETY: aem_record is plain old data.
        let mut recs: [uapi::aem_record; 4] = unsafe { std::mem::zeroed() };
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: `recs` holds 4 records, `ts` is live.
        let _ = unsafe { aem_syscalls::aem_wait(recs.as_mut_ptr(), 4, &ts, 0) };
    });
    row("SRC-9", "a thread in aem_wait() on a watch", &aem, peer_p50);
    unregister_id(id);
}
