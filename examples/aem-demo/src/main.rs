//! The AEM demo: what AEM the guest kernel offers, then a timer and an fd
//! event taken as records while the program keeps its own work going.
//!
//! `make run` boots the guest and runs this program.  Once inline handlers
//! land, the same events run as handlers in the main flow.

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aem::{Clock, EventData, Expiry, FdEvents, Options, Source};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let f = aem::features()?;
    println!("aem-demo: AEM ABI version {}", f.abi_version);
    println!("aem-demo: features {:?}", f.features);
    println!("aem-demo: event sources {:?}", f.sources);

    let tick = Duration::from_millis(100);
    let timer = aem::register(
        Source::Timer {
            clock: Clock::Monotonic,
            expiry: Expiry::After(tick),
            interval: Some(tick),
        },
        Options {
            priority: 10,
            cookie: 1,
            ..Default::default()
        },
    )?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 just returned these descriptors; we own them.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pipe = aem::register(
        Source::Fd {
            fd: reader.as_fd(),
            events: FdEvents::IN,
        },
        Options {
            priority: 50,
            cookie: 2,
            ..Default::default()
        },
    )?;
    println!(
        "aem-demo: registered timer #{} (every 100 ms) and pipe #{}",
        timer.id(),
        pipe.id()
    );

    let start = Instant::now();
    let mut work: u64 = 0;
    let mut ticks = 0;
    while ticks < 3 {
        // The main flow computes; between slices it takes what is pending.
        for i in 0..200_000u64 {
            work = work.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        for rec in aem::wait(8, Some(Duration::ZERO))? {
            match rec.data {
                EventData::Timer { expirations } => {
                    ticks += 1;
                    println!(
                        "aem-demo: {:>4} ms  timer tick {ticks} ({expirations} expiration(s))",
                        start.elapsed().as_millis()
                    );
                    if ticks == 2 {
                        std::fs::File::from(writer.try_clone()?).write_all(b"hello")?;
                    }
                }
                EventData::Fd { fd, ready } => println!(
                    "aem-demo: {:>4} ms  fd {fd} ready {ready:?}",
                    start.elapsed().as_millis()
                ),
                other => println!("aem-demo: {other:?}"),
            }
        }
    }
    println!("aem-demo: main flow kept computing meanwhile ({work:#x})");
    print!(
        "{}",
        std::fs::read_to_string("/proc/self/aem").unwrap_or_default()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aem-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
