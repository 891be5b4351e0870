//! `aem-topic-pubsub`: publish/subscribe between processes on an AEM topic
//! (SRC-7).  Safe Rust, but for the `fork()` that starts the subscribers.
//!
//! The parent creates a topic, `aem-topic-pubsub.<pid>` (mode 0600: this
//! user alone), and forks two subscriber processes, which open it by name
//! for subscribing:
//!
//! - `dispatched` registers a closure with [`aem::on_event`] and runs it
//!   from [`aem::dispatch`]: the safe handler mode, where the closure may
//!   print with `std` and lock `std` mutexes;
//! - `polled` registers the subscription with [`aem::register`] and takes
//!   its records itself with [`aem::wait`].
//!
//! Once the topic counts both subscriptions ([`aem::Topic::info`]), the
//! parent publishes `--payloads` payloads (default 100), payload `seq * seq`
//! for the `seq`-th: the first half one by one ([`aem::Topic::publish`]),
//! the rest in one write ([`aem::Topic::publish_all`]).
//!
//! Every subscriber sees the topic's order, with no publication lost
//! silently: a subscriber more than `AEM_TOPIC_QUEUE` (16) publications
//! behind gets the further ones summed up in its newest record, whose
//! `count` says how many it stands for (the payload and number are the
//! last one's).  Each subscriber checks that: a record's sequence number
//! is the previous one's plus its count, and its payload is its number
//! squared; the counts add up to exactly `--payloads`.
//!
//! Output, one line each: `<who>: seq=<s> payload=<p> count=<c>` per record
//! (`<who>` is `dispatched` or `polled`), then `<who>: <n> publications in
//! <r> records, last seq <s>`; from the parent, `published <n> payloads`
//! and, when both subscribers exited with status 0, last, `ok: 2
//! subscribers saw all <n> publications`.  Exit status 0 then, 1 when
//! anything went wrong (said on standard error).

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aem::{Action, EventData, Options, Record, Topic, TopicOptions};

const USAGE: &str = "usage: aem-topic-pubsub [--payloads N]";

/// How long a subscriber waits for all the publications, and the parent
/// for the subscribers.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The payload of publication `seq`.
fn payload(seq: u64) -> u64 {
    seq.wrapping_mul(seq)
}

/// What a subscriber saw so far.
#[derive(Debug, Default)]
struct Tally {
    /// Records taken.
    records: u64,
    /// Publications they stand for (their counts).
    publications: u64,
    /// The sequence number of the last one.
    last_seq: u64,
}

impl Tally {
    /// Print and check one record of the subscription.
    fn take(&mut self, who: &str, rec: &Record) -> Result<(), String> {
        let EventData::Topic { payload: p, seq } = rec.data else {
            return Err(format!("not a topic record: {rec:?}"));
        };
        println!("{who}: seq={seq} payload={p} count={}", rec.count);
        if rec.count == 0 || seq != self.last_seq + rec.count {
            return Err(format!(
                "seq {seq} with count {} after seq {}: a publication lost or repeated",
                rec.count, self.last_seq
            ));
        }
        if p != payload(seq) {
            return Err(format!("seq {seq}: payload {p}, {} expected", payload(seq)));
        }
        self.records += 1;
        self.publications += rec.count;
        self.last_seq = seq;
        Ok(())
    }
}

/// How a subscriber takes its records.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Dispatched,
    Polled,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dispatched => "dispatched",
            Mode::Polled => "polled",
        }
    }
}

/// A subscriber process: subscribe to `name`, take the `total`
/// publications, print them and what they add up to.
fn subscriber(mode: Mode, name: &str, total: u64) -> Result<(), String> {
    let who = mode.name();
    let topic = TopicOptions::new()
        .subscribe(true)
        .open(name)
        .map_err(|e| format!("open {name}: {e}"))?;
    let end = Instant::now() + TIMEOUT;
    let left = || end.saturating_duration_since(Instant::now());
    let tally = match mode {
        Mode::Dispatched => {
            // The closure runs inside aem::dispatch, on this thread: a std
            // Mutex is fine to share with it.
            let shared = Arc::new(Mutex::new((Tally::default(), Ok(()))));
            let state = shared.clone();
            let _sub = aem::on_event(topic.source(), Options::new(), move |rec| {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                let (tally, result) = &mut *state;
                *result = tally.take(who, rec);
                if result.is_err() || tally.publications >= total {
                    Action::Unregister
                } else {
                    Action::Rearm
                }
            })
            .map_err(|e| format!("subscribe: {e}"))?;
            loop {
                {
                    let state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    state.1.clone()?;
                    if state.0.publications >= total {
                        break;
                    }
                }
                if left().is_zero() {
                    return Err("timed out".into());
                }
                aem::dispatch(Some(left())).map_err(|e| format!("dispatch: {e}"))?;
            }
            let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
            core::mem::take(&mut state.0)
        }
        Mode::Polled => {
            let _sub = aem::register(topic.source(), Options::new())
                .map_err(|e| format!("subscribe: {e}"))?;
            let mut tally = Tally::default();
            while tally.publications < total {
                if left().is_zero() {
                    return Err("timed out".into());
                }
                for rec in aem::wait(64, Some(left())).map_err(|e| format!("wait: {e}"))? {
                    tally.take(who, &rec)?;
                }
            }
            tally
        }
    };
    if tally.publications != total {
        return Err(format!(
            "{} publications, {total} published",
            tally.publications
        ));
    }
    println!(
        "{who}: {} publications in {} records, last seq {}",
        tally.publications, tally.records, tally.last_seq
    );
    Ok(())
}

/// Fork a subscriber process; its pid.
fn spawn_subscriber(mode: Mode, name: &str, total: u64) -> Result<libc::pid_t, String> {
    // What is buffered would be written twice, by both processes.
    let _ = std::io::stdout().flush();
    // SAFETY: the program has a single thread, so the child's copy of
    // every lock and allocator state is consistent; the child ends with
    // process::exit and never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = match subscriber(mode, name, total) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("aem-topic-pubsub: {}: {e}", mode.name());
                1
            }
        };
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(pid)
}

/// Whether child `pid` has exited (reaped now), and with which status.
fn try_reap(pid: libc::pid_t, block: bool) -> Option<i32> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: waitpid(2) on our own child, into a live int.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    (r == pid).then_some(status)
}

/// Wait up to `limit` for child `pid`; kill it past that.
fn reap_within(pid: libc::pid_t, limit: Duration) -> i32 {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = try_reap(pid, false) {
            return status;
        }
        if Instant::now() > end {
            // SAFETY: kill(2) on our own child, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return try_reap(pid, true).unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until `topic` has `n` subscriptions, or a subscriber gave up.
fn await_subscribers(topic: &Topic, n: u32, pids: &[libc::pid_t]) -> Result<(), String> {
    let end = Instant::now() + TIMEOUT;
    loop {
        let info = topic.info().map_err(|e| format!("topic info: {e}"))?;
        if info.subscribers >= n {
            return Ok(());
        }
        for &pid in pids {
            if let Some(status) = try_reap(pid, false) {
                return Err(format!(
                    "subscriber {pid} ended before subscribing (status {status:#x})"
                ));
            }
        }
        if Instant::now() > end {
            return Err(format!("{} of {n} subscriptions", info.subscribers));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(total: u64) -> Result<(), String> {
    let name = format!("aem-topic-pubsub.{}", std::process::id());
    let topic = TopicOptions::new()
        .publish(true)
        .create(0o600)
        .exclusive(true)
        .open(&name)
        .map_err(|e| format!("create {name}: {e}"))?;
    let mut pids = Vec::new();
    for mode in [Mode::Dispatched, Mode::Polled] {
        match spawn_subscriber(mode, &name, total) {
            Ok(pid) => pids.push(pid),
            Err(e) => {
                for &pid in &pids {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    try_reap(pid, true);
                }
                return Err(e);
            }
        }
    }
    let published = await_subscribers(&topic, 2, &pids).and_then(|()| {
        let seqs: Vec<u64> = (1..=total).collect();
        let (one_by_one, batch) = seqs.split_at(seqs.len() / 2);
        for &seq in one_by_one {
            topic
                .publish(payload(seq))
                .map_err(|e| format!("publish: {e}"))?;
        }
        let batch: Vec<u64> = batch.iter().map(|&seq| payload(seq)).collect();
        let n = topic
            .publish_all(&batch)
            .map_err(|e| format!("publish: {e}"))?;
        if n != batch.len() {
            return Err(format!("published {n} of a batch of {}", batch.len()));
        }
        println!("published {total} payloads");
        Ok(())
    });
    // Reap both, whatever happened: a subscriber that never sees all it
    // waits for gives up at its own timeout.
    let statuses: Vec<i32> = pids
        .iter()
        .map(|&pid| reap_within(pid, TIMEOUT + Duration::from_secs(5)))
        .collect();
    published?;
    if let Some(status) = statuses.iter().find(|&&s| s != 0) {
        return Err(format!("a subscriber failed (status {status:#x})"));
    }
    println!("ok: 2 subscribers saw all {total} publications");
    Ok(())
}

/// `Err` holds the problem, empty for `--help`.
fn parse_args() -> Result<u64, String> {
    let mut total = 100;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--payloads" => {
                let v = it.next().ok_or(format!("{arg} needs a value"))?;
                total = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("bad {arg} {v}: a positive integer is needed")),
                };
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(total)
}

fn main() -> ExitCode {
    let total = match parse_args() {
        Ok(total) => total,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("aem-topic-pubsub: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(total) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-topic-pubsub: {e}");
            ExitCode::FAILURE
        }
    }
}
