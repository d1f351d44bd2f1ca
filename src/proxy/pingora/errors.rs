//! Pingora's errors in the policy's terms, and lb's error replies written
//! through Pingora (`fail_to_proxy` bypasses `response_filter`, so the
//! reply's fields are all set here).

use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

use crate::proxy::policy::reply::ErrorReply;
use crate::proxy::policy::{self, Ctx, Failure};

/// A connect error as the policy's failure: the OS error when Pingora kept
/// it (lb's own shortages are [`Failure::Local`]), else by its type.
pub fn connect_failure(e: &Error) -> Failure {
    if matches!(e.etype(), ConnectTimedout) {
        return Failure::ConnectTimeout;
    }
    // The OS error sits under Pingora's own errors, and under its connect
    // details (which carry the local address) where it has them: follow the
    // chain from the root cause.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.root_cause());
    let mut io = None;
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<std::io::Error>() {
            io = Some(found);
            break;
        }
        cause = c.source();
    }
    match io {
        Some(io) => Failure::of_connect(io),
        None => Failure::ConnectRefused,
    }
}

/// An error while an attempt was under way as the policy's failure; `None`
/// when it was the client's (nothing to charge to the backend, no retry).
/// `interim`: an interim (1xx) head came first, so something was read.
pub fn attempt_failure(e: &Error, reused: bool, interim: bool) -> Option<Failure> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ReadTimedout | WriteTimedout => Failure::Timeout,
        ConnectionClosed | ReadError | WriteError => {
            // Pingora says how much of the response head it had read.
            let partial = interim
                || e.context
                    .as_ref()
                    .is_some_and(|c| !c.as_str().contains("bytes already read: 0"));
            Failure::closed(reused, partial)
        }
        _ => Failure::BadResponse,
    })
}

/// Status and message for an error that ended the request: the policy's
/// answer when it decided one, else what Pingora's error says.
fn classify(e: &Error, ctx: &Ctx) -> (u16, &'static str) {
    if let Some(answer) = ctx.answer {
        return answer;
    }
    match e.etype() {
        HTTPStatus(400) => (400, "bad request"),
        HTTPStatus(431) => (431, "request header fields too large"),
        HTTPStatus(code) => (*code, "upstream failed"),
        ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            (504, "upstream timed out")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream failed"),
            ErrorSource::Downstream => match e.etype() {
                // `server.body_timeout`: no body byte for that long.
                ReadTimedout => (408, "request body timeout"),
                // The client is gone or takes no bytes: nobody to answer.
                WriteError | ReadError | ConnectionClosed | WriteTimedout => (0, ""),
                _ => (400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
        },
    }
}

/// Writes the error response for `e` and reports its status. The
/// connection closes (policy: lb's replies after an attempt, or to a
/// refused head, never keep it).
pub async fn respond(session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    let (code, message) = classify(e, ctx);
    if code > 0 {
        if ctx.request_id.is_empty() {
            ctx.request_id = policy::new_request_id();
        }
        let r = ErrorReply {
            status: code,
            message,
            request_id: &ctx.request_id,
            retry_after: 0,
            location: None,
            grpc: grpc(session),
        };
        let body = r.body();
        if let Ok(resp) = crate::proxy::heads::error_header(&r, body.len()) {
            // No body to a HEAD (Pingora's HTTP/1 server drops it; its
            // HTTP/2 one would send it, and clients reset the stream).
            let head = session.req_header().method == http::Method::HEAD;
            let body = if head {
                Bytes::new()
            } else {
                Bytes::from(body)
            };
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

/// Is the request gRPC (its replies carry `grpc-status`)?
pub fn grpc(session: &Session) -> bool {
    let ct = session.req_header().headers.get(http::header::CONTENT_TYPE);
    crate::proxy::policy::reply::is_grpc(ct.map(|v| v.as_bytes()))
}
