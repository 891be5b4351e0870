//! Helpers for the AEM conformance suite (`tests/`, one file per
//! requirement area).
//!
//! The suite runs in the guest against the real AEM kernel (`make test`
//! boots it through `qemu/cargo-runner.sh`).  Test names start with the
//! MISSION.md requirement ID they prove, in snake case (`api_3_...`).

#![warn(missing_docs)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

/// Write an embedded static executable to a temporary file and run it.
///
/// Panics with a clear message when `image` is empty (the build had no
/// patched UAPI headers) or the program cannot be started.
pub fn run_embedded(name: &str, image: &[u8]) -> Output {
    assert!(
        !image.is_empty(),
        "{name} was not built: the build had no patched UAPI headers (run `make kernel`)"
    );
    let path = std::env::temp_dir().join(format!("{name}.{}", std::process::id()));
    std::fs::write(&path, image).expect("write embedded program");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod embedded program");
    let out = Command::new(&path).output().expect("run embedded program");
    let _ = std::fs::remove_file(&path);
    out
}

/// An anonymous private mapping, unmapped on drop.
pub struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Map `pages` pages with protection `prot` (`libc::PROT_*`).
    pub fn new(pages: usize, prot: libc::c_int) -> io::Result<Mapping> {
        let len = pages * page_size();
        // SAFETY: an anonymous mapping at a kernel-chosen address touches
        // no existing memory.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    /// The start of the mapping.
    pub fn addr(&self) -> *mut u8 {
        self.addr.cast()
    }

    /// The length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a successful `new`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Remove access to page `index` (so it faults).
    pub fn protect_page(&self, index: usize, prot: libc::c_int) {
        let ps = page_size();
        assert!(index * ps < self.len);
        // SAFETY: the range lies inside this mapping, which we own.
        let r = unsafe { libc::mprotect(self.addr.cast::<u8>().add(index * ps).cast(), ps, prot) };
        assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing refers to it any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Install, on the calling thread only, a seccomp filter that makes system
/// call `nr` fail with `ENOSYS`: the view a program has of a kernel without
/// that call.  Use it on a thread of its own; the filter cannot be removed.
pub fn deny_syscall_with_enosys(nr: libc::c_long) -> io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    // Offsets in struct seccomp_data.
    const NR_OFF: u32 = 0;
    const ARCH_OFF: u32 = 4;
    let ld = |k| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt, jf| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        ld(ARCH_OFF),
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        ld(NR_OFF),
        jeq(nr as u32, 0, 1),
        ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with these arguments only sets a per-thread flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at a valid filter that outlives the call (the
    // kernel copies it).  Without SECCOMP_FILTER_FLAG_TSYNC it applies to
    // this thread only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
