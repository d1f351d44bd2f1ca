//! Request ids: a client's sane `X-Request-Id` is kept, anything else is
//! replaced by a fresh random one.

use rand::Rng;

/// `X-Request-Id`.
pub const REQUEST_ID: &str = "x-request-id";

/// A client-sent request id is kept when it is 1–128 characters of
/// `[A-Za-z0-9._:-]`; anything else (empty, long, spaces, quotes) is replaced
/// so logs and upstream services never receive attacker-shaped ids.
pub fn sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh 128-bit random request id, 32 lowercase hex characters.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// The request's id: `client`'s if sane, else a new one.
pub fn request_id(client: Option<&[u8]>) -> String {
    match client {
        // Sane ids are ASCII, so this conversion cannot fail.
        Some(v) if sane_request_id(v) => String::from_utf8_lossy(v).into_owned(),
        _ => new_request_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_sanity() {
        assert!(sane_request_id(b"abc-123_x.y:z"));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(b"quote\""));
        assert!(!sane_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(sane_request_id(id.as_bytes()));
        assert_ne!(id, new_request_id());
        assert_eq!(request_id(Some(b"ok-1")), "ok-1");
        assert_eq!(request_id(Some(b"bad id")).len(), 32);
    }
}
