//! Progress without a terminal: a log line on stderr every few seconds (here every few
//! milliseconds, through SKYHAUL_PROGRESS_INTERVAL), never with -q or --json.

mod common;

use common::*;
use skyhaul_testkit::{S3Kind, S3Server};

#[tokio::test(flavor = "multi_thread")]
async fn progress_lines_without_a_terminal() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &mixed());
    let run = |prefix: &str, extra: &[&str]| {
        let dst = format!("s3://bucket/{prefix}/");
        let mut args = vec![
            "cp",
            "-r",
            src.to_str().unwrap(),
            &dst,
            "--dst-endpoint",
            &s3.endpoint,
            "--no-journal",
        ];
        args.extend(SMALL_PARTS);
        args.extend(extra);
        skyhaul_env(
            &args,
            None,
            Some(&s3),
            &[("SKYHAUL_PROGRESS_INTERVAL", "0.002")],
        )
    };
    let r = run("a", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("skyhaul: progress: "))
        .collect();
    assert!(!lines.is_empty(), "no progress lines: {}", r.stderr);
    assert!(
        lines[0].contains(" objects, ") && lines[0].contains("/s, "),
        "{}",
        lines[0]
    );
    assert!(!r.stdout.contains("progress"), "progress goes to stderr");

    for quiet in [&["-q"][..], &["--json"][..]] {
        let r = run(quiet[0].trim_start_matches('-'), quiet);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!r.stderr.contains("progress"), "{quiet:?}: {}", r.stderr);
    }
}
