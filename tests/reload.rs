//! Config reload (SPEC "Admin API": `POST /admin/reload`; "CLI": SIGHUP) through
//! a real lb: reloads under load lose nothing, an invalid file changes nothing,
//! added backends take traffic at once (hostnames resolved by the reload),
//! removed ones finish what they hold and get nothing new, and remaining
//! backends keep their operator state.
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
/// Longest wait for lb to act on a SIGHUP (a reload is a file read, a
/// validation and one snapshot swap: milliseconds; the rest is slack for a
/// loaded 2-core machine).
const SIGHUP_WITHIN: Duration = Duration::from_secs(5);

async fn serial(test: impl Future<Output = ()>) {
    common::serial("reload", TEST_LIMIT, test).await;
}

/// Config body: health checks and timeouts, then `backends` as
/// `(name, addr, weight)`.
fn body(backends: &[(&str, SocketAddr, u32)]) -> String {
    format!("{HEAD}{}", backend_entries(backends))
}

/// Health checks every 500 ms (400 ms timeout: in-process apps share the
/// test's 2 workers, so a tighter one could mark a busy app down and spoil
/// the exact routing tallies below).
const HEAD: &str = "[health]\ninterval = \"500ms\"\ntimeout = \"400ms\"\nrise = 2\nfall = 2\n\n\
                    [timeouts]\nconnect = \"500ms\"\nresponse = \"5s\"\n\n";

/// `(app-i, addr, weights[i])` for the apps selected by `which` (0-based).
fn pick<'a>(apps: &'a Apps, which: &[usize], weights: &[u32]) -> Vec<(&'a str, SocketAddr, u32)> {
    which
        .iter()
        .zip(weights)
        .map(|(&i, &w)| (apps.apps[i].id(), apps.addrs[i], w))
        .collect()
}

fn reloads(m: &Scrape, result: &str) -> f64 {
    m.value("lb_config_reloads_total", &[("result", result)])
}

/// Polls /metrics until `lb_config_reloads_total{result}` reaches `target`.
async fn wait_reloads(lb: &Lb, result: &str, target: f64) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < SIGHUP_WITHIN {
        if reloads(&lb.scrape().await, result) >= target {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing() {
    serial(async {
        const RELOADS: usize = 20;
        const RATE: u32 = 100;
        let apps = Apps::plain(4).await;
        // The file alternates app-1's weight between 2 and 1, so every reload
        // really swaps in a different snapshot (and rebuilds the scheduler).
        let cfg = |i: usize| body(&pick(&apps, &[0, 1, 2, 3], &[2 - (i % 2) as u32, 1, 1, 1]));
        let lb = Lb::start(&cfg(1)).await;
        let m0 = lb.scrape().await;
        let (ok0, bad0) = (reloads(&m0, "success"), reloads(&m0, "failure"));

        let load = Load::start(
            &lb.url("/api/whoami"),
            RATE,
            RATE as usize * 30,
            Duration::from_secs(30),
            Method::GET,
        );
        let warm = load
            .wait_for(Duration::from_secs(5), |s| {
                (s.per_backend().len() == 4).then_some(())
            })
            .await;
        assert!(
            warm.is_some(),
            "warm-up: {:?}",
            load.with_samples(|s| s.outcomes())
        );

        let mut took = Vec::new();
        let mut etags = Vec::new();
        for i in 0..RELOADS {
            lb.write_config(&cfg(i));
            let t = Instant::now();
            if i % 2 == 0 {
                lb.sighup();
                let seen = wait_reloads(&lb, "success", ok0 + (i + 1) as f64).await;
                assert!(
                    seen.is_some(),
                    "SIGHUP #{i} not applied within {SIGHUP_WITHIN:?}"
                );
            } else {
                let r = lb.reload().await;
                assert_eq!(r.status, 200, "POST /admin/reload #{i}: {}", r.text);
                assert_eq!(r.json["status"], "reloaded");
                etags.push(r.etag);
            }
            took.push(t.elapsed());
            // The file's weight is what lb now uses (no operator override).
            let w = lb.weights().await;
            assert_eq!(
                w["app-1"],
                2 - (i % 2) as u64,
                "reload #{i} not applied: {w:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Requests sent during the last reload complete too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = load.stop().await;
        let m1 = lb.scrape().await;
        let (ok, bad) = (
            reloads(&m1, "success") - ok0,
            reloads(&m1, "failure") - bad0,
        );
        let changes = m1.value("lb_admin_changes_total", &[("kind", "reload")])
            - m0.value("lb_admin_changes_total", &[("kind", "reload")]);

        took.sort();
        println!(
            "[reloads] {RELOADS} reloads (SIGHUP/POST alternating) under {RATE} req/s: \
             sent {}, failed {}, outcomes {:?}, per backend {:?}; \
             lb_config_reloads_total +{ok} success, +{bad} failure; \
             lb_admin_changes_total{{kind=\"reload\"}} +{changes}; POST ETags {etags:?}; \
             reload applied in median {:.1} ms, max {:.1} ms (SIGHUP measured via /metrics polls)",
            samples.len(),
            samples.failed().len(),
            samples.outcomes(),
            samples.per_backend(),
            ms(took[took.len() / 2]),
            ms(took[took.len() - 1]),
        );
        // A reload swaps one snapshot; requests hold the snapshot they started
        // with: not a single request may fail.
        assert!(
            samples.failed().is_empty(),
            "failed: {:?}",
            samples.outcomes()
        );
        // The loop alone lasts at least RELOADS × 200 ms = 4 s at RATE/s: at
        // least 400 requests straddled the reloads.
        assert!(
            samples.len() >= 400,
            "load too small to mean anything: {}",
            samples.len()
        );
        assert_eq!(ok, RELOADS as f64, "successful reloads counted");
        assert_eq!(bad, 0.0, "failed reloads counted");
        assert_eq!(
            changes, RELOADS as f64,
            "each applied reload is an admin change"
        );
        // Every reload is a new state version: a new ETag each time.
        assert!(
            etags.iter().all(|e| !e.is_empty()),
            "ETag missing: {etags:?}"
        );
        let distinct: std::collections::BTreeSet<&String> = etags.iter().collect();
        assert_eq!(distinct.len(), etags.len(), "ETags repeat: {etags:?}");
        // Every backend kept serving throughout.
        assert_eq!(
            samples.per_backend().len(),
            4,
            "{:?}",
            samples.per_backend()
        );
        // Through lb's non-blocking log writer: poll.
        assert!(
            eventually(std::time::Duration::from_secs(2), || {
                lb.log_text().matches("SIGHUP: config reloaded").count() >= RELOADS / 2
            })
            .await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_and_changes_nothing() {
    serial(async {
        let apps = Apps::plain(3).await;
        let mut lb = Lb::start(&body(&pick(&apps, &[0, 1, 2], &[1, 1, 1]))).await;
        // An operator weight, so "unchanged" covers operator state too.
        lb.set_weights(&json!({"app-1": 2})).await;
        let w_before = lb.weights().await;
        let etag_before = lb.admin_get("/admin/weights").await.etag;
        let names = ["app-1", "app-2", "app-3"];
        // Weights 2:1:1: any 8 consecutive picks are exactly 4, 2, 2.
        let before = tally(&route_seq(&lb, 8).await, &names);
        let m0 = lb.scrape().await;

        // Invalid file: backends[2].weight out of range; it also drops nothing
        // but changes app-1's file weight, which would show if it were applied.
        lb.write_config(&body(&pick(&apps, &[0, 1, 2], &[7, 1, 5000])));
        let (code, _, check_err) = lb_check(&lb.config_path());
        let r = lb.reload().await;
        let err = r.json["error"].as_str().unwrap_or("").to_string();
        println!("[invalid] lb check exit {code}: {}", check_err.trim());
        println!("[invalid] POST /admin/reload: {} {}", r.status, r.text);
        assert_eq!(code, 2, "lb check on the invalid file");
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(
            err.contains("backends[2].weight: 5000 is out of range 0..=1000"),
            "error must name key, value and rule: {err:?}"
        );
        // The same message lb check prints (after its "lb: <path>: " prefix).
        assert!(
            check_err.trim_end().ends_with(&err),
            "admin error {err:?} differs from lb check's {check_err:?}"
        );

        let w_after = lb.weights().await;
        let etag_after = lb.admin_get("/admin/weights").await.etag;
        let after = tally(&route_seq(&lb, 8).await, &names);
        let m1 = lb.scrape().await;
        println!(
            "[invalid] weights {w_before:?} -> {w_after:?}; ETag {etag_before} -> {etag_after}; \
             routing {before:?} -> {after:?}"
        );
        assert_eq!(w_after, w_before);
        assert_eq!(
            etag_after, etag_before,
            "a rejected reload must not bump the version"
        );
        assert_eq!(before, vec![4, 2, 2]);
        assert_eq!(after, before, "routing changed after a rejected reload");
        assert_eq!(reloads(&m1, "failure") - reloads(&m0, "failure"), 1.0);
        assert_eq!(reloads(&m1, "success"), reloads(&m0, "success"));

        // SIGHUP with the same invalid file: lb logs, keeps running and serving.
        let at = lb.log_len();
        lb.sighup();
        let counted = wait_reloads(&lb, "failure", reloads(&m0, "failure") + 2.0).await;
        let logged = lb
            .wait_log(
                at,
                &["SIGHUP: reload rejected", "backends[2].weight"],
                SIGHUP_WITHIN,
            )
            .await;
        assert!(counted.is_some(), "SIGHUP reload failure not counted");
        assert!(logged.is_some(), "no 'SIGHUP: reload rejected' log line");
        assert!(lb.is_running(), "lb died on SIGHUP with an invalid file");
        let after_hup = tally(&route_seq(&lb, 8).await, &names);
        println!("[invalid] after SIGHUP: running, routing {after_hup:?}");
        assert_eq!(after_hup, before);
        assert_eq!(lb.weights().await, w_before);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_backend_serves_at_once_removed_one_finishes_in_flight() {
    serial(async {
        let apps = Apps::plain(4).await;
        let names = ["app-1", "app-2", "app-3", "app-4"];
        let lb = Lb::start(&body(&pick(&apps, &[0, 1, 2], &[1, 1, 1]))).await;
        let before = tally(&route_seq(&lb, 6).await, &names);
        assert_eq!(before, vec![2, 2, 2, 0]);

        // Add app-4.
        lb.write_config(&body(&pick(&apps, &[0, 1, 2, 3], &[1, 1, 1, 1])));
        let r = lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let first = route_seq(&lb, 8).await;
        let added = tally(&first, &names);
        println!("[add] before {before:?}; first 8 requests after the reload: {first:?}");
        // Equal weights rotate strictly: the new backend is in the very first
        // rotation (first 4 requests) and takes exactly 1 in 4.
        assert!(first[..4].iter().any(|b| b == "app-4"), "{first:?}");
        assert_eq!(added, vec![2, 2, 2, 2]);

        // A slow request in flight on app-2, then a reload that removes app-2.
        const SLOW: Duration = Duration::from_secs(1);
        apps.apps[1].set_delay(SLOW);
        // Four concurrent requests under strict rotation: one reaches app-2.
        let url = lb.url("/api/whoami");
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let (st, b) = get_backend(&c, &url).await;
                (st, b, t.elapsed(), Instant::now())
            }));
        }
        assert!(
            eventually(Duration::from_secs(5), || apps.apps[1].in_flight() > 0).await,
            "no request reached app-2"
        );
        let app2_before = apps.apps[1].api_requests_total();
        lb.write_config(&body(&pick(&apps, &[0, 2, 3], &[1, 1, 1])));
        let t_reload = Instant::now();
        let r = lb.reload().await;
        let reload_took = t_reload.elapsed();
        assert_eq!(r.status, 200, "{}", r.text);
        // Requests started after the reload, while app-2 still holds one.
        let post = route_seq(&lb, 30).await;
        let app2_busy_during = apps.apps[1].in_flight() > 0;
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let slow: Vec<_> = results.iter().filter(|r| r.1 == "app-2").collect();
        let app2_after = apps.apps[1].api_requests_total();
        let after = tally(&post, &names);
        println!(
            "[remove] reload took {:.1} ms; 30 requests after it: {after:?}; app-2 still busy \
             after them: {app2_busy_during}; concurrent batch {:?}; app-2 handled {} more after \
             the reload (the in-flight one)",
            ms(reload_took),
            results
                .iter()
                .map(|(st, b, took, _)| format!("{b} {st} in {:.0} ms", ms(*took)))
                .collect::<Vec<_>>(),
            app2_after - app2_before,
        );
        assert_eq!(slow.len(), 1, "{results:?}");
        let (st, _, took, done) = slow[0];
        assert_eq!(
            *st, 200,
            "the removed backend's in-flight request must complete"
        );
        assert!(*took >= SLOW, "it was really the slow one: {took:?}");
        assert!(
            *done > t_reload + reload_took,
            "it completed after the reload"
        );
        assert_eq!(after, vec![10, 0, 10, 10], "{post:?}");
        // app-2's counter moves at most by the in-flight request completing.
        assert!(app2_after - app2_before <= 1);
        assert!(!lb.backends().await.contains_key("app-2"));
        apps.apps[1].set_delay(Duration::ZERO);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_operator_state_unless_the_file_changes_it() {
    serial(async {
        let apps = Apps::plain(3).await;
        let names = ["app-1", "app-2", "app-3"];
        let lb = Lb::start(&body(&pick(&apps, &[0, 1, 2], &[1, 1, 1]))).await;
        let w = lb.set_weights(&json!({"app-1": 5, "app-2": 3})).await;
        lb.set_mode("app-3", "drain").await;
        // Drained app-3 takes no new requests; 5:3 gives exactly 5, 3 in 8.
        let r0 = tally(&route_seq(&lb, 8).await, &names);
        let b0 = lb.backends().await;
        let totals = |b: &std::collections::BTreeMap<String, serde_json::Value>| -> Vec<u64> {
            names
                .iter()
                .map(|n| b[*n]["requests_total"].as_u64().unwrap())
                .collect()
        };

        // Reload with the very same file.
        let r = lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let w1 = lb.weights().await;
        let b1 = lb.backends().await;
        let r1 = tally(&route_seq(&lb, 8).await, &names);
        println!(
            "[keep] operator weights {w:?}, app-3 drain; same-file reload -> weights {w1:?}, \
             app-3 {}, requests_total {:?} -> {:?}, routing {r0:?} -> {r1:?}",
            b1["app-3"]["mode"],
            totals(&b0),
            totals(&b1)
        );
        assert_eq!(w1, w, "operator weights lost on a same-file reload");
        assert_eq!(b1["app-3"]["mode"], "drain");
        assert_eq!(
            totals(&b1),
            totals(&b0),
            "per-backend stats reset by the reload"
        );
        assert_eq!(r0, vec![5, 3, 0]);
        assert_eq!(r1, r0);

        // The file now changes app-2's weight (1 -> 7): only app-2 takes it.
        lb.write_config(&body(&pick(&apps, &[0, 1, 2], &[1, 7, 1])));
        let r = lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let w2 = lb.weights().await;
        let b2 = lb.backends().await;
        let r2 = tally(&route_seq(&lb, 12).await, &names);
        println!(
            "[keep] file app-2 1 -> 7: weights {w2:?}, app-3 {}, routing {r2:?}",
            b2["app-3"]["mode"]
        );
        let expect: std::collections::BTreeMap<String, u64> =
            [("app-1", 5), ("app-2", 7), ("app-3", 1)]
                .into_iter()
                .map(|(n, w)| (n.to_string(), w))
                .collect();
        assert_eq!(w2, expect);
        assert_eq!(b2["app-3"]["mode"], "drain");
        // 5:7 (app-3 draining): exactly 5 and 7 in any 12 consecutive picks.
        assert_eq!(r2, vec![5, 7, 0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_hostname_backend_is_resolved_at_reload() {
    serial(async {
        let apps = Apps::plain(2).await;
        let dns = TestDns::start(Some(std::net::Ipv4Addr::LOCALHOST)).await;
        // Re-resolution every 10 minutes: only the reload itself can resolve
        // the new name within this test.
        let discovery = format!("[discovery]\ninterval = \"600s\"\nnameservers = [\"{}\"]\n\n", dns.addr);
        let lb = Lb::start(&format!("{discovery}{}", body(&pick(&apps, &[0], &[1])))).await;
        let q0 = dns.queries();
        let port = apps.addrs[1].port();
        lb.write_config(&format!(
            "{discovery}{}[[backends]]\nname = \"app-2\"\naddr = \"app-2.lbtest:{port}\"\nweight = 1\n",
            body(&pick(&apps, &[0], &[1]))
        ));
        let r = lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let q1 = dns.queries();
        let b = lb.backends().await;
        let first = route_seq(&lb, 4).await;
        println!(
            "[hostname] A queries before the reload {q0}, after it {q1}; app-2 resolved {}; \
             first 4 requests after the reload {first:?}",
            b["app-2"]["resolved"]
        );
        assert_eq!(q0, 0, "no hostname configured at start");
        assert!(q1 >= 1, "the reload did not resolve app-2.lbtest");
        assert_eq!(b["app-2"]["resolved"], format!("127.0.0.1:{port}"));
        assert_eq!(tally(&first, &["app-1", "app-2"]), vec![2, 2]);
    })
    .await;
}
