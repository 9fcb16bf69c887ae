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

use std::collections::BTreeMap;
use std::time::Duration;

use bulwark_capabilities::{ArgValue, Args, Tier, args_hash};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::guard::Origin;
use crate::watchdog::WatchdogVerdict;
use bulwark_capabilities::{Approval, Decision};

/// Format version of [`Proposal`] records.
pub const PROPOSAL_FORMAT: u16 = 1;

fn first_format() -> u16 {
    1
}

/// How long a PROPOSE action stays cancellable when its tool sets no window.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a CONFIRM proposal waits for a person.
pub const DEFAULT_CONFIRM_EXPIRY: Duration = Duration::from_secs(24 * 3600);

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
    /// Format version ([`PROPOSAL_FORMAT`]); a proposal stored before versions were
    /// recorded reads as 1.
    #[serde(default = "first_format")]
    pub v: u16,
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
    /// The operator's signed approval, once approved: a node hosting the tool
    /// verifies it again before it runs the call.
    #[serde(default)]
    pub approval: Option<bulwark_capabilities::Approval>,
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

pub use crate::error::ProposalError;
pub use crate::proposal_state::ProposalState;

mod config;
mod decisions;
mod execute;
mod offline;
mod open;
mod recovery;
mod store;
mod webhook;

use config::rfc3339;
pub use config::{ApprovalConfig, WebhookConfig};
pub(crate) use config::{ApprovalPath, group_id};
pub(crate) use offline::pending_groups;
pub use offline::{queue_decision, read_proposals};
pub(crate) use store::{ProposalStore, new_id};
use store::{TOOL_WAIT_STEPS, decode_proposal};

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
