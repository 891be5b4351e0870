//! Writes the list of the conformance suite's test files
//! (`conformance/tests/*.rs`, see `src/generate.rs`) to
//! `OUT_DIR/test_files.rs`, and puts the API-1 programs that
//! `aem-conformance`'s build script compiled where `tests/api.rs` looks
//! for them (this crate's `OUT_DIR`).

use std::path::{Path, PathBuf};

#[path = "src/generate.rs"]
mod generate;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let tests = manifest.join("../tests");
    // A directory: cargo looks at every file in it.
    println!("cargo:rerun-if-changed={}", tests.display());
    println!("cargo:rerun-if-changed=src/generate.rs");

    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(&tests).unwrap_or_else(|e| panic!("read {}: {e}", tests.display()))
    {
        let path = entry.expect("read the tests directory").path();
        if path.extension().is_none_or(|x| x != "rs") || !path.is_file() {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        files.push(generate::test_file(&stem, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(!files.is_empty(), "no test files in {}", tests.display());
    write_if_changed(
        &out.join("test_files.rs"),
        &generate::test_files_macro(&files),
    );

    // tests/api.rs embeds include_bytes!(concat!(env!("OUT_DIR"), "/api1_c"))
    // and api1_cxx: copy them from aem-conformance's build (its `links`
    // metadata names the directory).
    let programs = PathBuf::from(
        std::env::var_os("DEP_AEM_EXEC1_REGS_OUT_DIR")
            .expect("aem-conformance's build script names its OUT_DIR"),
    );
    for name in ["api1_c", "api1_cxx"] {
        let from = programs.join(name);
        println!("cargo:rerun-if-changed={}", from.display());
        std::fs::copy(&from, out.join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// Write `text` to `path` unless it already holds it (so that an unchanged
/// list does not rebuild the binary).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
