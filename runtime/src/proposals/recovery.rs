//! Restart recovery: proposals left mid-way by a crash, and decisions queued offline.

use crate::audit::AuditKind;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::audit::AuditRecord;
use crate::error::StoreError;
use crate::journal::{Batch, Mode};
use crate::runtime::Inner;

impl Inner {
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
                        .fail(
                            &p.id,
                            &[ProposalState::Executing],
                            "interrupted by a restart before its result was recorded; it may have run, so it is not run again".into(),
                        )
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

    /// Applies decisions queued while the runtime was stopped, each verified as if
    /// it had arrived now; refused ones are audited and dropped.
    pub(crate) async fn apply_inbox(self: &Arc<Self>) -> Result<(), StoreError> {
        for (key, bytes) in self.journal.kv_scan(crate::layout::PROPOSAL_INBOX)? {
            let outcome = match crate::layout::decode::<SignedDecision>(&bytes) {
                Ok(d) => self.decide(d.proposal_id(), &d).await.map(|_| ()),
                Err(e) => Err(ProposalError::Store(e)),
            };
            let mut batch = Batch {
                kv: vec![(key.clone(), None)],
                ..Batch::default()
            };
            if let Err(e) = &outcome {
                batch.audit.push(AuditRecord::new(
                    AuditKind::ProposalQueuedDecisionRefused,
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
