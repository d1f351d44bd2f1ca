//! `GET /admin/pool`, `PUT /admin/pool/size`, `POST /admin/pool/rollout`
//! (SPEC "The pool"). Without a `[pool]` they answer 404. Each accepted
//! change writes one audit line, like the other operator actions. A rollout
//! naming a `command` is refused `403` unless the running config says
//! `[pool] allow_rollout_command = true` (SPEC "Admin hardening"): otherwise
//! the admin token alone would let its holder run any program as lb.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{error, Shared};
use crate::pool::{Pool, PoolError, Version};

type Peer = ConnectInfo<SocketAddr>;

/// A refused request: status and message, answered as a JSON error.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

impl From<PoolError> for Refused {
    fn from(e: PoolError) -> Self {
        let status = match e {
            PoolError::Size { .. } => StatusCode::BAD_REQUEST,
            PoolError::Spec(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PoolError::RolloutRunning { .. } => StatusCode::CONFLICT,
        };
        Refused(status, e.to_string())
    }
}

fn bad(msg: &str) -> Refused {
    Refused(StatusCode::BAD_REQUEST, msg.to_string())
}

fn pool(s: &Shared) -> Result<&Pool, Refused> {
    s.pool
        .as_deref()
        .ok_or_else(|| Refused(StatusCode::NOT_FOUND, "no [pool] is configured".into()))
}

/// `[pool] allow_rollout_command` of the running config (a reload changes it).
fn commands_allowed(s: &Shared) -> bool {
    let snap = s.control.state.load();
    snap.config
        .pool
        .as_ref()
        .is_some_and(|p| p.allow_rollout_command)
}

fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Refused> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("expected a JSON object")),
        Err(e) => Err(bad(&format!("malformed JSON: {e}"))),
    }
}

pub(super) async fn get_pool(State(s): State<Shared>) -> Response {
    match pool(&s) {
        Ok(p) => Json(p.view()).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `{"size": n}`: the pool's target size, within `min_size..=max_size`.
pub(super) async fn put_size(
    State(s): State<Shared>,
    ConnectInfo(peer): Peer,
    body: Bytes,
) -> Response {
    set_size(&s, peer, &body).unwrap_or_else(IntoResponse::into_response)
}

fn set_size(s: &Shared, peer: SocketAddr, body: &Bytes) -> Result<Response, Refused> {
    let p = pool(s)?;
    let m = json_object(body)?;
    let size = match (m.get("size").and_then(Value::as_u64), m.len()) {
        (Some(n), 1) => u32::try_from(n).unwrap_or(u32::MAX),
        _ => return Err(bad("expected {\"size\": <integer>}")),
    };
    let old = p.view().size;
    let view = p.set_size(size)?;
    tracing::info!(target: "audit", what = "pool size", old = %old, new = %size,
        peer = %peer, "admin change");
    Ok(Json(view).into_response())
}

/// `{"image": "..."}` (docker) or `{"command": [...]}` (process, when
/// allowed) → 202; the rollout's progress shows in `GET /admin/pool`.
pub(super) async fn post_rollout(
    State(s): State<Shared>,
    ConnectInfo(peer): Peer,
    body: Bytes,
) -> Response {
    rollout(&s, peer, &body).unwrap_or_else(IntoResponse::into_response)
}

fn rollout(s: &Shared, peer: SocketAddr, body: &Bytes) -> Result<Response, Refused> {
    let p = pool(s)?;
    let m = json_object(body)?;
    if m.contains_key("command") && !commands_allowed(s) {
        tracing::warn!(target: "audit", what = "pool rollout", peer = %peer,
            "admin change refused: a command rollout needs [pool] allow_rollout_command = true");
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "rollouts with a command are off; set [pool] allow_rollout_command = true to allow them"
                .into(),
        ));
    }
    let version = match (m.get("image"), m.get("command"), m.len()) {
        (Some(Value::String(i)), None, 1) if !i.trim().is_empty() => Version::Image(i.clone()),
        (None, Some(Value::Array(a)), 1) => {
            let argv: Option<Vec<String>> =
                a.iter().map(|v| v.as_str().map(String::from)).collect();
            match argv {
                Some(v) if !v.is_empty() && !v[0].is_empty() => Version::Command(v),
                _ => return Err(bad("command must be a non-empty list of strings")),
            }
        }
        _ => {
            return Err(bad(
                "expected {\"image\": \"...\"} or {\"command\": [\"...\", ...]}",
            ))
        }
    };
    let what = format!("{version:?}");
    let view = p.rollout(version)?;
    tracing::info!(target: "audit", what = "pool rollout", new = %what, peer = %peer,
        "admin change");
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
