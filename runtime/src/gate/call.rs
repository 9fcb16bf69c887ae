//! What a call to the gate carries: the caller's context and the signed call.
//!
//! The agent side signs a [`SignedCall`] with its holder key; the gate verifies it
//! against the caller's token. The signed call is plain data (serde), so the value a
//! remote node receives is the one a local gate verifies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_capabilities::{Denial, KeyPair, Request, SignedRequest, Token};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::RunControl;
use crate::clock::unix_ms;
use crate::error::GateError;
use crate::gate::Identity;
use crate::guard::Provenance;
use crate::tools::to_capability_args;

/// Format version of [`SignedCall`].
pub const CALL_FORMAT: u16 = 1;

/// One tool call signed by the caller's holder key: the agent, the tool, the exact
/// arguments, the time and a single-use nonce, bound to one token by its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedCall {
    /// Format version ([`CALL_FORMAT`]).
    pub v: u16,
    /// The calling agent.
    pub agent: String,
    /// The id of the token the call is made under (hex).
    pub token_id: String,
    /// The tool.
    pub tool: String,
    /// The arguments, as the tool receives them.
    pub args: Value,
    /// When it was signed, ms since the epoch.
    pub time_ms: u64,
    /// The single-use nonce (hex, 16 bytes).
    pub nonce: String,
    /// The holder's ed25519 signature (hex, 64 bytes).
    pub signature: String,
}

impl SignedCall {
    /// Signs a call of `tool` with `args` by `agent` under `token` with its holder key.
    pub fn sign(
        token: &Token,
        key: &KeyPair,
        agent: &str,
        tool: &str,
        args: Value,
        at: SystemTime,
    ) -> SignedCall {
        let time_ms = unix_ms(at);
        let request = Request {
            agent: agent.to_string(),
            tool: tool.to_string(),
            args: to_capability_args(&args),
            time: UNIX_EPOCH + Duration::from_millis(time_ms),
        };
        let signed = SignedRequest::sign(token, key, request);
        SignedCall {
            v: CALL_FORMAT,
            agent: agent.to_string(),
            token_id: token.id(),
            tool: tool.to_string(),
            args,
            time_ms,
            nonce: hex::encode(signed.nonce),
            signature: hex::encode(signed.signature),
        }
    }

    /// The request to verify, as the holder signed it. A call of another format, for
    /// another token, or with malformed fields is refused.
    pub(crate) fn request(&self, token: &Token) -> Result<SignedRequest, GateError> {
        let refuse = |why: String| GateError::Denied(Denial::Evaluation(why));
        if self.v != CALL_FORMAT {
            return Err(refuse(format!(
                "signed call format {} is not {CALL_FORMAT}",
                self.v
            )));
        }
        if self.token_id != token.id() {
            return Err(refuse("the call was signed for another token".into()));
        }
        let nonce: [u8; 16] = hex::decode(&self.nonce)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("the call's nonce is not 16 hex bytes".into()))?;
        let signature: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("the call's signature is not 64 hex bytes".into()))?;
        Ok(SignedRequest {
            request: Request {
                agent: self.agent.clone(),
                tool: self.tool.clone(),
                args: to_capability_args(&self.args),
                time: UNIX_EPOCH + Duration::from_millis(self.time_ms),
            },
            nonce,
            signature,
        })
    }
}

/// Whether a call may wait for an approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Approvals {
    /// PROPOSE and CONFIRM take the approval path.
    Available,
    /// The call comes from inside a sandboxed tool, which must not wait for a person:
    /// PROPOSE and CONFIRM are refused at once.
    Unavailable,
}

/// Who calls and on behalf of what: handed to the gate with every call (nothing is
/// read from the task it runs on).
#[derive(Clone, Copy)]
pub(crate) struct CallContext<'a> {
    /// The calling agent, its token and holder key.
    pub who: &'a Identity,
    /// The run or direct call it serves: its scope (which groups proposals) and its
    /// cancellation (which withdraws a proposal a step waits on).
    pub control: Option<&'a RunControl>,
    /// What the agent has read, trusted and untrusted; none for the embedding
    /// program's own calls.
    pub provenance: Option<&'a Provenance>,
    /// Whether the call may wait for an approval.
    pub approvals: Approvals,
}

impl<'a> CallContext<'a> {
    /// A call by `who` that may wait for approvals, outside any run.
    pub fn new(who: &'a Identity) -> Self {
        CallContext {
            who,
            control: None,
            provenance: None,
            approvals: Approvals::Available,
        }
    }

    /// Within `control`'s run or call.
    pub fn in_run(mut self, control: &'a RunControl) -> Self {
        self.control = Some(control);
        self
    }

    /// With the agent's provenance record.
    pub fn with_provenance(mut self, provenance: &'a Provenance) -> Self {
        self.provenance = Some(provenance);
        self
    }

    /// From inside a sandboxed tool: no approvals can be waited for.
    pub fn in_sandbox(mut self) -> Self {
        self.approvals = Approvals::Unavailable;
        self
    }

    /// Signs a call of `tool` with `args` as the caller.
    pub fn sign(&self, tool: &str, args: Value, at: SystemTime) -> SignedCall {
        SignedCall::sign(
            &self.who.token,
            &self.who.key,
            &self.who.agent,
            tool,
            args,
            at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_capabilities::{MicroUsd, RootGrant, Tier};

    fn token(key: &KeyPair) -> Token {
        let root = KeyPair::generate();
        let grant = RootGrant::new(
            "acme",
            "a",
            key.public(),
            MicroUsd::from_usd(1).expect("a dollar"),
            SystemTime::now() + Duration::from_secs(3600),
            2,
        )
        .tool("echo", Tier::Auto);
        Token::mint(&root, grant).expect("mint")
    }

    #[test]
    fn a_signed_call_survives_serialization_and_refuses_any_change() {
        let key = KeyPair::generate();
        let token = token(&key);
        let now = SystemTime::now();
        let call = SignedCall::sign(&token, &key, "a", "echo", serde_json::json!({"x": 1}), now);
        let wire = serde_json::to_vec(&call).expect("encode");
        let back: SignedCall = serde_json::from_slice(&wire).expect("decode");
        assert_eq!(back, call);
        let signed = back.request(&token).expect("well-formed");
        let mut replay = bulwark_capabilities::ReplayGuard::new();
        token
            .verify_holder(&signed, now, &mut replay)
            .expect("the holder's signature verifies");

        let mut changed = call.clone();
        changed.args = serde_json::json!({"x": 2});
        let signed = changed.request(&token).expect("well-formed");
        assert!(
            token.verify_holder(&signed, now, &mut replay).is_err(),
            "changed arguments"
        );

        let mut other = call.clone();
        other.token_id = "00".repeat(32);
        assert!(other.request(&token).is_err(), "another token");
        let mut future = call.clone();
        future.v = CALL_FORMAT + 1;
        assert!(future.request(&token).is_err(), "another format");
        let mut short = call;
        short.signature.truncate(10);
        assert!(short.request(&token).is_err(), "malformed signature");
    }
}
