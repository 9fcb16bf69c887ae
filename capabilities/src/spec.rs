//! What each block of a token says, and the one deterministic translation of that into
//! Datalog.
//!
//! Every block carries its spec as JSON in the block's context string and the Datalog
//! generated from it. On verification the Datalog is generated again from the spec and
//! compared with the block's actual contents, so the spec that the fast matcher and
//! `inspect` read is exactly what the Datalog enforces.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::BlockBuilder;
use biscuit_auth::builder::{self, Check, CheckKind, Rule, Term};
use serde::{Deserialize, Serialize};

use crate::args::{ArgValue, Constraint, ConstraintValue, Kind, Op, Scalar, validate_name};
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
    #[serde(with = "crate::keys::unchecked_hex")]
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
        if self.expires_at > MAX_EXPIRY_SECS {
            return Err(ParseError::Name {
                kind: "expiry (after year 9999)",
                name: self.expires_at.to_string(),
            });
        }
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
        b.check(expiry_check(self.expires_at)?).map_err(internal)
    }
}

/// What a parent hands to a child: the child's identity and every narrowing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attenuation {
    /// The child agent's id.
    pub agent: String,
    /// The child's holder key.
    #[serde(with = "crate::keys::unchecked_hex")]
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
    /// Arguments, `TOOL.ARG`, whose value must not come from untrusted content (an
    /// email, a web page, another agent): the runtime refuses a call whose such
    /// argument the agent only saw in untrusted content.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub trusted_args: BTreeSet<String>,
    /// Sandbox limits, `TOOL.LIMIT` → value, that the tool's calls must not exceed
    /// (see [`SANDBOX_LIMITS`]); along a chain the smallest value holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sandbox_limits: BTreeMap<String, u64>,
}

/// The sandbox limits a delegation may tighten: linear memory (bytes), wall-clock
/// deadline (milliseconds), fuel, the cap on each of stdout and stderr (bytes), and
/// the scratch directory's disk quota (bytes, and entries).
pub const SANDBOX_LIMITS: [&str; 6] = [
    "memory_bytes",
    "timeout_ms",
    "fuel",
    "output_bytes",
    "disk_bytes",
    "disk_files",
];

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
            trusted_args: BTreeSet::new(),
            sandbox_limits: BTreeMap::new(),
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

    /// Requires that `tool`'s argument `arg` never come from untrusted content.
    pub fn trusted_arg(mut self, tool: &str, arg: &str) -> Self {
        self.trusted_args.insert(format!("{tool}.{arg}"));
        self
    }

    /// Caps `tool`'s sandbox `limit` (one of [`SANDBOX_LIMITS`]) at `value`; a
    /// second cap on the same limit keeps the smaller.
    pub fn sandbox_limit(mut self, tool: &str, limit: &str, value: u64) -> Self {
        let key = format!("{tool}.{limit}");
        let v = self
            .sandbox_limits
            .get(&key)
            .map_or(value, |v| (*v).min(value));
        self.sandbox_limits.insert(key, v);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ParseError> {
        validate_name("agent", &self.agent)?;
        for (entry, value) in &self.sandbox_limits {
            let bad = |reason: String| ParseError::Constraint {
                input: format!("{entry}={value}"),
                reason,
            };
            let Some((tool, limit)) = entry.split_once('.') else {
                return Err(bad("a sandbox limit is written TOOL.LIMIT".into()));
            };
            validate_name("tool", tool)?;
            if !SANDBOX_LIMITS.contains(&limit) {
                return Err(bad(format!(
                    "unknown sandbox limit `{limit}`; one of {}",
                    SANDBOX_LIMITS.join(", ")
                )));
            }
            if *value == 0 || i64::try_from(*value).is_err() {
                return Err(bad("a sandbox limit is between 1 and 2^63 - 1".into()));
            }
        }
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
        for entry in &self.trusted_args {
            let Some((tool, arg)) = entry.split_once('.') else {
                return Err(ParseError::Constraint {
                    input: entry.clone(),
                    reason: "a trusted argument is written TOOL.ARG".into(),
                });
            };
            validate_name("tool", tool)?;
            validate_name("argument", arg)?;
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
        for entry in &self.trusted_args {
            let (tool, arg) = entry.split_once('.').unwrap_or((entry, ""));
            b = b
                .fact(builder::fact(
                    "trusted_arg",
                    &[builder::string(tool), builder::string(arg)],
                ))
                .map_err(internal)?;
        }
        for (entry, value) in &self.sandbox_limits {
            let (tool, limit) = entry.split_once('.').unwrap_or((entry, ""));
            b = b
                .fact(builder::fact(
                    "sandbox_limit",
                    &[
                        builder::string(tool),
                        builder::string(limit),
                        builder::int(i64::try_from(*value).unwrap_or(i64::MAX)),
                    ],
                ))
                .map_err(internal)?;
        }
        for check in self.checks() {
            let check = match check {
                // One alternative per tool rather than a set literal: a set's printed
                // order depends on symbol interning, and verification compares printed
                // Datalog. An empty list delegates no tool at all.
                BlockCheck::OnlyTools(tools) if tools.is_empty() => templates().nothing.clone(),
                BlockCheck::OnlyTools(tools) => {
                    let queries = tools
                        .iter()
                        .map(|t| with(&templates().operation_is, &[("tool", builder::string(t))]))
                        .collect::<Result<_, _>>()?;
                    one_of(queries)
                }
                BlockCheck::Expires(at) => expiry_check(at)?,
                BlockCheck::Constraint(c) => constraint_check(c)?,
            };
            b = b.check(check).map_err(internal)?;
        }
        Ok(b)
    }
}

/// Latest expiry a token may carry: the last second of year 9999, the last one
/// RFC 3339 can write.
pub const MAX_EXPIRY_SECS: u64 = 253_402_300_799;

/// Biscuit's printed form of the Datalog that `to_block` writes, produced directly from
/// the spec. Verification compares it with the token's printed block: the same text
/// for the same contents, without rebuilding and re-printing a block per verification.
/// (Biscuit prints strings unescaped; a hand-made block that prints the same text with
/// other contents can still not exceed its signer's rights, which the earlier blocks
/// enforce.)
pub(crate) struct Source(String);

impl Source {
    fn new() -> Self {
        Source(String::with_capacity(512))
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push('"');
        self.0.push_str(s);
        self.0.push('"');
        self
    }

    fn raw(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    fn int(&mut self, i: i64) -> &mut Self {
        self.0.push_str(&i.to_string());
        self
    }

    fn date(&mut self, secs: u64) -> &mut Self {
        self.0.push_str(&rfc3339(secs));
        self
    }

    fn value(&mut self, v: &ArgValue) -> &mut Self {
        match v {
            ArgValue::Int(i) => self.int(*i),
            ArgValue::Str(s) => self.str(s),
            // Validation keeps lists out of constraint values.
            ArgValue::List(_) => self.raw("[]"),
        }
    }

    fn scalar(&mut self, v: &Scalar<'_>) -> &mut Self {
        match v {
            Scalar::Int(i) => self.int(*i),
            Scalar::Str(s) => self.str(s),
        }
    }

    fn expiry_check(&mut self, at: u64) -> &mut Self {
        self.raw("check if time($time), $time <= ")
            .date(at)
            .raw(";\n")
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl RootGrant {
    pub(crate) fn source(&self) -> Source {
        let mut s = Source::new();
        s.raw("tenant(").str(&self.tenant).raw(");\n");
        s.raw("agent(").str(&self.agent).raw(");\n");
        s.raw("holder(hex:").raw(&self.holder.to_hex()).raw(");\n");
        for (tool, tier) in &self.tools {
            s.raw("tool(")
                .str(tool)
                .raw(", ")
                .int(tier.level())
                .raw(");\n");
        }
        s.raw("budget(").int(self.budget.as_datalog()).raw(");\n");
        s.raw("expires(").date(self.expires_at).raw(");\n");
        s.raw("max_depth(")
            .int(i64::from(self.max_depth))
            .raw(");\n");
        s.expiry_check(self.expires_at);
        s
    }
}

impl Attenuation {
    pub(crate) fn source(&self) -> Source {
        let mut s = Source::new();
        s.raw("delegate(")
            .str(&self.agent)
            .raw(", hex:")
            .raw(&self.holder.to_hex())
            .raw(");\n");
        for (tool, tier) in &self.tiers {
            s.raw("tier_floor(")
                .str(tool)
                .raw(", ")
                .int(tier.level())
                .raw(");\n");
        }
        if let Some(b) = self.budget {
            s.raw("budget(").int(b.as_datalog()).raw(");\n");
        }
        if let Some(at) = self.expires_at {
            s.raw("expires(").date(at).raw(");\n");
        }
        for entry in &self.trusted_args {
            let (tool, arg) = entry.split_once('.').unwrap_or((entry, ""));
            s.raw("trusted_arg(")
                .str(tool)
                .raw(", ")
                .str(arg)
                .raw(");\n");
        }
        for (entry, value) in &self.sandbox_limits {
            let (tool, limit) = entry.split_once('.').unwrap_or((entry, ""));
            s.raw("sandbox_limit(")
                .str(tool)
                .raw(", ")
                .str(limit)
                .raw(", ")
                .int(i64::try_from(*value).unwrap_or(i64::MAX))
                .raw(");\n");
        }
        for check in self.checks() {
            match check {
                BlockCheck::OnlyTools(tools) if tools.is_empty() => {
                    s.raw("check if false;\n");
                }
                BlockCheck::OnlyTools(tools) => {
                    s.raw("check if ");
                    for (i, tool) in tools.iter().enumerate() {
                        if i > 0 {
                            s.raw(" or ");
                        }
                        s.raw("operation(").str(tool).raw(")");
                    }
                    s.raw(";\n");
                }
                BlockCheck::Expires(at) => {
                    s.expiry_check(at);
                }
                BlockCheck::Constraint(c) => {
                    s.raw("check if operation($op), $op != ").str(&c.tool);
                    let kind = c.kind();
                    match (&c.value, c.each) {
                        (ConstraintValue::Many(values), false) => {
                            for v in values {
                                s.raw(" or ")
                                    .raw(kind.scalar_predicate())
                                    .raw("(")
                                    .str(&c.arg)
                                    .raw(", ")
                                    .value(v)
                                    .raw(")");
                            }
                        }
                        (_, each) => {
                            let pred = if each {
                                kind.list_predicate()
                            } else {
                                kind.scalar_predicate()
                            };
                            s.raw(" or ").raw(pred).raw("(").str(&c.arg);
                            let (before, after) = test_source(c.op);
                            if each {
                                s.raw(", $list), $list.all($value -> ");
                            } else {
                                s.raw(", $value), ");
                            }
                            s.raw(before);
                            let wants = c.wants();
                            if c.op == Op::In {
                                s.raw("[");
                                for (i, w) in wants.iter().enumerate() {
                                    if i > 0 {
                                        s.raw(", ");
                                    }
                                    s.scalar(w);
                                }
                                s.raw("]");
                            } else if let Some(w) = wants.first() {
                                s.scalar(w);
                            }
                            s.raw(after);
                            if each {
                                s.raw(")");
                            }
                        }
                    }
                    if c.if_present {
                        s.raw(" or args($names), !$names.contains(")
                            .str(&c.arg)
                            .raw(")");
                    }
                    s.raw(";\n");
                }
            }
        }
        s
    }
}

/// One check of a delegation block.
pub(crate) enum BlockCheck<'a> {
    OnlyTools(&'a BTreeSet<String>),
    Expires(u64),
    Constraint(&'a Constraint),
}

/// Parsed rule templates. Parsing Datalog text is the slowest step of building a
/// block, and verification rebuilds every block, so each shape is parsed once and then
/// cloned with its parameters set.
struct Templates {
    expiry: Rule,
    nothing: Check,
    operation_is: Rule,
    operation_is_not: Rule,
    /// `PRED(arg, $value), TEST` and `PREDS(arg, $list), $list.all($value -> TEST)`,
    /// by kind, operator and whether the constraint is over a list.
    arg_tests: HashMap<(Kind, Op, bool), Rule>,
    /// `PRED(arg, value)`: one alternative of an `in` list.
    arg_is: HashMap<Kind, Rule>,
    /// `args($names), !$names.contains(arg)`: the argument is absent.
    arg_absent: Rule,
}

/// The test of one value against a constraint's operator, split around the value
/// compared with. `le` and `lt` also require a non-negative value.
fn test_source(op: Op) -> (&'static str, &'static str) {
    match op {
        Op::Eq => ("$value == ", ""),
        Op::Ne => ("$value != ", ""),
        Op::StartsWith => ("$value.starts_with(", ")"),
        Op::NotStartsWith => ("!$value.starts_with(", ")"),
        Op::EndsWith => ("$value.ends_with(", ")"),
        Op::Le => ("$value >= 0 && $value <= ", ""),
        Op::Lt => ("$value >= 0 && $value < ", ""),
        Op::Ge => ("$value >= ", ""),
        Op::Gt => ("$value > ", ""),
        Op::In => ("", ".contains($value)"),
    }
}

fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        // The sources are constants covered by every test that builds a token.
        let rule = |source: &str| -> Rule {
            let check = Check::try_from(format!("check if {source}").as_str())
                .expect("a constant Datalog template parses");
            check.queries[0].clone()
        };
        let mut arg_tests = HashMap::new();
        for kind in Kind::ALL {
            for op in Op::ALL {
                let (before, after) = test_source(op);
                let test = format!("{before}{{want}}{after}");
                for each in [false, true] {
                    // A single value's `in` is one alternative per value instead.
                    if op == Op::In && !each {
                        continue;
                    }
                    let source = if each {
                        format!(
                            "{}({{arg}}, $list), $list.all($value -> {test})",
                            kind.list_predicate()
                        )
                    } else {
                        format!("{}({{arg}}, $value), {test}", kind.scalar_predicate())
                    };
                    arg_tests.insert((kind, op, each), rule(&source));
                }
            }
        }
        Templates {
            expiry: rule("time($time), $time <= {expiry}"),
            nothing: Check::try_from("check if false").expect("a constant Datalog template parses"),
            operation_is: rule("operation({tool})"),
            operation_is_not: rule("operation($op), $op != {tool}"),
            arg_tests,
            arg_is: Kind::ALL
                .into_iter()
                .map(|k| {
                    (
                        k,
                        rule(&format!("{}({{arg}}, {{value}})", k.scalar_predicate())),
                    )
                })
                .collect(),
            arg_absent: rule("args($names), !$names.contains({arg})"),
        }
    })
}

/// A copy of `template` with its parameters set.
fn with(template: &Rule, params: &[(&str, Term)]) -> Result<Rule, TokenError> {
    let mut rule = template.clone();
    for (name, value) in params {
        rule.set(name, value.clone()).map_err(internal)?;
    }
    Ok(rule)
}

fn one_of(queries: Vec<Rule>) -> Check {
    Check {
        queries,
        kind: CheckKind::One,
    }
}

fn expiry_check(at: u64) -> Result<Check, TokenError> {
    Ok(one_of(vec![with(
        &templates().expiry,
        &[("expiry", Term::Date(at))],
    )?]))
}

/// A Datalog term for one value.
pub(crate) fn term(v: &Scalar<'_>) -> Term {
    match v {
        Scalar::Int(i) => builder::int(*i),
        Scalar::Str(s) => builder::string(s),
    }
}

fn constraint_check(c: &Constraint) -> Result<Check, TokenError> {
    let t = templates();
    let arg = builder::string(&c.arg);
    let kind = c.kind();
    let wants = c.wants();
    // Either the call is to another tool, or the argument satisfies the constraint
    // (or, for an `if_present` constraint, is absent).
    let mut queries = vec![with(
        &t.operation_is_not,
        &[("tool", builder::string(&c.tool))],
    )?];
    match (&c.value, c.each) {
        // `in` is one alternative per value, for the same reason as the tool list.
        (ConstraintValue::Many(_), false) => {
            for v in &wants {
                queries.push(with(
                    &t.arg_is[&kind],
                    &[("arg", arg.clone()), ("value", term(v))],
                )?);
            }
        }
        (_, each) => {
            let template = t.arg_tests.get(&(kind, c.op, each)).ok_or_else(|| {
                TokenError::Internal(format!("no template for {}", c.op.as_str()))
            })?;
            let want = if c.op == Op::In {
                Term::Array(wants.iter().map(term).collect())
            } else {
                wants
                    .first()
                    .map(term)
                    .ok_or_else(|| TokenError::Internal(format!("no value in {c}")))?
            };
            queries.push(with(template, &[("arg", arg.clone()), ("want", want)])?);
        }
    }
    if c.if_present {
        queries.push(with(&t.arg_absent, &[("arg", arg)])?);
    }
    Ok(one_of(queries))
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
