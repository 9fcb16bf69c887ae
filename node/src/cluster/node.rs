//! A node: an embedded runtime joined to its cluster over NATS.
//!
//! Subjects live under `bulwark.<cluster>.`: `heartbeat` (every node publishes and
//! listens), `presence.<id>` (answered by node `id` while it runs; probed when its
//! heartbeat is overdue) and `members` (every node answers with its membership table;
//! the asker takes the first answer, so a paused node holds nobody up). A node is ready once the server has confirmed its
//! subscriptions; it then prints `ready <id>` when run from the command line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use bulwark_runtime::{
    ApprovalConfig, Brain, BrainAction, BrainFactory, OpenAiBrain, OpenAiConfig, Runtime,
    ScriptedBrain,
};
use futures::StreamExt;

use bulwark_runtime::ToolManifest;
use bulwark_runtime::guard::GuardConfig;
use bulwark_runtime::sandbox::{Program, Sandbox, SandboxConfig, SandboxTool, ToolCode};

use super::client::{ClusterClient, ClusterRemote};
use super::config::{BrainConfig, NatsConfig, NodeConfig, ToolProgram};
use super::membership::{
    HEARTBEAT_EVERY, HEARTBEAT_FORMAT, Heartbeat, Members, NodeState, PROBE_TIMEOUT, Probe, Status,
};
use super::metrics::NodeMetrics;
use super::revocation::{self, MAX_REVOCATIONS, SignedRevocation};
use super::serve::Host;

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration cannot be served as it is.
    #[error("configuration: {0}")]
    Config(String),
    /// The runtime did not start.
    #[error("runtime: {0}")]
    Runtime(String),
    /// NATS could not be reached or refused the node.
    #[error("NATS: {0}")]
    Nats(String),
}

/// The subject prefix of `cluster`.
pub fn subject(cluster: &str, rest: &str) -> String {
    format!("bulwark.{cluster}.{rest}")
}

/// Builds a [`Node`] from its configuration, with the embedding program's brains.
pub struct NodeBuilder {
    config: NodeConfig,
    brains: Vec<(String, BrainFactory)>,
    tools: Vec<bulwark_runtime::Tool>,
}

impl NodeBuilder {
    /// Adds a brain profile under `name` (beside those of the configuration).
    pub fn brain(mut self, name: &str, factory: BrainFactory) -> Self {
        self.brains.push((name.to_string(), factory));
        self
    }

    /// Adds a tool the node hosts (beside the configuration's sandboxed ones); other
    /// nodes' agents call it through this node.
    pub fn tool(mut self, tool: bulwark_runtime::Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Starts the runtime, connects to NATS and subscribes; returns once the server
    /// has confirmed the subscriptions.
    pub async fn start(self) -> Result<Node, NodeError> {
        let config = self.config;
        let mut builder = Runtime::builder()
            .data_dir(&config.data_dir)
            .root_public_key(config.root_public_key)
            .guards(GuardConfig {
                local_model: config.guard_model.clone(),
                ..GuardConfig::default()
            });
        if !config.operator_keys.is_empty() {
            builder = builder.approvals(ApprovalConfig::new(config.operator_keys.clone()));
        }
        let runtime = builder
            .build()
            .await
            .map_err(|e| NodeError::Runtime(e.to_string()))?;
        for (name, brain) in &config.brains {
            runtime.register_brain(name, brain_factory(name, brain)?);
        }
        for (name, factory) in self.brains {
            runtime.register_brain(&name, factory);
        }
        host_tools(&runtime, &config)?;
        for tool in self.tools {
            let name = tool.manifest().name.clone();
            runtime
                .tools()
                .register(tool)
                .map_err(|e| NodeError::Config(format!("tool `{name}`: {e}")))?;
        }
        let metrics = Arc::new(NodeMetrics::new());
        let client = connect(&config.nats, &config.id, &metrics).await?;
        let dashboard = match config.dashboard {
            Some(bind) => Some(
                crate::dashboard::serve_for_node(
                    runtime.clone(),
                    crate::dashboard::DashboardConfig {
                        bind,
                        bearer: std::env::var("BULWARK_DASHBOARD_TOKEN")
                            .ok()
                            .filter(|t| !t.is_empty()),
                        allowed_hosts: Vec::new(),
                    },
                    metrics.clone(),
                    ClusterClient::new(client.clone(), &config.cluster),
                    &config.id,
                )
                .await
                .map_err(|e| NodeError::Config(format!("dashboard.listen: {e}")))?,
            ),
            None => None,
        };

        let incarnation = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
        )
        .unwrap_or(u64::MAX);
        let host = Host::new(
            runtime.clone(),
            client.clone(),
            config.cluster.clone(),
            config.id.clone(),
            config.root_public_key,
            metrics.clone(),
        );
        let revoker = match &config.revocation_key_file {
            Some(file) => {
                let key = bulwark_capabilities::KeyPair::load(file).map_err(|e| {
                    NodeError::Config(format!("revocation_key_file {}: {e}", file.display()))
                })?;
                if !config.operator_keys.contains(&key.public()) {
                    return Err(NodeError::Config(format!(
                        "revocation_key_file {}: its public key {} is not one of operator_keys",
                        file.display(),
                        key.public().to_hex()
                    )));
                }
                Some(key)
            }
            None => None,
        };
        runtime.set_remote(Arc::new(
            ClusterRemote::new(
                ClusterClient::new(client.clone(), &config.cluster),
                &config.id,
            )
            .revoking_with(revoker),
        ));
        let node = Node {
            dashboard: Mutex::new(dashboard),
            host,
            config: Arc::new(config),
            runtime,
            client,
            members: Arc::new(Mutex::new(Members::default())),
            incarnation,
            revocations: Arc::new(Mutex::new(Vec::new())),
            adopted: Mutex::new(std::collections::HashMap::new()),
        };
        // Fail closed: nothing is served before the revocations missed are in force.
        node.catch_up_revocations().await?;
        node.subscribe().await?;
        Ok(node)
    }
}

/// A running node.
pub struct Node {
    dashboard: Mutex<Option<crate::dashboard::Dashboard>>,
    host: Arc<Host>,
    config: Arc<NodeConfig>,
    runtime: Runtime,
    client: async_nats::Client,
    members: Arc<Mutex<Members>>,
    incarnation: u64,
    revocations: Arc<Mutex<Vec<SignedRevocation>>>,
    /// Per peer, the tool list whose tools this node registered as forwarding tools.
    adopted: Mutex<std::collections::HashMap<String, Vec<String>>>,
}

impl Node {
    /// A node of `config`.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            brains: Vec::new(),
            tools: Vec::new(),
        }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The dashboard's login address, when the node serves one.
    pub fn dashboard_login(&self) -> Option<String> {
        locked(&self.dashboard)
            .as_ref()
            .map(crate::dashboard::Dashboard::login_url)
    }

    /// Its runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The membership table as this node sees it.
    pub fn status(&self) -> Status {
        locked(&self.members).status(Instant::now())
    }

    async fn subscribe(&self) -> Result<(), NodeError> {
        let nats = |e: &dyn std::fmt::Display| NodeError::Nats(e.to_string());
        let cluster = &self.config.cluster;
        let sub = |rest: String| async move {
            self.client
                .subscribe(subject(cluster, &rest))
                .await
                .map_err(|e| NodeError::Nats(e.to_string()))
        };
        let mut beats = sub("heartbeat".into()).await?;
        let presence = sub(format!("presence.{}", self.config.id)).await?;
        let asks = sub("members".into()).await?;
        let mut revokes = sub("revoke".into()).await?;
        let lists = sub("revocations".into()).await?;
        self.host.start().await.map_err(|e| nats(&e))?;
        // Readiness: the server has processed the subscriptions.
        self.client.flush().await.map_err(|e| nats(&e))?;

        let applier = self.applier();
        let client = self.client.clone();
        let id = self.config.id.clone();
        tokio::spawn(async move {
            while let Some(msg) = revokes.next().await {
                let outcome = match serde_json::from_slice::<SignedRevocation>(&msg.payload) {
                    Ok(r) if msg.payload.len() <= 4096 => applier.apply(r).await,
                    Ok(_) => Err("the revocation is larger than 4 KiB".to_string()),
                    Err(e) => Err(format!("malformed revocation: {e}")),
                };
                if let Some(reply) = msg.reply {
                    let ack = RevokeAck {
                        node: id.clone(),
                        error: outcome.err(),
                    };
                    if let Ok(body) = serde_json::to_vec(&ack) {
                        let _ = client.publish(reply, body.into()).await;
                    }
                }
            }
        });
        let kept = self.revocations.clone();
        answer(&self.client, lists, move || {
            serde_json::to_vec(&*locked(&kept)).ok()
        });
        let members = self.members.clone();
        tokio::spawn(async move {
            while let Some(msg) = beats.next().await {
                if msg.payload.len() > 64 * 1024 {
                    continue;
                }
                if let Ok(beat) = rmp_serde::from_slice::<Heartbeat>(&msg.payload)
                    && beat.v == HEARTBEAT_FORMAT
                {
                    locked(&members).heard(beat, Instant::now());
                }
            }
        });
        answer(&self.client, presence, || Some(b"here".to_vec()));
        let members = self.members.clone();
        answer(&self.client, asks, move || {
            serde_json::to_vec(&locked(&members).status(Instant::now())).ok()
        });
        Ok(())
    }

    fn applier(&self) -> Applier {
        Applier {
            runtime: self.runtime.clone(),
            operators: self.config.operator_keys.clone(),
            data_dir: self.config.data_dir.clone(),
            kept: self.revocations.clone(),
        }
    }

    /// Loads the revocations this node kept, then asks its peers for theirs and puts
    /// in force those it missed. With no peer to ask (the first node) it goes on;
    /// peers that do not answer keep it from starting.
    async fn catch_up_revocations(&self) -> Result<(), NodeError> {
        let kept = revocation::load(&self.config.data_dir).map_err(|e| {
            NodeError::Runtime(format!(
                "{}: {e}",
                self.config
                    .data_dir
                    .join(revocation::REVOCATIONS_FILE)
                    .display()
            ))
        })?;
        *locked(&self.revocations) = kept;
        let ask = subject(&self.config.cluster, "revocations");
        let mut last = String::new();
        for _ in 0..10 {
            let asked = tokio::time::timeout(
                Duration::from_secs(3),
                self.client.request(ask.clone(), "".into()),
            )
            .await;
            let answer = match asked {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    return Ok(());
                }
                Ok(Err(e)) => {
                    last = e.to_string();
                    continue;
                }
                Err(_) => {
                    last = "no answer within 3 s".into();
                    continue;
                }
            };
            let list: Vec<SignedRevocation> = serde_json::from_slice(&answer.payload)
                .map_err(|e| NodeError::Nats(format!("a peer sent malformed revocations: {e}")))?;
            let applier = self.applier();
            for r in list.into_iter().take(MAX_REVOCATIONS) {
                // A peer's list is checked like a broadcast: only operators' signatures.
                if let Err(e) = applier.apply(r).await {
                    tracing::warn!(error = %e, "a peer handed over a revocation that does not hold");
                }
            }
            return Ok(());
        }
        Err(NodeError::Nats(format!(
            "could not fetch the cluster's revocations from its nodes ({last}); refusing to serve without them"
        )))
    }

    fn heartbeat(&self, leaving: bool) -> Heartbeat {
        let tools: Vec<String> = self.host.tool_infos().into_iter().map(|t| t.name).collect();
        let mut reaches: Vec<String> = self
            .runtime
            .tools()
            .manifests()
            .into_iter()
            .map(|m| m.name)
            .filter(|n| !tools.contains(n))
            .collect();
        reaches.sort();
        Heartbeat {
            v: HEARTBEAT_FORMAT,
            node: self.config.id.clone(),
            incarnation: self.incarnation,
            agents: self.runtime.agent_count(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            tools,
            reaches,
            load: self.host.load(),
            labels: self.config.labels.clone(),
            leaving,
        }
    }

    async fn beat(&self, leaving: bool) {
        if let Ok(body) = rmp_serde::to_vec_named(&self.heartbeat(leaving)) {
            let _ = self
                .client
                .publish(subject(&self.config.cluster, "heartbeat"), body.into())
                .await;
        }
    }

    /// Revokes the token block `id` on every alive node, this one included, signed
    /// by `operator` (a key the nodes trust); returns each node's acknowledgement
    /// and how long it took. Waits at most `within` for the acknowledgements.
    pub async fn revoke(
        &self,
        id: &[u8],
        operator: &bulwark_capabilities::KeyPair,
        within: Duration,
    ) -> Result<Vec<(RevokeAck, Duration)>, NodeError> {
        let signed = SignedRevocation::sign(operator, id, SystemTime::now());
        let mut live: Vec<String> = self
            .status()
            .nodes
            .into_iter()
            .filter(|n| n.state == NodeState::Alive)
            .map(|n| n.id)
            .collect();
        if !live.contains(&self.config.id) {
            live.push(self.config.id.clone());
        }
        broadcast_revocation(&self.client, &self.config.cluster, &signed, &live, within).await
    }

    /// A client of this node's cluster over its connection.
    pub fn cluster(&self) -> ClusterClient {
        ClusterClient::new(self.client.clone(), &self.config.cluster)
    }

    /// Registers, as forwarding tools, the tools alive peers host and this node
    /// lacks (asking each such peer for their manifests).
    async fn adopt_remote_tools(&self) {
        let status = self.status();
        let cluster = self.cluster();
        for peer in status.nodes.iter().filter(|n| n.state == NodeState::Alive) {
            let missing = peer
                .tools
                .iter()
                .any(|t| self.runtime.tools().get_manifest(t).is_none());
            // A peer is asked once per list of tools it announces.
            let asked = locked(&self.adopted).get(&peer.id) == Some(&peer.tools);
            if peer.id == self.config.id || !missing || asked {
                continue;
            }
            let Ok(infos) = cluster.tools_of(&peer.id).await else {
                continue;
            };
            locked(&self.adopted).insert(peer.id.clone(), peer.tools.clone());
            for info in infos {
                if self.runtime.tools().get_manifest(&info.name).is_none() {
                    let tool = cluster.forwarding_tool(&info, &self.config.id);
                    if let Err(e) = self.runtime.tools().register(tool) {
                        tracing::warn!(tool = %info.name, error = %e, "cannot adopt a peer's tool");
                    }
                }
            }
        }
    }

    /// Probes each node whose heartbeat is overdue, and reports each peer's
    /// heartbeat lag.
    async fn probe_overdue(&self) {
        for m in self.status().nodes {
            if m.id == self.config.id {
                continue;
            }
            if m.state == NodeState::Dead {
                self.host.metrics.peer_gone(&m.id);
            } else {
                self.host
                    .metrics
                    .heartbeat_lag(&m.id, m.last_seen_ms as f64 / 1000.0);
            }
        }
        let overdue = locked(&self.members).overdue(Instant::now());
        for id in overdue {
            let probe = if self.client.connection_state() != State::Connected {
                Probe::LinkDown
            } else {
                let asked = self.client.request(
                    subject(&self.config.cluster, &format!("presence.{id}")),
                    "".into(),
                );
                match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
                    Ok(Ok(_)) => Probe::Answered,
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        Probe::NoResponders
                    }
                    Ok(Err(_)) | Err(_) => Probe::TimedOut,
                }
            };
            locked(&self.members).probed(&id, probe);
        }
    }

    /// Serves until `shutdown` resolves, then announces the departure, drains and
    /// stops the runtime.
    pub async fn run_until(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeError> {
        tokio::pin!(shutdown);
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut check = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = beat.tick() => self.beat(false).await,
                _ = check.tick() => {
                    self.probe_overdue().await;
                    self.adopt_remote_tools().await;
                }
            }
        }
        // Leaving: no more spawns, the departure announced, runs in progress cancelled.
        self.host.drain();
        self.beat(true).await;
        for id in self.runtime.agent_ids() {
            if let Some(agent) = self.runtime.agent(&id) {
                let _ = agent.cancel("the node is shutting down").await;
            }
        }
        let _ = self.client.flush().await;
        let dashboard = locked(&self.dashboard).take();
        if let Some(d) = dashboard {
            d.stop();
        }
        self.runtime
            .shutdown()
            .await
            .map_err(|e| NodeError::Runtime(e.to_string()))
    }
}

/// Answers every request on `sub` with what `body` gives, in its own task.
fn answer(
    client: &async_nats::Client,
    mut sub: async_nats::Subscriber,
    body: impl Fn() -> Option<Vec<u8>> + Send + 'static,
) {
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let (Some(reply), Some(body)) = (msg.reply, body()) {
                let _ = client.publish(reply, body.into()).await;
            }
        }
    });
}

/// Locks `m`, taking it over if a panicking holder poisoned it (each critical
/// section leaves the state consistent).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A node's answer to a revocation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevokeAck {
    /// The node.
    pub node: String,
    /// Why it refused, if it did.
    pub error: Option<String>,
}

/// Verifies and applies signed revocations for one node.
#[derive(Clone)]
struct Applier {
    runtime: Runtime,
    operators: Vec<bulwark_capabilities::PublicKey>,
    data_dir: std::path::PathBuf,
    kept: Arc<Mutex<Vec<SignedRevocation>>>,
}

impl Applier {
    /// Puts `r` in force: persisted (the runtime's store and the node's list) before
    /// it is acknowledged.
    async fn apply(&self, r: SignedRevocation) -> Result<(), String> {
        let id = r.verify(&self.operators).map_err(|e| e.to_string())?;
        let known = locked(&self.kept).iter().any(|k| k.id == r.id);
        if known {
            return Ok(());
        }
        self.runtime
            .apply_revocation(id)
            .await
            .map_err(|e| e.to_string())?;
        revocation::append(&self.data_dir, &r).map_err(|e| e.to_string())?;
        let mut kept = locked(&self.kept);
        if kept.len() < MAX_REVOCATIONS {
            kept.push(r);
        }
        Ok(())
    }
}

/// Connects with the configured servers and credentials; reconnects are automatic.
async fn connect(
    nats: &NatsConfig,
    name: &str,
    metrics: &Arc<NodeMetrics>,
) -> Result<async_nats::Client, NodeError> {
    let mut options = match &nats.credentials_file {
        Some(file) => async_nats::ConnectOptions::with_credentials_file(file)
            .await
            .map_err(|e| NodeError::Nats(format!("credentials file {}: {e}", file.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    options = metrics
        .count_events(options)
        .name(format!("bulwark-node-{name}"))
        .connection_timeout(Duration::from_secs(10));
    if let Some(file) = &nats.nkey_seed_file {
        let seed = std::fs::read_to_string(file)
            .map_err(|e| NodeError::Nats(format!("NKey seed file {}: {e}", file.display())))?;
        options = options.nkey(seed.trim().to_string());
    }
    if let Some(tls) = &nats.tls {
        options = options
            .require_tls(true)
            .add_root_certificates(tls.ca.clone());
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let urls: Vec<async_nats::ServerAddr> = nats
        .urls
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|e| NodeError::Config(format!("nats url `{u}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    options
        .connect(urls)
        .await
        .map_err(|e| NodeError::Nats(format!("cannot connect to {}: {e}", nats.urls.join(", "))))
}

/// Largest tool program a node loads, bytes.
const MAX_PROGRAM_BYTES: u64 = 64 << 20;

/// Registers the configuration's sandboxed tools; each program is read and its
/// interpreter (or module) prepared now, so a missing file or interpreter stops the
/// start instead of the first call.
fn host_tools(runtime: &Runtime, config: &NodeConfig) -> Result<(), NodeError> {
    if config.tools.is_empty() {
        return Ok(());
    }
    let sandbox = Sandbox::new(SandboxConfig::default())
        .map_err(|e| NodeError::Config(format!("the sandbox: {e}")))?;
    for (i, t) in config.tools.iter().enumerate() {
        let fail = |what: String| NodeError::Config(format!("tools[{i}] `{}`: {what}", t.name));
        let path = match &t.program {
            ToolProgram::Wasm(p) | ToolProgram::Python(p) | ToolProgram::Js(p) => p,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?
            .len();
        if size > MAX_PROGRAM_BYTES {
            return Err(fail(format!(
                "{}: {size} bytes, more than {MAX_PROGRAM_BYTES}",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let text = || {
            String::from_utf8(bytes.clone())
                .map_err(|_| fail(format!("{} is not UTF-8 text", path.display())))
        };
        let program = match &t.program {
            ToolProgram::Wasm(_) => Program::Wasm {
                module: Arc::new(bytes.clone()),
                invoke: None,
            },
            ToolProgram::Python(_) => Program::Python(text()?),
            ToolProgram::Js(_) => Program::JavaScript(text()?),
        };
        sandbox.prepare(&program).map_err(|e| fail(e.to_string()))?;
        let manifest = ToolManifest::new(
            t.name.clone(),
            format!("sandboxed tool hosted by node {}", config.id),
        )
        .tier(t.tier)
        .max_cost(t.max_cost);
        let mut code =
            SandboxTool::new(sandbox.clone(), ToolCode::Fixed(program)).limits(t.limits.clone());
        for m in &t.mounts {
            code = code.mount(m.clone());
        }
        let tool = code.into_tool(manifest);
        runtime
            .tools()
            .register(tool)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

fn brain_factory(name: &str, brain: &BrainConfig) -> Result<BrainFactory, NodeError> {
    match brain {
        BrainConfig::Scripted { file } => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                NodeError::Config(format!("brains.{name}: {}: {e}", file.display()))
            })?;
            let actions: Vec<BrainAction> = serde_json::from_str(&text).map_err(|e| {
                NodeError::Config(format!(
                    "brains.{name}: {} is not a JSON array of actions: {e}",
                    file.display()
                ))
            })?;
            Ok(Arc::new(move || {
                Arc::new(ScriptedBrain::new(actions.clone())) as Arc<dyn Brain>
            }))
        }
        BrainConfig::OpenAi {
            base_url,
            model,
            cheap_model,
            api_key_env,
        } => {
            let config = OpenAiConfig {
                base_url: base_url.clone(),
                model: model.clone(),
                cheap_model: cheap_model.clone().unwrap_or_else(|| model.clone()),
                api_key: std::env::var(api_key_env).ok().filter(|k| !k.is_empty()),
                micro_usd_per_1k_tokens: (10_000, 1_000),
                micro_usd_per_1k_prompt_tokens: (10_000, 1_000),
                max_tokens: 4096,
                timeout: Duration::from_secs(60),
            };
            let brain: Arc<dyn Brain> = Arc::new(
                OpenAiBrain::new(config)
                    .map_err(|e| NodeError::Config(format!("brains.{name}: {e}")))?,
            );
            Ok(Arc::new(move || brain.clone()))
        }
    }
}

/// Broadcasts `revocation` to `cluster` and collects the acknowledgements of the
/// nodes in `live`, for at most `within`. Returns each node's answer with how long it
/// took; nodes missing from the answer did not acknowledge in time.
pub async fn broadcast_revocation(
    client: &async_nats::Client,
    cluster: &str,
    revocation: &SignedRevocation,
    live: &[String],
    within: Duration,
) -> Result<Vec<(RevokeAck, Duration)>, NodeError> {
    let nats = |e: &dyn std::fmt::Display| NodeError::Nats(e.to_string());
    let inbox = client.new_inbox();
    let mut acks = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| nats(&e))?;
    let body = serde_json::to_vec(revocation).map_err(|e| nats(&e))?;
    let start = Instant::now();
    client
        .publish_with_reply(subject(cluster, "revoke"), inbox, body.into())
        .await
        .map_err(|e| nats(&e))?;
    client.flush().await.map_err(|e| nats(&e))?;
    let mut out: Vec<(RevokeAck, Duration)> = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !live.iter().all(|n| out.iter().any(|(a, _)| &a.node == n)) {
        let next = tokio::time::timeout_at(deadline, acks.next()).await;
        match next {
            Ok(Some(msg)) => {
                if let Ok(ack) = serde_json::from_slice::<RevokeAck>(&msg.payload)
                    && !out.iter().any(|(a, _)| a.node == ack.node)
                {
                    out.push((ack, start.elapsed()));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// Asks any node of `cluster` for its membership table.
pub async fn cluster_status(
    client: &async_nats::Client,
    cluster: &str,
) -> Result<Status, NodeError> {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject(cluster, "members"), "".into()),
    )
    .await
    .map_err(|_| {
        NodeError::Nats(format!(
            "no node of cluster `{cluster}` answered within 5 s"
        ))
    })?
    .map_err(|e| NodeError::Nats(format!("no node of cluster `{cluster}` answered: {e}")))?;
    serde_json::from_slice(&answer.payload)
        .map_err(|e| NodeError::Nats(format!("a node answered with a malformed status: {e}")))
}
