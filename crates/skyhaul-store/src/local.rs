//! The local (or shared: NFS, Lustre, FUSE) file system as a [`Store`].
//!
//! Keys are paths relative to a root directory, `/`-separated. Writes go to a hidden
//! temporary file beside the target and are renamed into place only when complete, so a
//! reader (or a crash) never finds a partial file under its final name. Multipart uploads
//! write parts at their offsets into that same temporary file, which makes its name (derived
//! from key and upload id) the whole serialisable upload state.

use crate::{
    Chunks, CompletedPart, Error, ErrorKind, Fetched, Limits, MultipartUpload, ObjectMeta,
    PartSpec, Payload, PutOptions, Result, Store, Streamed, Written,
};
use futures::stream::{BoxStream, StreamExt};
use skyhaul_location::local_relative_path;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Suffix of in-progress files; listings skip them so a resumed sync never copies one.
const TMP_SUFFIX: &str = ".skyhaul-tmp";

mod beneath;
mod leftovers;
mod stream;
mod version;
use beneath::Dirs;
use leftovers::{tmp_parts, Leftovers};
pub use stream::CHUNK as LOCAL_CHUNK;
use version::Version;
/// Keys are sent to the engine in pages of this many to keep channel overhead low.
const LIST_PAGE: usize = 1000;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    name: String,
    /// Directories a write has looked for [`leftovers`] in: once is enough. Shared by the
    /// store's clones; bounded (cleared when full), since keys come in listing order and
    /// their directories in runs.
    dirs_looked: Arc<Mutex<HashSet<PathBuf>>>,
    /// Temporary files that writes stopped by a crash left ([`leftovers`]), removed once
    /// their key is written again.
    leftovers: Arc<Mutex<Leftovers>>,
    /// The temporary files of the multipart uploads this process writes, each held open
    /// and locked from its creation (or, for an upload an earlier run began, its first
    /// part here) to its completion or abort: between parts too, another process's sweep
    /// must see a live write, not a dead one's leftover.
    uploads: Arc<Mutex<HashMap<PathBuf, Arc<Held>>>>,
    /// The root, held open from the check before a transfer (or the first write or
    /// deletion) to the end: see [`LocalStore::root_fd`].
    root_fd: Arc<Mutex<Option<OwnedFd>>>,
}

/// A multipart upload's temporary file, held open and locked, and the directory it is in.
#[derive(Debug)]
struct Held {
    file: File,
    dirs: Dirs,
}

/// How many directories [`LocalStore::dirs_looked`] holds before it starts again.
const DIRS_LOOKED: usize = 4096;

impl LocalStore {
    /// A store rooted at `root`; every key resolves strictly below it.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let name = root.display().to_string();
        LocalStore {
            root,
            name,
            dirs_looked: Arc::default(),
            leftovers: Arc::default(),
            uploads: Arc::default(),
            root_fd: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let rel = local_relative_path(key)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("{}: {e}", self.name)))?;
        // Listings skip such files: one written under that name would never be seen again.
        if rel.file_name().is_some_and(|n| is_tmp_name(n.as_bytes())) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "{}: {key}: a file system keeps no key of the form .NAME.ID{TMP_SUFFIX}: skyhaul names its temporary files so",
                    self.name
                ),
            ));
        }
        Ok(self.root.join(rel))
    }

    fn tmp_path(&self, key: &str, upload_id: &str) -> Result<PathBuf> {
        let mut tmp = tmp_stem(&self.path_of(key)?).into_os_string();
        tmp.push(format!("{upload_id}{TMP_SUFFIX}"));
        Ok(tmp.into())
    }

    /// The error of a read that saw the file change (a writer at work).
    fn changed(&self, key: &str) -> Error {
        Error::new(
            ErrorKind::SourceChanged,
            format!(
                "{}: file changed while it was being copied",
                self.shown(key)
            ),
        )
    }

    /// Opens the file of `key` at `path`, refused when it is no longer the version `expect`
    /// describes. Blocking.
    fn open_version(
        &self,
        key: &str,
        path: &Path,
        expect: Option<&ObjectMeta>,
    ) -> Result<(File, Version)> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound if expect.is_some() => Error::new(
                ErrorKind::NotFound,
                format!(
                    "{}: deleted since it was listed (a rerun leaves it out)",
                    self.shown(key)
                ),
            ),
            _ => self.io_err(key, "cannot open", e),
        })?;
        let md = file
            .metadata()
            .map_err(|e| self.io_err(key, "cannot stat", e))?;
        match expect.is_some_and(|e| !same_version(&md, e)) {
            true => Err(self.changed(key)),
            false => Ok((file, Version::of(md))),
        }
    }

    /// Fills `buf` from `offset`; a file that ends too early has changed. Blocking.
    fn read_at(&self, key: &str, file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
        read_exact_at(file, buf, offset).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.changed(key),
            _ => self.io_err(key, "cannot read", e),
        })
    }

    /// Fails when the file is no longer the `version` opened: a writer may have changed the
    /// bytes just read. `read` is the [`Version::hasher`] of a whole read. Blocking.
    fn unchanged(
        &self,
        key: &str,
        file: &File,
        version: &Version,
        read: Option<crc_fast::Digest>,
    ) -> Result<()> {
        match version.unchanged(file, read) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.changed(key)),
            Err(e) => Err(self.io_err(key, "cannot read again", e)),
        }
    }

    fn io_err(&self, key: &str, what: &str, e: io::Error) -> Error {
        io_error(&self.shown(key), what, e)
    }

    /// `key` as messages show it: under the store's name.
    fn shown(&self, key: &str) -> String {
        format!("{}/{key}", self.name.trim_end_matches('/'))
    }
}

/// Maps an I/O error to the kind the engine acts on, with a message that says what to do.
fn io_error(target: &str, what: &str, e: io::Error) -> Error {
    use io::ErrorKind as K;
    let (kind, hint) = match e.kind() {
        K::NotFound => (ErrorKind::NotFound, ""),
        K::PermissionDenied => (ErrorKind::AccessDenied, " (check file permissions)"),
        K::StorageFull => (
            ErrorKind::NoSpace,
            " (free space on the destination and rerun)",
        ),
        // create_dir_all over an existing file reports AlreadyExists.
        K::NotADirectory | K::AlreadyExists => (
            ErrorKind::Conflict,
            " (a parent of this path exists as a file, so it cannot be a directory)",
        ),
        K::IsADirectory | K::DirectoryNotEmpty => (
            ErrorKind::Conflict,
            " (a directory exists where this file must go)",
        ),
        K::InvalidInput if e.get_ref().is_some_and(|e| e.is::<NotAFile>()) => (
            ErrorKind::Conflict,
            " (choose another destination, or remove it)",
        ),
        K::InvalidInput if e.get_ref().is_some_and(|e| e.is::<ThroughSymlink>()) => (
            ErrorKind::Conflict,
            " (copy into the link's target as a destination of its own, or leave it out \
             with --exclude)",
        ),
        K::Interrupted | K::TimedOut | K::WouldBlock => (ErrorKind::Transient, ""),
        _ => (ErrorKind::Other, ""),
    };
    Error::new(kind, format!("{target}: {what}: {e}{hint}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::new(
            ErrorKind::Other,
            format!("I/O task failed: {e}"),
        ))
    })
}

fn meta_of(key: String, md: &fs::Metadata) -> ObjectMeta {
    let mut m = ObjectMeta::new(key, md.len());
    m.mtime = md.modified().ok();
    m
}

/// Checks that a file still is the version the listing saw.
fn same_version(md: &fs::Metadata, expect: &ObjectMeta) -> bool {
    md.len() == expect.size && (expect.mtime.is_none() || md.modified().ok() == expect.mtime)
}

fn read_exact_at(file: &File, buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while reading",
                ))
            }
            Ok(n) => {
                done += n;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What stands where a write must go and is no regular file, symlink or directory: a
/// device, FIFO or socket, which renaming a finished file into place would replace (as root,
/// `skyhaul cp f /dev/null` would put a file in place of the machine's `/dev/null`).
#[derive(Debug)]
struct NotAFile;

impl std::fmt::Display for NotAFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a device, FIFO or socket is there, and skyhaul writes only regular files")
    }
}

impl std::error::Error for NotAFile {}

/// What the names of `path`'s temporary files start with: `.NAME.`, then the upload's id.
fn tmp_stem(path: &Path) -> PathBuf {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the temporary name within NAME_MAX (255 bytes) even for a 255-byte base name: the
    // rest of it takes 30. In bytes, at a character boundary: 180 characters of `é` or `日`
    // would be 360 or 540 bytes.
    path.with_file_name(format!(".{}.", &base[..base.floor_char_boundary(180)]))
}

/// A symlink where a write must pass through a directory below the store's root. Writes
/// do not follow it: listings do not (a cycle would make them endless), so what a write
/// put behind it would land outside the destination, where no check, sync or delete could
/// see it, and every sync would copy it again.
#[derive(Debug)]
struct ThroughSymlink(PathBuf);

impl std::fmt::Display for ThroughSymlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is a symlink: skyhaul writes only beneath the destination, and its \
             listings do not follow symlinks to directories",
            self.0.display()
        )
    }
}

impl std::error::Error for ThroughSymlink {}

impl LocalStore {
    /// Opens the directories from the root down to `path`'s parent ([`Dirs`]), making
    /// those missing when `create`. The first write into a directory looks for leftovers
    /// there.
    fn dirs(&self, path: &Path, create: bool) -> io::Result<Dirs> {
        let dirs = self.open_dirs(path, create, false)?;
        if create && self.first_look(dirs.path()) {
            match leftovers::temporaries(&dirs) {
                Ok(found) => self.leftovers().add(found),
                Err(e) => tracing::debug!(
                    "cannot look for leftovers in {}: {e}",
                    dirs.path().display()
                ),
            }
        }
        Ok(dirs)
    }

    /// [`Dirs::open`] of `path`'s directory below the root.
    fn open_dirs(&self, path: &Path, create: bool, chain: bool) -> io::Result<Dirs> {
        let below = path
            .parent()
            .and_then(|p| p.strip_prefix(&self.root).ok())
            .ok_or(io::ErrorKind::InvalidInput)?;
        Dirs::open(&self.root, self.root_fd(create)?, below, create, chain)
    }

    /// The root's descriptor, opened (made, when missing and `create`) once and then kept:
    /// a root swapped for a symlink while the transfer runs (a deploy flipping a `current`
    /// link to another tree) keeps the writes and deletions in the directory that was
    /// checked and listed, where they would otherwise go to the link's target, whose files
    /// no listing saw (a `sync --delete` deleted them by the names it had listed).
    fn root_fd(&self, create: bool) -> io::Result<OwnedFd> {
        let mut held = self.root_fd.lock().expect("root lock");
        if let Some(fd) = held.as_ref() {
            return fd.try_clone();
        }
        let fd = Dirs::open_root(&self.root, create)?;
        let copy = fd.try_clone()?;
        *held = Some(fd);
        Ok(copy)
    }

    /// Whether no write has looked for leftovers in `dir` yet; from now on, one has.
    fn first_look(&self, dir: &Path) -> bool {
        let mut looked = self.dirs_looked.lock().expect("dirs_looked lock");
        if looked.contains(dir) {
            return false;
        }
        if looked.len() >= DIRS_LOOKED {
            looked.clear();
        }
        looked.insert(dir.to_path_buf())
    }

    /// After `path` was written into `dirs`: removes the temporary files that stopped
    /// writes of it left.
    fn written(&self, dirs: &Dirs, path: &Path) {
        let found = self.leftovers().take(&tmp_stem(path));
        for tmp in found {
            leftovers::remove_if_abandoned(dirs, file_name(&tmp));
        }
    }

    fn leftovers(&self) -> std::sync::MutexGuard<'_, Leftovers> {
        self.leftovers.lock().expect("leftovers lock")
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Held>>> {
        self.uploads.lock().expect("uploads lock")
    }

    /// The multipart upload's temporary file, held ([`LocalStore::uploads`]): opened and
    /// locked on its first use here. An upload another live process holds is written all
    /// the same, unheld, as the store's concurrency has always allowed.
    fn held_upload(&self, tmp: &Path) -> io::Result<Arc<Held>> {
        if let Some(held) = self.uploads().get(tmp) {
            return Ok(held.clone());
        }
        let dirs = self.dirs(tmp, false)?;
        let replaced = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                "its temporary file was replaced (by a link, or by something that is no file)",
            )
        };
        let file = match dirs.open_file(file_name(tmp), true) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(replaced())
            }
            opened => opened?,
        };
        // Made by `create_multipart` as a file of its own: one with another name too (a hard
        // link put there since, to a file outside the destination) is not written into.
        let md = file.metadata()?;
        if !md.is_file() || md.nlink() != 1 {
            return Err(replaced());
        }
        let held = Arc::new(Held { file, dirs });
        if held.file.try_lock().is_ok() {
            self.uploads().insert(tmp.to_path_buf(), held.clone());
        }
        Ok(held)
    }

    /// Moves the finished temporary file `tmp` (in `from`) to `path`, whose directories are
    /// opened again: the file goes where the key belongs now, or nowhere if a symlink
    /// stands in the way since the write began. The directories of `path`, for
    /// [`LocalStore::written`].
    fn move_into_place(&self, from: &Dirs, tmp: &Path, path: &Path) -> io::Result<Dirs> {
        let to = self.dirs(path, true)?;
        Dirs::rename(from, file_name(tmp), &to, file_name(path))?;
        Ok(to)
    }
}

/// The last component of a path made by [`LocalStore::path_of`], which has one.
fn file_name(path: &Path) -> &OsStr {
    path.file_name().expect("a key's path ends with a name")
}

fn set_mtime(file: &File, mtime: Option<SystemTime>) -> io::Result<()> {
    match mtime {
        Some(t) => file.set_modified(t),
        None => Ok(()),
    }
}

/// Walks `dir` depth-first so that keys come out in ascending byte order: within a
/// directory, a subdirectory `d` sorts as `d/`, exactly where its keys sort among the
/// siblings' keys. This is what lets sync merge-join a local tree with a bucket listing.
struct Walker {
    root: PathBuf,
    /// Pending entries per open directory, reversed so that `pop` yields the smallest.
    stack: Vec<Vec<Pending>>,
    /// The key prefix (relative directory with trailing `/`) of each stack level.
    prefixes: Vec<String>,
}

/// A directory entry not yet walked.
struct Pending {
    /// Its name, with `/` after a directory's: what it sorts by among its siblings' keys.
    /// A name that is not UTF-8 is shown with `�` for the bytes that are not, and sorts
    /// so, which keeps the key of the error it becomes in order with the others.
    sort_key: String,
    is_dir: bool,
    /// Whether the name is UTF-8, so that it can be a key.
    is_key: bool,
}

impl Walker {
    fn open(&mut self, rel_dir: String) -> io::Result<()> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(self.root.join(&rel_dir))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.as_bytes();
            let ft = entry.file_type()?;
            if ft.is_file() && is_tmp_name(name) {
                tracing::debug!("skipping {}: a temporary file", entry.path().display());
                continue;
            }
            // Symbolic links are followed for files; links to directories are skipped
            // so that a cycle cannot make the walk endless.
            let ft = if ft.is_symlink() {
                match fs::metadata(entry.path()) {
                    Ok(m) if m.is_dir() => {
                        tracing::warn!("skipping symlink to directory {}", entry.path().display());
                        continue;
                    }
                    Ok(m) => m.file_type(),
                    Err(e) => {
                        tracing::warn!("skipping symlink {}: {e}", entry.path().display());
                        continue;
                    }
                }
            } else {
                ft
            };
            // A FIFO would block the read forever, and a device has no end.
            if !ft.is_dir() && !ft.is_file() {
                tracing::warn!(
                    "skipping {}: not a regular file (a FIFO, socket or device)",
                    entry.path().display()
                );
                continue;
            }
            let is_dir = ft.is_dir();
            let shown = String::from_utf8_lossy(name);
            // Borrowed when the name is UTF-8 already.
            let is_key = matches!(shown, std::borrow::Cow::Borrowed(_));
            let mut sort_key = shown.into_owned();
            if is_dir {
                sort_key.push('/');
            }
            entries.push(Pending {
                sort_key,
                is_dir,
                is_key,
            });
        }
        entries.sort_unstable_by(|a, b| b.sort_key.cmp(&a.sort_key));
        self.stack.push(entries);
        self.prefixes.push(rel_dir);
        Ok(())
    }

    /// The next file in key order, as (key, metadata). A directory that cannot be read and
    /// a name that is no key are errors about that entry alone ([`Error::unlisted`]); the
    /// walk goes on past them. An entry removed since its directory was read is left out.
    fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            let entries = self.stack.last_mut()?;
            let Some(Pending {
                sort_key,
                is_dir,
                is_key,
            }) = entries.pop()
            else {
                self.stack.pop();
                self.prefixes.pop();
                continue;
            };
            let key = format!(
                "{}{sort_key}",
                self.prefixes.last().map_or("", String::as_str)
            );
            if !is_key {
                let err = Error::new(
                    ErrorKind::InvalidKey,
                    format!(
                        "{}/{key}: name is not UTF-8, so it cannot be a key; rename it, or \
                         leave it out of a copy with --exclude",
                        self.root.display()
                    ),
                );
                return Some(Err(err.of_unlisted(key)));
            }
            let found = match is_dir {
                true => self.open(key.clone()).map(|()| None),
                false => {
                    fs::metadata(self.root.join(&key)).map(|md| Some(meta_of(key.clone(), &md)))
                }
            };
            match found {
                Ok(Some(meta)) => return Some(Ok(meta)),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let what = if is_dir {
                        "cannot list directory"
                    } else {
                        "cannot stat"
                    };
                    let path = self.root.join(&key).display().to_string();
                    let mut err = io_error(&path, what, e);
                    err.message
                        .push_str("; or leave it out of a copy with --exclude");
                    return Some(Err(err.of_unlisted(key)));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    /// A destination's root, when it exists, is held from now on ([`LocalStore::root_fd`]),
    /// before it is listed. One that is missing is made by the first write; what is there
    /// instead (a file) is for that write to report.
    async fn preflight(&self, for_write: bool) -> Result<()> {
        if for_write {
            let this = self.clone();
            blocking(move || {
                let _ = this.root_fd(false);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> Limits {
        Limits {
            min_part_size: 1,
            max_part_size: u64::MAX,
            max_parts: u32::MAX,
            max_single_put: u64::MAX,
        }
    }

    fn rereads_are_free(&self) -> bool {
        true
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Result<ObjectMeta>>>(4);
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        // The walk is blocking I/O: run it on its own thread and stream pages out of it.
        tokio::task::spawn_blocking(move || {
            let dir = match prefix.rfind('/') {
                Some(i) => prefix[..=i].to_string(),
                None => String::new(),
            };
            let mut walker = Walker {
                root: root.clone(),
                stack: Vec::new(),
                prefixes: Vec::new(),
            };
            match walker.open(dir.clone()) {
                Ok(()) => {}
                // A directory that does not exist yet holds no objects.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return
                }
                Err(e) => {
                    let err = io_error(&root.join(&dir).display().to_string(), "cannot list", e);
                    let _ = tx.blocking_send(vec![Err(err)]);
                    return;
                }
            }
            let mut page = Vec::with_capacity(LIST_PAGE);
            while let Some(item) = walker.next() {
                let key = match &item {
                    Ok(m) => Some(m.key.as_str()),
                    Err(e) => e.unlisted.as_deref(),
                };
                if key.is_some_and(|k| {
                    !k.starts_with(&prefix) || start_after.as_deref().is_some_and(|s| k <= s)
                }) {
                    continue;
                }
                page.push(item);
                if page.len() == LIST_PAGE && tx.blocking_send(std::mem::take(&mut page)).is_err() {
                    return;
                }
            }
            let _ = tx.blocking_send(page);
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .flat_map(futures::stream::iter)
            .boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let this = self.clone();
        blocking(move || match fs::metadata(&path) {
            Ok(md) if md.is_file() => Ok(Some(meta_of(key, &md))),
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(this.io_err(&key, "cannot stat", e)),
        })
        .await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        expect: Option<&ObjectMeta>,
    ) -> Result<Fetched> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let expect = expect.cloned();
        let this = self.clone();
        blocking(move || {
            let (file, version) = this.open_version(&key, &path, expect.as_ref())?;
            let whole = 0..version.metadata().len();
            let range = range.unwrap_or(whole.clone());
            let len = (range.end - range.start) as usize;
            let mut buf = crate::buffers::take(len);
            buf.resize(len, 0);
            this.read_at(&key, &file, &mut buf, range.start)?;
            // A part's bytes are checked against the whole file's by the engine.
            let read = version.hasher().filter(|_| range == whole);
            let read = read.map(|mut digest| {
                digest.update(&buf);
                digest
            });
            this.unchanged(&key, &file, &version, read)?;
            Ok(Fetched {
                data: crate::buffers::freeze(buf),
                ..Default::default()
            })
        })
        .await
    }

    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<Written> {
        let path = self.path_of(key)?;
        let upload_id = random_id();
        let tmp = self.tmp_path(key, &upload_id)?;
        let key = key.to_string();
        let mtime = opts.mtime;
        let this = self.clone();
        blocking(move || {
            let dirs = this
                .dirs(&path, true)
                .map_err(|e| this.io_err(&key, "cannot write", e))?;
            let write = || -> io::Result<()> {
                let file = dirs.create_new(file_name(&tmp))?;
                leftovers::hold(&file);
                file.write_all_at(&body.data, 0)?;
                set_mtime(&file, mtime)?;
                Dirs::rename(&dirs, file_name(&tmp), &dirs, file_name(&path))
            };
            write().map_err(|e| {
                let _ = dirs.remove(file_name(&tmp));
                this.io_err(&key, "cannot write", e)
            })?;
            this.written(&dirs, &path);
            Ok(Written::default())
        })
        .await
    }

    fn streams(&self) -> bool {
        true
    }

    async fn get_stream(&self, key: &str, expect: Option<&ObjectMeta>) -> Result<Streamed> {
        stream::get_stream(self, key, expect).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: Chunks,
        _md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<Written> {
        stream::put_stream(self, key, body, opts).await?;
        Ok(Written::default())
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<MultipartUpload> {
        let upload = MultipartUpload {
            key: key.to_string(),
            upload_id: random_id(),
        };
        let tmp = self.tmp_path(key, &upload.upload_id)?;
        let path = self.path_of(key)?;
        let size = opts.size;
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            let dirs = this
                .dirs(&path, true)
                .map_err(|e| this.io_err(&key, "cannot create", e))?;
            let create = || -> io::Result<File> {
                dirs.refuse_special(file_name(&path))?;
                let file = dirs.create_new(file_name(&tmp))?;
                leftovers::hold(&file);
                file.set_len(size)?;
                Ok(file)
            };
            match create() {
                Ok(file) => {
                    this.uploads().insert(tmp, Arc::new(Held { file, dirs }));
                    Ok(())
                }
                Err(e) => {
                    let _ = dirs.remove(file_name(&tmp));
                    Err(this.io_err(&key, "cannot create", e))
                }
            }
        })
        .await?;
        Ok(upload)
    }

    async fn put_part(
        &self,
        upload: &MultipartUpload,
        part: PartSpec,
        body: Payload,
    ) -> Result<CompletedPart> {
        let tmp = self.tmp_path(&upload.key, &upload.upload_id)?;
        let key = upload.key.clone();
        let this = self.clone();
        blocking(move || {
            let held = this
                .held_upload(&tmp)
                .map_err(|e| this.io_err(&key, "upload no longer exists", e))?;
            held.file
                .write_all_at(&body.data, part.offset)
                .map_err(|e| this.io_err(&key, "cannot write part", e))?;
            Ok(CompletedPart {
                number: part.number,
                len: part.len,
                etag: String::new(),
                opaque_etag: false,
            })
        })
        .await
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[CompletedPart],
        opts: &PutOptions,
    ) -> Result<Written> {
        let tmp = self.tmp_path(&upload.key, &upload.upload_id)?;
        let path = self.path_of(&upload.key)?;
        let mtime = opts.mtime;
        let total: u64 = parts.iter().map(|p| p.len).sum();
        let key = upload.key.clone();
        let this = self.clone();
        blocking(move || {
            // Held until it is in place: no sweep can take it in between.
            let held = this
                .held_upload(&tmp)
                .map_err(|e| this.io_err(&key, "upload no longer exists", e))?;
            let len = held
                .file
                .metadata()
                .map_err(|e| this.io_err(&key, "cannot stat", e))?
                .len();
            if len != total {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "{}: the upload's temporary file holds {len} bytes where its parts add \
                         up to {total}: something else changed it since they were written; \
                         the next run copies this object afresh",
                        this.shown(&key)
                    ),
                ));
            }
            set_mtime(&held.file, mtime).map_err(|e| this.io_err(&key, "cannot set mtime", e))?;
            // On disk before its name: the file was made full size at its creation, so after a
            // power loss its unwritten parts would read as zeros of the right size and date,
            // which no size-and-mtime comparison (`sync`'s) tells from the object. Files
            // written whole or streamed grow as their bytes reach the disk, so a power loss
            // leaves them short, which `sync` finds; they are not flushed one by one (it cost
            // half again the time of 16 KiB files on ext4).
            held.file
                .sync_data()
                .map_err(|e| this.io_err(&key, "cannot flush to disk", e))?;
            let dirs = this
                .move_into_place(&held.dirs, &tmp, &path)
                .map_err(|e| this.io_err(&key, "cannot move into place", e))?;
            this.uploads().remove(&tmp);
            this.written(&dirs, &path);
            Ok(Written::default())
        })
        .await
    }

    /// The temporary files under `prefix` that no live write holds: the uploads of keys
    /// there whose id was never journaled, and the files of whole-object writes that a
    /// crash stopped, which aborting removes alike.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let (this, prefix) = (self.clone(), prefix.to_string());
        blocking(move || {
            leftovers::open_uploads(&this.root, &prefix)
                .map_err(|e| this.io_err(&prefix, "cannot list open uploads", e))
        })
        .await
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        let tmp = self.tmp_path(&upload.key, &upload.upload_id)?;
        let this = self.clone();
        blocking(move || {
            // From the directory it was made in, where an upload of this process is held.
            let removed = match this.uploads().remove(&tmp) {
                Some(held) => held.dirs.remove(file_name(&tmp)),
                None => this
                    .dirs(&tmp, false)
                    .and_then(|dirs| dirs.remove(file_name(&tmp))),
            };
            match removed {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(&tmp.display().to_string(), "cannot remove", e)),
            }
        })
        .await
    }

    /// Deletes the file, then the directories above it that this left empty, up to the
    /// root: object stores have no directories, so a sync that deleted every file of one
    /// would otherwise leave its empty skeleton behind (as rsync and rclone do not).
    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        let this = self.clone();
        blocking(move || {
            let dirs = match this.open_dirs(&path, false, true) {
                Ok(dirs) => dirs,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(this.io_err(&key, "cannot delete", e)),
            };
            match dirs.remove(file_name(&path)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(this.io_err(&key, "cannot delete", e)),
            }
            dirs.remove_empty();
            Ok(())
        })
        .await
    }
}

/// Hex digits in an upload's id: a temporary file's name ends with it.
const ID_LEN: usize = 16;

fn random_id() -> String {
    format!("{:0ID_LEN$x}", rand::random::<u64>())
}

/// Whether `name` is one that [`LocalStore::tmp_path`] makes: `.NAME.ID.skyhaul-tmp`, the
/// ID [`ID_LEN`] lower-case hex digits ([`random_id`]). Only such names are skipped by listings, so
/// a user's `.notes.skyhaul-tmp` is still copied.
fn is_tmp_name(name: &[u8]) -> bool {
    tmp_parts(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `data` as part `number` of `upload`, at `offset`.
    async fn send_part(
        store: &LocalStore,
        upload: &MultipartUpload,
        number: u32,
        offset: u64,
        data: impl Into<bytes::Bytes>,
    ) -> Result<CompletedPart> {
        let data: bytes::Bytes = data.into();
        let len = data.len() as u64;
        let spec = PartSpec {
            number,
            offset,
            len,
        };
        store
            .put_part(upload, spec, Payload { data, md5: None })
            .await
    }

    #[test]
    fn only_the_temporary_form_is_a_temporary_name() {
        let made = format!(".data.bin.{}{TMP_SUFFIX}", random_id());
        assert!(is_tmp_name(made.as_bytes()), "{made}");
        for theirs in [
            ".notes.skyhaul-tmp",
            "x.0123456789abcdef.skyhaul-tmp",
            "..0123456789abcdef.skyhaul-tmp",
            ".a.0123456789ABCDEF.skyhaul-tmp",
            ".a.0123456789abcde.skyhaul-tmp",
            ".a.0123456789abcdef.skyhaul-tmp.txt",
        ] {
            assert!(!is_tmp_name(theirs.as_bytes()), "{theirs}");
        }
    }

    /// A name the file system takes has a temporary name it takes too, whatever its
    /// characters: 240 bytes of `é` or `日` (120 and 80 characters) made 270-byte names,
    /// and every write of such a key failed with "File name too long".
    #[test]
    fn long_names_of_any_characters_have_temporary_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        for name in [
            "é".repeat(120),
            "日".repeat(80),
            "x".repeat(255),
            "é".repeat(127),
        ] {
            let tmp = store.tmp_path(&name, &random_id()).unwrap();
            let tmp_name = tmp.file_name().unwrap().as_encoded_bytes();
            assert!(tmp_name.len() <= 255, "{}", tmp_name.len());
            assert!(is_tmp_name(tmp_name));
            File::create(&tmp).unwrap();
            File::create(dir.path().join(&name)).unwrap();
        }
    }

    /// The uploads under a prefix are the temporary files of its keys, at any depth, that
    /// no live write holds; aborting one removes its file.
    #[tokio::test]
    async fn open_uploads_are_the_temporary_files_no_write_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let tmp = |key: &str, id: &str| {
            let path = store.tmp_path(key, id).unwrap();
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            File::create(&path).unwrap()
        };
        tmp("a/b.bin", "000000000000000a");
        tmp("a/bc/d.bin", "000000000000000b");
        tmp("a/c.bin", "000000000000000c");
        let writing = tmp("a/b.bin", "000000000000000d");
        writing.lock().unwrap();
        let upload = |key: &str, id: &str| MultipartUpload {
            key: key.into(),
            upload_id: id.into(),
        };
        let mut open = store.list_uploads("a/b").await.unwrap();
        open.sort_by(|x, y| x.key.cmp(&y.key));
        let found = vec![
            upload("a/b.bin", "000000000000000a"),
            upload("a/bc/d.bin", "000000000000000b"),
        ];
        assert_eq!(open, found);
        assert_eq!(store.list_uploads("nowhere/").await.unwrap(), vec![]);
        store.abort_multipart(&found[0]).await.unwrap();
        let left = store.list_uploads("a/b.bin").await.unwrap();
        assert_eq!(left, vec![], "aborted; the held one is not listed");
        drop(writing);
        let left = store.list_uploads("a/b.bin").await.unwrap();
        assert_eq!(left, vec![upload("a/b.bin", "000000000000000d")]);
    }

    /// A multipart upload is a live write between its parts too: another process (here,
    /// another store, whose files lock apart from this one's) neither lists it as an upload
    /// to abort nor removes its file when it writes the same key, and the upload completes.
    #[tokio::test]
    async fn a_multipart_upload_is_held_between_its_parts() {
        let dir = tempfile::tempdir().unwrap();
        let (mine, theirs) = (LocalStore::new(dir.path()), LocalStore::new(dir.path()));
        let opts = PutOptions {
            size: 8,
            ..Default::default()
        };
        let payload = |data: &'static [u8]| Payload {
            data: bytes::Bytes::from_static(data),
            md5: None,
        };
        let upload = mine.create_multipart("d/k", &opts).await.unwrap();
        let first = send_part(&mine, &upload, 1, 0, &b"abcd"[..]).await;
        assert_eq!(theirs.list_uploads("d/").await.unwrap(), vec![]);
        let whole = PutOptions {
            size: 3,
            ..Default::default()
        };
        theirs.put("d/k", payload(b"xyz"), &whole).await.unwrap();
        let second = send_part(&mine, &upload, 2, 4, &b"efgh"[..]).await;
        let parts = [first.unwrap(), second.unwrap()];
        mine.complete_multipart(&upload, &parts, &opts)
            .await
            .unwrap();
        assert_eq!(fs::read(dir.path().join("d/k")).unwrap(), b"abcdefgh");
        assert!(mine.uploads().is_empty(), "released once in place");
        assert_eq!(theirs.list_uploads("d/").await.unwrap(), vec![]);
    }

    /// An upload resumed by another process (a rerun) whose temporary file was replaced by a
    /// hard link to a file elsewhere, or by a symlink, writes nothing into it: the upload
    /// is gone, and the engine starts the object afresh in the same run. The parts had gone
    /// into the other file (hard link), or failed the object (symlink).
    #[tokio::test]
    async fn a_resumed_upload_does_not_write_through_a_link() {
        for hard in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (root, outside) = (dir.path().join("dst"), dir.path().join("victim"));
            fs::write(&outside, b"precious").unwrap();
            let opts = PutOptions {
                size: 8,
                ..Default::default()
            };
            let upload = LocalStore::new(&root)
                .create_multipart("k", &opts)
                .await
                .unwrap();
            let tmp = LocalStore::new(&root)
                .tmp_path("k", &upload.upload_id)
                .unwrap();
            fs::remove_file(&tmp).unwrap();
            match hard {
                true => fs::hard_link(&outside, &tmp).unwrap(),
                false => std::os::unix::fs::symlink(&outside, &tmp).unwrap(),
            }
            let rerun = LocalStore::new(&root);
            let err = send_part(&rerun, &upload, 1, 0, &b"XXXXXXXX"[..])
                .await
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::NotFound, "hard: {hard}: {err}");
            assert!(err.message.contains("was replaced"), "{err}");
            assert_eq!(fs::read(&outside).unwrap(), b"precious");
        }
    }

    /// A temporary file cut short between a run's parts and their completion (by something
    /// else) fails the completion saying what happened and what the next run does.
    #[tokio::test]
    async fn a_temporary_file_cut_short_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let opts = PutOptions {
            size: 8,
            ..Default::default()
        };
        let upload = store.create_multipart("k", &opts).await.unwrap();
        let sent = send_part(&store, &upload, 1, 0, &b"abcdefgh"[..])
            .await
            .unwrap();
        let tmp = store.tmp_path("k", &upload.upload_id).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_len(3)
            .unwrap();
        let err = store
            .complete_multipart(&upload, &[sent], &opts)
            .await
            .unwrap_err();
        assert!(
            err.message
                .contains("temporary file holds 3 bytes where its parts add up to 8")
                && err
                    .message
                    .contains("the next run copies this object afresh"),
            "{err}"
        );
        assert!(!dir.path().join("k").exists());
    }

    /// A striped file is on disk before it takes its name (see `complete_multipart`): no
    /// extent of it is still delayed (`filefrag` shows FIEMAP's flags) the moment it is in
    /// place, where the kernel would otherwise write it back within 30 s. File systems
    /// without FIEMAP (tmpfs) cannot tell, and say so.
    #[tokio::test]
    async fn a_striped_file_is_on_disk_before_it_takes_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        const PART: u64 = 4 << 20;
        let opts = PutOptions {
            size: 2 * PART,
            ..Default::default()
        };
        let upload = store.create_multipart("k", &opts).await.unwrap();
        let mut parts = Vec::new();
        for (number, offset) in [(1, 0), (2, PART)] {
            let data = vec![number as u8; PART as usize];
            parts.push(
                send_part(&store, &upload, number, offset, data)
                    .await
                    .unwrap(),
            );
        }
        store
            .complete_multipart(&upload, &parts, &opts)
            .await
            .unwrap();
        let path = dir.path().join("k");
        let frag = std::process::Command::new("filefrag")
            .arg("-v")
            .arg(&path)
            .output()
            .expect("filefrag (e2fsprogs) runs");
        let shown = String::from_utf8_lossy(&frag.stdout);
        if !frag.status.success() {
            eprintln!(
                "not checked: no FIEMAP here: {}",
                String::from_utf8_lossy(&frag.stderr)
            );
            return;
        }
        assert!(
            !shown.contains("delalloc"),
            "still in memory only:\n{shown}"
        );
        assert!(shown.contains("extent"), "{shown}");
    }
}
