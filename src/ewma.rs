//! Lock-free peak-EWMA of upstream response time (Finagle's / linkerd's "peak EWMA").
//!
//! A sample above the current estimate replaces it at once (peak), so a backend
//! that turns slow is avoided on its very next response; samples below it are
//! blended in with weight `1 - exp(-Δt/τ)`. Reading decays the estimate toward
//! zero with the same τ, so a backend that stopped receiving traffic looks
//! cheaper over time and is probed again rather than starved forever.
//!
//! State is one `AtomicU64` packing the estimate (µs, u32) and the time of the
//! last sample (ms since a process epoch, u32, wrapping): updates are a CAS loop,
//! reads a single load, and no lock is ever taken. Time is passed in (`now`) so
//! the maths is testable without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock;

/// Decay constant τ. Five seconds: long enough to smooth jitter at tens of
/// requests per second, short enough that a recovered backend is retried within
/// seconds (its estimate halves every τ·ln 2 ≈ 3.5 s without samples).
pub const DECAY: Duration = Duration::from_secs(5);

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

fn decay_weight(elapsed_ms: f64) -> f64 {
    (-elapsed_ms / DECAY.as_millis() as f64).exp()
}

fn pack(us: f64, ms: u32) -> u64 {
    let us = us.clamp(0.0, u32::MAX as f64) as u32;
    ((us as u64) << 32) | ms as u64
}

fn unpack(v: u64) -> (f64, u32) {
    ((v >> 32) as f64, v as u32)
}

/// A peak-EWMA latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    state: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new(Instant::now())
    }
}

impl PeakEwma {
    /// An estimate of zero (no samples) as of `now`.
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            state: AtomicU64::new(pack(0.0, stamp(now))),
        }
    }

    /// Records one response time observed at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_us = rtt.as_secs_f64() * 1e6;
        let t = stamp(now);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let (cost, then) = unpack(old);
                let next = if rtt_us > cost {
                    rtt_us
                } else {
                    let w = decay_weight(elapsed_ms(t, then));
                    cost * w + rtt_us * (1.0 - w)
                };
                Some(pack(next, t))
            });
    }

    /// A lower bound on a latency (an attempt the client abandoned after
    /// `floor`): raises the estimate to it when higher, else changes nothing,
    /// so a backend that hangs never looks cheaper for being waited on.
    pub fn observe_floor(&self, floor: Duration, now: Instant) {
        if floor > self.get(now) {
            self.observe(floor, now);
        }
    }

    /// The estimate at `now`, decayed for the time since the last sample.
    pub fn get(&self, now: Instant) -> Duration {
        let (cost, then) = unpack(self.state.load(Ordering::Acquire));
        let us = cost * decay_weight(elapsed_ms(stamp(now), then));
        Duration::from_nanos((us * 1e3) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_at_zero_and_peaks_immediately() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0);
        assert_eq!(e.get(t0), Duration::ZERO);
        e.observe(100 * MS, t0);
        assert_eq!(e.get(t0).as_millis(), 100);
        // A single slow sample replaces a fast estimate at once.
        e.observe(10 * MS, t0);
        e.observe(500 * MS, t0);
        assert_eq!(e.get(t0).as_millis(), 500);
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
}
