//! AWS S3 and every S3-compatible store behind [`skyhaul_store::Store`].
//!
//! Built on `aws-sdk-s3` so that signing, credential chains (profiles, SSO,
//! `credential_process`, IMDS) and XML are the SDK's job. What this crate adds is what a bulk
//! copier needs on top: per-side endpoint and credentials, path-style addressing for custom
//! endpoints, no request checksums the endpoint may reject, no SDK retries (the engine
//! retries every backend the same way and counts it), and errors mapped to
//! [`skyhaul_store::ErrorKind`] with a hint.

mod body;
mod config;
mod credentials;
mod endpoint;
mod errors;
mod listing;
mod request_checks;
mod requester_pays;
mod store;

pub use config::S3Options;
pub use store::{upload_id_from_unparsed_reply, S3Store};
