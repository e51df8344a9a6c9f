//! The engine's split, parallel listing delivers exactly what one flat listing does, in the
//! same order, on every server we run that lists by level: sync's merge-join depends on it.
//! Where a store starts listings after any key (S3, GCS), a prefix of several pages is also
//! split into key ranges; those are listed here too.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use skyhaul_cloud::{AzureOptions, AzureStore, GcsOptions, GcsStore};
use skyhaul_engine::retry::RetryPolicy;
use skyhaul_engine::{Listing, Progress};
use skyhaul_s3::{S3Options, S3Store};
use skyhaul_store::{Payload, PutOptions, Store};
use skyhaul_testkit::{AzuriteServer, FakeGcsServer, S3Kind, S3Server};
use std::sync::Arc;

/// Leaves, a subtree several levels deep, neighbours that sort around `/`, odd characters.
const KEYS: &[&str] = &[
    "a-b",
    "a.txt",
    "a/1",
    "a/b/c",
    "a/b/d/e",
    "a/b0",
    "a/c/x",
    "a0",
    "b/x",
    "ba",
    "deep/1/2/3/4",
    "sp ace/é+%/f",
    "z/leaf1",
    "z/leaf2",
];

async fn listed(store: &Arc<dyn Store>, prefix: &str) -> Vec<String> {
    let mut l = Listing::new(
        store.clone(),
        prefix.to_string(),
        RetryPolicy::default(),
        Arc::new(Progress::default()),
    );
    let mut out = Vec::new();
    while let Some(m) = l.next().await {
        out.push(m.unwrap().key);
    }
    out
}

async fn on_s3(kind: S3Kind) {
    let server = S3Server::start(kind);
    server.create_bucket("tree").await;
    let opts = S3Options {
        endpoint: Some(server.endpoint.clone()),
        access_key_id: Some(server.access_key.clone()),
        secret_access_key: Some(server.secret_key.clone()),
        ..Default::default()
    };
    let store = S3Store::connect(&opts, "tree").await.unwrap();
    same_as_flat(Arc::new(store), &kind.to_string()).await;
}

async fn same_as_flat(store: Arc<dyn Store>, kind: &str) {
    assert!(
        store.lists_by_level(),
        "the split path is the one under test"
    );
    // Three pages of keys in one flat prefix, in shapes that cuts guess well and badly.
    let wide: Vec<String> = (0..1_500)
        .map(|n| format!("wide/shard-{n:05}.tar"))
        .chain(
            (0u64..1_500).map(|n| format!("wide/{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
        )
        .collect();
    let keys: Vec<&str> = KEYS
        .iter()
        .copied()
        .chain(wide.iter().map(String::as_str))
        .collect();
    futures::stream::iter(keys.iter().map(|k| {
        let store = store.clone();
        async move {
            let put = PutOptions {
                size: 1,
                ..Default::default()
            };
            store
                .put(k, Payload::new(Bytes::from_static(b"x")), &put)
                .await
                .unwrap();
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
    let mut keys = keys;
    keys.sort();
    for prefix in ["", "a/", "deep/", "wide/"] {
        let flat: Vec<String> = store
            .list(prefix, None)
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap();
        let want: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with(prefix))
            .map(|k| k.to_string())
            .collect();
        assert_eq!(flat, want, "{kind}: flat listing of '{prefix}'");
        assert_eq!(
            listed(&store, prefix).await,
            want,
            "{kind}: split listing of '{prefix}'"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn split_listing_matches_flat_on_s3s_fs() {
    on_s3(S3Kind::S3sFs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn split_listing_matches_flat_on_rclone_serve_s3() {
    on_s3(S3Kind::RcloneServe).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn split_listing_matches_flat_on_moto() {
    on_s3(S3Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn split_listing_matches_flat_on_fake_gcs_server() {
    let server = FakeGcsServer::start();
    server.create_bucket("tree").await;
    let opts = GcsOptions {
        endpoint: Some(server.endpoint.clone()),
        ..Default::default()
    };
    let store = GcsStore::connect(&opts, "tree").await.unwrap();
    same_as_flat(Arc::new(store), "fake-gcs-server").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn split_listing_matches_flat_on_azurite() {
    let server = AzuriteServer::start();
    server.create_container("tree").await;
    let opts = AzureOptions {
        endpoint: Some(server.endpoint.clone()),
        account: Some(server.account.clone()),
        key: Some(server.key.clone()),
        ..Default::default()
    };
    let store = AzureStore::connect(&opts, None, "tree").await.unwrap();
    same_as_flat(Arc::new(store), "azurite").await;
}
