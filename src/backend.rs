//! One backend: its operator [`Mode`], the [`BackendStats`] that outlive every
//! snapshot swap, the RAII [`InFlight`] guard, and [`Backend`] as a snapshot
//! sees it. A leaf: `state` and `balancer` both build on it, neither on the
//! other's account.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::circuit::Circuit;
use crate::config::{Algorithm, CircuitConfig};
use crate::ewma::PeakEwma;
use crate::metrics::RequestMetrics;

/// Operator mode of a backend (SPEC "Admin API").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Receives new and sticky requests.
    Active,
    /// Only sticky requests; no new clients.
    Drain,
    /// No requests at all.
    Maintenance,
}

impl Mode {
    /// The admin API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Drain => "drain",
            Mode::Maintenance => "maintenance",
        }
    }
}

/// Per-backend counters and estimates; atomics only, shared across snapshots.
#[derive(Debug)]
pub struct BackendStats {
    /// The backend's configured name.
    pub name: Arc<str>,
    /// The name as a response header value, built once (`backend_header`).
    pub name_header: http::HeaderValue,
    /// Opaque value of the sticky cookie pinning to this backend (hash of the name,
    /// so it survives restarts and reloads and reveals no address).
    pub sticky_id: String,
    /// Seed of this backend's score in rendezvous hashing (from the name).
    pub hash_seed: u64,
    /// Requests currently being proxied to it (signed so a bug shows as < 0).
    pub in_flight: AtomicI64,
    /// Completed attempts.
    pub requests_total: AtomicU64,
    /// Attempts that failed (connect error, timeout, reset, 5xx).
    pub errors_total: AtomicU64,
    /// Sum of upstream response times of successful attempts, µs (for `dynamic`).
    pub latency_sum_us: AtomicU64,
    /// Peak-EWMA of upstream response time (failures count as slow).
    pub ewma: PeakEwma,
    /// `dynamic` performance factor in thousandths (1000 = full operator weight).
    pub factor_milli: AtomicU32,
    /// Active health state (starts up; the health checker flips it).
    pub healthy: AtomicBool,
    /// Health probes that passed / failed.
    pub health_ok: AtomicU64,
    /// See `health_ok`.
    pub health_failed: AtomicU64,
    /// Retries this backend caused (its failure sent the request elsewhere).
    pub retries_total: AtomicU64,
    /// The circuit breaker.
    pub circuit: Circuit,
    /// Status classes, upstream errors, duration histogram.
    pub metrics: RequestMetrics,
}

impl BackendStats {
    /// Fresh stats for a backend called `name`.
    pub fn new(name: &str) -> Self {
        let h = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        BackendStats {
            name: name.into(),
            // Names are validated to [A-Za-z0-9_.-], always a valid value.
            name_header: http::HeaderValue::from_str(name)
                .unwrap_or(http::HeaderValue::from_static("-")),
            sticky_id: format!("{h:016x}"),
            hash_seed: h,
            in_flight: AtomicI64::new(0),
            requests_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            ewma: PeakEwma::default(),
            factor_milli: AtomicU32::new(1000),
            healthy: AtomicBool::new(true),
            health_ok: AtomicU64::new(0),
            health_failed: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            circuit: Circuit::default(),
            metrics: RequestMetrics::default(),
        }
    }

    /// Current in-flight count.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// RAII in-flight accounting: increments on creation, decrements on drop, so the
/// count stays right on success, error, retry, client disconnect and panic.
#[derive(Debug)]
pub struct InFlight(Arc<BackendStats>);

impl InFlight {
    /// Counts one more request in flight on `stats`.
    pub fn start(stats: &Arc<BackendStats>) -> InFlight {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(stats.clone())
    }

    /// The backend this guard counts against.
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend as the current snapshot sees it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Resolved address traffic goes to (`None` until its name first resolves).
    pub addr: Option<SocketAddr>,
    /// `host:port` as configured.
    pub configured_addr: String,
    /// Operator weight 0..=1000.
    pub weight: u32,
    /// The weight the config file gave (a reload that leaves it unchanged keeps
    /// the operator's `weight`).
    pub config_weight: u32,
    /// Operator mode.
    pub mode: Mode,
    /// Counters that survive snapshot swaps.
    pub stats: Arc<BackendStats>,
}

impl Backend {
    /// Weight the balancer uses: the operator weight, scaled by the measured
    /// performance factor under `dynamic` (never below 1 while the weight is > 0).
    pub fn effective_weight(&self, algorithm: Algorithm) -> u32 {
        if algorithm != Algorithm::Dynamic || self.weight == 0 {
            return self.weight;
        }
        let f = self.stats.factor_milli.load(Ordering::Relaxed) as u64;
        ((self.weight as u64 * f + 500) / 1000).max(1) as u32
    }

    /// May receive requests that are not pinned to it? (Eligible in SPEC's words:
    /// health up, circuit not open, mode active, weight above 0.)
    pub fn schedulable(&self, cb: &CircuitConfig, now: Instant) -> bool {
        self.mode == Mode::Active && self.weight > 0 && self.reachable(cb, now)
    }

    /// May receive requests pinned to it by stickiness (active or draining)?
    pub fn sticky_ok(&self, cb: &CircuitConfig, now: Instant) -> bool {
        self.mode != Mode::Maintenance && self.reachable(cb, now)
    }

    fn reachable(&self, cb: &CircuitConfig, now: Instant) -> bool {
        self.addr.is_some()
            && self.stats.healthy.load(Ordering::Relaxed)
            && !self.stats.circuit.blocks(cb, now)
    }
}
