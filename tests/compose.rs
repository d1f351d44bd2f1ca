//! End-to-end through the real docker-compose.yml and the images `make images`
//! builds (`make test` builds the same images from its debug binaries: `make
//! test-images`; how these tests run and clean up: tests/common/compose.rs).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::compose::*;
use common::*;

/// Longest the whole test may take, `up` and `down` included: its own waits
/// add up to about 3 minutes (lb healthy 90 s, app-2 back 30 s, app-3
/// followed 45 s, the kill under load 5 s, ...).
const LIMIT: Duration = Duration::from_secs(300);

async fn backends_of(p: &Project, n: usize) -> (HashMap<String, usize>, usize) {
    let c = client();
    let mut seen = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match c.get(p.url("/api/whoami")).send().await {
            Ok(r) if r.status() == 200 => *seen.entry(header(&r, "x-backend")).or_default() += 1,
            _ => failed += 1,
        }
    }
    (seen, failed)
}

/// Polls until a request is answered by `backend`, and (when given) by the
/// container whose hostname starts with `container`; None after `timeout`.
async fn until_serves(
    p: &Project,
    backend: &str,
    container: Option<&str>,
    timeout: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    let c = client();
    while t.elapsed() < timeout {
        if let Ok(r) = c.get(p.url("/api/whoami")).send().await {
            if header(&r, "x-backend") == backend {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                let host = v["hostname"].as_str().unwrap_or("");
                if container.is_none_or(|id| !host.is_empty() && id.starts_with(host)) {
                    return Some(t.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and `make images` (or `make test-images`); `make test` runs it when `docker info` works"]
async fn compose_end_to_end() {
    run_on_engine(
        "compose end-to-end test",
        Needs::ComposeAndImages,
        LIMIT,
        scenario(),
    )
    .await;
}

async fn scenario() {
    let mut p = Project::new("lbtest", "docker-compose.yml");
    let t0 = Instant::now();
    ok(p.compose().args(["up", "-d"]));
    let healthy = p.until_lb_healthy(t0, Duration::from_secs(90)).await;
    p.until_listening().await;
    println!("compose: `up -d` to lb healthy in {healthy:?}");

    // HTTPS and HTTP/2 on the published 443, with the certificate from the
    // mounted deploy/tls; the backend sees X-Forwarded-Proto: https.
    let tls = tls_client(p.tls_port);
    let url = format!("https://localhost:{}/api/echo", p.tls_port);
    let r = tls
        .get(&url)
        .send()
        .await
        .expect("HTTPS to the published 443");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    println!(
        "compose: HTTPS + HTTP/2 on 443 answered by {}",
        echo["container"]
    );

    // 1,000 requests reach all four apps (weights 10/10/5/15 in lb.toml).
    let (seen, failed) = backends_of(&p, 1000).await;
    println!("compose: 1000 requests: {seen:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(seen.len(), 4, "{seen:?}");

    // docker kill app-2 under load: no failed GET.
    let app2 = p.container("app-2");
    let load = Load::start(
        &p.url("/api/whoami"),
        100,
        600,
        Duration::from_secs(6),
        reqwest::Method::GET,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    ok(Command::new("docker").args(["kill", &app2]));
    // Keep the load running while lb notices (health fall 2 × 1 s at most).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let samples = load.stop().await;
    assert!(
        samples.len() >= 400,
        "load generator fell behind: {}",
        samples.len()
    );
    let failed = samples.failed().len();
    println!(
        "compose: docker kill app-2 under load: {} requests, {failed} failed",
        samples.len()
    );
    assert_eq!(failed, 0);

    // docker start app-2: back in rotation.
    ok(Command::new("docker").args(["start", &app2]));
    let back = until_serves(&p, "app-2", None, Duration::from_secs(30))
        .await
        .expect("app-2 not back within 30 s");
    println!("compose: app-2 back in rotation {back:?} after docker start");

    // Recreate app-3 with a new IP: lb follows through DNS, without a reload.
    let old_ip = p.ip("app-3");
    ok(p.compose().args(["rm", "-s", "-f", "app-3"]));
    // Occupy the freed address so the new container cannot get it back. The
    // placeholder listens only on its own loopback: lb's stale address refuses.
    let placeholder = format!("{}-placeholder", p.name);
    // Removed before `down` (it holds the network), also on failure.
    p.extra_containers.push(placeholder.clone());
    ok(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &placeholder,
        "--network",
        &p.network(),
        "lb-app:local",
        "--listen",
        "127.0.0.1:3000",
    ]));
    ok(p.compose().args(["up", "-d", "--no-deps", "app-3"]));
    let new_ip = p.ip("app-3");
    assert_ne!(old_ip, new_ip, "app-3 kept its IP; the test proves nothing");
    // Served by the new container itself (its hostname is its id's prefix).
    let new_id = p.container("app-3");
    let followed = until_serves(&p, "app-3", Some(&new_id), Duration::from_secs(45))
        .await
        .expect("lb did not follow app-3's new IP");
    println!("compose: app-3 recreated {old_ip} -> {new_ip}; serving again after {followed:?}");

    // A weight change through the admin API from inside the compose network.
    let out = p.admin(&[
        "PUT",
        "/admin/weights",
        r#"{"app-1": 0, "app-2": 0, "app-3": 0}"#,
    ]);
    println!("compose: admin PUT from inside the network -> {out}");
    let (seen, failed) = backends_of(&p, 50).await;
    assert_eq!(failed, 0);
    assert_eq!(seen.get("app-4"), Some(&50), "{seen:?}");
    // No reload happened: the config's reload counter is still zero.
    let reloads = p.admin(&["GET", "/metrics"]);
    assert!(
        reloads.contains("lb_config_reloads_total{result=\"success\"} 0"),
        "reloaded?"
    );
    println!("compose: total {:?}", t0.elapsed());
}
