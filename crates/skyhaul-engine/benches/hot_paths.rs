//! The per-byte and per-object work of a transfer, in isolation: checksums (per MiB, the
//! cost every copied byte pays), key mapping and filtering (per object, what a
//! million-object listing pays), part planning, and the sync comparison.
//!
//! `cargo bench -p skyhaul-engine --bench hot_paths`

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use skyhaul_engine::integrity::{combine_crc64, sums};
use skyhaul_engine::plan::{compare_listed, part_size, Compare};
use skyhaul_engine::FilterBuilder;
use skyhaul_location::map_key;
use skyhaul_store::{Limits, ObjectMeta};
use std::time::{Duration, UNIX_EPOCH};

const MIB: usize = 1 << 20;
const KEYS: usize = 10_000;

fn main() {
    divan::main();
}

fn chunk() -> Vec<u8> {
    (0..MIB).map(|i| (i * 31 % 251) as u8).collect()
}

/// CRC64-NVME only: what every chunk pays.
#[divan::bench]
fn crc64_per_mib(b: Bencher) {
    let data = chunk();
    b.counter(BytesCount::new(MIB))
        .bench(|| sums(black_box(&data), false));
}

/// CRC64-NVME and MD5: what a chunk pays when an S3 ETag must be checked.
#[divan::bench]
fn crc64_and_md5_per_mib(b: Bencher) {
    let data = chunk();
    b.counter(BytesCount::new(MIB))
        .bench(|| sums(black_box(&data), true));
}

/// Combining 10,000 part CRCs into the full-object CRC (the largest multipart upload).
#[divan::bench]
fn combine_10000_part_crcs(b: Bencher) {
    let parts: Vec<(u64, u64)> = (0..10_000u64).map(|i| (i * 0x9e37, 16 << 20)).collect();
    b.bench(|| combine_crc64(black_box(parts.iter().copied())));
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("datasets/train/shard-{:04}/sample-{i:08}.jpg", i % 100))
        .collect()
}

#[divan::bench]
fn map_key_per_object(b: Bencher) {
    let keys = keys();
    b.counter(ItemsCount::new(KEYS)).bench(|| {
        for k in &keys {
            black_box(map_key("datasets/", k, "mirror/2026/", true));
        }
    });
}

#[divan::bench]
fn filter_per_object(b: Bencher) {
    let keys = keys();
    let mut f = FilterBuilder::new();
    f.include("train/**/*.jpg").unwrap();
    f.exclude("**/shard-0042/**").unwrap();
    let f = f.build();
    let meta = ObjectMeta::new("k", 40_000);
    b.counter(ItemsCount::new(KEYS)).bench(|| {
        for k in &keys {
            black_box(f.selects(&k["datasets/".len()..], &meta));
        }
    });
}

#[divan::bench]
fn part_size_for_sizes(b: Bencher) {
    let sizes: Vec<u64> = (0..1000u64).map(|i| (i + 1) << 30).collect();
    b.counter(ItemsCount::new(sizes.len())).bench(|| {
        for &s in &sizes {
            black_box(part_size(s, 16 << 20, &Limits::S3));
        }
    });
}

#[divan::bench]
fn sync_comparison_per_object(b: Bencher) {
    let at = |s: u64| {
        let mut m = ObjectMeta::new("k", 1024);
        m.mtime = Some(UNIX_EPOCH + Duration::from_secs(s));
        m
    };
    let pairs: Vec<(ObjectMeta, ObjectMeta)> =
        (0..KEYS as u64).map(|i| (at(i), at(i + i % 2))).collect();
    b.counter(ItemsCount::new(KEYS)).bench(|| {
        for (a, d) in &pairs {
            black_box(compare_listed(a, d, Compare::SizeAndTime));
        }
    });
}
