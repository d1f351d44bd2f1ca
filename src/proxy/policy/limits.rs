//! Client limits (SPEC "Slow and abusive clients"): `server.max_connections`
//! and `[limits] per_ip_connections` at accept, `per_ip_rate` /
//! `per_ip_burst` per request (`429` + `Retry-After`, a GCRA limiter from
//! `governor`). A client is its IP address, IPv6 by its /64 (one host's
//! addresses are one client).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// A client as the limits see it: an IPv4 address, or an IPv6 /64.
pub fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(a) >> 64 << 64) | (1 << 32),
        },
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// `server.max_connections` reached.
    Total,
    /// `limits.per_ip_connections` reached for this client.
    PerIp,
}

/// Shards of the per-client connection counts (a short lock per accept and
/// per close, never per request).
const SHARDS: usize = 16;

/// Open client connections, in all and per client.
#[derive(Default)]
pub struct Connections {
    total: AtomicUsize,
    /// Accept loops waiting for a connection to close.
    paused: AtomicUsize,
    /// Woken when a connection closes while an accept loop waits.
    freed: tokio::sync::Notify,
    per_ip: [Mutex<HashMap<u128, u32>>; SHARDS],
}

/// How long a paused accept loop sleeps between looks, should a wake-up be
/// missed (a reload raising `max_connections` wakes nobody).
const PAUSE_RECHECK: Duration = Duration::from_millis(250);

/// When an accept loop last logged its pause: at most one line per second
/// for all of them ([`crate::clock::once_a_second`]).
static PAUSE_LOGGED: AtomicU64 = AtomicU64::new(0);

/// One open connection's place; given back when dropped.
pub struct ConnGuard {
    conns: Arc<Connections>,
    key: Option<u128>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::AcqRel);
        if self.conns.paused.load(Ordering::Acquire) > 0 {
            self.conns.freed.notify_waiters();
        }
        if let Some(key) = self.key {
            let mut shard = self.conns.shard(key);
            if let Some(n) = shard.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    shard.remove(&key);
                }
            }
        }
    }
}

impl Connections {
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, u32>> {
        let i = (key as usize ^ (key >> 64) as usize) % SHARDS;
        self.per_ip[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Awaited by each accept loop before it accepts: returns at once while
    /// the open connections are under `max()`, else waits for one to close.
    /// So at `server.max_connections` accepting pauses and new connections
    /// wait in the listen backlog, as HAProxy's `maxconn` does, instead of
    /// being accepted and closed. One log line per second at most.
    pub async fn room(&self, max: impl Fn() -> usize) {
        let mut since: Option<std::time::Instant> = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the look: a close right after it wakes us.
            freed.as_mut().enable();
            let open = self.total.load(Ordering::Acquire);
            if open < max() {
                if let Some(t) = since {
                    self.paused.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(
                        paused_ms = t.elapsed().as_millis() as u64,
                        "accepting again"
                    );
                }
                return;
            }
            if since.is_none() {
                since = Some(std::time::Instant::now());
                self.paused.fetch_add(1, Ordering::AcqRel);
                if crate::clock::once_a_second(&PAUSE_LOGGED) {
                    tracing::warn!(open, max = max(),
                        "server.max_connections reached: accepting paused until a connection closes");
                }
            }
            let _ = tokio::time::timeout(PAUSE_RECHECK, freed).await;
        }
    }

    /// Waits until a connection closes, `at_most` long.
    pub async fn until_a_close(&self, at_most: Duration) {
        let freed = self.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        self.paused.fetch_add(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(at_most, freed).await;
        self.paused.fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes a place for a new connection under `max` in all.
    pub fn enter(self: &Arc<Self>, max: usize) -> Result<ConnGuard, ConnRefusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnRefusal::Total);
        }
        Ok(ConnGuard {
            conns: self.clone(),
            key: None,
        })
    }

    /// Counts `guard`'s connection against client `ip` under `per_ip` (0 =
    /// no limit) connections per client.
    pub fn count_client(
        &self,
        guard: &mut ConnGuard,
        ip: Option<IpAddr>,
        per_ip: u32,
    ) -> Result<(), ConnRefusal> {
        let Some(key) = ip.filter(|_| per_ip > 0).map(client_key) else {
            return Ok(());
        };
        let mut shard = self.shard(key);
        let n = shard.entry(key).or_insert(0);
        if *n >= per_ip {
            return Err(ConnRefusal::PerIp);
        }
        *n += 1;
        guard.key = Some(key);
        Ok(())
    }

    /// Takes a place for a new connection from `ip` under `max` in all and
    /// `per_ip` (0 = no limit) per client: [`Connections::enter`] then
    /// [`Connections::count_client`], as the front door does them (apart,
    /// with the PROXY header read between).
    #[cfg(test)]
    fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: usize,
        per_ip: u32,
    ) -> Result<ConnGuard, ConnRefusal> {
        let mut guard = self.enter(max)?;
        self.count_client(&mut guard, ip, per_ip)?; // `guard` gives the total back
        Ok(guard)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The per-client request rate limiter of one `[limits]` setting.
struct Rate {
    rate: u32,
    burst: u32,
    limiter: DefaultKeyedRateLimiter<u128>,
}

/// The process's rate limiter, rebuilt when a reload changes the setting.
static RATE: ArcSwapOption<Rate> = ArcSwapOption::const_empty();

/// May `ip` send a request now under `limits`? `Err(retry_after)` when not:
/// the whole seconds until it may (at least 1).
pub fn check_rate(ip: Option<IpAddr>, limits: &LimitsConfig) -> Result<(), u64> {
    let (Some(ip), Some(rate)) = (ip, NonZeroU32::new(limits.per_ip_rate)) else {
        return Ok(());
    };
    let current = RATE.load();
    let r = match &*current {
        Some(r) if r.rate == limits.per_ip_rate && r.burst == limits.per_ip_burst => r.clone(),
        _ => {
            // nginx's `limit_req rate=… burst=… nodelay`: one request per
            // 1/rate, plus `burst` more at once.
            let burst =
                NonZeroU32::new(limits.per_ip_burst.saturating_add(1)).unwrap_or(NonZeroU32::MIN);
            let r = Arc::new(Rate {
                rate: limits.per_ip_rate,
                burst: limits.per_ip_burst,
                limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            });
            RATE.store(Some(r.clone()));
            r
        }
    };
    if r.limiter.len() > 100_000 {
        // Forget clients whose allowance is full again (bounded memory).
        r.limiter.retain_recent();
    }
    r.limiter.check_key(&client_key(ip)).map_err(|not_until| {
        let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_ipv4_addresses_or_ipv6_64s() {
        let k = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        // An IPv6 /64 never equals an IPv4 key.
        assert_ne!(k("::"), k("0.0.0.0"));
    }

    #[test]
    fn connection_places_are_counted_and_given_back() {
        let c = Arc::new(Connections::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = c.admit(Some(ip), 3, 2).unwrap();
        let _b = c.admit(Some(ip), 3, 2).unwrap();
        assert_eq!(c.admit(Some(ip), 3, 2).err(), Some(ConnRefusal::PerIp));
        let _other = c.admit(Some("10.0.0.2".parse().unwrap()), 3, 2).unwrap();
        assert_eq!(c.admit(None, 3, 2).err(), Some(ConnRefusal::Total));
        assert_eq!(c.open(), 3);
        drop(a);
        assert_eq!(c.open(), 2);
        assert!(
            c.admit(Some(ip), 3, 2).is_ok(),
            "a place given back is reused"
        );
    }

    #[test]
    fn rate_limits_per_client_with_a_burst() {
        let limits = LimitsConfig {
            per_ip_connections: 0,
            per_ip_rate: 1,
            per_ip_burst: 2,
        };
        let ip = Some("192.0.2.7".parse().unwrap());
        // 1 + burst at once, then refused with a Retry-After of 1 s.
        let results: Vec<_> = (0..4).map(|_| check_rate(ip, &limits)).collect();
        assert_eq!(results, [Ok(()), Ok(()), Ok(()), Err(1)]);
        assert!(check_rate(Some("192.0.2.8".parse().unwrap()), &limits).is_ok());
        assert!(check_rate(ip, &LimitsConfig::default()).is_ok(), "off");
    }

    #[tokio::test]
    async fn accepting_waits_at_the_cap_until_a_connection_closes() {
        let c = Arc::new(Connections::default());
        c.room(|| 2).await;
        let a = c.enter(2).unwrap();
        c.room(|| 2).await;
        let b = c.enter(2).unwrap();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.room(|| 2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "two open: paused");
        assert_eq!(c.open(), 2);
        assert_eq!(c.enter(2).err(), Some(ConnRefusal::Total));
        drop(a);
        // Woken by the close, well before the 250 ms recheck.
        tokio::time::timeout(Duration::from_millis(200), waiting)
            .await
            .expect("woken by the close")
            .unwrap();
        let _c = c.enter(2).unwrap();
        assert_eq!(c.enter(2).err(), Some(ConnRefusal::Total));
        drop(b);
    }

    #[tokio::test]
    async fn a_shortage_waits_for_a_close_or_its_bound() {
        let c = Arc::new(Connections::default());
        let a = c.enter(1).unwrap();
        // Nothing closes: back after the bound.
        let t = std::time::Instant::now();
        c.until_a_close(Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
        // A close ends the wait at once (the bound is 10 s).
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.until_a_close(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the close")
            .unwrap();
    }
}
