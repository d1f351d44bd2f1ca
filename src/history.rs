//! Recent history for the status page (`GET /history`): per backend, one point
//! a second for the last five minutes (request rate, error rate, p99, effective
//! weight) and the same for lb's queue depth, aggregates over the last ten
//! seconds (rate, error rate, p50, p99),
//! when health and circuit last changed, and the last state changes of the
//! whole balancer (health, circuit, mode, weight, algorithm, backends joining
//! or leaving — e.g. pool members).
//!
//! A background task ([`Sampler`]) reads the counters the proxy already keeps
//! (atomics and each backend's duration histogram) once a second and diffs them
//! with the previous reading, so the proxy's hot path gains nothing: no lock,
//! no extra atomic. The rings have fixed sizes ([`POINTS`], [`EVENTS`]); the one
//! mutex is taken by the sampler and by admin requests only. Changes shorter
//! than a second (a flap up and down between two samples) are not seen.
//! Percentiles come from the histogram's buckets, interpolated within a bucket
//! exactly as Prometheus' `histogram_quantile` does, so the page and a Grafana
//! panel agree.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::metrics::DURATION_BUCKETS;
use crate::state::{Backend, Snapshot, State};

/// Points kept per backend: five minutes at one a second.
pub const POINTS: usize = 300;
/// Seconds the aggregates (rate, error rate, p50, p99) cover.
pub const WINDOW: usize = 10;
/// State changes kept.
pub const EVENTS: usize = 20;

const BUCKETS: usize = DURATION_BUCKETS.len() + 1; // + the +Inf bucket

/// Cumulative counters of one backend at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    at_ms: u64,
    answered: u64,
    errors: u64,
    /// Per bucket (not cumulative), the last one +Inf.
    buckets: [u64; BUCKETS],
}

impl Reading {
    fn of(b: &Backend, at_ms: u64) -> Reading {
        let m = &b.stats.metrics;
        let codes = m.codes();
        Reading {
            at_ms,
            answered: codes.iter().sum(),
            errors: codes[4],
            buckets: m.durations(),
        }
    }
}

/// What happened between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// Answers per second.
    pub rps: f64,
    /// Share of answers that were 5xx.
    pub error_rate: f64,
    /// Median request duration, ms (`None` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

fn between(old: &Reading, new: &Reading) -> Rates {
    let secs = new.at_ms.saturating_sub(old.at_ms) as f64 / 1e3;
    let n = new.answered.saturating_sub(old.answered);
    let mut counts = [0u64; BUCKETS];
    for (i, c) in counts.iter_mut().enumerate() {
        *c = new.buckets[i].saturating_sub(old.buckets[i]);
    }
    Rates {
        rps: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        error_rate: if n > 0 {
            new.errors.saturating_sub(old.errors) as f64 / n as f64
        } else {
            0.0
        },
        p50_ms: quantile(0.5, DURATION_BUCKETS, &counts).map(|s| s * 1e3),
        p99_ms: quantile(0.99, DURATION_BUCKETS, &counts).map(|s| s * 1e3),
    }
}

/// The `q` quantile of a histogram with upper `bounds` and per-bucket `counts`
/// (one more than `bounds`: the last is +Inf), as `histogram_quantile` computes
/// it: linear within the bucket holding the rank; the highest finite bound if
/// the rank falls in +Inf. `None` when there are no observations.
pub fn quantile(q: f64, bounds: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / c as f64);
        }
        below += c;
    }
    bounds.last().copied()
}

/// One second of one backend.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Answers per second.
    pub rps: f64,
    /// 5xx share.
    pub error_rate: f64,
    /// p99 in ms (0 without requests).
    pub p99_ms: f64,
    /// Effective weight at the sample.
    pub effective_weight: u32,
}

/// A state change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unix time, ms (to the sampler's second).
    pub t_ms: u64,
    /// `health` | `circuit` | `mode` | `weight` | `algorithm` | `pool`.
    pub kind: &'static str,
    /// The backend (`-` for the algorithm).
    pub backend: String,
    /// Before.
    pub from: String,
    /// After.
    pub to: String,
}

/// The facts whose changes become events.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    health: &'static str,
    circuit: &'static str,
    mode: &'static str,
    weight: u32,
}

impl Seen {
    fn of(b: &Backend, snap: &Snapshot, now: Instant) -> Seen {
        Seen {
            health: health_of(b),
            circuit: b
                .stats
                .circuit
                .state(&snap.config.circuit_breaker, now)
                .as_str(),
            mode: b.mode.as_str(),
            weight: b.weight,
        }
    }
}

/// `up` | `down`, as `/admin/backends` says it.
pub fn health_of(b: &Backend) -> &'static str {
    if b.stats.healthy.load(Ordering::Relaxed) {
        "up"
    } else {
        "down"
    }
}

struct Track {
    name: String,
    points: VecDeque<Point>,
    /// The last WINDOW + 1 readings: the aggregates span the oldest to the newest.
    readings: VecDeque<Reading>,
    seen: Seen,
    health_since_ms: u64,
    circuit_since_ms: u64,
}

#[derive(Default)]
struct Inner {
    tracks: Vec<Track>,
    /// Requests waiting in lb's queue, one reading a second.
    queue: VecDeque<usize>,
    events: VecDeque<Event>,
    algorithm: Option<&'static str>,
}

impl Inner {
    fn event(&mut self, t_ms: u64, kind: &'static str, backend: &str, from: &str, to: &str) {
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            t_ms,
            kind,
            backend: backend.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        });
    }
}

/// The rings; see the module docs.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

mod view;
pub use view::{BackendView, CertView, HistoryView};

impl History {
    /// Empty rings.
    pub fn new() -> Self {
        History::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event another part of lb knows about (e.g. a pool's member
    /// lifecycle: `record("pool", "app-3", "ready", "draining", now_ms)`).
    pub fn record(&self, kind: &'static str, backend: &str, from: &str, to: &str, t_ms: u64) {
        self.lock().event(t_ms, kind, backend, from, to);
    }

    /// The last state changes, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    /// One sample of `state` at `now` (circuit time) and `now_ms` (wall clock).
    pub fn sample(&self, state: &State, now: Instant, now_ms: u64) {
        let snap = &*state.load_full();
        let mut inner = self.lock();
        if inner.queue.len() == POINTS {
            inner.queue.pop_front();
        }
        inner.queue.push_back(state.queue.waiting());
        let first = inner.algorithm.is_none();
        let algorithm = snap.algorithm.as_str();
        if let Some(old) = inner.algorithm.filter(|a| *a != algorithm) {
            inner.event(now_ms, "algorithm", "-", old, algorithm);
        }
        inner.algorithm = Some(algorithm);
        let mut tracks = std::mem::take(&mut inner.tracks);
        for t in &tracks {
            if snap.index_of(&t.name).is_none() {
                inner.event(now_ms, "pool", &t.name, "member", "removed");
            }
        }
        tracks.retain(|t| snap.index_of(&t.name).is_some());
        for b in &snap.backends {
            let seen = Seen::of(b, snap, now);
            let reading = Reading::of(b, now_ms);
            let pos = tracks.iter().position(|t| *t.name == *b.stats.name);
            let Some(t) = pos.map(|i| &mut tracks[i]) else {
                if !first {
                    inner.event(now_ms, "pool", &b.stats.name, "-", "added");
                }
                tracks.push(Track {
                    name: b.stats.name.to_string(),
                    points: VecDeque::with_capacity(POINTS),
                    readings: VecDeque::from([reading]),
                    seen,
                    health_since_ms: now_ms,
                    circuit_since_ms: now_ms,
                });
                continue;
            };
            diff(&mut inner, t, &seen, now_ms);
            let prev = t.readings.back().copied().unwrap_or(reading);
            let r = between(&prev, &reading);
            if t.points.len() == POINTS {
                t.points.pop_front();
            }
            t.points.push_back(Point {
                rps: round2(r.rps),
                error_rate: (r.error_rate * 1e4).round() / 1e4,
                p99_ms: round2(r.p99_ms.unwrap_or(0.0)),
                effective_weight: b.effective_weight(snap.algorithm),
            });
            if t.readings.len() == WINDOW + 1 {
                t.readings.pop_front();
            }
            t.readings.push_back(reading);
        }
        inner.tracks = tracks;
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Events for what changed in `t` since the last sample.
fn diff(inner: &mut Inner, t: &mut Track, seen: &Seen, now_ms: u64) {
    let old = t.seen.clone();
    let name = t.name.clone();
    if old.health != seen.health {
        inner.event(now_ms, "health", &name, old.health, seen.health);
        t.health_since_ms = now_ms;
    }
    if old.circuit != seen.circuit {
        inner.event(now_ms, "circuit", &name, old.circuit, seen.circuit);
        t.circuit_since_ms = now_ms;
    }
    if old.mode != seen.mode {
        inner.event(now_ms, "mode", &name, old.mode, seen.mode);
    }
    if old.weight != seen.weight {
        let (a, b) = (old.weight.to_string(), seen.weight.to_string());
        inner.event(now_ms, "weight", &name, &a, &b);
    }
    t.seen = seen.clone();
}

/// The once-a-second sampling task.
pub struct Sampler {
    state: Arc<State>,
    history: Arc<History>,
}

impl Sampler {
    /// Samples `state` into `history`.
    pub fn new(state: Arc<State>, history: Arc<History>) -> Self {
        Sampler { state, history }
    }
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.history.sample(&self.state, Instant::now(), unix_ms()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
