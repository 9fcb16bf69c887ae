//! Agents across real node processes: spawned on one node by a token holder, directed
//! by holders in their chain only, calling a sandboxed tool hosted on another node
//! that checks every call again; and the attacks on each of those steps, refused and
//! audited while the honest request still goes through.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bulwark_capabilities::{Approval, Attenuation, KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_node::cluster::client::{ClientError, ClusterClient};
use bulwark_node::cluster::envelope::Envelope;
use bulwark_node::cluster::wire::{Call, CallResult, Held, Hold, Spawn, Spawned};
use bulwark_runtime::SignedCall;
use common::*;
use serde_json::{Value, json};

/// A cluster of three node processes: n1 offers brain `idle`, n2 brain `worker`
/// (which calls `shout` and finishes), n3 hosts the sandboxed tools `shout` (AUTO)
/// and `wire` (CONFIRM). One operator key.
struct Cluster {
    dir: tempfile::TempDir,
    procs: Procs,
    url: String,
    root: KeyPair,
    operator: KeyPair,
    pids: Vec<(String, u32)>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut procs = Procs(Vec::new());
        let url = start_nats(dir.path(), &mut procs);
        let root = KeyPair::generate();
        let operator = KeyPair::generate();
        let d = dir.path();
        std::fs::write(d.join("shout.js"), "print(JSON.stringify(\"HELLO\"));\n").expect("js");
        std::fs::write(
            d.join("worker.json"),
            json!([{"action": "call_tool", "tool": "shout", "args": {"text": "hi"}},
                   {"action": "finish", "answer": "shouted"}])
            .to_string(),
        )
        .expect("brain");
        std::fs::write(d.join("idle.json"), "[]").expect("brain");
        std::fs::write(
            d.join("payer.json"),
            json!([{"action": "call_tool", "tool": "wire", "args": {"to": "x"}},
                   {"action": "finish", "answer": "paid"}])
            .to_string(),
        )
        .expect("brain");
        let brains = |name: &str| {
            format!("\n[brains.{name}]\nkind = \"scripted\"\nfile = \"{name}.json\"\n")
        };
        let tools = "\n[[tools]]\nname = \"shout\"\ntier = \"auto\"\nmax_cost = \"0.01\"\njs = \"shout.js\"\n\
                     \n[[tools]]\nname = \"wire\"\ntier = \"confirm\"\nmax_cost = \"0.01\"\njs = \"shout.js\"\n\
                     \n[[tools]]\nname = \"tiny\"\ntier = \"auto\"\nmax_cost = \"0.01\"\njs = \"shout.js\"\nlimits = { output_bytes = 4 }\n";
        let mut pids = Vec::new();
        for (id, extra) in [
            ("n1", brains("idle")),
            ("n2", brains("worker") + &brains("payer")),
            ("n3", tools.to_string()),
        ] {
            let config = write_config_with(
                d,
                id,
                &url,
                &root.public().to_hex(),
                &[operator.public().to_hex()],
            );
            let mut text = std::fs::read_to_string(&config).expect("read");
            text.push_str(&extra);
            std::fs::write(&config, text).expect("write");
            pids.push((id.to_string(), start_node(&config, id, &mut procs)));
        }
        for id in ["n1", "n2", "n3"] {
            wait_for(&url, id, "alive");
        }
        Cluster {
            dir,
            procs,
            url,
            root,
            operator,
            pids,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A root token for `agent` (tools shout AUTO, wire AUTO: the manifest makes
    /// wire CONFIRM; tiny; messaging), saved with its holder key as `<agent>.tok` / `<agent>.key`.
    fn mint(&self, agent: &str) -> (Token, KeyPair) {
        let key = KeyPair::generate();
        let grant = RootGrant::new(
            "acme",
            agent,
            key.public(),
            MicroUsd::from_usd(5).expect("budget"),
            SystemTime::now() + Duration::from_secs(3600),
            4,
        )
        .tool("shout", Tier::Auto)
        .tool("wire", Tier::Auto)
        .tool("tiny", Tier::Auto)
        .tool(bulwark_runtime::MESSAGE_CAPABILITY, Tier::Auto);
        let token = Token::mint(&self.root, grant).expect("mint");
        std::fs::write(
            self.path(&format!("{agent}.tok")),
            token.to_base64().expect("b64"),
        )
        .expect("write token");
        key.save(&self.path(&format!("{agent}.key")))
            .expect("save key");
        (token, key)
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--nats", &self.url, "--cluster", "t", "--json"]);
        bulwark(&all)
    }

    /// `bulwark agent spawn` of `agent` (brain of the same name) by `boss`, with `extra`
    /// flags.
    fn spawn(&self, agent: &str, extra: &[&str]) -> std::process::Output {
        let (token, key) = (self.file("boss.tok"), self.file("boss.key"));
        let mut args = vec![
            "agent", "spawn", "--token", &token, "--key", &key, "--agent", agent, "--brain", agent,
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    fn file(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8").to_string()
    }

    /// Waits (bounded) until node `id` reports it can reach `tool`.
    fn wait_reaches(&self, id: &str, tool: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reaches = status(&self.url).and_then(|s| {
                s["nodes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|n| n["id"] == id))
                    .map(|n| n["reaches"].clone())
            });
            if reaches
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|t| t == tool))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {tool}: {reaches:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every node and returns each one's audit trail.
    fn stop_all(&mut self) -> Vec<(String, Vec<Value>)> {
        let pids = self.pids.clone();
        pids.iter()
            .map(|(id, pid)| {
                stop(&mut self.procs, *pid);
                (
                    id.clone(),
                    trail(&self.dir.path().join(format!("{id}-data"))),
                )
            })
            .collect()
    }
}

fn kinds<'a>(trail: &'a [Value], kind: &str) -> Vec<&'a Value> {
    trail.iter().filter(|e| e["kind"] == kind).collect()
}

fn client(url: &str, rt: &tokio::runtime::Runtime) -> ClusterClient {
    let nats = rt
        .block_on(async_nats::connect(url))
        .expect("connect to nats");
    ClusterClient::new(nats, "t")
}

#[test]
fn a_holder_spawns_directs_and_lists_agents_whose_calls_run_on_the_tool_node() {
    let mut c = Cluster::start();
    c.mint("boss");
    c.mint("stranger");
    c.wait_reaches("n2", "shout");

    let out = c.spawn("worker", &["--label", "zone=n2", "--only-tools", "shout"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spawned: Spawned = serde_json::from_slice(&out.stdout).expect("spawn json");
    assert_eq!(
        (spawned.agent.as_str(), spawned.node.as_str()),
        ("worker", "n2")
    );

    let out = c.cli(&["agent", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("list json");
    assert_eq!(
        list["agents"],
        json!([{"agent": "worker", "node": "n2", "state": "idle"}])
    );

    // Somebody outside the agent's chain cannot give it a task.
    let run = |tok: &str, key: &str| {
        c.cli(&[
            "agent",
            "run",
            "--agent",
            "worker",
            "--token",
            &c.file(tok),
            "--key",
            &c.file(key),
            "--task",
            "shout",
        ])
    };
    let out = run("stranger.tok", "stranger.key");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("chain"));

    // Its parent can; the tool runs on n3.
    let out = run("boss.tok", "boss.key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_slice(&out.stdout).expect("run json");
    assert_eq!(outcome["answer"], "shouted", "{outcome}");
    assert_eq!(outcome["actions"][0]["tool"], "shout");
    assert_eq!(outcome["actions"][0]["allowed"], true, "{outcome}");
    assert!(
        outcome["actions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("HELLO")
    );

    // A message from another node needs the messaging capability, checked on the
    // worker's node: granted to boss, not to a token narrowed to `shout`.
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let cluster = client(&c.url, &rt);
    let boss = Token::from_base64(
        std::fs::read_to_string(c.path("boss.tok"))
            .expect("token")
            .trim(),
        &c.root.public(),
    )
    .expect("boss token");
    let boss_key = KeyPair::load(&c.path("boss.key")).expect("boss key");
    let sent = rt.block_on(
        cluster
            .agent("worker", boss.clone(), boss_key.clone())
            .message("hi"),
    );
    assert!(matches!(sent, Ok(true)), "{sent:?}");
    let mute_key = KeyPair::generate();
    let mute = boss
        .attenuate(
            &boss_key,
            Attenuation::new("mute", mute_key.public()).only_tools(["shout".to_string()]),
        )
        .expect("attenuate");
    match rt.block_on(cluster.agent("worker", mute, mute_key).message("hi")) {
        Err(ClientError::Refused(why)) => {
            assert!(why.contains(bulwark_runtime::MESSAGE_CAPABILITY), "{why}")
        }
        other => panic!("a message without the capability was not refused: {other:?}"),
    }

    let trails = c.stop_all();
    let of = |id: &str| &trails.iter().find(|(n, _)| n == id).expect("node").1;
    // The tool node wrote its own record before it ran the call, as the agent.
    let remote = kinds(of("n3"), "tool.remote_call");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["agent"], "worker");
    assert_eq!(remote[0]["detail"]["from_node"], "n2");
    assert_eq!(kinds(of("n3"), "tool.result").len(), 1);
    // The agent's node recorded the call through its gate, and the refused run.
    assert_eq!(kinds(of("n2"), "tool.call").len(), 1);
    let refused = kinds(of("n2"), "cluster.refused");
    assert!(
        refused.iter().any(|e| e["agent"] == "stranger"),
        "{refused:?}"
    );
    assert!(kinds(of("n1"), "tool.remote_call").is_empty());
}

/// Sends a hold then a crafted spawn; returns the node's refusal.
fn crafted_spawn(
    rt: &tokio::runtime::Runtime,
    client: &ClusterClient,
    parent: (&Token, &KeyPair),
    envelope_key: &KeyPair,
    child_of: impl FnOnce(&Held) -> Token,
) -> Result<Spawned, ClientError> {
    rt.block_on(async {
        let held: Held = client
            .request(
                "node.n2.hold",
                "hold",
                &Hold {
                    agent: "kid".into(),
                },
                parent,
                Duration::from_secs(10),
            )
            .await?;
        let child = child_of(&held);
        client
            .request(
                "node.n2.spawn",
                "spawn",
                &Spawn {
                    agent: "kid".into(),
                    brain: "worker".into(),
                    child: child.to_base64().expect("b64"),
                },
                (parent.0, envelope_key),
                Duration::from_secs(10),
            )
            .await
    })
}

fn holder_of(held: &Held) -> bulwark_capabilities::PublicKey {
    bulwark_capabilities::PublicKey::from_hex(&held.holder).expect("holder")
}

#[test]
fn remote_spawns_that_widen_come_from_elsewhere_or_are_not_signed_by_the_parent_are_refused() {
    let c = Cluster::start();
    let (boss, boss_key) = c.mint("boss");
    let (other, other_key) = c.mint("other");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let client = client(&c.url, &rt);
    let refused = |r: Result<Spawned, ClientError>, needle: &str| match r {
        Err(ClientError::Refused(why)) => assert!(why.contains(needle), "{why} lacks {needle}"),
        other => panic!("expected a refusal naming {needle}, got {other:?}"),
    };

    // A child derived from another token (right depth, wrong parent).
    refused(
        crafted_spawn(&rt, &client, (&boss, &boss_key), &boss_key, |h| {
            other
                .attenuate(&other_key, Attenuation::new("kid", holder_of(h)))
                .expect("attenuate")
        }),
        "prefix",
    );
    // A grandchild: two blocks more than the parent.
    refused(
        crafted_spawn(&rt, &client, (&boss, &boss_key), &boss_key, |h| {
            let mid = KeyPair::generate();
            boss.attenuate(&boss_key, Attenuation::new("mid", mid.public()))
                .and_then(|t| t.attenuate(&mid, Attenuation::new("kid", holder_of(h))))
                .expect("attenuate")
        }),
        "exactly one more",
    );
    // A child bound to a key the node did not generate.
    refused(
        crafted_spawn(&rt, &client, (&boss, &boss_key), &boss_key, |_| {
            boss.attenuate(
                &boss_key,
                Attenuation::new("kid", KeyPair::generate().public()),
            )
            .expect("attenuate")
        }),
        "not the key node n2 generated",
    );
    // The spawn envelope signed by someone other than the parent's holder.
    refused(
        crafted_spawn(
            &rt,
            &client,
            (&boss, &boss_key),
            &KeyPair::generate(),
            |h| {
                boss.attenuate(&boss_key, Attenuation::new("kid", holder_of(h)))
                    .expect("attenuate")
            },
        ),
        "not signed by its token's holder",
    );
    // A parent of a foreign root.
    let foreign_root = KeyPair::generate();
    let foreign = Token::mint(
        &foreign_root,
        RootGrant::new(
            "acme",
            "boss",
            boss_key.public(),
            MicroUsd::from_usd(5).expect("budget"),
            SystemTime::now() + Duration::from_secs(3600),
            4,
        )
        .tool("shout", Tier::Auto),
    )
    .expect("mint");
    let r = rt.block_on(client.spawn("n2", "kid", "worker", (&foreign, &boss_key), Ok));
    refused(r, "does not verify");
    // A brain profile the node does not offer.
    let r = rt.block_on(client.spawn("n2", "kid", "gpt", (&boss, &boss_key), Ok));
    refused(r, "offers no brain profile `gpt`");

    // The honest spawn still goes through.
    let ok = rt
        .block_on(
            client.spawn("n2", "kid", "worker", (&boss, &boss_key), |a| {
                Ok(a.only_tools(["shout".to_string()]))
            }),
        )
        .expect("the honest spawn");
    assert_eq!(ok.node, "n2");

    // Once the parent is revoked, its spawns are refused on every node.
    let ids = boss.inspect().revocation_ids;
    c.operator
        .save(&c.path("op.key"))
        .expect("save operator key");
    let out = revoke(&c.url, &ids[0], &c.path("op.key"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = rt.block_on(client.spawn("n2", "kid2", "worker", (&boss, &boss_key), Ok));
    refused(r, "revoked");
}

/// Seals `call` to tool subject `tool` and sends it; the node's answer.
fn send_call(
    rt: &tokio::runtime::Runtime,
    client: &ClusterClient,
    tool: &str,
    body: &Call,
    (token, key): (&Token, &KeyPair),
) -> Result<CallResult, ClientError> {
    rt.block_on(client.request(
        &format!("tool.{tool}"),
        "call",
        body,
        (token, key),
        Duration::from_secs(30),
    ))
}

#[test]
fn a_compromised_node_cannot_make_the_tool_node_act_beyond_a_token() {
    let mut c = Cluster::start();
    let (boss, boss_key) = c.mint("boss");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let client = client(&c.url, &rt);
    // What a compromised node holds: an agent's token (shout only) and its key.
    let mallory_key = KeyPair::generate();
    let mallory = boss
        .attenuate(
            &boss_key,
            Attenuation::new("mallory", mallory_key.public()).only_tools(["shout".to_string()]),
        )
        .expect("attenuate");
    let signed = |token: &Token, key: &KeyPair, tool: &str, args: Value| {
        SignedCall::sign(token, key, token.agent(), tool, args, SystemTime::now())
    };
    let call = |call: SignedCall, approval: Option<Approval>| Call {
        node: "n1".into(),
        call,
        approval,
    };
    let refused = |r: Result<CallResult, ClientError>, needle: &str| match r {
        Err(ClientError::Refused(why)) => assert!(why.contains(needle), "{why} lacks {needle}"),
        other => panic!("expected a refusal naming {needle}, got {other:?}"),
    };

    // A tool outside the token.
    refused(
        send_call(
            &rt,
            &client,
            "wire",
            &call(signed(&mallory, &mallory_key, "wire", json!({})), None),
            (&mallory, &mallory_key),
        ),
        "wire",
    );
    // A CONFIRM tool the token grants, without an approval...
    refused(
        send_call(
            &rt,
            &client,
            "wire",
            &call(signed(&boss, &boss_key, "wire", json!({"to": "x"})), None),
            (&boss, &boss_key),
        ),
        "no operator approval",
    );
    // ...with an approval signed by a key that is not an operator's...
    let args = json!({"to": "x"});
    let later = SystemTime::now() + Duration::from_secs(3600);
    let approval_args = |a: &Value| bulwark_runtime::Proposal::approval_args(a);
    let forged = Approval::sign(&KeyPair::generate(), "p1", &approval_args(&args), later);
    refused(
        send_call(
            &rt,
            &client,
            "wire",
            &call(signed(&boss, &boss_key, "wire", args.clone()), Some(forged)),
            (&boss, &boss_key),
        ),
        "approval",
    );
    // ...and with the operator's approval of other arguments.
    let elsewhere = Approval::sign(
        &c.operator,
        "p1",
        &approval_args(&json!({"to": "y"})),
        later,
    );
    refused(
        send_call(
            &rt,
            &client,
            "wire",
            &call(
                signed(&boss, &boss_key, "wire", args.clone()),
                Some(elsewhere),
            ),
            (&boss, &boss_key),
        ),
        "approval",
    );
    // The operator's approval of exactly these arguments: it runs.
    let approved = Approval::sign(&c.operator, "p1", &approval_args(&args), later);
    let ran = send_call(
        &rt,
        &client,
        "wire",
        &call(
            signed(&boss, &boss_key, "wire", args.clone()),
            Some(approved),
        ),
        (&boss, &boss_key),
    )
    .expect("the approved call");
    assert_eq!(ran.value["stdout"], "HELLO", "{}", ran.value);
    // A call signed as another agent, under mallory's envelope.
    refused(
        send_call(
            &rt,
            &client,
            "shout",
            &call(signed(&boss, &boss_key, "shout", json!({})), None),
            (&mallory, &mallory_key),
        ),
        "signed",
    );

    // Envelope attacks over NATS, each refused before anything runs.
    let to = "bulwark.t.tool.shout";
    let honest = |id: u8| {
        let body = serde_json::to_vec(&call(
            signed(&mallory, &mallory_key, "shout", json!({"n": id})),
            None,
        ))
        .expect("body");
        Envelope::seal(&mallory, &mallory_key, to, "call", body, SystemTime::now()).expect("seal")
    };
    let raw = |bytes: Vec<u8>| -> String {
        let msg = rt
            .block_on(async {
                let nats = async_nats::connect(&c.url).await.expect("connect");
                nats.request(to, bytes.into()).await
            })
            .expect("an answer");
        String::from_utf8_lossy(&msg.payload).to_string()
    };
    let mut unsigned = honest(1);
    unsigned.sig = [0; 64];
    assert!(raw(unsigned.to_bytes().expect("bytes")).contains("not signed"));
    let stale = {
        let body = serde_json::to_vec(&call(
            signed(&mallory, &mallory_key, "shout", json!({})),
            None,
        ))
        .expect("body");
        Envelope::seal(
            &mallory,
            &mallory_key,
            to,
            "call",
            body,
            SystemTime::now() - Duration::from_secs(600),
        )
        .expect("seal")
    };
    assert!(raw(stale.to_bytes().expect("bytes")).contains("away from this node's clock"));
    let redirected = {
        let body = serde_json::to_vec(&call(
            signed(&mallory, &mallory_key, "shout", json!({})),
            None,
        ))
        .expect("body");
        Envelope::seal(
            &mallory,
            &mallory_key,
            "bulwark.t.tool.wire",
            "call",
            body,
            SystemTime::now(),
        )
        .expect("seal")
    };
    assert!(raw(redirected.to_bytes().expect("bytes")).contains("arrived on"));
    assert!(raw(b"\xc1\xff not an envelope".to_vec()).contains("malformed"));
    let replayed = honest(2).to_bytes().expect("bytes");
    assert!(
        raw(replayed.clone()).contains("HELLO"),
        "the honest call runs"
    );
    assert!(raw(replayed).contains("replayed"));

    // The configured limits hold on the tool node: `tiny` may print 4 bytes.
    let limited = send_call(
        &rt,
        &client,
        "tiny",
        &call(signed(&boss, &boss_key, "tiny", json!({})), None),
        (&boss, &boss_key),
    )
    .expect("the sandbox reports the limit");
    assert_eq!(limited.value["limit"], "output", "{}", limited.value);
    assert!(
        limited.value["stdout"]
            .as_str()
            .is_some_and(|o| o.starts_with("\"HEL\n")),
        "{}",
        limited.value
    );

    // The honest call through the client still runs.
    let ok = send_call(
        &rt,
        &client,
        "shout",
        &call(signed(&mallory, &mallory_key, "shout", json!({})), None),
        (&mallory, &mallory_key),
    )
    .expect("the honest call");
    assert_eq!(ok.value["stdout"], "HELLO", "{}", ok.value);

    let trails = c.stop_all();
    let n3 = &trails.iter().find(|(n, _)| n == "n3").expect("n3").1;
    let reasons: Vec<String> = kinds(n3, "cluster.refused")
        .iter()
        .map(|e| {
            e["detail"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for r in [
        "signature",
        "stale",
        "redirected",
        "malformed",
        "replayed",
        "call",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no `{r}` refusal in {reasons:?}"
        );
    }
    // Only the approved call, the limited one and the two honest ones ran.
    assert_eq!(kinds(n3, "tool.remote_call").len(), 4);
}

#[test]
fn a_confirm_call_waits_for_an_operator_deciding_from_anywhere_and_runs_on_the_tool_node() {
    let mut c = Cluster::start();
    c.mint("boss");
    c.operator
        .save(&c.path("op.key"))
        .expect("save operator key");
    c.wait_reaches("n2", "wire");
    let out = c.spawn("payer", &["--node", "n2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The run waits on n2 for a person; an operator finds it from the cluster.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args([
            "agent",
            "run",
            "--agent",
            "payer",
            "--token",
            &c.file("boss.tok"),
            "--key",
            &c.file("boss.key"),
            "--task",
            "pay",
            "--json",
            "--nats",
            &c.url,
            "--cluster",
            "t",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the run");
    c.procs.0.push(run);
    let list = |c: &Cluster| json_lines(&c.cli(&["proposals", "list"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    let proposal = loop {
        if let Some(p) = list(&c).into_iter().next() {
            break p;
        }
        assert!(Instant::now() < deadline, "no proposal appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(proposal["node"], "n2", "{proposal}");
    assert_eq!(proposal["tool"], "wire");
    assert_eq!(proposal["state"], "pending");
    let id = proposal["id"].as_str().expect("id").to_string();

    // A key that is no operator's is refused; the operator's approval goes through.
    let stranger = KeyPair::generate();
    stranger.save(&c.path("stranger.key")).expect("save");
    let approve = |key: &str| {
        bulwark(&[
            "proposals",
            "approve",
            &id,
            "--operator-key",
            &c.file(key),
            "--nats",
            &c.url,
            "--cluster",
            "t",
        ])
    };
    let out = approve("stranger.key");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = approve("op.key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = c.procs.0.pop().expect("the run");
    let out = run.wait_with_output().expect("the run ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_slice(&out.stdout).expect("run json");
    assert_eq!(outcome["answer"], "paid", "{outcome}");
    assert_eq!(outcome["actions"][0]["allowed"], true, "{outcome}");

    // The tool node ran it under the operator's approval, which it checked itself.
    let trails = c.stop_all();
    let n3 = &trails.iter().find(|(n, _)| n == "n3").expect("n3").1;
    let ran = kinds(n3, "tool.remote_call");
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0]["detail"]["approval"]["proposal"], id.as_str());
    assert_eq!(
        ran[0]["detail"]["approval"]["by"],
        c.operator.public().to_hex().as_str()
    );
}
