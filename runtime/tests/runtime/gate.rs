//! The gate: every tier path, schema and token checks, secrets, revocation.

use std::sync::Arc;

use bulwark_capabilities::Tier;
use bulwark_runtime::{BrainAction, ScriptedBrain};
use serde_json::json;

use crate::{Harness, calls};

const ALL: &[(&str, Tier)] = &[
    ("read_inbox", Tier::Auto),
    ("send_email", Tier::Auto),
    ("pay", Tier::Auto),
    ("refund", Tier::Auto),
    ("wipe", Tier::Auto),
    ("lookup", Tier::Auto),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_path() {
    let h = Harness::new().await;
    let mut notes = h.rt.notifications();
    let brain = calls(&[
        ("read_inbox", json!({})),
        (
            "send_email",
            json!({"to": "bob@acme.example", "body": "hi"}),
        ),
        ("refund", json!({})),
        ("pay", json!({})),
        ("wipe", json!({})),
    ]);
    // The token says auto for everything: the manifests' tiers still apply.
    let a = h.agent("clerk", ALL, "10", brain).await;
    let out = a.run("tiers").await.unwrap();
    let by_tool = |t: &str| out.actions.iter().find(|a| a.target == t).unwrap().clone();
    assert!(by_tool("read_inbox").allowed);
    assert!(by_tool("send_email").allowed);
    for t in ["refund", "pay"] {
        let r = by_tool(t);
        assert!(!r.allowed);
        assert!(
            r.detail
                .contains("no approval path is configured (fail closed)"),
            "{}",
            r.detail
        );
    }
    let wipe = by_tool("wipe");
    assert!(
        !wipe.allowed && wipe.detail.contains("tier block"),
        "{}",
        wipe.detail
    );
    // AUTO+ notified the operator; AUTO did not.
    let n = notes.try_recv().unwrap();
    assert_eq!((n.tool.as_str(), n.tier), ("send_email", Tier::AutoPlus));
    assert_eq!(n.kind, bulwark_runtime::NotificationKind::Ran);
    assert!(notes.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_tier_stricter_than_the_manifest_wins() {
    let h = Harness::new().await;
    let a = h
        .agent(
            "clerk",
            &[("read_inbox", Tier::Confirm), ("lookup", Tier::Block)],
            "1",
            calls(&[("read_inbox", json!({})), ("lookup", json!({}))]),
        )
        .await;
    let out = a.run("strict").await.unwrap();
    assert!(
        out.actions[0].detail.contains("tier confirm"),
        "{}",
        out.actions[0].detail
    );
    assert!(
        out.actions[1].detail.contains("tier block"),
        "{}",
        out.actions[1].detail
    );
    assert!(out.actions.iter().all(|a| !a.allowed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_unknown_tools_and_ungranted_tools_are_refused() {
    let h = Harness::new().await;
    let brain = calls(&[
        ("send_email", json!({"to": 42, "body": "x"})),
        (
            "send_email",
            json!({"to": "a@b", "body": "x", "bcc": "eve@evil.example"}),
        ),
        ("no_such_tool", json!({})),
        ("lookup", json!({})),
        ("send_email", json!({"to": "a@b", "body": "x"})),
    ]);
    let a = h
        .agent("clerk", &[("send_email", Tier::Auto)], "1", brain)
        .await;
    let out = a.run("bad input").await.unwrap();
    let d: Vec<&str> = out.actions.iter().map(|a| a.detail.as_str()).collect();
    assert!(
        d[0].contains("invalid arguments") && d[0].contains("/to"),
        "{}",
        d[0]
    );
    assert!(d[1].contains("invalid arguments"), "{}", d[1]);
    assert!(d[2].contains("unknown tool `no_such_tool`"), "{}", d[2]);
    assert!(d[3].contains("not granted"), "{}", d[3]);
    assert!(
        out.actions[4].allowed,
        "the valid call still runs: {}",
        d[4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_agents_whose_token_grants_it() {
    let h = Harness::new().await;
    h.rt.secrets()
        .put("finance_key", "fk-live-123456")
        .await
        .unwrap();
    assert!(
        !h.rt
            .secrets()
            .raw_contains("finance_key", b"fk-live-123456"),
        "stored in clear"
    );
    let marketing = h
        .agent(
            "marketing",
            &[("finance_report", Tier::Auto)],
            "1",
            calls(&[("finance_report", json!({}))]),
        )
        .await;
    let out = marketing.run("report").await.unwrap();
    assert!(!out.actions[0].allowed);
    assert!(
        out.actions[0]
            .detail
            .contains("does not grant the secret `finance_key`"),
        "{}",
        out.actions[0].detail
    );
    let finance = h
        .agent(
            "finance",
            &[
                ("finance_report", Tier::Auto),
                ("secret:finance_key", Tier::Auto),
            ],
            "1",
            calls(&[("finance_report", json!({}))]),
        )
        .await;
    let out = finance.run("report").await.unwrap();
    assert!(out.actions[0].allowed, "{}", out.actions[0].detail);
    assert!(
        out.actions[0].detail.contains("fk-l"),
        "{}",
        out.actions[0].detail
    );
}

/// Calls `tool` at the first step of every run, then finishes.
pub fn every_run(tool: &'static str) -> Arc<ScriptedBrain> {
    Arc::new(ScriptedBrain::from_fn(move |view| {
        if view.step == 0 {
            BrainAction::CallTool {
                tool: tool.into(),
                args: json!({}),
            }
        } else {
            BrainAction::Finish {
                answer: "done".into(),
            }
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_cut_off_at_its_next_call() {
    let h = Harness::new().await;
    let a = h
        .agent(
            "clerk",
            &[("read_inbox", Tier::Auto)],
            "1",
            every_run("read_inbox"),
        )
        .await;
    let b = h
        .agent(
            "other",
            &[("read_inbox", Tier::Auto)],
            "1",
            every_run("read_inbox"),
        )
        .await;
    assert!(a.run("before").await.unwrap().actions[0].allowed);
    h.rt.revoke(a.token().unwrap().revocation_ids()[0].clone())
        .await
        .unwrap();
    let out = a.run("after").await.unwrap();
    assert!(!out.actions[0].allowed);
    assert!(
        out.actions[0].detail.contains("revoked"),
        "{}",
        out.actions[0].detail
    );
    assert!(b.run("unaffected").await.unwrap().actions[0].allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_another_root_cannot_spawn_an_agent() {
    let h = Harness::new().await;
    let rogue = bulwark_capabilities::KeyPair::generate();
    let spec = bulwark_runtime::AgentSpec::new("intruder");
    let grant = bulwark_capabilities::RootGrant::new(
        "acme",
        "intruder",
        spec.key.public(),
        "100".parse().unwrap(),
        crate::t0() + std::time::Duration::from_secs(3600),
        3,
    )
    .tool("wipe", Tier::Auto);
    let forged = bulwark_capabilities::Token::mint(&rogue, grant).unwrap();
    let err =
        h.rt.spawn_agent(spec, forged, calls(&[]))
            .await
            .unwrap_err();
    assert!(
        matches!(err, bulwark_runtime::SpawnError::WrongRoot { .. }),
        "{err}"
    );
    // A token for another agent id, or held by another key, is refused too.
    let spec = bulwark_runtime::AgentSpec::new("a");
    let other = h.token(&spec.key, "b", &[], "1");
    assert!(matches!(
        h.rt.spawn_agent(spec, other, calls(&[])).await.unwrap_err(),
        bulwark_runtime::SpawnError::WrongAgent { .. }
    ));
    let spec = bulwark_runtime::AgentSpec::new("a");
    let stolen = h.token(&bulwark_capabilities::KeyPair::generate(), "a", &[], "1");
    assert!(matches!(
        h.rt.spawn_agent(spec, stolen, calls(&[]))
            .await
            .unwrap_err(),
        bulwark_runtime::SpawnError::WrongKey
    ));
    // The allowed path.
    assert!(
        h.agent("fine", &[], "1", calls(&[]))
            .await
            .run("ok")
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_code_calling_a_tool_as_an_agent_passes_the_same_gate() {
    let h = Harness::new().await;
    let a = h
        .agent("svc", &[("lookup", Tier::Auto)], "0.01", calls(&[]))
        .await;
    let ok = a.call_tool("lookup", json!({})).await.unwrap();
    assert_eq!((ok.value, ok.charged), (json!("ok"), 7_000));
    let err = a.call_tool("lookup", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("budget exhausted"), "{err}");
    let err = a.call_tool("wipe", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("not granted"), "{err}");
    let kinds: Vec<String> =
        h.rt.audit_tail(20)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record.kind)
            .collect();
    assert!(
        kinds.ends_with(&[
            "tool.call".into(),
            "tool.result".into(),
            "budget.denied".into(),
            "tool.denied".into(),
            "tool.denied".into()
        ]),
        "{kinds:?}"
    );
}
