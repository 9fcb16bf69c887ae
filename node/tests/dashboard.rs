//! The dashboard, in a real browser: headless Chromium, driven over WebDriver by
//! fantoccini, opens the login URL, loads the operator's key, signs an approval of a
//! pending CONFIRM proposal with WebCrypto Ed25519 over the hash it computes from the
//! arguments it shows, and the action runs exactly once. Plus the API's refusals
//! (token, Host, Origin) over plain HTTP, the webhook's redaction, and `/metrics`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulwark_capabilities::{KeyPair, MicroUsd, RootGrant, Tier, Token};
use bulwark_node::cluster::metrics::NodeMetrics;
use bulwark_node::dashboard::{DashboardConfig, DashboardError, serve, serve_with_metrics};
use bulwark_runtime::{
    AgentSpec, ApprovalConfig, BrainAction, ProposalState, Runtime, ScriptedBrain, Tool,
    ToolManifest, ToolOutput,
};
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

/// A chromedriver process, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn chromedriver() -> String {
    for path in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if std::path::Path::new(path).exists() {
            return path.to_string();
        }
    }
    panic!(
        "chromedriver is not installed: run ./scripts/test, which installs Debian's chromium and chromium-driver"
    );
}

struct World {
    rt: Runtime,
    root: KeyPair,
    operator: KeyPair,
    paid: Arc<AtomicUsize>,
    /// The arguments each payment ran with.
    paid_args: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    reminded: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with(|a| a).await
}

async fn world_with(approvals: impl FnOnce(ApprovalConfig) -> ApprovalConfig) -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .root_public_key(root.public())
        .approvals(approvals(ApprovalConfig::new(vec![operator.public()])))
        .build()
        .await
        .expect("runtime");
    let paid = Arc::new(AtomicUsize::new(0));
    let paid_args: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let (counter, record) = (paid.clone(), paid_args.clone());
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("pay_invoice", "Pays a supplier invoice").tier(Tier::Confirm),
            move |input| {
                let counter = counter.clone();
                record
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(input.args.clone());
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!("paid")))
                }
            },
        ))
        .expect("register");
    let reminded = Arc::new(AtomicUsize::new(0));
    let counter = reminded.clone();
    rt.tools()
        .register(Tool::native(
            ToolManifest::new("send_reminder", "Sends a payment reminder")
                .tier(Tier::Confirm)
                .batch_approval(),
            move |_| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!("sent")))
                }
            },
        ))
        .expect("register");
    World {
        rt,
        root,
        operator,
        paid,
        paid_args,
        reminded,
        _dir: dir,
    }
}

/// An accounts-payable agent whose step proposes a payment and waits for a person.
async fn start_payment(w: &World) -> tokio::task::JoinHandle<bulwark_runtime::Outcome> {
    start_payment_on(&w.rt, &w.root).await
}

async fn start_payment_on(
    rt: &Runtime,
    root: &KeyPair,
) -> tokio::task::JoinHandle<bulwark_runtime::Outcome> {
    start_payment_with(
        rt,
        root,
        json!({"invoice": "INV-2231", "iban": "DE89370400440532013000", "amount": 18_750}),
    )
    .await
}

async fn start_payment_with(
    rt: &Runtime,
    root: &KeyPair,
    args: serde_json::Value,
) -> tokio::task::JoinHandle<bulwark_runtime::Outcome> {
    let spec = AgentSpec::new("accounts-payable");
    let grant = RootGrant::new(
        "acme",
        "accounts-payable",
        spec.key.public(),
        MicroUsd::from_usd(10).expect("usd"),
        std::time::SystemTime::now() + Duration::from_secs(3600),
        2,
    )
    .tool("pay_invoice", Tier::Auto);
    let token = Token::mint(root, grant).expect("mint");
    let brain = Arc::new(ScriptedBrain::new(vec![
        BrainAction::CallTool {
            tool: "pay_invoice".into(),
            args,
        },
        BrainAction::Finish {
            answer: "paid".into(),
        },
    ]));
    let agent = rt.spawn_agent(spec, token, brain).await.expect("spawn");
    tokio::spawn(async move { agent.run("pay INV-2231").await.expect("run") })
}

/// A collections agent on whose behalf the program sends one reminder per customer;
/// each waits for a person. Returns the calls and the group they share.
async fn start_reminders(
    w: &World,
    customers: &[&str],
) -> (Vec<tokio::task::JoinHandle<()>>, String) {
    let spec = AgentSpec::new(format!("collector-{}", customers.join("-")));
    let grant = RootGrant::new(
        "acme",
        &spec.id,
        spec.key.public(),
        MicroUsd::from_usd(10).expect("usd"),
        std::time::SystemTime::now() + Duration::from_secs(3600),
        2,
    )
    .tool("send_reminder", Tier::Auto);
    let token = Token::mint(&w.root, grant).expect("mint");
    let agent =
        w.rt.spawn_agent(spec, token, Arc::new(ScriptedBrain::new(vec![])))
            .await
            .expect("spawn");
    let mut calls = Vec::new();
    for c in customers {
        let (agent, c) = (agent.clone(), c.to_string());
        calls.push(tokio::spawn(async move {
            agent
                .call_tool("send_reminder", json!({"customer": c}))
                .await
                .expect("the reminder is sent once approved");
        }));
    }
    for _ in 0..500 {
        let groups = w.rt.proposal_groups().expect("groups");
        if let Some(g) = groups
            .iter()
            .find(|g| g.root_agent == agent.id() && g.pending.len() == customers.len())
        {
            return (calls, g.group.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reminders never became pending");
}

async fn pending(rt: &Runtime) -> bulwark_runtime::Proposal {
    for _ in 0..500 {
        if let Some(p) = rt
            .proposals()
            .expect("list")
            .into_iter()
            .find(|p| p.state == ProposalState::Pending)
        {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no proposal became pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_in_a_real_browser_and_the_action_runs_once() {
    let w = world().await;
    // An amount beyond 2^53 (a JavaScript number would round it to ...992) and a memo
    // with a right-to-left override that would show "exe.pdf" as "fdp.exe".
    let args = json!({"invoice": "INV-2231", "iban": "DE89370400440532013000",
                      "amount": 9_007_199_254_740_993u64, "memo": "scan \u{202E}fdp.exe"});
    let run = start_payment_with(&w.rt, &w.root, args.clone()).await;
    let p = pending(&w.rt).await;
    let dash = serve(w.rt.clone(), DashboardConfig::default())
        .await
        .expect("dashboard");

    let port = free_port();
    let profile = tempfile::tempdir().expect("profile dir");
    let _driver = Driver(
        Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
                        format!("--user-data-dir={}", profile.path().display())]}),
    );
    // WebDriver speaks plain HTTP on loopback; fantoccini still wants a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut client = None;
    for _ in 0..100 {
        match ClientBuilder::rustls()
            .expect("tls")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = client.expect("chromedriver accepts a session within 10 s");

    // The login URL carries the generated token in its fragment; the page keeps it in
    // session storage and takes it out of the address bar.
    client.goto(&dash.login_url()).await.expect("page loads");
    let shown_url = client.current_url().await.expect("url").to_string();
    assert!(!shown_url.contains(dash.token()), "{shown_url}");
    // The page's canonical text and hash agree with the runtime's on awkward values:
    // keys whose UTF-16 and UTF-8 orders differ, escapes, control characters, floats,
    // the extremes of 64-bit integers.
    for value in [
        json!({"z": 1, "é": "x", "\u{1F600}": "emoji", "\u{FF5E}": "wide", "a": {"n": [1, -2, 1.5, 1e300, true, null,
               "q\"\\/\n\t\u{1}\u{7f}\u{2028}\u{202E}"]}, "big": u64::MAX, "neg": i64::MIN}),
        json!({}),
        json!({"s": "", "list": [], "o": {}}),
    ] {
        let text = value.to_string();
        let hash = client
            .execute(
                "return argsHash(shownArgs({args_json: arguments[0]}).text);",
                vec![json!(text)],
            )
            .await
            .expect("the page hashes the arguments");
        assert_eq!(
            hash,
            json!(bulwark_runtime::Proposal::hash_args(&value)),
            "{text}"
        );
    }
    // Text that is not the canonical form is refused rather than signed.
    for text in [
        r#"{"b":1,"a":2}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a": 1}"#,
        r#"{"a":"\u0041"}"#,
    ] {
        let refused = client
            .execute(
                "try { shownArgs({args_json: arguments[0]}); return 'accepted'; } catch (e) { return e.message; }",
                vec![json!(text)],
            )
            .await
            .expect("script");
        assert_ne!(refused, json!("accepted"), "{text}");
    }

    // The operator's key file, as `bulwark keygen` writes it.
    let key_path = profile.path().join("operator.key");
    w.operator.save(&key_path).expect("save key");
    let key_text = std::fs::read_to_string(&key_path).expect("read key");
    client
        .find(Locator::Id("key"))
        .await
        .expect("key box")
        .send_keys(key_text.trim())
        .await
        .expect("type key");
    client
        .find(Locator::Id("load-key"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    // The key is imported by WebCrypto (asynchronously): wait until the page names
    // the operator.
    let mut loaded = String::new();
    for _ in 0..100 {
        loaded = client
            .find(Locator::Id("operator"))
            .await
            .expect("operator label")
            .text()
            .await
            .unwrap_or_default();
        if loaded.starts_with("operator ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = client
        .find(Locator::Id("message"))
        .await
        .expect("message")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        loaded.starts_with(&format!("operator {}", &w.operator.public().to_hex()[..16])),
        "the key did not load: {loaded:?}; the page says: {message}"
    );
    let approve = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(&format!("approve-{}", p.id)))
        .await
        .expect("the pending proposal is listed with an approve button");
    drop(approve);
    // The row shows the agent, the tool and the arguments the operator approves: the
    // amount exact, the override as a visible token, not applied.
    let row = row_text(&client, &p.id).await;
    assert!(
        row.contains("accounts-payable") && row.contains("pay_invoice") && row.contains("INV-2231"),
        "{row}"
    );
    assert!(row.contains("\"amount\": 9007199254740993"), "{row}");
    assert!(
        row.contains("scan \\u202Efdp.exe") && !row.contains('\u{202E}'),
        "{row}"
    );

    // What the page is shown no longer matches what the server asks it to sign (a
    // lying server, or script injected between them, shows amount 1): the page
    // computes the hash of what it shows, finds it differs, and signs nothing.
    client
        .execute(
            r#"window.realFetch = window.fetch;
               window.fetch = async (url, init) => {
                 const r = await window.realFetch(url, init);
                 if ((init && init.method === "POST") || !String(url).startsWith("api/")) return r;
                 const text = (await r.text()).split("9007199254740993").join("1");
                 return new Response(text, {status: r.status, headers: r.headers});
               };
               refresh();"#,
            vec![],
        )
        .await
        .expect("script");
    wait_row(&client, &p.id, |row| row.contains("\"amount\": 1,")).await;
    click(&client, &format!("approve-{}", p.id)).await;
    let refused = wait_message(&client, |m| m.contains("Not approved")).await;
    assert!(refused.contains("do not match"), "{refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.rt.proposal(&p.id).expect("get").expect("exists").state,
        ProposalState::Pending,
        "nothing was approved"
    );
    assert_eq!(w.paid.load(Ordering::SeqCst), 0);
    client
        .execute("window.fetch = window.realFetch; refresh();", vec![])
        .await
        .expect("script");
    wait_row(&client, &p.id, |row| row.contains("9007199254740993")).await;
    click(&client, &format!("approve-{}", p.id)).await;
    for _ in 0..100 {
        if w.rt
            .proposal(&p.id)
            .ok()
            .flatten()
            .is_some_and(|p| p.state != ProposalState::Pending)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = client
        .find(Locator::Id("message"))
        .await
        .expect("message")
        .text()
        .await
        .unwrap_or_default();
    assert_ne!(
        w.rt.proposal(&p.id).ok().flatten().map(|p| p.state),
        Some(ProposalState::Pending),
        "the approval did not land; the page says: {message}"
    );

    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the waiting step resumes")
        .expect("run");
    assert_eq!(outcome.denied().count(), 0, "{:?}", outcome.actions);
    assert_eq!(
        w.paid.load(Ordering::SeqCst),
        1,
        "the action ran exactly once"
    );
    let done = w.rt.proposal(&p.id).expect("get").expect("exists");
    assert_eq!(done.state, ProposalState::Committed);
    assert_eq!(done.decisions[0].by, w.operator.public().to_hex());
    // The signature held over the real arguments, and the tool ran with them.
    assert_eq!(
        w.paid_args.lock().expect("args").as_slice(),
        std::slice::from_ref(&args)
    );

    // The page shows the new state; keep a screenshot with the test's output.
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(&format!(
            "//td[@id='state-{}' and text()='committed']",
            p.id
        )))
        .await
        .expect("the page shows the action committed");
    let png = client.screenshot().await.expect("screenshot");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-approved.png");
    std::fs::write(&out, png).expect("write screenshot");
    println!("screenshot: {}", out.display());

    // Three reminders of one group, approved with one click: the browser signs each
    // over its own arguments, and each is sent exactly once.
    let (calls, group) = start_reminders(&w, &["c1", "c2", "c3"]).await;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(&format!("approve-group-{group}")))
        .await
        .expect("the group is offered for one decision")
        .click()
        .await
        .expect("approve all");
    for call in calls {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("each waiting call resumes")
            .expect("call");
    }
    assert_eq!(w.reminded.load(Ordering::SeqCst), 3);
    let entries = w.rt.audit_tail(1000).await.expect("audit");
    assert!(entries.iter().any(|e| e.record.kind == "proposal.batch"
        && e.record.detail["by"] == w.operator.public().to_hex()));
    client.close().await.expect("close");
    dash.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_forged_and_malformed_decisions_and_guards_its_binding() {
    let w = world().await;
    let run = start_payment(&w).await;
    let p = pending(&w.rt).await;
    let dash = serve(
        w.rt.clone(),
        DashboardConfig {
            bearer: Some("correct horse battery staple".into()),
            ..DashboardConfig::default()
        },
    )
    .await
    .expect("dashboard");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}api/proposals{path}", dash.url());

    // Without the token, nothing.
    let r = http.get(url("")).send().await.expect("get");
    assert_eq!(r.status(), 401);
    let auth = "Bearer correct horse battery staple";
    let list: serde_json::Value = http
        .get(url(""))
        .header("authorization", auth)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(list[0]["id"], p.id.as_str());
    assert!(list[0]["time_left_ms"].as_u64().expect("time left") > 0);

    // Malformed, forged (unknown key) and wrong-arguments approvals are refused.
    let post = |path: String, body: String| {
        http.post(url(&path))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(format!("/{}/approve", p.id), "{not json".into())
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let forged = bulwark_capabilities::Approval::sign(
        &KeyPair::generate(),
        &p.id,
        &bulwark_runtime::Proposal::approval_args(&p.args),
        std::time::SystemTime::now() + Duration::from_secs(600),
    );
    let r = post(
        format!("/{}/approve", p.id),
        serde_json::to_string(&forged).expect("json"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 403);
    let other = bulwark_capabilities::Approval::sign(
        &w.operator,
        &p.id,
        &bulwark_runtime::Proposal::approval_args(&json!({"invoice": "INV-2231", "amount": 1})),
        std::time::SystemTime::now() + Duration::from_secs(600),
    );
    let r = post(
        format!("/{}/approve", p.id),
        serde_json::to_string(&other).expect("json"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 403);
    let r = http
        .get(url("/p-nope"))
        .header("authorization", auth)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);

    // A signed rejection ends it; nothing was paid.
    let reject = bulwark_capabilities::Decision::sign(
        &w.operator,
        bulwark_capabilities::DecisionKind::Reject,
        &p.id,
        "not our supplier",
        std::time::SystemTime::now(),
    );
    let r = post(
        format!("/{}/reject", p.id),
        serde_json::to_string(&reject).expect("json"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 200);
    let outcome = run.await.expect("run");
    assert!(
        outcome
            .denied()
            .any(|a| a.detail.contains("not our supplier"))
    );
    assert_eq!(w.paid.load(Ordering::SeqCst), 0);
    dash.stop();

    // Beyond loopback the dashboard needs a real token.
    let open = serve(
        w.rt.clone(),
        DashboardConfig {
            bind: "0.0.0.0:0".parse().expect("addr"),
            bearer: None,
            ..DashboardConfig::default()
        },
    )
    .await;
    assert!(matches!(open, Err(DashboardError::Unprotected(_))));
    let weak = serve(
        w.rt.clone(),
        DashboardConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            bearer: Some("short".into()),
            ..DashboardConfig::default()
        },
    )
    .await;
    assert!(matches!(weak, Err(DashboardError::WeakToken)));
}

async fn row_text(client: &fantoccini::Client, id: &str) -> String {
    for _ in 0..100 {
        if let Ok(row) = client.find(Locator::Id(&format!("row-{id}"))).await
            && let Ok(text) = row.text().await
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the row of {id} is not shown");
}

/// Waits (up to 20 s) until the row of `id` satisfies `ok`.
async fn wait_row(client: &fantoccini::Client, id: &str, ok: impl Fn(&str) -> bool) {
    let mut last = String::new();
    for _ in 0..200 {
        last = row_text(client, id).await;
        if ok(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the row never showed what was expected: {last}");
}

/// Waits (up to 20 s) until the page's message satisfies `ok`.
async fn wait_message(client: &fantoccini::Client, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        if let Ok(m) = client.find(Locator::Id("message")).await {
            last = m.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never said what was expected: {last}");
}

/// Clicks the element `id`, again if the page redrew it in between.
async fn click(client: &fantoccini::Client, id: &str) {
    for _ in 0..50 {
        if let Ok(e) = client.find(Locator::Id(id)).await
            && e.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot click {id}");
}

fn bulwark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .env_remove("BULWARK_DASHBOARD_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("the bulwark binary runs")
}

fn bulwark_with(token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .env("BULWARK_DASHBOARD_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("the bulwark binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_decides_against_a_running_dashboard() {
    let w = world().await;
    let run = start_payment(&w).await;
    let p = pending(&w.rt).await;
    let dash = serve(w.rt.clone(), DashboardConfig::default())
        .await
        .expect("dashboard");
    let keys = tempfile::tempdir().expect("dir");
    let op_key = keys.path().join("op.key");
    w.operator.save(&op_key).expect("save");
    let stranger_key = keys.path().join("stranger.key");
    KeyPair::generate().save(&stranger_key).expect("save");
    let url = dash.url();
    // The CLI carries the dashboard's token (--token or BULWARK_DASHBOARD_TOKEN).
    let token: &'static str = Box::leak(dash.token().to_string().into_boxed_str());
    let refused = tokio::task::spawn_blocking({
        let url = url.clone();
        move || bulwark(&["proposals", "list", "--url", &url])
    })
    .await
    .expect("join");
    assert!(!refused.status.success(), "no token, no listing");
    let (op, stranger) = (
        op_key.to_string_lossy().to_string(),
        stranger_key.to_string_lossy().to_string(),
    );

    let listed = tokio::task::spawn_blocking({
        let url = url.clone();
        move || bulwark_with(token, &["proposals", "list", "--url", &url])
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        text.contains(&p.id) && text.contains("pending") && text.contains("pay_invoice"),
        "{text}"
    );

    // A key the runtime does not trust is refused (exit 3), and nothing runs.
    let refused = tokio::task::spawn_blocking({
        let (url, id) = (url.clone(), p.id.clone());
        move || {
            bulwark_with(
                token,
                &[
                    "proposals",
                    "approve",
                    &id,
                    "--operator-key",
                    &stranger,
                    "--url",
                    &url,
                ],
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a trusted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(w.paid.load(Ordering::SeqCst), 0);

    let approved = tokio::task::spawn_blocking({
        let (url, id) = (url.clone(), p.id.clone());
        move || {
            bulwark_with(
                token,
                &[
                    "proposals",
                    "approve",
                    &id,
                    "--operator-key",
                    &op,
                    "--url",
                    &url,
                ],
            )
        }
    })
    .await
    .expect("join");
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("resumes")
        .expect("run");
    assert_eq!(outcome.denied().count(), 0);
    assert_eq!(w.paid.load(Ordering::SeqCst), 1);

    // A group: listed, refused to a stranger's key, then approved with one command.
    let (calls, group) = start_reminders(&w, &["c7", "c8"]).await;
    let listed = tokio::task::spawn_blocking({
        let url = url.clone();
        move || bulwark_with(token, &["proposals", "list", "--groups", "--url", &url])
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        text.contains(&group) && text.contains("2   pending send_reminder"),
        "{text}"
    );
    for (key, code) in [(&stranger_key, Some(3)), (&op_key, Some(0))] {
        let key = key.to_string_lossy().to_string();
        let out = tokio::task::spawn_blocking({
            let (url, group) = (url.clone(), group.clone());
            move || {
                bulwark_with(
                    token,
                    &[
                        "proposals",
                        "approve",
                        "--group",
                        &group,
                        "--operator-key",
                        &key,
                        "--url",
                        &url,
                    ],
                )
            }
        })
        .await
        .expect("join");
        assert_eq!(
            out.status.code(),
            code,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if code == Some(3) {
            assert_eq!(w.reminded.load(Ordering::SeqCst), 0);
        }
    }
    for call in calls {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("each waiting call resumes")
            .expect("call");
    }
    assert_eq!(w.reminded.load(Ordering::SeqCst), 2);
    dash.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_queued_in_a_stopped_data_directory_apply_verified_at_the_next_start() {
    let dir = tempfile::tempdir().expect("dir");
    let root = KeyPair::generate();
    let operator = KeyPair::generate();
    let paid = Arc::new(AtomicUsize::new(0));
    let open = |paid: Arc<AtomicUsize>| {
        let (dir, root, operator) = (dir.path().to_path_buf(), root.public(), operator.public());
        async move {
            let rt = Runtime::builder()
                .data_dir(&dir)
                .root_public_key(root)
                .approvals(ApprovalConfig::new(vec![operator]))
                .build()
                .await
                .expect("runtime");
            rt.tools()
                .register(Tool::native(
                    ToolManifest::new("pay_invoice", "Pays").tier(Tier::Confirm),
                    move |_| {
                        let paid = paid.clone();
                        async move {
                            paid.fetch_add(1, Ordering::SeqCst);
                            Ok(ToolOutput::new(json!("paid")))
                        }
                    },
                ))
                .expect("register");
            rt
        }
    };
    let rt = open(paid.clone()).await;
    let run = start_payment_on(&rt, &root).await;
    let p = pending(&rt).await;
    rt.shutdown().await.expect("shutdown");
    // The waiting step ends with the runtime; the proposal stays pending.
    let _ = run.await;

    let keys = tempfile::tempdir().expect("dir");
    let op_key = keys.path().join("op.key");
    operator.save(&op_key).expect("save");
    let data = dir.path().to_string_lossy().to_string();
    let listed = bulwark(&["proposals", "list", "--data-dir", &data, "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&p.id));
    let queued = bulwark(&[
        "proposals",
        "approve",
        &p.id,
        "--operator-key",
        &op_key.to_string_lossy(),
        "--data-dir",
        &data,
    ]);
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    assert!(String::from_utf8_lossy(&queued.stdout).contains("queued"));
    assert_eq!(paid.load(Ordering::SeqCst), 0, "nothing is decided offline");

    // The next start verifies the queued approval and runs the action once.
    let rt = open(paid.clone()).await;
    for _ in 0..200 {
        if rt
            .proposal(&p.id)
            .ok()
            .flatten()
            .is_some_and(|p| p.state == ProposalState::Committed)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rt.proposal(&p.id).expect("get").expect("exists").state,
        ProposalState::Committed
    );
    assert_eq!(paid.load(Ordering::SeqCst), 1);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_answers_only_its_own_host_its_origin_and_its_token() {
    let w = world().await;
    let run = start_payment(&w).await;
    let p = pending(&w.rt).await;
    // No token configured: one is generated, and it is still required on loopback.
    let dash = serve(
        w.rt.clone(),
        DashboardConfig {
            allowed_hosts: vec!["bulwark.internal".into()],
            ..DashboardConfig::default()
        },
    )
    .await
    .expect("dashboard");
    assert_eq!(dash.token().len(), 64);
    assert!(
        dash.login_url()
            .ends_with(&format!("/#token={}", dash.token()))
    );
    let port = dash.addr.port();
    let http = reqwest::Client::new();
    let list = format!("{}api/proposals", dash.url());
    let auth = format!("Bearer {}", dash.token());

    let r = http.get(&list).send().await.expect("get");
    assert_eq!(r.status(), 401, "no token, nothing");
    let r = http
        .get(&list)
        .header(
            "authorization",
            "Bearer 0000000000000000000000000000000000000000",
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401, "a wrong token, nothing");

    // A page on a DNS name rebound to 127.0.0.1 sends its own name as Host.
    for host in [
        "evil.test".to_string(),
        format!("evil.test:{port}"),
        format!("localhost.evil.test:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "".to_string(),
    ] {
        let r = http
            .get(&list)
            .header("authorization", &auth)
            .header("host", &host)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 421, "Host {host:?} is refused");
        let r = http
            .get(dash.url())
            .header("host", &host)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 421, "the page too, for Host {host:?}");
    }
    // Its own names, with the token, are answered; the arguments come as their exact
    // canonical text too.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        "bulwark.internal".to_string(),
        "bulwark.internal:8443".to_string(),
    ] {
        let r = http
            .get(&list)
            .header("authorization", &auth)
            .header("host", &host)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "Host {host:?}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v[0]["args_json"], p.args.to_string());
    }

    // A state-changing request from another origin is refused, token or not.
    let reject = bulwark_capabilities::Decision::sign(
        &w.operator,
        bulwark_capabilities::DecisionKind::Reject,
        &p.id,
        "cross-site",
        std::time::SystemTime::now(),
    );
    let approve = bulwark_capabilities::Approval::sign(
        &w.operator,
        &p.id,
        &bulwark_runtime::Proposal::approval_args(&p.args),
        std::time::SystemTime::now() + Duration::from_secs(600),
    );
    let post = |action: &str, body: String, extra: Option<(&'static str, String)>| {
        let mut req = http
            .post(format!("{}api/proposals/{}/{action}", dash.url(), p.id))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(body);
        if let Some((name, value)) = extra {
            req = req.header(name, value);
        }
        req.send()
    };
    let reject_json = serde_json::to_string(&reject).expect("json");
    for extra in [
        ("origin", "http://evil.test".to_string()),
        ("origin", "null".to_string()),
        (
            "origin",
            format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        ),
        ("sec-fetch-site", "cross-site".to_string()),
        ("sec-fetch-site", "same-site".to_string()),
    ] {
        let r = post("reject", reject_json.clone(), Some(extra.clone()))
            .await
            .expect("post");
        assert_eq!(r.status(), 403, "{extra:?}");
    }
    assert_eq!(
        w.rt.proposal(&p.id).expect("get").expect("exists").state,
        ProposalState::Pending
    );
    // The page's own origin may decide.
    let r = post(
        "approve",
        serde_json::to_string(&approve).expect("json"),
        Some(("origin", format!("http://127.0.0.1:{port}"))),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 200);
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("resumes")
        .expect("run");
    assert_eq!(outcome.denied().count(), 0);
    assert_eq!(w.paid.load(Ordering::SeqCst), 1);
    dash.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_personal_data_and_secrets_redacted_while_the_action_runs_with_them() {
    use axum::{Router, extract::State, routing::post};
    let received: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Arc<std::sync::Mutex<Vec<String>>>>, body: String| async move {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(body);
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });

    let mut hook = bulwark_runtime::WebhookConfig::new(format!("http://{hook_addr}/hook"));
    hook.backoff = Duration::from_millis(20);
    let w = world_with(|a| a.webhook(hook)).await;
    let (iban, email, key) = (
        "DE89370400440532013000",
        "ana.lopez@example.com",
        "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
    );
    let args = json!({"invoice": "INV-7781", "iban": iban, "notify": [email],
                      "note": format!("api key {key}"), "amount": 18_750});
    let run = start_payment_with(&w.rt, &w.root, args.clone()).await;
    let p = pending(&w.rt).await;
    let mut body = String::new();
    for _ in 0..500 {
        if let Some(b) = received.lock().unwrap_or_else(|p| p.into_inner()).first() {
            body = b.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains(&p.id), "the webhook was told: {body}");
    for secret in [iban, email, key] {
        assert!(
            !body.contains(secret),
            "{secret} reached the webhook: {body}"
        );
    }
    for mark in ["[REDACTED:iban:", "[REDACTED:email:", "[REDACTED:api_key:"] {
        assert!(body.contains(mark), "{mark} missing: {body}");
    }
    // What is not personal stays readable.
    assert!(
        body.contains("INV-7781") && body.contains("18750"),
        "{body}"
    );

    // The operator's own dashboard shows the real values, and the approval over them
    // runs the action with them.
    let dash = serve(w.rt.clone(), DashboardConfig::default())
        .await
        .expect("dashboard");
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", dash.token());
    let shown: serde_json::Value = http
        .get(format!("{}api/proposals/{}", dash.url(), p.id))
        .header("authorization", &auth)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let text = shown["args_json"].as_str().expect("args_json");
    assert!(
        text.contains(iban) && text.contains(email) && text.contains(key),
        "{text}"
    );
    let approval = bulwark_capabilities::Approval::sign(
        &w.operator,
        &p.id,
        &bulwark_runtime::Proposal::approval_args(&p.args),
        std::time::SystemTime::now() + Duration::from_secs(600),
    );
    let r = http
        .post(format!("{}api/proposals/{}/approve", dash.url(), p.id))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(serde_json::to_string(&approval).expect("json"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("resumes")
        .expect("run");
    assert_eq!(outcome.denied().count(), 0, "{:?}", outcome.actions);
    assert_eq!(
        w.paid_args.lock().expect("args").as_slice(),
        std::slice::from_ref(&args)
    );
    dash.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_to_the_bearer_with_the_runtime_and_node_families() {
    let w = world().await;
    let run = start_payment(&w).await;
    pending(&w.rt).await;
    // A call the gate refuses: a tool nobody registered.
    let spec = AgentSpec::new("auditor");
    let grant = RootGrant::new(
        "acme",
        "auditor",
        spec.key.public(),
        MicroUsd::from_usd(1).expect("usd"),
        std::time::SystemTime::now() + Duration::from_secs(3600),
        1,
    )
    .tool("send_reminder", Tier::Auto);
    let token = Token::mint(&w.root, grant).expect("mint");
    let auditor =
        w.rt.spawn_agent(spec, token, Arc::new(ScriptedBrain::new(vec![])))
            .await
            .expect("spawn");
    let refused = auditor.call_tool("delete_ledger", json!({})).await;
    assert!(refused.is_err());
    let node = Arc::new(NodeMetrics::new());
    node.envelope_refused("signature");
    node.heartbeat_lag("node-b", 2.5);
    let token = "a-scrape-token-for-prometheus-0123";
    let dash = serve_with_metrics(
        w.rt.clone(),
        DashboardConfig {
            bearer: Some(token.into()),
            ..DashboardConfig::default()
        },
        Some(node.clone()),
    )
    .await
    .expect("dashboard");
    let http = reqwest::Client::new();
    let url = format!("{}metrics", dash.url());

    let r = http.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 401, "no token, no metrics");
    let r = http
        .get(&url)
        .header("authorization", "Bearer a-scrape-token-for-prometheus-9999")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401, "a wrong token, no metrics");

    let r = http
        .get(&url)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = r.text().await.expect("body");
    for line in [
        // The runtime's families.
        "bulwark_tool_calls_total{tool=\"unregistered\",tier=\"none\",outcome=\"refused\"} 1\n",
        "bulwark_tool_denials_total{reason=\"unknown_tool\"} 1\n",
        "bulwark_proposals_open 1\n",
        "bulwark_budget_cap_microdollars{tenant=\"acme\"} 10000000\n",
        // The node's.
        "bulwark_envelope_refusals_total{reason=\"signature\"} 1\n",
        "bulwark_heartbeat_lag_seconds{node=\"node-b\"} 2.5\n",
        "bulwark_nats_reconnects_total 0\n",
    ] {
        assert!(body.contains(line), "{line} in\n{body}");
    }
    dash.stop();

    // A dashboard without a node serves the runtime's families alone, to its
    // (generated) token.
    let plain = serve(w.rt.clone(), DashboardConfig::default())
        .await
        .expect("dashboard");
    let r = http
        .get(format!("{}metrics", plain.url()))
        .header("authorization", format!("Bearer {}", plain.token()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    assert!(body.contains("bulwark_proposals_open 1\n"), "{body}");
    assert!(!body.contains("bulwark_envelope_refusals"), "{body}");
    plain.stop();
    run.abort();
}
