#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for feather and builds it. Run as root; safe to run again.
#
#   sudo ./setup.sh
#
# Installs only Debian packages (the system ones feather and its tests use) and builds the
# workspace with cargo. Benchmarks install their peers themselves (bench/run).
set -euo pipefail
cd "$(dirname "$0")"

packages=(
    busybox-static   # a self-contained shell for VMs over scratch base trees in tests
    iproute2         # `ip`, used by tests to look for leftover links
    procps           # `ps` inside VMs in tests
    attr             # setfattr/getfattr: tests check that commit keeps extended attributes
)

export DEBIAN_FRONTEND=noninteractive
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --workspace --all-targets
cargo build --release -p feather
