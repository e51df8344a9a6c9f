//! A process killed with SIGKILL while writing leaves a journal that opens, passes SQLite's
//! integrity check, and holds everything flushed before the kill.
//!
//! The test re-runs its own test binary as the child (selected by an environment variable), so
//! the child is a real separate process writing through the real code.

#![cfg(unix)]

use skyhaul_journal::{Journal, TransferIdentity};
use skyhaul_store::{CompletedPart, MultipartUpload, ObjectMeta};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SKYHAUL_JOURNAL_CRASH_CHILD";
const TEST_NAME: &str = "killed_writer_keeps_flushed_records";

fn identity() -> TransferIdentity {
    TransferIdentity::new("s3://src/", "/dst/", "")
}

fn key(round: u32, i: u64) -> ObjectMeta {
    let mut m = ObjectMeta::new(format!("r{round}/obj-{i:08}"), i);
    m.etag = Some(format!("etag-{i}"));
    m
}

/// The child: records objects and parts, flushes, says how far it flushed, then keeps writing
/// (so the kill lands in the middle of batches and commits) until killed, or 60 s at most.
fn child(path: &Path, round: u32) {
    let j = Journal::open(path).unwrap();
    let id = j.begin(&identity()).unwrap();
    let up = MultipartUpload {
        key: format!("r{round}/big"),
        upload_id: format!("upload-{round}"),
    };
    let big = ObjectMeta::new(format!("r{round}/big"), 1 << 30);
    j.upload_started(id, &big, &up, 8 << 20).unwrap();
    for i in 0..2_000u64 {
        j.record_done(id, &key(round, i), "d", Some("c")).unwrap();
    }
    for n in 1..=10u32 {
        let p = CompletedPart {
            number: n,
            len: 8 << 20,
            etag: format!("p{n}"),
            opaque_etag: false,
        };
        j.part_done(id, &up.upload_id, &p, None).unwrap();
    }
    j.flush().unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nFLUSHED 2000").unwrap();
    out.flush().unwrap();
    drop(out);
    let start = Instant::now();
    let mut i = 2_000u64;
    while start.elapsed() < Duration::from_secs(60) {
        j.record_done(id, &key(round, i), "d", Some("c")).unwrap();
        i += 1;
        if i.is_multiple_of(5_000) {
            j.flush().unwrap();
        }
    }
}

#[test]
fn killed_writer_keeps_flushed_records() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (round, path) = spec.split_once(':').unwrap();
        child(Path::new(path), round.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let exe = std::env::current_exe().unwrap();
    for round in 0..5u32 {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{round}:{}", path.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("child exited before flushing").unwrap();
            if line.contains("FLUSHED 2000") {
                break;
            }
        }
        // Let it write (and commit) a varying while longer, then kill it mid-stream.
        std::thread::sleep(Duration::from_millis(20 + 37 * round as u64));
        child.0.kill().unwrap(); // SIGKILL
        let status = child.0.wait().unwrap();
        assert!(!status.success());

        let j = Journal::open(&path).unwrap();
        j.integrity_check().unwrap();
        let id = identity().id();
        let summary = j.find(&id.to_string()).unwrap().unwrap();
        assert_eq!(summary.runs, round as u64 + 1);
        for r in 0..=round {
            for i in [0, 1, 999, 1_999] {
                assert!(
                    j.is_done(id, &key(r, i)).unwrap().is_some(),
                    "round {r} object {i} lost"
                );
            }
            let resumable = j
                .resumable_upload(id, &ObjectMeta::new(format!("r{r}/big"), 1 << 30), 8 << 20)
                .unwrap()
                .expect("open upload lost");
            assert_eq!(resumable.parts.len(), 10);
        }
        let (objects, _) = j.done_count(id).unwrap();
        assert!(objects >= 2_000 * (round as u64 + 1), "{objects}");
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
