//! Each common mistake gets one clear line, a documented exit code, and nothing written.

mod common;

use common::*;
use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};
use std::collections::BTreeMap;

fn one_line_error(run: &Run) -> &str {
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line: {}", run.stderr);
    lines[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bucket_no_objects_and_prefix_without_r() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    s.put("bkt", "dir/x", b"x").await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    let d = dst.to_str().unwrap();
    let ep = s.endpoint.as_str();

    let run = skyhaul(
        &["cp", "-r", "s3://nope/x", d, "--src-endpoint", ep],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("NoSuchBucket"),
        "{}",
        run.stderr
    );

    // A destination bucket is never made: the line says to make it.
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"f").unwrap();
    let src = src.to_str().unwrap();
    // A name S3 refuses cannot be a bucket here either: exit 3, with the rules.
    for (bucket, says) in [
        ("nope", ["NoSuchBucket", "create it first"]),
        ("My_Bucket", ["InvalidBucketName", "lowercase"]),
    ] {
        let to = format!("s3://{bucket}/x");
        let run = skyhaul(
            &["cp", "-r", src, &to, "--dst-endpoint", ep],
            None,
            Some(&s),
        );
        assert_eq!(run.code, 3, "{}", run.stderr);
        let line = one_line_error(&run);
        assert!(says.iter().all(|w| line.contains(w)), "{line}");
        assert_eq!(line.contains("create it first"), bucket == "nope", "{line}");
    }

    let run = skyhaul(
        &["cp", "-r", "s3://bkt/empty-prefix", d, "--src-endpoint", ep],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("no objects under"),
        "{}",
        run.stderr
    );

    // A prefix without -r, named as a prefix or not: `verify` says so as `cp` does (it
    // once showed the SDK's "key was missing").
    for (verb, prefix) in [
        ("cp", "s3://bkt/dir"),
        ("verify", "s3://bkt/dir"),
        ("verify", "s3://bkt/dir/"),
    ] {
        let run = skyhaul(&[verb, prefix, d, "--src-endpoint", ep], Some(&s), None);
        assert_eq!(run.code, 3, "{verb} {prefix}: {}", run.stderr);
        let line = one_line_error(&run);
        assert!(
            line.contains("is a prefix, not an object (use -r"),
            "{verb} {prefix}: {line}"
        );
    }

    let run = skyhaul(
        &["cp", "s3://bkt/absent.bin", d, "--src-endpoint", ep],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("no such object"),
        "{}",
        run.stderr
    );

    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://bkt/dir",
            "s3://missing-dst/",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
        ],
        Some(&s),
        Some(&s),
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("s3://missing-dst"),
        "{}",
        run.stderr
    );
    assert!(!dst.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_and_unreachable_endpoint() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    s.put("bkt", "k", b"x").await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("out");

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyhaul"));
    let out = cmd
        .args([
            "cp",
            "s3://bkt/k",
            d.to_str().unwrap(),
            "--src-endpoint",
            &s.endpoint,
        ])
        .env("SKYHAUL_SRC_ACCESS_KEY_ID", &s.access_key)
        .env("SKYHAUL_SRC_SECRET_ACCESS_KEY", "wrong-secret-value")
        .env("SKYHAUL_JOURNAL", test_journal())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("SKYHAUL_SRC_ACCESS_KEY_ID") && stderr.contains("--src-profile"),
        "says what to do: {stderr}"
    );
    assert!(
        !stderr.contains("wrong-secret-value") && !stderr.contains(&s.secret_key),
        "no secrets: {stderr}"
    );

    // An access key the store does not know (s3s-fs answers NotSignedUp, as AWS does for
    // an account without S3) is refused credentials, not a bucket that may be written but
    // not listed ("--verify none").
    let src = tmp.path().join("src");
    write_tree(&src, &BTreeMap::from([("f".to_string(), b"f".to_vec())]));
    let run = skyhaul_env(
        &cp_r(
            src.to_str().unwrap(),
            "s3://bkt/up/",
            "--dst-endpoint",
            &s.endpoint,
        ),
        None,
        Some(&s),
        &[("SKYHAUL_DST_ACCESS_KEY_ID", "AKIDUNKNOWNTOTHESERVER")],
    );
    assert_eq!(run.code, 4, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("does not accept these credentials") && !line.contains("--verify none"),
        "{line}"
    );

    let run = skyhaul(
        &[
            "cp",
            "s3://bkt/k",
            d.to_str().unwrap(),
            "--src-endpoint",
            "http://127.0.0.1:9",
        ],
        Some(&s),
        None,
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("cannot reach") && line.contains("--src-endpoint"),
        "{line}"
    );
    assert!(!d.exists());

    // A web server that is no S3 endpoint: its 404 says so.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", web.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in web.incoming() {
            let mut conn = conn.unwrap();
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut head);
            let page = "<html>not here</html>";
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = std::io::Write::write_all(&mut conn, answer.as_bytes());
        }
    });
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://bkt/data",
            d.to_str().unwrap(),
            "--src-endpoint",
            &url,
        ],
        Some(&s),
        None,
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("HTTP 404") && line.contains("check that the endpoint is an S3 endpoint"),
        "{line}"
    );
}

/// `skyhaul ARGS DIR --src-endpoint ENDPOINT`, with made-up source keys and no profile.
fn from_source(endpoint: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyhaul"));
    cmd.args(args)
        .args([dir.to_str().unwrap(), "--src-endpoint", endpoint])
        .env("SKYHAUL_SRC_ACCESS_KEY_ID", "AKIDTEST")
        .env("SKYHAUL_SRC_SECRET_ACCESS_KEY", "secret")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("SKYHAUL_JOURNAL", test_journal());
    cmd
}

/// An endpoint that accepts connections and never answers (a firewall that drops, a hung
/// server or proxy) is unreachable: exit 5 within 30 s of each try of the check before
/// `cp` (one try with `--retries 0`), or before `verify` (three), saying so as it tries.
/// Each try waited the client's two-minute read timeout and ended as a mere timeout: 25
/// minutes of silence with the default retries, then exit 1 (`verify` and `clean` made no
/// check: each of their requests waited so).
#[test]
fn an_endpoint_that_never_answers_is_unreachable() {
    let endpoint = black_hole();
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        from_source(&endpoint, tmp.path(), args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = std::time::Instant::now();
    let copy = run(&["cp", "-r", "--retries", "0", "s3://src/data"]);
    let verify = run(&["verify", "-r", "s3://src/data"]);
    for (child, within) in [(copy, 60), (verify, 150)] {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{stderr}");
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(within),
            "{took:?}: {stderr}"
        );
        let line = stderr.lines().last().unwrap_or_default();
        assert!(
            line.contains("no answer within 30 s") && line.contains("--src-endpoint"),
            "{stderr}"
        );
    }
}

/// An endpoint whose connections nothing answers (a firewall that drops, a host cut off)
/// is unreachable too: exit 5, saying so. Its connect timeouts were mere timeouts, retried
/// as such: with the default retries, ~200 s of silence before the check's exit 1.
#[test]
fn an_endpoint_whose_connections_nothing_answers_is_unreachable() {
    let endpoint = dropping();
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let args = ["cp", "-r", "--retries", "0", "s3://src/data"];
    let out = from_source(&endpoint, tmp.path(), &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    // One try of the check: the client's 10 s connect timeout.
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("cannot reach the endpoint") && line.contains("--src-endpoint"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let run = skyhaul(&["cp", "ftp://x/y", "/tmp/z"], None, None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(one_line_error(&run).contains("unsupported scheme"));
    let run = skyhaul(&["cp", "a", "bkt", "--part-size", "12X"], None, None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    // A relay gateway is HOST:PORT, checked where it is typed (a trailing comma too).
    for relay in ["gw1", "127.0.0.1:7400,", "gw1:0"] {
        let run = skyhaul(&["cp", "a", "s3://b/k", "--relay", relay], None, None);
        assert_eq!(run.code, 2, "{relay}: {}", run.stderr);
        assert!(
            run.stderr.contains("is not HOST:PORT"),
            "{relay}: {}",
            run.stderr
        );
    }
    // `dir/.` would be an object named so, not the directory's inside; refused before any
    // store is opened (no endpoint is given: one would be needed to write anything).
    for dst in ["s3://b/dir/.", "gs://b/x/../y/"] {
        let run = skyhaul(&["cp", "/etc/hostname", dst], None, None);
        assert_eq!(run.code, 2, "{dst}: {}", run.stderr);
        let line = one_line_error(&run);
        assert!(
            line.contains(&format!(
                "'{dst}': a '.' or '..' in a bucket path is part of the key"
            )),
            "{line}"
        );
    }
    // The portal's "Blob SAS URL": its signature is neither made part of a key nor echoed.
    let sas = "https://acct.blob.core.windows.net/c/x.html?sv=2019-12-12&sp=rw&sig=SECRET%3D";
    for args in [["cp", "/etc/hostname", sas], ["cp", sas, "/tmp/z"]] {
        let run = skyhaul(&args, None, None);
        assert_eq!(run.code, 2, "{}", run.stderr);
        let line = one_line_error(&run);
        assert!(line.contains("pass the SAS with --src-azure-sas"), "{line}");
        assert!(!run.stderr.contains("SECRET"), "{}", run.stderr);
    }
}

/// Sizes of nothing and endpoints without their scheme are refused before anything is
/// opened, from a flag or from the environment, as `skyhaul config set` refuses them.
#[test]
fn zero_sizes_and_bare_endpoints_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"f").unwrap();
    let (src, dst) = (src.to_str().unwrap(), dst.to_str().unwrap());
    for flag in ["--memory-budget", "--part-size", "--multipart-threshold"] {
        let run = skyhaul(&["cp", "-r", src, dst, flag, "0"], None, None);
        assert_eq!(run.code, 2, "{flag}: {}", run.stderr);
        assert!(
            run.stderr.contains("a size greater than 0"),
            "{}",
            run.stderr
        );
    }
    let run = skyhaul_env(
        &["cp", "-r", src, dst],
        None,
        None,
        &[("SKYHAUL_PART_SIZE", "0")],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("SKYHAUL_PART_SIZE=0"), "{}", run.stderr);

    for endpoint in ["localhost:9000", "ftp://x", "http://", "http://a b"] {
        let run = skyhaul(
            &["cp", "s3://b/k", dst, "--src-endpoint", endpoint],
            None,
            None,
        );
        assert_eq!(run.code, 2, "{endpoint}: {}", run.stderr);
        assert!(
            run.stderr.contains("with http:// or https://"),
            "{}",
            run.stderr
        );
    }
    // A password or a query in it is refused without being shown, from a flag or a
    // variable: S3 signs with keys, and the URL would reach errors and the journal.
    for (flag, var) in [
        (["--src-endpoint", "http://me:PASSWORD@127.0.0.1:99999"], ""),
        (
            ["--src-endpoint", "https://h.example.com/?sig=PASSWORD"],
            "",
        ),
        (["--no-journal", "-q"], "http://me:PASSWORD@127.0.0.1:9000"),
        (["--src-endpoint", "me:PASSWORD@127.0.0.1:9000"], ""),
    ] {
        let args = [&["cp", "s3://b/k", dst][..], &flag[..]].concat();
        let run = skyhaul_env(&args, None, None, &[("SKYHAUL_SRC_ENDPOINT", var)]);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("an endpoint holds no user name, password or query"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("PASSWORD"), "{}", run.stderr);
    }
    let run = skyhaul_env(
        &["cp", src, "s3://b/k"],
        None,
        None,
        &[("SKYHAUL_DST_ENDPOINT", "localhost:9000")],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!std::path::Path::new(dst).exists(), "nothing written");
    // An empty variable is an unset one.
    let run = skyhaul_env(
        &["cp", "-r", src, dst, "--no-journal"],
        None,
        None,
        &[
            ("SKYHAUL_DST_ENDPOINT", ""),
            ("SKYHAUL_SRC_ENDPOINT", " "),
            ("SKYHAUL_PART_SIZE", ""),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn relay_tls_files_that_do_not_load_are_usage_errors_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = skyhaul_testkit::tls::files(dir.path(), "gw", &["127.0.0.1"]);
    let key_line = std::fs::read_to_string(&pki.key).unwrap();
    let key_line = key_line.lines().nth(1).unwrap().to_string();
    let relay_key = RELAY_KEY.to_string();
    let env = [("SKYHAUL_RELAY_KEY", relay_key.as_str())];
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    // Gateway: a key where the certificate goes, a certificate where the key goes.
    for (c, k, flag) in [(key, key, "--tls-cert"), (cert, cert, "--tls-key")] {
        let args = [
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "s3://b",
            "--tls-cert",
            c,
            "--tls-key",
            k,
        ];
        let run = skyhaul_env(&args, None, None, &env);
        assert_eq!(run.code, 2, "{}", run.stderr);
        let line = one_line_error(&run);
        assert!(line.contains(flag) && line.contains(".pem"), "{line}");
        assert!(!run.stderr.contains(&key_line), "{}", run.stderr);
    }
    // Sender: a --relay-tls-ca that holds no certificate.
    let run = relay_cp_with(dir.path(), "--relay-tls-ca", key);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(line.contains("--relay-tls-ca"), "{line}");
    assert!(!run.stderr.contains(&key_line), "{}", run.stderr);
}

/// `skyhaul cp -r DIR/src s3://b/x --relay 127.0.0.1:9 FLAG VALUE` with a relay key: a
/// relayed copy that must stop at FLAG before it connects to anything.
fn relay_cp_with(dir: &std::path::Path, flag: &str, value: &str) -> Run {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    let args = [
        "cp",
        "-r",
        src.to_str().unwrap(),
        "s3://b/x",
        "--relay",
        "127.0.0.1:9",
        flag,
        value,
    ];
    skyhaul_env(&args, None, None, &[("SKYHAUL_RELAY_KEY", RELAY_KEY)])
}

#[test]
fn a_relay_congestion_control_the_system_lacks_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = relay_cp_with(dir.path(), "--relay-congestion", "no-such-algorithm");
    assert_eq!(run.code, 2, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("--relay-congestion no-such-algorithm")
            && line.contains("tcp_allowed_congestion_control"),
        "{line}"
    );
}

/// An archived object (GLACIER, DEEP_ARCHIVE) cannot be read until it is restored. S3
/// answers its GET with a 403, which is not about permissions: that object fails, saying
/// what to do, and the rest of the transfer goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_archived_object_fails_alone_and_says_to_restore_it() {
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("bkt").await;
    s3.put("bkt", "data/warm.txt", b"readable").await;
    s3.client()
        .await
        .put_object()
        .bucket("bkt")
        .key("data/cold.bin")
        .storage_class("DEEP_ARCHIVE".into())
        .body(b"archived".to_vec().into())
        .send()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://bkt/data/",
            dst.to_str().unwrap(),
            "--src-endpoint",
            &s3.endpoint,
            "--no-journal",
            "--json",
        ],
        Some(&s3),
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["objects_copied"], 1, "{report}");
    assert_eq!(report["objects_failed"], 1, "{report}");
    let error = report["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("data/cold.bin") && error.contains("restore it first"),
        "{error}"
    );
    assert!(!error.contains("credentials"), "{error}");
    assert_eq!(std::fs::read(dst.join("warm.txt")).unwrap(), b"readable");
    assert!(!dst.join("cold.bin").exists());

    // Nor does it stop a verification that must read it: it is not compared, and says why.
    // (A copy uploaded in one part has an ETag of another form: only reading compares.)
    s3.create_bucket("two").await;
    s3.put("two", "data/warm.txt", b"readable").await;
    s3.put_multipart("two", "data/cold.bin", b"archived", 8)
        .await;
    let verify = skyhaul(
        &[
            "verify",
            "-r",
            "--deep",
            "s3://bkt/data/",
            "s3://two/data/",
            "--src-endpoint",
            &s3.endpoint,
            "--dst-endpoint",
            &s3.endpoint,
            "--json",
        ],
        Some(&s3),
        Some(&s3),
    );
    // Exit 1: the rest is the same, but not everything could be checked.
    assert_eq!(verify.code, 1, "{}", verify.stderr);
    let v = verify.json();
    assert_eq!(
        (
            v["checksum_ok"].as_u64(),
            v["not_comparable"].as_u64(),
            v["unreadable"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{v}"
    );
    let problem = v["problems"][0].to_string();
    assert!(
        problem.contains("cold.bin") && problem.contains("restore it first"),
        "{problem}"
    );
}

/// A proxy in front of `s3` that answers every GET and HEAD under `path` with S3's 403
/// AccessDenied, as S3 answers for an object these credentials may not read while the rest
/// of the bucket is theirs (another account's upload, a KMS key they may not use).
fn denying_reads_under(upstream: &str, path: &str) -> FaultProxy {
    FaultProxy::start(
        upstream,
        Faults {
            access_denied_403: 1.0,
            only_methods: vec!["GET".into(), "HEAD".into()],
            path_contains: Some(path.into()),
            ..Default::default()
        },
    )
}

/// `cp -r SRC DST --src-endpoint ENDPOINT --json`, with `s3`'s credentials for the source.
fn copy_through(endpoint: &str, src: &str, dst: &std::path::Path, s3: &S3Server) -> Run {
    let mut args = cp_r(src, dst.to_str().unwrap(), "--src-endpoint", endpoint);
    args.push("--json");
    skyhaul(&args, Some(s3), None)
}

/// Asserts that `run` stopped with exit 4 after a hundred or so of `total` requests were
/// denied by `proxy`, with one error line that says so and `then`.
fn stopped_after_denials(run: &Run, proxy: &FaultProxy, total: usize, then: &str) {
    assert_eq!(run.code, 4, "{}", run.stderr);
    let line = one_line_error(run);
    assert!(
        line.contains("objects in a row were denied") && line.contains(then),
        "{line}"
    );
    let denied = proxy.injected().access_denied_403;
    assert!(
        (100..total as u64).contains(&denied),
        "{denied} of {total} requests denied: the run must stop after 100"
    );
}

/// A report's objects copied and failed.
fn copied_and_failed(report: &serde_json::Value) -> (Option<u64>, Option<u64>) {
    (
        report["objects_copied"].as_u64(),
        report["objects_failed"].as_u64(),
    )
}

/// An object the credentials may not read fails alone, named in the report, and the rest
/// is copied (exit 1); the same object copied on its own is the credentials' problem (exit 4).
#[tokio::test(flavor = "multi_thread")]
async fn a_denied_object_fails_alone() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    for key in ["data/a.txt", "data/secret/b.txt", "data/z.txt"] {
        s3.put("bkt", key, key.as_bytes()).await;
    }
    let proxy = denying_reads_under(&s3.endpoint, "/bkt/data/secret/");
    let ep = proxy.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let run = copy_through(&ep, "s3://bkt/data/", &dst, &s3);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(copied_and_failed(&report), (Some(2), Some(1)), "{report}");
    let error = report["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("secret/b.txt") && error.contains("AccessDenied"),
        "{error}"
    );
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"data/a.txt");
    assert_eq!(std::fs::read(dst.join("z.txt")).unwrap(), b"data/z.txt");
    assert!(!dst.join("secret").exists());

    // A sync that finds the rest identical did something too: the denial stays the object's.
    let sync = [
        "sync",
        "s3://bkt/data/",
        dst.to_str().unwrap(),
        "--src-endpoint",
        &ep,
        "--no-journal",
        "--json",
    ];
    let run = skyhaul(&sync, Some(&s3), None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        (
            report["objects_skipped"].as_u64(),
            report["objects_failed"].as_u64()
        ),
        (Some(2), Some(1)),
        "{report}"
    );

    let alone = tmp.path().join("alone.txt");
    let run = skyhaul(
        &[
            "cp",
            "s3://bkt/data/secret/b.txt",
            alone.to_str().unwrap(),
            "--src-endpoint",
            &ep,
            "--no-journal",
        ],
        Some(&s3),
        None,
    );
    assert_eq!(run.code, 4, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("secret/b.txt") && line.contains("SKYHAUL_SRC_ACCESS_KEY_ID"),
        "{line}"
    );
    assert!(!alone.exists());
}

/// A signature the store refuses for one object's write (it reads a header of that request
/// otherwise than it was signed) said "the store does not accept these credentials" and
/// stopped the whole transfer with exit 4, though the same credentials had just written the
/// others. It fails alone now, as a denial does; the rest is copied (exit 1).
#[tokio::test(flavor = "multi_thread")]
async fn an_objects_refused_signature_fails_alone() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for (name, body) in [("a.txt", "a"), ("odd.txt", "odd"), ("z.txt", "z")] {
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(name), body).unwrap();
    }
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            signature_mismatch_403: 1.0,
            only_methods: vec!["PUT".into()],
            path_contains: Some("/bkt/d/odd.txt".into()),
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let mut args = cp_r(src.to_str().unwrap(), "s3://bkt/d/", "--dst-endpoint", &ep);
    args.push("--json");
    let run = skyhaul(&args, None, Some(&s3));
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(copied_and_failed(&report), (Some(2), Some(1)), "{report}");
    let error = report["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("odd.txt") && error.contains("SignatureDoesNotMatch"),
        "{error}"
    );
    let mut listed: Vec<String> = s3
        .list("bkt", "d/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    listed.sort();
    assert_eq!(listed, ["d/a.txt", "d/z.txt"]);
}

/// Denials answered at once while good objects are still on their way prove nothing: the
/// transfer waits for those, and goes on when they succeed. Here one object in eight is
/// good but slow, so a hundred denials come back long before any good object does.
#[tokio::test(flavor = "multi_thread")]
async fn many_quick_denials_do_not_outrun_slow_good_objects() {
    const OBJECTS: usize = 400;
    let good = |i: usize| i.is_multiple_of(8);
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    for i in 0..OBJECTS {
        let kind = if good(i) { "good" } else { "denied" };
        s3.put("bkt", &format!("mix/{i:03}-{kind}"), kind.as_bytes())
            .await;
    }
    let slow = FaultProxy::start(
        &s3.endpoint,
        Faults {
            only_methods: vec!["GET".into()],
            path_contains: Some("-good".into()),
            delay: Some(std::time::Duration::from_secs(2)),
            ..Default::default()
        },
    );
    let denying = denying_reads_under(&slow.endpoint(), "-denied");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let run = copy_through(&denying.endpoint(), "s3://bkt/mix/", &dst, &s3);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let goods = (0..OBJECTS).filter(|&i| good(i)).count() as u64;
    let report = run.json();
    assert_eq!(
        copied_and_failed(&report),
        (Some(goods), Some(OBJECTS as u64 - goods)),
        "{report}"
    );
    assert_eq!(read_tree(&dst).len() as u64, goods);
}

/// Credentials that may read no object stop the transfer after a hundred denials in a row,
/// with one line that says so and what to do, instead of failing every object in turn.
#[tokio::test(flavor = "multi_thread")]
async fn denials_in_a_row_stop_the_transfer() {
    const OBJECTS: usize = 300;
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    for i in 0..OBJECTS {
        s3.put("bkt", &format!("many/{i:03}"), b"x").await;
    }
    let proxy = denying_reads_under(&s3.endpoint, "/bkt/many/");
    let ep = proxy.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let run = skyhaul(
        &cp_r(
            "s3://bkt/many/",
            dst.to_str().unwrap(),
            "--src-endpoint",
            &ep,
        ),
        Some(&s3),
        None,
    );
    stopped_after_denials(&run, &proxy, OBJECTS, "--exclude");
    assert!(read_tree(&dst).is_empty());
}

/// `verify -r SRC DST --src-endpoint ENDPOINT --json [EXTRA]`, with `s3`'s credentials for
/// the source.
fn verify_through(
    endpoint: &str,
    src: &str,
    dst: &std::path::Path,
    s3: &S3Server,
    extra: &[&str],
) -> Run {
    let mut args = vec![
        "verify",
        "-r",
        src,
        dst.to_str().unwrap(),
        "--src-endpoint",
        endpoint,
        "--json",
    ];
    args.extend(extra);
    skyhaul(&args, Some(s3), None)
}

/// `verify` compares every object it may read: one it may not is "not compared", named with
/// the denial, as a copy fails it alone (exit 1: not everything was checked); a verify that
/// could read none of them is the credentials' problem (exit 4).
#[tokio::test(flavor = "multi_thread")]
async fn verify_compares_the_rest_when_some_objects_are_denied() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    for key in ["data/a.txt", "data/secret/b.txt", "data/z.txt"] {
        s3.put("bkt", key, key.as_bytes()).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let copy = copy_through(&s3.endpoint, "s3://bkt/data/", &dst, &s3);
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    let proxy = denying_reads_under(&s3.endpoint, "/bkt/data/secret/");
    let ep = proxy.endpoint();
    for extra in [&[][..], &["--deep"][..]] {
        let run = verify_through(&ep, "s3://bkt/data/", &dst, &s3, extra);
        assert_eq!(run.code, 1, "{extra:?}: {}", run.stderr);
        let v = run.json();
        assert_eq!(
            (
                v["size_ok"].as_u64(),
                v["checksum_ok"].as_u64(),
                v["not_comparable"].as_u64(),
                v["unreadable"].as_u64()
            ),
            (Some(3), Some(2), Some(1), Some(1)),
            "{extra:?}: {v}"
        );
        let problem = &v["problems"][0];
        assert_eq!(problem["key"], "data/secret/b.txt", "{v}");
        // Named with the denial: a HEAD's bare 403, or a deep read's AccessDenied.
        let error = problem["error"].as_str().unwrap();
        let denied = error.contains("403") || error.contains("AccessDenied");
        assert!(error.starts_with("not compared") && denied, "{error}");
    }
    assert!(proxy.injected().access_denied_403 >= 2);

    let secret = verify_through(&ep, "s3://bkt/data/secret/", &dst.join("secret"), &s3, &[]);
    assert_eq!(secret.code, 4, "{}", secret.stderr);
    let line = one_line_error(&secret);
    assert!(
        line.contains("secret/b.txt") && line.contains("403"),
        "{line}"
    );
}

/// A signature the store refuses for one object, with credentials it accepted for the
/// listings, is that object's: `verify` leaves it "not compared" and compares the rest
/// (exit 1), as a copy fails it alone, instead of stopping at it as refused credentials.
#[tokio::test(flavor = "multi_thread")]
async fn verify_compares_the_rest_when_one_objects_signature_is_refused() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    for key in ["data/a.txt", "data/odd.txt", "data/z.txt"] {
        s3.put("bkt", key, key.as_bytes()).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let copy = copy_through(&s3.endpoint, "s3://bkt/data/", &dst, &s3);
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            signature_mismatch_403: 1.0,
            only_methods: vec!["GET".into(), "HEAD".into()],
            path_contains: Some("/bkt/data/odd.txt".into()),
            ..Default::default()
        },
    );
    let run = verify_through(&proxy.endpoint(), "s3://bkt/data/", &dst, &s3, &["--deep"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let v = run.json();
    assert_eq!(
        (v["checksum_ok"].as_u64(), v["unreadable"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    let problem = &v["problems"][0];
    assert_eq!(problem["key"], "data/odd.txt", "{v}");
    let error = problem["error"].as_str().unwrap();
    assert!(error.contains("SignatureDoesNotMatch"), "{error}");
    assert!(proxy.injected().signature_mismatch_403 >= 1);
}

/// Credentials that may list but read nothing stop `verify` after a hundred denials in a
/// row, instead of asking for every object in turn; the error names what the check had
/// found wrong before it stopped.
#[tokio::test(flavor = "multi_thread")]
async fn verify_stops_after_denials_in_a_row() {
    const OBJECTS: usize = 300;
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    for i in 0..OBJECTS {
        s3.put("bkt", &format!("many/{i:03}"), b"x").await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let copy = copy_through(&s3.endpoint, "s3://bkt/many/", &dst, &s3);
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    // What the listings showed before the stop is named, since the stop leaves no report
    // (the comparisons run as the listings go on: both keys come first).
    std::fs::remove_file(dst.join("000")).unwrap();
    std::fs::write(dst.join("!extra"), b"x").unwrap();
    let proxy = denying_reads_under(&s3.endpoint, "/bkt/many/");
    let run = verify_through(&proxy.endpoint(), "s3://bkt/many/", &dst, &s3, &[]);
    stopped_after_denials(&run, &proxy, OBJECTS, "verification stopped");
    let line = one_line_error(&run);
    assert!(
        line.contains("before it stopped, the check had found 2 objects wrong: 1 missing, 1 extra"),
        "{line}"
    );
}

/// A bucket these credentials may write but not list (a drop box): a copy that would read
/// it back stops before writing anything and says how to copy without that; with
/// `--verify none` the copy lands. A sync, which must list, stays denied.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_cannot_be_listed_takes_verify_none() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("drop").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = mixed();
    write_tree(&src, &files);
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            access_denied_403: 1.0,
            only_methods: vec!["GET".into()],
            path_contains: Some("list-type=2".into()),
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let mut args = cp_r(
        src.to_str().unwrap(),
        "s3://drop/in/",
        "--dst-endpoint",
        &ep,
    );
    let run = skyhaul(&args, None, Some(&s3));
    assert_eq!(run.code, 4, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("AccessDenied") && line.contains("--verify none"),
        "{line}"
    );
    assert!(
        read_bucket(&s3, "drop", "").await.is_empty(),
        "nothing written"
    );

    // Credentials the store refuses are no drop box: the first answers stop the copy.
    let many = tmp.path().join("many");
    let files_many: BTreeMap<String, Vec<u8>> =
        (0..300).map(|i| (format!("{i:03}"), vec![b'x'])).collect();
    write_tree(&many, &files_many);
    let wrong = skyhaul_env(
        &[
            "cp",
            "-r",
            many.to_str().unwrap(),
            "s3://drop/many/",
            "--dst-endpoint",
            &ep,
            "--no-journal",
            "--verify",
            "none",
            "--max-connections",
            "4",
        ],
        None,
        Some(&s3),
        &[("SKYHAUL_DST_SECRET_ACCESS_KEY", "wrong-secret-value")],
    );
    assert_eq!(wrong.code, 4, "{}", wrong.stderr);
    let line = one_line_error(&wrong);
    assert!(
        line.contains("does not accept these credentials") && !line.contains("wrong-secret"),
        "{line}"
    );
    let puts = proxy.injected().requests;
    assert!(puts < 20, "{puts} requests: wrong credentials stop at once");
    assert!(
        read_bucket(&s3, "drop", "").await.is_empty(),
        "nothing written"
    );

    // A dry run of that copy works the same way, writing nothing.
    let mut dry = args.clone();
    dry.extend(["--verify", "none", "--dry-run"]);
    let run = skyhaul(&dry, None, Some(&s3));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        read_bucket(&s3, "drop", "").await.is_empty(),
        "nothing written"
    );

    args.extend(["--verify", "none"]);
    let run = skyhaul(&args, None, Some(&s3));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_bucket(&s3, "drop", "in/").await, files);

    args[0] = "sync";
    args.remove(1); // -r
    let run = skyhaul(&args, None, Some(&s3));
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("AccessDenied"),
        "{}",
        run.stderr
    );
}

/// A destination that lists but answers no HEAD: the server-side copies land, and the
/// verification, which must HEAD them (s3s-fs lists no ETags), says how to do without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_verification_denied_its_reads_names_verify_none() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bkt").await;
    let files = mixed();
    fill_bucket(&s3, "bkt", "in/", &files).await;
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            access_denied_403: 1.0,
            only_methods: vec!["HEAD".into()],
            ..Default::default()
        },
    );
    let ep = proxy.endpoint();
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "s3://bkt/in/",
            "s3://bkt/copy/",
            "--src-endpoint",
            &ep,
            "--dst-endpoint",
            &ep,
            "--no-journal",
        ],
        Some(&s3),
        Some(&s3),
    );
    assert_eq!(run.code, 4, "{}", run.stderr);
    let line = one_line_error(&run);
    // Source and destination are one bucket: the copy's prefix names the side.
    assert!(
        line.contains("s3://bkt/copy/")
            && line.contains("--verify none")
            && line.contains("--dst-profile"),
        "{line}"
    );
    assert_eq!(read_bucket(&s3, "bkt", "copy/").await, files);
}

/// `sync --delete` with credentials that may not delete: the copies are done, and the
/// deletions stop after a hundred denials in a row instead of asking for every one.
#[tokio::test(flavor = "multi_thread")]
async fn denied_deletions_in_a_row_stop_the_rest() {
    const EXTRA: usize = 300;
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("src").await;
    s3.create_bucket("dst").await;
    s3.put("src", "keep", b"keep").await;
    for i in 0..EXTRA {
        s3.put("dst", &format!("old/{i:03}"), b"x").await;
    }
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Faults {
            access_denied_403: 1.0,
            only_methods: vec!["DELETE".into()],
            ..Default::default()
        },
    );
    let run = skyhaul(
        &[
            "sync",
            "s3://src/",
            "s3://dst/",
            "--delete",
            "-y",
            "--src-endpoint",
            &s3.endpoint,
            "--dst-endpoint",
            &proxy.endpoint(),
            "--max-connections",
            "4",
            "--no-journal",
        ],
        Some(&s3),
        Some(&s3),
    );
    stopped_after_denials(&run, &proxy, EXTRA, "deletions stopped");
    let left = read_bucket(&s3, "dst", "").await;
    assert_eq!(left.get("keep").map(Vec::as_slice), Some(&b"keep"[..]));
    assert_eq!(left.len(), EXTRA + 1, "nothing deleted");
}

/// A transfer whose source and destination overlap in one store is refused before anything
/// is read: it would copy its own output, overwrite its source, or delete it (`--delete`).
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_source_and_destination_are_refused() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let objects = ["ov/a.txt", "ov/sub/c.txt", "ov/sub/sub/d.txt"];
    for k in objects {
        s.put("bkt", k, k.as_bytes()).await;
    }
    let ep = s.endpoint.as_str();
    let refused = |args: &[&str], why: &str| {
        let run = skyhaul(args, Some(&s), Some(&s));
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        let line = one_line_error(&run);
        assert!(line.contains(why), "{args:?}: {line}");
        assert!(line.contains("choose a destination outside"), "{line}");
    };
    let both = ["--src-endpoint", ep, "--dst-endpoint", ep];
    let with = |args: &[&'static str]| [args, &both[..]].concat();
    refused(
        &with(&["sync", "--delete", "-y", "s3://bkt/ov/sub", "s3://bkt/ov"]),
        "the source is inside the destination",
    );
    refused(
        &with(&["cp", "-r", "s3://bkt/ov", "s3://bkt/ov/copy"]),
        "the destination is inside the source",
    );
    refused(
        &with(&["cp", "-r", "s3://bkt/ov/", "s3://bkt/ov"]),
        "same place",
    );
    refused(
        &with(&["cp", "s3://bkt/ov/a.txt", "s3://bkt/ov/"]),
        "same place",
    );
    // The same endpoint spelt another way is the same store.
    let slash = format!("{ep}/");
    refused(
        &[
            "sync",
            "--delete",
            "-y",
            "s3://bkt/ov/sub",
            "s3://bkt/ov",
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            &slash,
        ],
        "the source is inside the destination",
    );
    let mut listed: Vec<String> = s
        .list("bkt", "")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    listed.sort();
    assert_eq!(listed, objects, "nothing written or deleted");

    // A neighbour is no overlap.
    let run = skyhaul(
        &with(&["cp", "-r", "s3://bkt/ov", "s3://bkt/ov2"]),
        Some(&s),
        Some(&s),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Local directories: a symlink to the source counts as the source.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &BTreeMap::from([("f".to_string(), b"f".to_vec())]));
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let inner = src.join("inner");
    let run = skyhaul(
        &["cp", "-r", link.to_str().unwrap(), inner.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("inside the source"),
        "{}",
        run.stderr
    );
    assert!(!inner.exists(), "nothing written");
    // Unless a filter leaves the destination out of the source: the hint says how.
    assert!(
        one_line_error(&run).contains("or leave it out with --exclude 'inner/**'"),
        "{}",
        run.stderr
    );
    let run = skyhaul(
        &[
            "cp",
            "-r",
            link.to_str().unwrap(),
            inner.to_str().unwrap(),
            "--exclude",
            "inner/**",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        read_tree(&inner),
        BTreeMap::from([("f".into(), b"f".to_vec())])
    );
}

/// A destination inside its source is copied to and synced when a filter leaves it out of
/// the source: the run never copies its own output, and `--delete` stays inside the
/// destination. A filter that leaves out only some of it does not do.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_the_filter_leaves_out_may_lie_inside_the_source() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let objects = ["d/a.txt", "d/backup/old.txt", "d/sub/c.txt"];
    for k in objects {
        s.put("bkt", k, k.as_bytes()).await;
    }
    let ep = s.endpoint.as_str();
    let sync = |exclude: &str| {
        let args = [
            "sync",
            "--delete",
            "-y",
            "s3://bkt/d",
            "s3://bkt/d/backup",
            "--exclude",
            exclude,
            "--src-endpoint",
            ep,
            "--dst-endpoint",
            ep,
        ];
        skyhaul(&args, Some(&s), Some(&s))
    };
    let listed = || async {
        let mut keys: Vec<String> = s
            .list("bkt", "")
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        keys
    };
    let refused = sync("backup/*.txt");
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        one_line_error(&refused).contains("--exclude 'backup/**'"),
        "{}",
        refused.stderr
    );
    assert_eq!(listed().await, objects, "nothing written or deleted");

    for run in 0..2 {
        let done = sync("backup/");
        assert_eq!(done.code, 0, "run {run}: {}", done.stderr);
        assert_eq!(
            listed().await,
            [
                "d/a.txt",
                "d/backup/a.txt",
                "d/backup/sub/c.txt",
                "d/sub/c.txt",
            ],
            "run {run}: the source copied once, the destination's own extra deleted"
        );
    }
}

/// A closed stdout (`skyhaul status | head -1`) is no panic: the command runs to its end
/// and exits with its own code.
#[test]
fn a_closed_stdout_stops_the_output_not_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files: BTreeMap<String, Vec<u8>> = (0..50)
        .map(|i| (format!("d/{i}.txt"), vec![b'x'; i]))
        .collect();
    write_tree(&src, &files);
    let dst = tmp.path().join("dst");
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    for args in [
        vec!["prices"],
        vec!["cp", "-r", "--dry-run", s, d],
        vec!["cp", "-r", s, d, "--no-journal"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyhaul"));
        cmd.args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped());
        for (k, v) in test_env(None, None, &[]) {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(read_tree(&dst), files, "the copy ran to its end");
}

#[test]
fn clean_with_a_malformed_id_is_a_bad_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal.sqlite");
    let run = skyhaul(
        &["clean", "not-hex!", "--journal", journal.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("is not a transfer id"),
        "{}",
        run.stderr
    );
}

/// A side's profile comes before the default chain: `AWS_*` keys in the environment do not
/// win over it (they would copy as another identity). A profile that gives no credentials
/// here is named in a warning, and the default chain goes on; one whose source of
/// credentials fails stops the copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_profile_wins_over_environment_keys() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &BTreeMap::from([("f".to_string(), b"f".to_vec())]));
    let creds = tmp.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[good]\naws_access_key_id = {0}\naws_secret_access_key = {1}\n\n\
             [bad]\naws_access_key_id = {0}\naws_secret_access_key = wrong-secret\n\n\
             [broken]\ncredential_process = /bin/false\n\n\
             [dangling]\nrole_arn = arn:aws:iam::123456789012:role/x\nsource_profile = nosuch\n",
            s.access_key, s.secret_key
        ),
    )
    .unwrap();
    // With keys in the environment (`env_secret`), or none there.
    let copy = |profile: &str, env_secret: Option<&str>| {
        let mut env = vec![
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_REGION", "us-east-1"),
        ];
        if let Some(secret) = env_secret {
            env.extend([
                ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ]);
        }
        skyhaul_env(
            &[
                "cp",
                "-r",
                src.to_str().unwrap(),
                "s3://bkt/p",
                "--dst-endpoint",
                &s.endpoint,
                "--dst-profile",
                profile,
                "--no-journal",
            ],
            None,
            None,
            &env,
        )
    };
    let run = copy("good", Some("wrong-secret"));
    assert_eq!(
        run.code, 0,
        "the profile's keys, not the environment's: {}",
        run.stderr
    );
    let run = copy("bad", Some(&s.secret_key));
    assert_eq!(
        run.code, 4,
        "the profile's (wrong) keys are used: {}",
        run.stderr
    );
    // A profile without credentials here (as on a fleet worker with an instance role)
    // leaves the default chain to find them, and says so.
    let run = copy("missing", Some(&s.secret_key));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("profile 'missing' gives no credentials here"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&s.secret_key), "{}", run.stderr);
    // A profile whose source of credentials fails, or names one that is not there, is no
    // reason to copy as another identity.
    let run = copy("broken", Some(&s.secret_key));
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        one_line_error(&run)
            .contains("profile 'broken': no credentials: its source of credentials failed"),
        "{}",
        run.stderr
    );
    let run = copy("dangling", Some(&s.secret_key));
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        one_line_error(&run).contains("profile 'dangling': no credentials")
            && one_line_error(&run).contains("nosuch"),
        "{}",
        run.stderr
    );
    // A mistyped profile and no keys elsewhere: the line says to check the name, not to
    // give the flag that was given.
    let run = copy("godo", None);
    assert_eq!(run.code, 4, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("profile 'godo' gives none here")
            && line.contains("check the profile's name"),
        "{line}"
    );
}

/// No log level shows the access key id: the SDK prints its `Credentials` (id in clear) at
/// info when a profile's `credential_process` gives them, and at debug in every request's
/// endpoint parameters.
#[tokio::test(flavor = "multi_thread")]
async fn no_log_level_shows_the_access_key_id() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f");
    std::fs::write(&src, b"f").unwrap();
    let config = tmp.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile proc]\ncredential_process = /bin/echo \
             '{{\"Version\":1,\"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{}\"}}'\n",
            s.access_key, s.secret_key
        ),
    )
    .unwrap();
    let args = |verbose: &'static str| {
        let mut a = vec!["cp", src.to_str().unwrap(), "s3://bkt/f", "--no-journal"];
        a.extend([
            "--dst-endpoint",
            &s.endpoint,
            "--dst-profile",
            "proc",
            verbose,
        ]);
        a.retain(|a| !a.is_empty());
        a
    };
    let env = [("AWS_CONFIG_FILE", config.to_str().unwrap())];
    for (verbose, log) in [("-vv", None), ("", Some("trace"))] {
        let mut env = env.to_vec();
        env.extend(log.map(|l| ("SKYHAUL_LOG", l)));
        let run = skyhaul_env(&args(verbose), None, None, &env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        if log.is_some() {
            assert!(run.stderr.contains("TRACE"), "{log:?}: logged nothing");
        }
        // The SDK did print the credentials, and the id was blanked.
        assert!(
            run.stderr.contains(r#"access_key_id: "** redacted **""#),
            "{verbose} {log:?}: no credentials logged: the test proves nothing"
        );
        for secret in [&s.access_key, &s.secret_key] {
            assert!(
                !run.stderr.contains(secret.as_str()),
                "{verbose} {log:?}: {secret} logged"
            );
        }
    }
}

/// An assume-role profile (`role_arn` + `source_profile`, the usual cross-account set-up)
/// gets its credentials from STS, which needs the side's region. With no other credentials
/// anywhere, only STS's answer can make this copy work.
#[tokio::test(flavor = "multi_thread")]
async fn an_assume_role_profile_signs_in_through_sts() {
    let s = S3Server::start(S3Kind::Moto);
    s.create_bucket("bkt").await;
    // STS through a proxy that counts its calls.
    let sts = FaultProxy::start(&s.endpoint, Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.txt");
    std::fs::write(&file, b"f").unwrap();
    let (config, creds) = (tmp.path().join("config"), tmp.path().join("credentials"));
    std::fs::write(
        &config,
        "[profile role]\nrole_arn = arn:aws:iam::123456789012:role/copier\n\
         source_profile = keys\nregion = us-east-1\n",
    )
    .unwrap();
    std::fs::write(
        &creds,
        "[keys]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = example\n",
    )
    .unwrap();
    let run = skyhaul_env(
        &[
            "cp",
            file.to_str().unwrap(),
            "s3://bkt/f.txt",
            "--dst-endpoint",
            &s.endpoint,
            "--dst-profile",
            "role",
            "--no-journal",
        ],
        None,
        None,
        &[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &sts.endpoint()),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !run.stderr.contains("gives no credentials"),
        "{}",
        run.stderr
    );
    assert_eq!(s.get("bkt", "f.txt").await.as_deref(), Some(&b"f"[..]));
    // The profile's check, the up-front check and the client share one sign-in.
    assert_eq!(sts.injected().requests, 1, "AssumeRole calls");
}

/// A sync whose copies failed deletes nothing, and says so.
#[test]
fn a_sync_whose_copies_failed_says_its_deletions_were_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_tree(&src, &BTreeMap::from([("a/b".to_string(), b"b".to_vec())]));
    // A file where the source needs a directory: that copy fails.
    write_tree(
        &dst,
        &BTreeMap::from([
            ("a".to_string(), b"a file".to_vec()),
            ("old".to_string(), b"only here".to_vec()),
        ]),
    );
    let run = skyhaul(
        &[
            "sync",
            "--delete",
            "-y",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--no-journal",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("2 deletions skipped after 1 failure: a sync deletes only once everything else succeeded"),
        "{}",
        run.stderr
    );
    assert!(dst.join("old").exists(), "nothing deleted");
}

#[test]
fn sync_of_one_file_says_to_leave_out_r() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"f").unwrap();
    let dst = tmp.path().join("out");
    let run = skyhaul(
        &["sync", file.to_str().unwrap(), dst.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let line = one_line_error(&run);
    assert!(
        line.contains("for one file, leave out -r; sync takes a directory"),
        "{line}"
    );
}

/// A file further up a local destination's path: nothing can be written under it, so the
/// transfer stops before it starts (exit 7), once, instead of failing every object.
#[test]
fn a_file_up_the_destination_path_stops_the_copy_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &BTreeMap::from([
            ("a".to_string(), b"a".to_vec()),
            ("d/b".to_string(), b"b".to_vec()),
        ]),
    );
    let file = tmp.path().join("file");
    std::fs::write(&file, b"in the way").unwrap();
    let under = file.join("sub/dir");
    let (src, under) = (src.to_str().unwrap(), under.to_str().unwrap());
    let one = format!("{src}/a");
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    let (file_dir, dangling) = (format!("{}/", file.display()), dangling.to_str().unwrap());
    let dangling_x = format!("{dangling}/x");
    let file_dot = format!("{}/.", file.display());
    for (args, what) in [
        (vec!["cp", "-r", src, under], "a file"),
        (vec!["sync", src, under], "a file"),
        (vec!["cp", &one, under], "a file"),
        (vec!["cp", &one, &format!("{under}/")], "a file"),
        (vec!["cp", "-r", src, &file_dir], "a file"),
        (vec!["cp", &one, &file_dir], "a file"),
        (vec!["cp", &one, &file_dot], "a file"),
        (vec!["cp", "-r", src, dangling], "a symlink to nothing"),
        (vec!["cp", &one, &dangling_x], "a symlink to nothing"),
    ] {
        let run = skyhaul(&[&args[..], &["--no-journal"]].concat(), None, None);
        assert_eq!(run.code, 7, "{args:?}: {}", run.stderr);
        let line = one_line_error(&run);
        let path = if what == "a file" {
            file.display().to_string()
        } else {
            dangling.to_string()
        };
        assert!(
            line.contains(&format!(
                "{path} is {what}, so nothing can be written under it"
            )),
            "{line}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"in the way");
    // Reading commands are not writes: there, nothing is where it should be.
    let run = skyhaul(&["verify", "-r", src, under], None, None);
    assert_eq!(run.code, 6, "{}", run.stderr);
}

/// A device, FIFO or socket where a file must go is refused, not replaced: as root, a copy
/// to /dev/null would otherwise put a file in place of the machine's /dev/null.
#[test]
fn a_device_or_fifo_at_the_destination_is_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f");
    std::fs::write(&src, b"data").unwrap();
    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let run = skyhaul(
        &[
            "cp",
            src.to_str().unwrap(),
            fifo.to_str().unwrap(),
            "--no-journal",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("a device, FIFO or socket is there, and skyhaul writes only regular files"),
        "{}",
        run.stderr
    );
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "still a FIFO");
}

/// A symlink to a directory inside a local destination is not written through: listings do
/// not follow it, so what went behind it landed outside the destination, every check called
/// it missing, and every sync copied it again. Its objects fail alone, naming the link; the
/// rest is copied, and `sync --delete` deletes nothing.
#[test]
fn a_symlinked_directory_inside_the_destination_is_not_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, elsewhere) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("elsewhere"),
    );
    let files = BTreeMap::from([
        ("a.txt".to_string(), b"a".to_vec()),
        ("logs/b.txt".to_string(), b"b".to_vec()),
        ("logs/deep/c.txt".to_string(), b"c".to_vec()),
    ]);
    write_tree(&src, &files);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(dst.join("old.txt"), b"extra").unwrap();
    let link = dst.join("logs");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    for run in 0..2 {
        let r = skyhaul(
            &["sync", "--delete", "-y", s, d, "--json", "--no-journal"],
            None,
            None,
        );
        assert_eq!(r.code, 1, "run {run}: {}", r.stderr);
        let report = r.json();
        assert_eq!(report["objects_copied"], 1 - run, "run {run}: {report}");
        assert_eq!(report["objects_failed"], 2, "run {run}: {report}");
        assert_eq!(report["objects_deleted"], 0, "run {run}: {report}");
        let error = report["failures"][0]["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("{} is a symlink", link.display())),
            "{error}"
        );
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing written behind the link"
        );
        assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"a");
        assert!(dst.join("old.txt").exists(), "nothing deleted");
    }
    // Left out, the rest is a sync like any other.
    let r = skyhaul(
        &[
            "sync",
            "--delete",
            "-y",
            s,
            d,
            "--exclude",
            "logs/",
            "--no-journal",
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!dst.join("old.txt").exists(), "deleted once nothing failed");
}

/// A key with a newline or a terminal escape prints on one line, escaped, in the dry run's
/// list and in the failures.
#[test]
fn keys_with_control_characters_print_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let key = "x\ny\u{1b}[2J";
    write_tree(&src, &BTreeMap::from([(key.to_string(), b"f".to_vec())]));
    // A directory where the file must go: its copy fails.
    std::fs::create_dir_all(dst.join(key).join("sub")).unwrap();
    let (src, dst) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let dry = skyhaul(&["cp", "-r", "--dry-run", src, dst], None, None);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.stdout.lines().count(), 1, "{}", dry.stdout);
    assert!(dry.stdout.contains("x\\ny\\u{1b}[2J"), "{}", dry.stdout);
    let run = skyhaul(&["cp", "-r", "--no-journal", src, dst], None, None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let failed: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("skyhaul: failed: "))
        .collect();
    assert_eq!(failed.len(), 1, "{}", run.stderr);
    assert!(failed[0].contains("x\\ny\\u{1b}[2J"), "{}", failed[0]);
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
}
