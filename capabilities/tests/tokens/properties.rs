//! Property tests over random delegation chains: whatever a child allows its parent
//! allows, limits only shrink down a chain, and the compiled matcher decides exactly
//! as biscuit's Datalog does.

use std::time::Duration;

use bulwark_capabilities::{
    Amount, ArgValue, Args, Attenuation, Constraint, ConstraintValue, KeyPair, MicroUsd, Op,
    Request, Revocations, Tier, Token,
};
use proptest::prelude::*;

use crate::{fixture, now};

const TOOLS: [&str; 4] = ["read_inbox", "send_email", "pay", "delete_db"];
const STRINGS: [&str; 10] = [
    "a@acme.example",
    "b@evil.example",
    "EUR",
    "USD",
    "",
    "b@evil.example, a@acme.example",
    "a@acme.example\r\nBcc: b@evil.example",
    "12.5",
    "-3",
    "1e9",
];
const N: usize = STRINGS.len();

/// Tool, argument, operator, integer, string and (each, if_present, decimal) picks.
type ConstraintPick = (usize, usize, usize, i64, usize, (bool, bool, bool));

/// A random narrowing, described independently of any parent so proptest can shrink it.
#[derive(Debug, Clone)]
struct Step {
    keep: Option<Vec<bool>>,
    tiers: Vec<(usize, usize)>,
    budget_cut: Option<u64>,
    expiry_cut: Option<u64>,
    constraints: Vec<ConstraintPick>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::option::of(proptest::collection::vec(any::<bool>(), 4)),
        proptest::collection::vec((0..4usize, 0..5usize), 0..3),
        proptest::option::of(0..100u64),
        proptest::option::of(0..4000u64),
        proptest::collection::vec(
            (
                0..4usize,
                0..3usize,
                0..Op::ALL.len(),
                0..200i64,
                0..N,
                (any::<bool>(), any::<bool>(), any::<bool>()),
            ),
            0..3,
        ),
    )
        .prop_map(|(keep, tiers, budget_cut, expiry_cut, constraints)| Step {
            keep,
            tiers,
            budget_cut,
            expiry_cut,
            constraints,
        })
}

const ARGS: [&str; 3] = ["to", "amount", "currency"];

/// Turns a step into a valid attenuation of `parent`: only narrowing, always accepted.
fn narrowing(parent: &Token, step: &Step, agent: String, holder: &KeyPair) -> Attenuation {
    let eff = parent.effective();
    let mut att = Attenuation::new(agent, holder.public());
    let mut kept: Vec<String> = eff.tools.keys().cloned().collect();
    if let Some(keep) = &step.keep {
        kept = eff
            .tools
            .keys()
            .filter(|t| TOOLS.iter().position(|x| x == t).is_some_and(|i| keep[i]))
            .cloned()
            .collect();
        att = att.only_tools(kept.clone());
    }
    for &(tool, tier) in &step.tiers {
        let name = TOOLS[tool];
        if let Some(current) = eff
            .tools
            .get(name)
            .filter(|_| kept.iter().any(|k| k == name))
        {
            att = att.tier(name, Tier::ALL[tier].max(*current));
        }
    }
    if let Some(cut) = step.budget_cut {
        att = att.budget(MicroUsd::new(eff.budget.micros() * cut / 100).unwrap());
    }
    if let Some(cut) = step.expiry_cut {
        att = att.expires_at(parent.expires_at() - Duration::from_secs(cut));
    }
    for &(tool, arg, op, int, s, (each, if_present, decimal)) in &step.constraints {
        let name = TOOLS[tool];
        if !kept.iter().any(|k| k == name) {
            continue;
        }
        let op = Op::ALL[op];
        let value = match op {
            Op::In => ConstraintValue::Many(vec![STRINGS[s].into(), STRINGS[(s + 1) % N].into()]),
            Op::StartsWith | Op::EndsWith | Op::NotStartsWith => {
                let text = STRINGS[s];
                // A prefix of the start or a suffix of the end, by whole characters.
                let cut: String = if op == Op::EndsWith {
                    let n = text.chars().count();
                    text.chars()
                        .skip(n.saturating_sub(int as usize % 16))
                        .collect()
                } else {
                    text.chars().take(int as usize % 16).collect()
                };
                ConstraintValue::One(cut.into())
            }
            Op::Le | Op::Lt | Op::Ge | Op::Gt if decimal => ConstraintValue::Amount {
                amount: Amount::from_micros(int * 250_000).unwrap(),
            },
            Op::Le | Op::Lt | Op::Ge | Op::Gt => ConstraintValue::One(ArgValue::Int(int)),
            Op::Eq | Op::Ne => {
                if int % 2 == 0 {
                    ConstraintValue::One(ArgValue::Int(int))
                } else {
                    ConstraintValue::One(STRINGS[s].into())
                }
            }
        };
        let mut c = Constraint::new(name, ARGS[arg], op, value).unwrap();
        c.each = each;
        c.if_present = if_present;
        att = att.require(c);
    }
    att
}

#[derive(Debug, Clone)]
struct Probe {
    tool: usize,
    args: Vec<(usize, Option<ArgValue>)>,
    late_secs: u64,
}

fn probe() -> impl Strategy<Value = Probe> {
    let scalar = prop_oneof![
        (-10..210i64).prop_map(ArgValue::Int),
        (0..N).prop_map(|i| ArgValue::Str(STRINGS[i].into())),
        (0..60_000_000u64).prop_map(|m| ArgValue::Str(format!(
            "{}.{:06}",
            m / 1_000_000,
            m % 1_000_000
        ))),
    ];
    let value = prop_oneof![
        3 => scalar.clone(),
        1 => proptest::collection::vec(scalar, 0..4).prop_map(ArgValue::List),
    ];
    (
        0..5usize,
        proptest::collection::vec((0..3usize, proptest::option::of(value)), 0..4),
        prop_oneof![Just(0u64), 0..4000u64],
    )
        .prop_map(|(tool, args, late_secs)| Probe {
            tool,
            args,
            late_secs,
        })
}

fn to_request(p: &Probe, agent: &str) -> Request {
    let mut args = Args::new();
    for (name, value) in &p.args {
        if let Some(v) = value {
            args.insert(ARGS[*name].to_string(), v.clone());
        }
    }
    Request {
        agent: agent.to_string(),
        tool: ["read_inbox", "send_email", "pay", "delete_db", "wire_money"][p.tool].to_string(),
        args,
        time: now() + Duration::from_secs(p.late_secs),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn children_never_exceed_parents_and_both_paths_agree(
        steps in proptest::collection::vec(step(), 1..=6),
        probes in proptest::collection::vec(probe(), 1..12),
    ) {
        let f = fixture();
        let none = Revocations::new();
        let mut chain = vec![f.token.clone()];
        let mut holder = f.holder.clone();
        for (i, s) in steps.iter().enumerate() {
            let next_key = KeyPair::generate();
            let parent = chain.last().unwrap();
            let att = narrowing(parent, s, format!("agent-{i}"), &next_key);
            let child = parent.attenuate(&holder, att).unwrap();
            // A child's bytes verify to the same limits.
            let reparsed = Token::from_bytes(&child.to_bytes().unwrap(), &f.root.public()).unwrap();
            prop_assert_eq!(reparsed.effective(), child.effective());
            chain.push(reparsed);
            holder = next_key;
        }
        for pair in chain.windows(2) {
            let (parent, child) = (&pair[0], &pair[1]);
            let (pe, ce) = (parent.effective(), child.effective());
            prop_assert!(ce.budget <= pe.budget);
            prop_assert!(ce.expires_at <= pe.expires_at);
            prop_assert_eq!(ce.remaining_depth + 1, pe.remaining_depth);
            for (tool, tier) in &ce.tools {
                prop_assert!(pe.tools.get(tool).is_some_and(|pt| tier >= pt));
            }
            for p in &probes {
                let fast = child.authorize(&to_request(p, child.agent()), &none);
                let slow = child.authorize_datalog(&to_request(p, child.agent()), &none);
                prop_assert_eq!(&fast, &slow);
                if let Ok(got) = fast {
                    let parent_got = parent
                        .authorize_datalog(&to_request(p, parent.agent()), &none);
                    prop_assert!(parent_got.is_ok(), "child allowed {:?} but parent denied: {:?}", p, parent_got);
                    let parent_got = parent_got.unwrap();
                    prop_assert!(got.tier >= parent_got.tier);
                    prop_assert!(got.budget <= parent_got.budget);
                }
            }
        }
        // The root itself: both paths agree too.
        for p in &probes {
            let r = to_request(p, "planner");
            prop_assert_eq!(f.token.authorize(&r, &none), f.token.authorize_datalog(&r, &none));
        }
    }
}
