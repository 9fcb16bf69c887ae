//! The one way a tool runs: the intent and its budget reservation durable first,
//! secrets decrypted, the tool run, the actual cost settled and the result recorded.
//! The gate and the runtime's own execution of approved proposals (and their
//! compensations) both go through [`Inner::execute`], so they cannot drift apart.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::Identity;
use crate::audit::{AuditKind, AuditRecord};
use crate::error::{GateError, StoreError};
use crate::runtime::Inner;
use crate::tools::{CallCredentials, Registered, ToolInput, ToolOutput};

/// Whom a tool runs as and who pays: the records of the run carry its agent, token
/// and chain.
pub(crate) struct RunAs<'a> {
    /// The agent.
    pub agent: &'a str,
    /// The id of its token.
    pub token_id: String,
    /// Its delegation chain, root first.
    pub chain: &'a [String],
    /// The account that pays.
    pub account: &'a str,
}

impl RunAs<'_> {
    /// A record of `kind` about this run's agent.
    pub fn record(&self, kind: AuditKind, detail: Value) -> AuditRecord {
        AuditRecord {
            kind: kind.as_str().to_string(),
            agent: self.agent.to_string(),
            token_id: self.token_id.clone(),
            chain: self.chain.to_vec(),
            detail,
            ledger: None,
        }
    }
}

/// One tool run.
pub(crate) struct Execution<'a> {
    /// The tool.
    pub registered: &'a Registered,
    /// The arguments, as the tool receives them.
    pub args: &'a Value,
    /// As whom, charged to which account.
    pub run_as: RunAs<'a>,
    /// The detail of the intent (`tool.call`) record.
    pub intent: Value,
    /// The proposal the run serves, named in its result records.
    pub proposal: Option<&'a str>,
    /// The token's limits for a sandboxed tool.
    pub sandbox_limits: BTreeMap<String, u64>,
    /// What a forwarding tool sends on (none for the others).
    pub credentials: Option<CallCredentials>,
}

impl<'a> Execution<'a> {
    /// A run by `who`, charged to its own account.
    pub fn new(
        registered: &'a Registered,
        who: &'a Identity,
        args: &'a Value,
        intent: Value,
    ) -> Self {
        let tool = registered.tool.manifest.name.as_str();
        Execution {
            registered,
            args,
            run_as: RunAs {
                agent: &who.agent,
                token_id: who.token.id(),
                chain: &who.chain,
                account: &who.account,
            },
            intent,
            proposal: None,
            sandbox_limits: who
                .token
                .effective()
                .sandbox_limits
                .get(tool)
                .cloned()
                .unwrap_or_default(),
            credentials: registered.tool.forwards.then(|| CallCredentials {
                token: who.token.clone(),
                key: who.key.clone(),
                approval: None,
            }),
        }
    }

    /// Sets the approval the run serves, for a forwarding tool to carry.
    pub fn approved_by(mut self, approval: Option<&bulwark_capabilities::Approval>) -> Self {
        if let Some(c) = &mut self.credentials {
            c.approval = approval.cloned();
        }
        self
    }
}

/// What a run did.
pub(crate) struct Executed {
    /// The tool's outcome (an unreadable secret fails it before it runs).
    pub outcome: Result<ToolOutput, GateError>,
    /// Whether the tool ran at all.
    pub ran: bool,
    /// What was charged, micro-dollars.
    pub charged: u64,
}

impl Inner {
    /// Runs `e`: the budget reserved with its intent durable, secrets decrypted (one
    /// that cannot be fails the run before the tool starts, and nothing is charged),
    /// the tool run, the actual cost settled (a failed run in full: it may have cost
    /// before failing) and its result recorded. An error before the tool could start
    /// (the budget, the store) is the outer `Err`.
    pub(crate) async fn execute(&self, e: Execution<'_>) -> Result<Executed, GateError> {
        let manifest = &e.registered.tool.manifest;
        let tool = manifest.name.as_str();
        let reserved = manifest.max_cost.micros();
        let intent = e.run_as.record(AuditKind::ToolCall, e.intent.clone());
        let now = self.clock.now();
        let reservation = match self
            .ledger
            .reserve(e.run_as.account, reserved, false, intent, now)
        {
            Ok(r) => r,
            Err(denial) => {
                // Best effort: the denial itself has no effect to protect.
                let reason = denial.to_string();
                self.audit_later(
                    e.run_as
                        .record(AuditKind::BudgetDenied, json!({"reason": reason})),
                );
                return Err(denial.into());
            }
        };
        reservation
            .durable
            .await
            .unwrap_or(Err(StoreError::WriterGone))?;
        let (outcome, ran) = match self.decrypt_secrets(&manifest.secrets) {
            Ok(secrets) => {
                let input = ToolInput {
                    agent: e.run_as.agent.to_string(),
                    args: e.args.clone(),
                    secrets,
                    sandbox_limits: e.sandbox_limits.clone(),
                    credentials: e.credentials.clone(),
                };
                (run_handler(e.registered, input).await, true)
            }
            Err(reason) => (
                Err(GateError::ToolFailed {
                    tool: tool.to_string(),
                    reason,
                }),
                false,
            ),
        };
        let actual = match &outcome {
            Ok(out) => out.cost.micros(),
            Err(_) if !ran => 0,
            Err(_) => reserved,
        };
        let mut detail = match &outcome {
            Ok(out) => json!({"tool": tool, "result": out.value}),
            Err(err) => json!({"tool": tool, "error": err.to_string()}),
        };
        if let Some(id) = e.proposal {
            detail["proposal"] = json!(id);
        }
        let kind = if outcome.is_ok() {
            AuditKind::ToolResult
        } else {
            AuditKind::ToolFailed
        };
        let done = e.run_as.record(kind, detail);
        let charged = self
            .ledger
            .settle(reservation.id, actual, done, self.clock.now());
        Ok(Executed {
            outcome,
            ran,
            charged,
        })
    }

    /// The secrets a tool needs, decrypted; the first that cannot be is the error.
    pub(super) fn decrypt_secrets(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, String> {
        let mut secrets = BTreeMap::new();
        for name in names {
            let value = self.secrets.get(name).map_err(|e| e.to_string())?;
            secrets.insert(name.clone(), value.to_string());
        }
        Ok(secrets)
    }
}

/// Runs a tool's handler in its own task with the manifest's timeout: a panic or a
/// hang becomes an error, never the caller's death.
pub(crate) async fn run_handler(
    registered: &Registered,
    input: ToolInput,
) -> Result<ToolOutput, GateError> {
    let manifest = &registered.tool.manifest;
    let tool = manifest.name.clone();
    let handler = registered.tool.handler.clone();
    let timeout = Duration::from_millis(manifest.timeout_ms);
    // The tool runs inside the call's span (so a forwarded call carries its trace).
    let run = tokio::spawn(tracing::Instrument::instrument(
        async move { handler(input).await },
        tracing::Span::current(),
    ));
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
