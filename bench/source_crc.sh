#!/usr/bin/env bash
# Client CPU of a 1 GiB bucket-to-bucket copy whose source records a full-object CRC64-NVME
# (as AWS S3 does for new objects, and skyhaul for what it writes): the parts' CRCs then
# check the bytes read, instead of a second MD5 pass over the object (issue 5). The
# published bench seeds `large` without a CRC, so it measures the other case.
#
#   bench/source_crc.sh BINARY...    # e.g. an older build and target/release/skyhaul
#
# Two s3s-fs servers ("two clouds") keep their data in /dev/shm; the object is written to
# the first by the first BINARY, in one PUT (a plain-MD5 ETag plus the CRC). Each BINARY then
# copies it three times; GNU time prints wall, user, sys and peak RSS (KiB) per run.
set -euo pipefail
(( $# )) || { echo "usage: $0 BINARY..." >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scratch source-crc
mkdir -p "$D/a/src" "$D/b/dst"
start_s3s 19101 AKA SKAAAAAAAA "$D/a"
start_s3s 19102 AKB SKBBBBBBBB "$D/b"
export SKYHAUL_SRC_ACCESS_KEY_ID=AKA SKYHAUL_SRC_SECRET_ACCESS_KEY=SKAAAAAAAA
head -c $((1 << 30)) /dev/urandom >"$D/big.bin"
SKYHAUL_DST_ACCESS_KEY_ID=AKA SKYHAUL_DST_SECRET_ACCESS_KEY=SKAAAAAAAA \
  "$1" cp "$D/big.bin" s3://src/big.bin --dst-endpoint http://127.0.0.1:19101 \
  --multipart-threshold 2G --no-journal -y >/dev/null 2>&1
rm "$D/big.bin"
export SKYHAUL_DST_ACCESS_KEY_ID=AKB SKYHAUL_DST_SECRET_ACCESS_KEY=SKBBBBBBBB
for bin in "$@"; do
  for _ in 1 2 3; do
    rm -rf "$D/b/dst/"*
    /usr/bin/time -f "$bin wall %e s, user %U s, sys %S s, peak RSS %M KiB" "$bin" cp \
      s3://src/big.bin s3://dst/big.bin --src-endpoint http://127.0.0.1:19101 \
      --dst-endpoint http://127.0.0.1:19102 --no-journal -y >/dev/null 2>"$D/err" ||
      { cat "$D/err" >&2; exit 1; }
    tail -1 "$D/err"
  done
done
