//! Backend address resolution. Literal `ip:port` addresses are used as is;
//! hostnames are resolved at start and every `discovery.interval`, so a container
//! recreated with a new IP keeps receiving traffic without a reload. A failed
//! lookup keeps the last good address and logs once per outage.
//!
//! The resolver is hickory (pure Rust): it reads `/etc/resolv.conf` and
//! `/etc/hosts` itself, so it works in a `FROM scratch` image where glibc's NSS
//! modules are absent. Its cache is off: each round asks the DNS server, which
//! is what following a moved container requires (Docker's DNS answers with TTL 600).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::DiscoveryConfig;
use crate::state::State;

/// Builds the resolver `cfg` asks for: its nameservers, or the system's.
pub fn resolver(cfg: &DiscoveryConfig) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("system DNS config: {e}"))?
    } else {
        let mut rc = ResolverConfig::new();
        for ns in &cfg.nameservers {
            rc.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(rc, provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = std::time::Duration::from_secs(2);
    opts.attempts = 1;
    Ok(builder.build())
}

/// Splits `host:port` (validated by config).
fn split(host_port: &str) -> Option<(&str, u16)> {
    let (h, p) = host_port.rsplit_once(':')?;
    Some((h, p.parse().ok()?))
}

/// Resolves `host:port` to one address, preferring IPv4 (what container
/// networks hand out first).
pub async fn lookup(r: &TokioResolver, host_port: &str) -> Result<SocketAddr, String> {
    let (host, port) = split(host_port).ok_or("not host:port")?;
    // A trailing dot makes the name absolute: no search-domain guessing.
    let fqdn = format!("{host}.");
    let ips = r.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
    let all: Vec<IpAddr> = ips.iter().collect();
    let ip = all
        .iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .ok_or("no addresses")?;
    Ok(SocketAddr::new(*ip, port))
}

/// The resolver task.
pub struct Discovery {
    state: Arc<State>,
}

impl Discovery {
    /// A resolver for `state`'s backends.
    pub fn new(state: Arc<State>) -> Self {
        Discovery { state }
    }

    /// Resolves every hostname backend once and publishes changed addresses.
    /// `failing` remembers which names already logged a failure.
    pub async fn resolve_all(&self, r: &TokioResolver, failing: &mut HashSet<String>) {
        let snap = self.state.load_full();
        let mut updates = Vec::new();
        for b in &snap.backends {
            if b.configured_addr.parse::<SocketAddr>().is_ok() {
                continue;
            }
            match lookup(r, &b.configured_addr).await {
                Ok(a) => {
                    if failing.remove(&b.configured_addr) {
                        tracing::info!(backend = %b.stats.name, addr = %a, "dns: resolved again");
                    }
                    if b.addr != Some(a) {
                        tracing::info!(backend = %b.stats.name, from = ?b.addr, to = %a, "dns: address changed");
                        updates.push((b.stats.name.clone(), b.configured_addr.clone(), a));
                    }
                }
                Err(e) => {
                    if failing.insert(b.configured_addr.clone()) {
                        tracing::warn!(backend = %b.stats.name, host = %b.configured_addr, error = %e,
                            "dns: cannot resolve; keeping last good address");
                    }
                }
            }
        }
        if !updates.is_empty() {
            self.state.set_addrs(&updates);
        }
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The resolver follows the config: a reload that changes
        // `discovery.nameservers` takes effect at the next round.
        let mut current: Option<(Vec<std::net::SocketAddr>, TokioResolver)> = None;
        let mut failing = HashSet::new();
        loop {
            let cfg = self.state.load().config.discovery.clone();
            if current
                .as_ref()
                .is_none_or(|(ns, _)| *ns != cfg.nameservers)
            {
                match resolver(&cfg) {
                    Ok(r) => current = Some((cfg.nameservers.clone(), r)),
                    Err(e) => tracing::error!(error = %e,
                        "dns: no resolver; hostnames keep their last addresses"),
                }
            }
            if let Some((_, r)) = &current {
                self.resolve_all(r, &mut failing).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
