//! A reload reaching the core: the new policy, and a rollout to a new
//! template that may replace one under way. Nothing here acts on members;
//! the next [`Core::tick`] converges to the new rules (starts what is
//! missing, drains the surplus, recycles by the new limits), keeping the
//! invariants listed in `core/mod.rs`.

use super::{Core, Rollout, RolloutState};
use crate::config::PoolConfig;

impl Core {
    /// Takes `cfg` (a reload's `[pool]`, restart-only keys already put back
    /// by [`crate::pool::reload::plan`]) as the policy from now on.
    ///
    /// The target size: the file's `size` if it changed; otherwise the
    /// current target (set by `PUT /admin/pool/size` or autoscaling), moved
    /// into the new `min_size..=max_size`.
    pub fn reconfigure(&mut self, cfg: PoolConfig) {
        let target = if cfg.size != self.cfg.size {
            cfg.size
        } else {
            self.target.clamp(cfg.min_size, cfg.max_size)
        };
        if target != self.target {
            let old = std::mem::replace(&mut self.target, target);
            if target > old {
                self.counters.scaled_up += 1;
            } else {
                self.counters.scaled_down += 1;
            }
            tracing::info!(from = old, to = target, by = "reload", "pool: size changed");
        }
        // A saturation spell measured against the old capacity starts over.
        if cfg.max_in_flight != self.cfg.max_in_flight {
            self.busy_since = None;
        }
        self.cfg = cfg;
    }

    /// A reload changed the member template: members move to `generation`
    /// one at a time. A rollout under way is superseded, as an edit to a
    /// Kubernetes Deployment supersedes its rollout: its new members are
    /// replaced in turn, and if this one fails, new starts fall back to the
    /// generation that was current when it began.
    pub fn supersede_rollout(&mut self, generation: u32) {
        if let Some(r) = self
            .rollout
            .as_ref()
            .filter(|r| r.state == RolloutState::Running)
        {
            tracing::info!(
                generation = r.generation,
                done = r.done,
                total = r.total,
                "pool: rollout superseded by a reload"
            );
        }
        self.rollout = None;
        self.begin_rollout(generation, "reload");
    }

    /// Starts the rollout to `generation` (none may be running).
    pub(super) fn begin_rollout(&mut self, generation: u32, by: &'static str) {
        let total = self.members.iter().filter(|m| m.keeper()).count() as u32;
        self.rollout = Some(Rollout {
            generation,
            previous: self.generation,
            state: RolloutState::Running,
            done: 0,
            total,
        });
        self.generation = generation;
        tracing::info!(generation, total, by, "pool: rollout started");
    }
}
