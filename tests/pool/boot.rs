//! A pool boots to its size, reports itself in `GET /admin/pool`, the
//! metrics and the status page, and its members serve by round robin.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_size_members_and_reports_them() {
    serial("pool boot", LIMIT, async {
        let p = start("size = 3\nmin_size = 2\nmax_size = 4", &[]).await;
        // lb listens only once the members are healthy.
        let v = p.lb.pool().await;
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "provider",
            "size",
            "min_size",
            "max_size",
            "members",
            "started_total",
            "replaced_total",
            "recycled_total",
            "scaled_up_total",
            "scaled_down_total",
            "rollout",
        ];
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(v["provider"], "process");
        assert_eq!(
            (v["size"].as_u64(), v["min_size"].as_u64()),
            (Some(3), Some(2))
        );
        let names: Vec<String> = members_in(&v, "ready");
        let n = &p.name;
        assert_eq!(
            names,
            [format!("{n}-1"), format!("{n}-2"), format!("{n}-3")]
        );
        let m = &v["members"][0];
        for k in [
            "addr",
            "age_s",
            "memory_bytes",
            "in_flight",
            "requests_total",
        ] {
            assert!(m.get(k).is_some(), "member field {k}: {m}");
        }
        assert_eq!(v["rollout"], Value::Null);
        assert_eq!(v["recycled_total"], json!({"age": 0, "memory": 0}));
        // Members are ordinary backends, spread over by round robin.
        let picks = route_seq(&p.lb, 30).await;
        for name in &names {
            assert_eq!(picks.iter().filter(|b| *b == name).count(), 10, "{picks:?}");
        }
        let s = p.lb.scrape().await;
        assert_eq!(s.value("lb_pool_members", &[("state", "ready")]), 3.0);
        assert_eq!(s.value("lb_pool_starts_total", &[("result", "ok")]), 3.0);
        assert_eq!(
            s.value("lb_pool_recycles_total", &[("reason", "exited")]),
            0.0
        );
        assert_eq!(s.value("lb_pool_scale_total", &[("direction", "up")]), 0.0);
        let page = client()
            .get(p.lb.admin_url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("<section id=\"pool\">"),
            "status page shows the pool"
        );
        assert!(page.contains("process · size 3 (2..=4)"), "{page}");
        assert!(page.contains(&format!("<td>{}-1<div", p.name)), "{page}");
        let history: Value = client()
            .get(p.lb.admin_url("/history"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history["pool"]["members"].as_array().map(Vec::len), Some(3));
        // Memory is read from /proc at check_interval.
        assert!(p
            .lb
            .wait_pool(Duration::from_secs(3), |v| v["members"][0]["memory_bytes"]
                .as_u64()
                > Some(0))
            .await
            .is_some());
    })
    .await;
}
