//! Operators' decisions: approvals, rejections, cancellations (with compensation),
//! one at a time or in batches.

use crate::audit::AuditKind;
use std::sync::Arc;

use bulwark_capabilities::{Tier, Token};
use serde_json::json;

use super::*;
use crate::audit::AuditRecord;
use crate::error::GateError;
use crate::journal::{Batch, Mode};
use crate::runtime::Inner;
use bulwark_capabilities::{Approval, Decision, DecisionKind};

impl Inner {
    pub(super) fn path(&self) -> Result<&ApprovalPath, ProposalError> {
        self.approval.as_ref().ok_or(ProposalError::NoApprovalPath)
    }

    pub(crate) async fn approve(
        self: &Arc<Self>,
        id: &str,
        approval: &Approval,
    ) -> Result<Proposal, ProposalError> {
        let p = self
            .proposals
            .get(id)?
            .ok_or_else(|| ProposalError::NotFound(id.to_string()))?;
        let operator = self.verify_approval(&p, approval)?;
        let now_ms = self.proposals.now_ms();
        if p.expires_ms.is_some_and(|e| e <= now_ms) && p.state == ProposalState::Pending {
            self.expire(id).await?;
        }
        let record = DecisionRecord {
            kind: "approve".into(),
            by: operator.to_hex(),
            reason: String::new(),
            at_ms: now_ms,
        };
        let p = self
            .proposals
            .transition(
                id,
                &[ProposalState::Pending],
                "approved",
                AuditKind::ProposalApproved,
                |p| {
                    p.state = ProposalState::Approved;
                    p.decisions.push(record);
                    p.approval = Some(approval.clone());
                },
            )
            .await?;
        if !self.proposals.has_waiter(id) {
            // No step waits any more (a restart, a stopped agent): the runtime runs it.
            let inner = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                if let Err(e) = inner.execute_detached(&id).await {
                    tracing::warn!(proposal = %id, error = %e, "approved proposal failed to run");
                }
            });
        }
        Ok(p)
    }

    /// Checks an operator's approval of exactly `p`'s id and arguments.
    pub(super) fn verify_approval(
        &self,
        p: &Proposal,
        approval: &Approval,
    ) -> Result<bulwark_capabilities::PublicKey, ProposalError> {
        let path = self.path()?;
        approval
            .verify(
                &p.id,
                &Proposal::approval_args(&p.args),
                &path.config.operators,
                self.clock.now(),
            )
            .map_err(|source| ProposalError::Signature {
                id: p.id.clone(),
                source,
            })
    }

    /// Checks an operator's signed decision of `kind` about proposal `id`.
    pub(super) fn verify_decision(
        &self,
        kind: DecisionKind,
        id: &str,
        decision: &Decision,
    ) -> Result<bulwark_capabilities::PublicKey, ProposalError> {
        let path = self.path()?;
        decision
            .verify(kind, id, &path.config.operators, self.clock.now())
            .map_err(|source| ProposalError::Signature {
                id: id.to_string(),
                source,
            })
    }

    pub(crate) async fn reject(
        &self,
        id: &str,
        decision: &Decision,
    ) -> Result<Proposal, ProposalError> {
        let operator = self.verify_decision(DecisionKind::Reject, id, decision)?;
        let now_ms = self.proposals.now_ms();
        self.proposals
            .decide(
                id,
                &[ProposalState::Pending],
                ProposalState::Rejected,
                ("rejected", AuditKind::ProposalRejected),
                DecisionRecord {
                    kind: "reject".into(),
                    by: operator.to_hex(),
                    reason: decision.reason.clone(),
                    at_ms: now_ms,
                },
            )
            .await
    }

    pub(crate) async fn cancel(
        &self,
        id: &str,
        decision: &Decision,
    ) -> Result<Proposal, ProposalError> {
        let operator = self.verify_decision(DecisionKind::Cancel, id, decision)?;
        let p = self
            .proposals
            .get(id)?
            .ok_or_else(|| ProposalError::NotFound(id.to_string()))?;
        if p.state != ProposalState::Committed || p.tier != Tier::Propose {
            return Err(ProposalError::WrongState {
                id: id.to_string(),
                state: p.state,
                action: "cancelled (only a committed PROPOSE action can be)".into(),
            });
        }
        let now_ms = self.proposals.now_ms();
        let until = p.rollback_until_ms.unwrap_or(0);
        if now_ms >= until {
            return Err(ProposalError::WindowClosed {
                id: id.to_string(),
                closed_at: rfc3339(until),
            });
        }
        let (compensation, comp) = self.compensation_of(&p)?;
        let failed = |reason: String| ProposalError::CompensationFailed {
            id: id.to_string(),
            tool: compensation.clone(),
            reason,
        };
        // The action being undone must come from a token this runtime issued; the undo
        // runs as that agent, its intent and budget reservation durable first. A
        // revoked or expired token does not stop it: revoking an agent must never
        // prevent undoing what it did.
        let text = self
            .proposals
            .token(id)?
            .ok_or_else(|| failed("the proposal has no recorded token".into()))?;
        Token::from_base64(&text, &self.root)
            .map_err(|e| failed(format!("the proposal's token does not verify: {e}")))?;
        let out = match self.run_on_behalf(&p, &comp, "compensation").await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(GateError::Store(e)) => return Err(ProposalError::Store(e)),
            Err(e) => return Err(failed(e.to_string())),
        };
        self.proposals
            .decide(
                id,
                &[ProposalState::Committed],
                ProposalState::RolledBack,
                ("cancelled", AuditKind::ProposalRolledBack),
                DecisionRecord {
                    kind: "cancel".into(),
                    by: operator.to_hex(),
                    reason: format!(
                        "{} (compensation `{compensation}` returned {})",
                        decision.reason, out.value
                    ),
                    at_ms: now_ms,
                },
            )
            .await
    }

    /// The tool that undoes `p`'s action, registered and not at tier block.
    fn compensation_of(
        &self,
        p: &Proposal,
    ) -> Result<(String, Arc<crate::tools::Registered>), ProposalError> {
        let failed = |tool: &str, reason: String| ProposalError::CompensationFailed {
            id: p.id.clone(),
            tool: tool.to_string(),
            reason,
        };
        let compensation = self
            .tools
            .get(&p.tool)
            .and_then(|r| r.tool.manifest.compensation.clone())
            .ok_or_else(|| failed("(none)", format!("`{}` has no compensation", p.tool)))?;
        let comp = self.tools.get(&compensation).ok_or_else(|| {
            failed(
                &compensation,
                "the compensating tool is not registered".into(),
            )
        })?;
        if comp.tool.manifest.tier == Tier::Block {
            return Err(failed(
                &compensation,
                "the compensating tool is at tier block".into(),
            ));
        }
        Ok((compensation, comp))
    }

    /// Applies one signed approval, rejection or cancellation.
    pub(crate) async fn decide(
        self: &Arc<Self>,
        id: &str,
        decision: &SignedDecision,
    ) -> Result<Proposal, ProposalError> {
        match decision {
            SignedDecision::Approve(a) => self.approve(id, a).await,
            SignedDecision::Reject(d) => self.reject(id, d).await,
            SignedDecision::Cancel(d) => self.cancel(id, d).await,
        }
    }

    /// One operator decision over several pending proposals of one group: every
    /// approval or rejection is still signed per proposal (over its id and, for an
    /// approval, the hash of its exact arguments), all by the same operator, all of one
    /// kind. The whole batch is verified before anything is applied; then each
    /// proposal is decided and audited as usual, under one `proposal.batch` entry.
    pub(crate) async fn decide_batch(
        self: &Arc<Self>,
        group: &str,
        decisions: &[SignedDecision],
    ) -> Result<BatchOutcome, ProposalError> {
        let refuse = |reason: String| ProposalError::Batch {
            group: group.to_string(),
            reason,
        };
        if decisions.is_empty() || decisions.len() > MAX_BATCH {
            return Err(refuse(format!(
                "a batch holds 1 to {MAX_BATCH} decisions, not {}",
                decisions.len()
            )));
        }
        self.path()?;
        let approve = matches!(decisions[0], SignedDecision::Approve(_));
        let (operator, root_agent, ids) = self.verify_batch(group, decisions, approve)?;
        let record = AuditRecord::new(
            AuditKind::ProposalBatch,
            &root_agent,
            json!({"group": group, "by": operator,
                   "decision": if approve { "approve" } else { "reject" }, "proposals": ids}),
        );
        self.journal
            .write(Batch::audit(record), Mode::Durable, self.clock.now())
            .await?;
        let mut out = BatchOutcome {
            group: group.to_string(),
            operator,
            decided: Vec::new(),
            skipped: Vec::new(),
        };
        for d in decisions {
            match self.decide(d.proposal_id(), d).await {
                Ok(p) => out.decided.push(p),
                Err(e @ ProposalError::WrongState { .. }) => {
                    out.skipped
                        .push((d.proposal_id().to_string(), e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Verifies a whole batch before anything is applied: every proposal pending, of
    /// `group`, batchable and named once; every decision of one kind, signed by one
    /// operator. Returns the operator, the group's root agent and the proposals.
    fn verify_batch(
        &self,
        group: &str,
        decisions: &[SignedDecision],
        approve: bool,
    ) -> Result<(String, String, Vec<String>), ProposalError> {
        let refuse = |reason: String| ProposalError::Batch {
            group: group.to_string(),
            reason,
        };
        let mut operator = None;
        let mut root_agent = String::new();
        let mut ids = Vec::with_capacity(decisions.len());
        for d in decisions {
            let id = d.proposal_id();
            if ids.iter().any(|i: &String| i == id) {
                return Err(refuse(format!("proposal `{id}` appears twice")));
            }
            let p = self
                .proposals
                .get(id)?
                .ok_or_else(|| ProposalError::NotFound(id.to_string()))?;
            if p.group != group {
                return Err(refuse(format!("proposal `{id}` is in group `{}`", p.group)));
            }
            root_agent = p.chain.first().unwrap_or(&p.agent).clone();
            if !p.batchable {
                return Err(refuse(format!(
                    "tool `{}` does not allow batch decisions; decide `{id}` on its own",
                    p.tool
                )));
            }
            if p.state != ProposalState::Pending {
                return Err(ProposalError::WrongState {
                    id: id.to_string(),
                    state: p.state,
                    action: "decided in a batch".into(),
                });
            }
            let key = match (d, approve) {
                (SignedDecision::Approve(a), true) => self.verify_approval(&p, a)?,
                (SignedDecision::Reject(r), false) => {
                    self.verify_decision(DecisionKind::Reject, id, r)?
                }
                _ => {
                    return Err(refuse(
                        "a batch is all approvals or all rejections".to_string(),
                    ));
                }
            };
            match &operator {
                None => operator = Some(key),
                Some(o) if *o == key => {}
                Some(_) => return Err(refuse("every decision must be by one operator".into())),
            }
            ids.push(id.to_string());
        }
        let operator = operator.map(|k| k.to_hex()).unwrap_or_default();
        Ok((operator, root_agent, ids))
    }
}
