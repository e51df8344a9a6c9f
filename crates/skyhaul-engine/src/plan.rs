//! What to copy: work items, part sizing, and the sync comparison.

use serde::{Deserialize, Serialize};
use skyhaul_store::{Error, Limits, ObjectMeta};
use std::time::UNIX_EPOCH;

pub(crate) const MIB: u64 = 1 << 20;

/// What the planner asks of each object (and its destination key) that a sync's listing
/// finds up to date at the destination: whether to copy it all the same. Otherwise it is
/// skipped, and not checked by this run.
pub type UpToDate = Box<dyn Fn(&ObjectMeta, &str) -> bool + Send>;

/// What the planner tells of each write a sync plans (its destination key), before the job
/// goes out: the journal announces it, ahead of the write (see `Ctx::announces_writes`).
pub type Announce = Box<dyn Fn(&str) + Send + Sync>;

/// One unit of work, from the planner to what runs it: a transfer, a fleet's coordinator,
/// or a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Copy `src` (as listed) to `dst_key`.
    Copy { src: ObjectMeta, dst_key: String },
    /// Copy `src` to `dst_key` unless `dst`, of the same size, holds the same bytes: a
    /// checksum comparison (`sync --checksum`) that may need a HEAD or a read, so it runs
    /// with the copies rather than in the planner.
    CopyUnlessSame {
        src: ObjectMeta,
        dst: ObjectMeta,
        dst_key: String,
    },
    /// Delete an object that exists only at the destination (`sync --delete`).
    Delete { dst_key: String },
    /// An entry the source's (or a sync's destination's) listing could not include
    /// ([`skyhaul_store::Error::unlisted`]), by its key: it fails alone, and as any failure
    /// it keeps a sync from deleting.
    Unlisted { key: String, error: Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Compare {
    /// Copy when sizes differ or the source is newer than the destination.
    #[default]
    SizeAndTime,
    /// Copy only when sizes differ.
    SizeOnly,
    /// Copy when sizes or checksums differ; where no checksum is comparable, as
    /// `SizeAndTime`.
    Checksum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Copy everything selected.
    Copy,
    /// Copy what is missing or changed; delete extra destination objects only if asked.
    Sync { delete: bool, compare: Compare },
}

/// The part size for an object of `size` bytes: the preferred size (at most the store's
/// largest part) unless the object needs bigger parts to stay within `limits.max_parts`,
/// rounded up to whole MiB and within the part-size bounds. `None` when the object is too
/// large for the store.
pub fn part_size(size: u64, preferred: u64, limits: &Limits) -> Option<u64> {
    let for_count = size.div_ceil(limits.max_parts as u64);
    let preferred = preferred.min(limits.max_part_size);
    let p = preferred.max(for_count).max(limits.min_part_size);
    let p = p.div_ceil(MIB).saturating_mul(MIB);
    (p <= limits.max_part_size && size.div_ceil(p.max(1)) <= limits.max_parts as u64).then_some(p)
}

/// Whether a source object must be copied over an existing destination object.
/// What the listings alone say about a source object that exists at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Copy,
    Skip,
    /// Same size; only checksums can tell.
    CompareContent,
}

pub fn compare_listed(src: &ObjectMeta, dst: &ObjectMeta, compare: Compare) -> Listed {
    let copy_if = |b| if b { Listed::Copy } else { Listed::Skip };
    if src.size != dst.size {
        return Listed::Copy;
    }
    match compare {
        Compare::SizeOnly => Listed::Skip,
        // Whole seconds: S3 keeps Last-Modified to the second, file systems to the ns.
        Compare::SizeAndTime => copy_if(match (src.mtime, dst.mtime) {
            (Some(s), Some(d)) => secs(s) > secs(d),
            _ => true,
        }),
        Compare::Checksum => Listed::CompareContent,
    }
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn part_sizes() {
        let s3 = Limits::S3;
        assert_eq!(part_size(100 * MIB, 16 * MIB, &s3), Some(16 * MIB));
        // 1 TiB at 16 MiB would be 65,536 parts: parts grow to stay within 10,000.
        let p = part_size(1 << 40, 16 * MIB, &s3).unwrap();
        assert_eq!(p, 105 * MIB);
        assert!((1u64 << 40).div_ceil(p) <= 10_000);
        // Never below S3's 5 MiB minimum, always whole MiB.
        assert_eq!(part_size(100 * MIB, 1, &s3), Some(5 * MIB));
        assert_eq!(part_size(100 * MIB, 7 * MIB + 1, &s3), Some(8 * MIB));
        // The largest object S3 can hold, and one byte more.
        assert_eq!(part_size(10_000 * (5 << 30), 16 * MIB, &s3), Some(5 << 30));
        assert_eq!(part_size(10_000 * (5 << 30) + 1, 16 * MIB, &s3), None);
        // Objects over 5 GiB get ordinary parts.
        assert_eq!(part_size(6 << 30, 16 * MIB, &s3), Some(16 * MIB));
        // A preferred size above the store's largest part is its largest (it failed
        // every striped object, also a 40 MiB one).
        assert_eq!(part_size(40 * MIB, 6 << 30, &s3), Some(5 << 30));
        assert_eq!(part_size(6 << 30, 6 << 30, &s3), Some(5 << 30));
    }

    fn meta(size: u64, secs: u64) -> ObjectMeta {
        let mut m = ObjectMeta::new("k", size);
        m.mtime = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + 300));
        m
    }

    #[test]
    fn sync_comparisons() {
        use Compare::*;
        let cases = [
            (meta(1, 10), meta(2, 10), SizeOnly, Listed::Copy),
            (meta(1, 99), meta(1, 10), SizeOnly, Listed::Skip),
            (meta(1, 11), meta(1, 10), SizeAndTime, Listed::Copy),
            (meta(1, 10), meta(1, 10), SizeAndTime, Listed::Skip),
            (meta(1, 9), meta(1, 10), SizeAndTime, Listed::Skip),
            (meta(1, 1), meta(2, 10), Checksum, Listed::Copy),
            (meta(1, 99), meta(1, 10), Checksum, Listed::CompareContent),
        ];
        for (i, (src, dst, compare, want)) in cases.iter().enumerate() {
            assert_eq!(compare_listed(src, dst, *compare), *want, "case {i}");
        }
    }
}
