//! `skyhaul status` and `skyhaul clean`: looking at and tidying the transfer journal.

use crate::args::{CleanArgs, StatusArgs, TransferArgs};
use crate::config::Config;
use crate::exit::{self, CliError, ExitCode};
use crate::output::outln;
use skyhaul_engine::report::{count, human_bytes};
use skyhaul_engine::{open_destination, SideOptions};
use skyhaul_journal::{Journal, JournalError, TransferSummary};
use skyhaul_location::Location;
use skyhaul_store::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The journal's file: `path`, or the default place.
fn journal_file(path: Option<&Path>) -> PathBuf {
    path.map(Path::to_path_buf)
        .unwrap_or_else(Journal::default_path)
}

/// Opens the journal at `path` or the default place, with an error that says what to do.
pub fn open(path: Option<&Path>) -> Result<Journal, CliError> {
    let path = journal_file(path);
    Journal::open(&path).map_err(|e| CliError {
        code: ExitCode::PartialFailure,
        message: format!(
            "{}: {e} (choose another with --journal PATH, or run with --no-journal)",
            path.display()
        ),
    })
}

/// The journal a run of the transfer `args` would use, only to read what earlier runs did
/// (a dry run, `plan`): none with `--no-journal`, when there is no journal there (none is
/// made), or when it cannot be opened (said in a warning).
pub fn existing(args: &TransferArgs, config: &Config) -> Option<Journal> {
    if args.no_journal {
        return None;
    }
    let path = crate::settings::journal_path(args.journal.as_deref(), config);
    let path = journal_file(path.as_deref());
    if !path.exists() {
        return None;
    }
    Journal::open(&path)
        .inspect_err(|e| tracing::warn!("{}: {e}: earlier runs not looked up", path.display()))
        .ok()
}

fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A journal's error after it opened, naming its file: which of several journals (or
/// which copy of one) is damaged is the first thing to know.
fn failed(journal: &Journal, e: JournalError) -> CliError {
    CliError {
        code: ExitCode::PartialFailure,
        message: format!("{}: {e}", journal.path().display()),
    }
}

/// "complete", "running" (another process holds it now), or "stopped": interrupted, killed
/// or failed, for a rerun to finish.
fn state(journal: &Journal, t: &TransferSummary) -> &'static str {
    if journal.running(t.id) {
        "running"
    } else if t.complete {
        "complete"
    } else {
        "stopped"
    }
}

fn json(journal: &Journal, t: &TransferSummary) -> serde_json::Value {
    serde_json::json!({
        "id": t.id.to_string(),
        // "complete" or "in progress", as before `state` told running from stopped.
        "status": t.status(),
        "state": state(journal, t),
        "source": t.source,
        "destination": t.destination,
        "options": t.options,
        "runs": t.runs,
        "objects_done": t.objects_done,
        "bytes_done": t.bytes_done,
        "open_uploads": t.open_uploads,
        "upload_bytes_done": t.upload_bytes_done,
    })
}

pub fn status(args: StatusArgs) -> ExitCode {
    let result = (|| -> Result<(), CliError> {
        let config = crate::settings::load_config()?;
        let path = journal_file(
            crate::settings::journal_path(args.journal.as_deref(), &config).as_deref(),
        );
        // Looking creates nothing: no journal is no transfers.
        if !path.exists() {
            match args.json {
                true => outln!("[]"),
                false => outln!("no transfers in {}", path.display()),
            }
            return Ok(());
        }
        // Looking needs no right to write: a journal on a read-only mount is read so.
        let journal =
            open(Some(&path)).or_else(|e| Journal::open_read_only(&path).map_err(|_| e))?;
        let transfers = journal.transfers().map_err(|e| failed(&journal, e))?;
        if args.json {
            let all: Vec<_> = transfers.iter().map(|t| json(&journal, t)).collect();
            outln!("{}", serde_json::Value::Array(all));
            return Ok(());
        }
        if transfers.is_empty() {
            outln!("no transfers in {}", journal.path().display());
        }
        for t in &transfers {
            outln!(
                "{}  {:<11}  {} ({}) done, {}, run {}, last {}\n    {} -> {}",
                t.id,
                state(&journal, t),
                count(t.objects_done, "object", "objects"),
                human_bytes(t.bytes_done),
                open_uploads(t.open_uploads, t.upload_bytes_done),
                count(t.runs, "time", "times"),
                ago(t.last_run),
                t.source,
                t.destination
            );
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("skyhaul: error: {}", e.message);
            e.code
        }
    }
}

/// `2 open uploads (48.00 MiB sent)`: parts of objects not yet done, apart from the objects.
fn open_uploads(n: u64, bytes: u64) -> String {
    let uploads = count(n, "open upload", "open uploads");
    match bytes {
        0 => uploads,
        b => format!("{uploads} ({} sent)", human_bytes(b)),
    }
}

/// The destination location and endpoint of a journaled transfer (`LOCATION at ENDPOINT`).
fn destination_of(t: &TransferSummary) -> (String, Option<String>) {
    match t.destination.rsplit_once(" at ") {
        Some((loc, ep)) => (loc.to_string(), Some(ep.to_string())),
        None => (t.destination.clone(), None),
    }
}

pub async fn clean(args: CleanArgs) -> ExitCode {
    let result: Result<(), CliError> = async {
        let config = crate::settings::load_config()?;
        let path = crate::settings::journal_path(args.journal.as_deref(), &config);
        let journal = open(path.as_deref())?;
        let other = |e: JournalError| failed(&journal, e);
        let t = journal
            .find(&args.id)
            .map_err(|e| match e {
                // The id the user typed: a bad argument.
                JournalError::InvalidId(_) | JournalError::AmbiguousId { .. } => exit::usage(e),
                e => other(e),
            })?
            .ok_or_else(|| CliError {
                code: ExitCode::NotFound,
                message: format!(
                    "no transfer '{}' in {} (see skyhaul status)",
                    args.id,
                    journal.path().display()
                ),
            })?;
        // Held while its uploads are aborted: a run must not start, or go on, meanwhile.
        let _held = journal.hold(t.id).map_err(other)?;
        let uploads = journal.open_uploads(t.id).map_err(other)?;
        let unconfirmed = journal.unconfirmed_creates(t.id).map_err(other)?;
        let mut swept = 0;
        if !uploads.is_empty() || !unconfirmed.is_empty() {
            let (loc, endpoint) = destination_of(&t);
            let loc = Location::parse(&loc).map_err(exit::usage)?;
            let mut side = SideOptions::default();
            side.s3.endpoint = args.dst_endpoint.clone().or(endpoint);
            side.s3.profile = args.dst_profile.clone();
            side.s3.region = args.dst_region.clone();
            side.s3.requester_pays = args.requester_pays;
            side.s3.access_key_id = std::env::var("SKYHAUL_DST_ACCESS_KEY_ID").ok();
            side.s3.secret_access_key = std::env::var("SKYHAUL_DST_SECRET_ACCESS_KEY").ok();
            side.s3.session_token = std::env::var("SKYHAUL_DST_SESSION_TOKEN").ok();
            (side.gcs, side.azure) =
                crate::settings::cloud_options("DST", side.s3.endpoint.clone(), &args.cloud);
            let dst = open_destination(&loc, &side, true, false)
                .await
                .map_err(|e| exit::store("DST", e))?;
            let progress = skyhaul_engine::Progress::default();
            skyhaul_engine::reachable(&dst, &progress)
                .await
                .map_err(|e| exit::store("DST", e))?;
            // Aborts get the same retries as a transfer's requests: a 500 is no reason to
            // leave an upload behind.
            let retry = skyhaul_engine::retry::RetryPolicy::default();
            let limit = skyhaul_engine::limiter::AdaptiveLimit::new(1);
            swept = skyhaul_engine::resume::sweep_unconfirmed(
                &journal,
                t.id,
                dst.store.as_ref(),
                &Default::default(),
                &retry,
                &progress,
            )
            .await;
            for u in &uploads {
                let store = &dst.store;
                match retry
                    .run(&limit, &progress, || store.abort_multipart(&u.upload))
                    .await
                {
                    Ok(()) => {}
                    // Gone already (NoSuchUpload): completed by a run killed before its
                    // journal said so.
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(exit::store("DST", e)),
                }
                journal
                    .upload_finished(t.id, &u.upload.upload_id)
                    .map_err(other)?;
            }
        }
        journal.forget(t.id).map_err(other)?;
        outln!(
            "skyhaul: aborted {} and forgot transfer {}",
            count(
                (uploads.len() + swept) as u64,
                "open upload",
                "open uploads"
            ),
            t.id
        );
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("skyhaul: error: {}", e.message);
            e.code
        }
    }
}
