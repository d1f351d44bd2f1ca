//! Active health checks: `GET health.path` on every backend each `interval`;
//! up after `rise` consecutive 2xx answers within `timeout`, down after `fall`
//! consecutive failures. The verdict is one `AtomicBool` in the backend's stats,
//! read lock-free by the balancer; it is keyed by backend name, so weight
//! changes and reloads never reset it. Backends start up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::state::State;

/// Rise/fall bookkeeping for one backend (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    up: bool,
    streak: u32,
}

impl Tracker {
    /// A tracker in state `up`.
    pub fn new(up: bool) -> Self {
        Tracker { up, streak: 0 }
    }

    /// Records one probe result; returns the new state when it flips.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            // Confirms the current state: any streak toward a flip is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// One probe: `GET path` over a fresh connection; Ok on a 2xx status line.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // Only the status line matters: "HTTP/1.1 200 ...".
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                return Err("closed before a status line".into());
            }
            n += r;
        }
        match &buf[..12] {
            [b'H', b'T', b'T', b'P', b'/', _, _, _, b' ', b'2', _, _] => Ok(()),
            other => Err(format!("status {}", String::from_utf8_lossy(&other[9..12]))),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {timeout:?}")))
}

/// The checker task.
pub struct HealthChecker {
    state: Arc<State>,
}

impl HealthChecker {
    /// A checker for `state`'s backends.
    pub fn new(state: Arc<State>) -> Self {
        HealthChecker { state }
    }

    /// Probes every backend once, concurrently, and applies rise/fall.
    pub async fn round(&self, trackers: &mut HashMap<Arc<str>, Tracker>) {
        let snap = self.state.load_full();
        let h = &snap.config.health;
        let mut probes = JoinSet::new();
        for b in &snap.backends {
            let Some(addr) = b.addr else { continue };
            let (stats, path, timeout) = (b.stats.clone(), h.path.clone(), h.timeout);
            probes.spawn(async move { (stats, probe(addr, &path, timeout).await) });
        }
        while let Some(Ok((stats, result))) = probes.join_next().await {
            let ok = result.is_ok();
            let counter = if ok {
                &stats.health_ok
            } else {
                &stats.health_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let up = stats.healthy.load(Ordering::Relaxed);
            let tracker = trackers
                .entry(stats.name.clone())
                .or_insert(Tracker::new(up));
            if let Some(now_up) = tracker.observe(ok, h.rise, h.fall) {
                stats.healthy.store(now_up, Ordering::Relaxed);
                match result {
                    Ok(()) => tracing::info!(backend = %stats.name, "health: marked up"),
                    Err(why) => {
                        tracing::warn!(backend = %stats.name, reason = %why, "health: marked down")
                    }
                }
            }
        }
        trackers.retain(|name, _| snap.index_of(name).is_some());
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut trackers = HashMap::new();
        loop {
            let interval = self.state.load().config.health.interval;
            let tick = tokio::time::sleep(interval);
            self.round(&mut trackers).await;
            tokio::select! {
                _ = tick => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        // A success in between breaks the streak.
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(false, 1, 1), Some(false));
        assert_eq!(t.observe(true, 1, 1), Some(true));
    }

    #[tokio::test]
    async fn probe_reads_the_status_line() {
        use tokio::net::TcpListener;
        async fn serve_once(answer: &'static str) -> SocketAddr {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                if let Ok((mut s, _)) = l.accept().await {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                }
            });
            addr
        }
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert!(probe(ok, "/health", Duration::from_secs(2)).await.is_ok());
        let bad = serve_once("HTTP/1.1 503 Unavailable\r\n\r\n").await;
        assert_eq!(
            probe(bad, "/health", Duration::from_secs(2)).await,
            Err("status 503".into())
        );
        // Accepts but never answers: a timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = l.local_addr().unwrap();
        let r = probe(silent, "/health", Duration::from_millis(100)).await;
        assert!(r.unwrap_err().starts_with("timeout"));
        drop(l);
    }
}
