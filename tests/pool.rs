//! The pool end to end with the process provider: a real lb starting real
//! `app` processes on loopback, under open-loop load where the issue asks for
//! "0 failed requests". Every test runs alone (`serial`), is bounded, and
//! kills whatever its pool left on drop ([`PoolGuard`]).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// One test's lb with its pool.
struct PoolLb {
    lb: Lb,
    name: String,
    /// The config body it started with (for reloads).
    body: String,
    /// Its `pool.ports`.
    ports: (u16, u16),
    _guard: PoolGuard,
}

async fn start(extra: &str, app_args: &[&str]) -> PoolLb {
    let (name, lo, hi) = unique_pool();
    let guard = PoolGuard(name.clone());
    let body = pool_toml(&name, (lo, hi), extra, app_args);
    let lb = Lb::start(&body).await;
    PoolLb {
        lb,
        name,
        body,
        ports: (lo, hi),
        _guard: guard,
    }
}

fn ready(v: &Value) -> usize {
    members_in(v, "ready").len()
}

/// Load at `rate`/s on `/api/whoami` for at most `secs`.
fn load(lb: &Lb, rate: u32, secs: u64) -> Load {
    Load::start(
        &lb.url("/api/whoami"),
        rate,
        (rate as usize) * (secs as usize),
        Duration::from_secs(secs),
        reqwest::Method::GET,
    )
}

fn assert_no_failures(samples: &[Sample], what: &str) {
    let failed = samples.failed();
    println!(
        "{what}: {} requests, {} failed, per backend {:?}",
        samples.len(),
        failed.len(),
        samples.per_backend()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} failed, e.g. {:?}",
        failed.len(),
        failed
            .iter()
            .take(3)
            .map(|s| s.outcome())
            .collect::<Vec<_>>()
    );
}

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_size_members_and_reports_them() {
    serial("pool boot", LIMIT, async {
        let p = start("size = 3\nmin_size = 2\nmax_size = 4", &[]).await;
        // lb listens only once the members are healthy.
        let v = p.lb.pool().await;
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "provider",
            "size",
            "min_size",
            "max_size",
            "members",
            "started_total",
            "replaced_total",
            "recycled_total",
            "scaled_up_total",
            "scaled_down_total",
            "rollout",
        ];
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(v["provider"], "process");
        assert_eq!(
            (v["size"].as_u64(), v["min_size"].as_u64()),
            (Some(3), Some(2))
        );
        let names: Vec<String> = members_in(&v, "ready");
        let n = &p.name;
        assert_eq!(
            names,
            [format!("{n}-1"), format!("{n}-2"), format!("{n}-3")]
        );
        let m = &v["members"][0];
        for k in [
            "addr",
            "age_s",
            "memory_bytes",
            "in_flight",
            "requests_total",
        ] {
            assert!(m.get(k).is_some(), "member field {k}: {m}");
        }
        assert_eq!(v["rollout"], Value::Null);
        assert_eq!(v["recycled_total"], json!({"age": 0, "memory": 0}));
        // Members are ordinary backends, spread over by round robin.
        let picks = route_seq(&p.lb, 30).await;
        for name in &names {
            assert_eq!(picks.iter().filter(|b| *b == name).count(), 10, "{picks:?}");
        }
        let s = p.lb.scrape().await;
        assert_eq!(s.value("lb_pool_members", &[("state", "ready")]), 3.0);
        assert_eq!(s.value("lb_pool_starts_total", &[("result", "ok")]), 3.0);
        assert_eq!(
            s.value("lb_pool_recycles_total", &[("reason", "exited")]),
            0.0
        );
        assert_eq!(s.value("lb_pool_scale_total", &[("direction", "up")]), 0.0);
        let page = client()
            .get(p.lb.admin_url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("<section id=\"pool\">"),
            "status page shows the pool"
        );
        assert!(page.contains("process · size 3 (2..=4)"), "{page}");
        assert!(page.contains(&format!("<td>{}-1<div", p.name)), "{page}");
        let history: Value = client()
            .get(p.lb.admin_url("/history"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history["pool"]["members"].as_array().map(Vec::len), Some(3));
        // Memory is read from /proc at check_interval.
        assert!(p
            .lb
            .wait_pool(Duration::from_secs(3), |v| v["members"][0]["memory_bytes"]
                .as_u64()
                > Some(0))
            .await
            .is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_changes_are_bounded_and_applied() {
    serial("pool size", LIMIT, async {
        let p = start("size = 2\nmin_size = 1\nmax_size = 3", &[]).await;
        let r =
            p.lb.admin_put("/admin/pool/size", &json!({"size": 9}))
                .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(
            r.json["error"]
                .as_str()
                .unwrap()
                .contains("out of range 1..=3"),
            "{}",
            r.text
        );
        let r =
            p.lb.admin_put("/admin/pool/size", &json!({"size": "two"}))
                .await;
        assert_eq!(r.status, 400);
        assert_eq!(
            p.lb.pool().await["size"],
            2,
            "a refused change changes nothing"
        );
        let r =
            p.lb.admin_put("/admin/pool/size", &json!({"size": 3}))
                .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(p
            .lb
            .wait_pool(Duration::from_secs(10), |v| ready(v) == 3)
            .await
            .is_some());
        let r =
            p.lb.admin_put("/admin/pool/size", &json!({"size": 1}))
                .await;
        assert_eq!(r.status, 200);
        let v =
            p.lb.wait_pool(Duration::from_secs(10), |v| {
                v["members"].as_array().unwrap().len() == 1
            })
            .await;
        assert!(v.is_some(), "surplus members drained and stopped");
        assert!(p.lb.log_text().contains("pool size"), "audit line");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_members_and_their_stats() {
    serial("pool reload", LIMIT, async {
        let p = start("size = 2", &[]).await;
        route_seq(&p.lb, 10).await;
        let before = p.lb.backends().await;
        assert_eq!(before.len(), 2);
        // A static backend joins and the algorithm changes; the members stay.
        let apps = Apps::plain(1).await;
        p.lb.write_config(&format!(
            "[balancer]\nalgorithm = \"least_conn\"\n{}{}",
            apps.backends_toml(&[1]),
            p.body
        ));
        let r = p.lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let after = p.lb.backends().await;
        let names: Vec<&String> = after.keys().collect();
        let n = &p.name;
        assert_eq!(
            names,
            [&"app-1".to_string(), &format!("{n}-1"), &format!("{n}-2")]
        );
        let total = |m: &std::collections::BTreeMap<String, Value>| -> u64 {
            m.iter()
                .filter(|(k, _)| k.starts_with(n.as_str()))
                .map(|(_, v)| v["requests_total"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(total(&after), 10, "stats kept across the reload");
        assert_eq!(ready(&p.lb.pool().await), 2);
    })
    .await;
}

/// Rewrites the pool's config with `extra` in place of the keys it started
/// with (the command and ports stay), reloads and expects `status`.
async fn reload_with(p: &PoolLb, start_extra: &str, extra: &str, status: u16) -> AdminReply {
    let body = p.body.replacen(start_extra, extra, 1);
    assert_ne!(body, p.body, "the test's keys are in the config");
    p.lb.write_config(&body);
    let r = p.lb.reload().await;
    assert_eq!(r.status, status, "{}", r.text);
    r
}

fn member_field(
    backends: &std::collections::BTreeMap<String, Value>,
    pool: &str,
    key: &str,
) -> Vec<u64> {
    backends
        .iter()
        .filter(|(name, _)| name.starts_with(pool))
        .map(|(_, b)| b[key].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_pool_sizes_and_policy_live() {
    serial("pool reload sizes", LIMIT, async {
        let keys = "size = 2\nmin_size = 1\nmax_size = 4";
        let p = start(keys, &[]).await;
        let n = p.name.clone();
        let count = |v: &Value| v["members"].as_array().unwrap().len();
        // The file's new size grows the pool; weight and capacity reach every
        // member, the running ones included.
        let from = p.lb.log_len();
        let a = "size = 3\nmin_size = 1\nmax_size = 4\nweight = 3\nmax_in_flight = 50";
        reload_with(&p, keys, a, 200).await;
        let grown =
            p.lb.wait_pool(Duration::from_secs(10), |v| ready(v) == 3)
                .await;
        assert!(grown.is_some(), "grew to the file's new size");
        let backends = p.lb.backends().await;
        assert_eq!(member_field(&backends, &n, "weight"), [3, 3, 3]);
        assert_eq!(member_field(&backends, &n, "max_in_flight"), [50, 50, 50]);
        let logged = p.lb.wait_log(
            from,
            &[
                "reload: [pool] changes applied",
                "pool.size, pool.weight, pool.max_in_flight",
            ],
            Duration::from_secs(2),
        );
        assert!(logged.await.is_some(), "{}", p.lb.log_text());
        // An operator's size survives a reload that leaves the file's size
        // alone (only idle_timeout changes here) ...
        let r =
            p.lb.admin_put("/admin/pool/size", &json!({"size": 1}))
                .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let shrunk = p.lb.wait_pool(Duration::from_secs(10), |v| count(v) == 1);
        assert!(shrunk.await.is_some());
        reload_with(&p, keys, &format!("{a}\nidle_timeout = \"10m\""), 200).await;
        assert_eq!(p.lb.pool().await["size"], 1, "the runtime size stays");
        // ... moved into the new bounds: min_size 2 takes it to 2, not to
        // the file's 3 ...
        let b = a.replace("min_size = 1", "min_size = 2");
        reload_with(&p, keys, &b, 200).await;
        let v =
            p.lb.wait_pool(Duration::from_secs(10), |v| ready(v) == 2 && count(v) == 2);
        let v = v.await.expect("raised to the new min_size");
        assert_eq!(
            (v["size"].as_u64(), v["min_size"].as_u64()),
            (Some(2), Some(2))
        );
        // ... and the file's size wins once the file changes it.
        reload_with(&p, keys, "size = 4\nmin_size = 2\nmax_size = 4", 200).await;
        let v =
            p.lb.wait_pool(Duration::from_secs(10), |v| ready(v) == 4)
                .await;
        assert!(v.is_some(), "grew to the file's size");
        // An invalid [pool] is refused whole: nothing changes.
        let r = reload_with(&p, keys, "size = 2\nmin_size = 3", 422).await;
        assert!(r.text.contains("pool.min_size"), "{}", r.text);
        let v = p.lb.pool().await;
        assert_eq!((v["size"].as_u64(), ready(&v)), (Some(4), 4));
        // Restart-only keys are named and left alone; the rest applies.
        let from = p.lb.log_len();
        let (lo, hi) = p.ports;
        let moved = p
            .body
            .replacen(keys, "size = 1\nmin_size = 1\nmax_size = 4", 1)
            .replacen(
                &format!("ports = \"{lo}-{hi}\""),
                &format!("ports = \"{}-{hi}\"", lo + 1),
                1,
            );
        p.lb.write_config(&moved);
        let r = p.lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let warned = p.lb.wait_log(
            from,
            &[
                "these [pool] keys apply at the next restart",
                "keys=pool.ports",
            ],
            Duration::from_secs(2),
        );
        assert!(warned.await.is_some(), "{}", p.lb.log_text());
        let v = p.lb.wait_pool(Duration::from_secs(10), |v| count(v) == 1);
        assert!(
            v.await.is_some(),
            "size 1 applied beside the pending ports change"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_new_command_rolls_every_member_under_load() {
    serial("pool reload rollout", LIMIT, async {
        let p = start("size = 3", &[]).await;
        let load = load(&p.lb, 100, 12);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v2 = p
            .body
            .replacen("\"--id\", \"{name}\"", "\"--id\", \"v2-{name}\"", 1);
        assert_ne!(v2, p.body);
        p.lb.write_config(&v2);
        let r = p.lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = p.lb.pool().await;
        assert_eq!(v["rollout"]["state"], "running", "{v}");
        assert_eq!(v["rollout"]["total"], 3);
        // One at a time: never more than one new member starting, never
        // fewer than 3 ready.
        let mut fewest = usize::MAX;
        let mut most_starting = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut done = Value::Null;
        while Instant::now() < deadline {
            let v = p.lb.pool().await;
            fewest = fewest.min(ready(&v));
            most_starting = most_starting.max(members_in(&v, "starting").len());
            if v["rollout"]["state"] == "done" {
                done = v;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The new members carry the load a while before it stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = load.stop().await;
        assert_eq!(
            done["rollout"],
            json!({"state": "done", "done": 3, "total": 3}),
            "{done:#}"
        );
        assert_no_failures(&samples, "rollout by reload");
        println!("rollout by reload: fewest ready {fewest}, most starting at once {most_starting}");
        assert_eq!(fewest, 3);
        // Polled every 20 ms; a start lasts at least one 100 ms probe.
        assert!(most_starting <= 1, "{most_starting} new members at once");
        let n = &p.name;
        assert_eq!(
            members_in(&done, "ready"),
            [format!("{n}-4"), format!("{n}-5"), format!("{n}-6")]
        );
        let c = client();
        for _ in 0..6 {
            let body: Value = c
                .get(p.lb.url("/api/whoami"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(
                body["container"].as_str().unwrap().starts_with("v2-"),
                "{body}"
            );
        }
        // The same file again: nothing to roll.
        let r = p.lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v = p.lb.pool().await;
        assert_eq!(members_in(&v, "ready"), members_in(&done, "ready"));
        assert_eq!(v["rollout"]["state"], "done");
        // One rollout, started by the first reload.
        let log = p.lb.log_text();
        let by_reload = |l: &&str| l.contains("pool: rollout started") && l.contains("reload");
        assert_eq!(log.lines().filter(by_reload).count(), 1, "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_replaced_without_failed_requests() {
    serial("pool kill -9", LIMIT, async {
        let p = start("size = 3", &[]).await;
        let load = load(&p.lb, 100, 8);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let victim = format!("{}-2", p.name);
        let pid = member_pid(&p.name, &victim).expect("member pid");
        let killed = Instant::now();
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let replacement = format!("{}-4", p.name);
        let served = load
            .wait_for(Duration::from_secs(10), |s| {
                s.first_served_by_after(&replacement, killed)
            })
            .await
            .expect("the replacement serves");
        let took = served.saturating_duration_since(killed);
        println!("kill -9 → replacement {replacement} serving after {took:?}");
        let samples = load.stop().await;
        assert_no_failures(&samples, "kill -9 of a member");
        let v = p.lb.pool().await;
        assert_eq!(ready(&v), 3);
        assert_eq!(v["replaced_total"], 1);
        assert!(!members_in(&v, "ready").contains(&victim));
        // Exit noticed within a tick, replacement started and probed: well
        // under a second on an idle machine; 5 s leaves room for a loaded one.
        assert!(took < Duration::from_secs(5), "{took:?}");
        // One replacement, counted once, under the reason that saw it first:
        // the exit (the usual case) or, on a loaded machine, failed probes
        // (100 ms health checks here) a tick earlier. Nothing else may count.
        let m = p.lb.scrape().await;
        let by = |r| m.value("lb_pool_recycles_total", &[("reason", r)]);
        assert_eq!(by("exited") + by("unhealthy"), 1.0);
        for other in ["age", "memory"] {
            assert_eq!(by(other), 0.0, "{other}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_over_max_memory_is_recycled_after_its_replacement_is_ready() {
    serial("pool memory", LIMIT, async {
        let p = start("size = 3\nmax_memory = \"96MiB\"", &[]).await;
        let v = p.lb.pool().await;
        let leaker = format!("{}-1", p.name);
        let addr = member_addr(&v, &leaker).unwrap();
        let load = load(&p.lb, 100, 10);
        let r = client()
            .put(format!("http://{addr}/fault"))
            .json(&json!({"leak_mb": 128}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut fewest = usize::MAX;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut done = false;
        while Instant::now() < deadline {
            let v = p.lb.pool().await;
            fewest = fewest.min(ready(&v));
            if v["recycled_total"]["memory"] == 1
                && !v["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["name"] == leaker)
            {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let samples = load.stop().await;
        assert!(done, "{leaker} not recycled:\n{}", p.lb.log_text());
        assert_no_failures(&samples, "memory recycle");
        // The replacement was ready before the leaker began draining.
        let log = p.lb.log_text();
        let line = |needles: &[&str]| {
            log.lines()
                .position(|l| needles.iter().all(|n| l.contains(n)))
                .unwrap_or_else(|| panic!("no log line with {needles:?}"))
        };
        let replacement = format!("member={}-4", p.name);
        let ready_at = line(&["pool: member ready", &replacement]);
        let draining = line(&[
            "pool: member draining",
            &format!("member={leaker}"),
            "memory",
        ]);
        let stopped = line(&["pool: member stopped", &format!("member={leaker}")]);
        assert!(
            ready_at < draining && draining < stopped,
            "{ready_at} {draining} {stopped}"
        );
        assert_eq!(fewest, 3, "never fewer than 3 ready");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_recycles_members_one_at_a_time() {
    serial("pool max_age", LIMIT, async {
        let p = start("size = 3\nmin_size = 2\nmax_age = \"2s\"", &[]).await;
        let load = load(&p.lb, 80, 12);
        let mut fewest = usize::MAX;
        let t = Instant::now();
        let mut view = Value::Null;
        while t.elapsed() < Duration::from_secs(20) {
            view = p.lb.pool().await;
            fewest = fewest.min(ready(&view));
            if view["recycled_total"]["age"].as_u64() >= Some(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Keep the load on while the last recycled member drains and stops.
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            fewest = fewest.min(ready(&p.lb.pool().await));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let samples = load.stop().await;
        println!(
            "max_age: {} recycles in {:?}, fewest ready {fewest}",
            view["recycled_total"]["age"],
            t.elapsed()
        );
        assert!(
            view["recycled_total"]["age"].as_u64() >= Some(3),
            "{view:#}"
        );
        assert!(fewest >= 2, "min_size violated: {fewest}");
        // One at a time, each replacement ready first: never below the size.
        assert_eq!(fewest, 3);
        assert_no_failures(&samples, "max_age recycling");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_grows_the_pool_to_max_size_then_it_shrinks_when_idle() {
    serial("pool scale", LIMIT, async {
        // Every request takes 200 ms and a member takes 2 at once (lb holds
        // the rest in its queue): 10/s per member. 30/s saturate 2 and 3
        // members, not 4; the queue's backlog while the pool grows (10/s for
        // ~0.5 s per step) stays far below its 5 s timeout, so none fails.
        let p = start(
            "size = 2\nmin_size = 2\nmax_size = 4\nmax_in_flight = 2\nscale_up_after = \"300ms\"\n\
             idle_timeout = \"1500ms\"\n\n[queue]\ntimeout = \"5s\"",
            &["--delay-ms", "200"],
        )
        .await;
        let load = Load::start(
            &p.lb.url("/api/whoami"),
            30,
            30 * 8,
            Duration::from_secs(8),
            reqwest::Method::GET,
        );
        let grown =
            p.lb.wait_pool(Duration::from_secs(8), |v| ready(v) == 4)
                .await;
        let samples = load.stop().await;
        assert!(grown.is_some(), "did not grow to max_size");
        assert_no_failures(&samples, "burst");
        let v = p.lb.pool().await;
        assert_eq!(v["size"], 4);
        assert_eq!(v["scaled_up_total"], 2);
        let t = Instant::now();
        let shrunk =
            p.lb.wait_pool(Duration::from_secs(10), |v| {
                v["members"].as_array().unwrap().len() == 2 && v["size"] == 2
            })
            .await;
        println!("idle → back to min_size after {:?}", t.elapsed());
        assert!(shrunk.is_some(), "did not shrink after idle_timeout");
        assert_eq!(p.lb.pool().await["scaled_down_total"], 2);
        assert_eq!(
            p.lb.scrape()
                .await
                .value("lb_pool_scale_total", &[("direction", "down")]),
            2.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_moves_every_member_to_the_new_command() {
    serial("pool rollout", LIMIT, async {
        let p = start("size = 3", &[]).await;
        let load = load(&p.lb, 100, 12);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Through the CLI, as an operator would.
        let app = app_bin().display().to_string();
        let out = std::process::Command::new(lb_bin())
            .args([
                "admin",
                "--url",
                &format!("http://{}", p.lb.admin),
                "pool",
                "rollout",
                "--command",
            ])
            .args([
                app.as_str(),
                "--id",
                "v2-{name}",
                "--listen",
                "127.0.0.1:{port}",
            ])
            .env("LB_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let accepted: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(accepted["rollout"]["state"], "running");
        assert_eq!(accepted["rollout"]["total"], 3);
        let again =
            p.lb.admin_call(
                reqwest::Method::POST,
                "/admin/pool/rollout",
                Some(&json!({"command": ["x"]})),
            )
            .await;
        assert_eq!(again.status, 409, "one rollout at a time: {}", again.text);
        let done =
            p.lb.wait_pool(Duration::from_secs(20), |v| v["rollout"]["state"] == "done")
                .await
                .expect("rollout done");
        let samples = load.stop().await;
        assert_no_failures(&samples, "rollout");
        assert_eq!(
            done["rollout"],
            json!({"state": "done", "done": 3, "total": 3})
        );
        let n = &p.name;
        assert_eq!(
            members_in(&done, "ready"),
            [format!("{n}-4"), format!("{n}-5"), format!("{n}-6")]
        );
        // Every answer now comes from the new version.
        let c = client();
        for _ in 0..9 {
            let body: Value = c
                .get(p.lb.url("/api/whoami"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(
                body["container"].as_str().unwrap().starts_with("v2-"),
                "{body}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_never_turns_healthy_fails_and_keeps_the_old_members() {
    serial("pool failed rollout", LIMIT, async {
        let p = start("size = 2\nstart_timeout = \"1s\"", &[]).await;
        let before = members_in(&p.lb.pool().await, "ready");
        let load = load(&p.lb, 50, 10);
        // Runs, but listens on a port of its own choosing, not the one lb
        // probes: never healthy, so each new member times out.
        let app = app_bin().display().to_string();
        let body = json!({"command": [app, "--id", "{name}", "--listen", "127.0.0.1:0"]});
        let r =
            p.lb.admin_call(reqwest::Method::POST, "/admin/pool/rollout", Some(&body))
                .await;
        assert_eq!(r.status, 202, "{}", r.text);
        let wrong =
            p.lb.admin_call(
                reqwest::Method::POST,
                "/admin/pool/rollout",
                Some(&json!({"image": "x"})),
            )
            .await;
        assert!(matches!(wrong.status, 409 | 422), "{}", wrong.text);
        let failed =
            p.lb.wait_pool(Duration::from_secs(15), |v| {
                v["rollout"]["state"] == "failed"
            })
            .await
            .expect("rollout failed");
        let samples = load.stop().await;
        assert_no_failures(&samples, "failed rollout");
        assert_eq!(failed["rollout"]["done"], 0);
        assert_eq!(
            members_in(&failed, "ready"),
            before,
            "the old members keep serving"
        );
        assert!(
            p.lb.scrape()
                .await
                .value("lb_pool_starts_total", &[("result", "failed")])
                >= 1.0
        );
    })
    .await;
}

/// A member command whose app is a grandchild of lb (`sh` in between): on a
/// `kill -9` of lb the kernel kills `sh` (parent-death signal) but the app
/// survives it, reparented; the next lb must find and kill it.
fn wrapped_app_args(name: &str, range: (u16, u16)) -> String {
    let app = app_bin().display().to_string();
    format!(
        "[health]\ninterval = \"100ms\"\nrise = 1\n[pool]\nname = \"{name}\"\nsize = 2\n\
         ports = \"{}-{}\"\ndrain_timeout = \"2s\"\n\
         command = [\"sh\", \"-c\", \"\\\"$0\\\" --id \\\"$1\\\" --listen \\\"$2\\\" & wait\", {app:?}, \"{{name}}\", \"127.0.0.1:{{port}}\"]\n",
        range.0, range.1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_lb_stops_every_member() {
    serial("pool sigterm", LIMIT, async {
        let (name, lo, hi) = unique_pool();
        let _guard = PoolGuard(name.clone());
        let mut lb = Lb::start(&wrapped_app_args(&name, (lo, hi))).await;
        let pids = pool_pids(&name);
        assert_eq!(pids.len(), 4, "2 × (sh + app): {pids:?}");
        let status = lb.stop().await;
        assert_eq!(status.code(), Some(0));
        let gone = eventually(Duration::from_secs(3), || pids.iter().all(|p| !alive(*p))).await;
        assert!(
            gone,
            "left running after SIGTERM: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        assert!(lb.log_text().contains("pool: every member stopped"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_lb_leaves_no_member_after_the_next_start() {
    serial("pool kill -9 lb", LIMIT, async {
        let (name, lo, hi) = unique_pool();
        let _guard = PoolGuard(name.clone());
        let mut lb = Lb::start(&wrapped_app_args(&name, (lo, hi))).await;
        let before = pool_pids(&name);
        assert_eq!(before.len(), 4);
        lb.signal(libc::SIGKILL);
        let _ = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(5)));
        // The direct children die with lb (PR_SET_PDEATHSIG); the apps behind
        // `sh` are orphans now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let orphans: Vec<u32> = before.iter().copied().filter(|p| alive(*p)).collect();
        println!(
            "after kill -9 of lb: {} of {} member processes still running",
            orphans.len(),
            before.len()
        );
        assert_eq!(
            orphans.len(),
            2,
            "the two wrapped apps outlive lb: {orphans:?}"
        );
        lb.restart().await;
        let cleaned = eventually(Duration::from_secs(3), || {
            orphans.iter().all(|p| !alive(*p))
        })
        .await;
        assert!(cleaned, "leftovers still running: {orphans:?}");
        assert!(lb
            .log_text()
            .contains("killing a member left by an earlier lb"));
        // The new lb has its own members again.
        assert_eq!(ready(&lb.pool().await), 2);
    })
    .await;
}

#[test]
fn shipped_pool_configs_pass_lb_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["examples/pool.toml", "deploy/pool/lb.toml"] {
        let (code, out, err) = lb_check(&root.join(f));
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.contains("pool          app-N: "), "{f}: {out}");
    }
}

#[test]
fn the_compose_variant_gives_lb_the_socket_and_the_pool_its_network() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/pool/docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let lb = &compose["services"]["lb"];
    let volumes: Vec<&str> = lb["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(volumes.contains(&"/var/run/docker.sock:/var/run/docker.sock"));
    assert!(volumes.contains(&"${LB_CONFIG:-./lb.toml}:/etc/lb/lb.toml:ro"));
    assert!(text.contains("root on the host"), "the risk is spelled out");
    // lb (uid 65532) reaches the socket through its group.
    assert_eq!(lb["group_add"][0].as_str(), Some("${DOCKER_GID:-999}"));
    let config = lb::config::Config::load(&root.join("deploy/pool/lb.toml")).unwrap();
    let pool = config.pool.unwrap();
    let lb::config::PoolProvider::Docker(d) = pool.provider else {
        panic!("docker provider")
    };
    // Members join lb's own network, the project's `<project>_default`: the
    // compose file does not pin a name (two projects would share it).
    assert_eq!(d.network, "@self");
    assert!(
        compose.get("networks").is_none(),
        "{:?}",
        compose["networks"]
    );
    assert_eq!(d.docker_host, "unix:///var/run/docker.sock");
    // Compose gives lb time to remove its members at stop.
    assert!(lb["stop_grace_period"].as_str() == Some("40s") && pool.drain_timeout.as_secs() < 40);
}
