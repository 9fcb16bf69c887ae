//! Argument constraints under attack: smuggled recipients, header injection, missing
//! arguments, negative and malformed amounts, lists, optional arguments, Datalog run
//! limits. Each attack is checked on both decision paths, beside the honest call that
//! the same constraint allows.

use std::time::Duration;

use bulwark_capabilities::{
    Amount, ArgValue, Attenuation, Constraint, ConstraintValue, DatalogLimit, DatalogLimits,
    Denial, KeyPair, Op, Request, Revocations, Token, is_plain_address,
};

use crate::{fixture, request};

/// A child of the fixture's root token, for agent `child`, with `constraints`,
/// re-read from its bytes so the verified form is what gets tested.
fn constrained(constraints: &[&str]) -> Token {
    let f = fixture();
    let key = KeyPair::generate();
    let mut att = Attenuation::new("child", key.public());
    for c in constraints {
        att = att.require(c.parse::<Constraint>().unwrap());
    }
    let child = f.token.attenuate(&f.holder, att).unwrap();
    Token::from_bytes(&child.to_bytes().unwrap(), &f.root.public()).unwrap()
}

/// Decides `request` on both paths, asserts they agree, and returns the decision.
fn decide(token: &Token, request: &Request) -> Result<(), Denial> {
    let none = Revocations::new();
    let fast = token.authorize(request, &none).map(|_| ());
    let slow = token.authorize_datalog(request, &none).map(|_| ());
    assert_eq!(fast, slow, "the paths disagree on {request:?}");
    fast
}

fn call(token: &Token, tool: &str, args: &[(&str, ArgValue)]) -> Result<(), Denial> {
    decide(token, &request("child", tool, args))
}

fn list(items: &[&str]) -> ArgValue {
    ArgValue::List(items.iter().map(|s| ArgValue::from(*s)).collect())
}

#[test]
fn an_address_constraint_refuses_smuggled_recipients_and_header_injection() {
    let t = constrained(&[
        "send_email.to ends_with @acme.example",
        "send_email.from starts_with bob@",
    ]);
    let honest = |to: &str| {
        call(
            &t,
            "send_email",
            &[("to", to.into()), ("from", "bob@acme.example".into())],
        )
    };
    assert_eq!(honest("alice@acme.example"), Ok(()));
    assert_eq!(honest("a.b+tag@acme.example"), Ok(()));
    for attack in [
        "attacker@evil.test, bob@acme.example",
        "attacker@evil.test,bob@acme.example",
        "attacker@evil.test; bob@acme.example",
        "attacker@evil.test\r\nCc: bob@acme.example",
        "attacker@evil.test\nbob@acme.example",
        "Attacker <attacker@evil.test>, bob@acme.example",
        "\"x\" <attacker@evil.test> bob@acme.example",
        "attacker@evil.test@acme.example",
        "attacker%evil.test@acme.example",
        "attacker!evil.test@acme.example",
        "attacker@evil.test\0@acme.example",
        "(comment)attacker@evil.test bob@acme.example",
        "@acme.example",
    ] {
        let denied = honest(attack);
        assert!(
            matches!(&denied, Err(Denial::Constraint { constraint, .. }) if constraint.arg == "to"),
            "{attack:?}: {denied:?}"
        );
    }
    // A CRLF header after an address that passes a prefix rule.
    let from = |from: &str| {
        call(
            &t,
            "send_email",
            &[("to", "alice@acme.example".into()), ("from", from.into())],
        )
    };
    assert_eq!(from("bob@acme.example"), Ok(()));
    for attack in [
        "bob@acme.example\r\nBcc: attacker@evil.test",
        "bob@acme.example, attacker@evil.test",
        "bob@acme.example attacker@evil.test",
    ] {
        assert!(from(attack).is_err(), "{attack:?}");
    }
}

#[test]
fn plain_addresses_are_exactly_one_bare_address() {
    for ok in [
        "a@b.example",
        "o'brien+x@mail.acme.example",
        "x@xn--bcher-kva.example",
    ] {
        assert!(is_plain_address(ok), "{ok}");
    }
    for bad in [
        "",
        "a",
        "@b.example",
        "a@",
        "a@@b.example",
        "a@b..example",
        "a@-b.example",
        "a b@c.example",
        "a@b.example ",
        " a@b.example",
        "a@b.example\r\n",
        "a,b@c.example",
        "<a@b.example>",
        "a@b.example;",
        "é@b.example",
        "a@b_c.example",
        ".a@b.example",
    ] {
        assert!(!is_plain_address(bad), "{bad:?}");
    }
}

#[test]
fn a_missing_argument_fails_closed_unless_the_constraint_says_if_present() {
    let t = constrained(&[
        "pay.amount le 100",
        "pay.currency in EUR,USD",
        "send_email.cc if_present ends_with @acme.example",
    ]);
    // Omitting a constrained argument skips nothing.
    assert!(call(&t, "pay", &[("currency", "EUR".into())]).is_err());
    assert!(call(&t, "pay", &[("amount", 5.into())]).is_err());
    assert!(call(&t, "pay", &[]).is_err());
    assert_eq!(
        call(
            &t,
            "pay",
            &[("amount", 5.into()), ("currency", "EUR".into())]
        ),
        Ok(())
    );
    // The explicit if_present form: absent is fine, present is checked.
    assert_eq!(
        call(&t, "send_email", &[("to", "x@y.example".into())]),
        Ok(())
    );
    assert_eq!(
        call(&t, "send_email", &[("cc", "bob@acme.example".into())]),
        Ok(())
    );
    for bad in [
        ArgValue::from("x@evil.test"),
        ArgValue::from("x@evil.test, bob@acme.example"),
        ArgValue::from(""),
        ArgValue::Int(5),
        list(&["bob@acme.example"]),
    ] {
        let denied = call(&t, "send_email", &[("cc", bad.clone())]);
        assert!(
            matches!(denied, Err(Denial::Constraint { .. })),
            "{bad}: {denied:?}"
        );
    }
}

#[test]
fn amounts_are_non_negative_exact_decimals() {
    let t = constrained(&["pay.amount le 100", "read_inbox.limit lt 10"]);
    let pay = |v: ArgValue| call(&t, "pay", &[("amount", v)]);
    assert_eq!(pay(100.into()), Ok(()));
    assert_eq!(pay(0.into()), Ok(()));
    for bad in [
        ArgValue::Int(-5),
        ArgValue::Int(i64::MIN),
        ArgValue::Int(101),
        "50".into(),
    ] {
        assert!(pay(bad.clone()).is_err(), "{bad}");
    }
    assert!(call(&t, "read_inbox", &[("limit", (-1).into())]).is_err());
    assert_eq!(call(&t, "read_inbox", &[("limit", 9.into())]), Ok(()));

    let t = constrained(&["pay.amount le 100.50", "pay.fee gt 0.25"]);
    let pay = |amount: ArgValue| call(&t, "pay", &[("amount", amount), ("fee", "0.3".into())]);
    for ok in [
        ArgValue::from("100.50"),
        "100.5".into(),
        "100.500000".into(),
        "0".into(),
        "0.000001".into(),
        "007.25".into(),
        100.into(),
    ] {
        assert_eq!(pay(ok.clone()), Ok(()), "{ok}");
    }
    for bad in [
        ArgValue::from("100.500001"),
        "100.51".into(),
        101.into(),
        "-5".into(),
        (-5).into(),
        "-0.01".into(),
        "+5".into(),
        "1e9".into(),
        "1E2".into(),
        "1e-9".into(),
        " 5".into(),
        "5 ".into(),
        "5\n".into(),
        "NaN".into(),
        "inf".into(),
        "0x10".into(),
        "1,000".into(),
        "1_0".into(),
        ".5".into(),
        "5.".into(),
        "5.0000001".into(),
        "".into(),
        "99999999999999999999".into(),
        list(&["5"]),
    ] {
        assert!(pay(bad.clone()).is_err(), "{bad} should not pass le 100.50");
    }
    // A lower bound on a decimal amount.
    let fee = |fee: &str| call(&t, "pay", &[("amount", 1.into()), ("fee", fee.into())]);
    assert!(fee("0.25").is_err());
    assert_eq!(fee("0.250001"), Ok(()));
    // Bounds are written and read back exactly.
    let c: Constraint = "pay.amount le 100.50".parse().unwrap();
    assert_eq!(
        c.value,
        ConstraintValue::Amount {
            amount: Amount::from_micros(100_500_000).unwrap()
        }
    );
    assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c);
    for bad in [
        "pay.amount le -1",
        "pay.amount le 1e3",
        "pay.amount le 1.2.3",
        "pay.amount le -0.5",
    ] {
        assert!(bad.parse::<Constraint>().is_err(), "{bad}");
    }
}

#[test]
fn every_element_of_a_list_argument_must_satisfy_an_each_constraint() {
    let t = constrained(&[
        "send_email.to each ends_with @acme.example",
        "pay.amounts each le 10.5",
        "pay.currency each in EUR,USD",
    ]);
    let mail = |to: ArgValue| call(&t, "send_email", &[("to", to)]);
    assert_eq!(mail(list(&["a@acme.example", "b@acme.example"])), Ok(()));
    assert_eq!(mail(list(&[])), Ok(()));
    for bad in [
        list(&["a@acme.example", "attacker@evil.test"]),
        list(&["attacker@evil.test, a@acme.example"]),
        list(&["a@acme.example\r\nBcc: attacker@evil.test"]),
        ArgValue::List(vec!["a@acme.example".into(), 5.into()]),
        // A single value is not a list.
        "a@acme.example".into(),
    ] {
        assert!(mail(bad.clone()).is_err(), "{bad}");
    }
    let pay = |amounts: ArgValue, currency: ArgValue| {
        call(&t, "pay", &[("amounts", amounts), ("currency", currency)])
    };
    let ok_amounts = ArgValue::List(vec![10.into(), "10.5".into(), "0.01".into()]);
    assert_eq!(pay(ok_amounts.clone(), list(&["EUR", "USD"])), Ok(()));
    assert!(
        pay(
            ArgValue::List(vec![10.into(), "10.51".into()]),
            list(&["EUR"])
        )
        .is_err()
    );
    assert!(pay(ArgValue::List(vec![(-1).into()]), list(&["EUR"])).is_err());
    assert!(pay(ok_amounts.clone(), list(&["EUR", "GBP"])).is_err());
    // Too long a list is never read.
    let long = ArgValue::List(vec![
        ArgValue::Int(1);
        bulwark_capabilities::MAX_LIST_LEN + 1
    ]);
    assert!(pay(long, list(&["EUR"])).is_err());
}

#[test]
fn not_starts_with_refuses_the_prefix_only() {
    let t = constrained(&["read_inbox.folder not_starts_with secret/"]);
    let read = |f: &str| call(&t, "read_inbox", &[("folder", f.into())]);
    assert_eq!(read("inbox/2026"), Ok(()));
    assert_eq!(read("public/secret/"), Ok(()));
    assert!(read("secret/keys").is_err());
    assert!(read("secret/").is_err());
    assert!(call(&t, "read_inbox", &[]).is_err());
    assert!(call(&t, "read_inbox", &[("folder", 5.into())]).is_err());
    let c = Constraint::new(
        "read_inbox",
        "folder",
        Op::NotStartsWith,
        ConstraintValue::One(5.into()),
    );
    assert!(c.is_err());
}

#[test]
fn new_constraint_forms_survive_text_and_bytes_and_only_narrow() {
    let texts = [
        "send_email.cc each if_present ends_with @acme.example",
        "pay.amount if_present le 100.5",
        "pay.amounts each lt 7.25",
        "pay.currency each in EUR,USD",
        "read_inbox.folder not_starts_with secret/",
    ];
    for text in texts {
        let c: Constraint = text.parse().unwrap();
        assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c, "{text}");
    }
    let child = constrained(&texts);
    // A grandchild adds a check; it can never drop its parent's.
    let key = KeyPair::generate();
    let f = fixture();
    let parent_key = KeyPair::generate();
    let mut att = Attenuation::new("child", parent_key.public());
    for t in texts {
        att = att.require(t.parse().unwrap());
    }
    let child2 = f.token.attenuate(&f.holder, att).unwrap();
    let grandchild = child2
        .attenuate(
            &parent_key,
            Attenuation::new("grandchild", key.public())
                .require("pay.amount le 10.0".parse().unwrap()),
        )
        .unwrap();
    let r = |agent: &str, amount: ArgValue| {
        request(
            agent,
            "pay",
            &[
                ("amount", amount),
                ("amounts", ArgValue::List(vec![])),
                ("currency", list(&["EUR"])),
            ],
        )
    };
    assert_eq!(decide(&child2, &r("child", 50.into())), Ok(()));
    assert!(decide(&grandchild, &r("grandchild", 50.into())).is_err());
    assert_eq!(decide(&grandchild, &r("grandchild", "9.99".into())), Ok(()));
    assert!(decide(&grandchild, &r("grandchild", "100.6".into())).is_err());
    assert_eq!(decide(&child, &r("child", "100.5".into())), Ok(()));
}

#[test]
fn a_datalog_limit_is_a_retryable_no_decision_never_a_panic_or_a_denial() {
    let t = constrained(&["send_email.to ends_with @acme.example"]);
    let honest = request("child", "send_email", &[("to", "bob@acme.example".into())]);
    let none = Revocations::new();
    assert!(t.authorize_datalog(&honest, &none).is_ok());
    assert!(
        t.authorize_datalog_with(&honest, &none, DatalogLimits::DEFAULT)
            .is_ok()
    );
    // An evaluation that cannot finish within its time limit.
    let no_time = DatalogLimits {
        max_time: Duration::ZERO,
        ..DatalogLimits::DEFAULT
    };
    let got = t.authorize_datalog_with(&honest, &none, no_time);
    assert_eq!(
        got,
        Err(Denial::LimitReached {
            limit: DatalogLimit::Time(Duration::ZERO)
        })
    );
    let err = got.unwrap_err();
    assert!(err.is_retryable());
    assert!(err.to_string().contains("not a denial"), "{err}");
    // A real denial is not retryable, whatever the limits.
    let attack = request("child", "send_email", &[("to", "x@evil.test".into())]);
    let denied = t.authorize_datalog(&attack, &none).unwrap_err();
    assert!(!denied.is_retryable(), "{denied}");
    // The defaults leave room for a large honest request.
    let mut big = honest.clone();
    for i in 0..2000 {
        big.args.insert(
            format!("extra{i}"),
            ArgValue::List(vec!["a@b.example".into(); 4]),
        );
    }
    assert!(t.authorize_datalog(&big, &none).is_ok());
}
