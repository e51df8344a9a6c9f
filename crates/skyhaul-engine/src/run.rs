//! Executing a transfer: the job loop and the three ways to move one object.

use crate::budget::Budget;
use crate::filter::Filter;
use crate::integrity::{
    combine_crc64, multipart_etag, plain_md5, sums, ChunkSums, OrderedMd5, CRC_METADATA,
};
use crate::limiter::AdaptiveLimit;
use crate::listing::plan_recursive;
use crate::open::Endpoint;
use crate::plan::{part_size, Job, Mode};
use crate::progress::Progress;
use crate::report::{Failure, Report};
use crate::resume::{decode_sums, Resume};
use crate::retry::RetryPolicy;
use crate::verify::{verify_copied, Copied, VerifyMode};
use bytes::Bytes;
use futures::StreamExt;
use skyhaul_journal::{Journal, TransferIdentity};
use skyhaul_location::{dir_form, map_key};
use skyhaul_store::{
    CompletedPart, Error, ErrorKind, MultipartUpload, ObjectMeta, PartSpec, Payload, PutOptions,
    Result, Store,
};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;
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
        }
    }
}

struct Ctx {
    src: Arc<dyn Store>,
    dst: Arc<dyn Store>,
    src_limit: Arc<AdaptiveLimit>,
    dst_limit: Arc<AdaptiveLimit>,
    budget: Budget,
    opts: TransferOptions,
    progress: Arc<Progress>,
    failures: Mutex<Vec<Failure>>,
    fatal: Mutex<Option<Error>>,
    cancel: CancellationToken,
    /// The source bucket, when objects can be copied server-side.
    copy_from: Option<String>,
    /// What was written, for the verification pass.
    copied: Mutex<Vec<Copied>>,
    resume: Resume,
}

impl Ctx {
    fn fail(&self, key: &str, err: Error) {
        if err.kind == ErrorKind::Interrupted {
            return;
        }
        tracing::debug!("{err}");
        self.progress.add_failed();
        if err.is_fatal() {
            self.fatal.lock().expect("lock").get_or_insert(err.clone());
            self.cancel.cancel();
        }
        let mut f = self.failures.lock().expect("lock");
        if f.len() < MAX_FAILURES_KEPT {
            f.push(Failure {
                key: key.to_string(),
                error: err.message,
            });
        }
    }

    fn interrupted(&self, key: &str) -> Error {
        Error::new(ErrorKind::Interrupted, format!("{key}: interrupted"))
    }

    /// Reads `range` of `src` with retries, failing (and so retrying) on a short read, a
    /// changed source, or, for a whole-object read, bytes that do not hash to the source's
    /// MD5 (from the listing or, when the listing has none, from the read itself).
    /// Returns the bytes, their checksums and the ETag the read reported.
    async fn read_checked(
        &self,
        src: &ObjectMeta,
        range: std::ops::Range<u64>,
        with_md5: bool,
    ) -> Result<(Bytes, ChunkSums, Option<String>)> {
        let want = range.end - range.start;
        let whole = want == src.size;
        let range = (src.size > 0).then_some(range);
        let target = format!("{}/{}", self.src.name().trim_end_matches('/'), src.key);
        self.opts
            .retry
            .run(&self.src_limit, &self.progress, || async {
                let fetched = self.src.get(&src.key, range.clone(), Some(src)).await?;
                let data = fetched.data;
                if data.len() as u64 != want {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!("{target}: read {} bytes, expected {want}", data.len()),
                    ));
                }
                let sums = sums(&data, with_md5);
                let expected = plain_md5(src.etag.as_deref()).or(plain_md5(fetched.etag.as_deref())).filter(|_| whole);
                if let (Some(want), Some(got)) = (expected, sums.md5) {
                    if !want.eq_ignore_ascii_case(&hex::encode(got)) {
                        return Err(Error::new(
                            ErrorKind::Corrupt,
                            format!("{target}: checksum mismatch: the source's MD5 is {want}, the bytes received hash to {}", hex::encode(got)),
                        ));
                    }
                }
                Ok((data, sums, fetched.etag))
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
    preflight(src, dst, opts, &progress, true).await?;

    let copy_from = match (src.store.copy_domain(), dst.store.copy_domain()) {
        (Some(a), Some(b)) if a == b && opts.server_side_copy => {
            Some(src.store.container().to_string())
        }
        _ => None,
    };
    let resume = match journal {
        Some(j) => Resume::begin(j, &identity(src, dst, opts)).map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("{e} (use --journal PATH for another journal, or --no-journal)"),
            )
        })?,
        None => Resume::none(),
    };
    let ctx = Arc::new(Ctx {
        src: src.store.clone(),
        dst: dst.store.clone(),
        src_limit: AdaptiveLimit::new(opts.max_connections),
        dst_limit: AdaptiveLimit::new(opts.max_connections),
        budget: Budget::new(opts.memory_budget),
        opts: opts.clone(),
        progress: progress.clone(),
        failures: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        cancel: cancel.clone(),
        copy_from,
        copied: Mutex::new(Vec::new()),
        resume,
    });

    let (planner, mut rx) = start_planner(src, dst, opts, &ctx.src_limit, &progress).await?;

    let mut tasks = JoinSet::new();
    let mut deletes = Vec::new();
    let max_tasks = opts.max_connections.max(1) * 2;
    while let Some(job) = rx.recv().await {
        if cancel.is_cancelled() {
            break;
        }
        while tasks.len() >= max_tasks {
            tasks.join_next().await;
        }
        match job {
            Job::Copy { src, dst_key } => {
                if ctx.resume.is_done(&src) {
                    progress.add_skipped(src.size);
                    progress.add_resumed();
                    continue;
                }
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    match copy_with_retries(&ctx, &src, &dst_key).await {
                        Ok(copied) => {
                            ctx.resume.done(&src, &dst_key, copied.crc64);
                            ctx.progress.add_done(src.size, copied.server_side);
                            ctx.copied.lock().expect("lock").push(copied);
                        }
                        Err(e) => ctx.fail(&src.key, e),
                    }
                });
            }
            Job::Delete { dst_key } => deletes.push(dst_key),
        }
    }
    drop(rx);
    while tasks.join_next().await.is_some() {}
    let listed = match planner.await {
        Ok(r) => r,
        Err(e) => Err(Error::new(ErrorKind::Other, format!("planner failed: {e}"))),
    };
    progress.set_listing_done();
    if let Some(fatal) = ctx.fatal.lock().expect("lock").take() {
        return Err(fatal);
    }
    let listed = listed?;
    if listed == 0 && opts.recursive && !cancel.is_cancelled() {
        return Err(nothing_at_source(src).await);
    }

    // Deletions run last and only after every copy succeeded, so a failed sync never
    // leaves the destination with less than it had.
    if !deletes.is_empty() && progress.snapshot().objects_failed == 0 && !cancel.is_cancelled() {
        let mut running = futures::stream::iter(deletes)
            .map(|key| {
                let ctx = ctx.clone();
                async move {
                    let r = ctx
                        .opts
                        .retry
                        .run(&ctx.dst_limit, &ctx.progress, || ctx.dst.delete(&key))
                        .await;
                    (key, r)
                }
            })
            .buffer_unordered(opts.max_connections.max(1));
        while let Some((key, r)) = running.next().await {
            match r {
                Ok(()) => progress.add_deleted(),
                Err(e) => ctx.fail(&key, e),
            }
        }
    }

    if !cancel.is_cancelled() {
        ctx.resume
            .abort_unused(ctx.dst.as_ref(), &opts.retry, &progress)
            .await;
    }
    let copied = std::mem::take(&mut *ctx.copied.lock().expect("lock"));
    let verification = if opts.verify == VerifyMode::None || cancel.is_cancelled() {
        None
    } else {
        Some(
            verify_copied(
                dst,
                opts.recursive,
                copied,
                opts.verify,
                opts.verify_sample,
                opts.retry,
                progress.clone(),
            )
            .await?,
        )
    };
    let failures = std::mem::take(&mut *ctx.failures.lock().expect("lock"));
    let mut report = Report::new(
        src.display.clone(),
        dst.display.clone(),
        &progress.snapshot(),
        started.elapsed().as_secs_f64(),
        failures,
    );
    report.verification = verification;
    report.transfer_id = ctx.resume.id().map(|id| id.to_string());
    ctx.resume
        .finish(report.succeeded() && !cancel.is_cancelled());
    Ok(report)
}

type Planner = tokio::task::JoinHandle<Result<u64>>;

/// Starts planning: a task that streams the jobs (from the listing with `-r`, else the one
/// named object when the filter selects its base name) and returns how many source
/// objects it listed.
async fn start_planner(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    src_limit: &Arc<AdaptiveLimit>,
    progress: &Arc<Progress>,
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
            tx,
        ));
        return Ok((planner, rx));
    }
    let meta = single_source(&src.store, &src.path, &opts.retry, src_limit, progress).await?;
    let base = meta.key.rsplit('/').next().unwrap_or(&meta.key);
    if opts.filter.selects(base, &meta) {
        let dst_key = map_key(&src.path, &meta.key, &dst.path, false)
            .expect("single-object mapping always maps");
        progress.add_planned(meta.size);
        tx.send(Job::Copy { src: meta, dst_key })
            .await
            .expect("receiver alive");
    }
    Ok((tokio::spawn(async { Ok(1) }), rx))
}

/// Checks both sides before any work: one clear error for a missing bucket or bad
/// credentials instead of one per object. A mistyped endpoint fails in a second;
/// throttling and 5xx get the usual retries.
async fn preflight(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    progress: &Progress,
    dst_for_write: bool,
) -> Result<()> {
    let quick = RetryPolicy {
        unreachable_retries: 2,
        ..opts.retry
    };
    let probe = AdaptiveLimit::new(1);
    quick
        .run(&probe, progress, || src.store.preflight(false))
        .await?;
    quick
        .run(&probe, progress, || dst.store.preflight(dst_for_write))
        .await
}

/// Plans a transfer without copying or deleting anything: `each` sees every job that
/// [`transfer`] would run, in order (deletions included, which a real sync runs last and
/// only when every copy succeeded). Nothing is written and no journal is used.
pub async fn dry_run(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    mut each: impl FnMut(&Job),
) -> Result<()> {
    preflight(src, dst, opts, &progress, false).await?;
    let limit = AdaptiveLimit::new(opts.max_connections);
    let (planner, mut rx) = start_planner(src, dst, opts, &limit, &progress).await?;
    while let Some(job) = rx.recv().await {
        if cancel.is_cancelled() {
            break;
        }
        each(&job);
    }
    drop(rx);
    let listed = match planner.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::new(ErrorKind::Other, format!("planner failed: {e}"))),
    };
    progress.set_listing_done();
    if listed == 0 && opts.recursive && !cancel.is_cancelled() {
        return Err(nothing_at_source(src).await);
    }
    Ok(())
}

/// What makes a rerun the same transfer: both locations (with their endpoints) and the
/// options that change what is copied, not how fast.
fn identity(src: &Endpoint, dst: &Endpoint, opts: &TransferOptions) -> TransferIdentity {
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
    TransferIdentity::new(src.locator.clone(), dst.locator.clone(), options)
}

/// The one object a non-recursive copy names, or an error that says what to do instead.
async fn single_source(
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
        Some(Ok(_)) => Err(Error::new(
            ErrorKind::NotFound,
            format!("{target}: is a prefix, not an object (use -r to copy everything under it)"),
        )),
        Some(Err(e)) => Err(e),
        None => Err(head_error.unwrap_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("{target}: no such object"))
        })),
    }
}

async fn nothing_at_source(src: &Endpoint) -> Error {
    let dir = dir_form(&src.path);
    let is_object = !src.path.is_empty() && matches!(src.store.head(&src.path).await, Ok(Some(_)));
    let hint = if is_object {
        " (it is a single object: drop -r)"
    } else {
        " (check the source path)"
    };
    Error::new(
        ErrorKind::NotFound,
        format!("{}: no objects under '{dir}'{hint}", src.display),
    )
}

/// Copies one object, starting over when its checksums do not add up at the end (a part
/// corrupted in a way no single request could notice). Returns what was written.
async fn copy_with_retries(ctx: &Arc<Ctx>, src: &ObjectMeta, dst_key: &str) -> Result<Copied> {
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
    if ctx.cancel.is_cancelled() {
        return Err(ctx.interrupted(&src.key));
    }
    let mut put = PutOptions {
        size: src.size,
        mtime: src.mtime,
        ..Default::default()
    };
    let limits = ctx.dst.limits();
    let single_max = ctx.opts.multipart_threshold.min(limits.max_single_put);
    let dst = &ctx.dst;
    let mut copied = Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64: None,
        etag: None,
        server_side: false,
    };
    if let Some(container) = &ctx.copy_from {
        copied.server_side = true;
        // Whole-object copy up to the single-request limit; beyond, parallel part copies.
        if src.size
            <= limits
                .max_single_put
                .min(ctx.opts.multipart_threshold.max(256 * MIB))
        {
            ctx.opts
                .retry
                .run(&ctx.dst_limit, &ctx.progress, || {
                    dst.copy_object(container, src, dst_key, &put)
                })
                .await?;
            // A whole-object copy keeps the content, so a content-MD5 ETag stays the same.
            copied.etag = plain_md5(src.etag.as_deref()).map(str::to_string);
            ctx.progress.add_moved(src.size);
        } else {
            multipart(ctx, src, dst_key, &put, true).await?;
        }
        return Ok(copied);
    }
    if src.size > single_max {
        return multipart(ctx, src, dst_key, &put, false).await;
    }
    let with_md5 = ctx.src.etags_are_md5() || dst.etags_are_md5();
    let _memory = ctx.budget.reserve(src.size).await;
    let (data, sums, _) = ctx.read_checked(src, 0..src.size, with_md5).await?;
    put.metadata
        .insert(CRC_METADATA.to_string(), format!("{:016x}", sums.crc64));
    let target = format!("{}/{dst_key}", dst.name().trim_end_matches('/'));
    ctx.opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || async {
            let written = dst
                .put(
                    dst_key,
                    Payload {
                        data: data.clone(),
                        md5: sums.md5,
                    },
                    &put,
                )
                .await?;
            check_stored(&target, written.etag.as_deref(), sums.md5)
        })
        .await?;
    ctx.progress.add_moved(src.size);
    copied.crc64 = Some(sums.crc64);
    copied.etag = sums.md5.filter(|_| dst.etags_are_md5()).map(hex::encode);
    Ok(copied)
}

/// Fails when the store reports a content MD5 other than the one of the bytes we sent:
/// servers that ignore `Content-MD5` would otherwise keep a body corrupted on the way.
fn check_stored(target: &str, etag: Option<&str>, sent: Option<[u8; 16]>) -> Result<()> {
    match (plain_md5(etag), sent) {
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

/// Striped copy of a large object: parts are read (or copied server-side) and written
/// concurrently, each holding its bytes in the memory budget, and the upload is completed
/// only when every part is in and the checksums agree. Any failure aborts the upload.
async fn multipart(
    ctx: &Arc<Ctx>,
    src: &ObjectMeta,
    dst_key: &str,
    put: &PutOptions,
    server_side: bool,
) -> Result<Copied> {
    let preferred = if server_side {
        ctx.opts.part_size.max(64 * MIB)
    } else {
        ctx.opts.part_size
    };
    let part = part_size(src.size, preferred, &ctx.dst.limits()).ok_or_else(|| {
        Error::new(
            ErrorKind::Other,
            format!(
                "{}: {} bytes is larger than {} can store",
                src.key,
                src.size,
                ctx.dst.name()
            ),
        )
    })?;
    // An upload an earlier run left open continues with its finished parts.
    let resumed = if server_side {
        None
    } else {
        ctx.resume.resumable(src, part)
    };
    let earlier = resumed.clone();
    match striped(ctx, src, dst_key, put, server_side, part, resumed).await {
        // A journaled upload can be gone although the journal lost its end: killed right
        // after completing it. Servers then say NoSuchUpload (s3s-fs: AccessDenied).
        Err(e)
            if earlier.is_some()
                && matches!(e.kind, ErrorKind::NotFound | ErrorKind::AccessDenied) =>
        {
            let earlier = earlier.expect("checked");
            ctx.resume.finished(&earlier.upload);
            if let Some(copied) = completed_earlier(ctx, src, dst_key, part, &earlier).await {
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

/// The destination object, if it is what completing a multipart upload of `src` makes: a
/// completion whose answer was lost (to a retry, or to a killed run) did succeed. It has the
/// source's size and, where the server follows S3, the ETag the parts make.
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
        found.etag.as_deref().filter(|e| e.contains('-')),
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
) -> Option<Copied> {
    if earlier.parts.len() as u64 != src.size.div_ceil(part) {
        return None;
    }
    let sums: Option<Vec<ChunkSums>> = earlier
        .parts
        .iter()
        .map(|p| p.checksum.as_deref().and_then(decode_sums))
        .collect();
    let md5s: Option<Vec<[u8; 16]>> = sums
        .as_ref()
        .and_then(|s| s.iter().map(|s| s.md5).collect());
    let expected_etag = md5s
        .filter(|_| ctx.dst.etags_are_md5())
        .map(|m| multipart_etag(&m));
    already_completed(ctx, src, dst_key, expected_etag.as_deref()).await?;
    let crc64 = sums.map(|s| {
        combine_crc64(
            s.iter()
                .zip(&earlier.parts)
                .map(|(s, p)| (s.crc64, p.part.len)),
        )
    });
    ctx.resume.done(src, dst_key, crc64);
    ctx.progress.add_moved(src.size);
    Some(Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64,
        etag: expected_etag,
        server_side: false,
    })
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
    // from the listing, may be) a content MD5 to check it against.
    let check_source = !server_side
        && ctx.src.etags_are_md5()
        && src
            .etag
            .as_deref()
            .is_none_or(|e| plain_md5(Some(e)).is_some());
    let with_md5 = !server_side && (check_source || dst.etags_are_md5());
    // Resumed parts are not read again, so the whole-object source check is not possible.
    let check_source = check_source && resumed.as_ref().is_none_or(|r| r.parts.is_empty());
    let ordered = check_source.then(|| Arc::new(OrderedMd5::default()));
    let mut done = Vec::new();
    let upload = match resumed {
        Some(r) => {
            for p in &r.parts {
                let sums = p.checksum.as_deref().and_then(decode_sums);
                ctx.progress.add_moved(p.part.len);
                done.push((p.part.clone(), sums, None));
            }
            r.upload
        }
        None => {
            let upload = ctx
                .opts
                .retry
                .run(&ctx.dst_limit, &ctx.progress, || {
                    dst.create_multipart(dst_key, put)
                })
                .await?;
            ctx.resume.started(src, &upload, part);
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
    // The source's MD5: from the listing, else from what the reads reported.
    let source_md5 = plain_md5(src.etag.as_deref())
        .map(str::to_string)
        .or_else(|| {
            done.iter()
                .find_map(|(_, _, e)| plain_md5(e.as_deref()).map(str::to_string))
        });
    if failed.is_none() {
        if let (Some(want), Some(ordered)) = (source_md5, ordered) {
            let got = Arc::try_unwrap(ordered)
                .ok()
                .and_then(|o| o.finish(count as u32));
            if got.map(hex::encode).as_deref() != Some(want.as_str()) {
                failed = Some(Error::new(
                    ErrorKind::Corrupt,
                    format!("{target}: the bytes read do not hash to the source's MD5 {want}"),
                ));
            }
        }
    }
    if let Some(e) = failed {
        // Interrupted: the journal keeps the upload and its finished parts for the rerun.
        if e.kind != ErrorKind::Interrupted {
            abort(ctx, &upload).await;
        }
        return Err(e);
    }
    done.sort_by_key(|(p, _, _)| p.number);
    let receipts: Vec<CompletedPart> = done.iter().map(|(p, _, _)| p.clone()).collect();
    let md5s: Option<Vec<[u8; 16]>> = done.iter().map(|(_, s, _)| s.and_then(|s| s.md5)).collect();
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
                    skyhaul_store::Written { etag: found.etag }
                }
                None => {
                    abort(ctx, &upload).await;
                    return Err(e);
                }
            }
        }
        Err(e) => {
            abort(ctx, &upload).await;
            return Err(e);
        }
    };

    // Servers that follow S3 return md5-of-part-md5s-N; anything else is not comparable.
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
    let crc64 = done
        .iter()
        .map(|(p, s, _)| s.map(|s| (s.crc64, p.len)))
        .collect::<Option<Vec<_>>>()
        .map(combine_crc64);
    // Done first, then the upload's end, in one queue: a kill between the two must not
    // leave the journal with neither the object nor its parts.
    ctx.resume.done(src, dst_key, crc64);
    ctx.resume.finished(&upload);
    Ok(Copied {
        dst_key: dst_key.to_string(),
        size: src.size,
        crc64,
        etag: expected_etag,
        server_side,
    })
}

type PartResult = (CompletedPart, Option<ChunkSums>, Option<String>);

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
async fn move_part(
    ctx: &Ctx,
    src: &ObjectMeta,
    upload: &MultipartUpload,
    spec: PartSpec,
    server_side: bool,
    with_md5: bool,
    ordered: Option<&OrderedMd5>,
    memory: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<PartResult> {
    if ctx.cancel.is_cancelled() {
        return Err(ctx.interrupted(&src.key));
    }
    let dst = &ctx.dst;
    if let (true, Some(container)) = (server_side, &ctx.copy_from) {
        let done = ctx
            .opts
            .retry
            .run(&ctx.dst_limit, &ctx.progress, || {
                dst.copy_part(container, src, upload, spec)
            })
            .await?;
        ctx.progress.add_moved(spec.len);
        return Ok((done, None, None));
    }
    if ctx.cancel.is_cancelled() {
        return Err(ctx.interrupted(&src.key));
    }
    let (data, sums, etag) = ctx.read_checked(src, spec.range(), with_md5).await?;
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
            check_stored(&target, Some(part.etag.as_str()), sums.md5)?;
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
    Ok((done, Some(sums), etag))
}

async fn abort(ctx: &Ctx, upload: &MultipartUpload) {
    let dst = &ctx.dst;
    let quick = RetryPolicy {
        retries: 3,
        ..ctx.opts.retry
    };
    if let Err(e) = quick
        .run(&ctx.dst_limit, &ctx.progress, || {
            dst.abort_multipart(upload)
        })
        .await
    {
        tracing::warn!("could not abort the upload of {}: {e}", upload.key);
    }
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
