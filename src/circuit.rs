//! Per-backend circuit breaker, lock-free, time passed in (`now`).
//!
//! closed → open after `failures` consecutive failures (connect error, timeout,
//! 5xx); open → half-open once `open_for` has passed (doubled on every re-open,
//! capped at `max_open_for`); half-open admits `half_open_requests` probes. A
//! probe's success closes the circuit, its failure re-opens it. Probe slots are
//! held by a [`Permit`] whose `Drop` releases the slot, so a probe that times out
//! or whose client disconnects can never wedge the breaker half-open.
//!
//! Everything lives in one `AtomicU64`, so every transition is a single CAS:
//! 2 bits of state, 6 bits of re-open count, 10 bits of probes in flight and 46
//! bits of "opened at" (ms since the process clock's epoch). A half-open period
//! is identified by (re-opens, opened at): a probe permit remembers the period
//! it was issued in and only ever acts on that period, so a slow probe from an
//! earlier period can neither close a re-opened circuit nor hold a slot of a
//! later one.

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
const PROBE: u64 = 1 << 8;
const PROBE_MASK: u64 = 0x3ff << 8;

/// The packed state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn new(state: u64, reopens: u64, at_ms: u64) -> Word {
        Word(state | (reopens.min(63) << 2) | ((at_ms & ((1 << 46) - 1)) << 18))
    }
    fn state(self) -> u64 {
        self.0 & 3
    }
    fn reopens(self) -> u64 {
        (self.0 >> 2) & 63
    }
    fn probes(self) -> u32 {
        ((self.0 & PROBE_MASK) >> 8) as u32
    }
    fn at(self) -> u64 {
        self.0 >> 18
    }
    /// The period this word belongs to: state, re-opens and opened-at (no probes).
    fn period(self) -> u64 {
        self.0 & !PROBE_MASK
    }
}

fn open_period(cfg: &CircuitConfig, reopens: u64) -> Duration {
    let factor = 1u32 << reopens.min(20);
    cfg.open_for.saturating_mul(factor).min(cfg.max_open_for)
}

/// A backend's breaker.
#[derive(Debug, Default)]
pub struct Circuit {
    word: Arc<AtomicU64>,
    consecutive_failures: AtomicU32,
}

/// Permission to send one request; hand it back via [`Circuit::on_success`] or
/// [`Circuit::on_failure`]. Dropping a probe permit frees its slot.
#[derive(Debug)]
pub struct Permit {
    /// For a probe: the breaker's word and the half-open period it belongs to.
    probe: Option<(Arc<AtomicU64>, u64)>,
}

impl Permit {
    /// Is this a half-open probe?
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

/// Applies `f` to the word while it is still in half-open period `period`;
/// returns whether `f`'s change was stored.
fn in_period(word: &AtomicU64, period: u64, f: impl Fn(Word) -> Word) -> bool {
    word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
        let w = Word(w);
        (w.period() == period).then(|| f(w).0)
    })
    .is_ok()
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((word, period)) = self.probe.take() {
            // Only this period's count; a later period started from zero.
            in_period(&word, period, |w| Word(w.0 - PROBE));
        }
    }
}

impl Circuit {
    fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    fn reopen_due(cfg: &CircuitConfig, w: Word, now: Instant) -> bool {
        clock::ms(now) >= w.at() + open_period(cfg, w.reopens()).as_millis() as u64
    }

    /// The state at `now` (an open circuit whose period has passed reads as
    /// half-open; the transition itself happens on the next [`Self::acquire`]).
    pub fn state(&self, cfg: &CircuitConfig, now: Instant) -> CircuitState {
        let w = self.load();
        match w.state() {
            CLOSED => CircuitState::Closed,
            OPEN if Self::reopen_due(cfg, w, now) => CircuitState::HalfOpen,
            OPEN => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// Does the breaker keep the backend out at `now`? True only while open;
    /// a half-open backend stays schedulable and each request asks
    /// [`Self::acquire`] for one of the probe slots.
    pub fn blocks(&self, cfg: &CircuitConfig, now: Instant) -> bool {
        self.state(cfg, now) == CircuitState::Open
    }

    /// Asks to send one request at `now`.
    pub fn acquire(&self, cfg: &CircuitConfig, now: Instant) -> Option<Permit> {
        loop {
            let w = self.load();
            let next = match w.state() {
                CLOSED => return Some(Permit { probe: None }),
                OPEN if !Self::reopen_due(cfg, w, now) => return None,
                // Open period over: half-open in the same period identity.
                OPEN => Word::new(HALF_OPEN, w.reopens(), w.at()),
                _ if w.probes() >= cfg.half_open_requests => return None,
                _ => Word(w.0 + PROBE),
            };
            if self
                .word
                .compare_exchange(w.0, next.0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                && next.state() == HALF_OPEN
                && next.probes() > w.probes()
            {
                return Some(Permit {
                    probe: Some((self.word.clone(), next.period())),
                });
            }
            // Lost a race or just moved open → half-open: look again.
        }
    }

    /// The request sent under `permit` succeeded.
    pub fn on_success(&self, mut permit: Permit) -> bool {
        match permit.probe.take() {
            // A probe closes the circuit, if its period is still current.
            Some((word, period)) => {
                let closed = in_period(&word, period, |_| Word::new(CLOSED, 0, 0));
                if closed {
                    self.consecutive_failures.store(0, Ordering::Release);
                }
                closed
            }
            None => {
                self.consecutive_failures.store(0, Ordering::Release);
                false
            }
        }
    }

    /// The request sent under `permit` failed at `now`. Returns true if this
    /// failure opened (or re-opened) the circuit.
    pub fn on_failure(&self, cfg: &CircuitConfig, mut permit: Permit, now: Instant) -> bool {
        if let Some((word, period)) = permit.probe.take() {
            // A failed probe re-opens with a doubled period, if still current.
            return in_period(&word, period, |w| {
                Word::new(OPEN, w.reopens() + 1, clock::ms(now))
            });
        }
        let w = self.load();
        if w.state() != CLOSED {
            return false; // admitted while closed, finished after it opened
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= cfg.failures
            && self
                .word
                .compare_exchange(
                    w.0,
                    Word::new(OPEN, 0, clock::ms(now)).0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.consecutive_failures.store(0, Ordering::Release);
            return true;
        }
        false
    }

    /// Probe slots currently held.
    pub fn probes_in_flight(&self) -> u32 {
        self.load().probes()
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
        assert!(c.blocks(&cfg(), t + 4 * S));
        assert!(!c.blocks(&cfg(), t + 5 * S), "half-open does not block");
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
        assert_eq!(c.probes_in_flight(), 2);
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

    #[test]
    fn a_probe_from_an_earlier_period_cannot_close_or_hold_a_later_one() {
        let (c, t) = (Circuit::default(), Instant::now());
        for _ in 0..3 {
            fail(&c, t);
        }
        let t1 = t + 5 * S;
        let slow = c.acquire(&cfg(), t1).unwrap();
        let quick = c.acquire(&cfg(), t1).unwrap();
        // The quick probe fails: re-open for 10 s.
        assert!(c.on_failure(&cfg(), quick, t1));
        let t2 = t1 + 10 * S;
        assert_eq!(c.state(&cfg(), t2), CircuitState::HalfOpen);
        // The new period has both slots, although `slow` is still out.
        let p1 = c.acquire(&cfg(), t2).unwrap();
        let p2 = c.acquire(&cfg(), t2).unwrap();
        assert!(c.acquire(&cfg(), t2).is_none());
        // The slow probe of the old period succeeds late: no effect at all.
        c.on_success(slow);
        assert_eq!(c.state(&cfg(), t2), CircuitState::HalfOpen);
        assert_eq!(c.probes_in_flight(), 2);
        drop(p1);
        assert_eq!(c.probes_in_flight(), 1);
        c.on_success(p2);
        assert_eq!(c.state(&cfg(), t2), CircuitState::Closed);
    }

    #[test]
    fn concurrent_probes_never_exceed_the_limit_nor_leak() {
        let c = Arc::new(Circuit::default());
        let t = Instant::now();
        for _ in 0..3 {
            fail(&c, t);
        }
        let t1 = t + 5 * S;
        let max_seen = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, max_seen) = (c.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Some(p) = c.acquire(&cfg(), t1) {
                            max_seen.fetch_max(c.probes_in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(max_seen.load(Ordering::Relaxed) <= 2);
        assert_eq!(c.probes_in_flight(), 0);
        assert_eq!(c.state(&cfg(), t1), CircuitState::HalfOpen);
    }
}
