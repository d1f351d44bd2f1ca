//! HTTP/1.1 details real clients hit (RFC 9112): requests a server must reject,
//! pipelining, HTTP/1.0 framing, slow clients, client aborts, and upstream
//! keep-alive with backends that close idle connections.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `raw` on a new connection and reads until lb closes it (bounded).
async fn exchange_raw(lb: &Lb, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// What a raw backend does with the n-th request (0-based) on a connection.
type Script = dyn Fn(&str, usize) -> Option<Vec<u8>> + Send + Sync;

/// A hand-written HTTP/1.1 backend: records each request head, answers as
/// `script` says (`None`: close without answering), and closes connections
/// idle longer than `idle_close`.
struct RawBackend {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// Connections that ended (either side closed).
    closed: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl RawBackend {
    async fn start(idle_close: Duration, script: Arc<Script>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (h, c, a) = (heads.clone(), closed.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (h, c, script) = (h.clone(), c.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    'conn: loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match tokio::time::timeout(idle_close, s.read(&mut chunk)).await {
                                Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
                                _ => break 'conn,
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        if head
                            .to_ascii_lowercase()
                            .contains("transfer-encoding: chunked")
                        {
                            // Up to the last chunk (this backend's requests carry no trailers).
                            let stop = loop {
                                if let Some(i) =
                                    buf[end..].windows(5).position(|w| w == b"0\r\n\r\n")
                                {
                                    break end + i + 5;
                                }
                                let mut chunk = [0u8; 4096];
                                match s.read(&mut chunk).await {
                                    Ok(k) if k > 0 => buf.extend_from_slice(&chunk[..k]),
                                    _ => break 'conn,
                                }
                            };
                            buf.drain(..stop);
                            let Some(resp) = script(&head, n) else {
                                break 'conn;
                            };
                            h.lock().unwrap().push(head);
                            if s.write_all(&resp).await.is_err() {
                                break;
                            }
                            n += 1;
                            continue;
                        }
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(k) if k > 0 => buf.extend_from_slice(&chunk[..k]),
                                _ => break 'conn,
                            }
                        }
                        buf.drain(..end + len);
                        let Some(resp) = script(&head, n) else {
                            break 'conn;
                        };
                        h.lock().unwrap().push(head);
                        if s.write_all(&resp).await.is_err() {
                            break;
                        }
                        n += 1;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend {
            addr,
            heads,
            closed,
            accepted,
        }
    }

    fn toml(&self) -> String {
        self.toml_with("[health]\npath = \"/health\"")
    }

    /// lb's config for this one backend, after `sections` (other TOML tables).
    fn toml_with(&self, sections: &str) -> String {
        format!(
            "{sections}\n\n[[backends]]\nname = \"raw\"\naddr = \"{}\"\n",
            self.addr
        )
    }

    /// POSTs the backend answered.
    fn posts(&self) -> usize {
        self.requests()
            .iter()
            .filter(|h| h.starts_with("POST "))
            .count()
    }

    /// Request heads seen for paths other than /health.
    fn requests(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| !h.contains(" /health "))
            .cloned()
            .collect()
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_rfc_9112_forbids_get_400_and_never_reach_a_backend() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start(&apps.backends_toml(&[1])).await;
    let bad: &[&[u8]] = &[
        b"GET /api/whoami HTTP/1.1\r\n\r\n",
        b"GET /api/whoami HTTP/1.1\n\nHost: x\r\n\r\n",
        b"GET /api/whoami HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET ! HTTP/1.1\r\nHost: x\r\n\r\n",
        b"Extra lineGET /api/whoami HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET api/whoami HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for raw in bad {
        let out = exchange_raw(&lb, raw).await;
        assert!(
            out.starts_with("HTTP/1.1 400 "),
            "{:?} → {out}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(
        apps.apps[0].api_requests_total(),
        0,
        "a rejected request reached the app"
    );
    // The same connection-level checks let a valid request through.
    let out = exchange_raw(
        &lb,
        b"GET /api/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(apps.apps[0].api_requests_total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let apps = Apps::plain(2).await;
    let lb = Lb::start(&apps.backends_toml(&[1, 1])).await;
    let mut raw = Vec::new();
    for i in 0..10 {
        let close = if i == 9 { "Connection: close\r\n" } else { "" };
        raw.extend_from_slice(
            format!("GET /api/whoami?i={i} HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-{i}\r\n{close}\r\n").as_bytes(),
        );
    }
    let out = exchange_raw(&lb, &raw).await;
    let ids: Vec<&str> = out
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("x-request-id: "))
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("pipe-{i}")).collect();
    assert_eq!(ids, want, "{out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 10);
    let served: u64 = apps.apps.iter().map(|a| a.api_requests_total()).sum();
    assert_eq!(served, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_never_see_chunked_and_get_a_host_upstream() {
    let script: Arc<Script> = Arc::new(|head: &str, _| {
        Some(if head.contains(" /health ") {
            ok("ok")
        } else {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()
        })
    });
    let raw = RawBackend::start(Duration::from_secs(30), script).await;
    let lb = Lb::start(&raw.toml()).await;
    let out = exchange_raw(&lb, b"GET /stream HTTP/1.0\r\n\r\n").await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{out}");
    // Field names are case-insensitive (the Pingora path writes `Connection`).
    assert!(!head.to_lowercase().contains("chunked"), "{head}");
    assert!(head.to_lowercase().contains("connection: close"), "{head}");
    assert_eq!(body, "hello world", "close-delimited, de-chunked body");
    let seen = raw.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("GET /stream HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        seen[0]
            .to_lowercase()
            .contains(&format!("host: {}\r\n", raw.addr)),
        "{}",
        seen[0]
    );
    // HTTP/1.1 clients get the body chunked (boundaries are the path's own).
    let out = exchange_raw(
        &lb,
        b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_lowercase().contains("transfer-encoding: chunked"),
        "{out}"
    );
    assert_eq!(dechunk(body), "hello world", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_slow_and_silent_clients() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start_server(
        "header_timeout = \"1s\"",
        "",
        &apps.backends_toml(&[1]),
        QUIET_LOG,
    )
    .await;
    // A trickling client: one byte every 100 ms never completes its head.
    let started = Instant::now();
    let mut slow = TcpStream::connect(lb.addr).await.unwrap();
    let trickle = b"GET /api/whoami HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut answer = Vec::new();
    for b in trickle {
        if slow.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let closed_after = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    // 1 s limit; the trickle alone would take 7.6 s. Up to 1 s of slack for a
    // loaded CI machine, and never before the limit.
    assert!(
        closed_after >= Duration::from_millis(950) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    // A connection that sends nothing is closed too.
    let started = Instant::now();
    let mut silent = TcpStream::connect(lb.addr).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out)).await;
    let silent_closed = started.elapsed();
    assert!(
        silent_closed < Duration::from_secs(3),
        "silent client kept {silent_closed:?}"
    );
    println!(
        "header_timeout 1 s: trickling client got 408 after {closed_after:?}, silent one closed after {silent_closed:?}"
    );
    assert_eq!(apps.apps[0].api_requests_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_are_logged_as_499_without_error_lines() {
    let mut o = named("app-1");
    o.delay = Duration::from_millis(500);
    let apps = Apps::start(vec![o]).await;
    let body = format!("[log]\naccess = true\n\n{}", apps.backends_toml(&[1]));
    let lb = Lb::start_logging("", &body, "info").await;
    const N: usize = 20;
    for i in 0..N {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(
            format!("GET /api/whoami HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-{i}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(s);
        });
    }
    let lines = lb
        .wait_lines("request_id=gone-", N, Duration::from_secs(10))
        .await;
    assert_eq!(lines.len(), N, "one access event per request: {lines:#?}");
    assert!(lines.iter().all(|l| l.contains("status=499")), "{lines:#?}");
    let loud = lb.loud_lines();
    assert!(loud.is_empty(), "lines above info: {loud:#?}");
    println!("{N} clients gone before their answer: {N} access lines with status=499, 0 WARN/ERROR lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_resent_when_a_pooled_connection_was_closed_by_the_backend() {
    // Case 1: the backend closes idle connections after 300 ms (Node-style).
    let script: Arc<Script> = Arc::new(|_, _| Some(ok("done")));
    let raw = RawBackend::start(Duration::from_millis(300), script).await;
    let lb = Lb::start(&raw.toml()).await;
    let c = client();
    for _ in 0..3 {
        let r = c
            .post(lb.url("/api/session"))
            .body("x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let posts = raw.posts();
    assert_eq!(posts, 3, "each POST processed exactly once");

    // Case 2: the race itself — the backend takes the request on a reused
    // connection and closes it without answering (it never processed it).
    let script: Arc<Script> =
        Arc::new(|head: &str, n| (head.contains(" /health ") || n == 0).then(|| ok("done")));
    let raw = RawBackend::start(Duration::from_secs(30), script).await;
    let lb = Lb::start(&raw.toml_with("[health]\ninterval = \"1h\"")).await;
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for i in 0..3 {
        let r = c
            .post(lb.url("/api/session"))
            .body("x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST {i}");
    }
    let posts = raw.posts();
    assert_eq!(posts, 3, "answered POSTs");
    // POST 1 and 2 each met a reused connection that was closed: resent fresh.
    assert!(raw.accepted.load(Ordering::SeqCst) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_close_after_upstream_idle() {
    let script: Arc<Script> = Arc::new(|_, _| Some(ok("ok")));
    let raw = RawBackend::start(Duration::from_secs(60), script).await;
    let lb = Lb::start(
        &raw.toml_with("[health]\ninterval = \"1h\"\n\n[timeouts]\nupstream_idle = \"300ms\""),
    )
    .await;
    let r = client().get(lb.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let closed_before = raw.closed.load(Ordering::SeqCst);
    let started = Instant::now();
    // The backend itself would keep it 60 s; lb closes it after 300 ms (the
    // sweeper ticks every 150 ms: allow a second on a loaded machine).
    assert!(
        eventually(Duration::from_secs(3), || raw.closed.load(Ordering::SeqCst)
            > closed_before)
        .await,
        "pooled connection still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

/// The data of a complete chunked body (no extensions or trailers).
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size, 16).expect("hex chunk size");
        if n == 0 {
            assert_eq!(rest, "\r\n", "nothing after the last chunk");
            return data;
        }
        data.push_str(&rest[..n]);
        body = rest[n..]
            .strip_prefix("\r\n")
            .expect("CRLF after chunk data");
    }
}

/// A chunked POST: lb's HTTP/1 path streams it; under `LB_PATH=pingora` the
/// connection goes to the Pingora path here (as it did on every path before
/// lb streamed bodies itself), so what follows it is served there.
const CHUNKED_POST: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// A backend that answers every request with `ok` and records its head.
async fn recording_backend() -> (RawBackend, Lb) {
    let script: Arc<Script> = Arc::new(|_, _| Some(ok("ok")));
    let raw = RawBackend::start(Duration::from_secs(30), script).await;
    let lb = Lb::start(&raw.toml_with("[health]\ninterval = \"1h\"")).await;
    (raw, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_framing_or_host_gets_400_on_every_request() {
    let (raw, lb) = recording_backend().await;
    // Issue 17's smuggling request: dropping Content-Length would have sent
    // the body to the backend as a second request, GET /smuggled.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut smuggle = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    smuggle.extend_from_slice(smuggled);
    let host = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n".to_vec();
    let te = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding\r\n\r\n".to_vec();
    for raw_req in [&smuggle, &host, &te] {
        // As a connection's first request, and after a hand-over.
        let out = exchange_raw(&lb, raw_req).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "first request: {out}");
        let mut after = CHUNKED_POST.to_vec();
        after.extend_from_slice(raw_req);
        let out = exchange_raw(&lb, &after).await;
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert_eq!(
            out.matches("HTTP/1.1 400 ").count(),
            1,
            "after a hand-over: {out}"
        );
    }
    let seen = raw.requests();
    assert!(
        seen.iter().all(|h| h.starts_with("POST /upload ")),
        "{seen:#?}"
    );
    assert_eq!(seen.len(), 3, "only the chunked POSTs reached the backend");
    // Other named fields are removed, and the request goes through.
    let out = exchange_raw(
        &lb,
        b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let last = raw.requests().pop().unwrap();
    assert!(
        last.starts_with("GET /b ") && !last.to_ascii_lowercase().contains("x-secret"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_absolute_form_requests_after_a_hand_over() {
    let (raw, lb) = recording_backend().await;
    let mut pipelined = CHUNKED_POST.to_vec();
    for i in 0..3 {
        pipelined.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    pipelined.extend_from_slice(b"GET http://a.example:8080/abs?q=1 HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n");
    let out = exchange_raw(&lb, &pipelined).await;
    assert_eq!(
        out.matches("HTTP/1.1 200 ").count(),
        5,
        "every pipelined request answered: {out}"
    );
    let seen = raw.requests();
    let lines: Vec<&str> = seen
        .iter()
        .map(|h| h.lines().next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        [
            "POST /upload HTTP/1.1",
            "GET /p0 HTTP/1.1",
            "GET /p1 HTTP/1.1",
            "GET /p2 HTTP/1.1",
            "GET /abs?q=1 HTTP/1.1"
        ]
    );
    // Origin form, with the target's authority as Host.
    let abs = seen[4].to_ascii_lowercase();
    assert!(abs.contains("\r\nhost: a.example:8080\r\n"), "{abs}");
    assert_eq!(abs.matches("\r\nhost:").count(), 1, "{abs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_chunked_never_reaches_a_client() {
    let script: Arc<Script> = Arc::new(|head: &str, _| {
        Some(if head.contains(" /health ") {
            ok("ok")
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()
        })
    });
    let raw = RawBackend::start(Duration::from_secs(30), script).await;
    let lb = Lb::start(&raw.toml()).await;
    let out = exchange_raw(
        &lb,
        b"GET /both HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // Chunk boundaries are the relaying path's (the Pingora path re-chunks).
    assert_eq!(dechunk(body), "hello world", "{body:?}");
    // An HTTP/1.0 client: the whole body, de-chunked, delimited by the close.
    let out = exchange_raw(&lb, b"GET /both HTTP/1.0\r\n\r\n").await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("content-length") && !head.contains("chunked"),
        "{head}"
    );
    assert_eq!(body, "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_a_backend_connection_names_never_reach_the_client() {
    let script: Arc<Script> = Arc::new(|_, _| {
        Some(b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\ncontent-length: 2\r\n\r\nok".to_vec())
    });
    let raw = RawBackend::start(Duration::from_secs(30), script).await;
    let lb = Lb::start(&raw.toml_with("[health]\ninterval = \"1h\"")).await;
    let out = exchange_raw(
        &lb,
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = out.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 "), "{out}");
    assert!(
        !head.contains("x-secret") && !head.contains("keep-alive:"),
        "{head}"
    );
    assert!(head.contains("x-kept: 1"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_connection_failed_attempts_close_it() {
    // No backend up: 503 before any attempt, the connection stays open.
    let dead = dead_port();
    let lb = Lb::start(&format!(
        "[health]\ninterval = \"100ms\"\n\n[[backends]]\nname = \"gone\"\naddr = \"127.0.0.1:{}\"\n",
        dead.port
    ))
    .await;
    let c = client();
    // Until health marks it down a request is attempted (and gets 502);
    // then refusals are immediate.
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let s = c.get(lb.url("/x")).send().await.unwrap().status().as_u16();
        statuses.push(s);
        if s == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = exchange_raw(&lb, two).await;
    assert_eq!(out.matches("HTTP/1.1 503 ").count(), 2, "{out}");

    // A backend that closes without answering a POST: 502 after the attempt,
    // and the connection closes (the pipelined GET is not answered).
    let script: Arc<Script> =
        Arc::new(|head: &str, _| head.contains(" /health ").then(|| ok("ok")));
    let raw = RawBackend::start(Duration::from_secs(30), script).await;
    let lb = Lb::start(&raw.toml_with("[health]\ninterval = \"1h\"")).await;
    let two = b"POST /fail HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nxGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = exchange_raw(&lb, two).await;
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
}
