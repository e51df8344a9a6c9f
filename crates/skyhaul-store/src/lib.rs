//! The storage abstraction of skyhaul.
//!
//! Every backend (local file system here, S3 in `skyhaul-s3`, GCS and Azure in
//! `skyhaul-cloud`) implements the one
//! narrow [`Store`] trait, and the engine knows nothing else about a backend. The trait is
//! shaped by what a bulk copier needs rather than by any one provider: a sorted streaming
//! listing (so that sync can merge-join both sides in constant memory), ranged reads that
//! fail when the object changed under us, multipart uploads whose state is a plain
//! serialisable value (so that parts of one upload can later be sent by different workers),
//! and server-side copy where the provider offers it.

pub mod buffers;
mod error;
mod local;
mod place;
mod types;

pub mod conformance;

pub use error::{cause_chain, Error, ErrorKind, Result, BAD_BUCKET_NAME, BUCKET_IN, NOT_PUBLIC};
pub use local::{LocalStore, LOCAL_CHUNK};
pub use place::endpoint_place;
pub use types::{
    content_md5, header_safe, header_value, Chunks, CompletedPart, ContentHeaders, Entry, Fetched,
    FullChecksum, Limits, MultipartUpload, ObjectMeta, PartSpec, Payload, PutOptions, Streamed,
    Written, CRC_METADATA,
};

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use std::ops::Range;

/// One bucket, container or directory tree, addressed by `/`-separated keys.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Checks that the bucket or root exists and the credentials work, so that a wrong
    /// name or key fails at once with one clear error instead of once per object.
    /// Destinations that are created on demand (local directories) only check what they can.
    async fn preflight(&self, for_write: bool) -> Result<()> {
        let _ = for_write;
        Ok(())
    }

    /// A human name for messages, such as `s3://bucket` or `/data/out`. Never contains secrets.
    fn name(&self) -> &str;

    /// Size bounds for single puts and multipart parts.
    fn limits(&self) -> Limits;

    /// Whether reading an object again costs nothing but local I/O (a file system): then a
    /// checksum the comparison needs is computed by reading rather than left unknown.
    fn rereads_are_free(&self) -> bool {
        false
    }

    /// Whether objects keep the [`ContentHeaders`] and user metadata they are written with,
    /// and reads and HEADs return them (S3, GCS, Azure; not a file system).
    fn keeps_headers(&self) -> bool {
        false
    }

    /// Whether this store's ETags are MD5s of the content (S3: single-part uploads), which
    /// makes computing MD5 while copying worth its CPU.
    fn etags_are_md5(&self) -> bool {
        false
    }

    /// Lists objects whose key starts with `prefix`, in ascending byte order of the key,
    /// beginning after `start_after` when given. Directory markers are not objects. An
    /// entry the listing cannot include comes as an error marked [`Error::unlisted`], in its
    /// place in the order, and the listing goes on; any other error ends it.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>>;

    /// Whether [`Store::list_level`] works. Listing one level at a time lets the engine
    /// list the subtrees of a large prefix in parallel, and on stores that list by walking
    /// directories (file-backed S3 servers) it avoids a walk of everything per page.
    fn lists_by_level(&self) -> bool {
        false
    }

    /// Whether a listing that starts after any key costs what one from the beginning does
    /// (S3's `start-after`, GCS's `startOffset`; not a store that skips the keys before it
    /// itself). Such listings are split into key ranges listed at once.
    fn lists_after_any_key(&self) -> bool {
        false
    }

    /// One level below `prefix` (empty or ending in `/`), as S3 lists with the delimiter
    /// `/`: the objects directly under it and the sub-prefixes that hold the rest, in one
    /// ascending sequence, beginning after `start_after`.
    fn list_level<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<Entry>> {
        let _ = start_after;
        let err = Error::new(
            ErrorKind::Unsupported,
            format!("{}: listing '{prefix}' by level", self.name()),
        );
        futures::stream::once(async { Err(err) }).boxed()
    }

    /// The object's metadata, or `None` when there is no such object.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Reads `range` of the object (all of it when `None`). When `expect` is given the read
    /// fails with [`ErrorKind::SourceChanged`] if the object is no longer that version, so a
    /// copy is never assembled from two versions of a source.
    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        expect: Option<&ObjectMeta>,
    ) -> Result<Fetched>;

    /// Writes a whole object. Readers never see a partial object under `key`.
    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<Written>;

    /// Whether [`Store::get_stream`] and [`Store::put_stream`] move a body without holding
    /// all of it. Between two such stores the engine streams whole objects from the read
    /// into the write, so an object in flight costs a few chunks of memory, not its size,
    /// and its write starts with the read's first bytes rather than after its last.
    fn streams(&self) -> bool {
        false
    }

    /// Reads a whole object as a stream of chunks; `expect` as in [`Store::get`]. The
    /// default reads it whole and yields it as one chunk.
    async fn get_stream(&self, key: &str, expect: Option<&ObjectMeta>) -> Result<Streamed> {
        let fetched = self.get(key, None, expect).await?;
        Ok(Streamed {
            body: futures::stream::once(async { Ok(fetched.data) }).boxed(),
            etag: fetched.etag,
            opaque_etag: fetched.opaque_etag,
            headers: fetched.headers,
            metadata: fetched.metadata,
            checksum: fetched.checksum,
        })
    }

    /// Writes a whole object of `opts.size` bytes from `body`, with its MD5 when known (as
    /// [`Payload::md5`]). When `body` ends with an error, or with other than `opts.size`
    /// bytes, nothing is written under `key` and the body's error (or one saying how many
    /// bytes came) is returned. The default collects the body and calls [`Store::put`].
    async fn put_stream(
        &self,
        key: &str,
        body: Chunks,
        md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<Written> {
        put_collected(self, key, body, md5, opts).await
    }

    /// Starts a multipart upload of `opts.size` bytes to `key`.
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<MultipartUpload>;

    /// Uploads one part; parts may arrive in any order and from any process.
    async fn put_part(
        &self,
        upload: &MultipartUpload,
        part: PartSpec,
        body: Payload,
    ) -> Result<CompletedPart>;

    /// Makes the object visible under its key; `parts` are in part-number order.
    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[CompletedPart],
        opts: &PutOptions,
    ) -> Result<Written>;

    /// Discards an upload and everything uploaded for it.
    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()>;

    /// The uploads open under keys starting with `prefix`: how an upload whose id was lost
    /// (a crash right after creating it, or a lost response) can still be found and aborted.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: listing open uploads under '{prefix}'", self.name()),
        ))
    }

    /// Identifies the account and endpoint for server-side copy: two stores with the same
    /// `Some` id can copy between each other without moving bytes through this machine.
    fn copy_domain(&self) -> Option<String> {
        None
    }

    /// Where the objects live, whoever signs (or not) for them: two stores with the same
    /// `Some` place and [`Store::container`] hold the same objects, which a copy between
    /// them must not overwrite or delete (the overlap check). Unlike [`Store::copy_domain`],
    /// it leaves the credentials out: two keys, or none, reach the same bucket.
    fn place(&self) -> Option<String> {
        self.copy_domain()
    }

    /// The storage classes a write may ask for ([`PutOptions::storage_class`]), in the
    /// store's spelling, when the store has a fixed set (Azure's tiers); `None` when any
    /// name is passed on (S3 and the stores like it each have their own).
    fn storage_classes(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The bucket or container name that [`Store::copy_object`] takes as `src_container`.
    fn container(&self) -> &str {
        ""
    }

    /// Whether [`Store::copy_object`] copies objects of every size in one call (GCS rewrite,
    /// Azure Copy Blob), so server-side copies never need [`Store::copy_part`]. S3's
    /// CopyObject stops at 5 GB, which is why it defaults to false.
    fn copies_whole_objects(&self) -> bool {
        false
    }

    /// Server-side copy of a whole object from `src_container` (same copy domain); returns
    /// what the store says it stored, as [`Store::put`] does.
    async fn copy_object(
        &self,
        _src_container: &str,
        src: &ObjectMeta,
        _dst_key: &str,
        _opts: &PutOptions,
    ) -> Result<Written> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: server-side copy of '{}'", self.name(), src.key),
        ))
    }

    /// Server-side copy of `part.range()` of a source object into a multipart upload.
    async fn copy_part(
        &self,
        _src_container: &str,
        src: &ObjectMeta,
        _upload: &MultipartUpload,
        _part: PartSpec,
    ) -> Result<CompletedPart> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: server-side part copy of '{}'", self.name(), src.key),
        ))
    }

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// A streamed write done as one [`Store::put`] of the whole body: what stores that cannot
/// stream a write do, and what a streaming store falls back to where it must see every byte
/// before it sends the first (an S3 write without `Content-MD5`, which must be signed).
pub async fn put_collected<S: Store + ?Sized>(
    store: &S,
    key: &str,
    body: Chunks,
    md5: Option<[u8; 16]>,
    opts: &PutOptions,
) -> Result<Written> {
    let size = usize::try_from(opts.size).unwrap_or(usize::MAX);
    let data = body
        .try_fold(buffers::take(size), |mut buf, chunk| async move {
            buf.extend_from_slice(&chunk);
            Ok(buf)
        })
        .await?;
    if data.len() != size {
        return Err(short_body(store.name(), key, data.len() as u64, opts.size));
    }
    let data = buffers::freeze(data);
    store.put(key, Payload { data, md5 }, opts).await
}

/// The error of a streamed write whose body did not hold the object's size: the read was cut
/// short (or the object grew), so the write must not complete.
pub fn short_body(store: &str, key: &str, got: u64, want: u64) -> Error {
    Error::new(
        ErrorKind::Transient,
        format!(
            "{}/{key}: the body held {got} bytes, expected {want}",
            store.trim_end_matches('/')
        ),
    )
}
