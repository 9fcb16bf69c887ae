//! The gate: every tool call, no exceptions.
//!
//! 1. the tool exists and the arguments match its schema;
//! 2. the call is signed by the agent's holder key and the token authorizes it
//!    (chain, expiry, revocation, holder signature, replay, argument constraints), and
//!    every secret the tool needs is granted;
//! 3. the tier — the stricter of the manifest's and the token's, raised by argument
//!    provenance — is applied: AUTO runs, AUTO+ runs and notifies, PROPOSE and CONFIRM
//!    need the approval path (fail closed when there is none), BLOCK never runs;
//! 4. text leaving through the tool passes its channel's output guard, then channel
//!    deduplication;
//! 5. the one execution path ([`execute`]): the budget is reserved and the intent is
//!    written to the audit trail durably — before the tool runs, so no effect can
//!    happen unrecorded — secrets are decrypted, the tool runs (in its own task, with
//!    its timeout: a panic or a hang is an error, never the agent's death), the actual
//!    cost is committed and the result audited.
//!
//! Callers hand the gate a [`CallContext`] (who calls, for which run, with what
//! provenance) and a [`SignedCall`] the caller signed; nothing is read from the task.

mod call;
mod checks;
mod execute;
mod output;
mod remote;

use std::sync::Arc;

use bulwark_capabilities::{KeyPair, Tier, Token};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::audit::{AuditKind, AuditRecord};
use crate::error::GateError;
use crate::runtime::Inner;

pub(crate) use call::CallContext;
pub use call::{CALL_FORMAT, SignedCall};
pub(crate) use execute::{Execution, RunAs};

/// Who is calling: an agent with its verified token and its holder key.
pub(crate) struct Identity {
    pub agent: String,
    pub token: Token,
    pub key: KeyPair,
    pub account: String,
    pub chain: Vec<String>,
}

impl Identity {
    /// A record of `kind` about this agent, with its token and chain.
    pub fn record(&self, kind: AuditKind, detail: Value) -> AuditRecord {
        AuditRecord {
            kind: kind.as_str().to_string(),
            agent: self.agent.clone(),
            token_id: self.token.id(),
            chain: self.chain.clone(),
            detail,
            ledger: None,
        }
    }
}

/// What a [`Notification`] tells of.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NotificationKind {
    /// An AUTO+ call ran (after the fact: it did not wait for anyone).
    Ran,
    /// A CONFIRM proposal waits for an operator's decision.
    NeedsConfirmation {
        /// The proposal to decide.
        proposal: String,
    },
}

/// An event an operator may want to see: an AUTO+ call that ran, or a CONFIRM
/// proposal that waits for a decision (see [`NotificationKind`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Notification {
    /// What happened.
    pub kind: NotificationKind,
    /// The agent.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// The tier that caused the notification.
    pub tier: Tier,
    /// The arguments.
    pub args: Value,
}

/// A tool call's result as the agent receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct CallResult {
    /// The tool's output (untrusted data).
    pub value: Value,
    /// The effective tier it ran at.
    pub tier: Tier,
    /// What it was charged, micro-dollars.
    pub charged: u64,
}

impl Inner {
    /// Runs one signed tool call through the gate. A refusal is audited.
    pub(crate) async fn call_tool(
        self: &Arc<Self>,
        ctx: CallContext<'_>,
        call: &SignedCall,
    ) -> Result<CallResult, GateError> {
        let who = ctx.who;
        let tool = call.tool.as_str();
        let span = tracing::info_span!("tool_call", agent = %who.agent, token_id = %who.token.id(), tool, tier = tracing::field::Empty, decision = tracing::field::Empty);
        let mut tier = None;
        let result = self
            .gate(ctx, call, &mut tier)
            .instrument(span.clone())
            .await;
        span.record(
            "decision",
            if result.is_ok() { "allowed" } else { "denied" },
        );
        let registered = self.tools.get(tool).is_some();
        self.metrics.tool_call(tool, registered, tier, &result);
        if let Err(e) = &result
            && e.is_audited_as_denial()
        {
            self.audit_later(who.record(
                AuditKind::ToolDenied,
                json!({"tool": tool, "reason": e.to_string()}),
            ));
        }
        result
    }

    /// Signs `args` for `tool` as the context's caller and runs the call.
    pub(crate) async fn sign_and_call(
        self: &Arc<Self>,
        ctx: CallContext<'_>,
        tool: &str,
        args: Value,
    ) -> Result<CallResult, GateError> {
        let call = ctx.sign(tool, args, self.clock.now());
        self.call_tool(ctx, &call).await
    }

    /// The gate's steps, in order; each step is a function of its own. `decided`
    /// receives the effective tier once it is known (for the call's metrics).
    async fn gate(
        self: &Arc<Self>,
        ctx: CallContext<'_>,
        call: &SignedCall,
        decided: &mut Option<Tier>,
    ) -> Result<CallResult, GateError> {
        let now = self.clock.now();
        let (tool, args) = (call.tool.as_str(), &call.args);
        let registered = self.registered_with_valid_args(tool, args)?;
        let manifest = &registered.tool.manifest;
        let authorized = self.authorize_call(ctx.who, call, manifest, now)?;
        let judged = checks::judge(ctx, tool, args, manifest, authorized.tier)?;
        tracing::Span::current().record("tier", judged.tier.as_str());
        *decided = Some(judged.tier);
        let proposal = self
            .pass_tier(ctx, tool, args, manifest, &judged, now)
            .await?;
        let guarded = output::guard(&self.guards, manifest, args);
        let args = guarded.args.as_ref().unwrap_or(args);
        let claimed = match self.claim_channel(tool, manifest, args).await {
            Ok(claimed) => claimed,
            Err(e) => return self.abandon(&proposal, e).await,
        };
        let detail = judged.intent(tool, args, manifest, guarded.record);
        let execution = Execution::new(&registered, ctx.who, args, detail)
            .approved_by(proposal.as_ref().and_then(|p| p.approval.as_ref()));
        let executed = match self.execute(execution).await {
            Ok(executed) => executed,
            Err(e) => {
                // Nothing is sent: the channel stays free for a call that can pay.
                if let (GateError::Budget(_), Some((channel, content))) = (&e, claimed) {
                    self.dedup.release_channel(&channel, &content).await?;
                }
                return self.abandon(&proposal, e).await;
            }
        };
        if !executed.ran {
            // A secret could not be decrypted: the tool never ran.
            let error = executed.outcome.err().unwrap_or(GateError::ToolFailed {
                tool: tool.to_string(),
                reason: "not run".into(),
            });
            return self.abandon(&proposal, error).await;
        }
        if let Some(p) = &proposal {
            self.finish_proposal(p, &executed.outcome, manifest).await?;
        }
        let output = executed.outcome?;
        if judged.tier == Tier::AutoPlus {
            self.notify_ran(ctx.who, tool, args);
        }
        Ok(CallResult {
            value: output.value,
            tier: judged.tier,
            charged: executed.charged,
        })
    }

    /// Tells subscribers that an AUTO+ call ran.
    fn notify_ran(&self, who: &Identity, tool: &str, args: &Value) {
        let _ = self.notifications.send(Notification {
            kind: NotificationKind::Ran,
            agent: who.agent.clone(),
            tool: tool.to_string(),
            tier: Tier::AutoPlus,
            args: args.clone(),
        });
    }
}
