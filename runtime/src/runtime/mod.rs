//! The runtime: builder, agent registry, spawning, addressing by id, revocation.

use crate::audit::AuditKind;
use crate::sync::{LockExt, RwLockExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bulwark_capabilities::{Approval, Decision, MicroUsd, Token};
use serde_json::json;
use tokio::sync::broadcast;

use crate::audit::{AuditConfig, AuditEntry, AuditRecord, Verification};
use crate::brain::Brain;
use crate::breaker::{BreakerPolicy, BreakerState};
use crate::clock::SystemClock;
use crate::dedup::Dedup;
use crate::error::{RunError, SpawnError, StoreError};
use crate::gate::Notification;
use crate::guard::{GuardConfig, Guards};
use crate::journal::{Batch, Mode};
use crate::ledger::AccountView;
use crate::metrics::RuntimeMetrics;
use crate::proposals::{BatchOutcome, Proposal, ProposalError, ProposalGroup, SignedDecision};
use crate::secrets::SecretStore;
use crate::tools::ToolRegistry;

mod builder;
mod handle;
mod host_gate;
mod inner;
mod messages;
mod remote;
mod run;
mod spawn;
mod supervisor;

pub use builder::{BuildError, RuntimeBuilder};
pub use handle::{AgentHandle, AgentSpec};
use host_gate::RuntimeGate;
pub use inner::BrainFactory;
pub(crate) use inner::{AgentEntry, AgentRef, Inner};
pub use messages::{
    Envelope, MAX_AGENTS, MAX_INBOX, MAX_INBOX_PER_SENDER, MAX_MESSAGES_PER_MINUTE,
    MESSAGE_CAPABILITY,
};
pub use remote::{Remote, RemoteError, RemoteFuture};
use supervisor::Supervisor;

/// An embedded Bulwark runtime: one process, no servers.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl Runtime {
    /// Starts building a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            data_dir: None,
            root: None,
            clock: Arc::new(SystemClock),
            breaker: BreakerPolicy::default(),
            guard_config: GuardConfig::default(),
            model_guard: None,
            approvals: None,
            tenant_budgets: HashMap::new(),
            max_agents: MAX_AGENTS,
            audit: AuditConfig::default(),
        }
    }

    /// The tool registry.
    pub fn tools(&self) -> &ToolRegistry {
        &self.inner.tools
    }

    /// The gate as sandboxed code's host functions use it: calls go through the gate
    /// as the calling agent (see [`crate::sandbox::SandboxTool::host_gate`]). Holds
    /// the runtime weakly.
    pub fn host_gate(&self) -> Arc<dyn crate::sandbox::HostGate> {
        Arc::new(RuntimeGate(Arc::downgrade(&self.inner)))
    }

    /// The runtime's metrics: tool calls, denials, open proposals and tenant budgets,
    /// in a registry of this runtime's own (see [`RuntimeMetrics`]).
    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.inner.metrics
    }

    /// The secrets store.
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.secrets
    }

    /// The runtime's clock reading.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Every proposal, oldest first.
    pub fn proposals(&self) -> Result<Vec<Proposal>, StoreError> {
        self.inner.proposals.list()
    }

    /// One proposal.
    pub fn proposal(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        self.inner.proposals.get(id)
    }

    /// Approves a pending proposal with an operator's signature over its id and the
    /// hash of its exact arguments. The waiting step then runs it once (or, if no step
    /// waits any more, the runtime does).
    pub async fn approve(&self, id: &str, approval: &Approval) -> Result<Proposal, ProposalError> {
        self.inner.approve(id, approval).await
    }

    /// Rejects a pending proposal with an operator's signed decision.
    pub async fn reject(&self, id: &str, decision: &Decision) -> Result<Proposal, ProposalError> {
        self.inner.reject(id, decision).await
    }

    /// Applies an operator's signed approval, rejection or cancellation.
    pub async fn decide(
        &self,
        id: &str,
        decision: &SignedDecision,
    ) -> Result<Proposal, ProposalError> {
        self.inner.decide(id, decision).await
    }

    /// Cancels a committed PROPOSE action inside its rollback window: its compensation
    /// runs and is recorded.
    pub async fn cancel(&self, id: &str, decision: &Decision) -> Result<Proposal, ProposalError> {
        self.inner.cancel(id, decision).await
    }

    /// The pending proposals grouped by root agent, task and tool: what an operator
    /// may decide together where the tool allows it.
    pub fn proposal_groups(&self) -> Result<Vec<ProposalGroup>, StoreError> {
        Ok(crate::proposals::pending_groups(
            self.inner.proposals.list()?,
        ))
    }

    /// One operator decision over several pending proposals of `group`: all
    /// approvals or all rejections, each signed per proposal by the same operator.
    /// Verified as a whole before any is applied.
    pub async fn decide_batch(
        &self,
        group: &str,
        decisions: &[SignedDecision],
    ) -> Result<BatchOutcome, ProposalError> {
        self.inner.decide_batch(group, decisions).await
    }

    /// The content guards (sanitizer, output guard, redaction under this runtime's key).
    pub fn guards(&self) -> &Guards {
        &self.inner.guards
    }

    /// The deduplication layers (task board, proposals).
    pub fn dedup(&self) -> &Dedup {
        &self.inner.dedup
    }

    /// How many agents the runtime holds.
    pub fn agent_count(&self) -> usize {
        self.inner.agents.read_or_recover().len()
    }

    /// Registers a brain that agents may name when they spawn children.
    pub fn register_brain(&self, name: &str, factory: BrainFactory) {
        self.inner
            .brains
            .write_or_recover()
            .insert(name.to_string(), factory);
    }

    /// Joins a cluster: agents on other nodes are reached through `remote` from now
    /// on (spawns that name another node, messages to agents hosted elsewhere).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        *self.inner.remote.write_or_recover() = Some(remote);
    }

    /// A handle to agent `id` on another node, directed as the local agent
    /// `director` (a holder of a token above it in its chain).
    pub fn remote_agent(&self, id: &str, node: &str, director: &str) -> Option<AgentHandle> {
        let creds = self.inner.credentials_of_agent(director)?;
        Some(AgentHandle::remote(id, node, creds, self.inner.clone()))
    }

    /// A new brain from the profile registered under `name`, if there is one.
    pub fn brain(&self, name: &str) -> Option<Arc<dyn Brain>> {
        let factory = self.inner.brains.read_or_recover().get(name).cloned();
        factory.map(|f| f())
    }

    /// Operator notifications: AUTO+ calls that ran, and CONFIRM proposals waiting for
    /// a decision ([`crate::NotificationKind`] tells which). A slow receiver misses
    /// the oldest beyond 1024 queued (`RecvError::Lagged`).
    pub fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.inner.notifications.subscribe()
    }

    /// Spawns a root agent with a token minted for it.
    pub async fn spawn_agent(
        &self,
        spec: AgentSpec,
        token: Token,
        brain: Arc<dyn Brain>,
    ) -> Result<AgentHandle, SpawnError> {
        // A `Token` is always verified; it must have been verified against this
        // runtime's root key.
        if token.root_key() != self.inner.root {
            return Err(SpawnError::WrongRoot {
                token_root: token.root_key().to_hex(),
            });
        }
        let tenant = format!("tenant:{}", token.tenant());
        // A tenant's daily cap is the operator's setting; without one, the first root
        // token seen for the tenant sets it.
        let configured = self.inner.tenant_budgets.get(token.tenant()).copied();
        let exists = self.account(&tenant).is_some();
        if !exists || configured.is_some() {
            let cap = configured.unwrap_or(token.effective().budget).micros();
            self.inner.open_account(&tenant, None, cap).await?;
        }
        self.inner.metrics.tenant_seen(token.tenant());
        self.inner
            .spawn(spec, token, brain, Some(tenant), None)
            .await
    }

    /// A handle to a running agent by id.
    pub fn agent(&self, id: &str) -> Option<AgentHandle> {
        self.inner
            .agents
            .read_or_recover()
            .contains_key(id)
            .then(|| AgentHandle {
                id: id.to_string(),
                inner: self.inner.clone(),
                at: None,
            })
    }

    /// Revokes a block id: every token containing it is denied from now on. In a
    /// cluster the revocation then goes to every other node ([`Remote::revoke`]); a
    /// failure of that step is logged, and this node's revocation stands.
    pub async fn revoke(&self, id: Vec<u8>) -> Result<(), StoreError> {
        self.apply_revocation(id.clone()).await?;
        if let Some(remote) = self.inner.remote()
            && let Err(e) = remote.revoke(id.clone()).await
        {
            tracing::warn!(id = %hex::encode(&id), error = %e, "the revocation did not reach every node");
        }
        Ok(())
    }

    /// Puts a revocation in force here only (a cluster node applying one that came
    /// from another node).
    pub async fn apply_revocation(&self, id: Vec<u8>) -> Result<(), StoreError> {
        let record = AuditRecord::new(
            AuditKind::TokenRevoked,
            "operator",
            json!({"revocation_id": hex::encode(&id)}),
        );
        let key = crate::layout::key(crate::layout::REVOKED, &hex::encode(&id));
        // In force for every check at once; durable (with its audit entry, in one
        // transaction) before this returns, and loaded before anything runs at start.
        self.inner.revocations.write_or_recover().insert(id);
        self.inner
            .journal
            .write(
                Batch {
                    audit: vec![record],
                    kv: vec![(key, Some(Vec::new()))],
                },
                Mode::Durable,
                self.inner.clock.now(),
            )
            .await?;
        // Whatever a revoked token proposed and nobody has run yet is withdrawn.
        self.inner.withdraw_revoked_proposals().await
    }

    /// Runs a tool call another node's gate passed, after checking it again here:
    /// the signed call against `token`, the token, the tier, and for PROPOSE and
    /// CONFIRM the operator's `approval` of exactly these arguments. Its record is
    /// durable before the tool runs. `from` names the sending node for the trail.
    pub async fn serve_remote_call(
        &self,
        token: &Token,
        call: &crate::SignedCall,
        approval: Option<&bulwark_capabilities::Approval>,
        from: &str,
    ) -> Result<crate::ToolOutput, crate::GateError> {
        self.inner
            .serve_remote_call(token, call, approval, from)
            .await
    }

    /// Delivers a message from an agent on another node, sent under `sender` (a
    /// verified token): the messaging capability, tenant and inbox rules apply as
    /// for a local agent's message, and it arrives marked untrusted.
    pub async fn deliver_from_node(
        &self,
        sender: &Token,
        envelope: Envelope,
    ) -> Result<(), RunError> {
        self.inner.deliver_from_node(sender, envelope).await
    }

    /// Records that a message from another node was refused, with why.
    pub fn record_refusal(&self, agent: &str, token_id: &str, detail: serde_json::Value) {
        let mut record = AuditRecord::new(AuditKind::ClusterRefused, agent, detail);
        record.token_id = token_id.to_string();
        self.inner.audit_later(record);
    }

    /// Whether any of `ids` (a token's revocation ids) is revoked here.
    pub fn any_revoked(&self, ids: &[Vec<u8>]) -> bool {
        let revoked = self.inner.revocations.read_or_recover();
        ids.iter().any(|id| revoked.contains(id))
    }

    /// Runs `f` with the revocations in force.
    pub fn with_revocations<R>(
        &self,
        f: impl FnOnce(&bulwark_capabilities::Revocations) -> R,
    ) -> R {
        f(&self.inner.revocations.read_or_recover())
    }

    /// The ids of the agents this runtime holds, sorted.
    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .agents
            .read_or_recover()
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Delivers a message to an agent by id; it sees it at its next step, as untrusted.
    pub fn deliver(&self, envelope: Envelope) -> Result<(), RunError> {
        self.inner.deliver(envelope)
    }

    /// A budget account's figures: `tenant:NAME` or `agent:ID`.
    pub fn account(&self, id: &str) -> Option<AccountView> {
        self.inner.ledger.account(id)
    }

    /// The breaker state of an agent and task.
    pub fn breaker(&self, agent: &str, task: &str) -> Result<BreakerState, StoreError> {
        self.inner.breakers.state(agent, task)
    }

    /// Verifies the whole audit trail (after committing what is queued).
    pub async fn verify_audit(&self) -> Result<Verification, StoreError> {
        self.inner.journal.flush().await;
        self.inner.journal.verify_audit()
    }

    /// The latest audit entries, oldest first (after committing what is queued).
    pub async fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.journal.flush().await;
        self.inner.journal.tail_audit(n)
    }

    /// Stops every agent, makes everything written so far durable and releases the
    /// data directory (another runtime may then open it).
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let _ = self.inner.closing.send(true);
        if let Some(path) = &self.inner.approval {
            path.watchdog.stop(None);
        }
        let agents: Vec<_> = self
            .inner
            .agents
            .write_or_recover()
            .drain()
            .map(|(_, e)| e.agent.actor().clone())
            .collect();
        for a in agents {
            a.stop(None);
        }
        if let Some(sup) = self.inner.supervisor.lock_or_recover().take() {
            sup.stop(None);
        }
        self.inner
            .journal
            .write(Batch::default(), Mode::Durable, self.inner.clock.now())
            .await?;
        self.inner.journal.close().await;
        Ok(())
    }
}

/// Decimal dollars for display.
pub fn dollars(micros: u64) -> String {
    MicroUsd::new(micros).map_or_else(|| micros.to_string(), |m| m.to_string())
}
