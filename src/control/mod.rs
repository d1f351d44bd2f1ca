//! Operator actions on the shared state: weights, modes, algorithm; reload
//! (`reload.rs`) and the state file (`state_file.rs`) that makes weights, modes
//! and the algorithm survive restarts.
//!
//! The admin API and SIGHUP both come here. Every change is validated whole,
//! then applied in one snapshot swap ([`State::try_update`]): the next request
//! sees all of it, no request sees half. Each applied change writes one audit
//! line (what, old → new, peer) and, with `admin.state_file`, persists the
//! operator state (weights, modes, algorithm) atomically (temp file + fsync +
//! rename) on the state file's own writer thread (`writer.rs`); the admin API
//! waits for that write and answers `507` when it failed
//! ([`Control::persisted`]).

mod reload;
mod state_file;
mod writer;

pub use state_file::{state_file_errors, write_atomically, SavedState, StateFileError};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::config::{Algorithm, ConfigError, MAX_WEIGHT};
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
            writer: writer::Writer::new(move || state_file::write_state_file(&s, &failing)),
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
                // Back from maintenance: slow start (`balancer.slow_start`).
                if backends[i].mode == Mode::Maintenance && mode != Mode::Maintenance {
                    backends[i].stats.restart_ramp(std::time::Instant::now());
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
