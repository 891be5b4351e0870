//! The runner: tests one at a time, in name order (libtest's order with
//! `--test-threads=1`), each in a process of its own -- this binary again
//! (fork and exec of `/proc/self/exe`), in a new process group, its output
//! on a pipe, killed after a timeout -- and their results in TAP.  In the
//! test process the test runs on a thread named after it, as under
//! libtest, and a panic fails it.
//!
//! A test that crashes its process, hangs, or leaves processes or AEM
//! state behind fails alone, or leaves nothing for the next: each test
//! process starts fresh, and whatever the test left in its process group
//! is killed when it ends.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::args::{self, Command, Ignored, Options};
use crate::registry::{self, ShouldPanic, Test};
use crate::{alloc, tap, FILES};

/// The most output of a failed test its diagnostic shows (the end).
const OUTPUT_SHOWN: usize = 64 * 1024;

/// How long output may keep coming once the test process is gone (from a
/// process that left its process group).
const DRAIN: Duration = Duration::from_secs(2);

/// Do what the command line asks; the exit status.
pub(crate) fn main() -> i32 {
    match args::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            0
        }
        Ok(Command::RunOne { name, report }) => run_one(&name, Path::new(&report)),
        Ok(Command::Run(options)) => run(&options),
        Err(e) => {
            eprintln!("aem-conformance-tap: {e}\n\n{}", args::USAGE);
            2
        }
    }
}

/// A selected test: its full name and its registration.
struct Selected {
    name: String,
    test: &'static Test,
}

/// The tests `options` select, in order.
fn select(options: &Options) -> Vec<Selected> {
    let mut out = Vec::new();
    for test in registry::tests() {
        let name = test.full_name();
        let wanted = match options.ignored {
            Ignored::Only => test.ignore.is_some(),
            Ignored::Skip | Ignored::Include => true,
        };
        if wanted && options.selects(&name) {
            out.push(Selected { name, test });
        }
    }
    out
}

/// How a test ended.
enum Outcome {
    /// It passed.
    Pass,
    /// It failed: the diagnostic's fields.
    Fail(Vec<(&'static str, String)>),
}

/// The process group of the test running now (0: none), for the signal
/// handler.
static RUNNING: AtomicI32 = AtomicI32::new(0);

/// On SIGINT, SIGTERM or SIGHUP: kill the running test's process group,
/// then die of the signal.
extern "C" fn on_signal(sig: libc::c_int) {
    let group = RUNNING.load(Ordering::SeqCst);
    // SAFETY: kill, signal and raise are async-signal-safe.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Run (or list) the selected tests, printing TAP; the exit status.
fn run(options: &Options) -> i32 {
    let selected = select(options);
    if options.list {
        for s in &selected {
            println!("{}: test", s.name);
        }
        println!("\n{} tests, 0 benchmarks", selected.len());
        return 0;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("aem-conformance-tap: cannot find its own executable: {e}");
            return 2;
        }
    };
    let dir = match report_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("aem-conformance-tap: cannot make a directory for the reports: {e}");
            return 2;
        }
    };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }

    let total = registry::tests().len();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "TAP version 13");
    let _ = writeln!(out, "1..{}", selected.len());
    let _ = writeln!(
        out,
        "# aem-conformance-tap: {} of {total} tests of {} files; kernel {}",
        selected.len(),
        FILES.len(),
        kernel_release()
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        let _ = writeln!(
            out,
            "# not running as root (euid {euid}): the tests that need root will fail"
        );
    }
    // Built without `make conformance-tap`'s remapping, the test files'
    // paths read conformance/tap/../tests/...
    if file!().contains("/../") {
        let _ = writeln!(
            out,
            "# note: not built by `make conformance-tap`: panic locations name the test files \
             conformance/tap/../tests/*.rs, and a test that checks its own (shim::shim_4_...) fails"
        );
    }
    let _ = out.flush();

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (i, s) in selected.iter().enumerate() {
        let n = i + 1;
        if let (Some(why), Ignored::Skip) = (s.test.ignore, options.ignored) {
            skipped += 1;
            let why = if why.is_empty() { "ignored" } else { why };
            let _ = writeln!(out, "{}", tap::ok(n, &s.name, Some(why)));
            let _ = out.flush();
            continue;
        }
        let outcome = run_test(&exe, &dir, s, options);
        let line = match outcome {
            Outcome::Pass => {
                passed += 1;
                tap::ok(n, &s.name, None)
            }
            Outcome::Fail(fields) => {
                failed += 1;
                tap::not_ok(n, &s.name, &fields)
            }
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let _ = writeln!(out, "# pass {passed}\n# fail {failed}\n# skip {skipped}");
    let _ = out.flush();
    let _ = std::fs::remove_dir_all(&dir);
    i32::from(failed > 0)
}

/// `uname -r`.
fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// A new private directory for the test processes' reports.
fn report_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("aem-conformance-tap.{}", std::process::id()));
    // A stale one, from an earlier run with this pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Run one test in a process of its own: this binary, `--aem-tap-run-one
/// NAME REPORT`, with the file's allocator, in a new process group,
/// standard input from /dev/null and its output (standard output and
/// error together) read from a pipe; killed with its group after
/// `options.timeout`.
fn run_test(exe: &Path, dir: &Path, s: &Selected, options: &Options) -> Outcome {
    let report = dir.join("report");
    let _ = std::fs::remove_file(&report);
    let mut command = std::process::Command::new(exe);
    command
        .arg(args::RUN_ONE)
        .arg(&s.name)
        .arg(&report)
        .env(alloc::FILE_VAR, s.test.file())
        .stdin(Stdio::null())
        .process_group(0);
    let reader = if options.nocapture {
        let err = std::io::stderr();
        match (
            err.as_fd().try_clone_to_owned(),
            err.as_fd().try_clone_to_owned(),
        ) {
            (Ok(a), Ok(b)) => {
                command.stdout(a).stderr(b);
            }
            (Err(e), _) | (_, Err(e)) => return start_failure(e),
        }
        None
    } else {
        let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return start_failure(e.into()),
        };
        let w2 = match w.try_clone() {
            Ok(w2) => w2,
            Err(e) => return start_failure(e),
        };
        command.stdout(w).stderr(w2);
        Some(r)
    };
    let start = Instant::now();
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return start_failure(e),
    };
    // The command holds the pipe's write ends: close them here.
    drop(command);
    let group = child.id() as i32;
    RUNNING.store(group, Ordering::SeqCst);

    let mut output = Output::default();
    let mut reader = reader.map(File::from);
    if let Some(r) = &reader {
        let _ = nix::fcntl::fcntl(
            r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let deadline = start + options.timeout;
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut drain_until = None;
    loop {
        match reader.as_mut() {
            Some(r) => {
                if output.read_from(r) {
                    reader = None;
                }
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
        let now = Instant::now();
        if status.is_none() {
            if let Ok(Some(st)) = child.try_wait() {
                status = Some(st);
            } else if now >= deadline {
                timed_out = true;
                kill_group(group);
                status = child.wait().ok();
            }
            if status.is_some() {
                // What the test left running dies with it.
                kill_group(group);
                drain_until = Some(Instant::now() + DRAIN);
            }
        }
        if status.is_some() && (reader.is_none() || drain_until.is_some_and(|d| now >= d)) {
            break;
        }
    }
    RUNNING.store(0, Ordering::SeqCst);
    let took = start.elapsed();
    let report = std::fs::read_to_string(&report).ok();

    let Some(status) = status else {
        return Outcome::Fail(vec![(
            "message",
            "the test process could not be waited for".into(),
        )]);
    };
    if status.success() && !timed_out {
        return Outcome::Pass;
    }
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    let (message, at) = match report.as_deref().and_then(|r| r.split_once('\n')) {
        Some((at, message)) => (message.to_string(), at.to_string()),
        None => (
            if timed_out {
                format!("timed out after {} s", options.timeout.as_secs())
            } else {
                format!(
                    "the test process ended without a report: {}",
                    describe(status)
                )
            },
            String::new(),
        ),
    };
    fields.push(("message", message));
    if !at.is_empty() {
        fields.push(("at", at));
    }
    fields.push(("severity", "fail".into()));
    fields.push((
        "status",
        if timed_out {
            format!("killed after the {} s timeout", options.timeout.as_secs())
        } else {
            describe(status)
        },
    ));
    fields.push(("duration_ms", took.as_millis().to_string()));
    if !options.nocapture {
        fields.push(("output", output.text()));
    }
    Outcome::Fail(fields)
}

/// The outcome of a test whose process could not be started.
fn start_failure(e: std::io::Error) -> Outcome {
    Outcome::Fail(vec![(
        "message",
        format!("cannot start the test process: {e}"),
    )])
}

/// Kill the process group `group`, if any of it is left.
fn kill_group(group: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(group),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// "exit 1", "signal 11 (SIGSEGV)".
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("?");
        format!(
            "signal {sig} ({name}){}",
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        )
    } else {
        format!("{status}")
    }
}

/// A test's output: the last [`OUTPUT_SHOWN`] bytes of it.
#[derive(Default)]
struct Output {
    tail: Vec<u8>,
    dropped: usize,
}

impl Output {
    /// Read what `r` (non-blocking) has, waiting up to 50 ms for it;
    /// whether it reached its end.
    fn read_from(&mut self, r: &mut File) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u8)).is_err() {
            return false;
        }
        let mut buf = [0u8; 16384];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * OUTPUT_SHOWN {
            let cut = self.tail.len() - OUTPUT_SHOWN;
            self.dropped += cut;
            self.tail.drain(..cut);
        }
    }

    /// The output as text, saying how much of it was left out.
    fn text(&self) -> String {
        let mut tail = &self.tail[..];
        let mut dropped = self.dropped;
        if tail.len() > OUTPUT_SHOWN {
            dropped += tail.len() - OUTPUT_SHOWN;
            tail = &tail[tail.len() - OUTPUT_SHOWN..];
        }
        let text = String::from_utf8_lossy(tail);
        if dropped > 0 {
            format!("[the first {dropped} bytes are not shown]\n{text}")
        } else {
            text.into_owned()
        }
    }
}

/// The thread the test runs on, for the panic hook.
static TEST_THREAD: OnceLock<std::thread::ThreadId> = OnceLock::new();

/// Where the test thread first panicked.
static PANICKED_AT: Mutex<Option<String>> = Mutex::new(None);

/// In the test process: run the test `name` on a thread named after it
/// (as libtest does), and write the panic's location and message, if it
/// failed, to `report`.  Exit status 0 when it passed, 1 when it failed.
fn run_one(name: &str, report: &Path) -> i32 {
    let Some(test) = registry::find(name) else {
        eprintln!("aem-conformance-tap: no test {name}");
        return 2;
    };
    let pid = std::process::id();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Only the test thread of this process (not a child a test forked
        // with the thread in it, which has a pid of its own).
        if std::process::id() == pid && TEST_THREAD.get() == Some(&std::thread::current().id()) {
            if let Ok(mut at) = PANICKED_AT.lock() {
                if at.is_none() {
                    *at = info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                }
            }
        }
        default_hook(info);
    }));

    let run = test.run;
    let thread = std::thread::Builder::new()
        .name(test.name.to_string())
        .spawn(move || {
            let _ = TEST_THREAD.set(std::thread::current().id());
            run()
        });
    let handle = match thread {
        Ok(h) => h,
        Err(e) => {
            write_report(report, "", &format!("cannot start the test thread: {e}"));
            return 1;
        }
    };
    let result = handle.join();
    let at = PANICKED_AT
        .lock()
        .ok()
        .and_then(|a| a.clone())
        .unwrap_or_default();
    let failure = match (result, &test.should_panic) {
        (Ok(()), ShouldPanic::No) => None,
        (Ok(()), _) => Some("test did not panic as expected".to_string()),
        (Err(payload), ShouldPanic::No) => Some(panic_message(&*payload)),
        (Err(_), ShouldPanic::Yes) => None,
        (Err(payload), ShouldPanic::Expected(want)) => {
            let got = panic_message(&*payload);
            if got.contains(want) {
                None
            } else {
                Some(format!(
                    "panic did not contain expected string\n      panic message: {got:?}\n expected substring: {want:?}"
                ))
            }
        }
    };
    match failure {
        None => 0,
        Some(message) => {
            write_report(report, &at, &message);
            1
        }
    }
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// The report: the location, a line, then the message.
fn write_report(report: &Path, at: &str, message: &str) {
    if let Err(e) = std::fs::write(report, format!("{at}\n{message}")) {
        eprintln!(
            "aem-conformance-tap: cannot write {}: {e}",
            report.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::prelude::v1::test;

    #[test]
    fn selection_keeps_name_order_and_filters() {
        let all = select(&Options::default());
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(all.len(), registry::tests().len());
        let some = select(&Options {
            filters: vec!["api::".into()],
            ..Options::default()
        });
        assert!(some.len() > 5 && some.iter().all(|s| s.name.starts_with("api::")));
        let ignored = select(&Options {
            ignored: Ignored::Only,
            ..Options::default()
        });
        assert!(ignored.iter().all(|s| s.test.ignore.is_some()));
        assert!(ignored
            .iter()
            .any(|s| s.name == "registry::fixtures::fixture_ignored"));
    }

    #[test]
    fn output_keeps_its_end() {
        let mut o = Output::default();
        o.push(b"hello\n");
        assert_eq!(o.text(), "hello\n");
        for _ in 0..3 {
            o.push(&vec![b'x'; OUTPUT_SHOWN]);
        }
        o.push(b"end");
        let text = o.text();
        assert!(text.starts_with(&format!(
            "[the first {} bytes are not shown]\n",
            6 + 3 * OUTPUT_SHOWN + 3 - OUTPUT_SHOWN
        )));
        assert!(text.ends_with("xxend"));
    }

    #[test]
    fn statuses_are_described() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit 1");
        assert_eq!(describe(ExitStatus::from_raw(11)), "signal 11 (SIGSEGV)");
        assert_eq!(
            describe(ExitStatus::from_raw(6 | 0x80)),
            "signal 6 (SIGABRT), core dumped"
        );
    }
}
