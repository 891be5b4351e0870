//! `aem-uapi-gen`: rewrite `aem-syscalls/src/uapi_generated.rs`.

fn main() {
    let path = aem_uapi_gen::bindings_path();
    std::fs::write(&path, aem_uapi_gen::generate()).expect("write the bindings");
    println!("wrote {}", path.display());
}
