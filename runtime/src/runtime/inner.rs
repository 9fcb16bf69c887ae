//! The runtime's shared state, which every part of it holds.

use crate::clock::Clock;
use crate::sync::RwLockExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bulwark_capabilities::{MicroUsd, PublicKey, ReplayGuard, Revocations, Token};
use ractor::ActorRef;
use serde_json::json;
use tokio::sync::broadcast;

use crate::agent::{AgentArgs, AgentMsg};
use crate::audit::AuditRecord;
use crate::brain::Brain;
use crate::breaker::Breakers;
use crate::dedup::Dedup;
use crate::error::BudgetDenial;
use crate::gate::{Identity, Notification};
use crate::guard::Guards;
use crate::journal::{Batch, Journal};
use crate::proposals::{ApprovalPath, ProposalStore};
use crate::secrets::SecretStore;
use crate::tools::ToolRegistry;

use super::*;

/// Makes brains for agents spawned by other agents (a model names a brain, it cannot
/// hand over code).
pub type BrainFactory = Arc<dyn Fn() -> Arc<dyn Brain> + Send + Sync>;

/// How the runtime reaches an agent: the one reference agents are addressed by.
/// Today an agent of this runtime, reached through its actor; a cluster adds the
/// agents other nodes host (by node and agent id), the way ractor's actor ids are
/// local or remote, so that callers keep one type.
#[derive(Clone)]
pub(crate) enum AgentRef {
    /// An agent of this process, reached through its actor's mailbox.
    Local(ActorRef<AgentMsg>),
}

impl AgentRef {
    /// The agent's actor.
    pub fn actor(&self) -> &ActorRef<AgentMsg> {
        match self {
            AgentRef::Local(actor) => actor,
        }
    }
}

pub(crate) struct AgentEntry {
    pub agent: AgentRef,
    pub args: AgentArgs,
}

pub(crate) struct Inner {
    pub journal: Journal,
    pub ledger: Arc<dyn crate::ledger::LedgerService>,
    pub tools: ToolRegistry,
    pub revocations: RwLock<Revocations>,
    pub replay: Mutex<ReplayGuard>,
    pub dedup: Dedup,
    pub secrets: SecretStore,
    pub breakers: Breakers,
    pub clock: Arc<dyn Clock>,
    pub root: PublicKey,
    pub agents: RwLock<HashMap<String, AgentEntry>>,
    /// Most agents held at once.
    pub max_agents: usize,
    /// Per agent tree, when its recent proposals were made (ms).
    pub proposal_rate: Mutex<crate::rate::RateWindows>,
    /// Per sending agent, when its recent messages were sent (ms).
    pub message_rate: Mutex<crate::rate::RateWindows>,
    pub brains: RwLock<HashMap<String, BrainFactory>>,
    /// How agents on other nodes are reached, once a cluster node set it.
    pub remote: RwLock<Option<Arc<dyn super::Remote>>>,
    pub notifications: broadcast::Sender<Notification>,
    pub supervisor: Mutex<Option<ActorRef<()>>>,
    pub tenant_budgets: HashMap<String, MicroUsd>,
    pub guards: Guards,
    pub proposals: ProposalStore,
    pub approval: Option<ApprovalPath>,
    /// The runtime's metric families (see [`crate::metrics`]).
    pub metrics: crate::metrics::RuntimeMetrics,
    /// Set when the runtime shuts down: suspended steps stop waiting.
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl Inner {
    /// Whether any block of `token`'s chain is revoked.
    pub(crate) fn is_revoked(&self, token: &Token) -> bool {
        let revoked = self.revocations.read_or_recover();
        token.revocation_ids().iter().any(|id| revoked.contains(id))
    }

    /// What a forwarding tool or a request to another node carries for local agent
    /// `agent`: its token and holder key.
    pub(crate) fn credentials_of_agent(
        &self,
        agent: &str,
    ) -> Option<crate::tools::CallCredentials> {
        self.agents.read_or_recover().get(agent).map(|e| {
            let who = &e.args.identity;
            crate::tools::CallCredentials {
                token: who.token.clone(),
                key: who.key.clone(),
                approval: None,
            }
        })
    }

    /// How other nodes are reached, when this runtime is a cluster node.
    pub(crate) fn remote(&self) -> Option<Arc<dyn super::Remote>> {
        self.remote.read_or_recover().clone()
    }
}

impl Inner {
    /// Queues `record` for the audit trail, deferred: for records whose effect is
    /// already covered by a durable one, or that have no effect to protect (a
    /// refusal). The next durable commit persists it.
    pub(crate) fn audit_later(&self, record: AuditRecord) {
        self.journal.defer(Batch::audit(record), self.clock.now());
    }

    /// Reserves `amount` on `who`'s account with `intent` journaled durably beside
    /// it; a denial is recorded.
    pub(crate) fn reserve(
        &self,
        who: &Identity,
        amount: u64,
        premium: bool,
        intent: AuditRecord,
        now: SystemTime,
    ) -> Result<crate::ledger::Reservation, BudgetDenial> {
        self.ledger
            .reserve(&who.account, amount, premium, intent, now)
            .inspect_err(|denial| {
                self.audit_later(who.record(
                    AuditKind::BudgetDenied,
                    json!({"reason": denial.to_string()}),
                ));
            })
    }
}
