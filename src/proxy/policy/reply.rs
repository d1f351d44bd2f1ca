//! Responses lb writes itself: a short JSON `{"error","request_id"}` body,
//! the same fields and the same connection handling on every path.

use super::ids::REQUEST_ID;

/// An error response lb generates.
#[derive(Debug, Clone, Copy)]
pub struct ErrorReply<'a> {
    pub status: u16,
    /// Known-safe ASCII (one of lb's own messages).
    pub message: &'a str,
    /// Known-safe ASCII (see [`super::sane_request_id`]).
    pub request_id: &'a str,
    /// `Retry-After` seconds on a `503` or `429` (0: 1 s).
    pub retry_after: u64,
    /// `Location` of a redirect (`tls.redirect_http`'s `308`).
    pub location: Option<&'a str>,
    /// The request is gRPC (`content-type: application/grpc…`): the reply is
    /// a `200` with `grpc-status` and `grpc-message` and no body, as Envoy
    /// answers, so gRPC clients see a gRPC error rather than a protocol one.
    pub grpc: bool,
}

/// Is `content_type` a gRPC request's (`application/grpc`, `…+proto`, …)?
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|c| c.len() >= 16 && c[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// The `grpc-status` for an HTTP status lb answers with: `4`
/// (DEADLINE_EXCEEDED) for timeouts, `8` (RESOURCE_EXHAUSTED) for limits,
/// `14` (UNAVAILABLE) for everything else (SPEC "HTTP/2 and gRPC").
pub fn grpc_status(http: u16) -> u8 {
    match http {
        504 | 408 => 4,
        429 | 413 | 431 => 8,
        _ => 14,
    }
}

impl ErrorReply<'_> {
    /// The HTTP status written: the error's, or `200` for gRPC.
    pub fn wire_status(&self) -> u16 {
        if self.grpc {
            200
        } else {
            self.status
        }
    }

    /// The JSON body (none for gRPC).
    pub fn body(&self) -> Vec<u8> {
        if self.grpc {
            return Vec::new();
        }
        format!(
            "{{\"error\":\"{}\",\"request_id\":\"{}\"}}\n",
            self.message, self.request_id
        )
        .into_bytes()
    }

    /// Calls `field` with each header field of the reply (framing included:
    /// `content-length` of a `body_len`-byte body), in order.
    pub fn each(&self, body_len: usize, mut field: impl FnMut(&'static str, &[u8])) {
        let mut len = itoa::Buffer::new();
        if self.grpc {
            let mut code = itoa::Buffer::new();
            field("content-type", b"application/grpc");
            field(
                "grpc-status",
                code.format(grpc_status(self.status)).as_bytes(),
            );
            // lb's messages are printable ASCII without '%': no escaping.
            field("grpc-message", self.message.as_bytes());
            field(REQUEST_ID, self.request_id.as_bytes());
            return;
        }
        field("content-type", b"application/json");
        field("content-length", len.format(body_len).as_bytes());
        field(REQUEST_ID, self.request_id.as_bytes());
        field("cache-control", b"no-store");
        if let Some(l) = self.location {
            field("location", l.as_bytes());
        }
        if matches!(self.status, 503 | 429) {
            let mut secs = itoa::Buffer::new();
            field(
                "retry-after",
                secs.format(self.retry_after.max(1)).as_bytes(),
            );
        }
    }
}

/// Does the client connection stay open after lb's own reply? Only after a
/// refusal before any attempt (`503` no backend or queue, `429` limits, the
/// `308` to HTTPS), as
/// the client asked: those are cheap to answer again and closing would add
/// connection churn to an overload. After a refused head (`400`, `408`,
/// `413`, `431`) what follows on the connection cannot be trusted to be a
/// request; after failed attempts (`502`, `504`, a local `503`) lb closes as
/// well (the same on every path: the Pingora path cannot keep a connection
/// once an attempt has begun).
pub fn keeps_connection(status: u16, attempted: bool, client_keep_alive: bool) -> bool {
    client_keep_alive && !attempted && matches!(status, 503 | 429 | 308)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_200_with_grpc_status_and_no_body() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(is_grpc(Some(b"Application/GRPC-web")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(None));
        for (http, code) in [
            (502, "14"),
            (503, "14"),
            (504, "4"),
            (408, "4"),
            (429, "8"),
            (413, "8"),
        ] {
            let r = ErrorReply {
                status: http,
                message: "upstream failed",
                request_id: "rid",
                retry_after: 0,
                location: None,
                grpc: true,
            };
            assert_eq!(r.wire_status(), 200);
            assert!(r.body().is_empty());
            let mut fields = Vec::new();
            r.each(0, |n, v| {
                fields.push(format!("{n}: {}", String::from_utf8_lossy(v)))
            });
            assert_eq!(
                fields,
                [
                    "content-type: application/grpc".to_string(),
                    format!("grpc-status: {code}"),
                    "grpc-message: upstream failed".to_string(),
                    "x-request-id: rid".to_string(),
                ]
            );
        }
    }

    #[test]
    fn error_reply_fields_and_body() {
        let r = ErrorReply {
            status: 503,
            message: "no eligible backend",
            request_id: "rid",
            retry_after: 0,
            location: None,
            grpc: false,
        };
        let body = r.body();
        assert_eq!(
            body,
            b"{\"error\":\"no eligible backend\",\"request_id\":\"rid\"}\n"
        );
        let mut fields = Vec::new();
        r.each(body.len(), |n, v| {
            fields.push(format!("{n}: {}", String::from_utf8_lossy(v)))
        });
        assert_eq!(
            fields,
            [
                "content-type: application/json",
                "content-length: 51",
                "x-request-id: rid",
                "cache-control: no-store",
                "retry-after: 1"
            ]
        );
        let mut n = 0;
        ErrorReply { status: 502, ..r }.each(1, |_, _| n += 1);
        assert_eq!(n, 4, "no Retry-After on 502");
    }

    #[test]
    fn connection_after_a_reply() {
        for s in [400, 408, 413, 431, 502, 504] {
            assert!(!keeps_connection(s, false, true), "{s}");
        }
        for s in [503, 429] {
            assert!(keeps_connection(s, false, true), "{s}");
            assert!(
                !keeps_connection(s, false, false),
                "{s}: client asked to close"
            );
            assert!(!keeps_connection(s, true, true), "{s}: after an attempt");
        }
    }
}
