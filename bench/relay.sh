#!/usr/bin/env bash
# Relay-mode throughput over the emulated wide-area link (issue 9): two network namespaces
# joined by a userspace TUN wire with 40 ms RTT, 200 Mbit/s and 0.1% loss, the source S3
# server in one and the destination's (behind a `skyhaul gateway`) in the other.
# Copies incompressible data (zstd; sent raw, as it does not shrink), Python's standard
# library sources as files and as 16 MiB objects (zstd, zstd:3, lz4), and each set again
# inside region A without relay or link (what the stores and engine manage alone), printing one
# JSON line per copy: effective Mbit/s, the multiple of the link rate, the egress saved, and
# what the wire saw (link_busy: IP bytes carried ÷ what the link could carry in that time;
# packets lost at random and dropped by its full queue, both directions).
#
#   bench/relay.sh                                # 256 MiB random, 64 MiB text (release; root)
#   RELAY_BENCH_MIB=768 RELAY_BENCH_ONLY=random bench/relay.sh   # sets: random,text,blobs
#   RELAY_BENCH_CONNECTIONS=64 bench/relay.sh     # --relay-connections (default 32)
#   RELAY_BENCH_CONGESTION=cubic bench/relay.sh   # --relay-congestion (default: the system's)
#   PROFILE=dev bench/relay.sh                    # a debug build, to compare
#   RELAY_BENCH_TMPDIR=/var/tmp bench/relay.sh    # where both stores keep their data
#
# Both S3 servers keep their data on a RAM file system (/dev/shm) unless told otherwise: what
# is measured is the relay and the link, not this machine's disk (whose ext4 inode allocation
# showed up in profiles after large deletes). Needs RAM for about 5 × RELAY_BENCH_MIB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install-test-tools.sh" >/dev/null
PROFILE="${PROFILE:-release}"
flag=(--release); [[ "$PROFILE" == dev ]] && flag=()
cd "$ROOT"
export TMPDIR="${RELAY_BENCH_TMPDIR:-/dev/shm}"
exec cargo test "${flag[@]}" -p skyhaul --test relay -- --ignored --nocapture --exact relay_throughput
