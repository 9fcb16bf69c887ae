//! Bulwark: a runtime for autonomous AI agents that stays safe when the model is fully
//! compromised. Its security comes from the runtime, never from the prompt.
//!
//! This facade crate re-exports the member crates: [`capabilities`] (tokens signed by
//! a cluster root key that can only be narrowed when handed to a child agent, bound to
//! the holder's key, checked on every request) and [`runtime`] (the embedded agent
//! runtime: actors, the gate, supervisors, budgets, audit).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use bulwark::{Attenuation, KeyPair, MicroUsd, Request, Revocations, RootGrant, Tier, Token};
//!
//! let root = KeyPair::generate();
//! let planner = KeyPair::generate();
//! let grant = RootGrant::new(
//!     "acme", "planner", planner.public(),
//!     MicroUsd::from_usd(10).unwrap(),
//!     SystemTime::now() + Duration::from_secs(3600), 2,
//! )
//! .tool("send_email", Tier::AutoPlus);
//! let token = Token::mint(&root, grant).unwrap();
//!
//! let mailer = KeyPair::generate();
//! let child = token
//!     .attenuate(&planner, Attenuation::new("mailer", mailer.public()).tier("send_email", Tier::Confirm))
//!     .unwrap();
//! let request = Request {
//!     agent: "mailer".into(),
//!     tool: "send_email".into(),
//!     args: Default::default(),
//!     time: SystemTime::now(),
//! };
//! assert_eq!(child.authorize(&request, &Revocations::new()).unwrap().tier, Tier::Confirm);
//! ```

pub use bulwark_capabilities as capabilities;
pub use bulwark_capabilities::{
    Approval, ApprovalError, ArgValue, Args, AttenuateError, Attenuation, Authorized, Constraint,
    Denial, KeyError, KeyPair, MicroUsd, PublicKey, ReplayGuard, Request, Revocations, RootGrant,
    SignedRequest, Tier, Token, TokenError,
};
pub use bulwark_runtime as runtime;
pub use bulwark_runtime::{
    AgentHandle, AgentSpec, Brain, BrainAction, Outcome, Runtime, ScriptedBrain, Tool,
    ToolManifest, ToolOutput,
};

/// The README's examples, compiled and run as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
