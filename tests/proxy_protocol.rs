//! PROXY protocol behind an L4 balancer (SPEC "PROXY protocol"): v1 and v2
//! headers, IPv4 and IPv6 sources, the refusals, and untrusted peers served
//! as direct clients. The "balancer" here is a socket bound to 127.0.0.2,
//! the one trusted source; 127.0.0.1 is an ordinary client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to lb from `from` (a loopback address).
async fn connect_from(from: &str, lb: &Lb) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(lb.addr).await.unwrap()
}

/// Sends `prefix` then a GET of the echo endpoint on `s`; what lb answered
/// (empty if it closed without answering).
async fn echo(mut s: TcpStream, prefix: &[u8]) -> String {
    let mut raw = prefix.to_vec();
    raw.extend_from_slice(b"GET /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(&raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value the backend saw for `header` (the echo endpoint's JSON).
fn seen(answer: &str, header: &str) -> String {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["headers"][header].as_str().unwrap_or("").to_string()
}

fn v2_header(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .unwrap()
}

async fn start(apps: &Apps, setting: &str) -> Lb {
    Lb::start_server(
        &format!("proxy_protocol = \"{setting}\"\nproxy_protocol_from = [\"127.0.0.2/32\"]"),
        "",
        &apps.backends_toml(&[1]),
        QUIET_LOG,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_source_is_the_client_everywhere() {
    let apps = Apps::plain(1).await;
    let lb = start(&apps, "any").await;
    // v1, IPv4.
    let s = connect_from("127.0.0.2", &lb).await;
    let out = echo(s, b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 80\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(seen(&out, "x-forwarded-for"), "192.0.2.7");
    assert_eq!(seen(&out, "x-real-ip"), "192.0.2.7");
    // v2, IPv6, with the request in the same write.
    let s = connect_from("127.0.0.2", &lb).await;
    let out = echo(s, &v2_header("[2001:db8::9]:4000", "[2001:db8::1]:80")).await;
    assert_eq!(seen(&out, "x-real-ip"), "2001:db8::9", "{out}");
    // A v1 header in pieces (a slow balancer) works too.
    let mut s = connect_from("127.0.0.2", &lb).await;
    s.write_all(b"PROXY TCP4 198.51.").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = echo(s, b"100.9 10.0.0.1 1 80\r\n").await;
    assert_eq!(seen(&out, "x-real-ip"), "198.51.100.9", "{out}");
    // An untrusted peer is a direct client: no header expected, none honoured.
    let s = connect_from("127.0.0.1", &lb).await;
    let out = echo(s, b"").await;
    assert_eq!(seen(&out, "x-real-ip"), "127.0.0.1", "{out}");
    assert_eq!(apps.api_counts(), vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_sources_without_a_valid_header_are_closed() {
    let apps = Apps::plain(1).await;
    let lb = start(&apps, "v1").await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("no header", Vec::new()),
        (
            "garbage",
            b"PROXY TCP4 999.1.1.1 10.0.0.1 1 80\r\n".to_vec(),
        ),
        (
            "v2 where only v1 is accepted",
            v2_header("192.0.2.7:1", "10.0.0.1:80"),
        ),
    ];
    for (what, prefix) in cases {
        let s = connect_from("127.0.0.2", &lb).await;
        let out = echo(s, &prefix).await;
        assert_eq!(out, "", "{what}: answered");
    }
    assert_eq!(
        apps.api_counts(),
        vec![0],
        "a refused connection reached the app"
    );
    // An untrusted peer sending a header is a direct client sending garbage:
    // its "request" is not HTTP (400), and the header is not honoured.
    let s = connect_from("127.0.0.1", &lb).await;
    let out = echo(s, b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 80\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_count_the_header_source() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start_server(
        "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.2\"]",
        "",
        &format!(
            "[limits]\nper_ip_rate = 1\nper_ip_burst = 0\n\n{}",
            apps.backends_toml(&[1])
        ),
        QUIET_LOG,
    )
    .await;
    // Two clients behind the same balancer each get their own allowance.
    let mut statuses = Vec::new();
    for src in ["192.0.2.1", "192.0.2.2", "192.0.2.1"] {
        let s = connect_from("127.0.0.2", &lb).await;
        let header = format!("PROXY TCP4 {src} 10.0.0.1 1000 80\r\n");
        let out = echo(s, header.as_bytes()).await;
        statuses.push(out.get(9..12).unwrap_or("").to_string());
    }
    assert_eq!(statuses, ["200", "200", "429"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_takes_the_header_before_the_handshake() {
    use common::tls::{tls_toml, Ca, Key};
    let apps = Apps::plain(1).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "localhost", &["localhost"], Key::EcdsaP256, 30);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _lb = Lb::start_server(
        "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.2/32\"]",
        "",
        &format!(
            "{}{}",
            tls_toml(tls, &[&leaf], ""),
            apps.backends_toml(&[1])
        ),
        QUIET_LOG,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(tls).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "TLS listener not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From the trusted balancer: the v2 header, then TLS, then a request.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(tls).await.unwrap();
    tcp.write_all(&v2_header("203.0.113.5:4000", "10.0.0.1:443"))
        .await
        .unwrap();
    let config = ca.client(&["http/1.1"], &[&rustls::version::TLS13]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(seen(&out, "x-forwarded-for"), "203.0.113.5");
    assert_eq!(seen(&out, "x-forwarded-proto"), "https");
    // Without the header, the trusted source is closed before any TLS.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(tls).await.unwrap();
    let config = ca.client(&["http/1.1"], &[&rustls::version::TLS13]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("closed within header_timeout");
    assert!(r.is_err(), "a handshake without the PROXY header succeeded");
}
