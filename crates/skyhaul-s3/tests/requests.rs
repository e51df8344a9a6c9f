//! What the S3 backend's requests ask of the store, seen on the wire by the fault proxy:
//! bodies the server checks by `Content-MD5` are not hashed again for the signature, and
//! whole reads ask for the object's stored checksums.

use bytes::Bytes;
use md5::{Digest, Md5};
use skyhaul_s3::{S3Options, S3Store};
use skyhaul_store::{PartSpec, Payload, PutOptions, Store};
use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};

fn watching(header: &str, value: Option<&str>) -> Faults {
    Faults {
        watch_header: Some(header.into()),
        watch_value: value.map(String::from),
        ..Default::default()
    }
}

/// How many requests `step` sends, and how many of them carry the watched header.
async fn count<F: std::future::Future<Output = ()>>(proxy: &FaultProxy, step: F) -> (u64, u64) {
    let before = proxy.injected();
    step.await;
    let after = proxy.injected();
    (
        after.requests - before.requests,
        after.watched - before.watched,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_bodies_go_unhashed_and_whole_reads_ask_for_checksums() {
    let server = S3Server::start(S3Kind::S3sFs);
    server.create_bucket("wire").await;
    let proxy = FaultProxy::start(
        &server.endpoint,
        watching("x-amz-content-sha256", Some("UNSIGNED-PAYLOAD")),
    );
    let store = S3Store::connect(
        &S3Options {
            endpoint: Some(proxy.endpoint()),
            access_key_id: Some(server.access_key.clone()),
            secret_access_key: Some(server.secret_key.clone()),
            ..Default::default()
        },
        "wire",
    )
    .await
    .unwrap();
    let data = Bytes::from_static(b"checked by the server, not by the signature");
    let md5: [u8; 16] = Md5::digest(&data).into();
    let with_md5 = || Payload {
        data: data.clone(),
        md5: Some(md5),
    };
    let opts = PutOptions {
        size: data.len() as u64,
        ..Default::default()
    };

    let put = |key: &'static str, body: Payload| {
        let (store, opts) = (&store, &opts);
        async move {
            store.put(key, body, opts).await.unwrap();
        }
    };
    assert_eq!(count(&proxy, put("md5", with_md5())).await, (1, 1));
    // Without an MD5, the signature's SHA-256 is the only check of the body on the way.
    assert_eq!(
        count(&proxy, put("plain", Payload::new(data.clone()))).await,
        (1, 0)
    );
    // A streamed body goes unsigned whatever its MD5 (the SDK cannot hash what it does not
    // hold); pinned here so that a change of the SDK's shows.
    let streamed = async {
        let body = futures::stream::iter([Ok(data.clone())]);
        store
            .put_stream("streamed", Box::pin(body), Some(md5), &opts)
            .await
            .unwrap();
    };
    assert_eq!(count(&proxy, streamed).await, (1, 1));
    let parts = async {
        let upload = store.create_multipart("parts", &opts).await.unwrap();
        let spec = |number| PartSpec {
            number,
            offset: 0,
            len: data.len() as u64,
        };
        store.put_part(&upload, spec(1), with_md5()).await.unwrap();
        let (requests, unhashed) = count(&proxy, async {
            store
                .put_part(&upload, spec(2), Payload::new(data.clone()))
                .await
                .unwrap();
        })
        .await;
        assert_eq!((requests, unhashed), (1, 0), "a part without an MD5");
        store.abort_multipart(&upload).await.unwrap();
    };
    // Create, two parts, abort: only the part with an MD5 goes unhashed.
    assert_eq!(count(&proxy, parts).await, (4, 1));

    proxy.set_faults(watching("x-amz-checksum-mode", Some("ENABLED")));
    for key in ["md5", "plain", "streamed"] {
        let whole = async {
            let got = store.get(key, None, None).await.unwrap();
            assert_eq!(got.data, data, "{key}");
        };
        assert_eq!(count(&proxy, whole).await, (1, 1), "{key}");
        let ranged = async {
            let got = store.get(key, Some(0..5), None).await.unwrap();
            assert_eq!(got.data, data.slice(0..5), "{key}");
        };
        assert_eq!(count(&proxy, ranged).await, (1, 0), "{key}");
    }
    let streamed = async {
        use futures::TryStreamExt;
        let got = store.get_stream("md5", None).await.unwrap();
        let bytes: Vec<Bytes> = got.body.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), data);
    };
    assert_eq!(count(&proxy, streamed).await, (1, 1));
    assert_eq!(proxy.injected().watched_signed, proxy.injected().watched);
}
