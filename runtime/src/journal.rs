//! The journal: the one writer of the runtime's redb database.
//!
//! Everything durable — audit entries, ledger commands, breaker and dedup state —
//! goes through one writer thread that batches concurrent requests into a single
//! write transaction (group commit). A batch that must be durable is committed with
//! `Durability::Immediate` before any of its callers is answered; others ride along
//! and become durable with the next durable commit. The writer is also the audit
//! trail's sequencer: it assigns positions and chain hashes in commit order.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::audit::{self, AUDIT, AuditEntry, AuditRecord};
use crate::clock::unix_ms;
use crate::error::StoreError;
use crate::ledger::{LedgerCommand, LedgerState};

/// The database file inside a data directory.
pub const DB_FILE: &str = "bulwark.redb";

pub(crate) const LEDGER_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_log");
pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 512;

/// One caller's writes.
#[derive(Default)]
pub(crate) struct Batch {
    pub audit: Vec<AuditRecord>,
    pub ledger: Vec<LedgerCommand>,
    /// Key-value writes; `None` deletes.
    pub kv: Vec<(String, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn audit(record: AuditRecord) -> Self {
        Batch {
            audit: vec![record],
            ..Batch::default()
        }
    }
}

struct Request {
    batch: Batch,
    durable: bool,
    at: SystemTime,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

enum Op {
    Write(Request),
    /// Commits what is queued, then stops and releases the database.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread.
#[derive(Clone)]
pub(crate) struct Journal {
    tx: mpsc::Sender<Op>,
    db: Arc<std::sync::RwLock<Option<Arc<Database>>>>,
}

/// What was on disk when the journal opened.
pub(crate) struct Recovered {
    pub ledger: LedgerState,
    pub next_ledger_seq: u64,
}

impl Journal {
    /// Opens (or creates) the database and starts the writer.
    pub fn open(data_dir: &Path) -> Result<(Journal, Recovered), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::from_display)?;
        let db = Database::create(data_dir.join(DB_FILE)).map_err(StoreError::from_display)?;
        let txn = db.begin_write().map_err(StoreError::from_display)?;
        txn.open_table(AUDIT).map_err(StoreError::from_display)?;
        txn.open_table(KV).map_err(StoreError::from_display)?;
        let (ledger, next_ledger_seq) = {
            let log = txn
                .open_table(LEDGER_LOG)
                .map_err(StoreError::from_display)?;
            let mut state = LedgerState::default();
            let mut next = 0;
            for row in log.iter().map_err(StoreError::from_display)? {
                let (k, v) = row.map_err(StoreError::from_display)?;
                let cmd: LedgerCommand =
                    serde_json::from_slice(v.value()).map_err(StoreError::from_display)?;
                state.apply(&cmd);
                next = k.value() + 1;
            }
            (state, next)
        };
        let (audit_seq, audit_prev) = audit::head(&txn)?;
        txn.commit().map_err(StoreError::from_display)?;
        state_check(&ledger)?;

        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Op>();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("bulwark-journal".into())
            .spawn(move || writer(writer_db, rx, audit_seq, audit_prev, next_ledger_seq))
            .map_err(StoreError::from_display)?;
        Ok((
            Journal {
                tx,
                db: Arc::new(std::sync::RwLock::new(Some(db))),
            },
            Recovered {
                ledger,
                next_ledger_seq,
            },
        ))
    }

    /// Queues `batch`; returns a receiver that resolves once it is committed (and, when
    /// `durable`, on disk). Queue order is commit order.
    pub fn submit(
        &self,
        batch: Batch,
        durable: bool,
        at: SystemTime,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Op::Write(req))) = self.tx.send(Op::Write(Request {
            batch,
            durable,
            at,
            reply,
        })) {
            let _ = req.reply.send(Err(StoreError::WriterGone));
        }
        rx
    }

    /// Commits everything queued, stops the writer and releases the database file.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Close(reply)).is_ok() {
            let _ = rx.await;
        }
        self.db.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::WriterGone)
    }

    /// Submits and waits.
    pub async fn write(
        &self,
        batch: Batch,
        durable: bool,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.submit(batch, durable, at)
            .await
            .unwrap_or(Err(StoreError::WriterGone))
    }

    /// Reads a key-value entry.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db()?.begin_read().map_err(StoreError::from_display)?;
        let table = txn.open_table(KV).map_err(StoreError::from_display)?;
        Ok(table
            .get(key)
            .map_err(StoreError::from_display)?
            .map(|v| v.value().to_vec()))
    }

    pub fn verify_audit(&self) -> Result<audit::Verification, StoreError> {
        audit::verify_db(&*self.db()?)
    }

    pub fn tail_audit(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        audit::tail_db(&*self.db()?, n)
    }
}

fn state_check(ledger: &LedgerState) -> Result<(), StoreError> {
    ledger
        .check_invariants()
        .map_err(|e| StoreError::Db(format!("ledger invariant broken on disk: {e}")))
}

fn writer(
    db: Arc<Database>,
    rx: mpsc::Receiver<Op>,
    mut audit_seq: u64,
    mut audit_prev: String,
    mut ledger_seq: u64,
) {
    let mut closing = None;
    while closing.is_none() {
        let Ok(first) = rx.recv() else {
            break;
        };
        let mut batch = Vec::new();
        match first {
            Op::Write(req) => batch.push(req),
            Op::Close(reply) => closing = Some(reply),
        }
        while batch.len() < MAX_BATCH && closing.is_none() {
            match rx.try_recv() {
                Ok(Op::Write(req)) => batch.push(req),
                Ok(Op::Close(reply)) => closing = Some(reply),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let before = (audit_seq, audit_prev.clone(), ledger_seq);
        let result = commit_batch(
            &db,
            &batch,
            &mut audit_seq,
            &mut audit_prev,
            &mut ledger_seq,
        );
        if result.is_err() {
            // Nothing of the batch is on disk: continue the chain from where it was.
            (audit_seq, audit_prev, ledger_seq) = before;
        }
        for req in batch {
            let _ = req.reply.send(result.clone().map_err(StoreError::Db));
        }
    }
    // Make everything durable before the file is released.
    if let Ok(mut txn) = db.begin_write() {
        txn.set_durability(Durability::Immediate);
        let _ = txn.commit();
    }
    drop(db);
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

fn commit_batch(
    db: &Database,
    batch: &[Request],
    audit_seq: &mut u64,
    audit_prev: &mut String,
    ledger_seq: &mut u64,
) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    let durable = batch.iter().any(|r| r.durable);
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    {
        let mut audit = txn.open_table(AUDIT).map_err(|e| e.to_string())?;
        let mut log = txn.open_table(LEDGER_LOG).map_err(|e| e.to_string())?;
        let mut kv = txn.open_table(KV).map_err(|e| e.to_string())?;
        for req in batch {
            for cmd in &req.batch.ledger {
                let bytes = serde_json::to_vec(cmd).map_err(|e| e.to_string())?;
                log.insert(*ledger_seq, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
                *ledger_seq += 1;
            }
            for record in &req.batch.audit {
                let entry = AuditEntry::seal(
                    *audit_seq,
                    unix_ms(req.at),
                    record.clone(),
                    std::mem::take(audit_prev),
                );
                let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
                audit
                    .insert(*audit_seq, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
                *audit_prev = entry.hash;
                *audit_seq += 1;
            }
            for (key, value) in &req.batch.kv {
                match value {
                    Some(v) => kv.insert(key.as_str(), v.as_slice()).map(|_| ()),
                    None => kv.remove(key.as_str()).map(|_| ()),
                }
                .map_err(|e| e.to_string())?;
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}
