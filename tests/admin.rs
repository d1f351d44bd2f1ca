//! Admin API through a real lb: auth, every endpoint's success path, every
//! refusal leaving state untouched, ETag/If-Match, modes, and weight changes
//! under concurrent load.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

/// A client for the admin API of `lb`.
struct AdminClient {
    c: reqwest::Client,
    base: String,
}

impl AdminClient {
    fn new(lb: &Lb) -> Self {
        AdminClient {
            c: client(),
            base: format!("http://{}", lb.admin),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        if_match: Option<&str>,
    ) -> (u16, String, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .c
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        if let Some(e) = if_match {
            req = req.header("if-match", e);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let etag = header(&r, "etag");
        let v = r.json().await.unwrap_or(Value::Null);
        (status, etag, v)
    }

    async fn get(&self, path: &str) -> (u16, String, Value) {
        self.call("GET", path, None, None).await
    }

    async fn put(&self, path: &str, body: &str) -> (u16, String, Value) {
        self.call("PUT", path, Some(body), None).await
    }
}

async fn four() -> (Apps, Lb) {
    let apps = Apps::plain(4).await;
    let lb = Lb::start(&apps.backends_toml(&[1, 1, 1, 1])).await;
    (apps, lb)
}

/// Backends answering the next `n` GETs.
async fn route(lb: &Lb, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (st, b) = get_backend(&c, &lb.url("/api/whoami")).await;
        assert_eq!(st, 200);
        out.push(b);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_for_admin_only() {
    let (_apps, lb) = four().await;
    let c = client();
    let base = format!("http://{}", lb.admin);
    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let page = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    let html = page.text().await.unwrap();
    for name in ["app-1", "app-2", "app-3", "app-4", "round_robin"] {
        assert!(html.contains(name), "status page lacks {name}");
    }
    assert_eq!(
        c.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(format!("{base}/admin/weights")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), "Bearer");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string());
    for bad in ["wrong", "", &format!("{ADMIN_TOKEN}x")] {
        let r = c
            .put(format!("{base}/admin/weights"))
            .bearer_auth(bad)
            .body(r#"{"app-1": 0}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "token {bad:?}");
    }
    let a = AdminClient::new(&lb);
    let (st, etag, w) = a.get("/admin/weights").await;
    assert_eq!(st, 200);
    assert!(etag.starts_with('"'), "ETag {etag:?}");
    // The unauthorised PUT changed nothing.
    assert_eq!(w, json!({"app-1": 1, "app-2": 1, "app-3": 1, "app-4": 1}));
}

/// The status page's assets and data are open and carry the strict policy;
/// `/history` shows the traffic within a couple of samples and a weight change
/// among its events (the page itself is driven in tests/status_page.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_assets_and_history() {
    let (_apps, lb) = four().await;
    let c = client();
    for (path, kind) in [
        ("/", "text/html"),
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
        ("/history", "application/json"),
    ] {
        let r = c.get(lb.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(header(&r, "content-type").starts_with(kind), "{path}");
        let csp = header(&r, "content-security-policy");
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
    }
    route(&lb, 40).await;
    let history = || async {
        let r = c.get(lb.admin_url("/history")).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let mut seen = false;
    for _ in 0..100 {
        let h = history().await;
        let b = h["backends"].as_array().unwrap();
        if b.len() == 4
            && b.iter()
                .all(|b| b["requests_total"] == 10 && b["rps"].as_f64().unwrap() > 0.0)
        {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "/history never showed the traffic: {}",
        history().await
    );
    lb.set_weights(&json!({"app-4": 3})).await;
    let mut event = false;
    for _ in 0..50 {
        let h = history().await;
        event = h["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "weight" && e["backend"] == "app-4" && e["from"] == "1" && e["to"] == "3"
        });
        if event {
            assert_eq!(h["backends"][3]["weight"], 3);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(event, "no weight event: {}", history().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_route_the_very_next_requests() {
    let (_apps, lb) = four().await;
    let a = AdminClient::new(&lb);
    let (st, _, w) = a
        .put("/admin/weights", r#"{"app-2": 0, "app-3": 0, "app-4": 0}"#)
        .await;
    assert_eq!(st, 200);
    assert_eq!(w, json!({"app-1": 1, "app-2": 0, "app-3": 0, "app-4": 0}));
    let picks = route(&lb, 100).await;
    assert!(picks.iter().all(|b| b == "app-1"), "{picks:?}");
    let (_, _, w) = a.put("/admin/weights", r#"{"app-1": 3, "app-2": 1}"#).await;
    assert_eq!(w, json!({"app-1": 3, "app-2": 1, "app-3": 0, "app-4": 0}));
    let picks = route(&lb, 100).await;
    assert_eq!(tally(&picks, &["app-1", "app-2"]), vec![75, 25]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_apply_to_a_kept_alive_connections_next_request() {
    // One client connection throughout: its next request after a change is
    // routed by the new state, not by what lb saw before the connection's
    // idle wait (fails on the fast path that took its snapshot then).
    let (_apps, lb) = four().await;
    let c = client();
    let url = lb.url("/api/whoami");
    assert_eq!(get_backend(&c, &url).await.0, 200);
    lb.set_weights(&json!({"app-2": 0, "app-3": 0, "app-4": 0}))
        .await;
    for _ in 0..4 {
        assert_eq!(get_backend(&c, &url).await, (200, "app-1".to_string()));
    }
    lb.set_mode("app-1", "maintenance").await;
    assert_eq!(get_backend(&c, &url).await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_leave_state_untouched() {
    let (_apps, lb) = four().await;
    let a = AdminClient::new(&lb);
    let (_, etag0, w0) = a.get("/admin/weights").await;
    let cases = [
        ("PUT", "/admin/weights", r#"{"app-1": "#, 400),
        ("PUT", "/admin/weights", "not json", 400),
        ("PUT", "/admin/weights", r#"[1, 2]"#, 422),
        ("PUT", "/admin/weights", r#"{"nope": 1}"#, 422),
        ("PUT", "/admin/weights", r#"{"app-1": 0, "nope": 1}"#, 422),
        ("PUT", "/admin/weights", r#"{"app-1": 1001}"#, 422),
        ("PUT", "/admin/weights", r#"{"app-1": -1}"#, 422),
        ("PUT", "/admin/weights", r#"{"app-1": 1.5}"#, 422),
        ("PUT", "/admin/weights", r#"{"app-1": "3"}"#, 422),
        (
            "PUT",
            "/admin/weights",
            r#"{"app-1": 0, "app-2": 0, "app-3": 0, "app-4": 0}"#,
            422,
        ),
        (
            "PUT",
            "/admin/backends/app-1/mode",
            r#"{"mode": "sleep"}"#,
            422,
        ),
        ("PUT", "/admin/backends/app-1/mode", r#"{"mode": "#, 400),
        (
            "PUT",
            "/admin/backends/nope/mode",
            r#"{"mode": "drain"}"#,
            404,
        ),
        (
            "PUT",
            "/admin/algorithm",
            r#"{"algorithm": "fastest"}"#,
            422,
        ),
        ("PUT", "/admin/algorithm", r#"{"algo": "ip_hash"}"#, 422),
        // Mutations are never accepted over GET (and reads not over POST).
        ("GET", "/admin/reload", "", 405),
        ("POST", "/admin/weights", r#"{"app-1": 0}"#, 405),
    ];
    for (m, path, body, want) in cases {
        let (st, _, v) = a.call(m, path, Some(body), None).await;
        assert_eq!(st, want, "{m} {path} {body}: {v}");
        assert!(
            v["error"].is_string(),
            "{m} {path}: JSON error expected, got {v}"
        );
    }
    let (_, etag1, w1) = a.get("/admin/weights").await;
    assert_eq!((etag1, w1), (etag0, w0), "state changed");
    let (_, _, backends) = a.get("/admin/backends").await;
    assert!(backends
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["mode"] == "active"));
    assert_eq!(
        a.get("/admin/algorithm").await.2,
        json!({"algorithm": "round_robin"})
    );
    let picks: HashSet<String> = route(&lb, 8).await.into_iter().collect();
    assert_eq!(picks.len(), 4, "routing changed: {picks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_gets_412() {
    let (_apps, lb) = four().await;
    let a = AdminClient::new(&lb);
    let (_, etag, _) = a.get("/admin/weights").await;
    let (st, etag2, _) = a
        .call(
            "PUT",
            "/admin/weights",
            Some(r#"{"app-1": 2}"#),
            Some(&etag),
        )
        .await;
    assert_eq!(st, 200);
    assert_ne!(etag, etag2);
    // The old ETag is stale now: refused, nothing changes.
    let (st, _, v) = a
        .call(
            "PUT",
            "/admin/weights",
            Some(r#"{"app-1": 9}"#),
            Some(&etag),
        )
        .await;
    assert_eq!(st, 412, "{v}");
    let (st, _, _) = a
        .call(
            "PUT",
            "/admin/algorithm",
            Some(r#"{"algorithm": "least_conn"}"#),
            Some(&etag),
        )
        .await;
    assert_eq!(st, 412);
    let (_, etag3, w) = a.get("/admin/weights").await;
    assert_eq!(etag3, etag2);
    assert_eq!(w["app-1"], 2);
    assert_eq!(
        a.get("/admin/algorithm").await.2["algorithm"],
        "round_robin"
    );
    // RFC 9110 strong comparison: the weak form of the current ETag never
    // matches, for any endpoint.
    let weak = format!("W/{etag3}");
    let (st, _, v) = a
        .call(
            "PUT",
            "/admin/weights",
            Some(r#"{"app-1": 9}"#),
            Some(&weak),
        )
        .await;
    assert_eq!(st, 412, "weak ETag accepted: {v}");
    // POST /admin/reload honours If-Match too: stale or weak → 412, nothing
    // reloaded (the ETag stays); current → reloaded.
    for stale in [etag.as_str(), weak.as_str()] {
        let (st, _, v) = a.call("POST", "/admin/reload", None, Some(stale)).await;
        assert_eq!(st, 412, "reload with If-Match {stale}: {v}");
    }
    assert_eq!(a.get("/admin/weights").await.1, etag3);
    let (st, etag4, _) = a.call("POST", "/admin/reload", None, Some(&etag3)).await;
    assert_eq!(st, 200);
    assert_ne!(etag4, etag3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_algorithm_and_reload_success_paths() {
    let (_apps, lb) = four().await;
    let a = AdminClient::new(&lb);
    route(&lb, 8).await;
    // A request counts as in flight until lb has finished it, which on the
    // Pingora path (LB_PATH=pingora) is just after the client has its
    // response: poll (bounded) until the last slots are given back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let list = loop {
        let (st, _, v) = a.get("/admin/backends").await;
        assert_eq!(st, 200);
        let idle = v.as_array().unwrap().iter().all(|b| b["in_flight"] == 0);
        if idle || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    for b in list {
        for k in [
            "name",
            "addr",
            "weight",
            "effective_weight",
            "health",
            "circuit",
            "mode",
            "in_flight",
            "max_in_flight",
            "requests_total",
            "errors_total",
            "ewma_ms",
        ] {
            assert!(!b[k].is_null(), "{k} missing in {b}");
        }
        assert_eq!(b["health"], "up");
        assert_eq!(b["circuit"], "closed");
        assert_eq!(b["requests_total"], 2);
        assert_eq!(b["in_flight"], 0);
        assert_eq!(b["max_in_flight"], 0);
    }
    let (st, _, v) = a
        .put("/admin/algorithm", r#"{"algorithm": "least_conn"}"#)
        .await;
    assert_eq!((st, v), (200, json!({"algorithm": "least_conn"})));
    assert_eq!(
        a.get("/admin/algorithm").await.2,
        json!({"algorithm": "least_conn"})
    );
    let (st, _, v) = a.call("POST", "/admin/reload", None, None).await;
    assert_eq!(st, 200, "{v}");
    // Reloading the unchanged file keeps the runtime algorithm.
    assert_eq!(
        a.get("/admin/algorithm").await.2,
        json!({"algorithm": "least_conn"})
    );
    // Log lines reach the file through lb's non-blocking writer: poll.
    assert!(
        eventually(std::time::Duration::from_secs(2), || lb
            .log_text()
            .contains("admin change"))
        .await,
        "no audit line"
    );
}

/// A cookie-pinned client: (cookie, backend it is pinned to).
async fn pinned_client(lb: &Lb) -> (String, String) {
    let r = client().get(lb.url("/api/whoami")).send().await.unwrap();
    let cookie = header(&r, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, header(&r, "x-backend"))
}

async fn backend_with_cookie(lb: &Lb, cookie: &str) -> String {
    let r = client()
        .get(lb.url("/api/whoami"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    header(&r, "x-backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_sticky_clients_and_maintenance_stops_all() {
    let apps = Apps::plain(4).await;
    let body = format!(
        "[balancer]\nsticky = \"cookie\"\n\n{}",
        apps.backends_toml(&[1, 1, 1, 1])
    );
    let lb = Lb::start(&body).await;
    let a = AdminClient::new(&lb);
    // Pin clients until one is on app-2.
    let mut pinned = None;
    for _ in 0..8 {
        let (cookie, b) = pinned_client(&lb).await;
        if b == "app-2" {
            pinned = Some(cookie);
        }
    }
    let cookie = pinned.expect("round robin pins one of 8 new clients to app-2");
    let (st, _, v) = a
        .put("/admin/backends/app-2/mode", r#"{"mode": "drain"}"#)
        .await;
    assert_eq!((st, v["mode"].as_str()), (200, Some("drain")));
    // The sticky client stays; 40 new clients never land on app-2.
    for _ in 0..20 {
        assert_eq!(backend_with_cookie(&lb, &cookie).await, "app-2");
    }
    for _ in 0..40 {
        assert_ne!(pinned_client(&lb).await.1, "app-2");
    }
    // Maintenance: nobody, not even the pinned client, who is re-pinned.
    let (st, _, _) = a
        .put("/admin/backends/app-2/mode", r#"{"mode": "maintenance"}"#)
        .await;
    assert_eq!(st, 200);
    let r = client()
        .get(lb.url("/api/whoami"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_ne!(header(&r, "x-backend"), "app-2");
    assert!(
        header(&r, "set-cookie").starts_with("lb_sticky="),
        "not re-pinned"
    );
    let picks = route(&lb, 40).await;
    assert!(!picks.contains(&"app-2".to_string()));
    // Active again: back in rotation.
    a.put("/admin/backends/app-2/mode", r#"{"mode": "active"}"#)
        .await;
    assert!(route(&lb, 8).await.contains(&"app-2".to_string()));
}

/// The one-hot weight map with backend `hot` (1..=4) at 1, the others at 0.
fn one_hot(hot: usize) -> serde_json::Map<String, Value> {
    (1..=4)
        .map(|k| (format!("app-{k}"), json!(u32::from(k == hot))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_weight_changes_under_load_are_never_torn() {
    // Writers only ever install one-hot maps (exactly one backend at 1), each in
    // a single PUT that sets all four. Every map anyone observes — a PUT's
    // answer, GET /admin/weights, the weights in GET /admin/backends — must be
    // the initial map or one of the four one-hot maps in full; a torn map (some
    // of one PUT, some of another) has zero or two hot backends. Meanwhile
    // proxied requests must all be answered by one of the four. Over HTTP this
    // samples a few hundred maps; control's unit test
    // `concurrent_weight_changes_never_expose_a_torn_map` checks 20,000+
    // snapshots in-process (and catches a two-step update at once).
    let (_apps, lb) = four().await;
    let mut allowed: Vec<serde_json::Map<String, Value>> = (1..=4).map(one_hot).collect();
    allowed.push((1..=4).map(|k| (format!("app-{k}"), json!(1))).collect());
    let allowed = Arc::new(allowed);
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (stop, puts, allowed) = (stop.clone(), puts.clone(), allowed.clone());
        let admin = format!("http://{}", lb.admin);
        writers.push(tokio::spawn(async move {
            let c = client();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .put(format!("{admin}/admin/weights"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&one_hot(i % 4 + 1))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let seen: serde_json::Map<String, Value> = r.json().await.unwrap();
                assert!(
                    allowed.contains(&seen),
                    "a PUT answered a torn map: {seen:?}"
                );
                puts.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut watchers = Vec::new();
    for k in 0..2 {
        let (stop, allowed) = (stop.clone(), allowed.clone());
        let admin = format!("http://{}", lb.admin);
        watchers.push(tokio::spawn(async move {
            let c = client();
            let mut maps = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let get = |path: &str| {
                    c.get(format!("{admin}{path}"))
                        .bearer_auth(ADMIN_TOKEN)
                        .send()
                };
                let seen: serde_json::Map<String, Value> = if k == 0 {
                    get("/admin/weights").await.unwrap().json().await.unwrap()
                } else {
                    let list: Vec<Value> =
                        get("/admin/backends").await.unwrap().json().await.unwrap();
                    list.iter()
                        .map(|b| (b["name"].as_str().unwrap().to_string(), b["weight"].clone()))
                        .collect()
                };
                assert!(allowed.contains(&seen), "observed a torn map: {seen:?}");
                maps += 1;
            }
            maps
        }));
    }
    let names: HashSet<String> = (1..=4).map(|k| format!("app-{k}")).collect();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (url, names) = (lb.url("/api/whoami"), names.clone());
        readers.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..500 {
                let (st, b) = get_backend(&c, &url).await;
                assert_eq!(st, 200, "a request failed during the swaps");
                assert!(names.contains(&b), "answered by {b:?}");
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let mut maps = 0;
    for w in watchers {
        maps += w.await.unwrap();
    }
    let swaps = puts.load(Ordering::Relaxed);
    println!("2000 requests ok and {maps} maps observed whole during {swaps} swaps by 8 writers");
    assert!(swaps >= 50, "too few swaps ({swaps}) to race the readers");
    assert!(maps >= 50, "too few maps observed ({maps})");
}
