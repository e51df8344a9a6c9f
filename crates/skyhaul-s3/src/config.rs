use std::fmt;

/// How to reach one side's S3 endpoint. Every field is optional; what is unset falls back
/// to the standard AWS environment and profile chain.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Custom endpoint (`https://...`), for every S3-compatible store that is not AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// A named profile from the AWS shared config/credentials files.
    pub profile: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); defaults to on for custom endpoints,
    /// which rarely have wildcard DNS for virtual-host style.
    pub path_style: Option<bool>,
    /// Acknowledge, on every request, that the requester pays for it (requester-pays
    /// buckets refuse requests without it).
    pub requester_pays: bool,
    /// Send every request unsigned, as a public bucket's readers do: no credentials are
    /// looked for, so a machine without any can read open data.
    pub anonymous: bool,
}

// Hand-written so that secrets can never reach a log line through `{:?}`.
impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("path_style", &self.path_style)
            .field("requester_pays", &self.requester_pays)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl S3Options {
    /// Whether the endpoint is AWS itself, which accepts every checksum header.
    pub fn is_aws(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_none_or(|e| e.contains(".amazonaws.com"))
    }
}
