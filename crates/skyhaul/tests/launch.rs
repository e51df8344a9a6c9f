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
    let (src, dst) = stores().await;
    let mut files = BTreeMap::new();
    for i in 0..40 {
        files.insert(format!("small/{i:02}.bin"), data(90_000 + i * 7, i as u64));
    }
    files.insert("large.bin".to_string(), data(17 << 20, 99));
    fill_bucket(&src, "src", "data/", &files).await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fleet.sbatch");
    // The test cluster is one node: the three tasks share it.
    let launch = ["--nodes", "3", "--tasks-per-node", "3"];
    let text = generate_slurm_script(&script, "fleet-test", &launch, &src, &dst);
    // Secrets stay in the environment: none is in the file.
    for secret in [&src.secret_key, &dst.secret_key, &src.access_key] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert!(text.contains("#SBATCH --ntasks=3"), "{text}");

    let job = run_job(&cluster, &script, "fleet-test", &src, &dst, &[]);
    // The coordinator's report (rank 0's stdout) says everything was copied and verified.
    let report = &job.report;
    assert_eq!(report["objects_copied"], files.len() as u64, "{report}");
    assert_eq!(report["objects_failed"], 0, "{report}");
    assert_eq!(report["verification"]["missing"], 0, "{report}");
    assert_eq!(report["verification"]["checksum_mismatch"], 0, "{report}");
    assert_eq!(read_bucket(&dst, "dst", "data/").await, files);
    // Work went to the srun tasks' workers too, not only to the coordinator's own.
    let workers = job.workers();
    assert!(workers.len() >= 2, "{workers:?}\n{}", job.output);
}

/// `--gateways 1` with TLS: the batch script submits a SLURM job of its own that runs a relay
/// gateway with the certificate (for the node's host name, from a CA of the test's own) read
/// where it lies, never written into the script. The fleet's tasks drop the destination's
/// credentials (the script unsets them), so every write reaches the destination through the
/// gateway, over TLS; the coordinator's report counts what the workers relayed, and once the
/// copy has verified it tells the gateway to exit: its job completes by itself.
#[tokio::test(flavor = "multi_thread")]
async fn slurm_job_starts_a_gateway_and_the_fleet_relays_through_it() {
    let cluster = SlurmCluster::start();
    let (src, dst) = stores().await;
    let mut files = BTreeMap::new();
    for i in 0..24 {
        let text: String = (0..1500)
            .map(|j| format!("row {j} of table {i}: name=skyhaul, region=eu-west-1\n"))
            .collect();
        files.insert(format!("text/{i:02}.csv"), text.into_bytes());
    }
    files.insert("large.bin".to_string(), data(12 << 20, 7));
    fill_bucket(&src, "src", "data/", &files).await;
    let bytes: u64 = files.values().map(|v| v.len() as u64).sum();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("relay.sbatch");
    let gw_port = free_port();
    // The test cluster's one node is `localhost`: the name the fleet dials the gateway by.
    let pki = skyhaul_testkit::tls::files(dir.path(), "gw", &["localhost"]);
    let mut launch = vec![
        "--nodes",
        "2",
        "--tasks-per-node",
        "2",
        "--gateways",
        "1",
        "--gateway-port",
        &gw_port,
    ];
    launch.extend(tls_options(&pki));
    let text = generate_slurm_script(&script, "relay-test", &launch, &src, &dst);
    // The TLS files by their paths; the key's PEM is nowhere in the script.
    let tls_key = std::fs::read_to_string(&pki.key).unwrap();
    assert!(!text.contains(tls_key.lines().nth(1).unwrap()), "{text}");
    assert!(
        text.contains(&format!(
            "--tls-cert {} --tls-key {}",
            pki.cert.display(),
            pki.key.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("--relay-tls-ca {}", pki.ca.display())),
        "{text}"
    );
    assert!(
        text.contains("--job-name=relay-test-gw --nodes=1"),
        "{text}"
    );
    let key = RELAY_KEY.to_string();
    for secret in [&src.secret_key, &dst.secret_key, &dst.access_key, &key] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    // The gateway is told where the destination is.
    assert!(
        text.contains(&format!(
            "gateway --listen 0.0.0.0:{gw_port} s3://dst --dst-endpoint"
        )),
        "{text}"
    );

    let job = run_job(
        &cluster,
        &script,
        "relay-test",
        &src,
        &dst,
        &[("SKYHAUL_RELAY_KEY", &key)],
    );
    let (report, output) = (&job.report, &job.output);
    assert_eq!(report["objects_copied"], files.len() as u64, "{report}");
    assert_eq!(
        report["verification"]["checksum_ok"],
        files.len() as u64,
        "{report}"
    );
    assert_eq!(read_bucket(&dst, "dst", "data/").await, files);
    // Through the gateway: the whole data set crossed the relay, compressed.
    let relay = &report["relay"];
    let logical = relay["logical_bytes"].as_u64().unwrap_or(0);
    assert!(logical >= bytes, "{relay}\n{output}");
    assert!(relay["wire_bytes"].as_u64().unwrap() < logical, "{relay}");
    let gw_output: String = std::fs::read_dir(job.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("relay-test-gw-")
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        gw_output.contains(&format!(
            "relay gateway for s3://dst/ listening on 0.0.0.0:{gw_port} (TLS)"
        )),
        "{gw_output}"
    );
    // The coordinator told the gateway the transfer is over, and its job ended by itself.
    assert!(
        output.contains(&format!("relay gateway localhost:{gw_port} told to stop")),
        "{output}"
    );
    let gw_end = cluster.wait(job.id + 1, Duration::from_secs(30));
    assert_eq!(
        (gw_end.state.as_str(), gw_end.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "{gw_output}"
    );
    assert!(
        gw_output.contains("relay gateway stopped: the transfer is over"),
        "{gw_output}"
    );
    let workers = job.workers();
    assert!(workers.len() >= 2, "{workers:?}\n{output}");
}

/// The two S3 servers of the SLURM tests, with buckets `src` and `dst`.
async fn stores() -> (S3Server, S3Server) {
    let src = S3Server::start(S3Kind::S3sFs);
    let dst = S3Server::start(S3Kind::S3sFs);
    src.create_bucket("src").await;
    dst.create_bucket("dst").await;
    (src, dst)
}

/// Launch's TLS options for the files of `pki`.
fn tls_options(pki: &skyhaul_testkit::tls::TlsFiles) -> [&str; 6] {
    [
        "--gateway-tls-cert",
        pki.cert.to_str().unwrap(),
        "--gateway-tls-key",
        pki.key.to_str().unwrap(),
        "--relay-tls-ca",
        pki.ca.to_str().unwrap(),
    ]
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// `skyhaul launch --backend slurm --name NAME LAUNCH_ARGS… -o SCRIPT -- cp -r s3://src/data
/// s3://dst/data …` (small parts, a bandwidth limit and small leases, so the work spreads over
/// the workers); returns the script.
fn generate_slurm_script(
    script: &std::path::Path,
    name: &str,
    launch_args: &[&str],
    src: &S3Server,
    dst: &S3Server,
) -> String {
    let port = free_port();
    let mut args = vec![
        "launch",
        "--backend",
        "slurm",
        "--name",
        name,
        "--port",
        &port,
    ];
    args.extend_from_slice(launch_args);
    args.extend_from_slice(&[
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
    ]);
    let gen = skyhaul(&args, None, None);
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    std::fs::read_to_string(script).unwrap()
}

/// A batch job that ran to completion: its output, the coordinator's report, its journal.
struct Job {
    id: u32,
    dir: tempfile::TempDir,
    output: String,
    report: serde_json::Value,
}

impl Job {
    /// The workers that held leases in the transfer.
    fn workers(&self) -> std::collections::BTreeSet<String> {
        let j = Journal::open(&self.dir.path().join("journal.sqlite")).unwrap();
        let t = &j.transfers().unwrap()[0];
        j.fleet_leases(t.id)
            .unwrap()
            .into_iter()
            .map(|l| l.worker)
            .collect()
    }
}

/// Submits `script` with both stores' credentials, the fleet token and `extra` in its
/// environment, waits for it to complete and finds rank 0's report in its output.
fn run_job(
    cluster: &SlurmCluster,
    script: &std::path::Path,
    name: &str,
    src: &S3Server,
    dst: &S3Server,
    extra: &[(&str, &str)],
) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = test_env(Some(src), Some(dst), &[])
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    env.push(("SKYHAUL_FLEET_TOKEN".into(), TOKEN.into()));
    let journal = dir.path().join("journal.sqlite");
    env.push(("SKYHAUL_JOURNAL".into(), journal.display().to_string()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let id = cluster.sbatch(script, dir.path(), &env);
    let end = cluster.wait(id, Duration::from_secs(240));
    let output =
        std::fs::read_to_string(dir.path().join(format!("{name}-{id}.out"))).unwrap_or_default();
    assert_eq!(end.state, "COMPLETED", "{output}\n{}", cluster.logs());
    assert_eq!(end.exit_code, "0:0", "{output}");
    let report = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no report in the job output:\n{output}"));
    Job {
        id,
        dir,
        output,
        report,
    }
}

/// SkyPilot's own parser loads the generated task: the nodes, spot, CPUs and port as asked
/// (the port not opened to the internet),
/// autodown once its job has ended, the token as a secret given at launch (never a value in
/// the file), and a run script that starts the coordinator at rank 0.
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
    "autostop": r.autostop_config and r.autostop_config.to_yaml_config(),
    "secrets": sorted(t.secrets),
    "declared_secrets": declared,
    "run": t.run,
}))
"#;
    let v = sky_python(script, &[&task]);
    assert_eq!(v["num_nodes"], 4, "{v}");
    // The cluster goes down once the job has ended (autodown), and the comment launches it so.
    assert_eq!(
        v["autostop"],
        serde_json::json!({"idle_minutes": 0, "down": true}),
        "{v}"
    );
    let text = std::fs::read_to_string(&task).unwrap();
    assert!(
        text.contains("#   sky launch --down -c skyhaul-fleet THIS_FILE"),
        "{text}"
    );
    assert_eq!(v["use_spot"], true, "{v}");
    assert_eq!(v["cpus"], "8+", "{v}");
    // Its workers dial the coordinator's internal address: no port is opened to the internet.
    assert_eq!(v["ports"], serde_json::Value::Null, "{v}");
    assert_eq!(
        v["secrets"],
        serde_json::json!(["SKYHAUL_FLEET_TOKEN"]),
        "{v}"
    );
    assert_no_secret_has_a_value(&v);
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

/// The task's `secrets:` section (as the snippets print it) names its secrets only.
fn assert_no_secret_has_a_value(v: &serde_json::Value) {
    assert!(
        v["declared_secrets"]
            .as_object()
            .unwrap()
            .values()
            .all(|s| s.is_null()),
        "no secret has a value in the file: {v}"
    );
}

/// Runs a Python snippet in the SkyPilot venv with `args`; its JSON output.
fn sky_python(script: &str, args: &[&std::path::Path]) -> serde_json::Value {
    let out = std::process::Command::new(skyhaul_testkit::tool("sky-python"))
        .args(["-c", script])
        .args(args)
        .output()
        .expect("the SkyPilot venv's python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `--gateways 2 --gateway-region` with TLS: SkyPilot's parser loads the gateway task (the
/// region and cloud asked, the port open, autodown once the gateway exits, the relay key and
/// the destination's keys as secrets without values, the TLS files as file mounts, a run
/// script that starts `skyhaul gateway` for the destination's bucket, to exit when told or
/// idle) and the fleet task (the CA as a file mount), which SkyPilot refuses to launch until
/// the gateways' addresses are given.
#[test]
fn skypilot_gateway_task_loads_in_skypilot() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("fleet.sky.yaml");
    // SkyPilot's gateways get IPs only once they run: the certificate names them by a name
    // of their own, which the fleet checks instead.
    let pki = skyhaul_testkit::tls::files(dir.path(), "gw", &["relay-gateway"]);
    let mut args = vec![
        "launch",
        "--backend",
        "skypilot",
        "--name",
        "relay",
        "--nodes",
        "3",
        "--gateways",
        "2",
        "--gateway-region",
        "eu-west-1",
        "--gateway-cloud",
        "aws",
        "--gateway-idle-exit",
        "20m",
        "--gateway-tls-name",
        "relay-gateway",
    ];
    args.extend(tls_options(&pki));
    args.extend([
        "-o",
        task.to_str().unwrap(),
        "--",
        "cp",
        "-r",
        "s3://a/x",
        "s3://b/y",
        "--dst-region",
        "eu-west-1",
    ]);
    // The S3 keys of both sides set here, and no other credential: each side's go to
    // its own task.
    let mut env: Vec<(&str, &str)> = README_CREDENTIAL_ENV.iter().map(|v| (*v, "")).collect();
    env.extend(
        README_CREDENTIAL_ENV
            .iter()
            .filter(|v| {
                v.contains("_ACCESS_KEY_ID") || v.contains("_SECRET_") || v.contains("_SESSION_")
            })
            .filter(|v| v.starts_with("SKYHAUL_"))
            .map(|v| (*v, "set-here")),
    );
    let gen = skyhaul_env(&args, None, None, &env);
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    let gateway = dir.path().join("relay.gateway.sky.yaml");
    assert!(
        gen.stderr.contains("relay.gateway.sky.yaml"),
        "{}",
        gen.stderr
    );
    let script = r#"
import json, sys, yaml, sky
config = yaml.safe_load(open(sys.argv[1]))
declared = dict(config["secrets"])
t = sky.Task.from_yaml_config(config, secrets_overrides=[(k, "given-at-launch") for k in declared])
r = list(t.resources)[0]
print(json.dumps({
    "name": t.name,
    "num_nodes": t.num_nodes,
    "cloud": str(r.cloud),
    "region": r.region,
    "ports": r.ports,
    "autostop": r.autostop_config.to_yaml_config(),
    "file_mounts": t.file_mounts,
    "secrets": sorted(t.secrets),
    "declared_secrets": declared,
    "run": t.run,
}))
"#;
    let v = sky_python(script, &[&gateway]);
    assert_eq!(v["name"], "relay-gw", "{v}");
    assert_eq!(v["num_nodes"], 1, "{v}");
    assert_eq!(v["cloud"], "AWS", "{v}");
    assert_eq!(v["region"], "eu-west-1", "{v}");
    assert_eq!(v["ports"], serde_json::json!(["7400"]), "{v}");
    assert_eq!(
        v["autostop"],
        serde_json::json!({"idle_minutes": 0, "down": true}),
        "{v}"
    );
    assert_eq!(
        v["file_mounts"],
        serde_json::json!({
            "~/.skyhaul-tls/gateway-cert.pem": pki.cert,
            "~/.skyhaul-tls/gateway-key.pem": pki.key,
        }),
        "{v}"
    );
    let text = std::fs::read_to_string(&gateway).unwrap();
    let tls_key = std::fs::read_to_string(&pki.key).unwrap();
    assert!(!text.contains(tls_key.lines().nth(1).unwrap()), "{text}");
    assert_eq!(
        v["secrets"],
        serde_json::json!([
            "SKYHAUL_DST_ACCESS_KEY_ID",
            "SKYHAUL_DST_SECRET_ACCESS_KEY",
            "SKYHAUL_DST_SESSION_TOKEN",
            "SKYHAUL_RELAY_KEY"
        ]),
        "{v}"
    );
    assert_no_secret_has_a_value(&v);
    let run = v["run"].as_str().unwrap();
    assert!(
        run.contains(
            "exec skyhaul gateway --listen 0.0.0.0:7400 s3://b --dst-region eu-west-1 --exit-on-stop --idle-exit 1200s \
             --tls-cert \"$HOME/.skyhaul-tls\"/gateway-cert.pem --tls-key \"$HOME/.skyhaul-tls\"/gateway-key.pem"
        ),
        "{run}"
    );
    assert!(
        run.contains("unset SKYHAUL_FLEET_TOKEN SKYHAUL_SRC_ACCESS_KEY_ID"),
        "{run}"
    );

    // The fleet: no destination keys among its secrets, the relay key among them, and the
    // gateways' addresses an env SkyPilot will not launch without.
    let script = r#"
import json, sys, yaml, sky
def load(envs):
    config = yaml.safe_load(open(sys.argv[1]))
    declared = dict(config["secrets"])
    t = sky.Task.from_yaml_config(config, env_overrides=envs, secrets_overrides=[(k, "given") for k in declared])
    return t
try:
    load(None)
    refused = None
except Exception as e:
    refused = str(e)
t = load([("SKYHAUL_GATEWAYS", "10.0.0.7:7400,10.0.0.8:7400")])
print(json.dumps({"refused": refused, "secrets": sorted(t.secrets), "envs": t.envs, "run": t.run, "file_mounts": t.file_mounts}))
"#;
    let v = sky_python(script, &[&task]);
    assert!(
        v["refused"]
            .as_str()
            .is_some_and(|e| e.contains("SKYHAUL_GATEWAYS")),
        "{v}"
    );
    assert_eq!(
        v["secrets"],
        serde_json::json!([
            "SKYHAUL_FLEET_TOKEN",
            "SKYHAUL_RELAY_KEY",
            "SKYHAUL_SRC_ACCESS_KEY_ID",
            "SKYHAUL_SRC_SECRET_ACCESS_KEY",
            "SKYHAUL_SRC_SESSION_TOKEN"
        ]),
        "{v}"
    );
    assert_eq!(
        v["envs"]["SKYHAUL_GATEWAYS"], "10.0.0.7:7400,10.0.0.8:7400",
        "{v}"
    );
    assert_eq!(
        v["file_mounts"],
        serde_json::json!({"~/.skyhaul-tls/relay-ca.pem": pki.ca}),
        "{v}"
    );
    let run = v["run"].as_str().unwrap();
    assert!(
        run.contains("coordinator --listen 0.0.0.0:7070 --relay-stop-gateways cp -r s3://a/x s3://b/y --dst-region eu-west-1 --workers 1 --relay \"$SKYHAUL_GATEWAYS\" --relay-tls-ca \"$HOME/.skyhaul-tls\"/relay-ca.pem --relay-tls-name relay-gateway"),
        "{run}"
    );
    // The comment says how to launch both, in order, with every secret from the environment.
    let text = std::fs::read_to_string(&task).unwrap();
    assert!(
        text.contains(
            "sky launch -y -d --down -c relay-gw-1 relay.gateway.sky.yaml --secret SKYHAUL_RELAY_KEY"
        ),
        "{text}"
    );
    assert!(
        text.contains("--env SKYHAUL_GATEWAYS=$(sky status --ip relay-gw-0):7400,$(sky status --ip relay-gw-1):7400"),
        "{text}"
    );
}

/// Gateway options that cannot work, and `--keep-cluster` where launch starts no cluster,
/// are refused with a one-line usage error (exit 2), before anything is written.
#[test]
fn gateway_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let out = out.to_str().unwrap();
    let pki = skyhaul_testkit::tls::files(dir.path(), "gw", &["localhost"]);
    let (cert, key, ca) = (
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let other = skyhaul_testkit::tls::files(dir.path(), "other", &["localhost"]);
    let other_key = other.key.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    // Each case: launch's options, the transfer, what the one-line error says.
    let plain: &[&str] = &["cp", "s3://a/x", "s3://b/x"];
    let slurm: &[&str] = &["--backend", "slurm", "--gateways", "1"];
    let cert_key: &[&str] = &["--gateway-tls-cert", cert, "--gateway-tls-key", key];
    let sky: &[&str] = &[
        "--backend",
        "skypilot",
        "--gateways",
        "1",
        "--gateway-region",
        "eu",
    ];
    let k8s: &[&str] = &["--backend", "kubernetes", "--image", "i"];
    let k8s_across: &[&str] = &[
        "--backend",
        "kubernetes",
        "--image",
        "i",
        "--gateways",
        "1",
        "--gateway-kube-context",
        "dst",
    ];
    let cases: &[(Vec<&str>, &[&str], &str)] = &[
        (
            slurm.to_vec(),
            &["cp", "-r", "s3://a/x", "/mnt/x"],
            "is a local path",
        ),
        (
            [slurm, &["--gateway-region", "eu"]].concat(),
            plain,
            "--gateway-region is not an option of --backend slurm",
        ),
        (sky[..4].to_vec(), plain, "needs --gateway-region"),
        (
            vec!["--backend", "slurm", "--keep-cluster"],
            plain,
            "--keep-cluster is an option of --backend skypilot",
        ),
        (
            [k8s, &["--gateway-node-selector", "a=b"]].concat(),
            plain,
            "--gateway-node-selector needs --gateways N",
        ),
        (
            vec!["--backend", "ssh", "--hosts", "h1", "--gateways", "1"],
            plain,
            "needs --gateway-hosts",
        ),
        (
            slurm.to_vec(),
            &["cp", "s3://a/x", "s3://b/x", "--relay", "gw:7400"],
            "--gateways and a transfer with --relay",
        ),
        (
            [&slurm[..2], cert_key].concat(),
            plain,
            "--gateway-tls-cert needs --gateways N",
        ),
        (
            [slurm, &cert_key[..2]].concat(),
            plain,
            "--gateway-tls-cert and --gateway-tls-key go together",
        ),
        (
            [slurm, &["--relay-tls-ca", ca]].concat(),
            plain,
            "--relay-tls-ca needs --gateway-tls-cert and --gateway-tls-key",
        ),
        (
            [
                slurm,
                &["--gateway-tls-cert", missing, "--gateway-tls-key", key],
            ]
            .concat(),
            plain,
            "missing.pem: No such file",
        ),
        (
            [
                slurm,
                &["--gateway-tls-cert", cert, "--gateway-tls-key", other_key],
            ]
            .concat(),
            plain,
            "--gateway-tls-cert/--gateway-tls-key: ",
        ),
        (
            [slurm, cert_key, &["--relay-tls-ca", key]].concat(),
            plain,
            "gw-key.pem: no PEM certificate in it",
        ),
        (
            slurm.to_vec(),
            &["cp", "s3://a/x", "s3://b/x", "--relay-tls-ca", ca],
            "--gateways and a transfer with --relay-tls-ca",
        ),
        (
            [sky, cert_key].concat(),
            plain,
            "--backend skypilot --gateway-tls-cert needs --gateway-tls-name NAME",
        ),
        (
            k8s_across[..4]
                .iter()
                .chain(&k8s_across[6..])
                .copied()
                .collect(),
            plain,
            "--gateway-kube-context needs --gateways N",
        ),
        (
            [slurm, &k8s_across[6..]].concat(),
            plain,
            "--gateway-kube-context is not an option of --backend slurm",
        ),
        (
            [&k8s_across[..7], &[" "]].concat(),
            plain,
            "--gateway-kube-context needs a context's name",
        ),
        (
            [k8s_across, cert_key].concat(),
            plain,
            "--gateway-kube-context with --gateway-tls-cert needs --gateway-tls-name NAME",
        ),
        (
            [&k8s_across[..6], &["--gateway-source-ranges", "10.0.0.0/8"]].concat(),
            plain,
            "--gateway-source-ranges needs --gateway-kube-context CONTEXT",
        ),
        (
            [
                k8s_across,
                &["--gateway-source-ranges", "10.0.0.0/8,10.0.0.300/8"],
            ]
            .concat(),
            plain,
            "--gateway-source-ranges 10.0.0.300/8: expected CIDRs",
        ),
        (
            [k8s_across, &["--gateway-source-ranges", "10.0.0.0/33"]].concat(),
            plain,
            "--gateway-source-ranges 10.0.0.0/33: expected CIDRs",
        ),
        (
            [slurm, &["--gateway-source-ranges", "10.0.0.0/8"]].concat(),
            plain,
            "--gateway-source-ranges is not an option of --backend slurm",
        ),
        // A SAS URL's signature is refused before it is written into the job.
        (
            vec!["--backend", "slurm"],
            &[
                "cp",
                "-r",
                "https://acct.blob.core.windows.net/c/x?sv=1&sig=SECRET",
                "s3://b/x",
            ],
            "'https://acct.blob.core.windows.net/c/x': a query string (a SAS?) is not part of a location",
        ),
    ];
    for (options, transfer, message) in cases {
        let mut all = vec!["launch"];
        all.extend(options);
        all.extend(["-o", out, "--"]);
        all.extend(transfer.iter());
        let run = skyhaul(&all, None, None);
        assert_eq!(run.code, 2, "{all:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{all:?}: {}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(!std::path::Path::new(out).exists(), "{all:?} wrote the job");
        let gateway_file = dir.path().join("skyhaul-fleet.gateways.yaml");
        assert!(!gateway_file.exists(), "{all:?} wrote the gateways' file");
    }
    // A named remote's gateway serves the remote's bucket.
    let run = skyhaul(
        &[
            "launch",
            "--backend",
            "ssh",
            "--hosts",
            "h1",
            "--gateway-hosts",
            "g1",
            "-o",
            out,
            "--",
            "cp",
            "-r",
            "s3://a/x",
            "nebius:bucket/data/2024",
            "--dst-profile",
            "neb",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(out).unwrap();
    assert!(
        text.contains("gateway --listen 0.0.0.0:7400 nebius:bucket --dst-profile neb"),
        "{text}"
    );
}

/// The SSH runner run for real, with `ssh` standing in as a local shell (`ssh … HOST bash -s`
/// runs `bash -s` here) and a stand-in skyhaul that records what it is given: the gateway
/// host gets the certificate and key the runner read here, byte for byte, in a private
/// directory that is gone once its session ends; rank 0 gets the CA and tells the gateways
/// to stop; the runner ends once every session has.
#[test]
fn ssh_runner_ships_the_tls_files_and_ends_with_its_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let pki = skyhaul_testkit::tls::files(dir.path(), "gw", &["g1"]);
    let record = dir.path().join("record");
    std::fs::create_dir(&record).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = |name: &str, text: &str| executable(&bin, name, text);
    script(
        "ssh",
        "#!/bin/bash\nwhile [ \"$1\" = -o ]; do shift 2; done\nshift\nexec \"$@\"\n",
    );
    // Copies the file after each of `flags` into the record directory, and the arguments.
    let fake = script(
        "fake-skyhaul",
        r#"#!/bin/bash
role=$1
echo "$@" > "$RECORD/$role.args"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --tls-cert|--tls-key|--relay-tls-ca) cp "$2" "$RECORD/$role$1.pem"; shift ;;
  esac
  shift
done
"#,
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateways = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let runner = dir.path().join("runner.sh");
    let mut args = vec![
        "launch",
        "--backend",
        "ssh",
        "--hosts",
        "h1",
        "--gateway-hosts",
        "g1",
    ];
    args.extend(tls_options(&pki));
    args.extend([
        "--skyhaul",
        fake.to_str().unwrap(),
        "-o",
        runner.to_str().unwrap(),
        "--",
        "cp",
        "-r",
        "s3://a/x",
        "s3://b/x",
    ]);
    let gen = skyhaul(&args, None, None);
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    let text = std::fs::read_to_string(&runner).unwrap();
    let tls_key = std::fs::read_to_string(&pki.key).unwrap();
    assert!(!text.contains(tls_key.lines().nth(1).unwrap()), "{text}");

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // The hosts' private directories are made here, to see that none stays.
    let host_tmp = dir.path().join("host-tmp");
    std::fs::create_dir(&host_tmp).unwrap();
    let mut run = std::process::Command::new("bash")
        .arg(&runner)
        .env("PATH", path)
        .env("TMPDIR", &host_tmp)
        .env("RECORD", &record)
        .env("SKYHAUL_GATEWAYS", &gateways)
        .env("SKYHAUL_FLEET_TOKEN", TOKEN)
        .env("SKYHAUL_RELAY_KEY", RELAY_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while run.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the runner did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read(record.join(name)).unwrap();
    assert_eq!(
        read("gateway--tls-cert.pem"),
        std::fs::read(&pki.cert).unwrap()
    );
    assert_eq!(read("gateway--tls-key.pem"), tls_key.as_bytes());
    assert_eq!(
        read("coordinator--relay-tls-ca.pem"),
        std::fs::read(&pki.ca).unwrap()
    );
    let gateway = String::from_utf8(read("gateway.args")).unwrap();
    assert!(
        gateway.contains(" --exit-on-stop --idle-exit 1800s "),
        "{gateway}"
    );
    // The private directory the key was written to went with the gateway's session.
    let key_file = gateway
        .split_whitespace()
        .skip_while(|w| *w != "--tls-key")
        .nth(1);
    assert!(
        key_file.is_some_and(|k| !std::path::Path::new(k).exists()),
        "{gateway}"
    );
    // The coordinator's, whose shell became skyhaul (`exec`), goes once it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = || std::fs::read_dir(&host_tmp).unwrap().count();
    while left() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} private directories left on the hosts",
            left()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let coordinator = String::from_utf8(read("coordinator.args")).unwrap();
    assert!(
        coordinator.starts_with("coordinator --listen 0.0.0.0:7070 --relay-stop-gateways cp "),
        "{coordinator}"
    );
    assert!(
        coordinator.contains(&format!("--relay {gateways} --relay-tls-ca ")),
        "{coordinator}"
    );
}

/// Writes an executable script `name` into `dir`: a stand-in for a program on `PATH`.
fn executable(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `--submit` without the fleet's token in this shell (where SLURM, SSH and SkyPilot take it
/// from): refused before any file is written or job submitted, which could only fail on the
/// nodes. A token too short is refused alike.
#[test]
fn submit_without_the_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let out = out.to_str().unwrap();
    let backends: [&[&str]; 3] = [
        &["--backend", "slurm"],
        &["--backend", "ssh", "--hosts", "h1,h2"],
        &["--backend", "skypilot"],
    ];
    for backend in backends {
        for token in ["", "short"] {
            let mut all = vec!["launch", "--submit", "-o", out];
            all.extend(backend);
            all.extend(["--", "cp", "-r", "s3://a/x", "s3://b/x"]);
            let run = skyhaul_env(&all, None, None, &[("SKYHAUL_FLEET_TOKEN", token)]);
            assert_eq!(run.code, 2, "{all:?}: {}", run.stderr);
            assert!(
                run.stderr.contains("--submit: set SKYHAUL_FLEET_TOKEN"),
                "{}",
                run.stderr
            );
            assert!(!std::path::Path::new(out).exists(), "{all:?} wrote the job");
        }
    }
}

/// `--submit` with `sky` replaced by a stand-in that records its arguments: the fleet is
/// launched with `--down` after its gateways (each `-d --down`), and the notice says the
/// cluster goes by itself; with `--keep-cluster` neither the command nor the task (loaded by
/// SkyPilot's parser) takes it down, and the notice says how to.
#[test]
fn skypilot_submit_takes_the_fleet_down_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = dir.path().join("sky.args");
    executable(
        &bin,
        "sky",
        &format!(
            "#!/bin/sh\necho \"$@\" >> {}\n[ \"$1 $2\" = \"status --ip\" ] && echo 10.0.0.7\nexit 0\n",
            record.display()
        ),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let task = dir.path().join("fl.sky.yaml");
    let submit = |extra: &[&str]| {
        let _ = std::fs::remove_file(&record);
        let mut args = vec![
            "launch",
            "--backend",
            "skypilot",
            "--name",
            "fl",
            "--submit",
            // Run twice into one file.
            "--force",
            "-o",
            task.to_str().unwrap(),
        ];
        args.extend(extra);
        args.extend(["--", "cp", "-r", "s3://a/x", "s3://b/x"]);
        let env = [("PATH", path.as_str()), ("SKYHAUL_FLEET_TOKEN", TOKEN)];
        let run = skyhaul_env(&args, None, None, &env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let calls = std::fs::read_to_string(&record).unwrap();
        (run.stderr, calls)
    };
    let file = task.display();
    let (stderr, calls) = submit(&["--gateways", "1", "--gateway-region", "eu-west-1"]);
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls[0].starts_with("launch -y -d --down -c fl-gw-0 "),
        "{calls:?}"
    );
    assert_eq!(calls[1], "status --ip fl-gw-0");
    assert!(
        calls[2].starts_with(&format!(
            "launch -y --down -c fl {file} --env SKYHAUL_GATEWAYS=10.0.0.7:7400 --secret SKYHAUL_FLEET_TOKEN"
        )),
        "{calls:?}"
    );
    assert!(
        stderr.contains("the fleet's cluster fl goes down by itself"),
        "{stderr}"
    );

    let (stderr, calls) = submit(&["--keep-cluster"]);
    assert_eq!(
        calls.trim(),
        format!("launch -y -c fl {file} --secret SKYHAUL_FLEET_TOKEN")
    );
    assert!(stderr.contains("sky down fl"), "{stderr}");
    let script = r#"
import json, sys, yaml, sky
config = yaml.safe_load(open(sys.argv[1]))
t = sky.Task.from_yaml_config(config, secrets_overrides=[(k, "given") for k in config["secrets"]])
print(json.dumps({"autostop": list(t.resources)[0].autostop_config is not None}))
"#;
    let v = sky_python(script, &[&task]);
    assert_eq!(v["autostop"], false, "{v}");
}

/// `--backend kubernetes --gateway-kube-context`: the gateways go into a file of their own
/// beside the fleet's, with no secret in either (the relay key set here, and the TLS key,
/// appear in neither). `--submit`, with `kubectl` replaced by a stand-in that records its
/// arguments, applies the gateways in their context, then the fleet, waits for each load
/// balancer's address (one has a host name at once, the other no address at first, then an
/// IP) and makes the ConfigMap of `SKYHAUL_GATEWAYS` the fleet's pods wait for; a kubectl
/// that cannot reach the gateways' cluster, or read their Services, ends it with a one-line
/// error (and the fleet is not applied without its gateways).
#[test]
fn kubernetes_gateways_in_another_cluster_get_their_own_file_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let pki = skyhaul_testkit::tls::files(dir.path(), "gw", &["relay-gateway"]);
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = dir.path().join("kubectl.args");
    executable(
        &bin,
        "kubectl",
        &format!(
            r#"#!/bin/sh
echo "$@" >> {record}
case "$*" in
*"--context gone "*) echo 'error: context "gone" does not exist' >&2; exit 1 ;;
*"--context hidden get "*) echo 'Error from server (Forbidden): services "fl-gw-0" is forbidden' >&2; exit 1 ;;
*"get service fl-gw-0 "*) echo " gw0.elb.example.com" ;;
*"get service fl-gw-1 "*)
  if [ -e {record}.asked ]; then echo "203.0.113.7 "; else : > {record}.asked; echo " "; fi ;;
esac
exit 0
"#,
            record = record.display()
        ),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let fleet = dir.path().join("fl.k8s.yaml");
    let gateways = dir.path().join("fl.gateways.yaml");
    let relay_key = RELAY_KEY.to_string();
    let launch = |context: &str, submit: bool| {
        let _ = std::fs::remove_file(&record);
        let mut args = vec![
            "launch",
            "--backend",
            "kubernetes",
            "--image",
            "registry.example/skyhaul:0.1",
            "--name",
            "fl",
            "--gateways",
            "2",
            "--gateway-kube-context",
            context,
            "--gateway-tls-name",
            "relay-gateway",
        ];
        args.extend(tls_options(&pki));
        // Run several times into the same files.
        args.push("--force");
        if submit {
            args.push("--submit");
        }
        args.extend([
            "-o",
            fleet.to_str().unwrap(),
            "--",
            "cp",
            "-r",
            "s3://a/x",
            "s3://b/y",
        ]);
        let env = [
            ("PATH", path.as_str()),
            ("SKYHAUL_RELAY_KEY", relay_key.as_str()),
        ];
        skyhaul_env(&args, None, None, &env)
    };

    let run = launch("dst", false);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("fl.k8s.yaml"), "{}", run.stderr);
    assert!(run.stderr.contains("fl.gateways.yaml"), "{}", run.stderr);
    assert!(!record.exists(), "kubectl ran without --submit");
    let fleet_text = std::fs::read_to_string(&fleet).unwrap();
    let gw_text = std::fs::read_to_string(&gateways).unwrap();
    assert!(fleet_text.contains("configMapKeyRef"), "{fleet_text}");
    assert!(
        !fleet_text.contains("kind: Job\nmetadata:\n  name: \"fl-gw\""),
        "{fleet_text}"
    );
    assert_eq!(
        gw_text.matches("type: LoadBalancer").count(),
        2,
        "{gw_text}"
    );
    assert!(
        gw_text.contains("kind: Job\nmetadata:\n  name: \"fl-gw\""),
        "{gw_text}"
    );
    assert!(
        fleet_text.contains("--relay-tls-name relay-gateway"),
        "{fleet_text}"
    );
    let tls_key = std::fs::read_to_string(&pki.key).unwrap();
    for text in [&fleet_text, &gw_text] {
        assert!(!text.contains(&relay_key), "{text}");
        assert!(!text.contains(tls_key.lines().nth(1).unwrap()), "{text}");
    }

    let run = launch("dst", true);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let calls = std::fs::read_to_string(&record).unwrap();
    let get = |i: u32| {
        format!("--context dst get service fl-gw-{i} -o jsonpath={{.status.loadBalancer.ingress[0].ip}} {{.status.loadBalancer.ingress[0].hostname}}")
    };
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            format!("--context dst apply -f {}", gateways.display()),
            format!("apply -f {}", fleet.display()),
            get(0),
            get(1),
            get(1),
            "create configmap fl-gateways --from-literal=SKYHAUL_GATEWAYS=gw0.elb.example.com:7400,203.0.113.7:7400".to_string(),
        ]
    );
    assert!(
        run.stderr
            .contains("relay gateway fl-gw-1 at 203.0.113.7:7400"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "are billed, until: kubectl --context dst delete -f {}",
            gateways.display()
        )),
        "{}",
        run.stderr
    );

    for (context, message) in [
        ("gone", "skyhaul: error: kubectl apply of the relay gateways in context gone failed (exit status: 1)"),
        ("hidden", "skyhaul: error: kubectl --context hidden get service fl-gw-0 failed: Error from server (Forbidden): services \"fl-gw-0\" is forbidden"),
    ] {
        let run = launch(context, true);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let ours: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("skyhaul: error"))
            .collect();
        assert_eq!(ours.len(), 1, "{}", run.stderr);
        assert!(ours[0].starts_with(message), "{}", run.stderr);
        let calls = std::fs::read_to_string(&record).unwrap();
        assert_eq!(
            calls.contains(&format!("apply -f {}", fleet.display())),
            context == "hidden",
            "{calls}"
        );
        assert!(!calls.contains("create configmap"), "{calls}");
    }
}

/// Values the engine would refuse only once the job runs (or misread: an option-like SSH
/// host, a `--name` that `sbatch` takes for an option) are refused with a one-line usage
/// error, exit 2, before anything is written.
#[test]
fn values_an_engine_would_refuse_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let out = out.to_str().unwrap();
    let long_name = "a".repeat(70);
    // A label itself, but its pods (NAME-0, NAME-1) are not.
    let name_62 = "b".repeat(62);
    let k8s: &[&str] = &["--backend", "kubernetes", "--image", "i"];
    let ssh = |hosts: &'static str| vec!["--backend", "ssh", "--hosts", hosts];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [k8s, &["--name", "-lead"]].concat(),
            "--name '-lead': use lowercase",
        ),
        ([k8s, &["--name", "trail-"]].concat(), "--name 'trail-'"),
        (
            [k8s, &["--name", long_name.as_str()]].concat(),
            "is too long for Kubernetes",
        ),
        (
            [k8s, &["--name", name_62.as_str()]].concat(),
            "is too long for Kubernetes: it makes names such as bbbb",
        ),
        (
            [k8s, &["--secret", "Bad Secret\""]].concat(),
            "--secret 'Bad Secret\"'",
        ),
        (
            [k8s, &["--gateways", "1", "--gateway-secret", "-gw"]].concat(),
            "--gateway-secret '-gw'",
        ),
        (
            vec!["--backend", "kubernetes", "--image", ""],
            "--image '': name an image",
        ),
        (
            vec!["--backend", "slurm", "--name", "-lead"],
            "--name '-lead'",
        ),
        (
            vec!["--backend", "skypilot", "--name", "1fleet"],
            "SkyPilot cluster names start with a letter",
        ),
        (ssh(""), "host '' is empty"),
        (ssh("h1,,h2"), "host '' is empty"),
        (ssh("h1,user@"), "host 'user@' is empty"),
        (
            ssh("-oProxyCommand=touch /tmp/x,h2"),
            "starts with '-', which ssh would read as an option",
        ),
        (ssh("user@[::1]:22,h2"), "holds a port or an IPv6 address"),
        (ssh("h1:2222"), "holds a port or an IPv6 address"),
        (
            [ssh("h1,h2"), vec!["--nodes", "5"]].concat(),
            "--nodes 5 but 2 --hosts",
        ),
        (
            [ssh("h1,h2"), vec!["--nodes", "1"]].concat(),
            "--nodes 1 but 2 --hosts",
        ),
        (
            [ssh("h1"), vec!["--gateway-hosts", "-g"]].concat(),
            "--gateway-hosts: host '-g' starts with '-'",
        ),
        (
            vec![
                "--backend",
                "slurm",
                "--gateways",
                "1",
                "--port",
                "7400",
                "--gateway-port",
                "7400",
            ],
            "--port and --gateway-port are both 7400",
        ),
    ];
    for (options, message) in cases {
        let mut all = vec!["launch"];
        all.extend(&options);
        all.extend(["-o", out, "--", "cp", "-r", "s3://a/x", "s3://b/x"]);
        let run = skyhaul(&all, None, None);
        assert_eq!(run.code, 2, "{all:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{all:?}: {}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(!std::path::Path::new(out).exists(), "{all:?} wrote the job");
    }
    // Port 0 is no port: clap refuses it as it does 65536 (exit 2, the problem first).
    for options in [
        vec!["--backend", "slurm", "--port", "0"],
        vec![
            "--backend",
            "skypilot",
            "--gateways",
            "1",
            "--gateway-port",
            "0",
        ],
    ] {
        let mut all = vec!["launch"];
        all.extend(&options);
        all.extend(["-o", out, "--", "cp", "-r", "s3://a/x", "s3://b/x"]);
        let run = skyhaul(&all, None, None);
        assert_eq!(run.code, 2, "{all:?}: {}", run.stderr);
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("invalid value '0'") && first.contains("0 is not in 1..=65535"),
            "{}",
            run.stderr
        );
        assert!(!std::path::Path::new(out).exists(), "{all:?} wrote the job");
    }
    // The limits' edges pass: a 61-character name makes NAME-1, 63 characters.
    let ok = "c".repeat(61);
    let run = skyhaul(
        &[
            "launch",
            "--backend",
            "kubernetes",
            "--image",
            "i",
            "--name",
            &ok,
            "-o",
            out,
            "--",
            "cp",
            "-r",
            "s3://a/x",
            "s3://b/x",
        ],
        None,
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A secret given as a flag of the transfer would be written into the job's file (and on
/// Kubernetes and SkyPilot into the pod's or task's command, readable by whoever may list
/// them): refused, naming the variable that carries it as a secret, and no file written.
#[test]
fn secrets_given_as_transfer_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let out = out.to_str().unwrap();
    let backends: [&[&str]; 4] = [
        &["--backend", "slurm"],
        &["--backend", "ssh", "--hosts", "h1,h2"],
        &["--backend", "kubernetes", "--image", "i"],
        &["--backend", "skypilot"],
    ];
    let secrets = [
        ("--dst-azure-key", "SKYHAUL_DST_AZURE_KEY"),
        ("--src-azure-sas", "SKYHAUL_SRC_AZURE_SAS"),
        (
            "--dst-azure-connection-string",
            "SKYHAUL_DST_AZURE_CONNECTION_STRING",
        ),
    ];
    for (backend, (flag, var)) in backends.iter().zip(secrets.iter().cycle()) {
        for given in [vec![*flag, "SeCrEt="], vec![&format!("{flag}=SeCrEt=")[..]]] {
            let mut all = vec!["launch"];
            all.extend(*backend);
            all.extend(["-o", out, "--", "cp", "-r", "az://c/x", "az://d/x"]);
            all.extend(&given);
            all.extend(["--src-azure-account", "a", "--dst-azure-account", "b"]);
            let run = skyhaul(&all, None, None);
            assert_eq!(run.code, 2, "{all:?}: {}", run.stderr);
            let wanted = format!("{flag} in the transfer would write the secret into the job's file: set {var} in this shell instead");
            assert!(run.stderr.contains(&wanted), "{all:?}: {}", run.stderr);
            assert!(!run.stderr.contains("SeCrEt"), "{}", run.stderr);
            assert!(!std::path::Path::new(out).exists(), "{all:?} wrote the job");
        }
    }
}

fn launch_to(out: &std::path::Path, extra: &[&str]) -> Run {
    let mut all = vec!["launch", "--backend", "slurm", "-o", out.to_str().unwrap()];
    all.extend(extra);
    all.extend(["--", "cp", "-r", "s3://a/x", "s3://b/x"]);
    skyhaul(&all, None, None)
}

/// `-o` (and the gateways' file beside it) never replaces a file without `--force`, and
/// never writes through a symlink, even with it: what the link points at stays as it was,
/// and a refused launch writes none of its files.
#[test]
fn launch_replaces_files_only_with_force_and_never_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("fleet.sbatch");
    std::fs::write(&job, "mine\n").unwrap();
    let run = launch_to(&job, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("fleet.sbatch exists: pass --force to replace it"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&job).unwrap(), "mine\n");
    let run = launch_to(&job, &["--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(std::fs::read_to_string(&job)
        .unwrap()
        .starts_with("#!/bin/bash"));

    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "IMPORTANT DATA\n").unwrap();
    let link = dir.path().join("link.sbatch");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let dangling = dir.path().join("dangling.sbatch");
    let nowhere = dir.path().join("nowhere.txt");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    for path in [&link, &dangling] {
        for extra in [&[][..], &["--force"]] {
            let run = launch_to(path, extra);
            assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
            assert!(run.stderr.contains("is a symlink"), "{}", run.stderr);
        }
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "IMPORTANT DATA\n"
    );
    assert!(!nowhere.exists());

    // The gateways' file beside the fleet's: an existing one stops the launch before
    // either file is written.
    let task = dir.path().join("new.sky.yaml");
    let gateways = dir.path().join("skyhaul-fleet.gateway.sky.yaml");
    std::fs::write(&gateways, "earlier launch\n").unwrap();
    let sky = |extra: &[&str]| {
        let mut all = vec![
            "launch",
            "--backend",
            "skypilot",
            "--gateways",
            "1",
            "--gateway-region",
            "eu-west-1",
            "-o",
            task.to_str().unwrap(),
        ];
        all.extend(extra);
        all.extend(["--", "cp", "-r", "s3://a/x", "s3://b/x"]);
        skyhaul(&all, None, None)
    };
    let run = sky(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("skyhaul-fleet.gateway.sky.yaml exists"),
        "{}",
        run.stderr
    );
    assert!(!task.exists());
    assert_eq!(
        std::fs::read_to_string(&gateways).unwrap(),
        "earlier launch\n"
    );
    let run = sky(&["--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(task.exists());
    assert!(std::fs::read_to_string(&gateways)
        .unwrap()
        .contains("skyhaul gateway"));
}

/// Every variable of the README's credential tables (skyhaul's per side, AWS's and Azure's
/// own; GCS takes files), as this test's own list.
const README_CREDENTIAL_ENV: [&str; 33] = [
    "SKYHAUL_SRC_ENDPOINT",
    "SKYHAUL_DST_ENDPOINT",
    "SKYHAUL_SRC_PROFILE",
    "SKYHAUL_DST_PROFILE",
    "SKYHAUL_SRC_REGION",
    "SKYHAUL_DST_REGION",
    "SKYHAUL_SRC_ACCESS_KEY_ID",
    "SKYHAUL_SRC_SECRET_ACCESS_KEY",
    "SKYHAUL_SRC_SESSION_TOKEN",
    "SKYHAUL_DST_ACCESS_KEY_ID",
    "SKYHAUL_DST_SECRET_ACCESS_KEY",
    "SKYHAUL_DST_SESSION_TOKEN",
    "SKYHAUL_SRC_AZURE_KEY",
    "SKYHAUL_SRC_AZURE_SAS",
    "SKYHAUL_SRC_AZURE_CONNECTION_STRING",
    "SKYHAUL_SRC_AZURE_ACCOUNT",
    "SKYHAUL_DST_AZURE_KEY",
    "SKYHAUL_DST_AZURE_SAS",
    "SKYHAUL_DST_AZURE_CONNECTION_STRING",
    "SKYHAUL_DST_AZURE_ACCOUNT",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

/// A distinctive value for each variable (endpoints must be URLs to get past the
/// transfer's own check).
fn credential_values() -> Vec<(&'static str, String)> {
    README_CREDENTIAL_ENV
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let value = if v.ends_with("_ENDPOINT") {
                format!("https://endpoint-{i}.example")
            } else {
                format!("zzcredvalue{i}zz")
            };
            (*v, value)
        })
        .collect()
}

/// SkyPilot declares every credential variable set where the job is made as a secret (and
/// no other, since SkyPilot refuses to launch a task with a declared secret it has no value
/// for), the SSH runner passes on every one by name, and no value is in either file. The
/// coordinator's port is not opened to the internet. A GCS key file, which no variable can
/// carry, is named in a warning.
#[test]
fn skypilot_and_ssh_pass_on_every_credential_variable_and_write_none() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("fleet.sky.yaml");
    let runner = dir.path().join("fleet.sh");
    let values = credential_values();
    let mut env: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SKYHAUL_FLEET_TOKEN", "zztokenvaluezz0123456789"));
    let generate = |backend: &[&str], out: &std::path::Path, env: &[(&str, &str)]| {
        let mut all = vec!["launch"];
        all.extend(backend);
        all.extend([
            "-o",
            out.to_str().unwrap(),
            "--",
            "cp",
            "-r",
            "az://c/x",
            "gs://b/x",
        ]);
        let run = skyhaul_env(&all, None, None, env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let text = std::fs::read_to_string(out).unwrap();
        for (_, value) in env.iter().filter(|(_, v)| !v.is_empty()) {
            assert!(!text.contains(value), "{value} written into {text}");
        }
        (run, text)
    };
    generate(&["--backend", "skypilot"], &task, &env);
    let script = r#"
import json, sys, yaml, sky
config = yaml.safe_load(open(sys.argv[1]))
declared = dict(config["secrets"])
t = sky.Task.from_yaml_config(config, secrets_overrides=[(k, "given") for k in declared])
print(json.dumps({
    "declared_secrets": declared,
    "unresolved": [r.name for r in t.managed_secret_refs],
    "ports": list(t.resources)[0].ports,
}))
"#;
    let v = sky_python(script, &[&task]);
    assert_no_secret_has_a_value(&v);
    let declared: std::collections::BTreeSet<&str> = v["declared_secrets"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for name in README_CREDENTIAL_ENV.iter().chain(&["SKYHAUL_FLEET_TOKEN"]) {
        assert!(declared.contains(name), "{name} not declared: {v}");
    }
    assert_eq!(v["unresolved"], serde_json::json!([]), "{v}");
    assert_eq!(v["ports"], serde_json::Value::Null, "{v}");
    // Nothing set (empty is unset): the token alone, which SkyPilot then asks for.
    let unset: Vec<(&str, &str)> = README_CREDENTIAL_ENV.iter().map(|v| (*v, "")).collect();
    generate(&["--backend", "skypilot", "--force"], &task, &unset);
    let v = sky_python(script, &[&task]);
    assert_eq!(
        v["declared_secrets"],
        serde_json::json!({"SKYHAUL_FLEET_TOKEN": null}),
        "{v}"
    );

    let (_, text) = generate(&["--backend", "ssh", "--hosts", "h1,h2"], &runner, &env);
    let vars = text
        .lines()
        .find(|l| l.starts_with("FLEET_VARS=("))
        .unwrap_or_else(|| panic!("no FLEET_VARS in {text}"));
    for name in README_CREDENTIAL_ENV {
        assert!(
            vars.split(['(', ' ', ')']).any(|w| w == name),
            "{name} not passed on: {vars}"
        );
    }

    // A key file is a path here: named in a warning, the job still written.
    let key = dir.path().join("reader.json");
    let mut with_key = unset.clone();
    with_key.push(("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap()));
    let (run, _) = generate(&["--backend", "skypilot", "--force"], &task, &with_key);
    assert!(
        run.stderr.contains("warning: the GCS service-account key")
            && run.stderr.contains(&format!(
                "{} (from GOOGLE_APPLICATION_CREDENTIALS)",
                key.display()
            )),
        "{}",
        run.stderr
    );
    // So is a setting that only this machine's environment gives.
    let mut with_setting = unset.clone();
    with_setting.push(("SKYHAUL_BWLIMIT", "1M"));
    let (run, _) = generate(&["--backend", "skypilot", "--force"], &task, &with_setting);
    assert!(
        run.stderr.contains(
            "SKYHAUL_BWLIMIT is set on this machine only: the job's machines do not get it; pass --bwlimit"
        ),
        "{}",
        run.stderr
    );
}
