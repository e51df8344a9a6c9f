use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use skyhaul_store::{cause_chain, Error, ErrorKind, BAD_BUCKET_NAME, BUCKET_IN, NOT_PUBLIC};

/// Maps an SDK error to the kind the engine acts on, with `target` (store and key) and a
/// hint in the message; `unsigned` says the request carried no credentials, so a refusal
/// is of anyone's access. SDK errors carry endpoint URLs but never credentials.
pub(crate) fn map_err<E>(
    err: SdkError<E, HttpResponse>,
    target: &str,
    what: &str,
    unsigned: bool,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::DispatchFailure(d) => {
            // A connection nothing answered (a firewall that drops, a host that is down or
            // cut off) is an endpoint that cannot be reached, as a refused one is: a first
            // contact gives up on it quickly, and the exit code says so (5).
            let no_connection = cause_chain(&err).contains("connect timeout");
            let kind = if d.is_timeout() && !no_connection {
                ErrorKind::Transient
            } else {
                ErrorKind::Unreachable
            };
            // Another timeout: no answer in time to a request (a busy or hung server);
            // retried as transient.
            let (failed, hint) = if kind == ErrorKind::Unreachable {
                (
                    "cannot reach the endpoint",
                    " (is the endpoint URL right, the server up, and the way to it open?)",
                )
            } else {
                ("no answer in time", "")
            };
            Error::new(
                kind,
                format!("{target}: {what}: {failed}: {}{hint}", cause_chain(&err)),
            )
        }
        SdkError::TimeoutError(_) => {
            Error::new(ErrorKind::Transient, format!("{target}: {what}: timed out"))
        }
        SdkError::ResponseError(_) => Error::new(
            ErrorKind::Transient,
            format!("{target}: {what}: bad response: {}", cause_chain(&err)),
        ),
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            let (mut kind, hint) = classify(&code, status);
            let mut hint = hint.to_string();
            if unsigned && matches!(kind, ErrorKind::AccessDenied | ErrorKind::BadCredentials) {
                (kind, hint) = (ErrorKind::AccessDenied, NOT_PUBLIC.to_string());
            }
            // AWS names the bucket's region in a header of the redirect.
            let region = err
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"));
            if let (Some(region), true) = (region, hint == IN_ANOTHER_REGION) {
                hint = format!("{BUCKET_IN}region {region})");
            }
            // Every S3 error but a HEAD's has a body with a code: a request refused without
            // one was not refused by S3 (a 5xx may be a proxy's, on the way to S3).
            let refused = status.is_some_and(|s| (400..500).contains(&s));
            if code.is_empty() && refused && what != "head" && hint.is_empty() {
                hint =
                    " (the answer is not S3's: check that the endpoint is an S3 endpoint)".into();
            }
            let detail = match (code.is_empty(), message.is_empty()) {
                (true, _) => format!("HTTP {}", status.unwrap_or(0)),
                (false, true) => code,
                (false, false) => format!("{code}: {message}"),
            };
            Error::new(kind, format!("{target}: {what}: {detail}{hint}"))
        }
        _ => Error::new(
            ErrorKind::Other,
            format!("{target}: {what}: {}", cause_chain(&err)),
        ),
    }
}

/// The hint for a bucket in another region, when the answer does not say which.
/// [`BUCKET_IN`] when the answer does not say which region.
const IN_ANOTHER_REGION: &str = " (the bucket is in another region)";

fn classify(code: &str, status: Option<u16>) -> (ErrorKind, &'static str) {
    match code {
        "NoSuchBucket" => (
            ErrorKind::BucketNotFound,
            " (check the bucket name, endpoint and region)",
        ),
        // No such bucket can exist here (legacy us-east-1 buckets aside, so not refused
        // before asking).
        "InvalidBucketName" => (ErrorKind::BucketNotFound, BAD_BUCKET_NAME),
        "NoSuchKey" | "NotFound" => (ErrorKind::NotFound, ""),
        "AccessDenied" | "AllAccessDisabled" => (
            ErrorKind::AccessDenied,
            " (check the credentials and their permissions)",
        ),
        // NotSignedUp: AWS's "your account is not signed up for S3"; s3s-fs says it of an
        // access key it does not know. Either way these credentials will not do.
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "InvalidToken"
        | "ExpiredToken"
        | "NotSignedUp" => (
            ErrorKind::BadCredentials,
            " (the store does not accept these credentials: check the key, secret and token)",
        ),
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => (ErrorKind::Other, IN_ANOTHER_REGION),
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests" => (ErrorKind::Throttled, ""),
        "PreconditionFailed" => (
            ErrorKind::SourceChanged,
            " (the object changed while it was being copied)",
        ),
        "BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" => (
            ErrorKind::Corrupt,
            " (the bytes received do not match their checksum)",
        ),
        "IncompleteBody" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" => {
            (ErrorKind::Transient, "")
        }
        // A 403 on AWS, but not a matter of permissions: one object, not the transfer.
        "InvalidObjectState" => (
            ErrorKind::Other,
            " (the object is archived, e.g. in GLACIER or DEEP_ARCHIVE: restore it first \
             with `aws s3api restore-object`, or leave it out with --exclude)",
        ),
        "InvalidStorageClass" => (
            ErrorKind::Other,
            " (this store has no such storage class: check --storage-class)",
        ),
        "MetadataTooLarge" => (
            ErrorKind::Other,
            " (S3 keeps at most 2 KB of user metadata per object; the source's has more)",
        ),
        "NotImplemented" => (ErrorKind::Unsupported, " (the server does not offer this)"),
        "NoSuchUpload" => (
            ErrorKind::NotFound,
            " (the multipart upload was aborted or expired)",
        ),
        _ => match status {
            Some(404) => (ErrorKind::NotFound, ""),
            Some(403) => (
                ErrorKind::AccessDenied,
                " (check the credentials and their permissions)",
            ),
            Some(412) => (ErrorKind::SourceChanged, ""),
            Some(429) | Some(503) => (ErrorKind::Throttled, ""),
            Some(501) => (ErrorKind::Unsupported, " (the server does not offer this)"),
            Some(408) | Some(500..=599) => (ErrorKind::Transient, ""),
            _ => (ErrorKind::Other, ""),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line knows a region hint by how it begins, whichever form it takes.
    #[test]
    fn the_region_hint_begins_as_the_command_line_looks_for() {
        assert!(IN_ANOTHER_REGION.starts_with(BUCKET_IN));
        assert_eq!(
            classify("PermanentRedirect", Some(301)).1,
            IN_ANOTHER_REGION
        );
    }

    #[test]
    fn refused_credentials_are_told_from_refused_permissions() {
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidToken",
            "ExpiredToken",
            "NotSignedUp",
        ] {
            assert_eq!(
                classify(code, Some(403)).0,
                ErrorKind::BadCredentials,
                "{code}"
            );
        }
        for code in ["AccessDenied", "AllAccessDisabled"] {
            assert_eq!(
                classify(code, Some(403)).0,
                ErrorKind::AccessDenied,
                "{code}"
            );
        }
        // A HEAD's 403 has no body to tell which: a denial, object by object.
        assert_eq!(classify("", Some(403)).0, ErrorKind::AccessDenied);
        assert_eq!(
            classify("InvalidObjectState", Some(403)).0,
            ErrorKind::Other
        );
    }
}
