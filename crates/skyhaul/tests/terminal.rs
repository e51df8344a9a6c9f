//! skyhaul on a real terminal (a pseudo-terminal, read through a VT100 emulator): the
//! progress bar renders and is cleared cleanly, and large transfers ask before starting.
//! Without a terminal they do not ask, and say so.

mod common;

use common::*;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use skyhaul_testkit::S3Server;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROWS: u16 = 30;
const COLS: u16 = 120;

/// A skyhaul process on a pseudo-terminal: everything it writes, and a way to type.
struct Term {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    output: Arc<Mutex<Vec<u8>>>,
    writer: Box<dyn Write + Send>,
    // Kept open until the child is done, so its terminal does not go away under it.
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Term {
    fn start(
        args: &[&str],
        src: Option<&S3Server>,
        dst: Option<&S3Server>,
        env: &[(&str, &str)],
    ) -> Term {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_skyhaul"));
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        for (k, v) in test_env(src, dst, env) {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            }
        }
        let child = pty.slave.spawn_command(cmd).expect("skyhaul starts");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().unwrap();
        let writer = pty.master.take_writer().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with an error (EIO) or 0 once the child has exited.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            child,
            output,
            writer,
            _master: pty.master,
        }
    }

    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits (at most 30 s) until the output contains `text`.
    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.raw().contains(text) {
            assert!(
                Instant::now() < deadline,
                "never saw {text:?} in:\n{}",
                self.raw()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r").as_bytes())
            .unwrap();
        self.writer.flush().unwrap();
    }

    /// Waits for the exit code, then for the output to stop growing.
    fn finish(mut self) -> (i32, String, vt100::Parser) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.raw());
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut last = usize::MAX;
        while last != self.output.lock().unwrap().len() {
            last = self.output.lock().unwrap().len();
            std::thread::sleep(Duration::from_millis(100));
        }
        let bytes = self.output.lock().unwrap().clone();
        let size = |n| std::num::NonZeroU16::new(n).unwrap();
        let mut screen = vt100::Parser::new(size(ROWS), size(COLS), 0);
        screen.process(&bytes);
        (
            status.exit_code() as i32,
            String::from_utf8_lossy(&bytes).into_owned(),
            screen,
        )
    }
}

/// A recursive upload to a test server, no journal.
fn upload_args<'a>(src: &'a str, dst: &'a str, endpoint: &'a str) -> Vec<&'a str> {
    cp_r(src, dst, "--dst-endpoint", endpoint)
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_renders_and_finishes_cleanly() {
    let (s3, _tmp, src, files) = bucket_and_local_mixed().await;
    let mut args = upload_args(src.to_str().unwrap(), "s3://bucket/p/", &s3.endpoint);
    // ~12 MiB at 6 MiB/s: about two seconds of bar at 5 frames a second.
    args.extend(["--bwlimit", "6M"]);
    args.extend(SMALL_PARTS);
    let (code, raw, parser) = Term::start(&args, None, Some(&s3), &[]).finish();
    assert_eq!(code, 0, "{raw}");

    // The bar was drawn: its ETA and object counter went by, more than once.
    assert!(
        raw.matches("ETA").count() >= 3,
        "no progress bar drawn:\n{raw}"
    );
    assert!(raw.contains("objects, 0 retries"), "{raw}");
    // Never full before anything has moved (a bar of unknown length used to be drawn full).
    let full = format!("{} 0 B/", "\u{2588}".repeat(30));
    assert!(!raw.contains(&full), "a full bar at 0 B:\n{raw}");

    // And what is left on the screen is the report alone: no bar, no half-erased line.
    let screen = parser.screen().contents();
    let lines: Vec<&str> = screen
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("skyhaul: copied 6 objects")),
        "no report line on the screen:\n{screen}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("skyhaul: verified 6 objects")),
        "{screen}"
    );
    for l in &lines {
        assert!(
            l.starts_with("skyhaul: "),
            "a leftover on the screen: {l:?}\n{screen}"
        );
        assert!(!l.contains("ETA"), "the bar was not cleared: {l:?}");
    }
    let (row, _) = parser.screen().cursor_position();
    assert!(
        usize::from(row) <= lines.len() + 1,
        "cursor left below the report"
    );
    assert_eq!(read_bucket(&s3, "bucket", "p/").await, files);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_transfer_asks_first_on_a_terminal() {
    let (s3, _tmp, src, files) = bucket_and_local_mixed().await;
    let src = src.to_str().unwrap();
    // Thresholds low enough that the 6 objects of the data set are "large".
    let low = [("SKYHAUL_CONFIRM_OBJECTS", "3")];

    // "n": nothing is copied, exit code 130.
    let mut term = Term::start(
        &upload_args(src, "s3://bucket/no/", &s3.endpoint),
        None,
        Some(&s3),
        &low,
    );
    term.wait_for("Continue? [y/N]");
    assert!(
        term.raw().contains("this copies at least 4 objects"),
        "{}",
        term.raw()
    );
    term.type_line("n");
    let (code, raw, _) = term.finish();
    assert_eq!(code, 130, "{raw}");
    assert!(raw.contains("not confirmed: nothing was copied"), "{raw}");
    assert!(s3.list("bucket", "no/").await.is_empty());

    // "y": the transfer runs.
    let mut term = Term::start(
        &upload_args(src, "s3://bucket/yes/", &s3.endpoint),
        None,
        Some(&s3),
        &low,
    );
    term.wait_for("Continue? [y/N]");
    term.type_line("y");
    let (code, raw, _) = term.finish();
    assert_eq!(code, 0, "{raw}");
    assert_eq!(read_bucket(&s3, "bucket", "yes/").await, files);

    // -y: no question at all.
    let mut args = upload_args(src, "s3://bucket/y/", &s3.endpoint);
    args.push("-y");
    let (code, raw, _) = Term::start(&args, None, Some(&s3), &low).finish();
    assert_eq!(code, 0, "{raw}");
    assert!(!raw.contains("Continue?"), "{raw}");

    // Under the thresholds: no question either.
    let (code, raw, _) = Term::start(
        &upload_args(src, "s3://bucket/small/", &s3.endpoint),
        None,
        Some(&s3),
        &[],
    )
    .finish();
    assert_eq!(code, 0, "{raw}");
    assert!(!raw.contains("Continue?"), "{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_delete_asks_before_deleting_on_a_terminal() {
    let (s3, _tmp, src, _) = bucket_and_local_mixed().await;
    s3.put("bucket", "m/stale", b"only at the destination")
        .await;
    let args = [
        "sync",
        "--delete",
        src.to_str().unwrap(),
        "s3://bucket/m/",
        "--dst-endpoint",
        &s3.endpoint,
        "--no-journal",
    ];
    let mut term = Term::start(&args, None, Some(&s3), &[]);
    term.wait_for("Continue? [y/N]");
    assert!(term.raw().contains("DELETES 1 object at"), "{}", term.raw());
    term.type_line("");
    let (code, raw, _) = term.finish();
    assert_eq!(code, 130, "the default answer is no: {raw}");
    assert!(
        s3.get("bucket", "m/stale").await.is_some(),
        "nothing deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_terminal_nothing_asks_and_the_log_says_so() {
    let (s3, _tmp, src, files) = bucket_and_local_mixed().await;
    s3.put("bucket", "m/stale", b"only at the destination")
        .await;
    let low = [("SKYHAUL_CONFIRM_OBJECTS", "3")];
    let run = skyhaul_env(
        &upload_args(src.to_str().unwrap(), "s3://bucket/big/", &s3.endpoint),
        None,
        Some(&s3),
        &low,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("a large transfer (over 3 objects"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not a terminal"), "{}", run.stderr);
    assert_eq!(read_bucket(&s3, "bucket", "big/").await, files);

    let sync = |extra: &[&str]| {
        let mut args = vec![
            "sync",
            "--delete",
            src.to_str().unwrap(),
            "s3://bucket/m/",
            "--dst-endpoint",
            &s3.endpoint,
            "--no-journal",
        ];
        args.extend(extra);
        skyhaul(&args, None, Some(&s3))
    };
    let run = sync(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("not asking before sync --delete"),
        "{}",
        run.stderr
    );
    assert!(
        s3.get("bucket", "m/stale").await.is_none(),
        "deleted without asking"
    );

    // -y: the same, without the note.
    s3.put("bucket", "m/stale", b"again").await;
    let run = sync(&["-y"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("not a terminal"), "{}", run.stderr);
    assert!(s3.get("bucket", "m/stale").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_during_the_bar_stay_whole() {
    // One object fails mid-transfer, which the engine logs (at debug level) while the bar
    // is on the screen.
    let (s3, _tmp, dst) = bucket_and_blocked_local_dst().await;
    let mut args = cp_r(
        "s3://bucket/data",
        dst.to_str().unwrap(),
        "--src-endpoint",
        &s3.endpoint,
    );
    args.extend(["--bwlimit", "6M"]);
    args.extend(SMALL_PARTS);
    let log = [
        ("SKYHAUL_LOG", "warn,skyhaul_engine=debug"),
        ("NO_COLOR", "1"),
    ];
    let (code, raw, parser) = Term::start(&args, Some(&s3), None, &log).finish();
    assert_eq!(code, 1, "one object fails: {raw}");
    assert!(
        raw.matches("ETA").count() >= 3,
        "no progress bar drawn:\n{raw}"
    );
    let screen = parser.screen().contents();
    let logged: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("cannot write"))
        .collect();
    assert_eq!(
        logged.len(),
        1,
        "the log line is not whole on the screen:\n{screen}"
    );
    for l in screen.lines() {
        assert!(!l.contains("ETA"), "a bar is left: {l:?}\n{screen}");
    }
    assert!(
        logged[0].trim_start().starts_with("20"),
        "starts with its timestamp: {:?}",
        logged[0]
    );
}
