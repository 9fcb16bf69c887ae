//! The gate: every tool call, no exceptions.
//!
//! 1. the tool exists and the arguments match its schema;
//! 2. the request is signed by the agent's holder key and the token authorizes it
//!    (chain, expiry, revocation, holder signature, replay, argument constraints), and
//!    every secret the tool needs is granted;
//! 3. the tier — the stricter of the manifest's and the token's — is applied: AUTO
//!    runs, AUTO+ runs and notifies, PROPOSE and CONFIRM need the approval path (fail
//!    closed when there is none), BLOCK never runs;
//! 4. channel deduplication;
//! 5. the budget is reserved and the intent is written to the audit trail durably —
//!    before the tool runs, so no effect can happen unrecorded;
//! 6. the tool runs (in its own task, with its timeout: a panic or a hang is an error,
//!    never the agent's death), the actual cost is committed and the result audited.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulwark_capabilities::{Args, KeyPair, Request, SignedRequest, Tier, Token};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::audit::AuditRecord;
use crate::error::GateError;
use crate::guard::{Origin, Provenance};
use crate::journal::{Batch, Mode};
use crate::ledger::{LedgerCommand, LedgerOutcome};
use crate::runtime::Inner;
use crate::tools::{ToolInput, UntrustedPolicy, to_capability_args};

/// Who is calling: an agent with its verified token and its holder key.
pub(crate) struct Identity {
    pub agent: String,
    pub token: Token,
    pub key: KeyPair,
    pub account: String,
    pub chain: Vec<String>,
}

impl Identity {
    pub fn record(&self, kind: &str, detail: Value) -> AuditRecord {
        AuditRecord {
            kind: kind.to_string(),
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

/// Whether a call may wait for an approval.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Approvals {
    /// PROPOSE and CONFIRM take the approval path.
    Available,
    /// The call comes from inside a sandboxed tool, which must not wait for a person:
    /// PROPOSE and CONFIRM are refused at once.
    Unavailable,
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
    /// Runs one tool call through the gate.
    pub(crate) async fn call_tool(
        self: &Arc<Self>,
        who: &Identity,
        tool: &str,
        args: Value,
        provenance: Option<&Provenance>,
    ) -> Result<CallResult, GateError> {
        self.call_tool_as(who, tool, args, provenance, Approvals::Available)
            .await
    }

    /// Runs one tool call made from inside a sandboxed tool (a host function): as
    /// [`Inner::call_tool`], but a call whose tier needs an approval is refused at
    /// once ([`GateError::ApprovalInSandbox`]) instead of waiting for one.
    pub(crate) async fn call_tool_in_sandbox(
        self: &Arc<Self>,
        who: &Identity,
        tool: &str,
        args: Value,
    ) -> Result<CallResult, GateError> {
        self.call_tool_as(who, tool, args, None, Approvals::Unavailable)
            .await
    }

    async fn call_tool_as(
        self: &Arc<Self>,
        who: &Identity,
        tool: &str,
        args: Value,
        provenance: Option<&Provenance>,
        approvals: Approvals,
    ) -> Result<CallResult, GateError> {
        let span = tracing::info_span!("tool_call", agent = %who.agent, token_id = %who.token.id(), tool, tier = tracing::field::Empty, decision = tracing::field::Empty);
        let result = self
            .gate(who, tool, &args, provenance, approvals)
            .instrument(span.clone())
            .await;
        span.record(
            "decision",
            if result.is_ok() { "allowed" } else { "denied" },
        );
        if let Err(e) = &result
            && !e.is_tool_failure()
            && !matches!(e, GateError::Store(_))
        {
            let record = who.record(
                "tool.denied",
                json!({"tool": tool, "reason": e.to_string()}),
            );
            self.journal.defer(Batch::audit(record), self.clock.now());
        }
        result
    }

    async fn gate(
        self: &Arc<Self>,
        who: &Identity,
        tool: &str,
        args: &Value,
        provenance: Option<&Provenance>,
        approvals: Approvals,
    ) -> Result<CallResult, GateError> {
        let now = self.clock.now();
        let registered = self
            .tools
            .get(tool)
            .ok_or_else(|| GateError::UnknownTool(tool.to_string()))?;
        let manifest = &registered.tool.manifest;
        let errors: Vec<String> = registered
            .validator
            .iter_errors(args)
            .take(3)
            .map(|e| format!("{} at `{}`", e, e.instance_path))
            .collect();
        if !errors.is_empty() {
            return Err(GateError::InvalidArguments {
                tool: tool.to_string(),
                reason: errors.join("; "),
            });
        }

        let request = Request {
            agent: who.agent.clone(),
            tool: tool.to_string(),
            args: to_capability_args(args),
            time: now,
        };
        // The agent signs with its holder key; the gate verifies possession, replay and
        // the token, as a remote node will.
        let signed = SignedRequest::sign(&who.token, &who.key, request);
        let authorized = {
            let revoked = self.revocations.read().unwrap_or_else(|p| p.into_inner());
            let mut guard = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            who.token
                .authorize_signed(&signed, now, &mut guard, &revoked)?
        };
        self.check_secret_grants(&who.token, &who.agent, tool, &manifest.secrets, now)?;

        let mut tier = authorized.tier.max(manifest.tier);
        // Argument provenance: a sensitive value the model copied from untrusted
        // content is refused (or escalated), whatever the model says about it.
        let origins = provenance
            .map(|p| p.classify_with(args, &manifest.arg_kinds))
            .unwrap_or_default();
        let token_trusted = who.token.effective().trusted_args.get(tool);
        for (arg, origin) in &origins {
            if *origin != Origin::Untrusted {
                continue;
            }
            if token_trusted.is_some_and(|args| args.contains(arg)) {
                return Err(GateError::UntrustedArgument {
                    tool: tool.to_string(),
                    arg: arg.clone(),
                    rule: "the agent's token".into(),
                });
            }
            match manifest.sensitive_args.get(arg) {
                Some(UntrustedPolicy::Deny) => {
                    return Err(GateError::UntrustedArgument {
                        tool: tool.to_string(),
                        arg: arg.clone(),
                        rule: "the tool's manifest".into(),
                    });
                }
                Some(UntrustedPolicy::Confirm) => tier = tier.max(Tier::Confirm),
                None => {}
            }
        }
        // Text that leaves through the tool and carries a link, an address or an
        // account number seen only in untrusted content is that value: the link is the
        // payload. Such a call needs a person (declared-sensitive arguments were judged
        // above by their own policy).
        let mut carried = Vec::new();
        if let (Some(p), Some(out)) = (provenance, &manifest.output) {
            for name in &out.args {
                if manifest.sensitive_args.contains_key(name) {
                    continue;
                }
                if let Some(Value::String(text)) = args.get(name.as_str()) {
                    let found = p.untrusted_values(text);
                    if !found.is_empty() {
                        tier = tier.max(Tier::Confirm);
                        carried.push(json!({"arg": name, "values": found}));
                    }
                }
            }
        }
        tracing::Span::current().record("tier", tier.as_str());
        let mut proposal = None;
        match tier {
            Tier::Block => return Err(GateError::Blocked(tool.to_string())),
            Tier::Propose | Tier::Confirm => {
                if approvals == Approvals::Unavailable {
                    return Err(GateError::ApprovalInSandbox {
                        tool: tool.to_string(),
                        tier,
                    });
                }
                if self.approval.is_none() {
                    return Err(GateError::ApprovalPathNotConfigured {
                        tool: tool.to_string(),
                        tier,
                    });
                }
                // The watchdog validates; CONFIRM waits here for a person. Only an
                // approved (or, for PROPOSE, watchdog-passed) proposal goes on.
                let p = self.open_proposal(who, tool, args, tier, &origins).await?;
                proposal = Some(p);
                // A decision may have taken hours: the token is checked again now
                // (revocation, expiry, constraints, secret grants) before it runs.
                if let Err(e) =
                    self.reauthorize(&who.token, &who.agent, tool, args, &manifest.secrets)
                {
                    return self.abandon(&proposal, e).await;
                }
            }
            // Operator rules that cover every call of the tool, not only proposals.
            Tier::Auto | Tier::AutoPlus => crate::watchdog::check_every_call(
                self.approval.as_ref(),
                &who.agent,
                tool,
                args,
                now,
            )?,
        }

        // Text that leaves through the tool is guarded by its channel's output policy.
        let mut guarded_args = None;
        let mut output_guard = Value::Null;
        if let Some(out) = &manifest.output {
            let mut rewritten = args.clone();
            let mut redacted = Vec::new();
            let mut removed = Vec::new();
            for name in &out.args {
                if let Some(Value::String(text)) = rewritten.get(name.as_str()) {
                    let g = self.guards.output(&out.channel, text);
                    if g.changed() {
                        redacted.extend(
                            g.redactions
                                .iter()
                                .map(|f| json!({"arg": name, "kind": f.kind, "hash": f.hash})),
                        );
                        removed.extend(
                            g.removed
                                .iter()
                                .map(|r| json!({"arg": name, "host": r.host, "kind": r.kind})),
                        );
                        rewritten[name.as_str()] = Value::String(g.text);
                    }
                }
            }
            if !redacted.is_empty() || !removed.is_empty() {
                output_guard =
                    json!({"channel": out.channel, "redacted": redacted, "removed_urls": removed});
                guarded_args = Some(rewritten);
            }
        }
        let args = guarded_args.as_ref().unwrap_or(args);

        let mut claimed_channel = None;
        if let Some(d) = &manifest.channel_dedup {
            let channel = args
                .get(&d.channel_arg)
                .map(Value::to_string)
                .unwrap_or_default();
            let content: Vec<String> = d
                .content_args
                .iter()
                .map(|a| args.get(a).map(Value::to_string).unwrap_or_default())
                .collect();
            let fresh = match self
                .dedup
                .claim_channel(
                    &format!("{tool}:{channel}"),
                    &content.join("\u{0}"),
                    Duration::from_secs(d.window_secs),
                )
                .await
            {
                Ok(fresh) => fresh,
                Err(e) => return self.abandon(&proposal, e.into()).await,
            };
            if !fresh {
                return self
                    .abandon(
                        &proposal,
                        GateError::DuplicateOnChannel {
                            channel,
                            window_secs: d.window_secs,
                        },
                    )
                    .await;
            }
            claimed_channel = Some((format!("{tool}:{channel}"), content.join("\u{0}")));
        }

        // Reserve and write the intent durably before anything runs.
        let reserved = manifest.max_cost.micros();
        let mut detail =
            json!({"tool": tool, "args": args, "tier": tier, "reserved_micro_usd": reserved});
        if !origins.is_empty() {
            detail["provenance"] = json!(origins);
        }
        if !carried.is_empty() {
            detail["untrusted_values"] = json!(carried);
        }
        if !output_guard.is_null() {
            detail["output_guard"] = output_guard;
        }
        let intent = who.record("tool.call", detail);
        let reservation = match self.reserve(who, reserved, false, intent, now) {
            Ok(r) => r,
            Err(denial) => {
                // Nothing is sent: the channel stays free for a call that can pay.
                if let Some((channel, content)) = claimed_channel {
                    self.dedup.release_channel(&channel, &content).await?;
                }
                return self.abandon(&proposal, denial.into()).await;
            }
        };
        if let Err(e) = reservation
            .durable
            .await
            .unwrap_or(Err(crate::error::StoreError::WriterGone))
        {
            return self.abandon(&proposal, e.into()).await;
        }

        // Secrets are decrypted only now, for a call that passed every check.
        let mut secrets = BTreeMap::new();
        for secret in &manifest.secrets {
            match self.secrets.get(secret) {
                Ok(value) => {
                    secrets.insert(secret.clone(), value.to_string());
                }
                Err(e) => {
                    let failed =
                        who.record("tool.failed", json!({"tool": tool, "error": e.to_string()}));
                    self.settle(reservation.id, 0, failed, self.clock.now());
                    return self
                        .abandon(
                            &proposal,
                            GateError::ToolFailed {
                                tool: tool.to_string(),
                                reason: e.to_string(),
                            },
                        )
                        .await;
                }
            }
        }
        let input = ToolInput {
            agent: who.agent.clone(),
            args: args.clone(),
            secrets,
            sandbox_limits: who
                .token
                .effective()
                .sandbox_limits
                .get(tool)
                .cloned()
                .unwrap_or_default(),
        };
        let outcome = run_handler(&registered, input).await;

        // A failed call is charged in full: whatever it did before failing may have cost.
        let actual = match &outcome {
            Ok(out) => out.cost.micros(),
            Err(_) => reserved,
        };
        let done = match &outcome {
            Ok(out) => who.record("tool.result", json!({"tool": tool, "result": out.value})),
            Err(e) => who.record("tool.failed", json!({"tool": tool, "error": e.to_string()})),
        };
        let charged = self.settle(reservation.id, actual, done, self.clock.now());
        if let Some(p) = &proposal {
            self.finish_proposal(p, &outcome, manifest).await?;
        }
        let output = outcome?;
        if tier == Tier::AutoPlus {
            let _ = self.notifications.send(Notification {
                kind: NotificationKind::Ran,
                agent: who.agent.clone(),
                tool: tool.to_string(),
                tier,
                args: args.clone(),
            });
        }
        Ok(CallResult {
            value: output.value,
            tier,
            charged,
        })
    }
}

impl Inner {
    /// Every secret `tool` needs must be granted by `token` (`secret:NAME`) now.
    fn check_secret_grants(
        &self,
        token: &Token,
        agent: &str,
        tool: &str,
        secrets: &[String],
        now: std::time::SystemTime,
    ) -> Result<(), GateError> {
        let revoked = self.revocations.read().unwrap_or_else(|p| p.into_inner());
        for secret in secrets {
            let grant = Request {
                agent: agent.to_string(),
                tool: format!("secret:{secret}"),
                args: Args::new(),
                time: now,
            };
            if token.authorize(&grant, &revoked).is_err() {
                return Err(GateError::SecretNotGranted {
                    tool: tool.to_string(),
                    secret: secret.clone(),
                });
            }
        }
        Ok(())
    }

    /// Authorizes a call again at the moment it runs, without a fresh holder
    /// signature (the approval path already verified one): the token's revocation,
    /// expiry, tool grant, argument constraints and secret grants, as of now.
    pub(crate) fn reauthorize(
        &self,
        token: &Token,
        agent: &str,
        tool: &str,
        args: &Value,
        secrets: &[String],
    ) -> Result<(), GateError> {
        let now = self.clock.now();
        let request = Request {
            agent: agent.to_string(),
            tool: tool.to_string(),
            args: to_capability_args(args),
            time: now,
        };
        {
            let revoked = self.revocations.read().unwrap_or_else(|p| p.into_inner());
            token.authorize(&request, &revoked)?;
        }
        self.check_secret_grants(token, agent, tool, secrets, now)
    }

    /// A proposal's call stopped before its tool ran: the proposal fails with the
    /// reason (it is not left executing), and the error goes back to the caller.
    async fn abandon<T>(
        &self,
        proposal: &Option<crate::proposals::Proposal>,
        error: GateError,
    ) -> Result<T, GateError> {
        if let Some(p) = proposal {
            let reason = format!("not run: {error}");
            let _ = self
                .proposals
                .transition(
                    &p.id,
                    &[crate::proposals::ProposalState::Executing],
                    "failed",
                    "proposal.failed",
                    |p| {
                        p.state = crate::proposals::ProposalState::Failed;
                        p.error = Some(reason);
                    },
                )
                .await;
        }
        Err(error)
    }
}

/// A reservation made and its intent queued for a durable write.
pub(crate) struct Reservation {
    pub id: u64,
    pub durable: tokio::sync::oneshot::Receiver<Result<(), crate::error::StoreError>>,
}

impl Inner {
    /// Reserves `amount` for `who` and queues `intent` with it, durably. The ledger lock
    /// is held while queuing, so the log's order is the order of application.
    pub(crate) fn reserve(
        &self,
        who: &Identity,
        amount: u64,
        premium: bool,
        intent: AuditRecord,
        now: std::time::SystemTime,
    ) -> Result<Reservation, crate::error::BudgetDenial> {
        self.reserve_for(
            &who.account,
            |reason| who.record("budget.denied", json!({"reason": reason})),
            amount,
            premium,
            intent,
            now,
        )
    }

    /// [`Inner::reserve`] for an account, with `denied` building the denial's record.
    pub(crate) fn reserve_for(
        &self,
        account: &str,
        denied: impl FnOnce(String) -> AuditRecord,
        amount: u64,
        premium: bool,
        intent: AuditRecord,
        now: std::time::SystemTime,
    ) -> Result<Reservation, crate::error::BudgetDenial> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.next_id += 1;
        let id = ledger.next_id;
        let cmd = LedgerCommand::Reserve {
            id,
            account: account.to_string(),
            amount,
            premium,
            day: day_of(now),
        };
        match ledger.state.apply(&cmd) {
            LedgerOutcome::Reserved { .. } => {}
            LedgerOutcome::Denied(denial) => {
                drop(ledger);
                let record = denied(denial.to_string());
                // Best effort: the denial itself has no effect to protect.
                self.journal.defer(Batch::audit(record), now);
                return Err(denial);
            }
            other => {
                return Err(crate::error::BudgetDenial::UnknownAccount(format!(
                    "{account} (unexpected ledger outcome {other:?})"
                )));
            }
        }
        let durable =
            self.journal
                .submit(Batch::audit(intent.with_ledger(cmd)), Mode::Durable, now);
        Ok(Reservation { id, durable })
    }

    /// Commits the actual cost of a reservation and records `done`, deferred: the
    /// reservation's durable intent already covers the effect, and the next durable
    /// commit persists this.
    pub(crate) fn settle(
        &self,
        id: u64,
        actual: u64,
        done: AuditRecord,
        now: std::time::SystemTime,
    ) -> u64 {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let cmd = LedgerCommand::Commit { id, actual };
        let charged = match ledger.state.apply(&cmd) {
            LedgerOutcome::Committed { charged } => charged,
            _ => 0,
        };
        self.journal.defer(Batch::audit(done.with_ledger(cmd)), now);
        charged
    }
}

pub(crate) fn day_of(t: std::time::SystemTime) -> u64 {
    crate::clock::unix_ms(t) / 86_400_000
}

/// Runs a tool's handler in its own task with the manifest's timeout: a panic or a
/// hang becomes an error, never the caller's death.
pub(crate) async fn run_handler(
    registered: &crate::tools::Registered,
    input: ToolInput,
) -> Result<crate::tools::ToolOutput, GateError> {
    let manifest = &registered.tool.manifest;
    let tool = manifest.name.clone();
    let handler = registered.tool.handler.clone();
    let timeout = Duration::from_millis(manifest.timeout_ms);
    let run = tokio::spawn(async move { handler(input).await });
    let abort = run.abort_handle();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(Ok(output))) => Ok(output),
        Ok(Ok(Err(e))) => Err(GateError::ToolFailed {
            tool,
            reason: e.to_string(),
        }),
        Ok(Err(join)) if join.is_panic() => Err(GateError::ToolPanicked(tool)),
        Ok(Err(join)) => Err(GateError::ToolFailed {
            tool,
            reason: join.to_string(),
        }),
        Err(_) => {
            abort.abort();
            Err(GateError::ToolTimedOut {
                tool,
                timeout_ms: manifest.timeout_ms,
            })
        }
    }
}
