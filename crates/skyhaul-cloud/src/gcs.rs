//! Google Cloud Storage over its JSON API.
//!
//! * Listing is `objects.list` with `startOffset`, which GCS answers in lexicographic order
//!   of the object names, as the engine requires. By level it adds the delimiter `/`; a page
//!   then holds its objects and its sub-prefixes apart, each in order, and they are merged.
//! * Every upload sends the body's CRC32C (and its MD5 when the engine computed one) in the
//!   object resource, so GCS refuses a body corrupted on the way, and the stored hashes the
//!   server reports back are compared with what was sent (emulators that ignore the sent
//!   hashes are caught by that comparison too).
//! * The ETag the engine sees is the object's MD5 (hex) when GCS has one, which makes GCS
//!   objects comparable with S3 ETags and local MD5s; composite objects have no MD5, and get
//!   `g<generation>` instead, which is also what a read pins with `ifGenerationMatch`.
//! * Striped uploads are parallel composite uploads: each part is a temporary object under
//!   [`UPLOADS_PREFIX`], and completion composes them (32 at a time, in a tree) into the
//!   destination and deletes them. This needs nothing but the JSON API, which every GCS
//!   endpoint and emulator speaks (fake-gcs-server has no XML multipart API), and the upload
//!   state stays plain data: the upload id names the temporary objects. Completion checks that
//!   the composite's CRC32C is the combination of the parts' CRC32Cs.
//! * Server-side copy is `objects.rewrite`, which copies any size, within and across buckets.

use crate::order::InOrder;
use crate::transport::{
    self, body, content_headers, header, prefixed_metadata, send, status_error, Provider,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use crc_fast::CrcAlgorithm;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody, HttpResponse};
use object_store::gcp::{GcpCredentialProvider, GoogleCloudStorageBuilder};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use skyhaul_store::{
    CompletedPart, ContentHeaders, Entry, Error, ErrorKind, Fetched, Limits, MultipartUpload,
    ObjectMeta, PartSpec, Payload, PutOptions, Result, Store, Written,
};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

/// Where the parts of striped uploads live until completion composes them. Listings leave
/// them out: they are not user objects, and `skyhaul clean` (abort) removes leftovers.
pub const UPLOADS_PREFIX: &str = ".skyhaul-uploads/";

/// Only what [`GcsObject`] reads: listings of millions of objects are mostly these bytes.
const LIST_FIELDS: &str =
    "items(name,size,updated,md5Hash,crc32c,generation,metadata),prefixes,nextPageToken";

/// Compose takes at most 32 source objects.
const COMPOSE_MAX: usize = 32;

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// Unreserved characters stay, everything else (including `/`) is percent-encoded: object
/// names are one path segment in the JSON API.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const PROVIDER: Provider = Provider {
    container_word: "bucket",
    credentials_hint: "--src/dst-gcs-service-account, GOOGLE_APPLICATION_CREDENTIALS or \
                       `gcloud auth application-default login`",
};

/// Endpoint and credentials of one GCS side.
#[derive(Debug, Clone, Default)]
pub struct GcsOptions {
    /// API endpoint; default `https://storage.googleapis.com`, or `STORAGE_EMULATOR_HOST`.
    pub endpoint: Option<String>,
    /// A service-account JSON key file. Without one, application-default credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, then the metadata server) are
    /// used, except against an emulator or a custom endpoint, which get no credentials.
    pub service_account: Option<PathBuf>,
    /// Send no credentials (a public bucket's readers need none), whatever the machine has.
    pub anonymous: bool,
}

/// One GCS bucket.
#[derive(Clone)]
pub struct GcsStore {
    client: HttpClient,
    auth: Option<GcpCredentialProvider>,
    base: String,
    bucket: String,
    name: String,
    /// The endpoint and who signs: see [`Store::copy_domain`].
    domain: String,
    /// Asked to read unsigned ([`GcsOptions::anonymous`]): a refusal means "not public".
    anonymous: bool,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStore")
            .field("name", &self.name)
            .finish()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `STORAGE_EMULATOR_HOST` is `host:port` or a URL, depending on the client library.
fn emulator_url(host: &str) -> String {
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

impl GcsStore {
    /// Builds a client for `bucket`; credential files are read here, so a broken one fails
    /// at once. Tokens are fetched on the first request ([`Store::preflight`]).
    pub async fn connect(opts: &GcsOptions, bucket: &str) -> Result<GcsStore> {
        let name = format!("gs://{bucket}");
        let emulator = env("STORAGE_EMULATOR_HOST").map(|h| emulator_url(&h));
        let base = opts
            .endpoint
            .clone()
            .or_else(|| emulator.clone())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let adc_file = env("GOOGLE_APPLICATION_CREDENTIALS");
        // Emulators take no credentials; a custom endpoint gets them only when asked for.
        let anonymous = opts.anonymous
            || opts.service_account.is_none()
                && (opts.endpoint.is_none() && emulator.is_some()
                    || opts.endpoint.is_some() && adc_file.is_none());
        let (auth, who) = if anonymous {
            (None, "anonymous".to_string())
        } else {
            let mut b = GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
            let who = if let Some(path) = &opts.service_account {
                b = b.with_service_account_path(path.to_string_lossy());
                path.display().to_string()
            } else if let Some(path) = &adc_file {
                b = b.with_application_credentials(path);
                path.clone()
            } else {
                "application-default".to_string()
            };
            let store = b.build().map_err(|e| {
                Error::new(
                    ErrorKind::AccessDenied,
                    format!(
                        "{name}: cannot use the Google credentials ({who}): {} (check the file)",
                        transport::redact(&e.to_string())
                    ),
                )
            })?;
            (Some(store.credentials().clone()), who)
        };
        Ok(GcsStore {
            client: transport::client()?,
            auth,
            domain: format!("gcs|{base}|{who}"),
            anonymous: opts.anonymous,
            base,
            bucket: bucket.to_string(),
            name,
        })
    }

    fn target(&self, key: &str) -> String {
        format!("{}/{key}", self.name)
    }

    fn object_url(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            utf8_percent_encode(bucket, SEGMENT),
            utf8_percent_encode(key, SEGMENT)
        )
    }

    fn bucket_url(&self) -> String {
        format!(
            "{}/storage/v1/b/{}/o",
            self.base,
            utf8_percent_encode(&self.bucket, SEGMENT)
        )
    }

    async fn request(
        &self,
        method: Method,
        url: String,
        headers: &[(&str, String)],
        body: Bytes,
        target: &str,
        what: &str,
    ) -> Result<HttpResponse> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        if let Some(auth) = &self.auth {
            let cred = auth.get_credential().await.map_err(|e| {
                Error::new(
                    ErrorKind::BadCredentials,
                    format!(
                        "{target}: no usable Google credentials: {} (check {})",
                        transport::redact(&e.to_string()),
                        PROVIDER.credentials_hint
                    ),
                )
            })?;
            if !cred.bearer.is_empty() {
                b = b.header("authorization", format!("Bearer {}", cred.bearer));
            }
        }
        let req: HttpRequest = b
            .header("content-length", body.len().to_string())
            .body(HttpRequestBody::from(body))
            .map_err(|e| Error::new(ErrorKind::Other, format!("{target}: {what}: {e}")))?;
        send(&self.client, req, target, what).await
    }

    /// The response if it succeeded, else the error its status and JSON body mean.
    async fn ok(&self, resp: HttpResponse, target: &str, what: &str) -> Result<HttpResponse> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = body(resp, target, what).await.unwrap_or_default();
        let (reason, message) = error_detail(&text);
        Err(status_error(
            PROVIDER,
            status,
            &reason,
            &message,
            target,
            what,
            self.anonymous,
        ))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: HttpResponse,
        target: &str,
        what: &str,
    ) -> Result<T> {
        let resp = self.ok(resp, target, what).await?;
        let data = body(resp, target, what).await?;
        serde_json::from_slice(&data).map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("{target}: {what}: unreadable answer: {e}"),
            )
        })
    }

    /// One simple upload (`uploadType=multipart`: resource and media in one request).
    async fn upload(
        &self,
        key: &str,
        data: Bytes,
        md5: Option<[u8; 16]>,
        opts: &PutOptions,
        what: &str,
    ) -> Result<GcsObject> {
        let target = self.target(key);
        let crc = crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, &data) as u32;
        let mut resource = resource(opts);
        resource["name"] = key.into();
        resource["crc32c"] = B64.encode(crc.to_be_bytes()).into();
        if let Some(m) = md5 {
            resource["md5Hash"] = B64.encode(m).into();
        }
        // The media part's type too: some servers (fake-gcs-server) take the object's from it.
        let media_type = resource["contentType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let boundary = format!("skyhaul-{:032x}", rand::random::<u128>());
        let mut buf = BytesMut::with_capacity(data.len() + 512);
        buf.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{resource}\r\n\
                 --{boundary}\r\nContent-Type: {media_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        buf.extend_from_slice(&data);
        buf.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        // The name goes in the query too, which wins over the resource's: a byte flipped in
        // the resource's name on the way cannot put the bytes under another key.
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart&name={}",
            self.base,
            utf8_percent_encode(&self.bucket, SEGMENT),
            utf8_percent_encode(key, SEGMENT)
        );
        let resp = self
            .request(
                Method::POST,
                url,
                &[(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )],
                buf.freeze(),
                &target,
                what,
            )
            .await?;
        let obj: GcsObject = self.json(resp, &target, what).await?;
        if obj.name != key {
            let wrong = format!("it as {:?}", obj.name);
            return Err(self.discard(&obj, &target, what, &wrong).await);
        }
        // GCS refuses mismatching hashes itself; this also catches servers that do not.
        let stored_crc = obj.crc32c();
        let wrong = if stored_crc.is_some_and(|c| c != crc)
            || md5.is_some_and(|m| obj.md5().is_some_and(|s| s != m))
        {
            Some("different bytes".to_string())
        } else {
            obj.differs_from(opts)
        };
        match wrong {
            Some(wrong) => {
                let wrong = format!("{wrong} than were sent");
                Err(self.discard(&obj, &target, what, &wrong).await)
            }
            None => Ok(obj),
        }
    }

    /// Removes `obj`, just written but not as sent, so that it never stays under its key;
    /// returns the error that says so. Only this generation goes: a write that came since
    /// stays.
    async fn discard(&self, obj: &GcsObject, target: &str, what: &str, wrong: &str) -> Error {
        let error = Error::new(
            ErrorKind::Corrupt,
            format!("{target}: {what}: the server stored {wrong}"),
        );
        // Without its generation, a delete could take a write that came since.
        let Some(g) = &obj.generation else {
            tracing::warn!(
                "{target}: the corrupted upload was left as {:?}: the server named no generation to remove only it",
                obj.name
            );
            return error;
        };
        let url = format!(
            "{}?ifGenerationMatch={g}",
            self.object_url(&self.bucket, &obj.name)
        );
        let deleted = self
            .request(Method::DELETE, url, &[], Bytes::new(), target, "delete")
            .await;
        if let Err(e) = deleted {
            tracing::warn!("{target}: the corrupted upload could not be removed: {e}");
        }
        error
    }

    /// Every object under `prefix`, temporary upload parts included.
    fn list_raw<'a>(
        &'a self,
        prefix: &'a str,
        start_offset: Option<&'a str>,
    ) -> BoxStream<'a, Result<GcsObject>> {
        self.list_pages(prefix, start_offset, false)
            .map_ok(|page| futures::stream::iter(page.items.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    /// The pages of a listing from `start_offset` (inclusive), with the delimiter `/` when
    /// `by_level` (then `prefixes` holds the sub-prefixes).
    fn list_pages<'a>(
        &'a self,
        prefix: &'a str,
        start_offset: Option<&'a str>,
        by_level: bool,
    ) -> BoxStream<'a, Result<ListPage>> {
        let target = self.target(prefix);
        futures::stream::try_unfold(
            (Some(None::<String>), target),
            move |(token, target)| async move {
                let Some(token) = token else {
                    return Ok(None);
                };
                let mut url = format!(
                    "{}?prefix={}&maxResults=1000&projection=noAcl&fields={}",
                    self.bucket_url(),
                    utf8_percent_encode(prefix, SEGMENT),
                    utf8_percent_encode(LIST_FIELDS, SEGMENT)
                );
                if by_level {
                    url.push_str("&delimiter=%2F");
                }
                if let Some(s) = start_offset {
                    url.push_str(&format!("&startOffset={}", utf8_percent_encode(s, SEGMENT)));
                }
                if let Some(t) = &token {
                    url.push_str(&format!("&pageToken={}", utf8_percent_encode(t, SEGMENT)));
                }
                let resp = self
                    .request(Method::GET, url, &[], Bytes::new(), &target, "list")
                    .await?;
                let mut page: ListPage = self
                    .json(resp, &target, "list")
                    .await
                    .map_err(bucket_missing)?;
                let next = page.next_page_token.take().map(Some);
                Ok(Some((page, (next, target))))
            },
        )
        .boxed()
    }

    /// The object resource of `key` in `bucket` (this store's, or a rewrite's source).
    async fn head_in(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>> {
        let target = match bucket == self.bucket {
            true => self.target(key),
            false => format!("gs://{bucket}/{key}"),
        };
        let resp = self
            .request(
                Method::GET,
                self.object_url(bucket, key),
                &[],
                Bytes::new(),
                &target,
                "head",
            )
            .await?;
        match self.json::<GcsObject>(resp, &target, "head").await {
            Ok(o) => Ok(Some(o.meta())),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn part_name(upload: &MultipartUpload, number: u32) -> String {
        format!("{UPLOADS_PREFIX}{}/{number:05}", upload.upload_id)
    }

    async fn compose(
        &self,
        sources: &[String],
        dest: &str,
        opts: &PutOptions,
        target: &str,
    ) -> Result<GcsObject> {
        let resource = resource(opts);
        let req = serde_json::json!({
            "sourceObjects": sources.iter().map(|s| serde_json::json!({"name": s})).collect::<Vec<_>>(),
            "destination": resource,
        });
        let resp = self
            .request(
                Method::POST,
                format!("{}/compose", self.object_url(&self.bucket, dest)),
                &[("content-type", "application/json".to_string())],
                Bytes::from(req.to_string()),
                target,
                "compose",
            )
            .await?;
        self.json(resp, target, "compose").await
    }

    /// Deletes every temporary object of `upload_id`.
    async fn delete_upload_objects(&self, upload_id: &str) -> Result<()> {
        let prefix = format!("{UPLOADS_PREFIX}{upload_id}/");
        let names: Vec<String> = self
            .list_raw(&prefix, None)
            .map_ok(|o| o.name)
            .try_collect()
            .await?;
        futures::stream::iter(names)
            .map(|n| async move { self.delete(&n).await })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// A 404 from `objects.list` can only mean the bucket (emulators do not always say so).
fn bucket_missing(e: Error) -> Error {
    if e.kind != ErrorKind::NotFound {
        return e;
    }
    Error::new(
        ErrorKind::BucketNotFound,
        format!(
            "{}: the bucket does not exist (check the bucket name and the endpoint)",
            e.message.split(": ").next().unwrap_or("")
        ),
    )
}

/// GCS's JSON error: `{"error": {"code": 404, "message": "...", "errors": [{"reason": "notFound"}]}}`.
fn error_detail(text: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(text).unwrap_or_default();
    let e = &v["error"];
    let reason = e["errors"][0]["reason"].as_str().unwrap_or("").to_string();
    let message = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(text).trim().to_string());
    (reason, message)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<GcsObject>,
    /// Sub-prefixes, when listed with a delimiter.
    #[serde(default)]
    prefixes: Vec<String>,
    next_page_token: Option<String>,
}

/// The parts of an object resource skyhaul uses. Numbers are JSON strings in this API.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GcsObject {
    name: String,
    #[serde(default)]
    size: String,
    updated: Option<String>,
    md5_hash: Option<String>,
    crc32c: Option<String>,
    generation: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
}

impl GcsObject {
    /// What of the headers and metadata `opts` asked for this object, just written, does not
    /// hold ("other metadata"), if anything: they travel in a JSON body that nothing checks on
    /// the way, as the bytes' CRC32C does the bytes. A field the answer leaves out counts as
    /// kept; a header's case and spaces may differ (servers normalise media types).
    fn differs_from(&self, opts: &PutOptions) -> Option<String> {
        let h = &opts.headers;
        let default_type = Some("application/octet-stream".to_string());
        let same = |sent: &Option<String>, stored: &Option<String>| {
            let plain = |s: &str| s.replace(' ', "").to_ascii_lowercase();
            stored.is_none() || sent.as_deref().map(plain) == stored.as_deref().map(plain)
        };
        let headers = [
            (
                h.content_type.as_ref().or(default_type.as_ref()).cloned(),
                &self.content_type,
            ),
            (h.content_encoding.clone(), &self.content_encoding),
            (h.content_disposition.clone(), &self.content_disposition),
            (h.content_language.clone(), &self.content_language),
            (h.cache_control.clone(), &self.cache_control),
        ];
        if !headers.iter().all(|(sent, stored)| same(sent, stored)) {
            return Some("other headers".into());
        }
        let kept = self.metadata.is_empty() || self.metadata == opts.metadata;
        (!kept).then(|| "other metadata".into())
    }

    fn md5(&self) -> Option<[u8; 16]> {
        decode_md5(self.md5_hash.as_deref()?)
    }

    fn crc32c(&self) -> Option<u32> {
        let b = B64.decode(self.crc32c.as_deref()?).ok()?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    fn meta(self) -> ObjectMeta {
        let etag = version_tag(self.md5(), self.generation.as_deref());
        let mut m = ObjectMeta::new(self.name, self.size.parse().unwrap_or(0));
        m.mtime = self
            .updated
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(std::time::SystemTime::from);
        m.etag = etag;
        m.metadata = self.metadata;
        let headers = ContentHeaders {
            content_type: self.content_type,
            content_encoding: self.content_encoding,
            content_disposition: self.content_disposition,
            content_language: self.content_language,
            cache_control: self.cache_control,
        };
        // Listings ask for none of these fields: their objects stay without.
        m.headers = (!headers.is_empty()).then(|| Box::new(headers));
        m
    }
}

fn decode_md5(b64: &str) -> Option<[u8; 16]> {
    B64.decode(b64).ok()?.try_into().ok()
}

/// What GCS answers downloads of objects without a Cache-Control of their own with.
const GCS_DEFAULT_CACHE_CONTROL: [&str; 3] = [
    "private, max-age=0",
    "public, max-age=3600",
    "no-cache, no-store, max-age=0, must-revalidate",
];

/// `metadata` from a download's `x-goog-meta-*` headers, whose names HTTP lowercased, under
/// the names the JSON API gave in a listing or HEAD (`listed`), which keep their case: a
/// copy then writes `Owner` as `Owner` whether the object was read whole or in parts.
/// A listed name that no header can carry (GCS allows any name, HTTP headers only tokens:
/// `x y`) is taken from the listing, so that a destination that can store it does, and
/// one that cannot says it left it out. A listed name that could be a header but is not
/// in the download's was removed since the listing, and stays removed.
fn named_as_listed(
    metadata: BTreeMap<String, String>,
    listed: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    // Headers fold line breaks and drop spaces at either end of a value: where that is all
    // that differs, the listed value is the object's own.
    let same_words = |a: &str, b: &str| a.split_whitespace().eq(b.split_whitespace());
    let mut named = BTreeMap::new();
    for (name, value) in metadata {
        let listed: Vec<_> = listed
            .iter()
            .filter(|(l, _)| l.eq_ignore_ascii_case(&name))
            .collect();
        match listed[..] {
            [] => named.insert(name, value),
            [(l, v)] if same_words(v, &value) => named.insert(l.clone(), v.clone()),
            [(l, _)] => named.insert(l.clone(), value),
            // Names that differ only in case (GCS keeps `Key` and `key` apart) share one
            // header name: only the listing tells them apart.
            _ => {
                named.extend(listed.into_iter().map(|(l, v)| (l.clone(), v.clone())));
                continue;
            }
        };
    }
    let header_name = |n: &str| http::HeaderName::from_bytes(format!("x-goog-meta-{n}").as_bytes());
    for (name, value) in listed {
        if header_name(name).is_err() {
            named.insert(name.clone(), value.clone());
        }
    }
    named
}

/// The object resource that gives an object being written `opts`' user metadata and content
/// headers (an object with no content type is served as `application/octet-stream`).
fn resource(opts: &PutOptions) -> serde_json::Value {
    let h = &opts.headers;
    let mut resource = serde_json::json!({
        "contentType": h.content_type.as_deref().unwrap_or("application/octet-stream"),
    });
    for (field, value) in [
        ("contentEncoding", &h.content_encoding),
        ("contentDisposition", &h.content_disposition),
        ("contentLanguage", &h.content_language),
        ("cacheControl", &h.cache_control),
    ] {
        if let Some(v) = value {
            resource[field] = v.as_str().into();
        }
    }
    if let Some(class) = &opts.storage_class {
        resource["storageClass"] = class.as_str().into();
    }
    if !opts.metadata.is_empty() {
        resource["metadata"] = serde_json::to_value(&opts.metadata).unwrap_or_default();
    }
    resource
}

/// The ETag skyhaul gives a GCS object: its MD5 in hex, else `g<generation>`.
fn version_tag(md5: Option<[u8; 16]>, generation: Option<&str>) -> Option<String> {
    md5.map(hex::encode)
        .or_else(|| generation.map(|g| format!("g{g}")))
}

/// `x-goog-hash: crc32c=…,md5=…` (whole-object hashes, also on ranged reads).
fn goog_hash(headers: &http::HeaderMap) -> (Option<[u8; 16]>, Option<u32>) {
    let mut md5 = None;
    let mut crc = None;
    for v in headers.get_all("x-goog-hash") {
        for part in v.to_str().unwrap_or("").split(',') {
            match part.trim().split_once('=') {
                Some(("md5", b)) => md5 = decode_md5(b.trim()),
                Some(("crc32c", b)) => {
                    crc = B64
                        .decode(b.trim())
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_be_bytes)
                }
                _ => {}
            }
        }
    }
    (md5, crc)
}

fn is_listable(key: &str, prefix: &str) -> bool {
    !key.ends_with('/') && (prefix.starts_with(UPLOADS_PREFIX) || !key.starts_with(UPLOADS_PREFIX))
}

#[async_trait::async_trait]
impl Store for GcsStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> Limits {
        Limits {
            // Composed parts have no minimum size; 1 MiB keeps the object count sane.
            min_part_size: 1 << 20,
            max_part_size: 5 << 30,
            // Two levels of 32-way compose.
            max_parts: (COMPOSE_MAX * COMPOSE_MAX) as u32,
            max_single_put: 5 << 30,
        }
    }

    /// ETags are content MD5s where GCS has one (see the module documentation).
    fn keeps_headers(&self) -> bool {
        true
    }

    fn etags_are_md5(&self) -> bool {
        true
    }

    async fn preflight(&self, _for_write: bool) -> Result<()> {
        let url = format!("{}?maxResults=1", self.bucket_url());
        let resp = self
            .request(Method::GET, url, &[], Bytes::new(), &self.name, "list")
            .await?;
        self.ok(resp, &self.name, "list")
            .await
            .map(|_| ())
            .map_err(bucket_missing)
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let mut order = InOrder::new(self.target(prefix));
        self.list_raw(prefix, start_after)
            .try_filter(move |o| {
                let keep = is_listable(&o.name, prefix) && Some(o.name.as_str()) != start_after;
                async move { keep }
            })
            .and_then(move |o| {
                let res = order.check(&o.name).map(|()| o.meta());
                async move { res }
            })
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
        let mut order = InOrder::new(self.target(prefix));
        self.list_pages(prefix, start_after, true)
            .map_ok(|page| {
                // A page holds its objects and its sub-prefixes apart, each in order.
                let mut entries: Vec<Entry> = page
                    .items
                    .into_iter()
                    .map(|o| Entry::Object(o.meta()))
                    .chain(page.prefixes.into_iter().map(Entry::Prefix))
                    .collect();
                entries.sort_by(|a, b| a.key().cmp(b.key()));
                futures::stream::iter(entries.into_iter().map(Ok))
            })
            .try_flatten()
            .try_filter(move |e| {
                let key = e.key();
                let keep = match e {
                    Entry::Object(_) => is_listable(key, prefix),
                    Entry::Prefix(_) => prefix.starts_with(UPLOADS_PREFIX) || key != UPLOADS_PREFIX,
                };
                // startOffset is inclusive, and a prefix holding it comes again.
                let keep = keep && start_after.is_none_or(|s| key > s);
                async move { keep }
            })
            .and_then(move |e| {
                let res = order.check(e.key()).map(|()| e);
                async move { res }
            })
            .boxed()
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
        let target = self.target(key);
        let mut url = format!("{}?alt=media", self.object_url(&self.bucket, key));
        let expected_generation = expect
            .and_then(|e| e.etag.as_deref())
            .and_then(|t| t.strip_prefix('g'));
        if let Some(g) = expected_generation {
            url.push_str(&format!("&ifGenerationMatch={g}"));
        }
        // Without it GCS unzips an object stored with Content-Encoding gzip as it serves it
        // (and ignores Range): the bytes would not be the object's.
        let mut headers = vec![("accept-encoding", "gzip".to_string())];
        if let Some(r) = &range {
            if r.is_empty() {
                return Ok(Fetched::default());
            }
            headers.push(("range", format!("bytes={}-{}", r.start, r.end - 1)));
        }
        let resp = self
            .request(Method::GET, url, &headers, Bytes::new(), &target, "get")
            .await?;
        let resp = self.ok(resp, &target, "get").await?;
        let (md5, crc) = goog_hash(resp.headers());
        let generation = header(resp.headers(), "x-goog-generation").map(str::to_string);
        // Asked for the stored bytes, GCS may still unzip (for some content types), and then
        // ignores Range: those bytes are not the object's.
        if header(resp.headers(), "x-guploader-response-body-transformations")
            .is_some_and(|t| t.contains("gunzipped"))
        {
            return Err(Error::new(
                ErrorKind::Other,
                format!("{target}: get: GCS would serve this gzip-encoded object only unzipped"),
            ));
        }
        // What the object was stored with: its Content-Encoding is the stored one, and a
        // Cache-Control that is one of GCS's own defaults (sent when the object has none)
        // is left out.
        let headers = ContentHeaders {
            cache_control: header(resp.headers(), "cache-control")
                .filter(|c| !GCS_DEFAULT_CACHE_CONTROL.contains(c))
                .map(str::to_string),
            content_encoding: header(resp.headers(), "x-goog-stored-content-encoding")
                .filter(|e| *e != "identity")
                .map(str::to_string),
            ..content_headers(resp.headers())
        };
        let mut metadata = prefixed_metadata(resp.headers(), "x-goog-meta-", str::to_string);
        let ranged_reply = resp.status() == StatusCode::PARTIAL_CONTENT;
        let total = header(resp.headers(), "content-range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok());
        let version = version_tag(md5, generation.as_deref());
        if let Some(exp) = expect {
            metadata = named_as_listed(metadata, &exp.metadata);
            let expected_md5 = exp.etag.as_deref().and_then(|t| {
                hex::decode(t)
                    .ok()
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
            });
            let md5_changed = matches!((expected_md5, md5), (Some(a), Some(b)) if a != b);
            // Also checked here: emulators ignore ifGenerationMatch on downloads.
            let generation_changed = matches!(
                (expected_generation, generation.as_deref()),
                (Some(a), Some(b)) if a != b
            );
            if md5_changed || generation_changed || total.is_some_and(|t| t != exp.size) {
                return Err(Error::new(
                    ErrorKind::SourceChanged,
                    format!("{target}: object changed while it was being copied"),
                ));
            }
        }
        let mut data = body(resp, &target, "get").await?;
        if let Some(r) = &range {
            let want = r.end - r.start;
            if !ranged_reply && data.len() as u64 >= r.end && data.len() as u64 != want {
                data = data.slice(r.start as usize..r.end as usize);
            }
            if data.len() as u64 != want {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "{target}: get: expected {want} bytes, received {} (truncated)",
                        data.len()
                    ),
                ));
            }
        }
        // A whole-object read is checked against the CRC32C GCS keeps for every object.
        let whole = !ranged_reply
            || range
                .as_ref()
                .is_some_and(|r| Some(r.end - r.start) == total);
        if let (true, Some(want)) = (whole, crc) {
            if crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, &data) as u32 != want {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("{target}: get: the bytes read do not match the object's CRC32C"),
                ));
            }
        }
        Ok(Fetched {
            data,
            etag: version,
            opaque_etag: false,
            headers,
            metadata,
            checksum: None,
        })
    }

    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<Written> {
        let obj = self.upload(key, body.data, body.md5, opts, "put").await?;
        Ok(Written {
            etag: obj.meta().etag,
            opaque_etag: false,
        })
    }

    async fn create_multipart(&self, key: &str, _opts: &PutOptions) -> Result<MultipartUpload> {
        Ok(MultipartUpload {
            key: key.to_string(),
            upload_id: format!("{:032x}", rand::random::<u128>()),
        })
    }

    async fn put_part(
        &self,
        upload: &MultipartUpload,
        part: PartSpec,
        body: Payload,
    ) -> Result<CompletedPart> {
        let obj = self
            .upload(
                &Self::part_name(upload, part.number),
                body.data,
                body.md5,
                &PutOptions::default(),
                &format!("upload part {} of '{}'", part.number, upload.key),
            )
            .await?;
        Ok(CompletedPart {
            number: part.number,
            len: part.len,
            etag: version_tag(obj.md5(), obj.generation.as_deref()).unwrap_or_default(),
            opaque_etag: false,
        })
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[CompletedPart],
        opts: &PutOptions,
    ) -> Result<Written> {
        let target = self.target(&upload.key);
        // The parts as stored: they must be exactly the ones the caller completes, and
        // their CRC32Cs say what the composite's must be.
        let prefix = format!("{UPLOADS_PREFIX}{}/", upload.upload_id);
        let stored: BTreeMap<String, GcsObject> = self
            .list_raw(&prefix, None)
            .map_ok(|o| (o.name.clone(), o))
            .try_collect()
            .await?;
        let mut names = Vec::with_capacity(parts.len());
        let mut crc: Option<u32> = None;
        for p in parts {
            let name = Self::part_name(upload, p.number);
            let Some(o) = stored.get(&name) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{target}: complete: part {} is missing (the upload was aborted?)",
                        p.number
                    ),
                ));
            };
            let size: u64 = o.size.parse().unwrap_or(0);
            if size != p.len {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{target}: complete: part {} has {size} bytes, expected {}",
                        p.number, p.len
                    ),
                ));
            }
            crc = match (crc, o.crc32c()) {
                (None, c) if names.is_empty() => c,
                (Some(a), Some(b)) => Some(crc_fast::checksum_combine(
                    CrcAlgorithm::Crc32Iscsi,
                    a as u64,
                    b as u64,
                    size,
                ) as u32),
                _ => None,
            };
            names.push(name);
        }
        if names.is_empty() {
            return Err(Error::new(
                ErrorKind::Other,
                format!("{target}: complete: no parts"),
            ));
        }
        // Compose in a tree: groups of 32 into intermediates until one compose is left.
        let mut level = 0;
        while names.len() > COMPOSE_MAX {
            let groups: Vec<(usize, Vec<String>)> = names
                .chunks(COMPOSE_MAX)
                .map(|c| c.to_vec())
                .enumerate()
                .collect();
            let no_meta = PutOptions::default();
            names = futures::stream::iter(groups)
                .map(|(i, group)| {
                    let dest = format!("{UPLOADS_PREFIX}{}/c{level}-{i:05}", upload.upload_id);
                    let (target, no_meta) = (&target, &no_meta);
                    async move {
                        self.compose(&group, &dest, no_meta, target).await?;
                        Ok::<_, Error>(dest)
                    }
                })
                .buffered(8)
                .try_collect()
                .await?;
            level += 1;
        }
        let obj = self.compose(&names, &upload.key, opts, &target).await?;
        // The parts stay until this holds: completing again composes them again.
        let wrong = match (crc, obj.crc32c()) {
            (Some(want), Some(got)) if want != got => Some(format!(
                "a CRC32C of {got:08x}, not its parts' ({want:08x}), and so other bytes"
            )),
            _ => obj.differs_from(opts),
        };
        if let Some(wrong) = wrong {
            let wrong = format!("{wrong} than were sent");
            return Err(self.discard(&obj, &target, "complete", &wrong).await);
        }
        if let Err(e) = self.delete_upload_objects(&upload.upload_id).await {
            tracing::warn!("{target}: temporary parts were not all deleted: {e}");
        }
        Ok(Written {
            etag: obj.meta().etag,
            opaque_etag: false,
        })
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        self.delete_upload_objects(&upload.upload_id).await
    }

    /// Creating an upload leaves nothing on the server here (parts appear only once they are
    /// sent, and the engine journals the upload before that), so an upload whose id was lost
    /// has nothing to abort.
    async fn list_uploads(&self, _prefix: &str) -> Result<Vec<MultipartUpload>> {
        Ok(Vec::new())
    }

    fn copy_domain(&self) -> Option<String> {
        Some(self.domain.clone())
    }

    fn place(&self) -> Option<String> {
        Some(format!("gcs|{}", skyhaul_store::endpoint_place(&self.base)))
    }

    fn container(&self) -> &str {
        &self.bucket
    }

    fn copies_whole_objects(&self) -> bool {
        true
    }

    async fn copy_object(
        &self,
        src_container: &str,
        src: &ObjectMeta,
        dst_key: &str,
        opts: &PutOptions,
    ) -> Result<Written> {
        let target = self.target(dst_key);
        let what = format!("server-side copy from gs://{src_container}/{}", src.key);
        let mut url = format!(
            "{}/rewriteTo/b/{}/o/{}?projection=noAcl",
            self.object_url(src_container, &src.key),
            utf8_percent_encode(&self.bucket, SEGMENT),
            utf8_percent_encode(dst_key, SEGMENT)
        );
        if let Some(g) = src.etag.as_deref().and_then(|t| t.strip_prefix('g')) {
            url.push_str(&format!("&ifSourceGenerationMatch={g}"));
        }
        // A rewrite with an empty body keeps the source's metadata and content headers. A
        // storage class must go in a destination resource, which then replaces them all:
        // so it carries the source's, as its record has them.
        let resource = match &opts.storage_class {
            None => serde_json::json!({}),
            Some(_) => {
                let Some(from) = self.head_in(src_container, &src.key).await? else {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("{target}: {what}: the source is gone"),
                    ));
                };
                resource(&PutOptions {
                    headers: from.headers.map(|h| *h).unwrap_or_default(),
                    metadata: from.metadata,
                    storage_class: opts.storage_class.clone(),
                    ..Default::default()
                })
            }
        };
        let body = Bytes::from(resource.to_string());
        let mut token: Option<String> = None;
        loop {
            let mut u = url.clone();
            if let Some(t) = &token {
                u.push_str(&format!(
                    "&rewriteToken={}",
                    utf8_percent_encode(t, SEGMENT)
                ));
            }
            let resp = self
                .request(
                    Method::POST,
                    u,
                    &[("content-type", "application/json".to_string())],
                    body.clone(),
                    &target,
                    &what,
                )
                .await?;
            let r: Rewrite = self.json(resp, &target, &what).await?;
            if r.done {
                let copied = r.resource.map(GcsObject::meta);
                // The copy is of the listed version, or it is a changed source.
                let changed = copied.as_ref().is_some_and(|c| {
                    c.size != src.size
                        || (src.etag.as_deref().is_some_and(|t| t.len() == 32)
                            && c.etag != src.etag)
                });
                if changed {
                    return Err(Error::new(
                        ErrorKind::SourceChanged,
                        format!("{target}: {what}: the source changed while it was being copied"),
                    ));
                }
                return Ok(Written::default());
            }
            token = r.rewrite_token;
            if token.is_none() {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!("{target}: {what}: unfinished rewrite without a token"),
                ));
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let target = self.target(key);
        let resp = self
            .request(
                Method::DELETE,
                self.object_url(&self.bucket, key),
                &[],
                Bytes::new(),
                &target,
                "delete",
            )
            .await?;
        match self.ok(resp, &target, "delete").await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rewrite {
    #[serde(default)]
    done: bool,
    rewrite_token: Option<String>,
    resource: Option<GcsObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloaded_metadata_names_take_the_listed_case() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let downloaded = m(&[("owner", "ml-team"), ("new-since-listing", "x")]);
        let listed = m(&[
            ("Owner", "old-value"),
            ("x y", "no header carries it"),
            ("removed-since-listing", "y"),
        ]);
        assert_eq!(
            named_as_listed(downloaded, &listed),
            m(&[
                ("Owner", "ml-team"),
                ("new-since-listing", "x"),
                ("x y", "no header carries it")
            ]),
            "names from the listing, values from the download, the rest from the listing"
        );
        let downloaded = m(&[("pad", "padded"), ("nl", "line1 line2"), ("key", "lower")]);
        let listed = m(&[
            ("pad", "  padded  "),
            ("nl", "line1\nline2"),
            ("Key", "UPPER"),
            ("key", "lower"),
        ]);
        assert_eq!(
            named_as_listed(downloaded, &listed.clone()),
            listed,
            "what headers change of a value, and names only case sets apart, as listed"
        );
    }

    #[test]
    fn version_tags() {
        let md5 = [0xab; 16];
        assert_eq!(version_tag(Some(md5), Some("7")).unwrap(), "ab".repeat(16));
        assert_eq!(version_tag(None, Some("7")).unwrap(), "g7");
        assert_eq!(version_tag(None, None), None);
    }

    #[test]
    fn goog_hash_header() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-goog-hash",
            "crc32c=mnG7TA==,md5=XUFAKrxLKna5cZ2REBfFkg=="
                .parse()
                .unwrap(),
        );
        let (md5, crc) = goog_hash(&h);
        assert_eq!(
            hex::encode(md5.unwrap()),
            "5d41402abc4b2a76b9719d911017c592"
        );
        assert_eq!(
            crc.unwrap(),
            crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, b"hello") as u32
        );
    }

    #[test]
    fn temporary_parts_are_not_listed() {
        assert!(!is_listable(".skyhaul-uploads/abc/00001", ""));
        assert!(is_listable(
            ".skyhaul-uploads/abc/00001",
            ".skyhaul-uploads/"
        ));
        assert!(!is_listable("dir/", ""));
        assert!(is_listable("dir/x", ""));
    }
}
