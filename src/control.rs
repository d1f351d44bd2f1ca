//! Operator actions on the shared state: weights, modes, algorithm, reload,
//! and the state file that makes weights, modes and the algorithm survive restarts.
//!
//! The admin API and SIGHUP both come here. Every change is validated whole,
//! then applied in one snapshot swap ([`State::try_update`]): the next request
//! sees all of it, no request sees half. Each applied change writes one audit
//! line (what, old → new, peer) and, with `admin.state_file`, persists the
//! operator state (weights, modes, algorithm) atomically (temp file + fsync +
//! rename) on the state file's own writer thread (`control/writer.rs`).

mod writer;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Algorithm, Config, ConfigError, Resolve, MAX_WEIGHT};
use crate::discovery;
use crate::state::{self, Mode, State, UpdateError};

/// Why an operator action changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Unknown backend in a path (404).
    #[error("no backend named {0:?}")]
    NotFound(String),
    /// The request is well-formed but not acceptable (422).
    #[error("{0}")]
    Invalid(String),
    /// The new config failed validation (422); the old one stays.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// `If-Match` named an older version (412).
    #[error("state changed since version {0}; fetch it again")]
    Stale(u64),
    /// No config file to reload from.
    #[error("lb was started without a config file to reload")]
    NoConfigFile,
}

impl From<UpdateError<ControlError>> for ControlError {
    fn from(e: UpdateError<ControlError>) -> Self {
        match e {
            UpdateError::Stale(v) => ControlError::Stale(v),
            UpdateError::Rejected(e) => e,
        }
    }
}

/// What the state file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedState {
    /// Operator weights by backend name.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// Operator modes by backend name.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    /// The config file's weights when the state was saved. At start a saved
    /// weight applies only if the file still has this weight for the backend:
    /// an edit to lb.toml wins, exactly as on reload.
    #[serde(default)]
    pub config_weights: BTreeMap<String, u32>,
    /// The algorithm in use (set by the admin API or the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The config file's algorithm when the state was saved: at start the saved
    /// algorithm applies only if the file still names this one (an edit wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_algorithm: Option<String>,
}

/// Operator weights by name in `snap`.
pub fn weights_of(snap: &state::Snapshot) -> BTreeMap<String, u32> {
    snap.backends
        .iter()
        .map(|b| (b.stats.name.to_string(), b.weight))
        .collect()
}

/// Parses a mode name.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "active" => Some(Mode::Active),
        "drain" => Some(Mode::Drain),
        "maintenance" => Some(Mode::Maintenance),
        _ => None,
    }
}

/// The operator's handle on lb.
pub struct Control {
    /// The shared state.
    pub state: Arc<State>,
    config_path: Option<PathBuf>,
    /// The state file's writer thread (the admin API and SIGHUP run on
    /// different runtimes; neither ever waits on the disk).
    writer: writer::Writer,
    /// The running `[pool]`, once started: reloads reconfigure it.
    pool: std::sync::OnceLock<Arc<crate::pool::Pool>>,
}

impl Control {
    /// Control over `state`; reloads read `config_path`.
    pub fn new(state: Arc<State>, config_path: Option<PathBuf>) -> Self {
        let (s, failing) = (state.clone(), AtomicBool::new(false));
        Control {
            state,
            config_path,
            writer: writer::Writer::new(move || write_state_file(&s, &failing)),
            pool: std::sync::OnceLock::new(),
        }
    }

    /// Hands reloads the running pool, which starts once `Control` exists
    /// (after the state file's operator state applied).
    pub fn set_pool(&self, pool: Arc<crate::pool::Pool>) {
        let _ = self.pool.set(pool);
    }

    /// Operator weights by name, now.
    pub fn weights(&self) -> BTreeMap<String, u32> {
        weights_of(&self.state.load())
    }

    fn audit(&self, kind: usize, what: &str, old: &str, new: &str, peer: &str) {
        self.state.counters.admin_changes[kind].fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "audit", what, old, new, peer, "admin change");
    }

    /// Applies some or all weights at once. Every value must be an integer
    /// 0..=1000 for a known backend, and the result must leave some weight > 0.
    pub fn set_weights(
        &self,
        changes: &serde_json::Map<String, Value>,
        if_match: Option<u64>,
        peer: &str,
    ) -> Result<BTreeMap<String, u32>, ControlError> {
        let mut parsed = HashMap::new();
        for (name, v) in changes {
            let w = v
                .as_u64()
                .filter(|w| *w <= MAX_WEIGHT as u64)
                .ok_or_else(|| {
                    ControlError::Invalid(format!(
                        "{name}: {v} is not an integer in 0..={MAX_WEIGHT}"
                    ))
                })?;
            parsed.insert(name.as_str(), w as u32);
        }
        let mut old = BTreeMap::new();
        let mut new = BTreeMap::new();
        self.state.try_update(if_match, |cur| {
            old = weights_of(cur);
            for name in parsed.keys() {
                if cur.targets(name).is_none() {
                    return Err(ControlError::Invalid(format!("no backend named {name:?}")));
                }
            }
            // A group's weight applies to every member (and to members that
            // join later); a member's own name wins over its group's.
            let mut groups = cur.groups.clone();
            for g in &mut groups {
                if let Some(w) = parsed.get(&*g.name) {
                    g.weight = *w;
                }
            }
            let mut backends = cur.backends.clone();
            for b in &mut backends {
                let own = parsed.get(&*b.stats.name);
                if let Some(w) = own.or_else(|| parsed.get(b.group.as_deref()?)) {
                    b.weight = *w;
                }
            }
            if backends.iter().all(|b| b.weight == 0) {
                return Err(ControlError::Invalid(
                    "every weight would be 0; at least one backend needs weight > 0".into(),
                ));
            }
            let next = cur.with_groups(backends, groups, cur.algorithm);
            new = weights_of(&next);
            Ok(next)
        })?;
        self.audit(0, "weights", &format!("{old:?}"), &format!("{new:?}"), peer);
        self.persist();
        Ok(new)
    }

    /// Sets one backend's mode, or a group's (every member's, and that of
    /// members that join later).
    pub fn set_mode(
        &self,
        name: &str,
        mode: Mode,
        if_match: Option<u64>,
        peer: &str,
    ) -> Result<(), ControlError> {
        let mut old = Mode::Active;
        self.state.try_update(if_match, |cur| {
            let targets = cur
                .targets(name)
                .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
            let mut groups = cur.groups.clone();
            let mut backends = cur.backends.clone();
            if let Some(g) = groups.iter_mut().find(|g| &*g.name == name) {
                old = g.mode;
                g.mode = mode;
            } else if let Some(&i) = targets.first() {
                old = backends[i].mode;
            }
            for i in targets {
                backends[i].mode = mode;
            }
            Ok(cur.with_groups(backends, groups, cur.algorithm))
        })?;
        self.audit(
            1,
            &format!("mode {name}"),
            old.as_str(),
            mode.as_str(),
            peer,
        );
        self.persist();
        Ok(())
    }

    /// Switches the algorithm, keeping every backend's state.
    pub fn set_algorithm(
        &self,
        algorithm: Algorithm,
        if_match: Option<u64>,
        peer: &str,
    ) -> Result<(), ControlError> {
        let mut old = algorithm;
        self.state.try_update(if_match, |cur| {
            old = cur.algorithm;
            Ok::<_, ControlError>(cur.with(cur.backends.clone(), algorithm))
        })?;
        self.audit(2, "algorithm", old.as_str(), algorithm.as_str(), peer);
        self.persist();
        Ok(())
    }

    /// Re-reads the config file; applies it only if valid. Backends that remain
    /// keep their state (stats, health, circuit, operator weight unless the file
    /// changed it, mode); new ones join, removed ones leave (their in-flight
    /// requests finish on the old snapshot they hold). Returns once the state
    /// file (if any) is written.
    pub async fn reload(&self, peer: &str) -> Result<(), ControlError> {
        self.reload_if(peer, None).await
    }

    /// [`Control::reload`] if the state's version still equals `if_match`
    /// (`POST /admin/reload` with `If-Match`); checked before the file is read
    /// and again, atomically, when the new snapshot is installed.
    pub async fn reload_if(&self, peer: &str, if_match: Option<u64>) -> Result<(), ControlError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or(ControlError::NoConfigFile)?;
        let current = self.state.version();
        if if_match.is_some_and(|v| v != current) {
            return Err(ControlError::Stale(current));
        }
        let loaded = Config::load(path).inspect(|c| {
            restart_only_changes(&self.state.load().config, c);
        });
        let new = match loaded {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.state
                    .counters
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "audit", peer, error = %e, "reload rejected; old config kept");
                return Err(e.into());
            }
        };
        let addrs = resolve_new_names(&self.state, &new).await;
        let old_names: Vec<String> = self
            .state
            .load()
            .backends
            .iter()
            .map(|b| b.stats.name.to_string())
            .collect();
        let applied = self.state.try_update(if_match, |cur| {
            // The runtime algorithm stays unless the file changed it.
            let algorithm = if new.balancer.algorithm != cur.config.balancer.algorithm {
                new.balancer.algorithm
            } else {
                cur.algorithm
            };
            let mut snap = state::build(&new, Some(cur), algorithm);
            for b in snap.backends.iter_mut().filter(|b| b.addr.is_none()) {
                b.addr = addrs.one.get(&b.configured_addr).copied();
            }
            let mut groups = snap.groups.clone();
            for g in groups.iter_mut().filter(|g| g.addrs.is_empty()) {
                if let Some(a) = addrs.all.get(&g.configured_addr) {
                    g.addrs = crate::group::normalize(a.clone());
                }
            }
            let snap = snap.relayout(groups);
            // Operator weights kept for unchanged backends can combine with the
            // file's into all zeros, which PUT /admin/weights would refuse too.
            if !snap.backends.is_empty() && snap.backends.iter().all(|b| b.weight == 0) {
                return Err(ControlError::Invalid(
                    "reload would leave every weight at 0 (operator weights are kept for backends \
                     whose weight the file did not change); raise one first"
                        .into(),
                ));
            }
            Ok(snap)
        });
        match applied {
            Ok(_) => {}
            // Someone else changed the state meanwhile: not a failed reload.
            Err(UpdateError::Stale(v)) => return Err(ControlError::Stale(v)),
            Err(UpdateError::Rejected(e)) => {
                self.state
                    .counters
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        self.state
            .counters
            .reloads_ok
            .fetch_add(1, Ordering::Relaxed);
        crate::pool::reloaded(self.pool.get().map(|p| &**p), new.pool.as_ref());
        let names: Vec<String> = new.backends.iter().map(|b| b.name.clone()).collect();
        self.audit(3, "reload", &old_names.join(","), &names.join(","), peer);
        self.persist();
        self.persisted().await;
        Ok(())
    }

    /// Asks the writer thread to save the operator state to
    /// `admin.state_file`, if configured; returns at once. A failed write is
    /// logged; in-memory state is never lost or rolled back.
    pub fn persist(&self) {
        if self.state.load().config.admin.state_file.is_some() {
            self.writer.request();
        }
    }

    /// Waits (without blocking a thread; at most 5 s) until every write
    /// requested so far is done, so an admin `200` means "survives a restart".
    pub async fn persisted(&self) {
        if !self.writer.wait(self.pending()).await {
            tracing::warn!("state file write still pending after 5 s; answering anyway");
        }
    }

    /// [`Control::persisted`] for synchronous callers (tests, shutdown).
    pub fn persisted_blocking(&self) {
        self.writer.wait_blocking(self.pending());
    }

    fn pending(&self) -> u64 {
        // Tickets are handed out in order; the latest is the last one requested.
        self.writer.request_count()
    }

    /// Applies a saved state file at start to backends still in the config.
    /// Missing file: nothing to do. Unreadable or corrupt: one warning.
    pub fn load_state_file(&self) {
        let snap = self.state.load();
        let Some(path) = snap.config.admin.state_file.clone() else {
            return;
        };
        let saved: SavedState = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read state file; using config weights");
                return;
            }
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "corrupt state file ignored; using config weights");
                    return;
                }
            },
        };
        self.state.update(|cur| {
            // A weight edited in the file since the save wins, as on reload.
            let weight = |name: &str, config_weight: u32| {
                let file_unchanged = saved
                    .config_weights
                    .get(name)
                    .is_none_or(|&w| w == config_weight);
                saved
                    .weights
                    .get(name)
                    .copied()
                    .filter(|&w| w <= MAX_WEIGHT && file_unchanged)
            };
            let mode = |name: &str| saved.modes.get(name).and_then(|m| parse_mode(m));
            let mut groups = cur.groups.clone();
            for g in &mut groups {
                g.weight = weight(&g.name, g.config_weight).unwrap_or(g.weight);
                g.mode = mode(&g.name).unwrap_or(g.mode);
            }
            let mut backends = cur.backends.clone();
            for b in &mut backends {
                // A member's own saved state, else its group's.
                let names = [Some(&*b.stats.name), b.group.as_deref()];
                let names = names.into_iter().flatten();
                if let Some(w) = names.clone().find_map(|n| weight(n, b.config_weight)) {
                    b.weight = w;
                }
                if let Some(m) = names.clone().find_map(mode) {
                    b.mode = m;
                }
            }
            if backends.iter().all(|b| b.weight == 0) {
                tracing::warn!(
                    "state file sets every weight to 0; using config weights (modes applied)"
                );
                for (b, c) in backends.iter_mut().zip(&cur.backends) {
                    b.weight = c.weight;
                }
            }
            // The saved algorithm, unless lb.toml names another one than when
            // it was saved (an edit to the file wins, as on reload).
            let file_algorithm = cur.config.balancer.algorithm.as_str();
            let algorithm = saved
                .algorithm
                .as_deref()
                .and_then(Algorithm::parse)
                .filter(|_| {
                    saved
                        .config_algorithm
                        .as_deref()
                        .is_none_or(|a| a == file_algorithm)
                })
                .unwrap_or(cur.algorithm);
            cur.with_groups(backends, groups, algorithm)
        });
        tracing::info!(path = %path.display(), "state file applied");
    }
}

/// Writes the operator state of `state`'s current snapshot to
/// `admin.state_file` (the writer thread's job). `failing` is set while writes
/// fail, so an unwritable file warns once, not per change.
fn write_state_file(state: &State, failing: &AtomicBool) {
    let snap = state.load_full();
    let Some(path) = snap.config.admin.state_file.clone() else {
        return;
    };
    let mut saved = SavedState {
        algorithm: Some(snap.algorithm.as_str().to_string()),
        config_algorithm: Some(snap.config.balancer.algorithm.as_str().to_string()),
        ..SavedState::default()
    };
    // Backends and group members by name, and groups (what members that join
    // later start with) by theirs.
    // Pool members come and go under new names: nothing to restore.
    let backends = snap.backends.iter().filter(|b| !b.pool);
    let backends = backends.map(|b| (&*b.stats.name, b.weight, b.config_weight, b.mode));
    let groups = snap.groups.iter();
    let groups = groups.map(|g| (&*g.name, g.weight, g.config_weight, g.mode));
    for (name, weight, config_weight, mode) in backends.chain(groups) {
        saved.weights.insert(name.to_string(), weight);
        saved.config_weights.insert(name.to_string(), config_weight);
        saved
            .modes
            .insert(name.to_string(), mode.as_str().to_string());
    }
    match write_atomically(&path, &saved) {
        Ok(()) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!(path = %path.display(), "state file written again");
            }
        }
        Err(e) => {
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot write state file; state kept in memory (warning once until it works)");
            }
        }
    }
}

fn restart_only_changes(old: &Config, new: &Config) {
    if old.server.listen != new.server.listen
        || old.server.threads != new.server.threads
        || old.admin.listen != new.admin.listen
    {
        tracing::warn!(
            "reload: server.listen, server.threads and admin.listen apply at the next restart"
        );
    }
}

/// Addresses looked up for a reload, by configured `host:port`.
#[derive(Default)]
struct Resolved {
    /// `resolve = "one"` backends.
    one: HashMap<String, std::net::SocketAddr>,
    /// `resolve = "all"` groups.
    all: HashMap<String, Vec<std::net::SocketAddr>>,
}

/// Resolves hostnames the current snapshot does not already know, so
/// backends and groups added by a reload take traffic at once.
async fn resolve_new_names(state: &State, new: &Config) -> Resolved {
    let cur = state.load_full();
    let known_one: HashMap<&str, _> = cur
        .backends
        .iter()
        .filter(|b| b.group.is_none())
        .filter_map(|b| Some((b.configured_addr.as_str(), b.addr?)))
        .collect();
    let known_all: HashMap<&str, &Vec<_>> = cur
        .groups
        .iter()
        .filter(|g| !g.addrs.is_empty())
        .map(|g| (g.configured_addr.as_str(), &g.addrs))
        .collect();
    let resolver = discovery::resolver(&new.discovery).ok();
    let mut out = Resolved::default();
    for b in &new.backends {
        if b.addr.parse::<std::net::SocketAddr>().is_ok() {
            continue;
        }
        match b.resolve {
            Resolve::One => {
                let addr = match (known_one.get(b.addr.as_str()), &resolver) {
                    (Some(a), _) => Some(*a),
                    (None, Some(r)) => discovery::lookup(r, &b.addr).await.ok(),
                    (None, None) => None,
                };
                if let Some(a) = addr {
                    out.one.insert(b.addr.clone(), a);
                }
            }
            Resolve::All => {
                let addrs = match (known_all.get(b.addr.as_str()), &resolver) {
                    (Some(a), _) => Some((*a).clone()),
                    (None, Some(r)) => discovery::lookup_all(r, &b.addr).await.ok(),
                    (None, None) => None,
                };
                if let Some(a) = addrs {
                    out.all.insert(b.addr.clone(), a);
                }
            }
        }
    }
    out
}

/// Writes `value` as JSON to `path` via a temp file in the same directory,
/// fsync, then rename: readers see the old file or the new one, never half.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lb-state")
    ));
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(dir: &Path, weights: [u32; 2]) -> Control {
        let text = format!(
            "[admin]\nstate_file = \"{}\"\n[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nweight = {}\n\
             [[backends]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\nweight = {}\n",
            dir.join("state.json").display(),
            weights[0],
            weights[1]
        );
        let config = Arc::new(Config::from_toml(&text).unwrap());
        Control::new(Arc::new(State::new(config)), None)
    }

    #[test]
    fn the_state_file_keeps_group_and_member_settings() {
        let dir = tempfile::tempdir().unwrap();
        // Literal addresses: the group has its members without DNS.
        let text = format!(
            "[admin]\nstate_file = \"{}\"\n[[backends]]\nname = \"g\"\n\
             addr = \"127.0.0.1:1\"\nresolve = \"all\"\nweight = 2\n",
            dir.path().join("state.json").display()
        );
        let start = || {
            let config = Arc::new(Config::from_toml(&text).unwrap());
            Control::new(Arc::new(State::new(config)), None)
        };
        let c = start();
        let changes = serde_json::json!({"g": 7});
        c.set_weights(changes.as_object().unwrap(), None, "test")
            .unwrap();
        c.set_mode("g@127.0.0.1:1", Mode::Drain, None, "test")
            .unwrap();
        assert_eq!(c.state.load().groups[0].mode, Mode::Active);
        c.persisted_blocking();
        let again = start();
        again.load_state_file();
        let snap = again.state.load();
        assert_eq!(
            (snap.groups[0].weight, snap.groups[0].mode),
            (7, Mode::Active)
        );
        let m = &snap.backends[0];
        assert_eq!(
            (&*m.stats.name, m.weight, m.mode),
            ("g@127.0.0.1:1", 7, Mode::Drain)
        );
    }

    #[test]
    fn saved_weights_apply_unless_the_file_changed_that_weight() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path(), [1, 1]);
        let changes = serde_json::json!({"a": 7, "b": 9});
        c.set_weights(changes.as_object().unwrap(), None, "test")
            .unwrap();
        c.set_mode("b", Mode::Drain, None, "test").unwrap();
        c.persisted_blocking();

        // Restart with the same file: both operator weights and the mode return.
        let same = control(dir.path(), [1, 1]);
        same.load_state_file();
        assert_eq!(
            same.weights(),
            BTreeMap::from([("a".into(), 7), ("b".into(), 9)])
        );
        assert_eq!(same.state.load().backends[1].mode, Mode::Drain);

        // Restart after editing b's weight in lb.toml: the edit wins for b only.
        let edited = control(dir.path(), [1, 4]);
        edited.load_state_file();
        assert_eq!(
            edited.weights(),
            BTreeMap::from([("a".into(), 7), ("b".into(), 4)])
        );
    }

    #[tokio::test]
    async fn reload_refuses_a_result_with_every_weight_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb.toml");
        let file = |a: u32, b: u32| {
            format!(
                "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nweight = {a}\n\
                 [[backends]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\nweight = {b}\n"
            )
        };
        std::fs::write(&path, file(1, 1)).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let c = Control::new(Arc::new(State::new(config)), Some(path.clone()));
        let zero_a = serde_json::json!({"a": 0});
        c.set_weights(zero_a.as_object().unwrap(), None, "t")
            .unwrap();
        // The file now zeroes b; a keeps the operator's 0: refused, nothing changes.
        std::fs::write(&path, file(1, 0)).unwrap();
        let v = c.state.version();
        assert!(matches!(c.reload("t").await, Err(ControlError::Invalid(_))));
        assert_eq!(c.state.version(), v);
        assert_eq!(
            c.weights(),
            BTreeMap::from([("a".into(), 0), ("b".into(), 1)])
        );
        assert_eq!(c.state.counters.reloads_failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn concurrent_persists_leave_valid_latest_state() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(control(dir.path(), [1, 1]));
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for k in 0..20u64 {
                        let w = serde_json::json!({"a": (i * 20 + k) % 1000 + 1});
                        c.set_weights(w.as_object().unwrap(), None, "t").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.persisted_blocking();
        let saved: SavedState =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(saved.weights, c.weights(), "file lags memory");
        // No temp files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    fn control_with(dir: &Path, algorithm: &str) -> Control {
        let text = format!(
            "[admin]\nstate_file = \"{}\"\n[balancer]\nalgorithm = \"{algorithm}\"\n\
             [[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
            dir.join("state.json").display(),
        );
        let config = Arc::new(Config::from_toml(&text).unwrap());
        Control::new(Arc::new(State::new(config)), None)
    }

    #[test]
    fn an_algorithm_switch_survives_a_restart_unless_the_file_changed_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = control_with(dir.path(), "round_robin");
        c.set_algorithm(Algorithm::LeastTime, None, "t").unwrap();
        c.persisted_blocking();
        let same = control_with(dir.path(), "round_robin");
        same.load_state_file();
        assert_eq!(same.state.load().algorithm, Algorithm::LeastTime);
        // lb.toml now names another algorithm than when the state was saved:
        // the edit wins, as on reload.
        let edited = control_with(dir.path(), "ip_hash");
        edited.load_state_file();
        assert_eq!(edited.state.load().algorithm, Algorithm::IpHash);
    }

    #[tokio::test]
    async fn reload_honours_if_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb.toml");
        let file =
            |w: u32| format!("[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nweight = {w}\n");
        std::fs::write(&path, file(1)).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let c = Control::new(Arc::new(State::new(config)), Some(path.clone()));
        std::fs::write(&path, file(5)).unwrap();
        let v = c.state.version();
        // A stale version: refused, nothing reloaded, not counted as failed.
        assert!(
            matches!(c.reload_if("t", Some(v + 1)).await, Err(ControlError::Stale(x)) if x == v)
        );
        assert_eq!(c.weights()["a"], 1);
        assert_eq!(c.state.counters.reloads_failed.load(Ordering::Relaxed), 0);
        c.reload_if("t", Some(v)).await.unwrap();
        assert_eq!(c.weights()["a"], 5);
        assert_eq!(c.state.version(), v + 1);
    }

    #[test]
    fn concurrent_weight_changes_never_expose_a_torn_map() {
        // 4 writers install one-hot maps over 4 backends, each one set_weights
        // of all four (as one PUT); 2 readers load snapshots in a tight loop.
        // Every map a reader sees must be the initial one or one-hot in full.
        // Writers go on until the readers have checked 20,000 snapshots, so
        // the race is exercised however the threads are scheduled.
        let text: String = (0..4)
            .map(|i| {
                format!(
                    "[[backends]]\nname = \"b{i}\"\naddr = \"127.0.0.1:{}\"\n",
                    i + 1
                )
            })
            .collect();
        let config = Arc::new(Config::from_toml(&text).unwrap());
        let c = Arc::new(Control::new(Arc::new(State::new(config)), None));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (c, stop, seen) = (c.clone(), stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let w: Vec<u32> =
                            c.state.load().backends.iter().map(|b| b.weight).collect();
                        let one_hot = w.iter().sum::<u32>() == 1 && w.iter().all(|&x| x <= 1);
                        if w != [1, 1, 1, 1] && !one_hot {
                            stop.store(true, Ordering::Relaxed); // the writers too
                            return Some(w);
                        }
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                })
            })
            .collect();
        let writers: Vec<_> = (0..4)
            .map(|k| {
                let (c, seen, stop) = (c.clone(), seen.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    let more = |i| i < 500 || seen.load(Ordering::Relaxed) < 20_000;
                    while !stop.load(Ordering::Relaxed) && more(i) {
                        let hot = (k + i) % 4;
                        let map: serde_json::Map<String, Value> = (0..4)
                            .map(|j| (format!("b{j}"), serde_json::json!(u32::from(j == hot))))
                            .collect();
                        c.set_weights(&map, None, "t").unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert_eq!(r.join().unwrap(), None, "a reader saw a torn map");
        }
    }
}
