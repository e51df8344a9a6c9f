//! Writes and deletions beneath the store's root that pass through no symlink below it.
//!
//! Looking at a path and then writing by that path is a race: another process may swap a
//! directory of the destination for a symlink in between, and the write lands where the
//! link points, outside the destination (a `sync --delete` deletes there). So every write
//! and deletion walks down from the root one directory at a time, opening each with
//! `O_NOFOLLOW`, and then acts on a name within the directory it holds open (`openat`,
//! `renameat`, `unlinkat`): whatever is swapped after that, the file goes into, or is
//! removed from, the very directory that was checked.

use super::{NotAFile, ThroughSymlink};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How the directories are opened: only to be gone through (`O_PATH`, where there is one),
/// so that a directory that may be written but not read (a drop box) can be written into,
/// as a write by path could.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEARCH: OFlags = OFlags::PATH;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEARCH: OFlags = OFlags::RDONLY;

const DIR: OFlags = SEARCH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// The directories from the root down to one below it: the deepest held open, and for a
/// deletion every one above it too ([`Dirs::open`]).
#[derive(Debug)]
pub(super) struct Dirs {
    /// The root's descriptor first, then one per directory below it; for a write only the
    /// deepest.
    fds: Vec<OwnedFd>,
    /// The name of each directory below the root, in the one before it (for a deletion).
    names: Vec<OsString>,
    /// The deepest directory's path, for the names of what is found in it.
    path: PathBuf,
}

impl Dirs {
    /// Opens the root `root` (which may itself be, or lie under, a symlink), making it when
    /// it is missing and `create`: for [`Dirs::open`].
    pub(super) fn open_root(root: &Path, create: bool) -> io::Result<OwnedFd> {
        match rustix::fs::openat(CWD, root, DIR, Mode::empty()) {
            Err(e) if e == rustix::io::Errno::NOENT && create => {
                fs::create_dir_all(root)?;
                Ok(rustix::fs::openat(CWD, root, DIR, Mode::empty())?)
            }
            opened => Ok(opened?),
        }
    }

    /// Opens the directories from the root (`root_fd`, opened by [`Dirs::open_root`] at
    /// `root`) down to `dir`, a relative path below it, making those that are missing when
    /// `create`. A symlink on the way is refused ([`ThroughSymlink`]); a file is no
    /// directory. Each directory above the deepest is closed once the next is open, unless
    /// `chain` (a deletion, which then removes the directories it emptied): a write into a
    /// deep tree, and a striped one between its parts, holds one descriptor, not one per
    /// level (a few hundred writes 40 levels down used up a limit of 1,024).
    pub(super) fn open(
        root: &Path,
        root_fd: OwnedFd,
        dir: &Path,
        create: bool,
        chain: bool,
    ) -> io::Result<Dirs> {
        let mut dirs = Dirs {
            fds: vec![root_fd],
            names: Vec::new(),
            path: root.to_path_buf(),
        };
        for part in dir.components() {
            let name = match part {
                Component::Normal(name) => name,
                Component::CurDir => continue,
                _ => return Err(io::ErrorKind::InvalidInput.into()),
            };
            let fd = dirs.enter(name, DIR | OFlags::NOFOLLOW, create)?;
            dirs.path.push(name);
            if !chain {
                dirs.fds.clear();
            }
            dirs.fds.push(fd);
            if chain {
                dirs.names.push(name.to_os_string());
            }
        }
        Ok(dirs)
    }

    /// Opens the directory `name` in the deepest one, made first when missing and `create`.
    fn enter(&self, name: &OsStr, flags: OFlags, create: bool) -> io::Result<OwnedFd> {
        // Twice at most: a directory made by another write at the same moment is opened
        // on the second turn.
        for attempt in 0.. {
            match rustix::fs::openat(self.fd(), name, flags, Mode::empty()) {
                Ok(fd) => return Ok(fd),
                Err(e) if e == rustix::io::Errno::NOENT && create => {
                    match rustix::fs::mkdirat(self.fd(), name, Mode::from_raw_mode(0o777)) {
                        Ok(()) => {}
                        Err(e) if e == rustix::io::Errno::EXIST && attempt == 0 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // A symlink (ELOOP, or ENOTDIR on some systems) or a file.
                Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                    return Err(match self.kind(name)? {
                        Some(FileType::Symlink) => io::Error::new(
                            io::ErrorKind::InvalidInput,
                            ThroughSymlink(self.path.join(name)),
                        ),
                        _ => io::ErrorKind::NotADirectory.into(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    fn fd(&self) -> &OwnedFd {
        self.fds.last().expect("the root at least")
    }

    /// The deepest directory's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// What `name` is, not following a symlink; `None` when nothing has that name.
    fn kind(&self, name: &OsStr) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses to write to `name` when [`NotAFile`] stands there: before a rename, and
    /// before a long write begins.
    pub(super) fn refuse_special(&self, name: &OsStr) -> io::Result<()> {
        match self.kind(name)? {
            Some(FileType::RegularFile | FileType::Symlink | FileType::Directory) | None => Ok(()),
            Some(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, NotAFile)),
        }
    }

    /// Creates the file `name`, which must not exist (not even as a symlink).
    pub(super) fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(
            self.fd(),
            name,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )?;
        Ok(File::from(fd))
    }

    /// Opens the existing file `name`, not through a symlink: for writing, or for reading.
    /// Without waiting: a FIFO put in a file's place would block the open for good.
    pub(super) fn open_file(&self, name: &OsStr, write: bool) -> io::Result<File> {
        let access = if write {
            OFlags::WRONLY
        } else {
            OFlags::RDONLY
        };
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            self.fd(),
            name,
            flags,
            Mode::empty(),
        )?))
    }

    /// Moves `from`'s file `name` to `to`'s file `to_name`, unless [`NotAFile`] stands
    /// there.
    pub(super) fn rename(from: &Dirs, name: &OsStr, to: &Dirs, to_name: &OsStr) -> io::Result<()> {
        to.refuse_special(to_name)?;
        Ok(rustix::fs::renameat(from.fd(), name, to.fd(), to_name)?)
    }

    /// Removes the file (or symlink) `name`.
    pub(super) fn remove(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(self.fd(), name, AtFlags::empty())?)
    }

    /// Removes the directories below the root that are empty, deepest first, up to the
    /// first that is not. Only for directories opened as a `chain` ([`Dirs::open`]).
    pub(super) fn remove_empty(&self) {
        for (parent, name) in self.fds.iter().zip(&self.names).rev() {
            if rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).is_err() {
                break;
            }
        }
    }

    /// The names of the deepest directory's regular files.
    pub(super) fn files(&self) -> io::Result<Vec<OsString>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let readable = rustix::fs::openat(self.fd(), ".", flags, Mode::empty())?;
        let mut found = Vec::new();
        for entry in rustix::fs::Dir::new(readable)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            let file = match entry.file_type() {
                FileType::Unknown => self.kind(name)? == Some(FileType::RegularFile),
                kind => kind == FileType::RegularFile,
            };
            if file {
                found.push(name.to_os_string());
            }
        }
        Ok(found)
    }
}
