//! Which process a registration belongs to.
//!
//! A registration handle is plain memory: `fork()` copies it into the
//! child, whose AEM context is new and numbers its own events from 1 up.
//! There the copy's id may name one of the child's events, and dropping the
//! copy would unregister it.  So each handle records the process
//! generation it was made in -- a count of the `fork()`s this address
//! space went through, kept by a `pthread_atfork` child handler -- and a
//! handle of an older generation is inert: its calls fail with `ENOENT`,
//! as they would if the ids did not collide, and dropping it unregisters
//! nothing.  (A child made with a raw `clone(2)` that skips the atfork
//! handlers is not covered; `posix_spawn` children exec at once.)

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

static GENERATION: AtomicU32 = AtomicU32::new(0);

/// 0: the atfork handler is not installed, 1: being installed, 2: done.
static ATFORK: AtomicU8 = AtomicU8::new(0);

extern "C" fn forked_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The process generation a registration was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner(u32);

impl Owner {
    /// The calling process's generation; installs the atfork handler on
    /// first use.
    pub(crate) fn current() -> Owner {
        if ATFORK.load(Ordering::Acquire) != 2
            && ATFORK
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // SAFETY: registers a handler that only increments an atomic.
            unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
            ATFORK.store(2, Ordering::Release);
        }
        Owner(GENERATION.load(Ordering::Relaxed))
    }

    /// The calling process's generation, as a number.
    pub(crate) fn generation() -> u32 {
        Owner::current().0
    }

    /// Whether the calling process is the one the handle was made in.
    pub(crate) fn is_current(self) -> bool {
        GENERATION.load(Ordering::Relaxed) == self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_child_is_another_generation() {
        let owner = Owner::current();
        assert!(owner.is_current());
        // SAFETY: the child only reads an atomic and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if owner.is_current() { 1 } else { 0 };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(owner.is_current(), "the parent stays the same generation");
    }
}
