//! Members replaced and recycled under load, with 0 failed requests: a
//! `kill -9`ed member, one over `max_memory`, members over `max_age`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

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
