//! Critical sections: code that inline handlers must not interrupt.
//!
//! A handler interrupts its thread between any two instructions, like a
//! signal handler.  Code that shares state with handlers (a lock, the
//! allocator, a line being written) keeps them out with a critical
//! section: while one is open on a thread, the kernel defers delivery to
//! that thread, and the events that arrived run as soon as the outermost
//! section closes, each exactly once.
//!
//! Sections cost no system call.  Each thread registers, once, a word it
//! shares with the kernel (`aem_thread_area(2)`, in the manner of rseq):
//! opening a section is a plain store of the nesting depth, closing it is a
//! store and a load of the word in which the kernel says "an event waits";
//! only then does closing make one system call, to run what waits.
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
/// - `block` is the nesting depth, as the kernel expects -- except before
///   the thread's first section (`u32::MAX`) and in syscall mode (depth
///   minus one, wrapping): there the kernel does not read it, and opening
///   an outermost section wraps it to 0, which sends `enter` to its slow
///   path.
/// - `pending` is the kernel's, and in syscall mode this crate keeps it at
///   1, which sends every `exit` to its slow path.
#[repr(C, align(8))]
pub(crate) struct Area {
    /// Nesting depth of open sections; the kernel defers while non-zero.
    block: AtomicU32,
    /// Set by the kernel when it deferred an event.
    pending: AtomicU32,
    /// How this thread blocks, decided on its first section.
    mode: Cell<Mode>,
}

/// The part of [`Area`] the kernel knows.
const KERNEL_AREA_SIZE: usize = size_of::<uapi::aem_thread_area>();

const _: () = assert!(core::mem::offset_of!(Area, mode) == KERNEL_AREA_SIZE);

/// How a thread blocks delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Not decided yet.
    Unknown,
    /// Through the shared area: no system call.
    Area,
    /// With `AEM_CTL_BLOCK`: the kernel has AEM but not areas, or the
    /// thread's area is someone else's.
    Syscall,
    /// No AEM in the kernel: no handler can run, nothing to block.
    Nothing,
}

thread_local! {
    // A constant initialiser and no destructor: the area lives in the
    // thread's static TLS block, as long as the thread itself, and
    // reaching it is one fs-relative access.
    static AREA: Area = const {
        Area {
            block: AtomicU32::new(u32::MAX),
            pending: AtomicU32::new(0),
            mode: Cell::new(Mode::Unknown),
        }
    };
}

/// Decide how this thread blocks, registering its area if it can.  Called
/// with `block` at 0, as the first section opens.
#[cold]
fn first_use(area: &Area) {
    // Sections run inside code that must keep errno (an allocator called
    // from C): the registration's failure must not show through.
    // SAFETY: __errno_location() is this thread's errno, valid for the
    // thread's life.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    decide_mode(area);
    // SAFETY: as above.
    unsafe { *errno = saved };
}

fn decide_mode(area: &Area) {
    let ptr = area as *const Area as *mut uapi::aem_thread_area;
    // SAFETY: `area` is this thread's `AREA`, in static TLS: it lives as
    // long as the thread, and the kernel only touches it in this thread's
    // context.  Its first 8 bytes are used for nothing else.  An exec
    // unregisters it; a fork child has its copy at the same address, and
    // the kernel keeps the registration for the child.
    let registered = unsafe { aem_syscalls::aem_thread_area(ptr, KERNEL_AREA_SIZE as u32, 0) };
    let mode = match registered {
        // The kernel cleared `pending`.
        Ok(()) => Mode::Area,
        Err(aem_syscalls::Error::NotAvailable) if !crate::features::kernel_has_aem() => {
            Mode::Nothing
        }
        // EBUSY: an area is registered for this thread by other code.
        Err(_) => {
            area.pending.store(1, Ordering::Relaxed);
            Mode::Syscall
        }
    };
    area.mode.set(mode);
}

/// This thread's blocking mode (decided on first use).
#[cfg(test)]
fn mode() -> Mode {
    drop(critical_section());
    AREA.with(|area| area.mode.get())
}

/// Open a section: defer inline delivery to this thread.
#[inline]
pub(crate) fn enter() {
    AREA.with(|area| {
        let block = area.block.load(Ordering::Relaxed).wrapping_add(1);
        area.block.store(block, Ordering::Relaxed);
        // 0: the thread's first section, or an outermost one in syscall
        // mode.
        if block == 0 {
            slow_enter();
        }
    });
    // Nothing of the section may move above the store.
    compiler_fence(Ordering::SeqCst);
}

/// The slow start of a section (`block` wrapped to 0).
#[cold]
#[inline(never)]
fn slow_enter() {
    AREA.with(|area| {
        if area.mode.get() == Mode::Unknown {
            first_use(area);
            if area.mode.get() != Mode::Syscall {
                // Natural depth from now on.  (A handler that ran on the
                // way back from registering left `block` balanced.)
                let depth = area.block.load(Ordering::Relaxed) + 1;
                area.block.store(depth, Ordering::Relaxed);
                return;
            }
        }
        // Syscall mode: `block` 0 is depth 1.
        syscall_block(true);
    });
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
    let op = if block {
        uapi::AEM_CTL_BLOCK
    } else {
        uapi::AEM_CTL_UNBLOCK
    };
    // Balanced by construction; the only failure is EOVERFLOW after 2^32
    // nested blocks of other code.  A section that did not block could be
    // interrupted by a handler sharing its state: fail closed.
    // (Straight to fd 2: this crate's output opens a section itself.)
    if aem_syscalls::aem_ctl(0, op, 0).is_err() && block {
        const MSG: &[u8] =
            b"aem: AEM_CTL_BLOCK failed: a critical section cannot be opened; aborting\n";
        // SAFETY: writes a static buffer of its length.
        unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
        std::process::abort();
    }
}

/// The nesting depth of this thread's open critical sections.
#[inline]
pub fn critical_depth() -> u32 {
    AREA.with(|area| {
        let block = area.block.load(Ordering::Relaxed);
        match area.mode.get() {
            Mode::Unknown => 0,
            Mode::Syscall => block.wrapping_add(1),
            Mode::Area | Mode::Nothing => block,
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
        assert_ne!(mode(), Mode::Unknown);
    }

    #[test]
    fn a_panic_inside_a_section_closes_it() {
        let r = std::panic::catch_unwind(|| critical(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(critical_depth(), 0);
    }
}
