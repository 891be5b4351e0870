//! `aem-periodic-timer`: a periodic AEM timer whose handler, run inline in
//! the main flow, prints a line per delivery, while the main flow goes on
//! with its own work: printing, allocating, sleeping.  Written with the
//! `aem` API alone; its only `unsafe` is the handler's registration, with
//! why the handler keeps the contract of [`aem::register_inline`].
//!
//! The handler interrupts the main flow anywhere, even in the middle of
//! `malloc` or of a line being written.  What they share is therefore
//! handler-safe: the counters sit behind an [`aem::sync::Mutex`], both
//! print with [`aem::println!`] (whole lines, never spliced), and the heap
//! is [`aem::HandlerSafeAlloc`].
//!
//! Which mode: the preemptive one, to show what its contract asks.  A
//! program that only needs its ticks where it chooses would register the
//! closure with [`aem::on_event`] and call [`aem::dispatch`] in its loop:
//! no `unsafe`, and `std`'s printing and locks would do.
//!
//! Each delivery reports how many periods expired since the previous one:
//! more than one when the handler was held back (overruns).  The program
//! ends when the expirations add up to `--ticks`.
//!
//! Output, one line each: `tick <i> expirations=<n>` from the handler,
//! `main <j>` from the main flow, and last `done ticks=<deliveries>
//! expirations=<total>`.

use std::process::ExitCode;
use std::time::Duration;

use aem::{Action, EventData, Options, Source};

#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc<aem::SeparateHeap> = aem::HandlerSafeAlloc::separate();

const USAGE: &str = "usage: aem-periodic-timer [--period-ms N] [--ticks N]";

/// The timer's deliveries so far.
struct Progress {
    /// Deliveries (handler runs).
    ticks: u64,
    /// Expirations they reported, overruns included.
    expirations: u64,
}

/// Written by the handler, read by the main flow.
static PROGRESS: aem::sync::Mutex<Progress> = aem::sync::Mutex::new(Progress {
    ticks: 0,
    expirations: 0,
});

struct Args {
    period: Duration,
    ticks: u64,
}

/// `Err` holds the problem, empty for `--help`.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        period: Duration::from_millis(100),
        ticks: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = || -> Result<u64, String> {
            let v = it.next().ok_or(format!("{arg} needs a value"))?;
            match v.parse() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("bad {arg} {v}: a positive integer is needed")),
            }
        };
        match arg.as_str() {
            "--period-ms" => args.period = Duration::from_millis(number()?),
            "--ticks" => args.ticks = number()?,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), aem::Error> {
    let target = args.ticks;
    // SAFETY: the handler touches only PROGRESS, an aem::sync::Mutex, and
    // prints with aem::println!.
    let timer = unsafe {
        aem::register_inline(
            Source::periodic(args.period),
            Options::default(),
            move |record| {
                let EventData::Timer { expirations } = record.data else {
                    return Action::Rearm;
                };
                let (tick, total) = {
                    let mut p = PROGRESS.lock();
                    p.ticks += 1;
                    p.expirations += expirations;
                    (p.ticks, p.expirations)
                };
                aem::println!("tick {tick} expirations={expirations}");
                if total >= target {
                    Action::Unregister
                } else {
                    Action::Rearm
                }
            },
        )
    }?;

    // The main flow's own work, in steps shorter than the period so that
    // the handler interrupts it at all sorts of places.
    let nap = (args.period / 4).max(Duration::from_millis(1));
    let mut j = 0u64;
    let mut kept: Vec<String> = Vec::new();
    let (ticks, total) = loop {
        let (ticks, total) = {
            let p = PROGRESS.lock();
            (p.ticks, p.expirations)
        };
        if total >= target {
            break (ticks, total);
        }
        j += 1;
        // Allocate and free while the handler may strike.
        let line = format!("main {j}");
        let squares: Vec<u64> = (0..1024 + j % 512).map(|k| k * k).collect();
        std::hint::black_box(squares);
        kept.push(line.clone());
        if kept.len() > 16 {
            kept.clear();
        }
        aem::println!("{line}");
        std::thread::sleep(nap);
    };
    // Already unregistered by the handler's last verdict.
    drop(timer);
    aem::println!("done ticks={ticks} expirations={total}");
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                aem::eprintln!("aem-periodic-timer: {e}");
            }
            aem::eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            aem::eprintln!("aem-periodic-timer: {e}");
            ExitCode::FAILURE
        }
    }
}
