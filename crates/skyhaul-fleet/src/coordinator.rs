//! The coordinator: plans the transfer, hands work out to workers in leases sized by bytes,
//! takes leases back from workers that go silent, completes multipart uploads whose parts
//! many workers sent, and keeps its state in the journal.
//!
//! Why leases by bytes and not a split of the listing up front: workers that finish early
//! simply ask again, so a slow worker or a few huge objects do not hold up the end; and the
//! parts of one large object go to many workers like any other work.
//!
//! A worker that finds it cannot copy anything (its credentials refused, its disk full)
//! leaves the fleet and says why; its leases go back to the queue at once, and the others go
//! on. Only when no worker is left, and none has joined for a while, does the transfer stop,
//! with that worker's error.
//!
//! Workers sign in with their own credentials, which may lack a permission the others
//! have. So an item a worker was denied goes to another worker once before it counts as
//! failed, and a worker denied a hundred items in a row, nothing done between them, leaves.
//! A local fleet's workers share one environment: there, a denial counts at once.
//!
//! What survives a restart (all in the journal): objects done, open uploads with their
//! finished parts, and the leases. A restarted coordinator plans again from the listing,
//! skips what is done, and takes the leases that were out back as its own (with a fresh
//! timeout), so a worker that finished one while the coordinator was away reports it
//! instead of the work being sent again.

use crate::auth::{self, Token};
use crate::metrics::{self, Page};
use crate::protocol::*;
use crate::status::{Rate, Status, WorkerStatus};
use axum::extract::State as Axum;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use skyhaul_engine::plan::Job;
use skyhaul_engine::{Endpoint, Executor, OpenUpload, Progress, Report, TransferOptions};
use skyhaul_journal::{
    Journal, TransferId, LEASE_COMPLETED, LEASE_EXPIRED, LEASE_GRANTED, LEASE_RETURNED,
    LEASE_SUPERSEDED,
};
use skyhaul_relay::{RelayCounts, RelayStats};
use skyhaul_store::{CompletedPart, Error, ErrorKind, MultipartUpload, ObjectMeta, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod speculate;

/// The most items in one lease, however small they are.
const MAX_ITEMS_PER_LEASE: usize = 1000;
/// What an item counts for when sizing a lease, at least: a tiny object still costs requests.
const MIN_ITEM_COST: u64 = 256 << 10;

/// What `item` counts for when sizing a lease.
fn cost(item: &WorkItem) -> u64 {
    item.bytes().max(MIN_ITEM_COST)
}
/// Items queued beyond which the planner waits: memory stays bounded on huge listings.
const MAX_QUEUED: usize = 50_000;
/// With no worker left, how many lease timeouts a coordinator waits for a worker to join
/// (or another to leave) before it stops: the machines of a launched fleet come up minutes
/// apart, and a worker that has joined still opens both sides before it asks for work.
const QUIET_TIMEOUTS: u32 = 4;

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// A lease not renewed by a heartbeat within this time goes back to the queue.
    pub lease_timeout: Duration,
    /// Bytes of work in one lease (fewer near the end, so that the last work is spread).
    pub lease_bytes: u64,
    /// After the end, how long to keep telling workers that the transfer is over.
    pub linger: Duration,
    /// With nothing queued, a lease out for this long (and twice as long as leases usually
    /// take) is also handed to an idle worker.
    pub speculate_after: Duration,
    /// Every worker is this process's child (`cp --workers N`): those of an earlier run
    /// ended with it, so its leases go back to the queue at once instead of after a lease
    /// timeout of waiting for results that cannot come.
    pub only_local_workers: bool,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            lease_timeout: Duration::from_secs(30),
            lease_bytes: 64 << 20,
            linger: Duration::from_secs(10),
            speculate_after: Duration::from_secs(2),
            only_local_workers: false,
        }
    }
}

struct Pending {
    item: WorkItem,
    /// The lease holding it, or none while queued.
    lease: Option<u64>,
    /// A speculative copy of that lease holding it too.
    spare: Option<u64>,
    /// Taken back from a previous coordinator's lease.
    restored: bool,
    /// The worker that was denied it, and when: it waits for another worker's try.
    denied: Option<(String, Instant)>,
}

struct Active {
    worker: String,
    items: Vec<String>,
    deadline: Instant,
    granted: Instant,
    bytes: u64,
    /// The speculative copy of this lease handed to another worker, if any.
    copy: Option<u64>,
    /// The lease this one is a speculative copy of.
    copy_of: Option<u64>,
}

/// A striped object whose parts are out.
struct Upload {
    src: ObjectMeta,
    open: OpenUpload,
    parts: BTreeMap<u32, (CompletedPart, Option<String>)>,
    total: usize,
    failed: bool,
    /// Its completion has started: a late duplicate part must not start another.
    completing: bool,
    /// Continued from the journal (an earlier coordinator's upload).
    resumed: bool,
}

struct Worker {
    info: WorkerInfo,
    rate: Rate,
    last_seen: Instant,
    items_done: u64,
    told_done: bool,
    /// Relay mode: the latest totals the worker reported.
    relay: Option<RelayCounts>,
    /// When it left the fleet, and the error it left with.
    left: Option<(Instant, Error)>,
}

impl Worker {
    /// Heard from within `timeout`, and still in the fleet.
    fn working(&self, now: Instant, timeout: Duration) -> bool {
        self.left.is_none() && now.duration_since(self.last_seen) <= timeout
    }
}

#[derive(Default)]
struct State {
    phase: &'static str,
    planning_done: bool,
    /// Item names in hand-out order; names no longer queued are skipped when popped.
    queue: VecDeque<String>,
    /// The [`cost`] of the queued items: the end of the work is spread by it, in the units
    /// leases are cut in (bytes counted leases of tiny objects 64 times too small).
    queued_cost: u64,
    /// Every item not done yet, queued or leased.
    items: HashMap<String, Pending>,
    leases: HashMap<u64, Active>,
    next_lease: u64,
    uploads: HashMap<String, Upload>,
    /// Parts reported before their upload was registered (after a restart).
    early_parts: HashMap<String, Vec<(CompletedPart, Option<String>)>>,
    /// Uploads being completed.
    completing: usize,
    /// Objects of taken-back leases done in this run before the planner reached them: the
    /// journal says they are done, but this run copied them (not an earlier one).
    restored_done: std::collections::HashSet<String>,
    workers: BTreeMap<String, Worker>,
    granted: u64,
    expired: u64,
    /// Leases given back by workers that left the fleet.
    returned: u64,
    /// Items a worker was denied, handed to another worker for a second try.
    denials_retried: u64,
    /// When a worker last joined (asked what the transfer is) or left the fleet.
    roster_changed: Option<Instant>,
    duplicates: u64,
    /// Speculative copies of leases handed to idle workers.
    reissued: u64,
    /// Leases ended because another lease did all their work; their holders are told.
    superseded: std::collections::HashSet<u64>,
    superseded_count: u64,
    /// How fast recent leases were done, bytes per second from grant to report (for
    /// speculation's threshold).
    rates: VecDeque<f64>,
}

impl State {
    fn enqueue(&mut self, item: WorkItem, front: bool) {
        let name = item.name();
        if self.items.contains_key(&name) {
            return;
        }
        self.queued_cost += cost(&item);
        match front {
            true => self.queue.push_front(name.clone()),
            false => self.queue.push_back(name.clone()),
        }
        self.items.insert(
            name,
            Pending {
                item,
                lease: None,
                spare: None,
                restored: false,
                denied: None,
            },
        );
    }

    /// The names of upload `id`'s parts not done yet (none if it is not registered).
    fn parts_of(&self, id: &str) -> Vec<String> {
        let total = self.uploads.get(id).map_or(0, |u| u.total);
        (1..=total as u32)
            .map(|number| WorkItem::part_name(id, number))
            .filter(|name| self.items.contains_key(name))
            .collect()
    }

    fn finished_copying(&self) -> bool {
        self.planning_done && self.items.is_empty() && self.completing == 0
    }

    fn live_workers(&self, now: Instant, timeout: Duration) -> usize {
        self.workers
            .values()
            .filter(|w| w.working(now, timeout))
            .count()
    }

    /// The error of the worker that left the fleet last, as the transfer's own: nobody is
    /// left to do the work. Its kind is kept, so the exit code says what to fix.
    fn left_last(&self) -> Option<Error> {
        let (id, (_, e)) = self
            .workers
            .iter()
            .filter_map(|(id, w)| Some((id, w.left.as_ref()?)))
            .max_by_key(|(_, (at, _))| *at)?;
        Some(Error::new(
            e.kind,
            format!(
                "{} (no worker is left to do the work: {id}, the last to leave the fleet, left with this error; rerun to resume once it is fixed)",
                e.message
            ),
        ))
    }

    /// [`State::left_last`], when nobody is left to do the work that remains: a worker has
    /// left the fleet, every other has left or gone silent, and `quiet` has passed since a
    /// worker last joined, left or went silent.
    fn stranded(&self, now: Instant, timeout: Duration, quiet: Duration) -> Option<Error> {
        if self.finished_copying() || self.live_workers(now, timeout) > 0 {
            return None;
        }
        let went_silent = self
            .workers
            .values()
            .filter(|w| w.left.is_none())
            .map(|w| w.last_seen + timeout)
            .max();
        let changed = self.roster_changed.max(went_silent)?;
        if now.saturating_duration_since(changed) < quiet {
            return None;
        }
        self.left_last()
    }

    /// Ends lease `id` and puts what it held back in the queue, first; returns the lease
    /// and how many items went back.
    fn take_back(&mut self, id: u64) -> Option<(Active, usize)> {
        let items = self.leases.get(&id)?.items.clone();
        let back = speculate::release(self, id, &items);
        Some((self.leases.remove(&id)?, back))
    }

    fn worker(&mut self, info: &WorkerInfo) -> &mut Worker {
        let w = self
            .workers
            .entry(info.id.clone())
            .or_insert_with(|| Worker {
                info: info.clone(),
                rate: Rate::default(),
                last_seen: Instant::now(),
                items_done: 0,
                told_done: false,
                relay: None,
                left: None,
            });
        w.last_seen = Instant::now();
        w
    }

    /// Takes a worker's relay totals. What they hold beyond the worker's previous report is
    /// added to the transfer's counts, so each byte is counted once, by the worker that sent
    /// it, whatever happened to the lease it was for: bytes a superseded or expired lease
    /// sent crossed the link too, and are egress like any other.
    fn relay_report(&mut self, info: &WorkerInfo, counts: Option<RelayCounts>, into: &Relay) {
        let Some(counts) = counts else { return };
        let w = self.worker(info);
        let before = w.relay.unwrap_or_default();
        let now = before.max(&counts);
        w.relay = Some(now);
        if let Some(total) = into {
            total.add_counts(&now.since(&before));
        }
    }
}

/// The coordinator's own relay counts, to which the workers' reports are added.
type Relay = Option<Arc<RelayStats>>;

/// Work to do after the state lock is released (it involves I/O).
enum Effect {
    RecordPart(MultipartUpload, CompletedPart, Option<String>),
    Complete(String),
    Abort(MultipartUpload),
}

struct Shared {
    exec: Executor,
    journal: Option<Arc<Journal>>,
    tid: Option<TransferId>,
    spec: TransferSpec,
    opts: CoordinatorOptions,
    relay: Relay,
    state: Mutex<State>,
    /// Signalled when work finishes or the queue shrinks.
    wake: Notify,
    cancel: CancellationToken,
    local_workers_gone: Option<Arc<AtomicBool>>,
    /// Why the coordinator stopped the transfer itself: nobody was left to do it.
    stopped: Mutex<Option<Error>>,
}

impl Shared {
    /// Whether an item a worker was denied goes to another worker before it counts as
    /// failed: not in a local fleet, whose workers all have the same credentials.
    fn second_opinions(&self) -> bool {
        self.local_workers_gone.is_none()
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn journal(
        &self,
        what: &str,
        f: impl FnOnce(&Journal, TransferId) -> skyhaul_journal::Result<()>,
    ) {
        if let (Some(j), Some(id)) = (&self.journal, self.tid) {
            if let Err(e) = f(j, id) {
                tracing::warn!("journal: {what}: {e}");
            }
        }
    }
}

/// Everything [`run`] needs besides the two sides.
pub struct Setup {
    pub listener: tokio::net::TcpListener,
    /// Serve the API over TLS with this configuration (see [`crate::tls`]).
    pub tls: Option<Arc<skyhaul_tls::ServerConfig>>,
    pub token: Token,
    pub spec: TransferSpec,
    pub transfer: TransferOptions,
    pub options: CoordinatorOptions,
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
    pub journal: Option<Arc<Journal>>,
    /// Relay mode: the byte counts of the coordinator's own relay store. The workers' counts
    /// are added to them as they report, so after [`run`] they cover the whole transfer
    /// (what workers sent before they were last heard from).
    pub relay: Option<Arc<RelayStats>>,
    /// A fleet whose only workers are local processes (`cp/sync --workers N`): set once
    /// every one of them has exited. Nobody is left then, so the transfer stops at once
    /// (with the error a worker left the fleet with, if one did). `None` where workers
    /// join from elsewhere.
    pub local_workers_gone: Option<Arc<AtomicBool>>,
}

/// Runs a transfer as its coordinator, serving workers on `setup.listener` until the
/// transfer is over (and `linger` after, so workers hear it). Returns the report, with the
/// verification done here.
pub async fn run(src: &Endpoint, dst: &Endpoint, setup: Setup) -> Result<Report> {
    let started = Instant::now();
    let Setup {
        listener,
        tls,
        token,
        mut spec,
        transfer,
        options,
        progress,
        cancel,
        journal,
        relay,
        local_workers_gone,
    } = setup;
    let exec = Executor::coordinator(
        src,
        dst,
        &transfer,
        progress.clone(),
        cancel.clone(),
        journal.clone(),
    )
    .await?;
    let tid = exec.transfer_id();
    // Without a journal, an id of this run's own: a restart is another transfer then.
    spec.transfer_id = Some(
        tid.map(|t| t.to_string())
            .unwrap_or_else(|| format!("unjournaled-{:016x}", rand::random::<u64>())),
    );
    spec.lease_timeout_ms = options.lease_timeout.as_millis() as u64;
    let shared = Arc::new(Shared {
        exec,
        journal,
        tid,
        spec,
        opts: options,
        relay,
        state: Mutex::new(State {
            phase: "planning",
            ..State::default()
        }),
        wake: Notify::new(),
        cancel: cancel.clone(),
        local_workers_gone,
        stopped: Mutex::new(None),
    });
    restore_leases(&shared);

    let stop = CancellationToken::new();
    let server = {
        let app = router(shared.clone(), token);
        let stop = stop.clone().cancelled_owned();
        match tls {
            Some(config) => {
                let listener = crate::tls::TlsListener::new(listener, config)
                    .map_err(|e| Error::new(ErrorKind::Other, format!("coordinator: {e}")))?;
                tokio::spawn(serve(listener, app, stop))
            }
            None => tokio::spawn(serve(listener, app, stop)),
        }
    };
    let expiry = tokio::spawn(watch_leases(shared.clone(), stop.clone()));

    let result = coordinate(&shared, src, dst, started).await;
    let stopped = shared
        .stopped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let result = stopped.map_or(result, Err);
    // Workers are told the transfer is over once every item was tried (the copying phase
    // ended), even where it ends with an error (every object denied, a failed check):
    // nothing is left for them.
    let tried = result.is_ok() || shared.state().phase == "finishing";
    shared.state().phase = "done";
    if tried && !cancel.is_cancelled() {
        linger(&shared).await;
    }
    stop.cancel();
    let _ = server.await;
    let _ = expiry.await;
    result
}

async fn serve<L>(listener: L, app: Router, stop: tokio_util::sync::WaitForCancellationFutureOwned)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
    if let Err(e) = r {
        tracing::error!("coordinator server: {e}");
    }
}

/// Plans, waits for the work to be done, and concludes.
async fn coordinate(
    shared: &Arc<Shared>,
    src: &Endpoint,
    dst: &Endpoint,
    started: Instant,
) -> Result<Report> {
    let (planner, mut rx) = shared.exec.plan(src, dst).await?;
    shared.state().phase = "copying";
    let mut deletes = Vec::new();
    while let Some(job) = rx.recv().await {
        if shared.cancel.is_cancelled() {
            break;
        }
        while shared.state().items.len() >= MAX_QUEUED && !shared.cancel.is_cancelled() {
            let _ = tokio::time::timeout(Duration::from_millis(200), shared.wake.notified()).await;
        }
        // A sync's rerun copies again what an earlier run announced and did not record: no
        // worker may be handed a write before its announcement is committed.
        shared.exec.writes_announced().await;
        match job {
            Job::Copy { src, dst_key } => add_object(shared, src, dst_key, None).await,
            Job::CopyUnlessSame { src, dst, dst_key } => {
                add_object(shared, src, dst_key, Some(dst)).await
            }
            Job::Delete { dst_key } => deletes.push(dst_key),
            Job::Unlisted { key, error, .. } => shared.exec.record_failure(&key, error),
        }
    }
    drop(rx);
    let listed = match planner.await {
        Ok(r) => r,
        Err(e) => Err(Error::new(ErrorKind::Other, format!("planner failed: {e}"))),
    };
    shared.state().planning_done = true;
    shared.exec.progress().set_listing_done();
    let listed = listed?;
    if listed == 0 && shared.spec.recursive && !shared.cancel.is_cancelled() {
        return Err(shared.exec.nothing_at_source(src).await);
    }
    loop {
        if shared.state().finished_copying() || shared.cancel.is_cancelled() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), shared.wake.notified()).await;
    }
    shared.state().phase = "finishing";
    // Stopped by the user or a scheduler, not by an error (then nobody is left to report).
    let stopped_by_error = shared.stopped.lock().is_ok_and(|s| s.is_some());
    if shared.cancel.is_cancelled() && !stopped_by_error {
        drain(shared).await;
    }
    if let Some(denied) = shared.exec.denied_everything() {
        return Err(denied);
    }
    shared.exec.conclude(src, dst, deletes, started).await
}

/// How long a stopped coordinator waits for the leases out: a stopped worker lets its
/// items in flight finish for up to 15 s, then reports them.
const DRAIN: Duration = Duration::from_secs(20);

/// After a stop (Ctrl-C, SIGTERM; a local fleet's workers get SIGTERM with it), waits until
/// the workers have reported or given back their leases, and the uploads whose last parts
/// they reported are completed, for [`DRAIN`] at most: what they finish in that time is
/// journaled and counted rather than sent again by the rerun, as a stopped `cp` keeps its
/// bytes in flight.
async fn drain(shared: &Shared) {
    let deadline = Instant::now() + DRAIN;
    let busy = || {
        let st = shared.state();
        !st.leases.is_empty() || st.completing > 0
    };
    while Instant::now() < deadline && busy() {
        let _ = tokio::time::timeout(Duration::from_millis(100), shared.wake.notified()).await;
    }
}

/// Queues one object: whole, or as the parts of an upload created here.
async fn add_object(
    shared: &Arc<Shared>,
    src: ObjectMeta,
    dst_key: String,
    unless_same: Option<ObjectMeta>,
) {
    let exec = &shared.exec;
    if exec.is_done(&src, unless_same.is_none()) {
        let name = WorkItem::object_name(&src.key);
        if shared.state().restored_done.remove(&name) {
            return;
        }
        exec.progress().add_resumed(src.size, unless_same.is_none());
        return;
    }
    if unless_same.is_some() || !exec.stripes(src.size) {
        shared.state().enqueue(
            WorkItem::Object {
                src,
                dst_key,
                unless_same,
            },
            false,
        );
        return;
    }
    let open = match exec.open_upload(&src, &dst_key).await {
        Ok(open) => open,
        Err(e) => return exec.record_failure(&src.key, e),
    };
    let missing = open.missing_parts(src.size);
    let upload_id = open.upload.upload_id.clone();
    let resumed = !open.done.is_empty();
    let complete_now = {
        let mut st = shared.state();
        let mut parts: BTreeMap<u32, _> = open
            .done
            .iter()
            .map(|(p, s)| (p.number, (p.clone(), s.clone())))
            .collect();
        let early = st.early_parts.remove(&upload_id).unwrap_or_default();
        // Parts this run's workers sent (early) counted as moved when they came, whether
        // the journal had them by now or not.
        for (p, _) in &open.done {
            if !early.iter().any(|(e, _)| e.number == p.number) {
                exec.progress().add_reused(p.len);
            }
        }
        for (p, s) in early {
            parts.insert(p.number, (p, s));
        }
        let total = parts.len() + missing.len();
        for spec in missing {
            if parts.contains_key(&spec.number) {
                continue;
            }
            st.enqueue(
                WorkItem::Part {
                    src: src.clone(),
                    upload: open.upload.clone(),
                    spec,
                    server_side: open.server_side,
                },
                false,
            );
        }
        let total = total.min(src.size.div_ceil(open.part_size) as usize);
        let complete_now = parts.len() >= total;
        if complete_now {
            st.completing += 1;
        }
        st.uploads.insert(
            upload_id.clone(),
            Upload {
                src,
                open,
                parts,
                total,
                failed: false,
                completing: complete_now,
                resumed,
            },
        );
        complete_now
    };
    if complete_now {
        spawn_completion(shared.clone(), upload_id);
    }
}

/// Completes an upload whose every part is in, off the request path.
fn spawn_completion(shared: Arc<Shared>, upload_id: String) {
    tokio::spawn(async move {
        let upload = shared.state().uploads.remove(&upload_id);
        if let Some(u) = upload {
            let parts = u.parts.into_values().collect();
            match shared.exec.complete_upload(&u.src, &u.open, parts).await {
                Ok(_) => {}
                // A journaled upload the store no longer has, and whose object is not there
                // either (checked by the completion): an earlier coordinator was killed
                // while completing it, and some stores (s3s-fs) drop an upload's parts when
                // a completion starts. Once, the object is sent afresh.
                Err(e)
                    if u.resumed
                        && matches!(e.kind, ErrorKind::NotFound | ErrorKind::AccessDenied) =>
                {
                    tracing::info!(
                        "{e}; the journaled upload is gone, sending {} afresh",
                        u.src.key
                    );
                    shared.exec.forget_upload(&u.open.upload);
                    let dst_key = u.open.upload.key.clone();
                    Box::pin(add_object(&shared, u.src, dst_key, None)).await;
                }
                Err(e) => shared.exec.record_failure(&u.src.key, e),
            }
        }
        shared.state().completing -= 1;
        shared.wake.notify_waiters();
    });
}

/// Takes back the leases a previous coordinator of this transfer had out when it stopped.
fn restore_leases(shared: &Shared) {
    let (Some(j), Some(id)) = (&shared.journal, shared.tid) else {
        return;
    };
    let leases = match j.fleet_leases(id) {
        Ok(l) => l,
        Err(e) => return tracing::warn!("journal: reading leases: {e}"),
    };
    let mut st = shared.state();
    st.next_lease = leases.iter().map(|l| l.lease_id + 1).max().unwrap_or(1);
    let deadline = Instant::now() + shared.opts.lease_timeout;
    for lease in leases.into_iter().filter(|l| l.state == LEASE_GRANTED) {
        if shared.opts.only_local_workers {
            // The planner queues their work again, as anything not done.
            if let Err(e) = j.lease_ended(id, lease.lease_id, LEASE_RETURNED) {
                tracing::warn!("journal: returning lease {}: {e}", lease.lease_id);
            }
            continue;
        }
        let Ok(items) = serde_json::from_str::<Vec<WorkItem>>(&lease.payload) else {
            continue;
        };
        let mut names = Vec::new();
        let mut copy_of = None;
        for item in items {
            // Reported (and journaled) just before the stop: nothing left to take back.
            if matches!(&item, WorkItem::Object { src, .. } if shared.exec.is_done(src, false)) {
                continue;
            }
            let name = item.name();
            names.push(name.clone());
            // A speculative copy of an earlier lease (both were out): it stays the spare.
            if let Some(p) = st.items.get_mut(&name) {
                copy_of = copy_of.or(p.lease);
                p.spare = Some(lease.lease_id);
                continue;
            }
            st.items.insert(
                name,
                Pending {
                    item,
                    lease: Some(lease.lease_id),
                    spare: None,
                    restored: true,
                    denied: None,
                },
            );
        }
        if let Some(original) = copy_of.and_then(|o| st.leases.get_mut(&o)) {
            original.copy = Some(lease.lease_id);
        }
        tracing::info!(
            "taking back lease {} of worker {} ({} items)",
            lease.lease_id,
            lease.worker,
            names.len()
        );
        st.leases.insert(
            lease.lease_id,
            Active {
                worker: lease.worker,
                items: names,
                deadline,
                granted: Instant::now(),
                bytes: lease.bytes,
                copy: None,
                copy_of,
            },
        );
    }
}

/// Every quarter of the timeout (a second at most): leases not renewed in time go back to
/// the queue, first; a transfer nobody is left to do stops.
async fn watch_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let every =
        (shared.opts.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        expire_leases(&shared);
        // Once cancelled (Ctrl-C, whose signal also ends a local fleet's workers), the stop
        // is not this task's to explain.
        if shared.cancel.is_cancelled() {
            continue;
        }
        if let Some(e) = nobody_left(&shared) {
            let mut stopped = shared.stopped.lock().unwrap_or_else(|e| e.into_inner());
            stopped.get_or_insert(e);
            shared.cancel.cancel();
        }
    }
}

/// The error that ends a transfer nobody is left to do: a local fleet's workers have all
/// exited, or every worker has left the fleet or gone silent and none has joined for
/// [`QUIET_TIMEOUTS`] lease timeouts.
fn nobody_left(shared: &Shared) -> Option<Error> {
    let st = shared.state();
    let timeout = shared.opts.lease_timeout;
    let local_gone = shared
        .local_workers_gone
        .as_ref()
        .is_some_and(|gone| gone.load(Ordering::Relaxed));
    if local_gone && !st.finished_copying() {
        return Some(st.left_last().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Other,
                "every worker exited before the transfer finished (rerun the command to resume)",
            )
        }));
    }
    st.stranded(Instant::now(), timeout, timeout * QUIET_TIMEOUTS)
}

/// Leases not renewed in time go back to the queue, first.
fn expire_leases(shared: &Shared) {
    let now = Instant::now();
    let mut ended = Vec::new();
    {
        let mut st = shared.state();
        let due: Vec<u64> = st
            .leases
            .iter()
            .filter(|(_, l)| l.deadline < now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let (lease, back) = st.take_back(id).expect("listed");
            st.expired += 1;
            tracing::warn!(
                "lease {id} of worker {} expired: {back} items back in the queue",
                lease.worker
            );
            ended.push(id);
        }
    }
    for id in ended {
        shared.journal("lease end", |j, t| j.lease_ended(t, id, LEASE_EXPIRED));
    }
}

/// After the end: until every worker still alive has been told, or `linger` passes.
async fn linger(shared: &Shared) {
    let deadline = Instant::now() + shared.opts.linger;
    while Instant::now() < deadline {
        let waiting = {
            let st = shared.state();
            let now = Instant::now();
            st.workers
                .values()
                .any(|w| !w.told_done && w.working(now, shared.opts.lease_timeout))
        };
        if !waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn router(shared: Arc<Shared>, token: Token) -> Router {
    Router::new()
        .route("/v1/transfer", get(transfer_spec))
        .route("/v1/lease", post(lease))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/complete", post(complete))
        .route("/v1/leave", post(leave))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(token, auth::require))
        .with_state(shared)
}

async fn transfer_spec(Axum(shared): Axum<Arc<Shared>>) -> Json<TransferSpec> {
    // A worker joins: it is not heard from again until it has opened both sides.
    shared.state().roster_changed = Some(Instant::now());
    Json(shared.spec.clone())
}

/// Records `worker`'s first denial of item `name`: it waits for another worker's try, and so
/// do the other parts of its object (they are as denied to this worker as this one).
fn deny(st: &mut State, name: &str, worker: &str, now: Instant) {
    st.denials_retried += 1;
    let mut names = match &st.items[name].item {
        WorkItem::Part { upload, .. } => st.parts_of(&upload.upload_id),
        WorkItem::Object { .. } => Vec::new(),
    };
    names.push(name.to_string());
    for name in names {
        let p = st.items.get_mut(&name).expect("pending");
        p.denied.get_or_insert_with(|| (worker.to_string(), now));
    }
}

/// Whether a worker reported an item denied to it (a worker of a version before the kind
/// was sent reports none: its denials count at once).
fn is_denial(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed {
            kind: Some(ErrorKind::AccessDenied | ErrorKind::BadCredentials),
            ..
        }
    )
}

/// Whether an item denied to `worker` ([`Pending::denied`]) waits for another's try rather
/// than go back to it: while another worker is at work, or while one may yet join (for
/// [`QUIET_TIMEOUTS`] lease timeouts after the denial). Then it is the denier's again, and a
/// second denial counts as the item's failure.
fn second_try_waits<'a>(
    st: &State,
    worker: &'a str,
    now: Instant,
    timeout: Duration,
) -> impl Fn(&(String, Instant)) -> bool + 'a {
    let others = st
        .workers
        .values()
        .any(|w| w.info.id != worker && w.working(now, timeout));
    move |(denier, at)| {
        denier == worker && (others || now.duration_since(*at) < timeout * QUIET_TIMEOUTS)
    }
}

/// A worker of another transfer (whose coordinator was at this address before, with the
/// same token): refused, as its stores are that transfer's, and its results name items by
/// source key alone, which this transfer's may share.
struct OtherTransfer(String);

impl IntoResponse for OtherTransfer {
    fn into_response(self) -> axum::response::Response {
        (axum::http::StatusCode::CONFLICT, self.0).into_response()
    }
}

fn same_transfer(shared: &Shared, worker: &WorkerInfo) -> std::result::Result<(), OtherTransfer> {
    let ours = shared.spec.transfer_id.as_deref().unwrap_or("-");
    match worker.transfer.as_deref() {
        Some(theirs) if theirs != ours => Err(OtherTransfer(format!(
            "transfer {ours}; the worker joined {theirs}"
        ))),
        _ => Ok(()),
    }
}

type Answer<T> = std::result::Result<Json<T>, OtherTransfer>;

async fn lease(
    Axum(shared): Axum<Arc<Shared>>,
    Json(req): Json<LeaseRequest>,
) -> Answer<LeaseReply> {
    same_transfer(&shared, &req.worker)?;
    let timeout = shared.opts.lease_timeout;
    let mut st = shared.state();
    st.relay_report(&req.worker, req.relay, &shared.relay);
    // A worker that left is done with the transfer, whatever it asks after its leave.
    let done = st.phase == "done";
    let w = st.worker(&req.worker);
    if done || w.left.is_some() {
        w.told_done = true;
        return Ok(Json(LeaseReply::Done));
    }
    // Stopping: the leases out end with what is in flight (see `drain`); nothing new goes
    // out, and a worker told `Done` would drop its other leases' work.
    if shared.cancel.is_cancelled() {
        return Ok(Json(LeaseReply::Wait { ms: 1000 }));
    }
    let now = Instant::now();
    let live = st.live_workers(now, timeout).max(1) as u64;
    let mut target = shared.opts.lease_bytes.max(1);
    if st.planning_done {
        // The last work is spread over everyone rather than handed to the first to ask.
        target = target.min((st.queued_cost / (2 * live)).max(1));
    }
    let mut items = Vec::new();
    let (mut taken, mut bytes) = (0u64, 0u64);
    let waits = second_try_waits(&st, &req.worker.id, now, timeout);
    let mut denied_here = Vec::new();
    while let Some(name) = st.queue.pop_front() {
        let Some(p) = st.items.get(&name).filter(|p| p.lease.is_none()) else {
            continue;
        };
        if p.denied.as_ref().is_some_and(&waits) {
            denied_here.push(name);
            continue;
        }
        let c = cost(&p.item);
        if !items.is_empty() && taken + c > target {
            st.queue.push_front(name);
            break;
        }
        taken += c;
        bytes += p.item.bytes();
        items.push(name);
        if items.len() >= MAX_ITEMS_PER_LEASE {
            break;
        }
    }
    for name in denied_here.into_iter().rev() {
        st.queue.push_front(name);
    }
    let lease_id = st.next_lease.max(1);
    let mut copy_of = None;
    if items.is_empty() {
        // Nothing queued: once the plan is complete, an idle worker doubles the oldest
        // lease still out (see `speculate`), so that a slow holder does not hold up the end.
        let after = shared.opts.speculate_after;
        copy_of = st
            .planning_done
            .then(|| speculate::pick(&st, &req.worker.id, after, now))
            .flatten();
        let Some(original) = copy_of else {
            return Ok(Json(LeaseReply::Wait { ms: 250 }));
        };
        let l = &st.leases[&original];
        items = speculate::pending_for(&st, original, l, &req.worker.id)
            .cloned()
            .collect();
        bytes = items.iter().map(|n| st.items[n].item.bytes()).sum();
        tracing::info!(
            "re-issuing lease {original} of worker {} to idle worker {} as lease {lease_id}",
            l.worker,
            req.worker.id
        );
        st.leases.get_mut(&original).expect("picked").copy = Some(lease_id);
        st.reissued += 1;
    } else {
        st.queued_cost -= taken;
    }
    st.next_lease = lease_id + 1;
    st.granted += 1;
    let mut work = Vec::with_capacity(items.len());
    for name in &items {
        let p = st.items.get_mut(name).expect("checked");
        match copy_of {
            Some(_) => p.spare = Some(lease_id),
            None => p.lease = Some(lease_id),
        }
        work.push(p.item.clone());
    }
    st.leases.insert(
        lease_id,
        Active {
            worker: req.worker.id.clone(),
            items: items.clone(),
            deadline: now + timeout,
            granted: now,
            bytes,
            copy: None,
            copy_of,
        },
    );
    drop(st);
    let payload = serde_json::to_string(&work).expect("work items serialise");
    shared.journal("lease", |j, t| {
        j.lease_granted(t, lease_id, &req.worker.id, bytes, &payload, items)
    });
    Ok(Json(LeaseReply::Lease(Lease {
        lease_id,
        items: work,
        timeout_ms: timeout.as_millis() as u64,
    })))
}

async fn heartbeat(
    Axum(shared): Axum<Arc<Shared>>,
    Json(hb): Json<Heartbeat>,
) -> Answer<HeartbeatReply> {
    same_transfer(&shared, &hb.worker)?;
    let deadline = Instant::now() + shared.opts.lease_timeout;
    let mut guard = shared.state();
    let st = &mut *guard;
    st.relay_report(&hb.worker, hb.relay, &shared.relay);
    let w = st.worker(&hb.worker);
    w.rate.record(Instant::now(), hb.bytes_moved);
    let left = w.left.is_some();
    let (mut expired, mut superseded) = (Vec::new(), Vec::new());
    for id in hb.leases {
        match st.leases.get_mut(&id) {
            Some(l) if l.worker == hb.worker.id && !left => l.deadline = deadline,
            _ if st.superseded.contains(&id) => superseded.push(id),
            _ => expired.push(id),
        }
    }
    Ok(Json(HeartbeatReply {
        expired,
        superseded,
    }))
}

async fn complete(
    Axum(shared): Axum<Arc<Shared>>,
    Json(c): Json<Completion>,
) -> Answer<serde_json::Value> {
    // Run to the end whatever the worker does: its state changes come first, their
    // effects (a part's record, an upload's completion) after, and a worker that drops
    // the request (stopped) would otherwise drop the effects with it, leaving an upload
    // that is never completed and a transfer that never ends.
    tokio::spawn(take_completion(shared, c))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

async fn take_completion(shared: Arc<Shared>, c: Completion) -> Answer<serde_json::Value> {
    same_transfer(&shared, &c.worker)?;
    let mut effects = Vec::new();
    let mut outcomes = Vec::new();
    let reported = c.results.len();
    let (superseded, was_superseded, partly) = {
        let mut st = shared.state();
        st.worker(&c.worker);
        // The other leases that held an item reported here: done now, they may be over.
        let mut others = Vec::new();
        let mut done = 0;
        let now = Instant::now();
        let waits = second_try_waits(&st, &c.worker.id, now, shared.opts.lease_timeout);
        for r in c.results {
            if let Some(p) = st.items.get(&r.item) {
                let other = [p.lease, p.spare].into_iter().flatten();
                let other: Vec<u64> = other.filter(|&l| l != c.lease_id).collect();
                let failed = matches!(r.outcome, Outcome::Failed { .. });
                let denial = is_denial(&r.outcome) && shared.second_opinions();
                // A first denial: another worker's credentials may allow what these do not.
                let first_denial = denial && p.denied.is_none();
                // The same worker's again while the item still waits for another's try (a
                // lease of its that expired came back to it, or it had the item in flight).
                let again = denial && p.denied.as_ref().is_some_and(&waits);
                // Those, or one holder of a doubled item failed (the other may still
                // succeed): the item is not over.
                if first_denial || again || (failed && !other.is_empty()) {
                    if first_denial {
                        deny(&mut st, &r.item, &c.worker.id, now);
                    }
                    speculate::release(&mut st, c.lease_id, std::slice::from_ref(&r.item));
                    let outcome = if first_denial || again {
                        "denied"
                    } else {
                        "failed"
                    };
                    outcomes.push((r.item, outcome));
                    continue;
                }
                others.extend(other);
            }
            let outcome = take_result(
                &shared,
                &mut st,
                &c.worker.id,
                r.outcome,
                &r.item,
                (&mut effects, &mut others),
            );
            done += u64::from(outcome == "done");
            outcomes.push((r.item, outcome));
        }
        st.worker(&c.worker).items_done += done;
        // Items the worker did not report go back to the queue: it reports only what it
        // finished when it leaves the fleet, and the lease counts as given back.
        let mut partly = false;
        if let Some((items, granted, bytes)) = st
            .leases
            .get(&c.lease_id)
            .map(|l| (l.items.clone(), l.granted, l.bytes))
        {
            partly = reported < items.len();
            // A lease whose items all failed at once, or that was left unfinished, says
            // nothing of the usual pace.
            if done > 0 && !partly {
                speculate::took(&mut st, bytes, granted.elapsed());
            }
            st.returned += u64::from(partly);
            speculate::release(&mut st, c.lease_id, &items);
            st.leases.remove(&c.lease_id);
        }
        others.sort_unstable();
        others.dedup();
        let was = st.superseded.contains(&c.lease_id);
        (speculate::superseded(&mut st, &others), was, partly)
    };
    for id in superseded {
        shared.journal("lease end", |j, t| j.lease_ended(t, id, LEASE_SUPERSEDED));
    }
    let lease_id = c.lease_id;
    for (item, outcome) in outcomes {
        shared.journal("lease item", |j, t| {
            j.lease_item(t, lease_id, &item, outcome)
        });
    }
    if !was_superseded {
        let end = if partly {
            LEASE_RETURNED
        } else {
            LEASE_COMPLETED
        };
        shared.journal("lease end", |j, t| j.lease_ended(t, lease_id, end));
    }
    for e in effects {
        match e {
            Effect::RecordPart(upload, part, sums) => {
                shared
                    .exec
                    .record_part(&upload, &part, sums.as_deref())
                    .await;
            }
            Effect::Complete(upload_id) => spawn_completion(shared.clone(), upload_id),
            Effect::Abort(upload) => shared.exec.abort_upload(&upload).await,
        }
    }
    // Answered only once committed: a worker whose results were acknowledged never has
    // its work redone, whenever the coordinator is killed.
    commit(&shared).await;
    shared.wake.notify_waiters();
    Ok(Json(serde_json::json!({})))
}

/// A worker leaves the fleet ([`Leave`]): its leases go back to the queue now.
async fn leave(Axum(shared): Axum<Arc<Shared>>, Json(l): Json<Leave>) -> Answer<serde_json::Value> {
    same_transfer(&shared, &l.worker)?;
    let ended = {
        let mut st = shared.state();
        let now = Instant::now();
        st.worker(&l.worker).left = Some((now, Error::new(l.kind, l.error.clone())));
        st.roster_changed = Some(now);
        let held: Vec<u64> = st
            .leases
            .iter()
            .filter(|(_, a)| a.worker == l.worker.id)
            .map(|(id, _)| *id)
            .collect();
        let back: usize = held
            .iter()
            .filter_map(|&id| st.take_back(id))
            .map(|(_, n)| n)
            .sum();
        st.returned += held.len() as u64;
        tracing::warn!(
            "worker {} left the fleet: {}; {back} items back in the queue",
            l.worker.id,
            l.error
        );
        held
    };
    for id in ended {
        shared.journal("lease end", |j, t| j.lease_ended(t, id, LEASE_RETURNED));
    }
    commit(&shared).await;
    shared.wake.notify_waiters();
    Ok(Json(serde_json::json!({})))
}

/// Commits the journal's queued records: what a worker is answered must survive the
/// coordinator being killed right after.
async fn commit(shared: &Shared) {
    if let Some(j) = shared.journal.clone() {
        let flushed = tokio::task::spawn_blocking(move || j.flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("journal: commit: {e}");
        }
    }
}

/// Applies one result, which `reporter` sent: the first result for an item counts; a later
/// one (the item was re-issued after an expiry and done twice) is a duplicate. Adds the
/// work left for after the state lock to `effects`, and the leases that held items now
/// over (the other parts of a failed upload) to `holders`.
fn take_result(
    shared: &Shared,
    st: &mut State,
    reporter: &str,
    outcome: Outcome,
    name: &str,
    (effects, holders): (&mut Vec<Effect>, &mut Vec<u64>),
) -> &'static str {
    let Some(p) = st.items.remove(name) else {
        st.duplicates += 1;
        return "duplicate";
    };
    if p.lease.is_none() {
        st.queued_cost -= cost(&p.item);
    }
    if p.restored && !st.planning_done && matches!(p.item, WorkItem::Object { .. }) {
        st.restored_done.insert(name.to_string());
    }
    let exec = &shared.exec;
    let progress = exec.progress();
    match (p.item, outcome) {
        (
            WorkItem::Object {
                src, unless_same, ..
            },
            Outcome::Copied { copied },
        ) => {
            if unless_same.is_some() {
                progress.add_planned(src.size);
            }
            progress.add_moved(src.size);
            exec.record_copied(&src, copied);
            "done"
        }
        (WorkItem::Object { src, .. }, Outcome::Same) => {
            progress.add_skipped(src.size);
            "done"
        }
        (WorkItem::Part { upload, spec, .. }, Outcome::Part { part, sums }) => {
            progress.add_moved(spec.len);
            effects.push(Effect::RecordPart(
                upload.clone(),
                part.clone(),
                sums.clone(),
            ));
            let id = &upload.upload_id;
            match st.uploads.get_mut(id) {
                Some(u) => {
                    u.parts.insert(part.number, (part, sums));
                    if !u.failed && !u.completing && u.parts.len() >= u.total {
                        u.completing = true;
                        st.completing += 1;
                        effects.push(Effect::Complete(id.clone()));
                    }
                }
                None => st
                    .early_parts
                    .entry(id.clone())
                    .or_default()
                    .push((part, sums)),
            }
            "done"
        }
        (item, outcome) => {
            let denial = is_denial(&outcome);
            let error = match (outcome, p.denied) {
                (Outcome::Failed { error, .. }, Some((first, _)))
                    if denial && first != reporter =>
                {
                    format!("{error} (worker {first} was denied it too)")
                }
                (Outcome::Failed { error, .. }, Some(_)) if denial => {
                    format!("{error} (denied to this worker again; no other worker finished a try)")
                }
                (Outcome::Failed { error, .. }, _) => error,
                _ => "the worker answered with a result of another kind".to_string(),
            };
            // Denials keep their kind, so that a fleet denied every object ends as `cp`
            // does (exit 4). No other kind is taken from a worker: the fatal ones are
            // about the worker (which leaves the fleet), not about the transfer.
            let kind = match denial {
                true => ErrorKind::AccessDenied,
                false => ErrorKind::Other,
            };
            match item {
                WorkItem::Object { src, .. } => {
                    exec.record_failure(&src.key, Error::new(kind, error))
                }
                WorkItem::Part { src, upload, .. } => {
                    let id = upload.upload_id.clone();
                    if let Some(u) = st.uploads.get_mut(&id).filter(|u| !u.failed) {
                        u.failed = true;
                        exec.record_failure(&src.key, Error::new(kind, error));
                        // The other parts of this object are not worth sending: queued
                        // ones are dropped, leased ones' holders told to stop.
                        for part in st.parts_of(&id) {
                            let p = st.items.remove(&part).expect("pending");
                            if p.lease.is_none() {
                                st.queued_cost -= cost(&p.item);
                            }
                            holders.extend([p.lease, p.spare].into_iter().flatten());
                        }
                        st.uploads.remove(&id);
                        effects.push(Effect::Abort(upload));
                    }
                }
            }
            "failed"
        }
    }
}

fn snapshot(shared: &Shared) -> Status {
    let p = shared.exec.progress().snapshot();
    let st = shared.state();
    let now = Instant::now();
    let mut leases_of: HashMap<&str, Vec<u64>> = HashMap::new();
    for (id, l) in &st.leases {
        leases_of.entry(l.worker.as_str()).or_default().push(*id);
    }
    let workers: Vec<WorkerStatus> = st
        .workers
        .values()
        .map(|w| {
            let mut leases = leases_of.remove(w.info.id.as_str()).unwrap_or_default();
            leases.sort_unstable();
            let seen = now.duration_since(w.last_seen);
            WorkerStatus {
                id: w.info.id.clone(),
                host: w.info.host.clone(),
                pid: w.info.pid,
                metrics_url: w.info.metrics_url.clone(),
                bytes_moved: w.rate.latest(),
                throughput_bytes_per_second: w.rate.per_second(),
                leases,
                items_done: w.items_done,
                last_seen_ms: seen.as_millis() as u64,
                alive: w.working(now, shared.opts.lease_timeout),
                left: w.left.as_ref().map(|(_, e)| e.message.clone()),
                relay: w.relay,
            }
        })
        .collect();
    Status {
        transfer_id: shared.tid.map(|t| t.to_string()),
        phase: st.phase.to_string(),
        objects_planned: p.objects_total,
        bytes_planned: p.bytes_total,
        objects_done: p.objects_done,
        bytes_done: p.bytes_done,
        objects_failed: p.objects_failed,
        objects_skipped: p.objects_skipped,
        items_queued: st.items.values().filter(|i| i.lease.is_none()).count() as u64,
        leases_active: st.leases.len() as u64,
        leases_granted: st.granted,
        leases_expired: st.expired,
        leases_returned: st.returned,
        denials_retried: st.denials_retried,
        leases_reissued: st.reissued,
        leases_superseded: st.superseded_count,
        duplicate_results: st.duplicates,
        throughput_bytes_per_second: workers
            .iter()
            .filter(|w| w.alive)
            .map(|w| w.throughput_bytes_per_second)
            .sum(),
        relay: shared
            .relay
            .as_ref()
            .zip(shared.spec.relay.as_ref())
            .map(|(r, spec)| r.summary(spec.compression.clone())),
        workers,
    }
}

async fn status(Axum(shared): Axum<Arc<Shared>>) -> Json<Status> {
    Json(snapshot(&shared))
}

async fn metrics(Axum(shared): Axum<Arc<Shared>>) -> impl IntoResponse {
    let s = snapshot(&shared);
    let mut p = Page::default();
    let f = |v: u64| v as f64;
    p.metric(
        "skyhaul_fleet_objects_planned",
        "gauge",
        "Objects to copy, as planned so far.",
        f(s.objects_planned),
    );
    p.metric(
        "skyhaul_fleet_bytes_planned",
        "gauge",
        "Bytes to copy, as planned so far.",
        f(s.bytes_planned),
    );
    p.metric(
        "skyhaul_fleet_objects_done_total",
        "counter",
        "Objects copied.",
        f(s.objects_done),
    );
    p.metric(
        "skyhaul_fleet_bytes_done_total",
        "counter",
        "Bytes copied.",
        f(s.bytes_done),
    );
    p.metric(
        "skyhaul_fleet_objects_failed_total",
        "counter",
        "Objects that failed.",
        f(s.objects_failed),
    );
    p.metric(
        "skyhaul_fleet_items_queued",
        "gauge",
        "Work items waiting for a worker.",
        f(s.items_queued),
    );
    p.metric(
        "skyhaul_fleet_leases_active",
        "gauge",
        "Leases held by workers.",
        f(s.leases_active),
    );
    p.metric(
        "skyhaul_fleet_leases_granted_total",
        "counter",
        "Leases handed out.",
        f(s.leases_granted),
    );
    p.metric(
        "skyhaul_fleet_leases_expired_total",
        "counter",
        "Leases taken back after their worker went silent.",
        f(s.leases_expired),
    );
    p.metric(
        "skyhaul_fleet_leases_returned_total",
        "counter",
        "Leases given back by workers that left the fleet.",
        f(s.leases_returned),
    );
    p.metric(
        "skyhaul_fleet_denials_retried_total",
        "counter",
        "Items a worker was denied, handed to another worker for a second try.",
        f(s.denials_retried),
    );
    p.metric(
        "skyhaul_fleet_leases_reissued_total",
        "counter",
        "Leases also handed to an idle worker because nothing else was left to do.",
        f(s.leases_reissued),
    );
    p.metric(
        "skyhaul_fleet_leases_superseded_total",
        "counter",
        "Leases ended because another lease did all their work first.",
        f(s.leases_superseded),
    );
    p.metric(
        "skyhaul_fleet_duplicate_results_total",
        "counter",
        "Results for work already done through another lease.",
        f(s.duplicate_results),
    );
    p.metric(
        "skyhaul_fleet_throughput_bytes_per_second",
        "gauge",
        "Sum of the live workers' throughput.",
        s.throughput_bytes_per_second,
    );
    p.metric(
        "skyhaul_fleet_workers_alive",
        "gauge",
        "Workers heard from within the lease timeout, and still in the fleet.",
        s.workers.iter().filter(|w| w.alive).count() as f64,
    );
    p.metric(
        "skyhaul_fleet_workers_left",
        "gauge",
        "Workers that left the fleet because they could not copy anything.",
        s.workers.iter().filter(|w| w.left.is_some()).count() as f64,
    );
    p.family(
        "skyhaul_fleet_worker_bytes_moved_total",
        "counter",
        "Bytes each worker moved.",
    );
    for w in &s.workers {
        p.sample(
            "skyhaul_fleet_worker_bytes_moved_total",
            &[("worker", &w.id)],
            f(w.bytes_moved),
        );
    }
    p.family(
        "skyhaul_fleet_worker_throughput_bytes_per_second",
        "gauge",
        "Each worker's throughput over the last 10 s.",
    );
    for w in &s.workers {
        p.sample(
            "skyhaul_fleet_worker_throughput_bytes_per_second",
            &[("worker", &w.id)],
            w.throughput_bytes_per_second,
        );
    }
    if let Some(r) = &s.relay {
        p.metric(
            "skyhaul_fleet_relay_logical_bytes_total",
            "counter",
            "Bytes sent to the relay gateways before compression, by the workers and the coordinator.",
            f(r.logical_bytes),
        );
        p.metric(
            "skyhaul_fleet_relay_wire_bytes_total",
            "counter",
            "Bytes sent to the relay gateways on the wire (the egress), by the workers and the coordinator.",
            f(r.wire_bytes),
        );
        p.metric(
            "skyhaul_fleet_relay_requests_resent_total",
            "counter",
            "Relay requests sent again after a connection or gateway failed.",
            f(r.requests_resent),
        );
        for (name, help, field) in [
            (
                "skyhaul_fleet_worker_relay_logical_bytes_total",
                "Bytes each worker sent to the relay gateways before compression.",
                (|c: &RelayCounts| c.logical_sent) as fn(&RelayCounts) -> u64,
            ),
            (
                "skyhaul_fleet_worker_relay_wire_bytes_total",
                "Bytes each worker sent to the relay gateways on the wire.",
                |c: &RelayCounts| c.wire_sent,
            ),
        ] {
            p.family(name, "counter", help);
            for w in &s.workers {
                if let Some(c) = &w.relay {
                    p.sample(name, &[("worker", &w.id)], f(field(c)));
                }
            }
        }
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            host: "h".into(),
            pid: 1,
            metrics_url: None,
            transfer: None,
        }
    }

    #[test]
    fn relay_reports_count_each_byte_once() {
        let stats = Arc::new(RelayStats::default());
        let total: Relay = Some(stats.clone());
        let mut st = State::default();
        let counts = |logical, wire| RelayCounts {
            logical_sent: logical,
            wire_sent: wire,
            ..RelayCounts::default()
        };
        st.relay_report(&info("a"), Some(counts(100, 40)), &total);
        // The same totals again (a heartbeat after a lease request), then an older report
        // overtaken by a newer one: nothing is added twice, nothing goes back.
        st.relay_report(&info("a"), Some(counts(100, 40)), &total);
        st.relay_report(&info("a"), Some(counts(300, 90)), &total);
        st.relay_report(&info("a"), Some(counts(200, 70)), &total);
        st.relay_report(&info("b"), Some(counts(50, 50)), &total);
        st.relay_report(&info("b"), None, &total);
        let c = stats.counts();
        assert_eq!((c.logical_sent, c.wire_sent), (350, 140));
        assert_eq!(st.workers["a"].relay, Some(counts(300, 90)));
    }

    /// An item denied to a worker waits for another's try while another worker is at
    /// work or may yet join; after that, it is the denier's again (whose second denial is
    /// the item's failure). Another worker's denial never keeps it from this one.
    #[test]
    fn a_denied_item_waits_for_another_worker_for_a_while() {
        let timeout = Duration::from_secs(30);
        let quiet = timeout * QUIET_TIMEOUTS;
        let mut st = State::default();
        st.worker(&info("denier"));
        let now = Instant::now();
        let denied = ("denier".to_string(), now);
        let waits = |st: &State, who, at| second_try_waits(st, who, at, timeout)(&denied);
        assert!(waits(&st, "denier", now), "one may yet join");
        assert!(!waits(&st, "denier", now + quiet), "nobody joined");
        assert!(!waits(&st, "other", now), "not the other's denial");
        st.worker(&info("other")).last_seen = now + quiet;
        assert!(waits(&st, "denier", now + quiet), "the other is at work");
        st.workers.get_mut("other").unwrap().left =
            Some((now, Error::new(ErrorKind::NoSpace, "full")));
        assert!(!waits(&st, "denier", now + quiet), "the other left");
    }

    /// A worker denied one part of an object is denied the others: they all wait for
    /// another worker's try (the one in flight too, whose denial then changes nothing), and
    /// the parts of other objects do not.
    #[test]
    fn a_denied_part_denies_its_whole_object_to_that_worker() {
        let mut st = State::default();
        let part = |upload_id: &str, number| WorkItem::Part {
            src: ObjectMeta::new(upload_id, 3 << 20),
            upload: MultipartUpload {
                key: upload_id.into(),
                upload_id: upload_id.into(),
            },
            spec: skyhaul_store::PartSpec {
                number,
                offset: u64::from(number - 1) << 20,
                len: 1 << 20,
            },
            server_side: false,
        };
        for n in 1..=3 {
            st.enqueue(part("big", n), false);
        }
        st.enqueue(part("other", 1), false);
        let upload = Upload {
            src: ObjectMeta::new("big", 3 << 20),
            open: OpenUpload {
                upload: MultipartUpload {
                    key: "big".into(),
                    upload_id: "big".into(),
                },
                part_size: 1 << 20,
                server_side: false,
                put: Default::default(),
                done: Vec::new(),
            },
            parts: BTreeMap::new(),
            total: 3,
            failed: false,
            completing: false,
            resumed: false,
        };
        st.uploads.insert("big".into(), upload);
        let now = Instant::now();
        deny(&mut st, "part big #2", "w1", now);
        assert_eq!(st.denials_retried, 1);
        let denier = |name: &str| st.items[name].denied.as_ref().map(|(w, _)| w.clone());
        for n in 1..=3 {
            assert_eq!(denier(&format!("part big #{n}")).as_deref(), Some("w1"));
        }
        assert_eq!(denier("part other #1"), None);
    }

    /// The transfer is stranded only once nobody is left: not while a worker that stayed
    /// is heard from, nor before `quiet` has passed since a worker last joined or left, nor
    /// once the copying is over; and then with the error of the worker that left last, kind
    /// and all.
    #[test]
    fn stranded_only_when_nobody_is_left() {
        let (timeout, quiet) = (Duration::from_secs(30), Duration::from_secs(120));
        let t0 = Instant::now();
        let after = |secs| t0 + Duration::from_secs(secs);
        let mut st = State::default();
        assert!(
            st.stranded(after(1000), timeout, quiet).is_none(),
            "no worker yet"
        );
        let leave = |st: &mut State, id: &str, kind, at: Instant| {
            st.worker(&info(id)).left = Some((at, Error::new(kind, format!("{id} failed"))));
            st.roster_changed = Some(at);
        };
        st.worker(&info("healthy"));
        leave(&mut st, "a", ErrorKind::NoSpace, t0);
        let working = st.stranded(after(20), timeout, Duration::ZERO);
        assert!(working.is_none(), "one is still working");
        let soon = st.stranded(after(60), timeout, quiet);
        assert!(soon.is_none(), "time for another to join");
        let e = st
            .stranded(after(200), timeout, quiet)
            .expect("nobody left");
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(e.message.starts_with("a failed") && e.message.contains("a, the last to leave"));

        // A worker joins: the quiet time starts again; it leaves too, with its own error.
        st.roster_changed = Some(after(190));
        assert!(st.stranded(after(200), timeout, quiet).is_none());
        leave(&mut st, "b", ErrorKind::BadCredentials, after(195));
        let e = st
            .stranded(after(400), timeout, quiet)
            .expect("nobody left");
        assert_eq!(e.kind, ErrorKind::BadCredentials);
        assert!(e.message.starts_with("b failed"), "{e}");
        assert_eq!(st.live_workers(after(400), timeout), 0);

        // A worker that stayed, then went silent (a spot machine taken back): the quiet
        // time runs from its silence, not from the leave long before.
        let late = st.worker(&info("late"));
        late.last_seen = after(500);
        let silent_since = after(500) + timeout;
        assert!(st
            .stranded(silent_since + quiet / 2, timeout, quiet)
            .is_none());
        assert!(st.stranded(silent_since + quiet, timeout, quiet).is_some());

        // The end of a transfer (its check, its report) needs no worker.
        st.planning_done = true;
        assert!(st.stranded(after(1000), timeout, quiet).is_none());
    }
}
