//! SRC-9: an event when a watched user word changes.
//!
//! The watch is cooperative, as futexes are: a writer stores to the word
//! and then wakes it (FUTEX_WAKE), and the watch sees the wake, reads the
//! word and reports the change.  These tests use the raw system calls:
//! they check the ABI of `struct aem_memory_watch_source` and its records.
//!
//! The tests share the process's AEM context: run with --test-threads=1.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use aem_conformance::{in_child, raw_records, register_attr, unregister_id, Mapping};
use aem_syscalls::uapi;
use aem_syscalls::{Errno, Error};

const SOURCE: u32 = uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH;

fn watch_attr(addr: u64, flags: u32) -> uapi::aem_event_attr {
    // SAFETY: aem_event_attr is plain old data; all zeroes is valid.
    let mut attr: uapi::aem_event_attr = unsafe { std::mem::zeroed() };
    attr.source = SOURCE;
    attr.__bindgen_anon_1.memory.addr = addr;
    attr.__bindgen_anon_1.memory.flags = flags;
    attr
}

fn watch(word: &AtomicU32, flags: u32) -> u32 {
    register_attr(&watch_attr(word.as_ptr() as u64, flags)).expect("register the watch")
}

/// FUTEX_WAKE on `word`, private or shared; the number of waiters woken.
fn futex_wake(word: &AtomicU32, shared: bool, nr: i32) -> i64 {
    let op = if shared {
        libc::FUTEX_WAKE
    } else {
        libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG
    };
    // SAFETY: FUTEX_WAKE only reads the word's key; the word is live.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, nr, 0, 0, 0) };
    assert!(r >= 0, "futex wake: {}", std::io::Error::last_os_error());
    r
}

fn store_and_wake(word: &AtomicU32, value: u32, shared: bool) {
    word.store(value, SeqCst);
    futex_wake(word, shared, 1);
}

fn one_record(id: u32) -> uapi::aem_record {
    let recs = raw_records(Duration::from_secs(5));
    assert_eq!(recs.len(), 1, "one record expected: {recs:?}");
    assert_eq!(recs[0].id, id);
    assert_eq!(recs[0].source, SOURCE);
    recs[0]
}

fn nothing_within(ms: u64) {
    let recs = raw_records(Duration::from_millis(ms));
    assert!(recs.is_empty(), "no record expected: {recs:?}");
}

#[test]
fn src_9_a_private_wake_reports_the_new_and_the_previous_value() {
    let word = Box::new(AtomicU32::new(5));
    let id = watch(&word, 0);
    store_and_wake(&word, 7, false);
    let rec = one_record(id);
    assert_eq!((rec.data[0], rec.data[1], rec.count), (7, 5, 1));
    // The next record starts from what this one told.
    store_and_wake(&word, 9, false);
    let rec = one_record(id);
    assert_eq!((rec.data[0], rec.data[1]), (9, 7));
    unregister_id(id);
}

#[test]
fn src_9_a_wake_that_left_the_word_unchanged_delivers_nothing() {
    let word = Box::new(AtomicU32::new(1));
    let id = watch(&word, 0);
    futex_wake(&word, false, 1);
    nothing_within(300);
    // A change back to the value last told is no change either.
    word.store(2, SeqCst);
    word.store(1, SeqCst);
    futex_wake(&word, false, 1);
    nothing_within(300);
    unregister_id(id);
}

#[test]
fn src_9_a_write_without_a_wake_is_not_seen_until_a_wake() {
    let word = Box::new(AtomicU32::new(0));
    let id = watch(&word, 0);
    word.store(3, SeqCst);
    nothing_within(300);
    futex_wake(&word, false, 1);
    let rec = one_record(id);
    assert_eq!((rec.data[0], rec.data[1]), (3, 0));
    unregister_id(id);
}

#[test]
fn src_9_changes_between_deliveries_coalesce_with_the_count_of_wakes() {
    let word = Box::new(AtomicU32::new(10));
    let id = watch(&word, 0);
    for v in [11, 12, 13] {
        store_and_wake(&word, v, false);
    }
    let rec = one_record(id);
    assert_eq!((rec.data[0], rec.data[1], rec.count), (13, 10, 3));
    unregister_id(id);
}

#[test]
fn src_9_another_process_writing_shared_memory_is_seen_by_a_shared_watch_only() {
    // A fresh shared anonymous page, unmapped at the end.
    let page = Mapping::shared(1, libc::PROT_READ | libc::PROT_WRITE).expect("mmap");
    // SAFETY: the page is mapped, aligned and outlives both references.
    let (shared_word, private_word) = unsafe {
        (
            &*(page.addr() as *const AtomicU32),
            &*(page.addr() as *const AtomicU32).add(1),
        )
    };
    let shared = watch(shared_word, uapi::AEM_WATCH_SHARED);
    let private = watch(private_word, 0);

    let status = in_child(|| {
        store_and_wake(shared_word, 42, true);
        // A shared wake has the key of the shared page, not of this
        // process's private address: the parent's private watch on the
        // second word must not see it.
        store_and_wake(private_word, 43, true);
        0
    });
    assert_eq!(status, 0);
    let rec = one_record(shared);
    assert_eq!((rec.data[0], rec.data[1]), (42, 0));
    nothing_within(300);
    unregister_id(shared);
    unregister_id(private);
    // Unmaps the page mapped above; the references are dead.
    drop(page);
}

#[test]
fn src_9_the_watch_takes_no_wake_up_from_a_futex_waiter() {
    let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let id = watch(word, 0);
    let waiter = std::thread::spawn(move || {
        // SAFETY: FUTEX_WAIT_PRIVATE on a live word, expecting 0.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0,
                std::ptr::null::<libc::timespec>(),
                0,
                0,
            )
        };
    });
    // Until the waiter sleeps, a wake finds nobody: retry.
    let mut woken = 0;
    for _ in 0..500 {
        word.store(1, SeqCst);
        woken = futex_wake(word, false, 1);
        if woken == 1 {
            break;
        }
        word.store(0, SeqCst);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        woken, 1,
        "the waiter was woken: the watch did not take its place"
    );
    waiter.join().unwrap();
    let recs = raw_records(Duration::from_secs(5));
    assert!(
        recs.iter().any(|r| r.id == id && r.data[0] == 1),
        "the watch saw the store: {recs:?}"
    );
    unregister_id(id);
    // Drain what the retries left.
    raw_records(Duration::from_millis(100));
}

#[test]
fn src_9_futex_wake_op_reports_both_of_its_words() {
    let words = Box::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let first = watch(&words[0], 0);
    let second = watch(&words[1], 0);
    words[0].store(5, SeqCst);
    // FUTEX_OP_SET 8 on the second word, wake if it was 0 (FUTEX_OP_CMP_EQ).
    let op = (libc::FUTEX_OP_SET << 28) | (8 << 12) | (libc::FUTEX_OP_CMP_EQ << 24);
    // SAFETY: both words are live and aligned; the op writes the second.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            words[0].as_ptr(),
            libc::FUTEX_WAKE_OP | libc::FUTEX_PRIVATE_FLAG,
            1,
            1usize,
            words[1].as_ptr(),
            op,
        )
    };
    assert!(r >= 0, "FUTEX_WAKE_OP: {}", std::io::Error::last_os_error());
    assert_eq!(words[1].load(SeqCst), 8);
    let mut recs = raw_records(Duration::from_secs(5));
    if recs.len() < 2 {
        recs.extend(raw_records(Duration::from_secs(2)));
    }
    recs.sort_by_key(|r| r.id);
    let got: Vec<_> = recs.iter().map(|r| (r.id, r.data[0])).collect();
    let mut want = vec![(first, 5), (second, 8)];
    want.sort();
    assert_eq!(got, want);
    unregister_id(first);
    unregister_id(second);
}

#[test]
fn src_9_a_word_unmapped_before_delivery_reports_efault_and_disables_the_event() {
    // A fresh private page, unmapped by the test.
    let page = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).expect("mmap");
    // SAFETY: the page is mapped and aligned until the drop below, and
    // the reference is not used after it.
    let word = unsafe { &*(page.addr() as *const AtomicU32) };
    let id = watch(word, 0);
    store_and_wake(word, 1, false);
    // Unmap the page; `word` is dead from here on.
    drop(page);
    let rec = one_record(id);
    assert_eq!(rec.data[0] as i64, -(libc::EFAULT as i64));
    let row = aem_conformance::proc_row(id).expect("still registered");
    assert_eq!(row.state, "disabled", "{row:?}");
    unregister_id(id);
}

#[test]
fn src_9_bad_arguments_get_clear_errnos() {
    let word = Box::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let addr = word[0].as_ptr() as u64;
    let einval = Err(Error::Os(Errno::EINVAL));
    let efault = Err(Error::Os(Errno::EFAULT));
    assert_eq!(
        register_attr(&watch_attr(addr + 1, 0)),
        einval,
        "misaligned"
    );
    assert_eq!(
        register_attr(&watch_attr(addr + 2, 0)),
        einval,
        "half aligned"
    );
    assert_eq!(register_attr(&watch_attr(addr, 2)), einval, "unknown flag");
    let mut attr = watch_attr(addr, 0);
    attr.__bindgen_anon_1.memory.reserved = 1;
    assert_eq!(register_attr(&attr), einval, "reserved");
    let mut attr = watch_attr(addr, 0);
    // SAFETY: writing raw bytes of the union.
    unsafe { attr.__bindgen_anon_1.raw[2] = 1 };
    assert_eq!(register_attr(&attr), einval, "unused union bytes");
    assert_eq!(register_attr(&watch_attr(0, 0)), efault, "null");
    assert_eq!(register_attr(&watch_attr(8, 0)), efault, "unmapped");
    assert_eq!(
        register_attr(&watch_attr(0xffff_8880_0000_0000, 0)),
        efault,
        "kernel address"
    );
    assert_eq!(
        register_attr(&watch_attr(addr, uapi::AEM_WATCH_SHARED)).map(unregister_id),
        Ok(()),
        "a shared watch of private memory is a valid (if lonely) watch"
    );
}
