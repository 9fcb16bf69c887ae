//! The agent actor and its bounded reason/act loop.
//!
//! Each step: the brain's cost is reserved, the brain proposes one action (within the
//! step timeout), and the action goes through the runtime — tool calls through the
//! gate, spawns through attenuation, messages by agent id. Results and messages
//! re-enter the context marked untrusted. The loop ends on an answer, on the step
//! limit, on a budget the agent can no longer pay, or on cancellation.
//!
//! A run executes in its own task, so the actor stays responsive while a step waits
//! (for a CONFIRM decision, a child, the brain): it answers status requests, takes
//! cancellation, queues further runs and stops on shutdown. Runs of one agent are
//! serialized. Cancellation is honoured where it loses nothing: before each step,
//! while the brain thinks (the reserved cost is settled), while a CONFIRM proposal
//! waits (the proposal is withdrawn) and while a child runs (the child is cancelled
//! too); a tool that already started runs to its end.

use crate::audit::AuditKind;
use crate::sync::LockExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use bulwark_capabilities::Tier;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::brain::SpawnRequest;
use crate::brain::{Brain, BrainAction, BrainView, ContextItem};
use crate::clock::unix_ms;
use crate::error::{BudgetDenial, GateError};
use crate::gate::{CallContext, Identity};
use crate::guard::{
    ANSWER_CHANNEL, AnswerProvenance, GuardNote, GuardVerdict, Provenance, Verdict,
};
use crate::ledger::Reservation;
use crate::runtime::{AgentSpec, Envelope, Inner};
use crate::tools::ToolManifest;

#[derive(Clone)]
pub(crate) struct AgentArgs {
    pub spec: AgentSpec,
    pub identity: Arc<Identity>,
    pub brain: Arc<dyn Brain>,
    pub inner: Weak<Inner>,
    /// The inbox, owned by the agent's actor (messages arrive through it) and kept
    /// across restarts.
    pub inbox: Arc<Mutex<Vec<Envelope>>>,
}

/// Who sends a message to an agent, which decides what a full inbox does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sender {
    /// The embedding program: a full inbox drops its oldest message.
    Program,
    /// Another agent: held to its share of the inbox, refused (never evicting others)
    /// beyond it or when the inbox is full.
    Agent,
}

/// Puts `envelope` into a bounded inbox by `from`'s policy.
fn accept(inbox: &mut Vec<Envelope>, envelope: Envelope, from: Sender) -> Result<(), String> {
    use crate::runtime::{MAX_INBOX, MAX_INBOX_PER_SENDER};
    match from {
        Sender::Program => {
            // A bounded inbox: a flood cannot exhaust memory.
            if inbox.len() >= MAX_INBOX {
                inbox.remove(0);
            }
        }
        Sender::Agent => {
            let mine = inbox.iter().filter(|e| e.from == envelope.from).count();
            if mine >= MAX_INBOX_PER_SENDER {
                return Err(format!(
                    "`{}` already has {MAX_INBOX_PER_SENDER} unread messages there",
                    envelope.from
                ));
            }
            if inbox.len() >= MAX_INBOX {
                return Err("the inbox is full".into());
            }
        }
    }
    inbox.push(envelope);
    Ok(())
}

pub(crate) enum AgentMsg {
    /// A message for the agent's inbox, read at the start of its next step.
    Deliver {
        envelope: Envelope,
        from: Sender,
        reply: Option<RpcReplyPort<Result<(), String>>>,
    },
    Run {
        context: Vec<ContextItem>,
        scope: RunScope,
        /// For a run a brain asked for (a spawned child's task): what that brain had
        /// seen. Its task and passed strings are then no more trusted than that.
        inherited: Option<Box<Provenance>>,
        reply: RpcReplyPort<Outcome>,
    },
    CallTool {
        tool: String,
        args: serde_json::Value,
        reply: RpcReplyPort<Result<crate::gate::CallResult, GateError>>,
    },
    Cancel {
        reason: String,
        reply: RpcReplyPort<bool>,
    },
    Status {
        reply: RpcReplyPort<AgentStatus>,
    },
    /// The current run's task ended.
    RunEnded,
    /// The current run's task panicked: the actor fails and its supervisor restarts it.
    RunPanicked(String),
}

/// The work a run belongs to: the agent that was given the task and the task itself.
/// A child's runs carry its root's scope, so proposals group by the work they serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunScope {
    pub root_agent: String,
    pub root_task: String,
}

/// What the current task serves; the gate reads it while a CONFIRM step waits.
#[derive(Clone)]
pub(crate) struct RunControl {
    pub cancel: CancellationToken,
    pub reason: Arc<Mutex<String>>,
    pub scope: Option<RunScope>,
    pub waiting: Arc<Mutex<Option<String>>>,
}

impl RunControl {
    /// Why the run was cancelled, once it was.
    pub(crate) fn cancelled(&self) -> Option<String> {
        self.cancel
            .is_cancelled()
            .then(|| self.reason.lock_or_recover().clone())
    }
}

/// What an agent is doing, as its actor reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AgentStatus {
    /// Whether a run is in progress.
    pub running: bool,
    /// Runs waiting behind it.
    pub queued: usize,
    /// Direct tool calls in progress.
    pub calls: usize,
    /// The CONFIRM proposal the current run waits on, if any.
    pub waiting_on: Option<String>,
}

/// A run waiting for the one in progress.
struct QueuedRun {
    context: Vec<ContextItem>,
    scope: RunScope,
    inherited: Option<Box<Provenance>>,
    reply: RpcReplyPort<Outcome>,
}

/// The actor's state: its arguments, the run in progress and the runs queued behind it.
pub(crate) struct AgentState {
    args: AgentArgs,
    current: Option<RunControl>,
    queue: VecDeque<QueuedRun>,
    calls: Vec<RunControl>,
    /// Cancels everything in progress when it fires; replaced after each cancellation.
    generation: CancellationToken,
    reason: Arc<Mutex<String>>,
}

impl AgentState {
    fn control(&self, scope: Option<RunScope>) -> RunControl {
        RunControl {
            cancel: self.generation.child_token(),
            reason: self.reason.clone(),
            scope,
            waiting: Arc::new(Mutex::new(None)),
        }
    }

    fn cancel_all(&mut self, reason: &str) -> bool {
        self.calls.retain(|c| !c.cancel.is_cancelled());
        let busy = self.current.is_some() || !self.calls.is_empty();
        *self.reason.lock_or_recover() = reason.to_string();
        self.generation.cancel();
        self.generation = CancellationToken::new();
        self.reason = Arc::new(Mutex::new(String::new()));
        busy
    }

    /// Starts the next queued run unless one is in progress.
    fn start_next(&mut self, me: &ActorRef<AgentMsg>) {
        if self.current.is_some() {
            return;
        }
        let Some(QueuedRun {
            context,
            scope,
            inherited,
            reply,
        }) = self.queue.pop_front()
        else {
            return;
        };
        let Some(inner) = self.args.inner.upgrade() else {
            return;
        };
        let control = self.control(Some(scope));
        self.current = Some(control.clone());
        let args = self.args.clone();
        let me = me.clone();
        let span = tracing::info_span!(
            "agent_run",
            agent = %args.identity.agent,
            token_id = %args.identity.token.id()
        );
        let run = tokio::spawn(
            async move { run_loop(&inner, &args, &control, context, inherited).await }
                .instrument(span),
        );
        tokio::spawn(async move {
            match run.await {
                Ok(outcome) => {
                    let _ = reply.send(outcome);
                    let _ = me.cast(AgentMsg::RunEnded);
                }
                Err(e) => {
                    // The reply is dropped: the caller learns the run failed.
                    let _ = me.cast(AgentMsg::RunPanicked(e.to_string()));
                }
            }
        });
    }
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
    /// The run was cancelled, with the reason given.
    Cancelled(String),
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
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        Ok(AgentState {
            args,
            current: None,
            queue: VecDeque::new(),
            calls: Vec::new(),
            generation: CancellationToken::new(),
            reason: Arc::new(Mutex::new(String::new())),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<AgentMsg>,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        // Work in progress ends at its next cancellation point; on shutdown a waiting
        // CONFIRM step sees the runtime closing first and leaves its proposal pending.
        state.cancel_all("the agent stopped");
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentMsg::Run {
                context,
                scope,
                inherited,
                reply,
            } => {
                state.queue.push_back(QueuedRun {
                    context,
                    scope,
                    inherited,
                    reply,
                });
                state.start_next(&me);
            }
            AgentMsg::RunEnded => {
                state.current = None;
                state.start_next(&me);
            }
            AgentMsg::RunPanicked(e) => {
                state.current = None;
                return Err(format!("the run panicked: {e}").into());
            }
            AgentMsg::CallTool { tool, args, reply } => {
                state.calls.retain(|c| !c.cancel.is_cancelled());
                let Some(inner) = state.args.inner.upgrade() else {
                    let _ = reply.send(Err(GateError::UnknownAgent(
                        state.args.identity.agent.clone(),
                    )));
                    return Ok(());
                };
                let control = state.control(None);
                state.calls.push(control.clone());
                let identity = state.args.identity.clone();
                tokio::spawn(async move {
                    // The embedding program calls directly: its arguments are its own.
                    let ctx = CallContext::new(&identity).in_run(&control);
                    let result = Box::pin(inner.sign_and_call(ctx, &tool, args)).await;
                    let _ = reply.send(result);
                    // Marks the call finished for status and cancellation.
                    control.cancel.cancel();
                });
            }
            AgentMsg::Cancel { reason, reply } => {
                let busy = state.cancel_all(&reason);
                let _ = reply.send(busy);
            }
            AgentMsg::Deliver {
                envelope,
                from,
                reply,
            } => {
                let accepted = accept(&mut state.args.inbox.lock_or_recover(), envelope, from);
                if let Some(reply) = reply {
                    let _ = reply.send(accepted);
                }
            }
            AgentMsg::Status { reply } => {
                state.calls.retain(|c| !c.cancel.is_cancelled());
                let waiting_on = state
                    .current
                    .as_ref()
                    .and_then(|c| c.waiting.lock_or_recover().clone());
                let _ = reply.send(AgentStatus {
                    running: state.current.is_some(),
                    queued: state.queue.len(),
                    calls: state.calls.len(),
                    waiting_on,
                });
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

/// What the run loop ends a step with.
enum Flow {
    /// On to the next step.
    Next,
    /// The run is over; its outcome is final.
    End,
}

/// One run in progress: what the agent has seen and done so far.
struct Run<'a> {
    inner: &'a Arc<Inner>,
    args: &'a AgentArgs,
    control: &'a RunControl,
    out: Outcome,
    context: Vec<ContextItem>,
    provenance: Provenance,
    tools: Vec<(ToolManifest, Tier)>,
}

/// The bounded reason/act loop: each step checks for cancellation and shutdown,
/// admits the messages that arrived, lets the brain think (its cost reserved first)
/// and carries out the one action it chose.
async fn run_loop(
    inner: &Arc<Inner>,
    args: &AgentArgs,
    control: &RunControl,
    context: Vec<ContextItem>,
    inherited: Option<Box<Provenance>>,
) -> Outcome {
    let mut run = Run::new(inner, args, control, context, inherited);
    for step in 0..args.spec.max_steps {
        if let Flow::End = run.begin_step(step) {
            return run.out;
        }
        run.admit_messages().await;
        let Some(action) = run.think(step).await else {
            return run.out;
        };
        if let Flow::End = run.act(action).await {
            return run.out;
        }
    }
    run.out
}

impl<'a> Run<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        args: &'a AgentArgs,
        control: &'a RunControl,
        context: Vec<ContextItem>,
        inherited: Option<Box<Provenance>>,
    ) -> Self {
        let who = &args.identity;
        // What this run has seen, for argument provenance. A task from the embedding
        // program (and what it passed) is trusted. A task a brain wrote for a child is
        // text that brain chose: it is no more trusted than what that brain had read,
        // so the child starts from its parent's view and its task adds nothing
        // trusted. Everything admitted later is untrusted.
        let provenance = match inherited {
            Some(parent) => *parent,
            None => {
                let mut p = Provenance::new();
                for item in &context {
                    if let ContextItem::Task { text } | ContextItem::Passed { text } = item {
                        p.observe_trusted(text);
                    }
                }
                p
            }
        };
        Run {
            inner,
            args,
            control,
            out: Outcome {
                agent: who.agent.clone(),
                status: Status::StepLimit,
                steps: 0,
                actions: Vec::new(),
                charged: 0,
                tool_failures: 0,
            },
            context,
            provenance,
            tools: visible_tools(inner, who),
        }
    }

    fn who(&self) -> &'a Identity {
        &self.args.identity
    }

    /// Ends the run when it was cancelled or the runtime is shutting down.
    fn begin_step(&mut self, step: usize) -> Flow {
        if let Some(reason) = self.control.cancelled() {
            return self.cancel(reason);
        }
        if *self.inner.closing.borrow() {
            // Shutdown abandons the run at its current step.
            self.out.status = Status::Failed("the runtime shut down".into());
            return Flow::End;
        }
        self.out.steps = step + 1;
        Flow::Next
    }

    fn cancel(&mut self, reason: String) -> Flow {
        cancel_run(self.inner, self.who(), &mut self.out, reason);
        Flow::End
    }

    /// Admits the messages that arrived since the last step, marked untrusted.
    async fn admit_messages(&mut self) {
        let arrived: Vec<Envelope> = std::mem::take(&mut *self.args.inbox.lock_or_recover());
        for e in arrived {
            let source = format!("agent {}", e.from);
            let (content, note) = admit(
                self.inner,
                self.who(),
                &mut self.provenance,
                &source,
                Untrusted::Text(&e.content),
            )
            .await;
            self.context.push(ContextItem::Message {
                from: e.from,
                content,
                guard: Some(note),
            });
        }
    }

    /// Reserves the step's model cost (at 80 % of the budget only the cheap model is
    /// allowed), durably; `None` ends the run.
    async fn reserve_step(&mut self, step: usize) -> Option<(Reservation, u64, bool)> {
        let (inner, who, brain) = (self.inner, self.who(), &self.args.brain);
        let now = inner.clock.now();
        let mut economy = false;
        let reserved = loop {
            // The reservation covers what the brain will be shown (a model is billed
            // for its prompt as well as its completion).
            let view = self.view(step, economy);
            let cost = brain.step_reservation(&view).micros();
            let intent = who.record(
                AuditKind::ModelCall,
                json!({"step": step, "reserved_micro_usd": cost, "economy": economy}),
            );
            match inner.reserve(who, cost, brain.premium(economy), intent, now) {
                Ok(r) => break (r, cost),
                Err(BudgetDenial::PremiumRefused { .. }) if !economy => economy = true,
                Err(d) => {
                    self.out.status = Status::BudgetExhausted(d.to_string());
                    return None;
                }
            }
        };
        let (mut reservation, cost) = reserved;
        let written = (&mut reservation.durable)
            .await
            .unwrap_or(Err(crate::error::StoreError::WriterGone));
        if let Err(e) = written {
            self.out.status = Status::Failed(format!("audit write failed: {e}"));
            return None;
        }
        Some((reservation, cost, economy))
    }

    fn view(&self, step: usize, economy: bool) -> BrainView<'_> {
        BrainView {
            agent: &self.args.identity.agent,
            context: &self.context,
            tools: &self.tools,
            economy,
            step,
        }
    }

    /// One brain step: its cost reserved, its answer within the step timeout (or
    /// until the run is cancelled), the cost settled. `None` ends the run.
    async fn think(&mut self, step: usize) -> Option<BrainAction> {
        let (reservation, reserved, economy) = self.reserve_step(step).await?;
        let (inner, who, spec) = (self.inner, self.who(), &self.args.spec);
        let step_span = tracing::info_span!("agent_step", agent = %who.agent, step, economy);
        let reply = {
            let view = self.view(step, economy);
            let thinking = tokio::time::timeout(spec.step_timeout, self.args.brain.step(&view))
                .instrument(step_span);
            tokio::select! {
                r = thinking => Some(r),
                () = self.control.cancel.cancelled() => None,
            }
        };
        let (action, cost, error) = match reply {
            // Cancelled while the brain thought: the reserved cost is charged in full.
            None => (None, reserved, Some("cancelled".to_string())),
            // A step is charged what it reports, at most its reservation; a brain that
            // reports more fails closed (its action is dropped, the reservation charged).
            Some(Ok(Ok(r))) if r.cost.micros() > reserved => (
                None,
                reserved,
                Some(format!(
                    "the brain reported a cost of ${}, more than the ${} reserved for the step",
                    r.cost,
                    crate::runtime::dollars(reserved)
                )),
            ),
            Some(Ok(Ok(r))) => (Some(r.action), r.cost.micros(), None),
            Some(Ok(Err(e))) => (None, reserved, Some(e.to_string())),
            Some(Err(_)) => (
                None,
                reserved,
                Some(format!(
                    "the brain did not answer within {:?}",
                    spec.step_timeout
                )),
            ),
        };
        let done = who.record(
            AuditKind::ModelResult,
            json!({"step": step, "action": action, "error": error}),
        );
        self.out.charged += inner
            .ledger
            .settle(reservation.id, cost, done, inner.clock.now());
        if action.is_none() {
            match self.control.cancelled() {
                Some(reason) => _ = self.cancel(reason),
                None => self.out.status = Status::Failed(error.unwrap_or_default()),
            }
        }
        action
    }

    /// Carries out the brain's action.
    async fn act(&mut self, action: BrainAction) -> Flow {
        match action {
            BrainAction::Finish { answer } => {
                self.finish(answer);
                Flow::End
            }
            BrainAction::CallTool { tool, args } => self.call_tool(tool, args).await,
            BrainAction::Spawn(req) => {
                self.spawn(req).await;
                Flow::Next
            }
            BrainAction::Send { to, content } => {
                self.send(to, content).await;
                Flow::Next
            }
        }
    }

    /// The answer passes the answer channel's output guard, then what survived is
    /// marked where it came from.
    fn finish(&mut self, answer: String) {
        let (inner, who) = (self.inner, self.who());
        let guarded = inner.guards.output(ANSWER_CHANNEL, &answer);
        if guarded.changed() {
            inner.audit_later(who.record(
                AuditKind::GuardOutput,
                json!({"channel": ANSWER_CHANNEL,
                       "redacted": guarded.redactions.iter().map(|f| json!({"kind": f.kind, "hash": f.hash})).collect::<Vec<_>>(),
                       "removed_urls": guarded.removed}),
            ));
        }
        let answer = mark_untrusted_values(inner, who, &self.provenance, guarded.text);
        inner.audit_later(who.record(AuditKind::AgentFinal, json!({"answer": answer})));
        self.out.status = Status::Finished(answer);
    }

    /// A tool call through the gate; its result re-enters the context untrusted.
    async fn call_tool(&mut self, tool: String, args: serde_json::Value) -> Flow {
        self.context.push(ContextItem::Action {
            text: format!("call {tool} with {args}"),
        });
        let ctx = CallContext::new(self.who())
            .in_run(self.control)
            .with_provenance(&self.provenance);
        let called = self.inner.sign_and_call(ctx, &tool, args).await;
        match called {
            Ok(result) => {
                self.out.charged += result.charged;
                let source = format!("tool {tool}");
                let (content, note) = admit(
                    self.inner,
                    self.who(),
                    &mut self.provenance,
                    &source,
                    Untrusted::Json(&result.value),
                )
                .await;
                self.record_action("tool", tool.clone(), true, short(&content));
                self.context.push(ContextItem::ToolResult {
                    tool,
                    content,
                    guard: Some(note),
                });
            }
            Err(e) => {
                if e.is_tool_failure() {
                    self.out.tool_failures += 1;
                }
                if e.ends_run() {
                    self.out.status = Status::Failed(e.to_string());
                    return Flow::End;
                }
                self.record_action("tool", tool, false, e.to_string());
                self.context.push(ContextItem::Error {
                    text: e.to_string(),
                });
            }
        }
        Flow::Next
    }

    fn record_action(&mut self, kind: &str, target: String, allowed: bool, detail: String) {
        self.out.actions.push(ActionRecord {
            kind: kind.into(),
            target,
            allowed,
            detail,
        });
    }

    /// Spawns the child the brain asked for and runs its task; the child's answer
    /// re-enters the context untrusted.
    async fn spawn(&mut self, req: SpawnRequest) {
        self.context.push(ContextItem::Action {
            text: format!("spawn {} for: {}", req.agent, req.task),
        });
        // A child placed on another node of the cluster is spawned there.
        let here = self.inner.remote().map(|r| r.node().to_string());
        let elsewhere = req.node.as_deref().filter(|n| here.as_deref() != Some(*n));
        let spawned = match elsewhere {
            Some(node) => self.inner.spawn_remote(&self.who().agent, node, &req).await,
            None => self.inner.spawn_requested(self.who(), &req).await,
        };
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.record_action("spawn", req.agent, false, e.to_string());
                self.context.push(ContextItem::Error {
                    text: e.to_string(),
                });
                return;
            }
        };
        let summary = match self.run_child(&child, &req).await {
            Ok(o) => o
                .answer()
                .map_or_else(|| format!("{:?}", o.status), str::to_string),
            Err(e) => e.to_string(),
        };
        self.record_action("spawn", req.agent.clone(), true, short(&summary));
        let source = format!("agent {}", req.agent);
        let (content, note) = admit(
            self.inner,
            self.who(),
            &mut self.provenance,
            &source,
            Untrusted::Text(&summary),
        )
        .await;
        self.context.push(ContextItem::Message {
            from: req.agent,
            content,
            guard: Some(note),
        });
    }

    /// Runs a child's task in this run's scope; cancelling this run cancels the
    /// child, whose outcome is still awaited so nothing is lost.
    async fn run_child(
        &self,
        child: &crate::runtime::AgentHandle,
        req: &SpawnRequest,
    ) -> Result<Outcome, crate::error::RunError> {
        let child_run: futures::future::BoxFuture<'_, Result<Outcome, crate::error::RunError>> =
            if child.node().is_some() {
                Box::pin(child.run_with(&req.task, req.pass.clone()))
            } else {
                Box::pin(self.inner.run_scoped(
                    child.id(),
                    &req.task,
                    req.pass.clone(),
                    self.control.scope.clone(),
                    Some(Box::new(self.provenance.clone())),
                ))
            };
        tokio::pin!(child_run);
        tokio::select! {
            o = &mut child_run => o,
            () = self.control.cancel.cancelled() => {
                let reason = self.control.cancelled().unwrap_or_default();
                let _ = child.cancel(&reason).await;
                child_run.await
            }
        }
    }

    /// A message to another agent, through the messaging capability; audited.
    async fn send(&mut self, to: String, content: String) {
        let (inner, who) = (self.inner, self.who());
        let envelope = Envelope {
            v: 1,
            from: who.agent.clone(),
            to: to.clone(),
            content,
            sent_at_ms: unix_ms(inner.clock.now()),
        };
        let result = inner.send_from_agent(who, envelope).await;
        inner.audit_later(who.record(
            AuditKind::AgentMessage,
            json!({"to": to, "allowed": result.is_ok(),
                   "reason": result.as_ref().err().map(ToString::to_string)}),
        ));
        let allowed = result.is_ok();
        let detail = result.err().map(|e| e.to_string()).unwrap_or_default();
        self.record_action("send", to, allowed, detail);
    }
}

/// Marks (or withholds, by policy) each link, address or account number in the answer
/// that the run saw only in untrusted content, with where it came from; audited.
fn mark_untrusted_values(
    inner: &Inner,
    who: &Identity,
    provenance: &Provenance,
    answer: String,
) -> String {
    let policy = inner.guards.config().answer_provenance;
    if policy == AnswerProvenance::Off {
        return answer;
    }
    let found = provenance.untrusted_values(&answer);
    if found.is_empty() {
        return answer;
    }
    let mut out = String::with_capacity(answer.len() + 64 * found.len());
    let mut at = 0;
    for f in &found {
        if f.span.start < at {
            continue;
        }
        out.push_str(&answer[at..f.span.start]);
        match policy {
            AnswerProvenance::Withhold => {
                out.push_str(&format!(
                    "[withheld: {} from {}]",
                    f.kind.as_str(),
                    f.source
                ));
            }
            _ => {
                // The mark goes after the link's markup (`[text](URL)`, `<URL>`), so
                // the link still renders.
                let before = &answer[..f.span.start];
                let after = &answer[f.span.end..];
                let markup = (before.ends_with("](") && after.starts_with(')'))
                    || (before.ends_with('<') && after.starts_with('>'));
                let end = f.span.end + usize::from(markup);
                out.push_str(&answer[f.span.start..end]);
                out.push_str(&format!(" [unverified: from {}]", f.source));
                at = end;
                continue;
            }
        }
        at = f.span.end;
    }
    out.push_str(&answer[at..]);
    let record = who.record(
        AuditKind::GuardAnswerProvenance,
        json!({"policy": policy, "values": found}),
    );
    inner.audit_later(record);
    out
}

/// Ends a run that was cancelled, with an audit entry.
fn cancel_run(inner: &Inner, who: &Identity, out: &mut Outcome, reason: String) {
    let record = who.record(
        AuditKind::AgentCancelled,
        json!({"reason": reason, "steps": out.steps}),
    );
    inner.audit_later(record);
    out.status = Status::Cancelled(reason);
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
    // Both what arrived and what the model sees are remembered; a tool result by the
    // strings inside it, not its JSON text.
    let (mut content, scan) = match raw {
        Untrusted::Json(v) => {
            let (clean, scan) = sanitizer.scan_json(v);
            provenance.observe_untrusted_json(v, source);
            provenance.observe_untrusted_json(&clean, source);
            (clean.to_string(), scan)
        }
        Untrusted::Text(t) => {
            let scan = sanitizer.scan(t);
            provenance.observe_untrusted_from(t, source);
            provenance.observe_untrusted_from(&scan.sanitized, source);
            (scan.sanitized.clone(), scan)
        }
    };
    for decoded in &scan.decoded {
        provenance.observe_untrusted_from(decoded, source);
    }
    let mut note = GuardNote::from(&scan);
    // The models judge what the agent would see and the payloads decoded from it, in
    // one text: one call (and one cache entry) per item.
    let judged = crate::guard::local::judged_text(&content, &scan.decoded);
    for model in inner.guards.models() {
        let verdict = match model.check(&judged).await {
            Ok(v) => v,
            Err(e) => GuardVerdict {
                safe: model.fail_open(),
                categories: Vec::new(),
                reason: format!(
                    "{e} (failing {})",
                    if model.fail_open() { "open" } else { "closed" }
                ),
                score: None,
                evidence: None,
            },
        };
        if !verdict.safe {
            content = format!("[withheld: {}]", verdict.reason);
            note.verdict = Verdict::Injection;
            note.signals.push(model.name().into());
            let record = who.record(
                AuditKind::GuardModel,
                json!({"source": source, "detector": model.name(), "reason": verdict.reason,
                       "categories": verdict.categories, "score": verdict.score,
                       "evidence": verdict.evidence}),
            );
            inner.audit_later(record);
            break;
        }
    }
    if note.verdict != Verdict::Clean {
        let record = who.record(
            AuditKind::GuardInput,
            json!({"source": source, "score": note.score, "verdict": note.verdict,
                   "signals": note.signals}),
        );
        inner.audit_later(record);
    }
    (content, note)
}
