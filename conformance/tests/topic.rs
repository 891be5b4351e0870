//! SRC-7: topics, named publish/subscribe channels between processes
//! (`AEM_CTL_TOPIC_OPEN`, `AEM_SOURCE_TOPIC`); SEC-1: their permissions,
//! a file's; SEC-2: `user.max_aem_topics`.
//!
//! The tests share the process's AEM context and sysctls: run with
//! --test-threads=1 (as `make test` does).  Each test names its topics
//! after itself and the process, so that no two tests meet.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use aem::{Action, Error, EventData, Options, Record, Topic, TopicOptions};
use aem_conformance::{
    await_word, become_user, err, eventfd, eventfd_add, in_child, next_record, nothing_pending,
    page_size, reap, register_attr, spawn, unregister_id, watch_in, Mapping, SharedWords,
};
use aem_syscalls::uapi;

const SEC: Duration = Duration::from_secs(1);
const QUEUE: u64 = uapi::AEM_TOPIC_QUEUE as u64;

/// A topic name of this test and process.
fn name(test: &str) -> String {
    format!("conf.{}.{test}", std::process::id())
}

/// Create the new topic `name`, readable and writable.
fn create(name: &str, mode: u32) -> Topic {
    TopicOptions::new()
        .subscribe(true)
        .publish(true)
        .create(mode)
        .exclusive(true)
        .open(name)
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn subscriber(name: &str) -> Result<Topic, Error> {
    TopicOptions::new().subscribe(true).open(name)
}

fn publisher(name: &str) -> Result<Topic, Error> {
    TopicOptions::new().publish(true).open(name)
}

fn subscribe(topic: &Topic) -> aem::Registration {
    aem::register(topic.source(), Options::new()).expect("subscribe")
}

/// `AEM_CTL_TOPIC_OPEN` with a `struct aem_topic_open` of these fields.
fn open_args(size: u32, flags: i32, mode: u32, reserved: u32, name: u64) -> Result<OwnedFd, Error> {
    let args = uapi::aem_topic_open {
        size,
        flags: flags as u32,
        mode,
        reserved,
        name,
    };
    aem_syscalls::aem_topic_open(&args).map_err(Error::from)
}

/// `AEM_CTL_TOPIC_OPEN` of `name` with raw flags and mode.
fn open_raw(name: &[u8], flags: i32, mode: u32) -> Result<OwnedFd, Error> {
    let c = CString::new(name).unwrap();
    open_args(24, flags, mode, 0, c.as_ptr() as u64)
}

/// `aem_ctl(id, AEM_CTL_TOPIC_OPEN, arg)`, the descriptor owned.
fn ctl_open(id: i32, arg: u64) -> Result<OwnedFd, Error> {
    let fd = aem_syscalls::aem_ctl(id, uapi::AEM_CTL_TOPIC_OPEN, arg)?;
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A topic record's (payload, seq, count).
fn publication(rec: &Record) -> (u64, u64, u64) {
    match rec.data {
        EventData::Topic { payload, seq } => (payload, seq, rec.count),
        ref other => panic!("not a topic record: {other:?}"),
    }
}

/// Records of registration `id`, as (payload, seq, count), until their
/// counts add up to `total` publications; panics after `limit`.
fn take(id: u32, total: u64, limit: Duration) -> Vec<(u64, u64, u64)> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut sum = 0;
    while sum < total {
        for rec in aem::wait(64, Some(Duration::from_millis(100))).unwrap() {
            assert_eq!(rec.id, id, "a record of another event: {rec:?}");
            let p = publication(&rec);
            sum += p.2;
            got.push(p);
        }
        assert!(
            Instant::now() < end,
            "{sum} of {total} publications within {limit:?}"
        );
    }
    assert_eq!(sum, total, "more publications than published: {got:?}");
    got
}

/// Write `bytes` to `fd` with write(2): the count or the errno.
fn write_raw(fd: &impl AsRawFd, bytes: *const u8, len: usize) -> Result<usize, i32> {
    // SAFETY: the callers pass memory that is readable for `len` bytes,
    // or unmapped (EFAULT); write(2) only reads it.
    let r = unsafe { libc::write(fd.as_raw_fd(), bytes.cast(), len) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r as usize)
    }
}

/// [`in_child`] as `uid` (group `gid`, supplementary `groups`).
fn as_user(uid: u32, gid: u32, groups: &[u32], f: impl FnOnce() -> i32) -> i32 {
    in_child(|| {
        become_user(uid, gid, groups);
        f()
    })
}

/// Set the calling process's umask; the old one.
fn umask(mask: u32) -> u32 {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

#[test]
fn src_7_a_polled_subscriber_receives_each_publication_in_order() {
    let topic = create(&name("order"), 0o600);
    let sub = aem::register(topic.source(), Options::new().cookie(0x7)).unwrap();
    assert!(nothing_pending());
    let payloads: Vec<u64> = (0..10).map(|i| 0xabc0_0000_0000 + i * 3).collect();
    for &p in &payloads {
        topic.publish(p).unwrap();
    }
    for (i, &p) in payloads.iter().enumerate() {
        let rec = next_record();
        assert_eq!((rec.id, rec.cookie, rec.count), (sub.id(), 0x7, 1));
        assert_eq!(
            rec.data,
            EventData::Topic {
                payload: p,
                seq: i as u64 + 1
            }
        );
    }
    assert!(nothing_pending(), "one record per publication");
    // The numbering goes on; one write publishes each payload in turn.
    assert_eq!(topic.publish_all(&[u64::MAX, 0]), Ok(2));
    assert_eq!(publication(&next_record()), (u64::MAX, 11, 1));
    assert_eq!(publication(&next_record()), (0, 12, 1));
    assert!(nothing_pending());
}

#[test]
fn src_7_a_subscriber_hears_only_what_is_published_after_it_subscribed() {
    let topic = create(&name("late"), 0o600);
    topic.publish_all(&[1, 2, 3]).unwrap();
    let sub = subscribe(&topic);
    assert!(nothing_pending(), "earlier publications are not queued");
    topic.publish(4).unwrap();
    let rec = next_record();
    assert_eq!(rec.id, sub.id());
    assert_eq!(publication(&rec), (4, 4, 1), "numbered in the topic");
    // Unsubscribed, it hears nothing more.
    drop(sub);
    topic.publish(5).unwrap();
    assert!(nothing_pending());
}

#[test]
fn src_7_a_publication_from_another_process_reaches_an_inline_subscriber() {
    static PAYLOAD: AtomicU64 = AtomicU64::new(0);
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = name("inline");
    let topic = TopicOptions::new()
        .subscribe(true)
        .create(0o600)
        .exclusive(true)
        .open(&n)
        .unwrap();
    // SAFETY: the handler only stores to atomics.
    let _reg = unsafe {
        aem::register_inline(topic.source(), Options::new(), |rec| {
            if let EventData::Topic { payload, seq } = rec.data {
                PAYLOAD.store(payload, SeqCst);
                SEQ.store(seq, SeqCst);
                COUNT.fetch_add(rec.count, SeqCst);
            }
            Action::Rearm
        })
    }
    .unwrap();
    let code = in_child(|| {
        // Another process opens the topic by name, to publish only.
        let Ok(t) = publisher(&n) else { return 1 };
        if aem::register(t.source(), Options::new()).err() != Some(err(libc::EBADF)) {
            return 2;
        }
        match t.publish(0xfeed_beef) {
            Ok(()) => 0,
            Err(_) => 3,
        }
    });
    assert_eq!(code, 0);
    let end = Instant::now() + 5 * SEC;
    while COUNT.load(SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        (PAYLOAD.load(SeqCst), SEQ.load(SeqCst), COUNT.load(SeqCst)),
        (0xfeed_beef, 1, 1)
    );
}

#[test]
fn src_7_a_slow_subscriber_gets_the_queue_then_one_summed_record() {
    let topic = create(&name("slow"), 0o600);
    let sub = subscribe(&topic);
    let payloads: Vec<u64> = (1..=40).map(|i| i * 1000 + 7).collect();
    assert_eq!(topic.publish_all(&payloads), Ok(40));
    let got = take(sub.id(), 40, 5 * SEC);
    // The first AEM_TOPIC_QUEUE - 1 one by one, the newest entry sums up
    // the rest: count 25, payload and number of the 40th.
    let mut want: Vec<(u64, u64, u64)> = (0..QUEUE - 1)
        .map(|i| (payloads[i as usize], i + 1, 1))
        .collect();
    want.push((payloads[39], 40, 40 - (QUEUE - 1)));
    assert_eq!(got, want);
    assert!(nothing_pending());
    assert_eq!(topic.info().unwrap().published, 40);
    // Caught up, it gets single records again.
    topic.publish(9).unwrap();
    assert_eq!(publication(&next_record()), (9, 41, 1));
}

/// Records as (payload, seq, count) in `shared` from word `at` on.
fn store_records(shared: SharedWords, at: usize, recs: &[(u64, u64, u64)]) {
    for (i, r) in recs.iter().enumerate() {
        shared.set(at + 3 * i, r.0);
        shared.set(at + 3 * i + 1, r.1);
        shared.set(at + 3 * i + 2, r.2);
    }
}

fn load_records(shared: SharedWords, at: usize, n: usize) -> Vec<(u64, u64, u64)> {
    (0..n)
        .map(|i| {
            (
                shared.get(at + 3 * i),
                shared.get(at + 3 * i + 1),
                shared.get(at + 3 * i + 2),
            )
        })
        .collect()
}

/// Payloads of publisher `p`: its number in the high half.
fn payload(p: u64, i: u64) -> u64 {
    p << 32 | i
}

#[test]
fn src_7_two_publishers_and_two_subscribers_see_one_identical_sequence() {
    // Rounds of 2 x 8 publications made at once by two threads; each
    // subscriber -- this process and a child -- takes a round's 16 before
    // the next begins, so that none is summed up: every subscriber must
    // see every publication, numbered 1, 2, ... in one order.
    const ROUNDS: u64 = 250;
    const PER: u64 = QUEUE / 2;
    const TOTAL: u64 = ROUNDS * 2 * PER;
    let topic = create(&name("pair"), 0o600);
    // Words: 0 child subscribed, 1 publications and 2 records the child
    // took, then the records.
    let shared = SharedWords::new(3 + 3 * TOTAL as usize);
    let child = spawn(|| {
        let sub = subscribe(&topic);
        shared.set(0, 1);
        let (mut publications, mut records) = (0, 0);
        while publications < TOTAL {
            let got = take(sub.id(), 1, 10 * SEC);
            store_records(shared, 3 + 3 * records, &got);
            records += got.len();
            publications += got.iter().map(|r| r.2).sum::<u64>();
            shared.set(2, records as u64);
            shared.set(1, publications);
        }
        0
    });
    await_word(shared, 0, 1, Some(child));
    let sub = subscribe(&topic);
    let start = Barrier::new(3);
    let done = Barrier::new(3);
    let mut mine = Vec::new();
    std::thread::scope(|s| {
        for p in 0..2 {
            let (topic, start, done) = (&topic, &start, &done);
            s.spawn(move || {
                for r in 0..ROUNDS {
                    start.wait();
                    for i in 0..PER {
                        topic.publish(payload(p, r * PER + i)).unwrap();
                    }
                    done.wait();
                }
            });
        }
        for r in 1..=ROUNDS {
            start.wait();
            done.wait();
            mine.extend(take(sub.id(), 2 * PER, 10 * SEC));
            await_word(shared, 1, r * 2 * PER, Some(child));
        }
    });
    assert_eq!(reap(child), 0);
    let theirs = load_records(shared, 3, shared.get(2) as usize);
    for (who, recs) in [("parent", &mine), ("child", &theirs)] {
        assert_eq!(
            recs.len() as u64,
            TOTAL,
            "{who}: one record per publication"
        );
        for (i, rec) in recs.iter().enumerate() {
            assert_eq!(
                (rec.1, rec.2),
                (i as u64 + 1, 1),
                "{who}: record {i}: {rec:?}"
            );
        }
    }
    let differ = mine.iter().zip(&theirs).find(|(a, b)| a != b);
    assert_eq!(differ, None, "the subscribers saw different sequences");
    // Each publisher's publications are all there, in its order.
    for p in 0..2 {
        let own: Vec<u64> = mine
            .iter()
            .filter(|r| r.0 >> 32 == p)
            .map(|r| r.0 & 0xffff_ffff)
            .collect();
        assert_eq!(own, (0..ROUNDS * PER).collect::<Vec<_>>(), "publisher {p}");
    }
    assert_eq!(topic.info().unwrap().published, TOTAL);
}

/// Check records of one subscriber of a flood of `total` publications
/// by publishers whose payloads count up: every publication is counted
/// once, the sequence numbers skip exactly what the counts sum up, each
/// publisher's payloads rise.  Returns payload by sequence number.
fn check_flood(who: &str, recs: &[(u64, u64, u64)], total: u64) -> Vec<Option<u64>> {
    let mut by_seq = vec![None; total as usize + 1];
    let mut last_seq = 0;
    let mut last_of = [None::<u64>; 2];
    for &(payload, seq, count) in recs {
        assert!(count >= 1, "{who}: count 0");
        assert_eq!(
            last_seq + count,
            seq,
            "{who}: a record of {count} after seq {last_seq}"
        );
        last_seq = seq;
        let p = (payload >> 32) as usize;
        let i = payload & 0xffff_ffff;
        assert!(p < 2, "{who}: payload {payload:#x}");
        assert!(
            last_of[p].is_none_or(|l| l < i),
            "{who}: publisher {p} out of order"
        );
        last_of[p] = Some(i);
        by_seq[seq as usize] = Some(payload);
    }
    assert_eq!(last_seq, total, "{who}: publications missing");
    by_seq
}

#[test]
fn src_7_under_a_flood_of_two_publishers_counts_account_for_every_publication() {
    const PER: u64 = 5000;
    const TOTAL: u64 = 2 * PER;
    let topic = create(&name("flood"), 0o600);
    let shared = SharedWords::new(2 + 3 * TOTAL as usize);
    let child = spawn(|| {
        let sub = subscribe(&topic);
        shared.set(0, 1);
        let got = take(sub.id(), TOTAL, 60 * SEC);
        store_records(shared, 2, &got);
        shared.set(1, got.len() as u64);
        0
    });
    await_word(shared, 0, 1, Some(child));
    let sub = subscribe(&topic);
    let mine = std::thread::scope(|s| {
        for p in 0..2 {
            let topic = &topic;
            s.spawn(move || {
                for i in 0..PER {
                    topic.publish(payload(p, i)).unwrap();
                }
            });
        }
        take(sub.id(), TOTAL, 60 * SEC)
    });
    assert_eq!(reap(child), 0);
    let theirs = load_records(shared, 2, shared.get(1) as usize);
    let a = check_flood("parent", &mine, TOTAL);
    let b = check_flood("child", &theirs, TOTAL);
    // Where both have a record, it is the same publication.
    let mut common = 0;
    for seq in 1..=TOTAL as usize {
        if let (Some(x), Some(y)) = (a[seq], b[seq]) {
            assert_eq!(x, y, "seq {seq}");
            common += 1;
        }
    }
    assert!(common >= 1, "not even the last publication in common");
}

#[test]
fn src_7_a_dispatch_subscription_takes_one_publication_per_enable() {
    let topic = create(&name("dispatch"), 0o600);
    let sub = aem::register(topic.source(), Options::new().dispatch(true)).unwrap();
    topic.publish_all(&[1, 2, 3]).unwrap();
    assert_eq!(publication(&next_record()), (1, 1, 1));
    assert!(nothing_pending(), "disabled after a delivery");
    // Each enable delivers the next queued publication, none lost.
    for seq in 2..=3 {
        sub.enable().unwrap();
        assert_eq!(publication(&next_record()), (seq, seq, 1));
        assert!(nothing_pending());
    }
    sub.enable().unwrap();
    assert!(nothing_pending(), "all taken");
    topic.publish(4).unwrap();
    assert_eq!(publication(&next_record()), (4, 4, 1));
}

#[test]
fn src_7_a_oneshot_subscription_ends_after_one_publication() {
    let topic = create(&name("oneshot"), 0o600);
    let _sub = aem::register(topic.source(), Options::new().oneshot(true)).unwrap();
    assert_eq!(topic.info().unwrap().subscribers, 1);
    topic.publish_all(&[1, 2]).unwrap();
    assert_eq!(publication(&next_record()), (1, 1, 1));
    assert!(nothing_pending());
    assert_eq!(topic.info().unwrap().subscribers, 0);
}

#[test]
fn src_7_publications_to_a_disabled_subscription_wait_for_its_enable() {
    let topic = create(&name("disabled"), 0o600);
    let sub = aem::register(topic.source(), Options::new().disabled(true)).unwrap();
    let payloads: Vec<u64> = (1..=20).collect();
    topic.publish_all(&payloads).unwrap();
    assert!(nothing_pending());
    sub.enable().unwrap();
    let got = take(sub.id(), 20, 5 * SEC);
    assert_eq!(
        got.len() as u64,
        QUEUE,
        "queued while disabled, summed past the queue"
    );
    assert_eq!(got[QUEUE as usize - 1], (20, 20, 20 - (QUEUE - 1)));
    // Disabled again: queued, not lost.
    sub.disable().unwrap();
    topic.publish(21).unwrap();
    assert!(nothing_pending());
    sub.enable().unwrap();
    assert_eq!(publication(&next_record()), (21, 21, 1));
}

#[test]
fn src_7_a_record_that_cannot_be_written_is_not_lost() {
    let topic = create(&name("efault"), 0o600);
    let sub = subscribe(&topic);
    topic.publish(6).unwrap();
    let map = Mapping::new(1, libc::PROT_READ).unwrap();
    let ts = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    // SAFETY: the slot is mapped read-only: the kernel's EFAULT.
    let r = unsafe { aem_syscalls::aem_wait(map.addr().cast(), 1, &ts, 0) };
    assert_eq!(r.map_err(Error::from), Err(err(libc::EFAULT)));
    let rec = next_record();
    assert_eq!((rec.id, publication(&rec)), (sub.id(), (6, 1, 1)));
}

#[test]
fn src_7_subscription_priority_orders_topic_records_among_other_events() {
    let low_topic = create(&name("prio-low"), 0o600);
    let high_topic = create(&name("prio-high"), 0o600);
    let low = aem::register(low_topic.source(), Options::new().priority(1)).unwrap();
    let high = aem::register(high_topic.source(), Options::new().priority(20)).unwrap();
    let efd = eventfd();
    let fd = watch_in(&efd, Options::new().priority(10)).unwrap();
    // Activated lowest first: delivered highest first.
    low_topic.publish(1).unwrap();
    eventfd_add(&efd, 1);
    high_topic.publish(2).unwrap();
    let ids: Vec<u32> = aem::wait(8, Some(SEC))
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [high.id(), fd.id(), low.id()]);
    drop((fd, low, high));
    // At one priority: activation order, whichever topic.
    let a = aem::register(low_topic.source(), Options::new().priority(5)).unwrap();
    let b = aem::register(high_topic.source(), Options::new().priority(5)).unwrap();
    let order = || -> Vec<u32> {
        let recs = aem::wait(8, Some(SEC)).unwrap();
        recs.iter().map(|r| r.id).collect()
    };
    high_topic.publish(3).unwrap();
    low_topic.publish(4).unwrap();
    assert_eq!(order(), [b.id(), a.id()]);
    low_topic.publish(5).unwrap();
    high_topic.publish(6).unwrap();
    assert_eq!(order(), [a.id(), b.id()]);
    // A new priority moves a pending subscription ahead.
    low_topic.publish(7).unwrap();
    high_topic.publish(8).unwrap();
    b.set_priority(6).unwrap();
    assert_eq!(order(), [b.id(), a.id()]);
}

#[test]
fn src_7_a_subscription_keeps_its_topic_without_a_descriptor() {
    let n = name("held");
    let topic = create(&n, 0o600);
    let sub = subscribe(&topic);
    drop(topic);
    // No descriptor left: the subscription holds the topic, by name.
    let again = publisher(&n).expect("the subscription keeps the topic");
    again.publish(5).unwrap();
    let rec = next_record();
    assert_eq!((rec.id, publication(&rec)), (sub.id(), (5, 1, 1)));
    drop(again);
    let info = subscriber(&n).unwrap().info().unwrap();
    assert_eq!((info.published, info.subscribers), (1, 1));
    // Neither a descriptor nor a subscription: the topic and its name
    // are gone.
    drop(sub);
    assert_eq!(subscriber(&n).unwrap_err(), err(libc::ENOENT));
    // The name is free: a new topic, numbered from 1.
    let fresh = create(&n, 0o600);
    assert_eq!(fresh.info().unwrap().published, 0);
}

#[test]
fn src_7_the_exit_of_its_creator_does_not_end_a_topic() {
    let n = name("orphan");
    let shared = SharedWords::new(2);
    let creator = spawn(|| {
        let t = create(&n, 0o644);
        shared.set(0, 1);
        await_word(shared, 1, 1, None);
        drop(t);
        0
    });
    await_word(shared, 0, 1, Some(creator));
    let held = subscriber(&n).unwrap();
    shared.set(1, 1);
    assert_eq!(reap(creator), 0);
    // The creator is gone; the topic lives on, by name too.
    let sub = subscribe(&held);
    publisher(&n).unwrap().publish(8).unwrap();
    assert_eq!(publication(&next_record()), (8, 1, 1));
    drop(sub);
    drop(held);
    assert_eq!(subscriber(&n).unwrap_err(), err(libc::ENOENT));
}

#[test]
fn src_7_rejects_bad_open_arguments_with_exact_errnos() {
    let n = name("args");
    let good = CString::new(n.as_str()).unwrap();
    let ptr = good.as_ptr() as u64;
    let (rdonly, rdwr, creat) = (libc::O_RDONLY, libc::O_RDWR, libc::O_CREAT);
    let einval = Err(err(libc::EINVAL));
    let eq = |r: Result<OwnedFd, Error>, want: &Result<(), Error>, what: &str| {
        assert_eq!(&r.map(drop), want, "{what}");
    };
    eq(open_raw(b"", rdwr | creat, 0o600), &einval, "empty name");
    eq(open_raw(b"a/b", rdwr | creat, 0o600), &einval, "a '/'");
    eq(open_raw(b"/", rdwr | creat, 0o600), &einval, "'/' alone");
    // Control characters would forge lines in fdinfo.
    eq(
        open_raw(b"a\nowner:\t5 5", rdwr | creat, 0o600),
        &einval,
        "a newline",
    );
    eq(
        open_raw(b"tab\there", rdwr | creat, 0o600),
        &einval,
        "a tab",
    );
    eq(open_raw(b"del\x7f", rdwr | creat, 0o600), &einval, "DEL");
    let max = vec![b'n'; uapi::AEM_TOPIC_NAME_MAX as usize];
    eq(
        open_raw(&max, rdwr | creat | libc::O_EXCL, 0o600),
        &Ok(()),
        "255 bytes",
    );
    let long = vec![b'n'; uapi::AEM_TOPIC_NAME_MAX as usize + 1];
    eq(
        open_raw(&long, rdwr | creat, 0o600),
        &Err(err(libc::ENAMETOOLONG)),
        "256 bytes",
    );
    for flags in [libc::O_NONBLOCK, libc::O_TRUNC, libc::O_APPEND, 1 << 30] {
        eq(
            open_args(24, rdwr | creat | flags, 0o600, 0, ptr),
            &einval,
            &format!("flag {flags:#o}"),
        );
    }
    eq(
        open_args(24, libc::O_ACCMODE | creat, 0o600, 0, ptr),
        &einval,
        "O_ACCMODE",
    );
    eq(
        open_args(24, rdwr | creat, 0o1000, 0, ptr),
        &einval,
        "mode 01000",
    );
    eq(
        open_args(24, rdwr | creat, 0o4644, 0, ptr),
        &einval,
        "set-uid mode",
    );
    eq(
        open_args(24, rdwr | creat, 0o600, 1, ptr),
        &einval,
        "reserved",
    );
    for size in [0, 8, 16, 23] {
        eq(
            open_args(size, rdwr | creat, 0o600, 0, ptr),
            &einval,
            &format!("size {size}"),
        );
    }
    let page = page_size() as u32;
    eq(
        open_args(page + 1, rdwr | creat, 0o600, 0, ptr),
        &einval,
        "size above a page",
    );
    eq(
        open_args(24, rdonly | libc::O_EXCL, 0, 0, ptr),
        &einval,
        "O_EXCL alone",
    );
    eq(
        open_args(24, rdwr, 0, 0, ptr),
        &Err(err(libc::ENOENT)),
        "no such topic",
    );
    // None of those created it.
    assert_eq!(subscriber(&n).unwrap_err(), err(libc::ENOENT));

    // A larger structure: zeros past the known fields are fine, anything
    // else is E2BIG.
    let mut big = vec![0u64; page as usize / 8];
    big[0] = u64::from(page) | ((rdwr | creat) as u64) << 32;
    big[1] = 0o600;
    big[2] = ptr;
    let topic = ctl_open(0, big.as_ptr() as u64).expect("a page-sized structure");
    big[5] = 1;
    assert_eq!(
        ctl_open(0, big.as_ptr() as u64).unwrap_err(),
        err(libc::E2BIG)
    );
    big[0] = 32 | ((rdwr | creat) as u64) << 32;
    big[3] = 1;
    assert_eq!(
        ctl_open(0, big.as_ptr() as u64).unwrap_err(),
        err(libc::E2BIG)
    );
    big[3] = 0;
    ctl_open(0, big.as_ptr() as u64).expect("32 bytes, the tail zero");
    // The call names no registration.
    assert_eq!(
        ctl_open(1, big.as_ptr() as u64).unwrap_err(),
        err(libc::EINVAL)
    );

    // Bad addresses: of the structure, of the name, a name running into
    // an unmapped page.
    let efault = Err(err(libc::EFAULT));
    eq(ctl_open(0, 0), &efault, "null structure");
    let map = Mapping::new(2, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    map.protect_page(1, libc::PROT_NONE);
    let hole = map.addr() as u64 + page_size() as u64;
    eq(ctl_open(0, hole), &efault, "unmapped structure");
    eq(
        open_args(24, rdwr | creat, 0o600, 0, 0),
        &efault,
        "null name",
    );
    eq(
        open_args(24, rdwr | creat, 0o600, 0, hole),
        &efault,
        "unmapped name",
    );
    let tail = hole - 4;
    // SAFETY: the 4 bytes before the hole are ours, mapped writable.
    unsafe { std::ptr::copy_nonoverlapping(b"abcd".as_ptr(), tail as *mut u8, 4) };
    eq(
        open_args(24, rdwr | creat, 0o600, 0, tail),
        &efault,
        "a name into a hole",
    );

    // Existing topics.
    eq(
        open_args(24, rdwr | creat | libc::O_EXCL, 0o600, 0, ptr),
        &Err(err(libc::EEXIST)),
        "O_EXCL of an existing topic",
    );
    eq(
        open_args(24, rdwr | creat, 0o600, 0, ptr),
        &Ok(()),
        "O_CREAT of an existing one",
    );
    // User space creates no kernel topic.
    eq(
        open_raw(b"kernel.conformance", rdwr | creat, 0o644),
        &Err(err(libc::EPERM)),
        "kernel.*",
    );
    eq(
        open_raw(b"kernel.", rdwr | creat, 0o644),
        &Err(err(libc::EPERM)),
        "kernel.",
    );
    eq(
        open_raw(b"kernel.conformance", rdonly, 0),
        &Err(err(libc::ENOENT)),
        "kernel.* that does not exist",
    );
    drop(topic);
}

#[test]
fn src_7_rejects_bad_subscriptions_and_publications_with_exact_errnos() {
    let n = name("io");
    let topic = create(&n, 0o600);
    let wronly = publisher(&n).unwrap();
    let rdonly = subscriber(&n).unwrap();
    let sub_err = |fd: &dyn AsFd| {
        aem::register(aem::Source::topic(fd.as_fd()), Options::new())
            .map(drop)
            .unwrap_err()
    };
    assert_eq!(sub_err(&wronly), err(libc::EBADF), "a publisher's fd");
    let (r, _w) = aem_conformance::pipe();
    assert_eq!(sub_err(&r), err(libc::EINVAL), "a pipe");
    assert_eq!(sub_err(&eventfd()), err(libc::EINVAL), "an eventfd");
    // Flags and the unused bytes of the source arguments must be 0.
    let raw = |fd: i32, flags: u32, raw1: u64| {
        let mut attr = uapi::aem_event_attr {
            source: aem::SourceKind::Topic.raw(),
            ..Default::default()
        };
        attr.__bindgen_anon_1.raw = [0, raw1, 0, 0, 0, 0];
        attr.__bindgen_anon_1.topic = uapi::aem_topic_source { fd, flags };
        let id = register_attr(&attr).map_err(Error::from)?;
        unregister_id(id);
        Ok::<(), Error>(())
    };
    let fd = rdonly.as_raw_fd();
    assert_eq!(raw(fd, 0, 0), Ok(()), "the good case");
    assert_eq!(raw(fd, 1, 0), Err(err(libc::EINVAL)), "flags");
    assert_eq!(raw(fd, 0, 1), Err(err(libc::EINVAL)), "raw[1]");
    assert_eq!(raw(-1, 0, 0), Err(err(libc::EBADF)), "fd -1");
    assert_eq!(raw(9999, 0, 0), Err(err(libc::EBADF)), "no such fd");

    // Publishing: whole 8-byte payloads, on a writable descriptor.
    assert_eq!(rdonly.publish(1), Err(err(libc::EBADF)));
    let bytes = [0u8; 16];
    for len in [0, 3, 7, 12, 15] {
        assert_eq!(
            write_raw(&topic, bytes.as_ptr(), len),
            Err(libc::EINVAL),
            "{len} bytes"
        );
    }
    assert_eq!(topic.info().unwrap().published, 0, "none published");
    // A page at most per call.
    let sub = subscribe(&topic);
    let many = vec![0u64; page_size() / 8 + 1];
    assert_eq!(
        write_raw(&topic, many.as_ptr().cast(), many.len() * 8),
        Ok(page_size())
    );
    assert_eq!(topic.info().unwrap().published, page_size() as u64 / 8);
    // publish_all goes on where the kernel stopped.
    assert_eq!(topic.publish_all(&many), Ok(many.len()));
    let published = (page_size() / 8 + many.len()) as u64;
    assert_eq!(topic.info().unwrap().published, published);
    // Bad memory: what was read before the fault is published.
    let map = Mapping::new(2, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    map.protect_page(1, libc::PROT_NONE);
    // SAFETY: the page before the hole is ours.
    let last = unsafe { map.addr().add(page_size() - 8) };
    assert_eq!(
        write_raw(&topic, last, 16),
        Ok(8),
        "one payload before the hole"
    );
    // SAFETY: as above.
    let hole = unsafe { map.addr().add(page_size()) };
    assert_eq!(write_raw(&topic, hole, 8), Err(libc::EFAULT));
    assert_eq!(topic.info().unwrap().published, published + 1);
    drop(sub);
}

/// `fcntl(fd, cmd)`.
fn fcntl(fd: &impl AsRawFd, cmd: i32) -> i32 {
    // SAFETY: F_GETFD and F_GETFL take no pointer.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd) };
    assert!(r >= 0, "fcntl: {}", std::io::Error::last_os_error());
    r
}

#[test]
fn src_7_a_descriptor_has_the_access_mode_and_close_on_exec_asked_for() {
    let n = name("fdflags");
    let plain = open_raw(n.as_bytes(), libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
    assert_eq!(fcntl(&plain, libc::F_GETFD), 0, "no O_CLOEXEC");
    assert_eq!(fcntl(&plain, libc::F_GETFL) & libc::O_ACCMODE, libc::O_RDWR);
    let cloexec = open_raw(n.as_bytes(), libc::O_WRONLY | libc::O_CLOEXEC, 0).unwrap();
    assert_eq!(fcntl(&cloexec, libc::F_GETFD), libc::FD_CLOEXEC);
    assert_eq!(
        fcntl(&cloexec, libc::F_GETFL) & libc::O_ACCMODE,
        libc::O_WRONLY
    );
    // The crate's topics are always close-on-exec.
    let topic = subscriber(&n).unwrap();
    assert_eq!(fcntl(&topic, libc::F_GETFD), libc::FD_CLOEXEC);
    assert_eq!(
        fcntl(&topic, libc::F_GETFL) & libc::O_ACCMODE,
        libc::O_RDONLY
    );
}

#[test]
fn src_7_a_topic_that_fails_to_get_a_descriptor_is_not_left_behind() {
    let n = name("emfile");
    let code = in_child(|| {
        // The lowest free descriptor is the limit: the next one is refused.
        let probe = nix::unistd::dup(std::io::stdin()).unwrap();
        let lowest = probe.as_raw_fd() as u64;
        drop(probe);
        let old =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let set = |soft| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, old.1)
                .unwrap()
        };
        set(lowest);
        let r = TopicOptions::new()
            .publish(true)
            .create(0o600)
            .exclusive(true)
            .open(&n)
            .map(drop);
        set(old.0);
        if r != Err(err(libc::EMFILE)) {
            eprintln!("{r:?}");
            return 1;
        }
        // The topic was not kept: the name is free.
        if subscriber(&n).map(drop) != Err(err(libc::ENOENT)) {
            return 2;
        }
        i32::from(
            TopicOptions::new()
                .publish(true)
                .create(0o600)
                .exclusive(true)
                .open(&n)
                .is_err(),
        ) * 3
    });
    assert_eq!(code, 0);
}

/// The lines of `/proc/self/fdinfo/<fd>` after the generic ones.
fn fdinfo_lines(fd: &impl AsRawFd) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("aem-topic:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn src_7_fdinfo_shows_name_owner_mode_and_counts() {
    umask(0o022);
    let n = name("fdinfo");
    let topic = create(&n, 0o640);
    topic.publish_all(&[1, 2, 3]).unwrap();
    let a = subscribe(&topic);
    let reader = subscriber(&n).unwrap();
    let b = subscribe(&reader);
    let want = |subscribers: u32| {
        vec![
            format!("aem-topic:\t{n}"),
            "owner:\t0 0".to_string(),
            "mode:\t0640".to_string(),
            "published:\t3".to_string(),
            format!("subscribers:\t{subscribers}"),
        ]
    };
    assert_eq!(fdinfo_lines(&topic), want(2));
    // Every descriptor shows the topic.
    assert_eq!(fdinfo_lines(&reader), want(2));
    drop(a);
    assert_eq!(fdinfo_lines(&reader), want(1));
    let info = reader.info().unwrap();
    assert_eq!(info.name, n.as_str());
    assert_eq!(
        (
            info.uid,
            info.gid,
            info.mode,
            info.published,
            info.subscribers
        ),
        (0, 0, 0o640, 3, 1)
    );
    drop(b);
    assert_eq!(reader.info().unwrap().subscribers, 0);
}

/// `/proc/sys/user/max_aem_topics` for the life of the guard, restored
/// on drop (a failing test too).
struct MaxTopics(String);

const MAX_TOPICS: &str = "/proc/sys/user/max_aem_topics";

impl MaxTopics {
    fn set(value: u64) -> MaxTopics {
        let old = std::fs::read_to_string(MAX_TOPICS).expect("user.max_aem_topics");
        std::fs::write(MAX_TOPICS, value.to_string()).unwrap();
        MaxTopics(old.trim().to_string())
    }
}

impl Drop for MaxTopics {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_TOPICS, &self.0);
    }
}

#[test]
fn sec_2_max_aem_topics_defaults_to_1024() {
    let value = std::fs::read_to_string(MAX_TOPICS).expect("user.max_aem_topics");
    assert_eq!(value.trim(), "1024");
}

/// Set the effective uid (the saved one stays root).
fn seteuid(uid: u32) {
    // SAFETY: seteuid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::seteuid(uid) }, 0, "seteuid({uid})");
}

#[test]
fn sec_2_max_aem_topics_limits_the_topics_a_user_owns() {
    let _limit = MaxTopics::set(3);
    let n = name("quota");
    let code = in_child(|| {
        seteuid(1000);
        let mut mine: Vec<Topic> = (0..3).map(|i| create(&format!("{n}.{i}"), 0o644)).collect();
        let fourth = format!("{n}.3");
        let create_fourth = || {
            TopicOptions::new()
                .publish(true)
                .create(0o644)
                .open(&fourth)
        };
        if create_fourth().map(drop) != Err(err(libc::ENOSPC)) {
            return 1;
        }
        // Opening existing topics creates none: no charge.
        let Ok(other) = publisher(&format!("{n}.0")) else {
            return 2;
        };
        let Ok(other2) = TopicOptions::new()
            .subscribe(true)
            .create(0o644)
            .open(format!("{n}.1"))
        else {
            return 3;
        };
        drop((other, other2));
        // A topic freed frees its charge.
        drop(mine.pop());
        let Ok(fourth_topic) = create_fourth() else {
            return 4;
        };
        if create_fourth().is_err() {
            return 5; // it exists now: no charge either
        }
        if TopicOptions::new()
            .publish(true)
            .create(0o644)
            .open(format!("{n}.4"))
            .map(drop)
            != Err(err(libc::ENOSPC))
        {
            return 6;
        }
        // Another user has a budget of its own.
        seteuid(0);
        seteuid(1001);
        let theirs: Vec<_> = (5..8)
            .map(|i| {
                TopicOptions::new()
                    .publish(true)
                    .create(0o644)
                    .open(format!("{n}.{i}"))
            })
            .collect();
        seteuid(0);
        if theirs.iter().any(Result::is_err) {
            return 7;
        }
        drop((mine, fourth_topic, theirs));
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn sec_2_a_topic_takes_at_most_1024_subscriptions() {
    let n = name("watches");
    let topic = create(&n, 0o600);
    let max = uapi::AEM_SOURCE_MAX_WATCHES as usize;
    let mut subs: Vec<_> = (0..max).map(|_| subscribe(&topic)).collect();
    assert_eq!(
        aem::register(topic.source(), Options::new()).map(drop),
        Err(err(libc::EBUSY))
    );
    assert_eq!(topic.info().unwrap().subscribers, max as u32);
    drop(subs.pop());
    subs.push(subscribe(&topic));
    // One publication reaches them all.
    topic.publish(1).unwrap();
    let mut seen = 0;
    while seen < max {
        let recs = aem::wait(1024, Some(SEC)).unwrap();
        assert!(!recs.is_empty(), "{seen} of {max} records");
        for rec in &recs {
            assert_eq!(publication(rec), (1, 1, 1));
        }
        seen += recs.len();
    }
    assert!(nothing_pending());
    // The refused one kept no reference: gone with the others.
    drop(subs);
    drop(topic);
    assert_eq!(subscriber(&n).map(drop), Err(err(libc::ENOENT)));
}

#[test]
fn sec_1_others_may_subscribe_to_a_0644_topic_but_not_publish() {
    umask(0o022);
    let n = name("0644");
    let topic = create(&n, 0o644);
    let shared = SharedWords::new(1);
    let child = spawn(|| {
        become_user(1000, 1000, &[]);
        let eacces = Err(err(libc::EACCES));
        if publisher(&n).map(drop) != eacces {
            return 1;
        }
        let rdwr = TopicOptions::new().subscribe(true).publish(true);
        if rdwr.open(&n).map(drop) != eacces {
            return 2;
        }
        // O_CREAT of an existing topic is an open like any other.
        if rdwr.create(0o666).open(&n).map(drop) != eacces {
            return 3;
        }
        let Ok(t) = subscriber(&n) else { return 4 };
        let sub = subscribe(&t);
        shared.set(0, 1);
        let rec = next_record();
        if (rec.id, publication(&rec)) != (sub.id(), (0x644, 1, 1)) {
            eprintln!("{rec:?}");
            return 5;
        }
        0
    });
    await_word(shared, 0, 1, Some(child));
    topic.publish(0x644).unwrap();
    assert_eq!(reap(child), 0);
}

#[test]
fn sec_1_a_0600_topic_refuses_other_users() {
    let n = name("0600");
    let _topic = create(&n, 0o600);
    // Another user, in the topic's group or not.
    for (uid, gid) in [(1000, 1000), (1000, 0)] {
        let code = as_user(uid, gid, &[], || {
            let eacces = Err(err(libc::EACCES));
            i32::from(subscriber(&n).map(drop) != eacces)
                + 2 * i32::from(publisher(&n).map(drop) != eacces)
        });
        assert_eq!(code, 0, "uid {uid} gid {gid}: 1 subscribed, 2 published");
    }
}

#[test]
fn sec_1_group_permission_admits_the_members_of_the_group() {
    let n = name("group");
    let shared = SharedWords::new(1);
    // uid 1000, group 2000, makes a topic its group may publish to.
    let owner = spawn(|| {
        become_user(1000, 2000, &[]);
        umask(0);
        let t = create(&n, 0o620);
        let info = t.info().unwrap();
        if (info.uid, info.gid, info.mode) != (1000, 2000, 0o620) {
            eprintln!("{info:?}");
            return 1;
        }
        let sub = subscribe(&t);
        shared.set(0, 1);
        let rec = next_record();
        i32::from((rec.id, publication(&rec)) != (sub.id(), (0x620, 1, 1))) * 2
    });
    await_word(shared, 0, 1, Some(owner));
    let eacces = Err(err(libc::EACCES));
    // Not in the group: the others' bits, none.
    let outsider = as_user(1002, 1002, &[], || {
        i32::from(publisher(&n).map(drop) != eacces)
            + 2 * i32::from(subscriber(&n).map(drop) != eacces)
    });
    assert_eq!(outsider, 0, "uid 1002: 1 published, 2 subscribed");
    // In the group by a supplementary group: may publish, not subscribe.
    let member = as_user(1001, 1001, &[2000], || {
        if subscriber(&n).map(drop) != eacces {
            return 1;
        }
        match publisher(&n).map(|t| t.publish(0x620)) {
            Ok(Ok(())) => 0,
            other => {
                eprintln!("{other:?}");
                2
            }
        }
    });
    assert_eq!(member, 0, "uid 1001: 1 subscribed, 2 could not publish");
    assert_eq!(reap(owner), 0);
}

/// Clear capability `cap` from the calling thread's effective set.
fn drop_effective_capability(cap: u32) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a live header and two data structures, as version 3 wants.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn sec_1_cap_dac_override_opens_another_users_0600_topic() {
    let n = name("override");
    let shared = SharedWords::new(2);
    let owner = spawn(|| {
        become_user(1000, 1000, &[]);
        let _t = create(&n, 0o600);
        shared.set(0, 1);
        await_word(shared, 1, 1, None);
        0
    });
    await_word(shared, 0, 1, Some(owner));
    // Root, with CAP_DAC_OVERRIDE.
    let rdwr = TopicOptions::new().subscribe(true).publish(true).open(&n);
    let topic = rdwr.expect("root opens a 0600 topic of uid 1000");
    let info = topic.info().unwrap();
    assert_eq!((info.uid, info.gid, info.mode), (1000, 1000, 0o600));
    let sub = subscribe(&topic);
    topic.publish(3).unwrap();
    assert_eq!(publication(&next_record()), (3, 1, 1));
    drop(sub);
    // Root without it is one of the others.
    let code = in_child(|| {
        drop_effective_capability(1); // CAP_DAC_OVERRIDE
        let eacces = Err(err(libc::EACCES));
        i32::from(subscriber(&n).map(drop) != eacces)
            + 2 * i32::from(publisher(&n).map(drop) != eacces)
    });
    assert_eq!(
        code, 0,
        "without CAP_DAC_OVERRIDE: 1 subscribed, 2 published"
    );
    shared.set(1, 1);
    assert_eq!(reap(owner), 0);
}

#[test]
fn sec_1_the_umask_is_taken_off_the_mode_and_the_creator_keeps_its_access() {
    let n = name("umask");
    let code = as_user(1000, 1000, &[], || {
        let mode = |mask: u32, mode: u32, name: &str| {
            umask(mask);
            create(name, mode).info().unwrap().mode
        };
        if mode(0o027, 0o777, &format!("{n}.a")) != 0o750 {
            return 1;
        }
        if mode(0, 0o666, &format!("{n}.b")) != 0o666 {
            return 2;
        }
        // Mode 0: the creator still gets what it asked for ...
        umask(0o777);
        let t = create(&format!("{n}.c"), 0o666);
        if t.info().map(|i| i.mode) != Ok(0) {
            return 3;
        }
        let sub = subscribe(&t);
        if t.publish(1).is_err() || publication(&next_record()) != (1, 1, 1) {
            return 4;
        }
        drop(sub);
        // ... and nobody else, the owner opening it again included.
        let eacces = Err(err(libc::EACCES));
        if subscriber(&format!("{n}.c")).map(drop) != eacces {
            return 5;
        }
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn sec_1_a_descriptor_passed_on_keeps_the_access_it_was_opened_with() {
    let n = name("passed");
    let topic = create(&n, 0o600);
    let sub = subscribe(&topic);
    let code = as_user(1000, 1000, &[], || {
        // By name: refused; through the inherited descriptor: allowed.
        if publisher(&n).map(drop) != Err(err(libc::EACCES)) {
            return 1;
        }
        i32::from(topic.publish(0x5a).is_err()) * 2
    });
    assert_eq!(code, 0);
    let rec = next_record();
    assert_eq!((rec.id, publication(&rec)), (sub.id(), (0x5a, 1, 1)));
}
