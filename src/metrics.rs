//! Metric primitives kept per backend on the hot path: plain atomics and one
//! Prometheus histogram, all resolved when the backend's stats are created, so
//! recording a request never looks up a label. The exposition (names, labels,
//! one-hot circuit gauges) is built at scrape time by `admin::exposition`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts};

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

/// Per-backend request metrics.
#[derive(Debug)]
pub struct RequestMetrics {
    /// Requests answered, by status class 1xx..5xx (index 0..4).
    pub codes: [AtomicU64; 5],
    /// Upstream errors by [`ErrorKind`].
    pub upstream_errors: [AtomicU64; 4],
    /// Total request duration as the client saw it.
    pub duration: Histogram,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        let opts = HistogramOpts::new("lb_request_duration_seconds", "request duration")
            .buckets(DURATION_BUCKETS.to_vec());
        RequestMetrics {
            codes: Default::default(),
            upstream_errors: Default::default(),
            // Constant name and strictly increasing buckets: cannot fail (tested below).
            duration: Histogram::with_opts(opts).expect("constant histogram options are valid"),
        }
    }
}

impl RequestMetrics {
    /// Counts one answered request with `status`, taking `seconds` in total.
    pub fn observe(&self, status: u16, seconds: f64) {
        if (100..600).contains(&status) {
            self.codes[(status / 100 - 1) as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(seconds);
    }

    /// Counts one upstream error.
    pub fn error(&self, kind: ErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
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
    /// Clients refused by `[limits]`/`max_connections`, by [`LIMITED_REASONS`] index.
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
        let codes: Vec<u64> = m.codes.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(codes, vec![0, 2, 0, 0, 1]);
        assert_eq!(m.duration.get_sample_count(), 4);
        m.error(ErrorKind::Timeout);
        assert_eq!(m.upstream_errors[1].load(Ordering::Relaxed), 1);
    }
}
