//! Invoice approval: an accounts-payable agent pays two invoices.
//!
//! The small one goes through a PROPOSE tool: the watchdog checks it, it runs at once,
//! and stays cancellable for 15 minutes; the operator cancels it (the supplier sent it
//! twice), and the payment's compensation recalls the money. The large one goes
//! through a CONFIRM tool: the agent's step waits until the operator signs an approval
//! of exactly those arguments with their key. A third payment, over the watchdog's
//! limit, never reaches a person. The audit trail of both is printed at the end.
//!
//! Run it with `cargo run --example invoice_approval`. It exits non-zero if anything
//! runs that should not, or twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use bulwark::capabilities::{
    Approval, Attenuation, Decision, DecisionKind, KeyPair, RootGrant, Tier, Token,
};
use bulwark::runtime::{
    AgentSpec, AmountLimit, ApprovalConfig, BrainAction, Proposal, ProposalState, Runtime,
    ScriptedBrain, Tool, ToolManifest, ToolOutput, WatchdogRules,
};
use serde_json::json;

#[derive(Default)]
struct Bank {
    payments: AtomicUsize,
    recalls: AtomicUsize,
}

fn register_tools(rt: &Runtime, bank: &Arc<Bank>) -> anyhow::Result<()> {
    let t = rt.tools();
    t.register(Tool::native(
        ToolManifest::new("read_invoices", "Lists unpaid supplier invoices"),
        |_| async {
            Ok(ToolOutput::new(json!([
                {"invoice": "INV-1041", "supplier": "Paper & Co", "iban": "DE89370400440532013000", "amount": 240},
                {"invoice": "INV-1042", "supplier": "Northline Freight", "iban": "GB82WEST12345698765432", "amount": 18_750},
                {"invoice": "INV-1043", "supplier": "Orion Consulting", "iban": "FR1420041010050500013M02606", "amount": 96_000}
            ])))
        },
    ))?;
    let b = bank.clone();
    t.register(Tool::native(
        ToolManifest::new("pay_small", "Pays an invoice of at most 1,000")
            .tier(Tier::Propose)
            .compensation("recall_payment")
            .rollback_window(Duration::from_secs(15 * 60)),
        move |input| {
            let b = b.clone();
            async move {
                b.payments.fetch_add(1, Ordering::SeqCst);
                Ok(ToolOutput::new(json!({"paid": input.args["invoice"]})))
            }
        },
    ))?;
    let b = bank.clone();
    t.register(Tool::native(
        ToolManifest::new("recall_payment", "Recalls a payment made in error"),
        move |input| {
            let b = b.clone();
            async move {
                b.recalls.fetch_add(1, Ordering::SeqCst);
                Ok(ToolOutput::new(json!({"recalled": input.args["invoice"]})))
            }
        },
    ))?;
    let b = bank.clone();
    t.register(Tool::native(
        ToolManifest::new("pay_large", "Pays an invoice above 1,000").tier(Tier::Confirm),
        move |input| {
            let b = b.clone();
            async move {
                b.payments.fetch_add(1, Ordering::SeqCst);
                Ok(ToolOutput::new(json!({"paid": input.args["invoice"]})))
            }
        },
    ))?;
    Ok(())
}

fn pay(tool: &str, invoice: &str, iban: &str, amount: i64) -> BrainAction {
    BrainAction::CallTool {
        tool: tool.into(),
        args: json!({"invoice": invoice, "iban": iban, "amount": amount}),
    }
}

async fn wait_for(rt: &Runtime, tool: &str, state: ProposalState) -> anyhow::Result<Proposal> {
    for _ in 0..500 {
        if let Some(p) = rt
            .proposals()?
            .into_iter()
            .find(|p| p.tool == tool && p.state == state)
        {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("no `{tool}` proposal became {state}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    let root = KeyPair::generate();
    let operator = KeyPair::generate(); // the finance controller's key
    let rules = WatchdogRules {
        amount_limits: vec![AmountLimit {
            tool: "pay_large".into(),
            arg: "amount".into(),
            max: 50_000,
        }],
        ..WatchdogRules::default()
    };
    let rt = Runtime::builder()
        .data_dir(data.path())
        .root_public_key(root.public())
        .approvals(ApprovalConfig::new(vec![operator.public()]).rules(rules))
        .build()
        .await?;
    let bank = Arc::new(Bank::default());
    register_tools(&rt, &bank)?;

    let finance = KeyPair::generate();
    let grant = RootGrant::new(
        "acme",
        "finance",
        finance.public(),
        "5".parse()?,
        SystemTime::now() + Duration::from_secs(8 * 3600),
        2,
    )
    .tool("read_invoices", Tier::Auto)
    .tool("pay_small", Tier::Auto)
    .tool("pay_large", Tier::Auto);
    let spec = AgentSpec::new("accounts-payable");
    let token = Token::mint(&root, grant)?.attenuate(
        &finance,
        Attenuation::new("accounts-payable", spec.key.public())
            .require("pay_small.amount le 1000".parse()?),
    )?;
    let brain = Arc::new(ScriptedBrain::new(vec![
        BrainAction::CallTool {
            tool: "read_invoices".into(),
            args: json!({}),
        },
        pay("pay_small", "INV-1041", "DE89370400440532013000", 240),
        pay("pay_large", "INV-1042", "GB82WEST12345698765432", 18_750),
        pay(
            "pay_large",
            "INV-1043",
            "FR1420041010050500013M02606",
            96_000,
        ),
        BrainAction::Finish {
            answer: "Invoices processed.".into(),
        },
    ]));
    let agent = rt.spawn_agent(spec, token, brain).await?;
    println!("Bulwark invoice approval: an accounts-payable agent pays three invoices\n");
    let run = tokio::spawn(async move { agent.run("Pay this week's supplier invoices").await });

    // The small payment ran at once; the operator cancels it inside its window.
    let small = wait_for(&rt, "pay_small", ProposalState::Committed).await?;
    println!(
        "PROPOSE {} ran: {} {} — cancellable until {}",
        small.id,
        small.tool,
        small.args,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(small.rollback_until_ms.unwrap_or(0))
        )
    );
    let cancel = Decision::sign(
        &operator,
        DecisionKind::Cancel,
        &small.id,
        "duplicate of an invoice paid last week",
        SystemTime::now(),
    );
    let cancelled = rt.cancel(&small.id, &cancel).await?;
    println!("  operator cancelled it: {}", cancelled.decisions[0].reason);

    // The large payment waits for a signed approval of exactly these arguments.
    let large = wait_for(&rt, "pay_large", ProposalState::Pending).await?;
    println!(
        "\nCONFIRM {} waits for a person: {} {} (args hash {}…)",
        large.id,
        large.tool,
        large.args,
        &large.args_hash[..16]
    );
    // A forged approval (another key) and one for other arguments are refused.
    let forged = Approval::sign(
        &KeyPair::generate(),
        &large.id,
        &Proposal::approval_args(&large.args),
        SystemTime::now() + Duration::from_secs(600),
    );
    let refused = rt.approve(&large.id, &forged).await;
    println!(
        "  approval signed by an unknown key: {}",
        refused
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    ensure!(refused.is_err(), "a forged approval was accepted");
    let approval = Approval::sign(
        &operator,
        &large.id,
        &Proposal::approval_args(&large.args),
        SystemTime::now() + Duration::from_secs(600),
    );
    rt.approve(&large.id, &approval).await?;
    println!("  the controller approved it with their key");

    let outcome = run.await??;
    println!("\nThe agent's actions:");
    for a in &outcome.actions {
        println!(
            "  {} {} {}",
            if a.allowed { "✓" } else { "✗" },
            a.target,
            a.detail
        );
    }

    println!("\nAudit of the two payments:");
    let entries = rt.audit_tail(10_000).await?;
    for e in entries.iter().filter(|e| {
        e.record.kind.starts_with("proposal.")
            && [&small.id, &large.id]
                .iter()
                .any(|id| e.record.detail["proposal"] == id.as_str())
    }) {
        let by = e.record.detail["decision"]["by"].as_str().unwrap_or("");
        println!(
            "  #{:<4} {:<22} {} {}",
            e.seq,
            e.record.kind,
            e.record.detail["proposal"].as_str().unwrap_or(""),
            if by.len() > 16 {
                format!("by {}…", &by[..16])
            } else {
                by.to_string()
            }
        );
    }

    let over = rt
        .proposals()?
        .into_iter()
        .find(|p| p.args["invoice"] == "INV-1043")
        .context("the third proposal")?;
    println!(
        "\nINV-1043 ({}): {}",
        over.args["amount"], over.decisions[0].reason
    );
    rt.shutdown().await?;

    ensure!(
        bank.payments.load(Ordering::SeqCst) == 2,
        "expected exactly two payments"
    );
    ensure!(
        bank.recalls.load(Ordering::SeqCst) == 1,
        "expected one recall"
    );
    ensure!(
        over.state == ProposalState::Rejected,
        "the over-limit payment was not rejected"
    );
    println!(
        "\nPaid: 2 (one recalled), rejected by the watchdog: 1, forged approvals accepted: 0."
    );
    Ok(())
}
