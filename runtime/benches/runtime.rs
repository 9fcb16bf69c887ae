//! Runtime benchmarks, each beside the raw library underneath in the same run:
//! a ractor call round trip and a durable single-row redb commit against an AUTO tool
//! call through the whole gate with its audit entry durable; audited calls per second
//! with concurrent callers; agent spawns per second; child spawns against raw biscuit
//! appends; resident memory per idle agent.
//!
//! Data lives under `target/bench-data` (a real disk, so commits really sync).

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bulwark_capabilities::{Attenuation, KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_runtime::{
    AgentHandle, AgentSpec, Brain, Runtime, ScriptedBrain, Tool, ToolManifest, ToolOutput,
};
use criterion::Criterion;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use report::{fmt_ns, fmt_ratio, median_ns, publish};
use serde_json::json;

struct Echo;

impl Actor for Echo {
    type Msg = RpcReplyPort<u64>;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        reply: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(1);
        Ok(())
    }
}

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(report::target_dir())
        .join("bench-data")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Setup {
    rt: Runtime,
    root: KeyPair,
}

async fn runtime(name: &str) -> Setup {
    let root = KeyPair::generate();
    let rt = Runtime::builder()
        .data_dir(data_dir(name))
        .root_public_key(root.public())
        .tenant_budget("acme", MicroUsd::from_usd(1_000_000).unwrap())
        // The spawn benchmark starts hundreds of thousands of agents.
        .max_agents(usize::MAX)
        .build()
        .await
        .unwrap();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("noop", "Does nothing"),
            |_| async { Ok(ToolOutput::new(serde_json::Value::Null)) },
        ))
        .unwrap();
    Setup { rt, root }
}

fn token(root: &KeyPair, agent: &str, key: &KeyPair) -> Token {
    let grant = RootGrant::new(
        "acme",
        agent,
        key.public(),
        MicroUsd::from_usd(1_000).unwrap(),
        SystemTime::now() + Duration::from_secs(3600),
        4,
    )
    .tool("noop", Tier::Auto);
    Token::mint(root, grant).unwrap()
}

fn idle_brain() -> Arc<dyn Brain> {
    Arc::new(ScriptedBrain::new(Vec::new()))
}

async fn agent(s: &Setup, id: &str) -> AgentHandle {
    let spec = AgentSpec::new(id);
    let t = token(&s.root, id, &spec.key);
    s.rt.spawn_agent(spec, t, idle_brain()).await.unwrap()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn bench(c: &mut Criterion, tokio: &tokio::runtime::Runtime) -> Extra {
    let mut g = c.benchmark_group("call");
    // Raw ractor: one call round trip to an actor that answers at once.
    let (echo, _) = tokio.block_on(Actor::spawn(None, Echo, ())).unwrap();
    g.bench_function("raw_ractor_call", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    echo.call(|r| r, None).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    // Raw redb: insert one small row and commit durably.
    let db = redb::Database::create(data_dir("raw-redb").join("raw.redb")).unwrap();
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let mut n = 0u64;
    g.bench_function("raw_redb_durable_commit", |b| {
        b.iter(|| {
            let txn = db.begin_write().unwrap();
            txn.open_table(T)
                .unwrap()
                .insert(n, [7u8; 200].as_slice())
                .unwrap();
            txn.commit().unwrap();
            n += 1;
        })
    });
    // The whole gate: actor message, token + holder signature, tier, budget
    // reservation, durable audit intent, tool, commit, result entry.
    let s = tokio.block_on(runtime("gate"));
    let a = tokio.block_on(agent(&s, "caller"));
    g.bench_function("gate_auto_noop", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    a.call_tool("noop", json!({})).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    // Throughput with 64 concurrent callers: group commit folds their syncs together.
    let callers: Vec<AgentHandle> = tokio.block_on(async {
        let mut v = Vec::new();
        for i in 0..64 {
            v.push(agent(&s, &format!("c{i}")).await);
        }
        v
    });
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10);
    g.bench_function("gate_64_callers_per_call", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let per = (iters as usize).div_ceil(callers.len()).max(1);
                let start = Instant::now();
                let tasks: Vec<_> = callers
                    .iter()
                    .cloned()
                    .map(|a| {
                        tokio::spawn(async move {
                            for _ in 0..per {
                                a.call_tool("noop", json!({})).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                // Report the time per call.
                start.elapsed() * iters as u32 / (per * callers.len()) as u32
            })
        })
    });
    g.finish();

    // Spawns with pre-minted tokens, 256 at a time concurrently.
    let mut g = c.benchmark_group("spawn");
    g.sample_size(10);
    let sp = tokio.block_on(runtime("spawn"));
    let mut next = 0usize;
    g.bench_function("agent_spawn", |b| {
        b.iter_custom(|iters| {
            let batch: Vec<(AgentSpec, Token)> = (0..iters)
                .map(|_| {
                    next += 1;
                    let spec = AgentSpec::new(format!("s{next}"));
                    let t = token(&sp.root, &spec.id, &spec.key);
                    (spec, t)
                })
                .collect();
            tokio.block_on(async {
                let start = Instant::now();
                let mut pending = futures::stream::FuturesUnordered::new();
                let mut it = batch.into_iter();
                loop {
                    while pending.len() < 256 {
                        let Some((spec, t)) = it.next() else { break };
                        let rt = sp.rt.clone();
                        pending.push(tokio::spawn(async move {
                            rt.spawn_agent(spec, t, idle_brain()).await.unwrap()
                        }));
                    }
                    use futures::StreamExt;
                    match pending.next().await {
                        Some(r) => {
                            r.unwrap();
                        }
                        None => break,
                    }
                }
                start.elapsed()
            })
        })
    });
    // Child spawns: attenuation (a holder-signed block) plus the spawn.
    let parent = tokio.block_on(agent(&sp, "parent"));
    let mut k = 0usize;
    g.bench_function("child_spawn", |b| {
        b.iter_custom(|iters| {
            let specs: Vec<AgentSpec> = (0..iters)
                .map(|_| {
                    k += 1;
                    AgentSpec::new(format!("k{k}"))
                })
                .collect();
            tokio.block_on(async {
                let start = Instant::now();
                for spec in specs {
                    let att =
                        Attenuation::new(spec.id.clone(), spec.key.public()).only_tools(["noop"]);
                    parent.spawn_child(spec, att, idle_brain()).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    // Raw biscuit: the same third-party append, nothing else.
    let parent_token = parent.token().unwrap();
    let raw_root = biscuit_auth::KeyPair::new();
    let raw_holder = biscuit_auth::KeyPair::new();
    let raw = biscuit_auth::Biscuit::builder()
        .code(r#"tool("noop", 0); budget(1000000000);"#)
        .unwrap()
        .build(&raw_root)
        .unwrap();
    g.bench_function("raw_biscuit_third_party_append", |b| {
        b.iter(|| {
            let req = raw.third_party_request().unwrap();
            let block = biscuit_auth::BlockBuilder::new()
                .code(r#"delegate("k", hex:00); check if operation("noop");"#)
                .unwrap();
            let signed = req.create_block(&raw_holder.private(), block).unwrap();
            raw.append_third_party(raw_holder.public(), signed).unwrap()
        })
    });
    g.finish();

    // Memory per idle agent: resident growth over 5,000 spawns, beside the growth of
    // holding their 5,000 verified tokens (measured first, the same way).
    let mem = tokio.block_on(runtime("memory"));
    let n = 5_000u64;
    let before_tokens = rss_bytes();
    let tokens: Vec<(AgentSpec, Token)> = (0..n)
        .map(|i| {
            let spec = AgentSpec::new(format!("m{i}"));
            let t = token(&mem.root, &spec.id, &spec.key);
            (spec, t)
        })
        .collect();
    let per_token = rss_bytes().saturating_sub(before_tokens) / n;
    let token_bytes = tokens[0].1.size() as u64;
    let before = rss_bytes();
    tokio.block_on(async {
        for (spec, t) in tokens {
            mem.rt.spawn_agent(spec, t, idle_brain()).await.unwrap();
        }
    });
    let per_agent = rss_bytes().saturating_sub(before) / n;
    let _ = parent_token;
    Extra {
        per_agent_rss: per_agent,
        per_token_rss: per_token,
        token_bytes,
    }
}

struct Extra {
    per_agent_rss: u64,
    per_token_rss: u64,
    token_bytes: u64,
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    let extra = bench(&mut c, &tokio);
    c.final_summary();

    let get = |g: &str, b: &str| median_ns(g, b).unwrap_or(f64::NAN);
    let ractor = get("call", "raw_ractor_call");
    let redb = get("call", "raw_redb_durable_commit");
    let gate = get("call", "gate_auto_noop");
    let per_call = get("throughput", "gate_64_callers_per_call");
    let spawn = get("spawn", "agent_spawn");
    let child = get("spawn", "child_spawn");
    let append = get("spawn", "raw_biscuit_third_party_append");
    let mut t = String::from("| measure | bulwark | raw library | figure |\n|---|---|---|---|\n");
    t.push_str(&format!(
        "| AUTO tool call through the gate, audit durable, vs ractor call | {} | {} | gate adds {} |\n",
        fmt_ns(gate), fmt_ns(ractor), fmt_ns(gate - ractor)
    ));
    t.push_str(&format!(
        "| same call vs one durable redb commit | {} | {} | {} |\n",
        fmt_ns(gate),
        fmt_ns(redb),
        fmt_ratio(gate / redb)
    ));
    t.push_str(&format!(
        "| audited calls per second, 64 concurrent callers | {:.0}/s | {:.0}/s (1 commit each) | {} |\n",
        1e9 / per_call, 1e9 / redb, fmt_ratio(redb / per_call)
    ));
    t.push_str(&format!(
        "| agent spawns per second (pre-minted tokens) | {:.0}/s | | |\n",
        1e9 / spawn
    ));
    t.push_str(&format!(
        "| child spawns per second vs raw biscuit third-party appends | {:.0}/s | {:.0}/s | {} |\n",
        1e9 / child,
        1e9 / append,
        fmt_ratio(append / child)
    ));
    t.push_str(&format!(
        "| resident memory per idle agent, beside its token | {} B | token: {} B resident ({} B serialized) | |\n",
        extra.per_agent_rss, extra.per_token_rss, extra.token_bytes
    ));
    publish("bulwark-runtime.md", &t);
}
