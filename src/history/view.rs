//! The `GET /history` answer. Current facts (health, circuit, mode, weights,
//! in-flight) are read from the snapshot at request time, exactly as
//! `/admin/backends` reads them, so the two agree (the certificates too, as
//! `/admin/tls` reads them); the aggregates, series and events come from the
//! rings.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::{between, health_of, Event, History, Rates, Reading, Seen, Track, POINTS, WINDOW};
use crate::state::{Backend, Snapshot, State};
use crate::tls::certs::{CertInfo, WARN_DAYS};

/// Per-second series of one backend, oldest first (up to [`POINTS`]).
#[derive(Debug, Default, Serialize)]
pub struct Series {
    /// Answers per second.
    pub rps: Vec<f64>,
    /// 5xx share.
    pub error_rate: Vec<f64>,
    /// p99 in ms (0 for a second without requests).
    pub p99_ms: Vec<f64>,
    /// Effective weight.
    pub effective_weight: Vec<u32>,
}

/// One backend in [`HistoryView`].
#[derive(Debug, Serialize)]
pub struct BackendView {
    /// Backend name.
    pub name: String,
    /// The `resolve = "all"` group it is a member of (null otherwise).
    pub group: Option<String>,
    /// `host:port` as configured.
    pub addr: String,
    /// `up` | `down`.
    pub health: &'static str,
    /// When health last changed (Unix ms; lb's start or the backend's arrival
    /// if it never did).
    pub health_since_ms: u64,
    /// `closed` | `open` | `half_open`.
    pub circuit: &'static str,
    /// When the circuit last changed (as `health_since_ms`).
    pub circuit_since_ms: u64,
    /// `active` | `drain` | `maintenance`.
    pub mode: &'static str,
    /// Operator weight.
    pub weight: u32,
    /// Weight the balancer uses now.
    pub effective_weight: u32,
    /// Share under slow start (0.1..=1.0; 1.0 when not ramping), as
    /// `/admin/backends` reports it.
    pub slow_start_ratio: f64,
    /// Requests in flight now.
    pub in_flight: i64,
    /// Its capacity (0 = unlimited).
    pub max_in_flight: u32,
    /// Completed attempts since start.
    pub requests_total: u64,
    /// Rate, error rate, p50 and p99 over the last [`WINDOW`] seconds.
    #[serde(flatten)]
    pub window: Rates,
    /// The last [`POINTS`] seconds.
    pub series: Series,
}

/// Everything the status page shows.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Unix ms of this answer.
    pub now_ms: u64,
    /// Seconds between points.
    pub interval_s: u32,
    /// Seconds the aggregates cover.
    pub window_s: usize,
    /// Points kept per backend.
    pub points: usize,
    /// The state version (the admin API's ETag).
    pub version: u64,
    /// Active algorithm.
    pub algorithm: &'static str,
    /// Backends in config order.
    pub backends: Vec<BackendView>,
    /// lb's queue (requests waiting for a backend below its `max_in_flight`).
    pub queue: QueueView,
    /// The last state changes, newest first.
    pub events: Vec<Event>,
    /// The certificates the HTTPS listener serves, in `tls.certificates`
    /// order (null without `[tls]`).
    pub certificates: Option<Vec<CertView>>,
}

/// One certificate in [`HistoryView`] (what `GET /admin/tls` says, without
/// the file path: the page needs no token).
#[derive(Debug, Serialize)]
pub struct CertView {
    /// Its DNS names.
    pub names: Vec<String>,
    /// Expiry, RFC 3339 (UTC).
    pub not_after: String,
    /// Whole days left at the answer's `now_ms`; negative once expired.
    pub days_left: i64,
    /// Below [`WARN_DAYS`] days left (the page highlights it).
    pub expiring: bool,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// `file` | `acme`.
    pub source: &'static str,
}

impl CertView {
    fn of(c: &CertInfo, now_s: i64) -> CertView {
        let days_left = c.days_left(now_s);
        CertView {
            names: c.names.clone(),
            not_after: c.not_after_rfc3339(),
            days_left,
            expiring: days_left < WARN_DAYS,
            issuer: c.issuer.clone(),
            source: c.source,
        }
    }
}

/// The queue in [`HistoryView`].
#[derive(Debug, Serialize)]
pub struct QueueView {
    /// Requests waiting now.
    pub depth: usize,
    /// Waiting requests at each of the last [`POINTS`] samples, oldest first.
    pub series: Vec<usize>,
}

const NO_RATES: Rates = Rates {
    rps: 0.0,
    error_rate: 0.0,
    p50_ms: None,
    p99_ms: None,
};

impl History {
    /// The view of `state` at `now` / `now_ms` with what the rings hold.
    pub fn view(&self, state: &State, now: Instant, now_ms: u64) -> HistoryView {
        let snap = &*state.load_full();
        let inner = self.lock();
        let backends = snap
            .backends
            .iter()
            .map(|b| {
                let track = inner.tracks.iter().find(|t| *t.name == *b.stats.name);
                backend_view(b, track, snap, now, now_ms)
            })
            .collect();
        HistoryView {
            now_ms,
            interval_s: 1,
            window_s: WINDOW,
            points: POINTS,
            version: snap.version,
            algorithm: snap.algorithm.as_str(),
            backends,
            queue: QueueView {
                depth: state.queue.waiting(),
                series: inner.queue.iter().copied().collect(),
            },
            events: inner.events.iter().rev().cloned().collect(),
            certificates: snap.config.tls.as_ref().map(|t| {
                let now_s = (now_ms / 1000) as i64;
                // The files', then `[tls.acme]`'s once one is issued.
                let acme = t.acme.as_ref().and(crate::tls::acme::current());
                t.loaded
                    .certs()
                    .iter()
                    .map(|c| CertView::of(c, now_s))
                    .chain(acme.map(|i| CertView::of(&i.info, now_s)))
                    .collect()
            }),
        }
    }
}

/// `b` as the snapshot says now, with what its `track` (if sampled yet) holds.
fn backend_view(
    b: &Backend,
    track: Option<&Track>,
    snap: &Snapshot,
    now: Instant,
    now_ms: u64,
) -> BackendView {
    let seen = Seen::of(b, snap, now);
    // A change not sampled yet happened within the last second.
    let since = |same: bool, at: u64| if same { at } else { now_ms };
    let (health_since_ms, circuit_since_ms, window, series) = match track {
        Some(t) => (
            since(t.seen.health == seen.health, t.health_since_ms),
            since(t.seen.circuit == seen.circuit, t.circuit_since_ms),
            aggregate(t.readings.front(), t.readings.back()),
            Series {
                rps: t.points.iter().map(|p| p.rps).collect(),
                error_rate: t.points.iter().map(|p| p.error_rate).collect(),
                p99_ms: t.points.iter().map(|p| p.p99_ms).collect(),
                effective_weight: t.points.iter().map(|p| p.effective_weight).collect(),
            },
        ),
        None => (now_ms, now_ms, NO_RATES, Series::default()),
    };
    let ramp = b
        .stats
        .slow_start_ratio(snap.config.balancer.slow_start, now);
    BackendView {
        name: b.stats.name.to_string(),
        group: b.group.as_deref().map(str::to_string),
        addr: b.configured_addr.clone(),
        health: health_of(b),
        health_since_ms,
        circuit: seen.circuit,
        circuit_since_ms,
        mode: seen.mode,
        weight: b.weight,
        effective_weight: b.effective_weight(snap.algorithm),
        slow_start_ratio: f64::from(ramp) / 1000.0,
        in_flight: b.stats.in_flight(),
        max_in_flight: b.max_in_flight,
        requests_total: b.stats.requests_total.load(Ordering::Relaxed),
        window,
        series,
    }
}

fn aggregate(oldest: Option<&Reading>, newest: Option<&Reading>) -> Rates {
    match (oldest, newest) {
        (Some(a), Some(b)) if b.at_ms > a.at_ms => {
            let r = between(a, b);
            Rates {
                rps: (r.rps * 100.0).round() / 100.0,
                error_rate: (r.error_rate * 1e4).round() / 1e4,
                p50_ms: r.p50_ms.map(|v| (v * 100.0).round() / 100.0),
                p99_ms: r.p99_ms.map(|v| (v * 100.0).round() / 100.0),
            }
        }
        _ => NO_RATES,
    }
}
