//! Arbitrary bytes as a client's request head (and body): whenever lb's
//! parser accepts it for the fast path, the upstream request it writes must
//! be exactly one request, framed by lb, with no hop-by-hop or
//! Connection-named field, one Host and origin-form target (invariants a of
//! tests/framing_props.rs). The first byte picks the stickiness and the
//! client address.
#![no_main]

use std::net::IpAddr;

use lb::proxy::policy::forward::StickyField;
use lb_fuzz::checks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, raw)) = data.split_first() else {
        return;
    };
    let sticky = match mode % 3 {
        0 => StickyField::None,
        1 => StickyField::Cookie("lb_sticky"),
        _ => StickyField::Header("x-session-id"),
    };
    let client: Option<IpAddr> = match (mode / 3) % 3 {
        0 => None,
        1 => Some([127, 0, 0, 9].into()),
        _ => Some("::1".parse().unwrap()),
    };
    if let Err(e) = checks::check_request(raw, sticky, client) {
        if !checks::ignored(&e) {
            panic!("{e}\n  sticky: {sticky:?}, client: {client:?}");
        }
    }
});
