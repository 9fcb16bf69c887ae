//! Where a proposal stands: the states of its lifecycle (see the proposals module).

use serde::{Deserialize, Serialize};

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
    pub(crate) fn releases_dedup(self) -> bool {
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
