//! `skyhaul cp` and `skyhaul sync` end to end, against real S3 servers started here.

mod common;

use common::*;
use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};

#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_and_back_on_two_servers() {
    let files = mixed();
    let tmp = tempfile::tempdir().unwrap();
    write_tree(&tmp.path().join("src"), &files);
    for kind in [S3Kind::S3sFs, S3Kind::RcloneServe] {
        let s3 = S3Server::start(kind);
        s3.create_bucket("bucket").await;
        let src = tmp.path().join("src");
        let mut args = vec![
            "cp",
            "-r",
            src.to_str().unwrap(),
            "s3://bucket/up/",
            "--dst-endpoint",
            &s3.endpoint,
            "--json",
        ];
        args.extend(SMALL_PARTS);
        let run = skyhaul(&args, None, Some(&s3));
        assert_eq!(run.code, 0, "{kind}: {}", run.stderr);
        assert_eq!(run.json()["objects_copied"], files.len() as u64);
        assert_eq!(
            read_bucket(&s3, "bucket", "up/").await,
            files,
            "{kind}: uploaded objects"
        );

        let back = tmp.path().join(format!("back-{kind}"));
        let mut args = vec![
            "cp",
            "-r",
            "s3://bucket/up",
            back.to_str().unwrap(),
            "--src-endpoint",
            &s3.endpoint,
        ];
        args.extend(SMALL_PARTS);
        let run = skyhaul(&args, Some(&s3), None);
        assert_eq!(run.code, 0, "{kind}: {}", run.stderr);
        assert!(run.stdout.contains("copied 6 objects"), "{}", run.stdout);
        assert_eq!(read_tree(&back), files, "{kind}: downloaded tree");
    }
}

/// A listing page refused once (503) in the middle of a sub-prefix's sub-prefix: the
/// listing starts again after its last key and the copy has every object. Started again by
/// level, it took that sub-prefix, named again as it holds the start, for one listed
/// already: the rest of it was missing, with exit 0 (and a `sync --delete` would have
/// deleted it at the destination).
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_refused_once_inside_a_sub_prefix_lists_the_rest() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("src").await;
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = (0..2500)
        .map(|i| (format!("2024/12/f{i:04}"), vec![b'x'; 3]))
        .collect();
    files.insert("2024/readme".into(), b"r".to_vec());
    fill_bucket(&s3, "src", "data/", &files).await;
    // The first page after the first of a listing (the one with a continuation token).
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            slow_down_503: 1.0,
            path_contains: Some("continuation-token".into()),
            max_faults: Some(1),
            ..Default::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let ep = proxy.endpoint();
    let args = [
        "cp",
        "-r",
        "s3://src/data",
        out.to_str().unwrap(),
        "--src-endpoint",
        &ep,
        "--no-journal",
    ];
    let run = skyhaul(&args, Some(&s3), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(proxy.injected().slow_down_503, 1, "the refusal happened");
    let got = read_tree(&out);
    let missing: Vec<&String> = files.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !files.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} missing (first {:?}), {} extra (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
}

/// A `--part-size` above the store's largest part (S3: 5 GiB) is that largest part: it
/// failed every striped object, however small, as too large for the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_size_above_the_stores_largest_is_its_largest() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    let bytes = data(12 << 20, 5);
    std::fs::write(&file, &bytes).unwrap();
    let f = file.to_str().unwrap();
    let args = [
        "cp",
        f,
        "s3://bucket/f.bin",
        "--dst-endpoint",
        &s3.endpoint,
        "--no-journal",
    ];
    let run = skyhaul(
        &[
            &args[..],
            &["--part-size", "6G", "--multipart-threshold", "8M"],
        ]
        .concat(),
        None,
        Some(&s3),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(s3.get("bucket", "f.bin").await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_across_endpoints_and_accounts() {
    let a = S3Server::start(S3Kind::S3sFs);
    let b = S3Server::start(S3Kind::RcloneServe);
    assert_ne!(a.access_key, b.access_key);
    a.create_bucket("src").await;
    b.create_bucket("dst").await;
    let files = mixed();
    fill_bucket(&a, "src", "data/", &files).await;
    let mut args = vec![
        "cp",
        "-r",
        "s3://src/data",
        "s3://dst/copy",
        "--src-endpoint",
        &a.endpoint,
        "--dst-endpoint",
        &b.endpoint,
        "--json",
    ];
    args.extend(SMALL_PARTS);
    let run = skyhaul(&args, Some(&a), Some(&b));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        report["server_side_copies"], 0,
        "different accounts move bytes through the client"
    );
    assert_eq!(read_bucket(&b, "dst", "copy/").await, files);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_endpoint_uses_server_side_copy() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("one").await;
    s.create_bucket("two").await;
    let mut files = mixed();
    // Above the multipart threshold, but copied whole (CopyObject) below 256 MiB: see
    // `a_striped_server_side_copy_is_checked_by_its_parts_etag` for UploadPartCopy.
    files.insert("huge/over-threshold.bin".into(), data(11 * 1024 * 1024, 9));
    fill_bucket(&s, "one", "", &files).await;
    let mut args = vec![
        "cp",
        "-r",
        "s3://one/",
        "s3://two/mirror/",
        "--src-endpoint",
        &s.endpoint,
        "--dst-endpoint",
        &s.endpoint,
        "--json",
    ];
    args.extend(SMALL_PARTS);
    let run = skyhaul(&args, Some(&s), Some(&s));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["server_side_copies"], files.len() as u64, "{report}");
    // Each is checked by the ETag it should have.
    let v = &report["verification"];
    assert_eq!(
        (&v["checksum_ok"], &v["not_comparable"]),
        (&files.len().into(), &0.into()),
        "{report}"
    );
    assert_eq!(read_bucket(&s, "two", "mirror/").await, files);
}

/// A server-side copy above 256 MiB goes in parts (UploadPartCopy), and the check after it
/// compares the ETag those parts make: it was "not comparable", as the record of the copy
/// it was given lacked the ETag the journal kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_striped_server_side_copy_is_checked_by_its_parts_etag() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("one").await;
    let files =
        std::collections::BTreeMap::from([("big.bin".to_string(), data(257 * 1024 * 1024, 3))]);
    fill_bucket(&s, "one", "", &files).await;
    let ep = s.endpoint.as_str();
    let args = [
        "cp",
        "-r",
        "s3://one/",
        "s3://one/copy/",
        "--json",
        "--exclude",
        "copy/**",
    ];
    let args = [&args[..], &["--src-endpoint", ep, "--dst-endpoint", ep]].concat();
    let run = skyhaul(&args, Some(&s), Some(&s));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["server_side_copies"], 1, "{report}");
    let v = &report["verification"];
    assert_eq!(
        (&v["checksum_ok"], &v["not_comparable"]),
        (&1.into(), &0.into()),
        "{report}"
    );
    let head = s
        .client()
        .await
        .head_object()
        .bucket("one")
        .key("copy/big.bin");
    let etag = head.send().await.unwrap().e_tag.unwrap_or_default();
    assert!(etag.contains('-'), "copied in parts: {etag}");
    assert_eq!(read_bucket(&s, "one", "copy/").await, files);
}

/// `--requester-pays` puts `x-amz-request-payer: requester` on every request, signed (S3
/// refuses unsigned `x-amz-*` headers), in each way of copying: reads, whole and multipart
/// uploads, server-side copies; without it, on none.
#[tokio::test(flavor = "multi_thread")]
async fn requester_pays_is_acknowledged_on_every_request() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("src").await;
    s3.create_bucket("dst").await;
    let files = mixed();
    fill_bucket(&s3, "src", "data/", &files).await;
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            watch_header: Some("X-Amz-Request-Payer".into()),
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let local_str = local.to_str().unwrap().to_string();
    let runs: [(&[&str], &str); 3] = [
        (
            &["s3://src/data/", &local_str, "--src-endpoint", &ep],
            "download",
        ),
        (
            &[&local_str, "s3://dst/up/", "--dst-endpoint", &ep],
            "upload",
        ),
        (
            &[
                "s3://src/data/",
                "s3://dst/ssc/",
                "--src-endpoint",
                &ep,
                "--dst-endpoint",
                &ep,
            ],
            "server-side copy",
        ),
    ];
    for (places, what) in runs {
        let before = proxy.injected();
        let mut args = vec!["cp", "-r", "--no-journal", "--json", "--requester-pays"];
        args.extend(places);
        args.extend(SMALL_PARTS);
        let run = skyhaul(&args, Some(&s3), Some(&s3));
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        let after = proxy.injected();
        let requests = after.requests - before.requests;
        assert!(requests > files.len() as u64, "{what}: {requests} requests");
        assert_eq!(after.watched - before.watched, requests, "{what}");
        assert_eq!(
            after.watched_signed - before.watched_signed,
            requests,
            "{what}"
        );
        if what == "server-side copy" {
            assert_eq!(run.json()["server_side_copies"], files.len() as u64);
        }
    }
    assert_eq!(read_tree(&local), files);
    assert_eq!(read_bucket(&s3, "dst", "up/").await, files);
    assert_eq!(read_bucket(&s3, "dst", "ssc/").await, files);

    let before = proxy.injected();
    let again = tmp.path().join("again");
    let run = skyhaul(
        &cp_r(
            "s3://src/data/",
            again.to_str().unwrap(),
            "--src-endpoint",
            &ep,
        ),
        Some(&s3),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = proxy.injected();
    assert!(after.requests > before.requests);
    assert_eq!(
        after.watched, before.watched,
        "sent without --requester-pays"
    );

    // A remote in skyhaul's config can say it for its side.
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[remotes.rp]\nendpoint = \"{ep}\"\nrequester_pays = true\n"),
    )
    .unwrap();
    let before = proxy.injected();
    let via = tmp.path().join("via-remote");
    let run = skyhaul_env(
        &[
            "cp",
            "-r",
            "rp:src/data/",
            via.to_str().unwrap(),
            "--no-journal",
        ],
        Some(&s3),
        None,
        &[("SKYHAUL_CONFIG", config.to_str().unwrap())],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = proxy.injected();
    let requests = after.requests - before.requests;
    assert!(requests > files.len() as u64, "{requests} requests");
    assert_eq!(after.watched_signed - before.watched_signed, requests);
    assert_eq!(read_tree(&via), files);
}

/// `--src-anonymous` reads a public bucket from a machine without credentials, every
/// request unsigned: moto, as S3 does, serves unsigned reads only of objects that are
/// `public-read`, so a private one is refused even with keys in the environment (the flag
/// wins over them). Without the flag, a machine without credentials is told of it. A local
/// fleet's workers read unsigned too.
#[tokio::test(flavor = "multi_thread")]
async fn a_public_bucket_is_read_without_credentials() {
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("open").await;
    let files = mixed();
    for (k, v) in &files {
        s3.put_public("open", &format!("pub/{k}"), v).await;
    }
    s3.put("open", "private/secret", b"not for everyone").await;
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            watch_header: Some("Authorization".into()),
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    // No credentials anywhere: no keys, profiles or instance role (see `test_env`).
    let none = [("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")];
    let read = |from: &str, to: &str, extra: &[&str], keys: bool| {
        let mut args = vec!["cp", "-r", from, to, "--src-endpoint", &ep, "--no-journal"];
        args.extend(extra);
        args.extend(SMALL_PARTS);
        match keys {
            true => skyhaul(&args, Some(&s3), None),
            false => skyhaul_env(&args, None, None, &none),
        }
    };
    let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();

    let run = read("s3://open/pub/", &dir("refused"), &[], false);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("no usable credentials found")
            && run.stderr.contains("--src-anonymous reads it"),
        "{}",
        run.stderr
    );

    for (what, extra) in [
        ("one process", &["--src-anonymous"][..]),
        (
            "a local fleet",
            &["--src-anonymous", "--workers", "2", "-y"],
        ),
    ] {
        let before = proxy.injected();
        let to = dir(&what.replace(' ', "-"));
        let run = read("s3://open/pub/", &to, extra, false);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert_eq!(read_tree(std::path::Path::new(&to)), files, "{what}");
        let after = proxy.injected();
        assert!(after.requests - before.requests > files.len() as u64);
        assert_eq!(
            after.watched, before.watched,
            "{what}: a request was signed"
        );
    }

    let run = read(
        "s3://open/private/",
        &dir("private"),
        &["--src-anonymous"],
        true,
    );
    assert_eq!(
        run.code, 4,
        "unsigned, though keys were given: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("s3://open/private/secret")
            && run.stderr.contains("not public")
            && !run.stderr.contains("set src credentials"),
        "no advice to set the credentials that were not sent: {}",
        run.stderr
    );
    let run = read("s3://open/private/", &dir("private"), &[], true);
    assert_eq!(run.code, 0, "signed with the keys: {}", run.stderr);
    assert_eq!(
        read_tree(&tmp.path().join("private"))["secret"],
        b"not for everyone"
    );

    // Unsigned or not, it is the same bucket: a sync of a prefix into its parent is refused
    // before it could delete its own source.
    let args = [
        "sync",
        "--delete",
        "s3://open/pub/",
        "s3://open/",
        "--src-anonymous",
        "--src-endpoint",
        &ep,
        "--dst-endpoint",
        &ep,
        "--no-journal",
    ];
    let run = skyhaul(&args, None, Some(&s3));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("overlap"), "{}", run.stderr);
    assert_eq!(
        read_bucket(&s3, "open", "pub/").await,
        files,
        "nothing deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn single_object_key_mapping() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    s.put("bkt", "in/obj.bin", b"payload").await;
    let ep = s.endpoint.as_str();
    let run = skyhaul(
        &[
            "cp",
            "s3://bkt/in/obj.bin",
            "s3://bkt/out/",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
        ],
        Some(&s),
        Some(&s),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        s.get("bkt", "out/obj.bin").await.as_deref(),
        Some(&b"payload"[..]),
        "a destination ending in / receives the base name"
    );
    let run = skyhaul(
        &[
            "cp",
            "s3://bkt/in/obj.bin",
            "s3://bkt/renamed.bin",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
        ],
        Some(&s),
        Some(&s),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        s.get("bkt", "renamed.bin").await.as_deref(),
        Some(&b"payload"[..]),
        "otherwise the destination is the key"
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("existing");
    std::fs::create_dir(&dir).unwrap();
    let run = skyhaul(
        &[
            "cp",
            "s3://bkt/in/obj.bin",
            dir.to_str().unwrap(),
            "--src-endpoint",
            ep,
        ],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read(dir.join("obj.bin")).unwrap(),
        b"payload",
        "an existing directory receives the base name"
    );
    let file = tmp.path().join("file.bin");
    let run = skyhaul(
        &[
            "cp",
            "s3://bkt/in/obj.bin",
            file.to_str().unwrap(),
            "--src-endpoint",
            ep,
        ],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"payload");
}

/// `sync --delete` into a directory removes the directories its deletions emptied, as
/// rsync and rclone do; directories still holding anything, and the destination itself,
/// stay.
#[test]
fn sync_delete_removes_the_directories_it_emptied() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_tree(
        &src,
        &std::collections::BTreeMap::from([("keep/a.txt".to_string(), b"a".to_vec())]),
    );
    write_tree(
        &dst,
        &std::collections::BTreeMap::from([
            ("old/deep/x".to_string(), b"x".to_vec()),
            ("keep/stale.txt".to_string(), b"s".to_vec()),
        ]),
    );
    std::fs::create_dir_all(dst.join("empty-before")).unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let run = skyhaul(
        &["sync", "--delete", "-y", s, d, "--no-journal"],
        None,
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !dst.join("old").exists(),
        "emptied by the deletions, so removed"
    );
    assert!(dst.join("keep/a.txt").exists() && !dst.join("keep/stale.txt").exists());
    assert!(
        dst.join("empty-before").is_dir(),
        "not emptied by this sync"
    );
    // A source with nothing left but what the destination must keep: the root stays.
    std::fs::remove_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("top.txt"), b"t").unwrap();
    // `-r`, as cp takes it, is taken and changes nothing: sync is recursive.
    let run = skyhaul(
        &["sync", "-r", "--delete", "-y", s, d, "--no-journal"],
        None,
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!dst.join("keep").exists() && dst.join("top.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_copies_only_what_changed_and_deletes_only_when_asked() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = mixed();
    write_tree(&src, &files);
    let srcs = src.to_str().unwrap();
    let sync = |extra: &[&str]| {
        let mut args = vec![
            "sync",
            srcs,
            "s3://bkt/mirror",
            "--dst-endpoint",
            &s.endpoint,
            "--json",
        ];
        args.extend(SMALL_PARTS);
        args.extend(extra);
        skyhaul(&args, None, Some(&s))
    };
    let first = sync(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.json()["objects_copied"], 6);

    let again = sync(&[]).json();
    assert_eq!(
        (
            again["objects_copied"].as_u64(),
            again["objects_skipped"].as_u64()
        ),
        (Some(0), Some(6)),
        "{again}"
    );

    // A changed size is copied; an extra destination object stays without --delete.
    std::fs::write(src.join("small.txt"), b"changed").unwrap();
    s.put("bkt", "mirror/extra.txt", b"only at the destination")
        .await;
    let changed = sync(&[]).json();
    assert_eq!(
        (
            changed["objects_copied"].as_u64(),
            changed["objects_deleted"].as_u64()
        ),
        (Some(1), Some(0)),
        "{changed}"
    );
    assert_eq!(s.get("bkt", "mirror/small.txt").await.unwrap(), b"changed");
    assert!(
        s.get("bkt", "mirror/extra.txt").await.is_some(),
        "no delete unless asked"
    );

    let deleted = sync(&["--delete"]).json();
    assert_eq!(deleted["objects_deleted"], 1, "{deleted}");
    assert!(s.get("bkt", "mirror/extra.txt").await.is_none());
    let mut want = files.clone();
    want.insert("small.txt".into(), b"changed".to_vec());
    assert_eq!(read_bucket(&s, "bkt", "mirror/").await, want);

    // The report for people: a sync that only deletes did something; one that finds
    // nothing to do says so.
    s.put("bkt", "mirror/extra2.txt", b"x").await;
    let text = |extra: &[&str]| {
        let mut args = vec!["sync", srcs, "s3://bkt/mirror"];
        args.extend(["--dst-endpoint", &s.endpoint, "-y"]);
        args.extend(extra);
        skyhaul(&args, None, Some(&s))
    };
    let run = text(&["--delete"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("deleted 1") && !run.stdout.contains("nothing to do"),
        "{}",
        run.stdout
    );
    let run = text(&[]);
    assert!(run.stdout.contains("nothing to do"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_that_escape_the_destination_are_refused() {
    // moto accepts any key, as a hostile or careless bucket might hold.
    let s = S3Server::start(S3Kind::Moto);
    s.create_bucket("evil").await;
    s.put("evil", "data/ok.txt", b"fine").await;
    s.put("evil", "data/../../escaped.txt", b"bad").await;
    s.put("evil", "data/x/../../../escaped2.txt", b"bad").await;
    s.put("evil", "data//double", b"bad").await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("a/b/dst");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://evil/data",
            dst.to_str().unwrap(),
            "--src-endpoint",
            &s.endpoint,
            "--json",
        ],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 1, "partial failure: {}", run.stderr);
    let report = run.json();
    assert_eq!(
        (
            report["objects_copied"].as_u64(),
            report["objects_failed"].as_u64()
        ),
        (Some(1), Some(3)),
        "{report}"
    );
    let failed: Vec<&str> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"data/../../escaped.txt"), "{failed:?}");
    assert!(
        report["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("refused")
            || report["failures"][0]["error"]
                .as_str()
                .unwrap()
                .contains("empty path component")
    );
    // Nothing was written anywhere but the one good file.
    let all = read_tree(tmp.path());
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        vec!["a/b/dst/ok.txt"],
        "{:?}",
        all.keys()
    );
}

/// A local listing skips skyhaul's own temporary files (`.NAME.ID.skyhaul-tmp`, left by a
/// killed run) and nothing else: a user's `.notes.skyhaul-tmp`, or a directory so named,
/// is copied (it used to vanish, verified, and `sync --delete` removed its copy). A key of
/// the temporary form fails alone at a local destination, where no listing would see it.
#[tokio::test(flavor = "multi_thread")]
async fn only_skyhauls_own_temporary_files_are_skipped() {
    let s = S3Server::start(S3Kind::Moto);
    s.create_bucket("bkt").await;
    let temporary = ".x.0123456789abcdef.skyhaul-tmp";
    for key in ["ok", ".notes.skyhaul-tmp", temporary] {
        s.put("bkt", &format!("t/{key}"), key.as_bytes()).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join(".build.skyhaul-tmp/sub")).unwrap();
    for name in [
        "ok",
        ".notes.skyhaul-tmp",
        ".build.skyhaul-tmp/sub/f",
        temporary,
    ] {
        std::fs::write(src.join(name), name).unwrap();
    }
    let up = [
        "cp",
        "-r",
        src.to_str().unwrap(),
        "s3://bkt/up/",
        "--dst-endpoint",
        &s.endpoint,
    ];
    let run = skyhaul(&up, None, Some(&s));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got: Vec<String> = read_bucket(&s, "bkt", "up/").await.into_keys().collect();
    assert_eq!(
        got,
        [".build.skyhaul-tmp/sub/f", ".notes.skyhaul-tmp", "ok"],
        "the temporary file is the only one left out"
    );

    let dst = tmp.path().join("dst");
    let down = [
        "cp",
        "-r",
        "s3://bkt/t",
        dst.to_str().unwrap(),
        "--src-endpoint",
        &s.endpoint,
        "--json",
    ];
    let run = skyhaul(&down, Some(&s), None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        report["failures"][0]["key"],
        format!("t/{temporary}"),
        "{report}"
    );
    assert!(
        report["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("temporary files"),
        "{report}"
    );
    assert_eq!(
        read_tree(&dst).into_keys().collect::<Vec<_>>(),
        [".notes.skyhaul-tmp", "ok"]
    );
    assert!(!dst.join(temporary).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_is_both_file_and_directory_is_reported() {
    let s = S3Server::start(S3Kind::Moto);
    s.create_bucket("bkt").await;
    s.put("bkt", "p/a", b"file").await;
    s.put("bkt", "p/a/b", b"inside").await;
    let tmp = tempfile::tempdir().unwrap();
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://bkt/p",
            tmp.path().to_str().unwrap(),
            "--src-endpoint",
            &s.endpoint,
            "--json",
        ],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    // Whichever of the two lands first wins; the other is reported as a conflict.
    let report = run.json();
    assert_eq!(
        (
            report["objects_copied"].as_u64(),
            report["objects_failed"].as_u64()
        ),
        (Some(1), Some(1)),
        "{report}"
    );
    let failure = &report["failures"][0];
    let error = failure["error"].as_str().unwrap();
    match failure["key"].as_str().unwrap() {
        "p/a/b" => {
            assert!(error.contains("exists as a file"), "{error}");
            assert_eq!(std::fs::read(tmp.path().join("a")).unwrap(), b"file");
        }
        "p/a" => {
            assert!(error.contains("a directory exists"), "{error}");
            assert_eq!(std::fs::read(tmp.path().join("a/b")).unwrap(), b"inside");
        }
        other => panic!("unexpected failure {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_local_keeps_mtimes_so_sync_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_tree(&src, &mixed());
    let args = |cmd: &'static str| {
        vec![
            cmd,
            "-r",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--json",
        ]
    };
    let copy = skyhaul(&args("cp"), None, None);
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    assert_eq!(read_tree(&dst), mixed());
    // A file system has no ETags: the default check re-reads what was written.
    assert_eq!(
        copy.json()["verification"]["checksum_ok"],
        6,
        "{}",
        copy.stdout
    );
    let run = skyhaul(
        &[
            "sync",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--json",
        ],
        None,
        None,
    );
    assert_eq!(run.json()["objects_skipped"], 6, "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tight_budget_never_deadlocks_the_in_order_source_check() {
    // Parts of an object with a content-MD5 ETag are hashed in order; with a budget of
    // two parts and many connections, parts finishing early must never hold the budget
    // the first part needs.
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let big = data(48 * 1024 * 1024 + 7, 42);
    s.put("bkt", "big.bin", &big).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("big.bin");
    for _ in 0..3 {
        let run = skyhaul(
            &[
                "cp",
                "s3://bkt/big.bin",
                out.to_str().unwrap(),
                "--src-endpoint",
                &s.endpoint,
                "--memory-budget",
                "10M",
                "--part-size",
                "5M",
                "--multipart-threshold",
                "5M",
                "--max-connections",
                "16",
            ],
            Some(&s),
            None,
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(std::fs::read(&out).unwrap() == big);
    }
}

/// A copy keeps what an object is served with: its `Content-Type` and other content headers
/// and its user metadata, whether it streams bucket to bucket, goes in parts, or is read
/// whole into GCS and back; a file gets a `Content-Type` from its extension.
#[tokio::test(flavor = "multi_thread")]
async fn content_headers_and_metadata_travel_with_the_objects() {
    let src = S3Server::start(S3Kind::S3sFs);
    let dst = S3Server::start(S3Kind::Moto);
    let gcs = skyhaul_testkit::FakeGcsServer::start();
    src.create_bucket("src").await;
    dst.create_bucket("dst").await;
    gcs.create_bucket("gcs").await;
    // (key, size, Content-Type, Cache-Control, owner): a page that streams, a large
    // object that goes in 5 MiB parts.
    let objects = [
        (
            "site/page.html",
            2000,
            "text/html; charset=utf-8",
            "max-age=60",
            "web",
        ),
        (
            "site/shard.tar",
            6 << 20,
            "application/x-tar",
            "no-store",
            "ml",
        ),
    ];
    let client = src.client().await;
    for (key, size, content_type, cache, owner) in objects {
        client
            .put_object()
            .bucket("src")
            .key(key)
            .content_type(content_type)
            .cache_control(cache)
            .metadata("owner", owner)
            .body(data(size, 3).into())
            .send()
            .await
            .unwrap();
    }
    let (s, d) = (src.endpoint.as_str(), dst.endpoint.as_str());
    let gcs_host = gcs.endpoint.trim_start_matches("http://").to_string();
    let gcs_env = [("STORAGE_EMULATOR_HOST", gcs_host.as_str())];
    let cp = |from: &str, to: &str, extra: &[&str], src_server, dst_server| {
        let mut args = vec!["cp", "-r", from, to, "--no-journal"];
        args.extend(SMALL_PARTS);
        args.extend(extra);
        let run = skyhaul_env(&args, src_server, dst_server, &gcs_env);
        assert_eq!(run.code, 0, "{from} -> {to}: {}", run.stderr);
    };
    let endpoints = ["--src-endpoint", s, "--dst-endpoint", d];
    cp(
        "s3://src/site/",
        "s3://dst/direct/",
        &endpoints,
        Some(&src),
        Some(&dst),
    );
    cp(
        "s3://src/site/",
        "gs://gcs/site/",
        &endpoints[..2],
        Some(&src),
        None,
    );
    cp(
        "gs://gcs/site/",
        "s3://dst/via-gcs/",
        &endpoints[2..],
        None,
        Some(&dst),
    );

    let client = dst.client().await;
    let head = |key: String| {
        let request = client.head_object().bucket("dst").key(&key).send();
        async move { (request.await.unwrap(), key) }
    };
    for prefix in ["direct", "via-gcs"] {
        for (key, _, content_type, cache, owner) in objects {
            let (head, key) = head(key.replacen("site", prefix, 1)).await;
            assert_eq!(head.content_type(), Some(content_type), "{key}");
            assert_eq!(head.cache_control(), Some(cache), "{key}");
            assert_eq!(
                head.metadata()
                    .and_then(|m| m.get("owner"))
                    .map(String::as_str),
                Some(owner),
                "{key}"
            );
        }
    }

    // Files have no Content-Type: it is guessed from the name, as other tools do.
    let tmp = tempfile::tempdir().unwrap();
    let names = [
        ("index.html", "text/html"),
        ("labels.json", "application/json"),
    ];
    for (name, _) in names {
        std::fs::write(tmp.path().join(name), b"{}").unwrap();
    }
    let local = tmp.path().to_str().unwrap();
    cp(local, "s3://dst/files/", &endpoints[2..], None, Some(&dst));
    for (name, content_type) in names {
        let (head, key) = head(format!("files/{name}")).await;
        assert_eq!(head.content_type(), Some(content_type), "{key}");
    }
}

/// `--storage-class` writes every object in that class, as the destination names it:
/// whole, striped and server-side on S3, and on GCS and Azure (as its access tier).
#[tokio::test(flavor = "multi_thread")]
async fn storage_class_is_given_to_every_object_written() {
    let s3 = S3Server::start(S3Kind::Moto);
    let gcs = skyhaul_testkit::FakeGcsServer::start();
    s3.create_bucket("cold").await;
    gcs.create_bucket("cold").await;
    let tmp = tempfile::tempdir().unwrap();
    let files = std::collections::BTreeMap::from([
        ("small.txt".to_string(), data(1000, 1)),
        ("large.bin".to_string(), data(6 << 20, 2)),
    ]);
    write_tree(tmp.path(), &files);
    let local = tmp.path().to_str().unwrap();
    let gcs_host = gcs.endpoint.trim_start_matches("http://").to_string();
    let cp = |from: &str, to: &str, class: &str| {
        let mut args = vec![
            "cp",
            "-r",
            from,
            to,
            "--storage-class",
            class,
            "--no-journal",
        ];
        for (flag, side) in [("--src-endpoint", from), ("--dst-endpoint", to)] {
            if side.starts_with("s3://") {
                args.extend([flag, s3.endpoint.as_str()]);
            }
        }
        args.extend(SMALL_PARTS);
        let env = [("STORAGE_EMULATOR_HOST", gcs_host.as_str())];
        let run = skyhaul_env(&args, Some(&s3), Some(&s3), &env);
        assert_eq!(run.code, 0, "{from} -> {to}: {}", run.stderr);
    };
    cp(local, "s3://cold/ia/", "STANDARD_IA");
    cp("s3://cold/ia/", "s3://cold/glacier-ir/", "GLACIER_IR");
    let client = s3.client().await;
    for (prefix, class) in [("ia", "STANDARD_IA"), ("glacier-ir", "GLACIER_IR")] {
        for name in files.keys() {
            let key = format!("{prefix}/{name}");
            let head = client
                .head_object()
                .bucket("cold")
                .key(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.storage_class().map(|c| c.as_str()),
                Some(class),
                "{key}"
            );
        }
    }

    // Only the object uploaded whole: fake-gcs-server's compose ignores the class given
    // for the object it makes (README, Known limits).
    cp(local, "gs://cold/nearline/", "NEARLINE");
    // And server-side (a rewrite), where the class must not cost the object its headers
    // (fake-gcs-server ignores the class of a rewrite too: only the headers are checked).
    cp("gs://cold/nearline/", "gs://cold/coldline/", "COLDLINE");
    for (prefix, class) in [("nearline", Some("NEARLINE")), ("coldline", None)] {
        let path = format!("/storage/v1/b/cold/o/{prefix}%2Fsmall.txt");
        let (status, body) = http_get(&gcs.endpoint, &path, None);
        assert_eq!(status, 200, "{body}");
        let object: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(class) = class {
            assert_eq!(object["storageClass"], class, "{object}");
        }
        assert_eq!(object["contentType"], "text/plain", "{object}");
        assert!(
            object["metadata"]["skyhaul-crc64nvme"].is_string(),
            "{object}"
        );
    }

    let azure = skyhaul_testkit::AzuriteServer::start();
    azure.create_container("cold").await;
    let connection = azure.connection_string();
    let to_azure = |prefix: &str, class: &str| {
        let dst = format!("az://cold/{prefix}/");
        let args = [
            "cp",
            "-r",
            local,
            &dst,
            "--storage-class",
            class,
            "--no-journal",
            // large.bin in blocks, committed by Put Block List.
            "--multipart-threshold",
            "5M",
            "--part-size",
            "5M",
        ];
        let env = [("AZURE_STORAGE_CONNECTION_STRING", connection.as_str())];
        skyhaul_env(&args, None, None, &env)
    };
    // A tier Azure does not have is refused before any block is sent; one in another case
    // is sent as Azure spells it.
    let refused = to_azure("glacier", "GLACIER");
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "--storage-class GLACIER: az://cold has the classes Hot, Cool, Cold, Archive"
        ),
        "{}",
        refused.stderr
    );
    let run = to_azure("cool", "cool");
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in files.keys() {
        let head = azure_blob_head(&azure, "cold", &format!("cool/{name}"));
        assert!(
            head.contains("\r\nx-ms-access-tier: cool"),
            "{name}: {head}"
        );
    }
}

/// A write 40 directories down holds one descriptor, not one per level: many writes at
/// once into a deep tree used up a limit of 1,024 open files, and about half of 4,000
/// files failed with "Too many open files".
#[test]
fn deep_trees_copy_within_a_small_limit_of_open_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    let files: std::collections::BTreeMap<String, Vec<u8>> = (0..1000)
        .map(|i| (format!("{deep}{}/f{i}", i % 10), data(1000, i as u64)))
        .collect();
    write_tree(&src, &files);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let run = skyhaul_with_open_files(&["cp", "-r", s, d, "--no-journal", "-q"], 256);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_tree(&dst), files);
}
