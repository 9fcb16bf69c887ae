//! Tool arguments as the capability layer sees them, and constraints on them.
//!
//! Only strings and integers take part in authorization. A caller with richer
//! arguments (JSON objects, floats) passes them as their canonical string form.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ParseError;

/// Longest name (tenant, agent, tool, argument) a token accepts.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest string argument or constraint value that takes part in authorization.
pub const MAX_VALUE_BYTES: usize = 4096;

/// A tool argument's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    /// An integer (amounts are integers of the smallest unit, e.g. cents).
    Int(i64),
    /// A string.
    Str(String),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<&str> for ArgValue {
    fn from(s: &str) -> Self {
        ArgValue::Str(s.to_string())
    }
}

impl From<String> for ArgValue {
    fn from(s: String) -> Self {
        ArgValue::Str(s)
    }
}

impl From<i64> for ArgValue {
    fn from(i: i64) -> Self {
        ArgValue::Int(i)
    }
}

impl ArgValue {
    /// Reads a value as written on a command line: an integer when it parses as one,
    /// otherwise a string. Quote it (`"42"`) to force a string.
    pub fn parse_cli(text: &str) -> ArgValue {
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return ArgValue::Str(inner.to_string());
        }
        match text.parse::<i64>() {
            Ok(i) => ArgValue::Int(i),
            Err(_) => ArgValue::Str(text.to_string()),
        }
    }
}

/// A tool call's arguments, sorted by name.
pub type Args = BTreeMap<String, ArgValue>;

/// SHA-256 over the canonical encoding of `args`: what approvals and request signatures
/// bind to, so the same arguments always hash the same and different ones never collide.
pub fn args_hash(args: &Args) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"bulwark-args-v1\0");
    encode_args(args, &mut |bytes| hasher.update(bytes));
    hasher.finalize().into()
}

/// Writes an unambiguous, length-prefixed encoding of `args`.
pub(crate) fn encode_args(args: &Args, out: &mut dyn FnMut(&[u8])) {
    out(&(args.len() as u64).to_be_bytes());
    for (name, value) in args {
        encode_bytes(name.as_bytes(), out);
        match value {
            ArgValue::Int(i) => {
                out(b"i");
                out(&i.to_be_bytes());
            }
            ArgValue::Str(s) => {
                out(b"s");
                encode_bytes(s.as_bytes(), out);
            }
        }
    }
}

pub(crate) fn encode_bytes(bytes: &[u8], out: &mut dyn FnMut(&[u8])) {
    out(&(bytes.len() as u64).to_be_bytes());
    out(bytes);
}

/// Checks a tenant, agent, tool or argument name: 1 to 128 bytes of ASCII letters,
/// digits and `_ - . : @ /`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), ParseError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ParseError::Name {
            kind,
            name: name.chars().take(MAX_NAME_BYTES + 8).collect(),
        })
    }
}

/// A comparison in an argument constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal to the value.
    Eq,
    /// Not equal to the value.
    Ne,
    /// A string that starts with the value.
    StartsWith,
    /// A string that ends with the value.
    EndsWith,
    /// One of a list of values.
    In,
    /// An integer at most the value.
    Le,
    /// An integer below the value.
    Lt,
    /// An integer at least the value.
    Ge,
    /// An integer above the value.
    Gt,
}

impl Op {
    /// Every operator.
    pub const ALL: [Op; 9] = [
        Op::Eq,
        Op::Ne,
        Op::StartsWith,
        Op::EndsWith,
        Op::In,
        Op::Le,
        Op::Lt,
        Op::Ge,
        Op::Gt,
    ];

    /// The operator's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::In => "in",
            Op::Le => "le",
            Op::Lt => "lt",
            Op::Ge => "ge",
            Op::Gt => "gt",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Op::Eq => "be equal to",
            Op::Ne => "not be",
            Op::StartsWith => "start with",
            Op::EndsWith => "end with",
            Op::In => "be one of",
            Op::Le => "be at most",
            Op::Lt => "be less than",
            Op::Ge => "be at least",
            Op::Gt => "be more than",
        }
    }
}

impl FromStr for Op {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == text)
            .or(match text {
                "==" | "=" => Some(Op::Eq),
                "!=" => Some(Op::Ne),
                "<=" => Some(Op::Le),
                "<" => Some(Op::Lt),
                ">=" => Some(Op::Ge),
                ">" => Some(Op::Gt),
                _ => None,
            })
            .ok_or_else(|| ParseError::Constraint {
                input: text.to_string(),
                reason:
                    "unknown operator; use eq, ne, starts_with, ends_with, in, le, lt, ge or gt"
                        .into(),
            })
    }
}

/// The value side of a constraint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConstraintValue {
    /// A single value.
    One(ArgValue),
    /// A list of values, for [`Op::In`].
    Many(Vec<ArgValue>),
}

/// A rule on one argument of one tool, added when delegating: the child may call the
/// tool only when the argument is present and satisfies it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Constraint {
    /// The tool whose calls are constrained.
    pub tool: String,
    /// The argument that is checked.
    pub arg: String,
    /// The comparison.
    pub op: Op,
    /// What the argument is compared with.
    pub value: ConstraintValue,
}

impl Constraint {
    /// Builds a constraint and checks that its operator and value types fit together.
    pub fn new(
        tool: impl Into<String>,
        arg: impl Into<String>,
        op: Op,
        value: ConstraintValue,
    ) -> Result<Self, ParseError> {
        let c = Constraint {
            tool: tool.into(),
            arg: arg.into(),
            op,
            value,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks names, sizes and that the operator fits the value's type.
    pub fn validate(&self) -> Result<(), ParseError> {
        validate_name("tool", &self.tool)?;
        validate_name("argument", &self.arg)?;
        let bad = |reason: &str| ParseError::Constraint {
            input: self.to_string(),
            reason: reason.to_string(),
        };
        let check_size = |v: &ArgValue| match v {
            ArgValue::Str(s) if s.len() > MAX_VALUE_BYTES => {
                Err(bad("a constraint value is longer than 4096 bytes"))
            }
            _ => Ok(()),
        };
        match (&self.op, &self.value) {
            (Op::In, ConstraintValue::Many(values)) => {
                if values.is_empty() || values.len() > 256 {
                    return Err(bad("`in` takes a list of 1 to 256 values"));
                }
                let all_str = values.iter().all(|v| matches!(v, ArgValue::Str(_)));
                let all_int = values.iter().all(|v| matches!(v, ArgValue::Int(_)));
                if !(all_str || all_int) {
                    return Err(bad("`in` takes a list of all strings or all integers"));
                }
                values.iter().try_for_each(check_size)
            }
            (Op::In, ConstraintValue::One(_)) => Err(bad("`in` takes a list: a,b,c")),
            (_, ConstraintValue::Many(_)) => Err(bad("only `in` takes a list")),
            (Op::StartsWith | Op::EndsWith, ConstraintValue::One(ArgValue::Int(_))) => {
                Err(bad("starts_with and ends_with compare strings"))
            }
            (Op::Le | Op::Lt | Op::Ge | Op::Gt, ConstraintValue::One(ArgValue::Str(_))) => {
                Err(bad("le, lt, ge and gt compare integers"))
            }
            (_, ConstraintValue::One(v)) => check_size(v),
        }
    }

    /// Whether `args` satisfy this constraint. A missing argument, or one of the wrong
    /// type, never does.
    pub fn allows(&self, args: &Args) -> bool {
        let Some(actual) = args.get(&self.arg) else {
            return false;
        };
        match (&self.value, actual) {
            (ConstraintValue::Many(values), actual) => values.contains(actual),
            (ConstraintValue::One(ArgValue::Str(want)), ArgValue::Str(got)) => match self.op {
                Op::Eq => got == want,
                Op::Ne => got != want,
                Op::StartsWith => got.starts_with(want.as_str()),
                Op::EndsWith => got.ends_with(want.as_str()),
                _ => false,
            },
            (ConstraintValue::One(ArgValue::Int(want)), ArgValue::Int(got)) => match self.op {
                Op::Eq => got == want,
                Op::Ne => got != want,
                Op::Le => got <= want,
                Op::Lt => got < want,
                Op::Ge => got >= want,
                Op::Gt => got > want,
                _ => false,
            },
            _ => false,
        }
    }

    /// The constraint in plain words: "argument `to` of `send_email` must end with ...".
    pub fn describe(&self) -> String {
        format!(
            "argument `{}` of `{}` must {} {}",
            self.arg,
            self.tool,
            self.op.words(),
            self.value_text()
        )
    }

    fn value_text(&self) -> String {
        match &self.value {
            ConstraintValue::One(v) => v.to_string(),
            ConstraintValue::Many(vs) => {
                let items: Vec<String> = vs.iter().map(ToString::to_string).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{} {} {}",
            self.tool,
            self.arg,
            self.op.as_str(),
            self.value_text()
        )
    }
}

impl FromStr for Constraint {
    type Err = ParseError;

    /// Parses `TOOL.ARG OP VALUE`, e.g. `send_email.to ends_with @acme.example`,
    /// `pay.amount le 100`, `pay.currency in EUR,USD`. Values that parse as integers
    /// are integers; quote a value (`"42"`) to make it a string.
    fn from_str(text: &str) -> Result<Self, ParseError> {
        let bad = |reason: &str| ParseError::Constraint {
            input: text.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = text.trim().splitn(3, char::is_whitespace);
        let target = parts.next().unwrap_or_default();
        let op = parts
            .next()
            .ok_or_else(|| bad("expected `TOOL.ARG OP VALUE`"))?;
        let value = parts
            .next()
            .map(str::trim)
            .ok_or_else(|| bad("expected `TOOL.ARG OP VALUE`"))?;
        let (tool, arg) = target
            .split_once('.')
            .ok_or_else(|| bad("the target must be TOOL.ARG, e.g. send_email.to"))?;
        let op: Op = op.parse()?;
        let value = if op == Op::In {
            ConstraintValue::Many(
                value
                    .split(',')
                    .map(|v| ArgValue::parse_cli(v.trim()))
                    .collect(),
            )
        } else {
            ConstraintValue::One(ArgValue::parse_cli(value))
        };
        Constraint::new(tool, arg, op, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, ArgValue)]) -> Args {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    type Case<'a> = (&'a str, &'a [(&'a str, ArgValue)], bool);

    #[test]
    fn constraint_table() {
        let cases: &[Case] = &[
            (
                "mail.to ends_with @acme.example",
                &[("to", "a@acme.example".into())],
                true,
            ),
            (
                "mail.to ends_with @acme.example",
                &[("to", "a@evil.example".into())],
                false,
            ),
            ("mail.to ends_with @acme.example", &[], false),
            ("mail.to starts_with ops-", &[("to", "ops-1".into())], true),
            ("pay.amount le 100", &[("amount", 100.into())], true),
            ("pay.amount le 100", &[("amount", 101.into())], false),
            ("pay.amount le 100", &[("amount", "50".into())], false),
            ("pay.amount lt 100", &[("amount", 100.into())], false),
            ("pay.amount ge 1", &[("amount", 1.into())], true),
            ("pay.amount gt 1", &[("amount", 1.into())], false),
            (
                "pay.currency in EUR,USD",
                &[("currency", "USD".into())],
                true,
            ),
            (
                "pay.currency in EUR,USD",
                &[("currency", "GBP".into())],
                false,
            ),
            ("pay.currency eq EUR", &[("currency", "EUR".into())], true),
            ("pay.currency ne EUR", &[("currency", "EUR".into())], false),
            ("pay.code eq \"42\"", &[("code", "42".into())], true),
            ("pay.code eq \"42\"", &[("code", 42.into())], false),
        ];
        for (text, a, want) in cases {
            let c: Constraint = text.parse().unwrap();
            assert_eq!(c.allows(&args(a)), *want, "{text} with {a:?}");
        }
    }

    #[test]
    fn ill_typed_constraints_are_refused() {
        for text in [
            "pay.amount le abc",
            "mail.to ends_with 5",
            "pay.x in 1,b",
            "pay.x eq",
            "payamount eq 1",
            "pay.x like y",
            "pa y.x eq 1",
        ] {
            assert!(text.parse::<Constraint>().is_err(), "{text}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("tool", "send_email").is_ok());
        assert!(validate_name("agent", "team/planner-1@acme").is_ok());
        for bad in ["", "a b", "x\"y", "é", &"a".repeat(129)] {
            assert!(validate_name("tool", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn args_hash_separates_types_and_boundaries() {
        let a = args(&[("x", "1".into())]);
        let b = args(&[("x", 1.into())]);
        let c = args(&[("x1", "".into())]);
        let d = args(&[("x", "1".into()), ("y", "".into())]);
        let hashes = [args_hash(&a), args_hash(&b), args_hash(&c), args_hash(&d)];
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j]);
            }
        }
        assert_eq!(args_hash(&a), args_hash(&a.clone()));
    }
}
