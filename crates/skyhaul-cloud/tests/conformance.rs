//! The GCS and Azure backends pass the shared Store conformance suite on emulators the test
//! starts itself (fake-gcs-server, Azurite), and name their problems with the right kinds.

use skyhaul_cloud::{AzureOptions, AzureStore, GcsOptions, GcsStore};
use skyhaul_store::{conformance, ErrorKind, Store};
use skyhaul_testkit::{AzuriteServer, FakeGcsServer};

fn gcs_options(server: &FakeGcsServer) -> GcsOptions {
    GcsOptions {
        endpoint: Some(server.endpoint.clone()),
        ..Default::default()
    }
}

fn azure_options(server: &AzuriteServer) -> AzureOptions {
    AzureOptions {
        endpoint: Some(server.endpoint.clone()),
        account: Some(server.account.clone()),
        key: Some(server.key.clone()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_gcs_server_passes_the_conformance_suite() {
    let server = FakeGcsServer::start();
    server.create_bucket("conformance").await;
    server.create_bucket("other").await;
    let store = GcsStore::connect(&gcs_options(&server), "conformance")
        .await
        .unwrap();
    store.preflight(true).await.unwrap();
    let other = GcsStore::connect(&gcs_options(&server), "other")
        .await
        .unwrap();
    conformance::run_all(&store, "suite/").await;
    conformance::run_server_side_copy(&other, &store, "copy/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn azurite_passes_the_conformance_suite() {
    let server = AzuriteServer::start();
    server.create_container("conformance").await;
    server.create_container("other").await;
    let store = AzureStore::connect(&azure_options(&server), None, "conformance")
        .await
        .unwrap();
    store.preflight(true).await.unwrap();
    let other = AzureStore::connect(&azure_options(&server), None, "other")
        .await
        .unwrap();
    conformance::run_all(&store, "suite/").await;
    conformance::run_server_side_copy(&other, &store, "copy/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_preflight_names_the_problem() {
    let server = FakeGcsServer::start();
    let missing = GcsStore::connect(&gcs_options(&server), "missing-bucket")
        .await
        .unwrap();
    let err = missing.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BucketNotFound, "{err}");
    assert!(err.message.contains("gs://missing-bucket"), "{err}");

    let nowhere = GcsStore::connect(
        &GcsOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        },
        "b",
    )
    .await
    .unwrap();
    let err = nowhere.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
    assert!(err.message.contains("endpoint"), "a hint: {err}");

    // A service-account file that is not one fails at connect, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("sa.json");
    std::fs::write(&bad, "{\"type\": \"service_account\"}").unwrap();
    let err = GcsStore::connect(
        &GcsOptions {
            endpoint: Some(server.endpoint.clone()),
            service_account: Some(bad.clone()),
            ..Default::default()
        },
        "b",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AccessDenied, "{err}");
    assert!(err.message.contains("sa.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_preflight_names_the_problem() {
    let server = AzuriteServer::start();
    server.create_container("exists").await;
    let missing = AzureStore::connect(&azure_options(&server), None, "missing-container")
        .await
        .unwrap();
    let err = missing.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BucketNotFound, "{err}");
    assert!(err.message.contains("az://missing-container"), "{err}");

    // A wrong key (valid base64) is refused by the server's signature check.
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    let mut wrong = azure_options(&server);
    wrong.key = Some(wrong_key.into());
    let store = AzureStore::connect(&wrong, None, "exists").await.unwrap();
    let err = store.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadCredentials, "{err}");
    assert!(
        !err.message.contains(wrong_key),
        "secrets never appear: {err}"
    );

    // A SAS token on an unreachable endpoint: the error never shows the token.
    let sas = "sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2099-01-01T00:00:00Z&sig=VERYSECRET";
    let store = AzureStore::connect(
        &AzureOptions {
            endpoint: Some("http://127.0.0.1:9/devstoreaccount1".into()),
            account: Some("devstoreaccount1".into()),
            sas: Some(sas.into()),
            ..Default::default()
        },
        None,
        "exists",
    )
    .await
    .unwrap();
    let err = store.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
    assert!(!err.message.contains("VERYSECRET"), "{err}");

    // A connection string works as well as separate options.
    let store = AzureStore::connect(
        &AzureOptions {
            connection_string: Some(server.connection_string()),
            ..Default::default()
        },
        None,
        "exists",
    )
    .await
    .unwrap();
    store.preflight(true).await.unwrap();
}

/// What the integrity checks rely on: single uploads report the content MD5 as their ETag
/// (GCS md5Hash, Azure Content-MD5), in listings too; uploads of many small parts (a
/// 40-part GCS compose needs two levels) read back whole.
async fn checksums_and_many_parts(store: &dyn Store) {
    use bytes::Bytes;
    use futures::TryStreamExt;
    use skyhaul_store::{PartSpec, Payload, PutOptions};
    let md5 = "5d41402abc4b2a76b9719d911017c592"; // md5("hello")
    let w = store
        .put(
            "sums/hello",
            Payload::new(Bytes::from_static(b"hello")),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(w.etag.as_deref(), Some(md5), "{}: put", store.name());
    let head = store.head("sums/hello").await.unwrap().unwrap();
    assert_eq!(head.etag.as_deref(), Some(md5), "{}: head", store.name());
    let listed: Vec<_> = store.list("sums/", None).try_collect().await.unwrap();
    assert_eq!(
        listed[0].etag.as_deref(),
        Some(md5),
        "{}: list",
        store.name()
    );
    // A wrong Content-MD5 / md5Hash is refused (Azure) or caught on the answer (GCS
    // emulators recompute it), never stored silently as if it were right.
    let bad = store
        .put(
            "sums/bad",
            Payload {
                data: Bytes::from_static(b"hello"),
                md5: Some([0u8; 16]),
            },
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(bad.kind, skyhaul_store::ErrorKind::Corrupt),
        "{}: {bad}",
        store.name()
    );

    let parts = 40u32;
    let chunk = 1000usize;
    let data = conformance::pattern(chunk * parts as usize, 21);
    let upload = store
        .create_multipart("many/parts.bin", &PutOptions::default())
        .await
        .unwrap();
    let mut done = Vec::new();
    for n in (1..=parts).rev() {
        let off = (n as usize - 1) * chunk;
        done.push(
            store
                .put_part(
                    &upload,
                    PartSpec {
                        number: n,
                        offset: off as u64,
                        len: chunk as u64,
                    },
                    Payload::new(Bytes::copy_from_slice(&data[off..off + chunk])),
                )
                .await
                .unwrap(),
        );
    }
    done.sort_by_key(|p| p.number);
    store
        .complete_multipart(&upload, &done, &PutOptions::default())
        .await
        .unwrap();
    let got = store.get("many/parts.bin", None, None).await.unwrap().data;
    assert!(got.as_ref() == &data[..], "{}: 40 parts", store.name());
}

/// GCS striping leaves its parts as temporary objects until completion or abort: look at
/// the bucket with an independent client, which does not hide them as skyhaul's listing does.
async fn temporary_objects(server: &FakeGcsServer, bucket: &str) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::{path::Path, ObjectStore};
    server
        .store(bucket)
        .list(Some(&Path::from(".skyhaul-uploads")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_checksums_and_compose_tree() {
    let server = FakeGcsServer::start();
    server.create_bucket("sums").await;
    let store = GcsStore::connect(&gcs_options(&server), "sums")
        .await
        .unwrap();
    checksums_and_many_parts(&store).await;
    assert_eq!(
        temporary_objects(&server, "sums").await,
        Vec::<String>::new(),
        "completion deletes the parts"
    );
}

/// The upload state is plain data: parts sent by other store instances (other processes or
/// machines, in a fleet) complete into one object; an abort from yet another removes them.
#[tokio::test(flavor = "multi_thread")]
async fn gcs_uploads_span_store_instances_and_abort_cleans_up() {
    use bytes::Bytes;
    use skyhaul_store::{PartSpec, Payload, PutOptions};
    let server = FakeGcsServer::start();
    server.create_bucket("span").await;
    let opts = gcs_options(&server);
    let connect = || GcsStore::connect(&opts, "span");
    let data = conformance::pattern(3000, 31);
    let part = |n: u32| PartSpec {
        number: n,
        offset: (n as u64 - 1) * 1000,
        len: 1000,
    };
    let body = |n: u32| {
        let o = (n as usize - 1) * 1000;
        Payload::new(Bytes::copy_from_slice(&data[o..o + 1000]))
    };
    for (key, abort) in [("done.bin", false), ("aborted.bin", true)] {
        let upload = connect()
            .await
            .unwrap()
            .create_multipart(key, &PutOptions::default())
            .await
            .unwrap();
        let mut parts = Vec::new();
        for n in 1..=3 {
            let worker = connect().await.unwrap();
            parts.push(worker.put_part(&upload, part(n), body(n)).await.unwrap());
        }
        assert_eq!(temporary_objects(&server, "span").await.len(), 3, "{key}");
        let last = connect().await.unwrap();
        if abort {
            last.abort_multipart(&upload).await.unwrap();
            assert!(last.head(key).await.unwrap().is_none());
        } else {
            last.complete_multipart(&upload, &parts, &PutOptions::default())
                .await
                .unwrap();
            let got = last.get(key, None, None).await.unwrap().data;
            assert!(got.as_ref() == &data[..], "parts from three instances");
            // Objects without an MD5 (real GCS composites) are pinned by generation.
            let mut stale = last.head(key).await.unwrap().unwrap();
            stale.etag = Some("g1".into());
            let err = last.get(key, Some(0..10), Some(&stale)).await.unwrap_err();
            assert_eq!(err.kind, skyhaul_store::ErrorKind::SourceChanged, "{err}");
        }
        assert!(temporary_objects(&server, "span").await.is_empty(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_checksums_and_many_blocks() {
    let server = AzuriteServer::start();
    server.create_container("sums").await;
    let store = AzureStore::connect(&azure_options(&server), None, "sums")
        .await
        .unwrap();
    checksums_and_many_parts(&store).await;
    // A block-list blob has no Content-MD5: its ETag is Azure's, and reads pin it (If-Match).
    let mut meta = store.head("many/parts.bin").await.unwrap().unwrap();
    let etag = meta.etag.clone().unwrap();
    assert!(etag.starts_with("0x"), "Azure's own ETag: {etag}");
    store
        .get("many/parts.bin", Some(0..10), Some(&meta))
        .await
        .expect("the current version reads");
    meta.etag = Some("0x8DEADBEEF".into());
    let err = store
        .get("many/parts.bin", Some(0..10), Some(&meta))
        .await
        .unwrap_err();
    assert_eq!(err.kind, skyhaul_store::ErrorKind::SourceChanged, "{err}");
}
