//! Integration tests of the embedded runtime, against real redb files and real tokens.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(missing_docs)] // helpers of this test binary only

mod agents;
mod audit;
mod brain;
mod budget;
mod containment;
mod crash;
mod dedup;
mod gate;
mod guards;
mod metrics;
mod proposals;
mod sandbox;
mod sandbox_tools;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulwark_capabilities::{KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_runtime::{
    AgentHandle, AgentSpec, Brain, BrainAction, ManualClock, Runtime, ScriptedBrain, Tool,
    ToolError, ToolManifest, ToolOutput,
};
use serde_json::json;

/// A fixed start time for the manual clock.
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A runtime on a fresh data directory with a manual clock and the test tools.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub root: KeyPair,
    pub clock: Arc<ManualClock>,
    pub rt: Runtime,
}

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = KeyPair::generate();
        let clock = Arc::new(ManualClock::new(t0()));
        let rt = build(dir.path(), &root, clock.clone()).await;
        Harness {
            dir,
            root,
            clock,
            rt,
        }
    }

    /// Shuts the runtime down and opens a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.rt.shutdown().await.unwrap();
        self.rt = build(self.dir.path(), &self.root, self.clock.clone()).await;
    }

    /// A root token for `agent` with `tools`, `budget_usd` and depth 3.
    pub fn token(
        &self,
        key: &KeyPair,
        agent: &str,
        tools: &[(&str, Tier)],
        budget_usd: &str,
    ) -> Token {
        let mut grant = RootGrant::new(
            "acme",
            agent,
            key.public(),
            budget_usd.parse::<MicroUsd>().unwrap(),
            t0() + Duration::from_secs(30 * 24 * 3600),
            3,
        );
        for (tool, tier) in tools {
            grant = grant.tool(*tool, *tier);
        }
        Token::mint(&self.root, grant).unwrap()
    }

    /// Spawns `agent` with `tools` and `brain`.
    pub async fn agent(
        &self,
        agent: &str,
        tools: &[(&str, Tier)],
        budget_usd: &str,
        brain: Arc<dyn Brain>,
    ) -> AgentHandle {
        let spec = AgentSpec::new(agent);
        let token = self.token(&spec.key, agent, tools, budget_usd);
        self.rt.spawn_agent(spec, token, brain).await.unwrap()
    }
}

pub async fn try_build(
    dir: &std::path::Path,
    root: &KeyPair,
    clock: Arc<ManualClock>,
) -> Result<Runtime, bulwark_runtime::BuildError> {
    let rt = Runtime::builder()
        .data_dir(dir)
        .root_public_key(root.public())
        .clock(clock)
        .build()
        .await?;
    register_tools(&rt);
    Ok(rt)
}

pub async fn build(dir: &std::path::Path, root: &KeyPair, clock: Arc<ManualClock>) -> Runtime {
    try_build(dir, root, clock).await.unwrap()
}

/// One-cent tools and friends used across the tests.
pub fn register_tools(rt: &Runtime) {
    let t = rt.tools();
    t.register(Tool::native(
        ToolManifest::new("read_inbox", "Lists the inbox").tier(Tier::Auto),
        |_| async { Ok(ToolOutput::new(json!(["hello from bob"]))) },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("send_email", "Sends an email")
            .schema(json!({"type": "object", "required": ["to", "body"],
                "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
                "additionalProperties": false}))
            .tier(Tier::AutoPlus)
            .max_cost(MicroUsd::new(10_000).unwrap())
            .channel_dedup(bulwark_runtime::ChannelDedup {
                channel_arg: "to".into(),
                content_args: vec!["body".into()],
                window_secs: 600,
            }),
        |input| async move {
            Ok(ToolOutput::with_cost(
                json!({"sent_to": input.args["to"]}),
                MicroUsd::new(10_000).unwrap(),
            ))
        },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("lookup", "Costs a cent").max_cost(MicroUsd::new(10_000).unwrap()),
        |_| async {
            Ok(ToolOutput::with_cost(
                json!("ok"),
                MicroUsd::new(7_000).unwrap(),
            ))
        },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("pay", "Pays").tier(Tier::Confirm),
        |_| async { Ok(ToolOutput::new(json!("paid"))) },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("refund", "Refunds")
            .tier(Tier::Propose)
            .compensation("unrefund"),
        |_| async { Ok(ToolOutput::new(json!("refunded"))) },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("wipe", "Deletes everything").tier(Tier::Block),
        |_| async { Ok(ToolOutput::new(json!("wiped"))) },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("panicky", "Panics"),
        |_| async {
            if true {
                panic!("tool bug");
            }
            Ok(ToolOutput::new(json!(null)))
        },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("sleepy", "Hangs").timeout(Duration::from_millis(200)),
        |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(ToolOutput::new(json!(null)))
        },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("failing", "Fails"),
        |_| async { Err(ToolError("upstream said no".into())) },
    ))
    .unwrap();
    t.register(Tool::native(
        ToolManifest::new("finance_report", "Reads the finance API").secret("finance_key"),
        |input| async move {
            let key = input
                .secrets
                .get("finance_key")
                .cloned()
                .unwrap_or_default();
            Ok(ToolOutput::new(
                json!({"key_prefix": key.chars().take(4).collect::<String>()}),
            ))
        },
    ))
    .unwrap();
}

/// A brain that calls each tool once (with its args), then finishes.
pub fn calls(calls: &[(&str, serde_json::Value)]) -> Arc<dyn Brain> {
    let mut actions: Vec<BrainAction> = calls
        .iter()
        .map(|(tool, args)| BrainAction::CallTool {
            tool: tool.to_string(),
            args: args.clone(),
        })
        .collect();
    actions.push(BrainAction::Finish {
        answer: "done".into(),
    });
    Arc::new(ScriptedBrain::new(actions))
}
