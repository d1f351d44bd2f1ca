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
            backends,
            pool,
        })
    }
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
