//! Running approved proposals: the action a step waits for and the detached
//! execution no step waits for, both re-authorized with the proposal's own token,
//! and their outcomes.

use crate::audit::AuditKind;
use std::time::Duration;

use bulwark_capabilities::{Tier, Token};
use serde_json::json;

use crate::tools::CallCredentials;

use super::*;
use crate::error::GateError;
use crate::error::StoreError;
use crate::gate::{Execution, RunAs};
use crate::runtime::Inner;
use crate::tools::ToolManifest;

impl Inner {
    /// Records the outcome of a proposal's tool run.
    pub(crate) async fn finish_proposal(
        &self,
        p: &Proposal,
        outcome: &Result<crate::tools::ToolOutput, GateError>,
        manifest: &ToolManifest,
    ) -> Result<(), GateError> {
        let now_ms = self.proposals.now_ms();
        let window = manifest
            .rollback_window_secs
            .map_or(DEFAULT_ROLLBACK_WINDOW, Duration::from_secs);
        let (result, error) = match outcome {
            Ok(out) => (Some(out.value.clone()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let tier = p.tier;
        self.proposals
            .transition(
                &p.id,
                &[ProposalState::Executing],
                "finished",
                if error.is_none() {
                    AuditKind::ProposalCommitted
                } else {
                    AuditKind::ProposalFailed
                },
                |p| {
                    p.state = if error.is_none() {
                        ProposalState::Committed
                    } else {
                        ProposalState::Failed
                    };
                    p.result = result;
                    p.error = error;
                    if tier == Tier::Propose && p.state == ProposalState::Committed {
                        p.rollback_until_ms = Some(now_ms + window.as_millis() as u64);
                    }
                },
            )
            .await?;
        Ok(())
    }

    /// Runs `registered` with a proposal's arguments outside any agent step, as the
    /// proposing agent and charged to the proposal's account, through the one
    /// execution path ([`Inner::execute`]). The one path for actions the runtime runs
    /// on a proposal's behalf — an approved action, a compensation. An error before
    /// the tool ran is the outer `Err`; the tool's own outcome is the inner one.
    pub(super) async fn run_on_behalf(
        &self,
        p: &Proposal,
        registered: &crate::tools::Registered,
        run_by: &str,
    ) -> Result<Result<crate::tools::ToolOutput, GateError>, GateError> {
        let tool = registered.tool.manifest.name.as_str();
        let intent = json!({"tool": tool, "args": p.args, "tier": p.tier, "proposal": p.id,
                            "reserved_micro_usd": registered.tool.manifest.max_cost.micros(),
                            "run_by": run_by});
        let execution = Execution {
            registered,
            args: &p.args,
            run_as: RunAs {
                agent: &p.agent,
                token_id: p.token_id.clone(),
                chain: &p.chain,
                account: &p.account,
            },
            intent,
            proposal: Some(&p.id),
            sandbox_limits: self.token_sandbox_limits(&p.agent, tool),
            // A forwarding tool signs as the agent: only while it runs here.
            credentials: registered
                .tool
                .forwards
                .then(|| self.credentials_of_agent(&p.agent))
                .flatten()
                .map(|c| CallCredentials {
                    approval: p.approval.clone(),
                    ..c
                }),
        };
        Ok(self.execute(execution).await?.outcome)
    }

    /// Runs an approved proposal no step waits for: once, charged to its account,
    /// with its intent durable before the tool runs.
    pub(crate) async fn execute_detached(&self, id: &str) -> Result<(), GateError> {
        let tool = self
            .proposals
            .get(id)?
            .ok_or_else(|| ProposalError::NotFound(id.to_string()))?
            .tool;
        // At start the runtime recovers before the program has registered its tools:
        // give it a while to do so.
        let mut registered = self.tools.get(&tool);
        for _ in 0..TOOL_WAIT_STEPS {
            if registered.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            registered = self.tools.get(&tool);
        }
        let fail = |reason: String| self.proposals.fail(id, &[ProposalState::Approved], reason);
        let Some(registered) = registered else {
            fail(format!(
                "not run: no tool `{tool}` was registered within a minute"
            ))
            .await?;
            return Err(GateError::UnknownTool(tool));
        };
        // The approval does not outlive the token: revocation, expiry and grants are
        // checked again now, with the proposal's own token.
        let current = self
            .proposals
            .get(id)?
            .ok_or_else(|| ProposalError::NotFound(id.to_string()))?;
        let manifest = registered.tool.manifest.clone();
        if let Err(e) = self.reauthorize_proposal(&current, &manifest.secrets) {
            fail(format!("not run: {e}")).await?;
            return Err(e);
        }
        let p = self
            .proposals
            .transition(
                id,
                &[ProposalState::Approved],
                "executed",
                AuditKind::ProposalExecuting,
                |p| p.state = ProposalState::Executing,
            )
            .await?;
        let outcome = match self.run_on_behalf(&p, &registered, "runtime").await {
            Ok(outcome) => outcome,
            Err(e @ GateError::Budget(_)) => {
                self.finish_proposal(
                    &p,
                    &Err(GateError::ToolFailed {
                        tool: p.tool.clone(),
                        reason: e.to_string(),
                    }),
                    &manifest,
                )
                .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.finish_proposal(&p, &outcome, &manifest).await?;
        outcome.map(|_| ())
    }

    /// The proposal's token, re-verified against the root and re-authorized for the
    /// exact call now (revocation, expiry, constraints, secret grants). A proposal
    /// without a recorded token is never run.
    pub(super) fn reauthorize_proposal(
        &self,
        p: &Proposal,
        secrets: &[String],
    ) -> Result<(), GateError> {
        let text = self.proposals.token(&p.id)?.ok_or_else(|| {
            GateError::Denied(bulwark_capabilities::Denial::Evaluation(
                "the proposal has no recorded token to re-authorize with".into(),
            ))
        })?;
        let token = Token::from_base64(&text, &self.root).map_err(|e| {
            GateError::Denied(bulwark_capabilities::Denial::Evaluation(format!(
                "the proposal's token no longer verifies: {e}"
            )))
        })?;
        self.reauthorize(&token, &p.agent, &p.tool, &p.args, secrets)
    }

    /// Withdraws every pending or approved proposal whose token is revoked: no later
    /// decision runs it, and a step waiting on it is told.
    pub(crate) async fn withdraw_revoked_proposals(&self) -> Result<(), StoreError> {
        for p in self.proposals.list()? {
            if !matches!(p.state, ProposalState::Pending | ProposalState::Approved) {
                continue;
            }
            let Some(text) = self.proposals.token(&p.id)? else {
                continue;
            };
            let revoked =
                Token::from_base64(&text, &self.root).map_or(true, |t| self.is_revoked(&t));
            if !revoked {
                continue;
            }
            let why = "withdrawn: the proposing agent's token was revoked".to_string();
            match self.proposals.withdraw(&p.id, why.clone(), why).await {
                Ok(_) | Err(ProposalError::WrongState { .. } | ProposalError::NotFound(_)) => {}
                Err(ProposalError::Store(e)) => return Err(e),
                Err(e) => return Err(StoreError::from_display(e)),
            }
        }
        Ok(())
    }
}
