//! The sandbox against real wasmtime and the real CPython and QuickJS WASI builds:
//! each attack is tried and asserted to fail, each allowed path asserted to work.

use std::sync::Arc;
use std::time::Duration;

use bulwark_runtime::sandbox::{
    LimitKind, Limits, Mount, Program, RunReport, RunRequest, RunStatus, Sandbox, SandboxConfig,
    SandboxError,
};

/// A sandbox sharing one on-disk module cache across the test binary's processes.
pub fn sandbox(warm_python: usize) -> Arc<Sandbox> {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache");
    Sandbox::new(SandboxConfig {
        cache_dir: Some(cache),
        max_instances: 32,
        warm_python,
        ..SandboxConfig::default()
    })
    .expect("the sandbox starts")
}

async fn python(sb: &Arc<Sandbox>, source: &str) -> RunReport {
    run(sb, RunRequest::new(Program::Python(source.into()))).await
}

async fn run(sb: &Arc<Sandbox>, req: RunRequest) -> RunReport {
    match sb.run(req).await {
        Ok(r) => r,
        Err(SandboxError::Interpreter(e)) => panic!("{e}"),
        Err(e) => panic!("the sandbox refused the call: {e}"),
    }
}

const SALES: &str = "region,amount\nnorth,120.5\nsouth,80\nnorth,99.5\neast,200\nsouth,20\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_computes_statistics_over_a_csv_in_its_scratch_directory() {
    let sb = sandbox(0);
    let mut req = RunRequest::new(Program::Python(
        r#"
import csv, json, statistics
rows = list(csv.DictReader(open("sales.csv")))
amounts = [float(r["amount"]) for r in rows]
by_region = {}
for r in rows:
    by_region[r["region"]] = by_region.get(r["region"], 0) + float(r["amount"])
print(json.dumps({"n": len(rows), "total": sum(amounts), "mean": statistics.mean(amounts),
                  "median": statistics.median(amounts), "by_region": by_region}, sort_keys=True))
"#
        .into(),
    ));
    req.files
        .push(("sales.csv".into(), SALES.as_bytes().to_vec()));
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Ok, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["n"], 5);
    assert_eq!(v["total"], 520.0);
    assert_eq!(v["mean"], 104.0);
    assert_eq!(v["median"], 99.5);
    assert_eq!(v["by_region"]["north"], 220.0);
    assert!(r.fuel_used > 0 && r.peak_memory_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_computes_the_same_numbers() {
    let sb = sandbox(0);
    let mut req = RunRequest::new(Program::JavaScript(
        r#"
const text = std.loadFile("/scratch/sales.csv");
const rows = text.trim().split("\n").slice(1).map(l => l.split(","));
const amounts = rows.map(r => parseFloat(r[1]));
const total = amounts.reduce((a, b) => a + b, 0);
console.log(JSON.stringify({n: rows.length, total, mean: total / rows.length}));
"#
        .into(),
    ));
    req.files
        .push(("sales.csv".into(), SALES.as_bytes().to_vec()));
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Ok, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v, serde_json::json!({"n": 5, "total": 520, "mean": 104}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_stops_at_its_deadline_and_the_next_call_runs_at_once() {
    let sb = sandbox(0);
    let mut req = RunRequest::new(Program::Python("while True:\n    pass\n".into()));
    req.limits.timeout = Duration::from_millis(300);
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Limit);
    assert_eq!(r.limit, Some(LimitKind::Timeout));
    assert!(r.wall_ms >= 300.0, "{}", r.wall_ms);
    assert_eq!(r.reason().split(':').next(), Some("timeout"));

    // A WebAssembly loop too, and the pool's slot is free again for the next call.
    let looping = Program::Wasm {
        module: Arc::new(br#"(module (func (export "spin") (loop (br 0))))"#.to_vec()),
        invoke: Some("spin".into()),
    };
    let mut req = RunRequest::new(looping);
    req.limits.timeout = Duration::from_millis(100);
    assert_eq!(run(&sb, req).await.limit, Some(LimitKind::Timeout));
    let ok = python(&sb, "print('next')").await;
    assert_eq!(ok.status, RunStatus::Ok);
    assert_eq!(ok.stdout, "next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_fuel_bombs_stop_at_their_limits() {
    let sb = sandbox(0);
    let mut req = RunRequest::new(Program::Python(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))\n".into(),
    ));
    req.limits.memory_bytes = 64 << 20;
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Limit, "{r:?}");
    assert_eq!(r.limit, Some(LimitKind::Memory));
    assert!(r.peak_memory_bytes <= 64 << 20, "{}", r.peak_memory_bytes);

    // A module that grows its memory past the limit.
    let grow = Program::Wasm {
        module: Arc::new(
            br#"(module (memory 1) (func (export "grow") (result i32) (memory.grow (i32.const 2000))))"#
                .to_vec(),
        ),
        invoke: Some("grow".into()),
    };
    let mut req = RunRequest::new(grow);
    req.limits.memory_bytes = 16 << 20;
    let r = run(&sb, req).await;
    assert_eq!(r.results, vec![serde_json::json!(-1)], "growth refused");

    let mut req = RunRequest::new(Program::Python("print(sum(range(10**9)))".into()));
    req.limits.fuel = Some(400_000_000);
    let r = run(&sb, req).await;
    assert_eq!(r.limit, Some(LimitKind::Fuel), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cannot_read_host_files_escape_their_directories_or_open_sockets() {
    let sb = sandbox(0);
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("prices.csv"), "sku,price\na,1\n").unwrap();
    std::fs::write(host.path().join("secret.txt"), "TOP SECRET").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink(host.path().join("secret.txt"), data.join("secret-link")).unwrap();
    let mount = Mount {
        host: data.clone(),
        guest: "/data".into(),
    };

    let attempts = r#"
import os, socket
def attempt(name, f):
    try:
        f()
        print(name, "ALLOWED")
    except Exception as e:
        print(name, "refused", type(e).__name__)
attempt("etc_passwd", lambda: open("/etc/passwd").read())
attempt("dotdot_scratch", lambda: open("/scratch/../etc/passwd").read())
attempt("dotdot_mount", lambda: open("/data/../secret.txt").read())
attempt("symlink_abs", lambda: open("/data/passwd-link").read())
attempt("symlink_out", lambda: open("/data/secret-link").read())
attempt("write_mount", lambda: open("/data/new.txt", "w").write("x"))
attempt("overwrite_mount", lambda: open("/data/prices.csv", "w").write("x"))
attempt("remove_mount", lambda: os.remove("/data/prices.csv"))
attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9)))
attempt("env", lambda: (_ for _ in ()).throw(PermissionError()) if not os.environ else print(dict(os.environ)))
print("read_mount", open("/data/prices.csv").read().splitlines()[1])
open("/scratch/out.txt", "w").write("scratch is writable")
print("scratch", open("/scratch/out.txt").read())
"#;
    let mut req = RunRequest::new(Program::Python(attempts.into()));
    req.mounts.push(mount);
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Ok, "{}\n{}", r.stdout, r.stderr);
    for line in r.stdout.lines() {
        assert!(!line.ends_with("ALLOWED"), "{line}\n{}", r.stdout);
    }
    for name in [
        "etc_passwd",
        "dotdot_scratch",
        "dotdot_mount",
        "symlink_abs",
        "symlink_out",
        "write_mount",
        "overwrite_mount",
        "remove_mount",
        "socket",
        "env",
    ] {
        assert!(
            r.stdout.contains(&format!("{name} refused")),
            "{name}: {}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains("TOP SECRET") && !r.stdout.contains("root:"));
    // The allowed paths work: reading the mount, writing scratch.
    assert!(r.stdout.contains("read_mount a,1"), "{}", r.stdout);
    assert!(r.stdout.contains("scratch scratch is writable"));
    // The host is unchanged.
    assert_eq!(
        std::fs::read_to_string(data.join("prices.csv")).unwrap(),
        "sku,price\na,1\n"
    );
    assert!(!data.join("new.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_gets_a_fresh_scratch_directory_deleted_afterwards() {
    let sb = sandbox(0);
    let root = tempfile::tempdir().unwrap();
    let sb2 = Sandbox::new(SandboxConfig {
        cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache")),
        scratch_root: Some(root.path().to_path_buf()),
        max_instances: 4,
        ..SandboxConfig::default()
    })
    .unwrap();
    drop(sb);
    let first = python(
        &sb2,
        "open('/scratch/left.txt','w').write('x')\nimport os\nprint(os.listdir('/scratch'))",
    )
    .await;
    assert_eq!(first.stdout.trim(), "['left.txt']");
    let second = python(&sb2, "import os\nprint(os.listdir('/scratch'))").await;
    assert_eq!(
        second.stdout.trim(),
        "[]",
        "nothing survives into the next call"
    );
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "scratch deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_is_truncated_and_marked() {
    let sb = sandbox(0);
    let mut req = RunRequest::new(Program::Python(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n".into(),
    ));
    req.limits.output_bytes = 10_000;
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Limit);
    assert_eq!(r.limit, Some(LimitKind::Output));
    assert!(r.stdout.starts_with(&"x".repeat(10_000)));
    assert!(
        r.stdout.ends_with("[output truncated at 10000 bytes]"),
        "{}",
        &r.stdout[9_990..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_and_requests_get_typed_errors() {
    let sb = sandbox(0);
    let bad = |bytes: &[u8], invoke: Option<&str>| {
        RunRequest::new(Program::Wasm {
            module: Arc::new(bytes.to_vec()),
            invoke: invoke.map(str::to_string),
        })
    };
    assert!(matches!(
        sb.run(bad(b"\0asm\x01\0\0\0garbage", None)).await,
        Err(SandboxError::Module(_))
    ));
    assert!(matches!(
        sb.run(bad(br#"(module (import "env" "evil" (func)))"#, None))
            .await,
        Err(SandboxError::Module(_))
    ));
    assert!(matches!(
        sb.run(bad(b"(module)", Some("nope"))).await,
        Err(SandboxError::NoSuchExport(_))
    ));
    let mut req = bad(
        br#"(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"#,
        Some("add"),
    );
    req.args = vec!["2".into(), "x".into()];
    assert!(matches!(
        sb.run(req.clone()).await,
        Err(SandboxError::Arguments { .. })
    ));
    req.args = vec!["2".into(), "40".into()];
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(r.results, vec![serde_json::json!(42)]);

    let mut req = RunRequest::new(Program::Python("print(1)".into()));
    req.limits.memory_bytes = 8 << 30;
    assert!(matches!(sb.run(req).await, Err(SandboxError::Refused(_))));
    let mut req = RunRequest::new(Program::Python("print(1)".into()));
    req.mounts
        .push(Mount::parse("/nonexistent-dir:/data:ro").unwrap());
    assert!(matches!(sb.run(req).await, Err(SandboxError::Files(_))));
    assert!(Mount::parse("/tmp:/data:rw").is_err());
    let mut req = RunRequest::new(Program::Python("print(1)".into()));
    req.files.push(("../escape.txt".into(), b"x".to_vec()));
    assert!(matches!(sb.run(req).await, Err(SandboxError::Refused(_))));

    // A guest failure is a report, not an error.
    let r = python(&sb, "raise ValueError('bad data')").await;
    assert_eq!(r.status, RunStatus::GuestError);
    assert_eq!(r.exit_code, Some(1));
    assert!(r.stderr.contains("ValueError: bad data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_python_starts_run_each_script_on_a_fresh_interpreter() {
    let sb = sandbox(1);
    sb.warm_up();
    let mut warm = 0;
    for i in 0..4 {
        // Each script tries to leave something behind for the next one.
        let r = python(
            &sb,
            &format!(
                "import builtins, sys\nprint(getattr(builtins, 'planted', None))\nbuiltins.planted = {i}\nsys.modules['json'] = None\nprint(sys.stdin.read())"
            ),
        )
        .await;
        assert_eq!(r.status, RunStatus::Ok, "{}", r.stderr);
        assert!(
            r.stdout.starts_with("None\n"),
            "call {i} saw a planted value: {}",
            r.stdout
        );
        warm += usize::from(r.warm);
        // Wait for the replacement to be ready, as a steady stream of calls would.
        for _ in 0..100 {
            if sb.warm_ready() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(warm >= 3, "warm starts: {warm}");

    // Limits hold on a warm start too, and stdin reaches the script.
    let mut req = RunRequest::new(Program::Python(
        "import sys\nprint(sys.stdin.read().upper())".into(),
    ));
    req.stdin = b"quarterly report".to_vec();
    let r = run(&sb, req).await;
    assert_eq!(r.stdout, "QUARTERLY REPORT\n");
    for _ in 0..100 {
        if sb.warm_ready() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut req = RunRequest::new(Program::Python("while True:\n    pass\n".into()));
    req.limits = Limits::default();
    req.limits.timeout = Duration::from_secs(3);
    let r = run(&sb, req).await;
    assert_eq!(r.limit, Some(LimitKind::Timeout));
    assert!(r.warm);
}
