//! Cluster benchmarks beside the raw libraries, in one run: opening an envelope
//! (decode, token, holder signature, replay check) at token depth 4, cold (a token the
//! node has not seen) and warm, against a raw MessagePack decode plus one raw ed25519
//! verification of the same bytes; and a raw async-nats request/reply round trip on
//! loopback (a nats-server the benchmark starts on a free port), the floor under every
//! call between nodes. Then three nodes embedded in the benchmark on that server: an
//! AUTO tool call made on the tool's own node against the same call forwarded from
//! another node (beside one raw durable redb commit, the tool node's record), a child
//! spawned on the parent's node against one placed on another node, and how long a
//! revocation takes to be acknowledged by all three nodes (p50, p99 over 300).

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::time::{Duration, SystemTime};

use bulwark_capabilities::{
    Attenuation, DomainSignature, KeyPair, MicroUsd, Revocations, RootGrant, Tier, Token,
};
use bulwark_node::cluster::envelope::{ENVELOPE_DOMAIN, Envelope, Verifier};
use criterion::Criterion;
use report::{fmt_ns, fmt_ratio, median_ns, publish};

const DEPTH: usize = 4;

fn chain() -> (KeyPair, KeyPair, Token) {
    let root = KeyPair::generate();
    let keys: Vec<KeyPair> = (0..DEPTH).map(|_| KeyPair::generate()).collect();
    let grant = RootGrant::new(
        "acme",
        "agent-0",
        keys[0].public(),
        MicroUsd::from_usd(10).unwrap(),
        SystemTime::now() + Duration::from_secs(3600),
        16,
    )
    .tool("echo", Tier::Auto)
    .tool("send", Tier::Auto);
    let mut token = Token::mint(&root, grant).unwrap();
    for i in 1..DEPTH {
        token = token
            .attenuate(
                &keys[i - 1],
                Attenuation::new(format!("agent-{i}"), keys[i].public()),
            )
            .unwrap();
    }
    let holder = keys.into_iter().last().unwrap();
    (root, holder, token)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let (root, holder, token) = chain();
    let to = "bulwark.demo.agent.a2";
    let body = vec![7u8; 256];
    let revoked = Revocations::new();
    let mut g = c.benchmark_group("envelope");
    // Each iteration opens a fresh envelope (a new id), so the replay check passes.
    g.bench_function("open_warm_depth4", |b| {
        let verifier = Verifier::new(root.public());
        b.iter_batched(
            || {
                Envelope::seal(&token, &holder, to, "call", body.clone(), SystemTime::now())
                    .unwrap()
                    .to_bytes()
                    .unwrap()
            },
            |bytes| {
                verifier
                    .open(&bytes, to, SystemTime::now(), &revoked)
                    .unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("open_cold_depth4", |b| {
        b.iter_batched(
            || {
                let bytes =
                    Envelope::seal(&token, &holder, to, "call", body.clone(), SystemTime::now())
                        .unwrap()
                        .to_bytes()
                        .unwrap();
                (Verifier::new(root.public()), bytes)
            },
            |(verifier, bytes)| {
                verifier
                    .open(&bytes, to, SystemTime::now(), &revoked)
                    .unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let sealed =
        Envelope::seal(&token, &holder, to, "call", body.clone(), SystemTime::now()).unwrap();
    let bytes = sealed.to_bytes().unwrap();
    let signed = sealed.signed_bytes(&token);
    g.bench_function("raw_decode_and_ed25519_verify", |b| {
        b.iter(|| {
            let e: Envelope = rmp_serde::from_slice(&bytes).unwrap();
            assert!(DomainSignature(e.sig).verify(&holder.public(), ENVELOPE_DOMAIN, &signed));
        })
    });
    g.finish();

    let nats = NatsServer::start();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let client = tokio.block_on(async {
        let client = async_nats::connect(nats.url.as_str()).await.unwrap();
        let mut sub = client.subscribe("bench.echo").await.unwrap();
        let responder = client.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    responder.publish(reply, m.payload).await.unwrap();
                }
            }
        });
        client.flush().await.unwrap();
        client
    });
    let mut g = c.benchmark_group("nats");
    g.bench_function("raw_request_reply", |b| {
        b.iter(|| {
            tokio.block_on(async {
                client
                    .request("bench.echo", vec![7u8; 256].into())
                    .await
                    .unwrap()
            })
        })
    });
    g.finish();
    let reach = tokio.block_on(async { cluster_benches(&mut c, &nats.url).await });
    c.final_summary();
    let nats_rr = median_ns("nats", "raw_request_reply").unwrap_or(f64::NAN);
    let local_call = median_ns("calls", "local_auto_call").unwrap_or(f64::NAN);
    let remote_call = median_ns("calls", "remote_auto_call").unwrap_or(f64::NAN);
    let redb_commit = median_ns("calls", "raw_redb_durable_commit").unwrap_or(f64::NAN);
    let local_spawn = median_ns("spawn", "local_child_spawn").unwrap_or(f64::NAN);
    let remote_spawn = median_ns("spawn", "remote_child_spawn").unwrap_or(f64::NAN);
    let call_budget = 2.0 * nats_rr + redb_commit;
    let met = |ok: bool| if ok { "met" } else { "missed" };

    let warm = median_ns("envelope", "open_warm_depth4").unwrap_or(f64::NAN);
    let cold = median_ns("envelope", "open_cold_depth4").unwrap_or(f64::NAN);
    let raw = median_ns("envelope", "raw_decode_and_ed25519_verify").unwrap_or(f64::NAN);
    let table = format!(
        "| measure | bulwark | raw | ratio | goal |\n|---|---|---|---|---|\n\
         | open an envelope, token depth 4, token seen before | {} | {} | {} | ≤ 100 µs: {} |\n\
         | open an envelope, token depth 4, token not seen before | {} | {} | {} | |\n\
         | async-nats request/reply round trip on loopback, 256 B | {} | | | |\n",
        fmt_ns(warm),
        fmt_ns(raw),
        fmt_ratio(warm / raw),
        if warm <= 100_000.0 { "met" } else { "missed" },
        fmt_ns(cold),
        fmt_ns(raw),
        fmt_ratio(cold / raw),
        fmt_ns(nats_rr),
    ) + &format!(
        "| AUTO call on the tool's own node | {} | | | |\n\
         | the same call forwarded from another node | {} | | | |\n\
         | remote minus local, vs 2 × request/reply + one durable redb commit ({}) | {} | {} | {} | ≤ 1×: {} |\n\
         | child spawned on another node vs on the parent's node | {} | {} | {} | ≤ 2×: {} |\n\
         | revocation acknowledged by 3 nodes, p50 / p99 of 300 | {} / {} | | | p99 ≤ 50 ms: {} |\n",
        fmt_ns(local_call),
        fmt_ns(remote_call),
        fmt_ns(redb_commit),
        fmt_ns(remote_call - local_call),
        fmt_ns(call_budget),
        fmt_ratio((remote_call - local_call) / call_budget),
        met(remote_call - local_call <= call_budget),
        fmt_ns(remote_spawn),
        fmt_ns(local_spawn),
        fmt_ratio(remote_spawn / local_spawn),
        met(remote_spawn <= 2.0 * local_spawn),
        fmt_ns(reach.0),
        fmt_ns(reach.1),
        met(reach.1 <= 50e6),
    );
    publish("bulwark-cluster.md", &table);
}

fn echo() -> bulwark_runtime::Tool {
    bulwark_runtime::Tool::native(
        bulwark_runtime::ToolManifest::new("echo", "returns its arguments").tier(Tier::Auto),
        |input| async move { Ok(bulwark_runtime::ToolOutput::new(input.args)) },
    )
}

fn brain() -> bulwark_runtime::BrainFactory {
    std::sync::Arc::new(|| {
        std::sync::Arc::new(bulwark_runtime::ScriptedBrain::new(Vec::new()))
            as std::sync::Arc<dyn bulwark_runtime::Brain>
    })
}

/// Three nodes on `url`: calls, spawns and revocations across them. Returns the
/// revocation reach's p50 and p99, ns.
async fn cluster_benches(c: &mut Criterion, url: &str) -> (f64, f64) {
    use bulwark_node::cluster::config::NodeConfig;
    use bulwark_node::cluster::node::Node;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    let config = |id: &str| {
        let mut c = NodeConfig::new(id, "bench", dir.path().join(id), root.public(), url);
        c.operator_keys = vec![operator.public()];
        c
    };
    let n1 = Arc::new(
        Node::builder(config("n1"))
            .brain("idle", brain())
            .start()
            .await
            .unwrap(),
    );
    let n2 = Arc::new(
        Node::builder(config("n2"))
            .brain("idle", brain())
            .start()
            .await
            .unwrap(),
    );
    let n3 = Arc::new(
        Node::builder(config("n3"))
            .tool(echo())
            .start()
            .await
            .unwrap(),
    );
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
    // Bounded: the nodes see each other and n2 reaches n3's tool.
    for _ in 0..1200 {
        let seen = n1.status().nodes.len() == 3;
        if seen && n2.runtime().tools().get_manifest("echo").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        n2.runtime().tools().get_manifest("echo").is_some(),
        "n2 never reached echo"
    );
    let agent = |node: &Node, id: &str| {
        let spec = bulwark_runtime::AgentSpec::new(id);
        let token = Token::mint(
            &root,
            RootGrant::new(
                "acme",
                id,
                spec.key.public(),
                MicroUsd::from_usd(1_000_000).unwrap(),
                SystemTime::now() + Duration::from_secs(3600),
                4,
            )
            .tool("echo", Tier::Auto),
        )
        .unwrap();
        let runtime = node.runtime().clone();
        async move {
            let brain = runtime.brain("idle").unwrap_or_else(|| brain()());
            runtime.spawn_agent(spec, token, brain).await.unwrap()
        }
    };
    let here = agent(&n3, "local-caller").await;
    let there = agent(&n2, "remote-caller").await;
    let handle = tokio::runtime::Handle::current();
    let mut g = c.benchmark_group("calls");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    g.bench_function("local_auto_call", |b| {
        b.iter(|| {
            tokio::task::block_in_place(|| {
                handle.block_on(here.call_tool("echo", serde_json::json!({"n": 1})))
            })
            .unwrap()
        })
    });
    g.bench_function("remote_auto_call", |b| {
        b.iter(|| {
            tokio::task::block_in_place(|| {
                handle.block_on(there.call_tool("echo", serde_json::json!({"n": 1})))
            })
            .unwrap()
        })
    });
    let db = redb::Database::create(dir.path().join("raw.redb")).unwrap();
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
    g.finish();

    // Each spawn makes a new agent: few samples, so the nodes stay under their
    // agent limit.
    let parent = agent(&n1, "parent").await;
    let mut g = c.benchmark_group("spawn");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let mut k = 0u64;
    g.bench_function("local_child_spawn", |b| {
        b.iter(|| {
            k += 1;
            let spec = bulwark_runtime::AgentSpec::new(format!("local-{k}"));
            let att = Attenuation::new(format!("local-{k}"), spec.key.public());
            tokio::task::block_in_place(|| {
                handle.block_on(parent.spawn_child(spec, att, brain()()))
            })
            .unwrap()
        })
    });
    g.bench_function("remote_child_spawn", |b| {
        b.iter(|| {
            k += 1;
            let request = bulwark_runtime::SpawnRequest {
                agent: format!("far-{k}"),
                task: String::new(),
                brain: "idle".into(),
                tools: None,
                budget: None,
                tiers: Default::default(),
                constraints: Vec::new(),
                pass: Vec::new(),
                node: None,
            };
            tokio::task::block_in_place(|| handle.block_on(parent.spawn_child_on("n2", &request)))
                .unwrap()
        })
    });
    g.finish();

    // Revocation reach: each a fresh id, acknowledged by all three nodes.
    let mut reach: Vec<f64> = Vec::with_capacity(300);
    for _ in 0..300 {
        let id: [u8; 32] = rand::random();
        let acks = n1
            .revoke(&id, &operator, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(acks.len(), 3, "a node did not acknowledge: {acks:?}");
        let slowest = acks.iter().map(|(_, t)| *t).max().unwrap_or_default();
        reach.push(slowest.as_nanos() as f64);
    }
    reach.sort_by(f64::total_cmp);
    let p50 = reach[reach.len() / 2];
    let p99 = reach[reach.len() * 99 / 100];

    stop.send(true).unwrap();
    for s in serving {
        s.await.unwrap().unwrap();
    }
    (p50, p99)
}

/// A nats-server on a free loopback port, stopped when dropped.
struct NatsServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> NatsServer {
        let binary = std::env::var("BULWARK_NATS_SERVER").unwrap_or_else(|_| {
            format!(
                "{}/.cache/bulwark/nats-server/nats-server",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (run scripts/fetch-nats-server): {e}")
            });
        let file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        // Owned from here: dropped (killed and waited for) on every path.
        let mut server = NatsServer {
            child,
            url: String::new(),
            _dir: dir,
        };
        for _ in 0..600 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = v["nats"][0].as_str()
            {
                server.url = url.to_string();
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server wrote no ports file within 30 s");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
