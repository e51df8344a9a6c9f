//! Checksums computed while bytes stream through, and what they are compared with.
//!
//! Every chunk (a small object or one part) gets a CRC64-NVME, which is nearly free and
//! combines into a full-object CRC whatever the part layout; it backs deep verification.
//! MD5 is computed only where an ETag comparison needs it (an S3-like side), because S3's
//! ETag of a single-part object is the MD5 of its content and a multipart ETag is the MD5
//! of the part MD5s: that is how the source's bytes are checked on arrival, how the
//! destination server checks ours (`Content-MD5`), and how we check what it stored. Where
//! no MD5 vouches for a whole read (an SSE-KMS object's ETag is none), the checksum the
//! store keeps of the whole object ([`FullChecksum`]) does.

use bytes::Bytes;
use crc_fast::CrcAlgorithm;
use md5::{Digest, Md5};
use skyhaul_store::{Error, ErrorKind, FullChecksum, ObjectMeta, Result};
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
    md5_bytes(src.content_md5().or(plain_md5(read_etag))?)
}

/// The 16 bytes of an MD5 written as 32 hex digits.
pub fn md5_bytes(hex: &str) -> Option<[u8; 16]> {
    hex::decode(hex).ok()?.try_into().ok()
}

/// The error of bytes read from `target` that do not hash to its content MD5.
pub fn md5_mismatch(target: &str, want: [u8; 16], got: [u8; 16]) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "{target}: checksum mismatch: the source's MD5 is {}, the bytes received hash to {}",
            hex::encode(want),
            hex::encode(got)
        ),
    )
}

/// The source's full-object checksum worth checking a whole read against: a CRC64-NVME
/// always, as every chunk's is computed anyway (so a server that records a wrong one fails
/// its reads, as it fails the striped copies checked against it); a CRC32 or CRC32C only
/// where no content MD5 vouches for the bytes (an SSE-KMS object's ETag, or one uploaded in
/// parts).
pub fn worth_checking(full: Option<FullChecksum>, md5_known: bool) -> Option<FullChecksum> {
    full.filter(|c| matches!(c, FullChecksum::Crc64Nvme(_)) || !md5_known)
}

/// A whole object's bytes checked against the [`FullChecksum`] its read reported, as they
/// pass: a CRC64-NVME is compared with the one [`sums`] gives; a CRC32 or CRC32C is computed
/// here.
pub struct FullCheck {
    want: FullChecksum,
    crc32: Option<crc_fast::Digest>,
}

impl FullCheck {
    pub fn new(want: FullChecksum) -> Self {
        let algorithm = match want {
            FullChecksum::Crc64Nvme(_) => None,
            FullChecksum::Crc32(_) => Some(CrcAlgorithm::Crc32IsoHdlc),
            FullChecksum::Crc32c(_) => Some(CrcAlgorithm::Crc32Iscsi),
        };
        FullCheck {
            want,
            crc32: algorithm.map(crc_fast::Digest::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(d) = &mut self.crc32 {
            d.update(data);
        }
    }

    /// Fails with [`ErrorKind::Corrupt`] when the bytes passed (whose CRC64-NVME is `crc64`)
    /// do not have the checksum the source reported for `target`.
    pub fn finish(&self, target: &str, crc64: u64) -> Result<()> {
        let crc32 = self.crc32.as_ref().map_or(0, |d| d.finalize() as u32);
        let got = match self.want {
            FullChecksum::Crc64Nvme(_) => FullChecksum::Crc64Nvme(crc64),
            FullChecksum::Crc32(_) => FullChecksum::Crc32(crc32),
            FullChecksum::Crc32c(_) => FullChecksum::Crc32c(crc32),
        };
        if got == self.want {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{target}: checksum mismatch: the source records {}, the bytes received have {}",
                self.want, got
            ),
        ))
    }

    /// [`FullCheck`] of `data` whole.
    pub fn of(target: &str, want: FullChecksum, data: &[u8], crc64: u64) -> Result<()> {
        let mut check = FullCheck::new(want);
        check.update(data);
        check.finish(target, crc64)
    }
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
    fn a_full_checksum_checks_the_bytes_with_its_own_algorithm() {
        let data = b"123456789";
        let crc64 = sums(data, false).crc64;
        // The standard check values of CRC-32 and CRC-32C.
        let (crc32, crc32c) = (0xcbf4_3926, 0xe306_9283);
        for want in [
            FullChecksum::Crc64Nvme(crc64),
            FullChecksum::Crc32(crc32),
            FullChecksum::Crc32c(crc32c),
        ] {
            assert!(FullCheck::of("s/k", want, data, crc64).is_ok(), "{want}");
            let mut split = FullCheck::new(want);
            split.update(&data[..4]);
            split.update(&data[4..]);
            assert!(split.finish("s/k", crc64).is_ok(), "{want} in pieces");
        }
        let err = FullCheck::of("s/k", FullChecksum::Crc32(crc32c), data, crc64).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt);
        assert_eq!(
            err.message,
            "s/k: checksum mismatch: the source records CRC32 e3069283, \
             the bytes received have CRC32 cbf43926"
        );
        let other = FullChecksum::Crc64Nvme(crc64 ^ 1);
        assert!(FullCheck::of("s/k", other, data, crc64).is_err());
        assert_eq!(worth_checking(Some(other), true), Some(other));
        assert_eq!(worth_checking(Some(FullChecksum::Crc32(1)), true), None);
        assert_eq!(
            worth_checking(Some(FullChecksum::Crc32c(1)), false),
            Some(FullChecksum::Crc32c(1))
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
