//! Backend selection: one small trait, one file per algorithm.
//!
//! A selector sees a [`Pool`]: the snapshot's backends, the bit set of those that
//! may take a new request (`available`: healthy, circuit not open, mode active,
//! weight > 0) and the bit set this request must avoid (`excluded`: backends it
//! already tried). Selectors keep only rotation counters and caches; every
//! per-backend number they read (in-flight, EWMA, dynamic factor) lives in
//! [`crate::backend::BackendStats`], so rebuilding a selector loses nothing.

mod dynamic;
mod least_conn;
mod least_time;
mod rendezvous;
mod round_robin;

use std::time::{Duration, Instant};

pub use dynamic::{next_factor, DynamicInput, DynamicMemory, MAX_STEP};
pub use least_conn::LeastConn;
pub use least_time::LeastTime;
pub use rendezvous::{rendezvous_pick, IpHash};
pub use round_robin::SmoothWeighted;

use crate::backend::Backend;
use crate::config::Algorithm;

/// A set of backend indices (config has at most 64 backends).
pub type Mask = u64;

/// Is index `i` in `mask`?
#[inline]
pub fn has(mask: Mask, i: usize) -> bool {
    mask & (1u64 << i) != 0
}

/// What a selector chooses from.
pub struct Pool<'a> {
    /// Snapshot backends, in config order.
    pub backends: &'a [Backend],
    /// Backends that may take a new request.
    pub available: Mask,
    /// Backends this request must not use (already tried).
    pub excluded: Mask,
    /// Which weight to use ([`Backend::effective_weight`]).
    pub algorithm: Algorithm,
    /// `balancer.slow_start` (zero: off).
    pub slow_start: Duration,
    /// The request's time (slow start's ramp is read at it).
    pub now: Instant,
}

impl Pool<'_> {
    /// Backends that are available and not excluded.
    #[inline]
    pub fn candidates(&self) -> Mask {
        self.available & !self.excluded
    }

    /// The weight selection uses for backend `i`: its effective weight,
    /// ramped while it is in slow start (all weights scaled alike while slow
    /// start is on; hashing ignores it, so `ip_hash` keeps every client where
    /// it was).
    #[inline]
    pub fn weight(&self, i: usize) -> u32 {
        let w = self.backends[i].effective_weight(self.algorithm);
        if self.slow_start.is_zero() || self.algorithm == Algorithm::IpHash {
            return w;
        }
        let ratio = self.backends[i]
            .stats
            .slow_start_ratio(self.slow_start, self.now);
        crate::slow_start::ramped(w, ratio)
    }
}

/// A selection algorithm.
pub trait Balancer: Send + Sync {
    /// Chooses a candidate of `pool`; `key` is the client IP's bytes (hashing
    /// algorithms use it), `now` the request time. `None`: no candidate.
    fn pick(&self, pool: &Pool<'_>, key: &[u8], now: Instant) -> Option<usize>;
}

/// A fresh selector for `algorithm`.
pub fn for_algorithm(algorithm: Algorithm) -> Box<dyn Balancer> {
    match algorithm {
        // `dynamic` is smooth WRR; the pool hands it effective weights.
        Algorithm::RoundRobin | Algorithm::Dynamic => Box::new(SmoothWeighted::default()),
        Algorithm::LeastConn => Box::new(LeastConn::default()),
        Algorithm::IpHash => Box::new(IpHash),
        Algorithm::LeastTime => Box::new(LeastTime::default()),
    }
}

/// Walks the candidates starting at `start` (rotating), so ties among equal
/// costs rotate instead of always favouring the first backend.
pub(crate) fn rotated(pool: &Pool<'_>, start: usize) -> impl Iterator<Item = usize> {
    let n = pool.backends.len();
    let cand = pool.candidates();
    (0..n)
        .map(move |k| (start + k) % n)
        .filter(move |&i| has(cand, i))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for pure selector tests.
    use std::sync::Arc;

    use super::*;
    use crate::backend::{BackendStats, Mode};

    /// Backends named b0, b1, ... with the given weights, all reachable.
    pub fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend {
                addr: Some(format!("127.0.0.1:{}", 3000 + i).parse().unwrap()),
                configured_addr: format!("127.0.0.1:{}", 3000 + i),
                weight: w,
                config_weight: w,
                mode: Mode::Active,
                max_in_flight: 0,
                group: None,
                stats: Arc::new(BackendStats::new(&format!("b{i}"))),
                pool: false,
                h2c: false,
            })
            .collect()
    }

    /// A pool over `backends` where every backend with weight > 0 is available.
    pub fn pool(backends: &[Backend], algorithm: Algorithm) -> Pool<'_> {
        let cb = crate::config::CircuitConfig {
            failures: 5,
            open_for: std::time::Duration::from_secs(5),
            max_open_for: std::time::Duration::from_secs(60),
            half_open_requests: 1,
        };
        let now = Instant::now();
        let available = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.schedulable(&cb, now))
            .fold(0, |m, (i, _)| m | (1 << i));
        Pool {
            backends,
            available,
            excluded: 0,
            algorithm,
            slow_start: std::time::Duration::ZERO,
            now,
        }
    }
}
