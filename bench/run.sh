#!/usr/bin/env bash
# One command for the side-by-side benchmark (issue 5): installs the peers and servers,
# builds skyhaul in release mode, then runs bench/bench.py with all arguments passed through.
#
#   bench/run.sh                      # full: 5 data sets x 3 tools x 3 runs -> bench/results/latest.{md,json}
#   bench/run.sh --quick              # smoke test: small data, 1 run -> bench/results/quick.{md,json}
#   bench/run.sh --sets files,large --runs 2
#   SKYHAUL_BIN=/path/to/skyhaul bench/run.sh   # skip the build, bench this binary
#   bench/run.sh --fleet [ARGS]       # fleet scaling instead (issue 8, as root): bench/fleet_scaling.py
#                                     # 1, 2, 4 hosts at 100 Mbit/s -> bench/results/fleet-scaling.{md,json}
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[bench/run.sh] %s\n' "$*" >&2; }

bash "$ROOT/scripts/install-test-tools.sh"

if [[ -z "${SKYHAUL_BIN:-}" ]]; then
    log "building skyhaul (release)..."
    (cd "$ROOT" && cargo build --release -p skyhaul)
    SKYHAUL_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/skyhaul"
fi
[[ -x "$SKYHAUL_BIN" ]] || { log "ERROR: skyhaul binary not found at $SKYHAUL_BIN"; exit 1; }

if [[ "${1:-}" == "--fleet" ]]; then
    shift
    exec python3 "$ROOT/bench/fleet_scaling.py" --skyhaul "$SKYHAUL_BIN" "$@"
fi
exec python3 "$ROOT/bench/bench.py" --skyhaul "$SKYHAUL_BIN" "$@"
