//! The global allocator: the one of the test file whose test the process
//! runs.
//!
//! Three test files have a `#[global_allocator]` of their own
//! (`aem::HandlerSafeAlloc`, over the C library's heap or a heap apart),
//! and their tests depend on it; the others use the default, `System`.  A
//! binary has one global allocator, so this one forwards each call to the
//! file's, chosen once, at the first allocation, from the environment
//! variable [`FILE_VAR`] that the runner sets for each test process (and
//! that its children, such as a test's `exec` of `/proc/self/exe`,
//! inherit, so they get the file's allocator too, as they would in the
//! file's own test binary).  The runner itself has no such variable and
//! uses `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::FILES;

/// The environment variable naming the test file (`api`) whose allocator
/// the process uses.
pub(crate) const FILE_VAR: &str = "AEM_CONFORMANCE_TAP_FILE";

/// [`CHOICE`] before the first allocation.
const UNSET: usize = usize::MAX;
/// [`CHOICE`] for `System`.
const DEFAULT: usize = usize::MAX - 1;

/// The index in [`FILES`] of the file whose allocator is in use, or
/// [`DEFAULT`], or [`UNSET`].
static CHOICE: AtomicUsize = AtomicUsize::new(UNSET);

/// The allocator of the file [`FILE_VAR`] names.
pub(crate) struct PerFile;

impl PerFile {
    /// The allocator in use, chosen at the first call.
    fn allocator(&self) -> &'static dyn GlobalAlloc {
        let mut choice = CHOICE.load(Ordering::Acquire);
        if choice == UNSET {
            // Threads racing here (there are none before the first
            // allocation) would all make the same choice.
            choice = from_environment();
            CHOICE.store(choice, Ordering::Release);
        }
        match FILES.get(choice).and_then(|f| f.allocator) {
            Some(a) => a,
            None => &System,
        }
    }
}

/// The index of the file [`FILE_VAR`] names, or [`DEFAULT`]; allocates
/// nothing.
fn from_environment() -> usize {
    // SAFETY: a NUL-terminated name; getenv allocates nothing, and nothing
    // changes the environment this early (the first allocation).
    let value = unsafe { libc::getenv(c"AEM_CONFORMANCE_TAP_FILE".as_ptr()) };
    if value.is_null() {
        return DEFAULT;
    }
    // SAFETY: getenv returned a NUL-terminated string, which lives as long
    // as the environment entry.
    let name = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    FILES
        .iter()
        .position(|f| f.name.as_bytes() == name)
        .unwrap_or(DEFAULT)
}

// SAFETY: every call goes to one allocator, the same for the life of the
// process (the choice is made before the first allocation and never
// changes), so memory is always freed by the allocator that gave it.
unsafe impl GlobalAlloc for PerFile {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.allocator().alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (see the impl).
        unsafe { self.allocator().dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.allocator().alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (see the impl).
        unsafe { self.allocator().realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::prelude::v1::test;

    #[test]
    fn a_file_has_an_allocator_in_the_table_when_its_source_sets_one() {
        let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
        let mut own = 0;
        for file in FILES {
            let text = std::fs::read_to_string(tests.join(format!("{}.rs", file.name))).unwrap();
            let sets_one = text.lines().any(|l| l.trim() == "#[global_allocator]");
            assert_eq!(file.allocator.is_some(), sets_one, "{}", file.name);
            own += usize::from(sets_one);
        }
        // shim.rs, model.rs and shim_preemptive.rs at the time of writing.
        assert!(own >= 3, "{own} files with an allocator of their own");
    }

    #[test]
    fn the_environment_names_no_file_in_a_host_test() {
        assert!(std::env::var_os(FILE_VAR).is_none());
        assert_eq!(from_environment(), DEFAULT);
    }
}
