//! Backend address resolution. Literal `ip:port` addresses are used as is;
//! hostnames are resolved at start and every `discovery.interval`, so a container
//! recreated with a new IP keeps receiving traffic without a reload. A failed
//! lookup keeps the last good address and logs once per outage.
//!
//! A `resolve = "all"` group is resolved to every address (A and AAAA) each
//! round; members join and leave with the answer ([`State::set_members`]), and
//! a failed lookup keeps the last good set.
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
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{DiscoveryConfig, MAX_BACKENDS};
use crate::group::Capped;
use crate::state::State;

/// Builds the resolver `cfg` asks for: its nameservers, or the system's.
pub fn resolver(cfg: &DiscoveryConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("system DNS config: {e}"))?
    } else {
        // Each server over UDP, and TCP for answers too big for a datagram.
        let servers = cfg
            .nameservers
            .iter()
            .map(|ns| {
                let mut server = NameServerConfig::udp_and_tcp(ns.ip());
                for c in &mut server.connections {
                    c.port = ns.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = std::time::Duration::from_secs(2);
    opts.attempts = 1;
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
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

/// Resolves `host:port` to every address (A and AAAA) for a `resolve = "all"`
/// group, sorted. An answer with no address at all counts as a failure (the
/// caller keeps the last good set): a name briefly unknown to the DNS server,
/// as while a container restarts, must not empty a group. Names come from DNS
/// only (`/etc/hosts` lists one address per name anyway).
pub async fn lookup_all(r: &TokioResolver, host_port: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split(host_port).ok_or("not host:port")?;
    let fqdn = format!("{host}.");
    let (v4, v6) = tokio::join!(r.ipv4_lookup(fqdn.as_str()), r.ipv6_lookup(fqdn.as_str()));
    // "No such records" is an answer (perhaps a v4-only service); any other
    // error means the answer is unknown, so nothing changes.
    let known = |e: &NetError| e.is_no_records_found() || e.is_nx_domain();
    let mut addrs = Vec::new();
    match v4 {
        Ok(l) => addrs.extend(l.answers().iter().filter_map(|r| match &r.data {
            RData::A(a) => Some(SocketAddr::new(IpAddr::V4(a.0), port)),
            _ => None,
        })),
        Err(e) if known(&e) => {}
        Err(e) => return Err(e.to_string()),
    }
    match v6 {
        Ok(l) => addrs.extend(l.answers().iter().filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(SocketAddr::new(IpAddr::V6(a.0), port)),
            _ => None,
        })),
        Err(e) if known(&e) => {}
        Err(e) => return Err(e.to_string()),
    }
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(crate::group::normalize(addrs))
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

    /// Resolves every hostname backend and group once and publishes changed
    /// addresses. `failing` remembers which names already logged a failure.
    pub async fn resolve_all(&self, r: &TokioResolver, failing: &mut HashSet<String>) {
        let snap = self.state.load_full();
        let mut updates = Vec::new();
        for b in snap.backends.iter().filter(|b| b.group.is_none()) {
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
        let mut members = Vec::new();
        for g in &snap.groups {
            if g.configured_addr.parse::<SocketAddr>().is_ok() {
                continue;
            }
            match lookup_all(r, &g.configured_addr).await {
                Ok(addrs) => {
                    if failing.remove(&g.configured_addr) {
                        tracing::info!(group = %g.name, members = addrs.len(), "dns: resolved again");
                    }
                    if addrs != g.addrs {
                        let (joined, left) = diff(&g.addrs, &addrs);
                        tracing::info!(group = %g.name, joined = ?joined, left = ?left, "dns: members changed");
                        members.push((g.name.clone(), g.configured_addr.clone(), addrs));
                    }
                }
                Err(e) => {
                    if failing.insert(g.configured_addr.clone()) {
                        tracing::warn!(group = %g.name, host = %g.configured_addr, error = %e,
                            "dns: cannot resolve; keeping the last good members");
                    }
                }
            }
        }
        if !members.is_empty() {
            let before = snap.capped();
            self.state.set_members(&members);
            log_cap(&before, &self.state.load().capped());
        }
    }
}

/// Addresses in `new` but not `old`, and in `old` but not `new`.
fn diff(old: &[SocketAddr], new: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let joined = new.iter().filter(|a| !old.contains(a)).copied().collect();
    let left = old.iter().filter(|a| !new.contains(a)).copied().collect();
    (joined, left)
}

/// Logs each group that has just come to have more addresses than fit under
/// the 64-backend cap (`before` → `after`), and each that fits again: once per
/// episode, however many rounds see the same answer.
fn log_cap(before: &[Capped], after: &[Capped]) {
    let had = |list: &[Capped], c: &Capped| list.iter().any(|x| x.group == c.group);
    for c in after.iter().filter(|c| !had(before, c)) {
        tracing::warn!(group = %c.group, members = c.kept, left_out = c.dropped,
            max_backends = MAX_BACKENDS,
            "dns: more addresses than the backend cap; keeping the lowest addresses");
    }
    for c in before.iter().filter(|c| !had(after, c)) {
        tracing::info!(group = %c.group, "dns: every address fits under the backend cap again");
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
