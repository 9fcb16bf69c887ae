//! The OpenAI-compatible brain against a local server that speaks the protocol,
//! including malformed and hostile responses.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bulwark_capabilities::Tier;
use bulwark_runtime::{
    Brain, BrainAction, BrainError, BrainView, ContextItem, OpenAiBrain, OpenAiConfig, Status,
    parse_completion,
};
use serde_json::{Value, json};

use crate::Harness;

#[derive(Clone, Default)]
struct Server {
    replies: Arc<Mutex<VecDeque<(u16, String)>>>,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn completions(State(s): State<Server>, body: String) -> (StatusCode, String) {
    s.requests
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
    let (status, body) = s
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((500, "no reply queued".into()));
    (StatusCode::from_u16(status).unwrap(), body)
}

async fn serve(replies: Vec<(u16, String)>) -> (Server, String) {
    let server = Server {
        replies: Arc::new(Mutex::new(replies.into())),
        ..Server::default()
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, format!("http://{addr}/v1"))
}

fn config(base_url: String) -> OpenAiConfig {
    OpenAiConfig {
        base_url,
        model: "big-model".into(),
        cheap_model: "small-model".into(),
        api_key: Some("sk-test".into()),
        micro_usd_per_1k_tokens: (10_000, 1_000),
        micro_usd_per_1k_prompt_tokens: (10_000, 1_000),
        max_tokens: 1000,
        timeout: Duration::from_secs(5),
    }
}

fn tool_call(name: &str, args: &str) -> String {
    json!({"choices": [{"message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}]}}],
        "usage": {"total_tokens": 200}})
    .to_string()
}

fn answer(text: &str) -> String {
    json!({"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"total_tokens": 100}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_drives_an_agent_and_its_hostile_calls_are_denied() {
    let (server, url) = serve(vec![
        (200, tool_call("read_inbox", "{}")),
        // The "model" was injected: it tries a payment and a wipe.
        (
            200,
            tool_call("pay", r#"{"to": "attacker", "amount": 5000}"#),
        ),
        (200, tool_call("wipe", "{}")),
        (200, answer("Inbox read; nothing else to do.")),
    ])
    .await;
    let h = Harness::new().await;
    let brain = Arc::new(OpenAiBrain::new(config(url)).unwrap());
    let a = h
        .agent(
            "assistant",
            &[("read_inbox", Tier::Auto), ("pay", Tier::Auto)],
            "1",
            brain,
        )
        .await;
    let out = a.run("read my inbox").await.unwrap();
    assert_eq!(out.answer(), Some("Inbox read; nothing else to do."));
    let allowed: Vec<_> = out
        .actions
        .iter()
        .map(|a| (a.target.as_str(), a.allowed))
        .collect();
    assert_eq!(
        allowed,
        vec![("read_inbox", true), ("pay", false), ("wipe", false)]
    );
    // Model cost: 200 + 200 + 200 + 100 tokens at $0.01 per 1k.
    assert_eq!(out.charged, 7_000);
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0]["model"], "big-model");
    // Only the tools the token allows are offered to the model.
    let offered: Vec<&str> = reqs[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, vec!["pay", "read_inbox"]);
    // Tool output reaches the model spotlighted as data.
    let second = reqs[1]["messages"].to_string();
    assert!(
        second.contains("<<DATA-")
            && second.contains("<<END-")
            && second.contains("hello from bob"),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_responses_give_clear_errors() {
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let cases: Vec<((u16, String), &str)> = vec![
        ((200, "this is not json".into()), "not JSON"),
        (
            (200, json!({"choices": []}).to_string()),
            "no choices[0].message",
        ),
        (
            (200, tool_call("read_inbox", "{not json")),
            "tool arguments are not JSON",
        ),
        ((200, tool_call("read_inbox", "[1,2]")), "not a JSON object"),
        (
            (
                200,
                json!({"choices": [{"message": {"tool_calls": []}}]}).to_string(),
            ),
            "tool_calls is empty",
        ),
        (
            (
                200,
                json!({"choices": [{"message": {"role": "assistant"}}]}).to_string(),
            ),
            "neither tool_calls nor content",
        ),
        (
            (500, "upstream overloaded".into()),
            "HTTP 500: upstream overloaded",
        ),
        ((401, json!({"error": "bad key"}).to_string()), "HTTP 401"),
        ((200, huge), "larger than"),
    ];
    let replies = cases.iter().map(|(r, _)| r.clone()).collect();
    let (_server, url) = serve(replies).await;
    let brain = OpenAiBrain::new(config(url)).unwrap();
    let tools = vec![];
    let view = BrainView {
        agent: "a",
        context: &[ContextItem::Task { text: "t".into() }],
        tools: &tools,
        economy: false,
        step: 0,
    };
    for (_, needle) in &cases {
        let err = brain.step(&view).await.unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "expected `{needle}` in `{err}`"
        );
    }
    // Unreachable endpoint.
    let dead = OpenAiBrain::new(config("http://127.0.0.1:9/v1".into())).unwrap();
    assert!(matches!(
        dead.step(&view).await.unwrap_err(),
        BrainError::Transport(_)
    ));
    // Missing configuration is named.
    let err = OpenAiConfig::from_env().err();
    if std::env::var("BULWARK_LLM_BASE_URL").is_err() {
        assert!(err.unwrap().to_string().contains("BULWARK_LLM_BASE_URL"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_ends_the_run_with_the_reason_and_economy_uses_the_cheap_model() {
    let (server, url) = serve(vec![(200, "garbage".into())]).await;
    let h = Harness::new().await;
    let a = h
        .agent(
            "assistant",
            &[],
            "1",
            Arc::new(OpenAiBrain::new(config(url.clone())).unwrap()),
        )
        .await;
    let out = a.run("anything").await.unwrap();
    assert!(
        matches!(&out.status, Status::Failed(r) if r.contains("not JSON")),
        "{:?}",
        out.status
    );
    drop(server);

    let (server, url) = serve(vec![(200, answer("cheap"))]).await;
    let brain = OpenAiBrain::new(config(url)).unwrap();
    let tools = vec![];
    let view = BrainView {
        agent: "a",
        context: &[],
        tools: &tools,
        economy: true,
        step: 0,
    };
    let reply = brain.step(&view).await.unwrap();
    assert_eq!(
        reply.action,
        BrainAction::Finish {
            answer: "cheap".into()
        }
    );
    assert_eq!(reply.cost.micros(), 100);
    assert_eq!(server.requests.lock().unwrap()[0]["model"], "small-model");
    assert!(brain.premium(false) && !brain.premium(true));
    // The parser is usable on its own.
    assert!(parse_completion(&json!({})).is_err());
}

fn with_usage(reply: &str, prompt: u64, completion: u64) -> String {
    let mut v: Value = serde_json::from_str(reply).unwrap();
    v["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                        "total_tokens": prompt + completion});
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_spend_is_charged_from_reported_usage_and_fails_closed_beyond_its_reservation() {
    // Prompt and completion are priced apart: $0.005 and $0.015 per 1000 tokens.
    let priced = |url: String| OpenAiConfig {
        micro_usd_per_1k_prompt_tokens: (5_000, 500),
        micro_usd_per_1k_tokens: (15_000, 1_500),
        ..config(url)
    };
    // Honest: 800 prompt and 50 completion tokens cost 800 × 5 + 50 × 15 micro-dollars,
    // charged in full — the prompt is not capped by `max_tokens`.
    let (_server, url) = serve(vec![(200, with_usage(&answer("fine"), 800, 50))]).await;
    let h = Harness::new().await;
    let a = h
        .agent(
            "honest",
            &[],
            "1",
            Arc::new(OpenAiBrain::new(priced(url)).unwrap()),
        )
        .await;
    let out = a.run("say fine").await.unwrap();
    assert_eq!(out.answer(), Some("fine"));
    assert_eq!(out.charged, 4_750);
    assert_eq!(
        h.rt.account("agent:honest").unwrap().spent_today.micros(),
        4_750
    );

    // Injected content made the provider bill 118 000 prompt tokens ($0.59) on a step
    // whose prompt could not hold that many: the usage exceeds the reservation, the
    // action is dropped and the whole reservation is charged (never less).
    let (_server, url) = serve(vec![(
        200,
        with_usage(&tool_call("lookup", "{}"), 118_000, 2_000),
    )])
    .await;
    let brain = Arc::new(OpenAiBrain::new(priced(url)).unwrap());
    let b = h
        .agent("burned", &[("lookup", Tier::Auto)], "5", brain.clone())
        .await;
    let out = b.run("look something up").await.unwrap();
    assert!(
        matches!(&out.status, Status::Failed(r) if r.contains("more than the") && r.contains("reserved")),
        "{:?}",
        out.status
    );
    assert!(
        out.actions.is_empty(),
        "the dropped step ran: {:?}",
        out.actions
    );
    // At least the completion's share (1000 × $0.015/1k), at most the billed amount.
    assert!(
        out.charged >= 15_000 && out.charged < 620_000,
        "{}",
        out.charged
    );
    assert_eq!(
        h.rt.account("agent:burned").unwrap().spent_today.micros(),
        out.charged
    );

    // The reservation grows with what the step is shown.
    let tools = vec![];
    let small = [ContextItem::Task { text: "x".into() }];
    let big = [ContextItem::Task {
        text: "x".repeat(50_000),
    }];
    let reservation = |context: &[ContextItem]| {
        brain
            .step_reservation(&BrainView {
                agent: "a",
                context,
                tools: &tools,
                economy: false,
                step: 0,
            })
            .micros()
    };
    let (r_small, r_big) = (reservation(&small), reservation(&big));
    assert!(
        r_big >= r_small + 49_000 * 5_000 / 1000,
        "{r_small} {r_big}"
    );
}

mod parse_fuzz {
    use bulwark_runtime::parse_completion;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            "\\PC{0,12}".prop_map(Value::String),
            Just(json!("{\"a\":1}")),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("choices".to_string()),
                        Just("message".to_string()),
                        Just("tool_calls".to_string()),
                        Just("function".to_string()),
                        Just("name".to_string()),
                        Just("arguments".to_string()),
                        Just("content".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Hostile model output: any JSON gives an action or a typed error, never a panic,
        /// and a tool call always carries an object of arguments.
        #[test]
        fn any_response_parses_or_fails_cleanly(v in json_value()) {
            if let Ok(bulwark_runtime::BrainAction::CallTool { args, .. }) = parse_completion(&v) {
                prop_assert!(args.is_object());
            }
        }
    }
}
