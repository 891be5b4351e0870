//! SRC: event sources (MISSION.md SRC-1 fd readiness, SRC-5 timers).
//!
//! The tests share the process's AEM context: run with --test-threads=1
//! (as `make test` does).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aem::{Clock, EventData, Expiry, FdEvents, Options, Source};
use aem_conformance::{eventfd, eventfd_add, pipe, proc_row, watch_in, write_fd};

const SEC: Duration = Duration::from_secs(1);

fn timer(expiry: Expiry, interval: Option<Duration>) -> Source<'static> {
    Source::timer(Clock::Monotonic, expiry, interval)
}

#[test]
fn src_1_pipe_readable_delivers_fd_and_mask() {
    let (r, w) = pipe();
    let reg = watch_in(&r, Options::new().cookie(0xfeed)).unwrap();
    assert!(
        aem::wait(8, Some(Duration::ZERO)).unwrap().is_empty(),
        "not ready yet"
    );
    write_fd(&w, b"x");
    let recs = aem::wait(8, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].id, reg.id());
    assert_eq!(recs[0].cookie, 0xfeed);
    match recs[0].data {
        EventData::Fd { fd, ready } => {
            assert_eq!(fd, r.as_raw_fd());
            assert!(ready.contains(FdEvents::IN), "{ready:?}");
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn src_1_already_ready_fd_fires_at_registration() {
    let efd = eventfd();
    eventfd_add(&efd, 1);
    let reg = watch_in(&efd, Options::default()).unwrap();
    let recs = aem::wait(8, Some(SEC)).unwrap();
    assert_eq!(recs.iter().map(|r| r.id).collect::<Vec<_>>(), [reg.id()]);
}

#[test]
fn src_1_hangup_is_reported_without_asking() {
    let (r, w) = pipe();
    let reg = watch_in(&r, Options::default()).unwrap();
    drop(w);
    let recs = aem::wait(8, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, reg.id());
    match recs[0].data {
        EventData::Fd { ready, .. } => assert!(ready.contains(FdEvents::HUP), "{ready:?}"),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn src_1_edge_triggered_coalesces_and_level_repeats() {
    let (r, w) = pipe();
    let edge = watch_in(&r, Options::default()).unwrap();
    write_fd(&w, b"a");
    write_fd(&w, b"b");
    let recs = aem::wait(8, Some(SEC)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].count, 2, "two wake-ups, one record counting both");
    // Edge: data left unread gives no new record.
    assert!(aem::wait(8, Some(Duration::from_millis(50)))
        .unwrap()
        .is_empty());
    drop(edge);

    let level = watch_in(&r, Options::new().level(true)).unwrap();
    for _ in 0..3 {
        let recs = aem::wait(8, Some(SEC)).unwrap();
        assert_eq!(recs.iter().map(|r| r.id).collect::<Vec<_>>(), [level.id()]);
    }
}

#[test]
fn src_1_rejects_bad_fd_and_unpollable_file() {
    let bad = aem::register(
        Source::fd(
            // SAFETY: fd 999 is not open in the test; the kernel must say so.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(999) },
            FdEvents::IN,
        ),
        Options::default(),
    );
    assert_eq!(bad.unwrap_err(), aem::Error::Os(aem::Errno(libc::EBADF)));

    let file = std::fs::File::create("/tmp/src_1_regular").unwrap();
    let regular = watch_in(&file, Options::default());
    assert_eq!(
        regular.unwrap_err(),
        aem::Error::Os(aem::Errno(libc::EPERM))
    );

    let ctx = aem::context_fd().unwrap();
    let own_context = watch_in(&ctx, Options::default());
    assert_eq!(own_context.unwrap_err(), aem::Error::Os(aem::Errno::EINVAL));
}

#[test]
fn src_5_one_shot_relative_timer_fires_once_on_time() {
    let start = Instant::now();
    let reg = aem::register(
        timer(Expiry::After(Duration::from_millis(30)), None),
        Options::default(),
    )
    .unwrap();
    let recs = aem::wait(8, Some(5 * SEC)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, reg.id());
    assert_eq!(recs[0].data, EventData::Timer { expirations: 1 });
    assert!(aem::wait(8, Some(Duration::from_millis(100)))
        .unwrap()
        .is_empty());
}

#[test]
fn src_5_periodic_timer_counts_every_expiration() {
    let interval = Duration::from_millis(2);
    let reg = aem::register(
        timer(Expiry::After(interval), Some(interval)),
        Options::new().disabled(true),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    reg.disable().unwrap();
    let before = proc_row(reg.id()).unwrap();
    assert!(before.activations > 0);
    reg.enable().unwrap();
    let mut expirations = 0;
    let mut activations = 0;
    while activations < before.activations {
        for rec in aem::wait(8, Some(SEC)).unwrap() {
            activations += rec.count;
            if let EventData::Timer { expirations: e } = rec.data {
                expirations += e;
            }
        }
    }
    // Each activation reports at least one expiration; late callbacks
    // report their overruns too.
    assert!(expirations >= activations, "{expirations} < {activations}");
    assert!(
        expirations >= 200 / 2 / 2,
        "only {expirations} expirations in 200 ms"
    );
}

#[test]
fn src_5_absolute_timers_on_realtime_and_boottime() {
    for clock in [Clock::Realtime, Clock::Boottime, Clock::Monotonic] {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let id = match clock {
            Clock::Realtime => libc::CLOCK_REALTIME,
            Clock::Boottime => libc::CLOCK_BOOTTIME,
            Clock::Monotonic => libc::CLOCK_MONOTONIC,
        };
        // SAFETY: `now` is a valid timespec to fill.
        assert_eq!(unsafe { libc::clock_gettime(id, &mut now) }, 0);
        let at = Duration::new(now.tv_sec as u64, now.tv_nsec as u32) + Duration::from_millis(20);
        let reg = aem::register(
            Source::timer(clock, Expiry::At(at), None),
            Options::default(),
        )
        .unwrap();
        let recs = aem::wait(8, Some(5 * SEC)).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.id).collect::<Vec<_>>(),
            [reg.id()],
            "{clock:?}"
        );
    }
}

#[test]
fn src_5_rejects_bad_timer_arguments() {
    let einval = Err(aem::Error::Os(aem::Errno::EINVAL));
    let zero = aem::register(
        timer(Expiry::After(Duration::ZERO), None),
        Options::default(),
    );
    assert_eq!(zero.map(|r| r.id()), einval);
    let tiny = aem::register(
        timer(Expiry::After(SEC), Some(Duration::from_nanos(10))),
        Options::default(),
    );
    assert_eq!(tiny.map(|r| r.id()), einval);
    let level = aem::register(timer(Expiry::After(SEC), None), Options::new().level(true));
    assert_eq!(level.map(|r| r.id()), einval, "timers have no level");
}
