//! Executing a transfer: the job loop and the three ways to move one object.

use crate::budget::Budget;
use crate::limiter::AdaptiveLimit;
use crate::listing::plan_recursive;
use crate::open::Endpoint;
use crate::plan::{part_size, Job, Mode};
use crate::progress::Progress;
use crate::report::{Failure, Report};
use crate::retry::RetryPolicy;
use bytes::Bytes;
use futures::StreamExt;
use skyhaul_location::{dir_form, map_key};
use skyhaul_store::{
    CompletedPart, Error, ErrorKind, MultipartUpload, ObjectMeta, PartSpec, PutOptions, Result,
    Store,
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
}

impl Ctx {
    fn fail(&self, key: &str, err: Error) {
        if err.kind == ErrorKind::Interrupted {
            return;
        }
        tracing::warn!("{err}");
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

    /// Reads `range` of `src` with retries, failing on any short or changed read.
    async fn read(&self, src: &ObjectMeta, range: std::ops::Range<u64>) -> Result<Bytes> {
        let want = range.end - range.start;
        let range = (src.size > 0).then_some(range);
        self.opts
            .retry
            .run(&self.src_limit, &self.progress, || async {
                let data = self.src.get(&src.key, range.clone(), Some(src)).await?;
                if data.len() as u64 != want {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!(
                            "{}/{}: read {} bytes, expected {want}",
                            self.src.name(),
                            src.key,
                            data.len()
                        ),
                    ));
                }
                Ok(data)
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
) -> Result<Report> {
    let started = Instant::now();
    let quick = RetryPolicy {
        retries: 2,
        ..opts.retry
    };
    let probe = AdaptiveLimit::new(1);
    quick
        .run(&probe, &progress, || src.store.preflight(false))
        .await?;
    quick
        .run(&probe, &progress, || dst.store.preflight(true))
        .await?;

    let copy_from = match (src.store.copy_domain(), dst.store.copy_domain()) {
        (Some(a), Some(b)) if a == b && opts.server_side_copy => {
            Some(src.store.container().to_string())
        }
        _ => None,
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
    });

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(1024);
    let planner = if opts.recursive {
        tokio::spawn(plan_recursive(
            src.store.clone(),
            src.path.clone(),
            dst.store.clone(),
            dst.path.clone(),
            opts.mode,
            opts.retry,
            progress.clone(),
            tx,
        ))
    } else {
        let meta = single_source(&ctx, &src.path).await?;
        let dst_key = map_key(&src.path, &meta.key, &dst.path, false)
            .expect("single-object mapping always maps");
        progress.add_planned(meta.size);
        tx.send(Job::Copy { src: meta, dst_key })
            .await
            .expect("receiver alive");
        drop(tx);
        tokio::spawn(async { Ok(1) })
    };

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
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let key = src.key.clone();
                    let size = src.size;
                    match copy_object(&ctx, src, dst_key).await {
                        Ok(server_side) => ctx.progress.add_done(size, server_side),
                        Err(e) => ctx.fail(&key, e),
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

    let failures = std::mem::take(&mut *ctx.failures.lock().expect("lock"));
    Ok(Report::new(
        src.display.clone(),
        dst.display.clone(),
        &progress.snapshot(),
        started.elapsed().as_secs_f64(),
        failures,
    ))
}

/// The one object a non-recursive copy names, or an error that says what to do instead.
async fn single_source(ctx: &Ctx, key: &str) -> Result<ObjectMeta> {
    let quick = RetryPolicy {
        retries: 2,
        ..ctx.opts.retry
    };
    let src = &ctx.src;
    let mut head_error = None;
    if !key.is_empty() && !key.ends_with('/') {
        match quick
            .run(&ctx.src_limit, &ctx.progress, || src.head(key))
            .await
        {
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

/// Copies one object; returns whether the store copied it server-side.
async fn copy_object(ctx: &Arc<Ctx>, src: ObjectMeta, dst_key: String) -> Result<bool> {
    if ctx.cancel.is_cancelled() {
        return Err(ctx.interrupted(&src.key));
    }
    let put = PutOptions {
        size: src.size,
        mtime: src.mtime,
        ..Default::default()
    };
    let limits = ctx.dst.limits();
    let single_max = ctx.opts.multipart_threshold.min(limits.max_single_put);
    if let Some(container) = &ctx.copy_from {
        // Whole-object copy up to the single-request limit; beyond, parallel part copies.
        if src.size
            <= limits
                .max_single_put
                .min(ctx.opts.multipart_threshold.max(256 * MIB))
        {
            let dst = &ctx.dst;
            ctx.opts
                .retry
                .run(&ctx.dst_limit, &ctx.progress, || {
                    dst.copy_object(container, &src, &dst_key, &put)
                })
                .await?;
            ctx.progress.add_moved(src.size);
        } else {
            multipart(ctx, &src, &dst_key, &put, true).await?;
        }
        return Ok(true);
    }
    if src.size <= single_max {
        let _memory = ctx.budget.reserve(src.size).await;
        let data = ctx.read(&src, 0..src.size).await?;
        let dst = &ctx.dst;
        ctx.opts
            .retry
            .run(&ctx.dst_limit, &ctx.progress, || {
                dst.put(&dst_key, data.clone(), &put)
            })
            .await?;
        ctx.progress.add_moved(src.size);
    } else {
        multipart(ctx, &src, &dst_key, &put, false).await?;
    }
    Ok(false)
}

/// Striped copy of a large object: parts are read (or copied server-side) and written
/// concurrently, each holding its bytes in the memory budget, and the upload is completed
/// only when every part is in. Any failure aborts the upload.
async fn multipart(
    ctx: &Arc<Ctx>,
    src: &ObjectMeta,
    dst_key: &str,
    put: &PutOptions,
    server_side: bool,
) -> Result<()> {
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
    let dst = &ctx.dst;
    let upload = ctx
        .opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || {
            dst.create_multipart(dst_key, put)
        })
        .await?;
    let count = src.size.div_ceil(part);
    let mut parts = JoinSet::new();
    for i in 0..count {
        let offset = i * part;
        let spec = PartSpec {
            number: i as u32 + 1,
            offset,
            len: part.min(src.size - offset),
        };
        let (ctx, src, upload) = (ctx.clone(), src.clone(), upload.clone());
        parts.spawn(async move { move_part(&ctx, &src, &upload, spec, server_side).await });
    }
    let mut done = Vec::with_capacity(count as usize);
    let mut failed = None;
    while let Some(r) = parts.join_next().await {
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
    if let Some(e) = failed {
        abort(ctx, &upload).await;
        return Err(e);
    }
    done.sort_by_key(|p| p.number);
    let result = ctx
        .opts
        .retry
        .run(&ctx.dst_limit, &ctx.progress, || {
            dst.complete_multipart(&upload, &done, put)
        })
        .await;
    if result.is_err() {
        abort(ctx, &upload).await;
    }
    result
}

async fn move_part(
    ctx: &Ctx,
    src: &ObjectMeta,
    upload: &MultipartUpload,
    spec: PartSpec,
    server_side: bool,
) -> Result<CompletedPart> {
    if ctx.cancel.is_cancelled() {
        return Err(ctx.interrupted(&src.key));
    }
    let dst = &ctx.dst;
    let done = if let (true, Some(container)) = (server_side, &ctx.copy_from) {
        ctx.opts
            .retry
            .run(&ctx.dst_limit, &ctx.progress, || {
                dst.copy_part(container, src, upload, spec)
            })
            .await?
    } else {
        let _memory = ctx.budget.reserve(spec.len).await;
        if ctx.cancel.is_cancelled() {
            return Err(ctx.interrupted(&src.key));
        }
        let data = ctx.read(src, spec.range()).await?;
        ctx.opts
            .retry
            .run(&ctx.dst_limit, &ctx.progress, || {
                dst.put_part(upload, spec, data.clone())
            })
            .await?
    };
    ctx.progress.add_moved(spec.len);
    Ok(done)
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
