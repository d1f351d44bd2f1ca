//! Forwarding headers, request ids, and request-smuggling rejection.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_response_headers() {
    let apps = Apps::plain(2).await;
    let lb = Lb::start(&apps.backends_toml(&[1, 1])).await;
    let c = client();
    let r = c
        .get(lb.url("/api/echo"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = header(&r, "x-request-id");
    let backend = header(&r, "x-backend");
    let echo: serde_json::Value = r.json().await.unwrap();
    let up = &echo["headers"];
    println!("upstream saw: {up}");
    assert_eq!(up["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(up["x-real-ip"], "127.0.0.1");
    assert_eq!(up["x-forwarded-proto"], "http");
    assert_eq!(up["x-forwarded-host"], lb.addr.to_string());
    assert_eq!(rid.len(), 32, "generated request id {rid:?}");
    assert_eq!(up["x-request-id"], rid.as_str());
    assert_eq!(echo["container"], backend.as_str());

    // A sane client id is kept end to end; an unsafe one is replaced.
    let r = c
        .get(lb.url("/api/echo"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-request-id"), "client-id-42");
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "client-id-42");
    let r = c
        .get(lb.url("/api/echo"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let rid = header(&r, "x-request-id");
    assert_ne!(rid, "bad id with spaces");
    assert_eq!(rid.len(), 32);
}

/// Sends raw bytes and returns the response's status line.
async fn raw(lb: &Lb, req: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got).to_string();
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_and_never_reach_a_backend() {
    let apps = Apps::plain(2).await;
    let lb = Lb::start(&apps.backends_toml(&[1, 1])).await;
    let before: u64 = apps.api_counts().iter().sum();
    let cl_te = "POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert!(raw(&lb, cl_te).await.starts_with("HTTP/1.1 400"));
    let te_cl = "POST /api/session HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 content-length: 5\r\n\r\n0\r\n\r\n";
    assert!(raw(&lb, te_cl).await.starts_with("HTTP/1.1 400"));
    let two_cl = "POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                  Content-Length: 6\r\n\r\nhello!";
    assert!(raw(&lb, two_cl).await.starts_with("HTTP/1.1 400"));
    // A well-formed request on a fresh connection still works, and it is the
    // only one the backends ever saw.
    let ok = "POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert!(raw(&lb, ok).await.starts_with("HTTP/1.1 200"));
    let after: u64 = apps.api_counts().iter().sum();
    assert_eq!(after - before, 1, "a rejected request reached a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_errors_are_json_with_request_id() {
    // One backend on a closed port: connect fails, no other backend to try.
    let gone = dead_port();
    let body = format!(
        "[[backends]]\nname = \"gone\"\naddr = \"127.0.0.1:{}\"\n",
        gone.port
    );
    let lb = Lb::start(&body).await;
    let r = client().get(lb.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let rid = header(&r, "x-request-id");
    assert_eq!(header(&r, "content-type"), "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["request_id"], rid.as_str());
    assert!(v["error"].as_str().is_some());
}
