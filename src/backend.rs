//! One backend: its operator [`Mode`], the [`BackendStats`] that outlive every
//! snapshot swap, the RAII [`InFlight`] guard (a request's slot, within the
//! backend's `max_in_flight`), and [`Backend`] as a snapshot sees it. A leaf:
//! `state` and `balancer` both build on it, neither on the other's account.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::circuit::Circuit;
use crate::config::{Algorithm, CircuitConfig};
use crate::ewma::PeakEwma;
use crate::metrics::RequestMetrics;
use crate::queue::Queue;

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
    /// When its slow start began (`clock::ms`): joining, or coming back.
    pub ramp_from_ms: AtomicU64,
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
            // Joining (start, reload, DNS, the pool) begins a slow start.
            ramp_from_ms: AtomicU64::new(crate::clock::ms(Instant::now())),
        }
    }

    /// Starts this backend's slow start over at `now` (it came back).
    pub fn restart_ramp(&self, now: Instant) {
        self.ramp_from_ms
            .store(crate::clock::ms(now), Ordering::Relaxed);
    }

    /// Its share under slow start at `now` for `window`, in thousandths
    /// (100..=1000; 1000 when off or done).
    pub fn slow_start_ratio(&self, window: Duration, now: Instant) -> u32 {
        if window.is_zero() {
            return 1000;
        }
        let since = self.ramp_from_ms.load(Ordering::Relaxed);
        let elapsed = crate::clock::ms(now).saturating_sub(since);
        crate::slow_start::ratio_milli(Duration::from_millis(elapsed), window)
    }

    /// Current in-flight count.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// RAII in-flight accounting: increments on creation, decrements on drop, so the
/// count stays right on success, error, retry, client disconnect and panic. For
/// a backend with a `max_in_flight` the slot is taken by compare-and-swap, so
/// the limit holds however many requests race for the last slot, and dropping
/// the guard wakes the oldest queued request ([`Queue::kick`]).
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<BackendStats>,
    /// Set for capacity-limited backends only: whom a freed slot concerns.
    queue: Option<Arc<Queue>>,
}

impl InFlight {
    /// Counts one more request in flight on `stats` (no limit).
    pub fn start(stats: &Arc<BackendStats>) -> InFlight {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: stats.clone(),
            queue: None,
        }
    }

    /// Takes one of `backend`'s slots if it has one free (always, without a
    /// `max_in_flight`); `None` when it is at capacity.
    pub fn acquire(backend: &Backend, queue: &Arc<Queue>) -> Option<InFlight> {
        let max = i64::from(backend.max_in_flight);
        if max == 0 {
            return Some(InFlight::start(&backend.stats));
        }
        let counter = &backend.stats.in_flight;
        let mut cur = counter.load(Ordering::Relaxed);
        while cur < max {
            // SeqCst pairs with the queue's `waiting` counter (see `Drop`).
            match counter.compare_exchange_weak(cur, cur + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(InFlight {
                        stats: backend.stats.clone(),
                        queue: Some(queue.clone()),
                    })
                }
                Err(now) => cur = now,
            }
        }
        None
    }

    /// The backend this guard counts against.
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The decrement is ordered before the queue's `waiting` load: either
        // this release sees a waiter and wakes it, or a request joining the
        // queue afterwards sees the free slot when its join re-checks.
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            q.kick();
        }
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
    /// Most requests in flight at once (0 = unlimited), from the config.
    pub max_in_flight: u32,
    /// The `resolve = "all"` group this backend is a member of.
    pub group: Option<Arc<str>>,
    /// Counters that survive snapshot swaps.
    pub stats: Arc<BackendStats>,
    /// Started and owned by the `[pool]`: not in the file, so kept as they are
    /// by reloads and re-layouts, and never written to the state file.
    pub pool: bool,
    /// `protocol = "h2c"`: requests go as HTTP/2 streams (Pingora path).
    pub h2c: bool,
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

    /// Below its `max_in_flight` (always, without one)? A snapshot of a
    /// moving count: [`InFlight::acquire`] is what enforces the limit.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.max_in_flight == 0 || self.stats.in_flight() < i64::from(self.max_in_flight)
    }

    fn reachable(&self, cb: &CircuitConfig, now: Instant) -> bool {
        self.addr.is_some()
            && self.stats.healthy.load(Ordering::Relaxed)
            && !self.stats.circuit.blocks(cb, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(max_in_flight: u32) -> Backend {
        Backend {
            addr: Some("127.0.0.1:1".parse().unwrap()),
            configured_addr: "127.0.0.1:1".into(),
            weight: 1,
            config_weight: 1,
            mode: Mode::Active,
            max_in_flight,
            group: None,
            stats: Arc::new(BackendStats::new("a")),
            pool: false,
            h2c: false,
        }
    }

    #[test]
    fn slots_never_exceed_max_in_flight_under_races() {
        // 8 threads hammer one backend with max_in_flight = 3. A count read
        // while holding a slot includes this thread's slot and only others
        // held at that moment, so it must never exceed 3.
        let b = Arc::new(backend(3));
        let queue = Arc::new(Queue::default());
        let peak = Arc::new(AtomicI64::new(0));
        let won = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, queue, peak, won) = (b.clone(), queue.clone(), peak.clone(), won.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(slot) = InFlight::acquire(&b, &queue) {
                            peak.fetch_max(b.stats.in_flight(), Ordering::Relaxed);
                            won.fetch_add(1, Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.stats.in_flight(), 0);
        assert!(peak.load(Ordering::Relaxed) <= 3, "peak {peak:?}");
        assert!(won.load(Ordering::Relaxed) > 0);
        assert!(b.has_room());
    }

    #[test]
    fn unlimited_backends_always_have_room() {
        let b = backend(0);
        let queue = Arc::new(Queue::default());
        let slots: Vec<_> = (0..100)
            .map(|_| InFlight::acquire(&b, &queue).unwrap())
            .collect();
        assert!(b.has_room());
        assert_eq!(b.stats.in_flight(), 100);
        drop(slots);
        assert_eq!(b.stats.in_flight(), 0);
    }
}
