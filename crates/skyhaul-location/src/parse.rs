use std::fmt;
use std::path::{Path, PathBuf};

/// The kind of store a location points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// A local or shared (NFS, Lustre, FUSE) file system.
    Local,
    /// AWS S3 or any S3-compatible store.
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage (`az://`, `https://ACCOUNT.blob.core.windows.net/`).
    Azure,
}

/// A parsed source or destination.
///
/// For object stores `bucket` is the bucket (Azure: container) and `path` the key or prefix
/// inside it (no leading `/`). For the local file system `bucket` is empty and `path` is an
/// absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub scheme: Scheme,
    pub bucket: String,
    pub path: String,
    /// The Azure storage account when the URL names it (`https://ACCOUNT.blob.core.windows.net/…`);
    /// `az://` URLs leave it to the side's credentials.
    pub account: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("'{0}': empty location")]
    Empty(String),
    #[error("'{0}': no bucket or container name (expected s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX)")]
    MissingBucket(String),
    /// Shows the URL without its query or password ([`redacted`]).
    #[error("'{0}': unsupported scheme '{1}' (supported: s3://, gs://, az://, https://ACCOUNT.blob.core.windows.net/, file://, or a local path)")]
    UnsupportedScheme(String, String),
    /// Shows the URL without its query, which may hold a SAS signature.
    #[error("'{0}': a query string (a SAS?) is not part of a location, and would be kept in the journal and shown in reports; pass the SAS with --src-azure-sas or --dst-azure-sas (or SKYHAUL_SRC_AZURE_SAS / SKYHAUL_DST_AZURE_SAS) and leave it out of the URL")]
    QueryString(String),
    #[error("'{0}': file:// URLs must be absolute (file:///abs/path)")]
    RelativeFileUrl(String),
    #[error("'{0}': cannot determine the current directory: {1}")]
    NoCurrentDir(String, String),
}

/// `url` as it may be shown: without its query (a SAS or presigned URL's signature) and
/// with a user name and password before the host (`https://user:pass@host`) masked.
fn redacted(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[authority.len()..]),
        None => url.to_string(),
    }
}

impl Location {
    /// Parses what the user typed. Relative local paths are resolved against the current
    /// directory so that every later step works with absolute paths.
    pub fn parse(input: &str) -> Result<Location, LocationError> {
        if input.is_empty() {
            return Err(LocationError::Empty(input.to_string()));
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            let bucket_path = |scheme: Scheme, rest: &str, account: Option<&str>| {
                let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(LocationError::MissingBucket(input.to_string()));
                }
                Ok(Location {
                    scheme,
                    bucket: bucket.to_string(),
                    path: path.to_string(),
                    account: account.map(str::to_string),
                })
            };
            return match scheme.to_ascii_lowercase().as_str() {
                "s3" => bucket_path(Scheme::S3, rest, None),
                "gs" => bucket_path(Scheme::Gcs, rest, None),
                // `?` is a key's own character in this form; a SAS pasted on (`sig=` after
                // it) is not, and would otherwise become part of the key.
                "az" => match input.split_once('?') {
                    Some((url, query)) if query.contains("sig=") => {
                        Err(LocationError::QueryString(redacted(url)))
                    }
                    _ => bucket_path(Scheme::Azure, rest, None),
                },
                "https" => {
                    // Azure's own URL form; the blob path in it is percent-encoded, so a
                    // `?` in it starts a query: the portal's "Blob SAS URL" puts the SAS
                    // there, which must not become part of a key. Neither it nor another
                    // URL's query (an S3 presigned URL's signature) is echoed.
                    let url = input.split('?').next().unwrap_or_default();
                    let rest = url.split_once("://").map_or(url, |(_, r)| r);
                    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                    let account = host
                        .to_ascii_lowercase()
                        .strip_suffix(".blob.core.windows.net")
                        .filter(|a| !a.is_empty() && !a.contains('.'))
                        .map(str::to_string)
                        .ok_or_else(|| {
                            LocationError::UnsupportedScheme(redacted(url), "https".into())
                        })?;
                    if input.contains('?') {
                        return Err(LocationError::QueryString(redacted(url)));
                    }
                    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
                    bucket_path(Scheme::Azure, &decoded, Some(&account))
                }
                "file" => {
                    if !rest.starts_with('/') {
                        return Err(LocationError::RelativeFileUrl(input.to_string()));
                    }
                    let decoded = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
                    Ok(Location::local(
                        Path::new(decoded.as_ref()),
                        names_dir(&decoded),
                    ))
                }
                other => Err(LocationError::UnsupportedScheme(
                    redacted(input),
                    other.to_string(),
                )),
            };
        }
        let path = Path::new(input);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| LocationError::NoCurrentDir(input.to_string(), e.to_string()))?
                .join(path)
        };
        Ok(Location::local(&abs, names_dir(input)))
    }

    /// A local location; `dir_hint` keeps the meaning of a trailing `/` ("put it inside").
    fn local(path: &Path, dir_hint: bool) -> Location {
        let mut s = normalize(path).to_string_lossy().into_owned();
        if dir_hint && !s.ends_with('/') {
            s.push('/');
        }
        Location {
            scheme: Scheme::Local,
            bucket: String::new(),
            path: s,
            account: None,
        }
    }

    /// The local path, for [`Scheme::Local`] locations.
    pub fn local_path(&self) -> PathBuf {
        PathBuf::from(&self.path)
    }

    /// True when a bucket path has a `.` or `..` segment. In a store these are part of the
    /// key, not steps between directories: as a destination, `s3://b/dir/.` would make an
    /// object named `dir/.` where the user meant `dir/`. Local paths are resolved instead.
    pub fn has_dot_segment(&self) -> bool {
        self.scheme != Scheme::Local && self.path.split('/').any(|s| s == "." || s == "..")
    }

    /// True when the user asked for "inside this prefix/directory" by ending it with `/`.
    pub fn is_dir_form(&self) -> bool {
        self.path.is_empty() || self.path.ends_with('/')
    }
}

/// Whether a local path as typed names a directory: it ends in `/`, or in `.` or `..`
/// (`file/.` must not become `file` once normalized).
fn names_dir(path: &str) -> bool {
    path.ends_with('/')
        || [".", ".."]
            .iter()
            .any(|dot| path == *dot || path.ends_with(&format!("/{dot}")))
}

/// Removes `.` and resolves `..` lexically, so that a destination typed as `./out/../x` is
/// the directory the user means; symlinks are left to the file system.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Local => write!(f, "{}", self.path),
            Scheme::S3 => write!(f, "s3://{}/{}", self.bucket, self.path),
            Scheme::Gcs => write!(f, "gs://{}/{}", self.bucket, self.path),
            // The URL form is parsed percent-decoded, with `?` starting a query: those
            // two are encoded again, so that what is shown (and journaled) parses back.
            Scheme::Azure => match &self.account {
                Some(a) => write!(
                    f,
                    "https://{a}.blob.core.windows.net/{}/{}",
                    self.bucket,
                    self.path.replace('%', "%25").replace('?', "%3F")
                ),
                None => write!(f, "az://{}/{}", self.bucket, self.path),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Neither a pasted SAS nor a password in a URL of a scheme skyhaul does not take is
    /// echoed by the error that refuses it.
    #[test]
    fn refused_urls_are_shown_without_their_secrets() {
        for (input, shown) in [
            (
                "http://127.0.0.1:10000/acct/cont/p?sv=2020&sig=SECRET%3D",
                "'http://127.0.0.1:10000/acct/cont/p': unsupported scheme 'http'",
            ),
            (
                "sftp://me:SECRET@host/dir",
                "'sftp://***@host/dir': unsupported scheme 'sftp'",
            ),
            (
                "https://me:SECRET@example.com/b/k?X-Amz-Signature=SECRET",
                "'https://***@example.com/b/k': unsupported scheme 'https'",
            ),
        ] {
            let e = Location::parse(input).unwrap_err().to_string();
            assert!(e.starts_with(shown), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert_eq!(redacted("http://h:9000/a@b"), "http://h:9000/a@b");
    }

    #[test]
    fn s3_urls() {
        let l = Location::parse("s3://bucket/a/b/").unwrap();
        assert_eq!(
            (l.scheme, l.bucket.as_str(), l.path.as_str()),
            (Scheme::S3, "bucket", "a/b/")
        );
        let l = Location::parse("s3://bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.path.as_str()), ("bucket", ""));
        assert!(l.is_dir_form());
        assert_eq!(
            Location::parse("s3:///x"),
            Err(LocationError::MissingBucket("s3:///x".into()))
        );
        assert!(matches!(
            Location::parse("ftp://x/y"),
            Err(LocationError::UnsupportedScheme(..))
        ));
    }

    #[test]
    fn dot_segments_are_found_in_bucket_paths_only() {
        for (input, dots) in [
            ("s3://b/dir/.", true),
            ("gs://b/../x", true),
            ("az://c/a/./b/", true),
            ("s3://b/dir/", false),
            ("s3://b/.hidden/..x", false),
            ("/tmp/dir/.", false),
        ] {
            let l = Location::parse(input).unwrap();
            assert_eq!(l.has_dot_segment(), dots, "{input}");
        }
    }

    #[test]
    fn gcs_and_azure_urls() {
        let l = Location::parse("gs://bkt/a/b c/").unwrap();
        assert_eq!(
            (
                l.scheme,
                l.bucket.as_str(),
                l.path.as_str(),
                l.account.clone()
            ),
            (Scheme::Gcs, "bkt", "a/b c/", None)
        );
        assert_eq!(l.to_string(), "gs://bkt/a/b c/");
        let l = Location::parse("az://cont/x+y").unwrap();
        assert_eq!(
            (l.scheme, l.bucket.as_str(), l.path.as_str()),
            (Scheme::Azure, "cont", "x+y")
        );
        assert_eq!(l.to_string(), "az://cont/x+y");
        let l =
            Location::parse("https://MyAcct.blob.core.windows.net/cont/dir/%C3%BC%20x").unwrap();
        assert_eq!(
            (
                l.scheme,
                l.account.as_deref(),
                l.bucket.as_str(),
                l.path.as_str()
            ),
            (Scheme::Azure, Some("myacct"), "cont", "dir/ü x")
        );
        assert_eq!(
            l.to_string(),
            "https://myacct.blob.core.windows.net/cont/dir/ü x"
        );
        let l = Location::parse("https://acct.blob.core.windows.net/cont").unwrap();
        assert_eq!((l.bucket.as_str(), l.path.as_str()), ("cont", ""));
        for bad in ["gs:///x", "az://", "https://acct.blob.core.windows.net/"] {
            assert!(
                matches!(Location::parse(bad), Err(LocationError::MissingBucket(_))),
                "{bad}"
            );
        }
        // A SAS URL's query is refused, and not echoed.
        let sas = "https://acct.blob.core.windows.net/cont/x.html?sv=2019-12-12&sig=SECRET%3D";
        let err = Location::parse(sas).unwrap_err();
        assert_eq!(
            err,
            LocationError::QueryString("https://acct.blob.core.windows.net/cont/x.html".into())
        );
        assert!(!err.to_string().contains("SECRET"), "{err}");
        // A `?` in a key is %3F in the URL form, as in az:// it is itself; shown (and
        // journaled), it parses back.
        let l = Location::parse("https://acct.blob.core.windows.net/cont/a%3Fb%2525").unwrap();
        assert_eq!(l.path, "a?b%25");
        assert_eq!(Location::parse(&l.to_string()).unwrap(), l);
        assert_eq!(Location::parse("az://cont/a?b").unwrap().path, "a?b");
        let pasted = Location::parse("az://cont/x?sv=2019-12-12&sig=SECRET").unwrap_err();
        assert_eq!(pasted, LocationError::QueryString("az://cont/x".into()));
        // Nor is another https URL's query (an S3 presigned URL's signature) echoed.
        let presigned = "https://b.s3.amazonaws.com/k?X-Amz-Signature=SECRET";
        let err = Location::parse(presigned).unwrap_err().to_string();
        assert!(
            err.contains("unsupported scheme") && !err.contains("SECRET"),
            "{err}"
        );
        // Other https URLs are not locations (yet): a clear error, not a guess.
        assert!(matches!(
            Location::parse("https://example.com/a/b"),
            Err(LocationError::UnsupportedScheme(..))
        ));
    }

    #[test]
    fn local_paths() {
        let l = Location::parse("/data/set/").unwrap();
        assert_eq!((l.scheme, l.path.as_str()), (Scheme::Local, "/data/set/"));
        let l = Location::parse("file:///data/my%20set").unwrap();
        assert_eq!(l.path, "/data/my set");
        assert!(matches!(
            Location::parse("file://rel/x"),
            Err(LocationError::RelativeFileUrl(_))
        ));
        let cwd = std::env::current_dir().unwrap();
        let l = Location::parse("./out/../x").unwrap();
        assert_eq!(l.local_path(), cwd.join("x"));
        assert!(!l.is_dir_form());
        // A path that ends in a dot segment names a directory.
        for (input, dir) in [
            ("/data/f/.", "/data/f/"),
            ("/data/f/..", "/data/"),
            ("file:///data/f/.", "/data/f/"),
            (".", ""),
        ] {
            let l = Location::parse(input).unwrap();
            assert!(l.is_dir_form(), "{input}");
            if !dir.is_empty() {
                assert_eq!(l.path, dir, "{input}");
            }
        }
    }
}
