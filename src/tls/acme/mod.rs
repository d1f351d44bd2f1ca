//! `[tls.acme]`: lb orders, serves and renews its own certificate from an
//! ACME CA, answering the CA's challenges itself (it owns ports 80 and 443).
//!
//! - [`service`]: the background task: a saved certificate at start, else an
//!   order; renewal at `renew_before`; retries with backoff.
//! - [`order`]: one order, over [`client`] (instant-acme with lb's own
//!   hyper-rustls client); [`store`]: the state directory.
//! - This file: what the request paths and the TLS front door read, swapped
//!   whole and never locked on a hot path: the issued certificate (the SNI
//!   resolver serves it for its names, without a config reload) and the
//!   pending challenges (http-01 answers, tls-alpn-01 certificates).
//!
//! One lb process has one ACME state, so it lives in process-wide statics:
//! every config (each reload builds a new SNI resolver) reads the same one.

pub mod client;
pub mod order;
pub mod service;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certs::CertInfo;

/// The ALPN protocol of tls-alpn-01 (RFC 8737); never offered otherwise.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// `lb_acme_orders_total{result}` labels: issued; refused by the CA (a
/// problem document, an invalid order or authorization); failed otherwise
/// (CA unreachable, timeout, a CA-side fault such as `badNonce` or
/// `serverInternal`, state directory not writable).
pub const RESULTS: [&str; 3] = ["issued", "refused", "failed"];

/// Orders by [`RESULTS`] index, since start.
pub static ORDERS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// The certificate lb obtained, as served.
#[derive(Debug)]
pub struct Issued {
    /// Chain and key, as handshakes use them.
    pub key: Arc<CertifiedKey>,
    /// Names, expiry, issuer (`source` = `"acme"`).
    pub info: CertInfo,
    /// When it is renewed (Unix seconds).
    pub next_renewal: i64,
}

static CURRENT: ArcSwapOption<Issued> = ArcSwapOption::const_empty();

/// The ACME certificate being served, if any.
pub fn current() -> Option<Arc<Issued>> {
    CURRENT.load_full()
}

/// Serves `issued` from the next handshake on (`None`: stop serving one).
pub fn install(issued: Option<Issued>) {
    CURRENT.store(issued.map(Arc::new));
}

/// The ACME certificate for a handshake naming `sni`: when it covers the
/// name, or for any name when no `tls.certificates` is configured
/// (`fallback`).
pub fn serve(sni: Option<&str>, fallback: bool) -> Option<Arc<CertifiedKey>> {
    let cur = CURRENT.load();
    let issued = cur.as_ref()?;
    let covers = sni.is_some_and(|n| issued.info.names.iter().any(|m| m == n));
    (covers || fallback).then(|| issued.key.clone())
}

/// Pending challenges: http-01 key authorizations by token, tls-alpn-01
/// server configurations by name. Written twice per order, read by the
/// request paths only for ACME's own paths and ALPN.
#[derive(Default)]
struct Pending {
    http: HashMap<String, String>,
    alpn: HashMap<String, Arc<ServerConfig>>,
}

fn pending() -> &'static Mutex<Pending> {
    static PENDING: OnceLock<Mutex<Pending>> = OnceLock::new();
    PENDING.get_or_init(Mutex::default)
}

/// Any challenge pending at all (checked before taking the lock).
static ANY_PENDING: AtomicU64 = AtomicU64::new(0);

fn with_pending<R>(f: impl FnOnce(&mut Pending) -> R) -> R {
    let mut p = pending().lock().unwrap_or_else(|e| e.into_inner());
    let r = f(&mut p);
    ANY_PENDING.store((p.http.len() + p.alpn.len()) as u64, Ordering::Release);
    r
}

/// The http-01 answer for a request target (`/.well-known/acme-challenge/
/// <token>`, any query ignored): the key authorization, served as
/// `text/plain` by lb itself, on both request paths, before redirects and
/// proxying. `None`: not a pending token (proxied as any request).
pub fn challenge_response(target: &[u8]) -> Option<String> {
    let prefix = crate::proxy::policy::redirect::ACME_CHALLENGE.as_bytes();
    let token = target.strip_prefix(prefix)?;
    if ANY_PENDING.load(Ordering::Acquire) == 0 {
        return None;
    }
    let end = token.iter().position(|&b| b == b'?').unwrap_or(token.len());
    let token = std::str::from_utf8(&token[..end]).ok()?;
    with_pending(|p| p.http.get(token).cloned())
}

/// The configuration completing a tls-alpn-01 handshake for `sni`, when the
/// client offers ALPN `acme-tls/1` and a challenge for that name is pending.
pub fn alpn_challenge<'a>(
    sni: Option<&str>,
    mut alpn: Option<impl Iterator<Item = &'a [u8]>>,
) -> Option<Arc<ServerConfig>> {
    if !alpn.as_mut()?.any(|p| p == ACME_TLS_ALPN) || ANY_PENDING.load(Ordering::Acquire) == 0 {
        return None;
    }
    let sni = sni?;
    with_pending(|p| p.alpn.get(sni).cloned())
}

/// A challenge answered while it lives: removed on drop (the order ended,
/// however it ended).
pub struct Answering {
    token: Option<String>,
    name: Option<String>,
}

impl Answering {
    /// Answers http-01 `token` with `key_authorization`.
    pub fn http(token: &str, key_authorization: &str) -> Answering {
        with_pending(|p| {
            p.http
                .insert(token.to_string(), key_authorization.to_string())
        });
        Answering {
            token: Some(token.to_string()),
            name: None,
        }
    }

    /// Answers tls-alpn-01 for `name` with the handshake `config`.
    pub fn alpn(name: &str, config: Arc<ServerConfig>) -> Answering {
        with_pending(|p| p.alpn.insert(name.to_string(), config));
        Answering {
            token: None,
            name: Some(name.to_string()),
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        with_pending(|p| {
            if let Some(t) = &self.token {
                p.http.remove(t);
            }
            if let Some(n) = &self.name {
                p.alpn.remove(n);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_answers_pending_tokens_only_while_pending() {
        let path = |t: &str| format!("/.well-known/acme-challenge/{t}");
        assert_eq!(challenge_response(path("unit-tok").as_bytes()), None);
        {
            let _a = Answering::http("unit-tok", "unit-tok.thumb");
            assert_eq!(
                challenge_response(path("unit-tok").as_bytes()).as_deref(),
                Some("unit-tok.thumb")
            );
            assert_eq!(
                challenge_response(format!("{}?x=1", path("unit-tok")).as_bytes()).as_deref(),
                Some("unit-tok.thumb")
            );
            assert_eq!(challenge_response(path("other").as_bytes()), None);
            assert_eq!(challenge_response(b"/unit-tok"), None);
        }
        assert_eq!(challenge_response(path("unit-tok").as_bytes()), None);
    }
}
