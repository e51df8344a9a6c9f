//! Filters (`--include`, `--exclude`, `--files-from`, `--min-size`, `--max-size`,
//! `--newer-than`, `--older-than`), `sync --delete` with excludes, and `--dry-run`, against
//! a real S3 server.

mod common;

use common::*;
use skyhaul_testkit::{S3Kind, S3Server};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

fn dataset() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert("a.csv".to_string(), data(100, 1));
    m.insert("b.txt".to_string(), data(2000, 2));
    m.insert("logs/x.log".to_string(), data(10, 3));
    m.insert("logs/2024/y.log".to_string(), data(20, 4));
    m.insert("tmp/t.csv".to_string(), data(500, 5));
    m.insert("deep/er/keep.csv".to_string(), data(300, 6));
    m
}

fn keys(tree: &BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    tree.keys().map(String::as_str).collect()
}

/// A server with `dataset()` under `bucket/data/`.
async fn source() -> S3Server {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    fill_bucket(&s3, "bucket", "data/", &dataset()).await;
    s3
}

/// `cp -r s3://bucket/data OUT EXTRA...` and the tree that arrived.
fn download(s3: &S3Server, out: &std::path::Path, extra: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut args = vec![
        "cp",
        "-r",
        "s3://bucket/data",
        out.to_str().unwrap(),
        "--src-endpoint",
        &s3.endpoint,
    ];
    args.extend(extra);
    let run = skyhaul(&args, Some(s3), None);
    assert_eq!(run.code, 0, "{extra:?}: {}", run.stderr);
    read_tree(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn include_and_exclude_globs() {
    let s3 = source().await;
    let tmp = tempfile::tempdir().unwrap();
    let got = download(
        &s3,
        &tmp.path().join("csv"),
        &["--include", "*.csv", "--exclude", "tmp/**"],
    );
    assert_eq!(keys(&got), ["a.csv", "deep/er/keep.csv"]);
    assert_eq!(got["a.csv"], dataset()["a.csv"]);

    // Repeated --include adds up; an anchored pattern only matches at the top.
    let got = download(
        &s3,
        &tmp.path().join("two"),
        &["--include", "/*.csv", "--include", "logs/**"],
    );
    assert_eq!(keys(&got), ["a.csv", "logs/2024/y.log", "logs/x.log"]);

    // Exclude alone.
    let got = download(&s3, &tmp.path().join("nologs"), &["--exclude", "logs/"]);
    assert_eq!(
        keys(&got),
        ["a.csv", "b.txt", "deep/er/keep.csv", "tmp/t.csv"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn files_from_lists_keys() {
    let s3 = source().await;
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("keys.txt");
    std::fs::write(&list, "# wanted\nb.txt\n/logs/x.log\r\n\nnot/there.bin\n").unwrap();
    let got = download(
        &s3,
        &tmp.path().join("out"),
        &["--files-from", list.to_str().unwrap()],
    );
    assert_eq!(keys(&got), ["b.txt", "logs/x.log"]);

    // A missing list is a usage error that names the flag.
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://bucket/data",
            tmp.path().join("x").to_str().unwrap(),
            "--src-endpoint",
            &s3.endpoint,
            "--files-from",
            "/nonexistent/list.txt",
        ],
        Some(&s3),
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--files-from"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn size_bounds() {
    let s3 = source().await;
    let tmp = tempfile::tempdir().unwrap();
    let got = download(
        &s3,
        &tmp.path().join("mid"),
        &["--min-size", "100", "--max-size", "500"],
    );
    assert_eq!(keys(&got), ["a.csv", "deep/er/keep.csv", "tmp/t.csv"]);
    let got = download(&s3, &tmp.path().join("big"), &["--min-size", "1K"]);
    assert_eq!(keys(&got), ["b.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_and_older_than() {
    // Local files get chosen modification times; the destination is a real server.
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut files = BTreeMap::new();
    files.insert("old.txt".to_string(), data(10, 1));
    files.insert("sub/recent.txt".to_string(), data(20, 2));
    files.insert("ancient.txt".to_string(), data(30, 3));
    write_tree(&src, &files);
    let set = |name: &str, t: SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(src.join(name))
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    let day = Duration::from_secs(86_400);
    set("old.txt", SystemTime::now() - 40 * day);
    set("sub/recent.txt", SystemTime::now() - 2 * day);
    // 2019-01-01T00:00:00Z
    set(
        "ancient.txt",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_546_300_800),
    );

    let run = |prefix: &str, extra: &[&str]| {
        let dst = format!("s3://bucket/{prefix}/");
        let mut args = vec![
            "cp",
            "-r",
            src.to_str().unwrap(),
            &dst,
            "--dst-endpoint",
            &s3.endpoint,
        ];
        args.extend(extra);
        let r = skyhaul(&args, None, Some(&s3));
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
    };
    run("week", &["--newer-than", "7d"]);
    run(
        "month-plus",
        &["--older-than", "30d", "--newer-than", "2020-01-01"],
    );
    run("before-2020", &["--older-than", "2020-01-01T00:00:00Z"]);
    assert_eq!(
        keys(&read_bucket(&s3, "bucket", "week/").await),
        ["sub/recent.txt"]
    );
    assert_eq!(
        keys(&read_bucket(&s3, "bucket", "month-plus/").await),
        ["old.txt"]
    );
    assert_eq!(
        keys(&read_bucket(&s3, "bucket", "before-2020/").await),
        ["ancient.txt"]
    );

    let bad = skyhaul(
        &[
            "cp",
            "-r",
            src.to_str().unwrap(),
            "/tmp/x",
            "--newer-than",
            "yesterday",
        ],
        None,
        None,
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--newer-than"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn single_object_filters_on_the_base_name() {
    let s3 = source().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let args = |extra: &'static str| {
        vec![
            "cp".to_string(),
            "s3://bucket/data/deep/er/keep.csv".to_string(),
            format!("{}/", out.display()),
            "--src-endpoint".to_string(),
            s3.endpoint.clone(),
            "--exclude".to_string(),
            extra.to_string(),
            "--json".to_string(),
        ]
    };
    let excluded = args("*.csv");
    let excluded: Vec<&str> = excluded.iter().map(String::as_str).collect();
    let run = skyhaul(&excluded, Some(&s3), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["objects_copied"], 0);
    assert!(read_tree(&out).is_empty());

    let kept = args("*.txt");
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    let run = skyhaul(&kept, Some(&s3), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(keys(&read_tree(&out)), ["keep.csv"]);
}

/// `sync --delete` never deletes what an exclude protects, and only copies what the
/// filter selects.
#[tokio::test(flavor = "multi_thread")]
async fn sync_delete_spares_excluded_keys() {
    let s3 = source().await;
    s3.create_bucket("mirror").await;
    let mut existing = BTreeMap::new();
    existing.insert("extra.txt".to_string(), data(7, 10));
    existing.insert("keep/precious.txt".to_string(), data(8, 11));
    existing.insert("tmp/old.csv".to_string(), data(9, 12));
    existing.insert("notes.md".to_string(), data(5, 13));
    fill_bucket(&s3, "mirror", "m/", &existing).await;

    let run = skyhaul(
        &[
            "sync",
            "--delete",
            "s3://bucket/data",
            "s3://mirror/m",
            "--src-endpoint",
            &s3.endpoint,
            "--dst-endpoint",
            &s3.endpoint,
            "--exclude",
            "keep/**",
            "--exclude",
            "tmp/",
            "--exclude",
            "*.md",
            "--json",
        ],
        Some(&s3),
        Some(&s3),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["objects_deleted"], 1, "{report}");
    let got = read_bucket(&s3, "mirror", "m/").await;
    assert_eq!(
        keys(&got),
        [
            "a.csv",
            "b.txt",
            "deep/er/keep.csv",
            "keep/precious.txt",
            "logs/2024/y.log",
            "logs/x.log",
            "notes.md",
            "tmp/old.csv",
        ],
        "extra.txt deleted; excluded keys kept at the destination; tmp/t.csv not copied"
    );
    assert_eq!(got["tmp/old.csv"], existing["tmp/old.csv"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing() {
    let s3 = source().await;
    s3.create_bucket("mirror").await;
    let mut existing = BTreeMap::new();
    existing.insert("extra.txt".to_string(), data(7, 10));
    existing.insert("a.csv".to_string(), data(100, 1));
    fill_bucket(&s3, "mirror", "m/", &existing).await;
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal.sqlite");

    let base = [
        "sync",
        "--delete",
        "--dry-run",
        "--size-only",
        "s3://bucket/data",
        "s3://mirror/m",
        "--src-endpoint",
        &s3.endpoint,
        "--dst-endpoint",
        &s3.endpoint,
        "--journal",
        journal.to_str().unwrap(),
        "--exclude",
        "logs/",
    ];
    let run = skyhaul(&base, Some(&s3), Some(&s3));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "copy s3://bucket/data/b.txt -> s3://mirror/m/b.txt",
            "copy s3://bucket/data/deep/er/keep.csv -> s3://mirror/m/deep/er/keep.csv",
            "copy s3://bucket/data/tmp/t.csv -> s3://mirror/m/tmp/t.csv",
            "delete s3://mirror/m/extra.txt",
        ],
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("dry run"), "{}", run.stderr);
    assert_eq!(
        read_bucket(&s3, "mirror", "m/").await,
        existing,
        "nothing written"
    );
    assert!(!journal.exists(), "no journal written");

    let mut json = base.to_vec();
    json.push("--json");
    let run = skyhaul(&json, Some(&s3), Some(&s3));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let events = run.events();
    assert_eq!(events.len(), 6, "{}", run.stdout);
    assert_eq!(events[0]["event"], "start");
    assert_eq!(events[0]["dry_run"], true);
    let events = &events[1..];
    assert_eq!(events[0]["action"], "copy");
    assert_eq!(events[0]["size"], 2000);
    assert_eq!(events[3]["action"], "delete");
    assert_eq!(events[4]["event"], "done");
    assert_eq!(events[4]["dry_run"], true);
    assert_eq!(events[4]["objects"], 3);
    assert_eq!(events[4]["deletes"], 1);
    assert_eq!(read_bucket(&s3, "mirror", "m/").await, existing);

    // cp to a local directory: the directory is not even created.
    let out = tmp.path().join("never");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "--dry-run",
            "s3://bucket/data",
            out.to_str().unwrap(),
            "--src-endpoint",
            &s3.endpoint,
            "--no-journal",
        ],
        Some(&s3),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 6, "{}", run.stdout);
    assert!(!out.exists());
}
