//! Smooth weighted round robin, nginx's algorithm, made lock-free.
//!
//! nginx keeps a mutable `current_weight` per peer and updates all of them on
//! every pick, which needs a lock across threads. The sequence it produces is
//! periodic with period Σw/gcd(w), so we compute one period once ([`schedule`])
//! and serve picks with a single atomic counter into it. The schedule is cached
//! together with the weights it was built for (0 for backends that are not
//! available); when health, mode or weights change, the next pick notices the
//! mismatch and builds a new one. Backends a request already tried are skipped by
//! walking forward, which keeps the schedule stable during retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;

use super::{has, Balancer, Pool};

/// One period of the smooth WRR order for some weights.
#[derive(Debug)]
struct Schedule {
    /// Weight of each backend index the schedule was built for (0 = left out).
    weights: Vec<u32>,
    /// Backend indices in pick order.
    order: Vec<u8>,
}

/// Smooth weighted round robin (`round_robin`, and `dynamic` over effective weights).
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    cache: ArcSwapOption<Schedule>,
    next: AtomicUsize,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One period of nginx's smooth WRR for `weights`: each step adds every weight
/// to its peer's current weight, picks the largest (first on ties, as nginx),
/// then subtracts the total from the winner. Weights are divided by their gcd
/// first: scaling all weights scales the state, so the order is the same.
pub fn schedule(weights: &[u32]) -> Vec<u8> {
    let g = weights.iter().copied().fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let w: Vec<i64> = weights.iter().map(|&x| (x / g) as i64).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i];
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u8);
    }
    order
}

impl SmoothWeighted {
    /// The weight backend `i` has in the schedule for `pool` (0 = left out).
    fn weight(pool: &Pool<'_>, i: usize) -> u32 {
        if has(pool.available, i) {
            pool.weight(i)
        } else {
            0
        }
    }

    fn fits(s: &Schedule, pool: &Pool<'_>) -> bool {
        let n = pool.backends.len();
        s.weights.len() == n && (0..n).all(|i| s.weights[i] == Self::weight(pool, i))
    }

    /// Builds and caches the schedule for `pool`'s weights.
    fn rebuild(&self, pool: &Pool<'_>) -> Option<Arc<Schedule>> {
        let weights: Vec<u32> = (0..pool.backends.len())
            .map(|i| Self::weight(pool, i))
            .collect();
        let order = schedule(&weights);
        if order.is_empty() {
            return None;
        }
        let s = Arc::new(Schedule { weights, order });
        self.cache.store(Some(s.clone()));
        Some(s)
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&self, pool: &Pool<'_>, _key: &[u8], _now: Instant) -> Option<usize> {
        // The common case borrows the cached schedule: no refcount traffic.
        let cached = self.cache.load();
        let fresh;
        let s: &Schedule = match cached.as_deref() {
            Some(s) if Self::fits(s, pool) => s,
            _ => {
                fresh = self.rebuild(pool)?;
                &fresh
            }
        };
        let len = s.order.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Retries walk forward past backends this request already tried.
        (0..len)
            .map(|k| s.order[(start + k) % len] as usize)
            .find(|&i| !has(pool.excluded, i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{backends, pool};
    use super::*;
    use crate::config::Algorithm;

    fn names(order: &[usize]) -> String {
        order.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn nginx_order_for_5_1_1() {
        assert_eq!(
            names(
                &schedule(&[5, 1, 1])
                    .iter()
                    .map(|&i| i as usize)
                    .collect::<Vec<_>>()
            ),
            "aabacaa"
        );
        let bs = backends(&[5, 1, 1]);
        let p = pool(&bs, Algorithm::RoundRobin);
        let sel = SmoothWeighted::default();
        let now = Instant::now();
        let picks: Vec<usize> = (0..21).map(|_| sel.pick(&p, b"", now).unwrap()).collect();
        // Exactly the same cycle three times in a row.
        assert_eq!(names(&picks), "aabacaa".repeat(3));
    }

    #[test]
    fn equal_weights_rotate_strictly() {
        let bs = backends(&[3, 3, 3, 3]);
        let p = pool(&bs, Algorithm::RoundRobin);
        let sel = SmoothWeighted::default();
        let now = Instant::now();
        let picks: Vec<usize> = (0..12).map(|_| sel.pick(&p, b"", now).unwrap()).collect();
        assert_eq!(names(&picks), "abcdabcdabcd");
    }

    #[test]
    fn shares_follow_weights_and_zero_is_never_picked() {
        let bs = backends(&[3, 1, 0]);
        let p = pool(&bs, Algorithm::RoundRobin);
        let sel = SmoothWeighted::default();
        let now = Instant::now();
        let mut count = [0; 3];
        for _ in 0..400 {
            count[sel.pick(&p, b"", now).unwrap()] += 1;
        }
        assert_eq!(count, [300, 100, 0]);
    }

    #[test]
    fn unavailable_backend_drops_out_and_proportions_hold() {
        let bs = backends(&[5, 1, 1]);
        let mut p = pool(&bs, Algorithm::RoundRobin);
        p.available &= !1; // a is down
        let sel = SmoothWeighted::default();
        let now = Instant::now();
        let picks: Vec<usize> = (0..6).map(|_| sel.pick(&p, b"", now).unwrap()).collect();
        assert_eq!(names(&picks), "bcbcbc");
    }

    #[test]
    fn excluded_backends_are_skipped_without_rebuilding() {
        let bs = backends(&[1, 1, 1]);
        let mut p = pool(&bs, Algorithm::RoundRobin);
        p.excluded = 0b001;
        let sel = SmoothWeighted::default();
        let now = Instant::now();
        for _ in 0..9 {
            assert_ne!(sel.pick(&p, b"", now), Some(0));
        }
        p.excluded = 0b111;
        assert_eq!(sel.pick(&p, b"", now), None);
    }

    #[test]
    fn nothing_available_gives_none() {
        let bs = backends(&[0, 0]);
        let p = pool(&bs, Algorithm::RoundRobin);
        assert_eq!(
            SmoothWeighted::default().pick(&p, b"", Instant::now()),
            None
        );
    }
}
