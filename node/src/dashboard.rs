//! The operator dashboard: pending proposals with their agent, delegation chain, tool,
//! arguments, each argument's provenance, the watchdog's verdict and the time left;
//! approve, reject and cancel, signed in the browser with the operator's key
//! (WebCrypto Ed25519) or by `bulwark proposals`.
//!
//! Bound to 127.0.0.1 by default. Bound anywhere else it refuses to start without a
//! bearer token, and then every API call must carry it. The server never sees an
//! operator's private key: it checks signatures against the runtime's operator keys.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bulwark_capabilities::{Approval, Decision};
use bulwark_runtime::{Proposal, ProposalError, ProposalState, Runtime, SignedDecision};
use serde_json::{Value, json};

const PAGE: &str = include_str!("dashboard.html");

/// Where and how the dashboard listens.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// The address (default 127.0.0.1, any free port).
    pub bind: SocketAddr,
    /// A bearer token API calls must carry; required unless bound to loopback.
    pub bearer: Option<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            bearer: None,
        }
    }
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// Bound beyond loopback without a bearer token.
    #[error(
        "the dashboard is bound to {0}, which is not loopback: set a bearer token (or bind 127.0.0.1)"
    )]
    Unprotected(SocketAddr),
    /// A bearer token too short to resist guessing.
    #[error("the bearer token must be at least 16 characters")]
    WeakToken,
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running dashboard.
pub struct Dashboard {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct AppState {
    rt: Runtime,
    bearer: Option<String>,
}

/// Starts the dashboard for `rt`.
pub async fn serve(rt: Runtime, config: DashboardConfig) -> Result<Dashboard, DashboardError> {
    if !config.bind.ip().is_loopback() && config.bearer.is_none() {
        return Err(DashboardError::Unprotected(config.bind));
    }
    if config.bearer.as_ref().is_some_and(|b| b.len() < 16) {
        return Err(DashboardError::WeakToken);
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| DashboardError::Bind {
            addr: config.bind,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| DashboardError::Bind {
        addr: config.bind,
        reason: e.to_string(),
    })?;
    let app = router(AppState {
        rt,
        bearer: config.bearer,
    });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    });
    Ok(Dashboard { addr, task })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/proposals", get(list))
        .route("/api/proposals/{id}", get(show))
        .route("/api/proposals/{id}/{action}", post(decide))
        .route("/api/groups", get(groups))
        .route("/api/groups/{group}/{action}", post(decide_group))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(PAGE),
    )
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    ApiError(status, message.to_string()).into_response()
}

/// A refused request: its status and the reason, sent as `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &state.bearer else {
        return Ok(());
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison of equal-length tokens.
    let ok = got.is_some_and(|g| {
        g.len() == want.len()
            && g.bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        ))
    }
}

/// A proposal as the dashboard shows it: with the time left to decide or cancel.
pub fn view(p: &Proposal, now_ms: u64) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if p.state == ProposalState::Pending {
        v["time_left_ms"] = json!(p.expires_ms.map(|e| e.saturating_sub(now_ms)));
    }
    if p.state == ProposalState::Committed {
        v["window_left_ms"] = json!(p.rollback_until_ms.map(|e| e.saturating_sub(now_ms)));
    }
    v
}

fn now_ms(rt: &Runtime) -> u64 {
    rt.now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn list(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    match s.rt.proposals() {
        Ok(all) => {
            let now = now_ms(&s.rt);
            Json(all.iter().map(|p| view(p, now)).collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn show(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    match s.rt.proposal(&id) {
        Ok(Some(p)) => Json(view(&p, now_ms(&s.rt))).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no proposal `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn outcome(result: Result<Proposal, ProposalError>, rt: &Runtime) -> Response {
    match result {
        Ok(p) => Json(view(&p, now_ms(rt))).into_response(),
        Err(e @ ProposalError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ ProposalError::Signature { .. }) => error(StatusCode::FORBIDDEN, e),
        Err(e @ (ProposalError::WrongState { .. } | ProposalError::WindowClosed { .. })) => {
            error(StatusCode::CONFLICT, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_limited(body, 64 * 1024)
}

fn parse_limited<T: serde::de::DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ApiError> {
    if body.len() > max {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {} KiB", max / 1024),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("not a signed decision: {e}"),
        )
    })
}

/// Approve, reject or cancel: the body is the operator's signed approval or decision.
async fn decide(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    let decision = match action.as_str() {
        "approve" => parse::<Approval>(&body).map(SignedDecision::Approve),
        "reject" => parse::<Decision>(&body).map(SignedDecision::Reject),
        "cancel" => parse::<Decision>(&body).map(SignedDecision::Cancel),
        other => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no action `{other}`: approve, reject or cancel"),
        )),
    };
    match decision {
        Ok(d) => outcome(s.rt.decide(&id, &d).await, &s.rt),
        Err(e) => e.into_response(),
    }
}

/// The pending proposals grouped by root agent, task and tool.
async fn groups(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    match s.rt.proposal_groups() {
        Ok(groups) => {
            let now = now_ms(&s.rt);
            let out: Vec<Value> = groups
                .iter()
                .map(|g| {
                    json!({
                        "group": g.group,
                        "root_agent": g.root_agent,
                        "task": g.task,
                        "tool": g.tool,
                        "batchable": g.batchable,
                        "pending": g.pending.iter().map(|p| view(p, now)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Json(out).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// One decision over a group: the body is the list of per-proposal signed
/// approvals (or rejections), all by one operator.
async fn decide_group(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((group, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    // About 400 bytes per signed decision.
    let max = bulwark_runtime::MAX_BATCH * 1024;
    let decisions = match action.as_str() {
        "approve" => parse_limited::<Vec<Approval>>(&body, max).map(|v| {
            v.into_iter()
                .map(SignedDecision::Approve)
                .collect::<Vec<_>>()
        }),
        "reject" => parse_limited::<Vec<Decision>>(&body, max).map(|v| {
            v.into_iter()
                .map(SignedDecision::Reject)
                .collect::<Vec<_>>()
        }),
        other => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no group action `{other}`: approve or reject"),
        )),
    };
    let decisions = match decisions {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match s.rt.decide_batch(&group, &decisions).await {
        Ok(out) => {
            let now = now_ms(&s.rt);
            Json(json!({
                "group": out.group,
                "operator": out.operator,
                "decided": out.decided.iter().map(|p| view(p, now)).collect::<Vec<_>>(),
                "skipped": out.skipped,
            }))
            .into_response()
        }
        Err(e @ ProposalError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ (ProposalError::Signature { .. } | ProposalError::Batch { .. })) => {
            error(StatusCode::FORBIDDEN, e)
        }
        Err(e @ ProposalError::WrongState { .. }) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
