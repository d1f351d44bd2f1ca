//! `/metrics`: the Prometheus exposition, built at scrape time from the current
//! snapshot's atomics. Every configured backend appears from the start (zeros);
//! a backend removed by a reload disappears with it. The proxy's hot path only
//! ever touches atomics and a histogram handle resolved when the backend was
//! created.

use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::circuit::CircuitState;
use crate::metrics::{ErrorKind, ADMIN_KINDS};
use crate::pool::{MemberState, Pool, Reason};
use crate::queue::Rejected;
use crate::state::State;

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

/// `lb_pool_*` (SPEC "The pool"), present from the start when a pool is.
fn pool_families(r: &Registry, pool: &Pool) {
    let (c, counts) = pool.metrics();
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

/// [`render`], plus the pool's families when there is one.
pub fn render_with_pool(state: &State, pool: Option<&Pool>) -> String {
    let r = Registry::new();
    if let Some(p) = pool {
        pool_families(&r, p);
    }
    let snap = state.load_full();
    let now = Instant::now();
    let requests = counter(
        &r,
        "lb_requests_total",
        "Requests answered, by backend and status class",
        &["backend", "code"],
    );
    let in_flight = gauge(
        &r,
        "lb_backend_in_flight",
        "Requests in flight to the backend",
        &["backend"],
    );
    let max_in_flight = gauge(
        &r,
        "lb_backend_max_in_flight",
        "Configured max_in_flight (0 = unlimited)",
        &["backend"],
    );
    let up = gauge(
        &r,
        "lb_backend_up",
        "1 if active health checks pass",
        &["backend"],
    );
    let weight = gauge(&r, "lb_backend_weight", "Operator weight", &["backend"]);
    let eff = gauge(
        &r,
        "lb_backend_effective_weight",
        "Weight the balancer uses",
        &["backend"],
    );
    let circuit = gauge(
        &r,
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
    let errors = counter(
        &r,
        "lb_upstream_errors_total",
        "Upstream errors by kind",
        &["backend", "kind"],
    );
    let retries = counter(
        &r,
        "lb_retries_total",
        "Retries caused by the backend's failure",
        &["backend"],
    );
    let checks = counter(
        &r,
        "lb_health_checks_total",
        "Active health checks",
        &["backend", "result"],
    );

    let mut histograms = Vec::new();
    for b in &snap.backends {
        let s = &b.stats;
        let name: &str = &s.name;
        for (i, code) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            requests
                .with_label_values(&[name, code])
                .inc_by(s.metrics.codes[i].load(Ordering::Relaxed));
        }
        in_flight.with_label_values(&[name]).set(s.in_flight());
        max_in_flight
            .with_label_values(&[name])
            .set(b.max_in_flight.into());
        up.with_label_values(&[name])
            .set(i64::from(s.healthy.load(Ordering::Relaxed)));
        weight.with_label_values(&[name]).set(b.weight.into());
        eff.with_label_values(&[name])
            .set(b.effective_weight(snap.algorithm).into());
        let st = s.circuit.state(&snap.config.circuit_breaker, now);
        for c in [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        ] {
            circuit
                .with_label_values(&[name, c.as_str()])
                .set(i64::from(st == c));
        }
        ewma.with_label_values(&[name])
            .set(s.ewma.get(now).as_secs_f64());
        for k in ErrorKind::ALL {
            errors
                .with_label_values(&[name, k.as_str()])
                .inc_by(s.metrics.upstream_errors[k as usize].load(Ordering::Relaxed));
        }
        retries
            .with_label_values(&[name])
            .inc_by(s.retries_total.load(Ordering::Relaxed));
        checks
            .with_label_values(&[name, "success"])
            .inc_by(s.health_ok.load(Ordering::Relaxed));
        checks
            .with_label_values(&[name, "failure"])
            .inc_by(s.health_failed.load(Ordering::Relaxed));
        histograms.push((name, s.metrics.duration.collect()));
    }

    let c = &state.counters;
    let no_backend = counter(
        &r,
        "lb_no_backend_total",
        "Requests answered 503: no eligible backend",
        &[],
    );
    no_backend
        .with_label_values(&[] as &[&str])
        .inc_by(c.no_backend.load(Ordering::Relaxed));
    queue(&r, state);
    counter(
        &r,
        "lb_log_dropped_total",
        "Log lines dropped because the log writer fell behind",
        &[],
    )
    .with_label_values(&[] as &[&str])
    .inc_by(crate::metrics::log_dropped());
    let reloads = counter(&r, "lb_config_reloads_total", "Config reloads", &["result"]);
    reloads
        .with_label_values(&["success"])
        .inc_by(c.reloads_ok.load(Ordering::Relaxed));
    reloads
        .with_label_values(&["failure"])
        .inc_by(c.reloads_failed.load(Ordering::Relaxed));
    let changes = counter(
        &r,
        "lb_admin_changes_total",
        "Admin changes applied",
        &["kind"],
    );
    for (i, k) in ADMIN_KINDS.iter().enumerate() {
        changes
            .with_label_values(&[k])
            .inc_by(c.admin_changes[i].load(Ordering::Relaxed));
    }
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

    let mut families = r.gather();
    families.push(histogram_family(histograms));
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
fn histogram_family(
    per_backend: Vec<(&str, Vec<prometheus::proto::MetricFamily>)>,
) -> prometheus::proto::MetricFamily {
    use prometheus::proto::{LabelPair, MetricFamily, MetricType};
    let mut fam = MetricFamily::default();
    fam.set_name("lb_request_duration_seconds".into());
    fam.set_help("Request duration as the client saw it, by final backend".into());
    fam.set_field_type(MetricType::HISTOGRAM);
    for (name, mut families) in per_backend {
        let Some(mut f) = families.pop() else {
            continue;
        };
        for mut m in f.take_metric() {
            let mut l = LabelPair::default();
            l.set_name("backend".into());
            l.set_value(name.into());
            let mut labels = m.take_label();
            labels.push(l);
            m.set_label(labels);
            fam.mut_metric().push(m);
        }
    }
    fam
}
