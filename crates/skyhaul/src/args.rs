//! The command line, as clap derives it.

use crate::size::Size;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "skyhaul",
    version,
    about = "Fast, verifiable, resumable bulk data transfer between object stores and file systems",
    after_help = "Locations: s3://BUCKET/PREFIX, /abs/path, ./rel/path, file:///abs/path\n\
Credentials per side: --src-profile/--dst-profile, or SKYHAUL_SRC_ACCESS_KEY_ID,\n\
SKYHAUL_SRC_SECRET_ACCESS_KEY, SKYHAUL_SRC_SESSION_TOKEN (and the same with DST),\n\
falling back to the standard AWS environment and profile chain."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v info, -vv debug); SKYHAUL_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy one object or file, or everything under a prefix or directory with -r
    #[command(after_help = "Examples:\n  \
skyhaul cp ./model.bin s3://bucket/models/\n  \
skyhaul cp -r s3://src-bucket/data /mnt/data\n  \
skyhaul cp -r s3://a/data s3://b/data --src-profile acct-a --dst-profile acct-b \\\n      \
--dst-endpoint https://storage.eu-north1.nebius.cloud")]
    Cp(CpArgs),
    /// Copy what is missing or changed at the destination (deletes only with --delete)
    #[command(after_help = "Examples:\n  \
skyhaul sync ./dataset s3://bucket/dataset\n  \
skyhaul sync s3://bucket/a s3://bucket/b --size-only\n  \
skyhaul sync --delete s3://src/data /mnt/mirror")]
    Sync(SyncArgs),
    /// Compare two locations: missing, extra and different objects (exit code 6 if any)
    #[command(after_help = "Examples:\n  \
skyhaul verify -r s3://src/data s3://dst/data --dst-endpoint https://r2.example.com\n  \
skyhaul verify -r --deep /data s3://bucket/data")]
    Verify(VerifyArgs),
    /// List the transfers in the journal and their progress
    Status(StatusArgs),
    /// Abort a transfer's leftover multipart uploads and forget it
    #[command(
        after_help = "Examples:\n  skyhaul status\n  skyhaul clean 3f2a --dst-profile nebius"
    )]
    Clean(CleanArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The journal to read [default: $SKYHAUL_JOURNAL, else the user's data dir]
    #[arg(long, value_name = "PATH")]
    pub journal: Option<std::path::PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// The transfer's id (or a unique prefix of it), as `skyhaul status` shows it
    pub id: String,
    /// The journal to use [default: $SKYHAUL_JOURNAL, else the user's data dir]
    #[arg(long, value_name = "PATH")]
    pub journal: Option<std::path::PathBuf>,
    /// Destination endpoint (default: the one the transfer used)
    #[arg(long, env = "SKYHAUL_DST_ENDPOINT")]
    pub dst_endpoint: Option<String>,
    /// Destination profile
    #[arg(long, env = "SKYHAUL_DST_PROFILE")]
    pub dst_profile: Option<String>,
    /// Destination region
    #[arg(long, env = "SKYHAUL_DST_REGION")]
    pub dst_region: Option<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy everything under SRC (a prefix or directory)
    #[arg(short, long)]
    pub recursive: bool,
    #[command(flatten)]
    pub common: TransferArgs,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Delete destination objects that do not exist at the source (after all copies succeed)
    #[arg(long)]
    pub delete: bool,
    /// Treat objects of equal size as unchanged
    #[arg(long, conflicts_with = "checksum")]
    pub size_only: bool,
    /// Compare content checksums where both sides have comparable ones
    #[arg(long)]
    pub checksum: bool,
    #[command(flatten)]
    pub common: TransferArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Source: s3://bucket/key-or-prefix or a local path
    pub src: String,
    /// Destination: s3://bucket/key-or-prefix or a local path
    pub dst: String,
    /// Compare everything under SRC and DST (prefixes or directories)
    #[arg(short, long)]
    pub recursive: bool,
    /// Re-read both sides and compare CRC64s where ETags are not comparable
    #[arg(long)]
    pub deep: bool,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where each side is and how to sign in there.
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// Endpoint URL of the source store (any S3-compatible service)
    #[arg(long, env = "SKYHAUL_SRC_ENDPOINT")]
    pub src_endpoint: Option<String>,
    /// Endpoint URL of the destination store
    #[arg(long, env = "SKYHAUL_DST_ENDPOINT")]
    pub dst_endpoint: Option<String>,
    /// AWS shared-config profile for the source (SSO and credential_process work)
    #[arg(long, env = "SKYHAUL_SRC_PROFILE")]
    pub src_profile: Option<String>,
    /// AWS shared-config profile for the destination
    #[arg(long, env = "SKYHAUL_DST_PROFILE")]
    pub dst_profile: Option<String>,
    /// Region of the source bucket
    #[arg(long, env = "SKYHAUL_SRC_REGION")]
    pub src_region: Option<String>,
    /// Region of the destination bucket
    #[arg(long, env = "SKYHAUL_DST_REGION")]
    pub dst_region: Option<String>,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print only errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the final report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// How much the check after a copy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyArg {
    /// No check
    None,
    /// Every copied object is at the destination with the right size
    Size,
    /// Also its checksum (ETag) where the destination reports a comparable one
    Checksum,
    /// Re-read every copied object from the destination and compare CRC64s
    Deep,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Source: s3://bucket/key-or-prefix or a local path
    pub src: String,
    /// Destination: s3://bucket/key-or-prefix or a local path
    pub dst: String,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Concurrent requests per side
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: u16,
    /// Most bytes buffered in memory at once
    #[arg(long, default_value = "256M")]
    pub memory_budget: Size,
    /// Preferred part size for striped (multipart) objects
    #[arg(long, default_value = "16M")]
    pub part_size: Size,
    /// Objects larger than this are striped into parts
    #[arg(long, default_value = "32M")]
    pub multipart_threshold: Size,
    /// Retries per request on throttling, 5xx, timeouts and resets
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
    /// Move bytes through this machine even when the store could copy them itself
    #[arg(long)]
    pub no_server_side_copy: bool,
    /// The journal that makes reruns resume [default: $SKYHAUL_JOURNAL, else the user's data dir]
    #[arg(long, value_name = "PATH")]
    pub journal: Option<std::path::PathBuf>,
    /// Keep no journal: a rerun starts over
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,
    /// What to check at the destination after copying
    #[arg(long, value_enum, default_value = "checksum")]
    pub verify: VerifyArg,
    /// Check only this percentage of the copied objects (a deterministic sample)
    #[arg(long, default_value_t = 100.0, value_parser = percent)]
    pub verify_sample: f64,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("'{s}' is not a percentage in (0, 100]")),
    }
}
