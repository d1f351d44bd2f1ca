//! The one shared state: an [`ArcSwap`] of an immutable [`Snapshot`] (backends with
//! their addresses, operator weights and modes, the algorithm and its selector),
//! plus per-backend [`BackendStats`] that outlive every swap.
//!
//! Readers (every proxied request) do one lock-free `load()`; writers (admin,
//! reload, DNS, algorithm switch) build a whole new snapshot and `store()` it, so
//! no request ever sees half a change. Stats are keyed by backend name and carried
//! from snapshot to snapshot, so switching algorithm or reloading never resets
//! in-flight counts, EWMA, health or circuit state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderName;

use crate::balancer::{self, Balancer, Mask, Pool};
use crate::config::{Algorithm, BackendConfig, Config, Sticky};
use crate::metrics::GlobalCounters;

// The per-backend types live in the leaf module `backend` (so `balancer` need
// not import `state`); re-exported so `state::Backend` and friends keep working.
pub use crate::backend::{Backend, BackendStats, InFlight, Mode};

/// An immutable view of everything routing depends on.
pub struct Snapshot {
    /// Bumped by every change an operator makes or sees (weights, modes,
    /// algorithm, reload), but not by DNS re-resolution: the admin API's ETag,
    /// so a moved container never costs an operator a `412`. Body and ETag of a
    /// response come from the same snapshot.
    pub version: u64,
    /// Backends in config order.
    pub backends: Vec<Backend>,
    /// Active algorithm.
    pub algorithm: Algorithm,
    /// Its selector (holds only rotation/schedule caches, never per-backend state).
    pub balancer: Box<dyn Balancer>,
    /// Stickiness mode.
    pub sticky: Sticky,
    /// Response header naming the backend, if enabled.
    pub backend_header: Option<HeaderName>,
    /// The validated config this snapshot was built from.
    pub config: Arc<Config>,
    /// Does any backend have a `max_in_flight`? (Else [`Snapshot::full`] is
    /// free.)
    limited: bool,
}

impl Snapshot {
    /// Backends at their `max_in_flight` right now (eligible or not).
    #[inline]
    pub fn full(&self) -> Mask {
        if !self.limited {
            return 0;
        }
        self.mask(|b| !b.has_room())
    }

    /// Backends that may take a new (non-sticky) request at `now`.
    pub fn schedulable(&self, now: Instant) -> Mask {
        let cb = &self.config.circuit_breaker;
        self.mask(|b| b.schedulable(cb, now))
    }

    /// Backends that may take a sticky request at `now`.
    pub fn sticky_ok(&self, now: Instant) -> Mask {
        let cb = &self.config.circuit_breaker;
        self.mask(|b| b.sticky_ok(cb, now))
    }

    fn mask(&self, f: impl Fn(&Backend) -> bool) -> Mask {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| f(b))
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    /// Picks a backend for a request with hash `key` (client IP bytes), avoiding
    /// `excluded` (backends already tried by this request).
    pub fn pick(&self, key: &[u8], excluded: Mask, now: Instant) -> Option<usize> {
        let pool = Pool {
            backends: &self.backends,
            available: self.schedulable(now),
            excluded,
            algorithm: self.algorithm,
        };
        self.balancer.pick(&pool, key, now)
    }

    /// A new snapshot with other backends or algorithm and the same settings.
    pub fn with(&self, backends: Vec<Backend>, algorithm: Algorithm) -> Snapshot {
        Snapshot {
            version: self.version,
            limited: any_limited(&backends),
            backends,
            algorithm,
            balancer: balancer::for_algorithm(algorithm),
            sticky: self.sticky.clone(),
            backend_header: self.backend_header.clone(),
            config: self.config.clone(),
        }
    }

    /// Index of the backend called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.stats.name == name)
    }
}

/// The shared, hot-swappable state.
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Process-wide counters (no backend, reloads, admin changes).
    pub counters: GlobalCounters,
    /// Where requests wait while every eligible backend is at capacity.
    pub queue: Arc<crate::queue::Queue>,
    /// Serialises writers (admin, reload, DNS) so none loses another's change;
    /// readers never touch it.
    writer: std::sync::Mutex<()>,
}

impl State {
    /// Builds the first snapshot from a validated config; hostnames resolve later.
    pub fn new(config: Arc<Config>) -> State {
        let snap = build(&config, &HashMap::new(), config.balancer.algorithm);
        State {
            current: ArcSwap::from_pointee(snap),
            counters: GlobalCounters::default(),
            queue: Arc::default(),
            writer: std::sync::Mutex::new(()),
        }
    }

    /// The current snapshot, owned (one refcount increment; lock-free).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot with `f(current)`, one writer at a time.
    pub fn update(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let _ = self.try_update::<()>(None, |cur| Ok(f(cur)));
    }

    /// The current version (changes with every update).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Replaces the snapshot with `f(current)` if `f` accepts and, when
    /// `expected` is given, the version still equals it (If-Match). One writer
    /// at a time; readers are never blocked. Returns the new version.
    pub fn try_update<E>(
        &self,
        expected: Option<u64>,
        f: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<u64, UpdateError<E>> {
        self.swap(expected, 1, f)
    }

    /// The one writer path: `bump` is added to the version (0 for changes that
    /// are not operator state, see [`Snapshot::version`]).
    fn swap<E>(
        &self,
        expected: Option<u64>,
        bump: u64,
        f: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<u64, UpdateError<E>> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load_full();
        if expected.is_some_and(|v| v != cur.version) {
            return Err(UpdateError::Stale(cur.version));
        }
        let mut next = f(&cur).map_err(UpdateError::Rejected)?;
        next.version = cur.version + bump;
        let version = next.version;
        self.current.store(Arc::new(next));
        Ok(version)
    }

    /// Switches algorithm keeping every backend's state.
    pub fn set_algorithm(&self, algorithm: Algorithm) {
        self.update(|cur| cur.with(cur.backends.clone(), algorithm));
    }

    /// Applies resolved addresses (DNS re-resolution): each update names the
    /// backend and the `host:port` it resolved, and applies only if the current
    /// snapshot still has that backend with that configured address (a reload
    /// may have changed either while the lookups ran). Keeps the version.
    pub fn set_addrs(&self, updates: &[(Arc<str>, String, SocketAddr)]) {
        let _ = self.swap(None, 0, |cur| {
            let mut backends = cur.backends.clone();
            let mut changed = false;
            for (name, configured, addr) in updates {
                if let Some(b) = backends
                    .iter_mut()
                    .find(|b| &b.stats.name == name && &b.configured_addr == configured)
                {
                    changed |= b.addr != Some(*addr);
                    b.addr = Some(*addr);
                }
            }
            if changed {
                Ok(cur.with(backends, cur.algorithm))
            } else {
                Err(()) // nothing to swap
            }
        });
    }
}

/// Why [`State::try_update`] changed nothing.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// The caller's expected version is stale; here is the current one.
    Stale(u64),
    /// The change itself was refused.
    Rejected(E),
}

fn any_limited(backends: &[Backend]) -> bool {
    backends.iter().any(|b| b.max_in_flight > 0)
}

/// Builds a snapshot for `config`, reusing stats (and resolved addresses) of
/// backends that keep their name.
pub fn build(
    config: &Arc<Config>,
    previous: &HashMap<Arc<str>, Backend>,
    algorithm: Algorithm,
) -> Snapshot {
    let backends = config
        .backends
        .iter()
        .map(|bc: &BackendConfig| {
            let prev = previous.get(bc.name.as_str());
            Backend {
                addr: bc.addr.parse().ok().or_else(|| {
                    prev.filter(|p| p.configured_addr == bc.addr)
                        .and_then(|p| p.addr)
                }),
                configured_addr: bc.addr.clone(),
                // A reload keeps the operator's weight unless the file changed it.
                weight: match prev {
                    Some(p) if p.config_weight == bc.weight => p.weight,
                    _ => bc.weight,
                },
                config_weight: bc.weight,
                mode: prev.map_or(Mode::Active, |p| p.mode),
                max_in_flight: bc.max_in_flight,
                stats: prev.map_or_else(
                    || Arc::new(BackendStats::new(&bc.name)),
                    |p| p.stats.clone(),
                ),
            }
        })
        .collect::<Vec<_>>();
    Snapshot {
        version: 1,
        limited: any_limited(&backends),
        backends,
        algorithm,
        balancer: balancer::for_algorithm(algorithm),
        sticky: config.balancer.sticky.clone(),
        backend_header: config.balancer.backend_header.clone(),
        config: config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let text = "[[backends]]\nname = \"a\"\naddr = \"a.test:80\"\n\
                    [[backends]]\nname = \"b\"\naddr = \"b.test:80\"\n";
        State::new(Arc::new(Config::from_toml(text).unwrap()))
    }

    #[test]
    fn dns_updates_apply_by_name_and_configured_address_only() {
        let s = state();
        let ip: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v0 = s.version();
        // A lookup for a host the backend no longer has (changed by a reload
        // meanwhile) and one for an unknown backend: ignored, no swap.
        s.set_addrs(&[
            ("a".into(), "old.test:80".into(), ip),
            ("zz".into(), "a.test:80".into(), ip),
        ]);
        assert_eq!(s.version(), v0);
        assert!(s.load().backends.iter().all(|b| b.addr.is_none()));
        s.set_addrs(&[("b".into(), "b.test:80".into(), ip)]);
        assert_eq!(s.load().backends[1].addr, Some(ip));
        assert_eq!(s.load().backends[0].addr, None);
        // Applied, yet the admin ETag stays: an operator's If-Match still holds.
        assert_eq!(s.version(), v0);
        let moved: SocketAddr = "10.0.0.2:80".parse().unwrap();
        s.set_addrs(&[("b".into(), "b.test:80".into(), moved)]);
        assert_eq!(s.load().backends[1].addr, Some(moved));
        assert_eq!(s.version(), v0);
        // The same answer again: nothing to swap.
        let v1 = s.version();
        s.set_addrs(&[("b".into(), "b.test:80".into(), ip)]);
        assert_eq!(s.version(), v1);
    }

    #[test]
    fn try_update_checks_the_expected_version() {
        let s = state();
        let v = s.version();
        assert!(s
            .try_update::<()>(Some(v + 7), |c| Ok(c.with(c.backends.clone(), c.algorithm)))
            .is_err());
        assert_eq!(s.version(), v);
        let next = s.try_update::<()>(Some(v), |c| Ok(c.with(c.backends.clone(), c.algorithm)));
        assert_eq!(next.ok(), Some(v + 1));
        assert_eq!(s.load().version, v + 1);
    }
}
