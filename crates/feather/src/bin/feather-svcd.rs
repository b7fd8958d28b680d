//! `feather-svcd`: a VM's service manager (crates/feather-svc, `manager::serve`).
//!
//! The first `feather service start VM UNIT` starts it inside the VM, detached, as
//! `feather-svcd --vm VM`; it then stays there supervising the VM's services. It is a binary of
//! its own, not `feather` re-executed, because it stays resident in every VM that runs services:
//! it carries only the service manager (no command line parser, CRIU driver or VM lifecycle),
//! which keeps its resident memory small (bench/services.rs measures it).

use std::process::ExitCode;

const USAGE: &str = "feather-svcd is the service manager inside a feather VM; \
    `feather service start VM UNIT` starts it there (usage: feather-svcd --vm VM)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Only the form the client launches is accepted: run by hand on the host, it would take
    // over the host's /run/feather-svc.
    match args.as_slice() {
        [flag, vm] if flag == "--vm" && !vm.is_empty() => {}
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    ExitCode::from(u8::try_from(feather_svc::manager::serve()).unwrap_or(1))
}
