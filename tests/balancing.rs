//! Distribution and stickiness through a real lb and real app backends.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;

/// `workers` concurrent clients each sending `per_worker` GETs; returns the
/// X-Backend of every response (all must be 200).
async fn spread(lb: &Lb, path: &str, workers: usize, per_worker: usize) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let url = lb.url(path);
        set.spawn(async move {
            let c = client();
            let mut out = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let (st, b) = get_backend(&c, &url).await;
                assert_eq!(st, 200, "status from {b}");
                out.push(b);
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_spreads_evenly_over_four() {
    let apps = Apps::plain(4).await;
    let lb = Lb::start(&apps.backends_toml(&[1, 1, 1, 1])).await;
    let picks = spread(&lb, "/api/whoami", 8, 250).await;
    let counts = tally(&picks, &["app-1", "app-2", "app-3", "app-4"]);
    println!("round_robin 2000 requests over 4: {counts:?}");
    // Smooth WRR is deterministic: every pick takes the next slot of one
    // shared rotation, however many clients race, and nothing failed (all
    // 200), so 2000 picks over a period of 4 are exactly 500 each.
    assert_eq!(counts, vec![500; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_three_to_one_are_honoured() {
    let apps = Apps::plain(2).await;
    let lb = Lb::start(&apps.backends_toml(&[3, 1])).await;
    let picks = spread(&lb, "/api/whoami", 4, 500).await;
    let counts = tally(&picks, &["app-1", "app-2"]);
    println!("weights 3:1 over 2000 requests: {counts:?}");
    // Smooth WRR gives exactly 3 of every 4 consecutive picks to app-1 (the
    // order is fixed; concurrency only changes which client gets which slot):
    // 2000 picks are 500 periods, exactly 1500 and 500. (SPEC's ±5 % is the
    // bound for any algorithm; round robin has no reason to use it.)
    assert_eq!(counts, vec![1500, 500]);
}

/// Two fast backends and one with `--delay-ms 50`, 16 concurrent clients.
async fn slow_backend_share(algorithm: &str) -> (usize, usize, usize) {
    let mut slow = named("app-3");
    slow.delay = Duration::from_millis(50);
    let apps = Apps::start(vec![named("app-1"), named("app-2"), slow]).await;
    let body = format!(
        "[balancer]\nalgorithm = \"{algorithm}\"\n\n{}",
        apps.backends_toml(&[1, 1, 1])
    );
    let lb = Lb::start(&body).await;
    let picks = spread(&lb, "/api/whoami", 16, 50).await;
    let c = tally(&picks, &["app-1", "app-2", "app-3"]);
    println!(
        "{algorithm}: fast {} / {}, slow (50 ms) {}",
        c[0], c[1], c[2]
    );
    (c[0], c[1], c[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_conn_sends_less_to_a_slow_backend() {
    let (a, b, slow) = slow_backend_share("least_conn").await;
    // SPEC: at most half of a fast backend's count. Under 16-way concurrency a
    // 50 ms backend holds its requests ~50x longer than a ~1 ms one, so it sits
    // at the highest in-flight count nearly all the time.
    assert!(slow * 2 <= a.min(b), "slow {slow} vs fast {a}/{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_time_sends_less_to_a_slow_backend() {
    let (a, b, slow) = slow_backend_share("least_time").await;
    assert!(slow * 2 <= a.min(b), "slow {slow} vs fast {a}/{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ip_hash_keeps_each_client_ip_on_one_backend() {
    let apps = Apps::plain(4).await;
    let body = format!(
        "[balancer]\nalgorithm = \"ip_hash\"\n\n{}",
        apps.backends_toml(&[1, 1, 1, 1])
    );
    let lb = Lb::start(&body).await;
    let mut seen: HashMap<IpAddr, HashSet<String>> = HashMap::new();
    for i in 0..40u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i));
        let c = client_from(ip);
        for _ in 0..10 {
            let (st, b) = get_backend(&c, &lb.url("/api/whoami")).await;
            assert_eq!(st, 200);
            seen.entry(ip).or_default().insert(b);
        }
    }
    let per_backend: HashMap<String, usize> = seen.values().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.iter().next().unwrap().clone()).or_default() += 1;
        m
    });
    println!("ip_hash: 40 client IPs x 10 requests; clients per backend {per_backend:?}");
    assert!(
        seen.values().all(|s| s.len() == 1),
        "a client moved: {seen:?}"
    );
    // 40 IPs over 4 equal backends: P(some backend gets none) = 4·(3/4)^40 ≈ 4e-5,
    // and the hash is deterministic for these fixed IPs anyway.
    assert_eq!(per_backend.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cookie_stickiness_holds_for_fifty_clients() {
    let apps = Apps::plain(4).await;
    let body = format!(
        "[balancer]\nsticky = \"cookie\"\n\n{}",
        apps.backends_toml(&[1, 1, 1, 1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    let (mut same, mut total) = (0, 0);
    let mut first_backends = Vec::new();
    for _ in 0..50 {
        // Each simulated browser keeps its own cookie.
        let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
        let set = header(&r, "set-cookie");
        let first = header(&r, "x-backend");
        assert!(set.starts_with("lb_sticky="), "no sticky cookie: {set:?}");
        assert!(set.contains("Path=/") && set.contains("HttpOnly") && set.contains("SameSite=Lax"));
        let cookie = set.split(';').next().unwrap().to_string();
        first_backends.push(first.clone());
        for _ in 1..20 {
            let r = c
                .get(lb.url("/api/whoami"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert!(
                header(&r, "set-cookie").is_empty(),
                "re-pinned while healthy"
            );
            total += 1;
            same += usize::from(header(&r, "x-backend") == first);
        }
    }
    let firsts = tally(&first_backends, &["app-1", "app-2", "app-3", "app-4"]);
    println!("cookie stickiness: {same}/{total} pinned requests on their backend; first picks {firsts:?}");
    // Every backend stays healthy and active: a pinned request has no reason
    // ever to land elsewhere, so one misroute is a bug.
    assert_eq!(same, total);
    assert_eq!(total, 50 * 19);
    // Pinned requests do not consume round-robin slots: the 50 new clients
    // are 50 consecutive picks, 13, 13, 12, 12.
    assert_eq!(
        firsts,
        vec![13, 13, 12, 12],
        "new clients were not balanced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_stickiness_by_session_id() {
    let apps = Apps::plain(4).await;
    let body = format!(
        "[balancer]\nsticky = \"header\"\n\n{}",
        apps.backends_toml(&[1, 1, 1, 1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    let mut sessions: HashMap<String, HashSet<String>> = HashMap::new();
    for s in 0..50 {
        let id = format!("session-{s}");
        for _ in 0..10 {
            let r = c
                .post(lb.url("/api/session"))
                .header("x-session-id", &id)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            sessions
                .entry(id.clone())
                .or_default()
                .insert(header(&r, "x-backend"));
        }
    }
    let used: HashSet<_> = sessions.values().flatten().collect();
    println!(
        "header stickiness: 50 sessions x 10 requests over {} backends",
        used.len()
    );
    assert!(sessions.values().all(|b| b.len() == 1), "a session moved");
    // 50 sessions over 4 backends: all four used unless the hash is broken.
    assert_eq!(used.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamic_shifts_weight_off_a_slow_backend() {
    let mut slow = named("app-3");
    slow.delay = Duration::from_millis(30);
    let apps = Apps::start(vec![named("app-1"), named("app-2"), slow]).await;
    let body = format!(
        "[balancer]\nalgorithm = \"dynamic\"\n[dynamic]\ninterval = \"200ms\"\n\n{}",
        apps.backends_toml(&[10, 10, 10])
    );
    let lb = Lb::start(&body).await;
    // Keep load on until the slow backend's effective weight reaches the floor
    // (10 × 0.05 → 1) or 10 s pass: 4 recompute intervals of 200 ms suffice
    // (1000 → 750 → 500 → 250 → 50 in bounded steps of 250).
    let effective = || async {
        let v: serde_json::Value = client()
            .get(format!("http://{}/admin/backends", lb.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["effective_weight"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    let started = std::time::Instant::now();
    let mut warm = Vec::new();
    let mut eff = effective().await;
    while eff[2] > 1 && started.elapsed() < Duration::from_secs(10) {
        warm.extend(spread(&lb, "/api/whoami", 8, 20).await);
        eff = effective().await;
    }
    println!("dynamic: floor reached after {:?}", started.elapsed());
    let after = spread(&lb, "/api/whoami", 8, 60).await;
    let c = tally(&after, &["app-1", "app-2", "app-3"]);
    println!(
        "dynamic: warm-up {:?}, effective weights {eff:?}, next 480 requests {c:?}",
        tally(&warm, &["app-1", "app-2", "app-3"])
    );
    // The slow backend sits at the floor, the fast ones well above it, and
    // the balancer follows: at 1 of ~21 weight units its share is ~5% (~23 of
    // 480); a quarter of a fast backend's count (~50) leaves room for the
    // factors moving back up by one step while the next requests run. A fast
    // backend may be two bounded steps (2 × 250 of 1000) below full weight,
    // 5 of 10: on a loaded 2-core VM its latency carries the scheduler's
    // stalls of the test's own clients (seen: [6, 10, 1] with two busy loops
    // beside the test, once in 55 runs).
    assert_eq!(eff[2], 1, "{eff:?}");
    assert!(eff[0] >= 5 && eff[1] >= 5, "{eff:?}");
    assert!(c[2] * 4 <= c[0].min(c[1]), "{c:?}");
}
