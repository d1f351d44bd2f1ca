//! The core against a fake provider with simulated time: members become
//! healthy `boot` after their start (or never, for a broken generation), the
//! "snapshot" is a map, stops are instant. Every step checks the invariant
//! the pool promises: once booted, never fewer ready members than `min_size`
//! outside failures the test itself injects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{Config, PoolConfig};

const MS: Duration = Duration::from_millis(1);

fn config(extra: &str) -> PoolConfig {
    let text = format!(
        "[pool]\ncommand = [\"app\", \"{{port}}\"]\nsize = 3\nmin_size = 2\nmax_size = 5\n\
         start_timeout = \"2s\"\ndrain_timeout = \"1s\"\n{extra}\n"
    );
    Config::from_toml(&text).unwrap().pool.unwrap()
}

struct Sim {
    core: Core,
    now: Instant,
    /// How long a start takes to answer its probes.
    boot: Duration,
    /// Starts of this generation never turn healthy.
    broken: Option<u32>,
    /// Members in the "snapshot": load, and whether they are draining.
    served: BTreeMap<String, (Sample, bool)>,
    /// Starting members and when they will be healthy.
    booting: Vec<(Arc<str>, Instant, u32)>,
    /// Every action, in order, with its time in ms from the start.
    log: Vec<(u64, Action)>,
    t0: Instant,
    /// Fewest healthy, non-draining served members seen since `watch_from`.
    min_ready: usize,
    watch_from: Option<Instant>,
}

impl Sim {
    fn new(extra: &str) -> Sim {
        let t0 = Instant::now();
        Sim {
            core: Core::new(config(extra), 1),
            now: t0,
            boot: 300 * MS,
            broken: None,
            served: BTreeMap::new(),
            booting: Vec::new(),
            log: Vec::new(),
            t0,
            min_ready: usize::MAX,
            watch_from: None,
        }
    }

    fn addr(name: &str) -> SocketAddr {
        let n: u16 = name.rsplit('-').next().unwrap().parse().unwrap();
        SocketAddr::from(([127, 0, 0, 1], 3100 + n))
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            self.log
                .push(((self.now - self.t0).as_millis() as u64, a.clone()));
            match a {
                Action::Start { name, generation } => {
                    self.core.started(&name, Sim::addr(&name));
                    self.booting.push((name, self.now + self.boot, generation));
                }
                Action::Serve { name, .. } => {
                    let s = Sample {
                        healthy: true,
                        ..Sample::default()
                    };
                    self.served.insert(name.to_string(), (s, false));
                }
                Action::Drain { name } => {
                    self.served.get_mut(&*name).unwrap().1 = true;
                }
                Action::Stop { name } => {
                    self.served.remove(&*name);
                    self.booting.retain(|(n, ..)| *n != name);
                    self.core.stopped(&name);
                }
            }
        }
    }

    /// Advances time by `dt` in 100 ms ticks.
    fn run(&mut self, dt: Duration) {
        let end = self.now + dt;
        while self.now < end {
            self.now += 100 * MS;
            let due: Vec<_> = self
                .booting
                .iter()
                .filter(|(_, t, g)| *t <= self.now && Some(*g) != self.broken)
                .map(|(n, ..)| n.clone())
                .collect();
            for name in due {
                self.booting.retain(|(n, ..)| *n != name);
                let a = self.core.probed(&name, true, self.now);
                self.apply(a.into_iter().collect());
            }
            let served = self.served.clone();
            let a = self
                .core
                .tick(self.now, |n| served.get(n).map(|(s, _)| *s), 0);
            self.apply(a);
            if self.watch_from.is_some_and(|t| self.now >= t) {
                self.min_ready = self.min_ready.min(self.ready());
            }
        }
    }

    /// Healthy, non-draining members in the snapshot.
    fn ready(&self) -> usize {
        self.served
            .values()
            .filter(|(s, draining)| s.healthy && !draining)
            .count()
    }

    fn names(&self) -> Vec<String> {
        self.served.keys().cloned().collect()
    }

    fn set(&mut self, name: &str, f: impl FnOnce(&mut Sample)) {
        f(&mut self.served.get_mut(name).unwrap().0);
    }

    fn booted(extra: &str) -> Sim {
        let mut s = Sim::new(extra);
        s.run(Duration::from_secs(1));
        assert_eq!(s.names(), ["app-1", "app-2", "app-3"]);
        s.watch_from = Some(s.now);
        s
    }

    fn when(&self, want: impl Fn(&Action) -> bool) -> Option<u64> {
        self.log.iter().find(|(_, a)| want(a)).map(|(t, _)| *t)
    }
}

fn serve_of(name: &'static str) -> impl Fn(&Action) -> bool {
    move |a| matches!(a, Action::Serve { name: n, .. } if &**n == name)
}
fn drain_of(name: &'static str) -> impl Fn(&Action) -> bool {
    move |a| matches!(a, Action::Drain { name: n } if &**n == name)
}
fn stop_of(name: &'static str) -> impl Fn(&Action) -> bool {
    move |a| matches!(a, Action::Stop { name: n } if &**n == name)
}

#[test]
fn boot_starts_size_members_and_serves_them_when_healthy() {
    let mut s = Sim::new("");
    s.run(100 * MS);
    let starts = s
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Start { .. }))
        .count();
    assert_eq!(starts, 3);
    assert!(
        s.names().is_empty(),
        "nothing served before its probes pass"
    );
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-1", "app-2", "app-3"]);
    assert_eq!(s.core.counters.starts_ok, 3);
    assert_eq!(s.core.view(s.now).members.len(), 3);
}

#[test]
fn an_exited_member_is_replaced_with_a_new_number() {
    let mut s = Sim::booted("");
    let a = s.core.exited("app-2", "signal: 9 (SIGKILL)", s.now);
    s.apply(a.into_iter().collect());
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-1", "app-3", "app-4"]);
    assert_eq!(s.core.counters.recycles[Reason::Exited as usize], 1);
    assert_eq!(s.core.view(s.now).replaced_total, 1);
}

#[test]
fn an_unhealthy_member_drains_at_once_and_is_replaced() {
    let mut s = Sim::booted("");
    s.set("app-1", |x| x.healthy = false);
    s.run(200 * MS);
    assert!(s.when(drain_of("app-1")).is_some());
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-2", "app-3", "app-4"]);
    assert_eq!(s.core.counters.recycles[Reason::Unhealthy as usize], 1);
}

#[test]
fn memory_recycle_serves_the_replacement_before_draining_the_old() {
    let mut s = Sim::booted("max_memory = \"100MiB\"");
    s.core.set_memory("app-2", Some(150 << 20));
    s.run(Duration::from_secs(2));
    let served = s.when(serve_of("app-4")).expect("replacement served");
    let drained = s.when(drain_of("app-2")).expect("old drained");
    assert!(
        served <= drained,
        "replacement at {served} ms, drain at {drained} ms"
    );
    assert_eq!(s.names(), ["app-1", "app-3", "app-4"]);
    assert_eq!(s.core.view(s.now).recycled_total.memory, 1);
    assert_eq!(s.min_ready, 3, "never below full strength");
}

#[test]
fn age_recycles_one_member_at_a_time() {
    let mut s = Sim::booted("max_age = \"3s\"");
    // Until 5.5 s: the first round (from 3.1 s) and not yet the second (6.1 s).
    s.run(Duration::from_millis(4500));
    // All three reach max_age together; each is replaced only once the
    // previous replacement was served, so ready members never drop.
    assert_eq!(s.min_ready, 3);
    assert_eq!(s.core.view(s.now).recycled_total.age, 3);
    let (d1, s5) = (
        s.when(drain_of("app-1")).unwrap(),
        s.when(serve_of("app-5")).unwrap(),
    );
    assert!(
        d1 <= s5,
        "app-2's replacement starts after app-1's is served"
    );
    assert_eq!(s.names(), ["app-4", "app-5", "app-6"]);
}

#[test]
fn a_draining_member_stops_when_idle_or_at_drain_timeout() {
    let mut s = Sim::booted("max_memory = \"1MiB\"\nmax_age = \"0s\"");
    s.set("app-1", |x| x.in_flight = 2);
    s.core.set_memory("app-1", Some(2 << 20));
    s.run(600 * MS);
    let drained = s.when(drain_of("app-1")).expect("draining");
    assert!(
        s.when(stop_of("app-1")).is_none(),
        "in-flight requests still running"
    );
    s.run(Duration::from_secs(1));
    let stopped = s.when(stop_of("app-1")).expect("stopped at drain_timeout");
    assert!(
        (1000..=1100).contains(&(stopped - drained)),
        "{drained} → {stopped}"
    );
    // Another draining member with nothing in flight stops at the next tick.
    s.core.set_memory("app-2", Some(2 << 20));
    s.run(Duration::from_secs(1));
    let (d, st) = (
        s.when(drain_of("app-2")).unwrap(),
        s.when(stop_of("app-2")).unwrap(),
    );
    assert_eq!(st - d, 100);
}

#[test]
fn saturation_for_scale_up_after_adds_one_member_at_a_time_up_to_max() {
    let mut s = Sim::booted("max_in_flight = 4\nscale_up_after = \"1s\"");
    for n in s.names() {
        s.set(&n, |x| x.in_flight = 4);
    }
    s.run(800 * MS);
    assert_eq!(s.core.target, 3, "not before scale_up_after");
    s.run(400 * MS);
    assert_eq!(s.core.target, 4);
    // The new member is busy too as soon as it serves.
    for _ in 0..40 {
        s.run(100 * MS);
        for n in s.names() {
            s.set(&n, |x| x.in_flight = 4);
        }
    }
    assert_eq!(s.core.target, 5, "max_size");
    assert_eq!(s.names().len(), 5);
    assert_eq!(s.core.counters.scaled_up, 2);
    // One member below capacity: no growth (and none needed).
    s.set("app-1", |x| x.in_flight = 1);
}

#[test]
fn idle_members_above_min_size_leave_after_idle_timeout() {
    let mut s = Sim::booted("idle_timeout = \"2s\"");
    s.set("app-3", |x| x.in_flight = 1);
    s.run(Duration::from_millis(2500));
    // app-1 goes; app-2 would too, but min_size = 2 keeps it (app-3 is busy).
    assert_eq!(s.core.target, 2);
    assert_eq!(s.names(), ["app-2", "app-3"]);
    s.set("app-3", |x| x.in_flight = 0);
    s.run(Duration::from_secs(5));
    assert_eq!(s.names().len(), 2, "never below min_size");
    assert_eq!(s.core.counters.scaled_down, 1);
}

#[test]
fn rollout_replaces_every_member_one_at_a_time() {
    let mut s = Sim::booted("");
    s.core.start_rollout(1).unwrap();
    assert!(matches!(
        s.core.start_rollout(2),
        Err(PoolError::RolloutRunning { done: 0, total: 3 })
    ));
    s.run(Duration::from_secs(3));
    let r = s.core.rollout.clone().unwrap();
    assert_eq!((r.state, r.done, r.total), (RolloutState::Done, 3, 3));
    assert_eq!(s.names(), ["app-4", "app-5", "app-6"]);
    assert!(s.core.members.iter().all(|m| m.generation == 1));
    assert_eq!(s.min_ready, 3);
}

#[test]
fn a_rollout_whose_members_never_turn_healthy_fails_and_keeps_the_old_ones() {
    let mut s = Sim::booted("");
    s.broken = Some(1);
    s.core.start_rollout(1).unwrap();
    s.run(Duration::from_secs(4));
    let r = s.core.rollout.clone().unwrap();
    assert_eq!((r.state, r.done), (RolloutState::Failed, 0));
    assert_eq!(s.names(), ["app-1", "app-2", "app-3"]);
    assert_eq!(s.core.generation, 0, "new starts use the old spec again");
    assert_eq!(s.core.counters.starts_failed, 1);
    assert_eq!(s.min_ready, 3);
    // Nothing left retiring: the pool is at rest.
    s.run(Duration::from_secs(2));
    assert_eq!(s.names(), ["app-1", "app-2", "app-3"]);
    // A new rollout may start after a failed one.
    s.broken = None;
    s.core.start_rollout(2).unwrap();
    s.run(Duration::from_secs(3));
    assert_eq!(s.core.rollout.as_ref().unwrap().state, RolloutState::Done);
}

#[test]
fn set_size_is_bounded_and_shrinks_the_least_busy() {
    let mut s = Sim::booted("");
    assert_eq!(
        s.core.set_size(6),
        Err(PoolError::Size {
            size: 6,
            min: 2,
            max: 5
        })
    );
    assert!(s.core.set_size(1).is_err());
    s.set("app-1", |x| x.in_flight = 3);
    s.set("app-3", |x| x.in_flight = 1);
    s.core.set_size(2).unwrap();
    s.run(500 * MS);
    assert_eq!(s.names(), ["app-1", "app-3"]);
    s.core.set_size(4).unwrap();
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-1", "app-3", "app-4", "app-5"]);
}

#[test]
fn failed_starts_back_off() {
    let mut s = Sim::new("");
    s.broken = Some(0);
    s.run(Duration::from_millis(2100));
    // Three starts timed out at 2 s; the next attempts wait for the backoff.
    assert_eq!(s.core.counters.starts_failed, 3);
    let starts = |s: &Sim| {
        s.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::Start { .. }))
            .count()
    };
    assert_eq!(starts(&s), 3);
    s.run(Duration::from_millis(300));
    assert_eq!(starts(&s), 3, "still backing off");
    s.broken = None;
    s.run(Duration::from_secs(20));
    assert_eq!(s.names().len(), 3, "recovers once starts work");
}

mod reconfigure;

#[test]
fn adopted_members_serve_without_a_start_and_new_ones_number_after_them() {
    let mut s = Sim::new("");
    for n in ["app-5", "app-7", "app-8", "app-9"] {
        s.core.adopt(n, Sim::addr(n), 0, s.now);
        s.booting.push((n.into(), s.now, 0));
    }
    assert_eq!(s.core.target, 4, "what the old process had scaled to");
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-5", "app-7", "app-8", "app-9"]);
    assert_eq!(s.when(|a| matches!(a, Action::Start { .. })), None);
    let a = s.core.exited("app-7", "container died", s.now);
    s.apply(a.into_iter().collect());
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-10", "app-5", "app-8", "app-9"]);
}

#[test]
fn fewer_adopted_than_size_are_topped_up_after_them() {
    let mut s = Sim::new("");
    s.core.adopt("app-4", Sim::addr("app-4"), 0, s.now);
    s.booting.push(("app-4".into(), s.now, 0));
    s.run(Duration::from_secs(1));
    assert_eq!(s.core.target, 3);
    assert_eq!(s.names(), ["app-4", "app-5", "app-6"]);
}
