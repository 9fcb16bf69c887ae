//! The kinds of audit events: the one list of what the trail can record.
//!
//! On disk a kind is its dotted name (`tool.call`), so a reader of an older or newer
//! trail still decodes every entry; [`AuditKind::parse`] names the ones this release
//! knows.

/// What an audit entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A tool call passed the gate; its budget is reserved (durable before it runs).
    ToolCall,
    /// A tool call returned.
    ToolResult,
    /// A tool call failed (after it passed the gate).
    ToolFailed,
    /// The gate refused a tool call.
    ToolDenied,
    /// A brain step's cost is reserved.
    ModelCall,
    /// A brain step returned.
    ModelResult,
    /// An agent was spawned.
    AgentSpawn,
    /// An agent's actor was restarted by its supervisor.
    AgentRestarted,
    /// An agent sent a message to another.
    AgentMessage,
    /// An agent's run answered.
    AgentFinal,
    /// An agent's run was cancelled.
    AgentCancelled,
    /// A budget account was opened.
    BudgetOpen,
    /// A reservation was refused.
    BudgetDenied,
    /// A reservation open at restart was charged in full.
    BudgetRecovered,
    /// A circuit breaker opened.
    BreakerOpen,
    /// A circuit breaker closed.
    BreakerClosed,
    /// Untrusted input was sanitized.
    GuardInput,
    /// Outgoing text was redacted or had links removed.
    GuardOutput,
    /// The model guard judged untrusted input.
    GuardModel,
    /// An answer carried values seen only in untrusted content.
    GuardAnswerProvenance,
    /// A proposal was created.
    ProposalCreated,
    /// A proposal was approved.
    ProposalApproved,
    /// A proposal was rejected.
    ProposalRejected,
    /// A proposal expired undecided.
    ProposalExpired,
    /// A proposal's action started.
    ProposalExecuting,
    /// A proposal's action completed.
    ProposalCommitted,
    /// A proposal's action failed or was not run.
    ProposalFailed,
    /// A proposal was withdrawn (its token was revoked or its step cancelled).
    ProposalWithdrawn,
    /// A proposal's action was rolled back.
    ProposalRolledBack,
    /// A proposal was announced to the webhook.
    ProposalWebhook,
    /// A batch of proposals was decided.
    ProposalBatch,
    /// A decision queued offline was refused when applied.
    ProposalQueuedDecisionRefused,
    /// A token was revoked.
    TokenRevoked,
    /// A call from another node passed this node's checks; it runs next (durable
    /// before it runs).
    RemoteCall,
    /// A message from another node was refused (its envelope, its token, or what it
    /// asked).
    ClusterRefused,
    /// An operator started the runtime despite a broken trail.
    AuditOverride,
    /// A legacy (format 1) trail was sealed under the audit key.
    AuditMigrated,
    /// A periodic checkpoint (its length and head).
    AuditCheckpoint,
}

impl AuditKind {
    /// Every kind, in declaration order.
    pub const ALL: [AuditKind; 38] = [
        AuditKind::ToolCall,
        AuditKind::ToolResult,
        AuditKind::ToolFailed,
        AuditKind::ToolDenied,
        AuditKind::ModelCall,
        AuditKind::ModelResult,
        AuditKind::AgentSpawn,
        AuditKind::AgentRestarted,
        AuditKind::AgentMessage,
        AuditKind::AgentFinal,
        AuditKind::AgentCancelled,
        AuditKind::BudgetOpen,
        AuditKind::BudgetDenied,
        AuditKind::BudgetRecovered,
        AuditKind::BreakerOpen,
        AuditKind::BreakerClosed,
        AuditKind::GuardInput,
        AuditKind::GuardOutput,
        AuditKind::GuardModel,
        AuditKind::GuardAnswerProvenance,
        AuditKind::ProposalCreated,
        AuditKind::ProposalApproved,
        AuditKind::ProposalRejected,
        AuditKind::ProposalExpired,
        AuditKind::ProposalExecuting,
        AuditKind::ProposalCommitted,
        AuditKind::ProposalFailed,
        AuditKind::ProposalWithdrawn,
        AuditKind::ProposalRolledBack,
        AuditKind::ProposalWebhook,
        AuditKind::ProposalBatch,
        AuditKind::ProposalQueuedDecisionRefused,
        AuditKind::TokenRevoked,
        AuditKind::RemoteCall,
        AuditKind::ClusterRefused,
        AuditKind::AuditOverride,
        AuditKind::AuditMigrated,
        AuditKind::AuditCheckpoint,
    ];

    /// Its name in the trail.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditKind::ToolCall => "tool.call",
            AuditKind::ToolResult => "tool.result",
            AuditKind::ToolFailed => "tool.failed",
            AuditKind::ToolDenied => "tool.denied",
            AuditKind::ModelCall => "model.call",
            AuditKind::ModelResult => "model.result",
            AuditKind::AgentSpawn => "agent.spawn",
            AuditKind::AgentRestarted => "agent.restarted",
            AuditKind::AgentMessage => "agent.message",
            AuditKind::AgentFinal => "agent.final",
            AuditKind::AgentCancelled => "agent.cancelled",
            AuditKind::BudgetOpen => "budget.open",
            AuditKind::BudgetDenied => "budget.denied",
            AuditKind::BudgetRecovered => "budget.recovered",
            AuditKind::BreakerOpen => "breaker.open",
            AuditKind::BreakerClosed => "breaker.closed",
            AuditKind::GuardInput => "guard.input",
            AuditKind::GuardOutput => "guard.output",
            AuditKind::GuardModel => "guard.model",
            AuditKind::GuardAnswerProvenance => "guard.answer_provenance",
            AuditKind::ProposalCreated => "proposal.created",
            AuditKind::ProposalApproved => "proposal.approved",
            AuditKind::ProposalRejected => "proposal.rejected",
            AuditKind::ProposalExpired => "proposal.expired",
            AuditKind::ProposalExecuting => "proposal.executing",
            AuditKind::ProposalCommitted => "proposal.committed",
            AuditKind::ProposalFailed => "proposal.failed",
            AuditKind::ProposalWithdrawn => "proposal.withdrawn",
            AuditKind::ProposalRolledBack => "proposal.rolled_back",
            AuditKind::ProposalWebhook => "proposal.webhook",
            AuditKind::ProposalBatch => "proposal.batch",
            AuditKind::ProposalQueuedDecisionRefused => "proposal.queued_decision_refused",
            AuditKind::TokenRevoked => "token.revoked",
            AuditKind::RemoteCall => "tool.remote_call",
            AuditKind::ClusterRefused => "cluster.refused",
            AuditKind::AuditOverride => "audit.override",
            AuditKind::AuditMigrated => "audit.migrated",
            AuditKind::AuditCheckpoint => "audit.checkpoint",
        }
    }

    /// The kind named `name`, if this release knows it.
    pub fn parse(name: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::AuditKind;

    #[test]
    fn every_kind_has_one_distinct_name_that_parses_back() {
        let mut names = std::collections::HashSet::new();
        for kind in AuditKind::ALL {
            assert!(names.insert(kind.as_str()), "{kind:?} shares its name");
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AuditKind::parse("tool.unknown"), None);
    }
}
