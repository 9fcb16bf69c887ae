//! What each block of a token says, and the one deterministic translation of that into
//! Datalog.
//!
//! Every block carries its spec as JSON in the block's context string and the Datalog
//! generated from it. On verification the Datalog is generated again from the spec and
//! compared with the block's actual contents, so the spec that the fast matcher and
//! `inspect` read is exactly what the Datalog enforces.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::BlockBuilder;
use biscuit_auth::builder::{self, Term};
use serde::{Deserialize, Serialize};

use crate::args::{ArgValue, Constraint, ConstraintValue, Op, validate_name};
use crate::error::{ParseError, TokenError};
use crate::{MicroUsd, PublicKey, Tier};

/// Hard ceiling on delegation depth, whatever a root asks for.
pub const MAX_DEPTH_LIMIT: u32 = 16;
/// Most tools a token may name.
pub const MAX_TOOLS: usize = 256;
/// Most argument constraints one delegation may add.
pub const MAX_CONSTRAINTS_PER_BLOCK: usize = 64;

/// Seconds since the Unix epoch; times before 1970 are clamped to 0.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub(crate) fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(from_unix_secs(secs)).to_string()
}

/// What the root authority grants an agent: the authority block of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootGrant {
    /// The tenant the agent works for.
    pub tenant: String,
    /// The root agent's id.
    pub agent: String,
    /// The root agent's holder key: requests must be signed by it.
    pub holder: PublicKey,
    /// The tools granted, each with its tier.
    pub tools: BTreeMap<String, Tier>,
    /// The budget cap.
    pub budget: MicroUsd,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// How many times the token may be delegated down a chain.
    pub max_depth: u32,
}

impl RootGrant {
    /// A grant with no tools, expiring at `expires_at`; add tools with [`RootGrant::tool`].
    pub fn new(
        tenant: impl Into<String>,
        agent: impl Into<String>,
        holder: PublicKey,
        budget: MicroUsd,
        expires_at: SystemTime,
        max_depth: u32,
    ) -> Self {
        RootGrant {
            tenant: tenant.into(),
            agent: agent.into(),
            holder,
            tools: BTreeMap::new(),
            budget,
            expires_at: unix_secs(expires_at),
            max_depth,
        }
    }

    /// Grants `tool` at `tier`.
    pub fn tool(mut self, tool: impl Into<String>, tier: Tier) -> Self {
        self.tools.insert(tool.into(), tier);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ParseError> {
        validate_name("tenant", &self.tenant)?;
        validate_name("agent", &self.agent)?;
        if self.tools.len() > MAX_TOOLS {
            return Err(ParseError::Name {
                kind: "tool (too many tools; at most 256)",
                name: String::new(),
            });
        }
        self.tools
            .keys()
            .try_for_each(|t| validate_name("tool", t))?;
        if self.max_depth > MAX_DEPTH_LIMIT {
            return Err(ParseError::Name {
                kind: "max depth (at most 16)",
                name: self.max_depth.to_string(),
            });
        }
        Ok(())
    }

    pub(crate) fn to_block(&self) -> Result<BlockBuilder, TokenError> {
        let mut b = BlockBuilder::new()
            .fact(builder::fact("tenant", &[builder::string(&self.tenant)]))
            .and_then(|b| b.fact(builder::fact("agent", &[builder::string(&self.agent)])))
            .and_then(|b| {
                b.fact(builder::fact(
                    "holder",
                    &[builder::bytes(&self.holder.to_bytes())],
                ))
            })
            .map_err(internal)?;
        for (tool, tier) in &self.tools {
            b = b
                .fact(builder::fact(
                    "tool",
                    &[builder::string(tool), builder::int(tier.level())],
                ))
                .map_err(internal)?;
        }
        b = b
            .fact(builder::fact(
                "budget",
                &[builder::int(self.budget.as_datalog())],
            ))
            .and_then(|b| b.fact(builder::fact("expires", &[Term::Date(self.expires_at)])))
            .and_then(|b| {
                b.fact(builder::fact(
                    "max_depth",
                    &[builder::int(i64::from(self.max_depth))],
                ))
            })
            .map_err(internal)?;
        expiry_check(b, self.expires_at)
    }
}

/// What a parent hands to a child: the child's identity and every narrowing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attenuation {
    /// The child agent's id.
    pub agent: String,
    /// The child's holder key.
    pub holder: PublicKey,
    /// When set, the child may use only these tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_tools: Option<BTreeSet<String>>,
    /// Stricter tiers for some tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, Tier>,
    /// A smaller budget cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<MicroUsd>,
    /// An earlier expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Constraints on tool arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

impl Attenuation {
    /// Delegates to `agent` holding `holder`, with nothing narrowed yet but the depth.
    pub fn new(agent: impl Into<String>, holder: PublicKey) -> Self {
        Attenuation {
            agent: agent.into(),
            holder,
            only_tools: None,
            tiers: BTreeMap::new(),
            budget: None,
            expires_at: None,
            constraints: Vec::new(),
        }
    }

    /// Keeps only these tools.
    pub fn only_tools<I, S>(mut self, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.only_tools = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// Raises `tool` to at least `tier`.
    pub fn tier(mut self, tool: impl Into<String>, tier: Tier) -> Self {
        self.tiers.insert(tool.into(), tier);
        self
    }

    /// Caps the budget.
    pub fn budget(mut self, budget: MicroUsd) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Expires no later than `at`.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(unix_secs(at));
        self
    }

    /// Adds a constraint on a tool argument.
    pub fn require(mut self, constraint: Constraint) -> Self {
        self.constraints.push(constraint);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ParseError> {
        validate_name("agent", &self.agent)?;
        if let Some(tools) = &self.only_tools {
            tools.iter().try_for_each(|t| validate_name("tool", t))?;
        }
        self.tiers
            .keys()
            .try_for_each(|t| validate_name("tool", t))?;
        if self.constraints.len() > MAX_CONSTRAINTS_PER_BLOCK {
            return Err(ParseError::Constraint {
                input: format!("{} constraints", self.constraints.len()),
                reason: "at most 64 constraints per delegation".into(),
            });
        }
        self.constraints.iter().try_for_each(Constraint::validate)
    }

    /// The block's checks in the order [`Attenuation::to_block`] writes them; the
    /// matcher walks them in the same order so both paths report the same failure.
    pub(crate) fn checks(&self) -> impl Iterator<Item = BlockCheck<'_>> {
        self.only_tools
            .iter()
            .map(BlockCheck::OnlyTools)
            .chain(self.expires_at.map(BlockCheck::Expires))
            .chain(self.constraints.iter().map(BlockCheck::Constraint))
    }

    pub(crate) fn to_block(&self) -> Result<BlockBuilder, TokenError> {
        let mut b = BlockBuilder::new()
            .fact(builder::fact(
                "delegate",
                &[
                    builder::string(&self.agent),
                    builder::bytes(&self.holder.to_bytes()),
                ],
            ))
            .map_err(internal)?;
        for (tool, tier) in &self.tiers {
            b = b
                .fact(builder::fact(
                    "tier_floor",
                    &[builder::string(tool), builder::int(tier.level())],
                ))
                .map_err(internal)?;
        }
        if let Some(budget) = self.budget {
            b = b
                .fact(builder::fact(
                    "budget",
                    &[builder::int(budget.as_datalog())],
                ))
                .map_err(internal)?;
        }
        if let Some(at) = self.expires_at {
            b = b
                .fact(builder::fact("expires", &[Term::Date(at)]))
                .map_err(internal)?;
        }
        for check in self.checks() {
            b = match check {
                BlockCheck::OnlyTools(tools) => {
                    // One alternative per tool rather than a set literal: a set's
                    // printed order depends on symbol interning, and verification
                    // compares printed Datalog.
                    let mut alternatives = (0..tools.len())
                        .map(|i| format!("operation({{t{i}}})"))
                        .collect::<Vec<_>>()
                        .join(" or ");
                    if alternatives.is_empty() {
                        // Delegating no tools at all: nothing may run.
                        alternatives.push_str("false");
                    }
                    let params = tools
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (format!("t{i}"), builder::string(t)));
                    code(b, &format!("check if {alternatives}"), params)?
                }
                BlockCheck::Expires(at) => expiry_check(b, at)?,
                BlockCheck::Constraint(c) => constraint_check(b, c)?,
            };
        }
        Ok(b)
    }
}

/// One check of a delegation block.
pub(crate) enum BlockCheck<'a> {
    OnlyTools(&'a BTreeSet<String>),
    Expires(u64),
    Constraint(&'a Constraint),
}

fn expiry_check(b: BlockBuilder, at: u64) -> Result<BlockBuilder, TokenError> {
    code(
        b,
        "check if time($time), $time <= {expiry}",
        [("expiry", Term::Date(at))],
    )
}

fn constraint_check(b: BlockBuilder, c: &Constraint) -> Result<BlockBuilder, TokenError> {
    let term = |v: &ArgValue| match v {
        ArgValue::Int(i) => builder::int(*i),
        ArgValue::Str(s) => builder::string(s),
    };
    let mut params = vec![
        ("tool".to_string(), builder::string(&c.tool)),
        ("arg".to_string(), builder::string(&c.arg)),
    ];
    let satisfied = match &c.value {
        // `in` is one alternative per value, for the same reason as the tool list.
        ConstraintValue::Many(values) => values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                params.push((format!("v{i}"), term(v)));
                format!("{}({{arg}}, {{v{i}}})", arg_predicate(v))
            })
            .collect::<Vec<_>>()
            .join(" or "),
        ConstraintValue::One(v) => {
            params.push(("want".to_string(), term(v)));
            let test = match c.op {
                Op::Eq => "$value == {want}",
                Op::Ne => "$value != {want}",
                Op::StartsWith => "$value.starts_with({want})",
                Op::EndsWith => "$value.ends_with({want})",
                Op::Le => "$value <= {want}",
                Op::Lt => "$value < {want}",
                Op::Ge => "$value >= {want}",
                Op::Gt => "$value > {want}",
                // `In` always carries a list; validation refuses anything else.
                Op::In => "false",
            };
            format!("{}({{arg}}, $value), {test}", arg_predicate(v))
        }
    };
    code(
        b,
        &format!("check if operation($op), $op != {{tool}} or {satisfied}"),
        params,
    )
}

/// The Datalog predicate that carries arguments of `v`'s type.
pub(crate) fn arg_predicate(v: &ArgValue) -> &'static str {
    match v {
        ArgValue::Int(_) => "arg_int",
        ArgValue::Str(_) => "arg_str",
    }
}

fn code<K: Into<String>>(
    b: BlockBuilder,
    source: &str,
    params: impl IntoIterator<Item = (K, Term)>,
) -> Result<BlockBuilder, TokenError> {
    let params: HashMap<String, Term> = params.into_iter().map(|(k, v)| (k.into(), v)).collect();
    b.code_with_params(source, params, HashMap::new())
        .map_err(internal)
}

pub(crate) fn internal(e: biscuit_auth::error::Token) -> TokenError {
    TokenError::Internal(e.to_string())
}

/// The JSON stored in a block's context.
#[derive(Serialize, Deserialize)]
#[serde(tag = "bulwark", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum BlockSpec {
    RootV1(RootGrant),
    DelegationV1(Attenuation),
}
