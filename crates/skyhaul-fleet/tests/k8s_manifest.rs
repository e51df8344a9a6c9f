//! The generated Kubernetes manifest against the Kubernetes API's own types (k8s-openapi):
//! every document parses into its typed object and serialises back to exactly what was
//! written — so no field is misspelt, misplaced or of the wrong type (the typed structs
//! drop what they do not know, which the comparison catches) — and the fields that make the
//! fleet work are checked on the typed objects. Then the pod's command runs for ranks 0 and
//! 1 as a shell would in the pod.

use k8s_openapi::api::batch::v1::Job as K8sJob;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use serde::Deserialize;
use skyhaul_fleet::launch::{Backend, GatewayTls, Gateways, Job};
use std::time::Duration;

const NODES: u32 = 4;

fn job(skyhaul: &str) -> Job {
    Job {
        nodes: NODES,
        port: 7070,
        name: "skyhaul-fleet".into(),
        transfer: vec![
            "cp".into(),
            "-r".into(),
            "s3://src/it's data".into(),
            "s3://dst/data".into(),
        ],
        skyhaul: skyhaul.into(),
        image: "registry.example/skyhaul:0.1".into(),
        secret: "skyhaul-credentials".into(),
        spot: false,
        cpus: None,
        keep_cluster: false,
        hosts: Vec::new(),
        gateways: None,
    }
}

/// Each YAML document of `text` as an untyped JSON value.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).expect("valid YAML"))
        .collect()
}

/// Parses `doc` as `T` and checks that nothing was lost or changed on the way.
fn typed<T>(doc: &serde_json::Value) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let t: T = serde_json::from_value(doc.clone()).expect("parses as the typed object");
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, doc, "the typed round trip changed the document");
    t
}

#[test]
fn manifest_round_trips_through_the_kubernetes_types() {
    let text = job("skyhaul").render(Backend::Kubernetes);
    let docs = documents(&text);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Job"], "{text}");

    let svc: Service = typed(&docs[0]);
    let svc_name = svc.metadata.name.clone().unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    let ports = spec.ports.unwrap();
    assert_eq!(ports[0].port, 7070);
    let selector = spec.selector.unwrap();

    let kjob: K8sJob = typed(&docs[1]);
    let job_name = kjob.metadata.name.clone().unwrap();
    let spec = kjob.spec.unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(spec.completions, Some(NODES as i32));
    assert_eq!(spec.parallelism, Some(NODES as i32));
    // Once it has finished, the Job and its pods go by themselves (after an hour, to read
    // the logs).
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    let template = spec.template;
    // The Service selects the Job's pods, and the pods take its name as their subdomain:
    // rank 0 is reachable as JOB-0.SERVICE.
    let labels = template.metadata.unwrap().labels.unwrap();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "selector {k}");
    }
    let pod = template.spec.unwrap();
    assert_eq!(pod.subdomain.as_deref(), Some(svc_name.as_str()));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/skyhaul:0.1"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 7070);
    let env = c.env.clone().unwrap_or_default();
    let head = env.iter().find(|e| e.name == "SKYHAUL_HEAD").unwrap();
    assert_eq!(
        head.value.as_deref(),
        Some(format!("{job_name}-0.{svc_name}").as_str())
    );
    // Secrets come from the Secret, never inline: every env var with a value is
    // SKYHAUL_HEAD, no Secret object is generated, and the credentials' names appear only in
    // the comment that says how to create the Secret.
    assert!(env.iter().all(|e| e.name == "SKYHAUL_HEAD"), "{env:?}");
    let from = c.env_from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0].secret_ref.as_ref().unwrap().name,
        "skyhaul-credentials"
    );
    let yaml_only: String = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!yaml_only.contains("SECRET_ACCESS_KEY"), "{text}");
    assert!(!yaml_only.contains("SKYHAUL_FLEET_TOKEN="), "{text}");

    // The command, as the pod runs it: rank 0 (JOB_COMPLETION_INDEX=0) coordinates, every
    // other rank works for JOB-0.SERVICE. `echo` stands in for skyhaul.
    let docs = documents(&job("echo").render(Backend::Kubernetes));
    let k: K8sJob = typed(&docs[1]);
    let c = &k.spec.unwrap().template.spec.unwrap().containers[0];
    let command = c.command.clone().unwrap();
    assert_eq!(command[..2], ["sh", "-c"]);
    let run = |index: &str, token: Option<&str>| {
        let mut cmd = std::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("JOB_COMPLETION_INDEX", index)
            .env("SKYHAUL_HEAD", head.value.as_deref().unwrap());
        if let Some(t) = token {
            cmd.env("SKYHAUL_FLEET_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
        )
    };
    let token = Some("0123456789abcdef0123");
    assert_eq!(
        run("0", token),
        (
            true,
            "coordinator --listen 0.0.0.0:7070 cp -r s3://src/it's data s3://dst/data --workers 1"
                .to_string()
        )
    );
    assert_eq!(
        run("2", token),
        (
            true,
            "worker --coordinator http://skyhaul-fleet-0.skyhaul-fleet:7070 --wait 10m".to_string()
        )
    );
    // Without the token from the Secret, no rank starts.
    assert!(!run("0", None).0);
}

fn with_gateways(skyhaul: &str) -> Job {
    Job {
        gateways: Some(Gateways {
            count: 2,
            port: 7400,
            args: vec!["s3://dst".into(), "--dst-region".into(), "eu-west-1".into()],
            node_selector: vec![("topology.kubernetes.io/region".into(), "eu-west-1".into())],
            secret: "gw-credentials".into(),
            idle_exit: Some(Duration::from_secs(1800)),
            tls: Some(GatewayTls {
                cert: "/certs/gw.pem".into(),
                key: "/certs/gw-key.pem".into(),
                ca: Some("/certs/ca.pem".into()),
                name: None,
            }),
            ..Gateways::default()
        }),
        ..job(skyhaul)
    }
}

/// Runs a container's command as its pod would, with only `env` set.
fn run_command(command: &[String], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// The one read-only volume of a pod and its container: (mount path, source kind, source
/// name).
fn mounted(pod: &PodSpec, c: &Container) -> (String, &'static str, String) {
    let mounts = c.volume_mounts.as_ref().expect("a volume mount");
    let volumes = pod.volumes.as_ref().expect("a volume");
    assert_eq!((mounts.len(), volumes.len()), (1, 1));
    assert_eq!(mounts[0].name, volumes[0].name);
    assert_eq!(mounts[0].read_only, Some(true));
    let v = &volumes[0];
    let source = match (&v.secret, &v.config_map) {
        (Some(s), None) => ("secret", s.secret_name.clone().unwrap()),
        (None, Some(m)) => ("configMap", m.name.clone()),
        _ => panic!("{v:?}"),
    };
    (mounts[0].mount_path.clone(), source.0, source.1)
}

/// `--gateways 2` with TLS: an Indexed Job of gateways behind its own headless Service, each
/// pod addressed by its DNS name in the fleet's `SKYHAUL_GATEWAYS`, done when its gateway
/// exits 0; secrets only through the gateways' Secret (`envFrom`) and, for the fleet, the
/// relay key alone (`secretKeyRef`); the TLS Secret mounted by the gateways, the CA's
/// ConfigMap by the fleet.
#[test]
fn gateway_manifest_round_trips_through_the_kubernetes_types() {
    let text = with_gateways("skyhaul").render(Backend::Kubernetes);
    let docs = documents(&text);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Job", "Service", "Job"], "{text}");
    // How to make the TLS Secret and the CA's ConfigMap: from the files' paths, the files
    // themselves never in the manifest.
    assert!(
        text.contains(
            "#   kubectl create secret tls skyhaul-fleet-gw-tls --cert=/certs/gw.pem --key=/certs/gw-key.pem\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "#   kubectl create configmap skyhaul-fleet-relay-ca --from-file=ca.crt=/certs/ca.pem\n"
        ),
        "{text}"
    );
    let _: Service = typed(&docs[0]);

    let svc: Service = typed(&docs[2]);
    let svc_name = svc.metadata.name.clone().unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let ports = spec.ports.unwrap();
    assert_eq!(
        (ports[0].port, ports[0].name.as_deref()),
        (7400, Some("relay"))
    );
    let selector = spec.selector.unwrap();

    let gw_job: K8sJob = typed(&docs[3]);
    // Pod i of an Indexed Job is host JOB-i; under the Service as subdomain it is
    // JOB-i.SERVICE, which the fleet dials.
    let gw_name = gw_job.metadata.name.clone().unwrap();
    let spec = gw_job.spec.unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    // A failed gateway is replaced (under the same name); one that exited 0 is done, and
    // the finished Job goes after an hour.
    assert_eq!(spec.backoff_limit_per_index, Some(3));
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    let template = spec.template;
    let labels = template.metadata.unwrap().labels.unwrap();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "selector {k}");
    }
    let pod = template.spec.unwrap();
    assert_eq!(pod.subdomain.as_deref(), Some(svc_name.as_str()));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let placement = pod.node_selector.clone().unwrap();
    assert_eq!(
        placement
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("eu-west-1")
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/skyhaul:0.1"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 7400);
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .tcp_socket
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7400)
    );
    assert!(
        c.env.is_none(),
        "no inline env on the gateways: {:?}",
        c.env
    );
    let from = c.env_from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "gw-credentials");
    assert_eq!(
        mounted(&pod, c),
        (
            "/etc/skyhaul/gateway-tls".to_string(),
            "secret",
            "skyhaul-fleet-gw-tls".to_string()
        )
    );

    // The fleet: each gateway pod by its name under the headless Service, and the relay key
    // from the gateways' Secret; nothing secret inline.
    let kjob: K8sJob = typed(&docs[1]);
    let fleet_pod = kjob.spec.unwrap().template.spec.unwrap();
    let fc = &fleet_pod.containers[0];
    assert_eq!(
        mounted(&fleet_pod, fc),
        (
            "/etc/skyhaul/relay-ca".to_string(),
            "configMap",
            "skyhaul-fleet-relay-ca".to_string()
        )
    );
    let env = fc.env.clone().unwrap();
    let value = |name: &str| env.iter().find(|e| e.name == name).unwrap().clone();
    assert_eq!(
        value("SKYHAUL_GATEWAYS").value.as_deref(),
        Some(format!("{gw_name}-0.{svc_name}:7400,{gw_name}-1.{svc_name}:7400").as_str())
    );
    let key = value("SKYHAUL_RELAY_KEY");
    assert!(key.value.is_none());
    let key_ref = key.value_from.unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("gw-credentials", "SKYHAUL_RELAY_KEY")
    );
    for e in &env {
        assert!(
            ["SKYHAUL_HEAD", "SKYHAUL_GATEWAYS", "SKYHAUL_RELAY_KEY"].contains(&e.name.as_str()),
            "{e:?}"
        );
    }
    // Credentials are named only in the comment and in the scripts' `unset` lines.
    let yaml_only: String = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!yaml_only.contains("SECRET_ACCESS_KEY="), "{text}");
    assert!(!yaml_only.contains("SECRET_ACCESS_KEY:"), "{text}");

    // The commands, as the pods run them (`echo` stands in for skyhaul). A gateway starts
    // only with the relay key, and without the fleet's token or the source's keys.
    let docs = documents(&with_gateways("echo").render(Backend::Kubernetes));
    let gw_job: K8sJob = typed(&docs[3]);
    let gw = gw_job.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    let key = "ab".repeat(32);
    assert_eq!(
        run_command(&gw, &[("SKYHAUL_RELAY_KEY", &key)]),
        (
            true,
            "gateway --listen 0.0.0.0:7400 s3://dst --dst-region eu-west-1 --exit-on-stop --idle-exit 1800s \
             --tls-cert /etc/skyhaul/gateway-tls/tls.crt --tls-key /etc/skyhaul/gateway-tls/tls.key"
                .to_string()
        )
    );
    assert!(!run_command(&gw, &[]).0, "a gateway without the key starts");
    // Rank 0 waits for the gateways to accept connections, then coordinates through them.
    let k: K8sJob = typed(&docs[1]);
    let fleet = k.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateways = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (ok, out) = run_command(
        &fleet,
        &[
            ("JOB_COMPLETION_INDEX", "0"),
            ("SKYHAUL_HEAD", "skyhaul-fleet-0.skyhaul-fleet"),
            ("SKYHAUL_FLEET_TOKEN", "0123456789abcdef0123"),
            ("SKYHAUL_GATEWAYS", &gateways),
        ],
    );
    assert!(ok, "{out}");
    // It tells the gateways when the transfer is over, and trusts their CA.
    assert!(
        out.starts_with("coordinator --listen 0.0.0.0:7070 --relay-stop-gateways cp -r "),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "--workers 1 --relay {gateways} --relay-tls-ca /etc/skyhaul/relay-ca/ca.crt"
        )),
        "{out}"
    );
}
