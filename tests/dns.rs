//! DNS re-resolution: a backend hostname that moves to a new IP is followed
//! without a reload; when DNS fails, the last good address keeps serving.
//! A tiny in-test DNS server on loopback answers for `app.lbtest`.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
/// Which app (by container id) answers through lb.
async fn who(c: &reqwest::Client, lb: &Lb) -> String {
    let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    v["container"].as_str().unwrap().to_string()
}

/// Polls (for at most 5 s) until the app called `id` answers; how long it took.
async fn until_served_by(c: &reqwest::Client, lb: &Lb, id: &str) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if who(c, lb).await == id {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_moving_to_a_new_ip_is_followed_without_reload() {
    // Two apps on the same port of two loopback addresses: the "old" and the
    // "recreated" container.
    let l_old = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = l_old.local_addr().unwrap().port();
    let l_new = tokio::net::TcpListener::bind(("127.0.0.3", port))
        .await
        .unwrap();
    let (old, new) = (App::new(named("old")), App::new(named("new")));
    tokio::spawn(app::serve(l_old, old.clone(), std::future::pending()));
    tokio::spawn(app::serve(l_new, new.clone(), std::future::pending()));

    let dns = TestDns::start(Some(Ipv4Addr::new(127, 0, 0, 2))).await;
    let dns_addr = dns.addr;
    let body = format!(
        "[discovery]\ninterval = \"100ms\"\nnameservers = [\"{dns_addr}\"]\n\n\
         [[backends]]\nname = \"app\"\naddr = \"app.lbtest:{port}\"\n"
    );
    let lb = Lb::start(&body).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(who(&c, &lb).await, "old");
    }
    let etag = lb.admin_get("/admin/weights").await.etag;
    // A client whose one connection stays idle (kept alive) across the move.
    let idle = client();
    assert_eq!(who(&idle, &lb).await, "old");

    // The container is recreated with a new IP.
    dns.set(Some(Ipv4Addr::new(127, 0, 0, 3)));
    let followed = until_served_by(&c, &lb, "new")
        .await
        .expect("lb did not follow the new address within 5 s");
    println!("dns: followed the new address after {followed:?} (interval 100 ms)");
    // Its next request goes to the new address too: lb routes a request by the
    // state at its arrival, not by the one its connection last saw.
    assert_eq!(
        who(&idle, &lb).await,
        "new",
        "a connection idle across the move"
    );
    // Not an operator change: the admin ETag stays, so an operator's If-Match
    // taken before the move still applies.
    assert_eq!(lb.admin_get("/admin/weights").await.etag, etag);
    let r = client()
        .put(lb.admin_url("/admin/weights"))
        .bearer_auth(ADMIN_TOKEN)
        .header("if-match", &etag)
        .json(&serde_json::json!({"app": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "If-Match {etag} after a DNS change");

    // DNS breaks: the last good address keeps serving, and the failure is
    // logged once, not every interval.
    dns.set(None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..5 {
        assert_eq!(who(&c, &lb).await, "new");
    }
    let log = lb.log_text();
    assert_eq!(log.matches("cannot resolve").count(), 1, "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_to_new_nameservers() {
    let l_a = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = l_a.local_addr().unwrap().port();
    let l_b = tokio::net::TcpListener::bind(("127.0.0.3", port))
        .await
        .unwrap();
    tokio::spawn(app::serve(
        l_a,
        App::new(named("via-dns-1")),
        std::future::pending(),
    ));
    tokio::spawn(app::serve(
        l_b,
        App::new(named("via-dns-2")),
        std::future::pending(),
    ));
    // Two DNS servers that disagree about app.lbtest.
    let dns1 = TestDns::start(Some(Ipv4Addr::new(127, 0, 0, 2))).await;
    let dns2 = TestDns::start(Some(Ipv4Addr::new(127, 0, 0, 3))).await;
    let body = |ns: std::net::SocketAddr| {
        format!(
            "[discovery]\ninterval = \"100ms\"\nnameservers = [\"{ns}\"]\n\n\
             [[backends]]\nname = \"app\"\naddr = \"app.lbtest:{port}\"\n"
        )
    };
    let lb = Lb::start(&body(dns1.addr)).await;
    let c = client();
    assert_eq!(who(&c, &lb).await, "via-dns-1");
    lb.write_config(&body(dns2.addr));
    assert_eq!(lb.reload().await.status, 200);
    let switched = until_served_by(&c, &lb, "via-dns-2")
        .await
        .expect("the reloaded nameservers were not used within 5 s");
    println!("dns: new nameservers in use {switched:?} after the reload (interval 100 ms)");
    assert!(dns2.queries() > 0);
}
