//! `/metrics`: the Prometheus exposition, built at scrape time from the current
//! snapshot's atomics. Every configured backend appears from the start (zeros);
//! a backend removed by a reload disappears with it. The proxy's hot path only
//! ever touches atomics and a histogram handle resolved when the backend was
//! created.

use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus::proto::{Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::circuit::CircuitState;
use crate::metrics::{ErrorKind, ADMIN_KINDS};
use crate::pool::{Counters, MemberState, Pool, Reason};
use crate::queue::Rejected;
use crate::state::{Backend, Snapshot, State};

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Renders every `lb_*` family plus `process_*` in the text format.
pub fn render(state: &State) -> String {
    render_with_pool(state, None)
}

/// [`render`], plus the pool's families when there is one.
pub fn render_with_pool(state: &State, pool: Option<&Pool>) -> String {
    let r = Registry::new();
    if let Some(p) = pool {
        pool_families(&r, p.metrics());
    }
    let snap = state.load_full();
    let histograms = backends(&r, &snap);
    global(&r, state);
    tls(&r, state, &snap);
    queue(&r, state);
    build_and_process(&r);
    encode(&r, histograms)
}

/// `lb_pool_*` (SPEC "The pool"), present from the start when a pool is.
fn pool_families(r: &Registry, (c, counts): (Counters, [usize; 4])) {
    let members = gauge(r, "lb_pool_members", "Pool members by state", &["state"]);
    for (s, n) in MemberState::ALL.iter().zip(counts) {
        members.with_label_values(&[s.as_str()]).set(n as i64);
    }
    let starts = counter(
        r,
        "lb_pool_starts_total",
        "Member starts: ok = became healthy",
        &["result"],
    );
    starts.with_label_values(&["ok"]).inc_by(c.starts_ok);
    starts
        .with_label_values(&["failed"])
        .inc_by(c.starts_failed);
    let recycles = counter(
        r,
        "lb_pool_recycles_total",
        "Members replaced, by reason",
        &["reason"],
    );
    for (reason, n) in Reason::RECYCLES.iter().zip(c.recycles) {
        recycles.with_label_values(&[reason.as_str()]).inc_by(n);
    }
    let scale = counter(
        r,
        "lb_pool_scale_total",
        "Pool size changes",
        &["direction"],
    );
    scale.with_label_values(&["up"]).inc_by(c.scaled_up);
    scale.with_label_values(&["down"]).inc_by(c.scaled_down);
}

/// Every per-backend family, one sample set per backend in `snap`; returns
/// each backend's request-duration histogram for [`histogram_family`].
fn backends<'a>(r: &Registry, snap: &'a Snapshot) -> Vec<(&'a str, Histogram)> {
    let families = BackendFamilies::register(r);
    let now = Instant::now();
    snap.backends
        .iter()
        .map(|b| {
            families.record(b, snap, now);
            (&*b.stats.name, b.stats.metrics.histogram())
        })
        .collect()
}

/// The per-backend families (but the duration histogram), labelled by backend.
struct BackendFamilies {
    requests: IntCounterVec,
    in_flight: IntGaugeVec,
    max_in_flight: IntGaugeVec,
    up: IntGaugeVec,
    weight: IntGaugeVec,
    eff: IntGaugeVec,
    circuit: IntGaugeVec,
    ewma: GaugeVec,
    slow_start: GaugeVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    checks: IntCounterVec,
}

impl BackendFamilies {
    fn register(r: &Registry) -> Self {
        let requests = counter(
            r,
            "lb_requests_total",
            "Requests answered, by backend and status class",
            &["backend", "code"],
        );
        let in_flight = gauge(
            r,
            "lb_backend_in_flight",
            "Requests in flight to the backend",
            &["backend"],
        );
        let max_in_flight = gauge(
            r,
            "lb_backend_max_in_flight",
            "Configured max_in_flight (0 = unlimited)",
            &["backend"],
        );
        let up = gauge(
            r,
            "lb_backend_up",
            "1 if active health checks pass",
            &["backend"],
        );
        let weight = gauge(r, "lb_backend_weight", "Operator weight", &["backend"]);
        let eff = gauge(
            r,
            "lb_backend_effective_weight",
            "Weight the balancer uses",
            &["backend"],
        );
        let circuit = gauge(
            r,
            "lb_backend_circuit_state",
            "Circuit state, one-hot",
            &["backend", "state"],
        );
        let ewma = GaugeVec::new(
            Opts::new(
                "lb_backend_ewma_seconds",
                "Peak-EWMA upstream response time",
            ),
            &["backend"],
        )
        .expect("valid metric");
        r.register(Box::new(ewma.clone())).expect("unique metric");
        let slow_start = GaugeVec::new(
            Opts::new(
                "lb_backend_slow_start_ratio",
                "Share of its weight a backend in slow start gets (1 when not ramping)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        r.register(Box::new(slow_start.clone()))
            .expect("unique metric");
        let errors = counter(
            r,
            "lb_upstream_errors_total",
            "Upstream errors by kind",
            &["backend", "kind"],
        );
        let retries = counter(
            r,
            "lb_retries_total",
            "Retries caused by the backend's failure",
            &["backend"],
        );
        let checks = counter(
            r,
            "lb_health_checks_total",
            "Active health checks",
            &["backend", "result"],
        );
        BackendFamilies {
            requests,
            in_flight,
            max_in_flight,
            up,
            weight,
            eff,
            circuit,
            ewma,
            slow_start,
            errors,
            retries,
            checks,
        }
    }

    /// `b`'s samples in every family.
    fn record(&self, b: &Backend, snap: &Snapshot, now: Instant) {
        let s = &b.stats;
        let name: &str = &s.name;
        let codes = s.metrics.codes();
        for (i, code) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            self.requests
                .with_label_values(&[name, code])
                .inc_by(codes[i]);
        }
        self.in_flight.with_label_values(&[name]).set(s.in_flight());
        self.max_in_flight
            .with_label_values(&[name])
            .set(b.max_in_flight.into());
        self.up
            .with_label_values(&[name])
            .set(i64::from(s.healthy.load(Ordering::Relaxed)));
        self.weight.with_label_values(&[name]).set(b.weight.into());
        self.eff
            .with_label_values(&[name])
            .set(b.effective_weight(snap.algorithm).into());
        let ratio = s.slow_start_ratio(snap.config.balancer.slow_start, now);
        self.slow_start
            .with_label_values(&[name])
            .set(f64::from(ratio) / 1000.0);
        let st = s.circuit.state(&snap.config.circuit_breaker, now);
        for c in [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        ] {
            self.circuit
                .with_label_values(&[name, c.as_str()])
                .set(i64::from(st == c));
        }
        self.ewma
            .with_label_values(&[name])
            .set(s.ewma.get(now).as_secs_f64());
        for k in ErrorKind::ALL {
            self.errors
                .with_label_values(&[name, k.as_str()])
                .inc_by(s.metrics.upstream_errors[k as usize].load(Ordering::Relaxed));
        }
        self.retries
            .with_label_values(&[name])
            .inc_by(s.retries_total.load(Ordering::Relaxed));
        self.checks
            .with_label_values(&[name, "success"])
            .inc_by(s.health_ok.load(Ordering::Relaxed));
        self.checks
            .with_label_values(&[name, "failure"])
            .inc_by(s.health_failed.load(Ordering::Relaxed));
    }
}

/// The process-wide counters: `lb_no_backend_total`, `lb_log_dropped_total`,
/// `lb_config_reloads_total{result}`, `lb_admin_changes_total{kind}`,
/// `lb_state_file_errors_total`, ...
fn global(r: &Registry, state: &State) {
    let c = &state.counters;
    let no_backend = counter(
        r,
        "lb_no_backend_total",
        "Requests answered 503: no eligible backend",
        &[],
    );
    no_backend
        .with_label_values(&[] as &[&str])
        .inc_by(c.no_backend.load(Ordering::Relaxed));
    counter(
        r,
        "lb_log_dropped_total",
        "Log lines dropped because the log writer fell behind",
        &[],
    )
    .with_label_values(&[] as &[&str])
    .inc_by(crate::metrics::log_dropped());
    let reloads = counter(r, "lb_config_reloads_total", "Config reloads", &["result"]);
    reloads
        .with_label_values(&["success"])
        .inc_by(c.reloads_ok.load(Ordering::Relaxed));
    reloads
        .with_label_values(&["failure"])
        .inc_by(c.reloads_failed.load(Ordering::Relaxed));
    let changes = counter(
        r,
        "lb_admin_changes_total",
        "Admin changes applied",
        &["kind"],
    );
    for (i, k) in ADMIN_KINDS.iter().enumerate() {
        changes
            .with_label_values(&[k])
            .inc_by(c.admin_changes[i].load(Ordering::Relaxed));
    }
    let local = counter(
        r,
        "lb_local_errors_total",
        "Upstream connects that failed for lack of lb's own resources (never charged to a backend)",
        &["errno"],
    );
    for (i, (_, name)) in crate::metrics::LOCAL_ERRNOS.iter().enumerate() {
        local
            .with_label_values(&[name])
            .inc_by(c.local_errors[i].load(Ordering::Relaxed));
    }
    let limited = counter(
        r,
        "lb_limited_total",
        "Client connections and requests refused by lb's limits, by reason",
        &["reason"],
    );
    for (i, reason) in crate::metrics::LIMITED_REASONS.iter().enumerate() {
        limited
            .with_label_values(&[reason])
            .inc_by(c.limited[i].load(Ordering::Relaxed));
    }
    counter(
        r,
        "lb_retries_skipped_total",
        "Retries not made, by reason",
        &["reason"],
    )
    .with_label_values(&["budget"])
    .inc_by(c.retries_skipped_budget.load(Ordering::Relaxed));
    counter(
        r,
        "lb_state_file_errors_total",
        "Writes of admin.state_file that failed (the changes stayed applied in memory)",
        &[],
    )
    .with_label_values(&[] as &[&str])
    .inc_by(crate::control::state_file_errors());
}

/// `lb_tls_*` (SPEC "HTTPS"): handshakes by version and ALPN, failures by
/// reason (both present without `[tls]`, at 0), each certificate's expiry.
fn tls(r: &Registry, state: &State, snap: &crate::state::Snapshot) {
    use crate::tls::{ALPNS, ERRORS, VERSIONS};
    let c = &state.counters;
    let done = counter(
        r,
        "lb_tls_handshakes_total",
        "TLS handshakes completed, by version and ALPN protocol",
        &["version", "alpn"],
    );
    for (v, version) in VERSIONS.iter().enumerate() {
        for (a, alpn) in ALPNS.iter().enumerate() {
            done.with_label_values(&[version, alpn])
                .inc_by(c.tls_handshakes[v * ALPNS.len() + a].load(Ordering::Relaxed));
        }
    }
    let failed = counter(
        r,
        "lb_tls_handshake_errors_total",
        "TLS handshakes that failed, by reason (never logged above debug)",
        &["reason"],
    );
    for (i, reason) in ERRORS.iter().enumerate() {
        failed
            .with_label_values(&[reason])
            .inc_by(c.tls_handshake_errors[i].load(Ordering::Relaxed));
    }
    if let Some(t) = &snap.config.tls {
        let expiry = gauge(
            r,
            "lb_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time), by its first name",
            &["name"],
        );
        for cert in t.loaded.certs() {
            let name = cert.names.first().map_or("", String::as_str);
            expiry.with_label_values(&[name]).set(cert.not_after);
        }
        if let Some(i) = crate::tls::acme::current().filter(|_| t.acme.is_some()) {
            let name = i.info.names.first().map_or("", String::as_str);
            expiry.with_label_values(&[name]).set(i.info.not_after);
        }
    }
    let orders = counter(
        r,
        "lb_acme_orders_total",
        "ACME certificate orders by result (issued, refused by the CA, failed)",
        &["result"],
    );
    for (i, result) in crate::tls::acme::RESULTS.iter().enumerate() {
        orders
            .with_label_values(&[result])
            .inc_by(crate::tls::acme::ORDERS[i].load(Ordering::Relaxed));
    }
}

/// `lb_build_info{version}` and, on Linux, `process_*`.
fn build_and_process(r: &Registry) {
    let build = IntGaugeVec::new(
        Opts::new("lb_build_info", "Build information"),
        &["version"],
    )
    .expect("valid metric");
    r.register(Box::new(build.clone())).expect("unique metric");
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    #[cfg(target_os = "linux")]
    {
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
}

/// Every family in `r` plus the merged duration histogram, sorted by name, in
/// the text format.
fn encode(r: &Registry, histograms: Vec<(&str, Histogram)>) -> String {
    let mut families = r.gather();
    // No backends yet (a pool before its first member joins): no histogram.
    // The encoder stops at a family without samples, losing every later one.
    let durations = histogram_family(histograms);
    if !durations.get_metric().is_empty() {
        families.push(durations);
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// `lb_queue_depth`, `lb_queue_wait_seconds`, `lb_queue_rejected_total{reason}`.
fn queue(r: &Registry, state: &State) {
    let q = &state.queue;
    gauge(r, "lb_queue_depth", "Requests waiting in the queue", &[])
        .with_label_values(&[] as &[&str])
        .set(q.waiting() as i64);
    // A clone shares the live histogram's counts.
    r.register(Box::new(q.wait_histogram().clone()))
        .expect("unique metric");
    let rejected = counter(
        r,
        "lb_queue_rejected_total",
        "Requests answered 503 by the queue: full, or waited queue.timeout",
        &["reason"],
    );
    for why in Rejected::ALL {
        rejected
            .with_label_values(&[why.as_str()])
            .inc_by(q.rejected(why));
    }
}

/// Merges each backend's histogram into one `lb_request_duration_seconds`
/// family labelled by backend.
fn histogram_family(per_backend: Vec<(&str, Histogram)>) -> MetricFamily {
    let mut fam = MetricFamily::default();
    fam.set_name("lb_request_duration_seconds".into());
    fam.set_help("Request duration as the client saw it, by final backend".into());
    fam.set_field_type(MetricType::HISTOGRAM);
    for (name, h) in per_backend {
        let mut l = LabelPair::default();
        l.set_name("backend".into());
        l.set_value(name.into());
        let mut m = Metric::from_label(vec![l]);
        m.set_histogram(h);
        fam.mut_metric().push(m);
    }
    fam
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::metrics::DURATION_BUCKETS;
    use crate::queue::WAIT_BUCKETS;

    /// (name, type, sample lines) of every `lb_*` family, in output order.
    fn families(text: &str) -> Vec<(String, String, usize)> {
        let mut out: Vec<(String, String, usize)> = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("# TYPE name type");
                out.push((name.into(), kind.into(), 0));
            } else if !line.starts_with('#') {
                out.last_mut().expect("a sample after # TYPE").2 += 1;
            }
        }
        out.retain(|(name, _, _)| name.starts_with("lb_"));
        out
    }

    #[test]
    fn every_family_once_in_name_order_with_every_backend() {
        let config = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
                      [[backends]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\n";
        let state = State::new(Arc::new(Config::from_toml(config).unwrap()));
        let text = render(&state);
        // Two backends: every per-backend family has each label set twice; a
        // histogram has one line per bucket, +Inf, _sum and _count.
        let histogram = |buckets: &[f64]| buckets.len() + 3;
        let want = [
            // issued, refused, failed: present (at 0) without [tls.acme] too.
            ("lb_acme_orders_total", "counter", 3),
            ("lb_admin_changes_total", "counter", ADMIN_KINDS.len()),
            ("lb_backend_circuit_state", "gauge", 2 * 3),
            ("lb_backend_effective_weight", "gauge", 2),
            ("lb_backend_ewma_seconds", "gauge", 2),
            ("lb_backend_in_flight", "gauge", 2),
            ("lb_backend_max_in_flight", "gauge", 2),
            ("lb_backend_slow_start_ratio", "gauge", 2),
            ("lb_backend_up", "gauge", 2),
            ("lb_backend_weight", "gauge", 2),
            ("lb_build_info", "gauge", 1),
            ("lb_config_reloads_total", "counter", 2),
            ("lb_health_checks_total", "counter", 2 * 2),
            ("lb_limited_total", "counter", 2),
            ("lb_local_errors_total", "counter", 5),
            ("lb_log_dropped_total", "counter", 1),
            ("lb_no_backend_total", "counter", 1),
            ("lb_queue_depth", "gauge", 1),
            ("lb_queue_rejected_total", "counter", Rejected::ALL.len()),
            (
                "lb_queue_wait_seconds",
                "histogram",
                histogram(WAIT_BUCKETS),
            ),
            (
                "lb_request_duration_seconds",
                "histogram",
                2 * histogram(DURATION_BUCKETS),
            ),
            ("lb_requests_total", "counter", 2 * 5),
            ("lb_retries_skipped_total", "counter", 1),
            ("lb_retries_total", "counter", 2),
            ("lb_state_file_errors_total", "counter", 1),
            (
                "lb_tls_handshake_errors_total",
                "counter",
                crate::tls::ERRORS.len(),
            ),
            (
                "lb_tls_handshakes_total",
                "counter",
                crate::tls::VERSIONS.len() * crate::tls::ALPNS.len(),
            ),
            (
                "lb_upstream_errors_total",
                "counter",
                2 * ErrorKind::ALL.len(),
            ),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|&(n, t, k)| (n.to_string(), t.to_string(), k))
            .collect();
        assert_eq!(families(&text), want);
        #[cfg(target_os = "linux")]
        assert!(text.contains("\n# TYPE process_cpu_seconds_total counter\n"));
    }

    #[test]
    fn no_backends_still_renders_every_other_family() {
        let r = Registry::new();
        build_and_process(&r);
        let out = encode(&r, Vec::new());
        assert!(out.contains("lb_build_info{version="), "{out}");
        assert!(!out.contains("lb_request_duration_seconds"), "{out}");
        #[cfg(target_os = "linux")]
        assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
    }

    #[test]
    fn pool_families_put_each_count_under_its_label() {
        let r = Registry::new();
        let c = Counters {
            starts_ok: 1,
            starts_failed: 2,
            recycles: [3, 4, 5, 6],
            scaled_up: 7,
            scaled_down: 8,
        };
        pool_families(&r, (c, [9, 10, 11, 12]));
        let text = TextEncoder::new().encode_to_string(&r.gather()).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "lb_pool_members{state=\"draining\"} 11",
                "lb_pool_members{state=\"ready\"} 10",
                "lb_pool_members{state=\"starting\"} 9",
                "lb_pool_members{state=\"stopping\"} 12",
                "lb_pool_recycles_total{reason=\"age\"} 3",
                "lb_pool_recycles_total{reason=\"exited\"} 5",
                "lb_pool_recycles_total{reason=\"memory\"} 4",
                "lb_pool_recycles_total{reason=\"unhealthy\"} 6",
                "lb_pool_scale_total{direction=\"down\"} 8",
                "lb_pool_scale_total{direction=\"up\"} 7",
                "lb_pool_starts_total{result=\"failed\"} 2",
                "lb_pool_starts_total{result=\"ok\"} 1",
            ]
        );
    }
}
