#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# The whole test suite: formatting, lints, unit and integration tests, the VM lab
# (real LIO devices, Debian's C helper side by side, nested QEMU), the benchmark in
# smoke mode and the fuzz targets briefly. Run as root (the lab and the privilege
# tests need it). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace

step "library crate: rustdoc clean, ready to publish"
RUSTDOCFLAGS="-D warnings" cargo doc -p prhelper-proto --no-deps
cargo package -p prhelper-proto

# Everything shippable into target/pkg/: the .debs and the KubeVirt pr-helper image
# (release build, podman FROM scratch, offline), which the lab's kubevirt_pr_helper
# case runs.
step "packages: scripts/build-packages (.debs, OCI image)"
scripts/build-packages

step "lab (VM with LIO; real QEMU as client)"
# Two nested TCG boots (nested_qemu_prhelper, libvirt_qemu) are most of it.
lab/run --timeout 3000

step "packages: inspect, prove under systemd as PID 1 (lab VM)"
packaging/test/run

if [[ -d bench ]]; then
    step "benchmark, smoke mode"
    cargo run --release -p prhelper-bench -- --smoke
fi

if [[ -x fuzz/run ]]; then
    step "fuzz targets, briefly"
    fuzz/run --smoke
fi

step "all tests passed"
