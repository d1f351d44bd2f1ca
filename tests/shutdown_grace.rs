//! The stop at SIGTERM follows the config lb runs *now*: a reload that raises
//! `server.grace_period` or `pool.drain_timeout` lengthens the next stop, so
//! lb neither drops its own in-flight requests nor kills members still
//! stopping on the bound it computed at start.
//!
//! The harness starts lb with `grace_period = "1s"`; each test reloads a
//! longer value and shows the longer stop happen, on timings that the start
//! value cannot reach (margins of seconds, not milliseconds).

mod common;

use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Rewrites lb's config file, `from` replaced by `to`, and reloads.
async fn reload_replacing(lb: &Lb, from: &str, to: &str) {
    let path = lb.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let r = lb.reload().await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_grace_period_bounds_the_next_stop() {
    serial("reloaded grace period", LIMIT, async {
        // The request takes 3 s: longer than the 1 s lb started with.
        let mut slow = named("app-1");
        slow.delay = Duration::from_millis(3000);
        let apps = Apps::start(vec![slow]).await;
        let mut lb = Lb::start(&apps.backends_toml(&[1])).await;
        reload_replacing(&lb, "grace_period = \"1s\"", "grace_period = \"6s\"").await;

        let url = lb.url("/api/whoami");
        let inflight =
            tokio::spawn(
                async move { client().get(url).send().await.map(|r| r.status().as_u16()) },
            );
        assert!(eventually(Duration::from_secs(5), || apps.apps[0].in_flight() > 0).await);
        let signalled = Instant::now();
        lb.signal(libc::SIGTERM);
        let status = inflight.await.unwrap();
        let exit = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(10)));
        let took = signalled.elapsed();
        println!("in flight: {status:?}, exit {exit:?} after {took:?}");
        assert_eq!(
            status.ok(),
            Some(200),
            "the in-flight request was cut at the start value of grace_period"
        );
        assert_eq!(exit.and_then(|s| s.code()), Some(0));
        // Exits once the request is done (~3 s after it began), well before
        // the 6 s grace period ends.
        assert!(took < Duration::from_millis(5000), "{took:?}");
        let log = lb.log_text();
        assert!(log.contains("grace_ms=6000"), "the reloaded bound: {log}");
        assert!(log.contains("all requests finished; exiting"), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_drain_timeout_lets_members_stop_in_their_own_time() {
    serial("reloaded drain timeout", LIMIT, async {
        let (name, lo, hi) = unique_pool();
        let _guard = PoolGuard(name.clone());
        // After SIGTERM the member keeps serving 7 s, then exits by itself
        // (a preStop-like drain). lb starts with drain_timeout 1 s: the stop
        // bound of that config is grace 1 s + drain 1 s + 2 s slack = 4 s.
        let body = pool_toml(
            &name,
            (lo, hi),
            "size = 1\ndrain_timeout = \"1s\"",
            &["--shutdown-delay-ms", "7000"],
        );
        let mut lb = Lb::start(&body).await;
        let pid = member_pid(&name, &format!("{name}-1")).expect("the member runs");
        reload_replacing(&lb, "drain_timeout = \"1s\"", "drain_timeout = \"15s\"").await;

        let signalled = Instant::now();
        lb.signal(libc::SIGTERM);
        // Past the start config's bound (4 s, +1 s for Pingora's runtimes),
        // the member is still in its drain, lb still waiting for it.
        tokio::time::sleep(Duration::from_millis(5500)).await;
        assert!(
            alive(pid),
            "member killed {:?} after SIGTERM, inside its 7 s drain (drain_timeout is 15 s)",
            signalled.elapsed()
        );
        assert!(lb.is_running(), "lb exited before its member stopped");
        let exit = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(15)));
        let took = signalled.elapsed();
        println!("exit {exit:?} after {took:?}");
        assert_eq!(exit.and_then(|s| s.code()), Some(0));
        // The member exited by itself after its 7 s (not SIGKILLed at 15 s),
        // and lb right after it.
        assert!(
            took >= Duration::from_millis(7000) && took < Duration::from_millis(12_000),
            "{took:?}"
        );
        assert!(!alive(pid));
        let log = lb.log_text();
        // 15 s + 2 s of slack, as reloaded.
        assert!(log.contains("pool_stop_ms=17000"), "{log}");
        assert!(log.contains("pool: every member stopped"), "{log}");
        assert!(!log.contains("ignored SIGTERM"), "{log}");
    })
    .await;
}
