//! Exit codes (documented in the README) and turning errors into one clear line.

use crate::output::Output;
use skyhaul_engine::{Endpoint, Verification};
use skyhaul_store::{Error, ErrorKind, BAD_BUCKET_NAME, BUCKET_IN, NOT_PUBLIC};
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
/// different, else 130 when it was interrupted, else 1 when something could not be read to
/// be checked.
pub fn verification(v: &Verification) -> Option<ExitCode> {
    if !v.passed() {
        Some(ExitCode::VerifyFailed)
    } else if v.interrupted {
        Some(ExitCode::Interrupted)
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
    let code = match e.kind {
        ErrorKind::NotFound | ErrorKind::BucketNotFound => ExitCode::NotFound,
        ErrorKind::AccessDenied | ErrorKind::BadCredentials => ExitCode::AccessDenied,
        ErrorKind::Unreachable => ExitCode::Unreachable,
        ErrorKind::Conflict | ErrorKind::NoSpace | ErrorKind::InvalidKey => ExitCode::Destination,
        ErrorKind::Interrupted => ExitCode::Interrupted,
        _ => ExitCode::PartialFailure,
    };
    // An error that crossed processes (a fleet worker's) may say what to do already, for
    // its side; the relay's own errors say it their way.
    let said = e.message.starts_with("relay:")
        || ["SRC", "DST"].into_iter().any(|s| {
            let h = hint(s, &e);
            !h.is_empty() && e.message.contains(&h)
        });
    let hint = if said { String::new() } else { hint(side, &e) };
    CliError {
        code,
        message: format!("{}{hint}", e.message),
    }
}

/// What to do about `e` on `side`, as a clause to append (empty where the message says it:
/// GCS and Azure errors carry their own credential hint).
fn hint(side: &str, e: &Error) -> String {
    if e.message.contains(NOT_PUBLIC) {
        // Refused unsigned: the store's hint says what to do, credentials would not.
        return String::new();
    }
    let flag = side.to_ascii_lowercase();
    // A machine without credentials may only mean to read open data.
    let found_none = e.message.contains(": no credentials found")
        || e.message.contains(": no usable credentials found")
        || e.message.contains(": no usable Google credentials")
        || e.message.contains(": no usable Azure credentials");
    let public = match side == "SRC" && found_none {
        true => "; for a public bucket, --src-anonymous reads it without credentials",
        false => "",
    };
    match e.kind {
        // The flag was given: its name is what to check.
        ErrorKind::BadCredentials if e.message.contains("gives none here") => format!(
            "; check the profile's name (`skyhaul init --dry-run` lists the profiles here), or set SKYHAUL_{side}_ACCESS_KEY_ID and SKYHAUL_{side}_SECRET_ACCESS_KEY{public}"
        ),
        ErrorKind::AccessDenied | ErrorKind::BadCredentials if e.message.starts_with("s3://") => {
            format!("; set {flag} credentials with --{flag}-profile or SKYHAUL_{side}_ACCESS_KEY_ID and SKYHAUL_{side}_SECRET_ACCESS_KEY{public}")
        }
        ErrorKind::AccessDenied | ErrorKind::BadCredentials => public.to_string(),
        // Not for a name no bucket can have: that one says what names can be.
        ErrorKind::BucketNotFound if side == "DST" && !e.message.contains(BAD_BUCKET_NAME) => {
            "; skyhaul does not create buckets or containers: create it first".to_string()
        }
        ErrorKind::Other if e.message.contains(BUCKET_IN) => {
            format!("; give this side's region with --{flag}-region or SKYHAUL_{side}_REGION")
        }
        // The endpoint may come from elsewhere than the flag: say where else to look.
        ErrorKind::Unreachable => format!(
            "; check --{flag}-endpoint, or the connection string, remote or config that set it"
        ),
        _ => String::new(),
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

/// What a command does at its first Ctrl-C, for the notice it prints.
#[derive(Clone, Copy)]
pub enum Stopping {
    /// `cp`, `sync`: objects in flight finish, and a rerun resumes.
    Transfer,
    /// `verify`: nothing new is compared, and what was found so far is reported.
    Check,
}

/// First Ctrl-C (or SIGTERM): stop starting work, let what is in flight finish. Second:
/// exit at once.
pub fn on_ctrl_c(cancel: CancellationToken, out: Output, stopping: Stopping) {
    let (first, again) = match stopping {
        Stopping::Transfer => (
            "finishing objects in flight",
            "; run the same command again to resume",
        ),
        Stopping::Check => ("ending the check; what it found so far follows", ""),
    };
    tokio::spawn(async move {
        let mut stop = StopSignals::new();
        if !stop.next().await {
            return;
        }
        out.notice(&format!(
            "interrupted: {first} (press Ctrl-C again to stop at once)"
        ));
        cancel.cancel();
        if stop.next().await {
            out.error(
                &format!("interrupted again: stopped at once{again}"),
                ExitCode::Interrupted,
            );
            std::process::exit(ExitCode::Interrupted as i32);
        }
    });
}

/// SIGTERM, as it reaches this process from now on.
#[cfg(unix)]
fn sigterm() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

/// Resolves when this process gets SIGTERM (never where there is none): a scheduler
/// preempting it. SIGTERM is caught from this call on, not from the first poll: until a
/// handler is in place, the signal ends the process at once.
pub fn terminated() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = sigterm();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            term.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Ctrl-C, and on Unix SIGTERM too: what Kubernetes, SLURM and service managers send before
/// they kill a process, so that a preempted transfer stops as cleanly as one a person
/// stopped.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        StopSignals {
            #[cfg(unix)]
            term: sigterm(),
        }
    }

    /// Waits for the next one; `false` when no signal can be waited for.
    async fn next(&mut self) -> bool {
        #[cfg(unix)]
        if let Some(term) = &mut self.term {
            return tokio::select! {
                c = tokio::signal::ctrl_c() => c.is_ok(),
                t = term.recv() => t.is_some(),
            };
        }
        tokio::signal::ctrl_c().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hint is given once: an error that already carries one (a fleet worker's, seen
    /// again by its coordinator, which may guess the other side) gets no second; the
    /// relay's own errors get none.
    #[test]
    fn a_hint_is_given_once() {
        let denied = |m: &str| Error::new(ErrorKind::AccessDenied, m);
        let once = store("DST", denied("s3://b/k: get: AccessDenied")).message;
        assert!(once.ends_with("SKYHAUL_DST_SECRET_ACCESS_KEY"), "{once}");
        assert_eq!(store("SRC", denied(&once)).message, once);
        let unreachable = |m: &str| Error::new(ErrorKind::Unreachable, m);
        let relay = store("DST", unreachable("relay: no gateway answered")).message;
        assert_eq!(relay, "relay: no gateway answered");
        let once = store("SRC", unreachable("s3://b: connect refused")).message;
        assert_eq!(
            once,
            "s3://b: connect refused; check --src-endpoint, or the connection string, remote \
             or config that set it"
        );
        assert_eq!(store("DST", unreachable(&once)).message, once);
    }

    /// A source for which no credentials were found may be public: `--src-anonymous` is
    /// named there, for every kind of store, and nowhere else.
    #[test]
    fn a_source_without_credentials_is_told_of_anonymous_reads() {
        let denied = |m: &str| Error::new(ErrorKind::AccessDenied, m);
        let none_found = |m: &str| Error::new(ErrorKind::BadCredentials, m);
        let flag = "--src-anonymous";
        for none in [
            "s3://b: no credentials found",
            "s3://b: no usable credentials found",
            "gs://b/k: no usable Google credentials: metadata server unreachable (check …)",
            "az://c: no usable Azure credentials: no identity (give …)",
        ] {
            assert!(
                store("SRC", none_found(none)).message.contains(flag),
                "{none}"
            );
            assert!(
                !store("DST", none_found(none)).message.contains(flag),
                "{none}"
            );
        }
        let refused = store("SRC", denied("s3://b/k: get: AccessDenied")).message;
        assert!(!refused.contains(flag), "{refused}");
        // Refused though unsigned: no advice to set the credentials that were not sent.
        let unsigned = format!("s3://b/k: get: HTTP 403{}", NOT_PUBLIC);
        assert_eq!(store("SRC", denied(&unsigned)).message, unsigned);
    }

    /// A bucket in another region names the side's region flag; a missing destination
    /// bucket says skyhaul will not make it, a missing source bucket does not.
    #[test]
    fn region_and_missing_bucket_hints_name_the_side() {
        let other = |m: &str| Error::new(ErrorKind::Other, m);
        let moved = "s3://b: list: PermanentRedirect: … (the bucket is in region eu-west-1)";
        let line = store("DST", other(moved)).message;
        assert!(
            line.ends_with("with --dst-region or SKYHAUL_DST_REGION"),
            "{line}"
        );
        assert_eq!(store("SRC", other(&line)).message, line);
        let missing = |m: &str| Error::new(ErrorKind::BucketNotFound, m);
        let line = store("DST", missing("s3://b: list: NoSuchBucket")).message;
        assert!(line.ends_with("create it first"), "{line}");
        let line = store("SRC", missing("s3://b: list: NoSuchBucket")).message;
        assert!(!line.contains("create"), "{line}");
    }
}
