//! `feather-svcd`: a VM's service manager (crates/feather-svc, `manager::serve`), and the
//! client the host runs in the VM to reach it (`manager::client`).
//!
//! The first `feather service start VM UNIT` has the VM's init run `feather-svcd --vm VM
//! --client ASK`, a client that asks the manager one typed question and writes the typed
//! answer as JSON lines for the host. Where no manager runs yet, the client starts one inside
//! the VM, detached, as `feather-svcd --vm VM`; it then stays there supervising the VM's
//! services. It is a binary of its own, not `feather` re-executed, because it stays resident in
//! every VM that runs services: it carries only the service manager (no command line parser,
//! CRIU driver or VM lifecycle), which keeps its resident memory small (bench/services.rs
//! measures it).

use std::process::ExitCode;

use feather_svc::manager::client_protocol::CLIENT_FLAG;

const USAGE: &str = "feather-svcd is the service manager inside a feather VM; \
    `feather service start VM UNIT` starts it there (usage: feather-svcd --vm VM [--client ASK])";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Only the forms the host and the client launch are accepted: run by hand on the host, the
    // manager would take over the host's /run/feather-svc.
    let code = match args.as_slice() {
        [flag, vm] if flag == "--vm" && !vm.is_empty() => feather_svc::manager::serve(),
        [flag, vm, client, ask] if flag == "--vm" && !vm.is_empty() && client == CLIENT_FLAG => {
            feather_svc::manager::client::main(vm, ask)
        }
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
