//! Revocations across the cluster: signed by an operator, broadcast to every node,
//! persisted by each, and fetched from peers by a node that (re)joins before it
//! serves.
//!
//! A revocation names a token block's revocation id. It is signed with an operator
//! key under the domain `bulwark-revocation-v1`; a node applies it only when the key is
//! one of its operator keys. Replaying a revocation is harmless: revoking twice is
//! revoking once.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_capabilities::{DomainSignature, KeyPair, PublicKey};
use serde::{Deserialize, Serialize};

/// Format version of signed revocations.
pub const REVOCATION_FORMAT: u16 = 1;

/// The domain tag of revocation signatures.
pub const REVOCATION_DOMAIN: &str = "bulwark-revocation-v1";

/// The file in a node's data directory that keeps the signed revocations it applied,
/// one JSON object per line, to hand to nodes that join later.
pub const REVOCATIONS_FILE: &str = "cluster-revocations.jsonl";

/// Most revocations a node hands over or takes in one answer.
pub const MAX_REVOCATIONS: usize = 100_000;

/// An operator's signed revocation of one token block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocation {
    /// Format version ([`REVOCATION_FORMAT`]).
    pub v: u16,
    /// The revoked block's revocation id (hex).
    pub id: String,
    /// The operator's public key (hex).
    pub operator: String,
    /// When it was signed, ms since the epoch.
    pub issued_ms: u64,
    /// The operator's signature (hex).
    pub sig: String,
}

/// Why a revocation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationError {
    /// Not a revocation this release reads.
    #[error("malformed revocation: {0}")]
    Malformed(String),
    /// Signed by a key that is not one of the node's operators.
    #[error("revocation signed by {0}, which is not an operator key of this node")]
    NotAnOperator(String),
    /// The signature does not hold.
    #[error("the revocation's signature does not verify")]
    Signature,
}

impl SignedRevocation {
    /// Signs the revocation of block `id` with `operator`.
    pub fn sign(operator: &KeyPair, id: &[u8], now: SystemTime) -> SignedRevocation {
        let issued_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let id = hex::encode(id);
        let sig = DomainSignature::sign(operator, REVOCATION_DOMAIN, &signed(&id, issued_ms));
        SignedRevocation {
            v: REVOCATION_FORMAT,
            id,
            operator: operator.public().to_hex(),
            issued_ms,
            sig: hex::encode(sig.0),
        }
    }

    /// The revoked block id, once the signature is an operator's.
    pub fn verify(&self, operators: &[PublicKey]) -> Result<Vec<u8>, RevocationError> {
        if self.v != REVOCATION_FORMAT {
            return Err(RevocationError::Malformed(format!("format {}", self.v)));
        }
        let id = hex::decode(&self.id)
            .ok()
            .filter(|b| !b.is_empty() && b.len() <= 128)
            .ok_or_else(|| RevocationError::Malformed("the id is not hex".into()))?;
        let key = PublicKey::from_hex(&self.operator)
            .map_err(|e| RevocationError::Malformed(e.to_string()))?;
        if !operators.contains(&key) {
            return Err(RevocationError::NotAnOperator(self.operator.clone()));
        }
        let sig: [u8; 64] = hex::decode(&self.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(RevocationError::Signature)?;
        if !DomainSignature(sig).verify(&key, REVOCATION_DOMAIN, &signed(&self.id, self.issued_ms))
        {
            return Err(RevocationError::Signature);
        }
        Ok(id)
    }
}

fn signed(id: &str, issued_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + 16);
    out.extend_from_slice(&(id.len() as u64).to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&issued_ms.to_be_bytes());
    out
}

/// The signed revocations kept in `data_dir` (lines that do not decode are skipped:
/// each is verified again before use anyway).
pub fn load(data_dir: &Path) -> std::io::Result<Vec<SignedRevocation>> {
    let path = data_dir.join(REVOCATIONS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(MAX_REVOCATIONS)
        .collect())
}

/// Appends `revocation` to the file in `data_dir`, synced.
pub fn append(data_dir: &Path, revocation: &SignedRevocation) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join(REVOCATIONS_FILE))?;
    let mut line = serde_json::to_vec(revocation).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_operator_signature_over_exactly_this_id_holds() {
        let operator = KeyPair::generate();
        let stranger = KeyPair::generate();
        let operators = [operator.public()];
        let r = SignedRevocation::sign(&operator, b"\x01\x02", SystemTime::now());
        assert_eq!(r.verify(&operators), Ok(vec![1, 2]));

        let forged = SignedRevocation::sign(&stranger, b"\x01\x02", SystemTime::now());
        assert!(matches!(
            forged.verify(&operators),
            Err(RevocationError::NotAnOperator(_))
        ));
        let mut relabeled = forged.clone();
        relabeled.operator = operator.public().to_hex();
        assert_eq!(
            relabeled.verify(&operators),
            Err(RevocationError::Signature)
        );
        let mut other_id = r.clone();
        other_id.id = "0103".into();
        assert_eq!(other_id.verify(&operators), Err(RevocationError::Signature));
        let mut garbage = r;
        garbage.id = "zz".into();
        assert!(matches!(
            garbage.verify(&operators),
            Err(RevocationError::Malformed(_))
        ));
    }
}
