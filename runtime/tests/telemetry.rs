//! Spans reach an OTLP/HTTP collector: a local receiver stands in for the collector.
//! (Its own test binary: the tracing subscriber is process-global.)
#![allow(clippy::unwrap_used)]
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use bulwark_capabilities::{KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_runtime::telemetry::{TelemetryConfig, init};
use bulwark_runtime::{AgentSpec, Runtime, ScriptedBrain, Tool, ToolManifest, ToolOutput};
use serde_json::json;

type Received = Arc<Mutex<Vec<Vec<u8>>>>;

async fn traces(State(r): State<Received>, body: Bytes) -> &'static str {
    r.lock().unwrap().push(body.to_vec());
    ""
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_spans_are_exported_over_otlp() {
    let received: Received = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let telemetry = init(&TelemetryConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        service_name: "bulwark-test".into(),
        log_filter: "off".into(),
    })
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = KeyPair::generate();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .root_public_key(root.public())
        .build()
        .await
        .unwrap();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("probe_tool", "x"),
            |_| async { Ok(ToolOutput::new(json!(1))) },
        ))
        .unwrap();
    let spec = AgentSpec::new("traced-agent");
    let grant = RootGrant::new(
        "acme",
        "traced-agent",
        spec.key.public(),
        MicroUsd::from_usd(1).unwrap(),
        SystemTime::now() + Duration::from_secs(60),
        1,
    )
    .tool("probe_tool", Tier::Auto);
    let token = Token::mint(&root, grant).unwrap();
    let a = rt
        .spawn_agent(spec, token, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();
    a.call_tool("probe_tool", json!({})).await.unwrap();
    assert!(a.call_tool("nonexistent", json!({})).await.is_err());
    rt.shutdown().await.unwrap();

    // Flushing exports on a blocking client; keep it off the async workers.
    tokio::task::spawn_blocking(move || telemetry.shutdown().unwrap())
        .await
        .unwrap();
    let bodies = received.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no OTLP request arrived");
    let all: Vec<u8> = bodies.concat();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    for needle in [
        "tool_call",
        "traced-agent",
        "probe_tool",
        "allowed",
        "denied",
        "bulwark-test",
    ] {
        assert!(has(needle), "`{needle}` missing from the exported spans");
    }
}
