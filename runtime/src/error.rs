//! Errors of the runtime, by operation. Denials are values that say which check failed.

use std::path::PathBuf;

use bulwark_capabilities::{ApprovalError, AttenuateError, Denial, Tier};

use crate::proposal_state::ProposalState;

/// Storage failed: the runtime stops rather than run without a durable record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory holds no Bulwark database.
    #[error("no Bulwark data at {0}")]
    Missing(PathBuf),
    /// redb or the file system failed.
    #[error("storage: {0}")]
    Db(String),
    /// The journal writer has stopped.
    #[error("the journal writer has stopped; the runtime cannot record anything")]
    WriterGone,
}

impl StoreError {
    pub(crate) fn from_display(e: impl std::fmt::Display) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// Why the budget refused a reservation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum BudgetDenial {
    /// The account (or an ancestor) cannot pay for the reservation.
    #[error(
        "budget exhausted for {account}: ${used} used of ${cap} today, this call needs ${needed}"
    )]
    Exhausted {
        /// The account that cannot pay.
        account: String,
        /// Used today (spent plus reserved), dollars.
        used: String,
        /// The daily cap, dollars.
        cap: String,
        /// What the call needed, dollars.
        needed: String,
    },
    /// Above 80 % of the daily budget only the cheap model may be used.
    #[error(
        "{account} has used 80 % of its daily budget: premium model calls are refused, use the cheap model"
    )]
    PremiumRefused {
        /// The account.
        account: String,
    },
    /// The account exists under another parent: it belongs to another lineage.
    #[error(
        "budget account `{account}` belongs to `{owner}`; it cannot be opened under `{requested}` (choose another agent id)"
    )]
    AccountOwnedElsewhere {
        /// The account.
        account: String,
        /// The parent it was opened under.
        owner: String,
        /// The parent this request named.
        requested: String,
    },
    /// No such account.
    #[error("no budget account `{0}`")]
    UnknownAccount(String),
    /// A reservation id that is already open.
    #[error("reservation {0} is already open")]
    DuplicateReservation(u64),
    /// A child's cap larger than its parent's.
    #[error("a child's daily cap (${child}) cannot exceed its parent's (${parent})")]
    CapTooLarge {
        /// The child's requested cap.
        child: String,
        /// The parent's cap.
        parent: String,
    },
}

/// Why the gate refused or failed a tool call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// No tool of that name is registered.
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// The arguments do not match the tool's schema.
    #[error("invalid arguments for `{tool}`: {reason}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What is wrong.
        reason: String,
    },
    /// The token or the holder signature does not allow the call.
    #[error("denied: {0}")]
    Denied(#[from] Denial),
    /// The tool needs a secret the token does not grant.
    #[error("denied: the token does not grant the secret `{secret}` that `{tool}` needs")]
    SecretNotGranted {
        /// The tool.
        tool: String,
        /// The secret.
        secret: String,
    },
    /// A sensitive argument's value came from untrusted content.
    #[error(
        "denied: argument `{arg}` of `{tool}` was copied from untrusted content (a tool result or a message), and {rule} requires it to come from the task"
    )]
    UntrustedArgument {
        /// The tool.
        tool: String,
        /// The argument.
        arg: String,
        /// Who declared it sensitive: the token or the tool's manifest.
        rule: String,
    },
    /// The tool is at tier block.
    #[error("denied: `{0}` is at tier block and never runs")]
    Blocked(String),
    /// PROPOSE or CONFIRM with no watchdog or approval path configured.
    #[error(
        "`{tool}` is at tier {tier}: it needs approval, and no approval path is configured (fail closed)"
    )]
    ApprovalPathNotConfigured {
        /// The tool.
        tool: String,
        /// The tier.
        tier: Tier,
    },
    /// PROPOSE or CONFIRM asked for from inside a sandboxed tool (a host function):
    /// such a call cannot wait for an approval, so it is refused at once.
    #[error(
        "denied: `{tool}` is at tier {tier} and needs approval, which a call made from inside a sandboxed tool cannot wait for (nested approvals are not supported)"
    )]
    ApprovalInSandbox {
        /// The tool.
        tool: String,
        /// The tier.
        tier: Tier,
    },
    /// The watchdog refused the proposal.
    #[error("denied: the watchdog rejected `{tool}` (proposal {proposal}): {rule}")]
    WatchdogRejected {
        /// The tool.
        tool: String,
        /// The proposal, kept as rejected.
        proposal: String,
        /// The rule that failed.
        rule: String,
    },
    /// A watchdog rule covering every call of the tool refused this AUTO or AUTO+ call
    /// (or could not decide it in time: see [`crate::RuleFailure::is_retryable`]).
    #[error("denied: the watchdog refused `{tool}`: {failure}")]
    WatchdogRefused {
        /// The tool.
        tool: String,
        /// The rule that failed.
        failure: crate::watchdog::RuleFailure,
    },
    /// The identical action is already waiting for a decision.
    #[error("`{tool}` with these arguments is already proposed and open: proposal {proposal}")]
    ProposalOpen {
        /// The tool.
        tool: String,
        /// The open proposal.
        proposal: String,
    },
    /// An operator rejected the proposal.
    #[error("denied: an operator rejected `{tool}` (proposal {proposal}): {reason}")]
    ProposalRejected {
        /// The tool.
        tool: String,
        /// The proposal.
        proposal: String,
        /// The operator's reason.
        reason: String,
    },
    /// Nobody decided in time.
    #[error("denied: `{tool}` (proposal {proposal}) expired without a decision")]
    ProposalExpired {
        /// The tool.
        tool: String,
        /// The proposal.
        proposal: String,
    },
    /// The proposal was withdrawn while the step waited (its token was revoked).
    #[error("denied: `{tool}` (proposal {proposal}) was withdrawn: {reason}")]
    ProposalWithdrawn {
        /// The tool.
        tool: String,
        /// The proposal.
        proposal: String,
        /// Why.
        reason: String,
    },
    /// Too many proposals: the store's bounds refuse another.
    #[error("denied: `{tool}` cannot be proposed: {reason}")]
    TooManyProposals {
        /// The tool.
        tool: String,
        /// Which bound was reached.
        reason: String,
    },
    /// The run was cancelled while the step waited; the proposal was withdrawn.
    #[error("the run was cancelled ({reason}); proposal {proposal} was withdrawn")]
    RunCancelled {
        /// The proposal.
        proposal: String,
        /// Why the run was cancelled.
        reason: String,
    },
    /// The runtime is shutting down while the step waited; the proposal stays pending.
    #[error("the runtime is shutting down; proposal {proposal} stays pending")]
    ShuttingDown {
        /// The proposal.
        proposal: String,
    },
    /// A proposal could not be handled.
    #[error(transparent)]
    Proposal(#[from] ProposalError),
    /// The same content was already sent to the same channel within the window.
    #[error(
        "duplicate: the same content was already sent to `{channel}` in the last {window_secs}s"
    )]
    DuplicateOnChannel {
        /// The channel.
        channel: String,
        /// The window.
        window_secs: u64,
    },
    /// The budget cannot pay for the call.
    #[error("denied: {0}")]
    Budget(#[from] BudgetDenial),
    /// The tool ran and failed.
    #[error("tool `{tool}` failed: {reason}")]
    ToolFailed {
        /// The tool.
        tool: String,
        /// Its error.
        reason: String,
    },
    /// The tool panicked; the agent survives.
    #[error("tool `{0}` panicked")]
    ToolPanicked(String),
    /// The tool did not finish in time.
    #[error("tool `{tool}` did not finish within {timeout_ms} ms")]
    ToolTimedOut {
        /// The tool.
        tool: String,
        /// The limit.
        timeout_ms: u64,
    },
    /// The calling agent is not running.
    #[error("agent `{0}` is not running")]
    UnknownAgent(String),
    /// The durable record could not be written, so nothing runs.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What kind of outcome a [`GateError`] is: the one classification the gate, the
/// agent loop and the sandbox's host functions act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateErrorKind {
    /// The call was not allowed: the token, the tier, a guard, the budget, the
    /// watchdog or an operator refused it. Audited as `tool.denied`.
    Refused,
    /// The call needs an approval its caller cannot wait for (a call from inside a
    /// sandboxed tool).
    NeedsApproval,
    /// The tool ran and failed, panicked or timed out (it counts toward a breaker).
    ToolFailure,
    /// The run was cancelled while the call waited.
    Interrupted,
    /// The runtime is shutting down.
    ShuttingDown,
    /// The durable record could not be written, so nothing ran.
    Store,
}

impl GateErrorKind {
    /// The kind's name in snake case (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            GateErrorKind::Refused => "refused",
            GateErrorKind::NeedsApproval => "needs_approval",
            GateErrorKind::ToolFailure => "tool_failure",
            GateErrorKind::Interrupted => "interrupted",
            GateErrorKind::ShuttingDown => "shutting_down",
            GateErrorKind::Store => "store",
        }
    }
}

impl GateError {
    /// Which check or event stopped the call, as a short fixed name (one per
    /// variant, a metric label): finer than [`GateError::kind`], and never carries
    /// the call's data.
    pub fn reason(&self) -> &'static str {
        match self {
            GateError::UnknownTool(_) => "unknown_tool",
            GateError::InvalidArguments { .. } => "invalid_arguments",
            GateError::Denied(_) => "token",
            GateError::SecretNotGranted { .. } => "secret_not_granted",
            GateError::UntrustedArgument { .. } => "untrusted_argument",
            GateError::Blocked(_) => "blocked",
            GateError::ApprovalPathNotConfigured { .. } => "no_approval_path",
            GateError::ApprovalInSandbox { .. } => "approval_in_sandbox",
            GateError::WatchdogRejected { .. } => "watchdog_rejected",
            GateError::WatchdogRefused { .. } => "watchdog_refused",
            GateError::ProposalOpen { .. } => "proposal_open",
            GateError::ProposalRejected { .. } => "operator_rejected",
            GateError::ProposalExpired { .. } => "proposal_expired",
            GateError::ProposalWithdrawn { .. } => "proposal_withdrawn",
            GateError::TooManyProposals { .. } => "too_many_proposals",
            GateError::RunCancelled { .. } => "run_cancelled",
            GateError::ShuttingDown { .. } => "shutting_down",
            GateError::Proposal(_) => "proposal_error",
            GateError::DuplicateOnChannel { .. } => "duplicate_on_channel",
            GateError::Budget(_) => "budget",
            GateError::ToolFailed { .. } => "tool_failed",
            GateError::ToolPanicked(_) => "tool_panicked",
            GateError::ToolTimedOut { .. } => "tool_timed_out",
            GateError::UnknownAgent(_) => "unknown_agent",
            GateError::Store(_) => "store",
        }
    }

    /// What kind of outcome this is.
    pub fn kind(&self) -> GateErrorKind {
        match self {
            GateError::ToolFailed { .. }
            | GateError::ToolPanicked(_)
            | GateError::ToolTimedOut { .. } => GateErrorKind::ToolFailure,
            GateError::ApprovalInSandbox { .. } => GateErrorKind::NeedsApproval,
            GateError::RunCancelled { .. } => GateErrorKind::Interrupted,
            GateError::ShuttingDown { .. } => GateErrorKind::ShuttingDown,
            GateError::Store(_) => GateErrorKind::Store,
            _ => GateErrorKind::Refused,
        }
    }

    /// Whether the error is a failure of the tool itself (it counts toward a breaker),
    /// as opposed to a refusal.
    pub fn is_tool_failure(&self) -> bool {
        self.kind() == GateErrorKind::ToolFailure
    }

    /// Whether the gate records the error as a `tool.denied` audit entry: every
    /// outcome but a tool's own failure (recorded as `tool.failed`) and a store that
    /// cannot write.
    pub(crate) fn is_audited_as_denial(&self) -> bool {
        !matches!(
            self.kind(),
            GateErrorKind::ToolFailure | GateErrorKind::Store
        )
    }

    /// Whether the error ends the agent's run: nothing more can be recorded durably,
    /// or the runtime is going away.
    pub(crate) fn ends_run(&self) -> bool {
        matches!(
            self.kind(),
            GateErrorKind::Store | GateErrorKind::ShuttingDown
        )
    }
}

/// Why an agent could not be spawned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The token is not for this agent.
    #[error("the token was delegated to `{token_agent}`, not `{agent}`")]
    WrongAgent {
        /// The token's agent.
        token_agent: String,
        /// The agent being spawned.
        agent: String,
    },
    /// The token was verified against another root key than the runtime's.
    #[error("the token was issued under root key {token_root}, which this runtime does not trust")]
    WrongRoot {
        /// The token's root key.
        token_root: String,
    },
    /// The holder key does not match the token.
    #[error("the agent's key is not the token's holder key")]
    WrongKey,
    /// A block of the token's chain is revoked.
    #[error("the token of `{0}` is revoked: it cannot start an agent")]
    Revoked(String),
    /// An agent with this id already runs.
    #[error("an agent `{0}` is already running")]
    Duplicate(String),
    /// The runtime holds as many agents as it may.
    #[error("the runtime already holds {0} agents, its limit")]
    TooManyAgents(usize),
    /// The child's token would not be a narrowing of the parent's.
    #[error("cannot spawn child: {0}")]
    Attenuate(#[from] AttenuateError),
    /// Budget account setup failed.
    #[error("cannot spawn: {0}")]
    Budget(#[from] BudgetDenial),
    /// Another node could not be reached or refused the spawn.
    #[error("cannot spawn on another node: {0}")]
    Remote(String),
    /// No brain of that name is registered.
    #[error("no brain named `{0}` is registered")]
    UnknownBrain(String),
    /// The actor system refused.
    #[error("actor spawn failed: {0}")]
    Actor(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why running a task failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The circuit breaker for this agent and task is open.
    #[error("circuit breaker open for `{agent}` on task `{task}` until {until} (trip {trips})")]
    BreakerOpen {
        /// The agent.
        agent: String,
        /// The task.
        task: String,
        /// When it half-opens, RFC 3339.
        until: String,
        /// How many times it has opened since the last success.
        trips: u32,
    },
    /// The same task was given to the same agent within 24 hours.
    #[error("duplicate task: `{agent}` already ran `{title}` within 24 h")]
    DuplicateTask {
        /// The agent.
        agent: String,
        /// The task title.
        title: String,
    },
    /// The agent is gone.
    #[error("agent `{0}` is not running")]
    NoSuchAgent(String),
    /// The actor did not answer.
    #[error("agent `{0}` did not respond")]
    Unresponsive(String),
    /// An agent's message was refused.
    #[error("message to `{to}` refused: {reason}")]
    MessageRefused {
        /// The recipient.
        to: String,
        /// Why.
        reason: String,
    },
    /// Another node could not be reached or refused.
    #[error("{0}")]
    Remote(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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

#[cfg(test)]
mod kind_tests {
    use super::{GateError, GateErrorKind, StoreError};

    #[test]
    fn one_classification_decides_audit_breakers_and_the_end_of_a_run() {
        let failed = GateError::ToolTimedOut {
            tool: "t".into(),
            timeout_ms: 1,
        };
        assert_eq!(failed.kind(), GateErrorKind::ToolFailure);
        assert!(failed.is_tool_failure() && !failed.is_audited_as_denial());
        let refused = GateError::Blocked("t".into());
        assert_eq!(refused.kind(), GateErrorKind::Refused);
        assert!(refused.is_audited_as_denial() && !refused.ends_run());
        let store = GateError::Store(StoreError::WriterGone);
        assert_eq!(store.kind(), GateErrorKind::Store);
        assert!(store.ends_run() && !store.is_audited_as_denial());
        let closing = GateError::ShuttingDown {
            proposal: "p".into(),
        };
        assert!(closing.ends_run() && closing.is_audited_as_denial());
        let sandboxed = GateError::ApprovalInSandbox {
            tool: "t".into(),
            tier: bulwark_capabilities::Tier::Confirm,
        };
        assert_eq!(sandboxed.kind(), GateErrorKind::NeedsApproval);
        let cancelled = GateError::RunCancelled {
            proposal: "p".into(),
            reason: "r".into(),
        };
        assert_eq!(cancelled.kind(), GateErrorKind::Interrupted);
        assert!(!cancelled.ends_run());
    }
}
