//! A real single-node SLURM cluster (munged, slurmctld, slurmd) started per test.
//!
//! The generated batch scripts of `skyhaul launch --backend slurm` are only proven by
//! running them under SLURM itself: `sbatch`, an allocation, `srun` starting the tasks.
//! Everything lives in a temporary directory with free ports, so the machine's own SLURM
//! configuration (if any) is never touched. The daemons run in the foreground as children
//! and are killed by PID on drop.

use crate::server::free_port;
use crate::tool;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct SlurmCluster {
    /// The `slurm.conf` clients must be given (as `SLURM_CONF`).
    pub conf: PathBuf,
    daemons: Vec<Child>,
    dir: TempDir,
}

/// How a finished job ended, from `scontrol show job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// e.g. `COMPLETED`, `FAILED`, `CANCELLED`.
    pub state: String,
    /// `ExitCode=N:S`.
    pub exit_code: String,
}

impl SlurmCluster {
    /// Starts munged, slurmctld and slurmd (a node with 4 CPUs as configured, whatever the
    /// machine has) and waits until the node takes jobs.
    ///
    /// # Panics
    /// If a daemon is not installed (`scripts/install-test-tools.sh`) or the node does not
    /// come up within 30 s; the message has the daemons' logs.
    pub fn start() -> SlurmCluster {
        let dir = tempfile::Builder::new()
            .prefix("skyhaul-slurm-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["state", "spool", "munge"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        set_mode(d, 0o755);
        set_mode(&d.join("munge"), 0o755);
        let key = d.join("munge/munge.key");
        let bytes: Vec<u8> = (0..128).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&key, bytes).unwrap();
        set_mode(&key, 0o400);
        let socket = d.join("munge/munge.sock");
        let mut daemons = Vec::new();
        daemons.push(spawn(
            Command::new(tool("munged"))
                .arg("-F")
                .arg("--force")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!(
                    "--pid-file={}",
                    d.join("munge/munged.pid").display()
                ))
                .arg(format!(
                    "--seed-file={}",
                    d.join("munge/munge.seed").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    d.join("munge/munged.log").display()
                )),
            &d.join("munged.out"),
        ));
        wait_for(|| socket.exists(), "munged socket", d);
        let conf = d.join("slurm.conf");
        std::fs::write(&conf, config(d, &socket)).unwrap();
        daemons.push(spawn(
            Command::new(tool("slurmctld"))
                .args(["-D", "-f"])
                .arg(&conf)
                .env("SLURM_CONF", &conf),
            &d.join("slurmctld.out"),
        ));
        daemons.push(spawn(
            Command::new(tool("slurmd"))
                .args(["-D", "-N", "localhost", "-f"])
                .arg(&conf)
                .env("SLURM_CONF", &conf),
            &d.join("slurmd.out"),
        ));
        let cluster = SlurmCluster { conf, daemons, dir };
        wait_for(
            || {
                cluster
                    .client("sinfo")
                    .args(["-h", "-o", "%t"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
            },
            "the SLURM node to be idle",
            cluster.dir.path(),
        );
        cluster
    }

    /// A SLURM client command (`sbatch`, `squeue`, …) pointed at this cluster.
    pub fn client(&self, name: &str) -> Command {
        let mut cmd = Command::new(tool(name));
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Submits `script` from `workdir` with `env` added to this process's environment (sbatch
    /// passes the submitting environment on); returns the job id.
    pub fn sbatch(&self, script: &Path, workdir: &Path, env: &[(String, String)]) -> u32 {
        let mut cmd = self.client("sbatch");
        cmd.arg("--parsable").arg(script).current_dir(workdir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("sbatch runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "sbatch failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// Waits until job `id` has ended, at most `timeout`.
    pub fn wait(&self, id: u32, timeout: Duration) -> JobEnd {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self
                .client("scontrol")
                .args(["show", "job", &id.to_string()])
                .output()
                .expect("scontrol runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let field = |name: &str| {
                text.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or("")
                    .to_string()
            };
            let state = field("JobState=");
            if !matches!(
                state.as_str(),
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | ""
            ) {
                return JobEnd {
                    state,
                    exit_code: field("ExitCode="),
                };
            }
            if Instant::now() > deadline {
                let _ = self.client("scancel").arg(id.to_string()).status();
                panic!(
                    "job {id} still {state} after {timeout:?}:\n{text}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        logs(self.dir.path())
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().rev() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn config(d: &Path, socket: &Path) -> String {
    let p = |name: &str| d.join(name).display().to_string();
    format!(
        "ClusterName=skyhaultest\n\
         SlurmctldHost=localhost(127.0.0.1)\n\
         CommunicationParameters=NoCtldInAddrAny,NoInAddrAny\n\
         AuthType=auth/munge\n\
         CredType=cred/munge\n\
         AuthInfo=socket={socket}\n\
         SlurmUser=root\n\
         SlurmdUser=root\n\
         SlurmctldPort={ctld}\n\
         SlurmdPort={slurmd}\n\
         StateSaveLocation={state}\n\
         SlurmdSpoolDir={spool}\n\
         SlurmctldPidFile={ctld_pid}\n\
         SlurmdPidFile={slurmd_pid}\n\
         SlurmctldLogFile={ctld_log}\n\
         SlurmdLogFile={slurmd_log}\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_CPU\n\
         SlurmdParameters=config_overrides\n\
         ReturnToService=2\n\
         MpiDefault=none\n\
         NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN\n\
         PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
        socket = socket.display(),
        ctld = free_port(),
        slurmd = free_port(),
        state = p("state"),
        spool = p("spool"),
        ctld_pid = p("slurmctld.pid"),
        slurmd_pid = p("slurmd.pid"),
        ctld_log = p("slurmctld.log"),
        slurmd_log = p("slurmd.log"),
    )
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", logs(dir));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for name in [
        "munged.out",
        "munge/munged.log",
        "slurmctld.out",
        "slurmctld.log",
        "slurmd.out",
        "slurmd.log",
    ] {
        let content = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let tail: Vec<&str> = content.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        text.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
    }
    text
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
