//! Full-object checksums: recorded with every object skyhaul writes (multipart ones too), and
//! what `verify` and `sync --checksum` compare when ETags cannot say anything.

mod common;

use common::*;
use skyhaul_engine::integrity::sums;
use skyhaul_testkit::{S3Kind, S3Server};
use std::time::{Duration, SystemTime};

const BIG: &str = "big/multipart.bin";

/// The CRC64-NVME recorded with `key`, read back with the server's own HEAD.
async fn recorded_crc(s3: &S3Server, bucket: &str, key: &str) -> Option<String> {
    let head = s3
        .client()
        .await
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    head.metadata()?.get("skyhaul-crc64nvme").cloned()
}

/// `skyhaul verify -r` of a local tree against a bucket prefix.
fn verify(local: &str, s3: &S3Server, url: &str) -> Run {
    let args = [
        "verify",
        "-r",
        local,
        url,
        "--dst-endpoint",
        &s3.endpoint,
        "--json",
    ];
    skyhaul(&args, None, Some(s3))
}

fn crc_hex(data: &[u8]) -> String {
    format!("{:016x}", sums(data, false).crc64)
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_objects_carry_their_crc_and_verify_with_it() {
    // rclone serve s3 gives multipart objects ETags of its own making, so only the
    // recorded CRC can tell whether the content is right.
    let (a, b) = (
        S3Server::start(S3Kind::S3sFs),
        S3Server::start(S3Kind::RcloneServe),
    );
    a.create_bucket("one").await;
    b.create_bucket("two").await;
    let tmp = tempfile::tempdir().unwrap();
    let files = mixed();
    let src = tmp.path().join("src");
    write_tree(&src, &files);
    let src = src.to_str().unwrap();

    let mut up = vec!["cp", "-r", src, "s3://one/d", "--dst-endpoint", &a.endpoint];
    up.extend(SMALL_PARTS);
    let out = skyhaul(&up, None, Some(&a));
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (key, data) in &files {
        assert_eq!(
            recorded_crc(&a, "one", &format!("d/{key}"))
                .await
                .as_deref(),
            Some(crc_hex(data).as_str()),
            "{key}: the CRC is recorded with the object, multipart or not"
        );
    }

    // S3 to S3 through this machine: the CRC the source records goes with the copy.
    let mut across = vec![
        "cp",
        "-r",
        "s3://one/d",
        "s3://two/d",
        "--src-endpoint",
        &a.endpoint,
        "--dst-endpoint",
        &b.endpoint,
        "--json",
    ];
    across.extend(SMALL_PARTS);
    let out = skyhaul(&across, Some(&a), Some(&b));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = &out.json()["verification"];
    assert_eq!(v["checksum_ok"], files.len() as u64, "{v}");
    assert_eq!(v["not_comparable"], 0, "{v}");
    assert_eq!(
        recorded_crc(&b, "two", &format!("d/{BIG}"))
            .await
            .as_deref(),
        Some(crc_hex(&files[BIG]).as_str())
    );

    // `verify` compares a local tree with either copy by checksum, multipart objects too.
    for (s3, url) in [(&a, "s3://one/d"), (&b, "s3://two/d")] {
        let out = verify(src, s3, url);
        assert_eq!(out.code, 0, "{url}: {}", out.stderr);
        let v = out.json();
        assert_eq!(v["checksum_ok"], files.len() as u64, "{url}: {v}");
    }

    // Same sizes, different bytes: a single-part and a multipart object.
    let mut changed = files.clone();
    for key in ["dir/nested/deep.bin", BIG] {
        let data = changed.get_mut(key).unwrap();
        data[1000] ^= 0xff;
    }
    let src2 = tmp.path().join("changed");
    write_tree(&src2, &changed);
    for (s3, url) in [(&a, "s3://one/d"), (&b, "s3://two/d")] {
        let out = verify(src2.to_str().unwrap(), s3, url);
        assert_eq!(out.code, 6, "{url}: {}", out.stderr);
        let v = out.json();
        assert_eq!(v["checksum_mismatch"], 2, "{url}: {v}");
        let keys: Vec<&str> = v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["key"].as_str().unwrap())
            .collect();
        assert!(keys.iter().any(|k| k.ends_with(BIG)), "{keys:?}");
        assert!(keys.iter().any(|k| k.ends_with("deep.bin")), "{keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_checksum_finds_changes_that_size_and_time_miss() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let tmp = tempfile::tempdir().unwrap();
    let files = mixed();
    let src = tmp.path().join("src");
    write_tree(&src, &files);
    let src_s = src.to_str().unwrap();
    let ep = s3.endpoint.as_str();
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", src_s, "s3://dst/d", "--dst-endpoint", ep, "--json"];
        args.extend(SMALL_PARTS);
        args.extend(extra);
        skyhaul(&args, None, Some(&s3))
    };
    let first = sync(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);

    // Rewrite two files in place with the same size and an old mtime: what a restore from
    // backup or a careless tool does. Size and time cannot see it.
    let old = SystemTime::now() - Duration::from_secs(86_400);
    let mut changed = files.clone();
    for key in ["small.txt", BIG] {
        let data = changed.get_mut(key).unwrap();
        data[7] ^= 0x55;
        let path = src.join(key);
        std::fs::write(&path, &*data).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(old).unwrap();
    }
    let by_time = sync(&[]);
    assert_eq!(by_time.code, 0, "{}", by_time.stderr);
    assert_eq!(by_time.json()["objects_copied"], 0, "size and time miss it");

    let by_sum = sync(&["--checksum"]);
    assert_eq!(by_sum.code, 0, "{}", by_sum.stderr);
    let r = by_sum.json();
    assert_eq!(r["objects_copied"], 2, "{r}");
    assert_eq!(r["objects_skipped"], files.len() as u64 - 2, "{r}");
    assert_eq!(read_bucket(&s3, "dst", "d/").await, changed);

    // Nothing left to do: every object compares equal, none is copied again.
    let again = sync(&["--checksum"]);
    assert_eq!(again.json()["objects_copied"], 0, "{}", again.stdout);

    // A dry run compares too, and writes nothing.
    let data = changed.get_mut("odd/a+b=c&d.txt").unwrap();
    data[0] ^= 1;
    std::fs::write(src.join("odd/a+b=c&d.txt"), &*data).unwrap();
    let dry = sync(&["--checksum", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let lines: Vec<&str> = dry
        .stdout
        .lines()
        .filter(|l| l.contains("\"copy\""))
        .collect();
    assert_eq!(lines.len(), 1, "{}", dry.stdout);
    assert!(lines[0].contains("a+b=c&d.txt"), "{}", lines[0]);
    assert_ne!(read_bucket(&s3, "dst", "d/").await, changed);
}
