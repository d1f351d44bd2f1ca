//! `RawConfig` → `Config`: every rule, each failure naming key, value and rule.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::raw::{RawAlgorithm, RawConfig, RawLogFormat, RawResolve, RawSticky};
use super::*;

/// A config that cannot be used. `Display` is the one line `lb check` prints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{key}: {message}")]
    Parse {
        /// Dotted key path, or "(file)" for syntax errors.
        key: String,
        /// The parser's explanation.
        message: String,
    },
    /// A value that parsed but breaks a rule.
    #[error("{key}: {value} {rule}")]
    Invalid {
        /// Dotted key path, e.g. `backends[2].weight`.
        key: String,
        /// The offending value as written.
        value: String,
        /// The rule, phrased to follow the value ("is out of range 0..=1000").
        rule: String,
    },
}

impl ConfigError {
    pub(super) fn parse(key: String, e: toml::de::Error, text: &str) -> ConfigError {
        // toml's message carries a multi-line source excerpt; keep the first
        // meaningful line so `lb check` prints one line.
        let msg = e.message().trim().replace('\n', " ");
        let key = if key.is_empty() || key == "." {
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    format!("(line {line})")
                }
                None => "(file)".to_string(),
            }
        } else {
            key
        };
        ConfigError::Parse { key, message: msg }
    }

    /// The key the error is about (used by tests and the admin API).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Io { path, .. } => path,
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key,
        }
    }
}

pub(super) fn invalid(
    key: impl Into<String>,
    value: impl std::fmt::Display,
    rule: &str,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        rule: rule.to_string(),
    }
}

pub(super) fn duration(
    key: &str,
    s: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| {
        invalid(
            key,
            format!("{s:?}"),
            "is not a duration (e.g. \"500ms\", \"5s\")",
        )
    })?;
    if d < min || d > max {
        let rule = format!(
            "is out of range {}..={}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
        return Err(invalid(key, format!("{s:?}"), &rule));
    }
    Ok(d)
}

pub(super) fn int_in(key: &str, v: i64, lo: i64, hi: i64) -> Result<u32, ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(key, v, &format!("is out of range {lo}..={hi}")));
    }
    // lo/hi are within u32 for every caller.
    Ok(v as u32)
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        invalid(
            key,
            format!("{s:?}"),
            "is not an ip:port address (e.g. \"0.0.0.0:80\", \"[::1]:8080\")",
        )
    })
}

fn header_name(key: &str, s: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| invalid(key, format!("{s:?}"), "is not a valid HTTP header name"))
}

/// RFC 6265 cookie-name (an RFC 7230 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `host:port` where host is an IPv4/IPv6 literal (`[::1]`) or a DNS name.
fn backend_addr(key: &str, s: &str) -> Result<(), ConfigError> {
    let bad = || {
        invalid(
            key,
            format!("{s:?}"),
            "is not host:port (e.g. \"app-1:3000\", \"127.0.0.1:3000\", \"[::1]:3000\")",
        )
    };
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// Upper bound of `queue.size` (each waiter costs a few hundred bytes).
const MAX_QUEUE: u32 = 1_000_000;
/// Upper bound of `max_in_flight` (0 = unlimited).
const MAX_IN_FLIGHT: u32 = 1_000_000;
const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(r: RawConfig) -> Result<Config, ConfigError> {
        let server = ServerConfig {
            listen: socket_addr("server.listen", &r.server.listen)?,
            threads: int_in("server.threads", r.server.threads, 1, 256)? as usize,
            grace_period: duration(
                "server.grace_period",
                &r.server.grace_period,
                Duration::ZERO,
                super::MAX_GRACE_PERIOD,
            )?,
            upgrade_sock: upgrade_sock(&r.server.upgrade_sock)?,
            keepalive_timeout: duration(
                "server.keepalive_timeout",
                &r.server.keepalive_timeout,
                Duration::ZERO,
                HOUR,
            )?,
            header_timeout: duration("server.header_timeout", &r.server.header_timeout, MS, HOUR)?,
            send_timeout: duration("server.send_timeout", &r.server.send_timeout, MS, HOUR)?,
            body_timeout: duration("server.body_timeout", &r.server.body_timeout, MS, HOUR)?,
            max_connections: int_in(
                "server.max_connections",
                r.server.max_connections,
                1,
                10_000_000,
            )? as usize,
            proxy_protocol: proxy_protocol(&r.server.proxy_protocol)?,
            proxy_protocol_from: proxy_sources(&r.server.proxy_protocol_from)?,
            max_header_bytes: int_in(
                "server.max_header_bytes",
                r.server.max_header_bytes,
                1024,
                1 << 20,
            )? as usize,
            // Pingora's parser stops at 256 header fields.
            max_headers: int_in("server.max_headers", r.server.max_headers, 1, 256)? as usize,
            h2c: r.server.h2c,
            h2_max_streams: int_in("server.h2_max_streams", r.server.h2_max_streams, 1, 10_000)?,
        };
        if server.proxy_protocol != ProxyProtocol::Off && server.proxy_protocol_from.is_empty() {
            return Err(invalid(
                "server.proxy_protocol_from",
                "[]",
                "must list the trusted PROXY senders when server.proxy_protocol is on",
            ));
        }
        let admin = AdminConfig {
            listen: socket_addr("admin.listen", &r.admin.listen)?,
            state_file: non_empty_path("admin.state_file", r.admin.state_file.clone())?,
            token_file: non_empty_path("admin.token_file", r.admin.token_file.clone())?,
        };
        if admin.listen == server.listen {
            return Err(invalid(
                "admin.listen",
                format!("{:?}", r.admin.listen),
                "must differ from server.listen",
            ));
        }
        let balancer = balancer(&r)?;
        let health = health(&r)?;
        let circuit_breaker = circuit(&r)?;
        let retry = RetryConfig {
            attempts: int_in("retry.attempts", r.retry.attempts, 1, 10)?,
            statuses: r
                .retry
                .statuses
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    int_in(&format!("retry.statuses[{i}]"), s, 500, 599).map(|v| v as u16)
                })
                .collect::<Result<_, _>>()?,
            budget: match r.retry.budget {
                b if (0.0..=1.0).contains(&b) => b,
                b => return Err(invalid("retry.budget", b, "is out of range 0.0..=1.0")),
            },
        };
        let timeouts = TimeoutConfig {
            connect: duration(
                "timeouts.connect",
                &r.timeouts.connect,
                MS,
                Duration::from_secs(60),
            )?,
            response: duration("timeouts.response", &r.timeouts.response, MS, HOUR)?,
            upstream_idle: duration(
                "timeouts.upstream_idle",
                &r.timeouts.upstream_idle,
                Duration::ZERO,
                HOUR,
            )?,
        };
        let dynamic_interval = duration(
            "dynamic.interval",
            &r.dynamic.interval,
            Duration::from_millis(100),
            HOUR,
        )?;
        let discovery = DiscoveryConfig {
            interval: duration(
                "discovery.interval",
                &r.discovery.interval,
                Duration::from_millis(100),
                HOUR,
            )?,
            nameservers: r
                .discovery
                .nameservers
                .iter()
                .enumerate()
                .map(|(i, s)| socket_addr(&format!("discovery.nameservers[{i}]"), s))
                .collect::<Result<_, _>>()?,
        };
        let log = LogConfig {
            format: match r.log.format {
                RawLogFormat::Text => LogFormat::Text,
                RawLogFormat::Json => LogFormat::Json,
            },
            access: r.log.access,
        };
        let queue = QueueConfig {
            size: int_in("queue.size", r.queue.size, 0, MAX_QUEUE as i64)? as usize,
            timeout: duration("queue.timeout", &r.queue.timeout, MS, HOUR)?,
        };
        let limits = LimitsConfig {
            per_ip_connections: int_in(
                "limits.per_ip_connections",
                r.limits.per_ip_connections,
                0,
                1_000_000,
            )?,
            per_ip_rate: int_in("limits.per_ip_rate", r.limits.per_ip_rate, 0, 1_000_000)?,
            per_ip_burst: int_in("limits.per_ip_burst", r.limits.per_ip_burst, 0, 1_000_000)?,
        };
        let tls = match &r.tls {
            Some(t) => Some(tls(t, &server, &admin)?),
            None => None,
        };
        let backends = backends(&r)?;
        let pool = super::pool::pool(&r, &backends)?;
        Ok(Config {
            server,
            admin,
            balancer,
            health,
            circuit_breaker,
            retry,
            timeouts,
            dynamic_interval,
            discovery,
            log,
            queue,
            limits,
            tls,
            h2c_backends: backends.iter().any(|b| b.protocol == Protocol::H2c),
            backends,
            pool,
        })
    }
}

/// `[tls]`: its keys, then its certificates loaded (files read, keys
/// matched, expiry checked), so a reload that cannot serve them is refused.
fn tls(
    t: &super::raw::RawTls,
    server: &ServerConfig,
    admin: &AdminConfig,
) -> Result<TlsConfig, ConfigError> {
    let listen = socket_addr("tls.listen", &t.listen)?;
    if listen == server.listen || listen == admin.listen {
        return Err(invalid(
            "tls.listen",
            format!("{:?}", t.listen),
            "must differ from server.listen and admin.listen",
        ));
    }
    let acme = t.acme.as_ref().map(super::acme::acme).transpose()?;
    if t.certificates.is_empty() && acme.is_none() {
        return Err(invalid(
            "tls.certificates",
            "[]",
            "must list at least one { cert, key } pair (or [tls.acme] be set)",
        ));
    }
    let mut certificates = Vec::with_capacity(t.certificates.len());
    for (i, c) in t.certificates.iter().enumerate() {
        let cert = non_empty_path(&format!("tls.certificates[{i}].cert"), Some(c.cert.clone()))?;
        let key = non_empty_path(&format!("tls.certificates[{i}].key"), Some(c.key.clone()))?;
        if let (Some(cert), Some(key)) = (cert, key) {
            certificates.push(CertFiles { cert, key });
        }
    }
    let min_version = match t.min_version.as_str() {
        "1.2" => TlsVersion::V12,
        "1.3" => TlsVersion::V13,
        other => {
            return Err(invalid(
                "tls.min_version",
                format!("{other:?}"),
                "is not one of \"1.2\", \"1.3\"",
            ))
        }
    };
    if t.alpn.is_empty() {
        return Err(invalid("tls.alpn", "[]", "must name at least one protocol"));
    }
    let mut seen = HashSet::new();
    for (i, p) in t.alpn.iter().enumerate() {
        if p != "h2" && p != "http/1.1" {
            return Err(invalid(
                format!("tls.alpn[{i}]"),
                format!("{p:?}"),
                "is not one of \"h2\", \"http/1.1\"",
            ));
        }
        if !seen.insert(p) {
            return Err(invalid(
                format!("tls.alpn[{i}]"),
                format!("{p:?}"),
                "is listed twice",
            ));
        }
    }
    let hsts = match t.hsts.trim() {
        "" => None,
        v if http::HeaderValue::from_str(v).is_ok() => Some(v.to_string()),
        v => {
            return Err(invalid(
                "tls.hsts",
                format!("{v:?}"),
                "is not a valid header value",
            ))
        }
    };
    let handshake_timeout = duration(
        "tls.handshake_timeout",
        &t.handshake_timeout,
        Duration::from_millis(100),
        Duration::from_secs(300),
    )?;
    let loaded =
        crate::tls::Loaded::load(&certificates, min_version, &t.alpn, t.session_resumption)
            .map_err(|e| {
                let (path, which) = if e.key_file {
                    (&certificates[e.index].key, "key")
                } else {
                    (&certificates[e.index].cert, "cert")
                };
                invalid(
                    format!("tls.certificates[{}].{which}", e.index),
                    format!("{:?}", path.display().to_string()),
                    &e.reason,
                )
            })?;
    Ok(TlsConfig {
        listen,
        certificates,
        min_version,
        alpn: t.alpn.clone(),
        handshake_timeout,
        session_resumption: t.session_resumption,
        redirect_http: t.redirect_http,
        hsts,
        loaded,
        acme,
    })
}

fn proxy_protocol(v: &str) -> Result<ProxyProtocol, ConfigError> {
    match v {
        "off" => Ok(ProxyProtocol::Off),
        "v1" => Ok(ProxyProtocol::V1),
        "v2" => Ok(ProxyProtocol::V2),
        "any" => Ok(ProxyProtocol::Any),
        _ => Err(invalid(
            "server.proxy_protocol",
            v,
            "must be \"off\", \"v1\", \"v2\" or \"any\"",
        )),
    }
}

/// CIDR blocks (`10.0.0.0/8`, `fd00::/8`) or single addresses.
fn proxy_sources(v: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("server.proxy_protocol_from[{i}]"),
                        s,
                        "must be an IP address or a CIDR block such as 10.0.0.0/8",
                    )
                })
        })
        .collect()
}

/// `server.upgrade_sock`: an absolute path short enough for a Unix socket
/// address (108 bytes with its NUL), with room for the `.ready` socket beside it.
fn upgrade_sock(v: &str) -> Result<PathBuf, ConfigError> {
    let key = "server.upgrade_sock";
    if !v.starts_with('/') || v.ends_with('/') || v.contains('\0') {
        return Err(invalid(
            key,
            format!("{v:?}"),
            "must be an absolute file path",
        ));
    }
    if v.len() > super::MAX_UPGRADE_SOCK_PATH {
        return Err(invalid(
            key,
            format!("{v:?}"),
            &format!(
                "must be at most {} bytes (a Unix socket path)",
                super::MAX_UPGRADE_SOCK_PATH
            ),
        ));
    }
    Ok(PathBuf::from(v))
}

fn non_empty_path(key: &str, p: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    match p {
        Some(s) if s.trim().is_empty() => {
            Err(invalid(key, "\"\"", "must be a file path (or omitted)"))
        }
        other => Ok(other.map(PathBuf::from)),
    }
}

fn balancer(r: &RawConfig) -> Result<BalancerConfig, ConfigError> {
    let b = &r.balancer;
    let algorithm = match b.algorithm {
        RawAlgorithm::RoundRobin => Algorithm::RoundRobin,
        RawAlgorithm::LeastConn => Algorithm::LeastConn,
        RawAlgorithm::IpHash => Algorithm::IpHash,
        RawAlgorithm::LeastTime => Algorithm::LeastTime,
        RawAlgorithm::Dynamic => Algorithm::Dynamic,
    };
    if !is_token(&b.sticky_cookie) {
        return Err(invalid(
            "balancer.sticky_cookie",
            format!("{:?}", b.sticky_cookie),
            "is not a cookie name (1-64 token characters)",
        ));
    }
    let sticky_header = header_name("balancer.sticky_header", &b.sticky_header)?;
    let sticky = match b.sticky {
        RawSticky::None => Sticky::None,
        RawSticky::Cookie => Sticky::Cookie(b.sticky_cookie.clone()),
        RawSticky::Header => Sticky::Header(sticky_header),
    };
    let backend_header = if b.backend_header.is_empty() {
        None
    } else {
        Some(header_name("balancer.backend_header", &b.backend_header)?)
    };
    Ok(BalancerConfig {
        algorithm,
        sticky,
        backend_header,
        slow_start: duration("balancer.slow_start", &b.slow_start, Duration::ZERO, HOUR)?,
    })
}

fn health(r: &RawConfig) -> Result<HealthConfig, ConfigError> {
    let h = &r.health;
    if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(invalid(
            "health.path",
            format!("{:?}", h.path),
            "must be an absolute request path starting with \"/\"",
        ));
    }
    // A timeout above the interval is fine: a probe in flight delays its
    // backend's next one (as in Docker, Kubernetes, HAProxy and Envoy).
    let interval = duration("health.interval", &h.interval, 10 * MS, HOUR)?;
    let timeout = duration("health.timeout", &h.timeout, MS, HOUR)?;
    let host =
        match &h.host {
            Some(v) if !valid_host_header(v) => return Err(invalid(
                "health.host",
                format!("{v:?}"),
                "is not a host or host:port for the probes' Host header (e.g. \"app.internal\")",
            )),
            other => other.clone(),
        };
    Ok(HealthConfig {
        path: h.path.clone(),
        host,
        interval,
        timeout,
        rise: int_in("health.rise", h.rise, 1, 100)?,
        fall: int_in("health.fall", h.fall, 1, 100)?,
    })
}

/// A `Host` value: an RFC 3986 authority without userinfo (host, `[v6]`,
/// optional port), at most 255 bytes.
fn valid_host_header(v: &str) -> bool {
    !v.is_empty() && v.len() <= 255 && !v.contains('@') && v.parse::<http::uri::Authority>().is_ok()
}

fn circuit(r: &RawConfig) -> Result<CircuitConfig, ConfigError> {
    let c = &r.circuit_breaker;
    let open_for = duration("circuit_breaker.open_for", &c.open_for, MS, HOUR)?;
    let max_open_for = duration(
        "circuit_breaker.max_open_for",
        &c.max_open_for,
        MS,
        24 * HOUR,
    )?;
    if max_open_for < open_for {
        return Err(invalid(
            "circuit_breaker.max_open_for",
            format!("{:?}", c.max_open_for),
            &format!(
                "must be at least circuit_breaker.open_for ({:?})",
                c.open_for
            ),
        ));
    }
    Ok(CircuitConfig {
        failures: int_in("circuit_breaker.failures", c.failures, 1, 1000)?,
        open_for,
        max_open_for,
        half_open_requests: int_in(
            "circuit_breaker.half_open_requests",
            c.half_open_requests,
            1,
            1000,
        )?,
    })
}

fn backends(r: &RawConfig) -> Result<Vec<BackendConfig>, ConfigError> {
    if r.backends.is_empty() && r.pool.is_none() {
        return Err(invalid(
            "backends",
            "[]",
            "must list at least one [[backends]] entry (or configure a [pool])",
        ));
    }
    if r.backends.len() > MAX_BACKENDS {
        return Err(invalid(
            "backends",
            format!("{} entries", r.backends.len()),
            &format!("exceeds the maximum of {MAX_BACKENDS}"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(r.backends.len());
    for (i, b) in r.backends.iter().enumerate() {
        if !valid_name(&b.name) {
            return Err(invalid(
                format!("backends[{i}].name"),
                format!("{:?}", b.name),
                "must match [A-Za-z0-9_.-]{1,64}",
            ));
        }
        if !seen.insert(b.name.as_str()) {
            return Err(invalid(
                format!("backends[{i}].name"),
                format!("{:?}", b.name),
                "is a duplicate; backend names must be unique",
            ));
        }
        backend_addr(&format!("backends[{i}].addr"), &b.addr)?;
        let weight = int_in(
            &format!("backends[{i}].weight"),
            b.weight,
            0,
            MAX_WEIGHT as i64,
        )?;
        let max_in_flight = int_in(
            &format!("backends[{i}].max_in_flight"),
            b.max_in_flight,
            0,
            MAX_IN_FLIGHT as i64,
        )?;
        out.push(BackendConfig {
            name: b.name.clone(),
            addr: b.addr.clone(),
            weight,
            max_in_flight,
            resolve: match b.resolve {
                RawResolve::One => Resolve::One,
                RawResolve::All => Resolve::All,
            },
            protocol: match b.protocol.as_deref() {
                None | Some("http1") => Protocol::Http1,
                Some("h2c") => Protocol::H2c,
                Some(other) => {
                    return Err(invalid(
                        format!("backends[{i}].protocol"),
                        format!("{other:?}"),
                        "is not one of \"http1\", \"h2c\"",
                    ))
                }
            },
        });
    }
    if !out.is_empty() && r.pool.is_none() && out.iter().all(|b| b.weight == 0) {
        return Err(invalid(
            "backends[*].weight",
            "0 everywhere",
            "leaves nothing to route to; at least one weight must be above 0",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Every rule above and in `pool.rs`, in process: a refused value names its
    //! key, the value as written and the rule; the bounds themselves pass.
    //! `tests/check.rs` keeps what needs the binary (exit code, output).

    use super::ConfigError;
    use crate::config::{Config, PoolProvider, Resolve, Sticky};

    const B: &str = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:3000\"\n";
    const CMD: &str = "command = [\"app\", \"--listen\", \"127.0.0.1:{port}\"]";
    /// A docker pool valid whatever `DOCKER_HOST` says.
    const DOCKER: &str = "provider = \"docker\"\nimage = \"a\"\ndocker_host = \"unix:///d.sock\"";
    const DOCKER_KEYS: [&str; 8] = [
        "image",
        "network",
        "container_port",
        "cpus",
        "memory",
        "env",
        "docker_host",
        "publish",
    ];

    /// A whole config setting `key` (dotted; `x[0]` makes a one-element array)
    /// to the TOML value `v`, everything else minimal: `backends[1].*` is a
    /// second backend beside a valid first, `pool.*` a process pool (docker
    /// for docker keys) without static backends, `circuit_breaker.*` starts
    /// from open_for = 1ms, max_open_for = 24h so every bound is reachable.
    fn set(key: &str, v: &str) -> String {
        let (section, field) = key.split_once('.').expect("section.field");
        let (first, table, base) = match section {
            "backends[1]" => (B, "[[backends]]".into(), "name = \"b\"\naddr = \"x:1\""),
            "pool" if DOCKER_KEYS.contains(&field) => ("", "[pool]".into(), DOCKER),
            "pool" => ("", "[pool]".into(), CMD),
            "circuit_breaker" => (
                B,
                "[circuit_breaker]".into(),
                "open_for = \"1ms\"\nmax_open_for = \"24h\"",
            ),
            s => (B, format!("[{s}]"), ""),
        };
        let (field, v) = match field.strip_suffix("[0]") {
            Some(f) => (f, format!("[{v}]")),
            None => (field, v.to_string()),
        };
        let base: String = base
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{first}{table}\n{base}{field} = {v}\n")
    }

    fn accepted(text: &str) -> Config {
        Config::from_toml(text).unwrap_or_else(|e| panic!("refused: {e}\n{text}"))
    }

    /// `text` is refused with one line starting with `want` (`key: ...`).
    fn refused(text: &str, want: &str) -> ConfigError {
        let e = match Config::from_toml(text) {
            Err(e) => e,
            Ok(_) => panic!("accepted; expected {want:?}:\n{text}"),
        };
        let line = e.to_string();
        assert!(
            line.starts_with(want),
            "got {line:?}, expected {want:?}\n{text}"
        );
        assert!(!line.contains('\n'), "not one line: {line:?}");
        let key = want.split_once(": ").expect("key: ...").0;
        assert_eq!(e.key(), key, "{line}");
        e
    }

    /// A value that parsed but breaks a rule: `want` is `key: value rule...`,
    /// naming the value as written in full and (the start of) the rule.
    #[test]
    fn tls_rules_name_key_value_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::tls::certs::test_pair(dir.path(), &["a.test"]);
        let (other, other_key) = {
            let d = dir.path().join("o");
            std::fs::create_dir(&d).unwrap();
            crate::tls::certs::test_pair(&d, &["b.test"])
        };
        let text = |listen: &str, pair: (&std::path::Path, &std::path::Path), extra: &str| {
            format!(
                "[tls]\nlisten = \"{listen}\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n{extra}\n\
                 [[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
                pair.0.display(),
                pair.1.display()
            )
        };
        let good = (cert.as_path(), key.as_path());
        let c = Config::from_toml(&text("127.0.0.1:8443", good, "")).unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.loaded.certs()[0].names, ["a.test"]);
        assert_eq!(
            (t.min_version, t.alpn.len(), t.session_resumption),
            (crate::config::TlsVersion::V12, 2, true)
        );
        for (extra, want) in [
            (
                "min_version = \"1.1\"",
                "tls.min_version: \"1.1\" is not one of \"1.2\", \"1.3\"",
            ),
            (
                "alpn = [\"h3\"]",
                "tls.alpn[0]: \"h3\" is not one of \"h2\", \"http/1.1\"",
            ),
            (
                "alpn = [\"h2\", \"h2\"]",
                "tls.alpn[1]: \"h2\" is listed twice",
            ),
            ("alpn = []", "tls.alpn: [] must name at least one protocol"),
            (
                "handshake_timeout = \"1ms\"",
                "tls.handshake_timeout: \"1ms\" is out of range",
            ),
            (
                "hsts = \"a\\u0001b\"",
                "tls.hsts: \"a\\u{1}b\" is not a valid header value",
            ),
        ] {
            assert_invalid(&text("127.0.0.1:8443", good, extra), want);
        }
        assert_invalid(
            &text("0.0.0.0:80", good, ""),
            "tls.listen: \"0.0.0.0:80\" must differ from server.listen and admin.listen",
        );
        let mismatched = text("127.0.0.1:8443", (cert.as_path(), other_key.as_path()), "");
        let e = Config::from_toml(&mismatched).unwrap_err().to_string();
        assert!(
            e.starts_with("tls.certificates[0].key: ")
                && e.ends_with("does not match the certificate"),
            "{e}"
        );
        let missing = dir.path().join("missing.pem");
        let e = Config::from_toml(&text(
            "127.0.0.1:8443",
            (missing.as_path(), key.as_path()),
            "",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("tls.certificates[0].cert: ") && e.contains("cannot be read"),
            "{e}"
        );
        let e = Config::from_toml(&text("127.0.0.1:8443", (key.as_path(), key.as_path()), ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let _ = other;
    }

    fn assert_invalid(text: &str, want: &str) {
        match refused(text, want) {
            ConfigError::Invalid { key, value, .. } => {
                let named = format!("{key}: {value} ");
                assert!(
                    want.starts_with(&named) && want.len() > named.len(),
                    "{want:?} must name the value and the rule"
                );
            }
            e => panic!("expected a rule, got {e}\n{text}"),
        }
    }

    /// Syntax, an unknown key or variant, a wrong type: the parser's message.
    fn assert_parse(text: &str, want: &str) {
        match refused(text, want) {
            ConfigError::Parse { .. } => {}
            e => panic!("expected a parse error, got {e}\n{text}"),
        }
    }

    /// Rows `key = TOML value => the error line` (or its start), the config
    /// made by [`set`]. One rule per row; integer and duration ranges are
    /// [`INTS`] and [`DURATIONS`].
    const RULES: &str = r#"
server.listen = "localhost:80"          => server.listen: "localhost:80" is not an ip:port address (e.g. "0.0.0.0:80", "[::1]:8080")
server.listen = "0.0.0.0"               => server.listen: "0.0.0.0" is not an ip:port address
server.upgrade_sock = "lb.sock"         => server.upgrade_sock: "lb.sock" must be an absolute file path
server.upgrade_sock = "/tmp/"           => server.upgrade_sock: "/tmp/" must be an absolute file path
admin.listen = "127.0.0.1:99999"        => admin.listen: "127.0.0.1:99999" is not an ip:port address
admin.listen = "0.0.0.0:80"             => admin.listen: "0.0.0.0:80" must differ from server.listen
admin.state_file = " "                  => admin.state_file: "" must be a file path (or omitted)
admin.token_file = ""                   => admin.token_file: "" must be a file path (or omitted)

balancer.sticky_cookie = "a b"          => balancer.sticky_cookie: "a b" is not a cookie name (1-64 token characters)
balancer.sticky_cookie = ""             => balancer.sticky_cookie: "" is not a cookie name
balancer.sticky_cookie = "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" => balancer.sticky_cookie: "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" is not a cookie name
balancer.sticky_header = "a b"          => balancer.sticky_header: "a b" is not a valid HTTP header name
balancer.sticky_header = ""             => balancer.sticky_header: "" is not a valid HTTP header name
balancer.backend_header = "X:B"         => balancer.backend_header: "X:B" is not a valid HTTP header name

health.path = "health"                  => health.path: "health" must be an absolute request path starting with "/"
health.path = ""                        => health.path: "" must be an absolute request path
health.path = "/a b"                    => health.path: "/a b" must be an absolute request path
health.host = "a b"                     => health.host: "a b" is not a host or host:port for the probes' Host header
health.host = ""                        => health.host: "" is not a host or host:port
health.host = "u@h:80"                  => health.host: "u@h:80" is not a host or host:port

retry.statuses = [502, 404]             => retry.statuses[1]: 404 is out of range 500..=599
retry.budget = 1.5                      => retry.budget: 1.5 is out of range 0.0..=1.0
retry.budget = -0.1                     => retry.budget: -0.1 is out of range 0.0..=1.0
retry.budget = nan                      => retry.budget: NaN is out of range 0.0..=1.0
retry.budget = inf                      => retry.budget: inf is out of range 0.0..=1.0

discovery.nameservers[0] = "8.8.8.8"    => discovery.nameservers[0]: "8.8.8.8" is not an ip:port address
discovery.nameservers = ["1.1.1.1:53", "dns:53"] => discovery.nameservers[1]: "dns:53" is not an ip:port address

backends[1].name = "has space"          => backends[1].name: "has space" must match [A-Za-z0-9_.-]{1,64}
backends[1].name = ""                   => backends[1].name: "" must match [A-Za-z0-9_.-]{1,64}
backends[1].name = "é"                  => backends[1].name: "é" must match
backends[1].name = "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" => backends[1].name: "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" must match
backends[1].name = "a"                  => backends[1].name: "a" is a duplicate; backend names must be unique
backends[1].addr = "no-port"            => backends[1].addr: "no-port" is not host:port (e.g. "app-1:3000", "127.0.0.1:3000", "[::1]:3000")
backends[1].addr = "x:99999"            => backends[1].addr: "x:99999" is not host:port
backends[1].addr = "x:0"                => backends[1].addr: "x:0" is not host:port
backends[1].addr = "x:"                 => backends[1].addr: "x:" is not host:port
backends[1].addr = ":80"                => backends[1].addr: ":80" is not host:port
backends[1].addr = "-a:1"               => backends[1].addr: "-a:1" is not host:port
backends[1].addr = "a-:1"               => backends[1].addr: "a-:1" is not host:port
backends[1].addr = "a..b:1"             => backends[1].addr: "a..b:1" is not host:port
backends[1].addr = "a_b:1"              => backends[1].addr: "a_b:1" is not host:port
backends[1].addr = "::1:80"             => backends[1].addr: "::1:80" is not host:port
backends[1].addr = "llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll.x:80" => backends[1].addr: "llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll.x:80" is not host:port
backends[1].protocol = "h2"             => backends[1].protocol: "h2" is not one of "http1", "h2c"
server.h2_max_streams = 0               => server.h2_max_streams: 0 is out of range 1..=10000

pool.name = "bad name"                  => pool.name: "bad name" must match [A-Za-z0-9_.-]{1,50}
pool.name = ""                          => pool.name: "" must match
pool.name = "ppppppppppppppppppppppppppppppppppppppppppppppppppp" => pool.name: "ppppppppppppppppppppppppppppppppppppppppppppppppppp" must match [A-Za-z0-9_.-]{1,50}
pool.size = 0                           => pool.size: 0 is out of range 1..=64
pool.size = 65                          => pool.size: 65 is out of range 1..=64
pool.size = 33                          => pool.size: 33 exceeds 32: 64 backends at most, 0 static, and each member may briefly have a replacement beside it
pool.max_size = 33                      => pool.max_size: 33 exceeds 32
pool.max_memory = "lots"                => pool.max_memory: "lots" is not a size (e.g. "500MiB", "512m", "1g"; 0 = off)
pool.command = []                       => pool.command: [] must be a non-empty argv list
pool.command = [" ", "{port}"]          => pool.command: [" ", "{port}"] must be a non-empty argv list
pool.command = ["app"]                  => pool.command: ["app"] must pass {port} to the member (lb reaches it at 127.0.0.1:{port})
pool.ports = "9-3"                      => pool.ports: "9-3" is not a port range "FIRST-LAST" within 1..=65535
pool.ports = "0-5"                      => pool.ports: "0-5" is not a port range
pool.ports = "1-65536"                  => pool.ports: "1-65536" is not a port range
pool.ports = "3100"                     => pool.ports: "3100" is not a port range
pool.ports = "a-b"                      => pool.ports: "a-b" is not a port range
pool.image = " "                        => pool.image: " " must name a local image (e.g. "lb-app:local")
pool.cpus = 1024.5                      => pool.cpus: 1024.5 is out of range 0..=1024 (0 = no limit)
pool.cpus = -1.0                        => pool.cpus: -1 is out of range 0..=1024
pool.memory = "1m"                      => pool.memory: "1m" is below Docker's minimum of 6m (or 0 = no limit)
pool.memory = "6291455"                 => pool.memory: "6291455" is below Docker's minimum of 6m
pool.memory = "lots"                    => pool.memory: "lots" is not a size
pool.docker_host = "http://d:2375"      => pool.docker_host: "http://d:2375" must be unix:///path/to/docker.sock or tcp://host:port
pool.env = { "A=B" = "1" }              => pool.env.A=B: "A=B" is not an environment variable name
pool.env = { "" = "1" }                 => pool.env.: "" is not an environment variable name
pool.publish = "localhost"              => pool.publish: "localhost" is not an IP address to publish members on
"#;

    /// Rows of [`RULES`]' form for errors from the TOML parser.
    const PARSE: &str = r#"
server.lisen = 1                        => server.lisen: unknown field `lisen`
queue.length = 5                        => queue.length: unknown field `length`
backends[1].port = 1                    => backends[1].port: unknown field `port`
pool.replicas = 2                       => pool.replicas: unknown field `replicas`
balancer.algorithm = "fastest"          => balancer.algorithm: unknown variant `fastest`
balancer.sticky = "ip"                  => balancer.sticky: unknown variant `ip`
log.format = "xml"                      => log.format: unknown variant `xml`
backends[1].resolve = "many"            => backends[1].resolve: unknown variant `many`, expected `one` or `all`
pool.provider = "k8s"                   => pool.provider: unknown variant `k8s`
server.threads = "two"                  => server.threads: invalid type: string "two"
server.listen = 80                      => server.listen: invalid type: integer `80`
log.access = "yes"                      => log.access: invalid type: string "yes"
retry.budget = "x"                      => retry.budget: invalid type: string "x"
retry.statuses = 502                    => retry.statuses: invalid type: integer `502`
pool.allow_rollout_command = 1          => pool.allow_rollout_command: invalid type: integer `1`
"#;

    /// `(config, error line)` for each row of a table.
    fn rows(table: &str) -> impl Iterator<Item = (String, &str)> {
        table.lines().filter(|l| !l.trim().is_empty()).map(|row| {
            let (setting, want) = row.split_once(" => ").expect("setting => error");
            let (key, v) = setting.split_once(" = ").expect("key = value");
            (set(key.trim(), v.trim()), want.trim())
        })
    }

    #[test]
    fn each_rule_names_key_value_and_rule() {
        for (text, want) in rows(RULES) {
            assert_invalid(&text, want);
        }
        // Rules across keys or entries.
        let many = |n: usize| -> String {
            (1..=n)
                .map(|i| format!("[[backends]]\nname = \"b{i}\"\naddr = \"x:{i}\"\n"))
                .collect()
        };
        let cases = [
            (
                "[server]\nthreads = 2\n".to_string(),
                "backends: [] must list at least one [[backends]] entry (or configure a [pool])",
            ),
            (many(65), "backends: 65 entries exceeds the maximum of 64"),
            (
                "[[backends]]\nname = \"a\"\naddr = \"x:1\"\nweight = 0\n\
                 [[backends]]\nname = \"b\"\naddr = \"x:2\"\nweight = 0\n"
                    .into(),
                "backends[*].weight: 0 everywhere leaves nothing to route to; \
                 at least one weight must be above 0",
            ),
            (
                format!("[circuit_breaker]\nopen_for = \"10s\"\nmax_open_for = \"5s\"\n{B}"),
                "circuit_breaker.max_open_for: \"5s\" must be at least circuit_breaker.open_for (\"10s\")",
            ),
            (
                format!("[pool]\n{CMD}\nsize = 3\nmax_size = 2\n"),
                "pool.max_size: 2 must be at least pool.size (3)",
            ),
            (
                format!("{B}[pool]\n{CMD}\nmax_size = 32\n"),
                "pool.max_size: 32 exceeds 31: 64 backends at most, 1 static",
            ),
            (
                "[pool]\nprovider = \"docker\"\ndocker_host = \"unix:///d.sock\"\n".into(),
                "pool.image: \"\" must name a local image",
            ),
            (
                format!("[[backends]]\nname = \"app-1\"\naddr = \"x:1\"\n[pool]\n{CMD}\n"),
                "backends[0].name: \"app-1\" collides with the names of pool \"app\" members",
            ),
        ];
        for (text, want) in &cases {
            assert_invalid(text, want);
        }
        // A Host above 255 bytes; a name above 253 (each label 63).
        let host = format!("{}.x", "h".repeat(254));
        assert_invalid(
            &set("health.host", &format!("{host:?}")),
            &format!("health.host: {host:?} is not a host or host:port"),
        );
        let addr = format!("{}:80", vec!["a".repeat(63); 4].join("."));
        assert_invalid(
            &set("backends[1].addr", &format!("{addr:?}")),
            &format!("backends[1].addr: {addr:?} is not host:port"),
        );
        // A provider's keys are refused under the other one.
        for key in DOCKER_KEYS {
            let v = match key {
                "container_port" | "cpus" => "1",
                "env" => "{}",
                _ => "\"x\"",
            };
            assert_invalid(
                &format!("[pool]\n{CMD}\n{key} = {v}\n"),
                &format!("pool.{key}: (set) does not apply to provider = \"process\""),
            );
        }
        for (key, v) in [
            ("command", "[\"app\", \"{port}\"]"),
            ("ports", "\"1-2\""),
            ("allow_rollout_command", "true"),
        ] {
            assert_invalid(
                &format!("[pool]\n{DOCKER}\n{key} = {v}\n"),
                &format!("pool.{key}: (set) does not apply to provider = \"docker\""),
            );
        }
    }

    #[test]
    fn syntax_unknown_keys_and_variants_and_wrong_types_name_the_key_or_line() {
        for (text, want) in rows(PARSE) {
            assert_parse(&text, want);
        }
        let cases = [
            (format!("bogus = 1\n{B}"), "bogus: unknown field `bogus`"),
            (
                "[[backends]]\nname = \"a\"\n".into(),
                "backends[0]: missing field `addr`",
            ),
            (
                "[[backends]\nname = \"a\"\n".into(),
                "(line 1): invalid table header",
            ),
            (
                format!("{B}\n[server]\nthreads = 2\nthreads = 3\n"),
                "(line 7): duplicate key",
            ),
        ];
        for (text, want) in &cases {
            assert_parse(text, want);
        }
    }

    /// Integer keys and their inclusive ranges.
    const INTS: &[(&str, i64, i64)] = &[
        ("server.threads", 1, 256),
        ("server.max_connections", 1, 10_000_000),
        ("server.max_header_bytes", 1024, 1 << 20),
        ("server.max_headers", 1, 256),
        ("health.rise", 1, 100),
        ("health.fall", 1, 100),
        ("circuit_breaker.failures", 1, 1000),
        ("circuit_breaker.half_open_requests", 1, 1000),
        ("retry.attempts", 1, 10),
        ("retry.statuses[0]", 500, 599),
        ("queue.size", 0, 1_000_000),
        ("limits.per_ip_connections", 0, 1_000_000),
        ("limits.per_ip_rate", 0, 1_000_000),
        ("limits.per_ip_burst", 0, 1_000_000),
        ("backends[1].weight", 0, 1000),
        ("backends[1].max_in_flight", 0, 1_000_000),
        // Up to pool.size (default 2).
        ("pool.min_size", 1, 2),
        ("pool.weight", 1, 1000),
        ("pool.max_in_flight", 0, 1_000_000),
        ("pool.container_port", 1, 65535),
    ];

    #[test]
    fn integers_outside_their_range_are_refused_and_the_bounds_accepted() {
        for &(key, lo, hi) in INTS {
            for bad in [lo - 1, hi + 1] {
                let want = format!("{key}: {bad} is out of range {lo}..={hi}");
                assert_invalid(&set(key, &bad.to_string()), &want);
            }
            for ok in [lo, hi] {
                accepted(&set(key, &ok.to_string()));
            }
            assert_parse(&set(key, "\"1\""), &format!("{key}: invalid type: string"));
        }
    }

    #[test]
    fn upgrade_sock_fits_a_unix_socket_address_with_its_ready_socket() {
        let max = crate::config::MAX_UPGRADE_SOCK_PATH;
        let path = |n: usize| format!("/{}", "s".repeat(n - 1));
        let c = accepted(&set("server.upgrade_sock", &format!("{:?}", path(max))));
        assert_eq!(c.server.upgrade_sock.as_os_str().len(), max);
        let long = path(max + 1);
        let want = format!("server.upgrade_sock: {long:?} must be at most {max} bytes");
        assert_invalid(&set("server.upgrade_sock", &format!("{long:?}")), &want);
        assert_eq!(
            Config::from_toml(B).unwrap().server.upgrade_sock,
            std::path::Path::new("/tmp/lb-upgrade.sock")
        );
    }

    /// Duration keys: (key, shortest, longest, the range as the rule prints it).
    const DURATIONS: &[(&str, &str, &str, &str)] = &[
        ("server.grace_period", "0s", "1h", "0s..=1h"),
        ("server.keepalive_timeout", "0s", "1h", "0s..=1h"),
        ("server.header_timeout", "1ms", "1h", "1ms..=1h"),
        ("server.send_timeout", "1ms", "1h", "1ms..=1h"),
        ("server.body_timeout", "1ms", "1h", "1ms..=1h"),
        ("health.interval", "10ms", "1h", "10ms..=1h"),
        ("health.timeout", "1ms", "1h", "1ms..=1h"),
        ("circuit_breaker.open_for", "1ms", "1h", "1ms..=1h"),
        ("circuit_breaker.max_open_for", "1ms", "24h", "1ms..=1day"),
        ("timeouts.connect", "1ms", "60s", "1ms..=1m"),
        ("timeouts.response", "1ms", "1h", "1ms..=1h"),
        ("timeouts.upstream_idle", "0s", "1h", "0s..=1h"),
        ("dynamic.interval", "100ms", "1h", "100ms..=1h"),
        ("discovery.interval", "100ms", "1h", "100ms..=1h"),
        ("queue.timeout", "1ms", "1h", "1ms..=1h"),
        ("pool.scale_up_after", "10ms", "1day", "10ms..=1day"),
        ("pool.idle_timeout", "10ms", "30days", "10ms..=30days"),
        // humantime prints 365 days in months ("11months 30days 3h 50m 24s").
        ("pool.max_age", "0s", "365days", "0s..="),
        ("pool.check_interval", "10ms", "1day", "10ms..=1day"),
        ("pool.drain_timeout", "0s", "1day", "0s..=1day"),
        ("pool.start_timeout", "10ms", "1day", "10ms..=1day"),
    ];

    #[test]
    fn durations_outside_their_range_or_unparsable_are_refused_and_the_bounds_accepted() {
        let ms = |s: &str| humantime::parse_duration(s).unwrap().as_millis();
        for &(key, lo, hi, range) in DURATIONS {
            let mut bad = vec![format!("{}ms", ms(hi) + 1)];
            if ms(lo) > 0 {
                bad.push(format!("{}ms", ms(lo) - 1));
            }
            for b in bad {
                let want = format!("{key}: {b:?} is out of range {range}");
                assert_invalid(&set(key, &format!("{b:?}")), &want);
            }
            for b in ["soon", "-1s", "5"] {
                let want = format!("{key}: {b:?} is not a duration (e.g. \"500ms\", \"5s\")");
                assert_invalid(&set(key, &format!("{b:?}")), &want);
            }
            for ok in [lo, hi] {
                accepted(&set(key, &format!("{ok:?}")));
            }
            assert_parse(&set(key, "5"), &format!("{key}: invalid type: integer"));
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let c = accepted(&set("server.listen", "\"[::1]:8080\""));
        assert_eq!(c.server.listen, "[::1]:8080".parse().unwrap());
        let c = accepted(&set("balancer.backend_header", "\"\""));
        assert_eq!(c.balancer.backend_header, None);
        let token = "!#$%&'*+-.^_`|~".to_string() + &"c".repeat(49);
        assert_eq!(token.len(), 64);
        let c = accepted(&format!(
            "[balancer]\nsticky = \"cookie\"\nsticky_cookie = {token:?}\n{B}"
        ));
        assert_eq!(c.balancer.sticky, Sticky::Cookie(token));
        let c = accepted(&format!(
            "[balancer]\nsticky = \"header\"\nsticky_header = \"X-User\"\n{B}"
        ));
        assert!(matches!(c.balancer.sticky, Sticky::Header(ref h) if h == "x-user"));
        // A probe timeout above the interval is fine.
        let c = accepted(&format!(
            "[health]\ninterval = \"1s\"\ntimeout = \"2s\"\n{B}"
        ));
        assert!(c.health.timeout > c.health.interval);
        for host in [
            "status.internal",
            "status.internal:8080",
            "[::1]:8080",
            "10.0.0.1",
        ] {
            let c = accepted(&set("health.host", &format!("{host:?}")));
            assert_eq!(c.health.host.as_deref(), Some(host));
        }
        accepted(&set("health.path", "\"/health?full=1\""));
        accepted(&set("health.path", "\"/\""));
        for b in ["0.0", "1.0", "1", "0"] {
            accepted(&set("retry.budget", b));
        }
        assert!(accepted(&set("retry.statuses", "[]"))
            .retry
            .statuses
            .is_empty());
        accepted(&set(
            "discovery.nameservers",
            "[\"[::1]:53\", \"10.0.0.2:5353\"]",
        ));
        accepted(&set("admin.state_file", "\"state.json\""));
        accepted(&set("admin.token_file", "\"token\""));
        let label = format!("{}.example", "l".repeat(63));
        for addr in [
            "127.0.0.1:3000",
            "[::1]:3000",
            "app-1:3000",
            "a.b.c:65535",
            "x:1",
        ] {
            accepted(&set("backends[1].addr", &format!("{addr:?}")));
        }
        accepted(&set("backends[1].addr", &format!("\"{label}:80\"")));
        accepted(&set("backends[1].name", &format!("{:?}", "n".repeat(64))));
        accepted(&set("backends[1].name", "\"A.b_c-9\""));
        let c = accepted(&set("backends[1].resolve", "\"all\""));
        assert_eq!(c.backends[1].resolve, Resolve::All);
        let most: String = (1..=64)
            .map(|i| format!("[[backends]]\nname = \"b{i}\"\naddr = \"x:{i}\"\n"))
            .collect();
        assert_eq!(accepted(&most).backends.len(), 64);
        // Pool: the room the static backends leave, two per member.
        let c = accepted(&set("pool.max_size", "32"));
        assert_eq!(c.pool.unwrap().max_size, 32);
        accepted(&set("pool.size", "32"));
        accepted(&format!("{B}[pool]\n{CMD}\nmax_size = 31\n"));
        accepted(&format!(
            "[pool]\n{CMD}\nsize = 3\nmin_size = 3\nmax_size = 3\n"
        ));
        accepted(&set("pool.name", &format!("{:?}", "p".repeat(50))));
        let pool = |text: &str| accepted(text).pool.unwrap();
        assert_eq!(pool(&set("pool.max_age", "\"0s\"")).max_age, None);
        assert_eq!(pool(&set("pool.max_memory", "\"0\"")).max_memory, None);
        for ports in ["5-5", "1-65535", " 3000 - 3001 "] {
            accepted(&set("pool.ports", &format!("{ports:?}")));
        }
        for v in ["0", "0.5", "1024"] {
            accepted(&set("pool.cpus", v));
        }
        for m in ["0", "6m", "6291456", "1g"] {
            accepted(&set("pool.memory", &format!("{m:?}")));
        }
        for ip in ["127.0.0.1", "::1"] {
            let PoolProvider::Docker(d) = pool(&set("pool.publish", &format!("{ip:?}"))).provider
            else {
                panic!("docker")
            };
            assert_eq!(d.publish, Some(ip.parse().unwrap()));
        }
        accepted(&set("pool.docker_host", "\"tcp://127.0.0.1:2375\""));
        accepted(&set("pool.env", "{ A_B = \"1\", lower = \"\" }"));
    }
}
