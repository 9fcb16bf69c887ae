//! The watchdog: an actor independent of every agent that validates each risky
//! proposal against the operator's business rules before it may run or reach a person.
//!
//! Rules: amount limits, recipient and domain allow-lists, hours, per-agent rate
//! limits, and checks written in Biscuit Datalog over the proposal's facts
//! (`agent($a)`, `tool($t)`, `arg($name, $value)`, `hour($h)`). A rejection names the
//! rule that failed. Agents cannot reach the watchdog: the gate calls it, with the
//! proposal the gate built.

use std::collections::{BTreeMap, HashMap, VecDeque};

use biscuit_auth::builder::AuthorizerBuilder;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cap on a numeric argument of a tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountLimit {
    /// The tool.
    pub tool: String,
    /// The argument.
    pub arg: String,
    /// The largest value allowed.
    pub max: i64,
}

/// An allow-list for an address argument: exact addresses or `@domain` suffixes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    /// The tool.
    pub tool: String,
    /// The argument.
    pub arg: String,
    /// Allowed values; an entry starting with `@` allows a domain.
    pub allowed: Vec<String>,
}

/// The operator's business rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogRules {
    /// Caps on amounts.
    pub amount_limits: Vec<AmountLimit>,
    /// Allowed recipients, accounts or domains.
    pub allow_lists: Vec<AllowList>,
    /// Hours of the day (UTC, start inclusive, end exclusive) in which risky actions may
    /// be proposed.
    pub hours: Option<(u8, u8)>,
    /// Most proposals one agent's tree (a root agent and every child under it) may
    /// make per hour, rejected ones included.
    pub max_per_agent_per_hour: Option<u32>,
    /// Biscuit Datalog checks over the proposal's facts, e.g.
    /// `check if tool("pay"), arg("currency", "EUR") or tool($t), $t != "pay"`.
    pub datalog: Vec<String>,
}

/// What the watchdog decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum WatchdogVerdict {
    /// Every rule passed.
    Pass,
    /// A rule failed.
    Reject {
        /// The rule, in words.
        rule: String,
    },
}

/// A rule set that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("watchdog rule `{rule}` does not parse: {reason}")]
pub struct RuleError {
    /// The rule.
    pub rule: String,
    /// Why.
    pub reason: String,
}

impl WatchdogRules {
    /// Checks that every Datalog rule parses.
    pub fn validate(&self) -> Result<(), RuleError> {
        for rule in &self.datalog {
            AuthorizerBuilder::new().code(rule).map_err(|e| RuleError {
                rule: rule.clone(),
                reason: e.to_string(),
            })?;
        }
        if let Some((start, end)) = self.hours
            && (start > 23 || end > 24 || start == end)
        {
            return Err(RuleError {
                rule: format!("hours {start}-{end}"),
                reason: "hours are 0–24 and start differs from end".into(),
            });
        }
        Ok(())
    }

    fn check(&self, p: &ProposalFacts, recent: usize) -> WatchdogVerdict {
        let reject = |rule: String| WatchdogVerdict::Reject { rule };
        for limit in self.amount_limits.iter().filter(|l| l.tool == p.tool) {
            if let Some(v) = p.args.get(&limit.arg) {
                let n = v
                    .as_i64()
                    .or_else(|| v.as_f64().map(|f| f.ceil() as i64))
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse::<i64>().ok()));
                match n {
                    Some(n) if n <= limit.max => {}
                    Some(n) => {
                        return reject(format!(
                            "{}.{} must be at most {} (got {n})",
                            limit.tool, limit.arg, limit.max
                        ));
                    }
                    None => {
                        return reject(format!(
                            "{}.{} must be a number at most {}",
                            limit.tool, limit.arg, limit.max
                        ));
                    }
                }
            }
        }
        for list in self.allow_lists.iter().filter(|l| l.tool == p.tool) {
            let Some(v) = p.args.get(&list.arg) else {
                continue;
            };
            let value = v.as_str().map(str::to_ascii_lowercase).unwrap_or_default();
            let ok = list.allowed.iter().any(|a| {
                let a = a.to_ascii_lowercase();
                if a.starts_with('@') {
                    value.ends_with(&a)
                } else {
                    value == a
                }
            });
            if !ok {
                return reject(format!(
                    "{}.{} must be one of {} (got {:?})",
                    list.tool,
                    list.arg,
                    list.allowed.join(", "),
                    value
                ));
            }
        }
        if let Some((start, end)) = self.hours {
            let h = p.hour;
            let inside = if start < end {
                h >= start && h < end
            } else {
                h >= start || h < end
            };
            if !inside {
                return reject(format!(
                    "risky actions are allowed from {start:02}:00 to {end:02}:00 UTC (now {h:02}:xx)"
                ));
            }
        }
        if let Some(max) = self.max_per_agent_per_hour
            && recent >= max as usize
        {
            return reject(format!(
                "agent {} may propose at most {max} actions per hour (with every agent of its tree, {})",
                p.agent, p.root
            ));
        }
        for rule in &self.datalog {
            if let Err(reason) = datalog_check(rule, p) {
                return reject(reason);
            }
        }
        WatchdogVerdict::Pass
    }
}

fn datalog_check(rule: &str, p: &ProposalFacts) -> Result<(), String> {
    use biscuit_auth::builder::{fact, int, string};
    let mut b = AuthorizerBuilder::new()
        .fact(fact("agent", &[string(&p.agent)]))
        .and_then(|b| b.fact(fact("tool", &[string(&p.tool)])))
        .and_then(|b| b.fact(fact("hour", &[int(i64::from(p.hour))])))
        .map_err(|e| format!("{rule}: {e}"))?;
    for (k, v) in &p.args {
        let term = match v {
            Value::Number(n) if n.is_i64() => int(n.as_i64().unwrap_or_default()),
            Value::String(s) => string(s),
            other => string(&other.to_string()),
        };
        b = b
            .fact(fact("arg", &[string(k), term]))
            .map_err(|e| format!("{rule}: {e}"))?;
    }
    let mut authorizer = b
        .code(rule)
        .and_then(|b| b.code("allow if true"))
        .and_then(|b| b.build_unauthenticated())
        .map_err(|e| format!("{rule}: {e}"))?;
    authorizer
        .authorize()
        .map(|_| ())
        .map_err(|_| format!("the rule `{rule}` failed"))
}

/// The facts of one proposal the watchdog sees.
#[derive(Clone, Debug)]
pub(crate) struct ProposalFacts {
    pub agent: String,
    /// The tenant and root agent of the proposing agent's tree: rate limits apply to
    /// the whole subtree, so spawning children buys no fresh quota.
    pub root: String,
    pub tool: String,
    pub args: BTreeMap<String, Value>,
    pub hour: u8,
    pub at_ms: u64,
}

pub(crate) enum WatchdogMsg {
    Validate {
        facts: ProposalFacts,
        reply: RpcReplyPort<WatchdogVerdict>,
    },
}

pub(crate) struct Watchdog;

/// Most proposal times kept per tree for the rate limit.
const MAX_RATE_WINDOW: usize = 10_000;
/// Trees tracked before idle ones are dropped.
const MAX_RATE_TREES: usize = 10_000;
/// Senders (or trees) a rate limiter tracks before idle ones are dropped.
pub(crate) const MAX_TRACKED: usize = MAX_RATE_TREES;

pub(crate) struct WatchdogState {
    rules: WatchdogRules,
    /// Per root agent's tree, when its recent proposals were made (ms), for the rate
    /// limit. Rejected proposals count too; bounded per tree and in trees.
    recent: HashMap<String, VecDeque<u64>>,
}

impl Actor for Watchdog {
    type Msg = WatchdogMsg;
    type State = WatchdogState;
    type Arguments = WatchdogRules;

    async fn pre_start(
        &self,
        _me: ActorRef<WatchdogMsg>,
        rules: WatchdogRules,
    ) -> Result<WatchdogState, ActorProcessingErr> {
        Ok(WatchdogState {
            rules,
            recent: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<WatchdogMsg>,
        msg: WatchdogMsg,
        state: &mut WatchdogState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WatchdogMsg::Validate { facts, reply } => {
                let hour_ago = facts.at_ms.saturating_sub(3_600_000);
                if state.recent.len() >= MAX_RATE_TREES {
                    state
                        .recent
                        .retain(|_, times| times.back().is_some_and(|t| *t >= hour_ago));
                }
                let recent = state.recent.entry(facts.root.clone()).or_default();
                while recent.front().is_some_and(|t| *t < hour_ago) {
                    recent.pop_front();
                }
                let verdict = state.rules.check(&facts, recent.len());
                // Every proposal counts, rejected ones included: a flood of refused
                // proposals is still a flood. Beyond the limit, nothing more is kept.
                let cap = state
                    .rules
                    .max_per_agent_per_hour
                    .map_or(MAX_RATE_WINDOW, |m| (m as usize).saturating_add(1))
                    .min(MAX_RATE_WINDOW);
                if recent.len() < cap {
                    recent.push_back(facts.at_ms);
                }
                let _ = reply.send(verdict);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(tool: &str, args: Value, hour: u8) -> ProposalFacts {
        ProposalFacts {
            agent: "ap".into(),
            root: "acme/ap".into(),
            tool: tool.into(),
            args: args
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            hour,
            at_ms: 0,
        }
    }

    fn rules() -> WatchdogRules {
        WatchdogRules {
            amount_limits: vec![AmountLimit {
                tool: "pay".into(),
                arg: "amount".into(),
                max: 10_000,
            }],
            allow_lists: vec![AllowList {
                tool: "email".into(),
                arg: "to".into(),
                allowed: vec!["@acme.example".into(), "cfo@partner.example".into()],
            }],
            hours: Some((8, 18)),
            max_per_agent_per_hour: Some(2),
            datalog: vec![r#"check if tool($t), $t != "pay" or arg("currency", "EUR")"#.into()],
        }
    }

    #[test]
    fn each_rule_rejects_with_its_reason_and_passes_otherwise() {
        let r = rules();
        r.validate().unwrap_or_else(|e| panic!("{e}"));
        let ok = facts("pay", json!({"amount": 500, "currency": "EUR"}), 10);
        assert_eq!(r.check(&ok, 0), WatchdogVerdict::Pass);
        let cases = [
            (
                facts("pay", json!({"amount": 50_000, "currency": "EUR"}), 10),
                "pay.amount must be at most 10000",
            ),
            (
                facts("pay", json!({"amount": "lots", "currency": "EUR"}), 10),
                "must be a number",
            ),
            (
                facts("email", json!({"to": "x@evil.example"}), 10),
                "email.to must be one of",
            ),
            (
                facts("pay", json!({"amount": 5, "currency": "EUR"}), 22),
                "from 08:00 to 18:00",
            ),
            (
                facts("pay", json!({"amount": 5, "currency": "USD"}), 10),
                "currency",
            ),
        ];
        for (f, want) in cases {
            match r.check(&f, 0) {
                WatchdogVerdict::Reject { rule } => {
                    assert!(rule.contains(want), "{rule} lacks {want}")
                }
                WatchdogVerdict::Pass => panic!("{f:?} passed"),
            }
        }
        assert!(
            matches!(r.check(&ok, 2), WatchdogVerdict::Reject { rule } if rule.contains("at most 2"))
        );
        assert_eq!(
            r.check(&facts("email", json!({"to": "Bob@ACME.example"}), 9), 0),
            WatchdogVerdict::Pass
        );
    }

    #[test]
    fn a_rule_that_does_not_parse_is_refused_up_front() {
        let r = WatchdogRules {
            datalog: vec!["check if (".into()],
            ..WatchdogRules::default()
        };
        assert!(r.validate().is_err());
    }
}
