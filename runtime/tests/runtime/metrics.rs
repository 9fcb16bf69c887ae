//! The runtime's metrics: what the gate counts, read back from the rendered text.

use bulwark_capabilities::Tier;
use serde_json::json;

use crate::{Harness, calls};

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_counts_calls_by_tool_tier_and_outcome_and_denials_by_reason() {
    let h = Harness::new().await;
    let brain = calls(&[
        ("read_inbox", json!({})),
        ("read_inbox", json!({})),
        ("lookup", json!({})),
        ("wipe", json!({})),
        ("pay", json!({})),
        ("no_such_tool", json!({})),
    ]);
    let a = h
        .agent(
            "clerk",
            &[
                ("read_inbox", Tier::Auto),
                ("lookup", Tier::Auto),
                ("wipe", Tier::Auto),
            ],
            "1",
            brain,
        )
        .await;
    let out = a.run("count me").await.unwrap();
    let allowed: Vec<bool> = out.actions.iter().map(|a| a.allowed).collect();
    assert_eq!(allowed, [true, true, true, false, false, false]);

    let text = h.rt.metrics().render();
    let name = "bulwark_tool_calls_total";
    for (series, value) in [
        (
            format!("{name}{{tool=\"read_inbox\",tier=\"auto\",outcome=\"allowed\"}}"),
            "2",
        ),
        (
            format!("{name}{{tool=\"lookup\",tier=\"auto\",outcome=\"allowed\"}}"),
            "1",
        ),
        (
            format!("{name}{{tool=\"wipe\",tier=\"block\",outcome=\"refused\"}}"),
            "1",
        ),
        // Refused by the token before a tier was decided.
        (
            format!("{name}{{tool=\"pay\",tier=\"none\",outcome=\"refused\"}}"),
            "1",
        ),
        // A name no tool has is never a label.
        (
            format!("{name}{{tool=\"unregistered\",tier=\"none\",outcome=\"refused\"}}"),
            "1",
        ),
        ("bulwark_tool_denials_total{reason=\"blocked\"}".into(), "1"),
        ("bulwark_tool_denials_total{reason=\"token\"}".into(), "1"),
        (
            "bulwark_tool_denials_total{reason=\"unknown_tool\"}".into(),
            "1",
        ),
        ("bulwark_proposals_open".into(), "0"),
        (
            "bulwark_budget_cap_microdollars{tenant=\"acme\"}".into(),
            "1000000",
        ),
    ] {
        assert_eq!(
            sample(&text, &series).as_deref(),
            Some(value),
            "{series} in\n{text}"
        );
    }
    assert!(!text.contains("no_such_tool"), "{text}");
    assert!(text.contains("# TYPE bulwark_tool_calls_total counter\n"));
    assert!(text.contains("# TYPE bulwark_proposals_open gauge\n"));

    // The budget figures are the ledger's, read at scrape: `lookup` cost 7000.
    let account = h.rt.account("tenant:acme").unwrap();
    assert!(account.spent_today.micros() >= 7_000);
    let spent = sample(
        &text,
        "bulwark_budget_spent_today_microdollars{tenant=\"acme\"}",
    );
    assert_eq!(spent, Some(account.spent_today.micros().to_string()));
    let total = sample(
        &text,
        "bulwark_budget_spent_microdollars_total{tenant=\"acme\"}",
    );
    assert_eq!(total, Some(account.total_spent.micros().to_string()));

    // Another runtime in the same process counts apart.
    let other = Harness::new().await;
    let text = other.rt.metrics().render();
    assert!(!text.contains("read_inbox"), "{text}");
    assert!(!text.contains("tenant=\"acme\""), "{text}");
}
