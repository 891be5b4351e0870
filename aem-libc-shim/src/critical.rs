//! Critical sections: code that inline handlers must not interrupt.
//!
//! A handler interrupts its thread between any two instructions, like a
//! signal handler.  Code that shares state with handlers (a lock, the
//! allocator, a line being written) keeps them out with a critical
//! section: while one is open on a thread, the kernel defers delivery to
//! that thread, and the events that arrived run as soon as the outermost
//! section closes, each exactly once.
//!
//! Sections cost no system call.  A thread registers, once, a word it
//! shares with the kernel (`aem_thread_area(2)`, in the manner of rseq)
//! before its first inline handler: opening a section is a plain store of
//! the nesting depth, closing it is a store and a load of the word in
//! which the kernel says "an event waits"; only then does closing make one
//! system call, to run what waits.  On a thread with no inline handler of
//! this crate, nothing can interrupt a section: it only counts.
//!
//! ```no_run
//! let total = std::cell::Cell::new(0u64);
//! aem::critical(|| {
//!     // No handler of this thread runs here.
//!     total.set(total.get() + 1);
//! });
//! ```

use core::cell::Cell;
use core::marker::PhantomData;
use core::mem::size_of;
use core::sync::atomic::{compiler_fence, AtomicU32, Ordering};

use aem_syscalls::uapi;

/// The thread's area: `struct aem_thread_area`, then this crate's own
/// bookkeeping (the kernel is told the area is 8 bytes long).  Atomics
/// because the kernel writes `pending` between any two instructions of the
/// thread (on its way back from an interrupt); relaxed ones suffice, since
/// only this thread's own kernel entries read or write it.
///
/// The fast paths test one thing at each end, so the words are encoded:
///
/// - `block` is the nesting depth, as the kernel expects -- except in
///   syscall mode (depth minus one, wrapping): there the kernel does not
///   read it, and opening an outermost section wraps it to 0, which sends
///   `enter` to its slow path, a system call made in line.
/// - `pending` is the kernel's, and in syscall mode this crate keeps it at
///   1, which sends every `exit` to its slow path.
///
/// The fast path of `enter` calls no function: a call there would make
/// every caller that inlines it keep the area's thread-pointer offset in a
/// callee-saved register across it (initial-exec TLS, as code of another
/// crate reaches this crate's thread-locals), a save and a restore per
/// section.
#[repr(C, align(8))]
pub(crate) struct Area {
    /// Nesting depth of open sections; the kernel defers while non-zero.
    block: AtomicU32,
    /// Set by the kernel when it deferred an event.
    pending: AtomicU32,
    /// How this thread blocks, decided before its first inline handler.
    mode: Cell<Mode>,
}

/// The part of [`Area`] the kernel knows.
const KERNEL_AREA_SIZE: usize = size_of::<uapi::aem_thread_area>();

const _: () = assert!(core::mem::offset_of!(Area, mode) == KERNEL_AREA_SIZE);

/// How a thread blocks delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No inline handler of this crate registered on the thread yet
    /// (or a kernel without AEM): none can run, sections only count.
    Unknown,
    /// Through the shared area: no system call.
    Area,
    /// With `AEM_CTL_BLOCK`: the kernel has AEM but not areas, or the
    /// thread's area is someone else's.
    Syscall,
}

thread_local! {
    // A constant initialiser and no destructor: the area lives in the
    // thread's static TLS block, as long as the thread itself, and
    // reaching it is one fs-relative access.
    static AREA: Area = const {
        Area {
            block: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            mode: Cell::new(Mode::Unknown),
        }
    };
}

/// Make sure inline handlers of this crate cannot interrupt the calling
/// thread's sections: register its area, or fall back to blocking with
/// system calls.  Called before each inline or fork registration (a fork
/// event copies the thread where it is, so it must not be taken inside a
/// section either); it acts once per thread.  It may be called inside
/// sections: the depth carries over.
pub(crate) fn prepare_thread_for_inline() {
    AREA.with(|area| {
        if area.mode.get() == Mode::Unknown {
            keeping_errno(|| decide_mode(area));
        }
    });
}

/// Run `f`, restoring the thread's errno after it: the caller may be
/// C code's callback, and what `f` tried must not show through.
fn keeping_errno(f: impl FnOnce()) {
    // SAFETY: __errno_location() is this thread's errno, valid for the
    // thread's life.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    f();
    // SAFETY: as above.
    unsafe { *errno = saved };
}

fn decide_mode(area: &Area) {
    let ptr = area as *const Area as *mut uapi::aem_thread_area;
    // No inline handler of this crate runs on the thread yet (the mode is
    // still unknown), so nothing interrupts this decision.
    // SAFETY: `area` is this thread's `AREA`, in static TLS: it lives as
    // long as the thread, and the kernel only touches it in this thread's
    // context.  Its first 8 bytes are used for nothing else.  An exec
    // unregisters it; a fork child has its copy at the same address, and
    // the kernel keeps the registration for the child.
    let registered = unsafe { aem_syscalls::aem_thread_area(ptr, KERNEL_AREA_SIZE as u32, 0) };
    match registered {
        // The kernel cleared `pending`, and reads `block`, the depth of
        // the sections open now, from here on.
        Ok(()) => area.mode.set(Mode::Area),
        // No AEM: the registration to come fails as well.
        Err(aem_syscalls::Error::NotAvailable) if !crate::features::kernel_has_aem() => {}
        // EBUSY: an area is registered for this thread by other code (or
        // the kernel has none).  The sections open now block from here on,
        // with one AEM_CTL_BLOCK; `block` becomes the depth minus one.
        Err(_) => {
            let depth = area.block.load(Ordering::Relaxed);
            if depth != 0 {
                syscall_block(true);
            }
            area.block.store(depth.wrapping_sub(1), Ordering::Relaxed);
            area.pending.store(1, Ordering::Relaxed);
            area.mode.set(Mode::Syscall);
        }
    }
}

/// This thread's blocking mode.
#[cfg(test)]
fn mode() -> Mode {
    AREA.with(|area| area.mode.get())
}

/// Open a section: defer inline delivery to this thread.
#[inline]
pub(crate) fn enter() {
    AREA.with(|area| {
        let block = area.block.load(Ordering::Relaxed).wrapping_add(1);
        area.block.store(block, Ordering::Relaxed);
        // 0: an outermost section in syscall mode (or 2^32 nested ones
        // leaked: then the kernel blocks for good, failing closed).
        if block == 0 {
            block_in_line();
        }
    });
    // Nothing of the section may move above the store.
    compiler_fence(Ordering::SeqCst);
}

/// `aem_ctl(0, AEM_CTL_BLOCK, 0)`, made in line: a function call here
/// would cost every section a register save (see [`Area`]).
#[inline(always)]
fn block_in_line() {
    let ret: isize;
    // SAFETY: AEM_CTL_BLOCK reads and writes no memory of the caller's;
    // the `syscall` instruction returns in rax and clobbers rcx and r11,
    // and the kernel preserves every other register.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") aem_syscalls::nr::AEM_CTL as isize => ret,
            in("rdi") 0usize,
            in("rsi") uapi::AEM_CTL_BLOCK as usize,
            in("rdx") 0usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        block_failed();
    }
}

/// A section that did not block could be interrupted by a handler that
/// shares its state: fail closed.  The only failure is EOVERFLOW after
/// 2^32 nested blocks of other code.  (Straight to fd 2: this crate's
/// output opens a section itself.)
#[cold]
#[inline(never)]
fn block_failed() -> ! {
    const MSG: &[u8] =
        b"aem: AEM_CTL_BLOCK failed: a critical section cannot be opened; aborting\n";
    // SAFETY: writes a static buffer of its length.
    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
    std::process::abort();
}

/// Close a section; the outermost runs the events that waited.
#[inline]
pub(crate) fn exit() {
    // Nothing of the section may move below the store.
    compiler_fence(Ordering::SeqCst);
    AREA.with(|area| {
        let block = area.block.load(Ordering::Relaxed);
        area.block.store(block.wrapping_sub(1), Ordering::Relaxed);
        // The store must come before `pending` is read: an event deferred
        // after the load would otherwise wait for the next one.
        compiler_fence(Ordering::SeqCst);
        if area.pending.load(Ordering::Relaxed) != 0 {
            slow_exit();
        }
    });
}

/// The slow end of a section: an event waits, or the thread blocks with
/// system calls.  Only the outermost section acts.
#[cold]
#[inline(never)]
fn slow_exit() {
    AREA.with(|area| {
        let block = area.block.load(Ordering::Relaxed);
        if area.mode.get() == Mode::Syscall {
            if block == u32::MAX {
                syscall_block(false);
            }
            return;
        }
        if block == 0 {
            // Clears `pending` and runs what waits on the way back.  It
            // fails only if the area is gone, which the kernel reports
            // with SIGSEGV.
            let _ = aem_syscalls::aem_ctl(0, uapi::AEM_CTL_DELIVER, 0);
        }
    });
}

fn syscall_block(block: bool) {
    if block {
        block_in_line();
    } else {
        // Balanced by construction: it fails only without AEM, where
        // there is nothing to unblock.
        let _ = aem_syscalls::aem_ctl(0, uapi::AEM_CTL_UNBLOCK, 0);
    }
}

/// The nesting depth of this thread's open critical sections.
#[inline]
pub fn critical_depth() -> u32 {
    AREA.with(|area| {
        let block = area.block.load(Ordering::Relaxed);
        match area.mode.get() {
            Mode::Syscall => block.wrapping_add(1),
            Mode::Unknown | Mode::Area => block,
        }
    })
}

/// An open critical section: no inline handler runs on this thread until
/// it is dropped (see [`critical_section`]).
///
/// Not `Send`: the section belongs to the thread that opened it.
#[must_use = "the section ends when this guard is dropped"]
#[derive(Debug)]
pub struct CriticalSection {
    _not_send: PhantomData<*const ()>,
}

/// Open a critical section on the calling thread: inline delivery to the
/// thread is deferred until the returned guard is dropped.  Sections nest;
/// when the outermost one closes, the events that arrived meanwhile run at
/// once, each exactly once, in priority order.
///
/// Opening and closing cost two stores and a load of a word shared with
/// the kernel, and a system call only when an event waits.  Leaking the
/// guard blocks the thread's delivery for good: its events stay pending,
/// and `/proc/<pid>/aem` shows them.
///
/// The word is registered with the kernel as the thread registers its
/// first inline handler through this crate (or, if other code owns the
/// thread's area, sections block with `AEM_CTL_BLOCK` from then on; the
/// sections open at that moment included).  Until then no handler of this
/// crate can run on the thread and a section only counts; a handler
/// registered with the raw `aem_syscalls::aem_register` is not held back
/// on such a thread.
#[inline]
pub fn critical_section() -> CriticalSection {
    enter();
    CriticalSection {
        _not_send: PhantomData,
    }
}

impl Drop for CriticalSection {
    #[inline]
    fn drop(&mut self) {
        exit();
    }
}

/// Run `f` in a critical section (see [`critical_section`]).
#[inline]
pub fn critical<R>(f: impl FnOnce() -> R) -> R {
    let _section = critical_section();
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    // On a kernel without AEM (the build host) sections fall back to
    // nothing, and must still nest and count.
    #[test]
    fn sections_nest_and_count() {
        assert_eq!(critical_depth(), 0);
        {
            let _a = critical_section();
            assert_eq!(critical_depth(), 1);
            critical(|| assert_eq!(critical_depth(), 2));
            assert_eq!(critical_depth(), 1);
        }
        assert_eq!(critical_depth(), 0);
        // Sections alone register nothing.
        assert_eq!(mode(), Mode::Unknown);
    }

    // Preparing for a handler inside a section keeps the depth, whatever
    // mode it settles on (none here, without AEM: the depth just counts).
    #[test]
    fn preparing_inside_a_section_keeps_its_depth() {
        let section = critical_section();
        prepare_thread_for_inline();
        assert_eq!(critical_depth(), 1);
        critical(|| assert_eq!(critical_depth(), 2));
        drop(section);
        assert_eq!(critical_depth(), 0);
    }

    #[test]
    fn a_panic_inside_a_section_closes_it() {
        let r = std::panic::catch_unwind(|| critical(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(critical_depth(), 0);
    }
}
