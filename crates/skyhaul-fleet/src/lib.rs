//! Fleet mode: one transfer spread over many machines.
//!
//! A [`coordinator`] plans the transfer and hands work out in leases sized by bytes —
//! batches of small objects, single parts of large ones — to [`worker`]s that ask for it
//! over an authenticated HTTP API ([`protocol`]). A lease that is not renewed goes back to
//! the queue, the coordinator's state lives in the transfer journal, and both sides serve
//! Prometheus metrics. [`launch`] writes the job files that start a fleet on SkyPilot,
//! Kubernetes, SLURM or plain SSH.

pub mod auth;
pub mod client;
pub mod coordinator;
pub mod launch;
pub mod metrics;
pub mod protocol;
pub mod status;
pub mod tls;
pub mod worker;

pub use auth::{Token, TOKEN_ENV};
pub use client::{Client, ClientError};
pub use coordinator::{CoordinatorOptions, Setup};
pub use protocol::{Sides, TransferSpec, WorkerInfo, WorkerSettings, PROTOCOL_VERSION};
pub use status::Status;
pub use worker::WorkerError;
