//! `resolve = "all"` (SPEC "Backends that resolve to many addresses"): a group
//! follows its name's addresses (A and AAAA) as they come and go, under load and
//! without a failed request; members keep their state by address across
//! re-resolutions and reloads; the admin API takes group and member names; the
//! 64-backend cap keeps the lowest addresses and logs once.
//!
//! Apps listen on the same port of several loopback addresses (127.0.0.x and
//! ::1), the "replicas"; a test DNS server on loopback answers for the name.
//! The tests run one at a time (`common::serial`).

mod common;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn serial(test: impl Future<Output = ()>) {
    common::serial("groups", TEST_LIMIT, test).await;
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Apps called by their address, all on one port; (port, apps).
async fn replicas(ips: &[&str]) -> (u16, Vec<std::sync::Arc<App>>) {
    'port: for _ in 0..20 {
        let first = tokio::net::TcpListener::bind((ip(ips[0]), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for a in &ips[1..] {
            match tokio::net::TcpListener::bind((ip(a), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'port, // taken on that address: another port
            }
        }
        let mut apps = Vec::new();
        for l in listeners {
            let id = l.local_addr().unwrap().to_string();
            let a = App::new(named(&id));
            tokio::spawn(app::serve(l, a.clone(), std::future::pending()));
            apps.push(a);
        }
        return (port, apps);
    }
    panic!("no port free on all of {ips:?}");
}

/// The member name for `ip:port` in group `app`.
fn member(ip: &str, port: u16) -> String {
    format!("app@{}", SocketAddr::new(self::ip(ip), port))
}

fn group_body(dns: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        "[discovery]\ninterval = \"100ms\"\nnameservers = [\"{dns}\"]\n\
         [log]\naccess = false\n\n\
         [[backends]]\nname = \"app\"\naddr = \"app.lbtest:{port}\"\nresolve = \"all\"\nweight = 10\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_follows_its_addresses_up_and_down_under_load_without_failures() {
    serial(async {
        let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"];
        let (port, _apps) = replicas(&ips).await;
        let dns = TestDns::start_all(Some(vec![ip(ips[0]), ip(ips[1])])).await;
        let lb = Lb::start(&group_body(dns.addr, port, "")).await;
        let names: Vec<String> = ips.iter().map(|a| member(a, port)).collect();

        // 200 requests/s, open loop, throughout: two replicas, then four
        // (one IPv6), then one.
        let load = Load::start(
            &lb.url("/api/whoami"),
            200,
            20_000,
            Duration::from_secs(40),
            reqwest::Method::GET,
        );
        let served = |name: &str, after: Instant| {
            let name = name.to_string();
            move |s: &[Sample]| s.first_served_by_after(&name, after)
        };
        for n in &names[..2] {
            assert!(
                load.wait_for(Duration::from_secs(5), served(n, load.started))
                    .await
                    .is_some(),
                "{n} never served"
            );
        }
        let up = Instant::now();
        dns.set_all(Some(ips.iter().map(|a| ip(a)).collect()));
        let mut joined = Vec::new();
        for n in &names[2..] {
            let first = load.wait_for(Duration::from_secs(5), served(n, up)).await;
            joined.push(first.unwrap_or_else(|| panic!("{n} never served")) - up);
        }
        let down = Instant::now();
        dns.set_all(Some(vec![ip(ips[2])]));
        // Until the removed members get nothing new: the last request they
        // answered was sent within a bounded time of the change.
        let only_one = load
            .wait_for(Duration::from_secs(5), |s| {
                let recent = s.sent_between(down + Duration::from_millis(500), Instant::now());
                (recent.len() >= 100 && recent.iter().all(|x| x.backend == names[2])).then_some(())
            })
            .await;
        assert!(only_one.is_some(), "traffic still reaches removed members");
        let samples = load.stop().await;
        let failed = samples.failed();
        assert!(
            failed.is_empty(),
            "{} of {} failed, e.g. {:?}",
            failed.len(),
            samples.len(),
            failed.first().map(|s| s.outcome())
        );
        let last_on_removed = names
            .iter()
            .filter(|n| **n != names[2])
            .filter_map(|n| samples.last_served_by(n))
            .max()
            .unwrap();
        println!(
            "groups: {} requests, 0 failed; new members served after {joined:?} (interval 100 ms); \
             removed members' last answer {:?} after the change",
            samples.len(),
            last_on_removed.saturating_duration_since(down)
        );

        // The admin API lists members with their group; metrics are per member.
        let list = lb.admin_get("/admin/backends").await.json;
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0]["name"].as_str(), list[0]["group"].as_str()),
            (Some(&*names[2]), Some("app"))
        );
        assert_eq!(list[0]["addr"], format!("app.lbtest:{port}"));
        let m = lb.scrape().await;
        assert!(m.backend("lb_requests_total", &names[2], &[("code", "2xx")]) > 0.0);
        // Through lb's non-blocking log writer: poll.
        assert!(
            eventually(std::time::Duration::from_secs(2), || lb
                .log_text()
                .contains("dns: members changed"))
            .await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_member_names_in_the_admin_api_and_state_across_reloads() {
    serial(async {
        let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
        let (port, apps) = replicas(&ips).await;
        let dns = TestDns::start_all(Some(vec![ip(ips[0]), ip(ips[1])])).await;
        let lb = Lb::start(&group_body(dns.addr, port, "")).await;
        let (m2, m3, m4) = (
            member(ips[0], port),
            member(ips[1], port),
            member(ips[2], port),
        );
        let weights = lb.weights().await;
        assert_eq!(
            weights.keys().cloned().collect::<Vec<_>>(),
            vec![m2.clone(), m3.clone()]
        );

        // A group name sets every member; a member name only that member.
        let w = lb.set_weights(&json!({"app": 5})).await;
        assert_eq!((w[&m2], w[&m3]), (5, 5));
        let w = lb.set_weights(&json!({ m2.clone(): 0 })).await;
        assert_eq!((w[&m2], w[&m3]), (0, 5));
        let c = client();
        for _ in 0..10 {
            assert_eq!(
                get_backend(&c, &lb.url("/api/whoami")).await,
                (200, m3.clone())
            );
        }
        // A new replica joins with the group's weight; the others keep theirs.
        dns.set_all(Some(ips.iter().map(|a| ip(a)).collect()));
        let mut w = lb.weights().await;
        let t = Instant::now();
        while !w.contains_key(&m4) && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            w = lb.weights().await;
        }
        assert_eq!((w[&m2], w[&m3], w[&m4]), (0, 5, 5));
        let before = lb.backends().await[&m3]["requests_total"].as_u64().unwrap();
        assert!(before >= 10);

        // A reload of the same file keeps members, their counters and weights.
        assert_eq!(lb.reload().await.status, 200);
        let b = lb.backends().await;
        assert_eq!(
            b.keys().cloned().collect::<Vec<_>>(),
            vec![m2.clone(), m3.clone(), m4.clone()]
        );
        assert!(
            b[&m3]["requests_total"].as_u64().unwrap() >= before,
            "counters kept"
        );
        assert_eq!(
            (b[&m2]["weight"].as_u64(), b[&m4]["weight"].as_u64()),
            (Some(0), Some(5))
        );

        // Modes: the group's applies to all members (the answer lists them).
        let r = lb
            .admin_put("/admin/backends/app/mode", &json!({"mode": "maintenance"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.json);
        let views = r.json.as_array().unwrap();
        assert_eq!(views.len(), 3);
        assert!(views
            .iter()
            .all(|v| v["mode"] == "maintenance" && v["group"] == "app"));
        let (st, _) = get_backend(&c, &lb.url("/api/whoami")).await;
        assert_eq!(st, 503, "every member in maintenance");
        // A member by name ([ and ] percent-encoded in a path; none here).
        let r = lb
            .admin_put(
                &format!("/admin/backends/{m4}/mode"),
                &json!({"mode": "active"}),
            )
            .await;
        assert_eq!((r.status, r.json["name"].as_str()), (200, Some(&*m4)));
        for _ in 0..5 {
            assert_eq!(
                get_backend(&c, &lb.url("/api/whoami")).await,
                (200, m4.clone())
            );
        }
        let r = lb
            .admin_put("/admin/backends/nope/mode", &json!({"mode": "drain"}))
            .await;
        assert_eq!(r.status, 404);
        assert!(apps[2].api_requests_total() >= 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_cap_counts_members_and_keeps_the_lowest_addresses() {
    serial(async {
        // 70 addresses nobody listens on (nothing is sent there) plus one
        // static backend: 63 members fit.
        let many: Vec<IpAddr> = (1..=70).map(|i| ip(&format!("127.0.1.{i}"))).collect();
        let dns = TestDns::start_all(Some(many.iter().rev().copied().collect())).await;
        let apps = Apps::plain(1).await;
        let body = format!(
            "{}\n[[backends]]\nname = \"static\"\naddr = \"{}\"\n",
            group_body(dns.addr, 3000, ""),
            apps.addrs[0]
        );
        let lb = Lb::start(&body).await;
        let b = lb.backends().await;
        assert_eq!(b.len(), 64);
        assert!(b.contains_key("static"));
        let members: Vec<&String> = b.keys().filter(|k| k.starts_with("app@")).collect();
        assert_eq!(members.len(), 63);
        // The lowest 63 addresses, whatever order DNS answered in.
        for i in 1..=63 {
            assert!(
                b.contains_key(&format!("app@127.0.1.{i}:3000")),
                "127.0.1.{i} kept"
            );
        }
        assert!(!b.contains_key("app@127.0.1.64:3000"));
        // Logged once, though every 100 ms round sees the same answer.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = lb.log_text();
        assert_eq!(
            log.matches("more addresses than the backend cap").count(),
            1,
            "{log}"
        );
    })
    .await;
}
