//! GCS and Azure through the CLI: every documented way of finding an endpoint and
//! credentials works, and the errors say what is wrong without showing a secret.

mod common;

use common::{read_tree, skyhaul_env, write_tree};
use skyhaul_testkit::{AzuriteServer, FakeGcsServer, S3Kind, S3Server};
use std::collections::BTreeMap;

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert("a.txt".to_string(), common::data(1000, 7));
    m.insert("dir/ü b+%.bin".to_string(), common::data(3000, 8));
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_standard_environment_is_enough() {
    let gcs = FakeGcsServer::start();
    let azure = AzuriteServer::start();
    gcs.create_bucket("bkt").await;
    azure.create_container("cont").await;
    let src = tempfile::tempdir().unwrap();
    let back = tempfile::tempdir().unwrap();
    write_tree(src.path(), &files());
    let host = gcs.endpoint.trim_start_matches("http://").to_string();
    let s = src.path().display().to_string();

    // GCS: STORAGE_EMULATOR_HOST (host:port, as gcloud tools set it), no credentials.
    let r = skyhaul_env(
        &["cp", "-r", &s, "gs://bkt/data/", "--no-journal"],
        None,
        None,
        &[("STORAGE_EMULATOR_HOST", &host)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // GCS -> Azure: AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY, endpoint by flag.
    let r = skyhaul_env(
        &[
            "cp",
            "-r",
            "gs://bkt/data/",
            "az://cont/copy/",
            "--dst-endpoint",
            &azure.endpoint,
            "--no-journal",
        ],
        None,
        None,
        &[
            ("STORAGE_EMULATOR_HOST", &host),
            ("AZURE_STORAGE_ACCOUNT", &azure.account),
            ("AZURE_STORAGE_KEY", &azure.key),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Azure -> local: AZURE_STORAGE_CONNECTION_STRING (its BlobEndpoint is the emulator).
    let b = back.path().display().to_string();
    let r = skyhaul_env(
        &["cp", "-r", "az://cont/copy/", &b, "--no-journal"],
        None,
        None,
        &[(
            "AZURE_STORAGE_CONNECTION_STRING",
            azure.connection_string().as_str(),
        )],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        read_tree(back.path()) == files(),
        "round trip through GCS and Azure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_https_url_with_a_sas_token() {
    let azure = AzuriteServer::start();
    azure.create_container("cont").await;
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), &files());
    let s = src.path().display().to_string();
    let url = "https://devstoreaccount1.blob.core.windows.net/cont/sas/";
    let sas = azure.account_sas();
    let r = skyhaul_env(
        &[
            "cp",
            "-r",
            &s,
            url,
            "--dst-endpoint",
            &azure.endpoint,
            "--no-journal",
        ],
        None,
        None,
        &[("SKYHAUL_DST_AZURE_SAS", sas.as_str())],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Server-side copy within the account with the SAS (the copy source needs it too).
    let r = skyhaul_env(
        &[
            "cp",
            "-r",
            url,
            "az://cont/sas-copy/",
            "--src-endpoint",
            &azure.endpoint,
            "--dst-endpoint",
            &azure.endpoint,
            "--src-azure-account",
            "devstoreaccount1",
            "--dst-azure-account",
            "devstoreaccount1",
            "--no-journal",
        ],
        None,
        None,
        &[
            ("SKYHAUL_SRC_AZURE_SAS", sas.as_str()),
            ("SKYHAUL_DST_AZURE_SAS", sas.as_str()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let store = azure.store("cont");
    let got = read_container(&store, "sas-copy/").await;
    assert!(got == files(), "copied with a SAS token: {:?}", got.keys());

    // A tampered SAS is refused (exit 4), and its signature never shows.
    let bad = sas.replace("sig=", "sig=AAAA");
    let r = skyhaul_env(
        &[
            "cp",
            "-r",
            &s,
            url,
            "--dst-endpoint",
            &azure.endpoint,
            "--no-journal",
        ],
        None,
        None,
        &[("SKYHAUL_DST_AZURE_SAS", bad.as_str())],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    let sig = bad.split("sig=").nth(1).unwrap();
    assert!(
        !r.stderr.contains(sig) && !r.stdout.contains(sig),
        "{}",
        r.stderr
    );

    // The portal's "Blob SAS URL" form: refused, the signature not shown, nothing written
    // (its query once became part of the blob's name).
    let with_query = format!("{url}x.txt?{sas}");
    let r = skyhaul_env(
        &[
            "cp",
            &format!("{s}/a.txt"),
            &with_query,
            "--dst-endpoint",
            &azure.endpoint,
        ],
        None,
        None,
        &[("SKYHAUL_DST_AZURE_SAS", sas.as_str())],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let sig = sas.split("sig=").nth(1).unwrap();
    assert!(!r.stderr.contains(sig), "{}", r.stderr);
    assert!(r.stderr.contains("--dst-azure-sas"), "{}", r.stderr);
    let names = read_container(&store, "sas/").await;
    assert!(names.keys().all(|k| !k.contains('?')), "{:?}", names.keys());
}

/// Azure stores a `\\` in a blob name as `/`: a key with one fails alone, naming itself,
/// instead of overwriting the object of the other name, and a `sync --delete` then deletes
/// nothing (it used to write `dir\\f.txt` onto `dir/f.txt` and delete it as extra on the
/// next run, over and over).
#[tokio::test(flavor = "multi_thread")]
async fn a_key_with_a_backslash_fails_alone_at_azure() {
    let azure = AzuriteServer::start();
    azure.create_container("cont").await;
    let store = azure.store("cont");
    {
        use object_store::{path::Path, ObjectStoreExt};
        let there = Path::from("bs/dir/f.txt");
        store
            .put(&there, b"already there".to_vec().into())
            .await
            .unwrap();
    }
    let src = tempfile::tempdir().unwrap();
    let files = BTreeMap::from([
        ("dir\\f.txt".to_string(), b"backslash".to_vec()),
        ("other.txt".to_string(), b"other".to_vec()),
    ]);
    write_tree(src.path(), &files);
    let connection = azure.env_for("DST");
    let env: Vec<(&str, &str)> = connection
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for run in 0..2 {
        let args = [
            "sync",
            "--delete",
            "-y",
            src.path().to_str().unwrap(),
            "az://cont/bs",
            "--json",
            "--no-journal",
        ];
        let r = skyhaul_env(&args, None, None, &env);
        assert_eq!(r.code, 1, "run {run}: {}", r.stderr);
        let report = r.json();
        assert_eq!(report["objects_failed"], 1, "run {run}: {report}");
        assert_eq!(report["objects_deleted"], 0, "run {run}: {report}");
        let failure = &report["failures"][0];
        assert_eq!(failure["key"], "dir\\f.txt", "{report}");
        let error = failure["error"].as_str().unwrap();
        assert!(error.contains("Azure stores it as '/'"), "{error}");
        let got = read_container(&store, "bs/").await;
        let want = BTreeMap::from([
            ("dir/f.txt".to_string(), b"already there".to_vec()),
            ("other.txt".to_string(), b"other".to_vec()),
        ]);
        assert_eq!(got, want, "run {run}");
    }
}

/// A GCS bucket `gb` holding `key` with `metadata`, an Azure container `cont`, an S3 bucket
/// `bkt` (moto), and the environment that reaches GCS and, as the destination, Azure.
async fn metadata_from_gcs(
    key: &str,
    data: &[u8],
    metadata: &[(&str, &str)],
) -> (
    FakeGcsServer,
    AzuriteServer,
    S3Server,
    Vec<(String, String)>,
) {
    let gcs = FakeGcsServer::start();
    gcs.create_bucket("gb").await;
    gcs.put_with_metadata("gb", key, data, metadata).await;
    let azure = AzuriteServer::start();
    azure.create_container("cont").await;
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("bkt").await;
    let gcs_host = gcs.endpoint.trim_start_matches("http://").to_string();
    let mut env = vec![("STORAGE_EMULATOR_HOST".to_string(), gcs_host)];
    env.extend(azure.env_for("DST"));
    (gcs, azure, s3, env)
}

/// A GCS metadata name that no HTTP header can carry (`x y`: GCS allows any name) is taken
/// from the listing: it travels where the destination can store it (Azure, encoded) and is
/// said to be left out where it cannot (S3). It used to vanish without a word.
#[tokio::test(flavor = "multi_thread")]
async fn a_gcs_metadata_name_no_header_carries_still_travels_or_is_named() {
    let metadata = [("x y", "6"), ("owner", "ml")];
    let (_gcs, azure, s3, env) = metadata_from_gcs("md/o.txt", b"payload", &metadata).await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for recursive in [false, true] {
        let (src, dst) = match recursive {
            false => ("gs://gb/md/o.txt", "az://cont/one/o.txt"),
            true => ("gs://gb/md", "az://cont/all"),
        };
        let args = [
            &["cp", src, dst, "--no-journal"][..],
            if recursive { &["-r"] } else { &[] },
        ]
        .concat();
        let run = skyhaul_env(&args, None, None, &env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let blob = if recursive { "all/o.txt" } else { "one/o.txt" };
        let head = common::azure_blob_head(&azure, "cont", blob);
        for line in ["\r\nx-ms-meta-x_20y: 6", "\r\nx-ms-meta-owner: ml"] {
            assert!(head.contains(line), "{blob}: {line:?} in {head}");
        }
    }
    let env = [env[0]];
    let run = skyhaul_env(
        &[
            "cp",
            "gs://gb/md/o.txt",
            "s3://bkt/o.txt",
            "--no-journal",
            "--dst-endpoint",
            &s3.endpoint,
        ],
        None,
        Some(&s3),
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("metadata \"x y\" left out: S3 takes only token names"),
        "{}",
        run.stderr
    );
}

/// GCS keeps metadata names that differ only in case (`Key` and `key`) apart; S3 and Azure,
/// which take them as headers, cannot. One is kept and the other is said to be left out:
/// sent both, S3 merged them into one value (`lower,UPPER`) and Azure refused the request's
/// signature, which stopped the transfer as if its credentials were wrong (exit 4).
#[tokio::test(flavor = "multi_thread")]
async fn metadata_names_that_differ_only_in_case_keep_one_at_s3_and_azure() {
    // Striped, so that the upload is given its metadata from the object resource, where
    // both names are.
    let data = common::data(6 << 20, 7);
    let metadata = [("Key", "UPPER"), ("key", "lower")];
    let (_gcs, azure, s3, env) = metadata_from_gcs("mc/o.bin", &data, &metadata).await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let striped = [
        "--multipart-threshold",
        "5M",
        "--part-size",
        "5M",
        "--no-journal",
    ];
    let left_out = "metadata \"key\" left out: the store takes names without case";

    let run = skyhaul_env(
        &[&["cp", "-r", "gs://gb/mc", "az://cont/mc"][..], &striped].concat(),
        None,
        None,
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(left_out), "{}", run.stderr);
    let head = common::azure_blob_head(&azure, "cont", "mc/o.bin");
    let values: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("x-ms-meta-key: "))
        .collect();
    assert_eq!(values, ["upper"], "{head}");

    let to_s3 = [
        "cp",
        "-r",
        "gs://gb/mc",
        "s3://bkt/mc",
        "--dst-endpoint",
        &s3.endpoint,
    ];
    let run = skyhaul_env(&[&to_s3[..], &striped].concat(), None, Some(&s3), &env[..1]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(left_out), "{}", run.stderr);
    let head = s3
        .client()
        .await
        .head_object()
        .bucket("bkt")
        .key("mc/o.bin");
    let head = head.send().await.unwrap();
    let value = head.metadata().and_then(|m| m.get("key").or(m.get("Key")));
    assert_eq!(value.map(String::as_str), Some("UPPER"), "{head:?}");
}

/// GCS metadata values that a header would change (spaces at either end, which servers
/// drop) or that signers disagree on (a tab) reach Azure and S3 encoded, as whole: sent as
/// they were, Azure refused the request's signature (exit 4, the whole transfer stopped as
/// if the credentials were wrong) and moto kept them trimmed.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_values_a_header_would_change_travel_encoded() {
    let metadata = [("pad", "  padded  "), ("tab", "x\ty")];
    let (_gcs, azure, s3, env) = metadata_from_gcs("mv/o.txt", b"payload", &metadata).await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let encoded = |v: &str| {
        use base64::Engine;
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    };
    let run = skyhaul_env(
        &["cp", "gs://gb/mv/o.txt", "az://cont/mv/o.txt"],
        None,
        None,
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let head = common::azure_blob_head(&azure, "cont", "mv/o.txt");
    for (name, value) in metadata {
        // The helper gives the answer lower-cased.
        let line = format!("x-ms-meta-{name}: {}", encoded(value)).to_lowercase();
        assert!(head.lines().any(|l| l == line), "{line}: {head}");
    }

    let to_s3 = [
        "cp",
        "gs://gb/mv/o.txt",
        "s3://bkt/mv/o.txt",
        "--dst-endpoint",
        &s3.endpoint,
    ];
    let run = skyhaul_env(&to_s3, None, Some(&s3), &env[..1]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let head = s3
        .client()
        .await
        .head_object()
        .bucket("bkt")
        .key("mv/o.txt");
    let head = head.send().await.unwrap();
    for (name, value) in metadata {
        let got = head
            .metadata()
            .and_then(|m| m.get(name))
            .map(String::as_str);
        assert_eq!(got, Some(encoded(value).as_str()), "{name}: {head:?}");
    }
}

/// A whole GCS object (read in one request, whose headers carry its metadata) reaches GCS
/// as it was: a `Content-Disposition` that is no ASCII, and metadata values with line breaks
/// or spaces at either end, which headers fold or trim, are taken as GCS keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_gcs_object_keeps_what_headers_cannot_carry() {
    let gcs = FakeGcsServer::start();
    for b in ["ga", "gb"] {
        gcs.create_bucket(b).await;
    }
    let disposition = "attachment; filename=\"résumé.pdf\"";
    let resource = serde_json::json!({
        "name": "w/o.txt",
        "contentDisposition": disposition,
        "metadata": { "pad": "  padded  ", "nl": "line1\nline2" },
    });
    gcs.put_with_resource("ga", "w/o.txt", b"payload", resource)
        .await;
    let gcs_host = gcs.endpoint.trim_start_matches("http://").to_string();
    let env = [("STORAGE_EMULATOR_HOST", gcs_host.as_str())];
    for (src, dst) in [
        ("gs://ga/w/o.txt", "gs://gb/one.txt"),
        ("gs://ga/w", "gs://gb/all"),
    ] {
        let args = [
            "cp",
            "-r",
            src,
            dst,
            "--no-server-side-copy",
            "--no-journal",
        ];
        let args: Vec<&str> = args
            .into_iter()
            .filter(|a| src.ends_with('w') || *a != "-r")
            .collect();
        let run = skyhaul_env(&args, None, None, &env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let name = dst.trim_start_matches("gs://gb/");
        let name = if name == "all" { "all/o.txt" } else { name };
        let path = format!("/storage/v1/b/gb/o/{}", name.replace('/', "%2F"));
        let (status, body) = common::http_get(&gcs.endpoint, &path, None);
        assert_eq!(status, 200, "{body}");
        let got: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["contentDisposition"], disposition, "{src}: {body}");
        assert_eq!(got["metadata"]["pad"], "  padded  ", "{src}: {body}");
        assert_eq!(got["metadata"]["nl"], "line1\nline2", "{src}: {body}");
    }
}

async fn read_container(
    store: &std::sync::Arc<object_store::azure::MicrosoftAzure>,
    prefix: &str,
) -> BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt;
    use object_store::{path::Path, ObjectStore, ObjectStoreExt};
    let metas: Vec<_> = store
        .list(Some(&Path::parse(prefix).unwrap()))
        .try_collect()
        .await
        .unwrap();
    let names: Vec<String> = metas.iter().map(|m| m.location.to_string()).collect();
    let mut out = BTreeMap::new();
    for m in metas {
        // Named in full if it fails: a get of a listed object once failed here, unexplained.
        let got = match store.get(&m.location).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let data = got.unwrap_or_else(|e| panic!("get {}: {e:?}; listed {names:?}", m.location));
        out.insert(
            m.location.to_string()[prefix.len()..].to_string(),
            data.to_vec(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_problem_and_hide_secrets() {
    let azure = AzuriteServer::start();
    let gcs = FakeGcsServer::start();
    azure.create_container("cont").await;
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), &files());
    let s = src.path().display().to_string();

    let r = skyhaul_env(
        &["cp", "-r", &s, "az://missing/x/", "--no-journal"],
        None,
        None,
        &[(
            "SKYHAUL_DST_AZURE_CONNECTION_STRING",
            azure.connection_string().as_str(),
        )],
    );
    assert_eq!(r.code, 3, "missing container: {}", r.stderr);
    assert!(r.stderr.contains("container"), "{}", r.stderr);

    let r = skyhaul_env(
        &["cp", "-r", &s, "gs://missing/x/", "--no-journal"],
        None,
        None,
        &gcs.env_for("DST")
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.code, 3, "missing bucket: {}", r.stderr);
    assert!(r.stderr.contains("bucket"), "{}", r.stderr);

    let to_azure = |env: &[(&str, &str)]| {
        let args = [
            "cp",
            "-r",
            &s,
            "az://cont/x/",
            "--dst-endpoint",
            &azure.endpoint,
            "--no-journal",
        ];
        skyhaul_env(&args, None, None, env)
    };
    let wrong = "c2VjcmV0LXdyb25nLWtleS1zZWNyZXQtd3Jvbmcta2V5";
    let account = ("SKYHAUL_DST_AZURE_ACCOUNT", "devstoreaccount1");
    let r = to_azure(&[account, ("SKYHAUL_DST_AZURE_KEY", wrong)]);
    assert_eq!(r.code, 4, "wrong key: {}", r.stderr);
    assert!(r.stderr.contains("credentials"), "a hint: {}", r.stderr);
    assert!(!r.stderr.contains(wrong), "{}", r.stderr);

    // None at all: the error says where to give them, and no other advice (it once
    // suggested --verify none, as to a drop box that may write but not read).
    let r = to_azure(&[account]);
    assert_eq!(r.code, 4, "no credentials: {}", r.stderr);
    assert!(
        r.stderr.contains("no usable Azure credentials"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("--verify none"), "{}", r.stderr);

    let r = skyhaul_env(
        &[
            "cp",
            "-r",
            &s,
            "az://cont/x/",
            "--dst-endpoint",
            "http://127.0.0.1:9/devstoreaccount1",
            "--no-journal",
            "--retries",
            "0",
        ],
        None,
        None,
        &[(
            "SKYHAUL_DST_AZURE_CONNECTION_STRING",
            azure.connection_string().as_str(),
        )],
    );
    assert_eq!(r.code, 5, "unreachable: {}", r.stderr);
    assert!(!r.stderr.contains(&azure.key), "{}", r.stderr);
}

/// Every object at the destination is byte-identical to its source (some may be missing).
fn nothing_corrupt(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    for (k, v) in got {
        let w = want
            .get(k)
            .unwrap_or_else(|| panic!("{what}: unexpected {k}"));
        assert!(v == w, "{what}: '{k}' landed corrupted");
    }
}

/// A proxy flips bytes of GCS downloads and of GCS and Azure uploads: nothing corrupted
/// ever lands, and a rerun gets the copy through. (A corrupted part of a striped read is only
/// noticed by the whole-object MD5 at the end, and a corrupted Azure block list is refused
/// as a bad request, so one run may fail some objects: exit 1, never a corrupt object.)
#[tokio::test(flavor = "multi_thread")]
async fn corruption_on_the_wire_never_lands_in_gcs_or_azure() {
    use skyhaul_testkit::{FaultProxy, Faults};
    let gcs = FakeGcsServer::start();
    let azure = AzuriteServer::start();
    gcs.create_bucket("bkt").await;
    azure.create_container("cont").await;
    let mut want = files();
    for i in 0..8 {
        want.insert(
            format!("many/{i}.bin"),
            common::data(40_000 + i * 100, 50 + i as u64),
        );
    }
    want.insert("big/striped.bin".into(), common::data(6 << 20, 60));
    for (k, v) in &want {
        gcs.put("bkt", &format!("src/{k}"), v).await;
    }
    // Reads of objects' bytes only (`alt=media`), not listings: a listing carries no
    // checksum, so a byte flipped in a listed name can make the copy take one object for
    // another (over HTTPS, TLS rules that out). That once failed this test.
    let flips = |method: &str, response: bool| Faults {
        flip_response_body: if response { 0.15 } else { 0.0 },
        flip_request_body: if response { 0.0 } else { 0.15 },
        only_methods: vec![method.into()],
        path_contains: response.then(|| "alt=media".to_string()),
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let down = tmp.path().join("down");
    let gcs_down = FaultProxy::start(&gcs.endpoint, flips("GET", true));
    let gcs_up = FaultProxy::start(&gcs.endpoint, flips("POST", false));
    let az_up = FaultProxy::start(
        azure.endpoint.trim_end_matches("/devstoreaccount1"),
        flips("PUT", false),
    );
    let cs = azure.connection_string();
    let cases = [
        (
            "gs://bkt/src/",
            down.to_str().unwrap(),
            "SKYHAUL_SRC_ENDPOINT",
            gcs_down.endpoint(),
            &gcs_down,
        ),
        (
            down.to_str().unwrap(),
            "gs://bkt/up/",
            "SKYHAUL_DST_ENDPOINT",
            gcs_up.endpoint(),
            &gcs_up,
        ),
        (
            down.to_str().unwrap(),
            "az://cont/up/",
            "SKYHAUL_DST_ENDPOINT",
            format!("{}/devstoreaccount1", az_up.endpoint()),
            &az_up,
        ),
    ];
    for (src, dst, var, endpoint, proxy) in cases {
        let mut codes = Vec::new();
        // Until a run succeeds after the proxy corrupted something (a run it spared proves
        // nothing).
        for _run in 0..8 {
            let mut args = vec!["cp", "-r", src, dst, "--no-journal", "--retries", "20"];
            args.extend(SMALL_PARTS_1M);
            let env = [
                (var, endpoint.as_str()),
                ("SKYHAUL_DST_AZURE_CONNECTION_STRING", cs.as_str()),
            ];
            let r = skyhaul_env(&args, None, None, &env);
            assert!(r.code == 0 || r.code == 1, "{dst}: {}", r.stderr);
            let got = if dst.starts_with("gs://") {
                read_gcs(&gcs, "bkt", "up/").await
            } else if dst.starts_with("az://") {
                read_container(&azure.store("cont"), "up/").await
            } else {
                read_tree(&down)
            };
            nothing_corrupt(&got, &want, dst);
            codes.push(r.code);
            let n = proxy.injected();
            if r.code == 0 {
                let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
                assert!(
                    missing.is_empty(),
                    "{dst}: a successful run copied everything, not {missing:?}: {}{}",
                    r.stdout,
                    r.stderr
                );
                if n.flip_request_body + n.flip_response_body >= 1 {
                    break;
                }
            }
        }
        let n = proxy.injected();
        assert!(
            codes.last() == Some(&0) && n.flip_request_body + n.flip_response_body >= 1,
            "{dst}: a run gets through after corruption: {codes:?} {n:?}"
        );
    }
}

/// Small parts, so the 6 MiB object is striped into several on GCS and Azure.
const SMALL_PARTS_1M: [&str; 4] = ["--multipart-threshold", "2M", "--part-size", "1M"];

async fn read_gcs(gcs: &FakeGcsServer, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt;
    use object_store::{path::Path, ObjectStore, ObjectStoreExt};
    let store = gcs.store(bucket);
    let metas: Vec<_> = store
        .list(Some(&Path::parse(prefix).unwrap()))
        .try_collect()
        .await
        .unwrap();
    let names: Vec<String> = metas.iter().map(|m| m.location.to_string()).collect();
    let mut out = BTreeMap::new();
    for m in metas {
        // Named in full if it fails: a get of a listed object once failed here, unexplained.
        let got = match store.get(&m.location).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let data = got.unwrap_or_else(|e| panic!("get {}: {e:?}; listed {names:?}", m.location));
        out.insert(
            m.location.to_string()[prefix.len()..].to_string(),
            data.to_vec(),
        );
    }
    out
}

/// A console's "folder" (a key ending in `/`) is no object: it is not copied, so an S3
/// bucket holding one copies into a directory and into GCS, and a second sync has nothing
/// to do (GCS lists no such key, so a copied marker would be missing on every run).
#[tokio::test(flavor = "multi_thread")]
async fn folder_markers_are_left_out_everywhere() {
    let s3 = S3Server::start(S3Kind::Moto);
    s3.create_bucket("src").await;
    s3.put("src", "data/folder/", b"").await;
    s3.put("src", "data/empty-folder/", b"").await;
    s3.put("src", "data/folder/a.txt", b"a").await;
    let gcs = FakeGcsServer::start();
    gcs.create_bucket("bkt").await;
    let to_gcs = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend([
            "s3://src/data",
            "gs://bkt/data",
            "--src-endpoint",
            &s3.endpoint,
            "--dst-endpoint",
            &gcs.endpoint,
            "--json",
        ]);
        common::skyhaul(&args, Some(&s3), None)
    };
    let first = to_gcs(&["sync"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.json()["objects_copied"], 1, "{}", first.stdout);
    let again = to_gcs(&["sync"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["objects_copied"], 0, "{}", again.stdout);
    let checked = to_gcs(&["verify", "-r"]);
    assert_eq!(checked.code, 0, "{}", checked.stderr);

    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("out");
    let run = common::skyhaul(
        &[
            "cp",
            "-r",
            "s3://src/data",
            dst.to_str().unwrap(),
            "--src-endpoint",
            &s3.endpoint,
        ],
        Some(&s3),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let want = BTreeMap::from([("folder/a.txt".to_string(), b"a".to_vec())]);
    assert_eq!(read_tree(&dst), want);
}

/// `--src-anonymous` reads public GCS and Azure data without credentials: no credential
/// file is read, and Azure requests go unsigned. Azurite, as Azure does, lets anyone list
/// and read a container of public access level `container`, read (by name) the blobs of
/// one of level `blob`, and nothing of a private one, whatever credentials the environment
/// holds. An unsigned source is read through this machine, never by a server-side copy
/// signed by the destination.
#[tokio::test(flavor = "multi_thread")]
async fn public_gcs_and_azure_data_is_read_without_credentials() {
    let gcs = FakeGcsServer::start();
    gcs.create_bucket("open").await;
    for (k, v) in files() {
        gcs.put("open", &format!("d/{k}"), &v).await;
    }
    let azure = AzuriteServer::start();
    azure.create_public_container("open", "container").await;
    azure.create_public_container("byname", "blob").await;
    azure.create_container("closed").await;
    let tmp = tempfile::tempdir().unwrap();
    write_tree(&tmp.path().join("src"), &files());
    let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let signed = azure.connection_string();
    let dst_signed = [("SKYHAUL_DST_AZURE_CONNECTION_STRING", signed.as_str())];
    for container in ["open", "byname", "closed"] {
        let to = format!("az://{container}/d/");
        let r = skyhaul_env(&["cp", "-r", &dir("src"), &to], None, None, &dst_signed);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    // GCS at a custom endpoint would use GOOGLE_APPLICATION_CREDENTIALS, here a file that
    // does not exist.
    let adc = [(
        "GOOGLE_APPLICATION_CREDENTIALS",
        "/nonexistent/skyhaul-test/key.json",
    )];
    let from_gcs = |to: &str, extra: &[&str]| {
        let mut args = vec![
            "cp",
            "-r",
            "gs://open/d/",
            to,
            "--src-endpoint",
            &gcs.endpoint,
        ];
        args.extend(extra);
        skyhaul_env(&args, None, None, &adc)
    };
    let r = from_gcs(&dir("gcs-signed"), &[]);
    assert_eq!(r.code, 4, "the credential file is needed: {}", r.stderr);
    let r = from_gcs(&dir("gcs"), &["--src-anonymous"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        read_tree(&tmp.path().join("gcs")) == files(),
        "read from GCS"
    );

    let from_azure = |args: &[&str], env: &[(&str, &str)]| {
        let mut args = args.to_vec();
        args.extend(["--src-endpoint", &azure.endpoint]);
        args.extend(["--src-azure-account", &azure.account]);
        skyhaul_env(&args, None, None, env)
    };
    let anon = "--src-anonymous";
    let r = from_azure(&["cp", "-r", "az://open/d/", &dir("azure"), anon], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        read_tree(&tmp.path().join("azure")) == files(),
        "read from Azure"
    );
    // A blob is read by name where nobody may list its container.
    let r = from_azure(&["cp", "az://byname/d/a.txt", &dir("one"), anon], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(dir("one")).unwrap(), files()["a.txt"]);
    let not_public = |r: &common::Run| {
        r.stderr.contains("not public") && !r.stderr.contains("--src/dst-azure-key")
    };
    let r = from_azure(&["cp", "-r", "az://byname/d/", &dir("byname"), anon], &[]);
    assert!(r.code == 4 && not_public(&r), "{}", r.stderr);

    let key = [("SKYHAUL_SRC_AZURE_KEY", azure.key.as_str())];
    let r = from_azure(&["cp", "-r", "az://closed/d/", &dir("closed"), anon], &key);
    assert!(
        r.code == 4 && not_public(&r),
        "unsigned though a key was given: {}",
        r.stderr
    );
    let r = from_azure(&["cp", "-r", "az://closed/d/", &dir("closed")], &key);
    assert_eq!(r.code, 0, "signed with the key: {}", r.stderr);
    assert!(read_tree(&tmp.path().join("closed")) == files());

    let ep = ["--dst-endpoint", &azure.endpoint, "--json"];
    let mut args = vec!["cp", "-r", "az://open/d/", "az://closed/copy/", anon];
    args.extend(ep);
    let r = from_azure(&args, &dst_signed);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["server_side_copies"], 0, "{}", r.stdout);
    let got = read_container(&azure.store("closed"), "copy/").await;
    assert!(
        got == files(),
        "copied through this machine: {:?}",
        got.keys()
    );
}
