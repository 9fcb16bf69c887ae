//! The proposal store: proposals in redb, sealed at rest, their transitions written
//! durably with an audit entry, and the watchers of each proposal's state.

use crate::audit::AuditKind;
use crate::layout;
use crate::sync::LockExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::*;
use crate::audit::AuditRecord;
use crate::clock::{Clock, unix_ms};
use crate::dedup::digest;
use crate::error::StoreError;
use crate::journal::{Batch, Journal, Mode};

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

    pub(super) fn key(id: &str) -> String {
        layout::key(layout::PROPOSAL, id)
    }

    /// Where the proposing agent's token is kept: an approved action re-checks it
    /// (revocation, expiry, grants) when it runs.
    pub(super) fn token_key(id: &str) -> String {
        layout::key(layout::PROPOSAL_TOKEN, id)
    }

    /// The proposing agent's token (base64), as it was when the proposal was made.
    pub fn token(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .journal
            .kv_get(&Self::token_key(id))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub(super) fn open_key(agent: &str, tool: &str, args_hash: &str) -> String {
        layout::key(layout::PROPOSAL_OPEN, &digest(&[agent, tool, args_hash]))
    }

    pub fn get(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        let key = Self::key(id);
        self.journal
            .kv_get(&key)?
            .map(|b| decode_proposal(&self.sealer, &key, &b))
            .transpose()
    }

    /// A proposal as stored: sealed JSON.
    pub(super) fn encode(&self, p: &Proposal) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(p).map_err(StoreError::from_display)?;
        self.sealer
            .seal(&Self::key(&p.id), &plain)
            .map_err(StoreError::from_display)
    }

    /// Every proposal, oldest first.
    pub fn list(&self) -> Result<Vec<Proposal>, StoreError> {
        let mut out: Vec<Proposal> = self
            .journal
            .kv_scan(layout::PROPOSAL)?
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
        let record = audit_of(AuditKind::ProposalCreated, p, json!({}));
        self.commit(p, record, kv).await?;
        Ok(Ok(()))
    }

    /// A decision: moves the proposal from one of `from` to `to` and records who
    /// decided and why.
    pub async fn decide(
        &self,
        id: &str,
        from: &[ProposalState],
        to: ProposalState,
        (action, event): (&str, AuditKind),
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
        event: AuditKind,
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
        self.commit(&p, record, kv).await?;
        Ok(p)
    }

    /// Fails a proposal that is in one of `from` and never ran (or whose run was cut
    /// short), with `error` recorded.
    pub async fn fail(
        &self,
        id: &str,
        from: &[ProposalState],
        error: String,
    ) -> Result<Proposal, ProposalError> {
        self.transition(id, from, "failed", AuditKind::ProposalFailed, |p| {
            p.state = ProposalState::Failed;
            p.error = Some(error);
        })
        .await
    }

    /// Writes `p`'s record and key changes durably, with its audit entry, then tells
    /// whoever waits on it.
    async fn commit(
        &self,
        p: &Proposal,
        record: AuditRecord,
        kv: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
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
        Ok(())
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
            AuditKind::ProposalWithdrawn,
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

    pub(super) fn notify(&self, p: &Proposal) {
        let mut w = self.watchers.lock_or_recover();
        if let Some(tx) = w.get(&p.id) {
            let _ = tx.send(p.state);
        }
        if p.state.releases_dedup() {
            w.remove(&p.id);
        }
    }

    /// A receiver of the proposal's state changes.
    pub fn watch(&self, id: &str, current: ProposalState) -> watch::Receiver<ProposalState> {
        let mut w = self.watchers.lock_or_recover();
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(current).0)
            .subscribe()
    }

    /// Whether someone (an agent's suspended step) waits on the proposal.
    pub fn has_waiter(&self, id: &str) -> bool {
        self.watchers
            .lock_or_recover()
            .get(id)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    pub fn now_ms(&self) -> u64 {
        unix_ms(self.clock.now())
    }
}

/// A stored proposal: sealed (or, written before sealing, plain JSON).
pub(super) fn decode_proposal(
    sealer: &crate::secrets::Sealer,
    key: &str,
    bytes: &[u8],
) -> Result<Proposal, StoreError> {
    let plain = sealer.open(key, bytes).map_err(StoreError::from_display)?;
    serde_json::from_slice(&plain).map_err(StoreError::from_display)
}

pub(super) fn audit_of(kind: AuditKind, p: &Proposal, extra: Value) -> AuditRecord {
    let mut detail = json!({
        "proposal": p.id, "tool": p.tool, "tier": p.tier, "state": p.state,
        "args_hash": p.args_hash,
    });
    if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), extra) {
        d.extend(extra);
    }
    AuditRecord {
        kind: kind.as_str().to_string(),
        agent: p.agent.clone(),
        token_id: p.token_id.clone(),
        chain: p.chain.clone(),
        detail,
        ledger: None,
    }
}

/// How many 50 ms waits an approved proposal gives its tool to be registered.
pub(super) const TOOL_WAIT_STEPS: usize = 1200;

/// A fresh proposal id.
pub(crate) fn new_id() -> String {
    format!("p-{:016x}", rand::random::<u64>())
}
