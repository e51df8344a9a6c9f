use std::path::{Path, PathBuf};

/// Why a key cannot become a local file name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key '{0}' has an empty path component (leading '/' or '//'); it cannot be a local file name")]
    EmptyComponent(String),
    #[error("key '{0}' contains '.' or '..' and would escape or alias the destination directory; refused")]
    Traversal(String),
    #[error("key '{0}' contains a NUL byte; it cannot be a local file name")]
    Nul(String),
    #[error(
        "key '{0}' has a path component longer than 255 bytes; it cannot be a local file name"
    )]
    TooLong(String),
    #[error("key '{0}' ends with '/', a directory marker; it cannot be a local file")]
    DirectoryMarker(String),
}

/// `prefix` as a "directory": empty stays empty, otherwise it ends with exactly one `/`.
pub fn dir_form(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// The last `/`-separated component of a key.
pub fn key_basename(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Maps a source key to its destination key, following Skyplane's documented rules.
///
/// * Recursive: the key relative to the source prefix (taken as a directory) is appended to
///   the destination prefix (also taken as a directory). `s3://b/data` → `s3://c/out` maps
///   `data/x/y` to `out/x/y`.
/// * Single object: a destination in directory form (empty or ending in `/`) receives the
///   object under its base name; any other destination *is* the destination key.
///
/// Returns `None` when a recursive source key does not lie under the source prefix, which
/// a correct listing never yields.
pub fn map_key(src_prefix: &str, src_key: &str, dst_path: &str, recursive: bool) -> Option<String> {
    if recursive {
        let rel = src_key.strip_prefix(&dir_form(src_prefix))?;
        Some(format!("{}{}", dir_form(dst_path), rel))
    } else if dst_path.is_empty() || dst_path.ends_with('/') {
        Some(format!("{dst_path}{}", key_basename(src_key)))
    } else {
        Some(dst_path.to_string())
    }
}

/// Turns an object key into a path relative to a local destination root, refusing anything
/// that could land outside the root or that no file system can hold.
///
/// Object stores allow keys such as `../../etc/passwd`, `/abs` or `a//b`; writing them
/// verbatim would let a hostile bucket overwrite files anywhere, so they are errors here.
pub fn local_relative_path(key: &str) -> Result<PathBuf, KeyError> {
    if key.contains('\0') {
        return Err(KeyError::Nul(key.to_string()));
    }
    if key.ends_with('/') {
        return Err(KeyError::DirectoryMarker(key.to_string()));
    }
    let mut path = PathBuf::new();
    for part in key.split('/') {
        match part {
            "" => return Err(KeyError::EmptyComponent(key.to_string())),
            "." | ".." => return Err(KeyError::Traversal(key.to_string())),
            p if p.len() > 255 => return Err(KeyError::TooLong(key.to_string())),
            p => path.push(Path::new(p)),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_mapping_appends_relative_key() {
        assert_eq!(map_key("data", "data/x/y", "out", true).unwrap(), "out/x/y");
        assert_eq!(map_key("data/", "data/x", "out/", true).unwrap(), "out/x");
        assert_eq!(map_key("", "x/y", "", true).unwrap(), "x/y");
        assert_eq!(map_key("", "x", "deep/er", true).unwrap(), "deep/er/x");
        // "data" as a directory does not contain "database/x".
        assert_eq!(map_key("data", "database/x", "out", true), None);
    }

    #[test]
    fn single_object_mapping() {
        assert_eq!(
            map_key("a/b.bin", "a/b.bin", "out/", false).unwrap(),
            "out/b.bin"
        );
        assert_eq!(map_key("a/b.bin", "a/b.bin", "", false).unwrap(), "b.bin");
        assert_eq!(
            map_key("a/b.bin", "a/b.bin", "out/c.bin", false).unwrap(),
            "out/c.bin"
        );
    }

    #[test]
    fn odd_keys_map_verbatim() {
        for k in ["ünï cödé/+plus%25 sp ace", "a+b", "%2F", "emoji 🚀"] {
            assert_eq!(map_key("", k, "p", true).unwrap(), format!("p/{k}"));
        }
    }

    #[test]
    fn local_paths_refuse_escapes() {
        assert_eq!(
            local_relative_path("a/b c/ü+%").unwrap(),
            PathBuf::from("a/b c/ü+%")
        );
        assert!(matches!(
            local_relative_path("../x"),
            Err(KeyError::Traversal(_))
        ));
        assert!(matches!(
            local_relative_path("a/../../x"),
            Err(KeyError::Traversal(_))
        ));
        assert!(matches!(
            local_relative_path("a/./x"),
            Err(KeyError::Traversal(_))
        ));
        assert!(matches!(
            local_relative_path("/etc/passwd"),
            Err(KeyError::EmptyComponent(_))
        ));
        assert!(matches!(
            local_relative_path("a//b"),
            Err(KeyError::EmptyComponent(_))
        ));
        assert!(matches!(
            local_relative_path("dir/"),
            Err(KeyError::DirectoryMarker(_))
        ));
        assert!(matches!(local_relative_path("a\0b"), Err(KeyError::Nul(_))));
        assert!(matches!(
            local_relative_path(&"x".repeat(256)),
            Err(KeyError::TooLong(_))
        ));
    }
}
