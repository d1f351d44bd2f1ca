//! `dynamic`: the performance factor behind effective weights.
//!
//! Every `dynamic.interval` the background task ([`crate::reweigh`]) measures each
//! backend over the interval and [`next_factor`] moves its factor (thousandths;
//! effective weight = operator weight × factor, see
//! [`crate::backend::Backend::effective_weight`], never below 1 while the operator
//! weight is above 0). Selection is smooth WRR over those weights. Two different
//! things lower a factor:
//!
//! - **Slow**: the backend answers slower than the others even with nothing
//!   queued. Its target is fastest baseline ÷ own baseline × (1 − error rate)²,
//!   where a baseline is the mean latency over intervals in which the backend
//!   completed what it was sent (so no queue was building), so a backend twice as
//!   slow drifts to half its weight and one failing half its requests to a quarter.
//! - **Full**: it is sent more than it completes. A backend of fixed capacity (a
//!   worker pool) answers as fast as ever below its capacity and queues above it,
//!   so latency cannot say where the limit is; a rule steering by latency alone
//!   climbs back to full weight whenever the queue is gone, overloads the backend
//!   again, and keeps cutting while the queue drains (its latency lags by the
//!   queue's length): it swung a half-size app between 2 and 7 of 10 every few
//!   seconds. Instead, while a backend's answers are queued (mean latency above
//!   [`QUEUED`] × its baseline), its factor goes to the share it completed —
//!   factor × completed ÷ arrived — less what drains its backlog within
//!   [`DRAIN`] intervals. Arrivals then match what it can do and the queue stops
//!   growing at once. The factor at which it fell behind (its knee) is
//!   remembered: once the queue is gone the factor returns to [`BELOW_KNEE`] of
//!   it, holds there [`PLATEAU`] intervals, then probes upward in steps doubling
//!   from [`PROBE`], so a backend given more capacity regains its weight, and one
//!   that was not falls behind again for an interval, by one step.
//!
//! Factors are relative: the targets are scaled so the largest among the backends
//! measured is 1, so an overload of every backend at once cannot push them all
//! to the floor. Every factor moves at most [`MAX_STEP`] per interval. A backend
//! with no traffic in the interval keeps its factor and its memory: nothing was
//! learned (bursty or idle traffic must not undo what busy intervals measured).

use std::time::Duration;

/// Largest change of a factor per interval (in thousandths): 0.25, so a
/// backend goes from full weight to the floor in four intervals, and one noisy
/// interval cannot swing traffic by more than a quarter of its weight.
pub const MAX_STEP: u32 = 250;

/// Smallest factor (thousandths): 0.05 keeps a trickle of requests flowing to a
/// slow backend so its recovery is noticed.
const MIN_FACTOR: u32 = 50;

/// Answers are queued when their mean latency exceeds the baseline by this
/// factor: half a service time of waiting on average, well above the noise of
/// a backend running near (but below) its capacity.
pub const QUEUED: f64 = 1.5;

/// A backlog found queued is to drain within this many intervals.
pub const DRAIN: f64 = 2.0;

/// After falling behind, a factor comes back to this share of its knee...
pub const BELOW_KNEE: f64 = 0.9;

/// ...and stays there this many intervals before probing above it.
pub const PLATEAU: u32 = 8;

/// First probing step above the knee (thousandths); each further one doubles,
/// up to [`MAX_STEP`].
pub const PROBE: u32 = 20;

/// How much a baseline may rise per interval (0.15: it doubles in five), so a
/// backend that became slower for good is seen as slow, not as queued, soon.
const DRIFT: f64 = 0.15;

/// What one backend did during the last interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicInput {
    /// Completed attempts in the interval.
    pub requests: u64,
    /// Failed attempts among them.
    pub errors: u64,
    /// Mean upstream response time of the answered ones, seconds (ignored if
    /// none was answered).
    pub mean_latency: f64,
    /// Attempts started in the interval: completed ones plus the growth of the
    /// in-flight count (fewer than completed while a backlog drains).
    pub arrived: u64,
    /// Attempts in flight at the end of the interval.
    pub in_flight: u64,
    /// Current factor, thousandths.
    pub factor: u32,
}

impl DynamicInput {
    /// Arrivals and completions within noise (2 requests, or 2 %) of each other:
    /// no backlog building or draining.
    fn steady(&self) -> bool {
        self.arrived.abs_diff(self.requests) <= self.noise()
    }

    /// Falling behind: sent clearly more than it completed.
    fn behind(&self) -> bool {
        self.arrived > self.requests + self.noise()
    }

    fn noise(&self) -> u64 {
        (self.requests / 50).max(2)
    }

    fn answered(&self) -> bool {
        self.requests > self.errors && self.mean_latency > 0.0
    }
}

/// What the rule remembers about one backend between intervals (the task keeps
/// one per backend; a new backend starts from `default()`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DynamicMemory {
    /// Mean latency with nothing queued, seconds (0: not known yet).
    baseline: f64,
    /// The factor at which it last fell behind (0: never).
    knee: u32,
    /// Intervals held at [`BELOW_KNEE`] since.
    held: u32,
    /// Next probing step above it.
    probe: u32,
}

/// New factors (thousandths) for every backend, one bounded step from the
/// current ones; `memory` (one per input, same order) is updated. `interval` is
/// the time the inputs were measured over.
pub fn next_factor(
    inputs: &[DynamicInput],
    memory: &mut [DynamicMemory],
    interval: Duration,
) -> Vec<u32> {
    assert_eq!(inputs.len(), memory.len(), "one memory per backend");
    for (b, m) in inputs.iter().zip(memory.iter_mut()) {
        if b.answered() && b.steady() {
            m.baseline = if m.baseline > 0.0 {
                b.mean_latency.min(m.baseline * (1.0 + DRIFT))
            } else {
                b.mean_latency
            };
        }
    }
    let answered = || {
        inputs
            .iter()
            .zip(memory.iter())
            .filter(|(b, _)| b.answered())
    };
    let fastest = answered()
        .map(|(b, _)| b.mean_latency)
        .fold(f64::INFINITY, f64::min);
    let fastest_base = answered()
        .filter(|(_, m)| m.baseline > 0.0)
        .map(|(_, m)| m.baseline)
        .fold(fastest, f64::min);
    let targets: Vec<Option<f64>> = inputs
        .iter()
        .zip(memory.iter_mut())
        .map(|(b, m)| {
            let base = if m.baseline > 0.0 {
                m.baseline
            } else {
                fastest
            };
            (b.requests > 0).then(|| target(b, m, base, fastest_base, interval))
        })
        .collect();
    // Relative weights: the best measured backend gets its full weight.
    let top = targets.iter().flatten().fold(0.0f64, |a, &t| a.max(t));
    let scale = if top > 0.0 && top < 1000.0 {
        1000.0 / top
    } else {
        1.0
    };
    inputs
        .iter()
        .zip(targets)
        .map(|(b, t)| {
            let Some(t) = t else {
                return b.factor;
            };
            let t = ((t * scale).round() as u32).clamp(MIN_FACTOR, 1000);
            if t > b.factor {
                b.factor + (t - b.factor).min(MAX_STEP)
            } else {
                b.factor - (b.factor - t).min(MAX_STEP)
            }
        })
        .collect()
}

/// One backend's target factor (unscaled, unclamped). `base` is its baseline
/// (or the fastest mean while unknown), `fastest_base` the lowest baseline.
fn target(
    b: &DynamicInput,
    m: &mut DynamicMemory,
    base: f64,
    fastest_base: f64,
    interval: Duration,
) -> f64 {
    let f = f64::from(b.factor);
    let speed = if base > 0.0 && fastest_base.is_finite() {
        (fastest_base / base).min(1.0)
    } else {
        1.0
    };
    let ok = 1.0 - b.errors as f64 / b.requests as f64;
    let slow_target = 1000.0 * speed * ok * ok;
    let queued = base > 0.0 && b.answered() && b.mean_latency > QUEUED * base;
    if queued {
        if b.behind() {
            m.knee = (f * b.requests as f64 / b.arrived as f64).round() as u32;
            m.held = 0;
            m.probe = PROBE;
        }
        // Requests beyond those its answer time accounts for (Little's law).
        let rate = b.requests as f64 / interval.as_secs_f64().max(1e-3);
        let backlog = (b.in_flight as f64 - rate * base).max(0.0);
        let want = (b.requests as f64 - backlog / DRAIN).max(b.requests as f64 / 2.0);
        let full = if b.arrived as f64 > want {
            f * want / b.arrived as f64
        } else {
            f // draining fast enough already: hold
        };
        return full.min(slow_target);
    }
    if slow_target <= f || m.knee == 0 {
        return slow_target;
    }
    let below = f64::from(m.knee) * BELOW_KNEE;
    if f < below.round() {
        slow_target.min(below)
    } else if m.held < PLATEAU {
        m.held += 1;
        f
    } else {
        let step = m.probe.max(PROBE);
        m.probe = (step * 2).min(MAX_STEP);
        slow_target.min(f + f64::from(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A backend that completed what it was sent: `requests` in the interval,
    /// answered in `ms` on average, with `errors` failures.
    fn input(requests: u64, errors: u64, ms: f64, factor: u32) -> DynamicInput {
        DynamicInput {
            requests,
            errors,
            mean_latency: ms / 1e3,
            arrived: requests,
            in_flight: (requests as f64 * ms / 1e3).round() as u64,
            factor,
        }
    }

    /// Runs `rounds` intervals with fixed behaviour, returning the factor history.
    fn run(
        mut f: Vec<u32>,
        rounds: usize,
        behave: impl Fn(&[u32]) -> Vec<DynamicInput>,
    ) -> Vec<Vec<u32>> {
        let mut memory = vec![DynamicMemory::default(); f.len()];
        let mut history = vec![f.clone()];
        for _ in 0..rounds {
            let next = next_factor(&behave(&f), &mut memory, SECOND);
            for (a, b) in f.iter().zip(&next) {
                assert!(a.abs_diff(*b) <= MAX_STEP, "step {a} -> {b} exceeds bound");
            }
            f = next;
            history.push(f.clone());
        }
        history
    }

    #[test]
    fn slow_backend_loses_weight_in_bounded_steps_then_recovers() {
        // b1 is 10x slower than b0 and b2: its target is 0.1.
        let slow = |f: &[u32]| {
            vec![
                input(100, 0, 5.0, f[0]),
                input(100, 0, 50.0, f[1]),
                input(100, 0, 5.0, f[2]),
            ]
        };
        let h = run(vec![1000; 3], 6, slow);
        let b1: Vec<u32> = h.iter().map(|f| f[1]).collect();
        assert_eq!(b1, vec![1000, 750, 500, 250, 100, 100, 100]);
        // The fast ones keep full weight.
        assert!(h.iter().all(|f| f[0] == 1000 && f[2] == 1000));
        // It recovers: same latency as the others → back to 1000 in bounded steps
        // (a fresh memory: the baseline falls at once, it never rises faster
        // than DRIFT).
        let fast = |f: &[u32]| {
            vec![
                input(100, 0, 5.0, f[0]),
                input(100, 0, 5.0, f[1]),
                input(100, 0, 5.0, f[2]),
            ]
        };
        let h = run(h.last().unwrap().clone(), 5, fast);
        let b1: Vec<u32> = h.iter().map(|f| f[1]).collect();
        assert_eq!(b1, vec![100, 350, 600, 850, 1000, 1000]);
    }

    #[test]
    fn a_slower_baseline_is_learned_within_bounded_drift() {
        // b1 becomes 2x slower for good (no queue: it completes what it gets).
        let mut memory = vec![DynamicMemory::default(); 2];
        let mut f = vec![1000, 1000];
        for _ in 0..3 {
            f = next_factor(
                &[input(100, 0, 5.0, f[0]), input(100, 0, 5.0, f[1])],
                &mut memory,
                SECOND,
            );
        }
        assert_eq!(f, vec![1000, 1000]);
        let mut b1 = Vec::new();
        for _ in 0..8 {
            f = next_factor(
                &[input(100, 0, 5.0, f[0]), input(100, 0, 10.0, f[1])],
                &mut memory,
                SECOND,
            );
            b1.push(f[1]);
        }
        // It is never behind, so no knee: the factor follows fastest ÷ own
        // baseline, which climbs at most 15 % per interval (5 → 5.75 → 6.61 →
        // 7.60 → 8.75 → 10 ms): 870, 756, 658, 572, then 500 for good.
        assert_eq!(b1, vec![870, 756, 658, 572, 500, 500, 500, 500]);
    }

    #[test]
    fn erroring_backend_loses_weight_and_never_drops_below_floor() {
        // b1 as fast as b0 but every request fails.
        let failing = |f: &[u32]| vec![input(100, 0, 5.0, f[0]), input(100, 100, 1.0, f[1])];
        let h = run(vec![1000, 1000], 8, failing);
        assert_eq!(h.last().unwrap(), &vec![1000, MIN_FACTOR]);
        // Half failing: target (0.5)² = 0.25.
        let half = |f: &[u32]| vec![input(100, 0, 5.0, f[0]), input(100, 50, 5.0, f[1])];
        let h = run(vec![1000, 1000], 5, half);
        assert_eq!(h.last().unwrap(), &vec![1000, 250]);
    }

    #[test]
    fn idle_intervals_hold_the_factor() {
        // No requests to b1 (or to anyone): nothing measured, nothing changes.
        let idle = |f: &[u32]| vec![input(100, 0, 5.0, f[0]), input(0, 0, 0.0, f[1])];
        let h = run(vec![1000, 100], 4, idle);
        assert!(h.iter().all(|f| f[1] == 100), "{h:?}");
        let all_idle = |f: &[u32]| vec![input(0, 0, 0.0, f[0]), input(0, 0, 0.0, f[1])];
        let h = run(vec![400, 100], 3, all_idle);
        assert!(h.iter().all(|f| f == &vec![400, 100]), "{h:?}");
    }

    #[test]
    fn factors_are_relative_to_the_best_measured() {
        // Both held low by earlier intervals, both now as fast: the better one
        // is scaled to full weight, the other keeps its ratio to it.
        let both = |f: &[u32]| vec![input(100, 0, 5.0, f[0]), input(100, 50, 5.0, f[1])];
        let h = run(vec![500, 500], 6, both);
        assert_eq!(h.last().unwrap(), &vec![1000, 250]);
    }

    #[test]
    fn effective_weight_never_below_one() {
        use crate::balancer::testing::backends;
        use crate::config::Algorithm;
        use std::sync::atomic::Ordering;
        let bs = backends(&[3, 1000, 0]);
        for b in &bs {
            b.stats.factor_milli.store(MIN_FACTOR, Ordering::Relaxed);
        }
        assert_eq!(bs[0].effective_weight(Algorithm::Dynamic), 1);
        assert_eq!(bs[1].effective_weight(Algorithm::Dynamic), 50);
        assert_eq!(bs[2].effective_weight(Algorithm::Dynamic), 0);
        // Other algorithms use the operator weight.
        assert_eq!(bs[1].effective_weight(Algorithm::RoundRobin), 1000);
    }
}

#[cfg(test)]
mod simulation;
