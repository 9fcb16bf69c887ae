//! Errors of the capability layer. A denial is a value ([`crate::Denial`]); these are
//! the ways an operation can fail to even reach a decision.

use std::path::PathBuf;

use crate::Tier;

/// Reading or writing a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file exists already; keys are never overwritten.
    #[error("{0} already exists; refusing to overwrite a key")]
    AlreadyExists(PathBuf),
    /// The private key file can be read or written by others.
    #[error(
        "{path} has mode {mode:o}: a private key must be readable by its owner only (chmod 600 {path})"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a Bulwark private key.
    #[error("{path} is not a Bulwark private key: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A public key that is not 32 bytes of a valid ed25519 point.
    #[error("invalid public key: {reason}")]
    BadPublicKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Text that does not parse as a tier, amount, name or constraint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not one of auto, auto+, propose, confirm, block.
    #[error("unknown tier `{0}`: use auto, auto+, propose, confirm or block")]
    Tier(String),
    /// Not an amount of dollars.
    #[error("`{input}` is not an amount of dollars: {reason}")]
    Money {
        /// The text.
        input: String,
        /// Why.
        reason: String,
    },
    /// Not a decimal amount (see [`crate::Amount`]).
    #[error("`{input}` is not an amount: {reason}")]
    Amount {
        /// The text.
        input: String,
        /// Why.
        reason: String,
    },
    /// A name with characters or a length a token does not accept.
    #[error("invalid {kind} name `{name}`: use 1 to 128 ASCII letters, digits and _ - . : @ /")]
    Name {
        /// What the name names.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A line of a revocation list that is not a hex id.
    #[error("revocation list line {line}: `{text}` is not a hex revocation id")]
    RevocationId {
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// An ill-formed or ill-typed argument constraint.
    #[error("invalid constraint `{input}`: {reason}")]
    Constraint {
        /// The text.
        input: String,
        /// Why.
        reason: String,
    },
}

/// A token that cannot be used at all: it does not parse, its signatures or chain do
/// not verify, or it is not in Bulwark's form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Larger than [`crate::MAX_TOKEN_BYTES`].
    #[error("token is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not base64url text.
    #[error("token is not base64url text: {0}")]
    Encoding(String),
    /// Bytes that are not a token, or a signature that does not verify against the
    /// root key (including a token signed by another root).
    #[error("token does not verify: {0}")]
    Invalid(String),
    /// A block that Bulwark did not write, or whose declared and enforced contents differ.
    #[error("block {block} is not a Bulwark block: {reason}")]
    NotCanonical {
        /// Index of the block, the root being 0.
        block: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A delegation block not signed by the holder named in the block before it.
    #[error(
        "block {block} was not signed by the holder of block {prev}: only the holder of a token can delegate it"
    )]
    BrokenHolderChain {
        /// The offending block.
        block: usize,
        /// The block naming the expected signer.
        prev: usize,
    },
    /// More delegations than the root allows.
    #[error("token is delegated {depth} times but the root allows at most {max}")]
    DepthExceeded {
        /// Delegations in the token.
        depth: usize,
        /// The root's maximum.
        max: u32,
    },
    /// A failure inside biscuit while building or evaluating a token.
    #[error("token machinery failed: {0}")]
    Internal(String),
}

/// Why an attenuation was refused. Every variant is a refusal to widen or an invalid
/// request; none of them is ever worked around.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttenuateError {
    /// The child asked for a tool the parent does not have.
    #[error("cannot delegate tool `{0}`: the parent token does not grant it")]
    ToolNotHeld(String),
    /// The child asked for a laxer tier.
    #[error(
        "cannot lower tool `{tool}` from tier {current} to {requested}: a child's tier can only be stricter"
    )]
    LaxerTier {
        /// The tool.
        tool: String,
        /// The parent's effective tier.
        current: Tier,
        /// What the child asked for.
        requested: Tier,
    },
    /// The child asked for a bigger budget.
    #[error(
        "cannot raise the budget from ${current} to ${requested}: a child's cap is carved out of its parent's"
    )]
    BiggerBudget {
        /// The parent's cap, decimal dollars.
        current: String,
        /// What the child asked for.
        requested: String,
    },
    /// The child asked for a later expiry.
    #[error(
        "cannot extend expiry from {current} to {requested}: a child expires no later than its parent"
    )]
    LaterExpiry {
        /// The parent's expiry, RFC 3339.
        current: String,
        /// What the child asked for.
        requested: String,
    },
    /// The parent has no delegations left.
    #[error(
        "cannot delegate: the token allows no further delegation (maximum depth {max} reached)"
    )]
    DepthExhausted {
        /// The root's maximum depth.
        max: u32,
    },
    /// The key signing the delegation is not the parent's holder key.
    #[error("the delegating key {given} is not the holder of this token ({holder})")]
    NotHolder {
        /// Public key of the key given.
        given: String,
        /// The token's holder.
        holder: String,
    },
    /// A name, tier or constraint that does not parse.
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// The result would break a token limit.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token offered as a child was not derived from the parent by one delegation.
    #[error("not a child of the parent token: {0}")]
    NotAChild(String),
}

/// Why an approval does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// Signed by a key that is not among the trusted approvers.
    #[error("approval signed by {0}, which is not a trusted approver key")]
    UntrustedApprover(String),
    /// The signature does not verify.
    #[error("approval signature does not verify")]
    BadSignature,
    /// An approval of another proposal.
    #[error("approval is for proposal `{approved}`, not `{requested}`")]
    WrongProposal {
        /// The proposal it approves.
        approved: String,
        /// The proposal presented.
        requested: String,
    },
    /// The arguments differ from the approved ones.
    #[error("approval is for different arguments than the ones presented")]
    WrongArguments,
    /// Past its expiry.
    #[error("approval expired at {0}")]
    Expired(String),
    /// Not the approval wire format.
    #[error("approval is malformed: {0}")]
    Malformed(String),
}
