//! Temporary files left by writes that a crash or `kill -9` stopped half way.
//!
//! Such a write never renames its `.NAME.ID.skyhaul-tmp` into place nor removes it, and
//! listings skip it: hidden, as large as its object, it would stay for good, one for each
//! write in flight at every kill. A write in progress holds an exclusive lock (`flock`) on its
//! file, which the kernel releases when the process ends however it ends; a multipart upload
//! holds it from its creation to its end, between parts too. So a temporary file that nobody
//! holds is a dead write's, or an upload of a process that is gone.
//!
//! The temporary files of a directory are looked for once, on the first write into it, and
//! those of a key are removed once the key has been written again: a rerun copies every object
//! the stopped run did not finish, so it comes to each of them. Removing them only then
//! leaves another transfer's multipart upload, which it may still resume, alone unless this
//! one replaces its key.

use super::{Dirs, ID_LEN, TMP_SUFFIX};
use crate::MultipartUpload;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Temporary files found, by their stem ([`stem_of`]): a key's own are those of its stem.
/// A directory looked at again (after `dirs_checked` forgot it) may find this process's
/// own temporary files too: harmless, since a file is removed only once its key has been
/// written, and only if no live write holds it.
#[derive(Debug, Default)]
pub(super) struct Leftovers {
    found: HashMap<PathBuf, HashSet<PathBuf>>,
}

impl Leftovers {
    /// Adds the temporary files [`temporaries`] found.
    pub(super) fn add(&mut self, found: Vec<PathBuf>) {
        for tmp in found {
            let stem = stem_of(&tmp).expect("a temporary name");
            self.found.entry(stem).or_default().insert(tmp);
        }
    }

    /// The temporary files found of the key whose temporary files start with `stem`.
    pub(super) fn take(&mut self, stem: &Path) -> HashSet<PathBuf> {
        self.found.remove(stem).unwrap_or_default()
    }
}

/// The parts of a temporary file's name, `.NAME.ID.skyhaul-tmp`: `.NAME.` (its stem) and the
/// ID, [`ID_LEN`] lower-case hex digits. `None` for any other name.
pub(super) fn tmp_parts(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = name.strip_suffix(TMP_SUFFIX.as_bytes())?;
    let (stem, id) = rest.split_at_checked(rest.len().checked_sub(ID_LEN)?)?;
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    let named = stem.len() >= 3 && stem[0] == b'.' && stem.ends_with(b".");
    (named && id.iter().all(hex)).then_some((stem, id))
}

/// `path`'s stem: the path of its temporary file without the ID and suffix.
fn stem_of(tmp: &Path) -> Option<PathBuf> {
    let (stem, _) = tmp_parts(tmp.file_name()?.as_bytes())?;
    Some(tmp.with_file_name(std::ffi::OsStr::from_bytes(stem)))
}

/// The temporary files (regular files of the temporary form) in `dirs`' deepest directory.
pub(super) fn temporaries(dirs: &Dirs) -> io::Result<Vec<PathBuf>> {
    let names = dirs.files()?.into_iter();
    let tmp = names.filter(|name| tmp_parts(name.as_bytes()).is_some());
    Ok(tmp.map(|name| dirs.path().join(name)).collect())
}

/// The temporary files of keys that start with `prefix` (relative to `root`) that no live
/// write holds, as the uploads they are: a multipart upload's file is its whole state, and
/// a whole-object write's is an upload of one part that can only be aborted.
pub(super) fn open_uploads(root: &Path, prefix: &str) -> io::Result<Vec<MultipartUpload>> {
    let (dir, start) = match prefix.rsplit_once('/') {
        Some((dir, start)) => (format!("{dir}/"), start),
        None => (String::new(), prefix),
    };
    let mut uploads = Vec::new();
    let mut dirs = vec![(dir, start.as_bytes().to_vec())];
    while let Some((dir, start)) = dirs.pop() {
        let entries = match fs::read_dir(root.join(&dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let kind = entry.file_type()?;
            if kind.is_dir() && name.as_bytes().starts_with(&start) {
                dirs.push((format!("{dir}{name}/"), Vec::new()));
                continue;
            }
            let Some((stem, id)) = tmp_parts(name.as_bytes()) else {
                continue;
            };
            let base = &stem[1..stem.len() - 1];
            let unheld = || File::open(entry.path()).ok().and_then(abandoned).is_some();
            if kind.is_file() && base.starts_with(&start) && unheld() {
                uploads.push(MultipartUpload {
                    key: format!("{dir}{}", String::from_utf8_lossy(base)),
                    upload_id: String::from_utf8_lossy(id).into_owned(),
                });
            }
        }
    }
    Ok(uploads)
}

/// Takes the lock a write holds while it runs. Where the file system has no locks (some
/// network file systems) the write goes on without: its file is then never taken for a dead
/// write's either, since [`abandoned`] cannot lock it.
pub(super) fn hold(file: &File) {
    if let Err(e) = file.lock() {
        tracing::debug!("cannot lock a temporary file: {e}");
    }
}

/// Whether no live write holds the temporary file `tmp`, with the lock that says so, which
/// keeps any write from taking the file while it is dropped.
fn abandoned(tmp: File) -> Option<File> {
    tmp.try_lock().ok()?;
    Some(tmp)
}

/// Removes the temporary file `name` in `dirs` if it is a dead write's; whether it did.
pub(super) fn remove_if_abandoned(dirs: &Dirs, name: &OsStr) -> bool {
    let tmp = dirs.path().join(name);
    let Some(_held) = dirs.open_file(name, false).ok().and_then(abandoned) else {
        return false;
    };
    match dirs.remove(name) {
        Ok(()) => {
            tracing::info!(
                "removed {}, left by a write that was stopped",
                tmp.display()
            );
            true
        }
        Err(e) => {
            tracing::debug!("cannot remove {}: {e}", tmp.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_names_parts() {
        let name = b".data.bin.0123456789abcdef.skyhaul-tmp";
        let parts = tmp_parts(name).unwrap();
        assert_eq!(parts, (&b".data.bin."[..], &b"0123456789abcdef"[..]));
        assert_eq!(tmp_parts(b".skyhaul-tmp"), None);
    }

    #[test]
    fn only_a_file_no_write_holds_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let name = OsStr::new(".k.0123456789abcdef.skyhaul-tmp");
        let tmp = dir.path().join(name);
        let writing = File::create(&tmp).unwrap();
        hold(&writing);
        let root = Dirs::open_root(dir.path(), false).unwrap();
        let dirs = Dirs::open(dir.path(), root, Path::new(""), false, false).unwrap();
        assert!(!remove_if_abandoned(&dirs, name), "a live write's");
        assert!(tmp.exists());
        drop(writing);
        assert!(remove_if_abandoned(&dirs, name), "a dead write's");
        assert!(!tmp.exists());
        assert!(!remove_if_abandoned(&dirs, name), "gone");
    }
}
