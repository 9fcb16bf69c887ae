//! Building a runtime: opening its store, recovering, starting its actors.

use crate::clock::Clock;
use crate::sync::LockExt;
use ractor::Actor;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use bulwark_capabilities::{MicroUsd, PublicKey, ReplayGuard, Revocations};
use tokio::sync::broadcast;

use crate::audit::{AuditConfig, AuditError};
use crate::breaker::{BreakerPolicy, Breakers};
use crate::dedup::Dedup;
use crate::error::StoreError;
use crate::guard::{Guard, GuardConfig, Guards, LocalGuard, LocalModelError};
use crate::journal::Journal;
use crate::ledger::LocalLedger;
use crate::proposals::{ApprovalConfig, ApprovalPath, ProposalStore};
use crate::secrets::{SecretError, SecretStore};
use crate::tools::ToolRegistry;
use crate::watchdog::Watchdog;

use super::*;

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) root: Option<PublicKey>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) breaker: BreakerPolicy,
    pub(super) tenant_budgets: HashMap<String, MicroUsd>,
    pub(super) guard_config: GuardConfig,
    pub(super) model_guard: Option<Arc<dyn Guard>>,
    pub(super) approvals: Option<ApprovalConfig>,
    pub(super) max_agents: usize,
    pub(super) audit: AuditConfig,
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
    /// The local guard model is configured but does not load.
    #[error(transparent)]
    GuardModel(#[from] LocalModelError),
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
        let journal = Journal::open(&dir, &self.audit)?;
        let secrets = SecretStore::open(&dir, journal.clone())?;
        let local = match &self.guard_config.local_model {
            // Configured but unloadable: the runtime does not start (fail closed).
            Some(config) => Some(Arc::new(LocalGuard::load(config)?)),
            None => None,
        };
        let mut guards = Guards::new(self.guard_config, secrets.redaction_key());
        if let Some(local) = local {
            guards = guards.with_model(local);
        }
        if let Some(model) = self.model_guard {
            guards = guards.with_model(model);
        }
        if let Some(redactor) = guards.audit_redactor() {
            journal.redact_audit_with(redactor.clone());
        }
        let ledger = LocalLedger::recover(journal.clone(), self.clock.now()).await?;
        // Revocations are in force before anything runs: recovered proposals included.
        let mut revocations = Revocations::new();
        for (key, _) in journal.kv_scan(crate::layout::REVOKED)? {
            let id = hex::decode(&key[crate::layout::REVOKED.len()..]).map_err(|e| {
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
        let ledger: Arc<dyn crate::ledger::LedgerService> = Arc::new(ledger);
        let metrics = crate::metrics::RuntimeMetrics::new(
            journal.clone(),
            ledger.clone(),
            self.tenant_budgets.keys().cloned(),
        );
        let inner = Arc::new(Inner {
            dedup: Dedup::new(journal.clone(), self.clock.clone()),
            breakers: Breakers::new(journal.clone(), self.clock.clone(), self.breaker),
            ledger,
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
            remote: RwLock::new(None),
            notifications,
            supervisor: Mutex::new(None),
            tenant_budgets: self.tenant_budgets,
            guards,
            proposals,
            approval,
            metrics,
            closing: tokio::sync::watch::channel(false).0,
        });
        let (sup, _) = Actor::spawn(None, Supervisor, Arc::downgrade(&inner))
            .await
            .map_err(|e| BuildError::Actor(e.to_string()))?;
        *inner.supervisor.lock_or_recover() = Some(sup);
        inner.recover_proposals().await?;
        Ok(Runtime { inner })
    }
}
