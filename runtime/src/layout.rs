//! The on-disk layout of a data directory's redb file: its tables and the one key
//! space of its `kv` table.
//!
//! | table   | key                        | value                                      |
//! |---------|----------------------------|--------------------------------------------|
//! | `audit` | sequence number (`u64`)    | an `AuditEntry` (JSON, format `v`)          |
//! | `kv`    | `revoked/HEX`              | empty: a revoked block id                   |
//! | `kv`    | `proposal/ID`              | a `Proposal` (JSON, format `v`), sealed     |
//! | `kv`    | `proposal-token/ID`        | the proposing agent's token (base64)        |
//! | `kv`    | `proposal-open/DIGEST`     | the id of the open proposal of one action   |
//! | `kv`    | `proposal-inbox/ID`        | a `SignedDecision` queued offline (JSON)    |
//! | `kv`    | `secret/NAME`              | a sealed secret                             |
//! | `kv`    | `breaker/DIGEST`           | a `BreakerState` (JSON)                     |
//! | `kv`    | `dedup/task/DIGEST`, `dedup/chan/DIGEST`, `dedup/prop/DIGEST` | a dedup claim (JSON) |
//! | `kv`    | `board/DIGEST`             | a `BoardTask` (JSON)                        |
//!
//! Every prefix ends with `/` and none is a prefix of another, so a scan by one
//! prefix never returns another kind's keys. The budget ledger has no table of its
//! own: its commands ride in audit entries, and replaying them rebuilds it.

use redb::TableDefinition;

/// The database file inside a data directory.
pub const DB_FILE: &str = "bulwark.redb";

/// The audit trail: sequence number to entry.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Everything else, by the key prefixes below.
pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Revoked block ids.
pub(crate) const REVOKED: &str = "revoked/";
/// Proposals.
pub(crate) const PROPOSAL: &str = "proposal/";
/// Proposals' tokens.
pub(crate) const PROPOSAL_TOKEN: &str = "proposal-token/";
/// The open proposal of one action (agent, tool, arguments).
pub(crate) const PROPOSAL_OPEN: &str = "proposal-open/";
/// Decisions queued while no runtime ran.
pub(crate) const PROPOSAL_INBOX: &str = "proposal-inbox/";
/// Sealed secrets.
pub(crate) const SECRET: &str = "secret/";
/// Circuit breakers.
pub(crate) const BREAKER: &str = "breaker/";
/// Task-level deduplication.
pub(crate) const DEDUP_TASK: &str = "dedup/task/";
/// Channel-level deduplication.
pub(crate) const DEDUP_CHANNEL: &str = "dedup/chan/";
/// Proposal-level deduplication.
pub(crate) const DEDUP_PROPOSAL: &str = "dedup/prop/";
/// The shared task board.
pub(crate) const BOARD: &str = "board/";

/// Every key prefix of the `kv` table.
#[cfg(test)]
const PREFIXES: [&str; 11] = [
    REVOKED,
    PROPOSAL,
    PROPOSAL_TOKEN,
    PROPOSAL_OPEN,
    PROPOSAL_INBOX,
    SECRET,
    BREAKER,
    DEDUP_TASK,
    DEDUP_CHANNEL,
    DEDUP_PROPOSAL,
    BOARD,
];

/// The key of `name` under `prefix`.
pub(crate) fn key(prefix: &str, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len());
    key.push_str(prefix);
    key.push_str(name);
    key
}

#[cfg(test)]
mod tests {
    use super::PREFIXES;

    #[test]
    fn no_key_prefix_is_a_prefix_of_another() {
        for a in PREFIXES {
            assert!(a.ends_with('/'), "{a} ends with a slash");
            for b in PREFIXES {
                if a != b {
                    assert!(!b.starts_with(a), "`{b}` would be scanned with `{a}`");
                }
            }
        }
    }
}
