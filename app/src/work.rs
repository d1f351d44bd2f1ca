//! Pure helpers behind the endpoints: deterministic pseudo-random data for
//! `/api/data`, the CPU-bound hashing loop for `/api/load-test`, RFC 3339 time
//! formatting (no date crate needed) and the hostname.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Number of records in one `/api/data` answer.
const RECORDS: u64 = 10;

const CATEGORIES: [&str; 6] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];

/// One generated record; the same client_id always yields the same records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) category: &'static str,
    pub(crate) value: u64,
    pub(crate) score: f64,
}

/// FNV-1a: a stable seed from the client id (std's hasher may change between
/// Rust releases, and the data should stay the same across builds).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64 step: tiny, stable, good enough for demo data.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The records for `client_id`, derived only from it.
pub(crate) fn generate_records(client_id: &str) -> Vec<Record> {
    let mut state = fnv1a(client_id);
    (0..RECORDS)
        .map(|id| {
            let r = splitmix64(&mut state);
            let idx = (r >> 48) as usize % CATEGORIES.len();
            Record {
                id,
                category: CATEGORIES[idx],
                value: r % 10_000,
                // Two decimals, in 0.00..=99.99.
                score: ((r >> 16) % 10_000) as f64 / 100.0,
            }
        })
        .collect()
}

/// CPU-bound work: chains `iterations` SipHash rounds starting from `seed`.
/// Each round depends on the previous one, so it cannot be skipped or vectorised.
pub(crate) fn burn_cpu(iterations: u64, seed: u64) -> u64 {
    let mut h = seed;
    for i in 0..iterations {
        let mut hasher = DefaultHasher::new();
        (h, i).hash(&mut hasher);
        h = hasher.finish();
    }
    h
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats Unix milliseconds as RFC 3339 UTC, e.g. `2024-05-01T12:34:56.789Z`.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm,
/// restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The container's hostname: /etc/hostname, else $HOSTNAME, else "unknown"
/// (a `FROM scratch` image may have neither, so this must not fail).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_deterministic_and_differ_per_client() {
        let a = generate_records("client-a");
        assert_eq!(a, generate_records("client-a"));
        assert_ne!(a, generate_records("client-b"));
        assert_eq!(a.len(), RECORDS as usize);
        assert!(a.iter().all(|r| r.value < 10_000 && r.score < 100.0));
    }

    #[test]
    fn burn_cpu_depends_on_iterations() {
        assert_eq!(burn_cpu(0, 42), 42);
        assert_eq!(burn_cpu(100, 42), burn_cpu(100, 42));
        assert_ne!(burn_cpu(100, 42), burn_cpu(101, 42));
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z (leap day)
        assert_eq!(rfc3339_ms(951_827_696_789), "2000-02-29T12:34:56.789Z");
        // 2024-12-31T23:59:59.999Z
        assert_eq!(rfc3339_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }

    #[test]
    fn hostname_is_never_empty() {
        assert!(!hostname().is_empty());
    }
}
