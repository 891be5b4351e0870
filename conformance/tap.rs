//! `aem-conformance-tap`: the AEM conformance suite -- every test of
//! `conformance/tests/*.rs` -- in one static binary that reports in TAP,
//! to run on an installed AEM kernel, outside QEMU
//! (`docs/conformance-tap.md`).  The crate is `conformance/tap/`; this,
//! its root, sits beside `tests/`.
//!
//! The test files are compiled as they are written, each a module named
//! after it, with the path `cargo test` gives it (`conformance/tests/
//! shim.rs`, as panic messages and `file!()` show it); `cargo test` keeps
//! running them as before.  Without libtest, `#[test]` and
//! `#[global_allocator]` are this crate's own (`tap/macros/`, ahead of the
//! standard prelude's through `#[macro_use]`): each test function stays
//! and is registered before `main` (`registry`), and each file's
//! allocator becomes the one of that file's test processes (`alloc`).
//!
//! The runner (`runner`) starts this binary again for each test, in a
//! process of its own.

#[macro_use]
extern crate aem_conformance_tap_macros;

#[path = "tap/src/alloc.rs"]
mod alloc;
#[path = "tap/src/args.rs"]
mod args;
#[cfg(test)]
#[path = "tap/src/generate.rs"]
mod generate;
#[path = "tap/src/registry.rs"]
mod registry;
#[path = "tap/src/runner.rs"]
mod runner;
#[path = "tap/src/tap.rs"]
mod tap;

// `macro_rules! test_files`, from the build script: every file of tests/.
include!(concat!(env!("OUT_DIR"), "/test_files.rs"));

/// Declare each test file a module, and [`FILES`].
macro_rules! declare_test_files {
    ($($name:ident $path:literal $allocator:ident;)*) => {
        $(
            // Clippy checks the files as the tests they are (`cargo
            // clippy --all-targets`), where it lets test code off some of
            // its lints.
            #[path = $path]
            #[allow(missing_docs, clippy::all)]
            mod $name;
        )*

        /// Every test file, in name order, with its allocator.
        static FILES: &[registry::File] = &[
            $(registry::File {
                name: stringify!($name),
                allocator: declare_test_files!(@allocator $name $allocator),
            },)*
        ];
    };
    (@allocator $name:ident own) => { Some($name::AEM_TAP_ALLOCATOR) };
    (@allocator $name:ident none) => { None };
}

test_files!(declare_test_files);

// The standard one: this crate's `global_allocator` is the test files'.
#[::core::prelude::v1::global_allocator]
static ALLOC: alloc::PerFile = alloc::PerFile;

fn main() {
    std::process::exit(runner::main());
}
