//! Certificates: PEM files loaded into rustls keys, what `lb check`,
//! `/admin/tls` and the metrics say about them, and the SNI resolver.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Below this many days left, `lb check` and the start-up log warn.
pub const WARN_DAYS: i64 = 14;

/// What is known of one loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its DNS names (SANs, lowercase; the subject CN when it has none).
    pub names: Vec<String>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// `"file"` (from `tls.certificates`) or `"acme"`.
    pub source: &'static str,
}

impl CertInfo {
    /// Whole days left at `now` (Unix seconds); negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// `not_after` as RFC 3339 (UTC).
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why a certificate pair cannot be used: the message names the reason;
/// `key_file` says whether the key (else the chain) is at fault.
#[derive(Debug, Clone)]
pub struct CertError {
    pub key_file: bool,
    pub reason: String,
}

fn chain_err(reason: impl Into<String>) -> CertError {
    CertError {
        key_file: false,
        reason: reason.into(),
    }
}

fn key_err(reason: impl Into<String>) -> CertError {
    CertError {
        key_file: true,
        reason: reason.into(),
    }
}

/// Reads a PEM chain and its key, checks the key belongs to the leaf and the
/// leaf has not expired at `now` (Unix seconds).
pub fn load_pair(
    cert: &Path,
    key: &Path,
    now: i64,
) -> Result<(Arc<CertifiedKey>, CertInfo), CertError> {
    let pem = std::fs::read(cert).map_err(|e| chain_err(format!("cannot be read: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| chain_err(format!("is not a PEM certificate chain: {e:?}")))?;
    let Some(leaf) = chain.first() else {
        return Err(chain_err("holds no PEM certificate"));
    };
    let info = describe(leaf)?;
    if info.not_after <= now {
        return Err(chain_err(format!(
            "expired on {}",
            info.not_after_rfc3339()
        )));
    }
    let pem = std::fs::read(key).map_err(|e| key_err(format!("cannot be read: {e}")))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| key_err("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
        key_err(format!(
            "is not a usable key (RSA, ECDSA P-256/P-384, Ed25519): {e}"
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| key_err("does not match the certificate"))?;
    Ok((Arc::new(certified), info))
}

/// Names, expiry and issuer of a DER certificate.
fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| chain_err(format!("is not a valid X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = x509.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo {
        names,
        not_after: x509.validity().not_after.timestamp(),
        issuer: x509.issuer().to_string(),
        source: "file",
    })
}

/// Picks a certificate by SNI: an exact name, then a wildcard one level up,
/// then the first (the default, also for clients sending no SNI).
#[derive(Debug)]
pub struct Resolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl Resolver {
    /// A resolver over `keys` described by `infos`, in order (the first
    /// wins a name two share).
    pub fn new(keys: Vec<Arc<CertifiedKey>>, infos: &[CertInfo]) -> Resolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, info) in infos.iter().enumerate() {
            for n in &info.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        Resolver {
            keys,
            exact,
            wildcard,
        }
    }

    /// The index of the certificate for `sni` (lowercase ASCII).
    pub fn pick(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else { return 0 };
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands SNI lowercased and without a trailing dot.
        let sni = hello.server_name();
        // `[tls.acme]`'s certificate, for its names (for every name when it
        // is the only one), swapped in at run time: no reload needed.
        if let Some(k) = super::acme::serve(sni, self.keys.is_empty()) {
            return Some(k);
        }
        self.keys.get(self.pick(sni)).cloned()
    }
}

/// A self-signed certificate for `names` and its key, written into `dir`
/// (unit tests of code that needs a loadable `[tls]`).
#[cfg(test)]
pub fn test_pair(dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(names: &[&str]) -> CertInfo {
        CertInfo {
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after: 0,
            issuer: String::new(),
            source: "file",
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let infos = [
            info(&["default.test"]),
            info(&["*.example.test"]),
            info(&["a.example.test"]),
        ];
        let r = Resolver::new(Vec::new(), &infos);
        assert_eq!(r.pick(Some("a.example.test")), 2);
        assert_eq!(r.pick(Some("b.example.test")), 1);
        // A wildcard covers one label only.
        assert_eq!(r.pick(Some("x.b.example.test")), 0);
        assert_eq!(r.pick(Some("example.test")), 0);
        assert_eq!(r.pick(Some("default.test")), 0);
        assert_eq!(r.pick(None), 0);
    }

    #[test]
    fn days_left_round_down() {
        let mut i = info(&[]);
        i.not_after = 10 * 86_400 + 5;
        assert_eq!(i.days_left(0), 10);
        assert_eq!(i.days_left(10 * 86_400 + 6), -1);
        assert_eq!(i.not_after_rfc3339(), "1970-01-11T00:00:05Z");
    }
}
