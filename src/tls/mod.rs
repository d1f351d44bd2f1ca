//! HTTPS: lb terminates TLS itself, in its front door, with rustls.
//!
//! Why not Pingora's TLS listener: it would hand the front door a stream it
//! cannot re-home to the serving thread, run every handshake under a fixed
//! timeout and log each failed one as an error. Here the front door accepts
//! TCP as for plain HTTP (PROXY header, connection limits), completes the
//! handshake within `tls.handshake_timeout` and hands the decrypted stream
//! ([`crate::proxy::stream::ClientStream`]) to the same HTTP/1 path, or to
//! Pingora's HTTP/2 server when ALPN chose `h2`: one request path for both.
//!
//! A validated config carries its [`Loaded`] certificates and rustls
//! configuration, so a reload (SIGHUP, `POST /admin/reload`, a certificate
//! file changing) that cannot load them is refused and the old ones serve on.

pub mod acme;
pub mod certs;
pub mod watch;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use pingora::protocols::Stream;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

use crate::config::{CertFiles, TlsConfig, TlsVersion};
use crate::metrics::GlobalCounters;
use crate::proxy::stream::ClientStream;
pub use certs::CertInfo;

/// `lb_tls_handshakes_total{version}` labels.
pub const VERSIONS: [&str; 2] = ["1.2", "1.3"];
/// `lb_tls_handshakes_total{alpn}` labels.
pub const ALPNS: [&str; 3] = ["h2", "http/1.1", "none"];
/// `lb_tls_handshake_errors_total{reason}` labels.
pub const ERRORS: [&str; 7] = [
    "timeout", "closed", "not_tls", "protocol", "alpn", "alert", "other",
];

/// Certificates and the rustls configuration serving them, as loaded when
/// a config was validated. Equal only to itself (configs compare by it).
#[derive(Clone)]
pub struct Loaded(Arc<LoadedInner>);

struct LoadedInner {
    server: Arc<ServerConfig>,
    certs: Vec<CertInfo>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.certs.iter().map(|c| &c.names))
            .finish()
    }
}

impl PartialEq for Loaded {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Which certificate could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct LoadError {
    /// Index in `tls.certificates`.
    pub index: usize,
    /// The key file (else the chain) is at fault.
    pub key_file: bool,
    pub reason: String,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Loaded {
    /// Reads every certificate pair and builds the rustls configuration.
    pub fn load(
        files: &[CertFiles],
        min_version: TlsVersion,
        alpn: &[String],
        resumption: bool,
    ) -> Result<Loaded, LoadError> {
        let now = unix_now();
        let mut keys = Vec::with_capacity(files.len());
        let mut infos = Vec::with_capacity(files.len());
        for (index, f) in files.iter().enumerate() {
            let (key, info) = certs::load_pair(&f.cert, &f.key, now).map_err(|e| LoadError {
                index,
                key_file: e.key_file,
                reason: e.reason,
            })?;
            keys.push(key);
            infos.push(info);
        }
        let resolver = certs::Resolver::new(keys, &infos);
        let server = server_config(Arc::new(resolver), min_version, alpn, resumption);
        Ok(Loaded(Arc::new(LoadedInner {
            server: Arc::new(server),
            certs: infos,
        })))
    }

    /// What each certificate is, in `tls.certificates` order.
    pub fn certs(&self) -> &[CertInfo] {
        &self.0.certs
    }

    /// The rustls configuration new handshakes use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.0.server.clone()
    }
}

/// rustls' configuration: versions from `min_version` (rustls' default
/// cipher suites: no CBC, no RSA key exchange), the SNI resolver, ALPN, and
/// resumption state shared by every configuration this process builds, so
/// a reload does not end resumption.
fn server_config(
    resolver: Arc<certs::Resolver>,
    min_version: TlsVersion,
    alpn: &[String],
    resumption: bool,
) -> ServerConfig {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    // ring, not aws-lc-rs: deprecated in rustls 0.23.48 only for lacking the
    // post-quantum key exchange (X25519MLKEM768); see Cargo.toml.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ring's default provider supports both versions: this cannot fail.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // lb's order, not the client's (AES-256-GCM, AES-128-GCM, ChaCha20):
    // every suite is AEAD with forward secrecy either way, but auditors
    // (testssl.sh's `cipher_order`, `make tls-audit`) rate a client-chosen
    // order HIGH, as nginx's `ssl_prefer_server_ciphers on` avoids.
    config.ignore_client_order = true;
    if resumption {
        config.session_storage = session_cache();
        if let Some(t) = ticketer() {
            config.ticketer = t;
        }
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config
}

/// TLS 1.2 session ids (and TLS 1.3 stateful resumption where tickets are
/// off): one cache for the process.
fn session_cache() -> Arc<dyn StoresServerSessions> {
    static CACHE: OnceLock<Arc<dyn StoresServerSessions>> = OnceLock::new();
    CACHE
        .get_or_init(|| ServerSessionMemoryCache::new(20_000))
        .clone()
}

/// TLS 1.3 (and 1.2) session tickets: rustls' rotating ticketer (a new key
/// every 6 hours, each accepted for 12), one for the process.
fn ticketer() -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| rustls::crypto::ring::Ticketer::new().ok())
        .clone()
}

/// Completes the TLS handshake on an accepted connection within
/// `tls.handshake_timeout`; `None` (counted, logged at `debug` only) when it
/// fails, or when it answered an ACME tls-alpn-01 challenge.
pub async fn accept(
    stream: Stream,
    tls: &TlsConfig,
    counters: &GlobalCounters,
) -> Option<ClientStream> {
    let config = tls.loaded.server_config();
    let reason = match tokio::time::timeout(tls.handshake_timeout, handshake(stream, config)).await
    {
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(s))) => {
            let conn = s.get_ref().1;
            let v = match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => 0,
                _ => 1,
            };
            let a = match conn.alpn_protocol() {
                Some(b"h2") => 0,
                Some(b"http/1.1") => 1,
                _ => 2,
            };
            counters.tls_handshakes[v * ALPNS.len() + a].fetch_add(1, Ordering::Relaxed);
            return Some(ClientStream::tls(s));
        }
        Ok(Err(e)) => classify(&e),
        Err(_) => 0,
    };
    counters.tls_handshake_errors[reason].fetch_add(1, Ordering::Relaxed);
    tracing::debug!(reason = ERRORS[reason], "TLS handshake failed");
    None
}

/// The handshake with `config`, or with a tls-alpn-01 challenge's own
/// configuration when the ClientHello asks for one (`None` once answered:
/// the CA only looks at the certificate). The ClientHello is read first so
/// that `acme-tls/1` never reaches the normal ALPN choice.
async fn handshake(
    stream: Stream,
    config: Arc<ServerConfig>,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<Stream>>> {
    let acceptor = rustls::server::Acceptor::default();
    let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
    let hello = start.client_hello();
    if let Some(challenge) = acme::alpn_challenge(hello.server_name(), hello.alpn()) {
        let done = start.into_stream(challenge).await;
        tracing::debug!(ok = done.is_ok(), "answered an ACME tls-alpn-01 challenge");
        return Ok(None);
    }
    start.into_stream(config).await.map(Some)
}

/// The [`ERRORS`] index for a failed handshake's error.
fn classify(e: &std::io::Error) -> usize {
    use rustls::Error as E;
    match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::InvalidMessage(_)) => 2,
        Some(E::PeerIncompatible(_)) => 3,
        Some(E::NoApplicationProtocol) => 4,
        Some(E::AlertReceived(_)) => 5,
        Some(_) => 6,
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => 1,
            _ => 6,
        },
    }
}
