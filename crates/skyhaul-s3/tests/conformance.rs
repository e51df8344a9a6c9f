//! The S3 backend passes the shared Store conformance suite on every real server we run.

use skyhaul_s3::{S3Options, S3Store};
use skyhaul_store::conformance::{self, Gap};
use skyhaul_store::{ErrorKind, Store};
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
    // s3s-fs writes `a/../b` to `b`; AWS, moto and rclone keep keys verbatim.
    let gaps: &[Gap] = match kind {
        S3Kind::S3sFs => &[Gap::ResolvesDotSegments],
        _ => &[],
    };
    conformance::run_all_but(&store, "suite/", gaps).await;
    // The suite accepts either answer; each server must give the right one.
    let written = store
        .put(
            "opaque?",
            skyhaul_store::Payload::default(),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        written.opaque_etag,
        kind == S3Kind::MotoSseKms,
        "{kind}: whether ETags are called opaque: {written:?}"
    );
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
async fn moto_encrypting_with_sse_kms_passes_the_conformance_suite() {
    suite(S3Kind::MotoSseKms).await;
}

/// The suite passes whether or not a store calls its ETags opaque; this pins down that an
/// SSE-KMS bucket's are, and that they are indeed no MD5s (so that the integration tests
/// with this server test what they claim to).
#[tokio::test(flavor = "multi_thread")]
async fn sse_kms_etags_are_reported_as_no_md5s() {
    use bytes::Bytes;
    use futures::TryStreamExt;
    use md5::{Digest, Md5};
    use skyhaul_store::{Payload, PutOptions};
    let server = S3Server::start(S3Kind::MotoSseKms);
    server.create_bucket("kms").await;
    let store = S3Store::connect(&options(&server), "kms").await.unwrap();
    let data = Bytes::from_static(b"encrypted at rest");
    let md5: [u8; 16] = Md5::digest(&data).into();
    let opts = PutOptions {
        size: data.len() as u64,
        ..Default::default()
    };
    let written = store
        .put(
            "k",
            Payload {
                data,
                md5: Some(md5),
            },
            &opts,
        )
        .await
        .unwrap();
    let etag = written.etag.clone().unwrap();
    assert!(written.opaque_etag, "{written:?}");
    assert_eq!(etag.len(), 32, "it looks like an MD5: {etag}");
    assert_ne!(etag, hex::encode(md5), "but it is none");
    assert_eq!(written.content_md5(), None);
    let head = store.head("k").await.unwrap().unwrap();
    assert!(
        head.opaque_etag && head.etag.as_deref() == Some(etag.as_str()),
        "{head:?}"
    );
    let got = store.get("k", None, None).await.unwrap();
    assert!(got.opaque_etag && got.content_md5().is_none(), "{got:?}");
    // A listing cannot say: its ETag is the same, in the form of an MD5.
    let listed: Vec<_> = store.list("", None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].etag.as_deref(), Some(etag.as_str()));
    assert!(!listed[0].opaque_etag);
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
    assert_eq!(err.kind, ErrorKind::BadCredentials, "{err}");
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

/// A key holding a character XML 1.0 cannot carry (`\x01`, which a file name may hold) no
/// longer makes its prefix unlistable where the server URL-encodes keys when asked (moto; rclone
/// sends it as it is); where it does not (s3s-fs), the error says why instead of "HTTP 200".
#[tokio::test(flavor = "multi_thread")]
async fn keys_that_xml_cannot_carry_list_back() {
    use futures::TryStreamExt;
    use skyhaul_store::Payload;
    for kind in S3Kind::ALL {
        let server = S3Server::start(kind);
        server.create_bucket("ctl").await;
        let store = S3Store::connect(&options(&server), "ctl").await.unwrap();
        // `+`, space and `%` are what a wrong decoding would change.
        let keys = ["a\u{1}b+c d%25", "dir\u{1}x/y", "plain+name"];
        for k in keys {
            store
                .put(k, Payload::default(), &Default::default())
                .await
                .unwrap();
        }
        let flat: Result<Vec<_>, _> = store.list("", None).try_collect().await;
        let level: Result<Vec<_>, _> = store.list_level("", None).try_collect().await;
        if kind == S3Kind::S3sFs {
            for err in [flat.unwrap_err(), level.unwrap_err()] {
                assert!(
                    err.message
                        .contains("s3://ctl/: list: the listing cannot be read: a key in it holds characters XML cannot carry"),
                    "{kind}: {err}"
                );
            }
            continue;
        }
        let flat: Vec<String> = flat.unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(flat, keys, "{kind}");
        let level: Vec<String> = level.unwrap().iter().map(|e| e.key().to_string()).collect();
        assert_eq!(
            level,
            ["a\u{1}b+c d%25", "dir\u{1}x/", "plain+name"],
            "{kind}"
        );
    }
}
