//! Proposals: the risky actions (tiers PROPOSE and CONFIRM) the gate holds for the
//! watchdog and for people, fixed at creation, and their lifecycle in redb.
//!
//! ```text
//! CONFIRM: pending → approved → executing → committed | failed
//!                  → rejected | expired
//! PROPOSE: executing → committed (cancellable until its rollback deadline) → rolled_back
//!                    → failed
//! either:  rejected by the watchdog before anything runs
//! ```
//!
//! The tool, the exact arguments (and their hash, which approvals sign), the agent, its
//! token and delegation chain, and each argument's provenance are fixed when the
//! proposal is created; no later step changes them. Every transition is written
//! durably with an audit entry before anyone is told of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_capabilities::{ApprovalError, ArgValue, Args, Tier, Token, args_hash};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::audit::AuditRecord;
use crate::clock::{Clock, unix_ms};
use crate::dedup::digest;
use crate::error::StoreError;
use crate::guard::Origin;
use crate::journal::{Batch, Journal, Mode};
use crate::watchdog::WatchdogVerdict;

/// How long a PROPOSE action stays cancellable when its tool sets no window.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a CONFIRM proposal waits for a person.
pub const DEFAULT_CONFIRM_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Where a proposal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    /// Waiting for an operator (CONFIRM).
    Pending,
    /// Approved by an operator; about to run.
    Approved,
    /// Refused by the watchdog or an operator.
    Rejected,
    /// No decision came in time.
    Expired,
    /// Its tool is running.
    Executing,
    /// Its tool ran; a PROPOSE action stays cancellable until its deadline.
    Committed,
    /// Cancelled inside its window; its compensation ran.
    RolledBack,
    /// Its tool failed, or a restart interrupted it (it is never run twice).
    Failed,
}

impl ProposalState {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalState::Pending => "pending",
            ProposalState::Approved => "approved",
            ProposalState::Rejected => "rejected",
            ProposalState::Expired => "expired",
            ProposalState::Executing => "executing",
            ProposalState::Committed => "committed",
            ProposalState::RolledBack => "rolled_back",
            ProposalState::Failed => "failed",
        }
    }

    /// Whether the identical action may be proposed again.
    fn releases_dedup(self) -> bool {
        !matches!(
            self,
            ProposalState::Pending | ProposalState::Approved | ProposalState::Executing
        )
    }
}

impl std::fmt::Display for ProposalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision about a proposal, with who made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `approve`, `reject`, `cancel`, `watchdog` or `expire`.
    pub kind: String,
    /// The operator's public key (hex), or `watchdog` / `runtime`.
    pub by: String,
    /// The reason given.
    pub reason: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A risky action held for the watchdog and for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Its id.
    pub id: String,
    /// The proposing agent.
    pub agent: String,
    /// The budget account it is charged to.
    pub account: String,
    /// The agent's token id.
    pub token_id: String,
    /// The delegation chain, root first.
    pub chain: Vec<String>,
    /// The tool.
    pub tool: String,
    /// The exact arguments.
    pub args: Value,
    /// SHA-256 (hex) of the arguments as approvals sign them.
    pub args_hash: String,
    /// PROPOSE or CONFIRM.
    pub tier: Tier,
    /// Where each argument's value came from.
    #[serde(default)]
    pub provenance: BTreeMap<String, Origin>,
    /// What the watchdog said.
    pub verdict: WatchdogVerdict,
    /// Where it stands.
    pub state: ProposalState,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: u64,
    /// CONFIRM: when it expires without a decision.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// PROPOSE: until when the committed action can be cancelled.
    #[serde(default)]
    pub rollback_until_ms: Option<u64>,
    /// Decisions, in order.
    #[serde(default)]
    pub decisions: Vec<DecisionRecord>,
    /// The tool's result, once it ran.
    #[serde(default)]
    pub result: Option<Value>,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// The task of the work it serves, as given to the root agent (`None` for a call
    /// the embedding program made directly).
    #[serde(default)]
    pub task: Option<String>,
    /// Proposals of one root agent, task and tool share a group; an operator may
    /// decide a group's pending proposals together (see [`ToolManifest::batch_approval`]).
    ///
    /// [`ToolManifest::batch_approval`]: crate::ToolManifest::batch_approval
    #[serde(default)]
    pub group: String,
    /// Whether the tool allows decisions over a batch, fixed at creation.
    #[serde(default)]
    pub batchable: bool,
}

impl Proposal {
    /// The arguments in the form approvals sign: one canonical JSON text (object keys
    /// sorted), so an approval binds every byte of every argument.
    pub fn approval_args(args: &Value) -> Args {
        let mut a = Args::new();
        a.insert("args".to_string(), ArgValue::Str(args.to_string()));
        a
    }

    /// The hash approvals sign, hex.
    pub fn hash_args(args: &Value) -> String {
        hex::encode(args_hash(&Self::approval_args(args)))
    }
}

/// Why a proposal operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// No proposal has that id.
    #[error("no proposal `{0}`")]
    NotFound(String),
    /// A batch decision does not hold as a whole; nothing in it was applied.
    #[error("batch decision for group `{group}` refused: {reason}")]
    Batch {
        /// The group.
        group: String,
        /// What is wrong.
        reason: String,
    },
    /// The proposal is not in a state that allows the operation.
    #[error("proposal `{id}` is {state}: it cannot be {action}")]
    WrongState {
        /// The proposal.
        id: String,
        /// Its state.
        state: ProposalState,
        /// What was attempted.
        action: String,
    },
    /// The signed approval or decision does not hold.
    #[error("refused for proposal `{id}`: {source}")]
    Signature {
        /// The proposal.
        id: String,
        /// What is wrong with the signature.
        source: ApprovalError,
    },
    /// The rollback window has closed.
    #[error(
        "proposal `{id}` can no longer be cancelled: its rollback window closed at {closed_at}"
    )]
    WindowClosed {
        /// The proposal.
        id: String,
        /// When, RFC 3339.
        closed_at: String,
    },
    /// The compensation failed; the action stays committed.
    #[error("the compensation `{tool}` of proposal `{id}` failed: {reason}")]
    CompensationFailed {
        /// The proposal.
        id: String,
        /// The compensating tool.
        tool: String,
        /// What happened.
        reason: String,
    },
    /// The runtime has no approval path.
    #[error("no approval path is configured: set Runtime::builder().approvals(..)")]
    NoApprovalPath,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The proposals of one runtime, in its database.
pub(crate) struct ProposalStore {
    journal: Journal,
    /// Proposals hold arguments and results (personal data): sealed at rest.
    sealer: crate::secrets::Sealer,
    clock: Arc<dyn Clock>,
    lock: tokio::sync::Mutex<()>,
    watchers: Mutex<HashMap<String, watch::Sender<ProposalState>>>,
}

impl ProposalStore {
    pub fn new(journal: Journal, clock: Arc<dyn Clock>, sealer: crate::secrets::Sealer) -> Self {
        ProposalStore {
            journal,
            sealer,
            clock,
            lock: tokio::sync::Mutex::new(()),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    fn key(id: &str) -> String {
        format!("proposal/{id}")
    }

    /// Where the proposing agent's token is kept: an approved action re-checks it
    /// (revocation, expiry, grants) when it runs.
    fn token_key(id: &str) -> String {
        format!("proposal-token/{id}")
    }

    /// The proposing agent's token (base64), as it was when the proposal was made.
    pub fn token(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .journal
            .kv_get(&Self::token_key(id))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn open_key(agent: &str, tool: &str, args_hash: &str) -> String {
        format!("{OPEN_PREFIX}{}", digest(&[agent, tool, args_hash]))
    }

    pub fn get(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        let key = Self::key(id);
        self.journal
            .kv_get(&key)?
            .map(|b| decode_proposal(&self.sealer, &key, &b))
            .transpose()
    }

    /// A proposal as stored: sealed JSON.
    fn encode(&self, p: &Proposal) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(p).map_err(StoreError::from_display)?;
        self.sealer
            .seal(&Self::key(&p.id), &plain)
            .map_err(StoreError::from_display)
    }

    /// Every proposal, oldest first.
    pub fn list(&self) -> Result<Vec<Proposal>, StoreError> {
        let mut out: Vec<Proposal> = self
            .journal
            .kv_scan("proposal/")?
            .into_iter()
            .map(|(k, b)| decode_proposal(&self.sealer, &k, &b))
            .collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Stores a new proposal, unless the same agent already has the identical action
    /// open: then returns the open one's id instead.
    pub async fn create(
        &self,
        p: &Proposal,
        token: String,
    ) -> Result<Result<(), String>, StoreError> {
        let _guard = self.lock.lock().await;
        let open = Self::open_key(&p.agent, &p.tool, &p.args_hash);
        if !p.state.releases_dedup()
            && let Some(existing) = self.journal.kv_get(&open)?
        {
            return Ok(Err(String::from_utf8_lossy(&existing).into_owned()));
        }
        let mut kv = vec![
            (Self::key(&p.id), Some(self.encode(p)?)),
            (Self::token_key(&p.id), Some(token.into_bytes())),
        ];
        if !p.state.releases_dedup() {
            kv.push((open, Some(p.id.as_bytes().to_vec())));
        }
        let record = audit_of("proposal.created", p, json!({}));
        self.journal
            .write(
                Batch {
                    audit: vec![record],
                    kv,
                },
                Mode::Durable,
                self.clock.now(),
            )
            .await?;
        self.notify(p);
        Ok(Ok(()))
    }

    /// A decision: moves the proposal from one of `from` to `to` and records who
    /// decided and why.
    pub async fn decide(
        &self,
        id: &str,
        from: &[ProposalState],
        to: ProposalState,
        (action, event): (&str, &str),
        record: DecisionRecord,
    ) -> Result<Proposal, ProposalError> {
        self.transition(id, from, action, event, |p| {
            p.state = to;
            p.decisions.push(record);
        })
        .await
    }

    /// Moves a proposal from one of `from` to a new state, durably, with an audit
    /// entry of `event`.
    pub async fn transition(
        &self,
        id: &str,
        from: &[ProposalState],
        action: &str,
        event: &str,
        change: impl FnOnce(&mut Proposal),
    ) -> Result<Proposal, ProposalError> {
        let _guard = self.lock.lock().await;
        let mut p = self
            .get(id)?
            .ok_or_else(|| ProposalError::NotFound(id.to_string()))?;
        if !from.contains(&p.state) {
            return Err(ProposalError::WrongState {
                id: id.to_string(),
                state: p.state,
                action: action.to_string(),
            });
        }
        change(&mut p);
        let mut kv = vec![(Self::key(id), Some(self.encode(&p)?))];
        if p.state.releases_dedup() {
            kv.push((Self::open_key(&p.agent, &p.tool, &p.args_hash), None));
        }
        let record = audit_of(event, &p, json!({"decision": p.decisions.last()}));
        self.journal
            .write(
                Batch {
                    audit: vec![record],
                    kv,
                },
                Mode::Durable,
                self.clock.now(),
            )
            .await?;
        self.notify(&p);
        Ok(p)
    }

    /// Withdraws a pending or approved proposal: it fails with `error`, with a
    /// `withdraw` decision by the runtime giving `reason`, so no later decision runs it.
    pub async fn withdraw(
        &self,
        id: &str,
        error: String,
        reason: String,
    ) -> Result<Proposal, ProposalError> {
        let now_ms = self.now_ms();
        self.transition(
            id,
            &[ProposalState::Pending, ProposalState::Approved],
            "withdrawn",
            "proposal.withdrawn",
            |p| {
                p.state = ProposalState::Failed;
                p.error = Some(error);
                p.decisions.push(DecisionRecord {
                    kind: "withdraw".into(),
                    by: "runtime".into(),
                    reason,
                    at_ms: now_ms,
                });
            },
        )
        .await
    }

    fn notify(&self, p: &Proposal) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = w.get(&p.id) {
            let _ = tx.send(p.state);
        }
        if p.state.releases_dedup() {
            w.remove(&p.id);
        }
    }

    /// A receiver of the proposal's state changes.
    pub fn watch(&self, id: &str, current: ProposalState) -> watch::Receiver<ProposalState> {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(current).0)
            .subscribe()
    }

    /// Whether someone (an agent's suspended step) waits on the proposal.
    pub fn has_waiter(&self, id: &str) -> bool {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    pub fn now_ms(&self) -> u64 {
        unix_ms(self.clock.now())
    }
}

/// A stored proposal: sealed (or, written before sealing, plain JSON).
fn decode_proposal(
    sealer: &crate::secrets::Sealer,
    key: &str,
    bytes: &[u8],
) -> Result<Proposal, StoreError> {
    let plain = sealer.open(key, bytes).map_err(StoreError::from_display)?;
    serde_json::from_slice(&plain).map_err(StoreError::from_display)
}

fn audit_of(kind: &str, p: &Proposal, extra: Value) -> AuditRecord {
    let mut detail = json!({
        "proposal": p.id, "tool": p.tool, "tier": p.tier, "state": p.state,
        "args_hash": p.args_hash,
    });
    if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), extra) {
        d.extend(extra);
    }
    AuditRecord {
        kind: kind.to_string(),
        agent: p.agent.clone(),
        token_id: p.token_id.clone(),
        chain: p.chain.clone(),
        detail,
        ledger: None,
    }
}

/// How many 50 ms waits an approved proposal gives its tool to be registered.
const TOOL_WAIT_STEPS: usize = 1200;

/// A fresh proposal id.
pub(crate) fn new_id() -> String {
    format!("p-{:016x}", rand::random::<u64>())
}

/// How risky actions get approved: the watchdog's rules, the operators whose keys
/// count, and how long a CONFIRM waits.
#[derive(Clone, Debug)]
pub struct ApprovalConfig {
    /// The watchdog's business rules.
    pub rules: crate::watchdog::WatchdogRules,
    /// Operator public keys whose approvals and decisions are accepted.
    pub operators: Vec<bulwark_capabilities::PublicKey>,
    /// How long a CONFIRM proposal waits for a decision.
    pub confirm_expiry: Duration,
    /// Where new proposals that need a person are announced (Slack-compatible JSON).
    pub webhook: Option<WebhookConfig>,
    /// Most proposals undecided or running at once (default [`MAX_OPEN_PROPOSALS`]).
    pub max_open: usize,
    /// Most proposals one agent tree may make per hour, rejected ones included
    /// (default [`MAX_PROPOSALS_PER_TREE_PER_HOUR`]).
    pub max_per_tree_per_hour: usize,
}

/// A webhook told of every proposal that needs a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The URL posted to, e.g. a Slack incoming webhook.
    pub url: String,
    /// Attempts before giving up (default 5).
    pub attempts: u32,
    /// The first retry's delay; each retry doubles it (default 500 ms).
    pub backoff: Duration,
    /// Where operators decide, named in the message (e.g. the dashboard's URL).
    pub dashboard_url: Option<String>,
}

impl WebhookConfig {
    /// Posts to `url`, 5 attempts, backoff from 500 ms.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            attempts: 5,
            backoff: Duration::from_millis(500),
            dashboard_url: None,
        }
    }
}

impl ApprovalConfig {
    /// Approvals by `operators`, no business rules yet, 24 h to decide.
    pub fn new(operators: Vec<bulwark_capabilities::PublicKey>) -> Self {
        ApprovalConfig {
            rules: crate::watchdog::WatchdogRules::default(),
            operators,
            confirm_expiry: DEFAULT_CONFIRM_EXPIRY,
            webhook: None,
            max_open: MAX_OPEN_PROPOSALS,
            max_per_tree_per_hour: MAX_PROPOSALS_PER_TREE_PER_HOUR,
        }
    }

    /// Bounds the proposal store: at most `open` undecided or running proposals, and
    /// `per_tree_per_hour` new ones per agent tree per hour. Beyond either, calls that
    /// need a proposal are refused and nothing is stored.
    pub fn limits(mut self, open: usize, per_tree_per_hour: usize) -> Self {
        self.max_open = open;
        self.max_per_tree_per_hour = per_tree_per_hour;
        self
    }

    /// Announces proposals that need a person to a webhook.
    pub fn webhook(mut self, webhook: WebhookConfig) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// Sets the watchdog's rules.
    pub fn rules(mut self, rules: crate::watchdog::WatchdogRules) -> Self {
        self.rules = rules;
        self
    }

    /// Sets how long a CONFIRM waits.
    pub fn confirm_expiry(mut self, expiry: Duration) -> Self {
        self.confirm_expiry = expiry;
        self
    }
}

/// A running approval path.
pub(crate) struct ApprovalPath {
    pub watchdog: ractor::ActorRef<crate::watchdog::WatchdogMsg>,
    pub config: ApprovalConfig,
}

use crate::error::GateError;
use crate::gate::{Identity, run_handler};
use crate::runtime::Inner;
use crate::tools::{ToolInput, ToolManifest};
use crate::watchdog::{ProposalFacts, WatchdogMsg};
use bulwark_capabilities::{Approval, Decision, DecisionKind};

/// The group of proposals made by one root agent's work on one task with one tool.
pub(crate) fn group_id(root_agent: &str, task: Option<&str>, tool: &str) -> String {
    let mut id = digest(&["group", root_agent, task.unwrap_or("\u{0}direct"), tool]);
    id.truncate(16);
    id
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Inner {
    /// Creates the proposal for a PROPOSE or CONFIRM call, has the watchdog validate
    /// it, and — for CONFIRM — waits for a person. Returns the proposal, now executing.
    pub(crate) async fn open_proposal(
        &self,
        who: &Identity,
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
        let now = self.clock.now();
        let now_ms = unix_ms(now);
        let tree = format!(
            "{}/{}",
            who.token.tenant(),
            who.chain.first().unwrap_or(&who.agent)
        );
        self.admit_proposal(&tree, tool, now_ms)?;
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
        let verdict = match path
            .watchdog
            .call(|reply| WatchdogMsg::Validate { facts, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(v)) => v,
            // Fail closed: no watchdog, no risky action.
            _ => WatchdogVerdict::Reject {
                rule: "the watchdog did not answer".into(),
            },
        };
        let control = crate::agent::RUN.try_with(Clone::clone).ok();
        let scope = control
            .as_ref()
            .and_then(|c| c.scope.clone())
            .unwrap_or_else(|| crate::agent::RunScope {
                root_agent: who.chain.first().unwrap_or(&who.agent).clone(),
                root_task: String::new(),
            });
        let task = control
            .as_ref()
            .and_then(|c| c.scope.as_ref())
            .map(|s| s.root_task.clone());
        let mut p = Proposal {
            id: new_id(),
            agent: who.agent.clone(),
            account: who.account.clone(),
            token_id: who.token.id(),
            chain: who.chain.clone(),
            tool: tool.to_string(),
            args: args.clone(),
            args_hash: Proposal::hash_args(args),
            tier,
            provenance: origins.clone(),
            verdict: verdict.clone(),
            state: match (&verdict, tier) {
                (WatchdogVerdict::Reject { .. }, _) => ProposalState::Rejected,
                (WatchdogVerdict::Pass, Tier::Confirm) => ProposalState::Pending,
                _ => ProposalState::Executing,
            },
            created_ms: now_ms,
            expires_ms: (tier == Tier::Confirm)
                .then(|| now_ms + path.config.confirm_expiry.as_millis() as u64),
            rollback_until_ms: None,
            decisions: Vec::new(),
            result: None,
            error: None,
            group: group_id(&scope.root_agent, task.as_deref(), tool),
            task,
            batchable: self
                .tools
                .get(tool)
                .is_some_and(|t| t.tool.manifest().batch_approval),
        };
        if let WatchdogVerdict::Reject { rule } = &verdict {
            p.decisions.push(DecisionRecord {
                kind: "watchdog".into(),
                by: "watchdog".into(),
                reason: rule.clone(),
                at_ms: now_ms,
            });
        }
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
        let _ = self.notifications.send(crate::gate::Notification {
            kind: crate::gate::NotificationKind::NeedsConfirmation {
                proposal: p.id.clone(),
            },
            agent: who.agent.clone(),
            tool: tool.to_string(),
            tier,
            args: args.clone(),
        });
        if let Some(hook) = &path.config.webhook {
            self.announce(hook.clone(), &p);
        }
        self.await_decision(&p).await
    }

    /// The store's bounds: at most [`MAX_OPEN_PROPOSALS`] undecided or running
    /// proposals in all, and at most [`MAX_PROPOSALS_PER_TREE_PER_HOUR`] new ones per
    /// agent tree (whatever the watchdog's rules). Beyond either, the call is refused
    /// and nothing is stored.
    fn admit_proposal(&self, tree: &str, tool: &str, now_ms: u64) -> Result<(), GateError> {
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
        let open = self.journal.kv_scan(OPEN_PREFIX)?.len();
        if open >= max_open {
            return Err(refuse(format!(
                "{open} proposals are open, the most the store holds; decide some first"
            )));
        }
        let mut rate = self.proposal_rate.lock().unwrap_or_else(|p| p.into_inner());
        if !rate.admit(tree, now_ms, max_per_hour) {
            return Err(refuse(format!(
                "the agent tree {tree} made {max_per_hour} proposals in the last hour, the most it may"
            )));
        }
        Ok(())
    }

    /// Suspends the calling step until the proposal is decided, expires, or the
    /// runtime shuts down.
    async fn await_decision(&self, p: &Proposal) -> Result<Proposal, GateError> {
        let control = crate::agent::RUN.try_with(Clone::clone).ok();
        if let Some(c) = &control {
            *c.waiting.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.id.clone());
        }
        let result = self.await_decision_inner(p, control.as_ref()).await;
        if let Some(c) = &control {
            *c.waiting.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }

    async fn await_decision_inner(
        &self,
        p: &Proposal,
        control: Option<&crate::agent::RunControl>,
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
            match state {
                ProposalState::Approved => {
                    let p = self
                        .proposals
                        .transition(
                            &p.id,
                            &[ProposalState::Approved],
                            "executed",
                            "proposal.executing",
                            |p| p.state = ProposalState::Executing,
                        )
                        .await?;
                    return Ok(p);
                }
                ProposalState::Rejected => {
                    let reason = self
                        .proposals
                        .get(&p.id)?
                        .and_then(|p| p.decisions.last().map(|d| d.reason.clone()))
                        .unwrap_or_default();
                    return Err(GateError::ProposalRejected {
                        tool: p.tool.clone(),
                        proposal: p.id.clone(),
                        reason,
                    });
                }
                ProposalState::Expired => {
                    return Err(GateError::ProposalExpired {
                        tool: p.tool.clone(),
                        proposal: p.id.clone(),
                    });
                }
                ProposalState::Failed => {
                    let reason = self
                        .proposals
                        .get(&p.id)?
                        .and_then(|p| p.error)
                        .unwrap_or_else(|| "withdrawn".into());
                    return Err(GateError::ProposalWithdrawn {
                        tool: p.tool.clone(),
                        proposal: p.id.clone(),
                        reason,
                    });
                }
                _ => {}
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

    /// The waiting run was cancelled: its proposal, pending or approved but not yet
    /// run, is withdrawn so that no later decision runs it.
    async fn withdraw(&self, p: &Proposal, reason: String) -> GateError {
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
    fn token_sandbox_limits(&self, agent: &str, tool: &str) -> BTreeMap<String, u64> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
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

    async fn expire(&self, id: &str) -> Result<(), ProposalError> {
        let now_ms = self.proposals.now_ms();
        match self
            .proposals
            .decide(
                id,
                &[ProposalState::Pending],
                ProposalState::Expired,
                ("expired", "proposal.expired"),
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
                    "proposal.committed"
                } else {
                    "proposal.failed"
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

    /// Posts a Slack-compatible message about `p` to the webhook, retrying with
    /// backoff; the outcome is audited. Runs in the background: a slow receiver never
    /// holds up the runtime.
    ///
    /// The receiver is a third party: the arguments (keys and values) pass the output
    /// guard of the `webhook` channel first (by default every kind of
    /// personal data and secret redacted, data-carrying links removed). The proposal
    /// itself keeps the real values; its `args_hash` names them without revealing them.
    fn announce(&self, hook: WebhookConfig, p: &Proposal) {
        const CHANNEL: &str = "webhook";
        fn guarded(guards: &crate::guard::Guards, value: &Value) -> Value {
            match value {
                Value::String(s) => Value::String(guards.output(CHANNEL, s).text),
                Value::Array(items) => {
                    Value::Array(items.iter().map(|v| guarded(guards, v)).collect())
                }
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| (guards.output(CHANNEL, k).text, guarded(guards, v)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        let args = guarded(&self.guards, &p.args);
        let where_ = hook
            .dashboard_url
            .as_deref()
            .map(|u| format!(" Decide at {u}"))
            .unwrap_or_default();
        let expires = p.expires_ms.map(rfc3339).unwrap_or_default();
        let text = format!(
            "Bulwark: agent `{}` asks to run `{}` ({}), proposal `{}`, expires {expires}. Arguments: {args}.{where_}",
            p.agent, p.tool, p.tier, p.id
        );
        let body = json!({"text": text, "proposal": p.id, "agent": p.agent, "tool": p.tool,
                          "tier": p.tier, "args": args, "args_hash": p.args_hash,
                          "expires_at": expires});
        let journal = self.journal.clone();
        let clock = self.clock.clone();
        let (agent, id) = (p.agent.clone(), p.id.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let mut delay = hook.backoff;
            let mut last = String::from("no attempt made");
            let mut delivered = false;
            let mut attempts = 0;
            if let Ok(client) = client {
                for attempt in 1..=hook.attempts.max(1) {
                    attempts = attempt;
                    match client.post(&hook.url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            delivered = true;
                            break;
                        }
                        Ok(r) => last = format!("HTTP {}", r.status()),
                        Err(e) => last = e.to_string(),
                    }
                    if attempt < hook.attempts {
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2);
                    }
                }
            }
            let detail = if delivered {
                json!({"proposal": id, "delivered": true, "attempts": attempts})
            } else {
                json!({"proposal": id, "delivered": false, "attempts": attempts, "error": last})
            };
            journal.defer(
                Batch::audit(AuditRecord::new("proposal.webhook", &agent, detail)),
                clock.now(),
            );
        });
    }

    fn path(&self) -> Result<&ApprovalPath, ProposalError> {
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
        let p = self
            .proposals
            .decide(
                id,
                &[ProposalState::Pending],
                ProposalState::Approved,
                ("approved", "proposal.approved"),
                DecisionRecord {
                    kind: "approve".into(),
                    by: operator.to_hex(),
                    reason: String::new(),
                    at_ms: now_ms,
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
    fn verify_approval(
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
    fn verify_decision(
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
                ("rejected", "proposal.rejected"),
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
        let registered = self.tools.get(&p.tool);
        let compensation = registered
            .as_ref()
            .and_then(|r| r.tool.manifest.compensation.clone())
            .ok_or_else(|| ProposalError::CompensationFailed {
                id: id.to_string(),
                tool: "(none)".into(),
                reason: format!("`{}` has no compensation", p.tool),
            })?;
        let comp =
            self.tools
                .get(&compensation)
                .ok_or_else(|| ProposalError::CompensationFailed {
                    id: id.to_string(),
                    tool: compensation.clone(),
                    reason: "the compensating tool is not registered".into(),
                })?;
        let failed = |reason: String| ProposalError::CompensationFailed {
            id: id.to_string(),
            tool: compensation.clone(),
            reason,
        };
        if comp.tool.manifest.tier == Tier::Block {
            return Err(failed("the compensating tool is at tier block".into()));
        }
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
                ("cancelled", "proposal.rolled_back"),
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

    /// Runs `registered` with a proposal's arguments outside any agent step, as the
    /// proposing agent: the intent and its budget reservation (on the proposal's
    /// account) durable first, secrets decrypted (one that cannot be fails the call
    /// before the tool runs, and nothing is charged), the tool run, the actual cost
    /// settled and the result recorded. The one path for actions the runtime runs on
    /// a proposal's behalf — an approved action, a compensation. An error before the
    /// tool ran is the outer `Err`; the tool's own outcome is the inner one.
    async fn run_on_behalf(
        &self,
        p: &Proposal,
        registered: &crate::tools::Registered,
        run_by: &str,
    ) -> Result<Result<crate::tools::ToolOutput, GateError>, GateError> {
        let manifest = &registered.tool.manifest;
        let tool = manifest.name.clone();
        let reserved = manifest.max_cost.micros();
        let record = |kind: &str, detail: Value| AuditRecord {
            kind: kind.into(),
            agent: p.agent.clone(),
            token_id: p.token_id.clone(),
            chain: p.chain.clone(),
            detail,
            ledger: None,
        };
        let intent = record(
            "tool.call",
            json!({"tool": tool, "args": p.args, "tier": p.tier, "proposal": p.id,
                   "reserved_micro_usd": reserved, "run_by": run_by}),
        );
        let agent = p.agent.clone();
        let reservation = self.reserve_for(
            &p.account,
            |reason| AuditRecord::new("budget.denied", &agent, json!({"reason": reason})),
            reserved,
            false,
            intent,
            self.clock.now(),
        )?;
        reservation
            .durable
            .await
            .unwrap_or(Err(StoreError::WriterGone))?;
        let mut secrets = BTreeMap::new();
        let mut unreadable = None;
        for secret in &manifest.secrets {
            match self.secrets.get(secret) {
                Ok(v) => {
                    secrets.insert(secret.clone(), v.to_string());
                }
                Err(e) => {
                    unreadable = Some(e.to_string());
                    break;
                }
            }
        }
        let ran = unreadable.is_none();
        let outcome = match unreadable {
            Some(reason) => Err(GateError::ToolFailed {
                tool: tool.clone(),
                reason,
            }),
            None => {
                let input = ToolInput {
                    agent: p.agent.clone(),
                    args: p.args.clone(),
                    secrets,
                    sandbox_limits: self.token_sandbox_limits(&p.agent, &tool),
                };
                run_handler(registered, input).await
            }
        };
        // A failed call is charged in full (it may have cost before failing), unless it
        // never ran.
        let actual = match &outcome {
            Ok(out) => out.cost.micros(),
            Err(_) if !ran => 0,
            Err(_) => reserved,
        };
        let done = match &outcome {
            Ok(out) => record(
                "tool.result",
                json!({"tool": tool, "result": out.value, "proposal": p.id}),
            ),
            Err(e) => record(
                "tool.failed",
                json!({"tool": tool, "error": e.to_string(), "proposal": p.id}),
            ),
        };
        self.settle(reservation.id, actual, done, self.clock.now());
        Ok(outcome)
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
        let fail = |reason: String| async move {
            self.proposals
                .transition(
                    id,
                    &[ProposalState::Approved],
                    "failed",
                    "proposal.failed",
                    |p| {
                        p.state = ProposalState::Failed;
                        p.error = Some(reason);
                    },
                )
                .await
        };
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
                "proposal.executing",
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
    fn reauthorize_proposal(&self, p: &Proposal, secrets: &[String]) -> Result<(), GateError> {
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

    /// After a restart: pending proposals stay pending (or expire if their deadline
    /// passed), an action interrupted while executing is marked failed (it may have
    /// run, so it never runs again), and approved-but-not-run actions run once.
    pub(crate) async fn recover_proposals(self: &Arc<Self>) -> Result<(), StoreError> {
        let now_ms = self.proposals.now_ms();
        for p in self.proposals.list()? {
            match p.state {
                ProposalState::Pending if p.expires_ms.is_some_and(|e| e <= now_ms) => {
                    if let Err(ProposalError::Store(e)) = self.expire(&p.id).await {
                        return Err(e);
                    }
                }
                ProposalState::Executing => {
                    let r = self
                        .proposals
                        .transition(&p.id, &[ProposalState::Executing], "failed", "proposal.failed", |p| {
                            p.state = ProposalState::Failed;
                            p.error = Some("interrupted by a restart before its result was recorded; it may have run, so it is not run again".into());
                        })
                        .await;
                    if let Err(ProposalError::Store(e)) = r {
                        return Err(e);
                    }
                }
                ProposalState::Approved if self.approval.is_some() => {
                    let inner = self.clone();
                    let id = p.id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = inner.execute_detached(&id).await {
                            tracing::warn!(proposal = %id, error = %e, "approved proposal failed to run after restart");
                        }
                    });
                }
                _ => {}
            }
        }
        if self.approval.is_some() {
            self.apply_inbox().await?;
        }
        Ok(())
    }
}

/// An operator's signed decision, as queued for a runtime that is not running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum SignedDecision {
    /// An approval.
    Approve(Approval),
    /// A rejection.
    Reject(Decision),
    /// A cancellation inside the rollback window.
    Cancel(Decision),
}

impl SignedDecision {
    fn proposal_id(&self) -> &str {
        match self {
            SignedDecision::Approve(a) => &a.proposal_id,
            SignedDecision::Reject(d) | SignedDecision::Cancel(d) => &d.proposal_id,
        }
    }
}

/// Where open proposals are indexed (by agent, tool and arguments).
const OPEN_PREFIX: &str = "proposal-open/";

/// Most proposals undecided or running at once; beyond it new ones are refused.
pub const MAX_OPEN_PROPOSALS: usize = 10_000;

/// Most proposals one agent tree may make per hour, rejected ones included; beyond it
/// its calls that need a proposal are refused.
pub const MAX_PROPOSALS_PER_TREE_PER_HOUR: usize = 1_000;

/// The most proposals one batch decision may cover.
pub const MAX_BATCH: usize = 500;

/// The pending proposals of one group, as an operator sees them to decide together.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProposalGroup {
    /// The group id.
    pub group: String,
    /// The agent that was given the task.
    pub root_agent: String,
    /// The task (`None` for calls the embedding program made directly).
    pub task: Option<String>,
    /// The tool.
    pub tool: String,
    /// Whether the tool allows one decision over the group.
    pub batchable: bool,
    /// The pending proposals, oldest first.
    pub pending: Vec<Proposal>,
}

/// What a batch decision did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchOutcome {
    /// The group.
    pub group: String,
    /// The operator's key, hex.
    pub operator: String,
    /// The proposals decided, in their new state.
    pub decided: Vec<Proposal>,
    /// Proposals that changed state while the batch was applied (e.g. expired), with
    /// the reason; they were left as they were.
    pub skipped: Vec<(String, String)>,
}

/// Groups pending proposals by root agent, task and tool, oldest group first.
pub(crate) fn pending_groups(all: Vec<Proposal>) -> Vec<ProposalGroup> {
    let mut groups: Vec<ProposalGroup> = Vec::new();
    for p in all
        .into_iter()
        .filter(|p| p.state == ProposalState::Pending)
    {
        match groups.iter_mut().find(|g| g.group == p.group) {
            Some(g) => g.pending.push(p),
            None => groups.push(ProposalGroup {
                group: p.group.clone(),
                root_agent: p.chain.first().unwrap_or(&p.agent).clone(),
                task: p.task.clone(),
                tool: p.tool.clone(),
                batchable: p.batchable,
                pending: vec![p],
            }),
        }
    }
    for g in &mut groups {
        g.pending.sort_by_key(|p| p.created_ms);
    }
    groups.sort_by_key(|g| g.pending.first().map_or(0, |p| p.created_ms));
    groups
}

const INBOX: &str = "proposal-inbox/";

/// The proposals of a runtime's data directory, read while no runtime has it open
/// (a running runtime holds the database: ask its dashboard instead).
pub fn read_proposals(data_dir: &std::path::Path) -> Result<Vec<Proposal>, StoreError> {
    let sealer =
        crate::secrets::Sealer::for_data_dir(data_dir).map_err(StoreError::from_display)?;
    let db = open_offline(data_dir)?;
    let txn = db.begin_read().map_err(StoreError::from_display)?;
    let table = txn
        .open_table(crate::journal::KV)
        .map_err(StoreError::from_display)?;
    let mut out = Vec::new();
    for row in table
        .range("proposal/"..)
        .map_err(StoreError::from_display)?
    {
        let (k, v) = row.map_err(StoreError::from_display)?;
        if !k.value().starts_with("proposal/") {
            break;
        }
        out.push(decode_proposal(&sealer, k.value(), v.value())?);
    }
    out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Queues a signed decision in a data directory no runtime has open. The runtime
/// verifies it against its operator keys and applies it when it next starts; nothing
/// is decided here.
pub fn queue_decision(
    data_dir: &std::path::Path,
    decision: &SignedDecision,
) -> Result<(), StoreError> {
    let db = open_offline(data_dir)?;
    let txn = db.begin_write().map_err(StoreError::from_display)?;
    {
        let mut table = txn
            .open_table(crate::journal::KV)
            .map_err(StoreError::from_display)?;
        let key = format!(
            "{INBOX}{}/{:016x}",
            decision.proposal_id(),
            rand::random::<u64>()
        );
        let value = serde_json::to_vec(decision).map_err(StoreError::from_display)?;
        table
            .insert(key.as_str(), value.as_slice())
            .map_err(StoreError::from_display)?;
    }
    txn.commit().map_err(StoreError::from_display)
}

fn open_offline(data_dir: &std::path::Path) -> Result<redb::Database, StoreError> {
    let path = data_dir.join(crate::journal::DB_FILE);
    if !path.exists() {
        return Err(StoreError::Missing(path));
    }
    redb::Database::open(&path).map_err(|e| {
        StoreError::from_display(format!(
            "{e} (is a runtime running on {}? then use its dashboard)",
            data_dir.display()
        ))
    })
}

impl Inner {
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
        let record = AuditRecord::new(
            "proposal.batch",
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

    /// Applies decisions queued while the runtime was stopped, each verified as if
    /// it had arrived now; refused ones are audited and dropped.
    pub(crate) async fn apply_inbox(self: &Arc<Self>) -> Result<(), StoreError> {
        for (key, bytes) in self.journal.kv_scan(INBOX)? {
            let outcome = match serde_json::from_slice::<SignedDecision>(&bytes) {
                Ok(d) => self.decide(d.proposal_id(), &d).await.map(|_| ()),
                Err(e) => Err(ProposalError::Store(StoreError::from_display(e))),
            };
            let mut batch = Batch {
                kv: vec![(key.clone(), None)],
                ..Batch::default()
            };
            if let Err(e) = &outcome {
                batch.audit.push(AuditRecord::new(
                    "proposal.queued_decision_refused",
                    "runtime",
                    json!({"entry": key, "reason": e.to_string()}),
                ));
            }
            self.journal
                .write(batch, Mode::Durable, self.clock.now())
                .await?;
        }
        Ok(())
    }
}
