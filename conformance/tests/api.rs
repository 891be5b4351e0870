//! API: the system calls and the UAPI header (MISSION.md API-1..API-4).
//!
//! Like every file in this directory, a test binary of its own: it runs in
//! one fresh guest, and its test names start with requirement IDs.

use std::mem::size_of;

use aem_conformance::{
    deny_syscall_with_enosys, page_size, register_attr, run_embedded, unregister_id, Mapping,
};
use aem_syscalls::{aem_features, aem_query, nr, uapi, Errno, Error};

const SIZE: usize = size_of::<aem_features>();

/// Call aem_query on a raw pointer, as a hostile or buggy program would.
fn query_raw(ptr: *mut u8, size: usize, flags: u32) -> Result<(), Error> {
    // SAFETY: the tests pass pointers that are valid, unmapped, read-only or
    // kernel addresses; the kernel must reject every bad one with EFAULT,
    // and none of them aliases memory the test uses otherwise.
    unsafe { aem_query(ptr.cast(), size, flags) }
}

fn assert_c_program_passes(name: &str, image: &[u8]) {
    let out = run_embedded(name, image);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains(&format!("abi_version={}", uapi::AEM_ABI_VERSION)),
        "{stdout}"
    );
}

#[test]
fn api_1_c_program_built_against_uapi_header_runs() {
    assert_c_program_passes(
        "api1_c",
        include_bytes!(concat!(env!("OUT_DIR"), "/api1_c")),
    );
}

#[test]
fn api_1_cxx_program_built_against_uapi_header_runs() {
    assert_c_program_passes(
        "api1_cxx",
        include_bytes!(concat!(env!("OUT_DIR"), "/api1_cxx")),
    );
}

#[test]
fn api_2_query_reports_abi_version_and_features() {
    let mut info = aem_features::default();
    query_raw((&mut info as *mut aem_features).cast(), SIZE, 0).expect("aem_query");
    assert_eq!(info.size as usize, SIZE);
    assert_eq!(info.abi_version, uapi::AEM_ABI_VERSION);
    assert_ne!(info.features & uapi::AEM_FEATURE_QUERY as u64, 0);
    // Bit 0 does not name a source kind; bits above the last kind are
    // not defined by this ABI version.
    assert_eq!(info.sources & 1, 0, "sources {:#x}", info.sources);
    assert_eq!(
        info.sources >> (uapi::aem_source_kind::AEM_SOURCE_MODULE + 1),
        0,
        "sources {:#x}",
        info.sources
    );
}

#[test]
fn api_2_query_zeroes_tail_of_larger_struct() {
    // A newer program knows a larger struct: the kernel fills what it knows
    // and zeroes the rest, so unknown fields read as absent.
    let mut buf = [0xa5u8; 256];
    query_raw(buf.as_mut_ptr(), buf.len(), 0).expect("aem_query with 256 bytes");
    let size = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
    assert_eq!(size, SIZE);
    assert!(
        buf[SIZE..].iter().all(|&b| b == 0),
        "tail not zeroed: {:?}",
        &buf[SIZE..]
    );
    let abi = u32::from_ne_bytes(buf[4..8].try_into().unwrap());
    assert_eq!(abi, uapi::AEM_ABI_VERSION);
}

#[test]
fn api_2_query_accepts_a_full_page() {
    let page = page_size();
    let mut buf = vec![0xffu8; page];
    query_raw(buf.as_mut_ptr(), page, 0).expect("aem_query with a page");
    assert!(buf[SIZE..].iter().all(|&b| b == 0));
}

#[test]
fn api_3_query_rejects_unknown_flags() {
    let mut info = aem_features::default();
    for flags in [1u32, 2, 0x8000_0000, u32::MAX] {
        let r = query_raw((&mut info as *mut aem_features).cast(), SIZE, flags);
        assert_eq!(r, Err(Error::Os(Errno::EINVAL)), "flags {flags:#x}");
    }
}

#[test]
fn api_3_query_rejects_size_below_first_version() {
    let mut info = aem_features::default();
    assert_eq!(uapi::AEM_FEATURES_SIZE_VER0 as usize, SIZE);
    for size in [0, 1, 8, SIZE - 1] {
        let r = query_raw((&mut info as *mut aem_features).cast(), size, 0);
        assert_eq!(r, Err(Error::Os(Errno::EINVAL)), "size {size}");
    }
}

#[test]
fn api_3_query_rejects_huge_size() {
    let mut buf = vec![0u8; 2 * page_size()];
    for size in [page_size() + 1, 1 << 20, usize::MAX] {
        let r = query_raw(buf.as_mut_ptr(), size, 0);
        assert_eq!(r, Err(Error::Os(Errno::EINVAL)), "size {size}");
    }
}

#[test]
fn api_3_query_rejects_bad_pointers_with_efault() {
    let unmapped = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    let unmapped_addr = unmapped.addr();
    drop(unmapped);
    let read_only = Mapping::new(1, libc::PROT_READ).unwrap();
    let bad: [(&str, *mut u8); 4] = [
        ("NULL", std::ptr::null_mut()),
        ("unmapped page", unmapped_addr),
        ("read-only page", read_only.addr()),
        ("kernel address", 0xffff_8880_0000_0000usize as *mut u8),
    ];
    for (what, ptr) in bad {
        assert_eq!(
            query_raw(ptr, SIZE, 0),
            Err(Error::Os(Errno::EFAULT)),
            "{what}"
        );
    }
}

#[test]
fn api_3_query_rejects_struct_crossing_into_unmapped_page() {
    // The struct starts in a writable page and ends in a PROT_NONE one;
    // the same for a larger-than-known struct whose zeroed tail crosses.
    let m = Mapping::new(2, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    m.protect_page(1, libc::PROT_NONE);
    let page = page_size();
    // SAFETY: both offsets stay inside the two-page mapping.
    let straddle = unsafe { m.addr().add(page - SIZE / 2) };
    assert_eq!(query_raw(straddle, SIZE, 0), Err(Error::Os(Errno::EFAULT)));
    // SAFETY: as above.
    let tail_straddles = unsafe { m.addr().add(page - SIZE - 8) };
    assert_eq!(
        query_raw(tail_straddles, SIZE + 64, 0),
        Err(Error::Os(Errno::EFAULT))
    );
}

#[test]
fn api_4_shim_reports_kernel_without_aem_clearly() {
    // Make aem_query answer ENOSYS on one thread, as a stock kernel does,
    // and check both crates name the problem.
    std::thread::spawn(|| {
        deny_syscall_with_enosys(nr::AEM_QUERY).expect("install seccomp filter");
        let mut info = aem_features::default();
        let raw = query_raw((&mut info as *mut aem_features).cast(), SIZE, 0);
        assert_eq!(raw, Err(Error::NotAvailable));
        let err = aem::features().expect_err("features() on a kernel without AEM");
        assert_eq!(err, aem::Error::NotAvailable);
        assert!(
            err.to_string().contains("AEM not available (ENOSYS)"),
            "{err}"
        );
    })
    .join()
    .expect("ENOSYS thread");
    // The rest of the process still sees AEM.
    aem::features().expect("AEM on the other threads");
}

fn timer_attr() -> uapi::aem_event_attr {
    let mut attr = uapi::aem_event_attr {
        source: uapi::aem_source_kind::AEM_SOURCE_TIMER,
        ..Default::default()
    };
    attr.__bindgen_anon_1.timer = uapi::aem_timer_source {
        clockid: libc::CLOCK_MONOTONIC as u32,
        flags: 0,
        value_ns: 3_600_000_000_000,
        interval_ns: 0,
    };
    attr
}

const EINVAL: Result<u32, Error> = Err(Error::Os(Errno::EINVAL));

#[test]
fn api_2_register_returns_distinct_ids_and_query_lists_sources() {
    let info = aem::features().unwrap();
    assert!(info.features.contains(aem::FeatureSet::REGISTER));
    assert!(info.features.contains(aem::FeatureSet::WAIT));
    assert!(info.features.contains(aem::FeatureSet::INLINE));
    assert!(info.sources.contains(aem::SourceKind::Fd));
    assert!(info.sources.contains(aem::SourceKind::Timer));
    let a = register_attr(&timer_attr()).unwrap();
    let b = register_attr(&timer_attr()).unwrap();
    assert!(a > 0 && b > 0 && a != b);
    unregister_id(a);
    // Ids are not reused at once: a stale id names nothing.
    let c = register_attr(&timer_attr()).unwrap();
    assert_ne!(c, a);
    unregister_id(b);
    unregister_id(c);
}

#[test]
fn api_2_register_accepts_larger_zeroed_struct_and_rejects_nonzero_tail() {
    let mut buf = vec![0u8; 256];
    let attr = timer_attr();
    // SAFETY: copies the plain-data struct's bytes into a larger buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&attr as *const uapi::aem_event_attr).cast::<u8>(),
            buf.as_mut_ptr(),
            size_of::<uapi::aem_event_attr>(),
        )
    };
    // SAFETY: `buf` is readable for its length.
    let id = unsafe { aem_syscalls::aem_register(buf.as_ptr().cast(), buf.len(), 0) }.unwrap();
    unregister_id(id);
    buf[200] = 1;
    // SAFETY: as above.
    let r = unsafe { aem_syscalls::aem_register(buf.as_ptr().cast(), buf.len(), 0) };
    assert_eq!(r, Err(Error::Os(Errno::E2BIG)));
}

#[test]
fn api_3_register_rejects_bad_arguments() {
    let size = size_of::<uapi::aem_event_attr>();
    let attr = timer_attr();
    // SAFETY: in all calls below, pointers are to live structs or are
    // deliberately bad addresses the kernel must refuse.
    unsafe {
        assert_eq!(aem_syscalls::aem_register(&attr, size, 1), EINVAL, "flags");
        assert_eq!(
            aem_syscalls::aem_register(&attr, size - 1, 0),
            EINVAL,
            "small"
        );
        assert_eq!(
            aem_syscalls::aem_register(&attr, 1 << 20, 0),
            EINVAL,
            "huge"
        );
        assert_eq!(
            aem_syscalls::aem_register(std::ptr::null(), size, 0),
            Err(Error::Os(Errno::EFAULT))
        );
    }
    type Breaker = fn(&mut uapi::aem_event_attr);
    let cases: [(&str, Breaker); 15] = [
        ("unknown source", |a| a.source = 77),
        ("source 0", |a| a.source = 0),
        // Every kind up to AEM_SOURCE_MODULE is implemented now.
        ("the kind after the last", |a| {
            a.source = uapi::aem_source_kind::AEM_SOURCE_MODULE + 1
        }),
        ("unknown flag", |a| a.flags = 1 << 20),
        ("reserved0", |a| a.reserved0 = 1),
        ("priority", |a| a.priority = uapi::AEM_PRIO_MAX + 1),
        ("handler without restorer", |a| a.handler = 0x1000),
        ("restorer without handler", |a| a.restorer = 0x1000),
        ("kernel handler address", |a| {
            a.handler = 0xffff_8880_0000_0000;
            a.restorer = 0x1000
        }),
        ("onstack without handler", |a| {
            a.flags = uapi::AEM_EV_ONSTACK
        }),
        ("bad clock", |a| {
            a.__bindgen_anon_1.timer.clockid = libc::CLOCK_PROCESS_CPUTIME_ID as u32
        }),
        // Beyond ktime_t: the header and the man page say so.
        ("value of 2^63 ns", |a| {
            a.__bindgen_anon_1.timer.value_ns = 1 << 63
        }),
        ("interval of 2^63 ns", |a| {
            a.__bindgen_anon_1.timer.interval_ns = 1 << 63
        }),
        ("interval below 1 us", |a| {
            a.__bindgen_anon_1.timer.interval_ns = 999
        }),
        // SAFETY: every bit pattern is valid for the union's u64 array.
        ("unused union bytes", |a| unsafe {
            a.__bindgen_anon_1.raw[5] = 1
        }),
    ];
    for (what, break_it) in cases {
        let mut a = timer_attr();
        break_it(&mut a);
        assert_eq!(register_attr(&a), EINVAL, "{what}");
    }
}

#[test]
fn api_3_ctl_rejects_bad_ids_and_ops() {
    let enoent = Err(Error::Os(Errno(libc::ENOENT)));
    let id = register_attr(&timer_attr()).unwrap() as i32;
    assert_eq!(
        aem_syscalls::aem_ctl(id, 0, 0),
        Err(Error::Os(Errno::EINVAL)),
        "op 0"
    );
    assert_eq!(
        aem_syscalls::aem_ctl(id, 99, 0),
        Err(Error::Os(Errno::EINVAL)),
        "op 99"
    );
    assert_eq!(
        aem_syscalls::aem_ctl(id, uapi::AEM_CTL_SET_PRIORITY, 100),
        Err(Error::Os(Errno::EINVAL))
    );
    assert_eq!(
        aem_syscalls::aem_ctl(id, uapi::AEM_CTL_ENABLE, 1),
        Err(Error::Os(Errno::EINVAL)),
        "arg"
    );
    assert_eq!(
        aem_syscalls::aem_ctl(5, uapi::AEM_CTL_CONTEXT_FD, 0),
        Err(Error::Os(Errno::EINVAL)),
        "context fd with an id"
    );
    assert_eq!(
        aem_syscalls::aem_ctl(0, uapi::AEM_CTL_CONTEXT_FD, 1),
        Err(Error::Os(Errno::EINVAL)),
        "context fd flags"
    );
    for bad in [0, -1, i32::MIN, id + 1000] {
        assert_eq!(
            aem_syscalls::aem_ctl(bad, uapi::AEM_CTL_DISABLE, 0),
            enoent,
            "id {bad}"
        );
    }
    assert_eq!(
        aem_syscalls::aem_ctl(id, uapi::AEM_CTL_UNREGISTER, 0),
        Ok(0)
    );
    assert_eq!(
        aem_syscalls::aem_ctl(id, uapi::AEM_CTL_UNREGISTER, 0),
        enoent,
        "twice"
    );
}

#[test]
fn api_3_wait_rejects_bad_arguments_and_loses_nothing_on_efault() {
    let mut recs = [uapi::aem_record::default(); 4];
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let bad_ns = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000_000,
    };
    let negative = libc::timespec {
        tv_sec: -1,
        tv_nsec: 0,
    };
    // SAFETY: all calls below pass live buffers, or deliberately bad
    // pointers the kernel must refuse.
    unsafe {
        let einval = Err(Error::Os(Errno::EINVAL));
        assert_eq!(
            aem_syscalls::aem_wait(recs.as_mut_ptr(), 0, &zero, 0),
            einval,
            "max 0"
        );
        assert_eq!(
            aem_syscalls::aem_wait(recs.as_mut_ptr(), 1025, &zero, 0),
            einval,
            "max"
        );
        assert_eq!(
            aem_syscalls::aem_wait(recs.as_mut_ptr(), 4, &zero, 1),
            einval,
            "flags"
        );
        assert_eq!(
            aem_syscalls::aem_wait(recs.as_mut_ptr(), 4, &bad_ns, 0),
            einval,
            "nsec"
        );
        assert_eq!(
            aem_syscalls::aem_wait(recs.as_mut_ptr(), 4, &negative, 0),
            einval,
            "neg"
        );
        assert_eq!(
            aem_syscalls::aem_wait(
                recs.as_mut_ptr(),
                4,
                std::ptr::dangling::<libc::timespec>(),
                0
            ),
            Err(Error::Os(Errno::EFAULT)),
            "timeout pointer"
        );
    }
    // A pending record that cannot be written stays pending.
    let mut attr = timer_attr();
    attr.__bindgen_anon_1.timer.value_ns = 1_000;
    let id = register_attr(&attr).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // SAFETY: NULL records: the kernel must fault cleanly.
    let r = unsafe { aem_syscalls::aem_wait(std::ptr::null_mut(), 4, &zero, 0) };
    assert_eq!(r, Err(Error::Os(Errno::EFAULT)));
    // SAFETY: live buffer and timeout.
    let n = unsafe { aem_syscalls::aem_wait(recs.as_mut_ptr(), 4, &zero, 0) }.unwrap();
    assert_eq!(n, 1);
    assert_eq!((recs[0].id, recs[0].count, recs[0].data[0]), (id, 1, 1));
    unregister_id(id);
}
