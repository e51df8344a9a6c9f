//! The `skyhaul` command: parses arguments, runs the engine, prints the report and turns
//! the outcome into an exit code. Everything else lives in the library crates.

mod args;
mod exit;
mod output;
mod size;

use args::{Cli, Command, TransferArgs};
use clap::Parser;
use exit::ExitCode;
use skyhaul_engine::{
    open_destination, open_source, Compare, Mode, Progress, SideOptions, TransferOptions,
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

async fn transfer(args: TransferArgs, mode: Mode, recursive: bool) -> ExitCode {
    let out = output::Output::new(args.quiet, args.json);
    let result: Result<ExitCode, exit::CliError> = async {
        let src_loc = Location::parse(&args.src).map_err(exit::usage)?;
        let dst_loc = Location::parse(&args.dst).map_err(exit::usage)?;
        let src_side = side_options(
            "SRC",
            args.src_endpoint.clone(),
            args.src_profile.clone(),
            args.src_region.clone(),
        );
        let dst_side = side_options(
            "DST",
            args.dst_endpoint.clone(),
            args.dst_profile.clone(),
            args.dst_region.clone(),
        );
        let src = open_source(&src_loc, &src_side, recursive)
            .await
            .map_err(|e| exit::store("SRC", e))?;
        let dst = open_destination(&dst_loc, &dst_side, recursive)
            .await
            .map_err(|e| exit::store("DST", e))?;
        let opts = TransferOptions {
            mode,
            recursive,
            max_connections: args.max_connections.into(),
            memory_budget: args.memory_budget.0,
            part_size: args.part_size.0,
            multipart_threshold: args.multipart_threshold.0,
            retry: skyhaul_engine::retry::RetryPolicy {
                retries: args.retries,
                ..Default::default()
            },
            server_side_copy: !args.no_server_side_copy,
        };
        let progress = Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        exit::on_ctrl_c(cancel.clone(), out);
        let display = out.start_progress(progress.clone());
        let report = skyhaul_engine::transfer(&src, &dst, &opts, progress, cancel.clone()).await;
        display.finish();
        let report = report.map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;
        out.report(&report);
        Ok(if cancel.is_cancelled() {
            ExitCode::Interrupted
        } else if report.succeeded() {
            ExitCode::Ok
        } else {
            ExitCode::PartialFailure
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
