//! Proof of possession: requests signed by the holder key the token's last block names,
//! with a timestamp window and single-use nonces, so a stolen token is useless to
//! anyone without the holder's key and a captured request cannot be replayed.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::args::{encode_args, encode_bytes};
use crate::authorize::{Authorized, Denial, Request, Revocations};
use crate::spec::{rfc3339, unix_secs};
use crate::{KeyPair, PublicKey, Token};

/// A request with its holder's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    /// The request.
    pub request: Request,
    /// A random single-use value.
    pub nonce: [u8; 16],
    /// The holder's ed25519 signature over [`SignedRequest::message`].
    pub signature: [u8; 64],
}

impl SignedRequest {
    /// Signs `request` for `token` with the holder key and a fresh random nonce.
    pub fn sign(token: &Token, holder: &KeyPair, request: Request) -> SignedRequest {
        let nonce: [u8; 16] = rand::random();
        let signature = holder.sign(&Self::message(token.id_bytes(), &request, &nonce));
        SignedRequest {
            request,
            nonce,
            signature,
        }
    }

    /// The canonical bytes that are signed: a domain tag, the token id, the tool, the
    /// arguments, the timestamp (seconds) and the nonce, each length-prefixed.
    pub fn message(token_id: &[u8], request: &Request, nonce: &[u8; 16]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let mut push = |b: &[u8]| out.extend_from_slice(b);
        push(b"bulwark-request-v1\0");
        encode_bytes(token_id, &mut push);
        encode_bytes(request.agent.as_bytes(), &mut push);
        encode_bytes(request.tool.as_bytes(), &mut push);
        encode_args(&request.args, &mut push);
        push(&unix_secs(request.time).to_be_bytes());
        push(nonce);
        out
    }
}

/// Remembers recently used nonces per token so each is accepted once, and bounds how
/// far a request's timestamp may be from the verifier's clock.
#[derive(Debug)]
pub struct ReplayGuard {
    window_secs: u64,
    capacity: usize,
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayGuard {
    /// Default accepted clock distance: 60 seconds either way.
    pub const DEFAULT_WINDOW_SECS: u64 = 60;
    /// Default number of nonces remembered at once.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// A guard with the default window and capacity.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_WINDOW_SECS, Self::DEFAULT_CAPACITY)
    }

    /// A guard accepting timestamps within `window_secs` of now, remembering at most
    /// `capacity` nonces (when full and nothing has aged out, requests are refused).
    pub fn with_limits(window_secs: u64, capacity: usize) -> Self {
        ReplayGuard {
            window_secs,
            capacity,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts `(token, nonce)` once if `at` is within the window around `now`.
    fn admit(
        &mut self,
        token_id: &[u8],
        nonce: &[u8; 16],
        at: u64,
        now: u64,
    ) -> Result<(), Denial> {
        if at.abs_diff(now) > self.window_secs {
            return Err(Denial::Stale {
                at: rfc3339(at),
                now: rfc3339(now),
                window_secs: self.window_secs,
            });
        }
        // Nonces older than the window can be forgotten: their requests are stale anyway.
        while let Some(&(key, at_old)) = self.order.front() {
            if at_old + self.window_secs >= now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&key) == Some(&at_old) {
                self.seen.remove(&key);
            }
        }
        let key: [u8; 32] = Sha256::new()
            .chain_update(token_id)
            .chain_update(nonce)
            .finalize()
            .into();
        if self.seen.contains_key(&key) {
            return Err(Denial::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(Denial::ReplayCacheFull);
        }
        self.seen.insert(key, at);
        // Entries are pruned in insertion order; a request stamped earlier than the
        // front lingers a little longer, which is safe.
        self.order
            .push_back((key, at.max(self.order.back().map_or(0, |e| e.1))));
        Ok(())
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Token {
    /// The full check of a signed request: the holder's signature, the timestamp window
    /// and the nonce (recorded in `guard` only when the signature verifies), then
    /// authorization with the compiled policy.
    pub fn authorize_signed(
        &self,
        signed: &SignedRequest,
        now: SystemTime,
        guard: &mut ReplayGuard,
        revoked: &Revocations,
    ) -> Result<Authorized, Denial> {
        self.verify_holder(signed, now, guard)?;
        self.authorize(&signed.request, revoked)
    }

    /// Checks proof of possession only: signature, timestamp window, nonce.
    pub fn verify_holder(
        &self,
        signed: &SignedRequest,
        now: SystemTime,
        guard: &mut ReplayGuard,
    ) -> Result<(), Denial> {
        let holder = self.holder();
        let message = SignedRequest::message(self.id_bytes(), &signed.request, &signed.nonce);
        if !holder.verify(&message, &signed.signature) {
            return Err(Denial::NotHolder {
                holder: holder.to_hex(),
            });
        }
        guard.admit(
            self.id_bytes(),
            &signed.nonce,
            unix_secs(signed.request.time),
            unix_secs(now),
        )
    }
}

/// A message signed for one purpose (by a token's holder, or an operator): the bytes
/// signed are a domain tag (for instance `bulwark-envelope-v1`) then the message, so a
/// signature made for one purpose never verifies for another, nor as a
/// [`SignedRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSignature(pub [u8; 64]);

impl DomainSignature {
    /// Signs `message` for `domain` with `key`.
    pub fn sign(key: &KeyPair, domain: &str, message: &[u8]) -> DomainSignature {
        DomainSignature(key.sign(&Self::signed_bytes(domain, message)))
    }

    /// Whether `key` signed `message` for `domain`.
    pub fn verify(&self, key: &PublicKey, domain: &str, message: &[u8]) -> bool {
        key.verify(&Self::signed_bytes(domain, message), &self.0)
    }

    fn signed_bytes(domain: &str, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(domain.len() + message.len() + 16);
        let mut push = |b: &[u8]| out.extend_from_slice(b);
        push(b"bulwark-holder-v1\0");
        encode_bytes(domain.as_bytes(), &mut push);
        encode_bytes(message, &mut push);
        out
    }
}

impl Token {
    /// Checks that this token's holder signed `message` for `domain`.
    pub fn verify_holder_signature(
        &self,
        domain: &str,
        message: &[u8],
        signature: &DomainSignature,
    ) -> Result<(), Denial> {
        let holder = self.holder();
        if holder.verify(
            &DomainSignature::signed_bytes(domain, message),
            &signature.0,
        ) {
            Ok(())
        } else {
            Err(Denial::NotHolder {
                holder: holder.to_hex(),
            })
        }
    }
}

impl ReplayGuard {
    /// Accepts message `id` under `token` once, if it was sent (`at`, seconds since
    /// the epoch) within the window around `now`: for messages other than requests
    /// that carry their own single-use id.
    pub fn admit_message(
        &mut self,
        token: &Token,
        id: &[u8; 16],
        at_secs: u64,
        now: SystemTime,
    ) -> Result<(), Denial> {
        self.admit(token.id_bytes(), id, at_secs, unix_secs(now))
    }
}
