//! Whether a file read from start to end was one version of it all along.
//!
//! A writer changes a file's size, mtime or ctime, and ctime cannot be set back (`touch -d`
//! sets back the mtime only), so a file whose metadata after the read is as it was before
//! was not written meanwhile: except within one tick of the file system's clock. Where
//! timestamps have 1-second (ext4 with small inodes, many NFS and SMB mounts) or 2-second
//! (FAT) granularity, a write in the same second as the one before it leaves every timestamp
//! as it was, and the read would give out old bytes and new ones as if they were one file.
//! So a file written in the last seconds before its read began ("racy", as git calls such
//! index entries) has its bytes hashed as they are read and read again at the end.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, SystemTime};

/// How recently a file may have been written for a same-tick write to go unseen: FAT's 2 s
/// and a second for the clocks of a file server and this machine to differ.
const RACY: Duration = Duration::from_secs(3);

/// The checksum of a racy read's bytes.
const CRC: crc_fast::CrcAlgorithm = crc_fast::CrcAlgorithm::Crc64Nvme;

/// A file as a read found it when it began.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    md: Metadata,
    racy: bool,
}

impl Version {
    /// The version `md` (the open file's metadata) describes, found now.
    pub(crate) fn of(md: Metadata) -> Version {
        let since = SystemTime::now() - RACY;
        let ctime = u64::try_from(md.ctime()).ok().map(|s| {
            SystemTime::UNIX_EPOCH + Duration::new(s, md.ctime_nsec().clamp(0, 999_999_999) as u32)
        });
        let recent = |t: Option<SystemTime>| t.is_none_or(|t| t >= since);
        let racy = recent(md.modified().ok()) || recent(ctime);
        Version { md, racy }
    }

    pub(crate) fn metadata(&self) -> &Metadata {
        &self.md
    }

    /// A checksum to feed the bytes read into, for [`Version::unchanged`]: only for a racy
    /// file.
    pub(crate) fn hasher(&self) -> Option<crc_fast::Digest> {
        self.racy.then(|| crc_fast::Digest::new(CRC))
    }

    /// Whether `file` is still this version after the whole of it was read into `read`
    /// (the [`Version::hasher`]): its metadata as before and, for a racy file, its bytes
    /// read again to the same checksum.
    pub(crate) fn unchanged(
        &self,
        file: &File,
        read: Option<crc_fast::Digest>,
    ) -> io::Result<bool> {
        let now = file.metadata()?;
        let same = now.len() == self.md.len()
            && now.modified().ok() == self.md.modified().ok()
            && (now.ctime(), now.ctime_nsec()) == (self.md.ctime(), self.md.ctime_nsec());
        match read {
            Some(read) if same => Ok(crc_of(file, self.md.len())? == read.finalize()),
            _ => Ok(same),
        }
    }
}

/// The checksum of the first `len` bytes of `file`, read again.
fn crc_of(file: &File, len: u64) -> io::Result<u64> {
    let mut digest = crc_fast::Digest::new(CRC);
    let mut buf = vec![0; super::stream::CHUNK];
    let mut offset = 0;
    while offset < len {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        let n = n.min((len - offset) as usize);
        digest.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written just now is racy: the bytes a read gave out are compared with the
    /// file's at the end, so a write in the same tick as the one before it, which leaves
    /// size and timestamps as they were, is still seen. (Here the metadata are taken after
    /// the write, as such a write leaves them, and the read is given the bytes from before.)
    #[test]
    fn a_racy_files_bytes_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old bytes").unwrap();
        std::fs::write(&path, b"new bytes").unwrap();
        let file = File::open(&path).unwrap();
        let version = Version::of(file.metadata().unwrap());
        let read = |bytes: &[u8]| {
            let mut digest = version.hasher().expect("written just now: racy");
            digest.update(bytes);
            Some(digest)
        };
        assert!(!version.unchanged(&file, read(b"old bytes")).unwrap());
        assert!(!version.unchanged(&file, read(b"new")).unwrap());
        assert!(version.unchanged(&file, read(b"new bytes")).unwrap());
        // Any write changes the ctime, which `touch` cannot set back.
        std::fs::write(&path, b"new bytes").unwrap();
        file.set_modified(version.metadata().modified().unwrap())
            .unwrap();
        assert!(!version.unchanged(&file, read(b"new bytes")).unwrap());
    }
}
