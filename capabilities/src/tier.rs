//! Risk tiers, ordered from the most permissive to the strictest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// How much independent scrutiny a tool call gets before it runs. A token can only
/// move a tool to a stricter tier, never to a laxer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Read-only: runs.
    Auto,
    /// Runs, and the operator is notified.
    #[serde(rename = "auto+")]
    AutoPlus,
    /// The watchdog validates; runs with a rollback window.
    Propose,
    /// Waits for an operator's signed approval.
    Confirm,
    /// Never runs, whatever else the token says.
    Block,
}

impl Tier {
    /// Every tier, most permissive first.
    pub const ALL: [Tier; 5] = [
        Tier::Auto,
        Tier::AutoPlus,
        Tier::Propose,
        Tier::Confirm,
        Tier::Block,
    ];

    /// The tier's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Auto => "auto",
            Tier::AutoPlus => "auto+",
            Tier::Propose => "propose",
            Tier::Confirm => "confirm",
            Tier::Block => "block",
        }
    }

    pub(crate) fn level(self) -> i64 {
        self as i64
    }

    pub(crate) fn from_level(level: i64) -> Option<Tier> {
        usize::try_from(level)
            .ok()
            .and_then(|i| Tier::ALL.get(i).copied())
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Tier::Auto),
            "auto+" | "autoplus" | "auto_plus" => Ok(Tier::AutoPlus),
            "propose" => Ok(Tier::Propose),
            "confirm" => Ok(Tier::Confirm),
            "block" => Ok(Tier::Block),
            _ => Err(ParseError::Tier(text.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_order_from_laxest_to_strictest_and_round_trip() {
        assert!(Tier::ALL.windows(2).all(|w| w[0] < w[1]));
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>().unwrap(), tier);
            assert_eq!(Tier::from_level(tier.level()), Some(tier));
        }
        assert!("sometimes".parse::<Tier>().is_err());
        assert_eq!(Tier::from_level(5), None);
        assert_eq!(Tier::from_level(-1), None);
    }
}
