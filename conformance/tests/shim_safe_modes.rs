//! SHIM-1, SHIM-3: the patterns people write, in the safe modes.
//!
//! In the safe modes a handler runs only where its thread asks for it:
//! closures run by `aem::dispatch()` ([`Mode::Dispatch`]), or records the
//! program takes with `aem::wait()` and handles itself
//! ([`Mode::Records`]).  Nothing is interrupted, so what an inline handler
//! must not touch simply works here: `std` printing mixed with `aem`'s, a
//! `log` backend around a `std` mutex, the default allocator beside the C
//! library's own `malloc`, `std` mutexes, thread-local caches and
//! `rand::thread_rng()`.  Each test runs its pattern in both modes, on
//! both sides (handler and main flow), with events that another thread
//! fires meanwhile, and checks the exact event count, whole lines, and
//! that the child finishes before its watchdog.
//!
//! This test binary keeps the default allocator.  (It writes with
//! `writeln!(stdout())`: libtest captures `println!`, also in a forked
//! child.)

// `writeln!(stdout())` on purpose: see above.
#![allow(clippy::explicit_write)]

use std::any::Any;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aem::{Action, FdEvents, Options, Record, Source};
use aem_conformance::patterns::{
    broken, c_library_allocates, count, line, rust_allocates, use_thread_locals, CACHE, LIVE, LONG,
};
use aem_conformance::{eventfd, fire_while, in_child_output, watchdog};

/// How long each test fires events.
const FIRING: Duration = Duration::from_secs(2);

/// Where the records' handlers run.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Closures registered with `aem::on_event`, run by `aem::dispatch`.
    Dispatch,
    /// Records taken with `aem::wait` and handled by the caller.
    Records,
}

const MODES: [Mode; 2] = [Mode::Dispatch, Mode::Records];

/// What a child reported.
struct Outcome {
    /// Its output, the total line taken off.
    lines: Vec<String>,
    /// Activations the records carried, summed.
    activations: u64,
    /// Records handled.
    records: u64,
    /// Main-flow rounds.
    rounds: u64,
}

fn readable(fd: &OwnedFd) -> Source<'_> {
    Source::fd(fd.as_fd(), FdEvents::IN)
}

/// In a child process, with standard output captured and a 60 s
/// watchdog: `setup()`, then an eventfd that another thread writes
/// for [`FIRING`], whose records `handle` gets in `mode`, on this
/// thread, between `main_round(1)`, `main_round(2)`, ...; then `finish()`.
/// Asserts that the child exits 0 and every activation arrived, exactly.
fn run(
    mode: Mode,
    setup: fn(),
    handle: impl FnMut(&Record) + Send + 'static,
    mut main_round: impl FnMut(u64),
    finish: fn(),
) -> Outcome {
    let (status, out) = in_child_output(1, || {
        watchdog(60);
        setup();
        let efd = eventfd();
        let activations = Arc::new(AtomicU64::new(0));
        let records = Arc::new(AtomicU64::new(0));
        let handle = Arc::new(Mutex::new(handle));
        let (a, r) = (activations.clone(), records.clone());
        let one = move |rec: &Record| {
            a.fetch_add(rec.count, SeqCst);
            r.fetch_add(1, SeqCst);
            (handle.lock().unwrap())(rec);
        };
        let registration: Box<dyn Any> = match mode {
            Mode::Dispatch => {
                let one = one.clone();
                Box::new(
                    aem::on_event(readable(&efd), Options::default(), move |rec| {
                        one(rec);
                        Action::Rearm
                    })
                    .unwrap(),
                )
            }
            Mode::Records => Box::new(aem::register(readable(&efd), Options::default()).unwrap()),
        };
        let take = |timeout| match mode {
            Mode::Dispatch => assert!(aem::dispatch(Some(timeout)).unwrap().is_empty()),
            Mode::Records => aem::wait(64, Some(timeout)).unwrap().iter().for_each(&one),
        };
        let (rounds, fired) = fire_while(&efd, FIRING, 1000, |i| {
            main_round(i);
            if i % 4 == 0 {
                take(Duration::ZERO);
            }
        });
        let end = Instant::now() + Duration::from_secs(10);
        while activations.load(SeqCst) < fired && Instant::now() < end {
            take(Duration::from_millis(10));
        }
        drop(registration);
        finish();
        let mut out = std::io::stdout();
        writeln!(
            out,
            "total {} {} {rounds} {fired}",
            activations.load(SeqCst),
            records.load(SeqCst)
        )
        .unwrap();
        out.flush().unwrap();
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{mode:?}: child status {status:#x} (14 = SIGALRM: the watchdog)"
    );
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let total: Vec<u64> = lines
        .pop()
        .as_deref()
        .and_then(|l| l.strip_prefix("total "))
        .unwrap_or_else(|| panic!("{mode:?}: no total line"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let outcome = Outcome {
        lines,
        activations: total[0],
        records: total[1],
        rounds: total[2],
    };
    assert_eq!(
        outcome.activations, total[3],
        "{mode:?}: activations lost or invented"
    );
    // Many separate deliveries, each taken between main-flow rounds (on
    // the debug kernel, with its slow rounds, some 60 in 2 s).
    assert!(
        outcome.records >= 20,
        "{mode:?}: only {} records",
        outcome.records
    );
    outcome
}

fn nothing() {}

#[test]
fn shim_3_safe_modes_mix_std_and_aem_printing_without_broken_lines() {
    for mode in MODES {
        let mut n = 0;
        let o = run(
            mode,
            nothing,
            move |_| {
                n += 1;
                writeln!(std::io::stdout(), "{}", line("std-handler", n, LONG)).unwrap();
                aem::println!("{}", line("aem-handler", n, 40));
            },
            |i| {
                writeln!(std::io::stdout(), "{}", line("std-main", i, LONG)).unwrap();
                aem::println!("{}", line("aem-main", i, 40));
            },
            nothing,
        );
        let long = ["std-handler", "std-main"];
        let short = ["aem-handler", "aem-main"];
        let (l, s): (Vec<String>, Vec<String>) =
            o.lines.iter().cloned().partition(|l| l.starts_with("std-"));
        assert!(
            broken(&l, &long, LONG).is_empty(),
            "{mode:?}: split std lines"
        );
        assert!(
            broken(&s, &short, 40).is_empty(),
            "{mode:?}: split aem lines"
        );
        for (who, n) in [
            ("std-handler", o.records),
            ("aem-handler", o.records),
            ("std-main", o.rounds),
            ("aem-main", o.rounds),
        ] {
            assert_eq!(count(&o.lines, who), n, "{mode:?}: {who} lines");
        }
    }
}

/// A `log` backend as the popular ones are built: a `std` mutex around
/// the output.
struct StdMutexLogger(Mutex<std::io::Stdout>);

impl log::Log for StdMutexLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut out = self.0.lock().unwrap();
        writeln!(out, "{} {}", record.level(), record.args()).unwrap();
    }

    fn flush(&self) {}
}

fn install_std_mutex_logger() {
    log::set_boxed_logger(Box::new(StdMutexLogger(Mutex::new(std::io::stdout())))).unwrap();
    log::set_max_level(log::LevelFilter::Info);
}

#[test]
fn shim_3_safe_modes_log_through_a_backend_that_locks_a_std_mutex() {
    for mode in MODES {
        let mut n = 0;
        let o = run(
            mode,
            install_std_mutex_logger,
            move |_| {
                n += 1;
                log::info!("{}", line("handler", n, 300));
            },
            |i| log::warn!("{}", line("main", i, 300)),
            nothing,
        );
        let stripped: Vec<String> = o
            .lines
            .iter()
            .map(|l| {
                l.strip_prefix("INFO ")
                    .or_else(|| l.strip_prefix("WARN "))
                    .unwrap_or(l)
                    .to_owned()
            })
            .collect();
        assert!(
            broken(&stripped, &["handler", "main"], 300).is_empty(),
            "{mode:?}: broken log lines"
        );
        assert_eq!(count(&o.lines, "INFO handler"), o.records, "{mode:?}");
        assert_eq!(count(&o.lines, "WARN main"), o.rounds, "{mode:?}");
    }
}

#[test]
fn shim_3_safe_modes_allocate_with_the_default_allocator_beside_c_library_mallocs() {
    for mode in MODES {
        let mut n = 0;
        let o = run(
            mode,
            nothing,
            move |_| {
                n += 1;
                assert!(rust_allocates(n) > 4096);
                c_library_allocates(n);
            },
            |i| {
                c_library_allocates(i);
                assert!(rust_allocates(i) > 4096);
            },
            nothing,
        );
        assert!(o.rounds >= 1000);
    }
}

/// Taken by the main flow, a thread of its own, and the handlers.
#[derive(Default)]
struct Shared {
    main: u64,
    other: u64,
    handler: u64,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    main: 0,
    other: 0,
    handler: 0,
});

fn report_shared() {
    let s = SHARED.lock().unwrap();
    writeln!(
        std::io::stdout(),
        "shared {} {} {}",
        s.main,
        s.other,
        s.handler
    )
    .unwrap();
}

#[test]
fn shim_3_safe_modes_share_std_mutexes_with_the_main_flow_and_other_threads() {
    for mode in MODES {
        let o = run(
            mode,
            || {
                // Another thread that takes the lock too, for the rest of
                // the child's life.
                std::thread::spawn(|| loop {
                    SHARED.lock().unwrap().other += 1;
                    std::thread::yield_now();
                });
            },
            |_| SHARED.lock().unwrap().handler += 1,
            |i| {
                // Held across work that takes a while, as real code does.
                let mut s = SHARED.lock().unwrap();
                s.main += 1;
                c_library_allocates(i);
            },
            report_shared,
        );
        let last = o.lines.last().and_then(|l| l.strip_prefix("shared "));
        let counts: Vec<u64> = last
            .expect("no shared line")
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        // Every increment of the main flow and the handlers is there.
        assert_eq!(counts[0], o.rounds, "{mode:?}: main");
        assert!(counts[1] > 0, "{mode:?}: the other thread never ran");
        assert_eq!(counts[2], o.records, "{mode:?}: handlers");
    }
}

fn report_thread_locals() {
    writeln!(
        std::io::stdout(),
        "thread-locals {} {}",
        LIVE.load(SeqCst),
        CACHE.take().map_or(0, |c| c.0)
    )
    .unwrap();
}

#[test]
fn shim_3_safe_modes_keep_thread_local_caches_consistent() {
    for mode in MODES {
        let o = run(
            mode,
            nothing,
            |_| {
                std::hint::black_box(use_thread_locals());
            },
            |i| {
                std::hint::black_box(use_thread_locals());
                if i % 100 == 0 {
                    report_thread_locals();
                }
            },
            report_thread_locals,
        );
        // Each report took the cached box (and dropped it), its use count
        // the uses since the previous report.
        let reports: Vec<(i64, u64)> = o
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("thread-locals "))
            .map(|l| {
                let mut f = l.split(' ').map(|n| n.parse::<i64>().unwrap());
                (f.next().unwrap(), f.next().unwrap() as u64)
            })
            .collect();
        assert_eq!(reports.len() as u64, o.rounds / 100 + 1, "{mode:?}");
        // One cached box at a time, never freed twice or leaked (none
        // after a report that took it, if nothing used the cache since).
        assert!(
            reports
                .iter()
                .all(|&(live, uses)| live == i64::from(uses > 0)),
            "{mode:?}: {reports:?}"
        );
        let uses: u64 = reports.iter().map(|&(_, u)| u).sum();
        // Every use was counted once: the main flow's and the handlers'.
        assert_eq!(uses, o.rounds + o.records, "{mode:?}: uses");
    }
}
