//! skyhaul's configuration file, behind `skyhaul config get|set|list|unset KEY [VALUE]`.
//!
//! # Where
//!
//! `$SKYHAUL_CONFIG` when set, otherwise `<user config dir>/skyhaul/config.toml`
//! (`~/.config/skyhaul/config.toml` on Linux, `~/Library/Application Support/skyhaul/config.toml`
//! on macOS, `%APPDATA%\skyhaul\config.toml` on Windows). A missing file is an empty
//! configuration, not an error: nobody has to create one.
//!
//! # What
//!
//! | key | value |
//! |---|---|
//! | `max_connections` | concurrent requests per side, an integer from 1 to 65535 |
//! | `memory_budget` | most bytes buffered at once, a size such as `256M` |
//! | `part_size` | preferred part size for striped objects, a size |
//! | `multipart_threshold` | objects larger than this are striped, a size |
//! | `retries` | retries per request, an integer |
//! | `verify` | `none`, `size`, `checksum` or `deep` |
//! | `journal` | where the transfer journal lives, a path |
//! | `bwlimit` | most bytes per second moved, a rate such as `500M` or `1Gbit` |
//! | `prices` | a price file laid over `skyhaul plan`'s built-in table, a path |
//! | `gcp_adc_file` | where GCP application-default credentials are (a path; `skyhaul init`) |
//! | `azure_env` | the names (never values) of the Azure variables set (`skyhaul init`) |
//! | `remotes.NAME.type` | `s3` (the only kind so far; also the default) |
//! | `remotes.NAME.endpoint` | `https://…` or `http://…` |
//! | `remotes.NAME.region` | e.g. `eu-north1` |
//! | `remotes.NAME.profile` | an AWS shared-config profile holding the credentials |
//! | `remotes.NAME.provider` | free text, as rclone's `provider` (`AWS`, `Cloudflare`, `Other`…) |
//! | `remotes.NAME.requester_pays` | `true` to acknowledge that the requester pays (S3 requester-pays buckets) |
//!
//! Keys may be written with `-` instead of `_` (`max-connections`, like the flags). A named
//! remote makes `NAME:bucket/path` usable wherever a location is expected (see
//! `remotes.rs`); `skyhaul config unset remotes.NAME` removes a whole remote.
//!
//! **Secrets are never stored here.** The file is plain text that ends up in dotfile
//! repositories, backups and screen shares, so keys such as `secret_access_key` or values
//! that look like an access key ID are refused with a pointer to the safe places:
//! a profile (`remotes.NAME.profile`, keys in `~/.aws/credentials`, SSO or
//! `credential_process`), the `SKYHAUL_{SRC,DST}_*` environment variables, or an
//! rclone.conf remote.
//!
//! # Precedence
//!
//! For every setting: **command-line flag > environment variable > this file > built-in
//! default**. The file holds the user's standing preferences; the environment overrides
//! them for a shell or a job script; a flag overrides everything for one command. The CLI
//! applies this order; this module only reads and writes the file.
//!
//! # Format
//!
//! The file is TOML and may be edited by hand; it is validated on load with the same rules
//! as `config set`, so a typo is reported (with the file name) instead of silently ignored.
//! `config set` rewrites the whole file atomically (temporary file + rename, so a crash never
//! leaves half a file) in a canonical layout: comments and unknown keys are not kept.

use crate::size::Size;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The top-level keys, in the order `list` and the file show them.
const GLOBAL_KEYS: [&str; 11] = [
    "max_connections",
    "memory_budget",
    "part_size",
    "multipart_threshold",
    "retries",
    "verify",
    "journal",
    "bwlimit",
    "prices",
    "gcp_adc_file",
    "azure_env",
];

/// The fields of a `remotes.NAME` table, in the order `list` and the file show them.
const REMOTE_FIELDS: [&str; 6] = [
    "type",
    "provider",
    "endpoint",
    "region",
    "profile",
    "requester_pays",
];

/// Keys stored as TOML integers (everything else is a string).
const INTEGER_KEYS: [&str; 2] = ["max_connections", "retries"];

/// Values accepted for `verify`, as the `--verify` flag spells them.
pub const VERIFY_MODES: [&str; 4] = ["none", "size", "checksum", "deep"];

/// Name fragments that mark a key as a credential; checked before anything else so that
/// even a misspelt secret key gets the "never store secrets" answer.
const SECRET_HINTS: [&str; 9] = [
    "secret",
    "password",
    "passwd",
    "token",
    "access_key",
    "accesskey",
    "key_id",
    "credential",
    "api_key",
];

/// What went wrong reading, changing or writing the configuration.
#[derive(Debug)]
pub enum ConfigError {
    /// Not one of the known keys; the message lists them.
    UnknownKey { key: String },
    /// A key or value that would store a credential.
    Secret { key: String, reason: String },
    /// A known key with a value it cannot take.
    InvalidValue {
        key: String,
        value: String,
        expected: String,
    },
    /// The file exists but cannot be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid TOML, or holds keys or values that are not valid (the message
    /// is the same one `config set` would give).
    Invalid { path: PathBuf, message: String },
    /// The file (or its directory) cannot be written.
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Neither `$SKYHAUL_CONFIG` nor a home or config directory is known.
    NoConfigDir,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownKey { key } => {
                write!(f, "unknown config key '{key}'; valid keys: ")?;
                let remote = REMOTE_FIELDS.iter().map(|field| format!("remotes.NAME.{field}"));
                let all: Vec<String> = GLOBAL_KEYS.iter().map(|k| k.to_string()).chain(remote).collect();
                write!(f, "{}", all.join(", "))
            }
            ConfigError::Secret { key, reason } => write!(
                f,
                "'{key}' {reason}: skyhaul's config file never holds secrets; \
                 keep credentials in an AWS profile (`skyhaul config set remotes.NAME.profile PROFILE`, \
                 keys in ~/.aws/credentials, SSO or credential_process), in the environment \
                 (SKYHAUL_SRC_ACCESS_KEY_ID / SKYHAUL_SRC_SECRET_ACCESS_KEY, and DST), \
                 or in an rclone.conf remote"
            ),
            ConfigError::InvalidValue {
                key,
                value,
                expected,
            } => write!(f, "config key '{key}': '{value}' is not {expected}"),
            ConfigError::Read { path, error } => {
                write!(f, "cannot read config file {}: {error}", path.display())
            }
            ConfigError::Invalid { path, message } => write!(
                f,
                "config file {}: {message} (edit the file to fix it)",
                path.display()
            ),
            ConfigError::Write { path, error } => {
                write!(f, "cannot write config file {}: {error}", path.display())
            }
            ConfigError::NoConfigDir => write!(
                f,
                "cannot find a config directory (no home directory); set SKYHAUL_CONFIG to the config file's path"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } | ConfigError::Write { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A named remote as the config file describes it (everything but credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Always `s3` when set; absent means `s3`.
    pub kind: Option<String>,
    pub provider: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    /// `true` or `false` when set.
    pub requester_pays: Option<String>,
}

impl RemoteConfig {
    /// Whether every request to this remote acknowledges that the requester pays.
    pub fn requester_pays(&self) -> bool {
        self.requester_pays.as_deref() == Some("true")
    }

    fn field(&self, field: &str) -> Option<&String> {
        match field {
            "type" => self.kind.as_ref(),
            "provider" => self.provider.as_ref(),
            "endpoint" => self.endpoint.as_ref(),
            "region" => self.region.as_ref(),
            "profile" => self.profile.as_ref(),
            "requester_pays" => self.requester_pays.as_ref(),
            _ => None,
        }
    }

    fn field_mut(&mut self, field: &str) -> &mut Option<String> {
        match field {
            "type" => &mut self.kind,
            "provider" => &mut self.provider,
            "endpoint" => &mut self.endpoint,
            "region" => &mut self.region,
            "requester_pays" => &mut self.requester_pays,
            _ => &mut self.profile,
        }
    }

    fn is_empty(&self) -> bool {
        REMOTE_FIELDS.iter().all(|f| self.field(f).is_none())
    }
}

/// A parsed key: a top-level setting or one field of a named remote.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Global(&'static str),
    Remote { name: String, field: &'static str },
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Global(k) => f.write_str(k),
            Key::Remote { name, field } => write!(f, "remotes.{name}.{field}"),
        }
    }
}

/// The configuration file's contents, validated. Values are kept as the user wrote them
/// (normalised where that is unambiguous: lower-case modes, absolute journal paths) so that
/// `get` shows what `set` was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    globals: BTreeMap<&'static str, String>,
    remotes: BTreeMap<String, RemoteConfig>,
}

/// How a stored value is written in the file: numbers and booleans bare, the rest quoted.
fn toml_text(key: &str, v: &str) -> String {
    if INTEGER_KEYS.contains(&key) || key == "requester_pays" {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}

/// Sets `key` in a file's `table` to `value`, or removes it when `None`, keeping the
/// comments around an existing entry. Other spellings of the key (`max-connections`), which
/// reading accepts, go.
fn put(table: &mut dyn toml_edit::TableLike, key: &str, value: Option<&String>) {
    let other_spellings: Vec<String> = table
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| k != key && k.trim().replace('-', "_") == key)
        .collect();
    for k in other_spellings {
        table.remove(&k);
    }
    let Some(v) = value else {
        table.remove(key);
        return;
    };
    let new: toml_edit::Value = toml_text(key, v).parse().expect("written values parse");
    match table.get_mut(key).and_then(toml_edit::Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(key, toml_edit::Item::Value(new));
        }
    }
}

/// Whether `name` can name a remote: ASCII letters, digits, `_` and `-` (not first, as
/// rclone wants), so that
/// `NAME:bucket/path` is unambiguous and the name is a bare TOML key.
pub fn valid_remote_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a key and returns its canonical spelling (`max-connections` → `max_connections`),
/// so that `config get` can reject a typo instead of printing nothing.
pub fn validate_key(key: &str) -> Result<String> {
    parse_key(key).map(|k| k.to_string())
}

fn parse_key(key: &str) -> Result<Key> {
    let trimmed = key.trim();
    refuse_secret_key(trimmed)?;
    let unknown = || ConfigError::UnknownKey {
        key: key.to_string(),
    };
    if let Some(rest) = trimmed.strip_prefix("remotes.") {
        let (name, field) = rest.rsplit_once('.').ok_or_else(unknown)?;
        let field = field.replace('-', "_");
        let field = REMOTE_FIELDS
            .iter()
            .find(|f| **f == field)
            .ok_or_else(unknown)?;
        if !valid_remote_name(name) {
            return Err(ConfigError::InvalidValue {
                key: key.to_string(),
                value: name.to_string(),
                expected: "a remote name (letters, digits, '_' and '-')".into(),
            });
        }
        return Ok(Key::Remote {
            name: name.to_string(),
            field,
        });
    }
    let canonical = trimmed.replace('-', "_");
    GLOBAL_KEYS
        .iter()
        .find(|k| **k == canonical)
        .map(|k| Key::Global(k))
        .ok_or_else(unknown)
}

fn refuse_secret_key(key: &str) -> Result<()> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    // The remote's name is the user's choice (a remote may well be called "tokens"): only
    // the setting's own name is checked.
    let setting = match lower.strip_prefix("remotes.") {
        Some(rest) => rest.rsplit_once('.').map_or(rest, |(_, field)| field),
        None => &lower,
    };
    if SECRET_HINTS.iter().any(|hint| setting.contains(hint)) {
        return Err(ConfigError::Secret {
            key: key.to_string(),
            reason: "names a credential, not a setting".into(),
        });
    }
    Ok(())
}

/// An endpoint URL as a flag, a variable or the config file gives it: `http://` or
/// `https://`, a host, and no whitespace; a trailing `/` is dropped. A bare host is refused
/// rather than guessed: `localhost:9000` is plain http as often as a cloud host is https.
///
/// A user name and password (`https://user:pass@host`) or a query is refused without being
/// shown: S3 takes neither (each request is signed with the side's keys), and both would
/// be kept in the journal and shown in reports.
pub fn endpoint_url(v: &str) -> Result<String, String> {
    if endpoint_holds_secret(v) {
        return Err(
            "an endpoint holds no user name, password or query ('@' or '?'; the value is not \
             shown, as it may hold a password): give it as http(s)://HOST[:PORT], and the \
             side's keys with a profile or the SKYHAUL_SRC_*/SKYHAUL_DST_* variables"
                .into(),
        );
    }
    let lower = v.to_ascii_lowercase();
    let host = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or("");
    if host.is_empty() || host.starts_with('/') || v.chars().any(char::is_whitespace) {
        return Err(format!(
            "'{v}' is not an endpoint URL: give it whole, with http:// or https://, such as \
             http://localhost:9000 or https://storage.eu-north1.nebius.cloud"
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// Whether an endpoint carries what no endpoint needs and a secret may be: a user name and
/// password (`user:pass@host`, with or without a scheme) or a query (a signature).
fn endpoint_holds_secret(v: &str) -> bool {
    v.contains('@') || v.contains('?')
}

/// An AWS access key ID (`AKIA…` long-term, `ASIA…` temporary): 20 upper-case letters and
/// digits. Refused as a value of any key, because it is a credential in the wrong place.
fn looks_like_access_key_id(value: &str) -> bool {
    value.len() == 20
        && (value.starts_with("AKIA") || value.starts_with("ASIA"))
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Validates `value` for `key` and returns the form to store.
fn normalize(key: &Key, value: &str) -> Result<String> {
    let v = value.trim();
    let invalid = |expected: &str| ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    };
    if looks_like_access_key_id(v) {
        return Err(ConfigError::Secret {
            key: key.to_string(),
            reason: "gets a value that looks like an AWS access key ID".into(),
        });
    }
    let word = |what: &str| {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(invalid(what))
        } else {
            Ok(v.to_string())
        }
    };
    match key {
        Key::Global("max_connections") => match v.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n.to_string()),
            _ => Err(invalid("an integer from 1 to 65535")),
        },
        Key::Global("retries") => v
            .parse::<u32>()
            .map(|n| n.to_string())
            .map_err(|_| invalid("a non-negative integer")),
        Key::Global("memory_budget" | "part_size" | "multipart_threshold") => {
            match v.parse::<Size>() {
                Ok(Size(n)) if n > 0 => Ok(v.to_string()),
                _ => Err(invalid("a size greater than 0 such as 256M, 16MiB or 1G")),
            }
        }
        Key::Global("verify") => {
            let lower = v.to_ascii_lowercase();
            if VERIFY_MODES.contains(&lower.as_str()) {
                Ok(lower)
            } else {
                Err(invalid("one of none, size, checksum, deep"))
            }
        }
        Key::Global("bwlimit") => match v.parse::<crate::size::Rate>() {
            Ok(_) => Ok(v.to_string()),
            Err(_) => Err(invalid("a rate such as 500M (MiB/s) or 1Gbit")),
        },
        Key::Global("azure_env") => {
            let names_only = v.split(',').all(|n| {
                n.starts_with("AZURE_")
                    && n.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            });
            if names_only {
                Ok(v.to_string())
            } else {
                Err(invalid(
                    "comma-separated AZURE_* variable names (never their values)",
                ))
            }
        }
        Key::Global("journal" | "prices" | "gcp_adc_file") => {
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(invalid("a path"));
            }
            // A relative path would mean a different file in every directory skyhaul is
            // run from: pin it to where `config set` was run. `~/…` stays as written.
            if v == "~" || v.starts_with("~/") || Path::new(v).is_absolute() {
                Ok(v.to_string())
            } else {
                std::path::absolute(v)
                    .map(|p| p.to_string_lossy().into_owned())
                    .map_err(|_| invalid("a path"))
            }
        }
        Key::Global(_) => Ok(v.to_string()),
        Key::Remote { field: "type", .. } => {
            let lower = v.to_ascii_lowercase();
            if lower == "s3" {
                Ok(lower)
            } else {
                Err(invalid(
                    "a supported remote type (skyhaul supports type = s3)",
                ))
            }
        }
        Key::Remote {
            field: "endpoint", ..
        } if endpoint_holds_secret(v) => Err(ConfigError::Secret {
            key: key.to_string(),
            reason: "holds a user name and password, or a query (a signature?), in its URL".into(),
        }),
        Key::Remote {
            field: "endpoint", ..
        } => endpoint_url(v)
            .map_err(|_| invalid("an endpoint URL such as https://storage.eu-north1.nebius.cloud")),
        Key::Remote {
            field: "region", ..
        } => word("a region name such as eu-north1"),
        Key::Remote {
            field: "profile", ..
        } => word("a profile name"),
        Key::Remote {
            field: "requester_pays",
            ..
        } => match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok("true".into()),
            "false" | "no" | "off" | "0" => Ok("false".into()),
            _ => Err(invalid("true or false")),
        },
        Key::Remote { .. } => word("a provider name such as AWS, Cloudflare, Minio or Other"),
    }
}

impl Config {
    /// The config file's path: `$SKYHAUL_CONFIG`, else `<config dir>/skyhaul/config.toml`,
    /// else `~/.config/skyhaul/config.toml`.
    pub fn default_path() -> Result<PathBuf> {
        default_path_from(
            std::env::var_os("SKYHAUL_CONFIG").map(PathBuf::from),
            dirs::config_dir(),
            dirs::home_dir(),
        )
    }

    /// Reads and validates the file at `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                })
            }
        };
        Config::parse(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: match e {
                ConfigError::Invalid { message, .. } => message,
                other => other.to_string(),
            },
        })
    }

    /// Parses the text of a config file (errors have an empty path; [`Config::load`] fills
    /// in the real one).
    fn parse(text: &str) -> Result<Config> {
        let invalid = |message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            message,
        };
        let table: toml::Table = text.parse().map_err(|e| invalid(toml_error(text, &e)))?;
        let mut config = Config::default();
        for (key, value) in &table {
            if key == "remotes" {
                let toml::Value::Table(remotes) = value else {
                    return Err(invalid(
                        "'remotes' must be a table of [remotes.NAME] sections".into(),
                    ));
                };
                for (name, remote) in remotes {
                    let toml::Value::Table(fields) = remote else {
                        return Err(invalid(format!(
                            "'remotes.{name}' must be a [remotes.{name}] section"
                        )));
                    };
                    for (field, value) in fields {
                        config.set_value(&format!("remotes.{name}.{field}"), value)?;
                    }
                }
            } else {
                config.set_value(key, value)?;
            }
        }
        Ok(config)
    }

    /// Applies one value read from the file: strings as they are, integers as their
    /// digits (so `part_size = 16777216` works as well as `"16M"`), booleans as words.
    fn set_value(&mut self, key: &str, value: &toml::Value) -> Result<()> {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                parse_key(key)?;
                return Err(ConfigError::InvalidValue {
                    key: key.to_string(),
                    value: other.to_string(),
                    expected: "a string, an integer or a boolean".into(),
                });
            }
        };
        self.set(key, &text)
    }

    /// Writes the configuration to `path` atomically: a temporary file in the same
    /// directory is written, flushed to disk and renamed over the old file, so readers see
    /// the old or the new file, never a mix. Creates the directory if needed; writes
    /// through a symlink (a dotfiles-managed config stays a symlink).
    pub fn save(&self, path: &Path) -> Result<()> {
        let target = match std::fs::canonicalize(path) {
            Ok(real) => real,
            Err(_) => path.to_path_buf(),
        };
        let write_err = |error| ConfigError::Write {
            path: path.to_path_buf(),
            error,
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(write_err)?;
        let existing = std::fs::read_to_string(&target).ok();
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.toml".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
        let result: std::io::Result<()> = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(self.render(existing.as_deref()).as_bytes())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &target)?;
            // Make the rename itself durable where directories can be synced.
            #[cfg(unix)]
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }

    /// The file's new text. Over an existing file, which its owner may have commented or
    /// laid out by hand, each setting and remote is changed, added or removed in place, so
    /// the comments and the order stay; else the canonical layout.
    fn render(&self, existing: Option<&str>) -> String {
        let doc = existing
            .filter(|text| !text.trim().is_empty())
            .and_then(|text| text.parse::<toml_edit::DocumentMut>().ok());
        let Some(mut doc) = doc else {
            return self.to_toml();
        };
        let root = doc.as_table_mut();
        for key in GLOBAL_KEYS {
            put(root, key, self.globals.get(key));
        }
        if !self.remotes.is_empty() && !root.contains_key("remotes") {
            let mut remotes = toml_edit::Table::new();
            remotes.set_implicit(true);
            root.insert("remotes", toml_edit::Item::Table(remotes));
        }
        if let Some(remotes) = root
            .get_mut("remotes")
            .and_then(toml_edit::Item::as_table_like_mut)
        {
            let gone: Vec<String> = remotes
                .iter()
                .map(|(name, _)| name.to_string())
                .filter(|name| !self.remotes.contains_key(name))
                .collect();
            for name in gone {
                remotes.remove(&name);
            }
            for (name, remote) in &self.remotes {
                if !remotes
                    .get(name)
                    .is_some_and(toml_edit::Item::is_table_like)
                {
                    remotes.insert(name, toml_edit::Item::Table(toml_edit::Table::new()));
                }
                let fields = remotes
                    .get_mut(name)
                    .and_then(toml_edit::Item::as_table_like_mut)
                    .expect("just made a table");
                for field in REMOTE_FIELDS {
                    put(fields, field, remote.field(field));
                }
            }
        }
        if self.remotes.is_empty() {
            root.remove("remotes");
        }
        doc.to_string()
    }

    /// The file's text in canonical layout: settings first, then one section per remote.
    fn to_toml(&self) -> String {
        let mut out = String::from(
            "# skyhaul configuration: change it with `skyhaul config set KEY VALUE`.\n\
             # Precedence: command-line flag > environment > this file > built-in default.\n\
             # Never put credentials here: use profiles or environment variables.\n",
        );
        if !self.globals.is_empty() {
            out.push('\n');
        }
        for key in GLOBAL_KEYS {
            if let Some(v) = self.globals.get(key) {
                out.push_str(&format!("{key} = {}\n", toml_text(key, v)));
            }
        }
        for (name, remote) in &self.remotes {
            out.push_str(&format!("\n[remotes.{name}]\n"));
            for field in REMOTE_FIELDS {
                if let Some(v) = remote.field(field) {
                    out.push_str(&format!("{field} = {}\n", toml_text(field, v)));
                }
            }
        }
        out
    }

    /// The value of `key` as stored, or `None` when it is unset or not a known key (use
    /// [`validate_key`] to tell those apart).
    pub fn get(&self, key: &str) -> Option<String> {
        match parse_key(key).ok()? {
            Key::Global(k) => self.globals.get(k).cloned(),
            Key::Remote { name, field } => self.remotes.get(&name)?.field(field).cloned(),
        }
    }

    /// Sets `key` to `value` after validating both.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed = parse_key(key)?;
        let value = normalize(&parsed, value)?;
        match parsed {
            Key::Global(k) => {
                self.globals.insert(k, value);
            }
            Key::Remote { name, field } => {
                *self.remotes.entry(name).or_default().field_mut(field) = Some(value);
            }
        }
        Ok(())
    }

    /// Removes `key` (or, for `remotes.NAME`, the whole remote); returns whether anything
    /// was set. Unknown keys are an error so that a typo does not look like success.
    pub fn unset(&mut self, key: &str) -> Result<bool> {
        if let Some(name) = key.trim().strip_prefix("remotes.") {
            if valid_remote_name(name) {
                return Ok(self.remotes.remove(name).is_some());
            }
        }
        match parse_key(key)? {
            Key::Global(k) => Ok(self.globals.remove(k).is_some()),
            Key::Remote { name, field } => {
                let Some(remote) = self.remotes.get_mut(&name) else {
                    return Ok(false);
                };
                let was_set = remote.field_mut(field).take().is_some();
                if remote.is_empty() {
                    self.remotes.remove(&name);
                }
                Ok(was_set)
            }
        }
    }

    /// Every set key with its value: settings in the documented order, then remotes by
    /// name, each remote's fields in a fixed order.
    pub fn list(&self) -> Vec<(String, String)> {
        let globals = GLOBAL_KEYS
            .iter()
            .filter_map(|k| Some((k.to_string(), self.globals.get(k)?.clone())));
        let remotes = self.remotes.iter().flat_map(|(name, remote)| {
            REMOTE_FIELDS.iter().filter_map(move |field| {
                Some((
                    format!("remotes.{name}.{field}"),
                    remote.field(field)?.clone(),
                ))
            })
        });
        globals.chain(remotes).collect()
    }

    pub fn max_connections(&self) -> Option<u16> {
        self.globals.get("max_connections")?.parse().ok()
    }

    pub fn memory_budget(&self) -> Option<u64> {
        self.size("memory_budget")
    }

    pub fn part_size(&self) -> Option<u64> {
        self.size("part_size")
    }

    pub fn multipart_threshold(&self) -> Option<u64> {
        self.size("multipart_threshold")
    }

    pub fn retries(&self) -> Option<u32> {
        self.globals.get("retries")?.parse().ok()
    }

    /// One of [`VERIFY_MODES`], lower case, as the `--verify` flag takes it.
    pub fn verify(&self) -> Option<&str> {
        self.globals.get("verify").map(String::as_str)
    }

    /// The journal path, with a leading `~` expanded to the home directory.
    pub fn journal(&self) -> Option<PathBuf> {
        self.path("journal")
    }

    /// The price file laid over `plan`'s built-in table.
    pub fn prices(&self) -> Option<PathBuf> {
        self.path("prices")
    }

    pub fn bwlimit(&self) -> Option<u64> {
        self.globals
            .get("bwlimit")?
            .parse::<crate::size::Rate>()
            .ok()
            .map(|r| r.0)
    }

    /// A path setting, with a leading `~` expanded to the home directory.
    fn path(&self, key: &str) -> Option<PathBuf> {
        let raw = self.globals.get(key)?;
        let home = dirs::home_dir();
        match (raw.as_str(), raw.strip_prefix("~/"), home) {
            ("~", _, Some(home)) => Some(home),
            (_, Some(rest), Some(home)) => Some(home.join(rest)),
            _ => Some(PathBuf::from(raw)),
        }
    }

    /// The named remote, if the config defines it.
    pub fn remote(&self, name: &str) -> Option<&RemoteConfig> {
        self.remotes.get(name)
    }

    /// The names of the configured remotes, sorted.
    pub fn remote_names(&self) -> impl Iterator<Item = &str> {
        self.remotes.keys().map(String::as_str)
    }

    fn size(&self, key: &str) -> Option<u64> {
        self.globals.get(key)?.parse::<Size>().ok().map(|s| s.0)
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
/// A TOML syntax error of `text` as "line L, column C: what", for a one-line error.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// [`Config::default_path`] with its inputs passed in, so it can be tested without
/// changing the process environment.
fn default_path_from(
    env: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf> {
    if let Some(path) = env.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(path);
    }
    config_dir
        .or_else(|| home.map(|h| h.join(".config")))
        .map(|dir| dir.join("skyhaul").join("config.toml"))
        .ok_or(ConfigError::NoConfigDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (k, v) in pairs {
            c.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        c
    }

    #[test]
    fn every_key_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("config.toml");
        let config = set(&[
            ("max_connections", "32"),
            ("memory_budget", "1G"),
            ("part_size", "64MiB"),
            ("multipart_threshold", "100M"),
            ("retries", "0"),
            ("verify", "Deep"),
            ("journal", "/var/lib/skyhaul/journal.db"),
            ("remotes.nebius.type", "S3"),
            ("remotes.nebius.provider", "Other"),
            (
                "remotes.nebius.endpoint",
                "https://storage.eu-north1.nebius.cloud/",
            ),
            ("remotes.nebius.region", "eu-north1"),
            ("remotes.nebius.profile", "nebius"),
            ("remotes.nebius.requester-pays", "Yes"),
            (
                "remotes.r2.endpoint",
                "https://acc0123.r2.cloudflarestorage.com",
            ),
            ("remotes.r2.region", "auto"),
        ]);
        config.save(&path).unwrap();
        let loaded = Config::load(&path).unwrap();
        assert_eq!(loaded, config);
        assert_eq!(loaded.max_connections(), Some(32));
        assert_eq!(loaded.memory_budget(), Some(1 << 30));
        assert_eq!(loaded.part_size(), Some(64 << 20));
        assert_eq!(loaded.multipart_threshold(), Some(100 << 20));
        assert_eq!(loaded.retries(), Some(0));
        assert_eq!(loaded.verify(), Some("deep"));
        assert_eq!(
            loaded.journal(),
            Some(PathBuf::from("/var/lib/skyhaul/journal.db"))
        );
        assert_eq!(loaded.get("remotes.nebius.type").as_deref(), Some("s3"));
        let nebius = loaded.remote("nebius").unwrap();
        assert_eq!(
            nebius.endpoint.as_deref(),
            Some("https://storage.eu-north1.nebius.cloud"),
            "trailing / removed"
        );
        assert!(nebius.requester_pays());
        assert!(!loaded.remote("r2").unwrap().requester_pays());
        assert_eq!(loaded.remote_names().collect::<Vec<_>>(), ["nebius", "r2"]);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("max_connections = 32\n"), "{text}");
        assert!(text.contains("part_size = \"64MiB\"\n"), "{text}");
        assert!(text.contains("\nrequester_pays = true\n"), "{text}");
        assert!(
            text.contains("\n[remotes.nebius]\ntype = \"s3\"\n"),
            "{text}"
        );
    }

    #[test]
    fn hand_written_files_load_including_integer_sizes_and_dashes() {
        let c = Config::parse(
            "# mine\nmax-connections = 8\npart_size = 16777216\nverify = \"size\"\n\n\
             [remotes.minio]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\n\
             requester_pays = true\n",
        )
        .unwrap();
        assert!(c.remote("minio").unwrap().requester_pays());
        assert_eq!(c.max_connections(), Some(8));
        assert_eq!(c.part_size(), Some(16 << 20));
        assert_eq!(c.verify(), Some("size"));
        assert_eq!(
            c.remote("minio").unwrap().endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(c.remote("minio").unwrap().kind, None, "type defaults to s3");
    }

    #[test]
    fn missing_file_is_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&dir.path().join("none.toml")).unwrap();
        assert!(c.list().is_empty());
        assert_eq!(c.max_connections(), None);
        assert_eq!(c.journal(), None);
    }

    #[test]
    fn invalid_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let cases = [
            (
                "max_conections = 8\n",
                "unknown config key 'max_conections'",
            ),
            ("max_connections = 0\n", "an integer from 1 to 65535"),
            ("verify = true\n", "one of none, size, checksum, deep"),
            ("part_size = [1]\n", "a string, an integer or a boolean"),
            ("[remotes.a]\nrequester_pays = \"maybe\"\n", "true or false"),
            ("this is not toml\n", ""),
            ("remotes = 3\n", "[remotes.NAME]"),
            ("[remotes]\nx = 1\n", "[remotes.x]"),
            (
                "[remotes.a]\ncolour = \"red\"\n",
                "unknown config key 'remotes.a.colour'",
            ),
            (
                "[remotes.a]\nsecret_access_key = \"x\"\n",
                "never holds secrets",
            ),
            ("[remotes.a]\ntype = \"drive\"\n", "type = s3"),
            ("[remotes.\"a b\"]\nregion = \"x\"\n", "remote name"),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(&path).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, ConfigError::Invalid { .. }),
                "{text}: {err:?}"
            );
            assert!(msg.contains(&path.display().to_string()), "{text}: {msg}");
            assert!(msg.contains(expected), "{text}: {msg}");
        }
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let mut c = Config::default();
        let err = c.set("colour", "blue").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("unknown config key 'colour'"), "{msg}");
        for k in GLOBAL_KEYS {
            assert!(msg.contains(k), "{msg}");
        }
        assert!(msg.contains("remotes.NAME.endpoint"), "{msg}");
        for bad in [
            "remotes",
            "remotes.x",
            "remotes.x.y",
            "remotes..endpoint",
            "",
        ] {
            assert!(c.set(bad, "v").is_err(), "{bad}");
            assert!(validate_key(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_key("max-connections").unwrap(), "max_connections");
        assert_eq!(
            validate_key("remotes.my-r2.endpoint").unwrap(),
            "remotes.my-r2.endpoint"
        );
        assert_eq!(c.get("colour"), None);
    }

    #[test]
    fn values_are_validated() {
        let bad = [
            ("max_connections", "0"),
            ("max_connections", "65536"),
            ("max_connections", "-1"),
            ("max_connections", "many"),
            ("retries", "-1"),
            ("retries", "1.5"),
            ("memory_budget", "0"),
            ("part_size", "12X"),
            ("multipart_threshold", ""),
            ("verify", "fast"),
            ("journal", ""),
            ("remotes.a.type", "drive"),
            ("remotes.a.endpoint", "storage.example.com"),
            ("remotes.a.endpoint", "ftp://x"),
            ("remotes.a.endpoint", "https://"),
            ("remotes.a.endpoint", "https://a b"),
            ("remotes.a.region", "eu north"),
            ("remotes.a.region", ""),
            ("remotes.a.profile", ""),
            ("remotes.a.provider", "two words"),
            ("remotes.a:b.region", "x"),
        ];
        let mut c = Config::default();
        for (k, v) in bad {
            let err = c.set(k, v).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{k}={v}: {err:?}"
            );
            assert!(err.to_string().contains(k), "{k}={v}: {err}");
        }
        assert!(c.list().is_empty(), "nothing was stored");
        c.set("retries", " 3 ").unwrap();
        assert_eq!(c.get("retries").as_deref(), Some("3"));
        c.set("remotes.a.endpoint", "HTTP://Localhost:9000")
            .unwrap();
    }

    #[test]
    fn secrets_are_refused_with_a_pointer_to_profiles() {
        let mut c = Config::default();
        for key in [
            "remotes.a.secret_access_key",
            "remotes.a.access_key_id",
            "remotes.a.session_token",
            "remotes.a.Secret-Access-Key",
            "aws_secret_access_key",
            "password",
            "remotes.a.credentials",
        ] {
            let err = c.set(key, "x").unwrap_err();
            assert!(matches!(err, ConfigError::Secret { .. }), "{key}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("profile") && msg.contains("SKYHAUL_SRC_ACCESS_KEY_ID"),
                "{msg}"
            );
            assert!(!msg.contains("valid keys"), "{msg}");
        }
        let err = c
            .set("remotes.a.profile", "AKIAIOSFODNN7EXAMPLE")
            .unwrap_err();
        assert!(matches!(err, ConfigError::Secret { .. }), "{err:?}");
        assert!(!err.to_string().contains("AKIAIOSFODNN7EXAMPLE"), "{err}");
        // Nor in an endpoint's URL, where S3 takes none: not stored, not shown.
        for url in [
            "https://user:PASSWORD@s3.example.com",
            "https://s3.example.com/?X-Amz-Signature=PASSWORD",
            "user:PASSWORD@minio:9000",
            "https:/user:PASSWORD@s3.example.com",
        ] {
            let err = c.set("remotes.a.endpoint", url).unwrap_err();
            assert!(matches!(err, ConfigError::Secret { .. }), "{err:?}");
            assert!(!err.to_string().contains("PASSWORD"), "{err}");
            let flag = endpoint_url(url).unwrap_err();
            assert!(!flag.contains("PASSWORD"), "{flag}");
        }
        assert!(c.get("remotes.a.endpoint").is_none());
        // A remote's own name is not a setting name.
        c.set("remotes.tokens.region", "us-east-1").unwrap();
        assert!(c.set("remotes.tokens.secret", "x").is_err());
    }

    #[test]
    fn unset_removes_keys_fields_and_whole_remotes() {
        let mut c = set(&[
            ("retries", "3"),
            ("remotes.a.region", "r"),
            ("remotes.a.profile", "p"),
            ("remotes.b.region", "r"),
        ]);
        assert!(c.unset("retries").unwrap());
        assert!(!c.unset("retries").unwrap(), "already unset");
        assert_eq!(c.get("retries"), None);
        assert!(c.unset("remotes.a.region").unwrap());
        assert!(c.remote("a").is_some(), "profile still set");
        assert!(c.unset("remotes.a.profile").unwrap());
        assert!(c.remote("a").is_none(), "an empty remote disappears");
        assert!(!c.unset("remotes.zzz.region").unwrap());
        assert!(c.unset("remotes.b").unwrap());
        assert!(!c.unset("remotes.b").unwrap());
        assert!(c.list().is_empty());
        assert!(matches!(
            c.unset("colour"),
            Err(ConfigError::UnknownKey { .. })
        ));
    }

    #[test]
    fn list_is_in_documented_order() {
        let c = set(&[
            ("remotes.zeta.region", "z"),
            ("verify", "size"),
            ("remotes.alpha.profile", "p"),
            ("max_connections", "16"),
            ("remotes.alpha.endpoint", "https://a.example"),
            ("journal", "~/j.db"),
        ]);
        let keys: Vec<String> = c.list().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "max_connections",
                "verify",
                "journal",
                "remotes.alpha.endpoint",
                "remotes.alpha.profile",
                "remotes.zeta.region",
            ]
        );
        assert_eq!(c.list()[0].1, "16");
        if let Some(home) = dirs::home_dir() {
            assert_eq!(c.journal(), Some(home.join("j.db")));
        }
    }

    #[test]
    fn relative_journal_paths_are_pinned_when_set() {
        let c = set(&[("journal", "state/j.db")]);
        let stored = PathBuf::from(c.get("journal").unwrap());
        assert!(stored.is_absolute(), "{stored:?}");
        assert!(stored.ends_with("state/j.db"));
    }

    #[test]
    fn save_is_atomic_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "retries = 1\n").unwrap();
        let c = set(&[("retries", "7")]);
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap().retries(), Some(7));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["config.toml"],
            "the temporary file was renamed away"
        );

        // When the write cannot happen, the old file is untouched and nothing is left over.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            let ro_path = ro.join("config.toml");
            std::fs::write(&ro_path, "retries = 1\n").unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
            let writable = std::fs::write(ro.join("probe"), "").is_ok(); // root ignores modes
            if !writable {
                let err = c.save(&ro_path).unwrap_err();
                assert!(matches!(err, ConfigError::Write { .. }), "{err:?}");
                assert!(err.to_string().contains("config.toml"), "{err}");
                assert_eq!(std::fs::read_to_string(&ro_path).unwrap(), "retries = 1\n");
                assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1);
            }
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn save_keeps_the_files_comments_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let before = "# my settings\nretries = 1 # two was too many\nmax-connections = 4\n\n\
                      # the lab's MinIO\n[remotes.lab]\nendpoint = \"http://minio:9000\" # via VPN\n\n\
                      [remotes.old]\nendpoint = \"http://old:9000\"\n";
        std::fs::write(&path, before).unwrap();
        let mut c = Config::load(&path).unwrap();
        c.set("retries", "3").unwrap();
        c.set("max_connections", "8").unwrap();
        c.set("remotes.lab.profile", "lab").unwrap();
        c.unset("remotes.old").unwrap();
        c.set("remotes.new.endpoint", "http://new:9000").unwrap();
        c.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for kept in [
            "# my settings\nretries = 3 # two was too many\n",
            "max_connections = 8\n",
            "# the lab's MinIO\n[remotes.lab]\nendpoint = \"http://minio:9000\" # via VPN\n",
            "profile = \"lab\"",
            "[remotes.new]\nendpoint = \"http://new:9000\"",
        ] {
            assert!(text.contains(kept), "{kept:?} not in:\n{text}");
        }
        assert!(
            !text.contains("old") && !text.contains("max-connections"),
            "{text}"
        );
        assert_eq!(Config::load(&path).unwrap(), c);
        // Unsetting the last remote leaves no empty `remotes` table behind.
        c.unset("remotes.lab").unwrap();
        c.unset("remotes.new").unwrap();
        c.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("remotes"), "{text}");
        assert_eq!(Config::load(&path).unwrap(), c);
    }

    #[cfg(unix)]
    #[test]
    fn save_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles").join("skyhaul.toml");
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        set(&[("retries", "2")]).save(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(Config::load(&real).unwrap().retries(), Some(2));
    }

    #[test]
    fn strings_are_escaped_in_the_file() {
        let c = set(&[("journal", "/tmp/we\"ird\\path #x.db")]);
        let parsed = Config::parse(&c.to_toml()).unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn empty_config_saves_a_loadable_file() {
        let c = Config::default();
        assert!(Config::parse(&c.to_toml()).unwrap().list().is_empty());
    }

    #[test]
    fn default_path_prefers_the_environment() {
        let p = default_path_from(
            Some(PathBuf::from("/etc/sky.toml")),
            Some(PathBuf::from("/cfg")),
            None,
        );
        assert_eq!(p.unwrap(), PathBuf::from("/etc/sky.toml"));
        let p = default_path_from(Some(PathBuf::new()), Some(PathBuf::from("/cfg")), None);
        assert_eq!(p.unwrap(), PathBuf::from("/cfg/skyhaul/config.toml"));
        let p = default_path_from(None, None, Some(PathBuf::from("/home/u")));
        assert_eq!(
            p.unwrap(),
            PathBuf::from("/home/u/.config/skyhaul/config.toml")
        );
        assert!(matches!(
            default_path_from(None, None, None),
            Err(ConfigError::NoConfigDir)
        ));
        assert!(Config::default_path().is_ok());
    }
}
