//! Byte counts of the relay: what the copy carried and what crossed the wide-area link, the
//! numbers behind "compression saved N% of egress".

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters shared by a relay client's connections.
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

    pub fn summary(&self, compression: String) -> RelaySummary {
        let logical = self.logical_sent.load(Relaxed);
        let wire = self.wire_sent.load(Relaxed);
        RelaySummary {
            compression,
            logical_bytes: logical,
            wire_bytes: wire,
            egress_saved: if logical > 0 {
                1.0 - wire as f64 / logical as f64
            } else {
                0.0
            },
            logical_bytes_received: self.logical_received.load(Relaxed),
            wire_bytes_received: self.wire_received.load(Relaxed),
            requests_resent: self.resent.load(Relaxed),
            frames_rejected: self.rejected.load(Relaxed),
            wire_bytes_received_by_connection: self
                .wire_received_by_connection
                .iter()
                .map(|c| c.load(Relaxed))
                .collect(),
        }
    }
}

/// What a relayed transfer reports: source-side egress is `wire_bytes`.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    /// shows whether reads were spread over the connections.
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
