//! In-flight accounting survives algorithm switches (snapshot rebuilds) and
//! client disconnects: lb runs in-process so the test can swap the algorithm
//! under load and read the per-backend counters directly.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use lb::config::{Algorithm, Config};
use lb::server::Lb as LbServer;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};

struct TestSignal(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for TestSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

#[test]
fn in_flight_counts_consistent_after_switches_and_disconnects() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Backends take 0–6 ms so that many requests are in flight at any moment.
    let apps = rt.block_on(Apps::start(
        (1..=4)
            .map(|i| {
                let mut o = named(&format!("app-{i}"));
                o.delay = Duration::from_millis(2 * (i as u64 - 1));
                o
            })
            .collect(),
    ));
    let port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [log]\naccess = false\n{}",
        free_port(),
        apps.backends_toml(&[1, 2, 3, 4])
    );
    let lb = LbServer::build(Config::from_toml(&text).unwrap(), None).unwrap();
    let state = lb.state.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let signal = Box::new(TestSignal(stop.clone()));
    let server = std::thread::spawn(move || lb.run_with(signal));

    let url = format!("http://127.0.0.1:{port}/api/whoami");
    let min_seen = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (ok, cut) = rt.block_on(async {
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok())
            .await,
            "lb did not start"
        );
        // Switch algorithm every 10 ms and sample in-flight counts meanwhile.
        let switcher = {
            let (state, done, min_seen) = (state.clone(), done.clone(), min_seen.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !done.load(Ordering::Relaxed) {
                    state.set_algorithm(Algorithm::ALL[n % Algorithm::ALL.len()]);
                    n += 1;
                    for b in &state.load().backends {
                        min_seen.fetch_min(b.stats.in_flight(), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n
            })
        };
        let mut set = tokio::task::JoinSet::new();
        // 32 workers × 313 = 10,016 requests.
        for _ in 0..32 {
            let url = url.clone();
            set.spawn(async move {
                let c = client();
                let (mut ok, mut cut) = (0u32, 0u32);
                for i in 0..313 {
                    // Every 4th request gives up after 1 ms: the client disconnects
                    // while lb waits on the backend.
                    let mut req = c.get(&url);
                    if i % 4 == 0 {
                        req = req.timeout(Duration::from_millis(1));
                    }
                    match req.send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => panic!("status {}", r.status()),
                        Err(_) => cut += 1,
                    }
                }
                (ok, cut)
            });
        }
        let (mut ok, mut cut) = (0, 0);
        while let Some(r) = set.join_next().await {
            let (o, c) = r.unwrap();
            ok += o;
            cut += c;
        }
        done.store(true, Ordering::Relaxed);
        let switches = switcher.await.unwrap();
        println!(
            "{} requests ({ok} ok, {cut} cut by the client), {switches} algorithm switches",
            ok + cut
        );
        // In-flight must return to exactly 0 once every request is over.
        let settled = eventually(Duration::from_secs(10), || {
            state
                .load()
                .backends
                .iter()
                .all(|b| b.stats.in_flight() == 0)
        })
        .await;
        let left: Vec<i64> = state
            .load()
            .backends
            .iter()
            .map(|b| b.stats.in_flight())
            .collect();
        assert!(settled, "in-flight did not return to 0: {left:?}");
        (ok, cut)
    });
    stop.notify_one();
    server.join().unwrap();
    // Both outcomes were exercised (each worker counts every request as one
    // or the other, or panics on another status).
    assert!(ok > 0, "no request was answered");
    assert!(cut > 0, "no client disconnects were exercised");
    // Each 200 was served by an app, and no request was served twice: the
    // apps answered at least every 200 and at most every request sent.
    let served: u64 = apps.api_counts().iter().sum();
    assert!(
        (u64::from(ok)..=u64::from(ok + cut)).contains(&served),
        "apps served {served}, clients got {ok} answers and cut {cut}"
    );
    assert_eq!(
        min_seen.load(Ordering::Relaxed),
        0,
        "negative in-flight seen"
    );
    let total: u64 = state
        .load()
        .backends
        .iter()
        .map(|b| b.stats.requests_total.load(Ordering::Relaxed))
        .sum();
    // Every successful request was one completed attempt at some backend.
    assert!(total >= ok as u64, "requests_total {total} < ok {ok}");
}
