//! Money as integer micro-dollars inside, decimal dollars at the edges.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// The largest amount a token may carry: one billion dollars. It keeps every sum of
/// caps far away from `i64::MAX`, the largest integer Datalog can hold.
pub const MAX_MICRO_USD: u64 = 1_000_000_000 * MICRO_PER_USD;
const MICRO_PER_USD: u64 = 1_000_000;

/// An amount of US dollars in millionths (micro-dollars).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MicroUsd(u64);

impl MicroUsd {
    /// Zero dollars.
    pub const ZERO: MicroUsd = MicroUsd(0);

    /// An amount of micro-dollars; `None` above [`MAX_MICRO_USD`].
    pub fn new(micro: u64) -> Option<Self> {
        (micro <= MAX_MICRO_USD).then_some(Self(micro))
    }

    /// Whole dollars; `None` above [`MAX_MICRO_USD`].
    pub fn from_usd(dollars: u64) -> Option<Self> {
        dollars.checked_mul(MICRO_PER_USD).and_then(Self::new)
    }

    /// The amount in micro-dollars.
    pub fn micros(self) -> u64 {
        self.0
    }

    pub(crate) fn as_datalog(self) -> i64 {
        // MAX_MICRO_USD is far below i64::MAX, so this never truncates.
        self.0 as i64
    }

    pub(crate) fn from_datalog(value: i64) -> Option<Self> {
        u64::try_from(value).ok().and_then(Self::new)
    }
}

impl FromStr for MicroUsd {
    type Err = ParseError;

    /// Parses decimal dollars: `12`, `12.5`, `0.000001`, optionally with a leading `$`.
    /// At most six digits after the point; no sign, no exponent, no separators.
    fn from_str(text: &str) -> Result<Self, ParseError> {
        let bad = |reason: &str| ParseError::Money {
            input: text.to_string(),
            reason: reason.to_string(),
        };
        let body = text.trim();
        let body = body.strip_prefix('$').unwrap_or(body);
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, f),
            None => (body, ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(bad("expected an amount of dollars such as 12.50"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("only digits and one decimal point are allowed"));
        }
        if frac.len() > 6 {
            return Err(bad(
                "at most six digits after the decimal point (micro-dollars)",
            ));
        }
        let too_big = || bad("more than the largest budget, $1000000000");
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_big())?
        };
        let mut frac_micro: u64 = 0;
        for (i, digit) in frac.bytes().enumerate() {
            frac_micro += u64::from(digit - b'0') * 10u64.pow(5 - i as u32);
        }
        whole
            .checked_mul(MICRO_PER_USD)
            .and_then(|w| w.checked_add(frac_micro))
            .and_then(Self::new)
            .ok_or_else(too_big)
    }
}

impl fmt::Display for MicroUsd {
    /// Decimal dollars without trailing zeros: `12.5`, `0.000001`, `3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICRO_PER_USD;
        let frac = self.0 % MICRO_PER_USD;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Serialize for MicroUsd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MicroUsd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_decimal_dollars() {
        for (text, micros) in [
            ("0", 0),
            ("1", 1_000_000),
            ("$2.5", 2_500_000),
            ("0.000001", 1),
            (".25", 250_000),
            ("10.", 10_000_000),
            ("1000000000", MAX_MICRO_USD),
        ] {
            assert_eq!(text.parse::<MicroUsd>().unwrap().micros(), micros, "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_amount() {
        for text in [
            "",
            ".",
            "-1",
            "1e3",
            "1,000",
            "0.0000001",
            "1000000000.000001",
            "abc",
            "1.2.3",
            "99999999999999999999999",
        ] {
            assert!(
                text.parse::<MicroUsd>().is_err(),
                "{text:?} should not parse"
            );
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(micros in 0..=MAX_MICRO_USD) {
            let amount = MicroUsd::new(micros).unwrap();
            prop_assert_eq!(amount.to_string().parse::<MicroUsd>().unwrap(), amount);
        }
    }
}
