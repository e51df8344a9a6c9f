//! Everything the command prints: progress on a terminal, the report, errors, and with
//! `--json` the event stream (see `events.rs`).

use crate::events::{self, Event};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use skyhaul_engine::progress::Snapshot;
use skyhaul_engine::report::{count, human_bytes, thousands};
use skyhaul_engine::{Endpoint, Job, Progress, Report, Verification, VerifyMode};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The progress bar on screen, if any: log lines and notices written while it is drawn go
/// through [`ProgressBar::suspend`], which clears the bar, writes the line and redraws the
/// bar below it, so a warning never lands in the middle of the bar's line.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Writes `text` to stdout in one write (so lines from two tasks never mix). A closed
/// stdout (`skyhaul status | head -1`) drops the rest of the output instead of panicking
/// as `println!` does: the command still runs to its end and exits with its own code.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// The verification's line, and what to do about objects it could not compare.
fn verified(v: &Verification) {
    outln!("skyhaul: {v}");
    // Objects that could not be read count as not comparable too; reading again would not help.
    let readable = v.not_comparable.saturating_sub(v.unreadable);
    if readable > 0 && v.mode == VerifyMode::Checksum {
        outln!(
            "skyhaul: {} no checksum to compare with the source's (sizes match); \
             `skyhaul verify --deep` reads them to compare their bytes",
            count(readable, "object had", "objects had")
        );
    }
}

/// Writes `text` to stderr as it is, above the bar when one is drawn.
fn write_stderr(text: &[u8]) {
    let bar = BAR.lock().expect("bar lock").clone();
    let write = || {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text).and_then(|()| err.flush());
    };
    match bar {
        Some(b) => b.suspend(write),
        None => write(),
    }
}

/// One line on stderr, above the bar when one is drawn, its control characters shown
/// escaped ([`printable`]).
pub fn stderr_line(line: &str) {
    write_stderr(format!("{}\n", printable(line)).as_bytes());
}

/// `text` with its control characters shown escaped (`\n`, `\u{1b}`): keys come from
/// stores, and one holding a newline or a terminal escape sequence must neither break a
/// line of output in two nor drive the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c.is_control() {
            true => shown.extend(c.escape_default()),
            false => shown.push(c),
        }
    }
    shown.into()
}

/// The writer for log events (`tracing`): each event is collected and written in one piece
/// when the writer is dropped, above the bar when one is drawn.
#[derive(Default)]
pub struct LogWriter(Vec<u8>);

impl LogWriter {
    pub fn new() -> Self {
        LogWriter::default()
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            redact_key_ids(&mut self.0);
            write_stderr(&self.0);
        }
    }
}

/// Blanks the access key id in the `Credentials { access_key_id: "…", … }` that the AWS
/// SDK's own logs print (it redacts only the secret and the token), at info when a profile
/// loads them and at debug and trace in every request: wherever it comes from, no log line
/// carries it.
fn redact_key_ids(event: &mut Vec<u8>) {
    const FIELD: &[u8] = b"access_key_id: \"";
    let mut from = 0;
    while let Some(at) = event[from..].windows(FIELD.len()).position(|w| w == FIELD) {
        let start = from + at + FIELD.len();
        // `Debug` writes a `"` inside the id (possible at MinIO or Ceph) as `\"`.
        let mut end = start;
        loop {
            match event.get(end) {
                Some(b'"') => break,
                Some(b'\\') => end += 2,
                Some(_) => end += 1,
                None => return,
            }
        }
        event.splice(start..end, *b"** redacted **");
        from = start;
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    quiet: bool,
    json: bool,
}

/// A running progress display; `finish` clears it before the report is printed.
pub struct Display {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// With `--json`: where the failures not yet streamed are drained from at the end.
    failures: Option<Arc<Progress>>,
}

impl Display {
    fn none() -> Self {
        Display {
            bar: None,
            task: None,
            failures: None,
        }
    }

    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            BAR.lock().expect("bar lock").take();
            b.finish_and_clear();
        }
        if let Some(p) = self.failures {
            events::failures(&p.take_failures());
        }
    }
}

/// How often progress is logged: `SKYHAUL_PROGRESS_INTERVAL` seconds (for tests, and for
/// logs that want more or fewer lines), else `default`.
fn interval(default: Duration) -> Duration {
    std::env::var("SKYHAUL_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

/// One progress line, as logged without a terminal.
pub fn progress_line(s: &Snapshot, elapsed: Duration) -> String {
    format!(
        "skyhaul: progress: {}/{}{} objects, {} of {}{}, {}/s, ETA {}, {} retries",
        thousands(s.objects_done + s.objects_skipped),
        thousands(s.objects_total + s.objects_skipped),
        if s.listing_done { "" } else { "+" },
        human_bytes(s.bytes_moved),
        human_bytes(s.bytes_to_move()),
        if s.listing_done { "" } else { "+" },
        human_bytes(s.rate(elapsed) as u64),
        eta(s, elapsed),
        thousands(s.retries)
    )
}

/// The time left, `-` while it cannot be known (see `Snapshot::eta_seconds`).
fn eta(s: &Snapshot, elapsed: Duration) -> String {
    let Some(secs) = s.eta_seconds(elapsed) else {
        return "-".to_string();
    };
    let secs = secs.ceil() as u64;
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

async fn log_progress(progress: Arc<Progress>, every: Duration) {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        eprintln!("{}", progress_line(&progress.snapshot(), started.elapsed()));
    }
}

/// `--json`: a `progress` event every `every`, and each failed object as it fails.
async fn stream_events(progress: Arc<Progress>, every: Duration) {
    let started = std::time::Instant::now();
    let mut next = started + every;
    loop {
        tokio::time::sleep(Duration::from_millis(200).min(every)).await;
        events::failures(&progress.take_failures());
        if std::time::Instant::now() >= next {
            events::emit(&events::progress(progress.snapshot(), started.elapsed()));
            next += every;
        }
    }
}

impl Output {
    pub fn new(quiet: bool, json: bool) -> Self {
        Output { quiet, json }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// With `--json`, the `start` event.
    pub fn start(&self, command: &str, src: &Endpoint, dst: &Endpoint, dry_run: bool) {
        if self.json {
            events::emit(&Event::Start {
                command,
                source: &src.display,
                destination: &dst.display,
                dry_run,
            });
        }
    }

    /// A live bar on stderr when it is a terminal, else a log line every few seconds;
    /// with `--json`, progress and failure events on stdout; nothing with `-q`.
    pub fn start_progress(&self, progress: Arc<Progress>) -> Display {
        if self.json {
            progress.stream_failures();
            return Display {
                bar: None,
                task: Some(tokio::spawn(stream_events(
                    progress.clone(),
                    interval(Duration::from_secs(1)),
                ))),
                failures: Some(progress),
            };
        }
        if self.quiet {
            return Display::none();
        }
        if !std::io::stderr().is_terminal() {
            return Display {
                task: Some(tokio::spawn(log_progress(
                    progress,
                    interval(Duration::from_secs(5)),
                ))),
                ..Display::none()
            };
        }
        // No length until one is known: indicatif draws a bar of length 0 as full.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        // The ETA is ours (`Snapshot::eta_seconds`): indicatif's would claim one before
        // anything has moved, or while the listing still grows the total.
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .expect("valid template"),
        );
        *BAR.lock().expect("bar lock") = Some(bar.clone());
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                let s = progress.snapshot();
                if s.bytes_to_move() > 0 || s.listing_done {
                    b.set_length(s.bytes_to_move());
                }
                b.set_position(s.bytes_moved);
                b.set_message(format!(
                    "ETA {} {}/{}{} objects, {} retries",
                    eta(&s, started.elapsed()),
                    thousands(s.objects_done + s.objects_skipped),
                    thousands(s.objects_total + s.objects_skipped),
                    if s.listing_done { "" } else { "+" },
                    thousands(s.retries)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Display {
            bar: Some(bar),
            task: Some(task),
            failures: None,
        }
    }

    pub fn report(&self, r: &Report, relay: Option<&skyhaul_relay::RelaySummary>) {
        if self.json {
            events::emit(&Event::Done { report: r, relay });
            return;
        }
        for f in &r.failures {
            stderr_line(&format!("skyhaul: failed: {}: {}", f.key, f.error));
        }
        if r.objects_failed as usize > r.failures.len() {
            eprintln!(
                "skyhaul: ... and {} more failures",
                thousands(r.objects_failed - r.failures.len() as u64)
            );
        }
        if let Some(v) = &r.verification {
            for p in &v.problems {
                stderr_line(&format!("skyhaul: verify: {}: {}", p.key, p.error));
            }
        }
        if !self.quiet {
            outln!("skyhaul: {r}");
            if let Some(relay) = relay {
                outln!("skyhaul: {relay}");
            }
            if let Some(v) = r.verification.as_ref().filter(|v| v.objects > 0) {
                verified(v);
            }
            let idle = r.objects_copied == 0 && r.objects_failed == 0 && r.objects_deleted == 0;
            // A check that found something wrong with what earlier runs copied leaves work
            // for the next run.
            let checked = r
                .verification
                .as_ref()
                .is_none_or(|v| crate::exit::verification(v).is_none());
            if r.bytes_skipped > 0 && idle && checked && !r.interrupted {
                outln!(
                    "skyhaul: nothing to do: {} already up to date",
                    human_bytes(r.bytes_skipped)
                );
            }
        }
    }

    pub fn verification(&self, v: &Verification, relay: Option<&skyhaul_relay::RelaySummary>) {
        if self.json {
            events::emit(&Event::Verified {
                verification: v,
                relay,
            });
            return;
        }
        for p in &v.problems {
            stderr_line(&format!("skyhaul: {}: {}", p.key, p.error));
        }
        if !self.quiet {
            verified(v);
            if let Some(relay) = relay {
                outln!("skyhaul: {relay}");
            }
        }
    }

    /// The error on stderr, and with `--json` as the last event.
    pub fn error(&self, message: &str, code: crate::exit::ExitCode) {
        stderr_line(&format!("skyhaul: error: {message}"));
        if self.json {
            events::emit(&Event::Error {
                message,
                exit_code: code as i32,
            });
        }
    }

    pub fn notice(&self, message: &str) {
        if !self.quiet {
            stderr_line(&format!("skyhaul: {message}"));
        }
    }

    /// Something that did not fail the command but needs the user's eye (a relay gateway
    /// that may still be running and billing): printed even with `--quiet`.
    pub fn warning(&self, message: &str) {
        stderr_line(&format!("skyhaul: warning: {message}"));
    }
}

/// `--dry-run`: one line per job that would run (`copy SRC -> DST`, `delete DST`, or one
/// JSON object per line with `--json`), then a summary. Deletions are listed after the
/// copies, in the order a real sync runs them, and not at all when an entry could not be
/// listed: that entry fails, and a sync with a failure deletes nothing.
pub struct DryRun {
    out: Output,
    copies: u64,
    bytes: u64,
    deletes: Vec<String>,
    failed: u64,
}

fn full(store: &dyn skyhaul_store::Store, key: &str) -> String {
    format!("{}/{key}", store.name().trim_end_matches('/'))
}

impl DryRun {
    pub fn new(out: Output) -> Self {
        DryRun {
            out,
            copies: 0,
            bytes: 0,
            deletes: Vec::new(),
            failed: 0,
        }
    }

    pub fn job(&mut self, src: &Endpoint, dst: &Endpoint, job: &Job) {
        match job {
            Job::Copy { src: meta, dst_key }
            | Job::CopyUnlessSame {
                src: meta, dst_key, ..
            } => {
                self.copies += 1;
                self.bytes += meta.size;
                let (from, to) = (
                    full(src.store.as_ref(), &meta.key),
                    full(dst.store.as_ref(), dst_key),
                );
                if self.out.json {
                    events::emit(&Event::Planned {
                        action: "copy",
                        key: &from,
                        dst: Some(&to),
                        size: Some(meta.size),
                    });
                } else {
                    outln!("copy {} -> {}", printable(&from), printable(&to));
                }
            }
            Job::Delete { dst_key } => {
                self.deletes.push(full(dst.store.as_ref(), dst_key));
            }
            Job::Unlisted { key, error } => {
                self.failed += 1;
                if self.out.json {
                    // Keyed as a real run's failures are.
                    events::emit(&Event::ObjectFailed {
                        key,
                        error: &error.message,
                    });
                } else {
                    stderr_line(&format!("skyhaul: {}", error.message));
                }
            }
        }
    }

    /// The summary; `resumed`: objects left out as an earlier run copied them;
    /// `interrupted`: stopped before the listing ended, so the list is not whole.
    /// Prints the summary; returns how many entries the real run would fail.
    pub fn finish(mut self, resumed: u64, interrupted: bool) -> u64 {
        let skipped = match self.failed {
            0 => 0,
            _ => std::mem::take(&mut self.deletes).len(),
        };
        for key in &self.deletes {
            if self.out.json {
                events::emit(&Event::Planned {
                    action: "delete",
                    key,
                    dst: None,
                    size: None,
                });
            } else {
                outln!("delete {}", printable(key));
            }
        }
        if self.out.json {
            events::emit(&Event::DryRunDone {
                dry_run: true,
                objects: self.copies,
                bytes: self.bytes,
                deletes: self.deletes.len() as u64,
                failed: self.failed,
                objects_resumed: resumed,
                interrupted,
            });
        } else if !self.out.quiet {
            let failed = match self.failed {
                0 => String::new(),
                n => format!(", fail {} it cannot list", count(n, "entry", "entries")),
            };
            let skipped = match skipped {
                0 => String::new(),
                n => format!(" (not {n}: a sync with a failure deletes nothing)"),
            };
            let resumed = match resumed {
                0 => String::new(),
                n => format!(", leaving out {} an earlier run copied", thousands(n)),
            };
            let stopped = match interrupted {
                true => " (interrupted: the list is not whole)",
                false => "",
            };
            eprintln!(
                "skyhaul: dry run{stopped}: would copy {} ({}){failed} and delete \
                 {}{skipped}{resumed}; nothing was written",
                count(self.copies, "object", "objects"),
                human_bytes(self.bytes),
                thousands(self.deletes.len() as u64)
            );
        }
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_print_escaped() {
        assert_eq!(printable("plain/ключ 🙂"), "plain/ключ 🙂");
        assert_eq!(printable("a\nb\tc\r\u{1b}[2J"), "a\\nb\\tc\\r\\u{1b}[2J");
    }

    #[test]
    fn access_key_ids_are_redacted_from_log_events() {
        let mut e = br#"x=Credentials { access_key_id: "AKIA1", secret_access_key: "** redacted **" } y=Identity { data: Credentials { access_key_id: "AKIA22", b }"#.to_vec();
        redact_key_ids(&mut e);
        let e = String::from_utf8(e).unwrap();
        assert!(!e.contains("AKIA"), "{e}");
        assert_eq!(
            e.matches(r#"access_key_id: "** redacted **""#).count(),
            2,
            "{e}"
        );
        // A `"` in the id is escaped by `Debug`; the whole id goes.
        let mut quoted = br#"Credentials { access_key_id: "LEAKA\"LEAKB", b }"#.to_vec();
        redact_key_ids(&mut quoted);
        assert_eq!(
            String::from_utf8(quoted).unwrap(),
            r#"Credentials { access_key_id: "** redacted **", b }"#
        );
        let mut plain = b"no credentials here".to_vec();
        redact_key_ids(&mut plain);
        assert_eq!(plain, b"no credentials here");
    }

    #[test]
    fn progress_line_reads_well() {
        let s = Snapshot {
            objects_total: 40,
            bytes_total: 3 << 30,
            objects_done: 12,
            bytes_moved: 1 << 30,
            retries: 2,
            ..Default::default()
        };
        let line = progress_line(&s, Duration::from_secs(4));
        assert!(
            line.starts_with("skyhaul: progress: 12/40+ objects, "),
            "{line}"
        );
        assert!(line.contains("/s, ETA -, 2 retries"), "{line}");
        // Once the listing is done: 2 GiB left at 1 GiB per 4 s.
        let done = Snapshot {
            listing_done: true,
            ..s
        };
        let line = progress_line(&done, Duration::from_secs(4));
        assert!(line.contains("/s, ETA 8s, "), "{line}");
        let slow = progress_line(&done, Duration::from_secs(4000));
        assert!(slow.contains(", ETA 2h13m, "), "{slow}");
        let nothing = Snapshot {
            bytes_moved: 0,
            ..done
        };
        let line = progress_line(&nothing, Duration::from_secs(4));
        assert!(line.contains(", ETA -, "), "no pace, no ETA: {line}");
    }
}
