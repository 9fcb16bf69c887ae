//! Bulwark's embedded agent runtime: everything needed to run capability-secured
//! agents in one process, with no server.
//!
//! This crate owns the agent actors and their bounded reason/act loop, the gate every
//! tool call passes, supervisors and circuit breakers, the budget ledger, the
//! deduplication layers, encrypted credentials, the content guards (sanitized
//! untrusted input, argument provenance, output redaction) and the keyed,
//! hash-chained and checkpointed audit trail. It
//! makes every security decision through `bulwark-capabilities` and never trusts
//! what a brain (a model) says.
//!
//! **Invariant: every tool call passes the gate.** There is no other path from an
//! agent to a tool.

mod agent;
mod audit;
mod brain;
mod breaker;
mod clock;
mod dedup;
mod error;
mod gate;
pub mod guard;
mod journal;
mod layout;
mod ledger;
mod metrics;
mod proposal_state;
mod proposals;
mod rate;
mod runtime;
pub mod sandbox;
mod secrets;
mod sync;
pub mod telemetry;
mod tools;
mod watchdog;

pub use agent::{ActionRecord, AgentStatus, Outcome, Status};
pub use audit::{
    AUDIT_FORMAT, AUDIT_KEY_FILE, AcceptedBreak, AuditConfig, AuditEntry, AuditError, AuditKey,
    AuditKind, AuditProblem, AuditReader, AuditRecord, AuditReport, CHECKPOINT_FILE,
    CHECKPOINT_KIND, Checkpoint, DEFAULT_CHECKPOINT_EVERY, MIGRATED_KIND, OVERRIDE_KIND,
    Verification,
};
pub use brain::{
    Brain, BrainAction, BrainError, BrainReply, BrainView, ContextItem, OpenAiBrain, OpenAiConfig,
    ScriptedBrain, SpawnRequest, parse_completion,
};
pub use breaker::{BreakerPolicy, BreakerState};
pub use clock::{Clock, ManualClock, SystemClock};
pub use dedup::{BoardTask, Dedup, Submission, TaskState};
pub use error::{BudgetDenial, GateError, GateErrorKind, RunError, SpawnError, StoreError};
pub use gate::{CALL_FORMAT, CallResult, Notification, NotificationKind, SignedCall};
pub use journal::DB_FILE;
pub use ledger::{
    AccountView, ECONOMY_THRESHOLD_PERCENT, LedgerCommand, LedgerOutcome, LedgerState,
};
pub use metrics::{METRICS_CONTENT_TYPE, RuntimeMetrics};
pub use proposals::{
    ApprovalConfig, BatchOutcome, DEFAULT_CONFIRM_EXPIRY, DEFAULT_ROLLBACK_WINDOW, DecisionRecord,
    MAX_BATCH, MAX_OPEN_PROPOSALS, MAX_PROPOSALS_PER_TREE_PER_HOUR, PROPOSAL_FORMAT, Proposal,
    ProposalError, ProposalGroup, ProposalState, SignedDecision, WebhookConfig, queue_decision,
    read_proposals,
};
pub use runtime::{
    AgentHandle, AgentSpec, BrainFactory, BuildError, Envelope, MAX_AGENTS, MAX_INBOX,
    MAX_INBOX_PER_SENDER, MAX_MESSAGES_PER_MINUTE, MESSAGE_CAPABILITY, Remote, RemoteError,
    RemoteFuture, Runtime, RuntimeBuilder, dollars,
};
pub use secrets::{SECRETS_KEY_FILE, SecretError, SecretStore, redaction_key};
pub use tools::{
    CallCredentials, ChannelDedup, OutputArgs, RegisterError, Tool, ToolError, ToolInput,
    ToolManifest, ToolOutput, ToolRegistry, UntrustedPolicy,
};
pub use watchdog::{
    AllowList, AmountLimit, RuleError, RuleFailure, WatchdogRules, WatchdogVerdict,
};
