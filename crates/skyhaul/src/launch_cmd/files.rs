//! Writing the job's files: an existing file is replaced only with `--force`, and never
//! through a symlink (a job file named after a link would otherwise overwrite whatever the
//! link points at). Every file is checked before the first is written, so a refused launch
//! writes nothing.

use crate::exit::{self, CliError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checks that each path may be written, then writes them in order.
pub(super) fn write_all(files: &[(PathBuf, String)], force: bool) -> Result<(), CliError> {
    for (path, _) in files {
        writable(path, force)?;
    }
    for (path, text) in files {
        write(path, text, force)?;
    }
    Ok(())
}

fn writable(path: &Path, force: bool) -> Result<(), CliError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_symlink() => Err(exit::usage(format!(
            "{} is a symlink: launch never writes through one; remove it, or write the job elsewhere with -o",
            path.display()
        ))),
        Ok(m) if m.is_dir() => Err(exit::usage(format!(
            "{} is a directory: name the job's file with -o",
            path.display()
        ))),
        Ok(_) if force => Ok(()),
        Ok(_) => Err(exit::usage(format!(
            "{} exists: pass --force to replace it, or write the job elsewhere with -o (or another --name)",
            path.display()
        ))),
    }
}

fn write(path: &Path, text: &str, force: bool) -> Result<(), CliError> {
    let failed = |e: std::io::Error| exit::usage(format!("{}: {e}", path.display()));
    if force {
        // A file only (checked above): removed, so the new one is created in its place
        // rather than written into whatever it has become since.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
    }
    // `create_new` neither follows a symlink nor replaces a file made meanwhile.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)
}
