//! Proposal benchmarks, beside the raw libraries in the same run: a durable one-row
//! redb commit and an AUTO tool call through the whole gate, against a CONFIRM call
//! from submission to the watchdog's verdict (the proposal written durably, the
//! watchdog actor asked; a rejection answers the caller), a PROPOSE call end to end
//! (proposal, verdict, intent, tool, commit with its rollback window), and proposals
//! per second from 32 concurrent agents. Latencies: median and p99 over 2,000 calls.

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bulwark_capabilities::{KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_runtime::{
    AgentHandle, AgentSpec, AmountLimit, ApprovalConfig, Runtime, ScriptedBrain, Tool,
    ToolManifest, ToolOutput, WatchdogRules,
};
use report::{fmt_ns, publish};
use serde_json::json;

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(report::target_dir())
        .join("bench-data")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn runtime(root: &KeyPair) -> Runtime {
    let rules = WatchdogRules {
        amount_limits: vec![AmountLimit {
            tool: "pay".into(),
            arg: "amount".into(),
            max: 1_000,
        }],
        ..WatchdogRules::default()
    };
    let rt = Runtime::builder()
        .data_dir(data_dir("proposals"))
        .root_public_key(root.public())
        .tenant_budget("acme", MicroUsd::from_usd(1_000_000).unwrap())
        .approvals(ApprovalConfig::new(vec![KeyPair::generate().public()]).rules(rules))
        .build()
        .await
        .unwrap();
    let noop = |_| async { Ok(ToolOutput::new(serde_json::Value::Null)) };
    rt.tools()
        .register(Tool::native(ToolManifest::new("noop", "Nothing"), noop))
        .unwrap();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("pay", "Pays").tier(Tier::Confirm),
            noop,
        ))
        .unwrap();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("refund", "Refunds")
                .tier(Tier::Propose)
                .compensation("noop"),
            noop,
        ))
        .unwrap();
    rt
}

async fn agent(rt: &Runtime, root: &KeyPair, id: &str) -> AgentHandle {
    let spec = AgentSpec::new(id);
    let grant = RootGrant::new(
        "acme",
        id,
        spec.key.public(),
        MicroUsd::from_usd(1_000).unwrap(),
        SystemTime::now() + Duration::from_secs(3600),
        2,
    )
    .tool("noop", Tier::Auto)
    .tool("pay", Tier::Auto)
    .tool("refund", Tier::Auto);
    let token = Token::mint(root, grant).unwrap();
    rt.spawn_agent(spec, token, Arc::new(ScriptedBrain::new(Vec::new())))
        .await
        .unwrap()
}

/// Median and p99 of `n` sequential calls of `f`, nanoseconds.
async fn latency<F, Fut>(n: usize, mut f: F) -> (f64, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..50 {
        f(i).await;
    }
    let mut times: Vec<f64> = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(50 + i).await;
        times.push(t.elapsed().as_nanos() as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times[n / 2], times[n * 99 / 100])
}

fn main() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let n = 2_000;
    let root = KeyPair::generate();
    let rt = tokio.block_on(runtime(&root));
    let a = tokio.block_on(agent(&rt, &root, "ap"));

    // Raw redb: one small row, committed durably.
    let db = redb::Database::create(data_dir("proposals-raw").join("raw.redb")).unwrap();
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let raw = tokio.block_on(latency(n, |i| {
        let txn = db.begin_write().unwrap();
        txn.open_table(T)
            .unwrap()
            .insert(i as u64, [7u8; 400].as_slice())
            .unwrap();
        txn.commit().unwrap();
        async {}
    }));
    let auto = tokio.block_on(latency(n, |_| async {
        a.call_tool("noop", json!({})).await.unwrap();
    }));
    // Over the watchdog's limit: the verdict is the answer.
    let verdict = tokio.block_on(latency(n, |i| {
        let a = &a;
        async move {
            let r = a.call_tool("pay", json!({"amount": 5_000, "n": i})).await;
            assert!(r.is_err());
        }
    }));
    let propose = tokio.block_on(latency(n, |i| {
        let a = &a;
        async move {
            a.call_tool("refund", json!({"order": i})).await.unwrap();
        }
    }));

    // Proposals per second: 32 agents submitting at once, every proposal durable.
    let agents: Vec<AgentHandle> = tokio.block_on(async {
        let mut v = Vec::new();
        for i in 0..32 {
            v.push(agent(&rt, &root, &format!("c{i}")).await);
        }
        v
    });
    let per_agent = 100;
    let start = Instant::now();
    tokio.block_on(async {
        let mut tasks = Vec::new();
        for (k, a) in agents.iter().enumerate() {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_agent {
                    let _ = a
                        .call_tool("pay", json!({"amount": 5_000, "k": k, "i": i}))
                        .await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let per_sec = (32 * per_agent) as f64 / start.elapsed().as_secs_f64();
    tokio.block_on(rt.shutdown()).unwrap();

    let row = |name: &str, (m, p): (f64, f64), note: &str| {
        format!("| {name} | {} | {} | {note} |\n", fmt_ns(m), fmt_ns(p))
    };
    let mut table = String::from("| measure | median | p99 | note |\n|---|---|---|---|\n");
    table += &row(
        "raw redb durable one-row commit",
        raw,
        "the floor of any durable step",
    );
    table += &row("AUTO call through the whole gate", auto, "for comparison");
    table += &row(
        "CONFIRM submission → watchdog verdict",
        verdict,
        &format!(
            "proposal durable + watchdog actor; goal ≤ 2 ms median: {}",
            if verdict.0 <= 2e6 {
                "met"
            } else {
                "**missed**"
            }
        ),
    );
    table += &row(
        "PROPOSE end to end (proposal, verdict, intent, tool, commit)",
        propose,
        "three durable commits",
    );
    table += &format!(
        "| proposals per second, 32 concurrent agents, durable | {per_sec:.0}/s | | group commit |\n"
    );
    std::fs::create_dir_all(format!("{}/criterion", report::target_dir())).unwrap();
    publish("bulwark-proposals.md", &table);
}
