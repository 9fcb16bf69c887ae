//! What travels inside envelopes between nodes, and the answers.
//!
//! Bodies are JSON inside the (MessagePack) envelope, so tool arguments keep their
//! exact JSON form; every answer is an [`Answer`]. Subjects name agents and tools
//! by their ids, which must be subject-safe ([`subject_safe`]).

use bulwark_capabilities::Approval;
use bulwark_runtime::SignedCall;
use bulwark_runtime::{Outcome, Status};
use serde::{Deserialize, Serialize};

/// An answer to a request: what was asked for, or why it was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer<T> {
    /// Done.
    Ok(T),
    /// Refused, with a reason a person can act on.
    Refused(String),
}

/// Asks a node for a fresh holder key for a child agent it is about to host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hold {
    /// The child's id.
    pub agent: String,
}

/// A spawn: the child token was derived from the envelope's (parent) token to the key
/// the node handed out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spawn {
    /// The child's id.
    pub agent: String,
    /// The brain profile it runs with.
    pub brain: String,
    /// The child token, base64.
    pub child: String,
}

/// A node's answer to [`Hold`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The child's holder public key (hex).
    pub holder: String,
    /// The root public key the node verifies tokens against (hex).
    pub root_public_key: String,
}

/// Where an agent was spawned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawned {
    /// The agent.
    pub agent: String,
    /// The node hosting it.
    pub node: String,
    /// Its holder public key (hex); its private half never leaves the node.
    pub holder: String,
}

/// A request to an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "ask")]
pub enum AgentAsk {
    /// Run a task (only a holder of a token in the agent's own chain).
    Run {
        /// The task.
        task: String,
        /// Context handed over with it.
        #[serde(default)]
        pass: Vec<String>,
    },
    /// What it is doing (the same).
    Status,
    /// Cancel its run (the same).
    Cancel {
        /// Why.
        reason: String,
    },
    /// A message from another agent: it arrives marked untrusted.
    Message {
        /// The text.
        content: String,
    },
}

/// One action of a run, as the cluster reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionView {
    /// `tool`, `spawn` or `send`.
    pub kind: String,
    /// The tool, child or recipient.
    pub tool: String,
    /// Whether it went through.
    pub allowed: bool,
    /// The result or the refusal, short.
    pub reason: String,
}

/// A run's outcome, as the cluster reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    /// The answer, when the brain finished.
    pub answer: Option<String>,
    /// How it ended: `finished`, `step_limit`, `budget_exhausted`, `failed`,
    /// `cancelled`.
    pub status: String,
    /// Why, when it did not finish.
    pub reason: Option<String>,
    /// Steps taken.
    pub steps: usize,
    /// Micro-dollars charged.
    pub charged_micro_usd: u64,
    /// Everything it tried.
    pub actions: Vec<ActionView>,
}

impl From<&Outcome> for RunView {
    fn from(o: &Outcome) -> Self {
        let (status, answer, reason) = match &o.status {
            Status::Finished(a) => ("finished", Some(a.clone()), None),
            Status::StepLimit => ("step_limit", None, None),
            Status::BudgetExhausted(r) => ("budget_exhausted", None, Some(r.clone())),
            Status::Failed(r) => ("failed", None, Some(r.clone())),
            Status::Cancelled(r) => ("cancelled", None, Some(r.clone())),
        };
        RunView {
            answer,
            status: status.to_string(),
            reason,
            steps: o.steps,
            charged_micro_usd: o.charged,
            actions: o
                .actions
                .iter()
                .map(|a| ActionView {
                    kind: a.kind.clone(),
                    tool: a.target.clone(),
                    allowed: a.allowed,
                    reason: a.detail.clone(),
                })
                .collect(),
        }
    }
}

impl RunView {
    /// The outcome of `agent`'s run as the runtime reports runs.
    pub fn into_outcome(self, agent: &str) -> Outcome {
        let reason = self.reason.unwrap_or_default();
        let status = match self.status.as_str() {
            "finished" => Status::Finished(self.answer.unwrap_or_default()),
            "step_limit" => Status::StepLimit,
            "budget_exhausted" => Status::BudgetExhausted(reason),
            "cancelled" => Status::Cancelled(reason),
            other => Status::Failed(format!("{other}: {reason}")),
        };
        Outcome {
            agent: agent.to_string(),
            status,
            steps: self.steps,
            actions: self
                .actions
                .into_iter()
                .map(|a| bulwark_runtime::ActionRecord {
                    kind: a.kind,
                    target: a.tool,
                    allowed: a.allowed,
                    detail: a.reason,
                })
                .collect(),
            charged: self.charged_micro_usd,
            tool_failures: 0,
        }
    }
}

/// An agent's state as `agent list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// The agent.
    pub agent: String,
    /// Its node.
    pub node: String,
    /// `idle`, `running` or `waiting` (on a person's decision).
    pub state: String,
}

/// A tool call forwarded to the node hosting the tool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    /// The node the call comes from (for the trail).
    pub node: String,
    /// The call as the agent signed it.
    pub call: SignedCall,
    /// The operator's approval, for PROPOSE and CONFIRM.
    pub approval: Option<Approval>,
}

/// A tool's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    /// The result.
    pub value: serde_json::Value,
    /// What it cost, micro-dollars.
    pub cost_micro_usd: u64,
}

/// A tool a node hosts, as other nodes register it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The tool.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its tier.
    pub tier: bulwark_capabilities::Tier,
    /// Its largest cost, micro-dollars.
    pub max_cost_micro_usd: u64,
    /// Its JSON schema.
    pub schema: serde_json::Value,
    /// Longest a call may take, ms.
    pub timeout_ms: u64,
}

/// Whether `name` can be one token of a NATS subject: letters, digits, `-` and `_`,
/// at most 128 bytes. Agents and tools offered to the cluster must be.
pub fn subject_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An operator's decision about a proposal a node holds; the decision is signed by
/// the operator, so it needs no envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decide {
    /// The proposal.
    pub id: String,
    /// The signed decision.
    pub decision: bulwark_runtime::SignedDecision,
}
