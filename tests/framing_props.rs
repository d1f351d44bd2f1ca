//! Property tests of the framing lb writes (SPEC "Framing and hop-by-hop
//! fields"): the upstream request head `request::parse` + `finish` encode,
//! the client's response head `response::parse` encodes, and the chunked
//! decoder. Inputs come from grammars biased toward the dangerous cases
//! (duplicate and odd Content-Length, Transfer-Encoding, Connection naming
//! fields, absolute-form targets, HTTP/1.0); every head lb writes is read back
//! with httparse and judged by `fuzz/src/checks.rs`, the same checks the fuzz
//! targets run (`fuzz/README.md`).
//!
//! Deterministic: a fixed seed, no persistence file. Regressions found by
//! these tests and by fuzzing are plain `#[test]`s at the end.

#[allow(dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use checks::{ChunkSpec, ReqOutcome, RespOutcome};
use lb::proxy::h1::response::ClientSide;
use lb::proxy::policy::forward::StickyField;
use lb::proxy::policy::respond::Decoration;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]))
}

/// Runs `test` on `cases` inputs of `strategy`; panics with the shrunk failure.
fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(cases).run(&strategy, test) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------- requests

/// `Content-Length` forms: the body's length written plainly or oddly, or
/// some other value.
#[derive(Debug, Clone)]
enum Cl {
    Exact,
    Zeros,
    Spaces,
    Other(&'static str),
}

#[derive(Debug, Clone)]
enum ReqField {
    Host(String),
    Cl(Cl),
    Te(&'static str),
    Connection(Vec<String>, &'static str),
    Xff(String),
    RequestId(String),
    Hop(&'static str, String),
    Other(String, String),
}

#[derive(Debug, Clone)]
struct ReqCase {
    method: String,
    target: String,
    version: &'static str,
    fields: Vec<(ReqField, u8)>,
    eol: &'static str,
    body: Vec<u8>,
    tail: &'static str,
    sticky: u8,
    client: Option<IpAddr>,
}

/// A field name in lower, Title or UPPER case.
fn cased(name: &str, case: u8) -> String {
    match case % 3 {
        0 => name.to_ascii_lowercase(),
        1 => name
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-"),
        _ => name.to_ascii_uppercase(),
    }
}

impl ReqCase {
    fn bytes(&self) -> Vec<u8> {
        let eol = self.eol;
        let mut s = format!("{} {} {}{eol}", self.method, self.target, self.version);
        for (f, case) in &self.fields {
            let (name, value) = match f {
                ReqField::Host(v) => ("host".to_string(), v.clone()),
                ReqField::Cl(cl) => {
                    let n = self.body.len();
                    let v = match cl {
                        Cl::Exact => n.to_string(),
                        Cl::Zeros => format!("00{n}"),
                        Cl::Spaces => format!("  {n} "),
                        Cl::Other(v) => v.to_string(),
                    };
                    ("content-length".to_string(), v)
                }
                ReqField::Te(v) => ("transfer-encoding".to_string(), v.to_string()),
                ReqField::Connection(tokens, sep) => ("connection".to_string(), tokens.join(sep)),
                ReqField::Xff(v) => ("x-forwarded-for".to_string(), v.clone()),
                ReqField::RequestId(v) => ("x-request-id".to_string(), v.clone()),
                ReqField::Hop(n, v) => (n.to_string(), v.clone()),
                ReqField::Other(n, v) => (n.clone(), v.clone()),
            };
            s += &format!("{}: {value}{eol}", cased(&name, *case));
        }
        s += eol;
        let mut b = s.into_bytes();
        b.extend_from_slice(&self.body);
        b.extend_from_slice(self.tail.as_bytes());
        b
    }

    fn sticky(&self) -> StickyField<'static> {
        match self.sticky % 3 {
            0 => StickyField::None,
            1 => StickyField::Cookie("lb_sticky"),
            _ => StickyField::Header("x-session-id"),
        }
    }
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
        ])
        .prop_map(String::from),
        1 => "[A-Z]{1,7}",
        1 => "[a-zA-Z!#$%&'*+.^_`|~-]{1,6}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "/[a-zA-Z0-9._~%!$&'()*+,;=:@/-]{0,16}(\\?[a-z0-9=&/?]{0,8})?",
        1 => Just("*".to_string()),
        4 => "(http|https|HTTP|h2c|a\\+b\\.c-d)://([a-z]{1,4}(:[a-z]{1,3})?@)?[a-z0-9.-]{1,10}(:[0-9]{0,5})?(/[a-z0-9/.]{0,8}|\\?[a-z=&]{0,6}|/?\\?[a-z:/?@]{0,6})?",
        1 => "[a-z0-9:./@?-]{1,12}",
        1 => "(http|1x|-)://[a-z@]{0,3}",
    ]
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "content-length", "Content-Length", "host", "HOST", "transfer-encoding",
            "keep-alive", "Keep-Alive", "close", "CLOSE", "upgrade", "Upgrade", "x-secret",
            "x-forwarded-for", "X-Forwarded-For", "x-request-id", "x-real-ip", "x-forwarded-host",
            "accept", "cookie", "lb_sticky", "x-session-id", "X-Session-Id", "te", "trailer",
            "expect", "user-agent", "", " ", "\tx-secret",
        ])
        .prop_map(String::from),
        2 => "[a-zA-Z][a-zA-Z0-9-]{0,8}",
    ]
}

fn req_field() -> impl Strategy<Value = ReqField> {
    prop_oneof![
        2 => prop_oneof![
            Just("ex.test".to_string()),
            Just("a.example:8080".to_string()),
            Just("".to_string()),
            "[a-z0-9.:-]{1,12}",
        ]
        .prop_map(ReqField::Host),
        4 => prop_oneof![
            4 => Just(Cl::Exact),
            1 => Just(Cl::Zeros),
            1 => Just(Cl::Spaces),
            2 => prop::sample::select(vec![
                "0", "1", "3", "5", "-1", "+3", "1,1", "1, 1", "0x5", "", "3 3", "65536",
                "65537", "999999999999999", "9999999999999999", "\t2",
            ])
            .prop_map(Cl::Other),
        ]
        .prop_map(ReqField::Cl),
        2 => prop::sample::select(vec!["chunked", "Chunked", "gzip, chunked", "identity", "", "chunked, chunked"])
            .prop_map(ReqField::Te),
        4 => (
            prop::collection::vec(token(), 1..4),
            prop::sample::select(vec![",", ", ", " , ", ",,"]),
        )
            .prop_map(|(t, s)| ReqField::Connection(t, s)),
        2 => prop_oneof![Just("10.0.0.1".to_string()), Just("".to_string()), "[0-9a-z.:, ]{1,15}"]
            .prop_map(ReqField::Xff),
        1 => prop_oneof![Just("client-id-1".to_string()), Just("bad id".to_string()), "[ -~]{0,10}"]
            .prop_map(ReqField::RequestId),
        2 => (
            prop::sample::select(vec![
                "keep-alive", "te", "upgrade", "trailer", "proxy-connection", "expect",
            ]),
            prop_oneof![Just("100-continue".to_string()), Just("websocket".to_string()), "[ -~]{0,8}"],
        )
            .prop_map(|(n, v)| ReqField::Hop(n, v)),
        5 => (
            prop_oneof![
                prop::sample::select(vec![
                    "accept", "x-secret", "user-agent", "cookie", "x-session-id", "content-type",
                    "x-real-ip", "x-forwarded-proto", "x-forwarded-host", "x-foo",
                ])
                .prop_map(String::from),
                "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,10}",
            ],
            prop_oneof![
                Just("lb_sticky=abc; a=1".to_string()),
                "[ -~]{0,12}",
                prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..8)
                    .prop_map(|v| String::from_utf8_lossy(&v).into_owned()),
            ],
        )
            .prop_map(|(n, v)| ReqField::Other(n, v)),
    ]
}

fn req_case() -> impl Strategy<Value = ReqCase> {
    let hosts = prop_oneof![
        1 => Just(vec![]),
        8 => Just(vec![(ReqField::Host("ex.test".into()), 0u8)]),
        1 => Just(vec![
            (ReqField::Host("ex.test".into()), 1u8),
            (ReqField::Host("other.test".into()), 0u8),
        ]),
    ];
    let fields = (hosts, prop::collection::vec((req_field(), 0u8..3), 0..7))
        .prop_flat_map(|(mut h, f)| {
            h.extend(f);
            Just(h).prop_shuffle()
        });
    (
        method(),
        target(),
        prop_oneof![3 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")],
        fields,
        prop_oneof![9 => Just("\r\n"), 1 => Just("\n")],
        prop::collection::vec(any::<u8>(), 0..24),
        prop_oneof![3 => Just(""), 1 => Just("GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")],
        0u8..3,
        prop_oneof![
            Just(None),
            Just(Some(IpAddr::from([127, 0, 0, 9]))),
            Just(Some("::1".parse().unwrap())),
        ],
    )
        .prop_map(|(method, target, version, fields, eol, body, tail, sticky, client)| ReqCase {
            method,
            target,
            version,
            fields,
            eol,
            body,
            tail,
            sticky,
            client,
        })
}

/// Outcome counts, printed so a run shows the grammar reaches the fast path.
fn report<K: std::fmt::Debug + Ord>(name: &str, counts: &RefCell<BTreeMap<K, u32>>) {
    eprintln!("{name}: {:?}", counts.borrow());
}

#[test]
fn upstream_request_heads_are_framed_by_lb() {
    const CASES: u32 = 6000;
    let counts = RefCell::new(BTreeMap::new());
    run(CASES, req_case(), |case| {
        let raw = case.bytes();
        match checks::check_request(&raw, case.sticky(), case.client) {
            Ok(o) => {
                *counts.borrow_mut().entry(o).or_insert(0u32) += 1;
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(format!("{e}\n  sticky: {:?}, client: {:?}", case.sticky(), case.client))),
        }
    });
    report("requests", &counts);
    let c = counts.borrow();
    let forwarded = c.get(&ReqOutcome::Forwarded).copied().unwrap_or(0);
    let refused = c.get(&ReqOutcome::Rejected(400)).copied().unwrap_or(0);
    assert!(forwarded > CASES / 5 && refused > CASES / 10, "grammar coverage: {c:?}");
}

// --------------------------------------------------------------- responses

#[derive(Debug, Clone)]
enum RespField {
    Cl(&'static str),
    Te(&'static str),
    Connection(Vec<&'static str>),
    Named(&'static str, String),
}

#[derive(Debug, Clone)]
struct RespCase {
    version: &'static str,
    status: u16,
    reason: String,
    fields: Vec<(RespField, u8)>,
    eol: &'static str,
    http10: bool,
    head_method: bool,
    keep_alive: bool,
    backend: bool,
    set_cookie: bool,
}

impl RespCase {
    fn bytes(&self) -> Vec<u8> {
        let eol = self.eol;
        let mut s = format!("{} {:03} {}{eol}", self.version, self.status, self.reason);
        for (f, case) in &self.fields {
            let (name, value) = match f {
                RespField::Cl(v) => ("content-length".to_string(), v.to_string()),
                RespField::Te(v) => ("transfer-encoding".to_string(), v.to_string()),
                RespField::Connection(t) => ("connection".to_string(), t.join(", ")),
                RespField::Named(n, v) => (n.to_string(), v.clone()),
            };
            s += &format!("{}: {value}{eol}", cased(&name, *case));
        }
        s += eol;
        s += "body";
        s.into_bytes()
    }

    fn client(&self) -> ClientSide<'static> {
        ClientSide {
            http10: self.http10,
            head_method: self.head_method,
            keep_alive: self.keep_alive,
            decoration: Decoration {
                request_id: "rid-1",
                backend: self.backend.then_some(("x-backend", &b"app-1"[..])),
                set_cookie: self.set_cookie.then_some("lb_sticky=abc; Path=/"),
            },
        }
    }
}

fn resp_field() -> impl Strategy<Value = RespField> {
    prop_oneof![
        4 => prop::sample::select(vec!["0", "2", "5", "005", " 7 ", "1,1", "-1", "x", "", "999999999999999"])
            .prop_map(RespField::Cl),
        3 => prop::sample::select(vec!["chunked", "Chunked", " chunked ", "gzip", "gzip, chunked", "identity"])
            .prop_map(RespField::Te),
        3 => prop::collection::vec(
            prop::sample::select(vec![
                "close", "keep-alive", "Keep-Alive", "upgrade", "x-foo", "x-secret", "content-length",
                "transfer-encoding", "x-request-id", "x-backend", "set-cookie", "cache-control",
            ]),
            1..3,
        )
        .prop_map(RespField::Connection),
        6 => (
            prop::sample::select(vec![
                "keep-alive", "upgrade", "trailer", "proxy-connection", "x-request-id", "x-backend",
                "set-cookie", "x-foo", "x-secret", "content-type", "cache-control", "te",
            ]),
            "[ -~]{0,10}",
        )
            .prop_map(|(n, v)| RespField::Named(n, v)),
    ]
}

fn resp_case() -> impl Strategy<Value = RespCase> {
    (
        prop_oneof![3 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")],
        prop_oneof![
            8 => prop::sample::select(vec![100u16, 101, 103, 200, 201, 204, 206, 301, 304, 404, 500, 503]),
            2 => 100u16..600,
            1 => 0u16..100,
        ],
        "[A-Za-z ]{0,8}",
        prop::collection::vec((resp_field(), 0u8..3), 0..6),
        prop_oneof![9 => Just("\r\n"), 1 => Just("\n")],
        (any::<bool>(), prop::bool::weighted(0.2), any::<bool>(), any::<bool>(), prop::bool::weighted(0.3)),
    )
        .prop_map(
            |(version, status, reason, fields, eol, (http10, head_method, keep_alive, backend, set_cookie))| {
                RespCase {
                    version,
                    status,
                    reason,
                    fields,
                    eol,
                    http10,
                    head_method,
                    keep_alive,
                    backend,
                    set_cookie,
                }
            },
        )
}

#[test]
fn client_response_heads_are_framed_by_lb() {
    const CASES: u32 = 6000;
    let counts = RefCell::new(BTreeMap::new());
    run(CASES, resp_case(), |case| {
        let raw = case.bytes();
        match checks::check_response(&raw, case.client()) {
            Ok(o) => {
                *counts.borrow_mut().entry(o).or_insert(0u32) += 1;
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(format!("{e}\n  client: {:?}", case.client()))),
        }
    });
    report("responses", &counts);
    let c = counts.borrow();
    let forwarded: u32 = c
        .iter()
        .filter(|(k, _)| matches!(k, RespOutcome::Forwarded(_)))
        .map(|(_, v)| v)
        .sum();
    assert!(forwarded > CASES / 4, "grammar coverage: {c:?}");
}

// ----------------------------------------------------------------- chunked

fn chunk_spec() -> impl Strategy<Value = ChunkSpec> {
    (
        prop::collection::vec(any::<u8>(), 0..40),
        prop_oneof![3 => Just(None), 1 => "[a-z]{1,4}(=[a-z0-9\"]{0,5})?( ?; ?[a-z]{1,3})?".prop_map(Some)],
        any::<bool>(),
        prop_oneof![4 => Just(0usize), 1 => 1usize..6],
    )
        .prop_map(|(data, ext, upper_hex, leading_zeros)| ChunkSpec { data, ext, upper_hex, leading_zeros })
}

fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![3 => 1usize..4, 2 => 1usize..40, 1 => 40usize..400], 1..8)
}

#[test]
fn chunked_bodies_decode_to_their_data_and_end_where_they_end() {
    let strategy = (
        prop::collection::vec(chunk_spec(), 0..8),
        prop_oneof![3 => Just(None), 1 => Just(Some("ext=1".to_string()))],
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,10}"), 0..3),
        prop_oneof![
            Just(Vec::new()),
            Just(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 1..20),
        ],
        splits(),
    );
    run(3000, strategy, |(chunks, last_ext, trailers, tail, splits)| {
        let data: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        let encoding = checks::encode_chunked(&chunks, last_ext.as_deref(), &trailers);
        checks::check_chunked_roundtrip(&encoding, &data, &tail, &splits).map_err(TestCaseError::fail)
    });
}

#[test]
fn chunked_decoder_on_arbitrary_bytes_never_panics_and_ignores_splits() {
    let byte = prop_oneof![
        4 => prop::sample::select(b"0123456789abcdefABCDEF;= \t\r\n\r\nx".to_vec()),
        1 => any::<u8>(),
    ];
    let strategy = (prop::collection::vec(byte, 0..80), splits());
    run(6000, strategy, |(input, splits)| {
        checks::check_chunked_arbitrary(&input, &splits).map_err(TestCaseError::fail)
    });
}

// ------------------------------------------------------------- regressions
