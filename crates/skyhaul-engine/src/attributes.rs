//! What an object keeps besides its bytes, carried from the source to the destination: its
//! content headers (`Content-Type` above all: a bucket migrated without it serves every
//! page and image as a download) and its user metadata.
//!
//! A whole object's read carries them (S3, GCS and Azure answer a GET with them); a large
//! object's are taken from the HEAD made before its upload is created, since that is when
//! a multipart upload is given them. A server-side copy keeps them by itself.

use mime_guess::MimeGuess;
use skyhaul_store::{ContentHeaders, PutOptions, CRC_METADATA};
use std::collections::BTreeMap;

/// Gives `put` the content headers and user metadata the source's read or HEAD reported for
/// the object at `key`. skyhaul's own CRC entry is left out: it is set from the bytes read,
/// where they are known before the write. A source without a `Content-Type` (a file) gets
/// one guessed from the key's extension, as the AWS CLI, rclone and s5cmd do; an unknown
/// extension gets none, and the store's default applies.
pub(crate) fn carry(
    put: &mut PutOptions,
    key: &str,
    headers: &ContentHeaders,
    metadata: &BTreeMap<String, String>,
) {
    put.headers = headers.clone();
    if put.headers.content_type.is_none() {
        put.headers.content_type = MimeGuess::from_path(key).first_raw().map(str::to_string);
    }
    for (name, value) in metadata {
        if name != CRC_METADATA {
            put.metadata
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_metadata_are_carried_but_not_the_crc() {
        let mut put = PutOptions::default();
        let headers = ContentHeaders {
            content_type: Some("text/html; charset=utf-8".into()),
            cache_control: Some("max-age=60".into()),
            ..Default::default()
        };
        let metadata = BTreeMap::from([
            ("owner".to_string(), "ml-team".to_string()),
            (CRC_METADATA.to_string(), "ffffffffffffffff".to_string()),
        ]);
        carry(&mut put, "site/index.json", &headers, &metadata);
        assert_eq!(put.headers, headers, "the source's type wins over a guess");
        assert_eq!(put.metadata["owner"], "ml-team");
        assert_eq!(
            put.crc64nvme(),
            None,
            "the source's CRC entry is not carried"
        );
    }

    #[test]
    fn a_missing_content_type_is_guessed_from_the_extension() {
        let guess = |key: &str| {
            let mut put = PutOptions::default();
            carry(&mut put, key, &ContentHeaders::default(), &BTreeMap::new());
            put.headers.content_type
        };
        assert_eq!(guess("a/b/page.html").as_deref(), Some("text/html"));
        assert_eq!(
            guess("data/train.JSON").as_deref(),
            Some("application/json")
        );
        assert_eq!(guess("img/cat.png").as_deref(), Some("image/png"));
        assert_eq!(guess("shard-00001"), None);
    }
}
