//! Values `launch` writes into a job that its engine would refuse, or misread, only once the
//! job runs: refused here, before any file is written.

use crate::args::LaunchArgs;
use crate::exit::{self, CliError};
use skyhaul_fleet::launch::Backend;

/// Kubernetes' limit for the names it gives objects and pod host names (a DNS-1123 label).
const K8S_NAME_MAX: usize = 63;
/// Kubernetes' limit for a Secret's name (a DNS-1123 subdomain).
const K8S_SUBDOMAIN_MAX: usize = 253;

fn is_label(s: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    edge(s.bytes().next())
        && edge(s.bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The job's name, which names its files, its SLURM job, SkyPilot clusters and Kubernetes
/// objects: a DNS label everywhere (a leading `-` would make `sbatch NAME.sbatch` read the
/// file's name as an option), a letter first for SkyPilot's cluster names, and on
/// Kubernetes short enough that every name made from it (pods `NAME-I`, `NAME-gw-I`, ...)
/// is a label too.
pub(super) fn name(args: &LaunchArgs, backend: Backend, nodes: u32) -> Result<(), CliError> {
    let name = &args.name;
    if !is_label(name) {
        return Err(exit::usage(format!(
            "--name '{name}': use lowercase letters, digits and -, starting and ending with a letter or digit (it names pods, clusters and files)"
        )));
    }
    if backend == Backend::Skypilot && !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(exit::usage(format!(
            "--name '{name}': SkyPilot cluster names start with a letter"
        )));
    }
    if backend != Backend::Kubernetes {
        return Ok(());
    }
    let mut made = vec![format!("{name}-{}", nodes.saturating_sub(1))];
    if let Some(count) = args.gateways {
        made.extend([
            format!("{name}-gw-{}", count.saturating_sub(1)),
            format!("{name}-gw-tls"),
            format!("{name}-relay-ca"),
            format!("{name}-gateways"),
        ]);
    }
    let longest = made.iter().max_by_key(|n| n.len()).expect("one at least");
    if longest.len() > K8S_NAME_MAX {
        return Err(exit::usage(format!(
            "--name '{name}' is too long for Kubernetes: it makes names such as {longest} ({} characters, at most {K8S_NAME_MAX}); use a shorter --name",
            longest.len()
        )));
    }
    Ok(())
}

/// What Kubernetes would refuse at `kubectl apply`, or a pod that never starts: an empty
/// image, Secret names that are not DNS-1123 subdomains.
pub(super) fn kubernetes(args: &LaunchArgs) -> Result<(), CliError> {
    if args
        .image
        .as_deref()
        .is_some_and(|i| i.is_empty() || i.contains(char::is_whitespace))
    {
        return Err(exit::usage(format!(
            "--image '{}': name an image with skyhaul in it, e.g. REGISTRY/skyhaul:TAG",
            args.image.as_deref().unwrap_or_default()
        )));
    }
    let mut secrets = vec![("--secret", &args.secret)];
    if args.gateways.is_some() {
        secrets.push(("--gateway-secret", &args.gateway_secret));
    }
    for (flag, secret) in secrets {
        if secret.len() > K8S_SUBDOMAIN_MAX || !secret.split('.').all(is_label) {
            return Err(exit::usage(format!(
                "{flag} '{secret}': a Secret's name is lowercase letters, digits, - and ., each part between dots starting and ending with a letter or digit"
            )));
        }
    }
    Ok(())
}

/// SSH hosts as the runner passes them to `ssh` and as the fleet dials them: no empty
/// host, none `ssh` would read as an option (`-oProxyCommand=…`), and no port or IPv6
/// brackets, since the host (without `user@`) also becomes the URL `http://HOST:PORT` and
/// the gateways' `HOST:PORT`.
pub(super) fn ssh_hosts(flag: &str, hosts: &[String]) -> Result<(), CliError> {
    for h in hosts {
        let host = h.rsplit_once('@').map_or(h.as_str(), |(_, host)| host);
        let problem = if h.is_empty() || host.is_empty() {
            Some("is empty")
        } else if h.starts_with('-') {
            Some("starts with '-', which ssh would read as an option")
        } else if h.contains(char::is_whitespace) {
            Some("holds a space")
        } else if host.contains([':', '[', ']']) {
            Some("holds a port or an IPv6 address, which cannot go into the fleet's http://HOST:PORT; give the host a name in ~/.ssh/config (Host, HostName, Port) and use that")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(exit::usage(format!(
                "{flag}: host '{h}' {problem} (hosts are [user@]host, comma-separated)"
            )));
        }
    }
    Ok(())
}

/// `--nodes` with `--backend ssh`, which runs one task per host: it may only agree.
pub(super) fn ssh_nodes(args: &LaunchArgs) -> Result<(), CliError> {
    match args.nodes {
        Some(n) if n as usize != args.hosts.len() => Err(exit::usage(format!(
            "--nodes {n} but {} --hosts: with ssh there is one task per host; drop --nodes or list {n} hosts",
            args.hosts.len()
        ))),
        _ => Ok(()),
    }
}

/// A gateway and the coordinator on one port: SLURM and SSH may place both on one machine,
/// where the second would fail to listen.
pub(super) fn ports(args: &LaunchArgs, gateways: bool) -> Result<(), CliError> {
    if gateways && args.port == args.gateway_port {
        return Err(exit::usage(format!(
            "--port and --gateway-port are both {}: a gateway may run on the coordinator's machine; give them different ports",
            args.port
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for good in ["a", "skyhaul-fleet", "0x", "a-0"] {
            assert!(is_label(good), "{good}");
        }
        for bad in ["", "-lead", "trail-", "Up", "a_b", "a.b"] {
            assert!(!is_label(bad), "{bad}");
        }
    }
}
