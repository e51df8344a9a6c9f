use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

/// What a listing or head tells about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Last modification (file mtime, or the object's Last-Modified).
    pub mtime: Option<SystemTime>,
    /// The provider's entity tag, quotes removed, when it has one.
    pub etag: Option<String>,
    /// The store said `etag` is not the content's MD5, whatever it looks like: see
    /// [`content_md5`]. Only `head` can tell; a listing leaves it false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub opaque_etag: bool,
    /// User metadata; only filled by `head`, listings do not return it.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The content headers the store serves the object with; only filled by `head`. Boxed:
    /// listings hold millions of these without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<ContentHeaders>>,
}

/// The standard HTTP headers a store keeps with an object and serves it with. A copy
/// between stores that keep them carries them over, with the user metadata: a bucket
/// migrated without its `Content-Type` serves every page as a download. A file keeps
/// none, so an object uploaded from one gets a `Content-Type` guessed from its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
}

impl ContentHeaders {
    pub fn is_empty(&self) -> bool {
        *self == ContentHeaders::default()
    }

    /// The headers that can be sent as HTTP header values (visible ASCII): a store reached
    /// over HTTP headers (S3, Azure) cannot be given the others, which come from stores
    /// that keep them as JSON (GCS). Each one left out is logged with `target`.
    pub fn sendable(&self, target: &str) -> ContentHeaders {
        let keep = |name: &str, v: &Option<String>| {
            v.clone().filter(|v| {
                let ok = header_safe(v);
                if !ok {
                    tracing::warn!("{target}: {name} {v:?} left out: not sendable as a header");
                }
                ok
            })
        };
        ContentHeaders {
            content_type: keep("Content-Type", &self.content_type),
            content_encoding: keep("Content-Encoding", &self.content_encoding),
            content_disposition: keep("Content-Disposition", &self.content_disposition),
            content_language: keep("Content-Language", &self.content_language),
            cache_control: keep("Cache-Control", &self.cache_control),
        }
    }
}

/// Whether `value` can be sent as an HTTP header value as it is: visible ASCII and spaces,
/// none at either end. Servers drop the spaces around a header value (RFC 9110) and signers
/// differ on tabs, so such a value would arrive changed, or fail the request's signature
/// (which reads as refused credentials).
pub fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

/// `value` as an HTTP header value: as it is when [`header_safe`], else as an RFC 2047
/// encoded word (`=?UTF-8?B?…?=`), the form S3 itself gives metadata values that are not
/// ASCII. User metadata from a store that keeps any UTF-8 (GCS) so reaches S3 and Azure
/// instead of failing the object. One word whatever its length: S3 and Azure keep it as
/// text and do not decode it.
pub fn header_value(value: &str) -> std::borrow::Cow<'_, str> {
    use base64::Engine;
    if header_safe(value) {
        return value.into();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    format!("=?UTF-8?B?{encoded}?=").into()
}

/// The content MD5 an ETag stands for: one of 32 hex digits (no `-N` part count) that the
/// store has not called `opaque`. S3 gives an object written in one request the MD5 of its
/// bytes as ETag, except where it encrypts the object with SSE-KMS or SSE-C: then the ETag
/// looks the same but is not the MD5, and only the response's headers tell. A listing
/// carries no such headers, so an ETag listed as a content MD5 may still turn out opaque
/// when the object is read or headed.
pub fn content_md5(etag: Option<&str>, opaque: bool) -> Option<&str> {
    etag.filter(|e| !opaque && e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// User metadata key holding an object's full-object CRC64-NVME as 16 hex digits. skyhaul
/// writes it with every object it uploads whose CRC it knows before the upload starts, so
/// that later comparisons (`verify`, `sync --checksum`) work whatever the part layout.
pub const CRC_METADATA: &str = "skyhaul-crc64nvme";

impl ObjectMeta {
    pub fn new(key: impl Into<String>, size: u64) -> Self {
        ObjectMeta {
            key: key.into(),
            size,
            mtime: None,
            etag: None,
            opaque_etag: false,
            metadata: BTreeMap::new(),
            headers: None,
        }
    }

    /// The object's content MD5, if its ETag is one ([`content_md5`]).
    pub fn content_md5(&self) -> Option<&str> {
        content_md5(self.etag.as_deref(), self.opaque_etag)
    }

    /// The full-object CRC64-NVME recorded with the object, if any: from [`CRC_METADATA`],
    /// which backends also fill from a provider's own full-object CRC64-NVME. Only `head`
    /// returns metadata, so listed objects never have one.
    pub fn crc64nvme(&self) -> Option<u64> {
        parse_crc(self.metadata.get(CRC_METADATA)?)
    }

    /// Records `crc` as the object's full-object CRC64-NVME unless it has one already.
    pub fn set_crc64nvme(&mut self, crc: u64) {
        self.metadata
            .entry(CRC_METADATA.to_string())
            .or_insert_with(|| crc_hex(crc));
    }
}

fn crc_hex(crc: u64) -> String {
    format!("{crc:016x}")
}

fn parse_crc(hex: &str) -> Option<u64> {
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// One entry of a listing by level ([`crate::Store::list_level`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Object(ObjectMeta),
    /// A sub-prefix ending in `/`: everything below it is listed by listing it.
    Prefix(String),
}

impl Entry {
    /// The object, if this entry is one: what a flat listing keeps of a listing by level.
    pub fn into_object(self) -> Option<ObjectMeta> {
        match self {
            Entry::Object(m) => Some(m),
            Entry::Prefix(_) => None,
        }
    }

    /// The key or prefix: what orders entries.
    pub fn key(&self) -> &str {
        match self {
            Entry::Object(m) => &m.key,
            Entry::Prefix(p) => p,
        }
    }
}

/// Options for writing an object. Plain data, so that a relay gateway can be sent them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutOptions {
    /// Total size of the object being written.
    pub size: u64,
    /// Modification time to give the object where the backend can (local files).
    pub mtime: Option<SystemTime>,
    /// User metadata stored with the object.
    pub metadata: BTreeMap<String, String>,
    /// Content headers stored with the object, where the store keeps them.
    #[serde(default)]
    pub headers: ContentHeaders,
    /// The storage class (tier) to write the object in, in the store's own terms (S3's
    /// `STANDARD_IA`, GCS's `NEARLINE`, Azure's `Cool`…); `None` for the bucket's default.
    #[serde(default)]
    pub storage_class: Option<String>,
}

impl PutOptions {
    /// Stores `crc` with the object as its full-object CRC64-NVME ([`CRC_METADATA`]).
    pub fn set_crc64nvme(&mut self, crc: u64) {
        self.metadata.insert(CRC_METADATA.to_string(), crc_hex(crc));
    }

    /// The full-object CRC64-NVME the object is being written with, if known.
    pub fn crc64nvme(&self) -> Option<u64> {
        parse_crc(self.metadata.get(CRC_METADATA)?)
    }

    /// The user metadata for a store whose names ignore case (S3 and Azure, which take them
    /// as HTTP headers): of names that differ only in case (`Key` and `key`, which GCS keeps
    /// apart), the first in order is kept and the others are logged with `target` as left
    /// out. Sent as two headers, they would be merged into one value (S3) or break the
    /// request's signature, which reads as refused credentials (Azure).
    pub fn metadata_ignoring_case(&self, target: &str) -> Vec<(&str, &str)> {
        let mut seen = std::collections::HashSet::new();
        let mut kept = Vec::with_capacity(self.metadata.len());
        for (name, value) in &self.metadata {
            if seen.insert(name.to_ascii_lowercase()) {
                kept.push((name.as_str(), value.as_str()));
            } else {
                tracing::warn!(
                    "{target}: metadata {name:?} left out: the store takes names without \
                     case, and another one differs from it only in case"
                );
            }
        }
        kept
    }
}

/// Bytes to write, with their MD5 when known: S3-compatible servers check `Content-MD5`
/// and refuse a body that was corrupted on the way.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    pub data: bytes::Bytes,
    pub md5: Option<[u8; 16]>,
}

impl Payload {
    pub fn new(data: bytes::Bytes) -> Self {
        Payload { data, md5: None }
    }
}

/// Bytes read, with the entity tag the store sent with them: listings of some servers
/// carry no ETag, but every read does, and it is what the bytes are checked against.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub data: bytes::Bytes,
    pub etag: Option<String>,
    /// The read's answer said `etag` is not the content's MD5 ([`content_md5`]).
    pub opaque_etag: bool,
    /// The object's content headers and user metadata, where the read's answer carries
    /// them (S3's does): what a copy gives the destination.
    pub headers: ContentHeaders,
    pub metadata: BTreeMap<String, String>,
    /// The whole object's checksum as the store keeps it, where the answer to a whole read
    /// carries one ([`FullChecksum`]): what the bytes are checked against when the ETag is
    /// no MD5.
    pub checksum: Option<FullChecksum>,
}

impl Fetched {
    /// The content MD5 the read vouches for, if its ETag is one ([`content_md5`]).
    pub fn content_md5(&self) -> Option<&str> {
        content_md5(self.etag.as_deref(), self.opaque_etag)
    }
}

/// A body in order, chunk by chunk. A stream that ends with an error means the bytes cannot
/// be trusted (a read failed, or a check on them did), so a write from it must fail.
pub type Chunks = futures::stream::BoxStream<'static, crate::Result<bytes::Bytes>>;

/// A whole object being read as a stream, with the entity tag its response carried (known
/// before the body, as [`Fetched::etag`] is).
pub struct Streamed {
    pub body: Chunks,
    pub etag: Option<String>,
    /// The read's answer said `etag` is not the content's MD5 ([`content_md5`]).
    pub opaque_etag: bool,
    /// As [`Fetched::headers`], [`Fetched::metadata`] and [`Fetched::checksum`].
    pub headers: ContentHeaders,
    pub metadata: BTreeMap<String, String>,
    pub checksum: Option<FullChecksum>,
}

/// A checksum of a whole object's bytes that a store computed and keeps with it, whatever
/// the parts it was uploaded in: S3's `x-amz-checksum-*` of type `FULL_OBJECT`. AWS gives
/// every object written since 2025 a CRC64-NVME unless the writer chose another algorithm
/// (its SDKs now send CRC32 by default). Unlike an ETag, it stays a checksum in a bucket
/// that encrypts with SSE-KMS, so it is what vouches for the bytes of a whole read there.
/// A composite checksum (`…-N`, a checksum of the parts' checksums) is none of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullChecksum {
    Crc64Nvme(u64),
    Crc32(u32),
    /// CRC32C (Castagnoli).
    Crc32c(u32),
}

impl std::fmt::Display for FullChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullChecksum::Crc64Nvme(c) => write!(f, "CRC64-NVME {c:016x}"),
            FullChecksum::Crc32(c) => write!(f, "CRC32 {c:08x}"),
            FullChecksum::Crc32c(c) => write!(f, "CRC32C {c:08x}"),
        }
    }
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("etag", &self.etag)
            .field("opaque_etag", &self.opaque_etag)
            .finish()
    }
}

/// What the store says it stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The entity tag of the new object, quotes removed (MD5 of the body for single-part
    /// uploads on S3; `md5-of-part-md5s-N` for multipart).
    pub etag: Option<String>,
    /// The store said `etag` is not the content's MD5 ([`content_md5`]): a bucket that
    /// encrypts with SSE-KMS. What was sent is then checked only by the store itself
    /// (`Content-MD5`) and by the CRC stored with the object.
    #[serde(default, skip_serializing_if = "is_false")]
    pub opaque_etag: bool,
}

impl Written {
    /// The content MD5 the store reports for what it stored ([`content_md5`]).
    pub fn content_md5(&self) -> Option<&str> {
        content_md5(self.etag.as_deref(), self.opaque_etag)
    }
}

/// Bounds a backend puts on object and part sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    pub max_single_put: u64,
}

impl Limits {
    /// S3's documented bounds (also what S3-compatible stores accept).
    pub const S3: Limits = Limits {
        min_part_size: 5 << 20,
        max_part_size: 5 << 30,
        max_parts: 10_000,
        max_single_put: 5 << 30,
    };
}

/// One part of a multipart upload: its 1-based number and byte range in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSpec {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

impl PartSpec {
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len
    }
}

/// An upload in progress. Plain data, so it can be journaled and handed to another worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
}

/// A part the store has accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedPart {
    pub number: u32,
    pub len: u64,
    pub etag: String,
    /// The store said `etag` is not the part's MD5 ([`content_md5`]). Not journaled: it
    /// matters only for the check made when the part is sent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub opaque_etag: bool,
}

impl CompletedPart {
    /// The part's MD5 as the store reports it, if its ETag is one ([`content_md5`]).
    pub fn content_md5(&self) -> Option<&str> {
        content_md5(Some(&self.etag), self.opaque_etag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_that_are_not_ascii_become_encoded_words() {
        assert_eq!(header_value("plain value"), "plain value");
        assert_eq!(header_value("naïve café"), "=?UTF-8?B?bmHDr3ZlIGNhZsOp?=");
        assert_eq!(header_value("a=b\n"), "=?UTF-8?B?YT1iCg==?=");
        // What would arrive changed, or fail the signature: spaces at either end, tabs.
        assert_eq!(header_value("a  b"), "a  b");
        for v in [" lead", "trail ", "x\ty"] {
            assert!(header_value(v).starts_with("=?UTF-8?B?"), "{v:?}");
        }
        let h = ContentHeaders {
            content_type: Some("text/plain".into()),
            content_disposition: Some("attachment; filename=\"résumé.pdf\"".into()),
            ..Default::default()
        };
        let sent = h.sendable("t");
        assert_eq!(sent.content_type.as_deref(), Some("text/plain"));
        assert_eq!(sent.content_disposition, None);
    }
}
