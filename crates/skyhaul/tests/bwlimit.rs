//! `--bwlimit`: the rate through this process stays under the limit, both ways.

mod common;

use common::*;
use skyhaul_testkit::{S3Kind, S3Server};
use std::time::Instant;

const MIB: u64 = 1 << 20;

/// 16 objects of 1 MiB: small next to the total, so the limit, not one object, sets the pace.
fn dataset() -> std::collections::BTreeMap<String, Vec<u8>> {
    (0..16)
        .map(|i| (format!("part-{i:02}.bin"), data(MIB as usize, i)))
        .collect()
}

/// Runs skyhaul and returns (exit code, stderr, seconds it took).
fn timed(args: &[&str], src: Option<&S3Server>, dst: Option<&S3Server>) -> (Run, f64) {
    let started = Instant::now();
    let run = skyhaul(args, src, dst);
    (run, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_is_bounded_both_ways() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = dataset();
    write_tree(&src, &files);
    let total = (files.len() as u64 * MIB) as f64;

    // Upload (PUT bodies): 16 MiB at 8 MiB/s takes at least 2 s less the 0.25 s burst.
    let upload = |prefix: &str, extra: &[&str]| {
        let dst = format!("s3://bucket/{prefix}");
        let mut args = cp_r(src.to_str().unwrap(), &dst, "--dst-endpoint", &s3.endpoint);
        args.extend(extra);
        timed(&args, None, Some(&s3))
    };
    let (free, free_secs) = upload("free", &[]);
    assert_eq!(free.code, 0, "{}", free.stderr);
    let (limited, secs) = upload("limited", &["--bwlimit", "8M"]);
    assert_eq!(limited.code, 0, "{}", limited.stderr);
    let rate = total / secs;
    assert!(
        secs >= 2.0 - 0.25,
        "16 MiB at 8 MiB/s took {secs:.2} s: {:.1} MiB/s",
        rate / MIB as f64
    );
    assert!(secs < 12.0, "far slower than the limit: {secs:.2} s");
    assert!(
        free_secs < secs,
        "without the limit it is faster ({free_secs:.2} s vs {secs:.2} s)"
    );
    assert_eq!(read_bucket(&s3, "bucket", "limited/").await, files);

    // Download (GET bodies), the limit in bits: 64 Mbit/s = 8,000,000 bytes/s.
    let out = tmp.path().join("out");
    let mut args = cp_r(
        "s3://bucket/limited",
        out.to_str().unwrap(),
        "--src-endpoint",
        &s3.endpoint,
    );
    args.extend(["--bwlimit", "64Mbit"]);
    let (down, secs) = timed(&args, Some(&s3), None);
    assert_eq!(down.code, 0, "{}", down.stderr);
    let floor = total / 8_000_000.0 - 0.25;
    assert!(
        secs >= floor,
        "took {secs:.2} s, at least {floor:.2} s expected"
    );
    assert!(secs < 12.0, "far slower than the limit: {secs:.2} s");
    assert_eq!(read_tree(&out), files);
}

#[test]
fn bad_rates_are_usage_errors() {
    for bad in ["fast", "0", "10Q"] {
        let run = skyhaul(&["cp", "/tmp/a", "/tmp/b", "--bwlimit", bad], None, None);
        assert_eq!(run.code, 2, "{bad}: {}", run.stderr);
        assert!(run.stderr.contains("--bwlimit"), "{}", run.stderr);
    }
    let run = skyhaul_env(
        &["cp", "/tmp/a", "/tmp/b"],
        None,
        None,
        &[("SKYHAUL_BWLIMIT", "lots")],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("SKYHAUL_BWLIMIT=lots"),
        "{}",
        run.stderr
    );
}
