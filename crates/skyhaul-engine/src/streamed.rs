//! Whole objects streamed from the source's read into the destination's write.
//!
//! A buffered copy holds each object whole, twice over in time: first while it is read, then
//! while it is written. Between stores that stream (S3 and its kind, file systems) nothing
//! needs the whole object at once, as long as its checks still come before the object is
//! visible:
//! - Into a store whose ETags are content MD5s (S3), the source's content MD5 (its ETag)
//!   goes with the write as `Content-MD5`: the destination checks the bytes end to end (AWS
//!   refuses a body that does not match) and the ETag it answers with is compared as well,
//!   for servers that do not check. So only sources whose ETag is that MD5 stream there; a
//!   file, whose MD5 is known only after reading it, is buffered and hashed first. (Reading
//!   a file ahead for its MD5 and then streaming it was tried: a quarter of the memory, but
//!   more CPU and wall time, `bench/results/local-to-s3-2026-11-22.md`.)
//! - Into a file system, the bytes are hashed on the way and compared with the source's
//!   content MD5 (where it has one) and full-object checksum (where its read reported one)
//!   before the last chunk is handed over, so a corrupt read ends the write in an error and
//!   its temporary file is never renamed into place.
//!
//! A body that breaks off or holds another size fails the write before the store has it
//! whole, so no partial object is ever stored. An object in flight costs a few chunks of
//! memory, and its write starts with the first bytes read instead of after the last. A retry
//! reads the object again. The CRC64-NVME of the bytes is summed on the way, for the journal,
//! the report and the verification of a local copy; it is not stored with an S3 object
//! (metadata goes with the headers, before the bytes), which the object's content-MD5 ETag
//! makes up for in later comparisons.

use crate::attributes::carry;
use crate::copy::{check_stored, expected_etag};
use crate::integrity::{md5_mismatch, source_md5, worth_checking, FullCheck};
use crate::limiter::Slot;
use crate::run::Ctx;
use crate::verify::Copied;
use crc_fast::{CrcAlgorithm, Digest};
use futures::StreamExt;
use md5::{Digest as _, Md5};
use skyhaul_store::{Chunks, Error, ErrorKind, FullChecksum, ObjectMeta, PutOptions, Result};
use std::sync::{Arc, OnceLock};

/// Memory counted per streamed object: two of the chunks a file system's stream reads or
/// gathers for a write, more than the HTTP client holds (tens of KiB per chunk); socket
/// buffers are the kernel's.
const STREAM_HELD: u64 = 2 * skyhaul_store::LOCAL_CHUNK as u64;

/// Whether `src`, copied whole, goes by [`copy_streamed`]: both stores stream, and where the
/// destination needs the content MD5 before the bytes, the source's ETag gives it. A listed
/// ETag that is no MD5 (an object uploaded in parts) is buffered and hashed instead, as is
/// every object of a source whose reads have said its ETags are not MD5s (SSE-KMS); a
/// listing without ETags is decided by the read's.
pub(crate) fn streamable(ctx: &Ctx, src: &ObjectMeta) -> bool {
    let (from, to) = (ctx.src.as_ref(), ctx.dst.as_ref());
    from.streams() && to.streams() && (!to.etags_are_md5() || ctx.streams_md5(src))
}

/// Copies `src` whole by streaming it, or returns `None` when its read shows an ETag that
/// is no MD5, for the caller to copy it buffered.
pub(crate) async fn copy_streamed(
    ctx: &Arc<Ctx>,
    src: &ObjectMeta,
    dst_key: &str,
    put: &PutOptions,
) -> Result<Option<Copied>> {
    let target = format!("{}/{dst_key}", ctx.dst.name().trim_end_matches('/'));
    let source = format!("{}/{}", ctx.src.name().trim_end_matches('/'), src.key);
    let md5_first = ctx.dst.etags_are_md5();
    let memory = ctx.budget.reserve(src.size.min(STREAM_HELD)).await;
    let (retry, progress) = (&ctx.opts.retry, ctx.progress.as_ref());
    // The source is opened before a destination slot is taken, so a source that is slow to
    // answer (or retried) holds no destination connection. A mismatch of checksums is not
    // retried here: `copy_with_retries` copies the object again a bounded number of times,
    // and a mismatch that lasts (an ETag that only looks like an MD5) fails fast.
    let mut tries = retry.tries(&ctx.dst_limit, progress);
    let (written, md5, crc) = loop {
        ctx.pace(&src.key, src.size).await?;
        let (streamed, slot) = retry
            .run_holding(&ctx.src_limit, progress, || {
                ctx.src.get_stream(&src.key, Some(src))
            })
            .await?;
        ctx.saw_source_etag(streamed.opaque_etag);
        let md5 = source_md5(src, streamed.etag.as_deref(), streamed.opaque_etag);
        if md5_first && md5.is_none() {
            return Ok(None);
        }
        let crc = Arc::new(OnceLock::new());
        let hashed = !md5_first && ctx.src.etags_are_md5();
        let expected = Expected {
            target: source.clone(),
            md5: md5.filter(|_| hashed),
            full: worth_checking(streamed.checksum, md5.is_some() && (hashed || md5_first)),
        };
        let mut put = put.clone();
        carry(&mut put, &src.key, &streamed.headers, &streamed.metadata);
        let body = summed(streamed.body, src.size, expected, crc.clone(), slot);
        let sent_md5 = md5.filter(|_| md5_first);
        let dst_slot = ctx.dst_limit.acquire().await;
        ctx.not_stopped(&src.key)?;
        let written = tries
            .attempt(ctx.dst.put_stream(dst_key, body, sent_md5, &put))
            .await
            .and_then(|w| check_stored(&target, w.content_md5(), sent_md5).map(|()| w));
        drop(dst_slot);
        match written {
            Ok(w) => {
                ctx.dst_limit.on_success();
                let crc = crc.get().copied().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!("{target}: the write ended before the whole body was read"),
                    )
                })?;
                break (w, sent_md5, crc);
            }
            Err(e) if e.kind == ErrorKind::Corrupt => return Err(e),
            Err(e) => tries.after(e).await?,
        }
    };
    let copied = Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64: Some(crc),
        etag: expected_etag(ctx.dst.as_ref(), &written, md5),
        written_etag: written.etag,
        server_side: false,
        earlier: false,
    };
    ctx.resume.done_holding(src, &copied, memory);
    ctx.progress.add_moved(src.size);
    Ok(Some(copied))
}

/// What a streamed body must match before its last chunk is handed over.
struct Expected {
    /// The source object's name, for the error.
    target: String,
    /// The source's content MD5, to hash the bytes for.
    md5: Option<[u8; 16]>,
    /// The source's full-object checksum ([`worth_checking`]).
    full: Option<FullChecksum>,
}

/// `body` as it is read, its CRC64-NVME left in `crc` once `size` bytes have passed (a
/// request body of known length may not be polled past its last byte), holding the source's
/// connection slot for as long as the body is in use. The bytes are checked against what is
/// `expected` of them, and a body that does not match ends in an error in place of its last
/// chunk, so the write never completes.
fn summed(
    body: Chunks,
    size: u64,
    expected: Expected,
    crc: Arc<OnceLock<u64>>,
    slot: Slot,
) -> Chunks {
    let mut sums = Sums {
        crc: Digest::new(CrcAlgorithm::Crc64Nvme),
        md5: expected.md5.map(|want| (Md5::new(), want)),
        full: expected.full.map(FullCheck::new),
        target: expected.target,
        seen: 0,
        out: crc,
        _slot: slot,
    };
    if size == 0 {
        if let Err(e) = sums.finish() {
            return futures::stream::once(async { Err(e) }).boxed();
        }
    }
    futures::stream::unfold(Some((body, sums)), move |state| async move {
        let (mut body, mut sums) = state?;
        match body.next().await? {
            Ok(chunk) => {
                sums.add(&chunk);
                if sums.seen == size {
                    if let Err(e) = sums.finish() {
                        return Some((Err(e), None));
                    }
                }
                Some((Ok(chunk), Some((body, sums))))
            }
            // Nothing after an error: the write fails with it.
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// What [`summed`] keeps while the body passes.
struct Sums {
    crc: Digest,
    md5: Option<(Md5, [u8; 16])>,
    full: Option<FullCheck>,
    target: String,
    seen: u64,
    out: Arc<OnceLock<u64>>,
    /// The source's connection slot, given back when the body is done with.
    _slot: Slot,
}

impl Sums {
    fn add(&mut self, chunk: &[u8]) {
        self.crc.update(chunk);
        if let Some((md5, _)) = &mut self.md5 {
            md5.update(chunk);
        }
        if let Some(full) = &mut self.full {
            full.update(chunk);
        }
        self.seen += chunk.len() as u64;
    }

    /// Leaves the CRC for the caller, once the checks that were asked for have passed.
    fn finish(&mut self) -> Result<()> {
        if let Some((md5, want)) = self.md5.take() {
            let got: [u8; 16] = md5.finalize().into();
            if got != want {
                return Err(md5_mismatch(&self.target, want, got));
            }
        }
        let crc = self.crc.finalize();
        if let Some(full) = self.full.take() {
            full.finish(&self.target, crc)?;
        }
        let _ = self.out.set(crc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::sums;
    use crate::limiter::AdaptiveLimit;
    use bytes::Bytes;
    use futures::TryStreamExt;

    fn body(data: &[u8]) -> Chunks {
        let chunks: Vec<Result<Bytes>> = data
            .chunks(1000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    async fn run(data: &[u8], md5: Option<[u8; 16]>) -> (Vec<Result<Bytes>>, Option<u64>) {
        run_full(data, md5, None).await
    }

    async fn run_full(
        data: &[u8],
        md5: Option<[u8; 16]>,
        full: Option<FullChecksum>,
    ) -> (Vec<Result<Bytes>>, Option<u64>) {
        let slot = AdaptiveLimit::new(1).acquire().await;
        let crc = Arc::new(OnceLock::new());
        let expected = Expected {
            target: "src/k".to_string(),
            md5,
            full,
        };
        let out = summed(body(data), data.len() as u64, expected, crc.clone(), slot);
        (out.collect().await, crc.get().copied())
    }

    #[tokio::test]
    async fn bytes_pass_summed_and_a_wrong_md5_replaces_the_last_chunk() {
        let data: Vec<u8> = (0..4500u32).map(|i| (i % 251) as u8).collect();
        let want = sums(&data, true);
        let (out, crc) = run(&data, want.md5).await;
        let got: Vec<Bytes> = futures::stream::iter(out).try_collect().await.unwrap();
        assert_eq!(got.concat(), data);
        assert_eq!(crc, Some(want.crc64));

        let (out, crc) = run(&data, Some([0; 16])).await;
        assert_eq!(
            out.len(),
            5,
            "four chunks, then the error instead of the fifth"
        );
        let err = out.last().unwrap().as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
        assert!(err.message.starts_with("src/k: checksum mismatch"), "{err}");
        assert_eq!(crc, None, "no CRC for bytes that did not check out");

        let (out, crc) = run(b"", Some(sums(b"", true).md5.unwrap())).await;
        assert!(out.is_empty());
        assert_eq!(crc, Some(sums(b"", false).crc64));
        let (out, _) = run(b"", Some([1; 16])).await;
        assert_eq!(out.len(), 1, "an empty body that should not be empty fails");
    }

    #[tokio::test]
    async fn a_wrong_full_checksum_replaces_the_last_chunk() {
        let data: Vec<u8> = (0..4500u32).map(|i| (i % 241) as u8).collect();
        let crc32 = crc_fast::checksum(CrcAlgorithm::Crc32IsoHdlc, &data) as u32;
        let (out, crc) = run_full(&data, None, Some(FullChecksum::Crc32(crc32))).await;
        assert!(out.iter().all(|c| c.is_ok()));
        assert_eq!(crc, Some(sums(&data, false).crc64));

        let (out, crc) = run_full(&data, None, Some(FullChecksum::Crc32(crc32 ^ 4))).await;
        assert_eq!(out.len(), 5, "four chunks, then the error");
        let err = out.last().unwrap().as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
        assert!(err.message.contains("the source records CRC32"), "{err}");
        assert_eq!(crc, None);
        let wrong_crc64 = FullChecksum::Crc64Nvme(sums(&data, false).crc64 ^ 1);
        let (out, _) = run_full(&data, None, Some(wrong_crc64)).await;
        assert!(out.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn the_source_slot_is_held_until_the_body_is_done_with() {
        let limit = AdaptiveLimit::new(1);
        let slot = limit.acquire().await;
        let expected = Expected {
            target: "src/k".to_string(),
            md5: None,
            full: None,
        };
        let out = summed(body(b"abc"), 3, expected, Arc::new(OnceLock::new()), slot);
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), limit.acquire());
        assert!(
            second.await.is_err(),
            "the slot is taken while the body lives"
        );
        drop(out);
        let second = tokio::time::timeout(std::time::Duration::from_millis(500), limit.acquire());
        assert!(second.await.is_ok(), "and given back with it");
    }
}
