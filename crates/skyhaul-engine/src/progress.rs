//! Live counters of a transfer, shared between the engine and whatever displays progress.

use crate::report::Failure;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Failures waiting for a display that streams them; beyond this many the oldest undrained
/// ones are only counted (the report still has them).
const MAX_PENDING_FAILURES: usize = 10_000;

#[derive(Debug, Default)]
pub struct Progress {
    objects_listed: AtomicU64,
    bytes_listed: AtomicU64,
    listing_done: AtomicU64,
    objects_done: AtomicU64,
    bytes_done: AtomicU64,
    bytes_moved: AtomicU64,
    bytes_reused: AtomicU64,
    objects_skipped: AtomicU64,
    bytes_skipped: AtomicU64,
    objects_failed: AtomicU64,
    objects_deleted: AtomicU64,
    server_side_copies: AtomicU64,
    retries: AtomicU64,
    resumed: AtomicU64,
    /// Failed objects not yet taken by [`Progress::take_failures`]; `None` (nothing kept)
    /// unless a display asked for them with [`Progress::stream_failures`], so nothing
    /// accumulates when nobody drains it.
    failure_events: Mutex<Option<Vec<Failure>>>,
    /// Cancelled once the run is asked to stop (Ctrl-C, SIGTERM): from then on retries give
    /// up and a request still unanswered after [`crate::retry::STOP_GRACE`] is dropped
    /// ([`crate::retry::Tries`]). Never, for a default `Progress`.
    stop: CancellationToken,
    /// When the stop was first seen ([`Progress::stopped_at`]).
    stopped_at: std::sync::OnceLock<tokio::time::Instant>,
}

/// A consistent-enough copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Objects and bytes to copy found so far; grows while the listing runs.
    pub objects_total: u64,
    pub bytes_total: u64,
    pub listing_done: bool,
    pub objects_done: u64,
    pub bytes_done: u64,
    /// Bytes moved so far, counting finished parts of objects still in progress.
    pub bytes_moved: u64,
    /// Bytes of parts an earlier run sent, reused rather than moved again (done, but not
    /// this run's work: a rate counts `bytes_moved` only).
    pub bytes_reused: u64,
    pub objects_skipped: u64,
    pub bytes_skipped: u64,
    pub objects_failed: u64,
    pub objects_deleted: u64,
    pub server_side_copies: u64,
    pub retries: u64,
    /// Objects skipped because an earlier run of the same transfer copied them.
    pub objects_resumed: u64,
}

impl Snapshot {
    /// The bytes this run moves, of those found so far: parts an earlier run sent are
    /// not, so that a progress bar and a rate measure the same work.
    pub fn bytes_to_move(&self) -> u64 {
        self.bytes_total
            .saturating_sub(self.bytes_reused)
            .max(self.bytes_moved)
    }

    /// This run's pace, `elapsed` after its start, in bytes per second.
    pub fn rate(&self, elapsed: std::time::Duration) -> f64 {
        self.bytes_moved as f64 / elapsed.as_secs_f64().max(0.001)
    }

    /// Seconds left at this run's pace: known once the listing is complete (before, the
    /// total still grows) and some bytes have moved (before, there is no pace).
    pub fn eta_seconds(&self, elapsed: std::time::Duration) -> Option<f64> {
        let rate = self.rate(elapsed);
        let left = self.bytes_to_move() - self.bytes_moved;
        (self.listing_done && rate > 0.0).then(|| left as f64 / rate)
    }
}

impl Progress {
    /// The counters of a run that `stop` stops: its retries and requests then end
    /// ([`Progress::stop`]) as its scheduling of new work does.
    pub fn stopped_by(stop: CancellationToken) -> Progress {
        Progress {
            stop,
            ..Progress::default()
        }
    }

    /// Cancelled once the run is asked to stop.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// `work`'s answer, or [`ErrorKind::Interrupted`] as soon as the run is asked to stop:
    /// for reads whose answer a stopped run no longer needs (a check, a listing page), so
    /// that an endpoint slow to answer does not hold the stop.
    pub(crate) async fn unless_stopped<T>(
        &self,
        work: impl std::future::Future<Output = skyhaul_store::Result<T>>,
    ) -> skyhaul_store::Result<T> {
        tokio::select! {
            answer = work => answer,
            () = self.stop.cancelled() => Err(skyhaul_store::Error::new(
                skyhaul_store::ErrorKind::Interrupted,
                "interrupted",
            )),
        }
    }

    /// When the stop was first seen here: by the requests in flight at the stop, as a rule,
    /// which all wait for it. The grace of every request is counted from then, so that the
    /// stop is as long as the grace whatever the requests it lets begin (an abort).
    /// Call it once [`Progress::stop`] is cancelled.
    pub(crate) fn stopped_at(&self) -> tokio::time::Instant {
        *self.stopped_at.get_or_init(tokio::time::Instant::now)
    }

    pub fn add_planned(&self, bytes: u64) {
        self.objects_listed.fetch_add(1, Relaxed);
        self.bytes_listed.fetch_add(bytes, Relaxed);
    }
    pub fn set_listing_done(&self) {
        self.listing_done.store(1, Relaxed);
    }
    pub fn add_done(&self, bytes: u64, server_side: bool) {
        self.objects_done.fetch_add(1, Relaxed);
        self.bytes_done.fetch_add(bytes, Relaxed);
        if server_side {
            self.server_side_copies.fetch_add(1, Relaxed);
        }
    }
    pub fn add_moved(&self, bytes: u64) {
        self.bytes_moved.fetch_add(bytes, Relaxed);
    }
    /// Parts (or a whole upload) an earlier run sent, taken up by this one.
    pub fn add_reused(&self, bytes: u64) {
        self.bytes_reused.fetch_add(bytes, Relaxed);
    }
    /// Takes back [`Progress::add_reused`] of an attempt that failed: it reused nothing.
    pub fn take_back_reused(&self, bytes: u64) {
        self.bytes_reused.fetch_sub(bytes, Relaxed);
    }
    pub fn add_skipped(&self, bytes: u64) {
        self.objects_skipped.fetch_add(1, Relaxed);
        self.bytes_skipped.fetch_add(bytes, Relaxed);
    }
    pub fn add_failed(&self) {
        self.objects_failed.fetch_add(1, Relaxed);
    }
    pub fn add_deleted(&self) {
        self.objects_deleted.fetch_add(1, Relaxed);
    }
    /// An object an earlier run copied: skipped, and no longer among the planned when the
    /// planner counted it there (else the progress line would count it twice).
    pub fn add_resumed(&self, bytes: u64, planned: bool) {
        self.resumed.fetch_add(1, Relaxed);
        self.add_skipped(bytes);
        if planned {
            // Never below zero, whatever the order of events (a fleet coordinator's results
            // can come before its planner): a wrapped total would claim exabytes to go.
            let less = |n: u64| move |v: u64| Some(v.saturating_sub(n));
            let _ = self.objects_listed.fetch_update(Relaxed, Relaxed, less(1));
            let _ = self
                .bytes_listed
                .fetch_update(Relaxed, Relaxed, less(bytes));
        }
    }
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    /// Keeps every failed object from now on for [`Progress::take_failures`], so a display
    /// can show each failure while the transfer runs (`--json`'s `object_failed` events).
    pub fn stream_failures(&self) {
        self.failure_events
            .lock()
            .expect("lock")
            .get_or_insert_with(Vec::new);
    }
    /// Called by the engine for each object that failed.
    pub fn report_failure(&self, key: &str, error: &str) {
        if let Some(pending) = self.failure_events.lock().expect("lock").as_mut() {
            if pending.len() < MAX_PENDING_FAILURES {
                pending.push(Failure {
                    key: key.to_string(),
                    error: error.to_string(),
                });
            }
        }
    }
    /// The failures reported since the last call (none unless streaming was asked for).
    pub fn take_failures(&self) -> Vec<Failure> {
        self.failure_events
            .lock()
            .expect("lock")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            objects_total: self.objects_listed.load(Relaxed),
            bytes_total: self.bytes_listed.load(Relaxed),
            listing_done: self.listing_done.load(Relaxed) == 1,
            objects_done: self.objects_done.load(Relaxed),
            bytes_done: self.bytes_done.load(Relaxed),
            bytes_moved: self.bytes_moved.load(Relaxed),
            bytes_reused: self.bytes_reused.load(Relaxed),
            objects_skipped: self.objects_skipped.load(Relaxed),
            bytes_skipped: self.bytes_skipped.load(Relaxed),
            objects_failed: self.objects_failed.load(Relaxed),
            objects_deleted: self.objects_deleted.load(Relaxed),
            server_side_copies: self.server_side_copies.load(Relaxed),
            retries: self.retries.load(Relaxed),
            objects_resumed: self.resumed.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_done_earlier_counts_once() {
        let p = Progress::default();
        for _ in 0..3 {
            p.add_planned(10);
        }
        p.add_resumed(10, true);
        p.add_resumed(7, false);
        let s = p.snapshot();
        assert_eq!((s.objects_total, s.bytes_total), (2, 20));
        assert_eq!((s.objects_skipped, s.bytes_skipped), (2, 17));
        assert_eq!(s.objects_resumed, 2);
    }

    #[test]
    fn parts_sent_earlier_are_no_bytes_to_move() {
        let p = Progress::default();
        p.add_planned(100);
        p.add_reused(30);
        p.add_moved(20);
        let s = p.snapshot();
        assert_eq!((s.bytes_moved, s.bytes_reused), (20, 30));
        assert_eq!(s.bytes_to_move(), 70);
    }
}
