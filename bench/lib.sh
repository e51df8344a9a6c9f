# Shared by the A/B scripts (source_crc.sh, local_to_s3.sh, per_object.sh) and profile.sh:
# source it, then `scratch NAME` and `start_s3s PORT ACCESS_KEY SECRET DIR` for each server,
# `bench_data` for the data sets bench.py generated. Servers and the scratch directory (in
# RAM) go away when the script exits, after the script's own `on_exit` if it defines one.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install-test-tools.sh" >/dev/null 2>/tmp/skyhaul-install-tools.log \
  || { cat /tmp/skyhaul-install-tools.log >&2; exit 1; }
S3S="${SKYHAUL_TOOLS:-$ROOT/.tools}/bin/s3s-fs"
# No user's AWS config or credentials reach the tools under test.
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
SERVERS=()
D=""
# Cleanup first, and no failure in the trap: under `set -e` a server that already died would
# otherwise end it before the scratch directory (up to a GiB of RAM) is removed.
trap 'declare -F on_exit >/dev/null && on_exit; [[ -n "$D" ]] && rm -rf "$D"; (( ${#SERVERS[@]} )) && { kill "${SERVERS[@]}" 2>/dev/null || true; }' EXIT

# scratch NAME: a fresh directory on /dev/shm in $D.
scratch() { D="$(mktemp -d "/dev/shm/$1.XXXXXX")"; }

# bench_data: DATA, where bench.py keeps the full data sets (RAM when there was room, else
# bench/data), one directory per server (a, b).
bench_data() {
  for DATA in /dev/shm/skyhaul-bench/full "$ROOT/bench/data/full"; do
    [[ -d "$DATA/a/files" ]] && return
  done
  echo "no data sets: run bench/bench.py --generate-only first" >&2
  exit 2
}

# start_s3s PORT ACCESS_KEY SECRET DIR: an s3s-fs serving DIR; its pid is appended to SERVERS.
# Each server runs in its own session, as bench.py starts them: the kernel schedules every
# session as a group (autogroup), and with servers and client in one group every process of
# a `files` copy spent about half as much CPU again (client 3.1 instead of 2.1 CPU-s).
start_s3s() {
  setsid "$S3S" --host 127.0.0.1 --port "$1" --access-key "$2" --secret-key "$3" "$4" >/dev/null 2>&1 &
  SERVERS+=($!)
  sleep 1
}
