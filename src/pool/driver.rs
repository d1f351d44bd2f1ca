//! The pool's loop: every [`TICK`] it hands the core what happened (events
//! from provider calls and probes, each member's load from the snapshot) and
//! carries out the actions it returns: snapshot changes at once, provider
//! calls as tasks whose results come back as events.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::core::{Action, Core, Sample};
use super::provider::{Adopted, Provider, ProviderError};
use super::view::MemberState;
use super::{docker, lock, process, Pool};
use crate::config::{PoolConfig, PoolProvider};
use crate::state::{Backend, BackendStats, Mode, Snapshot, State};

/// How often the core looks at the pool: fine enough for `scale_up_after`
/// of a second and for noticing an exit, cheap (a snapshot load and a few
/// atomics per member).
const TICK: Duration = Duration::from_millis(100);

/// What provider calls and probes report back.
enum Event {
    Started(Arc<str>, SocketAddr),
    StartFailed(Arc<str>, String),
    Probe(Arc<str>, bool),
    Exited(Arc<str>, String),
    Stopped(Arc<str>),
    Memory(Arc<str>, Option<u64>),
    Checked,
}

/// The `lb-pool` thread's body: a current-thread runtime for lb's lifetime.
pub(super) fn run_thread(
    pool: Arc<Pool>,
    state: Arc<State>,
    cfg: PoolConfig,
    adopt: bool,
    boot: std::sync::mpsc::Sender<Result<(), ProviderError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = boot.send(Err(ProviderError::new("pool runtime", e)));
            return;
        }
    };
    rt.block_on(async move {
        let provider: Arc<dyn Provider> = match &cfg.provider {
            PoolProvider::Process { ports, .. } => {
                Arc::new(process::ProcessProvider::new(&cfg.name, ports.clone()))
            }
            PoolProvider::Docker(d) => match docker::DockerProvider::connect(&cfg.name, d).await {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    let _ = boot.send(Err(e));
                    return;
                }
            },
        };
        if adopt {
            // An upgrade: the old process's members serve on, now as ours.
            match provider.adopt().await {
                Ok(list) => take_over(&pool, list),
                Err(e) => {
                    let _ = boot.send(Err(ProviderError::new("adopting the old process's members", e)));
                    return;
                }
            }
        } else {
            match provider.clean_leftovers().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, pool = %cfg.name, "pool: removed members left by an earlier lb"),
                Err(e) => tracing::warn!(error = %e, "pool: cannot look for leftovers of an earlier lb"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = Driver {
            pool: pool.clone(),
            provider,
            state,
            tx,
            probing: HashSet::new(),
            next_probe: HashMap::new(),
            checking: false,
            next_check: Instant::now(),
            starts: JoinSet::new(),
            stops: JoinSet::new(),
            boot: Some(boot),
        };
        d.run(rx).await;
        let (flag, cv) = &pool.stopped;
        *lock(flag) = true;
        cv.notify_all();
    });
}

/// Adopted members into the core, each under the generation of the spec it
/// runs (the config's, or one added for what the old process rolled out).
fn take_over(pool: &Pool, adopted: Vec<Adopted>) {
    let mut specs = lock(&pool.specs);
    let mut core = lock(&pool.core);
    let now = Instant::now();
    for a in adopted {
        let generation = match specs.iter().position(|s| *s == a.spec) {
            Some(g) => g,
            None => {
                specs.push(a.spec);
                specs.len() - 1
            }
        };
        core.adopt(&a.name, a.addr, generation as u32, now);
    }
}

struct Driver {
    pool: Arc<Pool>,
    provider: Arc<dyn Provider>,
    state: Arc<State>,
    tx: mpsc::UnboundedSender<Event>,
    probing: HashSet<Arc<str>>,
    next_probe: HashMap<Arc<str>, Instant>,
    checking: bool,
    next_check: Instant,
    starts: JoinSet<()>,
    stops: JoinSet<()>,
    boot: Option<std::sync::mpsc::Sender<Result<(), ProviderError>>>,
}

impl Driver {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut stop = self.pool.stop.subscribe();
        let mut pending = Vec::new();
        loop {
            if self.pool.held.load(Ordering::Acquire) {
                // An upgrade under way: the members are the successor's to
                // run; nothing started, stopped or recycled meanwhile.
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
            let now = Instant::now();
            let snap = self.state.load_full();
            let pool = self.pool.clone();
            let actions = {
                let mut core = lock(&pool.core);
                let mut out = Vec::new();
                for ev in pending.drain(..) {
                    self.apply(&mut core, ev, now, &mut out);
                }
                out.extend(core.tick(now, |n| sample(&snap, n), queued(&self.state)));
                out
            };
            for a in actions {
                self.execute(a);
            }
            // Booted once `size` members serve (their snapshot entries exist).
            if self.boot.is_some() {
                let core = lock(&pool.core);
                if core.ready_keepers() >= core.config().size as usize {
                    if let Some(b) = self.boot.take() {
                        let _ = b.send(Ok(()));
                    }
                }
            }
            self.probe_starting(now, &snap);
            self.watch_liveness(now).await;
            while self.stops.try_join_next().is_some() || self.starts.try_join_next().is_some() {}
            tokio::select! {
                Some(ev) = rx.recv() => pending.push(ev),
                _ = tokio::time::sleep(TICK) => {}
                _ = self.pool.wake.notified() => {}
                _ = stop.changed() => break,
            }
            while let Ok(ev) = rx.try_recv() {
                pending.push(ev);
            }
        }
        if self.pool.held.load(Ordering::Acquire) {
            let n = lock(&self.pool.core).members.len();
            tracing::info!(
                members = n,
                "pool: members left running for the new lb process"
            );
            return;
        }
        self.stop_everything().await;
    }

    fn apply(&mut self, core: &mut Core, ev: Event, now: Instant, out: &mut Vec<Action>) {
        match ev {
            Event::Started(name, addr) => core.started(&name, addr),
            Event::StartFailed(name, why) => out.extend(core.start_failed(&name, &why, now)),
            Event::Probe(name, ok) => {
                self.probing.remove(&name);
                out.extend(core.probed(&name, ok, now));
            }
            Event::Exited(name, why) => out.extend(core.exited(&name, &why, now)),
            Event::Stopped(name) => {
                self.next_probe.remove(&name);
                core.stopped(&name);
            }
            Event::Memory(name, bytes) => core.set_memory(&name, bytes),
            Event::Checked => self.checking = false,
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Start { name, generation } => {
                let spec = lock(&self.pool.specs).get(generation as usize).cloned();
                let (provider, tx) = (self.provider.clone(), self.tx.clone());
                self.starts.spawn(async move {
                    let res = match spec {
                        Some(spec) => provider.start(&name, &spec).await,
                        None => Err(ProviderError(format!(
                            "no spec for generation {generation}"
                        ))),
                    };
                    let _ = tx.send(match res {
                        Ok(addr) => Event::Started(name, addr),
                        Err(e) => Event::StartFailed(name, e.to_string()),
                    });
                });
            }
            Action::Serve { name, addr } => {
                // The pool's own config: a reload that removed `[pool]` from
                // the file leaves the pool running as it was.
                let (weight, cap) = {
                    let core = lock(&self.pool.core);
                    (core.config().weight, core.config().max_in_flight)
                };
                serve(&self.state, &name, addr, weight, cap);
                // Its free slots are news to requests waiting in the queue.
                for _ in 0..cap.clamp(1, 64) {
                    self.state.queue.kick();
                }
            }
            Action::Drain { name } => set_mode(&self.state, &name, Mode::Drain),
            Action::Stop { name } => {
                remove(&self.state, &name);
                self.probing.remove(&name);
                let grace = lock(&self.pool.core).config().drain_timeout;
                let (provider, tx) = (self.provider.clone(), self.tx.clone());
                self.stops.spawn(async move {
                    provider.stop(&name, grace).await;
                    let _ = tx.send(Event::Stopped(name));
                });
            }
        }
    }

    /// Probes starting members that have an address, one probe in flight per
    /// member, every `min(health.interval, 200 ms)`.
    fn probe_starting(&mut self, now: Instant, snap: &Snapshot) {
        let h = &snap.config.health;
        let every = h.interval.min(Duration::from_millis(200));
        let starting: Vec<(Arc<str>, SocketAddr)> = lock(&self.pool.core)
            .members
            .iter()
            .filter(|m| m.state == MemberState::Starting)
            .filter_map(|m| Some((m.name.clone(), m.addr?)))
            .collect();
        for (name, addr) in starting {
            if self.probing.contains(&name) || self.next_probe.get(&name).is_some_and(|t| *t > now)
            {
                continue;
            }
            self.next_probe.insert(name.clone(), now + every);
            self.probing.insert(name.clone());
            let host = crate::health::probe_host(h.host.as_deref(), &addr.to_string());
            let (path, timeout, tx) = (h.path.clone(), h.timeout, self.tx.clone());
            tokio::spawn(async move {
                let ok = crate::health::probe(addr, &host, &path, timeout)
                    .await
                    .is_ok();
                let _ = tx.send(Event::Probe(name, ok));
            });
        }
    }

    /// Exits (every tick where that is cheap: a `waitpid`, the docker
    /// provider's event record; else every `check_interval`) and memory
    /// (every `check_interval`).
    async fn watch_liveness(&mut self, now: Instant) {
        let (live, every): (Vec<Arc<str>>, Duration) = {
            let core = lock(&self.pool.core);
            let live = core
                .members
                .iter()
                .filter(|m| m.state != MemberState::Stopping && m.addr.is_some())
                .map(|m| m.name.clone())
                .collect();
            (live, core.config().check_interval)
        };
        let cheap = self.provider.cheap_liveness();
        if cheap {
            for name in &live {
                if let Some(why) = self.provider.exited(name).await {
                    let _ = self.tx.send(Event::Exited(name.clone(), why));
                }
            }
        }
        if self.checking || now < self.next_check {
            return;
        }
        self.checking = true;
        self.next_check = now + every;
        let (provider, tx) = (self.provider.clone(), self.tx.clone());
        tokio::spawn(async move {
            for name in live {
                if !cheap {
                    if let Some(why) = provider.exited(&name).await {
                        let _ = tx.send(Event::Exited(name.clone(), why));
                        continue;
                    }
                }
                let _ = tx.send(Event::Memory(name.clone(), provider.memory(&name).await));
            }
            let _ = tx.send(Event::Checked);
        });
    }

    /// At lb's exit: lets starts under way finish, then stops every member
    /// (and waits for stops already under way).
    async fn stop_everything(&mut self) {
        while self.starts.join_next().await.is_some() {}
        let (names, grace): (Vec<Arc<str>>, Duration) = {
            let core = lock(&self.pool.core);
            let names = core.members.iter().map(|m| m.name.clone()).collect();
            (names, core.config().drain_timeout)
        };
        tracing::info!(members = names.len(), "pool: stopping every member");
        for name in names {
            remove(&self.state, &name);
            let provider = self.provider.clone();
            self.stops
                .spawn(async move { provider.stop(&name, grace).await });
        }
        while self.stops.join_next().await.is_some() {}
        tracing::info!("pool: every member stopped");
    }
}

fn sample(snap: &Snapshot, name: &str) -> Option<Sample> {
    let b = &snap.backends[snap.index_of(name)?];
    Some(Sample {
        in_flight: b.stats.in_flight(),
        requests_total: b.stats.requests_total.load(Ordering::Relaxed),
        healthy: b.stats.healthy.load(Ordering::Relaxed),
    })
}

/// Requests waiting in lb's queue for a backend with room (`[queue]`): any
/// means the members are full, as much as all at `max_in_flight` does.
fn queued(state: &State) -> u64 {
    state.queue.waiting() as u64
}

fn serve(state: &State, name: &str, addr: SocketAddr, weight: u32, max_in_flight: u32) {
    change(state, |backends| {
        backends.retain(|b| &*b.stats.name != name);
        backends.push(Backend {
            addr: Some(addr),
            configured_addr: addr.to_string(),
            weight,
            config_weight: weight,
            mode: Mode::Active,
            max_in_flight,
            group: None,
            stats: Arc::new(BackendStats::new(name)),
            pool: true,
            h2c: false,
        });
        true
    });
}

fn set_mode(state: &State, name: &str, mode: Mode) {
    change(state, |backends| {
        let b = backends.iter_mut().find(|b| &*b.stats.name == name);
        b.map(|b| b.mode = mode).is_some()
    });
}

fn remove(state: &State, name: &str) {
    change(state, |backends| {
        let before = backends.len();
        backends.retain(|b| &*b.stats.name != name);
        backends.len() != before
    });
}

/// One snapshot swap changing the backend list with `f` (none if `f` says
/// it changed nothing), laid out again so the 64-backend cap holds with
/// `resolve = "all"` groups beside the pool.
fn change(state: &State, f: impl FnOnce(&mut Vec<Backend>) -> bool) {
    let _ = state.try_update(None, |cur| {
        let mut backends = cur.backends.clone();
        if !f(&mut backends) {
            return Err(());
        }
        let next = cur.with(backends, cur.algorithm);
        Ok(next.relayout(next.groups.clone()))
    });
}
