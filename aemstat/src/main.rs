//! `aemstat`: show the AEM registrations of a live system, their
//! counters and the boosted threads, once or like `top`.  See
//! `docs/man/aemstat.1.md`.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use aemstat::args::{parse_args, Command, Config, USAGE};
use aemstat::render::{rates, render, watch_title};
use aemstat::scan::{kernel_has_aem, scan, ScanError};

/// The `/proc` read.
const PROC: &str = "/proc";

/// Clear the screen and put the cursor top left (VT100, as `top` does).
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Write `text` to standard output; `false` if it is gone (a closed
/// pipe: `aemstat -w | head`), which ends the program quietly.
fn emit(out: &mut impl Write, text: &str) -> bool {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            eprintln!("aemstat: standard output: {e}");
            false
        }
    }
}

/// Report the errors of a sample; whether any concerns a process asked
/// for with -p (which makes the exit status 1).
fn report(errors: &[ScanError]) -> bool {
    let mut failed = false;
    for e in errors {
        eprintln!("aemstat: {e}");
        failed |= !matches!(e, ScanError::Malformed { .. });
    }
    failed
}

/// Show once, or watch; the exit status.
fn show(config: &Config) -> ExitCode {
    let proc_root = Path::new(PROC);
    if !kernel_has_aem(proc_root) {
        eprintln!("aemstat: {PROC}/self/aem does not exist: this kernel has no AEM");
        return ExitCode::from(1);
    }
    let mut stdout = io::stdout().lock();
    let Some(interval) = config.watch else {
        let (snap, errors) = scan(proc_root, &config.pids, config.threads);
        let failed = report(&errors);
        if !emit(&mut stdout, &render(&snap, config, None)) {
            return ExitCode::from(1);
        }
        return ExitCode::from(u8::from(failed));
    };
    let tty = stdout.is_terminal();
    let mut prev = None;
    let mut sample = 0u64;
    loop {
        sample += 1;
        let (snap, errors) = scan(proc_root, &config.pids, config.threads);
        // A process asked for that is missing from the start ends the
        // watch; one that exits while watched just leaves the table.
        if sample == 1 && report(&errors) {
            return ExitCode::from(1);
        }
        let r = prev.as_ref().map(|p| rates(&snap, p)).unwrap_or_default();
        let mut text = String::new();
        if tty {
            text.push_str(CLEAR);
        } else if sample > 1 {
            text.push('\n');
        }
        text.push_str(&watch_title(&snap, config, sample));
        text.push('\n');
        text.push_str(&render(&snap, config, Some(&r)));
        if !emit(&mut stdout, &text) {
            return ExitCode::from(1);
        }
        if config.count.is_some_and(|n| sample >= n) {
            return ExitCode::SUCCESS;
        }
        prev = Some(snap);
        std::thread::sleep(interval);
    }
}

fn main() -> ExitCode {
    match parse_args(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
    ) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("aemstat {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Show(config)) => show(&config),
        Err(e) => {
            eprintln!("aemstat: {e}\nTry 'aemstat --help' for more information.");
            ExitCode::from(2)
        }
    }
}
