//! Spawning agents: root agents, children by attenuation, and the spawns brains ask for.

use crate::audit::AuditKind;
use crate::sync::{LockExt, RwLockExt};
use ractor::Actor;
use std::sync::{Arc, Mutex};

use bulwark_capabilities::{Attenuation, Token};
use serde_json::json;

use crate::agent::{AgentActor, AgentArgs};
use crate::brain::{Brain, SpawnRequest};
use crate::error::SpawnError;
use crate::gate::Identity;

use super::*;

impl Inner {
    /// Opens a budget account under `parent` (none for a tenant) with a daily cap.
    pub(crate) async fn open_account(
        &self,
        account: &str,
        parent: Option<&str>,
        cap: u64,
    ) -> Result<(), SpawnError> {
        self.ledger
            .open(account, parent, cap, self.clock.now())
            .map_err(SpawnError::Budget)
    }

    pub(crate) async fn spawn(
        self: &Arc<Self>,
        spec: AgentSpec,
        token: Token,
        brain: Arc<dyn Brain>,
        parent_account: Option<String>,
        parent_chain: Option<&[String]>,
    ) -> Result<AgentHandle, SpawnError> {
        if token.agent() != spec.id {
            return Err(SpawnError::WrongAgent {
                token_agent: token.agent().to_string(),
                agent: spec.id.clone(),
            });
        }
        if token.holder() != spec.key.public() {
            return Err(SpawnError::WrongKey);
        }
        if self.is_revoked(&token) {
            return Err(SpawnError::Revoked(spec.id.clone()));
        }
        {
            let agents = self.agents.read_or_recover();
            if agents.contains_key(&spec.id) {
                return Err(SpawnError::Duplicate(spec.id.clone()));
            }
            if agents.len() >= self.max_agents {
                return Err(SpawnError::TooManyAgents(self.max_agents));
            }
        }
        let account = format!("agent:{}", spec.id);
        // An agent's cap is its token's budget, carved out of its parent's account.
        let parent_cap = parent_account
            .as_deref()
            .and_then(|p| self.ledger.account(p).map(|a| a.cap.micros()));
        let cap = token
            .effective()
            .budget
            .micros()
            .min(parent_cap.unwrap_or(u64::MAX));
        self.open_account(&account, parent_account.as_deref(), cap)
            .await?;
        let chain: Vec<String> = match parent_chain {
            Some(c) => c
                .iter()
                .cloned()
                .chain(std::iter::once(spec.id.clone()))
                .collect(),
            None => token.chain().into_iter().map(|l| l.agent).collect(),
        };
        let identity = Arc::new(Identity {
            agent: spec.id.clone(),
            account,
            chain: chain.clone(),
            key: spec.key.clone(),
            token,
        });
        let args = AgentArgs {
            spec,
            identity,
            brain,
            inner: Arc::downgrade(self),
            inbox: Arc::new(Mutex::new(Vec::new())),
        };
        self.start_actor(args.clone()).await?;
        // Like the account, the spawn entry becomes durable with the agent's first
        // durable write, which precedes any effect it can have.
        let record = args
            .identity
            .record(AuditKind::AgentSpawn, json!({"chain": chain}));
        self.audit_later(record);
        Ok(AgentHandle {
            id: args.spec.id.clone(),
            inner: self.clone(),
            at: None,
        })
    }

    /// Starts (or restarts) an agent's actor under the supervisor.
    pub(crate) async fn start_actor(&self, args: AgentArgs) -> Result<(), SpawnError> {
        let sup = self
            .supervisor
            .lock_or_recover()
            .clone()
            .ok_or_else(|| SpawnError::Actor("the runtime is shut down".into()))?;
        let (actor, _) = Actor::spawn_linked(None, AgentActor, args.clone(), sup.get_cell())
            .await
            .map_err(|e| SpawnError::Actor(e.to_string()))?;
        self.agents.write_or_recover().insert(
            args.spec.id.clone(),
            AgentEntry {
                agent: AgentRef::Local(actor),
                args,
            },
        );
        Ok(())
    }

    pub(crate) async fn spawn_child(
        self: &Arc<Self>,
        parent: &Identity,
        spec: AgentSpec,
        attenuation: Attenuation,
        brain: Arc<dyn Brain>,
    ) -> Result<AgentHandle, SpawnError> {
        let child_token = parent.token.attenuate(&parent.key, attenuation)?;
        self.spawn(
            spec,
            child_token,
            brain,
            Some(parent.account.clone()),
            Some(&parent.chain),
        )
        .await
    }

    /// A child requested by a brain: everything in the request is checked like any
    /// other input from a model.
    pub(crate) async fn spawn_requested(
        self: &Arc<Self>,
        parent: &Identity,
        req: &SpawnRequest,
    ) -> Result<AgentHandle, SpawnError> {
        let factory = self
            .brains
            .read_or_recover()
            .get(&req.brain)
            .cloned()
            .ok_or_else(|| SpawnError::UnknownBrain(req.brain.clone()))?;
        let spec = AgentSpec::new(req.agent.clone());
        let att = req
            .attenuation(spec.key.public())
            .map_err(|e| SpawnError::Attenuate(bulwark_capabilities::AttenuateError::Invalid(e)))?;
        self.spawn_child(parent, spec, att, factory()).await
    }

    /// Spawns on `node` a child of local agent `parent`, through the cluster; see
    /// [`AgentHandle::spawn_child_on`].
    pub(crate) async fn spawn_remote(
        self: &Arc<Self>,
        parent: &str,
        node: &str,
        request: &SpawnRequest,
    ) -> Result<AgentHandle, SpawnError> {
        let remote = self
            .remote()
            .ok_or_else(|| SpawnError::Remote("this runtime is not in a cluster".into()))?;
        let creds = self
            .credentials_of_agent(parent)
            .ok_or_else(|| SpawnError::Actor(format!("agent `{parent}` is not running here")))?;
        // A request that cannot narrow is refused here, before anything is sent.
        request
            .attenuation(creds.token.holder())
            .map_err(|e| SpawnError::Attenuate(bulwark_capabilities::AttenuateError::Invalid(e)))?;
        let holder = remote
            .spawn(creds.clone(), node, request)
            .await
            .map_err(|e| SpawnError::Remote(e.to_string()))?;
        let mut record = AuditRecord::new(
            AuditKind::AgentSpawn,
            parent,
            json!({"child": request.agent, "node": node, "holder": holder, "remote": true}),
        );
        record.token_id = creds.token.id();
        self.audit_later(record);
        Ok(AgentHandle::remote(
            &request.agent,
            node,
            creds,
            self.clone(),
        ))
    }
}
