//! Cluster benchmarks beside the raw libraries, in one run: opening an envelope
//! (decode, token, holder signature, replay check) at token depth 4, cold (a token the
//! node has not seen) and warm, against a raw MessagePack decode plus one raw ed25519
//! verification of the same bytes; and a raw async-nats request/reply round trip on
//! loopback (a nats-server the benchmark starts on a free port), the floor under every
//! call between nodes.

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
    let tokio = tokio::runtime::Runtime::new().unwrap();
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
    c.final_summary();
    let nats_rr = median_ns("nats", "raw_request_reply").unwrap_or(f64::NAN);

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
    );
    publish("bulwark-cluster.md", &table);
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
