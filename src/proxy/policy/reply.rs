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
}

impl ErrorReply<'_> {
    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
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
    fn error_reply_fields_and_body() {
        let r = ErrorReply {
            status: 503,
            message: "no eligible backend",
            request_id: "rid",
            retry_after: 0,
            location: None,
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
