//! A tiny DNS server on loopback for resolution tests: it answers A queries
//! with the address it is currently set to (SERVFAIL when unset) and counts
//! them, so a test can move a name or break DNS at will.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

/// A running test DNS server (stops with the test's runtime).
pub struct TestDns {
    /// `127.0.0.1:port` to put in `[discovery] nameservers`.
    pub addr: SocketAddr,
    answer: Arc<Mutex<Option<Ipv4Addr>>>,
    queries: Arc<AtomicUsize>,
}

impl TestDns {
    /// Starts answering every A query with `initial` (None: SERVFAIL).
    pub async fn start(initial: Option<Ipv4Addr>) -> TestDns {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
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
                let mut resp = Message::new();
                resp.set_id(req.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(req.op_code())
                    .set_recursion_desired(req.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true);
                let current = *a.lock().unwrap();
                match current {
                    None => {
                        resp.set_response_code(ResponseCode::ServFail);
                    }
                    Some(ip) => {
                        for query in req.queries() {
                            resp.add_query(query.clone());
                            if query.query_type() == RecordType::A {
                                q.fetch_add(1, Ordering::Relaxed);
                                let rec =
                                    Record::from_rdata(query.name().clone(), 0, RData::A(A(ip)));
                                resp.add_answer(rec);
                            }
                        }
                    }
                }
                if let Ok(bytes) = resp.to_bytes() {
                    let _ = sock.send_to(&bytes, peer).await;
                }
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
        *self.answer.lock().unwrap() = ip;
    }

    /// A queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}
