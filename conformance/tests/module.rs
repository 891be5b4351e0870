//! SRC-10: event types that loadable modules add (`AEM_SOURCE_MODULE`),
//! with the sample module `aem_sample.ko` (`samples/aem/aem_sample.c`,
//! copied into the guest as /lib/modules/aem_sample.ko): the type
//! "sample" and the kernel topic "kernel.aem_sample" (SRC-7), both
//! notified by writing a number to /sys/kernel/aem_sample/fire.
//!
//! Each test loads the module fresh and leaves it unloaded.  The tests
//! share the process's AEM context and the module: run with
//! --test-threads=1 (as `make test` does).

use std::ffi::CStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use aem::{Action, Error, EventData, ModuleType, Options, Source, TopicOptions};
use aem_conformance::{
    await_word, become_user, err, next_record, nothing_pending, proc_row, reap, reap_status,
    register_attr, spawn, unregister_id, SharedWords,
};
use aem_syscalls::uapi;

const SEC: Duration = Duration::from_secs(1);
const KO: &str = "/lib/modules/aem_sample.ko";
const MODULE: &CStr = c"aem_sample";
const FIRE: &str = "/sys/kernel/aem_sample/fire";
const TYPE_DIR: &str = "/sys/kernel/aem/types/sample";
const REFCNT: &str = "/sys/module/aem_sample/refcnt";
const TOPIC: &str = "kernel.aem_sample";

fn loaded() -> bool {
    Path::new("/sys/module/aem_sample").exists()
}

/// `delete_module("aem_sample", flags)`: `rmmod`, its errno.
fn delete_module(flags: i32) -> Result<(), i32> {
    // SAFETY: a NUL-terminated name; the call only reads it.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, MODULE.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn unload() {
    assert_eq!(delete_module(libc::O_NONBLOCK), Ok(()), "rmmod aem_sample");
    assert!(!loaded());
}

/// Unload the module if a test left it loaded.
fn ensure_unloaded() {
    if loaded() {
        unload();
    }
}

fn insmod() {
    let status = Command::new("insmod").arg(KO).status().expect("run insmod");
    assert!(status.success(), "insmod {KO}: {status}");
}

/// The sample module, loaded fresh for a test; unloaded when dropped
/// (declare it before the test's registrations, which are dropped first).
struct Sample {
    type_: ModuleType,
}

impl Sample {
    fn load() -> Sample {
        ensure_unloaded();
        insmod();
        Sample {
            type_: ModuleType::by_name("sample").expect("the sample type"),
        }
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        if loaded() {
            let _ = delete_module(libc::O_NONBLOCK);
        }
    }
}

/// Notify the sample type with `data` (and publish it on its topic).
fn fire(data: u64) {
    std::fs::write(FIRE, data.to_string()).expect("write fire");
}

/// The module's reference count.
fn refcnt() -> u64 {
    std::fs::read_to_string(REFCNT)
        .expect("refcnt")
        .trim()
        .parse()
        .unwrap()
}

fn watch(type_: ModuleType) -> Result<aem::Registration, Error> {
    aem::register(Source::module(type_), Options::new())
}

#[test]
fn src_10_the_sample_type_is_in_sysfs_only_while_its_module_is_loaded() {
    ensure_unloaded();
    assert!(!Path::new(TYPE_DIR).exists());
    assert_eq!(ModuleType::by_name("sample"), Err(err(libc::ENOENT)));
    let sample = Sample::load();
    assert_ne!(sample.type_.raw(), 0);
    assert_eq!(
        std::fs::read_to_string(format!("{TYPE_DIR}/type")).unwrap(),
        format!("{}\n", sample.type_)
    );
    unload();
    assert!(!Path::new(TYPE_DIR).exists());
    assert_eq!(ModuleType::by_name("sample"), Err(err(libc::ENOENT)));
    assert!(!Path::new(FIRE).exists());
    // Loaded again: a new number.
    let again = Sample::load();
    assert_ne!(again.type_, sample.type_);
}

#[test]
fn src_10_a_registration_receives_the_notifications_with_their_data() {
    let sample = Sample::load();
    let reg = aem::register(Source::module(sample.type_), Options::new().cookie(10)).unwrap();
    assert_eq!(proc_row(reg.id()).unwrap().source, "module");
    assert!(nothing_pending());
    fire(5);
    let rec = next_record();
    assert_eq!((rec.id, rec.cookie, rec.count), (reg.id(), 10, 1));
    assert_eq!(
        rec.data,
        EventData::Module {
            data: 5,
            type_: sample.type_
        }
    );
    // Two notifications before a wait: one record, their data summed.
    fire(5);
    fire(3);
    let rec = next_record();
    assert_eq!(rec.count, 2);
    assert_eq!(
        rec.data,
        EventData::Module {
            data: 8,
            type_: sample.type_
        }
    );
    assert!(nothing_pending());
    // Every registration on the type is notified.
    let other = watch(sample.type_).unwrap();
    fire(1);
    let mut ids: Vec<u32> = [next_record(), next_record()]
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    assert_eq!(ids, [reg.id(), other.id()]);
}

#[test]
fn src_10_rmmod_is_refused_while_registered_and_succeeds_after() {
    static INLINE: AtomicU64 = AtomicU64::new(0);
    let sample = Sample::load();
    assert_eq!(refcnt(), 0);
    let polled = watch(sample.type_).unwrap();
    // SAFETY: the handler only adds to an atomic.
    let inline = unsafe {
        aem::register_inline(Source::module(sample.type_), Options::new(), |rec| {
            if let EventData::Module { data, .. } = rec.data {
                INLINE.fetch_add(data, SeqCst);
            }
            Action::Rearm
        })
    }
    .unwrap();
    assert_eq!(refcnt(), 2, "each registration holds the module");
    let ewouldblock = Err(libc::EWOULDBLOCK);
    assert_eq!(delete_module(libc::O_NONBLOCK), ewouldblock);
    assert_eq!(delete_module(0), ewouldblock, "without O_NONBLOCK");
    let rmmod = Command::new("rmmod").arg("aem_sample").output().unwrap();
    assert!(!rmmod.status.success(), "rmmod succeeded");
    // It keeps working.
    assert!(loaded() && Path::new(TYPE_DIR).exists());
    fire(7);
    let rec = next_record();
    assert_eq!((rec.id, rec.count), (polled.id(), 1));
    assert_eq!(
        rec.data,
        EventData::Module {
            data: 7,
            type_: sample.type_
        }
    );
    let end = Instant::now() + 5 * SEC;
    while INLINE.load(SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(INLINE.load(SeqCst), 7);
    drop(polled);
    assert_eq!(refcnt(), 1);
    assert_eq!(delete_module(libc::O_NONBLOCK), ewouldblock, "one left");
    drop(inline);
    assert_eq!(refcnt(), 0);
    let rmmod = Command::new("rmmod").arg("aem_sample").status().unwrap();
    assert!(rmmod.success(), "rmmod after the registrations ended");
    assert!(!loaded());
    assert!(!Path::new(TYPE_DIR).exists());
}

#[test]
fn src_10_the_registrations_of_a_process_that_exits_release_the_module() {
    let sample = Sample::load();
    // A child exits without unregistering, a notification undelivered.
    let shared = SharedWords::new(2);
    let child = spawn(|| {
        let regs = [watch(sample.type_).unwrap(), watch(sample.type_).unwrap()];
        shared.set(0, 1);
        await_word(shared, 1, 1, None);
        std::mem::forget(regs);
        0
    });
    await_word(shared, 0, 1, Some(child));
    assert_eq!(refcnt(), 2);
    fire(1);
    assert_eq!(delete_module(libc::O_NONBLOCK), Err(libc::EWOULDBLOCK));
    shared.set(1, 1);
    assert_eq!(reap(child), 0);
    assert_eq!(refcnt(), 0, "the exit left module references");
    unload();

    // A child killed while registered.
    let sample = Sample::load();
    let shared = SharedWords::new(1);
    let child = spawn(|| {
        let _reg = watch(sample.type_).unwrap();
        shared.set(0, 1);
        loop {
            std::thread::sleep(SEC);
        }
    });
    await_word(shared, 0, 1, Some(child));
    assert_eq!(refcnt(), 1);
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    let status = reap_status(child);
    assert!(libc::WIFSIGNALED(status));
    assert_eq!(refcnt(), 0, "the killed process left module references");
    unload();
}

#[test]
fn src_10_a_stale_type_number_after_a_reload_is_enoent() {
    let first = Sample::load();
    let old = first.type_;
    unload();
    assert_eq!(watch(old).map(drop), Err(err(libc::ENOENT)), "unloaded");
    let second = Sample::load();
    assert_ne!(second.type_, old);
    assert_eq!(watch(old).map(drop), Err(err(libc::ENOENT)), "reloaded");
    let reg = watch(second.type_).unwrap();
    fire(2);
    let rec = next_record();
    assert_eq!(rec.id, reg.id());
    assert_eq!(
        rec.data,
        EventData::Module {
            data: 2,
            type_: second.type_
        }
    );
}

/// `aem_register()` of a module source with raw arguments, unregistered
/// at once.
fn register_raw(
    type_: u32,
    flags: u32,
    raw1: u64,
    ev_flags: u32,
    priority: u32,
) -> Result<(), Error> {
    let mut attr = uapi::aem_event_attr {
        source: aem::SourceKind::Module.raw(),
        flags: ev_flags,
        priority,
        ..Default::default()
    };
    attr.__bindgen_anon_1.raw = [0, raw1, 0, 0, 0, 0];
    attr.__bindgen_anon_1.module = uapi::aem_module_source { type_, flags };
    let id = register_attr(&attr).map_err(Error::from)?;
    unregister_id(id);
    Ok(())
}

#[test]
fn src_10_rejects_unknown_types_and_bad_arguments() {
    let sample = Sample::load();
    let t = sample.type_.raw();
    let (enoent, einval) = (Err(err(libc::ENOENT)), Err(err(libc::EINVAL)));
    assert_eq!(register_raw(t, 0, 0, 0, 0), Ok(()), "the good case");
    for bad in [0, t + 1000, i32::MAX as u32, u32::MAX] {
        assert_eq!(register_raw(bad, 0, 0, 0, 0), enoent, "type {bad}");
    }
    assert_eq!(register_raw(t, 1, 0, 0, 0), einval, "flags");
    assert_eq!(register_raw(t, 1 << 31, 0, 0, 0), einval, "flags bit 31");
    assert_eq!(register_raw(0, 1, 0, 0, 0), einval, "flags before the type");
    assert_eq!(register_raw(t, 0, 1, 0, 0), einval, "raw[1]");
    assert_eq!(
        register_raw(t, 0, 0, uapi::AEM_EV_LEVEL, 0),
        einval,
        "level: a notification happens once"
    );
    assert_eq!(register_raw(t, 0, 0, 0, 100), einval, "priority 100");
    // No refusal kept a reference to the module.
    assert_eq!(refcnt(), 0);
    unload();
}

#[test]
fn src_10_an_inline_handler_runs_on_the_module_type() {
    static DATA: AtomicU64 = AtomicU64::new(0);
    static TYPE: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let sample = Sample::load();
    // SAFETY: the handler only stores to atomics.
    let reg = unsafe {
        aem::register_inline(Source::module(sample.type_), Options::new(), |rec| {
            if let EventData::Module { data, type_ } = rec.data {
                DATA.store(data, SeqCst);
                TYPE.store(u64::from(type_.raw()), SeqCst);
                COUNT.fetch_add(rec.count, SeqCst);
            }
            Action::Rearm
        })
    }
    .unwrap();
    fire(11);
    let end = Instant::now() + 5 * SEC;
    while COUNT.load(SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        (DATA.load(SeqCst), TYPE.load(SeqCst), COUNT.load(SeqCst)),
        (11, u64::from(sample.type_.raw()), 1)
    );
    drop(reg);
}

#[test]
fn sec_2_a_module_type_takes_at_most_1024_registrations() {
    let sample = Sample::load();
    let max = uapi::AEM_SOURCE_MAX_WATCHES as usize;
    let mut regs: Vec<_> = (0..max).map(|_| watch(sample.type_).unwrap()).collect();
    assert_eq!(refcnt(), max as u64);
    assert_eq!(watch(sample.type_).map(drop), Err(err(libc::EBUSY)));
    assert_eq!(refcnt(), max as u64, "the refused one keeps no reference");
    drop(regs.pop());
    regs.push(watch(sample.type_).expect("room for one again"));
    drop(regs);
    assert_eq!(refcnt(), 0);
    unload();
}

#[test]
fn src_7_the_kernel_publishes_its_topic_to_a_non_root_subscriber() {
    let _sample = Sample::load();
    let shared = SharedWords::new(1);
    let child = spawn(|| {
        become_user(1000, 1000, &[]);
        let eacces = Err(err(libc::EACCES));
        let open = |o: TopicOptions| o.open(TOPIC).map(drop);
        if open(TopicOptions::new().publish(true)) != eacces {
            return 1;
        }
        if open(TopicOptions::new().publish(true).subscribe(true)) != eacces {
            return 2;
        }
        let create = TopicOptions::new()
            .subscribe(true)
            .create(0o666)
            .exclusive(true);
        if open(create) != Err(err(libc::EEXIST)) {
            return 3;
        }
        let Ok(topic) = TopicOptions::new().subscribe(true).open(TOPIC) else {
            return 4;
        };
        match topic.info() {
            Ok(i) if (i.uid, i.gid, i.mode, i.published) == (0, 0, 0o444, 0) => {}
            other => {
                eprintln!("{other:?}");
                return 5;
            }
        }
        let sub = aem::register(topic.source(), Options::new()).unwrap();
        shared.set(0, 1);
        let rec = next_record();
        let want = EventData::Topic {
            payload: 42,
            seq: 1,
        };
        if (rec.id, rec.count, &rec.data) != (sub.id(), 1, &want) {
            eprintln!("{rec:?}");
            return 6;
        }
        0
    });
    await_word(shared, 0, 1, Some(child));
    fire(42);
    assert_eq!(reap(child), 0);
    // Only the kernel publishes to its topics: not even root, whose
    // CAP_DAC_OVERRIDE passes any mode, may open one for writing.
    for options in [
        TopicOptions::new().publish(true),
        TopicOptions::new().publish(true).subscribe(true),
    ] {
        assert_eq!(options.open(TOPIC).map(drop), Err(err(libc::EACCES)));
    }
}

#[test]
fn src_7_a_kernel_topic_outlives_its_module_while_subscribed() {
    let sample = Sample::load();
    let topic = TopicOptions::new().subscribe(true).open(TOPIC).unwrap();
    let sub = aem::register(topic.source(), Options::new()).unwrap();
    fire(1);
    let rec = next_record();
    assert_eq!(
        (rec.id, &rec.data),
        (sub.id(), &EventData::Topic { payload: 1, seq: 1 })
    );
    drop(topic);
    // A subscription to its topic does not hold the module ...
    unload();
    drop(sample);
    // ... but holds the topic, which the module finds again when loaded.
    let again = TopicOptions::new().subscribe(true).open(TOPIC);
    assert!(again.is_ok(), "{again:?}");
    drop(again);
    let _sample = Sample::load();
    fire(2);
    let rec = next_record();
    assert_eq!(
        (rec.id, &rec.data),
        (sub.id(), &EventData::Topic { payload: 2, seq: 2 })
    );
    drop(sub);
    unload();
    assert_eq!(
        TopicOptions::new().subscribe(true).open(TOPIC).map(drop),
        Err(err(libc::ENOENT))
    );
}
