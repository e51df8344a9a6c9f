//! The store operations carried over the relay, as JSON in meta frames. Bodies (object data)
//! travel as data frames beside them, never inside the JSON.

use serde::{Deserialize, Serialize};
use skyhaul_store::{
    CompletedPart, ContentHeaders, Entry, Error, ErrorKind, FullChecksum, Limits, MultipartUpload,
    ObjectMeta, PartSpec, PutOptions,
};
use std::collections::BTreeMap;

/// Most entries in one listing page: bounds a response and lets the client stream pages.
pub const LIST_PAGE: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// What the gateway serves; `container` is the bucket the client means to write to, so
    /// that a client pointed at the wrong gateway fails at once.
    Info {
        container: String,
    },
    Preflight {
        for_write: bool,
    },
    Head {
        key: String,
    },
    List {
        prefix: String,
        start_after: Option<String>,
        by_level: bool,
    },
    Get {
        key: String,
        range: Option<(u64, u64)>,
        expect: Option<ObjectMeta>,
    },
    Put {
        key: String,
        md5: Option<String>,
        opts: PutOptions,
    },
    CreateMultipart {
        key: String,
        opts: PutOptions,
    },
    PutPart {
        upload: MultipartUpload,
        part: PartSpec,
        md5: Option<String>,
    },
    CompleteMultipart {
        upload: MultipartUpload,
        parts: Vec<CompletedPart>,
        opts: PutOptions,
    },
    AbortMultipart {
        upload: MultipartUpload,
    },
    ListUploads {
        prefix: String,
    },
    Delete {
        key: String,
    },
    /// The transfer is over: a gateway started to exit on it (`--exit-on-stop`) stops taking
    /// connections and exits once what it is writing is written; any other refuses. Sealed
    /// like every request, so only a holder of the transfer key can stop a gateway.
    Stop,
}

/// What the gateway's store is, for the client's synchronous [`skyhaul_store::Store`] methods.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub container: String,
    /// [`skyhaul_store::Store::place`]: with the name and container, what a sender compares
    /// across its gateways, which must all write to one store.
    pub place: Option<String>,
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    pub max_single_put: u64,
    pub etags_are_md5: bool,
    pub lists_by_level: bool,
    /// Gateways before content headers were carried did not say: they kept none.
    #[serde(default)]
    pub keeps_headers: bool,
}

/// The answer to a read, besides its bytes: what [`skyhaul_store::Fetched`] says of the
/// object. Gateways before SSE-KMS support sent only `etag`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadAnswer {
    pub etag: Option<String>,
    #[serde(default)]
    pub opaque_etag: bool,
    #[serde(default)]
    pub headers: ContentHeaders,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Gateways before full-object checksums were read did not send one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<FullChecksum>,
}

impl Info {
    pub fn limits(&self) -> Limits {
        Limits {
            min_part_size: self.min_part_size,
            max_part_size: self.max_part_size,
            max_parts: self.max_parts,
            max_single_put: self.max_single_put,
        }
    }
}

/// One listing entry: an object, or (listing by level) a sub-prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireEntry {
    Object(ObjectMeta),
    Prefix(String),
}

impl From<Entry> for WireEntry {
    fn from(e: Entry) -> Self {
        match e {
            Entry::Object(m) => WireEntry::Object(m),
            Entry::Prefix(p) => WireEntry::Prefix(p),
        }
    }
}

impl From<WireEntry> for Entry {
    fn from(e: WireEntry) -> Self {
        match e {
            WireEntry::Object(m) => Entry::Object(m),
            WireEntry::Prefix(p) => Entry::Prefix(p),
        }
    }
}

/// A page of a listing; `more` when the client should ask again after the last entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPage {
    pub entries: Vec<WireEntry>,
    pub more: bool,
}

/// The answer to any request: a JSON value (per operation) or the store's error, with its
/// kind, so that the engine retries (or not) exactly as it would for the store itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { value: serde_json::Value },
    Err { kind: ErrorKind, message: String },
}

impl Response {
    pub fn from_error(e: &Error) -> Response {
        // Version 1 of the wire predates BadCredentials: its peers could not read it. The
        // message still says what the store answered.
        let kind = match e.kind {
            ErrorKind::BadCredentials => ErrorKind::AccessDenied,
            kind => kind,
        };
        Response::Err {
            kind,
            message: e.message.clone(),
        }
    }
}

/// An MD5 as hex for the JSON, and back.
pub fn md5_hex(md5: Option<[u8; 16]>) -> Option<String> {
    md5.map(hex::encode)
}

pub fn md5_bytes(md5: Option<&str>) -> Option<[u8; 16]> {
    md5.and_then(|h| hex::decode(h).ok())
        .and_then(|b| b.try_into().ok())
}

/// How a gateway's own refusals begin (it is stopping, serves another bucket, keeps
/// serving): about what the sender did or asked, not about how the gateway's store is set up.
pub(crate) const OWN_REFUSAL: &str = "this relay gateway";

/// Whether `e` is one of a gateway's own refusals ([`OWN_REFUSAL`]).
pub(crate) fn is_own_refusal(e: &skyhaul_store::Error) -> bool {
    e.message.contains(OWN_REFUSAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_survive_the_wire() {
        for kind in [ErrorKind::Throttled, ErrorKind::NotFound, ErrorKind::Other] {
            let r = Response::from_error(&Error::new(kind, "m"));
            let json = serde_json::to_vec(&r).unwrap();
            let Response::Err { kind: k, message } = serde_json::from_slice(&json).unwrap() else {
                unreachable!()
            };
            assert_eq!((k, message.as_str()), (kind, "m"));
        }
        let refused = Response::from_error(&Error::new(ErrorKind::BadCredentials, "m"));
        assert!(matches!(
            refused,
            Response::Err {
                kind: ErrorKind::AccessDenied,
                ..
            }
        ));
    }
}
