//! `[tls.acme]`: certificates from an ACME CA (Let's Encrypt, or any RFC 8555
//! server). The serde struct for the file, the validated [`AcmeConfig`], and
//! the conversion between them, naming key, value and rule on every failure.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{duration, invalid, ConfigError};

/// Let's Encrypt's production directory, `directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[tls.acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAcme {
    pub directory: String,
    pub email: String,
    pub domains: Vec<String>,
    pub state_dir: String,
    pub challenge: String,
    pub renew_before: String,
    pub ca_roots: String,
}

impl Default for RawAcme {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT.into(),
            email: String::new(),
            domains: Vec::new(),
            state_dir: "/var/lib/lb/acme".into(),
            challenge: "http-01".into(),
            renew_before: "30d".into(),
            ca_roots: String::new(),
        }
    }
}

/// How the CA checks lb controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `GET /.well-known/acme-challenge/<token>` on the plain listener (port 80).
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on the TLS listener (port 443).
    TlsAlpn01,
}

impl AcmeChallenge {
    /// The name ACME gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `[tls.acme]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (default Let's Encrypt production).
    pub directory: String,
    /// The account's contact address (default none).
    pub email: Option<String>,
    /// The names of the one certificate ordered (lowercase, at least one).
    pub domains: Vec<String>,
    /// Account key and certificate, kept across restarts (default `/var/lib/lb/acme`).
    pub state_dir: PathBuf,
    /// `challenge` (default http-01).
    pub challenge: AcmeChallenge,
    /// Renew this long before expiry (default 30 days).
    pub renew_before: Duration,
    /// Extra PEM roots trusted for the CA's own HTTPS (default none).
    pub ca_roots: Option<PathBuf>,
}

/// The longest `renew_before` (10 years: anything longer is a typo).
const MAX_RENEW_BEFORE: Duration = Duration::from_secs(3650 * 86_400);

/// Validates `[tls.acme]`.
pub fn acme(r: &RawAcme) -> Result<AcmeConfig, ConfigError> {
    let directory = r.directory.trim();
    if !directory.starts_with("https://") || http::Uri::try_from(directory).is_err() {
        return Err(invalid(
            "tls.acme.directory",
            format!("{directory:?}"),
            "must be an https:// URL",
        ));
    }
    let email = match r.email.trim() {
        "" => None,
        e if valid_email(e) => Some(e.to_string()),
        e => {
            return Err(invalid(
                "tls.acme.email",
                format!("{e:?}"),
                "is not an email address",
            ))
        }
    };
    if r.domains.is_empty() {
        return Err(invalid(
            "tls.acme.domains",
            "[]",
            "must list at least one name",
        ));
    }
    let mut domains = Vec::with_capacity(r.domains.len());
    let mut seen = HashSet::new();
    for (i, d) in r.domains.iter().enumerate() {
        let name = d.trim().trim_end_matches('.').to_ascii_lowercase();
        let key = format!("tls.acme.domains[{i}]");
        if let Some(rule) = domain_rule(&name) {
            return Err(invalid(key, format!("{d:?}"), rule));
        }
        if !seen.insert(name.clone()) {
            return Err(invalid(key, format!("{d:?}"), "is listed twice"));
        }
        domains.push(name);
    }
    if r.state_dir.trim().is_empty() {
        return Err(invalid(
            "tls.acme.state_dir",
            "\"\"",
            "must be a directory path",
        ));
    }
    let challenge = match r.challenge.as_str() {
        "http-01" => AcmeChallenge::Http01,
        "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
        other => {
            return Err(invalid(
                "tls.acme.challenge",
                format!("{other:?}"),
                "is not one of \"http-01\", \"tls-alpn-01\"",
            ))
        }
    };
    let renew_before = duration(
        "tls.acme.renew_before",
        &r.renew_before,
        Duration::from_secs(60),
        MAX_RENEW_BEFORE,
    )?;
    let ca_roots = match r.ca_roots.trim() {
        "" => None,
        p => {
            roots_rule(p).map_err(|rule| invalid("tls.acme.ca_roots", format!("{p:?}"), &rule))?;
            Some(PathBuf::from(p))
        }
    };
    Ok(AcmeConfig {
        directory: directory.to_string(),
        email,
        domains,
        state_dir: PathBuf::from(r.state_dir.trim()),
        challenge,
        renew_before,
        ca_roots,
    })
}

/// An address ACME's `mailto:` contact can carry: one `@`, no spaces,
/// commas or angle brackets.
fn valid_email(e: &str) -> bool {
    let Some((local, host)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && host.contains('.')
        && !host.contains('@')
        && !e
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b",<>".contains(&b))
}

/// Why `name` (lowercased) cannot be ordered, if it cannot. The CA applies
/// its own policy on top (Let's Encrypt refuses `_`, which DNS allows).
fn domain_rule(name: &str) -> Option<&'static str> {
    if name.starts_with("*.") {
        return Some("is a wildcard, which needs the dns-01 challenge lb does not answer");
    }
    if name.is_empty() || name.len() > 253 {
        return Some("must be a DNS name of 1 to 253 characters");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some("is an IP address, not a DNS name");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Some("is not a DNS name (letters, digits, '-', '_' in dot-separated labels)");
    }
    None
}

/// Why the PEM file at `path` gives no root certificate, if it does not.
fn roots_rule(path: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let n = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a PEM certificate file: {e:?}"))?
        .len();
    if n == 0 {
        return Err("holds no PEM certificate".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(domains: &[&str]) -> RawAcme {
        RawAcme {
            domains: domains.iter().map(|s| s.to_string()).collect(),
            ..RawAcme::default()
        }
    }

    fn err(r: &RawAcme) -> String {
        acme(r).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_lets_encrypt_http01_30_days() {
        let c = acme(&raw(&["Example.COM.", "www.example.com"])).unwrap();
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert_eq!(c.domains, ["example.com", "www.example.com"]);
        assert_eq!(c.challenge, AcmeChallenge::Http01);
        assert_eq!(c.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/lb/acme"));
        assert_eq!((c.email, c.ca_roots), (None, None));
    }

    #[test]
    fn each_rule_names_its_key() {
        let mut r = raw(&[]);
        assert!(err(&r).contains("tls.acme.domains"), "{}", err(&r));
        r = raw(&["*.example.com"]);
        assert!(err(&r).contains("dns-01"));
        r = raw(&["a.example.com", "A.example.com"]);
        assert!(err(&r).contains("tls.acme.domains[1]") && err(&r).contains("twice"));
        r = raw(&["127.0.0.1"]);
        assert!(err(&r).contains("IP address"));
        r = raw(&["a b.example"]);
        assert!(err(&r).contains("not a DNS name"));
        r = RawAcme {
            directory: "http://acme.test/dir".into(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("tls.acme.directory"));
        r = RawAcme {
            email: "ops example.com".into(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("tls.acme.email"));
        r = RawAcme {
            challenge: "dns-01".into(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("tls.acme.challenge"));
        r = RawAcme {
            renew_before: "1s".into(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("tls.acme.renew_before"));
        r = RawAcme {
            ca_roots: "/nonexistent/roots.pem".into(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("tls.acme.ca_roots") && err(&r).contains("cannot be read"));
        r = RawAcme {
            state_dir: " ".into(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("tls.acme.state_dir"));
    }

    #[test]
    fn ca_roots_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let r = RawAcme {
            ca_roots: empty.display().to_string(),
            ..raw(&["a.test"])
        };
        assert!(err(&r).contains("holds no PEM certificate"), "{}", err(&r));
        let (cert, _) = crate::tls::certs::test_pair(dir.path(), &["ca.test"]);
        let r = RawAcme {
            ca_roots: cert.display().to_string(),
            ..raw(&["a.test"])
        };
        assert_eq!(acme(&r).unwrap().ca_roots, Some(cert));
    }
}

#[cfg(test)]
mod summary_tests {
    use crate::config::Config;

    #[test]
    fn lb_check_names_the_acme_certificate() {
        let c = Config::from_toml(
            "[tls]\nlisten = \"127.0.0.1:8443\"\n\
             [tls.acme]\ndomains = [\"example.com\", \"www.example.com\"]\nstate_dir = \"/var/lib/lb/acme\"\n\
             [[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let s = c.summary();
        assert!(
            s.contains("  acme: example.com,www.example.com over http-01 from https://acme-v02.api.letsencrypt.org/directory, renewed 30days before expiry, kept in /var/lib/lb/acme\n"),
            "{s}"
        );
    }
}
