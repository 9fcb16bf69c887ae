//! The budget ledger: its pure state machine ([`state`]) and the service that owns
//! it ([`service`]).
//!
//! The rest of the runtime reaches the ledger only through [`LedgerService`]: it
//! hands over a command whose inputs (reservation id, day) are already fixed and gets
//! the applied outcome back, with the command journaled beside its audit record. The
//! local service applies under one lock and writes the journal; a replicated one can
//! propose the same command to consensus and answer from the committed entry, and
//! every replica computes the same outcome and the same audit hash.

mod service;
mod state;

pub(crate) use service::{LedgerService, LocalLedger, Reservation};
pub use state::{
    AccountView, ECONOMY_THRESHOLD_PERCENT, LedgerCommand, LedgerOutcome, LedgerState,
};
