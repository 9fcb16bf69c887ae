//! The runtime: builder, agent registry, spawning, addressing by id, revocation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use bulwark_capabilities::{
    Approval, Attenuation, Constraint, Decision, KeyPair, MicroUsd, PublicKey, ReplayGuard,
    Revocations, Token,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast;

use crate::agent::{AgentActor, AgentArgs, AgentMsg, AgentStatus, Outcome, RunScope};
use crate::audit::{AuditConfig, AuditEntry, AuditError, AuditRecord, Verification};
use crate::brain::{Brain, ContextItem, SpawnRequest};
use crate::breaker::{BreakerPolicy, BreakerState, Breakers};
use crate::clock::{Clock, SystemClock};
use crate::dedup::Dedup;
use crate::error::{BudgetDenial, GateError, RunError, SpawnError, StoreError};
use crate::gate::{Identity, Notification};
use crate::guard::{Guard, GuardConfig, Guards};
use crate::journal::{Batch, Journal, Mode};
use crate::ledger::{AccountView, LedgerCommand, LedgerOutcome, LedgerState};
use crate::proposals::{
    ApprovalConfig, ApprovalPath, BatchOutcome, Proposal, ProposalError, ProposalGroup,
    ProposalStore, SignedDecision,
};
use crate::secrets::{SecretError, SecretStore};
use crate::tools::ToolRegistry;
use crate::watchdog::Watchdog;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// Its id, unique in the runtime (and later the cluster).
    pub id: String,
    /// Its holder key: it signs every request made under its token.
    pub key: KeyPair,
    /// Most steps of one run.
    pub max_steps: usize,
    /// Longest one brain step may take.
    pub step_timeout: Duration,
}

impl AgentSpec {
    /// An agent with a fresh holder key, 16 steps, 30 s per step.
    pub fn new(id: impl Into<String>) -> Self {
        Self::with_key(id, KeyPair::generate())
    }

    /// An agent with the given holder key.
    pub fn with_key(id: impl Into<String>, key: KeyPair) -> Self {
        AgentSpec {
            id: id.into(),
            key,
            max_steps: 16,
            step_timeout: Duration::from_secs(30),
        }
    }

    /// Sets the step limit.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// Sets the per-step timeout.
    pub fn step_timeout(mut self, t: Duration) -> Self {
        self.step_timeout = t;
        self
    }
}

/// A message between agents. Agents address each other by id; the envelope is
/// serializable so a cluster can carry it between machines unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version.
    pub v: u16,
    /// Sender agent id.
    pub from: String,
    /// Recipient agent id.
    pub to: String,
    /// The text.
    pub content: String,
    /// When it was sent, ms since the epoch.
    pub sent_at_ms: u64,
}

/// Where revoked block ids are kept in the store (`revoked/HEX`).
pub(crate) const REVOKED_PREFIX: &str = "revoked/";

/// Most undelivered messages an agent's inbox holds. Beyond it, a message from the
/// embedding program drops the oldest; a message from an agent is refused.
pub const MAX_INBOX: usize = 256;

/// Most undelivered messages one agent may have in another agent's inbox: a flood from
/// one sender cannot push out the others' messages.
pub const MAX_INBOX_PER_SENDER: usize = 32;

/// Most agents one runtime holds; beyond it spawning is refused.
pub const MAX_AGENTS: usize = 10_000;

/// Most messages one agent may send per minute.
pub const MAX_MESSAGES_PER_MINUTE: usize = 60;

/// The capability an agent's token must grant to message other agents (of its own
/// tenant only). Authorized with the arguments `to` (the recipient) and `tree` (the
/// recipient's root agent), so a token can narrow it with constraints, e.g. to its own
/// tree: `message:send.tree == ROOT`.
pub const MESSAGE_CAPABILITY: &str = "message:send";

/// Makes brains for agents spawned by other agents (a model names a brain, it cannot
/// hand over code).
pub type BrainFactory = Arc<dyn Fn() -> Arc<dyn Brain> + Send + Sync>;

pub(crate) struct LedgerCore {
    pub state: LedgerState,
    pub next_id: u64,
}

pub(crate) struct AgentEntry {
    pub actor: ActorRef<AgentMsg>,
    pub inbox: Arc<Mutex<Vec<Envelope>>>,
    pub args: AgentArgs,
}

pub(crate) struct Inner {
    pub journal: Journal,
    pub ledger: Mutex<LedgerCore>,
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
    pub notifications: broadcast::Sender<Notification>,
    pub supervisor: Mutex<Option<ActorRef<()>>>,
    pub tenant_budgets: HashMap<String, MicroUsd>,
    pub guards: Guards,
    pub proposals: ProposalStore,
    pub approval: Option<ApprovalPath>,
    /// Set when the runtime shuts down: suspended steps stop waiting.
    pub closing: tokio::sync::watch::Sender<bool>,
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    data_dir: Option<PathBuf>,
    root: Option<PublicKey>,
    clock: Arc<dyn Clock>,
    breaker: BreakerPolicy,
    tenant_budgets: HashMap<String, MicroUsd>,
    guard_config: GuardConfig,
    model_guard: Option<Arc<dyn Guard>>,
    approvals: Option<ApprovalConfig>,
    max_agents: usize,
    audit: AuditConfig,
}

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A required setting is missing.
    #[error("runtime builder: {0} is required")]
    Missing(&'static str),
    /// Storage could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The secrets key could not be loaded.
    #[error(transparent)]
    Secrets(#[from] SecretError),
    /// The audit trail does not verify, or its key could not be loaded.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The actor system refused.
    #[error("actor system: {0}")]
    Actor(String),
}

impl RuntimeBuilder {
    /// Where the database and the secrets key live.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The cluster root public key tokens are verified against.
    pub fn root_public_key(mut self, key: PublicKey) -> Self {
        self.root = Some(key);
        self
    }

    /// The clock (tests use a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The circuit-breaker policy.
    pub fn breaker_policy(mut self, policy: BreakerPolicy) -> Self {
        self.breaker = policy;
        self
    }

    /// A tenant's daily budget cap; agents' caps are carved out of it. Without one,
    /// the first root token seen for the tenant sets it.
    pub fn tenant_budget(mut self, tenant: &str, cap: MicroUsd) -> Self {
        self.tenant_budgets.insert(tenant.to_string(), cap);
        self
    }

    /// The content guards' settings (sanitizer, output policies per channel, audit
    /// redaction). The default guards everything.
    pub fn guards(mut self, config: GuardConfig) -> Self {
        self.guard_config = config;
        self
    }

    /// The approval path for tiers PROPOSE and CONFIRM: the watchdog's rules, the
    /// operator keys whose signatures count, and how long a CONFIRM waits. Without one,
    /// those tiers fail closed.
    pub fn approvals(mut self, config: ApprovalConfig) -> Self {
        self.approvals = Some(config);
        self
    }

    /// The audit trail's key, checkpoints and start-up checks (where the audit key
    /// lives, how often checkpoints are signed, the override for a broken trail, the
    /// migration of an earlier release's trail).
    pub fn audit(mut self, config: AuditConfig) -> Self {
        self.audit = config;
        self
    }

    /// A classifier model that also judges untrusted content before agents see it.
    pub fn model_guard(mut self, guard: Arc<dyn Guard>) -> Self {
        self.model_guard = Some(guard);
        self
    }

    /// Most agents the runtime holds (default [`MAX_AGENTS`]); beyond it spawning is
    /// refused with [`SpawnError::TooManyAgents`].
    pub fn max_agents(mut self, n: usize) -> Self {
        self.max_agents = n;
        self
    }

    /// Opens storage, recovers, and starts the supervisor; revocations are loaded
    /// before anything runs.
    pub async fn build(self) -> Result<Runtime, BuildError> {
        let dir = self.data_dir.ok_or(BuildError::Missing("data_dir"))?;
        let root = self.root.ok_or(BuildError::Missing("root_public_key"))?;
        let (journal, recovered) = Journal::open(&dir, &self.audit)?;
        let secrets = SecretStore::open(&dir, journal.clone())?;
        let mut guards = Guards::new(self.guard_config, secrets.redaction_key());
        if let Some(model) = self.model_guard {
            guards = guards.with_model(model);
        }
        if let Some(redactor) = guards.audit_redactor() {
            journal.redact_audit_with(redactor.clone());
        }
        let mut state = recovered.ledger;
        // A crash between reserve and commit leaves reservations open; their calls may
        // have run. Charge them in full, once: no spend lost, none counted twice.
        let open = state.open_reservations();
        let next_id = state.max_reservation_id();
        if !open.is_empty() {
            let mut batch = Batch::default();
            for (id, amount) in open {
                let cmd = LedgerCommand::Commit { id, actual: amount };
                state.apply(&cmd);
                batch.audit.push(
                    AuditRecord::new(
                        "budget.recovered",
                        "runtime",
                        json!({"reservation": id, "charged_micro_usd": amount,
                               "why": "open at restart; the call may have run"}),
                    )
                    .with_ledger(cmd),
                );
            }
            journal
                .write(batch, Mode::Durable, self.clock.now())
                .await?;
        }
        // Revocations are in force before anything runs: recovered proposals included.
        let mut revocations = Revocations::new();
        for (key, _) in journal.kv_scan(REVOKED_PREFIX)? {
            let id = hex::decode(&key[REVOKED_PREFIX.len()..]).map_err(|e| {
                StoreError::from_display(format!("revocation entry `{key}` is not hex: {e}"))
            })?;
            revocations.insert(id);
        }
        let (notifications, _) = broadcast::channel(1024);
        let approval = match self.approvals {
            Some(config) => {
                config
                    .rules
                    .validate()
                    .map_err(|e| BuildError::Actor(e.to_string()))?;
                let (watchdog, _) = Actor::spawn(None, Watchdog, config.rules.clone())
                    .await
                    .map_err(|e| BuildError::Actor(e.to_string()))?;
                Some(ApprovalPath { watchdog, config })
            }
            None => None,
        };
        let proposals = ProposalStore::new(journal.clone(), self.clock.clone(), secrets.sealer());
        let inner = Arc::new(Inner {
            dedup: Dedup::new(journal.clone(), self.clock.clone()),
            breakers: Breakers::new(journal.clone(), self.clock.clone(), self.breaker),
            ledger: Mutex::new(LedgerCore { state, next_id }),
            journal,
            tools: ToolRegistry::default(),
            revocations: RwLock::new(revocations),
            replay: Mutex::new(ReplayGuard::new()),
            secrets,
            clock: self.clock,
            root,
            agents: RwLock::new(HashMap::new()),
            message_rate: Mutex::new(crate::rate::RateWindows::new(60_000)),
            max_agents: self.max_agents,
            proposal_rate: Mutex::new(crate::rate::RateWindows::new(3_600_000)),
            brains: RwLock::new(HashMap::new()),
            notifications,
            supervisor: Mutex::new(None),
            tenant_budgets: self.tenant_budgets,
            guards,
            proposals,
            approval,
            closing: tokio::sync::watch::channel(false).0,
        });
        let (sup, _) = Actor::spawn(None, Supervisor, Arc::downgrade(&inner))
            .await
            .map_err(|e| BuildError::Actor(e.to_string()))?;
        *inner.supervisor.lock().unwrap_or_else(|p| p.into_inner()) = Some(sup);
        inner.recover_proposals().await?;
        Ok(Runtime { inner })
    }
}

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

    /// Registers a brain that agents may name when they spawn children.
    pub fn register_brain(&self, name: &str, factory: BrainFactory) {
        self.inner
            .brains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), factory);
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
        self.inner
            .spawn(spec, token, brain, Some(tenant), None)
            .await
    }

    /// A handle to a running agent by id.
    pub fn agent(&self, id: &str) -> Option<AgentHandle> {
        self.inner
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
            .then(|| AgentHandle {
                id: id.to_string(),
                inner: self.inner.clone(),
            })
    }

    /// Revokes a block id: every token containing it is denied from now on.
    pub async fn revoke(&self, id: Vec<u8>) -> Result<(), StoreError> {
        let record = AuditRecord::new(
            "token.revoked",
            "operator",
            json!({"revocation_id": hex::encode(&id)}),
        );
        let key = format!("{REVOKED_PREFIX}{}", hex::encode(&id));
        // In force for every check at once; durable (with its audit entry, in one
        // transaction) before this returns, and loaded before anything runs at start.
        self.inner
            .revocations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
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

    /// Delivers a message to an agent by id; it sees it at its next step, as untrusted.
    pub fn deliver(&self, envelope: Envelope) -> Result<(), RunError> {
        self.inner.deliver(envelope)
    }

    /// A budget account's figures: `tenant:NAME` or `agent:ID`.
    pub fn account(&self, id: &str) -> Option<AccountView> {
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .account(id)
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
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, e)| e.actor)
            .collect();
        for a in agents {
            a.stop(None);
        }
        if let Some(sup) = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
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

/// A running agent, addressed by id.
#[derive(Clone)]
pub struct AgentHandle {
    id: String,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle").field("id", &self.id).finish()
    }
}

impl AgentHandle {
    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent's token.
    pub fn token(&self) -> Option<Token> {
        self.inner
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.id)
            .map(|e| e.args.identity.token.clone())
    }

    /// Calls a tool as this agent, through the gate, from Rust code running on the
    /// agent's behalf (the brain's tool calls take the same path).
    pub async fn call_tool(
        &self,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<crate::gate::CallResult, GateError> {
        let actor = self
            .inner
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.id)
            .map(|e| e.actor.clone())
            .ok_or_else(|| GateError::UnknownAgent(self.id.clone()))?;
        let tool = tool.to_string();
        match actor
            .call(|reply| AgentMsg::CallTool { tool, args, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(GateError::UnknownAgent(self.id.clone())),
        }
    }

    /// Runs a task through the agent's bounded reason/act loop. Runs of one agent are
    /// serialized: a run asked for while another is in progress waits its turn.
    pub async fn run(&self, task: &str) -> Result<Outcome, RunError> {
        self.inner.run(&self.id, task, Vec::new()).await
    }

    /// Cancels the agent's run in progress (and its direct tool calls, and its
    /// children's runs) with `reason`; the run ends with [`Status::Cancelled`] at its
    /// next cancellation point. A CONFIRM proposal it waits on is withdrawn, so a later
    /// approval runs nothing. Runs queued behind it still run. Returns whether
    /// anything was in progress.
    ///
    /// [`Status::Cancelled`]: crate::agent::Status::Cancelled
    pub async fn cancel(&self, reason: &str) -> Result<bool, RunError> {
        let reason = reason.to_string();
        match self
            .actor()?
            .call(|reply| AgentMsg::Cancel { reason, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(busy)) => Ok(busy),
            _ => Err(RunError::NoSuchAgent(self.id.clone())),
        }
    }

    /// What the agent is doing. The actor answers even while a run waits.
    pub async fn status(&self) -> Result<AgentStatus, RunError> {
        match self
            .actor()?
            .call(|reply| AgentMsg::Status { reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => Ok(s),
            _ => Err(RunError::NoSuchAgent(self.id.clone())),
        }
    }

    fn actor(&self) -> Result<ActorRef<AgentMsg>, RunError> {
        self.inner
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.id)
            .map(|e| e.actor.clone())
            .ok_or_else(|| RunError::NoSuchAgent(self.id.clone()))
    }

    /// Spawns a child: its token is derived from this agent's by attenuation (refused
    /// unless it narrows), its budget is carved out of this agent's, and it starts
    /// with a fresh context.
    pub async fn spawn_child(
        &self,
        spec: AgentSpec,
        attenuation: Attenuation,
        brain: Arc<dyn Brain>,
    ) -> Result<AgentHandle, SpawnError> {
        let parent = self
            .identity()
            .ok_or_else(|| SpawnError::Actor(format!("agent `{}` is not running", self.id)))?;
        self.inner
            .spawn_child(&parent, spec, attenuation, brain)
            .await
    }

    fn identity(&self) -> Option<Arc<Identity>> {
        self.inner
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.id)
            .map(|e| e.args.identity.clone())
    }
}

impl Inner {
    pub(crate) async fn open_account(
        &self,
        account: &str,
        parent: Option<&str>,
        cap: u64,
    ) -> Result<(), SpawnError> {
        {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            let cmd = LedgerCommand::Open {
                account: account.to_string(),
                parent: parent.map(str::to_string),
                cap,
            };
            match ledger.state.apply(&cmd) {
                LedgerOutcome::Opened => {}
                LedgerOutcome::Denied(d) => return Err(SpawnError::Budget(d)),
                other => {
                    return Err(SpawnError::Budget(BudgetDenial::UnknownAccount(format!(
                        "{account}: {other:?}"
                    ))));
                }
            }
            // Deferred: the account is only ever charged by a reservation, whose
            // durable write comes later in the same queue and persists this one.
            let record = AuditRecord::new(
                "budget.open",
                account,
                json!({"parent": parent, "cap_micro_usd": cap}),
            )
            .with_ledger(cmd);
            self.journal.defer(Batch::audit(record), self.clock.now());
        }
        Ok(())
    }

    pub(crate) async fn spawn(
        self: &Arc<Self>,
        spec: AgentSpec,
        token: Token,
        brain: Arc<dyn Brain>,
        parent_account: Option<String>,
        parent_chain: Option<&[String]>,
    ) -> Result<AgentHandle, SpawnError> {
        if token.agent() != spec.id {
            return Err(SpawnError::WrongAgent {
                token_agent: token.agent().to_string(),
                agent: spec.id.clone(),
            });
        }
        if token.holder() != spec.key.public() {
            return Err(SpawnError::WrongKey);
        }
        if self.is_revoked(&token) {
            return Err(SpawnError::Revoked(spec.id.clone()));
        }
        {
            let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
            if agents.contains_key(&spec.id) {
                return Err(SpawnError::Duplicate(spec.id.clone()));
            }
            if agents.len() >= self.max_agents {
                return Err(SpawnError::TooManyAgents(self.max_agents));
            }
        }
        let account = format!("agent:{}", spec.id);
        // An agent's cap is its token's budget, carved out of its parent's account.
        let parent_cap = parent_account.as_deref().and_then(|p| {
            self.ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state
                .account(p)
                .map(|a| a.cap.micros())
        });
        let cap = token
            .effective()
            .budget
            .micros()
            .min(parent_cap.unwrap_or(u64::MAX));
        self.open_account(&account, parent_account.as_deref(), cap)
            .await?;
        let chain: Vec<String> = match parent_chain {
            Some(c) => c
                .iter()
                .cloned()
                .chain(std::iter::once(spec.id.clone()))
                .collect(),
            None => token.chain().into_iter().map(|l| l.agent).collect(),
        };
        let identity = Arc::new(Identity {
            agent: spec.id.clone(),
            account,
            chain: chain.clone(),
            key: spec.key.clone(),
            token,
        });
        let args = AgentArgs {
            spec,
            identity,
            brain,
            inner: Arc::downgrade(self),
            inbox: Arc::new(Mutex::new(Vec::new())),
        };
        self.start_actor(args.clone()).await?;
        // Like the account, the spawn entry becomes durable with the agent's first
        // durable write, which precedes any effect it can have.
        let record = args.identity.record("agent.spawn", json!({"chain": chain}));
        self.journal.defer(Batch::audit(record), self.clock.now());
        Ok(AgentHandle {
            id: args.spec.id.clone(),
            inner: self.clone(),
        })
    }

    /// Whether any block of `token`'s chain is revoked.
    pub(crate) fn is_revoked(&self, token: &Token) -> bool {
        let revoked = self.revocations.read().unwrap_or_else(|p| p.into_inner());
        token.revocation_ids().iter().any(|id| revoked.contains(id))
    }

    /// Starts (or restarts) an agent's actor under the supervisor.
    pub(crate) async fn start_actor(&self, args: AgentArgs) -> Result<(), SpawnError> {
        let sup = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SpawnError::Actor("the runtime is shut down".into()))?;
        let (actor, _) = Actor::spawn_linked(None, AgentActor, args.clone(), sup.get_cell())
            .await
            .map_err(|e| SpawnError::Actor(e.to_string()))?;
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                args.spec.id.clone(),
                AgentEntry {
                    actor,
                    inbox: args.inbox.clone(),
                    args,
                },
            );
        Ok(())
    }

    pub(crate) async fn spawn_child(
        self: &Arc<Self>,
        parent: &Identity,
        spec: AgentSpec,
        attenuation: Attenuation,
        brain: Arc<dyn Brain>,
    ) -> Result<AgentHandle, SpawnError> {
        let child_token = parent.token.attenuate(&parent.key, attenuation)?;
        self.spawn(
            spec,
            child_token,
            brain,
            Some(parent.account.clone()),
            Some(&parent.chain),
        )
        .await
    }

    /// A child requested by a brain: everything in the request is checked like any
    /// other input from a model.
    pub(crate) async fn spawn_requested(
        self: &Arc<Self>,
        parent: &Identity,
        req: &SpawnRequest,
    ) -> Result<AgentHandle, SpawnError> {
        let factory = self
            .brains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.brain)
            .cloned()
            .ok_or_else(|| SpawnError::UnknownBrain(req.brain.clone()))?;
        let spec = AgentSpec::new(req.agent.clone());
        let mut att = Attenuation::new(req.agent.clone(), spec.key.public());
        if let Some(tools) = &req.tools {
            att = att.only_tools(tools.clone());
        }
        for (tool, tier) in &req.tiers {
            att = att.tier(tool.clone(), *tier);
        }
        if let Some(b) = req.budget {
            att = att.budget(b);
        }
        for c in &req.constraints {
            let c: Constraint = c.parse().map_err(|e| {
                SpawnError::Attenuate(bulwark_capabilities::AttenuateError::Invalid(e))
            })?;
            att = att.require(c);
        }
        self.spawn_child(parent, spec, att, factory()).await
    }

    /// A message from the embedding program: bounded, the oldest dropped when full.
    pub(crate) fn deliver(&self, envelope: Envelope) -> Result<(), RunError> {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let entry = agents
            .get(&envelope.to)
            .ok_or_else(|| RunError::NoSuchAgent(envelope.to.clone()))?;
        let mut inbox = entry.inbox.lock().unwrap_or_else(|p| p.into_inner());
        // A bounded inbox: a flood cannot exhaust memory.
        if inbox.len() >= MAX_INBOX {
            inbox.remove(0);
        }
        inbox.push(envelope);
        Ok(())
    }

    /// A message one agent's brain sends another: a granted capability, within the
    /// sender's tenant, rate-limited per sender, and held to a per-sender share of the
    /// recipient's inbox (refused, never evicting others, beyond it).
    pub(crate) fn send_from_agent(
        &self,
        sender: &Identity,
        envelope: Envelope,
    ) -> Result<(), RunError> {
        let to = envelope.to.clone();
        let refuse = |reason: String| RunError::MessageRefused {
            to: to.clone(),
            reason,
        };
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let entry = agents
            .get(&envelope.to)
            .ok_or_else(|| RunError::NoSuchAgent(envelope.to.clone()))?;
        let recipient = &entry.args.identity;
        if recipient.token.tenant() != sender.token.tenant() {
            return Err(refuse("the recipient belongs to another tenant".into()));
        }
        let mut args = bulwark_capabilities::Args::new();
        args.insert(
            "to".into(),
            bulwark_capabilities::ArgValue::Str(envelope.to.clone()),
        );
        args.insert(
            "tree".into(),
            bulwark_capabilities::ArgValue::Str(
                recipient.chain.first().unwrap_or(&recipient.agent).clone(),
            ),
        );
        let request = bulwark_capabilities::Request {
            agent: sender.agent.clone(),
            tool: MESSAGE_CAPABILITY.into(),
            args,
            time: self.clock.now(),
        };
        let authorized = {
            let revoked = self.revocations.read().unwrap_or_else(|p| p.into_inner());
            sender
                .token
                .authorize(&request, &revoked)
                .map_err(|d| refuse(d.to_string()))?
        };
        if authorized.tier > bulwark_capabilities::Tier::AutoPlus {
            return Err(refuse(format!(
                "`{MESSAGE_CAPABILITY}` is at tier {} for this agent; messages do not wait for approval",
                authorized.tier
            )));
        }
        let now_ms = crate::clock::unix_ms(self.clock.now());
        if !self
            .message_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&sender.agent, now_ms, MAX_MESSAGES_PER_MINUTE)
        {
            return Err(refuse(format!(
                "`{}` may send at most {MAX_MESSAGES_PER_MINUTE} messages per minute",
                sender.agent
            )));
        }
        let mut inbox = entry.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let mine = inbox.iter().filter(|e| e.from == sender.agent).count();
        if mine >= MAX_INBOX_PER_SENDER {
            return Err(refuse(format!(
                "`{}` already has {MAX_INBOX_PER_SENDER} unread messages there",
                sender.agent
            )));
        }
        if inbox.len() >= MAX_INBOX {
            return Err(refuse("the inbox is full".into()));
        }
        inbox.push(envelope);
        Ok(())
    }

    pub(crate) async fn run(
        self: &Arc<Self>,
        agent: &str,
        task: &str,
        passed: Vec<String>,
    ) -> Result<Outcome, RunError> {
        self.run_scoped(agent, task, passed, None, None).await
    }

    /// Runs a task; `scope` is the root's work when a parent runs a child, and
    /// `inherited` what the parent's brain had seen when it wrote the task.
    pub(crate) async fn run_scoped(
        self: &Arc<Self>,
        agent: &str,
        task: &str,
        passed: Vec<String>,
        scope: Option<RunScope>,
        inherited: Option<Box<crate::guard::Provenance>>,
    ) -> Result<Outcome, RunError> {
        if let Err(state) = self.breakers.check(agent, task)? {
            return Err(RunError::BreakerOpen {
                agent: agent.to_string(),
                task: task.to_string(),
                until: humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_millis(state.open_until_ms.unwrap_or(0)),
                )
                .to_string(),
                trips: state.trips,
            });
        }
        if !self.dedup.claim_task(agent, task).await? {
            return Err(RunError::DuplicateTask {
                agent: agent.to_string(),
                title: task.to_string(),
            });
        }
        let actor = self
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .map(|e| e.actor.clone())
            .ok_or_else(|| RunError::NoSuchAgent(agent.to_string()))?;
        let mut context = vec![ContextItem::Task {
            text: task.to_string(),
        }];
        context.extend(passed.into_iter().map(|text| ContextItem::Passed { text }));
        let scope = scope.unwrap_or_else(|| RunScope {
            root_agent: agent.to_string(),
            root_task: task.to_string(),
        });
        let result = actor
            .call(
                |reply| AgentMsg::Run {
                    context,
                    scope,
                    inherited,
                    reply,
                },
                None,
            )
            .await;
        let outcome = match result {
            Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
            _ => Outcome::failed(agent, "the agent failed during the run and was restarted"),
        };
        // A cancelled run says nothing about the agent's health.
        if !matches!(outcome.status, crate::agent::Status::Cancelled(_)) {
            self.breakers
                .record(agent, task, outcome.succeeded())
                .await?;
        }
        if !outcome.succeeded() {
            self.dedup.release_task(agent, task).await?;
        }
        Ok(outcome)
    }
}

/// Restarts failed agents one-for-one from their specs.
struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = Weak<Inner>;
    type Arguments = Weak<Inner>;

    async fn pre_start(
        &self,
        _me: ActorRef<()>,
        inner: Weak<Inner>,
    ) -> Result<Weak<Inner>, ActorProcessingErr> {
        Ok(inner)
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<()>,
        event: SupervisionEvent,
        inner: &mut Weak<Inner>,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else {
            return Ok(());
        };
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        let failed = find_agent(&inner, &cell);
        if let Some(args) = failed {
            let record = args
                .identity
                .record("agent.restarted", json!({"error": err.to_string()}));
            // Queued; the restart below does not wait for it.
            inner.journal.defer(Batch::audit(record), inner.clock.now());
            if let Err(e) = inner.start_actor(args).await {
                tracing::error!(error = %e, "could not restart an agent");
            }
        }
        Ok(())
    }
}

fn find_agent(inner: &Inner, cell: &ActorCell) -> Option<AgentArgs> {
    inner
        .agents
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .find(|e| e.actor.get_id() == cell.get_id())
        .map(|e| e.args.clone())
}

/// Decimal dollars for display.
pub fn dollars(micros: u64) -> String {
    MicroUsd::new(micros).map_or_else(|| micros.to_string(), |m| m.to_string())
}

/// The runtime's gate, for sandbox host functions.
struct RuntimeGate(Weak<Inner>);

impl RuntimeGate {
    fn identity(&self, agent: &str) -> Option<(Arc<Inner>, Arc<Identity>)> {
        let inner = self.0.upgrade()?;
        let identity = inner
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .map(|e| e.args.identity.clone())?;
        Some((inner, identity))
    }
}

impl crate::sandbox::HostGate for RuntimeGate {
    fn tier(&self, agent: &str, tool: &str) -> Option<bulwark_capabilities::Tier> {
        self.identity(agent)
            .and_then(|(_, who)| who.token.effective().tools.get(tool).copied())
    }

    fn call(
        &self,
        agent: &str,
        tool: &str,
        args: serde_json::Value,
        within: std::time::Duration,
    ) -> Result<serde_json::Value, crate::sandbox::HostCallError> {
        use crate::sandbox::HostCallError;
        let (inner, who) = self
            .identity(agent)
            .ok_or_else(|| HostCallError::Denied(format!("no agent `{agent}`")))?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| HostCallError::Failed("no async runtime for the host call".into()))?;
        // The call runs as its own task: when the sandboxed call's deadline comes
        // first, the guest stops and the call still settles its budget and audit
        // (it is bounded by its tool's own timeout).
        let tool = tool.to_string();
        let call = handle.spawn(async move { inner.call_tool_in_sandbox(&who, &tool, args).await });
        match handle.block_on(tokio::time::timeout(within, call)) {
            Ok(Ok(Ok(r))) => Ok(r.value),
            Ok(Ok(Err(e @ GateError::ApprovalInSandbox { .. }))) => {
                Err(HostCallError::NeedsApproval(e.to_string()))
            }
            Ok(Ok(Err(e))) if e.is_tool_failure() => Err(HostCallError::Failed(e.to_string())),
            Ok(Ok(Err(e))) => Err(HostCallError::Denied(e.to_string())),
            Ok(Err(join)) => Err(HostCallError::Failed(join.to_string())),
            Err(_) => Err(HostCallError::TimedOut),
        }
    }
}
