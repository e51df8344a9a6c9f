//! The `skyhaul` command: parses arguments, runs the engine, prints the report and turns
//! the outcome into an exit code. Everything else lives in the library crates.

mod args;
mod exit;
mod journal_cmds;
mod output;
mod size;

use args::{Cli, Command, EndpointArgs, TransferArgs, VerifyArg, VerifyArgs};
use clap::Parser;
use exit::ExitCode;
use skyhaul_engine::{
    open_destination, open_source, verify_locations, Compare, Endpoint, Mode, Progress,
    SideOptions, TransferOptions, VerifyMode,
};
use skyhaul_location::Location;
use skyhaul_s3::S3Options;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    std::process::exit(code as i32);
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // The AWS SDK warns about every provider it tries; those are not the user's problem.
        0 => "warn,aws_config=error,aws_smithy_runtime=error",
        1 => "info,aws_config=warn,aws_smithy_runtime=warn",
        _ => "debug,aws=info,hyper=info,h2=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKYHAUL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Cp(args) => {
            let mode = Mode::Copy;
            let recursive = args.recursive;
            transfer(args.common, mode, recursive).await
        }
        Command::Verify(args) => verify(args).await,
        Command::Status(args) => journal_cmds::status(args),
        Command::Clean(args) => journal_cmds::clean(args).await,
        Command::Sync(args) => {
            let compare = if args.size_only {
                Compare::SizeOnly
            } else if args.checksum {
                Compare::Checksum
            } else {
                Compare::SizeAndTime
            };
            transfer(
                args.common,
                Mode::Sync {
                    delete: args.delete,
                    compare,
                },
                true,
            )
            .await
        }
    }
}

/// Reads one side's credentials from `SKYHAUL_{SIDE}_*`; unset ones fall back to the
/// standard AWS chain inside the SDK.
fn side_options(
    side: &str,
    endpoint: Option<String>,
    profile: Option<String>,
    region: Option<String>,
) -> SideOptions {
    let var = |name: &str| {
        std::env::var(format!("SKYHAUL_{side}_{name}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    SideOptions {
        s3: S3Options {
            endpoint,
            region,
            profile,
            access_key_id: var("ACCESS_KEY_ID"),
            secret_access_key: var("SECRET_ACCESS_KEY"),
            session_token: var("SESSION_TOKEN"),
            path_style: None,
        },
    }
}

/// Parses both locations and opens both stores.
async fn open_both(
    src: &str,
    dst: &str,
    e: &EndpointArgs,
    recursive: bool,
) -> Result<(Endpoint, Endpoint), exit::CliError> {
    let src_loc = Location::parse(src).map_err(exit::usage)?;
    let dst_loc = Location::parse(dst).map_err(exit::usage)?;
    let src_side = side_options(
        "SRC",
        e.src_endpoint.clone(),
        e.src_profile.clone(),
        e.src_region.clone(),
    );
    let dst_side = side_options(
        "DST",
        e.dst_endpoint.clone(),
        e.dst_profile.clone(),
        e.dst_region.clone(),
    );
    let src = open_source(&src_loc, &src_side, recursive)
        .await
        .map_err(|e| exit::store("SRC", e))?;
    let dst = open_destination(&dst_loc, &dst_side, recursive)
        .await
        .map_err(|e| exit::store("DST", e))?;
    Ok((src, dst))
}

async fn verify(args: VerifyArgs) -> ExitCode {
    let out = output::Output::new(args.output.quiet, args.output.json);
    let result: Result<ExitCode, exit::CliError> = async {
        let (src, dst) = open_both(&args.src, &args.dst, &args.endpoints, args.recursive).await?;
        let mode = if args.deep {
            VerifyMode::Deep
        } else {
            VerifyMode::Checksum
        };
        let progress = Arc::new(Progress::default());
        let v = verify_locations(
            &src,
            &dst,
            args.recursive,
            mode,
            Default::default(),
            progress,
        )
        .await
        .map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
        out.verification(&v);
        Ok(if v.passed() {
            ExitCode::Ok
        } else {
            ExitCode::VerifyFailed
        })
    }
    .await;
    result.unwrap_or_else(|e| {
        out.error(&e.message);
        e.code
    })
}

async fn transfer(args: TransferArgs, mode: Mode, recursive: bool) -> ExitCode {
    let out = output::Output::new(args.output.quiet, args.output.json);
    let result: Result<ExitCode, exit::CliError> = async {
        let (src, dst) = open_both(&args.src, &args.dst, &args.endpoints, recursive).await?;
        let opts = TransferOptions {
            mode,
            recursive,
            max_connections: args.max_connections.into(),
            memory_budget: args.memory_budget.0,
            part_size: args.part_size.0,
            multipart_threshold: args.multipart_threshold.0,
            retry: skyhaul_engine::retry::RetryPolicy {
                retries: args.retries,
                unreachable_retries: args.retries,
                ..Default::default()
            },
            server_side_copy: !args.no_server_side_copy,
            verify: match args.verify {
                VerifyArg::None => VerifyMode::None,
                VerifyArg::Size => VerifyMode::Size,
                VerifyArg::Checksum => VerifyMode::Checksum,
                VerifyArg::Deep => VerifyMode::Deep,
            },
            verify_sample: args.verify_sample,
        };
        let progress = Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        exit::on_ctrl_c(cancel.clone(), out);
        let display = out.start_progress(progress.clone());
        let journal = if args.no_journal {
            None
        } else {
            Some(Arc::new(journal_cmds::open(args.journal.as_deref())?))
        };
        let report =
            skyhaul_engine::transfer(&src, &dst, &opts, progress, cancel.clone(), journal).await;
        display.finish();
        let report = report.map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
        out.report(&report);
        Ok(if cancel.is_cancelled() {
            ExitCode::Interrupted
        } else if report.objects_failed > 0 {
            ExitCode::PartialFailure
        } else if !report.verified() {
            ExitCode::VerifyFailed
        } else {
            ExitCode::Ok
        })
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            out.error(&e.message);
            e.code
        }
    }
}
