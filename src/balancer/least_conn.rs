//! `least_conn`: fewest in-flight requests divided by weight; ties rotate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::{rotated, Balancer, Pool};

/// Least in-flight requests per unit of weight.
#[derive(Debug, Default)]
pub struct LeastConn {
    rotor: AtomicUsize,
}

impl Balancer for LeastConn {
    fn pick(&self, pool: &Pool<'_>, _key: &[u8], _now: Instant) -> Option<usize> {
        let n = pool.backends.len();
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<(usize, u64, u64)> = None;
        for i in rotated(pool, start) {
            let load = pool.backends[i].stats.in_flight().max(0) as u64;
            let w = pool.weight(i) as u64;
            // load/w < best_load/best_w, cross-multiplied to stay in integers.
            // Strictly less: on ties the first in rotated order wins, so ties rotate.
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                best = Some((i, load, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::testing::{backends, pool};
    use super::*;
    use crate::config::Algorithm;

    #[test]
    fn picks_min_in_flight_per_weight() {
        let bs = backends(&[1, 1, 2]);
        bs[0].stats.in_flight.store(3, Ordering::Relaxed);
        bs[1].stats.in_flight.store(1, Ordering::Relaxed);
        // b2: 3 in flight / weight 2 = 1.5 > b1's 1/1.
        bs[2].stats.in_flight.store(3, Ordering::Relaxed);
        let p = pool(&bs, Algorithm::LeastConn);
        let sel = LeastConn::default();
        for _ in 0..5 {
            assert_eq!(sel.pick(&p, b"", Instant::now()), Some(1));
        }
        // b2 at 1/2 = 0.5 now beats b1's 1.
        bs[2].stats.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(sel.pick(&p, b"", Instant::now()), Some(2));
    }

    #[test]
    fn ties_rotate() {
        let bs = backends(&[1, 1, 1]);
        let p = pool(&bs, Algorithm::LeastConn);
        let sel = LeastConn::default();
        let picks: Vec<_> = (0..6)
            .map(|_| sel.pick(&p, b"", Instant::now()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_excluded_and_unavailable() {
        let bs = backends(&[1, 1, 0]);
        let mut p = pool(&bs, Algorithm::LeastConn);
        p.excluded = 0b001;
        for _ in 0..4 {
            assert_eq!(LeastConn::default().pick(&p, b"", Instant::now()), Some(1));
        }
        p.excluded = 0b011;
        assert_eq!(LeastConn::default().pick(&p, b"", Instant::now()), None);
    }
}
