//! `/metrics` (SPEC "Metrics") scraped from a real lb: every configured
//! backend present from the start with zeros, exact request counts, gauges
//! that follow a killed and restarted backend, an exposition `promtool`
//! accepts, and removed backends' series gone after a reload.
//!
//! The tests run one at a time (`common::serial`): lb, four apps and the load share a
//! 2-core machine.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::json;

/// Hard limit on one test (each is designed to take well under 15 s).
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn serial(test: impl Future<Output = ()>) {
    common::serial("metrics", TEST_LIMIT, test).await;
}

const NAMES: [&str; 4] = ["app-1", "app-2", "app-3", "app-4"];
const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const KINDS: [&str; 4] = ["connect", "timeout", "reset", "status"];
const STATES: [&str; 3] = ["closed", "open", "half_open"];

/// Every family SPEC lists with a `backend` label.
const PER_BACKEND: [&str; 13] = [
    "lb_requests_total",
    "lb_request_duration_seconds_bucket",
    "lb_request_duration_seconds_sum",
    "lb_request_duration_seconds_count",
    "lb_backend_in_flight",
    "lb_backend_max_in_flight",
    "lb_backend_up",
    "lb_backend_weight",
    "lb_backend_effective_weight",
    "lb_backend_circuit_state",
    "lb_backend_ewma_seconds",
    "lb_upstream_errors_total",
    "lb_retries_total",
];

/// Health checks for the kill -9 test (real app processes): every 200 ms
/// (100 ms timeout), 2 to rise or fall.
const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Circuit: 3 consecutive failures open it for 1 s, doubling up to 2 s.
const OPEN_FOR: Duration = Duration::from_secs(1);
const MAX_OPEN_FOR: Duration = Duration::from_secs(2);
/// Scheduling slack on every timing bound: lb, four apps, the load and the
/// scrapes share 2 cores (as in tests/chaos.rs).
const SLACK: Duration = Duration::from_secs(1);

/// Config for the kill -9 test: fast health checks and circuit.
fn body(backends: &str) -> String {
    format!(
        "[health]\ninterval = \"{}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n\n\
         [circuit_breaker]\nfailures = 3\nopen_for = \"{}ms\"\nmax_open_for = \"{}ms\"\n\
         half_open_requests = 1\n\n\
         [timeouts]\nconnect = \"200ms\"\nresponse = \"2s\"\n\n{backends}",
        INTERVAL.as_millis(),
        OPEN_FOR.as_millis(),
        MAX_OPEN_FOR.as_millis(),
    )
}

/// Config for in-process apps, which share the test's two workers with the
/// client: health checks every 500 ms with a 400 ms timeout, so a busy moment
/// never marks a backend down and spoils an exact count.
fn calm_body(backends: &str) -> String {
    format!(
        "[health]\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\n\
         [timeouts]\nconnect = \"500ms\"\nresponse = \"5s\"\n\n{backends}"
    )
}

fn entries(apps: &Apps, which: &[usize]) -> String {
    let list: Vec<(&str, SocketAddr, u32)> = which
        .iter()
        .map(|&i| (apps.apps[i].id(), apps.addrs[i], 1))
        .collect();
    backend_entries(&list)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Asserts `backend` is exposed with the zero values of a backend that has
/// served nothing (health checks may already have run).
fn assert_fresh(m: &Scrape, backend: &str) {
    for code in CODES {
        assert_eq!(
            m.backend("lb_requests_total", backend, &[("code", code)]),
            0.0,
            "{backend} {code}"
        );
    }
    for kind in KINDS {
        let v = m.backend("lb_upstream_errors_total", backend, &[("kind", kind)]);
        assert_eq!(v, 0.0, "{backend} errors {kind}");
    }
    assert_eq!(
        m.backend("lb_request_duration_seconds_count", backend, &[]),
        0.0
    );
    assert_eq!(
        m.backend("lb_request_duration_seconds_sum", backend, &[]),
        0.0
    );
    assert_eq!(
        m.backend(
            "lb_request_duration_seconds_bucket",
            backend,
            &[("le", "+Inf")]
        ),
        0.0
    );
    assert_eq!(m.backend("lb_backend_in_flight", backend, &[]), 0.0);
    assert_eq!(
        m.backend("lb_backend_up", backend, &[]),
        1.0,
        "backends start up"
    );
    assert_eq!(m.backend("lb_backend_weight", backend, &[]), 1.0);
    assert_eq!(m.backend("lb_backend_effective_weight", backend, &[]), 1.0);
    for (state, v) in STATES.iter().zip([1.0, 0.0, 0.0]) {
        let got = m.backend("lb_backend_circuit_state", backend, &[("state", state)]);
        assert_eq!(got, v, "{backend} circuit {state}");
    }
    assert_eq!(m.backend("lb_backend_ewma_seconds", backend, &[]), 0.0);
    assert_eq!(m.backend("lb_retries_total", backend, &[]), 0.0);
    // Health checks may have run: present, none failed.
    m.backend("lb_health_checks_total", backend, &[("result", "success")]);
    assert_eq!(
        m.backend("lb_health_checks_total", backend, &[("result", "failure")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_and_every_backend_starts_at_zero() {
    serial(async {
        let apps = Apps::plain(4).await;
        let lb = Lb::start(&calm_body(&apps.backends_toml(&[1, 1, 1, 1]))).await;
        let m0 = lb.scrape().await;
        for f in PER_BACKEND {
            assert_eq!(
                m0.label_values(f, "backend"),
                NAMES.iter().map(|s| s.to_string()).collect(),
                "{f}: every configured backend, no other"
            );
        }
        for b in NAMES {
            assert_fresh(&m0, b);
        }
        assert_eq!(m0.value("lb_no_backend_total", &[]), 0.0);
        assert_eq!(m0.value("lb_queue_depth", &[]), 0.0);
        assert_eq!(m0.value("lb_queue_wait_seconds_count", &[]), 0.0);
        for reason in ["full", "timeout"] {
            assert_eq!(
                m0.value("lb_queue_rejected_total", &[("reason", reason)]),
                0.0
            );
        }
        for r in ["success", "failure"] {
            assert_eq!(m0.value("lb_config_reloads_total", &[("result", r)]), 0.0);
        }
        for k in ["weights", "mode", "algorithm", "reload"] {
            assert_eq!(m0.value("lb_admin_changes_total", &[("kind", k)]), 0.0);
        }
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(m0.value("lb_build_info", &[("version", version)]), 1.0);
        // CPU time is whole seconds (0 this early); the others cannot be 0.
        assert!(m0.get("process_cpu_seconds_total", &[]).is_some());
        for p in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(m0.get(p, &[]).is_some_and(|v| v > 0.0), "{p} missing or 0");
        }
        println!(
            "[exact] at start: {} series, families {:?}",
            m0.series.len(),
            m0.names()
                .into_iter()
                .filter(|n| n.starts_with("lb_"))
                .collect::<Vec<_>>()
        );

        // 40 sequential requests, equal weights, round robin: exactly 10 each.
        const N: usize = 40;
        let api0 = apps.api_counts();
        let picks = route_seq(&lb, N).await;
        let by_header = tally(&picks, &NAMES);
        // lb counts a request when it has finished logging it, a moment after
        // the client has the response: poll (bounded) until all 40 are in.
        let two_xx = |m: &Scrape| -> f64 {
            NAMES
                .iter()
                .map(|b| m.backend("lb_requests_total", b, &[("code", "2xx")]))
                .sum()
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut m1 = lb.scrape().await;
        while two_xx(&m1) < N as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            m1 = lb.scrape().await;
        }
        // And nothing more arrives afterwards.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m2 = lb.scrape().await;
        let api: Vec<u64> = apps
            .api_counts()
            .iter()
            .zip(&api0)
            .map(|(a, b)| a - b)
            .collect();
        let d = |m: &Scrape, f: &str, b: &str, l: &[(&str, &str)]| {
            m.backend(f, b, l) - m0.backend(f, b, l)
        };
        for b in NAMES {
            let count = d(&m2, "lb_request_duration_seconds_count", b, &[]);
            let sum = d(&m2, "lb_request_duration_seconds_sum", b, &[]);
            println!(
                "[exact] {b}: 2xx +{}, other codes +{}, duration count +{count}, sum +{:.4} s, \
                 +Inf bucket {}, ewma {:.4} s, in flight {}",
                d(&m2, "lb_requests_total", b, &[("code", "2xx")]),
                ["1xx", "3xx", "4xx", "5xx"]
                    .iter()
                    .map(|c| d(&m2, "lb_requests_total", b, &[("code", c)]))
                    .sum::<f64>(),
                sum,
                m2.backend("lb_request_duration_seconds_bucket", b, &[("le", "+Inf")]),
                m2.backend("lb_backend_ewma_seconds", b, &[]),
                m2.backend("lb_backend_in_flight", b, &[]),
            );
        }
        println!("[exact] X-Backend tally {by_header:?}, app-side counts {api:?}");
        assert_eq!(by_header, vec![10; 4]);
        assert_eq!(api, vec![10; 4]);
        for b in NAMES {
            assert_eq!(
                d(&m2, "lb_requests_total", b, &[("code", "2xx")]),
                10.0,
                "{b} 2xx"
            );
            for c in ["1xx", "3xx", "4xx", "5xx"] {
                assert_eq!(
                    d(&m2, "lb_requests_total", b, &[("code", c)]),
                    0.0,
                    "{b} {c}"
                );
            }
            assert_eq!(
                d(&m2, "lb_request_duration_seconds_count", b, &[]),
                10.0,
                "{b} count"
            );
            assert_eq!(
                m2.backend("lb_request_duration_seconds_bucket", b, &[("le", "+Inf")]),
                m2.backend("lb_request_duration_seconds_count", b, &[]),
                "{b}: +Inf bucket = count"
            );
            // Ten loopback requests take more than 0 and (with 2 cores) far
            // less than 10 s in total.
            let sum = d(&m2, "lb_request_duration_seconds_sum", b, &[]);
            assert!(sum > 0.0 && sum < 10.0, "{b} sum {sum}");
            assert_eq!(m2.backend("lb_backend_in_flight", b, &[]), 0.0);
            assert!(m2.backend("lb_backend_ewma_seconds", b, &[]) > 0.0);
            // Buckets are cumulative.
            let mut buckets: Vec<(f64, f64)> = m2
                .series
                .iter()
                .filter(|s| {
                    s.name == "lb_request_duration_seconds_bucket"
                        && s.labels.get("backend").is_some_and(|x| x == b)
                })
                .map(|s| {
                    let le = &s.labels["le"];
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    (le, s.value)
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{b}: {buckets:?}"
            );
        }
        assert_eq!(two_xx(&m1), N as f64, "all 40 counted within 2 s");
        assert_eq!(two_xx(&m2), N as f64, "and no more afterwards");
    })
    .await;
}

/// Polls /metrics every 50 ms (at most `timeout`) until `cond`; the time it
/// took and the last scrape. Every scrape's circuit gauges must be one-hot.
async fn scrape_until(
    lb: &Lb,
    timeout: Duration,
    seen_open: &mut bool,
    cond: impl Fn(&Scrape) -> bool,
) -> (Option<Duration>, Scrape) {
    let t0 = Instant::now();
    loop {
        let m = lb.scrape().await;
        for b in NAMES {
            let hot: f64 = STATES
                .iter()
                .map(|s| m.backend("lb_backend_circuit_state", b, &[("state", s)]))
                .sum();
            assert_eq!(hot, 1.0, "{b}: circuit gauges not one-hot");
        }
        *seen_open |= m.backend("lb_backend_circuit_state", "app-2", &[("state", "open")]) == 1.0;
        if cond(&m) {
            return (Some(t0.elapsed()), m);
        }
        if t0.elapsed() >= timeout {
            return (None, m);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_a_killed_and_restarted_backend() {
    serial(async {
        const RATE: u32 = 100;
        let mut apps = AppProcess::fleet(4, |_| vec![]).await;
        let lb = Lb::start(&body(&process_backends_toml(&apps))).await;
        let load = Load::start(
            &lb.url("/api/whoami"),
            RATE,
            RATE as usize * 30,
            Duration::from_secs(30),
            Method::GET,
        );
        let warm = load
            .wait_for(Duration::from_secs(5), |s| (s.per_backend().len() == 4).then_some(()))
            .await;
        assert!(warm.is_some(), "warm-up: {:?}", load.with_samples(|s| s.outcomes()));
        let m0 = lb.scrape().await;
        let mut seen_open = false;

        let t_kill = Instant::now();
        apps[1].kill9();
        let (down, m_down) = scrape_until(&lb, Duration::from_secs(5), &mut seen_open, |m| {
            m.backend("lb_backend_up", "app-2", &[]) == 0.0
        })
        .await;
        // Keep the load on a dead backend for a while: long enough for the
        // circuit (if it opened) to show in scrapes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, m_dead) =
            scrape_until(&lb, Duration::ZERO, &mut seen_open, |_| true).await;

        let t_restart = Instant::now();
        apps[1].restart();
        apps[1].wait_healthy().await;
        let (up, _) = scrape_until(&lb, Duration::from_secs(5), &mut seen_open, |m| {
            m.backend("lb_backend_up", "app-2", &[]) == 1.0
        })
        .await;
        let (closed, m_back) = scrape_until(&lb, Duration::from_secs(8), &mut seen_open, |m| {
            m.backend("lb_backend_up", "app-2", &[]) == 1.0
                && m.backend("lb_backend_circuit_state", "app-2", &[("state", "closed")]) == 1.0
                && m.backend("lb_requests_total", "app-2", &[("code", "2xx")])
                    > m_dead.backend("lb_requests_total", "app-2", &[("code", "2xx")])
        })
        .await;
        let samples = load.stop().await;

        let dd = |f: &str, l: &[(&str, &str)]| m_dead.backend(f, "app-2", l) - m0.backend(f, "app-2", l);
        let errors: Vec<(&str, f64)> = KINDS
            .iter()
            .map(|k| (*k, dd("lb_upstream_errors_total", &[("kind", k)])))
            .collect();
        let failed_checks = dd("lb_health_checks_total", &[("result", "failure")]);
        let down_lim = INTERVAL * FALL + SLACK;
        let up_lim = INTERVAL * RISE + SLACK;
        // After a restart the circuit may still be open for up to MAX_OPEN_FOR
        // (re-opened once with the doubled period), then one probe closes it.
        let closed_lim = MAX_OPEN_FOR + INTERVAL * RISE + SLACK;
        println!(
            "[kill9] app-2 killed: lb_backend_up 0 after {} (limit {}); circuit open seen: \
             {seen_open}; circuit at the down scrape {:?}; while dead: errors {errors:?}, retries +{}, \
             failed health checks +{failed_checks}",
            down.map_or("never".into(), secs),
            secs(down_lim),
            STATES
                .iter()
                .map(|s| (*s, m_down.backend("lb_backend_circuit_state", "app-2", &[("state", s)])))
                .collect::<Vec<_>>(),
            dd("lb_retries_total", &[]),
        );
        println!(
            "[kill9] restarted {} after the kill: up 1 after {} (limit {}), closed and serving \
             after {} (limit {}); circuit {:?}; load sent {}, failed {}, outcomes {:?}",
            secs(t_restart - t_kill),
            up.map_or("never".into(), secs),
            secs(up_lim),
            closed.map_or("never".into(), secs),
            secs(closed_lim),
            STATES
                .iter()
                .map(|s| (*s, m_back.backend("lb_backend_circuit_state", "app-2", &[("state", s)])))
                .collect::<Vec<_>>(),
            samples.len(),
            samples.failed().len(),
            samples.outcomes(),
        );
        // FALL failed probes one INTERVAL apart (a refused connect fails at
        // once) mark it down; SLACK covers scheduling and the 50 ms polls.
        assert!(down.is_some_and(|d| d <= down_lim), "lb_backend_up stayed 1: {down:?}");
        assert!(failed_checks >= f64::from(FALL), "failed checks counted: {failed_checks}");
        // At RATE/4 = 25 req/s to app-2, requests reached the dead backend
        // before health took it out (≥ 1 probe interval = 200 ms ≈ 5 requests).
        let connect_or_reset: f64 = errors
            .iter()
            .filter(|(k, _)| *k == "connect" || *k == "reset")
            .map(|(_, v)| v)
            .sum();
        assert!(connect_or_reset >= 1.0, "upstream errors not counted: {errors:?}");
        assert!(up.is_some_and(|d| d <= up_lim), "lb_backend_up not back to 1: {up:?}");
        assert!(closed.is_some_and(|d| d <= closed_lim), "circuit not closed / app-2 not serving: {closed:?}");
        assert_eq!(m_back.backend("lb_backend_circuit_state", "app-2", &[("state", "open")]), 0.0);
        for b in ["app-1", "app-3", "app-4"] {
            assert_eq!(m_back.backend("lb_backend_up", b, &[]), 1.0, "{b}");
            assert_eq!(m_back.backend("lb_backend_circuit_state", b, &[("state", "closed")]), 1.0, "{b}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    serial(async {
        let apps = Apps::plain(4).await;
        let lb = Lb::start(&calm_body(&apps.backends_toml(&[1, 1, 1, 1]))).await;
        // Fill every kind of series: 2xx, 4xx, histograms, admin changes, a
        // successful and a failed reload.
        route_seq(&lb, 20).await;
        let c = client();
        for _ in 0..4 {
            let r = c.get(lb.url("/no-such-page")).send().await.unwrap();
            assert_eq!(r.status(), 404);
        }
        lb.set_weights(&json!({"app-1": 2})).await;
        lb.set_mode("app-4", "drain").await;
        assert_eq!(lb.reload().await.status, 200);
        std::fs::write(lb.config_path(), "[[backends]]\nname = 1\n").unwrap();
        assert_eq!(lb.reload().await.status, 422);
        let m = lb.scrape().await;

        let promtool = which("promtool").unwrap_or_else(|| {
            panic!(
                "promtool not found on PATH: run scripts/deps.sh (installs Debian's `prometheus`)"
            )
        });
        let out = {
            use std::io::Write;
            let mut child = std::process::Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run promtool");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(m.text.as_bytes())
                .unwrap();
            child.wait_with_output().expect("promtool output")
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "[promtool] {} series, {} bytes; `promtool check metrics` exit {:?}\n\
             stdout:\n{stdout}\nstderr:\n{stderr}",
            m.series.len(),
            m.text.len(),
            out.status.code()
        );
        // Not "any line containing 'error'": metric names such as
        // lb_upstream_errors_total contain it. promtool's own contract instead.
        let lint = promtool_verdict(out.status.code(), &format!("{stdout}{stderr}"), &m.text)
            .unwrap_or_else(|e| panic!("promtool rejected the exposition: {e}"));
        println!(
            "[promtool] {} lint remarks (style advice): {lint:?}",
            lint.len()
        );
    })
    .await;
}

/// Reads `promtool check metrics` (2.x, `cmd/promtool/metrics.go`): exit 0 and
/// silence when clean; exit 3 with one `<metric> <remark>` line per lint problem
/// (style advice, e.g. a missing `_total`); exit 1 with `error while linting:
/// ...` when the exposition does not parse. Ok(remarks) only for the first two,
/// and only if every remark names a metric of `exposition`: any other
/// output is something promtool has to say about the text as a whole.
fn promtool_verdict(
    code: Option<i32>,
    output: &str,
    exposition: &str,
) -> Result<Vec<(String, String)>, String> {
    // Names as promtool may report them: `# TYPE` families and sample names.
    let families: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split_whitespace().next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    let mut remarks = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once(' ') {
            Some((metric, text)) if families.contains(metric) => {
                remarks.push((metric.to_string(), text.to_string()))
            }
            _ => return Err(format!("exit {code:?}: {line}")),
        }
    }
    match (code, remarks.is_empty()) {
        (Some(0), true) | (Some(3), false) => Ok(remarks),
        _ => Err(format!(
            "exit {code:?} with {} remarks: {output}",
            remarks.len()
        )),
    }
}

#[test]
fn promtool_output_is_read_by_its_contract() {
    let text = "# HELP lb_upstream_errors_total x\n# TYPE lb_upstream_errors_total counter\n\
                lb_upstream_errors_total 1\n# TYPE lb_up gauge\nlb_up 1\n";
    assert_eq!(promtool_verdict(Some(0), "", text), Ok(vec![]));
    // A lint remark about a metric whose name contains "error" is advice.
    let lint = "lb_up no help text\n";
    assert_eq!(
        promtool_verdict(Some(3), lint, text),
        Ok(vec![("lb_up".into(), "no help text".into())])
    );
    let about_errors = "lb_upstream_errors_total counter metrics should have \"_total\" suffix";
    assert!(promtool_verdict(Some(3), about_errors, text).is_ok());
    // A parse error, a remark about a metric we do not expose, or an exit
    // code that does not fit the output: rejected.
    let broken = "error while linting: text format parsing error in line 3: expected float";
    assert!(promtool_verdict(Some(1), broken, text).is_err());
    assert!(promtool_verdict(Some(3), "other_metric no help text", text).is_err());
    assert!(promtool_verdict(Some(1), "", text).is_err());
    assert!(promtool_verdict(Some(0), lint, text).is_err());
}

/// `name` on PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_series_disappear_on_reload() {
    serial(async {
        let apps = Apps::plain(3).await;
        let lb = Lb::start(&calm_body(&entries(&apps, &[0, 1, 2]))).await;
        route_seq(&lb, 9).await;
        let m0 = lb.scrape().await;
        assert_eq!(
            m0.backend("lb_requests_total", "app-3", &[("code", "2xx")]),
            3.0
        );

        lb.write_config(&calm_body(&entries(&apps, &[0, 1])));
        assert_eq!(lb.reload().await.status, 200);
        let m1 = lb.scrape().await;
        let left = m1.with_label("backend", "app-3");
        println!(
            "[removed] before: {} series with backend=\"app-3\"; after the reload: {} {left:?}",
            m0.with_label("backend", "app-3").len(),
            left.len()
        );
        assert!(left.is_empty(), "app-3 series remain");
        for f in PER_BACKEND {
            let want: std::collections::BTreeSet<String> =
                ["app-1", "app-2"].iter().map(|s| s.to_string()).collect();
            assert_eq!(m1.label_values(f, "backend"), want, "{f}");
        }
        // The remaining backends kept their counts.
        for b in ["app-1", "app-2"] {
            assert_eq!(
                m1.backend("lb_requests_total", b, &[("code", "2xx")]),
                3.0,
                "{b}"
            );
        }

        // Added back: present again, from zero (it is a new backend now).
        lb.write_config(&calm_body(&entries(&apps, &[0, 1, 2])));
        assert_eq!(lb.reload().await.status, 200);
        let m2 = lb.scrape().await;
        println!(
            "[removed] re-added: {} series with backend=\"app-3\", 2xx {}",
            m2.with_label("backend", "app-3").len(),
            m2.backend("lb_requests_total", "app-3", &[("code", "2xx")])
        );
        assert_eq!(
            m2.with_label("backend", "app-3").len(),
            m0.with_label("backend", "app-3").len()
        );
        assert_eq!(
            m2.backend("lb_requests_total", "app-3", &[("code", "2xx")]),
            0.0
        );
    })
    .await;
}
