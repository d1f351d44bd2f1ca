//! `tls.redirect_http`: the plain listener sends clients to HTTPS.

use crate::config::Config;

/// The path prefix ACME's http-01 challenge is fetched at: never redirected.
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The message of the `308`.
pub const MOVED: &str = "moved to https";

/// The `308` to `location` (lb's own reply, on every path).
pub fn reply<'a>(location: &'a str, request_id: &'a str) -> super::reply::ErrorReply<'a> {
    super::reply::ErrorReply {
        status: 308,
        message: MOVED,
        request_id,
        retry_after: 0,
        location: Some(location),
        grpc: false,
    }
}

/// Where a plain-HTTP request for `host` and `target` is sent instead (the
/// `308`'s `Location`), or `None` to serve it: HTTPS already, no `[tls]` or
/// `redirect_http` off, an ACME challenge, or no usable `Host`.
pub fn to_https(
    config: &Config,
    https: bool,
    host: Option<&[u8]>,
    target: &[u8],
) -> Option<String> {
    let tls = config.tls.as_ref().filter(|t| t.redirect_http && !https)?;
    // An absolute-form target's own authority and path.
    let (host, path) = match target.strip_prefix(b"http://") {
        Some(rest) => {
            let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            (&rest[..slash], &rest[slash..])
        }
        None => (host?, target),
    };
    if path.starts_with(ACME_CHALLENGE.as_bytes()) {
        return None;
    }
    let host = std::str::from_utf8(host).ok()?;
    // The name without its port (IPv6 literals keep their brackets).
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
    {
        return None;
    }
    let path = std::str::from_utf8(path)
        .ok()
        .filter(|p| p.starts_with('/'))?;
    let port = tls.listen.port();
    Some(if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(redirect: bool, listen: &str) -> Config {
        // A config with [tls] needs a loadable certificate: build one.
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::tls::certs::test_pair(dir.path(), &["example.test"]);
        let text = format!(
            "[tls]\nlisten = \"{listen}\"\nredirect_http = {redirect}\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
             [[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
            cert.display(),
            key.display()
        );
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn plain_requests_go_to_https_but_acme_challenges() {
        let c = config(true, "0.0.0.0:443");
        let to = |host: &str, target: &str| {
            to_https(&c, false, Some(host.as_bytes()), target.as_bytes())
        };
        assert_eq!(
            to("example.test", "/a?b=1").as_deref(),
            Some("https://example.test/a?b=1")
        );
        assert_eq!(
            to("example.test:8080", "/").as_deref(),
            Some("https://example.test/")
        );
        assert_eq!(to("[::1]:80", "/").as_deref(), Some("https://[::1]/"));
        assert_eq!(to("[::1]", "/").as_deref(), Some("https://[::1]/"));
        assert_eq!(to("example.test", "/.well-known/acme-challenge/tok"), None);
        assert_eq!(
            to("ignored", "http://other.test:81/p").as_deref(),
            Some("https://other.test/p")
        );
        assert_eq!(to("bad host\r\n", "/"), None);
        assert_eq!(to_https(&c, false, None, b"/"), None);
        // Already HTTPS.
        assert_eq!(to_https(&c, true, Some(b"example.test"), b"/"), None);
        let c = config(true, "127.0.0.1:8443");
        assert_eq!(
            to_https(&c, false, Some(b"example.test"), b"/x").as_deref(),
            Some("https://example.test:8443/x")
        );
        let c = config(false, "127.0.0.1:8443");
        assert_eq!(to_https(&c, false, Some(b"example.test"), b"/x"), None);
    }
}
