//! One ACME order (RFC 8555 §7.4) for `tls.acme.domains`: the account (saved
//! or created), authorizations answered with the configured challenge while
//! the order runs, finalization with a new key, the chain downloaded.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::client::AcmeHttp;
use super::store::Store;
use super::{Answering, ACME_TLS_ALPN};
use crate::config::{AcmeChallenge, AcmeConfig};

/// Why an order did not give a certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrderError {
    /// The CA said no (a problem document, an invalid authorization).
    #[error("refused by the CA: {0}")]
    Refused(String),
    /// Anything else: the CA unreachable, a timeout, the state directory.
    #[error("{0}")]
    Failed(String),
}

impl OrderError {
    /// The `lb_acme_orders_total{result}` index ([`super::RESULTS`]).
    pub fn result(&self) -> usize {
        match self {
            OrderError::Refused(_) => 1,
            OrderError::Failed(_) => 2,
        }
    }

    /// The CA no longer knows the saved account (deactivated, or a test CA
    /// restarted): the next attempt creates a new one.
    pub fn unknown_account(&self) -> bool {
        matches!(self, OrderError::Refused(m) if m.contains("accountDoesNotExist"))
    }
}

/// Problem types that say nothing about the order itself: the CA's nonce
/// store or the CA's own fault (RFC 8555 §6.7). instant-acme already resends
/// a request twice on `badNonce`; one that still fails (Pebble rejects 5 % of
/// nonces at random) is a transient failure, retried with backoff as a CA
/// that cannot be reached, not counted as the CA refusing the names.
const TRANSIENT_PROBLEMS: [&str; 2] = [
    "urn:ietf:params:acme:error:badNonce",
    "urn:ietf:params:acme:error:serverInternal",
];

fn classify(e: instant_acme::Error) -> OrderError {
    match e {
        instant_acme::Error::Api(p)
            if p.r#type
                .as_deref()
                .is_some_and(|t| TRANSIENT_PROBLEMS.contains(&t)) =>
        {
            OrderError::Failed(format!("the CA failed: {p}"))
        }
        instant_acme::Error::Api(p) => OrderError::Refused(p.to_string()),
        other => OrderError::Failed(other.to_string()),
    }
}

/// Polling an order: 0.5 s, then 1.5× longer each time, for 2 minutes
/// (Pebble's validation sleeps up to 15 s on purpose; real CAs take seconds).
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// The account for `cfg.directory`: the saved one, else a new one (saved).
pub async fn account(cfg: &AcmeConfig, store: &Store) -> Result<Account, OrderError> {
    let http = AcmeHttp::new(cfg.ca_roots.as_deref()).map_err(OrderError::Failed)?;
    let builder = Account::builder_with_http(Box::new(http));
    if let Some(credentials) = store.account(&cfg.directory) {
        return builder
            .from_credentials(credentials)
            .await
            .map_err(classify);
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder
        .create(&new, cfg.directory.clone(), None)
        .await
        .map_err(classify)?;
    store
        .save_account(&cfg.directory, &credentials)
        .map_err(OrderError::Failed)?;
    tracing::info!(directory = %cfg.directory, "acme: account created");
    Ok(account)
}

/// Orders a certificate for `domains`; its chain and key, both PEM.
pub async fn order(
    account: &Account,
    domains: &[String],
    challenge: AcmeChallenge,
) -> Result<(String, String), OrderError> {
    let ids: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(classify)?;
    // Answered until this function returns, however it returns.
    let mut answering = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(classify)?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                let name = a.identifier().to_string();
                return Err(OrderError::Refused(format!(
                    "authorization for {name} is {other:?}"
                )));
            }
        }
        let name = a.identifier().to_string();
        let kind = match challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let Some(mut ch) = a.challenge(kind) else {
            return Err(OrderError::Refused(format!(
                "no {} challenge offered for {name}",
                challenge.as_str()
            )));
        };
        let key_authorization = ch.key_authorization();
        answering.push(match challenge {
            AcmeChallenge::Http01 => Answering::http(&ch.token, key_authorization.as_str()),
            AcmeChallenge::TlsAlpn01 => {
                let config = alpn_config(&name, key_authorization.digest().as_ref())?;
                Answering::alpn(&name, config)
            }
        });
        ch.set_ready().await.map_err(classify)?;
    }
    let status = order.poll_ready(&POLL).await.map_err(classify)?;
    if status != OrderStatus::Ready {
        return Err(OrderError::Refused(invalid_reason(&mut order).await));
    }
    let key = order.finalize().await.map_err(classify)?;
    let chain = order.poll_certificate(&POLL).await.map_err(classify)?;
    drop(answering);
    Ok((chain, key))
}

/// Why an order went invalid: its challenges' errors, as the CA words them.
async fn invalid_reason(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut a)) = authorizations.next().await {
        let name = a.identifier().to_string();
        if let Ok(state) = a.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    reasons.push(format!("{name}: {e}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".to_string()
    } else {
        reasons.join("; ")
    }
}

/// The handshake configuration answering tls-alpn-01 for `name` (RFC 8737):
/// a self-signed certificate for the name carrying the key authorization's
/// SHA-256 in its critical acmeIdentifier extension, ALPN `acme-tls/1` only.
fn alpn_config(name: &str, digest: &[u8]) -> Result<Arc<ServerConfig>, OrderError> {
    let fail = |e: String| OrderError::Failed(format!("tls-alpn-01 certificate: {e}"));
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| fail(e.to_string()))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| fail(e.to_string()))?;
    // A resolver rather than `with_single_cert`, which would parse the
    // certificate and refuse its critical acmeIdentifier extension.
    let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Serves one certificate whatever the ClientHello says.
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_certificate_carries_the_acme_identifier() {
        let digest = [7u8; 32];
        let config = alpn_config("a.test", &digest).unwrap();
        assert_eq!(config.alpn_protocols, [ACME_TLS_ALPN.to_vec()]);
    }

    #[test]
    fn refusals_and_failures_are_counted_apart() {
        assert_eq!(OrderError::Refused("x".into()).result(), 1);
        assert_eq!(OrderError::Failed("x".into()).result(), 2);
        let gone =
            OrderError::Refused("urn:ietf:params:acme:error:accountDoesNotExist: unknown".into());
        assert!(gone.unknown_account());
    }

    fn problem(kind: &str) -> instant_acme::Error {
        let json = format!(r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"d"}}"#);
        instant_acme::Error::Api(serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn a_bad_nonce_or_a_ca_fault_is_a_failure_not_a_refusal() {
        for (kind, refused) in [
            ("badNonce", false),
            ("serverInternal", false),
            ("rejectedIdentifier", true),
            ("malformed", true),
        ] {
            let e = classify(problem(kind));
            assert_eq!(
                matches!(e, OrderError::Refused(_)),
                refused,
                "{kind}: {e:?}"
            );
        }
    }
}
