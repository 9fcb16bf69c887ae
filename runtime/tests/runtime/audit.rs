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
