//! Named remotes: `NAME:bucket/path` locations, resolved from skyhaul's own config and from
//! an rclone.conf, so that an existing rclone set-up works unchanged.
//!
//! # What is a remote
//!
//! A location is a remote when it starts with a name that rclone allows followed by `:`
//! (`nebius:training-data/imagenet`): letters, digits, `_`, `-`, `.`, `+`, `@` and spaces,
//! not starting with `-` or a space nor ending with a space. (skyhaul's own config holds
//! only names of ASCII letters, digits, `_` and `-`; the others come from an rclone.conf.)
//! A name rclone allows is never taken for a local path: an rclone remote `my.remote` would
//! otherwise be written to as the directory `./my.remote:bucket`. These are not
//! remotes and are left to the location parser: URLs (`s3://…`, `file:///…`: the `:` is
//! followed by `//`), paths (`/abs`, `./rel`, `../x`), and Windows drive paths
//! (`C:\data`, `C:/data`; on Windows any single letter before `:` is a drive). To copy a
//! local file whose name contains a `:`, write it as `./name:with:colons`.
//!
//! # Where remotes come from
//!
//! 1. skyhaul's config (`skyhaul config set remotes.NAME.endpoint URL`, see `config.rs`):
//!    endpoint, region, profile, provider and requester_pays, never keys;
//! 2. an rclone.conf: `--rclone-config PATH`, else rclone's own location (`$RCLONE_CONFIG`;
//!    `$XDG_CONFIG_HOME/rclone/rclone.conf`; `~/.config/rclone/rclone.conf`, or the legacy
//!    `~/.rclone.conf` when only that exists; `%APPDATA%\rclone\rclone.conf` on Windows).
//!
//! The first that defines the name wins, so a skyhaul remote can shadow an rclone one. The
//! rclone file is only read when a remote is not in skyhaul's config, and a missing default
//! rclone.conf simply defines nothing (a missing `--rclone-config` file is an error).
//!
//! From an rclone `[NAME]` section skyhaul reads `type` (must be `s3`), `provider`,
//! `endpoint` (`https://` is assumed when no scheme is given, as rclone does), `region`,
//! `profile`, `access_key_id`, `secret_access_key`, `session_token` and `requester_pays`;
//! other options (`force_path_style`, `acl`, `location_constraint`…) are ignored. Keys in the section are
//! used when present, as rclone does whatever `env_auth` says; a section without keys gets
//! its credentials from the standard AWS chain (environment, profile, instance role) —
//! where rclone would, with `env_auth = false`, fall back to anonymous access instead.
//! Encrypted rclone configs (`RCLONE_ENCRYPT_V0:`) and remotes defined only through
//! `RCLONE_CONFIG_*` environment variables are not read.
//!
//! Secrets read from rclone.conf never leave [`ResolvedRemote`] except to build the store
//! client: its `Debug` output redacts them, and no error message quotes a value from the
//! file.

use crate::config::{valid_remote_name, Config};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The credential entries of an rclone section: values never printed.
const SECRET_FIELDS: [&str; 3] = ["access_key_id", "secret_access_key", "session_token"];

/// Where a remote's definition was found, for messages such as "remote nebius (from
/// ~/.config/rclone/rclone.conf)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSource {
    SkyhaulConfig,
    Rclone(PathBuf),
}

impl fmt::Display for RemoteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteSource::SkyhaulConfig => f.write_str("skyhaul config"),
            RemoteSource::Rclone(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A `NAME:bucket/path` location with everything needed to open it. Fields left `None` fall
/// back to the flags, environment and the standard AWS chain, as for `s3://` locations.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedRemote {
    /// The remote's name, as typed before the `:`.
    pub name: String,
    pub source: RemoteSource,
    pub bucket: String,
    /// The key or prefix inside the bucket, no leading `/`.
    pub path: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub provider: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// rclone's `requester_pays`: every request acknowledges that the requester pays.
    pub requester_pays: bool,
}

impl ResolvedRemote {
    /// The same location as an `s3://` URL (for the location parser, messages and reports).
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.path)
    }
}

/// By hand, so that logging or printing a remote never shows its credentials.
impl fmt::Debug for ResolvedRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "** redacted **");
        f.debug_struct("ResolvedRemote")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("bucket", &self.bucket)
            .field("path", &self.path)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("provider", &self.provider)
            .field("access_key_id", &redact(&self.access_key_id))
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("requester_pays", &self.requester_pays)
            .finish()
    }
}

/// Why a remote location could not be resolved.
#[derive(Debug)]
pub enum RemoteError {
    /// `NAME:` with no bucket after it.
    NoBucket { location: String },
    /// The name is defined nowhere; `looked_in` says where skyhaul looked, `known` which
    /// remotes it found there.
    Unknown {
        name: String,
        location: String,
        looked_in: Vec<String>,
        known: Vec<String>,
        /// A local file or directory has that name: likely what was meant.
        local: bool,
    },
    /// An rclone remote of another kind (`drive`, `sftp`, `crypt`…).
    UnsupportedType {
        name: String,
        kind: String,
        path: PathBuf,
    },
    /// An rclone section without `type`.
    NoType { name: String, path: PathBuf },
    /// An rclone section with one of the key pair but not the other.
    IncompleteKeys { name: String, path: PathBuf },
    /// An rclone section whose endpoint is no `http(s)://` URL.
    BadEndpoint {
        name: String,
        path: PathBuf,
        endpoint: String,
    },
    /// An rclone.conf encrypted with `rclone config encryption`.
    Encrypted { path: PathBuf },
    /// A line that is neither a section, a `key = value` nor a comment.
    Syntax { path: PathBuf, line: usize },
    /// The rclone.conf cannot be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::NoBucket { location } => {
                write!(
                    f,
                    "'{location}': no bucket name (expected REMOTE:BUCKET/PATH)"
                )
            }
            RemoteError::Unknown {
                name,
                location,
                looked_in,
                known,
                local,
            } => {
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                write!(
                    f,
                    "'{location}': no remote named '{name}' (looked in {}; remotes there: \
                     {known}); ",
                    looked_in.join(" and ")
                )?;
                match valid_remote_name(name) {
                    true => write!(
                        f,
                        "define it with `skyhaul config set remotes.{name}.endpoint URL`"
                    )?,
                    // skyhaul's config cannot hold such a name; an rclone.conf can.
                    false => write!(f, "define it in an rclone.conf (--rclone-config)")?,
                }
                if *local {
                    write!(
                        f,
                        "; a local path of that name exists: write ./{location} for it"
                    )
                } else if name.eq_ignore_ascii_case("s3") {
                    let rest = location.split_once(':').map_or("", |(_, r)| r);
                    write!(f, ", or write s3://{}", rest.trim_start_matches('/'))
                } else {
                    write!(f, ", or write ./{location} for a local path")
                }
            }
            RemoteError::UnsupportedType { name, kind, path } => write!(
                f,
                "remote '{name}' in {} has type {kind}; skyhaul supports type = s3",
                path.display()
            ),
            RemoteError::NoType { name, path } => write!(
                f,
                "remote '{name}' in {} has no type; skyhaul supports type = s3",
                path.display()
            ),
            RemoteError::IncompleteKeys { name, path } => write!(
                f,
                "remote '{name}' in {} has only one of access_key_id and secret_access_key; \
                 set both, or neither to use env_auth / the AWS credential chain",
                path.display()
            ),
            RemoteError::BadEndpoint {
                name,
                path,
                endpoint,
            } => write!(
                f,
                "remote '{name}' in {} has endpoint '{endpoint}', which is not an http:// or \
                 https:// URL; fix it there",
                path.display()
            ),
            RemoteError::Encrypted { path } => write!(
                f,
                "rclone config {} is encrypted, which skyhaul cannot read; define the remote \
                 in skyhaul's config instead (`skyhaul config set remotes.NAME.endpoint URL` \
                 and `remotes.NAME.profile`), or point --rclone-config at an unencrypted copy",
                path.display()
            ),
            RemoteError::Syntax { path, line } => write!(
                f,
                "rclone config {} line {line}: expected [name], key = value or a comment",
                path.display()
            ),
            RemoteError::Read { path, error } => {
                write!(f, "cannot read rclone config {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RemoteError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Splits `NAME:rest` when `location` is a remote (see the module docs), else `None`.
pub fn split_remote(location: &str) -> Option<(&str, &str)> {
    let (name, rest) = location.split_once(':')?;
    if !rclone_remote_name(name) || rest.starts_with("//") {
        return None;
    }
    let single_letter = name.len() == 1;
    if single_letter && (cfg!(windows) || rest.is_empty() || rest.starts_with(['\\', '/'])) {
        return None;
    }
    Some((name, rest))
}

/// Whether rclone allows `name` for a remote (its `config.CheckRemoteName`).
fn rclone_remote_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', ' '])
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.+@ ".contains(c))
}

/// Resolves `location` when it is a remote: `Ok(None)` when it is not one (an `s3://` URL or
/// a path), so every location typed by the user can go through here first.
///
/// `rclone_config` is the `--rclone-config` flag; without it rclone's default location is
/// used if it exists.
pub fn resolve(
    location: &str,
    config: &Config,
    rclone_config: Option<&Path>,
) -> Result<Option<ResolvedRemote>, RemoteError> {
    let Some((name, rest)) = split_remote(location) else {
        return Ok(None);
    };
    let rest = rest.trim_start_matches('/');
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(RemoteError::NoBucket {
            location: location.to_string(),
        });
    }
    let located = |source: RemoteSource| ResolvedRemote {
        name: name.to_string(),
        source,
        bucket: bucket.to_string(),
        path: path.to_string(),
        endpoint: None,
        region: None,
        profile: None,
        provider: None,
        access_key_id: None,
        secret_access_key: None,
        session_token: None,
        requester_pays: false,
    };

    if let Some(remote) = config.remote(name) {
        return Ok(Some(ResolvedRemote {
            endpoint: remote.endpoint.clone(),
            region: remote.region.clone(),
            profile: remote.profile.clone(),
            provider: remote.provider.clone(),
            requester_pays: remote.requester_pays(),
            ..located(RemoteSource::SkyhaulConfig)
        }));
    }

    let rclone = match rclone_config {
        Some(path) => Some(RcloneConfig::load(path)?),
        None => match default_rclone_config_path() {
            Some(path) if path.exists() => Some(RcloneConfig::load(&path)?),
            _ => None,
        },
    };
    if let Some(rclone) = &rclone {
        if let Some(mut remote) = rclone.remote(name)? {
            remote.bucket = bucket.to_string();
            remote.path = path.to_string();
            return Ok(Some(remote));
        }
    }

    let rclone_place = match (&rclone, default_rclone_config_path()) {
        (Some(r), _) => r.path.display().to_string(),
        (None, Some(p)) => format!("{} (not found)", p.display()),
        (None, None) => "rclone config (no default location)".to_string(),
    };
    Err(RemoteError::Unknown {
        name: name.to_string(),
        location: location.to_string(),
        looked_in: vec!["skyhaul config".to_string(), rclone_place],
        local: Path::new(location).symlink_metadata().is_ok(),
        known: config
            .remote_names()
            .chain(rclone.iter().flat_map(|r| r.remote_names()))
            .map(str::to_string)
            .collect(),
    })
}

/// rclone's default config location (see the module docs), or `None` without a home.
pub fn default_rclone_config_path() -> Option<PathBuf> {
    rclone_config_path_from(
        |var| std::env::var_os(var).map(PathBuf::from),
        dirs::home_dir(),
        dirs::config_dir(),
        |p| p.exists(),
    )
}

/// [`default_rclone_config_path`] with its inputs passed in, so the order can be tested
/// without touching the process environment.
fn rclone_config_path_from(
    env: impl Fn(&str) -> Option<PathBuf>,
    home: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let set = |var| env(var).filter(|p: &PathBuf| !p.as_os_str().is_empty());
    if let Some(path) = set("RCLONE_CONFIG") {
        return Some(path);
    }
    if cfg!(windows) {
        if let Some(path) = config_dir.map(|d| d.join("rclone").join("rclone.conf")) {
            if exists(&path) {
                return Some(path);
            }
        }
    }
    if let Some(xdg) = set("XDG_CONFIG_HOME") {
        return Some(xdg.join("rclone").join("rclone.conf"));
    }
    let home = home?;
    let modern = home.join(".config").join("rclone").join("rclone.conf");
    let legacy = home.join(".rclone.conf");
    if !exists(&modern) && exists(&legacy) {
        return Some(legacy);
    }
    Some(modern)
}

/// The sections of an rclone.conf. Values are kept only for the keys skyhaul uses.
#[derive(Clone)]
pub struct RcloneConfig {
    path: PathBuf,
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

/// By hand: the sections hold credentials.
impl fmt::Debug for RcloneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcloneConfig")
            .field("path", &self.path)
            .field("remotes", &self.sections.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RcloneConfig {
    pub fn load(path: &Path) -> Result<RcloneConfig, RemoteError> {
        let text = std::fs::read_to_string(path).map_err(|error| RemoteError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        RcloneConfig::parse(&text, path)
    }

    /// Parses rclone's INI dialect: `[name]` sections, `key = value` lines, `#` and `;`
    /// comment lines. Values may be wrapped in `"…"` or `` `…` `` quotes; there are no
    /// inline comments (a secret may contain `#`). Later duplicates win, as in rclone.
    pub fn parse(text: &str, path: &Path) -> Result<RcloneConfig, RemoteError> {
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start_matches('\u{feff}').trim();
            if line.starts_with("RCLONE_ENCRYPT_V") {
                return Err(RemoteError::Encrypted {
                    path: path.to_path_buf(),
                });
            }
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim().to_string();
                sections.entry(name.clone()).or_default();
                current = Some(name);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(RemoteError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            };
            // Keys before the first section belong to rclone's DEFAULT section, unused.
            if let Some(section) = &current {
                let entries = sections.entry(section.clone()).or_default();
                entries.insert(key.trim().to_string(), unquote(value.trim()).to_string());
            }
        }
        Ok(RcloneConfig {
            path: path.to_path_buf(),
            sections,
        })
    }

    /// One value of one section (the same INI dialect serves `skyhaul init` for the AWS
    /// config files, where it reads section names and regions only).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.sections.get(section)?.get(key).map(String::as_str)
    }

    /// The names of all remotes in the file, of any type.
    pub fn remote_names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// The remote `name` as a [`ResolvedRemote`] with an empty bucket and path, `Ok(None)`
    /// when the file has no such section, an error when it is not an S3 remote.
    pub fn remote(&self, name: &str) -> Result<Option<ResolvedRemote>, RemoteError> {
        let Some(section) = self.sections.get(name) else {
            return Ok(None);
        };
        let get = |key: &str| {
            section
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        match get("type") {
            None => {
                return Err(RemoteError::NoType {
                    name: name.to_string(),
                    path: self.path.clone(),
                })
            }
            Some(kind) if !kind.eq_ignore_ascii_case("s3") => {
                return Err(RemoteError::UnsupportedType {
                    name: name.to_string(),
                    kind,
                    path: self.path.clone(),
                })
            }
            Some(_) => {}
        }
        let [access_key_id, secret_access_key, session_token] = SECRET_FIELDS.map(get);
        if access_key_id.is_some() != secret_access_key.is_some() {
            return Err(RemoteError::IncompleteKeys {
                name: name.to_string(),
                path: self.path.clone(),
            });
        }
        // rclone accepts a bare host name and means https.
        let endpoint = get("endpoint")
            .map(|e| {
                let e = e.trim_end_matches('/');
                // A bare host, not a URL typed short of its slashes (`http:/host`).
                let lower = e.to_ascii_lowercase();
                let bare =
                    !e.contains("://") && !["http:", "https:"].iter().any(|s| lower.starts_with(s));
                let url = match bare {
                    true => format!("https://{e}"),
                    false => e.to_string(),
                };
                crate::config::endpoint_url(&url).map_err(|_| RemoteError::BadEndpoint {
                    name: name.to_string(),
                    path: self.path.clone(),
                    endpoint: e.to_string(),
                })
            })
            .transpose()?;
        let has_keys = access_key_id.is_some();
        Ok(Some(ResolvedRemote {
            name: name.to_string(),
            source: RemoteSource::Rclone(self.path.clone()),
            bucket: String::new(),
            path: String::new(),
            endpoint,
            region: get("region"),
            profile: get("profile"),
            provider: get("provider"),
            access_key_id,
            secret_access_key,
            // A session token only makes sense with the keys it belongs to.
            session_token: session_token.filter(|_| has_keys),
            // rclone parses booleans with Go's strconv.ParseBool.
            requester_pays: get("requester_pays")
                .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")),
        }))
    }
}

/// Removes one pair of surrounding `"` or `` ` `` quotes, as rclone's INI reader does.
fn unquote(value: &str) -> &str {
    for q in ['"', '`'] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const RCLONE_CONF: &str = r#"
# rclone.conf as the seed users have it
[nebius]
type = s3
provider = Other
env_auth = false
access_key_id = NEBIUSKEYID0000000000
secret_access_key = neb/secret+with#hash=and;semicolon
endpoint = https://storage.eu-north1.nebius.cloud
region = eu-north1
force_path_style = true

[r2]
type = s3
provider = Cloudflare
access_key_id = 0123456789abcdef0123456789abcdef
secret_access_key = "r2-secret-quoted"
region = auto
endpoint = https://0123abcd.r2.cloudflarestorage.com
acl = private
no_check_bucket = true

; MinIO on the lab network, no scheme on the endpoint
[minio]
type = s3
provider = Minio
env_auth = false
access_key_id = minioadmin
secret_access_key = minioadmin
region = us-east-1
endpoint = http://192.168.1.106:9000

[aws-env]
type = s3
provider = AWS
env_auth = true
region = us-west-2
profile = prod
requester_pays = true

[nebius-bare]
type = s3
provider = Other
endpoint = storage.eu-north1.nebius.cloud

[gdrive]
type = drive
scope = drive

[notype]
provider = AWS

[half]
type = s3
access_key_id = onlythis

[ftp]
type = s3
endpoint = ftp://files.example.com

[oneslash]
type = s3
endpoint = http:/minio.local:9000
"#;

    fn rclone_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn resolve_rclone(location: &str) -> Result<Option<ResolvedRemote>, RemoteError> {
        let file = rclone_file(RCLONE_CONF);
        resolve(location, &Config::default(), Some(file.path()))
    }

    #[test]
    fn recognises_remote_syntax_only() {
        assert_eq!(
            split_remote("nebius:bucket/a/b"),
            Some(("nebius", "bucket/a/b"))
        );
        assert_eq!(split_remote("my-r2_2:b"), Some(("my-r2_2", "b")));
        assert_eq!(split_remote("x:"), None, "a drive-like name alone");
        assert_eq!(split_remote("remote:"), Some(("remote", "")));
        assert_eq!(split_remote("ab:/bucket"), Some(("ab", "/bucket")));
        // Names rclone allows beyond skyhaul's own: never a local directory of that name.
        for name in ["my.remote", "my remote", "a+b@c", "ünï"] {
            assert_eq!(
                split_remote(&format!("{name}:bucket")),
                Some((name, "bucket"))
            );
        }
        for not_remote in [
            "s3://bucket/key",
            "S3://bucket/key",
            "file:///tmp/x",
            "/abs/path:with/colon",
            "./rel:x",
            "../up:x",
            "relative/dir:x",
            "C:\\data\\x",
            "C:/data/x",
            "d:\\",
            " lead:bucket",
            "-lead:bucket",
            "trail :bucket",
            "semi;colon:bucket",
            ":s3:bucket",
            "plainpath",
            "",
        ] {
            assert_eq!(split_remote(not_remote), None, "{not_remote}");
        }
        if cfg!(windows) {
            assert_eq!(split_remote("c:data"), None);
        } else {
            assert_eq!(split_remote("c:data"), Some(("c", "data")));
        }
    }

    #[test]
    fn non_remotes_resolve_to_none() {
        for loc in ["s3://b/k", "/tmp/x", "./x", "C:\\x"] {
            assert!(
                resolve(loc, &Config::default(), None).unwrap().is_none(),
                "{loc}"
            );
        }
    }

    #[test]
    fn nebius_style_remote_from_rclone() {
        let r = resolve_rclone("nebius:training-data/imagenet/train")
            .unwrap()
            .unwrap();
        assert_eq!(r.name, "nebius");
        assert_eq!(r.bucket, "training-data");
        assert_eq!(r.path, "imagenet/train");
        assert_eq!(r.url(), "s3://training-data/imagenet/train");
        assert_eq!(
            r.endpoint.as_deref(),
            Some("https://storage.eu-north1.nebius.cloud")
        );
        assert_eq!(r.region.as_deref(), Some("eu-north1"));
        assert_eq!(r.provider.as_deref(), Some("Other"));
        assert_eq!(r.access_key_id.as_deref(), Some("NEBIUSKEYID0000000000"));
        assert_eq!(
            r.secret_access_key.as_deref(),
            Some("neb/secret+with#hash=and;semicolon"),
            "no inline comments; only the first = splits"
        );
        assert_eq!(r.session_token, None);
        assert_eq!(r.profile, None);
        assert!(!r.requester_pays);
        assert!(matches!(r.source, RemoteSource::Rclone(_)));
    }

    #[test]
    fn r2_and_minio_remotes_from_rclone() {
        let r2 = resolve_rclone("r2:models").unwrap().unwrap();
        assert_eq!(r2.bucket, "models");
        assert_eq!(r2.path, "");
        assert_eq!(
            r2.endpoint.as_deref(),
            Some("https://0123abcd.r2.cloudflarestorage.com")
        );
        assert_eq!(r2.region.as_deref(), Some("auto"));
        assert_eq!(r2.secret_access_key.as_deref(), Some("r2-secret-quoted"));

        let minio = resolve_rclone("minio:/lab/data/").unwrap().unwrap();
        assert_eq!(
            (minio.bucket.as_str(), minio.path.as_str()),
            ("lab", "data/")
        );
        assert_eq!(minio.endpoint.as_deref(), Some("http://192.168.1.106:9000"));
        assert_eq!(minio.provider.as_deref(), Some("Minio"));
        assert_eq!(minio.access_key_id.as_deref(), Some("minioadmin"));
    }

    #[test]
    fn env_auth_remotes_have_no_keys_and_keep_the_profile() {
        let r = resolve_rclone("aws-env:bucket/p").unwrap().unwrap();
        assert_eq!(r.access_key_id, None);
        assert_eq!(r.secret_access_key, None);
        assert_eq!(r.profile.as_deref(), Some("prod"));
        assert_eq!(r.region.as_deref(), Some("us-west-2"));
        assert_eq!(r.endpoint, None);
        assert!(r.requester_pays);
    }

    #[test]
    fn endpoints_without_scheme_mean_https() {
        let r = resolve_rclone("nebius-bare:b").unwrap().unwrap();
        assert_eq!(
            r.endpoint.as_deref(),
            Some("https://storage.eu-north1.nebius.cloud")
        );
        assert_eq!(
            r.region, None,
            "left to the engine's default for custom endpoints"
        );
    }

    #[test]
    fn unsupported_and_broken_rclone_remotes_are_clear_errors() {
        let msg = resolve_rclone("gdrive:folder").unwrap_err().to_string();
        assert!(
            msg.contains("remote 'gdrive'")
                && msg.contains("has type drive; skyhaul supports type = s3"),
            "{msg}"
        );
        let msg = resolve_rclone("notype:b").unwrap_err().to_string();
        assert!(msg.contains("has no type"), "{msg}");
        let err = resolve_rclone("half:b").unwrap_err();
        assert!(matches!(err, RemoteError::IncompleteKeys { .. }), "{err:?}");
        assert!(!err.to_string().contains("onlythis"), "{err}");
        let msg = resolve_rclone("ftp:b").unwrap_err().to_string();
        assert!(
            msg.contains("remote 'ftp'")
                && msg.contains("endpoint 'ftp://files.example.com', which is not an http://"),
            "{msg}"
        );
        let err = resolve_rclone("oneslash:b").unwrap_err();
        assert!(matches!(err, RemoteError::BadEndpoint { .. }), "{err:?}");
    }

    #[test]
    fn missing_bucket_is_an_error() {
        for loc in ["nebius:", "nebius:/", "nebius://"] {
            let res = resolve_rclone(loc);
            if loc == "nebius://" {
                assert!(res.unwrap().is_none(), "a URL, not a remote");
                continue;
            }
            let err = res.unwrap_err();
            assert!(
                matches!(err, RemoteError::NoBucket { .. }),
                "{loc}: {err:?}"
            );
        }
    }

    #[test]
    fn unknown_remotes_say_where_skyhaul_looked_and_what_to_do() {
        let file = rclone_file(RCLONE_CONF);
        let err = resolve("nope:b/k", &Config::default(), Some(file.path())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no remote named 'nope'"), "{msg}");
        assert!(msg.contains(&file.path().display().to_string()), "{msg}");
        assert!(
            msg.contains("skyhaul config set remotes.nope.endpoint"),
            "{msg}"
        );
        assert!(msg.contains("./nope:b/k"), "{msg}");
        assert!(
            msg.contains(
                "remotes there: aws-env, ftp, gdrive, half, minio, nebius, nebius-bare, notype, oneslash, r2"
            ),
            "{msg}"
        );

        let err = resolve("s3:bucket/k", &Config::default(), Some(file.path())).unwrap_err();
        assert!(err.to_string().contains("s3://bucket/k"), "{err}");
    }

    #[test]
    fn skyhaul_config_remotes_come_first() {
        let mut config = Config::default();
        config
            .set("remotes.nebius.endpoint", "https://other.example")
            .unwrap();
        config.set("remotes.nebius.profile", "nebius-prod").unwrap();
        config.set("remotes.nebius.region", "eu-north1").unwrap();
        config.set("remotes.nebius.provider", "Other").unwrap();
        config.set("remotes.nebius.requester_pays", "true").unwrap();
        let file = rclone_file(RCLONE_CONF);
        let r = resolve("nebius:b/k", &config, Some(file.path()))
            .unwrap()
            .unwrap();
        assert_eq!(r.source, RemoteSource::SkyhaulConfig);
        assert_eq!(r.endpoint.as_deref(), Some("https://other.example"));
        assert_eq!(r.profile.as_deref(), Some("nebius-prod"));
        assert_eq!(r.region.as_deref(), Some("eu-north1"));
        assert_eq!(r.provider.as_deref(), Some("Other"));
        assert!(r.requester_pays);
        assert_eq!(r.access_key_id, None, "skyhaul's config holds no keys");

        // The rclone file is not even read when skyhaul's config has the remote.
        let missing = Path::new("/nonexistent/rclone.conf");
        assert!(resolve("nebius:b", &config, Some(missing))
            .unwrap()
            .is_some());
        let err = resolve("other:b", &config, Some(missing)).unwrap_err();
        assert!(matches!(err, RemoteError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/rclone.conf"),
            "{err}"
        );
    }

    #[test]
    fn encrypted_rclone_config_is_a_clear_error() {
        let file = rclone_file(
            "# Encrypted rclone configuration File\n\nRCLONE_ENCRYPT_V0:\nXVn8W2Fj0Zb4eQ==\n",
        );
        let err = resolve("nebius:b", &Config::default(), Some(file.path())).unwrap_err();
        assert!(matches!(err, RemoteError::Encrypted { .. }), "{err:?}");
        assert!(err.to_string().contains("encrypted"), "{err}");
    }

    #[test]
    fn ini_details() {
        let conf = RcloneConfig::parse(
            "\u{feff}top = ignored\n[ spaced ]\ntype=s3\n  endpoint =  `e.example`  \n\
             # comment\n; comment\n[spaced]\nregion = r1\n\n[empty]\n",
            Path::new("/x/rclone.conf"),
        )
        .unwrap();
        assert_eq!(conf.remote_names().collect::<Vec<_>>(), ["empty", "spaced"]);
        assert_eq!(conf.path, Path::new("/x/rclone.conf"));
        let r = conf.remote("spaced").unwrap().unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("https://e.example"));
        assert_eq!(r.region.as_deref(), Some("r1"), "repeated sections merge");
        assert!(conf.remote("absent").unwrap().is_none());

        let err = RcloneConfig::parse("[a]\ntype = s3\nsecret_material_here\n", Path::new("/c"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(!msg.contains("secret_material_here"), "{msg}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let file = rclone_file(RCLONE_CONF);
        let conf = RcloneConfig::load(file.path()).unwrap();
        let conf_debug = format!("{conf:?}");
        let r = conf.remote("nebius").unwrap().unwrap();
        let mut with_token = r.clone();
        with_token.session_token = Some("TOKEN-VALUE".into());
        for text in [conf_debug, format!("{r:?}"), format!("{with_token:#?}")] {
            for secret in [
                "NEBIUSKEYID0000000000",
                "neb/secret+with#hash=and;semicolon",
                "TOKEN-VALUE",
                "minioadmin",
            ] {
                assert!(!text.contains(secret), "{text}");
            }
        }
        let text = format!("{r:?}");
        assert!(
            text.contains("redacted") && text.contains("storage.eu-north1"),
            "{text}"
        );
    }

    #[test]
    fn rclone_default_location_follows_rclone() {
        let home = Some(PathBuf::from("/home/u"));
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        let none = |_: &Path| false;
        assert_eq!(
            rclone_config_path_from(
                env(&[("RCLONE_CONFIG", "/etc/rc.conf")]),
                home.clone(),
                None,
                none
            ),
            Some(PathBuf::from("/etc/rc.conf"))
        );
        if !cfg!(windows) {
            assert_eq!(
                rclone_config_path_from(
                    env(&[("XDG_CONFIG_HOME", "/xdg")]),
                    home.clone(),
                    None,
                    none
                ),
                Some(PathBuf::from("/xdg/rclone/rclone.conf"))
            );
            assert_eq!(
                rclone_config_path_from(env(&[("RCLONE_CONFIG", "")]), home.clone(), None, none),
                Some(PathBuf::from("/home/u/.config/rclone/rclone.conf"))
            );
            let legacy_only = |p: &Path| p == Path::new("/home/u/.rclone.conf");
            assert_eq!(
                rclone_config_path_from(env(&[]), home.clone(), None, legacy_only),
                Some(PathBuf::from("/home/u/.rclone.conf"))
            );
            let both = |_: &Path| true;
            assert_eq!(
                rclone_config_path_from(env(&[]), home, None, both),
                Some(PathBuf::from("/home/u/.config/rclone/rclone.conf"))
            );
        }
        assert_eq!(rclone_config_path_from(env(&[]), None, None, none), None);
    }
}
