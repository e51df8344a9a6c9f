//! Integrity under fire: a fault-injecting proxy between skyhaul and real S3 servers flips,
//! truncates, throttles and resets; nothing corrupted may ever land, and `skyhaul verify`
//! must tell identical from different.

mod common;

use common::*;
use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};
use std::collections::BTreeMap;

fn dataset() -> BTreeMap<String, Vec<u8>> {
    let mut m = mixed();
    for i in 0..12 {
        m.insert(
            format!("many/{i:02}.bin"),
            data(50_000 + i * 1000, 100 + i as u64),
        );
    }
    m
}

/// Asserts that every object present at the destination is byte-identical to its source.
fn assert_nothing_corrupt(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) {
    for (k, v) in got {
        let w = want
            .get(k)
            .unwrap_or_else(|| panic!("unexpected object {k}"));
        assert!(v == w, "{k}: corrupted object at the destination");
    }
}

/// Copies `s3://src/` to `s3://dst/copy/` (with 5 MiB parts) through a proxy that corrupts
/// the first `faults` downloads whose path contains `path`, then behaves. Returns the run and
/// how many downloads it corrupted.
fn copy_with_corrupted_downloads(
    src: &S3Server,
    dst: &S3Server,
    path: &str,
    faults: u64,
) -> (Run, u64) {
    let proxy = FaultProxy::start(
        &src.endpoint,
        Faults {
            flip_response_body: 1.0,
            only_methods: vec!["GET".into()],
            path_contains: Some(path.into()),
            max_faults: Some(faults),
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let mut args = vec![
        "cp",
        "-r",
        "s3://src/",
        "s3://dst/copy/",
        "--src-endpoint",
        &ep,
        "--dst-endpoint",
        &dst.endpoint,
        "--json",
    ];
    args.extend(SMALL_PARTS);
    let out = skyhaul(&args, Some(src), Some(dst));
    (out, proxy.injected().flip_response_body)
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_downloads_are_detected_and_never_land() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("src").await;
    let files = dataset();
    fill_bucket(&s3, "src", "data/", &files).await;
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            flip_response_body: 0.15,
            only_methods: vec!["GET".into()],
            path_contains: Some("/src/data/".into()),
            ..Default::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut complete_runs = 0;
    let mut outcomes = Vec::new();
    for run in 0..5 {
        let dst = tmp.path().join(format!("run{run}"));
        let ep = proxy.endpoint();
        let mut args = vec![
            "cp",
            "-r",
            "s3://src/data",
            dst.to_str().unwrap(),
            "--src-endpoint",
            &ep,
            "--json",
        ];
        args.extend(SMALL_PARTS);
        let out = skyhaul(&args, Some(&s3), None);
        assert!(out.code == 0 || out.code == 1, "run {run}: {}", out.stderr);
        let got = read_tree(&dst);
        outcomes.push(out.code);
        assert_nothing_corrupt(&got, &files);
        if out.code == 0 {
            complete_runs += 1;
            assert_eq!(got, files, "a successful run copied everything");
        }
    }
    let counts = proxy.injected();
    assert!(
        counts.flip_response_body >= 5,
        "the proxy did corrupt downloads ({counts:?}; exit codes {outcomes:?})"
    );
    assert!(complete_runs >= 1, "retries recover from corruption");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_downloads_between_buckets_never_land() {
    // Bucket to bucket, skyhaul does not hash small objects itself: it relays the source's
    // MD5 as Content-MD5. s3s-fs refuses a body that does not match it; moto stores it, and
    // only the comparison of the ETag it returns catches the damage.
    for kind in [S3Kind::S3sFs, S3Kind::Moto] {
        let src = S3Server::start(S3Kind::S3sFs);
        let dst = S3Server::start(kind);
        src.create_bucket("src").await;
        dst.create_bucket("dst").await;
        let files = dataset();
        fill_bucket(&src, "src", "", &files).await;
        // The first six downloads of an object are corrupted, then the proxy behaves.
        let (out, corrupted) = copy_with_corrupted_downloads(&src, &dst, "/src/many/", 6);
        let got = read_bucket(&dst, "dst", "copy/").await;
        assert_nothing_corrupt(&got, &files);
        assert_eq!(corrupted, 6, "{kind}");
        assert_eq!(out.code, 0, "{kind}: re-reads recover: {}", out.stderr);
        assert_eq!(got, files, "{kind}");
    }
}

/// Bucket to bucket, a whole object streams from the source's response into the
/// destination's request (so it is never held in memory whole). A read cut short must abort
/// that write before the server has its body: the destination sees the PUT begin while the
/// read is still under way, but never the whole body, and with no retries left the object is
/// missing, never truncated. A rerun then copies it whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_cut_short_aborts_its_streamed_write() {
    for kind in [S3Kind::S3sFs, S3Kind::Moto] {
        let (src, dst) = (S3Server::start(S3Kind::S3sFs), S3Server::start(kind));
        src.create_bucket("src").await;
        dst.create_bucket("dst").await;
        let body = data(4 << 20, 77);
        src.put("src", "big.bin", &body).await;
        let from = FaultProxy::start(
            &src.endpoint,
            Faults {
                truncate_response_body: 1.0,
                // Halfway: a cut in the first bytes would fail the read before the write began.
                truncate_halfway: true,
                only_methods: vec!["GET".into()],
                path_contains: Some("big.bin".into()),
                max_faults: Some(1),
                ..Default::default()
            },
        );
        // A hold of no time: only to count the writes of the object that begin.
        let to = FaultProxy::start(
            &dst.endpoint,
            Faults {
                delay: Some(std::time::Duration::ZERO),
                only_methods: vec!["PUT".into()],
                path_contains: Some("big.bin".into()),
                ..Default::default()
            },
        );
        let (from_ep, to_ep) = (from.endpoint(), to.endpoint());
        let copy = |retries: &str| {
            skyhaul(
                &[
                    "cp",
                    "s3://src/big.bin",
                    "s3://dst/big.bin",
                    "--src-endpoint",
                    &from_ep,
                    "--dst-endpoint",
                    &to_ep,
                    "--retries",
                    retries,
                ],
                Some(&src),
                Some(&dst),
            )
        };
        let out = copy("0");
        assert_eq!(out.code, 1, "{kind}: the object failed: {}", out.stderr);
        assert_eq!(from.injected().truncate_response_body, 1, "{kind}");
        let seen = to.injected();
        assert_eq!(seen.delayed, 1, "{kind}: the write began during the read");
        assert_eq!(
            seen.put_body_bytes, 0,
            "{kind}: no write body arrived whole"
        );
        assert_eq!(
            dst.get("dst", "big.bin").await,
            None,
            "{kind}: nothing partial was stored"
        );
        let out = copy("3");
        assert_eq!(out.code, 0, "{kind}: {}", out.stderr);
        assert!(
            dst.get("dst", "big.bin").await == Some(body.clone()),
            "{kind}"
        );
        assert_eq!(to.injected().put_body_bytes, body.len() as u64, "{kind}");
    }
}

/// A part of a striped copy corrupted on its way from the source is caught, and the object
/// is copied again from scratch, never completed from the journaled parts of the failed
/// attempt. Where the source records a full-object CRC64-NVME (skyhaul writes one with each
/// object it writes in one PUT; AWS S3 keeps one for new objects), the parts' CRCs catch it
/// before the upload is completed, without a second MD5 pass; otherwise the whole-object MD5
/// does.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_part_is_caught_and_the_object_copied_afresh() {
    let files: BTreeMap<String, Vec<u8>> = mixed()
        .into_iter()
        .filter(|(k, _)| k.starts_with("big/"))
        .collect();
    for recorded_crc in [true, false] {
        let (src, dst) = (
            S3Server::start(S3Kind::S3sFs),
            S3Server::start(S3Kind::S3sFs),
        );
        src.create_bucket("src").await;
        dst.create_bucket("dst").await;
        if recorded_crc {
            // Below the default threshold, so one PUT: a plain-MD5 ETag, and the CRC.
            let tmp = tempfile::tempdir().unwrap();
            write_tree(tmp.path(), &files);
            let from = tmp.path().to_str().unwrap();
            let seeded = skyhaul(
                &[
                    "cp",
                    "-r",
                    from,
                    "s3://src/",
                    "--dst-endpoint",
                    &src.endpoint,
                ],
                None,
                Some(&src),
            );
            assert_eq!(seeded.code, 0, "{}", seeded.stderr);
        } else {
            fill_bucket(&src, "src", "", &files).await;
        }
        let (out, corrupted) = copy_with_corrupted_downloads(&src, &dst, "/src/big/", 1);
        assert_eq!(corrupted, 1);
        assert_nothing_corrupt(&read_bucket(&dst, "dst", "copy/").await, &files);
        assert_eq!(out.code, 0, "copied again: {}", out.stderr);
        let caught_by = if recorded_crc {
            "CRC64-NVME"
        } else {
            "source's MD5"
        };
        assert!(
            out.stderr.contains(caught_by),
            "{caught_by}: {}",
            out.stderr
        );
        assert_eq!(read_bucket(&dst, "dst", "copy/").await, files);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_uploads_are_rejected_or_caught() {
    // s3s-fs checks Content-MD5; moto stores whatever arrives, so only our check of the
    // returned ETag can catch it there.
    for kind in [S3Kind::S3sFs, S3Kind::Moto] {
        let s3 = S3Server::start(kind);
        s3.create_bucket("dst").await;
        // The first six uploads with a body are corrupted (a rate would sometimes corrupt
        // none of this small dataset's ~20 uploads), then the proxy behaves.
        let proxy = FaultProxy::start(
            &s3.endpoint,
            Faults {
                flip_request_body: 1.0,
                only_methods: vec!["PUT".into()],
                max_faults: Some(6),
                ..Default::default()
            },
        );
        let tmp = tempfile::tempdir().unwrap();
        let files = dataset();
        write_tree(&tmp.path().join("src"), &files);
        let ep = proxy.endpoint();
        let src = tmp.path().join("src");
        let mut args = vec![
            "cp",
            "-r",
            src.to_str().unwrap(),
            "s3://dst/up",
            "--dst-endpoint",
            &ep,
            "--json",
        ];
        args.extend(SMALL_PARTS);
        let out = skyhaul(&args, None, Some(&s3));
        let got = read_bucket(&s3, "dst", "up/").await;
        assert_nothing_corrupt(&got, &files);
        assert_eq!(
            proxy.injected().flip_request_body,
            6,
            "{kind}: uploads were corrupted"
        );
        assert_eq!(out.code, 0, "{kind}: retries recover: {}", out.stderr);
        assert_eq!(got, files, "{kind}");
        assert!(out.json()["retries"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_errors_truncation_and_resets_are_survived() {
    let a = S3Server::start(S3Kind::S3sFs);
    let b = S3Server::start(S3Kind::S3sFs);
    a.create_bucket("src").await;
    b.create_bucket("dst").await;
    let files = dataset();
    fill_bucket(&a, "src", "", &files).await;
    let chaos = Faults {
        slow_down_503: 0.12,
        internal_error_500: 0.05,
        truncate_response_body: 0.05,
        reset_connection: 0.05,
        ..Default::default()
    };
    let pa = FaultProxy::start(&a.endpoint, chaos.clone());
    let pb = FaultProxy::start(&b.endpoint, chaos);
    let (ea, eb) = (pa.endpoint(), pb.endpoint());
    // Three copies so that enough faults land whatever the dice say (~25% of ~40 requests each).
    for run in 0..3 {
        let dst = format!("s3://dst/run{run}/");
        let mut args = vec![
            "cp",
            "-r",
            "s3://src/",
            &dst,
            "--src-endpoint",
            &ea,
            "--dst-endpoint",
            &eb,
            "--json",
        ];
        args.extend(SMALL_PARTS);
        let out = skyhaul(&args, Some(&a), Some(&b));
        assert_eq!(out.code, 0, "{}{}", out.stderr, out.stdout);
        assert_eq!(read_bucket(&b, "dst", &format!("run{run}/")).await, files);
        assert_eq!(out.json()["verification"]["checksum_mismatch"], 0);
    }
    let injected = pa.injected().total() + pb.injected().total();
    assert!(injected >= 10, "faults were injected ({injected})");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_tells_identical_from_different() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("one").await;
    s3.create_bucket("two").await;
    let files = dataset();
    fill_bucket(&s3, "one", "", &files).await;
    fill_bucket(&s3, "two", "", &files).await;
    let ep = s3.endpoint.as_str();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "-r",
            "s3://one/",
            "s3://two/",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
            "--json",
        ];
        args.extend(extra);
        skyhaul(&args, Some(&s3), Some(&s3))
    };
    let same = verify(&[]);
    assert_eq!(same.code, 0, "{}", same.stderr);
    assert_eq!(same.json()["checksum_ok"], files.len() as u64);

    s3.client()
        .await
        .delete_object()
        .bucket("two")
        .key("small.txt")
        .send()
        .await
        .unwrap();
    s3.put("two", "extra.bin", b"extra").await;
    s3.put("two", "many/00.bin", b"wrong size").await;
    let mut same_size = files["many/01.bin"].clone();
    same_size[100] ^= 1;
    s3.put("two", "many/01.bin", &same_size).await;
    let diff = verify(&[]);
    assert_eq!(diff.code, 6, "{}", diff.stderr);
    let v = diff.json();
    assert_eq!(
        (
            v["missing"].as_u64(),
            v["extra"].as_u64(),
            v["size_mismatch"].as_u64(),
            v["checksum_mismatch"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1)),
        "{v}"
    );

    // One object copied into a "directory" keeps its base name; verify finds it there.
    s3.create_bucket("three").await;
    let single = |verb: &str| {
        let args = [
            verb,
            "s3://one/small.txt",
            "s3://three/in/",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
            "--json",
        ];
        skyhaul(&args, Some(&s3), Some(&s3))
    };
    assert_eq!(single("cp").code, 0);
    let checked = single("verify");
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    assert_eq!(checked.json()["checksum_ok"], 1, "{}", checked.stdout);
}

/// Bytes that change at rest, behind the store's back, keep the ETag and checksum recorded
/// when they were written: the cheap check trusts those, `--deep` re-reads both sides and
/// finds the change, for an object written whole and one written in parts.
#[tokio::test(flavor = "multi_thread")]
async fn verify_deep_finds_bytes_changed_at_rest() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = mixed();
    write_tree(&src, &files);
    let mut args = cp_r(
        src.to_str().unwrap(),
        "s3://bkt/p/",
        "--dst-endpoint",
        &s3.endpoint,
    );
    args.extend(SMALL_PARTS);
    let run = skyhaul(&args, None, Some(&s3));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // s3s-fs keeps each object as a file: flip a byte of two of them there.
    for key in ["small.txt", "big/multipart.bin"] {
        let path = s3.data_dir.join("bkt/p").join(key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[7] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "-r", src.to_str().unwrap(), "s3://bkt/p/"];
        args.extend(["--dst-endpoint", &s3.endpoint, "--json"]);
        args.extend(extra);
        skyhaul(&args, None, Some(&s3))
    };
    let cheap = verify(&[]);
    assert_eq!(
        cheap.code, 0,
        "what is recorded still matches: {}",
        cheap.stderr
    );
    let deep = verify(&["--deep"]);
    assert_eq!(deep.code, 6, "{}", deep.stderr);
    let v = deep.json();
    assert_eq!(v["checksum_mismatch"], 2, "{v}");
    assert_eq!(v["checksum_ok"], files.len() as u64 - 2, "{v}");
}

/// `verify` takes the filters of the `cp` or `sync` it checks, and leaves out what they leave
/// out: a source object they exclude is not missing, a destination-only object a filtered
/// sync keeps is not extra. What they select is still compared.
#[test]
fn verify_with_the_transfers_filters_leaves_out_what_they_leave_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_tree(
        &src,
        &BTreeMap::from([
            ("a.txt".to_string(), b"a".to_vec()),
            ("d/b.txt".to_string(), b"b".to_vec()),
            ("d/scratch.tmp".to_string(), b"t".to_vec()),
        ]),
    );
    write_tree(
        &dst,
        &BTreeMap::from([("cache.tmp".to_string(), b"c".to_vec())]),
    );
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let sync = [
        "sync",
        "--delete",
        "-y",
        s,
        d,
        "--exclude",
        "*.tmp",
        "--no-journal",
    ];
    assert_eq!(skyhaul(&sync, None, None).code, 0);
    let verify = |extra: &[&str]| {
        let args = [&["verify", "-r", s, d, "--json"], extra].concat();
        skyhaul(&args, None, None)
    };
    let unfiltered = verify(&[]);
    assert_eq!(unfiltered.code, 6, "{}", unfiltered.stderr);
    let v = unfiltered.json();
    assert_eq!((&v["missing"], &v["extra"]), (&1.into(), &1.into()), "{v}");
    let filtered = verify(&["--exclude", "*.tmp"]);
    assert_eq!(filtered.code, 0, "{}", filtered.stderr);
    let v = filtered.json();
    assert_eq!(
        (&v["objects"], &v["checksum_ok"]),
        (&2.into(), &2.into()),
        "{v}"
    );
    // What they select is still compared.
    std::fs::write(dst.join("d/b.txt"), b"B").unwrap();
    let changed = verify(&["--exclude", "*.tmp"]);
    assert_eq!(changed.code, 6, "{}", changed.stderr);
    assert_eq!(changed.json()["checksum_mismatch"], 1, "{}", changed.stdout);
    // One object, by its base name, as `cp` of one object.
    let one = src.join("d/scratch.tmp");
    let one = |extra: &[&str]| {
        let args = [&["verify", one.to_str().unwrap(), d, "--json"], extra].concat();
        skyhaul(&args, None, None)
    };
    assert_eq!(one(&[]).code, 6, "not copied, so missing");
    let left_out = one(&["--exclude", "*.tmp"]);
    assert_eq!(left_out.code, 0, "{}", left_out.stderr);
    assert_eq!(left_out.json()["objects"], 0, "{}", left_out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_handles_multipart_objects_made_by_another_client() {
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("src").await;
    s3.create_bucket("dst").await;
    let big = data(12 * 1024 * 1024, 77);
    s3.put_multipart("src", "big.bin", &big, 5 * 1024 * 1024)
        .await;
    let ep = s3.endpoint.as_str();
    // A copy through this machine lays the object out its own way (one PUT here).
    let copy = skyhaul(
        &[
            "cp",
            "s3://src/big.bin",
            "s3://dst/big.bin",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
            "--no-server-side-copy",
        ],
        Some(&s3),
        Some(&s3),
    );
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    let args = |deep: bool| {
        let mut a = vec![
            "verify",
            "s3://src/big.bin",
            "s3://dst/big.bin",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
            "--json",
        ];
        if deep {
            a.push("--deep");
        }
        a
    };
    let shallow = skyhaul(&args(false), Some(&s3), Some(&s3)).json();
    assert_eq!(
        (
            shallow["size_ok"].as_u64(),
            shallow["not_comparable"].as_u64()
        ),
        (Some(1), Some(1)),
        "{shallow}"
    );
    // Without --json, the report says how to compare them.
    let plain: Vec<&str> = args(false).into_iter().filter(|a| *a != "--json").collect();
    let hinted = skyhaul(&plain, Some(&s3), Some(&s3));
    assert!(
        hinted
            .stdout
            .contains("1 object had no checksum to compare"),
        "{}",
        hinted.stdout
    );
    let deep = skyhaul(&args(true), Some(&s3), Some(&s3));
    assert_eq!(deep.code, 0, "{}", deep.stderr);
    assert_eq!(deep.json()["checksum_ok"], 1);
    // And a same-size corruption of the multipart original is caught by the deep check.
    let mut bad = big.clone();
    bad[6 * 1024 * 1024] ^= 0xff;
    s3.put("dst", "big.bin", &bad).await;
    let caught = skyhaul(&args(true), Some(&s3), Some(&s3));
    assert_eq!(caught.code, 6, "{}", caught.stderr);
    assert_eq!(caught.json()["checksum_mismatch"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_compares_the_etag_each_write_returned_instead_of_a_head() {
    // s3s-fs lists no ETags: without the ETag its PUT answered, verifying each object would
    // take a HEAD.
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let proxy = FaultProxy::start(&s3.endpoint, Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let files = dataset();
    write_tree(&tmp.path().join("src"), &files);
    let ep = proxy.endpoint();
    let src = tmp.path().join("src");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            src.to_str().unwrap(),
            "s3://dst/data",
            "--dst-endpoint",
            &ep,
            "--no-journal",
            "--json",
        ],
        None,
        Some(&s3),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = &run.json()["verification"];
    assert_eq!(v["checksum_ok"], files.len(), "{v}");
    assert_eq!(v["not_comparable"], 0, "{v}");
    assert_eq!(proxy.injected().head_requests, 0, "HEADs sent to verify");
    assert_eq!(read_bucket(&s3, "dst", "data/").await, files);
}

/// A bucket that encrypts with SSE-KMS gives its objects ETags that look like MD5s but are
/// none (AWS does; `S3Kind::MotoSseKms` is moto taught the same). Two servers: such a bucket
/// and an ordinary one (s3s-fs).
struct KmsRig {
    kms: S3Server,
    plain: S3Server,
    tmp: tempfile::TempDir,
    files: BTreeMap<String, Vec<u8>>,
}

impl KmsRig {
    async fn start() -> KmsRig {
        let kms = S3Server::start(S3Kind::MotoSseKms);
        let plain = S3Server::start(S3Kind::S3sFs);
        kms.create_bucket("kms").await;
        plain.create_bucket("plain").await;
        let tmp = tempfile::tempdir().unwrap();
        let files = mixed();
        write_tree(&tmp.path().join("files"), &files);
        KmsRig {
            kms,
            plain,
            tmp,
            files,
        }
    }

    fn local(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().unwrap().to_string()
    }

    /// `skyhaul ARGS`, with the endpoint and credentials of the server each `s3://kms/…` or
    /// `s3://plain/…` location names, `--json`, and for copies 5 MiB parts and no journal.
    fn run(&self, args: &[&str]) -> common::Run {
        let mut sides = args[1..].iter().filter(|a| !a.starts_with('-'));
        let mut server = |flag: &str, args: &mut Vec<String>| {
            let server = match sides.next() {
                Some(l) if l.starts_with("s3://kms/") => &self.kms,
                Some(l) if l.starts_with("s3://plain/") => &self.plain,
                _ => return None,
            };
            args.extend([flag.to_string(), server.endpoint.clone()]);
            Some(server)
        };
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (src, dst) = (
            server("--src-endpoint", &mut all),
            server("--dst-endpoint", &mut all),
        );
        all.push("--json".into());
        if args[0] != "verify" {
            all.push("--no-journal".into());
            all.extend(SMALL_PARTS.map(String::from));
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        skyhaul(&all, src, dst)
    }

    /// `cp -r SRC DST`, which must copy every one of `want` and verify them.
    async fn copies(&self, src: &str, dst: &str, want: &BTreeMap<String, Vec<u8>>) -> common::Run {
        let run = self.run(&["cp", "-r", src, dst]);
        assert_eq!(
            run.code, 0,
            "{src} -> {dst}: {}\n{}",
            run.stderr, run.stdout
        );
        let r = run.json();
        assert_eq!(r["objects_copied"], want.len(), "{src} -> {dst}: {r}");
        assert_eq!(
            r["verification"]["checksum_mismatch"], 0,
            "{src} -> {dst}: {r}"
        );
        let got = match dst.strip_prefix("s3://") {
            Some(path) => {
                let (bucket, prefix) = path.split_once('/').unwrap();
                let server = if bucket == "kms" {
                    &self.kms
                } else {
                    &self.plain
                };
                read_bucket(server, bucket, prefix).await
            }
            None => read_tree(std::path::Path::new(dst)),
        };
        assert!(got == *want, "{src} -> {dst}: the copy differs");
        run
    }
}

/// Copies from, into and within an SSE-KMS bucket neither take its ETags for checksums nor
/// fail on them: whole, streamed, striped or server-side. Objects another tool put there,
/// one of them large enough to be striped and with no CRC recorded, come out whole too.
#[tokio::test(flavor = "multi_thread")]
async fn copies_from_into_and_within_an_sse_kms_bucket() {
    let rig = KmsRig::start().await;
    let files = &rig.files;
    fill_bucket(&rig.plain, "plain", "data/", files).await;
    rig.copies("s3://plain/data/", "s3://kms/in/", files).await;
    rig.copies(&rig.local("files"), "s3://kms/files/", files)
        .await;
    rig.copies("s3://kms/in/", "s3://plain/out/", files).await;
    rig.copies("s3://kms/in/", &rig.local("down"), files).await;
    let within = rig.copies("s3://kms/in/", "s3://kms/copy/", files).await;
    assert_eq!(
        within.json()["server_side_copies"],
        files.len(),
        "{}",
        within.stdout
    );

    fill_bucket(&rig.kms, "kms", "seeded/", files).await;
    rig.copies("s3://kms/seeded/", "s3://plain/seeded/", files)
        .await;
    rig.copies("s3://kms/seeded/", &rig.local("seeded"), files)
        .await;
}

/// A whole object read from an SSE-KMS bucket has no content MD5 to be checked against (its
/// ETag is none), but the answer to its read carries the checksum the store keeps of it: here
/// a CRC32, which AWS's SDKs send by default. A download corrupted on the way is caught by it
/// and read again, buffered for a bucket and streamed into a directory alike.
#[tokio::test(flavor = "multi_thread")]
async fn whole_reads_from_an_sse_kms_bucket_are_checked_by_its_stored_checksum() {
    let rig = KmsRig::start().await;
    let files: BTreeMap<String, Vec<u8>> = rig
        .files
        .iter()
        .filter(|(_, v)| v.len() < 5 << 20)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &files {
        let key = format!("crc/{k}");
        rig.kms.put_with_checksum("kms", &key, v, "CRC32").await;
    }
    let victim = "dir/nested/deep.bin";
    let (plain, local) = (rig.plain.endpoint.clone(), rig.local("crc"));
    // The proxy also watches one header of the copy's requests: whole reads go without
    // `Range` (AWS reports no checksum to a ranged read, even of every byte), and ask for the
    // checksum with a header their signature covers.
    for (dst, header) in [
        ("s3://plain/crc/", "range"),
        (&local, "x-amz-checksum-mode"),
    ] {
        // Two corrupted reads of one object. At most one of them is a read given up for a
        // buffered one (the ETag turned out no MD5, so the object cannot stream into a
        // bucket), so at least one is checked, and the object's third read is clean.
        let proxy = FaultProxy::start(
            &rig.kms.endpoint,
            Faults {
                flip_response_body: 1.0,
                only_methods: vec!["GET".into()],
                path_contains: Some(format!("/kms/crc/{victim}")),
                max_faults: Some(2),
                watch_header: Some(header.into()),
                ..Default::default()
            },
        );
        let ep = proxy.endpoint();
        let into_bucket = dst.starts_with("s3://");
        let mut args = vec!["cp", "-r", "s3://kms/crc/", dst, "--src-endpoint", &ep];
        if into_bucket {
            args.extend(["--dst-endpoint", &plain]);
        }
        args.extend(["--no-journal", "--json"]);
        let run = skyhaul(&args, Some(&rig.kms), into_bucket.then_some(&rig.plain));
        assert_eq!(run.code, 0, "{dst}: {}", run.stderr);
        let counts = proxy.injected();
        assert_eq!(counts.flip_response_body, 2, "{dst}");
        match header {
            "range" => assert_eq!(counts.watched, 0, "{dst}: {counts:?}"),
            _ => {
                // Every object read once, the victim twice more.
                assert!(counts.watched > files.len() as u64, "{dst}: {counts:?}");
                assert_eq!(counts.watched_signed, counts.watched, "{dst}: {counts:?}");
            }
        }
        // The object copied again: only a check of the bytes read makes that happen here.
        let report = run.json();
        assert!(report["retries"].as_u64().unwrap() >= 1, "{dst}: {report}");
        let got = match into_bucket {
            true => read_bucket(&rig.plain, "plain", "crc/").await,
            false => read_tree(std::path::Path::new(dst)),
        };
        assert!(got == files, "{dst}: the copy differs");
    }
}

/// `verify` and `sync --checksum` never take the differing ETags of an SSE-KMS bucket's
/// copy for differing content: they compare the CRCs recorded with the objects, which find
/// a real difference; with none recorded (and this server, unlike AWS, computes none), an
/// object is "not comparable" to `verify`, and `--deep` reads both sides.
#[tokio::test(flavor = "multi_thread")]
async fn verify_and_sync_compare_sse_kms_objects_by_their_crc() {
    let rig = KmsRig::start().await;
    let (files, n) = (&rig.files, rig.files.len());
    let local = rig.local("files");
    rig.copies(&local, "s3://plain/files/", files).await;
    rig.copies(&local, "s3://kms/files/", files).await;

    let verify = |src: &str, extra: &[&str]| {
        let mut args = vec!["verify", "-r", src, "s3://kms/files/"];
        args.extend(extra);
        let run = rig.run(&args);
        (run.code, run.json())
    };
    for src in ["s3://plain/files/", &local] {
        let (code, v) = verify(src, &[]);
        assert_eq!(code, 0, "{src}: {v}");
        assert_eq!(v["checksum_ok"], n, "{src}: {v}");
    }

    let sync = ["sync", "--checksum", "s3://plain/files/", "s3://kms/files/"];
    let again = rig.run(&sync);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["objects_copied"], 0, "{}", again.stdout);

    // The destination's copy replaced, by skyhaul, with other bytes of the same size: it is
    // newer than its source, so only a checksum sees the difference.
    let key = "dir/nested/deep.bin";
    let other = rig.tmp.path().join("other");
    let mut changed = files.clone();
    changed.get_mut(key).unwrap()[9] ^= 1;
    write_tree(&other, &changed);
    let replaced = rig.run(&[
        "cp",
        &format!("{}/{key}", other.display()),
        &format!("s3://kms/files/{key}"),
    ]);
    assert_eq!(replaced.code, 0, "{}", replaced.stderr);
    let (code, v) = verify("s3://plain/files/", &[]);
    assert_eq!(code, 6, "{v}");
    assert_eq!(v["checksum_mismatch"], 1, "{v}");
    let by_sum = rig.run(&sync);
    assert_eq!(by_sum.code, 0, "{}", by_sum.stderr);
    assert_eq!(by_sum.json()["objects_copied"], 1, "{}", by_sum.stdout);
    assert!(read_bucket(&rig.kms, "kms", "files/").await == *files);

    // Written by another tool, with no CRC: not comparable, and `--deep` reads.
    rig.kms
        .put("kms", &format!("files/{key}"), &changed[key])
        .await;
    let (code, v) = verify("s3://plain/files/", &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (
            v["checksum_mismatch"].as_u64(),
            v["not_comparable"].as_u64()
        ),
        (Some(0), Some(1)),
        "{v}"
    );
    let (code, v) = verify("s3://plain/files/", &["--deep"]);
    assert_eq!(code, 6, "{v}");
    assert_eq!(v["checksum_mismatch"], 1, "{v}");
}

/// `skyhaul COMMAND SRC s3://dst/copy/ --retries 1 --json`, `files` written under SRC,
/// through a proxy that fails every listing of `copy/` after the first `answered` (500):
/// the check after the copy cannot be done. Returns the run (exit 1, asserted) and its
/// report (the `done` event, which must be there).
fn with_a_failing_check(
    s3: &S3Server,
    command: &[&str],
    files: &BTreeMap<String, Vec<u8>>,
    answered: u64,
) -> (Run, serde_json::Value) {
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            internal_error_500: 1.0,
            only_methods: vec!["GET".into()],
            // The listings of `copy/`; the check before the copy lists no prefix.
            path_contains: Some("prefix=copy".into()),
            skip_first: answered,
            ..Default::default()
        },
    );
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), files);
    let ep = proxy.endpoint();
    let rest = [
        src.path().to_str().unwrap(),
        "s3://dst/copy/",
        "--dst-endpoint",
        &ep,
        "--retries",
        "1",
        "--json",
    ];
    let run = skyhaul(&[command, &rest[..]].concat(), None, Some(s3));
    assert_eq!(run.code, 1, "{}", run.stderr);
    let done = run
        .events()
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no report: {}", run.stdout));
    (run, done)
}

/// A destination whose listing fails for good after the copy (gone, or refusing listings)
/// still gets the copy's report, saying that what was copied is not checked, then the
/// check's error with its exit code: the run ended with that error alone, no report (no
/// `done` event) and no word of what had been copied.
#[tokio::test(flavor = "multi_thread")]
async fn a_check_that_cannot_list_the_destination_still_reports_the_copy() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let files = mixed();
    let (run, done) = with_a_failing_check(&s3, &["cp", "-r"], &files, 0);
    assert_eq!(done["objects_copied"], files.len() as u64, "{done}");
    let failed = &done["check_failed"];
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("list")),
        "{done}"
    );
    let last = run.json();
    assert_eq!(
        (&last["event"], &last["exit_code"]),
        (&"error".into(), &1.into())
    );
    assert_eq!(read_bucket(&s3, "dst", "copy/").await, files);
}

/// A `sync --delete` whose check after the copy cannot be done deletes nothing: its
/// deletions wait for a copy that was checked, as they do after a failure.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_whose_check_cannot_be_done_deletes_nothing() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("dst").await;
    let extra = BTreeMap::from([("extra.bin".to_string(), data(1000, 1))]);
    fill_bucket(&s3, "dst", "copy/", &extra).await;
    let files = BTreeMap::from([("a.bin".to_string(), data(3000, 2))]);
    // The sync's own listing of the destination is answered; the check's fails.
    let (_, done) = with_a_failing_check(&s3, &["sync", "--delete"], &files, 1);
    assert_eq!(done["objects_copied"], 1, "{done}");
    assert_eq!(done["objects_deleted"], 0, "{done}");
    assert!(done["check_failed"].is_object(), "{done}");
    let mut both = files.clone();
    both.extend(extra);
    assert_eq!(read_bucket(&s3, "dst", "copy/").await, both);
}
