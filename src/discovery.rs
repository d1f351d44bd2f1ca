//! Backend address resolution: literal `ip:port` addresses are used as is;
//! hostnames are resolved at start and re-resolved every [`RESOLVE_EVERY`], so a
//! container recreated with a new IP keeps receiving traffic without a reload.
//! A failed lookup keeps the last good address and is logged once per outage.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::State;

/// How often hostnames are re-resolved.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

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
    pub async fn resolve_all(&self, failing: &mut HashSet<String>) {
        let snap = self.state.load_full();
        let mut addrs: Vec<Option<SocketAddr>> = vec![None; snap.backends.len()];
        let mut changed = false;
        for (i, b) in snap.backends.iter().enumerate() {
            if b.configured_addr.parse::<SocketAddr>().is_ok() {
                continue;
            }
            match lookup(&b.configured_addr).await {
                Ok(a) => {
                    if failing.remove(&b.configured_addr) {
                        tracing::info!(backend = %b.stats.name, addr = %a, "resolved again");
                    }
                    if b.addr != Some(a) {
                        tracing::info!(backend = %b.stats.name, from = ?b.addr, to = %a, "address changed");
                        changed = true;
                    }
                    addrs[i] = Some(a);
                }
                Err(e) => {
                    if failing.insert(b.configured_addr.clone()) {
                        tracing::warn!(backend = %b.stats.name, host = %b.configured_addr, error = %e,
                            "cannot resolve; keeping last good address");
                    }
                }
            }
        }
        if changed {
            self.state.set_addrs(&addrs);
        }
    }
}

async fn lookup(host_port: &str) -> std::io::Result<SocketAddr> {
    let mut it = tokio::net::lookup_host(host_port).await?;
    // Prefer IPv4 when a name has both, as most container networks do.
    let all: Vec<SocketAddr> = it.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"))
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failing = HashSet::new();
        loop {
            self.resolve_all(&mut failing).await;
            tokio::select! {
                _ = tokio::time::sleep(RESOLVE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
