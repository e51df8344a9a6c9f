//! Google Cloud Storage and Azure Blob Storage behind skyhaul's [`Store`] trait.
//!
//! Why not `object_store`'s `ObjectStore` implementations directly: they hide what a
//! verifiable copier needs. Its object metadata has no GCS MD5/CRC32C and no Azure
//! Content-MD5, its uploads send no checksum for the server to check, its server-side copy
//! stays within one bucket, and its GCS multipart upload uses the XML API, which emulators
//! such as fake-gcs-server do not have. So the requests are made here, against the
//! providers' documented REST APIs (GCS JSON API, Azure Blob REST), and `object_store` is
//! used for what is hard to get right and must stay maintained: finding and refreshing
//! credentials (service-account keys, application-default credentials, Entra ID), signing
//! Azure requests (Shared Key, SAS) and the HTTP client. No signing or token code lives here.
//!
//! [`Store`]: skyhaul_store::Store

pub mod azure;
pub mod gcs;
mod order;
mod transport;

pub use azure::{AzureOptions, AzureStore, ConnectionString};
pub use gcs::{GcsOptions, GcsStore};
