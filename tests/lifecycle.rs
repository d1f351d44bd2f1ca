//! Process lifecycle and request limits: graceful stop on SIGTERM/SIGINT,
//! header limits (431), downstream keep-alive idle timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn graceful_stop_with(signal: i32) {
    let mut slow = named("app-1");
    slow.delay = Duration::from_millis(600);
    let apps = Apps::start(vec![slow]).await;
    let mut lb = Lb::start(&apps.backends_toml(&[1])).await;
    let url = lb.url("/api/whoami");
    let inflight =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    // Let the request reach the backend, then ask lb to stop.
    assert!(eventually(Duration::from_secs(5), || apps.apps[0].in_flight() > 0).await);
    let signalled = Instant::now();
    unsafe { libc::kill(lb.pid() as i32, signal) };
    // New connections are refused soon after the signal…
    let addr = lb.addr;
    let refused = eventually(Duration::from_secs(2), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    // …while the in-flight request still completes.
    let status = inflight.await.unwrap().expect("in-flight request failed");
    assert_eq!(status, 200);
    assert!(refused, "still accepting after the signal");
    let exit = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(5)));
    let took = signalled.elapsed();
    println!("signal {signal}: in-flight answered 200, exit {exit:?} after {took:?} (grace 1 s)");
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
    // Exits once drained (~0.6 s), within grace_period plus scheduling slack.
    assert!(took < Duration::from_millis(1800), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_then_exits_0() {
    graceful_stop_with(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_is_graceful_too() {
    graceful_stop_with(libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_lb_exits_promptly_on_sigterm() {
    let apps = Apps::plain(1).await;
    let mut lb = Lb::start(&apps.backends_toml(&[1])).await;
    let t = Instant::now();
    unsafe { libc::kill(lb.pid() as i32, libc::SIGTERM) };
    let exit = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(5)));
    println!("idle stop took {:?}", t.elapsed());
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
    // Nothing in flight: no need to sit out the grace period.
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

async fn status_of(lb: &Lb, head: String) -> String {
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_never_reach_a_backend() {
    let apps = Apps::plain(1).await;
    // Defaults: at most 100 header fields and 32 KiB of request head.
    let lb = Lb::start(&apps.backends_toml(&[1])).await;
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let st = status_of(
        &lb,
        format!("GET /api/whoami HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    )
    .await;
    assert!(st.starts_with("HTTP/1.1 431"), "{st}");
    let big = "a".repeat(40 * 1024);
    let st = status_of(
        &lb,
        format!("GET /api/whoami HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert!(st.starts_with("HTTP/1.1 431"), "{st}");
    assert_eq!(apps.api_counts(), vec![0]);
    let st = status_of(
        &lb,
        "GET /api/whoami HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    )
    .await;
    assert!(st.starts_with("HTTP/1.1 200"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let apps = Apps::plain(1).await;
    // The harness writes [server]; keepalive_timeout comes from the default
    // (60 s) unless overridden, so start lb with a config that sets it.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lb.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nkeepalive_timeout = \"1s\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n{}",
            free_port(),
            apps.backends_toml(&[1])
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(lb_bin())
        .arg("-c")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok())
        .await
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle: lb closes the connection after ~1 s (read returns 0).
    let t = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(closed.is_ok(), "idle connection not closed within 5 s");
    println!(
        "idle keep-alive closed after {:?} (keepalive_timeout 1 s)",
        t.elapsed()
    );
    assert!(t.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_and_connection_close_clients_get_their_close() {
    // The keep-alive idle timeout must not turn keep-alive on for a client
    // that did not ask for it: lb answers and closes.
    let apps = Apps::plain(1).await;
    let lb = Lb::start(&apps.backends_toml(&[1])).await;
    for head in [
        "GET /api/whoami HTTP/1.0\r\nHost: x\r\n\r\n",
        "GET /api/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        // Reading to EOF ends only if lb closes the connection.
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .unwrap_or_else(|_| panic!("connection left open for {head:?}"))
            .unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains(" 200 "), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: keep-alive"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_inside_a_tokio_runtime_resolves_hostname_backends() {
    // `Lb::build` resolves hostnames once before serving; it used to do so
    // with `block_on` on the caller's thread, which panics inside a runtime
    // ("Cannot start a runtime from within a runtime").
    let dns = TestDns::start(Some(std::net::Ipv4Addr::new(127, 0, 0, 7))).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [discovery]\nnameservers = [\"{}\"]\n\
         [[backends]]\nname = \"app\"\naddr = \"app.lbtest:3000\"\n",
        free_port(),
        free_port(),
        dns.addr
    );
    let config = lb::config::Config::from_toml(&text).unwrap();
    let built = lb::server::Lb::build(config, None).expect("build");
    let addr = built.state.load().backends[0].addr;
    assert_eq!(addr, Some("127.0.0.7:3000".parse().unwrap()));
    assert!(dns.queries() > 0);
}
