//! Whether a transfer's source and destination overlap in one store.
//!
//! A copy into its own source lists its own output (`cp -r s3://b/x s3://b/x/copy` nests one
//! level deeper on every run), a copy onto the parent of its source overwrites the source
//! (`x/sub/sub/d` lands on `x/sub/d`), and `sync --delete` then deletes the source's own
//! objects. Like rclone, skyhaul refuses such transfers before anything is read.

use crate::keys::{dir_form, map_key};

/// How a source and a destination in the same store relate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// The destination is the source itself.
    Same,
    /// The destination lies inside the source prefix or directory, at `at` (relative to
    /// the source, ending in `/`): safe only when a filter leaves out everything there.
    DestinationInsideSource { at: String },
    /// The source lies inside the destination prefix or directory.
    SourceInsideDestination,
}

impl Overlap {
    /// Why the transfer is refused, and what to do instead.
    pub fn explain(&self, src: &str, dst: &str) -> String {
        let why = match self {
            Overlap::Same => "are the same place: there is nothing to copy",
            Overlap::DestinationInsideSource { .. } => {
                "overlap: the destination is inside the source, so a copy would list and \
                 copy its own output again"
            }
            Overlap::SourceInsideDestination => {
                "overlap: the source is inside the destination, so a copy could overwrite \
                 the source and sync --delete would delete it"
            }
        };
        let instead = match self {
            Overlap::DestinationInsideSource { at } => {
                format!(
                    ", or leave it out with --exclude '{}**'",
                    exclude_literal(at)
                )
            }
            _ => String::new(),
        };
        format!("{src} and {dst} {why}; choose a destination outside the source{instead}")
    }
}

/// `path` as a glob that matches it literally, quoted for a shell's single quotes: glob
/// characters escaped with `\\`, a `'` closed, escaped and reopened.
fn exclude_literal(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '*' | '?' | '[' | ']' | '{' | '}' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\'' => out.push_str("'\\''"),
            c => out.push(c),
        }
    }
    out
}

/// How a source path and a destination path in the same store overlap. The caller says
/// whether they are in the same store (the same bucket at the same endpoint and account,
/// or one file system with symlinks resolved). For a single object only the object itself
/// counts.
pub fn overlap(src: &str, dst: &str, recursive: bool) -> Option<Overlap> {
    if !recursive {
        let key = map_key(src, src, dst, false)?;
        return (key == src).then_some(Overlap::Same);
    }
    let (s, d) = (dir_form(src), dir_form(dst));
    if s == d {
        Some(Overlap::Same)
    } else if let Some(at) = d.strip_prefix(&s) {
        Some(Overlap::DestinationInsideSource { at: at.to_string() })
    } else if s.starts_with(&d) {
        Some(Overlap::SourceInsideDestination)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Location;

    /// Both in one store, as the caller would have found.
    fn overlap(src: &str, dst: &str, recursive: bool) -> Option<Overlap> {
        let (s, d) = (Location::parse(src).unwrap(), Location::parse(dst).unwrap());
        assert_eq!((s.scheme, &s.bucket), (d.scheme, &d.bucket));
        super::overlap(&s.path, &d.path, recursive)
    }

    #[test]
    fn prefixes_overlap_as_directories() {
        use Overlap::*;
        assert_eq!(overlap("s3://b/x", "s3://b/x/", true), Some(Same));
        assert_eq!(overlap("s3://b/", "s3://b", true), Some(Same));
        let inside = |at: &str| Some(DestinationInsideSource { at: at.into() });
        assert_eq!(overlap("s3://b/x", "s3://b/x/copy", true), inside("copy/"));
        assert_eq!(overlap("s3://b", "s3://b/backup/", true), inside("backup/"));
        assert_eq!(
            overlap("s3://b/x/sub", "s3://b/x", true),
            Some(SourceInsideDestination)
        );
        assert_eq!(
            overlap("/data/in", "/data/in/out/x", true),
            inside("out/x/")
        );
        assert_eq!(overlap("/data/in/", "/data/in", true), Some(Same));
    }

    #[test]
    fn the_hint_names_an_exclude_that_matches_the_destination_literally() {
        let o = overlap("s3://b/x", "s3://b/x/a[1]*/it's", true).unwrap();
        let text = o.explain("s3://b/x", "s3://b/x/a[1]*/it's");
        assert!(text.ends_with(r"--exclude 'a\[1\]\*/it'\''s/**'"), "{text}");
    }

    #[test]
    fn neighbours_do_not_overlap() {
        assert_eq!(overlap("s3://b/data", "s3://b/data2", true), None);
        assert_eq!(overlap("s3://b/data2", "s3://b/data", true), None);
        assert_eq!(overlap("/data/in", "/data/input", true), None);
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
