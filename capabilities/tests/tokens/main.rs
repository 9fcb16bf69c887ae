//! Integration tests of the capability tokens through the public API: attacks (each
//! paired with the allowed path), property tests of attenuation, and byte mutation.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod attacks;
mod constraints;
mod mutation;
mod properties;

use std::time::{Duration, SystemTime};

use bulwark_capabilities::{ArgValue, Args, KeyPair, MicroUsd, Request, RootGrant, Tier, Token};

/// A fixed "now" so expiry arithmetic is exact.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A root key, the root agent's holder key and its token.
pub struct Fixture {
    /// The cluster root key.
    pub root: KeyPair,
    /// The root agent's holder key.
    pub holder: KeyPair,
    /// The root token.
    pub token: Token,
}

/// A root token for agent `planner` with four tools, $100, one hour, depth 6.
pub fn fixture() -> Fixture {
    let root = KeyPair::generate();
    let holder = KeyPair::generate();
    let grant = RootGrant::new(
        "acme",
        "planner",
        holder.public(),
        MicroUsd::from_usd(100).unwrap(),
        now() + Duration::from_secs(3600),
        6,
    )
    .tool("read_inbox", Tier::Auto)
    .tool("send_email", Tier::AutoPlus)
    .tool("pay", Tier::Propose)
    .tool("delete_db", Tier::Block);
    let token = Token::mint(&root, grant).unwrap();
    Fixture {
        root,
        holder,
        token,
    }
}

/// A request at [`now`].
pub fn request(agent: &str, tool: &str, args: &[(&str, ArgValue)]) -> Request {
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
fn sandbox_limits_survive_verification_and_only_tighten() {
    use bulwark_capabilities::Attenuation;
    let f = fixture();
    let child = KeyPair::generate();
    let t = f
        .token
        .attenuate(
            &f.holder,
            Attenuation::new("analyst", child.public())
                .sandbox_limit("run_python", "memory_bytes", 64 << 20)
                .sandbox_limit("run_python", "timeout_ms", 2_000),
        )
        .unwrap();
    let back = Token::from_bytes(&t.to_bytes().unwrap(), &f.root.public()).unwrap();
    assert_eq!(
        back.effective().sandbox_limits["run_python"]["memory_bytes"],
        64 << 20
    );
    // A grandchild asking for more gets the parent's cap; asking for less gets less.
    let grandchild = KeyPair::generate();
    let g = back
        .attenuate(
            &child,
            Attenuation::new("sub", grandchild.public())
                .sandbox_limit("run_python", "memory_bytes", 1 << 30)
                .sandbox_limit("run_python", "timeout_ms", 500),
        )
        .unwrap();
    let g = Token::from_bytes(&g.to_bytes().unwrap(), &f.root.public()).unwrap();
    let limits = &g.effective().sandbox_limits["run_python"];
    assert_eq!(limits["memory_bytes"], 64 << 20);
    assert_eq!(limits["timeout_ms"], 500);
    assert!(
        g.inspect().to_string().contains(
            "sandbox limits: run_python.memory_bytes=67108864, run_python.timeout_ms=500"
        ),
        "{}",
        g.inspect()
    );
    // Unknown limits, zero and values Datalog cannot hold are refused.
    for (limit, value) in [("cpu", 5), ("fuel", 0), ("fuel", u64::MAX)] {
        let bad = Attenuation::new("x", KeyPair::generate().public()).sandbox_limit(
            "run_python",
            limit,
            value,
        );
        assert!(
            f.token.attenuate(&f.holder, bad).is_err(),
            "{limit}={value}"
        );
    }
}

#[test]
fn trusted_arguments_survive_verification_and_only_accumulate() {
    use bulwark_capabilities::Attenuation;
    let f = fixture();
    let child = KeyPair::generate();
    let t = f
        .token
        .attenuate(
            &f.holder,
            Attenuation::new("payer", child.public()).trusted_arg("pay", "iban"),
        )
        .unwrap();
    let back = Token::from_bytes(&t.to_bytes().unwrap(), &f.root.public()).unwrap();
    let args = &back.effective().trusted_args["pay"];
    assert!(args.contains("iban"));
    // A grandchild adds one; it cannot drop the parent's.
    let grandchild = KeyPair::generate();
    let g = back
        .attenuate(
            &child,
            Attenuation::new("sub", grandchild.public()).trusted_arg("send_email", "to"),
        )
        .unwrap();
    let g = Token::from_bytes(&g.to_bytes().unwrap(), &f.root.public()).unwrap();
    assert!(g.effective().trusted_args["pay"].contains("iban"));
    assert!(g.effective().trusted_args["send_email"].contains("to"));
    assert!(
        g.inspect()
            .to_string()
            .contains("trusted arguments only: pay.iban, send_email.to")
    );
    // A malformed entry is refused when delegating.
    let mut bad = Attenuation::new("x", KeyPair::generate().public());
    bad.trusted_args.insert("no-dot".into());
    assert!(f.token.attenuate(&f.holder, bad).is_err());
}
