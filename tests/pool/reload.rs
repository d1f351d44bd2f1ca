//! A config reload with a `[pool]`: the members and their stats kept, sizes
//! and policy applied live, restart-only keys named, a new command rolled
//! out member by member under load.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

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
