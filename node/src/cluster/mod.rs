//! The cluster: `bulwark node` processes joined by NATS.
//!
//! [`config`] owns a node's TOML configuration and its checks. [`envelope`] owns the wire format every message between nodes travels in and its
//! verification; nothing reaches an actor before [`envelope::Verifier::open`] accepts
//! it. [`metrics`] owns the node's own metric families (envelope refusals, heartbeat
//! lag, NATS reconnects), served beside its runtime's on the dashboard's `/metrics`.

pub mod client;
pub mod config;
pub mod envelope;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod revocation;
pub(crate) mod serve;
pub mod wire;
