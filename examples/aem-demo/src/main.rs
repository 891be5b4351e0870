//! The AEM demo: asks the running kernel what AEM it implements.
//!
//! `make run` boots the guest and runs this program.  Later, the demo
//! grows to show events handled inline while the main flow computes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match aem::features() {
        Ok(f) => {
            println!("aem-demo: AEM ABI version {}", f.abi_version);
            println!("aem-demo: features {:?}", f.features);
            println!("aem-demo: event sources {:?}", f.sources);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aem-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
