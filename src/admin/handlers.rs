//! Admin endpoints (SPEC "Admin API"). Bodies are parsed here so malformed
//! JSON is a `400` and well-formed but unacceptable values a `422`; nothing
//! changes unless the whole request is valid. A change answers once
//! `admin.state_file` holds it: `200`, or `507` with `"applied": true` when
//! the write failed (the change is in effect, but would not survive a
//! restart).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{error, if_match, with_etag, Shared};
use crate::config::Algorithm;
use crate::control::{parse_mode, weights_of, ControlError, StateFileError};
use crate::state::{Backend, Snapshot};

type Peer = ConnectInfo<SocketAddr>;

/// One entry of `GET /admin/backends`.
#[derive(Serialize)]
struct BackendView {
    name: String,
    /// The `resolve = "all"` group it is a member of (null otherwise).
    group: Option<String>,
    addr: String,
    resolved: Option<String>,
    weight: u32,
    effective_weight: u32,
    /// Share under slow start (0.1..=1.0; 1.0 when not ramping).
    slow_start_ratio: f64,
    health: &'static str,
    circuit: &'static str,
    mode: &'static str,
    in_flight: i64,
    /// 0 = unlimited.
    max_in_flight: u32,
    requests_total: u64,
    errors_total: u64,
    ewma_ms: f64,
}

fn view(b: &Backend, s: &crate::state::Snapshot, now: Instant) -> BackendView {
    let st = &b.stats;
    BackendView {
        name: st.name.to_string(),
        group: b.group.as_deref().map(str::to_string),
        addr: b.configured_addr.clone(),
        resolved: b.addr.map(|a| a.to_string()),
        weight: b.weight,
        effective_weight: b.effective_weight(s.algorithm),
        slow_start_ratio: f64::from(st.slow_start_ratio(s.config.balancer.slow_start, now))
            / 1000.0,
        health: if st.healthy.load(Ordering::Relaxed) {
            "up"
        } else {
            "down"
        },
        circuit: st.circuit.state(&s.config.circuit_breaker, now).as_str(),
        mode: b.mode.as_str(),
        in_flight: st.in_flight(),
        max_in_flight: b.max_in_flight,
        requests_total: st.requests_total.load(Ordering::Relaxed),
        errors_total: st.errors_total.load(Ordering::Relaxed),
        ewma_ms: (st.ewma.get(now).as_secs_f64() * 1e6).round() / 1e3,
    }
}

/// A 200 whose body was built from `snap`, tagged with `snap`'s version.
fn ok(snap: &Snapshot, body: Value) -> Response {
    with_etag(Json(body).into_response(), snap.version)
}

fn failed(e: ControlError) -> Response {
    let status = match e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Stale(_) => StatusCode::PRECONDITION_FAILED,
        ControlError::NoConfigFile => StatusCode::CONFLICT,
        ControlError::Invalid(_) | ControlError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, &e.to_string())
}

/// `507`: the change is applied in memory but `admin.state_file` does not
/// hold it. Tagged with the current version, as a `200` would be.
fn unsaved(snap: &Snapshot, e: StateFileError) -> Response {
    let body = json!({ "error": e.to_string(), "applied": true });
    let r = (StatusCode::INSUFFICIENT_STORAGE, Json(body)).into_response();
    with_etag(r, snap.version)
}

/// A refused request body: status and message.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// Parses a JSON object body: `400` if not JSON, `422` if not an object.
fn object(body: &Bytes) -> Result<Map<String, Value>, Reject> {
    match serde_json::from_slice::<Value>(body) {
        Err(e) => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}"),
        )),
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected a JSON object".into(),
        )),
    }
}

/// A required string field of a one-field object body.
fn field(body: &Bytes, key: &str) -> Result<String, Reject> {
    let m = object(body)?;
    match m.get(key) {
        Some(Value::String(s)) if m.len() == 1 => Ok(s.clone()),
        _ => Err(Reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("expected {{\"{key}\": \"...\"}}"),
        )),
    }
}

pub(super) async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::exposition::render_with_pool(&s.control.state, s.pool.as_deref()),
    )
        .into_response()
}

pub(super) async fn get_weights(State(s): State<Shared>) -> Response {
    let snap = s.control.state.load();
    ok(&snap, json!(weights_of(&snap)))
}

pub(super) async fn put_weights(
    State(s): State<Shared>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let changes = match object(&body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    match s
        .control
        .set_weights(&changes, if_match(&headers), &peer.to_string())
    {
        Ok(_) => {
            let saved = s.control.persisted().await;
            let snap = s.control.state.load();
            match saved {
                Ok(()) => ok(&snap, json!(weights_of(&snap))),
                Err(e) => unsaved(&snap, e),
            }
        }
        Err(e) => failed(e),
    }
}

pub(super) async fn get_backends(State(s): State<Shared>) -> Response {
    let snap = s.control.state.load();
    let now = Instant::now();
    let list: Vec<BackendView> = snap.backends.iter().map(|b| view(b, &snap, now)).collect();
    ok(&snap, json!(list))
}

pub(super) async fn put_mode(
    State(s): State<Shared>,
    ConnectInfo(peer): Peer,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = match field(&body, "mode") {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let Some(mode) = parse_mode(&mode) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("mode {mode:?} is not one of active, drain, maintenance"),
        );
    };
    if let Err(e) = s
        .control
        .set_mode(&name, mode, if_match(&headers), &peer.to_string())
    {
        return failed(e);
    }
    let saved = s.control.persisted().await;
    let snap = s.control.state.load();
    if let Err(e) = saved {
        return unsaved(&snap, e);
    }
    let now = Instant::now();
    // A backend or member: its view; a group: its members' views.
    match (snap.index_of(&name), snap.targets(&name)) {
        (Some(i), _) => ok(&snap, json!(view(&snap.backends[i], &snap, now))),
        (None, Some(members)) => {
            let views: Vec<BackendView> = members
                .iter()
                .map(|&i| view(&snap.backends[i], &snap, now))
                .collect();
            ok(&snap, json!(views))
        }
        (None, None) => failed(ControlError::NotFound(name)),
    }
}

/// `GET /admin/tls`: each certificate served (an empty list without `[tls]`),
/// `[tls.acme]`'s last, with its next renewal.
pub(super) async fn get_tls(State(s): State<Shared>) -> Response {
    let snap = s.control.state.load();
    let now = crate::tls::unix_now();
    let mut list: Vec<Value> = snap.config.tls.as_ref().map_or_else(Vec::new, |t| {
        t.loaded
            .certs()
            .iter()
            .zip(&t.certificates)
            .map(|(c, f)| {
                json!({
                    "names": c.names,
                    "not_after": c.not_after_rfc3339(),
                    "days_left": c.days_left(now),
                    "issuer": c.issuer,
                    "source": c.source,
                    "cert": f.cert,
                })
            })
            .collect()
    });
    let acme = snap.config.tls.as_ref().and_then(|t| t.acme.as_ref());
    if let (Some(a), Some(i)) = (acme, crate::tls::acme::current()) {
        let c = &i.info;
        list.push(json!({
            "names": c.names,
            "not_after": c.not_after_rfc3339(),
            "days_left": c.days_left(now),
            "issuer": c.issuer,
            "source": c.source,
            "cert": a.state_dir.join(crate::tls::acme::store::CERTIFICATE),
            "next_renewal": crate::tls::certs::rfc3339(i.next_renewal),
        }));
    }
    ok(&snap, json!(list))
}

pub(super) async fn get_algorithm(State(s): State<Shared>) -> Response {
    let snap = s.control.state.load();
    ok(&snap, json!({ "algorithm": snap.algorithm.as_str() }))
}

pub(super) async fn put_algorithm(
    State(s): State<Shared>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = match field(&body, "algorithm") {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let Some(a) = Algorithm::parse(&name) else {
        let all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("algorithm {name:?} is not one of {}", all.join(", ")),
        );
    };
    match s
        .control
        .set_algorithm(a, if_match(&headers), &peer.to_string())
    {
        Ok(()) => {
            let saved = s.control.persisted().await;
            let snap = s.control.state.load();
            match saved {
                Ok(()) => ok(&snap, json!({ "algorithm": snap.algorithm.as_str() })),
                Err(e) => unsaved(&snap, e),
            }
        }
        Err(e) => failed(e),
    }
}

pub(super) async fn reload(
    State(s): State<Shared>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> Response {
    match s
        .control
        .reload_if(&peer.to_string(), if_match(&headers))
        .await
    {
        Ok(()) => {
            let saved = s.control.persisted().await;
            let snap = s.control.state.load();
            match saved {
                Ok(()) => ok(&snap, json!({ "status": "reloaded" })),
                Err(e) => unsaved(&snap, e),
            }
        }
        Err(e) => failed(e),
    }
}
