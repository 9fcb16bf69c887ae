//! What a node serves to the rest of the cluster: holder keys and spawns for agents it
//! will host, the agents it hosts, and the tools whose code runs on it.
//!
//! Subjects, under `bulwark.<cluster>.`: `node.<id>.hold`, `node.<id>.spawn`,
//! `node.<id>.agents`, `node.<id>.tools`, `node.<id>.proposals`, `node.<id>.decide`
//! (answered by node `id`; a decision is an operator's signature, checked by the
//! runtime), `root` (the root
//! public key tokens are verified against, for clients), `agent.<name>`
//! (answered by the node hosting the agent; no queue group, so NATS routes to it) and
//! `tool.<name>` (one queue group over the nodes hosting the tool). Every request but
//! the two listings is an envelope, opened by [`Verifier::open`] before anything
//! else; a refusal is audited (`cluster.refused`) and answered with its reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bulwark_capabilities::{KeyPair, Token};
use bulwark_runtime::{AgentSpec, Runtime};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::envelope::{Opened, Verifier};
use super::node::subject;
use super::wire::{
    AgentAsk, AgentView, Answer, Call, CallResult, Decide, Held, Hold, RunView, Spawn, Spawned,
    ToolInfo, subject_safe,
};

/// Most holder keys a node keeps waiting for their spawn.
const MAX_HOLDS: usize = 1024;

/// How long a holder key waits for its spawn.
const HOLD_FOR: Duration = Duration::from_secs(300);

/// Most requests a node works on at once; beyond it new ones are refused.
const MAX_IN_FLIGHT: usize = 512;

/// A holder key handed out for a child agent, waiting for its spawn.
struct Pending {
    key: KeyPair,
    parent: String,
    at: Instant,
}

/// What a request on one subject is for.
#[derive(Clone)]
enum Route {
    Hold,
    Spawn,
    Agent(String),
    Tool,
}

impl Route {
    fn kind(&self) -> &'static str {
        match self {
            Route::Hold => "hold",
            Route::Spawn => "spawn",
            Route::Agent(_) => "agent",
            Route::Tool => "call",
        }
    }
}

/// The serving half of a node.
pub(crate) struct Host {
    pub runtime: Runtime,
    pub client: async_nats::Client,
    pub cluster: String,
    pub node: String,
    verifier: Verifier,
    verifier_root: bulwark_capabilities::PublicKey,
    holds: std::sync::Mutex<HashMap<String, Pending>>,
    leaving: AtomicBool,
    in_flight: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<super::metrics::NodeMetrics>,
}

impl Host {
    pub fn new(
        runtime: Runtime,
        client: async_nats::Client,
        cluster: String,
        node: String,
        root: bulwark_capabilities::PublicKey,
        metrics: Arc<super::metrics::NodeMetrics>,
    ) -> Arc<Host> {
        Arc::new(Host {
            runtime,
            client,
            cluster,
            node,
            verifier: Verifier::new(root),
            verifier_root: root,
            holds: std::sync::Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        })
    }

    /// Subscribes to the node's own subjects and to each hosted tool's. Returns once
    /// the subscriptions are sent (the caller flushes).
    pub async fn start(self: &Arc<Self>) -> Result<(), async_nats::SubscribeError> {
        let node = self.node.clone();
        self.listen(format!("node.{node}.hold"), Route::Hold, None)
            .await?;
        self.listen(format!("node.{node}.spawn"), Route::Spawn, None)
            .await?;
        let host = self.clone();
        let agents = self
            .client
            .subscribe(subject(&self.cluster, &format!("node.{node}.agents")))
            .await?;
        self.answer_plain(agents, move || {
            let host = host.clone();
            async move { host.agent_views().await }
        });
        let host = self.clone();
        let tools = self
            .client
            .subscribe(subject(&self.cluster, &format!("node.{node}.tools")))
            .await?;
        self.answer_plain(tools, move || {
            let host = host.clone();
            async move { host.tool_infos() }
        });
        let host = self.clone();
        let proposals = self
            .client
            .subscribe(subject(&self.cluster, &format!("node.{node}.proposals")))
            .await?;
        self.answer_plain(proposals, move || {
            let host = host.clone();
            async move { host.proposals() }
        });
        let host = self.clone();
        let mut decisions = self
            .client
            .subscribe(subject(&self.cluster, &format!("node.{node}.decide")))
            .await?;
        tokio::spawn(async move {
            while let Some(msg) = decisions.next().await {
                let Some(reply) = msg.reply else { continue };
                let answer = match serde_json::from_slice::<Decide>(&msg.payload) {
                    Ok(d) if msg.payload.len() <= 64 * 1024 => {
                        match host.runtime.decide(&d.id, &d.decision).await {
                            Ok(p) => encode(&Answer::Ok(p)),
                            Err(e) => encode(&Answer::<()>::Refused(e.to_string())),
                        }
                    }
                    Ok(_) => encode(&Answer::<()>::Refused(
                        "a decision of more than 64 KiB".into(),
                    )),
                    Err(e) => encode(&Answer::<()>::Refused(format!("malformed decision: {e}"))),
                };
                host.send_bytes(reply, answer).await;
            }
        });
        let root = self.verifier_root.to_hex();
        let roots = self
            .client
            .subscribe(subject(&self.cluster, "root"))
            .await?;
        self.answer_plain(roots, move || {
            let root = root.clone();
            async move { root }
        });
        for tool in self.tool_infos() {
            self.listen(
                format!("tool.{}", tool.name),
                Route::Tool,
                Some(format!("bulwark-tool-{}", tool.name)),
            )
            .await?;
        }
        Ok(())
    }

    /// Requests being worked on.
    pub fn load(&self) -> usize {
        MAX_IN_FLIGHT - self.in_flight.available_permits()
    }

    /// From now on spawns are refused (the node is leaving).
    pub fn drain(&self) {
        self.leaving.store(true, Ordering::SeqCst);
    }

    fn answer_plain<T, F, Fut>(&self, mut sub: async_nats::Subscriber, body: F)
    where
        T: Serialize + Send,
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send,
    {
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let (Some(reply), Ok(bytes)) = (msg.reply, serde_json::to_vec(&body().await)) {
                    let _ = client.publish(reply, bytes.into()).await;
                }
            }
        });
    }

    async fn listen(
        self: &Arc<Self>,
        rest: String,
        route: Route,
        queue: Option<String>,
    ) -> Result<(), async_nats::SubscribeError> {
        let to = subject(&self.cluster, &rest);
        let mut sub = match queue {
            Some(q) => self.client.queue_subscribe(to.clone(), q).await?,
            None => self.client.subscribe(to.clone()).await?,
        };
        let host = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let Ok(permit) = host.in_flight.clone().try_acquire_owned() else {
                    let busy: Answer<()> = Answer::Refused("the node is busy; retry".into());
                    host.send(reply, &busy).await;
                    continue;
                };
                let host = host.clone();
                let (to, route) = (to.clone(), route.clone());
                let span = tracing::info_span!("cluster_request", subject = %to, node = %host.node);
                if let Some(headers) = &msg.headers {
                    let context: HashMap<String, String> = ["traceparent", "tracestate"]
                        .into_iter()
                        .filter_map(|k| headers.get(k).map(|v| (k.to_string(), v.to_string())))
                        .collect();
                    bulwark_runtime::telemetry::follow_trace(&span, &context);
                }
                tokio::spawn(
                    async move {
                        let answer = host.handle(&to, &route, &msg.payload).await;
                        host.send_bytes(reply, answer).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        });
        Ok(())
    }

    async fn send<T: Serialize>(&self, reply: async_nats::Subject, answer: &Answer<T>) {
        if let Ok(bytes) = serde_json::to_vec(answer) {
            self.send_bytes(reply, bytes).await;
        }
    }

    async fn send_bytes(&self, reply: async_nats::Subject, bytes: Vec<u8>) {
        let _ = self.client.publish(reply, bytes.into()).await;
    }

    /// Opens the envelope and does what it asks; the answer as JSON.
    async fn handle(self: &Arc<Self>, to: &str, route: &Route, payload: &[u8]) -> Vec<u8> {
        let opened = self
            .runtime
            .with_revocations(|r| self.verifier.open(payload, to, SystemTime::now(), r));
        let opened = match opened {
            Ok(o) if o.kind == route.kind() => o,
            Ok(o) => {
                let why = format!(
                    "a `{}` envelope sent to a `{}` subject",
                    o.kind,
                    route.kind()
                );
                return self.refuse(&o.token, to, "kind", why);
            }
            Err(e) => {
                tracing::warn!(subject = to, reason = e.reason(), "envelope refused: {e}");
                self.metrics.envelope_refused(e.reason());
                self.runtime.record_refusal(
                    "",
                    "",
                    serde_json::json!({"subject": to, "reason": e.reason(), "error": e.to_string()}),
                );
                return encode(&Answer::<()>::Refused(e.to_string()));
            }
        };
        let token = opened.token.clone();
        let answer = match route {
            Route::Hold => self.hold(opened).map(|h| encode(&Answer::Ok(h))),
            Route::Spawn => self.spawn(opened).await.map(|s| encode(&Answer::Ok(s))),
            Route::Agent(name) => self.ask(name, opened).await,
            Route::Tool => self.call(opened).await.map(|r| encode(&Answer::Ok(r))),
        };
        answer.unwrap_or_else(|why| self.refuse(&token, to, route.kind(), why))
    }

    fn refuse(&self, token: &Token, to: &str, what: &str, why: String) -> Vec<u8> {
        self.runtime.record_refusal(
            token.agent(),
            &token.id(),
            serde_json::json!({"subject": to, "reason": what, "error": why}),
        );
        encode(&Answer::<()>::Refused(why))
    }

    fn hold(&self, opened: Opened) -> Result<Held, String> {
        let Hold { agent } = body(&opened)?;
        if !subject_safe(&agent) {
            return Err(format!(
                "agent id `{agent}` cannot name a subject: use letters, digits, - and _"
            ));
        }
        if self.runtime.agent(&agent).is_some() {
            return Err(format!("node {} already hosts agent `{agent}`", self.node));
        }
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.retain(|_, p| p.at.elapsed() < HOLD_FOR);
        if holds.len() >= MAX_HOLDS && !holds.contains_key(&agent) {
            return Err("too many spawns waiting on this node; retry".into());
        }
        let key = KeyPair::generate();
        let holder = key.public().to_hex();
        holds.insert(
            agent,
            Pending {
                key,
                parent: opened.token.id(),
                at: Instant::now(),
            },
        );
        Ok(Held {
            holder,
            root_public_key: opened.token.root_key().to_hex(),
        })
    }

    async fn spawn(self: &Arc<Self>, opened: Opened) -> Result<Spawned, String> {
        if self.leaving.load(Ordering::SeqCst) {
            return Err(format!(
                "node {} is shutting down and takes no spawns",
                self.node
            ));
        }
        let Spawn {
            agent,
            brain,
            child,
        } = body(&opened)?;
        let parent = &opened.token;
        let child = Token::from_base64(&child, &parent.root_key())
            .map_err(|e| format!("the child token does not verify: {e}"))?;
        if self.runtime.any_revoked(child.revocation_ids()) {
            return Err("the child token is revoked".into());
        }
        parent.check_child(&child).map_err(|e| e.to_string())?;
        if child.agent() != agent {
            return Err(format!(
                "the child token is for agent `{}`, not `{agent}`",
                child.agent()
            ));
        }
        let brain = self
            .runtime
            .brain(&brain)
            .ok_or_else(|| format!("node {} offers no brain profile `{brain}`", self.node))?;
        let key = {
            let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            let held = holds
                .get(&agent)
                .filter(|p| p.at.elapsed() < HOLD_FOR)
                .ok_or_else(|| {
                    format!(
                        "no holder key of node {} waits for agent `{agent}` (ask for one first)",
                        self.node
                    )
                })?;
            if held.parent != parent.id() {
                return Err("the holder key was handed to another parent token".into());
            }
            if child.holder() != held.key.public() {
                return Err(format!(
                    "the child token names holder {}, not the key node {} generated",
                    child.holder().to_hex(),
                    self.node
                ));
            }
            holds.remove(&agent).map(|p| p.key)
        }
        .ok_or("the holder key is gone")?;
        let holder = key.public().to_hex();
        self.runtime
            .spawn_agent(AgentSpec::with_key(agent.clone(), key), child, brain)
            .await
            .map_err(|e| e.to_string())?;
        self.host_agent(&agent).await?;
        Ok(Spawned {
            agent,
            node: self.node.clone(),
            holder,
        })
    }

    /// Starts answering on the subject of `agent`, now hosted here.
    /// (Boxed: serving a spawn starts another listener.)
    pub fn host_agent(
        self: &Arc<Self>,
        agent: &str,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let (host, agent) = (self.clone(), agent.to_string());
        Box::pin(async move {
            host.listen(format!("agent.{agent}"), Route::Agent(agent.clone()), None)
                .await
                .map_err(|e| e.to_string())?;
            host.client.flush().await.map_err(|e| e.to_string())
        })
    }

    async fn ask(&self, name: &str, opened: Opened) -> Result<Vec<u8>, String> {
        let ask: AgentAsk = body(&opened)?;
        let handle = self
            .runtime
            .agent(name)
            .ok_or_else(|| format!("agent `{name}` is not running on node {}", self.node))?;
        let sender = &opened.token;
        // Only a holder of a token above the agent's in its own chain directs it.
        let directs = || {
            let own = handle.token().ok_or("the agent stopped")?;
            let (ids, theirs) = (own.revocation_ids(), sender.revocation_ids());
            if theirs.len() < ids.len() && ids.starts_with(theirs) {
                Ok(())
            } else {
                Err(format!(
                    "`{}` holds no token in agent `{name}`'s chain: only its parent or an ancestor may direct it",
                    sender.agent()
                ))
            }
        };
        let err = |e: bulwark_runtime::RunError| e.to_string();
        Ok(match ask {
            // A message needs the messaging capability, not a place in the chain; the
            // agent reads it as untrusted.
            AgentAsk::Message { content } => {
                let envelope = bulwark_runtime::Envelope {
                    v: 1,
                    from: sender.agent().to_string(),
                    to: name.to_string(),
                    content,
                    sent_at_ms: unix_ms(SystemTime::now()),
                };
                self.runtime
                    .deliver_from_node(sender, envelope)
                    .await
                    .map_err(|e| e.to_string())?;
                encode(&Answer::Ok(true))
            }
            AgentAsk::Run { task, pass } => {
                directs()?;
                let outcome = handle.run_with(&task, pass).await.map_err(err)?;
                encode(&Answer::Ok(RunView::from(&outcome)))
            }
            AgentAsk::Status => {
                directs()?;
                encode(&Answer::Ok(handle.status().await.map_err(err)?))
            }
            AgentAsk::Cancel { reason } => {
                directs()?;
                encode(&Answer::Ok(handle.cancel(&reason).await.map_err(err)?))
            }
        })
    }

    async fn call(&self, opened: Opened) -> Result<CallResult, String> {
        let Call {
            node,
            call,
            approval,
        } = body(&opened)?;
        let out = self
            .runtime
            .serve_remote_call(&opened.token, &call, approval.as_ref(), &node)
            .await
            .map_err(|e| e.to_string())?;
        Ok(CallResult {
            value: out.value,
            cost_micro_usd: out.cost.micros(),
        })
    }

    async fn agent_views(&self) -> Vec<AgentView> {
        let mut out = Vec::new();
        for id in self.runtime.agent_ids() {
            let Some(handle) = self.runtime.agent(&id) else {
                continue;
            };
            let state = match handle.status().await {
                Ok(s) => state_of(&s),
                Err(_) => "stopped".to_string(),
            };
            out.push(AgentView {
                agent: id,
                node: self.node.clone(),
                state,
            });
        }
        out
    }

    /// Every proposal this node holds, each marked with the node.
    fn proposals(&self) -> Vec<serde_json::Value> {
        let Ok(list) = self.runtime.proposals() else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .map(|mut v| {
                v["node"] = serde_json::Value::String(self.node.clone());
                v
            })
            .collect()
    }

    /// The tools whose code runs here and whose names can be subjects.
    pub fn tool_infos(&self) -> Vec<ToolInfo> {
        let mut tools: Vec<ToolInfo> = self
            .runtime
            .tools()
            .hosted()
            .into_iter()
            .filter(|m| subject_safe(&m.name))
            .map(|m| ToolInfo {
                name: m.name,
                description: m.description,
                tier: m.tier,
                max_cost_micro_usd: m.max_cost.micros(),
                schema: m.args_schema,
                timeout_ms: m.timeout_ms,
            })
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        tools
    }
}

fn state_of(s: &bulwark_runtime::AgentStatus) -> String {
    if s.waiting_on.is_some() {
        "waiting".into()
    } else if s.running {
        "running".into()
    } else {
        "idle".into()
    }
}

fn body<T: DeserializeOwned>(opened: &Opened) -> Result<T, String> {
    serde_json::from_slice(&opened.body)
        .map_err(|e| format!("malformed `{}` body: {e}", opened.kind))
}

fn encode<T: Serialize>(answer: &Answer<T>) -> Vec<u8> {
    serde_json::to_vec(answer).unwrap_or_else(|_| b"{\"refused\":\"unencodable answer\"}".to_vec())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
