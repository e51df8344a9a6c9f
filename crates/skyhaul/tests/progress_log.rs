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

/// `-q` prints only errors: neither skyhaul's warnings nor those of the libraries it uses
/// (the AWS SDK warns of every profile it cannot read, at each run).
#[tokio::test(flavor = "multi_thread")]
async fn quiet_means_no_warnings() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &mixed());
    // A symlink to a directory is skipped with a warning.
    std::os::unix::fs::symlink(tmp.path(), src.join("loop")).unwrap();
    let aws_config = tmp.path().join("aws-config");
    std::fs::write(&aws_config, "[profile bad name]\nregion = us-east-1\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "cp",
            "-r",
            src.to_str().unwrap(),
            "s3://bucket/q/",
            "--dst-endpoint",
            &s3.endpoint,
            "--no-journal",
        ];
        args.extend(extra);
        let config = ("AWS_CONFIG_FILE", aws_config.to_str().unwrap());
        skyhaul_env(&args, None, Some(&s3), &[config])
    };
    let loud = run(&[]);
    assert_eq!(loud.code, 0, "{}", loud.stderr);
    assert!(
        loud.stderr.contains("bad name") && loud.stderr.contains("symlink"),
        "{}",
        loud.stderr
    );
    let quiet = run(&["-q"]);
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    assert_eq!(quiet.stderr, "", "-q printed more than errors");
}
