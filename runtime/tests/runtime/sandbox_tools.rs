//! Sandboxed tools behind the gate: a worker pool per tool that a flooding agent
//! cannot monopolize, and host functions that exist only where the token grants
//! them and go through the gate with their own arguments.

use std::sync::Arc;
use std::time::Duration;

use bulwark_capabilities::{ArgValue, Attenuation, Constraint, ConstraintValue, KeyPair, Op, Tier};
use bulwark_runtime::sandbox::{
    Limits, Mount, PoolConfig, Program, SandboxTool, ScriptLanguage, ToolCode, http_get_tool,
};
use bulwark_runtime::{AgentSpec, ScriptedBrain, ToolManifest};
use serde_json::json;

use crate::Harness;
use crate::sandbox::{HONEST, sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_cannot_starve_the_others() {
    // The flooder's scripts hold their places until the test releases them, so the
    // outcome depends on the scheduling rule alone, not on how fast the machine is.
    let h = Harness::new().await;
    let ctl = tempfile::tempdir().unwrap();
    let tool = python_tool()
        .host_gate(h.rt.host_gate())
        .mount(Mount {
            host: ctl.path().to_path_buf(),
            guest: "/ctl".into(),
        })
        .pool(PoolConfig {
            workers: 4,
            per_agent: 8,
        })
        .into_tool(manifest("run_python"));
    h.rt.tools().register(tool).unwrap();
    let hostile = h
        .agent(
            "flooder",
            &[("run_python", Tier::Auto), ("mount:/ctl", Tier::Auto)],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(
            h.agent(
                &format!("analyst-{i}"),
                &[("run_python", Tier::Auto)],
                "10",
                Arc::new(ScriptedBrain::new(vec![])),
            )
            .await,
        );
    }

    // 80 calls at once, each waiting for the release.
    let hold = "import os, time\nwhile not os.path.exists('/ctl/release'):\n    time.sleep(0.02)\nprint('released')\n";
    let mut flood = Vec::new();
    for _ in 0..80 {
        let a = hostile.clone();
        flood.push(tokio::spawn(async move {
            a.call_tool("run_python", json!({"code": hold})).await
        }));
    }
    // All but its 8 places are refused at once.
    let refused = wait_until(|| flood.iter().filter(|c| c.is_finished()).count() >= 72).await;
    assert!(
        refused,
        "the calls beyond the flooder's places were not refused"
    );
    let (done, held): (Vec<_>, Vec<_>) = flood.into_iter().partition(|c| c.is_finished());
    assert_eq!((done.len(), held.len()), (72, 8));
    for call in done {
        let e = call.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
    }

    // With the flood holding all it may, every honest call still runs.
    let mut honest = Vec::new();
    for (i, a) in others.iter().enumerate() {
        for j in 0..5 {
            let a = a.clone();
            honest.push(tokio::spawn(async move {
                a.call_tool(
                    "run_python",
                    json!({"code": format!("print({i} * 10 + {j})")}),
                )
                .await
            }));
        }
    }
    for (n, call) in honest.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(300), call)
            .await
            .expect("an honest call finishes despite the flood")
            .unwrap()
            .unwrap();
        assert_eq!(out.value["status"], "ok", "{}", out.value);
        let (i, j) = (n / 5, n % 5);
        assert_eq!(out.value["stdout"], json!(i * 10 + j));
    }
    assert!(
        held.iter().all(|c| !c.is_finished()),
        "the flood was still holding its places"
    );

    // Released, the flooder's own calls finish too.
    std::fs::write(ctl.path().join("release"), "").unwrap();
    for call in held {
        let out = tokio::time::timeout(Duration::from_secs(300), call)
            .await
            .expect("a released call finishes")
            .unwrap()
            .unwrap();
        assert_eq!(out.value["stdout"], "released\n", "{}", out.value);
    }
}

/// Waits (bounded, generously) for `done`.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..3000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// A manifest for a sandboxed test tool: AUTO, with a timeout that leaves room for
/// waiting in the pool on a busy machine.
fn manifest(name: &str) -> ToolManifest {
    ToolManifest::new(name, "Runs code in the sandbox")
        .tier(Tier::Auto)
        .timeout(Duration::from_secs(600))
}

/// A tool that runs the agent's Python script (argument `code`), with the generous
/// deadline of honest calls.
fn python_tool() -> SandboxTool {
    SandboxTool::new(
        sandbox(0),
        ToolCode::Script {
            language: ScriptLanguage::Python,
            code_arg: "code".into(),
            files_arg: None,
        },
    )
    .limits(honest_limits())
}

fn honest_limits() -> Limits {
    Limits {
        timeout: HONEST,
        ..Limits::default()
    }
}

async fn http_server() -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new()
        .route(
            "/allowed/sales",
            axum::routing::get(|| async { "sales: 42" }),
        )
        .route(
            "/private/keys",
            axum::routing::get(|| async { "root password" }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

/// A WASI command that fetches `url` through the host function and prints the body;
/// a negative host result becomes its exit code.
fn fetcher(url: &str) -> Vec<u8> {
    host_caller("http_get", url)
}

/// A WASI command that calls host function `import` with `arg` and prints the
/// result; a negative host result becomes its exit code.
fn host_caller(import: &str, arg: &str) -> Vec<u8> {
    format!(
        r#"(module
  (import "bulwark" "{import}" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{arg}")
  (func (export "_start")
    (local $n i32)
    (local.set $n (call $get (i32.const 64) (i32.const {len}) (i32.const 1024) (i32.const 4096)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (call $exit (i32.sub (i32.const 0) (local.get $n)))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = arg.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_functions_exist_only_where_granted_and_go_through_the_gate() {
    let h = Harness::new().await;
    let (base, _server) = http_server().await;
    h.rt.tools().register(http_get_tool(1 << 20)).unwrap();
    let sb = sandbox(0);
    for (name, url) in [
        ("fetch_sales", format!("{base}/allowed/sales")),
        ("fetch_keys", format!("{base}/private/keys")),
    ] {
        let tool = SandboxTool::new(
            sb.clone(),
            ToolCode::Fixed(Program::Wasm {
                module: Arc::new(fetcher(&url)),
                invoke: None,
            }),
        )
        .limits(honest_limits())
        .host_gate(h.rt.host_gate())
        .into_tool(manifest(name));
        h.rt.tools().register(tool).unwrap();
    }

    // The parent may fetch anything; its child only under /allowed/.
    let parent = h
        .agent(
            "reporter",
            &[
                ("fetch_sales", Tier::Auto),
                ("fetch_keys", Tier::Auto),
                ("http_get", Tier::Auto),
            ],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let spec = AgentSpec::new("reporter-child");
    let narrow = Attenuation::new("reporter-child", spec.key.public()).require(
        Constraint::new(
            "http_get",
            "url",
            Op::StartsWith,
            ConstraintValue::One(ArgValue::Str(format!("{base}/allowed/"))),
        )
        .unwrap(),
    );
    let child = parent
        .spawn_child(spec, narrow, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();

    let out = child.call_tool("fetch_sales", json!({})).await.unwrap();
    assert_eq!(out.value["status"], "ok", "{}", out.value);
    assert_eq!(out.value["stdout"], "sales: 42");
    // The same host function with a URL the token does not allow: refused by the gate.
    let out = child.call_tool("fetch_keys", json!({})).await.unwrap();
    assert_eq!(
        out.value["exit_code"], 1,
        "DENIED (-1) became exit 1: {}",
        out.value
    );
    assert!(!out.value["stdout"].to_string().contains("root password"));
    // The parent's token allows it.
    let out = parent.call_tool("fetch_keys", json!({})).await.unwrap();
    assert_eq!(out.value["stdout"], "root password");

    // Each host call is an audited tool call; the refused one names the constraint.
    let entries = h.rt.audit_tail(200).await.unwrap();
    assert!(entries.iter().any(|e| e.record.kind == "tool.denied"
        && e.record.agent == "reporter-child"
        && e.record.detail.to_string().contains("http_get")));

    // A token without http_get: the import does not exist, so the module does not load.
    let key = KeyPair::generate();
    let spec = AgentSpec::with_key("no-network", key);
    let token = h.token(
        &spec.key,
        "no-network",
        &[("fetch_sales", Tier::Auto)],
        "10",
    );
    let plain =
        h.rt.spawn_agent(spec, token, Arc::new(ScriptedBrain::new(vec![])))
            .await
            .unwrap();
    let err = plain.call_tool("fetch_sales", json!({})).await.unwrap_err();
    assert!(
        err.to_string().contains("does not load") && err.to_string().contains("http_get"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_can_only_tighten_a_sandboxed_tools_limits() {
    let h = Harness::new().await;
    let tool = python_tool()
        .limits(Limits {
            memory_bytes: 128 << 20,
            ..honest_limits()
        })
        .into_tool(manifest("run_python"));
    h.rt.tools().register(tool).unwrap();
    let parent = h
        .agent(
            "analyst",
            &[("run_python", Tier::Auto)],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let spec = AgentSpec::new("intern");
    let narrow = Attenuation::new("intern", spec.key.public()).sandbox_limit(
        "run_python",
        "memory_bytes",
        32 << 20,
    );
    let child = parent
        .spawn_child(spec, narrow, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();
    let spec = AgentSpec::new("intern-sub");
    // Asking for more than the parent's cap does not widen it.
    let wider = Attenuation::new("intern-sub", spec.key.public()).sandbox_limit(
        "run_python",
        "memory_bytes",
        1 << 30,
    );
    let grandchild = child
        .spawn_child(spec, wider, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();
    let script = json!({"code": "data = bytearray(48 << 20)\nprint(len(data))"});
    let out = parent
        .call_tool("run_python", script.clone())
        .await
        .unwrap();
    assert_eq!(out.value["status"], "ok", "{}", out.value);
    assert_eq!(out.value["stdout"], 48 << 20);
    for narrowed in [&child, &grandchild] {
        let out = narrowed
            .call_tool("run_python", script.clone())
            .await
            .unwrap();
        assert_eq!(out.value["limit"], "memory", "{}", out.value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_mount_is_visible_only_where_the_token_grants_it() {
    let h = Harness::new().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("prices.csv"), "sku,price\nA-1,12\n").unwrap();
    let tool = python_tool()
        .host_gate(h.rt.host_gate())
        .mount(Mount {
            host: data.path().to_path_buf(),
            guest: "/data".into(),
        })
        .into_tool(manifest("run_python"));
    h.rt.tools().register(tool).unwrap();
    let granted = h
        .agent(
            "pricing",
            &[("run_python", Tier::Auto), ("mount:/data", Tier::Auto)],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let plain = h
        .agent(
            "intern",
            &[("run_python", Tier::Auto)],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let read = json!({"code": "print(open('/data/prices.csv').read().splitlines()[1])"});
    let out = granted.call_tool("run_python", read.clone()).await.unwrap();
    assert_eq!(out.value["stdout"], "A-1,12\n", "{}", out.value);
    let write = json!({"code": "open('/data/prices.csv', 'w').write('A-1,0')"});
    let out = granted.call_tool("run_python", write).await.unwrap();
    assert_eq!(out.value["status"], "guest_error", "{}", out.value);
    assert_eq!(
        std::fs::read_to_string(data.path().join("prices.csv")).unwrap(),
        "sku,price\nA-1,12\n"
    );
    let out = plain.call_tool("run_python", read).await.unwrap();
    assert_eq!(out.value["status"], "guest_error", "{}", out.value);
    assert!(
        out.value["stderr"]
            .as_str()
            .unwrap()
            .contains("FileNotFoundError"),
        "{}",
        out.value
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_granted_at_block_or_an_approval_tier_mounts_nothing() {
    let h = Harness::new().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("prices.csv"), "sku,price\nA-1,12\n").unwrap();
    let tool = python_tool()
        .host_gate(h.rt.host_gate())
        .mount(Mount {
            host: data.path().to_path_buf(),
            guest: "/data".into(),
        })
        .into_tool(manifest("run_python"));
    h.rt.tools().register(tool).unwrap();
    let read = json!({"code": "import os\nprint(os.path.exists('/data/prices.csv'))"});
    let sees = |out: &bulwark_runtime::CallResult| {
        assert_eq!(out.value["status"], "ok", "{}", out.value);
        out.value["stdout"] == "True\n"
    };
    for (k, (tier, mounted)) in [
        (Tier::Auto, true),
        (Tier::AutoPlus, true),
        (Tier::Propose, false),
        (Tier::Confirm, false),
        (Tier::Block, false),
    ]
    .into_iter()
    .enumerate()
    {
        let agent = h
            .agent(
                &format!("agent-{k}"),
                &[("run_python", Tier::Auto), ("mount:/data", tier)],
                "10",
                Arc::new(ScriptedBrain::new(vec![])),
            )
            .await;
        let out = agent.call_tool("run_python", read.clone()).await.unwrap();
        assert_eq!(sees(&out), mounted, "mount:/data at {tier}: {}", out.value);
    }

    // A parent granted the mount at AUTO delegates it at BLOCK: the child sees nothing.
    let parent = h
        .agent(
            "pricing",
            &[("run_python", Tier::Auto), ("mount:/data", Tier::Auto)],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let spec = AgentSpec::new("pricing-child");
    let blocked =
        Attenuation::new("pricing-child", spec.key.public()).tier("mount:/data", Tier::Block);
    let child = parent
        .spawn_child(spec, blocked, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();
    let out = child.call_tool("run_python", read.clone()).await.unwrap();
    assert!(!sees(&out), "{}", out.value);
    let out = parent.call_tool("run_python", read).await.unwrap();
    assert!(sees(&out), "{}", out.value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_can_tighten_the_scratch_disk_limit() {
    let h = Harness::new().await;
    let tool = python_tool().into_tool(manifest("run_python"));
    h.rt.tools().register(tool).unwrap();
    let parent = h
        .agent(
            "analyst",
            &[("run_python", Tier::Auto)],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let spec = AgentSpec::new("intern");
    let narrow = Attenuation::new("intern", spec.key.public())
        .sandbox_limit("run_python", "disk_bytes", 4 << 20)
        .sandbox_limit("run_python", "disk_files", 10);
    let child = parent
        .spawn_child(spec, narrow, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();
    let spec = AgentSpec::new("intern-sub");
    let wider = Attenuation::new("intern-sub", spec.key.public())
        .sandbox_limit("run_python", "disk_bytes", 1 << 30)
        .sandbox_limit("run_python", "disk_files", 100_000);
    let grandchild = child
        .spawn_child(spec, wider, Arc::new(ScriptedBrain::new(vec![])))
        .await
        .unwrap();
    let big = json!({"code": "open('/scratch/a.bin', 'wb').write(b'x' * (8 << 20))\nprint('ok')"});
    let many = json!({"code": "for i in range(20):\n    open(f'/scratch/{i}', 'w').write('x')\nprint('ok')"});
    for script in [&big, &many] {
        let out = parent
            .call_tool("run_python", script.clone())
            .await
            .unwrap();
        assert_eq!(out.value["status"], "ok", "{}", out.value);
        for narrowed in [&child, &grandchild] {
            let out = narrowed
                .call_tool("run_python", script.clone())
                .await
                .unwrap();
            assert_eq!(out.value["limit"], "disk", "{}", out.value);
            assert!(
                out.value["reason"].as_str().unwrap().starts_with("disk:"),
                "{}",
                out.value
            );
        }
    }
}

/// A harness whose runtime has an approval path, so that PROPOSE and CONFIRM wait
/// for the watchdog and an operator.
async fn harness_with_approvals() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = bulwark_capabilities::KeyPair::generate();
    let clock = Arc::new(bulwark_runtime::ManualClock::new(crate::t0()));
    let operator = bulwark_capabilities::KeyPair::generate();
    let rt = bulwark_runtime::Runtime::builder()
        .data_dir(dir.path())
        .root_public_key(root.public())
        .clock(clock.clone())
        .approvals(bulwark_runtime::ApprovalConfig::new(vec![
            operator.public(),
        ]))
        .build()
        .await
        .unwrap();
    crate::register_tools(&rt);
    Harness {
        dir,
        root,
        clock,
        rt,
    }
}

/// A sandboxed tool running a module that calls host function `import` with `arg`.
fn host_calling_tool(h: &Harness, name: &str, import: &str, arg: &str, limits: Limits) {
    let tool = SandboxTool::new(
        sandbox(0),
        ToolCode::Fixed(Program::Wasm {
            module: Arc::new(host_caller(import, arg)),
            invoke: None,
        }),
    )
    .limits(limits)
    .host_gate(h.rt.host_gate())
    .into_tool(manifest(name));
    h.rt.tools().register(tool).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_that_needs_approval_is_refused_at_once() {
    let h = harness_with_approvals().await;
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for name in ["http_get", "read_secret"] {
        let ran = ran.clone();
        h.rt.tools()
            .register(bulwark_runtime::Tool::native(
                ToolManifest::new(name, "A tool behind the approval path")
                    .schema(json!({"type": "object"}))
                    .tier(Tier::Auto),
                move |_| {
                    ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async { Ok(bulwark_runtime::ToolOutput::new(json!("effect"))) }
                },
            ))
            .unwrap();
    }
    host_calling_tool(
        &h,
        "fetch",
        "http_get",
        "https://example.com/",
        honest_limits(),
    );
    host_calling_tool(&h, "peek", "read_secret", "db-password", honest_limits());
    // The token puts http_get at CONFIRM and read_secret at PROPOSE.
    let agent = h
        .agent(
            "reporter",
            &[
                ("fetch", Tier::Auto),
                ("peek", Tier::Auto),
                ("http_get", Tier::Confirm),
                ("read_secret", Tier::Propose),
            ],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    for tool in ["fetch", "peek"] {
        let out = tokio::time::timeout(Duration::from_secs(120), agent.call_tool(tool, json!({})))
            .await
            .expect("the call is refused at once, not left waiting for an approval")
            .unwrap();
        assert_eq!(out.value["exit_code"], 1, "DENIED: {}", out.value);
        assert!(!out.value["stdout"].to_string().contains("effect"));
    }
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(
        h.rt.proposals().unwrap().is_empty(),
        "no proposal was opened"
    );
    let entries = h.rt.audit_tail(100).await.unwrap();
    for tool in ["http_get", "read_secret"] {
        assert!(
            entries.iter().any(|e| e.record.kind == "tool.denied"
                && e.record.detail["tool"] == tool
                && e.record.detail["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("nested approvals are not supported"))),
            "{tool}: {entries:#?}"
        );
    }

    // Outside the sandbox, the same call still takes the approval path.
    let direct = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .call_tool("http_get", json!({"url": "https://example.com/"}))
                .await
        })
    };
    let opened = wait_until(|| h.rt.proposals().is_ok_and(|p| p.len() == 1)).await;
    assert!(opened, "a direct CONFIRM call opens a proposal");
    assert!(!direct.is_finished(), "and waits for the operator");
    direct.abort();
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_host_call_ends_at_the_sandboxed_calls_deadline() {
    let h = Harness::new().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    h.rt.tools()
        .register(bulwark_runtime::Tool::native(
            ToolManifest::new("http_get", "Never answers")
                .schema(json!({"type": "object"}))
                .tier(Tier::Auto)
                .timeout(Duration::from_secs(7200)),
            move |_| {
                let s = s.clone();
                async move {
                    s.notify_one();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(bulwark_runtime::ToolOutput::new(json!("late")))
                }
            },
        ))
        .unwrap();
    // The deadline under test: the sandboxed call's own, 2 s.
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    host_calling_tool(&h, "fetch", "http_get", "https://example.com/", limits);
    let agent = h
        .agent(
            "reporter",
            &[
                ("fetch", Tier::Auto),
                ("http_get", Tier::Auto),
                ("read_inbox", Tier::Auto),
            ],
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let call = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.call_tool("fetch", json!({})).await })
    };
    tokio::time::timeout(Duration::from_secs(120), started.notified())
        .await
        .expect("the host call reached its tool");
    // The runtime answers other calls meanwhile.
    let inbox = tokio::time::timeout(
        Duration::from_secs(120),
        agent.call_tool("read_inbox", json!({})),
    )
    .await
    .expect("the runtime stays responsive")
    .unwrap();
    assert_eq!(inbox.value, json!(["hello from bob"]));
    // The sandboxed call ends at its deadline (not at the host tool's hour).
    let out = tokio::time::timeout(Duration::from_secs(120), call)
        .await
        .expect("the sandboxed call ends near its deadline")
        .unwrap()
        .unwrap();
    assert_eq!(out.value["status"], "limit", "{}", out.value);
    assert_eq!(out.value["limit"], "timeout", "{}", out.value);
}
