//! Executing a transfer: the job loop and the three ways to move one object.

use crate::budget::Budget;
use crate::content::{same_content, Side, READ_CHUNK};
use crate::copy::copy_with_retries;
use crate::denials::{run_bounded, Denials};
use crate::filter::Filter;
use crate::integrity::{md5_mismatch, source_md5, sums, worth_checking, ChunkSums, FullCheck};
use crate::limiter::AdaptiveLimit;
use crate::listing::plan_recursive;
use crate::open::Endpoint;
use crate::plan::{Announce, Job, Mode, UpToDate, MIB};
use crate::progress::Progress;
use crate::report::{count, CheckFailed, Failure, Report};
use crate::resume::Resume;
use crate::retry::RetryPolicy;
use crate::to_check::ToCheck;
use crate::verify::{sampled, verify_copied, Copied, Verification, VerifyMode};
use futures::StreamExt;
use skyhaul_journal::{Journal, TransferIdentity};
use skyhaul_location::{dir_form, map_key};
use skyhaul_store::{Error, ErrorKind, Fetched, ObjectMeta, Result, Store};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Failures kept for the report; beyond this only the count grows, so a transfer where
/// everything fails cannot exhaust memory with error messages.
const MAX_FAILURES_KEPT: usize = 10_000;

#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub mode: Mode,
    pub recursive: bool,
    /// Concurrent requests per side.
    pub max_connections: usize,
    /// Bytes that may be buffered between reads and writes at any moment.
    pub memory_budget: u64,
    /// Preferred part size for multipart uploads and ranged reads.
    pub part_size: u64,
    /// Objects larger than this are striped into parts.
    pub multipart_threshold: u64,
    pub retry: RetryPolicy,
    /// Use the store's own copy when both sides are in one account and endpoint.
    pub server_side_copy: bool,
    /// What the verification pass after the copy checks.
    pub verify: VerifyMode,
    /// Percentage of copied objects the verification pass checks.
    pub verify_sample: f64,
    /// Which source objects are copied (and which destination-only objects a sync may
    /// delete), applied to keys relative to the source prefix (the base name for a single
    /// object).
    pub filter: Arc<Filter>,
    /// The filter as the user gave it, in a stable form: part of the transfer's identity
    /// in the journal, since it changes what is copied. Empty when there is no filter.
    pub filter_identity: String,
    /// `--bwlimit`: the bytes read from the source draw from this shared bucket.
    pub bwlimit: Option<Arc<crate::bwlimit::BandwidthLimit>>,
    /// `--storage-class`: the class every object is written in (the bucket's default if
    /// `None`), in the destination store's own terms.
    pub storage_class: Option<String>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            mode: Mode::Copy,
            recursive: false,
            max_connections: 64,
            memory_budget: 256 * MIB,
            part_size: 16 * MIB,
            multipart_threshold: 32 * MIB,
            retry: RetryPolicy::default(),
            server_side_copy: true,
            verify: VerifyMode::Checksum,
            verify_sample: 100.0,
            filter: Arc::default(),
            filter_identity: String::new(),
            bwlimit: None,
            storage_class: None,
        }
    }
}

/// What every task of one running transfer shares.
pub(crate) struct Ctx {
    pub(crate) src: Arc<dyn Store>,
    pub(crate) dst: Arc<dyn Store>,
    pub(crate) src_limit: Arc<AdaptiveLimit>,
    pub(crate) dst_limit: Arc<AdaptiveLimit>,
    pub(crate) budget: Budget,
    pub(crate) opts: TransferOptions,
    pub(crate) progress: Arc<Progress>,
    pub(crate) failures: Mutex<Vec<Failure>>,
    pub(crate) fatal: Mutex<Option<Error>>,
    /// Which denials are about their objects and which about the credentials.
    denials: Denials,
    pub(crate) cancel: CancellationToken,
    /// The source bucket, when objects can be copied server-side.
    pub(crate) copy_from: Option<String>,
    /// What was written, for the verification pass.
    /// What this run wrote, or found an earlier run wrote, for the check at its end.
    copied: Mutex<ToCheck>,
    pub(crate) resume: Resume,
    /// Set once a read of the source says its ETag is no MD5 (a bucket that encrypts with
    /// SSE-KMS): from then on whole objects are not opened to be streamed on the strength
    /// of their listed ETag ([`Ctx::streams_md5`]), which spares every object of such a
    /// bucket a read begun for nothing.
    opaque_source: AtomicBool,
}

impl Ctx {
    pub(crate) fn new(
        src: &Endpoint,
        dst: &Endpoint,
        opts: &TransferOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
        resume: Resume,
    ) -> Ctx {
        let copy_from = match (src.store.copy_domain(), dst.store.copy_domain()) {
            (Some(a), Some(b)) if a == b && opts.server_side_copy => {
                Some(src.store.container().to_string())
            }
            _ => None,
        };
        // Idle part buffers are kept up to the budget: memory stays near it either way.
        skyhaul_store::buffers::keep_at_most(opts.memory_budget);
        Ctx {
            src: src.store.clone(),
            dst: dst.store.clone(),
            src_limit: AdaptiveLimit::new(opts.max_connections),
            dst_limit: AdaptiveLimit::new(opts.max_connections),
            budget: Budget::new(opts.memory_budget),
            opts: opts.clone(),
            progress,
            failures: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            denials: Denials::default(),
            cancel,
            copy_from,
            copied: Mutex::default(),
            resume,
            opaque_source: AtomicBool::new(false),
        }
    }

    /// Whether `src`'s ETag may be its content MD5: the source's store has such ETags, and
    /// the one known has that form and was not called opaque (or none is known yet, and the
    /// read will tell).
    pub(crate) fn listed_md5(&self, src: &ObjectMeta) -> bool {
        self.src.etags_are_md5() && (src.etag.is_none() || src.content_md5().is_some())
    }

    /// [`Ctx::listed_md5`], unless a read of this source has already said its ETags are
    /// not MD5s: whether to begin a read that is of use only if the ETag is the MD5 (a
    /// streamed copy, or one that relays the MD5 instead of hashing the bytes). A wrong
    /// guess costs a read or a hash, never a check.
    pub(crate) fn streams_md5(&self, src: &ObjectMeta) -> bool {
        self.listed_md5(src) && !self.opaque_source.load(Ordering::Relaxed)
    }

    /// Records what a read of the source said of its ETag ([`Ctx::streams_md5`]).
    pub(crate) fn saw_source_etag(&self, opaque: bool) {
        if opaque {
            self.opaque_source.store(true, Ordering::Relaxed);
        }
    }

    /// Records an object done: copied, found identical at the destination, or deleted.
    pub(crate) fn done(&self) {
        self.denials.done();
    }

    /// The error that stopped the transfer, if one did (taken: returned once).
    fn check_fatal(&self) -> Result<()> {
        match self.fatal.lock().expect("lock").take() {
            Some(fatal) => Err(fatal),
            None => Ok(()),
        }
    }

    /// Stops the transfer with `err`, the first such error kept.
    fn stop(&self, err: Error) {
        self.fatal.lock().expect("lock").get_or_insert(err);
        self.cancel.cancel();
    }

    /// Keeps `copied` for the check at the end, if there is one and its sample takes it.
    pub(crate) fn to_check(&self, copied: Copied) {
        let (mode, sample) = (self.opts.verify, self.opts.verify_sample);
        if mode == VerifyMode::None || !sampled(&copied.dst_key, sample) {
            return;
        }
        crate::to_check::keep(&self.copied, copied);
    }

    /// Whether `src` is skipped as done by an earlier, interrupted run. In a sync whose
    /// listing found the object missing or different at the destination (`listed_different`)
    /// the listing wins: the destination may have lost it since that run.
    ///
    /// A skipped object joins the check at the end, as if this run had copied it: the
    /// interrupted run never checked it, so a transfer finished by reruns is checked whole,
    /// and one the destination lost since is found missing (and copied by the next run).
    pub(crate) fn done_earlier(&self, src: &ObjectMeta, listed_different: bool) -> bool {
        let mut earlier = None;
        let skip = skips_as_done(self.opts.mode, listed_different, || {
            earlier = self.resume.done_earlier(src);
            earlier.is_some()
        });
        if let Some(copied) = earlier.filter(|_| skip) {
            self.to_check(copied);
        }
        skip
    }

    /// In a sync, the planner's [`Announce`]: each write it plans is announced in the
    /// journal ([`Resume::announce`]), and a write begins only once the announcements are
    /// committed ([`Resume::announced`]). A run stopped between a write and its record
    /// (committed in batches) leaves the key named, and the rerun copies it again: its
    /// listing finds the object up to date, and without a record nothing would check it.
    /// Announced by the planner, ahead of the writes, the announcements of many objects
    /// share a commit that is seldom waited for. A `cp` needs none: its rerun copies
    /// whatever has no record.
    pub(crate) fn announces_writes(self: &Arc<Self>) -> Option<Announce> {
        let ctx = self.clone();
        matches!(self.opts.mode, Mode::Sync { .. })
            .then(|| -> Announce { Box::new(move |dst_key| ctx.resume.announce(dst_key)) })
    }

    /// For objects a sync's listing finds up to date ([`UpToDate`]), on a rerun after an
    /// interruption or a failed check: one the check of an earlier run found different, or
    /// that an earlier run wrote without recording it ([`Ctx::announces_writes`]), is
    /// copied all the same (another writer's newer object of the same size looks up to
    /// date); one an earlier, interrupted run copied joins the check at the end, as in
    /// [`done_earlier`](Self::done_earlier). That run never checked it, and this run, which
    /// copies nothing there, would not either.
    pub(crate) fn checks_up_to_date(self: &Arc<Self>) -> UpToDate {
        let ctx = self.clone();
        Box::new(move |src, dst_key| {
            if ctx.resume.copy_again(dst_key) {
                return true;
            }
            if let Some(copied) = ctx.resume.done_earlier(src) {
                ctx.to_check(copied);
            }
            false
        })
    }

    /// The first denial, when denials are all that happened: nothing copied or found
    /// already there, nothing else failed, and the transfer was not stopped. Its
    /// credentials, not its objects, were denied, and it ends with that error.
    pub(crate) fn denied_everything(&self) -> Option<Error> {
        let snapshot = self.progress.snapshot();
        if snapshot.objects_done + snapshot.objects_skipped > 0 || self.cancel.is_cancelled() {
            return None;
        }
        self.denials.only_denied()
    }

    /// Records an object that failed, for the report; stops the transfer when the error
    /// means that nothing else can succeed either.
    pub(crate) fn fail(&self, key: &str, mut err: Error) {
        if err.kind == ErrorKind::Interrupted {
            return;
        }
        // Each store says what changed; what to do about it is the same for all.
        if err.kind == ErrorKind::SourceChanged {
            err.message.push_str(
                "; rerun to copy its new version, or leave it out with --exclude while it \
                 is being written",
            );
        }
        tracing::debug!("{err}");
        self.progress.add_failed();
        self.progress.report_failure(key, &err.message);
        // An entry the listing could not include (a directory denied to this user) says
        // nothing of the credentials.
        if err.unlisted.is_some() {
            self.denials.failed_otherwise();
        } else if let Some(fatal) = self.denials.failed(&err) {
            self.stop(fatal);
        }
        let mut f = self.failures.lock().expect("lock");
        if f.len() < MAX_FAILURES_KEPT {
            f.push(Failure {
                key: key.to_string(),
                error: err.message,
            });
        }
    }

    /// Whether `dst` already holds `src`'s bytes (`sync --checksum`). Reading a file to
    /// hash it holds memory like a copy does.
    pub(crate) async fn same_content(&self, src: &ObjectMeta, dst: ObjectMeta) -> Result<bool> {
        let reads = self.src.rereads_are_free() || self.dst.rereads_are_free();
        let _memory = match reads {
            true => Some(self.budget.reserve(src.size.min(READ_CHUNK)).await),
            false => None,
        };
        same_content(
            Side::listed(self.src.as_ref(), src.clone()),
            Side::listed(self.dst.as_ref(), dst),
            &self.opts.retry,
            &self.progress,
        )
        .await
    }

    pub(crate) fn interrupted(&self, key: &str) -> Error {
        Error::new(ErrorKind::Interrupted, format!("{key}: interrupted"))
    }

    /// [`Self::interrupted`] once the run is asked to stop: a read or a write of `key` that
    /// has not begun by then does not begin (bytes read and waiting for a connection stay
    /// unsent). Against an endpoint that stopped answering, each wave of requests let
    /// through after the stop would hold it for another [`crate::retry::STOP_GRACE`].
    pub(crate) fn not_stopped(&self, key: &str) -> Result<()> {
        match self.cancel.is_cancelled() {
            true => Err(self.interrupted(key)),
            false => Ok(()),
        }
    }

    /// Waits until `bytes` of `key` may be moved under `--bwlimit`. Ctrl-C ends the wait
    /// with [`Self::interrupted`]: under a low limit one part's share is minutes, and bytes
    /// not yet read are not worth waiting for when the rerun sends them anyway.
    pub(crate) async fn pace(&self, key: &str, bytes: u64) -> Result<()> {
        self.not_stopped(key)?;
        let Some(limit) = &self.opts.bwlimit else {
            return Ok(());
        };
        tokio::select! {
            () = limit.take(bytes) => Ok(()),
            () = self.cancel.cancelled() => Err(self.interrupted(key)),
        }
    }

    /// Reads `range` of `src` with retries, failing (and so retrying) on a short read, a
    /// changed source, or, for a whole-object read, bytes that do not hash to the source's
    /// MD5 (from the listing or, when the listing has none, from the read itself) or that do
    /// not have the full-object checksum the read reported ([`worth_checking`]). Without
    /// `with_md5`, the caller sends the source's MD5 as `Content-MD5` where the destination's
    /// ETags are MD5s, so the destination checks the bytes against it.
    /// Returns what was read (the bytes, and what the answer said of the object), the bytes'
    /// checksums, and the source's content MD5 as the read vouches for it (none when the
    /// read said the object's ETag is no MD5).
    pub(crate) async fn read_checked(
        &self,
        src: &ObjectMeta,
        range: std::ops::Range<u64>,
        with_md5: bool,
    ) -> Result<(Fetched, ChunkSums, Option<[u8; 16]>)> {
        let want = range.end - range.start;
        let whole = want == src.size;
        let range = (src.size > 0).then_some(range);
        let target = format!("{}/{}", self.src.name().trim_end_matches('/'), src.key);
        self.opts
            .retry
            .run(&self.src_limit, &self.progress, || async {
                self.pace(&src.key, want).await?;
                let fetched = self.src.get(&src.key, range.clone(), Some(src)).await?;
                self.saw_source_etag(fetched.opaque_etag);
                if fetched.data.len() as u64 != want {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!(
                            "{target}: read {} bytes, expected {want}",
                            fetched.data.len()
                        ),
                    ));
                }
                let sums = sums(&fetched.data, with_md5);
                let source = source_md5(src, fetched.etag.as_deref(), fetched.opaque_etag);
                if let (Some(want), Some(got), true) = (source, sums.md5, whole) {
                    if want != got {
                        return Err(md5_mismatch(&target, want, got));
                    }
                }
                let md5_known = source.is_some() && (with_md5 || self.dst.etags_are_md5());
                if let (Some(want), true) = (worth_checking(fetched.checksum, md5_known), whole) {
                    FullCheck::of(&target, want, &fetched.data, sums.crc64)?;
                }
                Ok((fetched, sums, source))
            })
            .await
    }
}

/// Runs one transfer from `src` to `dst`. Per-object failures end up in the report; an
/// error is returned only when the transfer as a whole cannot proceed (missing bucket,
/// denied access, nothing at the source).
pub async fn transfer(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    journal: Option<Arc<Journal>>,
) -> Result<Report> {
    let started = Instant::now();
    let accepted = preflight(src, dst, opts, &progress, true).await?;

    let resume = match journal {
        Some(j) => {
            let path = j.path().to_path_buf();
            Resume::begin(j, &identity(src, dst, opts)).map_err(|e| {
                let hint = match e {
                    skyhaul_journal::JournalError::Running(_) => "",
                    _ => " (use --journal PATH for another journal, or --no-journal)",
                };
                Error::new(ErrorKind::Other, format!("{}: {e}{hint}", path.display()))
            })?
        }
        None => Resume::none(),
    };
    let ctx = Arc::new(Ctx::new(
        src,
        dst,
        opts,
        progress.clone(),
        cancel.clone(),
        resume,
    ));
    if accepted {
        ctx.denials.credentials_accepted();
    }

    // Uploads an earlier run created but could not journal are found before new ones start.
    ctx.resume
        .sweep(ctx.dst.as_ref(), &opts.retry, &progress)
        .await;
    let hooks = (Some(ctx.checks_up_to_date()), ctx.announces_writes());
    let (planner, mut rx) = start_planner(src, dst, opts, &ctx.src_limit, &progress, hooks).await?;

    let mut tasks = JoinSet::new();
    let mut deletes = Vec::new();
    let max_tasks = opts.max_connections.max(1) * 2;
    loop {
        // A listing that waits for an endpoint that never answers does not hold a stop.
        let job = tokio::select! {
            job = rx.recv() => job,
            () = cancel.cancelled() => None,
        };
        let Some(job) = job.filter(|_| !cancel.is_cancelled()) else {
            break;
        };
        while tasks.len() >= max_tasks {
            tasks.join_next().await;
        }
        // Denials in a row: the objects in flight decide whether they were about their
        // objects or about the credentials (see `denials`).
        if ctx.denials.suspect() {
            while ctx.denials.suspect() && tasks.join_next().await.is_some() {}
            if tasks.is_empty() && !cancel.is_cancelled() {
                let then = "so the transfer stopped; if only some objects are off limits to \
                            these credentials, leave them out with --exclude";
                if let Some(stop) = ctx.denials.stop(then) {
                    ctx.stop(stop);
                    break;
                }
            }
        }
        match job {
            Job::Copy { src, dst_key } => {
                if ctx.done_earlier(&src, true) {
                    progress.add_resumed(src.size, true);
                    continue;
                }
                tasks.spawn(copy_and_record(ctx.clone(), src, dst_key));
            }
            Job::CopyUnlessSame { src, dst, dst_key } => {
                if ctx.done_earlier(&src, false) {
                    progress.add_resumed(src.size, false);
                    continue;
                }
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    match ctx.same_content(&src, dst).await {
                        Ok(true) => {
                            ctx.done();
                            ctx.progress.add_skipped(src.size);
                        }
                        Ok(false) => {
                            ctx.progress.add_planned(src.size);
                            copy_and_record(ctx.clone(), src, dst_key).await;
                        }
                        Err(e) => ctx.fail(&src.key, e),
                    }
                });
            }
            Job::Delete { dst_key } => deletes.push(dst_key),
            Job::Unlisted { key, error, .. } => ctx.fail(&key, error),
        }
    }
    drop(rx);
    while tasks.join_next().await.is_some() {}
    // Stopped: the rest of the listing is not needed.
    if cancel.is_cancelled() {
        planner.abort();
    }
    let listed = match planner.await {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(0),
        Err(e) => Err(Error::new(ErrorKind::Other, format!("planner failed: {e}"))),
    };
    ctx.check_fatal()?;
    let listed = listed?;
    if let Some(denied) = ctx.denied_everything() {
        return Err(denied);
    }
    if listed == 0 && opts.recursive && !cancel.is_cancelled() {
        return Err(nothing_at_source(src, opts).await);
    }

    conclude(&ctx, src, dst, deletes, started).await
}

/// An error of the destination's listing or check: where it is a denial, credentials that
/// may write a bucket but not read it (a drop box) are told how to copy without reading back.
fn read_back_denied(e: Error) -> Error {
    if e.kind != ErrorKind::AccessDenied {
        return e;
    }
    Error::new(
        e.kind,
        format!(
            "{e}; to copy into a destination these credentials may write but not read, pass \
             --verify none"
        ),
    )
}

/// The end of a transfer once every copy is over: leftover uploads aborted, the
/// verification pass, deletions (only when every copy succeeded and passed the check), the
/// report, and the journal's complete mark.
pub(crate) async fn conclude(
    ctx: &Arc<Ctx>,
    src: &Endpoint,
    dst: &Endpoint,
    deletes: Vec<String>,
    started: Instant,
) -> Result<Report> {
    let (opts, progress, cancel) = (&ctx.opts, &ctx.progress, &ctx.cancel);
    // A fleet's coordinator comes here after its own requests failed fatally, too.
    ctx.check_fatal()?;
    if !cancel.is_cancelled() {
        ctx.resume
            .abort_unused(ctx.dst.as_ref(), &opts.retry, progress)
            .await;
    }
    let copied = std::mem::take(&mut *ctx.copied.lock().expect("lock"));
    let mut check_failed = None;
    let verification = if opts.verify == VerifyMode::None || cancel.is_cancelled() {
        None
    } else {
        let checking = verify_copied(
            dst,
            opts.recursive,
            copied,
            opts.verify,
            opts.retry,
            progress.clone(),
        );
        // Ctrl-C (or SIGTERM, with a scheduler's short grace period) stops the check too:
        // the run is then interrupted and unchecked, as one stopped before the check.
        tokio::select! {
            (v, checked) = checking => {
                // What was found missing or different is copied again by a rerun, even
                // when the check could not be finished.
                if !v.differing.is_empty() {
                    ctx.resume.undo(v.differing.clone());
                }
                // The report still comes, with the copy's failures and what the check found
                // before it failed, and says why the rest is unchecked (a destination gone
                // for good: the user learnt only that its listing had no answer).
                if let Err(e) = checked.map_err(read_back_denied) {
                    check_failed = Some(CheckFailed {
                        kind: e.kind,
                        message: e.message,
                    });
                }
                Some(v)
            }
            _ = cancel.cancelled() => None,
        }
    };
    let failed = progress.snapshot().objects_failed;
    let held_back = held_back(failed, verification.as_ref()).or_else(|| {
        check_failed
            .as_ref()
            .map(|_| "a check after the copy that could not be done".to_string())
    });
    let deleting = !deletes.is_empty() && !cancel.is_cancelled();
    if let (true, Some(why)) = (deleting, &held_back) {
        tracing::warn!(
            "{} skipped after {why}: a sync deletes only once everything else succeeded; \
             rerun once nothing fails",
            count(deletes.len() as u64, "deletion", "deletions"),
        );
    }
    if deleting && held_back.is_none() {
        // As copies do, a denied deletion fails alone, and many in a row stop the rest.
        let delete = |key: String| {
            let ctx = ctx.clone();
            async move {
                if let Err(interrupted) = ctx.not_stopped(&key) {
                    return (key, Err(interrupted));
                }
                let r = ctx
                    .opts
                    .retry
                    .run(&ctx.dst_limit, &ctx.progress, || ctx.dst.delete(&key))
                    .await;
                (key, r)
            }
        };
        let record = |(key, r): (String, Result<()>)| {
            match r {
                Ok(()) => {
                    ctx.done();
                    progress.add_deleted();
                    // A record of what a sync removed (`-v`), as the failures are listed.
                    let store = ctx.dst.name().trim_end_matches('/');
                    tracing::info!("deleted {store}/{}", key.escape_debug());
                }
                Err(e) => ctx.fail(&key, e),
            }
            Ok(())
        };
        let then = "so the deletions stopped; the copies were made";
        let limit = opts.max_connections.max(1);
        let deletes = futures::stream::iter(deletes.into_iter().map(Ok));
        if let Err(stop) = run_bounded(&ctx.denials, deletes, limit, then, delete, record).await {
            ctx.stop(stop);
        }
        ctx.check_fatal()?;
    }

    let failures = std::mem::take(&mut *ctx.failures.lock().expect("lock"));
    let mut report = Report::new(
        src.display.clone(),
        dst.display.clone(),
        &progress.snapshot(),
        started.elapsed().as_secs_f64(),
        failures,
    );
    report.verification = verification;
    report.check_failed = check_failed;
    report.transfer_id = ctx.resume.id().map(|id| id.to_string());
    ctx.resume
        .finish(report.succeeded() && !cancel.is_cancelled());
    Ok(report)
}

/// Why a sync's deletions must wait for a rerun, if they must: they run last, and only once
/// every copy succeeded and the check after the copy found nothing missing or different, so
/// a failed sync never leaves the destination with less than it had (a store that took a
/// copy for another key's object would otherwise see that object deleted as extra).
fn held_back(failed: u64, verification: Option<&Verification>) -> Option<String> {
    let wrong = verification.map_or(0, Verification::wrong);
    match (failed, wrong) {
        (0, 0) => None,
        (0, _) => Some(count(
            wrong,
            "copy the check found wrong",
            "copies the check found wrong",
        )),
        _ => Some(count(failed, "failure", "failures")),
    }
}

/// Copies one object and records the outcome: in the progress and the verification list
/// when it worked (the copy journaled it), as a failure in the report when it did not.
async fn copy_and_record(ctx: Arc<Ctx>, src: ObjectMeta, dst_key: String) {
    match copy_with_retries(&ctx, &src, &dst_key).await {
        Ok(copied) => {
            ctx.done();
            ctx.progress.add_done(src.size, copied.server_side);
            ctx.to_check(copied);
        }
        Err(e) => ctx.fail(&src.key, e),
    }
}

pub(crate) type Planner = tokio::task::JoinHandle<Result<u64>>;

/// Starts planning: a task that streams the jobs (from the listing with `-r`, else the one
/// named object when the filter selects its base name) and returns how many source
/// objects it listed.
pub(crate) async fn start_planner(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    src_limit: &Arc<AdaptiveLimit>,
    progress: &Arc<Progress>,
    (up_to_date, announce): (Option<UpToDate>, Option<Announce>),
) -> Result<(Planner, tokio::sync::mpsc::Receiver<Job>)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Job>(1024);
    if opts.recursive {
        let planner = tokio::spawn(plan_recursive(
            src.store.clone(),
            src.path.clone(),
            dst.store.clone(),
            dst.path.clone(),
            opts.mode,
            opts.filter.clone(),
            opts.retry,
            progress.clone(),
            up_to_date,
            announce,
            tx,
        ));
        return Ok((planner, rx));
    }
    let meta = single_source(&src.store, &src.path, &opts.retry, src_limit, progress).await?;
    if opts.filter.selects_one(&meta) {
        let dst_key = map_key(&src.path, &meta.key, &dst.path, false)
            .expect("single-object mapping always maps");
        progress.add_planned(meta.size);
        if let Some(announce) = announce {
            announce(&dst_key);
        }
        tx.send(Job::Copy { src: meta, dst_key })
            .await
            .expect("receiver alive");
    }
    progress.set_listing_done();
    Ok((tokio::spawn(async { Ok(1) }), rx))
}

/// Checks both sides before any work: one clear error for a missing bucket or bad
/// credentials instead of one per object. A mistyped endpoint fails in a second;
/// throttling and 5xx get the usual retries. Returns whether both sides' credentials were
/// accepted; not where a side was let through on a denial (a drop box, one object read
/// without listing), whose credentials only its first objects will tell of.
pub(crate) async fn preflight(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    progress: &Progress,
    dst_for_write: bool,
) -> Result<bool> {
    let src_accepted = match check(src, false, &opts.retry, progress).await {
        // One object is read by name: credentials, or an unsigned reader, that may read it
        // but not list its bucket (a public object in a private bucket) go on to its HEAD,
        // which tells whether they may.
        Err(e) if e.kind == ErrorKind::AccessDenied && !opts.recursive => {
            tracing::info!("{e}: reading the one object without listing the source");
            false
        }
        checked => checked.map(|()| true)?,
    };
    match check(dst, dst_for_write, &opts.retry, progress).await {
        // Credentials that may write a bucket but not list it (a drop box) can copy into it
        // when nothing is to be read back: the writes' own answers tell whether they may.
        // Credentials the store refuses outright are another kind (BadCredentials).
        Err(e) if e.kind == ErrorKind::AccessDenied && opts.mode == Mode::Copy => {
            if opts.verify != VerifyMode::None {
                return Err(read_back_denied(e));
            }
            tracing::info!("{e}: copying without listing the destination (nothing is read back)");
            Ok(false)
        }
        checked => checked.map(|()| src_accepted),
    }
}

/// How long the check before a transfer waits for each answer. A store answers a one-key
/// listing in well under a second; one that accepts connections and never answers (a
/// firewall that drops, a hung server or proxy) would otherwise cost every try the
/// client's read timeout (two minutes) as a mere timeout, retried ten times: 25 minutes
/// before exit 1.
const FIRST_ANSWER: Duration = Duration::from_secs(30);

/// `side`'s own check ([`Store::preflight`]), tried as `retry` says but only three times
/// where the endpoint cannot be reached: a first contact gives up quickly on a mistyped
/// endpoint, or on one that never answers (see [`answered`]).
async fn check(
    side: &Endpoint,
    for_write: bool,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<()> {
    let quick = RetryPolicy {
        unreachable_retries: 2,
        ..*retry
    };
    let probe = AdaptiveLimit::new(1);
    quick
        .run(&probe, progress, || {
            answered(side, side.store.preflight(for_write))
        })
        .await
}

/// `check` of `side`, or [`ErrorKind::Unreachable`] when it has no answer within
/// [`FIRST_ANSWER`] (said at once, as the tries go on).
async fn answered(side: &Endpoint, check: impl Future<Output = Result<()>>) -> Result<()> {
    match tokio::time::timeout(FIRST_ANSWER, check).await {
        Ok(answer) => answer,
        Err(_) => {
            let e = Error::new(
                ErrorKind::Unreachable,
                format!(
                    "{}: no answer within {} s: the endpoint accepts connections but does \
                     not answer (a firewall that drops, or a hung server or proxy)",
                    side.store.name(),
                    FIRST_ANSWER.as_secs()
                ),
            );
            tracing::warn!("{e}");
            Err(e)
        }
    }
}

/// Whether `side` answers at all, for the commands that make no check before they start
/// (`verify`, `clean`): an endpoint that accepts connections and never answers is
/// [`ErrorKind::Unreachable`] after three tries of [`FIRST_ANSWER`], where their own
/// requests would each wait out the read timeout of every retry. Any answer will do, a
/// refusal too: what the command then meets is its own to report. A stop (Ctrl-C) ends the
/// wait at once, [`ErrorKind::Interrupted`]: nothing was done yet.
pub async fn reachable(side: &Endpoint, progress: &Progress) -> Result<()> {
    let retry = RetryPolicy::default();
    let checked = check(side, false, &retry, progress);
    match progress.unless_stopped(checked).await {
        Err(e) if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::Interrupted) => Err(e),
        _ => Ok(()),
    }
}

/// Whether a run skips an object an earlier, interrupted run copied (`done` asks the
/// journal). In a sync whose listing found the object missing or different at the
/// destination (`listed_different`) the listing wins: the destination may have lost it
/// since that run.
fn skips_as_done(mode: Mode, listed_different: bool, done: impl FnOnce() -> bool) -> bool {
    let sync = matches!(mode, Mode::Sync { .. });
    !(sync && listed_different) && done()
}

/// Plans a transfer without copying or deleting anything: `each` sees every job that
/// [`transfer`] would run, in order (deletions included, which a real sync runs last and
/// only when every copy succeeded). With `journal`, objects an earlier, interrupted run of
/// the same transfer copied are skipped as a rerun skips them (counted resumed); the
/// journal is only read. Nothing is written.
pub async fn dry_run(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    journal: Option<&Journal>,
    mut each: impl FnMut(&Job),
) -> Result<()> {
    preflight(src, dst, opts, &progress, false).await?;
    let earlier = journal.and_then(|j| {
        let id = identity(src, dst, opts).id();
        j.resumable(id).unwrap_or(false).then_some((j, id))
    });
    let done =
        |s: &ObjectMeta| earlier.is_some_and(|(j, id)| matches!(j.is_done(id, s), Ok(Some(_))));
    // What a check found different, or a stopped run wrote without recording, is copied by
    // the next sync even where its listing finds it up to date (see
    // `Ctx::checks_up_to_date`); the plan must say so too.
    let again: std::collections::HashSet<String> = earlier
        .and_then(|(j, id)| j.copy_again_keys(id).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let up_to_date = (!again.is_empty())
        .then(|| -> UpToDate { Box::new(move |_, dst_key| again.contains(dst_key)) });
    let limit = AdaptiveLimit::new(opts.max_connections);
    let (planner, mut rx) =
        start_planner(src, dst, opts, &limit, &progress, (up_to_date, None)).await?;
    while let Some(job) = rx.recv().await {
        if cancel.is_cancelled() {
            break;
        }
        let earlier_copy = match &job {
            Job::Copy { src: s, .. } => Some((s, true)),
            Job::CopyUnlessSame { src: s, .. } => Some((s, false)),
            _ => None,
        };
        // A copy the listing planned (`Job::Copy`), or a comparison it did not.
        if let Some((s, planned)) = earlier_copy {
            if skips_as_done(opts.mode, planned, || done(s)) {
                progress.add_resumed(s.size, planned);
                continue;
            }
        }
        let job = match job {
            Job::CopyUnlessSame {
                src: s,
                dst: d,
                dst_key,
            } => {
                let same = same_content(
                    Side::listed(src.store.as_ref(), s.clone()),
                    Side::listed(dst.store.as_ref(), d),
                    &opts.retry,
                    &progress,
                )
                .await?;
                if same {
                    progress.add_skipped(s.size);
                    continue;
                }
                progress.add_planned(s.size);
                Job::Copy { src: s, dst_key }
            }
            job => job,
        };
        each(&job);
    }
    drop(rx);
    let listed = match planner.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::new(ErrorKind::Other, format!("planner failed: {e}"))),
    };
    if listed == 0 && opts.recursive && !cancel.is_cancelled() {
        return Err(nothing_at_source(src, opts).await);
    }
    Ok(())
}

/// What makes a rerun the same transfer: both locations (with their endpoints) and the
/// options that change what is copied, not how fast.
pub(crate) fn identity(src: &Endpoint, dst: &Endpoint, opts: &TransferOptions) -> TransferIdentity {
    let mode = match opts.mode {
        Mode::Copy => "copy".to_string(),
        Mode::Sync { delete, compare } => format!("sync delete={delete} compare={compare:?}"),
    };
    let mut options = format!("{mode} recursive={}", opts.recursive);
    // Unfiltered transfers keep the identity they always had, so their journals still match.
    if !opts.filter_identity.is_empty() {
        options.push_str(" filter ");
        options.push_str(&opts.filter_identity);
    }
    // Objects and uploads already in one class are not what a rerun in another asks for.
    if let Some(class) = &opts.storage_class {
        options.push_str(" storage-class ");
        options.push_str(class);
    }
    TransferIdentity::new(src.locator.clone(), dst.locator.clone(), options)
}

/// The one object a non-recursive copy (or `verify`) names, or an error that says what to
/// do instead.
pub(crate) async fn single_source(
    src: &Arc<dyn Store>,
    key: &str,
    retry: &RetryPolicy,
    limit: &Arc<AdaptiveLimit>,
    progress: &Progress,
) -> Result<ObjectMeta> {
    // Some file-backed servers answer 500 for a HEAD on a "directory": a few tries only.
    let quick = RetryPolicy {
        retries: 3,
        unreachable_retries: 2,
        ..*retry
    };
    let mut head_error = None;
    if !key.is_empty() && !key.ends_with('/') {
        match quick.run(limit, progress, || src.head(key)).await {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            Err(e) if e.is_fatal() => return Err(e),
            // Some file-backed servers answer 500 for a HEAD on a "directory": look at the
            // prefix before reporting it.
            Err(e) => head_error = Some(e),
        }
    }
    let dir = dir_form(key);
    let mut listing = src.list(&dir, None);
    let target = format!("{}/{}", src.name().trim_end_matches('/'), key);
    match listing.next().await {
        Some(Err(e)) if e.unlisted.is_none() => Err(e),
        // An object, or an entry it cannot list: something is there all the same.
        Some(_) => Err(Error::new(
            ErrorKind::NotFound,
            format!("{target}: is a prefix, not an object (use -r for everything under it)"),
        )),
        None => Err(head_error.unwrap_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("{target}: no such object"))
        })),
    }
}

pub(crate) async fn nothing_at_source(src: &Endpoint, opts: &TransferOptions) -> Error {
    let dir = dir_form(&src.path);
    let is_object = !src.path.is_empty() && matches!(src.store.head(&src.path).await, Ok(Some(_)));
    let hint = if is_object {
        " (it is a single object: leave out -r; sync takes a prefix)"
    } else if deletes_by_selection(opts.mode, &opts.filter) {
        " that the filters select (a sync --delete from it would delete everything they \
         select at the destination: check the source path and the filters)"
    } else {
        " (check the source path)"
    };
    Error::new(
        ErrorKind::NotFound,
        format!("{}: no objects under '{dir}'{hint}", src.display),
    )
}

/// Whether only the objects the filter selects by name count as the source's (a filtered
/// `sync --delete`): a source holding nothing else is empty, and refused as an empty one
/// is, so that an excluded `lost+found` with files in it (after an fsck) does not make an
/// empty mount point look full and its sync delete the whole mirror. Size and time rules
/// do not count, as they do not for deletions.
pub(crate) fn deletes_by_selection(mode: Mode, filter: &Filter) -> bool {
    matches!(mode, Mode::Sync { delete: true, .. }) && !filter.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyhaul_store::LocalStore;

    fn endpoint(name: &str) -> Endpoint {
        Endpoint {
            store: Arc::new(LocalStore::new(std::env::temp_dir())),
            path: String::new(),
            display: name.to_string(),
            locator: name.to_string(),
        }
    }

    #[test]
    fn deletions_wait_for_copies_that_failed_or_the_check_found_wrong() {
        let clean = Verification {
            objects: 3,
            size_ok: 3,
            checksum_ok: 3,
            ..Default::default()
        };
        assert_eq!(held_back(0, None), None, "--verify none");
        assert_eq!(held_back(0, Some(&clean)), None);
        let unread = Verification {
            unreadable: 1,
            not_comparable: 1,
            ..clean.clone()
        };
        assert_eq!(held_back(0, Some(&unread)), None, "unchecked is not wrong");
        assert_eq!(held_back(2, Some(&clean)).as_deref(), Some("2 failures"));
        let missing = Verification {
            missing: 1,
            ..clean.clone()
        };
        assert_eq!(
            held_back(0, Some(&missing)).as_deref(),
            Some("1 copy the check found wrong")
        );
        let different = Verification {
            size_mismatch: 1,
            checksum_mismatch: 1,
            ..clean
        };
        assert_eq!(
            held_back(0, Some(&different)).as_deref(),
            Some("2 copies the check found wrong")
        );
    }

    #[test]
    fn filters_are_part_of_the_identity() {
        let (a, b) = (endpoint("/a"), endpoint("/b"));
        let plain = TransferOptions {
            recursive: true,
            ..Default::default()
        };
        // Unfiltered transfers keep the identity they had before filters existed.
        assert_eq!(
            identity(&a, &b, &plain).options,
            "copy recursive=true",
            "journals of unfiltered transfers still match"
        );
        let filtered = TransferOptions {
            filter_identity: "exclude=\"*.tmp\"".to_string(),
            ..plain.clone()
        };
        assert_ne!(identity(&a, &b, &plain), identity(&a, &b, &filtered));
        assert!(identity(&a, &b, &filtered).options.contains("*.tmp"));
    }
}
