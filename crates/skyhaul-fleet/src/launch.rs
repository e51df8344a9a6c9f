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
//! batch script submits, a second SkyPilot task, a StatefulSet behind a headless Service, or
//! more SSH hosts. The gateways
//! get the relay key and the destination's credentials; the fleet the key and the source's.

use std::fmt::Write;

/// The secrets a SkyPilot task declares (given at launch): the fleet token and S3 keys.
pub const SECRET_ENV: [&str; 7] = [
    "SKYHAUL_FLEET_TOKEN",
    "SKYHAUL_SRC_ACCESS_KEY_ID",
    "SKYHAUL_SRC_SECRET_ACCESS_KEY",
    "SKYHAUL_SRC_SESSION_TOKEN",
    "SKYHAUL_DST_ACCESS_KEY_ID",
    "SKYHAUL_DST_SECRET_ACCESS_KEY",
    "SKYHAUL_DST_SESSION_TOKEN",
];

/// The relay's transfer key (`skyhaul_relay::key::KEY_ENV`): the coordinator of a transfer
/// with `--relay` needs it, and hands it to the workers itself.
pub const RELAY_KEY_ENV: &str = "SKYHAUL_RELAY_KEY";

/// More credentials the SSH runner passes on when set, besides [`SECRET_ENV`] (names
/// only, never values): AWS's own variables, the GCS/Azure ones and the relay's key.
pub const CREDENTIAL_ENV: [&str; 13] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "SKYHAUL_SRC_AZURE_ACCOUNT",
    "SKYHAUL_SRC_AZURE_KEY",
    "SKYHAUL_SRC_AZURE_SAS",
    "SKYHAUL_DST_AZURE_ACCOUNT",
    "SKYHAUL_DST_AZURE_KEY",
    "SKYHAUL_DST_AZURE_SAS",
    "SKYHAUL_SRC_GCS_SERVICE_ACCOUNT",
    "SKYHAUL_DST_GCS_SERVICE_ACCOUNT",
    RELAY_KEY_ENV,
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

/// The variable the coordinator's `--relay` is read from in a job with gateways: the
/// gateways' `HOST:PORT`s, comma-separated, as the engine placed them.
pub const GATEWAYS_ENV: &str = "SKYHAUL_GATEWAYS";

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
    /// SSH: the hosts, rank 0 first.
    pub hosts: Vec<String>,
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
    /// gateway pod by its DNS name.
    pub node_selector: Vec<(String, String)>,
    pub secret: String,
    /// SSH: the hosts.
    pub hosts: Vec<String>,
}

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
    /// The secrets a SkyPilot task declares: [`SECRET_ENV`], and the relay's key when the
    /// transfer goes through gateways.
    pub fn secrets(&self) -> Vec<&'static str> {
        let relays = self
            .transfer
            .iter()
            .any(|a| a == "--relay" || a.starts_with("--relay="));
        let mut v = SECRET_ENV.to_vec();
        if self.gateways.is_some() {
            // The destination's credentials go to the gateways only.
            v.retain(|s| !DST_CREDENTIAL_ENV.contains(s));
        }
        if relays || self.gateways.is_some() {
            v.push(RELAY_KEY_ENV);
        }
        v
    }

    /// The secrets the gateways' SkyPilot task declares: the relay key and the destination's
    /// S3 keys.
    pub fn gateway_secrets(&self) -> Vec<&'static str> {
        let mut v = vec![RELAY_KEY_ENV];
        v.extend(SECRET_ENV.iter().filter(|s| DST_CREDENTIAL_ENV.contains(s)));
        v
    }

    /// The SkyPilot cluster of gateway `i`: one single-node cluster each, since SkyPilot
    /// gives out only a cluster's head IP (`sky status --ip`).
    pub fn gateway_cluster(&self, i: u32) -> String {
        format!("{}-gw-{i}", self.name)
    }

    /// The shell lines that run one gateway (the script's last command, `exec`ed unless
    /// `exec` is false), without the fleet's token or the source's credentials.
    fn gateway_script(&self, g: &Gateways, exec: bool) -> String {
        let mut words = vec![
            sh(&self.skyhaul),
            "gateway".into(),
            "--listen".into(),
            format!("0.0.0.0:{}", g.port),
        ];
        words.extend(g.args.iter().map(|w| sh(w)));
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
    fn rank_script(&self, rank_var: &str, head_var: &str) -> String {
        let skyhaul = sh(&self.skyhaul);
        let mut s = String::from(
            ": \"${SKYHAUL_FLEET_TOKEN:?set SKYHAUL_FLEET_TOKEN (16+ characters) where the job is submitted}\"\n",
        );
        let mut relay = String::new();
        if self.gateways.is_some() {
            let _ = writeln!(s, "unset {}", DST_CREDENTIAL_ENV.join(" "));
            let _ = writeln!(
                s,
                ": \"${{{GATEWAYS_ENV}:?set {GATEWAYS_ENV} to the relay gateways as HOST:PORT,...}}\""
            );
            relay = format!(" --relay \"${GATEWAYS_ENV}\"");
        }
        let _ = writeln!(s, "if [ \"${rank_var}\" = 0 ]; then");
        if self.gateways.is_some() {
            s.push_str(&indent(WAIT_FOR_GATEWAYS, "  "));
        }
        let _ = write!(
            s,
            "  exec {skyhaul} coordinator --listen 0.0.0.0:{port} {args}{relay}\n\
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
    /// SkyPilot task of one gateway (launched once per gateway, in the destination's region).
    /// The other engines start them from the fleet's file.
    pub fn render_gateway(&self, backend: Backend) -> Option<String> {
        match (backend, &self.gateways) {
            (Backend::Skypilot, Some(g)) => Some(self.skypilot_gateway(g)),
            _ => None,
        }
    }

    /// A batch script: one srun step of `nodes` tasks. sbatch passes the submitting shell's
    /// environment (`--export=ALL`, its default) to every task: that is how the token and
    /// credentials arrive. With gateways, the script first submits them as a job of their own
    /// (in `--gateway-partition`), waits until it runs and relays through its nodes.
    fn slurm(&self) -> String {
        let n = self.nodes;
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(s, "#SBATCH --job-name={}", self.name);
        let _ = writeln!(s, "#SBATCH --ntasks={n}");
        let _ = writeln!(s, "#SBATCH --output={}-%j.out", self.name);
        let _ = writeln!(s, "#SBATCH --export=ALL");
        s.push_str(&preamble("slurm", "sbatch THIS_FILE"));
        if let Some(g) = &self.gateways {
            self.slurm_gateway_job(&mut s, g);
        }
        let _ = writeln!(
            s,
            "# Task 0 runs on the first node of the allocation: the coordinator."
        );
        let _ = writeln!(
            s,
            "export SKYHAUL_HEAD=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)\""
        );
        let _ = writeln!(
            s,
            "srun --ntasks={n} --distribution=block --kill-on-bad-exit=0 bash -c {}",
            sh(&self.rank_script("SLURM_PROCID", "SKYHAUL_HEAD"))
        );
        s
    }

    /// The lines of a SLURM batch script that submit the relay gateways' job, wait until it
    /// runs, and export their addresses for the coordinator.
    fn slurm_gateway_job(&self, s: &mut String, g: &Gateways) {
        s.push_str(&relay_key_check());
        let _ = writeln!(
            *s,
            "# The relay gateways are a job of their own, one per node (a heterogeneous job would\n\
             # keep them on other nodes than the fleet's, which a small cluster may not have). It\n\
             # inherits this job's environment, drops what it does not need, and is cancelled\n\
             # when the transfer ends."
        );
        let mut options = format!(
            "--parsable --job-name={}-gw --nodes={} --ntasks-per-node=1 --output={}-gw-%j.out --export=ALL",
            self.name, g.count, self.name
        );
        if let Some(p) = &g.partition {
            let _ = write!(options, " --partition={}", sh(p));
        }
        let _ = writeln!(
            *s,
            "GATEWAY_JOB=\"$(sbatch {options} <<'SKYHAUL_GATEWAY_JOB'\n#!/bin/bash\nsrun bash -c {}\nSKYHAUL_GATEWAY_JOB\n)\"",
            sh(&self.gateway_script(g, true))
        );
        let _ = writeln!(*s, "GATEWAY_JOB=\"${{GATEWAY_JOB%%;*}}\"");
        let _ = writeln!(
            *s,
            "trap 'scancel \"$GATEWAY_JOB\" 2>/dev/null || true' EXIT"
        );
        let _ = writeln!(
            *s,
            "until [ \"$(squeue -h -j \"$GATEWAY_JOB\" -o %T 2>/dev/null)\" = RUNNING ]; do\n  \
             case \"$(squeue -h -j \"$GATEWAY_JOB\" -o %T 2>/dev/null)\" in\n    \
             PENDING|CONFIGURING) sleep 2 ;;\n    \
             *) echo \"skyhaul: the relay gateways' job $GATEWAY_JOB ended before it ran (see {}-gw-$GATEWAY_JOB.out)\" >&2; exit 1 ;;\n  \
             esac\n\
             done",
            self.name
        );
        let _ = writeln!(
            *s,
            "export {GATEWAYS_ENV}=\"$(scontrol show hostnames \"$(squeue -h -j \"$GATEWAY_JOB\" -o %N)\" | sed 's/$/:{}/' | paste -sd, -)\"",
            g.port
        );
    }

    /// A SkyPilot task: `num_nodes` nodes, rank and head from SKYPILOT_NODE_RANK and
    /// SKYPILOT_NODE_IPS. Secrets are declared without values and given at launch time
    /// (`sky launch --secret SKYHAUL_FLEET_TOKEN …` takes them from the local environment).
    /// With gateways, their addresses are an env without a value, which SkyPilot refuses to
    /// launch without: `--env SKYHAUL_GATEWAYS=…` from `sky status --ip` of their clusters.
    fn skypilot(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Generated by `skyhaul launch --backend skypilot`. Launch with the secrets"
        );
        let _ = writeln!(s, "# taken from your environment (none is in this file):");
        let mut launch = format!("#   sky launch -c {} THIS_FILE", self.name);
        if let Some(g) = &self.gateways {
            let _ = writeln!(
                s,
                "# first the relay gateways in the destination's region (`--submit` does all this),"
            );
            let ips: Vec<String> = (0..g.count)
                .map(|i| {
                    let c = self.gateway_cluster(i);
                    let mut l =
                        format!("#   sky launch -y -d -c {c} {}.gateway.sky.yaml", self.name);
                    for v in self.gateway_secrets() {
                        let _ = write!(l, " --secret {v}");
                    }
                    let _ = writeln!(s, "{l}");
                    format!("$(sky status --ip {c}):{}", g.port)
                })
                .collect();
            let _ = writeln!(s, "# then the fleet with their addresses:");
            let _ = write!(launch, " --env {GATEWAYS_ENV}={}", ips.join(","));
        }
        for v in self.secrets() {
            let _ = write!(launch, " --secret {v}");
        }
        let _ = writeln!(s, "{launch}");
        let _ = writeln!(s, "name: {}", yaml(&self.name));
        let _ = writeln!(s, "num_nodes: {}", self.nodes);
        let _ = writeln!(s, "resources:");
        if let Some(cpus) = &self.cpus {
            let _ = writeln!(s, "  cpus: {}", yaml(cpus));
        }
        let _ = writeln!(s, "  use_spot: {}", self.spot);
        let _ = writeln!(s, "  ports: {}", self.port);
        let _ = writeln!(s, "envs:");
        let _ = writeln!(s, "  SKYHAUL_PORT: {}", yaml(&self.port.to_string()));
        if self.gateways.is_some() {
            let _ = writeln!(s, "  {GATEWAYS_ENV}: null");
        }
        let _ = writeln!(s, "secrets:");
        for v in self.secrets() {
            let _ = writeln!(s, "  {v}: null");
        }
        self.skypilot_setup(&mut s);
        let _ = writeln!(s, "run: |");
        let _ = writeln!(
            s,
            "  export SKYHAUL_HEAD=\"$(echo \"$SKYPILOT_NODE_IPS\" | head -n1)\""
        );
        s.push_str(&indent(
            &self.rank_script("SKYPILOT_NODE_RANK", "SKYHAUL_HEAD"),
            "  ",
        ));
        s
    }

    fn skypilot_setup(&self, s: &mut String) {
        let _ = writeln!(s, "setup: |");
        let _ = writeln!(
            s,
            "  command -v {} >/dev/null || {{ echo 'skyhaul is not installed on this image' >&2; exit 1; }}",
            sh(&self.skyhaul)
        );
    }

    /// The SkyPilot task of one relay gateway: one node in the destination's region, its port
    /// open, the relay key and the destination's keys as secrets given at launch.
    fn skypilot_gateway(&self, g: &Gateways) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Generated by `skyhaul launch --backend skypilot --gateways {}`: one relay gateway near",
            g.count
        );
        let _ = writeln!(
            s,
            "# the destination. One cluster per gateway, secrets from your environment (none is here):"
        );
        let mut launch = format!("#   sky launch -y -d -c {}-gw-N THIS_FILE", self.name);
        for v in self.gateway_secrets() {
            let _ = write!(launch, " --secret {v}");
        }
        let _ = writeln!(s, "{launch}");
        let _ = writeln!(
            s,
            "# They run until stopped: `sky down {}-gw-N` once the transfer is over.",
            self.name
        );
        let _ = writeln!(s, "name: {}", yaml(&format!("{}-gw", self.name)));
        let _ = writeln!(s, "num_nodes: 1");
        let _ = writeln!(s, "resources:");
        if let Some(cloud) = &g.cloud {
            let _ = writeln!(s, "  cloud: {}", yaml(cloud));
        }
        if let Some(region) = &g.region {
            let _ = writeln!(s, "  region: {}", yaml(region));
        }
        let _ = writeln!(s, "  ports: {}", g.port);
        let _ = writeln!(s, "secrets:");
        for v in self.gateway_secrets() {
            let _ = writeln!(s, "  {v}: null");
        }
        self.skypilot_setup(&mut s);
        let _ = writeln!(s, "run: |");
        s.push_str(&indent(&self.gateway_script(g, true), "  "));
        s
    }

    /// A headless Service and an Indexed Job: pod `NAME-0` (reachable as `NAME-0.NAME`)
    /// coordinates. Token and credentials come from a Secret, as environment variables.
    /// With gateways, a StatefulSet `NAME-gw` behind its own headless Service (pod `i` is
    /// `NAME-gw-i.NAME-gw`: each gateway is addressed by itself, as the relay needs — the
    /// frames of one request must reach one gateway), placed by a node selector, with its own
    /// Secret; the fleet takes only the relay key from that Secret.
    fn kubernetes(&self) -> String {
        let name = &self.name;
        let n = self.nodes;
        let script = self.rank_script("JOB_COMPLETION_INDEX", "SKYHAUL_HEAD");
        let mut env = format!(
            "            - name: SKYHAUL_HEAD\n              value: {}\n",
            yaml(&format!("{name}-0.{name}"))
        );
        // The wait for the gateways uses bash's /dev/tcp.
        let mut shell = "sh";
        let mut head = format!(
            "# Generated by `skyhaul launch --backend kubernetes`. Create the Secret first (nothing\n\
             # secret is in this file), then apply:\n\
             #   kubectl create secret generic {secret} --from-literal=SKYHAUL_FLEET_TOKEN=$(openssl rand -hex 32) \\\n\
             #     --from-literal=SKYHAUL_SRC_ACCESS_KEY_ID=... --from-literal=SKYHAUL_SRC_SECRET_ACCESS_KEY=...",
            secret = self.secret,
        );
        if let Some(g) = &self.gateways {
            shell = "bash";
            let gw = format!("{name}-gw");
            let addrs: Vec<String> = (0..g.count)
                .map(|i| format!("{gw}-{i}.{gw}:{}", g.port))
                .collect();
            let _ = write!(
                env,
                "            - name: {GATEWAYS_ENV}\n              value: {}\n\
                 \x20           - name: {RELAY_KEY_ENV}\n              valueFrom:\n                secretKeyRef:\n                  name: {}\n                  key: {RELAY_KEY_ENV}\n",
                yaml(&addrs.join(",")),
                yaml(&g.secret),
            );
            let _ = write!(
                head,
                "\n#   kubectl create secret generic {} --from-literal={RELAY_KEY_ENV}=$(openssl rand -hex 32) \\\n\
                 #     --from-literal=SKYHAUL_DST_ACCESS_KEY_ID=... --from-literal=SKYHAUL_DST_SECRET_ACCESS_KEY=...\n\
                 #   kubectl apply -f THIS_FILE\n\
                 # The gateways keep running after the Job: `kubectl delete statefulset,service {gw}`.",
                g.secret
            );
        } else {
            head.push_str(" (and DST)\n#   kubectl apply -f THIS_FILE");
        }
        let mut text = format!(
            "{head}\n\
             apiVersion: v1\n\
             kind: Service\n\
             metadata:\n  name: {qname}\n\
             spec:\n  clusterIP: None\n  publishNotReadyAddresses: true\n  selector:\n    job-name: {qname}\n  ports:\n    - name: coordinator\n      port: {port}\n\
             ---\n\
             apiVersion: batch/v1\n\
             kind: Job\n\
             metadata:\n  name: {qname}\n\
             spec:\n  completionMode: Indexed\n  completions: {n}\n  parallelism: {n}\n  backoffLimitPerIndex: 2\n  template:\n    metadata:\n      labels:\n        job-name: {qname}\n    spec:\n      subdomain: {qname}\n      restartPolicy: Never\n      containers:\n        - name: skyhaul\n          image: {image}\n          env:\n{env}          envFrom:\n            - secretRef:\n                name: {qsecret}\n          ports:\n            - containerPort: {port}\n          command: [\"{shell}\", \"-c\", {script}]\n",
            qsecret = yaml(&self.secret),
            qname = yaml(name),
            port = self.port,
            image = yaml(&self.image),
            script = yaml(&script),
        );
        if let Some(g) = &self.gateways {
            text.push_str(&self.kubernetes_gateways(g));
        }
        text
    }

    fn kubernetes_gateways(&self, g: &Gateways) -> String {
        let gw = yaml(&format!("{}-gw", self.name));
        let mut selector = String::new();
        if !g.node_selector.is_empty() {
            selector.push_str("      nodeSelector:\n");
            for (k, v) in &g.node_selector {
                let _ = writeln!(selector, "        {}: {}", yaml(k), yaml(v));
            }
        }
        format!(
            "---\n\
             apiVersion: v1\n\
             kind: Service\n\
             metadata:\n  name: {gw}\n\
             spec:\n  clusterIP: None\n  selector:\n    app: {gw}\n  ports:\n    - name: relay\n      port: {port}\n\
             ---\n\
             apiVersion: apps/v1\n\
             kind: StatefulSet\n\
             metadata:\n  name: {gw}\n\
             spec:\n  serviceName: {gw}\n  replicas: {count}\n  podManagementPolicy: Parallel\n  selector:\n    matchLabels:\n      app: {gw}\n  template:\n    metadata:\n      labels:\n        app: {gw}\n    spec:\n{selector}      containers:\n        - name: gateway\n          image: {image}\n          envFrom:\n            - secretRef:\n                name: {secret}\n          ports:\n            - containerPort: {port}\n          readinessProbe:\n            tcpSocket:\n              port: {port}\n          command: [\"sh\", \"-c\", {script}]\n",
            port = g.port,
            count = g.count,
            image = yaml(&self.image),
            secret = yaml(&g.secret),
            script = yaml(&self.gateway_script(g, true)),
        )
    }

    /// A bash runner for a host list: the coordinator on the first host, a worker on every
    /// other. The token and credentials are read from the running shell's environment and
    /// sent over each SSH connection's stdin, so they are neither in this file nor on any
    /// command line. With gateways, each gateway host gets the relay key and the
    /// destination's credentials the same way (and the fleet's hosts not those), and its
    /// gateway runs while that connection's stdin stays open: until the transfer is over.
    fn ssh(&self) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let hosts: Vec<String> = self.hosts.iter().map(|h| sh(h)).collect();
        s.push_str(&preamble("ssh", "bash THIS_FILE"));
        let _ = writeln!(s, "HOSTS=({})", hosts.join(" "));
        let _ = writeln!(
            s,
            "export SKYHAUL_HEAD=\"${{SKYHAUL_HEAD_ADDR:-${{HOSTS[0]#*@}}}}\""
        );
        let all: Vec<&str> = SECRET_ENV
            .iter()
            .chain(CREDENTIAL_ENV.iter())
            .copied()
            .collect();
        let fleet_vars: Vec<&str> = match &self.gateways {
            Some(_) => all
                .iter()
                .filter(|v| !DST_CREDENTIAL_ENV.contains(v))
                .copied()
                .chain(["SKYHAUL_HEAD", GATEWAYS_ENV])
                .collect(),
            None => all.iter().copied().chain(["SKYHAUL_HEAD"]).collect(),
        };
        let _ = writeln!(
            s,
            "# Prints `export NAME=VALUE` for each variable named that is set."
        );
        let _ = writeln!(s, "exports() {{");
        let _ = writeln!(s, "  for v in \"$@\"; do");
        let _ = writeln!(
            s,
            "    if [ -n \"${{!v:-}}\" ]; then printf 'export %s=%q\\n' \"$v\" \"${{!v}}\"; fi"
        );
        let _ = writeln!(s, "  done");
        let _ = writeln!(s, "}}");
        let _ = writeln!(s, "FLEET_VARS=({})", fleet_vars.join(" "));
        let _ = writeln!(s, "pids=()");
        if let Some(g) = &self.gateways {
            let gw_vars: Vec<&str> = all
                .iter()
                .filter(|v| !GATEWAY_DROPS.contains(v))
                .copied()
                .collect();
            let gw_hosts: Vec<String> = g.hosts.iter().map(|h| sh(h)).collect();
            s.push_str(&relay_key_check());
            let _ = writeln!(s, "GATEWAY_HOSTS=({})", gw_hosts.join(" "));
            let _ = writeln!(s, "GATEWAY_VARS=({})", gw_vars.join(" "));
            let _ = writeln!(
                s,
                "if [ -z \"${{{GATEWAYS_ENV}:-}}\" ]; then\n  \
                 for h in \"${{GATEWAY_HOSTS[@]}}\"; do {GATEWAYS_ENV}+=\"${{h#*@}}:{port},\"; done\n  \
                 {GATEWAYS_ENV}=\"${{{GATEWAYS_ENV}%,}}\"\n\
                 fi\n\
                 export {GATEWAYS_ENV}",
                port = g.port
            );
            // Runs until this SSH session's input closes, which the runner does at the end.
            let script = format!(
                "{} &\ngw=$!\nread -r _ || true\nkill \"$gw\" 2>/dev/null || true\nwait \"$gw\" || true\n",
                self.gateway_script(g, false).trim_end()
            );
            let _ = writeln!(s, "GATEWAY_SCRIPT={}", sh(&script));
            let _ = writeln!(s, "STATE=\"$(mktemp -d)\"");
            let _ = writeln!(s, "trap 'rm -rf \"$STATE\"' EXIT");
            let _ = writeln!(s, "gateway_pids=()");
            let _ = writeln!(s, "for h in \"${{GATEWAY_HOSTS[@]}}\"; do");
            let _ = writeln!(
                s,
                "  {{ exports \"${{GATEWAY_VARS[@]}}\"; echo \"$GATEWAY_SCRIPT\"; while [ ! -e \"$STATE/done\" ]; do sleep 1; done; }} | ssh -o BatchMode=yes \"$h\" bash -s &"
            );
            let _ = writeln!(s, "  gateway_pids+=($!)");
            let _ = writeln!(s, "done");
        }
        let _ = writeln!(
            s,
            "RANK_SCRIPT={}",
            sh(&self.rank_script("SKYHAUL_RANK", "SKYHAUL_HEAD"))
        );
        let _ = writeln!(s, "for i in \"${{!HOSTS[@]}}\"; do");
        let _ = writeln!(
            s,
            "  {{ exports \"${{FLEET_VARS[@]}}\"; echo \"export SKYHAUL_RANK=$i\"; echo \"$RANK_SCRIPT\"; }} | ssh -o BatchMode=yes \"${{HOSTS[$i]}}\" bash -s &"
        );
        let _ = writeln!(s, "  pids+=($!)");
        let _ = writeln!(s, "done");
        let _ = writeln!(s, "# The coordinator's exit code is the transfer's.");
        let _ = writeln!(s, "status=0; wait \"${{pids[0]}}\" || status=$?");
        let _ = writeln!(
            s,
            "for p in \"${{pids[@]:1}}\"; do wait \"$p\" || true; done"
        );
        if self.gateways.is_some() {
            let _ = writeln!(s, "touch \"$STATE/done\"");
            let _ = writeln!(
                s,
                "for p in \"${{gateway_pids[@]}}\"; do wait \"$p\" || true; done"
            );
        }
        let _ = writeln!(s, "exit $status");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            nodes: 3,
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
            hosts: vec!["h1".into(), "user@h2".into()],
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
