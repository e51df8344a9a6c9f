//! Copying one object: whole (one read and one write, or one server-side copy), or striped
//! into parts when it is large (see [`crate::striped`]). Whatever the way, the bytes are
//! checked against the source's checksums and against what the destination says it stored.

use crate::attributes::carry;
use crate::content::read_sums;
use crate::plan::MIB;
use crate::run::Ctx;
use crate::streamed::{copy_streamed, streamable};
use crate::striped::multipart;
use crate::verify::Copied;
use skyhaul_store::{Error, ErrorKind, ObjectMeta, Payload, PutOptions, Result, Written};
use std::sync::Arc;

/// Copies one object, starting over when its checksums do not add up at the end (a part
/// corrupted in a way no single request could notice). Returns what was written, which is
/// already recorded in the journal (where the transfer keeps one).
pub(crate) async fn copy_with_retries(
    ctx: &Arc<Ctx>,
    src: &ObjectMeta,
    dst_key: &str,
) -> Result<Copied> {
    let mut attempt = 0;
    loop {
        match copy_object(ctx, src, dst_key).await {
            Err(e) if e.kind == ErrorKind::Corrupt && attempt < 2 => {
                tracing::warn!("{e}; copying the object again");
                ctx.progress.add_retry();
                attempt += 1;
            }
            r => return r,
        }
    }
}

async fn copy_object(ctx: &Arc<Ctx>, src: &ObjectMeta, dst_key: &str) -> Result<Copied> {
    ctx.not_stopped(&src.key)?;
    let mut put = PutOptions {
        size: src.size,
        mtime: src.mtime,
        storage_class: ctx.opts.storage_class.clone(),
        ..Default::default()
    };
    let dst = &ctx.dst;
    let mut copied = Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64: None,
        etag: None,
        written_etag: None,
        server_side: false,
        earlier: false,
    };
    if let Some(container) = &ctx.copy_from {
        copied.server_side = true;
        if !stripes(ctx, src.size) {
            ctx.resume.announced().await;
            let written = ctx
                .opts
                .retry
                .run(&ctx.dst_limit, &ctx.progress, || async {
                    ctx.not_stopped(&src.key)?;
                    dst.copy_object(container, src, dst_key, &put).await
                })
                .await?;
            // A whole-object copy keeps the content, so a content-MD5 ETag stays the same
            // (the store has compared the copy's with the listed one). A copy into a bucket
            // that encrypts with SSE-KMS, or from an object it encrypts, changes the ETag.
            copied.etag = match written.etag {
                Some(_) => written.content_md5().map(str::to_string),
                None => src.content_md5().map(str::to_string),
            };
            ctx.resume.done(src, &copied);
            ctx.progress.add_moved(src.size);
            return Ok(copied);
        }
        let src = prepare_upload(ctx, src, &mut put).await?;
        ctx.resume.announced().await;
        // Its record, with the ETag the parts make, is the one journaled.
        return multipart(ctx, &src, dst_key, &put, true).await;
    }
    if stripes(ctx, src.size) {
        let src = prepare_upload(ctx, src, &mut put).await?;
        ctx.resume.announced().await;
        return multipart(ctx, &src, dst_key, &put, false).await;
    }
    if streamable(ctx, src) {
        ctx.resume.announced().await;
        if let Some(copied) = copy_streamed(ctx, src, dst_key, &put).await? {
            return Ok(copied);
        }
    }
    // Where the destination checks `Content-MD5` or reports the MD5 it stored, the source's
    // own MD5 (its ETag) sent as `Content-MD5` has the destination check the bytes end to
    // end, so they need not be hashed here: MD5 is most of the CPU a copy costs.
    let relay_md5 = ctx.streams_md5(src) && dst.etags_are_md5();
    let with_md5 = !relay_md5 && (ctx.src.etags_are_md5() || dst.etags_are_md5());
    let memory = ctx.budget.reserve(src.size).await;
    let (read, mut sums, read_md5) = ctx.read_checked(src, 0..src.size, with_md5).await?;
    carry(&mut put, &src.key, &read.headers, &read.metadata);
    let data = read.data;
    let source_md5 = read_md5.filter(|_| relay_md5);
    if relay_md5 && source_md5.is_none() {
        // The source's ETag is no MD5 (a multipart or SSE-KMS source): hash the bytes.
        sums = crate::integrity::sums(&data, true);
    }
    let md5 = source_md5.or(sums.md5);
    put.set_crc64nvme(sums.crc64);
    ctx.resume.announced().await;
    let target = format!("{}/{dst_key}", dst.name().trim_end_matches('/'));
    let written = ctx
        .opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || async {
            ctx.not_stopped(&src.key)?;
            let payload = Payload {
                data: data.clone(),
                md5,
            };
            let stored = match dst.put(dst_key, payload, &put).await {
                Ok(written) => check_stored(&target, written.content_md5(), md5).map(|()| written),
                Err(e) => Err(e),
            };
            match stored {
                // With the source's MD5 relayed, a mismatch may be a download corrupted on
                // its way here: then sending the same bytes again cannot help, reading can.
                Err(e) if e.kind == ErrorKind::Corrupt && source_md5.is_some() => {
                    match crate::integrity::sums(&data, true).md5 == source_md5 {
                        true => Err(e),
                        false => Ok(Err(Error::new(
                            ErrorKind::Corrupt,
                            format!("{target}: the bytes read do not hash to the source's MD5"),
                        ))),
                    }
                }
                r => r.map(Ok),
            }
        })
        .await??;
    copied.crc64 = Some(sums.crc64);
    copied.etag = expected_etag(dst.as_ref(), &written, md5);
    copied.written_etag = written.etag;
    ctx.resume.done_holding(src, &copied, memory);
    ctx.progress.add_moved(src.size);
    Ok(copied)
}

/// Whether an object of `size` bytes is moved in parts rather than whole: above the
/// multipart threshold (or the store's single-request limit); for server-side copies, which
/// cost no bandwidth here, only above the larger of the threshold and 256 MiB (never for
/// stores that copy whole objects of every size).
pub(crate) fn stripes(ctx: &Ctx, size: u64) -> bool {
    let limits = ctx.dst.limits();
    let whole_max = match ctx.copy_from {
        // Some stores copy whole objects of every size in one request.
        Some(_) if ctx.dst.copies_whole_objects() => return false,
        Some(_) => ctx.opts.multipart_threshold.max(256 * MIB),
        None => ctx.opts.multipart_threshold,
    };
    size > whole_max.min(limits.max_single_put)
}

/// The ETag the destination will list for an object written whole from bytes with `md5`:
/// that MD5, where the store's ETags are content MD5s and its answer did not say otherwise.
pub(crate) fn expected_etag(
    dst: &dyn skyhaul_store::Store,
    written: &Written,
    md5: Option<[u8; 16]>,
) -> Option<String> {
    md5.filter(|_| dst.etags_are_md5() && !written.opaque_etag)
        .map(hex::encode)
}

/// Fails when the store reports a content MD5 (`stored`, from its answer) other than the
/// one of the bytes we sent: servers that ignore `Content-MD5` would otherwise keep a body
/// corrupted on the way.
pub(crate) fn check_stored(
    target: &str,
    stored: Option<&str>,
    sent: Option<[u8; 16]>,
) -> Result<()> {
    match (stored, sent) {
        (Some(stored), Some(sent)) if !stored.eq_ignore_ascii_case(&hex::encode(sent)) => {
            Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{target}: the destination stored different bytes (ETag {stored}, sent MD5 {})",
                    hex::encode(sent)
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Learns what a multipart upload of `src` needs before it starts, since metadata is given
/// when an upload is created, not when it is completed. Gives `put` the source's content
/// headers and user metadata ([`carry`]), and its full-object CRC: what the source records
/// (one HEAD), or, from a file system, computed by reading the file once more, as rclone
/// does with MD5 for the same reason. The parts' CRCs must add up to it before the upload
/// is completed. Returns `src` with what the HEAD says of its ETag (an SSE-KMS object's is
/// no MD5, which its listing cannot say).
pub(crate) async fn prepare_upload(
    ctx: &Ctx,
    src: &ObjectMeta,
    put: &mut PutOptions,
) -> Result<ObjectMeta> {
    let (store, retry) = (ctx.src.as_ref(), &ctx.opts.retry);
    let mut src = src.clone();
    let (mut headers, mut metadata) = Default::default();
    if store.rereads_are_free() {
        let _memory = ctx
            .budget
            .reserve(src.size.min(crate::content::READ_CHUNK))
            .await;
        let (crc, _) = read_sums(store, &src, false, retry, &ctx.progress).await?;
        put.set_crc64nvme(crc);
    } else {
        let head = retry
            .run(&ctx.src_limit, &ctx.progress, || store.head(&src.key))
            .await?;
        if let Some(head) = head.filter(|h| h.size == src.size) {
            if let Some(crc) = head.crc64nvme() {
                put.set_crc64nvme(crc);
            }
            src.opaque_etag = head.opaque_etag;
            ctx.saw_source_etag(head.opaque_etag);
            headers = head.headers.map(|h| *h).unwrap_or_default();
            metadata = head.metadata;
        }
    }
    carry(put, &src.key, &headers, &metadata);
    Ok(src)
}
