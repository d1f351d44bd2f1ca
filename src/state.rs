//! The one shared state: an [`ArcSwap`] of an immutable [`Snapshot`] (backends with
//! their addresses, operator weights and modes, the algorithm and its selector),
//! plus per-backend [`BackendStats`] that outlive every swap.
//!
//! Readers (every proxied request) take [`State::current`]: the thread's own
//! handle on the current snapshot ([`Local`]), checked against a generation
//! every swap bumps, so a request clones a reference count no other worker
//! touches (the snapshot's own count moves once per thread per change);
//! writers (admin, reload, DNS, algorithm switch) build a whole new snapshot
//! and `store()` it, so no request ever sees half a change. Stats are keyed by backend name and carried
//! from snapshot to snapshot, so switching algorithm or reloading never resets
//! in-flight counts, EWMA, health or circuit state.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderName;

use crate::balancer::{self, Balancer, Mask, Pool};
use crate::config::{Algorithm, BackendConfig, Config, PoolConfig, Resolve, Sticky};
use crate::group::{layout, normalize, Capped, Entry, Group};
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
    /// Backends in config order, each `resolve = "all"` entry expanded into its
    /// members (in address order).
    pub backends: Vec<Backend>,
    /// The `resolve = "all"` entries, in config order.
    pub groups: Vec<Group>,
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
            slow_start: self.config.balancer.slow_start,
            now,
        };
        self.balancer.pick(&pool, key, now)
    }

    /// A new snapshot with other backends or algorithm and the same settings.
    pub fn with(&self, backends: Vec<Backend>, algorithm: Algorithm) -> Snapshot {
        self.with_groups(backends, self.groups.clone(), algorithm)
    }

    /// [`Snapshot::with`], with other groups too.
    pub fn with_groups(
        &self,
        backends: Vec<Backend>,
        groups: Vec<Group>,
        algorithm: Algorithm,
    ) -> Snapshot {
        Snapshot {
            version: self.version,
            limited: any_limited(&backends),
            backends,
            groups,
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

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| &*g.name == name)
    }

    /// Groups with more addresses than fit under the 64-backend cap.
    pub fn capped(&self) -> Vec<Capped> {
        let members = |g: &Group| {
            let of_g = |b: &&Backend| b.group.as_deref() == Some(&*g.name);
            self.backends.iter().filter(of_g).count()
        };
        self.groups
            .iter()
            .map(|g| (g, members(g)))
            .filter(|(g, kept)| *kept < g.addrs.len())
            .map(|(g, kept)| Capped {
                group: g.name.clone(),
                kept,
                dropped: g.addrs.len() - kept,
            })
            .collect()
    }

    /// What an admin API name means: a backend or group member (its index),
    /// or a group (its members' indices, perhaps none yet). `None`: unknown.
    pub fn targets(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(i) = self.index_of(name) {
            return Some(vec![i]);
        }
        self.group(name)?;
        let members = self.backends.iter().enumerate();
        Some(
            members
                .filter(|(_, b)| b.group.as_deref() == Some(name))
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// This snapshot with `groups` (new addresses, weights or modes) and the
    /// backend list laid out again: members kept by address, new addresses
    /// joining as new members, vanished ones gone, the 64-backend cap applied.
    pub fn relayout(&self, groups: Vec<Group>) -> Snapshot {
        let entries = self
            .config
            .backends
            .iter()
            .filter_map(|bc| match bc.resolve {
                Resolve::One => self
                    .backends
                    .iter()
                    .find(|b| b.group.is_none() && *b.stats.name == *bc.name)
                    .map(|b| Entry::Plain(b.clone())),
                Resolve::All => groups
                    .iter()
                    .find(|g| *g.name == *bc.name)
                    .map(|g| Entry::Group(g.members(&self.backends))),
            });
        let entries = entries.chain(pool_members(&self.backends, None)).collect();
        let backends = layout(entries);
        self.with_groups(backends, groups, self.algorithm)
    }
}

/// A worker thread's handle on a snapshot ([`State::current`]): derefs to
/// the [`Snapshot`]. Cloning it moves a reference count only this thread
/// uses; the snapshot's own `Arc` is held once per thread and generation,
/// not once per request, so requests on different workers share no
/// written cache line through it.
#[derive(Clone)]
pub struct Local(Arc<Held>);

struct Held {
    /// The [`State`] it was taken from ([`State::id`]).
    state: u64,
    /// [`State::generation`] when it was taken.
    generation: u64,
    snap: Arc<Snapshot>,
}

impl Deref for Local {
    type Target = Snapshot;
    #[inline]
    fn deref(&self) -> &Snapshot {
        &self.0.snap
    }
}

#[cfg(test)]
impl Local {
    /// The shared snapshot (tests compare it with [`State::load_full`]).
    fn shared(&self) -> &Arc<Snapshot> {
        &self.0.snap
    }
}

thread_local! {
    /// This thread's handle on the last snapshot it used.
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Tells [`State`]s apart in a thread's cache (tests build many per process).
static STATE_IDS: AtomicU64 = AtomicU64::new(1);

/// The shared, hot-swappable state.
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Bumped after every store, DNS re-layouts included (unlike
    /// [`Snapshot::version`]): a thread's [`Local`] is current while its
    /// generation equals this. Written only by the one writer at a time.
    generation: AtomicU64,
    id: u64,
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
        let snap = build(&config, None, config.balancer.algorithm);
        State {
            current: ArcSwap::from_pointee(snap),
            generation: AtomicU64::new(0),
            id: STATE_IDS.fetch_add(1, Ordering::Relaxed),
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

    /// The current snapshot through this thread's handle: one atomic load of
    /// a line only writers write, and a clone of the thread's own [`Local`].
    /// After a swap, the first call on each thread takes the new snapshot.
    #[inline]
    pub fn current(&self) -> Local {
        let generation = self.generation.load(Ordering::Acquire);
        LOCAL.with(|cell| {
            let mut cell = cell.borrow_mut();
            match &*cell {
                Some(l) if l.0.state == self.id && l.0.generation == generation => l.clone(),
                _ => {
                    // Loaded after the generation was read: a store that
                    // lands in between is taken too, and the next call (its
                    // generation already bumped) takes it again. Never older.
                    let l = Local(Arc::new(Held {
                        state: self.id,
                        generation,
                        snap: self.current.load_full(),
                    }));
                    *cell = Some(l.clone());
                    l
                }
            }
        })
    }

    /// Is `snap` the current snapshot? (No swap since it was taken.)
    #[inline]
    pub fn is_current(&self, snap: &Local) -> bool {
        snap.0.state == self.id && snap.0.generation == self.generation.load(Ordering::Acquire)
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
        // After the store: a reader that sees this generation loads the
        // new snapshot (Release here, Acquire in `current`).
        self.generation.fetch_add(1, Ordering::Release);
        Ok(version)
    }

    /// Applies the member addresses of `resolve = "all"` groups (DNS): each
    /// update names the group, its `host:port` and the answer, and applies
    /// only if the group still has that address. Keeps the version (not an
    /// operator change). Returns whether anything changed.
    pub fn set_members(&self, updates: &[(Arc<str>, String, Vec<SocketAddr>)]) -> bool {
        self.swap(None, 0, |cur| {
            let mut groups = cur.groups.clone();
            let mut changed = false;
            for (name, configured, addrs) in updates {
                let group = groups
                    .iter_mut()
                    .find(|g| &g.name == name && &g.configured_addr == configured);
                if let Some(g) = group {
                    let addrs = normalize(addrs.clone());
                    changed |= g.addrs != addrs;
                    g.addrs = addrs;
                }
            }
            if changed {
                Ok(cur.relayout(groups))
            } else {
                Err(()) // nothing to swap
            }
        })
        .is_ok()
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

/// The `[pool]`'s members, which no config entry describes: they stay as
/// they are, after the file's backends (and before groups in the cap: a
/// plain entry always fits, and the pool's size is validated to fit). With
/// the file's `pool` (a reload), they take its `max_in_flight`, and its
/// weight if the file changed `pool.weight`, as a static backend would.
fn pool_members<'a>(
    backends: &'a [Backend],
    pool: Option<&'a PoolConfig>,
) -> impl Iterator<Item = Entry> + 'a {
    backends.iter().filter(|b| b.pool).map(move |b| {
        Entry::Plain(match pool {
            Some(p) => Backend {
                weight: carried_weight(b.config_weight, b.weight, p.weight),
                config_weight: p.weight,
                max_in_flight: p.max_in_flight,
                ..b.clone()
            },
            None => b.clone(),
        })
    })
}

fn any_limited(backends: &[Backend]) -> bool {
    backends.iter().any(|b| b.max_in_flight > 0)
}

/// Builds a snapshot for `config`. Backends that keep their name keep their
/// stats (and resolved address if it stays the same host); groups that keep
/// their name and address keep their members, addresses and operator state.
/// Operator weights stay unless the file changed that weight.
pub fn build(config: &Arc<Config>, previous: Option<&Snapshot>, algorithm: Algorithm) -> Snapshot {
    let prev_backends = previous.map_or(&[][..], |p| &p.backends[..]);
    let mut groups = Vec::new();
    let mut entries = Vec::new();
    for bc in &config.backends {
        match bc.resolve {
            Resolve::One => {
                let prev = prev_backends
                    .iter()
                    .find(|b| b.group.is_none() && *b.stats.name == *bc.name);
                entries.push(Entry::Plain(plain(bc, prev)));
            }
            Resolve::All => {
                let prev = previous
                    .and_then(|p| p.group(&bc.name))
                    .filter(|g| g.configured_addr == bc.addr);
                let g = group(bc, prev);
                // Members carried over take the file's limit, and its weight
                // if the file changed the group's.
                let existing: Vec<Backend> = prev_backends
                    .iter()
                    .filter(|b| prev.is_some() && b.group.as_deref() == Some(&*g.name))
                    .map(|b| Backend {
                        weight: carried_weight(b.config_weight, b.weight, bc.weight),
                        config_weight: bc.weight,
                        max_in_flight: bc.max_in_flight,
                        h2c: bc.protocol == crate::config::Protocol::H2c,
                        ..b.clone()
                    })
                    .collect();
                entries.push(Entry::Group(g.members(&existing)));
                groups.push(g);
            }
        }
    }
    entries.extend(pool_members(prev_backends, config.pool.as_ref()));
    let backends = layout(entries);
    Snapshot {
        version: 1,
        limited: any_limited(&backends),
        backends,
        groups,
        algorithm,
        balancer: balancer::for_algorithm(algorithm),
        sticky: config.balancer.sticky.clone(),
        backend_header: config.balancer.backend_header.clone(),
        config: config.clone(),
    }
}

/// A reload keeps the operator's weight unless the file changed it.
fn carried_weight(old_config: u32, operator: u32, new_config: u32) -> u32 {
    if old_config == new_config {
        operator
    } else {
        new_config
    }
}

/// A `resolve = "one"` backend for `bc`, carrying `prev`'s state.
fn plain(bc: &BackendConfig, prev: Option<&Backend>) -> Backend {
    Backend {
        addr: bc.addr.parse().ok().or_else(|| {
            prev.filter(|p| p.configured_addr == bc.addr)
                .and_then(|p| p.addr)
        }),
        configured_addr: bc.addr.clone(),
        weight: prev.map_or(bc.weight, |p| {
            carried_weight(p.config_weight, p.weight, bc.weight)
        }),
        config_weight: bc.weight,
        mode: prev.map_or(Mode::Active, |p| p.mode),
        max_in_flight: bc.max_in_flight,
        group: None,
        stats: prev.map_or_else(
            || Arc::new(BackendStats::new(&bc.name)),
            |p| p.stats.clone(),
        ),
        pool: false,
        h2c: bc.protocol == crate::config::Protocol::H2c,
    }
}

/// The group for `bc`, carrying `prev`'s (same name and address) state.
fn group(bc: &BackendConfig, prev: Option<&Group>) -> Group {
    let fresh = Group::from_config(bc);
    match prev {
        Some(p) => Group {
            weight: carried_weight(p.config_weight, p.weight, bc.weight),
            mode: p.mode,
            addrs: p.addrs.clone(),
            ..fresh
        },
        None => fresh,
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
    fn a_threads_handle_follows_every_swap_dns_included() {
        let s = state();
        let first = s.current();
        // The thread's handle is reused while nothing changed: the same
        // snapshot, and the shared count moved once, not per call.
        let again = s.current();
        assert!(Arc::ptr_eq(&first.0, &again.0));
        assert!(Arc::ptr_eq(first.shared(), &s.load_full()));
        assert!(s.is_current(&first));
        // A DNS answer keeps the version but is a new snapshot.
        let ip: SocketAddr = "10.0.0.1:80".parse().unwrap();
        s.set_addrs(&[("a".into(), "a.test:80".into(), ip)]);
        assert!(!s.is_current(&first));
        let now = s.current();
        assert_eq!(now.backends[0].addr, Some(ip));
        assert_eq!(now.version, first.version);
        // An operator change, seen from another thread too.
        s.set_algorithm(Algorithm::LeastConn);
        assert!(!s.is_current(&now));
        std::thread::scope(|t| {
            t.spawn(|| {
                let there = s.current();
                assert_eq!(there.algorithm, Algorithm::LeastConn);
                assert!(s.is_current(&there));
            });
        });
        assert_eq!(s.current().algorithm, Algorithm::LeastConn);
        // A handle of another State is never taken for this one's.
        let other = state();
        assert!(!other.is_current(&s.current()));
        assert!(Arc::ptr_eq(other.current().shared(), &other.load_full()));
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

    const GROUP: &str = "[[backends]]\nname = \"web\"\naddr = \"127.0.0.1:9\"\n\
                         [[backends]]\nname = \"app\"\naddr = \"app.test:3000\"\n\
                         resolve = \"all\"\nweight = 4\nmax_in_flight = 2\n";

    fn names(snap: &Snapshot) -> Vec<String> {
        snap.backends
            .iter()
            .map(|b| b.stats.name.to_string())
            .collect()
    }

    fn answer(s: &State, ips: &[&str]) -> bool {
        let addrs = ips.iter().map(|a| a.parse().unwrap()).collect();
        s.set_members(&[("app".into(), "app.test:3000".into(), addrs)])
    }

    #[test]
    fn groups_follow_dns_keeping_members_by_address() {
        let s = State::new(Arc::new(Config::from_toml(GROUP).unwrap()));
        assert_eq!(names(&s.load()), ["web"], "no members before DNS answers");
        let v = s.version();
        assert!(answer(&s, &["10.0.0.2:3000", "10.0.0.1:3000"]));
        assert_eq!(
            names(&s.load()),
            ["web", "app@10.0.0.1:3000", "app@10.0.0.2:3000"]
        );
        assert!(!answer(&s, &["10.0.0.1:3000", "10.0.0.2:3000"]), "same set");
        let first = s.load().backends[1].stats.clone();
        assert!(answer(&s, &["10.0.0.3:3000", "10.0.0.1:3000"]));
        let snap = s.load();
        assert_eq!(
            names(&snap),
            ["web", "app@10.0.0.1:3000", "app@10.0.0.3:3000"]
        );
        assert!(
            Arc::ptr_eq(&snap.backends[1].stats, &first),
            "kept by address"
        );
        assert!(snap.backends[1..]
            .iter()
            .all(|b| b.weight == 4 && b.max_in_flight == 2));
        assert_eq!(s.version(), v, "DNS is not an operator change");
        // Names the admin API understands.
        assert_eq!(snap.targets("app"), Some(vec![1, 2]));
        assert_eq!(snap.targets("app@10.0.0.3:3000"), Some(vec![2]));
        assert_eq!(snap.targets("web"), Some(vec![0]));
        assert_eq!(snap.targets("app@10.0.0.2:3000"), None);
        // A stale update (the group's address changed meanwhile) is ignored.
        let stale = vec!["10.0.0.9:3000".parse().unwrap()];
        assert!(!s.set_members(&[("app".into(), "old.test:3000".into(), stale)]));
    }

    #[test]
    fn reloads_keep_a_group_that_keeps_its_address() {
        let s = State::new(Arc::new(Config::from_toml(GROUP).unwrap()));
        answer(&s, &["10.0.0.1:3000", "10.0.0.2:3000"]);
        s.update(|cur| {
            let mut backends = cur.backends.clone();
            backends[2].weight = 1; // an operator's change to one member
            backends[2].mode = Mode::Drain;
            cur.with(backends, cur.algorithm)
        });
        let cur = s.load_full();
        let same = Arc::new(Config::from_toml(GROUP).unwrap());
        let next = build(&same, Some(&cur), cur.algorithm);
        assert_eq!(names(&next), names(&cur));
        assert!(Arc::ptr_eq(&next.backends[1].stats, &cur.backends[1].stats));
        assert_eq!(
            (next.backends[2].weight, next.backends[2].mode),
            (1, Mode::Drain)
        );
        // The file changes the group's weight and limit: every member takes them.
        let edited = GROUP
            .replace("weight = 4", "weight = 6")
            .replace("max_in_flight = 2", "max_in_flight = 3");
        let next = build(
            &Arc::new(Config::from_toml(&edited).unwrap()),
            Some(&cur),
            cur.algorithm,
        );
        assert!(next.backends[1..]
            .iter()
            .all(|b| b.weight == 6 && b.config_weight == 6 && b.max_in_flight == 3));
        assert_eq!(next.backends[2].mode, Mode::Drain, "modes stay");
        assert_eq!(next.groups[0].weight, 6);
        // A new address for the group: its members go until it resolves.
        let moved = GROUP.replace("app.test", "elsewhere.test");
        let next = build(
            &Arc::new(Config::from_toml(&moved).unwrap()),
            Some(&cur),
            cur.algorithm,
        );
        assert_eq!(names(&next), ["web"]);
        assert!(next.groups[0].addrs.is_empty());
    }

    #[test]
    fn reloads_give_pool_members_the_files_capacity_and_changed_weight() {
        let pool = |weight: u32, cap: u32| {
            let text = format!(
                "[pool]\ncommand = [\"app\", \"{{port}}\"]\nweight = {weight}\n\
                 max_in_flight = {cap}\n"
            );
            Arc::new(Config::from_toml(&text).unwrap())
        };
        let s = State::new(pool(2, 0));
        s.update(|cur| {
            let member = Backend {
                addr: Some("127.0.0.1:3100".parse().unwrap()),
                configured_addr: "127.0.0.1:3100".into(),
                weight: 7, // an operator's change
                config_weight: 2,
                mode: Mode::Active,
                max_in_flight: 0,
                group: None,
                stats: Arc::new(BackendStats::new("app-1")),
                pool: true,
                h2c: false,
            };
            cur.with(vec![member], cur.algorithm)
        });
        let cur = s.load_full();
        // Capacity follows the file; the weight the file did not change stays.
        let next = build(&pool(2, 5), Some(&cur), cur.algorithm);
        let b = &next.backends[0];
        assert_eq!((b.weight, b.config_weight, b.max_in_flight), (7, 2, 5));
        assert!(next.limited && Arc::ptr_eq(&b.stats, &cur.backends[0].stats));
        // A new pool.weight wins over the operator's.
        let next = build(&pool(3, 5), Some(&cur), cur.algorithm);
        assert_eq!(
            (next.backends[0].weight, next.backends[0].config_weight),
            (3, 3)
        );
    }

    #[test]
    fn the_cap_counts_members_and_says_which_group_it_cut() {
        let s = State::new(Arc::new(Config::from_toml(GROUP).unwrap()));
        let many: Vec<String> = (1..=70).map(|i| format!("10.0.0.{i}:3000")).collect();
        answer(&s, &many.iter().map(String::as_str).collect::<Vec<_>>());
        let snap = s.load();
        assert_eq!(snap.backends.len(), 64);
        assert_eq!(&*snap.backends[63].stats.name, "app@10.0.0.63:3000");
        let capped = snap.capped();
        assert_eq!(capped.len(), 1);
        assert_eq!(
            (&*capped[0].group, capped[0].kept, capped[0].dropped),
            ("app", 63, 7)
        );
        answer(&s, &["10.0.0.1:3000"]);
        assert!(s.load().capped().is_empty());
    }
}
