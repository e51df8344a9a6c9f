#!/usr/bin/env python3
"""Fleet scaling (issue 8): one transfer carried out by workers on 1, 2 and 4 "hosts".

Each host is a network namespace joined to a bridge in the root namespace by a veth pair
whose two ends are rate-limited with tbf (--rate, both directions: the host's uplink). The
two s3s-fs servers (A: source, B: destination, different credentials) and the coordinator
live in the root namespace on the bridge's address, so every host reaches them; each host
runs one `skyhaul worker`. For N hosts the ideal is N x the 1-host throughput; the issue's
target is >= 0.85 x that.

Measured per run: wall time of the coordinator (start to exit: listing, the copy and its
verification), aggregate throughput, the bytes each host's link carried (its veth counters:
proof that the traffic went through that host), CPU of the servers and of the whole machine,
and the destination checked on disk (keys, sizes, MD5 of a sample).

Needs root (ip, tc). Reuses bench.py's data sets, servers and checks. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import BENCH_DIR, MIB, REPO, log  # noqa: E402

BRIDGE = "shfbr0"
NET = "10.231.0"
HEAD = f"{NET}.1"
TOKEN = "fleet-bench-token-" + os.urandom(8).hex()


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Hosts:
    """Namespaces `shf1..shfN` on bridge BRIDGE, each link limited to `rate` both ways."""

    def __init__(self, n: int, rate: str):
        self.names = [f"shf{i}" for i in range(1, n + 1)]
        self.rate = rate
        self.teardown()
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{HEAD}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i, ns in enumerate(self.names, start=1):
            outer = f"{ns}v"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", outer, "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{NET}.{10 + i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # Egress of each end: the host's upload (eth0) and download (outer).
            tbf = ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"]
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", *tbf)
            sh("tc", "qdisc", "add", "dev", outer, "root", *tbf)

    def counters(self) -> dict:
        """Bytes sent and received by each host's eth0 so far."""
        out = {}
        for ns in self.names:
            r = sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes",
                   "/sys/class/net/eth0/statistics/rx_bytes")
            tx, rx = (int(x) for x in r.stdout.split())
            out[ns] = {"tx": tx, "rx": rx}
        return out

    @staticmethod
    def teardown() -> None:
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith("shf") and name[3:].isdigit():
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)


def run_fleet(args, hosts: Hosts, a: bench.Server, b: bench.Server, manifest: dict, n: int,
              run_idx: int, logdir: Path) -> dict:
    dst_bucket = f"d-fleet-{n}"
    tag = f"{n}-{run_idx}"
    # A fresh journal per run: the same command on the same journal would resume (skip) the
    # previous run's transfer.
    journal = logdir / f"journal-{tag}.sqlite"
    for stale in logdir.glob(f"journal-{tag}.sqlite*"):
        stale.unlink()
    bench.remove_bucket(b.root, dst_bucket)
    (b.root / dst_bucket).mkdir()
    env = dict(os.environ, SKYHAUL_FLEET_TOKEN=TOKEN, HOME=str(logdir), AWS_EC2_METADATA_DISABLED="true",
               AWS_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               SKYHAUL_SRC_ACCESS_KEY_ID=a.access_key, SKYHAUL_SRC_SECRET_ACCESS_KEY=a.secret_key,
               SKYHAUL_DST_ACCESS_KEY_ID=b.access_key, SKYHAUL_DST_SECRET_ACCESS_KEY=b.secret_key,
               SKYHAUL_JOURNAL=str(journal))
    port = bench.free_port()
    os.sync()
    bench.wait_for_quiet(args.max_quiet_wait)
    before = hosts.counters()
    busy0, srv0 = bench.machine_busy_seconds(), [a.cpu(), b.cpu()]
    t0 = time.monotonic()
    clog = open(logdir / f"coordinator-{tag}.log", "wb")
    coord = subprocess.Popen(
        [args.skyhaul, "coordinator", "--listen", f"{HEAD}:{port}", "cp", "-r", "s3://files",
         f"s3://{dst_bucket}", "--src-endpoint", a.endpoint, "--dst-endpoint", b.endpoint, "--json", "-y",
         "--lease-size", args.lease_size, *args.flag],
        stdout=subprocess.PIPE, stderr=clog, env=env, start_new_session=True)
    bench.CHILDREN.append(coord)
    workers = []
    for ns in hosts.names[:n]:
        wlog = open(logdir / f"worker-{tag}-{ns}.log", "wb")
        w = subprocess.Popen(
            ["ip", "netns", "exec", ns, args.skyhaul, "worker", "--coordinator", f"http://{HEAD}:{port}",
             "--wait", "60s"], stdout=wlog, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        bench.CHILDREN.append(w)
        workers.append(w)
    out, _ = coord.communicate(timeout=args.timeout)
    wall = time.monotonic() - t0
    busy1, srv1 = bench.machine_busy_seconds(), [a.cpu(), b.cpu()]
    stragglers = 0
    for w in workers:
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            stragglers += 1
            w.kill()
            w.wait()
    after = hosts.counters()
    report = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    check = bench.verify(manifest, b.root, dst_bucket, args.sample, seed=n)
    moved = manifest["total_bytes"]
    per_host = {ns: {k: after[ns][k] - before[ns][k] for k in ("tx", "rx")} for ns in hosts.names[:n]}
    idle = {ns: after[ns]["tx"] - before[ns]["tx"] for ns in hosts.names[n:]}
    res = {
        "hosts": n, "run": run_idx, "exit": coord.returncode, "workers_killed": stragglers,
        "wall_s": round(wall, 2),
        "mib_per_s": round(moved / wall / MIB, 2), "mbit_per_s": round(moved * 8 / wall / 1e6, 1),
        "per_host_bytes": per_host, "idle_hosts_tx": idle,
        "server_cpu_s": [round(y - x, 1) for x, y in zip(srv0, srv1)],
        "machine_cpu_s": round(busy1 - busy0, 1),
        "machine_cpu_share": round((busy1 - busy0) / (wall * (os.cpu_count() or 1)), 2),
        "verified_by_skyhaul": report.get("verification", {}),
        "objects_copied": report.get("objects_copied"), "check": check,
    }
    if not args.keep_dst:
        bench.remove_bucket(b.root, dst_bucket)
    log(f"{n} host(s): {res['wall_s']} s, {res['mib_per_s']} MiB/s ({res['mbit_per_s']} Mbit/s), "
        f"exit {res['exit']}, check {'ok' if check['ok'] else 'FAILED'}, machine CPU {res['machine_cpu_share']:.0%}")
    return res


def render_md(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"# Fleet scaling — {doc['date']}",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB, kernel {m['kernel']}. "
        f"skyhaul {doc['skyhaul']}. Data: {doc['objects']} objects, {doc['total_bytes'] / MIB:.0f} MiB "
        f"(s3s-fs A → s3s-fs B). Each host's link: tbf {doc['rate']} each way. "
        f"Flags: `--lease-size {doc['lease_size']}{''.join(' ' + f for f in doc['flags'])}`. "
        f"Runs per size: {doc['runs']} (median shown).",
        "",
        "| hosts | wall s | aggregate MiB/s | Mbit/s | × 1 host | efficiency vs linear | machine CPU busy | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["summary"]:
        lines.append(
            f"| {r['hosts']} | {r['wall_s']} | {r['mib_per_s']} | {r['mbit_per_s']} | {r['speedup']} | "
            f"{r['efficiency']:.2f} | {r['machine_cpu_share']:.0%} | {'yes' if r['verified'] else 'NO'} |")
    lines += ["", f"Target ≥ 0.85 × linear: {'met' if doc['target_met'] else 'NOT met'}.", ""]
    lines.append("Bytes through each host's link (tx+rx MiB), per run:")
    for r in doc["runs_detail"]:
        per = ", ".join(f"{ns} {(v['tx'] + v['rx']) / MIB:.0f}" for ns, v in r["per_host_bytes"].items())
        lines.append(f"- {r['hosts']} host(s), {r['wall_s']} s: {per}")
    return "\n".join(lines) + "\n"


def main() -> int:
    tools_bin = Path(os.environ.get("SKYHAUL_TOOLS", REPO / ".tools")) / "bin"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skyhaul", default=str(REPO / "target" / "release" / "skyhaul"))
    ap.add_argument("--s3s-fs", dest="s3s_fs", default=str(tools_bin / "s3s-fs"))
    ap.add_argument("--hosts", default="1,2,4", help="host counts to run (default 1,2,4)")
    ap.add_argument("--rate", default="100mbit", help="each host's link rate, both ways (tbf)")
    ap.add_argument("--objects", type=int, default=192, help="objects in the data set")
    ap.add_argument("--size-mib", type=int, default=4, help="size of each object")
    ap.add_argument("--lease-size", default="16M", help="--lease-size for the coordinator")
    ap.add_argument("--runs", type=int, default=1, help="runs per host count (median reported)")
    ap.add_argument("--flag", action="append", default=[],
                    help="one more word for the coordinator's cp (repeat), e.g. --flag=--max-connections --flag=8")
    ap.add_argument("--sample", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--max-quiet-wait", type=float, default=60)
    ap.add_argument("--data-dir", default=str(BENCH_DIR / "data"))
    ap.add_argument("--out", default=str(BENCH_DIR / "results" / "fleet-scaling"))
    ap.add_argument("--keep-dst", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root: it creates network namespaces and tc qdiscs")
    for b in (args.skyhaul, args.s3s_fs):
        if not os.access(b, os.X_OK):
            ap.error(f"not executable: {b}")
    counts = [int(x) for x in args.hosts.split(",")]

    prof_dir = Path(args.data_dir) / "fleet"
    for side in ("a", "b"):
        (prof_dir / side).mkdir(parents=True, exist_ok=True)
        bench.clean_leftovers(prof_dir / side)
    manifest = bench.generate_set(prof_dir, "files", (args.objects, args.size_mib * MIB, 8), False)
    work = Path(args.data_dir) / "work-fleet"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    sky = work / "skyhaul"  # a private copy: a rebuild elsewhere must not swap it mid-run
    shutil.copy2(args.skyhaul, sky)
    args.skyhaul = str(sky)

    hosts = Hosts(max(counts), args.rate)
    try:
        a = bench.Server("A", args.s3s_fs, prof_dir / "a", work / "logs", host=HEAD)
        b = bench.Server("B", args.s3s_fs, prof_dir / "b", work / "logs", host=HEAD)
        detail = [run_fleet(args, hosts, a, b, manifest, n, i, work / "logs")
                  for i in range(args.runs) for n in counts]
    finally:
        bench.stop_children()
        hosts.teardown()

    summary = []
    for n in counts:
        rs = sorted((r for r in detail if r["hosts"] == n), key=lambda r: r["mib_per_s"])
        mid = rs[len(rs) // 2]
        summary.append({"hosts": n, "wall_s": mid["wall_s"], "mib_per_s": mid["mib_per_s"],
                        "mbit_per_s": mid["mbit_per_s"], "machine_cpu_share": mid["machine_cpu_share"],
                        "verified": all(r["check"]["ok"] and r["exit"] == 0 for r in rs)})
    one = summary[0]["mib_per_s"] / summary[0]["hosts"]
    for s in summary:
        s["speedup"] = round(s["mib_per_s"] / summary[0]["mib_per_s"], 2)
        s["efficiency"] = round(s["mib_per_s"] / (one * s["hosts"]), 3)
    version = bench.subprocess.run([args.skyhaul, "--version"], capture_output=True, text=True).stdout.strip()
    commit = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": bench.machine_info(), "skyhaul": f"{version} ({commit})", "rate": args.rate,
        "objects": args.objects, "total_bytes": manifest["total_bytes"], "runs": args.runs,
        "flags": args.flag, "lease_size": args.lease_size,
        "summary": summary, "runs_detail": detail,
        "target_met": all(s["efficiency"] >= 0.85 for s in summary),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bench.write_atomic(out.with_suffix(".json"), json.dumps(doc, indent=1))
    bench.write_atomic(out.with_suffix(".md"), render_md(doc))
    print(render_md(doc))
    return 0 if all(s["verified"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
