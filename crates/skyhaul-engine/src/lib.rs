//! The transfer engine.
//!
//! A transfer is a stream of serialisable [`Job`]s produced by the planner from the source
//! listing (merge-joined with the destination listing for sync) and executed concurrently:
//! small objects as one read and one write, large objects as parts striped over many
//! connections, objects within one account by server-side copy. Memory is bounded by a
//! byte [`budget`], connections per side by adaptive limits that back off on throttling,
//! and every request is retried the same way whatever the backend.

mod attributes;
pub mod budget;
pub mod bwlimit;
pub mod content;
mod copy;
mod denials;
pub mod filter;
pub mod integrity;
pub mod limiter;
#[cfg(test)]
mod listed;
mod listing;
pub mod open;
pub mod plan;
pub mod progress;
mod ranges;
pub mod report;
pub mod resume;
pub mod retry;
mod run;
mod streamed;
mod striped;
mod to_check;
pub mod verify;
pub mod work;

pub use bwlimit::BandwidthLimit;
pub use denials::Denials;
pub use filter::{Filter, FilterBuilder};
pub use listing::Listing;
pub use open::{open_destination, open_source, Endpoint, SideOptions};
pub use plan::{part_size, Compare, Job, Mode};
pub use progress::Progress;
pub use report::{CheckFailed, Failure, Report};
pub use run::{dry_run, reachable, transfer, TransferOptions};
pub use verify::{verify_locations, Copied, Verification, VerifyMode};
pub use work::{Executor, OpenUpload};
