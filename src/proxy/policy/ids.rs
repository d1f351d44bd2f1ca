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
    hex32(rand::thread_rng().gen::<u128>())
}

/// `n` as 32 lowercase hex digits (`format!("{n:032x}")` without the
/// formatting machinery: every request without an id of its own makes one).
fn hex32(n: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = vec![0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are ASCII: never the empty fallback.
    String::from_utf8(out).unwrap_or_default()
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
        for n in [
            0,
            0xabc,
            u128::MAX,
            1 << 127,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(hex32(n), format!("{n:032x}"));
        }
    }
}
