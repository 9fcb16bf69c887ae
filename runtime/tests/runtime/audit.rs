//! The audit trail: complete, hash-chained, and any changed byte is detected.

use bulwark_capabilities::Tier;
use bulwark_runtime::{AuditReader, Verification};
use redb::{ReadableTable, TableDefinition};
use serde_json::json;

use crate::{Harness, calls};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

async fn trail() -> (Harness, u64) {
    let h = Harness::new().await;
    let a = h
        .agent(
            "clerk",
            &[("read_inbox", Tier::Auto), ("lookup", Tier::Auto)],
            "1",
            calls(&[
                ("read_inbox", json!({})),
                ("lookup", json!({})),
                ("wipe", json!({})),
            ]),
        )
        .await;
    a.run("audit me").await.unwrap();
    let entries = h.rt.audit_tail(1000).await.unwrap().len() as u64;
    h.rt.shutdown().await.unwrap();
    let n = match AuditReader::open(h.dir.path()).unwrap().verify().unwrap() {
        Verification::Intact(n) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(n, entries);
    (h, n)
}

fn reopen(h: &Harness) -> redb::Database {
    for _ in 0..100 {
        if let Ok(db) = redb::Database::open(h.dir.path().join(bulwark_runtime::DB_FILE)) {
            return db;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("database still locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_recorded_with_its_chain() {
    let (h, n) = trail().await;
    let entries = AuditReader::open(h.dir.path()).unwrap().tail(1000).unwrap();
    assert_eq!(entries.len() as u64, n);
    let kinds: Vec<&str> = entries.iter().map(|e| e.record.kind.as_str()).collect();
    for k in [
        "agent.spawn",
        "model.call",
        "model.result",
        "tool.call",
        "tool.result",
        "tool.denied",
        "agent.final",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let call = entries
        .iter()
        .find(|e| e.record.kind == "tool.call")
        .unwrap();
    assert_eq!(call.record.chain, vec!["clerk".to_string()]);
    assert!(!call.record.token_id.is_empty());
    // The intent precedes the result.
    let pos = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(pos("tool.call") < pos("tool.result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_any_byte_of_an_entry_is_detected_at_that_entry() {
    let (h, n) = trail().await;
    let target = n / 2;
    // Flip one byte at several offsets of one entry: each is caught at that entry.
    let original: Vec<u8> = {
        let db = reopen(&h);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(AUDIT).unwrap();
        t.get(target).unwrap().unwrap().value().to_vec()
    };
    for offset in [
        0,
        original.len() / 3,
        original.len() / 2,
        original.len() - 2,
    ] {
        let mut changed = original.clone();
        changed[offset] ^= 0x01;
        let db = reopen(&h);
        {
            let txn = db.begin_write().unwrap();
            txn.open_table(AUDIT)
                .unwrap()
                .insert(target, changed.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        drop(db);
        let v = AuditReader::open(h.dir.path()).unwrap().verify().unwrap();
        assert!(
            matches!(v, Verification::Broken { seq, .. } if seq == target),
            "offset {offset}: {v:?}"
        );
    }
    // Removing an entry is caught too.
    let db = reopen(&h);
    {
        let txn = db.begin_write().unwrap();
        let mut t = txn.open_table(AUDIT).unwrap();
        t.insert(target, original.as_slice()).unwrap();
        t.remove(target + 1).unwrap();
        drop(t);
        txn.commit().unwrap();
    }
    drop(db);
    let v = AuditReader::open(h.dir.path()).unwrap().verify().unwrap();
    assert!(
        matches!(v, Verification::Broken { seq, .. } if seq == target + 2),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_trail_verifies_and_reopens() {
    let (h, n) = trail().await;
    drop(reopen(&h));
    let reader = AuditReader::open(h.dir.path()).unwrap();
    assert_eq!(reader.verify().unwrap(), Verification::Intact(n));
    assert_eq!(reader.tail(3).unwrap().len(), 3);
    assert_eq!(reader.tail(3).unwrap().last().unwrap().seq, n - 1);
    drop(reader);
    let mut entries = 0;
    let db = reopen(&h);
    let txn = db.begin_read().unwrap();
    for row in txn.open_table(AUDIT).unwrap().iter().unwrap() {
        row.unwrap();
        entries += 1;
    }
    assert_eq!(entries, n);
}

// ---- Keyed chain, checkpoints and the start-up check ----

use std::sync::Arc;

use bulwark_capabilities::KeyPair;
use bulwark_runtime::{
    AuditConfig, AuditEntry, AuditError, BuildError, CHECKPOINT_FILE, LedgerCommand, ManualClock,
    Runtime,
};
use sha2::{Digest, Sha256};

async fn build_with(
    dir: &std::path::Path,
    root: &KeyPair,
    clock: Arc<ManualClock>,
    config: AuditConfig,
) -> Result<Runtime, BuildError> {
    let rt = Runtime::builder()
        .data_dir(dir)
        .root_public_key(root.public())
        .clock(clock)
        .audit(config)
        .build()
        .await?;
    crate::register_tools(&rt);
    Ok(rt)
}

/// Every stored entry, in order.
fn read_all(h: &Harness) -> Vec<AuditEntry> {
    let db = reopen(h);
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(AUDIT).unwrap();
    t.iter()
        .unwrap()
        .map(|r| serde_json::from_slice(r.unwrap().1.value()).unwrap())
        .collect()
}

/// The unkeyed chain hash: SHA-256 over the previous hash and the entry's JSON
/// without its hash. Anyone can compute it.
fn unkeyed_hash(e: &AuditEntry) -> String {
    let mut unsealed = e.clone();
    unsealed.hash.clear();
    let mut h = Sha256::new();
    h.update(e.prev.as_bytes());
    h.update(serde_json::to_vec(&unsealed).unwrap());
    hex::encode(h.finalize())
}

/// What someone with write access to the database (but not the audit key) can do:
/// change entries, then recompute every hash and link from `from` on, and store them.
fn rewrite_and_rechain(h: &Harness, from: u64, change: impl Fn(&mut AuditEntry)) {
    let mut entries = read_all(h);
    let mut prev = if from == 0 {
        "0".repeat(64)
    } else {
        entries[from as usize - 1].hash.clone()
    };
    for e in entries.iter_mut().skip(from as usize) {
        change(e);
        e.prev = prev;
        e.hash = unkeyed_hash(e);
        prev = e.hash.clone();
    }
    let db = reopen(h);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(AUDIT).unwrap();
        for e in entries.iter().skip(from as usize) {
            t.insert(e.seq, serde_json::to_vec(e).unwrap().as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Removes the last `k` entries.
fn truncate(h: &Harness, k: u64) {
    let n = read_all(h).len() as u64;
    let db = reopen(h);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(AUDIT).unwrap();
        for seq in n - k..n {
            t.remove(seq).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Lowers every recorded charge to zero.
fn zero_charges(e: &mut AuditEntry) {
    if let Some(LedgerCommand::Commit { actual, .. }) = &mut e.record.ledger {
        *actual = 0;
    }
}

fn first_charge(h: &Harness) -> u64 {
    read_all(h)
        .iter()
        .find(
            |e| matches!(e.record.ledger, Some(LedgerCommand::Commit { actual, .. }) if actual > 0),
        )
        .unwrap()
        .seq
}

fn verify(h: &Harness) -> Verification {
    AuditReader::open(h.dir.path()).unwrap().verify().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_entry_with_recomputed_hashes_is_detected() {
    let (h, n) = trail().await;
    let target = first_charge(&h);
    rewrite_and_rechain(&h, target, zero_charges);
    // Every link and unkeyed hash is consistent again; the keyed hash is not.
    let v = verify(&h);
    assert!(
        matches!(&v, Verification::Broken { seq, reason } if *seq == target && reason.contains("keyed hash")),
        "{v:?}"
    );

    // Rewriting the whole trail in the unkeyed format 1 instead: the checkpoint
    // signed at shutdown no longer matches.
    let (h, _) = trail().await;
    rewrite_and_rechain(&h, 0, |e| {
        e.v = 1;
        zero_charges(e);
    });
    let v = verify(&h);
    assert!(
        matches!(&v, Verification::Broken { seq, reason } if *seq == n - 1 && reason.contains("checkpoint")),
        "{v:?}"
    );
    // Format 1 entries after keyed ones are refused too.
    let (h, _) = trail().await;
    rewrite_and_rechain(&h, target, |e| e.v = 1);
    let v = verify(&h);
    assert!(
        matches!(&v, Verification::Broken { seq, reason } if *seq == target && reason.contains("unkeyed")),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_entries_from_the_end_is_detected_against_the_checkpoint() {
    let (h, n) = trail().await;
    let lines = std::fs::read_to_string(h.dir.path().join(CHECKPOINT_FILE)).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["len"], n,
        "the clean shutdown checkpointed the whole trail"
    );
    truncate(&h, 3);
    let v = verify(&h);
    assert!(
        matches!(&v, Verification::Broken { seq, reason }
            if *seq == n - 3 && reason.contains("removed from the end")),
        "{v:?}"
    );
    // The runtime does not start on it: the removed entries held spend.
    let err = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, BuildError::Audit(AuditError::Broken { seq, .. }) if *seq == n - 3),
        "{err}"
    );
    // Overridden: it starts; the override disowns the checkpoint the trail no longer
    // matches, and a new one pins the trail as it now is.
    let rt = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default().start_despite_broken_trail("restored from backup"),
    )
    .await
    .unwrap();
    let o = rt.audit_tail(1).await.unwrap().remove(0);
    assert_eq!(o.record.kind, bulwark_runtime::OVERRIDE_KIND);
    assert_eq!(o.record.detail["broken_at"], n - 3);
    rt.shutdown().await.unwrap();
    drop(rt);
    let report = AuditReader::open(h.dir.path()).unwrap().report().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.accepted.len(), 1);
    assert_eq!(report.last_checkpoint.unwrap().len, n - 2);
    // Removing the override itself is caught by the new checkpoint.
    truncate(&h, 1);
    assert!(matches!(verify(&h), Verification::Broken { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_checkpoints_and_truncating_needs_an_external_anchor() {
    let (h, n) = trail().await;
    let anchor_dir = tempfile::tempdir().unwrap();
    let anchor = anchor_dir.path().join("anchored.checkpoints");
    std::fs::copy(h.dir.path().join(CHECKPOINT_FILE), &anchor).unwrap();
    std::fs::remove_file(h.dir.path().join(CHECKPOINT_FILE)).unwrap();
    truncate(&h, 3);
    // The limit: with the checkpoints gone, a shorter keyed chain is a valid chain.
    let report = AuditReader::open(h.dir.path()).unwrap().report().unwrap();
    assert_eq!(report.verification(), Verification::Intact(n - 3));
    assert_eq!(report.checkpoints, 0);
    assert!(report.last_checkpoint.is_none());
    // A copy of the checkpoints kept elsewhere detects it.
    let anchored =
        AuditReader::open_with(h.dir.path(), &AuditConfig::default().anchor_file(&anchor))
            .unwrap()
            .verify()
            .unwrap();
    assert!(
        matches!(&anchored, Verification::Broken { seq, .. } if *seq == n - 3),
        "{anchored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_rewrite_lowering_spend_stops_the_start_until_overridden() {
    let h = Harness::new().await;
    let a = h
        .agent(
            "spender",
            &[("lookup", Tier::Auto)],
            "1",
            calls(&[("lookup", json!({})), ("lookup", json!({}))]),
        )
        .await;
    a.run("spend").await.unwrap();
    let spent = h.rt.account("agent:spender").unwrap().spent_today.micros();
    assert_eq!(spent, 14_000);
    h.rt.shutdown().await.unwrap();
    let n = read_all(&h).len() as u64;
    let target = first_charge(&h);
    rewrite_and_rechain(&h, target, zero_charges);

    for _ in 0..2 {
        // Refused, with what broke and how to override; refusing writes nothing.
        let err = build_with(
            h.dir.path(),
            &h.root,
            h.clock.clone(),
            AuditConfig::default(),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(&err, BuildError::Audit(AuditError::Broken { seq, .. }) if *seq == target),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("broken at entry {target}")),
            "{text}"
        );
        assert!(text.contains("start_despite_broken_trail"), "{text}");
        assert_eq!(read_all(&h).len() as u64, n);
    }

    // The operator overrides: it starts, on the stored (rewritten) ledger, and the
    // override is in the trail.
    let rt = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default().start_despite_broken_trail("restored after incident 42"),
    )
    .await
    .unwrap();
    assert_eq!(rt.account("agent:spender").unwrap().spent_today.micros(), 0);
    let tail = rt.audit_tail(1).await.unwrap();
    let o = &tail[0];
    assert_eq!(o.record.kind, bulwark_runtime::OVERRIDE_KIND);
    assert_eq!(o.seq, n);
    assert_eq!(o.record.detail["broken_at"], target);
    assert_eq!(
        o.record.detail["operator_reason"],
        "restored after incident 42"
    );
    assert_eq!(
        rt.verify_audit().await.unwrap(),
        Verification::Intact(n + 1)
    );
    rt.shutdown().await.unwrap();
    drop(rt);
    // The accepted break stays reported, and the runtime starts without the override.
    let report = AuditReader::open(h.dir.path()).unwrap().report().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.accepted.len(), 1);
    assert_eq!(report.accepted[0].broken_at, target);
    assert_eq!(report.accepted[0].override_at, n);
    let rt = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default(),
    )
    .await
    .unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_on_an_intact_trail_keep_the_spend_and_verify() {
    let mut h = Harness::new().await;
    let a = h
        .agent(
            "spender",
            &[("lookup", Tier::Auto)],
            "1",
            calls(&[("lookup", json!({}))]),
        )
        .await;
    a.run("spend").await.unwrap();
    for _ in 0..2 {
        h.restart().await;
        assert_eq!(
            h.rt.account("agent:spender").unwrap().spent_today.micros(),
            7_000
        );
        assert!(matches!(
            h.rt.verify_audit().await.unwrap(),
            Verification::Intact(_)
        ));
    }
    h.rt.shutdown().await.unwrap();
    let report = AuditReader::open(h.dir.path()).unwrap().report().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    // A shutdown signs a checkpoint when entries were added since the last one; the
    // restarts added none.
    assert_eq!(report.checkpoints, 1);
    assert_eq!(report.last_checkpoint.unwrap().len, report.entries);
    assert_eq!(report.legacy_entries, 0);
    assert!(read_all(&h).iter().all(|e| e.v == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_signed_while_running_and_a_forged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = KeyPair::generate();
    let clock = Arc::new(ManualClock::new(crate::t0()));
    let rt = build_with(
        dir.path(),
        &root,
        clock.clone(),
        AuditConfig::default().checkpoint_every(4),
    )
    .await
    .unwrap();
    let h = Harness {
        dir,
        root,
        clock,
        rt,
    };
    let a = h
        .agent(
            "spender",
            &[("lookup", Tier::Auto)],
            "1",
            calls(&[("lookup", json!({})), ("lookup", json!({}))]),
        )
        .await;
    a.run("spend").await.unwrap();
    let path = h.dir.path().join(CHECKPOINT_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.is_empty(), "a checkpoint was signed before shutdown");
    assert!(matches!(
        h.rt.verify_audit().await.unwrap(),
        Verification::Intact(_)
    ));
    h.rt.shutdown().await.unwrap();
    assert!(matches!(verify(&h), Verification::Intact(_)));
    // A checkpoint line not signed by the audit key is refused.
    let mut forged: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    forged["len"] = json!(1);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{forged}\n").as_bytes()).unwrap();
    let v = verify(&h);
    assert!(
        matches!(&v, Verification::Broken { reason, .. } if reason.contains("not signed")),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_from_an_earlier_release_is_refused_then_migrated() {
    let (h, n) = trail().await;
    // An earlier release's data directory: unkeyed format 1, no checkpoints.
    rewrite_and_rechain(&h, 0, |e| e.v = 1);
    std::fs::remove_file(h.dir.path().join(CHECKPOINT_FILE)).unwrap();
    let report = AuditReader::open(h.dir.path()).unwrap().report().unwrap();
    assert_eq!(report.verification(), Verification::Intact(n));
    assert_eq!(report.legacy_entries, n);

    let err = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, BuildError::Audit(AuditError::Legacy { entries, .. }) if *entries == n),
        "{err}"
    );
    assert!(err.to_string().contains("migrate_legacy_trail"), "{err}");

    let rt = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default().migrate_legacy_trail(),
    )
    .await
    .unwrap();
    assert_eq!(
        rt.account("agent:clerk").unwrap().spent_today.micros(),
        7_000
    );
    let last = rt.audit_tail(1).await.unwrap().remove(0);
    assert_eq!(last.record.kind, bulwark_runtime::MIGRATED_KIND);
    assert_eq!(last.v, 2);
    rt.shutdown().await.unwrap();
    drop(rt);
    let report = AuditReader::open(h.dir.path()).unwrap().report().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.legacy_entries, n);
    // From now on the legacy prefix is sealed: rewriting it is detected.
    let target = first_charge(&h);
    rewrite_and_rechain(&h, target, |e| {
        if e.v == 1 {
            zero_charges(e)
        }
    });
    let v = verify(&h);
    assert!(matches!(v, Verification::Broken { .. }), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_key_must_be_private_and_may_live_outside_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit.key");
    let root = KeyPair::generate();
    let clock = Arc::new(ManualClock::new(crate::t0()));
    let config = AuditConfig::default().key_file(&key);
    let rt = build_with(dir.path(), &root, clock.clone(), config.clone())
        .await
        .unwrap();
    rt.revoke(vec![1, 2, 3]).await.unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    assert!(!dir.path().join(bulwark_runtime::AUDIT_KEY_FILE).exists());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Without the key the keyed trail cannot be verified; with it, it verifies.
    let missing = AuditReader::open(dir.path()).unwrap().verify();
    assert!(
        matches!(missing, Err(AuditError::MissingKey(_))),
        "{missing:?}"
    );
    let with_key = AuditReader::open_with(dir.path(), &config)
        .unwrap()
        .verify()
        .unwrap();
    assert!(matches!(with_key, Verification::Intact(_)), "{with_key:?}");
    // A key others can read is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = build_with(dir.path(), &root, clock.clone(), config)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, BuildError::Audit(AuditError::InsecureKeyFile { .. })),
        "{err}"
    );
    // A keyed trail whose key is not where the runtime looks is refused, and no new
    // key is made for it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = build_with(dir.path(), &root, clock.clone(), AuditConfig::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, BuildError::Audit(AuditError::MissingKey(_))),
        "{err}"
    );
    assert!(!dir.path().join(bulwark_runtime::AUDIT_KEY_FILE).exists());
    // Another key (say, a fresh one in place of the real one) does not verify.
    let other = tempfile::tempdir().unwrap();
    build_with(other.path(), &root, clock.clone(), AuditConfig::default())
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    std::fs::copy(
        other.path().join(bulwark_runtime::AUDIT_KEY_FILE),
        dir.path().join(bulwark_runtime::AUDIT_KEY_FILE),
    )
    .unwrap();
    let err = build_with(dir.path(), &root, clock, AuditConfig::default())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, BuildError::Audit(AuditError::Broken { seq: 0, .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_checkpoint_file_is_detected_from_the_checkpoints_the_trail_records() {
    let dir = tempfile::tempdir().unwrap();
    let root = KeyPair::generate();
    let clock = Arc::new(ManualClock::new(crate::t0()));
    let rt = build_with(
        dir.path(),
        &root,
        clock.clone(),
        AuditConfig::default().checkpoint_every(4),
    )
    .await
    .unwrap();
    let h = Harness {
        dir,
        root,
        clock,
        rt,
    };
    let a = h
        .agent(
            "spender",
            &[("lookup", Tier::Auto)],
            "1",
            calls(&[("lookup", json!({})), ("lookup", json!({}))]),
        )
        .await;
    a.run("spend").await.unwrap();
    h.rt.shutdown().await.unwrap();
    let entries = read_all(&h);
    assert!(
        entries
            .iter()
            .any(|e| e.record.kind == bulwark_runtime::CHECKPOINT_KIND),
        "a periodic checkpoint is recorded in the trail"
    );
    assert!(matches!(verify(&h), Verification::Intact(_)));

    std::fs::remove_file(h.dir.path().join(CHECKPOINT_FILE)).unwrap();
    truncate(&h, 2);
    let v = verify(&h);
    assert!(
        matches!(&v, Verification::Broken { reason, .. } if reason.contains("not in the checkpoint file")),
        "{v:?}"
    );
    let err = build_with(
        h.dir.path(),
        &h.root,
        h.clock.clone(),
        AuditConfig::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, BuildError::Audit(AuditError::Broken { .. })),
        "{err}"
    );
}
