//! The ACME background task. At start (and when a reload changes
//! `[tls.acme]`) it serves the certificate saved in `state_dir` if one is
//! valid, else orders one and serves it the moment it is issued. It renews
//! at `renew_before` before expiry; a failed order is retried after 1 min,
//! 2, 4 … up to 1 h while the current certificate keeps serving.
//!
//! The schedule is pure ([`renewal_at`], [`backoff`], [`next_attempt`]),
//! in milliseconds since the epoch, and unit-tested without waiting.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use instant_acme::Account;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::order::{self, OrderError};
use super::store::Store;
use super::{install, Issued, ORDERS};
use crate::config::AcmeConfig;
use crate::state::State;
use crate::tls::certs::CertInfo;

/// How often the task looks at the config and the clock.
const TICK: Duration = Duration::from_secs(1);

/// An order that has not finished after this has failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// Retries after a failure: `base`, doubling, at most `ceiling`. The
/// ceiling is also the least time between two successful orders, so a
/// `renew_before` longer than the certificate's lifetime renews once per
/// ceiling rather than in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's delay (1 min).
    pub base: Duration,
    /// The longest delay (1 h).
    pub ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(60),
            ceiling: Duration::from_secs(3600),
        }
    }
}

/// `LB_ACME_BACKOFF="<base>,<ceiling>"` (e.g. `"1s,8s"`): shorter retries
/// for tests and demos against a local CA. Not a config key on purpose:
/// against a real CA anything shorter than the defaults runs into its rate
/// limits.
pub const BACKOFF_ENV: &str = "LB_ACME_BACKOFF";

impl Backoff {
    /// The defaults, or [`BACKOFF_ENV`] when it is set and valid.
    pub fn from_env() -> Backoff {
        std::env::var(BACKOFF_ENV)
            .ok()
            .and_then(|v| Backoff::parse(&v))
            .unwrap_or_default()
    }

    fn parse(v: &str) -> Option<Backoff> {
        let (b, c) = v.split_once(',')?;
        let base = humantime::parse_duration(b.trim()).ok()?;
        let ceiling = humantime::parse_duration(c.trim()).ok()?;
        (!base.is_zero() && base <= ceiling).then_some(Backoff { base, ceiling })
    }
}

/// The delay before retry number `failures` (1 = after the first failure).
pub fn backoff(failures: u32, b: Backoff) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    b.base.saturating_mul(1 << doublings).min(b.ceiling)
}

/// When `cert` is due for renewal (ms since the epoch): `renew_before` its
/// expiry; now (`None`) without a certificate or when it lacks one of
/// `domains`.
pub fn renewal_at(
    cert: Option<&CertInfo>,
    domains: &[String],
    renew_before: Duration,
) -> Option<i64> {
    let cert = cert?;
    if !domains.iter().all(|d| cert.names.contains(d)) {
        return None;
    }
    Some(cert.not_after * 1000 - renew_before.as_millis() as i64)
}

/// When to order next (ms since the epoch): at `renewal` (or at once), not
/// before a retry's time, nor within a backoff ceiling of the last issuance.
pub fn next_attempt(
    now: i64,
    renewal: Option<i64>,
    retry_at: Option<i64>,
    issued_at: Option<i64>,
    b: Backoff,
) -> i64 {
    let floor = issued_at.map_or(i64::MIN, |t| t + b.ceiling.as_millis() as i64);
    renewal
        .unwrap_or(now)
        .max(retry_at.unwrap_or(i64::MIN))
        .max(floor)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The background task (a no-op without `[tls.acme]`).
pub struct AcmeService(pub Arc<State>);

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let backoff = Backoff::from_env();
        let mut run: Option<Run> = None;
        loop {
            let cfg = self
                .0
                .load()
                .config
                .tls
                .as_ref()
                .and_then(|t| t.acme.clone());
            match cfg {
                None if run.is_some() => {
                    install(None);
                    run = None;
                }
                Some(c) if run.as_ref().is_none_or(|r| r.cfg != c) => {
                    run = Some(Run::start(c, backoff));
                }
                _ => {}
            }
            if let Some(r) = run.as_mut().filter(|r| r.next <= now_ms()) {
                tokio::select! {
                    _ = r.attempt() => {}
                    _ = shutdown.changed() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One `[tls.acme]` being served: its store, account and schedule.
struct Run {
    cfg: AcmeConfig,
    store: Store,
    account: Option<Account>,
    backoff: Backoff,
    failures: u32,
    retry_at: Option<i64>,
    issued_at: Option<i64>,
    /// The next order's time (ms since the epoch).
    next: i64,
}

impl Run {
    /// Serves the saved certificate, if valid, and plans the first order.
    fn start(cfg: AcmeConfig, backoff: Backoff) -> Run {
        let store = Store::new(&cfg.state_dir);
        let mut run = Run {
            store,
            cfg,
            account: None,
            backoff,
            failures: 0,
            retry_at: None,
            issued_at: None,
            next: 0,
        };
        let names = run.cfg.domains.join(",");
        match run.store.certificate(crate::tls::unix_now()) {
            Ok(Some((key, info))) => {
                run.serve(key, info);
                let cur = super::current().expect("installed above");
                tracing::info!(names = %cur.info.names.join(","), not_after = %cur.info.not_after_rfc3339(),
                    next_renewal = %rfc3339(run.next), "acme: serving the saved certificate");
            }
            Ok(None) => {
                install(None);
                tracing::info!(%names, "acme: no saved certificate: ordering one");
            }
            Err(reason) => {
                install(None);
                tracing::warn!(%names, %reason, "acme: the saved certificate cannot be used: ordering a new one");
            }
        }
        run
    }

    /// Serves `key`, planning its renewal.
    fn serve(&mut self, key: Arc<rustls::sign::CertifiedKey>, info: CertInfo) {
        self.plan(Some(&info));
        install(Some(Issued {
            key,
            info,
            next_renewal: self.next / 1000,
        }));
    }

    /// Sets [`Run::next`] for `cert` (the one being served).
    fn plan(&mut self, cert: Option<&CertInfo>) {
        let renewal = renewal_at(cert, &self.cfg.domains, self.cfg.renew_before);
        self.next = next_attempt(
            now_ms(),
            renewal,
            self.retry_at,
            self.issued_at,
            self.backoff,
        );
    }

    /// One order, its outcome counted, logged and served or scheduled.
    async fn attempt(&mut self) {
        let started = Instant::now();
        let renewal = super::current().is_some();
        let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order()).await {
            Ok(r) => r,
            Err(_) => Err(OrderError::Failed(
                "the order did not finish within 10 minutes".into(),
            )),
        };
        let took_ms = started.elapsed().as_millis() as u64;
        let names = self.cfg.domains.join(",");
        match result {
            Ok((key, info)) => {
                ORDERS[0].fetch_add(1, Ordering::Relaxed);
                self.failures = 0;
                self.retry_at = None;
                self.issued_at = Some(now_ms());
                let not_after = info.not_after_rfc3339();
                self.serve(key, info);
                tracing::info!(%names, renewal, took_ms, %not_after, next_renewal = %rfc3339(self.next),
                    "acme: certificate issued and serving");
            }
            Err(e) => {
                ORDERS[e.result()].fetch_add(1, Ordering::Relaxed);
                if e.unknown_account() {
                    self.account = None;
                    self.store.forget_account();
                }
                self.failures += 1;
                let wait = backoff(self.failures, self.backoff);
                self.retry_at = Some(now_ms() + wait.as_millis() as i64);
                let cur = super::current();
                self.plan(cur.as_ref().map(|c| &c.info));
                if let Some(c) = cur {
                    install(Some(Issued {
                        key: c.key.clone(),
                        info: c.info.clone(),
                        next_renewal: self.next / 1000,
                    }));
                }
                tracing::warn!(%names, renewal, took_ms, error = %e, failures = self.failures,
                    retry_in = ?wait, "acme: order failed; the current certificate (if any) keeps serving");
            }
        }
    }

    /// Account, order, saved, loaded back as handshakes will use it.
    async fn order(&mut self) -> Result<(Arc<rustls::sign::CertifiedKey>, CertInfo), OrderError> {
        if self.account.is_none() {
            self.account = Some(order::account(&self.cfg, &self.store).await?);
        }
        let account = self.account.as_ref().expect("set above");
        let (chain, key) = order::order(account, &self.cfg.domains, self.cfg.challenge).await?;
        self.store
            .save_certificate(&chain, &key)
            .map_err(OrderError::Failed)?;
        self.store
            .certificate(crate::tls::unix_now())
            .map_err(OrderError::Failed)?
            .ok_or_else(|| OrderError::Failed("the saved certificate is gone".into()))
    }
}

/// ms since the epoch as RFC 3339 (UTC, seconds).
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(60),
        ceiling: Duration::from_secs(3600),
    };

    fn cert(names: &[&str], not_after: i64) -> CertInfo {
        CertInfo {
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after,
            issuer: String::new(),
            source: "acme",
        }
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f, B).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, B), B.ceiling);
        assert_eq!(
            Backoff::parse("1s, 8s"),
            Some(Backoff {
                base: Duration::from_secs(1),
                ceiling: Duration::from_secs(8)
            })
        );
        assert_eq!(Backoff::parse("8s,1s"), None);
        assert_eq!(Backoff::parse("0s,1s"), None);
        assert_eq!(Backoff::parse("soon"), None);
    }

    #[test]
    fn renewal_is_renew_before_expiry_or_now_when_names_are_missing() {
        let d = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let day = Duration::from_secs(86_400);
        let c = cert(&["a.test", "b.test"], 100 * 86_400);
        assert_eq!(
            renewal_at(Some(&c), &d(&["a.test"]), 30 * day),
            Some(70 * 86_400_000)
        );
        assert_eq!(
            renewal_at(Some(&c), &d(&["b.test", "a.test"]), day),
            Some(99 * 86_400_000)
        );
        assert_eq!(renewal_at(Some(&c), &d(&["a.test", "c.test"]), day), None);
        assert_eq!(renewal_at(None, &d(&["a.test"]), day), None);
    }

    #[test]
    fn next_attempt_waits_for_retries_and_a_ceiling_after_issuance() {
        let now = 1_000_000;
        // Nothing to serve: at once.
        assert_eq!(next_attempt(now, None, None, None, B), now);
        // Renewal in the future: then.
        assert_eq!(next_attempt(now, Some(now + 5), None, None, B), now + 5);
        // A renewal overdue (renew_before longer than the lifetime): now on
        // a restart, but an hour after this process's own last issuance.
        assert_eq!(next_attempt(now, Some(now - 5), None, None, B), now - 5);
        assert_eq!(
            next_attempt(now, Some(now - 5), None, Some(now), B),
            now + 3_600_000
        );
        // After a failure: not before the retry.
        assert_eq!(
            next_attempt(now, None, Some(now + 60_000), None, B),
            now + 60_000
        );
    }
}
