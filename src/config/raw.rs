//! The config file as written: serde structs with every default, no validation.
//!
//! Strings stay strings here (durations, addresses, header names) so that
//! validation in [`super`] can name the key, the value and the rule.

use serde::Deserialize;

/// The whole file. Unknown keys anywhere are errors (`deny_unknown_fields`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub admin: RawAdmin,
    pub balancer: RawBalancer,
    pub health: RawHealth,
    pub circuit_breaker: RawCircuit,
    pub retry: RawRetry,
    pub timeouts: RawTimeouts,
    pub dynamic: RawDynamic,
    pub discovery: RawDiscovery,
    pub log: RawLog,
    pub queue: RawQueue,
    pub limits: RawLimits,
    pub tls: Option<RawTls>,
    pub backends: Vec<RawBackend>,
    pub pool: Option<RawPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub threads: i64,
    pub grace_period: String,
    pub upgrade_sock: String,
    pub keepalive_timeout: String,
    pub header_timeout: String,
    pub send_timeout: String,
    pub body_timeout: String,
    pub max_connections: i64,
    pub proxy_protocol: String,
    pub proxy_protocol_from: Vec<String>,
    pub max_header_bytes: i64,
    pub max_headers: i64,
    pub h2c: bool,
    pub h2_max_streams: i64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:80".into(),
            threads: 2,
            grace_period: "5s".into(),
            upgrade_sock: "/tmp/lb-upgrade.sock".into(),
            keepalive_timeout: "60s".into(),
            header_timeout: "10s".into(),
            send_timeout: "60s".into(),
            body_timeout: "60s".into(),
            max_connections: 10_000,
            proxy_protocol: "off".into(),
            proxy_protocol_from: Vec::new(),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            h2c: false,
            h2_max_streams: 100,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    pub state_file: Option<String>,
    pub token_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".into(),
            state_file: None,
            token_file: None,
        }
    }
}

/// Algorithm names as written in the file; serde rejects anything else with
/// "unknown variant `x`, expected one of ...".
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawAlgorithm {
    #[default]
    RoundRobin,
    LeastConn,
    IpHash,
    LeastTime,
    Dynamic,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawSticky {
    #[default]
    None,
    Cookie,
    Header,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBalancer {
    pub algorithm: RawAlgorithm,
    pub sticky: RawSticky,
    pub sticky_cookie: String,
    pub sticky_header: String,
    pub backend_header: String,
    pub slow_start: String,
}

impl Default for RawBalancer {
    fn default() -> Self {
        Self {
            algorithm: RawAlgorithm::RoundRobin,
            sticky: RawSticky::None,
            sticky_cookie: "lb_sticky".into(),
            sticky_header: "X-Session-Id".into(),
            backend_header: "X-Backend".into(),
            slow_start: "0s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub path: String,
    pub host: Option<String>,
    pub interval: String,
    pub timeout: String,
    pub rise: i64,
    pub fall: i64,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            host: None,
            interval: "1s".into(),
            timeout: "500ms".into(),
            rise: 2,
            fall: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCircuit {
    pub failures: i64,
    pub open_for: String,
    pub max_open_for: String,
    pub half_open_requests: i64,
}

impl Default for RawCircuit {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: "5s".into(),
            max_open_for: "60s".into(),
            half_open_requests: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub attempts: i64,
    pub statuses: Vec<i64>,
    pub budget: f64,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            attempts: 3,
            statuses: vec![502, 503, 504],
            budget: 0.2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub connect: String,
    pub response: String,
    pub upstream_idle: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: "1s".into(),
            response: "30s".into(),
            upstream_idle: "4s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDynamic {
    pub interval: String,
}

impl Default for RawDynamic {
    fn default() -> Self {
        Self {
            interval: "2s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDiscovery {
    pub interval: String,
    pub nameservers: Vec<String>,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        Self {
            interval: "5s".into(),
            nameservers: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawLogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: RawLogFormat,
    pub access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: RawLogFormat::Text,
            access: true,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub per_ip_connections: i64,
    pub per_ip_rate: i64,
    pub per_ip_burst: i64,
}

/// `[tls]`: present = an HTTPS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub listen: String,
    pub certificates: Vec<RawCertificate>,
    pub min_version: String,
    pub alpn: Vec<String>,
    pub handshake_timeout: String,
    pub session_resumption: bool,
    pub redirect_http: bool,
    pub hsts: String,
    pub acme: Option<super::acme::RawAcme>,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:443".into(),
            certificates: Vec::new(),
            min_version: "1.2".into(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            handshake_timeout: "10s".into(),
            session_resumption: true,
            redirect_http: false,
            hsts: String::new(),
            acme: None,
        }
    }
}

/// One `tls.certificates` entry: a PEM chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    pub size: i64,
    pub timeout: String,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            size: 1024,
            timeout: "1s".into(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawResolve {
    #[default]
    One,
    All,
}

/// One `[[backends]]` entry; `name` and `addr` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_in_flight: i64,
    #[serde(default)]
    pub resolve: RawResolve,
    /// `"http1"` (default) or `"h2c"`.
    #[serde(default)]
    pub protocol: Option<String>,
}

fn default_weight() -> i64 {
    1
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawProvider {
    Process,
    Docker,
}

/// `[pool]`: one table for both providers; keys of the other provider are
/// errors (checked in validation, where the message can say why).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    pub provider: RawProvider,
    pub name: String,
    pub size: i64,
    pub min_size: Option<i64>,
    pub max_size: Option<i64>,
    pub weight: i64,
    pub max_in_flight: i64,
    pub scale_up_after: String,
    pub idle_timeout: String,
    pub max_age: String,
    pub max_memory: String,
    pub check_interval: String,
    pub drain_timeout: String,
    pub start_timeout: String,
    // provider = "process"
    pub command: Option<Vec<String>>,
    pub ports: Option<String>,
    pub allow_rollout_command: bool,
    // provider = "docker"
    pub image: Option<String>,
    pub network: Option<String>,
    pub container_port: Option<i64>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub docker_host: Option<String>,
    pub publish: Option<String>,
}

impl Default for RawPool {
    fn default() -> Self {
        Self {
            provider: RawProvider::Process,
            name: "app".into(),
            size: 2,
            min_size: None,
            max_size: None,
            weight: 1,
            max_in_flight: 0,
            scale_up_after: "2s".into(),
            idle_timeout: "5m".into(),
            max_age: "0s".into(),
            max_memory: "0".into(),
            check_interval: "5s".into(),
            drain_timeout: "30s".into(),
            start_timeout: "30s".into(),
            command: None,
            ports: None,
            allow_rollout_command: false,
            image: None,
            network: None,
            container_port: None,
            cpus: None,
            memory: None,
            env: None,
            docker_host: None,
            publish: None,
        }
    }
}
