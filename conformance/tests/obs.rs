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
