//! The checked-in bindings must be exactly what bindgen makes of the
//! patched kernel's UAPI headers.

#[test]
fn uapi_bindings_match_kernel_header() {
    let fresh = aem_uapi_gen::generate();
    let checked_in = std::fs::read_to_string(aem_uapi_gen::bindings_path()).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "aem-syscalls/src/uapi_generated.rs differs from bindgen's output for \
         the patched kernel header; run `make bindings` and commit the result"
    );
}
