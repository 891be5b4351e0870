//! Builds the EXEC-1 register-check assembly (linked into the tests), and
//! the API-1 C and C++ programs against the patched UAPI headers
//! (`build/uapi/include` from `make kernel`, or `AEM_UAPI_INCLUDE`).
//!
//! The static executables land in OUT_DIR and are embedded in the test
//! binary, which runs them in the guest.  Without the headers the programs
//! are left empty and the API-1 tests fail with a message saying so.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let include = std::env::var_os("AEM_UAPI_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../build/uapi/include"));
    let source = manifest.join("c/api1_query.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!(
        "cargo:rerun-if-changed={}",
        include.join("linux/aem.h").display()
    );
    println!("cargo:rerun-if-env-changed=AEM_UAPI_INCLUDE");
    // For aem-conformance-tap's build (`links` metadata): where the API-1
    // programs are.
    println!("cargo:out_dir={}", out.display());

    // EXEC-1's register check: assembly linked into the test binaries.
    let regs = manifest.join("c/exec1_regs.S");
    println!("cargo:rerun-if-changed={}", regs.display());
    cc::Build::new().file(&regs).compile("aem_exec1_regs");

    for (name, cpp) in [("api1_c", false), ("api1_cxx", true)] {
        let exe = out.join(name);
        std::fs::write(&exe, b"").unwrap();
        if !include.join("linux/aem.h").is_file() {
            println!(
                "cargo:warning=no patched UAPI headers at {}: API-1 programs not built (run `make kernel`)",
                include.display()
            );
            continue;
        }
        let compiler = cc::Build::new()
            .cpp(cpp)
            .cargo_metadata(false)
            .cargo_warnings(false)
            .get_compiler();
        let mut cmd = compiler.to_command();
        if cpp {
            cmd.args(["-x", "c++", "-std=c++17"]);
        } else {
            cmd.args(["-std=c11"]);
        }
        cmd.arg("-static")
            .args(["-O2", "-Wall", "-Wextra", "-Werror"])
            .arg(format!("-I{}", include.display()))
            .arg(&source)
            .arg("-o")
            .arg(&exe);
        let status = cmd.status().expect("run the C compiler");
        assert!(
            status.success(),
            "building {name} from {} failed",
            source.display()
        );
    }
}
