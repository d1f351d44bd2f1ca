//! Responses lb writes itself: short JSON `{"error","request_id"}` bodies with
//! `X-Request-Id` (and `Retry-After: 1` on 503). Pingora writes these from
//! `fail_to_proxy`, which bypasses `response_filter`, so headers are set here.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

use super::{headers::REQUEST_ID, Ctx};

/// Status and message for an error that ended the request.
fn classify(e: &Error, ctx: &Ctx) -> (u16, &'static str) {
    match e.etype() {
        HTTPStatus(503) if ctx.no_backend => (503, "no eligible backend"),
        HTTPStatus(503) if ctx.refusal.is_some() => (503, ctx.refusal.unwrap_or("")),
        HTTPStatus(400) => (400, "bad request"),
        HTTPStatus(431) => (431, "request header fields too large"),
        HTTPStatus(504) => (504, "upstream timed out"),
        HTTPStatus(503) => (503, "no eligible backend"),
        HTTPStatus(code) => (*code, "upstream failed"),
        ConnectTimedout | ReadTimedout | WriteTimedout => (504, "upstream timed out"),
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream failed"),
            ErrorSource::Downstream => match e.etype() {
                // The client is gone: nobody to answer.
                WriteError | ReadError | ConnectionClosed => (0, ""),
                _ => (400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
        },
    }
}

/// JSON error body; `message` and `request_id` are known-safe ASCII.
pub fn body(message: &str, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":\"{message}\",\"request_id\":\"{request_id}\"}}\n"
    ))
}

/// Writes the error response for `e` and reports its status.
pub async fn respond(session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    let (code, message) = classify(e, ctx);
    if code > 0 {
        if ctx.request_id.is_empty() {
            ctx.request_id = super::headers::new_request_id();
        }
        let body = body(message, &ctx.request_id);
        if let Ok(resp) = error_header(code, &ctx.request_id, body.len()) {
            if let Err(err) = session.write_error_response(resp, body).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

fn error_header(code: u16, request_id: &str, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", len)?;
    resp.insert_header(REQUEST_ID, request_id)?;
    resp.insert_header("cache-control", "no-store")?;
    if code == 503 {
        resp.insert_header("retry-after", "1")?;
    }
    Ok(resp)
}
