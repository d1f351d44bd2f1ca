//! Arbitrary bytes as a backend's response head: whenever lb accepts it, the
//! head it writes for the client never has both Content-Length and
//! Transfer-Encoding, never chunked for an HTTP/1.0 client, and states the
//! framing lb relays by (invariants b of tests/framing_props.rs). The first
//! byte picks the client side (HTTP/1.0, HEAD, keep-alive, lb's fields).
#![no_main]

use lb::proxy::h1::response::ClientSide;
use lb::proxy::policy::respond::Decoration;
use lb_fuzz::checks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, raw)) = data.split_first() else {
        return;
    };
    let client = ClientSide {
        http10: mode & 1 != 0,
        head_method: mode & 2 != 0,
        keep_alive: mode & 4 != 0,
        decoration: Decoration {
            request_id: "rid-1",
            backend: (mode & 8 != 0).then_some(("x-backend", &b"app-1"[..])),
            set_cookie: (mode & 16 != 0).then_some("lb_sticky=abc; Path=/"),
        },
    };
    if let Err(e) = checks::check_response(raw, client) {
        if !checks::ignored(&e) {
            panic!("{e}\n  client: {client:?}");
        }
    }
});
