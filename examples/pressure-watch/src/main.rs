//! `aem-pressure-watch`: an AEM overload event on CPU pressure (SRC-8),
//! taken as records.  Safe Rust throughout.
//!
//! The program registers [`aem::Source::overload`] on a PSI trigger,
//! system-wide CPU `some` stall time of `--threshold-ms` (default 50)
//! within `--window-ms` (default 500): the event fires when runnable
//! tasks waited that long for a CPU within a window.  Then it makes that
//! pressure itself: three busy threads per CPU, for `--busy-secs`
//! (default 3) or until the first "overloaded" record, whichever is
//! later.  Once they stop, the pressure clears, and two windows without a
//! firing later the event fires once more, "cleared".
//!
//! Windows below 2 s need `CAP_SYS_RESOURCE` (root); without it, PSI
//! takes only multiples of 2 s: `--window-ms 2000`.
//!
//! Output, one line each: `watching cpu some <t> ms / <w> ms`, `busy:
//! <n> threads`, `overloaded firings=<f> count=<c>` and `cleared
//! firings=<f> count=<c>` per record, `idle` when the threads stop, and
//! last `done: overloaded, then cleared`.  Exit status 0 when an
//! "overloaded" record and then a "cleared" one came within `--timeout`
//! seconds (default 30), 1 otherwise.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aem::{EventData, Options, Pressure, Resource, Source};

const USAGE: &str = "usage: aem-pressure-watch [--threshold-ms N] [--window-ms N] \
                     [--busy-secs N] [--timeout N]";

struct Args {
    threshold: Duration,
    window: Duration,
    busy: Duration,
    timeout: Duration,
}

/// Busy threads, more than the CPUs: CPU pressure while they spin.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Hogs {
    fn start(n: usize) -> Hogs {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
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
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let pressure = Pressure::new(Resource::Cpu, args.threshold, args.window);
    let _event = aem::register(Source::overload(pressure), Options::new()).map_err(|e| {
        let hint = match e {
            aem::Error::Os(aem::Errno::EINVAL) => {
                " (a window below 2 s needs root: try --window-ms 2000)"
            }
            _ => "",
        };
        format!("register the overload event: {e}{hint}")
    })?;
    println!(
        "watching cpu some {} ms / {} ms",
        args.threshold.as_millis(),
        args.window.as_millis()
    );

    let start = Instant::now();
    let deadline = start + args.timeout;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut hogs = Some(Hogs::start(cpus * 3));
    println!("busy: {} threads", cpus * 3);
    let mut overloaded = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(if overloaded {
                format!("no cleared record within {:?}", args.timeout)
            } else {
                format!("no overloaded record within {:?}", args.timeout)
            });
        }
        // Stop making pressure once it was seen, and the busy time is up.
        if overloaded && hogs.is_some() && now >= start + args.busy {
            drop(hogs.take());
            println!("idle");
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        let records = match aem::wait(16, Some(wait)) {
            Ok(records) => records,
            Err(aem::Error::Os(aem::Errno::EINTR)) => continue,
            Err(e) => return Err(format!("wait: {e}")),
        };
        for rec in records {
            let EventData::Overload {
                overloaded: now_overloaded,
                firings,
            } = rec.data
            else {
                continue;
            };
            let state = if now_overloaded {
                "overloaded"
            } else {
                "cleared"
            };
            println!("{state} firings={firings} count={}", rec.count);
            if now_overloaded {
                overloaded = true;
            } else if overloaded && hogs.is_none() {
                println!("done: overloaded, then cleared");
                return Ok(());
            }
        }
    }
}

/// `Err` holds the problem, empty for `--help`.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        threshold: Duration::from_millis(50),
        window: Duration::from_millis(500),
        busy: Duration::from_secs(3),
        timeout: Duration::from_secs(30),
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
            "--threshold-ms" => args.threshold = Duration::from_millis(number()?),
            "--window-ms" => args.window = Duration::from_millis(number()?),
            "--busy-secs" => args.busy = Duration::from_secs(number()?),
            "--timeout" => args.timeout = Duration::from_secs(number()?),
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-pressure-watch: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-pressure-watch: {e}");
            ExitCode::FAILURE
        }
    }
}
