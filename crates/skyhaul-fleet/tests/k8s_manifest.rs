//! The generated Kubernetes manifest against the Kubernetes API's own types (k8s-openapi):
//! every document parses into its typed object and serialises back to exactly what was
//! written — so no field is misspelt, misplaced or of the wrong type (the typed structs
//! drop what they do not know, which the comparison catches) — and the fields that make the
//! fleet work are checked on the typed objects. Then the pod's command runs for ranks 0 and
//! 1 as a shell would in the pod.

use k8s_openapi::api::batch::v1::Job as K8sJob;
use k8s_openapi::api::core::v1::Service;
use serde::Deserialize;
use skyhaul_fleet::launch::{Backend, Job};

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
        hosts: Vec::new(),
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
