//! The Compose variant where lb owns its app containers (deploy/pool): `up`
//! starts lb alone, in its image, as uid 65532 with the Docker socket mounted
//! and the socket's group added; lb's `[pool]` creates the lb-app:local
//! members on the project's network (`pool.network = "@self"`) through it.
//! Against the real engine: the pool reaches its size and serves through lb
//! (every member answers); a `docker kill`ed member is replaced (the time
//! from the kill to the replacement's first answer is printed) and `PUT
//! /admin/pool/size` grows and shrinks the pool, with 0 failed requests of a
//! light load throughout; an lb killed with SIGKILL leaves its members, which
//! its next start removes; `down` leaves no labelled container.
//!
//! The project runs deploy/pool's compose file and lb.toml as shipped, but for
//! the pool's name (unique to the run, through `LB_CONFIG`: lb removes every
//! container labelled with its pool's name at start). How these tests run
//! and clean up: tests/common/compose.rs; on drop, lb is killed and the
//! pool's containers (label `lb.pool=<name>`) are removed before `down`,
//! also when the test fails.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::compose::*;
use common::*;
use serde_json::Value;

const FILE: &str = "deploy/pool/docker-compose.yml";
/// Requests per second through lb while members are killed, added, removed.
const RATE: u32 = 50;
/// Longest the whole test may take, `up` and `down` included.
const LIMIT: Duration = Duration::from_secs(150);

/// deploy/pool as shipped, its pool named `pool`.
struct PoolProject {
    p: Project,
    pool: String,
    /// Holds the test's lb.toml.
    dir: tempfile::TempDir,
}

impl PoolProject {
    fn new() -> PoolProject {
        let pool = format!("cpool{}", std::process::id());
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pool/lb.toml"),
        )
        .unwrap();
        assert_eq!(shipped.matches("\nname = \"app\"\n").count(), 1);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("lb.toml");
        std::fs::write(
            &config,
            shipped.replace("\nname = \"app\"\n", &format!("\nname = \"{pool}\"\n")),
        )
        .unwrap();
        let mut p = Project::new("lbpool", FILE);
        let socket_gid = std::fs::metadata("/var/run/docker.sock")
            .expect("the engine's socket")
            .gid();
        p.env.push(("LB_CONFIG", config.display().to_string()));
        p.env.push(("DOCKER_GID", socket_gid.to_string()));
        PoolProject { p, pool, dir }
    }

    /// The test's lb.toml.
    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("lb.toml")
    }

    /// Containers labelled `lb.pool=<pool>`, running or not, sorted.
    fn labelled(&self) -> Vec<String> {
        let filter = format!("label=lb.pool={}", self.pool);
        let out = ok(Command::new("docker").args(["ps", "-aq", "--no-trunc", "--filter", &filter]));
        let mut v: Vec<String> = out.lines().map(String::from).collect();
        v.sort();
        v
    }

    /// `lb admin <args>` inside lb's container (its token is in the
    /// container's environment); the answer's JSON.
    fn admin(&self, args: &[&str]) -> Value {
        let lb = self.p.container("lb");
        let out = ok(Command::new("docker")
            .args(["exec", &lb, "/usr/local/bin/lb", "admin"])
            .args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"))
    }

    /// Polls `GET /admin/pool` until `f` holds (at most `timeout`).
    async fn wait_pool(&self, timeout: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let v = self.admin(&["pool", "status"]);
            if f(&v) {
                return v;
            }
            assert!(t.elapsed() < timeout, "{what} not within {timeout:?}: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the pool's containers are exactly `n`, none of `gone`.
    async fn wait_labelled(&self, n: usize, gone: &[String], timeout: Duration) -> Vec<String> {
        let t = Instant::now();
        loop {
            let have = self.labelled();
            if have.len() == n && have.iter().all(|id| !gone.contains(id)) {
                return have;
            }
            assert!(
                t.elapsed() < timeout,
                "containers {have:?}, want {n} and none of {gone:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Member `n` of the pool.
    fn member(&self, n: u32) -> String {
        format!("{}-{n}", self.pool)
    }

    fn members(&self, ns: &[u32]) -> Vec<String> {
        ns.iter().map(|&n| self.member(n)).collect()
    }
}

impl Drop for PoolProject {
    fn drop(&mut self) {
        // lb first, so that it starts no replacement while they go; then the
        // members, which would keep `down` from removing the network.
        let _ = run(self.p.compose().args(["kill"]));
        for id in self.labelled() {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}

fn docker(args: &[&str]) -> String {
    ok(Command::new("docker").args(args))
}

/// Ready members, sorted (single-digit member numbers sort as numbers).
fn ready(v: &Value) -> Vec<String> {
    let mut r = members_in(v, "ready");
    r.sort();
    r
}

/// Members in any state, sorted.
fn all_members(v: &Value) -> Vec<String> {
    let mut all: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and `make images` (or `make test-images`); `make test` runs it when `docker info` works"]
async fn compose_pool_lb_owns_its_app_containers() {
    run_on_engine(
        "compose pool test",
        Needs::ComposeAndImages,
        LIMIT,
        scenario(),
    )
    .await;
}

async fn scenario() {
    let g = PoolProject::new();
    let p = &g.p;
    let t0 = Instant::now();

    // Without the socket's group, lb (uid 65532) stops at start and names it.
    let socket = std::fs::metadata("/var/run/docker.sock").unwrap();
    if socket.mode() & 0o006 == 0 {
        let out = run(Command::new("docker")
            .args(["run", "--rm", "--network", "none"])
            .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
            .args([
                "-v",
                &format!("{}:/etc/lb/lb.toml:ro", g.config().display()),
            ])
            // The config's [tls] certificates, as the compose file mounts them
            // (PoolProject::new made them), so lb gets as far as the socket.
            .args([
                "-v",
                &format!(
                    "{}:/etc/lb/tls:ro",
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("deploy/tls")
                        .display()
                ),
            ])
            .arg("lb:local"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let want = format!("give lb group {}", socket.gid());
        assert!(err.contains(&want), "{err}");
    } else {
        println!("compose pool: the socket is world-writable here; lb's hint not checked");
    }

    // `up -d`: lb alone; it starts its pool before it opens its listener.
    ok(p.compose().args(["up", "-d"]));
    let healthy = p
        .until_lb_healthy(Instant::now(), Duration::from_secs(60))
        .await;
    println!("compose pool: `up -d` to lb healthy in {healthy:?}");
    let lb = p.container("lb");
    let who = docker(&[
        "inspect",
        "-f",
        "{{.Config.User}} {{.HostConfig.GroupAdd}}",
        &lb,
    ]);
    let gid = &g.p.env.iter().find(|(k, _)| *k == "DOCKER_GID").unwrap().1;
    assert_eq!(who, format!("65532:65532 [{gid}]"), "lb not unprivileged");
    let v = g.admin(&["pool", "status"]);
    assert_eq!(v["provider"], "docker");
    assert_eq!(v["size"], 3);
    assert_eq!(ready(&v), g.members(&[1, 2, 3]), "{v}");
    let first = g.labelled();
    assert_eq!(first.len(), 3, "{first:?}");
    // On the project's network ("@self"), at the address lb routes to.
    for m in g.members(&[1, 2, 3]) {
        let c = format!("lb-pool-{m}");
        let nets = docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            &c,
        ]);
        assert_eq!(nets.trim(), p.network(), "{c}");
        let addr = member_addr(&v, &m).expect("an address");
        assert_eq!(
            addr.to_string(),
            format!("{}:3000", container_ip(&c)),
            "{m}"
        );
    }
    p.until_listening().await;

    // Light open-loop load for everything that follows until lb is killed.
    let load = Load::start(
        &p.url("/api/whoami"),
        RATE,
        RATE as usize * 100,
        Duration::from_secs(100),
        reqwest::Method::GET,
    );
    let load_started = load.started;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every member answers: round robin over three healthy members gives
    // each a third, ±1; a quarter leaves room for a retry or two.
    let killed_at = Instant::now();
    for m in g.members(&[1, 2, 3]) {
        let (mine, all) = load.with_samples(|s| s.share(&m, load_started, killed_at));
        println!("compose pool: {m} served {mine} of {all}");
        assert!(
            all >= RATE as usize && mine * 4 >= all,
            "{m} served {mine} of {all}"
        );
    }

    // `docker kill` a member: lb notices (the engine's `die` event; health
    // checks every 1 s and check_interval = 5 s only if the event stream is
    // down), removes it and starts member 4.
    let victim = docker(&[
        "inspect",
        "-f",
        "{{.Id}}",
        &format!("lb-pool-{}", g.member(1)),
    ]);
    docker(&["kill", &victim]);
    let replacement = g.member(4);
    let served = load
        .wait_for(Duration::from_secs(30), |s| {
            s.iter()
                .filter(|x| x.ok() && x.backend == replacement && x.sent >= killed_at)
                .map(|x| x.done)
                .min()
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{replacement} not serving 30 s after the kill: {:?}",
                load.with_samples(|s| s.per_backend())
            )
        });
    let kill_to_serving = served.duration_since(killed_at);
    println!(
        "compose pool: docker kill {} -> {replacement} serving after {kill_to_serving:?}",
        g.member(1)
    );
    let v = g
        .wait_pool(Duration::from_secs(10), "member 1 replaced", |v| {
            all_members(v) == g.members(&[2, 3, 4]) && ready(v).len() == 3
        })
        .await;
    assert_eq!(v["replaced_total"], 1, "{v}");
    // lb removed the killed container.
    g.wait_labelled(3, &[victim], Duration::from_secs(10)).await;

    // Grow to 5 (max_size 6).
    let grow_at = Instant::now();
    let v = g.admin(&["pool", "size", "5"]);
    assert_eq!(v["size"], 5, "{v}");
    g.wait_pool(Duration::from_secs(30), "5 ready members", |v| {
        ready(v) == g.members(&[2, 3, 4, 5, 6])
    })
    .await;
    let grown = grow_at.elapsed();
    for m in g.members(&[5, 6]) {
        let got = load
            .wait_for(Duration::from_secs(10), |s| {
                s.first_served_by_after(&m, grow_at)
            })
            .await;
        assert!(got.is_some(), "{m} ready but not serving");
    }
    g.wait_labelled(5, &[], Duration::from_secs(5)).await;
    println!("compose pool: size 3 -> 5: 5 ready after {grown:?}");

    // Shrink to min_size 2: three members drain and stop, their containers go.
    let shrink_at = Instant::now();
    let v = g.admin(&["pool", "size", "2"]);
    assert_eq!(v["size"], 2, "{v}");
    let v = g
        .wait_pool(Duration::from_secs(40), "2 members left", |v| {
            all_members(v).len() == 2 && ready(v).len() == 2
        })
        .await;
    let kept = ready(&v);
    g.wait_labelled(2, &[], Duration::from_secs(10)).await;
    let shrunk = shrink_at.elapsed();
    println!("compose pool: size 5 -> 2: {kept:?} left after {shrunk:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = Instant::now();
    let samples = load.stop().await;
    let gone: BTreeSet<String> = g
        .members(&[2, 3, 4, 5, 6])
        .into_iter()
        .filter(|m| !kept.contains(m))
        .collect();
    assert!(
        samples
            .sent_between(shrink_at + shrunk, end)
            .iter()
            .all(|s| !gone.contains(&s.backend)),
        "a removed member served after it was gone"
    );

    let phases = [
        ("3 members", load_started, killed_at),
        ("kill one, replaced", killed_at, grow_at),
        ("grow 3 -> 5", grow_at, shrink_at),
        ("shrink 5 -> 2", shrink_at, end),
    ];
    for (what, from, to) in phases {
        let window = samples.sent_between(from, to);
        let failed: Vec<String> = window
            .iter()
            .filter(|s| !s.ok())
            .map(|s| s.outcome())
            .collect();
        println!(
            "compose pool: {what}: {} requests, {} failed {:?}, max latency {:?}",
            window.len(),
            failed.len(),
            failed.iter().take(3).collect::<Vec<_>>(),
            samples.max_latency(from, to)
        );
    }
    let failed = samples.failed();
    assert!(
        samples.len() as f64 >= 0.8 * RATE as f64 * end.duration_since(load_started).as_secs_f64(),
        "load generator fell behind: {} requests",
        samples.len()
    );
    assert!(failed.is_empty(), "{} failed requests", failed.len());

    // SIGKILL lb: no chance to stop its members; they keep running…
    let left = g.labelled();
    assert_eq!(left.len(), 2);
    docker(&["kill", &lb]);
    let t = Instant::now();
    while docker(&["inspect", "-f", "{{.State.Running}}", &lb]) == "true" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "lb still running after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(g.labelled(), left);
    // …until lb's next start removes them and starts its pool afresh.
    let restart_at = Instant::now();
    ok(p.compose().args(["up", "-d"]));
    assert_eq!(p.container("lb"), lb, "lb's container recreated");
    p.until_lb_healthy(Instant::now(), Duration::from_secs(60))
        .await;
    let v = g.admin(&["pool", "status"]);
    assert_eq!(ready(&v), g.members(&[1, 2, 3]), "{v}");
    let fresh = g.wait_labelled(3, &left, Duration::from_secs(5)).await;
    println!(
        "compose pool: lb killed and started again: {} left-overs removed, {} new members, after {:?}",
        left.len(),
        fresh.len(),
        restart_at.elapsed()
    );
    let removed = eventually(Duration::from_secs(5), || {
        // lb logs to stderr.
        let logs = run(Command::new("docker").args(["logs", &lb]));
        String::from_utf8_lossy(&logs.stderr).contains("removing a container left by an earlier lb")
    });
    assert!(removed.await, "no log line for the removed left-overs");

    // `down`: SIGTERM; lb stops and removes its members before it exits, so
    // Compose can remove the network.
    let down_at = Instant::now();
    ok(p.compose().args(["down"]));
    let down_took = down_at.elapsed();
    assert_eq!(
        g.labelled(),
        Vec::<String>::new(),
        "members left after down"
    );
    let net = run(Command::new("docker").args(["network", "inspect", &p.network()]));
    assert!(!net.status.success(), "{} still there", p.network());
    println!(
        "compose pool: `down` took {down_took:?}; total {:?}",
        t0.elapsed()
    );
}
