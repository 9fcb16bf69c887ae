//! Each attack is tried and asserted to fail; the legitimate use next to it still works.

use std::time::Duration;

use bulwark_capabilities::{
    Approval, ApprovalError, AttenuateError, Attenuation, Denial, KeyPair, MicroUsd, ReplayGuard,
    Revocations, RootGrant, SignedRequest, Tier, Token, TokenError,
};

use crate::{fixture, now, request};

#[test]
fn token_re_signed_by_another_root_does_not_verify() {
    let f = fixture();
    let rogue = KeyPair::generate();
    // Same grant, same holder, minted by a root the cluster does not trust.
    let grant = RootGrant::new(
        "acme",
        "planner",
        f.holder.public(),
        MicroUsd::from_usd(1_000_000).unwrap(),
        now() + Duration::from_secs(3600),
        6,
    )
    .tool("pay", Tier::Auto);
    let forged = Token::mint(&rogue, grant).unwrap().to_bytes().unwrap();
    let err = Token::from_bytes(&forged, &f.root.public()).unwrap_err();
    assert!(matches!(err, TokenError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");
    // Allowed path: the real token verifies against the real root.
    assert!(Token::from_bytes(&f.token.to_bytes().unwrap(), &f.root.public()).is_ok());
}

#[test]
fn expired_token_is_denied_and_unexpired_one_allowed() {
    let f = fixture();
    let none = Revocations::new();
    let mut req = request("planner", "read_inbox", &[]);
    assert!(f.token.authorize(&req, &none).is_ok());
    req.time = now() + Duration::from_secs(3601);
    for check in [Token::authorize, Token::authorize_datalog] {
        let err = check(&f.token, &req, &none).unwrap_err();
        assert!(matches!(err, Denial::Expired { .. }), "{err}");
    }
    // A child with an earlier expiry expires first; the parent still works then.
    let child_key = KeyPair::generate();
    let child = f
        .token
        .attenuate(
            &f.holder,
            Attenuation::new("c", child_key.public()).expires_at(now() + Duration::from_secs(60)),
        )
        .unwrap();
    let mut late = request("c", "read_inbox", &[]);
    late.time = now() + Duration::from_secs(61);
    let err = child.authorize_datalog(&late, &none).unwrap_err();
    assert!(
        matches!(&err, Denial::Expired { agent, .. } if agent == "c"),
        "{err}"
    );
    late.agent = "planner".into();
    assert!(f.token.authorize(&late, &none).is_ok());
    // And a child cannot outlive its parent.
    let err = f
        .token
        .attenuate(
            &f.holder,
            Attenuation::new("c", child_key.public()).expires_at(now() + Duration::from_secs(7200)),
        )
        .unwrap_err();
    assert!(matches!(err, AttenuateError::LaterExpiry { .. }), "{err}");
}

#[test]
fn widening_requests_are_refused_with_what_was_asked() {
    let f = fixture();
    let k = KeyPair::generate().public();
    let cases: Vec<(Attenuation, &str)> = vec![
        (
            Attenuation::new("c", k).only_tools(["wire_money"]),
            "wire_money",
        ),
        (
            Attenuation::new("c", k).tier("send_email", Tier::Auto),
            "auto+ to auto",
        ),
        (
            Attenuation::new("c", k).budget(MicroUsd::from_usd(101).unwrap()),
            "$100 to $101",
        ),
        (
            Attenuation::new("c", k).require("wire_money.amount le 5".parse().unwrap()),
            "wire_money",
        ),
        (
            Attenuation::new("c", k)
                .only_tools(["read_inbox"])
                .tier("pay", Tier::Confirm),
            "pay",
        ),
    ];
    for (att, needle) in cases {
        let err = f.token.attenuate(&f.holder, att).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
    // Allowed path: every narrowing at once.
    let ok = f.token.attenuate(
        &f.holder,
        Attenuation::new("c", k)
            .only_tools(["send_email"])
            .tier("send_email", Tier::Confirm)
            .budget(MicroUsd::from_usd(100).unwrap()),
    );
    assert!(ok.is_ok());
}

#[test]
fn block_tier_never_runs_whatever_else_the_token_says() {
    let f = fixture();
    for check in [Token::authorize, Token::authorize_datalog] {
        let err = check(
            &f.token,
            &request("planner", "delete_db", &[]),
            &Revocations::new(),
        )
        .unwrap_err();
        assert!(matches!(err, Denial::Blocked { .. }), "{err}");
    }
}

#[test]
fn request_signed_by_a_non_holder_is_denied() {
    let f = fixture();
    let thief = KeyPair::generate();
    let mut guard = ReplayGuard::new();
    let none = Revocations::new();
    let req = request("planner", "read_inbox", &[]);
    let forged = SignedRequest::sign(&f.token, &thief, req.clone());
    let err = f
        .token
        .authorize_signed(&forged, now(), &mut guard, &none)
        .unwrap_err();
    assert!(matches!(err, Denial::NotHolder { .. }), "{err}");
    // A valid signature with the arguments changed afterwards does not verify either.
    let mut tampered = SignedRequest::sign(&f.token, &f.holder, req.clone());
    tampered.request.tool = "pay".into();
    let err = f
        .token
        .authorize_signed(&tampered, now(), &mut guard, &none)
        .unwrap_err();
    assert!(matches!(err, Denial::NotHolder { .. }), "{err}");
    // The holder's own request passes.
    let signed = SignedRequest::sign(&f.token, &f.holder, req);
    assert_eq!(
        f.token
            .authorize_signed(&signed, now(), &mut guard, &none)
            .unwrap()
            .tier,
        Tier::Auto
    );
}

#[test]
fn replayed_nonce_and_stale_timestamp_are_denied() {
    let f = fixture();
    let mut guard = ReplayGuard::with_limits(30, 1000);
    let none = Revocations::new();
    let signed = SignedRequest::sign(&f.token, &f.holder, request("planner", "read_inbox", &[]));
    assert!(
        f.token
            .authorize_signed(&signed, now(), &mut guard, &none)
            .is_ok()
    );
    let err = f
        .token
        .authorize_signed(&signed, now(), &mut guard, &none)
        .unwrap_err();
    assert_eq!(err, Denial::Replayed);
    // Replaying it after the window: stale, even though the nonce has aged out.
    let later = now() + Duration::from_secs(31);
    let err = f
        .token
        .authorize_signed(&signed, later, &mut guard, &none)
        .unwrap_err();
    assert!(matches!(err, Denial::Stale { .. }), "{err}");
    // A fresh signature from the holder passes.
    let fresh = SignedRequest::sign(&f.token, &f.holder, request("planner", "read_inbox", &[]));
    assert!(
        f.token
            .authorize_signed(&fresh, now(), &mut guard, &none)
            .is_ok()
    );
}

#[test]
fn replay_guard_is_bounded_and_fails_closed_when_full() {
    let f = fixture();
    let mut guard = ReplayGuard::with_limits(30, 3);
    let none = Revocations::new();
    for _ in 0..3 {
        let s = SignedRequest::sign(&f.token, &f.holder, request("planner", "read_inbox", &[]));
        assert!(
            f.token
                .authorize_signed(&s, now(), &mut guard, &none)
                .is_ok()
        );
    }
    let s = SignedRequest::sign(&f.token, &f.holder, request("planner", "read_inbox", &[]));
    assert_eq!(
        f.token.authorize_signed(&s, now(), &mut guard, &none),
        Err(Denial::ReplayCacheFull)
    );
    // Once the old nonces age out, requests pass again.
    let later = now() + Duration::from_secs(40);
    let mut s = s;
    s.request.time = later;
    let s = SignedRequest::sign(&f.token, &f.holder, s.request);
    assert!(
        f.token
            .authorize_signed(&s, later, &mut guard, &none)
            .is_ok()
    );
}

#[test]
fn approvals_bind_proposal_arguments_approver_and_time() {
    let operator = KeyPair::generate();
    let stranger = KeyPair::generate();
    let trusted = [operator.public()];
    let args = request(
        "planner",
        "pay",
        &[("amount", 500.into()), ("iban", "DE89".into())],
    )
    .args;
    let other_args = request(
        "planner",
        "pay",
        &[("amount", 50_000.into()), ("iban", "DE89".into())],
    )
    .args;
    let until = now() + Duration::from_secs(600);

    let approval = Approval::sign(&operator, "p-1", &args, until);
    assert_eq!(
        approval.verify("p-1", &args, &trusted, now()),
        Ok(operator.public())
    );
    assert_eq!(
        approval.verify("p-1", &other_args, &trusted, now()),
        Err(ApprovalError::WrongArguments)
    );
    assert!(matches!(
        approval.verify("p-2", &args, &trusted, now()),
        Err(ApprovalError::WrongProposal { .. })
    ));
    assert!(matches!(
        approval.verify("p-1", &args, &trusted, until + Duration::from_secs(1)),
        Err(ApprovalError::Expired(_))
    ));
    let by_stranger = Approval::sign(&stranger, "p-1", &args, until);
    assert!(matches!(
        by_stranger.verify("p-1", &args, &trusted, now()),
        Err(ApprovalError::UntrustedApprover(_))
    ));
    // Editing a signed approval to point at other arguments breaks its signature.
    let mut edited = approval.clone();
    edited.args_hash = hex_of(bulwark_capabilities::args_hash(&other_args));
    assert_eq!(
        edited.verify("p-1", &other_args, &trusted, now()),
        Err(ApprovalError::BadSignature)
    );
    let mut moved = approval;
    moved.proposal_id = "p-2".into();
    assert_eq!(
        moved.verify("p-2", &args, &trusted, now()),
        Err(ApprovalError::BadSignature)
    );
    let mut garbage = by_stranger;
    garbage.approver = "zz".into();
    assert!(matches!(
        garbage.verify("p-1", &args, &trusted, now()),
        Err(ApprovalError::Malformed(_))
    ));
}

fn hex_of(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn revoking_an_ancestor_denies_the_whole_subtree_only() {
    let f = fixture();
    let a = KeyPair::generate();
    let b = KeyPair::generate();
    let s = KeyPair::generate();
    let child = f
        .token
        .attenuate(&f.holder, Attenuation::new("child", a.public()))
        .unwrap();
    let grandchild = child
        .attenuate(&a, Attenuation::new("grandchild", b.public()))
        .unwrap();
    let sibling = f
        .token
        .attenuate(&f.holder, Attenuation::new("sibling", s.public()))
        .unwrap();
    let mut revoked = Revocations::new();
    revoked.insert(child.revocation_ids()[1].clone());
    for check in [Token::authorize, Token::authorize_datalog] {
        for (tok, agent) in [(&child, "child"), (&grandchild, "grandchild")] {
            let err = check(tok, &request(agent, "read_inbox", &[]), &revoked).unwrap_err();
            assert!(
                matches!(&err, Denial::Revoked { agent, block: 1 } if agent == "child"),
                "{err}"
            );
        }
        assert!(check(&sibling, &request("sibling", "read_inbox", &[]), &revoked).is_ok());
        assert!(check(&f.token, &request("planner", "read_inbox", &[]), &revoked).is_ok());
    }
    // Revoking the root cuts everything.
    revoked.insert(f.token.revocation_ids()[0].clone());
    assert!(
        sibling
            .authorize(&request("sibling", "read_inbox", &[]), &revoked)
            .is_err()
    );
}

#[test]
fn a_token_presented_by_another_agent_is_denied() {
    let f = fixture();
    assert!(
        f.token
            .authorize(&request("planner", "read_inbox", &[]), &Revocations::new())
            .is_ok()
    );
    let err = f
        .token
        .authorize(&request("intruder", "read_inbox", &[]), &Revocations::new())
        .unwrap_err();
    assert!(matches!(err, Denial::WrongAgent { .. }), "{err}");
}

#[test]
fn denials_name_the_failed_check_in_plain_words() {
    let f = fixture();
    let k = KeyPair::generate();
    let child = f
        .token
        .attenuate(
            &f.holder,
            Attenuation::new("mailer", k.public())
                .only_tools(["send_email", "pay"])
                .require("send_email.to ends_with @acme.example".parse().unwrap())
                .require("pay.amount le 100".parse().unwrap()),
        )
        .unwrap();
    let none = Revocations::new();
    let cases = [
        (
            request("mailer", "send_email", &[("to", "eve@evil.example".into())]),
            "argument `to` of `send_email` must end with \"@acme.example\" (one plain email address) (set when delegating to `mailer`); got \"eve@evil.example\"",
        ),
        (
            request("mailer", "pay", &[]),
            "argument `amount` of `pay` must be at most 100 (set when delegating to `mailer`); got nothing",
        ),
        (
            request("mailer", "read_inbox", &[]),
            "tool `read_inbox` was withheld when the token was delegated to `mailer`",
        ),
        (
            request("mailer", "wire_money", &[]),
            "tool `wire_money` is not granted to tenant `acme` by the root token",
        ),
    ];
    for (req, want) in cases {
        for check in [Token::authorize, Token::authorize_datalog] {
            assert_eq!(check(&child, &req, &none).unwrap_err().to_string(), want);
        }
    }
}

#[test]
fn oversized_and_garbage_input_gets_typed_errors() {
    let f = fixture();
    let pk = f.root.public();
    let big = vec![0u8; bulwark_capabilities::MAX_TOKEN_BYTES + 1];
    assert!(matches!(
        Token::from_bytes(&big, &pk),
        Err(TokenError::TooLarge { .. })
    ));
    let big_text = "A".repeat(40_000);
    assert!(matches!(
        Token::from_base64(&big_text, &pk),
        Err(TokenError::TooLarge { .. })
    ));
    assert!(matches!(
        Token::from_base64("not base64 at all!!", &pk),
        Err(TokenError::Encoding(_))
    ));
    assert!(matches!(
        Token::from_bytes(&[], &pk),
        Err(TokenError::Invalid(_))
    ));
    let text = f.token.to_base64().unwrap();
    for cut in [1, text.len() / 2, text.len() - 3] {
        assert!(
            Token::from_base64(&text[..cut], &pk).is_err(),
            "cut at {cut}"
        );
    }
    // Surrounding whitespace (a trailing newline from a file) is fine.
    assert!(Token::from_base64(&format!("  {text}\n"), &pk).is_ok());
}

#[test]
fn a_revocation_list_with_a_bad_line_is_refused_with_its_line_number() {
    let ok = Revocations::parse("# comment\n\nabcd\n").unwrap();
    assert_eq!(ok.len(), 1);
    let err = Revocations::parse("abcd\nnot-hex\n").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}
