//! The audit trail: append-only, keyed hash-chained entries in redb, and signed
//! checkpoints of the chain beside it.
//!
//! Each entry's hash is an HMAC-SHA256, under the audit key, of its canonical JSON,
//! which includes its predecessor's hash; changing, removing or reordering any stored
//! byte breaks the chain at that entry, and without the audit key (a file outside the
//! database, see [`AuditKey`]) no one can compute a valid replacement. Removing
//! entries from the end leaves a valid shorter chain: the signed checkpoints (see
//! `checkpoint.rs`) catch that. Entries are appended only through the journal writer
//! (see `journal.rs`); there is no API to edit or delete one.
//!
//! On-disk format: version 2 entries carry `"v":2` and the keyed hash. Version 1 (an
//! earlier release) has no `v` field and an unkeyed SHA-256 over the predecessor's
//! hash and the entry; such entries are accepted only as a prefix sealed by a
//! migration (see [`AuditConfig::migrate_legacy_trail`]).

mod checkpoint;
mod key;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use checkpoint::{CHECKPOINT_FILE, Checkpoint};
pub use key::{AUDIT_KEY_FILE, AuditKey};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::layout::DB_FILE;
use crate::ledger::LedgerCommand;

mod kind;
pub use kind::AuditKind;

pub(crate) use crate::layout::AUDIT;

/// What an audit entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The kind of event by its name in the trail ([`AuditKind::as_str`]): `tool.call`,
    /// `tool.result`, `tool.denied`, `model.call`, `agent.spawn`, ... Kept as text so
    /// that a trail written by another release still decodes.
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
    pub fn new(kind: AuditKind, agent: &str, detail: serde_json::Value) -> Self {
        AuditRecord {
            kind: kind.as_str().to_string(),
            agent: agent.to_string(),
            token_id: String::new(),
            chain: Vec::new(),
            detail,
            ledger: None,
        }
    }

    /// The kind, if this release knows it.
    pub fn kind(&self) -> Option<AuditKind> {
        AuditKind::parse(&self.kind)
    }

    /// Attaches the ledger command this event applies.
    pub fn with_ledger(mut self, cmd: LedgerCommand) -> Self {
        self.ledger = Some(cmd);
        self
    }
}

/// Format version of entries written now.
pub const AUDIT_FORMAT: u16 = 2;
/// Kind of the entry recording an operator's override of a broken trail.
pub const OVERRIDE_KIND: &str = AuditKind::AuditOverride.as_str();
/// Kind of the entry sealing a legacy (format 1) trail under the audit key.
pub const MIGRATED_KIND: &str = AuditKind::AuditMigrated.as_str();
/// Kind of the entry recording a periodic checkpoint (its length and head), so that a
/// checkpoint file replaced or emptied is detected from the trail itself.
pub const CHECKPOINT_KIND: &str = AuditKind::AuditCheckpoint.as_str();
/// Entries between two periodic checkpoints, by default.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1024;

fn legacy_format() -> u16 {
    1
}

fn is_legacy(v: &u16) -> bool {
    *v == 1
}

/// A stored entry: a record with its position, time and chain hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Format version: 2 (keyed); 1 (unkeyed, an earlier release) is not written.
    #[serde(default = "legacy_format", skip_serializing_if = "is_legacy")]
    pub v: u16,
    /// Position in the trail, from 0.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// Format 2: HMAC-SHA256 under the audit key of this entry's JSON without `hash`
    /// (which includes `prev`). Format 1: SHA-256 over `prev` and that JSON.
    pub hash: String,
}

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditEntry {
    pub(crate) fn seal(
        seq: u64,
        at_ms: u64,
        record: AuditRecord,
        prev: String,
        key: &AuditKey,
    ) -> Self {
        let mut entry = AuditEntry {
            v: AUDIT_FORMAT,
            seq,
            at_ms,
            record,
            prev,
            hash: String::new(),
        };
        // `hash` is still empty: this is the body the MAC covers.
        let body = serde_json::to_vec(&entry).unwrap_or_default();
        entry.hash = key.mac_hex(&body);
        entry
    }

    /// This entry's JSON without its hash. serde_json writes struct fields in
    /// declaration order and `detail` maps in sorted order (no `preserve_order`), so
    /// the encoding is canonical.
    fn body(&self) -> Vec<u8> {
        let mut unsealed = self.clone();
        unsealed.hash.clear();
        serde_json::to_vec(&unsealed).unwrap_or_default()
    }

    fn legacy_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(self.body());
        hex::encode(h.finalize())
    }
}

/// How the audit trail is keyed, checkpointed and checked at start.
#[derive(Clone, Debug, Default)]
pub struct AuditConfig {
    key_file: Option<PathBuf>,
    checkpoint_file: Option<PathBuf>,
    anchor_file: Option<PathBuf>,
    checkpoint_every: Option<u64>,
    accept_broken: Option<String>,
    migrate_legacy: bool,
}

impl AuditConfig {
    /// Where the audit key lives (default `DATA_DIR/audit.key`, created on first
    /// start). A path outside the data directory, on storage whoever can write the
    /// database cannot read, is the stronger deployment: with the key beside the
    /// database, someone who can read the whole data directory can forge entries.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Where signed checkpoints are appended (default `DATA_DIR/audit.checkpoints`).
    pub fn checkpoint_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint_file = Some(path.into());
        self
    }

    /// A copy of checkpoint lines kept elsewhere (an external anchor) to check the
    /// trail against as well, when verifying. A copy taken at any time works: each of
    /// its lines must still match the trail.
    pub fn anchor_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.anchor_file = Some(path.into());
        self
    }

    /// A checkpoint is signed after a durable commit once this many entries were
    /// appended since the last one (default [`DEFAULT_CHECKPOINT_EVERY`]), and at
    /// every clean shutdown. At least 1.
    pub fn checkpoint_every(mut self, entries: u64) -> Self {
        self.checkpoint_every = Some(entries.max(1));
        self
    }

    /// Starts even when the trail does not verify, accepting the stored trail as it
    /// is (the budget ledger is rebuilt from it, tampered or not). The override is
    /// recorded in the trail (kind `audit.override`, with what broke and `reason`),
    /// and later verifications report that break as accepted, not as intact.
    pub fn start_despite_broken_trail(mut self, reason: impl Into<String>) -> Self {
        self.accept_broken = Some(reason.into());
        self
    }

    /// Seals a trail written by an earlier release (format 1, unkeyed) under the
    /// audit key: an `audit.migrated` entry, keyed, links to its last entry, so from
    /// then on the whole trail is covered. An unkeyed trail could have been rewritten
    /// before; migrate only a trail you trust.
    pub fn migrate_legacy_trail(mut self) -> Self {
        self.migrate_legacy = true;
        self
    }

    /// The audit key's path for `data_dir`.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| key::default_key_path(data_dir))
    }

    /// The checkpoint file's path for `data_dir`.
    pub fn checkpoint_path(&self, data_dir: &Path) -> PathBuf {
        self.checkpoint_file
            .clone()
            .unwrap_or_else(|| data_dir.join(CHECKPOINT_FILE))
    }

    pub(crate) fn every(&self) -> u64 {
        self.checkpoint_every.unwrap_or(DEFAULT_CHECKPOINT_EVERY)
    }

    pub(crate) fn accepted_break(&self) -> Option<&str> {
        self.accept_broken.as_deref()
    }

    pub(crate) fn migrates_legacy(&self) -> bool {
        self.migrate_legacy
    }
}

/// Why the audit trail could not be keyed, read or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The key file is readable or writable by others.
    #[error(
        "{} has mode {mode:o}: the audit key must be readable by its owner only (chmod 600 {})",
        .path.display(), .path.display()
    )]
    InsecureKeyFile {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The key file is not an audit key.
    #[error("{} is not an audit key (`bulwark-audit-key-v1:` and 64 hex digits)", .0.display())]
    BadKeyFile(PathBuf),
    /// No key file where one is needed.
    #[error(
        "no audit key at {}: the trail is keyed and cannot be verified without it (give the key's path)",
        .0.display()
    )]
    MissingKey(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {reason}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The trail does not verify; the runtime does not start on it.
    #[error(
        "the audit trail in {} is broken at entry {seq}: {reason}. The budget ledger is rebuilt from this trail, so the runtime does not start on it. Inspect it with `bulwark audit verify --data-dir {}`; to start anyway, accepting the stored trail as it is, use AuditConfig::start_despite_broken_trail(REASON) (the override is recorded in the trail)",
        .dir.display(), .dir.display()
    )]
    Broken {
        /// The data directory.
        dir: PathBuf,
        /// The first bad position.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The trail was written by an earlier release, unkeyed.
    #[error(
        "the audit trail in {} has {entries} entries in format 1 (unkeyed, written by an earlier release), which cannot be told apart from a rewritten one. Check it (`bulwark audit verify --data-dir {}`) against a copy you trust, then start once with AuditConfig::migrate_legacy_trail() to seal it under the audit key (format 2)",
        .dir.display(), .dir.display()
    )]
    Legacy {
        /// The data directory.
        dir: PathBuf,
        /// How many format-1 entries it holds.
        entries: u64,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of verifying a trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Every entry is intact (breaks an operator accepted aside); the number of
    /// entries.
    Intact(u64),
    /// The first entry that does not verify, and why.
    Broken {
        /// The stored key of the first bad entry (for a removal from the end, the
        /// first missing position).
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Something that does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditProblem {
    /// The first bad position in the trail.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
    /// For a checkpoint that does not match: the digest of its line.
    pub(crate) line_digest: Option<String>,
}

/// A break an operator accepted with [`AuditConfig::start_despite_broken_trail`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedBreak {
    /// Where the trail was broken.
    pub broken_at: u64,
    /// The override entry's position.
    pub override_at: u64,
    /// The operator's reason.
    pub reason: String,
}

/// Everything a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries stored.
    pub entries: u64,
    /// Of them, format-1 (unkeyed) entries, a prefix sealed by a migration.
    pub legacy_entries: u64,
    /// The audit key's public half the checkpoints were checked against.
    pub key: Option<String>,
    /// Checkpoints that verified and match the trail.
    pub checkpoints: u64,
    /// The latest checkpoint that verified and matches.
    pub last_checkpoint: Option<Checkpoint>,
    /// Breaks accepted by an operator override.
    pub accepted: Vec<AcceptedBreak>,
    /// What does not verify: the trail's first bad entry, then each checkpoint that
    /// does not match. Empty when intact.
    pub problems: Vec<AuditProblem>,
}

impl AuditReport {
    /// The verdict.
    pub fn verification(&self) -> Verification {
        match self.problems.first() {
            None => Verification::Intact(self.entries),
            Some(p) => Verification::Broken {
                seq: p.seq,
                reason: p.reason.clone(),
            },
        }
    }
}

/// Read access to a stored trail (the runtime appends; readers only read).
pub struct AuditReader {
    db: redb::Database,
    key_path: PathBuf,
    checkpoint_path: PathBuf,
    anchor_path: Option<PathBuf>,
}

impl AuditReader {
    /// Opens the trail in a data directory for reading, with the key and checkpoints
    /// at their default places. Fails while a runtime holds it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, &AuditConfig::default())
    }

    /// Opens the trail with the key and checkpoint paths of `config`.
    pub fn open_with(data_dir: &Path, config: &AuditConfig) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let db = redb::Database::open(&path).map_err(StoreError::from_display)?;
        Ok(AuditReader {
            db,
            key_path: config.key_path(data_dir),
            checkpoint_path: config.checkpoint_path(data_dir),
            anchor_path: config.anchor_file.clone(),
        })
    }

    /// Checks every link and keyed hash, and the trail against every checkpoint.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        Ok(self.report()?.verification())
    }

    /// Everything a verification finds. Without a key file, only a trail entirely in
    /// format 1 (with no checkpoints) can be checked.
    pub fn report(&self) -> Result<AuditReport, AuditError> {
        let key = match AuditKey::load(&self.key_path) {
            Ok(k) => Some(k),
            Err(AuditError::MissingKey(_)) => None,
            Err(e) => return Err(e),
        };
        verify_trail(
            &self.db,
            key.as_ref(),
            &self.key_path,
            &self.checkpoint_path,
            self.anchor_path.as_deref(),
        )
    }

    /// The last `n` entries, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        tail_db(&self.db, n)
    }
}

/// Whether `entry`, stored at `seq` as `bytes`, is a genuine override accepting a
/// break at `broken_at`.
fn is_override_for(
    entry: &AuditEntry,
    seq: u64,
    bytes: &[u8],
    broken_at: u64,
    key: &AuditKey,
) -> bool {
    entry.v == AUDIT_FORMAT
        && entry.seq == seq
        && entry.record.kind == OVERRIDE_KIND
        && entry.record.detail["broken_at"].as_u64() == Some(broken_at)
        && key.mac_matches(&entry.body(), &entry.hash)
        && serde_json::to_vec(entry).ok().as_deref() == Some(bytes)
}

fn disowned_lines(entry: &AuditEntry) -> impl Iterator<Item = String> + '_ {
    entry.record.detail["disowned_checkpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
}

/// Checks one entry in sequence; the reason it fails.
fn check_entry(
    seq: u64,
    expected_seq: u64,
    prev: &str,
    keyed_seen: bool,
    bytes: &[u8],
    key: Option<&AuditKey>,
    key_path: &Path,
) -> Result<Result<AuditEntry, String>, AuditError> {
    if seq != expected_seq {
        return Ok(Err(format!(
            "expected entry {expected_seq}, found {seq}: entries removed or reordered"
        )));
    }
    let entry: AuditEntry = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) => return Ok(Err(format!("unreadable entry: {e}"))),
    };
    if entry.seq != seq {
        return Ok(Err(format!(
            "entry claims position {} but is stored at {seq}",
            entry.seq
        )));
    }
    if entry.prev != prev {
        return Ok(Err("its link to the previous entry does not match".into()));
    }
    match entry.v {
        AUDIT_FORMAT => {
            let Some(key) = key else {
                return Err(AuditError::MissingKey(key_path.to_path_buf()));
            };
            if !key.mac_matches(&entry.body(), &entry.hash) {
                return Ok(Err(
                    "its keyed hash does not match its contents under the audit key".into(),
                ));
            }
        }
        1 if keyed_seen => {
            return Ok(Err(
                "an unkeyed (format 1) entry after keyed ones: entries were rewritten".into(),
            ));
        }
        1 => {
            if entry.legacy_hash() != entry.hash {
                return Ok(Err("its contents do not match its hash".into()));
            }
        }
        v => return Ok(Err(format!("unknown entry format {v}"))),
    }
    // Re-encoding must give the stored bytes, so no byte can change unnoticed.
    if serde_json::to_vec(&entry).ok().as_deref() != Some(bytes) {
        return Ok(Err("its stored bytes are not in canonical form".into()));
    }
    Ok(Ok(entry))
}

/// Verifies the trail in `db` with `key` (none: only format 1 can be checked) against
/// the checkpoints in `checkpoint_path`.
pub(crate) fn verify_trail(
    db: &redb::Database,
    key: Option<&AuditKey>,
    key_path: &Path,
    checkpoint_path: &Path,
    anchor_path: Option<&Path>,
) -> Result<AuditReport, AuditError> {
    // Checkpoints first: each was written after the commit it covers, so the trail
    // read next holds at least what they cover.
    let mut lines = checkpoint::read(checkpoint_path, "checkpoint")?;
    // Only the live file's lines answer for the checkpoints the trail records; an
    // anchored copy may be older.
    let live_lines = lines.len();
    if let Some(anchor) = anchor_path {
        if !anchor.exists() {
            return Err(AuditError::Io {
                path: anchor.to_path_buf(),
                reason: "no such anchored checkpoint file".into(),
            });
        }
        lines.extend(checkpoint::read(anchor, "anchored checkpoint")?);
    }
    if !lines.is_empty() && key.is_none() {
        return Err(AuditError::MissingKey(key_path.to_path_buf()));
    }
    let wanted: HashSet<u64> = lines
        .iter()
        .filter_map(|l| l.parsed.as_ref().ok())
        .filter(|c| c.len > 0)
        .map(|c| c.len - 1)
        .collect();
    let mut heads: HashMap<u64, String> = HashMap::new();

    let txn = db.begin_read().map_err(StoreError::from_display)?;
    let mut report = AuditReport {
        entries: 0,
        legacy_entries: 0,
        key: key.map(AuditKey::public_hex),
        checkpoints: 0,
        last_checkpoint: None,
        accepted: Vec::new(),
        problems: Vec::new(),
    };
    let mut disowned: HashSet<String> = HashSet::new();
    let mut next_seq = 0u64;
    // Checkpoints the trail records (entry position, length, head), and the latest
    // override: it accepted the checkpoint file as it then was.
    let mut notes: Vec<(u64, u64, String)> = Vec::new();
    let mut last_override: Option<u64> = None;
    match txn.open_table(AUDIT) {
        Ok(table) => {
            let mut prev = GENESIS.to_string();
            let mut expected_seq = 0u64;
            let mut keyed_seen = false;
            let mut pending: Option<AuditProblem> = None;
            for row in table.iter().map_err(StoreError::from_display)? {
                let (k, v) = row.map_err(StoreError::from_display)?;
                let (seq, bytes) = (k.value(), v.value());
                report.entries += 1;
                next_seq = seq + 1;
                let decoded = serde_json::from_slice::<AuditEntry>(bytes).ok();
                if let (true, Some(e)) = (wanted.contains(&seq), &decoded) {
                    heads.insert(seq, e.hash.clone());
                }
                if let Some(p) = &pending {
                    // After a break nothing verifies until an override accepting it.
                    if let (Some(e), Some(key)) = (&decoded, key)
                        && is_override_for(e, seq, bytes, p.seq, key)
                    {
                        report.accepted.push(AcceptedBreak {
                            broken_at: p.seq,
                            override_at: seq,
                            reason: e.record.detail["operator_reason"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        });
                        disowned.extend(disowned_lines(e));
                        last_override = Some(seq);
                        pending = None;
                        prev = e.hash.clone();
                        expected_seq = seq + 1;
                        keyed_seen = true;
                    }
                    continue;
                }
                match check_entry(seq, expected_seq, &prev, keyed_seen, bytes, key, key_path)? {
                    Ok(e) => {
                        if e.v == 1 {
                            report.legacy_entries += 1;
                        } else {
                            keyed_seen = true;
                        }
                        if e.record.kind == OVERRIDE_KIND {
                            // An override of checkpoints that no longer matched (the
                            // entries themselves verified).
                            report.accepted.push(AcceptedBreak {
                                broken_at: e.record.detail["broken_at"].as_u64().unwrap_or(seq),
                                override_at: seq,
                                reason: e.record.detail["operator_reason"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_string(),
                            });
                            disowned.extend(disowned_lines(&e));
                            last_override = Some(seq);
                        }
                        if e.record.kind == CHECKPOINT_KIND
                            && let (Some(len), Some(head)) = (
                                e.record.detail["len"].as_u64(),
                                e.record.detail["head"].as_str(),
                            )
                        {
                            notes.push((seq, len, head.to_string()));
                        }
                        prev = e.hash;
                        expected_seq += 1;
                    }
                    Err(reason) => {
                        pending = Some(AuditProblem {
                            seq,
                            reason,
                            line_digest: None,
                        })
                    }
                }
            }
            report.problems.extend(pending);
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(StoreError::from_display(e).into()),
    }

    let mut signed_lines: HashSet<(u64, &str)> = HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let (Ok(c), Some(k), true) = (&line.parsed, key, i < live_lines)
            && c.key == k.public_hex()
            && k.signature_matches(c.signed_text().as_bytes(), &c.sig)
        {
            signed_lines.insert((c.len, c.head.as_str()));
        }
        if disowned.contains(&line.digest) {
            continue;
        }
        let n = &line.place;
        let fail = |seq: u64, reason: String| AuditProblem {
            seq,
            reason,
            line_digest: Some(line.digest.clone()),
        };
        let c = match &line.parsed {
            Ok(c) => c,
            Err(e) => {
                report
                    .problems
                    .push(fail(next_seq, format!("{n} is unreadable: {e}")));
                continue;
            }
        };
        let signed = key.is_some_and(|k| {
            c.key == k.public_hex() && k.signature_matches(c.signed_text().as_bytes(), &c.sig)
        });
        if !signed {
            report.problems.push(fail(
                c.len.saturating_sub(1).min(next_seq),
                format!("{n} is not signed by the audit key"),
            ));
            continue;
        }
        if c.len > next_seq {
            report.problems.push(fail(
                next_seq,
                format!(
                    "the trail ends after {next_seq} entries but {n} (signed at {}) covers {}: entries were removed from the end",
                    ms_text(c.at_ms),
                    c.len
                ),
            ));
            continue;
        }
        let matches = c.len == 0 || heads.get(&(c.len - 1)) == Some(&c.head);
        if !matches {
            report.problems.push(fail(
                c.len - 1,
                format!(
                    "entry {} is not the head signed in {n} (signed at {}): the trail was rewritten",
                    c.len - 1,
                    ms_text(c.at_ms)
                ),
            ));
            continue;
        }
        report.checkpoints += 1;
        if report
            .last_checkpoint
            .as_ref()
            .is_none_or(|l| c.len >= l.len)
        {
            report.last_checkpoint = Some(c.clone());
        }
    }
    for (seq, len, head) in notes {
        if last_override.is_some_and(|o| seq < o) {
            continue;
        }
        if !signed_lines.contains(&(len, head.as_str())) {
            report.problems.push(AuditProblem {
                seq,
                reason: format!(
                    "entry {seq} records a checkpoint of {len} entries that is not in the checkpoint file: the file was replaced or lines were removed"
                ),
                line_digest: None,
            });
        }
    }
    Ok(report)
}

/// Whether the trail holds keyed entries (judged by its last entry; one that does not
/// decode counts as keyed).
pub(crate) fn is_keyed(db: &redb::Database) -> Result<bool, StoreError> {
    let txn = db.begin_read().map_err(StoreError::from_display)?;
    let table = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(StoreError::from_display(e)),
    };
    let last = table.last().map_err(StoreError::from_display)?;
    Ok(last.is_some_and(|(_, v)| {
        serde_json::from_slice::<AuditEntry>(v.value()).map_or(true, |e| e.v != 1)
    }))
}

/// The trail's record of a checkpoint of `len` entries with head `head`.
pub(crate) fn checkpoint_note(len: u64, head: &str) -> AuditRecord {
    AuditRecord::new(
        AuditKind::AuditCheckpoint,
        "runtime",
        serde_json::json!({"len": len, "head": head}),
    )
}

pub(crate) fn checkpoint_append(path: &Path, c: &Checkpoint) -> Result<(), AuditError> {
    checkpoint::append(path, c)
}

pub(crate) fn checkpoint_repair(path: &Path) -> Result<(), AuditError> {
    checkpoint::repair_tail(path)
}

fn ms_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
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

/// The next position and the last entry's hash, to continue the chain after a
/// restart. A last entry that does not decode (accepted by an override) is linked to
/// by the SHA-256 of its stored bytes.
pub(crate) fn head(txn: &redb::WriteTransaction) -> Result<(u64, String), StoreError> {
    let table = txn.open_table(AUDIT).map_err(StoreError::from_display)?;
    let last = table.last().map_err(StoreError::from_display)?;
    match last {
        None => Ok((0, GENESIS.to_string())),
        Some((k, v)) => {
            let hash = match serde_json::from_slice::<AuditEntry>(v.value()) {
                Ok(entry) => entry.hash,
                Err(_) => hex::encode(Sha256::digest(v.value())),
            };
            Ok((k.value() + 1, hash))
        }
    }
}
