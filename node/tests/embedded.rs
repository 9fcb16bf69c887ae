//! Three nodes embedded in one program (`Node::builder`), joined by a real
//! nats-server: an agent on n1 places a child on n2, the child calls a tool n3
//! hosts, the handle to the child works like a local one, and a revocation cuts the
//! subtree on every node.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bulwark_capabilities::{KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_node::cluster::config::NodeConfig;
use bulwark_node::cluster::node::Node;
use bulwark_runtime::{
    AgentSpec, Brain, BrainAction, BrainFactory, ScriptedBrain, SpawnRequest, Status, Tool,
    ToolManifest, ToolOutput,
};
use common::{Procs, start_nats};
use serde_json::{Value, json};

fn scripted(actions: Vec<BrainAction>) -> BrainFactory {
    Arc::new(move || Arc::new(ScriptedBrain::new(actions.clone())) as Arc<dyn Brain>)
}

fn shout() -> Tool {
    Tool::native(
        ToolManifest::new("shout", "upper-cases a text").tier(Tier::Auto),
        |input| async move {
            let text = input.args["text"]
                .as_str()
                .unwrap_or_default()
                .to_uppercase();
            Ok(ToolOutput::new(json!({ "shout": text })))
        },
    )
}

/// Waits (bounded) until `node` sees every id in `ids` alive and reaches `tool`.
async fn settled(node: &Node, ids: &[&str], reaches: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = node.status();
        let alive = ids.iter().all(|id| {
            status.nodes.iter().any(|n| {
                n.id == *id && n.state == bulwark_node::cluster::membership::NodeState::Alive
            })
        });
        let reached = reaches.is_none_or(|t| node.runtime().tools().get_manifest(t).is_some());
        if alive && reached {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not settle: {status:?}",
            node.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nodes serving (`run_until`) until [`Serving::stop`].
struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), bulwark_node::cluster::node::NodeError>>>,
}

impl Serving {
    fn start(nodes: &[&Arc<Node>]) -> Serving {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = nodes
            .iter()
            .map(|node| {
                let (node, mut stopped) = (Arc::clone(node), stopped.clone());
                tokio::spawn(async move {
                    node.run_until(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                })
            })
            .collect();
        Serving { stop, tasks }
    }

    /// Stops every node and waits for each to finish cleanly.
    async fn stop(self) {
        self.stop.send(true).expect("stop");
        for t in self.tasks {
            t.await.expect("join").expect("clean stop");
        }
    }
}

async fn trail(node: &Node) -> Vec<Value> {
    node.runtime()
        .audit_tail(10_000)
        .await
        .expect("audit")
        .into_iter()
        .map(|e| serde_json::to_value(e).expect("json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_places_a_child_on_another_node_whose_calls_run_on_a_third() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    let config = |id: &str| {
        let mut c = NodeConfig::new(id, "e", dir.path().join(id), root.public(), &url);
        c.operator_keys = vec![operator.public()];
        c
    };
    let planner_brain = scripted(vec![
        BrainAction::Spawn(SpawnRequest {
            agent: "helper".into(),
            task: "shout hello".into(),
            brain: "helper".into(),
            tools: Some(vec!["shout".into()]),
            budget: Some(MicroUsd::from_usd(1).expect("budget")),
            tiers: Default::default(),
            constraints: vec![],
            pass: vec!["the word is hello".into()],
            node: Some("n2".into()),
        }),
        BrainAction::Finish {
            answer: "planned".into(),
        },
    ]);
    let helper_brain = scripted(vec![
        BrainAction::CallTool {
            tool: "shout".into(),
            args: json!({"text": "hello"}),
        },
        // Hostile: a tool the child's token does not hold.
        BrainAction::CallTool {
            tool: "wire".into(),
            args: json!({"to": "attacker"}),
        },
        BrainAction::Finish {
            answer: "shouted".into(),
        },
    ]);
    let n1 = Arc::new(
        Node::builder(config("n1"))
            .brain("planner", planner_brain)
            .start()
            .await
            .expect("n1"),
    );
    let mut n2_config = config("n2");
    n2_config.dashboard = Some("127.0.0.1:0".parse().expect("address"));
    // n2 signs the revocations its program makes with an operator key.
    operator.save(&dir.path().join("op.key")).expect("save");
    n2_config.revocation_key_file = Some(dir.path().join("op.key"));
    let n2 = Arc::new(
        Node::builder(n2_config)
            .brain("helper", helper_brain)
            .start()
            .await
            .expect("n2"),
    );
    let n3 = Arc::new(
        Node::builder(config("n3"))
            .tool(shout())
            .start()
            .await
            .expect("n3"),
    );
    let serving = Serving::start(&[&n1, &n2, &n3]);
    settled(&n1, &["n1", "n2", "n3"], None).await;
    settled(&n2, &["n3"], Some("shout")).await;

    let spec = AgentSpec::new("planner");
    let token = Token::mint(
        &root,
        RootGrant::new(
            "acme",
            "planner",
            spec.key.public(),
            MicroUsd::from_usd(5).expect("budget"),
            SystemTime::now() + Duration::from_secs(3600),
            3,
        )
        .tool("shout", Tier::Auto)
        .tool("wire", Tier::Auto),
    )
    .expect("mint");
    let planner = n1
        .runtime()
        .spawn_agent(
            spec,
            token.clone(),
            n1.runtime().brain("planner").expect("brain"),
        )
        .await
        .expect("spawn planner");
    let outcome = planner.run("plan").await.expect("run");
    assert_eq!(
        outcome.status,
        Status::Finished("planned".into()),
        "{outcome:?}"
    );
    let spawn = &outcome.actions[0];
    assert_eq!(
        (spawn.kind.as_str(), spawn.allowed),
        ("spawn", true),
        "{outcome:?}"
    );
    assert!(spawn.detail.contains("shouted"), "{outcome:?}");

    // The child lives on n2 only, and its token is one delegation below the planner's.
    assert!(n1.runtime().agent("helper").is_none());
    let child = n2.runtime().agent("helper").expect("helper on n2");
    let child_token = child.token().expect("token");
    token
        .check_child(&child_token)
        .expect("an attenuation of the planner's token");

    // The handle n1 holds answers like a local one.
    let remote = n1
        .runtime()
        .remote_agent("helper", "n2", "planner")
        .expect("a handle");
    assert_eq!(remote.node(), Some("n2"));
    let status = remote.status().await.expect("status");
    assert!(!status.running, "{status:?}");

    // n3 ran the call, recorded as the child's, from n2; n2's gate refused the hostile
    // call before anything left the node.
    let n3_trail = trail(&n3).await;
    let ran: Vec<&Value> = n3_trail
        .iter()
        .filter(|e| e["kind"] == "tool.remote_call")
        .collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0]["agent"], "helper");
    assert_eq!(ran[0]["detail"]["from_node"], "n2");
    let n2_trail = trail(&n2).await;
    assert!(
        n2_trail
            .iter()
            .any(|e| e["kind"] == "tool.denied" && e["agent"] == "helper"),
        "no denial on n2"
    );

    // Revoking the planner's token reaches every node and cuts its subtree.
    let acks = n1
        .revoke(
            &token.revocation_ids()[0],
            &operator,
            Duration::from_secs(30),
        )
        .await
        .expect("revoke");
    let mut acked: Vec<&str> = acks.iter().map(|(a, _)| a.node.as_str()).collect();
    acked.sort();
    assert_eq!(acked, ["n1", "n2", "n3"], "{acks:?}");
    assert!(acks.iter().all(|(a, _)| a.error.is_none()), "{acks:?}");
    let refused = remote
        .run("shout again")
        .await
        .expect_err("a revoked director");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    // n2 counted the call, the gate's denial and the revoked envelope; it serves
    // them on its dashboard's /metrics to the bearer.
    let login = n2.dashboard_login().expect("a dashboard");
    let (base, token) = login.split_once("#token=").expect("a login url");
    let scrape = reqwest::Client::new()
        .get(format!("{base}metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("scrape");
    assert!(scrape.status().is_success(), "{}", scrape.status());
    let text = scrape.text().await.expect("text");
    for series in [
        r#"bulwark_tool_calls_total{tool="shout",tier="auto",outcome="allowed"} 1"#,
        r#"bulwark_envelope_refusals_total{reason="revoked"} 1"#,
        "bulwark_heartbeat_lag_seconds{node=\"n3\"}",
    ] {
        assert!(text.contains(series), "no `{series}` in\n{text}");
    }
    for node in [&n1, &n2, &n3] {
        assert!(
            node.runtime().any_revoked(child_token.revocation_ids()),
            "{} missed the revocation",
            node.id()
        );
    }

    // A revocation the program on n2 makes through its runtime reaches n1 and n3.
    let id = vec![7u8; 32];
    n2.runtime().revoke(id.clone()).await.expect("revoke");
    for node in [&n1, &n3] {
        assert!(
            node.runtime().any_revoked(std::slice::from_ref(&id)),
            "{} missed n2's revocation",
            node.id()
        );
    }
    // Without a key to sign with, n1's stays on n1.
    let local = vec![8u8; 32];
    n1.runtime().revoke(local.clone()).await.expect("revoke");
    assert!(n1.runtime().any_revoked(std::slice::from_ref(&local)));
    assert!(!n3.runtime().any_revoked(std::slice::from_ref(&local)));

    serving.stop().await;
}

/// A request's W3C trace context travels in the NATS headers beside the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_carries_the_callers_trace_context_in_its_headers() {
    use futures::StreamExt;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let nats = async_nats::connect(url.as_str()).await.expect("connect");
    // Stands in for a node: records the headers and answers.
    let mut sub = nats
        .subscribe("bulwark.x.agent.probe")
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = nats.clone();
    tokio::spawn(async move {
        if let Some(msg) = sub.next().await {
            let traceparent = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .map(|v| v.to_string());
            let _ = tx.send(traceparent);
            if let Some(reply) = msg.reply {
                let _ = server
                    .publish(reply, br#"{"ok":"idle"}"#.to_vec().into())
                    .await;
            }
        }
    });

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("agent_run");
    let trace_id = span.context().span().span_context().trace_id();
    let root = KeyPair::generate();
    let key = KeyPair::generate();
    let token = Token::mint(
        &root,
        RootGrant::new(
            "acme",
            "boss",
            key.public(),
            MicroUsd::from_usd(1).expect("budget"),
            SystemTime::now() + Duration::from_secs(600),
            2,
        )
        .tool("shout", Tier::Auto),
    )
    .expect("mint");
    let client = bulwark_node::cluster::client::ClusterClient::new(nats, "x");
    let answer: String = client
        .request(
            "agent.probe",
            "agent",
            &json!({"ask": "status"}),
            (&token, &key),
            Duration::from_secs(10),
        )
        .instrument(span)
        .await
        .expect("an answer");
    assert_eq!(answer, "idle");
    let traceparent = rx.await.expect("a request").expect("a traceparent header");
    assert!(traceparent.contains(&trace_id.to_string()), "{traceparent}");
}

/// One node's dashboard lists another node's proposal and hands it the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dashboard_lists_and_decides_the_proposals_of_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    let config = |id: &str| {
        let mut c = NodeConfig::new(id, "d", dir.path().join(id), root.public(), &url);
        c.operator_keys = vec![operator.public()];
        c
    };
    let mut n1_config = config("n1");
    n1_config.dashboard = Some("127.0.0.1:0".parse().expect("address"));
    let n1 = Arc::new(Node::builder(n1_config).start().await.expect("n1"));
    let wire = Tool::native(
        ToolManifest::new("wire", "moves money").tier(Tier::Confirm),
        |input| async move { Ok(ToolOutput::new(json!({ "wired": input.args["to"] }))) },
    );
    let n2 = Arc::new(
        Node::builder(config("n2"))
            .tool(wire)
            .start()
            .await
            .expect("n2"),
    );
    let serving = Serving::start(&[&n1, &n2]);
    settled(&n1, &["n1", "n2"], None).await;

    let spec = AgentSpec::new("payer");
    let token = Token::mint(
        &root,
        RootGrant::new(
            "acme",
            "payer",
            spec.key.public(),
            MicroUsd::from_usd(5).expect("budget"),
            SystemTime::now() + Duration::from_secs(3600),
            2,
        )
        .tool("wire", Tier::Auto),
    )
    .expect("mint");
    let payer = n2
        .runtime()
        .spawn_agent(spec, token, scripted(vec![])())
        .await
        .expect("spawn");
    let call =
        tokio::spawn(async move { payer.call_tool("wire", json!({"to": "supplier"})).await });

    let login = n1.dashboard_login().expect("a dashboard");
    let (base, bearer) = login.split_once("#token=").expect("a login url");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let list: Vec<Value> = http
            .get(format!("{base}api/proposals"))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if let Some(p) = list.into_iter().find(|p| p["state"] == "pending") {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "n1's dashboard never listed n2's proposal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["node"], "n2", "{listed}");
    let id = listed["id"].as_str().expect("id");
    let approve = |key: &KeyPair| {
        let approval = bulwark_capabilities::Approval::sign(
            key,
            id,
            &bulwark_runtime::Proposal::approval_args(&json!({"to": "supplier"})),
            SystemTime::now() + Duration::from_secs(600),
        );
        http.post(format!("{base}api/proposals/{id}/approve"))
            .bearer_auth(bearer)
            .json(&approval)
            .send()
    };
    // n2 checks the signature: a stranger's approval is refused there.
    let refused = approve(&KeyPair::generate()).await.expect("post");
    assert_eq!(refused.status().as_u16(), 403);
    let approved = approve(&operator).await.expect("post");
    assert!(approved.status().is_success(), "{}", approved.status());
    let approved: Value = approved.json().await.expect("json");
    assert_eq!(approved["node"], "n2");
    let result = call.await.expect("join").expect("the approved call runs");
    assert_eq!(result.value["wired"], "supplier", "{result:?}");

    serving.stop().await;
}
