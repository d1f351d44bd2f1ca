//! End-to-end through the real docker-compose.yml and the images `make images`
//! builds. `#[ignore]`d, so a plain `cargo test` reports it as ignored, never as
//! passed; `make test` runs it (`--ignored`, images built first) when `docker
//! info` succeeds, or when `LB_REQUIRE_DOCKER=1`. Run that way it fails, naming
//! what is missing, when it cannot run.
//! A unique project name keeps parallel runs apart; `down -v` runs on drop,
//! also when an assertion fails.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "compose-test-token";

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    match Command::new("docker").arg("info").output() {
        Ok(o) if o.status.success() => {}
        Ok(_) => return Some("no Docker engine reachable (docker info failed)".into()),
        Err(_) => return Some("docker CLI not installed".into()),
    }
    for image in ["lb:local", "lb-app:local"] {
        let o = Command::new("docker")
            .args(["image", "inspect", image])
            .output();
        if !o.is_ok_and(|o| o.status.success()) {
            return Some(format!("image {image} not built (run `make images`)"));
        }
    }
    if compose_cmd().is_none() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    None
}

/// `docker compose` (v2) if present, else `docker-compose` (v1).
fn compose_cmd() -> Option<Vec<&'static str>> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        return Some(vec!["docker", "compose"]);
    }
    let v1 = Command::new("docker-compose").arg("version").output();
    v1.is_ok_and(|o| o.status.success())
        .then(|| vec!["docker-compose"])
}

/// A compose project; `down -v` on drop.
struct Project {
    name: String,
    cmd: Vec<&'static str>,
    port: u16,
}

impl Project {
    fn compose(&self) -> Command {
        let mut c = Command::new(self.cmd[0]);
        c.args(&self.cmd[1..])
            .args(["-p", &self.name, "-f"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
            .env("LB_PUBLISH", format!("127.0.0.1:{}", self.port))
            .env("LB_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "info,access=off");
        c
    }

    fn container(&self, service: &str) -> String {
        ok(self.compose().args(["ps", "-q", service]))
    }

    fn health(&self, service: &str) -> String {
        let id = self.container(service);
        ok(Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", &id]))
    }

    fn ip(&self, service: &str) -> String {
        let id = self.container(service);
        ok(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &id,
        ]))
    }

    fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = run(self.compose().args(["logs", "--tail", "30", "lb"]));
            eprintln!("--- lb logs ---\n{}", String::from_utf8_lossy(&logs.stdout));
        }
        // The placeholder holds the network: remove it first, then the project.
        let _ = Command::new("docker")
            .args(["rm", "-f", &format!("{}-placeholder", self.name)])
            .output();
        let out = run(self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "2"]));
        if !out.status.success() {
            eprintln!(
                "compose down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

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
#[ignore = "needs a Docker engine and `make images`; `make test` runs it when `docker info` works"]
async fn compose_end_to_end() {
    // Only ever run on request (`--ignored`): then a missing engine or image
    // is a failure, not a silent pass.
    if let Some(why) = missing_prerequisite() {
        panic!("compose end-to-end cannot run: {why}");
    }
    let p = Project {
        name: format!("lbtest{}", std::process::id()),
        cmd: compose_cmd().unwrap(),
        port: free_port(),
    };
    let t0 = Instant::now();
    ok(p.compose().args(["up", "-d"]));
    let mut healthy = None;
    while t0.elapsed() < Duration::from_secs(90) {
        if p.health("lb") == "healthy" {
            healthy = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healthy = healthy.expect("lb not healthy within 90 s");
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            p.port
        ))
        .is_ok())
        .await
    );
    println!("compose: `up -d` to lb healthy in {healthy:?}");

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
    let out = ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        &p.network(),
        "-e",
        &format!("LB_ADMIN_TOKEN={TOKEN}"),
        "lb:local",
        "admin",
        "--url",
        "http://lb:9901",
        "PUT",
        "/admin/weights",
        r#"{"app-1": 0, "app-2": 0, "app-3": 0}"#,
    ]));
    println!("compose: admin PUT from inside the network -> {out}");
    let (seen, failed) = backends_of(&p, 50).await;
    assert_eq!(failed, 0);
    assert_eq!(seen.get("app-4"), Some(&50), "{seen:?}");
    // No reload happened: the config's reload counter is still zero.
    let reloads = ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        &p.network(),
        "lb:local",
        "admin",
        "--url",
        "http://lb:9901",
        "GET",
        "/metrics",
    ]));
    assert!(
        reloads.contains("lb_config_reloads_total{result=\"success\"} 0"),
        "reloaded?"
    );
    println!("compose: total {:?}", t0.elapsed());
}
