//! Tool arguments as the capability layer sees them, and constraints on them.
//!
//! Strings, integers and flat lists of them take part in authorization. A caller with
//! richer arguments (JSON objects, floats) passes them as their canonical string form.
//!
//! A constraint reads an argument through one typed view, the same in the compiled
//! matcher and in the Datalog facts of a request ([`Kind`]): a string, an integer, a
//! plain email address ([`is_plain_address`]) or a non-negative decimal amount
//! ([`Amount`]). A value that does not parse as the view a constraint needs never
//! satisfies it.

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
/// Most elements of a list argument that take part in authorization.
pub const MAX_LIST_LEN: usize = 256;
/// Largest whole number of units an [`Amount`] may hold: 10^12, so every amount in
/// millionths stays far below `i64::MAX`, the largest integer Datalog holds.
pub const MAX_AMOUNT_UNITS: i64 = 1_000_000_000_000;
const MICROS_PER_UNIT: i64 = 1_000_000;

/// A tool argument's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    /// An integer (amounts are integers of the smallest unit, e.g. cents).
    Int(i64),
    /// A string.
    Str(String),
    /// A flat list of integers and strings (e.g. several recipients). Only constraints
    /// written for lists (`each`) accept one, and then every element must satisfy them.
    List(Vec<ArgValue>),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Str(s) => write!(f, "{s:?}"),
            ArgValue::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
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
    /// otherwise a string. Quote it (`"42"`) to force a string; `[a,b]` is a list.
    pub fn parse_cli(text: &str) -> ArgValue {
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return ArgValue::Str(inner.to_string());
        }
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            if inner.trim().is_empty() {
                return ArgValue::List(Vec::new());
            }
            return ArgValue::List(
                inner
                    .split(',')
                    .map(|item| match ArgValue::parse_cli(item.trim()) {
                        // Lists are flat: a nested list is its text.
                        ArgValue::List(_) => ArgValue::Str(item.trim().to_string()),
                        other => other,
                    })
                    .collect(),
            );
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
        encode_value(value, out);
    }
}

fn encode_value(value: &ArgValue, out: &mut dyn FnMut(&[u8])) {
    match value {
        ArgValue::Int(i) => {
            out(b"i");
            out(&i.to_be_bytes());
        }
        ArgValue::Str(s) => {
            out(b"s");
            encode_bytes(s.as_bytes(), out);
        }
        ArgValue::List(items) => {
            out(b"l");
            out(&(items.len() as u64).to_be_bytes());
            for item in items {
                encode_value(item, out);
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

/// Whether `text` is exactly one plain email address, `local@domain`, and nothing else.
///
/// Refused: anything that could smuggle a second recipient or a header past a check on
/// the address's end or start — commas, semicolons, `Name <addr>` forms, quotes,
/// parentheses, whitespace and control characters (CR, LF, NUL, ...), a second `@`,
/// `%` and `!` routing, non-ASCII text. The domain is ASCII letters, digits, `-` and
/// dots between labels (IDNs in their `xn--` form). At most 254 bytes.
pub fn is_plain_address(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"#$&'*+-/=?^_`{|}~.".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    text.len() <= 254 && local_ok && domain_ok
}

/// A non-negative decimal amount with at most six digits after the point, held
/// exactly in millionths of a unit (no floating point anywhere).
///
/// Written as digits with an optional point and fraction: `100`, `100.50`,
/// `0.000001`. Refused: signs (`-5`, `+5`), exponents (`1e9`), surrounding or inner
/// whitespace (` 5`), separators (`1,000`), `NaN`/`inf`, a bare point, more than six
/// fraction digits and more than [`MAX_AMOUNT_UNITS`] units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    /// An amount of millionths; `None` when negative or above [`MAX_AMOUNT_UNITS`].
    pub fn from_micros(micros: i64) -> Option<Self> {
        (0..=MAX_AMOUNT_UNITS * MICROS_PER_UNIT)
            .contains(&micros)
            .then_some(Amount(micros))
    }

    /// Whole units; `None` when negative or above [`MAX_AMOUNT_UNITS`].
    pub fn from_units(units: i64) -> Option<Self> {
        units
            .checked_mul(MICROS_PER_UNIT)
            .and_then(Amount::from_micros)
    }

    /// The amount in millionths of a unit.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// An argument read as an amount: a non-negative integer (whole units) or a string
    /// that parses as one; `None` for anything else (a list, `-5`, `1e9`, ` 5`, ...).
    pub fn of(value: &ArgValue) -> Option<Amount> {
        match value {
            ArgValue::Int(i) => Amount::from_units(*i),
            ArgValue::Str(s) => s.parse().ok(),
            ArgValue::List(_) => None,
        }
    }
}

impl FromStr for Amount {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let bad = |reason: &str| ParseError::Amount {
            input: text.chars().take(64).collect(),
            reason: reason.to_string(),
        };
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (text, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || frac.is_some_and(|f| !digits(f)) {
            return Err(bad(
                "an amount is digits with an optional decimal point and fraction, e.g. 100.50 \
                 (no sign, exponent, spaces or separators)",
            ));
        }
        let frac = frac.unwrap_or("");
        if frac.len() > 6 {
            return Err(bad("at most six digits after the decimal point"));
        }
        let too_big = || bad("more than 1000000000000 units");
        let trimmed = whole.trim_start_matches('0');
        if trimmed.len() > 13 {
            return Err(too_big());
        }
        let whole: i64 = if trimmed.is_empty() {
            0
        } else {
            trimmed.parse().map_err(|_| too_big())?
        };
        let mut micros: i64 = 0;
        for (i, digit) in frac.bytes().enumerate() {
            micros += i64::from(digit - b'0') * 10i64.pow(5 - i as u32);
        }
        whole
            .checked_mul(MICROS_PER_UNIT)
            .and_then(|w| w.checked_add(micros))
            .and_then(Amount::from_micros)
            .ok_or_else(too_big)
    }
}

impl fmt::Display for Amount {
    /// Decimal with at least one fraction digit, so it never reads as an integer:
    /// `100.0`, `100.5`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_UNIT;
        let frac = format!("{:06}", self.0 % MICROS_PER_UNIT);
        let frac = frac.trim_end_matches('0');
        write!(f, "{whole}.{}", if frac.is_empty() { "0" } else { frac })
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a constraint reads an argument; the matcher and the request's Datalog facts use
/// the same view, so both paths see the same value or the same absence of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A string: `arg_str`, lists `arg_strs`.
    Str,
    /// An integer: `arg_int`, lists `arg_ints`.
    Int,
    /// A string that is one plain email address: `arg_addr`, lists `arg_addrs`.
    Addr,
    /// An [`Amount`], in millionths: `arg_amount`, lists `arg_amounts`.
    Amount,
}

/// One argument value as a [`Kind`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Str, Kind::Int, Kind::Addr, Kind::Amount];

    /// The predicate carrying single values of this kind.
    pub(crate) fn scalar_predicate(self) -> &'static str {
        match self {
            Kind::Str => "arg_str",
            Kind::Int => "arg_int",
            Kind::Addr => "arg_addr",
            Kind::Amount => "arg_amount",
        }
    }

    /// The predicate carrying lists whose every element is of this kind.
    pub(crate) fn list_predicate(self) -> &'static str {
        match self {
            Kind::Str => "arg_strs",
            Kind::Int => "arg_ints",
            Kind::Addr => "arg_addrs",
            Kind::Amount => "arg_amounts",
        }
    }

    /// `value` as this kind sees it; `None` when it is not of this kind.
    pub(crate) fn view(self, value: &ArgValue) -> Option<Scalar<'_>> {
        match (self, value) {
            (Kind::Str, ArgValue::Str(s)) => Some(Scalar::Str(s)),
            (Kind::Int, ArgValue::Int(i)) => Some(Scalar::Int(*i)),
            (Kind::Addr, ArgValue::Str(s)) if is_plain_address(s) => Some(Scalar::Str(s)),
            (Kind::Amount, v) => Amount::of(v).map(|a| Scalar::Int(a.micros())),
            _ => None,
        }
    }

    /// Every element of a list argument as this kind sees it; `None` when `value` is
    /// not a list, is too long, or has an element not of this kind.
    pub(crate) fn view_list(self, value: &ArgValue) -> Option<Vec<Scalar<'_>>> {
        match value {
            ArgValue::List(items) if items.len() <= MAX_LIST_LEN => {
                items.iter().map(|item| self.view(item)).collect()
            }
            _ => None,
        }
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
    /// A non-negative integer or amount at most the value.
    Le,
    /// A non-negative integer or amount below the value.
    Lt,
    /// An integer or amount at least the value.
    Ge,
    /// An integer or amount above the value.
    Gt,
    /// A string that does not start with the value.
    NotStartsWith,
}

impl Op {
    /// Every operator.
    pub const ALL: [Op; 10] = [
        Op::Eq,
        Op::Ne,
        Op::StartsWith,
        Op::EndsWith,
        Op::In,
        Op::Le,
        Op::Lt,
        Op::Ge,
        Op::Gt,
        Op::NotStartsWith,
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
            Op::NotStartsWith => "not_starts_with",
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
            Op::NotStartsWith => "not start with",
        }
    }

    /// Whether the operator compares magnitudes (integers or amounts).
    pub fn is_comparison(self) -> bool {
        matches!(self, Op::Le | Op::Lt | Op::Ge | Op::Gt)
    }

    /// Whether the operator compares strings by prefix or suffix.
    pub fn is_affix(self) -> bool {
        matches!(self, Op::StartsWith | Op::EndsWith | Op::NotStartsWith)
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
                reason: "unknown operator; use eq, ne, starts_with, not_starts_with, ends_with, \
                         in, le, lt, ge or gt"
                    .into(),
            })
    }
}

/// The value side of a constraint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConstraintValue {
    /// A list of values, for [`Op::In`]. (First, so that a JSON list reads as this and
    /// never as a single list value.)
    Many(Vec<ArgValue>),
    /// A single value.
    One(ArgValue),
    /// A decimal amount, for `le`, `lt`, `ge` and `gt`: the argument is read as an
    /// [`Amount`] (a non-negative integer or decimal string) and compared exactly.
    Amount {
        /// The bound.
        amount: Amount,
    },
}

/// A rule on one argument of one tool, added when delegating: the child may call the
/// tool only when the argument is present and satisfies it (or, with
/// [`Constraint::if_present`], when it is absent or satisfies it).
///
/// A string constraint whose value contains `@` is an address constraint: the argument
/// must be one plain address ([`is_plain_address`]), so `"x@evil.test, b@acme.example"`
/// or a value with a CR/LF header never passes `ends_with @acme.example`.
/// `le`/`lt` bound a non-negative value: a negative argument never passes an upper cap.
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
    /// The argument is a list and every element must satisfy the comparison (an empty
    /// list has no element that fails). A single value does not satisfy it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub each: bool,
    /// A call that omits the argument satisfies the constraint; one that passes it is
    /// checked as usual. Off by default: a constrained argument must be present.
    #[serde(default, skip_serializing_if = "is_false")]
    pub if_present: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
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
            each: false,
            if_present: false,
        };
        c.validate()?;
        Ok(c)
    }

    /// The same constraint over a list argument: every element must satisfy it.
    pub fn each(mut self) -> Self {
        self.each = true;
        self
    }

    /// The same constraint, satisfied also by a call that omits the argument.
    pub fn if_present(mut self) -> Self {
        self.if_present = true;
        self
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
            ArgValue::List(_) => Err(bad("a constraint value is a string or an integer")),
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
            (Op::In, _) => Err(bad("`in` takes a list: a,b,c")),
            (_, ConstraintValue::Many(_)) => Err(bad("only `in` takes a list")),
            (op, ConstraintValue::Amount { .. }) if op.is_comparison() => Ok(()),
            (_, ConstraintValue::Amount { .. }) => {
                Err(bad("a decimal amount bound takes le, lt, ge or gt"))
            }
            (op, ConstraintValue::One(ArgValue::Int(_))) if op.is_affix() => Err(bad(
                "starts_with, not_starts_with and ends_with compare strings",
            )),
            (op, ConstraintValue::One(ArgValue::Str(_))) if op.is_comparison() => {
                Err(bad("le, lt, ge and gt compare integers or decimal amounts"))
            }
            (op, ConstraintValue::One(ArgValue::Int(i))) if op.is_comparison() && *i < 0 => {
                Err(bad("le, lt, ge and gt bound non-negative values"))
            }
            (_, ConstraintValue::One(v)) => check_size(v),
        }
    }

    /// How this constraint reads its argument.
    pub(crate) fn kind(&self) -> Kind {
        let text_kind = |s: &str| {
            if s.contains('@') {
                Kind::Addr
            } else {
                Kind::Str
            }
        };
        match &self.value {
            ConstraintValue::Amount { .. } => Kind::Amount,
            ConstraintValue::One(ArgValue::Str(s)) => text_kind(s),
            ConstraintValue::Many(values)
                if values.iter().all(|v| matches!(v, ArgValue::Int(_))) =>
            {
                Kind::Int
            }
            ConstraintValue::Many(values) => {
                if values
                    .iter()
                    .any(|v| matches!(v, ArgValue::Str(s) if s.contains('@')))
                {
                    Kind::Addr
                } else {
                    Kind::Str
                }
            }
            ConstraintValue::One(_) => Kind::Int,
        }
    }

    /// The values compared with, as the argument's view holds them.
    pub(crate) fn wants(&self) -> Vec<Scalar<'_>> {
        fn scalar(v: &ArgValue) -> Option<Scalar<'_>> {
            match v {
                ArgValue::Int(i) => Some(Scalar::Int(*i)),
                ArgValue::Str(s) => Some(Scalar::Str(s)),
                ArgValue::List(_) => None,
            }
        }
        match &self.value {
            ConstraintValue::One(v) => scalar(v).into_iter().collect(),
            ConstraintValue::Many(vs) => vs.iter().filter_map(scalar).collect(),
            ConstraintValue::Amount { amount } => vec![Scalar::Int(amount.micros())],
        }
    }

    /// Whether one value (as the constraint's view sees it) satisfies the comparison.
    fn test(&self, got: &Scalar<'_>) -> bool {
        let wants = self.wants();
        if self.op == Op::In {
            return wants.contains(got);
        }
        let Some(want) = wants.first() else {
            return false;
        };
        match (want, got) {
            (Scalar::Str(want), Scalar::Str(got)) => match self.op {
                Op::Eq => got == want,
                Op::Ne => got != want,
                Op::StartsWith => got.starts_with(want),
                Op::NotStartsWith => !got.starts_with(want),
                Op::EndsWith => got.ends_with(want),
                _ => false,
            },
            (Scalar::Int(want), Scalar::Int(got)) => match self.op {
                Op::Eq => got == want,
                Op::Ne => got != want,
                Op::Le => *got >= 0 && got <= want,
                Op::Lt => *got >= 0 && got < want,
                Op::Ge => got >= want,
                Op::Gt => got > want,
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether `args` satisfy this constraint. A missing argument never does unless
    /// the constraint is [`Constraint::if_present`]; one that does not read as the
    /// constraint's type (a list for a single value, a malformed address or amount)
    /// never does.
    pub fn allows(&self, args: &Args) -> bool {
        let Some(actual) = args.get(&self.arg) else {
            return self.if_present;
        };
        let kind = self.kind();
        if self.each {
            kind.view_list(actual)
                .is_some_and(|items| items.iter().all(|x| self.test(x)))
        } else {
            kind.view(actual).is_some_and(|x| self.test(&x))
        }
    }

    /// The constraint in plain words: "argument `to` of `send_email` must end with ...".
    pub fn describe(&self) -> String {
        let subject = if self.each {
            format!(
                "every element of argument `{}` of `{}`",
                self.arg, self.tool
            )
        } else {
            format!("argument `{}` of `{}`", self.arg, self.tool)
        };
        let address = if self.kind() == Kind::Addr {
            " (one plain email address)"
        } else {
            ""
        };
        let when = if self.if_present {
            ", when it is passed"
        } else {
            ""
        };
        format!(
            "{subject} must {} {}{address}{when}",
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
            ConstraintValue::Amount { amount } => amount.to_string(),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tool, self.arg)?;
        if self.each {
            write!(f, " each")?;
        }
        if self.if_present {
            write!(f, " if_present")?;
        }
        let value = match &self.value {
            // `in` is written without brackets on the command line.
            ConstraintValue::Many(vs) => vs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            _ => self.value_text(),
        };
        write!(f, " {} {value}", self.op.as_str())
    }
}

impl FromStr for Constraint {
    type Err = ParseError;

    /// Parses `TOOL.ARG [each] [if_present] OP VALUE`, e.g.
    /// `send_email.to ends_with @acme.example`, `pay.amount le 100`,
    /// `pay.amount le 100.50` (a decimal amount), `pay.currency in EUR,USD`,
    /// `send_email.cc each if_present ends_with @acme.example`. Values that parse as
    /// integers are integers; quote a value (`"42"`) to make it a string.
    fn from_str(text: &str) -> Result<Self, ParseError> {
        let bad = |reason: &str| ParseError::Constraint {
            input: text.to_string(),
            reason: reason.to_string(),
        };
        let shape = "expected `TOOL.ARG [each] [if_present] OP VALUE`";
        let mut rest = text.trim();
        let target = next_word(&mut rest).ok_or_else(|| bad(shape))?;
        let (mut each, mut if_present) = (false, false);
        let op = loop {
            match next_word(&mut rest).ok_or_else(|| bad(shape))? {
                "each" if !each => each = true,
                "if_present" if !if_present => if_present = true,
                op => break op,
            }
        };
        let value = rest.trim();
        if value.is_empty() {
            return Err(bad(shape));
        }
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
        } else if op.is_comparison() && value.contains('.') {
            ConstraintValue::Amount {
                amount: value.parse()?,
            }
        } else {
            ConstraintValue::One(ArgValue::parse_cli(value))
        };
        let mut c = Constraint::new(tool, arg, op, value)?;
        c.each = each;
        c.if_present = if_present;
        Ok(c)
    }
}

/// The next whitespace-separated word of `rest`, advancing it.
fn next_word<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    *rest = after.trim_start();
    (!word.is_empty()).then_some(word)
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
