//! `resolve = "all"` against the real engine: deploy/compose-scale.yml's one
//! `app` service is scaled 2 → 4 → 1 with `up --scale` while open-loop load
//! runs through lb; lb follows the replicas through Compose's DNS, with no
//! reload and no failed request. Prints how long a new replica takes to get
//! traffic (from the moment its container started) and the failed requests of
//! each phase. How these tests run and clean up: tests/common/compose.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::compose::*;
use common::*;

/// The variant compose file (its lb config: deploy/lb-scale.toml).
const FILE: &str = "deploy/compose-scale.yml";
/// Requests per second through lb for the whole scaling sequence.
const RATE: u32 = 100;
/// Longest the whole test may take, including `up` and the image starts.
const LIMIT: Duration = Duration::from_secs(240);

/// lb's member name for a replica at `ip` (SPEC: `<name>@<ip>:<port>`).
fn member(ip: &str) -> String {
    format!("app@{ip}:3000")
}

/// Replicas of `app` now: container id → member name.
fn replicas(p: &Project) -> BTreeMap<String, String> {
    p.containers("app")
        .into_iter()
        .map(|id| {
            let m = member(&container_ip(&id));
            (id, m)
        })
        .collect()
}

/// When a container started (Docker's `State.StartedAt`), mapped onto the
/// monotonic clock through `anchor` (an Instant and the wall time taken with it).
fn started_at(id: &str, anchor: (Instant, SystemTime)) -> Instant {
    let text = ok(Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}}", id]));
    let wall = humantime::parse_rfc3339(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    match wall.duration_since(anchor.1) {
        Ok(after) => anchor.0 + after,
        Err(e) => anchor.0 - e.duration(),
    }
}

/// `up -d --scale app=<n>`; how long the command took.
fn scale(p: &Project, n: usize) -> Duration {
    let t = Instant::now();
    ok(p.compose()
        .args(["up", "-d", "--no-recreate", "--scale", &format!("app={n}")]));
    t.elapsed()
}

/// The members lb lists for group `app` (GET /admin/backends).
fn lb_members(p: &Project) -> BTreeSet<String> {
    let body = p.admin(&["GET", "/admin/backends"]);
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v.as_array()
        .expect("a list")
        .iter()
        .filter(|b| b["group"] == "app")
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// Polls lb's member list until it equals `want` (at most `timeout`).
async fn until_lb_lists(p: &Project, want: &BTreeSet<String>, timeout: Duration) {
    let t = Instant::now();
    loop {
        let have = lb_members(p);
        if &have == want {
            return;
        }
        assert!(
            t.elapsed() < timeout,
            "lb lists {have:?}, want {want:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Failures among `samples` due in `[from, to)`, with a tally of outcomes.
fn failures(samples: &[Sample], from: Instant, to: Instant) -> (usize, usize, String) {
    let window = samples.sent_between(from, to);
    let failed: Vec<String> = window
        .iter()
        .filter(|s| !s.ok())
        .map(|s| s.outcome())
        .collect();
    let mut tally = BTreeMap::<String, usize>::new();
    for f in &failed {
        *tally.entry(f.clone()).or_default() += 1;
    }
    (window.len(), failed.len(), format!("{tally:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and `make images` (or `make test-images`); `make test` runs it when `docker info` works"]
async fn compose_scale_follows_replicas_under_load() {
    run_on_engine(
        "compose scale test",
        Needs::ComposeAndImages,
        LIMIT,
        scenario(),
    )
    .await;
}

async fn scenario() {
    let p = Project::new("lbscale", FILE);
    let t0 = Instant::now();

    // `up -d`: deploy.replicas = 2, lb starts once they are healthy.
    ok(p.compose().args(["up", "-d"]));
    let two = replicas(&p);
    assert_eq!(two.len(), 2, "deploy.replicas = 2 not applied: {two:?}");
    let healthy = p.until_lb_healthy(t0, Duration::from_secs(90)).await;
    p.until_listening().await;
    println!("compose scale: `up -d` (2 replicas) to lb healthy in {healthy:?}");
    let want: BTreeSet<String> = two.values().cloned().collect();
    until_lb_lists(&p, &want, Duration::from_secs(10)).await;

    // Open-loop load for the whole sequence; stopped at the end.
    let load = Load::start(
        &p.url("/api/whoami"),
        RATE,
        RATE as usize * 150,
        Duration::from_secs(150),
        reqwest::Method::GET,
    );
    let load_started = load.started;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2 → 4.
    let up_at = Instant::now();
    let anchor = (up_at, SystemTime::now());
    let up_took = scale(&p, 4);
    let four = replicas(&p);
    assert_eq!(four.len(), 4, "{four:?}");
    assert!(
        two.keys().all(|id| four.contains_key(id)),
        "the first replicas were recreated"
    );
    let new: Vec<(String, Instant)> = four
        .iter()
        .filter(|(id, _)| !two.contains_key(*id))
        .map(|(id, m)| (m.clone(), started_at(id, anchor)))
        .collect();
    // The first answer each new replica gave (its arrival at the client).
    let first = load
        .wait_for(Duration::from_secs(30), |s| {
            new.iter()
                .map(|(m, _)| {
                    s.iter()
                        .filter(|x| x.ok() && &x.backend == m && x.sent >= up_at)
                        .map(|x| x.done)
                        .min()
                })
                .collect::<Option<Vec<Instant>>>()
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "new replicas not all served within 30 s: {:?}",
                load.with_samples(|s| s.per_backend())
            )
        });
    // Signed milliseconds from Docker's StartedAt to that answer: Docker
    // stamps StartedAt once the process runs, and the replica is in its DNS
    // answer from the moment its network endpoint joins, just before that, so
    // a lucky DNS round can route to it a few ms "before" it started.
    let mut to_traffic = Vec::new();
    for ((m, started), served) in new.iter().zip(&first) {
        let ms = if served >= started {
            served.duration_since(*started).as_secs_f64() * 1e3
        } else {
            -(started.duration_since(*served).as_secs_f64() * 1e3)
        };
        println!(
            "compose scale: {m}: first answer {ms:.0} ms after its container started \
             ({:?} after `--scale app=4` began)",
            served.duration_since(up_at)
        );
        // deploy/lb-scale.toml: the next DNS round (every 1 s) finds the
        // replica, two passing checks (rise = 2, every 1 s) admit it, after
        // the app in it listens (its own start, about a second here): about
        // 4 s at most on an idle machine. 8 s leaves as much again for a busy
        // one (a run at 5.03 s was seen with the whole suite's load). nginx,
        // which resolves once at start, never sends the replica anything.
        assert!(
            ms < 8000.0,
            "{m} got its first request {ms:.0} ms after it started"
        );
        to_traffic.push(format!("{ms:.0} ms"));
    }
    let want: BTreeSet<String> = four.values().cloned().collect();
    until_lb_lists(&p, &want, Duration::from_secs(10)).await;
    // Four replicas share the load.
    let hold = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in four.values() {
        let (mine, all) = load.with_samples(|s| s.share(m, hold, hold + Duration::from_secs(3)));
        println!("compose scale: with 4 replicas {m} served {mine} of {all}");
        assert!(mine * 8 >= all, "{m} served {mine} of {all}");
    }

    // 4 → 1: Compose stops three replicas (SIGTERM; the app keeps
    // serving 3 s with /health = 503, then finishes what is in flight).
    let down_at = Instant::now();
    let down_took = scale(&p, 1);
    let one = replicas(&p);
    assert_eq!(one.len(), 1, "{one:?}");
    let want: BTreeSet<String> = one.values().cloned().collect();
    until_lb_lists(&p, &want, Duration::from_secs(10)).await;
    let listed_one = down_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = Instant::now();
    let samples = load.stop().await;

    let gone: Vec<&String> = four.values().filter(|m| !want.contains(*m)).collect();
    for m in &gone {
        let last = samples
            .last_served_by(m)
            .map(|t| format!("{:?}", t.saturating_duration_since(down_at)))
            .unwrap_or_else(|| "never".into());
        println!("compose scale: {m}: last answer {last} after `--scale app=1` began");
    }
    // Nothing went to a removed replica once lb had dropped it.
    let after = samples.sent_between(down_at + listed_one, end);
    assert!(
        after.iter().all(|s| !s.ok() || !gone.contains(&&s.backend)),
        "a removed replica served after lb dropped it"
    );

    let phases = [
        ("2 replicas", t0, up_at),
        ("scale 2 -> 4", up_at, down_at),
        ("scale 4 -> 1", down_at, end),
    ];
    let mut total_failed = 0;
    for (what, from, to) in phases {
        let (n, failed, tally) = failures(&samples, from, to);
        println!("compose scale: {what}: {n} requests, {failed} failed {tally}");
        total_failed += failed;
    }
    println!(
        "compose scale: `--scale app=4` took {up_took:?}, `--scale app=1` {down_took:?}; \
         lb listed 1 member {listed_one:?} after scale-down began; \
         time to traffic for new replicas: {to_traffic:?}"
    );
    assert!(
        samples.len() as f64 >= 0.8 * RATE as f64 * end.duration_since(load_started).as_secs_f64(),
        "load generator fell behind: {} requests",
        samples.len()
    );
    assert_eq!(total_failed, 0, "failed requests while scaling");

    // Followed through DNS alone: no reload happened.
    let metrics = p.admin(&["GET", "/metrics"]);
    assert!(
        metrics.contains("lb_config_reloads_total{result=\"success\"} 0"),
        "reloaded?"
    );
    println!("compose scale: total {:?}", t0.elapsed());
}
