//! Reweighing, the background task of the `dynamic` algorithm (its pure rule
//! is `balancer::dynamic`): every `dynamic.interval`, read each backend's
//! counters, turn the deltas into [`DynamicInput`]s and store the new
//! performance factors ([`next_factor`]). It runs whatever the current algorithm,
//! so switching to `dynamic` starts from warm factors, not a cold start.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balancer::{next_factor, DynamicInput};
use crate::state::State;

/// Counter readings at the previous tick: (requests, errors, latency sum µs).
type Readings = HashMap<Arc<str>, (u64, u64, u64)>;

/// The recompute task.
pub struct DynamicWeights {
    state: Arc<State>,
}

impl DynamicWeights {
    /// A task over `state`.
    pub fn new(state: Arc<State>) -> Self {
        DynamicWeights { state }
    }

    /// One recompute step; `prev` carries readings between ticks.
    pub fn tick(&self, prev: &mut Readings) {
        let snap = self.state.load();
        let inputs: Vec<DynamicInput> = snap
            .backends
            .iter()
            .map(|b| {
                let s = &b.stats;
                let now = (
                    s.requests_total.load(Ordering::Relaxed),
                    s.errors_total.load(Ordering::Relaxed),
                    s.latency_sum_us.load(Ordering::Relaxed),
                );
                let before = prev.insert(s.name.clone(), now).unwrap_or(now);
                let requests = now.0.saturating_sub(before.0);
                let errors = now.1.saturating_sub(before.1);
                // The latency sum covers successful attempts only.
                let answered = requests.saturating_sub(errors);
                let latency_us = now.2.saturating_sub(before.2);
                DynamicInput {
                    requests,
                    errors,
                    mean_latency: if answered > 0 {
                        latency_us as f64 / 1e6 / answered as f64
                    } else {
                        0.0
                    },
                    factor: s.factor_milli.load(Ordering::Relaxed),
                }
            })
            .collect();
        for (b, f) in snap.backends.iter().zip(next_factor(&inputs)) {
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
        loop {
            let interval = self.state.load().config.dynamic_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.tick(&mut prev),
                _ = shutdown.changed() => return,
            }
        }
    }
}
