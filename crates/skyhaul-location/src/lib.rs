//! Where data comes from and goes to.
//!
//! A [`Location`] is what the user typed (`s3://bucket/prefix`, `gs://bucket/prefix`,
//! `az://container/prefix`, `https://ACCOUNT.blob.core.windows.net/container/prefix`, `/abs/path`,
//! `./rel`, `file:///abs`) parsed into a backend kind plus a path inside it. [`map_key`] is the single
//! place that decides which destination key a source key lands on, so that `cp`, `sync`,
//! `verify` and (later) fleet workers can never disagree about it.

mod keys;
mod overlap;
mod parse;

pub use keys::{dir_form, key_basename, local_relative_path, map_key, KeyError};
pub use overlap::{overlap, Overlap};
pub use parse::{Location, LocationError, Scheme};
