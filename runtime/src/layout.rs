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
//! | `kv`    | `proposal-inbox/ID`        | a `SignedDecision` queued offline (record)  |
//! | `kv`    | `secret/NAME`              | a sealed secret                             |
//! | `kv`    | `breaker/DIGEST`           | a `BreakerState` (record)                   |
//! | `kv`    | `dedup/task/DIGEST`, `dedup/chan/DIGEST`, `dedup/prop/DIGEST` | the claim's expiry (ms since the epoch, 8 bytes big-endian) |
//! | `kv`    | `board/DIGEST`             | a `BoardTask` (record)                      |
//!
//! A *record* is JSON with its format version `v` beside its fields ([`encode`],
//! [`decode`]). Every prefix ends with `/` and none is a prefix of another, so a scan by one
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

/// A JSON record of the `kv` table with its format version beside its fields. A
/// record written before versions were recorded reads as version 1; a record of a
/// newer format than this release knows is refused with a clear error rather than
/// misread.
#[derive(serde::Serialize, serde::Deserialize)]
struct Versioned<T> {
    #[serde(default = "first_version")]
    v: u16,
    #[serde(flatten)]
    value: T,
}

fn first_version() -> u16 {
    1
}

/// Format version of the JSON records of the `kv` table (breakers, the task board,
/// queued decisions).
pub(crate) const RECORD_FORMAT: u16 = 1;

/// Encodes `value` as a versioned record.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, crate::error::StoreError> {
    serde_json::to_vec(&Versioned {
        v: RECORD_FORMAT,
        value,
    })
    .map_err(crate::error::StoreError::from_display)
}

/// Decodes a versioned record.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, crate::error::StoreError> {
    let record: Versioned<T> =
        serde_json::from_slice(bytes).map_err(crate::error::StoreError::from_display)?;
    if record.v > RECORD_FORMAT {
        return Err(crate::error::StoreError::Db(format!(
            "a stored record has format {}, newer than this release reads ({RECORD_FORMAT})",
            record.v
        )));
    }
    Ok(record.value)
}

#[cfg(test)]
mod record_tests {
    use super::{decode, encode};
    use crate::breaker::BreakerState;
    use crate::proposals::SignedDecision;

    #[test]
    fn records_carry_their_version_and_read_unversioned_ones_as_the_first() {
        let state = BreakerState {
            failures: 2,
            trips: 1,
            open_until_ms: Some(7),
        };
        let bytes = encode(&state).expect("encode");
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.contains("\"v\":1"), "{text}");
        assert_eq!(decode::<BreakerState>(&bytes).expect("decode"), state);
        let legacy = serde_json::to_vec(&state).expect("legacy");
        assert_eq!(
            decode::<BreakerState>(&legacy).expect("legacy decodes"),
            state
        );
        let newer = text.replace("\"v\":1", "\"v\":9");
        let err = decode::<BreakerState>(newer.as_bytes()).expect_err("newer is refused");
        assert!(err.to_string().contains("format 9"), "{err}");
    }

    #[test]
    fn a_queued_decision_round_trips_with_its_tag() {
        let key = bulwark_capabilities::KeyPair::generate();
        let decision = SignedDecision::Reject(bulwark_capabilities::Decision::sign(
            &key,
            bulwark_capabilities::DecisionKind::Reject,
            "p1",
            "no",
            std::time::SystemTime::now(),
        ));
        let bytes = encode(&decision).expect("encode");
        assert_eq!(decode::<SignedDecision>(&bytes).expect("decode"), decision);
        let legacy = serde_json::to_vec(&decision).expect("legacy");
        assert_eq!(
            decode::<SignedDecision>(&legacy).expect("legacy decodes"),
            decision
        );
    }
}
