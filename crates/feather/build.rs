//! Link options for feather's binaries.

fn main() {
    // RELR: the dynamic relocations of a position-independent binary (nearly all of them
    // relative) packed into a bitmap, a few kilobytes instead of ~24 bytes each. The dynamic
    // loader reads them at every start, so they stay resident in every keeper, init and
    // service manager; packed, each VM maps about 100 KiB less. Needs glibc ≥ 2.36 and
    // binutils ≥ 2.38 (Debian 12 has both); ASLR is kept for `feather-keeper`, `feather-svcd`,
    // `feather-full` and `feather-probe` (they stay PIE).
    println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // The front, `feather`, is linked at a fixed address instead (a position-dependent
    // executable): started for every `exec` and `run`, a PIE front spent about 0.3 ms of each
    // relocating itself — the loader writing ~40,000 addresses into its RELRO segment, 80-odd
    // pages copied on write — where a fixed-address one maps those pages clean from the page
    // cache, already resolved at link time. The price is that the front's own image is not
    // randomised (its heap and stack still are; the release build links libc into that image,
    // scripts/build-release); what it reads that a VM wrote, and why that is accepted for now,
    // is in docs/security.md, "The front at a fixed address".
    println!("cargo::rustc-link-arg-bin=feather=-no-pie");
}
