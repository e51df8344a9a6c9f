//! `--backend kubernetes --gateway-kube-context … --submit`: once both files are applied,
//! waits for each gateway's load balancer to have an address and gives them to the fleet as
//! the ConfigMap its pods wait for — what the files' comments say to do by hand.

use super::run_submit;
use crate::exit::{CliError, ExitCode};
use crate::output::Output;
use skyhaul_fleet::launch::{Gateways, Job, GATEWAYS_ENV, K8S_LOAD_BALANCER_ADDRESS};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a load balancer may take to get its address (clouds usually take a minute or two).
const ADDRESS_WAIT: Duration = Duration::from_secs(600);
/// How often to ask for it meanwhile.
const ADDRESS_POLL: Duration = Duration::from_secs(5);

/// `kubectl --context CONTEXT apply -f FILE`: the gateways, in their cluster.
pub(super) fn apply_gateways(context: &str, file: &str) -> Result<ExitCode, CliError> {
    let mut cmd = Command::new("kubectl");
    cmd.args(["--context", context, "apply", "-f", file]);
    run_submit(
        &mut cmd,
        &format!("kubectl apply of the relay gateways in context {context}"),
        file,
    )
}

/// Waits for every gateway's address, then creates the ConfigMap of `SKYHAUL_GATEWAYS` in
/// the fleet's cluster (the current context), which lets the fleet's pods start.
pub(super) fn give_addresses(
    job: &Job,
    g: &Gateways,
    context: &str,
    fleet_file: &str,
    out: Output,
) -> Result<ExitCode, CliError> {
    let map = job.gateways_config_map();
    let mut addrs = Vec::new();
    for i in 0..g.count {
        let service = job.gateway_name(i);
        let addr = load_balancer_address(context, &service, &map)?;
        out.notice(&format!("relay gateway {service} at {addr}:{}", g.port));
        addrs.push(format!("{addr}:{}", g.port));
    }
    let mut cmd = Command::new("kubectl");
    cmd.args(["create", "configmap", &map])
        .arg(format!("--from-literal={GATEWAYS_ENV}={}", addrs.join(",")));
    run_submit(
        &mut cmd,
        &format!("kubectl create configmap {map}"),
        fleet_file,
    )
}

/// The address (IP or host name) of the LoadBalancer Service `service` in the cluster of
/// `context`, once it has one. A `kubectl` that fails (no such context, no access) ends
/// the wait at once: only a load balancer still being made is waited for.
fn load_balancer_address(context: &str, service: &str, map: &str) -> Result<String, CliError> {
    let start = Instant::now();
    loop {
        let got = Command::new("kubectl")
            .args(["--context", context, "get", "service", service, "-o"])
            .arg(format!("jsonpath={K8S_LOAD_BALANCER_ADDRESS}"))
            .output()
            .map_err(|e| CliError {
                code: ExitCode::Usage,
                message: format!("--submit: cannot run kubectl ({e})"),
            })?;
        if !got.status.success() {
            let err = String::from_utf8_lossy(&got.stderr);
            return Err(CliError {
                code: ExitCode::PartialFailure,
                message: format!(
                    "kubectl --context {context} get service {service} failed: {}",
                    err.lines().next().unwrap_or("").trim()
                ),
            });
        }
        if let Some(addr) = String::from_utf8_lossy(&got.stdout)
            .split_whitespace()
            .next()
        {
            return Ok(addr.to_string());
        }
        if start.elapsed() >= ADDRESS_WAIT {
            return Err(CliError {
                code: ExitCode::PartialFailure,
                message: format!(
                    "the load balancer of relay gateway {service} has no address after {} minutes; the fleet waits for the ConfigMap {map}: make it as the fleet's file's comments say",
                    ADDRESS_WAIT.as_secs() / 60
                ),
            });
        }
        std::thread::sleep(ADDRESS_POLL);
    }
}
