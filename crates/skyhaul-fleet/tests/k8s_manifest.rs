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
        tasks_per_node: 1,
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
        credentials: Vec::new(),
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
/// The command of a Job's (only) container.
fn command_of(job: K8sJob) -> Vec<String> {
    job.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap()
}

/// A gateway's command runs `skyhaul gateway` with its TLS files, and only given the relay key.
fn assert_gateway_starts_only_with_the_key(gw: &[String]) {
    let key = "f78a687de234528949b4cb7291f0492494b3dfafb54ed72dcff598083b7d8d67";
    assert_eq!(
        run_command(gw, &[("SKYHAUL_RELAY_KEY", key)]),
        (
            true,
            "gateway --listen 0.0.0.0:7400 s3://dst --dst-region eu-west-1 --exit-on-stop --idle-exit 1800s \
             --tls-cert /etc/skyhaul/gateway-tls/tls.crt --tls-key /etc/skyhaul/gateway-tls/tls.key"
                .to_string()
        )
    );
    assert!(!run_command(gw, &[]).0, "a gateway without the key starts");
}

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
    assert_gateway_starts_only_with_the_key(&command_of(gw_job));
    // Rank 0 waits for the gateways to accept connections, then coordinates through them.
    let k: K8sJob = typed(&docs[1]);
    let fleet = command_of(k);
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

/// The kubectl context of the gateways' cluster in the tests: an EKS ARN, as AWS names them,
/// with characters a shell must not split or expand.
const CONTEXT: &str = "arn:aws:eks:eu-west-1:123456789012:cluster/dst";

/// `--gateways 2 --gateway-kube-context` with TLS: the gateways for another cluster, in
/// their own file. TLS checks a name of the certificate's (load balancers' addresses are not
/// known in advance).
fn across_clusters(skyhaul: &str, tls_dir: &str) -> Job {
    let mut j = with_gateways(skyhaul);
    let g = j.gateways.as_mut().unwrap();
    g.kube_context = Some(CONTEXT.into());
    g.tls = Some(GatewayTls {
        cert: format!("{tls_dir}/gw.pem"),
        key: format!("{tls_dir}/gw-key.pem"),
        ca: Some(format!("{tls_dir}/ca.pem")),
        name: Some("relay-gateway".into()),
    });
    j
}

/// `--gateway-source-ranges`: every gateway's load balancer accepts those ranges only, and
/// the file's comments say so instead of warning that any address may connect.
#[test]
fn load_balancers_accept_only_the_given_ranges() {
    let mut job = across_clusters("skyhaul", "/certs");
    let ranges = vec!["203.0.113.0/24".to_string(), "2001:db8::/32".to_string()];
    job.gateways.as_mut().unwrap().source_ranges = ranges.clone();
    let text = job.render_gateway(Backend::Kubernetes).unwrap();
    let docs = documents(&text);
    for doc in &docs[..2] {
        let svc: Service = typed(doc);
        assert_eq!(
            svc.spec.unwrap().load_balancer_source_ranges.as_ref(),
            Some(&ranges)
        );
    }
    assert!(
        text.contains("connections only from 203.0.113.0/24, 2001:db8::/32"),
        "{text}"
    );
    assert!(!text.contains("from any address"), "{text}");
}

/// The `metadata.name` of every document.
fn names(docs: &[serde_json::Value]) -> Vec<&str> {
    docs.iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect()
}

/// Gateways in another cluster: the fleet's file holds only the fleet (its pods take
/// `SKYHAUL_GATEWAYS` from a ConfigMap they wait for, and the relay key from the fleet's own
/// Secret), the gateways' file only the gateways — an Indexed Job as in one cluster, but
/// without a subdomain, and one LoadBalancer Service per gateway selecting its pod by the
/// completion index the Job controller labels it with.
#[test]
fn gateways_in_another_cluster_round_trip_through_the_kubernetes_types() {
    let job = across_clusters("skyhaul", "/certs");
    assert_eq!(
        job.gateway_file(Backend::Kubernetes).as_deref(),
        Some("skyhaul-fleet.gateways.yaml")
    );
    let fleet_text = job.render(Backend::Kubernetes);
    let gw_text = job
        .render_gateway(Backend::Kubernetes)
        .expect("a gateway file");
    let fleet_docs = documents(&fleet_text);
    let gw_docs = documents(&gw_text);

    // Each file holds its own side's objects only.
    let kinds = |docs: &[serde_json::Value]| -> Vec<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds(&fleet_docs), ["Service", "Job"], "{fleet_text}");
    assert_eq!(names(&fleet_docs), ["skyhaul-fleet", "skyhaul-fleet"]);
    assert_eq!(kinds(&gw_docs), ["Service", "Service", "Job"], "{gw_text}");
    assert_eq!(
        names(&gw_docs),
        [
            "skyhaul-fleet-gw-0",
            "skyhaul-fleet-gw-1",
            "skyhaul-fleet-gw"
        ]
    );
    let yaml_only = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !yaml_only(&fleet_text).contains("gateway --listen"),
        "{fleet_text}"
    );
    assert!(
        !yaml_only(&gw_text).contains("coordinator --listen"),
        "{gw_text}"
    );
    for text in [&fleet_text, &gw_text] {
        let y = yaml_only(text);
        assert!(
            !y.contains("SECRET_ACCESS_KEY=") && !y.contains("SECRET_ACCESS_KEY:"),
            "{text}"
        );
    }

    // The gateways' Job: as in one cluster, with no headless Service to be a subdomain of.
    let gw_job: K8sJob = typed(&gw_docs[2]);
    let gw_name = gw_job.metadata.name.clone().unwrap();
    let spec = gw_job.spec.unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    assert_eq!(spec.backoff_limit_per_index, Some(3));
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    let template = spec.template;
    let labels = template.metadata.unwrap().labels.unwrap();
    // The label the Job controller sets on its pods, written out so that the Services'
    // selectors can be checked against it here.
    assert_eq!(labels.get("job-name"), Some(&gw_name));
    let pod = template.spec.unwrap();
    assert_eq!(pod.subdomain, None);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.node_selector
            .as_ref()
            .unwrap()
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("eu-west-1")
    );
    let c = &pod.containers[0];
    assert!(c.env.is_none(), "{:?}", c.env);
    let from = c.env_from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "gw-credentials");
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 7400);
    assert!(c.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
    assert_eq!(
        mounted(&pod, c),
        (
            "/etc/skyhaul/gateway-tls".to_string(),
            "secret",
            "skyhaul-fleet-gw-tls".to_string()
        )
    );

    // One load balancer per gateway, each selecting that gateway's pod alone.
    for (i, doc) in gw_docs[..2].iter().enumerate() {
        let svc: Service = typed(doc);
        assert_eq!(
            svc.metadata.name.as_deref(),
            Some(format!("{gw_name}-{i}").as_str())
        );
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.load_balancer_source_ranges, None,
            "open to any address"
        );
        assert_eq!(spec.cluster_ip, None, "not headless");
        let selector = spec.selector.unwrap();
        let expected: std::collections::BTreeMap<String, String> = [
            ("job-name".to_string(), gw_name.clone()),
            (
                "batch.kubernetes.io/job-completion-index".to_string(),
                i.to_string(),
            ),
        ]
        .into();
        assert_eq!(selector, expected);
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].port, ports[0].name.as_deref()),
            (7400, Some("relay"))
        );
    }

    // The fleet: the gateways' addresses from a ConfigMap that must exist before its pods
    // start, the key from its own Secret, the CA mounted.
    let kjob: K8sJob = typed(&fleet_docs[1]);
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
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["SKYHAUL_HEAD", "SKYHAUL_GATEWAYS", "SKYHAUL_RELAY_KEY"]
    );
    let gateways = &env[1];
    assert_eq!(gateways.value, None);
    let from_map = gateways
        .value_from
        .as_ref()
        .unwrap()
        .config_map_key_ref
        .clone()
        .unwrap();
    assert_eq!(
        (
            from_map.name.as_str(),
            from_map.key.as_str(),
            from_map.optional
        ),
        ("skyhaul-fleet-gateways", "SKYHAUL_GATEWAYS", Some(false))
    );
    let key_ref = env[2]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .clone()
        .unwrap();
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("skyhaul-credentials", "SKYHAUL_RELAY_KEY")
    );
    assert_eq!(
        fc.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "skyhaul-credentials"
    );

    // The commands as the pods run them (`echo` stands in for skyhaul): the gateway with its
    // mounted TLS files; rank 0 waits for the gateways, then checks the certificate's name.
    let job = across_clusters("echo", "/certs");
    let gw_job: K8sJob = typed(&documents(&job.render_gateway(Backend::Kubernetes).unwrap())[2]);
    assert_gateway_starts_only_with_the_key(&command_of(gw_job));
    let k: K8sJob = typed(&documents(&job.render(Backend::Kubernetes))[1]);
    let fleet = command_of(k);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateways = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let rank0 = |gateways: Option<&str>| {
        let mut env = vec![
            ("JOB_COMPLETION_INDEX", "0"),
            ("SKYHAUL_HEAD", "skyhaul-fleet-0.skyhaul-fleet"),
            ("SKYHAUL_FLEET_TOKEN", "0123456789abcdef0123"),
        ];
        env.extend(gateways.map(|g| ("SKYHAUL_GATEWAYS", g)));
        run_command(&fleet, &env)
    };
    let (ok, out) = rank0(Some(&gateways));
    assert!(ok, "{out}");
    assert!(
        out.starts_with("coordinator --listen 0.0.0.0:7070 --relay-stop-gateways cp -r "),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "--workers 1 --relay {gateways} --relay-tls-ca /etc/skyhaul/relay-ca/ca.crt --relay-tls-name relay-gateway"
        )),
        "{out}"
    );
    assert!(!rank0(None).0, "rank 0 starts without the gateways");
}

/// Where the real `kubectl` is: the stand-in below hands it what it can do without a cluster.
fn real_kubectl() -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl on PATH (this test runs the files' commands through it)")
}

/// One recorded `kubectl` (or `sleep`) call: its arguments, and what the real kubectl made
/// of a `create` (the object, as JSON) when it could.
struct Call {
    args: Vec<String>,
    created: Option<serde_json::Value>,
}

/// Runs the commands of `text`'s comment (its lines `#   …`) under `sh -eu`, with `kubectl`
/// replaced by a stand-in: `get service NAME -o jsonpath=…` evaluates the jsonpath with the
/// real kubectl on `NAME.N.json` (the Service as the N-th call finds it) or `NAME.json`;
/// `create secret generic` and `create configmap` run for real with `--dry-run=client` (the
/// context removed: there is no cluster); other calls are only recorded, as is `sleep`.
fn run_comment(text: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Vec<Call> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let stand_in = |name: &str, script: String| {
        let p = bin.join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let d = dir.display();
    stand_in(
        "kubectl",
        format!(
            r#"#!/bin/sh
set -eu
n=$(($(cat {d}/calls 2>/dev/null || echo 0) + 1)); echo "$n" > {d}/calls
(IFS=$(printf '\037'); printf '%s\n' "$*") > {d}/call.$n
if [ "$1" = --context ]; then shift 2; fi
case "$1 $2" in
"get service")
  svc=$3; shift 3
  k=$(cat {d}/$svc.asked 2>/dev/null || echo 0); echo $((k + 1)) > {d}/$svc.asked
  f={d}/$svc.$k.json; [ -f "$f" ] || f={d}/$svc.json
  exec {real} label --local -f "$f" probe=1 "$@" ;;
"create configmap"|"create secret")
  [ "$3" = tls ] && exit 0
  exec {real} "$@" --dry-run=client -o json > {d}/created.$n ;;
esac
"#,
            real = real_kubectl().display()
        ),
    );
    stand_in(
        "sleep",
        format!(
            "#!/bin/sh\nn=$(($(cat {d}/calls 2>/dev/null || echo 0) + 1)); echo \"$n\" > {d}/calls\nprintf 'sleep\\037%s\\n' \"$*\" > {d}/call.$n\n"
        ),
    );
    let script: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-eu", "-c", &script])
        .env_clear()
        .env("HOME", dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: usize = std::fs::read_to_string(dir.join("calls"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1..=calls)
        .map(|n| Call {
            args: std::fs::read_to_string(dir.join(format!("call.{n}")))
                .unwrap()
                .trim_end_matches('\n')
                .split('\x1f')
                .map(str::to_string)
                .collect(),
            created: std::fs::read(dir.join(format!("created.{n}")))
                .ok()
                .map(|b| serde_json::from_slice(&b).unwrap()),
        })
        .collect()
}

/// Writes the Services `NAME-gw-I` as kubectl would find them: gateway 0's load balancer
/// has a host name (as AWS gives), gateway 1's none at first, then an IP (as GCP and Azure
/// give) — so the commands must wait, and take either.
fn load_balancers(dir: &std::path::Path) {
    let svc = |ingress: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 7400}]},
            "status": {"loadBalancer": ingress},
        })
        .to_string()
    };
    let write = |name: &str, v: String| std::fs::write(dir.join(name), v).unwrap();
    write(
        "skyhaul-fleet-gw-0.json",
        svc(serde_json::json!({"ingress": [{"hostname": "gw0-123.elb.eu-west-1.amazonaws.com"}]})),
    );
    write("skyhaul-fleet-gw-1.0.json", svc(serde_json::json!({})));
    write(
        "skyhaul-fleet-gw-1.json",
        svc(serde_json::json!({"ingress": [{"ip": "203.0.113.7"}]})),
    );
}

/// The data of a Secret or ConfigMap the real kubectl made from a recorded call.
fn data(call: &Call, key: &str) -> String {
    let obj = call.created.as_ref().expect("kubectl made the object");
    match obj["kind"].as_str().unwrap() {
        "Secret" => {
            let s: k8s_openapi::api::core::v1::Secret =
                serde_json::from_value(obj.clone()).unwrap();
            String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
        }
        _ => {
            let m: k8s_openapi::api::core::v1::ConfigMap =
                serde_json::from_value(obj.clone()).unwrap();
            m.data.unwrap()[key].clone()
        }
    }
}

/// The commands in the comments of both files, run as written (a stand-in kubectl, backed by
/// the real one where no cluster is needed): the fleet's file sets up both clusters — the
/// gateways' Secret in their context and the fleet's in the current one, both with the same
/// relay key made once —, applies both files, waits for the load balancers' addresses (a host
/// name and an IP) and makes the ConfigMap of `SKYHAUL_GATEWAYS` from them. The gateways' file
/// does its own cluster's part and the same ConfigMap, keeping a relay key already set.
#[test]
fn the_comments_commands_set_up_both_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    std::fs::write(tls.join("ca.pem"), "a CA, public\n").unwrap();
    let job = across_clusters("skyhaul", tls.to_str().unwrap());
    let expected_gateways = "gw0-123.elb.eu-west-1.amazonaws.com:7400,203.0.113.7:7400";

    let run = dir.path().join("fleet");
    std::fs::create_dir(&run).unwrap();
    load_balancers(&run);
    let calls = run_comment(&job.render(Backend::Kubernetes), &run, &[]);
    let said: Vec<String> = calls
        .iter()
        .map(|c| {
            c.args
                .iter()
                .take_while(|a| !a.starts_with("--from") && !a.starts_with("--cert"))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let ctx = format!("--context {CONTEXT}");
    let get = |i: u32| {
        format!(
            "{ctx} get service skyhaul-fleet-gw-{i} -o jsonpath={{.status.loadBalancer.ingress[0].ip}} {{.status.loadBalancer.ingress[0].hostname}}"
        )
    };
    assert_eq!(
        said,
        [
            format!("{ctx} create secret generic gw-credentials"),
            format!("{ctx} create secret tls skyhaul-fleet-gw-tls"),
            format!("{ctx} apply -f skyhaul-fleet.gateways.yaml"),
            "create secret generic skyhaul-credentials".to_string(),
            "create configmap skyhaul-fleet-relay-ca".to_string(),
            "apply -f THIS_FILE".to_string(),
            get(0),
            get(1),
            "sleep 10".to_string(),
            get(1),
            "create configmap skyhaul-fleet-gateways".to_string(),
        ]
    );
    // One key, in both clusters' Secrets.
    let key = data(&calls[0], "SKYHAUL_RELAY_KEY");
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert_eq!(data(&calls[3], "SKYHAUL_RELAY_KEY"), key);
    assert_eq!(data(&calls[3], "SKYHAUL_FLEET_TOKEN").len(), 64);
    assert!(calls[0].created.as_ref().unwrap()["data"]
        .get("SKYHAUL_FLEET_TOKEN")
        .is_none());
    assert_eq!(
        calls[1].args[6..],
        [
            format!("--cert={}", tls.join("gw.pem").display()),
            format!("--key={}", tls.join("gw-key.pem").display())
        ]
    );
    assert_eq!(data(&calls[4], "ca.crt"), "a CA, public\n");
    assert_eq!(data(&calls[10], "SKYHAUL_GATEWAYS"), expected_gateways);

    // The gateways' file: its cluster's part, then the same ConfigMap.
    let run = dir.path().join("gateways");
    std::fs::create_dir(&run).unwrap();
    load_balancers(&run);
    let given = "8d6a1bde0481b3bba13c868bf8569f3a5c2bb711bc92133fca8736410c0f26e8";
    let calls = run_comment(
        &job.render_gateway(Backend::Kubernetes).unwrap(),
        &run,
        &[("SKYHAUL_RELAY_KEY", given)],
    );
    let first: Vec<String> = calls
        .iter()
        .map(|c| c.args.iter().take(4).cloned().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        first,
        [
            format!("{ctx} create secret"),
            format!("{ctx} create secret"),
            format!("{ctx} apply -f"),
            format!("{ctx} get service"),
            format!("{ctx} get service"),
            "sleep 10".to_string(),
            format!("{ctx} get service"),
            "create configmap skyhaul-fleet-gateways --from-literal=SKYHAUL_GATEWAYS=gw0-123.elb.eu-west-1.amazonaws.com:7400,203.0.113.7:7400".to_string(),
        ]
    );
    assert_eq!(calls[2].args[4], "THIS_FILE");
    assert_eq!(data(&calls[0], "SKYHAUL_RELAY_KEY"), given);
    assert_eq!(data(&calls[7], "SKYHAUL_GATEWAYS"), expected_gateways);
}
