//! Exit codes (documented in the README) and turning errors into one clear line.

use crate::output::Output;
use skyhaul_engine::{Endpoint, Verification};
use skyhaul_store::{Error, ErrorKind};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was copied.
    Ok = 0,
    /// Some objects failed (listed in the report) or an unexpected error.
    PartialFailure = 1,
    /// Bad arguments.
    Usage = 2,
    /// The source object, prefix or bucket (or the destination bucket) does not exist.
    NotFound = 3,
    /// Credentials missing, wrong, or not permitted.
    AccessDenied = 4,
    /// An endpoint could not be reached.
    Unreachable = 5,
    /// Verification found missing, extra or different objects.
    VerifyFailed = 6,
    /// The destination cannot take the data (a file in the way, disk full).
    Destination = 7,
    /// Stopped by Ctrl-C; rerun to finish.
    Interrupted = 130,
}

#[derive(Debug)]
pub struct CliError {
    pub code: ExitCode,
    pub message: String,
}

pub fn usage(e: impl std::fmt::Display) -> CliError {
    CliError {
        code: ExitCode::Usage,
        message: e.to_string(),
    }
}

/// The exit code a verification calls for, if not 0: 6 when something is missing, extra or
/// different, else 1 when something could not be read to be checked.
pub fn verification(v: &Verification) -> Option<ExitCode> {
    if !v.passed() {
        Some(ExitCode::VerifyFailed)
    } else if !v.complete() {
        Some(ExitCode::PartialFailure)
    } else {
        None
    }
}

/// Which side an error is about, from the location or store name it starts with: the
/// longer match where both sides are in one bucket (`s3://b/in/` → `s3://b/out/`).
pub fn side_of(e: &Error, src: &Endpoint, dst: &Endpoint) -> &'static str {
    let named = |ep: &Endpoint| {
        [ep.display.as_str(), ep.store.name()]
            .into_iter()
            .filter(|name| e.message.starts_with(name))
            .map(str::len)
            .max()
    };
    match (named(src), named(dst)) {
        (Some(s), Some(d)) if d > s => "DST",
        (Some(_), _) => "SRC",
        (None, Some(_)) => "DST",
        (None, None) if e.kind == ErrorKind::NotFound => "SRC",
        (None, None) => "DST",
    }
}

/// Maps a store error to its exit code and appends what to do for that side.
pub fn store(side: &str, e: Error) -> CliError {
    let flag = side.to_ascii_lowercase();
    let (code, hint) = match e.kind {
        ErrorKind::NotFound | ErrorKind::BucketNotFound => (ExitCode::NotFound, String::new()),
        // GCS and Azure errors carry their own credential hint.
        ErrorKind::AccessDenied | ErrorKind::BadCredentials if !e.message.starts_with("s3://") => {
            (ExitCode::AccessDenied, String::new())
        }
        ErrorKind::AccessDenied | ErrorKind::BadCredentials => (
            ExitCode::AccessDenied,
            format!("; set {flag} credentials with --{flag}-profile or SKYHAUL_{side}_ACCESS_KEY_ID and SKYHAUL_{side}_SECRET_ACCESS_KEY"),
        ),
        ErrorKind::Unreachable => (ExitCode::Unreachable, format!("; check --{flag}-endpoint")),
        ErrorKind::Conflict | ErrorKind::NoSpace | ErrorKind::InvalidKey => (ExitCode::Destination, String::new()),
        ErrorKind::Interrupted => (ExitCode::Interrupted, String::new()),
        _ => (ExitCode::PartialFailure, String::new()),
    };
    // An error that crossed processes may carry its hint already (a fleet worker's).
    let hint = if e.message.contains(&hint) { "" } else { &hint };
    CliError {
        code,
        message: format!("{}{hint}", e.message),
    }
}

/// The error kind that stands for an exit code: for an error that reached this process as
/// a message and its code (a fleet worker's), so it exits here as it did there.
pub fn kind_of(code: ExitCode) -> ErrorKind {
    match code {
        ExitCode::NotFound => ErrorKind::BucketNotFound,
        ExitCode::AccessDenied => ErrorKind::AccessDenied,
        ExitCode::Unreachable => ErrorKind::Unreachable,
        ExitCode::Destination => ErrorKind::NoSpace,
        ExitCode::Interrupted => ErrorKind::Interrupted,
        _ => ErrorKind::Other,
    }
}

/// First Ctrl-C: stop starting work, let what is in flight finish. Second: exit at once.
pub fn on_ctrl_c(cancel: CancellationToken, out: Output) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        out.notice("interrupted: finishing objects in flight (press Ctrl-C again to stop at once)");
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(ExitCode::Interrupted as i32);
        }
    });
}
