//! Validated configuration: `lb.toml` parsed into [`raw`] serde structs, then
//! converted with [`TryFrom`] into the typed [`Config`] the rest of lb uses.
//!
//! Every failure is a [`ConfigError`] that names the key, the value and the rule,
//! e.g. `backends[2].weight: 5000 is out of range 0..=1000`. Nothing here panics.

mod acme;
mod pool;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use acme::{AcmeChallenge, AcmeConfig};
pub use validate::ConfigError;

/// Maximum number of backends, group members included: eligibility is tracked
/// in a `u64` bit set.
pub const MAX_BACKENDS: usize = 64;
/// Upper bound of an operator weight (SPEC: integers 0..=1000).
pub const MAX_WEIGHT: u32 = 1000;
/// The longest `server.grace_period` a config may set.
pub const MAX_GRACE_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);
/// The longest `server.upgrade_sock`: a Unix socket path holds 107 bytes,
/// and the successor's `.ready` socket sits beside it.
pub const MAX_UPGRADE_SOCK_PATH: usize = 107 - ".ready".len();
/// The longest `pool.drain_timeout` a config may set.
pub const MAX_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(86_400);
/// `admin.token_file`'s default name, in the config file's directory.
pub const DEFAULT_TOKEN_FILE: &str = "lb-admin-token";

/// The balancing algorithm (SPEC "Balancing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's order).
    RoundRobin,
    /// Fewest in-flight requests divided by weight.
    LeastConn,
    /// Weighted consistent (rendezvous) hashing of the client IP.
    IpHash,
    /// Peak-EWMA response time × (in-flight + 1) / weight.
    LeastTime,
    /// Smooth WRR over weights adjusted by measured latency and errors.
    Dynamic,
}

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::IpHash,
        Algorithm::LeastTime,
        Algorithm::Dynamic,
    ];

    /// The name used in config and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::IpHash => "ip_hash",
            Algorithm::LeastTime => "least_time",
            Algorithm::Dynamic => "dynamic",
        }
    }

    /// Parses a config/admin name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stickiness layered over any algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// No stickiness.
    None,
    /// Pin by a cookie naming the backend (opaque id).
    Cookie(String),
    /// Consistent hash of a request header's value.
    Header(HeaderName),
}

/// Access/diagnostic log encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Front-door address (default `0.0.0.0:80`).
    pub listen: SocketAddr,
    /// Proxy worker threads (default 2).
    pub threads: usize,
    /// How long in-flight requests may finish after SIGTERM (default 5 s).
    pub grace_period: Duration,
    /// The Unix socket a successor (`lb run --upgrade`) receives the
    /// listening sockets on (default `/tmp/lb-upgrade.sock`; see `upgrade`).
    pub upgrade_sock: PathBuf,
    /// Idle time allowed between requests on a client connection (default 60 s;
    /// 0 = close after each response).
    pub keepalive_timeout: Duration,
    /// The whole request head must arrive within this, counted from accept on a
    /// new connection and from the first byte of the next request on a kept-alive
    /// one (default 10 s); otherwise `408` and close.
    pub header_timeout: Duration,
    /// A client that takes no response bytes this long is disconnected
    /// (default 60 s).
    pub send_timeout: Duration,
    /// No request-body byte this long: `408` and close (default 60 s).
    pub body_timeout: Duration,
    /// Client connections per process; beyond it new ones are closed at
    /// once (default 10,000).
    pub max_connections: usize,
    /// PROXY protocol headers accepted from [`ServerConfig::proxy_protocol_from`].
    pub proxy_protocol: ProxyProtocol,
    /// Sources that must send a PROXY header (others are direct clients).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Largest request head (request line + headers) accepted; above → 431 (default 32 KiB).
    pub max_header_bytes: usize,
    /// Most header fields accepted; above → 431 (default 100).
    pub max_headers: usize,
    /// Also accept HTTP/2 with prior knowledge (h2c) on `listen` (default false).
    pub h2c: bool,
    /// Concurrent streams per HTTP/2 connection (default 100).
    pub h2_max_streams: u32,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Admin API, `/metrics` and status (default `127.0.0.1:9901`).
    pub listen: SocketAddr,
    /// Where operator weights/modes are persisted (default: none).
    pub state_file: Option<PathBuf>,
    /// File holding the admin token when `LB_ADMIN_TOKEN` is unset; where a
    /// generated token is written when the file does not exist. Default
    /// ([`Config::load`]): `lb-admin-token` next to the config file; `None`
    /// only for a config not read from a file.
    pub token_file: Option<PathBuf>,
}

/// `[balancer]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// Default `round_robin`.
    pub algorithm: Algorithm,
    /// Default none.
    pub sticky: Sticky,
    /// Response header naming the chosen backend; `None` when configured as "".
    pub backend_header: Option<HeaderName>,
    /// A backend that comes back or joins ramps from 10 % to 100 % of its
    /// share over this window (default 0: at once).
    pub slow_start: Duration,
}

/// `[health]`: active checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Path probed with GET (default `/health`).
    pub path: String,
    /// `Host` header of probes; `None` (default): the host part of each
    /// backend's `addr`.
    pub host: Option<String>,
    /// Time between probe starts (default 1 s); a probe still in flight delays
    /// its backend's next one.
    pub interval: Duration,
    /// Probe timeout (default 500 ms); may exceed `interval`.
    pub timeout: Duration,
    /// Consecutive successes to mark up (default 2).
    pub rise: u32,
    /// Consecutive failures to mark down (default 2).
    pub fall: u32,
}

/// `[circuit_breaker]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit (default 5).
    pub failures: u32,
    /// First open period (default 5 s), doubled on each re-open.
    pub open_for: Duration,
    /// Cap of the open period (default 60 s).
    pub max_open_for: Duration,
    /// Probes admitted while half-open (default 1).
    pub half_open_requests: u32,
}

/// `[retry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total tries per request (default 3).
    pub attempts: u32,
    /// Upstream statuses retried for idempotent requests (default 502, 503, 504).
    pub statuses: Vec<u16>,
    /// Retries that may have reached a backend stay under this share of the
    /// requests of the last 10 s, at least 3 a second (default 0.2).
    pub budget: f64,
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeoutConfig {
    /// TCP connect to a backend (default 1 s).
    pub connect: Duration,
    /// Waiting for the upstream response header (default 30 s).
    pub response: Duration,
    /// How long a pooled idle upstream connection is kept (default 4 s, below
    /// the 5 s keep-alive of common app servers; 0 = no reuse).
    pub upstream_idle: Duration,
}

/// `[discovery]`: re-resolution of backend hostnames.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// How often hostnames are re-resolved (default 5 s).
    pub interval: Duration,
    /// DNS servers to ask (`ip:port`); empty = the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Default text.
    pub format: LogFormat,
    /// One event per proxied request (default true).
    pub access: bool,
}

/// `[queue]`: where requests wait when every eligible backend is at its
/// `max_in_flight` (SPEC "Per-backend capacity and the queue").
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Most requests waiting at once (default 1024; 0 = no queue: a request
    /// that finds every backend full gets 503 at once).
    pub size: usize,
    /// Longest wait before `503` (default 1 s).
    pub timeout: Duration,
}

/// How a backend's hostname becomes addresses (SPEC "Backends that resolve to
/// many addresses").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// One backend at the first address (IPv4 preferred).
    One,
    /// A group: one member backend per address (A and AAAA), named
    /// `<name>@<ip>:<port>`.
    All,
}

/// How lb speaks to a backend (`[[backends]] protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 (default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge: requests are streams on shared connections.
    H2c,
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique name, `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// `host:port`; the host may be a name, re-resolved periodically.
    pub addr: String,
    /// Operator weight 0..=1000 (default 1).
    pub weight: u32,
    /// Most requests in flight to it at once; 0 (default) = unlimited. For a
    /// group, each member's.
    pub max_in_flight: u32,
    /// `resolve` (default [`Resolve::One`]).
    pub resolve: Resolve,
    /// `protocol` (default [`Protocol::Http1`]).
    pub protocol: Protocol,
}

/// How the pool starts its members (`pool.provider` and its keys).
#[derive(Debug, Clone, PartialEq)]
pub enum PoolProvider {
    /// Child processes of lb on loopback ports.
    Process {
        /// argv with `{name}` and `{port}` substituted per member.
        command: Vec<String>,
        /// Ports handed to members, inclusive (default 3100..=3199).
        ports: std::ops::RangeInclusive<u16>,
    },
    /// Containers through the Docker Engine API.
    Docker(DockerConfig),
}

impl PoolProvider {
    /// `"process"` or `"docker"`.
    pub fn kind(&self) -> &'static str {
        match self {
            PoolProvider::Process { .. } => "process",
            PoolProvider::Docker(_) => "docker",
        }
    }
}

/// `[pool]` keys of `provider = "docker"`.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// Image members run (never pulled by lb: it must exist on the engine).
    pub image: String,
    /// Network members join; lb reaches them at their address on it (default "bridge").
    pub network: String,
    /// Port the app listens on inside the container (default 3000).
    pub container_port: u16,
    /// CPU limit in cores (default 0 = none).
    pub cpus: f64,
    /// Memory limit in bytes (default 0 = none).
    pub memory: u64,
    /// Environment of every member (plus `CONTAINER_ID=<member name>`).
    pub env: std::collections::BTreeMap<String, String>,
    /// Publish `container_port` on this host address at an ephemeral port and
    /// reach members there (lb on the host, not on `network`); default none.
    pub publish: Option<std::net::IpAddr>,
    /// Engine address: `unix:///path` or `tcp://host:port` (default: env
    /// `DOCKER_HOST`, else `unix:///var/run/docker.sock`).
    pub docker_host: String,
}

/// `[pool]`: backends that lb starts, watches, recycles, scales and stops.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// `process` or `docker`, with that provider's settings.
    pub provider: PoolProvider,
    /// Members are `<name>-1`, `<name>-2`, ... (numbers never reused).
    pub name: String,
    /// Members started at boot (default 2).
    pub size: u32,
    /// Never fewer ready members than this (default: `size`).
    pub min_size: u32,
    /// Never more members than this (default: `size`).
    pub max_size: u32,
    /// Operator weight of every member (default 1).
    pub weight: u32,
    /// Each member's capacity; 0 (default) = unlimited, no scaling on load.
    pub max_in_flight: u32,
    /// Every member at capacity this long: start one more (default 2 s).
    pub scale_up_after: Duration,
    /// A member above `min_size` with no request this long is stopped (default 5 min).
    pub idle_timeout: Duration,
    /// Members older than this are recycled; `None` (default, `"0s"`): never.
    pub max_age: Option<Duration>,
    /// Members using more memory are recycled; `None` (default, `"0"`): never.
    pub max_memory: Option<u64>,
    /// How often liveness, age and memory are checked (default 5 s).
    pub check_interval: Duration,
    /// Longest wait for a stopping member's in-flight requests, and between
    /// SIGTERM and SIGKILL (default 30 s).
    pub drain_timeout: Duration,
    /// A member not healthy this long after its start has failed (default 30 s).
    pub start_timeout: Duration,
    /// Whether `POST /admin/pool/rollout` may name a `command` (default
    /// false: a token holder could otherwise run any program as lb; `403`).
    /// Process provider only; rollouts by reload are the file's own.
    pub allow_rollout_command: bool,
}

impl PoolConfig {
    /// Is `backend` a name this pool gives its members (`<name>-<digits>`)?
    pub fn owns_name(&self, backend: &str) -> bool {
        backend
            .strip_prefix(self.name.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// `[server] proxy_protocol`: which PROXY protocol versions a trusted source
/// may send (default off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
    Any,
}

impl ProxyProtocol {
    /// Does this setting accept a header of version `v` (1 or 2)?
    pub fn accepts(self, v: u8) -> bool {
        matches!(
            (self, v),
            (ProxyProtocol::Any, _) | (ProxyProtocol::V1, 1) | (ProxyProtocol::V2, 2)
        )
    }
}

/// `[limits]`: per-client-IP limits (IPv6 keyed by /64); 0 = off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitsConfig {
    /// Connections one client IP may hold open; more are closed at accept.
    pub per_ip_connections: u32,
    /// Requests per second one client IP may send; more get `429`.
    pub per_ip_rate: u32,
    /// Requests allowed above the rate in a burst.
    pub per_ip_burst: u32,
}

/// The lowest TLS version `[tls]` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (default).
    V12,
    /// TLS 1.3 only.
    V13,
}

/// One `tls.certificates` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[tls]`: the HTTPS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Where HTTPS is served (default `0.0.0.0:443`).
    pub listen: SocketAddr,
    /// The certificates; SNI picks by SAN (exact, then wildcard); the first is the default.
    pub certificates: Vec<CertFiles>,
    /// `min_version` (default 1.2).
    pub min_version: TlsVersion,
    /// `alpn`, in preference order (default `["h2", "http/1.1"]`).
    pub alpn: Vec<String>,
    /// A handshake not done within this is dropped (default 10 s).
    pub handshake_timeout: Duration,
    /// TLS 1.3 tickets and 1.2 session ids (default true).
    pub session_resumption: bool,
    /// The plain listener answers `308` to `https://` (default false).
    pub redirect_http: bool,
    /// `Strict-Transport-Security` on HTTPS responses (default none).
    pub hsts: Option<String>,
    /// The certificates and the rustls configuration as loaded when this
    /// config was validated: a reload that cannot load them is refused.
    pub loaded: crate::tls::Loaded,
    /// `[tls.acme]`: a certificate ordered and renewed by lb (default none).
    pub acme: Option<AcmeConfig>,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[balancer]`
    pub balancer: BalancerConfig,
    /// `[health]`
    pub health: HealthConfig,
    /// `[circuit_breaker]`
    pub circuit_breaker: CircuitConfig,
    /// `[retry]`
    pub retry: RetryConfig,
    /// `[timeouts]`
    pub timeouts: TimeoutConfig,
    /// `[dynamic] interval`: how often effective weights are recomputed (default 2 s).
    pub dynamic_interval: Duration,
    /// `[discovery]`
    pub discovery: DiscoveryConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[queue]`
    pub queue: QueueConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[tls]` (default: no HTTPS listener).
    pub tls: Option<TlsConfig>,
    /// Some backend is `protocol = "h2c"`: every request takes the Pingora
    /// path (lb's own HTTP/1 path speaks HTTP/1.1 upstream only).
    pub h2c_backends: bool,
    /// `[[backends]]`, in file order (at most [`MAX_BACKENDS`]; at least one
    /// unless a `[pool]` provides them).
    pub backends: Vec<BackendConfig>,
    /// `[pool]`: backends lb starts and owns (default: none).
    pub pool: Option<PoolConfig>,
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::parse(path, e.into_inner(), text)
        })?;
        Config::try_from(raw)
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let mut c = Config::from_toml(&text)?;
        // A relative token_file is relative to the working directory, as
        // every path in the file; the default sits next to the file itself.
        c.admin
            .token_file
            .get_or_insert_with(|| path.with_file_name(DEFAULT_TOKEN_FILE));
        Ok(c)
    }

    /// A one-screen human summary, printed by `lb check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let b = &self.balancer;
        let sticky = match &b.sticky {
            Sticky::None => "none".to_string(),
            Sticky::Cookie(c) => format!("cookie {c}"),
            Sticky::Header(h) => format!("header {h}"),
        };
        let _ = writeln!(s, "listen        {}", self.server.listen);
        let sv = &self.server;
        let _ = writeln!(
            s,
            "client        {} thread(s); head within {:?}, body bytes every {:?}, sends within {:?}, keep-alive {:?}, at most {} fields / {} bytes",
            sv.threads, sv.header_timeout, sv.body_timeout, sv.send_timeout, sv.keepalive_timeout, sv.max_headers, sv.max_header_bytes
        );
        if let Some(t) = &self.tls {
            let now = crate::tls::unix_now();
            let _ = writeln!(
                s,
                "tls           {} (TLS {}+, ALPN {}, handshake within {:?}{}{})",
                t.listen,
                if t.min_version == TlsVersion::V13 {
                    "1.3"
                } else {
                    "1.2"
                },
                t.alpn.join(","),
                t.handshake_timeout,
                if t.redirect_http {
                    ", plain HTTP redirected"
                } else {
                    ""
                },
                if t.hsts.is_some() { ", HSTS" } else { "" },
            );
            if let Some(a) = &t.acme {
                let _ = writeln!(
                    s,
                    "  acme: {} over {} from {}, renewed {} before expiry, kept in {}",
                    a.domains.join(","),
                    a.challenge.as_str(),
                    a.directory,
                    humantime::format_duration(a.renew_before),
                    a.state_dir.display()
                );
            }
            for (c, f) in t.loaded.certs().iter().zip(&t.certificates) {
                let days = c.days_left(now);
                let warn = if days < crate::tls::certs::WARN_DAYS {
                    "  WARNING: expires soon"
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    "  {:<44} expires {} ({days} days){warn}  {}",
                    c.names.join(","),
                    c.not_after_rfc3339(),
                    f.cert.display()
                );
            }
        }
        let _ = writeln!(s, "admin         {}", self.admin.listen);
        let _ = writeln!(s, "algorithm     {} (sticky: {sticky})", b.algorithm);
        let h = &self.health;
        let host = h.host.as_deref().unwrap_or("each backend's host");
        let _ = writeln!(
            s,
            "health        GET {} (Host: {host}) every {:?}, timeout {:?}, rise {} fall {}",
            h.path, h.interval, h.timeout, h.rise, h.fall
        );
        let c = &self.circuit_breaker;
        let _ = writeln!(
            s,
            "circuit       open after {} failures for {:?} (max {:?}), {} half-open probe(s)",
            c.failures, c.open_for, c.max_open_for, c.half_open_requests
        );
        let _ = writeln!(
            s,
            "retry         {} attempts, statuses {:?}; timeouts connect {:?} response {:?}; upstream idle {:?}",
            self.retry.attempts,
            self.retry.statuses,
            self.timeouts.connect,
            self.timeouts.response,
            self.timeouts.upstream_idle
        );
        let q = &self.queue;
        let _ = if q.size == 0 {
            writeln!(
                s,
                "queue         off (a request finding every backend full gets 503)"
            )
        } else {
            writeln!(
                s,
                "queue         {} requests, timeout {:?}",
                q.size, q.timeout
            )
        };
        let _ = writeln!(s, "backends      {}", self.backends.len());
        for be in &self.backends {
            let mut cap = match be.max_in_flight {
                0 => String::new(),
                n => format!(", max_in_flight {n}"),
            };
            if be.resolve == Resolve::All {
                cap.push_str(", resolve all (one member per address)");
            }
            let _ = writeln!(
                s,
                "  {:<20} {:<28} weight {}{cap}",
                be.name, be.addr, be.weight
            );
        }
        if let Some(p) = &self.pool {
            let what = match &p.provider {
                PoolProvider::Process { command, ports } => format!(
                    "process {:?} on ports {}-{}",
                    command.join(" "),
                    ports.start(),
                    ports.end()
                ),
                PoolProvider::Docker(d) => format!("docker {} on network {}", d.image, d.network),
            };
            let _ = writeln!(
                s,
                "pool          {}-N: {what}; size {} ({}..={}), max_in_flight {}",
                p.name, p.size, p.min_size, p.max_size, p.max_in_flight
            );
        }
        s
    }
}
