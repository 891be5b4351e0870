//! `aem-module-events`: events of a type that a loadable kernel module
//! adds at run time (SRC-10), handled by a dispatched closure.  Safe Rust
//! throughout.
//!
//! The kernel's sample module (`samples/aem/aem_sample.c`, in the guest
//! at `/lib/modules/aem_sample.ko`) adds the event type `sample`, and
//! notifies it with the number written to `/sys/kernel/aem_sample/fire`.
//! The program finds the type by name ([`aem::ModuleType::by_name`]),
//! registers a closure on it ([`aem::Source::module`], [`aem::on_event`])
//! and runs it from [`aem::dispatch`] until `--count` notifications
//! (default 5) arrived.  While it is registered the module stays loaded:
//! `rmmod aem_sample` is refused ("in use").
//!
//! Notifications that come before their record is taken coalesce: one
//! record, `count` notifications, their data summed up.
//!
//! ```sh
//! insmod /lib/modules/aem_sample.ko
//! aem-module-events --count 3 &
//! for n in 1 2 3; do echo $n > /sys/kernel/aem_sample/fire; done
//! ```
//!
//! Output, one line each: `waiting for <n> notifications of type sample
//! (<type number>)` once registered, `notified: count=<c> data=<d>` per
//! record, and last `done: <n> notifications in <r> records, data sum
//! <s>`.  Exit status 0 then; 1 when the type does not exist (the module
//! is not loaded) or nothing came within `--timeout` seconds (default
//! 60).

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aem::{Action, EventData, ModuleType, Options, Source};

const USAGE: &str = "usage: aem-module-events [--count N] [--timeout SECS]";

/// The sample module's type, and where the module is in the guest.
const TYPE: &str = "sample";
const MODULE: &str = "/lib/modules/aem_sample.ko";

/// What the records told so far.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    records: u64,
    notifications: u64,
    data: u64,
}

fn run(count: u64, timeout: Duration) -> Result<(), String> {
    let type_ = ModuleType::by_name(TYPE).map_err(|e| match e {
        aem::Error::Os(aem::Errno::ENOENT) => {
            format!("no event type \"{TYPE}\": load the sample module first: insmod {MODULE}")
        }
        e => format!("look up the type {TYPE}: {e}"),
    })?;
    let totals = Arc::new(Mutex::new(Totals::default()));
    let seen = totals.clone();
    let _event = aem::on_event(Source::module(type_), Options::new(), move |rec| {
        let EventData::Module { data, .. } = rec.data else {
            // The type went away (a built-in driver's device removed);
            // a module's cannot while it is watched.
            println!("the type went away: {:?}", rec.data);
            return Action::Unregister;
        };
        println!("notified: count={} data={data}", rec.count);
        let mut t = seen.lock().unwrap_or_else(PoisonError::into_inner);
        t.records += 1;
        t.notifications += rec.count;
        t.data = t.data.wrapping_add(data);
        if t.notifications >= count {
            Action::Unregister
        } else {
            Action::Rearm
        }
    })
    .map_err(|e| format!("register on the type {TYPE} ({type_}): {e}"))?;
    println!("waiting for {count} notifications of type {TYPE} ({type_})");
    // Whoever waits for that line (a test, a script) sees it now.
    let _ = std::io::stdout().flush();

    let end = Instant::now() + timeout;
    loop {
        let t = *totals.lock().unwrap_or_else(PoisonError::into_inner);
        if t.notifications >= count {
            println!(
                "done: {} notifications in {} records, data sum {}",
                t.notifications, t.records, t.data
            );
            return Ok(());
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{} of {count} notifications within {timeout:?}",
                t.notifications
            ));
        }
        match aem::dispatch(Some(left)) {
            Ok(_) | Err(aem::Error::Os(aem::Errno::EINTR)) => {}
            Err(e) => return Err(format!("dispatch: {e}")),
        }
    }
}

/// `Err` holds the problem, empty for `--help`.
fn parse_args() -> Result<(u64, Duration), String> {
    let (mut count, mut timeout) = (5, Duration::from_secs(60));
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
            "--count" => count = number()?,
            "--timeout" => timeout = Duration::from_secs(number()?),
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok((count, timeout))
}

fn main() -> ExitCode {
    let (count, timeout) = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-module-events: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(count, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-module-events: {e}");
            ExitCode::FAILURE
        }
    }
}
