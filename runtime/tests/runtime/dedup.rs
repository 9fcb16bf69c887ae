//! The four deduplication layers.

use std::time::Duration;

use bulwark_capabilities::Tier;
use bulwark_runtime::{RunError, Submission, TaskState};
use serde_json::json;

use crate::{Harness, calls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_task_for_the_same_agent_runs_once_a_day() {
    let h = Harness::new().await;
    let a = h.agent("a", &[], "1", calls(&[])).await;
    let b = h.agent("b", &[], "1", calls(&[])).await;
    a.run("Weekly report").await.unwrap();
    let err = a.run("  weekly   REPORT ").await.unwrap_err();
    assert!(matches!(err, RunError::DuplicateTask { .. }), "{err}");
    b.run("Weekly report").await.unwrap();
    h.clock.advance(Duration::from_secs(24 * 3600 + 1));
    a.run("Weekly report").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_to_the_same_channel_is_sent_once_per_window() {
    let h = Harness::new().await;
    let email = |to: &str, body: &str| ("send_email", json!({"to": to, "body": body}));
    let brain = calls(&[
        email("bob@acme.example", "Invoice 7"),
        email("bob@acme.example", "Invoice 7"),
        email("bob@acme.example", "Invoice 8"),
        email("ann@acme.example", "Invoice 7"),
    ]);
    let a = h
        .agent("mailer", &[("send_email", Tier::Auto)], "1", brain)
        .await;
    let out = a.run("send invoices").await.unwrap();
    let allowed: Vec<_> = out.actions.iter().map(|a| a.allowed).collect();
    assert_eq!(allowed, vec![true, false, true, true]);
    assert!(
        out.actions[1].detail.contains("duplicate"),
        "{}",
        out.actions[1].detail
    );
    h.clock.advance(Duration::from_secs(601));
    let again = h
        .agent(
            "mailer2",
            &[("send_email", Tier::Auto)],
            "1",
            calls(&[email("bob@acme.example", "Invoice 7")]),
        )
        .await;
    assert!(again.run("resend").await.unwrap().actions[0].allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_proposal_is_returned_instead_of_a_second_one() {
    let h = Harness::new().await;
    let d = h.rt.dedup();
    assert_eq!(
        d.pending_proposal("a", "pay:42", "p-1").await.unwrap(),
        None
    );
    assert_eq!(
        d.pending_proposal("a", "pay:42", "p-2").await.unwrap(),
        Some("p-1".into())
    );
    assert_eq!(
        d.pending_proposal("b", "pay:42", "p-3").await.unwrap(),
        None
    );
    d.resolve_proposal("a", "pay:42").await.unwrap();
    assert_eq!(
        d.pending_proposal("a", "pay:42", "p-4").await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_work_that_exists_is_not_created_again_and_survives_restarts() {
    let mut h = Harness::new().await;
    let first = match h.rt.dedup().submit_task("Fix login bug").await.unwrap() {
        Submission::Created(t) => t,
        other => panic!("{other:?}"),
    };
    h.restart().await;
    match h.rt.dedup().submit_task("fix LOGIN bug").await.unwrap() {
        Submission::Exists(t) => assert_eq!(t.id, first.id),
        other => panic!("{other:?}"),
    }
    h.rt.dedup()
        .set_task_state("Fix login bug", TaskState::InProgress)
        .await
        .unwrap();
    assert!(matches!(
        h.rt.dedup().submit_task("Fix login bug").await.unwrap(),
        Submission::Exists(_)
    ));
    h.rt.dedup()
        .set_task_state("Fix login bug", TaskState::Done)
        .await
        .unwrap();
    assert!(matches!(
        h.rt.dedup().submit_task("Fix login bug").await.unwrap(),
        Submission::Created(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_budget_refuses_does_not_claim_its_channel() {
    let h = Harness::new().await;
    let email = || {
        (
            "send_email",
            json!({"to": "bob@acme.example", "body": "Invoice 9"}),
        )
    };
    // The first agent of the tenant sets its cap ($1); then half a cent cannot pay
    // for a one-cent email.
    h.agent("first", &[("send_email", Tier::Auto)], "1", calls(&[]))
        .await;
    let broke = h
        .agent(
            "broke",
            &[("send_email", Tier::Auto)],
            "0.005",
            calls(&[email()]),
        )
        .await;
    let out = broke.run("send").await.unwrap();
    assert!(
        out.actions[0].detail.contains("budget exhausted"),
        "{}",
        out.actions[0].detail
    );
    let rich = h
        .agent(
            "rich",
            &[("send_email", Tier::Auto)],
            "1",
            calls(&[email()]),
        )
        .await;
    assert!(rich.run("send").await.unwrap().actions[0].allowed);
}
