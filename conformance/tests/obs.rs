//! OBS-1: /proc/<pid>/aem lists every registration with its counters.
//! OBS-2: the aem:* tracepoints follow an event through ftrace.

use std::time::Duration;

use aem::{Options, Source};
use aem_conformance::{
    eventfd, eventfd_add, proc_aem, proc_row, start_aem_tracing, stop_aem_tracing, watch_in,
};

#[test]
fn obs_1_proc_lists_registrations_with_counters() {
    let efd = eventfd();
    let fd_reg = watch_in(&efd, Options::new().priority(42).level(true)).unwrap();
    let timer_reg = aem::register(
        Source::after(Duration::from_secs(3600)),
        Options::new().oneshot(true).disabled(true),
    )
    .unwrap();

    let fd_row = proc_row(fd_reg.id()).unwrap();
    assert_eq!(
        (
            fd_row.source.as_str(),
            fd_row.prio,
            fd_row.flags.as_str(),
            fd_row.state.as_str()
        ),
        ("fd", 42, "level", "enabled")
    );
    assert_eq!(
        (fd_row.activations, fd_row.deliveries, fd_row.pending),
        (0, 0, 0)
    );
    let t_row = proc_row(timer_reg.id()).unwrap();
    assert_eq!(
        (
            t_row.source.as_str(),
            t_row.flags.as_str(),
            t_row.state.as_str()
        ),
        ("timer", "oneshot,disabled", "disabled")
    );

    eventfd_add(&efd, 1);
    let row = proc_row(fd_reg.id()).unwrap();
    assert_eq!((row.activations, row.pending), (1, 1));
    let recs = aem::wait(4, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(recs.len(), 1);
    let row = proc_row(fd_reg.id()).unwrap();
    assert_eq!(row.deliveries, 1);

    drop(fd_reg);
    drop(timer_reg);
    assert!(
        proc_aem("self").is_empty(),
        "unregistered events still listed"
    );
}

#[test]
fn obs_1_other_process_reads_our_registrations() {
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    let out = std::process::Command::new("cat")
        .arg(format!("/proc/{}/aem", std::process::id()))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{}\tfd\t", reg.id()))),
        "{text}"
    );
}

#[test]
fn obs_2_tracepoints_follow_an_event_from_registration_to_unregistration() {
    let dir = start_aem_tracing();
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    let id = reg.id();
    eventfd_add(&efd, 1);
    assert_eq!(aem::wait(4, Some(Duration::from_secs(1))).unwrap().len(), 1);
    drop(reg);
    let trace = stop_aem_tracing(&dir);
    let find = |what: &str| {
        trace
            .lines()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in the trace:\n{trace}"))
    };
    let fd = aem::SourceKind::Fd.raw();
    let registered = find(&format!(
        "aem_register: id={id} source={fd} prio=0 flags=0x0 polled"
    ));
    let activated = find(&format!(
        "aem_activate: id={id} source={fd} pending=1 queued"
    ));
    let delivered = find(&format!("aem_deliver: id={id} source={fd} count=1 polled"));
    let unregistered = find(&format!(
        "aem_unregister: id={id} source={fd} activations=1 deliveries=1"
    ));
    assert!(
        registered < activated && activated < delivered && delivered < unregistered,
        "out of order:\n{trace}"
    );
}

#[test]
fn obs_2_inline_delivery_is_traced_as_inline() {
    let dir = start_aem_tracing();
    let efd = eventfd();
    // SAFETY: the handler touches nothing.
    let reg = unsafe {
        aem::register_inline(
            Source::fd(std::os::fd::AsFd::as_fd(&efd), aem::FdEvents::IN),
            Options::new().oneshot(true),
            |_| aem::Action::Rearm,
        )
    }
    .unwrap();
    let id = reg.id();
    eventfd_add(&efd, 1);
    // The handler runs on the way back from this system call at the latest.
    std::thread::sleep(Duration::from_millis(10));
    let trace = stop_aem_tracing(&dir);
    assert!(
        trace.contains(&format!("aem_deliver: id={id} source=1 count=1 inline")),
        "{trace}"
    );
}

// aemstat(1), the inspector of /proc/<pid>/aem (`aemstat/`), run as it
// ships, from the guest's PATH (the rootfs).

/// Run `aemstat` with `args`.
fn aemstat(args: &[&str]) -> std::process::Output {
    std::process::Command::new("aemstat")
        .args(args)
        .output()
        .expect("run aemstat (from the rootfs)")
}

/// Run `aemstat` with `args`; its standard output, after checking that
/// it succeeded.
fn aemstat_ok(args: &[&str]) -> String {
    let out = aemstat(args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "aemstat {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The words of the rows of the table that starts with the heading
/// `heading` (its words) in `text`, up to the next blank line.
fn table(text: &str, heading: &[&str]) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.split_whitespace().eq(heading.iter().copied()))
        .unwrap_or_else(|| panic!("no table {heading:?} in:\n{text}"));
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

const REGISTRATIONS: [&str; 10] = [
    "PID",
    "COMM",
    "ID",
    "SOURCE",
    "PRIO",
    "FLAGS",
    "STATE",
    "ACTIVATIONS",
    "DELIVERIES",
    "PENDING",
];

/// The rows of aemstat's registrations table in `text`.
fn registrations(text: &str) -> Vec<Vec<String>> {
    let rows = table(text, &REGISTRATIONS);
    for row in &rows {
        assert_eq!(
            row.len(),
            REGISTRATIONS.len(),
            "bad row {row:?} in:\n{text}"
        );
    }
    rows
}

/// The row of registration `id` of process `pid`.
fn row_of(rows: &[Vec<String>], pid: u32, id: u32) -> Option<Vec<String>> {
    rows.iter()
        .find(|r| r[0] == pid.to_string() && r[2] == id.to_string())
        .cloned()
}

/// (pid, id) of each row.
fn keys(rows: &[Vec<String>]) -> Vec<(u32, u32)> {
    rows.iter()
        .map(|r| (r[0].parse().unwrap(), r[2].parse().unwrap()))
        .collect()
}

#[test]
fn obs_1_aemstat_lists_a_registration_with_its_counters() {
    let pid = std::process::id();
    let efd = eventfd();
    let fd_reg = watch_in(&efd, Options::new().priority(42)).unwrap();
    let timer_reg = aem::register(
        Source::after(Duration::from_secs(3600)),
        Options::new().oneshot(true).disabled(true),
    )
    .unwrap();
    // Two activations, one delivered, one pending.
    eventfd_add(&efd, 1);
    assert_eq!(aem::wait(4, Some(Duration::from_secs(1))).unwrap().len(), 1);
    eventfd_add(&efd, 1);

    let out = aemstat_ok(&[]);
    let rows = registrations(&out);
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let fd_row = row_of(&rows, pid, fd_reg.id()).unwrap_or_else(|| panic!("no fd row:\n{out}"));
    assert_eq!(
        fd_row,
        [
            &pid.to_string(),
            comm.trim_end(),
            &fd_reg.id().to_string(),
            "fd",
            "42",
            "-",
            "enabled",
            "2",
            "1",
            "1"
        ]
    );
    let t_row =
        row_of(&rows, pid, timer_reg.id()).unwrap_or_else(|| panic!("no timer row:\n{out}"));
    assert_eq!(
        t_row[3..],
        ["timer", "0", "oneshot,disabled", "disabled", "0", "0", "0"]
    );
    // By pid, then by id.
    let mut sorted = keys(&rows);
    sorted.sort_unstable();
    assert_eq!(keys(&rows), sorted, "not sorted:\n{out}");
    // The counters are the kernel's.
    let proc_row = proc_row(fd_reg.id()).unwrap();
    assert_eq!(
        (proc_row.activations, proc_row.deliveries, proc_row.pending),
        (2, 1, 1)
    );

    drop(fd_reg);
    drop(timer_reg);
    // A process without registrations is left out.
    let out = aemstat_ok(&["-p", &pid.to_string()]);
    assert_eq!(registrations(&out), Vec::<Vec<String>>::new(), "{out}");
}

#[test]
fn obs_1_aemstat_filters_by_pid_and_source() {
    let shared = aem_conformance::SharedWords::new(2);
    let child = aem_conformance::spawn(move || {
        let efd = eventfd();
        let _fd = watch_in(&efd, Options::new().priority(7)).unwrap();
        let _timer =
            aem::register(Source::after(Duration::from_secs(3600)), Options::new()).unwrap();
        shared.set(0, 1);
        aem_conformance::await_word(shared, 1, 1, None);
        0
    });
    aem_conformance::await_word(shared, 0, 1, Some(child));
    let child = child as u32;
    let pid = std::process::id();
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    let sources = |rows: &[Vec<String>]| -> Vec<(u32, String)> {
        rows.iter()
            .map(|r| (r[0].parse().unwrap(), r[3].clone()))
            .collect()
    };

    let rows = registrations(&aemstat_ok(&["-p", &child.to_string()]));
    assert_eq!(
        sources(&rows),
        [(child, "fd".to_string()), (child, "timer".to_string())]
    );
    assert_eq!(rows[0][4], "7");

    let both = format!("{pid},{child}");
    let rows = registrations(&aemstat_ok(&["-p", &both]));
    assert_eq!(
        sources(&rows),
        [
            (pid, "fd".to_string()),
            (child, "fd".to_string()),
            (child, "timer".to_string())
        ]
    );
    assert!(row_of(&rows, pid, reg.id()).is_some());

    let rows = registrations(&aemstat_ok(&[
        "-p",
        &pid.to_string(),
        "-p",
        &child.to_string(),
        "-s",
        "timer",
    ]));
    assert_eq!(sources(&rows), [(child, "timer".to_string())]);
    let rows = registrations(&aemstat_ok(&["--source=fd", "--pid", &both]));
    assert_eq!(
        sources(&rows),
        [(pid, "fd".to_string()), (child, "fd".to_string())]
    );
    // Every process, one source.
    let rows = registrations(&aemstat_ok(&["-s", "timer"]));
    assert!(rows.iter().all(|r| r[3] == "timer"), "{rows:?}");
    assert!(rows.iter().any(|r| r[0] == child.to_string()), "{rows:?}");
    assert!(!rows.iter().any(|r| r[0] == pid.to_string()), "{rows:?}");

    shared.set(1, 1);
    assert_eq!(aem_conformance::reap(child as libc::pid_t), 0);
    drop(reg);
}

#[test]
fn obs_1_aemstat_fails_with_status_1_for_a_missing_process() {
    // No pid reaches pid_max.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let missing = pid_max.trim();
    let out = aemstat(&["-p", missing]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no process {missing}")),
        "{stderr}"
    );
    // The processes that exist are still shown.
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    let pid = std::process::id();
    let out = aemstat(&["-p", &format!("{pid},{missing}")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        row_of(&registrations(&stdout), pid, reg.id()).is_some(),
        "{stdout}"
    );
    // Watch mode does not start.
    let out = aemstat(&["-w", "0.1", "-n", "3", "-p", missing]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn obs_1_aemstat_rejects_bad_options_with_status_2() {
    for args in [
        &["--bogus"][..],
        &["-x"],
        &["-p"],
        &["-p", "abc"],
        &["-p", "0"],
        &["-s"],
        &["-n", "0"],
        &["-n", "many"],
        &["-w", "0"],
        &["--watch=soon"],
        &["--threads=yes"],
        &["extra"],
    ] {
        let out = aemstat(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "aemstat {args:?}: {stderr}");
        assert!(
            stderr.starts_with("aemstat: "),
            "aemstat {args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "aemstat {args:?} printed output");
    }
    assert!(aemstat_ok(&["--help"]).starts_with("Usage: aemstat"));
    assert!(aemstat_ok(&["--version"]).starts_with("aemstat "));
}

#[test]
fn obs_1_aemstat_watch_shows_the_rate_of_a_periodic_timer() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let reg = aem::register(Source::periodic(Duration::from_millis(10)), Options::new()).unwrap();
    // Take its records as they come: an undelivered periodic timer stops.
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let consumer = std::thread::spawn(move || {
        while !s.load(SeqCst) {
            aem::wait(16, Some(Duration::from_millis(50))).unwrap();
        }
    });
    let pid = std::process::id().to_string();
    let started = std::time::Instant::now();
    let out = aemstat_ok(&["-w", "1", "-n", "2", "-p", &pid, "-s", "timer"]);
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, SeqCst);
    consumer.join().unwrap();
    drop(reg);

    // Two samples, each a title and a table, a blank line between.
    let samples: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(samples.len(), 2, "{out}");
    let mut heading = REGISTRATIONS.to_vec();
    heading.extend(["ACT/s", "DLV/s"]);
    let mut rows = Vec::new();
    for (n, sample) in samples.iter().enumerate() {
        assert!(
            sample.starts_with(&format!(
                "aemstat: every 1s, sample {} of 2: 1 process, 1 registration\n",
                n + 1
            )),
            "{out}"
        );
        let table = table(sample, &heading);
        assert_eq!(table.len(), 1, "{out}");
        assert_eq!(
            (table[0][0].as_str(), table[0][3].as_str()),
            (pid.as_str(), "timer")
        );
        rows.push(table.into_iter().next().unwrap());
    }
    // The first sample has nothing to compare with.
    assert_eq!(rows[0][10..], ["-", "-"], "{out}");
    let count = |row: &[String], i: usize| -> f64 { row[i].parse().unwrap() };
    let act_rate = count(&rows[1], 10);
    let dlv_rate = count(&rows[1], 11);
    // 100 expiries a second at most; loosely, at least 20 under emulation.
    assert!(
        (20.0..=120.0).contains(&act_rate),
        "ACT/s {act_rate}, not about 100:\n{out}"
    );
    assert!(
        dlv_rate > 0.0 && dlv_rate <= act_rate + 5.0,
        "DLV/s {dlv_rate} against ACT/s {act_rate}:\n{out}"
    );
    // The rate is the difference between the samples over the time
    // between them: at least the interval, at most the whole run.
    let activations = count(&rows[1], 7) - count(&rows[0], 7);
    let between = activations / act_rate;
    assert!(
        (0.95..=wall + 0.05).contains(&between),
        "{activations} activations at {act_rate}/s: {between} s apart, run {wall} s:\n{out}"
    );
}

/// A thread boosted to `prio` for as long as the test wants: it runs the
/// inline handler of an event of that priority, which waits for
/// `release`.  Returns the thread, its tid once in the handler, and the
/// release flag.
fn boosted_thread(
    prio: u8,
) -> (
    std::thread::JoinHandle<()>,
    i32,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
    use std::sync::Arc;
    let tid = Arc::new(AtomicI32::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let (t, r) = (tid.clone(), release.clone());
    let thread = std::thread::spawn(move || {
        let efd = eventfd();
        let handler = move |_: &mut aem::Record| {
            // SAFETY: gettid has no preconditions.
            t.store(unsafe { libc::gettid() }, SeqCst);
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while !r.load(SeqCst) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
            aem::Action::Rearm
        };
        // SAFETY: the handler touches atomics, gettid, the monotonic clock
        // and nanosleep only: handler-safe.
        let reg = unsafe {
            aem::register_inline(
                Source::fd(std::os::fd::AsFd::as_fd(&efd), aem::FdEvents::IN),
                Options::new().priority(prio).oneshot(true),
                handler,
            )
        }
        .unwrap();
        // The handler runs on the way back from this write.
        eventfd_add(&efd, 1);
        drop(reg);
    });
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while tid.load(SeqCst) == 0 {
        assert!(std::time::Instant::now() < end, "the handler did not run");
        std::thread::sleep(Duration::from_millis(1));
    }
    (thread, tid.load(SeqCst), release)
}

#[test]
fn obs_1_aemstat_threads_shows_a_boosted_thread() {
    use std::sync::atomic::Ordering::SeqCst;
    // Waiting in the handler takes no CPU time; a little slack all the same.
    let _budget = aem_conformance::BoostBudget::set(1_000_000);
    let (rt_thread, rt_tid, rt_release) = boosted_thread(60);
    let (fair_thread, fair_tid, fair_release) = boosted_thread(30);
    let pid = std::process::id();
    let raw = std::fs::read_to_string(format!("/proc/{pid}/aem")).unwrap();
    let out = aemstat(&["-t", "-p", &pid.to_string()]);
    for release in [&rt_release, &fair_release] {
        release.store(true, SeqCst);
    }
    rt_thread.join().unwrap();
    fair_thread.join().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");

    // Both events, each activated once and being handled.
    let regs = registrations(&stdout);
    assert_eq!(regs.len(), 2, "{stdout}");
    let mut prios: Vec<&str> = regs.iter().map(|r| r[4].as_str()).collect();
    prios.sort_unstable();
    assert_eq!(prios, ["30", "60"], "{stdout}");
    assert!(regs.iter().all(|r| r[3] == "fd" && r[7] == "1"), "{stdout}");

    // Every thread of the process, the two boosted ones with their boost.
    let threads = table(&stdout, &["PID", "TID", "COMM", "BOOST", "BAND"]);
    let boost_of = |tid: i32| -> (String, String) {
        let row = threads
            .iter()
            .find(|r| r[1] == tid.to_string())
            .unwrap_or_else(|| panic!("no thread {tid} in:\n{stdout}\n/proc/{pid}/aem:\n{raw}"));
        (row[3].clone(), row[4].clone())
    };
    assert_eq!(
        boost_of(rt_tid),
        ("60".to_string(), "real-time".to_string()),
        "/proc/{pid}/aem:\n{raw}"
    );
    assert_eq!(
        boost_of(fair_tid),
        ("30".to_string(), "fair".to_string()),
        "/proc/{pid}/aem:\n{raw}"
    );
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    assert_eq!(boost_of(me), ("-".to_string(), "-".to_string()));
    assert!(threads.iter().all(|r| r[0] == pid.to_string()));

    // The process's limits and counters, from the comment lines.
    let notes = table(&stdout, &["PID", "COMM", "NOTE"]);
    let note = |what: &str| {
        notes
            .iter()
            .any(|r| r.get(2).map(String::as_str) == Some(what))
    };
    assert!(
        note("files") && note("user's") && note("pool:") && note("fork:"),
        "{stdout}"
    );
}
