//! Token benchmarks, each beside raw biscuit-auth doing the same work in the same run.
//!
//! Depth N is a chain of N agents: the root token and N-1 delegations. Every delegation
//! keeps two of three tools, raises a tier, lowers the budget and the expiry, and adds
//! one argument constraint. After the criterion runs, a table of medians and ratios is
//! printed (and written to target/criterion/bulwark-ratios.md).

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{self, Term};
use biscuit_auth::{AuthorizerBuilder, Biscuit, BlockBuilder};
use bulwark_capabilities::{
    ArgValue, Args, Attenuation, DatalogLimits, Denial, KeyPair, MicroUsd, Request, Revocations,
    RootGrant, Tier, Token, is_plain_address,
};
use criterion::{BenchmarkId, Criterion};
use report::{fmt_ns, fmt_ratio, median_ns, publish};

const DEPTHS: [usize; 3] = [1, 4, 8];

fn expiry() -> SystemTime {
    SystemTime::now() + Duration::from_secs(24 * 3600)
}

fn grant(holder: &KeyPair) -> RootGrant {
    RootGrant::new(
        "acme",
        "agent-0",
        holder.public(),
        MicroUsd::from_usd(1000).unwrap(),
        expiry(),
        16,
    )
    .tool("read_inbox", Tier::Auto)
    .tool("send_email", Tier::AutoPlus)
    .tool("pay", Tier::Propose)
}

fn delegation(i: usize, holder: &KeyPair) -> Attenuation {
    Attenuation::new(format!("agent-{i}"), holder.public())
        .only_tools(["send_email", "pay"])
        .tier("send_email", Tier::Propose)
        .budget(MicroUsd::from_usd(1000 - i as u64).unwrap())
        .expires_at(expiry() - Duration::from_secs(i as u64 * 60))
        .require("send_email.to ends_with @acme.example".parse().unwrap())
}

struct Chain {
    root: KeyPair,
    keys: Vec<KeyPair>,
    token: Token,
}

fn chain(depth: usize) -> Chain {
    let root = KeyPair::generate();
    let keys: Vec<KeyPair> = (0..depth).map(|_| KeyPair::generate()).collect();
    let mut token = Token::mint(&root, grant(&keys[0])).unwrap();
    for i in 1..depth {
        token = token
            .attenuate(&keys[i - 1], delegation(i, &keys[i]))
            .unwrap();
    }
    Chain { root, keys, token }
}

fn request(agent: &str) -> Request {
    Request {
        agent: agent.to_string(),
        tool: "send_email".into(),
        args: Args::from([("to".to_string(), ArgValue::from("bob@acme.example"))]),
        time: SystemTime::now(),
    }
}

// ---- raw biscuit-auth: the same Datalog, written directly ----

fn raw_root_block(holder: &KeyPair) -> BlockBuilder {
    let exp = expiry();
    BlockBuilder::new()
        .fact(builder::fact("tenant", &[builder::string("acme")]))
        .unwrap()
        .fact(builder::fact("agent", &[builder::string("agent-0")]))
        .unwrap()
        .fact(builder::fact(
            "holder",
            &[builder::bytes(&holder.public().to_bytes())],
        ))
        .unwrap()
        .code(
            r#"tool("pay", 2); tool("read_inbox", 0); tool("send_email", 1);
               budget(1000000000); max_depth(16);"#,
        )
        .unwrap()
        .fact(builder::fact("expires", &[builder::date(&exp)]))
        .unwrap()
        .code_with_params(
            "check if time($time), $time <= {exp}",
            HashMap::from([("exp".to_string(), builder::date(&exp))]),
            HashMap::new(),
        )
        .unwrap()
}

fn raw_delegation_block(i: usize, holder: &KeyPair) -> BlockBuilder {
    let exp = expiry() - Duration::from_secs(i as u64 * 60);
    let params = HashMap::from([
        ("agent".to_string(), builder::string(&format!("agent-{i}"))),
        (
            "holder".to_string(),
            builder::bytes(&holder.public().to_bytes()),
        ),
        (
            "budget".to_string(),
            builder::int(1_000_000_000 - i as i64 * 1_000_000),
        ),
        (
            "exp".to_string(),
            Term::Date(
                exp.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            ),
        ),
    ]);
    BlockBuilder::new()
        .code_with_params(
            r#"delegate({agent}, {holder}); tier_floor("send_email", 2); budget({budget}); expires({exp});
               check if operation("pay") or operation("send_email");
               check if time($time), $time <= {exp};
               check if operation($op), $op != "send_email" or arg_addr("to", $value), $value.ends_with("@acme.example");"#,
            params,
            HashMap::new(),
        )
        .unwrap()
}

fn raw_attenuate(token: &Biscuit, parent: &biscuit_auth::KeyPair, block: BlockBuilder) -> Biscuit {
    let req = token.third_party_request().unwrap();
    let signed = req.create_block(&parent.private(), block).unwrap();
    token.append_third_party(parent.public(), signed).unwrap()
}

/// The same secret as a Bulwark key and as a raw biscuit key.
fn key_pair() -> (KeyPair, biscuit_auth::KeyPair) {
    let secret: [u8; 32] = rand::random();
    let raw = biscuit_auth::KeyPair::from(
        &biscuit_auth::PrivateKey::from_bytes(&secret, biscuit_auth::Algorithm::Ed25519).unwrap(),
    );
    (KeyPair::from_secret_bytes(&secret), raw)
}

/// Raw biscuit authorization with the facts Bulwark gives a request, under the same
/// explicit limits Bulwark uses (biscuit's default allows 1 ms, which a busy machine
/// exceeds). A run limit comes back as an error for the caller to handle.
fn raw_authorize(token: &Biscuit, req: &Request) -> Result<usize, biscuit_auth::error::Token> {
    let mut b = AuthorizerBuilder::new()
        .set_limits(DatalogLimits::DEFAULT.to_biscuit())
        .fact(builder::fact("time", &[builder::date(&req.time)]))?
        .fact(builder::fact("operation", &[builder::string(&req.tool)]))?;
    for (k, v) in &req.args {
        if let ArgValue::Str(s) = v {
            b = b.fact(builder::fact(
                "arg_str",
                &[builder::string(k), builder::string(s)],
            ))?;
            if is_plain_address(s) {
                b = b.fact(builder::fact(
                    "arg_addr",
                    &[builder::string(k), builder::string(s)],
                ))?;
            }
        }
    }
    let mut a = b
        .policy("allow if operation($op), tool($op, $tier)")?
        .policy("deny if true")?
        .build(token)?;
    a.authorize()
}

/// Whether a timed result is usable: a decision, or a run limit reached under load
/// (reported, not a panic). Anything else means the benchmark is wrong.
fn settle<T, E: std::fmt::Display>(
    result: Result<T, E>,
    retryable: impl Fn(&E) -> bool,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if retryable(&e) => {
            eprintln!("note: a Datalog run limit was reached under load: {e}");
            None
        }
        Err(e) => panic!("the benchmark request was denied: {e}"),
    }
}

fn raw_limit(e: &biscuit_auth::error::Token) -> bool {
    DatalogLimits::DEFAULT.reached(e).is_some()
}

fn bench(c: &mut Criterion) {
    for depth in DEPTHS {
        let ch = chain(depth);
        let bytes = ch.token.to_bytes().unwrap();
        let root_pub = ch.root.public();
        let raw_root = biscuit_auth::PublicKey::from_bytes(
            &root_pub.to_bytes(),
            biscuit_auth::Algorithm::Ed25519,
        )
        .unwrap();
        let agent = ch.token.agent().to_string();
        let req = request(&agent);
        let none = Revocations::new();
        // Sanity: both sides accept this request before anything is timed.
        assert!(
            Token::from_bytes(&bytes, &root_pub)
                .unwrap()
                .authorize(&req, &none)
                .is_ok()
        );
        settle(
            raw_authorize(&Biscuit::from(&bytes, raw_root).unwrap(), &req),
            raw_limit,
        );

        let mut g = c.benchmark_group("authorize_cold");
        g.bench_with_input(BenchmarkId::new("bulwark", depth), &bytes, |b, bytes| {
            b.iter(|| {
                let t = Token::from_bytes(black_box(bytes), &root_pub).unwrap();
                t.authorize(black_box(&req), &none).unwrap()
            })
        });
        g.bench_with_input(
            BenchmarkId::new("bulwark_datalog", depth),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let t = Token::from_bytes(black_box(bytes), &root_pub).unwrap();
                    settle(
                        t.authorize_datalog(black_box(&req), &none),
                        Denial::is_retryable,
                    )
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("raw_biscuit", depth),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let t = Biscuit::from(black_box(bytes), raw_root).unwrap();
                    settle(raw_authorize(&t, black_box(&req)), raw_limit)
                })
            },
        );
        g.finish();

        let mut g = c.benchmark_group("authorize_warm");
        let parsed_raw = Biscuit::from(&bytes, raw_root).unwrap();
        g.bench_function(BenchmarkId::new("bulwark", depth), |b| {
            b.iter(|| ch.token.authorize(black_box(&req), &none).unwrap())
        });
        g.bench_function(BenchmarkId::new("bulwark_datalog", depth), |b| {
            b.iter(|| {
                settle(
                    ch.token.authorize_datalog(black_box(&req), &none),
                    Denial::is_retryable,
                )
            })
        });
        g.bench_function(BenchmarkId::new("raw_biscuit", depth), |b| {
            b.iter(|| settle(raw_authorize(&parsed_raw, black_box(&req)), raw_limit))
        });
        g.finish();

        // Attenuate the depth-N token once more (to depth N+1).
        let (next, _) = key_pair();
        let parent = ch.keys.last().unwrap();
        let mut g = c.benchmark_group("attenuate");
        g.bench_function(BenchmarkId::new("bulwark", depth), |b| {
            b.iter(|| {
                ch.token
                    .attenuate(parent, delegation(depth, &next))
                    .unwrap()
            })
        });
        let (raw_tip, raw_holder) = {
            let (_, root_raw) = key_pair();
            let (h0, mut holder) = key_pair();
            let mut t = raw_mint(&root_raw, &h0);
            for i in 1..depth {
                let (k, k_raw) = key_pair();
                t = raw_attenuate(&t, &holder, raw_delegation_block(i, &k));
                holder = k_raw;
            }
            (t, holder)
        };
        g.bench_function(BenchmarkId::new("raw_biscuit", depth), |b| {
            b.iter(|| raw_attenuate(&raw_tip, &raw_holder, raw_delegation_block(depth, &next)))
        });
        g.finish();
    }

    let (root, root_raw) = key_pair();
    let holder = KeyPair::generate();
    let mut g = c.benchmark_group("mint");
    g.bench_function("bulwark", |b| {
        b.iter(|| Token::mint(&root, grant(&holder)).unwrap())
    });
    g.bench_function("raw_biscuit", |b| b.iter(|| raw_mint(&root_raw, &holder)));
    g.finish();
}

fn raw_mint(root: &biscuit_auth::KeyPair, holder: &KeyPair) -> Biscuit {
    Biscuit::builder()
        .merge(raw_root_block(holder))
        .build(root)
        .unwrap()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    report();
}

fn report() {
    let mut out = String::from(
        "| operation | depth | bulwark | raw biscuit-auth | ratio |\n|---|---|---|---|---|\n",
    );
    let mut row = |op: &str, depth: &str, ours: &str, raw: &str| {
        if let (Some(a), Some(b)) = (median_ns(op, ours), median_ns(op, raw)) {
            out.push_str(&format!(
                "| {op} ({}) | {depth} | {} | {} | {} |\n",
                ours.split('/').next().unwrap_or(ours),
                fmt_ns(a),
                fmt_ns(b),
                fmt_ratio(a / b)
            ));
        }
    };
    for depth in DEPTHS {
        let d = depth.to_string();
        row(
            "authorize_cold",
            &d,
            &format!("bulwark/{depth}"),
            &format!("raw_biscuit/{depth}"),
        );
        row(
            "authorize_cold",
            &d,
            &format!("bulwark_datalog/{depth}"),
            &format!("raw_biscuit/{depth}"),
        );
        row(
            "authorize_warm",
            &d,
            &format!("bulwark/{depth}"),
            &format!("raw_biscuit/{depth}"),
        );
        row(
            "authorize_warm",
            &d,
            &format!("bulwark_datalog/{depth}"),
            &format!("raw_biscuit/{depth}"),
        );
        row(
            "attenuate",
            &d,
            &format!("bulwark/{depth}"),
            &format!("raw_biscuit/{depth}"),
        );
    }
    row("mint", "1", "bulwark", "raw_biscuit");
    out.push_str("\n| depth | token bytes | bytes per level |\n|---|---|---|\n");
    for depth in [1usize, 2, 4, 8, 16] {
        let t = chain(depth).token;
        out.push_str(&format!(
            "| {depth} | {} | {} |\n",
            t.size(),
            t.size() / depth
        ));
    }
    publish("bulwark-tokens.md", &out);
}
