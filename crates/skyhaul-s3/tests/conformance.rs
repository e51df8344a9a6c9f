//! The S3 backend passes the shared Store conformance suite on every real server we run.

use skyhaul_s3::{S3Options, S3Store};
use skyhaul_store::{conformance, ErrorKind, Store};
use skyhaul_testkit::{S3Kind, S3Server};

fn options(server: &S3Server) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint.clone()),
        access_key_id: Some(server.access_key.clone()),
        secret_access_key: Some(server.secret_key.clone()),
        ..Default::default()
    }
}

async fn suite(kind: S3Kind) {
    let server = S3Server::start(kind);
    server.create_bucket("conformance").await;
    let store = S3Store::connect(&options(&server), "conformance")
        .await
        .unwrap();
    store.preflight(true).await.unwrap();
    conformance::run_all(&store, "suite/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3s_fs_passes_the_conformance_suite() {
    suite(S3Kind::S3sFs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rclone_serve_s3_passes_the_conformance_suite() {
    suite(S3Kind::RcloneServe).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_passes_the_conformance_suite() {
    suite(S3Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_names_the_problem() {
    let server = S3Server::start(S3Kind::S3sFs);
    server.create_bucket("exists").await;
    let missing = S3Store::connect(&options(&server), "missing-bucket")
        .await
        .unwrap();
    let err = missing.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BucketNotFound, "{err}");
    assert!(err.message.contains("s3://missing-bucket"), "{err}");

    let mut wrong = options(&server);
    wrong.secret_access_key = Some("not-the-secret".into());
    let store = S3Store::connect(&wrong, "exists").await.unwrap();
    let err = store.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AccessDenied, "{err}");
    assert!(
        !err.message.contains("not-the-secret"),
        "secrets never appear in errors: {err}"
    );

    let mut nowhere = options(&server);
    nowhere.endpoint = Some("http://127.0.0.1:9".into());
    let store = S3Store::connect(&nowhere, "exists").await.unwrap();
    let err = store.preflight(false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
}
