//! Byte counts of the relay: what the copy carried and what crossed the wide-area link, the
//! numbers behind "compression saved N% of egress".

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters shared by a relay client's connections (and, at a fleet's coordinator, what its
/// workers reported on top: see [`RelayStats::add_counts`]).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Plaintext bytes sent (request JSON and bodies, re-sent ones included).
    pub logical_sent: AtomicU64,
    /// Bytes those took on the wire: headers, compressed and encrypted payloads, tags.
    pub wire_sent: AtomicU64,
    pub logical_received: AtomicU64,
    pub wire_received: AtomicU64,
    /// Requests sent again after a connection or gateway failed or rejected a frame.
    pub resent: AtomicU64,
    /// Frames from a gateway that failed authentication or their checksum.
    pub rejected: AtomicU64,
    /// `wire_received` by connection: entry i counts connection i of every gateway.
    pub wire_received_by_connection: Vec<AtomicU64>,
}

impl RelayStats {
    /// Counters for a client with `connections` connections per gateway.
    pub fn with_connections(connections: usize) -> RelayStats {
        RelayStats {
            wire_received_by_connection: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            ..RelayStats::default()
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    /// The counters now.
    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            logical_sent: self.logical_sent.load(Relaxed),
            wire_sent: self.wire_sent.load(Relaxed),
            logical_received: self.logical_received.load(Relaxed),
            wire_received: self.wire_received.load(Relaxed),
            resent: self.resent.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }

    /// Adds counts made elsewhere: a fleet's coordinator adds what its workers sent, so
    /// that its report covers the whole transfer's link.
    pub fn add_counts(&self, c: &RelayCounts) {
        self.logical_sent.fetch_add(c.logical_sent, Relaxed);
        self.wire_sent.fetch_add(c.wire_sent, Relaxed);
        self.logical_received.fetch_add(c.logical_received, Relaxed);
        self.wire_received.fetch_add(c.wire_received, Relaxed);
        self.resent.fetch_add(c.resent, Relaxed);
        self.rejected.fetch_add(c.rejected, Relaxed);
    }

    pub fn summary(&self, compression: String) -> RelaySummary {
        RelaySummary {
            wire_bytes_received_by_connection: self
                .wire_received_by_connection
                .iter()
                .map(|c| c.load(Relaxed))
                .collect(),
            ..self.counts().summary(compression)
        }
    }
}

/// The values of [`RelayStats`] at one moment, as a fleet worker reports them: totals since
/// the worker started, so a report that is lost, repeated or overtaken by a later one
/// changes nothing once the next arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCounts {
    pub logical_sent: u64,
    pub wire_sent: u64,
    pub logical_received: u64,
    pub wire_received: u64,
    pub resent: u64,
    pub rejected: u64,
}

impl RelayCounts {
    /// Field by field, the larger of the two: totals only grow, so this is the later one
    /// even when two reports arrive out of order.
    pub fn max(&self, o: &RelayCounts) -> RelayCounts {
        RelayCounts {
            logical_sent: self.logical_sent.max(o.logical_sent),
            wire_sent: self.wire_sent.max(o.wire_sent),
            logical_received: self.logical_received.max(o.logical_received),
            wire_received: self.wire_received.max(o.wire_received),
            resent: self.resent.max(o.resent),
            rejected: self.rejected.max(o.rejected),
        }
    }

    /// What `self` has beyond `earlier` (0 where it has less).
    pub fn since(&self, earlier: &RelayCounts) -> RelayCounts {
        RelayCounts {
            logical_sent: self.logical_sent.saturating_sub(earlier.logical_sent),
            wire_sent: self.wire_sent.saturating_sub(earlier.wire_sent),
            logical_received: self
                .logical_received
                .saturating_sub(earlier.logical_received),
            wire_received: self.wire_received.saturating_sub(earlier.wire_received),
            resent: self.resent.saturating_sub(earlier.resent),
            rejected: self.rejected.saturating_sub(earlier.rejected),
        }
    }

    pub fn summary(&self, compression: String) -> RelaySummary {
        let (logical, wire) = (self.logical_sent, self.wire_sent);
        RelaySummary {
            compression,
            logical_bytes: logical,
            wire_bytes: wire,
            egress_saved: if logical > 0 {
                1.0 - wire as f64 / logical as f64
            } else {
                0.0
            },
            logical_bytes_received: self.logical_received,
            wire_bytes_received: self.wire_received,
            requests_resent: self.resent,
            frames_rejected: self.rejected,
            wire_bytes_received_by_connection: Vec::new(),
        }
    }
}

/// What a relayed transfer reports: source-side egress is `wire_bytes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelaySummary {
    pub compression: String,
    /// Bytes the transfer sent towards the destination before compression.
    pub logical_bytes: u64,
    /// Bytes that crossed the link towards the destination (what egress is billed on).
    pub wire_bytes: u64,
    /// `1 - wire_bytes / logical_bytes`; negative when framing cost more than compression saved.
    pub egress_saved: f64,
    pub logical_bytes_received: u64,
    pub wire_bytes_received: u64,
    pub requests_resent: u64,
    pub frames_rejected: u64,
    /// `wire_bytes_received` by connection (entry i: connection i of every gateway), which
    /// shows whether reads were spread over the connections; empty in a fleet coordinator's
    /// total, whose workers report only their sums.
    pub wire_bytes_received_by_connection: Vec<u64>,
}

impl std::fmt::Display for RelaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relay ({}): {} logical bytes sent as {} on the wire, {:.1}% of egress saved",
            self.compression,
            self.logical_bytes,
            self.wire_bytes,
            self.egress_saved * 100.0
        )?;
        if self.requests_resent > 0 {
            write!(f, ", {} requests re-sent", self.requests_resent)?;
        }
        Ok(())
    }
}
