//! The local backend passes the same suite as every other backend.

use skyhaul_store::{conformance, ErrorKind, LocalStore, Payload, PutOptions, Store};

#[tokio::test]
async fn local_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    conformance::run_all(&store, "suite/").await;
}

#[tokio::test]
async fn local_store_refuses_keys_that_escape_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = LocalStore::new(&root);
    for key in ["../escape", "a/../../escape", "/abs", "a//b"] {
        let err = store
            .put(
                key,
                Payload::new(bytes::Bytes::from_static(b"x")),
                &PutOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidKey, "{key}: {err}");
    }
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn file_where_a_directory_must_go_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    store
        .put(
            "a",
            Payload::new(bytes::Bytes::from_static(b"file")),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let err = store
        .put(
            "a/b",
            Payload::new(bytes::Bytes::from_static(b"x")),
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("a/b"), "{err}");
    // And the other way round: a directory where a file must go.
    store
        .put(
            "d/x",
            Payload::new(bytes::Bytes::from_static(b"x")),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let err = store
        .put(
            "d",
            Payload::new(bytes::Bytes::from_static(b"x")),
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    // Nothing half-written is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A file written while it is streamed out: the stream ends with `SourceChanged` in place of
/// its last chunk, so a copy never completes from bytes of two versions.
#[tokio::test]
async fn a_file_changed_during_a_streamed_read_fails_the_read() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let path = dir.path().join("f.bin");
    std::fs::write(&path, vec![1u8; 4 * skyhaul_store::LOCAL_CHUNK]).unwrap();
    let meta = store.head("f.bin").await.unwrap().unwrap();
    let mut body = store.get_stream("f.bin", Some(&meta)).await.unwrap().body;
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(first.len(), skyhaul_store::LOCAL_CHUNK);
    // Same size, new content and a new mtime: a writer at work.
    std::fs::write(&path, vec![2u8; 4 * skyhaul_store::LOCAL_CHUNK]).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let rest: Vec<_> = body.collect().await;
    let err = rest.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::SourceChanged, "{err}");
    assert_eq!(rest.len(), 3, "no chunk after the error");
    // One deleted since it was listed says so.
    std::fs::remove_file(&path).unwrap();
    let Err(err) = store.get_stream("f.bin", Some(&meta)).await else {
        panic!("read a deleted file");
    };
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("deleted since it was listed"), "{err}");
}

/// A streamed write dropped half way (as a Ctrl-C drops it) leaves neither the file nor its
/// temporary file behind.
#[tokio::test]
async fn a_streamed_write_dropped_half_way_leaves_nothing() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let first = futures::stream::once(async { Ok(bytes::Bytes::from(vec![7u8; 1 << 20])) });
    let body = first.chain(futures::stream::pending()).boxed();
    let opts = PutOptions {
        size: 2 << 20,
        ..Default::default()
    };
    let write = store.put_stream("d/f.bin", body, None, &opts);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), write).await;
    assert!(waited.is_err(), "the write waits for the rest of its body");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Only regular files are listed: a FIFO would block its read forever and a device has no
/// end, so they (and symlinks to them, and dangling symlinks) are skipped.
#[tokio::test]
async fn listings_hold_regular_files_only() {
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("file"), b"f").unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/inner"), b"i").unwrap();
    let fifo = root.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
    std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
    std::os::unix::fs::symlink(root.join("file"), root.join("link")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    let store = LocalStore::new(root);
    let listed: Vec<String> = store
        .list("", None)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, ["dir/inner", "file", "link"]);
}

/// A name that is no key fails alone, in its place in the order, and the walk goes on; a
/// prefix or a resumed listing leaves out the entries before it, as it does objects.
#[tokio::test]
async fn an_entry_that_is_no_key_fails_alone_in_its_place() {
    use futures::StreamExt;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for f in ["a", "c/x", "d"] {
        let path = root.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"f").unwrap();
    }
    std::fs::write(root.join(OsStr::from_bytes(b"b\xff")), b"f").unwrap();
    std::fs::create_dir(root.join(OsStr::from_bytes(b"c/y\xfe"))).unwrap();
    let store = LocalStore::new(root);
    let list = |prefix: &'static str, after: Option<&'static str>| {
        let store = &store;
        async move {
            let items: Vec<Result<String, skyhaul_store::Error>> = store
                .list(prefix, after)
                .map(|r| r.map(|m| m.key))
                .collect()
                .await;
            items
                .into_iter()
                .map(|r| match r {
                    Ok(key) => key,
                    Err(e) => {
                        assert_eq!(e.kind, ErrorKind::InvalidKey, "{e}");
                        assert!(e.message.contains("not UTF-8"), "{e}");
                        format!("unlisted {}", e.unlisted.expect("marked as one entry's"))
                    }
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list("", None).await,
        [
            "a",
            "unlisted b\u{FFFD}",
            "c/x",
            "unlisted c/y\u{FFFD}/",
            "d"
        ]
    );
    assert_eq!(list("c/", None).await, ["c/x", "unlisted c/y\u{FFFD}/"]);
    assert_eq!(list("", Some("c/x")).await, ["unlisted c/y\u{FFFD}/", "d"]);
    assert_eq!(list("a", None).await, ["a"]);
}

/// A FIFO, socket or device where a write must go is refused by every kind of write, and
/// stays: renaming a finished file into place would replace it.
#[tokio::test]
async fn a_special_file_in_the_way_is_refused_not_replaced() {
    use futures::StreamExt;
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
    let store = LocalStore::new(dir.path());
    let opts = PutOptions {
        size: 1,
        ..Default::default()
    };
    for key in ["fifo", "socket"] {
        let whole = store
            .put(key, Payload::new(bytes::Bytes::from_static(b"x")), &opts)
            .await;
        let body = futures::stream::once(async { Ok(bytes::Bytes::from_static(b"x")) }).boxed();
        let streamed = store.put_stream(key, body, None, &opts).await.map(|_| ());
        let striped = store.create_multipart(key, &opts).await.map(|_| ());
        for (how, result) in [
            ("put", whole.map(|_| ())),
            ("put_stream", streamed),
            ("multipart", striped),
        ] {
            let err = result.expect_err(how);
            assert_eq!(err.kind, ErrorKind::Conflict, "{how} {key}: {err}");
            assert!(err.message.contains("writes only regular files"), "{err}");
        }
        let kind = std::fs::symlink_metadata(dir.path().join(key))
            .unwrap()
            .file_type();
        assert!(kind.is_fifo() || kind.is_socket(), "{key} is still there");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary files: {left:?}");
}

/// A directory of the destination swapped for a symlink while a transfer writes into it (by
/// a deploy that flips a directory to a link, or another user) is not written or deleted
/// through: each write and deletion under it fails as a conflict naming the link, and
/// nothing changes where the link points. The store had remembered the directory as checked
/// and then written by path, so everything after the swap went outside the destination, and
/// `sync --delete` deleted files there.
#[tokio::test]
async fn a_directory_swapped_for_a_symlink_mid_run_is_not_written_through() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("dst"), dir.path().join("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("gone"), b"precious").unwrap();
    let store = LocalStore::new(&root);
    let opts = |size| PutOptions {
        size,
        ..Default::default()
    };
    let payload = |data: &'static [u8]| Payload::new(bytes::Bytes::from_static(data));
    for key in ["sub/first", "sub/gone"] {
        store.put(key, payload(b"in"), &opts(2)).await.unwrap();
    }
    // An upload begun before the swap, completed after it.
    let begun = store
        .create_multipart("sub/striped", &opts(2))
        .await
        .unwrap();
    std::fs::rename(root.join("sub"), root.join("sub.real")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();

    let whole = store.put("sub/whole", payload(b"x"), &opts(1)).await;
    let body = futures::stream::once(async { Ok(bytes::Bytes::from_static(b"x")) }).boxed();
    let streamed = store.put_stream("sub/streamed", body, None, &opts(1)).await;
    let multipart = store.create_multipart("sub/parts", &opts(1)).await;
    let part = skyhaul_store::PartSpec {
        number: 1,
        offset: 0,
        len: 2,
    };
    let sent = store.put_part(&begun, part, payload(b"ok")).await.unwrap();
    let completed = store.complete_multipart(&begun, &[sent], &opts(2)).await;
    let deleted = store.delete("sub/gone").await;
    for (how, result) in [
        ("put", whole.map(|_| ())),
        ("put_stream", streamed.map(|_| ())),
        ("create_multipart", multipart.map(|_| ())),
        ("complete_multipart", completed.map(|_| ())),
        ("delete", deleted),
    ] {
        let err = result.expect_err(how);
        assert_eq!(err.kind, ErrorKind::Conflict, "{how}: {err}");
        let named = format!("{} is a symlink", root.join("sub").display());
        assert!(err.message.contains(&named), "{how}: {err}");
    }
    let mut found: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    assert_eq!(found, ["gone"], "nothing written or deleted outside");
    assert_eq!(std::fs::read(outside.join("gone")).unwrap(), b"precious");
    assert_eq!(std::fs::read(root.join("sub.real/gone")).unwrap(), b"in");
    // The failed upload is aborted where its file is.
    store.abort_multipart(&begun).await.unwrap();
    let left = std::fs::read_dir(root.join("sub.real")).unwrap().count();
    assert_eq!(left, 2, "first and gone, no temporary file");
}

/// The destination's root itself swapped for a symlink while a transfer runs (a deploy
/// flipping a `current` link to another tree, after moving the old one away): writes and
/// deletions stay in the directory that was checked before the transfer, where the run's
/// listing looked. They had followed the new link: `sync --delete` deleted the other tree's
/// files by the names it had listed here, and a striped file finished after the swap
/// replaced a file of the same name there.
#[tokio::test]
async fn a_root_swapped_for_a_symlink_mid_run_keeps_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (root, moved, outside) = (
        dir.path().join("dst"),
        dir.path().join("dst.old"),
        dir.path().join("outside"),
    );
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for tree in [&outside, &root] {
        std::fs::write(tree.join("sub/extra"), b"mine").unwrap();
    }
    let store = LocalStore::new(&root);
    store.preflight(true).await.unwrap();
    let opts = |size| PutOptions {
        size,
        ..Default::default()
    };
    let payload = |data: &'static [u8]| Payload::new(bytes::Bytes::from_static(data));
    let begun = store
        .create_multipart("sub/striped", &opts(2))
        .await
        .unwrap();
    std::fs::rename(&root, &moved).unwrap();
    std::os::unix::fs::symlink(&outside, &root).unwrap();

    store
        .put("sub/whole", payload(b"x"), &opts(1))
        .await
        .unwrap();
    let part = skyhaul_store::PartSpec {
        number: 1,
        offset: 0,
        len: 2,
    };
    let sent = store.put_part(&begun, part, payload(b"ok")).await.unwrap();
    store
        .complete_multipart(&begun, &[sent], &opts(2))
        .await
        .unwrap();
    store.delete("sub/extra").await.unwrap();

    let names = |at: &std::path::Path| {
        let mut found: Vec<_> = std::fs::read_dir(at)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        names(&outside.join("sub")),
        ["extra"],
        "the other tree untouched"
    );
    assert_eq!(std::fs::read(outside.join("sub/extra")).unwrap(), b"mine");
    assert_eq!(names(&moved.join("sub")), ["striped", "whole"]);
    assert_eq!(std::fs::read(moved.join("sub/striped")).unwrap(), b"ok");
}
