//! Checksums computed while bytes stream through, and what they are compared with.
//!
//! Every chunk (a small object or one part) gets a CRC64-NVME, which is nearly free and
//! combines into a full-object CRC whatever the part layout; it backs deep verification.
//! MD5 is computed only where an ETag comparison needs it (an S3-like side), because S3's
//! ETag of a single-part object is the MD5 of its content and a multipart ETag is the MD5
//! of the part MD5s: that is how the source's bytes are checked on arrival, how the
//! destination server checks ours (`Content-MD5`), and how we check what it stored.

use bytes::Bytes;
use crc_fast::CrcAlgorithm;
use md5::{Digest, Md5};
use skyhaul_store::ObjectMeta;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::OwnedSemaphorePermit;

/// The checksums of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSums {
    pub crc64: u64,
    pub md5: Option<[u8; 16]>,
}

pub fn sums(data: &[u8], with_md5: bool) -> ChunkSums {
    ChunkSums {
        crc64: crc_fast::checksum(CrcAlgorithm::Crc64Nvme, data),
        md5: with_md5.then(|| Md5::digest(data).into()),
    }
}

/// The CRC of a concatenation, from the CRCs and lengths of its pieces in order.
pub fn combine_crc64(pieces: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    let mut iter = pieces.into_iter();
    let Some((mut crc, _)) = iter.next() else {
        return crc_fast::checksum(CrcAlgorithm::Crc64Nvme, b"");
    };
    for (next, len) in iter {
        crc = crc_fast::checksum_combine(CrcAlgorithm::Crc64Nvme, crc, next, len);
    }
    crc
}

/// An ETag in the form of a content MD5: 32 hex digits, no `-N` part count. Whether it is
/// one, only the store's answers tell ([`skyhaul_store::content_md5`]).
pub fn plain_md5(etag: Option<&str>) -> Option<&str> {
    skyhaul_store::content_md5(etag, false)
}

/// The source's content MD5: its listed ETag, else the one its read was answered with
/// (some listings carry none), when that is a content MD5. None when the read (or a HEAD)
/// said the object's ETag is no MD5 (SSE-KMS, SSE-C), which a listing cannot say.
pub fn source_md5(
    src: &ObjectMeta,
    read_etag: Option<&str>,
    read_opaque: bool,
) -> Option<[u8; 16]> {
    if read_opaque || src.opaque_etag {
        return None;
    }
    let hex = src.content_md5().or(plain_md5(read_etag))?;
    <[u8; 16]>::try_from(hex::decode(hex).ok()?).ok()
}

/// The error of bytes read from `target` that do not hash to its content MD5.
pub fn md5_mismatch(target: &str, want: [u8; 16], got: [u8; 16]) -> skyhaul_store::Error {
    skyhaul_store::Error::new(
        skyhaul_store::ErrorKind::Corrupt,
        format!(
            "{target}: checksum mismatch: the source's MD5 is {}, the bytes received hash to {}",
            hex::encode(want),
            hex::encode(got)
        ),
    )
}

/// The ETag S3 gives a multipart object with these part MD5s.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

/// MD5 of a whole object whose parts finish in any order: each part waits (holding its
/// memory-budget permit, so the budget still bounds memory) until the parts before it
/// are hashed. Parts take budget in part order, so the earliest part is never starved.
#[derive(Default)]
pub struct OrderedMd5 {
    state: Mutex<OrderedState>,
}

#[derive(Default)]
struct OrderedState {
    hasher: Md5,
    next: u32,
    pending: BTreeMap<u32, (Bytes, Option<OwnedSemaphorePermit>)>,
}

impl OrderedMd5 {
    /// Adds part `index` (0-based).
    pub fn add(&self, index: u32, data: Bytes, permit: Option<OwnedSemaphorePermit>) {
        let mut s = self.state.lock().expect("lock");
        s.pending.insert(index, (data, permit));
        loop {
            let next = s.next;
            let Some((data, _permit)) = s.pending.remove(&next) else {
                break;
            };
            s.hasher.update(&data);
            s.next += 1;
        }
    }

    /// The MD5, if every part up to `parts` was added.
    pub fn finish(self, parts: u32) -> Option<[u8; 16]> {
        let s = self.state.into_inner().expect("lock");
        (s.next == parts).then(|| s.hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_parts_equals_crc_of_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = sums(&data, false).crc64;
        let pieces = data
            .chunks(30_000)
            .map(|c| (sums(c, false).crc64, c.len() as u64));
        assert_eq!(combine_crc64(pieces), whole);
        assert_eq!(combine_crc64([]), sums(b"", false).crc64);
    }

    #[test]
    fn etag_forms() {
        let md5 = sums(b"hello", true).md5.unwrap();
        assert_eq!(hex::encode(md5), "5d41402abc4b2a76b9719d911017c592");
        assert!(plain_md5(Some("5d41402abc4b2a76b9719d911017c592")).is_some());
        assert!(plain_md5(Some("5d41402abc4b2a76b9719d911017c592-2")).is_none());
        // S3's documented construction: md5 of the concatenated binary part digests.
        let a = sums(b"part one", true).md5.unwrap();
        let b = sums(b"part two", true).md5.unwrap();
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(
            multipart_etag(&[a, b]),
            format!("{}-2", hex::encode(Md5::digest(&cat)))
        );
    }

    #[test]
    fn ordered_md5_matches_in_any_order() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let parts: Vec<Bytes> = data.chunks(12_000).map(Bytes::copy_from_slice).collect();
        let h = OrderedMd5::default();
        for i in [2usize, 0, 4, 3, 1] {
            h.add(i as u32, parts[i].clone(), None);
        }
        assert_eq!(h.finish(5), Some(Md5::digest(&data).into()));
        let missing = OrderedMd5::default();
        missing.add(1, parts[1].clone(), None);
        assert_eq!(missing.finish(5), None);
    }
}
