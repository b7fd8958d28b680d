//! Link options for feather's binaries.

fn main() {
    // RELR: the dynamic relocations of a position-independent binary (nearly all of them
    // relative) packed into a bitmap, a few kilobytes instead of ~24 bytes each. The dynamic
    // loader reads them at every start, so they stay resident in every keeper, init and
    // service manager; packed, each VM maps about 100 KiB less. Needs glibc ≥ 2.36 and
    // binutils ≥ 2.38 (Debian 12 has both); ASLR is kept (the binaries stay PIE).
    println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
