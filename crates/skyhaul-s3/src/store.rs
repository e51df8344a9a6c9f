use crate::body::ChunkBody;
use crate::config::S3Options;
use crate::credentials::{profile_credentials, Remembered};
use crate::errors::map_err;
use crate::listing::Failure;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart as S3Part,
    ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;
use base64::Engine;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use skyhaul_store::{
    buffers, header_value, Chunks, CompletedPart, ContentHeaders, Entry, Error, ErrorKind, Fetched,
    FullChecksum, Limits, MultipartUpload, ObjectMeta, PartSpec, Payload, PutOptions, Result,
    Store, Streamed, Written, CRC_METADATA,
};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// The [`ContentHeaders`] of a GET's or HEAD's answer: the SDK gives each output type the
/// same accessors, but no trait to name them by.
macro_rules! headers_of {
    ($out:expr) => {
        ContentHeaders {
            content_type: $out.content_type().map(str::to_string),
            content_encoding: $out.content_encoding().map(str::to_string),
            content_disposition: $out.content_disposition().map(str::to_string),
            content_language: $out.content_language().map(str::to_string),
            cache_control: $out.cache_control().map(str::to_string),
        }
    };
}

/// A PUT or CreateMultipartUpload request with `opts`' user metadata and content headers,
/// as far as S3 can take them ([`metadata`], [`ContentHeaders::sendable`]) for `target`.
macro_rules! with_headers {
    ($req:expr, $opts:expr, $target:expr) => {{
        let h = $opts.headers.sendable($target);
        $req.set_metadata(metadata($opts, $target))
            .set_content_type(h.content_type.clone())
            .set_content_encoding(content_encoding(&h))
            .set_content_disposition(h.content_disposition.clone())
            .set_content_language(h.content_language.clone())
            .set_cache_control(h.cache_control.clone())
            .set_storage_class($opts.storage_class.as_deref().map(StorageClass::from))
    }};
}

/// `x-amz-copy-source` is `bucket/key` with the key URL-encoded except for `/`.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// One bucket on one S3 endpoint, with that side's own credentials.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    name: String,
    /// The endpoint and who signs: see [`Store::copy_domain`].
    domain: String,
    /// The endpoint alone: see [`Store::place`].
    place: String,
    /// Requests go unsigned ([`S3Options::anonymous`]): a refusal then means "not public".
    anonymous: bool,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("name", &self.name).finish()
    }
}

impl S3Store {
    /// ListObjectsV2 under `prefix`, by level (delimiter `/`) or flat. Pages are fetched by
    /// a task of their own so the next page is on its way while the engine works through
    /// the current one.
    fn pages(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        by_level: bool,
    ) -> BoxStream<'static, Result<Entry>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Result<Entry>>>(2);
        let this = self.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        tokio::spawn(async move {
            let mut token: Option<String> = None;
            loop {
                let req = this
                    .client
                    .list_objects_v2()
                    .bucket(&this.bucket)
                    .prefix(&prefix)
                    .set_delimiter(by_level.then(|| "/".to_string()))
                    .set_start_after(if token.is_none() {
                        start_after.clone()
                    } else {
                        None
                    })
                    .set_continuation_token(token.clone());
                let page = match crate::listing::page(req).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(vec![Err(this.list_failed(e, &prefix))]).await;
                        return;
                    }
                };
                if tx
                    .send(page.items.into_iter().map(Ok).collect())
                    .await
                    .is_err()
                {
                    return;
                }
                token = page.next;
                if token.is_none() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .flat_map(futures::stream::iter)
            .boxed()
    }
    /// Builds a client for `bucket` from `opts`, resolving credentials once up front so that
    /// a missing profile or key fails here with a clear message, not on the first request.
    pub async fn connect(opts: &S3Options, bucket: &str) -> Result<S3Store> {
        let name = format!("s3://{bucket}");
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // The engine retries (and counts retries) uniformly for every backend.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            )
            // Since 2025 the SDK sends CRC32 checksums by default, which many S3-compatible
            // servers reject, and it validates whole-object checksums that some servers echo
            // on ranged reads. Integrity is the engine's job; send only what is required.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(profile) = &opts.profile {
            loader = loader.profile_name(profile);
        }
        loader = loader.region(region_chain(opts));
        if let Some(endpoint) = &opts.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let keys = (&opts.access_key_id, &opts.secret_access_key);
        if opts.anonymous {
            loader = loader.no_credentials();
        } else if let (Some(ak), Some(sk)) = keys {
            loader = loader.credentials_provider(Credentials::new(
                ak.clone(),
                sk.clone(),
                opts.session_token.clone(),
                None,
                "skyhaul",
            ));
        }
        let sdk = loader.load().await;
        let endpoint = opts.endpoint.clone().unwrap_or_else(|| "aws".to_string());
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .endpoint_resolver(crate::endpoint::KeyBlindResolver::default())
            .force_path_style(opts.path_style.unwrap_or(opts.endpoint.is_some()))
            .interceptor(crate::request_checks::RequestChecks);
        // Who signs goes into the copy domain: a server-side copy is signed by the
        // destination's credentials, which must be the source's.
        let who = if opts.anonymous {
            // Without a credentials provider, no auth scheme applies; this one sends the
            // requests unsigned instead of failing them.
            conf = conf.allow_no_auth();
            "(anonymous)".to_string()
        } else {
            let provider = sign_in(opts, &sdk, &name).await?;
            let key_id = provider
                .provide_credentials()
                .await
                .map_err(|e| {
                    // The chain's full story (every provider it tried) is for -vv.
                    tracing::debug!("credentials: {}", DisplayErrorContext(&e));
                    // A profile given that gave none: most often a name mistyped.
                    let profile = match &opts.profile {
                        Some(p) => {
                            format!(" (profile '{p}' gives none here, nor does the environment)")
                        }
                        None => String::new(),
                    };
                    Error::new(
                        ErrorKind::BadCredentials,
                        format!("{name}: no usable credentials found{profile}"),
                    )
                })?
                .access_key_id()
                .to_string();
            conf = conf.credentials_provider(provider);
            key_id
        };
        if opts.requester_pays {
            conf = conf.interceptor(crate::requester_pays::RequesterPays);
        }
        // A server-side copy is asked of the destination's client: out of a requester-pays
        // bucket it must carry the acknowledgement too, so both sides must send it.
        let pays = if opts.requester_pays {
            "|requester-pays"
        } else {
            ""
        };
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            domain: format!("s3|{endpoint}|{who}{pays}"),
            place: format!("s3|{}", skyhaul_store::endpoint_place(&endpoint)),
            anonymous: opts.anonymous,
            name,
        })
    }

    /// [`map_err`] for this store's requests, signed or not.
    fn fail<E>(&self, err: SdkError<E, HttpResponse>, target: &str, what: &str) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        map_err(err, target, what, self.anonymous)
    }

    fn list_failed(&self, failure: Failure, prefix: &str) -> Error {
        let target = self.target(prefix);
        match failure {
            Failure::Request(e) => self.fail(*e, &target, "list"),
            Failure::Unreadable => Error::new(
                ErrorKind::Other,
                format!(
                    "{target}: list: the listing cannot be read: a key in it holds characters \
                     XML cannot carry (such as control characters) and the server does not \
                     URL-encode keys when asked; rename that key at the store or leave its \
                     prefix out"
                ),
            ),
            Failure::BadKey(k) => Error::new(
                ErrorKind::Other,
                format!("{target}: list: the server sent a key that is not URL-encoded UTF-8: {k}"),
            ),
        }
    }

    fn target(&self, key: &str) -> String {
        format!("{}/{key}", self.name)
    }

    /// GetObject up to its headers, refused when the object is no longer `expect`.
    async fn send_get(
        &self,
        key: &str,
        range: Option<&Range<u64>>,
        expect: Option<&ObjectMeta>,
    ) -> Result<GetObjectOutput> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(r) = range {
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        if let Some(tag) = expect.and_then(|e| e.etag.as_deref()) {
            req = req.if_match(format!("\"{tag}\""));
        }
        // Without `Range`, `RequestChecks` asks for the object's own checksums.
        let resp = req
            .send()
            .await
            .map_err(|e| self.fail(e, &self.target(key), "get"))?;
        // Servers that ignore If-Match still tell the version by ETag and total size.
        if let Some(exp) = expect {
            let total = resp
                .content_range()
                .and_then(|r| r.rsplit('/').next())
                .and_then(|t| t.parse::<u64>().ok())
                .or_else(|| {
                    // No length (a chunked answer) says nothing of the size.
                    let length = resp
                        .content_length()
                        .filter(|_| resp.content_range().is_none());
                    length.map(|l| l.max(0) as u64)
                });
            let tag = etag(resp.e_tag());
            if total.is_some_and(|t| t != exp.size)
                || (exp.etag.is_some() && tag.is_some() && tag != exp.etag)
            {
                return Err(Error::new(
                    ErrorKind::SourceChanged,
                    format!(
                        "{}: object changed while it was being copied",
                        self.target(key)
                    ),
                ));
            }
        }
        Ok(resp)
    }

    fn copy_source(src_container: &str, key: &str) -> String {
        format!("{src_container}/{}", utf8_percent_encode(key, COPY_SOURCE))
    }

    /// HEAD of `key` in `bucket` (this store's, or a server-side copy's source).
    async fn head_in(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(h) => {
                let mut m = ObjectMeta::new(key, h.content_length().unwrap_or(0).max(0) as u64);
                m.mtime = mtime(h.last_modified());
                m.etag = etag(h.e_tag());
                m.opaque_etag = opaque_etag(h.server_side_encryption(), h.sse_customer_algorithm());
                m.metadata = metadata_of(h.metadata());
                m.headers = Some(Box::new(headers_of!(h)));
                if let Some(FullChecksum::Crc64Nvme(crc)) =
                    full_checksum(h.checksum_type(), None, h.checksum_crc64_nvme(), None, None)
                {
                    m.set_crc64nvme(crc);
                }
                Ok(Some(m))
            }
            Err(e) => {
                let target = match bucket == self.bucket {
                    true => self.target(key),
                    false => format!("s3://{bucket}/{key}"),
                };
                let err = self.fail(e, &target, "head");
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }
}

/// A response body that broke off: worth another try.
fn interrupted(target: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Transient,
        format!("{target}: get: body interrupted: {e}"),
    )
}

/// The provider of a signing side's credentials: its profile's when the profile gives some
/// here (before the default chain, with the region `load` found), else the default chain's.
async fn sign_in(opts: &S3Options, sdk: &aws_config::SdkConfig, name: &str) -> Result<Remembered> {
    let keys = opts.access_key_id.is_some() && opts.secret_access_key.is_some();
    let chosen = match &opts.profile {
        Some(profile) if !keys => profile_credentials(profile, sdk.region().cloned(), name).await?,
        _ => None,
    };
    match (chosen, sdk.credentials_provider()) {
        (Some(profile), _) => Ok(profile),
        (None, Some(chain)) => Ok(Remembered::new(chain)),
        (None, None) => Err(Error::new(
            ErrorKind::BadCredentials,
            format!("{name}: no credentials found"),
        )),
    }
}

/// Where the region comes from: the flag, then the environment and the profile, then (for
/// AWS itself) instance metadata. Custom endpoints mostly ignore the region but SigV4 needs
/// one, so they fall back to `us-east-1` without a slow, noisy metadata lookup.
fn region_chain(opts: &S3Options) -> RegionProviderChain {
    let explicit = RegionProviderChain::first_try(opts.region.clone().map(Region::new))
        .or_else(EnvironmentVariableRegionProvider::new());
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(name) = &opts.profile {
        profile = profile.profile_name(name);
    }
    let chain = explicit.or_else(profile.build());
    if opts.endpoint.is_some() {
        chain.or_else(Region::new("us-east-1"))
    } else {
        chain
            .or_default_provider()
            .or_else(Region::new("us-east-1"))
    }
}

/// The `<UploadId>` of a successful CreateMultipartUpload reply that the SDK could not
/// parse: rclone serve s3 (1.75) names the XML root `InitiateMultipartUpload` instead of
/// `InitiateMultipartUploadResult`, and the SDK rejects the whole reply for it.
pub fn upload_id_from_unparsed_reply<E>(e: &SdkError<E, HttpResponse>) -> Option<String> {
    let raw = e.raw_response()?;
    if !raw.status().is_success() {
        return None;
    }
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    let start = body.find("<UploadId>")? + "<UploadId>".len();
    let end = start + body[start..].find("</UploadId>")?;
    Some(body[start..end].to_string())
}

fn base64_md5(md5: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

/// The object's checksum that an answer reports (asked for with `x-amz-checksum-mode`), when
/// it is of the whole object ([`FullChecksum`]). A composite checksum (`…-N`, or of type
/// `COMPOSITE`) is not, and a value of the wrong length is a server's mistake (moto reports a
/// 4-byte CRC64-NVME), not a checksum. Without a stated type, a CRC32 or CRC32C of an object
/// uploaded in parts (`etag` `…-N`) is taken for a composite one: older MinIO reported those
/// without the `-N`. AWS keeps one algorithm per object; should a server report several, the
/// CRC64-NVME (never composite) wins.
fn full_checksum(
    kind: Option<&ChecksumType>,
    etag: Option<&str>,
    crc64nvme: Option<&str>,
    crc32: Option<&str>,
    crc32c: Option<&str>,
) -> Option<FullChecksum> {
    if kind.is_some_and(|t| *t != ChecksumType::FullObject) {
        return None;
    }
    let (crc32, crc32c) = match kind.is_none() && etag.is_some_and(|e| e.contains('-')) {
        true => (None, None),
        false => (crc32, crc32c),
    };
    fn raw<const N: usize>(value: Option<&str>) -> Option<[u8; N]> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value?)
            .ok()?;
        bytes.try_into().ok()
    }
    raw(crc64nvme)
        .map(|b| FullChecksum::Crc64Nvme(u64::from_be_bytes(b)))
        .or_else(|| raw(crc32).map(|b| FullChecksum::Crc32(u32::from_be_bytes(b))))
        .or_else(|| raw(crc32c).map(|b| FullChecksum::Crc32c(u32::from_be_bytes(b))))
}

/// [`full_checksum`] of a read's answer.
fn answer_checksum(resp: &GetObjectOutput) -> Option<FullChecksum> {
    full_checksum(
        resp.checksum_type(),
        resp.e_tag(),
        resp.checksum_crc64_nvme(),
        resp.checksum_crc32(),
        resp.checksum_crc32_c(),
    )
}

pub(crate) fn etag(s: Option<&str>) -> Option<String> {
    s.map(|e| e.trim_matches('"').to_string())
}

/// Whether an answer's encryption headers say its ETag is not the content's MD5: AWS gives
/// objects it encrypts with SSE-KMS, DSSE-KMS or SSE-C ETags that only look like one (and
/// their parts too). SSE-S3 (`AES256`) keeps the MD5.
fn opaque_etag(sse: Option<&ServerSideEncryption>, customer_algorithm: Option<&str>) -> bool {
    matches!(
        sse,
        Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
    ) || customer_algorithm.is_some()
}

pub(crate) fn mtime(t: Option<&aws_smithy_types::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// The Content-Encoding to write: the source's, without `aws-chunked`, which some
/// S3-compatible servers keep from the upload that made the object. Sent on, it would tell
/// the destination that this plain body is chunk-signed.
fn content_encoding(h: &ContentHeaders) -> Option<String> {
    let kept: Vec<&str> = h
        .content_encoding
        .as_deref()?
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// S3 keeps at most this many bytes of user metadata (names and values) per object.
const METADATA_LIMIT: usize = 2048;

/// `opts`' user metadata as S3 can take it for `target`: names that are HTTP tokens (others,
/// which GCS allows, are left out and logged), values as header values ([`header_value`]),
/// and skyhaul's CRC entry only while the whole fits in S3's 2 KB: a source's own metadata
/// near that size is worth more than a checksum later comparisons can do without.
fn metadata(opts: &PutOptions, target: &str) -> Option<HashMap<String, String>> {
    let token = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut out: HashMap<String, String> = HashMap::new();
    for (name, value) in opts.metadata_ignoring_case(target) {
        if token(name) {
            out.insert(name.to_string(), header_value(value).into_owned());
        } else {
            tracing::warn!("{target}: metadata {name:?} left out: S3 takes only token names");
        }
    }
    let size: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > METADATA_LIMIT && out.remove(CRC_METADATA).is_some() {
        tracing::debug!("{target}: no {CRC_METADATA} entry: the source's metadata fills S3's 2 KB");
    }
    (!out.is_empty()).then_some(out)
}

/// The user metadata of an answer (GET or HEAD), in order.
fn metadata_of(md: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    md.map(|m| m.clone().into_iter().collect())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> Limits {
        Limits::S3
    }

    fn etags_are_md5(&self) -> bool {
        true
    }

    fn keeps_headers(&self) -> bool {
        true
    }

    async fn preflight(&self, _for_write: bool) -> Result<()> {
        // ListObjectsV2 (unlike HeadBucket) names the problem: NoSuchBucket, AccessDenied.
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.fail(e, &self.name, "list"))?;
        Ok(())
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        // Without a delimiter S3 rolls nothing up into prefixes: every entry is an object.
        self.pages(prefix, start_after, false)
            .try_filter_map(|e| async move { Ok(e.into_object()) })
            .boxed()
    }

    fn lists_by_level(&self) -> bool {
        true
    }

    fn lists_after_any_key(&self) -> bool {
        true
    }

    fn list_level<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<Entry>> {
        self.pages(prefix, start_after, true)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.head_in(&self.bucket, key).await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        expect: Option<&ObjectMeta>,
    ) -> Result<Fetched> {
        if range.as_ref().is_some_and(|r| r.is_empty()) {
            return Ok(Fetched::default());
        }
        // A range that is the whole object (as the engine asks for a whole read) goes as no
        // range, for the object's checksum to come with the answer; `range` still says how
        // many bytes must arrive.
        let whole = match (&range, expect) {
            (None, _) => true,
            (Some(r), Some(e)) => r.start == 0 && r.end == e.size,
            (Some(_), None) => false,
        };
        let resp = self
            .send_get(key, range.as_ref().filter(|_| !whole), expect)
            .await?;
        let ranged_reply = resp.content_range().is_some();
        let checksum = whole.then(|| answer_checksum(&resp)).flatten();
        let version = etag(resp.e_tag());
        let opaque = opaque_etag(resp.server_side_encryption(), resp.sse_customer_algorithm());
        let (headers, metadata) = (headers_of!(resp), metadata_of(resp.metadata()));
        let want = range.as_ref().map(|r| r.end - r.start);
        let mut buf = buffers::take(resp.content_length().unwrap_or(0).max(0) as usize);
        let mut body = resp.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| interrupted(&self.target(key), e))?;
            buf.extend_from_slice(&chunk);
        }
        let mut data = buffers::freeze(buf);
        if let (Some(r), Some(want)) = (&range, want) {
            if !ranged_reply && data.len() as u64 >= r.end && data.len() as u64 != want {
                // The server ignored Range and sent the whole object.
                data = data.slice(r.start as usize..r.end as usize);
            }
            if data.len() as u64 != want {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "{}: get: expected {want} bytes, received {} (truncated)",
                        self.target(key),
                        data.len()
                    ),
                ));
            }
        }
        Ok(Fetched {
            data,
            etag: version,
            opaque_etag: opaque,
            headers,
            metadata,
            checksum,
        })
    }

    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<Written> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(body.data.len() as i64)
            .set_content_md5(body.md5.as_ref().map(base64_md5));
        // With Content-MD5, `RequestChecks` leaves the body out of the signature.
        let out = with_headers!(req, opts, &self.target(key))
            .body(ByteStream::from(body.data))
            .send()
            .await
            .map_err(|e| self.fail(e, &self.target(key), "put"))?;
        Ok(Written {
            etag: etag(out.e_tag()),
            opaque_etag: opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()),
        })
    }

    fn streams(&self) -> bool {
        true
    }

    async fn get_stream(&self, key: &str, expect: Option<&ObjectMeta>) -> Result<Streamed> {
        let resp = self.send_get(key, None, expect).await?;
        let etag = etag(resp.e_tag());
        let opaque_etag = opaque_etag(resp.server_side_encryption(), resp.sse_customer_algorithm());
        let (headers, metadata) = (headers_of!(resp), metadata_of(resp.metadata()));
        let checksum = answer_checksum(&resp);
        let target: std::sync::Arc<str> = self.target(key).into();
        let body = futures::stream::unfold(resp.body, move |mut body| {
            let target = target.clone();
            async move {
                let chunk = body.next().await?;
                Some((chunk.map_err(|e| interrupted(&target, e)), body))
            }
        });
        Ok(Streamed {
            body: body.boxed(),
            etag,
            opaque_etag,
            headers,
            metadata,
            checksum,
        })
    }

    async fn put_stream(
        &self,
        key: &str,
        body: Chunks,
        md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<Written> {
        // A body that is not held cannot be hashed for the signature before it is sent, so a
        // streamed write goes unsigned and relies on `Content-MD5` (itself signed) instead.
        let Some(md5) = md5 else {
            return skyhaul_store::put_collected(self, key, body, None, opts).await;
        };
        let (body, failure) = ChunkBody::new(body, opts.size, &self.name, key);
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(opts.size as i64)
            .content_md5(base64_md5(&md5));
        let out = with_headers!(req, opts, &self.target(key))
            .body(ByteStream::from_body_1_x(body))
            .send()
            .await
            .map_err(|e| {
                failure
                    .take()
                    .unwrap_or_else(|| self.fail(e, &self.target(key), "put"))
            })?;
        Ok(Written {
            etag: etag(out.e_tag()),
            opaque_etag: opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()),
        })
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<MultipartUpload> {
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        let out = with_headers!(req, opts, &self.target(key)).send().await;
        let upload_id = match out {
            Ok(out) => out.upload_id().map(str::to_string),
            Err(e) => match upload_id_from_unparsed_reply(&e) {
                Some(id) => Some(id),
                None => return Err(self.fail(e, &self.target(key), "create multipart upload")),
            },
        };
        let upload_id = upload_id.ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                format!("{}: server returned no upload id", self.target(key)),
            )
        })?;
        Ok(MultipartUpload {
            key: key.to_string(),
            upload_id,
        })
    }

    async fn put_part(
        &self,
        upload: &MultipartUpload,
        part: PartSpec,
        body: Payload,
    ) -> Result<CompletedPart> {
        // With Content-MD5, `RequestChecks` leaves the body out of the signature.
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .part_number(part.number as i32)
            .content_length(body.data.len() as i64)
            .set_content_md5(body.md5.as_ref().map(base64_md5))
            .body(ByteStream::from(body.data))
            .send()
            .await
            .map_err(|e| {
                self.fail(
                    e,
                    &self.target(&upload.key),
                    &format!("upload part {}", part.number),
                )
            })?;
        Ok(CompletedPart {
            number: part.number,
            len: part.len,
            etag: etag(out.e_tag()).unwrap_or_default(),
            opaque_etag: opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()),
        })
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[CompletedPart],
        _opts: &PutOptions,
    ) -> Result<Written> {
        let parts = parts
            .iter()
            .map(|p| {
                S3Part::builder()
                    .part_number(p.number as i32)
                    .e_tag(format!("\"{}\"", p.etag))
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.fail(e, &self.target(&upload.key), "complete multipart upload"))?;
        Ok(Written {
            etag: etag(out.e_tag()),
            opaque_etag: opaque_etag(out.server_side_encryption(), None),
        })
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.fail(e, &self.target(&upload.key), "abort multipart upload");
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.fail(e, &self.target(prefix), "list multipart uploads"))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    found.push(MultipartUpload {
                        key: key.to_string(),
                        upload_id: id.to_string(),
                    });
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(found);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(found);
            }
        }
    }

    fn copy_domain(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn place(&self) -> Option<String> {
        Some(self.place.clone())
    }

    fn container(&self) -> &str {
        &self.bucket
    }

    async fn copy_object(
        &self,
        src_container: &str,
        src: &ObjectMeta,
        dst_key: &str,
        opts: &PutOptions,
    ) -> Result<Written> {
        let from = format!("s3://{src_container}/{}", src.key);
        // The copy keeps the source's metadata and content headers (CopyObject's default),
        // but takes the storage class it is given, else the bucket's default.
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst_key)
            .copy_source(Self::copy_source(src_container, &src.key))
            .set_copy_source_if_match(src.etag.as_ref().map(|t| format!("\"{t}\"")))
            .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
            .send()
            .await
            .map_err(|e| {
                self.fail(
                    e,
                    &self.target(dst_key),
                    &format!("server-side copy from {from}"),
                )
            })?;
        let written = Written {
            etag: etag(out.copy_object_result().and_then(|r| r.e_tag())),
            opaque_etag: opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()),
        };
        // Servers that ignore x-amz-copy-source-if-match (rclone serve s3, moto) still say
        // what they copied: a content-MD5 ETag other than the listed one is a changed source.
        // Unless one of the two ETags is no MD5 (SSE-KMS): then the source's own is asked for.
        let md5_shaped = |t: &str| skyhaul_store::content_md5(Some(t), false).is_some();
        let Some((listed, copied)) = src.etag.as_deref().zip(written.etag.as_deref()) else {
            return Ok(written);
        };
        if listed.eq_ignore_ascii_case(copied) || !md5_shaped(listed) || !md5_shaped(copied) {
            return Ok(written);
        }
        let now = self.head_in(src_container, &src.key).await?;
        match now.filter(|now| {
            now.etag
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(listed))
        }) {
            Some(now) if now.opaque_etag || written.opaque_etag => Ok(written),
            Some(_) => Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: server-side copy from {from}: the copy's ETag {copied} is not the \
                     unchanged source's {listed}",
                    self.target(dst_key),
                ),
            )),
            None => Err(Error::new(
                ErrorKind::SourceChanged,
                format!(
                    "{}: server-side copy from {from}: the source changed while it was being \
                     copied",
                    self.target(dst_key),
                ),
            )),
        }
    }

    async fn copy_part(
        &self,
        src_container: &str,
        src: &ObjectMeta,
        upload: &MultipartUpload,
        part: PartSpec,
    ) -> Result<CompletedPart> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .part_number(part.number as i32)
            .copy_source(Self::copy_source(src_container, &src.key))
            .copy_source_range(format!(
                "bytes={}-{}",
                part.offset,
                part.offset + part.len - 1
            ))
            .set_copy_source_if_match(src.etag.as_ref().map(|t| format!("\"{t}\"")))
            .send()
            .await
            .map_err(|e| {
                self.fail(
                    e,
                    &self.target(&upload.key),
                    &format!("server-side copy of part {}", part.number),
                )
            })?;
        let tag = out
            .copy_part_result()
            .and_then(|r| etag(r.e_tag()))
            .unwrap_or_default();
        Ok(CompletedPart {
            number: part.number,
            len: part.len,
            etag: tag,
            opaque_etag: opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail(e, &self.target(key), "delete"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_not_passed_on_as_a_content_encoding() {
        let enc = |e: &str| {
            content_encoding(&ContentHeaders {
                content_encoding: Some(e.to_string()),
                ..Default::default()
            })
        };
        assert_eq!(enc("gzip").as_deref(), Some("gzip"));
        assert_eq!(enc("aws-chunked"), None);
        assert_eq!(enc("aws-chunked,gzip").as_deref(), Some("gzip"));
        assert_eq!(enc("gzip, br").as_deref(), Some("gzip, br"));
    }

    #[test]
    fn metadata_fits_s3_names_values_and_size() {
        let mut opts = PutOptions::default();
        opts.metadata.insert("owner".into(), "équipe".into());
        opts.metadata.insert("has space".into(), "x".into());
        opts.set_crc64nvme(1);
        let m = metadata(&opts, "t").unwrap();
        assert_eq!(m["owner"], "=?UTF-8?B?w6lxdWlwZQ==?=");
        assert!(!m.contains_key("has space"));
        assert!(m.contains_key(CRC_METADATA));
        opts.metadata
            .insert("big".into(), "v".repeat(METADATA_LIMIT));
        let m = metadata(&opts, "t").unwrap();
        assert!(
            !m.contains_key(CRC_METADATA),
            "the source's own metadata comes first"
        );
        assert_eq!(m["big"].len(), METADATA_LIMIT);
    }

    #[test]
    fn only_kms_and_customer_keys_make_etags_opaque() {
        // AWS sends AES256 (SSE-S3) on every object now: those ETags stay content MD5s.
        assert!(!opaque_etag(None, None));
        assert!(!opaque_etag(Some(&ServerSideEncryption::Aes256), None));
        assert!(opaque_etag(Some(&ServerSideEncryption::AwsKms), None));
        assert!(opaque_etag(Some(&ServerSideEncryption::AwsKmsDsse), None));
        assert!(opaque_etag(None, Some("AES256")), "SSE-C");
    }

    #[test]
    fn only_whole_object_checksums_of_the_right_length_count() {
        // Base64 of the big-endian bytes, as S3 sends them.
        let (crc64, crc32) = ("AAAAAAAAAAE=", "AAAAAg==");
        let full = Some(&ChecksumType::FullObject);
        let composite = Some(&ChecksumType::Composite);
        let (single, parts) = (Some("\"0f\""), Some("\"0f-3\""));
        assert_eq!(
            full_checksum(full, parts, Some(crc64), Some(crc32), None),
            Some(FullChecksum::Crc64Nvme(1))
        );
        assert_eq!(
            full_checksum(None, single, None, Some(crc32), None),
            Some(FullChecksum::Crc32(2)),
            "a single PUT's checksum, from a server that names no type"
        );
        assert_eq!(
            full_checksum(full, parts, None, None, Some(crc32)),
            Some(FullChecksum::Crc32c(2))
        );
        assert_eq!(
            full_checksum(full, single, Some(crc32), None, None),
            None,
            "a 4-byte CRC64-NVME is a server's mistake"
        );
        assert_eq!(
            full_checksum(composite, single, None, Some(crc32), None),
            None
        );
        assert_eq!(
            full_checksum(None, parts, None, Some("AAAAAg==-3"), None),
            None,
            "a checksum of 3 parts' checksums"
        );
        assert_eq!(
            full_checksum(None, parts, None, Some(crc32), Some(crc32)),
            None,
            "with no type, a CRC32 of parts may be composite without saying so"
        );
        assert_eq!(
            full_checksum(None, parts, Some(crc64), None, None),
            Some(FullChecksum::Crc64Nvme(1)),
            "a CRC64-NVME is never composite"
        );
    }
}
