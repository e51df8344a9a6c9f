//! `skyhaul launch`: the generated SLURM script run for real by `sbatch` on a single-node
//! cluster the test starts, against real S3 servers.

mod common;

use common::*;
use skyhaul_journal::Journal;
use skyhaul_testkit::{S3Kind, S3Server, SlurmCluster};
use std::collections::BTreeMap;
use std::time::Duration;

const TOKEN: &str = "slurm-test-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn slurm_script_runs_a_coordinator_and_workers_that_copy_and_verify() {
    let cluster = SlurmCluster::start();
    let src = S3Server::start(S3Kind::S3sFs);
    let dst = S3Server::start(S3Kind::S3sFs);
    src.create_bucket("src").await;
    dst.create_bucket("dst").await;
    let mut files = BTreeMap::new();
    for i in 0..40 {
        files.insert(format!("small/{i:02}.bin"), data(90_000 + i * 7, i as u64));
    }
    files.insert("large.bin".to_string(), data(17 << 20, 99));
    fill_bucket(&src, "src", "data/", &files).await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fleet.sbatch");
    let journal = dir.path().join("journal.sqlite");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let gen = skyhaul(
        &[
            "launch",
            "--backend",
            "slurm",
            "--nodes",
            "3",
            "--name",
            "fleet-test",
            "--port",
            &port,
            "--skyhaul",
            env!("CARGO_BIN_EXE_skyhaul"),
            "-o",
            script.to_str().unwrap(),
            "--",
            "cp",
            "-r",
            "s3://src/data",
            "s3://dst/data",
            "--src-endpoint",
            &src.endpoint,
            "--dst-endpoint",
            &dst.endpoint,
            "--multipart-threshold",
            "8M",
            "--part-size",
            "5M",
            "--bwlimit",
            "8M",
            "--lease-size",
            "1M",
            "--json",
            "-y",
        ],
        None,
        None,
    );
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    let text = std::fs::read_to_string(&script).unwrap();
    // Secrets stay in the environment: none is in the file.
    for secret in [&src.secret_key, &dst.secret_key, &src.access_key] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert!(text.contains("#SBATCH --ntasks=3"), "{text}");

    let mut env: Vec<(String, String)> = test_env(Some(&src), Some(&dst), &[])
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    env.push(("SKYHAUL_FLEET_TOKEN".into(), TOKEN.into()));
    env.push(("SKYHAUL_JOURNAL".into(), journal.display().to_string()));
    let id = cluster.sbatch(&script, dir.path(), &env);
    let end = cluster.wait(id, Duration::from_secs(240));
    let output = std::fs::read_to_string(dir.path().join(format!("fleet-test-{id}.out")))
        .unwrap_or_default();
    assert_eq!(end.state, "COMPLETED", "{output}\n{}", cluster.logs());
    assert_eq!(end.exit_code, "0:0", "{output}");

    // The coordinator's report (rank 0's stdout) says everything was copied and verified.
    let report = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no report in the job output:\n{output}"));
    assert_eq!(report["objects_copied"], files.len() as u64, "{report}");
    assert_eq!(report["objects_failed"], 0, "{report}");
    assert_eq!(report["verification"]["missing"], 0, "{report}");
    assert_eq!(report["verification"]["checksum_mismatch"], 0, "{report}");
    assert_eq!(read_bucket(&dst, "dst", "data/").await, files);

    // Work went to the srun tasks' workers too, not only to the coordinator's own.
    let j = Journal::open(&journal).unwrap();
    let t = &j.transfers().unwrap()[0];
    let workers: std::collections::BTreeSet<String> = j
        .fleet_leases(t.id)
        .unwrap()
        .into_iter()
        .map(|l| l.worker)
        .collect();
    assert!(workers.len() >= 2, "{workers:?}\n{output}");
}

/// SkyPilot's own parser loads the generated task: the nodes, spot, CPUs and port as asked,
/// the token as a secret given at launch (never a value in the file), and a run script that
/// starts the coordinator at rank 0.
#[test]
fn skypilot_task_loads_in_skypilot() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("fleet.sky.yaml");
    let gen = skyhaul(
        &[
            "launch",
            "--backend",
            "skypilot",
            "--nodes",
            "4",
            "--spot",
            "--cpus",
            "8+",
            "--port",
            "7171",
            "-o",
            task.to_str().unwrap(),
            "--",
            "sync",
            "s3://a/x",
            "s3://b/x",
        ],
        None,
        None,
    );
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    let script = r#"
import json, sys, yaml, sky
config = yaml.safe_load(open(sys.argv[1]))
declared = dict(config["secrets"])  # from_yaml_config consumes the section
t = sky.Task.from_yaml_config(config, secrets_overrides=[("SKYHAUL_FLEET_TOKEN", "given-at-launch-0123456789")])
r = list(t.resources)[0]
print(json.dumps({
    "num_nodes": t.num_nodes,
    "use_spot": r.use_spot,
    "cpus": r.cpus,
    "ports": r.ports,
    "secrets": sorted(t.secrets),
    "declared_secrets": declared,
    "run": t.run,
}))
"#;
    let out = std::process::Command::new(skyhaul_testkit::tool("sky-python"))
        .args(["-c", script])
        .arg(&task)
        .output()
        .expect("the SkyPilot venv's python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["num_nodes"], 4, "{v}");
    assert_eq!(v["use_spot"], true, "{v}");
    assert_eq!(v["cpus"], "8+", "{v}");
    assert_eq!(v["ports"], serde_json::json!(["7171"]), "{v}");
    assert_eq!(
        v["secrets"],
        serde_json::json!(["SKYHAUL_FLEET_TOKEN"]),
        "{v}"
    );
    assert!(
        v["declared_secrets"]
            .as_object()
            .unwrap()
            .values()
            .all(|s| s.is_null()),
        "no secret has a value in the file: {v}"
    );
    let run = v["run"].as_str().unwrap();
    assert!(
        run.contains("SKYPILOT_NODE_RANK") && run.contains("SKYPILOT_NODE_IPS"),
        "{run}"
    );
    assert!(
        run.contains("coordinator --listen 0.0.0.0:7171 sync s3://a/x s3://b/x --workers 1"),
        "{run}"
    );
}
