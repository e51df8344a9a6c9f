//! SLURM: a batch script of one `srun` step; gateways are a job of their own that it submits.

use super::*;
use std::fmt::Write;

/// Bash lines that end the gateways' job when the batch script exits: after a transfer
/// that succeeded it ends by itself (the coordinator stopped the gateways), else, or if it
/// lingers, it is cancelled.
const END_GATEWAYS: &str = r#"end_gateways() {
  if [ "$1" = 0 ]; then
    for _ in $(seq 30); do
      case "$(squeue -h -j "$GATEWAY_JOB" -o %T 2>/dev/null)" in
        PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED) sleep 2 ;;
        *) return 0 ;;
      esac
    done
  fi
  scancel "$GATEWAY_JOB" 2>/dev/null || true
}
trap 'end_gateways $?' EXIT
"#;

impl Job {
    /// A batch script: one srun step of `nodes` tasks, `tasks_per_node` on each node (a task
    /// count alone lets SLURM pack a fleet onto one machine's CPUs). sbatch passes the submitting shell's
    /// environment (`--export=ALL`, its default) to every task: that is how the token and
    /// credentials arrive. With gateways, the script first submits them as a job of their own
    /// (in `--gateway-partition`), waits until it runs and relays through its nodes.
    pub(super) fn slurm(&self) -> String {
        let (n, per) = (self.nodes, self.tasks_per_node);
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(s, "#SBATCH --job-name={}", self.name);
        let _ = writeln!(s, "#SBATCH --nodes={}", n.div_ceil(per));
        let _ = writeln!(s, "#SBATCH --ntasks={n}");
        let _ = writeln!(s, "#SBATCH --ntasks-per-node={per}");
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
            "srun --ntasks={n} --ntasks-per-node={per} --distribution=block --kill-on-bad-exit=0 bash -c {}",
            sh(&self.rank_script("SLURM_PROCID", "SKYHAUL_HEAD", Backend::Slurm))
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
             # inherits this job's environment, drops what it does not need, and ends when the\n\
             # coordinator tells its gateways that the transfer is over; it is cancelled if it\n\
             # is still there a minute later, or at once if the transfer failed."
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
            sh(&self.gateway_script(g, true, Backend::Slurm))
        );
        let _ = writeln!(*s, "GATEWAY_JOB=\"${{GATEWAY_JOB%%;*}}\"");
        s.push_str(END_GATEWAYS);
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
}
