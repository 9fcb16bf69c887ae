//! Capability tokens on their own: mint, delegate, sign, check, revoke.
//!
//! A cluster root mints a token for a planner agent; the planner delegates a narrower
//! token to a mailer sub-agent; the mailer's requests are signed with its own key and
//! checked. Then a compromised mailer tries what a compromised agent tries, and each
//! attempt is contained. Run it with `cargo run --example tokens`.

use std::time::{Duration, SystemTime};

use anyhow::ensure;
use bulwark::{
    Approval, ArgValue, Args, Attenuation, KeyPair, MicroUsd, ReplayGuard, Request, Revocations,
    RootGrant, SignedRequest, Tier, Token,
};

fn main() -> anyhow::Result<()> {
    let now = SystemTime::now();
    let root = KeyPair::generate();
    let planner_key = KeyPair::generate();
    let mailer_key = KeyPair::generate();
    let operator = KeyPair::generate();

    println!("== 1. The root authority mints a token for the planner");
    let grant = RootGrant::new(
        "acme",
        "planner",
        planner_key.public(),
        "25.00".parse::<MicroUsd>()?,
        now + Duration::from_secs(3600),
        2,
    )
    .tool("read_inbox", Tier::Auto)
    .tool("send_email", Tier::AutoPlus)
    .tool("pay", Tier::Confirm);
    let planner = Token::mint(&root, grant)?;
    println!("{}\n", planner.inspect());

    println!(
        "== 2. The planner delegates to a mailer: fewer tools, stricter tier, $2, 10 minutes, internal recipients only"
    );
    let mailer = planner.attenuate(
        &planner_key,
        Attenuation::new("mailer", mailer_key.public())
            .only_tools(["send_email"])
            .tier("send_email", Tier::Propose)
            .budget("2".parse()?)
            .expires_at(now + Duration::from_secs(600))
            .require("send_email.to ends_with @acme.example".parse()?),
    )?;
    // The token travels as text; the receiver verifies it against the root key.
    let mailer = Token::from_base64(&mailer.to_base64()?, &root.public())?;
    println!("{}\n", mailer.inspect());

    let revoked = Revocations::new();
    let mut guard = ReplayGuard::new();
    let email = |to: &str| Request {
        agent: "mailer".into(),
        tool: "send_email".into(),
        args: Args::from([("to".to_string(), ArgValue::from(to))]),
        time: now,
    };

    println!("== 3. The mailer's legitimate request, signed with its key");
    let signed = SignedRequest::sign(&mailer, &mailer_key, email("bob@acme.example"));
    let allowed = mailer.authorize_signed(&signed, now, &mut guard, &revoked)?;
    println!(
        "allowed at tier {} with a ${} cap\n",
        allowed.tier, allowed.budget
    );

    println!("== 4. A compromised mailer tries to escalate");
    let mut contained = 0;
    let mut attempt = |what: &str, result: Result<String, String>| match &result {
        Ok(why) => println!("  NOT CONTAINED: {what}: {why}"),
        Err(why) => {
            contained += 1;
            println!("  contained: {what}\n    -> {why}");
        }
    };
    let exfil = SignedRequest::sign(&mailer, &mailer_key, email("attacker@evil.example"));
    attempt(
        "email the attacker",
        outcome(mailer.authorize_signed(&exfil, now, &mut guard, &revoked)),
    );
    let pay = SignedRequest::sign(
        &mailer,
        &mailer_key,
        Request {
            tool: "pay".into(),
            ..email("bob@acme.example")
        },
    );
    attempt(
        "call a tool it was not given",
        outcome(mailer.authorize_signed(&pay, now, &mut guard, &revoked)),
    );
    attempt(
        "replay its own request",
        outcome(mailer.authorize_signed(&signed, now, &mut guard, &revoked)),
    );
    let thief = KeyPair::generate();
    let stolen = SignedRequest::sign(&mailer, &thief, email("bob@acme.example"));
    attempt(
        "use its token from another key",
        outcome(mailer.authorize_signed(&stolen, now, &mut guard, &revoked)),
    );
    attempt(
        "give a sub-agent a bigger budget",
        mailer
            .attenuate(
                &mailer_key,
                Attenuation::new("helper", thief.public()).budget("100".parse()?),
            )
            .map(|_| "derived".to_string())
            .map_err(|e| e.to_string()),
    );
    let mut forged = mailer.to_bytes()?;
    // The last bytes are the token's proof key; changing them breaks the chain.
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    attempt(
        "tamper with its token",
        Token::from_bytes(&forged, &root.public())
            .map(|_| "parsed".to_string())
            .map_err(|e| e.to_string()),
    );
    let args = email("bob@acme.example").args;
    let approval = Approval::sign(
        &operator,
        "proposal-1",
        &args,
        now + Duration::from_secs(600),
    );
    attempt(
        "reuse an approval for other arguments",
        approval
            .verify(
                "proposal-1",
                &email("attacker@evil.example").args,
                &[operator.public()],
                now,
            )
            .map(|k| k.to_hex())
            .map_err(|e| e.to_string()),
    );
    println!("\n== 5. The operator revokes the planner's token: the whole subtree is cut off");
    let mut revoked = Revocations::new();
    revoked.insert(planner.revocation_ids()[0].clone());
    let fresh = SignedRequest::sign(&mailer, &mailer_key, email("bob@acme.example"));
    attempt(
        "keep working after revocation",
        outcome(mailer.authorize_signed(&fresh, now, &mut guard, &revoked)),
    );

    ensure!(
        contained == 8,
        "only {contained} of 8 attacks were contained"
    );
    println!("\nall 8 escalation attempts contained; the legitimate request ran");
    Ok(())
}

fn outcome(result: Result<bulwark::Authorized, bulwark::Denial>) -> Result<String, String> {
    result
        .map(|a| format!("allowed at tier {}", a.tier))
        .map_err(|d| d.to_string())
}
