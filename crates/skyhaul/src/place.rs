//! Where a side of a transfer is: which cloud provider and which region, as far as the
//! command line can tell. `plan` prices egress with it.
//!
//! Why guess at all: a user planning `s3://a/x` → `https://ACCOUNT.r2.cloudflarestorage.com`
//! should not have to spell out what the URL already says. Why guess so little: a wrong
//! provider gives a wrong bill, so anything not clear from a flag, the endpoint's host or
//! the remote's `provider` is "unknown", and the estimate says so instead of inventing.

use serde::Serialize;

/// A provider name as the price table keys it, or `None` when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Place {
    pub provider: Option<String>,
    pub region: Option<String>,
    /// A local file system: no store charges for it; where the machine is, only the user
    /// can say (`--src-cloud` / `--dst-cloud`).
    pub local: bool,
    /// How the provider was found, for the plan's output.
    pub basis: String,
}

impl Place {
    pub fn describe(&self) -> String {
        match (&self.provider, &self.region) {
            (Some(p), Some(r)) => format!("{p} {r}"),
            (Some(p), None) => format!("{p}, region unknown"),
            (None, _) if self.local => "this machine (cloud unknown)".to_string(),
            (None, _) => "unknown provider".to_string(),
        }
    }
}

/// The provider an endpoint's host names, and the region where the host carries one.
pub fn from_endpoint(endpoint: &str) -> (Option<&'static str>, Option<String>) {
    let host = endpoint
        .split("://")
        .last()
        .unwrap_or(endpoint)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if host.ends_with(".amazonaws.com") {
        // s3.eu-west-1.amazonaws.com, s3-eu-west-1.amazonaws.com, bucket.s3.eu-west-1…,
        // s3.dualstack.eu-west-1…; plain s3.amazonaws.com is us-east-1.
        let labels: Vec<&str> = host.trim_end_matches(".amazonaws.com").split('.').collect();
        let region = labels
            .iter()
            .rev()
            .map(|l| l.strip_prefix("s3-").unwrap_or(l))
            .find(|l| looks_like_aws_region(l))
            .map(str::to_string)
            .or_else(|| (labels.last() == Some(&"s3")).then(|| "us-east-1".to_string()));
        return (Some("aws"), region);
    }
    if host == "storage.googleapis.com" || host.ends_with(".storage.googleapis.com") {
        return (Some("gcp"), None);
    }
    if host.ends_with(".blob.core.windows.net") {
        return (Some("azure"), None);
    }
    if host.ends_with(".r2.cloudflarestorage.com") || host == "r2.cloudflarestorage.com" {
        return (Some("cloudflare"), Some("auto".to_string()));
    }
    (None, None)
}

fn looks_like_aws_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts
            .last()
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
}

/// An rclone/skyhaul remote's `provider` as a price-table provider.
pub fn from_remote_provider(provider: &str) -> Option<&'static str> {
    match provider.to_ascii_lowercase().as_str() {
        "aws" => Some("aws"),
        "gcs" | "google" | "gcp" => Some("gcp"),
        "azure" => Some("azure"),
        "cloudflare" | "r2" => Some("cloudflare"),
        _ => None,
    }
}

/// What is known of one side, in order of trust: the `--src-cloud`/`--dst-cloud` flag, the
/// endpoint's host, the remote's provider, and for `s3://` without an endpoint, AWS itself.
pub struct Clues<'a> {
    pub cloud_flag: Option<&'a str>,
    pub region: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub remote_provider: Option<&'a str>,
    /// The provider a `gs://` or `az://` location names by its scheme.
    pub scheme_provider: Option<&'a str>,
    pub local: bool,
}

pub fn locate(c: Clues) -> Place {
    let (from_host, host_region) = c.endpoint.map(from_endpoint).unwrap_or((None, None));
    let (provider, basis) = if let Some(flag) = c.cloud_flag {
        (Some(flag.to_ascii_lowercase()), "flag".to_string())
    } else if c.local {
        (None, "local path".to_string())
    } else if let Some(p) = from_host {
        (Some(p.to_string()), "endpoint host".to_string())
    } else if let Some(p) = c.remote_provider.and_then(from_remote_provider) {
        (Some(p.to_string()), "remote's provider".to_string())
    } else if let Some(p) = c.scheme_provider {
        (Some(p.to_string()), "location scheme".to_string())
    } else if c.endpoint.is_none() {
        (
            Some("aws".to_string()),
            "s3:// without an endpoint".to_string(),
        )
    } else {
        (None, "endpoint host not recognised".to_string())
    };
    Place {
        region: c.region.map(str::to_string).or(host_region),
        provider,
        local: c.local,
        basis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(
            from_endpoint("https://s3.eu-west-1.amazonaws.com"),
            (Some("aws"), Some("eu-west-1".into()))
        );
        assert_eq!(
            from_endpoint("https://bucket.s3-us-west-2.amazonaws.com/"),
            (Some("aws"), Some("us-west-2".into()))
        );
        assert_eq!(
            from_endpoint("https://s3.amazonaws.com"),
            (Some("aws"), Some("us-east-1".into()))
        );
        assert_eq!(
            from_endpoint("https://storage.googleapis.com"),
            (Some("gcp"), None)
        );
        assert_eq!(
            from_endpoint("https://acct.blob.core.windows.net"),
            (Some("azure"), None)
        );
        assert_eq!(
            from_endpoint("https://abc.r2.cloudflarestorage.com").0,
            Some("cloudflare")
        );
        assert_eq!(
            from_endpoint("https://storage.eu-north1.nebius.cloud"),
            (None, None)
        );
        assert_eq!(from_endpoint("http://127.0.0.1:9000"), (None, None));
    }

    #[test]
    fn flags_win_and_unknown_stays_unknown() {
        let clues = |cloud_flag, endpoint, local| Clues {
            cloud_flag,
            region: None,
            endpoint,
            remote_provider: None,
            scheme_provider: None,
            local,
        };
        let p = locate(clues(
            Some("gcp"),
            Some("https://s3.us-east-2.amazonaws.com"),
            false,
        ));
        assert_eq!(p.provider.as_deref(), Some("gcp"));
        assert_eq!(
            p.region.as_deref(),
            Some("us-east-2"),
            "the host's region stays"
        );
        assert_eq!(
            locate(clues(None, None, false)).provider.as_deref(),
            Some("aws")
        );
        assert_eq!(
            locate(clues(None, Some("http://127.0.0.1:1"), false)).provider,
            None
        );
        let l = locate(clues(None, None, true));
        assert_eq!(l.provider, None);
        assert_eq!(l.describe(), "this machine (cloud unknown)");
    }

    #[test]
    fn gs_and_az_locations_name_their_provider() {
        let scheme = |p, endpoint| Clues {
            cloud_flag: None,
            region: None,
            endpoint,
            remote_provider: None,
            scheme_provider: Some(p),
            local: false,
        };
        // Not "s3:// without an endpoint" = AWS, even against an emulator's endpoint.
        assert_eq!(locate(scheme("gcp", None)).provider.as_deref(), Some("gcp"));
        assert_eq!(
            locate(scheme(
                "azure",
                Some("http://127.0.0.1:10000/devstoreaccount1")
            ))
            .provider
            .as_deref(),
            Some("azure")
        );
    }
}
