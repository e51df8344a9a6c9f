//! From a parsed [`Location`] to a [`Store`] and the key or prefix inside it.
//!
//! A local location becomes a store rooted at the directory the transfer may touch, so
//! that no key can address anything outside it (see `skyhaul_location::local_relative_path`).

use skyhaul_cloud::{AzureOptions, AzureStore, GcsOptions, GcsStore};
use skyhaul_location::{Location, Scheme};
use skyhaul_s3::{S3Options, S3Store};
use skyhaul_store::{Error, ErrorKind, LocalStore, Result, Store};
use std::path::Path;
use std::sync::Arc;

/// Endpoint and credentials of one side of a transfer, for each kind of store it may be.
#[derive(Debug, Clone, Default)]
pub struct SideOptions {
    pub s3: S3Options,
    pub gcs: GcsOptions,
    pub azure: AzureOptions,
}

impl SideOptions {
    /// The custom endpoint this side uses for `scheme`, if any.
    pub fn endpoint(&self, scheme: Scheme) -> Option<&str> {
        match scheme {
            Scheme::S3 => self.s3.endpoint.as_deref(),
            Scheme::Gcs => self.gcs.endpoint.as_deref(),
            Scheme::Azure => self.azure.endpoint.as_deref(),
            Scheme::Local => None,
        }
    }

    /// This side with its requests unsigned, whatever kind of store it is and whatever
    /// credentials the options or the environment hold (`anonymous` false: unchanged).
    pub fn with_anonymous(mut self, anonymous: bool) -> Self {
        self.s3.anonymous |= anonymous;
        self.gcs.anonymous |= anonymous;
        self.azure.anonymous |= anonymous;
        self
    }
}

/// A store plus the key (single object) or prefix (recursive) the user named in it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub store: Arc<dyn Store>,
    pub path: String,
    /// What the user typed, for messages and reports.
    pub display: String,
    /// The location with its endpoint: what identifies it in the journal.
    pub locator: String,
}

/// An object-store location: the store is the bucket, the path the key or prefix in it.
async fn open_bucket(loc: &Location, side: &SideOptions) -> Result<Endpoint> {
    let store: Arc<dyn Store> = match loc.scheme {
        Scheme::S3 => Arc::new(S3Store::connect(&side.s3, &loc.bucket).await?),
        Scheme::Gcs => Arc::new(GcsStore::connect(&side.gcs, &loc.bucket).await?),
        Scheme::Azure => {
            Arc::new(AzureStore::connect(&side.azure, loc.account.as_deref(), &loc.bucket).await?)
        }
        Scheme::Local => unreachable!("local locations are opened by directory"),
    };
    Ok(Endpoint {
        store,
        path: loc.path.clone(),
        locator: locator(loc, side),
        display: loc.to_string(),
    })
}

/// A local location: a store rooted at `root`, and `path` (a file name or empty) in it.
fn local(root: &Path, path: String, display: String) -> Endpoint {
    Endpoint {
        store: Arc::new(LocalStore::new(root)),
        path,
        locator: display.clone(),
        display,
    }
}

fn locator(loc: &Location, side: &SideOptions) -> String {
    match side.endpoint(loc.scheme) {
        Some(e) => format!("{loc} at {e}"),
        None => loc.to_string(),
    }
}

fn split_file(path: &Path, display: &str) -> Result<(std::path::PathBuf, String)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
        }
        _ => Err(Error::new(
            ErrorKind::Other,
            format!("{display}: not a file path"),
        )),
    }
}

/// Opens the source. For a local single file the store is rooted at its directory.
pub async fn open_source(loc: &Location, side: &SideOptions, recursive: bool) -> Result<Endpoint> {
    let display = loc.to_string();
    if loc.scheme != Scheme::Local {
        return open_bucket(loc, side).await;
    }
    let path = loc.local_path();
    let md = std::fs::metadata(&path).map_err(|e| {
        Error::new(
            ErrorKind::NotFound,
            format!("{display}: {e} (check the source path)"),
        )
    })?;
    match (md.is_dir(), recursive) {
        (true, true) => Ok(local(&path, String::new(), display)),
        (true, false) => Err(Error::new(
            ErrorKind::NotFound,
            format!("{display}: is a directory (use -r to copy a directory)"),
        )),
        (false, true) => Err(Error::new(
            ErrorKind::NotFound,
            format!("{display}: is a file, not a directory (for one file, leave out -r; sync takes a directory)"),
        )),
        (false, false) => {
            let (root, name) = split_file(&path, &display)?;
            Ok(local(&root, name, display))
        }
    }
}

/// Opens the destination. A local directory destination (recursive, ending in `/`, or an
/// existing directory) is the store's root; otherwise the root is the parent directory.
/// `for_write` (cp, sync): a local destination under a file fails here, not per object.
pub async fn open_destination(
    loc: &Location,
    side: &SideOptions,
    recursive: bool,
    for_write: bool,
) -> Result<Endpoint> {
    let display = loc.to_string();
    if loc.scheme != Scheme::Local {
        return open_bucket(loc, side).await;
    }
    let path = loc.local_path();
    if recursive || loc.is_dir_form() || path.is_dir() {
        if path.exists() && !path.is_dir() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{display}: exists and is not a directory (choose another destination)"),
            ));
        }
        if for_write {
            no_file_above(&path, &display)?;
        }
        return Ok(local(&path, String::new(), display));
    }
    let (root, name) = split_file(&path, &display)?;
    if for_write {
        no_file_above(&root, &display)?;
    }
    Ok(local(&root, name, display))
}

/// Fails when a file, or a symlink to nothing, stands where a local destination needs a
/// directory, at `root` or further up: nothing could be written under it, so the transfer
/// stops at once (exit 7) rather than fail every object. Anything else is left to the
/// writes to say.
fn no_file_above(root: &Path, display: &str) -> Result<()> {
    // Without a trailing `/`, whose path names the file itself (`file/`).
    let root: std::path::PathBuf = root.components().collect();
    for dir in root.ancestors() {
        let what = match std::fs::metadata(dir) {
            Ok(md) if md.is_dir() => return Ok(()),
            Ok(_) => "a file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::symlink_metadata(dir) {
                    Ok(md) if md.is_symlink() => "a symlink to nothing",
                    _ => continue,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(_) => return Ok(()),
        };
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{display}: {} is {what}, so nothing can be written under it (choose another \
                 destination)",
                dir.display()
            ),
        ));
    }
    Ok(())
}
