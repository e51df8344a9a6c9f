//! Resume and crash safety: kill -9 at random moments, Ctrl-C, a lost journal, an outage.

mod common;

use common::*;
use skyhaul_journal::Journal;
use skyhaul_testkit::{AzuriteServer, FaultProxy, Faults, S3Kind, S3Server};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const BUDGET: u64 = 16 << 20;

/// Many small objects and several multipart-sized ones (5 MiB parts).
fn workload() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in 0..300 {
        m.insert(
            format!("small/{:03}/{i}.bin", i % 7),
            data(40_000 + i * 13, i as u64),
        );
    }
    for i in 0..6 {
        m.insert(
            format!("large/{i}.bin"),
            data(23 * MIB + i * 4096, 1000 + i as u64),
        );
    }
    m
}

/// A server with an empty bucket `dst`; the workload written under `src`; the journal's
/// path; the temporary directory holding both.
async fn setup(kind: S3Kind) -> (S3Server, Files, PathBuf, PathBuf, tempfile::TempDir) {
    let s3 = S3Server::start(kind);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let files = workload();
    let src = tmp.path().join("src");
    write_tree(&src, &files);
    (s3, files, tmp.path().join("journal.sqlite"), src, tmp)
}

type Files = BTreeMap<String, Vec<u8>>;

fn spawn(args: &[&str], dst: &S3Server, journal: &Path) -> Child {
    spawn_with(args, &[("DST", dst)], journal)
}

/// `skyhaul ARGS` with each server's credentials for its side (`"SRC"`, `"DST"`).
fn spawn_with(args: &[&str], sides: &[(&str, &S3Server)], journal: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyhaul"));
    cmd.args(args)
        .env("SKYHAUL_JOURNAL", journal)
        .env("SKYHAUL_LOG", "warn,skyhaul_engine=info")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (side, server) in sides {
        cmd.envs(server.env_for(side));
    }
    cmd.spawn().expect("skyhaul starts")
}

/// `skyhaul cp -r --json src dst args` between two directories, with its own journal.
fn spawn_local(src: &Path, dst: &Path, journal: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_skyhaul"))
        .args(["cp", "-r", "--json"])
        .args([src, dst])
        .args(args)
        .env("SKYHAUL_JOURNAL", journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skyhaul starts")
}

/// Fails the test with skyhaul's stderr unless it exited with 0.
fn assert_succeeded(out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Small parts and a small budget: many parts, few in flight.
const TUNING: [&str; 8] = [
    "--multipart-threshold",
    "5M",
    "--part-size",
    "5M",
    "--memory-budget",
    "16M",
    "--max-connections",
    "4",
];

fn copy_args<'a>(src: &'a str, endpoint: &'a str) -> Vec<&'a str> {
    let mut args = vec!["cp", "-r", src, "s3://dst/data", "--dst-endpoint", endpoint];
    args.extend(TUNING);
    args.push("--json");
    args
}

/// `signal` to `child` once the journal holds a finished part (SIGINT: Ctrl-C; SIGTERM: a
/// scheduler preempting it), and its exit as interrupted.
fn interrupt_once_a_part_is_journaled(child: Child, journal: &Path, signal: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while journaled_bytes(journal) == 0 {
        assert!(Instant::now() < deadline, "no part journaled within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_then_resume_on_moto() {
    kill_9_at_random_moments_then_resume(S3Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_then_resume_on_s3s_fs() {
    kill_9_at_random_moments_then_resume(S3Kind::S3sFs).await;
}

/// Kills the copy with SIGKILL at random moments, at least 10 times, rerunning each time;
/// then the destination must equal the source, no upload may be left open, and each run
/// may have sent at most the memory budget that the journal does not show as done.
async fn kill_9_at_random_moments_then_resume(kind: S3Kind) {
    let (s3, files, journal, src, _tmp) = setup(kind).await;
    // The proxy injects nothing; it counts the bytes really uploaded.
    let proxy = FaultProxy::start(&s3.endpoint, Faults::default());
    let total: u64 = files.values().map(|v| v.len() as u64).sum();
    let ep = proxy.endpoint();
    let args = copy_args(src.to_str().unwrap(), &ep);

    let mut kills = 0;
    let mut restarted_total = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut finished = false;
    for round in 0..60 {
        let before_journal = journaled_bytes(&journal);
        let before_sent = proxy.injected().put_body_bytes;
        let mut child = spawn(&args, &s3, &journal);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill somewhere in the first ~0.33 s, so that it takes many rounds to finish.
        let delay = Duration::from_millis(80 + seed % 250);
        let started = Instant::now();
        let mut exited = None;
        while started.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(status) = exited {
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                status.code(),
                Some(0),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            finished = true;
            break;
        }
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        kills += 1;
        // s3s-fs forgets an upload when CompleteMultipartUpload starts, not when it ends: a
        // kill during that request loses the upload, and the next run must send that
        // object again in full. skyhaul says so; those bytes are the server's doing.
        let restarted: u64 = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.split("starting ").nth(1)?.strip_suffix(" afresh"))
            .filter_map(|k| files.get(k))
            .map(|v| v.len() as u64)
            .sum();
        restarted_total += restarted;
        // What this run uploaded beyond the progress the journal gained is what the next
        // run sends again. Every byte sent holds the memory budget until the journal has
        // committed it as done, so that is at most the budget.
        let sent = proxy.injected().put_body_bytes - before_sent;
        let gained = journaled_bytes(&journal).saturating_sub(before_journal);
        let wasted = sent.saturating_sub(gained).saturating_sub(restarted);
        assert!(
            wasted <= BUDGET,
            "round {round}: {wasted} bytes uploaded but not journaled (budget {BUDGET}, {restarted} restarted)"
        );
        if kills >= 10 && round > 40 {
            break;
        }
    }
    if !finished {
        let out = spawn(&args, &s3, &journal).wait_with_output().unwrap();
        assert_succeeded(&out);
    }
    assert!(kills >= 10, "the transfer was killed {kills} times");
    assert_eq!(
        read_bucket(&s3, "dst", "data/").await,
        files,
        "identical after {kills} kills"
    );
    let j = Journal::open(&journal).unwrap();
    let t = &j.transfers().unwrap()[0];
    assert_eq!(
        (t.status(), t.open_uploads),
        ("complete", 0),
        "every journaled upload was completed or aborted"
    );
    // A kill between CreateMultipartUpload and the journal's record of it leaves an upload
    // only the server knows; the reruns find it by listing uploads. s3s-fs cannot list
    // them (501), so there at most one per kill may remain; a server that lists them must
    // have none left.
    let leaked = s3.list_multipart_uploads("dst").await;
    let allowed = match kind {
        S3Kind::S3sFs => kills,
        _ => 0,
    };
    assert!(
        leaked.len() <= allowed,
        "{} uploads left open after {kills} kills on {kind}: {leaked:?}",
        leaked.len()
    );
    let uploaded = proxy.injected().put_body_bytes;
    assert!(
        uploaded <= total + restarted_total + kills as u64 * BUDGET,
        "{uploaded} bytes sent for {total}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_gracefully_and_the_rerun_resumes() {
    let (s3, files, journal, src, _tmp) = setup(S3Kind::S3sFs).await;
    let args = copy_args(src.to_str().unwrap(), &s3.endpoint);
    let child = spawn(&args, &s3, &journal);
    std::thread::sleep(Duration::from_millis(400));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        signalled.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = last_json_line(&stdout).expect("a report of what was done");
    let copied = report["objects_copied"].as_u64().unwrap();
    assert!(
        copied < files.len() as u64,
        "interrupted before the end ({copied})"
    );
    // The report says so: without failures it would read as a finished copy.
    assert_eq!(report["interrupted"], true, "{report}");
    // A dry run now tells what is left: it leaves out what the journal says is done, as
    // the rerun will.
    let dry = [&args[..], &["--dry-run"]].concat();
    let plan = spawn(&dry, &s3, &journal).wait_with_output().unwrap();
    let plan = last_json_line(&String::from_utf8_lossy(&plan.stdout)).unwrap();
    assert_eq!(plan["objects_resumed"], copied, "{plan}");
    assert_eq!(
        plan["objects"].as_u64().unwrap() + copied,
        files.len() as u64,
        "{plan}"
    );
    // So does `plan`, whose estimate is of what is left.
    let estimate = [&["plan"][..], &args[1..]].concat();
    let plan = spawn(&estimate, &s3, &journal).wait_with_output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["objects_resumed"], copied, "{plan}");
    assert_eq!(
        plan["objects"].as_u64().unwrap() + copied,
        files.len() as u64,
        "{plan}"
    );
    // Nothing partial is visible: whatever is there is complete and right.
    let got = read_bucket(&s3, "dst", "data/").await;
    for (k, v) in &got {
        assert!(files.get(k) == Some(v), "{k} is partial or wrong");
    }

    let rerun = spawn(&args, &s3, &journal).wait_with_output().unwrap();
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let report = last_json_line(&String::from_utf8_lossy(&rerun.stdout)).unwrap();
    assert!(
        report["objects_resumed"].as_u64().unwrap() >= copied,
        "{report}"
    );
    assert_eq!(report["interrupted"], false, "{report}");
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

/// The rerun of an interrupted striped object sends only its missing parts, and its report
/// tells them apart: `bytes_moved` is this run's, `bytes_reused` the earlier run's parts,
/// and the rate is this run's.
#[tokio::test(flavor = "multi_thread")]
async fn the_report_of_a_resumed_upload_counts_its_reused_parts_apart() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let size = 30 * MIB;
    let files = BTreeMap::from([("big.bin".to_string(), data(size, 7))]);
    write_tree(&tmp.path().join("src"), &files);
    let (journal, src) = (tmp.path().join("journal.sqlite"), tmp.path().join("src"));
    let args = copy_args(src.to_str().unwrap(), &s3.endpoint);
    let mut slow = args.clone();
    slow.extend(["--bwlimit", "8M"]);
    interrupt_once_a_part_is_journaled(spawn(&slow, &s3, &journal), &journal, libc::SIGINT);
    let sent_before = journaled_bytes(&journal);

    let rerun = spawn(&args, &s3, &journal).wait_with_output().unwrap();
    assert_succeeded(&rerun);
    let report = last_json_line(&String::from_utf8_lossy(&rerun.stdout)).unwrap();
    let count = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {report}"))
    };
    assert_eq!(count("bytes_copied"), size as u64, "{report}");
    assert_eq!(count("bytes_reused"), sent_before, "{report}");
    assert_eq!(
        count("bytes_moved") + count("bytes_reused"),
        size as u64,
        "{report}"
    );
    let rate = report["bytes_per_second"].as_f64().unwrap();
    let seconds = report["seconds"].as_f64().unwrap();
    let moved_rate = (size as u64 - sent_before) as f64 / seconds;
    assert!(
        (rate - moved_rate).abs() <= moved_rate * 1e-6 + 1.0,
        "{report}"
    );
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

/// A striped copy that the store makes itself (both sides on one endpoint and account:
/// parts of 64 MiB, each an UploadPartCopy) continues from its finished parts after an
/// interruption, as one whose bytes pass through here does: its rerun copied every part
/// again, in a new upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_striped_server_side_copy_resumes_from_its_finished_parts() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("src").await;
    s3.create_bucket("dst").await;
    // Above 256 MiB, where a server-side copy goes in parts: 4 of 64 MiB and 1 of 1 MiB.
    let size = 257 * MIB;
    let files = BTreeMap::from([("big.bin".to_string(), data(size, 11))]);
    fill_bucket(&s3, "src", "", &files).await;
    // Each part copy is held half a second, so that the interruption comes between parts.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            only_methods: vec!["PUT".into()],
            path_contains: Some("partNumber=".into()),
            delay: Some(Duration::from_millis(500)),
            ..Faults::default()
        },
    );
    let ep = proxy.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal.sqlite");
    let args = [
        "cp",
        "-r",
        "s3://src/",
        "s3://dst/data/",
        "--src-endpoint",
        &ep,
        "--dst-endpoint",
        &ep,
        "--json",
    ];
    let sides = [("SRC", &s3), ("DST", &s3)];
    let one_at_a_time = [&args[..], &["--max-connections", "1"]].concat();
    interrupt_once_a_part_is_journaled(
        spawn_with(&one_at_a_time, &sides, &journal),
        &journal,
        libc::SIGINT,
    );
    let sent_before = journaled_bytes(&journal);
    assert!(sent_before < size as u64, "interrupted with parts left");

    let rerun = spawn_with(&args, &sides, &journal)
        .wait_with_output()
        .unwrap();
    assert_succeeded(&rerun);
    let report = last_json_line(&String::from_utf8_lossy(&rerun.stdout)).unwrap();
    assert_eq!(report["server_side_copies"], 1, "{report}");
    assert_eq!(report["bytes_reused"], sent_before, "{report}");
    assert_eq!(report["verification"]["checksum_ok"], 1, "{report}");
    // Every part was copied once, over both runs.
    assert_eq!(proxy.injected().delayed, size.div_ceil(64 * MIB) as u64);
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

/// A rerun whose journaled upload is gone (aborted by a lifecycle rule, or its temporary
/// file removed) sends the object afresh, and reuses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_upload_that_is_gone_reuses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let size = 30 * MIB;
    let files = BTreeMap::from([("big.bin".to_string(), data(size, 9))]);
    write_tree(&src, &files);
    let journal = tmp.path().join("journal.sqlite");
    let run = |extra: &[&str]| spawn_local(&src, &dst, &journal, &[&TUNING[..], extra].concat());
    // SIGTERM, as Kubernetes or SLURM preempting the copy: it stops as Ctrl-C does.
    interrupt_once_a_part_is_journaled(run(&["--bwlimit", "8M"]), &journal, libc::SIGTERM);
    // The upload's temporary file is what a local upload is: remove it.
    for entry in std::fs::read_dir(&dst).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".skyhaul-tmp") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let rerun = run(&[]).wait_with_output().unwrap();
    assert_succeeded(&rerun);
    let report = last_json_line(&String::from_utf8_lossy(&rerun.stdout)).unwrap();
    assert_eq!(report["bytes_reused"], 0, "{report}");
    assert_eq!(report["bytes_moved"], size as u64, "{report}");
    assert_eq!(read_tree(&dst), files);
}

/// The temporary files under `dir`, at any depth.
fn temporaries(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(temporaries(&path));
        } else if path.to_string_lossy().ends_with(".skyhaul-tmp") {
            found.insert(path);
        }
    }
    found
}

/// `kill -9` leaves the temporary file of every write in flight (`.NAME.ID.skyhaul-tmp`,
/// which no process holds any more); the rerun, which writes those objects again, removes
/// them, whether it writes them whole or striped, at the top or deeper. One that a live
/// write holds (another process at work on the same key) is left alone, and so is one of a
/// key the rerun does not write. (Made by hand: a kill lands too much by chance to leave
/// them where a test needs them.)
#[test]
fn a_write_removes_the_temporary_files_that_stopped_writes_left() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let files: Files = [
        ("top.bin", 1000),
        ("whole/0.bin", 3000),
        ("whole/1.bin", 2000),
        ("striped/big.bin", 12 * MIB),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (k, len))| (k.to_string(), data(len, 40 + i as u64)))
    .collect();
    write_tree(&src, &files);
    let leftover = |dir: &str, name: &str, id: &str| {
        let path = dst.join(dir).join(format!(".{name}.{id}.skyhaul-tmp"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"half of it").unwrap();
        path
    };
    leftover("", "top.bin", "5ab23e21392eb036");
    leftover("whole", "0.bin", "0123456789abcdef");
    leftover("striped", "big.bin", "00000000000000dd");
    let live = leftover("whole", "0.bin", "00000000000000aa");
    let writing = std::fs::File::open(&live).unwrap();
    writing.lock().unwrap();
    let gone = leftover("whole", "gone.bin", "00000000000000bb");

    let journal = tmp.path().join("journal.sqlite");
    let striped = ["--multipart-threshold", "5M", "--part-size", "5M"];
    let run = spawn_local(&src, &dst, &journal, &striped);
    assert_succeeded(&run.wait_with_output().unwrap());
    let kept = std::collections::BTreeSet::from([live.clone(), gone]);
    assert_eq!(temporaries(&dst), kept);
    drop(writing);
    std::fs::remove_file(&live).unwrap();
    let mut copied = read_tree(&dst);
    copied.retain(|k, _| !k.ends_with(".skyhaul-tmp"));
    assert_eq!(copied, files);
}

/// Under a low `--bwlimit`, Ctrl-C does not wait for the shares of bandwidth that parts and
/// objects already started still wait for (a minute here): they stop unsent, and the rerun
/// sends them.
#[test]
fn ctrl_c_under_a_low_bwlimit_does_not_wait_for_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    // A striped file and whole ones, so both ways of reading wait on the limit.
    let mut files = BTreeMap::from([("big.bin".to_string(), data(60 * MIB, 11))]);
    for i in 0..6 {
        files.insert(format!("whole/{i}.bin"), data(2 * MIB, 20 + i));
    }
    write_tree(&src, &files);
    let journal = tmp.path().join("journal.sqlite");
    let run = |extra: &[&str]| {
        let tuning = ["--multipart-threshold", "5M", "--part-size", "5M"];
        spawn_local(&src, &dst, &journal, &[&tuning[..], extra].concat())
    };
    // 72 MiB at 1 MiB/s, with a budget that lets every part start at once: the parts
    // already started would keep a graceful stop waiting for about a minute.
    let child = run(&["--bwlimit", "1M", "--memory-budget", "128M"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while journaled_bytes(&journal) == 0 {
        assert!(Instant::now() < deadline, "nothing journaled within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = signalled.elapsed();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        waited < Duration::from_secs(15),
        "Ctrl-C waited {waited:?} for the bandwidth limit"
    );
    let report = last_json_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["objects_failed"], 0, "stopped, not failed: {report}");
    // The upload's temporary file stays for the rerun; nothing else is partial.
    for (k, v) in read_tree(&dst) {
        if !k.ends_with(".skyhaul-tmp") {
            assert!(files.get(&k) == Some(&v), "{k} is partial or wrong");
        }
    }

    let rerun = run(&[]).wait_with_output().unwrap();
    assert_succeeded(&rerun);
    assert_eq!(read_tree(&dst), files);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_ctrl_c_stops_at_once_and_the_rerun_still_resumes() {
    let (s3, files, journal, src, _tmp) = setup(S3Kind::S3sFs).await;
    // Every part upload is held 5 s on its way: a graceful stop would wait for it.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            delay: Some(Duration::from_secs(5)),
            only_methods: vec!["PUT".into()],
            path_contains: Some("partNumber=".into()),
            ..Faults::default()
        },
    );
    let ep = proxy.endpoint();
    let args = copy_args(src.to_str().unwrap(), &ep);
    let child = spawn(&args, &s3, &journal);
    // Interrupted only once a part is held. Waiting for any object to arrive (as this test
    // did) let the first Ctrl-C find only small objects in flight now and then, which
    // finish in a moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.injected().delayed == 0 {
        assert!(Instant::now() < deadline, "no part sent within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(300));
    let mut child = child;
    if let Some(status) = child.try_wait().unwrap() {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the first Ctrl-C lets the work in flight finish, but it ended at once ({status}): {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    unsafe { libc::kill(pid, libc::SIGINT) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the second Ctrl-C stopped it in {:?}",
        signalled.elapsed()
    );
    assert_eq!(out.status.code(), Some(130));
    // `--json`'s last line is an error event, as after any error.
    let last = last_json_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(
        (&last["event"], &last["exit_code"]),
        (&"error".into(), &130.into()),
        "{last}"
    );
    // Nothing partial is visible, and the rerun finishes the job.
    for (k, v) in read_bucket(&s3, "dst", "data/").await {
        assert!(files.get(&k) == Some(&v), "{k} is partial or wrong");
    }
    let rerun = spawn(
        &copy_args(src.to_str().unwrap(), &s3.endpoint),
        &s3,
        &journal,
    )
    .wait_with_output()
    .unwrap();
    assert_succeeded(&rerun);
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

/// `clean` takes the destination's GCS and Azure credentials as flags, as the copy did: it
/// refused `--dst-azure-account` (exit 2), which its own error asked for; only the
/// variables worked.
#[tokio::test(flavor = "multi_thread")]
async fn clean_takes_the_destinations_azure_credentials_as_flags() {
    let azure = AzuriteServer::start();
    azure.create_container("cont").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &BTreeMap::from([("big.bin".into(), data(30 * MIB, 5))]),
    );
    let journal = tmp.path().join("journal.sqlite");
    let skyhaul = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyhaul"));
        cmd.args(args)
            .args(["--dst-endpoint", &azure.endpoint])
            .args(["--dst-azure-account", &azure.account])
            .args(["--dst-azure-key", &azure.key])
            .env("SKYHAUL_JOURNAL", &journal)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let copy = [
        "cp",
        "-r",
        src.to_str().unwrap(),
        "az://cont/data/",
        "--bwlimit",
        "8M",
    ];
    let copy = [&copy[..], &TUNING[..4]].concat();
    interrupt_once_a_part_is_journaled(skyhaul(&copy).spawn().unwrap(), &journal, libc::SIGINT);
    let id = Journal::open(&journal).unwrap().transfers().unwrap()[0]
        .id
        .to_string();

    let out = skyhaul(&["clean", &id]).output().unwrap();
    assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("aborted 1 open upload"), "{said}");
    assert!(Journal::open(&journal)
        .unwrap()
        .transfers()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_journal_still_ends_right_and_status_and_clean_work() {
    // moto: S3's own semantics for uploads (NoSuchUpload, ListMultipartUploads), which
    // s3s-fs lacks, so that "clean aborted everything" can be checked at the server.
    let (s3, files, journal, src, _tmp) = setup(S3Kind::Moto).await;
    let args = copy_args(src.to_str().unwrap(), &s3.endpoint);

    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_skyhaul"))
            .args(["status", "--json", "--journal", journal.to_str().unwrap()])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        status(),
        serde_json::json!([]),
        "no journal yet, and none made"
    );
    assert!(!journal.exists(), "status creates no journal");
    let clean = |id: &str| {
        let mut clean = Command::new(env!("CARGO_BIN_EXE_skyhaul"));
        clean.args(["clean", id, "--journal", journal.to_str().unwrap()]);
        for (k, v) in s3.env_for("DST") {
            clean.env(k, v);
        }
        clean.output().unwrap()
    };

    // While it runs, it is held: status says so, and neither clean nor a second run of
    // the same transfer may touch its uploads.
    let slow = [&args[..], &["--bwlimit", "10M"]].concat();
    let mut child = spawn(&slow, &s3, &journal);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let listed = status();
        if listed[0]["state"] == "running" {
            break listed[0]["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "never seen running: {listed}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let busy = clean(&id[..6]);
    let again = spawn(&args, &s3, &journal).wait_with_output().unwrap();
    for out in [&busy, &again] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("is running in another skyhaul process"),
            "{stderr}"
        );
    }

    // Killed, it is stopped: clean aborts what it left open.
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = status();
    assert_eq!(listed[0]["state"], "stopped", "{listed}");
    assert_eq!(listed[0]["status"], "in progress", "{listed}");
    let out = clean(&id[..6]);
    assert_succeeded(&out);
    assert!(
        s3.list_multipart_uploads("dst").await.is_empty(),
        "clean aborted the open uploads"
    );
    assert_eq!(status(), serde_json::json!([]));

    // Interrupt again, then lose the journal: the rerun still produces the right result.
    let mut child = spawn(&args, &s3, &journal);
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", journal.display()));
    }
    let out = spawn(&args, &s3, &journal).wait_with_output().unwrap();
    assert_succeeded(&out);
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_transfer_rides_out_an_endpoint_outage() {
    let (s3, files, journal, src, _tmp) = setup(S3Kind::S3sFs).await;
    let proxy = FaultProxy::start(&s3.endpoint, Faults::default());
    let ep = proxy.endpoint();
    let args = copy_args(src.to_str().unwrap(), &ep);
    let child = spawn(&args, &s3, &journal);
    std::thread::sleep(Duration::from_millis(300));
    // The endpoint goes away (every connection reset) for three seconds, then comes back.
    proxy.set_faults(Faults {
        reset_connection: 1.0,
        ..Default::default()
    });
    std::thread::sleep(Duration::from_secs(3));
    let during = proxy.injected().reset_connection;
    proxy.set_faults(Faults::default());
    let out = child.wait_with_output().unwrap();
    assert_succeeded(&out);
    assert!(during > 0, "the outage refused requests");
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_created_but_never_journaled_are_found_and_aborted() {
    // moto lists open uploads (s3s-fs cannot, so there the README's lifecycle rule applies).
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("large.bin".to_string(), data(12 * MIB, 5));
    files.insert("small.bin".to_string(), data(1000, 6));
    write_tree(&tmp.path().join("src"), &files);
    let journal = tmp.path().join("journal.sqlite");
    let src = tmp.path().join("src");
    // Every CreateMultipartUpload answer is cut short: the server has created the upload,
    // skyhaul never learns its id, and retries.
    let lost_answers = Faults {
        truncate_response_body: 1.0,
        only_methods: vec!["POST".into()],
        path_contains: Some("?uploads".into()),
        ..Default::default()
    };
    let proxy = FaultProxy::start(&s3.endpoint, lost_answers.clone());
    let ep = proxy.endpoint();
    let args = |dst: &'static str| {
        let mut a = copy_args(src.to_str().unwrap(), &ep);
        a[3] = dst;
        a
    };

    // A crash while creating: killed after two creations whose answers were lost. The proxy
    // counts a fault when the request arrives, before the server has it; the third try is
    // sent only once the second's cut answer came back, so by then the server made both.
    let mut child = spawn(&args("s3://dst/crash"), &s3, &journal);
    let started = Instant::now();
    while proxy.injected().truncate_response_body < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no upload was created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let orphans = s3.list_multipart_uploads("dst").await;
    assert!(
        orphans.len() >= 2,
        "the server holds the orphans: {orphans:?}"
    );

    // The rerun finds them by the announcement in the journal and aborts them.
    proxy.set_faults(Faults::default());
    let out = spawn(&args("s3://dst/crash"), &s3, &journal)
        .wait_with_output()
        .unwrap();
    assert_succeeded(&out);
    assert_eq!(read_bucket(&s3, "dst", "crash/").await, files);
    assert_eq!(s3.list_multipart_uploads("dst").await, vec![]);

    // One lost answer and a retry that works, no crash: the run itself cleans up.
    proxy.set_faults(Faults {
        max_faults: Some(proxy.injected().total() + 1),
        ..lost_answers
    });
    let out = spawn(&args("s3://dst/lost"), &s3, &journal)
        .wait_with_output()
        .unwrap();
    assert_succeeded(&out);
    assert_eq!(read_bucket(&s3, "dst", "lost/").await, files);
    assert_eq!(s3.list_multipart_uploads("dst").await, vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_changes_mid_copy_is_reported_then_copied_anew() {
    // moto lists ETags, so every read carries If-Match with the listed one.
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("src").await;
    let old = data(12 * MIB, 21);
    s3.put("src", "d/big.bin", &old).await;
    s3.put("src", "d/small.bin", b"unchanged").await;
    // Reads of the large object are throttled until it has changed.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            slow_down_503: 1.0,
            only_methods: vec!["GET".into()],
            path_contains: Some("/src/d/big.bin".into()),
            ..Default::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    let ep = proxy.endpoint();
    let mut args = vec![
        "cp",
        "-r",
        "s3://src/d",
        dst.to_str().unwrap(),
        "--src-endpoint",
        &ep,
        "--json",
    ];
    args.extend(SMALL_PARTS);
    let cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_skyhaul"));
        c.args(&args)
            .env("SKYHAUL_JOURNAL", tmp.path().join("j.sqlite"));
        for (k, v) in s3.env_for("SRC") {
            c.env(k, v);
        }
        c
    };
    let child = cmd()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while proxy.injected().slow_down_503 == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "never read");
        std::thread::sleep(Duration::from_millis(5));
    }
    let new = data(12 * MIB, 22);
    s3.put("src", "d/big.bin", &new).await;
    proxy.set_faults(Faults::default());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = last_json_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let failure = &report["failures"][0];
    assert_eq!(failure["key"], "d/big.bin", "{report}");
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("changed"), "{report}");
    assert!(error.contains("rerun to copy its new version"), "{report}");
    // Nothing of either version landed, and nothing half-written either.
    let got = read_tree(&dst);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["small.bin"], "{got:?}");

    // The rerun copies the new version.
    let out = cmd().output().unwrap();
    assert_succeeded(&out);
    assert_eq!(read_tree(&dst)["big.bin"], new);
}

/// Five small files under `dir/src`, and a journal path beside them.
fn five_files(dir: &Path) -> (Files, PathBuf, PathBuf) {
    let files: Files = (0..5)
        .map(|i| (format!("f{i}"), data(1000 + i, i as u64)))
        .collect();
    let src = dir.join("src");
    write_tree(&src, &files);
    (files, src, dir.join("journal.sqlite"))
}

/// An object the check after the copy finds different (here, overwritten by someone else
/// between the copy and the check) is not left "done" in the journal: the check fails
/// (exit 6), and the rerun copies that object again instead of skipping it.
#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_after_a_failed_check_copies_what_differed() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let (files, src, journal) = five_files(tmp.path());
    // The check's listing (the only request with a prefix) waits long enough for the
    // overwrite to land first.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            only_methods: vec!["GET".into()],
            path_contains: Some("prefix=data".into()),
            delay: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let args = [
        "cp",
        "-r",
        src.to_str().unwrap(),
        "s3://dst/data",
        "--dst-endpoint",
        &ep,
        "--json",
    ];
    let child = spawn(&args, &s3, &journal);
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_bucket(&s3, "dst", "data/").await.len() < files.len() {
        assert!(Instant::now() < deadline, "the copy did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3.put("dst", "data/f2", b"someone else's").await;
    let first = Run::from(child.wait_with_output().unwrap());
    assert_eq!(first.code, 6, "{}", first.stderr);
    assert_eq!(proxy.injected().delayed, 1, "the check's listing was held");
    let report = first.json();
    assert_eq!(report["verification"]["size_mismatch"], 1, "{report}");

    let rerun = Run::from(spawn(&args, &s3, &journal).wait_with_output().unwrap());
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    let report = rerun.json();
    assert_eq!(report["objects_copied"], 1, "{report}");
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

/// A finished transfer run again starts afresh: objects deleted or replaced at the
/// destination since are copied again, rather than skipped as done by the earlier run. A
/// sync's listing wins over the journal even after an interruption.
#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_repairs_what_the_destination_lost() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let (files, src, journal) = five_files(tmp.path());
    let src = src.to_str().unwrap();
    // Each prefix is a transfer of its own.
    let run = |verb: &'static str, prefix: &str| {
        let (ep, dst) = (&s3.endpoint, format!("s3://dst/{prefix}"));
        let args = [verb, "-r", src, &dst, "--dst-endpoint", ep, "--json"];
        let args: Vec<&str> = args
            .into_iter()
            .filter(|a| verb == "cp" || *a != "-r")
            .collect();
        let out = spawn(&args, &s3, &journal).wait_with_output().unwrap();
        assert_succeeded(&out);
        Run::from(out).json()
    };
    let s3 = &s3;
    let spoil = |prefix: &'static str| async move {
        let client = s3.client().await;
        client
            .delete_object()
            .bucket("dst")
            .key(format!("{prefix}/f1"))
            .send()
            .await
            .unwrap();
        s3.put("dst", &format!("{prefix}/f3"), b"shorter").await;
    };

    for (verb, prefix, interrupted) in [
        ("cp", "cp", false),
        ("sync", "sync", false),
        ("sync", "sync-interrupted", true),
    ] {
        let first = run(verb, prefix);
        assert_eq!(first["objects_copied"], 5, "{prefix}: {first}");
        if interrupted {
            as_if_interrupted(&journal, &first);
        }
        spoil(prefix).await;
        let again = run(verb, prefix);
        let copied = if verb == "cp" { 5 } else { 2 };
        assert_eq!(again["objects_copied"], copied, "{prefix}: {again}");
        assert_eq!(again["objects_resumed"], 0, "{prefix}: {again}");
        let listed = format!("{prefix}/");
        assert_eq!(read_bucket(s3, "dst", &listed).await, files, "{prefix}");
    }

    // An interrupted cp's rerun skips what the journal says the first run copied, but
    // checks it (that run never did): what the destination lost since is found, exit 6, and
    // the next run copies it.
    let prefix = "cp-interrupted";
    let first = run("cp", prefix);
    as_if_interrupted(&journal, &first);
    spoil(prefix).await;
    let dst = format!("s3://dst/{prefix}");
    let args = [
        "cp",
        "-r",
        src,
        &dst,
        "--dst-endpoint",
        &s3.endpoint,
        "--json",
    ];
    // And an entry that fails beside it (a name that is no UTF-8): 6 still wins over 1.
    let unnamed = {
        use std::os::unix::ffi::OsStrExt;
        std::path::Path::new(src).join(std::ffi::OsStr::from_bytes(b"bad\xff"))
    };
    std::fs::write(&unnamed, b"x").unwrap();
    let rerun = Run::from(spawn(&args, s3, &journal).wait_with_output().unwrap());
    std::fs::remove_file(&unnamed).unwrap();
    assert_eq!(rerun.code, 6, "{}", rerun.stderr);
    let report = rerun.json();
    assert_eq!(report["objects_failed"], 1, "{report}");
    assert_eq!(report["objects_resumed"], 5, "{report}");
    let v = &report["verification"];
    assert_eq!(
        (&v["objects"], &v["missing"]),
        (&5.into(), &1.into()),
        "{report}"
    );
    assert_eq!(v["size_mismatch"], 1, "{report}");
    let again = run("cp", prefix);
    assert_eq!(again["objects_copied"], 2, "{again}");
    assert_eq!(again["verification"]["objects"], 5, "{again}");
    let listed = format!("{prefix}/");
    assert_eq!(read_bucket(s3, "dst", &listed).await, files, "{prefix}");
}

/// Marks the transfer of `report` unfinished, as a kill leaves it once every object is done.
fn as_if_interrupted(journal: &Path, report: &serde_json::Value) {
    let j = Journal::open(journal).unwrap();
    let t = j.find(report["transfer_id"].as_str().unwrap()).unwrap();
    j.mark_complete(t.unwrap().id, false).unwrap();
}

/// An interrupted copy between buckets is checked whole by its rerun, as any other: an
/// object the first run finished and another writer changed since (same size) is found
/// (exit 6), and the next run copies it again. Such copies carry no CRC of skyhaul's, whether
/// the bytes streamed through here (two servers) or the store copied them (one server):
/// the rerun checks them by the ETag the first run expected, which the journal keeps.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_copy_between_buckets_is_checked_by_its_rerun() {
    let one = S3Server::start(S3Kind::S3sFs);
    let other = S3Server::start(S3Kind::Moto);
    one.create_bucket("src").await;
    let mut files: Files = (0..5)
        .map(|i| (format!("f{i}"), data(1000 + i, i as u64)))
        .collect();
    // Striped when streamed: its ETag is a multipart one, and the single write that
    // replaces it below leaves an MD5 (which was "not comparable", exit 0).
    files.insert("big".into(), data(12 * MIB + 3, 9));
    fill_bucket(&one, "src", "", &files).await;
    let tmp = tempfile::tempdir().unwrap();
    for (dst, case) in [(&one, "server-side"), (&other, "streamed")] {
        dst.create_bucket("dst").await;
        let journal = tmp.path().join(format!("{case}.sqlite"));
        let to = format!("s3://dst/{case}");
        let (src_ep, dst_ep) = (one.endpoint.as_str(), dst.endpoint.as_str());
        let args = ["cp", "-r", "s3://src", &to, "--json"];
        let args = [
            &args[..],
            &["--src-endpoint", src_ep, "--dst-endpoint", dst_ep],
            &["--multipart-threshold", "6M", "--part-size", "5M"],
        ]
        .concat();
        let journal_env = [("SKYHAUL_JOURNAL", journal.to_str().unwrap())];
        let run = || skyhaul_env(&args, Some(&one), Some(dst), &journal_env);

        let first = run();
        assert_eq!(first.code, 0, "{case}: {}", first.stderr);
        let report = first.json();
        assert_eq!(
            report["server_side_copies"] != 0,
            case == "server-side",
            "{report}"
        );
        as_if_interrupted(&journal, &report);
        for key in ["f2", "big"] {
            let mut changed = files[key].clone();
            changed[0] ^= 1;
            dst.put("dst", &format!("{case}/{key}"), &changed).await;
        }

        let rerun = run();
        assert_eq!(rerun.code, 6, "{case}: {}", rerun.stderr);
        let report = rerun.json();
        assert_eq!(report["objects_resumed"], 6, "{case}: {report}");
        let v = &report["verification"];
        let counts = (
            &v["checksum_ok"],
            &v["checksum_mismatch"],
            &v["not_comparable"],
        );
        assert_eq!(
            counts,
            (&4.into(), &2.into(), &0.into()),
            "{case}: {report}"
        );

        let last = run();
        assert_eq!(last.code, 0, "{case}: {}", last.stderr);
        assert_eq!(last.json()["objects_copied"], 2, "{case}: {}", last.stdout);
        let copied = read_bucket(dst, "dst", &format!("{case}/")).await;
        assert_eq!(copied, files, "{case}");
    }
}

/// An interrupted sync's rerun checks what the interrupted run copied, though its listing
/// finds those objects up to date and copies nothing there: one changed at the destination
/// since (same size, newer) is found, exit 6. The next run copies it again, though its
/// listing still finds it up to date.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_syncs_rerun_checks_what_it_finds_up_to_date() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let (files, src, journal) = five_files(tmp.path());
    let args = ["sync", src.to_str().unwrap(), "s3://dst/s", "--json"];
    let args = [&args[..], &["--dst-endpoint", &s3.endpoint]].concat();
    let journal_env = [("SKYHAUL_JOURNAL", journal.to_str().unwrap())];
    let run = || skyhaul_env(&args, None, Some(&s3), &journal_env);

    let first = run();
    assert_eq!(first.code, 0, "{}", first.stderr);
    as_if_interrupted(&journal, &first.json());
    let mut changed = files["f2"].clone();
    changed[0] ^= 1;
    s3.put("dst", "s/f2", &changed).await;

    // As a person reads it: the check's finding, and no "nothing to do" after it.
    let human: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
    let rerun = skyhaul_env(&human, None, Some(&s3), &journal_env);
    assert_eq!(rerun.code, 6, "{}", rerun.stderr);
    let checked = "verified 5 objects (checksum): size ✓ 5, checksum ✓ 4, not comparable 0, \
                   checksum mismatch 1";
    assert!(rerun.stdout.contains(checked), "{}", rerun.stdout);
    assert!(
        rerun.stdout.contains("copied 0 objects"),
        "{}",
        rerun.stdout
    );
    assert!(!rerun.stdout.contains("nothing to do"), "{}", rerun.stdout);
    // A dry run and `plan` show that object as the next run treats it: to be copied.
    let dry = skyhaul_env(
        &[&args[..], &["--dry-run"]].concat(),
        None,
        Some(&s3),
        &journal_env,
    );
    let copies: Vec<&str> = dry
        .stdout
        .lines()
        .filter(|l| l.contains("\"copy\""))
        .collect();
    assert!(
        copies.len() == 1 && copies[0].contains("s/f2"),
        "{}",
        dry.stdout
    );
    let plan = skyhaul_env(
        &[&["plan", "-r", "--sync"][..], &args[1..]].concat(),
        None,
        Some(&s3),
        &journal_env,
    );
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(plan["objects"], 1, "{plan}");

    let last = run();
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_eq!(last.json()["objects_copied"], 1, "{}", last.stdout);
    assert_eq!(read_bucket(&s3, "dst", "s/").await, files);
    // Finished: the next run trusts its listing again.
    let after = run();
    assert_eq!(after.json()["objects_copied"], 0, "{}", after.stdout);
}

/// A sync killed between a write and its record (records are committed in batches) leaves
/// an object at the destination that no record names. Its rerun's listing finds that object
/// up to date, so nothing checked it: changed at the destination in between (same size), it
/// stayed wrong, with exit 0. A sync announces each write in the journal before it begins,
/// and its rerun copies such an object again. The proxy holds the store's answer to one
/// write, so the kill lands in that window every time.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_killed_between_a_write_and_its_record_copies_that_object_again() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let (files, src, journal) = five_files(tmp.path());
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            delay_answer: Some(Duration::from_secs(60)),
            only_methods: vec!["PUT".into()],
            path_contains: Some("s/f2".into()),
            ..Faults::default()
        },
    );
    let ep = proxy.endpoint();
    let args = ["sync", src.to_str().unwrap(), "s3://dst/s", "--json"];
    let args = [&args[..], &["--dst-endpoint", &ep]].concat();
    let mut child = spawn(&args, &s3, &journal);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s3.list("dst", "s/").await.iter().any(|(k, _)| k == "s/f2") {
        assert!(Instant::now() < deadline, "s/f2 not written within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut changed = files["f2"].clone();
    changed[0] ^= 1;
    s3.put("dst", "s/f2", &changed).await;

    // The same endpoint (the transfer's identity), with nothing held any more.
    proxy.set_faults(Faults::default());
    let journal_env = [("SKYHAUL_JOURNAL", journal.to_str().unwrap())];
    let dry = skyhaul_env(
        &[&args[..], &["--dry-run"]].concat(),
        None,
        Some(&s3),
        &journal_env,
    );
    assert!(
        dry.stdout
            .lines()
            .any(|l| l.contains("\"copy\"") && l.contains("s/f2")),
        "{}",
        dry.stdout
    );
    let rerun = skyhaul_env(&args, None, Some(&s3), &journal_env);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert_eq!(
        read_bucket(&s3, "dst", "s/").await,
        files,
        "{}",
        rerun.stdout
    );
}

/// SIGTERM once everything is copied stops the check after the copy too (a scheduler's
/// grace period is short): the run ends at once, interrupted and unchecked, not after
/// re-reading every object.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_check_after_the_copy() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files: Files = (0..40)
        .map(|i| (format!("f{i:02}"), data(1000, i)))
        .collect();
    write_tree(&src, &files);
    // Every read held 2 s: the deep check of 40 objects takes ten times that.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            delay: Some(Duration::from_secs(2)),
            only_methods: vec!["GET".into()],
            ..Faults::default()
        },
    );
    let ep = proxy.endpoint();
    let args = [
        "cp",
        "-r",
        src.to_str().unwrap(),
        "s3://dst/data",
        "--dst-endpoint",
        &ep,
        "--verify",
        "deep",
        "--json",
    ];
    let child = spawn(&args, &s3, &tmp.path().join("journal.sqlite"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.list("dst", "data/").await.len() < files.len() {
        assert!(Instant::now() < deadline, "not copied within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The check has begun: its listing, or its reads, are held at the proxy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        signalled.elapsed()
    );
    let report = last_json_line(&stdout).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["objects_copied"], files.len(), "{report}");
    assert!(report["verification"].is_null(), "{report}");
}

/// `status` only looks, so a journal on a read-only mount is read (it opened the file for
/// writing, and failed with "unable to open database file"); and a damaged journal is named
/// by `status` and by a run, whose errors said only "database disk image is malformed".
#[test]
fn status_reads_a_journal_it_cannot_write_and_names_a_damaged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let files = mixed();
    write_tree(&tmp.path().join("src"), &files);
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let path = |p: &str| tmp.path().join(p).to_string_lossy().into_owned();
    let journal = format!("{}/j.sqlite", path("ro"));
    // In a mount namespace of its own (root, as the relay tests), so the read-only file
    // system goes with the shell.
    let script = format!(
        "set -e; mount -t tmpfs none '{ro}'; '{bin}' cp -r -q '{src}' '{dst}' --journal '{journal}'; \
         mount -o remount,ro '{ro}'; '{bin}' status --journal '{journal}'",
        ro = path("ro"),
        bin = env!("CARGO_BIN_EXE_skyhaul"),
        src = path("src"),
        dst = path("dst"),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script]);
    for (k, v) in test_env(None, None, &[]) {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let run = Run::from(cmd.output().expect("unshare runs"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let want = format!("complete     {} objects", files.len());
    assert!(run.stdout.contains(&want), "{want}: {}", run.stdout);
    assert_eq!(read_tree(&tmp.path().join("dst")), files);

    // Every page but the first (the header and the schema) overwritten.
    let journal = path("damaged.sqlite");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "-q",
            &path("src"),
            &path("dst2"),
            "--journal",
            &journal,
        ],
        None,
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut bytes = std::fs::read(&journal).unwrap();
    assert!(bytes.len() > 8192, "a journal of several pages");
    bytes[4096..].fill(0xab);
    std::fs::write(&journal, bytes).unwrap();
    for args in [
        vec!["status", "--journal", &journal],
        vec![
            "cp",
            "-r",
            "-q",
            &path("src"),
            &path("dst3"),
            "--journal",
            &journal,
        ],
    ] {
        let run = skyhaul(&args, None, None);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        let error = run
            .stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("");
        assert!(
            error.contains(&format!(
                "{journal}: journal database: database disk image is malformed"
            )),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// SIGTERM (or Ctrl-C) stops a run whose destination accepts connections and never answers
/// (a firewall that drops, a hung server or proxy) within seconds of the grace that requests
/// in flight get: nothing is tried again, and an unanswered request is dropped. It went on
/// retrying for minutes (742 s seen), past any scheduler's grace before SIGKILL.
#[test]
fn a_stopped_run_does_not_wait_for_an_endpoint_that_never_answers() {
    let endpoint = black_hole();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &BTreeMap::from([("a.bin".to_string(), data(1000, 1))]),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_skyhaul"))
        .args(["cp", "-r", "--json", src.to_str().unwrap(), "s3://dst/bh"])
        .args(["--dst-endpoint", &endpoint, "--no-journal"])
        .env("SKYHAUL_DST_ACCESS_KEY_ID", "AKIDHOLE")
        .env("SKYHAUL_DST_SECRET_ACCESS_KEY", "secret")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The grace is 20 s.
    assert!(
        signalled.elapsed() < Duration::from_secs(35),
        "stopped {:?} after SIGTERM: {stderr}",
        signalled.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
}

/// A stop while the destination holds every part sent and answers none: the parts already
/// read and waiting for a connection are not sent after it, so the run ends once the parts
/// in flight have had their 20 s. It sent them wave after wave, each held 20 s (40 to 80 s
/// seen, and a 5 GiB object has hundreds of parts), past any scheduler's grace.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_sends_no_part_that_was_waiting_for_a_connection() {
    let (out, proxy) = stopped_while_parts_stall(&[]).await;
    assert_eq!(
        proxy.injected().delayed,
        2,
        "no part was sent after the stop"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("could not abort"), "{stderr}");
}

/// Without a journal the stop aborts the upload, within what is left of the 20 s (the
/// abort had 20 s of its own after them); one the store does not answer is named with what
/// to do, since no rerun can find it. The warning said "run the same command again to
/// resume", which does neither.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_without_a_journal_names_the_upload_it_could_not_abort() {
    let (out, _proxy) = stopped_while_parts_stall(&["--no-journal"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not abort the upload of data/big.bin (upload id "),
        "{stderr}"
    );
    assert!(stderr.contains("Without a journal no rerun"), "{stderr}");
}

/// Copies a 40 MiB file in 5 MiB parts over two connections to s3s-fs through a proxy that
/// holds every part upload (and abort) and answers none, and stops it with Ctrl-C once two
/// parts are held and the others read: its exit (130, within 35 s of the stop) and the
/// proxy.
async fn stopped_while_parts_stall(extra: &[&str]) -> (std::process::Output, FaultProxy) {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &BTreeMap::from([("big.bin".into(), data(40 * MIB, 3))]),
    );
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            delay: Some(Duration::from_secs(600)),
            only_methods: vec!["PUT".into(), "DELETE".into()],
            path_contains: Some("uploadId=".into()),
            ..Faults::default()
        },
    );
    let ep = proxy.endpoint();
    // Eight parts, two connections, and budget enough to read them all.
    let mut args = vec!["cp", "-r", src.to_str().unwrap(), "s3://dst/data"];
    args.extend([
        "--dst-endpoint",
        &ep,
        "--part-size",
        "5M",
        "--multipart-threshold",
        "5M",
    ]);
    args.extend(["--memory-budget", "64M", "--max-connections", "2", "--json"]);
    args.extend(extra);
    let child = spawn(&args, &s3, &tmp.path().join("journal.sqlite"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.injected().delayed < 2 {
        assert!(Instant::now() < deadline, "no part sent within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other parts are read meanwhile, and wait for a connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        signalled.elapsed() < Duration::from_secs(35),
        "stopped {:?} after Ctrl-C: {stderr}",
        signalled.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    (out, proxy)
}

/// With `--no-journal` nothing records an upload, so no rerun or `clean` could resume or
/// abort it: a run stopped by Ctrl-C aborts its open uploads, as any other failure does.
/// They were left: at S3 an upload billed for its parts until a lifecycle rule removes it,
/// at a local destination a hidden temporary file as large as the object.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_without_a_journal_leaves_no_upload_open() {
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &BTreeMap::from([("big.bin".into(), data(40 * MIB, 7))]),
    );
    let (dst, journal) = (tmp.path().join("dst"), tmp.path().join("unused.sqlite"));
    let unjournaled = ["--no-journal", "--bwlimit", "8M"];
    let stop_and_wait = |child: Child| {
        // Once a part or two are sent.
        std::thread::sleep(Duration::from_secs(1));
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(130), "{stderr}");
    };
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut args = copy_args(src.to_str().unwrap(), &s3.endpoint);
    args.extend(unjournaled);
    let child = spawn(&args, &s3, &journal);
    while s3.list_multipart_uploads("dst").await.is_empty() {
        assert!(Instant::now() < deadline, "no upload begun within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_and_wait(child);
    assert_eq!(s3.list_multipart_uploads("dst").await, vec![]);

    let child = spawn_local(&src, &dst, &journal, &[&TUNING[..], &unjournaled].concat());
    while !dst.exists() || temporaries(&dst).is_empty() {
        assert!(Instant::now() < deadline, "no upload begun within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_and_wait(child);
    assert_eq!(temporaries(&dst), Default::default());
    assert!(!journal.exists(), "no journal was kept");
}

/// The workload copied to bucket `dst` of an s3s-fs server: the server, the journal, the
/// source, and the directory that holds them.
async fn copied_workload() -> (S3Server, PathBuf, PathBuf, tempfile::TempDir) {
    let (s3, _files, journal, src, tmp) = setup(S3Kind::S3sFs).await;
    let args = copy_args(src.to_str().unwrap(), &s3.endpoint);
    assert_succeeded(&spawn(&args, &s3, &journal).wait_with_output().unwrap());
    (s3, journal, src, tmp)
}

/// `skyhaul verify -r SRC s3://dst/data --json` through `proxy`, sent Ctrl-C once `held`
/// more requests are held there than before it started, and `settle` after: its output,
/// and how long it took to end after the signal.
fn verify_stopped(
    s3: &S3Server,
    journal: &Path,
    src: &Path,
    proxy: &FaultProxy,
    held: u64,
    settle: Duration,
) -> (std::process::Output, Duration) {
    let (src, ep) = (src.to_str().unwrap(), proxy.endpoint());
    let args = [
        "verify",
        "-r",
        src,
        "s3://dst/data",
        "--dst-endpoint",
        &ep,
        "--json",
    ];
    let before = proxy.injected().delayed;
    let child = spawn(&args, s3, journal);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.injected().delayed < before + held {
        assert!(Instant::now() < deadline, "nothing held within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(settle);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let out = child.wait_with_output().unwrap();
    (out, signalled.elapsed())
}

/// Ctrl-C stops `verify` at once (it writes nothing, so nothing in flight needs to
/// finish) and reports what it compared before: exit 130, or 6 where that already found
/// something wrong, which no more checking could undo.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_ends_a_verify_with_what_it_found() {
    let (s3, journal, src, _tmp) = copied_workload().await;
    // s3s-fs lists no ETags, so each object's checksum takes a HEAD: the large objects'
    // are held 30 s (not the HEAD of `data/` that looks for a folder marker before the
    // comparisons, and before Ctrl-C is handled).
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            delay: Some(Duration::from_secs(30)),
            only_methods: vec!["HEAD".into()],
            path_contains: Some("/dst/data/large/".into()),
            ..Faults::default()
        },
    );
    let interrupted = || {
        let (out, waited) = verify_stopped(&s3, &journal, &src, &proxy, 1, Duration::ZERO);
        assert!(
            waited < Duration::from_secs(5),
            "verify ended {waited:?} after Ctrl-C"
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains("ending the check"), "{stderr}");
        let report = last_json_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(
            (&report["event"], &report["interrupted"]),
            (&"done".into(), &true.into()),
            "{report}"
        );
        let checked = report["checksum_ok"].as_u64().unwrap();
        assert!(checked < 306, "all {checked} compared: {report}");
        (out.status.code(), report)
    };
    let (code, _) = interrupted();
    assert_eq!(code, Some(130));

    // A source file never copied, listed before the rest: found missing before the stop.
    std::fs::write(src.join("aaa.bin"), b"new").unwrap();
    let (code, report) = interrupted();
    assert_eq!(code, Some(6), "{report}");
    assert_eq!(report["missing"], 1, "{report}");
}

/// Ctrl-C stops the read of a large local file that comes before its upload (for its
/// whole-file checksum, which the upload is created with): for terabytes that read takes
/// hours, and SIGKILL follows SIGTERM after 30 s. It went on to the end (10 minutes and
/// 1.4 TB in the audit that found it).
#[test]
fn ctrl_c_stops_the_read_before_a_large_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    // 1 TiB without a block on disk: read as zeros, as fast as a CPU checksums them.
    let big = std::fs::File::create(src.join("big.bin")).unwrap();
    big.set_len(1 << 40).unwrap();
    let journal = tmp.path().join("journal.sqlite");
    let mut child = spawn_local(&src, &dst, &journal, &[]);
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if signalled.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("still reading 20 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = last_json_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["objects_failed"], 0, "stopped, not failed: {report}");
}

/// Ctrl-C ends `verify` at once also while it waits for an answer that is not a
/// comparison: the check that the destination answers, and a page of its listing (each
/// held 25 s here). It waited up to 20 s for them.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_ends_a_verify_waiting_for_a_listing() {
    let (s3, journal, src, _tmp) = copied_workload().await;
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            delay: Some(Duration::from_secs(25)),
            only_methods: vec!["GET".into()],
            path_contains: Some("list-type=2".into()),
            ..Faults::default()
        },
    );
    // The first listing held is the check that the store answers, the second the walk's.
    for held in [1, 2] {
        let settle = Duration::from_millis(300);
        let (out, waited) = verify_stopped(&s3, &journal, &src, &proxy, held, settle);
        assert!(
            waited < Duration::from_secs(5),
            "ended {waited:?} after Ctrl-C ({held})"
        );
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = last_json_line(&String::from_utf8_lossy(&out.stdout)).unwrap();
        if held == 2 {
            assert_eq!(
                (&last["event"], &last["interrupted"]),
                (&"done".into(), &true.into()),
                "{last}"
            );
        }
    }
}
