//! Bulwark capability tokens.
//!
//! This crate owns what an agent may do: tokens signed by the cluster root key
//! ([`Token::mint`]), narrowed — never widened — when handed to a child
//! ([`Token::attenuate`]), bound to the holder's key ([`SignedRequest`]), checked for
//! one request ([`Token::authorize`]), approved by operators ([`Approval`]) and revoked
//! by block id ([`Revocations`]).
//!
//! It is pure code: no async runtime, no network, no storage; the only I/O is reading
//! and writing key files at paths the caller hands in. Every input — token bytes, key
//! files, constraint text — may be hostile and gets a typed error, never a panic.
//!
//! **Invariant: no API widens a token.** Attenuation blocks may only add checks and
//! restrictions; their facts are never trusted as grants, every delegation block is
//! signed by the previous holder's key, and the effective limits are the root's
//! narrowed by every block.

mod approval;
mod args;
mod authorize;
mod error;
mod holder;
mod keys;
mod money;
mod spec;
mod tier;
mod token;

pub use approval::{Approval, DECISION_VALIDITY_SECS, Decision, DecisionKind};
pub use args::{
    Amount, ArgValue, Args, Constraint, ConstraintValue, MAX_AMOUNT_UNITS, MAX_LIST_LEN,
    MAX_NAME_BYTES, MAX_VALUE_BYTES, Op, args_hash, is_plain_address, validate_name,
};
pub use authorize::{Authorized, DatalogLimit, DatalogLimits, Denial, Request, Revocations};
pub use error::{ApprovalError, AttenuateError, KeyError, ParseError, TokenError};
pub use holder::{DomainSignature, ReplayGuard, SignedRequest};
pub use keys::{KeyPair, PublicKey};
pub use money::{MAX_MICRO_USD, MicroUsd};
pub use spec::{
    Attenuation, MAX_CONSTRAINTS_PER_BLOCK, MAX_DEPTH_LIMIT, MAX_TOOLS, RootGrant, SANDBOX_LIMITS,
};
pub use tier::Tier;
pub use token::{Effective, EffectiveView, Inspection, Link, MAX_TOKEN_BYTES, Token};
