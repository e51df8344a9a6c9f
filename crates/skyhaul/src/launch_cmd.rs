//! `skyhaul launch`: writes (and submits) a job that runs a fleet on an existing engine.

use crate::args::{BackendArg, Cli, Command as Cmd, CoordinatedTransfer, LaunchArgs};
use crate::exit::{self, CliError, ExitCode};
use crate::output::Output;
use clap::{Parser, ValueEnum};
use skyhaul_fleet::launch::{
    Backend, GatewayTls, Gateways, Job, CREDENTIAL_ENV, GATEWAYS_ENV, KEY_FILE_ENV,
};
use skyhaul_location::{Location, Scheme};
use std::path::PathBuf;
use std::process::Command;

mod checks;
mod files;
mod kubernetes;

pub fn run(args: LaunchArgs) -> ExitCode {
    let out = Output::new(false, false);
    match launch(args, out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e.message, e.code);
            e.code
        }
    }
}

fn launch(args: LaunchArgs, out: Output) -> Result<ExitCode, CliError> {
    // The transfer must be one `skyhaul coordinator` accepts: check it here, not on the nodes.
    let mut argv = vec!["skyhaul", "coordinator", "--listen", "0.0.0.0:1"];
    argv.extend(args.transfer.iter().map(String::as_str));
    let parsed = Cli::try_parse_from(&argv);
    if let Err(e) = &parsed {
        // clap's first line, with the argument it names on the next one when there is one.
        let text = e.to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut first = lines
            .first()
            .unwrap_or(&"invalid transfer")
            .trim_start_matches("error: ")
            .to_string();
        if first.ends_with(':') {
            if let Some(next) = lines.get(1) {
                first = format!("{first} {next}");
            }
        }
        return Err(exit::usage(format!(
            "the transfer after the launch options is not valid for `skyhaul coordinator`: {first}"
        )));
    }
    secret_flags(&args.transfer)?;
    let (backend, ext, submit) = match args.backend {
        BackendArg::Slurm => (Backend::Slurm, "sbatch", "sbatch"),
        BackendArg::Skypilot => (Backend::Skypilot, "sky.yaml", "sky"),
        BackendArg::Kubernetes => (Backend::Kubernetes, "k8s.yaml", "kubectl"),
        BackendArg::Ssh => (Backend::Ssh, "sh", "bash"),
    };
    if args.tasks_per_node.is_some() && backend != Backend::Slurm {
        return Err(exit::usage(
            "--tasks-per-node is an option of --backend slurm (the other engines run a task per machine or pod)",
        ));
    }
    // SLURM, SSH and SkyPilot take the token from this shell: a job submitted without it can
    // only fail on the nodes (Kubernetes reads it from its Secret).
    let token = std::env::var(skyhaul_fleet::TOKEN_ENV).unwrap_or_default();
    if args.submit
        && backend != Backend::Kubernetes
        && skyhaul_fleet::auth::Token::new(&token).is_err()
    {
        return Err(exit::usage(format!(
            "--submit: set {0} to a secret of {1}+ characters first (e.g. export {0}=$(openssl rand -hex 32)): the job's nodes get it from this shell",
            skyhaul_fleet::TOKEN_ENV,
            skyhaul_fleet::auth::MIN_TOKEN_LEN
        )));
    }
    if args.keep_cluster && backend != Backend::Skypilot {
        return Err(exit::usage(
            "--keep-cluster is an option of --backend skypilot (the other engines start no cluster of their own)",
        ));
    }
    let nodes = match backend {
        Backend::Ssh if args.hosts.is_empty() => {
            return Err(exit::usage("--backend ssh needs --hosts h1,h2,..."))
        }
        Backend::Ssh => {
            checks::ssh_hosts("--hosts", &args.hosts)?;
            checks::ssh_hosts("--gateway-hosts", &args.gateway_hosts)?;
            checks::ssh_nodes(&args)?;
            args.hosts.len() as u32
        }
        _ => args.nodes.unwrap_or(2),
    };
    checks::name(&args, backend, nodes)?;
    let image = match (backend, &args.image) {
        (Backend::Kubernetes, None) => {
            return Err(exit::usage(
                "--backend kubernetes needs --image (an image with skyhaul)",
            ))
        }
        (Backend::Kubernetes, _) => {
            checks::kubernetes(&args)?;
            args.image.clone().unwrap_or_default()
        }
        (_, i) => i.clone().unwrap_or_default(),
    };
    let (src, dst) = match parsed.map(|c| c.command) {
        Ok(Cmd::Coordinator(c)) => match c.transfer {
            CoordinatedTransfer::Cp(a) => (a.common.src, a.common.dst),
            CoordinatedTransfer::Sync(a) => (a.common.src, a.common.dst),
        },
        _ => unreachable!("checked above"),
    };
    // A location the nodes would refuse (a SAS URL's query, which would also be written
    // into the job file) is refused here, before any file is written.
    for loc in [&src, &dst].into_iter().filter(|l| l.contains("://")) {
        Location::parse(loc).map_err(exit::usage)?;
    }
    let gateways = gateways(&args, backend, &dst)?;
    checks::ports(&args, gateways.is_some())?;
    let job = Job {
        nodes,
        tasks_per_node: args.tasks_per_node.unwrap_or(1),
        port: args.port,
        name: args.name.clone(),
        transfer: args.transfer,
        skyhaul: args.skyhaul,
        image,
        secret: args.secret,
        spot: args.spot,
        cpus: args.cpus,
        keep_cluster: args.keep_cluster,
        hosts: args.hosts,
        credentials: CREDENTIAL_ENV
            .into_iter()
            .filter(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
            .collect(),
        gateways,
    };
    let path = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.{ext}", args.name)));
    let mut files = vec![(path.clone(), job.render(backend))];
    // SkyPilot's gateways are their own task, and Kubernetes gateways in another cluster their
    // own manifest, beside the fleet's file (whose comments name it).
    let gateway_file = match (job.render_gateway(backend), job.gateway_file(backend)) {
        (Some(text), Some(name)) => {
            let p = path.with_file_name(name);
            files.push((p.clone(), text));
            Some(p.to_string_lossy().into_owned())
        }
        _ => None,
    };
    files::write_all(&files, args.force)?;
    for (p, _) in &files {
        out.notice(&format!("wrote {}", p.display()));
    }
    if backend != Backend::Slurm {
        for file in key_files(&job.transfer, &src, &dst) {
            out.warning(&format!(
                "the GCS service-account key {file} is a file on this machine, and the job does not copy it: its machines need it at that path, or credentials of their own"
            ));
        }
        for (var, flag) in settings_left_behind(&job.transfer) {
            out.warning(&format!(
                "{var} is set on this machine only: the job's machines do not get it; pass {flag} in the transfer's command instead"
            ));
        }
    }
    // Kubernetes: the cluster of the gateways, when it is not the fleet's.
    let kube_context = job.gateways.as_ref().and_then(|g| g.kube_context.clone());
    if !args.submit {
        return Ok(ExitCode::Ok);
    }
    let file = path.to_string_lossy().into_owned();
    let mut cmd = Command::new(submit);
    match backend {
        Backend::Slurm | Backend::Ssh => cmd.arg(&file),
        Backend::Skypilot => {
            cmd.args(["launch", "-y"]);
            if !job.keep_cluster {
                cmd.arg("--down");
            }
            cmd.args(["-c", &job.name, &file]);
            if let (Some(g), Some(gw_file)) = (&job.gateways, &gateway_file) {
                let addrs = launch_sky_gateways(&job, g, gw_file, out)?;
                cmd.arg("--env").arg(format!("{GATEWAYS_ENV}={addrs}"));
            }
            secrets_set(&mut cmd, &job.secrets());
            &mut cmd
        }
        Backend::Kubernetes => {
            if let (Some(context), Some(gw_file)) = (&kube_context, &gateway_file) {
                kubernetes::apply_gateways(context, gw_file)?;
            }
            cmd.args(["apply", "-f", &file])
        }
    };
    let mut result = run_submit(&mut cmd, submit, &file);
    // The fleet's pods wait for their gateways' addresses, which exist only now.
    if let (Ok(_), Some(g), Some(context)) = (&result, &job.gateways, &kube_context) {
        result = kubernetes::give_addresses(&job, g, context, &file, out);
        if let Some(gw_file) = &gateway_file {
            out.notice(&format!(
                "the relay gateways exit once the transfer has succeeded, or after {} s without a sender; their load balancers stay, and are billed, until: kubectl --context {context} delete -f {gw_file}",
                args.gateway_idle_exit.as_secs(),
            ));
        }
    }
    // `sky launch` returns once the job has ended; when it fails SkyPilot keeps a cluster
    // that did not come up, for debugging, so only a launch that ran can promise autodown.
    if backend == Backend::Skypilot && result.is_ok() {
        out.notice(&match job.keep_cluster {
            false => format!(
                "the fleet's cluster {} goes down by itself now that its job has ended (autodown)",
                job.name
            ),
            true => format!(
                "the fleet's cluster {name} stays up (--keep-cluster): sky down {name} ends it",
                name = job.name
            ),
        });
    }
    if let (Backend::Skypilot, Some(g)) = (backend, &job.gateways) {
        let clusters: Vec<String> = (0..g.count).map(|i| job.gateway_name(i)).collect();
        out.notice(&format!(
            "the relay gateways exit once the transfer has succeeded, or after {} s without a sender, and their clusters then go down by themselves; to end them sooner: sky down {}",
            args.gateway_idle_exit.as_secs(),
            clusters.join(" ")
        ));
    }
    result
}

/// `--secret NAME` for each of `names` set here: SkyPilot reads the value from this
/// environment, so it never appears on a command line.
fn secrets_set(cmd: &mut Command, names: &[&str]) {
    for v in names {
        if std::env::var_os(v).is_some() {
            cmd.args(["--secret", v]);
        }
    }
}

fn run_submit(cmd: &mut Command, what: &str, file: &str) -> Result<ExitCode, CliError> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(ExitCode::Ok),
        Ok(s) => Err(CliError {
            code: ExitCode::PartialFailure,
            message: format!("{what} failed ({s}); the job file is {file}"),
        }),
        Err(e) => Err(CliError {
            code: ExitCode::Usage,
            message: format!("--submit: cannot run {what} ({e}); the job file is {file}"),
        }),
    }
}

/// Launches one SkyPilot cluster per gateway (detached: a gateway runs until stopped) and
/// returns their `IP:PORT`s from `sky status --ip`, for the fleet's `--relay`.
fn launch_sky_gateways(
    job: &Job,
    g: &Gateways,
    file: &str,
    out: Output,
) -> Result<String, CliError> {
    let mut addrs = Vec::new();
    for i in 0..g.count {
        let cluster = job.gateway_name(i);
        let mut cmd = Command::new("sky");
        cmd.args(["launch", "-y", "-d", "--down", "-c", &cluster, file]);
        secrets_set(&mut cmd, &job.gateway_secrets());
        run_submit(&mut cmd, &format!("sky launch of gateway {cluster}"), file)?;
        let ip = Command::new("sky")
            .args(["status", "--ip", &cluster])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|ip| !ip.is_empty() && !ip.contains(char::is_whitespace))
            .ok_or_else(|| CliError {
                code: ExitCode::PartialFailure,
                message: format!(
                    "`sky status --ip {cluster}` gave no address for gateway {cluster}; start the fleet by hand with --env {GATEWAYS_ENV}=IP:{},...",
                    g.port
                ),
            })?;
        out.notice(&format!("relay gateway {cluster} at {ip}:{}", g.port));
        addrs.push(format!("{ip}:{}", g.port));
    }
    Ok(addrs.join(","))
}

/// The gateways asked for, checked against the backend: each backend takes its own
/// placement options, and an option meant for another is an error rather than ignored.
fn gateways(args: &LaunchArgs, backend: Backend, dst: &str) -> Result<Option<Gateways>, CliError> {
    let own: &[(&str, bool)] = &[
        ("--gateway-region", args.gateway_region.is_some()),
        ("--gateway-cloud", args.gateway_cloud.is_some()),
        ("--gateway-partition", args.gateway_partition.is_some()),
        (
            "--gateway-node-selector",
            !args.gateway_node_selector.is_empty(),
        ),
        ("--gateway-hosts", !args.gateway_hosts.is_empty()),
        (
            "--gateway-kube-context",
            args.gateway_kube_context.is_some(),
        ),
        (
            "--gateway-source-ranges",
            !args.gateway_source_ranges.is_empty(),
        ),
    ];
    let allowed: &[&str] = match backend {
        Backend::Skypilot => &["--gateway-region", "--gateway-cloud"],
        Backend::Slurm => &["--gateway-partition"],
        Backend::Kubernetes => &[
            "--gateway-node-selector",
            "--gateway-kube-context",
            "--gateway-source-ranges",
        ],
        Backend::Ssh => &["--gateway-hosts"],
    };
    // The name the user typed: clap's own for the value.
    let backend_name = args
        .backend
        .to_possible_value()
        .expect("no variant is skipped");
    let backend_name = backend_name.get_name();
    for (flag, given) in own {
        if *given && !allowed.contains(flag) {
            return Err(exit::usage(format!(
                "{flag} is not an option of --backend {backend_name} (its gateway options: {})",
                allowed.join(", ")
            )));
        }
    }
    let count = match (backend, args.gateways) {
        (Backend::Ssh, n) if !args.gateway_hosts.is_empty() => {
            let hosts = args.gateway_hosts.len() as u32;
            if n.is_some_and(|n| n != hosts) {
                return Err(exit::usage(format!(
                    "--gateways {} but {hosts} --gateway-hosts: with ssh there is one gateway per host",
                    n.unwrap_or(0)
                )));
            }
            hosts
        }
        (Backend::Ssh, Some(_)) => {
            return Err(exit::usage(
                "--backend ssh --gateways needs --gateway-hosts g1,g2,... (the hosts near the destination)",
            ))
        }
        (_, Some(n)) => n,
        (_, None) => {
            if let Some((flag, _)) = own.iter().chain(&tls_flags(args)).find(|(_, given)| *given) {
                return Err(exit::usage(format!("{flag} needs --gateways N")));
            }
            return Ok(None);
        }
    };
    if args
        .gateway_kube_context
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        return Err(exit::usage(
            "--gateway-kube-context needs a context's name (kubectl config get-contexts lists them)",
        ));
    }
    if !args.gateway_source_ranges.is_empty() && args.gateway_kube_context.is_none() {
        return Err(exit::usage(
            "--gateway-source-ranges needs --gateway-kube-context CONTEXT (only gateways in another cluster have load balancers)",
        ));
    }
    if let Some(r) = args.gateway_source_ranges.iter().find(|r| !is_cidr(r)) {
        return Err(exit::usage(format!(
            "--gateway-source-ranges {r}: expected CIDRs such as 203.0.113.0/24 or 2001:db8::/32"
        )));
    }
    if backend == Backend::Skypilot && args.gateway_region.is_none() {
        return Err(exit::usage(
            "--backend skypilot --gateways needs --gateway-region (the destination's region, where the gateways run)",
        ));
    }
    if args
        .transfer
        .iter()
        .any(|a| a == "--relay" || a.starts_with("--relay="))
    {
        return Err(exit::usage(
            "--gateways and a transfer with --relay: launch gives the transfer its gateways' addresses itself; drop one",
        ));
    }
    if let Some(flag) = args.transfer.iter().find(|a| {
        ["--relay-tls", "--relay-tls-ca", "--relay-tls-name"]
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    }) {
        return Err(exit::usage(format!(
            "--gateways and a transfer with {flag}: give the gateways' TLS to launch instead (--gateway-tls-cert, --gateway-tls-key, --relay-tls-ca, --gateway-tls-name before the --)"
        )));
    }
    let mut node_selector = Vec::new();
    for s in &args.gateway_node_selector {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => node_selector.push((k.to_string(), v.to_string())),
            _ => {
                return Err(exit::usage(format!(
                    "--gateway-node-selector {s}: expected KEY=VALUE, e.g. topology.kubernetes.io/region=eu-west-1"
                )))
            }
        }
    }
    let mut gateway_args = vec![gateway_destination(dst)?];
    gateway_args.extend(destination_flags(&args.transfer));
    Ok(Some(Gateways {
        count,
        port: args.gateway_port,
        args: gateway_args,
        cloud: args.gateway_cloud.clone(),
        region: args.gateway_region.clone(),
        partition: args.gateway_partition.clone(),
        node_selector,
        secret: args.gateway_secret.clone(),
        kube_context: args.gateway_kube_context.clone(),
        source_ranges: args.gateway_source_ranges.clone(),
        hosts: args.gateway_hosts.clone(),
        idle_exit: Some(args.gateway_idle_exit),
        tls: gateway_tls(args, backend)?,
    }))
}

/// Whether `s` is an address range as `loadBalancerSourceRanges` takes it: `ADDRESS/BITS`.
fn is_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let max = match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => return false,
    };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}

/// Launch's TLS options, and whether each was given.
fn tls_flags(args: &LaunchArgs) -> [(&'static str, bool); 4] {
    [
        ("--gateway-tls-cert", args.gateway_tls_cert.is_some()),
        ("--gateway-tls-key", args.gateway_tls_key.is_some()),
        ("--relay-tls-ca", args.relay_tls_ca.is_some()),
        ("--gateway-tls-name", args.gateway_tls_name.is_some()),
    ]
}

/// The gateways' TLS files, checked here (they must make a TLS server, the CA must hold a
/// certificate) so that a job does not fail on its nodes; as absolute paths, which the
/// engines read or copy from wherever they run.
fn gateway_tls(args: &LaunchArgs, backend: Backend) -> Result<Option<GatewayTls>, CliError> {
    let (cert, key) = match (&args.gateway_tls_cert, &args.gateway_tls_key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            return match tls_flags(args).iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(exit::usage(format!(
                    "{flag} needs --gateway-tls-cert and --gateway-tls-key (the gateways' certificate it is about)"
                ))),
                None => Ok(None),
            }
        }
        _ => {
            return Err(exit::usage(
                "--gateway-tls-cert and --gateway-tls-key go together (the gateways' certificate chain and its key)",
            ))
        }
    };
    let absolute = |flag: &str, path: &std::path::Path| {
        std::fs::File::open(path)
            .and_then(|_| std::path::absolute(path))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| exit::usage(format!("{flag} {}: {e}", path.display())))
    };
    if backend == Backend::Skypilot && args.gateway_tls_name.is_none() {
        return Err(exit::usage(
            "--backend skypilot --gateway-tls-cert needs --gateway-tls-name NAME (a DNS name in the certificate): SkyPilot gives its gateways IP addresses no certificate can name in advance",
        ));
    }
    if args.gateway_kube_context.is_some() && args.gateway_tls_name.is_none() {
        return Err(exit::usage(
            "--gateway-kube-context with --gateway-tls-cert needs --gateway-tls-name NAME (a DNS name in the certificate): the load balancers' addresses are known only once they exist",
        ));
    }
    let tls = GatewayTls {
        cert: absolute("--gateway-tls-cert", cert)?,
        key: absolute("--gateway-tls-key", key)?,
        ca: match &args.relay_tls_ca {
            Some(ca) => {
                skyhaul_tls::ca_certificates(ca, "--relay-tls-ca").map_err(exit::usage)?;
                Some(absolute("--relay-tls-ca", ca)?)
            }
            None => None,
        },
        name: args.gateway_tls_name.clone(),
    };
    // Its errors name the gateway's own flags: say launch's.
    skyhaul_tls::server_config(cert, key, &[skyhaul_relay::TLS_ALPN]).map_err(|e| {
        exit::usage(e.replacen("--tls-key", "--gateway-tls-key", 1).replacen(
            "--tls-cert",
            "--gateway-tls-cert",
            1,
        ))
    })?;
    Ok(Some(tls))
}

/// What a gateway serves: the whole bucket (or container) of the transfer's destination,
/// as `skyhaul gateway` takes it; a named remote stays a remote (`NAME:BUCKET`).
fn gateway_destination(dst: &str) -> Result<String, CliError> {
    let not_a_store = || {
        exit::usage(format!(
            "--gateways: the destination {dst} is a local path; relay gateways write to an object store (s3://, gs://, az://)"
        ))
    };
    if dst.contains("://") {
        let loc = Location::parse(dst).map_err(exit::usage)?;
        if loc.scheme == Scheme::Local {
            return Err(not_a_store());
        }
        let root = Location {
            path: String::new(),
            ..loc
        };
        return Ok(root.to_string().trim_end_matches('/').to_string());
    }
    match dst.split_once(':') {
        Some((remote, rest)) if !remote.is_empty() && !remote.contains('/') && !rest.is_empty() => {
            let bucket = rest.trim_start_matches('/').split('/').next().unwrap_or("");
            Ok(format!("{remote}:{bucket}"))
        }
        _ => Err(not_a_store()),
    }
}

/// The transfer's flags that say where the destination is (never a secret: those go through
/// each engine's secret mechanism), as the gateways must be given them.
fn destination_flags(transfer: &[String]) -> Vec<String> {
    const FLAGS: [&str; 6] = [
        "--dst-endpoint",
        "--dst-region",
        "--dst-profile",
        "--dst-azure-account",
        "--dst-gcs-service-account",
        "--rclone-config",
    ];
    flag_values(transfer, &FLAGS)
        .into_iter()
        .flat_map(|(flag, v)| [flag.to_string(), v.to_string()])
        .collect()
}

/// The transfer's flags whose values are secrets, and the variables that carry them
/// instead: the job's command is written into its file, which is no place for a secret
/// (readable by whoever may read the file, and on Kubernetes and SkyPilot by whoever may
/// read the pod's or task's command), while the variables go as the engine's secrets.
const SECRET_FLAGS: [(&str, &str); 6] = [
    ("--src-azure-key", "SKYHAUL_SRC_AZURE_KEY"),
    ("--dst-azure-key", "SKYHAUL_DST_AZURE_KEY"),
    ("--src-azure-sas", "SKYHAUL_SRC_AZURE_SAS"),
    ("--dst-azure-sas", "SKYHAUL_DST_AZURE_SAS"),
    (
        "--src-azure-connection-string",
        "SKYHAUL_SRC_AZURE_CONNECTION_STRING",
    ),
    (
        "--dst-azure-connection-string",
        "SKYHAUL_DST_AZURE_CONNECTION_STRING",
    ),
];

/// Refuses a transfer that gives a secret as a flag ([`SECRET_FLAGS`]).
fn secret_flags(transfer: &[String]) -> Result<(), CliError> {
    let flags = SECRET_FLAGS.map(|(flag, _)| flag);
    match flag_values(transfer, &flags).first() {
        Some((flag, _)) => {
            let var = SECRET_FLAGS.iter().find(|(f, _)| f == flag).map(|(_, v)| v);
            Err(exit::usage(format!(
                "{flag} in the transfer would write the secret into the job's file: set {} in this shell instead, which launch passes to the job's machines as a secret",
                var.expect("one of SECRET_FLAGS")
            )))
        }
        None => Ok(()),
    }
}

/// Every `(flag, value)` the transfer's words give for one of `flags`, as `--flag VALUE` or
/// `--flag=VALUE`, in the order given.
fn flag_values<'a>(transfer: &'a [String], flags: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    let mut words = transfer.iter();
    while let Some(w) = words.next() {
        for &flag in flags {
            if w == flag {
                if let Some(v) = words.next() {
                    out.push((flag, v.as_str()));
                }
            } else if let Some(v) = w.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                out.push((flag, v));
            }
        }
    }
    out
}

/// The GCS service-account key files the transfer names (flags, or variables set here), as
/// `FILE (from WHERE)`: paths on this machine, which no engine but a shared file system
/// carries to the job's machines. `GOOGLE_APPLICATION_CREDENTIALS` counts for a `gs://` side.
fn key_files(transfer: &[String], src: &str, dst: &str) -> Vec<String> {
    let flags = ["--src-gcs-service-account", "--dst-gcs-service-account"];
    let mut files: Vec<String> = flag_values(transfer, &flags)
        .into_iter()
        .map(|(flag, v)| format!("{v} (from {flag})"))
        .collect();
    let gcs = [src, dst].iter().any(|l| l.starts_with("gs://"));
    for var in KEY_FILE_ENV {
        if var.starts_with("SKYHAUL_") || gcs {
            if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                files.push(format!("{} (from {var})", v.to_string_lossy()));
            }
        }
    }
    files
}

/// The settings this machine's environment gives and the transfer's command does not: only
/// SLURM passes the environment on, so on the job's machines they would not hold.
fn settings_left_behind(transfer: &[String]) -> Vec<(&'static str, &'static str)> {
    crate::settings::TUNING_ENV
        .into_iter()
        .filter(|(var, _)| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
        .filter(|(_, flag)| flag_values(transfer, &[flag]).is_empty())
        .collect()
}
