//! The audit trail: append-only, hash-chained entries in redb.
//!
//! Each entry's hash covers its predecessor's hash and its own canonical JSON, so
//! changing, removing or reordering any stored byte breaks the chain at that entry.
//! Entries are appended only through the journal writer (see `journal.rs`); there is
//! no API to edit or delete one.

use std::path::Path;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::ledger::LedgerCommand;

pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// What an audit entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The kind of event: `tool.call`, `tool.result`, `tool.denied`, `model.call`,
    /// `agent.spawn`, `agent.final`, `breaker.open`, `budget.denied`, ...
    pub kind: String,
    /// The agent the event concerns.
    pub agent: String,
    /// The id of the agent's token, when it has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_id: String,
    /// The delegation chain of agents, root first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Event details.
    #[serde(default)]
    pub detail: serde_json::Value,
    /// The budget ledger command this event applied, if any. The audit trail is the
    /// ledger's log: replaying these commands rebuilds the ledger, and the hash chain
    /// makes its history tamper-evident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerCommand>,
}

impl AuditRecord {
    /// A record of `kind` about `agent` with `detail`.
    pub fn new(kind: &str, agent: &str, detail: serde_json::Value) -> Self {
        AuditRecord {
            kind: kind.to_string(),
            agent: agent.to_string(),
            token_id: String::new(),
            chain: Vec::new(),
            detail,
            ledger: None,
        }
    }

    /// Attaches the ledger command this event applies.
    pub fn with_ledger(mut self, cmd: LedgerCommand) -> Self {
        self.ledger = Some(cmd);
        self
    }
}

/// A stored entry: a record with its position, time and chain hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the trail, from 0.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev` and this entry without `hash`.
    pub hash: String,
}

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditEntry {
    pub(crate) fn seal(seq: u64, at_ms: u64, record: AuditRecord, prev: String) -> Self {
        let mut entry = AuditEntry {
            seq,
            at_ms,
            record,
            prev,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    fn compute_hash(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.hash.clear();
        // serde_json writes struct fields in declaration order and `detail` maps in
        // sorted order (no `preserve_order`), so the encoding is canonical.
        let body = serde_json::to_vec(&unsealed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(&body);
        hex::encode(h.finalize())
    }
}

/// The result of verifying a trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Every entry is intact; the number of entries.
    Intact(u64),
    /// The first entry that does not verify, and why.
    Broken {
        /// The stored key of the first bad entry.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Read access to a stored trail (the runtime appends; readers only read).
pub struct AuditReader {
    db: redb::Database,
}

impl AuditReader {
    /// Opens the trail in a data directory for reading. Fails while a runtime holds it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(crate::journal::DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let db = redb::Database::open(&path).map_err(StoreError::from_display)?;
        Ok(AuditReader { db })
    }

    /// Walks the whole trail and checks every hash link.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        verify_db(&self.db)
    }

    /// The last `n` entries, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        tail_db(&self.db, n)
    }
}

pub(crate) fn verify_db(db: &redb::Database) -> Result<Verification, StoreError> {
    let txn = db.begin_read().map_err(StoreError::from_display)?;
    let table = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Verification::Intact(0)),
        Err(e) => return Err(StoreError::from_display(e)),
    };
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 0u64;
    for row in table.iter().map_err(StoreError::from_display)? {
        let (key, value) = row.map_err(StoreError::from_display)?;
        let seq = key.value();
        let broken = |reason: String| Ok(Verification::Broken { seq, reason });
        if seq != expected_seq {
            return broken(format!(
                "expected entry {expected_seq}, found {seq}: entries removed or reordered"
            ));
        }
        let entry: AuditEntry = match serde_json::from_slice(value.value()) {
            Ok(e) => e,
            Err(e) => return broken(format!("unreadable entry: {e}")),
        };
        if entry.seq != seq {
            return broken(format!(
                "entry claims position {} but is stored at {seq}",
                entry.seq
            ));
        }
        if entry.prev != prev {
            return broken("its link to the previous entry does not match".into());
        }
        if entry.compute_hash() != entry.hash {
            return broken("its contents do not match its hash".into());
        }
        // Re-encoding must give the stored bytes, so no byte can change unnoticed.
        if serde_json::to_vec(&entry).ok().as_deref() != Some(value.value()) {
            return broken("its stored bytes are not in canonical form".into());
        }
        prev = entry.hash;
        expected_seq += 1;
    }
    Ok(Verification::Intact(expected_seq))
}

pub(crate) fn tail_db(db: &redb::Database, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::from_display)?;
    let table = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::from_display(e)),
    };
    let mut out = Vec::new();
    for row in table
        .iter()
        .map_err(StoreError::from_display)?
        .rev()
        .take(n)
    {
        let (_, value) = row.map_err(StoreError::from_display)?;
        out.push(serde_json::from_slice(value.value()).map_err(StoreError::from_display)?);
    }
    out.reverse();
    Ok(out)
}

/// The last entry's sequence number and hash, to continue the chain after a restart.
pub(crate) fn head(txn: &redb::WriteTransaction) -> Result<(u64, String), StoreError> {
    let table = txn.open_table(AUDIT).map_err(StoreError::from_display)?;
    let last = table.last().map_err(StoreError::from_display)?;
    match last {
        None => Ok((0, GENESIS.to_string())),
        Some((k, v)) => {
            let entry: AuditEntry =
                serde_json::from_slice(v.value()).map_err(StoreError::from_display)?;
            Ok((k.value() + 1, entry.hash))
        }
    }
}
