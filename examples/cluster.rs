//! A cluster in one command: a nats-server and three nodes (embedded here with
//! `Node::builder`; `bulwark node --config` runs the same node as a process).
//!
//! An agent on n1 places a child on n2; the child calls a sandboxed tool hosted on
//! n3, which checks the call again before it runs. A compromised brain's hostile call
//! and a compromised node's crafted calls are refused; a revocation cuts the whole
//! subtree on all three nodes.
//!
//! Needs `nats-server` (`scripts/fetch-nats-server` caches it, or set
//! `BULWARK_NATS_SERVER`). Run: `cargo run --example cluster`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bulwark::{Attenuation, Constraint, KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_node::cluster::client::{ClientError, ClusterClient};
use bulwark_node::cluster::config::{NodeConfig, ToolConfig, ToolProgram};
use bulwark_node::cluster::membership::NodeState;
use bulwark_node::cluster::node::Node;
use bulwark_node::cluster::wire::{Call, CallResult};
use bulwark_runtime::{
    AgentSpec, Brain, BrainAction, BrainFactory, ScriptedBrain, SignedCall, SpawnRequest,
};
use serde_json::json;

/// A WASI command for the sandbox: prints a JSON string.
const PUBLISH_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "\"published\"")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 11))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// The nats-server process, stopped when dropped.
struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_server() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("BULWARK_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = PathBuf::from(format!("{home}/.cache/bulwark/nats-server/nats-server"));
    if !path.exists() {
        bail!(
            "nats-server is missing at {}: run scripts/fetch-nats-server or set BULWARK_NATS_SERVER",
            path.display()
        );
    }
    Ok(path)
}

/// Starts nats-server on a free loopback port; its URL.
fn start_nats(dir: &std::path::Path) -> anyhow::Result<(Nats, String)> {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports)?;
    let child = Command::new(nats_server()?)
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&ports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nats-server")?;
    let file = ports.join(format!("nats-server_{}.ports", child.id()));
    let nats = Nats(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = v["nats"][0].as_str()
        {
            return Ok((nats, url.to_string()));
        }
        if Instant::now() > deadline {
            bail!("nats-server wrote no ports file within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scripted(actions: Vec<BrainAction>) -> BrainFactory {
    Arc::new(move || Arc::new(ScriptedBrain::new(actions.clone())) as Arc<dyn Brain>)
}

/// Waits (bounded) until `node` sees all three alive and, if given, can reach `tool`.
async fn settle(node: &Node, tool: Option<&str>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive = node
            .status()
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive)
            .count();
        let reached = tool.is_none_or(|t| node.runtime().tools().get_manifest(t).is_some());
        if alive == 3 && reached {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {} did not see the cluster within 60 s", node.id());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_nats, url) = start_nats(dir.path())?;
    println!("nats-server on {url}");
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    std::fs::write(dir.path().join("publish.wat"), PUBLISH_WAT)?;
    let config = |id: &str| {
        let mut c = NodeConfig::new(id, "demo", dir.path().join(id), root.public(), &url);
        c.operator_keys = vec![operator.public()];
        c.labels.insert("zone".into(), id.into());
        c
    };
    let mut n3_config = config("n3");
    n3_config.tools.push(ToolConfig {
        name: "publish".into(),
        tier: Tier::Auto,
        max_cost: MicroUsd::new(10_000).context("cost")?,
        program: ToolProgram::Wasm(dir.path().join("publish.wat")),
        limits: Default::default(),
        mounts: Vec::new(),
    });
    let planner_brain = scripted(vec![
        BrainAction::Spawn(SpawnRequest {
            agent: "analyst".into(),
            task: "publish the Q3 summary internally".into(),
            brain: "analyst".into(),
            tools: Some(vec!["publish".into()]),
            budget: Some(MicroUsd::from_usd(1).context("budget")?),
            tiers: Default::default(),
            constraints: vec!["publish.channel eq internal".into()],
            pass: vec![],
            node: Some("n2".into()),
        }),
        BrainAction::Finish {
            answer: "delegated".into(),
        },
    ]);
    // The analyst's brain is compromised: after its task it tries to publish
    // outside its constraint.
    let analyst_brain = scripted(vec![
        BrainAction::CallTool {
            tool: "publish".into(),
            args: json!({"channel": "internal", "text": "Q3 summary"}),
        },
        BrainAction::CallTool {
            tool: "publish".into(),
            args: json!({"channel": "public", "text": "customer list"}),
        },
        BrainAction::Finish {
            answer: "published".into(),
        },
    ]);
    let n1 = Arc::new(
        Node::builder(config("n1"))
            .brain("planner", planner_brain)
            .start()
            .await?,
    );
    let n2 = Arc::new(
        Node::builder(config("n2"))
            .brain("analyst", analyst_brain)
            .start()
            .await?,
    );
    let n3 = Arc::new(Node::builder(n3_config).start().await?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut serving = Vec::new();
    for node in [&n1, &n2, &n3] {
        let (node, mut stopped) = (node.clone(), stopped.clone());
        serving.push(tokio::spawn(async move {
            node.run_until(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    settle(&n1, None).await?;
    settle(&n2, Some("publish")).await?;
    println!("\n== cluster status ==");
    for m in n1.status().nodes {
        println!(
            "{:<4} {:?}  agents {}  tools {:?}",
            m.id, m.state, m.agents, m.tools
        );
    }

    println!("\n== an agent on n1 places a child on n2, which calls a tool on n3 ==");
    let spec = AgentSpec::new("planner");
    // Kept to stand for a compromised node below: a node holds its agents' keys.
    let planner_key = spec.key.clone();
    let token = Token::mint(
        &root,
        RootGrant::new(
            "acme",
            "planner",
            spec.key.public(),
            MicroUsd::from_usd(5).context("budget")?,
            SystemTime::now() + Duration::from_secs(3600),
            3,
        )
        .tool("publish", Tier::Auto),
    )?;
    let brain = n1.runtime().brain("planner").context("brain")?;
    let planner = n1.runtime().spawn_agent(spec, token.clone(), brain).await?;
    let outcome = planner.run("publish the quarter's results").await?;
    let mut leaks = 0;
    for a in &outcome.actions {
        println!(
            "planner: {} {} allowed={} — {}",
            a.kind, a.target, a.allowed, a.detail
        );
    }
    let analyst = n2
        .runtime()
        .agent("analyst")
        .context("the analyst runs on n2")?;
    let trail = |entries: Vec<bulwark_runtime::AuditEntry>| {
        entries
            .into_iter()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    for e in trail(n2.runtime().audit_tail(1000).await?) {
        if e["kind"] == "tool.denied" {
            let (agent, reason) = (e["agent"].as_str(), e["detail"]["reason"].as_str());
            println!(
                "n2's gate refused {}'s call: {}",
                agent.unwrap_or("?"),
                reason.unwrap_or("?")
            );
        }
    }
    for e in trail(n3.runtime().audit_tail(1000).await?) {
        if e["kind"] == "tool.remote_call" {
            println!(
                "n3 ran `{}` for {} (from {}) after checking it again: {}",
                e["detail"]["tool"].as_str().unwrap_or("?"),
                e["agent"].as_str().unwrap_or("?"),
                e["detail"]["from_node"].as_str().unwrap_or("?"),
                e["detail"]["args"]
            );
            if e["detail"]["args"]["channel"] != "internal" {
                leaks += 1;
            }
        }
    }

    println!("\n== a compromised node sends crafted calls straight to n3 ==");
    // What a compromised n2 could hold: a token of the subtree and its key.
    let mallory_key = KeyPair::generate();
    let analyst_token = analyst.token().context("analyst token")?;
    let mallory = token.attenuate(
        &planner_key,
        Attenuation::new("mallory", mallory_key.public())
            .only_tools(["publish".to_string()])
            .require("publish.channel eq internal".parse::<Constraint>()?),
    )?;
    let nats = async_nats::connect(url.as_str()).await?;
    let client = ClusterClient::new(nats, "demo");
    // A call signed with `key` as `signer`'s agent, sent under `token`.
    let craft = |token: &Token, key: &KeyPair, signer: &Token, args: serde_json::Value| {
        let call = SignedCall::sign(
            signer,
            key,
            signer.agent(),
            "publish",
            args,
            SystemTime::now(),
        );
        let body = Call {
            node: "n2".into(),
            call,
            approval: None,
        };
        (body, token.clone())
    };
    let attempts = [
        (
            "outside its constraint",
            craft(
                &mallory,
                &mallory_key,
                &mallory,
                json!({"channel": "public", "text": "dump"}),
            ),
        ),
        (
            "signed as the analyst without its key",
            craft(
                &mallory,
                &mallory_key,
                &analyst_token,
                json!({"channel": "internal", "text": "x"}),
            ),
        ),
    ];
    for (what, (body, token)) in attempts {
        let r: Result<CallResult, ClientError> = client
            .request(
                "tool.publish",
                "call",
                &body,
                (&token, &mallory_key),
                Duration::from_secs(30),
            )
            .await;
        match r {
            Err(ClientError::Refused(why)) => println!("refused on n3 ({what}): {why}"),
            other => {
                leaks += 1;
                println!("NOT refused ({what}): {other:?}");
            }
        }
    }

    println!("\n== a revocation cuts the subtree on every node ==");
    let acks = n1
        .revoke(
            &token.revocation_ids()[0],
            &operator,
            Duration::from_secs(30),
        )
        .await?;
    for (ack, took) in &acks {
        println!("{} revoked in {} ms", ack.node, took.as_millis());
    }
    let directed = n1
        .runtime()
        .remote_agent("analyst", "n2", "planner")
        .context("a handle to the analyst")?;
    match directed.run("publish again").await {
        Err(e) => println!("the analyst's next run is refused: {e}"),
        Ok(o) => {
            leaks += 1;
            println!("NOT refused: {o:?}");
        }
    }
    let honest = craft(
        &mallory,
        &mallory_key,
        &mallory,
        json!({"channel": "internal", "text": "x"}),
    );
    let r: Result<CallResult, ClientError> = client
        .request(
            "tool.publish",
            "call",
            &honest.0,
            (&honest.1, &mallory_key),
            Duration::from_secs(30),
        )
        .await;
    match r {
        Err(ClientError::Refused(why)) => println!("n3 refuses the subtree's calls too: {why}"),
        other => {
            leaks += 1;
            println!("NOT refused: {other:?}");
        }
    }

    stop.send(true)?;
    for s in serving {
        s.await??;
    }
    if leaks > 0 {
        bail!("{leaks} hostile action(s) got through");
    }
    println!(
        "\nevery hostile action was refused; {} nodes stopped cleanly",
        acks.len()
    );
    Ok(())
}
