//! The helpers every pool test uses: an lb with a process pool of its own
//! (and its [`PoolGuard`]), the pool's ready count, load on `/api/whoami`,
//! the "0 failed requests" check, and the per-test time limit.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// One test's lb with its pool.
pub struct PoolLb {
    pub lb: Lb,
    pub name: String,
    /// The config body it started with (for reloads).
    pub body: String,
    /// Its `pool.ports`.
    pub ports: (u16, u16),
    _guard: PoolGuard,
}

pub async fn start(extra: &str, app_args: &[&str]) -> PoolLb {
    let (name, lo, hi) = unique_pool();
    let guard = PoolGuard(name.clone());
    let body = pool_toml(&name, (lo, hi), extra, app_args);
    let lb = Lb::start(&body).await;
    PoolLb {
        lb,
        name,
        body,
        ports: (lo, hi),
        _guard: guard,
    }
}

pub fn ready(v: &Value) -> usize {
    members_in(v, "ready").len()
}

/// Load at `rate`/s on `/api/whoami` for at most `secs`.
pub fn load(lb: &Lb, rate: u32, secs: u64) -> Load {
    Load::start(
        &lb.url("/api/whoami"),
        rate,
        (rate as usize) * (secs as usize),
        Duration::from_secs(secs),
        reqwest::Method::GET,
    )
}

pub fn assert_no_failures(samples: &[Sample], what: &str) {
    let failed = samples.failed();
    println!(
        "{what}: {} requests, {} failed, per backend {:?}",
        samples.len(),
        failed.len(),
        samples.per_backend()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} failed, e.g. {:?}",
        failed.len(),
        failed
            .iter()
            .take(3)
            .map(|s| s.outcome())
            .collect::<Vec<_>>()
    );
}

pub const LIMIT: Duration = Duration::from_secs(60);
