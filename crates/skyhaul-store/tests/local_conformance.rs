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
