//! Tests of the testkit itself: every server kind really starts and the helpers work against it,
//! and the fault proxy forwards faithfully and injects each fault it claims to.
//!
//! One test binary (not one per topic) to keep link time down on 2 cores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::Client;
use base64::Engine;
use md5::{Digest, Md5};
use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};

const MIB: usize = 1024 * 1024;

/// Deterministic, non-repeating-looking test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn round_trip(kind: S3Kind) {
    let s = S3Server::start(kind);
    assert!(
        s.endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        s.endpoint
    );
    assert!(s.access_key.len() >= 3);
    s.create_bucket("bkt").await;

    let small = data(1000, 1);
    s.put("bkt", "dir/a.bin", &small).await;
    s.put("bkt", "dir/sub/b.bin", b"").await;
    s.put("bkt", "other.txt", b"hello").await;
    assert_eq!(s.get("bkt", "dir/a.bin").await.as_deref(), Some(&small[..]));
    assert_eq!(
        s.get("bkt", "dir/sub/b.bin").await.as_deref(),
        Some(&b""[..])
    );
    assert_eq!(s.get("bkt", "missing").await, None);

    let big = data(5 * MIB + 1234, 2);
    s.put_multipart("bkt", "dir/multi.bin", &big, 5 * MIB).await;
    assert_eq!(
        s.get("bkt", "dir/multi.bin").await.as_deref(),
        Some(&big[..])
    );

    assert_eq!(
        s.list("bkt", "dir/").await,
        vec![
            ("dir/a.bin".to_string(), 1000),
            ("dir/multi.bin".to_string(), big.len() as u64),
            ("dir/sub/b.bin".to_string(), 0),
        ]
    );
    assert_eq!(s.list("bkt", "").await.len(), 4);

    // More keys than one ListObjectsV2 page (max-keys 1000 on every server here is too slow to
    // fill; use a small page via the raw client to prove pagination instead).
    for i in 0..5 {
        s.put("bkt", &format!("page/{i}"), b"x").await;
    }
    let client = s.client().await;
    let page = client
        .list_objects_v2()
        .bucket("bkt")
        .prefix("page/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(page.contents().len(), 2, "{kind}: max-keys honoured");
    assert_eq!(s.list("bkt", "page/").await.len(), 5);

    assert!(s.list_multipart_uploads("bkt").await.is_empty());
    let pending = s.create_multipart_upload("bkt", "pending/x").await;
    assert_eq!(
        s.list_multipart_uploads("bkt").await,
        vec![("pending/x".to_string(), pending)]
    );

    let env = s.env_for("SRC");
    assert_eq!(
        env,
        vec![
            (
                "SKYHAUL_SRC_ACCESS_KEY_ID".to_string(),
                s.access_key.clone()
            ),
            (
                "SKYHAUL_SRC_SECRET_ACCESS_KEY".to_string(),
                s.secret_key.clone()
            ),
        ]
    );
}

#[tokio::test]
async fn s3s_fs_round_trip() {
    round_trip(S3Kind::S3sFs).await;
}

#[tokio::test]
async fn rclone_serve_round_trip() {
    round_trip(S3Kind::RcloneServe).await;
}

#[tokio::test]
async fn moto_round_trip() {
    round_trip(S3Kind::Moto).await;
}

#[tokio::test]
async fn wrong_credentials_are_rejected() {
    // Proves the servers really check credentials (so per-instance keys mean something).
    for kind in [S3Kind::S3sFs, S3Kind::RcloneServe] {
        let s = S3Server::start(kind);
        s.create_bucket("bkt").await;
        let bad = Client::from_conf(
            s.sdk_config()
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    "AKwrong", "SKwrong", None, None, "test",
                ))
                .build(),
        );
        let res = bad.list_objects_v2().bucket("bkt").send().await;
        assert!(res.is_err(), "{kind} accepted wrong credentials");
    }
}

#[test]
fn server_process_is_killed_on_drop() {
    let s = S3Server::start(S3Kind::S3sFs);
    let pid = s.pid();
    let endpoint = s.endpoint.clone();
    drop(s);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    let addr = endpoint.trim_start_matches("http://");
    assert!(
        TcpStream::connect(addr).is_err(),
        "{endpoint} still answers"
    );
}

/// A client for `server`'s credentials that talks to `endpoint` (the proxy), retries off so each
/// injected fault is seen exactly once.
fn client_via(server: &S3Server, endpoint: &str) -> Client {
    Client::from_conf(
        server
            .sdk_config()
            .endpoint_url(endpoint)
            .retry_config(RetryConfig::disabled())
            .build(),
    )
}

#[tokio::test]
async fn proxy_without_faults_round_trips() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let proxy = FaultProxy::start(&s.endpoint, Faults::default());
    let c = client_via(&s, &proxy.endpoint());

    let big = data(20 * MIB + 7, 3);
    c.put_object()
        .bucket("bkt")
        .key("big")
        .body(ByteStream::from(big.clone()))
        .send()
        .await
        .expect("put via proxy");
    for i in 0..20 {
        c.put_object()
            .bucket("bkt")
            .key(format!("small/{i}"))
            .body(ByteStream::from(data(100 + i, i as u64)))
            .send()
            .await
            .expect("small put via proxy");
    }
    let got = c
        .get_object()
        .bucket("bkt")
        .key("big")
        .send()
        .await
        .expect("get via proxy")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert!(got[..] == big[..], "big object differs through the proxy");
    assert_eq!(s.get("bkt", "big").await.unwrap(), big);
    let head = c
        .head_object()
        .bucket("bkt")
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(big.len() as i64));
    let ranged = c
        .get_object()
        .bucket("bkt")
        .key("big")
        .range("bytes=100-199")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&ranged[..], &big[100..200]);
    let listed = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("small/")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 20);

    let counts = proxy.injected();
    assert_eq!(counts.total(), 0);
    assert!(counts.requests >= 25, "{counts:?}");
}

#[tokio::test]
async fn proxy_flips_one_response_byte() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let original = data(3 * MIB, 4);
    s.put("bkt", "obj", &original).await;
    let proxy = FaultProxy::start(
        &s.endpoint,
        Faults {
            flip_response_body: 1.0,
            ..Faults::default()
        },
    );
    let c = client_via(&s, &proxy.endpoint());
    let got = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .expect("get via proxy")
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes();
    assert_eq!(got.len(), original.len());
    let diffs = got.iter().zip(&original).filter(|(a, b)| a != b).count();
    assert_eq!(diffs, 1, "exactly one byte flipped");
    assert_eq!(proxy.injected().flip_response_body, 1);
    assert_eq!(proxy.injected().total(), 1);
}

#[tokio::test]
async fn proxy_answers_slow_down_503() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    s.put("bkt", "obj", b"data").await;
    let proxy = FaultProxy::start(
        &s.endpoint,
        Faults {
            slow_down_503: 1.0,
            ..Faults::default()
        },
    );
    let c = client_via(&s, &proxy.endpoint());
    let err = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .expect_err("503 expected");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(err.code(), Some("SlowDown"));
    // A PUT with a body: the body is drained and the connection stays usable.
    let err = c
        .put_object()
        .bucket("bkt")
        .key("obj2")
        .body(ByteStream::from(data(MIB, 5)))
        .send()
        .await
        .expect_err("503 expected");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(proxy.injected().slow_down_503, 2);

    // Change faults at runtime; the max_faults budget (2 spent already) allows one more.
    proxy.set_faults(Faults {
        internal_error_500: 1.0,
        max_faults: Some(3),
        ..Faults::default()
    });
    let err = c
        .head_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    c.head_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .expect("budget spent, passes");
    assert_eq!(proxy.injected().internal_error_500, 1);
}

/// `access_key` aims faults at the requests signed with one key: another client of the
/// same proxy, signed with the server's key, passes; the denied one never reaches the
/// server (which does not know its key, and would have said so otherwise).
#[tokio::test]
async fn proxy_denies_only_one_access_key() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    s.put("bkt", "obj", b"data").await;
    let proxy = FaultProxy::start(
        &s.endpoint,
        Faults {
            access_denied_403: 1.0,
            access_key: Some("NOPERMISSION".into()),
            ..Faults::default()
        },
    );
    let other = Client::from_conf(
        client_via(&s, &proxy.endpoint())
            .config()
            .to_builder()
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "NOPERMISSION",
                "any-secret",
                None,
                None,
                "test",
            ))
            .build(),
    );
    let err = other
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .expect_err("403 expected");
    assert_eq!(err.code(), Some("AccessDenied"));
    let got = client_via(&s, &proxy.endpoint())
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .expect("the server's own key passes");
    assert_eq!(got.body.collect().await.unwrap().to_vec(), b"data");
    let counts = proxy.injected();
    assert_eq!((counts.requests, counts.access_denied_403), (2, 1));
}

/// `delay` holds the selected requests, and only them, before the server sees any of them:
/// while a PUT is held the object is not there, a request the filters leave out passes at
/// once, and the held PUT then arrives whole. A hold is no fault.
#[tokio::test]
async fn proxy_holds_selected_requests() {
    const HOLD: Duration = Duration::from_millis(1500);
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let proxy = FaultProxy::start(
        &s.endpoint,
        Faults {
            delay: Some(HOLD),
            only_methods: vec!["PUT".into()],
            path_contains: Some("slow".into()),
            ..Faults::default()
        },
    );
    let c = client_via(&s, &proxy.endpoint());
    let body = data(2 * MIB, 6);
    let started = Instant::now();
    let slow = tokio::spawn({
        let (c, body) = (c.clone(), body.clone());
        async move {
            c.put_object()
                .bucket("bkt")
                .key("slow")
                .body(ByteStream::from(body))
                .send()
                .await
                .expect("held put");
            started.elapsed()
        }
    });
    while proxy.injected().delayed == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    c.put_object()
        .bucket("bkt")
        .key("fast")
        .body(ByteStream::from(data(1000, 7)))
        .send()
        .await
        .expect("put not held");
    assert!(t.elapsed() < HOLD / 2, "{:?}", t.elapsed());
    assert_eq!(s.get("bkt", "slow").await, None, "the held PUT arrived");
    let took = slow.await.unwrap();
    assert!(took >= HOLD, "{took:?}");
    assert_eq!(s.get("bkt", "slow").await, Some(body));
    let counts = proxy.injected();
    assert_eq!((counts.delayed, counts.total()), (1, 0), "{counts:?}");
}

#[tokio::test]
async fn proxy_truncates_and_resets() {
    let s = S3Server::start(S3Kind::S3sFs);
    s.create_bucket("bkt").await;
    let original = data(2 * MIB, 6);
    s.put("bkt", "obj", &original).await;
    let proxy = FaultProxy::start(
        &s.endpoint,
        Faults {
            truncate_response_body: 1.0,
            ..Faults::default()
        },
    );
    let c = client_via(&s, &proxy.endpoint());
    let resp = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .expect("head arrives");
    assert_eq!(resp.content_length(), Some(original.len() as i64));
    assert!(
        resp.body.collect().await.is_err(),
        "truncated body must be an error"
    );
    assert_eq!(proxy.injected().truncate_response_body, 1);

    proxy.set_faults(Faults {
        reset_connection: 1.0,
        ..Faults::default()
    });
    let err = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.raw_response().is_none(),
        "no response on reset: {err:?}"
    );
    assert_eq!(proxy.injected().reset_connection, 1);
}

#[tokio::test]
async fn proxy_flips_request_body_and_servers_may_notice() {
    // Over plain HTTP the SDK signs the payload's SHA-256, so a server that checks it rejects a
    // corrupted upload; one that does not stores the corrupted bytes. Either way never silently
    // the original. Also tried: Content-MD5, and an SDK-computed CRC32 checksum. What each server
    // does is printed (run with --nocapture) because the copier's integrity design depends on it.
    for kind in S3Kind::ALL {
        let s = S3Server::start(kind);
        s.create_bucket("bkt").await;
        let proxy = FaultProxy::start(
            &s.endpoint,
            Faults {
                flip_request_body: 1.0,
                only_methods: vec!["PUT".into()],
                ..Faults::default()
            },
        );
        let original = data(MIB, 7);
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&original));
        for how in ["sha256-signed", "content-md5", "crc32"] {
            let mut conf = s
                .sdk_config()
                .endpoint_url(proxy.endpoint())
                .retry_config(RetryConfig::disabled());
            if how == "crc32" {
                conf = conf.request_checksum_calculation(RequestChecksumCalculation::WhenSupported);
            }
            let c = Client::from_conf(conf.build());
            let key = format!("obj-{how}");
            let mut put = c
                .put_object()
                .bucket("bkt")
                .key(&key)
                .body(ByteStream::from(original.clone()));
            match how {
                "content-md5" => put = put.content_md5(&md5),
                "crc32" => put = put.checksum_algorithm(ChecksumAlgorithm::Crc32),
                _ => {}
            }
            let before = proxy.injected().flip_request_body;
            let res = put.send().await;
            assert_eq!(
                proxy.injected().flip_request_body,
                before + 1,
                "{kind} {how}"
            );
            let stored = s.get("bkt", &key).await;
            match res {
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    eprintln!(
                        "{kind} {how}: corrupted upload rejected: {status:?} {:?}",
                        e.code()
                    );
                    assert_eq!(stored, None, "{kind} {how}");
                }
                Ok(_) => {
                    eprintln!("{kind} {how}: corrupted upload ACCEPTED");
                    let stored = stored.expect("stored");
                    assert_eq!(stored.len(), original.len());
                    assert_ne!(stored, original, "{kind} {how}");
                }
            }
        }
    }
}

/// Reads from `s` until `buf` ends with `end`.
fn read_through(s: &mut TcpStream, buf: &mut Vec<u8>, end: &[u8]) {
    let mut b = [0u8; 4096];
    while !buf.ends_with(end) {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(end));
        buf.extend_from_slice(&b[..n]);
    }
}

#[test]
fn proxy_forwards_chunked_messages_byte_for_byte() {
    // No S3 server takes an unsigned chunked PUT (and moto stores chunked bodies as empty), so
    // the upstream is a raw socket that records exactly what arrives. Two requests on one
    // keep-alive connection; chunked request and response bodies with extensions and trailers;
    // header names in mixed case (a proxy must not rewrite them: SigV4 signs headers).
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let body = data(200_000, 8);
    let mut chunked = Vec::new();
    for piece in body.chunks(70_000) {
        chunked.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Amz-Trailer-Sum: abc\r\n\r\n");
    let resp1 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mixed-Case: Yes\r\n\r\nok".to_vec();
    let mut resp2 =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    resp2.extend_from_slice(&chunked);

    let (r1, r2) = (resp1.clone(), resp2.clone());
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut got = Vec::new();
        read_through(&mut s, &mut got, b"X-Amz-Trailer-Sum: abc\r\n\r\n");
        s.write_all(&r1).unwrap();
        let mut second = Vec::new();
        read_through(&mut s, &mut second, b"\r\n\r\n");
        s.write_all(&r2).unwrap();
        got.extend_from_slice(&second);
        got
    });

    let proxy = FaultProxy::start(&format!("http://{up_addr}"), Faults::default());
    let mut req = b"PUT /bkt/chunked?x=1 HTTP/1.1\r\nHost: s3.example:9000\r\n\
        X-Amz-Date: 20250101T000000Z\r\ntransfer-encoding: chunked\r\n\r\n"
        .to_vec();
    req.extend_from_slice(&chunked);
    req.extend_from_slice(b"GET /bkt/chunked HTTP/1.1\r\nHost: s3.example:9000\r\n\r\n");
    let mut t = TcpStream::connect(proxy.addr()).unwrap();
    t.write_all(&req).unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).unwrap();

    let mut expected = resp1;
    expected.extend_from_slice(&resp2);
    assert!(got == expected, "client got what the upstream sent");
    assert!(
        server.join().unwrap() == req,
        "upstream got what the client sent"
    );
    assert_eq!(proxy.injected().requests, 2);

    // The same exchange with a flipped response byte: framing intact, one data byte differs.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let r2 = resp2.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut got = Vec::new();
        read_through(&mut s, &mut got, b"\r\n\r\n");
        s.write_all(&r2).unwrap();
    });
    let proxy = FaultProxy::start(
        &format!("http://{up_addr}"),
        Faults {
            flip_response_body: 1.0,
            ..Faults::default()
        },
    );
    let mut t = TcpStream::connect(proxy.addr()).unwrap();
    t.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).unwrap();
    server.join().unwrap();
    assert_eq!(got.len(), resp2.len());
    let diffs: Vec<usize> = (0..got.len()).filter(|&i| got[i] != resp2[i]).collect();
    assert_eq!(diffs.len(), 1);
    let head_len = resp2.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let first_data = head_len + "11170;ext=1\r\n".len();
    assert!(
        diffs[0] >= first_data && diffs[0] < first_data + 70_000,
        "flip in the first chunk's data, not in framing: {diffs:?}"
    );
    assert_eq!(proxy.injected().flip_response_body, 1);
}
