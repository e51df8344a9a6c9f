//! Whether a transfer's source and destination overlap in one store.
//!
//! A copy into its own source lists its own output (`cp -r s3://b/x s3://b/x/copy` nests one
//! level deeper on every run), a copy onto the parent of its source overwrites the source
//! (`x/sub/sub/d` lands on `x/sub/d`), and `sync --delete` then deletes the source's own
//! objects. Like rclone, skyhaul refuses such transfers before anything is read.

use crate::keys::{dir_form, map_key};
use crate::parse::Location;

/// How a source and a destination in the same store relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The destination is the source itself.
    Same,
    /// The destination lies inside the source prefix or directory.
    DestinationInsideSource,
    /// The source lies inside the destination prefix or directory.
    SourceInsideDestination,
}

impl Overlap {
    /// Why the transfer is refused, and what to do instead.
    pub fn explain(self, src: &Location, dst: &Location) -> String {
        let why = match self {
            Overlap::Same => "are the same place: there is nothing to copy",
            Overlap::DestinationInsideSource => {
                "overlap: the destination is inside the source, so a copy would list and \
                 copy its own output again"
            }
            Overlap::SourceInsideDestination => {
                "overlap: the source is inside the destination, so a copy could overwrite \
                 the source and sync --delete would delete it"
            }
        };
        format!("{src} and {dst} {why}; choose a destination outside the source")
    }
}

impl Location {
    /// How `self` (a source) and `dst` overlap, if they are in the same store. The caller
    /// says whether they are: same endpoint, and local paths with symlinks resolved. For a
    /// single object only the object itself counts.
    pub fn overlap(&self, dst: &Location, recursive: bool) -> Option<Overlap> {
        if (self.scheme, &self.bucket, &self.account) != (dst.scheme, &dst.bucket, &dst.account) {
            return None;
        }
        if !recursive {
            let key = map_key(&self.path, &self.path, &dst.path, false)?;
            return (key == self.path).then_some(Overlap::Same);
        }
        let (s, d) = (dir_form(&self.path), dir_form(&dst.path));
        if s == d {
            Some(Overlap::Same)
        } else if d.starts_with(&s) {
            Some(Overlap::DestinationInsideSource)
        } else if s.starts_with(&d) {
            Some(Overlap::SourceInsideDestination)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(src: &str, dst: &str, recursive: bool) -> Option<Overlap> {
        let (s, d) = (Location::parse(src).unwrap(), Location::parse(dst).unwrap());
        s.overlap(&d, recursive)
    }

    #[test]
    fn prefixes_overlap_as_directories() {
        use Overlap::*;
        assert_eq!(overlap("s3://b/x", "s3://b/x/", true), Some(Same));
        assert_eq!(overlap("s3://b/", "s3://b", true), Some(Same));
        assert_eq!(
            overlap("s3://b/x", "s3://b/x/copy", true),
            Some(DestinationInsideSource)
        );
        assert_eq!(
            overlap("s3://b", "s3://b/backup/", true),
            Some(DestinationInsideSource)
        );
        assert_eq!(
            overlap("s3://b/x/sub", "s3://b/x", true),
            Some(SourceInsideDestination)
        );
        assert_eq!(
            overlap("/data/in", "/data/in/out", true),
            Some(DestinationInsideSource)
        );
        assert_eq!(overlap("/data/in/", "/data/in", true), Some(Same));
    }

    #[test]
    fn neighbours_and_other_stores_do_not_overlap() {
        assert_eq!(overlap("s3://b/data", "s3://b/data2", true), None);
        assert_eq!(overlap("s3://b/data2", "s3://b/data", true), None);
        assert_eq!(overlap("s3://b/x", "s3://c/x", true), None);
        assert_eq!(overlap("s3://b/x", "gs://b/x", true), None);
        assert_eq!(overlap("/data/in", "/data/input", true), None);
        assert_eq!(overlap("s3://b/x", "/b/x", true), None);
    }

    #[test]
    fn a_single_object_overlaps_only_itself() {
        assert_eq!(
            overlap("s3://b/x/f", "s3://b/x/f", false),
            Some(Overlap::Same)
        );
        assert_eq!(
            overlap("s3://b/x/f", "s3://b/x/", false),
            Some(Overlap::Same)
        );
        assert_eq!(overlap("/d/f", "/d/", false), Some(Overlap::Same));
        assert_eq!(overlap("s3://b/x/f", "s3://b/x/g", false), None);
        assert_eq!(overlap("s3://b/x/f", "s3://b/x/f/", false), None);
    }
}
