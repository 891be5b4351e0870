//! `aem-word-watch`: an AEM memory watch (SRC-9) on a word that a parent
//! and its forked child share, seen by an inline handler.  Its `unsafe`
//! is the shared mapping, the `fork()`, the child's futex wait and the
//! handler's registration, each with why it is sound.
//!
//! The parent maps a page `MAP_SHARED`, watches its first word
//! ([`aem::Source::memory_watch`] with [`aem::Sharing::Shared`]: writers
//! in other processes), and forks a child that writes `--values` values
//! (default 5: 1001, 2002, ...) to it.  The watch is cooperative, as
//! futexes are: for each value the child **stores, then wakes**
//! ([`aem::wake_watchers`], a shared `FUTEX_WAKE`); a store without a
//! wake would not be seen.
//!
//! The parent's handler runs inline in its main flow, which meanwhile
//! only sleeps; it prints the change, `previous -> new`, and acknowledges
//! it in the second word of the page, which the child waits on as a plain
//! futex (`FUTEX_WAIT`) before its next store.  Without that handshake
//! the child could store twice before the parent's handler ran, and the
//! record would tell only the last value (changes between deliveries
//! coalesce; the record's count tells the wakes).
//!
//! Output, one line each: `child: store <v>` from the child before each
//! store, `watch: <previous> -> <v> (wakes=<n>)` from the handler, and
//! last `done: <n> changes seen`.  Exit status 0 when every value was seen
//! in order within 30 seconds and the child exited with 0, 1 otherwise.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aem::{Action, EventData, Options, Sharing, Source};

#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc<aem::SeparateHeap> = aem::HandlerSafeAlloc::separate();

const USAGE: &str = "usage: aem-word-watch [--values N]";

/// How long the parent waits for all the changes, and the child for each
/// acknowledgement.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The `i`-th value the child stores (from 1): never 0, the initial one.
fn value(i: u64) -> u32 {
    (i * 1001) as u32
}

/// The page the parent and the child share.
struct Shared {
    /// The watched word.
    word: AtomicU32,
    /// The last value the parent's handler saw, for the child to wait on.
    ack: AtomicU32,
}

/// Changes the handler saw (in order, as expected).
static SEEN: AtomicU64 = AtomicU64::new(0);
/// Set by the handler when a change was not the one expected.
static WRONG: AtomicBool = AtomicBool::new(false);

/// A `MAP_SHARED` anonymous page, shared with the children forked later;
/// never unmapped.
fn shared_page() -> Result<&'static Shared, String> {
    // SAFETY: a new anonymous mapping, at an address the kernel chooses.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the page is zero-filled (two AtomicU32 of 0 are a valid
    // Shared), page-aligned, only ever accessed through atomics, in this
    // process and the child, and never unmapped: it lives for ever.
    Ok(unsafe { &*p.cast::<Shared>() })
}

/// In the child: wait until `word` holds `v`, as a shared futex, until
/// `end`.
fn wait_for(word: &AtomicU32, v: u32, end: Instant) -> bool {
    loop {
        let now = word.load(Ordering::Acquire);
        if now == v {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        let tick = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        // SAFETY: FUTEX_WAIT on a live, aligned word, with a live
        // timespec; it sleeps only while the word still holds `now`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                now,
                &tick as *const libc::timespec,
            )
        };
    }
}

/// The child: store each value, wake the watch, wait for the parent's
/// handler to have seen it.  Its exit status.
fn child(shared: &Shared, n: u64) -> i32 {
    let end = Instant::now() + TIMEOUT;
    for i in 1..=n {
        let v = value(i);
        aem::println!("child: store {v}");
        // Store, then wake: the watch reads the word after the wake.
        shared.word.store(v, Ordering::Release);
        if let Err(e) = aem::wake_watchers(&shared.word, Sharing::Shared) {
            aem::eprintln!("aem-word-watch: child: wake: {e}");
            return 1;
        }
        if !wait_for(&shared.ack, v, end) {
            aem::eprintln!("aem-word-watch: child: {v} not acknowledged");
            return 1;
        }
    }
    0
}

fn run(n: u64) -> Result<(), String> {
    let shared = shared_page()?;
    // SAFETY: the handler touches atomics only (SEEN, WRONG, the shared
    // page, which is never unmapped), prints with aem::println!, and
    // makes one futex system call through aem::wake_watchers.
    let watch = unsafe {
        aem::register_inline(
            Source::memory_watch(&shared.word, Sharing::Shared),
            Options::new(),
            move |rec| {
                let EventData::MemoryWatch {
                    value: now,
                    previous,
                } = rec.data
                else {
                    return Action::Rearm;
                };
                let now = match now {
                    Ok(now) => now,
                    Err(e) => {
                        aem::println!("watch: the word cannot be read: {e}");
                        WRONG.store(true, Ordering::Release);
                        return Action::Unregister;
                    }
                };
                aem::println!("watch: {previous} -> {now} (wakes={})", rec.count);
                let i = SEEN.load(Ordering::Acquire) + 1;
                let expected_previous = if i == 1 { 0 } else { value(i - 1) };
                if now != value(i) || previous != expected_previous {
                    WRONG.store(true, Ordering::Release);
                    return Action::Unregister;
                }
                SEEN.store(i, Ordering::Release);
                shared.ack.store(now, Ordering::Release);
                // A plain futex wake for the child's FUTEX_WAIT.
                let _ = aem::wake_watchers(&shared.ack, Sharing::Shared);
                Action::Rearm
            },
        )
    }
    .map_err(|e| format!("watch the word: {e}"))?;

    // SAFETY: the program has a single thread, so the child's copy of
    // every lock and allocator state is consistent; the child leaves
    // with _exit(2), without running the parent's destructors.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = child(shared, n);
        // SAFETY: ends the child; nothing of the parent's is torn down.
        unsafe { libc::_exit(code) };
    }

    // The main flow only waits; the handler interrupts it.
    let end = Instant::now() + TIMEOUT;
    let result = loop {
        if WRONG.load(Ordering::Acquire) {
            break Err("a change was not the one expected".to_string());
        }
        if SEEN.load(Ordering::Acquire) == n {
            break Ok(());
        }
        if Instant::now() >= end {
            break Err(format!(
                "{} of {n} changes seen within {TIMEOUT:?}",
                SEEN.load(Ordering::Acquire)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(watch);
    if result.is_err() {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child, into a live int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result?;
    if status != 0 {
        return Err(format!("the child failed (status {status:#x})"));
    }
    aem::println!("done: {n} changes seen");
    Ok(())
}

/// `Err` holds the problem, empty for `--help`.
fn parse_args() -> Result<u64, String> {
    let mut n = 5;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--values" => {
                let v = it.next().ok_or(format!("{arg} needs a value"))?;
                n = match v.parse() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => return Err(format!("bad {arg} {v}: 1 to 1000")),
                };
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(n)
}

fn main() -> ExitCode {
    let n = match parse_args() {
        Ok(n) => n,
        Err(e) => {
            if !e.is_empty() {
                aem::eprintln!("aem-word-watch: {e}");
            }
            aem::eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            aem::eprintln!("aem-word-watch: {e}");
            ExitCode::FAILURE
        }
    }
}
