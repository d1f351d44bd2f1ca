//! `least_time`: peak-EWMA response time × (in-flight + 1) / weight, lowest wins.
//!
//! Two refinements keep it fair (see [`crate::ewma`] for the numbers):
//! - A backend without a meaningful estimate (new, or back after [`STALE`] out of
//!   rotation) is costed at the median of its peers' estimates, not at 0: at 0 it
//!   would take nearly every new request until its first answer.
//! - Failures (connect errors, timeouts, 5xx, 429; the proxy's accounting) are a
//!   failure rate, not a latency: each pick skips a backend with probability equal
//!   to its rate. A backend failing 1 % of attempts loses about 1.6 % of its share;
//!   one failing every attempt is skipped nearly always and still retried now and
//!   then as its rate decays, so fast failures never attract traffic.
//!
//! The `+ FLOOR` keeps cost proportional to in-flight load when estimates are
//! near zero (fresh or idle backends).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{has, rotated, Balancer, Pool};
#[cfg(doc)]
use crate::ewma::STALE;

/// Added to every estimate so zero-latency estimates still weigh in-flight load.
const FLOOR: Duration = Duration::from_micros(100);

/// Lowest expected wait.
#[derive(Debug, Default)]
pub struct LeastTime {
    rotor: AtomicUsize,
}

/// A uniform number in [0, 1) for pick `turn` and backend `i` (splitmix64): the
/// skip decision needs a fair coin, not a cryptographic one, and no shared RNG.
fn coin(turn: usize, i: usize) -> f64 {
    let mut z = (turn as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64) << 32 | 0x632B_E59B);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The median latency of the available backends that have an estimate (0 if none).
fn peers_median(pool: &Pool<'_>, now: Instant) -> Duration {
    let mut known: Vec<Duration> = (0..pool.backends.len())
        .filter(|&j| has(pool.available, j))
        .filter_map(|j| pool.backends[j].stats.ewma.latency(now))
        .collect();
    if known.is_empty() {
        return Duration::ZERO;
    }
    known.sort_unstable();
    let m = known.len() / 2;
    if known.len() % 2 == 1 {
        known[m]
    } else {
        (known[m - 1] + known[m]) / 2
    }
}

impl Balancer for LeastTime {
    fn pick(&self, pool: &Pool<'_>, _key: &[u8], now: Instant) -> Option<usize> {
        let n = pool.backends.len();
        let turn = self.rotor.fetch_add(1, Ordering::Relaxed);
        let mut seed = None; // the peers' median, computed at most once per pick
                             // Best among backends not skipped for failures, and best of all (used
                             // only when every candidate was skipped).
        let mut best: Option<(usize, f64)> = None;
        let mut best_any: Option<(usize, f64)> = None;
        for i in rotated(pool, turn % n.max(1)) {
            let s = &pool.backends[i].stats;
            let latency = s
                .ewma
                .latency(now)
                .unwrap_or_else(|| *seed.get_or_insert_with(|| peers_median(pool, now)));
            let load = s.in_flight().max(0) as f64 + 1.0;
            let cost = (latency + FLOOR).as_secs_f64() * load / pool.weight(i) as f64;
            if best_any.is_none_or(|(_, c)| cost < c) {
                best_any = Some((i, cost));
            }
            let skipped = coin(turn, i) < s.ewma.failure_rate(now);
            if !skipped && best.is_none_or(|(_, c)| cost < c) {
                best = Some((i, cost));
            }
        }
        best.or(best_any).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::testing::{backends, pool};
    use super::*;
    use crate::config::Algorithm;
    use crate::ewma::STALE;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn in_flight_and_weight_scale_cost() {
        let now = Instant::now();
        let bs = backends(&[1, 1]);
        bs[0].stats.ewma.observe(10 * MS, now);
        bs[1].stats.ewma.observe(25 * MS, now);
        let p = pool(&bs, Algorithm::LeastTime);
        let sel = LeastTime::default();
        assert_eq!(sel.pick(&p, b"", now), Some(0));
        // 10 ms × 3 = 30 > 25 ms × 1.
        bs[0].stats.in_flight.store(2, Ordering::Relaxed);
        assert_eq!(sel.pick(&p, b"", now), Some(1));
        // Weight 4 on b0: 30 / 4 = 7.5 < 25.
        let bs2 = backends(&[4, 1]);
        bs2[0].stats.ewma.observe(10 * MS, now);
        bs2[0].stats.in_flight.store(2, Ordering::Relaxed);
        bs2[1].stats.ewma.observe(25 * MS, now);
        assert_eq!(
            sel.pick(&pool(&bs2, Algorithm::LeastTime), b"", now),
            Some(0)
        );
    }

    /// Picks `k` requests that do not finish (in-flight grows); picks per backend.
    fn burst(bs: &[crate::backend::Backend], k: usize, now: Instant) -> Vec<usize> {
        let p = pool(bs, Algorithm::LeastTime);
        let sel = LeastTime::default();
        let mut got = vec![0; bs.len()];
        for _ in 0..k {
            let i = sel.pick(&p, b"", now).unwrap();
            bs[i].stats.in_flight.fetch_add(1, Ordering::Relaxed);
            got[i] += 1;
        }
        got
    }

    #[test]
    fn a_new_backend_starts_at_its_peers_median() {
        let now = Instant::now();
        let bs = backends(&[1, 1, 1, 1]);
        for b in &bs[..3] {
            b.stats.ewma.observe(10 * MS, now);
        }
        // b3 has no sample. Costed at 0 it would take 100 of the first 101
        // requests ((0.1 ms) × 101 ≈ 10.1 ms × 1); at the median it is a peer
        // like the others and the burst splits exactly 25 each.
        assert_eq!(burst(&bs, 100, now), vec![25, 25, 25, 25]);
    }

    #[test]
    fn a_returning_backend_starts_at_its_peers_median() {
        let t0 = Instant::now();
        let bs = backends(&[1, 1, 1]);
        for b in &bs {
            b.stats.ewma.observe(20 * MS, t0);
        }
        // b2 is out of rotation (down, open, maintenance) for 30 s and gets no
        // sample; its peers keep answering in 20 ms. Its decayed 20 ms × e^-6 =
        // 0.05 ms would win ~all of a burst; stale, it is costed at 20 ms.
        let back = t0 + Duration::from_secs(30);
        for b in &bs[..2] {
            b.stats.ewma.observe(20 * MS, back);
        }
        assert!(back - t0 > STALE);
        assert_eq!(burst(&bs, 99, back), vec![33, 33, 33]);
    }

    #[test]
    fn the_median_ignores_unavailable_and_unknown_backends() {
        let now = Instant::now();
        let bs = backends(&[1, 1, 1, 1, 0]);
        bs[0].stats.ewma.observe(10 * MS, now);
        bs[1].stats.ewma.observe(30 * MS, now);
        bs[2].stats.ewma.observe(40 * MS, now);
        // b4 has weight 0 (not available): its 1 ms does not count.
        bs[4].stats.ewma.observe(MS, now);
        let p = pool(&bs, Algorithm::LeastTime);
        assert_eq!(peers_median(&p, now), 30 * MS);
        bs[3].stats.ewma.observe(50 * MS, now);
        assert_eq!(peers_median(&p, now), 35 * MS);
    }

    #[test]
    fn a_backend_failing_every_attempt_is_skipped() {
        let now = Instant::now();
        let bs = backends(&[1, 1]);
        // b0 answers 500 in 2 ms, b1 succeeds in 40 ms.
        for _ in 0..20 {
            bs[0].stats.ewma.observe_failure(2 * MS, now);
        }
        bs[1].stats.ewma.observe(40 * MS, now);
        let p = pool(&bs, Algorithm::LeastTime);
        let sel = LeastTime::default();
        // Its rate is 1 - 2^-20: skipped on every one of these picks.
        for _ in 0..1000 {
            assert_eq!(sel.pick(&p, b"", now), Some(1));
        }
        // When every candidate fails, the cheapest is still used.
        let only = backends(&[1]);
        only[0].stats.ewma.observe_failure(2 * MS, now);
        for _ in 0..10 {
            assert_eq!(
                sel.pick(&pool(&only, Algorithm::LeastTime), b"", now),
                Some(0)
            );
        }
    }

    #[test]
    fn coins_are_fair() {
        // 100,000 coins: the mean of U(0,1) has σ = 1/√(12·n) ≈ 0.0009; allow 5σ.
        let n = 100_000;
        let mean = (0..n).map(|t| coin(t, t % 7)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.0045, "mean {mean}");
        let below = (0..n).filter(|&t| coin(t, 3) < 0.01).count();
        // Binomial(100,000, 0.01): mean 1000, σ ≈ 31.5; allow 5σ.
        assert!((below as i64 - 1000).abs() < 158, "{below}");
    }
}

#[cfg(test)]
mod simulation;
