//! `--json`: the event stream's shape, pinned by a snapshot (timings, paths and counters
//! that depend on timing masked), and the rules every stream keeps.

mod common;

use common::*;
use serde_json::Value;

/// Replaces every value at `keys` with a placeholder naming its JSON type.
fn mask(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if keys.contains(&k.as_str()) || keys == ["*"] {
                    *val = Value::String(format!("[{}]", type_name(val)));
                } else {
                    mask(val, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask(i, keys)),
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_stream_shape() {
    // One object fails, the others are copied.
    let (s3, _tmp, dst) = bucket_and_blocked_local_dst().await;
    let mut args = cp_r(
        "s3://bucket/data",
        dst.to_str().unwrap(),
        "--src-endpoint",
        &s3.endpoint,
    );
    args.extend([
        "--json",
        // ~12 MiB at 16 MiB/s: long enough for several progress events.
        "--bwlimit",
        "16M",
    ]);
    args.extend(SMALL_PARTS);
    let run = skyhaul_env(
        &args,
        Some(&s3),
        None,
        &[("SKYHAUL_PROGRESS_INTERVAL", "0.05")],
    );
    assert_eq!(run.code, 1, "one object failed: {}", run.stderr);
    let events = run.events();

    // The rules: a version on every line, start first, done last, failures as they happen.
    assert!(events.iter().all(|e| e["schema"] == 1), "{}", run.stdout);
    assert_eq!(events.first().unwrap()["event"], "start");
    assert_eq!(events.last().unwrap()["event"], "done");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.iter().filter(|k| **k == "progress").count() >= 2,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "object_failed").count(), 1);
    let failed_at = kinds.iter().position(|k| *k == "object_failed").unwrap();
    assert!(failed_at < kinds.len() - 1, "streamed before the end");
    // Progress only grows.
    let moved: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["bytes_moved"].as_u64().unwrap())
        .collect();
    assert!(moved.windows(2).all(|w| w[0] <= w[1]), "{moved:?}");
    // The listing ends long before the copies do: from then on the totals are whole and
    // there is an ETA, while the bytes still move.
    let ready = events.iter().find(|e| {
        e["event"] == "progress" && e["listing_done"] == true && e["eta_seconds"].is_number()
    });
    let ready = ready.unwrap_or_else(|| panic!("no ETA while copying: {}", run.stdout));
    assert!(ready["bytes_moved"].as_u64() < events.last().unwrap()["bytes_moved"].as_u64());

    // The shape: the first event of each kind, with what varies run to run masked.
    let mut shape = Vec::new();
    for kind in ["start", "progress", "object_failed", "done"] {
        let mut e = events.iter().find(|e| e["event"] == kind).unwrap().clone();
        match kind {
            "progress" => {
                let event = e["event"].clone();
                mask(&mut e, &["*"]);
                e["event"] = event;
                // Null until the listing is complete: either may come first.
                e["eta_seconds"] = "[number or null]".into();
                e["schema"] = 1.into();
            }
            _ => mask(
                &mut e,
                &["destination", "error", "seconds", "bytes_per_second"],
            ),
        }
        shape.push(serde_json::to_string_pretty(&e).unwrap());
    }
    insta::assert_snapshot!("json_event_shapes", shape.join("\n"));
}

#[test]
fn errors_end_the_stream_with_an_error_event() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            missing.to_str().unwrap(),
            tmp.path().join("out").to_str().unwrap(),
            "--json",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let last = run.json();
    assert_eq!(last["event"], "error");
    assert_eq!(last["exit_code"], 3);
    assert!(last["message"].as_str().unwrap().contains("missing"));
    assert!(run.stderr.contains("skyhaul: error:"), "{}", run.stderr);

    // A value the argument parser refuses too, its own message still on stderr.
    let out = tmp.path().join("out");
    let run = skyhaul(
        &[
            "cp",
            "-r",
            ".",
            out.to_str().unwrap(),
            "--part-size",
            "0",
            "--json",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    let last = run.json();
    assert_eq!(
        (&last["event"], &last["exit_code"]),
        (&"error".into(), &2.into())
    );
    assert!(
        last["message"].as_str().unwrap().contains("--part-size"),
        "{last}"
    );
    assert!(run.stderr.contains("--part-size"), "{}", run.stderr);
    // The whole first paragraph: which arguments are missing.
    let run = skyhaul(&["cp", "--json"], None, None);
    let message = run.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("<SRC>") && message.contains("<DST>"),
        "{message}"
    );
    // --help is no error, and prints no event; nor does a path named `--json` after `--`.
    let help = skyhaul(&["cp", "--help", "--json"], None, None);
    assert_eq!(help.code, 0);
    assert!(!help.stdout.contains("\"event\""), "{}", help.stdout);
    let path = skyhaul(&["cp", "--bogus", "--", "--json", "x"], None, None);
    assert_eq!(path.code, 2);
    assert!(path.stdout.is_empty(), "{}", path.stdout);
}
