#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real servers the integration tests
# start (s3s-fs, rclone serve s3, moto, Azurite, fake-gcs-server), checks formatting and lints,
# runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-test-tools.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
