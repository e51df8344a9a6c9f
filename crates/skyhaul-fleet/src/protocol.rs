//! The messages between a coordinator and its workers: JSON over HTTP, every request
//! carrying `Authorization: Bearer TOKEN`.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /v1/transfer` | | [`TransferSpec`]: what to copy, from where to where |
//! | `POST /v1/lease` | [`LeaseRequest`] | [`LeaseReply`]: work, wait, or done |
//! | `POST /v1/heartbeat` | [`Heartbeat`] | [`HeartbeatReply`]: leases that expired |
//! | `POST /v1/complete` | [`Completion`] | `{}` |
//! | `POST /v1/leave` | [`Leave`] | `{}` |
//! | `GET /v1/status` | | [`crate::status::Status`] |
//! | `GET /metrics` | | Prometheus text (coordinator and workers) |
//!
//! Work items are the engine's own serialisable types, and results name their item rather
//! than only their lease: a result that arrives late (after its lease expired, or at a
//! restarted coordinator) is still matched to the work it did.
//!
//! Fields added within a version are optional, so that a worker or coordinator that lacks
//! them still understands the rest.

use serde::{Deserialize, Serialize};
use skyhaul_engine::Copied;
pub use skyhaul_relay::RelayCounts;
use skyhaul_store::{CompletedPart, ErrorKind, MultipartUpload, ObjectMeta, PartSpec};

/// The version of this protocol; a worker of another version is refused.
pub const PROTOCOL_VERSION: u32 = 4;

/// What a worker needs to open both sides and copy like the coordinator would. Never any
/// credential: each worker signs in with its own environment (`SKYHAUL_SRC_*`, profiles,
/// instance roles), the way the launchers pass them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferSpec {
    pub protocol: u32,
    /// The transfer's id: its journal's, which a restarted coordinator keeps, or without a
    /// journal one of this coordinator's own. Workers send it back ([`WorkerInfo::transfer`])
    /// and a coordinator of another transfer refuses them (409). `None` from coordinators
    /// of a version before it, without a journal.
    pub transfer_id: Option<String>,
    pub src: String,
    pub dst: String,
    pub recursive: bool,
    pub sides: Sides,
    pub settings: WorkerSettings,
    /// How often a worker must be heard from for its leases to stay valid.
    pub lease_timeout_ms: u64,
    /// Relay mode: workers send the destination's side through these gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelaySpec>,
}

/// The destination gateways a worker relays through, and the transfer's key: the one secret
/// the coordinator hands out, and only over its token-authenticated API (the gateways get the
/// same key from their own environment).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySpec {
    pub gateways: Vec<String>,
    pub connections: u8,
    pub compression: String,
    /// `--relay-congestion` as given (each worker checks that its system offers it; workers
    /// of a version before it ignore it and keep their system's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion: Option<String>,
    /// 64 hex digits.
    pub key: String,
    /// TLS to the gateways, trusting the system's roots and `tls_ca` (PEM; not secret).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// The name the gateways' certificates must carry, if not the hosts dialed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_name: Option<String>,
}

impl std::fmt::Debug for RelaySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySpec")
            .field("gateways", &self.gateways)
            .field("connections", &self.connections)
            .field("compression", &self.compression)
            .field("congestion", &self.congestion)
            .field("key", &"<redacted>")
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca.is_some())
            .field("tls_name", &self.tls_name)
            .finish()
    }
}

/// Where each side is, as the coordinator's command line named it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sides {
    pub src_endpoint: Option<String>,
    pub dst_endpoint: Option<String>,
    pub src_region: Option<String>,
    pub dst_region: Option<String>,
    pub src_profile: Option<String>,
    pub dst_profile: Option<String>,
    /// `--requester-pays`. Defaulted so that a spec from a coordinator of protocol 1, which
    /// lacks it, still parses and is refused by its version, with the message that says so.
    #[serde(default)]
    pub requester_pays: bool,
    /// `--src-anonymous`: every worker reads the source unsigned. Defaulted as above, for a
    /// spec of protocol 3.
    #[serde(default)]
    pub src_anonymous: bool,
}

/// The engine settings that change how a worker copies (not what).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSettings {
    pub max_connections: usize,
    pub memory_budget: u64,
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub retries: u32,
    pub server_side_copy: bool,
    /// Bytes per second per worker, if limited.
    pub bwlimit: Option<u64>,
    /// `--storage-class` (coordinators from before it did not send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// Who a worker is: its id is its own choice (host, pid and a random suffix), so that it
/// needs no registration and a restarted coordinator knows it at its next request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Where the worker serves its own `/metrics`, if it does.
    pub metrics_url: Option<String>,
    /// The transfer the worker joined ([`TransferSpec::transfer_id`]): a coordinator that
    /// came up at the same address with another transfer must not get its results, nor
    /// hand it work it would do with the stores of the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker: WorkerInfo,
    /// Relay mode: the worker's byte counts so far (as in [`Heartbeat::relay`]). A worker
    /// asks after every lease and once more to hear that the transfer is over, so the
    /// coordinator has its final counts before it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum LeaseReply {
    /// Work to do; report it before `timeout_ms` passes without a heartbeat.
    Lease(Lease),
    /// Nothing to hand out now (the listing is still running, or the last work is out):
    /// ask again after `ms`.
    Wait { ms: u64 },
    /// The transfer is over: exit.
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: u64,
    pub items: Vec<WorkItem>,
    pub timeout_ms: u64,
}

/// One piece of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkItem {
    /// Copy a whole object; with `unless_same`, only if that destination object differs.
    Object {
        src: ObjectMeta,
        dst_key: String,
        unless_same: Option<ObjectMeta>,
    },
    /// Send one part of an upload the coordinator created.
    Part {
        src: ObjectMeta,
        upload: MultipartUpload,
        spec: PartSpec,
        server_side: bool,
    },
}

impl WorkItem {
    /// The item's name, unique within a transfer: what results and the journal refer to.
    pub fn name(&self) -> String {
        match self {
            WorkItem::Object { src, .. } => Self::object_name(&src.key),
            WorkItem::Part { upload, spec, .. } => Self::part_name(&upload.upload_id, spec.number),
        }
    }

    /// The name of the whole-object item for source `key`.
    pub fn object_name(key: &str) -> String {
        format!("object {key}")
    }

    /// The name of part `number` of upload `upload_id`.
    pub fn part_name(upload_id: &str, number: u32) -> String {
        format!("part {upload_id} #{number}")
    }

    pub fn bytes(&self) -> u64 {
        match self {
            WorkItem::Object { src, .. } => src.size,
            WorkItem::Part { spec, .. } => spec.len,
        }
    }
}

/// A worker is alive: its leases stay valid for another timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: WorkerInfo,
    /// Bytes the worker has moved since it started (for its throughput).
    pub bytes_moved: u64,
    pub leases: Vec<u64>,
    /// Relay mode: what the worker sent to the gateways since it started, logical and on
    /// the wire. Totals, not increments: the coordinator counts each byte once however
    /// many reports carry it, and in whatever order they arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayCounts>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Of the leases named, those the coordinator no longer holds for this worker.
    pub expired: Vec<u64>,
    /// Of the leases named, those whose work another worker has done: drop them.
    #[serde(default)]
    pub superseded: Vec<u64>,
}

/// The results of a lease's items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub worker: WorkerInfo,
    pub lease_id: u64,
    pub results: Vec<ItemResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    /// [`WorkItem::name`] of the item.
    pub item: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The object was copied.
    Copied { copied: Copied },
    /// The destination already held the same bytes (`sync --checksum`).
    Same,
    /// The part was sent; `sums` as the journal keeps a part's checksums.
    Part {
        part: CompletedPart,
        sums: Option<String>,
    },
    /// It failed after the engine's retries. `kind` says what failed; a denial
    /// (`AccessDenied`, or `BadCredentials` from a worker whose credentials were accepted
    /// before: one object's refused signature) is handed to another worker once before it
    /// counts (workers of a version before it send none, and their denials count at once).
    Failed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ErrorKind>,
    },
}

/// A worker leaves the fleet: an error said it cannot copy anything, whatever the object
/// (its credentials refused, a bucket missing as it sees it, its disk full). The coordinator puts its leases back in the queue at once, for the other workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leave {
    pub worker: WorkerInfo,
    /// The error, as the engine put it (never a credential).
    pub error: String,
    pub kind: ErrorKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure's kind is read by peers of other versions: a worker of an older version
    /// sends none, one of a newer version may send a kind this one does not know (read as
    /// `Other`, which counts at once rather than refuse the whole completion).
    #[test]
    fn failure_kinds_cross_versions() {
        let kind_of = |json: &str| match serde_json::from_str::<Outcome>(json).unwrap() {
            Outcome::Failed { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        let denied = r#"{"outcome":"failed","error":"e","kind":"AccessDenied"}"#;
        assert_eq!(kind_of(denied), Some(ErrorKind::AccessDenied));
        assert_eq!(kind_of(r#"{"outcome":"failed","error":"e"}"#), None);
        let newer = r#"{"outcome":"failed","error":"e","kind":"SomethingNew"}"#;
        assert_eq!(kind_of(newer), Some(ErrorKind::Other));
        let sent = Outcome::Failed {
            error: "e".into(),
            kind: Some(ErrorKind::AccessDenied),
        };
        assert_eq!(serde_json::to_string(&sent).unwrap(), denied);
    }
}
