//! The supervisor actor: restarts failed agents one-for-one.

use crate::audit::AuditKind;
use crate::sync::RwLockExt;
use std::sync::Weak;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::json;

use crate::agent::AgentArgs;

use super::*;

/// Restarts failed agents one-for-one from their specs.
pub(super) struct Supervisor;

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
                .record(AuditKind::AgentRestarted, json!({"error": err.to_string()}));
            // Queued; the restart below does not wait for it.
            inner.audit_later(record);
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
        .read_or_recover()
        .values()
        .find(|e| e.agent.actor().get_id() == cell.get_id())
        .map(|e| e.args.clone())
}
