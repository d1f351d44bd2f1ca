//! DNS re-resolution: a backend hostname that moves to a new IP is followed
//! without a reload; when DNS fails, the last good address keeps serving.
//! A tiny in-test DNS server on loopback answers for `app.lbtest`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

/// What the test DNS server currently answers for A queries (None = SERVFAIL).
type Answer = Arc<Mutex<Option<Ipv4Addr>>>;

async fn dns_server(answer: Answer) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
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
            let current = *answer.lock().unwrap();
            match current {
                None => {
                    resp.set_response_code(ResponseCode::ServFail);
                }
                Some(ip) => {
                    for q in req.queries() {
                        resp.add_query(q.clone());
                        if q.query_type() == RecordType::A {
                            resp.add_answer(Record::from_rdata(
                                q.name().clone(),
                                0,
                                RData::A(A(ip)),
                            ));
                        }
                    }
                }
            }
            if let Ok(bytes) = resp.to_bytes() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

/// Which app (by container id) answers through lb.
async fn who(c: &reqwest::Client, lb: &Lb) -> String {
    let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    v["container"].as_str().unwrap().to_string()
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

    let answer: Answer = Arc::new(Mutex::new(Some(Ipv4Addr::new(127, 0, 0, 2))));
    let dns = dns_server(answer.clone()).await;
    let body = format!(
        "[discovery]\ninterval = \"100ms\"\nnameservers = [\"{dns}\"]\n\n\
         [[backends]]\nname = \"app\"\naddr = \"app.lbtest:{port}\"\n"
    );
    let lb = Lb::start(&body).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(who(&c, &lb).await, "old");
    }

    // The container is recreated with a new IP.
    *answer.lock().unwrap() = Some(Ipv4Addr::new(127, 0, 0, 3));
    let moved = Instant::now();
    let mut followed = None;
    while moved.elapsed() < Duration::from_secs(5) {
        if who(&c, &lb).await == "new" {
            followed = Some(moved.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let followed = followed.expect("lb did not follow the new address within 5 s");
    println!("dns: followed the new address after {followed:?} (interval 100 ms)");

    // DNS breaks: the last good address keeps serving, and the failure is
    // logged once, not every interval.
    *answer.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..5 {
        assert_eq!(who(&c, &lb).await, "new");
    }
    let log = lb.log_text();
    assert_eq!(log.matches("cannot resolve").count(), 1, "log:\n{log}");
}
