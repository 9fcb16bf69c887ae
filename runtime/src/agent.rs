//! The agent actor and its bounded reason/act loop.
//!
//! Each step: the brain's cost is reserved, the brain proposes one action (within the
//! step timeout), and the action goes through the runtime — tool calls through the
//! gate, spawns through attenuation, messages by agent id. Results and messages
//! re-enter the context marked untrusted. The loop ends on an answer, on the step
//! limit, or on a budget the agent can no longer pay.

use std::sync::{Arc, Mutex, Weak};

use bulwark_capabilities::Tier;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::json;
use tracing::Instrument;

use crate::brain::{Brain, BrainAction, BrainView, ContextItem};
use crate::clock::unix_ms;
use crate::error::{BudgetDenial, GateError};
use crate::gate::Identity;
use crate::guard::{ANSWER_CHANNEL, GuardNote, GuardVerdict, Provenance, Verdict};
use crate::runtime::{AgentSpec, Envelope, Inner};
use crate::tools::ToolManifest;

#[derive(Clone)]
pub(crate) struct AgentArgs {
    pub spec: AgentSpec,
    pub identity: Arc<Identity>,
    pub brain: Arc<dyn Brain>,
    pub inner: Weak<Inner>,
    pub inbox: Arc<Mutex<Vec<Envelope>>>,
}

pub(crate) enum AgentMsg {
    Run {
        context: Vec<ContextItem>,
        reply: RpcReplyPort<Outcome>,
    },
    CallTool {
        tool: String,
        args: serde_json::Value,
        reply: RpcReplyPort<Result<crate::gate::CallResult, GateError>>,
    },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Status {
    /// The brain answered.
    Finished(String),
    /// The step limit was reached.
    StepLimit,
    /// The budget could not pay for the next step.
    BudgetExhausted(String),
    /// The brain or a tool failed.
    Failed(String),
}

/// One action the agent attempted and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionRecord {
    /// `tool`, `spawn` or `send`.
    pub kind: String,
    /// The tool, child or recipient.
    pub target: String,
    /// Whether it went through.
    pub allowed: bool,
    /// The result or the refusal, short.
    pub detail: String,
}

/// The result of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The agent.
    pub agent: String,
    /// How it ended.
    pub status: Status,
    /// Steps taken.
    pub steps: usize,
    /// Everything it tried.
    pub actions: Vec<ActionRecord>,
    /// Micro-dollars charged for model and tool calls.
    pub charged: u64,
    /// Whether a tool panicked, hung or failed (counts toward the breaker).
    pub tool_failures: usize,
}

impl Outcome {
    pub(crate) fn failed(agent: &str, reason: &str) -> Self {
        Outcome {
            agent: agent.to_string(),
            status: Status::Failed(reason.to_string()),
            steps: 0,
            actions: Vec::new(),
            charged: 0,
            tool_failures: 0,
        }
    }

    /// Whether the run counts as a success for its circuit breaker.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Status::Finished(_)) && self.tool_failures == 0
    }

    /// The answer, if the brain gave one.
    pub fn answer(&self) -> Option<&str> {
        match &self.status {
            Status::Finished(a) => Some(a),
            _ => None,
        }
    }

    /// Actions refused by the runtime.
    pub fn denied(&self) -> impl Iterator<Item = &ActionRecord> {
        self.actions.iter().filter(|a| !a.allowed)
    }
}

pub(crate) struct AgentActor;

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentArgs;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::Run { context, reply } => {
                let Some(inner) = state.inner.upgrade() else {
                    return Ok(());
                };
                let span = tracing::info_span!(
                    "agent_run",
                    agent = %state.identity.agent,
                    token_id = %state.identity.token.id()
                );
                // Boxed: an idle actor's task then holds only the mailbox wait, not the
                // whole reason/act loop's state.
                let outcome = Box::pin(run_loop(&inner, state, context).instrument(span)).await;
                let _ = reply.send(outcome);
            }
            AgentMsg::CallTool { tool, args, reply } => {
                let result = match state.inner.upgrade() {
                    // The embedding program calls directly: its arguments are its own.
                    Some(inner) => {
                        Box::pin(inner.call_tool(&state.identity, &tool, args, None)).await
                    }
                    None => Err(GateError::UnknownAgent(state.identity.agent.clone())),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

fn short(v: &str) -> String {
    const MAX: usize = 200;
    if v.len() <= MAX {
        v.to_string()
    } else {
        let mut end = MAX;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &v[..end])
    }
}

/// The tools the agent's token allows, with their effective tiers.
fn visible_tools(inner: &Inner, who: &Identity) -> Vec<(ToolManifest, Tier)> {
    let eff = &who.token.effective().tools;
    inner
        .tools
        .manifests()
        .into_iter()
        .filter_map(|m| eff.get(&m.name).map(|t| (m.clone(), (*t).max(m.tier))))
        .collect()
}

async fn run_loop(inner: &Arc<Inner>, state: &AgentArgs, mut context: Vec<ContextItem>) -> Outcome {
    let who = &state.identity;
    let mut out = Outcome {
        agent: who.agent.clone(),
        status: Status::StepLimit,
        steps: 0,
        actions: Vec::new(),
        charged: 0,
        tool_failures: 0,
    };
    let tools = visible_tools(inner, who);
    // What this run has seen, for argument provenance: the task and what a parent
    // passed are trusted; everything admitted below is not.
    let mut provenance = Provenance::new();
    for item in &context {
        if let ContextItem::Task { text } | ContextItem::Passed { text } = item {
            provenance.observe_trusted(text);
        }
    }
    for step in 0..state.spec.max_steps {
        out.steps = step + 1;
        // Messages that arrived since the last step.
        let arrived: Vec<Envelope> =
            std::mem::take(&mut *state.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        for e in arrived {
            let source = format!("agent {}", e.from);
            let (content, note) = admit(
                inner,
                who,
                &mut provenance,
                &source,
                Untrusted::Text(&e.content),
            )
            .await;
            context.push(ContextItem::Message {
                from: e.from,
                content,
                guard: Some(note),
            });
        }

        // Reserve the model call; at 80 % of the budget only the cheap model is allowed.
        let now = inner.clock.now();
        let mut economy = false;
        let reservation = loop {
            let cost = state.brain.max_step_cost(economy).micros();
            let premium = state.brain.premium(economy);
            let intent = who.record(
                "model.call",
                json!({"step": step, "reserved_micro_usd": cost, "economy": economy}),
            );
            match inner.reserve(who, cost, premium, intent, now) {
                Ok(r) => break Ok(r),
                Err(BudgetDenial::PremiumRefused { .. }) if !economy => economy = true,
                Err(d) => break Err(d),
            }
        };
        let reservation = match reservation {
            Ok(r) => r,
            Err(d) => {
                out.status = Status::BudgetExhausted(d.to_string());
                return out;
            }
        };
        if let Ok(Err(e)) | Err(e) = reservation
            .durable
            .await
            .map(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| e.to_string())
        {
            out.status = Status::Failed(format!("audit write failed: {e}"));
            return out;
        }
        let view = BrainView {
            agent: &who.agent,
            context: &context,
            tools: &tools,
            economy,
            step,
        };
        let step_span = tracing::info_span!("agent_step", agent = %who.agent, step, economy);
        let reply = tokio::time::timeout(state.spec.step_timeout, state.brain.step(&view))
            .instrument(step_span)
            .await;
        let (action, cost, error) = match reply {
            Ok(Ok(r)) => (Some(r.action), r.cost.micros(), None),
            Ok(Err(e)) => (
                None,
                state.brain.max_step_cost(economy).micros(),
                Some(e.to_string()),
            ),
            Err(_) => (
                None,
                state.brain.max_step_cost(economy).micros(),
                Some(format!(
                    "the brain did not answer within {:?}",
                    state.spec.step_timeout
                )),
            ),
        };
        let done = who.record(
            "model.result",
            json!({"step": step, "action": action, "error": error}),
        );
        out.charged += inner.settle(reservation.id, cost, done, inner.clock.now());
        let Some(action) = action else {
            out.status = Status::Failed(error.unwrap_or_default());
            return out;
        };
        match action {
            BrainAction::Finish { answer } => {
                let guarded = inner.guards.output(ANSWER_CHANNEL, &answer);
                if guarded.changed() {
                    let record = who.record(
                        "guard.output",
                        json!({"channel": ANSWER_CHANNEL,
                               "redacted": guarded.redactions.iter().map(|f| json!({"kind": f.kind, "hash": f.hash})).collect::<Vec<_>>(),
                               "removed_urls": guarded.removed}),
                    );
                    inner
                        .journal
                        .defer(crate::journal::Batch::audit(record), inner.clock.now());
                }
                let answer = guarded.text;
                let record = who.record("agent.final", json!({"answer": answer}));
                inner
                    .journal
                    .defer(crate::journal::Batch::audit(record), inner.clock.now());
                out.status = Status::Finished(answer);
                return out;
            }
            BrainAction::CallTool { tool, args } => {
                context.push(ContextItem::Action {
                    text: format!("call {tool} with {args}"),
                });
                match inner.call_tool(who, &tool, args, Some(&provenance)).await {
                    Ok(result) => {
                        out.charged += result.charged;
                        let source = format!("tool {tool}");
                        let (content, note) = admit(
                            inner,
                            who,
                            &mut provenance,
                            &source,
                            Untrusted::Json(&result.value),
                        )
                        .await;
                        out.actions.push(ActionRecord {
                            kind: "tool".into(),
                            target: tool.clone(),
                            allowed: true,
                            detail: short(&content),
                        });
                        context.push(ContextItem::ToolResult {
                            tool,
                            content,
                            guard: Some(note),
                        });
                    }
                    Err(e) => {
                        if e.is_tool_failure() {
                            out.tool_failures += 1;
                        }
                        if let GateError::Store(s) = &e {
                            out.status = Status::Failed(s.to_string());
                            return out;
                        }
                        out.actions.push(ActionRecord {
                            kind: "tool".into(),
                            target: tool,
                            allowed: false,
                            detail: e.to_string(),
                        });
                        context.push(ContextItem::Error {
                            text: e.to_string(),
                        });
                    }
                }
            }
            BrainAction::Spawn(req) => {
                context.push(ContextItem::Action {
                    text: format!("spawn {} for: {}", req.agent, req.task),
                });
                let spawned = inner.spawn_requested(who, &req).await;
                match spawned {
                    Ok(child) => {
                        let child_outcome =
                            Box::pin(inner.run(child.id(), &req.task, req.pass.clone())).await;
                        let summary = match &child_outcome {
                            Ok(o) => o
                                .answer()
                                .map_or_else(|| format!("{:?}", o.status), str::to_string),
                            Err(e) => e.to_string(),
                        };
                        out.actions.push(ActionRecord {
                            kind: "spawn".into(),
                            target: req.agent.clone(),
                            allowed: true,
                            detail: short(&summary),
                        });
                        let source = format!("agent {}", req.agent);
                        let (content, note) = admit(
                            inner,
                            who,
                            &mut provenance,
                            &source,
                            Untrusted::Text(&summary),
                        )
                        .await;
                        context.push(ContextItem::Message {
                            from: req.agent,
                            content,
                            guard: Some(note),
                        });
                    }
                    Err(e) => {
                        out.actions.push(ActionRecord {
                            kind: "spawn".into(),
                            target: req.agent,
                            allowed: false,
                            detail: e.to_string(),
                        });
                        context.push(ContextItem::Error {
                            text: e.to_string(),
                        });
                    }
                }
            }
            BrainAction::Send { to, content } => {
                let envelope = Envelope {
                    v: 1,
                    from: who.agent.clone(),
                    to: to.clone(),
                    content,
                    sent_at_ms: unix_ms(inner.clock.now()),
                };
                let record = who.record("agent.message", json!({"to": to}));
                inner
                    .journal
                    .defer(crate::journal::Batch::audit(record), inner.clock.now());
                let result = inner.deliver(envelope);
                out.actions.push(ActionRecord {
                    kind: "send".into(),
                    target: to,
                    allowed: result.is_ok(),
                    detail: result.err().map(|e| e.to_string()).unwrap_or_default(),
                });
            }
        }
    }
    out
}

/// Untrusted content on its way into an agent's context.
enum Untrusted<'a> {
    /// A tool's result.
    Json(&'a serde_json::Value),
    /// A message.
    Text(&'a str),
}

/// Admits untrusted content: sanitized and scored, judged by the model guard if one is
/// configured, remembered for argument provenance, and audited when it is not clean.
async fn admit(
    inner: &Inner,
    who: &Identity,
    provenance: &mut Provenance,
    source: &str,
    raw: Untrusted<'_>,
) -> (String, GuardNote) {
    let sanitizer = inner.guards.sanitizer();
    let (mut content, scan, raw_text) = match raw {
        Untrusted::Json(v) => {
            let (clean, scan) = sanitizer.scan_json(v);
            (clean.to_string(), scan, v.to_string())
        }
        Untrusted::Text(t) => {
            let scan = sanitizer.scan(t);
            (scan.sanitized.clone(), scan, t.to_string())
        }
    };
    provenance.observe_untrusted(&raw_text);
    provenance.observe_untrusted(&content);
    for decoded in &scan.decoded {
        provenance.observe_untrusted(decoded);
    }
    let mut note = GuardNote::from(&scan);
    if let Some(model) = inner.guards.model() {
        let verdict = match model.check(&content).await {
            Ok(v) => v,
            Err(e) => GuardVerdict {
                safe: model.fail_open(),
                categories: Vec::new(),
                reason: format!(
                    "{e} (failing {})",
                    if model.fail_open() { "open" } else { "closed" }
                ),
            },
        };
        if !verdict.safe {
            content = format!("[withheld: {}]", verdict.reason);
            note.verdict = Verdict::Injection;
            note.signals.push("model_guard".into());
            let record = who.record(
                "guard.model",
                json!({"source": source, "reason": verdict.reason, "categories": verdict.categories}),
            );
            inner
                .journal
                .defer(crate::journal::Batch::audit(record), inner.clock.now());
        }
    }
    if note.verdict != Verdict::Clean {
        let record = who.record(
            "guard.input",
            json!({"source": source, "score": note.score, "verdict": note.verdict,
                   "signals": note.signals}),
        );
        inner
            .journal
            .defer(crate::journal::Batch::audit(record), inner.clock.now());
    }
    (content, note)
}
