//! Journal throughput on 100,000 objects: recording them (one thread, and eight threads at once,
//! as many tokio tasks would) and looking them up (as a resume does).
//!
//! `cargo bench -p skyhaul-journal`

use divan::counter::ItemsCount;
use divan::Bencher;
use skyhaul_journal::{Journal, TransferId, TransferIdentity};
use skyhaul_store::ObjectMeta;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

const N: usize = 100_000;

fn main() {
    divan::main();
}

fn objects() -> &'static [ObjectMeta] {
    static OBJECTS: OnceLock<Vec<ObjectMeta>> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        (0..N)
            .map(|i| {
                let mut m = ObjectMeta::new(
                    format!("datasets/train/shard-{:04}/sample-{i:08}.jpg", i % 1000),
                    40_000 + i as u64,
                );
                m.etag = Some(format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15));
                m.mtime = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i as u64));
                m
            })
            .collect()
    })
}

fn identity() -> TransferIdentity {
    TransferIdentity::new("s3://bucket/datasets/", "/mnt/data/datasets/", "copy")
}

struct Fixture {
    _dir: tempfile::TempDir,
    journal: Journal,
    id: TransferId,
}

fn empty() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
    let id = journal.begin(&identity()).unwrap();
    Fixture {
        _dir: dir,
        journal,
        id,
    }
}

/// A journal holding all 100k objects, built once.
fn full() -> &'static Fixture {
    static FULL: OnceLock<Fixture> = OnceLock::new();
    FULL.get_or_init(|| {
        let f = empty();
        for o in objects() {
            f.journal
                .record_done(f.id, o, &o.key, Some("crc64nvme:0011223344556677"))
                .unwrap();
        }
        f.journal.flush().unwrap();
        f
    })
}

/// 100k `record_done` from one thread, then `flush` (so everything is committed, durably).
/// Keys arrive scattered over 1,000 directories (the worst order for the B-tree).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn record_done_100k_one_thread(bencher: Bencher) {
    let objs = objects();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(empty)
        .bench_local_values(|f| {
            for o in objs {
                f.journal
                    .record_done(f.id, o, &o.key, Some("crc64nvme:0011223344556677"))
                    .unwrap();
            }
            f.journal.flush().unwrap();
            f
        });
}

/// The same in listing order (sorted keys, as a store lists them and tasks mostly finish them):
/// inserts land at the end of the B-tree.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn record_done_100k_listing_order(bencher: Bencher) {
    static SORTED: OnceLock<Vec<ObjectMeta>> = OnceLock::new();
    let objs = SORTED.get_or_init(|| {
        let mut v = objects().to_vec();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    });
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(empty)
        .bench_local_values(|f| {
            for o in objs {
                f.journal
                    .record_done(f.id, o, &o.key, Some("crc64nvme:0011223344556677"))
                    .unwrap();
            }
            f.journal.flush().unwrap();
            f
        });
}

/// 100k `record_done` from 8 threads at once (12,500 each), then `flush`.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn record_done_100k_eight_threads(bencher: Bencher) {
    let objs = objects();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(empty)
        .bench_local_values(|f| {
            std::thread::scope(|s| {
                for chunk in objs.chunks(N / 8) {
                    let f = &f;
                    s.spawn(move || {
                        for o in chunk {
                            f.journal.record_done(f.id, o, &o.key, None).unwrap();
                        }
                    });
                }
            });
            f.journal.flush().unwrap();
            f
        });
}

/// 100k `is_done` hits on a journal of 100k objects (a resume of a finished transfer).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn is_done_100k_hits(bencher: Bencher) {
    let f = full();
    let objs = objects();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        for o in objs {
            assert!(f.journal.is_done(f.id, o).unwrap().is_some());
        }
    });
}

/// 100k `is_done` from 2 threads at once (50k each).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn is_done_100k_hits_two_threads(bencher: Bencher) {
    let f = full();
    let objs = objects();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        std::thread::scope(|s| {
            for chunk in objs.chunks(N / 2) {
                s.spawn(move || {
                    for o in chunk {
                        assert!(f.journal.is_done(f.id, o).unwrap().is_some());
                    }
                });
            }
        });
    });
}

/// One `is_done` miss (an object not copied yet) on a journal of 100k objects.
#[divan::bench]
fn is_done_miss(bencher: Bencher) {
    let f = full();
    let o = ObjectMeta::new("datasets/train/not-there.jpg", 1);
    bencher.bench_local(|| f.journal.is_done(f.id, &o).unwrap());
}

/// `transfers()` (what `skyhaul status` runs) with 100k objects in the journal.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn transfers_summary_100k(bencher: Bencher) {
    let f = full();
    bencher.bench_local(|| f.journal.transfers().unwrap());
}
