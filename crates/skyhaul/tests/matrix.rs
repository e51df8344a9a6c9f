//! Any to any: the same mixed data set (small, zero-byte, multipart-sized with small parts,
//! keys with unicode, spaces, `%`, `+`, `=`, `&`) is copied by the skyhaul binary between
//! every ordered pair of {local, S3 (s3s-fs), GCS (fake-gcs-server), Azure (Azurite)},
//! same-kind pairs included (those copy server-side). Every result is read back with a
//! client independent of skyhaul's backends and compared byte for byte, and `skyhaul verify`
//! must pass; between stores whose ETags are content MD5s it must compare checksums, not
//! only sizes.
//!
//! Emulator gaps this exercises around rather than hides: fake-gcs-server has no XML
//! multipart API (skyhaul's GCS striping composes temporary objects through the JSON API,
//! which it has), and it does not check the hashes a client sends (skyhaul compares the
//! hashes it reports back instead).

mod common;

use common::{mixed, skyhaul_env, write_tree, Run, SMALL_PARTS};
use futures::TryStreamExt;
use object_store::{path::Path as OsPath, ObjectStore, ObjectStoreExt, PutPayload};
use skyhaul_testkit::{AzuriteServer, FakeGcsServer, S3Kind, S3Server};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    S3,
    Gcs,
    Azure,
}

const KINDS: [Kind; 4] = [Kind::Local, Kind::S3, Kind::Gcs, Kind::Azure];

struct Rig {
    local: tempfile::TempDir,
    s3: S3Server,
    gcs: FakeGcsServer,
    azure: AzuriteServer,
}

const BUCKET: &str = "matrix";

impl Rig {
    /// The location of `path` (a directory-form prefix) in a store of `kind`.
    fn url(&self, kind: Kind, path: &str) -> String {
        match kind {
            Kind::Local => format!("{}/{path}", self.local.path().display()),
            Kind::S3 => format!("s3://{BUCKET}/{path}"),
            Kind::Gcs => format!("gs://{BUCKET}/{path}"),
            Kind::Azure => format!("az://{BUCKET}/{path}"),
        }
    }

    /// The environment that gives skyhaul one side's endpoint and credentials.
    fn env(&self, kind: Kind, side: &str) -> Vec<(String, String)> {
        match kind {
            Kind::Local => Vec::new(),
            Kind::S3 => {
                let mut e = self.s3.env_for(side);
                e.push((format!("SKYHAUL_{side}_ENDPOINT"), self.s3.endpoint.clone()));
                e
            }
            Kind::Gcs => self.gcs.env_for(side),
            Kind::Azure => self.azure.env_for(side),
        }
    }

    fn object_store(&self, kind: Kind) -> Arc<dyn ObjectStore> {
        match kind {
            Kind::Gcs => self.gcs.store(BUCKET),
            Kind::Azure => self.azure.store(BUCKET),
            _ => unreachable!("local and S3 have their own independent clients"),
        }
    }

    /// Writes `files` under `prefix`, not with skyhaul.
    async fn seed(&self, kind: Kind, prefix: &str, files: &BTreeMap<String, Vec<u8>>) {
        match kind {
            Kind::Local => write_tree(&self.local.path().join(prefix), files),
            Kind::S3 => common::fill_bucket(&self.s3, BUCKET, prefix, files).await,
            Kind::Gcs => {
                for (k, v) in files {
                    self.gcs.put(BUCKET, &format!("{prefix}{k}"), v).await;
                }
            }
            Kind::Azure => {
                let store = self.object_store(kind);
                for (k, v) in files {
                    let path = OsPath::parse(format!("{prefix}{k}")).unwrap();
                    store
                        .put(&path, PutPayload::from(v.clone()))
                        .await
                        .unwrap_or_else(|e| panic!("{kind:?}: seed {k}: {e}"));
                }
            }
        }
    }

    /// Everything under `prefix`, relative to it, read back not with skyhaul.
    async fn read(&self, kind: Kind, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        match kind {
            Kind::Local => common::read_tree(&self.local.path().join(prefix)),
            Kind::S3 => common::read_bucket(&self.s3, BUCKET, prefix).await,
            Kind::Gcs | Kind::Azure => {
                let store = self.object_store(kind);
                let metas: Vec<_> = store
                    .list(Some(&OsPath::parse(prefix).unwrap()))
                    .try_collect()
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?}: list {prefix}: {e}"));
                let mut out = BTreeMap::new();
                for m in metas {
                    let key = m.location.to_string();
                    let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                    out.insert(key[prefix.len()..].to_string(), data.to_vec());
                }
                out
            }
        }
    }
}

/// The same keys with the same bytes (failures name keys, not kilobytes of bytes).
fn same(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the same keys"
    );
    for (k, v) in want {
        assert!(got[k] == *v, "{what}: '{k}' byte for byte");
    }
}

fn run(rig: &Rig, args: &[&str], src: Kind, dst: Kind) -> Run {
    let mut env = rig.env(src, "SRC");
    env.extend(rig.env(dst, "DST"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    skyhaul_env(args, None, None, &env)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pair_of_stores_copies_the_mixed_data_set() {
    let rig = Rig {
        local: tempfile::tempdir().unwrap(),
        s3: S3Server::start(S3Kind::S3sFs),
        gcs: FakeGcsServer::start(),
        azure: AzuriteServer::start(),
    };
    rig.s3.create_bucket(BUCKET).await;
    rig.gcs.create_bucket(BUCKET).await;
    rig.azure.create_container(BUCKET).await;
    let files = mixed();
    for kind in KINDS {
        rig.seed(kind, "src/", &files).await;
        same(
            &rig.read(kind, "src/").await,
            &files,
            &format!("{kind:?}: seeded"),
        );
    }
    let single_part = files.values().filter(|v| v.len() < 5 << 20).count() as u64;

    for src in KINDS {
        for dst in KINDS {
            let pair = format!("{src:?} -> {dst:?}");
            let to = format!("from-{src:?}/").to_lowercase();
            let (s, d) = (rig.url(src, "src/"), rig.url(dst, &to));
            let mut args = vec!["cp", "-r", s.as_str(), d.as_str(), "--no-journal", "-q"];
            args.extend(SMALL_PARTS);
            let r = run(&rig, &args, src, dst);
            assert_eq!(r.code, 0, "{pair}: cp failed:\n{}", r.stderr);
            same(&rig.read(dst, &to).await, &files, &pair);

            let r = run(&rig, &["verify", "-r", &s, &d, "--json"], src, dst);
            assert_eq!(r.code, 0, "{pair}: verify:\n{}{}", r.stdout, r.stderr);
            let v = r.json();
            assert_eq!(v["objects"], files.len() as u64, "{pair}: {v}");
            if src != Kind::Local && dst != Kind::Local {
                // Content-MD5 ETags on both sides (S3 ETag, GCS md5Hash, Azure Content-MD5)
                // make every single-part object checksum-verifiable without re-reading.
                assert!(
                    v["checksum_ok"].as_u64().unwrap() >= single_part,
                    "{pair}: checksums compared: {v}"
                );
            }
        }
    }

    // A corrupted destination object is caught by verify between any two clouds.
    let victim = "from-s3/small.txt";
    rig.seed(
        Kind::Gcs,
        "",
        &BTreeMap::from([(victim.to_string(), vec![b'x'; 1000])]),
    )
    .await;
    let (s, d) = (rig.url(Kind::S3, "src/"), rig.url(Kind::Gcs, "from-s3/"));
    let r = run(
        &rig,
        &["verify", "-r", &s, &d, "--json"],
        Kind::S3,
        Kind::Gcs,
    );
    assert_ne!(
        r.code, 0,
        "same-size corruption must fail verify: {}",
        r.stdout
    );
    assert_eq!(r.json()["checksum_mismatch"], 1, "{}", r.stdout);
}
