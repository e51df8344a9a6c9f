//! Striped copies of large objects: a multipart upload whose parts are read (or copied
//! server-side) and written concurrently, resumed from the journal after an interruption,
//! and completed only when every part is in and the checksums agree.

use crate::copy::check_stored;
use crate::integrity::{combine_crc64, multipart_etag, ChunkSums, OrderedMd5};
use crate::plan::{part_size, MIB};
use crate::resume::decode_sums;
use crate::retry::RetryPolicy;
use crate::run::Ctx;
use crate::verify::Copied;
use skyhaul_store::{
    CompletedPart, Error, ErrorKind, MultipartUpload, ObjectMeta, PartSpec, Payload, PutOptions,
    Result,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::task::JoinSet;

/// Striped copy of a large object: parts are read (or copied server-side) and written
/// concurrently, each holding its bytes in the memory budget, and the upload is completed
/// only when every part is in and the checksums agree. Any failure aborts the upload.
pub(crate) async fn multipart(
    ctx: &Arc<Ctx>,
    src: &ObjectMeta,
    dst_key: &str,
    put: &PutOptions,
    server_side: bool,
) -> Result<Copied> {
    let part = part_size_for(ctx, src, server_side)?;
    // An upload an earlier run left open continues with its finished parts, also one the
    // store copies: a part of a terabyte object copied server-side is still minutes of the
    // store's work, and its rerun would otherwise start over.
    let resumed = ctx.resume.resumable(src, part);
    let earlier = resumed.clone();
    // The parts an earlier run sent count as reused while the attempt lasts: one that
    // fails (the upload gone, the bytes corrupt, Ctrl-C) reused nothing.
    let reused = earlier
        .as_ref()
        .map_or(0, |r| r.parts.iter().map(|p| p.part.len).sum());
    ctx.progress.add_reused(reused);
    let copied = striped(ctx, src, dst_key, put, server_side, part, resumed).await;
    if copied.is_err() {
        ctx.progress.take_back_reused(reused);
    }
    match copied {
        // A journaled upload can be gone although the journal lost its end: killed right
        // after completing it. Servers then say NoSuchUpload (s3s-fs: AccessDenied).
        Err(e)
            if earlier.is_some()
                && matches!(e.kind, ErrorKind::NotFound | ErrorKind::AccessDenied) =>
        {
            let earlier = earlier.expect("checked");
            ctx.resume.finished(&earlier.upload);
            if let Some(copied) =
                completed_earlier(ctx, src, dst_key, part, &earlier, server_side).await
            {
                return Ok(copied);
            }
            // Start afresh once; a real permission problem fails again there.
            tracing::info!(
                "{e}; the journaled upload is gone, starting {} afresh",
                src.key
            );
            striped(ctx, src, dst_key, put, server_side, part, None).await
        }
        r => r,
    }
}

/// The part size a striped copy of `src` uses: bigger for server-side copies, whose parts
/// cost one request each and no bandwidth here.
pub(crate) fn part_size_for(ctx: &Ctx, src: &ObjectMeta, server_side: bool) -> Result<u64> {
    let preferred = if server_side {
        ctx.opts.part_size.max(64 * MIB)
    } else {
        ctx.opts.part_size
    };
    part_size(src.size, preferred, &ctx.dst.limits()).ok_or_else(|| {
        Error::new(
            ErrorKind::Other,
            format!(
                "{} bytes is larger than {} can store",
                src.size,
                ctx.dst.name()
            ),
        )
    })
}

/// The destination object, if it is what completing a multipart upload of `src` makes: a
/// completion whose answer was lost (to a retry, or to a killed run) did succeed. It has the
/// source's size and, where the server follows S3, the ETag the parts make (unless it says
/// that ETag is no MD5: SSE-KMS).
async fn already_completed(
    ctx: &Ctx,
    src: &ObjectMeta,
    dst_key: &str,
    expected_etag: Option<&str>,
) -> Option<ObjectMeta> {
    let dst = &ctx.dst;
    let found = ctx
        .opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || dst.head(dst_key))
        .await
        .ok()??;
    let etag_agrees = match (
        expected_etag,
        found
            .etag
            .as_deref()
            .filter(|e| e.contains('-') && !found.opaque_etag),
    ) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    };
    (found.size == src.size && etag_agrees).then_some(found)
}

/// Whether an upload whose every part the journal holds was completed by the run that was
/// interrupted: the destination object then has the source's size and, where the server
/// follows S3, the ETag those parts make.
async fn completed_earlier(
    ctx: &Ctx,
    src: &ObjectMeta,
    dst_key: &str,
    part: u64,
    earlier: &skyhaul_journal::ResumableUpload,
    server_side: bool,
) -> Option<Copied> {
    if earlier.parts.len() as u64 != src.size.div_ceil(part) {
        return None;
    }
    let sums: Vec<Option<ChunkSums>> = earlier
        .parts
        .iter()
        .map(|p| p.checksum.as_deref().and_then(decode_sums))
        .collect();
    let md5s: Option<Vec<[u8; 16]>> = earlier
        .parts
        .iter()
        .zip(&sums)
        .map(|(p, s)| part_md5(&p.part, s.as_ref()))
        .collect();
    let expected_etag = md5s
        .filter(|_| ctx.dst.etags_are_md5())
        .map(|m| multipart_etag(&m));
    let found = already_completed(ctx, src, dst_key, expected_etag.as_deref()).await?;
    let crc64 = sums
        .iter()
        .zip(&earlier.parts)
        .map(|(s, p)| s.map(|s| (s.crc64, p.part.len)))
        .collect::<Option<Vec<_>>>()
        .map(combine_crc64);
    let copied = Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64,
        etag: expected_etag.filter(|_| !found.opaque_etag),
        written_etag: found.etag,
        server_side,
        earlier: false,
    };
    ctx.resume.done(src, &copied);
    ctx.progress.add_reused(src.size);
    Some(copied)
}

/// One striped copy with parts of `part` bytes, continuing `resumed` if given.
async fn striped(
    ctx: &Arc<Ctx>,
    src: &ObjectMeta,
    dst_key: &str,
    put: &PutOptions,
    server_side: bool,
    part: u64,
    resumed: Option<skyhaul_journal::ResumableUpload>,
) -> Result<Copied> {
    let dst = &ctx.dst;
    // The whole-object MD5 is worth computing only when the source's ETag is (or, unknown
    // from the listing, may be) a content MD5 to check it against, and the source records
    // no full-object CRC64-NVME (AWS S3 does for new objects, skyhaul for what it writes):
    // the parts' CRCs must add up to that before the upload is completed, which checks
    // every byte read without a second pass over the object.
    let check_source = !server_side && put.crc64nvme().is_none() && ctx.listed_md5(src);
    let with_md5 = !server_side && (check_source || dst.etags_are_md5());
    // Resumed parts are not read again, so the whole-object source check is not possible.
    let check_source = check_source && resumed.as_ref().is_none_or(|r| r.parts.is_empty());
    let ordered = check_source.then(|| Arc::new(OrderedMd5::default()));
    let mut done = Vec::new();
    let upload = match resumed {
        Some(r) => {
            for p in &r.parts {
                let sums = p.checksum.as_deref().and_then(decode_sums);
                done.push((p.part.clone(), sums, None));
            }
            r.upload
        }
        None => {
            ctx.resume.creating(dst_key).await;
            let attempts = AtomicU32::new(0);
            let upload = ctx
                .opts
                .retry
                .run(&ctx.dst_limit, &ctx.progress, || {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    dst.create_multipart(dst_key, put)
                })
                .await?;
            ctx.resume.started(src, &upload, part);
            // After a retry, an earlier attempt may have created an upload whose answer was
            // lost: the announcement stays, and the end of the run looks for it.
            if attempts.into_inner() == 1 {
                ctx.resume.created(dst_key);
            }
            upload
        }
    };
    let have: std::collections::HashSet<u32> = done.iter().map(|(p, _, _)| p.number).collect();
    let count = src.size.div_ceil(part);
    let mut parts = JoinSet::new();
    let mut failed = None;
    for i in 0..count {
        let offset = i * part;
        let spec = PartSpec {
            number: i as u32 + 1,
            offset,
            len: part.min(src.size - offset),
        };
        if have.contains(&spec.number) {
            continue;
        }
        while let Some(r) = parts.try_join_next() {
            absorb(r, src, &mut done, &mut failed, &mut parts);
        }
        if ctx.cancel.is_cancelled() {
            failed.get_or_insert(ctx.interrupted(&src.key));
        }
        if failed.is_some() {
            break;
        }
        // Budget is taken here, in part order, not inside the tasks: a finished part may
        // wait (holding its budget) for the parts before it to be hashed, so every earlier
        // part must already hold its budget or the two could wait on each other forever.
        let memory = if server_side {
            None
        } else {
            Some(ctx.budget.reserve(spec.len).await)
        };
        let (ctx, src, upload, ordered) =
            (ctx.clone(), src.clone(), upload.clone(), ordered.clone());
        parts.spawn(async move {
            move_part(
                &ctx,
                &src,
                &upload,
                spec,
                server_side,
                with_md5,
                ordered.as_deref(),
                memory,
            )
            .await
        });
    }
    while let Some(r) = parts.join_next().await {
        absorb(r, src, &mut done, &mut failed, &mut parts);
    }
    let target = format!("{}/{dst_key}", dst.name().trim_end_matches('/'));
    // The source's MD5 as its reads vouch for it (none for an SSE-KMS object, whose
    // listed ETag only looks like one).
    let source_md5 = done.iter().find_map(|(_, _, m)| *m);
    if failed.is_none() {
        if let (Some(want), Some(ordered)) = (source_md5, ordered) {
            let got = Arc::try_unwrap(ordered)
                .ok()
                .and_then(|o| o.finish(count as u32));
            if got != Some(want) {
                failed = Some(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{target}: the bytes read do not hash to the source's MD5 {}",
                        hex::encode(want)
                    ),
                ));
            }
        }
    }
    if let Some(e) = failed {
        // Interrupted: the journal keeps the upload and its finished parts for the rerun.
        // Without a journal nothing could resume it, nor find it to abort.
        if e.kind != ErrorKind::Interrupted || ctx.resume.id().is_none() {
            abort(ctx, &upload, e.kind == ErrorKind::Corrupt).await;
        }
        return Err(e);
    }
    complete_upload(ctx, src, dst_key, put, &upload, done, server_side).await
}

/// Completes `upload` of `src` from its finished parts (in any order; each with its
/// checksums where the bytes passed through a worker), once the CRCs agree with the one
/// stored with the object; journals the object done and the upload finished. Any failure
/// aborts the upload. A fleet coordinator calls it with parts sent by many workers.
pub(crate) async fn complete_upload(
    ctx: &Ctx,
    src: &ObjectMeta,
    dst_key: &str,
    put: &PutOptions,
    upload: &MultipartUpload,
    mut done: Vec<PartResult>,
    server_side: bool,
) -> Result<Copied> {
    let dst = &ctx.dst;
    let upload = upload.clone();
    let target = format!("{}/{dst_key}", dst.name().trim_end_matches('/'));
    done.sort_by_key(|(p, _, _)| p.number);
    let crc64 = done
        .iter()
        .map(|(p, s, _)| s.map(|s| (s.crc64, p.len)))
        .collect::<Option<Vec<_>>>()
        .map(combine_crc64);
    // The CRC stored with the object was known before the upload: the parts must match it.
    if let (Some(want), Some(got)) = (put.crc64nvme(), crc64) {
        if want != got {
            abort(ctx, &upload, true).await;
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{target}: the parts read have CRC64-NVME {got:016x}, the source's is \
                     {want:016x} (it changed during the copy, or its recorded checksum is wrong)"
                ),
            ));
        }
    }
    let receipts: Vec<CompletedPart> = done.iter().map(|(p, _, _)| p.clone()).collect();
    let md5s: Option<Vec<[u8; 16]>> = done
        .iter()
        .map(|(p, s, _)| part_md5(p, s.as_ref()))
        .collect();
    let expected_etag = md5s
        .filter(|_| dst.etags_are_md5())
        .map(|m| multipart_etag(&m));
    let result = ctx
        .opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || {
            dst.complete_multipart(&upload, &receipts, put)
        })
        .await;
    let written = match result {
        Ok(w) => w,
        // A complete whose answer was lost succeeded at the server, so its retry finds the
        // upload gone (NoSuchUpload; s3s-fs: AccessDenied). The object is then there, with
        // the source's size and, where predictable, the ETag these parts make.
        Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::AccessDenied) => {
            match already_completed(ctx, src, dst_key, expected_etag.as_deref()).await {
                Some(found) => {
                    tracing::debug!("{e}; the upload was completed by an earlier attempt");
                    skyhaul_store::Written {
                        etag: found.etag,
                        opaque_etag: found.opaque_etag,
                    }
                }
                None => {
                    abort(ctx, &upload, false).await;
                    return Err(e);
                }
            }
        }
        Err(e) => {
            abort(ctx, &upload, false).await;
            return Err(e);
        }
    };

    // Servers that follow S3 return md5-of-part-md5s-N; anything else is not comparable.
    let expected_etag = expected_etag.filter(|_| !written.opaque_etag);
    if let (Some(want), Some(got)) = (
        &expected_etag,
        written.etag.as_deref().filter(|e| e.contains('-')),
    ) {
        if want != got {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{target}: completed ETag {got}, expected {want}"),
            ));
        }
    }
    // Done first, then the upload's end, in one queue: a kill between the two must not
    // leave the journal with neither the object nor its parts.
    let copied = Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64,
        etag: expected_etag,
        written_etag: written.etag,
        server_side,
        earlier: false,
    };
    ctx.resume.done(src, &copied);
    ctx.resume.finished(&upload);
    Ok(copied)
}

/// A part's MD5: that of its bytes as they passed through here; for a part the store
/// copied (now or in an earlier run), which never did, its ETag (the store's own account of
/// the part's MD5) stands in, as a whole-object copy's ETag does.
fn part_md5(part: &CompletedPart, sums: Option<&ChunkSums>) -> Option<[u8; 16]> {
    match sums {
        Some(s) => s.md5,
        None => part.content_md5().and_then(crate::integrity::md5_bytes),
    }
}

/// A part sent: the store's receipt, the checksums of its bytes where they passed through
/// here, and the source's content MD5 as the part's read vouched for it.
pub(crate) type PartResult = (CompletedPart, Option<ChunkSums>, Option<[u8; 16]>);

/// Takes in one finished part task: its result, or the first failure (which stops the rest).
fn absorb(
    r: std::result::Result<Result<PartResult>, tokio::task::JoinError>,
    src: &ObjectMeta,
    done: &mut Vec<PartResult>,
    failed: &mut Option<Error>,
    parts: &mut JoinSet<Result<PartResult>>,
) {
    match r {
        Ok(Ok(p)) => done.push(p),
        // Ctrl-C: parts already sending finish, for the rerun to keep.
        Ok(Err(e)) if e.kind == ErrorKind::Interrupted => {
            failed.get_or_insert(e);
        }
        Ok(Err(e)) => {
            failed.get_or_insert(e);
            parts.abort_all();
        }
        Err(e) if e.is_cancelled() => {}
        Err(e) => {
            failed.get_or_insert(Error::new(
                ErrorKind::Other,
                format!("{}: part task failed: {e}", src.key),
            ));
        }
    }
}

/// Moves one part. `memory` is its share of the budget, taken by the caller in part order
/// (`None` for server-side copies, whose bytes never pass through here).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn move_part(
    ctx: &Ctx,
    src: &ObjectMeta,
    upload: &MultipartUpload,
    spec: PartSpec,
    server_side: bool,
    with_md5: bool,
    ordered: Option<&OrderedMd5>,
    memory: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<PartResult> {
    ctx.not_stopped(&src.key)?;
    let dst = &ctx.dst;
    if let (true, Some(container)) = (server_side, &ctx.copy_from) {
        let done = ctx
            .opts
            .retry
            .run(&ctx.dst_limit, &ctx.progress, || async {
                ctx.not_stopped(&src.key)?;
                dst.copy_part(container, src, upload, spec).await
            })
            .await?;
        ctx.progress.add_moved(spec.len);
        ctx.resume.part(upload, &done, None).await;
        return Ok((done, None, None));
    }
    let (read, sums, source_md5) = ctx.read_checked(src, spec.range(), with_md5).await?;
    let data = read.data;
    let target = format!(
        "{}/{} part {}",
        dst.name().trim_end_matches('/'),
        upload.key,
        spec.number
    );
    let done = ctx
        .opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || async {
            ctx.not_stopped(&src.key)?;
            let part = dst
                .put_part(
                    upload,
                    spec,
                    Payload {
                        data: data.clone(),
                        md5: sums.md5,
                    },
                )
                .await?;
            check_stored(&target, part.content_md5(), sums.md5)?;
            Ok(part)
        })
        .await?;
    ctx.progress.add_moved(spec.len);
    // Journaled while its bytes still count against the budget: what an interruption can
    // make a rerun send again is bounded by the budget.
    ctx.resume.part(upload, &done, Some(&sums)).await;
    if let Some(o) = ordered {
        o.add(spec.number - 1, data, memory);
    }
    Ok((done, Some(sums), source_md5))
}

/// Aborts `upload`. The journal forgets it once the server has, and with `forget` even if
/// the abort fails: when its parts hold bytes known to be wrong, a retry or a rerun would
/// otherwise continue the upload with them (and where the source records no CRC, nothing
/// would notice); a failed part that was only unreachable leaves it for a rerun.
pub(crate) async fn abort(ctx: &Ctx, upload: &MultipartUpload, forget: bool) {
    let dst = &ctx.dst;
    let quick = RetryPolicy {
        retries: 3,
        ..ctx.opts.retry
    };
    let aborted = quick
        .run(&ctx.dst_limit, &ctx.progress, || {
            dst.abort_multipart(upload)
        })
        .await;
    match &aborted {
        // Nothing else knows of it: say what the user must do, and what with.
        Err(e) if ctx.resume.id().is_none() => tracing::warn!(
            "could not abort the upload of {} (upload id {}) at {}: {e}. Without a journal \
             no rerun or `skyhaul clean` finds it: its parts stay stored until it is aborted \
             with the store's own tools, or by a lifecycle rule for incomplete uploads",
            upload.key,
            upload.upload_id,
            dst.name()
        ),
        Err(e) => tracing::warn!("could not abort the upload of {}: {e}", upload.key),
        Ok(()) => {}
    }
    if aborted.is_ok() || forget {
        ctx.resume.finished(upload);
    }
}
