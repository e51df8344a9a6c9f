//! Job files that start a fleet on an existing engine: a SLURM batch script, a SkyPilot
//! task, a Kubernetes Indexed Job with a headless Service, or an SSH runner for a host list.
//!
//! Every job has `nodes` tasks; rank 0 runs the coordinator (with one local worker, so no
//! machine idles) and every other rank a worker pointed at rank 0. Secrets are never
//! written into the file: each engine gets them the way it expects — SLURM and the SSH
//! runner from the submitting shell's environment, SkyPilot through `--env`/`--secret`,
//! Kubernetes from a Secret — and every job refuses to start without the fleet token.
//!
//! With [`Gateways`], the job also starts relay gateways (`skyhaul gateway`) near the
//! destination and the coordinator relays through them: a SLURM job of their own that the
//! batch script submits, a second SkyPilot task, an Indexed Job behind a headless Service
//! (or, in another Kubernetes cluster, behind one load balancer per gateway, in a file of
//! their own), or more SSH hosts. The gateways get the relay key and the destination's
//! credentials; the fleet the key and the source's. Gateways end with the transfer: the
//! coordinator tells them once it has succeeded (`--relay-stop-gateways`, `--exit-on-stop`),
//! and a gateway no sender has used for a while exits by itself (`--idle-exit`), which is
//! what takes a SkyPilot gateway's cluster down (autodown) or completes a Kubernetes
//! gateway's pod.
//!
//! Nothing a job starts outlives it for long: the fleet's own SkyPilot cluster goes down once
//! its job has ended (unless [`Job::keep_cluster`]), and Kubernetes deletes a finished Job
//! after an hour.

use std::fmt::Write;
use std::time::Duration;

mod kubernetes;
mod skypilot;
mod slurm;
mod ssh;

/// The fleet's token, which every job needs (each refuses to start without it).
pub const TOKEN_ENV: &str = "SKYHAUL_FLEET_TOKEN";

/// The relay's transfer key (`skyhaul_relay::key::KEY_ENV`): the coordinator of a transfer
/// with `--relay` needs it, and hands it to the workers itself.
pub const RELAY_KEY_ENV: &str = "SKYHAUL_RELAY_KEY";

/// Every variable through which a side finds its store and its credentials (the README's
/// credential tables: skyhaul's per side, then AWS's and Azure's own, Entra ID's service
/// principal included), passed on by name
/// when set, never written into a job: the SSH runner sends them over each connection,
/// SkyPilot declares those set where the job is made as secrets. Files are not among them
/// (see [`KEY_FILE_ENV`]).
pub const CREDENTIAL_ENV: [&str; 35] = [
    "SKYHAUL_SRC_ACCESS_KEY_ID",
    "SKYHAUL_SRC_SECRET_ACCESS_KEY",
    "SKYHAUL_SRC_SESSION_TOKEN",
    "SKYHAUL_DST_ACCESS_KEY_ID",
    "SKYHAUL_DST_SECRET_ACCESS_KEY",
    "SKYHAUL_DST_SESSION_TOKEN",
    "SKYHAUL_SRC_ENDPOINT",
    "SKYHAUL_DST_ENDPOINT",
    "SKYHAUL_SRC_PROFILE",
    "SKYHAUL_DST_PROFILE",
    "SKYHAUL_SRC_REGION",
    "SKYHAUL_DST_REGION",
    "SKYHAUL_SRC_AZURE_ACCOUNT",
    "SKYHAUL_SRC_AZURE_KEY",
    "SKYHAUL_SRC_AZURE_SAS",
    "SKYHAUL_SRC_AZURE_CONNECTION_STRING",
    "SKYHAUL_DST_AZURE_ACCOUNT",
    "SKYHAUL_DST_AZURE_KEY",
    "SKYHAUL_DST_AZURE_SAS",
    "SKYHAUL_DST_AZURE_CONNECTION_STRING",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
];

/// Variables that name a GCS service-account key *file*: a path on the machine that
/// launches, which a variable cannot carry to another. The SSH runner passes skyhaul's own
/// on (the hosts may share the path); SkyPilot and Kubernetes nodes have no such file.
pub const KEY_FILE_ENV: [&str; 3] = [
    "SKYHAUL_SRC_GCS_SERVICE_ACCOUNT",
    "SKYHAUL_DST_GCS_SERVICE_ACCOUNT",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// The destination's credentials: with gateways they are the gateways' alone, and the
/// fleet's nodes drop them if the environment carries them (SLURM, SSH).
pub const DST_CREDENTIAL_ENV: [&str; 7] = [
    "SKYHAUL_DST_ACCESS_KEY_ID",
    "SKYHAUL_DST_SECRET_ACCESS_KEY",
    "SKYHAUL_DST_SESSION_TOKEN",
    "SKYHAUL_DST_AZURE_KEY",
    "SKYHAUL_DST_AZURE_SAS",
    "SKYHAUL_DST_AZURE_CONNECTION_STRING",
    "SKYHAUL_DST_GCS_SERVICE_ACCOUNT",
];

/// What a gateway does not need: the fleet's token and the source's credentials.
const GATEWAY_DROPS: [&str; 8] = [
    "SKYHAUL_FLEET_TOKEN",
    "SKYHAUL_SRC_ACCESS_KEY_ID",
    "SKYHAUL_SRC_SECRET_ACCESS_KEY",
    "SKYHAUL_SRC_SESSION_TOKEN",
    "SKYHAUL_SRC_AZURE_KEY",
    "SKYHAUL_SRC_AZURE_SAS",
    "SKYHAUL_SRC_AZURE_CONNECTION_STRING",
    "SKYHAUL_SRC_GCS_SERVICE_ACCOUNT",
];

/// Whether the fleet's machines get variable `v` (of those passed on by name): with
/// gateways, the destination's settings and credentials are the gateways' alone.
fn for_fleet(v: &str, gateways: bool) -> bool {
    !(gateways && v.starts_with("SKYHAUL_DST_"))
}

/// Whether the gateways get variable `v`: not the fleet's token, nor the source's.
fn for_gateways(v: &str) -> bool {
    v != TOKEN_ENV && !v.starts_with("SKYHAUL_SRC_")
}

/// The variable the coordinator's `--relay` is read from in a job with gateways: the
/// gateways' `HOST:PORT`s, comma-separated, as the engine placed them.
pub const GATEWAYS_ENV: &str = "SKYHAUL_GATEWAYS";

/// The `kubectl get service -o jsonpath=…` template that prints a load balancer's address:
/// its IP and its host name, separated by a space, as clouds give one or the other (AWS a
/// host name, GCP and Azure an IP). The first word is the address; none yet, nothing.
pub const K8S_LOAD_BALANCER_ADDRESS: &str =
    "{.status.loadBalancer.ingress[0].ip} {.status.loadBalancer.ingress[0].hostname}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Slurm,
    Skypilot,
    Kubernetes,
    Ssh,
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct Job {
    /// Tasks (machines, pods, SLURM tasks); at least 1.
    pub nodes: u32,
    /// SLURM: tasks per node (1: each task a machine of its own).
    pub tasks_per_node: u32,
    /// The port the coordinator listens on.
    pub port: u16,
    /// A name for the job, its Service and files (letters, digits, `-`).
    pub name: String,
    /// The transfer as `skyhaul coordinator` takes it: `cp -r SRC DST [flags]` or `sync …`.
    pub transfer: Vec<String>,
    /// The skyhaul binary on the nodes.
    pub skyhaul: String,
    /// Kubernetes: the container image with skyhaul in it.
    pub image: String,
    /// Kubernetes: the Secret with the token and credentials (as environment variables).
    pub secret: String,
    /// SkyPilot: spot instances.
    pub spot: bool,
    /// SkyPilot: CPUs per node (e.g. `8+`).
    pub cpus: Option<String>,
    /// SkyPilot: leave the fleet's cluster up once its job has ended (by default it goes down
    /// by itself then, as the gateways' clusters do).
    pub keep_cluster: bool,
    /// SSH: the hosts, rank 0 first.
    pub hosts: Vec<String>,
    /// SkyPilot: the variables of [`CREDENTIAL_ENV`] set where the job is made, declared as
    /// secrets. SkyPilot refuses to launch a task with a declared secret it has no value
    /// for, so a variable not set is not declared.
    pub credentials: Vec<&'static str>,
    /// Relay gateways to start with the fleet, near the destination.
    pub gateways: Option<Gateways>,
}

/// Relay gateways started with a fleet: `skyhaul gateway` on machines near the destination,
/// with the relay key and the destination's credentials.
#[derive(Debug, Clone, Default)]
pub struct Gateways {
    /// How many (SSH: one per host of `hosts`).
    pub count: u32,
    /// The port each listens on.
    pub port: u16,
    /// `skyhaul gateway`'s words after `--listen ADDR`: the destination bucket and the flags
    /// that say where it is (endpoint, region, profile).
    pub args: Vec<String>,
    /// SkyPilot: the destination's cloud (optional) and region.
    pub cloud: Option<String>,
    pub region: Option<String>,
    /// SLURM: the partition whose nodes are near the destination (default: the cluster's
    /// default partition).
    pub partition: Option<String>,
    /// Kubernetes: a node selector placing the pods (e.g.
    /// `topology.kubernetes.io/region=eu-west-1`), and the Secret with the relay key and the
    /// destination's credentials. They run in the fleet's namespace, whose pods reach each
    /// gateway pod by its DNS name, unless [`Gateways::kube_context`] puts them elsewhere.
    pub node_selector: Vec<(String, String)>,
    pub secret: String,
    /// Kubernetes: the kubectl context of another cluster (the destination's) for the
    /// gateways. A pod's DNS name does not resolve outside its cluster, so there each gateway
    /// is behind a LoadBalancer Service of its own, in a file of their own; the fleet takes
    /// their addresses, which exist only once the load balancers do, from a ConfigMap.
    pub kube_context: Option<String>,
    /// Kubernetes in another cluster: the CIDRs the load balancers accept connections from
    /// (`loadBalancerSourceRanges`); empty for any address.
    pub source_ranges: Vec<String>,
    /// SSH: the hosts.
    pub hosts: Vec<String>,
    /// A gateway no sender has used for this long exits (`skyhaul gateway --idle-exit`):
    /// the end of gateways whose coordinator died before it could tell them.
    pub idle_exit: Option<Duration>,
    /// TLS on the relay connections.
    pub tls: Option<GatewayTls>,
}

/// TLS for launched gateways: files on the machine that runs `skyhaul launch` (absolute
/// paths). Each engine ships them its own way, the key never inside a generated file.
#[derive(Debug, Clone, Default)]
pub struct GatewayTls {
    /// The gateways' certificate chain (PEM): it must name each gateway as the fleet dials
    /// it (SLURM: the node's host name; Kubernetes: `NAME-gw-I.NAME-gw`; SSH: the host as
    /// given), or carry [`GatewayTls::name`] (SkyPilot, and Kubernetes across clusters).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
    /// A CA (PEM) the fleet trusts for the gateways besides the system's roots; the
    /// coordinator hands it to its workers.
    pub ca: Option<String>,
    /// The name the certificate carries, checked instead of each gateway's address (which
    /// SkyPilot and a cloud's load balancers give out only once they run).
    pub name: Option<String>,
}

/// Where an engine's machines find the TLS files, as shell words.
struct TlsPaths {
    cert: String,
    key: String,
    ca: String,
}

impl Backend {
    /// SLURM reads the files where they are (a file system its nodes share); SkyPilot copies
    /// them with `file_mounts` to [`SKY_TLS_DIR`]; Kubernetes mounts a Secret and a
    /// ConfigMap; the SSH runner writes them into a private directory over each connection.
    fn tls_paths(self, tls: &GatewayTls) -> TlsPaths {
        let under = |dir: &str| TlsPaths {
            cert: format!("{dir}/{}", TLS_FILES[0]),
            key: format!("{dir}/{}", TLS_FILES[1]),
            ca: format!("{dir}/{}", TLS_FILES[2]),
        };
        match self {
            Backend::Slurm => TlsPaths {
                cert: sh(&tls.cert),
                key: sh(&tls.key),
                ca: tls.ca.as_deref().map(sh).unwrap_or_default(),
            },
            Backend::Skypilot => under("\"$HOME/.skyhaul-tls\""),
            Backend::Kubernetes => TlsPaths {
                cert: format!("{K8S_GATEWAY_TLS}/tls.crt"),
                key: format!("{K8S_GATEWAY_TLS}/tls.key"),
                ca: format!("{K8S_RELAY_CA}/ca.crt"),
            },
            Backend::Ssh => under("\"$SKYHAUL_TLS\""),
        }
    }
}

/// Where SkyPilot's `file_mounts` put the TLS files on a node (`~` is the node's home, the
/// run script's `$HOME`).
const SKY_TLS_DIR: &str = "~/.skyhaul-tls";
/// The TLS files' names on a SkyPilot node or an SSH host: certificate, key, CA.
const TLS_FILES: [&str; 3] = ["gateway-cert.pem", "gateway-key.pem", "relay-ca.pem"];
/// Where a Kubernetes gateway pod mounts its `kubernetes.io/tls` Secret.
const K8S_GATEWAY_TLS: &str = "/etc/skyhaul/gateway-tls";
/// Where a Kubernetes fleet pod mounts the ConfigMap with the gateways' CA.
const K8S_RELAY_CA: &str = "/etc/skyhaul/relay-ca";

/// The line that stops a shell launcher where it is run when the relay's key is not set (the
/// gateways and the coordinator both need it).
fn relay_key_check() -> String {
    format!(
        ": \"${{{RELAY_KEY_ENV}:?set {RELAY_KEY_ENV} (64 hex digits: openssl rand -hex 32) first}}\"\n"
    )
}

/// The comment, strict mode and token check at the top of a generated shell script.
fn preamble(backend: &str, run: &str) -> String {
    format!(
        "# Generated by `skyhaul launch --backend {backend}`. Run it with the token and the\n\
         # credentials in the environment (nothing secret is in this file):\n\
         #   export SKYHAUL_FLEET_TOKEN=$(openssl rand -hex 32); {run}\n\
         set -euo pipefail\n\
         : \"${{SKYHAUL_FLEET_TOKEN:?set SKYHAUL_FLEET_TOKEN (16+ characters) first}}\"\n"
    )
}

/// Bash lines (they use `/dev/tcp`) that wait up to 10 minutes for every gateway of
/// `$SKYHAUL_GATEWAYS` to accept connections: the coordinator opens the destination through
/// them first thing, and gateways start with the fleet, on machines that may come up later.
const WAIT_FOR_GATEWAYS: &str = r#"for gw in ${SKYHAUL_GATEWAYS//,/ }; do
  tries=0
  until (exec 3<>"/dev/tcp/${gw%:*}/${gw##*:}") 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 300 ]; then echo "skyhaul: relay gateway $gw did not come up within 10 minutes" >&2; exit 1; fi
    sleep 2
  done
done
"#;

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// Single-quotes a word for a POSIX shell.
fn sh(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", word.replace('\0', "")))
}

/// A YAML scalar: JSON strings are valid YAML double-quoted strings.
fn yaml(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

impl Job {
    /// The secrets a SkyPilot task declares: the token, the credentials of
    /// [`Job::credentials`], and the relay's key when the transfer goes through gateways.
    pub fn secrets(&self) -> Vec<&'static str> {
        let relays = self
            .transfer
            .iter()
            .any(|a| a == "--relay" || a.starts_with("--relay="));
        let mut v = vec![TOKEN_ENV];
        let gateways = self.gateways.is_some();
        v.extend(self.credentials.iter().filter(|s| for_fleet(s, gateways)));
        if relays || self.gateways.is_some() {
            v.push(RELAY_KEY_ENV);
        }
        v
    }

    /// The secrets the gateways' SkyPilot task declares: the relay key and the credentials
    /// of [`Job::credentials`] but the source's.
    pub fn gateway_secrets(&self) -> Vec<&'static str> {
        let mut v = vec![RELAY_KEY_ENV];
        v.extend(self.credentials.iter().filter(|s| for_gateways(s)));
        v
    }

    /// What gateway `i` runs in, or behind, by itself: its SkyPilot cluster (one single-node
    /// cluster each, since SkyPilot gives out only a cluster's head IP, `sky status --ip`),
    /// or, in another Kubernetes cluster, its LoadBalancer Service.
    pub fn gateway_name(&self, i: u32) -> String {
        format!("{}-gw-{i}", self.name)
    }

    /// Kubernetes, gateways in another cluster: the ConfigMap the fleet's pods take
    /// `SKYHAUL_GATEWAYS` from, made once the load balancers have addresses.
    pub fn gateways_config_map(&self) -> String {
        format!("{}-gateways", self.name)
    }

    /// The shell lines that run one gateway (the script's last command, `exec`ed unless
    /// `exec` is false), without the fleet's token or the source's credentials. It exits
    /// when the coordinator says the transfer is over, or when no sender comes for a while.
    fn gateway_script(&self, g: &Gateways, exec: bool, backend: Backend) -> String {
        let mut words = vec![
            sh(&self.skyhaul),
            "gateway".into(),
            "--listen".into(),
            format!("0.0.0.0:{}", g.port),
        ];
        words.extend(g.args.iter().map(|w| sh(w)));
        words.push("--exit-on-stop".into());
        if let Some(idle) = g.idle_exit {
            words.push(format!("--idle-exit {}s", idle.as_secs()));
        }
        if let Some(tls) = &g.tls {
            let paths = backend.tls_paths(tls);
            words.push(format!("--tls-cert {} --tls-key {}", paths.cert, paths.key));
        }
        format!(
            ": \"${{{RELAY_KEY_ENV}:?set {RELAY_KEY_ENV} (64 hex digits, as for the coordinator) where the job is submitted}}\"\n\
             unset {drops}\n\
             {exec}{command}\n",
            drops = GATEWAY_DROPS.join(" "),
            exec = if exec { "exec " } else { "" },
            command = words.join(" "),
        )
    }

    /// The transfer command words, with one local worker on the coordinator's node.
    fn coordinator_args(&self) -> String {
        let mut words: Vec<String> = self.transfer.iter().map(|w| sh(w)).collect();
        if !self.transfer.iter().any(|w| w == "--workers") {
            words.push("--workers".into());
            words.push("1".into());
        }
        words.join(" ")
    }

    /// The shell lines that start rank `$rank_var`: the coordinator at rank 0 (listening on
    /// every address), else a worker of `http://$head_var:PORT`.
    fn rank_script(&self, rank_var: &str, head_var: &str, backend: Backend) -> String {
        let skyhaul = sh(&self.skyhaul);
        let mut s = String::from(
            ": \"${SKYHAUL_FLEET_TOKEN:?set SKYHAUL_FLEET_TOKEN (16+ characters) where the job is submitted}\"\n",
        );
        let mut relay = String::new();
        let mut coordinator = String::new();
        if let Some(g) = &self.gateways {
            let _ = writeln!(s, "unset {}", DST_CREDENTIAL_ENV.join(" "));
            let _ = writeln!(
                s,
                ": \"${{{GATEWAYS_ENV}:?set {GATEWAYS_ENV} to the relay gateways as HOST:PORT,...}}\""
            );
            relay = format!(" --relay \"${GATEWAYS_ENV}\"");
            if let Some(tls) = &g.tls {
                match &tls.ca {
                    Some(_) => {
                        let _ = write!(relay, " --relay-tls-ca {}", backend.tls_paths(tls).ca);
                    }
                    None => relay.push_str(" --relay-tls"),
                }
                if let Some(name) = &tls.name {
                    let _ = write!(relay, " --relay-tls-name {}", sh(name));
                }
            }
            coordinator.push_str(" --relay-stop-gateways");
        }
        let _ = writeln!(s, "if [ \"${rank_var}\" = 0 ]; then");
        if self.gateways.is_some() {
            s.push_str(&indent(WAIT_FOR_GATEWAYS, "  "));
        }
        let _ = write!(
            s,
            "  exec {skyhaul} coordinator --listen 0.0.0.0:{port}{coordinator} {args}{relay}\n\
             else\n  \
             exec {skyhaul} worker --coordinator \"http://${head_var}:{port}\" --wait 10m\n\
             fi\n",
            port = self.port,
            args = self.coordinator_args(),
        );
        s
    }

    pub fn render(&self, backend: Backend) -> String {
        match backend {
            Backend::Slurm => self.slurm(),
            Backend::Skypilot => self.skypilot(),
            Backend::Kubernetes => self.kubernetes(),
            Backend::Ssh => self.ssh(),
        }
    }

    /// The gateways' own file, for the engines that launch them apart from the fleet: the
    /// SkyPilot task of one gateway (launched once per gateway, in the destination's region),
    /// or the Kubernetes manifest for another cluster. The other engines start them from the
    /// fleet's file.
    pub fn render_gateway(&self, backend: Backend) -> Option<String> {
        match (backend, &self.gateways) {
            (Backend::Skypilot, Some(g)) => Some(self.skypilot_gateway(g)),
            (Backend::Kubernetes, Some(g)) => {
                let context = g.kube_context.as_deref()?;
                Some(self.kubernetes_gateway_file(g, context))
            }
            _ => None,
        }
    }

    /// The name of the file [`Job::render_gateway`] gives, written beside the fleet's (whose
    /// comments name it).
    pub fn gateway_file(&self, backend: Backend) -> Option<String> {
        match (backend, &self.gateways) {
            (Backend::Skypilot, Some(_)) => Some(format!("{}.gateway.sky.yaml", self.name)),
            (Backend::Kubernetes, Some(g)) if g.kube_context.is_some() => {
                Some(format!("{}.gateways.yaml", self.name))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            nodes: 3,
            tasks_per_node: 1,
            port: 7070,
            name: "skyhaul-x".into(),
            transfer: vec![
                "cp".into(),
                "-r".into(),
                "s3://a/it's".into(),
                "/mnt/b".into(),
            ],
            skyhaul: "skyhaul".into(),
            image: "example/skyhaul:1".into(),
            secret: "skyhaul-credentials".into(),
            spot: true,
            cpus: Some("8+".into()),
            keep_cluster: false,
            hosts: vec!["h1".into(), "user@h2".into()],
            credentials: CREDENTIAL_ENV.to_vec(),
            gateways: None,
        }
    }

    fn with_gateways() -> Job {
        Job {
            gateways: Some(Gateways {
                count: 2,
                port: 7400,
                args: vec!["s3://b".into(), "--dst-region".into(), "eu-west-1".into()],
                hosts: vec!["g1".into(), "user@g2".into()],
                secret: "gw-credentials".into(),
                ..Gateways::default()
            }),
            ..job()
        }
    }

    #[test]
    fn every_backend_needs_the_token_and_starts_the_coordinator() {
        for b in [
            Backend::Slurm,
            Backend::Skypilot,
            Backend::Kubernetes,
            Backend::Ssh,
        ] {
            let text = job().render(b);
            assert!(text.contains("${SKYHAUL_FLEET_TOKEN:?"), "{b:?}");
            assert!(text.contains("coordinator --listen 0.0.0.0:7070"), "{b:?}");
            // The transfer's words survive quoting.
            assert!(text.contains("it"), "{b:?}");
        }
    }

    /// A SLURM fleet of N tasks asks for N nodes, one task each: a task count alone let
    /// SLURM put the whole fleet on one machine's CPUs (and its one network link).
    #[test]
    fn a_slurm_fleet_asks_for_its_nodes() {
        let mut j = job();
        let script = j.render(Backend::Slurm);
        for line in [
            "#SBATCH --nodes=3\n",
            "#SBATCH --ntasks=3\n",
            "#SBATCH --ntasks-per-node=1\n",
        ] {
            assert!(script.contains(line), "{line}: {script}");
        }
        assert!(
            script.contains("srun --ntasks=3 --ntasks-per-node=1 "),
            "{script}"
        );
        j.tasks_per_node = 2;
        let script = j.render(Backend::Slurm);
        assert!(script.contains("#SBATCH --nodes=2\n"), "{script}");
        assert!(
            script.contains("srun --ntasks=3 --ntasks-per-node=2 "),
            "{script}"
        );
    }

    #[test]
    fn the_relay_key_is_passed_on_like_the_other_secrets() {
        let mut j = job();
        assert!(!j.render(Backend::Skypilot).contains(RELAY_KEY_ENV));
        j.transfer.extend(["--relay".into(), "gw1:7400".into()]);
        let task = j.render(Backend::Skypilot);
        assert!(task.contains(&format!("  {RELAY_KEY_ENV}: null")), "{task}");
        assert!(
            task.contains(&format!("--secret {RELAY_KEY_ENV}")),
            "{task}"
        );
        // The SSH runner passes it when set, as it does credentials.
        let runner = j.render(Backend::Ssh);
        assert!(runner.contains(RELAY_KEY_ENV), "{runner}");
    }

    #[test]
    fn local_worker_is_added_once() {
        let mut j = job();
        assert!(j.coordinator_args().ends_with("--workers 1"));
        j.transfer.extend(["--workers".into(), "4".into()]);
        assert!(j.coordinator_args().ends_with("--workers 4"));
    }

    #[test]
    fn gateways_get_the_destination_credentials_and_the_fleet_the_source_ones() {
        let j = with_gateways();
        let fleet = j.secrets();
        assert!(fleet.contains(&RELAY_KEY_ENV) && fleet.contains(&"SKYHAUL_SRC_ACCESS_KEY_ID"));
        assert!(
            !fleet.iter().any(|s| s.starts_with("SKYHAUL_DST_")),
            "{fleet:?}"
        );
        let gw = j.gateway_secrets();
        assert!(gw.contains(&RELAY_KEY_ENV) && gw.contains(&"SKYHAUL_DST_SECRET_ACCESS_KEY"));
        assert!(!gw.iter().any(|s| s.starts_with("SKYHAUL_SRC_")), "{gw:?}");
        assert!(!gw.contains(&"SKYHAUL_FLEET_TOKEN"));
        for b in [
            Backend::Slurm,
            Backend::Skypilot,
            Backend::Kubernetes,
            Backend::Ssh,
        ] {
            let text = j.render(b);
            assert!(
                text.contains("--relay ") && text.contains("$SKYHAUL_GATEWAYS"),
                "{b:?}: {text}"
            );
            let gateway = j.render_gateway(b).unwrap_or_else(|| text.clone());
            assert!(
                gateway.contains("gateway --listen 0.0.0.0:7400 s3://b --dst-region eu-west-1"),
                "{b:?}: {gateway}"
            );
        }
    }

    /// The SSH runner as bash reads it: valid syntax, one gateway per gateway host, and their
    /// addresses (without the user) handed to the coordinator.
    #[test]
    fn ssh_runner_starts_the_gateways() {
        let text = with_gateways().render(Backend::Ssh);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.sh");
        std::fs::write(&path, &text).unwrap();
        let check = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(text.contains("GATEWAY_HOSTS=(g1 user@g2)"), "{text}");
        // The gateway hosts get the destination's credentials, the fleet's hosts do not.
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .to_string()
        };
        let fleet = line("FLEET_VARS=(");
        let gw = line("GATEWAY_VARS=(");
        assert!(
            !fleet.contains("SKYHAUL_DST_SECRET_ACCESS_KEY")
                && fleet.contains("SKYHAUL_SRC_SECRET_ACCESS_KEY"),
            "{fleet}"
        );
        assert!(
            gw.contains("SKYHAUL_DST_SECRET_ACCESS_KEY")
                && !gw.contains("SKYHAUL_SRC_SECRET_ACCESS_KEY"),
            "{gw}"
        );
        assert!(
            !gw.contains("SKYHAUL_FLEET_TOKEN") && gw.contains(RELAY_KEY_ENV),
            "{gw}"
        );
    }
}
