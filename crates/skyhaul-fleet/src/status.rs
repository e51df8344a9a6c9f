//! What the coordinator tells about a running transfer: overall progress and each worker's
//! live throughput (`GET /v1/status`, and the same numbers in `/metrics`).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window over which a worker's throughput is measured.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub transfer_id: Option<String>,
    /// `planning`, `copying`, `finishing` (verification and report) or `done`.
    pub phase: String,
    pub objects_planned: u64,
    pub bytes_planned: u64,
    pub objects_done: u64,
    pub bytes_done: u64,
    pub objects_failed: u64,
    pub objects_skipped: u64,
    pub items_queued: u64,
    pub leases_active: u64,
    pub leases_granted: u64,
    pub leases_expired: u64,
    /// Leases given back by workers that left the fleet.
    pub leases_returned: u64,
    /// Items a worker was denied, handed to another worker for a second try.
    #[serde(default)]
    pub denials_retried: u64,
    /// Leases also handed to an idle worker at the end (speculative copies).
    pub leases_reissued: u64,
    /// Leases ended because another lease did all their work first.
    pub leases_superseded: u64,
    /// Results for work another lease had already done (re-issued after an expiry, or a
    /// speculative copy that lost).
    pub duplicate_results: u64,
    pub throughput_bytes_per_second: f64,
    /// Relay mode: what crossed the link so far, the coordinator's own requests and every
    /// worker's as last reported (each byte once, superseded and expired leases' included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<skyhaul_relay::RelaySummary>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub metrics_url: Option<String>,
    pub bytes_moved: u64,
    pub throughput_bytes_per_second: f64,
    pub leases: Vec<u64>,
    pub items_done: u64,
    pub last_seen_ms: u64,
    /// Heard from within the lease timeout, and still in the fleet.
    pub alive: bool,
    /// The error it left the fleet with: it could not copy anything (its credentials refused,
    /// its disk full…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    /// Relay mode: the worker's byte counts as it last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<skyhaul_relay::RelayCounts>,
}

/// A worker's byte counter over time, for its throughput.
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    pub fn record(&mut self, at: Instant, total: u64) {
        self.samples.push_back((at, total));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > WINDOW)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    pub fn latest(&self) -> u64 {
        self.samples.back().map_or(0, |(_, b)| *b)
    }

    /// Bytes per second over the window (0 until there are two samples).
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_window() {
        let t = Instant::now();
        let mut r = Rate::default();
        assert_eq!(r.per_second(), 0.0);
        r.record(t, 0);
        r.record(t + Duration::from_secs(2), 200);
        assert_eq!(r.per_second(), 100.0);
        // Old samples leave the window: the rate follows the recent pace.
        r.record(t + Duration::from_secs(20), 200);
        r.record(t + Duration::from_secs(21), 1200);
        assert_eq!(r.per_second(), 1000.0);
        assert_eq!(r.latest(), 1200);
    }
}
