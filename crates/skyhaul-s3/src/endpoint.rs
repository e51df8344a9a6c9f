//! Endpoint resolution that does not redo S3's rules for every object.
//!
//! The SDK resolves each request's endpoint from its parameters, twice (once to pick the auth
//! scheme, once to send), through S3's rule set, and caches only the last parameters seen,
//! object key included. With many requests in flight for different keys that cache almost
//! never hits: on 16 KiB objects resolution was about 3% of the CPU. The rules depend on the
//! bucket, region and flags, not on the key, so [`KeyBlindResolver`] keeps the endpoint per
//! parameters *without* the key, prefix and copy source. That is read off the SDK's generated
//! rules (they bind those three and never test them); the tests pin what can be pinned: that
//! the parameters are the ones listed here, and that the default resolver's answer does not
//! change with the three for custom endpoints, AWS, FIPS, S3 Express and access points.

use aws_sdk_s3::config::endpoint::{DefaultResolver, EndpointFuture, Params, ResolveEndpoint};
use aws_smithy_types::endpoint::Endpoint;
use std::sync::RwLock;

/// A store's client talks to one bucket: a handful of entries covers it.
const MAX_ENTRIES: usize = 8;

/// The parameters the rules read, which is all of them but the key, prefix and copy source.
#[derive(PartialEq)]
struct Key<S> {
    bucket: Option<S>,
    region: Option<S>,
    endpoint: Option<S>,
    flags: [Option<bool>; 11],
}

impl<'a> Key<&'a str> {
    fn of(p: &'a Params) -> Self {
        Key {
            bucket: p.bucket(),
            region: p.region(),
            endpoint: p.endpoint(),
            flags: [
                p.use_fips(),
                p.use_dual_stack(),
                p.force_path_style(),
                p.accelerate(),
                p.use_global_endpoint(),
                p.use_object_lambda_endpoint(),
                p.disable_access_points(),
                p.disable_multi_region_access_points(),
                p.use_arn_region(),
                p.use_s3_express_control_endpoint(),
                p.disable_s3_express_session_auth(),
            ],
        }
    }

    fn to_owned(&self) -> Key<String> {
        Key {
            bucket: self.bucket.map(str::to_string),
            region: self.region.map(str::to_string),
            endpoint: self.endpoint.map(str::to_string),
            flags: self.flags,
        }
    }
}

impl Key<String> {
    fn as_ref(&self) -> Key<&str> {
        Key {
            bucket: self.bucket.as_deref(),
            region: self.region.as_deref(),
            endpoint: self.endpoint.as_deref(),
            flags: self.flags,
        }
    }
}

/// The SDK's resolver, asked once per bucket, region and flags.
#[derive(Default)]
pub(crate) struct KeyBlindResolver {
    rules: DefaultResolver,
    known: RwLock<Vec<(Key<String>, Endpoint)>>,
}

impl std::fmt::Debug for KeyBlindResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBlindResolver")
    }
}

impl ResolveEndpoint for KeyBlindResolver {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        let key = Key::of(params);
        let find = |known: &[(Key<String>, Endpoint)]| {
            known
                .iter()
                .find(|(k, _)| k.as_ref() == key)
                .map(|(_, e)| e.clone())
        };
        if let Some(endpoint) = find(&self.known.read().expect("lock")) {
            return EndpointFuture::ready(Ok(endpoint));
        }
        let resolved = resolve_now(&self.rules, params);
        if let Ok(endpoint) = &resolved {
            let mut known = self.known.write().expect("lock");
            // Requests that missed together resolve alike; keep one entry.
            if known.len() < MAX_ENTRIES && find(&known).is_none() {
                known.push((key.to_owned(), endpoint.clone()));
            }
        }
        EndpointFuture::ready(resolved)
    }
}

/// A resolver's answer. S3's rules compute it at once (the future is ready when made), so
/// polling it with a waker that does nothing is enough; anything else would be a change in
/// the SDK, reported as an error.
fn resolve_now(
    resolver: &impl ResolveEndpoint,
    params: &Params,
) -> Result<Endpoint, aws_smithy_runtime_api::box_error::BoxError> {
    let mut fut = std::pin::pin!(resolver.resolve_endpoint(params));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err("the S3 endpoint resolver did not answer at once".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If the SDK adds a parameter, [`Key`] must learn it (or the test below must show the
    /// rules ignore it): a parameter left out of the key would share one endpoint between
    /// requests the rules tell apart.
    #[test]
    fn the_key_covers_every_parameter_but_key_prefix_and_copy_source() {
        let debug = format!("{:?}", Params::builder().build().unwrap());
        let inner = debug
            .trim_start_matches("Params {")
            .trim_end_matches('}')
            .to_string();
        let mut names: Vec<&str> = inner
            .split(", ")
            .filter_map(|field| field.split_once(':').map(|(n, _)| n.trim()))
            .collect();
        names.sort_unstable();
        let mut expected = vec![
            // In the key:
            "bucket",
            "region",
            "endpoint",
            "use_fips",
            "use_dual_stack",
            "force_path_style",
            "accelerate",
            "use_global_endpoint",
            "use_object_lambda_endpoint",
            "disable_access_points",
            "disable_multi_region_access_points",
            "use_arn_region",
            "use_s3_express_control_endpoint",
            "disable_s3_express_session_auth",
            // Left out:
            "key",
            "prefix",
            "copy_source",
        ];
        expected.sort_unstable();
        assert_eq!(names, expected, "{debug}");
    }

    /// A request for `key` of `bucket`, with the client's settings.
    fn params(
        bucket: &str,
        endpoint: Option<&str>,
        path_style: bool,
        fips: bool,
        key: &str,
    ) -> Params {
        Params::builder()
            .bucket(bucket)
            .region("us-west-2")
            .set_endpoint(endpoint.map(str::to_string))
            .force_path_style(path_style)
            .use_fips(fips)
            .use_dual_stack(false)
            .accelerate(false)
            .key(key)
            .prefix(key)
            .copy_source(format!("other/{key}"))
            .build()
            .unwrap()
    }

    #[test]
    fn the_rules_answer_the_same_for_every_key_and_the_resolver_says_what_they_say() {
        let keys = ["a", "dir/b c+d%25ü", "../x", "", "x--x-s3"];
        let access_point = "arn:aws:s3:us-west-2:123456789012:accesspoint/ap-1";
        for (bucket, endpoint, path_style, fips) in [
            ("bucket-1", Some("http://127.0.0.1:9000"), true, false),
            (
                "bucket-1",
                Some("https://acct.r2.cloudflarestorage.com/base"),
                false,
                false,
            ),
            ("bucket-1", None, false, false),
            ("bucket-1", None, true, false),
            ("bucket-1", None, false, true),
            ("data--usw2-az1--x-s3", None, false, false),
            (access_point, None, false, false),
        ] {
            let rules = DefaultResolver::new();
            let blind = KeyBlindResolver::default();
            let first = params(bucket, endpoint, path_style, fips, keys[0]);
            let first = resolve_now(&rules, &first).unwrap();
            for key in keys {
                let p = params(bucket, endpoint, path_style, fips, key);
                let case = format!("{bucket} {endpoint:?} {key}");
                assert_eq!(resolve_now(&rules, &p).unwrap(), first, "{case}");
                assert_eq!(resolve_now(&blind, &p).unwrap(), first, "{case}");
            }
            assert_eq!(blind.known.read().unwrap().len(), 1);
        }
    }

    #[test]
    fn path_style_and_virtual_hosts_are_resolved_apart() {
        let blind = KeyBlindResolver::default();
        let a = params(
            "bucket-1",
            Some("http://minio.internal:9000"),
            true,
            false,
            "k",
        );
        let b = params(
            "bucket-1",
            Some("http://minio.internal:9000"),
            false,
            false,
            "k",
        );
        let ra = resolve_now(&DefaultResolver::new(), &a).unwrap();
        let rb = resolve_now(&DefaultResolver::new(), &b).unwrap();
        assert_ne!(ra.url(), rb.url());
        for (p, want) in [(&a, &ra), (&b, &rb), (&a, &ra)] {
            assert_eq!(&resolve_now(&blind, p).unwrap(), want);
        }
        assert_eq!(blind.known.read().unwrap().len(), 2);
    }
}
