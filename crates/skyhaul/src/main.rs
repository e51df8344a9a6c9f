//! The `skyhaul` command: parses arguments, runs the engine, prints the report and turns
//! the outcome into an exit code. Everything else lives in the library crates.

mod args;
mod config;
mod config_cmd;
mod confirm;
mod estimate;
mod events;
mod exit;
mod fleet_cmd;
mod init_cmd;
mod journal_cmds;
mod launch_cmd;
mod output;
mod place;
mod plan_cmd;
mod prices;
mod relay_cmd;
mod remotes;
mod settings;
mod size;

use args::{Cli, Command, EndpointArgs, TransferArgs, VerifyArgs};
use clap::Parser;
use exit::ExitCode;
use skyhaul_engine::{
    open_destination, open_source, verify_locations, Compare, Endpoint, Filter, Mode, Progress,
    SideOptions, TransferOptions, VerifyMode,
};
use skyhaul_location::{Location, Overlap, Scheme};
use skyhaul_s3::S3Options;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// glibc's malloc keeps freed part buffers in per-thread arenas: a 1 GiB copy with a 64 MiB
/// budget peaked at 200 MiB RSS (85 MiB with one arena). jemalloc reuses them across
/// threads, so memory stays near the budget.
#[cfg(all(unix, not(target_os = "openbsd")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    unset_blank_settings();
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // A consumer of `--json` reads the last line: a usage error ends with an error
        // event there too (clap's own text goes to stderr, as always). Only a flag: after
        // `--` it would be a path.
        let json = std::env::args_os()
            .take_while(|a| a != "--")
            .any(|a| a == "--json");
        if e.use_stderr() && json {
            // Its first paragraph: what is wrong, without the usage that follows.
            let text = e.render().to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).collect();
            events::emit(&events::Event::Error {
                message: first.join(" ").trim_start_matches("error: "),
                exit_code: e.exit_code(),
            });
        }
        e.exit()
    });
    init_logging(cli.verbose, cli.quiet());
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    std::process::exit(code as i32);
}

/// Raises this process's soft limit of open files to its hard limit, as Go programs
/// (rclone, s5cmd) do at start: the usual soft limit of 1,024 is the whole budget of a
/// relay gateway or a fleet's coordinator serving many connections, and a flood of idle
/// ones could otherwise use it up. Where the hard limit is none (macOS), as high as the
/// system takes (macOS refuses more than `OPEN_MAX`, 10,240).
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let limit = getrlimit(Resource::Nofile);
        let Some(soft) = limit.current else {
            return;
        };
        let targets = match limit.maximum {
            Some(hard) => vec![hard],
            None => vec![1 << 20, 10_240],
        };
        for target in targets.into_iter().filter(|&t| t > soft) {
            let raised = rustix::process::Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => return,
                Err(e) => tracing::debug!("cannot raise the limit of open files to {target}: {e}"),
            }
        }
    }
}

/// An empty or blank `SKYHAUL_*` variable means unset, for the ones clap reads too: a
/// script that clears `SKYHAUL_DST_ENDPOINT=` must not be taken to name an endpoint "".
/// Run first, while this process has one thread.
fn unset_blank_settings() {
    for (name, value) in std::env::vars_os() {
        let ours = name.to_str().is_some_and(|n| n.starts_with("SKYHAUL_"));
        if ours && value.to_str().is_some_and(|v| v.trim().is_empty()) {
            std::env::remove_var(name);
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match verbose {
        // -q: errors only, also the libraries' (the AWS SDK warns of unreadable profiles).
        0 if quiet => "error,rustls_platform_verifier=off",
        // The AWS SDK warns about every provider it tries; those are not the user's problem.
        // A certificate the platform verifier rejects is reported once, as the error itself.
        0 => "warn,aws_config=error,aws_smithy_runtime=error,rustls_platform_verifier=off",
        // aws_config's warnings can quote a credential_process's stderr: -vv only.
        1 => "info,aws_config=error,aws_smithy_runtime=warn",
        _ => "debug,aws=info,hyper=info,h2=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKYHAUL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal: a log piped to a file or a collector gets
    // plain text, not escape codes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output::LogWriter::new)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Cp(args) => {
            let fleet = fleet_cmd::Fleet::local(&args.fleet);
            transfer(args.common, Mode::Copy, args.recursive, fleet).await
        }
        Command::Coordinator(args) => {
            let (common, fleet_args, mode, recursive) = match args.transfer {
                args::CoordinatedTransfer::Cp(a) => (a.common, a.fleet, Mode::Copy, a.recursive),
                args::CoordinatedTransfer::Sync(a) => (
                    a.common,
                    a.fleet,
                    sync_mode(a.delete, a.size_only, a.checksum),
                    true,
                ),
            };
            let tls = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            let fleet = fleet_cmd::Fleet::coordinator(
                args.listen,
                args.token.as_deref(),
                tls,
                &fleet_args,
                args.relay_stop_gateways,
            )
            .map(Some);
            transfer(common, mode, recursive, fleet).await
        }
        Command::Worker(args) => fleet_cmd::worker(args).await,
        Command::Gateway(args) => relay_cmd::gateway(args).await,
        Command::Launch(args) => launch_cmd::run(args),
        Command::Verify(args) => verify(args).await,
        Command::Status(args) => journal_cmds::status(args),
        Command::Clean(args) => journal_cmds::clean(args).await,
        Command::Config(args) => config_cmd::run(args),
        Command::Plan(args) => plan_cmd::run(args).await,
        Command::Init(args) => init_cmd::run(args),
        Command::Prices { prices } => prices::show(prices.as_deref()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "skyhaul", &mut std::io::stdout());
            ExitCode::Ok
        }
        Command::Man { command } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            if let Some(name) = command {
                // The page the main one names as skyhaul-NAME(1).
                cmd.build();
                let Some(sub) = cmd.find_subcommand(&name).cloned() else {
                    eprintln!("skyhaul: error: no command '{name}' (`skyhaul --help` lists them)");
                    return ExitCode::Usage;
                };
                cmd = sub.name(format!("skyhaul-{name}"));
            }
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::Ok,
                Err(e) => {
                    eprintln!("skyhaul: error: writing the man page: {e}");
                    ExitCode::PartialFailure
                }
            }
        }
        Command::Sync(args) => {
            let fleet = fleet_cmd::Fleet::local(&args.fleet);
            let mode = sync_mode(args.delete, args.size_only, args.checksum);
            transfer(args.common, mode, true, fleet).await
        }
    }
}

fn sync_mode(delete: bool, size_only: bool, checksum: bool) -> Mode {
    let compare = if size_only {
        Compare::SizeOnly
    } else if checksum {
        Compare::Checksum
    } else {
        Compare::SizeAndTime
    };
    Mode::Sync { delete, compare }
}

/// Reads one side's credentials from `SKYHAUL_{SIDE}_*`, then from the named remote (if
/// the location is one); unset ones fall back to the standard AWS chain inside the SDK.
/// Flags and `SKYHAUL_*` settings win over the remote's; requester-pays is on when either
/// the flag or the remote says so.
fn side_options(
    side: &str,
    endpoint: Option<String>,
    profile: Option<String>,
    region: Option<String>,
    requester_pays: bool,
    remote: Option<&remotes::ResolvedRemote>,
    cloud: &args::CloudArgs,
) -> SideOptions {
    let (gcs, azure) = settings::cloud_options(side, endpoint.clone(), cloud);
    let var = |name: &str| {
        std::env::var(format!("SKYHAUL_{side}_{name}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    let from_remote =
        |f: fn(&remotes::ResolvedRemote) -> &Option<String>| remote.and_then(|r| f(r).clone());
    let env_keys = var("ACCESS_KEY_ID").is_some();
    let (access_key_id, secret_access_key, session_token) = if env_keys {
        (
            var("ACCESS_KEY_ID"),
            var("SECRET_ACCESS_KEY"),
            var("SESSION_TOKEN"),
        )
    } else {
        (
            from_remote(|r| &r.access_key_id),
            from_remote(|r| &r.secret_access_key),
            from_remote(|r| &r.session_token),
        )
    };
    SideOptions {
        s3: S3Options {
            endpoint: endpoint.or_else(|| from_remote(|r| &r.endpoint)),
            region: region.or_else(|| from_remote(|r| &r.region)),
            profile: profile.or_else(|| from_remote(|r| &r.profile)),
            access_key_id,
            secret_access_key,
            session_token,
            path_style: None,
            requester_pays: requester_pays || remote.is_some_and(|r| r.requester_pays),
            anonymous: false,
        },
        gcs,
        azure,
    }
}

/// Parses a location, resolving `REMOTE:bucket/path` to its `s3://` form and the remote.
fn location(
    text: &str,
    config: &config::Config,
    rclone_config: Option<&std::path::Path>,
) -> Result<(Location, Option<remotes::ResolvedRemote>), exit::CliError> {
    let remote = remotes::resolve(text, config, rclone_config).map_err(exit::usage)?;
    let url = remote.as_ref().map(|r| r.url());
    let loc = Location::parse(url.as_deref().unwrap_or(text)).map_err(exit::usage)?;
    Ok((loc, remote))
}

/// A location's path as the store sees it: a local path with its symlinks resolved as far
/// as it exists (its last component only when `whole`: a single file's own name is what a
/// copy writes beside), and an existing directory in directory form (a file copied there
/// lands inside).
fn stored_path(loc: &Location, whole: bool) -> String {
    if loc.scheme != Scheme::Local {
        return loc.path.clone();
    }
    let path = loc.local_path();
    let mut missing = Vec::new();
    let mut existing = path.as_path();
    if !whole {
        if let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) {
            missing.push(name.to_owned());
            existing = parent;
        }
    }
    let resolved = loop {
        match std::fs::canonicalize(existing) {
            Ok(p) => break p,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name.to_owned());
                    existing = parent;
                }
                _ => return loc.path.clone(),
            },
        }
    };
    let full = missing.iter().rev().fold(resolved, |p, name| p.join(name));
    let mut text = full.to_string_lossy().into_owned();
    if (loc.is_dir_form() || full.is_dir()) && !text.ends_with('/') {
        text.push('/');
    }
    text
}

/// What a command does with its destination, for [`open_both`].
pub(crate) enum Access<'a> {
    /// Reads it only (`verify`, `plan`).
    Read,
    /// Writes it: refused where it overlaps the source, unless the filter leaves the
    /// destination out of the source.
    Write(&'a Filter),
    /// Writes it for a coordinator that made that check, with the transfer's filter (a
    /// fleet worker, which is not sent the filter).
    WriteChecked,
}

/// Parses both locations and opens both stores; with `--relay` the destination is reached
/// through relay gateways, whose byte counts come back as the third value.
pub(crate) async fn open_both(
    src: &str,
    dst: &str,
    e: &EndpointArgs,
    recursive: bool,
    access: Access<'_>,
) -> Result<(Endpoint, Endpoint, Option<Arc<skyhaul_relay::RelayStore>>), exit::CliError> {
    let writes = !matches!(access, Access::Read);
    let config = settings::load_config()?;
    let rclone = e.rclone_config.as_deref();
    let (src_loc, src_remote) = location(src, &config, rclone)?;
    let (dst_loc, dst_remote) = location(dst, &config, rclone)?;
    if writes && dst_loc.has_dot_segment() {
        return Err(exit::usage(format!(
            "'{dst_loc}': a '.' or '..' in a bucket path is part of the key there, not a step \
             between directories; name the destination prefix without it"
        )));
    }
    let src_side = side_options(
        "SRC",
        e.src_endpoint.clone(),
        e.src_profile.clone(),
        e.src_region.clone(),
        e.requester_pays,
        src_remote.as_ref(),
        &e.cloud,
    )
    .with_anonymous(e.src_anonymous);
    let dst_side = side_options(
        "DST",
        e.dst_endpoint.clone(),
        e.dst_profile.clone(),
        e.dst_region.clone(),
        e.requester_pays,
        dst_remote.as_ref(),
        &e.cloud,
    );
    let src = open_source(&src_loc, &src_side, recursive)
        .await
        .map_err(|e| exit::store("SRC", e))?;
    if !e.relay.relay.is_empty() {
        let (dst, relay) = relay_cmd::open_destination(&dst_loc, &e.relay).await?;
        return Ok((src, dst, Some(relay)));
    }
    let dst = open_destination(&dst_loc, &dst_side, recursive, writes)
        .await
        .map_err(|e| exit::store("DST", e))?;
    if let Access::Write(filter) = access {
        refuse_overlap(&src_loc, &src, &dst_loc, &dst, recursive, filter)?;
    }
    Ok((src, dst, None))
}

/// Refuses a copy whose source and destination overlap in one store (see
/// `skyhaul_location::overlap`): it would copy its own output, overwrite its source, or,
/// with `--delete`, delete it. Stores are the same when they hold the same objects
/// (`Store::place`: the same endpoint, account and bucket, whatever the credentials); local
/// paths are compared with their symlinks resolved. Nothing has been read yet. As in
/// rclone, a destination inside the source is allowed when the filter provably leaves out
/// everything there (`--exclude 'backup/**'`): the copy then never lists its own output,
/// and a sync's deletions stay inside the destination, which the source leaves out.
fn refuse_overlap(
    src_loc: &Location,
    src: &Endpoint,
    dst_loc: &Location,
    dst: &Endpoint,
    recursive: bool,
    filter: &Filter,
) -> Result<(), exit::CliError> {
    let local = src_loc.scheme == Scheme::Local && dst_loc.scheme == Scheme::Local;
    let place = src.store.place();
    let same_store = local
        || (place.is_some()
            && place == dst.store.place()
            && src.store.container() == dst.store.container());
    if !same_store {
        return Ok(());
    }
    let (s, d) = (stored_path(src_loc, recursive), stored_path(dst_loc, true));
    match skyhaul_location::overlap(&s, &d, recursive) {
        Some(Overlap::DestinationInsideSource { at }) if filter.leaves_out(&at) => Ok(()),
        Some(o) => Err(exit::usage(
            o.explain(&src_loc.to_string(), &dst_loc.to_string()),
        )),
        None => Ok(()),
    }
}

async fn verify(args: VerifyArgs) -> ExitCode {
    let out = output::Output::new(args.output.quiet, args.output.json);
    let result: Result<ExitCode, exit::CliError> = async {
        let (src, dst, relay) = open_both(
            &args.src,
            &args.dst,
            &args.endpoints,
            args.recursive,
            Access::Read,
        )
        .await?;
        out.start("verify", &src, &dst, false);
        let mode = if args.deep {
            VerifyMode::Deep
        } else {
            VerifyMode::Checksum
        };
        let (filter, _) = settings::filter(&args.filter)?;
        let cancel = CancellationToken::new();
        let progress = Arc::new(Progress::stopped_by(cancel.clone()));
        exit::on_ctrl_c(cancel, out, exit::Stopping::Check);
        for side in [&src, &dst] {
            skyhaul_engine::reachable(side, &progress)
                .await
                .map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
        }
        let v = verify_locations(
            &src,
            &dst,
            args.recursive,
            mode,
            &filter,
            Default::default(),
            progress,
        )
        .await
        .map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
        out.verification(&v, relay.map(|r| r.summary()).as_ref());
        Ok(exit::verification(&v).unwrap_or(ExitCode::Ok))
    }
    .await;
    result.unwrap_or_else(|e| {
        out.error(&e.message, e.code);
        e.code
    })
}

/// Runs `cp` or `sync` here, or as a fleet's coordinator when `fleet` says so.
async fn transfer(
    args: TransferArgs,
    mode: Mode,
    recursive: bool,
    fleet: Result<Option<fleet_cmd::Fleet>, exit::CliError>,
) -> ExitCode {
    let command = match mode {
        Mode::Copy => "cp",
        Mode::Sync { .. } => "sync",
    };
    let out = output::Output::new(args.output.quiet, args.output.json);
    let result: Result<ExitCode, exit::CliError> = async {
        let fleet = fleet?;
        let stop_gateways = fleet.as_ref().is_some_and(|f| f.stop_gateways);
        if stop_gateways && args.endpoints.relay.relay.is_empty() {
            return Err(exit::usage(
                "--relay-stop-gateways: the transfer has no --relay gateways to stop",
            ));
        }
        let config = settings::load_config()?;
        let tuning = settings::tuning(&args, &config)?;
        let (filter, filter_identity) = settings::filter(&args.filter)?;
        let (src, dst, relay) = open_both(
            &args.src,
            &args.dst,
            &args.endpoints,
            recursive,
            Access::Write(&filter),
        )
        .await?;
        let storage_class = args
            .storage_class
            .as_deref()
            .map(|c| settings::storage_class(c, dst.store.as_ref()))
            .transpose()?;
        let opts = TransferOptions {
            mode,
            recursive,
            max_connections: tuning.max_connections.into(),
            memory_budget: tuning.memory_budget,
            part_size: tuning.part_size,
            multipart_threshold: tuning.multipart_threshold,
            retry: skyhaul_engine::retry::RetryPolicy {
                retries: tuning.retries,
                unreachable_retries: tuning.retries,
                ..Default::default()
            },
            server_side_copy: !args.no_server_side_copy,
            verify: tuning.verify,
            verify_sample: args.verify_sample,
            filter: Arc::new(filter),
            filter_identity,
            bwlimit: tuning
                .bwlimit
                .map(|rate| Arc::new(skyhaul_engine::BandwidthLimit::new(rate))),
            storage_class,
        };
        let cancel = CancellationToken::new();
        let progress = Arc::new(Progress::stopped_by(cancel.clone()));
        exit::on_ctrl_c(cancel.clone(), out, exit::Stopping::Transfer);
        out.start(command, &src, &dst, args.dry_run);
        if args.dry_run {
            // What an interrupted run of this transfer did is left out, as a rerun leaves
            // it out; the journal is read, never made or written.
            let journal = journal_cmds::existing(&args, &config);
            let mut plan = output::DryRun::new(out);
            let (p, c) = (progress.clone(), cancel.clone());
            skyhaul_engine::dry_run(&src, &dst, &opts, p, c, journal.as_ref(), |job| {
                plan.job(&src, &dst, job)
            })
            .await
            .map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
            let failed = plan.finish(progress.snapshot().objects_resumed, cancel.is_cancelled());
            // The exit code the real run would have, for scripts that gate on a dry run.
            return Ok(if cancel.is_cancelled() {
                ExitCode::Interrupted
            } else if failed > 0 {
                ExitCode::PartialFailure
            } else {
                ExitCode::Ok
            });
        }
        let note = match confirm::check(&src, &dst, &opts, args.yes, out, progress.clone()).await? {
            confirm::Decision::Go(note) => note,
            confirm::Decision::Declined => {
                out.notice("not confirmed: nothing was copied");
                return Ok(ExitCode::Interrupted);
            }
        };
        let display = out.start_progress(progress.clone());
        let journal = if args.no_journal {
            None
        } else {
            let path = settings::journal_path(args.journal.as_deref(), &config);
            Some(Arc::new(journal_cmds::open(path.as_deref())?))
        };
        let report = match fleet {
            Some(fleet) => {
                let mut spec = fleet_cmd::spec(&args, &opts, tuning.bwlimit);
                spec.relay = relay_cmd::spec(&args.endpoints.relay)?;
                fleet_cmd::coordinate(
                    fleet,
                    spec,
                    &src,
                    &dst,
                    &opts,
                    progress,
                    cancel.clone(),
                    journal,
                    relay.as_ref().map(|r| r.stats()),
                    out,
                )
                .await
            }
            None => {
                skyhaul_engine::transfer(&src, &dst, &opts, progress, cancel.clone(), journal).await
            }
        };
        display.finish();
        if let Some(note) = note {
            note.finish();
        }
        let mut report = report.map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
        report.interrupted = cancel.is_cancelled();
        out.report(&report, relay.map(|r| r.summary()).as_ref());
        // A difference found in what was copied wins over failures beside it: a script
        // acting on 6 must not miss it.
        let checked = report.verification.as_ref().and_then(exit::verification);
        let code = if report.interrupted {
            ExitCode::Interrupted
        } else if checked == Some(ExitCode::VerifyFailed) {
            ExitCode::VerifyFailed
        } else if let Some(f) = &report.check_failed {
            // After the report: why its copies are unchecked, with that error's code (a
            // destination that cannot be reached is 5, whatever failed beside it).
            let e = skyhaul_store::Error::new(f.kind, f.message.clone());
            let e = exit::store(exit::side_of(&e, &src, &dst), e);
            out.error(&e.message, e.code);
            e.code
        } else if report.objects_failed > 0 {
            ExitCode::PartialFailure
        } else {
            checked.unwrap_or(ExitCode::Ok)
        };
        // Only a transfer that is done: after a failure the gateways stay for the rerun (an
        // engine restarting the coordinator) until their --idle-exit.
        if stop_gateways && code == ExitCode::Ok {
            relay_cmd::stop_gateways(&args.endpoints.relay, out).await;
        }
        Ok(code)
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            out.error(&e.message, e.code);
            e.code
        }
    }
}
