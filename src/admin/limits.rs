//! Per-request limits of the admin API (SPEC "Admin hardening"), one layer
//! in front of every route: a body is at most [`MAX_BODY`] (`413` otherwise,
//! before a handler runs) and must arrive within [`BODY_TIMEOUT`] (`408`).
//! The layer also stops the connection's head clock while the request is
//! served and restarts it once the response is ready (`listener.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use super::error;
use super::listener::AdminConn;

/// The largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// A request body must have arrived whole this long after its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The layer: head clock, body limit, body deadline. Handlers get the body
/// already read (and `ConnectInfo<SocketAddr>` for their audit lines).
pub(super) async fn bounded(mut req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<ConnectInfo<AdminConn>>().cloned();
    if let Some(ConnectInfo(c)) = &conn {
        c.clock.request_started();
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(c.peer));
    }
    let response = match read_body(req).await {
        Ok(req) => next.run(req).await,
        Err(refused) => refused,
    };
    if let Some(ConnectInfo(c)) = conn {
        c.clock.response_ready();
    }
    response
}

/// The request with its body read into memory, or the refusal: `413` for a
/// body over [`MAX_BODY`] (declared or counted), `408` for one that took
/// longer than [`BODY_TIMEOUT`], `400` for one that broke off. A refusal
/// closes the connection: the rest of that body is never read.
async fn read_body(req: Request) -> Result<Request, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| refuse(StatusCode::BAD_REQUEST, "request body broke off"))?;
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => Ok(Request::from_parts(parts, Body::from(buf))),
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "request body timeout")),
    }
}

fn too_large() -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body over {MAX_BODY} bytes"),
    )
}

/// A JSON error that also closes the connection.
fn refuse(status: StatusCode, message: &str) -> Response {
    let mut r = error(status, message);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_body` of a PUT: (status, body text) of the refusal, or 200 and
    /// the length of what was read.
    async fn send(body: Body, declared: Option<usize>) -> (StatusCode, String) {
        let mut req = Request::put("/");
        if let Some(n) = declared {
            req = req.header(header::CONTENT_LENGTH, n);
        }
        let r = match read_body(req.body(body).unwrap()).await {
            Ok(req) => req.into_body(),
            Err(refused) => {
                assert_eq!(refused.headers()[header::CONNECTION], "close");
                let status = refused.status();
                let bytes = axum::body::to_bytes(refused.into_body(), usize::MAX).await;
                return (
                    status,
                    String::from_utf8_lossy(&bytes.unwrap()).into_owned(),
                );
            }
        };
        let bytes = axum::body::to_bytes(r, usize::MAX).await.unwrap();
        (StatusCode::OK, bytes.len().to_string())
    }

    /// A streamed body of `n` bytes in 64 KiB chunks (no length declared).
    fn streamed(n: usize) -> Body {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..n)
            .step_by(64 << 10)
            .map(|at| Ok(vec![b' '; (n - at).min(64 << 10)]))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn one_mebibyte_passes_one_byte_more_is_413_json() {
        let (s, b) = send(Body::from(vec![b' '; MAX_BODY]), Some(MAX_BODY)).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "1048576"));
        let (s, b) = send(Body::from(vec![b' '; MAX_BODY + 1]), Some(MAX_BODY + 1)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("over 1048576 bytes"),
            "{b}"
        );
        // Without a declared length (chunked), counted as it arrives.
        assert_eq!(send(streamed(MAX_BODY), None).await.0, StatusCode::OK);
        let (s, b) = send(streamed(MAX_BODY + 1), None).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_is_408() {
        let never = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
        let (s, b) = send(Body::from_stream(never), Some(10)).await;
        assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{b}");
    }
}
