//! Signed checkpoints: the chain's length and head hash, signed with the audit key,
//! appended one JSON line at a time to a file beside the database (never inside it).
//!
//! A checkpoint pins a prefix of the trail: an entry removed from the end or a head
//! rewritten at a checkpointed length no longer matches it. The file is plain text so
//! that its lines can be copied elsewhere (an external anchor); a copy held where
//! whoever can write the data directory cannot reach also survives deletion of this
//! file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditError, AuditKey};

/// The checkpoint file's default name inside a data directory.
pub const CHECKPOINT_FILE: &str = "audit.checkpoints";

/// Format version of a checkpoint line.
const CHECKPOINT_VERSION: u16 = 1;

/// One signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version (1).
    pub v: u16,
    /// How many entries the trail held.
    pub len: u64,
    /// The hash of entry `len - 1`.
    pub head: String,
    /// When it was signed, ms since the Unix epoch.
    pub at_ms: u64,
    /// The audit key's public half (Ed25519), hex.
    pub key: String,
    /// Ed25519 signature over the signed text (see [`Checkpoint::signed_text`]), hex.
    pub sig: String,
}

impl Checkpoint {
    /// The exact text that is signed.
    pub fn signed_text(&self) -> String {
        format!(
            "bulwark audit checkpoint v{}\nlen {}\nhead {}\nat {}\n",
            self.v, self.len, self.head, self.at_ms
        )
    }

    pub(crate) fn sign(key: &AuditKey, len: u64, head: String, at_ms: u64) -> Self {
        let mut c = Checkpoint {
            v: CHECKPOINT_VERSION,
            len,
            head,
            at_ms,
            key: key.public_hex(),
            sig: String::new(),
        };
        c.sig = key.sign_hex(c.signed_text().as_bytes());
        c
    }
}

/// One complete line of a checkpoint file, parsed but not yet verified.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    /// Where it is, for messages: `checkpoint line N` or `anchored checkpoint line N`.
    pub place: String,
    /// SHA-256 of the line's text, hex: how an override names a line it disowns.
    pub digest: String,
    pub parsed: Result<Checkpoint, String>,
}

/// Reads the complete lines of a checkpoint file; none when it does not exist. A
/// last line without its newline (an append cut short by a crash) is not a
/// checkpoint and is left out.
pub(crate) fn read(path: &Path, label: &str) -> Result<Vec<Line>, AuditError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AuditError::Io {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let complete = match text.iter().rposition(|b| *b == b'\n') {
        Some(i) => &text[..=i],
        None => &[][..],
    };
    let mut out = Vec::new();
    for (i, raw) in complete.split(|b| *b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        let parsed = serde_json::from_slice::<Checkpoint>(raw).map_err(|e| e.to_string());
        out.push(Line {
            place: format!("{label} line {}", i + 1),
            digest: hex::encode(Sha256::digest(raw)),
            parsed,
        });
    }
    Ok(out)
}

/// Cuts a torn last line (no newline) so the next append starts on a line of its own.
pub(crate) fn repair_tail(path: &Path) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(());
    }
    let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let f = OpenOptions::new().write(true).open(path).map_err(io)?;
    f.set_len(keep as u64).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Appends one checkpoint line and syncs it.
pub(crate) fn append(path: &Path, checkpoint: &Checkpoint) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut line = serde_json::to_vec(checkpoint).map_err(|e| AuditError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&line).map_err(io)?;
    f.sync_data().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_not_read_and_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let c = Checkpoint::sign(&key, 3, "ab".repeat(32), 1);
        append(&path, &c).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\":1,\"len\":").unwrap();
        let lines = read(&path, "checkpoint").unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].parsed.as_ref().unwrap(), &c);
        repair_tail(&path).unwrap();
        let c2 = Checkpoint::sign(&key, 5, "cd".repeat(32), 2);
        append(&path, &c2).unwrap();
        let lines = read(&path, "checkpoint").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].parsed.as_ref().unwrap(), &c2);
        assert_eq!(lines[1].place, "checkpoint line 2");
    }
}
