//! SHIM-1 (issue 12, ecosystem fit): polled delivery for event loops --
//! `aem::Context` and its reusable `Events` buffer, the context
//! descriptor's readiness as poll and epoll see it, the polled read
//! (`aem::register_read`), and the `mio` and `tokio` integrations --
//! against the real kernel.
//!
//! The tests of this file share their process's AEM context (records are
//! taken per process): each one drops what it registered, and none leaves
//! records pending.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use aem::{
    AcceptFlags, AsyncContext, Clock, Context, Errno, EventData, Events, Expiry, FdEvents, Options,
    ReadEvent, Record, Source,
};
use aem_conformance::{eventfd, eventfd_add, proc_row, watch_in};

/// `try_wait` found nothing.
fn assert_would_block(r: Result<usize, aem::Error>) {
    let e = r.expect_err("a record was pending");
    assert_eq!(e, aem::Error::Os(Errno(libc::EAGAIN)));
    assert_eq!(std::io::Error::from(e).kind(), ErrorKind::WouldBlock);
}

/// Whether `fd` polls readable within `ms` milliseconds (0: now).
fn readable_within(fd: &impl AsRawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1 && p.revents & libc::POLLIN != 0
}

fn timer_after(ms: u64, interval_ms: Option<u64>) -> Source<'static> {
    Source::timer(
        Clock::Monotonic,
        Expiry::After(Duration::from_millis(ms)),
        interval_ms.map(Duration::from_millis),
    )
}

#[test]
fn shim_1_context_try_wait_would_block_when_nothing_is_pending() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(8);
    let start = Instant::now();
    assert_would_block(ctx.try_wait(&mut events));
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "try_wait blocked"
    );
    assert!(events.is_empty());
    assert!(!readable_within(&ctx, 0));
}

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

static SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A signal that arrives during `try_wait` is not its failure: it never
/// blocks, so it has nothing to be interrupted in (the kernel's zero
/// timeout still checks for signals, and `try_wait` retries).
#[test]
fn shim_1_context_try_wait_is_never_interrupted_by_a_signal() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    // SAFETY: a handler that only increments an atomic, for SIGUSR1,
    // which nothing else in this test process uses.
    let old = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as libc::sighandler_t;
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, &mut old), 0);
        old
    };
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(4);
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    let sender = std::thread::spawn(move || {
        while !stopper.load(Relaxed) {
            // SAFETY: `me` is the test thread, alive until we are joined.
            unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
            std::thread::yield_now();
        }
    });
    let efd = eventfd();
    let reg = watch_in(&efd, Options::default()).unwrap();
    let start = Instant::now();
    let before = SIGNALS.load(Relaxed);
    let mut calls = 0u64;
    while start.elapsed() < Duration::from_millis(500) {
        // A record, then none, in turn.
        if calls % 2 == 0 {
            eventfd_add(&efd, 1);
            assert_eq!(ctx.try_wait(&mut events), Ok(1));
            assert_eq!(events.iter().next().unwrap().id, reg.id());
        } else {
            assert_would_block(ctx.try_wait(&mut events));
        }
        calls += 1;
    }
    stop.store(true, Relaxed);
    sender.join().unwrap();
    // SAFETY: puts back the disposition saved above.
    unsafe { libc::sigaction(libc::SIGUSR1, &old, std::ptr::null_mut()) };
    let signals = SIGNALS.load(Relaxed) - before;
    assert!(signals >= 20, "only {signals} signals in {calls} calls");
}

#[test]
fn shim_1_context_try_wait_takes_pending_records_coalesced_and_exact() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(8);
    let efd = eventfd();
    let reg = watch_in(&efd, Options::new().cookie(0xc0ffee)).unwrap();
    eventfd_add(&efd, 1);
    eventfd_add(&efd, 1);
    assert!(readable_within(&ctx, 1000), "a pending record: readable");
    assert_eq!(ctx.try_wait(&mut events).unwrap(), 1);
    assert_eq!(events.len(), 1);
    let rec = events.iter().next().unwrap();
    assert_eq!((rec.id, rec.cookie, rec.count), (reg.id(), 0xc0ffee, 2));
    match &rec.data {
        EventData::Fd { fd, ready } => {
            assert_eq!(*fd, efd.as_raw_fd());
            assert!(ready.contains(FdEvents::IN), "{ready:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!readable_within(&ctx, 0), "taken: not readable any more");
    assert_would_block(ctx.try_wait(&mut events));
    assert!(
        events.is_empty(),
        "a take that finds nothing empties the buffer"
    );
}

#[test]
fn shim_1_events_capacity_bounds_each_take_in_activation_order() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(2);
    let efds: Vec<OwnedFd> = (0..5).map(|_| eventfd()).collect();
    let regs: Vec<aem::Registration> = efds
        .iter()
        .map(|e| watch_in(e, Options::default()).unwrap())
        .collect();
    for e in &efds {
        eventfd_add(e, 1);
    }
    let mut ids = Vec::new();
    let mut takes = Vec::new();
    loop {
        match ctx.try_wait(&mut events) {
            Ok(n) => {
                assert_eq!(n, events.len());
                takes.push(n);
                ids.extend(events.iter().map(|r| r.id));
            }
            Err(e) => {
                assert_eq!(std::io::Error::from(e).kind(), ErrorKind::WouldBlock);
                break;
            }
        }
    }
    assert_eq!(takes, [2, 2, 1]);
    assert_eq!(ids, regs.iter().map(|r| r.id()).collect::<Vec<_>>());
}

#[test]
fn shim_1_events_drain_hands_records_out_by_value() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(4);
    let (a, b) = (eventfd(), eventfd());
    let (ra, rb) = (
        watch_in(&a, Options::default()).unwrap(),
        watch_in(&b, Options::default()).unwrap(),
    );
    eventfd_add(&a, 1);
    eventfd_add(&b, 1);
    assert_eq!(
        ctx.wait(&mut events, Some(Duration::from_secs(5))).unwrap(),
        2
    );
    let owned: Vec<Record> = events.drain().collect();
    assert!(events.is_empty());
    assert_eq!(
        owned.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ra.id(), rb.id()]
    );
}

#[test]
fn shim_1_context_wait_times_out_empty_and_returns_what_arrives() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(4);
    let start = Instant::now();
    assert_eq!(
        ctx.wait(&mut events, Some(Duration::from_millis(50)))
            .unwrap(),
        0
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(events.is_empty());

    let reg = aem::register(timer_after(30, None), Options::default()).unwrap();
    let start = Instant::now();
    assert_eq!(ctx.wait(&mut events, None).unwrap(), 1);
    assert!(start.elapsed() >= Duration::from_millis(25));
    let rec = events.iter().next().unwrap();
    assert_eq!(rec.id, reg.id());
    assert_eq!(rec.data, EventData::Timer { expirations: 1 });
}

/// The descriptor's readiness: level for poll(2) and level epoll; with
/// `EPOLLET`, one edge per event newly queued, even while others are
/// pending, and none for an activation coalesced into a pending record.
#[test]
fn shim_1_context_fd_is_level_and_edges_on_each_newly_queued_event() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(8);
    let epoll = |flags: u32| {
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        // SAFETY: epoll_create1 just returned this descriptor.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32 | flags,
            u64: 1,
        };
        // SAFETY: `ev` is a valid epoll_event.
        let r = unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ctx.as_raw_fd(),
                &mut ev,
            )
        };
        assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        ep
    };
    let ready = |ep: &OwnedFd, ms: i32| {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: `out` has room for 2 events.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 2, ms) };
        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
        n
    };
    let edge = epoll(libc::EPOLLET as u32);
    let level = epoll(0);
    let (a, b) = (eventfd(), eventfd());
    let (ra, rb) = (
        watch_in(&a, Options::default()).unwrap(),
        watch_in(&b, Options::default()).unwrap(),
    );
    assert_eq!((ready(&edge, 0), ready(&level, 0)), (0, 0));

    eventfd_add(&a, 1);
    assert_eq!(ready(&edge, 1000), 1, "the first record: an edge");
    assert_eq!(ready(&edge, 0), 0, "one edge per queued event");
    assert_eq!(ready(&level, 0), 1);
    assert_eq!(ready(&level, 0), 1, "level: again while pending");

    eventfd_add(&a, 1);
    assert_eq!(ready(&edge, 50), 0, "a coalesced activation: no new edge");
    eventfd_add(&b, 1);
    assert_eq!(
        ready(&edge, 1000),
        1,
        "a second event queued while one is pending: a new edge"
    );
    assert!(readable_within(&ctx, 0));

    assert_eq!(ctx.try_wait(&mut events).unwrap(), 2);
    let got: Vec<(u32, u64)> = events.iter().map(|r| (r.id, r.count)).collect();
    assert_eq!(got, [(ra.id(), 2), (rb.id(), 1)]);
    assert_eq!((ready(&edge, 0), ready(&level, 0)), (0, 0), "all taken");
    assert!(!readable_within(&ctx, 0));

    // Taken empty, the next event is an edge again.
    eventfd_add(&b, 1);
    assert_eq!(ready(&edge, 1000), 1);
    assert_eq!(ctx.try_wait(&mut events).unwrap(), 1);
    assert_would_block(ctx.try_wait(&mut events));
}

/// A reader of one end of a stream pair, with the other end to write.
fn stream_pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

/// The next record, waiting at most a second for it.
fn next_record(ctx: &Context, events: &mut Events) -> Record {
    let n = ctx.wait(events, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(n, 1, "one record within a second");
    events.drain().next().unwrap()
}

#[test]
fn shim_1_polled_read_delivers_the_stream_in_order_one_buffer_per_rearm() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(4);
    let (mut w, r) = stream_pair();
    let reader = aem::register_read(r.as_fd(), 8, Options::new().cookie(77)).unwrap();
    assert_eq!(reader.buffer_len(), 8);
    assert_would_block(ctx.try_wait(&mut events));

    let msg: Vec<u8> = (0..20u8).collect();
    w.write_all(&msg).unwrap();
    let mut got = Vec::new();
    let rec = next_record(&ctx, &mut events);
    assert_eq!((rec.id, rec.cookie, rec.count), (reader.id(), 77, 1));
    assert_eq!(rec.data, EventData::Read { result: Ok(8) });
    match reader.take(&rec, &mut got) {
        Some(ReadEvent::Data(d)) => assert_eq!(d, &msg[..8]),
        other => panic!("{other:?}"),
    }
    // Disarmed by the record: 12 bytes wait, the kernel reads none.
    assert_would_block(ctx.try_wait(&mut events));
    assert_eq!(proc_row(reader.id()).unwrap().state, "disabled");
    std::thread::sleep(Duration::from_millis(20));
    assert_would_block(ctx.try_wait(&mut events));

    // Rearmed, it reads at once what waits, a buffer a record.
    for want in [8..16, 16..20] {
        reader.rearm().unwrap();
        let rec = next_record(&ctx, &mut events);
        let before = got.len();
        match reader.take(&rec, &mut got) {
            Some(ReadEvent::Data(d)) => assert_eq!(d, &msg[want.clone()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(&got[before..], &msg[want]);
    }
    assert_eq!(got, msg, "the stream, complete and in order");

    // Nothing waits: rearmed, no record until the peer writes or closes.
    reader.rearm().unwrap();
    assert_eq!(
        ctx.wait(&mut events, Some(Duration::from_millis(50)))
            .unwrap(),
        0
    );
    drop(w);
    let rec = next_record(&ctx, &mut events);
    assert_eq!(reader.take(&rec, &mut got), Some(ReadEvent::Eof));
    assert_eq!(proc_row(reader.id()).unwrap().state, "disabled");
    assert_eq!(
        ctx.wait(&mut events, Some(Duration::from_millis(50)))
            .unwrap(),
        0
    );

    // Another event's record is not the reader's.
    let efd = eventfd();
    let other = watch_in(&efd, Options::default()).unwrap();
    eventfd_add(&efd, 1);
    let rec = next_record(&ctx, &mut events);
    assert_eq!(rec.id, other.id());
    assert_eq!(reader.take(&rec, &mut got), None);

    let id = reader.id();
    drop(reader);
    assert!(proc_row(id).is_none(), "dropping unregisters");
}

#[test]
fn shim_1_polled_read_of_a_stale_or_made_up_record_is_only_wrong_bytes() {
    let ctx = Context::new().unwrap();
    let mut events = Events::with_capacity(4);
    let (mut w, r) = stream_pair();
    let reader = aem::register_read(r.as_fd(), 4, Options::default()).unwrap();
    w.write_all(b"abcdEFGH").unwrap();
    let first = next_record(&ctx, &mut events);
    let mut out = Vec::new();
    assert_eq!(
        reader.take(&first, &mut out),
        Some(ReadEvent::Data(b"abcd"))
    );
    reader.rearm().unwrap();
    let second = next_record(&ctx, &mut events);
    assert_eq!(second.data, EventData::Read { result: Ok(4) });
    // The buffer now holds the second read: the stale record names it.
    out.clear();
    assert_eq!(
        reader.take(&first, &mut out),
        Some(ReadEvent::Data(b"EFGH"))
    );
    // A made-up record, larger than the buffer, copies at most the
    // buffer.
    let raw = aem_syscalls::uapi::aem_record {
        id: reader.id(),
        source: aem::SourceKind::Read.raw(),
        cookie: 0,
        count: 1,
        data: [1 << 20, 0],
    };
    // SAFETY: a read record carries no descriptor.
    let made_up = unsafe { Record::from_raw(&raw) };
    out.clear();
    assert_eq!(
        reader.take(&made_up, &mut out),
        Some(ReadEvent::Data(b"EFGH"))
    );
}

#[test]
fn shim_1_polled_read_refuses_bad_lengths_and_unreadable_files() {
    let (_w, r) = stream_pair();
    for len in [0, (1 << 30) + 1] {
        assert_eq!(
            aem::register_read(r.as_fd(), len, Options::default()).unwrap_err(),
            aem::Error::Os(Errno(libc::EINVAL))
        );
    }
    let (_pr, pw) = aem_conformance::pipe();
    let e = aem::register_read(pw.as_fd(), 16, Options::default()).unwrap_err();
    assert_eq!(e, aem::Error::Os(Errno(libc::EBADF)), "a write-only end");
}

#[test]
fn shim_1_mio_poll_wakes_on_a_pending_record() {
    use mio::{Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut ctx = Context::new().unwrap();
    poll.registry()
        .register(&mut ctx, Token(7), Interest::READABLE)
        .unwrap();
    let mut mio_events = mio::Events::with_capacity(4);
    let mut events = Events::with_capacity(4);
    poll.poll(&mut mio_events, Some(Duration::ZERO)).unwrap();
    assert!(mio_events.is_empty());

    let reg = aem::register(timer_after(30, None), Options::default()).unwrap();
    let start = Instant::now();
    poll.poll(&mut mio_events, Some(Duration::from_secs(5)))
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(25));
    let evs: Vec<(Token, bool)> = mio_events
        .iter()
        .map(|e| (e.token(), e.is_readable()))
        .collect();
    assert_eq!(evs, [(Token(7), true)]);
    assert_eq!(ctx.try_wait(&mut events).unwrap(), 1);
    assert_eq!(events.iter().next().unwrap().id, reg.id());
    assert_would_block(ctx.try_wait(&mut events));
    poll.poll(&mut mio_events, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(mio_events.is_empty(), "drained: no event");

    // A second record: a new edge.
    let efd = eventfd();
    let watch = watch_in(&efd, Options::default()).unwrap();
    eventfd_add(&efd, 1);
    poll.poll(&mut mio_events, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(mio_events.iter().count(), 1);
    assert_eq!(ctx.try_wait(&mut events).unwrap(), 1);
    assert_eq!(events.iter().next().unwrap().id, watch.id());

    // Deregistered, it wakes the poll no more.
    poll.registry().deregister(&mut ctx).unwrap();
    eventfd_add(&efd, 1);
    poll.poll(&mut mio_events, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(mio_events.is_empty());
    assert_eq!(ctx.try_wait(&mut events).unwrap(), 1);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn shim_1_tokio_async_context_receives_timer_records_without_blocking_the_runtime() {
    runtime().block_on(async {
        let ctx = AsyncContext::new().unwrap();
        let mut events = Events::with_capacity(8);
        let start = Instant::now();
        let reg = aem::register(timer_after(10, Some(10)), Options::default()).unwrap();
        // Another task runs while the main one awaits records.
        let ticks = tokio::spawn(async {
            let mut n = 0u32;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                n += 1;
            }
            n
        });
        let mut expirations = 0;
        let mut records = 0;
        let mut seen = Vec::new();
        while expirations < 10 {
            let n = tokio::time::timeout(Duration::from_secs(10), ctx.wait(&mut events))
                .await
                .expect("timer records within 10 s")
                .unwrap();
            assert!(n >= 1);
            for rec in &events {
                assert_eq!(rec.id, reg.id());
                match rec.data {
                    EventData::Timer { expirations: e } => {
                        assert!(e >= 1 && rec.count >= 1, "{rec:?}");
                        expirations += e;
                        seen.push((start.elapsed(), rec.count, e));
                    }
                    ref other => panic!("{other:?}"),
                }
                records += 1;
            }
        }
        // Ten expiries of a 10 ms period, the first 10 ms in: 100 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "{:?}: {seen:?}",
            start.elapsed()
        );
        assert!(records >= 2, "one record per expiry or so, got {records}");
        assert_eq!(ticks.await.unwrap(), 5);
        drop(reg);
        // Drain what a last expiry may have queued before the drop.
        let _ = ctx.get_ref().try_wait(&mut events);
    });
}

#[test]
fn shim_1_tokio_async_context_receives_connections_and_reads_the_kernel_completed() {
    const CLIENTS: usize = 4;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    runtime().block_on(async {
        let ctx = AsyncContext::new().unwrap();
        let mut events = Events::with_capacity(16);
        let accepting = aem::register(
            Source::accept(
                listener.as_fd(),
                AcceptFlags::NONBLOCK | AcceptFlags::CLOEXEC,
            ),
            Options::default(),
        )
        .unwrap();
        let clients = std::thread::spawn(move || {
            (0..CLIENTS)
                .map(|i| {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(format!("hello from {i}").as_bytes()).unwrap();
                    s
                })
                .collect::<Vec<_>>()
        });
        let mut conns = Vec::new();
        let mut readers = Vec::new();
        let mut said = BTreeSet::new();
        let mut bytes = Vec::new();
        while said.len() < CLIENTS {
            tokio::time::timeout(Duration::from_secs(10), ctx.wait(&mut events))
                .await
                .expect("records within 10 s")
                .unwrap();
            for mut rec in events.drain() {
                if rec.id == accepting.id() {
                    let EventData::Accept { listener: l, .. } = &rec.data else {
                        panic!("{rec:?}");
                    };
                    assert_eq!(*l, listener.as_raw_fd());
                    let conn = rec.take_accepted().expect("an accepted connection");
                    let stream = TcpStream::from(conn);
                    let reader = aem::register_read(
                        stream.as_fd(),
                        64,
                        Options::new().cookie(conns.len() as u64),
                    )
                    .unwrap();
                    conns.push(stream);
                    readers.push(reader);
                } else {
                    let reader = &readers[rec.cookie as usize];
                    bytes.clear();
                    match reader.take(&rec, &mut bytes) {
                        Some(ReadEvent::Data(d)) => {
                            said.insert(String::from_utf8(d.to_vec()).unwrap());
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        let want: BTreeSet<String> = (0..CLIENTS).map(|i| format!("hello from {i}")).collect();
        assert_eq!(said, want);
        let clients = clients.join().unwrap();
        assert_eq!(conns.len(), CLIENTS);
        // Each accepted descriptor is the peer of one client, nonblocking.
        let mut peers: Vec<_> = conns.iter().map(|c| c.peer_addr().unwrap()).collect();
        let mut locals: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        peers.sort();
        locals.sort();
        assert_eq!(peers, locals);
        for c in &conns {
            let mut b = [0u8; 1];
            assert_eq!(
                (&*c).read(&mut b).unwrap_err().kind(),
                ErrorKind::WouldBlock,
                "accepted nonblocking"
            );
        }
        drop(readers);
        drop(accepting);
    });
}
