//! The watchdog: an actor independent of every agent that validates each risky
//! proposal against the operator's business rules before it may run or reach a person.
//!
//! Rules: amount limits, recipient and domain allow-lists, hours, per-agent rate
//! limits, and checks written in Biscuit Datalog over the proposal's facts
//! (`agent($a)`, `tool($t)`, `arg($name, $value)`, `hour($h)`). A rejection names the
//! rule that failed. Agents cannot reach the watchdog: the gate calls it, with the
//! proposal the gate built. For tools the operator lists in
//! [`WatchdogRules::every_call`], the gate also applies the rules to every AUTO and
//! AUTO+ call, synchronously, through [`WatchdogRules::check_call`].
//!
//! Every rule fails closed: an argument a rule is about must be present; amounts are
//! exact non-negative decimals ([`Amount`]); a recipient is one plain address
//! ([`is_plain_address`]) or a list of them, every one of which must be allowed; a
//! Datalog rule runs under explicit limits ([`DatalogLimits::DEFAULT`]) and one that
//! cannot finish is reported as such ([`RuleFailure::Unevaluated`]), never passed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use biscuit_auth::builder::AuthorizerBuilder;
use bulwark_capabilities::{Amount, DatalogLimit, DatalogLimits, is_plain_address};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cap on a numeric argument of a tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountLimit {
    /// The tool.
    pub tool: String,
    /// The argument: a non-negative integer or decimal (number or string, e.g.
    /// `100.50`); a call without it, or with anything else, is rejected.
    pub arg: String,
    /// The largest value allowed (whole units, non-negative).
    pub max: i64,
}

/// An allow-list for an address argument: exact addresses or `@domain` entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    /// The tool.
    pub tool: String,
    /// The argument: one value or a list of them, every one of which must be allowed;
    /// a call without it is rejected.
    pub arg: String,
    /// Allowed values, compared without case; an entry starting with `@` allows every
    /// plain address ([`is_plain_address`]) in exactly that domain.
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
    /// Tools whose every call the rules cover, AUTO and AUTO+ included, not only the
    /// PROPOSE and CONFIRM calls that become proposals. A call at AUTO that fails a
    /// rule is denied with the rule named. (The per-agent rate counts proposals only.)
    pub every_call: BTreeSet<String>,
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

/// Why the rules stopped a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleFailure {
    /// A rule failed: the call is refused.
    #[error("{rule}")]
    Failed {
        /// The rule, in words.
        rule: String,
    },
    /// A Datalog rule could not be evaluated within its run limits (e.g. on an
    /// overloaded machine): no decision was made, so the call is refused now, and the
    /// same call may pass when retried.
    #[error(
        "the rule `{rule}` could not be evaluated within the Datalog {limit} limit: no decision was made; retry"
    )]
    Unevaluated {
        /// The rule.
        rule: String,
        /// The limit reached.
        limit: DatalogLimit,
    },
}

impl RuleFailure {
    /// Whether the same call may pass when retried: only when no decision was made.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RuleFailure::Unevaluated { .. })
    }
}

impl WatchdogRules {
    /// Checks that every Datalog rule parses, that limits are non-negative and that
    /// allow-list entries are usable.
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
        for limit in &self.amount_limits {
            if Amount::from_units(limit.max).is_none() {
                return Err(RuleError {
                    rule: format!("{}.{} at most {}", limit.tool, limit.arg, limit.max),
                    reason: "an amount limit is a whole number from 0 to 10^12".into(),
                });
            }
        }
        for list in &self.allow_lists {
            for entry in &list.allowed {
                let usable = match entry.strip_prefix('@') {
                    Some(domain) => is_plain_address(&format!("x@{domain}")),
                    None => !entry.is_empty(),
                };
                if !usable {
                    return Err(RuleError {
                        rule: format!("{}.{} allow-list", list.tool, list.arg),
                        reason: format!(
                            "`{entry}` is neither a value nor an @domain (e.g. @acme.example)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether the rules cover every call of `tool`, not only its proposals.
    pub fn covers_every_call(&self, tool: &str) -> bool {
        self.every_call.contains(tool)
    }

    /// Checks one call of `tool` by `agent` at `now`, synchronously, against every rule
    /// except the per-agent proposal rate: what the gate calls for AUTO and AUTO+
    /// calls. A tool not listed in [`WatchdogRules::every_call`] passes untouched.
    pub fn check_call(
        &self,
        agent: &str,
        tool: &str,
        args: &Value,
        now: SystemTime,
    ) -> Result<(), RuleFailure> {
        if !self.covers_every_call(tool) {
            return Ok(());
        }
        let at_ms = crate::clock::unix_ms(now);
        let facts = ProposalFacts {
            agent: agent.to_string(),
            // The rate limit, the only rule that reads the tree, is not applied here.
            root: String::new(),
            tool: tool.to_string(),
            args: args
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            hour: ((at_ms / 3_600_000) % 24) as u8,
            at_ms,
        };
        self.evaluate(&facts, None)
    }

    fn check(&self, p: &ProposalFacts, recent: usize) -> WatchdogVerdict {
        match self.evaluate(p, Some(recent)) {
            Ok(()) => WatchdogVerdict::Pass,
            Err(failure) => WatchdogVerdict::Reject {
                rule: failure.to_string(),
            },
        }
    }

    /// Every rule in order; `recent` is the agent's proposals in the past hour, when the
    /// rate limit applies.
    fn evaluate(&self, p: &ProposalFacts, recent: Option<usize>) -> Result<(), RuleFailure> {
        let reject = |rule: String| Err(RuleFailure::Failed { rule });
        for limit in self.amount_limits.iter().filter(|l| l.tool == p.tool) {
            let Some(v) = p.args.get(&limit.arg) else {
                return reject(format!(
                    "{}.{} is required: it must be an amount of at most {}",
                    limit.tool, limit.arg, limit.max
                ));
            };
            let cap = Amount::from_units(limit.max).map_or(-1, Amount::micros);
            match amount_of(v) {
                Some(n) if n.micros() <= cap => {}
                Some(_) => {
                    return reject(format!(
                        "{}.{} must be at most {} (got {})",
                        limit.tool,
                        limit.arg,
                        limit.max,
                        shown(v)
                    ));
                }
                None => {
                    return reject(format!(
                        "{}.{} must be a non-negative number at most {} (got {})",
                        limit.tool,
                        limit.arg,
                        limit.max,
                        shown(v)
                    ));
                }
            }
        }
        for list in self.allow_lists.iter().filter(|l| l.tool == p.tool) {
            let refused = |detail: String| {
                reject(format!(
                    "{}.{} must be one of {} ({detail})",
                    list.tool,
                    list.arg,
                    list.allowed.join(", "),
                ))
            };
            let Some(v) = p.args.get(&list.arg) else {
                return refused("it is missing".into());
            };
            let values: Option<Vec<&str>> = match v {
                Value::String(s) => Some(vec![s.as_str()]),
                Value::Array(items) if !items.is_empty() => {
                    items.iter().map(Value::as_str).collect()
                }
                _ => None,
            };
            let Some(values) = values else {
                return refused(format!("got {}: not a value or a list of them", shown(v)));
            };
            if let Some(bad) = values.iter().find(|value| !list.allows(value)) {
                return refused(format!("got {:?}", truncated(bad)));
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
        if let (Some(max), Some(recent)) = (self.max_per_agent_per_hour, recent)
            && recent >= max as usize
        {
            return reject(format!(
                "agent {} may propose at most {max} actions per hour (with every agent of its tree, {})",
                p.agent, p.root
            ));
        }
        for rule in &self.datalog {
            datalog_check(rule, p)?;
        }
        Ok(())
    }
}

impl AllowList {
    /// Whether one value is allowed: equal to an entry (without case), or a plain
    /// address in an `@domain` entry's exact domain.
    fn allows(&self, value: &str) -> bool {
        self.allowed
            .iter()
            .any(|entry| match entry.strip_prefix('@') {
                Some(domain) => {
                    is_plain_address(value)
                        && value
                            .rsplit_once('@')
                            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
                }
                None => value.eq_ignore_ascii_case(entry),
            })
    }
}

/// An argument read as an amount: a non-negative JSON integer, or a number or string
/// whose decimal text is an [`Amount`] (`100.50`); never `-5`, `1e9`, ` 5` or NaN.
fn amount_of(v: &Value) -> Option<Amount> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Amount::from_units(i),
            // Floats are read from their shortest decimal text, exactly.
            None => n.to_string().parse().ok(),
        },
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn shown(v: &Value) -> String {
    truncated(&v.to_string())
}

fn truncated(text: &str) -> String {
    let mut t: String = text.chars().take(80).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
}

fn datalog_check(rule: &str, p: &ProposalFacts) -> Result<(), RuleFailure> {
    use biscuit_auth::builder::{fact, int, string};
    let limits = DatalogLimits::DEFAULT;
    let fail = |e: biscuit_auth::error::Token| match limits.reached(&e) {
        Some(limit) => RuleFailure::Unevaluated {
            rule: rule.to_string(),
            limit,
        },
        None => RuleFailure::Failed {
            rule: format!("the rule `{rule}` failed"),
        },
    };
    let mut b = AuthorizerBuilder::new()
        .set_limits(limits.to_biscuit())
        .fact(fact("agent", &[string(&p.agent)]))
        .and_then(|b| b.fact(fact("tool", &[string(&p.tool)])))
        .and_then(|b| b.fact(fact("hour", &[int(i64::from(p.hour))])))
        .map_err(fail)?;
    for (k, v) in &p.args {
        let term = match v {
            Value::Number(n) if n.is_i64() => int(n.as_i64().unwrap_or_default()),
            Value::String(s) => string(s),
            other => string(&other.to_string()),
        };
        b = b.fact(fact("arg", &[string(k), term])).map_err(fail)?;
    }
    let mut authorizer = b
        .code(rule)
        .and_then(|b| b.code("allow if true"))
        .and_then(|b| b.build_unauthenticated())
        .map_err(fail)?;
    authorizer.authorize().map(|_| ()).map_err(fail)
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

pub(crate) struct WatchdogState {
    rules: WatchdogRules,
    /// Per root agent's tree, when its recent proposals were made (ms), for the rate
    /// limit. Rejected proposals count too; bounded per tree and in trees.
    recent: crate::rate::RateWindows,
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
            recent: crate::rate::RateWindows::new(3_600_000),
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
                let recent = state.recent.recent(&facts.root, facts.at_ms);
                let verdict = state.rules.check(&facts, recent);
                // Every proposal counts, rejected ones included: a flood of refused
                // proposals is still a flood. Beyond the limit, nothing more is kept.
                let keep = state
                    .rules
                    .max_per_agent_per_hour
                    .map_or(usize::MAX, |m| (m as usize).saturating_add(1));
                state.recent.record(&facts.root, facts.at_ms, keep);
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
            every_call: BTreeSet::new(),
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
                "must be a non-negative number",
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

    fn rejected(r: &WatchdogRules, f: &ProposalFacts) -> String {
        match r.check(f, 0) {
            WatchdogVerdict::Reject { rule } => rule,
            WatchdogVerdict::Pass => panic!("{f:?} passed"),
        }
    }

    #[test]
    fn recipients_are_parsed_every_one_must_be_allowed_and_smuggling_is_refused() {
        let r = rules();
        let email = |to: Value| facts("email", json!({ "to": to }), 10);
        for ok in [
            json!("bob@acme.example"),
            json!("BOB@Acme.Example"),
            json!("cfo@partner.example"),
            json!(["a@acme.example", "cfo@partner.example"]),
        ] {
            assert_eq!(
                r.check(&email(ok.clone()), 0),
                WatchdogVerdict::Pass,
                "{ok}"
            );
        }
        for attack in [
            json!("attacker@evil.test, bob@acme.example"),
            json!("attacker@evil.test,bob@acme.example"),
            json!("attacker@evil.test; bob@acme.example"),
            json!("bob@acme.example\r\nBcc: attacker@evil.test"),
            json!("attacker@evil.test\r\nCc: bob@acme.example"),
            json!("Attacker <attacker@evil.test> bob@acme.example"),
            json!("Bob <bob@acme.example>"),
            json!("attacker@evil.test@acme.example"),
            json!("attacker%evil.test@acme.example"),
            json!("bob@sub.acme.example"),
            json!("bob@acme.example "),
            json!(""),
            json!(["a@acme.example", "attacker@evil.test"]),
            json!(["a@acme.example", 5]),
            json!([]),
            json!(5),
            json!({"to": "bob@acme.example"}),
        ] {
            let rule = rejected(&r, &email(attack.clone()));
            assert!(rule.contains("email.to must be one of"), "{attack}: {rule}");
        }
        let rule = rejected(&r, &facts("email", json!({"cc": "bob@acme.example"}), 10));
        assert!(rule.contains("it is missing"), "{rule}");
    }

    #[test]
    fn amounts_are_exact_non_negative_decimals_and_a_missing_one_fails_closed() {
        let r = WatchdogRules {
            amount_limits: vec![AmountLimit {
                tool: "pay".into(),
                arg: "amount".into(),
                max: 100,
            }],
            ..WatchdogRules::default()
        };
        let pay = |amount: Value| facts("pay", json!({ "amount": amount }), 10);
        for ok in [
            json!(100),
            json!(0),
            json!(99.99),
            json!("100"),
            json!("100.000000"),
            json!(100.0),
        ] {
            assert_eq!(r.check(&pay(ok.clone()), 0), WatchdogVerdict::Pass, "{ok}");
        }
        for bad in [
            json!(-5),
            json!(-0.5),
            json!("-5"),
            json!(100.5),
            json!(100.000001),
            json!("100.01"),
            json!("1e9"),
            json!("1e1"),
            json!(1e300),
            json!(" 5"),
            json!("5 "),
            json!("NaN"),
            json!("+5"),
            json!("0x10"),
            json!("1,000"),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(null),
            json!(true),
            json!([5]),
        ] {
            let rule = rejected(&r, &pay(bad.clone()));
            assert!(rule.contains("pay.amount"), "{bad}: {rule}");
        }
        let rule = rejected(&r, &facts("pay", json!({"currency": "EUR"}), 10));
        assert!(rule.contains("pay.amount is required"), "{rule}");
        let negative = WatchdogRules {
            amount_limits: vec![AmountLimit {
                tool: "pay".into(),
                arg: "amount".into(),
                max: -1,
            }],
            ..WatchdogRules::default()
        };
        assert!(negative.validate().is_err());
        let bad_domain = WatchdogRules {
            allow_lists: vec![AllowList {
                tool: "email".into(),
                arg: "to".into(),
                allowed: vec!["@acme example".into()],
            }],
            ..WatchdogRules::default()
        };
        assert!(bad_domain.validate().is_err());
    }

    #[test]
    fn a_datalog_rule_past_its_run_limits_is_unevaluated_and_retryable_not_a_pass() {
        // A legitimate program that derives more facts than the limit allows: the
        // cross product of 100 numbers.
        let numbers: String = (0..100).map(|i| format!("n({i});\n")).collect();
        let heavy = format!("{numbers}pair($x, $y) <- n($x), n($y);\ncheck if pair(0, 0);");
        let r = WatchdogRules {
            datalog: vec![heavy.clone()],
            every_call: ["pay".to_string()].into(),
            ..WatchdogRules::default()
        };
        r.validate().unwrap();
        let f = facts("pay", json!({"amount": 5}), 10);
        let failure = datalog_check(&heavy, &f).unwrap_err();
        assert!(
            matches!(
                failure,
                RuleFailure::Unevaluated {
                    limit: DatalogLimit::Facts(_),
                    ..
                }
            ),
            "{failure:?}"
        );
        assert!(failure.is_retryable());
        let rule = rejected(&r, &f);
        assert!(
            rule.contains("could not be evaluated") && rule.contains("retry"),
            "{rule}"
        );
        let got = r.check_call("ap", "pay", &json!({"amount": 5}), std::time::UNIX_EPOCH);
        assert!(
            got.as_ref().is_err_and(RuleFailure::is_retryable),
            "{got:?}"
        );
        // The same shape within the limits passes, and a failing rule is a plain,
        // non-retryable failure.
        let light = "n(0); n(1); pair($x, $y) <- n($x), n($y); check if pair(0, 1);";
        assert_eq!(datalog_check(light, &f), Ok(()));
        let failing = datalog_check("check if pair(7, 7);", &f).unwrap_err();
        assert!(!failing.is_retryable(), "{failing}");
    }

    #[test]
    fn check_call_covers_only_the_listed_tools() {
        let mut r = rules();
        r.hours = None;
        let bad = json!({"to": "attacker@evil.test, bob@acme.example"});
        let now = std::time::UNIX_EPOCH;
        assert_eq!(r.check_call("ap", "email", &bad, now), Ok(()));
        r.every_call.insert("email".into());
        let failure = r.check_call("ap", "email", &bad, now).unwrap_err();
        assert!(!failure.is_retryable());
        assert!(
            failure.to_string().contains("email.to must be one of"),
            "{failure}"
        );
        assert_eq!(
            r.check_call("ap", "email", &json!({"to": "bob@acme.example"}), now),
            Ok(())
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
