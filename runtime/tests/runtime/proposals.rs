//! PROPOSE and CONFIRM with the approval path: the watchdog, the proposal lifecycle,
//! signed operator approvals and decisions, rollback windows, expiry, and restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulwark_capabilities::{Approval, Decision, DecisionKind, KeyPair, Tier};
use bulwark_runtime::{
    AgentHandle, AgentSpec, AllowList, AmountLimit, ApprovalConfig, BrainAction, ManualClock,
    Proposal, ProposalError, ProposalState, Runtime, ScriptedBrain, SignedDecision, Tool,
    ToolManifest, ToolOutput, WatchdogRules,
};
use serde_json::{Value, json};

use bulwark_runtime::Clock;

use crate::{Harness, t0};

struct Counters {
    reminders: AtomicUsize,
    payouts: AtomicUsize,
    refunds: AtomicUsize,
    reversals: AtomicUsize,
}

struct Setup {
    h: Harness,
    operator: KeyPair,
    counters: Arc<Counters>,
    expiry: Duration,
}

async fn build(
    dir: &std::path::Path,
    root: &KeyPair,
    clock: Arc<ManualClock>,
    operator: &KeyPair,
    expiry: Duration,
    counters: Arc<Counters>,
) -> Runtime {
    let rules = WatchdogRules {
        amount_limits: vec![AmountLimit {
            tool: "payout".into(),
            arg: "amount".into(),
            max: 10_000,
        }],
        ..WatchdogRules::default()
    };
    let rt = Runtime::builder()
        .data_dir(dir)
        .root_public_key(root.public())
        .clock(clock)
        .approvals(
            ApprovalConfig::new(vec![operator.public()])
                .rules(rules)
                .confirm_expiry(expiry),
        )
        .build()
        .await
        .unwrap();
    crate::register_tools(&rt);
    let c = counters.clone();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("payout", "Pays a supplier").tier(Tier::Confirm),
            move |_| {
                let c = c.clone();
                async move {
                    c.payouts.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!("paid")))
                }
            },
        ))
        .unwrap();
    let c = counters.clone();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("refund_order", "Refunds an order")
                .tier(Tier::Propose)
                .compensation("reverse_refund")
                .rollback_window(Duration::from_secs(600)),
            move |_| {
                let c = c.clone();
                async move {
                    c.refunds.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!("refunded")))
                }
            },
        ))
        .unwrap();
    let c = counters.clone();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("send_reminder", "Sends a payment reminder")
                .tier(Tier::Confirm)
                .batch_approval(),
            move |_| {
                let c = c.clone();
                async move {
                    c.reminders.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!("sent")))
                }
            },
        ))
        .unwrap();
    let c = counters;
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("reverse_refund", "Takes a refund back"),
            move |input| {
                let c = c.clone();
                async move {
                    c.reversals.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!({"reversed": input.args["order"]})))
                }
            },
        ))
        .unwrap();
    rt
}

impl Setup {
    async fn new(expiry: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = KeyPair::generate();
        let clock = Arc::new(ManualClock::new(t0()));
        let operator = KeyPair::generate();
        let counters = Arc::new(Counters {
            reminders: AtomicUsize::new(0),
            payouts: AtomicUsize::new(0),
            refunds: AtomicUsize::new(0),
            reversals: AtomicUsize::new(0),
        });
        let rt = build(
            dir.path(),
            &root,
            clock.clone(),
            &operator,
            expiry,
            counters.clone(),
        )
        .await;
        Setup {
            h: Harness {
                dir,
                root,
                clock,
                rt,
            },
            operator,
            counters,
            expiry,
        }
    }

    async fn restart(&mut self) {
        self.h.rt.shutdown().await.unwrap();
        self.h.rt = build(
            self.h.dir.path(),
            &self.h.root,
            self.h.clock.clone(),
            &self.operator,
            self.expiry,
            self.counters.clone(),
        )
        .await;
    }

    async fn agent(&self, name: &str, actions: Vec<BrainAction>) -> AgentHandle {
        let spec = AgentSpec::new(name);
        let token = self.h.token(
            &spec.key,
            name,
            &[
                ("payout", Tier::Auto),
                ("refund_order", Tier::Auto),
                ("send_reminder", Tier::Auto),
            ],
            "10",
        );
        self.h
            .rt
            .spawn_agent(spec, token, Arc::new(ScriptedBrain::new(actions)))
            .await
            .unwrap()
    }

    fn approve_sig(&self, p: &Proposal) -> Approval {
        Approval::sign(
            &self.operator,
            &p.id,
            &Proposal::approval_args(&p.args),
            t0() + Duration::from_secs(3600),
        )
    }

    async fn wait_for(&self, state: ProposalState) -> Proposal {
        for _ in 0..400 {
            if let Some(p) = self
                .h
                .rt
                .proposals()
                .unwrap()
                .into_iter()
                .find(|p| p.state == state)
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no proposal became {state}: {:?}",
            self.h.rt.proposals().unwrap()
        );
    }
}

fn pay(amount: i64) -> Vec<BrainAction> {
    vec![
        BrainAction::CallTool {
            tool: "payout".into(),
            args: json!({"to": "ACME GmbH", "amount": amount}),
        },
        BrainAction::Finish {
            answer: "done".into(),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_rejects_with_the_rule_that_failed() {
    let s = Setup::new(Duration::from_secs(60)).await;
    let a = s.agent("ap", pay(50_000)).await;
    let out = a.run("pay the big invoice").await.unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert_eq!(denied.len(), 1);
    assert!(
        denied[0].detail.contains("the watchdog rejected `payout`")
            && denied[0]
                .detail
                .contains("payout.amount must be at most 10000 (got 50000)"),
        "{}",
        denied[0].detail
    );
    let p = &s.h.rt.proposals().unwrap()[0];
    assert_eq!(p.state, ProposalState::Rejected);
    assert_eq!(p.decisions[0].by, "watchdog");
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_waits_for_a_signed_approval_and_runs_exactly_once() {
    let s = Arc::new(Setup::new(Duration::from_secs(60)).await);
    let a = s.agent("ap", pay(900)).await;
    let mut notes = s.h.rt.notifications();
    let run = tokio::spawn(async move { a.run("pay invoice 7").await });
    let p = s.wait_for(ProposalState::Pending).await;
    assert_eq!(p.tier, Tier::Confirm);
    // The operator is told a decision is needed, with the exact arguments.
    let note = tokio::time::timeout(Duration::from_secs(60), notes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        note.kind,
        bulwark_runtime::NotificationKind::NeedsConfirmation {
            proposal: p.id.clone()
        }
    );
    assert_eq!(note.args, p.args);
    assert_eq!(p.args, json!({"to": "ACME GmbH", "amount": 900}));
    assert_eq!(
        s.counters.payouts.load(Ordering::SeqCst),
        0,
        "nothing runs before approval"
    );

    // Refused approvals: an unknown key, other arguments, another proposal's approval.
    let stranger = Approval::sign(
        &KeyPair::generate(),
        &p.id,
        &Proposal::approval_args(&p.args),
        t0() + Duration::from_secs(3600),
    );
    assert!(matches!(
        s.h.rt.approve(&p.id, &stranger).await,
        Err(ProposalError::Signature { .. })
    ));
    let other_args = Approval::sign(
        &s.operator,
        &p.id,
        &Proposal::approval_args(&json!({"to": "ACME GmbH", "amount": 9000})),
        t0() + Duration::from_secs(3600),
    );
    let err = s.h.rt.approve(&p.id, &other_args).await.unwrap_err();
    assert!(err.to_string().contains("arguments"), "{err}");
    assert_eq!(
        s.h.rt.proposal(&p.id).unwrap().unwrap().state,
        ProposalState::Pending
    );

    let approval = s.approve_sig(&p);
    s.h.rt.approve(&p.id, &approval).await.unwrap();
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.denied().count(), 0, "{:?}", out.actions);
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 1);
    let done = s.h.rt.proposal(&p.id).unwrap().unwrap();
    assert_eq!(done.state, ProposalState::Committed);
    assert_eq!(done.decisions[0].by, s.operator.public().to_hex());

    // Replaying the approval changes nothing, and cannot approve another proposal.
    assert!(matches!(
        s.h.rt.approve(&p.id, &approval).await,
        Err(ProposalError::WrongState { .. })
    ));
    let b = s.agent("ap2", pay(800)).await;
    let s2 = s.clone();
    let run = tokio::spawn(async move { b.run("pay invoice 8").await });
    let p2 = s2.wait_for(ProposalState::Pending).await;
    let replay = s.h.rt.approve(&p2.id, &approval).await.unwrap_err();
    assert!(replay.to_string().contains(&p.id), "{replay}");
    s.h.rt
        .reject(
            &p2.id,
            &Decision::sign(
                &s.operator,
                DecisionKind::Reject,
                &p2.id,
                "duplicate invoice",
                t0(),
            ),
        )
        .await
        .unwrap();
    let out = run.await.unwrap().unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert!(
        denied[0].detail.contains("an operator rejected `payout`")
            && denied[0].detail.contains("duplicate invoice"),
        "{}",
        denied[0].detail
    );
    assert_eq!(
        s.counters.payouts.load(Ordering::SeqCst),
        1,
        "the rejected one never ran"
    );

    // Every decision is audited with the operator's key id.
    let entries = s.h.rt.audit_tail(1000).await.unwrap();
    let approved = entries
        .iter()
        .find(|e| e.record.kind == "proposal.approved")
        .unwrap();
    assert_eq!(
        approved.record.detail["decision"]["by"],
        s.operator.public().to_hex()
    );
    assert!(entries.iter().any(|e| e.record.kind == "proposal.rejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_expires_without_a_decision() {
    let s = Setup::new(Duration::from_millis(300)).await;
    let a = s.agent("ap", pay(100)).await;
    let out = a.run("pay").await.unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert!(
        denied[0].detail.contains("expired without a decision"),
        "{}",
        denied[0].detail
    );
    let p = &s.h.rt.proposals().unwrap()[0];
    assert_eq!(p.state, ProposalState::Expired);
    // A late approval is refused.
    assert!(matches!(
        s.h.rt.approve(&p.id, &s.approve_sig(p)).await,
        Err(ProposalError::WrongState { .. })
    ));
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 0);
}

fn refund() -> Vec<BrainAction> {
    vec![
        BrainAction::CallTool {
            tool: "refund_order".into(),
            args: json!({"order": "A-17"}),
        },
        BrainAction::Finish {
            answer: "refunded".into(),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_runs_and_can_be_cancelled_inside_its_window_only() {
    let s = Setup::new(Duration::from_secs(60)).await;
    let a = s.agent("support", refund()).await;
    let out = a.run("refund A-17").await.unwrap();
    assert_eq!(out.denied().count(), 0, "{:?}", out.actions);
    assert_eq!(s.counters.refunds.load(Ordering::SeqCst), 1);
    let p = s.h.rt.proposals().unwrap()[0].clone();
    assert_eq!(p.state, ProposalState::Committed);
    assert_eq!(
        p.rollback_until_ms,
        Some(bulwark_runtime_ms(t0()) + 600_000)
    );

    // A cancel signed by a stranger, or signed as a rejection, is refused.
    let stranger = Decision::sign(&KeyPair::generate(), DecisionKind::Cancel, &p.id, "x", t0());
    assert!(s.h.rt.cancel(&p.id, &stranger).await.is_err());
    let wrong_kind = Decision::sign(&s.operator, DecisionKind::Reject, &p.id, "x", t0());
    assert!(s.h.rt.cancel(&p.id, &wrong_kind).await.is_err());

    s.h.clock.advance(Duration::from_secs(300));
    let cancel = Decision::sign(
        &s.operator,
        DecisionKind::Cancel,
        &p.id,
        "customer kept the item",
        s.h.clock.now(),
    );
    let rolled = s.h.rt.cancel(&p.id, &cancel).await.unwrap();
    assert_eq!(rolled.state, ProposalState::RolledBack);
    assert_eq!(s.counters.reversals.load(Ordering::SeqCst), 1);
    assert!(rolled.decisions[0].reason.contains("reverse_refund"));
    // The undo ran as the agent, recorded like any call: a durable intent carrying its
    // budget reservation on the agent's account, then its result.
    let entries = s.h.rt.audit_tail(200).await.unwrap();
    let intent = entries
        .iter()
        .position(|e| e.record.kind == "tool.call" && e.record.detail["run_by"] == "compensation")
        .expect("the compensation's intent is recorded");
    assert_eq!(entries[intent].record.agent, "support");
    assert!(
        entries[intent].record.ledger.is_some(),
        "the intent carries its reservation"
    );
    assert!(
        entries[intent + 1..]
            .iter()
            .any(|e| e.record.kind == "tool.result" && e.record.detail["tool"] == "reverse_refund")
    );
    // Cancelling again does nothing more.
    assert!(s.h.rt.cancel(&p.id, &cancel).await.is_err());
    assert_eq!(s.counters.reversals.load(Ordering::SeqCst), 1);

    // A second refund, left alone past its window, stays committed.
    let b = s.agent("support-2", refund()).await;
    b.run("refund A-17 again").await.unwrap();
    let p2 =
        s.h.rt
            .proposals()
            .unwrap()
            .into_iter()
            .find(|x| x.agent == "support-2")
            .unwrap();
    s.h.clock.advance(Duration::from_secs(601));
    let late = Decision::sign(
        &s.operator,
        DecisionKind::Cancel,
        &p2.id,
        "too late",
        s.h.clock.now(),
    );
    let err = s.h.rt.cancel(&p2.id, &late).await.unwrap_err();
    assert!(matches!(err, ProposalError::WindowClosed { .. }), "{err}");
    assert_eq!(
        s.h.rt.proposal(&p2.id).unwrap().unwrap().state,
        ProposalState::Committed
    );
    assert_eq!(s.counters.reversals.load(Ordering::SeqCst), 1);
}

fn bulwark_runtime_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_pending_proposals_and_never_run_an_action_twice() {
    let mut s = Setup::new(Duration::from_secs(3600)).await;
    let a = s.agent("ap", pay(700)).await;
    let run = tokio::spawn(async move { a.run("pay invoice 9").await });
    let p = s.wait_for(ProposalState::Pending).await;

    // Shut down while the step waits: the step ends, the proposal stays pending.
    s.restart().await;
    let out = run.await.unwrap();
    // The run ends with the runtime, without success: its step reports the shutdown,
    // its actor is stopped, or its bookkeeping finds the store closed.
    assert!(out.as_ref().map_or(true, |o| !o.succeeded()), "{out:?}");
    assert_eq!(
        s.h.rt.proposal(&p.id).unwrap().unwrap().state,
        ProposalState::Pending
    );

    // The same agent proposing the same action again gets the open proposal back.
    let again = s.agent("ap", pay(700)).await;
    let out = again.run("pay invoice 9 (retry)").await.unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert!(
        denied[0].detail.contains(&format!("proposal {}", p.id)),
        "{}",
        denied[0].detail
    );

    // Approved after the restart with no step waiting: the runtime runs it, once.
    s.h.rt.approve(&p.id, &s.approve_sig(&p)).await.unwrap();
    let done = s.wait_for(ProposalState::Committed).await;
    assert_eq!(done.id, p.id);
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 1);
    s.restart().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.counters.payouts.load(Ordering::SeqCst),
        1,
        "committed actions never run twice"
    );
    assert_eq!(
        s.h.rt.proposal(&p.id).unwrap().unwrap().state,
        ProposalState::Committed
    );
    let v: Value = serde_json::to_value(s.h.rt.proposal(&p.id).unwrap().unwrap()).unwrap();
    assert_eq!(v["result"], "paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_hears_of_each_proposal_needing_a_person_with_retries() {
    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
    let received: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let app =
        Router::new()
            .route(
                "/hook",
                post(
                    |State(seen): State<Arc<std::sync::Mutex<Vec<Value>>>>,
                     Json(body): Json<Value>| async move {
                        let mut seen = seen.lock().unwrap();
                        seen.push(body);
                        // The first two deliveries fail, as a flaky receiver would.
                        if seen.len() <= 2 {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    let mut hook = bulwark_runtime::WebhookConfig::new(format!("http://{addr}/hook"));
    hook.backoff = Duration::from_millis(20);
    hook.dashboard_url = Some("http://127.0.0.1:8080/".into());
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .root_public_key(root.public())
        .clock(Arc::new(ManualClock::new(t0())))
        .approvals(
            ApprovalConfig::new(vec![operator.public()])
                .confirm_expiry(Duration::from_millis(400))
                .webhook(hook),
        )
        .build()
        .await
        .unwrap();
    crate::register_tools(&rt);
    let h = Harness {
        dir,
        root,
        clock: Arc::new(ManualClock::new(t0())),
        rt,
    };
    let a = h
        .agent(
            "ap",
            &[("pay", Tier::Auto)],
            "1",
            crate::calls(&[("pay", json!({"to": "x", "amount": 5}))]),
        )
        .await;
    a.run("pay").await.unwrap();
    for _ in 0..100 {
        if received.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two failures, then delivered: {got:?}");
    let p = &h.rt.proposals().unwrap()[0];
    let text = got[2]["text"].as_str().unwrap();
    assert!(
        text.contains(&p.id) && text.contains("`pay`") && text.contains("http://127.0.0.1:8080/"),
        "{text}"
    );
    assert_eq!(got[2]["args_hash"], p.args_hash);
    let entries = h.rt.audit_tail(1000).await.unwrap();
    let delivered = entries
        .iter()
        .find(|e| e.record.kind == "proposal.webhook")
        .unwrap();
    assert_eq!(delivered.record.detail["attempts"], 3);
    assert_eq!(delivered.record.detail["delivered"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_interrupted_while_running_is_failed_at_restart_never_rerun() {
    let mut s = Setup::new(Duration::from_secs(60)).await;
    let started = Arc::new(AtomicUsize::new(0));
    let count = started.clone();
    s.h.rt
        .tools()
        .register(Tool::native(
            ToolManifest::new("slow_refund", "Refunds slowly")
                .tier(Tier::Propose)
                .compensation("reverse_refund")
                .timeout(Duration::from_secs(30)),
            move |_| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    Ok(ToolOutput::new(json!("refunded")))
                }
            },
        ))
        .unwrap();
    let spec = AgentSpec::new("support");
    let token =
        s.h.token(&spec.key, "support", &[("slow_refund", Tier::Auto)], "10");
    let a =
        s.h.rt
            .spawn_agent(
                spec,
                token,
                Arc::new(ScriptedBrain::new(vec![BrainAction::CallTool {
                    tool: "slow_refund".into(),
                    args: json!({"order": "B-2"}),
                }])),
            )
            .await
            .unwrap();
    let _run = tokio::spawn(async move { a.run("refund B-2").await });
    let p = s.wait_for(ProposalState::Executing).await;
    for _ in 0..200 {
        if started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(started.load(Ordering::SeqCst), 1);

    // The process goes away mid-action; the next start cannot know whether it ran.
    s.restart().await;
    let after = s.h.rt.proposal(&p.id).unwrap().unwrap();
    assert_eq!(after.state, ProposalState::Failed);
    assert!(
        after
            .error
            .as_deref()
            .unwrap_or("")
            .contains("it may have run, so it is not run again"),
        "{after:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "never started a second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_action_the_budget_cannot_pay_fails_and_is_not_left_executing() {
    let s = Arc::new(Setup::new(Duration::from_secs(60)).await);
    s.h.rt
        .tools()
        .register(Tool::native(
            ToolManifest::new("costly_payout", "Pays, at a price")
                .tier(Tier::Confirm)
                .max_cost(bulwark_capabilities::MicroUsd::from_usd(5).unwrap()),
            |_| async { Ok(ToolOutput::new(json!("paid"))) },
        ))
        .unwrap();
    let spec = AgentSpec::new("poor");
    // A one-dollar budget cannot reserve the tool's five.
    let token =
        s.h.token(&spec.key, "poor", &[("costly_payout", Tier::Auto)], "1");
    let a =
        s.h.rt
            .spawn_agent(
                spec,
                token,
                Arc::new(ScriptedBrain::new(vec![BrainAction::CallTool {
                    tool: "costly_payout".into(),
                    args: json!({"amount": 1}),
                }])),
            )
            .await
            .unwrap();
    let run = tokio::spawn(async move { a.run("pay").await });
    let p = s.wait_for(ProposalState::Pending).await;
    s.h.rt.approve(&p.id, &s.approve_sig(&p)).await.unwrap();
    let out = run.await.unwrap().unwrap();
    assert!(
        out.denied().any(|a| a.detail.contains("budget")),
        "{:?}",
        out.actions
    );
    let after = s.h.rt.proposal(&p.id).unwrap().unwrap();
    assert_eq!(after.state, ProposalState::Failed);
    assert!(
        after
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("not run: "),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_confirm_step_leaves_the_actor_responsive_and_cancellable() {
    let s = Arc::new(Setup::new(Duration::from_secs(60)).await);
    // The first run is cancelled after its first action; the second runs the rest.
    let mut script = pay(900);
    script.truncate(1);
    script.extend(pay(700));
    let a = s.agent("ap", script).await;
    let a2 = a.clone();
    let run = tokio::spawn(async move { a2.run("pay invoice 9").await });
    let p = s.wait_for(ProposalState::Pending).await;
    assert_eq!(p.task.as_deref(), Some("pay invoice 9"));

    // The actor answers while the step waits, and queues a second run behind it.
    let status = a.status().await.unwrap();
    assert!(status.running);
    assert_eq!(status.waiting_on.as_deref(), Some(p.id.as_str()));
    let a3 = a.clone();
    let queued = tokio::spawn(async move { a3.run("pay invoice 10").await });
    let mut seen_queued = false;
    for _ in 0..200 {
        if a.status().await.unwrap().queued == 1 {
            seen_queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_queued, "the second run waits its turn");

    // Cancelling ends the waiting run and withdraws its proposal.
    assert!(a.cancel("the invoice was paid by hand").await.unwrap());
    let out = run.await.unwrap().unwrap();
    assert_eq!(
        out.status,
        bulwark_runtime::Status::Cancelled("the invoice was paid by hand".into())
    );
    let withdrawn = s.h.rt.proposal(&p.id).unwrap().unwrap();
    assert_eq!(withdrawn.state, ProposalState::Failed);
    assert!(
        withdrawn
            .error
            .as_deref()
            .unwrap_or("")
            .contains("withdrawn"),
        "{withdrawn:?}"
    );
    // A late approval runs nothing.
    assert!(matches!(
        s.h.rt.approve(&p.id, &s.approve_sig(&p)).await,
        Err(ProposalError::WrongState { .. })
    ));
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 0);

    // The queued run goes on and, approved, pays exactly once.
    let mut p2 = None;
    for _ in 0..400 {
        p2 =
            s.h.rt
                .proposals()
                .unwrap()
                .into_iter()
                .find(|q| q.state == ProposalState::Pending && q.id != p.id);
        if p2.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p2 = p2.expect("the queued run proposes");
    assert_eq!(p2.task.as_deref(), Some("pay invoice 10"));
    s.h.rt.approve(&p2.id, &s.approve_sig(&p2)).await.unwrap();
    let out = queued.await.unwrap().unwrap();
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 1);
    assert!(!a.cancel("nothing to cancel").await.unwrap());

    let entries = s.h.rt.audit_tail(1000).await.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.record.kind == "proposal.withdrawn")
    );
    assert!(entries.iter().any(|e| e.record.kind == "agent.cancelled"));
    assert!(matches!(
        s.h.rt.verify_audit().await.unwrap(),
        bulwark_runtime::Verification::Intact(_)
    ));
}

async fn pending_reminders(s: &Setup, n: usize) -> Vec<Proposal> {
    for _ in 0..400 {
        let pending: Vec<_> =
            s.h.rt
                .proposals()
                .unwrap()
                .into_iter()
                .filter(|p| p.state == ProposalState::Pending && p.tool == "send_reminder")
                .collect();
        if pending.len() == n {
            return pending;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} reminders never became pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_decision_covers_a_batch_only_where_the_tool_allows_it() {
    let s = Arc::new(Setup::new(Duration::from_secs(60)).await);
    let a = s.agent("collector", vec![]).await;
    let mut calls = Vec::new();
    for customer in ["c1", "c2", "c3"] {
        let a = a.clone();
        calls.push(tokio::spawn(async move {
            a.call_tool("send_reminder", json!({"customer": customer}))
                .await
        }));
    }
    let pending = pending_reminders(&s, 3).await;
    let groups = s.h.rt.proposal_groups().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert!(g.batchable);
    assert_eq!(g.root_agent, "collector");
    assert_eq!(g.tool, "send_reminder");
    assert_eq!(g.pending.len(), 3);
    assert!(pending.iter().all(|p| p.group == g.group));

    let approvals: Vec<SignedDecision> = g
        .pending
        .iter()
        .map(|p| SignedDecision::Approve(s.approve_sig(p)))
        .collect();

    // Refused as a whole, with nothing applied: one approval for other arguments,
    // one by another operator's key, a duplicate, a proposal of another group, mixed kinds.
    let mut forged = approvals.clone();
    forged[1] = SignedDecision::Approve(Approval::sign(
        &s.operator,
        &g.pending[1].id,
        &Proposal::approval_args(&json!({"customer": "attacker"})),
        t0() + Duration::from_secs(3600),
    ));
    let mut stranger = approvals.clone();
    stranger[2] = SignedDecision::Approve(Approval::sign(
        &KeyPair::generate(),
        &g.pending[2].id,
        &Proposal::approval_args(&g.pending[2].args),
        t0() + Duration::from_secs(3600),
    ));
    let mut twice = approvals.clone();
    twice[2] = twice[0].clone();
    let mut mixed = approvals.clone();
    mixed[2] = SignedDecision::Reject(Decision::sign(
        &s.operator,
        DecisionKind::Reject,
        &g.pending[2].id,
        "no",
        t0(),
    ));
    for (what, batch) in [
        ("other arguments", forged),
        ("unknown key", stranger),
        ("duplicate", twice),
        ("mixed kinds", mixed),
    ] {
        let err = s.h.rt.decide_batch(&g.group, &batch).await.unwrap_err();
        assert!(
            matches!(
                err,
                ProposalError::Signature { .. } | ProposalError::Batch { .. }
            ),
            "{what}: {err}"
        );
        assert_eq!(
            s.h.rt.proposal_groups().unwrap()[0].pending.len(),
            3,
            "{what}"
        );
    }
    assert!(matches!(
        s.h.rt.decide_batch("0000000000000000", &approvals).await,
        Err(ProposalError::Batch { .. })
    ));
    assert_eq!(s.counters.reminders.load(Ordering::SeqCst), 0);

    // Approved together: each ran exactly once, under one batch audit entry.
    let out = s.h.rt.decide_batch(&g.group, &approvals).await.unwrap();
    assert_eq!(out.decided.len(), 3);
    assert_eq!(out.operator, s.operator.public().to_hex());
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(s.counters.reminders.load(Ordering::SeqCst), 3);
    let entries = s.h.rt.audit_tail(1000).await.unwrap();
    let batch = entries
        .iter()
        .find(|e| e.record.kind == "proposal.batch")
        .unwrap();
    assert_eq!(batch.record.detail["by"], s.operator.public().to_hex());
    assert_eq!(batch.record.agent, "collector");
    assert_eq!(
        batch.record.detail["proposals"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.record.kind == "proposal.approved")
            .count(),
        3
    );

    // A tool that does not allow it: every proposal needs its own decision.
    let b = s.agent("ap", vec![]).await;
    let mut calls = Vec::new();
    for amount in [100, 200] {
        let b = b.clone();
        calls.push(tokio::spawn(async move {
            b.call_tool("payout", json!({"to": "ACME GmbH", "amount": amount}))
                .await
        }));
    }
    let mut payouts = Vec::new();
    for _ in 0..400 {
        payouts =
            s.h.rt
                .proposal_groups()
                .unwrap()
                .into_iter()
                .filter(|g| g.tool == "payout")
                .collect();
        if payouts.first().is_some_and(|g| g.pending.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let g = &payouts[0];
    assert!(!g.batchable);
    let approvals: Vec<SignedDecision> = g
        .pending
        .iter()
        .map(|p| SignedDecision::Approve(s.approve_sig(p)))
        .collect();
    let err = s.h.rt.decide_batch(&g.group, &approvals).await.unwrap_err();
    assert!(err.to_string().contains("does not allow batch"), "{err}");
    for p in &g.pending {
        s.h.rt.approve(&p.id, &s.approve_sig(p)).await.unwrap();
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_durable_withdraws_open_proposals_and_outlives_no_approval() {
    let mut s = Setup::new(Duration::from_secs(3600)).await;
    let spec = AgentSpec::new("ap");
    let token = s.h.token(&spec.key, "ap", &[("payout", Tier::Auto)], "10");
    let a =
        s.h.rt
            .spawn_agent(
                spec.clone(),
                token.clone(),
                Arc::new(ScriptedBrain::new(pay(900))),
            )
            .await
            .unwrap();
    let run = tokio::spawn(async move { a.run("pay invoice 7").await });
    let p = s.wait_for(ProposalState::Pending).await;

    // Revoked while the step waits: the proposal is withdrawn, the step is told, and
    // an approval signed afterwards runs nothing.
    s.h.rt
        .revoke(token.revocation_ids()[0].clone())
        .await
        .unwrap();
    let out = run.await.unwrap().unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert!(
        denied[0].detail.contains("withdrawn") && denied[0].detail.contains("revoked"),
        "{}",
        denied[0].detail
    );
    let withdrawn = s.h.rt.proposal(&p.id).unwrap().unwrap();
    assert_eq!(withdrawn.state, ProposalState::Failed);
    assert!(matches!(
        s.h.rt.approve(&p.id, &s.approve_sig(&p)).await,
        Err(ProposalError::WrongState { .. })
    ));

    // After a restart the revocation still holds: the token cannot start an agent.
    s.restart().await;
    let err =
        s.h.rt
            .spawn_agent(spec, token, Arc::new(ScriptedBrain::new(pay(900))))
            .await
            .unwrap_err();
    assert!(
        matches!(err, bulwark_runtime::SpawnError::Revoked(_)),
        "{err}"
    );
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 0);

    // The honest path: another agent's payout is approved and runs once.
    let b = s.agent("bp", pay(800)).await;
    let run = tokio::spawn(async move { b.run("pay invoice 8").await });
    let p = s.wait_for(ProposalState::Pending).await;
    s.h.rt.approve(&p.id, &s.approve_sig(&p)).await.unwrap();
    assert!(run.await.unwrap().unwrap().succeeded());
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_arriving_after_the_token_expired_runs_nothing() {
    // Proposals live 60 days; the agent's token expires after 30.
    let s = Setup::new(Duration::from_secs(60 * 24 * 3600)).await;
    let late = |s: &Setup, p: &Proposal| {
        Approval::sign(
            &s.operator,
            &p.id,
            &Proposal::approval_args(&p.args),
            t0() + Duration::from_secs(90 * 24 * 3600),
        )
    };
    // A step waits; the token expires; then the approval comes: the gate checks the
    // token again before the tool runs.
    let a = s.agent("ap", pay(900)).await;
    let run = tokio::spawn(async move { a.run("pay invoice 7").await });
    let waited = s.wait_for(ProposalState::Pending).await;
    s.h.clock.advance(Duration::from_secs(31 * 24 * 3600));
    s.h.rt
        .approve(&waited.id, &late(&s, &waited))
        .await
        .unwrap();
    let out = run.await.unwrap().unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert!(denied[0].detail.contains("expired"), "{}", denied[0].detail);
    let p = s.h.rt.proposal(&waited.id).unwrap().unwrap();
    assert_eq!(p.state, ProposalState::Failed, "{p:?}");

    // Detached: pending across a restart, approved after expiry, run by the runtime —
    // which re-authorizes the proposal's own token and refuses.
    let mut s = Setup::new(Duration::from_secs(60 * 24 * 3600)).await;
    let b = s.agent("bp", pay(800)).await;
    let run = tokio::spawn(async move { b.run("pay invoice 8").await });
    let pending = s.wait_for(ProposalState::Pending).await;
    s.restart().await;
    let _ = run.await;
    s.h.clock.advance(Duration::from_secs(31 * 24 * 3600));
    s.h.rt
        .approve(&pending.id, &late(&s, &pending))
        .await
        .unwrap();
    let mut state = ProposalState::Approved;
    for _ in 0..400 {
        state = s.h.rt.proposal(&pending.id).unwrap().unwrap().state;
        if state != ProposalState::Approved {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, ProposalState::Failed);
    let p = s.h.rt.proposal(&pending.id).unwrap().unwrap();
    assert!(
        p.error.as_deref().unwrap_or("").contains("expired"),
        "{p:?}"
    );
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 0);

    // The honest path: approved in time, it runs.
    let s = Setup::new(Duration::from_secs(60 * 24 * 3600)).await;
    let c = s.agent("cp", pay(700)).await;
    let run = tokio::spawn(async move { c.run("pay invoice 9").await });
    let p = s.wait_for(ProposalState::Pending).await;
    s.h.rt.approve(&p.id, &s.approve_sig(&p)).await.unwrap();
    assert!(run.await.unwrap().unwrap().succeeded());
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_are_sealed_at_rest_and_read_back_whole() {
    let mut s = Setup::new(Duration::from_secs(3600)).await;
    let args = json!({"to": "GB82WEST12345698765432", "amount": 900,
                      "memo": "receipt to jane.doe@example.org"});
    let a = s
        .agent(
            "ap",
            vec![BrainAction::CallTool {
                tool: "payout".into(),
                args: args.clone(),
            }],
        )
        .await;
    let run = tokio::spawn(async move { a.run("pay the supplier").await });
    let p = s.wait_for(ProposalState::Pending).await;
    s.restart().await;
    let _ = run.await;
    s.h.rt.shutdown().await.unwrap();

    // The database file holds neither the account nor the address in clear (the
    // proposal is sealed; the audit trail redacts them).
    let raw = std::fs::read(s.h.dir.path().join(bulwark_runtime::DB_FILE)).unwrap();
    for needle in ["GB82WEST12345698765432", "jane.doe@example.org"] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is stored in clear"
        );
    }
    // Read back whole: offline, and by a runtime that then runs it as approved.
    let offline = bulwark_runtime::read_proposals(s.h.dir.path()).unwrap();
    assert_eq!(offline[0].args, args);
    s.h.rt = build(
        s.h.dir.path(),
        &s.h.root,
        s.h.clock.clone(),
        &s.operator,
        s.expiry,
        s.counters.clone(),
    )
    .await;
    assert_eq!(s.h.rt.proposal(&p.id).unwrap().unwrap().args, args);
    s.h.rt.approve(&p.id, &s.approve_sig(&p)).await.unwrap();
    s.wait_for(ProposalState::Committed).await;
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 1);
}

/// A runtime whose watchdog rules cover every call of `send_email` (AUTO+) and
/// `transfer` (AUTO), not only proposals; `read_inbox` (AUTO) is not covered.
async fn every_call_runtime(transfers: Arc<AtomicUsize>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = KeyPair::generate();
    let clock = Arc::new(ManualClock::new(t0()));
    let rules = WatchdogRules {
        amount_limits: vec![AmountLimit {
            tool: "transfer".into(),
            arg: "amount".into(),
            max: 100,
        }],
        allow_lists: vec![AllowList {
            tool: "send_email".into(),
            arg: "to".into(),
            allowed: vec!["@acme.example".into()],
        }],
        every_call: ["send_email".to_string(), "transfer".to_string()].into(),
        ..WatchdogRules::default()
    };
    rules.validate().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .root_public_key(root.public())
        .clock(clock.clone())
        .approvals(ApprovalConfig::new(vec![KeyPair::generate().public()]).rules(rules))
        .build()
        .await
        .unwrap();
    crate::register_tools(&rt);
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("transfer", "Moves money between own accounts").tier(Tier::Auto),
            move |_| {
                let t = transfers.clone();
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!("moved")))
                }
            },
        ))
        .unwrap();
    Harness {
        dir,
        root,
        clock,
        rt,
    }
}

fn calls(calls: &[(&str, Value)]) -> Vec<BrainAction> {
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
    actions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_rules_listed_for_every_call_deny_auto_calls_with_the_rule_named() {
    let transfers = Arc::new(AtomicUsize::new(0));
    let h = every_call_runtime(transfers.clone()).await;
    let tools = [
        ("send_email", Tier::AutoPlus),
        ("transfer", Tier::Auto),
        ("read_inbox", Tier::Auto),
    ];
    // The honest calls run at their tier.
    let honest = h
        .agent(
            "clerk",
            &tools,
            "10",
            Arc::new(ScriptedBrain::new(calls(&[
                (
                    "send_email",
                    json!({"to": "bob@acme.example", "body": "hi"}),
                ),
                (
                    "send_email",
                    json!({"to": "Carol@ACME.example", "body": "hi"}),
                ),
                ("transfer", json!({"amount": 100})),
                ("transfer", json!({"amount": "99.99"})),
                ("read_inbox", json!({})),
            ]))),
        )
        .await;
    let out = honest.run("honest work").await.unwrap();
    assert_eq!(out.denied().count(), 0, "{:?}", out.actions);
    assert_eq!(transfers.load(Ordering::SeqCst), 2);

    // Smuggled recipients, header injection, negative, malformed, missing and too
    // large amounts: each denied by the rule, before anything runs.
    let attacks = [
        (
            "send_email",
            json!({"to": "attacker@evil.test, bob@acme.example", "body": "x"}),
        ),
        (
            "send_email",
            json!({"to": "bob@acme.example\r\nBcc: attacker@evil.test", "body": "x"}),
        ),
        (
            "send_email",
            json!({"to": "attacker@evil.test\r\nCc: bob@acme.example", "body": "x"}),
        ),
        (
            "send_email",
            json!({"to": "Bob <bob@acme.example>", "body": "x"}),
        ),
        (
            "send_email",
            json!({"to": "attacker@evil.test;bob@acme.example", "body": "x"}),
        ),
        ("transfer", json!({"amount": -5})),
        ("transfer", json!({"amount": "-5"})),
        ("transfer", json!({"amount": "1e9"})),
        ("transfer", json!({"amount": " 5"})),
        ("transfer", json!({"amount": 100.5})),
        ("transfer", json!({"amount": 1e300})),
        ("transfer", json!({})),
        ("transfer", json!({"amount": [5]})),
    ];
    let attacker = h
        .agent(
            "mallory",
            &tools,
            "10",
            Arc::new(ScriptedBrain::new(calls(&attacks))),
        )
        .await;
    let out = attacker.run("exfiltrate").await.unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert_eq!(denied.len(), attacks.len(), "{:?}", out.actions);
    for (d, (tool, args)) in denied.iter().zip(&attacks) {
        assert!(
            d.detail.contains(&format!("the watchdog refused `{tool}`")),
            "{args}: {}",
            d.detail
        );
        let rule = if *tool == "send_email" {
            "send_email.to must be one of @acme.example"
        } else {
            "transfer.amount"
        };
        assert!(d.detail.contains(rule), "{args}: {}", d.detail);
    }
    assert_eq!(
        transfers.load(Ordering::SeqCst),
        2,
        "no denied transfer ran"
    );
    // Nothing became a proposal: these are AUTO calls.
    assert!(h.rt.proposals().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_without_the_limited_argument_is_rejected_not_waved_through() {
    let s = Setup::new(Duration::from_secs(60)).await;
    let a = s
        .agent("ap", calls(&[("payout", json!({"to": "ACME GmbH"}))]))
        .await;
    let out = a.run("pay without an amount").await.unwrap();
    let denied: Vec<_> = out.denied().collect();
    assert_eq!(denied.len(), 1);
    assert!(
        denied[0].detail.contains("payout.amount is required"),
        "{}",
        denied[0].detail
    );
    assert_eq!(s.counters.payouts.load(Ordering::SeqCst), 0);
}
