//! The operator dashboard: pending proposals with their agent, delegation chain, tool,
//! arguments, each argument's provenance, the watchdog's verdict and the time left;
//! approve, reject and cancel, signed in the browser with the operator's key
//! (WebCrypto Ed25519) or by `bulwark proposals`.
//!
//! Bound to 127.0.0.1 by default. Every API call carries a bearer token: the configured
//! one, or one generated at start (bound beyond loopback a configured token is
//! required). [`Dashboard::login_url`] opens the page with the token in the URL
//! fragment, which the page moves into the tab's session storage; the fragment never
//! reaches the server or its logs. Every request must name the dashboard in its `Host`
//! header (its listen address, a loopback name, or a configured host), so a page on a
//! rebound DNS name cannot reach it (421), and a state-changing request from another
//! origin is refused (403). The server never sees an operator's private key: it checks
//! signatures against the runtime's operator keys.
//!
//! The page shows every argument from the canonical JSON text the server sends
//! (`args_json`, the exact text approvals hash), parsed without loss (integers beyond
//! 2^53 stay exact), with invisible and direction-changing characters shown as marked
//! `\uXXXX` tokens; it recomputes the arguments' hash from that text with WebCrypto and
//! refuses to sign when it differs from the server's `args_hash`.
//!
//! `GET /metrics` serves the runtime's metrics (and the node's, when started by
//! [`serve_with_metrics`]) in the Prometheus text format 0.0.4. It takes the same
//! bearer token as the API: a scraper is given the configured token
//! (`BULWARK_DASHBOARD_TOKEN`), and its target must name the dashboard as the `Host`
//! checks above require.

use std::net::SocketAddr;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bulwark_capabilities::{Approval, Decision};
use bulwark_runtime::{Proposal, ProposalError, ProposalState, Runtime, SignedDecision};
use serde_json::{Value, json};

use crate::cluster::client::{ClientError, ClusterClient};
use crate::cluster::metrics::NodeMetrics;

const PAGE: &str = include_str!("dashboard.html");

/// Where and how the dashboard listens.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// The address (default 127.0.0.1, any free port).
    pub bind: SocketAddr,
    /// The bearer token API calls must carry (at least 16 characters). Required
    /// beyond loopback; on loopback one is generated at start when none is set.
    pub bearer: Option<String>,
    /// Further names the dashboard answers to in the `Host` header (e.g. behind a
    /// reverse proxy): `name` for any port, or `name:port`. Its listen address and the
    /// loopback names (`localhost`, `127.0.0.1`, `[::1]`) on its port are always
    /// accepted.
    pub allowed_hosts: Vec<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            bearer: None,
            allowed_hosts: Vec::new(),
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
    bearer: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The bearer token API calls must carry (configured or generated at start).
    pub fn token(&self) -> &str {
        &self.bearer
    }

    /// The URL that opens the page signed in: the token rides in the fragment, which
    /// browsers never send; the page moves it into the tab's session storage and
    /// removes it from the address bar.
    pub fn login_url(&self) -> String {
        format!("{}#token={}", self.url(), fragment_encode(&self.bearer))
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Percent-encodes everything but unreserved characters, for a URL fragment.
fn fragment_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone)]
struct AppState {
    rt: Runtime,
    bearer: String,
    hosts: std::sync::Arc<HostRule>,
    /// The node's own metrics, served after the runtime's.
    node_metrics: Option<std::sync::Arc<NodeMetrics>>,
    /// On a node: its cluster and its id, for the other nodes' proposals.
    cluster: Option<(ClusterClient, String)>,
}

/// Which `Host` headers name this dashboard.
struct HostRule {
    port: u16,
    /// Host names (lower case, IPv6 in brackets) accepted on the listen port.
    names: Vec<String>,
    /// Configured entries: `(name, Some(port))` or `(name, None)` for any port.
    extra: Vec<(String, Option<u16>)>,
    /// Bound to every interface: any IP literal names it (an IP literal cannot be
    /// rebound by DNS).
    any_ip: bool,
}

impl HostRule {
    fn new(addr: SocketAddr, allowed: &[String]) -> Self {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "[::1]".to_string(),
        ];
        if !addr.ip().is_unspecified() {
            names.push(match addr.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        let extra = allowed
            .iter()
            .map(|h| {
                let h = h.trim().to_ascii_lowercase();
                match split_host(&h) {
                    Some((name, Some(port))) => (name.to_string(), Some(port)),
                    _ => (h, None),
                }
            })
            .collect();
        HostRule {
            port: addr.port(),
            names,
            extra,
            any_ip: addr.ip().is_unspecified(),
        }
    }

    fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else {
            return false;
        };
        let port = port.unwrap_or(80);
        if self
            .extra
            .iter()
            .any(|(n, p)| n == name && p.is_none_or(|p| p == port))
        {
            return true;
        }
        if port != self.port {
            return false;
        }
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        self.any_ip
            && name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok()
    }
}

/// Splits `name[:port]` (IPv6 in brackets); `None` when the port is not a number.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let name = &host[..end + 2];
        match &host[end + 2..] {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    match port {
        Some(p) => Some((name, Some(p.parse().ok()?))),
        None => Some((name, None)),
    }
}

/// Starts the dashboard for `rt`; its `/metrics` serves the runtime's metrics.
pub async fn serve(rt: Runtime, config: DashboardConfig) -> Result<Dashboard, DashboardError> {
    serve_with_metrics(rt, config, None).await
}

/// Starts the dashboard for `rt`; its `/metrics` serves the runtime's metrics
/// followed by `node_metrics` (a node's own families), when given.
pub async fn serve_with_metrics(
    rt: Runtime,
    config: DashboardConfig,
    node_metrics: Option<std::sync::Arc<NodeMetrics>>,
) -> Result<Dashboard, DashboardError> {
    start(rt, config, node_metrics, None).await
}

/// A node's dashboard: beside its own proposals it lists every alive node's (each
/// marked with its `node`), and hands a decision about another node's proposal to
/// that node, which verifies it.
pub async fn serve_for_node(
    rt: Runtime,
    config: DashboardConfig,
    node_metrics: std::sync::Arc<NodeMetrics>,
    cluster: ClusterClient,
    node: &str,
) -> Result<Dashboard, DashboardError> {
    start(
        rt,
        config,
        Some(node_metrics),
        Some((cluster, node.to_string())),
    )
    .await
}

async fn start(
    rt: Runtime,
    config: DashboardConfig,
    node_metrics: Option<std::sync::Arc<NodeMetrics>>,
    cluster: Option<(ClusterClient, String)>,
) -> Result<Dashboard, DashboardError> {
    if !config.bind.ip().is_loopback() && config.bearer.is_none() {
        return Err(DashboardError::Unprotected(config.bind));
    }
    if config.bearer.as_ref().is_some_and(|b| b.len() < 16) {
        return Err(DashboardError::WeakToken);
    }
    let generated = config.bearer.is_none();
    let bearer = config
        .bearer
        .clone()
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()));
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
        bearer: bearer.clone(),
        hosts: std::sync::Arc::new(HostRule::new(addr, &config.allowed_hosts)),
        node_metrics,
        cluster,
    });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    });
    let dashboard = Dashboard { addr, bearer, task };
    if generated {
        tracing::info!(
            login_url = %dashboard.login_url(),
            "the dashboard is ready: open its login URL (it carries the access token generated for this start)"
        );
    } else {
        tracing::info!(url = %dashboard.url(), "the dashboard is ready");
    }
    Ok(dashboard)
}

/// Refuses requests that do not name this dashboard in `Host` (421) and
/// state-changing requests from another origin (403), before any handler runs.
async fn guard_request(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let Some(host) = host.filter(|h| s.hosts.allows(h)) else {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard does not answer to that host name",
        );
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or(""));
        let same_origin = origin.is_none_or(|o| {
            let o = o.to_ascii_lowercase();
            let host = host.to_ascii_lowercase();
            o == format!("http://{host}") || o == format!("https://{host}")
        });
        let site = headers
            .get("sec-fetch-site")
            .map(|v| v.to_str().unwrap_or(""));
        let site_ok = site.is_none_or(|s| s == "same-origin" || s == "none");
        if !same_origin || !site_ok {
            return error(
                StatusCode::FORBIDDEN,
                "a request from another origin cannot change anything here",
            );
        }
    }
    next.run(req).await
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/proposals", get(list))
        .route("/api/proposals/{id}", get(show))
        .route("/api/proposals/{id}/{action}", post(decide))
        .route("/api/groups", get(groups))
        .route("/api/groups/{group}/{action}", post(decide_group))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_request,
        ))
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
    let want = &state.bearer;
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

/// `GET /metrics`: the runtime's metrics, then the node's (if any), in the Prometheus
/// text format 0.0.4. Requires the dashboard's bearer token, like every API route
/// (the figures name tenants and tools); a Prometheus scrape job sends it with
/// `authorization: {type: Bearer, credentials: ...}`.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    let body = match &s.node_metrics {
        Some(node) => node.render(s.rt.metrics()),
        None => s.rt.metrics().render(),
    };
    (
        [(header::CONTENT_TYPE, bulwark_runtime::METRICS_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// A proposal as the dashboard shows it: with the time left to decide or cancel, and
/// its arguments also as `args_json`, the canonical JSON text approvals hash (the page
/// renders and hashes that text, so large integers stay exact).
pub fn view(p: &Proposal, now_ms: u64) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    v["args_json"] = json!(p.args.to_string());
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
    let now = now_ms(&s.rt);
    let mut out: Vec<Value> = match s.rt.proposals() {
        Ok(all) => all.iter().map(|p| view(p, now)).collect(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let Some((cluster, me)) = &s.cluster {
        for v in &mut out {
            v["node"] = json!(me);
        }
        // Another node that does not answer leaves its proposals out, not the page.
        if let Ok(remote) = cluster.proposals().await {
            out.extend(
                remote
                    .into_iter()
                    .filter(|p| p["node"] != me.as_str())
                    .filter_map(|v| {
                        let node = v["node"].clone();
                        let p: Proposal = serde_json::from_value(v).ok()?;
                        let mut v = view(&p, now);
                        v["node"] = node;
                        Some(v)
                    }),
            );
        }
    }
    Json(out).into_response()
}

/// Proposal `id` and its node, when another node of the cluster holds it.
async fn elsewhere(s: &AppState, id: &str) -> Option<(Proposal, String)> {
    let (cluster, me) = s.cluster.as_ref()?;
    let v = cluster
        .proposals()
        .await
        .ok()?
        .into_iter()
        .find(|p| p["id"] == id && p["node"] != me.as_str())?;
    let node = v["node"].as_str()?.to_string();
    Some((serde_json::from_value(v).ok()?, node))
}

async fn show(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    match s.rt.proposal(&id) {
        Ok(Some(p)) => Json(view(&p, now_ms(&s.rt))).into_response(),
        Ok(None) if s.cluster.is_some() => match elsewhere(&s, &id).await {
            Some((p, node)) => {
                let mut v = view(&p, now_ms(&s.rt));
                v["node"] = json!(node);
                Json(v).into_response()
            }
            None => error(StatusCode::NOT_FOUND, format!("no proposal `{id}`")),
        },
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
    let d = match decision {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    if matches!(s.rt.proposal(&id), Ok(None))
        && let (Some((cluster, _)), Some((_, node))) = (&s.cluster, elsewhere(&s, &id).await)
    {
        return match cluster.decide(&node, &id, &d).await {
            Ok(v) => match serde_json::from_value::<Proposal>(v) {
                Ok(p) => {
                    let mut v = view(&p, now_ms(&s.rt));
                    v["node"] = json!(node);
                    Json(v).into_response()
                }
                Err(e) => error(StatusCode::BAD_GATEWAY, e),
            },
            Err(ClientError::Refused(why)) => error(StatusCode::FORBIDDEN, why),
            Err(e) => error(StatusCode::BAD_GATEWAY, e),
        };
    }
    outcome(s.rt.decide(&id, &d).await, &s.rt)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_split_and_matched() {
        assert_eq!(split_host("[::1]:8080"), Some(("[::1]", Some(8080))));
        assert_eq!(split_host("example.test"), Some(("example.test", None)));
        assert_eq!(split_host("a:b"), None);
        assert_eq!(split_host(":80"), None);
        let loopback = HostRule::new("127.0.0.1:8080".parse().expect("addr"), &[]);
        for ok in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
            assert!(loopback.allows(ok), "{ok}");
        }
        for bad in [
            "evil.test:8080",
            "127.0.0.1:8081",
            "10.0.0.1:8080",
            "127.0.0.1",
            "",
        ] {
            assert!(!loopback.allows(bad), "{bad}");
        }
        let everywhere = HostRule::new(
            "0.0.0.0:8080".parse().expect("addr"),
            &["dash.example:443".to_string()],
        );
        for ok in ["10.0.0.1:8080", "[fe80::1]:8080", "dash.example:443"] {
            assert!(everywhere.allows(ok), "{ok}");
        }
        for bad in ["dash.example:8080", "dash.example", "rebound.example:8080"] {
            assert!(!everywhere.allows(bad), "{bad}");
        }
    }

    #[test]
    fn the_login_fragment_encodes_the_token() {
        assert_eq!(fragment_encode("a b/c~"), "a%20b%2Fc~");
    }
}
