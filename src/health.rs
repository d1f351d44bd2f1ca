//! Active health checks: `GET health.path` on every backend every `interval`;
//! up after `rise` consecutive 2xx answers within `timeout`, down after `fall`
//! consecutive failures. The verdict is one `AtomicBool` in the backend's stats,
//! read lock-free by the balancer; it is keyed by backend name, so weight
//! changes and reloads never reset it. Backends start up.
//!
//! Each backend has its own [`Schedule`]: a probe starts `interval` after the
//! previous one started, or as soon as that one ends if it took longer. So a
//! `timeout` above `interval` (which Docker, Kubernetes, HAProxy and Envoy all
//! accept) only delays that backend's next probe: never two probes in flight to
//! one backend, and a slow backend never delays another's checks. Probes
//! themselves ([`probe`]) read the whole answer and close cleanly.

mod probe;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinSet;

pub use probe::{probe, MAX_RESPONSE};

use crate::state::{BackendStats, State};

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

/// When each backend's next probe is due (pure; time passed in).
#[derive(Debug, Default)]
pub struct Schedule {
    next: HashMap<Arc<str>, Instant>,
    probing: HashSet<Arc<str>>,
}

impl Schedule {
    /// Those of `names` due at `now` with no probe in flight, marked as started
    /// (the next one is due `interval` from now, or when this one ends).
    pub fn start_due<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a Arc<str>>,
        interval: Duration,
        now: Instant,
    ) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        for name in names {
            if self.probing.contains(name) || self.next.get(name).is_some_and(|t| *t > now) {
                continue;
            }
            self.next.insert(name.clone(), now + interval);
            self.probing.insert(name.clone());
            due.push(name.clone());
        }
        due
    }

    /// The probe of `name` ended.
    pub fn finished(&mut self, name: &str) {
        self.probing.remove(name);
    }

    /// The earliest due time of a backend with no probe in flight.
    pub fn next_due(&self) -> Option<Instant> {
        self.next
            .iter()
            .filter(|(name, _)| !self.probing.contains(*name))
            .map(|(_, t)| *t)
            .min()
    }

    /// Forgets backends for which `keep` is false (removed by a reload).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.next.retain(|name, _| keep(name));
    }
}

/// The `Host` of a backend's probes: `health.host` if set, else the host part of
/// its configured `addr` (`app-1` of `app-1:3000`, `[::1]` of `[::1]:3000`).
pub fn probe_host(health_host: Option<&str>, configured_addr: &str) -> String {
    match health_host {
        Some(h) => h.to_string(),
        None => configured_addr
            .rsplit_once(':')
            .map_or(configured_addr, |(host, _)| host)
            .to_string(),
    }
}

/// The checker task.
pub struct HealthChecker {
    state: Arc<State>,
}

type ProbeResult = (Arc<BackendStats>, Result<(), String>);

impl HealthChecker {
    /// A checker for `state`'s backends.
    pub fn new(state: Arc<State>) -> Self {
        HealthChecker { state }
    }

    /// Starts the probes due at `now`; when the loop should look again.
    fn start_due(
        &self,
        schedule: &mut Schedule,
        probes: &mut JoinSet<ProbeResult>,
        tasks: &mut HashMap<tokio::task::Id, Arc<str>>,
        now: Instant,
    ) -> Instant {
        let snap = self.state.load_full();
        let h = &snap.config.health;
        let resolved = snap.backends.iter().filter(|b| b.addr.is_some());
        for name in schedule.start_due(resolved.map(|b| &b.stats.name), h.interval, now) {
            let Some(b) = snap.index_of(&name).map(|i| &snap.backends[i]) else {
                continue;
            };
            let (Some(addr), stats) = (b.addr, b.stats.clone()) else {
                continue;
            };
            let host = probe_host(h.host.as_deref(), &b.configured_addr);
            let (path, timeout) = (h.path.clone(), h.timeout);
            let task =
                probes.spawn(async move { (stats, probe(addr, &host, &path, timeout).await) });
            tasks.insert(task.id(), name);
        }
        schedule.retain(|name| snap.index_of(name).is_some());
        // Also look again after one interval: a backend whose name resolved
        // meanwhile has no due time yet.
        schedule
            .next_due()
            .map_or(now + h.interval, |t| t.min(now + h.interval))
    }

    /// Applies one probe's result: counters, rise/fall, the health flag.
    fn apply(&self, trackers: &mut HashMap<Arc<str>, Tracker>, (stats, result): ProbeResult) {
        let snap = self.state.load();
        let h = &snap.config.health;
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
            if now_up {
                // Back: slow start (`balancer.slow_start`).
                stats.restart_ramp(std::time::Instant::now());
            }
            stats.healthy.store(now_up, Ordering::Relaxed);
            match result {
                Ok(()) => tracing::info!(backend = %stats.name, "health: marked up"),
                Err(why) => {
                    tracing::warn!(backend = %stats.name, reason = %why, "health: marked down")
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
        let mut schedule = Schedule::default();
        let mut probes = JoinSet::new();
        let mut tasks = HashMap::new();
        loop {
            let wake = self.start_due(&mut schedule, &mut probes, &mut tasks, Instant::now());
            tokio::select! {
                Some(done) = probes.join_next_with_id(), if !probes.is_empty() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if let Some(name) = tasks.remove(&id) {
                        schedule.finished(&name);
                    }
                    if let Ok((_, result)) = done {
                        self.apply(&mut trackers, result);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
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

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_probe_in_flight_delays_only_its_own_backends_next() {
        // interval 100 ms, timeout above it: a's probe takes 250 ms, b's 10 ms.
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let names = [a.clone(), b.clone()];
        let t0 = Instant::now();
        let iv = 100 * MS;
        let mut s = Schedule::default();
        assert_eq!(s.start_due(&names, iv, t0), names.to_vec());
        s.finished("b"); // at 10 ms
        assert_eq!(s.next_due(), Some(t0 + iv)); // b's; a is in flight
        assert_eq!(s.start_due(&names, iv, t0 + 50 * MS), vec![]);
        // 100 ms: b is due again, a (still in flight) is not started twice.
        assert_eq!(s.start_due(&names, iv, t0 + iv), vec![b.clone()]);
        s.finished("b");
        assert_eq!(s.start_due(&names, iv, t0 + 200 * MS), vec![b.clone()]);
        s.finished("b");
        // 250 ms: a's probe ends; it was due at 100 ms, so it starts at once.
        s.finished("a");
        assert_eq!(s.next_due(), Some(t0 + iv));
        assert_eq!(s.start_due(&names, iv, t0 + 250 * MS), vec![a.clone()]);
        assert_eq!(s.next_due(), Some(t0 + 300 * MS)); // b's
                                                       // A backend removed by a reload is forgotten.
        s.retain(|n| n == "a");
        s.finished("a");
        assert_eq!(s.next_due(), Some(t0 + 350 * MS));
    }

    #[test]
    fn probe_host_defaults_to_the_host_of_addr() {
        assert_eq!(probe_host(None, "app-1:3000"), "app-1");
        assert_eq!(probe_host(None, "127.0.0.1:3000"), "127.0.0.1");
        assert_eq!(probe_host(None, "[::1]:3000"), "[::1]");
        assert_eq!(
            probe_host(Some("status.internal"), "app-1:3000"),
            "status.internal"
        );
    }

    /// A backend answering `/health` with 200 after `delay`; counts probes and
    /// the most it ever had at once, and records Host headers.
    #[derive(Default)]
    struct Probed {
        done: std::sync::atomic::AtomicUsize,
        now: std::sync::atomic::AtomicUsize,
        max: std::sync::atomic::AtomicUsize,
        hosts: std::sync::Mutex<HashSet<String>>,
    }

    async fn slow_backend(delay: Duration) -> (std::net::SocketAddr, Arc<Probed>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let p = Arc::new(Probed::default());
        let p2 = p.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let p = p2.clone();
                tokio::spawn(async move {
                    let at_once = p.now.fetch_add(1, Ordering::SeqCst) + 1;
                    p.max.fetch_max(at_once, Ordering::SeqCst);
                    let mut b = vec![0u8; 2048];
                    let n = c.read(&mut b).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&b[..n]).to_string();
                    if let Some(h) = req.lines().find_map(|l| l.strip_prefix("Host: ")) {
                        p.hosts.lock().unwrap().insert(h.to_string());
                    }
                    tokio::time::sleep(delay).await;
                    let _ = c
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    let _ = c.read(&mut b).await; // the probe's close
                    p.now.fetch_sub(1, Ordering::SeqCst);
                    p.done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, p)
    }

    /// Runs a checker over backends at `addrs` with `health` settings until
    /// `enough` holds (at most 10 s); the state it ran on.
    async fn run_checker(
        health: &str,
        addrs: &[std::net::SocketAddr],
        enough: impl Fn() -> bool,
    ) -> Arc<State> {
        let backends: String = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("[[backends]]\nname = \"b{i}\"\naddr = \"{a}\"\n"))
            .collect();
        let text = format!("[health]\n{health}\n{backends}");
        let state = Arc::new(State::new(Arc::new(
            crate::config::Config::from_toml(&text).unwrap(),
        )));
        let (stop, watch) = tokio::sync::watch::channel(false);
        let checker = HealthChecker::new(state.clone());
        let task = tokio::spawn(async move { checker.start(watch).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !enough() && Instant::now() < deadline {
            tokio::time::sleep(5 * MS).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        state
    }

    #[tokio::test]
    async fn a_timeout_above_interval_delays_only_that_backends_probes() {
        // interval 50 ms, timeout 2 s; the slow backend answers in 300 ms.
        let (slow, ps) = slow_backend(300 * MS).await;
        let (fast, pf) = slow_backend(Duration::ZERO).await;
        let state = run_checker(
            "interval = \"50ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1",
            &[slow, fast],
            || ps.done.load(Ordering::SeqCst) >= 3,
        )
        .await;
        let (s_done, f_done) = (
            ps.done.load(Ordering::SeqCst),
            pf.done.load(Ordering::SeqCst),
        );
        println!("slow backend: {s_done} probes (never more than one at once), fast: {f_done}");
        // One probe at a time: each slow probe started when the previous ended.
        assert_eq!(ps.max.load(Ordering::SeqCst), 1);
        assert!(s_done >= 3);
        // The fast backend kept its 50 ms schedule: ~18 probes in the ~0.9 s the
        // slow one needed for 3. A shared round would have given it 3 or 4;
        // asking for twice the slow count leaves room for a loaded machine.
        assert!(f_done >= 2 * s_done, "fast {f_done} vs slow {s_done}");
        // Slow but within timeout: healthy. Host is the host of addr.
        assert!(state
            .load()
            .backends
            .iter()
            .all(|b| b.stats.healthy.load(Ordering::Relaxed)));
        assert_eq!(
            *ps.hosts.lock().unwrap(),
            HashSet::from(["127.0.0.1".to_string()])
        );
    }

    #[tokio::test]
    async fn health_host_is_the_probes_host_header() {
        let (addr, p) = slow_backend(Duration::ZERO).await;
        run_checker(
            "interval = \"20ms\"\nhost = \"status.internal:8080\"",
            &[addr],
            || p.done.load(Ordering::SeqCst) >= 2,
        )
        .await;
        assert_eq!(
            *p.hosts.lock().unwrap(),
            HashSet::from(["status.internal:8080".to_string()])
        );
    }
}
