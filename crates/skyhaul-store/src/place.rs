//! Where a store's objects live, in one spelling: see [`crate::Store::place`].

/// `endpoint` as one spelling of it: scheme and host in lower case, no default port, no
/// trailing `/`. Two sides whose endpoints differ only so (`https://S3.example.com:443/`
/// and `https://s3.example.com`) reach the same objects, and the overlap check must see
/// it. Other aliases of one service (an IP address for its name, a regional AWS host for
/// the global one) are not known here.
pub fn endpoint_place(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.trim_end_matches('/').to_string();
    };
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    if !default_port.is_empty() && authority.ends_with(default_port) {
        authority.truncate(authority.len() - default_port.len());
    }
    format!("{scheme}://{authority}{}", path.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_endpoint_in_its_spellings_is_one_place() {
        let want = "https://s3.example.com";
        for e in [
            "https://s3.example.com",
            "https://s3.example.com/",
            "HTTPS://S3.Example.COM:443/",
        ] {
            assert_eq!(endpoint_place(e), want, "{e}");
        }
        assert_eq!(
            endpoint_place("http://127.0.0.1:10000/devstoreaccount1/"),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_ne!(
            endpoint_place("http://h:9000"),
            endpoint_place("http://h:9001")
        );
        assert_eq!(endpoint_place("http://h:80"), "http://h");
        assert_eq!(endpoint_place("aws"), "aws");
    }
}
