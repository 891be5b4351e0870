//! API: the system calls and the UAPI header (MISSION.md API-1..API-4).
//!
//! Like every file in this directory, a test binary of its own: it runs in
//! one fresh guest, and its test names start with requirement IDs.

use std::mem::size_of;

use aem_conformance::{deny_syscall_with_enosys, page_size, run_embedded, Mapping};
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
