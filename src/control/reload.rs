//! `POST /admin/reload` and SIGHUP: re-read the config file, validate it whole,
//! and swap it in keeping every remaining backend's state; then hand its
//! `[pool]` to the running pool ([`crate::pool::reloaded`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Control, ControlError};
use crate::config::{Config, Resolve};
use crate::discovery;
use crate::state::{self, State, UpdateError};

impl Control {
    /// Re-reads the config file; applies it only if valid. Backends that remain
    /// keep their state (stats, health, circuit, operator weight unless the file
    /// changed it, mode); new ones join, removed ones leave (their in-flight
    /// requests finish on the old snapshot they hold). Returns once the state
    /// file (if any) is written; a failed write is the writer's to log (SIGHUP
    /// has nobody to answer).
    pub async fn reload(&self, peer: &str) -> Result<(), ControlError> {
        self.reload_if(peer, None).await?;
        let _ = self.persisted().await;
        Ok(())
    }

    /// [`Control::reload`] if the state's version still equals `if_match`
    /// (`POST /admin/reload` with `If-Match`); checked before the file is read
    /// and again, atomically, when the new snapshot is installed. Asks for
    /// the state file write without waiting: the caller awaits
    /// [`Control::persisted`] and answers its outcome.
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
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
}
