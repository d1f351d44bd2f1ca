//! The state file (`admin.state_file`): what it holds, applying it at start,
//! and writing it (atomically, on the writer thread) after every change. A
//! change that could not be saved stays applied in memory; the admin API
//! answers it `507` ([`StateFileError`]) and `lb_state_file_errors_total`
//! counts the failed write.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::writer::Outcome;
use super::{parse_mode, Control};
use crate::config::{Algorithm, MAX_WEIGHT};
use crate::state::State;

/// Failed state file writes in this process (`lb_state_file_errors_total`).
/// Process-wide, as `lb_log_dropped_total` is: lb has one state file.
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Failed state file writes so far (`lb_state_file_errors_total`).
pub fn state_file_errors() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

/// A change applied in memory that `admin.state_file` does not hold: the
/// write failed (disk full, read-only, a directory gone). Shown as
/// `state file: <reason>`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state file: {0}")]
pub struct StateFileError(pub Arc<str>);

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

impl Control {
    /// Asks the writer thread to save the operator state to
    /// `admin.state_file`, if configured; returns at once. A failed write is
    /// logged; in-memory state is never lost or rolled back.
    pub fn persist(&self) {
        if self.state.load().config.admin.state_file.is_some() {
            self.writer.request();
        }
    }

    /// Waits (without blocking a thread; at most 5 s) until every write
    /// requested so far is done, so an admin `200` means "survives a restart";
    /// `Err` when the write that would have saved the latest change failed
    /// (the change stays applied in memory). A write still running after 5 s
    /// counts as done (logged): the disk is slow, not failing.
    pub async fn persisted(&self) -> Result<(), StateFileError> {
        settle(self.writer.wait(self.pending()).await)
    }

    /// [`Control::persisted`] for synchronous callers (tests, shutdown).
    pub fn persisted_blocking(&self) -> Result<(), StateFileError> {
        settle(self.writer.wait_blocking(self.pending()))
    }

    fn pending(&self) -> u64 {
        // Tickets are handed out in order; the latest is the last one requested.
        self.writer.request_count()
    }
}

fn settle(outcome: Outcome) -> Result<(), StateFileError> {
    match outcome {
        Outcome::Saved => Ok(()),
        Outcome::Failed(why) => Err(StateFileError(why)),
        Outcome::Pending => {
            tracing::warn!("state file write still pending after 5 s; answering anyway");
            Ok(())
        }
    }
}

impl Control {
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
/// `admin.state_file` (the writer thread's job); `Err(reason)` if it could
/// not. `failing` is set while writes fail, so an unwritable file warns once,
/// not per change; every failure is counted.
pub(super) fn write_state_file(state: &State, failing: &AtomicBool) -> Result<(), String> {
    let snap = state.load_full();
    let Some(path) = snap.config.admin.state_file.clone() else {
        return Ok(());
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
            Ok(())
        }
        Err(e) => {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot write state file; state kept in memory (warning once until it works)");
            }
            Err(format!("{}: {e}", path.display()))
        }
    }
}

/// Writes `value` as JSON to `path` via a temp file in the same directory,
/// fsync, then rename: readers see the old file or the new one, never half.
///
/// The temp file has a name of its own per write (pid and a random number),
/// is created exclusively (`O_CREAT | O_EXCL`: an existing file, FIFO or
/// symlink of that name — even a dangling one — is an error, never opened or
/// followed) with mode 0600, and is removed when any step fails. The rename
/// replaces `path` itself, never what a symlink there points to.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = temp_name(dir, path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f
        .write_all(&bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `<dir>/.<file name>.<pid>-<random>.tmp`: unique per write, so two writers
/// (two lb processes during an upgrade) never share a temp file.
fn temp_name(dir: &Path, path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("lb-state");
    let unique: u64 = rand::thread_rng().gen();
    dir.join(format!(".{name}.{}-{unique:016x}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::state::Mode;

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
        c.persisted_blocking().unwrap();
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
        c.persisted_blocking().unwrap();

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
        c.persisted_blocking().unwrap();
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
        c.persisted_blocking().unwrap();
        let same = control_with(dir.path(), "round_robin");
        same.load_state_file();
        assert_eq!(same.state.load().algorithm, Algorithm::LeastTime);
        // lb.toml now names another algorithm than when the state was saved:
        // the edit wins, as on reload.
        let edited = control_with(dir.path(), "ip_hash");
        edited.load_state_file();
        assert_eq!(edited.state.load().algorithm, Algorithm::IpHash);
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn a_failed_write_is_reported_counted_and_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // The state file's directory is a regular file: every write fails
        // with ENOTDIR, even as root.
        let blocked = dir.path().join("sub");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let text = format!(
            "[admin]\nstate_file = \"{}\"\n[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
            blocked.join("state.json").display()
        );
        let c = Control::new(
            Arc::new(State::new(Arc::new(Config::from_toml(&text).unwrap()))),
            None,
        );
        let before = state_file_errors();
        c.set_weights(serde_json::json!({"a": 5}).as_object().unwrap(), None, "t")
            .unwrap();
        let e = c.persisted_blocking().unwrap_err();
        assert!(e.to_string().starts_with("state file: "), "{e}");
        assert!(e.to_string().contains("ot a directory"), "{e}");
        assert_eq!(c.weights()["a"], 5, "the change stays applied");
        assert!(state_file_errors() > before);
        // The directory comes back: the next change saves both.
        std::fs::remove_file(&blocked).unwrap();
        std::fs::create_dir(&blocked).unwrap();
        c.set_mode("a", Mode::Drain, None, "t").unwrap();
        c.persisted_blocking().unwrap();
        let saved: SavedState =
            serde_json::from_slice(&std::fs::read(blocked.join("state.json")).unwrap()).unwrap();
        assert_eq!(
            (saved.weights["a"], saved.modes["a"].as_str()),
            (5, "drain")
        );
    }

    #[test]
    fn temp_files_are_private_unique_and_removed_on_failure() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, &serde_json::json!({"n": 1})).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Two names for two writes.
        assert_ne!(temp_name(dir.path(), &path), temp_name(dir.path(), &path));
        // The rename fails (a non-empty directory is in the way): no temp
        // file is left behind.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write_atomically(&blocked, &serde_json::json!({"n": 2})).is_err());
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[test]
    fn a_symlink_at_the_state_file_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(&path, &serde_json::json!({"n": 1})).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(leftovers(dir.path()).is_empty());
    }
}
