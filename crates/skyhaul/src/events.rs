//! `--json`: newline-delimited JSON events on stdout, one object per line.
//!
//! Why a stream and not one object at the end: a job runner or a notebook watching a
//! transfer of hours wants to see it move, and to see each failed key when it fails. The
//! last line is still the whole report (all its fields at the top level, as `--json`
//! printed before events existed), so a consumer that reads only the last line keeps
//! working.
//!
//! Every line has `"schema": 1` and `"event"`. The schema number changes only when a
//! field is removed or changes meaning; new fields and new events may appear within one
//! schema version, so consumers must ignore what they do not know. The README section
//! "JSON events" documents every event and field.

use serde::Serialize;
use skyhaul_engine::progress::Snapshot;
use skyhaul_engine::{Failure, Report, Verification};
use std::time::Duration;

/// The version of the event schema, in every line's `schema` field.
pub const SCHEMA: u32 = 1;

/// One event. Serialised with its name in `event` (snake_case) and its fields beside it.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// The stores are open and the transfer (or dry run, or verification) begins.
    Start {
        command: &'a str,
        source: &'a str,
        destination: &'a str,
        dry_run: bool,
    },
    /// The counters now, every second or so (`SKYHAUL_PROGRESS_INTERVAL`).
    Progress {
        elapsed_seconds: f64,
        /// Bytes moved per second since the start.
        bytes_per_second: f64,
        /// Seconds left at that rate, once the listing is complete and something moved.
        eta_seconds: Option<f64>,
        #[serde(flatten)]
        counters: Snapshot,
    },
    /// One object could not be copied (or deleted); the transfer goes on.
    ObjectFailed { key: &'a str, error: &'a str },
    /// `--dry-run`: one job that would run (`action` is `copy` or `delete`).
    Planned {
        action: &'a str,
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        dst: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// The end of a transfer: the whole report.
    Done {
        #[serde(flatten)]
        report: &'a Report,
        /// Relay mode's byte counts: logical bytes, bytes on the wire, egress saved.
        #[serde(skip_serializing_if = "Option::is_none")]
        relay: Option<&'a skyhaul_relay::RelaySummary>,
    },
    /// The end of `verify`: the whole verification.
    #[serde(rename = "done")]
    Verified {
        #[serde(flatten)]
        verification: &'a Verification,
        /// Through a relay: its byte counts (a deep verify reads the destination over it).
        #[serde(skip_serializing_if = "Option::is_none")]
        relay: Option<&'a skyhaul_relay::RelaySummary>,
    },
    /// The end of a dry run.
    #[serde(rename = "done")]
    DryRunDone {
        dry_run: bool,
        objects: u64,
        bytes: u64,
        deletes: u64,
        /// Entries that could not be listed: a real run fails them.
        failed: u64,
        /// Objects an earlier, interrupted run copied: a rerun leaves them out too.
        objects_resumed: u64,
        /// Stopped (Ctrl-C) before the listing ended: the counts are not whole.
        interrupted: bool,
    },
    /// The command stopped with an error before it could report (also on stderr).
    Error { message: &'a str, exit_code: i32 },
}

#[derive(Serialize)]
struct Line<'a> {
    schema: u32,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// The line for `event`, without the newline.
pub fn line(event: &Event) -> String {
    serde_json::to_string(&Line {
        schema: SCHEMA,
        event,
    })
    .expect("events serialise")
}

/// Writes `event` as one line on stdout (one write, so lines from two tasks never mix).
pub fn emit(event: &Event) {
    let mut text = line(event);
    text.push('\n');
    // A closed stdout (`| head`) must not kill the transfer: the report still matters.
    crate::output::write_stdout(&text);
}

/// The progress event for `s`, `elapsed` after the start.
pub fn progress(s: Snapshot, elapsed: Duration) -> Event<'static> {
    Event::Progress {
        elapsed_seconds: elapsed.as_secs_f64().max(0.001),
        bytes_per_second: s.rate(elapsed),
        eta_seconds: s.eta_seconds(elapsed),
        counters: s,
    }
}

/// `object_failed` for each failure the engine reported since the last call.
pub fn failures(failures: &[Failure]) {
    for f in failures {
        emit(&Event::ObjectFailed {
            key: &f.key,
            error: &f.error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_has_the_schema_and_the_event_name() {
        let v: serde_json::Value = serde_json::from_str(&line(&Event::ObjectFailed {
            key: "a/b",
            error: "boom",
        }))
        .unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["event"], "object_failed");
        assert_eq!(v["key"], "a/b");
    }

    #[test]
    fn progress_has_an_eta_only_when_it_can_be_known() {
        let mut s = Snapshot {
            bytes_total: 1000,
            bytes_moved: 250,
            ..Default::default()
        };
        let listing: serde_json::Value =
            serde_json::from_str(&line(&progress(s, Duration::from_secs(1)))).unwrap();
        assert!(listing["eta_seconds"].is_null(), "{listing}");
        s.listing_done = true;
        let done: serde_json::Value =
            serde_json::from_str(&line(&progress(s, Duration::from_secs(1)))).unwrap();
        assert_eq!(done["eta_seconds"], 3.0);
        assert_eq!(done["bytes_moved"], 250);
    }
}
