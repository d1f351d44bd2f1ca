//! Test certificates (a CA and its leaves, made with rcgen; RSA and SEC1
//! keys with the openssl CLI, which rcgen cannot make) and a rustls client
//! that reports which certificate lb served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A test CA.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate written to disk.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// Which key a leaf gets.
#[derive(Clone, Copy)]
pub enum Key {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    /// RSA 2048 in PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), by openssl.
    RsaPkcs1,
    /// P-256 in SEC1 PEM (`BEGIN EC PRIVATE KEY`), by openssl.
    EcSec1,
}

impl Default for Ca {
    fn default() -> Self {
        Ca::new()
    }
}

impl Ca {
    pub fn new() -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "lb test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (the first is also its CN), valid from yesterday
    /// for `days` (negative: expired), written as `<stem>.crt`/`<stem>.key`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str], key: Key, days: i64) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let now = time_now();
        p.not_before = now - time::Duration::days(2);
        p.not_after = now + time::Duration::days(days);
        let key_path = dir.join(format!("{stem}.key"));
        let kp = match key {
            Key::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            Key::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            Key::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            Key::RsaPkcs1 | Key::EcSec1 => {
                let args: &[&str] = match key {
                    Key::RsaPkcs1 => &["genrsa", "-traditional", "2048"],
                    _ => &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
                };
                let out = std::process::Command::new("openssl")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "openssl {args:?} failed");
                let pem = String::from_utf8(out.stdout).unwrap();
                std::fs::write(&key_path, &pem).unwrap();
                // rcgen signs with the key as PKCS#8.
                let pk8 = std::process::Command::new("openssl")
                    .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
                    .arg(&key_path)
                    .output()
                    .unwrap();
                let pk8 = String::from_utf8(pk8.stdout).unwrap();
                rcgen::KeyPair::from_pem(&pk8).unwrap()
            }
        };
        let cert = p.signed_by(&kp, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{stem}.crt"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        if !matches!(key, Key::RsaPkcs1 | Key::EcSec1) {
            std::fs::write(&key_path, kp.serialize_pem()).unwrap();
        }
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// A rustls client trusting this CA, offering `alpn`, TLS `versions`.
    pub fn client(
        &self,
        alpn: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(c)
    }

    /// A reqwest client trusting this CA that sends `localhost` to `addr`;
    /// HTTP/1.1 only unless `h2`.
    pub fn reqwest(&self, addr: SocketAddr, h2: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem().as_bytes()).unwrap())
            .resolve("localhost", addr)
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10));
        if !h2 {
            b = b.http1_only();
        }
        b.build().unwrap()
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A TLS connection to `addr` with SNI `sni`.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The leaf certificate lb served on `s`.
pub fn served(s: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// `[tls]` for `listen` serving `leaves` (the first is the default), plus `extra` lines.
pub fn tls_toml(listen: SocketAddr, leaves: &[&Leaf], extra: &str) -> String {
    let certs: Vec<String> = leaves
        .iter()
        .map(|l| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                l.cert.display(),
                l.key.display()
            )
        })
        .collect();
    format!(
        "[tls]\nlisten = \"{listen}\"\ncertificates = [{}]\n{extra}\n",
        certs.join(", ")
    )
}

/// `toml` with each `[tls] certificates` path (inside the container) replaced
/// by a file in the returned directory: a self-signed certificate for
/// localhost and its key, so `Config::from_toml` and `lb check` (which load
/// certificates) run here. Also returns the original (cert, key) paths.
pub fn with_certs(toml: &str) -> (tempfile::TempDir, String, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let v: toml::Value = toml::from_str(toml).unwrap();
    let mut text = toml.to_string();
    let mut paths = Vec::new();
    let entries = v
        .get("tls")
        .and_then(|t| t.get("certificates"))
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    for (i, e) in entries.iter().enumerate() {
        let cert = e["cert"].as_str().unwrap().to_string();
        let key = e["key"].as_str().unwrap().to_string();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cp, kp) = (
            dir.path().join(format!("{i}.crt")),
            dir.path().join(format!("{i}.key")),
        );
        std::fs::write(&cp, c.cert.pem()).unwrap();
        std::fs::write(&kp, c.key_pair.serialize_pem()).unwrap();
        for (from, to) in [(&cert, &cp), (&key, &kp)] {
            let quoted = format!("\"{from}\"");
            assert_eq!(text.matches(&quoted).count(), 1, "{from} named once");
            text = text.replace(&quoted, &format!("\"{}\"", to.display()));
        }
        paths.push((cert, key));
    }
    (dir, text, paths)
}
