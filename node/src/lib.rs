//! `bulwark-node`: the parts of the `bulwark` binary that embedding programs reuse.
//!
//! This crate owns the operator-facing surfaces: the HTTP dashboard where people
//! decide on proposals. It never makes a security decision itself: signatures are
//! checked by `bulwark-runtime` against the runtime's operator keys.

pub mod cluster;
pub mod dashboard;
