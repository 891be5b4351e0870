//! The inline handler every fuzzer registration uses, its restorer, and
//! what a handler does: random AEM calls, forks (the child exits, execs or
//! returns), one-shot registrations, returns through aem_return() made by
//! the handler itself, on the kernel's frame or on an altered copy.
//!
//! A handler interrupts its thread anywhere, inside malloc too: it
//! allocates nothing, takes no lock and makes only raw system calls
//! ([`crate::sys::raw`]), and keeps its state in `const` thread-locals.

use core::arch::{asm, global_asm};
use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use aem_syscalls::uapi;

use crate::rng::{mix, Rng};
use crate::stats::Counter;
use crate::sys::{self, aem, ctl, raw, stats};

// The restorer: aem_return(the handler's return value).
global_asm!(
    ".pushsection .text.aem_fuzz_restorer,\"ax\",@progbits",
    ".globl aem_fuzz_restorer",
    ".type aem_fuzz_restorer,@function",
    "aem_fuzz_restorer:",
    "mov rdi, rax",
    "mov eax, {nr}",
    "syscall",
    "ud2",
    ".size aem_fuzz_restorer, .-aem_fuzz_restorer",
    ".popsection",
    nr = const uapi::__NR_aem_return,
);

unsafe extern "C" {
    fn aem_fuzz_restorer();
}

/// The address of the restorer (attr.restorer).
pub fn restorer() -> u64 {
    aem_fuzz_restorer as *const () as u64
}

/// The address of the handler (attr.handler).
pub fn handler() -> u64 {
    fuzz_handler as *const () as u64
}

/// Process-wide switches the handler reads (bits).
pub static FLAGS: AtomicU32 = AtomicU32::new(0);
/// [`FLAGS`]: do not create AEM context fds in handlers.
pub const F_NO_CTX_FD: u32 = 1 << 0;
/// [`FLAGS`]: this process is sacrificial: anything goes, crashes too.
pub const F_SACRIFICIAL: u32 = 1 << 1;
/// [`FLAGS`]: do not fork from handlers.
pub const F_NO_FORK: u32 = 1 << 2;
/// [`FLAGS`]: do not exec.
pub const F_NO_EXEC: u32 = 1 << 3;
/// [`FLAGS`]: handlers may exit their thread or the process.
pub const F_EXIT_IN_HANDLER: u32 = 1 << 4;

/// The highest registration id seen in this process (for random ids).
pub static MAX_ID: AtomicU32 = AtomicU32::new(0);
/// Set in a child forked by a handler that returned into the main flow:
/// the main flow exits at its next operation.
pub static FORKED_CHILD: AtomicBool = AtomicBool::new(false);
/// The run's seed, for the argument of exec children.
pub static EXEC_SEED: AtomicU64 = AtomicU64::new(0);
/// The process's page of watch words ([`crate::sys::Mem::words`]), which
/// handlers change and wake.
pub static WORDS: AtomicU64 = AtomicU64::new(0);

/// Handler runs in a row, without the main flow between them, after which
/// a handler unregisters its event: a level-triggered event on a file
/// that is always ready, or a fast timer, would otherwise keep the thread
/// in handlers for ever (as a signal storm does).
pub const STORM: u32 = 64;

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
    static RUNS: Cell<u32> = const { Cell::new(0) };
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    static MASK_DIRTY: Cell<bool> = const { Cell::new(false) };
    static OWN: Cell<u64> = const { Cell::new(0) };
    static RING: [Cell<u32>; 16] = const { [const { Cell::new(0) }; 16] };
    static RING_POS: Cell<u32> = const { Cell::new(0) };
    static NESTED: Cell<u64> = const { Cell::new(0) };
}

/// Set up the calling thread's handler state: its seed and own pages.
pub fn thread_init(seed: u64, own: u64) {
    RNG.set(mix(seed ^ 0x4a4e_444c));
    OWN.set(own);
}

/// The main flow made progress: handler runs in a row start again at 0.
/// Returns whether a handler changed the signal mask through a crafted
/// frame since the last call (the caller then restores it).
pub fn main_progress() -> bool {
    RUNS.set(0);
    MASK_DIRTY.replace(false)
}

/// Handlers that found another handler running on their thread (the
/// kernel promises it never nests them).
pub fn nested_count() -> u64 {
    NESTED.get()
}

fn flag(f: u32) -> bool {
    FLAGS.load(Relaxed) & f != 0
}

/// Offset of uc_sigmask in the kernel's struct ucontext (x86_64).
const UC_SIGMASK: usize = 296;
/// Size of the kernel's struct rt_sigframe (x86_64): pretcode, ucontext,
/// siginfo.
const FRAME: usize = 8 + 304 + 128;

/// The inline handler: `long handler(long id, const struct aem_record *,
/// ucontext_t *)`, entered by the kernel on a signal frame.
extern "C" fn fuzz_handler(id: i64, rec: *const uapi::aem_record, uc: *mut u8) -> i64 {
    if IN_HANDLER.replace(true) {
        NESTED.set(NESTED.get() + 1);
    }
    stats().add(Counter::HandlerRuns, 1);
    // SAFETY: the kernel passes the record it wrote into the frame.
    let rec = unsafe { core::ptr::read_volatile(rec) };
    count_record(&rec);
    let mut rng = Rng::new(RNG.get() ^ mix(id as u64) ^ rec.count);
    RNG.set(rng.next_u64());
    let runs = RUNS.get() + 1;
    RUNS.set(runs);
    if runs > STORM {
        stats().add(Counter::Storms, 1);
        IN_HANDLER.set(false);
        return i64::from(uapi::AEM_HANDLER_UNREGISTER);
    }
    for _ in 0..rng.below(4) {
        op(&mut rng, id, &rec);
    }
    if flag(F_EXIT_IN_HANDLER) && rng.chance(1, 2) {
        let nr = if rng.chance(1, 2) {
            libc::SYS_exit
        } else {
            libc::SYS_exit_group
        };
        // SAFETY: a sacrificial process: the thread (or process) ends
        // inside its handler, which is the test.
        unsafe { raw(nr, [0; 6]) };
    }
    let verdict = match rng.weighted(&[60, 12, 12, 16]) {
        0 => i64::from(uapi::AEM_HANDLER_REARM),
        1 => i64::from(uapi::AEM_HANDLER_DISARM),
        2 => i64::from(uapi::AEM_HANDLER_UNREGISTER),
        _ => rng.interesting_u64() as i64,
    };
    IN_HANDLER.set(false);
    match rng.weighted(&[90, 6, 3, if flag(F_SACRIFICIAL) { 3 } else { 0 }]) {
        0 => verdict,
        1 => {
            stats().add(Counter::DirectReturns, 1);
            // SAFETY: `uc` is the frame's ucontext: with the stack pointer
            // there, aem_return() finds the frame just as the restorer's
            // would have.
            unsafe { return_on(uc as u64, verdict) }
        }
        2 => crafted_return(&mut rng, uc, verdict, false),
        _ => crafted_return(&mut rng, uc, verdict, true),
    }
}

/// aem_return(verdict) with the stack pointer at `sp`, as the restorer
/// would call it: the kernel takes the frame at `sp - 8`.
///
/// # Safety
///
/// `sp - 8` must be a frame aem_return() may restore (or the process be
/// sacrificial): it resumes whatever context the frame holds.
unsafe fn return_on(sp: u64, verdict: i64) -> ! {
    // SAFETY: the caller vouches for the frame; the call does not return
    // here (a refused frame gets SIGSEGV, and ud2 catches the rest).
    unsafe {
        asm!(
            "mov rsp, {sp}",
            "syscall",
            "ud2",
            sp = in(reg) sp,
            in("rax") uapi::__NR_aem_return as u64,
            in("rdi") verdict,
            options(noreturn),
        )
    }
}

/// Return through a copy of the kernel's frame: with `wild`, any bytes
/// altered (a sacrificial process: it may well die); without, only the
/// signal mask to restore (the main flow puts the mask back).
fn crafted_return(rng: &mut Rng, uc: *mut u8, verdict: i64, wild: bool) -> ! {
    stats().add(Counter::CraftedReturns, 1);
    #[repr(C, align(64))]
    struct Copy([u8; 8 + 512]);
    let mut copy = Copy([0; 8 + 512]);
    // The copy starts 8 bytes into the buffer: a frame sits at 8 mod 16,
    // as get_sigframe() puts it, so that a handler the kernel chains onto
    // it is entered with the stack the ABI promises (a wild one may be
    // misaligned on purpose).
    let off = if wild && rng.chance(1, 4) {
        rng.below(8) as usize
    } else {
        8
    };
    let frame = &mut copy.0[off..];
    // SAFETY: the frame (pretcode, ucontext, siginfo) lies at uc - 8 on
    // the handler's stack, FRAME bytes long.
    unsafe { core::ptr::copy_nonoverlapping(uc.sub(8), frame.as_mut_ptr(), FRAME) };
    if wild {
        for _ in 0..rng.range(1, 8) {
            let at = rng.below(FRAME as u64) as usize;
            frame[at] = rng.next_u32() as u8;
        }
    } else {
        let mut mask = rng.next_u64();
        // Keep the watchdog (SIGALRM) and the wake-up (SIGUSR2) working.
        mask &= !(1u64 << (libc::SIGALRM - 1));
        mask &= !(1u64 << (libc::SIGUSR2 - 1));
        frame[8 + UC_SIGMASK..8 + UC_SIGMASK + 8].copy_from_slice(&mask.to_ne_bytes());
        MASK_DIRTY.set(true);
    }
    let sp = frame.as_ptr() as u64 + 8;
    // SAFETY: an exact copy of the frame, the mask aside (its registers
    // and FPU state pointer are the kernel's own), or a sacrificial
    // process; the copy lives below everything the handler still uses.
    unsafe { return_on(sp, verdict) }
}

/// One random thing a handler does.
fn op(rng: &mut Rng, id: i64, rec: &uapi::aem_record) {
    let no_fork = flag(F_NO_FORK);
    match rng.weighted(&[30, 15, 6, 12, if no_fork { 0 } else { 2 }, 10, 6, 5, 6]) {
        0 => {
            let max = u64::from(MAX_ID.load(Relaxed)) + 2;
            let target = if rng.chance(1, 3) {
                id as u64
            } else {
                rng.below(max)
            };
            let mut op = rng.range(1, 8);
            if op == u64::from(uapi::AEM_CTL_CONTEXT_FD) && flag(F_NO_CTX_FD) {
                op = u64::from(uapi::AEM_CTL_DISABLE);
            }
            let arg = match op as u32 {
                uapi::AEM_CTL_SET_PRIORITY => rng.below(110),
                uapi::AEM_CTL_CONTEXT_FD => 0,
                _ if rng.chance(1, 10) => rng.interesting_u64(),
                _ => 0,
            };
            let target = if op >= 5 && rng.chance(4, 5) {
                0
            } else {
                target
            };
            let r = ctl(target, op, arg);
            if op == u64::from(uapi::AEM_CTL_CONTEXT_FD) && r >= 0 {
                sys::close(r as i32);
            }
            if op == u64::from(uapi::AEM_CTL_BLOCK) && r == 0 {
                ctl(0, u64::from(uapi::AEM_CTL_UNBLOCK), 0);
            }
        }
        1 => {
            let mut recs = [0u64; 5 * 8];
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let max = rng.range(1, 8);
            let ptr = if rng.chance(1, 8) {
                rng.below(0x10000)
            } else {
                recs.as_mut_ptr() as u64
            };
            // SAFETY: `recs` holds 8 records; the other pointer is in the
            // never-mapped low pages; the timeout is zero, so the call
            // does not sleep.
            let n = unsafe { aem(sys::WAIT, [ptr, max, &ts as *const _ as u64, 0, 0, 0]) };
            if n > 0 {
                stats().add(Counter::Records, n as u64);
            }
        }
        2 => {
            let mut info = [0u64; 8];
            let size = rng.pick(&[24, 32, 64, 0, 23]);
            // SAFETY: `info` has 64 bytes, the largest size passed.
            unsafe { aem(sys::QUERY, [info.as_mut_ptr() as u64, size, 0, 0, 0, 0]) };
        }
        3 => register_oneshot(rng),
        4 => fork(rng),
        5 => {
            // Consume what made an fd event ready, so that it stops.
            if rec.source == uapi::aem_source_kind::AEM_SOURCE_FD {
                drain(rec.data[0] as i32);
            }
        }
        6 => {
            let own = OWN.get();
            if own != 0 {
                let area = own + 8 * rng.below(4);
                let flags = if rng.chance(1, 2) {
                    0
                } else {
                    u64::from(uapi::AEM_THREAD_AREA_UNREGISTER)
                };
                // SAFETY: the own pages are never unmapped and serve only
                // as the kernel's target.
                unsafe { aem(sys::THREAD_AREA, [area, 8, flags, 0, 0, 0]) };
            }
        }
        7 => {
            // Change a watch word and wake it, privately: the handler of
            // a memory watch may activate its own event (the storm
            // breaker ends that).  Not shared: in the child of a fork
            // event, a shared wake would reach the parent's watch again,
            // a fork per delivery.
            let words = WORDS.load(Relaxed);
            if words != 0 {
                let at = words + 4 * rng.below(8);
                // SAFETY: the page of words is never unmapped, nothing
                // relies on its contents; FUTEX_WAKE writes nothing.
                unsafe {
                    (*(at as *const AtomicU32)).fetch_add(1, Relaxed);
                    let op = libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG;
                    raw(libc::SYS_futex, [at, op as u64, 1, 0, 0, 0]);
                }
            }
        }
        _ => {
            // aem_return() where no frame is expected: a handler that is
            // not running (another id) still runs: the call must refuse
            // nothing but its own frame, so only call it from a sacrificial
            // process; elsewhere, query the feature set instead.
            if flag(F_SACRIFICIAL) && rng.chance(1, 4) {
                // SAFETY: sacrificial: the process may die of it.
                unsafe { aem(sys::RETURN, [rng.interesting_u64(), 0, 0, 0, 0, 0]) };
            } else {
                ctl(0, u64::from(uapi::AEM_CTL_DELIVER), 0);
            }
        }
    }
}

/// Count a delivery of the sources whose deliveries the summary counts.
pub fn count_record(rec: &uapi::aem_record) {
    match rec.source {
        uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH => stats().add(Counter::WatchRecords, 1),
        uapi::aem_source_kind::AEM_SOURCE_OVERLOAD => stats().add(Counter::OverloadRecords, 1),
        _ => {}
    }
}

/// Read what is there from `fd` without blocking (a poll of zero timeout
/// first: the fd may be in blocking mode).
pub fn drain(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a live pollfd.
    let r = unsafe { raw(libc::SYS_poll, [&mut pfd as *mut _ as u64, 1, 0, 0, 0, 0]) };
    if r == 1 && pfd.revents & libc::POLLIN != 0 {
        // SAFETY: F_GETFL takes no pointer.
        let fl = unsafe {
            raw(
                libc::SYS_fcntl,
                [fd as u64, libc::F_GETFL as u64, 0, 0, 0, 0],
            )
        };
        if fl >= 0 && fl & i64::from(libc::O_NONBLOCK) != 0 {
            let mut buf = [0u8; 512];
            // SAFETY: `buf` is a live buffer of that length.
            unsafe {
                raw(
                    libc::SYS_read,
                    [fd as u64, buf.as_mut_ptr() as u64, 512, 0, 0, 0],
                )
            };
        }
    }
}

/// Register a one-shot timer (inline or polled) from a handler; at most 16
/// such registrations per thread are kept: the oldest is unregistered.
fn register_oneshot(rng: &mut Rng) {
    let mut attr = [0u64; 11];
    let inline = rng.chance(1, 2);
    attr[0] = u64::from(uapi::aem_source_kind::AEM_SOURCE_TIMER)
        | (u64::from(uapi::AEM_EV_ONESHOT) << 32);
    attr[1] = rng.below(40);
    if inline {
        attr[2] = handler();
        attr[3] = restorer();
    }
    attr[4] = rng.next_u64();
    attr[5] = libc::CLOCK_MONOTONIC as u64;
    attr[6] = rng.range(1, 3_000_000);
    // SAFETY: `attr` is 88 bytes, the size passed.
    let r = unsafe { aem(sys::REGISTER, [attr.as_ptr() as u64, 88, 0, 0, 0, 0]) };
    if r > 0 {
        MAX_ID.fetch_max(r as u32, Relaxed);
        let pos = RING_POS.get();
        RING_POS.set(pos.wrapping_add(1));
        RING.with(|ring| {
            let old = ring[pos as usize % 16].replace(r as u32);
            if old != 0 {
                ctl(u64::from(old), u64::from(uapi::AEM_CTL_UNREGISTER), 0);
            }
        });
    }
}

/// Write `n` as decimal into `buf`, NUL-terminated; no allocation.
fn decimal(mut n: u64, buf: &mut [u8; 24]) {
    let mut tmp = [0u8; 24];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    buf[len] = 0;
}

/// execve("/proc/self/exe", ["aem-fuzz", "--exec-child", seed]) with raw
/// calls only; returns if the exec fails.
pub fn exec_child(seed: u64) {
    let mut digits = [0u8; 24];
    decimal(seed, &mut digits);
    let argv: [*const u8; 4] = [
        c"aem-fuzz".as_ptr().cast(),
        c"--exec-child".as_ptr().cast(),
        digits.as_ptr(),
        core::ptr::null(),
    ];
    let envp: [*const u8; 1] = [core::ptr::null()];
    // SAFETY: NUL-terminated strings and NULL-terminated arrays, alive
    // for the call.
    unsafe {
        raw(
            libc::SYS_execve,
            [
                c"/proc/self/exe".as_ptr() as u64,
                argv.as_ptr() as u64,
                envp.as_ptr() as u64,
                0,
                0,
                0,
            ],
        )
    };
}

/// Fork from inside the handler (a raw clone: glibc's fork takes locks the
/// interrupted main flow may hold).  The child exits at once, after a few
/// AEM calls, by exec, or returns from the handler into its copy of the
/// main flow, which then exits ([`FORKED_CHILD`]).
fn fork(rng: &mut Rng) {
    let what = rng.below(4);
    // SAFETY: clone without CLONE_VM: a copy of the process, whose child
    // makes only raw calls below (or returns, see FORKED_CHILD).
    let pid = unsafe { raw(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]) };
    if pid != 0 {
        if pid > 0 {
            stats().add(Counter::HandlerForks, 1);
        }
        return;
    }
    sys::alarm(5);
    match what {
        0 => sys::exit_group(0),
        1 => {
            for _ in 0..4 {
                op(rng, 0, &uapi::aem_record::default());
            }
            sys::exit_group(0)
        }
        2 if !flag(F_NO_EXEC) => {
            exec_child(rng.next_u64() ^ EXEC_SEED.load(Relaxed));
            sys::exit_group(0)
        }
        _ => FORKED_CHILD.store(true, Relaxed),
    }
}
