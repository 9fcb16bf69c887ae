//! A real crash between reserve and commit: a helper process aborts inside a tool,
//! after the gate reserved its budget and wrote its intent. On restart nothing is lost
//! and nothing is counted twice.

use std::sync::Arc;

use bulwark_capabilities::{KeyPair, MicroUsd, Tier};
use bulwark_runtime::{
    AgentSpec, AuditReader, ManualClock, Tool, ToolManifest, ToolOutput, Verification,
};
use serde_json::json;

use crate::{Harness, build, calls, t0};

const DIR: &str = "BULWARK_CRASH_DIR";
const ROOT: &str = "BULWARK_CRASH_ROOT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of crash_between_reserve_and_commit_loses_and_doubles_nothing, which runs it"]
async fn crash_probe() {
    let dir = std::env::var(DIR).unwrap();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(std::env::var(ROOT).unwrap(), &mut secret).unwrap();
    let root = KeyPair::from_secret_bytes(&secret);
    // A checkpoint after every durable commit: none may cover what the crash loses.
    let rt = bulwark_runtime::Runtime::builder()
        .data_dir(&dir)
        .root_public_key(root.public())
        .clock(Arc::new(ManualClock::new(t0())))
        .audit(bulwark_runtime::AuditConfig::default().checkpoint_every(1))
        .build()
        .await
        .unwrap();
    crate::register_tools(&rt);
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("crash", "Takes the process down mid-call")
                .max_cost(MicroUsd::new(50_000).unwrap()),
            |_| async {
                std::process::abort();
                #[allow(unreachable_code)]
                Ok(ToolOutput::new(json!(null)))
            },
        ))
        .unwrap();
    let h = Harness {
        dir: tempfile::tempdir().unwrap(),
        root: root.clone(),
        clock: Arc::new(ManualClock::new(t0())),
        rt,
    };
    let spec = AgentSpec::new("crasher");
    let token = h.token(
        &spec.key,
        "crasher",
        &[("lookup", Tier::Auto), ("crash", Tier::Auto)],
        "1",
    );
    let a =
        h.rt.spawn_agent(
            spec,
            token,
            calls(&[("lookup", json!({})), ("crash", json!({}))]),
        )
        .await
        .unwrap();
    let _ = a.run("crash now").await;
    unreachable!("the crash tool aborts the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_reserve_and_commit_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret: [u8; 32] = rand::random();
    let root = KeyPair::from_secret_bytes(&secret);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash::crash_probe",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR, dir.path())
        .env(ROOT, hex::encode(secret))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the probe must die in the tool");

    // Before any recovery: the crash tool's intent is durable, its result is not.
    {
        let reader = AuditReader::open(dir.path()).unwrap();
        let report = reader.report().unwrap();
        assert!(report.problems.is_empty(), "{report:?}");
        assert!(
            report.checkpoints > 0,
            "checkpoints were signed before the crash"
        );
        let entries = reader.tail(1000).unwrap();
        let crash_intents = entries
            .iter()
            .filter(|e| e.record.kind == "tool.call" && e.record.detail["tool"] == "crash")
            .count();
        assert_eq!(
            crash_intents, 1,
            "the intent was written before the tool ran"
        );
        assert!(
            !entries
                .iter()
                .any(|e| e.record.detail["tool"] == "crash" && e.record.kind == "tool.result")
        );
    }

    let clock = Arc::new(ManualClock::new(t0()));
    let rt = build(dir.path(), &root, clock.clone()).await;
    // lookup: reserved 1 cent, committed 0.7; crash: reserved 5 cents, never committed,
    // charged in full on recovery.
    let spent = rt.account("agent:crasher").unwrap();
    assert_eq!(spent.spent_today.micros(), 7_000 + 50_000);
    assert_eq!(spent.reserved.micros(), 0);
    assert_eq!(
        rt.account("tenant:acme").unwrap().spent_today.micros(),
        57_000
    );
    let recovered = rt
        .audit_tail(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == "budget.recovered")
        .count();
    assert_eq!(recovered, 1);
    rt.shutdown().await.unwrap();
    drop(rt);

    // A second restart counts nothing again.
    let rt = build(dir.path(), &root, clock).await;
    assert_eq!(
        rt.account("agent:crasher").unwrap().spent_today.micros(),
        57_000
    );
    let recovered = rt
        .audit_tail(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == "budget.recovered")
        .count();
    assert_eq!(recovered, 1);
    assert!(matches!(
        rt.verify_audit().await.unwrap(),
        Verification::Intact(_)
    ));
}
