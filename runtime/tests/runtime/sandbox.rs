//! The sandbox against real wasmtime and the real CPython and QuickJS WASI builds:
//! each attack is tried and asserted to fail, each allowed path asserted to work.
//!
//! Honest calls get a generous deadline ([`HONEST`]): a busy machine may take seconds
//! to start an interpreter, and a test must not fail for that. Limits under test are
//! hit by what the guest does (fuel, memory, output, disk), or, for the deadline
//! itself, by a loop that never ends.

use std::sync::Arc;
use std::time::Duration;

use bulwark_runtime::sandbox::{
    LimitKind, Limits, Mount, Program, RunReport, RunRequest, RunStatus, Sandbox, SandboxConfig,
    SandboxError,
};

/// The deadline of calls that are expected to finish.
pub const HONEST: Duration = Duration::from_secs(120);

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

/// A request with the generous deadline of honest calls.
fn request(program: Program) -> RunRequest {
    let mut req = RunRequest::new(program);
    req.limits.timeout = HONEST;
    req
}

async fn python(sb: &Arc<Sandbox>, source: &str) -> RunReport {
    run(sb, request(Program::Python(source.into()))).await
}

/// Waits (bounded, generously) until a pre-started interpreter is ready.
async fn wait_warm(sb: &Arc<Sandbox>) {
    for _ in 0..1200 {
        if sb.warm_ready() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no pre-started interpreter became ready in 120 s");
}

/// A Python call with the default limits (those of the warm pool).
async fn python_default(sb: &Arc<Sandbox>, source: &str) -> RunReport {
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
    let mut req = request(Program::Python(
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
    let mut req = request(Program::JavaScript(
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
    let mut req = request(Program::Python("while True:\n    pass\n".into()));
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
    let mut req = request(looping);
    req.limits.timeout = Duration::from_millis(100);
    assert_eq!(run(&sb, req).await.limit, Some(LimitKind::Timeout));
    let ok = python(&sb, "print('next')").await;
    assert_eq!(ok.status, RunStatus::Ok);
    assert_eq!(ok.stdout, "next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_fuel_bombs_stop_at_their_limits() {
    let sb = sandbox(0);
    let mut req = request(Program::Python(
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
    let mut req = request(grow);
    req.limits.memory_bytes = 16 << 20;
    let r = run(&sb, req).await;
    assert_eq!(r.results, vec![serde_json::json!(-1)], "growth refused");

    let mut req = request(Program::Python("print(sum(range(10**9)))".into()));
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
    let mut req = request(Program::Python(attempts.into()));
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
    let mut req = request(Program::Python(
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
        request(Program::Wasm {
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

    let mut req = request(Program::Python("print(1)".into()));
    req.limits.memory_bytes = 8 << 30;
    assert!(matches!(sb.run(req).await, Err(SandboxError::Refused(_))));
    let mut req = request(Program::Python("print(1)".into()));
    req.mounts
        .push(Mount::parse("/nonexistent-dir:/data:ro").unwrap());
    assert!(matches!(sb.run(req).await, Err(SandboxError::Files(_))));
    assert!(Mount::parse("/tmp:/data:rw").is_err());
    let mut req = request(Program::Python("print(1)".into()));
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
    // Ready before the first call: a call's deadline starts when it is handed over.
    wait_warm(&sb).await;
    let mut warm = 0;
    for i in 0..4 {
        // Each script tries to leave something behind for the next one.
        let r = python_default(
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
        wait_warm(&sb).await;
    }
    assert!(warm >= 3, "warm starts: {warm}");

    // Limits hold on a warm start too, and stdin reaches the script.
    let mut req = RunRequest::new(Program::Python(
        "import sys\nprint(sys.stdin.read().upper())".into(),
    ));
    req.stdin = b"quarterly report".to_vec();
    let r = run(&sb, req).await;
    assert_eq!(r.stdout, "QUARTERLY REPORT\n");
    wait_warm(&sb).await;
    let mut req = RunRequest::new(Program::Python("while True:\n    pass\n".into()));
    req.limits = Limits::default();
    req.limits.timeout = Duration::from_secs(3);
    let r = run(&sb, req).await;
    assert_eq!(r.limit, Some(LimitKind::Timeout));
    assert!(r.warm);
}

/// A Python call with a generous deadline and the given disk limits.
async fn python_disk(sb: &Arc<Sandbox>, source: &str, bytes: u64, files: u64) -> RunReport {
    let mut req = request(Program::Python(source.into()));
    req.limits.disk_bytes = bytes;
    req.limits.disk_files = files;
    run(sb, req).await
}

/// The last number a script printed, one per line as it went.
fn last_progress(r: &RunReport) -> u64 {
    r.stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_flood_in_scratch_stops_at_the_disk_limit_before_it_is_written() {
    let sb = sandbox(0);
    // 512 MiB in 1 MiB writes, each followed by its running count.
    let flood = r#"
import os
block = b"x" * (1 << 20)
with open("/scratch/flood.bin", "wb", buffering=0) as f:
    for i in range(512):
        f.write(block)
        print(i + 1, flush=True)
print("WROTE IT ALL")
"#;
    let r = python_disk(&sb, flood, 16 << 20, 1024).await;
    assert_eq!(r.status, RunStatus::Limit, "{r:?}");
    assert_eq!(r.limit, Some(LimitKind::Disk), "{r:?}");
    assert_eq!(r.reason().split(':').next(), Some("disk"));
    assert!(!r.stdout.contains("WROTE IT ALL"));
    // Stopped at the limit, not after the fact: at most 16 of the 512 writes ran.
    let written = last_progress(&r);
    assert!((15..=16).contains(&written), "{written} MiB written");

    // The default limit (64 MiB) stops it too.
    let mut req = request(Program::Python(flood.into()));
    req.limits = Limits {
        timeout: HONEST,
        ..Limits::default()
    };
    let r = run(&sb, req).await;
    assert_eq!(r.limit, Some(LimitKind::Disk), "{r:?}");
    assert!(last_progress(&r) <= 64, "{}", last_progress(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_writes_truncation_and_many_files_or_directories_cannot_pass_the_disk_limit() {
    let sb = sandbox(0);
    let attacks = [
        // A write 1 GiB past the end of a file: a sparse file of 1 GiB.
        (
            "seek",
            "f = open('/scratch/s.bin', 'wb')\nf.seek(1 << 30)\nf.write(b'x')\nf.close()\nprint('DONE')",
        ),
        // The same with an explicit offset.
        (
            "pwrite",
            "import os\nfd = os.open('/scratch/p.bin', os.O_WRONLY | os.O_CREAT)\nos.pwrite(fd, b'x', 1 << 30)\nprint('DONE')",
        ),
        // Growing a file by setting its length.
        (
            "truncate",
            "f = open('/scratch/t.bin', 'wb')\nf.truncate(1 << 30)\nf.close()\nprint('DONE')",
        ),
        (
            "ftruncate",
            "import os\nfd = os.open('/scratch/u.bin', os.O_WRONLY | os.O_CREAT)\nos.ftruncate(fd, 1 << 40)\nprint('DONE')",
        ),
        // Appending past the limit, a little at a time.
        (
            "append",
            "for i in range(100):\n    with open('/scratch/a.log', 'ab') as f:\n        f.write(b'y' * 65536)\n    print(i + 1, flush=True)\nprint('DONE')",
        ),
        // Many small files, each well under the byte limit.
        (
            "files",
            "for i in range(100000):\n    open(f'/scratch/f{i}', 'w').write('z')\n    print(i + 1, flush=True)\nprint('DONE')",
        ),
        // Many directories, nested and flat.
        (
            "dirs",
            "import os\nfor i in range(100000):\n    os.makedirs(f'/scratch/d{i % 10}/e{i}')\n    print(i + 1, flush=True)\nprint('DONE')",
        ),
        // Links count as entries too.
        (
            "symlinks",
            "import os\nfor i in range(100000):\n    os.symlink('x', f'/scratch/l{i}')\n    print(i + 1, flush=True)\nprint('DONE')",
        ),
    ];
    for (name, source) in attacks {
        let r = python_disk(&sb, source, 4 << 20, 64).await;
        assert_eq!(r.limit, Some(LimitKind::Disk), "{name}: {r:?}");
        assert!(!r.stdout.contains("DONE"), "{name}: {}", r.stdout);
        let progress = last_progress(&r);
        match name {
            "append" => assert!(progress <= 64, "{name}: {progress}"),
            "files" | "symlinks" => assert!(progress <= 64, "{name}: {progress}"),
            // Each makedirs of a new parent adds two entries.
            "dirs" => assert!(progress <= 63, "{name}: {progress}"),
            _ => assert_eq!(progress, 0, "{name}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_scratch_use_fits_the_disk_limit_and_deleting_gives_room_back() {
    let sb = sandbox(0);
    // 3 MiB at a time in a 4 MiB limit, deleting in between; overwriting in place,
    // and a file shrunk by truncation, do not grow; 60 files in a limit of 64.
    let honest = r#"
import os
for round in range(5):
    with open("/scratch/part.bin", "wb") as f:
        for _ in range(3):
            f.write(b"d" * (1 << 20))
    os.remove("/scratch/part.bin")
with open("/scratch/same.bin", "wb") as f:
    f.write(b"a" * (3 << 20))
for _ in range(20):
    with open("/scratch/same.bin", "r+b") as f:
        f.seek(0)
        f.write(b"b" * (3 << 20))
with open("/scratch/same.bin", "r+b") as f:
    f.truncate(1 << 20)
with open("/scratch/more.bin", "wb") as f:
    f.write(b"c" * (2 << 20))
os.mkdir("/scratch/out")
for i in range(57):
    open(f"/scratch/out/{i}.txt", "w").write(str(i))
print(len(os.listdir("/scratch/out")), os.path.getsize("/scratch/same.bin"))
"#;
    let mut req = request(Program::Python(honest.into()));
    req.limits.disk_bytes = 4 << 20;
    req.limits.disk_files = 64;
    req.files.push(("input.csv".into(), b"a,b\n1,2\n".to_vec()));
    let r = run(&sb, req).await;
    assert_eq!(r.status, RunStatus::Ok, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), format!("57 {}", 1 << 20));

    // Files placed for the call count, and a call whose files do not fit is refused
    // before anything runs.
    let mut req = request(Program::Python("print(1)".into()));
    req.limits.disk_bytes = 1 << 20;
    req.files.push(("big.csv".into(), vec![b'x'; 2 << 20]));
    match sb.run(req).await {
        Err(SandboxError::Refused(why)) => assert!(why.starts_with("disk:"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut req = request(Program::Python("print(1)".into()));
    req.limits.disk_files = 2;
    for i in 0..3 {
        req.files.push((format!("f{i}.txt"), b"x".to_vec()));
    }
    assert!(matches!(sb.run(req).await, Err(SandboxError::Refused(_))));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_cache_others_can_write_is_refused_and_a_private_one_is_used() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let config = |dir: &std::path::Path| SandboxConfig {
        cache_dir: Some(dir.to_path_buf()),
        max_instances: 4,
        ..SandboxConfig::default()
    };
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let refused = |dir: &std::path::Path, at: &std::path::Path| match Sandbox::new(config(dir)) {
        Err(e @ SandboxError::UnsafeCache { .. }) => {
            let SandboxError::UnsafeCache { path, .. } = &e else {
                unreachable!()
            };
            let at = std::fs::canonicalize(at.parent().unwrap())
                .unwrap()
                .join(at.file_name().unwrap());
            assert_eq!(path, &at, "{e}");
            assert!(e.to_string().contains("Fix:"), "{e}");
            e.to_string()
        }
        other => panic!("{} was accepted: {other:?}", dir.display()),
    };

    // A world-writable cache directory: anyone could plant native code in it.
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let why = refused(&open, &open);
    assert!(why.contains("chmod 700"), "{why}");

    // A private one works, and compiled modules land in it.
    let private = base.path().join("private");
    std::fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    let sb = Sandbox::new(config(&private)).expect("a private cache is used");
    let mut req = request(Program::Wasm {
        module: Arc::new(
            br#"(module (func (export "answer") (result i32) i32.const 42))"#.to_vec(),
        ),
        invoke: Some("answer".into()),
    });
    req.args = Vec::new();
    let r = run(&sb, req).await;
    assert_eq!(r.results, vec![serde_json::json!(42)]);
    drop(sb);

    // A directory the sandbox creates is private.
    let fresh = base.path().join("fresh/cache");
    Sandbox::new(config(&fresh)).expect("a fresh cache is made private");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    // A file inside a readable cache that others could write is refused.
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o755);
    let planted = shared.join("module.bin");
    std::fs::write(&planted, b"not really a module").unwrap();
    chmod(&planted, 0o666);
    refused(&shared, &planted);
    chmod(&planted, 0o644);
    Sandbox::new(config(&shared)).expect("the same cache, with private files");

    // A link inside the cache is refused (its target could be anyone's).
    std::os::unix::fs::symlink("/etc/passwd", shared.join("link")).unwrap();
    refused(&shared, &shared.join("link"));

    // A directory above the cache that others can write (without the sticky bit)
    // would let them swap the cache for their own.
    let parent = base.path().join("parent");
    std::fs::create_dir_all(parent.join("cache")).unwrap();
    chmod(&parent.join("cache"), 0o700);
    chmod(&parent, 0o777);
    refused(&parent.join("cache"), &parent);
    // With the sticky bit (as /tmp has), others cannot rename what is not theirs.
    chmod(&parent, 0o1777);
    Sandbox::new(config(&parent.join("cache"))).expect("a sticky parent is fine");
}
