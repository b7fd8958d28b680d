//! `feather-oci`: runc's command line, so that containerd, Docker and podman run feather
//! containers (docs/oci.md).

fn main() {
    std::process::exit(feather_oci::cli::main());
}
