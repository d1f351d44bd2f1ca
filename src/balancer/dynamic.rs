//! `dynamic`: the performance factor behind effective weights.
//!
//! Every `dynamic.interval` a background task (`crate::reweigh`) measures each backend
//! over the interval (mean upstream response time, error rate) and moves its
//! factor toward a target in bounded steps; effective weight = operator weight ×
//! factor (see [`crate::backend::Backend::effective_weight`]), never below 1 while the
//! operator weight is above 0, and selection is smooth WRR over those weights.
//!
//! target = clamp(fastest mean / own mean, MIN_FACTOR, 1) × (1 − error rate)²,
//! so a backend twice as slow as the fastest drifts to half its weight and one
//! failing half its requests to a quarter. A backend with no traffic in the
//! interval keeps its factor: nothing was learned (bursty or idle traffic must
//! not undo what busy intervals measured). A demoted backend keeps an effective
//! weight of at least 1, so it still gets requests and regains weight when they
//! show it has recovered.

/// Largest change of a factor per interval (in thousandths): 0.25, so a
/// backend goes from full weight to the floor in four intervals, and one noisy
/// interval cannot swing traffic by more than a quarter of its weight.
pub const MAX_STEP: u32 = 250;

/// Smallest factor (thousandths): 0.05 keeps a trickle of requests flowing to a
/// slow backend so its recovery is noticed.
const MIN_FACTOR: u32 = 50;

/// What one backend did during the last interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicInput {
    /// Completed attempts in the interval.
    pub requests: u64,
    /// Failed attempts among them.
    pub errors: u64,
    /// Mean upstream response time over the interval, seconds (ignored if no requests).
    pub mean_latency: f64,
    /// Current factor, thousandths.
    pub factor: u32,
}

/// New factors (thousandths) for every backend, one bounded step from the current.
pub fn next_factor(inputs: &[DynamicInput]) -> Vec<u32> {
    let fastest = inputs
        .iter()
        .filter(|b| b.requests > b.errors)
        .map(|b| b.mean_latency)
        .fold(f64::INFINITY, f64::min);
    inputs
        .iter()
        .map(|b| {
            if b.requests == 0 {
                return b.factor;
            }
            let target = {
                let speed = if b.mean_latency > 0.0 && fastest.is_finite() {
                    (fastest / b.mean_latency).min(1.0)
                } else {
                    1.0
                };
                let ok = 1.0 - b.errors as f64 / b.requests as f64;
                1000.0 * speed * ok * ok
            };
            let target = (target.round() as u32).clamp(MIN_FACTOR, 1000);
            if target > b.factor {
                b.factor + (target - b.factor).min(MAX_STEP)
            } else {
                b.factor - (b.factor - target).min(MAX_STEP)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(requests: u64, errors: u64, ms: f64, factor: u32) -> DynamicInput {
        DynamicInput {
            requests,
            errors,
            mean_latency: ms / 1e3,
            factor,
        }
    }

    /// Runs `rounds` intervals with fixed behaviour, returning the factor history of b1.
    fn run(
        mut f: Vec<u32>,
        rounds: usize,
        behave: impl Fn(&[u32]) -> Vec<DynamicInput>,
    ) -> Vec<Vec<u32>> {
        let mut history = vec![f.clone()];
        for _ in 0..rounds {
            let next = next_factor(&behave(&f));
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
        // It recovers: same latency as the others → back to 1000 in bounded steps.
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
