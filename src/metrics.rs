//! Metric primitives kept per backend on the hot path: plain atomics and one
//! Prometheus histogram, all resolved when the backend's stats are created, so
//! recording a request never looks up a label. The exposition (names, labels,
//! one-hot circuit gauges) is built at scrape time by `admin::exposition`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Log lines dropped because the log writer fell behind (set by `main` when
/// it installs the non-blocking writer).
pub static LOG_DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Log lines dropped so far (`lb_log_dropped_total`).
pub fn log_dropped() -> u64 {
    LOG_DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Request duration buckets (seconds): 0.5 ms to 10 s, for a proxy whose
/// backends answer in about a millisecond on a good day and time out in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Kinds of upstream error (`lb_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed or timed out.
    Connect = 0,
    /// No response header within `timeouts.response`.
    Timeout = 1,
    /// Connection reset or closed mid-request.
    Reset = 2,
    /// A 5xx answer.
    Status = 3,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Status,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        ["connect", "timeout", "reset", "status"][self as usize]
    }
}

/// Shards of each backend's request counters: a worker thread counts on
/// cache lines of its own ([`set_worker`]: worker `i` on shard `i % SHARDS`),
/// and a scrape sums them, so two threads serving the same backend never
/// write the same line. Threads that are not workers share shard 0.
pub const SHARDS: usize = 16;

thread_local! {
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes this thread worker `i` (0-based) for the request counters.
pub fn set_worker(i: usize) {
    SHARD.with(|s| s.set((i + 1) % SHARDS));
}

/// `DURATION_BUCKETS` plus +Inf.
pub const DURATION_SLOTS: usize = DURATION_BUCKETS.len() + 1;

/// One thread's share of a backend's request counters, on cache lines of
/// its own (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard {
    codes: [AtomicU64; 5],
    /// Requests per duration slot (not cumulative); the last is +Inf.
    durations: [AtomicU64; DURATION_SLOTS],
    /// Sum of durations, nanoseconds (584 years before it wraps).
    sum_ns: AtomicU64,
}

/// Per-backend request metrics.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    shards: Box<[Shard; SHARDS]>,
    /// Upstream errors by [`ErrorKind`] (rare: not sharded).
    pub upstream_errors: [AtomicU64; 4],
}

impl RequestMetrics {
    /// Counts one answered request with `status`, taking `seconds` in total.
    pub fn observe(&self, status: u16, seconds: f64) {
        let shard = &self.shards[SHARD.with(|s| s.get())];
        if (100..600).contains(&status) {
            shard.codes[(status / 100 - 1) as usize].fetch_add(1, Ordering::Relaxed);
        }
        let slot = DURATION_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        shard.durations[slot].fetch_add(1, Ordering::Relaxed);
        let ns = (seconds.max(0.0) * 1e9) as u64;
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts one upstream error.
    pub fn error(&self, kind: ErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered, by status class 1xx..5xx (index 0..4).
    pub fn codes(&self) -> [u64; 5] {
        let mut out = [0; 5];
        for s in self.shards.iter() {
            for (o, c) in out.iter_mut().zip(&s.codes) {
                *o += c.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Requests per duration slot (not cumulative; the last is +Inf).
    pub fn durations(&self) -> [u64; DURATION_SLOTS] {
        let mut out = [0; DURATION_SLOTS];
        for s in self.shards.iter() {
            for (o, c) in out.iter_mut().zip(&s.durations) {
                *o += c.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// The duration histogram as Prometheus exposes it (cumulative buckets).
    pub fn histogram(&self) -> prometheus::proto::Histogram {
        let slots = self.durations();
        let sum_ns: u64 = self
            .shards
            .iter()
            .map(|s| s.sum_ns.load(Ordering::Relaxed))
            .sum();
        let mut h = prometheus::proto::Histogram::default();
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(slots)
            .map(|(&upper, n)| {
                cumulative += n;
                let mut b = prometheus::proto::Bucket::default();
                b.set_cumulative_count(cumulative);
                b.set_upper_bound(upper);
                b
            })
            .collect();
        h.set_bucket(buckets);
        h.set_sample_count(slots.iter().sum());
        h.set_sample_sum(sum_ns as f64 / 1e9);
        h
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    /// Requests answered 503 because no backend was eligible.
    pub no_backend: AtomicU64,
    /// Config reloads that were applied.
    pub reloads_ok: AtomicU64,
    /// Config reloads rejected by validation.
    pub reloads_failed: AtomicU64,
    /// Admin changes by kind: weights, mode, algorithm, reload.
    pub admin_changes: [AtomicU64; 4],
    /// Upstream connects that failed for a reason of lb's own, by
    /// [`LOCAL_ERRNOS`] index.
    pub local_errors: [AtomicU64; 5],
    /// Retries skipped because `retry.budget` was spent.
    pub retries_skipped_budget: AtomicU64,
    /// Clients refused by `[limits]` (per-IP connections, rate), by [`LIMITED_REASONS`] index;
    /// `server.max_connections` refuses nobody (accepting pauses).
    pub limited: [AtomicU64; 2],
    /// TLS handshakes completed, by `version × alpn`
    /// ([`crate::tls::VERSIONS`] × [`crate::tls::ALPNS`]).
    pub tls_handshakes: [AtomicU64; 6],
    /// TLS handshakes failed, by [`crate::tls::ERRORS`] index.
    pub tls_handshake_errors: [AtomicU64; 7],
}

/// `lb_limited_total{reason}` labels, indexing `limited`.
pub const LIMITED_REASONS: [&str; 2] = ["connections", "rate"];

/// `lb_local_errors_total{errno}`: the errno values lb counts as its own
/// shortage on an upstream connect, and their labels.
pub const LOCAL_ERRNOS: [(i32, &str); 5] = [
    (libc::EMFILE, "EMFILE"),
    (libc::ENFILE, "ENFILE"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::ENOMEM, "ENOMEM"),
];

impl GlobalCounters {
    /// Counts one local connect error (`errno` one of [`LOCAL_ERRNOS`]).
    pub fn local_error(&self, errno: i32) {
        if let Some(i) = LOCAL_ERRNOS.iter().position(|&(e, _)| e == errno) {
            self.local_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `lb_admin_changes_total{kind}` labels, indexing `admin_changes`.
pub const ADMIN_KINDS: [&str; 4] = ["weights", "mode", "algorithm", "reload"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observes_status_classes_and_durations() {
        let m = RequestMetrics::default();
        m.observe(200, 0.001);
        m.observe(204, 0.002);
        m.observe(503, 0.5);
        m.observe(42, 0.1); // not an HTTP status: duration only
        assert_eq!(m.codes(), [0, 2, 0, 0, 1]);
        let h = m.histogram();
        assert_eq!(h.get_sample_count(), 4);
        assert!(
            (h.get_sample_sum() - 0.603).abs() < 1e-6,
            "{}",
            h.get_sample_sum()
        );
        let cumulative: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        // 1 ms, 2 ms (<= 2.5 ms), 100 ms, 500 ms: upper bounds 0.001,
        // 0.0025, 0.1 and 0.5.
        assert_eq!(cumulative, [0, 1, 2, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4, 4]);
        m.error(ErrorKind::Timeout);
        assert_eq!(m.upstream_errors[1].load(Ordering::Relaxed), 1);
    }

    /// Each worker counts on its own shard; the sums see them all, and
    /// threads that are not workers count too (shard 0).
    #[test]
    fn workers_count_on_their_own_shards_and_scrapes_sum_them() {
        let m = std::sync::Arc::new(RequestMetrics::default());
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || {
                    set_worker(i);
                    for _ in 0..1000 {
                        m.observe(200, 0.0001);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        m.observe(500, 20.0);
        for (i, s) in m.shards.iter().enumerate() {
            let n: u64 = s.codes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let want = match i {
                0 => 1,
                1..=3 => 1000,
                _ => 0,
            };
            assert_eq!(n, want, "shard {i}");
        }
        assert_eq!(m.codes(), [0, 3000, 0, 0, 1]);
        let d = m.durations();
        assert_eq!((d[0], d[DURATION_SLOTS - 1]), (3000, 1), "{d:?}");
        assert_eq!(m.histogram().get_sample_count(), 3001);
    }
}
