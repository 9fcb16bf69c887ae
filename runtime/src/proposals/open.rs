//! Opening a proposal: the per-tree admission, the watchdog's verdict, the stored
//! proposal, and the wait of a CONFIRM step for its decision.

use crate::audit::AuditKind;
use crate::sync::{LockExt, RwLockExt};
use std::collections::BTreeMap;
use std::time::Duration;

use bulwark_capabilities::Tier;
use serde_json::Value;

use super::*;
use crate::agent::RunControl;
use crate::clock::unix_ms;
use crate::error::GateError;
use crate::error::StoreError;
use crate::gate::CallContext;
use crate::gate::Identity;
use crate::guard::Origin;
use crate::runtime::Inner;
use crate::watchdog::WatchdogVerdict;
use crate::watchdog::{ProposalFacts, WatchdogMsg};

/// A call that needs a proposal, as the gate hands it over.
struct ProposedCall<'a> {
    ctx: CallContext<'a>,
    tool: &'a str,
    args: &'a Value,
    tier: Tier,
    origins: &'a BTreeMap<String, Origin>,
}

/// The watchdog's verdict on the proposal; no answer is a rejection (fail closed: no
/// watchdog, no risky action).
async fn ask_watchdog(
    path: &ApprovalPath,
    who: &Identity,
    tree: String,
    tool: &str,
    args: &Value,
    now_ms: u64,
) -> WatchdogVerdict {
    let facts = ProposalFacts {
        agent: who.agent.clone(),
        root: tree,
        tool: tool.to_string(),
        args: args
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        hour: ((now_ms / 3_600_000) % 24) as u8,
        at_ms: now_ms,
    };
    match path
        .watchdog
        .call(|reply| WatchdogMsg::Validate { facts, reply }, None)
        .await
    {
        Ok(ractor::rpc::CallResult::Success(v)) => v,
        _ => WatchdogVerdict::Reject {
            rule: "the watchdog did not answer".into(),
        },
    }
}

impl Inner {
    /// Creates the proposal for a PROPOSE or CONFIRM call, has the watchdog validate
    /// it, and — for CONFIRM — waits for a person. Returns the proposal, now executing.
    pub(crate) async fn open_proposal(
        &self,
        ctx: CallContext<'_>,
        tool: &str,
        args: &Value,
        tier: Tier,
        origins: &BTreeMap<String, Origin>,
    ) -> Result<Proposal, GateError> {
        let Some(path) = &self.approval else {
            return Err(GateError::ApprovalPathNotConfigured {
                tool: tool.to_string(),
                tier,
            });
        };
        let who = ctx.who;
        let now_ms = unix_ms(self.clock.now());
        let tree = format!(
            "{}/{}",
            who.token.tenant(),
            who.chain.first().unwrap_or(&who.agent)
        );
        self.admit_proposal(&tree, tool, now_ms)?;
        let verdict = ask_watchdog(path, who, tree, tool, args, now_ms).await;
        let call = ProposedCall {
            ctx,
            tool,
            args,
            tier,
            origins,
        };
        let p = self.new_proposal(&call, path, verdict.clone(), now_ms);
        let token = who
            .token
            .to_base64()
            .map_err(|e| GateError::Store(StoreError::from_display(e)))?;
        if let Err(existing) = self.proposals.create(&p, token).await? {
            return Err(GateError::ProposalOpen {
                tool: tool.to_string(),
                proposal: existing,
            });
        }
        if let WatchdogVerdict::Reject { rule } = verdict {
            return Err(GateError::WatchdogRejected {
                tool: tool.to_string(),
                proposal: p.id,
                rule,
            });
        }
        if tier != Tier::Confirm {
            return Ok(p);
        }
        self.ask_for_confirmation(path, &call, &p);
        self.await_decision(&p, ctx.control).await
    }

    /// The proposal as created: fixed from here on. The watchdog's rejection is its
    /// first decision.
    fn new_proposal(
        &self,
        call: &ProposedCall<'_>,
        path: &ApprovalPath,
        verdict: WatchdogVerdict,
        now_ms: u64,
    ) -> Proposal {
        let (who, tool, args, tier) = (call.ctx.who, call.tool, call.args, call.tier);
        let scope = call.ctx.control.and_then(|c| c.scope.as_ref());
        let root_agent = scope.map_or_else(
            || who.chain.first().unwrap_or(&who.agent).clone(),
            |s| s.root_agent.clone(),
        );
        let task = scope.map(|s| s.root_task.clone());
        let mut decisions = Vec::new();
        if let WatchdogVerdict::Reject { rule } = &verdict {
            decisions.push(DecisionRecord {
                kind: "watchdog".into(),
                by: "watchdog".into(),
                reason: rule.clone(),
                at_ms: now_ms,
            });
        }
        Proposal {
            v: PROPOSAL_FORMAT,
            id: new_id(),
            agent: who.agent.clone(),
            account: who.account.clone(),
            token_id: who.token.id(),
            chain: who.chain.clone(),
            tool: tool.to_string(),
            args: args.clone(),
            args_hash: Proposal::hash_args(args),
            tier,
            provenance: call.origins.clone(),
            state: match (&verdict, tier) {
                (WatchdogVerdict::Reject { .. }, _) => ProposalState::Rejected,
                (WatchdogVerdict::Pass, Tier::Confirm) => ProposalState::Pending,
                _ => ProposalState::Executing,
            },
            verdict,
            created_ms: now_ms,
            expires_ms: (tier == Tier::Confirm)
                .then(|| now_ms + path.config.confirm_expiry.as_millis() as u64),
            rollback_until_ms: None,
            decisions,
            result: None,
            error: None,
            group: group_id(&root_agent, task.as_deref(), tool),
            task,
            batchable: self
                .tools
                .get(tool)
                .is_some_and(|t| t.tool.manifest().batch_approval),
            approval: None,
        }
    }

    /// Tells subscribers and the webhook that a CONFIRM proposal waits for a person.
    fn ask_for_confirmation(&self, path: &ApprovalPath, call: &ProposedCall<'_>, p: &Proposal) {
        let _ = self.notifications.send(crate::gate::Notification {
            kind: crate::gate::NotificationKind::NeedsConfirmation {
                proposal: p.id.clone(),
            },
            agent: call.ctx.who.agent.clone(),
            tool: call.tool.to_string(),
            tier: call.tier,
            args: call.args.clone(),
        });
        if let Some(hook) = &path.config.webhook {
            self.announce(hook.clone(), p);
        }
    }

    /// The store's bounds: at most [`MAX_OPEN_PROPOSALS`] undecided or running
    /// proposals in all, and at most [`MAX_PROPOSALS_PER_TREE_PER_HOUR`] new ones per
    /// agent tree (whatever the watchdog's rules). Beyond either, the call is refused
    /// and nothing is stored.
    pub(super) fn admit_proposal(
        &self,
        tree: &str,
        tool: &str,
        now_ms: u64,
    ) -> Result<(), GateError> {
        let (max_open, max_per_hour) = self
            .approval
            .as_ref()
            .map_or((MAX_OPEN_PROPOSALS, MAX_PROPOSALS_PER_TREE_PER_HOUR), |p| {
                (p.config.max_open, p.config.max_per_tree_per_hour)
            });
        let refuse = |reason: String| GateError::TooManyProposals {
            tool: tool.to_string(),
            reason,
        };
        let open = self.journal.kv_scan(crate::layout::PROPOSAL_OPEN)?.len();
        if open >= max_open {
            return Err(refuse(format!(
                "{open} proposals are open, the most the store holds; decide some first"
            )));
        }
        let mut rate = self.proposal_rate.lock_or_recover();
        if !rate.admit(tree, now_ms, max_per_hour) {
            return Err(refuse(format!(
                "the agent tree {tree} made {max_per_hour} proposals in the last hour, the most it may"
            )));
        }
        Ok(())
    }

    /// Suspends the calling step until the proposal is decided, expires, or the
    /// runtime shuts down.
    pub(super) async fn await_decision(
        &self,
        p: &Proposal,
        control: Option<&RunControl>,
    ) -> Result<Proposal, GateError> {
        if let Some(c) = control {
            *c.waiting.lock_or_recover() = Some(p.id.clone());
        }
        let result = self.await_decision_inner(p, control).await;
        if let Some(c) = control {
            *c.waiting.lock_or_recover() = None;
        }
        result
    }

    pub(super) async fn await_decision_inner(
        &self,
        p: &Proposal,
        control: Option<&RunControl>,
    ) -> Result<Proposal, GateError> {
        let mut rx = self.proposals.watch(&p.id, p.state);
        let mut closing = self.closing.subscribe();
        let cancelled = async {
            match control {
                Some(c) => c.cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled);
        let left_ms = p
            .expires_ms
            .unwrap_or(0)
            .saturating_sub(self.proposals.now_ms());
        let deadline = tokio::time::sleep(Duration::from_millis(left_ms));
        tokio::pin!(deadline);
        loop {
            let state = *rx.borrow_and_update();
            if let Some(decided) = self.decided(p, state).await {
                return decided;
            }
            tokio::select! {
                // Shutdown first: a proposal waiting when the runtime stops stays pending.
                biased;
                _ = closing.changed() => {
                    return Err(GateError::ShuttingDown { proposal: p.id.clone() });
                }
                () = &mut cancelled => {
                    let reason = control.and_then(crate::agent::RunControl::cancelled).unwrap_or_default();
                    return Err(self.withdraw(p, reason).await);
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The store dropped the channel: the proposal reached a final state.
                        rx = self.proposals.watch(&p.id, self.proposals.get(&p.id)?.map_or(ProposalState::Failed, |p| p.state));
                    }
                }
                _ = &mut deadline => {
                    self.expire(&p.id).await?;
                }
            }
        }
    }

    /// What a waiting step gets once its proposal reached `state`: the proposal,
    /// now executing, once approved; the reason it will not run once rejected,
    /// expired or withdrawn; `None` while it is still undecided.
    async fn decided(
        &self,
        p: &Proposal,
        state: ProposalState,
    ) -> Option<Result<Proposal, GateError>> {
        let (tool, proposal) = (p.tool.clone(), p.id.clone());
        let last_reason =
            || -> Result<Option<Proposal>, GateError> { Ok(self.proposals.get(&p.id)?) };
        Some(match state {
            ProposalState::Approved => self
                .proposals
                .transition(
                    &p.id,
                    &[ProposalState::Approved],
                    "executed",
                    AuditKind::ProposalExecuting,
                    |p| p.state = ProposalState::Executing,
                )
                .await
                .map_err(GateError::from),
            ProposalState::Rejected => last_reason().and_then(|stored| {
                let reason = stored
                    .and_then(|p| p.decisions.last().map(|d| d.reason.clone()))
                    .unwrap_or_default();
                Err(GateError::ProposalRejected {
                    tool,
                    proposal,
                    reason,
                })
            }),
            ProposalState::Expired => Err(GateError::ProposalExpired { tool, proposal }),
            ProposalState::Failed => last_reason().and_then(|stored| {
                let reason = stored
                    .and_then(|p| p.error)
                    .unwrap_or_else(|| "withdrawn".into());
                Err(GateError::ProposalWithdrawn {
                    tool,
                    proposal,
                    reason,
                })
            }),
            _ => return None,
        })
    }

    /// The waiting run was cancelled: its proposal, pending or approved but not yet
    /// run, is withdrawn so that no later decision runs it.
    pub(super) async fn withdraw(&self, p: &Proposal, reason: String) -> GateError {
        let why = format!("withdrawn: the run was cancelled ({reason})");
        let outcome = self.proposals.withdraw(&p.id, why, reason.clone()).await;
        match outcome {
            Ok(_) | Err(ProposalError::WrongState { .. }) => GateError::RunCancelled {
                proposal: p.id.clone(),
                reason,
            },
            Err(e) => e.into(),
        }
    }

    /// The sandbox limits the agent's token sets for `tool`, when the agent runs.
    pub(super) fn token_sandbox_limits(&self, agent: &str, tool: &str) -> BTreeMap<String, u64> {
        self.agents
            .read_or_recover()
            .get(agent)
            .and_then(|e| {
                e.args
                    .identity
                    .token
                    .effective()
                    .sandbox_limits
                    .get(tool)
                    .cloned()
            })
            .unwrap_or_default()
    }

    pub(super) async fn expire(&self, id: &str) -> Result<(), ProposalError> {
        let now_ms = self.proposals.now_ms();
        match self
            .proposals
            .decide(
                id,
                &[ProposalState::Pending],
                ProposalState::Expired,
                ("expired", AuditKind::ProposalExpired),
                DecisionRecord {
                    kind: "expire".into(),
                    by: "runtime".into(),
                    reason: "no decision before the deadline".into(),
                    at_ms: now_ms,
                },
            )
            .await
        {
            Ok(_) | Err(ProposalError::WrongState { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
