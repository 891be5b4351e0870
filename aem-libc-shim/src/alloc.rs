//! The handler-safe global allocator, over the C library's heap or one of
//! its own: see [`HandlerSafeAlloc`].

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use std::alloc::System;
use std::sync::Once;

use crate::critical::{critical, enter, exit};

/// Set by the first allocation through a [`HandlerSafeAlloc`], in debug
/// builds: registering an inline handler checks it (see
/// [`handler_safe_alloc_in_use`]).
static IN_USE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether a [`HandlerSafeAlloc`] has allocated (debug builds; `true` in
/// release builds, which do not track it).
pub(crate) fn handler_safe_alloc_in_use() -> bool {
    !cfg!(debug_assertions) || IN_USE.load(core::sync::atomic::Ordering::Relaxed)
}

/// A global allocator that handlers may use: a [`GlobalAlloc`] that
/// defers the thread's events while the wrapped allocator runs.
///
/// The C library's `malloc` is not async-signal-safe: a handler that
/// allocates while it interrupted `malloc` on its own thread finds the
/// arena locked or half-changed.  [`HandlerSafeAlloc`] runs every call of
/// the allocator it wraps in a critical section, so a handler never
/// interrupts one, and handlers may allocate freely.  It costs two stores
/// and a load per call.
///
/// # Which heap
///
/// A critical section covers the calls that go through the global
/// allocator, that is, Rust's.  The C library calls its `malloc`
/// directly -- `opendir` (so `std::fs::read_dir`), `getaddrinfo`,
/// `setenv`, `strdup`, `fopen`, any C library linked in -- and those calls
/// run unprotected.  Wrapping the C library's own heap
/// ([`HandlerSafeAlloc::system`]) is therefore only safe in a program
/// whose main flow reaches the C library's allocator through Rust alone:
/// a handler that allocates while it interrupted `opendir`'s `malloc`
/// waits for ever on the arena lock its own thread holds.
///
/// [`HandlerSafeAlloc::separate`] gives Rust a heap of its own instead
/// (`dlmalloc`, on pages from `mmap`, under its own lock, ready for
/// `fork`): the C library keeps its heap to itself, so whatever it does in
/// the main flow, a handler's allocation never waits on it.  It is the
/// one to use in a program with inline handlers.  Its price: a second
/// heap; one lock for every thread, so threads that allocate at the same
/// moment wait on each other where the C library's per-thread arenas
/// would not (an allocation-heavy server with many threads may prefer
/// `::system()` and keep C calls out of its main flows); and memory that
/// C code allocated must not be freed by Rust (nor Rust's by C's `free`),
/// which sound code never does anyway.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: aem::HandlerSafeAlloc<aem::SeparateHeap> = aem::HandlerSafeAlloc::separate();
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct HandlerSafeAlloc<A = System> {
    inner: A,
}

impl HandlerSafeAlloc<System> {
    /// The C library's heap (`std`'s `System`), made handler-safe for the
    /// allocations Rust makes; not for those the C library makes itself
    /// (see [Which heap](HandlerSafeAlloc#which-heap)).
    pub const fn system() -> HandlerSafeAlloc<System> {
        HandlerSafeAlloc { inner: System }
    }
}

impl HandlerSafeAlloc<SeparateHeap> {
    /// A heap of Rust's own, apart from the C library's, made handler-safe:
    /// see [Which heap](HandlerSafeAlloc#which-heap).
    pub const fn separate() -> HandlerSafeAlloc<SeparateHeap> {
        HandlerSafeAlloc {
            inner: SeparateHeap(()),
        }
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

/// Rust's own heap, apart from the C library's `malloc`: `dlmalloc` on
/// pages from `mmap`, under a lock of its own.  Only
/// [`HandlerSafeAlloc::separate`] makes one, so that every call runs in a
/// critical section (see [Which heap](HandlerSafeAlloc#which-heap)).
#[derive(Debug, Clone, Copy)]
pub struct SeparateHeap(());

/// The heap and its lock.  A pthread mutex rather than a `std` one: the
/// `fork` handlers take and release it in separate callbacks.
struct Heap {
    lock: UnsafeCell<libc::pthread_mutex_t>,
    dlmalloc: UnsafeCell<dlmalloc::Dlmalloc>,
}

// SAFETY: `dlmalloc` is touched only with `lock` held; the mutex itself
// is made for sharing between threads.
unsafe impl Sync for Heap {}

static HEAP: Heap = Heap {
    lock: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER),
    dlmalloc: UnsafeCell::new(dlmalloc::Dlmalloc::new()),
};

/// `fork()` copies only the forking thread: the child must not inherit
/// the lock held by another thread.  The forking thread takes it, inside
/// a critical section (a handler of its own that allocates would wait on
/// it for ever), before `fork`, and both processes release it after.
static FORK_HANDLERS: Once = Once::new();

extern "C" fn before_fork() {
    enter();
    // SAFETY: the lock is a static, initialised mutex.
    unsafe { libc::pthread_mutex_lock(HEAP.lock.get()) };
}

extern "C" fn after_fork() {
    // SAFETY: `before_fork` took the lock on this thread (in the child,
    // the same thread's copy).
    unsafe { libc::pthread_mutex_unlock(HEAP.lock.get()) };
    exit();
}

impl SeparateHeap {
    /// Run `f` on the heap, locked.  The callers run inside a critical
    /// section ([`HandlerSafeAlloc`]), so no handler of this thread waits
    /// on the lock while the thread holds it.
    fn with<R>(&self, f: impl FnOnce(&mut dlmalloc::Dlmalloc) -> R) -> R {
        FORK_HANDLERS.call_once(|| {
            // SAFETY: plain function pointers, valid for the program's life.
            unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
        });
        // SAFETY: the lock is a static, initialised mutex; holding it gives
        // this thread the heap alone, until the unlock below.
        unsafe {
            libc::pthread_mutex_lock(HEAP.lock.get());
            let r = f(&mut *HEAP.dlmalloc.get());
            libc::pthread_mutex_unlock(HEAP.lock.get());
            r
        }
    }
}

// SAFETY: dlmalloc returns blocks of the requested size and alignment, or
// null, and frees what it allocated; the lock serialises every call.
unsafe impl GlobalAlloc for SeparateHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: a non-zero size, as GlobalAlloc's callers guarantee.
        self.with(|h| unsafe { h.malloc(layout.size(), layout.align()) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this heap with `layout`.
        self.with(|h| unsafe { h.free(ptr, layout.size(), layout.align()) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        self.with(|h| unsafe { h.calloc(layout.size(), layout.align()) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this heap with `layout`; `new_size` is
        // non-zero, as GlobalAlloc's callers guarantee.
        self.with(|h| unsafe { h.realloc(ptr, layout.size(), layout.align(), new_size) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separate_heap_allocates_aligns_grows_and_frees() {
        let heap = HandlerSafeAlloc::separate();
        for (size, align) in [(1, 1), (24, 8), (4096, 4096), (1 << 20, 64)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero sizes; each block is freed with its layout.
            unsafe {
                let p = heap.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                assert!(core::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                p.write_bytes(0xa5, size);
                let q = heap.realloc(p, layout, size * 3);
                assert!(!q.is_null());
                assert!(core::slice::from_raw_parts(q, size)
                    .iter()
                    .all(|&b| b == 0xa5));
                heap.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
            }
        }
        assert_eq!(crate::critical_depth(), 0);
    }
}
