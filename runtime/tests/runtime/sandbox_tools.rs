//! Sandboxed tools behind the gate: a worker pool per tool that a flooding agent
//! cannot monopolize, and host functions that exist only where the token grants
//! them and go through the gate with their own arguments.

use std::sync::Arc;
use std::time::Duration;

use bulwark_capabilities::{ArgValue, Attenuation, Constraint, ConstraintValue, KeyPair, Op, Tier};
use bulwark_runtime::sandbox::{
    Limits, PoolConfig, Program, SandboxTool, ScriptLanguage, ToolCode, http_get_tool,
};
use bulwark_runtime::{AgentSpec, ScriptedBrain, ToolManifest};
use serde_json::json;

use crate::Harness;
use crate::sandbox::sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_cannot_starve_the_others() {
    let h = Harness::new().await;
    let limits = Limits {
        timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let tool = python_tool()
        .limits(limits)
        .pool(PoolConfig {
            workers: 4,
            per_agent: 8,
        })
        .into_tool(ToolManifest::new("run_python", "Runs a Python script").tier(Tier::Auto));
    h.rt.tools().register(tool).unwrap();
    let grant = [("run_python", Tier::Auto)];
    let hostile = h
        .agent(
            "flooder",
            &grant,
            "10",
            Arc::new(ScriptedBrain::new(vec![])),
        )
        .await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(
            h.agent(
                &format!("analyst-{i}"),
                &grant,
                "10",
                Arc::new(ScriptedBrain::new(vec![])),
            )
            .await,
        );
    }

    // 80 hostile calls that spin until their deadline, 20 honest ones, all at once.
    let mut flood = Vec::new();
    for _ in 0..80 {
        let a = hostile.clone();
        flood.push(tokio::spawn(async move {
            a.call_tool("run_python", json!({"code": "while True:\n    pass\n"}))
                .await
        }));
    }
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
        let out = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("an honest call finishes despite the flood")
            .unwrap()
            .unwrap();
        assert_eq!(out.value["status"], "ok", "{}", out.value);
        let (i, j) = (n / 5, n % 5);
        assert_eq!(out.value["stdout"], json!(i * 10 + j));
    }
    let mut refused = 0;
    let mut stopped = 0;
    for call in flood {
        match call.await.unwrap() {
            Ok(out) => {
                assert_eq!(out.value["limit"], "timeout", "{}", out.value);
                stopped += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("busy"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(stopped + refused, 80);
    assert!(
        refused >= 60,
        "the flood is bounded per agent: {refused} refused"
    );
    assert!(stopped >= 8, "{stopped}");
}

/// A tool that runs the agent's Python script (argument `code`).
fn python_tool() -> SandboxTool {
    SandboxTool::new(
        sandbox(0),
        ToolCode::Script {
            language: ScriptLanguage::Python,
            code_arg: "code".into(),
            files_arg: None,
        },
    )
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
    format!(
        r#"(module
  (import "bulwark" "http_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{url}")
  (func (export "_start")
    (local $n i32)
    (local.set $n (call $get (i32.const 64) (i32.const {len}) (i32.const 1024) (i32.const 4096)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (call $exit (i32.sub (i32.const 0) (local.get $n)))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = url.len()
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
        .host_gate(h.rt.host_gate())
        .into_tool(ToolManifest::new(name, "Fetches a report").tier(Tier::Auto));
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
            ..Limits::default()
        })
        .into_tool(ToolManifest::new("run_python", "Runs a Python script").tier(Tier::Auto));
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
        .mount(bulwark_runtime::sandbox::Mount {
            host: data.path().to_path_buf(),
            guest: "/data".into(),
        })
        .into_tool(ToolManifest::new("run_python", "Runs a Python script").tier(Tier::Auto));
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
