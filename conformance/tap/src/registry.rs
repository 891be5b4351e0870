//! The table of the suite's tests, filled before `main` by the
//! registration that `#[test]` (`aem-conformance-tap-macros`) adds to
//! each test function, and the table of test files.

use std::alloc::GlobalAlloc;
use std::sync::atomic::{AtomicPtr, Ordering};

/// What `#[should_panic]` asks of a test.  (No test of the suite has the
/// attribute today.)
#[allow(dead_code)]
pub(crate) enum ShouldPanic {
    /// It must not panic.
    No,
    /// It must panic.
    Yes,
    /// It must panic with a message containing this.
    Expected(&'static str),
}

/// A test function, registered by its `#[test]`.
pub(crate) struct Test {
    /// Its module path (`aem_conformance_tap::shim`).
    module: &'static str,
    /// The function's name.
    pub(crate) name: &'static str,
    /// The function (or, for a test that returns a value, a wrapper that
    /// panics when the value reports failure).
    pub(crate) run: fn(),
    /// `#[ignore]`: `Some` reason, `""` when none was given.
    pub(crate) ignore: Option<&'static str>,
    /// `#[should_panic]`.
    pub(crate) should_panic: ShouldPanic,
    /// The test registered before it.
    next: AtomicPtr<Test>,
}

impl Test {
    /// A test, for its registration (see the macro).
    pub(crate) const fn new(
        module: &'static str,
        name: &'static str,
        run: fn(),
        ignore: Option<&'static str>,
        should_panic: ShouldPanic,
    ) -> Test {
        Test {
            module,
            name,
            run,
            ignore,
            should_panic,
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Its module path within the crate: `shim` for the tests of
    /// `tests/shim.rs`.
    fn path(&self) -> &'static str {
        match self.module.split_once("::") {
            Some((_crate, path)) => path,
            None => "",
        }
    }

    /// Its test file's stem (`shim`).
    pub(crate) fn file(&self) -> &'static str {
        self.path().split("::").next().unwrap_or("")
    }

    /// Its name in TAP output and filters: `shim::shim_2_...` (the
    /// file, then the name libtest gives it in the file's binary).
    pub(crate) fn full_name(&self) -> String {
        format!("{}::{}", self.path(), self.name)
    }
}

/// The last test registered.
static LAST: AtomicPtr<Test> = AtomicPtr::new(std::ptr::null_mut());

/// Register `test` (from a constructor, before `main`).
pub(crate) fn register(test: &'static Test) {
    let me = test as *const Test as *mut Test;
    let mut last = LAST.load(Ordering::Acquire);
    loop {
        test.next.store(last, Ordering::Relaxed);
        match LAST.compare_exchange_weak(last, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(now) => last = now,
        }
    }
}

/// Every registered test, in name order (libtest's).
pub(crate) fn tests() -> Vec<&'static Test> {
    let mut all = Vec::new();
    let mut p = LAST.load(Ordering::Acquire);
    while !p.is_null() {
        // SAFETY: the list holds only `&'static Test`s (`register`).
        let test: &'static Test = unsafe { &*p };
        all.push(test);
        p = test.next.load(Ordering::Acquire);
    }
    all.sort_by_cached_key(|t| t.full_name());
    all
}

/// The test `file::...::name`.
pub(crate) fn find(full_name: &str) -> Option<&'static Test> {
    tests().into_iter().find(|t| t.full_name() == full_name)
}

/// A test file.
pub(crate) struct File {
    /// Its stem (`api` for `tests/api.rs`).
    pub(crate) name: &'static str,
    /// Its `#[global_allocator]`, which its test processes use.
    pub(crate) allocator: Option<&'static (dyn GlobalAlloc + Sync)>,
}

/// The run of a test that returns a value (`-> Result<(), E>`): a panic
/// when the value reports failure, as libtest fails such a test.  The
/// registration of such a test calls it.
#[allow(dead_code)]
pub(crate) fn check_termination<T: std::process::Termination>(value: T) {
    if value.report() != std::process::ExitCode::SUCCESS {
        panic!("the test returned a value that reports failure");
    }
}

/// Tests registered by the `#[test]` of aem-conformance-tap-macros, as the
/// suite's are, to check what it reads.
#[cfg(test)]
mod fixtures {
    #[aem_conformance_tap_macros::test]
    /// A comment before and an attribute after.
    #[ignore = "not today"]
    #[allow(clippy::unused_unit)]
    fn fixture_ignored() {}

    #[aem_conformance_tap_macros::test]
    #[ignore]
    pub(crate) fn fixture_ignored_without_reason() {}

    #[aem_conformance_tap_macros::test]
    #[should_panic(expected = "boom \"1\"")]
    fn fixture_panics() {
        panic!("boom \"1\" and more");
    }

    #[aem_conformance_tap_macros::test]
    #[should_panic]
    fn fixture_returns_failure() -> Result<(), String> {
        Err("a failure".into())
    }

    #[aem_conformance_tap_macros::test]
    fn fixture_returns_success() -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::prelude::v1::test;

    fn fixture(name: &str) -> &'static Test {
        find(&format!("registry::fixtures::{name}")).unwrap()
    }

    #[test]
    fn the_macro_registers_a_test_with_its_attributes() {
        let t = fixture("fixture_ignored");
        assert_eq!(t.file(), "registry");
        assert_eq!(t.name, "fixture_ignored");
        assert_eq!(t.ignore, Some("not today"));
        assert!(matches!(t.should_panic, ShouldPanic::No));
        assert_eq!(fixture("fixture_ignored_without_reason").ignore, Some(""));

        let t = fixture("fixture_panics");
        assert!(matches!(
            t.should_panic,
            ShouldPanic::Expected("boom \"1\"")
        ));
        assert_eq!(t.ignore, None);
        assert!(std::panic::catch_unwind(t.run).is_err());
    }

    #[test]
    fn a_test_that_returns_a_value_fails_when_the_value_says_so() {
        let t = fixture("fixture_returns_failure");
        assert!(matches!(t.should_panic, ShouldPanic::Yes));
        assert!(std::panic::catch_unwind(t.run).is_err());
        (fixture("fixture_returns_success").run)();
    }

    #[test]
    fn every_test_function_of_every_file_is_registered_once() {
        // Against the sources, read the simple way: a `#[test]` line, then
        // the `fn` line after it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
        let all = tests();
        let mut files = 0;
        for file in crate::FILES {
            files += 1;
            let text = std::fs::read_to_string(dir.join(format!("{}.rs", file.name))).unwrap();
            let mut want: Vec<String> = Vec::new();
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.trim() == "#[test]" {
                    let f = lines.by_ref().find(|l| l.contains("fn ")).unwrap();
                    let name = f.split("fn ").nth(1).unwrap().split('(').next().unwrap();
                    want.push(format!("{}::{name}", file.name));
                }
            }
            want.sort();
            let got: Vec<String> = all
                .iter()
                .filter(|t| t.file() == file.name)
                .map(|t| t.full_name())
                .collect();
            assert_eq!(got, want, "{}", file.name);
        }
        let on_disk = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let p = e.as_ref().unwrap().path();
                p.extension().is_some_and(|x| x == "rs")
            })
            .count();
        assert_eq!(files, on_disk);
    }

    #[test]
    fn tests_come_in_name_order() {
        let names: Vec<String> = tests().iter().map(|t| t.full_name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(find("api::no_such_test").is_none());
    }
}
