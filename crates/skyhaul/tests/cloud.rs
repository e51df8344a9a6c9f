//! GCS and Azure through the CLI: every documented way of finding an endpoint and
//! credentials works, and the errors say what is wrong without showing a secret.

mod common;

use common::{read_tree, skyhaul_env, write_tree};
use skyhaul_testkit::{AzuriteServer, FakeGcsServer};
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
    let mut out = BTreeMap::new();
    for m in metas {
        let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
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

    let wrong = "c2VjcmV0LXdyb25nLWtleS1zZWNyZXQtd3Jvbmcta2V5";
    let r = skyhaul_env(
        &[
            "cp",
            "-r",
            &s,
            "az://cont/x/",
            "--dst-endpoint",
            &azure.endpoint,
            "--no-journal",
        ],
        None,
        None,
        &[
            ("SKYHAUL_DST_AZURE_ACCOUNT", "devstoreaccount1"),
            ("SKYHAUL_DST_AZURE_KEY", wrong),
        ],
    );
    assert_eq!(r.code, 4, "wrong key: {}", r.stderr);
    assert!(r.stderr.contains("credentials"), "a hint: {}", r.stderr);
    assert!(!r.stderr.contains(wrong), "{}", r.stderr);

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
