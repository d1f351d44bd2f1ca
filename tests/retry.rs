//! Retry policy through a real lb (SPEC "Failure handling"): any method is
//! retried when nothing reached the backend; only idempotent ones on retry
//! statuses; the final answer when every attempt failed; a request that may
//! be sent again meets every eligible backend before it fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::AsyncReadExt;

/// A backend that answers every /api request with 503 + Retry-After.
fn always_503(id: &str) -> Options {
    let mut o = named(id);
    o.max_concurrency = Some(0);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_when_the_connection_was_refused() {
    let apps = Apps::plain(1).await;
    let dead = dead_port();
    let body = format!(
        "[[backends]]\nname = \"dead\"\naddr = \"127.0.0.1:{}\"\n\n{}",
        dead.port,
        apps.backends_toml(&[1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    // Round robin sends every other request to the closed port first.
    for i in 0..10 {
        let r = c
            .post(lb.url("/api/session"))
            .header("x-session-id", format!("s{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(header(&r, "x-backend"), "app-1");
    }
    // Each POST reached the live backend exactly once.
    assert_eq!(apps.apps[0].posts_total(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_statuses_are_retried_for_get_but_never_for_post() {
    let apps = Apps::start(vec![always_503("busy"), named("ok")]).await;
    // The breaker would (rightly) take "busy" out after 5 failures; keep it in
    // so every request meets it and only the retry policy is under test.
    let body = format!(
        "[circuit_breaker]\nfailures = 1000\n\n{}",
        apps.backends_toml(&[1, 1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    for _ in 0..10 {
        let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-backend"), "ok");
    }
    let (mut got_503, mut got_200) = (0, 0);
    for i in 0..10 {
        let r = c
            .post(lb.url("/api/session"))
            .header("x-session-id", format!("p{i}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            503 => got_503 += 1,
            200 => got_200 += 1,
            s => panic!("unexpected {s}"),
        }
    }
    println!("POSTs: {got_200} answered by ok, {got_503} passed through from busy");
    // A POST that reached a backend is never sent again: every POST is seen
    // by exactly one backend, and busy's 503s reach the client as they are.
    assert_eq!(apps.apps[0].posts_total() + apps.apps[1].posts_total(), 10);
    assert_eq!(apps.apps[0].posts_total(), got_503);
    assert!(got_503 > 0 && got_200 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_client_gets_the_last_answer() {
    // Three busy backends, retry.attempts = 3: a GET tries each once; the last
    // backend's 503 (with its Retry-After) is passed through.
    let apps = Apps::start(vec![always_503("b1"), always_503("b2"), always_503("b3")]).await;
    let lb = Lb::start(&format!(
        "[retry]\nattempts = 3\n\n{}",
        apps.backends_toml(&[1, 1, 1])
    ))
    .await;
    let r = client().get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    let tried: u64 = apps.api_counts().iter().sum();
    assert_eq!(tried, 3, "one attempt per backend");
    // With attempts = 1 no retry happens at all.
    let lb1 = Lb::start(&format!(
        "[retry]\nattempts = 1\n\n{}",
        apps.backends_toml(&[1, 1, 1])
    ))
    .await;
    let before: u64 = apps.api_counts().iter().sum();
    assert_eq!(
        client()
            .get(lb1.url("/api/whoami"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(apps.api_counts().iter().sum::<u64>() - before, 1);
}

/// Backends that accept a connection, read the request head and close without
/// answering, as an app killed mid-request does; each counts the heads it read.
async fn dying_backends(n: usize) -> Vec<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read_buf(&mut buf).await {
                            Ok(k) if k > 0 => {}
                            _ => return,
                        }
                    }
                    if !buf.starts_with(b"GET /health ") {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    // Dropped here: closed after the request arrived, no answer.
                });
            }
        });
        out.push((addr, seen));
    }
    out
}

/// Keeps every backend eligible whatever happens to it (no health verdict, no
/// breaker), so each request meets the dead ones and only the retry policy
/// decides; round robin, `retry.attempts = 3` (the default).
const KEEP_DEAD_ELIGIBLE: &str = "[health]\ninterval = \"1h\"\nfall = 100\n\n\
     [circuit_breaker]\nfailures = 1000\n\n[retry]\nattempts = 3\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_meets_every_dead_backend_before_it_fails() {
    // Three of four backends refuse connections (stopped apps). Round robin
    // sends each request first to the next backend in turn, so with only
    // `retry.attempts` tries a quarter of them would meet the three dead
    // ones and fail. A refused connection says nothing about the request and
    // costs no time: it never uses up an attempt while an untried backend is
    // left, so every request, GET or POST, reaches the live one.
    let apps = Apps::plain(1).await;
    let dead = [dead_port(), dead_port(), dead_port()];
    let mut body = KEEP_DEAD_ELIGIBLE.to_string();
    for (i, d) in dead.iter().enumerate() {
        body += &format!(
            "[[backends]]\nname = \"dead-{i}\"\naddr = \"127.0.0.1:{}\"\n\n",
            d.port
        );
    }
    body += &apps.backends_toml(&[1]);
    let lb = Lb::start(&body).await;
    let c = client();
    let mut failed = Vec::new();
    for i in 0..40 {
        let r = if i % 2 == 0 {
            c.get(lb.url("/api/whoami")).send().await.unwrap()
        } else {
            c.post(lb.url("/api/session"))
                .header("x-session-id", format!("s{i}"))
                .send()
                .await
                .unwrap()
        };
        if r.status() != 200 {
            failed.push((i, r.status().as_u16()));
        }
    }
    assert_eq!(failed, vec![], "(request, status) that failed");
    // Each request reached the live backend exactly once.
    assert_eq!(apps.api_counts(), vec![40]);
    assert_eq!(apps.apps[0].posts_total(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_backends_die_mid_request_goes_on_until_one_answers() {
    // Three of four backends take the request and close without answering
    // (killed mid-request). A GET may be sent again (idempotent): it goes on
    // to each backend it has not tried, whatever `retry.attempts` says, until
    // the live one answers. A POST that reached a backend is never sent twice.
    let apps = Apps::plain(1).await;
    let dying = dying_backends(3).await;
    let mut body = KEEP_DEAD_ELIGIBLE.to_string();
    for (i, (addr, _)) in dying.iter().enumerate() {
        body += &format!("[[backends]]\nname = \"dying-{i}\"\naddr = \"{addr}\"\n\n");
    }
    body += &apps.backends_toml(&[1]);
    let lb = Lb::start(&body).await;
    let c = client();
    let mut failed = Vec::new();
    for i in 0..40 {
        let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
        if r.status() != 200 {
            failed.push((i, r.status().as_u16()));
        }
    }
    assert_eq!(failed, vec![], "(request, status) that failed");
    assert_eq!(apps.api_counts(), vec![40], "each GET answered once");
    // Round robin gave every dying backend its turn at least.
    let met: Vec<usize> = dying
        .iter()
        .map(|(_, n)| n.load(Ordering::SeqCst))
        .collect();
    assert!(
        met.iter().all(|&n| n >= 10),
        "requests each dying backend read: {met:?}"
    );
    // POSTs: one that reached a dying backend fails (502) and is not resent.
    let mut answered = 0u64;
    let before: usize = met.iter().sum();
    for i in 0..8 {
        let r = c
            .post(lb.url("/api/session"))
            .header("x-session-id", format!("p{i}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => answered += 1,
            502 => {}
            s => panic!("POST {i}: unexpected {s}"),
        }
    }
    let after: usize = dying.iter().map(|(_, n)| n.load(Ordering::SeqCst)).sum();
    assert_eq!(apps.apps[0].posts_total(), answered);
    assert_eq!(
        (after - before) as u64 + answered,
        8,
        "every POST sent once"
    );
}

/// A backend whose connections answer their first request `200` and their
/// second, when it is a POST, with an interim `103` and then a close;
/// counts the POSTs it received.
async fn early_hints_then_close() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let posts = Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let posts = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for nth in 0.. {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    let post = buf.starts_with(b"POST ");
                    buf.drain(..end);
                    if post {
                        posts.fetch_add(1, Ordering::SeqCst);
                    }
                    if post && nth > 0 {
                        let _ = s
                            .write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
                            .await;
                        return; // closed after the interim answer
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_with_an_interim_head_is_never_sent_again() {
    // One client connection, so one lb thread: the POST takes the upstream
    // connection the GET left in that thread's pool.
    // The backend answered it (103) before closing, so it saw the POST:
    // sending it again on a fresh connection would be a second POST. Over
    // HTTP/1.1, and over HTTP/2 (h2c; a bodiless stream is lb's exchange's).
    let (addr, posts) = early_hints_then_close().await;
    let body =
        format!("[health]\ninterval = \"60s\"\n\n[[backends]]\nname = \"b\"\naddr = \"{addr}\"\n");
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (n, c) in [client(), h2c].into_iter().enumerate() {
        let r = c.get(lb.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        let r = c.post(lb.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 502, "client {n}");
        assert_eq!(
            posts.load(Ordering::SeqCst),
            n + 1,
            "client {n}: POSTs the backend saw"
        );
    }
}
