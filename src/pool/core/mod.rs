//! The pool's decisions, pure: members and their states, what to start, drain
//! and stop, when to grow and shrink. No I/O and no clock: the driver feeds in
//! events (a start returned, a probe answered, a member exited) and samples of
//! each member's load, passes `now`, and carries out the [`Action`]s that
//! [`Core::tick`] returns.
//!
//! Invariants, each kept by one rule in `tick`:
//! - *keepers* (members starting or ready and not retiring) equal the target
//!   size: fewer → start one, more → the surplus drains;
//! - a member retires (age, memory, rollout, unhealthy) by losing its keeper
//!   status: its replacement starts through the first rule, and it drains only
//!   once healthy ready keepers reach the target again, so planned recycling
//!   never takes the ready count below the target (and so below `min_size`);
//! - at most one planned replacement (age, memory, rollout) at a time, so a
//!   pool started at once does not recycle all at once;
//! - a draining member stops when its in-flight requests reach 0, or after
//!   `drain_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::PoolConfig;
use crate::health::Tracker;

pub use super::view::{MemberState, Reason, RolloutState};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start member `name` from the spec of `generation`.
    Start {
        /// Member name.
        name: Arc<str>,
        /// Which spec (command or image) to start it from.
        generation: u32,
    },
    /// Add the member to the routing snapshot (it passed its probes).
    Serve {
        /// Member name.
        name: Arc<str>,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// No new requests for it (mode drain); in-flight ones finish.
    Drain {
        /// Member name.
        name: Arc<str>,
    },
    /// Remove it from the snapshot and stop it (SIGTERM, or container stop).
    Stop {
        /// Member name.
        name: Arc<str>,
    },
}

/// The latest load of a member in the snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Requests in flight to it.
    pub in_flight: i64,
    /// Completed requests (a change means it was used).
    pub requests_total: u64,
    /// The health checker's verdict.
    pub healthy: bool,
}

/// One member as the core sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// `<pool>-<n>`.
    pub name: Arc<str>,
    /// Spec it runs.
    pub generation: u32,
    /// Lifecycle state.
    pub state: MemberState,
    /// Known once its start returned.
    pub addr: Option<SocketAddr>,
    /// When its start was asked for.
    pub started: Instant,
    /// Set when it should go once a replacement is ready (or at once for
    /// unhealthy members and surplus).
    pub retiring: Option<Reason>,
    /// When draining began.
    pub draining_since: Option<Instant>,
    /// Last time it had a request in flight or completed one.
    pub last_used: Instant,
    /// Latest sample.
    pub sample: Sample,
    /// Latest resident memory, bytes.
    pub memory: Option<u64>,
    probes: Tracker,
}

impl Member {
    /// A member whose start was just asked for (or that was adopted).
    fn starting(name: Arc<str>, generation: u32, now: Instant) -> Member {
        Member {
            name,
            generation,
            state: MemberState::Starting,
            addr: None,
            started: now,
            retiring: None,
            draining_since: None,
            last_used: now,
            sample: Sample::default(),
            memory: None,
            probes: Tracker::new(false),
        }
    }

    fn keeper(&self) -> bool {
        self.retiring.is_none() && matches!(self.state, MemberState::Starting | MemberState::Ready)
    }

    fn ready_keeper(&self) -> bool {
        self.retiring.is_none() && self.state == MemberState::Ready && self.sample.healthy
    }
}

/// Counters behind `GET /admin/pool` and `lb_pool_*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Members that started and became healthy.
    pub starts_ok: u64,
    /// Starts that failed (error, exit or no health within `start_timeout`).
    pub starts_failed: u64,
    /// Recycles by reason: age, memory, exited, unhealthy.
    pub recycles: [u64; 4],
    /// Size increases (load or operator).
    pub scaled_up: u64,
    /// Size decreases (idle or operator).
    pub scaled_down: u64,
}

/// A rolling update's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The generation being rolled out.
    pub generation: u32,
    /// The generation it replaces (restored if it fails).
    pub previous: u32,
    /// Running, done or failed.
    pub state: RolloutState,
    /// Members replaced so far.
    pub done: u32,
    /// Members to replace.
    pub total: u32,
}

/// Why an operator request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// `PUT /admin/pool/size` outside `min_size..=max_size`.
    #[error("size {size} is out of range {min}..={max} (pool.min_size..=pool.max_size)")]
    Size {
        /// Asked for.
        size: u32,
        /// `min_size`.
        min: u32,
        /// `max_size`.
        max: u32,
    },
    /// A rollout body for the other provider (`image` for process, ...).
    #[error("{0}")]
    Spec(String),
    /// A rollout is already under way.
    #[error("a rollout is already running ({done}/{total} done)")]
    RolloutRunning {
        /// Progress of the running one.
        done: u32,
        /// Its total.
        total: u32,
    },
}

/// The pool's state machine.
#[derive(Debug)]
pub struct Core {
    cfg: PoolConfig,
    /// Keepers wanted.
    pub target: u32,
    /// Spec new members start from.
    pub generation: u32,
    /// Members in start order.
    pub members: Vec<Member>,
    /// Lifetime counters.
    pub counters: Counters,
    /// The latest rollout, if any.
    pub rollout: Option<Rollout>,
    next_number: u64,
    busy_since: Option<Instant>,
    failures_in_a_row: u32,
    no_start_before: Option<Instant>,
    /// Consecutive probe passes that make a starting member ready.
    rise: u32,
}

/// The `<n>` of member `<pool>-<n>`, as [`Core`] names members.
pub fn member_number(pool: &str, name: &str) -> Option<u64> {
    name.strip_prefix(pool)?.strip_prefix('-')?.parse().ok()
}

/// Longest pause between start attempts after failures in a row.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Core {
    /// A pool with no member yet; the first `tick` starts `size` of them.
    /// `rise`: probe passes needed to call a starting member ready.
    pub fn new(cfg: PoolConfig, rise: u32) -> Core {
        Core {
            target: cfg.size,
            cfg,
            generation: 0,
            members: Vec::new(),
            counters: Counters::default(),
            rollout: None,
            next_number: 1,
            busy_since: None,
            failures_in_a_row: 0,
            no_start_before: None,
            rise: rise.max(1),
        }
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    fn member_mut(&mut self, name: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &*m.name == name)
    }

    /// Members whose state is `state`.
    pub fn count(&self, state: MemberState) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    /// Healthy ready members that are not retiring.
    pub fn ready_keepers(&self) -> usize {
        self.members.iter().filter(|m| m.ready_keeper()).count()
    }

    /// Takes over `name`, already running at `addr` from `generation`'s
    /// spec (an upgrade: the old lb process started it; members are adopted
    /// in start order). It is probed as a
    /// starting member is, and serves once ready; new members are numbered
    /// after it. Several adopted raise the target to their number (what the
    /// old process had scaled to), within `min_size..=max_size`.
    pub fn adopt(&mut self, name: &str, addr: SocketAddr, generation: u32, now: Instant) {
        if self.members.iter().any(|m| &*m.name == name) {
            return;
        }
        if let Some(n) = member_number(&self.cfg.name, name) {
            self.next_number = self.next_number.max(n + 1);
        }
        // Adopted oldest first: the newest member's spec is what the old
        // process started last (a rollout's, if it ran one).
        self.generation = generation;
        let mut member = Member::starting(name.into(), generation, now);
        member.addr = Some(addr);
        self.members.push(member);
        let adopted = self.members.len() as u32;
        self.target = self
            .target
            .max(adopted)
            .clamp(self.cfg.min_size, self.cfg.max_size);
        tracing::info!(member = %name, %addr, generation, "pool: member adopted from the old lb process");
    }

    /// The provider started `name`, listening at `addr` (probes begin).
    pub fn started(&mut self, name: &str, addr: SocketAddr) {
        if let Some(m) = self.member_mut(name) {
            m.addr = Some(addr);
        }
    }

    /// One readiness probe of a starting member answered (`ok`) or not.
    pub fn probed(&mut self, name: &str, ok: bool, now: Instant) -> Option<Action> {
        let rise = self.rise;
        let m = self.member_mut(name)?;
        if m.state != MemberState::Starting {
            return None;
        }
        m.probes.observe(ok, rise, 1)?;
        m.state = MemberState::Ready;
        m.last_used = now;
        // Healthy by its probes until the health checker says otherwise.
        m.sample.healthy = true;
        let (name, addr, gen) = (m.name.clone(), m.addr?, m.generation);
        let after_ms = now.saturating_duration_since(m.started).as_millis() as u64;
        tracing::info!(member = %name, %addr, generation = gen, after_ms, "pool: member ready");
        self.counters.starts_ok += 1;
        self.failures_in_a_row = 0;
        self.no_start_before = None;
        Some(Action::Serve { name, addr })
    }

    /// Starting `name` failed (the provider's error, or it exited or timed
    /// out before turning healthy). Returns the stop that cleans it up.
    pub fn start_failed(&mut self, name: &str, why: &str, now: Instant) -> Option<Action> {
        let i = self.members.iter().position(|m| &*m.name == name)?;
        if self.members[i].state != MemberState::Starting {
            return None;
        }
        let m = &mut self.members[i];
        m.state = MemberState::Stopping;
        let (name, gen) = (m.name.clone(), m.generation);
        tracing::warn!(member = %name, generation = gen, reason = why, "pool: start failed");
        self.counters.starts_failed += 1;
        self.failures_in_a_row += 1;
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << self.failures_in_a_row.min(8))
            .min(MAX_BACKOFF);
        self.no_start_before = Some(now + backoff);
        self.fail_rollout_of(gen, why);
        Some(Action::Stop { name })
    }

    fn fail_rollout_of(&mut self, generation: u32, why: &str) {
        let Some(r) = self.rollout.as_mut() else {
            return;
        };
        if r.state != RolloutState::Running || r.generation != generation {
            return;
        }
        r.state = RolloutState::Failed;
        self.generation = r.previous;
        tracing::warn!(
            generation,
            done = r.done,
            total = r.total,
            reason = why,
            "pool: rollout failed; old members keep serving"
        );
        // Members waiting for a new-generation replacement stay.
        for m in &mut self.members {
            if m.retiring == Some(Reason::Rollout) && m.state == MemberState::Ready {
                m.retiring = None;
            }
        }
    }

    /// `name` exited by itself.
    pub fn exited(&mut self, name: &str, why: &str, now: Instant) -> Option<Action> {
        let m = self.members.iter().find(|m| &*m.name == name)?;
        match m.state {
            MemberState::Starting => self.start_failed(name, &format!("exited: {why}"), now),
            MemberState::Ready | MemberState::Draining => {
                let was_ready = m.state == MemberState::Ready;
                let m = self.member_mut(name)?;
                m.state = MemberState::Stopping;
                let name = m.name.clone();
                if was_ready {
                    tracing::warn!(member = %name, reason = why, "pool: member exited; replacing it");
                    self.counters.recycles[Reason::Exited as usize] += 1;
                }
                Some(Action::Stop { name })
            }
            MemberState::Stopping => None,
        }
    }

    /// The provider finished stopping `name`: forget it.
    pub fn stopped(&mut self, name: &str) {
        if let Some(i) = self.members.iter().position(|m| &*m.name == name) {
            let m = self.members.remove(i);
            tracing::info!(member = %m.name, "pool: member stopped");
        }
    }

    /// Sets the latest resident memory of `name`.
    pub fn set_memory(&mut self, name: &str, bytes: Option<u64>) {
        if let Some(m) = self.member_mut(name) {
            m.memory = bytes;
        }
    }

    /// `PUT /admin/pool/size`.
    pub fn set_size(&mut self, size: u32) -> Result<(), PoolError> {
        let (min, max) = (self.cfg.min_size, self.cfg.max_size);
        if !(min..=max).contains(&size) {
            return Err(PoolError::Size { size, min, max });
        }
        if size != self.target {
            let old = std::mem::replace(&mut self.target, size);
            if size > old {
                self.counters.scaled_up += 1;
            } else {
                self.counters.scaled_down += 1;
            }
            tracing::info!(from = old, to = size, by = "operator", "pool: size changed");
        }
        Ok(())
    }

    /// `POST /admin/pool/rollout`: members move to `generation` one at a time.
    pub fn start_rollout(&mut self, generation: u32) -> Result<(), PoolError> {
        if let Some(r) = &self.rollout {
            if r.state == RolloutState::Running {
                return Err(PoolError::RolloutRunning {
                    done: r.done,
                    total: r.total,
                });
            }
        }
        self.begin_rollout(generation, "operator");
        Ok(())
    }
}

mod reconfigure;
mod tick;

#[cfg(test)]
mod tests;
