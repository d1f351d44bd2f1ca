//! The HTTPS client instant-acme talks to the CA with: hyper over
//! hyper-rustls with rustls' `ring` provider (as lb's own TLS), trusting
//! Mozilla's roots (compiled in: lb's image has no system trust store) plus
//! `tls.acme.ca_roots` (a private CA, or a test server such as Pebble).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// How long one request to the CA may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTPS-only client for the CA's directory and everything it links.
#[derive(Clone)]
pub struct AcmeHttp(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AcmeHttp {
    /// A client trusting the web's roots and those in `ca_roots` (PEM).
    pub fn new(ca_roots: Option<&Path>) -> Result<AcmeHttp, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_roots {
            let pem = std::fs::read(path)
                .map_err(|e| format!("tls.acme.ca_roots {}: {e}", path.display()))?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("tls.acme.ca_roots {}: {e:?}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls.acme.ca_roots {}: {e}", path.display()))?;
            }
        }
        // ring, as everywhere in lb (see Cargo.toml).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(AcmeHttp(Client::builder(TokioExecutor::new()).build(https)))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Str(
                    "request to the ACME server timed out",
                )),
            }
        })
    }
}
