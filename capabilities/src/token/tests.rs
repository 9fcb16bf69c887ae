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

/// Appends `block` to `token` as a delegation signed by `signer`, bypassing every
/// check `attenuate` makes: what an attacker holding a key could build by hand.
fn append_raw(token: &Token, signer: &KeyPair, block: biscuit_auth::BlockBuilder) -> Vec<u8> {
    let req = token.biscuit.third_party_request().unwrap();
    let signed = req
        .create_block(&signer.to_biscuit().private(), block)
        .unwrap();
    token
        .biscuit
        .append_third_party(signer.public().to_biscuit().unwrap(), signed)
        .unwrap()
        .to_vec()
        .unwrap()
}

fn spec_block(att: &Attenuation) -> biscuit_auth::BlockBuilder {
    let ctx = serde_json::to_string(&BlockSpec::DelegationV1(att.clone())).unwrap();
    att.to_block().unwrap().context(ctx)
}

#[test]
fn attack_block_adding_grant_facts_is_rejected_and_grants_nothing() {
    let root = KeyPair::generate();
    let parent = KeyPair::generate();
    let child = KeyPair::generate();
    let token = root_token(&root, &parent);
    let att = Attenuation::new("mailer", child.public()).only_tools(["read_inbox"]);

    // The attacker's block declares a harmless spec but also carries grant facts.
    let evil = spec_block(&att)
        .code(r#"tool("wire_money", 0); tool("send_email", 0); budget(999999999999);"#)
        .unwrap();
    let bytes = append_raw(&token, &parent, evil);
    let err = Token::from_bytes(&bytes, &root.public()).unwrap_err();
    assert!(
        matches!(err, TokenError::NotCanonical { block: 1, .. }),
        "{err}"
    );

    // Even to biscuit's own authorizer, with Bulwark's policy, those facts grant
    // nothing: only the authority block is trusted for `tool`.
    let raw = biscuit_auth::Biscuit::from(&bytes, root.public().to_biscuit().unwrap()).unwrap();
    for tool in ["wire_money", "send_email"] {
        let mut authorizer = biscuit_auth::AuthorizerBuilder::new()
            .code(format!(
                r#"time({}); operation("{tool}");
                   allow if operation($op), tool($op, $tier); deny if true;"#,
                humantime::format_rfc3339_seconds(now())
            ))
            .unwrap()
            .build(&raw)
            .unwrap();
        assert!(authorizer.authorize().is_err(), "{tool} must stay denied");
    }

    // The allowed path: the same delegation, built by the API, works.
    let good = token.attenuate(&parent, att).unwrap();
    let ok = Token::from_bytes(&good.to_bytes().unwrap(), &root.public()).unwrap();
    assert!(
        ok.authorize(&request("mailer", "read_inbox", &[]), &Revocations::new())
            .is_ok()
    );
    assert!(matches!(
        ok.authorize(&request("mailer", "wire_money", &[]), &Revocations::new()),
        Err(Denial::NotGranted { .. })
    ));
}

#[test]
fn attack_thief_appending_own_delegation_breaks_the_holder_chain() {
    let root = KeyPair::generate();
    let victim = KeyPair::generate();
    let thief = KeyPair::generate();
    let token = root_token(&root, &victim);
    // A canonical block naming the thief, but signed by the thief, not the holder.
    let att = Attenuation::new("thief", thief.public());
    let bytes = append_raw(&token, &thief, spec_block(&att));
    let err = Token::from_bytes(&bytes, &root.public()).unwrap_err();
    assert!(
        matches!(err, TokenError::BrokenHolderChain { block: 1, prev: 0 }),
        "{err}"
    );
    // A first-party (unsigned) block is refused the same way.
    let first_party = token
        .biscuit
        .append(spec_block(&att))
        .unwrap()
        .to_vec()
        .unwrap();
    let err = Token::from_bytes(&first_party, &root.public()).unwrap_err();
    assert!(matches!(err, TokenError::BrokenHolderChain { .. }), "{err}");
    // And `attenuate` itself refuses a key that is not the holder's.
    let err = token.attenuate(&thief, att.clone()).unwrap_err();
    assert!(matches!(err, AttenuateError::NotHolder { .. }), "{err}");
    // The holder delegating is the allowed path.
    let ok = append_raw(&token, &victim, spec_block(&att));
    assert!(Token::from_bytes(&ok, &root.public()).is_ok());
}

#[test]
fn attack_hand_built_laxer_tier_or_bigger_budget_changes_nothing() {
    let root = KeyPair::generate();
    let parent = KeyPair::generate();
    let child = KeyPair::generate();
    let token = root_token(&root, &parent);
    // `attenuate` refuses both outright.
    let laxer = Attenuation::new("c", child.public()).tier("pay", Tier::Auto);
    let err = token.attenuate(&parent, laxer.clone()).unwrap_err();
    assert!(matches!(err, AttenuateError::LaxerTier { .. }), "{err}");
    let bigger = Attenuation::new("c", child.public()).budget(MicroUsd::from_usd(1_000).unwrap());
    let err = token.attenuate(&parent, bigger.clone()).unwrap_err();
    assert!(matches!(err, AttenuateError::BiggerBudget { .. }), "{err}");

    // Built by hand and signed by the real holder, they are canonical blocks, but a
    // tier floor only raises and a budget only lowers: the parent's limits stand.
    for att in [laxer, bigger] {
        let bytes = append_raw(&token, &parent, spec_block(&att));
        let child_token = Token::from_bytes(&bytes, &root.public()).unwrap();
        for check in [Token::authorize, Token::authorize_datalog] {
            let got = check(&child_token, &request("c", "pay", &[]), &Revocations::new()).unwrap();
            assert_eq!(got.tier, Tier::Propose);
            assert_eq!(got.budget, MicroUsd::from_usd(100).unwrap());
        }
    }
}

#[test]
fn attack_hand_built_delegation_beyond_max_depth_is_rejected() {
    let root = KeyPair::generate();
    let keys: Vec<KeyPair> = (0..5).map(|_| KeyPair::generate()).collect();
    let mut token = root_token(&root, &keys[0]); // max depth 3
    for i in 1..=3 {
        token = token
            .attenuate(
                &keys[i - 1],
                Attenuation::new(format!("a{i}"), keys[i].public()),
            )
            .unwrap();
    }
    let err = token
        .attenuate(&keys[3], Attenuation::new("a4", keys[4].public()))
        .unwrap_err();
    assert!(
        matches!(err, AttenuateError::DepthExhausted { max: 3 }),
        "{err}"
    );
    let bytes = append_raw(
        &token,
        &keys[3],
        spec_block(&Attenuation::new("a4", keys[4].public())),
    );
    let err = Token::from_bytes(&bytes, &root.public()).unwrap_err();
    assert!(
        matches!(err, TokenError::DepthExceeded { depth: 4, max: 3 }),
        "{err}"
    );
    // Depth 3 itself is fine.
    assert!(Token::from_bytes(&token.to_bytes().unwrap(), &root.public()).is_ok());
}

#[test]
fn the_direct_source_equals_biscuits_printing_of_the_built_block() {
    let holder = KeyPair::generate().public();
    let att = Attenuation::new("c", holder)
        .only_tools(["send_email", "pay", "read_inbox"])
        .tier("send_email", Tier::Confirm)
        .tier("pay", Tier::Block)
        .budget(MicroUsd::from_usd(5).unwrap())
        .expires_at(now())
        .require(
            "send_email.to ends_with @acme.example"
                .parse::<Constraint>()
                .unwrap(),
        )
        .require("send_email.to starts_with ops".parse().unwrap())
        .require("send_email.subject eq hello".parse().unwrap())
        .require("send_email.subject ne bye".parse().unwrap())
        .require("pay.amount le 100".parse().unwrap())
        .require("pay.amount lt 1000".parse().unwrap())
        .require("pay.amount le 100.50".parse().unwrap())
        .require("pay.amount if_present gt 0.5".parse().unwrap())
        .require("pay.ref not_starts_with internal-".parse().unwrap())
        .require(
            "send_email.cc each if_present ends_with @acme.example"
                .parse()
                .unwrap(),
        )
        .require(
            "send_email.cc each in a@acme.example,b@acme.example"
                .parse()
                .unwrap(),
        )
        .require(
            "send_email.to in a@acme.example,b@acme.example"
                .parse()
                .unwrap(),
        )
        .require("pay.amounts each lt 7.25".parse().unwrap())
        .require("pay.codes each ne 3".parse().unwrap())
        .require("pay.amount ge 0".parse().unwrap())
        .require("pay.amount gt 1".parse().unwrap())
        .require("pay.amount eq 7".parse().unwrap())
        .require("pay.amount ne 8".parse().unwrap())
        .require("pay.currency in EUR,USD".parse().unwrap())
        .require("pay.code in 3,1,2".parse().unwrap());
    assert_eq!(att.to_block().unwrap().to_string(), att.source().as_str());
    let empty = Attenuation::new("c", holder).only_tools(Vec::<String>::new());
    assert_eq!(
        empty.to_block().unwrap().to_string(),
        empty.source().as_str()
    );
    let root = root_token(&KeyPair::generate(), &KeyPair::generate());
    assert_eq!(
        root.root.to_block().unwrap().to_string(),
        root.root.source().as_str()
    );
}

#[test]
fn a_child_is_one_narrowing_delegation_of_its_parent_and_nothing_else_is() {
    let root = KeyPair::generate();
    let planner = KeyPair::generate();
    let top = root_token(&root, &planner);
    let parent_key = KeyPair::generate();
    let parent = top
        .attenuate(&planner, Attenuation::new("parent", parent_key.public()))
        .unwrap();
    let child_key = KeyPair::generate();
    let child = parent
        .attenuate(
            &parent_key,
            Attenuation::new("child", child_key.public()).only_tools(["read_inbox".to_string()]),
        )
        .unwrap();
    parent.check_child(&child).unwrap();

    // A sibling branch of the same root: right length, wrong prefix.
    let other_key = KeyPair::generate();
    let other = top
        .attenuate(&planner, Attenuation::new("other", other_key.public()))
        .unwrap();
    let cousin = other
        .attenuate(&other_key, Attenuation::new("child", child_key.public()))
        .unwrap();
    let refused = parent.check_child(&cousin).unwrap_err();
    assert!(refused.to_string().contains("prefix"), "{refused}");

    // A grandchild is not a child; nor is the parent itself, nor its own parent.
    let grandchild = child
        .attenuate(
            &child_key,
            Attenuation::new("g", KeyPair::generate().public()),
        )
        .unwrap();
    assert!(parent.check_child(&grandchild).is_err());
    assert!(parent.check_child(&parent).is_err());
    assert!(parent.check_child(&top).is_err());

    // The same chain under another root key.
    let foreign_root = KeyPair::generate();
    let foreign = root_token(&foreign_root, &planner)
        .attenuate(&planner, Attenuation::new("parent", parent_key.public()))
        .unwrap()
        .attenuate(&parent_key, Attenuation::new("child", child_key.public()))
        .unwrap();
    let refused = parent.check_child(&foreign).unwrap_err();
    assert!(refused.to_string().contains("root"), "{refused}");
}
