//! One behavioural suite that every [`Store`] backend must pass (the model is rclone's
//! `fstests`). Each backend's tests call [`run_all`] with a store on a real server, so a
//! backend that lists out of order, mishandles odd keys or exposes partial uploads fails
//! here rather than in a user's transfer.
//!
//! Every check works under its own key prefix, so one store can host the whole suite.

use crate::{
    Chunks, ContentHeaders, Entry, Error, ErrorKind, ObjectMeta, PartSpec, Payload, PutOptions,
    Store,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;

/// A known fault of a server the suite runs against, whose check is then left out. Each
/// names the server's behaviour, not skyhaul's: skyhaul's side passes elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The server resolves `.` and `..` in keys (s3s-fs maps keys onto file paths), so a
    /// key `a/../b` it is sent verbatim overwrites `b`.
    ResolvesDotSegments,
}

/// Runs every check against `store` under `prefix` (which should be empty beforehand).
pub async fn run_all(store: &dyn Store, prefix: &str) {
    run_all_but(store, prefix, &[]).await;
}

/// [`run_all`] without the checks of the server's known `gaps`.
pub async fn run_all_but(store: &dyn Store, prefix: &str, gaps: &[Gap]) {
    put_get_head(store, &format!("{prefix}basic/")).await;
    ranged_get(store, &format!("{prefix}range/")).await;
    zero_byte(store, &format!("{prefix}zero/")).await;
    odd_keys(store, &format!("{prefix}odd/")).await;
    if !gaps.contains(&Gap::ResolvesDotSegments) {
        dot_segments_never_land_elsewhere(store, &format!("{prefix}dots/")).await;
    }
    backslashes_never_land_elsewhere(store, &format!("{prefix}backslash/")).await;
    listing_order_and_bounds(store, &format!("{prefix}list/")).await;
    listing_by_level(store, &format!("{prefix}level/")).await;
    directory_markers_are_not_listed(store, &format!("{prefix}markers/")).await;
    multipart_out_of_order(store, &format!("{prefix}mp/")).await;
    multipart_abort_leaves_nothing(store, &format!("{prefix}abort/")).await;
    missing_objects(store, &format!("{prefix}missing/")).await;
    changed_source_detected(store, &format!("{prefix}changed/")).await;
    delete(store, &format!("{prefix}delete/")).await;
    user_metadata(store, &format!("{prefix}meta/")).await;
    streamed(store, &format!("{prefix}stream/")).await;
    etags_say_what_they_are(store, &format!("{prefix}etag/")).await;
    content_headers(store, &format!("{prefix}headers/")).await;
    gzip_encoded_objects_read_as_stored(store, &format!("{prefix}gzip/")).await;
    if store.copy_domain().is_some() {
        run_server_side_copy(store, store, &format!("{prefix}copy/")).await;
    }
}

/// Server-side copy from `src` to `dst`, which share a copy domain (two buckets of one
/// account, or one bucket twice): contents arrive whole, odd keys included, and a copy of a
/// listed version that has since changed fails with [`ErrorKind::SourceChanged`] instead of
/// copying the new content under the old listing.
pub async fn run_server_side_copy(src: &dyn Store, dst: &dyn Store, p: &str) {
    assert_eq!(
        src.copy_domain(),
        dst.copy_domain(),
        "{} and {} must share a copy domain",
        src.name(),
        dst.name()
    );
    let objects = [
        (format!("{p}src/one.bin"), pattern(70_000, 11)),
        (format!("{p}src/sp ace+ü%.bin"), pattern(10, 12)),
        (format!("{p}src/empty"), Vec::new()),
    ];
    for (key, data) in &objects {
        src.put(
            key,
            Payload::new(Bytes::from(data.clone())),
            &opts(data.len()),
        )
        .await
        .unwrap();
        let meta = src.head(key).await.unwrap().expect("put object is there");
        let dst_key = key.replace("/src/", "/dst/");
        dst.copy_object(src.container(), &meta, &dst_key, &opts(data.len()))
            .await
            .unwrap_or_else(|e| panic!("{}: server-side copy of '{key}': {e}", dst.name()));
        let got = dst.get(&dst_key, None, None).await.unwrap().data;
        assert!(
            got.as_ref() == &data[..],
            "{}: server-side copy of '{key}' reads back",
            dst.name()
        );
    }
    let key = &objects[0].0;
    let listed = src.head(key).await.unwrap().unwrap();
    src.put(key, Payload::new(Bytes::from(pattern(500, 13))), &opts(500))
        .await
        .unwrap();
    let err = dst
        .copy_object(src.container(), &listed, &format!("{p}dst/stale"), &opts(0))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::SourceChanged,
        "{}: copying a changed source: {err}",
        dst.name()
    );
}

/// User metadata written with an object comes back from `head`: the engine stores each
/// copy's CRC64 there and verifies against it. Stores without content-checksum ETags (file
/// systems) keep none and are verified by re-reading instead.
async fn user_metadata(store: &dyn Store, p: &str) {
    let key = format!("{p}with-meta");
    let mut put = opts(4);
    put.metadata
        .insert("skyhaul-crc64nvme".into(), "0123456789abcdef".into());
    put.metadata.insert("plain".into(), "value".into());
    store
        .put(&key, Payload::new(Bytes::from_static(b"meta")), &put)
        .await
        .unwrap();
    let got = store.head(&key).await.unwrap().unwrap().metadata;
    if store.etags_are_md5() {
        assert_eq!(
            got,
            put.metadata,
            "{}: user metadata round-trips",
            store.name()
        );
    } else {
        assert!(got.is_empty(), "{}: no metadata invented", store.name());
    }
}

/// A store that keeps content headers and user metadata gives them back from a HEAD, a
/// read and a streamed read, for objects written whole, streamed and in parts: a copy
/// takes them from those and gives them to its write.
async fn content_headers(store: &dyn Store, p: &str) {
    if !store.keeps_headers() {
        return;
    }
    let name = store.name();
    let headers = ContentHeaders {
        content_type: Some("text/html; charset=utf-8".into()),
        content_encoding: Some("br".into()),
        content_disposition: Some("attachment; filename=\"report.html\"".into()),
        content_language: Some("en".into()),
        cache_control: Some("max-age=3600".into()),
    };
    // What a read must give: these, with Cache-Control or without.
    let served = |got: &ContentHeaders| ContentHeaders {
        cache_control: got
            .cache_control
            .as_ref()
            .and(headers.cache_control.clone()),
        ..headers.clone()
    };
    let mut put = opts(0);
    put.headers = headers.clone();
    put.metadata.insert("Owner".into(), "ml-team".into());
    // Names as the store gives them: lowercased where they travel as HTTP headers (S3,
    // Azure), with their case where a JSON record holds them (a GCS HEAD).
    let owner = |m: &BTreeMap<String, String>| {
        m.iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("owner"))
            .map(|(_, value)| value.clone())
    };
    let data = pattern(3000, 41);
    let part_len = store.limits().min_part_size.max(1) as usize;
    let big = pattern(part_len + 5, 42);
    let (whole, streamed, parts) = (
        format!("{p}whole"),
        format!("{p}streamed"),
        format!("{p}parts"),
    );
    put.size = data.len() as u64;
    store
        .put(&whole, Payload::new(Bytes::from(data.clone())), &put)
        .await
        .unwrap();
    store
        .put_stream(&streamed, chunks(&data, 1000, None), md5(&data), &put)
        .await
        .unwrap();
    put.size = big.len() as u64;
    let upload = store.create_multipart(&parts, &put).await.unwrap();
    let mut done = Vec::new();
    for (number, range) in [(1, 0..part_len), (2, part_len..big.len())] {
        let spec = PartSpec {
            number,
            offset: range.start as u64,
            len: range.len() as u64,
        };
        let body = Payload::new(Bytes::copy_from_slice(&big[range]));
        done.push(store.put_part(&upload, spec, body).await.unwrap());
    }
    store
        .complete_multipart(&upload, &done, &put)
        .await
        .unwrap();
    for key in [&whole, &streamed, &parts] {
        let head = store.head(key).await.unwrap().unwrap();
        assert_eq!(
            head.headers.as_deref(),
            Some(&headers),
            "{name}: {key}: a HEAD gives the content headers written"
        );
        assert_eq!(
            owner(&head.metadata).as_deref(),
            Some("ml-team"),
            "{name}: {key}"
        );
        // Reads as the engine makes them: the whole range, with the listed version.
        let read = store
            .get(key, Some(0..head.size), Some(&head))
            .await
            .unwrap();
        assert_eq!(
            read.headers,
            served(&read.headers),
            "{name}: {key}: a read gives them (Cache-Control it may leave out: GCS serves \
             its own default there)"
        );
        assert_eq!(
            read.metadata, head.metadata,
            "{name}: {key}: a read gives the metadata, named as a HEAD names it"
        );
        let stream = store.get_stream(key, Some(&head)).await.unwrap();
        assert_eq!(
            (served(&stream.headers), &stream.metadata),
            (stream.headers.clone(), &head.metadata),
            "{name}: {key}: a streamed read gives them"
        );
    }
}

/// "skyhaul stored these bytes gzipped", gzipped.
const GZIPPED: [u8; 54] = [
    31, 139, 8, 0, 0, 0, 0, 0, 2, 255, 43, 206, 174, 204, 72, 44, 205, 81, 40, 46, 201, 47, 74, 77,
    81, 40, 201, 72, 45, 78, 85, 72, 170, 44, 73, 45, 86, 72, 175, 202, 44, 40, 72, 77, 1, 0, 70,
    105, 42, 120, 34, 0, 0, 0,
];

/// An object stored with `Content-Encoding: gzip` reads back as the bytes stored, whole or
/// in part: GCS unzips such objects as it serves them unless asked not to, and a copy
/// must move what is stored (its checksums are of those bytes).
async fn gzip_encoded_objects_read_as_stored(store: &dyn Store, p: &str) {
    if !store.keeps_headers() {
        return;
    }
    let key = format!("{p}log.gz");
    let mut put = opts(GZIPPED.len());
    put.headers.content_encoding = Some("gzip".into());
    store
        .put(&key, Payload::new(Bytes::from_static(&GZIPPED)), &put)
        .await
        .unwrap();
    let head = store.head(&key).await.unwrap().unwrap();
    assert_eq!(
        head.size,
        GZIPPED.len() as u64,
        "{}: the stored size",
        store.name()
    );
    let whole = store
        .get(&key, Some(0..head.size), Some(&head))
        .await
        .unwrap();
    assert_eq!(
        whole.data.as_ref(),
        &GZIPPED[..],
        "{}: read as stored",
        store.name()
    );
    let part = store.get(&key, Some(10..20), Some(&head)).await.unwrap();
    assert_eq!(
        part.data.as_ref(),
        &GZIPPED[10..20],
        "{}: a range of the stored bytes",
        store.name()
    );
}

/// Where ETags are content MD5s, the store says of every ETag it reports whether it is one
/// (an S3 bucket that encrypts with SSE-KMS gives ETags that only look like MD5s), and says
/// the same of one object whichever way it is asked: the engine checks bytes against every
/// ETag not called opaque, so an unflagged opaque ETag fails copies, and a wrongly flagged
/// one loses a check.
async fn etags_say_what_they_are(store: &dyn Store, p: &str) {
    if !store.etags_are_md5() {
        return;
    }
    let name = store.name();
    let data = pattern(5000, 31);
    let want = md5(&data).map(hex::encode);
    let key = format!("{p}one.bin");
    let put = put_bytes(store, &key, &data).await;
    let streamed_key = format!("{p}streamed.bin");
    let streamed = store
        .put_stream(
            &streamed_key,
            chunks(&data, 1000, None),
            md5(&data),
            &opts(data.len()),
        )
        .await
        .unwrap();
    for (key, written) in [(&key, &put), (&streamed_key, &streamed)] {
        if let Some(stored) = written.content_md5() {
            assert_eq!(
                Some(stored.to_ascii_lowercase()),
                want,
                "{name}: {key}: an ETag in the form of an MD5, not called opaque, is the content's"
            );
        }
        let head = store.head(key).await.unwrap().unwrap();
        let got = store.get(key, None, None).await.unwrap();
        let part = store.get(key, Some(10..20), None).await.unwrap();
        let stream = store.get_stream(key, None).await.unwrap();
        assert_eq!(
            (
                head.opaque_etag,
                got.opaque_etag,
                part.opaque_etag,
                stream.opaque_etag
            ),
            (written.opaque_etag, written.opaque_etag, written.opaque_etag, written.opaque_etag),
            "{name}: {key}: head, get, ranged get and streamed get say what the write said of the ETag"
        );
        assert_eq!(
            head.etag, written.etag,
            "{name}: {key}: the ETag written is the one headed"
        );
        assert_eq!(
            got.etag, written.etag,
            "{name}: {key}: the ETag written is the one read"
        );
    }
    let part_len = store.limits().min_part_size.max(1) as usize;
    let big = pattern(part_len + 10, 32);
    let big_key = format!("{p}parts.bin");
    let upload = store
        .create_multipart(&big_key, &opts(big.len()))
        .await
        .unwrap();
    let mut parts = Vec::new();
    for (number, range) in [(1, 0..part_len), (2, part_len..big.len())] {
        let spec = PartSpec {
            number,
            offset: range.start as u64,
            len: range.len() as u64,
        };
        let body = Payload {
            data: Bytes::copy_from_slice(&big[range.clone()]),
            md5: md5(&big[range.clone()]),
        };
        let done = store.put_part(&upload, spec, body).await.unwrap();
        if let Some(stored) = done.content_md5() {
            assert_eq!(
                Some(stored.to_ascii_lowercase()),
                md5(&big[range]).map(hex::encode),
                "{name}: a part's ETag in the form of an MD5, not called opaque, is the part's"
            );
        }
        assert_eq!(
            done.opaque_etag, put.opaque_etag,
            "{name}: parts' ETags are opaque where objects' are"
        );
        parts.push(done);
    }
    let completed = store
        .complete_multipart(&upload, &parts, &opts(big.len()))
        .await
        .unwrap();
    let head = store.head(&big_key).await.unwrap().unwrap();
    assert_eq!(
        (completed.opaque_etag, head.opaque_etag),
        (put.opaque_etag, put.opaque_etag),
        "{name}: a completed upload's ETag is opaque where objects' are, as written and headed"
    );
}

/// Deterministic, non-repeating test bytes, so a misplaced range shows up as a mismatch.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
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

/// Writes `data` whole under `key`, which must succeed.
async fn put_bytes(store: &dyn Store, key: &str, data: &[u8]) -> crate::Written {
    store
        .put(
            key,
            Payload::new(Bytes::copy_from_slice(data)),
            &opts(data.len()),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: put {key}: {e}", store.name()))
}

fn opts(size: usize) -> PutOptions {
    PutOptions {
        size: size as u64,
        ..Default::default()
    }
}

async fn list_keys(store: &dyn Store, prefix: &str, start_after: Option<&str>) -> Vec<ObjectMeta> {
    store
        .list(prefix, start_after)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{}: list '{prefix}' failed: {e}", store.name()))
}

async fn put_get_head(store: &dyn Store, p: &str) {
    let key = format!("{p}object.bin");
    let data = pattern(100_000, 1);
    put_bytes(store, &key, &data).await;
    let fetched = store.get(&key, None, None).await.unwrap();
    if let (Some(listed), Some(read)) = (
        &store.head(&key).await.unwrap().and_then(|m| m.etag),
        &fetched.etag,
    ) {
        assert_eq!(
            listed,
            read,
            "{}: a read reports the object's ETag",
            store.name()
        );
    }
    let got = fetched.data;
    assert_eq!(
        got.as_ref(),
        &data[..],
        "{}: get returns what put wrote",
        store.name()
    );
    let meta = store
        .head(&key)
        .await
        .unwrap()
        .expect("head finds the object");
    assert_eq!(
        (meta.key.as_str(), meta.size),
        (key.as_str(), data.len() as u64)
    );
    assert!(
        meta.mtime.is_some(),
        "{}: head reports a modification time",
        store.name()
    );
    // Overwrite replaces the whole object, including a shorter one.
    store
        .put(&key, Payload::new(Bytes::from_static(b"short")), &opts(5))
        .await
        .unwrap();
    assert_eq!(
        store.get(&key, None, None).await.unwrap().data.as_ref(),
        b"short"
    );
}

async fn ranged_get(store: &dyn Store, p: &str) {
    let key = format!("{p}r.bin");
    let data = pattern(300_001, 2);
    put_bytes(store, &key, &data).await;
    for r in [0..1, 0..65_536, 65_536..200_000, 299_000..300_001] {
        let got = store.get(&key, Some(r.clone()), None).await.unwrap().data;
        assert_eq!(
            got.as_ref(),
            &data[r.start as usize..r.end as usize],
            "{}: range {r:?}",
            store.name()
        );
    }
}

async fn zero_byte(store: &dyn Store, p: &str) {
    let key = format!("{p}empty");
    store
        .put(&key, Payload::new(Bytes::new()), &opts(0))
        .await
        .unwrap();
    assert_eq!(store.head(&key).await.unwrap().map(|m| m.size), Some(0));
    assert!(store.get(&key, None, None).await.unwrap().data.is_empty());
    let listed = list_keys(store, p, None).await;
    assert_eq!(
        listed.len(),
        1,
        "{}: zero-byte objects are listed",
        store.name()
    );
}

/// A key with `.` or `..` segments is stored under exactly that name or refused, whole or
/// in parts; it never lands on another name. (URL parsing resolves such segments, so a
/// client that puts the key in a URL path would write `p/in/a/../../outside` to `p/outside`.)
async fn dot_segments_never_land_elsewhere(store: &dyn Store, p: &str) {
    let outside = format!("{p}outside");
    for key in [format!("{p}in/a/../../outside"), format!("{p}in/./outside")] {
        never_lands_elsewhere(store, &key, &outside).await;
    }
}

/// The same for a key with a backslash, which Azure stores as `/`: `in\outside` would be
/// `in/outside`.
async fn backslashes_never_land_elsewhere(store: &dyn Store, p: &str) {
    never_lands_elsewhere(store, &format!("{p}in\\outside"), &format!("{p}in/outside")).await;
}

/// Writes `key` whole and in parts: each is stored under exactly that name or refused,
/// and `elsewhere`, the name a store could take it for, keeps its bytes.
async fn never_lands_elsewhere(store: &dyn Store, key: &str, elsewhere: &str) {
    store
        .put(
            elsewhere,
            Payload::new(Bytes::from_static(b"keep")),
            &opts(4),
        )
        .await
        .unwrap();
    let body = || Payload::new(Bytes::from_static(b"other"));
    let whole = store.put(key, body(), &opts(5)).await.map(|_| ());
    let striped = async {
        let upload = store.create_multipart(key, &opts(5)).await?;
        let spec = PartSpec {
            number: 1,
            offset: 0,
            len: 5,
        };
        let part = store.put_part(&upload, spec, body()).await?;
        store.complete_multipart(&upload, &[part], &opts(5)).await?;
        Ok::<_, Error>(())
    }
    .await;
    if whole.is_ok() || striped.is_ok() {
        let got = store.get(key, None, None).await.unwrap().data;
        assert_eq!(got.as_ref(), b"other", "{}: '{key}' verbatim", store.name());
    }
    let kept = store.get(elsewhere, None, None).await.unwrap().data;
    assert_eq!(
        kept.as_ref(),
        b"keep",
        "{}: writing '{key}' must not replace '{elsewhere}'",
        store.name()
    );
}

async fn odd_keys(store: &dyn Store, p: &str) {
    let names = [
        "sp ace",
        "plus+sign",
        "per%25cent",
        "ünïcödé",
        "emoji🚀",
        "q?uery&amp=1",
        "tilde~",
    ];
    for (i, n) in names.iter().enumerate() {
        let key = format!("{p}{n}");
        store
            .put(
                &key,
                Payload::new(Bytes::from(vec![i as u8; i + 1])),
                &opts(i + 1),
            )
            .await
            .unwrap();
    }
    let listed = list_keys(store, p, None).await;
    let mut want: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
    want.sort();
    let got: Vec<String> = listed.iter().map(|m| m.key.clone()).collect();
    assert_eq!(got, want, "{}: odd keys list back verbatim", store.name());
    for (i, n) in names.iter().enumerate() {
        let got = store
            .get(&format!("{p}{n}"), None, None)
            .await
            .unwrap()
            .data;
        assert_eq!(
            got.as_ref(),
            &vec![i as u8; i + 1][..],
            "{}: odd key '{n}' reads back",
            store.name()
        );
    }
}

async fn listing_order_and_bounds(store: &dyn Store, p: &str) {
    // '.' (0x2E) < '/' (0x2F) < '0' (0x30): a tree walk must still list in byte order.
    // (A key "a" beside "a/b/c" is left out: file-backed stores cannot hold both, and
    // rclone serve s3 even replaces the directory with the file.)
    let keys = ["a.txt", "a/b/c", "a0", "b/x", "ba"];
    for k in keys {
        store
            .put(
                &format!("{p}{k}"),
                Payload::new(Bytes::from_static(b"x")),
                &opts(1),
            )
            .await
            .unwrap();
    }
    let all: Vec<String> = list_keys(store, p, None)
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    let want: Vec<String> = keys.iter().map(|k| format!("{p}{k}")).collect();
    assert_eq!(
        all,
        want,
        "{}: listing is complete and in ascending byte order",
        store.name()
    );

    let sub: Vec<String> = list_keys(store, &format!("{p}a/"), None)
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        sub,
        vec![format!("{p}a/b/c")],
        "{}: prefix listing",
        store.name()
    );
    let partial: Vec<String> = list_keys(store, &format!("{p}b"), None)
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        partial,
        vec![format!("{p}b/x"), format!("{p}ba")],
        "{}: prefix that is not a directory",
        store.name()
    );
    let after: Vec<String> = list_keys(store, p, Some(&format!("{p}a0")))
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        after,
        vec![format!("{p}b/x"), format!("{p}ba")],
        "{}: start_after",
        store.name()
    );
    assert!(list_keys(store, &format!("{p}nothing-here/"), None)
        .await
        .is_empty());
}

/// A key ending in `/` (a console's "folder") is no object to any listing, whether or not
/// the store can hold one: a file system cannot, and a marker listed on one side only would
/// count as missing or extra on every run.
async fn directory_markers_are_not_listed(store: &dyn Store, p: &str) {
    let file = format!("{p}dir/f");
    store
        .put(&file, Payload::new(Bytes::from_static(b"f")), &opts(1))
        .await
        .unwrap();
    let marker = format!("{p}dir/");
    if store
        .put(&marker, Payload::new(Bytes::new()), &opts(0))
        .await
        .is_err()
    {
        return;
    }
    let keys: Vec<String> = list_keys(store, p, None)
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, std::slice::from_ref(&file), "{}: list", store.name());
    if store.lists_by_level() {
        let entries: Vec<Entry> = store
            .list_level(&format!("{p}dir/"), None)
            .try_collect()
            .await
            .unwrap();
        let keys: Vec<&str> = entries.iter().map(Entry::key).collect();
        assert_eq!(keys, [file.as_str()], "{}: list by level", store.name());
    }
}

/// Stores that list by level must roll up exactly what a flat listing would show below
/// each sub-prefix, in the same byte order, and resume after an entry.
async fn listing_by_level(store: &dyn Store, p: &str) {
    if !store.lists_by_level() {
        return;
    }
    let keys = [
        "a-b",
        "a.txt",
        "a/b/c",
        "a/d",
        "a0",
        "b/x",
        "ba",
        "sp ace/é+%",
    ];
    for k in keys {
        let key = format!("{p}{k}");
        store
            .put(&key, Payload::new(Bytes::from_static(b"x")), &opts(1))
            .await
            .unwrap();
    }
    let level = |prefix: String, after: Option<String>| async move {
        let mut s = store.list_level(&prefix, after.as_deref());
        let mut out = Vec::new();
        while let Some(e) = s.next().await {
            out.push(match e.unwrap() {
                Entry::Object(m) => m.key,
                Entry::Prefix(d) => format!("{d} (prefix)"),
            });
        }
        out
    };
    let want: Vec<String> = ["a-b", "a.txt", "a/ (prefix)", "a0", "b/ (prefix)", "ba"]
        .iter()
        .map(|k| format!("{p}{k}"))
        .chain([format!("{p}sp ace/ (prefix)")])
        .collect();
    assert_eq!(level(p.to_string(), None).await, want, "{}", store.name());
    assert_eq!(
        level(format!("{p}a/"), None).await,
        [format!("{p}a/b/ (prefix)"), format!("{p}a/d")],
        "{}",
        store.name()
    );
    // Resuming after an object. (After a prefix, servers differ on whether the prefix
    // comes again; the engine skips what it has seen.)
    assert_eq!(
        level(p.to_string(), Some(format!("{p}a.txt"))).await,
        want[2..].to_vec(),
        "{}",
        store.name()
    );
}

async fn multipart_out_of_order(store: &dyn Store, p: &str) {
    let key = format!("{p}big.bin");
    let part = store.limits().min_part_size.max(1 << 20) as usize;
    let data = pattern(part * 2 + 1234, 3);
    let upload = store
        .create_multipart(&key, &opts(data.len()))
        .await
        .unwrap();
    let specs = [
        PartSpec {
            number: 3,
            offset: 2 * part as u64,
            len: 1234,
        },
        PartSpec {
            number: 1,
            offset: 0,
            len: part as u64,
        },
        PartSpec {
            number: 2,
            offset: part as u64,
            len: part as u64,
        },
    ];
    let mut done = Vec::new();
    for s in specs {
        let body = Bytes::copy_from_slice(&data[s.offset as usize..(s.offset + s.len) as usize]);
        done.push(
            store
                .put_part(&upload, s, Payload::new(body))
                .await
                .unwrap(),
        );
    }
    assert!(
        store.head(&key).await.unwrap().is_none(),
        "{}: nothing visible before complete",
        store.name()
    );
    done.sort_by_key(|c| c.number);
    store
        .complete_multipart(&upload, &done, &opts(data.len()))
        .await
        .unwrap();
    let got = store.get(&key, None, None).await.unwrap().data;
    assert!(
        got.as_ref() == &data[..],
        "{}: multipart object reads back whole",
        store.name()
    );
    let listed = list_keys(store, p, None).await;
    assert_eq!(
        listed.len(),
        1,
        "{}: no temporary objects left behind",
        store.name()
    );
}

async fn multipart_abort_leaves_nothing(store: &dyn Store, p: &str) {
    let key = format!("{p}aborted.bin");
    let part = store.limits().min_part_size.max(1 << 20);
    let upload = store
        .create_multipart(&key, &opts(part as usize * 2))
        .await
        .unwrap();
    let body = Payload::new(Bytes::from(pattern(part as usize, 4)));
    store
        .put_part(
            &upload,
            PartSpec {
                number: 1,
                offset: 0,
                len: part,
            },
            body,
        )
        .await
        .unwrap();
    store.abort_multipart(&upload).await.unwrap();
    assert!(store.head(&key).await.unwrap().is_none());
    assert!(
        list_keys(store, p, None).await.is_empty(),
        "{}: abort leaves nothing",
        store.name()
    );
}

async fn missing_objects(store: &dyn Store, p: &str) {
    let key = format!("{p}absent");
    assert!(store.head(&key).await.unwrap().is_none());
    let err = store.get(&key, None, None).await.unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::NotFound,
        "{}: get of a missing key: {err}",
        store.name()
    );
    assert!(
        err.message.contains("absent"),
        "{}: the error names the key: {err}",
        store.name()
    );
}

async fn changed_source_detected(store: &dyn Store, p: &str) {
    let key = format!("{p}v.bin");
    store
        .put(
            &key,
            Payload::new(Bytes::from(pattern(4096, 5))),
            &opts(4096),
        )
        .await
        .unwrap();
    let v1 = store.head(&key).await.unwrap().unwrap();
    store
        .get(&key, Some(0..10), Some(&v1))
        .await
        .expect("the listed version reads");
    // A different size always makes a different version, whatever the backend keeps.
    store
        .put(
            &key,
            Payload::new(Bytes::from(pattern(5000, 6))),
            &opts(5000),
        )
        .await
        .unwrap();
    let err = store.get(&key, Some(0..10), Some(&v1)).await.unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::SourceChanged,
        "{}: changed object detected: {err}",
        store.name()
    );
}

fn md5(data: &[u8]) -> Option<[u8; 16]> {
    use md5::Digest;
    Some(md5::Md5::digest(data).into())
}

/// `data` as a body of `piece`-byte chunks, then `end` if given (a read that fails).
fn chunks(data: &[u8], piece: usize, end: Option<Error>) -> Chunks {
    let mut items: Vec<crate::Result<Bytes>> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    items.extend(end.map(Err));
    futures::stream::iter(items).boxed()
}

/// Streamed writes and reads, which the engine uses between stores that stream (every store
/// has them, by default through `put` and `get`): what streams in reads back whole, an empty
/// object too; a body that fails, falls short or runs long (within a chunk, or by a chunk
/// after one that completed the size) writes nothing, neither a new object nor over an
/// existing one, and its own error comes back; a streamed read of a version that has changed
/// fails as `get` does. Writes carry the content MD5 of the size they announce, as the engine
/// sends them (stores that stream writes need it up front).
async fn streamed(store: &dyn Store, p: &str) {
    let name = store.name();
    let data = pattern(300_000, 21);
    let key = format!("{p}whole.bin");
    store
        .put_stream(
            &key,
            chunks(&data, 64_000, None),
            md5(&data),
            &opts(data.len()),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: streamed write: {e}"));
    let read = store.get_stream(&key, None).await.unwrap();
    let got: Vec<Bytes> = read.body.try_collect().await.unwrap();
    assert!(got.concat() == data, "{name}: a streamed write reads back");
    let listed = store.head(&key).await.unwrap().unwrap();
    if let (Some(listed), Some(read)) = (&listed.etag, &read.etag) {
        assert_eq!(listed, read, "{name}: a streamed read reports the ETag");
    }
    let empty = format!("{p}empty");
    store
        .put_stream(&empty, chunks(&[], 1, None), md5(&[]), &opts(0))
        .await
        .unwrap();
    let got: Vec<Bytes> = store
        .get_stream(&empty, None)
        .await
        .unwrap()
        .body
        .try_collect()
        .await
        .unwrap();
    assert!(got.concat().is_empty(), "{name}: empty streamed object");

    let broke = || Error::new(ErrorKind::Corrupt, "the read did not check out");
    let cases = [
        (
            "fails",
            chunks(&data[..100_000], 50_000, Some(broke())),
            300_000,
        ),
        (
            "falls short",
            chunks(&data[..100_000], 50_000, None),
            300_000,
        ),
        ("runs long", chunks(&data, 64_000, None), 200_000),
        (
            "runs on after a chunk ending at the size",
            chunks(&data, 50_000, None),
            200_000,
        ),
    ];
    for (case, body, size) in cases {
        let target = format!("{p}{}", case.replace(' ', "-"));
        let err = store
            .put_stream(&target, body, md5(&data[..size]), &opts(size))
            .await
            .expect_err(&format!("{name}: a body that {case} must fail its write"));
        if case == "fails" {
            assert_eq!(err, broke(), "{name}: the body's own error comes back");
        }
        assert!(
            store.head(&target).await.unwrap().is_none(),
            "{name}: a body that {case} wrote nothing"
        );
    }
    // Over an existing object, a failed write leaves it as it was.
    let err = store
        .put_stream(
            &key,
            chunks(&data[..10], 5, Some(broke())),
            None,
            &opts(300_000),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{name}: {err}");
    let kept = store.get(&key, None, None).await.unwrap().data;
    assert!(
        kept.as_ref() == &data[..],
        "{name}: the existing object is kept"
    );

    store
        .put(&key, Payload::new(Bytes::from_static(b"v2")), &opts(2))
        .await
        .unwrap();
    let err = store.get_stream(&key, Some(&listed)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::SourceChanged, "{name}: {err}");
}

async fn delete(store: &dyn Store, p: &str) {
    let key = format!("{p}gone");
    store
        .put(&key, Payload::new(Bytes::from_static(b"bye")), &opts(3))
        .await
        .unwrap();
    store.delete(&key).await.unwrap();
    assert!(store.head(&key).await.unwrap().is_none());
    store
        .delete(&key)
        .await
        .expect("deleting a missing object is not an error");
}
