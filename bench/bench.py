#!/usr/bin/env python3
"""Side-by-side benchmark: skyhaul vs rclone (tuned) vs s5cmd (staged / server-side).

Two s3s-fs servers with different credentials on 127.0.0.1 play "two clouds" (A and B).
Data sets are generated once with random bytes, written directly into server A's (and for
`nosync` also server B's) storage directory, and cached under bench/data/.

For every data set, run and tool this measures wall time, client CPU (user+sys from wait4
rusage of the client process, summed over both steps of a staged s5cmd run), client peak RSS
(ru_maxrss as GNU time reports it), CPU time of both servers (/proc/PID/stat before/after) and of everything else on
the machine (/proc/stat), then checks the destination on disk: key set, total bytes and the
MD5 of a sample of objects.

Standard library only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FIXED_MTIME = 1_700_000_000  # identical mtime at both ends, so size+time sync has nothing to do

# Where the servers keep their buckets. On a disk file system the servers' cost per object is the
# file system's, not S3's: ext4 on this rig spent ~2 ms of server CPU per 16 KiB PUT once earlier
# runs' buckets had been deleted (perf: recently_deleted, find_inode_bit in inode allocation), three
# times a first run's, for every tool — so `small` measured the allocator. RAM keeps the servers cheap
# and equal, and the tools apart. Needs ~7 GiB (4 GiB of data, a run's copy, s5cmd's stage).
TMPFS_DATA_DIR = Path("/dev/shm/skyhaul-bench")
TMPFS_NEEDED = 10 << 30
TMPFS_NEEDED_WITH_DATA = 3 << 30  # once the data sets are there: a run's copy, s5cmd's stage


def fs_type(path: Path) -> str:
    """The file system type holding `path`, from /proc/mounts (longest matching mount point)."""
    best, kind = "", "?"
    target = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, fstype, *_ = line.split()
            mnt = mnt.replace("\\040", " ")
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) > len(best):
                best, kind = mnt, fstype
    except OSError:
        pass
    return kind


def default_data_dir() -> Path:
    try:
        st = os.statvfs(TMPFS_DATA_DIR.parent)
        needed = TMPFS_NEEDED_WITH_DATA if TMPFS_DATA_DIR.exists() else TMPFS_NEEDED
        if st.f_bavail * st.f_frsize >= needed:
            return TMPFS_DATA_DIR
    except OSError:
        pass
    return BENCH_DIR / "data"


# name -> (objects, object size, number of prefixes)
SETS_FULL = {
    "files": (1152, 1 * MIB, 9),
    "large": (1, 1 * GIB, 1),
    "small": (10_000, 16 * KIB, 4),
    "nosync": (100_000, 1 * KIB, 100),
}
SETS_QUICK = {
    "files": (64, 1 * MIB, 4),
    "large": (1, 64 * MIB, 1),
    "small": (500, 16 * KIB, 4),
    "nosync": (2_000, 1 * KIB, 10),
}
ALL_SETS = ["files", "large", "small", "nosync", "samesite"]
ALL_TOOLS = ["skyhaul", "rclone", "s5cmd"]

RCLONE_TUNING = [
    "--transfers", "32", "--checkers", "16", "--s3-chunk-size", "16M",
    "--s3-upload-concurrency", "8", "--multi-thread-streams", "8",
]

# Other people's builds share this 2-core machine: wait for them to finish before timing.
NOISY = {"rustc", "cargo", "cc", "cc1", "cc1plus", "ld", "ld.lld", "rust-lld", "clippy-driver", "rustdoc"}

CHILDREN: list[subprocess.Popen] = []
TIME_BIN = "/usr/bin/time"  # GNU time (Debian package `time`)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# machine and process accounting


# CPU features that change what the tools' hashing and copying cost (VMs of one kind differ).
CPU_FEATURES = ("avx2", "avx512f", "vpclmulqdq", "sha_ni")


def machine_info() -> dict:
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mem_kib = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "cpu_features": [f for f in CPU_FEATURES if f in flags],
        "ram_gib": round(mem_kib / MIB, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of one process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its live descendants."""
    total = proc_cpu_seconds(pid)
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    for k in kids:
        try:
            total += tree_cpu_seconds(int(k))
        except (OSError, IndexError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds spent non-idle by the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal
    idle = vals[3] + vals[4]
    return (total - idle) / CLK_TCK


def noisy_processes() -> list[str]:
    me = os.getpid()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            comm = open(f"/proc/{d}/comm").read().strip()
        except OSError:
            continue
        if comm in NOISY:
            found.append(f"{comm}({d})")
    return found


def wait_for_quiet(max_wait: float) -> float:
    """Waits (up to max_wait s) until no compiler runs on the machine; returns seconds waited."""
    start = time.monotonic()
    announced = False
    while time.monotonic() - start < max_wait:
        busy = noisy_processes()
        if not busy:
            return time.monotonic() - start
        if not announced:
            log(f"waiting for other builds to finish: {' '.join(busy[:6])}")
            announced = True
        time.sleep(5)
    log(f"still busy after {max_wait:.0f} s; measuring anyway (noise is recorded as other_cpu_s)")
    return time.monotonic() - start


# ----------------------------------------------------------------------------------------------
# data sets


def b64(s: str) -> str:
    return base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")


def internal_info_path(root: Path, bucket: str, key: str) -> Path:
    """Where s3s-fs 0.14 keeps an object's ETag (without it GET/HEAD re-hash the whole file)."""
    return root / f".bucket-{b64(bucket)}.object-{b64(key)}.internal.json"


def set_keys(name: str, count: int, nprefix: int) -> list[str]:
    width = len(str(count))
    keys = []
    for i in range(count):
        if name == "large":
            keys.append("blob-1.bin")
        elif name == "files":
            keys.append(f"train/n{i % nprefix:04d}/img_{i:0{width}d}.JPEG")
        elif name == "small":
            keys.append(f"shard-{i % nprefix}/obj-{i:0{width}d}.bin")
        else:
            keys.append(f"p{i % nprefix:03d}/k{i:0{width}d}")
    return keys


def generate_set(prof_dir: Path, name: str, spec: tuple, both_ends: bool) -> dict:
    """Writes the objects (and s3s-fs ETag files) into A (and B); returns the manifest."""
    count, size, nprefix = spec
    manifest_path = prof_dir / f"manifest-{name}.json"
    want = {"name": name, "count": count, "size": size, "prefixes": nprefix, "both_ends": both_ends, "version": 1}
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if all(m.get(k) == v for k, v in want.items()):
            return m
    roots = [prof_dir / "a"] + ([prof_dir / "b"] if both_ends else [])
    for root in roots:
        shutil.rmtree(root / name, ignore_errors=True)
        for e in os.scandir(root) if root.exists() else []:
            if e.name.startswith(f".bucket-{b64(name)}.object-"):
                os.unlink(e.path)
    log(f"generating data set {name}: {count} x {size} B of random bytes into {', '.join(map(str, roots))}")
    t0 = time.monotonic()
    objects = {}
    for key in set_keys(name, count, nprefix):
        md5 = hashlib.md5()
        paths = [root / name / key for root in roots]
        files = []
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            files.append(open(p, "wb"))
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 16 * MIB))
            md5.update(chunk)
            for f in files:
                f.write(chunk)
            left -= len(chunk)
        for f in files:
            f.close()
        digest = md5.hexdigest()
        for root, p in zip(roots, paths):
            os.utime(p, (FIXED_MTIME, FIXED_MTIME))
            internal_info_path(root, name, key).write_text(json.dumps({"e_tag": digest}))
        objects[key] = [size, digest]
    m = dict(want, total_bytes=count * size, objects=objects)
    manifest_path.write_text(json.dumps(m))
    log(f"generated {name} in {time.monotonic() - t0:.1f} s")
    return m


# ----------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, binary: str, root: Path, logdir: Path, host: str = "127.0.0.1"):
        self.name = name
        self.root = root
        self.port = free_port()
        self.access_key = f"bench-{name.lower()}-key"
        self.secret_key = f"bench-{name.lower()}-secret-{os.urandom(4).hex()}"
        self.endpoint = f"http://{host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG",)}
        self.log = open(logdir / f"s3s-fs-{name}.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "--host", host, "--port", str(self.port),
             "--access-key", self.access_key, "--secret-key", self.secret_key, str(root)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        CHILDREN.append(self.proc)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"s3s-fs {name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                socket.create_connection((host, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"s3s-fs {name} did not listen on {self.port}")
                time.sleep(0.1)
        log(f"server {name}: s3s-fs pid {self.proc.pid} on {self.endpoint}, root {root}")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stop_children() -> None:
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
    for p in CHILDREN:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def remove_bucket(root: Path, bucket: str) -> None:
    """Deletes a bucket on disk, with s3s-fs's per-object metadata files and stray temp files."""
    shutil.rmtree(root / bucket, ignore_errors=True)
    marker = f".bucket-{b64(bucket)}."
    for e in os.scandir(root):
        if e.name.startswith(marker):
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                pass


def clean_leftovers(root: Path) -> None:
    """Removes destination buckets (d-*) and temp/upload files an interrupted run left behind."""
    if not root.exists():
        return
    for e in os.scandir(root):
        if e.is_dir() and e.name.startswith("d-"):
            shutil.rmtree(e.path, ignore_errors=True)
        elif e.name.startswith(".tmp.") or e.name.startswith(".upload"):
            os.unlink(e.path)
        elif e.name.startswith(".bucket-"):
            enc = e.name[len(".bucket-"):].split(".", 1)[0]
            try:
                bucket = base64.urlsafe_b64decode(enc + "=" * (-len(enc) % 4)).decode()
            except Exception:
                continue
            if bucket.startswith("d-") or ".upload-" in e.name:
                os.unlink(e.path)


# ----------------------------------------------------------------------------------------------
# verification


def scan_bucket(root: Path, bucket: str) -> dict[str, os.stat_result]:
    base = root / bucket
    out = {}
    stack = [base]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    out[os.path.relpath(e.path, base).replace(os.sep, "/")] = e.stat(follow_symlinks=False)
    return out


def md5_file(p: Path) -> str:
    h = hashlib.md5()
    with open(p, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def verify(manifest: dict, root: Path, bucket: str, sample: int, seed: int) -> dict:
    found = scan_bucket(root, bucket)
    want = manifest["objects"]
    missing = [k for k in want if k not in found]
    extra = [k for k in found if k not in want]
    wrong_size = [k for k in want if k in found and found[k].st_size != want[k][0]]
    total = sum(st.st_size for st in found.values())
    keys = sorted(want)
    rng = random.Random(seed)
    picked = keys if len(keys) <= sample else rng.sample(keys, sample)
    bad_md5 = [k for k in picked if k in found and md5_file(root / bucket / k) != want[k][1]]
    ok = not missing and not extra and not wrong_size and not bad_md5 and total == manifest["total_bytes"]
    return {
        "ok": ok, "objects": len(found), "bytes": total, "missing": len(missing), "extra": len(extra),
        "wrong_size": len(wrong_size), "md5_checked": len(picked), "md5_bad": len(bad_md5),
        "examples": (missing[:3] + extra[:3] + wrong_size[:3] + bad_md5[:3]),
    }


# ----------------------------------------------------------------------------------------------
# tools


class Step:
    def __init__(self, argv: list[str], env: dict, label: str):
        self.argv, self.env, self.label = argv, env, label


def run_step(step: Step, logdir: Path, tag: str, timeout: float, stall: float, watch_servers) -> dict:
    out_path = logdir / f"{tag}.{step.label}.stdout"
    err_path = logdir / f"{tag}.{step.label}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        # GNU time forks the tool from its own small process and reports the tool's ru_maxrss.
        # The rusage of a child this (large) Python process spawns directly would not do:
        # Linux carries the pre-exec memory's high-water mark into ru_maxrss.
        rss_path = logdir / f"{tag}.{step.label}.maxrss"
        argv = [TIME_BIN, "-f", "%M", "-o", str(rss_path), *step.argv]
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=step.env, start_new_session=True)
        CHILDREN.append(proc)
        timed_out = threading.Event()

        def kill():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        stalled = threading.Event()
        finished = threading.Event()

        def watch():
            # Killed at the timeout, or earlier when nothing moves: the client and both
            # servers together use < 0.5 CPU-s in `stall` seconds (a hang, not a slow run).
            last_t, last_cpu = time.monotonic(), None
            while not finished.wait(2):
                now = time.monotonic()
                if now - t0 > timeout:
                    timed_out.set()
                    kill()
                    return
                try:
                    cpu = tree_cpu_seconds(proc.pid) + sum(p.cpu() for p in watch_servers)
                except (OSError, IndexError):
                    continue
                if last_cpu is None or cpu - last_cpu >= 0.5:
                    last_t, last_cpu = now, cpu
                elif now - last_t > stall:
                    stalled.set()
                    kill()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, ru = os.wait4(proc.pid, 0)  # rusage of exactly this child (and its reaped children)
        wall = time.monotonic() - t0
        finished.set()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
        CHILDREN.remove(proc)
    try:
        maxrss_kib = int(rss_path.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss_kib = ru.ru_maxrss
    return {
        "argv": step.argv, "exit": proc.returncode, "timed_out": timed_out.is_set(), "stalled": stalled.is_set(), "wall_s": wall,
        "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "maxrss_kib": maxrss_kib,
        "stdout": out_path.read_text(errors="replace")[-4000:],
        "stderr": err_path.read_text(errors="replace")[-4000:],
    }


class Tools:
    def __init__(self, args, work: Path, a: Server, b: Server):
        self.args = args
        self.work = work
        self.a, self.b = a, b
        self.home = work / "home"  # no user config of any tool is read
        self.home.mkdir(parents=True, exist_ok=True)
        self.base_env = {
            "PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }
        self.rclone_conf = work / "rclone.conf"
        self.rclone_conf.write_text("".join(
            f"[{n}]\ntype = s3\nprovider = Other\naccess_key_id = {s.access_key}\n"
            f"secret_access_key = {s.secret_key}\nendpoint = {s.endpoint}\nregion = us-east-1\n"
            f"force_path_style = true\nno_check_bucket = true\n\n"
            for n, s in (("a", a), ("b", b))
        ))
        self.stage = Path(args.stage_dir) / f"skyhaul-bench-stage-{os.getpid()}"

    # each returns a list of Steps run back to back and timed as one
    def skyhaul(self, kind: str, src: tuple, dst: tuple) -> list[Step]:
        (ssrv, sb), (dsrv, db) = src, dst
        env = dict(self.base_env,
                   SKYHAUL_SRC_ACCESS_KEY_ID=ssrv.access_key, SKYHAUL_SRC_SECRET_ACCESS_KEY=ssrv.secret_key,
                   SKYHAUL_DST_ACCESS_KEY_ID=dsrv.access_key, SKYHAUL_DST_SECRET_ACCESS_KEY=dsrv.secret_key)
        cmd = ["sync"] if kind == "sync" else ["cp", "-r"]
        return [Step([self.args.skyhaul, *cmd, f"s3://{sb}", f"s3://{db}",
                      "--src-endpoint", ssrv.endpoint, "--dst-endpoint", dsrv.endpoint, "--json",
                      *shlex.split(self.args.skyhaul_args)], env, "skyhaul")]

    def rclone(self, kind: str, src: tuple, dst: tuple) -> list[Step]:
        (ssrv, sb), (dsrv, db) = src, dst
        rs = "a" if ssrv is self.a else "b"
        rd = "a" if dsrv is self.a else "b"
        return [Step([self.args.rclone, "--config", str(self.rclone_conf), "sync" if kind == "sync" else "copy",
                      f"{rs}:{sb}", f"{rd}:{db}", *RCLONE_TUNING, "--stats-one-line", "--stats", "0", "-v"],
                     dict(self.base_env), "rclone")]

    def s5cmd(self, kind: str, src: tuple, dst: tuple) -> list[Step] | None:
        (ssrv, sb), (dsrv, db) = src, dst

        def env(s):
            return dict(self.base_env, AWS_ACCESS_KEY_ID=s.access_key, AWS_SECRET_ACCESS_KEY=s.secret_key)

        base = [self.args.s5cmd, "--log", "error"]
        if ssrv is dsrv:  # one endpoint: its own server-side copy (or sync)
            verb = "sync" if kind == "sync" else "cp"
            return [Step([*base, "--endpoint-url", ssrv.endpoint, verb, f"s3://{sb}/*", f"s3://{db}/"],
                         env(ssrv), "s5cmd")]
        if kind == "sync":
            return None  # one endpoint and one credential set per run: no cross-endpoint sync
        # the Nebius recipe: download to a RAM directory, then upload from it
        st = str(self.stage)
        return [
            Step([*base, "--endpoint-url", ssrv.endpoint, "cp", f"s3://{sb}/*", st + "/"], env(ssrv), "s5cmd-down"),
            Step([*base, "--endpoint-url", dsrv.endpoint, "cp", st + "/", f"s3://{db}/"], env(dsrv), "s5cmd-up"),
        ]


# ----------------------------------------------------------------------------------------------
# the benchmark


def median(xs):
    return statistics.median(xs) if xs else None


def run_cell(args, tools: Tools, servers, manifest, set_name, tool, run_idx, logdir) -> dict:
    a, b = servers
    if set_name == "samesite":
        src, dst_srv, kind = (a, "files"), a, "copy"
    elif set_name == "nosync":
        src, dst_srv, kind = (a, "nosync"), b, "sync"
    else:
        src, dst_srv, kind = (a, set_name), b, "copy"
    if set_name == "nosync":
        dst_bucket = "nosync"
    else:
        dst_bucket = f"d-{set_name}-{tool}-{run_idx}"
        remove_bucket(dst_srv.root, dst_bucket)
        (dst_srv.root / dst_bucket).mkdir()
    steps = getattr(tools, tool)(kind, src, (dst_srv, dst_bucket))
    if steps is None:
        return {"skipped": "s5cmd has one endpoint and one credential set per run: no cross-endpoint sync"}
    before_nosync = scan_bucket(dst_srv.root, dst_bucket) if set_name == "nosync" else None
    shutil.rmtree(tools.stage, ignore_errors=True)
    os.sync()  # the previous run's dirty pages must not be written back during this one
    waited = wait_for_quiet(args.max_quiet_wait)
    time.sleep(0.5)
    tag = f"{set_name}.{tool}.{run_idx}"
    srv_before = [s.cpu() for s in servers]
    busy_before = machine_busy_seconds()
    step_results = []
    for st in steps:
        r = run_step(st, logdir, tag, args.timeout, args.stall, servers)
        step_results.append(r)
        if r["exit"] != 0:
            break
    busy_after = machine_busy_seconds()
    srv_after = [s.cpu() for s in servers]
    wall = sum(r["wall_s"] for r in step_results)
    cpu = sum(r["user_s"] + r["sys_s"] for r in step_results)
    srv = [y - x for x, y in zip(srv_before, srv_after)]
    res = {
        "wall_s": wall, "cpu_s": cpu,
        "user_s": sum(r["user_s"] for r in step_results), "sys_s": sum(r["sys_s"] for r in step_results),
        "maxrss_mib": max(r["maxrss_kib"] for r in step_results) / KIB,
        "server_a_cpu_s": srv[0], "server_b_cpu_s": srv[1],
        "machine_busy_s": busy_after - busy_before,
        "exit": next((r["exit"] for r in step_results if r["exit"] != 0), 0),
        "quiet_wait_s": waited,
        "steps": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in step_results],
    }
    res["other_cpu_s"] = max(0.0, res["machine_busy_s"] - cpu - sum(srv))
    if len(step_results) > 1:
        res["step_wall_s"] = [r["wall_s"] for r in step_results]
    if tool == "skyhaul":
        try:
            res["report"] = json.loads(step_results[0]["stdout"].strip().splitlines()[-1])
        except (IndexError, ValueError):
            res["report"] = None
    if res["exit"] != 0:
        bad = next(r for r in step_results if r["exit"] != 0)
        res["error"] = {"argv": " ".join(bad["argv"]), "exit": bad["exit"], "timed_out": bad["timed_out"], "stalled": bad["stalled"],
                        "stderr": bad["stderr"][-2000:], "stdout": bad["stdout"][-1000:]}
    res["verify"] = verify(manifest, dst_srv.root, dst_bucket, args.sample, seed=run_idx)
    if before_nosync is not None:
        after = scan_bucket(dst_srv.root, dst_bucket)
        res["verify"]["rewritten"] = sum(
            1 for k, st in after.items()
            if k not in before_nosync or (st.st_ino, st.st_mtime_ns) != (before_nosync[k].st_ino, before_nosync[k].st_mtime_ns))
    res["ok"] = res["exit"] == 0 and res["verify"]["ok"]
    shutil.rmtree(tools.stage, ignore_errors=True)
    if set_name != "nosync" and not args.keep_dst:
        remove_bucket(dst_srv.root, dst_bucket)
    for e in os.scandir(dst_srv.root):  # parts of uploads a failed run left open
        if e.name.startswith(".upload") or e.name.startswith(".tmp."):
            os.unlink(e.path)
    return res


def summarize(cells: dict) -> dict:
    out = {}
    for set_name, per_tool in cells.items():
        out[set_name] = {}
        for tool, runs in per_tool.items():
            if isinstance(runs, dict):  # skipped
                out[set_name][tool] = runs
                continue
            good = [r for r in runs if r.get("ok")]
            s = {"runs": len(runs), "ok_runs": len(good)}
            for k in ("wall_s", "cpu_s", "user_s", "sys_s", "maxrss_mib", "server_a_cpu_s", "server_b_cpu_s",
                      "other_cpu_s", "machine_busy_s"):
                s[k] = median([r[k] for r in good])
            if good:
                s["client_cores"] = s["cpu_s"] / s["wall_s"]
                s["server_cores"] = (s["server_a_cpu_s"] + s["server_b_cpu_s"]) / s["wall_s"]
                s["machine_busy_frac"] = s["machine_busy_s"] / (s["wall_s"] * (os.cpu_count() or 1))
            out[set_name][tool] = s
        sk = out[set_name].get("skyhaul")
        if sk and sk.get("wall_s"):
            for tool, s in out[set_name].items():
                if tool != "skyhaul" and s.get("wall_s"):
                    s["ratio_wall"] = sk["wall_s"] / s["wall_s"]
                    s["ratio_cpu"] = sk["cpu_s"] / s["cpu_s"] if s["cpu_s"] else None
    return out


def targets(summary: dict) -> list[dict]:
    rows = []

    def get(st, tool, k):
        return summary.get(st, {}).get(tool, {}).get(k)

    def add(st, what, value, limit, ok):
        rows.append({"set": st, "target": what, "value": value, "limit": limit,
                     "met": None if value is None else bool(ok(value, limit))})

    le = lambda v, l: v <= l  # noqa: E731
    ge = lambda v, l: v >= l  # noqa: E731
    for st in ("files", "large", "small"):
        add(st, "wall ≤ 0.85× rclone", get(st, "rclone", "ratio_wall"), 0.85, le)
        add(st, "wall ≤ 0.7× s5cmd (staged)", get(st, "s5cmd", "ratio_wall"), 0.7, le)
    for st in ("files", "large", "small", "nosync", "samesite"):
        add(st, "client CPU ≤ 0.5× rclone", get(st, "rclone", "ratio_cpu"), 0.5, le)
        sk, rc = get(st, "skyhaul", "maxrss_mib"), get(st, "rclone", "maxrss_mib")
        add(st, "peak RSS ≤ rclone (ratio)", sk / rc if sk and rc else None, 1.0, le)
    r = get("nosync", "rclone", "ratio_wall")
    add("nosync", "≥ 3× faster than rclone sync (rclone/skyhaul)", 1 / r if r else None, 3.0, ge)
    add("samesite", "wall ≤ 1.1× s5cmd server-side copy", get("samesite", "s5cmd", "ratio_wall"), 1.1, le)
    return rows


def fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_md(doc: dict) -> str:
    m = doc["machine"]
    L = [
        f"# skyhaul benchmark — {doc['date']}",
        "",
        f"Started {doc['date']}, finished {doc.get('finished', '?')} ({doc.get('elapsed_s', 0) / 60:.0f} min).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}; {', '.join(m.get('cpu_features', [])) or 'no'} of {', '.join(CPU_FEATURES)}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}. "
        f"Profile: **{doc['profile']}**, {doc['runs']} run(s) per cell, medians over successful runs.",
        f"Versions: {doc['versions']['skyhaul']}; {doc['versions']['rclone']}; s5cmd {doc['versions']['s5cmd']}; "
        f"{doc['versions']['s3s_fs']} (two servers, A and B, different credentials, 127.0.0.1).",
        *([f"The servers' buckets live in `{doc['data_dir']}` ({doc.get('data_fs', '?')})."]
          if doc.get("data_dir") else []),
        *([f"skyhaul run with extra options: `{doc['skyhaul_args']}` (not its defaults)."]
          if doc.get("skyhaul_args") else []),
        "",
        "Ratios are skyhaul ÷ peer (below 1 = skyhaul better). CPU = client user+sys; "
        "srv A/B = CPU seconds of the s3s-fs servers during the run; other = CPU used by anything else "
        "on the machine during the run (noise); busy = whole-machine CPU utilisation.",
        "",
    ]
    for st, per_tool in doc["summary"].items():
        info = doc["sets"].get(st, {})
        L.append(f"## {st} — {info.get('description', '')}")
        L.append("")
        L.append("| tool | wall s | CPU s (usr+sys) | peak RSS MiB | srv A CPU s | srv B CPU s | other CPU s | busy | "
                 "wall ratio | CPU ratio | ok |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for tool, s in per_tool.items():
            if "skipped" in s:
                L.append(f"| {tool} | skipped: {s['skipped']} |||||||||")
                continue
            L.append(
                f"| {tool} | {fmt(s['wall_s'])} | {fmt(s['cpu_s'])} ({fmt(s['user_s'])}+{fmt(s['sys_s'])}) | "
                f"{fmt(s['maxrss_mib'], 0)} | {fmt(s['server_a_cpu_s'])} | {fmt(s['server_b_cpu_s'])} | "
                f"{fmt(s['other_cpu_s'])} | {fmt(s.get('machine_busy_frac') and s['machine_busy_frac'] * 100, 0)}% | "
                f"{fmt(s.get('ratio_wall'))} | {fmt(s.get('ratio_cpu'))} | {s['ok_runs']}/{s['runs']} |")
        L.append("")
        for tool, runs in doc["cells"].get(st, {}).items():
            if isinstance(runs, dict):
                continue
            for i, r in enumerate(runs):
                if not r.get("ok"):
                    v = r.get("verify", {})
                    how = ""
                    if r.get("error", {}).get("stalled"):
                        how = f" (killed: hung — no CPU used by client or servers for {doc.get('stall_s')} s)"
                    elif r.get("error", {}).get("timed_out"):
                        how = " (killed at the timeout)"
                    L.append(f"- **{tool} run {i + 1} failed**{how}: exit {r.get('exit')}, verify {json.dumps(v)}")
                    if r.get("error"):
                        L.append(f"  - command: `{r['error']['argv']}`")
                        L.append("  - stderr: `" + r["error"]["stderr"].strip().replace("\n", " ⏎ ")[-800:] + "`")
            if st == "nosync":
                rw = [r["verify"].get("rewritten") for r in runs]
                if any(rw):
                    L.append(f"- {tool} rewrote objects in a sync with nothing to do: {rw}")
        L.append("")
    L.append("## Targets (issue 5)")
    L.append("")
    L.append("| data set | target | value | limit | met |")
    L.append("|---|---|---:|---:|---|")
    for t in doc["targets"]:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        L.append(f"| {t['set']} | {t['target']} | {fmt(t['value'])} | {t['limit']} | {met} |")
    L.append("")
    L.append("Raw per-run numbers (every command line, exit code, step times, server CPU): the `.json` file of the same name.")
    return "\n".join(L) + "\n"


def tool_versions(args) -> dict:
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"unknown ({e})"
    rev = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "skyhaul": f"{out([args.skyhaul, '--version'])} (git {rev}{'+dirty' if dirty else ''})",
        "rclone": out([args.rclone, "version"]),
        "s5cmd": out([args.s5cmd, "version"]),
        "s3s_fs": out([args.s3s_fs, "--version"]),
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> int:
    tools_bin = REPO / ".tools" / "bin"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per data set and tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 run, small data sets: a smoke test")
    ap.add_argument("--sets", default=",".join(ALL_SETS), help=f"comma-separated, of {','.join(ALL_SETS)}")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma-separated, of {','.join(ALL_TOOLS)}")
    ap.add_argument("--skyhaul", default=str(REPO / "target" / "release" / "skyhaul"))
    ap.add_argument("--skyhaul-args", default="", metavar="ARGS",
                    help="extra options for every skyhaul run, e.g. '--memory-budget 128M' "
                         "(an experiment: the published table uses the defaults)")
    ap.add_argument("--rclone", default=str(tools_bin / "rclone"))
    ap.add_argument("--s5cmd", default=str(tools_bin / "s5cmd"))
    ap.add_argument("--s3s-fs", dest="s3s_fs", default=str(tools_bin / "s3s-fs"))
    ap.add_argument("--data-dir", default=str(default_data_dir()),
                    help=f"where the data sets and the servers' buckets live (default {TMPFS_DATA_DIR} "
                         f"when /dev/shm has 10 GiB free, else bench/data: see TMPFS_DATA_DIR)")
    ap.add_argument("--stage-dir", default="/dev/shm", help="RAM directory for s5cmd's staged copy")
    ap.add_argument("--out", default=None, help="results file stem (default bench/results/latest, quick: quick)")
    ap.add_argument("--sample", type=int, default=32, help="objects whose MD5 is checked per run")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before one command is killed")
    ap.add_argument("--stall", type=float, default=60,
                    help="kill a command when it and both servers used < 0.5 CPU-s for this long (a hang)")
    ap.add_argument("--max-quiet-wait", type=float, default=90,
                    help="wait up to this long for other builds on the machine to finish before each run")
    ap.add_argument("--generate-only", action="store_true", help="generate (or check) the data sets, then exit")
    ap.add_argument("--keep-dst", action="store_true", help="keep destination buckets (debugging)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    sets = [s for s in args.sets.split(",") if s]
    tools = [t for t in args.tools.split(",") if t]
    for s in sets:
        if s not in ALL_SETS:
            ap.error(f"unknown data set {s}")
    for t in tools:
        if t not in ALL_TOOLS:
            ap.error(f"unknown tool {t}")
    # Generating the data sets runs none of the tools.
    needed = () if args.generate_only else (args.skyhaul, args.rclone, args.s5cmd, args.s3s_fs, TIME_BIN)
    for b in needed:
        if not os.access(b, os.X_OK):
            ap.error(f"not executable: {b} (run bench/run.sh, which installs and builds everything)")

    profile = "quick" if args.quick else "full"
    specs = SETS_QUICK if args.quick else SETS_FULL
    prof_dir = Path(args.data_dir) / profile
    (prof_dir / "a").mkdir(parents=True, exist_ok=True)
    (prof_dir / "b").mkdir(parents=True, exist_ok=True)
    work = Path(args.data_dir) / f"work-{profile}"
    logdir = work / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    stem = Path(args.out) if args.out else results_dir / ("quick" if args.quick else "latest")

    # a private copy of the binary: a rebuild by someone else must not swap it mid-run
    if not args.generate_only:
        sky_copy = work / "skyhaul"
        shutil.copy2(args.skyhaul, sky_copy)
        args.skyhaul = str(sky_copy)

    for root in (prof_dir / "a", prof_dir / "b"):
        clean_leftovers(root)
    manifests = {}
    descriptions = {}
    for st in sets:
        base = "files" if st == "samesite" else st
        if base not in manifests:
            manifests[base] = generate_set(prof_dir, base, specs[base], both_ends=(base == "nosync"))
        c, size, npfx = specs[base]
        human = f"{size // GIB} GiB" if size >= GIB else (f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB")
        descriptions[st] = {
            "files": f"{c:,} × {human} in {npfx} prefixes, A → B",
            "large": f"{c} × {human}, A → B",
            "small": f"{c:,} × {human} in {npfx} prefixes, A → B",
            "nosync": f"{c:,} × {human} in {npfx} prefixes, identical at A and B: sync A → B with nothing to do",
            "samesite": f"{c:,} × {human} (the files set) A → another bucket on A: server-side copy",
        }[st]
        manifests[st] = manifests[base]

    if args.generate_only:
        log(f"data sets ready under {prof_dir}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (stop_children(), sys.exit(143)))
    a = b = None
    try:
        a = Server("A", args.s3s_fs, prof_dir / "a", work)
        b = Server("B", args.s3s_fs, prof_dir / "b", work)
        tl = Tools(args, work, a, b)
        doc = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(), "profile": profile, "runs": args.runs,
            "data_dir": str(args.data_dir), "data_fs": fs_type(Path(args.data_dir)),
            "versions": tool_versions(args), "rclone_flags": RCLONE_TUNING, "skyhaul_args": args.skyhaul_args, "stall_s": args.stall,
            "sets": {st: {"description": descriptions[st], "objects": manifests[st]["count"],
                          "bytes": manifests[st]["total_bytes"]} for st in sets},
            "cells": {},
        }
        log(f"versions: {doc['versions']}")
        t_start = time.monotonic()
        for st in sets:
            doc["cells"][st] = {}
            for run_idx in range(args.runs):
                order = tools[run_idx % len(tools):] + tools[:run_idx % len(tools)]  # rotate the order per run
                for tool in order:
                    res = run_cell(args, tl, (a, b), manifests[st], st, tool, run_idx, logdir)
                    if "skipped" in res:
                        doc["cells"][st][tool] = res
                        continue
                    doc["cells"][st].setdefault(tool, []).append(res)
                    extra = ""
                    if res.get("report"):
                        rp = res["report"]
                        extra = f" copied={rp.get('objects_copied')} skipped={rp.get('objects_skipped')} retries={rp.get('retries')}"
                    log(f"{st:8} {tool:7} run {run_idx + 1}/{args.runs}: wall {res['wall_s']:7.2f} s  "
                        f"cpu {res['cpu_s']:6.2f} s  rss {res['maxrss_mib']:6.0f} MiB  "
                        f"srvA {res['server_a_cpu_s']:6.2f}  srvB {res['server_b_cpu_s']:6.2f}  "
                        f"other {res['other_cpu_s']:5.2f}  {'ok' if res['ok'] else 'FAILED'}{extra}")
                    if not res["ok"]:
                        log(f"   verify: {res['verify']}  error: {res.get('error')}")
                    doc["summary"] = summarize(doc["cells"])
                    doc["targets"] = targets(doc["summary"])
                    doc["elapsed_s"] = time.monotonic() - t_start
                    write_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=1))
            # keep the tool order stable in tables
            doc["cells"][st] = {t: doc["cells"][st][t] for t in tools if t in doc["cells"][st]}
        doc["summary"] = summarize(doc["cells"])
        doc["targets"] = targets(doc["summary"])
        doc["elapsed_s"] = time.monotonic() - t_start
        doc["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        write_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=1))
        md = render_md(doc)
        write_atomic(stem.with_suffix(".md"), md)
        print(md)
        log(f"done in {doc['elapsed_s'] / 60:.1f} min; wrote {stem}.md and {stem}.json")
        failed = sum(1 for per in doc["cells"].values() for runs in per.values() if isinstance(runs, list)
                     for r in runs if not r["ok"])
        return 1 if failed else 0
    finally:
        for s in (a, b):
            if s:
                s.stop()
        stop_children()


if __name__ == "__main__":
    sys.exit(main())
