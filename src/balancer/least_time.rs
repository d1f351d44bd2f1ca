//! `least_time`: peak-EWMA response time × (in-flight + 1) / weight.
//!
//! Connect errors, timeouts, 5xx and 429 are recorded as [`FAILURE_PENALTY`]
//! (see the proxy's accounting), so a backend that fails fast looks slow and never
//! attracts traffic. The `+ FLOOR` keeps cost proportional to in-flight load
//! when estimates are near zero (fresh or idle backends).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{rotated, Balancer, Pool};

/// Latency recorded for a failed attempt. One second is far above a healthy
/// response on one server, so an erroring backend ranks below any healthy one
/// and decays back (τ = 5 s) to be probed again within tens of seconds.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Added to every estimate so zero-latency estimates still weigh in-flight load.
const FLOOR: Duration = Duration::from_micros(100);

/// Lowest expected wait.
#[derive(Debug, Default)]
pub struct LeastTime {
    rotor: AtomicUsize,
}

impl Balancer for LeastTime {
    fn pick(&self, pool: &Pool<'_>, _key: &[u8], now: Instant) -> Option<usize> {
        let n = pool.backends.len();
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<(usize, f64)> = None;
        for i in rotated(pool, start) {
            let s = &pool.backends[i].stats;
            let ewma = (s.ewma.get(now) + FLOOR).as_secs_f64();
            let cost = ewma * (s.in_flight().max(0) as f64 + 1.0) / pool.weight(i) as f64;
            if best.is_none_or(|(_, c)| cost < c) {
                best = Some((i, cost));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::testing::{backends, pool};
    use super::*;
    use crate::config::Algorithm;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn erroring_fast_backend_ranks_below_healthy_slower_one() {
        let now = Instant::now();
        let bs = backends(&[1, 1]);
        // b0 answers in 2 ms but its last answer was a 5xx: the proxy records
        // the failure penalty. b1 is healthy at 40 ms.
        bs[0].stats.ewma.observe(2 * MS, now);
        bs[0].stats.ewma.observe(FAILURE_PENALTY, now);
        bs[1].stats.ewma.observe(40 * MS, now);
        let p = pool(&bs, Algorithm::LeastTime);
        let sel = LeastTime::default();
        for _ in 0..10 {
            assert_eq!(sel.pick(&p, b"", now), Some(1));
        }
    }

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

    #[test]
    fn penalised_backend_is_probed_again_after_decay() {
        let now = Instant::now();
        let bs = backends(&[1, 1]);
        bs[0].stats.ewma.observe(FAILURE_PENALTY, now);
        bs[1].stats.ewma.observe(20 * MS, now);
        let p = pool(&bs, Algorithm::LeastTime);
        let sel = LeastTime::default();
        assert_eq!(sel.pick(&p, b"", now), Some(1));
        // Both decay at the same rate; once b1 keeps getting fresh 20 ms samples
        // and b0 none, b0's 1 s decays below 20 ms after τ·ln(50) ≈ 19.6 s.
        let later = now + Duration::from_secs(25);
        bs[1].stats.ewma.observe(20 * MS, later);
        assert_eq!(sel.pick(&p, b"", later), Some(0));
    }
}
