//! Everything the command prints: progress on a terminal, the report, errors.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use skyhaul_engine::report::{human_bytes, thousands};
use skyhaul_engine::{Progress, Report, Verification};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    quiet: bool,
    json: bool,
}

/// A running progress display; `finish` clears it before the report is printed.
pub struct Display {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

impl Output {
    pub fn new(quiet: bool, json: bool) -> Self {
        Output { quiet, json }
    }

    /// A live bar on stderr when it is a terminal and nobody asked for silence or JSON.
    pub fn start_progress(&self, progress: Arc<Progress>) -> Display {
        if self.quiet || self.json || !std::io::stderr().is_terminal() {
            return Display {
                bar: None,
                task: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let s = progress.snapshot();
                b.set_length(s.bytes_total.max(s.bytes_moved));
                b.set_position(s.bytes_moved);
                b.set_message(format!(
                    "{}/{}{} objects, {} retries",
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
        }
    }

    pub fn report(&self, r: &Report) {
        if self.json {
            println!("{}", serde_json::to_string(r).expect("report serialises"));
            return;
        }
        for f in &r.failures {
            eprintln!("skyhaul: failed: {}: {}", f.key, f.error);
        }
        if r.objects_failed as usize > r.failures.len() {
            eprintln!(
                "skyhaul: ... and {} more failures",
                thousands(r.objects_failed - r.failures.len() as u64)
            );
        }
        if let Some(v) = &r.verification {
            for p in &v.problems {
                eprintln!("skyhaul: verify: {}: {}", p.key, p.error);
            }
        }
        if !self.quiet {
            println!("skyhaul: {r}");
            if let Some(v) = &r.verification {
                println!("skyhaul: {v}");
            }
            if r.bytes_skipped > 0 && r.objects_copied == 0 && r.objects_failed == 0 {
                println!(
                    "skyhaul: nothing to do: {} already up to date",
                    human_bytes(r.bytes_skipped)
                );
            }
        }
    }

    pub fn verification(&self, v: &Verification) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(v).expect("verification serialises")
            );
            return;
        }
        for p in &v.problems {
            eprintln!("skyhaul: {}: {}", p.key, p.error);
        }
        if !self.quiet {
            println!("skyhaul: {v}");
        }
    }

    pub fn error(&self, message: &str) {
        eprintln!("skyhaul: error: {message}");
    }

    pub fn notice(&self, message: &str) {
        if !self.quiet {
            eprintln!("skyhaul: {message}");
        }
    }
}
