//! A global allocator that handlers may use.
//!
//! The C library's `malloc` is not async-signal-safe: a handler that
//! allocates while it interrupted `malloc` on its own thread finds the
//! arena locked or half-changed.  [`HandlerSafeAlloc`] runs every call of
//! the allocator it wraps in a critical section, so a handler never
//! interrupts one, and handlers may allocate freely.  It costs two stores
//! and a load per call.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: aem::HandlerSafeAlloc = aem::HandlerSafeAlloc::system();
//! ```

use core::alloc::{GlobalAlloc, Layout};
use std::alloc::System;

use crate::critical::critical;

/// Set by the first allocation through a [`HandlerSafeAlloc`], in debug
/// builds: registering an inline handler checks it (see
/// [`handler_safe_alloc_in_use`]).
static IN_USE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether a [`HandlerSafeAlloc`] has allocated (debug builds; `true` in
/// release builds, which do not track it).
pub(crate) fn handler_safe_alloc_in_use() -> bool {
    !cfg!(debug_assertions) || IN_USE.load(core::sync::atomic::Ordering::Relaxed)
}

/// A [`GlobalAlloc`] that defers the thread's events while the wrapped
/// allocator runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct HandlerSafeAlloc<A = System> {
    inner: A,
}

impl HandlerSafeAlloc<System> {
    /// The system allocator, made handler-safe.
    pub const fn system() -> HandlerSafeAlloc<System> {
        HandlerSafeAlloc { inner: System }
    }
}

impl<A> HandlerSafeAlloc<A> {
    /// `inner`, made handler-safe.
    pub const fn new(inner: A) -> HandlerSafeAlloc<A> {
        HandlerSafeAlloc { inner }
    }
}

// SAFETY: every method forwards to the inner allocator with the same
// arguments, which carries its contract; the critical section around it
// only defers event handlers, and allocates nothing.
unsafe impl<A: GlobalAlloc> GlobalAlloc for HandlerSafeAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if cfg!(debug_assertions) {
            IN_USE.store(true, core::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        critical(|| unsafe { self.inner.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        critical(|| unsafe { self.inner.dealloc(ptr, layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        critical(|| unsafe { self.inner.alloc_zeroed(layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        critical(|| unsafe { self.inner.realloc(ptr, layout, new_size) })
    }
}
