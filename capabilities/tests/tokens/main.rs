//! Integration tests of the capability tokens through the public API: attacks (each
//! paired with the allowed path), property tests of attenuation, and byte mutation.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod attacks;
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
