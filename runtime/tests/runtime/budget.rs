//! Budgets: exhaustion, actual-cost commits, the 80 % economy threshold, carving.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bulwark_capabilities::{Attenuation, MicroUsd, Tier};
use bulwark_runtime::{
    AgentSpec, Brain, BrainAction, BrainError, BrainReply, BrainView, SpawnError,
};
use serde_json::json;

use crate::{Harness, calls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_stops_at_the_cap_and_commits_the_actual_cost() {
    let h = Harness::new().await;
    // `lookup` reserves 1 cent and costs 0.7: with $0.021 spent, a fourth reservation
    // of 1 cent no longer fits under $0.03.
    let brain = calls(&vec![("lookup", json!({})); 5]);
    let a = h
        .agent("clerk", &[("lookup", Tier::Auto)], "0.03", brain)
        .await;
    let out = a.run("spend").await.unwrap();
    let allowed = out.actions.iter().filter(|a| a.allowed).count();
    assert_eq!(allowed, 3, "{:#?}", out.actions);
    let last = out.actions.last().unwrap();
    assert!(last.detail.contains("budget exhausted"), "{}", last.detail);
    let acc = h.rt.account("agent:clerk").unwrap();
    assert_eq!(acc.spent_today.micros(), 21_000);
    assert_eq!(acc.reserved.micros(), 0);
    assert_eq!(
        h.rt.account("tenant:acme").unwrap().spent_today.micros(),
        21_000
    );
}

/// A brain that reports which mode it was asked to use, charging per its model.
struct Tiered {
    seen: Mutex<Vec<bool>>,
}

#[async_trait]
impl Brain for Tiered {
    async fn step(&self, view: &BrainView<'_>) -> Result<BrainReply, BrainError> {
        self.seen.lock().unwrap().push(view.economy);
        let cost = if view.economy { 1_000 } else { 30_000 };
        Ok(BrainReply {
            action: if view.step < 6 {
                BrainAction::CallTool {
                    tool: "read_inbox".into(),
                    args: json!({}),
                }
            } else {
                BrainAction::Finish {
                    answer: "ok".into(),
                }
            },
            cost: MicroUsd::new(cost).unwrap(),
        })
    }
    fn max_step_cost(&self, economy: bool) -> MicroUsd {
        MicroUsd::new(if economy { 1_000 } else { 30_000 }).unwrap()
    }
    fn premium(&self, economy: bool) -> bool {
        !economy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_eighty_percent_the_brain_is_moved_to_the_cheap_model() {
    let h = Harness::new().await;
    let brain = Arc::new(Tiered {
        seen: Mutex::new(Vec::new()),
    });
    let a = h
        .agent(
            "thinker",
            &[("read_inbox", Tier::Auto)],
            "0.1",
            brain.clone(),
        )
        .await;
    let out = a.run("think").await.unwrap();
    assert_eq!(out.answer(), Some("ok"));
    let seen = brain.seen.lock().unwrap().clone();
    // $0.03 premium steps: after two (60 %), the third would cross 80 %... premium is
    // refused once 80 % is used, and from then on the cheap model runs.
    assert_eq!(&seen[..2], &[false, false]);
    assert!(seen[2..].iter().any(|e| *e), "{seen:?}");
    let spent = h.rt.account("agent:thinker").unwrap().spent_today.micros();
    assert!(spent <= 100_000, "spent {spent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_outgrow_its_parent() {
    let h = Harness::new().await;
    let parent = h
        .agent(
            "planner",
            &[("lookup", Tier::Auto), ("read_inbox", Tier::Auto)],
            "0.05",
            calls(&[]),
        )
        .await;
    let brain = calls(&[]);
    // More budget, a tool the parent lacks, a laxer tier: each refused.
    for (att, needle) in [
        (
            Attenuation::new("kid", bulwark_capabilities::KeyPair::generate().public())
                .budget("1".parse().unwrap()),
            "budget",
        ),
        (
            Attenuation::new("kid", bulwark_capabilities::KeyPair::generate().public())
                .only_tools(["pay"]),
            "pay",
        ),
    ] {
        let spec = AgentSpec::new("kid");
        let att = Attenuation {
            holder: spec.key.public(),
            ..att
        };
        let err = parent
            .spawn_child(spec, att, brain.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, SpawnError::Attenuate(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // A narrower child works; its spend counts against the parent's carve-out.
    let spec = AgentSpec::new("kid");
    let att = Attenuation::new("kid", spec.key.public())
        .only_tools(["lookup"])
        .budget("0.02".parse().unwrap());
    let kid = parent
        .spawn_child(
            spec,
            att,
            calls(&[
                ("lookup", json!({})),
                ("lookup", json!({})),
                ("lookup", json!({})),
                ("read_inbox", json!({})),
            ]),
        )
        .await
        .unwrap();
    let out = kid.run("kid work").await.unwrap();
    let allowed: Vec<_> = out.actions.iter().map(|a| a.allowed).collect();
    assert_eq!(
        allowed,
        vec![true, true, false, false],
        "{:#?}",
        out.actions
    );
    assert!(
        out.actions[3].detail.contains("withheld"),
        "{}",
        out.actions[3].detail
    );
    assert_eq!(
        h.rt.account("agent:kid").unwrap().spent_today.micros(),
        14_000
    );
    assert_eq!(
        h.rt.account("agent:planner").unwrap().spent_today.micros(),
        14_000
    );
    assert_eq!(kid.token().unwrap().chain().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_one_tenant_share_the_tenant_cap() {
    let h = Harness::new().await;
    // The first root token seen for `acme` sets the tenant cap: $0.03.
    let a = h
        .agent(
            "a",
            &[("lookup", Tier::Auto)],
            "0.03",
            calls(&vec![("lookup", json!({})); 2]),
        )
        .await;
    let b = h
        .agent(
            "b",
            &[("lookup", Tier::Auto)],
            "5",
            calls(&vec![("lookup", json!({})); 3]),
        )
        .await;
    assert_eq!(h.rt.account("agent:b").unwrap().cap.micros(), 30_000);
    let out_a = a.run("a").await.unwrap();
    let out_b = b.run("b").await.unwrap();
    let allowed = out_a
        .actions
        .iter()
        .chain(&out_b.actions)
        .filter(|x| x.allowed)
        .count();
    assert_eq!(allowed, 3, "{:?} {:?}", out_a.actions, out_b.actions);
    let tenant = h.rt.account("tenant:acme").unwrap();
    assert!(tenant.spent_today <= tenant.cap);
    assert_eq!(tenant.spent_today.micros(), 21_000);
}
