#!/usr/bin/env bash
# One command for the fleet scaling measurement (issue 8): installs s3s-fs, builds skyhaul in
# release mode, then runs bench/fleet_scaling.py (as root: it creates network namespaces and
# tc qdiscs) with all arguments passed through.
#
#   sudo bench/fleet.sh                          # 1, 2, 4 hosts at 100 Mbit/s -> bench/results/fleet-scaling.{md,json}
#   sudo bench/fleet.sh --runs 3 --objects 384   # more runs, more data
#   SKYHAUL_BIN=/path/to/skyhaul sudo -E bench/fleet.sh   # skip the build, measure this binary
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[bench/fleet.sh] %s\n' "$*" >&2; }

bash "$ROOT/scripts/install-test-tools.sh"

if [[ -z "${SKYHAUL_BIN:-}" ]]; then
    log "building skyhaul (release)..."
    (cd "$ROOT" && cargo build --release -p skyhaul)
    SKYHAUL_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/skyhaul"
fi
[[ -x "$SKYHAUL_BIN" ]] || { log "ERROR: skyhaul binary not found at $SKYHAUL_BIN"; exit 1; }

exec python3 "$ROOT/bench/fleet_scaling.py" --skyhaul "$SKYHAUL_BIN" "$@"
