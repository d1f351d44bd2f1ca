//! The chunked decoder (invariants c of tests/framing_props.rs). Even first
//! byte: the rest is arbitrary input, fed at once and in pieces (sizes from
//! the second byte): no panic, the same answer either way. Odd first byte:
//! the rest is data, cut into chunks (sizes from the second byte), encoded
//! with extensions and a trailer, followed by a tail: it decodes back to the
//! data and ends exactly where the encoding ends. Both: wherever lb's
//! decoder says a body ends, a strict RFC 9112 parser agrees.
#![no_main]

use lb_fuzz::checks::{self, ChunkSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [mode, seed, rest @ ..] = data else {
        return;
    };
    let splits: Vec<usize> = (0..4).map(|k| 1 + ((usize::from(*seed) >> (2 * k)) & 3) * 7).collect();
    if mode & 1 == 0 {
        if let Err(e) = checks::check_chunked_arbitrary(rest, &splits)
            .and_then(|()| checks::check_chunked_strict(rest))
        {
            if !checks::ignored(&e) {
                panic!("{e}");
            }
        }
        return;
    }
    // The tail: whatever follows the first `|` in the input (or nothing).
    let (body, tail) = match rest.iter().position(|&b| b == b'|') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut k = 0usize;
    while at < body.len() {
        let n = (1 + (usize::from(seed.rotate_left(k as u32)) % 23)).min(body.len() - at);
        chunks.push(ChunkSpec {
            data: body[at..at + n].to_vec(),
            ext: (mode & 2 != 0 && k % 2 == 0).then(|| "a=\"b;c\"".to_string()),
            upper_hex: mode & 4 != 0,
            leading_zeros: usize::from(mode >> 5),
        });
        at += n;
        k += 1;
    }
    let trailers = if mode & 8 != 0 {
        vec![("X-Trailer".to_string(), "1".to_string())]
    } else {
        vec![]
    };
    let last_ext = (mode & 16 != 0).then_some("last");
    let encoding = checks::encode_chunked(&chunks, last_ext, &trailers);
    let mut whole = encoding.clone();
    whole.extend_from_slice(tail);
    if let Err(e) = checks::check_chunked_roundtrip(&encoding, body, tail, &splits)
        .and_then(|()| checks::check_chunked_strict(&whole))
    {
        if !checks::ignored(&e) {
            panic!("{e}");
        }
    }
});
