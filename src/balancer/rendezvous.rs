//! Weighted rendezvous (highest-random-weight) hashing: `ip_hash` and header stickiness.
//!
//! Every backend scores a key with `w / -ln(u)`, `u` a uniform hash of (key,
//! backend name) in (0, 1); the highest score wins. This gives exactly what SPEC
//! asks of `ip_hash`: the chance of winning is `w / Σw` (weight-aware); the
//! ranking of backends for a key is fixed, so when the winner is not eligible the
//! next one in that key's order is used; and removing a backend only moves the
//! keys it won, because the other scores do not change. Scores depend on backend
//! names, not addresses, so DNS changes and restarts keep clients in place.
//! Cost is one hash and one `ln` per backend: trivial for 2–64 backends.

use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{has, Balancer, Mask, Pool};
use crate::backend::Backend;

/// Score of backend `b` (weight `w`) for `key`.
#[inline]
fn score(key: &[u8], b: &Backend, w: u32) -> f64 {
    let h = xxh3_64_with_seed(key, b.stats.hash_seed);
    // Top 53 bits → a uniform double strictly inside (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    w as f64 / -u.ln()
}

/// Highest-scoring backend in `mask`, weighting each with `weight(i)`.
pub fn rendezvous_pick(
    backends: &[Backend],
    mask: Mask,
    key: &[u8],
    weight: impl Fn(usize) -> u32,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, b) in backends.iter().enumerate() {
        let w = weight(i);
        if !has(mask, i) || w == 0 {
            continue;
        }
        let s = score(key, b, w);
        if best.is_none_or(|(_, bs)| s > bs) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// `ip_hash`: consistent hash of the whole client IP (v4 or v6).
#[derive(Debug, Default)]
pub struct IpHash;

impl Balancer for IpHash {
    fn pick(&self, pool: &Pool<'_>, key: &[u8], _now: Instant) -> Option<usize> {
        rendezvous_pick(pool.backends, pool.candidates(), key, |i| pool.weight(i))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::super::testing::{backends, pool};
    use super::*;
    use crate::config::Algorithm;

    fn ip_key(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// 5,000 IPv4 and 5,000 IPv6 synthetic client addresses.
    fn clients() -> Vec<Vec<u8>> {
        let v4 = (0..5000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)));
        let v6 = (0..5000u128)
            .map(|i| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (i * 104_729))));
        v4.chain(v6).map(ip_key).collect()
    }

    #[test]
    fn stable_per_ip() {
        let bs = backends(&[1, 1, 1, 1]);
        let p = pool(&bs, Algorithm::IpHash);
        let now = Instant::now();
        for key in clients().iter().take(500) {
            let first = IpHash.pick(&p, key, now);
            assert!(first.is_some());
            for _ in 0..3 {
                assert_eq!(IpHash.pick(&p, key, now), first);
            }
        }
    }

    #[test]
    fn shares_are_weight_proportional_within_5_percent() {
        // Weights 1:2:3:4 over 10,000 keys: expected shares 10/20/30/40 %.
        // A share's binomial standard deviation is at most sqrt(0.25/10000) = 0.5
        // percentage points, so ±5 % of the expected share (≥ 0.5 points for the
        // smallest) is ≥ 1σ for b0 and ≥ 4σ for the others; the hash is fixed, so
        // the result is deterministic and this cannot flake.
        let weights = [1, 2, 3, 4];
        let bs = backends(&weights);
        let p = pool(&bs, Algorithm::IpHash);
        let keys = clients();
        let mut count = [0usize; 4];
        for k in &keys {
            count[IpHash.pick(&p, k, Instant::now()).unwrap()] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let expected = keys.len() as f64 * w as f64 / 10.0;
            let got = count[i] as f64;
            assert!(
                (got - expected).abs() <= expected * 0.05,
                "backend {i}: {got} vs expected {expected} ({count:?})"
            );
        }
    }

    #[test]
    fn removing_one_of_four_moves_only_its_clients() {
        let bs = backends(&[1, 1, 1, 1]);
        let keys = clients();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                IpHash
                    .pick(&pool(&bs, Algorithm::IpHash), k, Instant::now())
                    .unwrap()
            })
            .collect();
        // Remove b2 from the config: a new backend list without it.
        let mut fewer = bs.clone();
        fewer.remove(2);
        let name = |v: &[Backend], i: usize| v[i].stats.name.clone();
        let mut moved_from_others = 0;
        let mut moved = 0;
        for (k, &b) in keys.iter().zip(&before) {
            let after = IpHash
                .pick(&pool(&fewer, Algorithm::IpHash), k, Instant::now())
                .unwrap();
            if name(&bs, b) != name(&fewer, after) {
                moved += 1;
                if b != 2 {
                    moved_from_others += 1;
                }
            }
        }
        assert_eq!(moved_from_others, 0);
        assert_eq!(moved, before.iter().filter(|&&b| b == 2).count());
    }

    #[test]
    fn ineligible_winner_falls_to_the_next_in_fixed_order() {
        let bs = backends(&[1, 1, 1, 1]);
        let mut p = pool(&bs, Algorithm::IpHash);
        let now = Instant::now();
        for key in clients().iter().take(200) {
            let first = IpHash.pick(&p, key, now).unwrap();
            p.excluded = 1 << first;
            let second = IpHash.pick(&p, key, now).unwrap();
            assert_ne!(first, second);
            // Same answer every time: the fallback order is fixed per key.
            assert_eq!(IpHash.pick(&p, key, now), Some(second));
            p.excluded = 0;
        }
    }
}
