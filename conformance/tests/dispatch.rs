//! SHIM-1, SHIM-3: the safe mode, closures that run only inside
//! `aem::dispatch()`.  This test binary keeps the default allocator and
//! uses `std`'s standard output and locks on both sides: in this mode they
//! simply work.  (It writes with `writeln!(stdout())`: libtest captures
//! `println!`, also in a forked child.)

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aem::{Action, FdEvents, Options, Source};
use aem_conformance::{eventfd, eventfd_add, in_child_output, proc_row};

fn readable(fd: &OwnedFd) -> Source<'_> {
    Source::fd(fd.as_fd(), FdEvents::IN)
}

/// Read (and so reset) an eventfd's counter.
fn drain(fd: &OwnedFd) -> u64 {
    let mut v = [0u8; 8];
    match nix::unistd::read(fd, &mut v) {
        Ok(8) => u64::from_ne_bytes(v),
        _ => 0,
    }
}

#[derive(Default)]
struct Counts {
    main_rounds: u64,
    handler_runs: u64,
    drained: u64,
}

#[test]
fn shim_3_dispatched_closures_use_std_print_std_locks_and_the_default_allocator() {
    const EVENTS: u64 = 20_000;
    let (status, out) = in_child_output(1, || {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let efd = Arc::new(eventfd());
        let (c, e) = (counts.clone(), efd.clone());
        let _reg = aem::on_event(readable(&efd), Options::default(), move |_| {
            // A std lock the main flow also takes, std's stdout, the heap.
            let mut c = c.lock().unwrap();
            c.handler_runs += 1;
            c.drained += drain(&e);
            let mut words: Vec<String> = Vec::with_capacity(1);
            words.push(format!("handler {}", c.handler_runs));
            writeln!(std::io::stdout(), "{}", words[0]).unwrap();
            Action::Rearm
        })
        .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (d, e) = (done.clone(), efd.clone());
        let firer = std::thread::spawn(move || {
            for _ in 0..EVENTS {
                eventfd_add(&*e, 1);
            }
            d.store(true, SeqCst);
        });
        let mut i = 0u64;
        while !done.load(SeqCst) || i < 1000 {
            i += 1;
            {
                let mut c = counts.lock().unwrap();
                c.main_rounds += 1;
                writeln!(
                    std::io::stdout(),
                    "main {i} {}",
                    "x".repeat((i % 200) as usize)
                )
                .unwrap();
            }
            if i % 16 == 0 {
                assert!(aem::dispatch(Some(Duration::ZERO)).unwrap().is_empty());
            }
        }
        firer.join().unwrap();
        // What is left: dispatch until every write was drained.
        let end = Instant::now() + Duration::from_secs(10);
        while counts.lock().unwrap().drained < EVENTS && Instant::now() < end {
            let _ = aem::dispatch(Some(Duration::from_millis(10)));
        }
        let c = counts.lock().unwrap();
        writeln!(
            std::io::stdout(),
            "total {} {} {}",
            c.handler_runs,
            c.drained,
            c.main_rounds
        )
        .unwrap();
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    let mut lines: Vec<&str> = out.lines().collect();
    let total: Vec<u64> = lines
        .pop()
        .and_then(|l| l.strip_prefix("total "))
        .expect("no total line")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (handler_runs, drained, main_rounds) = (total[0], total[1], total[2]);
    assert_eq!(drained, EVENTS, "writes lost or invented");
    let whole = |l: &&str| {
        let mut f = l.split(' ');
        match (f.next(), f.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("handler"), Some(_)) => f.next().is_none(),
            (Some("main"), Some(n)) => f.next() == Some(&"x".repeat((n % 200) as usize)),
            _ => false,
        }
    };
    let broken: Vec<&&str> = lines.iter().filter(|l| !whole(l)).take(5).collect();
    assert!(broken.is_empty(), "broken lines: {broken:?}");
    let handler_lines = lines.iter().filter(|l| l.starts_with("handler ")).count() as u64;
    assert_eq!(handler_lines, handler_runs);
    assert_eq!(lines.len() as u64 - handler_lines, main_rounds);
    assert!(handler_runs > 1, "the closures ran only once");
}

#[test]
fn shim_1_dispatch_runs_closures_only_when_called_and_returns_other_records() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::new(eventfd());
    let (r, a2) = (ran.clone(), a.clone());
    let dispatched = aem::on_event(readable(&a), Options::default(), move |rec| {
        r.lock().unwrap().push(rec.count);
        drain(&a2);
        Action::Rearm
    })
    .unwrap();
    let b = eventfd();
    let plain = aem::register(readable(&b), Options::default()).unwrap();
    eventfd_add(&*a, 1);
    eventfd_add(&b, 1);
    std::thread::sleep(Duration::from_millis(10));
    assert!(
        ran.lock().unwrap().is_empty(),
        "a closure ran outside dispatch"
    );
    let others = aem::dispatch(Some(Duration::ZERO)).unwrap();
    assert_eq!(*ran.lock().unwrap(), vec![1]);
    assert_eq!(others.len(), 1, "{others:?}");
    assert_eq!(others[0].id, plain.id());
    // Nothing pending: the timeout ends the call with nothing.
    assert!(aem::dispatch(Some(Duration::from_millis(5)))
        .unwrap()
        .is_empty());
    drop(plain);
    drop(dispatched);
}

#[test]
fn shim_1_dispatch_applies_each_closures_action() {
    let a = Arc::new(eventfd());
    let runs = Arc::new(Mutex::new(0u64));
    let next = Arc::new(Mutex::new(Action::Disarm));
    let (a2, r, n) = (a.clone(), runs.clone(), next.clone());
    let reg = aem::on_event(readable(&a), Options::default(), move |_| {
        drain(&a2);
        *r.lock().unwrap() += 1;
        *n.lock().unwrap()
    })
    .unwrap();
    let id = reg.id();
    eventfd_add(&*a, 1);
    aem::dispatch(Some(Duration::ZERO)).unwrap();
    assert_eq!(*runs.lock().unwrap(), 1);
    // Disarmed: the next activation waits, counted.
    eventfd_add(&*a, 1);
    aem::dispatch(Some(Duration::ZERO)).unwrap();
    assert_eq!(*runs.lock().unwrap(), 1, "ran while disarmed");
    assert_eq!(proc_row(id).unwrap().pending, 1);
    *next.lock().unwrap() = Action::Unregister;
    reg.enable().unwrap();
    aem::dispatch(Some(Duration::ZERO)).unwrap();
    assert_eq!(*runs.lock().unwrap(), 2);
    assert!(proc_row(id).is_none(), "Action::Unregister left the event");
    // The handle is inert now; dropping it harms nothing.
    drop(reg);
}

#[test]
fn shim_1_a_closure_may_drop_its_own_registration() {
    let a = Arc::new(eventfd());
    let slot: Arc<Mutex<Option<aem::DispatchRegistration>>> = Arc::new(Mutex::new(None));
    let (a2, s) = (a.clone(), slot.clone());
    let reg = aem::on_event(readable(&a), Options::default(), move |_| {
        drain(&a2);
        drop(s.lock().unwrap().take());
        Action::Rearm
    })
    .unwrap();
    let id = reg.id();
    *slot.lock().unwrap() = Some(reg);
    eventfd_add(&*a, 1);
    aem::dispatch(Some(Duration::ZERO)).unwrap();
    assert!(slot.lock().unwrap().is_none());
    assert!(proc_row(id).is_none(), "dropping the handle left the event");
    eventfd_add(&*a, 1);
    assert!(aem::dispatch(Some(Duration::from_millis(5)))
        .unwrap()
        .is_empty());
}
