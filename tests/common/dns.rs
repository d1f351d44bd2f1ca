//! A tiny DNS server on loopback for resolution tests: it answers every name's
//! A queries with the IPv4 addresses it is currently set to and AAAA queries
//! with the IPv6 ones (SERVFAIL when unset), and counts A queries, so a test can
//! move a name, scale a group or break DNS at will. Answers too big for a UDP
//! datagram (512 bytes) are truncated there (TC) and served whole over TCP on
//! the same port, as real DNS servers do.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

/// A running test DNS server (stops with the test's runtime).
pub struct TestDns {
    /// `127.0.0.1:port` to put in `[discovery] nameservers`.
    pub addr: SocketAddr,
    answer: Arc<Mutex<Option<Vec<IpAddr>>>>,
    queries: Arc<AtomicUsize>,
}

impl TestDns {
    /// Starts answering every A query with `initial` (None: SERVFAIL).
    pub async fn start(initial: Option<Ipv4Addr>) -> TestDns {
        TestDns::start_all(initial.map(|ip| vec![IpAddr::V4(ip)])).await
    }

    /// Starts answering with all of `initial` (A and AAAA; None: SERVFAIL).
    pub async fn start_all(initial: Option<Vec<IpAddr>>) -> TestDns {
        // UDP and TCP on one port (retried if TCP finds it taken).
        let (sock, tcp) = loop {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = sock.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (sock, tcp);
            }
        };
        let addr = sock.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(initial));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                let current = a.lock().unwrap().clone();
                let mut resp = respond(&req, current.as_deref(), &q);
                let mut bytes = resp.to_bytes().unwrap_or_default();
                if bytes.len() > 512 {
                    // Too big for plain DNS over UDP: say so, the client asks over TCP.
                    resp.answers.clear();
                    resp.metadata.truncation = true;
                    bytes = resp.to_bytes().unwrap_or_default();
                }
                let _ = sock.send_to(&bytes, peer).await;
            }
        });
        let (a, q) = (answer.clone(), queries.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = tcp.accept().await {
                let (a, q) = (a.clone(), q.clone());
                tokio::spawn(serve_tcp(conn, a, q));
            }
        });
        TestDns {
            addr,
            answer,
            queries,
        }
    }

    /// Answers `ip` from now on (None: SERVFAIL).
    pub fn set(&self, ip: Option<Ipv4Addr>) {
        self.set_all(ip.map(|ip| vec![IpAddr::V4(ip)]));
    }

    /// Answers all of `ips` from now on (None: SERVFAIL).
    pub fn set_all(&self, ips: Option<Vec<IpAddr>>) {
        *self.answer.lock().unwrap() = ips;
    }

    /// A queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

/// DNS over TCP: each message prefixed by its 2-byte length.
async fn serve_tcp(
    mut conn: tokio::net::TcpStream,
    answer: Arc<Mutex<Option<Vec<IpAddr>>>>,
    queries: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if conn.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Ok(req) = Message::from_bytes(&msg) else {
            return;
        };
        let current = answer.lock().unwrap().clone();
        let bytes = respond(&req, current.as_deref(), &queries)
            .to_bytes()
            .unwrap_or_default();
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The answer to `req`: records of the asked type among `ips`.
fn respond(req: &Message, ips: Option<&[IpAddr]>, a_queries: &AtomicUsize) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    // Every answer repeats the question, SERVFAIL too (hickory drops one
    // that does not as forged).
    resp.add_queries(req.queries.iter().cloned());
    let Some(ips) = ips else {
        resp.metadata.response_code = ResponseCode::ServFail;
        return resp;
    };
    for query in &req.queries {
        let name = query.name.clone();
        for ip in ips {
            let rdata = match (query.query_type, ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            resp.add_answer(Record::from_rdata(name.clone(), 0, rdata));
        }
        if query.query_type == RecordType::A {
            a_queries.fetch_add(1, Ordering::Relaxed);
        }
    }
    resp
}
