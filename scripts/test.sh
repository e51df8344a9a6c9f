#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real servers the integration tests
# start (s3s-fs, rclone serve s3, moto, Azurite, fake-gcs-server), checks formatting and lints,
# runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-test-tools.sh
cargo fmt --all -- --check
# Clippy lints the workspace inside the test build: clippy-driver compiles its crates, as
# `cargo clippy --all-targets -- -D warnings` would check them (the same variables), so the
# dependencies are compiled once instead of also being checked apart, which took 8.5 of a
# fresh CI run's 29 minutes. A lint fails the build. `--all-targets` adds the benches (run
# once each, as tests) and leaves out doctests, run after. Unlike `cargo clippy`, this lints a
# library outside `cfg(test)` only where something depends on it (another crate, its
# integration tests or benches), which every workspace crate has today. The variables stay
# set for the tests, none of which run cargo or rustc.
export RUSTC_WORKSPACE_WRAPPER=clippy-driver
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
