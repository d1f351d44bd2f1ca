//! Lock-free peak-EWMA of upstream response time (Finagle's / linkerd's "peak EWMA")
//! plus a recent failure rate: the two numbers `least_time` ranks backends by.
//!
//! Latency: a sample above the current estimate replaces it at once (peak), so a
//! backend that turns slow is avoided on its very next response; samples below it
//! are blended in with weight `1 - exp(-Δt/τ)`. Reading decays the estimate toward
//! zero with the same τ, so a backend that stopped receiving traffic looks cheaper
//! over time and is probed again rather than starved forever. A backend with no
//! sample yet, or none for [`STALE`] (it was down, open or in maintenance), has no
//! estimate ([`PeakEwma::latency`] is `None`): `least_time` then uses its peers'.
//!
//! Failures (connect errors, timeouts, 5xx, 429) are not latency: they feed a
//! failure rate, an EWMA over attempts (each failure moves it halfway to 1, each
//! success halfway to 0) that also decays toward 0 without attempts
//! ([`FAILURE_DECAY`]). A failure holds the latency estimate where it is (or raises
//! it, if the failure took longer), so a backend failing fast never looks fast.
//!
//! Each number is one `AtomicU64` packing the value (latency in µs, or the rate in
//! 2⁻³² units; u32) and the time of the last sample (ms since a process epoch,
//! u32, wrapping): updates are CAS loops, reads single loads, and no lock is ever
//! taken. Time is passed in (`now`) so the maths is testable without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock;

/// Decay constant τ. Five seconds: long enough to smooth jitter at tens of
/// requests per second, short enough that a recovered backend is retried within
/// seconds (its estimate halves every τ·ln 2 ≈ 3.5 s without samples).
pub const DECAY: Duration = Duration::from_secs(5);

/// A latency estimate older than this says nothing about the backend now: one τ
/// (the estimate has decayed to 37 % of a number that was already out of date).
pub const STALE: Duration = DECAY;

/// Decay constant of the failure rate without attempts. A backend failing every
/// attempt is skipped with probability ≈ its rate, so it is tried again as the rate
/// decays: with rate `r` picks/s offered to it, it gets about `1/√(W·r·T)` of them
/// (`W` = [`FAILURE_WEIGHT`], `T` = this): 0.5 × 100/s × 60 s → 1 in 55.
pub const FAILURE_DECAY: Duration = Duration::from_secs(60);

/// How far one attempt moves the failure rate toward 1 (failure) or 0 (success).
/// An isolated failure then costs about 1.6 skipped picks in all (the rate halves
/// with every success that follows), so a backend failing a fraction `p` of
/// attempts loses about `1.6·p` of its share: proportional, not a time-out.
pub const FAILURE_WEIGHT: f64 = 0.5;

/// Stored value meaning "no latency sample yet".
const NONE: u32 = u32::MAX;

fn stamp(now: Instant) -> u32 {
    // Wraps after ~49 days; `elapsed_ms` uses wrapping arithmetic.
    clock::ms(now) as u32
}

fn elapsed_ms(now: u32, then: u32) -> f64 {
    let d = now.wrapping_sub(then);
    // A "negative" elapsed (a racing older `now`) counts as zero.
    if d > u32::MAX / 2 {
        0.0
    } else {
        d as f64
    }
}

fn decay_weight(elapsed_ms: f64, tau: Duration) -> f64 {
    (-elapsed_ms / tau.as_millis() as f64).exp()
}

fn pack(value: u32, ms: u32) -> u64 {
    ((value as u64) << 32) | ms as u64
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// µs as a stored latency (below the `NONE` marker).
fn to_us(us: f64) -> u32 {
    us.clamp(0.0, (NONE - 1) as f64) as u32
}

/// A failure rate in [0, 1] as a stored fraction of `u32::MAX`.
fn to_rate(r: f64) -> u32 {
    (r.clamp(0.0, 1.0) * u32::MAX as f64) as u32
}

fn from_rate(v: u32) -> f64 {
    v as f64 / u32::MAX as f64
}

/// A peak-EWMA latency estimate and a failure rate.
#[derive(Debug)]
pub struct PeakEwma {
    latency: AtomicU64,
    failures: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new(Instant::now())
    }
}

impl PeakEwma {
    /// No latency sample and a failure rate of 0, as of `now`.
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            latency: AtomicU64::new(pack(NONE, stamp(now))),
            failures: AtomicU64::new(pack(0, stamp(now))),
        }
    }

    /// Records one successful response time observed at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_us = rtt.as_secs_f64() * 1e6;
        let t = stamp(now);
        let _ = self
            .latency
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let (cost, then) = unpack(old);
                let next = if cost == NONE || rtt_us > cost as f64 {
                    rtt_us
                } else {
                    let w = decay_weight(elapsed_ms(t, then), DECAY);
                    cost as f64 * w + rtt_us * (1.0 - w)
                };
                Some(pack(to_us(next), t))
            });
        // The common case, a backend that has not failed lately: one load.
        if unpack(self.failures.load(Ordering::Acquire)).0 != 0 {
            self.blend_failure(0.0, t);
        }
    }

    /// Records a failed attempt (connect error, timeout, 5xx, 429) that ended after
    /// `took`: the failure rate rises, the latency estimate is held (raised to
    /// `took` if that is longer), never lowered by a fast failure.
    pub fn observe_failure(&self, took: Duration, now: Instant) {
        let took_us = to_us(took.as_secs_f64() * 1e6);
        let t = stamp(now);
        let _ = self
            .latency
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let (cost, _) = unpack(old);
                let held = if cost == NONE {
                    took_us
                } else {
                    cost.max(took_us)
                };
                Some(pack(held, t))
            });
        self.blend_failure(1.0, t);
    }

    fn blend_failure(&self, x: f64, t: u32) {
        let _ = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let (v, then) = unpack(old);
                let r = from_rate(v) * decay_weight(elapsed_ms(t, then), FAILURE_DECAY);
                Some(pack(to_rate(r + FAILURE_WEIGHT * (x - r)), t))
            });
    }

    /// A lower bound on a latency (an attempt the client abandoned after
    /// `floor`): raises the estimate to it when higher, else changes nothing,
    /// so a backend that hangs never looks cheaper for being waited on. Not an
    /// answer: the failure rate is left as it is.
    pub fn observe_floor(&self, floor: Duration, now: Instant) {
        let floor_us = floor.as_secs_f64() * 1e6;
        let t = stamp(now);
        let _ = self
            .latency
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let (cost, then) = unpack(old);
                let current = cost as f64 * decay_weight(elapsed_ms(t, then), DECAY);
                (cost == NONE || floor_us > current).then(|| pack(to_us(floor_us), t))
            });
    }

    /// The latency estimate at `now`, decayed for the time since the last sample;
    /// zero before the first sample (what the admin API and metrics show).
    pub fn get(&self, now: Instant) -> Duration {
        self.decayed(now).map_or(Duration::ZERO, |(d, _)| d)
    }

    /// The latency estimate at `now` if it means anything: `None` before the first
    /// sample and when the last one is older than [`STALE`].
    pub fn latency(&self, now: Instant) -> Option<Duration> {
        self.decayed(now)
            .filter(|(_, age_ms)| *age_ms <= STALE.as_millis() as f64)
            .map(|(d, _)| d)
    }

    fn decayed(&self, now: Instant) -> Option<(Duration, f64)> {
        let (cost, then) = unpack(self.latency.load(Ordering::Acquire));
        if cost == NONE {
            return None;
        }
        let age = elapsed_ms(stamp(now), then);
        let us = cost as f64 * decay_weight(age, DECAY);
        Some((Duration::from_nanos((us * 1e3) as u64), age))
    }

    /// The recent failure rate at `now`, in [0, 1].
    pub fn failure_rate(&self, now: Instant) -> f64 {
        let (v, then) = unpack(self.failures.load(Ordering::Acquire));
        from_rate(v) * decay_weight(elapsed_ms(stamp(now), then), FAILURE_DECAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_without_an_estimate_and_peaks_immediately() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        assert_eq!(e.get(t0), Duration::ZERO);
        assert_eq!(e.latency(t0), None);
        e.observe(100 * MS, t0);
        assert_eq!(e.get(t0).as_millis(), 100);
        assert_eq!(e.latency(t0), Some(100 * MS));
        // A single slow sample replaces a fast estimate at once.
        e.observe(10 * MS, t0);
        e.observe(500 * MS, t0);
        assert_eq!(e.get(t0).as_millis(), 500);
    }

    #[test]
    fn the_first_sample_is_taken_as_is() {
        // The first sample is the estimate, whatever the blend weight would be.
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(7 * MS, t0 + DECAY);
        assert_eq!(e.get(t0 + DECAY), 7 * MS);
    }

    #[test]
    fn a_floor_only_ever_raises_the_estimate() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(100 * MS, t0);
        e.observe_floor(20 * MS, t0);
        assert_eq!(
            e.get(t0).as_millis(),
            100,
            "a lower bound below the estimate says nothing"
        );
        e.observe_floor(2000 * MS, t0);
        assert_eq!(
            e.get(t0).as_millis(),
            2000,
            "a hang seen by an abandoning client counts"
        );
    }

    #[test]
    fn fast_samples_blend_in_by_elapsed_time() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(100 * MS, t0);
        // One τ later a 0 ms sample gets weight 1 - 1/e: 100 * e^-1 ≈ 36.8 ms.
        let t1 = t0 + DECAY;
        e.observe(Duration::ZERO, t1);
        let got = e.get(t1).as_secs_f64() * 1e3;
        assert!((got - 36.8).abs() < 0.5, "got {got}");
    }

    #[test]
    fn reading_decays_toward_zero_without_samples() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(1000 * MS, t0);
        let later = e.get(t0 + 2 * DECAY).as_secs_f64() * 1e3;
        // 1000 * e^-2 ≈ 135.3 ms
        assert!((later - 135.3).abs() < 1.0, "got {later}");
        // Reading does not change the stored state.
        assert_eq!(e.get(t0).as_millis(), 1000);
    }

    #[test]
    fn an_estimate_without_samples_for_stale_means_nothing() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(10 * MS, t0);
        assert!(e.latency(t0 + STALE).is_some());
        assert_eq!(e.latency(t0 + STALE + MS), None);
        // The displayed value still decays as before.
        assert!(e.get(t0 + STALE + MS) > Duration::ZERO);
        e.observe(10 * MS, t0 + 2 * STALE);
        assert!(e.latency(t0 + 2 * STALE).is_some());
    }

    #[test]
    fn failures_hold_latency_and_move_the_rate_halfway() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe(20 * MS, t0);
        // A fast failure neither lowers the estimate nor lets it decay.
        let t1 = t0 + DECAY;
        e.observe_failure(MS, t1);
        assert_eq!(e.get(t1), 20 * MS);
        assert!((e.failure_rate(t1) - 0.5).abs() < 1e-6);
        e.observe_failure(MS, t1);
        assert!((e.failure_rate(t1) - 0.75).abs() < 1e-6);
        // A slow failure (a timeout) raises it.
        e.observe_failure(300 * MS, t1);
        assert_eq!(e.get(t1), 300 * MS);
        // Each success halves the rate.
        e.observe(20 * MS, t1);
        assert!((e.failure_rate(t1) - 0.4375).abs() < 1e-6);
        // Without attempts the rate decays with FAILURE_DECAY: e^-1 after one.
        let r = e.failure_rate(t1 + FAILURE_DECAY);
        assert!((r - 0.4375 / std::f64::consts::E).abs() < 1e-3, "got {r}");
        // A latency floor (an abandoned attempt) is no answer: the rate stays.
        e.observe_floor(2000 * MS, t1);
        assert!((e.failure_rate(t1) - 0.4375).abs() < 1e-6);
    }

    #[test]
    fn a_failure_before_any_success_gives_the_latency_it_took() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        e.observe_failure(3 * MS, t0);
        assert_eq!(e.latency(t0), Some(3 * MS));
        assert!((e.failure_rate(t0) - 0.5).abs() < 1e-6);
    }
}
