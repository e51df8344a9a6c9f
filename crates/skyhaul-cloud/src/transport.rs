//! The HTTP plumbing both backends share: one client per store, sending a request, reading
//! a body, and turning failures into the [`ErrorKind`]s the engine acts on.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    ReqwestConnector,
};
use skyhaul_store::{cause_chain, ContentHeaders, Error, ErrorKind, Result, NOT_PUBLIC};
use std::collections::BTreeMap;
use std::time::Duration;

/// A client for one store. The engine retries (and counts retries) uniformly for every
/// backend, so this client never retries by itself. A stalled connection times out; a
/// long transfer does not (a multi-GiB part on a slow link may take many minutes).
pub(crate) fn client() -> Result<HttpClient> {
    let options = ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout_disabled()
        .with_read_timeout(Duration::from_secs(120))
        .with_pool_max_idle_per_host(256);
    ReqwestConnector::default()
        .connect(&options)
        .map_err(|e| Error::new(ErrorKind::Other, format!("HTTP client: {e}")))
}

/// How a provider names its containers in messages and hints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Provider {
    /// "bucket" or "container".
    pub container_word: &'static str,
    /// Where credentials come from, for the access-denied hint.
    pub credentials_hint: &'static str,
}

/// A response, or the error it amounts to. `target` names the store and key (never a URL,
/// which may carry a SAS token).
pub(crate) async fn send(
    client: &HttpClient,
    req: HttpRequest,
    target: &str,
    what: &str,
) -> Result<HttpResponse> {
    client
        .execute(req)
        .await
        .map_err(|e| transport_error(&e, target, what))
}

/// A failure before any HTTP status arrived.
pub(crate) fn transport_error(e: &HttpError, target: &str, what: &str) -> Error {
    let text = redact(&cause_chain(e));
    match e.kind() {
        HttpErrorKind::Connect => Error::new(
            ErrorKind::Unreachable,
            format!(
                "{target}: {what}: cannot reach the endpoint: {text} \
                 (is the endpoint URL right and the server up?)"
            ),
        ),
        HttpErrorKind::Timeout => {
            Error::new(ErrorKind::Transient, format!("{target}: {what}: timed out"))
        }
        _ => Error::new(
            ErrorKind::Transient,
            format!("{target}: {what}: connection failed: {text}"),
        ),
    }
}

/// Reads a whole response body; a body cut short is worth retrying.
pub(crate) async fn body(resp: HttpResponse, target: &str, what: &str) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    let mut stream = resp.into_body().bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!(
                    "{target}: {what}: body interrupted: {}",
                    redact(&cause_chain(&e))
                ),
            )
        })?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The error an unsuccessful status means. `code` is the provider's error code (Azure's
/// `x-ms-error-code`, GCS's `reason`) and `message` its text, both possibly empty.
pub(crate) fn status_error(
    provider: Provider,
    status: StatusCode,
    code: &str,
    message: &str,
    target: &str,
    what: &str,
    unsigned: bool,
) -> Error {
    let container_missing = matches!(code, "ContainerNotFound" | "BucketNotFound")
        || message.contains("bucket does not exist")
        || message.contains("Bucket not found")
        || message.contains("bucket not found");
    let (kind, hint) = match status.as_u16() {
        // Azure is said to answer an unsigned request for a private container as for a
        // missing one.
        404 if container_missing => (
            ErrorKind::BucketNotFound,
            format!(
                " (check the {0} name, the account and the endpoint{1})",
                provider.container_word,
                match unsigned {
                    true => format!(
                        "; a private {} looks missing to a request sent unsigned, as \
                         --src-anonymous sends it",
                        provider.container_word
                    ),
                    false => String::new(),
                }
            ),
        ),
        404 => (ErrorKind::NotFound, String::new()),
        // 401, and Azure's AuthenticationFailed (a wrong key or SAS; Azurite says
        // AuthorizationFailure, with the same text), refuse the credentials themselves;
        // other 403s refuse a permission.
        401 | 403
            if status.as_u16() == 401
                || code == "AuthenticationFailed"
                || (code == "AuthorizationFailure"
                    && message.starts_with("Server failed to authenticate the request")) =>
        {
            (
                ErrorKind::BadCredentials,
                format!(
                    " (the store does not accept these credentials: {})",
                    provider.credentials_hint
                ),
            )
        }
        403 => (
            ErrorKind::AccessDenied,
            format!(
                " (check the credentials and their permissions: {})",
                provider.credentials_hint
            ),
        ),
        // Azure's answer to an unsigned request where the account allows no public access
        // (the default for new accounts): a denial, not a conflict.
        _ if code == "PublicAccessNotPermitted" => (
            ErrorKind::AccessDenied,
            " (this storage account allows no public access)".to_string(),
        ),
        412 => (
            ErrorKind::SourceChanged,
            " (the object changed while it was being copied)".to_string(),
        ),
        409 => (ErrorKind::Conflict, String::new()),
        429 | 503 => (ErrorKind::Throttled, String::new()),
        408 | 500..=599 => (ErrorKind::Transient, String::new()),
        // Checksum mismatches (Azure Md5Mismatch, GCS "Provided MD5 hash ... doesn't match")
        // are bodies corrupted on the way: worth sending again.
        400 if code.contains("Md5Mismatch") || message.contains("hash") => {
            (ErrorKind::Corrupt, String::new())
        }
        _ => (ErrorKind::Other, String::new()),
    };
    // Nothing was signed: a refusal is of anyone's access, not of credentials.
    let (kind, hint) = match kind {
        ErrorKind::AccessDenied | ErrorKind::BadCredentials if unsigned => {
            (ErrorKind::AccessDenied, NOT_PUBLIC.to_string())
        }
        _ => (kind, hint),
    };
    let detail = match (code.is_empty(), message.is_empty()) {
        (true, true) => format!("HTTP {}", status.as_u16()),
        (true, false) => format!("HTTP {}: {}", status.as_u16(), first_line(message)),
        (false, true) => code.to_string(),
        (false, false) => format!("{code}: {}", first_line(message)),
    };
    Error::new(kind, format!("{target}: {what}: {}{hint}", redact(&detail)))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// A header's value as text.
pub(crate) fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The content headers an object was served with (a whole-object read's, or a HEAD's). As
/// UTF-8: GCS keeps any (`attachment; filename="résumé.pdf"`) and sends it raw, which
/// [`header`] (visible ASCII only) would drop without a word. A destination that takes
/// headers says what it leaves out ([`ContentHeaders::sendable`]).
pub(crate) fn content_headers(h: &HeaderMap) -> ContentHeaders {
    let get = |name| {
        let value = h.get(name)?;
        std::str::from_utf8(value.as_bytes())
            .ok()
            .map(str::to_string)
    };
    ContentHeaders {
        content_type: get("content-type"),
        content_encoding: get("content-encoding"),
        content_disposition: get("content-disposition"),
        content_language: get("content-language"),
        cache_control: get("cache-control"),
    }
}

/// The user metadata in headers named `prefix` + name, each name as `decode` gives it.
pub(crate) fn prefixed_metadata(
    h: &HeaderMap,
    prefix: &str,
    decode: impl Fn(&str) -> String,
) -> BTreeMap<String, String> {
    h.iter()
        .filter_map(|(k, v)| {
            let name = decode(k.as_str().strip_prefix(prefix)?);
            // GCS keeps any UTF-8 in metadata values and sends it raw in these headers,
            // which `to_str` (visible ASCII only) would refuse.
            match std::str::from_utf8(v.as_bytes()) {
                Ok(value) => Some((name, value.to_string())),
                Err(_) => {
                    tracing::warn!("metadata {name}: a value that is not UTF-8 is left out");
                    None
                }
            }
        })
        .collect()
}

/// Cuts the query string off every URL in `text`: Azure SAS tokens travel in the query, and
/// transport errors print the URL they failed on. Secrets never reach a message or a log.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_query = false;
    for c in text.chars() {
        if in_query {
            if c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ',') {
                in_query = false;
                out.push(c);
            }
            continue;
        }
        if c == '?' {
            in_query = true;
            out.push_str("?…");
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_values_keep_their_utf8() {
        let mut h = HeaderMap::new();
        let raw = |b: &[u8]| http::HeaderValue::from_bytes(b).unwrap();
        h.insert("x-goog-meta-nom", raw("café ☃".as_bytes()));
        h.insert("x-goog-meta-ok", raw(b"plain"));
        h.insert("x-goog-meta-latin1", raw(b"caf\xe9"));
        h.insert("content-type", raw(b"text/plain"));
        let m = prefixed_metadata(&h, "x-goog-meta-", str::to_string);
        let want = [("nom", "café ☃"), ("ok", "plain")];
        let want: BTreeMap<String, String> =
            want.map(|(k, v)| (k.to_string(), v.to_string())).into();
        assert_eq!(m, want, "not UTF-8: left out");
    }

    #[test]
    fn redact_drops_query_strings() {
        let t = "error sending request for url (http://h:1/c/b?sv=2022&sig=SECRET%2B) and ?x=1";
        let r = redact(t);
        assert!(!r.contains("SECRET") && !r.contains("x=1"), "{r}");
        assert!(r.contains("http://h:1/c/b?…)"), "{r}");
    }

    #[test]
    fn statuses_map_to_kinds() {
        let p = Provider {
            container_word: "bucket",
            credentials_hint: "x",
        };
        let error = |s: u16, code: &str, msg: &str, unsigned: bool| {
            let status = StatusCode::from_u16(s).unwrap();
            status_error(p, status, code, msg, "t", "w", unsigned)
        };
        let kind = |s: u16, code: &str, msg: &str| error(s, code, msg, false).kind;
        assert_eq!(
            kind(404, "ContainerNotFound", ""),
            ErrorKind::BucketNotFound
        );
        assert_eq!(
            kind(404, "", "The specified bucket does not exist."),
            ErrorKind::BucketNotFound
        );
        assert_eq!(kind(404, "BlobNotFound", ""), ErrorKind::NotFound);
        assert_eq!(
            kind(403, "AuthenticationFailed", ""),
            ErrorKind::BadCredentials
        );
        assert_eq!(
            kind(403, "AuthorizationPermissionMismatch", ""),
            ErrorKind::AccessDenied
        );
        assert_eq!(kind(401, "", ""), ErrorKind::BadCredentials);
        assert_eq!(
            kind(
                403,
                "AuthorizationFailure",
                "Server failed to authenticate the request. Make sure the value of the \
                 Authorization header is formed correctly including the signature."
            ),
            ErrorKind::BadCredentials
        );
        assert_eq!(
            kind(
                403,
                "AuthorizationFailure",
                "This request is not authorized to perform this operation."
            ),
            ErrorKind::AccessDenied
        );
        assert_eq!(kind(412, "ConditionNotMet", ""), ErrorKind::SourceChanged);
        assert_eq!(kind(503, "ServerBusy", ""), ErrorKind::Throttled);
        assert_eq!(kind(429, "", ""), ErrorKind::Throttled);
        assert_eq!(kind(500, "", ""), ErrorKind::Transient);
        assert_eq!(kind(400, "Md5Mismatch", ""), ErrorKind::Corrupt);
        assert_eq!(kind(400, "InvalidHeaderValue", ""), ErrorKind::Other);

        // Unsigned, a refusal is of anyone's access: the thing is not public.
        let unsigned = |s: u16, code: &str, msg: &str| error(s, code, msg, true);
        for (s, code) in [(401, ""), (403, "AuthorizationFailure"), (403, "")] {
            let e = unsigned(s, code, "Server failed to authenticate the request.");
            assert_eq!(e.kind, ErrorKind::AccessDenied, "{s} {code}");
            assert!(
                e.message.contains("not public") && !e.message.contains(": x"),
                "{e}"
            );
        }
        assert_eq!(unsigned(404, "BlobNotFound", "").kind, ErrorKind::NotFound);
        let e = unsigned(404, "ContainerNotFound", "");
        assert_eq!(e.kind, ErrorKind::BucketNotFound);
        assert!(e.message.contains("--src-anonymous"), "{e}");
        let e = unsigned(
            409,
            "PublicAccessNotPermitted",
            "Public access is not permitted.",
        );
        assert!(
            e.kind == ErrorKind::AccessDenied && e.message.contains("not public"),
            "{e}"
        );
    }
}
