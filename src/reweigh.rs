//! Reweighing, the background task of the `dynamic` algorithm (its pure rule
//! is `balancer::dynamic`): every `dynamic.interval`, read each
//! backend's counters and in-flight count, turn the deltas into [`DynamicInput`]s
//! and store the new performance factors ([`next_factor`], which also updates
//! what it remembers per backend, kept here between ticks). It runs whatever the
//! current algorithm, so switching to `dynamic` starts from warm factors, not a
//! cold start.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balancer::{next_factor, DynamicInput, DynamicMemory};
use crate::state::State;

/// Per backend, from the previous tick: counter readings, the in-flight count,
/// and what the rule remembers.
#[derive(Clone, Copy, Default)]
pub struct Reading {
    requests: u64,
    errors: u64,
    latency_us: u64,
    in_flight: u64,
    memory: DynamicMemory,
}

/// Readings by backend name, carried between ticks.
pub type Readings = HashMap<Arc<str>, Reading>;

/// The recompute task.
pub struct DynamicWeights {
    state: Arc<State>,
}

impl DynamicWeights {
    /// A task over `state`.
    pub fn new(state: Arc<State>) -> Self {
        DynamicWeights { state }
    }

    /// One recompute step over the `interval` since the last; `prev` carries
    /// readings between ticks.
    pub fn tick(&self, prev: &mut Readings, interval: Duration) {
        let snap = self.state.load();
        let mut memory = Vec::with_capacity(snap.backends.len());
        let inputs: Vec<DynamicInput> = snap
            .backends
            .iter()
            .map(|b| {
                let s = &b.stats;
                let now = Reading {
                    requests: s.requests_total.load(Ordering::Relaxed),
                    errors: s.errors_total.load(Ordering::Relaxed),
                    latency_us: s.latency_sum_us.load(Ordering::Relaxed),
                    in_flight: s.in_flight().max(0) as u64,
                    memory: DynamicMemory::default(),
                };
                let before = prev.get(&s.name).copied().unwrap_or(now);
                memory.push(before.memory);
                prev.insert(s.name.clone(), now);
                let requests = now.requests.saturating_sub(before.requests);
                let errors = now.errors.saturating_sub(before.errors);
                // The latency sum covers successful attempts only.
                let answered = requests.saturating_sub(errors);
                let latency_us = now.latency_us.saturating_sub(before.latency_us);
                DynamicInput {
                    requests,
                    errors,
                    mean_latency: if answered > 0 {
                        latency_us as f64 / 1e6 / answered as f64
                    } else {
                        0.0
                    },
                    // Started = completed + what is in flight now and was not before.
                    arrived: (requests + now.in_flight).saturating_sub(before.in_flight),
                    in_flight: now.in_flight,
                    factor: s.factor_milli.load(Ordering::Relaxed),
                }
            })
            .collect();
        let factors = next_factor(&inputs, &mut memory, interval);
        for ((b, f), m) in snap.backends.iter().zip(factors).zip(memory) {
            if let Some(r) = prev.get_mut(&b.stats.name) {
                r.memory = m;
            }
            let old = b.stats.factor_milli.swap(f, Ordering::Relaxed);
            if old != f {
                tracing::debug!(backend = %b.stats.name, from = old, to = f, "dynamic factor");
            }
        }
        prev.retain(|name, _| snap.index_of(name).is_some());
    }
}

#[async_trait]
impl BackgroundService for DynamicWeights {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut prev = Readings::new();
        let mut last = Instant::now();
        loop {
            let interval = self.state.load().config.dynamic_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {
                    let now = Instant::now();
                    self.tick(&mut prev, now - last);
                    last = now;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
