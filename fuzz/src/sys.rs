//! Raw system calls, without libc's errno (so that inline handlers, which
//! interrupt the main flow anywhere, can make them freely), the AEM calls
//! counted in the shared histogram, and the memory the fuzzer hands the
//! kernel as pointers.

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use aem_syscalls::uapi;

use crate::rng::Rng;
use crate::stats::{Counter, Stats};

/// Index of each AEM system call in the histogram.
pub const QUERY: usize = 0;
/// `aem_register`.
pub const REGISTER: usize = 1;
/// `aem_ctl`.
pub const CTL: usize = 2;
/// `aem_wait`.
pub const WAIT: usize = 3;
/// `aem_return`.
pub const RETURN: usize = 4;
/// `aem_thread_area`.
pub const THREAD_AREA: usize = 5;

/// System call numbers, indexed like the histogram.
pub const NR: [i64; 6] = [
    uapi::__NR_aem_query as i64,
    uapi::__NR_aem_register as i64,
    uapi::__NR_aem_ctl as i64,
    uapi::__NR_aem_wait as i64,
    uapi::__NR_aem_return as i64,
    uapi::__NR_aem_thread_area as i64,
];

static STATS: AtomicPtr<Stats> = AtomicPtr::new(core::ptr::null_mut());

/// Install the run's shared counters (before any fork or thread).
pub fn set_stats(s: &'static Stats) {
    STATS.store(s as *const Stats as *mut Stats, Relaxed);
}

/// The run's shared counters.
pub fn stats() -> &'static Stats {
    let p = STATS.load(Relaxed);
    assert!(!p.is_null(), "aem-fuzz: counters not set up");
    // SAFETY: set once from a `&'static Stats`.
    unsafe { &*p }
}

/// A raw system call: returns the kernel's value, `-errno` on failure.
///
/// # Safety
///
/// Whatever the call does with its arguments must be sound: pointers
/// must be valid for what the kernel does with them, or not point at
/// memory the program uses (see [`Mem`]).
#[inline]
pub unsafe fn raw(nr: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the call; the syscall instruction
    // clobbers rcx and r11 only, and touches no stack.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// An AEM system call (`sys` indexes [`NR`]), counted in the histogram.
///
/// # Safety
///
/// As for [`raw`].
pub unsafe fn aem(sys: usize, a: [u64; 6]) -> i64 {
    // SAFETY: forwarded to the caller.
    let ret = unsafe { raw(NR[sys], a) };
    stats().record(sys, ret);
    CALLS.set(CALLS.get() + 1);
    ret
}

thread_local! {
    static CALLS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// AEM system calls made so far on the calling thread (its handlers'
/// included).
pub fn thread_calls() -> u64 {
    CALLS.get()
}

/// A system call that is not AEM's, counted as "other".
///
/// # Safety
///
/// As for [`raw`].
pub unsafe fn other(nr: i64, a: [u64; 6]) -> i64 {
    stats().add(Counter::OtherCalls, 1);
    // SAFETY: forwarded to the caller.
    unsafe { raw(nr, a) }
}

/// `aem_ctl`: always sound.  Only AEM_CTL_TOPIC_OPEN takes a pointer,
/// which the kernel only reads (a descriptor it may return is not
/// tracked: closed at exit).
pub fn ctl(id: u64, op: u64, arg: u64) -> i64 {
    // SAFETY: aem_ctl writes through no pointer.
    unsafe { aem(CTL, [id, op, arg, 0, 0, 0]) }
}

/// `close(fd)`; closing descriptors is sound for us: the fuzzer owns every
/// descriptor but 0, 1 and 2, which it never closes.
pub fn close(fd: i32) {
    if fd > 2 {
        // SAFETY: see above.
        unsafe { other(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) };
    }
}

/// `_exit` of the whole process, without running anything of user space.
pub fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group does not return.
    unsafe { raw(libc::SYS_exit_group, [code as u64, 0, 0, 0, 0, 0]) };
    unreachable!()
}

/// `getpid()`.
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_getpid, [0; 6]) as i32 }
}

/// `gettid()`.
pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_gettid, [0; 6]) as i32 }
}

/// `alarm(secs)`: the watchdog.  Its SIGALRM keeps the default action and
/// kills a process stuck that long.
pub fn alarm(secs: u32) {
    // SAFETY: no pointers.
    unsafe { raw(libc::SYS_alarm, [u64::from(secs), 0, 0, 0, 0, 0]) };
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now_ns(clock: i32) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec.
    unsafe {
        raw(
            libc::SYS_clock_gettime,
            [clock as u64, &mut ts as *mut _ as u64, 0, 0, 0, 0],
        )
    };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Map `len` bytes of fresh anonymous memory with `prot`, or panic.
pub fn map(len: usize, prot: i32) -> *mut u8 {
    // SAFETY: a new anonymous private mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "aem-fuzz: mmap failed");
    p as *mut u8
}

/// Size of the process-wide scratch area.
pub const SCRATCH: usize = 1 << 20;
/// Size of the PROT_NONE guard after it.
pub const GUARD: usize = 64 << 10;
/// Size of each thread's own pages (then a guard page).
pub const OWN: usize = 4 << 12;
/// Size of the process-wide page of watch words (`MAP_SHARED`).
pub const WORDS: usize = 4096;

/// The memory the fuzzer passes to the kernel.  Invariant: every address
/// it hands out is either in memory that only serves as the kernel's
/// target (the scratch area, a thread's own pages), or not writable user
/// memory at all (guard pages, a read-only page, the unmappable low
/// pages, kernel and non-canonical addresses).  So whatever a system call
/// writes through such a pointer, at whatever time, corrupts nothing the
/// program relies on.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    /// Start of the scratch area (SCRATCH bytes, then GUARD bytes of
    /// PROT_NONE).
    pub scratch: u64,
    /// A read-only page of zeros.
    pub ro: u64,
    /// A page of 32-bit words to watch and to wake (memory watches,
    /// futexes), `MAP_SHARED` so that the children forked afterwards
    /// share it and their shared wakes reach the watches of this
    /// process.  Never unmapped; nothing relies on its contents, which
    /// every thread stores to with atomics (and FUTEX_WAKE_OP changes).
    pub words: u64,
}

impl Mem {
    /// Map the process-wide areas.
    pub fn new() -> Mem {
        let scratch = map(SCRATCH + GUARD, libc::PROT_NONE);
        // SAFETY: the first SCRATCH bytes of our own fresh mapping.
        let r = unsafe {
            libc::mprotect(
                scratch as *mut _,
                SCRATCH,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(r, 0, "aem-fuzz: mprotect failed");
        let ro = map(4096, libc::PROT_READ);
        // SAFETY: a new anonymous shared mapping touches no existing
        // memory.
        let words = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                WORDS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(words != libc::MAP_FAILED, "aem-fuzz: mmap failed");
        Mem {
            scratch: scratch as u64,
            ro: ro as u64,
            words: words as u64,
        }
    }

    /// Whether `addr` is a word of the watch-word page.
    pub fn is_word(&self, addr: u64) -> bool {
        addr % 4 == 0 && (self.words..self.words + WORDS as u64).contains(&addr)
    }

    /// An address for the kernel to write `len` bytes to (or to fail to).
    /// `own` is the calling thread's own pages (OWN bytes, then a guard).
    pub fn write_ptr(&self, rng: &mut Rng, own: u64, len: u64) -> u64 {
        let len = len.min(SCRATCH as u64);
        match rng.weighted(&[40, 25, 8, 5, 4, 4, 3, 3, 3, 5]) {
            0 => self.scratch + (rng.below(SCRATCH as u64 - len) & !7),
            1 => own + (rng.below(OWN as u64 - len.min(OWN as u64)) & !7),
            // Runs into the guard.
            2 => self.scratch + SCRATCH as u64 - rng.range(1, len.max(1)),
            3 => own + OWN as u64 - rng.range(1, len.clamp(1, OWN as u64)),
            4 => self.scratch + SCRATCH as u64 + rng.below(GUARD as u64),
            5 => self.ro + rng.below(4096),
            6 => rng.below(0x10000),
            7 => 0xffff_8880_0000_0000 + rng.below(1 << 40),
            8 => 0x0000_8000_0000_0000 + rng.below(1 << 46),
            _ => self.scratch + rng.below(SCRATCH as u64 - len), // misaligned
        }
    }

    /// An address for the kernel to read from, holding what the caller
    /// put in the first `len` bytes of the own pages (at offset 0) most of
    /// the time.  Returns the address; the caller copies the data there
    /// first when it is in the own pages (see `own_ptr`).
    pub fn read_ptr(&self, rng: &mut Rng, own: u64) -> u64 {
        match rng.weighted(&[90, 2, 2, 2, 2, 2]) {
            0 => own,
            1 => self.scratch + SCRATCH as u64 + rng.below(GUARD as u64),
            2 => self.ro + rng.below(4096),
            3 => rng.below(0x10000),
            4 => 0xffff_ffff_8100_0000 + rng.below(1 << 24),
            _ => 0x8000_0000_0000_0000 | rng.next_u64(),
        }
    }
}

/// A thread's own pages: OWN bytes of read-write memory followed by a
/// PROT_NONE page; never unmapped, and used only as the kernel's target.
pub fn own_pages() -> u64 {
    let p = map(OWN + 4096, libc::PROT_NONE);
    // SAFETY: the first OWN bytes of our own fresh mapping.
    let r = unsafe { libc::mprotect(p as *mut _, OWN, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(r, 0, "aem-fuzz: mprotect failed");
    p as u64
}
