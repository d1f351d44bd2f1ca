//! What the pool shows: `GET /admin/pool` (SPEC field for field), the states
//! and reasons `lb_pool_*` label with.

use std::time::Instant;

use serde::Serialize;

use super::core::Core;

/// A member's lifecycle state (the `state` of `GET /admin/pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Started, not yet healthy; not in the routing snapshot.
    Starting,
    /// Serving.
    Ready,
    /// No new requests; in-flight ones finish (up to `drain_timeout`).
    Draining,
    /// Out of the snapshot, being stopped.
    Stopping,
}

impl MemberState {
    /// Every state, for one-hot metrics.
    pub const ALL: [MemberState; 4] = [
        MemberState::Starting,
        MemberState::Ready,
        MemberState::Draining,
        MemberState::Stopping,
    ];

    /// The API and metric label name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Starting => "starting",
            MemberState::Ready => "ready",
            MemberState::Draining => "draining",
            MemberState::Stopping => "stopping",
        }
    }
}

/// Why a member is being replaced or removed. The first four are the
/// `reason` label of `lb_pool_recycles_total` (and index `Counters::recycles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Older than `max_age`.
    Age = 0,
    /// Above `max_memory`.
    Memory = 1,
    /// Exited by itself.
    Exited = 2,
    /// Marked down by `health.fall` failed checks.
    Unhealthy = 3,
    /// Replaced by a rolling update.
    Rollout = 4,
    /// Above the target size (idle, or the operator lowered it).
    ScaleDown = 5,
}

impl Reason {
    /// The recycle reasons, in `Counters::recycles` order.
    pub const RECYCLES: [Reason; 4] = [
        Reason::Age,
        Reason::Memory,
        Reason::Exited,
        Reason::Unhealthy,
    ];

    /// Log and label name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Memory => "memory",
            Reason::Exited => "exited",
            Reason::Unhealthy => "unhealthy",
            Reason::Rollout => "rollout",
            Reason::ScaleDown => "scale_down",
        }
    }
}

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Replacing members one at a time.
    Running,
    /// Every member runs the new version.
    Done,
    /// A new member never became healthy; the old ones keep serving.
    Failed,
}

/// One member of `GET /admin/pool`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// `<pool>-<n>`.
    pub name: String,
    /// `ip:port` once started, else "".
    pub addr: String,
    /// Lifecycle state.
    pub state: MemberState,
    /// Seconds since its start.
    pub age_s: u64,
    /// Resident memory at the last check (`null` before the first).
    pub memory_bytes: Option<u64>,
    /// Requests in flight.
    pub in_flight: i64,
    /// Requests completed.
    pub requests_total: u64,
}

/// `recycled_total` of `GET /admin/pool`.
#[derive(Debug, Clone, Serialize)]
pub struct Recycled {
    /// Members recycled for age.
    pub age: u64,
    /// Members recycled for memory.
    pub memory: u64,
}

/// `rollout` of `GET /admin/pool`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    /// running, done or failed.
    pub state: RolloutState,
    /// Members replaced.
    pub done: u32,
    /// Members to replace.
    pub total: u32,
}

/// The body of `GET /admin/pool`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// `process` or `docker`.
    pub provider: &'static str,
    /// The target size now.
    pub size: u32,
    /// `pool.min_size`.
    pub min_size: u32,
    /// `pool.max_size`.
    pub max_size: u32,
    /// Every member, in start order.
    pub members: Vec<MemberView>,
    /// Members started and healthy.
    pub started_total: u64,
    /// Members replaced because they exited or turned unhealthy.
    pub replaced_total: u64,
    /// Planned recycles.
    pub recycled_total: Recycled,
    /// Size increases.
    pub scaled_up_total: u64,
    /// Size decreases.
    pub scaled_down_total: u64,
    /// The latest rollout, if any.
    pub rollout: Option<RolloutView>,
}

impl Core {
    /// The admin view at `now`.
    pub fn view(&self, now: Instant) -> PoolView {
        let c = &self.counters;
        let cfg = self.config();
        PoolView {
            provider: cfg.provider.kind(),
            size: self.target,
            min_size: cfg.min_size,
            max_size: cfg.max_size,
            members: self
                .members
                .iter()
                .map(|m| MemberView {
                    name: m.name.to_string(),
                    addr: m.addr.map(|a| a.to_string()).unwrap_or_default(),
                    state: m.state,
                    age_s: now.saturating_duration_since(m.started).as_secs(),
                    memory_bytes: m.memory,
                    in_flight: m.sample.in_flight,
                    requests_total: m.sample.requests_total,
                })
                .collect(),
            started_total: c.starts_ok,
            replaced_total: c.recycles[Reason::Exited as usize]
                + c.recycles[Reason::Unhealthy as usize],
            recycled_total: Recycled {
                age: c.recycles[Reason::Age as usize],
                memory: c.recycles[Reason::Memory as usize],
            },
            scaled_up_total: c.scaled_up,
            scaled_down_total: c.scaled_down,
            rollout: self.rollout.as_ref().map(|r| RolloutView {
                state: r.state,
                done: r.done,
                total: r.total,
            }),
        }
    }
}
