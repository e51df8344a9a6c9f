//! Whether two objects hold the same bytes, decided as cheaply as their stores allow.
//!
//! `verify` and `sync --checksum` both need this, and both must work for objects another
//! tool uploaded in parts of unknown size. In order of cost:
//! 1. ETags that are content MD5s (or identical multipart ETags): free from the listing,
//!    though a difference is confirmed by a HEAD of each side (an SSE-KMS object's ETag
//!    looks like an MD5 in a listing; only a HEAD says it is none);
//! 2. full-object CRC64-NVMEs recorded with the objects (ours, or the provider's own):
//!    one HEAD per side;
//! 3. a checksum computed by reading the side whose reads are free (a file system), in the
//!    form the other side records (its CRC, else its content-MD5 ETag);
//! 4. only when asked (`deep`): a CRC of both sides re-read, for every object. Then nothing
//!    recorded is trusted, ETags and recorded checksums included: they describe the bytes
//!    as they were written, and a deep check is asked for to find bytes that changed since
//!    (decay, or a tool writing behind the store's back).

use crate::integrity::{combine_crc64, sums};
use crate::limiter::AdaptiveLimit;
use crate::plan::{compare_listed, Compare, Listed};
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use md5::{Digest, Md5};
use skyhaul_store::{Error, ErrorKind, ObjectMeta, Result, Store};

/// Chunk size for re-reads: large enough for throughput, small enough for memory.
pub(crate) const READ_CHUNK: u64 = 16 << 20;

/// One side of a comparison: an object as listed, and its store.
pub struct Side<'a> {
    pub store: &'a dyn Store,
    pub meta: ObjectMeta,
    /// Whether `meta` came from a HEAD (and so carries the recorded metadata).
    headed: bool,
}

impl<'a> Side<'a> {
    pub fn listed(store: &'a dyn Store, meta: ObjectMeta) -> Self {
        Side {
            store,
            meta,
            headed: false,
        }
    }

    /// Replaces the listed metadata with a HEAD's, once: listings carry no user metadata,
    /// and some (s3s-fs) no ETags either.
    async fn head(&mut self, retry: &RetryPolicy, progress: &Progress) -> Result<()> {
        if self.headed || self.store.rereads_are_free() {
            return Ok(());
        }
        self.headed = true;
        if let Some(h) = head(self.store, &self.meta.key, retry, progress).await? {
            self.meta = h;
        }
        Ok(())
    }
}

/// A HEAD with the transfer's retries: comparisons must ride out the same faults.
pub(crate) async fn head(
    store: &dyn Store,
    key: &str,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<Option<ObjectMeta>> {
    let limit = AdaptiveLimit::new(1);
    retry.run(&limit, progress, || store.head(key)).await
}

/// The two fingerprints compared (the first side's, then the second's), in a form such as
/// `crc64nvme:…` or a content MD5, or `None` when nothing comparable is known. `deep`:
/// the CRC64s of both sides' bytes, re-read.
pub async fn fingerprints(
    mut a: Side<'_>,
    mut b: Side<'_>,
    deep: bool,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<Option<(String, String)>> {
    if deep {
        let (x, y) = (
            reread(&a, retry, progress).await?,
            reread(&b, retry, progress).await?,
        );
        return Ok(Some((x, y)));
    }
    for side in [&mut a, &mut b] {
        if side.meta.etag.is_none() && side.store.etags_are_md5() {
            side.head(retry, progress).await?;
        }
    }
    if let Some((x, y)) = etag_comparison(&a.meta, &b.meta) {
        if x == y {
            return Ok(Some((x, y)));
        }
        a.head(retry, progress).await?;
        b.head(retry, progress).await?;
        if let Some(outcome) = etag_comparison(&a.meta, &b.meta) {
            return Ok(Some(outcome));
        }
    }
    a.head(retry, progress).await?;
    b.head(retry, progress).await?;
    let Some(want) = common(&a, &b) else {
        return Ok(None);
    };
    Ok(Some((
        want.fingerprint(&a, retry, progress).await?,
        want.fingerprint(&b, retry, progress).await?,
    )))
}

/// The CRC64-NVME of a side's bytes as its store serves them now, whatever it records.
async fn reread(side: &Side<'_>, retry: &RetryPolicy, progress: &Progress) -> Result<String> {
    let (crc, _) = read_sums(side.store, &side.meta, false, retry, progress).await?;
    Ok(format!("crc64nvme:{crc:016x}"))
}

/// Whether `dst` holds the same bytes as `src`, for `sync --checksum`. Where no checksum
/// is comparable it falls back to what a sync compares by default, size and time.
pub async fn same_content(
    src: Side<'_>,
    dst: Side<'_>,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<bool> {
    let by_time = compare_listed(&src.meta, &dst.meta, Compare::SizeAndTime) == Listed::Skip;
    Ok(
        match fingerprints(src, dst, false, retry, progress).await? {
            Some((a, b)) => a == b,
            None => by_time,
        },
    )
}

/// ETags say something about content when both are content MD5s, or when both are the
/// same multipart ETag (same parts, same part MD5s). Anything else is not comparable.
pub fn etag_comparison(a: &ObjectMeta, b: &ObjectMeta) -> Option<(String, String)> {
    let (x, y) = (a.etag.as_deref()?, b.etag.as_deref()?);
    match (a.content_md5(), b.content_md5()) {
        (Some(x), Some(y)) => Some((x.to_ascii_lowercase(), y.to_ascii_lowercase())),
        _ if x == y && x.contains('-') => Some((x.to_string(), y.to_string())),
        _ => None,
    }
}

/// Which fingerprint of a side to compare.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Crc,
    Md5,
}

impl Want {
    async fn fingerprint(
        self,
        side: &Side<'_>,
        retry: &RetryPolicy,
        progress: &Progress,
    ) -> Result<String> {
        let known = match self {
            Want::Crc => side.meta.crc64nvme().map(|c| format!("crc64nvme:{c:016x}")),
            Want::Md5 => side.meta.content_md5().map(|m| m.to_ascii_lowercase()),
        };
        match (known, self) {
            (Some(known), _) => Ok(known),
            (None, Want::Crc) => reread(side, retry, progress).await,
            (None, Want::Md5) => {
                let (_, md5) = read_sums(side.store, &side.meta, true, retry, progress).await?;
                Ok(hex::encode(md5.expect("asked for")))
            }
        }
    }
}

/// A fingerprint both sides have without a deep read of both: what each records, or
/// (for a side whose reads are free) what the other records, computed.
fn common(a: &Side<'_>, b: &Side<'_>) -> Option<Want> {
    let has_crc = |s: &Side<'_>| s.meta.crc64nvme().is_some() || s.store.rereads_are_free();
    if has_crc(a) && has_crc(b) {
        return Some(Want::Crc);
    }
    let has_md5 = |s: &Side<'_>| s.meta.content_md5().is_some() || s.store.rereads_are_free();
    (has_md5(a) && has_md5(b)).then_some(Want::Md5)
}

/// CRC64-NVME (and MD5 when asked) of an object read from its store in chunks, in order.
pub async fn read_sums(
    store: &dyn Store,
    meta: &ObjectMeta,
    with_md5: bool,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<(u64, Option<[u8; 16]>)> {
    let limit = AdaptiveLimit::new(1);
    let mut pieces = Vec::new();
    let mut md5 = with_md5.then(Md5::new);
    let mut offset = 0;
    loop {
        // A file of terabytes takes hours to read: a stop must not wait for the end.
        if progress.stop().is_cancelled() {
            return Err(Error::new(
                ErrorKind::Interrupted,
                format!(
                    "{}: interrupted while reading it for its checksum",
                    meta.key
                ),
            ));
        }
        let len = READ_CHUNK.min(meta.size - offset);
        let range = (meta.size > 0).then_some(offset..offset + len);
        let data = retry
            .run(&limit, progress, || {
                store.get(&meta.key, range.clone(), Some(meta))
            })
            .await?
            .data;
        pieces.push((sums(&data, false).crc64, data.len() as u64));
        if let Some(h) = md5.as_mut() {
            h.update(&data);
        }
        offset += len;
        if offset >= meta.size {
            break;
        }
    }
    Ok((combine_crc64(pieces), md5.map(|h| h.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_only_when_meaningful() {
        let meta = |e: &str| {
            let mut m = ObjectMeta::new("k", 1);
            m.etag = Some(e.to_string());
            m
        };
        let md5a = "0123456789abcdef0123456789abcdef";
        let md5b = "ffffffffffffffffffffffffffffffff";
        assert!(etag_comparison(&meta(md5a), &meta(md5b)).is_some_and(|(x, y)| x != y));
        assert!(
            etag_comparison(&meta(md5a), &meta(&md5a.to_uppercase())).is_some_and(|(x, y)| x == y)
        );
        assert!(etag_comparison(&meta("abc-3"), &meta("abc-3")).is_some());
        assert!(etag_comparison(&meta(md5a), &meta("abc-3")).is_none());
        assert!(etag_comparison(&meta("abc-3"), &meta("abd-3")).is_none());
        assert!(etag_comparison(&meta("opaque"), &meta("opaque")).is_none());
        let mut kms = meta(md5a);
        kms.opaque_etag = true;
        assert!(
            etag_comparison(&kms, &meta(md5a)).is_none(),
            "an ETag its store calls opaque is no content MD5, even when equal to one"
        );
    }
}
