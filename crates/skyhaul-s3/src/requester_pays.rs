//! Requester-pays buckets: their owner has the reader pay for requests and egress, and S3
//! refuses every request (403) that does not carry `x-amz-request-payer: requester`, the
//! reader's acknowledgement. Many public data sets are kept this way.
//!
//! An interceptor adds the header to every request of a client, before signing (S3
//! refuses `x-amz-*` headers that are not signed), so no operation can be missed. Sent to
//! a bucket that is not requester-pays, the header changes nothing.

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;

#[derive(Debug)]
pub(crate) struct RequesterPays;

impl Intercept for RequesterPays {
    fn name(&self) -> &'static str {
        "RequesterPays"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-amz-request-payer", "requester");
        Ok(())
    }
}
