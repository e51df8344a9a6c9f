//! Azure Blob Storage (block blobs) over its REST API.
//!
//! * Listing is List Blobs, which answers in lexicographic order of the names (Azurite puts a
//!   page's prefixes after its blobs, so a listing by level sorts each page). It has no
//!   "start after": a resumed listing skips the names up to it on this side.
//! * Uploads send `Content-MD5` (the engine computes it for stores whose ETags are MD5s), so
//!   Azure refuses a corrupted body; Put Blob and Put Block answer with the MD5 they computed,
//!   which is compared with the one sent.
//! * The ETag the engine sees is the blob's `Content-MD5` (hex) when it has one — Put Blob
//!   stores it, so such blobs compare with S3 ETags and local MD5s — else Azure's own ETag,
//!   which a read then pins with `If-Match`. Blobs made of blocks have no whole-blob MD5.
//! * Striped uploads are Put Block + Put Block List. Block ids are derived from the upload id
//!   and the part number, so the upload state stays plain data. Azure cannot delete
//!   uncommitted blocks (it drops them after a week), so an abort leaves nothing visible:
//!   they never appear in listings or reads.
//! * Server-side copy within one account is Copy Blob, which copies any size.
//! * User metadata names must be C# identifiers on Azure; other names (skyhaul's own
//!   `skyhaul-crc64nvme`) are escaped reversibly, see [`encode_meta_name`].

use crate::order::InOrder;
use crate::transport::{
    self, body, content_headers, header, prefixed_metadata, send, status_error, Provider,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use object_store::azure::{
    split_sas, AzureAccessKey, AzureAuthorizer, AzureCredential, AzureCredentialProvider,
    MicrosoftAzureBuilder,
};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody, HttpResponse};
use object_store::StaticCredentialProvider;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use skyhaul_store::{
    header_value, CompletedPart, Entry, Error, ErrorKind, Fetched, Limits, MultipartUpload,
    ObjectMeta, PartSpec, Payload, PutOptions, Result, Store, Written,
};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Blob names in a URL path: unreserved characters and `/` stay, the rest is encoded.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Query values: everything but unreserved characters is encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const PROVIDER: Provider = Provider {
    container_word: "container",
    credentials_hint:
        "--src/dst-azure-key, -sas or -connection-string, \
                       AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY",
};

/// Azurite's well-known development account (`UseDevelopmentStorage=true`).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Endpoint and credentials of one Azure side. Unset fields come from a connection string
/// (this one, else `AZURE_STORAGE_CONNECTION_STRING`), then from `AZURE_STORAGE_ACCOUNT`,
/// `AZURE_STORAGE_KEY` and `AZURE_STORAGE_SAS_TOKEN`; without a key or SAS, Entra ID
/// (service principal, workload or managed identity, Azure CLI) is tried.
#[derive(Clone, Default)]
pub struct AzureOptions {
    /// The blob service endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    pub account: Option<String>,
    /// The storage account key (base64).
    pub key: Option<String>,
    /// A SAS token (`sv=…&sig=…`, with or without the leading `?`).
    pub sas: Option<String>,
    pub connection_string: Option<String>,
    /// Send requests unsigned, as a public container's readers do, whatever credentials the
    /// options or the environment hold.
    pub anonymous: bool,
}

impl std::fmt::Debug for AzureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "<set>");
        f.debug_struct("AzureOptions")
            .field("endpoint", &self.endpoint)
            .field("account", &self.account)
            .field("key", &set(&self.key))
            .field("sas", &set(&self.sas))
            .field("connection_string", &set(&self.connection_string))
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// What a connection string says (the fields skyhaul uses).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub account: Option<String>,
    pub key: Option<String>,
    pub sas: Option<String>,
    pub blob_endpoint: Option<String>,
}

impl ConnectionString {
    /// Parses `Key=Value;…` (values may contain `=`, as base64 keys do).
    pub fn parse(s: &str) -> Result<ConnectionString> {
        let mut fields = BTreeMap::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::new(
                    ErrorKind::AccessDenied,
                    "the Azure connection string is not Key=Value;… (check it)",
                )
            })?;
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let get = |k: &str| fields.get(k).cloned().filter(|v| !v.is_empty());
        let mut cs = ConnectionString {
            account: get("accountname"),
            key: get("accountkey"),
            sas: get("sharedaccesssignature"),
            blob_endpoint: get("blobendpoint"),
        };
        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            cs.account.get_or_insert_with(|| DEV_ACCOUNT.to_string());
            cs.key.get_or_insert_with(|| DEV_KEY.to_string());
            cs.blob_endpoint
                .get_or_insert_with(|| format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"));
        }
        if cs.blob_endpoint.is_none() {
            if let Some(a) = &cs.account {
                let proto = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
                let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
                cs.blob_endpoint = Some(format!("{proto}://{a}.blob.{suffix}"));
            }
        }
        Ok(cs)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// One container in one storage account.
#[derive(Clone)]
pub struct AzureStore {
    client: HttpClient,
    /// `None`: requests go unsigned ([`AzureOptions::anonymous`]).
    credentials: Option<AzureCredentialProvider>,
    account: String,
    /// The blob service endpoint, without a trailing `/`.
    endpoint: String,
    container: String,
    name: String,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("name", &self.name)
            .finish()
    }
}

impl AzureStore {
    /// Resolves the account, endpoint and credentials (see [`AzureOptions`]); `url_account`
    /// is the account an `https://ACCOUNT.blob.core.windows.net/` location names.
    pub async fn connect(
        opts: &AzureOptions,
        url_account: Option<&str>,
        container: &str,
    ) -> Result<AzureStore> {
        let name = match url_account {
            Some(a) => format!("https://{a}.blob.core.windows.net/{container}"),
            None => format!("az://{container}"),
        };
        let explicit_cs = opts
            .connection_string
            .as_deref()
            .map(ConnectionString::parse)
            .transpose()?;
        let explicit_creds = opts.key.is_some() || opts.sas.is_some() || explicit_cs.is_some();
        // The provider's standard environment, used only where nothing explicit is given.
        let env_cs = if explicit_creds {
            None
        } else {
            env("AZURE_STORAGE_CONNECTION_STRING")
                .map(|s| ConnectionString::parse(&s))
                .transpose()?
        };
        let cs = explicit_cs.or(env_cs).unwrap_or_default();
        let account = url_account
            .map(str::to_string)
            .or_else(|| opts.account.clone())
            .or_else(|| cs.account.clone())
            .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
            .or_else(|| env("AZURE_STORAGE_ACCOUNT_NAME"))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::AccessDenied,
                    format!(
                        "{name}: no Azure storage account: give --src/dst-azure-account, a \
                         connection string, AZURE_STORAGE_ACCOUNT, or an \
                         https://ACCOUNT.blob.core.windows.net/ URL"
                    ),
                )
            })?;
        let key = opts.key.clone().or(cs.key.clone()).or_else(|| {
            (!explicit_creds && opts.sas.is_none())
                .then(|| env("AZURE_STORAGE_KEY").or_else(|| env("AZURE_STORAGE_ACCOUNT_KEY")))
                .flatten()
        });
        let sas = opts.sas.clone().or(cs.sas.clone()).or_else(|| {
            (!explicit_creds && key.is_none())
                .then(|| env("AZURE_STORAGE_SAS_TOKEN"))
                .flatten()
        });
        let endpoint = opts
            .endpoint
            .clone()
            .or(cs.blob_endpoint.clone())
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
            .trim_end_matches('/')
            .to_string();
        let credentials: Option<AzureCredentialProvider> = if opts.anonymous {
            None
        } else if let Some(key) = &key {
            let key = AzureAccessKey::try_new(key).map_err(|_| {
                Error::new(
                    ErrorKind::AccessDenied,
                    format!("{name}: the Azure account key is not valid base64 (check it)"),
                )
            })?;
            Some(Arc::new(StaticCredentialProvider::new(
                AzureCredential::AccessKey(key),
            )))
        } else if let Some(sas) = &sas {
            let pairs = split_sas(sas.trim_start_matches('?')).map_err(|_| {
                Error::new(
                    ErrorKind::AccessDenied,
                    format!("{name}: the SAS token is not a query string (check it)"),
                )
            })?;
            Some(Arc::new(StaticCredentialProvider::new(
                AzureCredential::SASToken(pairs),
            )))
        } else {
            // Entra ID: service principal, workload identity, managed identity, Azure CLI.
            let entra = MicrosoftAzureBuilder::from_env()
                .with_account(&account)
                .with_container_name(container)
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| {
                    Error::new(
                        ErrorKind::BadCredentials,
                        format!(
                            "{name}: no usable Azure credentials: {} (give {})",
                            transport::redact(&e.to_string()),
                            PROVIDER.credentials_hint
                        ),
                    )
                })?;
            Some(entra.credentials().clone())
        };
        Ok(AzureStore {
            client: transport::client()?,
            credentials,
            account,
            endpoint,
            container: container.to_string(),
            name,
        })
    }

    fn target(&self, key: &str) -> String {
        format!("{}/{key}", self.name)
    }

    /// A blob's URL. Keys with `.` or `..` segments are refused: URL parsing resolves them
    /// (percent-encoded or not) before the request is sent, so `a/../../b` would address
    /// the blob `b`, outside the destination prefix, and overwrite it. Keys with a `\` are
    /// refused too: Azure stores it as `/` (percent-encoded or not), so `a\b` would be the
    /// blob `a/b`, and `x\..\y` a dot segment once stored.
    fn blob_url(&self, container: &str, key: &str) -> Result<String> {
        let refuse = |why: &str| {
            Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "{}: key has {why}, which Azure cannot address (it would name another \
                     blob); refused: rename it at the source or leave it out with --exclude",
                    self.target(key)
                ),
            ))
        };
        if key.split('/').any(|s| s == "." || s == "..") {
            return refuse("a '.' or '..' segment");
        }
        if key.contains('\\') {
            return refuse("a '\\' (Azure stores it as '/')");
        }
        Ok(format!(
            "{}/{}/{}",
            self.endpoint,
            utf8_percent_encode(container, PATH),
            utf8_percent_encode(key, PATH)
        ))
    }

    fn container_url(&self) -> String {
        format!(
            "{}/{}",
            self.endpoint,
            utf8_percent_encode(&self.container, PATH)
        )
    }

    /// Sends a request signed with this side's credentials (Shared Key, SAS or bearer, by
    /// object_store's `AzureAuthorizer`). Every header is set before signing.
    async fn request(
        &self,
        method: Method,
        url: String,
        headers: &[(&str, String)],
        body: Bytes,
        target: &str,
        what: &str,
    ) -> Result<HttpResponse> {
        let mut b = http::Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        if method != Method::GET && method != Method::HEAD {
            b = b.header("content-length", body.len().to_string());
        }
        let mut req: HttpRequest = b
            .body(HttpRequestBody::from(body))
            .map_err(|e| Error::new(ErrorKind::Other, format!("{target}: {what}: {e}")))?;
        if let Some(credentials) = &self.credentials {
            let cred = credentials.get_credential().await.map_err(|e| {
                Error::new(
                    ErrorKind::BadCredentials,
                    format!(
                        "{target}: no usable Azure credentials: {} (give {})",
                        transport::redact(&e.to_string()),
                        PROVIDER.credentials_hint
                    ),
                )
            })?;
            AzureAuthorizer::new(&cred, &self.account)
                .try_authorize(&mut req)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::BadCredentials,
                        format!("{target}: {what}: cannot sign the request: {e}"),
                    )
                })?;
        }
        send(&self.client, req, target, what).await
    }

    async fn ok(&self, resp: HttpResponse, target: &str, what: &str) -> Result<HttpResponse> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let code = header(resp.headers(), "x-ms-error-code")
            .unwrap_or("")
            .to_string();
        let text = body(resp, target, what).await.unwrap_or_default();
        let message = quick_xml::de::from_reader::<_, ErrorBody>(text.as_ref())
            .ok()
            .and_then(|e| e.message)
            .unwrap_or_default();
        let unsigned = self.credentials.is_none();
        Err(status_error(
            PROVIDER, status, &code, &message, target, what, unsigned,
        ))
    }

    /// The SAS query (with `?`) to append to a copy source URL, when the credential is a SAS.
    async fn source_sas(&self) -> String {
        let Some(credentials) = &self.credentials else {
            return String::new();
        };
        match credentials.get_credential().await.as_deref() {
            Ok(AzureCredential::SASToken(pairs)) => {
                let q: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            utf8_percent_encode(k, QUERY),
                            utf8_percent_encode(v, QUERY)
                        )
                    })
                    .collect();
                format!("?{}", q.join("&"))
            }
            _ => String::new(),
        }
    }

    fn block_id(upload: &MultipartUpload, number: u32) -> String {
        // Same length for every block of a blob, as Azure requires.
        B64.encode(format!("{}-{number:05}", upload.upload_id))
    }

    /// The blobs under `prefix` and, when `by_level` (delimiter `/`), the sub-prefixes, in
    /// the order listed.
    fn list_pages<'a>(
        &'a self,
        prefix: &'a str,
        by_level: bool,
    ) -> BoxStream<'a, Result<BlobEntry>> {
        let target = self.target(prefix);
        futures::stream::try_unfold(
            (Some(None::<String>), target),
            move |(marker, target)| async move {
                let Some(marker) = marker else {
                    return Ok(None);
                };
                let mut url = format!(
                    "{}?restype=container&comp=list&maxresults=5000&prefix={}",
                    self.container_url(),
                    utf8_percent_encode(prefix, QUERY)
                );
                if by_level {
                    url.push_str("&delimiter=%2F");
                }
                if let Some(m) = &marker {
                    url.push_str(&format!("&marker={}", utf8_percent_encode(m, QUERY)));
                }
                let resp = self
                    .request(Method::GET, url, &[], Bytes::new(), &target, "list")
                    .await?;
                let resp = self.ok(resp, &target, "list").await?;
                let data = body(resp, &target, "list").await?;
                let page: ListResult = quick_xml::de::from_reader(data.as_ref()).map_err(|e| {
                    Error::new(
                        ErrorKind::Transient,
                        format!("{target}: list: unreadable answer: {e}"),
                    )
                })?;
                let next = page.next_marker.filter(|m| !m.is_empty()).map(Some);
                let mut items = page.blobs.map(|b| b.entries).unwrap_or_default();
                if by_level {
                    // Azurite answers a page's prefixes after its blobs; the order is by name.
                    items.sort_by_cached_key(BlobEntry::key);
                }
                Ok(Some((
                    futures::stream::iter(items.into_iter().map(Ok)),
                    (next, target),
                )))
            },
        )
        .try_flatten()
        .boxed()
    }

    /// The headers that give a blob being written `opts`' user metadata and content
    /// headers (a blob with no content type is served as `application/octet-stream`), as
    /// header values ([`header_value`], [`skyhaul_store::ContentHeaders::sendable`]).
    fn meta_headers(opts: &PutOptions, target: &str) -> Vec<(String, String)> {
        let h = opts.headers.sendable(target);
        let content_type = h
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let properties = [
            ("x-ms-blob-content-type", Some(content_type)),
            ("x-ms-blob-content-encoding", h.content_encoding.as_deref()),
            (
                "x-ms-blob-content-disposition",
                h.content_disposition.as_deref(),
            ),
            ("x-ms-blob-content-language", h.content_language.as_deref()),
            ("x-ms-blob-cache-control", h.cache_control.as_deref()),
            ("x-ms-access-tier", opts.storage_class.as_deref()),
        ];
        let properties = properties
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?.to_string())));
        opts.metadata_ignoring_case(target)
            .into_iter()
            .map(|(k, v)| {
                let name = format!("x-ms-meta-{}", encode_meta_name(k));
                (name, header_value(v).into_owned())
            })
            .chain(properties)
            .collect()
    }
}

/// Azure metadata names must be C# identifiers (letters, digits, `_`, not starting with a
/// digit). Other characters, and `_` itself, become `_xx` (hex), so every name round-trips:
/// `skyhaul-crc64nvme` is stored as `skyhaul_2dcrc64nvme`.
pub fn encode_meta_name(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit());
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The inverse of [`encode_meta_name`]; names that are not in that form come back as they
/// are (lower-cased by Azure's headers).
pub fn decode_meta_name(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| name.to_string())
}

fn decode_md5(b64: &str) -> Option<[u8; 16]> {
    B64.decode(b64.trim()).ok()?.try_into().ok()
}

/// The ETag skyhaul gives a blob: its Content-MD5 in hex, else Azure's ETag.
fn version_tag(md5: Option<[u8; 16]>, etag: Option<&str>) -> Option<String> {
    md5.map(hex::encode)
        .or_else(|| etag.map(|e| e.trim_matches('"').to_string()))
}

fn parse_time(t: &str) -> Option<std::time::SystemTime> {
    chrono::DateTime::parse_from_rfc2822(t)
        .ok()
        .map(std::time::SystemTime::from)
}

fn meta_from_headers(key: &str, h: &http::HeaderMap) -> ObjectMeta {
    let mut m = ObjectMeta::new(
        key,
        header(h, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    m.mtime = header(h, "last-modified").and_then(parse_time);
    m.etag = version_tag(
        header(h, "content-md5").and_then(decode_md5),
        header(h, "etag"),
    );
    m.metadata = prefixed_metadata(h, "x-ms-meta-", decode_meta_name);
    m.headers = Some(Box::new(content_headers(h)));
    m
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "Message")]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListResult {
    #[serde(rename = "Blobs")]
    blobs: Option<Blobs>,
    #[serde(rename = "NextMarker")]
    next_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Blobs {
    /// `Blob` and (with a delimiter) `BlobPrefix` elements, interleaved in key order.
    #[serde(rename = "$value", default)]
    entries: Vec<BlobEntry>,
}

#[derive(Debug, Deserialize)]
enum BlobEntry {
    Blob(BlobItem),
    BlobPrefix(BlobPrefix),
}

impl BlobEntry {
    fn key(&self) -> String {
        match self {
            BlobEntry::Blob(b) => b.key(),
            BlobEntry::BlobPrefix(p) => p.name.decoded(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct BlobPrefix {
    #[serde(rename = "Name")]
    name: BlobName,
}

#[derive(Debug, Deserialize)]
struct BlobItem {
    #[serde(rename = "Name")]
    name: BlobName,
    #[serde(rename = "Properties")]
    properties: BlobProperties,
}

/// `<Name Encoded="true">` holds a percent-encoded name (for characters XML cannot carry).
#[derive(Debug, Deserialize)]
struct BlobName {
    #[serde(rename = "@Encoded", default)]
    encoded: Option<bool>,
    #[serde(rename = "$text", default)]
    text: String,
}

#[derive(Debug, Deserialize)]
struct BlobProperties {
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Etag")]
    etag: Option<String>,
    #[serde(rename = "Content-Length")]
    content_length: Option<u64>,
    #[serde(rename = "Content-MD5")]
    content_md5: Option<String>,
}

impl BlobName {
    fn decoded(&self) -> String {
        if self.encoded == Some(true) {
            percent_encoding::percent_decode_str(&self.text)
                .decode_utf8_lossy()
                .into_owned()
        } else {
            self.text.clone()
        }
    }
}

impl BlobItem {
    fn key(&self) -> String {
        self.name.decoded()
    }

    fn meta(&self) -> ObjectMeta {
        let p = &self.properties;
        let mut m = ObjectMeta::new(self.key(), p.content_length.unwrap_or(0));
        m.mtime = p.last_modified.as_deref().and_then(parse_time);
        m.etag = version_tag(
            p.content_md5.as_deref().and_then(decode_md5),
            p.etag.as_deref(),
        );
        m
    }
}

fn changed(target: &str) -> Error {
    Error::new(
        ErrorKind::SourceChanged,
        format!("{target}: object changed while it was being copied"),
    )
}

fn md5_of_tag(tag: Option<&str>) -> Option<[u8; 16]> {
    let t = tag?;
    (t.len() == 32)
        .then(|| hex::decode(t).ok()?.try_into().ok())
        .flatten()
}

#[async_trait::async_trait]
impl Store for AzureStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> Limits {
        Limits {
            min_part_size: 1 << 20,
            max_part_size: 4000 << 20,
            max_parts: 50_000,
            max_single_put: 5000 << 20,
        }
    }

    fn keeps_headers(&self) -> bool {
        true
    }

    /// ETags are content MD5s where the blob has one (see the module documentation).
    fn etags_are_md5(&self) -> bool {
        true
    }

    async fn preflight(&self, _for_write: bool) -> Result<()> {
        let url = format!(
            "{}?restype=container&comp=list&maxresults=1",
            self.container_url()
        );
        let resp = self
            .request(Method::GET, url, &[], Bytes::new(), &self.name, "list")
            .await?;
        self.ok(resp, &self.name, "list").await.map(|_| ())
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let mut order = InOrder::new(self.target(prefix));
        self.list_pages(prefix, false)
            .try_filter_map(move |e| {
                let BlobEntry::Blob(b) = e else {
                    return futures::future::ready(Ok(None));
                };
                let key = b.key();
                let skip = key.ends_with('/') || start_after.is_some_and(|s| key.as_str() <= s);
                futures::future::ready(match skip {
                    true => Ok(None),
                    false => order.check(&key).map(|()| Some(b.meta())),
                })
            })
            .boxed()
    }

    fn lists_by_level(&self) -> bool {
        true
    }

    fn list_level<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<Entry>> {
        let mut order = InOrder::new(self.target(prefix));
        self.list_pages(prefix, true)
            .try_filter_map(move |e| {
                let entry = match e {
                    BlobEntry::Blob(b) if !b.key().ends_with('/') => Entry::Object(b.meta()),
                    BlobEntry::Blob(_) => return futures::future::ready(Ok(None)),
                    BlobEntry::BlobPrefix(p) => Entry::Prefix(p.name.decoded()),
                };
                // Azure has no "start after": earlier entries are skipped here.
                if start_after.is_some_and(|s| entry.key() <= s) {
                    return futures::future::ready(Ok(None));
                }
                futures::future::ready(order.check(entry.key()).map(|()| Some(entry)))
            })
            .boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let target = self.target(key);
        let resp = self
            .request(
                Method::HEAD,
                self.blob_url(&self.container, key)?,
                &[],
                Bytes::new(),
                &target,
                "head",
            )
            .await?;
        match self.ok(resp, &target, "head").await {
            Ok(r) => Ok(Some(meta_from_headers(key, r.headers()))),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        expect: Option<&ObjectMeta>,
    ) -> Result<Fetched> {
        let target = self.target(key);
        let mut headers = Vec::new();
        if let Some(r) = &range {
            if r.is_empty() {
                return Ok(Fetched::default());
            }
            headers.push(("x-ms-range", format!("bytes={}-{}", r.start, r.end - 1)));
        }
        let expected_md5 = expect.and_then(|e| md5_of_tag(e.etag.as_deref()));
        if let Some(tag) = expect.and_then(|e| e.etag.as_deref()) {
            if expected_md5.is_none() {
                headers.push(("if-match", format!("\"{tag}\"")));
            }
        }
        let resp = self
            .request(
                Method::GET,
                self.blob_url(&self.container, key)?,
                &headers,
                Bytes::new(),
                &target,
                "get",
            )
            .await?;
        let resp = self.ok(resp, &target, "get").await?;
        let h = resp.headers();
        let ranged_reply = resp.status() == StatusCode::PARTIAL_CONTENT;
        let total = header(h, "content-range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok())
            .or_else(|| {
                (!ranged_reply)
                    .then(|| header(h, "content-length").and_then(|v| v.parse().ok()))
                    .flatten()
            });
        // The whole blob's MD5: x-ms-blob-content-md5 on ranged reads, Content-MD5 otherwise.
        let md5 = header(h, "x-ms-blob-content-md5")
            .or_else(|| (!ranged_reply).then(|| header(h, "content-md5")).flatten())
            .and_then(decode_md5);
        let version = version_tag(md5, header(h, "etag"));
        let (headers, metadata) = (
            content_headers(h),
            prefixed_metadata(h, "x-ms-meta-", decode_meta_name),
        );
        if let Some(exp) = expect {
            if total.is_some_and(|t| t != exp.size)
                || matches!((expected_md5, md5), (Some(a), Some(b)) if a != b)
            {
                return Err(changed(&target));
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
        let target = self.target(key);
        let mut headers: Vec<(String, String)> = vec![
            ("x-ms-blob-type".into(), "BlockBlob".into()),
            ("content-type".into(), "application/octet-stream".into()),
        ];
        if let Some(m) = body.md5 {
            headers.push(("content-md5".into(), B64.encode(m)));
        }
        headers.extend(Self::meta_headers(opts, &target));
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let resp = self
            .request(
                Method::PUT,
                self.blob_url(&self.container, key)?,
                &headers,
                body.data,
                &target,
                "put",
            )
            .await?;
        let resp = self.ok(resp, &target, "put").await?;
        let stored = header(resp.headers(), "content-md5").and_then(decode_md5);
        if let (Some(sent), Some(stored)) = (body.md5, stored) {
            if sent != stored {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("{target}: put: the server stored different bytes than were sent"),
                ));
            }
        }
        Ok(Written {
            etag: version_tag(stored, header(resp.headers(), "etag")),
            opaque_etag: false,
        })
    }

    async fn create_multipart(&self, key: &str, _opts: &PutOptions) -> Result<MultipartUpload> {
        // Nothing is sent until the first block; a key Azure cannot address fails here.
        self.blob_url(&self.container, key)?;
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
        let target = self.target(&upload.key);
        let what = format!("upload part {}", part.number);
        let url = format!(
            "{}?comp=block&blockid={}",
            self.blob_url(&self.container, &upload.key)?,
            utf8_percent_encode(&Self::block_id(upload, part.number), QUERY)
        );
        let mut headers = Vec::new();
        if let Some(m) = body.md5 {
            headers.push(("content-md5", B64.encode(m)));
        }
        let resp = self
            .request(Method::PUT, url, &headers, body.data, &target, &what)
            .await?;
        let resp = self.ok(resp, &target, &what).await?;
        let stored = header(resp.headers(), "content-md5").and_then(decode_md5);
        if let (Some(sent), Some(stored)) = (body.md5, stored) {
            if sent != stored {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("{target}: {what}: the server stored different bytes than were sent"),
                ));
            }
        }
        Ok(CompletedPart {
            number: part.number,
            len: part.len,
            etag: stored.map(hex::encode).unwrap_or_default(),
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
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for p in parts {
            xml.push_str(&format!(
                "<Latest>{}</Latest>",
                Self::block_id(upload, p.number)
            ));
        }
        xml.push_str("</BlockList>");
        let mut headers: Vec<(String, String)> =
            vec![("content-type".into(), "application/xml".into())];
        headers.extend(Self::meta_headers(opts, &target));
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let url = format!(
            "{}?comp=blocklist",
            self.blob_url(&self.container, &upload.key)?
        );
        let resp = self
            .request(
                Method::PUT,
                url,
                &headers,
                Bytes::from(xml),
                &target,
                "complete multipart upload",
            )
            .await?;
        let resp = self.ok(resp, &target, "complete multipart upload").await?;
        Ok(Written {
            etag: version_tag(None, header(resp.headers(), "etag")),
            opaque_etag: false,
        })
    }

    async fn abort_multipart(&self, _upload: &MultipartUpload) -> Result<()> {
        // Uncommitted blocks cannot be deleted without deleting the blob (which may be an
        // older committed version); Azure discards them after a week, unseen.
        Ok(())
    }

    /// Creating an upload leaves nothing on the server here (parts appear only once they are
    /// sent, and the engine journals the upload before that), so an upload whose id was lost
    /// has nothing to abort.
    async fn list_uploads(&self, _prefix: &str) -> Result<Vec<MultipartUpload>> {
        Ok(Vec::new())
    }

    /// The account, and whether requests are signed: a copy is asked of the destination's
    /// credentials, and an unsigned side is read unsigned, so through this machine.
    fn copy_domain(&self) -> Option<String> {
        let unsigned = if self.credentials.is_none() {
            "|unsigned"
        } else {
            ""
        };
        Some(format!(
            "azure|{}|{}{unsigned}",
            self.endpoint, self.account
        ))
    }

    fn place(&self) -> Option<String> {
        let endpoint = skyhaul_store::endpoint_place(&self.endpoint);
        Some(format!("azure|{endpoint}|{}", self.account))
    }

    fn container(&self) -> &str {
        &self.container
    }

    /// The access tiers of block blobs. A name Azure does not have fails only at the end
    /// of a striped upload (Put Block List), after every block was sent.
    fn storage_classes(&self) -> Option<&'static [&'static str]> {
        Some(&["Hot", "Cool", "Cold", "Archive"])
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
        let what = format!("server-side copy from {src_container}/{}", src.key);
        let source = format!(
            "{}{}",
            self.blob_url(src_container, &src.key)?,
            self.source_sas().await
        );
        let mut headers = vec![("x-ms-copy-source", source)];
        // Copy Blob keeps the source's metadata and properties; a tier given is set.
        if let Some(tier) = &opts.storage_class {
            headers.push(("x-ms-access-tier", tier.clone()));
        }
        let src_md5 = md5_of_tag(src.etag.as_deref());
        if let (None, Some(tag)) = (src_md5, src.etag.as_deref()) {
            headers.push(("x-ms-source-if-match", format!("\"{tag}\"")));
        }
        let resp = self
            .request(
                Method::PUT,
                self.blob_url(&self.container, dst_key)?,
                &headers,
                Bytes::new(),
                &target,
                &what,
            )
            .await?;
        let resp = self.ok(resp, &target, &what).await?;
        let mut status = header(resp.headers(), "x-ms-copy-status")
            .unwrap_or("success")
            .to_string();
        // Copies within an account are usually done at once; large ones may be pending.
        let mut wait = Duration::from_millis(100);
        while status == "pending" {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            let r = self
                .request(
                    Method::HEAD,
                    self.blob_url(&self.container, dst_key)?,
                    &[],
                    Bytes::new(),
                    &target,
                    &what,
                )
                .await?;
            let r = self.ok(r, &target, &what).await?;
            status = header(r.headers(), "x-ms-copy-status")
                .unwrap_or("success")
                .to_string();
        }
        if status != "success" {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("{target}: {what}: copy {status}"),
            ));
        }
        // The copy is of the listed version, or it is a changed source.
        let meta = self.head(dst_key).await?.ok_or_else(|| changed(&target))?;
        if meta.size != src.size || (src_md5.is_some() && meta.etag != src.etag) {
            return Err(changed(&target));
        }
        Ok(Written::default())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let target = self.target(key);
        let resp = self
            .request(
                Method::DELETE,
                self.blob_url(&self.container, key)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_round_trip() {
        for n in [
            "skyhaul-crc64nvme",
            "plain",
            "with_underscore",
            "9lives",
            "a.b",
        ] {
            let e = encode_meta_name(n);
            assert!(
                e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !e.as_bytes()[0].is_ascii_digit(),
                "{e}"
            );
            assert_eq!(decode_meta_name(&e), n);
        }
        assert_eq!(encode_meta_name("skyhaul-crc64nvme"), "skyhaul_2dcrc64nvme");
    }

    #[test]
    fn connection_strings() {
        let cs = ConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5==;\
             BlobEndpoint=http://127.0.0.1:10000/acct;",
        )
        .unwrap();
        assert_eq!(cs.account.as_deref(), Some("acct"));
        assert_eq!(cs.key.as_deref(), Some("a2V5=="));
        assert_eq!(
            cs.blob_endpoint.as_deref(),
            Some("http://127.0.0.1:10000/acct")
        );
        let cs =
            ConnectionString::parse("AccountName=x;SharedAccessSignature=sv=1&sig=abc").unwrap();
        assert_eq!(cs.sas.as_deref(), Some("sv=1&sig=abc"));
        assert_eq!(
            cs.blob_endpoint.as_deref(),
            Some("https://x.blob.core.windows.net")
        );
        let dev = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.account.as_deref(), Some(DEV_ACCOUNT));
        assert!(ConnectionString::parse("garbage").is_err());
    }

    #[test]
    fn options_never_print_secrets() {
        let o = AzureOptions {
            key: Some("SECRETKEY".into()),
            sas: Some("sig=SECRETSIG".into()),
            connection_string: Some("AccountKey=SECRETCS".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("SECRET"), "{s}");
    }
}
