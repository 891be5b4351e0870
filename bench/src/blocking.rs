//! PERF-5: blocking and unblocking inline delivery, against a sigprocmask
//! pair.
//!
//! A critical section keeps inline handlers off its thread the way a
//! signal mask keeps signal handlers off it.  `aem::critical_section()`
//! does it through the word the thread shares with the kernel
//! (`aem_thread_area(2)`): opening is a store, closing a store and a load,
//! and no system call.  This times, in one process, `PAIRS` block+unblock
//! pairs of each of
//!
//! - the AEM critical section of the shim (through the thread area): the
//!   mechanism;
//! - two volatile stores to a thread-local word: the floor;
//! - `sigprocmask(SIG_BLOCK, full set, &old)` + `sigprocmask(SIG_SETMASK,
//!   &old)`: the peer every ratio is against;
//! - the same pair with `pthread_sigmask`;
//! - `aem::block()` + `aem::unblock()` (`AEM_CTL_BLOCK`/`UNBLOCK`): the
//!   system-call form of the same blocking, for reference;
//! - the bare protocol on a thread area of the benchmark's own, registered
//!   by another thread: store 1, store 0, load `pending` (what the shim's
//!   section costs at the least), for reference;
//!
//! `REPS` times each, interleaved, and reports the minimum (and the
//! median) time per pair.  Each pair is one call of an out-of-line
//! function, the same harness for every row (call, return and loop are in
//! every figure, the floor's included), so that no row is unrolled or
//! hoisted out of its loop.  The section and the floor are also timed
//! inlined in the loop, as sections are used (the guard is `#[inline]`).
//! The ratio is "sigprocmask pair / this pair": how many times cheaper
//! than the peer.
//!
//! Before timing, the thread registers an inline handler (the shim then
//! registers its area, so that the sections go through the word) and
//! checks that the area is there; after, that no section is left open and
//! that a section really defers an inline handler to its end.

use std::cell::Cell;
use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc;

use aem_syscalls::uapi;

use crate::{drain, eventfd, inline_handler_on, now_ns, poke, HITS};

/// Pairs per timed run: well under a second of TCG for the system-call
/// rows.
const PAIRS: u64 = 200_000;
/// Timed runs of each mechanism.
const REPS: usize = 5;
/// The aim of PERF-5: the section pair at least this many times cheaper
/// than the sigprocmask pair.
const AIM: f64 = 50.0;

thread_local! {
    // Static TLS, like the shim's area: one fs-relative store each.
    static FLOOR_WORD: Cell<u32> = const { Cell::new(0) };
}

/// The floor: what a block word costs at the least, two plain stores.
#[inline(never)]
fn store_pair() {
    FLOOR_WORD.with(|w| {
        // SAFETY: a live, aligned thread-local word.
        unsafe { std::ptr::write_volatile(w.as_ptr(), 1) };
        compiler_fence(SeqCst);
        compiler_fence(SeqCst);
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(w.as_ptr(), 0) };
    });
}

/// The mechanism: one section of the shim, opened and closed.
#[inline(never)]
fn critical_pair() {
    let section = aem::critical_section();
    drop(black_box(section));
}

fn full_set() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the zeroed set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

#[inline(never)]
fn sigprocmask_pair(set: &libc::sigset_t) {
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is initialised, `old` is filled by the first call
    // before the second reads it.
    let r = unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, set, old.as_mut_ptr())
            | libc::sigprocmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut())
    };
    assert_eq!(r, 0, "sigprocmask");
}

#[inline(never)]
fn pthread_sigmask_pair(set: &libc::sigset_t) {
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: as in `sigprocmask_pair`.
    let r = unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, set, old.as_mut_ptr())
            | libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut())
    };
    assert_eq!(r, 0, "pthread_sigmask");
}

#[inline(never)]
fn aem_syscall_pair() {
    aem::block().expect("AEM_CTL_BLOCK");
    aem::unblock().expect("AEM_CTL_UNBLOCK");
}

/// A thread area of the benchmark's own, laid out as `struct
/// aem_thread_area`.
#[repr(C, align(8))]
struct BareArea {
    block: AtomicU32,
    pending: AtomicU32,
}

thread_local! {
    static BARE: BareArea = const {
        BareArea { block: AtomicU32::new(0), pending: AtomicU32::new(0) }
    };
}

/// The bare protocol, no nesting and no mode: store 1, store 0, load
/// `pending`, and a system call only if the kernel deferred something.
#[inline(never)]
fn bare_word_pair() {
    BARE.with(|a| {
        a.block.store(1, Relaxed);
        compiler_fence(SeqCst);
        compiler_fence(SeqCst);
        a.block.store(0, Relaxed);
        compiler_fence(SeqCst);
        if a.pending.load(Relaxed) != 0 {
            let _ = aem_syscalls::aem_ctl(0, uapi::AEM_CTL_DELIVER, 0);
        }
    });
}

/// A thread that registers `BARE` as its area and times `bare_word_pair`
/// once per message; returns the sender of requests and the receiver of
/// times.  Dropping the sender ends it (it unregisters the area first).
fn bare_word_thread() -> (mpsc::Sender<()>, mpsc::Receiver<u64>) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ns_tx, ns_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let area = BARE.with(|a| a as *const BareArea as *mut uapi::aem_thread_area);
        let size = std::mem::size_of::<BareArea>() as u32;
        // SAFETY: `BARE` is this thread's, in static TLS, used for nothing
        // else, and unregistered below before the thread ends.
        unsafe { aem_syscalls::aem_thread_area(area, size, 0) }
            .expect("aem_thread_area for the bare-word row");
        while go_rx.recv().is_ok() {
            ns_tx.send(run(bare_word_pair)).expect("report");
        }
        // SAFETY: the area and size registered above.
        unsafe { aem_syscalls::aem_thread_area(area, size, uapi::AEM_THREAD_AREA_UNREGISTER) }
            .expect("unregister the bare-word area");
    });
    (go_tx, ns_rx)
}

/// Nanoseconds (guest clock) for `PAIRS` sections inlined in the loop, as
/// sections are used (the shim's guard is `#[inline]`): no call per pair,
/// so a leaf function's register saves are not counted; `black_box` on
/// the counter keeps the loop from being folded.
fn run_sections_inlined() -> u64 {
    let t0 = now_ns();
    for i in 0..PAIRS {
        let section = aem::critical_section();
        black_box(i);
        drop(section);
    }
    now_ns() - t0
}

/// The floor, inlined the same way.
fn run_stores_inlined() -> u64 {
    let t0 = now_ns();
    FLOOR_WORD.with(|w| {
        for i in 0..PAIRS {
            // SAFETY: a live, aligned thread-local word.
            unsafe { std::ptr::write_volatile(w.as_ptr(), 1) };
            black_box(i);
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(w.as_ptr(), 0) };
        }
    });
    now_ns() - t0
}

/// Nanoseconds (guest clock) for `PAIRS` calls of `pair`.
#[inline(always)]
fn run(mut pair: impl FnMut()) -> u64 {
    let t0 = now_ns();
    for _ in 0..PAIRS {
        pair();
    }
    now_ns() - t0
}

/// Register an inline handler on the thread, for which the shim registers
/// the thread's area, and check that the area is there: the kernel refuses
/// a second one with EBUSY.  The handler stays registered (an eventfd
/// nobody writes) while the sections are timed.
fn register_handler_and_check_area() -> (OwnedFd, aem::InlineRegistration) {
    let efd = eventfd();
    let reg = inline_handler_on(&efd);
    #[repr(C, align(8))]
    struct Probe(aem_syscalls::aem_thread_area);
    let mut probe = Probe(aem_syscalls::aem_thread_area::default());
    let area = &mut probe.0 as *mut aem_syscalls::aem_thread_area;
    let size = std::mem::size_of::<aem_syscalls::aem_thread_area>() as u32;
    // SAFETY: if the kernel took the probe (no area was registered), it is
    // unregistered again below, before `probe` goes out of scope.
    match unsafe { aem_syscalls::aem_thread_area(area, size, 0) } {
        Err(aem_syscalls::Error::Os(aem_syscalls::Errno(libc::EBUSY))) => {}
        Ok(()) => {
            // SAFETY: the same area and size as registered just now.
            unsafe { aem_syscalls::aem_thread_area(area, size, uapi::AEM_THREAD_AREA_UNREGISTER) }
                .expect("unregister the probe area");
            panic!("aem: the shim registered no thread area for an inline handler");
        }
        Err(e) => panic!("aem_thread_area: {e}"),
    }
    (efd, reg)
}

/// A critical section must hold an inline handler back until it closes,
/// and then run it once.
fn check_section_defers() {
    let efd = eventfd();
    let reg = inline_handler_on(&efd);
    let hits = HITS.load(SeqCst);
    {
        let _section = aem::critical_section();
        poke(&efd);
        // Another way back to user mode: still deferred.
        // SAFETY: getppid has no preconditions.
        black_box(unsafe { libc::getppid() });
        assert_eq!(HITS.load(SeqCst), hits, "a handler ran inside a section");
        assert_eq!(aem::critical_depth(), 1);
    }
    assert_eq!(
        HITS.load(SeqCst),
        hits + 1,
        "the deferred handler did not run when the section closed"
    );
    drain(&efd);
    drop(reg);
}

/// PERF-5: block+unblock pairs, the shared word against sigprocmask.
pub fn perf5() {
    let idle_handler = register_handler_and_check_area();
    let set = full_set();
    let (bare_go, bare_ns) = bare_word_thread();
    let names = [
        ("PERF-5", "AEM critical section, inlined (as used)"),
        ("floor", "plain store pair, inlined"),
        ("PERF-5", "AEM critical section (shim, thread area)"),
        ("floor", "plain store pair (2 volatile TLS stores)"),
        ("peer", "sigprocmask pair (SIG_BLOCK full, SETMASK)"),
        ("PERF-5", "pthread_sigmask pair (same shape)"),
        ("PERF-5", "aem::block + aem::unblock (aem_ctl)"),
        ("PERF-5", "bare area word (store, store, load)"),
    ];
    let mut runs: [Vec<u64>; 8] = Default::default();
    for _ in 0..REPS {
        runs[0].push(run_sections_inlined());
        runs[1].push(run_stores_inlined());
        runs[2].push(run(critical_pair));
        runs[3].push(run(store_pair));
        runs[4].push(run(|| sigprocmask_pair(&set)));
        runs[5].push(run(|| pthread_sigmask_pair(&set)));
        runs[6].push(run(aem_syscall_pair));
        bare_go.send(()).expect("bare-word thread");
        runs[7].push(bare_ns.recv().expect("bare-word time"));
    }
    drop(bare_go);
    drop(idle_handler);
    assert_eq!(aem::critical_depth(), 0, "a critical section was left open");
    check_section_defers();

    let per_pair = |ns: u64| ns as f64 / PAIRS as f64;
    let stats: Vec<(f64, f64)> = runs
        .iter_mut()
        .map(|r| {
            r.sort_unstable();
            (per_pair(r[0]), per_pair(r[r.len() / 2]))
        })
        .collect();
    let peer = stats[4].0;
    println!(
        "{:<8} {:<44} {:>9} {:>9} {:>6}",
        "id", "block+unblock pair (guest-clock ns)", "min", "median", "x"
    );
    for ((id, name), (min, median)) in names.iter().zip(&stats) {
        println!(
            "{id:<8} {name:<44} {min:>9.1} {median:>9.1} {:>6.1}",
            peer / min
        );
    }
    let verdict = |ratio: f64| crate::verdict(ratio >= AIM);
    let (inlined, called) = (peer / stats[0].0, peer / stats[2].0);
    println!(
        "{:<8} aim: critical section >= {AIM}x cheaper than the sigprocmask pair: \
         inlined {} ({inlined:.1}x); one call per pair {} ({called:.1}x)",
        "PERF-5",
        verdict(inlined),
        verdict(called)
    );
    println!(
        "({PAIRS} pairs per run: inlined in the loop, or one call each; min and median of \
         {REPS} runs; x = sigprocmask pair / this pair, on the min)"
    );
}
