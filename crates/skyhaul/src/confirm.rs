//! Asking before a large transfer starts, and `-y` to not ask.
//!
//! Why: a typo in a prefix (`s3://bucket/` for `s3://bucket/day1/`) can start copying a
//! whole bucket, and a `sync --delete` in the wrong direction deletes what it was meant to
//! keep. On a terminal, before such a transfer starts, skyhaul counts what it would do and
//! asks. Counting lists the source (and, for sync, the destination) once more, but only up
//! to the thresholds, except for `sync --delete`, whose deletions are known only once both
//! listings are compared to the end.
//!
//! Without a terminal nobody can answer: scripts and schedulers proceed as before, and the
//! log says so (at start for `--delete`, when a threshold is passed otherwise), so a
//! surprise is at least on record. `-y` skips the question and these notes.

use crate::exit::{self, CliError};
use crate::output::Output;
use crate::size::Size;
use skyhaul_engine::report::{self, human_bytes, thousands};
use skyhaul_engine::{Endpoint, Job, Mode, Progress, TransferOptions};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Above these a transfer asks first: `SKYHAUL_CONFIRM_OBJECTS` objects (default 10,000)
/// or `SKYHAUL_CONFIRM_BYTES` bytes (default 100 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub objects: u64,
    pub bytes: u64,
}

impl Thresholds {
    pub fn from_env() -> Result<Self, CliError> {
        let read = |var: &str, default: u64| -> Result<u64, CliError> {
            match std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v.trim().parse::<Size>().map(|s| s.0).map_err(|_| {
                    exit::usage(format!("{var}={v}: not a number (unset it or fix it)"))
                }),
            }
        };
        Ok(Thresholds {
            objects: read("SKYHAUL_CONFIRM_OBJECTS", 10_000)?,
            bytes: read("SKYHAUL_CONFIRM_BYTES", 100 << 30)?,
        })
    }

    fn passed(&self, objects: u64, bytes: u64) -> bool {
        objects > self.objects || bytes > self.bytes
    }
}

/// Whether the transfer may start; `Go` carries the note that goes to the log when the
/// transfer turns out large and nobody could be asked (`finish` it when the transfer ends).
pub enum Decision {
    Go(Option<Note>),
    Declined,
}

/// Watches a transfer nobody was asked about, to say in the log once it passes a threshold.
pub struct Note {
    task: tokio::task::JoinHandle<()>,
    said: Arc<AtomicBool>,
    progress: Arc<Progress>,
    limits: Thresholds,
    out: Output,
}

impl Note {
    fn start(progress: Arc<Progress>, limits: Thresholds, out: Output) -> Note {
        let said = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (progress, said) = (progress.clone(), said.clone());
            async move {
                loop {
                    if note_if_large(&progress, limits, out, &said) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Note {
            task,
            said,
            progress,
            limits,
            out,
        }
    }

    /// Stops watching; a transfer that ended before the watch saw it pass gets its note now.
    pub fn finish(self) {
        self.task.abort();
        note_if_large(&self.progress, self.limits, self.out, &self.said);
    }
}

/// What counting found before asking.
#[derive(Debug, Default)]
struct Counted {
    objects: u64,
    bytes: u64,
    deletes: u64,
    /// Counting stopped at a threshold: there is more.
    stopped: bool,
}

/// Decides whether the transfer starts: `-y`, no terminal, small, or the user's answer.
pub async fn check(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    yes: bool,
    out: Output,
    progress: Arc<Progress>,
) -> Result<Decision, CliError> {
    if yes {
        return Ok(Decision::Go(None));
    }
    let limits = Thresholds::from_env()?;
    let deleting = matches!(opts.mode, Mode::Sync { delete: true, .. });
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        if deleting {
            out.notice(
                "not a terminal, so not asking before sync --delete deletes what the source lacks (-y silences this)",
            );
        }
        return Ok(Decision::Go(Some(Note::start(progress, limits, out))));
    }
    let counted = count(src, dst, opts, limits, deleting).await?;
    if !limits.passed(counted.objects, counted.bytes) && counted.deletes == 0 {
        return Ok(Decision::Go(None));
    }
    // Counting stops at the first object past a threshold: there may be more.
    let more = if counted.stopped { "at least " } else { "" };
    let mut question = format!(
        "skyhaul: this copies {more}{} objects ({more}{}) from {} to {}",
        thousands(counted.objects),
        human_bytes(counted.bytes),
        src.display,
        dst.display
    );
    if counted.deletes > 0 {
        question.push_str(&format!(
            " and DELETES {more}{} at {}",
            report::count(counted.deletes, "object", "objects"),
            dst.display
        ));
    }
    question.push_str(". Continue? [y/N] ");
    Ok(if ask(question).await {
        Decision::Go(None)
    } else {
        Decision::Declined
    })
}

/// Plans the transfer without doing it, stopping once the answer is clear.
async fn count(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    limits: Thresholds,
    deleting: bool,
) -> Result<Counted, CliError> {
    let cancel = CancellationToken::new();
    let mut c = Counted::default();
    skyhaul_engine::dry_run(
        src,
        dst,
        opts,
        Arc::new(Progress::default()),
        cancel.clone(),
        None,
        |job| {
            match job {
                // A checksum comparison may yet skip it: counted, to err on asking.
                Job::Copy { src, .. } | Job::CopyUnlessSame { src, .. } => {
                    c.objects += 1;
                    c.bytes += src.size;
                }
                Job::Delete { .. } => c.deletes += 1,
                Job::Unlisted { .. } => {}
            }
            // With --delete, go on until a deletion shows up: that alone must be asked.
            if limits.passed(c.objects, c.bytes) && (!deleting || c.deletes > 0) {
                c.stopped = true;
                cancel.cancel();
            }
        },
    )
    .await
    .map_err(|e| exit::store(exit::side_of(&e, src, dst), e))?;
    Ok(c)
}

/// Asks on stderr, reads the answer from stdin: only `y` or `yes` go on.
async fn ask(question: String) -> bool {
    tokio::task::spawn_blocking(move || {
        eprint!("{question}");
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_err() {
            return false;
        }
        matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    })
    .await
    .unwrap_or(false)
}

/// Logs, once, that the transfer passed a threshold; true when there is nothing more to
/// watch for (said, or the listing is complete and it stayed small).
fn note_if_large(progress: &Progress, limits: Thresholds, out: Output, said: &AtomicBool) -> bool {
    let s = progress.snapshot();
    if limits.passed(s.objects_total, s.bytes_total) {
        if !said.swap(true, Ordering::AcqRel) {
            out.notice(&format!(
                "a large transfer (over {} objects or {}): not a terminal, so going on without asking (-y silences this)",
                thousands(limits.objects),
                human_bytes(limits.bytes)
            ));
        }
        return true;
    }
    s.listing_done
}
