use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in the terms the engine and the user act on. Serialisable, so that an
/// error can cross a process boundary (a relay gateway's answer) and be acted on the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// The bucket or root directory does not exist.
    BucketNotFound,
    /// The credentials may not do this (to this object, or to anything).
    AccessDenied,
    /// The store refuses the credentials themselves (an unknown key, a wrong secret or
    /// signature, an expired token), or none could be found. Unlike a denial, never about
    /// one object.
    BadCredentials,
    /// The endpoint cannot be reached (refused, DNS, TLS).
    Unreachable,
    /// The store asked us to slow down (503 SlowDown, 429).
    Throttled,
    /// A failure worth retrying: 5xx, timeout, reset, truncated or corrupted body.
    Transient,
    /// Bytes did not match their checksum (corrupted in transit or at rest).
    Corrupt,
    /// The source object changed while we were copying it.
    SourceChanged,
    /// A key that cannot be written at this destination (e.g. `..` on a file system).
    InvalidKey,
    /// The key clashes with something already there (a file where a directory must go).
    Conflict,
    /// The destination is out of space.
    NoSpace,
    /// The backend cannot do this.
    Unsupported,
    /// The user stopped the transfer (Ctrl-C) before this finished.
    Interrupted,
    /// Anything else; not retried. A kind this version does not know (sent by a newer peer)
    /// reads as this one.
    #[serde(other)]
    Other,
}

/// An error with the context needed to act on it: which store, which key, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// Set on a listing's error about one entry it could not include (a directory it may
    /// not read, a file name that is no key): the key that entry would have had, ending in
    /// `/` for a directory. The listing goes on past such an error, and the engine fails
    /// the entry alone; any other error ends a listing.
    pub unlisted: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            unlisted: None,
        }
    }

    /// This error, as a listing's error about the one entry `key` (see [`Error::unlisted`]).
    pub fn of_unlisted(mut self, key: impl Into<String>) -> Self {
        self.unlisted = Some(key.into());
        self
    }

    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled
                | ErrorKind::Transient
                | ErrorKind::Unreachable
                | ErrorKind::Corrupt
        )
    }

    /// Errors after which nothing else in the transfer can succeed either. A denial of one
    /// object's read or write, or a refusal of credentials the store accepted before (a
    /// signature that one object's header breaks), may concern that object alone: the
    /// engine stops a transfer for those only when many come in a row and none of the
    /// objects then in flight succeeds (`skyhaul_engine`'s `denials`).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::AccessDenied
                | ErrorKind::BadCredentials
                | ErrorKind::BucketNotFound
                | ErrorKind::NoSpace
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The hint for a request refused though it went unsigned (`--src-anonymous`): the object
/// or its bucket is not public. Asking for credentials would be wrong advice: whatever the
/// machine has, it was not sent.
pub const NOT_PUBLIC: &str = " (read unsigned, as --src-anonymous asks: not public; \
                              leave out --src-anonymous to sign with credentials)";

/// The hint for a bucket name the store refuses (S3's `InvalidBucketName`): no such bucket
/// can exist there, so it is not one to create either.
pub const BAD_BUCKET_NAME: &str = " (the store refuses this bucket name: S3 bucket names are 3 \
                                   to 63 lowercase letters, digits, '.' and '-')";

/// How the hint for a bucket in another region begins (`… in region eu-west-1)` or `… in
/// another region)`): the command line adds the side's region flag to it.
pub const BUCKET_IN: &str = " (the bucket is in ";

/// An error and its causes on one line, each cause once: what backends put in messages
/// (SDK and HTTP client errors nest their causes, and their own displays either drop them or
/// append debug dumps no user should have to read).
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
