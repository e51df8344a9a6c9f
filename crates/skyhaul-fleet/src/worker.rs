//! A worker: asks the coordinator for leases, does their work with the engine, reports each
//! item's result, and keeps its leases alive with heartbeats until it is told the transfer
//! is over.

use crate::auth::{self, Token};
use crate::client::{Client, ClientError};
use crate::metrics::{self, Page};
use crate::protocol::*;
use axum::extract::State as Axum;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::{StreamExt, TryStreamExt};
use skyhaul_engine::resume::encode_sums;
use skyhaul_engine::{Denials, Endpoint, Executor, Progress, TransferOptions};
use skyhaul_relay::RelayStats;
use skyhaul_store::{Error, ErrorKind};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Leases a worker holds at once: the next is fetched while the last is finishing, so the
/// connections do not idle for a round trip between leases.
const LEASES_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Coordinator(#[from] ClientError),
    #[error("the coordinator speaks protocol {0}, this worker {PROTOCOL_VERSION}: run the same skyhaul version everywhere")]
    Version(u32),
    /// An error that says this worker cannot copy anything ([`WorkerDenials::failed`]): it has
    /// left the fleet; `told`: the coordinator heard so, and gave its work to the others at
    /// once (else its leases come back when they expire).
    #[error("{error}")]
    Unable { error: Error, told: bool },
    /// The worker was stopped (SIGTERM: a scheduler preempting it) and has left the fleet,
    /// having reported what it finished; `told` as for [`WorkerError::Unable`].
    #[error("this worker was stopped (SIGTERM)")]
    Stopped { told: bool },
}

/// What a worker whose denials came in a row (a hundred, nothing done between them) does:
/// its credentials are what is denied, so it leaves; the coordinator has handed what it was
/// denied to the other workers, whose credentials may have the permission it lacks.
const DENIED_THEN: &str = "taken to mean that this worker's credentials lack a permission; \
    if only some objects are off limits to them, leave those out with --exclude";

/// How a worker's lease loops end: the coordinator says the transfer is over, or an error
/// says the worker cannot copy anything (kept, for the worker to leave the fleet with it),
/// or the worker is stopped (`draining`: no new lease is asked for, the leases held end
/// with what is in flight).
#[derive(Default)]
struct End {
    token: CancellationToken,
    unable: Mutex<Option<Error>>,
    draining: CancellationToken,
}

impl End {
    /// The first such error ends the loops; one after the end (the transfer was over, or
    /// another loop's error came first) changes nothing.
    fn unable(&self, e: Error) {
        let mut unable = self.unable.lock().expect("lock");
        if !self.token.is_cancelled() {
            *unable = Some(e);
            self.token.cancel();
        }
    }
}

/// What a worker did, for its last log line and its metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub leases: AtomicU64,
    pub items: AtomicU64,
    pub failed: AtomicU64,
}

/// The leases a worker holds, each with the token that drops its work when the coordinator
/// says another worker has done it (or that the transfer is over).
type Held = Arc<Mutex<BTreeMap<u64, HeldLease>>>;

struct HeldLease {
    drop: CancellationToken,
    /// Its results are on their way: a heartbeat that crosses them finds the lease gone
    /// at the coordinator, which is no expiry.
    reporting: bool,
    /// The results of the items done so far: reported with the lease when it is done, or
    /// alone when the worker leaves first, so that only the rest is done again.
    finished: Vec<ItemResult>,
}

struct Live {
    progress: Arc<Progress>,
    counters: Arc<Counters>,
    relay: Relay,
}

/// Asks the coordinator what the transfer is (waiting for it to come up if need be).
pub async fn join(client: &Client) -> Result<TransferSpec, WorkerError> {
    let spec: TransferSpec = client.get("/v1/transfer").await?;
    if spec.protocol != PROTOCOL_VERSION {
        return Err(WorkerError::Version(spec.protocol));
    }
    Ok(spec)
}

/// The byte counts of the relay a worker's destination goes through, if it does.
type Relay = Option<Arc<RelayStats>>;

/// Runs a worker until the coordinator says the transfer is over, on both sides as this
/// machine opened them from `spec` (with its own credentials), or until `terminated`: then
/// it leaves the fleet, telling the coordinator through `stopping` (a client that gives up
/// sooner: a scheduler kills the process soon after SIGTERM). With relay mode, `relay` is
/// the destination's byte counts, reported to the coordinator.
pub async fn run(
    (client, stopping): (Client, Client),
    info: WorkerInfo,
    metrics: Option<(tokio::net::TcpListener, Token)>,
    spec: TransferSpec,
    (src, dst): (&Endpoint, &Endpoint),
    relay: Relay,
    terminated: impl std::future::Future<Output = ()>,
) -> Result<Arc<Counters>, WorkerError> {
    tracing::info!(
        "worker {} joins transfer {} of {}",
        info.id,
        spec.transfer_id.as_deref().unwrap_or("-"),
        client.base()
    );
    let opts = transfer_options(&spec);
    let timeout = Duration::from_millis(spec.lease_timeout_ms.max(300));
    // Stopped, the engine starts nothing new and lets what is in flight finish, as `cp`'s.
    let cancel = CancellationToken::new();
    let progress = Arc::new(Progress::stopped_by(cancel.clone()));
    let exec = Arc::new(Executor::new(
        src,
        dst,
        &opts,
        progress.clone(),
        cancel.clone(),
    ));
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    if let Some((listener, token)) = metrics {
        let live = Arc::new(Live {
            progress: progress.clone(),
            counters: counters.clone(),
            relay: relay.clone(),
        });
        let app = Router::new()
            .route("/metrics", get(worker_metrics))
            .layer(axum::middleware::from_fn_with_state(token, auth::require))
            .with_state(live);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    let client = Arc::new(client);
    let held: Held = Arc::new(Mutex::new(BTreeMap::new()));
    let beats = tokio::spawn(heartbeats(
        client.clone(),
        info.clone(),
        progress.clone(),
        relay.clone(),
        held.clone(),
        (timeout / 3).min(Duration::from_secs(2)),
        stop.clone(),
    ));
    let mut loops = tokio::task::JoinSet::new();
    let end = Arc::new(End::default());
    let denials = Arc::new(WorkerDenials::default());
    if exec.credentials_accepted(src, dst).await {
        denials.denials.credentials_accepted();
    }
    for _ in 0..LEASES_IN_FLIGHT {
        loops.spawn(lease_loop(
            client.clone(),
            Asker {
                info: info.clone(),
                relay: relay.clone(),
            },
            Doer {
                exec: exec.clone(),
                concurrency: opts.max_connections.max(1),
                denials: denials.clone(),
            },
            held.clone(),
            counters.clone(),
            end.clone(),
        ));
    }
    let ended = {
        let mut finished = std::pin::pin!(lease_loops_end(&mut loops));
        tokio::select! {
            result = &mut finished => Some(result),
            () = terminated => {
                // Stopped (SIGTERM): the items in flight finish, as a stopped `cp`'s bytes
                // in flight do, and are reported; nothing new starts.
                end.draining.cancel();
                cancel.cancel();
                let _ = tokio::time::timeout(DRAIN, &mut finished).await;
                None
            }
        }
    };
    // What is still in flight is dropped; the worker that takes it over redoes it.
    loops.shutdown().await;
    stop.cancel();
    let _ = beats.await;
    let Some(result) = ended else {
        let why = Error::new(ErrorKind::Interrupted, "this worker was stopped (SIGTERM)");
        let telling = async {
            report_finished(&stopping, &info, &held).await && leave(&stopping, info, &why).await
        };
        // Each request may take its time; all of them, no more than this.
        let told = tokio::time::timeout(TELL, telling).await.unwrap_or(false);
        return Err(WorkerError::Stopped { told });
    };
    let unable = end.unable.lock().expect("lock").take();
    if let Some(error) = unable {
        let told =
            report_finished(&client, &info, &held).await && leave(&client, info, &error).await;
        return Err(WorkerError::Unable { error, told });
    }
    result.map(|()| counters).map_err(WorkerError::from)
}

/// How long a stopped worker lets the items in flight finish: its report and its leave
/// ([`TELL`]) must still come before a scheduler's SIGKILL, 30 s after SIGTERM.
const DRAIN: Duration = Duration::from_secs(15);

/// How long a stopped worker spends telling the coordinator what it finished and that it
/// leaves.
const TELL: Duration = Duration::from_secs(10);

/// Waits for the lease loops to end; the first error ends the others.
async fn lease_loops_end(
    loops: &mut tokio::task::JoinSet<Result<(), ClientError>>,
) -> Result<(), ClientError> {
    let mut result = Ok(());
    while let Some(r) = loops.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result = Err(e);
                loops.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => panic!("lease loop panicked: {e}"),
        }
    }
    result
}

/// Reports, for each lease the worker leaves unfinished, the items it did finish: the
/// coordinator takes the rest back (as it does a lease whose worker left) and hands out
/// only that again. Returns whether the coordinator could be told (where it cannot, it
/// is not asked again, for the leave: it is gone, or the network is).
async fn report_finished(client: &Client, info: &WorkerInfo, held: &Held) -> bool {
    let finished: Vec<(u64, Vec<ItemResult>)> = std::mem::take(&mut *held.lock().expect("lock"))
        .into_iter()
        .filter(|(_, h)| !h.finished.is_empty())
        .map(|(id, h)| (id, h.finished))
        .collect();
    for (lease_id, results) in finished {
        let completion = Completion {
            worker: info.clone(),
            lease_id,
            results,
        };
        let told: Result<serde_json::Value, _> = client.post("/v1/complete", &completion).await;
        if let Err(e) = told {
            tracing::warn!("reporting what was done of lease {lease_id}: {e}");
            return false;
        }
    }
    true
}

/// Tells the coordinator that this worker leaves the fleet and why, so that its leases go
/// back to the queue at once rather than when they expire (and a fleet with nobody left
/// stops with the reason); returns whether it heard.
pub async fn leave(client: &Client, worker: WorkerInfo, e: &Error) -> bool {
    let leave = Leave {
        worker,
        error: e.message.clone(),
        kind: e.kind,
    };
    let told: Result<serde_json::Value, _> = client.post("/v1/leave", &leave).await;
    if let Err(told) = &told {
        tracing::warn!("telling the coordinator that this worker leaves: {told}");
    }
    told.is_ok()
}

/// The engine options a worker copies with, from the coordinator's settings.
fn transfer_options(spec: &TransferSpec) -> TransferOptions {
    let s = &spec.settings;
    TransferOptions {
        recursive: spec.recursive,
        max_connections: s.max_connections,
        memory_budget: s.memory_budget,
        part_size: s.part_size,
        multipart_threshold: s.multipart_threshold,
        retry: skyhaul_engine::retry::RetryPolicy {
            retries: s.retries,
            unreachable_retries: s.retries,
            ..Default::default()
        },
        server_side_copy: s.server_side_copy,
        storage_class: s.storage_class.clone(),
        bwlimit: s
            .bwlimit
            .map(|rate| Arc::new(skyhaul_engine::BandwidthLimit::new(rate))),
        ..TransferOptions::default()
    }
}

/// Who asks for leases, and the relay counts that go with each request.
struct Asker {
    info: WorkerInfo,
    relay: Relay,
}

/// What does a lease's items, and the denials they met.
struct Doer {
    exec: Arc<Executor>,
    concurrency: usize,
    denials: Arc<WorkerDenials>,
}

/// A worker's [`Denials`], counted by object: the parts of one object count as one denial,
/// as the object does in `cp` (a private object of 100 parts says nothing of the
/// credentials).
#[derive(Default)]
struct WorkerDenials {
    denials: Denials,
    /// Uploads a part of which was denied here.
    uploads: Mutex<HashSet<String>>,
}

impl WorkerDenials {
    /// An item failed with `e`; `upload`, the upload of a part. Returns the error that says
    /// this worker cannot copy anything, whatever the object: its credentials refused (where
    /// they were never seen accepted), a bucket missing as it sees it (another endpoint or
    /// account), its disk full. Such a worker leaves the fleet rather than fail every object
    /// it is handed; the rest of the fleet goes on. A denial stays one item's failure: it may
    /// be about that object alone (denials in a row are weighed, see [`DENIED_THEN`]).
    fn failed(&self, e: &Error, upload: Option<String>) -> Option<Error> {
        let counts = !self.denials.weighs(e)
            || upload.is_none_or(|id| self.uploads.lock().expect("lock").insert(id));
        if counts {
            self.denials.failed(e)
        } else {
            None
        }
    }

    fn done(&self) {
        self.denials.done();
    }

    fn suspect(&self) -> bool {
        self.denials.suspect()
    }

    fn stop(&self, then: &str) -> Option<Error> {
        self.denials.stop(then)
    }
}

async fn lease_loop(
    client: Arc<Client>,
    asker: Asker,
    doer: Doer,
    held: Held,
    counters: Arc<Counters>,
    end: Arc<End>,
) -> Result<(), ClientError> {
    let info = asker.info;
    let over = &end.token;
    loop {
        if end.draining.is_cancelled() {
            return Ok(());
        }
        // Denials in a row: nothing new is asked for until the leases out are over, whose
        // items decide whether they were about their objects or about these credentials.
        if doer.denials.suspect() {
            if !held.lock().expect("lock").is_empty() {
                tokio::select! {
                    _ = over.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
            if let Some(stop) = doer.denials.stop(DENIED_THEN) {
                end.unable(stop);
                return Ok(());
            }
        }
        let request = LeaseRequest {
            worker: info.clone(),
            relay: asker.relay.as_ref().map(|r| r.counts()),
        };
        let reply = tokio::select! {
            _ = over.cancelled() => return Ok(()),
            _ = end.draining.cancelled() => return Ok(()),
            r = client.post("/v1/lease", &request) => r?,
        };
        let lease = match reply {
            LeaseReply::Done => {
                over.cancel();
                return Ok(());
            }
            LeaseReply::Wait { ms } => {
                tokio::select! {
                    _ = over.cancelled() => return Ok(()),
                    _ = end.draining.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(ms.clamp(10, 5000))) => {}
                }
                continue;
            }
            LeaseReply::Lease(l) => l,
        };
        let drop_it = over.child_token();
        let holding = HeldLease {
            drop: drop_it.clone(),
            reporting: false,
            finished: Vec::new(),
        };
        let id = lease.lease_id;
        held.lock().expect("lock").insert(id, holding);
        let work = futures::stream::iter(lease.items)
            .map(|item| run_item(&doer, item))
            .buffer_unordered(doer.concurrency)
            .try_for_each(|r| {
                if let (Some(r), Some(h)) = (r, held.lock().expect("lock").get_mut(&id)) {
                    h.finished.push(r);
                }
                std::future::ready(Ok(()))
            });
        let worked = tokio::select! {
            r = work => r,
            // Done by another worker, the transfer is over, or this worker leaves: the
            // rest is not needed here (a request cut off here leaves no partial object; an
            // orphan part is overwritten or dropped with its upload). A leaving worker
            // reports what it finished (the lease stays held for that).
            _ = drop_it.cancelled() => {
                if over.is_cancelled() {
                    return Ok(());
                }
                held.lock().expect("lock").remove(&id);
                tracing::info!("lease {id} dropped: its work was done elsewhere");
                continue;
            }
        };
        // An error that says this worker cannot copy anything: it leaves, reporting what it
        // finished of the lease, whose rest the coordinator takes back.
        if let Err(e) = worked {
            end.unable(e);
            return Ok(());
        }
        // Stopped meanwhile: the results go with the leaving worker's report, whose client
        // gives up sooner (the coordinator may be gone: a local fleet killed).
        if end.draining.is_cancelled() {
            return Ok(());
        }
        let results = held
            .lock()
            .expect("lock")
            .get_mut(&id)
            .map(|h| {
                h.reporting = true;
                h.finished.clone()
            })
            .unwrap_or_default();
        let failed = results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
            .count() as u64;
        counters
            .items
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        counters.failed.fetch_add(failed, Ordering::Relaxed);
        let completion = Completion {
            worker: info.clone(),
            lease_id: id,
            results,
        };
        // Not cut short by a stop (the drain's bound is), so that it is not sent twice.
        let _: serde_json::Value = client.post("/v1/complete", &completion).await?;
        held.lock().expect("lock").remove(&id);
        counters.leases.fetch_add(1, Ordering::Relaxed);
    }
}

/// Does one item; an error that means this worker cannot copy anything
/// ([`WorkerDenials::failed`]) is returned instead of reported as the item's failure, and
/// an item the worker's stop kept from finishing has no result (the coordinator hands it
/// out again).
async fn run_item(doer: &Doer, item: WorkItem) -> Result<Option<ItemResult>, Error> {
    let exec = &doer.exec;
    let name = item.name();
    let upload = match &item {
        WorkItem::Part { upload, .. } => Some(upload.upload_id.clone()),
        WorkItem::Object { .. } => None,
    };
    let done = match item {
        WorkItem::Object {
            src,
            dst_key,
            unless_same,
        } => exec
            .copy(&src, &dst_key, unless_same)
            .await
            .map(|copied| match copied {
                Some(copied) => Outcome::Copied { copied },
                None => Outcome::Same,
            }),
        WorkItem::Part {
            src,
            upload,
            spec,
            server_side,
        } => exec
            .move_part(&src, &upload, spec, server_side)
            .await
            .map(|(part, sums)| Outcome::Part {
                part,
                sums: sums.as_ref().map(encode_sums),
            }),
    };
    let outcome = match done {
        Ok(outcome) => {
            doer.denials.done();
            outcome
        }
        Err(e) if e.kind == ErrorKind::Interrupted => return Ok(None),
        Err(e) => {
            if let Some(unable) = doer.denials.failed(&e, upload) {
                return Err(unable);
            }
            tracing::warn!("{name}: {}", e.message);
            Outcome::Failed {
                error: e.message,
                kind: Some(e.kind),
            }
        }
    };
    Ok(Some(ItemResult {
        item: name,
        outcome,
    }))
}

/// Tells the coordinator this worker is alive (renewing its leases) and how much it moved.
async fn heartbeats(
    client: Arc<Client>,
    info: WorkerInfo,
    progress: Arc<Progress>,
    relay: Relay,
    held: Held,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let beat = Heartbeat {
            worker: info.clone(),
            bytes_moved: progress.snapshot().bytes_moved,
            leases: held.lock().expect("lock").keys().copied().collect(),
            relay: relay.as_ref().map(|r| r.counts()),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = client.post::<_, HeartbeatReply>("/v1/heartbeat", &beat) => {
                match r {
                    Ok(reply) => {
                        let held = held.lock().expect("lock");
                        let expired: Vec<u64> = reply
                            .expired
                            .into_iter()
                            .filter(|id| held.get(id).is_some_and(|h| !h.reporting))
                            .collect();
                        if !expired.is_empty() {
                            tracing::warn!(
                                "leases {expired:?} expired at the coordinator; their results will count only if nobody else did the work first"
                            );
                        }
                        for id in &reply.superseded {
                            if let Some(h) = held.get(id) {
                                h.drop.cancel();
                            }
                        }
                    }
                    Err(e) => tracing::warn!("heartbeat: {e}"),
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn worker_metrics(Axum(live): Axum<Arc<Live>>) -> impl IntoResponse {
    let s = live.progress.snapshot();
    let c = &live.counters;
    let mut p = Page::default();
    p.metric(
        "skyhaul_worker_bytes_moved_total",
        "counter",
        "Bytes this worker moved.",
        s.bytes_moved as f64,
    );
    p.metric(
        "skyhaul_worker_items_total",
        "counter",
        "Work items this worker finished.",
        c.items.load(Ordering::Relaxed) as f64,
    );
    p.metric(
        "skyhaul_worker_items_failed_total",
        "counter",
        "Work items that failed here.",
        c.failed.load(Ordering::Relaxed) as f64,
    );
    p.metric(
        "skyhaul_worker_leases_total",
        "counter",
        "Leases this worker completed.",
        c.leases.load(Ordering::Relaxed) as f64,
    );
    p.metric(
        "skyhaul_worker_retries_total",
        "counter",
        "Requests retried.",
        s.retries as f64,
    );
    if let Some(r) = &live.relay {
        let r = r.counts();
        p.metric(
            "skyhaul_worker_relay_logical_bytes_total",
            "counter",
            "Bytes sent to the relay gateways before compression.",
            r.logical_sent as f64,
        );
        p.metric(
            "skyhaul_worker_relay_wire_bytes_total",
            "counter",
            "Bytes sent to the relay gateways on the wire (the egress).",
            r.wire_sent as f64,
        );
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyhaul_store::ErrorKind;

    fn denied(what: &str) -> Error {
        Error::new(ErrorKind::AccessDenied, format!("{what}: AccessDenied"))
    }

    /// A hundred denied parts of one object are one denial; a hundred denied objects are
    /// the credentials'; an item done in between clears them.
    #[test]
    fn denials_count_by_object() {
        let d = WorkerDenials::default();
        for part in 0..150 {
            d.failed(&denied(&format!("part {part}")), Some("big-upload".into()));
        }
        assert!(!d.suspect(), "one object's parts");
        for key in 0..98 {
            d.failed(&denied(&format!("k{key}")), None);
        }
        assert!(!d.suspect());
        d.failed(
            &denied("another object's part"),
            Some("other-upload".into()),
        );
        assert!(d.suspect(), "100 objects");
        assert!(d.stop(DENIED_THEN).unwrap().message.contains("--exclude"));
        d.done();
        assert!(!d.suspect() && d.stop(DENIED_THEN).is_none());
    }
}
