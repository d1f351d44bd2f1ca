//! The pool's docker provider against the real engine: boot, a `docker kill`ed
//! member replaced, a rollout to another image, a reload rolling members to a
//! new `cpus` and `env` (the rolled-out image kept), SIGTERM removing every
//! container, containers left by a `kill -9`ed lb removed at the next start,
//! and then a `docker kill` noticed through the engine's event stream (with
//! `check_interval` and health too slow to be what noticed it), the times
//! from the kill printed. `#[ignore]`d, so a plain `cargo test` reports it as
//! ignored, never as passed; `make test` runs it (`--ignored`) when `docker
//! info` works. Run so, it fails when no engine is reachable
//! (tests/common/compose.rs).
//!
//! Nothing is pulled: the test builds its image `FROM scratch` out of the
//! debug `app` binary and the shared libraries it links (the release images
//! of `make images` are static, but take a release build). Members publish
//! their port on 127.0.0.1 (`pool.publish`), so all traffic stays on loopback.

mod common;

use std::time::{Duration, Instant};

use common::compose::{run_on_engine, Needs};
use common::*;
use serde_json::{json, Value};

/// Longest the whole test may take, the image build included.
const LIMIT: Duration = Duration::from_secs(180);

fn body(name: &str) -> String {
    format!(
        "[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n\n\
         [pool]\nprovider = \"docker\"\nname = \"{name}\"\nimage = \"{}\"\nsize = 2\n\
         network = \"bridge\"\npublish = \"127.0.0.1\"\ncontainer_port = 3000\ncpus = 0.5\n\
         memory = \"128m\"\nenv = {{ PERFORMANCE_MODE = \"normal\" }}\n\
         check_interval = \"300ms\"\ndrain_timeout = \"2s\"\nstart_timeout = \"20s\"\n",
        app_image()
    )
}

fn ready(v: &Value) -> Vec<String> {
    members_in(v, "ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine; `make test` runs it when `docker info` works"]
async fn docker_pool_replaces_a_killed_container_rolls_out_and_cleans_up() {
    run_on_engine("docker pool test", Needs::Engine, LIMIT, async {
        let (name, _, _) = unique_pool();
        let _cleanup = ContainerCleanup(name.clone());
        let mut lb = Lb::start(&body(&name)).await;
        let v = lb.pool().await;
        assert_eq!(v["provider"], "docker");
        assert_eq!(ready(&v), [format!("{name}-1"), format!("{name}-2")]);
        let ids = pool_containers(&name);
        assert_eq!(ids.len(), 2);
        let inspect = docker(&["inspect", "-f", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{index .Config.Labels \"lb.member\"}}", &format!("lb-pool-{name}-1")]);
        assert_eq!(inspect, format!("500000000 134217728 {name}-1"));
        // Memory comes from the engine's stats.
        assert!(lb
            .wait_pool(Duration::from_secs(10), |v| v["members"][0]["memory_bytes"].as_u64() > Some(0))
            .await
            .is_some());

        // docker kill → replaced, no request failed.
        let load = Load::start(&lb.url("/api/whoami"), 50, 50 * 30, Duration::from_secs(30), reqwest::Method::GET);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed = Instant::now();
        docker(&["kill", &format!("lb-pool-{name}-1")]);
        let replacement = format!("{name}-3");
        let served = load
            .wait_for(Duration::from_secs(20), |s| s.first_served_by_after(&replacement, killed))
            .await
            .expect("replacement serving");
        println!("docker kill → {replacement} serving after {:?}", served.saturating_duration_since(killed));

        // Rollout to another image, one member at a time.
        let r = lb
            .admin_call(reqwest::Method::POST, "/admin/pool/rollout", Some(&json!({"image": POOL_IMAGE_V2})))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        let done = lb
            .wait_pool(Duration::from_secs(60), |v| v["rollout"]["state"] == "done")
            .await
            .expect("rollout done");
        let samples = load.stop().await;
        let failed = samples.failed();
        println!("docker: {} requests, {} failed", samples.len(), failed.len());
        assert!(failed.is_empty(), "{:?}", failed.iter().take(3).map(|s| s.outcome()).collect::<Vec<_>>());
        assert_eq!(ready(&done), [format!("{name}-4"), format!("{name}-5")]);
        // "done" once the last old member drains; it is gone soon after.
        let images = || docker(&["ps", "--filter", &format!("label=lb.pool={name}"), "--format", "{{.Image}}"]);
        let only_v2 = eventually(Duration::from_secs(10), || {
            let i = images();
            i.lines().count() == 2 && i.lines().all(|i| i == POOL_IMAGE_V2)
        });
        assert!(only_v2.await, "{}", images());

        // A reload changing cpus and env rolls the members over to them and
        // keeps the image rolled out above (the file still names the first).
        let edited = body(&name)
            .replace("cpus = 0.5", "cpus = 0.25")
            .replace("PERFORMANCE_MODE = \"normal\"", "PERFORMANCE_MODE = \"high\"");
        lb.write_config(&edited);
        let r = lb.reload().await;
        assert_eq!(r.status, 200, "{}", r.text);
        let want = [format!("{name}-6"), format!("{name}-7")];
        let done = lb
            .wait_pool(Duration::from_secs(60), |v| v["rollout"]["state"] == "done" && ready(v) == want)
            .await
            .expect("rollout by reload done");
        assert_eq!(done["rollout"]["total"], 2);
        let inspect = docker(&["inspect", "-f", "{{.Config.Image}} {{.HostConfig.NanoCpus}} {{range .Config.Env}}{{.}} {{end}}", &format!("lb-pool-{name}-6")]);
        assert!(inspect.starts_with(&format!("{POOL_IMAGE_V2} 250000000 ")), "{inspect}");
        assert!(inspect.contains("PERFORMANCE_MODE=high"), "{inspect}");

        // SIGTERM: every container stopped and removed.
        assert_eq!(lb.stop().await.code(), Some(0));
        assert_eq!(pool_containers(&name), Vec::<String>::new());

        // kill -9: the containers stay (no parent-death signal for them)…
        lb.restart().await;
        let left = pool_containers(&name);
        assert_eq!(left.len(), 2);
        lb.signal(libc::SIGKILL);
        let _ = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(5)));
        assert_eq!(pool_containers(&name), left);
        // …until the next start removes them by label. That lb checks only
        // every minute and health-checks every 5 s, so a kill noticed within
        // a second was noticed by the engine's event stream.
        lb.write_config(
            &edited
                .replace("interval = \"100ms\"", "interval = \"5s\"")
                .replace("check_interval = \"300ms\"", "check_interval = \"60s\""),
        );
        lb.restart().await;
        let now = pool_containers(&name);
        assert_eq!(now.len(), 2);
        assert!(now.iter().all(|id| !left.contains(id)), "{left:?} still there: {now:?}");
        assert!(lb.log_text().contains("removing a container left by an earlier lb"));
        let (first, replacement) = (format!("{name}-1"), format!("{name}-3"));
        assert_eq!(ready(&lb.pool().await), [first.clone(), format!("{name}-2")]);
        let killed = Instant::now();
        docker(&["kill", &format!("lb-pool-{first}")]);
        let cli = killed.elapsed();
        let noticed = lb
            .wait_pool(Duration::from_secs(30), |v| !ready(v).contains(&first))
            .await
            .map(|_| killed.elapsed());
        let replaced = lb
            .wait_pool(Duration::from_secs(30), |v| ready(v).contains(&replacement))
            .await
            .map(|_| killed.elapsed());
        println!(
            "docker kill (the CLI returned after {cli:?}) → {first} out of ready after {noticed:?}, \
             {replacement} ready after {replaced:?} (check_interval 60s, health every 5s)"
        );
        let s = lb.scrape().await;
        let by = |r| s.value("lb_pool_recycles_total", &[("reason", r)]);
        assert_eq!((by("exited"), by("unhealthy")), (1.0, 0.0), "noticed as an exit, not by health");
        // The event reaches lb within milliseconds and the pool looks every
        // 100 ms; the rest is the `docker` CLI's start-up and /admin/pool's
        // 50 ms polling on a 2-core machine. Polling (60 s) or health (two
        // failed checks 5 s apart) could not be this fast.
        let noticed = noticed.expect("kill noticed");
        assert!(noticed < Duration::from_secs(1), "kill noticed after {noticed:?}");
        // Plus creating and starting a container and one probe.
        let replaced = replaced.expect("replacement ready");
        assert!(replaced < Duration::from_secs(5), "replacement ready after {replaced:?}");
        assert_eq!(lb.stop().await.code(), Some(0));
    })
    .await;
}
