//! Whole objects streamed from the source's read into the destination's write.
//!
//! A buffered copy holds each object whole, twice over in time: first while it is read, then
//! while it is written. Between stores that stream (S3 and its kind, file systems) nothing
//! needs the whole object at once, as long as its checks still come before the object is
//! visible:
//! - Into a store whose ETags are content MD5s (S3), the source's content MD5 (its ETag)
//!   goes with the write as `Content-MD5`: the destination checks the bytes end to end (AWS
//!   refuses a body that does not match) and the ETag it answers with is compared as well,
//!   for servers that do not check. So only sources whose ETag is that MD5 stream there, and
//!   files, whose reads are free: a file is read once ahead for its MD5 and CRC64-NVME (as
//!   rclone does), then streamed, and a file whose bytes differ from that first read (a writer
//!   at work) ends its write in an error. Sources whose ETag is no MD5 are buffered and
//!   hashed first.
//! - Into a file system, the bytes are hashed on the way and compared with the source's
//!   content MD5 (where it has one) before the last chunk is handed over, so a corrupt read
//!   ends the write in an error and its temporary file is never renamed into place.
//!
//! A body that breaks off or holds another size fails the write before the store has it
//! whole, so no partial object is ever stored. An object in flight costs a few chunks of
//! memory, and its write starts with the first bytes read instead of after the last. A retry
//! reads the object again. The CRC64-NVME of the bytes is summed on the way, for the journal,
//! the report and the verification of a local copy. It is stored with an S3 object only when
//! known before the write (a file's, from the read ahead): metadata goes with the headers,
//! before the bytes. The content-MD5 ETag makes up for it in later comparisons.

use crate::copy::check_stored;
use crate::integrity::{md5_mismatch, plain_md5, source_md5};
use crate::limiter::Slot;
use crate::run::Ctx;
use crate::verify::Copied;
use crc_fast::{CrcAlgorithm, Digest};
use futures::StreamExt;
use md5::{Digest as _, Md5};
use skyhaul_store::{Chunks, Error, ErrorKind, ObjectMeta, PutOptions, Result};
use std::sync::{Arc, OnceLock};

/// Memory counted per streamed object: two of the chunks a file system's stream reads or
/// gathers for a write, more than the HTTP client holds (tens of KiB per chunk); socket
/// buffers are the kernel's.
const STREAM_HELD: u64 = 2 * skyhaul_store::LOCAL_CHUNK as u64;

/// Whether `src`, copied whole, goes by [`copy_streamed`]: both stores stream, and where the
/// destination needs the content MD5 before the bytes, the source's ETag gives it. A listed
/// ETag that is no MD5 (an object uploaded in parts) is buffered and hashed instead; a
/// listing without ETags is decided by the read's.
pub(crate) fn streamable(ctx: &Ctx, src: &ObjectMeta) -> bool {
    let (from, to) = (ctx.src.as_ref(), ctx.dst.as_ref());
    let md5_first = to.etags_are_md5();
    let md5_known = from.rereads_are_free()
        || (from.etags_are_md5()
            && src
                .etag
                .as_deref()
                .is_none_or(|e| plain_md5(Some(e)).is_some()));
    from.streams() && to.streams() && (!md5_first || md5_known)
}

/// The content MD5 and CRC64-NVME of a source whose reads are free (a file), read ahead of a
/// streamed write that needs the MD5 before its first byte.
async fn sums_ahead(ctx: &Ctx, src: &ObjectMeta) -> Result<([u8; 16], u64)> {
    ctx.opts
        .retry
        .run(&ctx.src_limit, &ctx.progress, || async {
            let mut body = ctx.src.get_stream(&src.key, Some(src)).await?.body;
            let (mut md5, mut crc) = (Md5::new(), Digest::new(CrcAlgorithm::Crc64Nvme));
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                md5.update(&chunk);
                crc.update(&chunk);
            }
            Ok((md5.finalize().into(), crc.finalize()))
        })
        .await
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
    let ahead = match md5_first && ctx.src.rereads_are_free() {
        true => Some(sums_ahead(ctx, src).await?),
        false => None,
    };
    let mut put = put.clone();
    if let Some((_, crc)) = ahead {
        put.set_crc64nvme(crc);
    }
    let mut tries = retry.tries(&ctx.dst_limit, progress);
    let (written_etag, md5, crc) = loop {
        if let Some(limit) = &ctx.opts.bwlimit {
            limit.take(src.size).await;
        }
        let (streamed, slot) = retry
            .run_holding(&ctx.src_limit, progress, || {
                ctx.src.get_stream(&src.key, Some(src))
            })
            .await?;
        let md5 = match ahead {
            Some((md5, _)) => Some(md5),
            None => source_md5(src, streamed.etag.as_deref()),
        };
        if md5_first && md5.is_none() {
            return Ok(None);
        }
        let crc = Arc::new(OnceLock::new());
        let hashed = !md5_first && ctx.src.etags_are_md5();
        let expect = match ahead {
            Some((_, crc)) => Some(Expect::Crc(crc)),
            None => md5.filter(|_| hashed).map(Expect::Md5),
        };
        let check = expect.map(|e| (e, source.clone()));
        let body = summed(streamed.body, src.size, check, crc.clone(), slot);
        let sent_md5 = md5.filter(|_| md5_first);
        let dst_slot = ctx.dst_limit.acquire().await;
        let written = ctx
            .dst
            .put_stream(dst_key, body, sent_md5, &put)
            .await
            .and_then(|w| check_stored(&target, w.etag.as_deref(), sent_md5).map(|()| w));
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
                break (w.etag, sent_md5, crc);
            }
            Err(e) if e.kind == ErrorKind::Corrupt => return Err(e),
            Err(e) => tries.after(e).await?,
        }
    };
    ctx.resume.done_holding(src, dst_key, Some(crc), memory);
    ctx.progress.add_moved(src.size);
    Ok(Some(Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64: Some(crc),
        etag: md5.map(hex::encode),
        written_etag,
        server_side: false,
    }))
}

/// `body` as it is read, its CRC64-NVME left in `crc` once `size` bytes have passed (a
/// request body of known length may not be polled past its last byte), holding the source's
/// connection slot for as long as the body is in use. With `check` (what the bytes must hash
/// to, and the source's name), a body that does not ends in an error in place of its last
/// chunk, so the write never completes.
fn summed(
    body: Chunks,
    size: u64,
    check: Option<(Expect, String)>,
    crc: Arc<OnceLock<u64>>,
    slot: Slot,
) -> Chunks {
    let mut sums = Sums {
        crc: Digest::new(CrcAlgorithm::Crc64Nvme),
        md5: matches!(check, Some((Expect::Md5(_), _))).then(Md5::new),
        check,
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

/// What a streamed body must hash to, checked before its last chunk is handed over.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The source's content MD5 (its ETag).
    Md5([u8; 16]),
    /// The CRC of a read ahead of the same file: a file rewritten between the two reads (with
    /// the same size and time) must not be written.
    Crc(u64),
}

/// What [`summed`] keeps while the body passes.
struct Sums {
    crc: Digest,
    md5: Option<Md5>,
    check: Option<(Expect, String)>,
    seen: u64,
    out: Arc<OnceLock<u64>>,
    /// The source's connection slot, given back when the body is done with.
    _slot: Slot,
}

impl Sums {
    fn add(&mut self, chunk: &[u8]) {
        self.crc.update(chunk);
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk);
        }
        self.seen += chunk.len() as u64;
    }

    /// Leaves the CRC for the caller, once the bytes have hashed to what was expected.
    fn finish(&mut self) -> Result<()> {
        let crc = self.crc.finalize();
        match (self.check.take(), self.md5.take()) {
            (Some((Expect::Md5(want), target)), Some(md5)) => {
                let got: [u8; 16] = md5.finalize().into();
                if got != want {
                    return Err(md5_mismatch(&target, want, got));
                }
            }
            (Some((Expect::Crc(want), target)), _) if crc != want => {
                return Err(Error::new(
                    ErrorKind::SourceChanged,
                    format!("{target}: file changed while it was being copied (its bytes differ from a read a moment before)"),
                ));
            }
            _ => {}
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
        let slot = AdaptiveLimit::new(1).acquire().await;
        let crc = Arc::new(OnceLock::new());
        let check = md5.map(|m| (Expect::Md5(m), "src/k".to_string()));
        let out = summed(body(data), data.len() as u64, check, crc.clone(), slot);
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

    /// A file read ahead for its MD5 and then streamed: bytes that differ from the first
    /// read (rewritten with the same size and time) end the body as a changed source.
    #[tokio::test]
    async fn a_file_that_differs_from_its_read_ahead_is_a_changed_source() {
        let data = vec![5u8; 2500];
        let crc = sums(&data, false).crc64;
        for (want, ok) in [(crc, true), (crc ^ 1, false)] {
            let slot = AdaptiveLimit::new(1).acquire().await;
            let out_crc = Arc::new(OnceLock::new());
            let check = Some((Expect::Crc(want), "dir/f".to_string()));
            let out: Vec<Result<Bytes>> = summed(body(&data), 2500, check, out_crc.clone(), slot)
                .collect()
                .await;
            assert_eq!(out.len(), 3);
            match ok {
                true => assert!(out.iter().all(Result::is_ok) && out_crc.get() == Some(&crc)),
                false => {
                    let err = out[2].as_ref().unwrap_err();
                    assert_eq!(err.kind, ErrorKind::SourceChanged, "{err}");
                    assert!(err.message.starts_with("dir/f: file changed"), "{err}");
                    assert_eq!(out_crc.get(), None);
                }
            }
        }
    }

    #[tokio::test]
    async fn the_source_slot_is_held_until_the_body_is_done_with() {
        let limit = AdaptiveLimit::new(1);
        let slot = limit.acquire().await;
        let out = summed(body(b"abc"), 3, None, Arc::new(OnceLock::new()), slot);
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
