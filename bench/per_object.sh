#!/usr/bin/env bash
# Client CPU per object: 10,000 objects of 16 KiB (the bench's `small` shape) copied bucket to
# bucket, each BINARY in turn, five rounds, to compare builds on the per-request path (issue 5:
# journal lookups and wake-ups, endpoint resolution). Medians at the end.
#
#   bench/per_object.sh BINARY...    # e.g. an older build and target/release/skyhaul
#
# Two s3s-fs servers keep their data in /dev/shm. The first BINARY uploads the objects to A;
# every copy then goes A → B into an empty bucket, as a first run with the default journal
# (a fresh HOME each time). Per run: wall, client user+sys and server B's CPU seconds.
#
# OBJECTS=N and ROUNDS=N change the defaults (10,000 and 5). INSTRUCTIONS=1 runs each copy
# under valgrind (cachegrind without its cache simulation) and adds the client's instruction
# count: on this noisy machine the CPU seconds of two builds a few percent apart overlap,
# their instruction counts do not. Valgrind runs the client 20-50 times slower, so use it
# with about 1,000 objects; its wall and CPU seconds then say nothing. Needs valgrind
# (`apt-get install valgrind`), which the test tools do not install.
set -euo pipefail
(( $# )) || { echo "usage: $0 BINARY..." >&2; exit 2; }
[[ -z "${INSTRUCTIONS:-}" ]] || command -v valgrind >/dev/null \
  || { echo "INSTRUCTIONS=1 needs valgrind: apt-get install valgrind" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scratch per-object
mkdir -p "$D/a/src" "$D/b" "$D/files"
start_s3s 19104 AKA SKAAAAAAAA "$D/a"
start_s3s 19105 AKB SKBBBBBBBB "$D/b"
B=${SERVERS[1]}
export SKYHAUL_SRC_ACCESS_KEY_ID=AKA SKYHAUL_SRC_SECRET_ACCESS_KEY=SKAAAAAAAA
OBJECTS=${OBJECTS:-10000}
python3 - "$D/files" "$OBJECTS" <<'EOF'
import os, sys
for i in range(int(sys.argv[2])):
    d = os.path.join(sys.argv[1], f"p{i % 4}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{i:05}.bin"), "wb") as f:
        f.write(os.urandom(16 << 10))
EOF
HOME="$D/home0" SKYHAUL_DST_ACCESS_KEY_ID=AKA SKYHAUL_DST_SECRET_ACCESS_KEY=SKAAAAAAAA \
  "$1" cp -r "$D/files" s3://src/ --dst-endpoint http://127.0.0.1:19104 --no-journal -y \
  >/dev/null
rm -rf "$D/files"
export SKYHAUL_DST_ACCESS_KEY_ID=AKB SKYHAUL_DST_SECRET_ACCESS_KEY=SKBBBBBBBB

# utime + stime of a process, in seconds.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }

# Under valgrind, the client's instruction count ("I refs"), in millions; else nothing.
counted=()
[[ -n "${INSTRUCTIONS:-}" ]] && counted=(valgrind --tool=cachegrind --cache-sim=no
  --cachegrind-out-file=/dev/null "--log-file=$D/valgrind")
instructions() {
  [[ -n "${INSTRUCTIONS:-}" ]] || return 0
  awk '/I *refs:/ { gsub(",", "", $NF); printf ", instructions %.1f M", $NF / 1e6 }' "$D/valgrind"
}

for round in $(seq "${ROUNDS:-5}"); do
  for bin in "$@"; do
    rm -rf "${D:?}/b/dst" "$D/home"
    mkdir "$D/b/dst" "$D/home"
    before=$(cpu $B)
    HOME="$D/home" /usr/bin/time -f "%e %U %S" -o "$D/time" "${counted[@]}" "$bin" cp -r \
      s3://src s3://dst --src-endpoint http://127.0.0.1:19104 \
      --dst-endpoint http://127.0.0.1:19105 -y >/dev/null 2>"$D/err" \
      || { cat "$D/err" >&2; exit 1; }
    read -r wall user sys <"$D/time"
    awk -v b="$bin" -v r="$round" -v w="$wall" -v u="$user" -v s="$sys" -v s0="$before" \
      -v s1="$(cpu $B)" -v i="$(instructions)" 'BEGIN { printf "%s round %s: wall %s s, client CPU %.2f s, server B CPU %.2f s%s\n",
      b, r, w, u + s, s1 - s0, i }'
  done
done | tee "$D/runs"
python3 - "$D/runs" "$@" <<'EOF'
import re, statistics, sys
runs = open(sys.argv[1]).read().splitlines()
print("medians:")
for b in sys.argv[2:]:
    rows = [list(map(float, re.findall(r"([0-9.]+) [sM]\b", r))) for r in runs if r.startswith(b + " round")]
    wall, cpu, srv, *count = (statistics.median(col) for col in zip(*rows))
    line = f"{b}: wall {wall:.2f} s, client CPU {cpu:.2f} s, server B CPU {srv:.2f} s"
    print(line + "".join(f", instructions {c:.1f} M" for c in count))
EOF
