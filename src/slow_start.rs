//! Slow start (HAProxy's `slowstart`, nginx Plus' `slow_start`, Envoy's
//! slow-start mode): a backend that comes back (health rise, a circuit
//! closing after it opened, leaving maintenance) or joins (DNS, the pool, a
//! reload) gets a share that grows linearly from 10 % to 100 % of its weight
//! over `balancer.slow_start`, so cold caches and empty connection pools are
//! not hit by a full share at once. A pure function of the time since the
//! event; the balancers see it through `balancer::Pool::weight`.

use std::time::Duration;

/// The share at the start of the ramp, in thousandths.
pub const FLOOR_MILLI: u32 = 100;

/// Weights are scaled by this while slow start is on, so a weight of 1 can
/// ramp in steps of 5 % (every backend's weight is scaled alike: the
/// proportions of those not ramping are unchanged).
pub const SCALE: u32 = 20;

/// The share, in thousandths (100..=1000), `elapsed` after the event, for a
/// `window` (zero: always 1000).
pub fn ratio_milli(elapsed: Duration, window: Duration) -> u32 {
    if window.is_zero() || elapsed >= window {
        return 1000;
    }
    let f = elapsed.as_secs_f64() / window.as_secs_f64();
    FLOOR_MILLI + ((1000 - FLOOR_MILLI) as f64 * f) as u32
}

/// `weight` as the balancer sees it at `ratio` (thousandths): scaled by
/// [`SCALE`], never below 1 while `weight` is above 0.
pub fn ramped(weight: u32, ratio: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    let w = u64::from(weight) * u64::from(SCALE) * u64::from(ratio) / 1000;
    (w as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_is_linear_from_10_to_100_percent() {
        let w = Duration::from_secs(30);
        let s = Duration::from_secs;
        assert_eq!(ratio_milli(s(0), w), 100);
        assert_eq!(ratio_milli(s(15), w), 550);
        assert_eq!(ratio_milli(Duration::from_millis(29_999), w), 999);
        assert_eq!(ratio_milli(s(30), w), 1000);
        assert_eq!(ratio_milli(s(3600), w), 1000);
        assert_eq!(ratio_milli(s(0), Duration::ZERO), 1000, "off");
        // Monotonic.
        let steps: Vec<u32> = (0..=30).map(|t| ratio_milli(s(t), w)).collect();
        assert!(steps.windows(2).all(|p| p[0] <= p[1]), "{steps:?}");
    }

    #[test]
    fn ramped_weights_keep_proportions_and_never_vanish() {
        assert_eq!(ramped(1, 1000), 20);
        assert_eq!(ramped(3, 1000), 60);
        assert_eq!(ramped(1, 100), 2, "10 % of a weight of 1");
        assert_eq!(ramped(1, 10), 1, "never below 1");
        assert_eq!(ramped(0, 1000), 0);
        assert_eq!(ramped(u32::MAX / 20, 1000), u32::MAX / 20 * 20);
    }
}
