//! HTTP/1 message framing (RFC 9112 §6), shared by every reader of HTTP/1
//! messages in lb — the proxy's response reader and the health probe — so
//! both decide where a body ends by the same rules: no body for `HEAD`, 1xx,
//! 204 and 304; else `Transfer-Encoding: chunked` (which wins over a
//! `Content-Length` beside it, §6.3); else `Content-Length`; else until
//! close. A `Transfer-Encoding` other than `chunked` alone, or a
//! `Content-Length` that is not one number, is [`Malformed`].
//! Pure (no I/O), unit-tested below and by the property tests in `tests/`.

/// A message lb cannot relay faithfully: malformed head, ambiguous framing
/// or broken chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes the connection.
    Close,
}

/// The framing fields of a response head, gathered in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyFields {
    /// `Content-Length` (equal values repeated are one).
    pub length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The peer will close after this message (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`).
    pub close: bool,
}

impl BodyFields {
    /// Reads the framing fields of `headers`; `http10`: the message's version.
    pub fn of(http10: bool, headers: &[httparse::Header<'_>]) -> Result<BodyFields, Malformed> {
        let mut f = BodyFields {
            close: http10,
            ..BodyFields::default()
        };
        let mut te = false;
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = content_length(h.value).ok_or(Malformed)?;
                if f.length.is_some_and(|m| m != n) {
                    return Err(Malformed);
                }
                f.length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only `chunked` alone is understood (§6.1): lb could not
                // re-encode another coding for its clients.
                te = true;
                f.chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
                if !f.chunked {
                    return Err(Malformed);
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if http10 && t.eq_ignore_ascii_case(b"keep-alive") {
                        f.close = false;
                    }
                }
            }
        }
        f.chunked &= te;
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
        // framing; the connection closes after it.
        f.close |= http10 && te;
        Ok(f)
    }

    /// The body's framing for a response with `status` to a request that
    /// was (`head_request`) or was not a `HEAD`.
    pub fn response_framing(&self, status: u16, head_request: bool) -> Framing {
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Empty
        } else if self.chunked {
            Framing::Chunked
        } else if let Some(n) = self.length {
            Framing::Length(n)
        } else {
            Framing::Close
        }
    }
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6; a list is refused),
/// at most 15 of them.
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Incremental reader of a chunked body: finds where it ends and, when asked,
/// yields the data without the chunk framing.
///
/// Strict RFC 9112 §7.1 syntax: lines end with CRLF only, a size line is hex
/// digits and well-formed extensions (`;name`, `;name=token`,
/// `;name="quoted"`), trailer lines are header fields. lb passes chunk
/// framing on as it was sent, so anything a stricter or laxer reader could
/// split differently (a bare LF, an extension running to an LF) is refused:
/// both sides of lb must see the same chunk boundaries, or a body could hide a
/// request.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    /// Hex digits seen on the current size line.
    digits: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: `;` or the CR may follow.
    SizeWs,
    /// After `;`: whitespace, then an extension name.
    ExtName,
    /// Inside an extension name.
    ExtNameChars,
    /// After the name: whitespace, `=`, `;` or CR.
    ExtAfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    ExtValue,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// After a value: whitespace, `;` or CR.
    ExtAfterValue,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// Final CRLF's LF.
    EndLf,
    Done,
}

/// RFC 9110 `tchar`.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Chunked {
    /// Feeds `input`; data bytes go to `data`. Returns how many bytes of `input`
    /// belong to the body and whether the body ended there.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            if self.state == Data {
                let n = (input.len() - i).min(self.size as usize);
                data(&input[i..i + n]);
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            self.state = self.step(input[i])?;
            i += 1;
        }
        Ok((i, self.state == Done))
    }

    /// The state after byte `b` (any state but `Data` and `Done`).
    fn step(&mut self, b: u8) -> Result<ChunkState, Malformed> {
        use ChunkState::*;
        let ws = b == b' ' || b == b'\t';
        Ok(match (self.state, b) {
            (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                self.size = self.size.checked_mul(16).ok_or(Malformed)? + d;
                self.digits = self.digits.saturating_add(1);
                if self.size > 1 << 48 {
                    return Err(Malformed);
                }
                Size
            }
            (Size, _) if self.digits == 0 => return Err(Malformed),
            (Size | SizeWs, b';') => ExtName,
            (Size | SizeWs, _) if ws => SizeWs,
            // (Whitespace before the CR is unambiguous: accepted.)
            (Size | SizeWs | ExtNameChars | ExtAfterName | ExtToken | ExtAfterValue, b'\r') => {
                SizeLf
            }
            (ExtName, _) if ws => ExtName,
            (ExtName | ExtNameChars, _) if tchar(b) => ExtNameChars,
            (ExtNameChars | ExtAfterName, _) if ws => ExtAfterName,
            (ExtNameChars | ExtAfterName | ExtToken | ExtAfterValue, b';') => ExtName,
            (ExtNameChars | ExtAfterName, b'=') => ExtValue,
            (ExtValue, _) if ws => ExtValue,
            (ExtValue, b'"') => ExtQuoted,
            (ExtValue | ExtToken, _) if tchar(b) => ExtToken,
            (ExtToken | ExtAfterValue, _) if ws => ExtAfterValue,
            (ExtQuoted, b'"') => ExtAfterValue,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted, _) if ws || (0x21..=0x7e).contains(&b) || b >= 0x80 => ExtQuoted,
            (ExtQuotedEscape, _) if ws || (0x21..=0x7e).contains(&b) || b >= 0x80 => ExtQuoted,
            (SizeLf, b'\n') => {
                self.digits = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart | TrailerName, _) if tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if b != b'\n' && b != 0 => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            _ => return Err(Malformed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(raw: &[u8]) -> Result<(u16, BodyFields), Malformed> {
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut storage);
        r.parse(raw).map_err(|_| Malformed)?;
        Ok((
            r.code.unwrap_or(0),
            BodyFields::of(r.version == Some(0), r.headers)?,
        ))
    }

    #[test]
    fn framing_by_rfc_9112() {
        let f = |raw: &[u8], head: bool| {
            let (status, b) = fields(raw).unwrap();
            b.response_framing(status, head)
        };
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Framing::Length(5)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        // Chunked wins over a Content-Length beside it (§6.3).
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(f(both, false), Framing::Chunked);
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n", false), Framing::Close);
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            f(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        assert_eq!(f(b"HTTP/1.1 204 No Content\r\n\r\n", false), Framing::Empty);
        let (_, b) = fields(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert!(b.close);
        let (_, b) = fields(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!b.close);
        let (_, b) = fields(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert!(b.close);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ] {
            assert!(fields(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(content_length(b" 12 "), Some(12));
        assert_eq!(content_length(b"1234567890123456"), None);
    }

    #[test]
    fn chunked_end_and_data_byte_by_byte() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole buffer at once.
        let mut c = Chunked::default();
        let mut data = Vec::new();
        assert_eq!(c.feed(body, |d| data.extend_from_slice(d)), Ok((end, true)));
        assert_eq!(data, b"Wikipedia");
        // One byte per call: the same answer.
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut seen = 0;
        for b in body.chunks(1) {
            let (n, done) = c.feed(b, |d| data.extend_from_slice(d)).unwrap();
            seen += n;
            if done {
                break;
            }
        }
        assert_eq!((seen, &data[..]), (end, &b"Wikipedia"[..]));
        // Extensions (token and quoted values, whitespace) and trailers.
        let ok = b"1 ;a ; b = c;d=\"x;\\\"y\"\r\nA\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(Chunked::default().feed(ok, |_| {}), Ok((ok.len(), true)));
        // Only strict syntax: a reader that splits these otherwise must not
        // see another body than lb does.
        for bad in [
            &b"x\r\n"[..],
            b"1\r\nAB\r\n",
            b"fffffffffffffffff\r\n",
            b"1\nA\r\n",                 // bare LF after the size
            b"1\r\nA\n",                 // bare LF after data
            b"2;\nxx\r\n",               // an extension ending at an LF
            b"\r\n",                     // an empty size line
            b"1;a=\"\r\n",               // an unterminated quoted value
            b"1;\r\n",                   // an extension without a name
            b"0\r\nnot a field\r\n\r\n", // a trailer that is no field
            b"0\r\n\n",                  // a bare LF at the end
        ] {
            assert!(
                Chunked::default().feed(bad, |_| {}).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
