//! Asking the cluster as a token holder: spawning agents on nodes, directing them,
//! listing them, and the tools that forward calls to the node hosting their code.
//!
//! Every request is an envelope sealed with the caller's token and holder key; the
//! receiving node verifies it (see [`super::serve`]).

use std::time::{Duration, SystemTime};

use bulwark_capabilities::{Attenuation, KeyPair, MicroUsd, PublicKey, Token};
use bulwark_runtime::{
    AgentStatus, CallCredentials, Envelope as Message, Outcome, Remote, RemoteError, RemoteFuture,
    SignedCall, SpawnRequest, Tool, ToolError, ToolInput, ToolManifest, ToolOutput,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::envelope::Envelope;
use super::membership::NodeState;
use super::node::{broadcast_revocation, cluster_status, subject};
use super::revocation::SignedRevocation;
use super::wire::{
    AgentAsk, AgentView, Answer, Call, CallResult, Held, Hold, RunView, Spawn, Spawned, ToolInfo,
    subject_safe,
};

/// Why a request to the cluster did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No node answered (or NATS is down).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A node refused, with its reason.
    #[error("refused: {0}")]
    Refused(String),
    /// The request or the answer is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// A connection to one cluster.
#[derive(Clone)]
pub struct ClusterClient {
    client: async_nats::Client,
    cluster: String,
}

/// How long a request other than a run waits for its answer.
const ASK_WITHIN: Duration = Duration::from_secs(10);

impl ClusterClient {
    /// A client of `cluster` over `client`.
    pub fn new(client: async_nats::Client, cluster: &str) -> Self {
        ClusterClient {
            client,
            cluster: cluster.to_string(),
        }
    }

    /// Seals `body` as `kind` for the subject `bulwark.<cluster>.<rest>` with `token`
    /// and `key`, sends it and decodes the answer.
    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        rest: &str,
        kind: &str,
        body: &B,
        (token, key): (&Token, &KeyPair),
        within: Duration,
    ) -> Result<T, ClientError> {
        let to = subject(&self.cluster, rest);
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let envelope = Envelope::seal(token, key, &to, kind, body, SystemTime::now())
            .and_then(|e| e.to_bytes())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        // The run's trace continues on the far node.
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in bulwark_runtime::telemetry::trace_headers() {
            headers.insert(name.as_str(), value.as_str());
        }
        let sent = self
            .client
            .request_with_headers(to.clone(), headers, envelope.into());
        let answer = tokio::time::timeout(within, sent)
            .await
            .map_err(|_| {
                ClientError::Unreachable(format!("no answer on `{to}` within {within:?}"))
            })?
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    ClientError::Unreachable(format!("nothing serves `{to}`"))
                }
                _ => ClientError::Unreachable(format!("`{to}`: {e}")),
            })?;
        match serde_json::from_slice::<Answer<T>>(&answer.payload) {
            Ok(Answer::Ok(t)) => Ok(t),
            Ok(Answer::Refused(why)) => Err(ClientError::Refused(why)),
            Err(e) => Err(ClientError::Invalid(format!("a malformed answer: {e}"))),
        }
    }

    /// The root public key the cluster's nodes verify tokens against, as a node
    /// reports it (a client verifies its own token with it before sealing).
    pub async fn root_key(&self) -> Result<PublicKey, ClientError> {
        let to = subject(&self.cluster, "root");
        let answer = tokio::time::timeout(ASK_WITHIN, self.client.request(to, "".into()))
            .await
            .map_err(|_| ClientError::Unreachable("no node reported the root key".into()))?
            .map_err(|e| ClientError::Unreachable(format!("no node of `{}`: {e}", self.cluster)))?;
        let hex: String = serde_json::from_slice(&answer.payload)
            .map_err(|e| ClientError::Invalid(format!("the root key answer: {e}")))?;
        PublicKey::from_hex(&hex).map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// The node to place a new agent on: `node` if given, otherwise the alive node
    /// with every label in `labels` that hosts the fewest agents and requests.
    pub async fn place(
        &self,
        node: Option<&str>,
        labels: &[(String, String)],
    ) -> Result<String, ClientError> {
        if let Some(n) = node {
            return Ok(n.to_string());
        }
        let status = cluster_status(&self.client, &self.cluster)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        status
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive)
            .filter(|n| labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
            .min_by_key(|n| (n.agents + n.load, n.id.clone()))
            .map(|n| n.id.clone())
            .ok_or_else(|| ClientError::Refused("no alive node has those labels".into()))
    }

    /// Spawns agent `agent` with brain profile `brain` on `node`: the node generates
    /// the agent's key pair and keeps its private half; `parent` (held with
    /// `parent_key`) is attenuated by `narrow` to that key here and the signed spawn
    /// sent. `narrow` narrows the delegation (to the agent and holder key already).
    pub async fn spawn(
        &self,
        node: &str,
        agent: &str,
        brain: &str,
        (parent, parent_key): (&Token, &KeyPair),
        narrow: impl FnOnce(Attenuation) -> Result<Attenuation, String>,
    ) -> Result<Spawned, ClientError> {
        if !subject_safe(node) || !subject_safe(agent) {
            return Err(ClientError::Invalid(
                "node and agent ids must be letters, digits, - and _".into(),
            ));
        }
        let held: Held = self
            .request(
                &format!("node.{node}.hold"),
                "hold",
                &Hold {
                    agent: agent.to_string(),
                },
                (parent, parent_key),
                ASK_WITHIN,
            )
            .await?;
        let holder = PublicKey::from_hex(&held.holder)
            .map_err(|e| ClientError::Invalid(format!("the node's holder key: {e}")))?;
        let attenuation = narrow(Attenuation::new(agent, holder)).map_err(ClientError::Invalid)?;
        let child = parent
            .attenuate(parent_key, attenuation)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let child = child
            .to_base64()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.request(
            &format!("node.{node}.spawn"),
            "spawn",
            &Spawn {
                agent: agent.to_string(),
                brain: brain.to_string(),
                child,
            },
            (parent, parent_key),
            ASK_WITHIN,
        )
        .await
    }

    /// A handle to agent `agent`, wherever it runs, directed as the holder of `token`.
    pub fn agent(&self, agent: &str, token: Token, key: KeyPair) -> RemoteAgent {
        RemoteAgent {
            client: self.clone(),
            agent: agent.to_string(),
            token,
            key,
        }
    }

    /// What every alive node answers on `node.<id>.<rest>`, put together; a node that
    /// does not answer, or answers what does not parse, is the error.
    async fn gather_alive<T: DeserializeOwned>(&self, rest: &str) -> Result<Vec<T>, ClientError> {
        let status = cluster_status(&self.client, &self.cluster)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let mut out = Vec::new();
        for n in status.nodes.iter().filter(|n| n.state == NodeState::Alive) {
            let to = subject(&self.cluster, &format!("node.{}.{rest}", n.id));
            let answer = tokio::time::timeout(ASK_WITHIN, self.client.request(to, "".into()))
                .await
                .map_err(|_| ClientError::Unreachable(format!("node {} did not answer", n.id)))?
                .map_err(|e| ClientError::Unreachable(format!("node {}: {e}", n.id)))?;
            let mut list: Vec<T> = serde_json::from_slice(&answer.payload)
                .map_err(|e| ClientError::Invalid(format!("node {}'s {rest}: {e}", n.id)))?;
            out.append(&mut list);
        }
        Ok(out)
    }

    /// The agents of every alive node.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ClientError> {
        let mut out: Vec<AgentView> = self.gather_alive("agents").await?;
        out.sort_by(|a, b| (&a.node, &a.agent).cmp(&(&b.node, &b.agent)));
        Ok(out)
    }

    /// The proposals of every alive node, each with its `node`, oldest first.
    pub async fn proposals(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        let mut out: Vec<serde_json::Value> = self.gather_alive("proposals").await?;
        out.sort_by_key(|p| p["created_ms"].as_u64().unwrap_or_default());
        Ok(out)
    }

    /// Hands an operator's signed decision about proposal `id` to node `node`, which
    /// verifies it; the proposal as it now stands.
    pub async fn decide(
        &self,
        node: &str,
        id: &str,
        decision: &bulwark_runtime::SignedDecision,
    ) -> Result<serde_json::Value, ClientError> {
        let to = subject(&self.cluster, &format!("node.{node}.decide"));
        let body = serde_json::to_vec(&super::wire::Decide {
            id: id.to_string(),
            decision: decision.clone(),
        })
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let answer = tokio::time::timeout(ASK_WITHIN, self.client.request(to, body.into()))
            .await
            .map_err(|_| ClientError::Unreachable(format!("node {node} did not answer")))?
            .map_err(|e| ClientError::Unreachable(format!("node {node}: {e}")))?;
        match serde_json::from_slice::<Answer<serde_json::Value>>(&answer.payload) {
            Ok(Answer::Ok(p)) => Ok(p),
            Ok(Answer::Refused(why)) => Err(ClientError::Refused(why)),
            Err(e) => Err(ClientError::Invalid(format!("a malformed answer: {e}"))),
        }
    }

    /// The tools node `node` hosts.
    pub async fn tools_of(&self, node: &str) -> Result<Vec<ToolInfo>, ClientError> {
        let to = subject(&self.cluster, &format!("node.{node}.tools"));
        let answer = tokio::time::timeout(ASK_WITHIN, self.client.request(to, "".into()))
            .await
            .map_err(|_| ClientError::Unreachable(format!("node {node} did not list its tools")))?
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        serde_json::from_slice(&answer.payload)
            .map_err(|e| ClientError::Invalid(format!("node {node}'s tool list: {e}")))
    }

    /// A tool registered here whose calls the nodes hosting `info` run: the gate
    /// decides here, then the call goes out signed as the calling agent and the
    /// hosting node checks it again. `from` names this node.
    pub fn forwarding_tool(&self, info: &ToolInfo, from: &str) -> Tool {
        let manifest = ToolManifest::new(info.name.clone(), info.description.clone())
            .tier(info.tier)
            .max_cost(MicroUsd::new(info.max_cost_micro_usd).unwrap_or(MicroUsd::ZERO))
            .schema(info.schema.clone())
            .timeout(Duration::from_millis(info.timeout_ms));
        let (client, name, from) = (self.clone(), info.name.clone(), from.to_string());
        let within = Duration::from_millis(info.timeout_ms) + ASK_WITHIN;
        Tool::forwarding(manifest, move |input: ToolInput| {
            let (client, name, from) = (client.clone(), name.clone(), from.clone());
            async move {
                let creds = input.credentials.ok_or_else(|| {
                    ToolError("no caller credentials to forward the call with".into())
                })?;
                let call = SignedCall::sign(
                    &creds.token,
                    &creds.key,
                    &input.agent,
                    &name,
                    input.args,
                    SystemTime::now(),
                );
                let body = Call {
                    node: from,
                    call,
                    approval: creds.approval.clone(),
                };
                let result: CallResult = client
                    .request(
                        &format!("tool.{name}"),
                        "call",
                        &body,
                        (&creds.token, &creds.key),
                        within,
                    )
                    .await
                    .map_err(|e| ToolError(format!("the node hosting `{name}`: {e}")))?;
                let cost = MicroUsd::new(result.cost_micro_usd).ok_or_else(|| {
                    ToolError("the hosting node reported an impossible cost".into())
                })?;
                Ok(ToolOutput::with_cost(result.value, cost))
            }
        })
    }
}

/// An agent on some node of the cluster, directed by the holder of a token in its
/// chain (its parent or an ancestor): the same operations as a local
/// [`bulwark_runtime::AgentHandle`], over the cluster.
#[derive(Clone)]
pub struct RemoteAgent {
    client: ClusterClient,
    agent: String,
    token: Token,
    key: KeyPair,
}

impl RemoteAgent {
    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.agent
    }

    async fn ask<T: DeserializeOwned>(
        &self,
        ask: &AgentAsk,
        within: Duration,
    ) -> Result<T, ClientError> {
        self.client
            .request(
                &format!("agent.{}", self.agent),
                "agent",
                ask,
                (&self.token, &self.key),
                within,
            )
            .await
    }

    /// Runs `task` and waits (at most `within`) for its outcome.
    pub async fn run(&self, task: &str, within: Duration) -> Result<RunView, ClientError> {
        self.run_with(task, Vec::new(), within).await
    }

    /// Runs `task` with context `pass` handed over, waiting at most `within`.
    pub async fn run_with(
        &self,
        task: &str,
        pass: Vec<String>,
        within: Duration,
    ) -> Result<RunView, ClientError> {
        self.ask(
            &AgentAsk::Run {
                task: task.to_string(),
                pass,
            },
            within,
        )
        .await
    }

    /// What it is doing.
    pub async fn status(&self) -> Result<AgentStatus, ClientError> {
        self.ask(&AgentAsk::Status, ASK_WITHIN).await
    }

    /// Cancels its run in progress; whether there was one.
    pub async fn cancel(&self, reason: &str) -> Result<bool, ClientError> {
        self.ask(
            &AgentAsk::Cancel {
                reason: reason.to_string(),
            },
            ASK_WITHIN,
        )
        .await
    }

    /// Sends it a message from the token's agent; it reads it as untrusted.
    pub async fn message(&self, content: &str) -> Result<bool, ClientError> {
        self.ask(
            &AgentAsk::Message {
                content: content.to_string(),
            },
            ASK_WITHIN,
        )
        .await
    }
}

/// Longest a run on another node is waited for.
const RUN_WITHIN: Duration = Duration::from_secs(3600);

/// How a node's runtime reaches agents on the other nodes: [`Remote`] over the
/// cluster's subjects.
pub struct ClusterRemote {
    client: ClusterClient,
    node: String,
    revoker: Option<KeyPair>,
}

impl ClusterRemote {
    /// The remote side of node `node` over `client`.
    pub fn new(client: ClusterClient, node: &str) -> Self {
        ClusterRemote {
            client,
            node: node.to_string(),
            revoker: None,
        }
    }

    /// Signs the revocations this node's runtime makes with `operator` (one of the
    /// cluster's operator keys), so the other nodes accept them.
    pub fn revoking_with(mut self, operator: Option<KeyPair>) -> Self {
        self.revoker = operator;
        self
    }

    fn agent(&self, agent: &str, who: CallCredentials) -> RemoteAgent {
        self.client.agent(agent, who.token, who.key)
    }
}

fn remote_error(e: ClientError) -> RemoteError {
    match e {
        ClientError::Refused(why) => RemoteError::Refused(why),
        other => RemoteError::Unreachable(other.to_string()),
    }
}

impl Remote for ClusterRemote {
    fn node(&self) -> &str {
        &self.node
    }

    fn spawn<'a>(
        &'a self,
        parent: CallCredentials,
        node: &'a str,
        request: &'a SpawnRequest,
    ) -> RemoteFuture<'a, String> {
        Box::pin(async move {
            let spawned = self
                .client
                .spawn(
                    node,
                    &request.agent,
                    &request.brain,
                    (&parent.token, &parent.key),
                    |att| request.attenuation(att.holder).map_err(|e| e.to_string()),
                )
                .await
                .map_err(remote_error)?;
            Ok(spawned.holder)
        })
    }

    fn run<'a>(
        &'a self,
        director: CallCredentials,
        agent: &'a str,
        task: &'a str,
        pass: Vec<String>,
    ) -> RemoteFuture<'a, Outcome> {
        Box::pin(async move {
            let view = self
                .agent(agent, director)
                .run_with(task, pass, RUN_WITHIN)
                .await
                .map_err(remote_error)?;
            Ok(view.into_outcome(agent))
        })
    }

    fn status<'a>(
        &'a self,
        director: CallCredentials,
        agent: &'a str,
    ) -> RemoteFuture<'a, AgentStatus> {
        Box::pin(async move {
            self.agent(agent, director)
                .status()
                .await
                .map_err(remote_error)
        })
    }

    fn cancel<'a>(
        &'a self,
        director: CallCredentials,
        agent: &'a str,
        reason: &'a str,
    ) -> RemoteFuture<'a, bool> {
        Box::pin(async move {
            self.agent(agent, director)
                .cancel(reason)
                .await
                .map_err(remote_error)
        })
    }

    fn revoke(&self, id: Vec<u8>) -> RemoteFuture<'_, ()> {
        Box::pin(async move {
            let operator = self.revoker.as_ref().ok_or_else(|| {
                RemoteError::Refused(
                    "this node has no revocation_key_file to sign revocations with".into(),
                )
            })?;
            let signed = SignedRevocation::sign(operator, &id, SystemTime::now());
            let status = cluster_status(&self.client.client, &self.client.cluster)
                .await
                .map_err(|e| RemoteError::Unreachable(e.to_string()))?;
            let live: Vec<String> = status
                .nodes
                .into_iter()
                .filter(|n| n.state == NodeState::Alive)
                .map(|n| n.id)
                .collect();
            let acks = broadcast_revocation(
                &self.client.client,
                &self.client.cluster,
                &signed,
                &live,
                ASK_WITHIN,
            )
            .await
            .map_err(|e| RemoteError::Unreachable(e.to_string()))?;
            if let Some((ack, _)) = acks.iter().find(|(a, _)| a.error.is_some()) {
                return Err(RemoteError::Refused(format!(
                    "node {}: {}",
                    ack.node,
                    ack.error.as_deref().unwrap_or_default()
                )));
            }
            let missing: Vec<&String> = live
                .iter()
                .filter(|n| !acks.iter().any(|(a, _)| &a.node == *n))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(RemoteError::Unreachable(format!(
                    "no acknowledgement from {missing:?}"
                )))
            }
        })
    }

    fn message(&self, sender: CallCredentials, envelope: Message) -> RemoteFuture<'_, ()> {
        Box::pin(async move {
            if !subject_safe(&envelope.to) {
                return Err(RemoteError::Refused(format!(
                    "agent `{}` cannot be reached through the cluster",
                    envelope.to
                )));
            }
            self.agent(&envelope.to, sender)
                .message(&envelope.content)
                .await
                .map(|_| ())
                .map_err(remote_error)
        })
    }
}
