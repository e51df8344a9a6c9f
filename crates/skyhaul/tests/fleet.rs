//! Fleet mode against real S3 servers: a local fleet losing a worker to `kill -9`, a
//! coordinator killed and restarted, workers that cannot copy leaving the fleet, denied
//! items handed to a second worker, and the API's authentication.
//!
//! Each transfer is slowed with `--bwlimit` per worker so that it is still running when
//! something is killed, and every claim about redone work is read from the journal's lease
//! records, not assumed.

mod common;

use common::*;
use skyhaul_journal::{
    FleetLease, Journal, LEASE_EXPIRED, LEASE_GRANTED, LEASE_RETURNED, LEASE_SUPERSEDED,
};
use skyhaul_testkit::{FaultCounts, FaultProxy, Faults, S3Kind, S3Server};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const TOKEN: &str = "fleet-test-token-0123456789abcdef";

/// Small objects (batched into leases) and large ones (their parts spread over workers).
fn workload() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in 0..120 {
        m.insert(
            format!("small/{i:03}.bin"),
            data(150_000 + i * 17, i as u64),
        );
    }
    for i in 0..3 {
        m.insert(
            format!("large/{i}.bin"),
            data(21 * MIB + i * 999, 500 + i as u64),
        );
    }
    m
}

/// Flags that make the transfer take several seconds and hand out many small leases.
const SLOW: [&str; 12] = [
    "--bwlimit",
    "6M",
    "--lease-size",
    "2M",
    "--lease-timeout",
    "2s",
    "--multipart-threshold",
    "8M",
    "--part-size",
    "5M",
    "--max-connections",
    "4",
];

fn command(args: &[&str], src: &S3Server, dst: &S3Server, journal: &Path) -> Command {
    command_in(None, args, src, dst, journal)
}

/// `command`, run in network namespace `netns` if given; endpoints given in `args` are
/// kept (else the servers' own are added).
fn command_in(
    netns: Option<&str>,
    args: &[&str],
    src: &S3Server,
    dst: &S3Server,
    journal: &Path,
) -> Command {
    let bin = env!("CARGO_BIN_EXE_skyhaul");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args);
    if args[0] != "worker" && !args.contains(&"--src-endpoint") {
        cmd.args([
            "--src-endpoint",
            &src.endpoint,
            "--dst-endpoint",
            &dst.endpoint,
        ]);
    }
    for (k, v) in test_env(Some(src), Some(dst), &[]) {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("SKYHAUL_JOURNAL", journal)
        .env("SKYHAUL_FLEET_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads a child's stderr on a thread: returns the coordinator's URL once announced, and
/// keeps collecting the rest for failure messages.
fn coordinator_url(child: &mut Child) -> (String, std::sync::mpsc::Receiver<String>) {
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(url) = line.split("coordinator at ").nth(1) {
                return (url.trim().to_string(), rx);
            }
            seen.push(line);
        }
    }
    panic!("no coordinator URL announced; stderr: {seen:?}");
}

fn status(url: &str) -> serde_json::Value {
    fleet_status(url, TOKEN)
}

/// Polls the status until `ready` holds for it.
fn wait_status(
    url: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(url);
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, secs: u64) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("skyhaul did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a skyhaul that must succeed; returns its stdout.
fn succeeded(child: &mut Child, stderr: &std::sync::mpsc::Receiver<String>) -> String {
    let code = wait_exit(child, 180);
    let rest: Vec<String> = stderr.try_iter().collect();
    let mut out = String::new();
    let stdout = child.stdout.as_mut().expect("piped");
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(code, 0, "stderr: {rest:#?}\nstdout: {out}");
    out
}

fn kill9(pid: u32) {
    assert_eq!(
        unsafe { libc::kill(pid as i32, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
}

fn leases(journal: &Path) -> Vec<FleetLease> {
    let j = Journal::open(journal).unwrap();
    let t = j.transfers().unwrap();
    assert_eq!(t.len(), 1, "one transfer in the journal");
    j.fleet_leases(t[0].id).unwrap()
}

/// How many leases did each item, by item name.
fn done_counts(leases: &[FleetLease]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for l in leases {
        for (item, outcome) in &l.items {
            if outcome.as_deref() == Some("done") {
                *n.entry(item.clone()).or_insert(0) += 1;
            }
        }
    }
    n
}

/// The lease that did `item`.
fn done_by<'a>(leases: &'a [FleetLease], item: &str) -> &'a FleetLease {
    leases
        .iter()
        .find(|l| {
            l.items
                .get(item)
                .is_some_and(|o| o.as_deref() == Some("done"))
        })
        .unwrap_or_else(|| panic!("{item} never done"))
}

async fn servers() -> (S3Server, S3Server, BTreeMap<String, Vec<u8>>) {
    let files = workload();
    let (src, dst) = servers_with(&files).await;
    (src, dst, files)
}

/// Two s3s-fs servers, `files` under s3://src/data/ and an empty bucket dst.
async fn servers_with(files: &BTreeMap<String, Vec<u8>>) -> (S3Server, S3Server) {
    let src = S3Server::start(S3Kind::S3sFs);
    let dst = S3Server::start(S3Kind::S3sFs);
    src.create_bucket("src").await;
    dst.create_bucket("dst").await;
    fill_bucket(&src, "src", "data/", files).await;
    (src, dst)
}

/// The report on `out` says every file was copied and verified, and dst holds them.
async fn copied_all(out: &str, dst: &S3Server, files: &BTreeMap<String, Vec<u8>>) {
    let report = last_json_line(out).unwrap();
    assert_eq!(report["objects_failed"], 0, "{report}");
    assert_eq!(report["objects_copied"], files.len() as u64, "{report}");
    assert_eq!(report["verification"]["checksum_mismatch"], 0, "{report}");
    assert_eq!(report["verification"]["missing"], 0, "{report}");
    assert_eq!(&read_bucket(dst, "dst", "data/").await, files);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_fleet_survives_a_worker_killed_mid_transfer() {
    let (src, dst, files) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let mut args = vec![
        "cp",
        "-r",
        "s3://src/data",
        "s3://dst/data",
        "--workers",
        "4",
        "--json",
        "-y",
    ];
    // SLOW's rate for each of the 4 workers: a local fleet shares --bwlimit.
    args.extend(SLOW.map(|a| if a == "6M" { "24M" } else { a }));
    let mut child = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut child);

    // The API wants the token, and never repeats it.
    let (code, body) = http_get(&url, "/v1/status", None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_get(&url, "/v1/status", Some("Bearer wrong-token-0123456789"));
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains(TOKEN));
    // A worker with the wrong token is turned away with exit code 4, naming no token.
    let wrong = "wrong-token-0123456789abcdef";
    let out = command(
        &["worker", "--coordinator", &url, "--wait", "5s"],
        &src,
        &dst,
        &journal,
    )
    .env("SKYHAUL_FLEET_TOKEN", wrong)
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("refused the token") && !err.contains(wrong) && !err.contains(TOKEN),
        "{err}"
    );
    let (code, metrics) = http_get(&url, "/metrics", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE skyhaul_fleet_bytes_done_total counter"),
        "{metrics}"
    );

    // Mid-transfer: some objects done, and a live worker holding work.
    let s = wait_status(&url, "4 workers at work", |s| {
        s["objects_done"].as_u64() >= Some(5)
            && s["workers"].as_array().map_or(0, |w| w.len()) == 4
            && s["workers"][0]["leases"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
    });
    let victim = s["workers"][0].clone();
    let victim_id = victim["id"].as_str().unwrap().to_string();
    assert!(
        s["objects_done"].as_u64().unwrap() < files.len() as u64,
        "the transfer must still be running when the worker is killed: {s}"
    );
    kill9(victim["pid"].as_u64().unwrap() as u32);

    let out = succeeded(&mut child, &stderr);
    copied_all(&out, &dst, &files).await;

    // From the journal: the killed worker's leases were taken back — expired, or, when
    // nothing else was left, superseded by a copy an idle worker finished first — and every
    // item they held was then done exactly once, by another worker; nothing at all was done
    // twice.
    let leases = leases(&journal);
    let expired: Vec<&FleetLease> = leases
        .iter()
        .filter(|l| l.worker == victim_id)
        .filter(|l| l.state == LEASE_EXPIRED || l.state == LEASE_SUPERSEDED)
        .collect();
    assert!(
        !expired.is_empty(),
        "the killed worker's leases were never taken back: {leases:#?}"
    );
    let done = done_counts(&leases);
    let mut redone = 0;
    for lease in &expired {
        for item in lease.items.keys() {
            assert_eq!(
                done.get(item),
                Some(&1),
                "{item} of taken-back lease {}",
                lease.lease_id
            );
            let by = done_by(&leases, item);
            assert_ne!(by.worker, victim_id, "{item} was redone by another worker");
            redone += 1;
        }
    }
    assert!(redone > 0);
    assert!(done.values().all(|&n| n == 1), "work done twice: {done:?}");
    // The parts of the large objects went to more than one worker.
    let part_workers: std::collections::HashSet<&str> = leases
        .iter()
        .filter(|l| l.items.keys().any(|i| i.starts_with("part ")))
        .map(|l| l.worker.as_str())
        .collect();
    assert!(part_workers.len() > 1, "{part_workers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_and_restarted_resumes() {
    let (src, dst, files) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let listen = free_listen();
    let args = coordinator_cp(&listen, &[], &SLOW);
    let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, _stderr) = coordinator_url(&mut coordinator);
    let worker_dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker(&url, &[], &src, &dst, worker_dir.path()))
        .collect();

    let s = wait_status(&url, "some progress", |s| {
        s["objects_done"].as_u64() >= Some(20)
    });
    assert!(
        s["objects_done"].as_u64().unwrap() < files.len() as u64,
        "{s}"
    );
    kill9(coordinator.id());
    assert_ne!(wait_exit(&mut coordinator, 10), 0);
    let before = leases(&journal);
    assert!(!done_counts(&before).is_empty(), "{before:#?}");
    // Results are committed before they are acknowledged: what the journal holds now is
    // what the restart must skip.
    let journaled = {
        let j = Journal::open(&journal).unwrap();
        let t = &j.transfers().unwrap()[0];
        j.done_count(t.id).unwrap().0
    };
    assert!(journaled > 0);
    std::thread::sleep(Duration::from_millis(500));

    // Restarted with the same command: the same transfer, continued.
    let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (_url, stderr) = coordinator_url(&mut coordinator);
    let out = succeeded(&mut coordinator, &stderr);
    for w in &mut workers {
        assert_eq!(wait_exit(w, 30), 0, "a worker failed");
    }
    let report = last_json_line(&out).unwrap();
    assert_eq!(report["objects_failed"], 0, "{report}");
    assert_eq!(report["verification"]["missing"], 0, "{report}");
    assert_eq!(report["verification"]["checksum_mismatch"], 0, "{report}");
    // What the first run finished was not copied again; the rest was.
    assert_eq!(
        report["objects_resumed"].as_u64(),
        Some(journaled),
        "{report}"
    );
    assert_eq!(
        report["objects_copied"].as_u64().unwrap() + journaled,
        files.len() as u64,
        "{report}"
    );
    assert_eq!(read_bucket(&dst, "dst", "data/").await, files);

    let j = Journal::open(&journal).unwrap();
    let t = &j.transfers().unwrap()[0];
    assert_eq!(t.runs, 2);
    assert!(t.complete);
    assert_eq!(t.open_uploads, 0, "every upload was completed");
    // Items done in the first run were not done again in the second.
    let all = j.fleet_leases(t.id).unwrap();
    let after = done_counts(&all);
    for (item, _) in done_counts(&before) {
        let holders: Vec<_> = all
            .iter()
            .filter_map(|l| {
                l.items
                    .get(&item)
                    .map(|o| (l.lease_id, &l.worker, &l.state, o))
            })
            .collect();
        assert_eq!(
            after.get(&item),
            Some(&1),
            "{item} done again after the restart: {holders:?}"
        );
    }
}

/// A worker that joined one transfer is refused by the coordinator of another that comes up
/// at the same address with the same token (the next job on the same head): it leaves,
/// saying why, and writes nothing of the new transfer. It had gone on with the first
/// transfer's stores, writing the second's objects into the first's bucket.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_of_another_transfer_is_refused() {
    let (src, dst, files) = servers().await;
    dst.create_bucket("dst2").await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let listen = free_listen();
    let first = coordinator_cp(&listen, &[], &SLOW);
    let mut coordinator = command(&first, &src, &dst, &journal).spawn().unwrap();
    let (url, _stderr) = coordinator_url(&mut coordinator);
    let worker_dir = tempfile::tempdir().unwrap();
    let mut old = command(
        &["worker", "--coordinator", &url, "--wait", "60s"],
        &src,
        &dst,
        &worker_dir.path().join("unused.sqlite"),
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    wait_status(&url, "some progress", |s| {
        s["objects_done"].as_u64() >= Some(5)
    });
    kill9(coordinator.id());
    assert_ne!(wait_exit(&mut coordinator, 10), 0);

    let mut second = vec!["coordinator", "--listen", &listen];
    second.extend([
        "cp",
        "-r",
        "s3://src/data",
        "s3://dst2/data",
        "--json",
        "-y",
    ]);
    second.extend(SLOW);
    let mut coordinator = command(&second, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut coordinator);
    let (code, said) = exited(&mut old);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("now runs another transfer"), "{said}");
    let mut fresh = spawn_worker(&url, &[], &src, &dst, worker_dir.path());
    let out = succeeded(&mut coordinator, &stderr);
    assert_eq!(wait_exit(&mut fresh, 30), 0);
    let report = last_json_line(&out).unwrap();
    assert_eq!(report["verification"]["missing"], 0, "{report}");
    assert_eq!(read_bucket(&dst, "dst2", "data/").await, files);
    // The first transfer's bucket holds only objects of its own, where they belong.
    let first_bucket = read_bucket(&dst, "dst", "").await;
    assert!(
        first_bucket
            .iter()
            .all(|(k, v)| k.strip_prefix("data/").and_then(|k| files.get(k)) == Some(v)),
        "{:?}",
        first_bucket.keys().collect::<Vec<_>>()
    );
}

/// `skyhaul coordinator --listen LISTEN [OPTS] cp -r s3://src/data s3://dst/data --json -y [TUNING]`
fn coordinator_cp<'a>(listen: &'a str, opts: &[&'a str], tuning: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["coordinator", "--listen", listen];
    args.extend(opts);
    args.extend(["cp", "-r", "s3://src/data", "s3://dst/data", "--json", "-y"]);
    args.extend(tuning);
    args
}

/// A free port on 127.0.0.1 for a coordinator that workers must find before it is up.
fn free_listen() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn spawn_worker(url: &str, extra: &[&str], src: &S3Server, dst: &S3Server, dir: &Path) -> Child {
    let mut args = vec!["worker", "--coordinator", url, "--wait", "60s"];
    args.extend(extra);
    command(&args, src, dst, &dir.join("unused.sqlite"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One worker's link is 32 times slower than the others': once nothing else is left, its
/// leases are re-issued to the idle workers, the transfer ends long before it could have
/// finished them, and the doubled work is visible in the status, the metrics and the
/// journal (each item done once; the slow worker's leases superseded, not expired).
#[tokio::test(flavor = "multi_thread")]
async fn slow_worker_does_not_hold_up_the_end() {
    const SLOW_RATE: u64 = 128 << 10;
    // The large object lists first: the slow worker's first leases are two of its parts.
    let mut files = BTreeMap::new();
    files.insert("a/large.bin".to_string(), data(20 * MIB, 7));
    for i in 0..40 {
        files.insert(format!("b/{i:02}.bin"), data(256 << 10, 100 + i as u64));
    }
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let listen = free_listen();
    // SLOW, with a lease timeout far beyond the test: only a re-issue, never an expiry,
    // can take the slow worker's work away from it.
    let tuning: Vec<&str> = SLOW
        .iter()
        .map(|a| if *a == "2s" { "60s" } else { a })
        .collect();
    let args = coordinator_cp(&listen, &[], &tuning);
    let started = Instant::now();
    let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut coordinator);
    let rate = format!("{}K", SLOW_RATE >> 10);
    let mut slow = spawn_worker(&url, &["--bwlimit", &rate], &src, &dst, dir.path());
    let s = wait_status(&url, "the slow worker holding two leases", |s| {
        s["workers"][0]["leases"].as_array().map_or(0, |l| l.len()) == 2
    });
    let slow_id = s["workers"][0]["id"].as_str().unwrap().to_string();
    let mut fast: Vec<Child> = (0..3)
        .map(|_| spawn_worker(&url, &[], &src, &dst, dir.path()))
        .collect();

    // Seen while it happens: the status and the metrics count the copies.
    let s = wait_status(&url, "a lease re-issued", |s| {
        s["leases_reissued"].as_u64() >= Some(1)
    });
    assert_eq!(s["leases_expired"], 0, "{s}");
    let (code, metrics) = http_get(&url, "/metrics", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(code, 200);
    let reissued: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skyhaul_fleet_leases_reissued_total "))
        .unwrap_or_else(|| panic!("no reissued metric: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(reissued >= 1.0, "{metrics}");

    let out = succeeded(&mut coordinator, &stderr);
    let elapsed = started.elapsed();
    copied_all(&out, &dst, &files).await;
    assert_eq!(wait_exit(&mut slow, 30), 0, "the slow worker failed");
    for w in &mut fast {
        assert_eq!(wait_exit(w, 30), 0, "a worker failed");
    }

    // The slow worker's work, at its rate, would have taken far longer than the transfer.
    let leases = leases(&journal);
    let slow_leases: Vec<&FleetLease> = leases.iter().filter(|l| l.worker == slow_id).collect();
    let slow_bytes: u64 = slow_leases.iter().map(|l| l.bytes).sum();
    let slow_secs = slow_bytes as f64 / SLOW_RATE as f64;
    eprintln!(
        "transfer {elapsed:?}; the slow worker's {slow_bytes} leased bytes need {slow_secs:.0} s at its rate"
    );
    assert!(
        elapsed.as_secs_f64() < slow_secs / 2.0,
        "took {elapsed:?}; the slow worker alone needed {slow_secs:.0} s for its {slow_bytes} bytes"
    );
    // Its first leases were superseded by copies that other workers finished; every item
    // of the transfer was done exactly once, and none of the slow worker's leases expired.
    let superseded: Vec<&&FleetLease> = slow_leases
        .iter()
        .filter(|l| l.state == LEASE_SUPERSEDED)
        .collect();
    assert!(!superseded.is_empty(), "{slow_leases:#?}");
    assert!(slow_leases.iter().all(|l| l.state != LEASE_EXPIRED));
    let done = done_counts(&leases);
    assert!(done.values().all(|&n| n == 1), "work done twice: {done:?}");
    for lease in &superseded {
        for item in lease.items.keys() {
            assert_ne!(done_by(&leases, item).worker, slow_id, "{item}");
        }
    }
    assert!(
        superseded
            .iter()
            .any(|l| l.items.keys().any(|i| i.starts_with("part "))),
        "a doubled part: {superseded:#?}"
    );
}

/// With --tls-cert/--tls-key the coordinator speaks HTTPS only: a worker trusting its CA
/// (--tls-ca) joins and the copy verifies; plain HTTP gets no answer, and workers that do
/// not trust the certificate (system roots only, or another CA) are refused with exit 5.
#[tokio::test(flavor = "multi_thread")]
async fn coordinator_over_tls() {
    let files: BTreeMap<String, Vec<u8>> = (0..12)
        .map(|i| (format!("f/{i:02}.bin"), data(100_000 + i * 7, i as u64)))
        .collect();
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let local = ["127.0.0.1", "localhost"];
    let good = skyhaul_testkit::tls::files(dir.path(), "good", &local);
    let (ca, cert, key) = (good.ca, good.cert, good.key);
    let other_ca = skyhaul_testkit::tls::files(dir.path(), "other", &local).ca;
    let journal = dir.path().join("journal.sqlite");
    let listen = free_listen();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let args = coordinator_cp(&listen, &["--tls-cert", cert, "--tls-key", key], &[]);
    let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut coordinator);
    assert_eq!(url, format!("https://{listen}"));

    // Plain HTTP to the TLS port: no HTTP answer at all, so no token is ever sent in clear.
    let mut s = std::net::TcpStream::connect(&listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET /v1/status HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A worker dialling http:// is turned away too.
    let worker = |coordinator: &str, extra: &[&str]| {
        let mut a = vec!["worker", "--coordinator", coordinator, "--wait", "3s"];
        a.extend(extra);
        command(&a, &src, &dst, &dir.path().join("unused.sqlite"))
            .output()
            .unwrap()
    };
    let out = worker(&format!("http://{listen}"), &[]);
    assert_ne!(out.status.code(), Some(0));
    // Workers that do not trust the certificate: one clear line, exit 5, no retrying.
    let other = other_ca.to_str().unwrap();
    for extra in [&[][..], &["--tls-ca", other][..]] {
        let t = Instant::now();
        let out = worker(&url, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{extra:?}: {err}");
        assert!(
            err.contains("does not trust") && err.contains("--tls-ca"),
            "{err}"
        );
        assert!(!err.contains(TOKEN), "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "retried: {:?}",
            t.elapsed()
        );
    }
    // Nobody got in: nothing was copied yet.
    assert!(read_bucket(&dst, "dst", "data/").await.is_empty());

    // The worker that trusts the CA does the transfer.
    let mut good = spawn_worker(
        &url,
        &["--tls-ca", ca.to_str().unwrap()],
        &src,
        &dst,
        dir.path(),
    );
    let out = succeeded(&mut coordinator, &stderr);
    assert_eq!(wait_exit(&mut good, 30), 0, "the TLS worker failed");
    copied_all(&out, &dst, &files).await;
}

/// Two "hosts" on one bridge: network namespaces whose veth links are rate-limited (tbf,
/// both directions), deleted on drop. The servers stay on 127.0.0.1 in the root namespace,
/// reached from the hosts through TCP forwarders on the bridge's address.
struct Hosts {
    bridge: String,
    names: Vec<String>,
}

const HEAD_IP: &str = "10.232.0.1";

impl Hosts {
    fn new(n: usize, rate: &str) -> Option<Hosts> {
        let ip_works = Command::new("ip").arg("netns").arg("list").output();
        if unsafe { libc::geteuid() } != 0 || !ip_works.is_ok_and(|o| o.status.success()) {
            return None;
        }
        let tag = std::process::id() % 100_000;
        let hosts = Hosts {
            bridge: format!("shtb{tag}"),
            names: (0..n).map(|i| format!("sht{tag}h{i}")).collect(),
        };
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {:?}", out);
        };
        let br = hosts.bridge.as_str();
        run(&["ip", "link", "add", br, "type", "bridge"]);
        run(&["ip", "addr", "add", &format!("{HEAD_IP}/24"), "dev", br]);
        run(&["ip", "link", "set", br, "up"]);
        let tbf = ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"];
        for (i, ns) in hosts.names.iter().enumerate() {
            let outer = format!("{ns}v");
            run(&["ip", "netns", "add", ns]);
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            run(&["ip", "link", "set", &outer, "master", br, "up"]);
            let addr = format!("10.232.0.{}/24", 10 + i);
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            let mut up = vec![
                "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root",
            ];
            up.extend(tbf);
            run(&up);
            let mut down = vec!["tc", "qdisc", "add", "dev", &outer, "root"];
            down.extend(tbf);
            run(&down);
        }
        Some(hosts)
    }

    /// Bytes host `ns` received and sent on its link.
    fn traffic(&self, ns: &str) -> (u64, u64) {
        let read = |what: &str| -> u64 {
            let path = format!("/sys/class/net/eth0/statistics/{what}_bytes");
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "cat", &path])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        (read("rx"), read("tx"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Forwards TCP connections to `HEAD_IP:port` on to 127.0.0.1:`to` (for the life of the test).
fn forward(to: u16) -> String {
    let listener = std::net::TcpListener::bind((HEAD_IP, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            for (mut from, mut into) in [
                (conn.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, conn),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    format!("http://{addr}")
}

/// Two workers on two "hosts" (network namespaces, each link 100 Mbit/s): the work is
/// spread over both by bytes, and each host's share of the data crossed its own link. The
/// scaling numbers are in bench/fleet_scaling.py, not here.
#[tokio::test(flavor = "multi_thread")]
async fn workers_on_two_hosts_share_the_bytes() {
    let Some(hosts) = Hosts::new(2, "100mbit") else {
        eprintln!("SKIPPED: needs root and iproute2 (network namespaces)");
        return;
    };
    let mut files = BTreeMap::new();
    files.insert("large.bin".to_string(), data(15 * MIB, 3));
    for i in 0..24 {
        files.insert(
            format!("small/{i:02}.bin"),
            data(MIB - i * 1000, 50 + i as u64),
        );
    }
    let total: u64 = files.values().map(|f| f.len() as u64).sum();
    let (src, dst) = servers_with(&files).await;
    let port = |s: &S3Server| s.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let (src_url, dst_url) = (forward(port(&src)), forward(port(&dst)));
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let listen = format!("{HEAD_IP}:{}", free_listen().rsplit(':').next().unwrap());
    let endpoints = ["--src-endpoint", &src_url, "--dst-endpoint", &dst_url];
    let tuning = [
        "--lease-size",
        "2M",
        "--multipart-threshold",
        "8M",
        "--part-size",
        "5M",
    ];
    let mut args = coordinator_cp(&listen, &[], &endpoints);
    args.extend(tuning);
    let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut coordinator);
    let mut workers: Vec<Child> = hosts
        .names
        .iter()
        .map(|ns| {
            let args = ["worker", "--coordinator", &url, "--wait", "60s"];
            let unused = dir.path().join("unused.sqlite");
            command_in(Some(ns), &args, &src, &dst, &unused)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let out = succeeded(&mut coordinator, &stderr);
    copied_all(&out, &dst, &files).await;
    for w in &mut workers {
        assert_eq!(wait_exit(w, 30), 0, "a worker failed");
    }

    // Bytes done per worker, from the journal; a worker id names its pid, which is the
    // pid `ip netns exec` ran it as.
    let mut by_pid: HashMap<u32, u64> = HashMap::new();
    for l in leases(&journal) {
        let pid = l.worker.rsplit('-').nth(1).unwrap().parse().unwrap();
        let payload: Vec<serde_json::Value> = serde_json::from_str(&l.payload).unwrap();
        for item in payload {
            let name = match item["kind"].as_str().unwrap() {
                "object" => format!("object {}", item["src"]["key"].as_str().unwrap()),
                _ => format!(
                    "part {} #{}",
                    item["upload"]["upload_id"].as_str().unwrap(),
                    item["spec"]["number"]
                ),
            };
            if l.items
                .get(&name)
                .is_some_and(|o| o.as_deref() == Some("done"))
            {
                let bytes = item["spec"]["len"]
                    .as_u64()
                    .or(item["src"]["size"].as_u64());
                *by_pid.entry(pid).or_default() += bytes.unwrap();
            }
        }
    }
    assert_eq!(by_pid.values().sum::<u64>(), total, "{by_pid:?}");
    for (ns, w) in hosts.names.iter().zip(&workers) {
        let done = by_pid.get(&w.id()).copied().unwrap_or(0);
        // Equal links: each host did a fair share, by bytes.
        assert!(
            done * 10 >= total * 3,
            "{ns} did {done} of {total} bytes: {by_pid:?}"
        );
        // And those bytes went through its own link, in (from src) and out (to dst).
        let (rx, tx) = hosts.traffic(ns);
        eprintln!("{ns}: did {done} of {total} bytes; its link: rx {rx}, tx {tx}");
        assert!(
            rx >= done && tx >= done,
            "{ns}: rx {rx}, tx {tx}, done {done}"
        );
        // But not the other host's share: its link carried its own work.
        assert!(rx <= done + total / 4, "{ns}: rx {rx}, done {done}");
    }
}

/// Small objects and one striped object, for the tests of workers that leave.
fn leaving_files() -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = (0..24)
        .map(|i| (format!("s/{i:02}.bin"), data(100_000 + i * 13, i as u64)))
        .collect();
    files.insert("l/large.bin".into(), data(12 * MIB, 99));
    files
}

/// Many leases (2 MiB each), the large object in parts.
const LEAVING: [&str; 8] = [
    "--lease-size",
    "2M",
    "--multipart-threshold",
    "8M",
    "--part-size",
    "5M",
    "--max-connections",
    "2",
];

/// A coordinator of some files (tuned by [`LEAVING`]) that waits for workers, its source
/// reached through a fault proxy if faults are given (the workers take the coordinator's
/// endpoints, so theirs too).
struct Leaving {
    files: BTreeMap<String, Vec<u8>>,
    src: S3Server,
    dst: S3Server,
    proxy: Option<FaultProxy>,
    dir: tempfile::TempDir,
    coordinator: Child,
    url: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Leaving {
    /// Of [`leaving_files`], without a proxy.
    async fn start(lease_timeout: &str) -> Leaving {
        Leaving::with(leaving_files(), lease_timeout, None).await
    }

    async fn with(
        files: BTreeMap<String, Vec<u8>>,
        lease_timeout: &str,
        faults: Option<Faults>,
    ) -> Leaving {
        let (src, dst) = servers_with(&files).await;
        let proxy = faults.map(|f| FaultProxy::start(&src.endpoint, f));
        let src_endpoint = proxy
            .as_ref()
            .map_or(src.endpoint.clone(), |p| p.endpoint());
        let dir = tempfile::tempdir().unwrap();
        let listen = free_listen();
        let mut tuning = LEAVING.to_vec();
        tuning.extend(["--lease-timeout", lease_timeout]);
        tuning.extend([
            "--src-endpoint",
            &src_endpoint,
            "--dst-endpoint",
            &dst.endpoint,
        ]);
        let args = coordinator_cp(&listen, &[], &tuning);
        let journal = dir.path().join("journal.sqlite");
        let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
        let (url, stderr) = coordinator_url(&mut coordinator);
        Leaving {
            files,
            src,
            dst,
            proxy,
            dir,
            coordinator,
            url,
            stderr,
        }
    }

    fn journal(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.sqlite")
    }

    /// A worker with the test's credentials but for `env`: each variable set, or removed
    /// where `None`.
    fn worker(&self, env: &[(&str, Option<&str>)]) -> Child {
        let mut cmd = command(
            &["worker", "--coordinator", &self.url, "--wait", "60s"],
            &self.src,
            &self.dst,
            &self.dir.path().join("unused.sqlite"),
        );
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdout(Stdio::null()).spawn().unwrap()
    }

    /// A worker started with a destination secret the server refuses.
    fn worker_with_a_wrong_secret(&self) -> Child {
        self.worker(&[("SKYHAUL_DST_SECRET_ACCESS_KEY", Some("wrong-secret-value"))])
    }

    /// The faults the proxy injected.
    fn injected(&self) -> FaultCounts {
        self.proxy.as_ref().expect("a proxy").injected()
    }
}

/// The line a run that failed ends with: `skyhaul: error: …`.
fn error_line(lines: &[String]) -> &str {
    lines
        .iter()
        .find(|l| l.starts_with("skyhaul: error:"))
        .unwrap_or_else(|| panic!("no error line: {lines:#?}"))
}

/// Every line of an exited child's `stderr` (its reader ends there).
fn all_lines(stderr: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        match stderr.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => lines.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(_) => assert!(Instant::now() < deadline, "stderr still open: {lines:#?}"),
        }
    }
}

/// The stderr of a worker that has exited, and its exit code.
fn exited(worker: &mut Child) -> (i32, String) {
    let code = wait_exit(worker, 60);
    let mut said = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    (code, said)
}

/// Waits for a line of `stderr` that contains `text`.
fn wait_line(stderr: &std::sync::mpsc::Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = stderr.recv_timeout(Duration::from_millis(100)) {
            if line.contains(text) {
                return line;
            }
            seen.push(line);
        }
    }
    panic!("no line with {text:?}: {seen:#?}");
}

/// A worker whose destination credentials are refused cannot copy anything: it leaves the
/// fleet (exit 4, the reason on its stderr), its leases go back to the queue at once (the
/// lease timeout is far beyond the test, so no expiry could have done it), nothing counts as
/// failed, and a healthy worker that joins later finishes the transfer with every item done
/// exactly once. One worker's bad environment does not stop the fleet.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_cannot_copy_leaves_and_the_others_finish() {
    let mut fleet = Leaving::start("300s").await;
    let mut bad = fleet.worker_with_a_wrong_secret();
    let (code, said) = exited(&mut bad);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("does not accept these credentials")
            && said.contains("SKYHAUL_DST_SECRET_ACCESS_KEY")
            && said.contains("this worker left the fleet")
            && !said.contains("wrong-secret"),
        "{said}"
    );
    let line = wait_line(&fleet.stderr, "left the fleet");
    assert!(line.contains("does not accept these credentials"), "{line}");
    let s = status(&fleet.url);
    let w = &s["workers"][0];
    let bad_id = w["id"].as_str().unwrap().to_string();
    let left = w["left"].as_str().unwrap_or_else(|| panic!("{s}"));
    assert!(left.contains("does not accept these credentials"), "{s}");
    assert_eq!(w["alive"], false, "{s}");
    assert_eq!(w["leases"], serde_json::json!([]), "{s}");
    assert!(s["leases_returned"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["leases_active"], 0, "{s}");
    assert_eq!(s["leases_expired"], 0, "{s}");
    assert_eq!(s["objects_failed"], 0, "{s}");

    let mut good = spawn_worker(&fleet.url, &[], &fleet.src, &fleet.dst, fleet.dir.path());
    let out = succeeded(&mut fleet.coordinator, &fleet.stderr);
    copied_all(&out, &fleet.dst, &fleet.files).await;
    assert_eq!(wait_exit(&mut good, 30), 0, "the healthy worker failed");
    let leases = leases(&fleet.journal());
    let theirs: Vec<&FleetLease> = leases.iter().filter(|l| l.worker == bad_id).collect();
    assert!(!theirs.is_empty(), "{leases:#?}");
    assert!(
        theirs.iter().all(|l| l.state == LEASE_RETURNED),
        "{theirs:#?}"
    );
    let done = done_counts(&leases);
    assert!(done.values().all(|&n| n == 1), "work done twice: {done:?}");
    for lease in &theirs {
        for item in lease.items.keys() {
            assert_ne!(done_by(&leases, item).worker, bad_id, "{item}");
        }
    }
}

/// When every worker has left the fleet and none has joined or left for four lease timeouts,
/// nobody can finish the transfer: the coordinator stops (not before) with the last one's
/// error and its exit code (4 for refused credentials), saying so and naming no secret, and
/// nothing was written.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_whose_workers_all_left_stops_with_their_error() {
    let mut fleet = Leaving::start("2s").await;
    let mut bad = fleet.worker_with_a_wrong_secret();
    assert_eq!(wait_exit(&mut bad, 60), 4);
    let left = Instant::now();
    let code = wait_exit(&mut fleet.coordinator, 60);
    let waited = left.elapsed();
    let lines = all_lines(&fleet.stderr);
    assert_eq!(code, 4, "{lines:#?}");
    assert!(
        waited >= Duration::from_secs(7),
        "stopped {waited:?} after the worker left, before four lease timeouts of 2 s"
    );
    let error = error_line(&lines);
    assert!(
        error.contains("no worker is left to do the work")
            && error.contains("does not accept these credentials")
            && !error.contains("wrong-secret"),
        "{error}"
    );
    assert!(read_bucket(&fleet.dst, "dst", "data/").await.is_empty());
}

/// A launched fleet runs one local worker beside the coordinator (`skyhaul coordinator
/// --workers 1`) and the rest elsewhere: that local worker's exit (here `kill -9`) does not
/// stop the transfer, which the remote worker finishes.
/// A worker stopped by SIGTERM (a scheduler preempting it) leaves the fleet on its way out:
/// it reports the objects it finished, the rest of its leases goes back to the queue at once
/// (the lease timeout is far beyond the test), and another worker finishes the transfer
/// without copying again what the first one finished (it did, as the first had reported
/// only whole leases).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_by_sigterm_reports_what_it_finished_and_gives_the_rest_back() {
    // Small objects, many to a lease (2 MiB), at 256 KiB/s: a lease takes seconds.
    let files: BTreeMap<String, Vec<u8>> = (0..30)
        .map(|i| (format!("s/{i:02}.bin"), data(60_000 + i * 7, i as u64)))
        .collect();
    let mut fleet = Leaving::with(files, "300s", None).await;
    let (src, dst, dir) = (&fleet.src, &fleet.dst, fleet.dir.path());
    let mut first = spawn_worker(&fleet.url, &["--bwlimit", "256K"], src, dst, dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = loop {
        let n = read_bucket(dst, "dst", "data/").await.len();
        if n >= 4 {
            break n;
        }
        assert!(Instant::now() < deadline, "4 objects not written in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(written < fleet.files.len(), "stopped before the end");
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut first, 10), 130);
    let s = wait_status(&fleet.url, "its leases back", |s| {
        s["leases_returned"].as_u64() >= Some(1)
    });
    assert_eq!(
        (&s["leases_active"], &s["leases_expired"]),
        (&0.into(), &0.into()),
        "{s}"
    );
    let mut second = spawn_worker(&fleet.url, &[], src, dst, dir);
    let out = succeeded(&mut fleet.coordinator, &fleet.stderr);
    copied_all(&out, &fleet.dst, &fleet.files).await;
    assert_eq!(wait_exit(&mut second, 30), 0, "the second worker failed");
    // What the first worker wrote counts as its work, but for at most the two objects it
    // had in flight (--max-connections 2), whose answers it had not read.
    let leases = leases(&fleet.journal());
    let by_first = format!("-{}-", first.id());
    let done_by_first = leases
        .iter()
        .filter(|l| l.worker.contains(&by_first))
        .flat_map(|l| l.items.values())
        .filter(|o| o.as_deref() == Some("done"))
        .count();
    assert!(done_by_first + 2 >= written, "{done_by_first} of {written}");
    let counts = done_counts(&leases);
    assert_eq!(counts.len(), fleet.files.len(), "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinators_local_worker_exiting_ends_nothing() {
    let (src, dst, files) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let listen = free_listen();
    let mut tuning = SLOW.to_vec();
    tuning.extend(["--workers", "1"]);
    let args = coordinator_cp(&listen, &[], &tuning);
    let mut coordinator = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut coordinator);
    let mut remote = spawn_worker(&url, &[], &src, &dst, dir.path());
    let s = wait_status(&url, "both workers at work", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 2) && s["bytes_done"].as_u64() > Some(0)
    });
    let local = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .find(|&pid| pid != remote.id())
        .unwrap();
    kill9(local);
    let out = succeeded(&mut coordinator, &stderr);
    copied_all(&out, &dst, &files).await;
    assert_eq!(wait_exit(&mut remote, 30), 0, "the remote worker failed");
}

/// `cp -r s3://src/data s3://dst/data` by a local fleet of `workers`, which share `rate`
/// (else tuned as [`SLOW`]).
fn local_fleet_cp(rate: &'static str, workers: &'static str) -> Vec<&'static str> {
    let mut args = vec!["cp", "-r", "s3://src/data", "s3://dst/data", "--json", "-y"];
    args.extend(SLOW.map(|a| if a == "6M" { rate } else { a }));
    args.extend(["--workers", workers]);
    args
}

/// Small objects go many to a lease, also as the end nears: leases were cut in counts of
/// 256 KiB per item against a target in real bytes, so 300 objects of 1 KiB went out about
/// one per lease (a round trip and a journal commit each).
#[tokio::test(flavor = "multi_thread")]
async fn small_objects_go_many_to_a_lease() {
    let files: BTreeMap<String, Vec<u8>> = (0..300)
        .map(|i| (format!("s/{i:03}"), data(1024, i as u64)))
        .collect();
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let args = [
        "cp",
        "-r",
        "s3://src/data",
        "s3://dst/data",
        "--json",
        "-y",
        "--workers",
        "2",
    ];
    let run = command(&args, &src, &dst, &journal).output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert_eq!(run.status.code(), Some(0), "{err}");
    copied_all(&out, &dst, &files).await;
    // Nothing expired (the lease timeout is 30 s): a heartbeat that crossed a lease's
    // results was warned of as an expiry.
    assert!(!err.contains("expired at the coordinator"), "{err}");
    let leases = leases(&journal);
    // Each lease takes a quarter of what is left (two workers), down to one object: about
    // twenty; one per object before.
    assert!(
        leases.len() <= 40,
        "{} leases for 300 objects",
        leases.len()
    );
    assert!(done_counts(&leases).values().all(|&n| n == 1));
}

/// [`local_fleet_cp`] by two workers whose leases would not expire within a test (60 s).
fn patient_local_fleet_cp(rate: &'static str) -> Vec<&'static str> {
    local_fleet_cp(rate, "2")
        .into_iter()
        .map(|a| if a == "2s" { "60s" } else { a })
        .collect()
}

/// `--bwlimit` bounds what moves through this machine: a local fleet's workers share it,
/// rather than each moving that much.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_fleet_shares_the_bandwidth_limit() {
    let files = leaving_files();
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let total: usize = files.values().map(Vec::len).sum();
    let rate = 3 * MIB;
    let mut child = command(&local_fleet_cp("3M", "3"), &src, &dst, &journal)
        .spawn()
        .unwrap();
    let (_, stderr) = coordinator_url(&mut child);
    let out = succeeded(&mut child, &stderr);
    copied_all(&out, &dst, &files).await;
    // The transfer's own time, without the processes' start.
    let elapsed = last_json_line(&out).unwrap()["seconds"].as_f64().unwrap();
    // At most the rate, plus each worker's quarter-second burst; three workers each at the
    // whole rate would take a third of this.
    let least = total as f64 / rate as f64 - 3.0 * 0.25;
    assert!(
        elapsed >= least,
        "{total} bytes in {elapsed:.1} s: faster than {rate} B/s allows ({least:.1} s)"
    );
}

/// A local fleet (`cp --workers 1`) has no other workers: once its only worker has exited
/// (`kill -9`, so it left no reason), the transfer stops, saying so, rather than wait for a
/// worker that cannot come; a rerun of the same command finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_fleet_whose_workers_all_exited_stops() {
    let files = leaving_files();
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    // Slower than SLOW: seconds of copying left when the worker is killed, on a busy machine.
    let args = local_fleet_cp("3M", "1");
    let mut child = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut child);
    let s = wait_status(&url, "the worker at work", |s| {
        s["objects_done"].as_u64() >= Some(3)
    });
    kill9(s["workers"][0]["pid"].as_u64().unwrap() as u32);
    let code = wait_exit(&mut child, 60);
    let lines = all_lines(&stderr);
    assert_eq!(code, 1, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l
            == "skyhaul: error: every worker exited before the transfer finished (rerun the command to resume)"),
        "{lines:#?}"
    );
    let mut rerun = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (_, stderr) = coordinator_url(&mut rerun);
    let out = succeeded(&mut rerun, &stderr);
    let report = last_json_line(&out).unwrap();
    assert!(report["objects_skipped"].as_u64() > Some(0), "{report}");
    assert_eq!(&read_bucket(&dst, "dst", "data/").await, &files);
}

/// Ctrl-C at a terminal reaches a local fleet's whole process group (its workers leave it to
/// the coordinator, which stops them): the transfer ends as interrupted (exit 130), not as a
/// fleet whose workers all exited, and keeps what was in flight.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_a_local_fleet_as_interrupted() {
    use std::os::unix::process::CommandExt;
    let files = leaving_files();
    let (src, dst) = servers_with(&files).await;
    // It counts the bytes the destination received.
    let proxy = FaultProxy::start(&dst.endpoint, Faults::default());
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    // Leases that cannot expire: the coordinator waits for every one to be reported.
    let mut args: Vec<&str> = patient_local_fleet_cp("4M");
    args.extend(["--src-endpoint", &src.endpoint, "--dst-endpoint", &ep]);
    let mut child = command(&args, &src, &dst, &journal)
        .process_group(0)
        .spawn()
        .unwrap();
    let (url, stderr) = coordinator_url(&mut child);
    wait_status(&url, "the workers at work", |s| {
        s["objects_done"].as_u64() >= Some(3)
    });
    let group = child.id() as i32;
    assert_eq!(unsafe { libc::kill(-group, libc::SIGINT) }, 0);
    let code = wait_exit(&mut child, 60);
    let lines = all_lines(&stderr);
    assert_eq!(code, 130, "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("every worker exited")),
        "{lines:#?}"
    );
    // The workers finished what they had in flight and reported it, as a stopped `cp`
    // keeps its bytes in flight: the journal holds every byte the store received, so the
    // rerun sends none of them again (the workers had dropped their parts in flight, and
    // the objects finished in leases they had not finished).
    assert_eq!(journaled_bytes(&journal), proxy.injected().put_body_bytes);
}

/// `kill -9` of a local fleet ends its workers too (they got SIGTERM as their parent died,
/// and left): they had gone on working, orphaned, for their minute of `--wait`, beside a
/// rerun. The rerun takes the killed run's leases back at once (its workers are gone) and
/// finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_fleet_killed_leaves_no_worker_behind() {
    let files = leaving_files();
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let args = patient_local_fleet_cp("4M");
    let mut child = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, _stderr) = coordinator_url(&mut child);
    let s = wait_status(&url, "the workers at work", |s| {
        s["objects_done"].as_u64() >= Some(3)
    });
    let workers: Vec<i32> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as i32)
        .collect();
    assert_eq!(workers.len(), 2, "{s}");
    kill9(child.id());
    assert_ne!(wait_exit(&mut child, 10), 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    // SAFETY: signal 0 only asks whether the process is there.
    let alive = || {
        workers
            .iter()
            .filter(|&&p| unsafe { libc::kill(p, 0) } == 0)
            .count()
    };
    while alive() > 0 {
        assert!(
            Instant::now() < deadline,
            "workers still running 15 s after their fleet"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let granted: Vec<u64> = leases(&journal)
        .iter()
        .filter(|l| l.state == LEASE_GRANTED)
        .map(|l| l.lease_id)
        .collect();
    assert!(!granted.is_empty());
    let started = Instant::now();
    let mut rerun = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (_url, stderr) = coordinator_url(&mut rerun);
    let out = succeeded(&mut rerun, &stderr);
    let report = last_json_line(&out).unwrap();
    let done =
        report["objects_copied"].as_u64().unwrap() + report["objects_resumed"].as_u64().unwrap();
    assert_eq!(done, files.len() as u64, "{report}");
    assert_eq!(report["verification"]["missing"], 0, "{report}");
    assert_eq!(read_bucket(&dst, "dst", "data/").await, files);
    // Not a lease timeout (60 s) of waiting for workers that are gone, nor a second worker
    // doing their work beside them: their leases went back at once.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(25), "{took:?}");
    let after = leases(&journal);
    for id in granted {
        let l = after.iter().find(|l| l.lease_id == id).unwrap();
        assert_eq!(l.state, LEASE_RETURNED, "{l:?}");
    }
}

/// SIGTERM to a local fleet's process alone (a scheduler stopping it) stops its workers too,
/// at once: they leave while the coordinator still answers, so their leases end `returned`,
/// and the whole ends in seconds, interrupted. The workers had worked on for ~15 s, then
/// failed to report to a coordinator that had stopped listening.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_a_local_fleet_stops_its_workers_at_once() {
    let files = leaving_files();
    let (src, dst) = servers_with(&files).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let args = patient_local_fleet_cp("2M");
    let mut child = command(&args, &src, &dst, &journal).spawn().unwrap();
    let (url, stderr) = coordinator_url(&mut child);
    wait_status(&url, "the workers at work", |s| {
        s["objects_done"].as_u64() >= Some(3)
    });
    let stopped = Instant::now();
    // SAFETY: a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let code = wait_exit(&mut child, 60);
    let took = stopped.elapsed();
    let lines = all_lines(&stderr);
    assert_eq!(code, 130, "{lines:#?}");
    assert!(took < Duration::from_secs(10), "{took:?}: {lines:#?}");
    let leases = leases(&journal);
    assert!(
        leases.iter().all(|l| l.state != LEASE_GRANTED),
        "{leases:#?}"
    );
}

/// A fleet's `sync` killed whole (`kill -9` of its process group: coordinator and worker)
/// after a worker wrote an object and before the coordinator recorded it: the rerun copies
/// that object again although its listing finds it up to date, as a single machine's sync
/// does (`resume.rs`), so a destination object changed in between (same size) is mended.
/// The proxy holds the store's answer to that write, so the kill lands in the window.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_sync_killed_between_a_write_and_its_record_copies_that_object_again() {
    use std::os::unix::process::CommandExt;
    let files: BTreeMap<String, Vec<u8>> = (0..5)
        .map(|i| (format!("f{i}"), data(1000 + i, i as u64)))
        .collect();
    let (src, dst) = servers_with(&files).await;
    let proxy = FaultProxy::start(
        &dst.endpoint,
        Faults {
            delay_answer: Some(Duration::from_secs(60)),
            only_methods: vec!["PUT".into()],
            path_contains: Some("data/f2".into()),
            ..Faults::default()
        },
    );
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.sqlite");
    let sync = [
        "sync",
        "s3://src/data",
        "s3://dst/data",
        "--json",
        "--src-endpoint",
        &src.endpoint,
        "--dst-endpoint",
        &ep,
    ];
    let mut fleet = command(
        &[&sync[..], &["--workers", "1"]].concat(),
        &src,
        &dst,
        &journal,
    )
    .process_group(0)
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dst
        .list("dst", "data/")
        .await
        .iter()
        .any(|(k, _)| k == "data/f2")
    {
        assert!(Instant::now() < deadline, "data/f2 not written within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        unsafe { libc::kill(-(fleet.id() as i32), libc::SIGKILL) },
        0
    );
    fleet.wait().unwrap();
    let mut changed = files["f2"].clone();
    changed[0] ^= 1;
    dst.put("dst", "data/f2", &changed).await;

    // The same transfer (its identity has the same endpoints), on one machine.
    proxy.set_faults(Faults::default());
    let rerun = command(&sync, &src, &dst, &journal).output().unwrap();
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert_eq!(rerun.status.code(), Some(0), "{stderr}");
    let mended = read_bucket(&dst, "dst", "data/").await == files;
    assert!(mended, "data/f2 stays changed: {stderr}");
}

/// A worker that cannot even open a side (here: no credentials at all for the destination)
/// leaves the fleet too, before it takes any work: the coordinator shows why, and with no
/// other worker it stops with that error, its exit code, and the credentials hint once.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_cannot_open_a_side_leaves_too() {
    let mut fleet = Leaving::start("2s").await;
    let mut bad = fleet.worker(&[
        ("SKYHAUL_DST_ACCESS_KEY_ID", None),
        ("SKYHAUL_DST_SECRET_ACCESS_KEY", None),
    ]);
    let (code, said) = exited(&mut bad);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("no usable credentials") && said.contains("this worker left the fleet"),
        "{said}"
    );
    let s = status(&fleet.url);
    let left = s["workers"][0]["left"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"));
    assert!(left.contains("no usable credentials"), "{s}");
    assert_eq!(s["leases_granted"], 0, "{s}");
    let code = wait_exit(&mut fleet.coordinator, 60);
    let lines = all_lines(&fleet.stderr);
    assert_eq!(code, 4, "{lines:#?}");
    let error = error_line(&lines);
    assert!(
        error.contains("no usable credentials") && error.contains("no worker is left"),
        "{error}"
    );
    assert_eq!(error.matches("set dst credentials").count(), 1, "{error}");
}

/// The access key of a worker whose source credentials lack the permission to read: the
/// proxy in front of the source answers its every request 403 AccessDenied, as S3 does for
/// credentials it accepts but whose policy does not allow the read.
const NO_READ_KEY: &str = "NOREADPERMISSION";

/// A worker whose credentials are accepted but may not read the source is denied each
/// object it is handed. No denial counts as a failure: each item goes back to the queue for
/// another worker, and the worker leaves the fleet after a hundred denials in a row (exit 4,
/// naming `--exclude` in case only those objects were off limits). A healthy worker that
/// joins later then copies everything, the denied items included, each once.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_denied_every_read_hands_its_items_on_and_leaves() {
    let mut files: BTreeMap<String, Vec<u8>> = (0..110)
        .map(|i| (format!("s/{i:03}.bin"), data(4_000 + i * 7, i as u64)))
        .collect();
    files.insert("l/large.bin".into(), data(12 * MIB, 99));
    let denied = Faults {
        access_denied_403: 1.0,
        access_key: Some(NO_READ_KEY.into()),
        ..Faults::default()
    };
    let mut fleet = Leaving::with(files, "30s", Some(denied)).await;
    let mut bad = fleet.worker(&[("SKYHAUL_SRC_ACCESS_KEY_ID", Some(NO_READ_KEY))]);
    let (code, said) = exited(&mut bad);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("objects in a row were denied")
            && said.contains("lack a permission")
            && said.contains("--exclude")
            && said.contains("this worker left the fleet"),
        "{said}"
    );
    let s = status(&fleet.url);
    let w = &s["workers"][0];
    let bad_id = w["id"].as_str().unwrap().to_string();
    let left = w["left"].as_str().unwrap_or_else(|| panic!("{s}"));
    let in_a_row: u64 = left
        .split(" objects in a row were denied")
        .next()
        .and_then(|before| before.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{left}"));
    assert!(in_a_row >= 100, "{left}");
    assert_eq!(s["objects_failed"], 0, "{s}");
    // The worker decided once none of its leases was out: every denial was reported.
    let retried = s["denials_retried"].as_u64().unwrap();
    assert_eq!(retried, in_a_row, "{s}");
    let denials = fleet.injected().access_denied_403;
    assert!(denials >= in_a_row, "{denials} denials");

    let mut good = spawn_worker(&fleet.url, &[], &fleet.src, &fleet.dst, fleet.dir.path());
    let out = succeeded(&mut fleet.coordinator, &fleet.stderr);
    copied_all(&out, &fleet.dst, &fleet.files).await;
    assert_eq!(wait_exit(&mut good, 30), 0, "the healthy worker failed");
    let leases = leases(&fleet.journal());
    let denied_items: Vec<&String> = leases
        .iter()
        .filter(|l| l.worker == bad_id)
        .flat_map(|l| l.items.iter())
        .filter(|(_, o)| o.as_deref() == Some("denied"))
        .map(|(item, _)| item)
        .collect();
    // Counted by object: the parts of one upload are one denial.
    let objects: std::collections::HashSet<&str> = denied_items
        .iter()
        .map(|item| item.split(" #").next().unwrap())
        .collect();
    assert_eq!(objects.len() as u64, retried, "{leases:#?}");
    for item in denied_items {
        assert_ne!(done_by(&leases, item).worker, bad_id, "{item}");
    }
    let done = done_counts(&leases);
    assert!(done.values().all(|&n| n == 1), "work done twice: {done:?}");
    // The denials the proxy answered are all the bad worker's: nothing else was refused.
    assert_eq!(fleet.injected().access_denied_403, denials);
}

/// Two workers copy [`leaving_files`] while the proxy denies every GET of `file` (its whole
/// read, or each of its parts): the object fails alone, its failure says both workers were
/// denied it, and the rest is copied. Returns the fleet, for its journal and proxy.
async fn denied_to_two_workers(file: &str) -> Leaving {
    let denied = Faults {
        access_denied_403: 1.0,
        ..Faults::default()
    };
    refused_to_two_workers(file, denied, "AccessDenied").await
}

/// [`denied_to_two_workers`] with the refusal `faults` inject (on every GET of `file`),
/// whose error names `error`.
async fn refused_to_two_workers(file: &str, faults: Faults, error: &str) -> Leaving {
    let refused = Faults {
        only_methods: vec!["GET".into()],
        path_contains: Some(file.into()),
        ..faults
    };
    let mut fleet = Leaving::with(leaving_files(), "30s", Some(refused)).await;
    let mut workers = [fleet.worker(&[]), fleet.worker(&[])];
    let code = wait_exit(&mut fleet.coordinator, 120);
    let lines = all_lines(&fleet.stderr);
    let mut out = String::new();
    let stdout = fleet.coordinator.stdout.as_mut().unwrap();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(code, 1, "{lines:#?}\n{out}");
    let report = last_json_line(&out).unwrap();
    assert_eq!(report["objects_failed"], 1, "{report}");
    assert_eq!(
        report["objects_copied"],
        fleet.files.len() as u64 - 1,
        "{report}"
    );
    let failure = &report["failures"][0];
    assert_eq!(failure["key"], format!("data/{file}"), "{report}");
    let said = failure["error"].as_str().unwrap();
    assert!(
        said.contains(error) && said.contains("was denied it too"),
        "{said}"
    );
    for w in &mut workers {
        assert_eq!(wait_exit(w, 30), 0, "a worker failed");
    }
    let mut rest = fleet.files.clone();
    rest.remove(file);
    assert_eq!(read_bucket(&fleet.dst, "dst", "data/").await, rest);
    fleet
}

/// An object that no worker may read is tried by a second worker before it counts as
/// failed: once by each worker, a denial and then the failure.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_denied_to_two_workers_fails_alone() {
    let fleet = denied_to_two_workers("s/05.bin").await;
    let leases = leases(&fleet.journal());
    let item = "object data/s/05.bin";
    let tries: Vec<(&str, Option<&str>)> = leases
        .iter()
        .filter_map(|l| Some((l.worker.as_str(), l.items.get(item)?.as_deref())))
        .collect();
    // In either order: a lease doubled at the end may report before its original.
    let mut outcomes: Vec<Option<&str>> = tries.iter().map(|t| t.1).collect();
    outcomes.sort();
    assert_eq!(outcomes, [Some("denied"), Some("failed")], "{tries:?}");
    assert_ne!(tries[0].0, tries[1].0, "{tries:?}");
    assert_eq!(fleet.injected().access_denied_403, 2);
}

/// A signature the store refuses for one object, to workers whose credentials it accepted
/// when they joined, is that object's: it fails alone after both workers tried it, as a
/// denied one does, and neither worker leaves the fleet (each would have left at it in turn,
/// and the fleet stopped with nothing left to copy the rest).
#[tokio::test(flavor = "multi_thread")]
async fn an_objects_refused_signature_fails_alone_in_a_fleet() {
    let refused = Faults {
        signature_mismatch_403: 1.0,
        ..Faults::default()
    };
    let fleet = refused_to_two_workers("s/05.bin", refused, "SignatureDoesNotMatch").await;
    assert_eq!(fleet.injected().signature_mismatch_403, 2);
}

/// The parts of a striped object no worker may read: the first worker denied a part is
/// kept from all of them, the second worker's denial fails the object (its upload
/// aborted, its other parts dropped), and no part is done.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_whose_parts_are_denied_to_two_workers_fails_alone() {
    let fleet = denied_to_two_workers("l/large.bin").await;
    let leases = leases(&fleet.journal());
    let outcomes: Vec<(&str, Option<&str>)> = leases
        .iter()
        .flat_map(|l| {
            l.items
                .iter()
                .filter(|(item, _)| item.starts_with("part "))
                .map(|(_, o)| (l.worker.as_str(), o.as_deref()))
        })
        .collect();
    let by = |outcome| {
        outcomes
            .iter()
            .filter(|o| o.1 == Some(outcome))
            .map(|o| o.0)
            .collect::<std::collections::HashSet<_>>()
    };
    let (denied, failed) = (by("denied"), by("failed"));
    assert!(by("done").is_empty(), "{outcomes:?}");
    assert_eq!((denied.len(), failed.len()), (1, 1), "{outcomes:?}");
    assert!(denied.is_disjoint(&failed), "{outcomes:?}");
}

/// A fleet whose every read is denied, to each worker, ends as `cp` does: with the denial
/// and exit 4 (access denied), not as a transfer of which some objects failed (exit 1).
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_denied_every_object_exits_as_denied() {
    // The objects' reads, not the listing.
    let denied = Faults {
        access_denied_403: 1.0,
        only_methods: vec!["GET".into()],
        path_contains: Some("/data/".into()),
        ..Faults::default()
    };
    let mut fleet = Leaving::with(leaving_files(), "30s", Some(denied)).await;
    let mut workers = [fleet.worker(&[]), fleet.worker(&[])];
    let code = wait_exit(&mut fleet.coordinator, 120);
    let lines = all_lines(&fleet.stderr);
    assert_eq!(code, 4, "{lines:#?}");
    let error = error_line(&lines);
    assert!(error.contains("AccessDenied"), "{lines:#?}");
    // Each object was tried by both workers (25 of them, fewer than make a worker leave).
    for w in &mut workers {
        assert_eq!(wait_exit(w, 30), 0, "a worker failed");
    }
    let outcomes: Vec<Option<String>> = leases(&fleet.journal())
        .into_iter()
        .flat_map(|l| l.items.into_values())
        .collect();
    assert!(outcomes.contains(&Some("denied".into())), "{outcomes:?}");
    assert!(outcomes.contains(&Some("failed".into())), "{outcomes:?}");
    assert!(!outcomes.contains(&Some("done".into())), "{outcomes:?}");
    assert!(read_bucket(&fleet.dst, "dst", "data/").await.is_empty());
}

/// With no other worker to try it, an object denied to the only worker waits four lease
/// timeouts for one to join, then goes back to that worker; its second denial is the
/// object's failure, which says why nobody else tried it.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_denied_to_the_only_worker_fails_after_the_wait() {
    let denied = Faults {
        access_denied_403: 1.0,
        path_contains: Some("s/05.bin".into()),
        ..Faults::default()
    };
    // Long enough that no lease expires on a busy machine (an expiry would add a try).
    let mut fleet = Leaving::with(leaving_files(), "10s", Some(denied)).await;
    let started = Instant::now();
    let mut worker = fleet.worker(&[]);
    let code = wait_exit(&mut fleet.coordinator, 120);
    let took = started.elapsed();
    let lines = all_lines(&fleet.stderr);
    let mut out = String::new();
    let stdout = fleet.coordinator.stdout.as_mut().unwrap();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(code, 1, "{lines:#?}\n{out}");
    assert!(
        took >= Duration::from_secs(40),
        "no wait for another worker: {took:?}"
    );
    let report = last_json_line(&out).unwrap();
    assert_eq!(report["objects_failed"], 1, "{report}");
    let error = report["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("AccessDenied") && error.contains("no other worker finished a try"),
        "{error}"
    );
    assert_eq!(wait_exit(&mut worker, 30), 0, "the worker failed");
    let leases = leases(&fleet.journal());
    let tries: Vec<Option<&str>> = leases
        .iter()
        .filter_map(|l| l.items.get("object data/s/05.bin").map(|o| o.as_deref()))
        .collect();
    assert_eq!(tries, [Some("denied"), Some("failed")], "{leases:#?}");
    assert_eq!(fleet.injected().access_denied_403, 2);
}
