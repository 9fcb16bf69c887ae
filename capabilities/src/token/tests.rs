use std::time::{Duration, SystemTime};

use super::*;
use crate::{ArgValue, Args, Constraint, Denial, Request, Revocations};

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn root_token(root: &KeyPair, holder: &KeyPair) -> Token {
    let grant = RootGrant::new(
        "acme",
        "planner",
        holder.public(),
        MicroUsd::from_usd(100).unwrap(),
        now() + Duration::from_secs(3600),
        3,
    )
    .tool("send_email", Tier::AutoPlus)
    .tool("read_inbox", Tier::Auto)
    .tool("pay", Tier::Propose);
    Token::mint(root, grant).unwrap()
}

fn request(agent: &str, tool: &str, args: &[(&str, ArgValue)]) -> Request {
    Request {
        agent: agent.into(),
        tool: tool.into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<Args>(),
        time: now(),
    }
}

#[test]
fn minted_and_attenuated_tokens_round_trip_through_bytes() {
    let root = KeyPair::generate();
    let parent = KeyPair::generate();
    let child = KeyPair::generate();
    let token = root_token(&root, &parent);
    let text = token.to_base64().unwrap();
    let parsed = Token::from_base64(&text, &root.public()).unwrap();
    assert_eq!(parsed.effective(), token.effective());

    let att = Attenuation::new("mailer", child.public())
        .only_tools(["send_email", "pay"])
        .tier("send_email", Tier::Confirm)
        .budget(MicroUsd::from_usd(5).unwrap())
        .expires_at(now() + Duration::from_secs(600))
        .require(
            "send_email.to ends_with @acme.example"
                .parse::<Constraint>()
                .unwrap(),
        )
        .require("pay.amount le 100".parse().unwrap())
        .require("pay.currency in EUR,USD".parse().unwrap());
    let derived = parsed.attenuate(&parent, att).unwrap();
    let reparsed = Token::from_bytes(&derived.to_bytes().unwrap(), &root.public()).unwrap();
    assert_eq!(reparsed.effective(), derived.effective());
    assert_eq!(reparsed.agent(), "mailer");
    assert_eq!(reparsed.holder(), child.public());
    assert_eq!(reparsed.depth(), 1);
    let eff = reparsed.effective();
    assert_eq!(eff.tools.len(), 2);
    assert_eq!(eff.tools["send_email"], Tier::Confirm);
    assert_eq!(eff.budget, MicroUsd::from_usd(5).unwrap());
    assert_eq!(eff.remaining_depth, 2);

    let none = Revocations::new();
    for tok in [&derived, &reparsed] {
        for check in [Token::authorize, Token::authorize_datalog] {
            let ok = check(
                tok,
                &request("mailer", "send_email", &[("to", "bob@acme.example".into())]),
                &none,
            )
            .unwrap();
            assert_eq!(ok.tier, Tier::Confirm);
            assert_eq!(ok.budget, MicroUsd::from_usd(5).unwrap());
            let denied = check(
                tok,
                &request("mailer", "send_email", &[("to", "eve@evil.example".into())]),
                &none,
            )
            .unwrap_err();
            assert!(matches!(denied, Denial::Constraint { .. }), "{denied}");
            let withheld = check(tok, &request("mailer", "read_inbox", &[]), &none).unwrap_err();
            assert!(matches!(withheld, Denial::Withheld { .. }), "{withheld}");
            let pay = check(
                tok,
                &request(
                    "mailer",
                    "pay",
                    &[("amount", 100.into()), ("currency", "EUR".into())],
                ),
                &none,
            )
            .unwrap();
            assert_eq!(pay.tier, Tier::Propose);
        }
    }
}
