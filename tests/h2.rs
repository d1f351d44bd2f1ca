//! HTTP/2 streams get every behaviour an HTTP/1.1 request gets (SPEC "HTTP/2
//! and gRPC"), whichever path serves them: lb's own exchange for bodiless
//! requests, the Pingora path for the rest and for everything under
//! `LB_PATH=pingora` (`make test` runs this file both ways, so each
//! assertion here holds on both). h2c with prior knowledge keeps the tests
//! free of certificates; tests/tls.rs covers ALPN `h2` over TLS.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/2 (prior knowledge) client.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The fields the echo endpoint says it received.
fn echoed(body: &str) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["headers"].as_object().unwrap().clone()
}

#[tokio::test]
async fn h2_requests_reach_backends_with_the_fields_of_http1_ones() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start_server("h2c = true", "", &apps.backends_toml(&[1]), QUIET_LOG).await;
    let url = lb.url("/api/echo?q=1");
    let send = |c: reqwest::Client| {
        c.get(&url)
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-real-ip", "6.6.6.6")
            .header("x-request-id", "client-id-1")
            .header("accept", "text/plain")
            .header("cookie", "a=1; b=2")
            .send()
    };
    let h1 = send(client()).await.unwrap();
    let h2 = send(h2c()).await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    for r in [&h1, &h2] {
        assert_eq!(r.status(), 200);
        assert_eq!(header(r, "x-request-id"), "client-id-1");
        assert_eq!(header(r, "x-backend"), "app-1");
    }
    let (h1, h2) = (
        echoed(&h1.text().await.unwrap()),
        echoed(&h2.text().await.unwrap()),
    );
    // The same fields with the same values, but for what differs between
    // the two clients' connections (none of them lb's).
    let mut h1 = h1.clone();
    h1.remove("connection");
    assert_eq!(h1, h2, "HTTP/1.1 {h1:?}\nHTTP/2 {h2:?}");
    assert_eq!(h2["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h2["x-real-ip"], "127.0.0.1");
    assert_eq!(h2["x-forwarded-proto"], "http");
    assert_eq!(h2["host"], lb.addr.to_string());
    assert_eq!(h2["x-forwarded-host"], lb.addr.to_string());
    assert_eq!(h2["cookie"], "a=1; b=2");

    // Cookie crumbs in separate HTTP/2 fields reach the backend as the one
    // field HTTP/1.1 allows, on a bodiless GET (lb's exchange) and on a POST
    // with a body (the Pingora path).
    let c = h2c();
    let get = c.get(&url).header("cookie", "a=1").header("cookie", "b=2");
    let post = c.post(&url).header("cookie", "a=1").header("cookie", "b=2");
    for req in [get, post.body("x")] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(echoed(&r.text().await.unwrap())["cookie"], "a=1; b=2");
    }
}

#[tokio::test]
async fn h2_requests_are_retried_and_get_lbs_own_replies() {
    let apps = Apps::plain(1).await;
    let dead = dead_port();
    let body = format!(
        "[[backends]]\nname = \"dead\"\naddr = \"127.0.0.1:{}\"\n\n{}",
        dead.port,
        apps.backends_toml(&[1])
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    // Round robin sends every other first attempt to the dead backend (until
    // health checks take it out): each is retried on app-1 (a refused
    // connect is always retried; 2 retries stay under `retry.budget`'s floor
    // of 3 a second), so all 4 are answered by app-1 and none fails.
    let c = h2c();
    for _ in 0..4 {
        let (status, backend) = get_backend(&c, &lb.url("/api/whoami")).await;
        assert_eq!((status, backend.as_str()), (200, "app-1"));
    }
    drop(lb);

    // No backend left: lb answers itself, with its JSON and request id.
    let body = format!(
        "[[backends]]\nname = \"dead\"\naddr = \"127.0.0.1:{}\"\n",
        dead.port
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 502);
    let id = header(&r, "x-request-id");
    assert_eq!(header(&r, "content-type"), "application/json");
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["request_id"], id.as_str());
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    // HEAD: the same status, no body.
    let r = c.head(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn h2_requests_keep_cookie_stickiness_and_rate_limits() {
    let apps = Apps::plain(2).await;
    let body = format!(
        "[balancer]\nsticky = \"cookie\"\n\n[limits]\nper_ip_rate = 1\nper_ip_burst = 4\n\n{}",
        apps.backends_toml(&[1, 1])
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let c = h2c();
    let first = c.get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let cookie = header(&first, "set-cookie");
    assert!(cookie.starts_with("lb_sticky="), "{cookie}");
    let pinned = header(&first, "x-backend");
    let pair = cookie.split(';').next().unwrap().to_string();
    // The burst allows 5 requests at once (rate 1/s, burst 4); this test
    // takes well under a second for them, so at most one more token comes.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = c
            .get(lb.url("/api/whoami"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 200 {
            assert_eq!(header(&r, "x-backend"), pinned, "stickiness");
            assert_eq!(header(&r, "set-cookie"), "", "set only on the first");
        } else {
            assert_eq!(r.status(), 429);
            assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
        }
    }
    // 1 + 4 allowed; the sixth or later refused (one token may refill).
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((4..=5).contains(&ok), "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
}

/// A backend answering by path with bodies in each HTTP/1 framing (and
/// `/stall`: a chunked body that stops after its first chunk), counting the
/// connections lb opens and the stalled ones lb closed.
async fn framing_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let (counted, cuts) = (conns.clone(), cut.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let line = head.lines().next().unwrap_or("").to_string();
                    let answer: &[u8] = if line.starts_with("GET /health ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    } else if line.contains(" /chunked ") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                          5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n"
                    } else if line.contains(" /length ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: keep-alive, x-secret\r\nx-secret: s\r\n\r\nhello world"
                    } else if line.contains(" /stall ") {
                        let head =
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                        let _ = s.write_all(head).await;
                        // Nothing more: wait for lb to close its side.
                        let mut rest = [0u8; 64];
                        while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                        cuts.fetch_add(1, Ordering::SeqCst);
                        return;
                    } else if line.contains(" /empty ") {
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    } else if line.contains(" /close ") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello ")
                            .await;
                        let _ = s.write_all(b"world").await;
                        return;
                    } else {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, cut)
}

#[tokio::test]
async fn every_backend_framing_reaches_an_h2_client_whole() {
    let (addr, conns, _) = framing_backend().await;
    let body =
        format!("[health]\ninterval = \"60s\"\n\n[[backends]]\nname = \"b\"\naddr = \"{addr}\"\n");
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let c = h2c();
    let get = |path: &str| c.get(lb.url(path)).send();
    let r = get("/chunked").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "transfer-encoding"), "");
    assert_eq!(r.text().await.unwrap(), "hello world");
    let r = get("/length").await.unwrap();
    assert_eq!(header(&r, "content-length"), "11");
    assert_eq!(
        header(&r, "x-secret"),
        "",
        "a field Connection names is hop-by-hop"
    );
    assert_eq!(r.text().await.unwrap(), "hello world");
    let r = get("/close").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
    let r = get("/empty").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let r = c.head(lb.url("/length")).send().await.unwrap();
    assert_eq!(header(&r, "content-length"), "11");
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    // Ten more one after another: kept-alive upstream connections are
    // reused, not one opened per request. (lb's threads each keep their
    // own; the health probe adds one; /close used up one.)
    let before = conns.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            get("/length").await.unwrap().text().await.unwrap(),
            "hello world"
        );
    }
    let opened = conns.load(Ordering::SeqCst) - before;
    assert!(opened <= 2, "{opened} upstream connections for 10 requests");
}

#[tokio::test]
async fn an_idle_h2_connection_closes_after_the_keepalive_timeout() {
    let apps = Apps::plain(1).await;
    let server = "h2c = true\nkeepalive_timeout = \"1s\"";
    let lb = Lb::start_server(server, "", &apps.backends_toml(&[1]), QUIET_LOG).await;
    let mut s = h2frames::open(&lb).await;
    // GOAWAY (or a close) after 1 s without a stream: not before (0.9 s
    // allows for the two clocks), and well within 5 s on a loaded machine.
    let start = Instant::now();
    let _ = h2frames::until_goaway(&mut s, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "GOAWAY after {took:?}");
    // A connection in use stays open past it: a request slower than the
    // timeout is answered.
    let slow = Apps::start(vec![Options {
        delay: Duration::from_millis(1500),
        ..named("slow")
    }])
    .await;
    drop(lb);
    let lb = Lb::start_server(server, "", &slow.backends_toml(&[1]), QUIET_LOG).await;
    let r = h2c().get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_client_reset_mid_body_frees_the_backend_connection_at_once() {
    let (addr, _, cut) = framing_backend().await;
    let body = format!(
        "[health]\ninterval = \"60s\"\n\n[timeouts]\nresponse = \"20s\"\n\n\
         [[backends]]\nname = \"b\"\naddr = \"{addr}\"\n"
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let mut r = h2c().get(lb.url("/stall")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.chunk().await.unwrap().unwrap(), "hello");
    // Dropping the response resets the stream (RST_STREAM CANCEL). lb then
    // drops the stalled backend connection: within 3 s on a loaded machine,
    // where without noticing the reset it would wait for the next byte up
    // to timeouts.response (20 s).
    drop(r);
    let gone = eventually(Duration::from_secs(3), || cut.load(Ordering::SeqCst) == 1).await;
    assert!(
        gone,
        "the backend connection is still open 3 s after the reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_before_their_answer_are_logged_as_499() {
    let mut slow = named("app-1");
    slow.delay = Duration::from_millis(500);
    let apps = Apps::start(vec![slow]).await;
    let body = format!("[log]\naccess = true\n\n{}", apps.backends_toml(&[1]));
    let lb = Lb::start_server("h2c = true", "", &body, "info").await;
    // Ten streams on one connection, each given up after 100 ms (reqwest
    // drops the stream: RST_STREAM CANCEL) while the backend takes 500 ms.
    const N: usize = 10;
    let c = h2c();
    let mut gone = tokio::task::JoinSet::new();
    for i in 0..N {
        let req = c
            .get(lb.url("/api/whoami"))
            .header("x-request-id", format!("gone-h2-{i}"))
            .timeout(Duration::from_millis(100));
        gone.spawn(async move { req.send().await.is_err() });
    }
    while let Some(timed_out) = gone.join_next().await {
        assert!(timed_out.unwrap(), "a 500 ms answer came within 100 ms");
    }
    let lines = lb
        .wait_lines("request_id=gone-h2-", N, Duration::from_secs(10))
        .await;
    assert_eq!(lines.len(), N, "one access event per stream: {lines:#?}");
    assert!(lines.iter().all(|l| l.contains("status=499")), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("proto=h2")), "{lines:#?}");
    // The same connection serves on after the resets.
    let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let loud = lb.loud_lines();
    assert!(loud.is_empty(), "lines above info: {loud:#?}");
}
