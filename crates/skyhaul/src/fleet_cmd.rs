//! Fleet mode on the command line: `cp/sync --workers N` (a coordinator and N worker
//! processes on this machine), `skyhaul coordinator` and `skyhaul worker`.

use crate::args::{EndpointArgs, FleetArgs, TransferArgs, WorkerArgs};
use crate::exit::{self, CliError, ExitCode};
use crate::output::Output;
use skyhaul_engine::{Endpoint, Progress, Report, TransferOptions};
use skyhaul_fleet::{
    coordinator, worker, Client, ClientError, CoordinatorOptions, Setup, Sides, Token,
    TransferSpec, WorkerError, WorkerInfo, WorkerSettings, PROTOCOL_VERSION, TOKEN_ENV,
};
use skyhaul_journal::Journal;
use skyhaul_store::{Error, ErrorKind};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A transfer run as a fleet's coordinator.
pub struct Fleet {
    listen: SocketAddr,
    /// Worker processes to start on this machine.
    workers: u16,
    /// They are the only workers (`cp/sync --workers N`): no other can join.
    local: bool,
    token: Token,
    options: CoordinatorOptions,
    /// HTTPS: the server configuration, and the certificate file local workers trust.
    tls: Option<(Arc<skyhaul_fleet::tls::ServerConfig>, PathBuf)>,
    /// Tell the relay gateways to exit once the transfer has succeeded.
    pub stop_gateways: bool,
}

impl Fleet {
    /// `cp/sync --workers N`: a coordinator on a free loopback port and N local workers,
    /// with a fresh token unless one is set in the environment. `None` without `--workers`.
    pub fn local(args: &FleetArgs) -> Result<Option<Fleet>, CliError> {
        let Some(workers) = args.workers else {
            return Ok(None);
        };
        let token = match std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
            Some(t) => Token::new(&t).map_err(exit::usage)?,
            None => Token::generate(),
        };
        Ok(Some(Fleet {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers,
            local: true,
            token,
            options: CoordinatorOptions {
                only_local_workers: true,
                ..options(args)
            },
            tls: None,
            stop_gateways: false,
        }))
    }

    /// `skyhaul coordinator --listen ADDR`: workers join from elsewhere (and `--workers N`
    /// more start here).
    pub fn coordinator(
        listen: SocketAddr,
        token: Option<&str>,
        tls: Option<(&Path, &Path)>,
        args: &FleetArgs,
        stop_gateways: bool,
    ) -> Result<Fleet, CliError> {
        let tls = match tls {
            Some((cert, key)) => Some((
                skyhaul_fleet::tls::server_config(cert, key).map_err(exit::usage)?,
                cert.to_path_buf(),
            )),
            None => None,
        };
        let token = token.ok_or_else(|| {
            exit::usage(format!(
                "the coordinator needs a token: set {TOKEN_ENV} (or --token) to a secret of 16+ characters that the workers share"
            ))
        })?;
        Ok(Fleet {
            listen,
            workers: args.workers.unwrap_or(0),
            local: false,
            token: Token::new(token).map_err(exit::usage)?,
            options: options(args),
            tls,
            stop_gateways,
        })
    }
}

fn options(args: &FleetArgs) -> CoordinatorOptions {
    let d = CoordinatorOptions::default();
    CoordinatorOptions {
        lease_timeout: args.lease_timeout.unwrap_or(d.lease_timeout),
        lease_bytes: args.lease_size.map_or(d.lease_bytes, |s| s.0.max(1)),
        ..d
    }
}

/// What workers are told about the transfer: the locations as typed, the endpoints,
/// regions and profile names, and the engine settings; never a credential.
pub fn spec(args: &TransferArgs, opts: &TransferOptions, bwlimit: Option<u64>) -> TransferSpec {
    let e = &args.endpoints;
    TransferSpec {
        protocol: PROTOCOL_VERSION,
        transfer_id: None,
        src: args.src.clone(),
        dst: args.dst.clone(),
        recursive: opts.recursive,
        sides: Sides {
            src_endpoint: e.src_endpoint.clone(),
            dst_endpoint: e.dst_endpoint.clone(),
            src_region: e.src_region.clone(),
            dst_region: e.dst_region.clone(),
            src_profile: e.src_profile.clone(),
            dst_profile: e.dst_profile.clone(),
            requester_pays: e.requester_pays,
            src_anonymous: e.src_anonymous,
        },
        settings: WorkerSettings {
            max_connections: opts.max_connections,
            memory_budget: opts.memory_budget,
            part_size: opts.part_size,
            multipart_threshold: opts.multipart_threshold,
            retries: opts.retry.retries,
            server_side_copy: opts.server_side_copy,
            bwlimit,
            storage_class: opts.storage_class.clone(),
        },
        lease_timeout_ms: 0,
        relay: None,
    }
}

/// Runs the transfer as the fleet's coordinator, with the local workers it asks for.
#[allow(clippy::too_many_arguments)]
pub async fn coordinate(
    fleet: Fleet,
    spec: TransferSpec,
    src: &Endpoint,
    dst: &Endpoint,
    opts: &TransferOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    journal: Option<Arc<Journal>>,
    relay: Option<Arc<skyhaul_relay::RelayStats>>,
    out: Output,
) -> skyhaul_store::Result<Report> {
    let listener = tokio::net::TcpListener::bind(fleet.listen)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!(
                    "--listen {}: {e} (choose another address or port)",
                    fleet.listen
                ),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Other, format!("coordinator address: {e}")))?;
    let scheme = if fleet.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    out.notice(&format!("fleet: coordinator at {url}"));
    let (tls, cert) = fleet.tls.unzip();
    let local = LocalWorkers {
        n: fleet.workers,
        bwlimit: spec.settings.bwlimit,
    };
    let children = spawn_workers(local, &url, &fleet.token, cert.as_deref())?;
    let all_gone = Arc::new(AtomicBool::new(false));
    let supervisor = watch_workers(children, all_gone.clone(), cancel.clone());
    let report = coordinator::run(
        src,
        dst,
        Setup {
            listener,
            tls,
            token: fleet.token,
            spec,
            transfer: opts.clone(),
            options: fleet.options,
            progress,
            cancel,
            journal,
            relay,
            // Workers may join a `skyhaul coordinator` from elsewhere (a launched fleet
            // runs one local worker beside them): its local workers' exit ends nothing.
            local_workers_gone: fleet.local.then_some(all_gone),
        },
    )
    .await;
    supervisor.stop.cancel();
    let _ = supervisor.task.await;
    report
}

/// Starts `n` `skyhaul worker` processes; the token goes through their environment, never
/// their command line (which `ps` shows).
/// The workers `cp/sync --workers N` starts on this machine.
struct LocalWorkers {
    n: u16,
    /// `--bwlimit`, which bounds what moves through this machine: each local worker gets
    /// its share (workers that join from other machines get the whole rate, each on its
    /// own machine).
    bwlimit: Option<u64>,
}

fn spawn_workers(
    local: LocalWorkers,
    url: &str,
    token: &Token,
    tls_ca: Option<&Path>,
) -> skyhaul_store::Result<Vec<tokio::process::Child>> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(ErrorKind::Other, format!("finding the skyhaul binary: {e}")))?;
    let share = local
        .bwlimit
        .map(|rate| (rate / u64::from(local.n.max(1))).max(1).to_string());
    (0..local.n)
        .map(|_| {
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(["worker", "--coordinator", url, "--wait", "1m", "--local"]);
            if let Some(share) = &share {
                cmd.args(["--bwlimit", share]);
            }
            // Local workers trust the coordinator's own certificate.
            if let Some(ca) = tls_ca {
                cmd.arg("--tls-ca").arg(ca);
            }
            cmd.env(TOKEN_ENV, token.expose())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            end_with_this_process(&mut cmd);
            cmd.spawn()
                .map_err(|e| Error::new(ErrorKind::Other, format!("starting a worker: {e}")))
        })
        .collect()
}

/// A local worker gets SIGTERM when this process ends however it ends (`kill -9` too):
/// else it went on working, orphaned, for its `--wait`, for a coordinator that was gone,
/// while a rerun ran beside it. SIGTERM makes it leave as a preempted worker does. The
/// signal comes when the thread that started the worker ends: workers are started from
/// the thread `main` blocks on, which ends with the process.
#[cfg(target_os = "linux")]
fn end_with_this_process(cmd: &mut tokio::process::Command) {
    use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
    let parent = Pid::from_raw(std::process::id() as i32);
    // SAFETY: prctl and getppid are async-signal-safe, and the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::TERM))?;
            // Gone already, before the signal was asked for: do not start at all.
            match getppid() == parent {
                true => Ok(()),
                false => Err(std::io::Error::other("the fleet ended")),
            }
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn end_with_this_process(_: &mut tokio::process::Command) {}

/// Asks the local workers still running to leave (SIGTERM: they give their leases back).
fn terminate(children: &[tokio::process::Child]) {
    #[cfg(not(unix))]
    let _ = children;
    #[cfg(unix)]
    for pid in children.iter().filter_map(|c| c.id()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

struct Supervisor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Watches the local workers: sets `all_gone` when every one of them has exited and none
/// of them because the coordinator said the transfer is over (exit code 0). When the
/// transfer is stopped (`cancel`: Ctrl-C, SIGTERM) they get SIGTERM at once, and leave while
/// the coordinator still answers, giving their leases back (a SIGTERM to this process alone
/// had left them working on for ~15 s, then failing to report). At the end, workers get a
/// few seconds to hear that the transfer is over before they are killed (by their own
/// handles).
fn watch_workers(
    mut children: Vec<tokio::process::Child>,
    all_gone: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> Supervisor {
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if children.is_empty() {
                return;
            }
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = cancel.cancelled(), if !stopping => {
                        stopping = true;
                        terminate(&children);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let (mut running, mut told_done) = (0, false);
                for c in &mut children {
                    match c.try_wait() {
                        Ok(None) => running += 1,
                        Ok(Some(status)) => told_done |= status.success(),
                        Err(_) => {}
                    }
                }
                // Workers that left because the transfer stops are no news.
                if running == 0 && !told_done && !stopping {
                    all_gone.store(true, Ordering::Relaxed);
                    return;
                }
            }
            terminate(&children);
            for c in &mut children {
                if tokio::time::timeout(Duration::from_secs(5), c.wait())
                    .await
                    .is_err()
                {
                    let _ = c.kill().await;
                }
            }
        })
    };
    Supervisor { stop, task }
}

/// `skyhaul worker`: works for a coordinator until its transfer is over.
pub async fn worker(args: WorkerArgs) -> ExitCode {
    let out = Output::new(false, false);
    match run_worker(args).await {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            out.error(&e.message, e.code);
            e.code
        }
    }
}

async fn run_worker(args: WorkerArgs) -> Result<(), CliError> {
    let token = args.token.as_deref().ok_or_else(|| {
        exit::usage(format!(
            "the worker needs the coordinator's token: set {TOKEN_ENV} (or --token)"
        ))
    })?;
    let token = Token::new(token).map_err(exit::usage)?;
    if args.local {
        leave_interrupts_to_the_coordinator();
    }
    let ca = match &args.tls_ca {
        Some(path) => skyhaul_fleet::tls::ca_certificates(path).map_err(exit::usage)?,
        None => Vec::new(),
    };
    let client = Client::new(&args.coordinator, token.clone(), args.wait, ca.clone())
        .map_err(exit::usage)?;
    // Tells the coordinator this worker leaves when it is stopped (the other is `run`'s).
    let stopping =
        Client::new(&args.coordinator, token.clone(), STOP_WAIT, ca).map_err(exit::usage)?;
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| exit::usage(format!("--metrics-listen {addr}: {e}")))?;
            Some((l, token))
        }
        None => None,
    };
    let host = hostname();
    let pid = std::process::id();
    let mut spec = worker::join(&client).await.map_err(worker_error)?;
    let info = WorkerInfo {
        id: format!("{host}-{pid}-{:04x}", rand::random::<u16>()),
        host,
        pid,
        metrics_url: metrics
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| format!("http://{a}/metrics")),
        transfer: spec.transfer_id.clone(),
    };
    if let Some(rate) = args.bwlimit {
        spec.settings.bwlimit = Some(rate.0);
    }
    let endpoints = EndpointArgs {
        src_endpoint: spec.sides.src_endpoint.clone(),
        dst_endpoint: spec.sides.dst_endpoint.clone(),
        src_profile: spec.sides.src_profile.clone(),
        dst_profile: spec.sides.dst_profile.clone(),
        src_region: spec.sides.src_region.clone(),
        dst_region: spec.sides.dst_region.clone(),
        requester_pays: spec.sides.requester_pays,
        src_anonymous: spec.sides.src_anonymous,
        rclone_config: args.rclone_config.clone(),
        cloud: args.cloud,
        relay: crate::relay_cmd::from_spec(spec.relay.as_ref())?,
    };
    let access = crate::Access::WriteChecked;
    let opened = crate::open_both(&spec.src, &spec.dst, &endpoints, spec.recursive, access).await;
    let (src, dst, relay) = match opened {
        Ok(opened) => opened,
        // A worker that cannot open a side cannot work: the coordinator hears so, as of
        // one that finds it out later.
        Err(mut e) => {
            let why = Error::new(exit::kind_of(e.code), e.message.clone());
            let told = worker::leave(&client, info, &why).await;
            e.message.push_str(left_note(told));
            return Err(e);
        }
    };
    let relay = relay.map(|r| r.stats());
    // Preempted (Kubernetes, SLURM): what it finished is reported and its leases go back
    // to the queue now, not when they expire.
    let counters = worker::run(
        (client, stopping),
        info,
        metrics,
        spec,
        (&src, &dst),
        relay,
        exit::terminated(),
    )
    .await
    .map_err(|e| match e {
        WorkerError::Unable { error, told } => {
            let mut e = exit::store(exit::side_of(&error, &src, &dst), error);
            e.message.push_str(left_note(told));
            e
        }
        WorkerError::Stopped { told } => CliError {
            code: ExitCode::Interrupted,
            message: format!("{e}{}", left_note(told)),
        },
        e => worker_error(e),
    })?;
    tracing::info!(
        "worker done: {} items in {} leases",
        counters.items.load(Ordering::Relaxed),
        counters.leases.load(Ordering::Relaxed)
    );
    Ok(())
}

/// How long a stopped worker keeps trying to tell the coordinator it leaves: a scheduler
/// kills it soon after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A local fleet's worker leaves a terminal's Ctrl-C, which reaches the whole process group,
/// to its coordinator, which stops it (SIGTERM) so that it finishes what is in flight and
/// reports it rather than die with it. A process group of its own would keep Ctrl-Z and a
/// hangup from it too. Once tokio handles a signal, the default action (ending the process)
/// is gone for good, so this handler need not be kept.
fn leave_interrupts_to_the_coordinator() {
    #[cfg(unix)]
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
}

/// What a worker that cannot work adds to its error: whether the coordinator heard that
/// it left the fleet.
fn left_note(told: bool) -> &'static str {
    match told {
        true => " (this worker left the fleet; its work went to the others)",
        false => " (this worker stopped; the coordinator could not be told, so its leases go to the others when they expire)",
    }
}

fn worker_error(e: WorkerError) -> CliError {
    let code = match &e {
        WorkerError::Coordinator(ClientError::Unauthorized(_)) => ExitCode::AccessDenied,
        WorkerError::Coordinator(ClientError::Unreachable { .. })
        | WorkerError::Coordinator(ClientError::Untrusted { .. }) => ExitCode::Unreachable,
        _ => ExitCode::PartialFailure,
    };
    CliError {
        code,
        message: e.to_string(),
    }
}

/// This machine's name, for worker ids and the status page.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}
