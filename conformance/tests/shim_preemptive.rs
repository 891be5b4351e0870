//! SHIM-3: the preemptive mode's contract, kept, holds up.
//!
//! An inline handler interrupts its thread anywhere, so the patterns of
//! `shim_safe_modes` are written here the way the contract of
//! `aem::register_inline` says: output through `aem::println!` on both
//! sides, thread-local state that the main flow touches only inside
//! critical sections, and the heap through `HandlerSafeAlloc` over a heap
//! of its own, while the main flow calls C library code that allocates
//! with the C library's `malloc` behind Rust's back.  Each test checks
//! the exact event count, whole lines, and that the child finishes before
//! its watchdog.
//!
//! This test binary's global allocator is
//! `aem::HandlerSafeAlloc::separate()`.  (With `::system()`, the C
//! library's heap, the allocation test deadlocks: a handler allocates
//! while it interrupted `opendir`'s `malloc`.)

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aem::{Action, FdEvents, Options, Record, Source};
use aem_conformance::patterns::{
    broken, c_library_allocates, count, line, rust_allocates, use_thread_locals, CACHE, LIVE, LONG,
};
use aem_conformance::{eventfd, fire_while, in_child_output, watchdog};

#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc<aem::SeparateHeap> = aem::HandlerSafeAlloc::separate();

/// How long each test fires events.
const FIRING: Duration = Duration::from_secs(2);

/// What a child reported.
struct Outcome {
    lines: Vec<String>,
    records: u64,
    rounds: u64,
}

/// In a child process, with standard output captured and a 60 s
/// watchdog: an inline handler on an eventfd that another thread writes
/// for [`FIRING`] runs `handle` for each record, interrupting
/// `main_round(1)`, `main_round(2)`, ... anywhere; then `finish()`.
/// Asserts that the child exits 0 and every activation arrived, exactly.
///
/// # Safety
///
/// `handle` must keep the contract of [`aem::register_inline`], with
/// `main_round` as the code it interrupts.
unsafe fn run(
    handle: impl FnMut(&Record) + Send + 'static,
    mut main_round: impl FnMut(u64),
    finish: fn(),
) -> Outcome {
    let (status, out) = in_child_output(1, || {
        watchdog(60);
        let efd = eventfd();
        let activations = Arc::new(AtomicU64::new(0));
        let records = Arc::new(AtomicU64::new(0));
        let (a, r) = (activations.clone(), records.clone());
        let mut handle = handle;
        let source = Source::fd(efd.as_fd(), FdEvents::IN);
        // SAFETY: the handler touches atomics and runs `handle`, for which
        // our caller vouches.
        let registration = unsafe {
            aem::register_inline(source, Options::default(), move |rec| {
                a.fetch_add(rec.count, SeqCst);
                r.fetch_add(1, SeqCst);
                handle(rec);
                Action::Rearm
            })
        }
        .unwrap();
        let (rounds, fired) = fire_while(&efd, FIRING, 1000, &mut main_round);
        let end = Instant::now() + Duration::from_secs(10);
        while activations.load(SeqCst) < fired && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(registration);
        finish();
        aem::println!(
            "total {} {} {rounds} {fired}",
            activations.load(SeqCst),
            records.load(SeqCst)
        );
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (14 = SIGALRM: the watchdog)"
    );
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let total: Vec<u64> = lines
        .pop()
        .as_deref()
        .and_then(|l| l.strip_prefix("total "))
        .expect("no total line")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(total[0], total[3], "activations lost or invented");
    assert!(
        total[1] >= 100,
        "the handler interrupted the main flow only {} times",
        total[1]
    );
    Outcome {
        lines,
        records: total[1],
        rounds: total[2],
    }
}

fn nothing() {}

#[test]
fn shim_3_inline_handlers_allocate_while_the_main_flow_calls_c_code_that_mallocs() {
    let mut n = 0;
    // SAFETY: the handler allocates through this binary's global
    // allocator, a HandlerSafeAlloc over a heap of its own; the main flow
    // may call into the C library's allocator as it likes.
    let o = unsafe {
        run(
            move |_| {
                n += 1;
                assert!(rust_allocates(n) > 4096);
            },
            |i| {
                c_library_allocates(i);
                assert!(rust_allocates(i) > 4096);
            },
            nothing,
        )
    };
    assert!(o.rounds >= 1000);
}

#[test]
fn shim_3_inline_handlers_and_main_flow_print_long_lines_whole_with_aem_println() {
    let mut n = 0;
    // SAFETY: the handler prints with aem::println! and allocates through
    // the handler-safe allocator.
    let o = unsafe {
        run(
            move |_| {
                n += 1;
                aem::println!("{}", line("handler", n, LONG));
            },
            |i| aem::println!("{}", line("main", i, LONG)),
            nothing,
        )
    };
    let bad = broken(&o.lines, &["handler", "main"], LONG);
    assert!(bad.is_empty(), "{} broken lines", bad.len());
    assert_eq!(count(&o.lines, "handler"), o.records);
    assert_eq!(count(&o.lines, "main"), o.rounds);
}

fn report_thread_locals() {
    aem::critical(|| {
        aem::println!(
            "thread-locals {} {}",
            LIVE.load(SeqCst),
            CACHE.take().map_or(0, |c| c.0)
        )
    });
}

#[test]
fn shim_3_inline_handlers_share_thread_local_caches_through_critical_sections() {
    // SAFETY: the handler uses the thread-locals, which the main flow
    // touches only inside critical sections; it allocates through the
    // handler-safe allocator.
    let o = unsafe {
        run(
            |_| {
                std::hint::black_box(use_thread_locals());
            },
            |i| {
                aem::critical(|| std::hint::black_box(use_thread_locals()));
                if i % 100 == 0 {
                    report_thread_locals();
                }
            },
            report_thread_locals,
        )
    };
    let reports: Vec<(i64, u64)> = o
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("thread-locals "))
        .map(|l| {
            let mut f = l.split(' ').map(|n| n.parse::<i64>().unwrap());
            (f.next().unwrap(), f.next().unwrap() as u64)
        })
        .collect();
    assert_eq!(reports.len() as u64, o.rounds / 100 + 1);
    // One cached box at a time, never freed twice or leaked (none after
    // a report that took it, if nothing used the cache since), and every
    // use of it counted once.
    assert!(
        reports
            .iter()
            .all(|&(live, uses)| live == i64::from(uses > 0)),
        "{reports:?}"
    );
    let uses: u64 = reports.iter().map(|&(_, u)| u).sum();
    assert_eq!(uses, o.rounds + o.records);
}
