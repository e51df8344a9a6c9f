//! One ListObjectsV2 page, keys decoded.
//!
//! S3 keys may hold characters XML 1.0 cannot carry (control characters such as `\x01`;
//! skyhaul itself writes such a key from a file name). A page holding one does not parse,
//! which made the whole prefix unlistable. S3 can instead send keys URL-encoded
//! (`encoding-type=url`), but that is asked only to read such a page again: s3s-fs echoes
//! `EncodingType=url` yet sends its keys raw, and decoding those would turn a `+` in a key
//! into a space. A page that parses as sent is never decoded.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::list_objects_v2::builders::ListObjectsV2FluentBuilder;
use aws_sdk_s3::operation::list_objects_v2::{ListObjectsV2Error, ListObjectsV2Output};
use aws_sdk_s3::types::EncodingType;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use percent_encoding::percent_decode_str;
use skyhaul_store::{Entry, ObjectMeta};

/// A page's objects and common prefixes in key order, and the token of the next page.
pub(crate) struct Page {
    pub items: Vec<Entry>,
    pub next: Option<String>,
}

pub(crate) enum Failure {
    /// The request failed as any other would.
    Request(Box<SdkError<ListObjectsV2Error, HttpResponse>>),
    /// The server answered, but neither its page nor the URL-encoded one could be read.
    Unreadable,
    /// A URL-encoded key did not decode to UTF-8 text.
    BadKey(String),
}

/// Fetches the page `req` asks for, a second time URL-encoded if the first did not parse.
pub(crate) async fn page(req: ListObjectsV2FluentBuilder) -> Result<Page, Failure> {
    match req.clone().send().await {
        Ok(out) => read(out, false),
        Err(e) if !holds_what_xml_cannot_carry(&e) => Err(Failure::Request(Box::new(e))),
        Err(_) => match req.encoding_type(EncodingType::Url).send().await {
            Ok(out) => {
                let encoded = out.encoding_type() == Some(&EncodingType::Url);
                read(out, encoded)
            }
            Err(e) if holds_what_xml_cannot_carry(&e) => Err(Failure::Unreadable),
            Err(e) => Err(Failure::Request(Box::new(e))),
        },
    }
}

/// A successful answer that did not parse (the SDK reports it as an unhandled service
/// error, or as a response error) because its body holds a control character. Only then is
/// the page asked URL-encoded: a body cut short on the way fails to parse too, and is a
/// request to retry as any other; asked URL-encoded of s3s-fs, it would come back raw and be
/// decoded (`a+b` read as `a b`).
fn holds_what_xml_cannot_carry(e: &SdkError<ListObjectsV2Error, HttpResponse>) -> bool {
    let Some(raw) = e.raw_response().filter(|r| r.status().is_success()) else {
        return false;
    };
    matches!(e, SdkError::ServiceError(_) | SdkError::ResponseError(_))
        && raw
            .body()
            .bytes()
            .is_some_and(|b| b.iter().any(|&c| c < 0x20 && !b"\t\n\r".contains(&c)))
}

fn read(out: ListObjectsV2Output, encoded: bool) -> Result<Page, Failure> {
    let key = |k: &str| -> Result<String, Failure> {
        if !encoded {
            return Ok(k.to_string());
        }
        // AWS encodes a space as `+` and a `+` as `%2B` (botocore decodes with
        // `unquote_plus`); moto as `%20` and `%2B`. Both read back so.
        percent_decode_str(&k.replace('+', " "))
            .decode_utf8()
            .map(|k| k.into_owned())
            .map_err(|_| Failure::BadKey(k.to_string()))
    };
    let mut items = Vec::new();
    for o in out.contents() {
        let Some(name) = o.key() else { continue };
        let name = key(name)?;
        // A key ending in `/` is a console's "folder", not an object: no file system can
        // hold it, and no store lists one (a conformance check).
        if name.ends_with('/') {
            continue;
        }
        let mut m = ObjectMeta::new(name, o.size().unwrap_or(0).max(0) as u64);
        m.mtime = crate::store::mtime(o.last_modified());
        m.etag = crate::store::etag(o.e_tag());
        items.push(Entry::Object(m));
    }
    for p in out.common_prefixes() {
        if let Some(p) = p.prefix() {
            items.push(Entry::Prefix(key(p)?));
        }
    }
    // A page holds objects and prefixes as two sorted lists of one key order.
    items.sort_by(|a, b| a.key().cmp(b.key()));
    let next = out
        .next_continuation_token()
        .filter(|_| out.is_truncated().unwrap_or(false))
        .map(str::to_string);
    Ok(Page { items, next })
}
