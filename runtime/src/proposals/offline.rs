//! The store without a running runtime: reading proposals and queueing decisions
//! for the runtime to apply when it starts.

use super::*;
use crate::error::StoreError;

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
            "{}{}/{:016x}",
            crate::layout::PROPOSAL_INBOX,
            decision.proposal_id(),
            rand::random::<u64>()
        );
        let value = crate::layout::encode(decision)?;
        table
            .insert(key.as_str(), value.as_slice())
            .map_err(StoreError::from_display)?;
    }
    txn.commit().map_err(StoreError::from_display)
}

pub(super) fn open_offline(data_dir: &std::path::Path) -> Result<redb::Database, StoreError> {
    let path = data_dir.join(crate::layout::DB_FILE);
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
