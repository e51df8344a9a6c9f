//! What a transfer did, for people (`Display`) and programs (`--json`).

use crate::progress::Snapshot;
use crate::verify::Verification;
use serde::Serialize;
use std::fmt;

/// One object that could not be transferred, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub key: String,
    pub error: String,
}

/// Why the check after the copy could not be finished (the destination could not be
/// listed or read back): what was copied is not all checked, and the run fails with the
/// exit code of this error's kind (unless the check had found something wrong: 6).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckFailed {
    pub kind: skyhaul_store::ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub destination: String,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_skipped: u64,
    pub bytes_skipped: u64,
    pub objects_failed: u64,
    pub objects_deleted: u64,
    /// Objects copied by the store itself, without moving bytes through this machine.
    pub server_side_copies: u64,
    pub retries: u64,
    /// Objects an earlier, interrupted run of this transfer had already copied.
    pub objects_resumed: u64,
    /// Bytes that crossed this machine (parts reused from an earlier run do not count).
    pub bytes_moved: u64,
    /// Bytes of parts an earlier, interrupted run had sent, completed into objects here.
    pub bytes_reused: u64,
    /// The journal's id for this transfer (`skyhaul status`), when journaling.
    pub transfer_id: Option<String>,
    pub seconds: f64,
    pub bytes_per_second: f64,
    pub failures: Vec<Failure>,
    /// The check of the destination after the copy, unless `--verify none`.
    pub verification: Option<Verification>,
    /// Stopped before the end (Ctrl-C, SIGTERM): objects not yet tried are neither copied
    /// nor failed, a rerun of the same command finishes the transfer, and the check after
    /// the copy did not run (or was stopped), unless `verification` is there: then the
    /// stop came after it, in a sync's deletions.
    pub interrupted: bool,
    /// The check after the copy could not be done: the copy's report still comes, with
    /// its failures, rather than the check's error alone.
    pub check_failed: Option<CheckFailed>,
}

impl Report {
    pub fn new(
        source: String,
        destination: String,
        s: &Snapshot,
        seconds: f64,
        failures: Vec<Failure>,
    ) -> Self {
        Report {
            source,
            destination,
            objects_copied: s.objects_done,
            bytes_copied: s.bytes_done,
            objects_skipped: s.objects_skipped,
            bytes_skipped: s.bytes_skipped,
            objects_failed: s.objects_failed,
            objects_deleted: s.objects_deleted,
            server_side_copies: s.server_side_copies,
            retries: s.retries,
            objects_resumed: s.objects_resumed,
            bytes_moved: s.bytes_moved,
            bytes_reused: s.bytes_reused,
            transfer_id: None,
            seconds,
            // This run's pace: what an earlier run sent is not.
            bytes_per_second: if seconds > 0.0 {
                s.bytes_done.saturating_sub(s.bytes_reused) as f64 / seconds
            } else {
                0.0
            },
            failures,
            verification: None,
            interrupted: false,
            check_failed: None,
        }
    }

    /// Everything was copied and the verification (if any) checked it all and found
    /// nothing wrong.
    pub fn succeeded(&self) -> bool {
        self.objects_failed == 0
            && self.check_failed.is_none()
            && self.verified()
            && self.verification.as_ref().is_none_or(|v| v.complete())
    }

    pub fn verified(&self) -> bool {
        self.verification.as_ref().is_none_or(|v| v.passed())
    }
}

/// `1234567` → `1,234,567`: counts people can read at a glance.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` things, in the singular for one: `count(1, "copy", "copies")` → `1 copy`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// Binary units for sizes, as `ls -h` and rclone print them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mbps = self.bytes_per_second / 1e6;
        write!(
            f,
            "copied {} ({}), skipped {} ({}), failed {}",
            count(self.objects_copied, "object", "objects"),
            human_bytes(self.bytes_copied),
            thousands(self.objects_skipped),
            human_bytes(self.bytes_skipped),
            thousands(self.objects_failed),
        )?;
        if self.objects_deleted > 0 {
            write!(f, ", deleted {}", thousands(self.objects_deleted))?;
        }
        write!(
            f,
            " in {:.2} s: {mbps:.1} MB/s ({:.2} Gbit/s), {} retries",
            self.seconds,
            mbps * 8.0 / 1000.0,
            thousands(self.retries)
        )?;
        if self.objects_resumed > 0 {
            write!(
                f,
                ", {} done by an earlier run",
                thousands(self.objects_resumed)
            )?;
        }
        if self.bytes_reused > 0 {
            write!(
                f,
                ", {} of parts sent by an earlier run",
                human_bytes(self.bytes_reused)
            )?;
        }
        if self.server_side_copies > 0 {
            write!(
                f,
                ", {} by server-side copy",
                thousands(self.server_side_copies)
            )?;
        }
        if self.interrupted {
            f.write_str(match self.verification {
                // Stopped once the check was over: what a sync's deletions had left to do.
                Some(_) => {
                    "; interrupted after what was copied was checked (deletions may be left): \
                     run the same command again to finish"
                }
                None => {
                    "; interrupted, so what was copied is not checked: run the same command \
                     again to finish and check it"
                }
            })?;
        } else if self.check_failed.is_some() {
            f.write_str(
                "; the check after the copy failed (below), so what was copied is not all \
                 checked: run the same command again to check it",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_034_567), "12,034,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(5 << 30), "5.00 GiB");
    }

    #[test]
    fn report_line() {
        let s = Snapshot {
            objects_done: 1152,
            bytes_done: 1152 << 20,
            objects_skipped: 3,
            bytes_skipped: 3072,
            retries: 2,
            ..Default::default()
        };
        let r = Report::new("a".into(), "b".into(), &s, 2.0, vec![]);
        assert_eq!(
            r.to_string(),
            "copied 1,152 objects (1.12 GiB), skipped 3 (3.00 KiB), failed 0 in 2.00 s: 604.0 MB/s (4.83 Gbit/s), 2 retries"
        );
        assert!(r.succeeded());
    }

    /// Interrupted before the check, or after it (in a sync's deletions): the report says
    /// which, rather than "not checked" above a verification line.
    #[test]
    fn an_interrupted_report_says_whether_the_copies_were_checked() {
        let mut r = Report::new("a".into(), "b".into(), &Snapshot::default(), 1.0, vec![]);
        r.interrupted = true;
        assert!(r.to_string().ends_with(
            "; interrupted, so what was copied is not checked: run the same command again \
             to finish and check it"
        ));
        r.verification = Some(Verification::default());
        let line = r.to_string();
        assert!(
            line.contains("interrupted after what was copied was checked"),
            "{line}"
        );
        assert!(!line.contains("not checked"), "{line}");
    }
}
