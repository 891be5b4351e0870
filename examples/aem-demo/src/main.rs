//! The AEM demo: a timer event and an fd event handled inline, by the
//! kernel calling our handlers in the main flow, while the main flow keeps
//! computing and never waits for them.
//!
//! `make run` boots the guest and runs this program.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aem::{Action, EventData, FdEvents, Options, Source};
use nix::fcntl::OFlag;
use nix::unistd;

/// Progress of the main flow, read by the handlers.
static ITERATIONS: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

// Handlers allocate (a lossy string): the allocator must be handler-safe,
// over a heap of its own so that C library calls cannot block it.
#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc<aem::SeparateHeap> = aem::HandlerSafeAlloc::separate();

// A handler may interrupt the main flow anywhere, even inside std's stdout
// lock: every line goes through aem::println!, which handlers and the main
// flow can share.

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let f = aem::features()?;
    aem::println!("aem-demo: AEM ABI version {}", f.abi_version);
    aem::println!("aem-demo: features {:?}", f.features);
    aem::println!("aem-demo: event sources {:?}", f.sources);

    // The timer's handler owns the write end; the read end is shared by
    // its registration and its handler.
    let (reader, writer) = unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let reader = Arc::new(reader);
    let start = Instant::now();

    let tick = Duration::from_millis(100);
    let on_tick = move |rec: &mut aem::Record| {
        let n = TICKS.fetch_add(1, Relaxed) + 1;
        let EventData::Timer { expirations } = rec.data else {
            return Action::Rearm;
        };
        aem::println!(
            "aem-demo: {:>4} ms  timer handler: tick {n} ({expirations} expiration), main flow at iteration {}",
            start.elapsed().as_millis(),
            ITERATIONS.load(Relaxed)
        );
        if n == 2 {
            // Another event, raised from inside this handler: it runs
            // when this handler returns, never nested in it.
            let _ = unistd::write(&writer, b"hello");
        }
        Action::Rearm
    };
    // SAFETY: the handler touches atomics only, reads the clock, prints
    // with aem::println! and calls write(2) (nix's wrapper does not
    // allocate), which is async-signal-safe.
    let timer = unsafe {
        aem::register_inline(Source::periodic(tick), Options::new().priority(10), on_tick)
    }?;
    let pipe_reader = Arc::clone(&reader);
    let on_pipe = move |_: &mut aem::Record| {
        let mut buf = [0u8; 16];
        let n = unistd::read(&pipe_reader, &mut buf).unwrap_or(0);
        aem::println!(
            "aem-demo: {:>4} ms  pipe handler: read {:?}, main flow at iteration {}",
            start.elapsed().as_millis(),
            String::from_utf8_lossy(&buf[..n]),
            ITERATIONS.load(Relaxed)
        );
        Action::Rearm
    };
    // SAFETY: the handler calls read(2) (nix's wrapper does not allocate),
    // which is async-signal-safe, reads the clock and an atomic, prints with
    // aem::println! and allocates (a lossy string), with this binary's
    // global allocator aem::HandlerSafeAlloc.
    let pipe = unsafe {
        aem::register_inline(
            Source::fd(reader.as_fd(), FdEvents::IN),
            Options::new().priority(50),
            on_pipe,
        )
    }?;
    aem::println!(
        "aem-demo: timer #{} (every 100 ms) and pipe #{} handled inline; main flow computes",
        timer.id(),
        pipe.id()
    );

    // The main flow never waits for events: it computes, and the kernel
    // runs the handlers in between.
    let mut work: u64 = 0;
    while TICKS.load(Relaxed) < 3 {
        for i in 0..10_000u64 {
            work = work.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        ITERATIONS.fetch_add(1, Relaxed);
    }
    aem::println!(
        "aem-demo: main flow ran {} iterations meanwhile ({work:#x})",
        ITERATIONS.load(Relaxed)
    );
    aem::print!("{}", std::fs::read_to_string("/proc/self/aem")?);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            aem::eprintln!("aem-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
