//! The journal: the one writer of the runtime's redb database.
//!
//! Everything durable — audit entries (which carry the ledger's commands), breaker
//! and dedup state —
//! goes through one writer thread that batches concurrent requests into a single
//! write transaction (group commit). A batch that must be durable is committed with
//! `Durability::Immediate` before any of its callers is answered; others ride along
//! and become durable with the next durable commit. The writer is also the audit
//! trail's sequencer: it assigns positions and keyed chain hashes in commit order, and
//! after durable commits it signs checkpoints of the chain (see `audit.rs`).
//!
//! Opening verifies the trail (keyed hashes and checkpoints) before the budget ledger
//! is replayed from it: a broken trail is refused unless the operator overrides.

use crate::sync::RwLockExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable};
use tokio::sync::oneshot;

use crate::audit::{
    self, AUDIT, AuditConfig, AuditEntry, AuditError, AuditKey, AuditRecord, Checkpoint,
};
use crate::clock::unix_ms;
use crate::error::StoreError;
use crate::guard::Redactor;

pub use crate::layout::DB_FILE;
pub(crate) use crate::layout::KV;

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 512;

/// One caller's writes.
#[derive(Default)]
pub(crate) struct Batch {
    pub audit: Vec<AuditRecord>,
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

/// How soon, and how surely, a write must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Committed and synced before the caller is answered.
    Durable,
    /// Committed (visible to readers) before the caller is answered; synced by the next
    /// durable commit.
    Visible,
    /// Committed with the next commit, or within [`DEFER_MS`]; synced by the next
    /// durable commit. For records whose effect is already covered by a durable one.
    Deferred,
}

/// Resolves once a submitted write is durable (or failed).
pub(crate) type Durable = oneshot::Receiver<Result<(), StoreError>>;

/// Longest a deferred write waits for a commit to ride along with.
const DEFER_MS: u64 = 5;

struct Request {
    batch: Batch,
    mode: Mode,
    at: SystemTime,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

enum Op {
    Write(Request),
    /// Commits everything queued, visibly.
    Flush(oneshot::Sender<()>),
    /// Commits what is queued, durably, then stops and releases the database.
    Close(oneshot::Sender<()>),
    /// The deferral deadline passed: commit what is queued.
    Tick,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub(crate) struct Journal {
    tx: mpsc::Sender<Op>,
    db: Arc<std::sync::RwLock<Option<Arc<Database>>>>,
    redactor: Arc<OnceLock<Redactor>>,
    audit: Arc<AuditSetup>,
}

/// The audit key and where checkpoints go.
struct AuditSetup {
    key: AuditKey,
    key_path: std::path::PathBuf,
    checkpoint_path: std::path::PathBuf,
    every: u64,
}

impl AuditSetup {
    /// Signs and appends a checkpoint of a durable chain of `len` entries.
    fn checkpoint(&self, len: u64, head: &str) -> Result<(), AuditError> {
        let c = Checkpoint::sign(&self.key, len, head.to_string(), unix_ms(SystemTime::now()));
        audit::checkpoint_append(&self.checkpoint_path, &c)
    }
}

impl Journal {
    /// Opens (or creates) the database, verifies the audit trail and starts the
    /// writer. The budget ledger is then replayed from the verified trail
    /// (`LocalLedger::recover`).
    pub fn open(data_dir: &Path, config: &AuditConfig) -> Result<Journal, AuditError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::from_display)?;
        let key_path = config.key_path(data_dir);
        let checkpoint_path = config.checkpoint_path(data_dir);
        audit::checkpoint_repair(&checkpoint_path)?;
        let db = Database::create(data_dir.join(DB_FILE)).map_err(StoreError::from_display)?;
        {
            let txn = db.begin_write().map_err(StoreError::from_display)?;
            txn.open_table(AUDIT).map_err(StoreError::from_display)?;
            txn.open_table(KV).map_err(StoreError::from_display)?;
            txn.commit().map_err(StoreError::from_display)?;
        }
        // A key is created only for a trail that has none yet: a keyed trail whose
        // key is missing (lost, or the configured path forgotten) is refused.
        let key = match AuditKey::load(&key_path) {
            Err(AuditError::MissingKey(_))
                if !audit::is_keyed(&db)? && !checkpoint_path.exists() =>
            {
                AuditKey::load_or_create(&key_path)?
            }
            other => other?,
        };
        // The trail is verified before anything is rebuilt from it.
        let report = audit::verify_trail(&db, Some(&key), &key_path, &checkpoint_path, None)?;
        let start_record = match (report.problems.first(), config.accepted_break()) {
            (Some(p), None) => {
                return Err(AuditError::Broken {
                    dir: data_dir.to_path_buf(),
                    seq: p.seq,
                    reason: p.reason.clone(),
                });
            }
            (Some(p), Some(why)) => {
                let disowned: Vec<&str> = report
                    .problems
                    .iter()
                    .filter_map(|p| p.line_digest.as_deref())
                    .collect();
                tracing::warn!(entry = p.seq, reason = %p.reason, operator_reason = why,
                    "starting on a broken audit trail by operator override");
                Some(AuditRecord::new(
                    audit::AuditKind::AuditOverride,
                    "operator",
                    serde_json::json!({
                        "broken_at": p.seq,
                        "reason": p.reason,
                        "operator_reason": why,
                        "entries": report.entries,
                        "disowned_checkpoints": disowned,
                    }),
                ))
            }
            (None, _) if report.entries > 0 && report.legacy_entries == report.entries => {
                if !config.migrates_legacy() {
                    return Err(AuditError::Legacy {
                        dir: data_dir.to_path_buf(),
                        entries: report.entries,
                    });
                }
                Some(AuditRecord::new(
                    audit::AuditKind::AuditMigrated,
                    "runtime",
                    serde_json::json!({
                        "from_format": 1,
                        "to_format": audit::AUDIT_FORMAT,
                        "legacy_entries": report.legacy_entries,
                    }),
                ))
            }
            (None, _) => None,
        };

        let txn = db.begin_write().map_err(StoreError::from_display)?;
        let (mut audit_seq, mut audit_prev) = audit::head(&txn)?;
        let wrote_start = start_record.is_some();
        if let Some(record) = start_record {
            let entry = AuditEntry::seal(
                audit_seq,
                unix_ms(SystemTime::now()),
                record,
                audit_prev,
                &key,
            );
            let bytes = serde_json::to_vec(&entry).map_err(StoreError::from_display)?;
            txn.open_table(AUDIT)
                .map_err(StoreError::from_display)?
                .insert(audit_seq, bytes.as_slice())
                .map_err(StoreError::from_display)?;
            audit_seq += 1;
            audit_prev = entry.hash;
        }
        txn.commit().map_err(StoreError::from_display)?;
        let setup = Arc::new(AuditSetup {
            key,
            key_path,
            checkpoint_path,
            every: config.every(),
        });
        let mut checkpointed = report.last_checkpoint.as_ref().map_or(0, |c| c.len);
        if wrote_start {
            // The override or migration (committed durably above) is pinned at once.
            setup.checkpoint(audit_seq, &audit_prev)?;
            checkpointed = audit_seq;
        }

        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Op>();
        let writer_db = db.clone();
        let redactor = Arc::new(OnceLock::new());
        let writer_redactor = redactor.clone();
        let writer_setup = setup.clone();
        std::thread::Builder::new()
            .name("bulwark-journal".into())
            .spawn(move || {
                writer(
                    writer_db,
                    rx,
                    Chain {
                        seq: audit_seq,
                        prev: audit_prev,
                        checkpointed,
                        note: None,
                    },
                    writer_setup,
                    writer_redactor,
                )
            })
            .map_err(StoreError::from_display)?;
        Ok(Journal {
            tx,
            db: Arc::new(std::sync::RwLock::new(Some(db))),
            redactor,
            audit: setup,
        })
    }

    /// From now on, the text of audit records is redacted (personal data and secrets
    /// replaced by keyed hashes) before it is sealed into the chain. Set once.
    pub fn redact_audit_with(&self, redactor: Redactor) {
        let _ = self.redactor.set(redactor);
    }

    /// Queues `batch`; returns a receiver that resolves once it is committed (and, for
    /// [`Mode::Durable`], on disk). Queue order is commit order.
    pub fn submit(&self, batch: Batch, mode: Mode, at: SystemTime) -> Durable {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Op::Write(req))) = self.tx.send(Op::Write(Request {
            batch,
            mode,
            at,
            reply,
        })) {
            let _ = req.reply.send(Err(StoreError::WriterGone));
        }
        rx
    }

    /// Submits and waits.
    pub async fn write(&self, batch: Batch, mode: Mode, at: SystemTime) -> Result<(), StoreError> {
        self.submit(batch, mode, at)
            .await
            .unwrap_or(Err(StoreError::WriterGone))
    }

    /// Queues a deferred write without waiting for it.
    pub fn defer(&self, batch: Batch, at: SystemTime) {
        drop(self.submit(batch, Mode::Deferred, at));
    }

    /// Commits everything queued so far (so readers see it).
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued, stops the writer and releases the database file.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Close(reply)).is_ok() {
            let _ = rx.await;
        }
        self.db.write_or_recover().take();
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read_or_recover()
            .clone()
            .ok_or(StoreError::WriterGone)
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

    /// Calls `each` with every audit entry that decodes, in order (an entry that
    /// does not decode can only be in a trail started by operator override).
    pub fn each_audit_entry(&self, mut each: impl FnMut(AuditEntry)) -> Result<(), StoreError> {
        let txn = self.db()?.begin_read().map_err(StoreError::from_display)?;
        let table = txn.open_table(AUDIT).map_err(StoreError::from_display)?;
        for row in table.iter().map_err(StoreError::from_display)? {
            let (_, v) = row.map_err(StoreError::from_display)?;
            if let Ok(entry) = serde_json::from_slice::<AuditEntry>(v.value()) {
                each(entry);
            }
        }
        Ok(())
    }

    /// Every key-value entry whose key starts with `prefix`, in key order.
    pub fn kv_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(StoreError::from_display)?;
        let table = txn.open_table(KV).map_err(StoreError::from_display)?;
        let mut out = Vec::new();
        for row in table.range(prefix..).map_err(StoreError::from_display)? {
            let (k, v) = row.map_err(StoreError::from_display)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn verify_audit(&self) -> Result<audit::Verification, StoreError> {
        let db = self.db()?;
        audit::verify_trail(
            &db,
            Some(&self.audit.key),
            &self.audit.key_path,
            &self.audit.checkpoint_path,
            None,
        )
        .map(|r| r.verification())
        .map_err(|e| match e {
            AuditError::Store(s) => s,
            other => StoreError::Db(other.to_string()),
        })
    }

    pub fn tail_audit(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        audit::tail_db(&*self.db()?, n)
    }
}

/// The writer's position in the audit chain.
struct Chain {
    /// The next entry's position.
    seq: u64,
    /// The last entry's hash.
    prev: String,
    /// Length covered by the latest checkpoint.
    checkpointed: u64,
    /// The record of the latest periodic checkpoint, to seal with the next commit.
    note: Option<AuditRecord>,
}

fn writer(
    db: Arc<Database>,
    rx: mpsc::Receiver<Op>,
    mut chain: Chain,
    audit: Arc<AuditSetup>,
    redactor: Arc<OnceLock<Redactor>>,
) {
    let mut pending: Vec<Request> = Vec::new();
    let mut deadline: Option<std::time::Instant> = None;
    let mut closing = None;
    let mut flushed = Vec::new();
    let mut poisoned: Option<String> = None;
    loop {
        let first = match deadline {
            None => rx.recv().map_err(|_| ()),
            Some(d) => {
                match rx.recv_timeout(d.saturating_duration_since(std::time::Instant::now())) {
                    Ok(op) => Ok(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => Ok(Op::Tick),
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                }
            }
        };
        let Ok(first) = first else {
            break;
        };
        let mut commit_now = false;
        let mut durable = false;
        let mut op = Some(first);
        while let Some(next) = op.take() {
            match next {
                Op::Write(req) => {
                    commit_now |= req.mode != Mode::Deferred;
                    durable |= req.mode == Mode::Durable;
                    pending.push(req);
                }
                Op::Flush(reply) => {
                    commit_now = true;
                    flushed.push(reply);
                }
                Op::Close(reply) => {
                    commit_now = true;
                    durable = true;
                    closing = Some(reply);
                }
                Op::Tick => commit_now = true,
            }
            if pending.len() < MAX_BATCH && closing.is_none() {
                op = rx.try_recv().ok();
            }
        }
        if !commit_now && pending.len() < MAX_BATCH {
            deadline.get_or_insert_with(|| {
                std::time::Instant::now() + std::time::Duration::from_millis(DEFER_MS)
            });
            continue;
        }
        deadline = None;
        let batch = std::mem::take(&mut pending);
        let result = match &poisoned {
            // After a failed commit nothing more is written: records after a lost one
            // would hide the gap.
            Some(e) => Err(e.clone()),
            None if batch.is_empty() && !durable => Ok(()),
            None => {
                let before = (chain.seq, chain.prev.clone());
                let r = commit_batch(&db, &batch, durable, &mut chain, &audit.key, redactor.get());
                if r.is_ok() {
                    chain.note = None;
                }
                match &r {
                    Err(e) => {
                        (chain.seq, chain.prev) = before;
                        poisoned = Some(format!("an earlier commit failed: {e}"));
                    }
                    // Only a durable chain is checkpointed: a crash cannot take back
                    // what a checkpoint covers.
                    Ok(()) if durable => {
                        let due = chain.seq >= chain.checkpointed.saturating_add(audit.every)
                            || (closing.is_some() && chain.seq > chain.checkpointed);
                        if due {
                            match audit.checkpoint(chain.seq, &chain.prev) {
                                Ok(()) => {
                                    chain.checkpointed = chain.seq;
                                    // Recorded in the trail too: deleting the
                                    // checkpoint file alone is then detected.
                                    chain.note =
                                        Some(audit::checkpoint_note(chain.seq, &chain.prev));
                                }
                                Err(e) => tracing::error!(error = %e,
                                    "could not write an audit checkpoint"),
                            }
                        }
                    }
                    Ok(()) => {}
                }
                r
            }
        };
        for req in batch {
            let _ = req.reply.send(result.clone().map_err(StoreError::Db));
        }
        for reply in flushed.drain(..) {
            let _ = reply.send(());
        }
        if closing.is_some() {
            break;
        }
    }
    drop(db);
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

fn commit_batch(
    db: &Database,
    batch: &[Request],
    durable: bool,
    chain: &mut Chain,
    key: &AuditKey,
    redactor: Option<&Redactor>,
) -> Result<(), String> {
    let note = chain.note.clone();
    let Chain {
        seq: audit_seq,
        prev: audit_prev,
        ..
    } = chain;
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    {
        let mut audit = txn.open_table(AUDIT).map_err(|e| e.to_string())?;
        let mut kv = txn.open_table(KV).map_err(|e| e.to_string())?;
        if let Some(note) = note {
            let entry = AuditEntry::seal(
                *audit_seq,
                unix_ms(SystemTime::now()),
                note,
                std::mem::take(audit_prev),
                key,
            );
            let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            audit
                .insert(*audit_seq, bytes.as_slice())
                .map_err(|e| e.to_string())?;
            *audit_prev = entry.hash;
            *audit_seq += 1;
        }
        for req in batch {
            for record in &req.batch.audit {
                let mut record = record.clone();
                if let Some(r) = redactor {
                    r.redact_json(&mut record.detail);
                }
                let entry = AuditEntry::seal(
                    *audit_seq,
                    unix_ms(req.at),
                    record,
                    std::mem::take(audit_prev),
                    key,
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
