//! The command line, as clap derives it.

use crate::size::{Rate, Size};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "skyhaul",
    version,
    about = "Fast, verifiable, resumable bulk data transfer between object stores and file systems",
    after_help = "Locations: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX,\n\
https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX, /abs/path, ./rel/path, file:///abs/path,\n\
REMOTE:BUCKET/PREFIX (a remote from `skyhaul config` or an rclone.conf)\n\
Credentials per side: --src-profile/--dst-profile, or SKYHAUL_SRC_ACCESS_KEY_ID,\n\
SKYHAUL_SRC_SECRET_ACCESS_KEY, SKYHAUL_SRC_SESSION_TOKEN (and the same with DST),\n\
falling back to the standard AWS environment and profile chain.\n\
GCS: --src-gcs-service-account, else application-default credentials; STORAGE_EMULATOR_HOST.\n\
Azure: --src-azure-key / -sas / -connection-string (or SKYHAUL_SRC_AZURE_*), else\n\
AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY, Entra ID.\n\
--src-endpoint/--dst-endpoint point any kind at another endpoint or an emulator.\n\n\
Exit codes: 0 done (and verified), 1 some objects failed (each listed) or an unexpected\n\
error, 2 bad arguments, 3 not found, 4 access denied, 5 an endpoint unreachable,\n\
6 verification found differences, 7 the destination cannot take the data,\n\
130 interrupted (Ctrl-C, SIGTERM) or not confirmed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v info, -vv debug); SKYHAUL_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Cli {
    /// Whether the command was given `-q`: its log shows errors only.
    pub fn quiet(&self) -> bool {
        match &self.command {
            Command::Cp(a) => a.common.output.quiet,
            Command::Sync(a) => a.common.output.quiet,
            Command::Plan(a) => a.common.output.quiet,
            Command::Verify(a) => a.output.quiet,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy one object or file, or everything under a prefix or directory with -r
    #[command(after_help = "Examples:\n  \
skyhaul cp ./model.bin s3://bucket/models/\n  \
skyhaul cp -r s3://src-bucket/data /mnt/data\n  \
skyhaul cp -r s3://a/data s3://b/data \\\n      \
--src-profile acct-a --dst-profile acct-b \\\n      \
--dst-endpoint https://storage.eu-north1.nebius.cloud\n  \
skyhaul cp -r s3://bucket/logs ./logs --include '*.gz' --exclude 'tmp/**' \\\n      \
--newer-than 7d\n  \
skyhaul cp -r s3://bucket/data ./data --files-from keys.txt --dry-run\n  \
skyhaul cp -r nebius:training-data/imagenet /mnt/imagenet   # rclone remote")]
    Cp(CpArgs),
    /// Copy what is missing or changed at the destination (deletes only with --delete)
    #[command(after_help = "Examples:\n  \
skyhaul sync ./dataset s3://bucket/dataset\n  \
skyhaul sync s3://bucket/a s3://bucket/b --size-only\n  \
skyhaul sync --delete s3://src/data /mnt/mirror\n  \
skyhaul sync --delete --exclude 'local/**' \\\n      \
s3://src/data /mnt/mirror   # never deletes local/\n  \
skyhaul sync --delete --dry-run s3://src/data /mnt/mirror")]
    Sync(SyncArgs),
    /// Compare two locations: missing, extra and different objects (exit code 6 if any)
    #[command(
        after_help = "What the filters leave out is not compared, as cp and sync \
with the same filters leave it out.\n\nExamples:\n  \
skyhaul verify -r s3://src/data s3://dst/data \\\n      \
--dst-endpoint https://r2.example.com\n  \
skyhaul verify -r --deep /data s3://bucket/data\n  \
skyhaul verify -r --exclude '*.tmp' /data s3://bucket/data"
    )]
    Verify(VerifyArgs),
    /// Estimate a transfer before running it: objects, bytes, time, egress and request costs
    #[command(after_help = "Examples:\n  \
skyhaul plan -r s3://src-bucket/data s3://dst-bucket/data \\\n      \
--src-region us-east-1 --dst-region eu-west-1\n  \
skyhaul plan -r s3://bucket/data gs://mirror/data --dst-region us-central1\n  \
skyhaul plan -r /mnt/data s3://bucket/data --src-cloud aws \\\n      \
--src-region us-east-1 --json\n  \
skyhaul plan -r --sync --delete s3://src/data s3://dst/data \\\n      \
--prices my-prices.toml\n  \
skyhaul prices > my-prices.toml   # the built-in table, to edit\n\n\
The source's provider charges egress for every byte that leaves its region; each side's\n\
provider charges its requests. Providers come from --src-cloud/--dst-cloud, else the\n\
endpoint's host (amazonaws.com, storage.googleapis.com, blob.core.windows.net,\n\
r2.cloudflarestorage.com), else the remote's provider, else AWS for s3:// without an\n\
endpoint; what cannot be known is shown as unknown.")]
    Plan(PlanArgs),
    /// Print the price table `plan` uses, with the date and source of its prices
    #[command(after_help = "Examples:\n  \
skyhaul prices                        # the built-in table\n  \
skyhaul prices --prices my.toml       # with my.toml laid over it\n  \
skyhaul prices > my.toml              # to edit: keep the lines you change")]
    Prices {
        /// A price file to lay over the built-in table [config: prices]
        #[arg(long, value_name = "FILE")]
        prices: Option<std::path::PathBuf>,
    },
    /// Find AWS, GCP and Azure credentials here and record where they are (never secrets)
    #[command(after_help = "Examples:\n  \
skyhaul init             # record what was found\n  \
skyhaul init --dry-run   # only show it\n\n\
Looks at ~/.aws/config and ~/.aws/credentials (profile names and regions; $AWS_CONFIG_FILE,\n\
$AWS_SHARED_CREDENTIALS_FILE), GCP application-default credentials\n\
($GOOGLE_APPLICATION_CREDENTIALS, ~/.config/gcloud/application_default_credentials.json:\n\
the path only) and AZURE_* variables (names only). Each AWS profile becomes a remote\n\
(`aws` for the default profile, `aws-NAME` for the others). Re-running adds what is new and\n\
never changes a key that is already set.")]
    Init(InitArgs),
    /// List the transfers in the journal and their progress
    #[command(
        after_help = "Examples:\n  skyhaul status\n  skyhaul status --json --journal /data/skyhaul-journal.sqlite"
    )]
    Status(StatusArgs),
    /// Abort a transfer's leftover multipart uploads and forget it
    #[command(
        after_help = "Examples:\n  skyhaul status\n  skyhaul clean 3f2a --dst-profile nebius",
        // Only the destination has uploads to abort.
        mut_arg("src_gcs_service_account", |a| a.hide(true)),
        mut_arg("src_azure_account", |a| a.hide(true)),
        mut_arg("src_azure_key", |a| a.hide(true)),
        mut_arg("src_azure_sas", |a| a.hide(true)),
        mut_arg("src_azure_connection_string", |a| a.hide(true))
    )]
    Clean(CleanArgs),
    /// Show or change the config file (precedence: flag > environment > file > built-in)
    #[command(
        after_help = "Keys: max_connections, memory_budget, part_size, multipart_threshold, retries,\n\
verify, journal, bwlimit, prices, gcp_adc_file, azure_env,\n\
remotes.NAME.{type,provider,endpoint,region,profile,requester_pays}\n\
File: $SKYHAUL_CONFIG, else ~/.config/skyhaul/config.toml (no secrets are stored)\n\n\
Examples:\n  \
skyhaul config set max_connections 128\n  \
skyhaul config set remotes.nebius.endpoint \\\n      \
https://storage.eu-north1.nebius.cloud\n  \
skyhaul config list\n  \
skyhaul config unset max_connections"
    )]
    Config(ConfigArgs),
    /// Print a shell completion script
    #[command(after_help = "Examples:\n  \
skyhaul completions bash > ~/.local/share/bash-completion/completions/skyhaul\n  \
skyhaul completions zsh > \"${fpath[1]}/_skyhaul\"\n  \
skyhaul completions fish > ~/.config/fish/completions/skyhaul.fish")]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Coordinate a transfer that workers on other machines carry out (`skyhaul worker`)
    #[command(after_help = "Examples:\n  \
export SKYHAUL_FLEET_TOKEN=$(openssl rand -hex 32)\n  \
skyhaul coordinator --listen 0.0.0.0:7070 cp -r s3://src/data s3://dst/data\n  \
skyhaul coordinator --listen 10.0.0.5:7070 \\\n      \
sync --delete s3://src/data /mnt/shared/data --lease-timeout 1m\n\n\
Workers need the same token and their own credentials for both sides. The coordinator\n\
plans, hands out work, completes multipart uploads, keeps the journal and verifies; it\n\
also serves GET /v1/status (JSON) and GET /metrics (Prometheus), with the token.")]
    Coordinator(CoordinatorArgs),
    /// Work for a coordinator until its transfer is over
    #[command(after_help = "Examples:\n  \
SKYHAUL_FLEET_TOKEN=... skyhaul worker --coordinator http://10.0.0.5:7070\n  \
skyhaul worker --coordinator http://head:7070 --metrics-listen 0.0.0.0:9101\n\n\
Credentials for both sides come from this machine's environment (SKYHAUL_SRC_*,\n\
SKYHAUL_DST_*, AWS profiles, instance roles): the coordinator never sends any.")]
    Worker(WorkerArgs),
    /// Run a relay gateway near the destination: it receives a relayed transfer's compressed, encrypted chunks and writes them to the destination store
    #[command(after_help = "Examples:\n  \
export SKYHAUL_RELAY_KEY=$(openssl rand -hex 32)   # same on both sides\n  \
skyhaul gateway --listen 0.0.0.0:7400 s3://dst-bucket --dst-region eu-west-1\n  \
skyhaul cp -r s3://src/data s3://dst-bucket/data \\\n      \
--relay gw1:7400,gw2:7400   # near the source\n  \
skyhaul gateway --listen 0.0.0.0:7400 s3://dst-bucket \\\n      \
--tls-cert gw.pem --tls-key gw.key\n  \
skyhaul cp -r s3://src/data s3://dst-bucket/data --relay gw1:7400 \\\n      \
--relay-tls-ca ca.pem\n\n\
The destination's credentials (SKYHAUL_DST_*, profiles, instance roles) are this machine's;\n\
they never cross the link. Frames whose tag or checksum fails are refused and re-sent.")]
    Gateway(GatewayArgs),
    /// Write (and with --submit, submit) a job that runs a fleet on SLURM, SkyPilot, Kubernetes or SSH hosts
    #[command(after_help = "Examples:\n  \
skyhaul launch --backend slurm --nodes 8 -- cp -r s3://src/data s3://dst/data\n  \
skyhaul launch --backend skypilot --nodes 8 --spot --cpus 16+ \\\n      \
-- sync s3://a/x s3://b/x\n  \
skyhaul launch --backend kubernetes --nodes 4 --image registry/skyhaul:0.1 \\\n      \
-- cp -r s3://a s3://b\n  \
skyhaul launch --backend ssh --hosts h1,h2,h3 --submit \\\n      \
-- cp -r /shared/data s3://bucket/data\n  \
skyhaul launch --backend skypilot --gateways 2 --gateway-region eu-west-1 \\\n      \
-- cp -r s3://a s3://b\n  \
skyhaul launch --backend kubernetes --image registry/skyhaul:0.1 \\\n      \
--gateways 2 --gateway-kube-context dst-cluster -- cp -r s3://a s3://b\n  \
skyhaul launch --backend slurm --gateways 2 --gateway-tls-cert gw.pem \\\n      \
--gateway-tls-key gw.key --relay-tls-ca ca.pem -- cp -r s3://a s3://b\n\n\
Rank 0 runs the coordinator (and one worker), every other rank a worker. No secret is\n\
written into the file: SLURM and SSH pass the submitting shell's environment\n\
(SKYHAUL_FLEET_TOKEN, SKYHAUL_SRC_*, SKYHAUL_DST_*, AWS_*), SkyPilot takes them as\n\
--secret at launch, Kubernetes from the Secret named by --secret.\n\n\
The fleet's SkyPilot cluster goes down by itself once its job has ended (sky launch --down,\n\
and autodown in the task), the journal on it too; --keep-cluster keeps it. Kubernetes\n\
deletes the finished Job an hour later.\n\n\
With --gateways, relay gateways start too, near the destination, and the transfer relays\n\
through them: they get SKYHAUL_RELAY_KEY and the destination's credentials, the fleet the\n\
key and the source's. SLURM: a job of their own, submitted by the batch script; SkyPilot:\n\
one cluster per gateway from NAME.gateway.sky.yaml (--submit launches them and passes their\n\
IPs); Kubernetes: an Indexed Job in the same cluster, or with --gateway-kube-context in\n\
another one from NAME.gateways.yaml, one LoadBalancer Service per gateway (--submit applies\n\
both files and gives the fleet their addresses as the ConfigMap NAME-gateways); SSH:\n\
--gateway-hosts.\n\n\
The gateways end with the transfer: once it has succeeded the coordinator tells them to\n\
exit, and one that no sender uses for --gateway-idle-exit exits anyway. A SkyPilot gateway's\n\
cluster then goes down by itself, a Kubernetes gateway's pod completes, SLURM's gateway job\n\
ends (or is cancelled), the SSH runner's sessions close.\n\n\
TLS on the relay: --gateway-tls-cert/--gateway-tls-key (and --relay-tls-ca for a private CA).\n\
SLURM reads the files where they are (a shared file system), the SSH runner copies them over\n\
its connections, SkyPilot with file_mounts; Kubernetes mounts the Secret NAME-gw-tls and the\n\
ConfigMap NAME-relay-ca that the file's comments say how to create. SkyPilot and\n\
--gateway-kube-context need --gateway-tls-name: their gateways' addresses are known only\n\
once they run.")]
    Launch(LaunchArgs),
    /// Print the man page (roff): skyhaul(1), or skyhaul-COMMAND(1) for a command
    #[command(after_help = "Examples:\n  \
skyhaul man > /usr/local/share/man/man1/skyhaul.1\n  \
for c in cp sync verify plan; do skyhaul man $c > skyhaul-$c.1; done")]
    Man {
        /// The command whose page to print (cp, sync, verify, …)
        command: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan everything under SRC (a prefix or directory)
    #[arg(short, long)]
    pub recursive: bool,
    /// Plan a `sync`: only what is missing or changed at the destination
    #[arg(long)]
    pub sync: bool,
    /// With --sync: also count what `sync --delete` would delete
    #[arg(long, requires = "sync")]
    pub delete: bool,
    /// The source's cloud: aws, gcp, azure, cloudflare or other; for a local path, the cloud this machine runs in [default: from the endpoint]
    #[arg(long, value_name = "PROVIDER")]
    pub src_cloud: Option<String>,
    /// The destination's cloud, as --src-cloud
    #[arg(long, value_name = "PROVIDER")]
    pub dst_cloud: Option<String>,
    /// A price file laid over the built-in table [config: prices]
    #[arg(long, value_name = "FILE")]
    pub prices: Option<std::path::PathBuf>,
    /// The throughput to estimate the time with [default: --bwlimit, else 1G (1 GiB/s)]
    #[arg(long, value_name = "RATE")]
    pub throughput: Option<Rate>,
    /// Every cp flag (tuning and filters change the plan as they change the copy)
    #[command(flatten)]
    pub common: TransferArgs,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Show what would be recorded; write nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the value of KEY (nothing, exit code 1, when unset)
    #[command(
        after_help = "Examples:\n  skyhaul config get max_connections\n  skyhaul config get remotes.nebius.endpoint"
    )]
    Get {
        /// A key, as `skyhaul config --help` lists them
        key: String,
    },
    /// Set KEY to VALUE
    #[command(
        after_help = "Examples:\n  skyhaul config set part_size 64M\n  skyhaul config set bwlimit 1Gbit\n  skyhaul config set remotes.r2.endpoint \\\n      https://ACCOUNT.r2.cloudflarestorage.com"
    )]
    Set {
        /// A key, as `skyhaul config --help` lists them
        key: String,
        /// Its value (never a secret: keys and tokens are refused)
        value: String,
    },
    /// Print every set KEY = VALUE
    #[command(after_help = "Examples:\n  skyhaul config list\n  skyhaul config list --json")]
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove KEY (`remotes.NAME` removes the whole remote)
    #[command(
        after_help = "Examples:\n  skyhaul config unset max_connections\n  skyhaul config unset remotes.nebius"
    )]
    Unset {
        /// A key, or `remotes.NAME` for a whole remote
        key: String,
    },
    /// Print the config file's path
    #[command(after_help = "Example:\n  $EDITOR \"$(skyhaul config path)\"")]
    Path,
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
    #[arg(long, env = "SKYHAUL_DST_ENDPOINT", value_name = "URL", value_parser = Endpoint)]
    pub dst_endpoint: Option<String>,
    /// Destination profile
    #[arg(long, env = "SKYHAUL_DST_PROFILE")]
    pub dst_profile: Option<String>,
    /// Destination region
    #[arg(long, env = "SKYHAUL_DST_REGION")]
    pub dst_region: Option<String>,
    /// Acknowledge that requests are billed to you, as S3 requester-pays buckets require
    #[arg(long, env = "SKYHAUL_REQUESTER_PAYS", value_parser = BoolishValueParser::new())]
    pub requester_pays: bool,
    /// The destination's GCS or Azure credentials, as the transfer was given them
    #[command(flatten)]
    pub cloud: CloudArgs,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy everything under SRC (a prefix or directory)
    #[arg(short, long)]
    pub recursive: bool,
    #[command(flatten)]
    pub common: TransferArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Spreading one transfer over worker processes.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Fleet")]
pub struct FleetArgs {
    /// Run N worker processes on this machine under one coordinator (a local fleet)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// A lease its worker does not renew within this time goes back to the queue [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub lease_timeout: Option<std::time::Duration>,
    /// Bytes of work per lease (less near the end, to spread the last work) [default: 64M]
    #[arg(long, value_name = "SIZE")]
    pub lease_size: Option<Size>,
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to serve workers on, HOST:PORT (port 0: any free port)
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// The token workers must present, at least 16 characters (prefer the environment: `ps` shows flags)
    #[arg(long, env = "SKYHAUL_FLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve workers over HTTPS with this PEM certificate chain (it must name the address workers dial)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Once the transfer has succeeded, tell its relay gateways (--relay) to exit: those started with --exit-on-stop do
    #[arg(long)]
    pub relay_stop_gateways: bool,
    #[command(subcommand)]
    pub transfer: CoordinatedTransfer,
}

#[derive(Debug, Subcommand)]
pub enum CoordinatedTransfer {
    /// Coordinate a copy (every cp flag applies)
    Cp(CpArgs),
    /// Coordinate a sync (every sync flag applies)
    Sync(SyncArgs),
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://10.0.0.5:7070
    #[arg(long, value_name = "URL")]
    pub coordinator: String,
    /// The coordinator's token (prefer the environment: `ps` shows flags)
    #[arg(long, env = "SKYHAUL_FLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust the CA certificates in this PEM file for an https:// coordinator, besides the system's
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// How long to keep trying while the coordinator does not answer (starting, restarting)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub wait: std::time::Duration,
    /// Serve this worker's Prometheus metrics at http://ADDR/metrics (same token)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most bytes per second this worker moves, instead of the coordinator's --bwlimit
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<Rate>,
    /// rclone.conf to resolve NAME:bucket/path remotes from [default: rclone's own, $RCLONE_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub rclone_config: Option<std::path::PathBuf>,
    /// GCS and Azure credentials, this machine's own (the coordinator sends none)
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Started by a local fleet (`--workers N`), in its process group
    #[arg(long, hide = true)]
    pub local: bool,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    skyhaul_engine::filter::parse_age(s).map_err(|e| format!("'{s}': {e} (try 30s or 2m)"))
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Taken and ignored: sync is always recursive (`-r` comes from cp and rsync habits)
    #[arg(short = 'r', long = "recursive", hide = true)]
    pub _recursive: bool,
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
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Source: s3://BUCKET/KEY-OR-PREFIX (or gs://, az://, https://ACCOUNT.blob.core.windows.net/), NAME:bucket/path (a remote), or a local path
    pub src: String,
    /// Destination: s3://BUCKET/KEY-OR-PREFIX (or gs://, az://, https://ACCOUNT.blob.core.windows.net/), NAME:bucket/path (a remote), or a local path
    pub dst: String,
    /// Compare everything under SRC and DST (prefixes or directories)
    #[arg(short, long)]
    pub recursive: bool,
    /// Re-read both sides of every object and compare the CRC64s of their bytes (trusts no ETag or recorded checksum)
    #[arg(long)]
    pub deep: bool,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Where each side is and how to sign in there.
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// Endpoint URL of the source store (an S3-compatible service, a GCS or Azure Blob endpoint or emulator)
    #[arg(long, env = "SKYHAUL_SRC_ENDPOINT", value_name = "URL", value_parser = Endpoint)]
    pub src_endpoint: Option<String>,
    /// Endpoint URL of the destination store
    #[arg(long, env = "SKYHAUL_DST_ENDPOINT", value_name = "URL", value_parser = Endpoint)]
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
    /// Acknowledge that requests are billed to you, as S3 requester-pays buckets require (both sides)
    #[arg(long, env = "SKYHAUL_REQUESTER_PAYS", value_parser = BoolishValueParser::new())]
    pub requester_pays: bool,
    /// Read the source without credentials, as a public bucket or container allows (aws's --no-sign-request)
    #[arg(long, env = "SKYHAUL_SRC_ANONYMOUS", value_parser = BoolishValueParser::new())]
    pub src_anonymous: bool,
    /// rclone.conf to resolve NAME:bucket/path remotes from [default: rclone's own, $RCLONE_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub rclone_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub cloud: CloudArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
}

/// Its own section of `--help` (per flag, as with the cloud credentials).
const RELAY_HEADING: &str = "Relay mode";

/// Sending the destination's side of a transfer through relay gateways near the destination
/// (`skyhaul gateway`): compressed and encrypted on the wide-area hop. The transfer key comes
/// from SKYHAUL_RELAY_KEY only, never from a flag (`ps` shows flags).
#[derive(Debug, Args, Default, Clone)]
pub struct RelayArgs {
    /// Relay through these gateways (HOST:PORT, comma-separated) running `skyhaul gateway` near the destination; needs SKYHAUL_RELAY_KEY
    #[arg(long, help_heading = RELAY_HEADING, env = "SKYHAUL_RELAY", value_delimiter = ',', value_name = "HOST:PORT", value_parser = gateway)]
    pub relay: Vec<String>,
    /// TCP connections to each relay gateway
    #[arg(long, help_heading = RELAY_HEADING, value_name = "K", default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub relay_connections: u8,
    /// Compression on the relay link: zstd (level 1), zstd:LEVEL, lz4 or none; chunks that do not shrink go as they are
    #[arg(long, help_heading = RELAY_HEADING, value_name = "ALGO", default_value = "zstd")]
    pub relay_compression: skyhaul_relay::Compression,
    /// TCP congestion control of the relay connections, e.g. bbr or cubic (one the system offers) [default: the system's]
    #[arg(long, help_heading = RELAY_HEADING, value_name = "ALGO")]
    pub relay_congestion: Option<String>,
    /// Connect to the relay gateways over TLS (theirs: --tls-cert/--tls-key), trusting the system's roots
    #[arg(long, help_heading = RELAY_HEADING)]
    pub relay_tls: bool,
    /// Also trust the CA certificates in this PEM file for the gateways' TLS (implies --relay-tls)
    #[arg(long, help_heading = RELAY_HEADING, value_name = "FILE")]
    pub relay_tls_ca: Option<std::path::PathBuf>,
    /// Check every gateway's certificate for this DNS name instead of the host dialed, for gateways known by addresses no certificate names (implies --relay-tls)
    #[arg(long, help_heading = RELAY_HEADING, value_name = "NAME")]
    pub relay_tls_name: Option<String>,
    /// The key a fleet worker got from its coordinator (otherwise SKYHAUL_RELAY_KEY is read).
    #[arg(skip)]
    pub key: Option<skyhaul_relay::RelayKey>,
    /// The --relay-tls-ca PEM a fleet worker got from its coordinator.
    #[arg(skip)]
    pub tls_ca_pem: Option<String>,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Where to accept relay connections, e.g. 0.0.0.0:7400
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Accept relay connections over TLS only, with this PEM certificate chain (it must name the address senders dial)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Exit (code 0) when a sender with the transfer key says the transfer is over (`skyhaul coordinator --relay-stop-gateways`), once the answers in progress are written
    #[arg(long)]
    pub exit_on_stop: bool,
    /// Exit (code 0) after this long without a relay connection, e.g. 30m: the safety net for a sender that died before saying stop
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub idle_exit: Option<std::time::Duration>,
    /// The destination store this gateway writes to: s3://BUCKET, gs://BUCKET or az://CONTAINER (no prefix: clients name whole keys)
    pub destination: String,
    /// Endpoint URL of the destination store
    #[arg(long, env = "SKYHAUL_DST_ENDPOINT", value_name = "URL", value_parser = Endpoint)]
    pub dst_endpoint: Option<String>,
    /// AWS shared-config profile for the destination
    #[arg(long, env = "SKYHAUL_DST_PROFILE")]
    pub dst_profile: Option<String>,
    /// Region of the destination bucket
    #[arg(long, env = "SKYHAUL_DST_REGION")]
    pub dst_region: Option<String>,
    /// Acknowledge that requests are billed to you, as S3 requester-pays buckets require
    #[arg(long, env = "SKYHAUL_REQUESTER_PAYS", value_parser = BoolishValueParser::new())]
    pub requester_pays: bool,
    /// rclone.conf to resolve NAME:bucket remotes from
    #[arg(long, value_name = "PATH")]
    pub rclone_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// Their own section of `--help` (per flag: a struct-wide heading would carry over to
/// the flags that follow this struct).
const CLOUD_HEADING: &str = "GCS and Azure credentials";

/// GCS and Azure credentials per side. Secrets are best given by environment variable:
/// flags show in the process list. Their values are never printed (not even by --help).
#[derive(Debug, Args, Default)]
pub struct CloudArgs {
    /// Google service-account JSON key file for a gs:// source [default: application-default credentials]
    #[arg(long, help_heading = CLOUD_HEADING, env = "SKYHAUL_SRC_GCS_SERVICE_ACCOUNT", value_name = "FILE")]
    pub src_gcs_service_account: Option<std::path::PathBuf>,
    /// Google service-account JSON key file for a gs:// destination
    #[arg(long, help_heading = CLOUD_HEADING, env = "SKYHAUL_DST_GCS_SERVICE_ACCOUNT", value_name = "FILE")]
    pub dst_gcs_service_account: Option<std::path::PathBuf>,
    /// Azure storage account of an az:// source
    #[arg(long, help_heading = CLOUD_HEADING, env = "SKYHAUL_SRC_AZURE_ACCOUNT", value_name = "NAME")]
    pub src_azure_account: Option<String>,
    /// Azure storage account of an az:// destination
    #[arg(long, help_heading = CLOUD_HEADING, env = "SKYHAUL_DST_AZURE_ACCOUNT", value_name = "NAME")]
    pub dst_azure_account: Option<String>,
    /// Azure account key of the source
    #[arg(
        long,
        help_heading = CLOUD_HEADING,
        env = "SKYHAUL_SRC_AZURE_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub src_azure_key: Option<String>,
    /// Azure account key of the destination
    #[arg(
        long,
        help_heading = CLOUD_HEADING,
        env = "SKYHAUL_DST_AZURE_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub dst_azure_key: Option<String>,
    /// Azure SAS token of the source
    #[arg(
        long,
        help_heading = CLOUD_HEADING,
        env = "SKYHAUL_SRC_AZURE_SAS",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub src_azure_sas: Option<String>,
    /// Azure SAS token of the destination
    #[arg(
        long,
        help_heading = CLOUD_HEADING,
        env = "SKYHAUL_DST_AZURE_SAS",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub dst_azure_sas: Option<String>,
    /// Azure connection string of the source
    #[arg(
        long,
        help_heading = CLOUD_HEADING,
        env = "SKYHAUL_SRC_AZURE_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "STRING"
    )]
    pub src_azure_connection_string: Option<String>,
    /// Azure connection string of the destination
    #[arg(
        long,
        help_heading = CLOUD_HEADING,
        env = "SKYHAUL_DST_AZURE_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "STRING"
    )]
    pub dst_azure_connection_string: Option<String>,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print only errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Print JSON lines on stdout: events as they happen, the report (or plan) last
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
    /// Source: s3://BUCKET/KEY-OR-PREFIX (or gs://, az://, https://ACCOUNT.blob.core.windows.net/), NAME:bucket/path (a remote), or a local path
    pub src: String,
    /// Destination: s3://BUCKET/KEY-OR-PREFIX (or gs://, az://, https://ACCOUNT.blob.core.windows.net/), NAME:bucket/path (a remote), or a local path
    pub dst: String,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Concurrent requests per side [env: SKYHAUL_MAX_CONNECTIONS, config: max_connections, default: 64]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: Option<u16>,
    /// Most bytes buffered in memory at once [env: SKYHAUL_MEMORY_BUDGET, config: memory_budget, default: 256M]
    #[arg(long, value_name = "SIZE", value_parser = positive_size)]
    pub memory_budget: Option<Size>,
    /// Preferred part size for striped (multipart) objects [env: SKYHAUL_PART_SIZE, config: part_size, default: 16M]
    #[arg(long, value_name = "SIZE", value_parser = positive_size)]
    pub part_size: Option<Size>,
    /// Objects larger than this are striped into parts [env: SKYHAUL_MULTIPART_THRESHOLD, config: multipart_threshold, default: 32M]
    #[arg(long, value_name = "SIZE", value_parser = positive_size)]
    pub multipart_threshold: Option<Size>,
    /// Retries per request on throttling, 5xx, timeouts and resets [env: SKYHAUL_RETRIES, config: retries, default: 10]
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Move bytes through this machine even when the store could copy them itself
    #[arg(long)]
    pub no_server_side_copy: bool,
    /// Write the objects in this storage class, as the destination names it: S3's STANDARD_IA, GLACIER_IR, DEEP_ARCHIVE…; GCS's NEARLINE, COLDLINE, ARCHIVE; Azure's Hot, Cool, Cold, Archive [default: the bucket's]
    #[arg(long, value_name = "CLASS", env = "SKYHAUL_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// The journal that makes reruns resume [default: $SKYHAUL_JOURNAL, else the user's data dir]
    #[arg(long, value_name = "PATH")]
    pub journal: Option<std::path::PathBuf>,
    /// Keep no journal: a rerun starts over
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,
    /// What to check at the destination after copying [env: SKYHAUL_VERIFY, config: verify, default: checksum]
    #[arg(long, value_enum)]
    pub verify: Option<VerifyArg>,
    /// Check only this percentage of the copied objects (a deterministic sample)
    #[arg(long, default_value_t = 100.0, value_parser = percent)]
    pub verify_sample: f64,
    /// Only list what would be copied and deleted; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Most bytes per second moved through this machine: 500M (MiB/s) or 1Gbit (bits) [env: SKYHAUL_BWLIMIT, config: bwlimit, default: none]
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<Rate>,
    /// Start without asking: on a terminal, transfers of over 10,000 objects or 100 GiB, and a sync --delete that deletes, ask first
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    // Last: its help heading applies to everything after it.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Which source objects are copied. Every rule looks at the key relative to the source
/// prefix (the base name for a single object); an object is copied when it matches no
/// --exclude, at least one --include (if any), is listed in --files-from (if any), and is
/// within the size and time bounds. The order of the flags does not matter.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Copy only keys matching this glob (repeatable; `*.csv` matches base names at any depth, `logs/**` everything under logs/)
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Never copy (nor, with sync --delete, delete) keys matching this glob (repeatable; wins over --include)
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Copy only the keys listed in FILE, one per line, relative to the source prefix (repeatable)
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<std::path::PathBuf>,
    /// Copy only objects of at least SIZE bytes
    #[arg(long, value_name = "SIZE")]
    pub min_size: Option<Size>,
    /// Copy only objects of at most SIZE bytes
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<Size>,
    /// Copy only objects modified within AGE (7d, 12h, 30m, 2w) or at/after DATE (2024-05-01, 2024-05-01T12:00:00Z)
    #[arg(long, value_name = "AGE|DATE")]
    pub newer_than: Option<String>,
    /// Copy only objects modified more than AGE ago or before DATE
    #[arg(long, value_name = "AGE|DATE")]
    pub older_than: Option<String>,
}

/// An endpoint URL as `skyhaul config set` takes it ([`crate::config::endpoint_url`]), kept
/// as typed: it is part of a transfer's identity in the journal. Its error is clap's
/// without the value, which clap would repeat in full: it may hold a password.
#[derive(Clone)]
struct Endpoint;

impl clap::builder::TypedValueParser for Endpoint {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let text = value
            .to_str()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd))?;
        crate::config::endpoint_url(text)
            .map(|_| text.to_string())
            .map_err(|e| {
                let arg = arg.map_or_else(|| "the endpoint".into(), |a| format!("'{a}'"));
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("invalid value for {arg}: {e}\n"),
                )
                .with_cmd(cmd)
            })
    }
}

/// A relay gateway, HOST:PORT, checked where it is typed: a malformed one (`gw1`, a
/// trailing comma's empty one) would only fail to connect, be retried, and read as a
/// gateway that is down.
fn gateway(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(s.to_string())
        }
        _ => Err(format!(
            "'{s}' is not HOST:PORT (e.g. gw1.example.com:7400); gateways are separated by commas"
        )),
    }
}

/// A size that must be more than nothing (a budget, a part, a threshold), as `skyhaul
/// config set` requires too.
fn positive_size(s: &str) -> Result<Size, String> {
    match s.parse::<Size>()? {
        Size(0) => Err(format!(
            "'{s}': a size greater than 0, such as 256M, 16MiB or 1G"
        )),
        size => Ok(size),
    }
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("'{s}' is not a percentage in (0, 100]")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// A SLURM batch script (sbatch; one srun step)
    Slurm,
    /// A SkyPilot task YAML (sky launch)
    Skypilot,
    /// A Kubernetes Indexed Job with a headless Service (kubectl apply)
    Kubernetes,
    /// A bash runner over SSH for --hosts
    Ssh,
}

/// `skyhaul launch`'s relay gateway options, in their own section of `--help`.
const GATEWAY_HEADING: &str = "Relay gateways (started with the fleet, near the destination)";

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The engine that runs the fleet
    #[arg(long, value_enum)]
    pub backend: BackendArg,
    /// Tasks (machines, pods): rank 0 coordinates [default: 2; ssh: one per host]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nodes: Option<u32>,
    /// SLURM: tasks per node; the job asks for --nodes / this many nodes [default: 1, a machine per task]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tasks_per_node: Option<u32>,
    /// SSH hosts, rank 0 first (comma-separated, [user@]host)
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// The coordinator's port
    #[arg(long, default_value_t = 7070, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The job's name (lowercase letters, digits and -)
    #[arg(long, default_value = "skyhaul-fleet")]
    pub name: String,
    /// Where to write the job [default: NAME.sbatch, NAME.sky.yaml, NAME.k8s.yaml or NAME.sh]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Replace the job's files if they exist (never through a symlink)
    #[arg(long)]
    pub force: bool,
    /// Also submit it (sbatch, sky launch, kubectl apply, or run the SSH runner)
    #[arg(long)]
    pub submit: bool,
    /// The skyhaul binary on the nodes
    #[arg(long, default_value = "skyhaul", value_name = "PATH")]
    pub skyhaul: String,
    /// Kubernetes: the container image with skyhaul
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Kubernetes: the Secret holding SKYHAUL_FLEET_TOKEN and the credentials (with --gateway-kube-context, SKYHAUL_RELAY_KEY too)
    #[arg(long, default_value = "skyhaul-credentials", value_name = "NAME")]
    pub secret: String,
    /// SkyPilot: use spot instances
    #[arg(long)]
    pub spot: bool,
    /// SkyPilot: CPUs per node, e.g. 16+
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// SkyPilot: keep the fleet's cluster up after the transfer (by default it goes down once its job ends, with the journal on it)
    #[arg(long)]
    pub keep_cluster: bool,
    /// Also start N relay gateways near the destination and relay the transfer through them (SKYHAUL_RELAY_KEY must be set; ssh: one per --gateway-hosts)
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub gateways: Option<u32>,
    /// The port the gateways listen on
    #[arg(long, help_heading = GATEWAY_HEADING, default_value_t = 7400, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub gateway_port: u16,
    /// SkyPilot: the destination's region, where the gateways run (e.g. eu-west-1)
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "REGION")]
    pub gateway_region: Option<String>,
    /// SkyPilot: the destination's cloud (e.g. aws) [default: any cloud with --gateway-region]
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "CLOUD")]
    pub gateway_cloud: Option<String>,
    /// SLURM: the partition whose nodes are near the destination [default: the cluster's default]
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "NAME")]
    pub gateway_partition: Option<String>,
    /// Kubernetes: a node label KEY=VALUE the gateway pods must run on, e.g. topology.kubernetes.io/region=eu-west-1 (repeatable)
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "KEY=VALUE")]
    pub gateway_node_selector: Vec<String>,
    /// Kubernetes: the Secret holding SKYHAUL_RELAY_KEY and the destination's credentials, for the gateways
    #[arg(long, help_heading = GATEWAY_HEADING, default_value = "skyhaul-gateway-credentials", value_name = "NAME")]
    pub gateway_secret: String,
    /// Kubernetes: run the gateways in the cluster of this kubectl context (e.g. the destination's) instead of the fleet's, from NAME.gateways.yaml, each behind a LoadBalancer Service
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "CONTEXT")]
    pub gateway_kube_context: Option<String>,
    /// Kubernetes with --gateway-kube-context: the only addresses the gateways' load balancers accept connections from, e.g. the fleet's egress (comma-separated CIDRs) [default: any]
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "CIDRS", value_delimiter = ',')]
    pub gateway_source_ranges: Vec<String>,
    /// SSH: the hosts near the destination that run the gateways (comma-separated, [user@]host)
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "HOSTS", value_delimiter = ',')]
    pub gateway_hosts: Vec<String>,
    /// A gateway no sender has used for this long exits (its coordinator died before it could say the transfer is over)
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "DURATION", default_value = "30m", value_parser = duration)]
    pub gateway_idle_exit: std::time::Duration,
    /// The gateways' TLS certificate chain (PEM), naming each gateway as the fleet dials it; shipped to them, never written into a job file
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "FILE")]
    pub gateway_tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --gateway-tls-cert; shipped to the gateways, never written into a job file
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "FILE")]
    pub gateway_tls_key: Option<std::path::PathBuf>,
    /// A CA (PEM) the fleet trusts for the gateways' certificate, besides the system's roots
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "FILE")]
    pub relay_tls_ca: Option<std::path::PathBuf>,
    /// A DNS name in --gateway-tls-cert that the fleet checks instead of each gateway's address (SkyPilot and --gateway-kube-context, whose gateways' addresses no certificate can name in advance, need it)
    #[arg(long, help_heading = GATEWAY_HEADING, value_name = "NAME")]
    pub gateway_tls_name: Option<String>,
    /// The transfer, as for `skyhaul coordinator`: cp -r SRC DST [flags] or sync SRC DST [flags]
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TRANSFER"
    )]
    pub transfer: Vec<String>,
}
