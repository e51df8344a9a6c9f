//! Job files that start a fleet on an existing engine: a SLURM batch script, a SkyPilot
//! task, a Kubernetes Indexed Job with a headless Service, or an SSH runner for a host list.
//!
//! Every job has `nodes` tasks; rank 0 runs the coordinator (with one local worker, so no
//! machine idles) and every other rank a worker pointed at rank 0. Secrets are never
//! written into the file: each engine gets them the way it expects — SLURM and the SSH
//! runner from the submitting shell's environment, SkyPilot through `--env`/`--secret`,
//! Kubernetes from a Secret — and every job refuses to start without the fleet token.

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

/// Environment variables the SSH runner passes on when set (names only, never values): the
/// fleet token and both sides' credentials for every backend.
pub const FORWARDED_ENV: [&str; 19] = [
    "SKYHAUL_FLEET_TOKEN",
    "SKYHAUL_SRC_ACCESS_KEY_ID",
    "SKYHAUL_SRC_SECRET_ACCESS_KEY",
    "SKYHAUL_SRC_SESSION_TOKEN",
    "SKYHAUL_DST_ACCESS_KEY_ID",
    "SKYHAUL_DST_SECRET_ACCESS_KEY",
    "SKYHAUL_DST_SESSION_TOKEN",
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
];

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
        format!(
            ": \"${{SKYHAUL_FLEET_TOKEN:?set SKYHAUL_FLEET_TOKEN (16+ characters) where the job is submitted}}\"\n\
             if [ \"${rank_var}\" = 0 ]; then\n  \
             exec {skyhaul} coordinator --listen 0.0.0.0:{port} {args}\n\
             else\n  \
             exec {skyhaul} worker --coordinator \"http://${head_var}:{port}\" --wait 10m\n\
             fi\n",
            port = self.port,
            args = self.coordinator_args(),
        )
    }

    pub fn render(&self, backend: Backend) -> String {
        match backend {
            Backend::Slurm => self.slurm(),
            Backend::Skypilot => self.skypilot(),
            Backend::Kubernetes => self.kubernetes(),
            Backend::Ssh => self.ssh(),
        }
    }

    /// A batch script: one srun step of `nodes` tasks. sbatch passes the submitting shell's
    /// environment (`--export=ALL`, its default) to every task: that is how the token and
    /// credentials arrive.
    fn slurm(&self) -> String {
        let n = self.nodes;
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(s, "#SBATCH --job-name={}", self.name);
        let _ = writeln!(s, "#SBATCH --ntasks={n}");
        let _ = writeln!(s, "#SBATCH --output={}-%j.out", self.name);
        let _ = writeln!(s, "#SBATCH --export=ALL");
        let _ = writeln!(
            s,
            "# Generated by `skyhaul launch --backend slurm`. Submit with the token and"
        );
        let _ = writeln!(
            s,
            "# credentials in the environment (nothing secret is in this file):"
        );
        let _ = writeln!(
            s,
            "#   export SKYHAUL_FLEET_TOKEN=$(openssl rand -hex 32); sbatch THIS_FILE"
        );
        let _ = writeln!(s, "set -euo pipefail");
        let _ = writeln!(
            s,
            ": \"${{SKYHAUL_FLEET_TOKEN:?set SKYHAUL_FLEET_TOKEN before sbatch}}\""
        );
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

    /// A SkyPilot task: `num_nodes` nodes, rank and head from SKYPILOT_NODE_RANK and
    /// SKYPILOT_NODE_IPS. Secrets are declared without values and given at launch time
    /// (`sky launch --secret SKYHAUL_FLEET_TOKEN …` takes them from the local environment).
    fn skypilot(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Generated by `skyhaul launch --backend skypilot`. Launch with the secrets"
        );
        let _ = writeln!(s, "# taken from your environment (none is in this file):");
        let mut launch = format!("#   sky launch -c {} THIS_FILE", self.name);
        for v in SECRET_ENV.iter() {
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
        let _ = writeln!(s, "secrets:");
        for v in SECRET_ENV.iter() {
            let _ = writeln!(s, "  {v}: null");
        }
        let _ = writeln!(s, "setup: |");
        let _ = writeln!(
            s,
            "  command -v {} >/dev/null || {{ echo 'skyhaul is not installed on this image' >&2; exit 1; }}",
            sh(&self.skyhaul)
        );
        let _ = writeln!(s, "run: |");
        let _ = writeln!(
            s,
            "  export SKYHAUL_HEAD=\"$(echo \"$SKYPILOT_NODE_IPS\" | head -n1)\""
        );
        for line in self
            .rank_script("SKYPILOT_NODE_RANK", "SKYHAUL_HEAD")
            .lines()
        {
            let _ = writeln!(s, "  {line}");
        }
        s
    }

    /// A headless Service and an Indexed Job: pod `NAME-0` (reachable as `NAME-0.NAME`)
    /// coordinates. Token and credentials come from a Secret, as environment variables.
    fn kubernetes(&self) -> String {
        let name = &self.name;
        let n = self.nodes;
        let script = self.rank_script("JOB_COMPLETION_INDEX", "SKYHAUL_HEAD");
        format!(
            "# Generated by `skyhaul launch --backend kubernetes`. Create the Secret first (nothing\n\
             # secret is in this file), then apply:\n\
             #   kubectl create secret generic {secret} --from-literal=SKYHAUL_FLEET_TOKEN=$(openssl rand -hex 32) \\\n\
             #     --from-literal=SKYHAUL_SRC_ACCESS_KEY_ID=... --from-literal=SKYHAUL_SRC_SECRET_ACCESS_KEY=... (and DST)\n\
             #   kubectl apply -f THIS_FILE\n\
             apiVersion: v1\n\
             kind: Service\n\
             metadata:\n  name: {qname}\n\
             spec:\n  clusterIP: None\n  publishNotReadyAddresses: true\n  selector:\n    job-name: {qname}\n  ports:\n    - name: coordinator\n      port: {port}\n\
             ---\n\
             apiVersion: batch/v1\n\
             kind: Job\n\
             metadata:\n  name: {qname}\n\
             spec:\n  completionMode: Indexed\n  completions: {n}\n  parallelism: {n}\n  backoffLimitPerIndex: 2\n  template:\n    metadata:\n      labels:\n        job-name: {qname}\n    spec:\n      subdomain: {qname}\n      restartPolicy: Never\n      containers:\n        - name: skyhaul\n          image: {image}\n          env:\n            - name: SKYHAUL_HEAD\n              value: {head}\n          envFrom:\n            - secretRef:\n                name: {qsecret}\n          ports:\n            - containerPort: {port}\n          command: [\"sh\", \"-c\", {script}]\n",
            secret = self.secret,
            qsecret = yaml(&self.secret),
            qname = yaml(name),
            port = self.port,
            image = yaml(&self.image),
            head = yaml(&format!("{name}-0.{name}")),
            script = yaml(&script),
        )
    }

    /// A bash runner for a host list: the coordinator on the first host, a worker on every
    /// other. The token and credentials are read from the running shell's environment and
    /// sent over each SSH connection's stdin, so they are neither in this file nor on any
    /// command line.
    fn ssh(&self) -> String {
        let mut s = String::new();
        let hosts: Vec<String> = self.hosts.iter().map(|h| sh(h)).collect();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(
            s,
            "# Generated by `skyhaul launch --backend ssh`. Run with the token and"
        );
        let _ = writeln!(
            s,
            "# credentials in your environment (nothing secret is in this file)."
        );
        let _ = writeln!(s, "set -euo pipefail");
        let _ = writeln!(
            s,
            ": \"${{SKYHAUL_FLEET_TOKEN:?set SKYHAUL_FLEET_TOKEN first}}\""
        );
        let _ = writeln!(s, "HOSTS=({})", hosts.join(" "));
        let _ = writeln!(
            s,
            "export SKYHAUL_HEAD=\"${{SKYHAUL_HEAD_ADDR:-${{HOSTS[0]#*@}}}}\""
        );
        let _ = writeln!(s, "exports() {{");
        let _ = writeln!(s, "  for v in {} SKYHAUL_HEAD; do", FORWARDED_ENV.join(" "));
        let _ = writeln!(
            s,
            "    if [ -n \"${{!v:-}}\" ]; then printf 'export %s=%q\\n' \"$v\" \"${{!v}}\"; fi"
        );
        let _ = writeln!(s, "  done");
        let _ = writeln!(s, "}}");
        let _ = writeln!(
            s,
            "RANK_SCRIPT={}",
            sh(&self.rank_script("SKYHAUL_RANK", "SKYHAUL_HEAD"))
        );
        let _ = writeln!(s, "pids=()");
        let _ = writeln!(s, "for i in \"${{!HOSTS[@]}}\"; do");
        let _ = writeln!(
            s,
            "  {{ exports; echo \"export SKYHAUL_RANK=$i\"; echo \"$RANK_SCRIPT\"; }} | ssh -o BatchMode=yes \"${{HOSTS[$i]}}\" bash -s &"
        );
        let _ = writeln!(s, "  pids+=($!)");
        let _ = writeln!(s, "done");
        let _ = writeln!(s, "# The coordinator's exit code is the transfer's.");
        let _ = writeln!(s, "status=0; wait \"${{pids[0]}}\" || status=$?");
        let _ = writeln!(
            s,
            "for p in \"${{pids[@]:1}}\"; do wait \"$p\" || true; done"
        );
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
    fn local_worker_is_added_once() {
        let mut j = job();
        assert!(j.coordinator_args().ends_with("--workers 1"));
        j.transfer.extend(["--workers".into(), "4".into()]);
        assert!(j.coordinator_args().ends_with("--workers 4"));
    }
}
