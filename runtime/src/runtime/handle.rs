//! Handles to agents: how an agent is specified, and the handle a program holds.

use crate::sync::RwLockExt;
use std::sync::Arc;
use std::time::Duration;

use bulwark_capabilities::{Attenuation, KeyPair, Token};
use ractor::ActorRef;

use crate::agent::{AgentMsg, AgentStatus, Outcome};
use crate::brain::Brain;
use crate::error::{GateError, RunError, SpawnError};
use crate::gate::Identity;
use crate::tools::CallCredentials;

use super::*;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// Its id, unique in the runtime (and later the cluster).
    pub id: String,
    /// Its holder key: it signs every request made under its token.
    pub key: KeyPair,
    /// Most steps of one run.
    pub max_steps: usize,
    /// Longest one brain step may take.
    pub step_timeout: Duration,
}

impl AgentSpec {
    /// An agent with a fresh holder key, 16 steps, 30 s per step.
    pub fn new(id: impl Into<String>) -> Self {
        Self::with_key(id, KeyPair::generate())
    }

    /// An agent with the given holder key.
    pub fn with_key(id: impl Into<String>, key: KeyPair) -> Self {
        AgentSpec {
            id: id.into(),
            key,
            max_steps: 16,
            step_timeout: Duration::from_secs(30),
        }
    }

    /// Sets the step limit.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// Sets the per-step timeout.
    pub fn step_timeout(mut self, t: Duration) -> Self {
        self.step_timeout = t;
        self
    }
}

/// A running agent, addressed by id: one of this runtime, or one another node hosts
/// (reached through the runtime's [`super::Remote`], directed by the local agent
/// that spawned it). Both answer the same calls.
#[derive(Clone)]
pub struct AgentHandle {
    pub(super) id: String,
    pub(super) inner: Arc<Inner>,
    pub(super) at: Option<Arc<RemoteAt>>,
}

/// Where a remote agent runs and who directs it.
pub(super) struct RemoteAt {
    node: String,
    director: CallCredentials,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("id", &self.id)
            .field("node", &self.at.as_ref().map(|a| &a.node))
            .finish()
    }
}

impl AgentHandle {
    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn remote(
        id: &str,
        node: &str,
        director: CallCredentials,
        inner: Arc<Inner>,
    ) -> AgentHandle {
        AgentHandle {
            id: id.to_string(),
            inner,
            at: Some(Arc::new(RemoteAt {
                node: node.to_string(),
                director,
            })),
        }
    }

    /// The node hosting it, when that is another node.
    pub fn node(&self) -> Option<&str> {
        self.at.as_ref().map(|a| a.node.as_str())
    }

    /// The runtime's way to other nodes, for a remote agent.
    fn far(&self) -> Option<(Arc<dyn super::Remote>, &RemoteAt)> {
        let at = self.at.as_deref()?;
        Some((self.inner.remote()?, at))
    }

    /// The agent's token.
    pub fn token(&self) -> Option<Token> {
        self.inner
            .agents
            .read_or_recover()
            .get(&self.id)
            .map(|e| e.args.identity.token.clone())
    }

    /// Calls a tool as this agent, through the gate, from Rust code running on the
    /// agent's behalf (the brain's tool calls take the same path).
    pub async fn call_tool(
        &self,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<crate::gate::CallResult, GateError> {
        let actor = self
            .inner
            .agents
            .read_or_recover()
            .get(&self.id)
            .map(|e| e.agent.actor().clone())
            .ok_or_else(|| GateError::UnknownAgent(self.id.clone()))?;
        let tool = tool.to_string();
        match actor
            .call(|reply| AgentMsg::CallTool { tool, args, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(GateError::UnknownAgent(self.id.clone())),
        }
    }

    /// Runs a task through the agent's bounded reason/act loop. Runs of one agent are
    /// serialized: a run asked for while another is in progress waits its turn.
    pub async fn run(&self, task: &str) -> Result<Outcome, RunError> {
        self.run_with(task, Vec::new()).await
    }

    /// Runs a task with context handed over explicitly (`pass`), as a parent does
    /// for a child.
    pub async fn run_with(&self, task: &str, pass: Vec<String>) -> Result<Outcome, RunError> {
        if self.at.is_some() {
            let (remote, at) = self.far().ok_or_else(|| self.unreachable())?;
            return remote
                .run(at.director.clone(), &self.id, task, pass)
                .await
                .map_err(|e| RunError::Remote(e.to_string()));
        }
        self.inner.run(&self.id, task, pass).await
    }

    fn unreachable(&self) -> RunError {
        RunError::Remote(format!(
            "agent `{}` runs on another node and this runtime is not in a cluster",
            self.id
        ))
    }

    /// Sends the agent a message from the embedding program (for a remote agent,
    /// from the agent directing it); it reads it as untrusted at its next step.
    pub async fn message(&self, content: &str) -> Result<(), RunError> {
        let envelope = |from: &str| Envelope {
            v: 1,
            from: from.to_string(),
            to: self.id.clone(),
            content: content.to_string(),
            sent_at_ms: crate::clock::unix_ms(self.inner.clock.now()),
        };
        match self.far() {
            Some((remote, at)) => remote
                .message(at.director.clone(), envelope(at.director.token.agent()))
                .await
                .map_err(|e| RunError::Remote(e.to_string())),
            None if self.at.is_some() => Err(self.unreachable()),
            None => self.inner.deliver(envelope("program")),
        }
    }

    /// Cancels the agent's run in progress (and its direct tool calls, and its
    /// children's runs) with `reason`; the run ends with [`Status::Cancelled`] at its
    /// next cancellation point. A CONFIRM proposal it waits on is withdrawn, so a later
    /// approval runs nothing. Runs queued behind it still run. Returns whether
    /// anything was in progress.
    ///
    /// [`Status::Cancelled`]: crate::agent::Status::Cancelled
    pub async fn cancel(&self, reason: &str) -> Result<bool, RunError> {
        if self.at.is_some() {
            let (remote, at) = self.far().ok_or_else(|| self.unreachable())?;
            return remote
                .cancel(at.director.clone(), &self.id, reason)
                .await
                .map_err(|e| RunError::Remote(e.to_string()));
        }
        let reason = reason.to_string();
        match self
            .actor()?
            .call(|reply| AgentMsg::Cancel { reason, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(busy)) => Ok(busy),
            _ => Err(RunError::NoSuchAgent(self.id.clone())),
        }
    }

    /// What the agent is doing. The actor answers even while a run waits.
    pub async fn status(&self) -> Result<AgentStatus, RunError> {
        if self.at.is_some() {
            let (remote, at) = self.far().ok_or_else(|| self.unreachable())?;
            return remote
                .status(at.director.clone(), &self.id)
                .await
                .map_err(|e| RunError::Remote(e.to_string()));
        }
        match self
            .actor()?
            .call(|reply| AgentMsg::Status { reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => Ok(s),
            _ => Err(RunError::NoSuchAgent(self.id.clone())),
        }
    }

    fn actor(&self) -> Result<ActorRef<AgentMsg>, RunError> {
        self.inner
            .agents
            .read_or_recover()
            .get(&self.id)
            .map(|e| e.agent.actor().clone())
            .ok_or_else(|| RunError::NoSuchAgent(self.id.clone()))
    }

    /// Spawns a child: its token is derived from this agent's by attenuation (refused
    /// unless it narrows), its budget is carved out of this agent's, and it starts
    /// with a fresh context.
    pub async fn spawn_child(
        &self,
        spec: AgentSpec,
        attenuation: Attenuation,
        brain: Arc<dyn Brain>,
    ) -> Result<AgentHandle, SpawnError> {
        let parent = self
            .identity()
            .ok_or_else(|| SpawnError::Actor(format!("agent `{}` is not running here", self.id)))?;
        self.inner
            .spawn_child(&parent, spec, attenuation, brain)
            .await
    }

    /// Spawns a child on node `node` of the cluster, narrowed as `request` says (its
    /// `node` is ignored): the far node generates the child's key and checks that the
    /// child's token is an attenuation of this agent's. The handle directs it as this
    /// agent. Only an agent of this runtime can spawn there.
    pub async fn spawn_child_on(
        &self,
        node: &str,
        request: &crate::brain::SpawnRequest,
    ) -> Result<AgentHandle, SpawnError> {
        self.inner.spawn_remote(&self.id, node, request).await
    }

    fn identity(&self) -> Option<Arc<Identity>> {
        self.inner
            .agents
            .read_or_recover()
            .get(&self.id)
            .map(|e| e.args.identity.clone())
    }
}
