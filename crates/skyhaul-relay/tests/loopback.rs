//! A RelayStore talking to a real Gateway on loopback, in front of a real LocalStore: the
//! store conformance suite must pass through the relay exactly as it does directly.

use bytes::Bytes;
use skyhaul_relay::{Compression, Gateway, Lifetime, RelayKey, RelayOptions, RelayStore, TLS_ALPN};
use skyhaul_store::{LocalStore, Payload, PutOptions, Store};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

async fn gateway(root: &std::path::Path, key: &RelayKey) -> (String, Arc<Gateway>) {
    gateway_with(root, key, None).await
}

async fn gateway_with(
    root: &std::path::Path,
    key: &RelayKey,
    tls: Option<Arc<skyhaul_tls::ServerConfig>>,
) -> (String, Arc<Gateway>) {
    serve(Arc::new(LocalStore::new(root)), key, tls).await
}

async fn serve(
    store: Arc<dyn Store>,
    key: &RelayKey,
    tls: Option<Arc<skyhaul_tls::ServerConfig>>,
) -> (String, Arc<Gateway>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, store, key, tls)
}

fn serve_on(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    key: &RelayKey,
    tls: Option<Arc<skyhaul_tls::ServerConfig>>,
) -> (String, Arc<Gateway>) {
    let addr = listener.local_addr().unwrap().to_string();
    let g = Gateway::new(store, key.clone(), tls, Lifetime::default());
    tokio::spawn(g.clone().serve(listener));
    (addr, g)
}

/// A gateway with a certificate for 127.0.0.1, the client options that trust its CA, and
/// another CA's PEM file.
async fn tls_gateway(
    root: &std::path::Path,
    pki: &std::path::Path,
    key: &RelayKey,
) -> (String, Arc<Gateway>, RelayOptions, std::path::PathBuf) {
    let good = skyhaul_testkit::tls::files(pki, "good", &["127.0.0.1"]);
    let other = skyhaul_testkit::tls::files(pki, "other", &["127.0.0.1"]);
    let server = skyhaul_tls::server_config(&good.cert, &good.key, &[TLS_ALPN]).unwrap();
    let (addr, g) = gateway_with(root, key, Some(server)).await;
    let roots = skyhaul_tls::ca_certificates(&good.ca, "--relay-tls-ca").unwrap();
    let mut opts = options(vec![addr.clone()], key, Compression::Zstd(1));
    opts.tls = Some(skyhaul_tls::client_config(roots, &[TLS_ALPN]).unwrap());
    (addr, g, opts, other.ca)
}

fn options(gateways: Vec<String>, key: &RelayKey, compression: Compression) -> RelayOptions {
    RelayOptions {
        gateways,
        connections: 3,
        compression,
        chunk_size: 4096,
        key: key.clone(),
        container: String::new(),
        tls: None,
        tls_name: None,
        congestion: None,
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

/// In front of a bucket that encrypts with SSE-KMS, what the store says of its ETags (that
/// they are no MD5s) crosses the relay with every answer: the suite checks it of writes,
/// parts, reads and HEADs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_the_relay_to_an_sse_kms_bucket() {
    use skyhaul_testkit::{S3Kind, S3Server};
    let server = S3Server::start(S3Kind::MotoSseKms);
    server.create_bucket("kms").await;
    let s3 = skyhaul_s3::S3Store::connect(
        &skyhaul_s3::S3Options {
            endpoint: Some(server.endpoint.clone()),
            access_key_id: Some(server.access_key.clone()),
            secret_access_key: Some(server.secret_key.clone()),
            ..Default::default()
        },
        "kms",
    )
    .await
    .unwrap();
    let key = RelayKey::generate();
    let (addr, _g) = serve(Arc::new(s3), &key, None).await;
    let store = RelayStore::connect(options(vec![addr], &key, Compression::Zstd(1)))
        .await
        .unwrap();
    skyhaul_store::conformance::run_all(&store, "kms/").await;
    let written = store
        .put(
            "opaque",
            Payload::new(Bytes::from_static(b"x")),
            &PutOptions {
                size: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(written.opaque_etag, "{written:?}");
    assert!(store.head("opaque").await.unwrap().unwrap().opaque_etag);
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
    let t = std::time::Instant::now();
    let e = RelayStore::connect(opts.clone()).await.unwrap_err();
    assert_eq!(e.kind, skyhaul_store::ErrorKind::BadCredentials, "{e}");
    assert!(
        e.message.contains("holds another transfer key") && e.message.contains("SKYHAUL_RELAY_KEY"),
        "{e}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "retried");
    // Refused at the handshake: no frame reached the gateway.
    assert_eq!(g.rejected.load(Relaxed), 0);
    assert!(!e.message.contains(&key.to_hex()[..16]));
    opts.key = key;
    opts.container = "another-bucket".into();
    let e = RelayStore::connect(opts).await.unwrap_err();
    assert!(e.message.contains("not to bucket 'another-bucket'"), "{e}");
    // The sender's bucket is wrong, not the gateway's set-up.
    assert!(!e.message.contains("the gateway's destination"), "{e}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_a_tls_gateway() {
    let (dir, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = RelayKey::generate();
    let (_, g, opts, _) = tls_gateway(dir.path(), pki.path(), &key).await;
    let store = RelayStore::connect(opts).await.unwrap();
    skyhaul_store::conformance::run_all(&store, "tls/").await;
    assert_eq!(store.summary().requests_resent, 0);
    assert_eq!(g.rejected.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_gateway_certificate_fails_at_once() {
    let (dir, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = RelayKey::generate();
    let (_, g, good, other_ca) = tls_gateway(dir.path(), pki.path(), &key).await;
    let other = skyhaul_tls::ca_certificates(&other_ca, "--relay-tls-ca").unwrap();
    // Another CA, and the system's roots only: both refused at the first try.
    for roots in [other, Vec::new()] {
        let mut opts = good.clone();
        opts.tls = Some(skyhaul_tls::client_config(roots, &[TLS_ALPN]).unwrap());
        let t = std::time::Instant::now();
        let e = RelayStore::connect(opts).await.unwrap_err();
        assert_eq!(e.kind, skyhaul_store::ErrorKind::Unreachable, "{e}");
        assert!(
            e.message.contains("does not trust") && e.message.contains("--relay-tls-ca"),
            "{e}"
        );
        assert!(!e.message.contains(&key.to_hex()[..16]), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "retried");
    }
    // A client without TLS is turned away too (by the gateway), after its retries.
    let mut plain = good.clone();
    plain.tls = None;
    let e = RelayStore::connect(plain).await.unwrap_err();
    assert!(e.message.contains("no gateway answered"), "{e}");
    assert_eq!(g.requests.load(Relaxed), 0, "a request got through");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_does_not_hold_a_tls_gateway() {
    use tokio::io::AsyncReadExt;
    let (dir, pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = RelayKey::generate();
    let (addr, _g, opts, _) = tls_gateway(dir.path(), pki.path(), &key).await;
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Others are served meanwhile.
    let store = RelayStore::connect(opts).await.unwrap();
    let body = Bytes::from_static(b"served while another connection says nothing");
    let opts = PutOptions {
        size: body.len() as u64,
        ..Default::default()
    };
    store.put("k", Payload::new(body), &opts).await.unwrap();
    // And the silent one is closed once the handshake deadline passes.
    let t = std::time::Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), silent.read(&mut b))
        .await
        .expect("the gateway still holds the silent connection");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(t.elapsed() < skyhaul_tls::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(2));
}

/// A stand-in for a gateway of another relay protocol version: it answers every hello with
/// version 3 and counts the connections.
async fn gateway_of_version_3() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let mut theirs = [0u8; 32];
                if s.read_exact(&mut theirs).await.is_ok() {
                    let mut mine = [0u8; 32];
                    mine[..4].copy_from_slice(b"SKHR");
                    mine[4] = 3;
                    mine[5] = b'G';
                    let _ = s.write_all(&mine).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// A gateway of another relay protocol version: alone, the client says which versions
/// differ, at once and without retrying (no retry changes it), rather than that the
/// connection closed; beside a gateway of this version (an upgrade half done), it is left
/// out and the other carries the transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_of_another_version_is_named_at_once() {
    let (other, accepted) = gateway_of_version_3().await;
    let key = RelayKey::generate();
    let opts = options(vec![other.clone()], &key, Compression::Zstd(1));
    let t = std::time::Instant::now();
    let e = RelayStore::connect(opts.clone()).await.unwrap_err();
    assert_eq!(e.kind, skyhaul_store::ErrorKind::Unreachable, "{e}");
    assert!(
        e.message.contains("relay protocol version 3, this side 2")
            && e.message.contains("run the same skyhaul version"),
        "{e}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "retried");
    let tried = accepted.load(Relaxed);
    assert!(tried <= opts.connections, "{tried} connections: retried");

    let dir = tempfile::tempdir().unwrap();
    let (good, _) = gateway(dir.path(), &key).await;
    let store = RelayStore::connect(options(vec![other, good], &key, Compression::Zstd(1)))
        .await
        .unwrap();
    for i in 0..8 {
        let body = Bytes::from(vec![i as u8; 10_000]);
        let key = format!("k{i}");
        let put = PutOptions {
            size: body.len() as u64,
            ..Default::default()
        };
        store
            .put(&key, Payload::new(body.clone()), &put)
            .await
            .unwrap();
        assert_eq!(store.get(&key, None, None).await.unwrap().data, body);
    }
    let tried_again = accepted.load(Relaxed) - tried;
    assert!(
        tried_again <= opts.connections,
        "{tried_again} connections to the other version: it was not left out"
    );
}

/// Puts `n` small objects through `store`, all at once (as a transfer does), each read back.
async fn put_some(store: &RelayStore, n: usize) {
    let body = |i: usize| Bytes::from(vec![i as u8; 10_000]);
    let puts = (0..n).map(|i| async move {
        let put = PutOptions {
            size: 10_000,
            ..Default::default()
        };
        store
            .put(&format!("k{i}"), Payload::new(body(i)), &put)
            .await
    });
    for put in futures::future::join_all(puts).await {
        put.unwrap();
    }
    for i in 0..n {
        let got = store.get(&format!("k{i}"), None, None).await.unwrap();
        assert_eq!(got.data, body(i));
    }
}

/// A gateway started with another transfer key beside a good one (one of many set up by
/// hand) is left out at its first handshakes, which say why, and the good one carries the
/// transfer: it used to fail every try there, and then the transfer, as "no gateway
/// answered".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_another_key_is_left_out() {
    let (good_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = RelayKey::generate();
    let (good, _) = gateway(good_dir.path(), &key).await;
    let (other, _) = gateway(other_dir.path(), &RelayKey::generate()).await;
    let store = RelayStore::connect(options(vec![other, good], &key, Compression::Zstd(1)))
        .await
        .unwrap();
    put_some(&store, 8).await;
    assert_eq!(std::fs::read_dir(good_dir.path()).unwrap().count(), 8);
    assert_eq!(std::fs::read_dir(other_dir.path()).unwrap().count(), 0);
    // Left out when the transfer started: no request went its way.
    assert_eq!(
        store.summary().requests_resent,
        0,
        "a request went to the gateway with another key"
    );
}

/// Gateways must all write to one store. Those that answer when the transfer starts must
/// agree, else it stops before anything is written: which of them is set up right (another
/// endpoint, account or directory, but the transfer's key and bucket), this side cannot
/// tell. Two gateways in front of the same store share the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_that_write_to_different_stores_stop_the_transfer() {
    let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = RelayKey::generate();
    let (first, g1) = gateway(dir.path(), &key).await;
    let (wrong, g2) = gateway(elsewhere.path(), &key).await;
    let gateways = vec![first.clone(), wrong.clone()];
    let e = RelayStore::connect(options(gateways, &key, Compression::Lz4))
        .await
        .map(drop)
        .unwrap_err();
    assert!(
        e.message.contains("write to different stores")
            && e.message.contains(&first)
            && e.message.contains(&wrong),
        "{e}"
    );
    // Each was asked what it serves, and nothing else.
    assert_eq!(g1.requests.load(Relaxed), 1);
    assert_eq!(g2.requests.load(Relaxed), 1);

    let (same, g3) = gateway(dir.path(), &key).await;
    let store = RelayStore::connect(options(vec![first, same], &key, Compression::Lz4))
        .await
        .unwrap();
    put_some(&store, 8).await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 8);
    assert!(g1.requests.load(Relaxed) > 4, "the first gateway idled");
    assert!(
        g3.requests.load(Relaxed) > 4,
        "a gateway of the same store was left out"
    );
}

/// A gateway that was down when the transfer started, and comes up writing elsewhere, is
/// asked before it gets anything to write, and left out: its share of the objects would
/// have landed there. Requests that came while it was being asked do not ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_gateway_that_writes_elsewhere_is_left_out() {
    let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = RelayKey::generate();
    let (first, _) = gateway(dir.path(), &key).await;
    // Down at first: every connection is closed at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let late = listener.local_addr().unwrap().to_string();
    let (up, mut down) = tokio::sync::oneshot::channel::<()>();
    let refuser = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut down => return listener,
                _ = listener.accept() => {}
            }
        }
    });
    let store = RelayStore::connect(options(vec![first, late], &key, Compression::Lz4))
        .await
        .unwrap();
    up.send(()).unwrap();
    let listener = refuser.await.unwrap();
    let (_, g2) = serve_on(
        listener,
        Arc::new(LocalStore::new(elsewhere.path())),
        &key,
        None,
    );
    // A gateway that failed is not tried again for 5 s while another answers.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    put_some(&store, 8).await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 8);
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    // It was asked what it serves, once, and nothing else.
    assert_eq!(g2.requests.load(Relaxed), 1, "asked more than once");
}

/// Forwards connections to `to`; in the first one, the client's byte at offset `at` is
/// flipped on the way; the flag says it was.
async fn flipping_proxy(to: String, at: usize) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let flipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = flipped.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let flag = flag.clone();
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(&to).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut seen = 0;
                while let Ok(len @ 1..) = cr.read(&mut buf).await {
                    if n == 0 && (seen..seen + len).contains(&at) {
                        buf[at - seen] ^= 0x40;
                        flag.store(true, Relaxed);
                    }
                    seen += len;
                    if sw.write_all(&buf[..len]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
        }
    });
    (addr, flipped)
}

/// A byte flipped in a handshake makes the key proofs differ, as another key does: one
/// such handshake is tried again, and the gateway serves the transfer. It used to be left
/// out for good (alone: the transfer failed with "holds another transfer key").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flipped_on_the_way_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = RelayKey::generate();
    let (addr, _) = gateway(dir.path(), &key).await;
    // A byte of the first client hello's random part.
    let (proxy, flipped) = flipping_proxy(addr, 20).await;
    let store = RelayStore::connect(options(vec![proxy], &key, Compression::Lz4))
        .await
        .unwrap();
    put_some(&store, 4).await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    assert!(
        flipped.load(Relaxed),
        "no byte was flipped: the test proves nothing"
    );
}
