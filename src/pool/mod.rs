//! `[pool]`: backends that lb starts, watches, recycles, scales and stops
//! (SPEC "The pool"). Members are ordinary backends in the routing snapshot
//! (balancing, health, breakers, metrics, admin modes all apply), added once
//! their probes pass and removed after they drained.
//!
//! - [`core`]: the decisions, pure, time passed in; unit-tested next to it.
//! - [`driver`]: the loop that feeds the core events and samples and carries
//!   out its actions on the snapshot and the provider. It runs on its own
//!   thread (`lb-pool`) for lb's whole life: members are that thread's
//!   children, and `PR_SET_PDEATHSIG` is tied to the forking thread.
//! - [`provider`]: the trait; [`process`] and [`docker`] implement it
//!   (`own_container`: where lb runs, for the docker provider).
//! - [`view`]: `GET /admin/pool` and the metric labels.
//! - [`reload`]: what a reload's `[pool]` changes live, and what waits for a
//!   restart; [`Pool::reconfigure`] applies it.

pub mod core;
pub mod docker;
mod driver;
mod own_container;
pub mod process;
pub mod provider;
pub mod reload;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::{PoolConfig, PoolProvider};
use crate::state::State;

pub use self::core::{Core, Counters, PoolError};
pub use provider::{Adopted, Container, Provider, ProviderError, Spec};
pub use view::{MemberState, PoolView, Reason};

/// What [`Pool::shutdown_time`] allows beyond `drain_timeout`: the SIGKILL
/// after it and the driver's own bookkeeping.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

/// What `POST /admin/pool/rollout` changes: the command (process provider) or
/// the image (docker provider); the rest of the members' spec stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// `{"command": [...]}`.
    Command(Vec<String>),
    /// `{"image": "..."}`.
    Image(String),
}

impl Version {
    /// `"command"` or `"image"`, as the rollout body names it.
    pub fn key(&self) -> &'static str {
        match self {
            Version::Command(_) => "command",
            Version::Image(_) => "image",
        }
    }
}

/// Applies a reload's `[pool]` to the running pool, if any, and logs which
/// changed keys applied and which wait for the next restart. Adding or
/// removing `[pool]` waits too: the pool's thread and provider live as long
/// as lb.
pub fn reloaded(running: Option<&Pool>, file: Option<&PoolConfig>) {
    match (running, file) {
        (Some(pool), Some(file)) => {
            let plan = pool.reconfigure(file);
            if !plan.live.is_empty() {
                tracing::info!(keys = %plan.live.join(", "), "reload: [pool] changes applied");
            }
            if !plan.restart.is_empty() {
                tracing::warn!(keys = %plan.restart.join(", "),
                    "reload: these [pool] keys apply at the next restart; the rest of the reload applied");
            }
        }
        (Some(_), None) => tracing::warn!(
            "reload: [pool] removed from the file; the pool keeps running until the next restart"
        ),
        (None, Some(_)) => {
            tracing::warn!("reload: [pool] added to the file; it starts at the next restart")
        }
        (None, None) => {}
    }
}

/// The running pool: the shared handle the admin API, metrics and shutdown use.
pub struct Pool {
    core: Mutex<Core>,
    /// Spec of each generation (index = generation).
    specs: Mutex<Vec<Spec>>,
    /// Wakes the driver after an operator change.
    wake: tokio::sync::Notify,
    /// Set to ask the driver to stop every member.
    stop: tokio::sync::watch::Sender<bool>,
    /// Becomes true once the driver stopped every member.
    stopped: (Mutex<bool>, Condvar),
    /// An upgrade hands the members to the new process ([`Pool::hold`]).
    held: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// Starts the pool's thread: cleans up leftovers of a killed lb (or,
    /// when `adopt`, an upgrade's new process, takes over the members of
    /// the old one: [`Provider::adopt`]), starts members up to `size`, and
    /// returns once they are all ready (or after `start_timeout`, with a
    /// warning: lb serves what is ready and the pool keeps trying). Fails if
    /// the provider cannot be reached at all.
    pub fn start(state: Arc<State>, adopt: bool) -> Result<Arc<Pool>, ProviderError> {
        let snap = state.load_full();
        let cfg = snap
            .config
            .pool
            .clone()
            .ok_or_else(|| ProviderError("no [pool] configured".into()))?;
        let spec = Spec::of(&cfg);
        let (stop, _) = tokio::sync::watch::channel(false);
        let pool = Arc::new(Pool {
            core: Mutex::new(Core::new(cfg.clone(), snap.config.health.rise)),
            specs: Mutex::new(vec![spec]),
            wake: tokio::sync::Notify::new(),
            stop,
            stopped: (Mutex::new(false), Condvar::new()),
            held: AtomicBool::new(false),
        });
        let (boot_tx, boot_rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::Builder::new()
            .name("lb-pool".into())
            .spawn(move || driver::run_thread(p, state, cfg, adopt, boot_tx))
            .map_err(|e| ProviderError::new("cannot start the pool thread", e))?;
        let wait = pool.config().start_timeout + Duration::from_secs(1);
        match boot_rx.recv_timeout(wait) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => tracing::warn!(
                ready = lock(&pool.core).ready_keepers(),
                size = pool.config().size,
                "pool: not every member ready within pool.start_timeout; serving those that are"
            ),
        }
        Ok(pool)
    }

    fn config(&self) -> PoolConfig {
        lock(&self.core).config().clone()
    }

    /// `GET /admin/pool`.
    pub fn view(&self) -> PoolView {
        lock(&self.core).view(Instant::now())
    }

    /// Counters and member counts per state, for `/metrics`.
    pub fn metrics(&self) -> (Counters, [usize; 4]) {
        let core = lock(&self.core);
        (
            core.counters.clone(),
            MemberState::ALL.map(|s| core.count(s)),
        )
    }

    /// `PUT /admin/pool/size`: the new target, within `min_size..=max_size`.
    pub fn set_size(&self, size: u32) -> Result<PoolView, PoolError> {
        let mut core = lock(&self.core);
        core.set_size(size)?;
        let view = core.view(Instant::now());
        drop(core);
        self.wake.notify_one();
        Ok(view)
    }

    /// `POST /admin/pool/rollout`: replaces every member, one at a time, by
    /// one running `version` (the rest of the current spec unchanged).
    pub fn rollout(&self, version: Version) -> Result<PoolView, PoolError> {
        let mut specs = lock(&self.specs);
        let mut core = lock(&self.core);
        let current = &specs[core.generation as usize];
        let spec = match (version, current) {
            (Version::Command(argv), Spec::Command(_)) => Spec::Command(argv),
            (Version::Image(image), Spec::Container(c)) => {
                Spec::Container(Container { image, ..c.clone() })
            }
            (version, _) => {
                let (kind, want) = match current {
                    Spec::Command(_) => ("process", "command"),
                    Spec::Container(_) => ("docker", "image"),
                };
                return Err(PoolError::Spec(format!(
                    "the {kind} provider rolls out {{\"{want}\": ...}}, not {:?}",
                    version.key()
                )));
            }
        };
        let generation = specs.len() as u32;
        core.start_rollout(generation)?;
        specs.push(spec);
        let view = core.view(Instant::now());
        drop((core, specs));
        self.wake.notify_one();
        Ok(view)
    }

    /// A reload's `[pool]` (valid, and already in the routing snapshot):
    /// policy keys apply at once, a changed member template rolls members
    /// over (superseding a rollout under way), restart-only keys keep their
    /// running values. The plan says which key was which ([`reload`]).
    pub fn reconfigure(&self, file: &PoolConfig) -> reload::Plan {
        let mut specs = lock(&self.specs);
        let mut core = lock(&self.core);
        let plan = reload::plan(core.config(), file);
        let current = &specs[core.generation as usize];
        let next = reload::next_spec(current, core.config(), &plan.config);
        core.reconfigure(plan.config.clone());
        if let Some(spec) = next {
            let generation = specs.len() as u32;
            core.supersede_rollout(generation);
            specs.push(spec);
        }
        drop((core, specs));
        self.wake.notify_one();
        plan
    }

    /// Whether an upgrade's new process takes the members over (docker
    /// containers outlive lb; process members are lb's children).
    pub fn hands_over(&self) -> bool {
        matches!(self.config().provider, PoolProvider::Docker(_))
    }

    /// An upgrade under way (`true`), or failed (`false`). While held, the
    /// pool changes nothing (the new process adopts the members as they
    /// are) and [`Pool::shutdown`] leaves them running. No-op unless
    /// [`Pool::hands_over`].
    pub fn hold(&self, on: bool) {
        if self.hands_over() && self.held.swap(on, Ordering::AcqRel) != on {
            if on {
                tracing::info!("pool: held for the upgrade; members go to the new process");
            } else {
                tracing::info!("pool: no hand-over after all; the members stay this process's");
            }
            self.wake.notify_one();
        }
    }

    /// Stops every member (graceful stop, kill after `drain_timeout`) and
    /// waits for that, at most `timeout`. Called once lb's own requests have
    /// finished, right before it exits.
    pub fn shutdown(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        let (flag, cv) = &self.stopped;
        let done = lock(flag);
        let (done, _) = cv
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        if !*done {
            tracing::warn!("pool: members still stopping at exit; the kernel kills the rest");
        }
    }

    /// How long [`Pool::shutdown`] may take under the pool's current config
    /// (a reload's `drain_timeout` included).
    pub fn shutdown_time(&self) -> Duration {
        self.config().drain_timeout + SHUTDOWN_SLACK
    }
}
