//! Tokens: minting, parsing with full verification, attenuation, inspection.
//!
//! A [`Token`] value is always verified: the only ways to get one are [`Token::mint`],
//! [`Token::from_bytes`]/[`Token::from_base64`] (which check the root signature, every
//! block signature, the holder chain, the depth and that every block is in Bulwark's
//! form) and [`Token::attenuate`] on a token that was itself verified.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use biscuit_auth::Biscuit;
use serde::Serialize;

use crate::error::{AttenuateError, TokenError};
use crate::spec::{BlockSpec, MAX_DEPTH_LIMIT, internal, rfc3339};
use crate::{Attenuation, KeyPair, MicroUsd, PublicKey, RootGrant, Tier};

/// Largest serialized token accepted, in bytes (before base64).
pub const MAX_TOKEN_BYTES: usize = 24 * 1024;

/// A verified capability token.
#[derive(Clone)]
pub struct Token {
    pub(crate) biscuit: Biscuit,
    pub(crate) root: RootGrant,
    pub(crate) delegations: Vec<Attenuation>,
    pub(crate) revocation_ids: Vec<Vec<u8>>,
    pub(crate) effective: Effective,
    size: usize,
    root_key: PublicKey,
}

/// The limits a token's holder actually has: the root grant narrowed by every delegation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// Tools the holder may call, each at its effective (strictest) tier.
    pub tools: BTreeMap<String, Tier>,
    /// The smallest budget cap along the chain.
    pub budget: MicroUsd,
    /// The earliest expiry along the chain, seconds since the Unix epoch.
    #[serde(skip)]
    pub expires_at: u64,
    /// How many more times the token may be delegated.
    pub remaining_depth: u32,
    /// Per tool, arguments whose value must not come from untrusted content.
    pub trusted_args: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Per tool, sandbox limits (see [`crate::SANDBOX_LIMITS`]) at their smallest
    /// along the chain.
    pub sandbox_limits: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Effective {
    fn of(root: &RootGrant, delegations: &[Attenuation]) -> Self {
        let mut eff = Effective {
            tools: root.tools.clone(),
            budget: root.budget,
            expires_at: root.expires_at,
            remaining_depth: root.max_depth.saturating_sub(delegations.len() as u32),
            trusted_args: BTreeMap::new(),
            sandbox_limits: BTreeMap::new(),
        };
        for d in delegations {
            if let Some(only) = &d.only_tools {
                eff.tools.retain(|t, _| only.contains(t));
            }
            for (tool, tier) in &d.tiers {
                if let Some(current) = eff.tools.get_mut(tool) {
                    *current = (*current).max(*tier);
                }
            }
            if let Some(b) = d.budget {
                eff.budget = eff.budget.min(b);
            }
            if let Some(at) = d.expires_at {
                eff.expires_at = eff.expires_at.min(at);
            }
            for entry in &d.trusted_args {
                if let Some((tool, arg)) = entry.split_once('.') {
                    eff.trusted_args
                        .entry(tool.to_string())
                        .or_default()
                        .insert(arg.to_string());
                }
            }
            for (entry, value) in &d.sandbox_limits {
                if let Some((tool, limit)) = entry.split_once('.') {
                    let limits = eff.sandbox_limits.entry(tool.to_string()).or_default();
                    let v = limits.get(limit).map_or(*value, |v| (*v).min(*value));
                    limits.insert(limit.to_string(), v);
                }
            }
        }
        eff
    }
}

/// One link of a delegation chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The agent.
    pub agent: String,
    /// Its holder key, hex.
    pub holder: String,
}

/// What `inspect` shows: the chain of agents and the effective limits.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// Whether the token was verified against a root key. An unverified inspection
    /// shows what the token claims, which means nothing until it is verified.
    pub verified: bool,
    /// The tenant.
    pub tenant: String,
    /// Agents and holders, root first.
    pub chain: Vec<Link>,
    /// The effective limits.
    pub effective: EffectiveView,
    /// The revocation id of each block, root first, hex.
    pub revocation_ids: Vec<String>,
    /// Serialized size in bytes.
    pub size_bytes: usize,
}

/// The effective limits as shown to people: dollars and RFC 3339.
#[derive(Clone, Debug, Serialize)]
pub struct EffectiveView {
    /// Tools and tiers.
    pub tools: BTreeMap<String, Tier>,
    /// Budget cap in decimal dollars.
    pub budget: MicroUsd,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// Delegations left.
    pub remaining_depth: u32,
    /// Arguments that must not come from untrusted content, `TOOL.ARG`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_args: Vec<String>,
    /// Sandbox limits, `TOOL.LIMIT` → value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sandbox_limits: BTreeMap<String, u64>,
}

impl Token {
    /// Mints a root token signed by the cluster root key.
    pub fn mint(root_key: &KeyPair, grant: RootGrant) -> Result<Token, AttenuateError> {
        grant.validate()?;
        let context = spec_json(&BlockSpec::RootV1(grant.clone()))?;
        let biscuit = Biscuit::builder()
            .merge(grant.to_block()?.context(context))
            .build(root_key.to_biscuit())
            .map_err(internal)?;
        Ok(Token::assemble(
            biscuit,
            grant,
            Vec::new(),
            None,
            root_key.public(),
        )?)
    }

    /// Parses and fully verifies a serialized token against the root public key.
    pub fn from_bytes(bytes: &[u8], root: &PublicKey) -> Result<Token, TokenError> {
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge {
                size: bytes.len(),
                limit: MAX_TOKEN_BYTES,
            });
        }
        let biscuit = Biscuit::from(bytes, root_key(root)?).map_err(parse_error)?;
        Token::verified(biscuit, Some(bytes.len()), *root)
    }

    fn verified(
        biscuit: Biscuit,
        size: Option<usize>,
        root: PublicKey,
    ) -> Result<Token, TokenError> {
        let (grant, delegations) = check_structure(&biscuit)?;
        Token::assemble(biscuit, grant, delegations, size, root)
    }

    /// Parses base64url text (surrounding whitespace ignored) and verifies it.
    pub fn from_base64(text: &str, root: &PublicKey) -> Result<Token, TokenError> {
        let text = text.trim();
        // base64 of MAX_TOKEN_BYTES is 4/3 as long; refuse before decoding anything larger.
        let limit = MAX_TOKEN_BYTES.div_ceil(3) * 4;
        if text.len() > limit {
            return Err(TokenError::TooLarge {
                size: text.len() / 4 * 3,
                limit: MAX_TOKEN_BYTES,
            });
        }
        let biscuit = Biscuit::from_base64(text, root_key(root)?).map_err(parse_error)?;
        Token::verified(biscuit, None, *root)
    }

    /// The token as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TokenError> {
        self.biscuit.to_vec().map_err(internal)
    }

    /// The token as base64url text, the form it travels in.
    pub fn to_base64(&self) -> Result<String, TokenError> {
        self.biscuit.to_base64().map_err(internal)
    }

    /// Derives a child token. `parent_holder` must be the key this token is bound to:
    /// it signs the new block, so nobody but the holder can delegate. Every field of
    /// `attenuation` must narrow; anything that would widen is refused.
    pub fn attenuate(
        &self,
        parent_holder: &KeyPair,
        attenuation: Attenuation,
    ) -> Result<Token, AttenuateError> {
        let holder = self.holder();
        if parent_holder.public() != holder {
            return Err(AttenuateError::NotHolder {
                given: parent_holder.public().to_hex(),
                holder: holder.to_hex(),
            });
        }
        self.check_narrowing(&attenuation)?;
        let context = spec_json(&BlockSpec::DelegationV1(attenuation.clone()))?;
        let block = attenuation.to_block()?.context(context);
        let request = self.biscuit.third_party_request().map_err(internal)?;
        let signed = request
            .create_block(&parent_holder.to_biscuit().private(), block)
            .map_err(internal)?;
        let biscuit = self
            .biscuit
            .append_third_party(parent_holder.to_biscuit().public(), signed)
            .map_err(internal)?;
        let mut delegations = self.delegations.clone();
        delegations.push(attenuation);
        Ok(Token::assemble(
            biscuit,
            self.root.clone(),
            delegations,
            None,
            self.root_key,
        )?)
    }

    /// Checks that `child` was derived from this token by exactly one delegation: the
    /// same root key, this token's blocks a prefix of the child's, one block more, and
    /// that block narrowing what this token allows (verification already checked that
    /// this token's holder signed it). A receiver that did not derive the child itself
    /// (another node) runs this before it trusts the pair.
    pub fn check_child(&self, child: &Token) -> Result<(), AttenuateError> {
        let not = |why: &str| Err(AttenuateError::NotAChild(why.to_string()));
        if child.root_key != self.root_key {
            return not("it is signed by another root key");
        }
        if child.revocation_ids.len() != self.revocation_ids.len() + 1 {
            return not(&format!(
                "it has {} blocks, the parent {}: a child has exactly one more",
                child.revocation_ids.len(),
                self.revocation_ids.len()
            ));
        }
        if !child.revocation_ids.starts_with(&self.revocation_ids) {
            return not("the parent's blocks are not a prefix of its blocks");
        }
        let Some(block) = child.delegations.last() else {
            return not("it has no delegation block");
        };
        self.check_narrowing(block)
    }

    fn check_narrowing(&self, a: &Attenuation) -> Result<(), AttenuateError> {
        a.validate()?;
        let eff = &self.effective;
        if eff.remaining_depth == 0 {
            return Err(AttenuateError::DepthExhausted {
                max: self.root.max_depth,
            });
        }
        let kept: BTreeSet<&String> = match &a.only_tools {
            Some(only) => {
                if let Some(missing) = only.iter().find(|t| !eff.tools.contains_key(*t)) {
                    return Err(AttenuateError::ToolNotHeld(missing.clone()));
                }
                only.iter().collect()
            }
            None => eff.tools.keys().collect(),
        };
        for (tool, tier) in &a.tiers {
            let current = eff
                .tools
                .get(tool)
                .filter(|_| kept.contains(tool))
                .ok_or_else(|| AttenuateError::ToolNotHeld(tool.clone()))?;
            if tier < current {
                return Err(AttenuateError::LaxerTier {
                    tool: tool.clone(),
                    current: *current,
                    requested: *tier,
                });
            }
        }
        if let Some(b) = a.budget
            && b > eff.budget
        {
            return Err(AttenuateError::BiggerBudget {
                current: eff.budget.to_string(),
                requested: b.to_string(),
            });
        }
        if let Some(at) = a.expires_at
            && at > eff.expires_at
        {
            return Err(AttenuateError::LaterExpiry {
                current: rfc3339(eff.expires_at),
                requested: rfc3339(at),
            });
        }
        if let Some(c) = a.constraints.iter().find(|c| !kept.contains(&c.tool)) {
            return Err(AttenuateError::ToolNotHeld(c.tool.clone()));
        }
        Ok(())
    }

    /// Builds the token value; `size` is the serialized size when the caller knows it.
    fn assemble(
        biscuit: Biscuit,
        root: RootGrant,
        delegations: Vec<Attenuation>,
        size: Option<usize>,
        root_key: PublicKey,
    ) -> Result<Token, TokenError> {
        let size = match size {
            Some(size) => size,
            None => biscuit.serialized_size().map_err(internal)?,
        };
        if size > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge {
                size,
                limit: MAX_TOKEN_BYTES,
            });
        }
        let effective = Effective::of(&root, &delegations);
        Ok(Token {
            revocation_ids: biscuit.revocation_identifiers(),
            biscuit,
            root,
            delegations,
            effective,
            size,
            root_key,
        })
    }

    /// The root public key this token was verified against (or minted with).
    pub fn root_key(&self) -> PublicKey {
        self.root_key
    }

    /// The tenant named by the root.
    pub fn tenant(&self) -> &str {
        &self.root.tenant
    }

    /// The agent this token was last delegated to.
    pub fn agent(&self) -> &str {
        self.delegations
            .last()
            .map_or(&self.root.agent, |d| &d.agent)
    }

    /// The key requests under this token must be signed with.
    pub fn holder(&self) -> PublicKey {
        self.delegations
            .last()
            .map_or(self.root.holder, |d| d.holder)
    }

    /// Agents and holders, root first.
    pub fn chain(&self) -> Vec<Link> {
        self.inspect().chain
    }

    /// The effective limits.
    pub fn effective(&self) -> &Effective {
        &self.effective
    }

    /// The effective expiry.
    pub fn expires_at(&self) -> SystemTime {
        crate::spec::from_unix_secs(self.effective.expires_at)
    }

    /// Number of delegations (0 for a root token).
    pub fn depth(&self) -> usize {
        self.delegations.len()
    }

    /// Each block's revocation id, root first. Revoking one denies this token and every
    /// token derived from it.
    pub fn revocation_ids(&self) -> &[Vec<u8>] {
        &self.revocation_ids
    }

    /// A stable identifier of this exact token: its last block's revocation id, hex.
    pub fn id(&self) -> String {
        self.revocation_ids
            .last()
            .map(hex::encode)
            .unwrap_or_default()
    }

    pub(crate) fn id_bytes(&self) -> &[u8] {
        self.revocation_ids.last().map_or(&[], Vec::as_slice)
    }

    /// Serialized size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The chain and the effective limits, for people and scripts.
    pub fn inspect(&self) -> Inspection {
        Inspection::new(
            true,
            &self.root,
            &self.delegations,
            &self.revocation_ids,
            self.size,
        )
    }

    /// What a token claims, read without any key: its chain, its limits as its blocks
    /// declare them, and its revocation ids. Nothing here is verified; use
    /// [`Token::from_bytes`] before trusting any of it.
    pub fn inspect_unverified(bytes: &[u8]) -> Result<Inspection, TokenError> {
        use biscuit_auth::format::schema;
        use prost::Message;

        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge {
                size: bytes.len(),
                limit: MAX_TOKEN_BYTES,
            });
        }
        let malformed =
            |e: prost::DecodeError| TokenError::Invalid(format!("malformed token ({e})"));
        let container = schema::Biscuit::decode(bytes).map_err(malformed)?;
        let signed: Vec<&schema::SignedBlock> = std::iter::once(&container.authority)
            .chain(container.blocks.iter())
            .collect();
        let mut root = None;
        let mut delegations = Vec::new();
        for (i, block) in signed.iter().enumerate() {
            let decoded = schema::Block::decode(block.block.as_slice()).map_err(malformed)?;
            let context = decoded.context.ok_or_else(|| TokenError::NotCanonical {
                block: i,
                reason: "it carries no Bulwark spec".into(),
            })?;
            let spec = serde_json::from_str(&context).map_err(|e| TokenError::NotCanonical {
                block: i,
                reason: format!("bad spec: {e}"),
            })?;
            match (i, spec) {
                (0, BlockSpec::RootV1(r)) => root = Some(r),
                (_, BlockSpec::DelegationV1(d)) if i > 0 => delegations.push(d),
                _ => {
                    return Err(TokenError::NotCanonical {
                        block: i,
                        reason: "a root block out of place".into(),
                    });
                }
            }
        }
        let root = root.ok_or_else(|| TokenError::Invalid("no root block".into()))?;
        let ids: Vec<Vec<u8>> = signed.iter().map(|b| b.signature.clone()).collect();
        Ok(Inspection::new(
            false,
            &root,
            &delegations,
            &ids,
            bytes.len(),
        ))
    }

    /// Decodes base64url token text without verifying it (for [`Token::inspect_unverified`]).
    pub fn decode_base64_unverified(text: &str) -> Result<Vec<u8>, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_BYTES.div_ceil(3) * 4 {
            return Err(TokenError::TooLarge {
                size: text.len() / 4 * 3,
                limit: MAX_TOKEN_BYTES,
            });
        }
        biscuit_auth::UnverifiedBiscuit::from_base64(text)
            .and_then(|u| u.to_vec())
            .map_err(parse_error)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("tenant", &self.root.tenant)
            .field("chain", &self.chain())
            .field("effective", &self.effective)
            .finish()
    }
}

impl Inspection {
    fn new(
        verified: bool,
        root: &RootGrant,
        delegations: &[Attenuation],
        ids: &[Vec<u8>],
        size_bytes: usize,
    ) -> Self {
        let eff = Effective::of(root, delegations);
        let chain = std::iter::once((&root.agent, &root.holder))
            .chain(delegations.iter().map(|d| (&d.agent, &d.holder)))
            .map(|(agent, holder)| Link {
                agent: agent.clone(),
                holder: holder.to_hex(),
            })
            .collect();
        Inspection {
            verified,
            tenant: root.tenant.clone(),
            chain,
            effective: EffectiveView {
                tools: eff.tools,
                budget: eff.budget,
                expires_at: rfc3339(eff.expires_at),
                remaining_depth: eff.remaining_depth,
                trusted_args: eff
                    .trusted_args
                    .iter()
                    .flat_map(|(t, args)| args.iter().map(move |a| format!("{t}.{a}")))
                    .collect(),
                sandbox_limits: eff
                    .sandbox_limits
                    .iter()
                    .flat_map(|(t, l)| l.iter().map(move |(k, v)| (format!("{t}.{k}"), *v)))
                    .collect(),
            },
            revocation_ids: ids.iter().map(hex::encode).collect(),
            size_bytes,
        }
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.verified {
            writeln!(
                f,
                "UNVERIFIED: what the token claims; pass the root key to verify it"
            )?;
        }
        writeln!(f, "tenant: {}", self.tenant)?;
        writeln!(f, "chain (root first):")?;
        for (i, link) in self.chain.iter().enumerate() {
            writeln!(f, "  {i}. {} (holder {})", link.agent, link.holder)?;
        }
        writeln!(f, "effective:")?;
        writeln!(f, "  budget: ${}", self.effective.budget)?;
        writeln!(f, "  expires at: {}", self.effective.expires_at)?;
        writeln!(f, "  delegations left: {}", self.effective.remaining_depth)?;
        if !self.effective.trusted_args.is_empty() {
            writeln!(
                f,
                "  trusted arguments only: {}",
                self.effective.trusted_args.join(", ")
            )?;
        }
        if !self.effective.sandbox_limits.is_empty() {
            let limits: Vec<String> = self
                .effective
                .sandbox_limits
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "  sandbox limits: {}", limits.join(", "))?;
        }
        if self.effective.tools.is_empty() {
            writeln!(f, "  tools: none")?;
        } else {
            writeln!(f, "  tools:")?;
            for (tool, tier) in &self.effective.tools {
                writeln!(f, "    {tool}: {tier}")?;
            }
        }
        write!(f, "size: {} bytes", self.size_bytes)
    }
}

fn spec_json(spec: &BlockSpec) -> Result<String, TokenError> {
    serde_json::to_string(spec).map_err(|e| TokenError::Internal(e.to_string()))
}

fn root_key(root: &PublicKey) -> Result<biscuit_auth::PublicKey, TokenError> {
    root.to_biscuit()
        .map_err(|e| TokenError::Invalid(format!("root key: {e}")))
}

fn parse_error(e: biscuit_auth::error::Token) -> TokenError {
    match e {
        biscuit_auth::error::Token::Base64(_) => TokenError::Encoding("not base64url text".into()),
        other => TokenError::Invalid(describe_biscuit_error(&other)),
    }
}

/// Checks that every block is a Bulwark block whose Datalog is exactly what its spec
/// generates, that each delegation was signed by the previous holder, and the depth.
fn check_structure(biscuit: &Biscuit) -> Result<(RootGrant, Vec<Attenuation>), TokenError> {
    let contexts = biscuit.context();
    let count = biscuit.block_count();
    let not_canonical = |block: usize, reason: &str| TokenError::NotCanonical {
        block,
        reason: reason.to_string(),
    };
    let spec_of = |block: usize| -> Result<BlockSpec, TokenError> {
        let ctx = contexts
            .get(block)
            .and_then(Option::as_deref)
            .ok_or_else(|| not_canonical(block, "it carries no Bulwark spec"))?;
        serde_json::from_str(ctx).map_err(|e| not_canonical(block, &format!("bad spec: {e}")))
    };
    let matches_source = |block: usize, expected: crate::spec::Source| {
        let actual = biscuit.print_block_source(block).map_err(internal)?;
        if actual.trim_end() == expected.as_str().trim_end() {
            Ok(())
        } else {
            Err(not_canonical(
                block,
                "its Datalog differs from what its spec declares",
            ))
        }
    };

    let root = match spec_of(0)? {
        BlockSpec::RootV1(root) => root,
        BlockSpec::DelegationV1(_) => return Err(not_canonical(0, "the root is a delegation")),
    };
    root.validate()
        .map_err(|e| not_canonical(0, &e.to_string()))?;
    matches_source(0, root.source())?;

    let depth = count - 1;
    if depth > root.max_depth as usize || depth > MAX_DEPTH_LIMIT as usize {
        return Err(TokenError::DepthExceeded {
            depth,
            max: root.max_depth,
        });
    }

    let mut delegations = Vec::with_capacity(depth);
    let mut holder = root.holder;
    for block in 1..count {
        let spec = match spec_of(block)? {
            BlockSpec::DelegationV1(d) => d,
            BlockSpec::RootV1(_) => {
                return Err(not_canonical(block, "a second root block"));
            }
        };
        spec.validate()
            .map_err(|e| not_canonical(block, &e.to_string()))?;
        let signer = biscuit
            .block_external_key(block)
            .map_err(internal)?
            .and_then(|k| PublicKey::from_biscuit(&k));
        if signer != Some(holder) {
            return Err(TokenError::BrokenHolderChain {
                block,
                prev: block - 1,
            });
        }
        matches_source(block, spec.source())?;
        holder = spec.holder;
        delegations.push(spec);
    }
    Ok((root, delegations))
}

/// Biscuit's own messages, shortened to what a person can act on.
fn describe_biscuit_error(e: &biscuit_auth::error::Token) -> String {
    use biscuit_auth::error::{Format, Token as T};
    match e {
        T::Format(Format::Signature(_)) => {
            "a signature does not verify (wrong root key, or the token was altered)".into()
        }
        T::Format(Format::InvalidSignatureSize(_)) => "a signature has the wrong size".into(),
        T::Format(other) => format!("malformed token ({other})"),
        T::Base64(_) => "not base64url text".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
