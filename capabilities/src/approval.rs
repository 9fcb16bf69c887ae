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

/// What an operator decides against a proposal: to reject it, or to cancel an action
/// inside its rollback window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The proposal must not run.
    Reject,
    /// The action that ran must be undone (its compensation runs).
    Cancel,
}

impl DecisionKind {
    fn tag(self) -> u8 {
        match self {
            DecisionKind::Reject => 1,
            DecisionKind::Cancel => 2,
        }
    }
}

/// An operator's signed rejection or cancellation of one proposal, with a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Reject or cancel.
    pub kind: DecisionKind,
    /// The proposal.
    pub proposal_id: String,
    /// Why, in the operator's words.
    pub reason: String,
    /// When it was signed, seconds since the Unix epoch.
    pub signed_at: u64,
    /// The operator's public key, hex.
    pub approver: String,
    /// Ed25519 signature over [`Decision::message`], hex.
    pub signature: String,
}

/// How long a signed decision stays usable after it was signed.
pub const DECISION_VALIDITY_SECS: u64 = 15 * 60;

impl Decision {
    /// Signs a decision about `proposal_id`.
    pub fn sign(
        operator: &KeyPair,
        kind: DecisionKind,
        proposal_id: &str,
        reason: &str,
        at: SystemTime,
    ) -> Self {
        let signed_at = unix_secs(at);
        let signature = operator.sign(&Self::message(kind, proposal_id, reason, signed_at));
        Decision {
            kind,
            proposal_id: proposal_id.to_string(),
            reason: reason.to_string(),
            signed_at,
            approver: operator.public().to_hex(),
            signature: hex::encode(signature),
        }
    }

    /// The bytes an operator signs: tag, kind, proposal id, reason, time.
    pub fn message(kind: DecisionKind, proposal_id: &str, reason: &str, signed_at: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + reason.len());
        let mut push = |b: &[u8]| out.extend_from_slice(b);
        push(b"bulwark-decision-v1\0");
        push(&[kind.tag()]);
        encode_bytes(proposal_id.as_bytes(), &mut push);
        encode_bytes(reason.as_bytes(), &mut push);
        push(&signed_at.to_be_bytes());
        out
    }

    /// Checks that this decision, by one of `trusted`, is about `proposal_id`, of
    /// `kind`, and recent at `now`. Returns the operator's key.
    pub fn verify(
        &self,
        kind: DecisionKind,
        proposal_id: &str,
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
        let message = Self::message(self.kind, &self.proposal_id, &self.reason, self.signed_at);
        if !approver.verify(&message, &signature) {
            return Err(ApprovalError::BadSignature);
        }
        if self.proposal_id != proposal_id {
            return Err(ApprovalError::WrongProposal {
                approved: self.proposal_id.clone(),
                requested: proposal_id.to_string(),
            });
        }
        if self.kind != kind {
            return Err(ApprovalError::Malformed(format!(
                "this is a signed {:?}, not a {:?}",
                self.kind, kind
            )));
        }
        if unix_secs(now) > self.signed_at + DECISION_VALIDITY_SECS {
            return Err(ApprovalError::Expired(rfc3339(
                self.signed_at + DECISION_VALIDITY_SECS,
            )));
        }
        Ok(approver)
    }
}

#[cfg(test)]
mod decision_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_decision_binds_its_proposal_kind_and_reason() {
        let op = KeyPair::generate();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Decision::sign(&op, DecisionKind::Reject, "p-1", "wrong vendor", now);
        let trusted = [op.public()];
        assert!(d.verify(DecisionKind::Reject, "p-1", &trusted, now).is_ok());
        assert!(
            d.verify(DecisionKind::Reject, "p-2", &trusted, now)
                .is_err()
        );
        assert!(
            d.verify(DecisionKind::Cancel, "p-1", &trusted, now)
                .is_err()
        );
        assert!(
            d.verify(
                DecisionKind::Reject,
                "p-1",
                &[KeyPair::generate().public()],
                now
            )
            .is_err()
        );
        let mut edited = d.clone();
        edited.reason = "fine".into();
        assert!(matches!(
            edited.verify(DecisionKind::Reject, "p-1", &trusted, now),
            Err(ApprovalError::BadSignature)
        ));
        let late = now + Duration::from_secs(DECISION_VALIDITY_SECS + 1);
        assert!(
            d.verify(DecisionKind::Reject, "p-1", &trusted, late)
                .is_err()
        );
    }
}
