//! What each request asks the store to check, set once for the client. Decided per
//! request through `customize()`, it cost a copy of the client's configuration per request,
//! which a copy of small objects pays tens of thousands of times.
//!
//! - A whole read (GetObject without `Range`) asks for the object's own checksums with
//!   `x-amz-checksum-mode`; AWS sends them only to such a read. The header is set here
//!   rather than through the SDK's `checksum_mode`, which would have the SDK check the body
//!   as well: the engine does, with the CRC64-NVME it computes anyway and with its own
//!   error (`FullChecksum`).
//! - A body sent with `Content-MD5` (itself signed) is checked by the server, so it is not
//!   hashed again with SHA-256 for the signature, which would double the CPU per byte.
//!
//! Both are decided before signing: S3 refuses `x-amz-*` headers that are not signed.

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

#[derive(Debug)]
pub(crate) struct RequestChecks;

impl Intercept for RequestChecks {
    fn name(&self) -> &'static str {
        "RequestChecks"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map(|m| m.name());
        let headers = context.request().headers();
        let whole_read = operation == Some("GetObject") && !headers.contains_key("range");
        let md5_body = matches!(operation, Some("PutObject" | "UploadPart"))
            && headers.contains_key("content-md5");
        if whole_read {
            context
                .request_mut()
                .headers_mut()
                .insert("x-amz-checksum-mode", "ENABLED");
        }
        if md5_body {
            cfg.interceptor_state()
                .store_put(PayloadSigningOverride::unsigned_payload());
        }
        Ok(())
    }
}
