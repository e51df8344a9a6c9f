//! A RelayStore talking to a real Gateway on loopback, in front of a real LocalStore: the
//! store conformance suite must pass through the relay exactly as it does directly.

use bytes::Bytes;
use skyhaul_relay::{Compression, Gateway, RelayKey, RelayOptions, RelayStore};
use skyhaul_store::{LocalStore, Payload, PutOptions, Store};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

async fn gateway(root: &std::path::Path, key: &RelayKey) -> (String, Arc<Gateway>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let g = Gateway::new(Arc::new(LocalStore::new(root)), key.clone());
    tokio::spawn(g.clone().serve(listener));
    (addr, g)
}

fn options(gateways: Vec<String>, key: &RelayKey, compression: Compression) -> RelayOptions {
    RelayOptions {
        gateways,
        connections: 3,
        compression,
        chunk_size: 4096,
        key: key.clone(),
        container: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate();
    let (addr, g) = gateway(dir.path(), &key).await;
    for c in [Compression::Zstd(1), Compression::Lz4, Compression::None] {
        let store = RelayStore::connect(options(vec![addr.clone()], &key, c))
            .await
            .unwrap();
        skyhaul_store::conformance::run_all(&store, &format!("{c}/")).await;
        let s = store.summary();
        assert!(s.logical_bytes > 0 && s.wire_bytes > 0, "{s:?}");
        assert_eq!(s.requests_resent, 0, "{s:?}");
    }
    assert_eq!(g.rejected.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_bodies_cost_less_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate();
    let (addr, _g) = gateway(dir.path(), &key).await;
    let text = Bytes::from("a line of text that repeats, as logs do\n".repeat(20_000));
    let mut saved = Vec::new();
    for c in [Compression::Zstd(1), Compression::Lz4, Compression::None] {
        let store = RelayStore::connect(options(vec![addr.clone()], &key, c))
            .await
            .unwrap();
        let before = store.summary();
        let opts = PutOptions {
            size: text.len() as u64,
            ..Default::default()
        };
        store
            .put(&format!("{c}.txt"), Payload::new(text.clone()), &opts)
            .await
            .unwrap();
        let after = store.summary();
        let (logical, wire) = (
            after.logical_bytes - before.logical_bytes,
            after.wire_bytes - before.wire_bytes,
        );
        assert!(logical >= text.len() as u64);
        saved.push(1.0 - wire as f64 / logical as f64);
        assert_eq!(
            std::fs::read(dir.path().join(format!("{c}.txt"))).unwrap(),
            text
        );
    }
    assert!(saved[0] > 0.9 && saved[1] > 0.8, "{saved:?}");
    assert!(
        saved[2] < 0.0,
        "framing costs bytes without compression: {saved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_bucket_is_refused_with_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate();
    let (addr, g) = gateway(dir.path(), &key).await;
    let mut opts = options(vec![addr.clone()], &RelayKey::generate(), Compression::Lz4);
    let e = RelayStore::connect(opts.clone()).await.unwrap_err();
    assert!(e.message.contains("no gateway answered"), "{e}");
    assert!(g.rejected.load(Relaxed) >= 1);
    assert!(!e.message.contains(&key.to_hex()[..16]));
    opts.key = key;
    opts.container = "another-bucket".into();
    let e = RelayStore::connect(opts).await.unwrap_err();
    assert!(e.message.contains("not to bucket 'another-bucket'"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_gateway_is_failed_over() {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate();
    let (live, _g) = gateway(dir.path(), &key).await;
    // An address where nothing listens.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let store = RelayStore::connect(options(vec![dead, live], &key, Compression::Lz4))
        .await
        .unwrap();
    for i in 0..6 {
        let body = Bytes::from(vec![i as u8; 10_000]);
        let opts = PutOptions {
            size: body.len() as u64,
            ..Default::default()
        };
        store
            .put(&format!("k{i}"), Payload::new(body), &opts)
            .await
            .unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_comes_back_over_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate();
    let (addr, _g) = gateway(dir.path(), &key).await;
    // 6 MiB: six 1 MiB response chunks for 3 connections.
    let body: Vec<u8> = (0..6u32 << 18).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(dir.path().join("big.bin"), &body).unwrap();
    let store = RelayStore::connect(options(vec![addr], &key, Compression::None))
        .await
        .unwrap();
    let before = store.summary().wire_bytes_received_by_connection;
    let got = store.get("big.bin", None, None).await.unwrap();
    assert!(got.data == body, "the read differs");
    let after = store.summary().wire_bytes_received_by_connection;
    let per_conn: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(per_conn.len(), 3);
    // Each connection carried two of the six chunks (one carried the answer's JSON too).
    for n in &per_conn {
        assert!(
            *n >= 2 << 20,
            "a connection carried {n} bytes: {per_conn:?}"
        );
    }
}
