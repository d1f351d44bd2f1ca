//! The pool's size: `PUT /admin/pool/size` within its bounds, and a burst
//! growing the pool to `max_size`, shrinking it back when idle.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::support::*;

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
