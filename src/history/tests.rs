use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::config::{Algorithm, Config};
use crate::state::{Mode, State};

fn state() -> State {
    let text = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nweight = 10\n\
                [[backends]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\nweight = 10\n";
    State::new(Arc::new(Config::from_toml(text).unwrap()))
}

/// `n` answers of `status` taking `secs` each on backend `i`.
fn answer(s: &State, i: usize, n: usize, status: u16, secs: f64) {
    let snap = s.load();
    for _ in 0..n {
        snap.backends[i].stats.metrics.observe(status, secs);
    }
}

fn kinds(h: &History) -> Vec<(&'static str, String, String, String)> {
    h.events()
        .into_iter()
        .map(|e| (e.kind, e.backend, e.from, e.to))
        .collect()
}

#[test]
fn quantile_interpolates_like_histogram_quantile() {
    let bounds = [1.0, 2.0, 4.0];
    // 10 observations in (1, 2]: the median is halfway through that bucket.
    assert_eq!(quantile(0.5, &bounds, &[0, 10, 0, 0]), Some(1.5));
    // 50 in (0, 1], 50 in (2, 4]: p99 is rank 99, 49/50 into the last bucket.
    let p99 = quantile(0.99, &bounds, &[50, 0, 50, 0]).unwrap();
    assert!((p99 - (2.0 + 2.0 * 49.0 / 50.0)).abs() < 1e-9, "{p99}");
    // Ranks in +Inf answer the highest finite bound, as Prometheus does.
    assert_eq!(quantile(0.99, &bounds, &[1, 0, 0, 99]), Some(4.0));
    assert_eq!(quantile(0.5, &bounds, &[0, 0, 0, 0]), None);
}

#[test]
fn points_and_window_follow_the_counters() {
    let s = state();
    let h = History::new();
    let now = Instant::now();
    h.sample(&s, now, 1_000);
    // 12 seconds of 100 answers/s on `a`, 10 % of them 5xx, all 3-4 ms
    // (bucket (2.5 ms, 5 ms]).
    for sec in 1..=12u64 {
        answer(&s, 0, 90, 200, 0.003);
        answer(&s, 0, 10, 503, 0.004);
        h.sample(&s, now, 1_000 + sec * 1_000);
    }
    let v = h.view(&s, now, 13_000);
    let a = &v.backends[0];
    assert_eq!(a.series.rps.len(), 12);
    assert!(
        a.series.rps.iter().all(|r| *r == 100.0),
        "{:?}",
        a.series.rps
    );
    assert!(a.series.error_rate.iter().all(|r| *r == 0.1));
    // The window spans the last 10 seconds: 1,000 answers.
    assert_eq!(a.window.rps, 100.0);
    assert_eq!(a.window.error_rate, 0.1);
    let (p50, p99) = (a.window.p50_ms.unwrap(), a.window.p99_ms.unwrap());
    assert!(
        (2.5..=5.0).contains(&p50) && (2.5..=5.0).contains(&p99),
        "{p50} {p99}"
    );
    assert!(p50 < p99);
    // `b` had nothing: zero rates, no percentiles.
    let b = &v.backends[1];
    assert_eq!(b.window.rps, 0.0);
    assert_eq!(b.window.p99_ms, None);
    assert_eq!(b.series.effective_weight.last(), Some(&10));

    // Two requests waiting in lb's queue show at the next sample.
    let t = tokio::time::Instant::now();
    let waiting = (s.queue.join(8, t), s.queue.join(8, t));
    assert_eq!(v.queue.depth, 0);
    h.sample(&s, now, 14_000);
    let v = h.view(&s, now, 14_000);
    assert_eq!(v.queue.depth, 2);
    assert_eq!(v.queue.series.len(), 14);
    assert_eq!(v.queue.series.last(), Some(&2));
    drop(waiting);
    assert_eq!(h.view(&s, now, 14_000).queue.depth, 0);
}

#[test]
fn rings_have_fixed_sizes() {
    let s = state();
    let h = History::new();
    let now = Instant::now();
    for sec in 0..(POINTS as u64 + 50) {
        h.sample(&s, now, sec * 1_000);
    }
    let v = h.view(&s, now, 0);
    assert_eq!(v.backends[0].series.rps.len(), POINTS);
    for w in 0..(EVENTS as u32 + 7) {
        s.update(|c| {
            let mut bs = c.backends.clone();
            bs[0].weight = w + 1;
            c.with(bs, c.algorithm)
        });
        h.sample(&s, now, 1_000_000 + u64::from(w));
    }
    let events = h.events();
    assert_eq!(events.len(), EVENTS);
    assert_eq!(events.last().unwrap().to, (EVENTS as u32 + 7).to_string());
}

#[test]
fn state_changes_become_events_with_their_time() {
    let s = state();
    let h = History::new();
    let now = Instant::now();
    h.sample(&s, now, 1_000);
    assert!(
        h.events().is_empty(),
        "the first sample is the starting point"
    );

    s.load().backends[1]
        .stats
        .healthy
        .store(false, Ordering::Relaxed);
    let cb = s.load().config.circuit_breaker.clone();
    for _ in 0..cb.failures {
        let c = &s.load().backends[0].stats.circuit;
        let permit = c.acquire(&cb, now).unwrap();
        c.on_failure(&cb, permit, now);
    }
    s.update(|c| {
        let mut bs = c.backends.clone();
        bs[0].mode = Mode::Drain;
        bs[1].weight = 3;
        c.with(bs, Algorithm::LeastConn)
    });
    h.sample(&s, now, 2_000);
    let mut got = kinds(&h);
    got.sort();
    let want = |k: &'static str, b: &str, f: &str, t: &str| (k, b.into(), f.into(), t.into());
    assert_eq!(
        got,
        vec![
            want("algorithm", "-", "round_robin", "least_conn"),
            want("circuit", "a", "closed", "open"),
            want("health", "b", "up", "down"),
            want("mode", "a", "active", "drain"),
            want("weight", "b", "10", "3"),
        ]
    );
    let v = h.view(&s, now, 2_500);
    assert_eq!(
        (v.backends[1].health, v.backends[1].health_since_ms),
        ("down", 2_000)
    );
    assert_eq!(
        (v.backends[0].circuit, v.backends[0].circuit_since_ms),
        ("open", 2_000)
    );
    assert_eq!(
        v.backends[0].health_since_ms, 1_000,
        "unchanged since the start"
    );
    assert_eq!(v.events[0].t_ms, 2_000, "newest first");

    // Not sampled yet: the view already shows it, dated now.
    s.load().backends[1]
        .stats
        .healthy
        .store(true, Ordering::Relaxed);
    let v = h.view(&s, now + Duration::from_millis(10), 2_600);
    assert_eq!(
        (v.backends[1].health, v.backends[1].health_since_ms),
        ("up", 2_600)
    );
}

#[test]
fn backends_joining_and_leaving_are_pool_events() {
    let s = state();
    let h = History::new();
    let now = Instant::now();
    h.sample(&s, now, 1_000);
    s.update(|c| c.with(c.backends[..1].to_vec(), c.algorithm));
    h.sample(&s, now, 2_000);
    let text = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
                [[backends]]\nname = \"c\"\naddr = \"127.0.0.1:3\"\n";
    let cfg = Arc::new(Config::from_toml(text).unwrap());
    s.update(|c| crate::state::build(&cfg, Some(c), c.algorithm));
    h.sample(&s, now, 3_000);
    h.record("pool", "c", "starting", "ready", 3_500);
    assert_eq!(
        kinds(&h),
        vec![
            ("pool", "b".into(), "member".into(), "removed".into()),
            ("weight", "a".into(), "10".into(), "1".into()),
            ("pool", "c".into(), "-".into(), "added".into()),
            ("pool", "c".into(), "starting".into(), "ready".into()),
        ]
    );
    let names: Vec<String> = h
        .view(&s, now, 4_000)
        .backends
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn certificates_show_days_left_and_are_null_without_tls() {
    let v = History::new().view(&state(), Instant::now(), 1_000);
    assert_eq!(
        serde_json::to_value(&v).unwrap()["certificates"],
        json!(null)
    );

    // A config with [tls] needs a loadable certificate: build one.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::tls::certs::test_pair(dir.path(), &["localhost"]);
    let text = format!(
        "[tls]\nlisten = \"127.0.0.1:8443\"\n\
         certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
        cert.display(),
        key.display()
    );
    let s = State::new(Arc::new(Config::from_toml(&text).unwrap()));
    let not_after = s.load().config.tls.as_ref().unwrap().loaded.certs()[0].not_after;
    // Days left count from the answer's `now_ms`: whole days, highlighted
    // under tls::certs::WARN_DAYS (14).
    let at = |days: i64, secs: i64| {
        let now_ms = ((not_after - days * 86_400 - secs) * 1000) as u64;
        let v = History::new().view(&s, Instant::now(), now_ms);
        serde_json::to_value(&v).unwrap()["certificates"].clone()
    };
    let c = at(30, 0);
    assert_eq!(c.as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c[0]["names"], json!(["localhost"]));
    assert_eq!(c[0]["source"], "file");
    assert_eq!(c[0]["days_left"], 30);
    assert_eq!(c[0]["expiring"], false);
    assert!(c[0]["not_after"].as_str().unwrap().ends_with('Z'), "{c}");
    assert!(!c[0]["issuer"].as_str().unwrap().is_empty(), "{c}");
    assert_eq!(at(14, 0)[0]["expiring"], false);
    let c = at(13, 3_600);
    assert_eq!(
        (c[0]["days_left"].clone(), c[0]["expiring"].clone()),
        (json!(13), json!(true))
    );
    assert_eq!(at(0, -1)[0]["days_left"], -1);
}

#[test]
fn a_ramping_backend_shows_its_slow_start_ratio() {
    let text = "[balancer]\nslow_start = \"10s\"\n\
                [[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n";
    let s = State::new(Arc::new(Config::from_toml(text).unwrap()));
    let joined = Instant::now();
    let ratio = |after: Duration| {
        History::new().view(&s, joined + after, 1_000).backends[0].slow_start_ratio
    };
    // Joining starts the ramp: 10 % + 90 % * elapsed / 10 s (elapsed counts
    // from a moment before `joined`, hence the upper bounds).
    assert!(
        (0.55..0.6).contains(&ratio(Duration::from_secs(5))),
        "{}",
        ratio(Duration::from_secs(5))
    );
    assert_eq!(ratio(Duration::from_secs(11)), 1.0);
    // Without slow start every backend is at its full share.
    assert_eq!(
        History::new()
            .view(&state(), Instant::now(), 1_000)
            .backends[0]
            .slow_start_ratio,
        1.0
    );
}
