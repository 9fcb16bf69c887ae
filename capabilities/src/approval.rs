//! Approvals: an approver's signature over one proposal id and the hash of its exact
//! arguments, with an expiry. The server checking an approval never needs the
//! approver's private key, and an approval cannot be moved to other arguments or to
//! another proposal.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::args::{Args, args_hash, encode_bytes};
use crate::error::ApprovalError;
use crate::spec::{rfc3339, unix_secs};
use crate::{KeyPair, PublicKey};

/// A signed approval of one proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approved proposal's id.
    pub proposal_id: String,
    /// SHA-256 of the proposal's canonical arguments, hex.
    pub args_hash: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The approver's public key, hex.
    pub approver: String,
    /// Ed25519 signature over [`Approval::message`], hex.
    pub signature: String,
}

impl Approval {
    /// Signs an approval of `proposal_id` with exactly `args`, valid until `expires_at`.
    pub fn sign(
        approver: &KeyPair,
        proposal_id: &str,
        args: &Args,
        expires_at: SystemTime,
    ) -> Self {
        let hash = args_hash(args);
        let expires_at = unix_secs(expires_at);
        let signature = approver.sign(&Self::message(proposal_id, &hash, expires_at));
        Approval {
            proposal_id: proposal_id.to_string(),
            args_hash: hex::encode(hash),
            expires_at,
            approver: approver.public().to_hex(),
            signature: hex::encode(signature),
        }
    }

    /// The bytes an approver signs. Operators' tools (the dashboard signs in the
    /// browser) build the same bytes: tag, proposal id, argument hash, expiry.
    pub fn message(proposal_id: &str, args_hash: &[u8; 32], expires_at: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        let mut push = |b: &[u8]| out.extend_from_slice(b);
        push(b"bulwark-approval-v1\0");
        encode_bytes(proposal_id.as_bytes(), &mut push);
        push(args_hash);
        push(&expires_at.to_be_bytes());
        out
    }

    /// Checks that this approval, by one of `trusted`, approves `proposal_id` with
    /// exactly `args` at time `now`. Returns the approver's key.
    pub fn verify(
        &self,
        proposal_id: &str,
        args: &Args,
        trusted: &[PublicKey],
        now: SystemTime,
    ) -> Result<PublicKey, ApprovalError> {
        let approver = PublicKey::from_hex(&self.approver)
            .map_err(|e| ApprovalError::Malformed(e.to_string()))?;
        if !trusted.contains(&approver) {
            return Err(ApprovalError::UntrustedApprover(approver.to_hex()));
        }
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut signature)
            .map_err(|_| ApprovalError::Malformed("signature is not 128 hex digits".into()))?;
        let mut signed_hash = [0u8; 32];
        hex::decode_to_slice(&self.args_hash, &mut signed_hash)
            .map_err(|_| ApprovalError::Malformed("args_hash is not 64 hex digits".into()))?;
        let message = Self::message(&self.proposal_id, &signed_hash, self.expires_at);
        if !approver.verify(&message, &signature) {
            return Err(ApprovalError::BadSignature);
        }
        if self.proposal_id != proposal_id {
            return Err(ApprovalError::WrongProposal {
                approved: self.proposal_id.clone(),
                requested: proposal_id.to_string(),
            });
        }
        if signed_hash != args_hash(args) {
            return Err(ApprovalError::WrongArguments);
        }
        if unix_secs(now) > self.expires_at {
            return Err(ApprovalError::Expired(rfc3339(self.expires_at)));
        }
        Ok(approver)
    }
}
