//! `skyhaul plan`: its numbers for a known data set, computed here from the data set and
//! the price file, then checked against what the copy really does.

mod common;

use common::*;
use serde_json::Value;
use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Round prices, so that the expected costs below are easy to check by eye.
const PRICES: &str = r#"
[meta]
as_of = "2000-01-01"
[providers.aws]
put_per_1000 = 10.0
get_per_1000 = 1.0
list_per_1000 = 100.0
same_continent_egress_per_gib = 3.0
"#;

fn close(a: &Value, b: f64) -> bool {
    a.as_f64()
        .is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_numbers_for_a_known_dataset_then_the_copy_agrees() {
    let (s3, tmp, src, files) = bucket_and_local_mixed().await;
    let proxy = FaultProxy::start(&s3.endpoint, Faults::default());
    let prices = tmp.path().join("prices.toml");
    std::fs::write(&prices, PRICES).unwrap();
    let endpoint = proxy.endpoint();
    let mut common_args = vec![
        src.to_str().unwrap(),
        "s3://bucket/data",
        "-r",
        "--dst-endpoint",
        &endpoint,
        "--max-connections",
        "4",
    ];
    common_args.extend(SMALL_PARTS);
    let mut plan_args = vec!["plan"];
    plan_args.extend(&common_args);
    plan_args.extend([
        "--src-cloud",
        "aws",
        "--src-region",
        "us-west-2",
        "--dst-cloud",
        "aws",
        "--dst-region",
        "us-east-1",
        "--prices",
        prices.to_str().unwrap(),
        "--throughput",
        "1M",
        "--json",
    ]);
    let run = skyhaul(&plan_args, None, Some(&s3));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = run.json();
    assert_eq!(plan["schema"], 1);
    assert_eq!(plan["event"], "plan");

    // Independently: what the data set is, and the requests the rules in the README give.
    let bytes: u64 = files.values().map(|v| v.len() as u64).sum();
    let part = 5 * MIB;
    let puts: u64 = files
        .values()
        .map(|v| v.len() as u64)
        .map(|n| if n > part { n.div_ceil(part) + 2 } else { 1 })
        .sum();
    assert_eq!(plan["objects"], files.len() as u64);
    assert_eq!(plan["bytes"], bytes);
    assert_eq!(plan["requests"]["dst_put"], puts);
    assert_eq!(
        plan["requests"]["src_get"], 0,
        "a local source is not billed"
    );
    assert_eq!(plan["requests"]["src_list"], 0);
    assert_eq!(
        plan["requests"]["dst_list"], 1,
        "the verification's listing"
    );
    let egress = bytes as f64 / GIB * 3.0;
    assert_eq!(plan["egress"]["kind"], "same_continent");
    assert!(close(&plan["egress"]["cost"], egress), "{}", plan["egress"]);
    let dst_requests = puts as f64 * 10.0 / 1000.0 + 100.0 / 1000.0;
    assert!(
        close(&plan["destination_requests_cost"], dst_requests),
        "{plan}"
    );
    assert!(close(&plan["source_requests_cost"], 0.0));
    assert!(close(&plan["total_cost"], egress + dst_requests), "{plan}");
    let seconds = bytes as f64 / MIB as f64 + (puts + 1) as f64 * 0.02 / 4.0;
    assert!(close(&plan["estimated_seconds"], seconds), "{plan}");
    assert_eq!(plan["prices_as_of"], "2000-01-01");

    // Nothing was written by planning.
    assert!(s3.list("bucket", "").await.is_empty());

    // The copy moves what the plan said, with at least the requests it counted.
    let mut cp_args = vec!["cp", "--no-journal", "--json"];
    cp_args.extend(&common_args);
    let before = proxy.injected();
    let copy = skyhaul(&cp_args, None, Some(&s3));
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    let report = copy.json();
    assert_eq!(report["objects_copied"], plan["objects"]);
    assert_eq!(report["bytes_copied"], plan["bytes"]);
    let seen = proxy.injected();
    let sent = seen.put_body_bytes - before.put_body_bytes;
    assert_eq!(sent, bytes, "bytes uploaded");
    assert!(
        seen.requests - before.requests > puts,
        "the PUTs and a LIST at least"
    );

    // A sync plan now finds nothing to copy.
    let mut sync_args = plan_args.clone();
    sync_args.push("--sync");
    let again = skyhaul(&sync_args, None, Some(&s3)).json();
    assert_eq!(again["objects"], 0, "{again}");
    assert_eq!(again["bytes"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_places_are_shown_as_unknown_and_deletes_are_counted() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("src-bucket").await;
    s3.create_bucket("dst-bucket").await;
    s3.put("src-bucket", "data/x", b"12345").await;
    s3.put("dst-bucket", "data/old", b"gone soon").await;
    let run = skyhaul(
        &[
            "plan",
            "-r",
            "--sync",
            "--delete",
            "s3://src-bucket/data",
            "s3://dst-bucket/data",
            "--src-endpoint",
            &s3.endpoint,
            "--dst-endpoint",
            &s3.endpoint,
        ],
        Some(&s3),
        Some(&s3),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = &run.stdout;
    assert!(text.contains("objects:   1 to copy, 1 to delete"), "{text}");
    assert!(
        text.contains("unknown provider (endpoint host not recognised)"),
        "{text}"
    );
    assert!(
        text.contains("egress:    unknown: the source's provider is unknown"),
        "{text}"
    );
    assert!(text.contains("total:     unknown"), "{text}");
    assert!(
        text.contains("list prices of 20"),
        "the prices' date is shown: {text}"
    );
    // One endpoint and one set of keys: the store copies, and the requests say COPY (as
    // the README counts them), or PUT when skyhaul is to copy the bytes itself.
    assert!(text.contains("(copied by the store itself)"), "{text}");
    assert!(text.contains("destination 1 COPY, "), "{text}");
    let args = [
        "plan",
        "-r",
        "s3://src-bucket/data",
        "s3://dst-bucket/data",
        "--src-endpoint",
        &s3.endpoint,
        "--dst-endpoint",
        &s3.endpoint,
        "--no-server-side-copy",
    ];
    let through = skyhaul(&args, Some(&s3), Some(&s3));
    assert_eq!(through.code, 0, "{}", through.stderr);
    assert!(
        through.stdout.contains("destination 1 PUT, "),
        "{}",
        through.stdout
    );
    // Nothing deleted, nothing copied.
    assert!(s3.get("dst-bucket", "data/old").await.is_some());
    assert!(s3.get("dst-bucket", "data/x").await.is_none());
}

#[test]
fn price_table_and_overrides() {
    let builtin = skyhaul(&["prices"], None, None);
    assert_eq!(builtin.code, 0, "{}", builtin.stderr);
    assert!(builtin.stdout.contains("as_of = \"20"), "dated");
    for provider in ["aws", "gcp", "azure", "cloudflare"] {
        assert!(builtin.stdout.contains(&format!("[providers.{provider}]")));
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.toml");
    std::fs::write(&file, "[providers.gcp]\ninternet_egress_per_gib = 0.042\n").unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, format!("prices = {:?}\n", file.to_str().unwrap())).unwrap();
    let cfg = config.to_str().unwrap();
    let merged = skyhaul_env(&["prices"], None, None, &[("SKYHAUL_CONFIG", cfg)]);
    assert_eq!(merged.code, 0, "{}", merged.stderr);
    assert!(
        merged.stdout.contains("internet_egress_per_gib = 0.042"),
        "{}",
        merged.stdout
    );
    assert!(merged.stdout.contains("[providers.aws]"), "the rest stays");

    std::fs::write(&file, "[providers.gcp\n").unwrap();
    let broken = skyhaul(&["prices", "--prices", file.to_str().unwrap()], None, None);
    assert_eq!(broken.code, 2);
    assert!(broken.stderr.contains("p.toml"), "{}", broken.stderr);

    // A misspelt key would leave the list price in force under a plan that says the file
    // was laid over the table; a negative price would bill negative. Both are refused, by
    // `prices` and by `plan` (which reads the file before any store).
    for (text, key) in [
        (
            "[providers.aws]\ninternet_egres_per_gib = 0.01\n",
            "providers.aws.internet_egres_per_gib",
        ),
        (
            "[providers.aws]\ninternet_egress_per_gib = -1\n",
            "providers.aws.internet_egress_per_gib",
        ),
        ("[meta]\nas_of = \"yesterday\"\n", "meta.as_of"),
    ] {
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        for args in [
            vec!["prices", "--prices", path],
            vec![
                "plan",
                "/nonexistent/src",
                "/nonexistent/dst",
                "--prices",
                path,
            ],
        ] {
            let run = skyhaul(&args, None, None);
            assert_eq!(run.code, 2, "{args:?} {text}: {}", run.stderr);
            assert!(
                run.stderr.contains("p.toml") && run.stderr.contains(key),
                "{args:?}: {}",
                run.stderr
            );
            assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        }
    }
}
