//! Per-backend circuit breaker, lock-free, time passed in (`now`).
//!
//! closed → open after `failures` consecutive failures (connect error, timeout,
//! 5xx); open → half-open once `open_for` has passed (doubled on every re-open,
//! capped at `max_open_for`); half-open admits `half_open_requests` probes. A
//! probe's success closes the circuit, its failure re-opens it. Probe slots are
//! held by a [`Permit`] whose `Drop` releases the slot, so a probe that times out
//! or whose client disconnects can never wedge the breaker half-open.
//!
//! State is one `AtomicU64`: 2 bits of state, 6 bits of re-open count, 56 bits
//! of "opened at" (ms since the process clock's epoch). Probes in flight are a
//! separate counter.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::CircuitConfig;

/// Circuit states, as named in the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Normal operation.
    Closed,
    /// Failing: no requests until the open period ends.
    Open,
    /// Trying: a few probe requests decide.
    HalfOpen,
}

impl CircuitState {
    /// `closed` | `open` | `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn pack(state: u64, reopens: u64, at_ms: u64) -> u64 {
    state | (reopens.min(63) << 2) | (at_ms << 8)
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (v & 3, (v >> 2) & 63, v >> 8)
}

/// A backend's breaker.
#[derive(Debug, Default)]
pub struct Circuit {
    state: AtomicU64,
    consecutive_failures: AtomicU32,
    probes: Arc<AtomicU32>,
}

/// Permission to send one request; hand it back via [`Circuit::on_success`] or
/// [`Circuit::on_failure`]. Dropping a probe permit frees its slot.
#[derive(Debug)]
pub struct Permit {
    probe: Option<Arc<AtomicU32>>,
}

impl Permit {
    /// Is this a half-open probe?
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(p) = self.probe.take() {
            p.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn open_period(cfg: &CircuitConfig, reopens: u64) -> Duration {
    let factor = 1u32 << reopens.min(20);
    cfg.open_for.saturating_mul(factor).min(cfg.max_open_for)
}

impl Circuit {
    /// The state at `now` (an open circuit whose period has passed reads as
    /// half-open; the transition itself happens on the next [`Self::acquire`]).
    pub fn state(&self, cfg: &CircuitConfig, now: Instant) -> CircuitState {
        let (st, reopens, at) = unpack(self.state.load(Ordering::Acquire));
        match st {
            CLOSED => CircuitState::Closed,
            OPEN if clock::ms(now) >= at + open_period(cfg, reopens).as_millis() as u64 => {
                CircuitState::HalfOpen
            }
            OPEN => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// Could a request be admitted now? (Read-only; for eligibility masks.)
    pub fn admits(&self, cfg: &CircuitConfig, now: Instant) -> bool {
        match self.state(cfg, now) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => self.probes.load(Ordering::Acquire) < cfg.half_open_requests,
        }
    }

    /// Asks to send one request at `now`.
    pub fn acquire(&self, cfg: &CircuitConfig, now: Instant) -> Option<Permit> {
        let cur = self.state.load(Ordering::Acquire);
        let (st, reopens, at) = unpack(cur);
        match st {
            CLOSED => return Some(Permit { probe: None }),
            OPEN => {
                if clock::ms(now) < at + open_period(cfg, reopens).as_millis() as u64 {
                    return None;
                }
                // Open period over: move to half-open (one racer wins; all continue).
                let _ = self.state.compare_exchange(
                    cur,
                    pack(HALF_OPEN, reopens, at),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            _ => {}
        }
        if unpack(self.state.load(Ordering::Acquire)).0 == CLOSED {
            return Some(Permit { probe: None });
        }
        let max = cfg.half_open_requests;
        self.probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < max).then_some(p + 1)
            })
            .ok()
            .map(|_| Permit {
                probe: Some(self.probes.clone()),
            })
    }

    /// The request sent under `permit` succeeded.
    pub fn on_success(&self, permit: Permit) {
        self.consecutive_failures.store(0, Ordering::Release);
        if permit.is_probe() {
            let cur = self.state.load(Ordering::Acquire);
            if unpack(cur).0 == HALF_OPEN {
                let _ = self.state.compare_exchange(
                    cur,
                    pack(CLOSED, 0, 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }

    /// The request sent under `permit` failed at `now`. Returns true if this
    /// failure opened (or re-opened) the circuit.
    pub fn on_failure(&self, cfg: &CircuitConfig, permit: Permit, now: Instant) -> bool {
        let cur = self.state.load(Ordering::Acquire);
        let (st, reopens, _) = unpack(cur);
        if permit.is_probe() {
            // A failed probe re-opens with a doubled period.
            return st == HALF_OPEN
                && self
                    .state
                    .compare_exchange(
                        cur,
                        pack(OPEN, reopens + 1, clock::ms(now)),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if st == CLOSED && n >= cfg.failures {
            self.consecutive_failures.store(0, Ordering::Release);
            return self
                .state
                .compare_exchange(
                    cur,
                    pack(OPEN, 0, clock::ms(now)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        }
        false
    }

    /// Probe slots currently held.
    pub fn probes_in_flight(&self) -> u32 {
        self.probes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CircuitConfig {
        CircuitConfig {
            failures: 3,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(18),
            half_open_requests: 2,
        }
    }

    const S: Duration = Duration::from_secs(1);

    fn fail(c: &Circuit, now: Instant) -> bool {
        let p = c.acquire(&cfg(), now).expect("admitted");
        c.on_failure(&cfg(), p, now)
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (c, t) = (Circuit::default(), Instant::now());
        assert!(!fail(&c, t));
        assert!(!fail(&c, t));
        // A success resets the streak.
        c.on_success(c.acquire(&cfg(), t).unwrap());
        assert!(!fail(&c, t));
        assert!(!fail(&c, t));
        assert!(fail(&c, t));
        assert_eq!(c.state(&cfg(), t), CircuitState::Open);
        assert!(c.acquire(&cfg(), t + 4 * S).is_none());
        assert!(!c.admits(&cfg(), t + 4 * S));
    }

    #[test]
    fn half_open_after_period_admits_limited_probes_and_success_closes() {
        let (c, t) = (Circuit::default(), Instant::now());
        for _ in 0..3 {
            fail(&c, t);
        }
        let t1 = t + 5 * S;
        assert_eq!(c.state(&cfg(), t1), CircuitState::HalfOpen);
        let p1 = c.acquire(&cfg(), t1).unwrap();
        let p2 = c.acquire(&cfg(), t1).unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        assert!(c.acquire(&cfg(), t1).is_none(), "only 2 probes");
        assert!(!c.admits(&cfg(), t1));
        c.on_success(p1);
        assert_eq!(c.state(&cfg(), t1), CircuitState::Closed);
        drop(p2);
        assert!(c.acquire(&cfg(), t1).is_some_and(|p| !p.is_probe()));
    }

    #[test]
    fn failed_probe_reopens_with_doubled_period_up_to_max() {
        let (c, t) = (Circuit::default(), Instant::now());
        for _ in 0..3 {
            fail(&c, t);
        }
        // Open periods: 5 s, then 10 s, then 18 s (capped), then 18 s.
        let mut now = t;
        for period in [5, 10, 18, 18] {
            assert!(
                c.acquire(&cfg(), now + (period - 1) * S).is_none(),
                "still open at {period}-1 s"
            );
            now += period * S;
            let probe = c.acquire(&cfg(), now).expect("half-open probe");
            assert!(c.on_failure(&cfg(), probe, now));
        }
    }

    #[test]
    fn abandoned_probes_release_their_slots() {
        // Probes whose client disconnected or timed out are dropped without a
        // verdict: the slots come back, the breaker stays half-open, never wedged.
        let (c, t) = (Circuit::default(), Instant::now());
        for _ in 0..3 {
            fail(&c, t);
        }
        let t1 = t + 5 * S;
        for _ in 0..10 {
            let a = c.acquire(&cfg(), t1).unwrap();
            let b = c.acquire(&cfg(), t1).unwrap();
            assert!(c.acquire(&cfg(), t1).is_none());
            drop(a);
            drop(b);
            assert_eq!(c.probes_in_flight(), 0);
        }
        assert_eq!(c.state(&cfg(), t1), CircuitState::HalfOpen);
        c.on_success(c.acquire(&cfg(), t1).unwrap());
        assert_eq!(c.state(&cfg(), t1), CircuitState::Closed);
    }

    #[test]
    fn late_results_of_normal_requests_do_not_close_an_open_circuit() {
        let (c, t) = (Circuit::default(), Instant::now());
        let slow = c.acquire(&cfg(), t).unwrap();
        for _ in 0..3 {
            fail(&c, t);
        }
        // A request admitted while closed finishes well after the circuit opened.
        c.on_success(slow);
        assert_eq!(c.state(&cfg(), t + S), CircuitState::Open);
    }
}
