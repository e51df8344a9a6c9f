//! Running a transfer's work piece by piece from outside the transfer loop: what a fleet
//! coordinator and its workers need.
//!
//! [`transfer`](crate::transfer) plans and copies in one process. In a fleet the coordinator
//! plans, creates and completes multipart uploads and keeps the journal, while workers on
//! other machines copy whole objects and single parts. Both sides use the same code as a
//! local transfer (the same checks, retries and journal records) through an [`Executor`],
//! which is the engine's per-transfer context with the steps made callable one at a time.

use crate::copy::{copy_with_retries, prepare_upload, stripes};
use crate::integrity::ChunkSums;
use crate::limiter::AdaptiveLimit;
use crate::open::Endpoint;
use crate::plan::Job;
use crate::progress::Progress;
use crate::report::Report;
use crate::resume::{decode_sums, Resume};
use crate::run::{conclude, identity, preflight, start_planner, Ctx, Planner, TransferOptions};
use crate::striped::{abort, complete_upload, move_part, part_size_for};
use crate::verify::Copied;
use skyhaul_journal::{Journal, TransferId};
use skyhaul_store::{
    CompletedPart, Error, ErrorKind, MultipartUpload, ObjectMeta, PartSpec, PutOptions, Result,
};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A multipart upload the coordinator created (or found open in the journal), whose parts
/// workers send.
#[derive(Debug, Clone)]
pub struct OpenUpload {
    pub upload: MultipartUpload,
    pub part_size: u64,
    /// Parts are copied by the store itself (same account and endpoint).
    pub server_side: bool,
    /// What the object is created with (its full-object CRC, when known beforehand).
    pub put: PutOptions,
    /// Parts an earlier run already sent, with their checksums as journaled.
    pub done: Vec<(CompletedPart, Option<String>)>,
}

impl OpenUpload {
    /// Every part of an object of `size` bytes that is not done yet.
    pub fn missing_parts(&self, size: u64) -> Vec<PartSpec> {
        let have: std::collections::HashSet<u32> =
            self.done.iter().map(|(p, _)| p.number).collect();
        (0..size.div_ceil(self.part_size))
            .map(|i| PartSpec {
                number: i as u32 + 1,
                offset: i * self.part_size,
                len: self.part_size.min(size - i * self.part_size),
            })
            .filter(|p| !have.contains(&p.number))
            .collect()
    }
}

/// One transfer's shared context (connection limits, memory budget, retries, journal),
/// with its steps callable one at a time.
pub struct Executor {
    ctx: Arc<Ctx>,
}

impl Executor {
    /// A worker's executor: it keeps no journal (the coordinator does).
    pub fn new(
        src: &Endpoint,
        dst: &Endpoint,
        opts: &TransferOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Executor {
        Executor {
            ctx: Arc::new(Ctx::new(src, dst, opts, progress, cancel, Resume::none())),
        }
    }

    /// The coordinator's executor: checks both sides, then begins (or resumes) the transfer
    /// in `journal` under the same identity a local run of the same command has, so either
    /// can continue what the other left.
    pub async fn coordinator(
        src: &Endpoint,
        dst: &Endpoint,
        opts: &TransferOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
        journal: Option<Arc<Journal>>,
    ) -> Result<Executor> {
        preflight(src, dst, opts, &progress, true).await?;
        let resume = match journal {
            Some(j) => Resume::begin(j, &identity(src, dst, opts))
                .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?,
            None => Resume::none(),
        };
        let exec = Executor {
            ctx: Arc::new(Ctx::new(src, dst, opts, progress, cancel, resume)),
        };
        let (ctx, opts) = (&exec.ctx, &exec.ctx.opts);
        ctx.resume
            .sweep(ctx.dst.as_ref(), &opts.retry, &ctx.progress)
            .await;
        Ok(exec)
    }

    /// Whether both sides accept these credentials, asked as a transfer asks before it
    /// begins: a worker's own, so that a refusal of them later can be weighed as one
    /// object's (see `denials`). A failed check says no more than "not known": the first
    /// items then tell, as they would have.
    pub async fn credentials_accepted(&self, src: &Endpoint, dst: &Endpoint) -> bool {
        let ctx = &self.ctx;
        preflight(src, dst, &ctx.opts, &ctx.progress, true)
            .await
            .unwrap_or(false)
    }

    pub fn transfer_id(&self) -> Option<TransferId> {
        self.ctx.resume.id()
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.ctx.progress
    }

    /// Starts the planner: the jobs stream from the receiver; the task returns how many
    /// source objects it listed.
    pub async fn plan(
        &self,
        src: &Endpoint,
        dst: &Endpoint,
    ) -> Result<(Planner, tokio::sync::mpsc::Receiver<Job>)> {
        let ctx = &self.ctx;
        let limit = AdaptiveLimit::new(ctx.opts.max_connections);
        // A sync's writes are announced as the planner hands them out; the coordinator lets
        // no worker begin one before they are committed (`writes_announced`).
        let hooks = (Some(ctx.checks_up_to_date()), ctx.announces_writes());
        start_planner(src, dst, &ctx.opts, &limit, &ctx.progress, hooks).await
    }

    /// Waits until the writes the planner announced so far are committed to the journal
    /// (see `Ctx::announces_writes`): the coordinator's part before it queues work, since
    /// the workers that write keep no journal. At once when they are, or when nothing is
    /// announced (a `cp`, a worker).
    pub async fn writes_announced(&self) {
        self.ctx.resume.announced().await;
    }

    /// Whether an earlier run already copied this version of the object; in a sync whose
    /// listing found it missing or different at the destination, never (see `transfer`).
    pub fn is_done(&self, src: &ObjectMeta, listed_different: bool) -> bool {
        self.ctx.done_earlier(src, listed_different)
    }

    /// Whether an object of `size` bytes goes in parts (else whole, by one worker).
    pub fn stripes(&self, size: u64) -> bool {
        stripes(&self.ctx, size)
    }

    /// Copies one whole object; with `unless_same`, only if that destination object does not
    /// already hold the same bytes (`sync --checksum`). `None`: it did, nothing was copied.
    pub async fn copy(
        &self,
        src: &ObjectMeta,
        dst_key: &str,
        unless_same: Option<ObjectMeta>,
    ) -> Result<Option<Copied>> {
        if let Some(dst) = unless_same {
            if self.ctx.same_content(src, dst).await? {
                return Ok(None);
            }
        }
        copy_with_retries(&self.ctx, src, dst_key).await.map(Some)
    }

    /// Records an object a worker copied: journal, progress, and the verification list.
    pub fn record_copied(&self, src: &ObjectMeta, copied: Copied) {
        let ctx = &self.ctx;
        ctx.resume.done(src, &copied);
        ctx.progress.add_done(src.size, copied.server_side);
        ctx.to_check(copied);
    }

    /// Records a failed object for the report.
    pub fn record_failure(&self, key: &str, err: Error) {
        self.ctx.fail(key, err);
    }

    /// The upload for a striped object: the one an earlier run left open (with its finished
    /// parts), else a new one, journaled before any part is sent.
    pub async fn open_upload(&self, src: &ObjectMeta, dst_key: &str) -> Result<OpenUpload> {
        let ctx = &self.ctx;
        let server_side = ctx.copy_from.is_some();
        let part_size = part_size_for(ctx, src, server_side)?;
        let mut put = PutOptions {
            size: src.size,
            mtime: src.mtime,
            storage_class: ctx.opts.storage_class.clone(),
            ..Default::default()
        };
        prepare_upload(ctx, src, &mut put).await?;
        if let Some(r) = ctx.resume.resumable(src, part_size) {
            return Ok(OpenUpload {
                upload: r.upload,
                part_size,
                server_side,
                put,
                done: r.parts.into_iter().map(|p| (p.part, p.checksum)).collect(),
            });
        }
        ctx.resume.creating(dst_key).await;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let upload = ctx
            .opts
            .retry
            .run(&ctx.dst_limit, &ctx.progress, || {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ctx.dst.create_multipart(dst_key, &put)
            })
            .await?;
        ctx.resume.started(src, &upload, part_size);
        if attempts.into_inner() == 1 {
            ctx.resume.created(dst_key);
        }
        Ok(OpenUpload {
            upload,
            part_size,
            server_side,
            put,
            done: Vec::new(),
        })
    }

    /// Sends one part of `upload` (read and written here, or copied by the store).
    pub async fn move_part(
        &self,
        src: &ObjectMeta,
        upload: &MultipartUpload,
        spec: PartSpec,
        server_side: bool,
    ) -> Result<(CompletedPart, Option<ChunkSums>)> {
        let ctx = &self.ctx;
        let memory = match server_side {
            true => None,
            false => Some(ctx.budget.reserve(spec.len).await),
        };
        let (part, sums, _) =
            move_part(ctx, src, upload, spec, server_side, true, None, memory).await?;
        Ok((part, sums))
    }

    /// Journals a part a worker sent (with its checksums, unless the store copied it), so a
    /// restarted coordinator does not send it again.
    pub async fn record_part(
        &self,
        upload: &MultipartUpload,
        part: &CompletedPart,
        sums: Option<&str>,
    ) {
        let sums = sums.and_then(decode_sums);
        self.ctx.resume.part(upload, part, sums.as_ref()).await;
    }

    /// Completes an upload from parts sent by any workers (`sums` as
    /// [`crate::resume::encode_sums`] writes them) once every CRC agrees, and records the
    /// object as copied.
    pub async fn complete_upload(
        &self,
        src: &ObjectMeta,
        upload: &OpenUpload,
        parts: Vec<(CompletedPart, Option<String>)>,
    ) -> Result<Copied> {
        let done = parts
            .into_iter()
            .map(|(p, s)| (p, s.as_deref().and_then(decode_sums), None))
            .collect();
        let copied = complete_upload(
            &self.ctx,
            src,
            &upload.upload.key,
            &upload.put,
            &upload.upload,
            done,
            upload.server_side,
        )
        .await?;
        self.ctx.progress.add_done(src.size, copied.server_side);
        self.ctx.to_check(copied.clone());
        Ok(copied)
    }

    /// Aborts an upload that cannot be completed (a part failed) and forgets it.
    pub async fn abort_upload(&self, upload: &MultipartUpload) {
        abort(&self.ctx, upload, true).await;
    }

    /// Forgets a journaled upload the store no longer has (it was completed, or lost, by a
    /// run that was killed before journaling it), so that the object starts afresh.
    pub fn forget_upload(&self, upload: &MultipartUpload) {
        self.ctx.resume.finished(upload);
    }

    /// The error for a recursive transfer that found nothing at the source.
    pub async fn nothing_at_source(&self, src: &Endpoint) -> Error {
        crate::run::nothing_at_source(src, &self.ctx.opts).await
    }

    /// The first denial, when the workers' denials are all that happened (see `transfer`).
    pub fn denied_everything(&self) -> Option<Error> {
        self.ctx.denied_everything()
    }

    /// The end of the transfer: deletions, leftover uploads, verification, the report.
    pub async fn conclude(
        &self,
        src: &Endpoint,
        dst: &Endpoint,
        deletes: Vec<String>,
        started: Instant,
    ) -> Result<Report> {
        conclude(&self.ctx, src, dst, deletes, started).await
    }
}
