//! Messages between agents: the envelope, the inbox bounds and the messaging capability.

use crate::sync::{LockExt, RwLockExt};

use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::gate::Identity;

use super::*;
use crate::agent::{AgentMsg, Sender};

/// A message between agents. Agents address each other by id; the envelope is
/// serializable so a cluster can carry it between machines unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version.
    pub v: u16,
    /// Sender agent id.
    pub from: String,
    /// Recipient agent id.
    pub to: String,
    /// The text.
    pub content: String,
    /// When it was sent, ms since the epoch.
    pub sent_at_ms: u64,
}

/// Most undelivered messages an agent's inbox holds. Beyond it, a message from the
/// embedding program drops the oldest; a message from an agent is refused.
pub const MAX_INBOX: usize = 256;

/// Most undelivered messages one agent may have in another agent's inbox: a flood from
/// one sender cannot push out the others' messages.
pub const MAX_INBOX_PER_SENDER: usize = 32;

/// Most agents one runtime holds; beyond it spawning is refused.
pub const MAX_AGENTS: usize = 10_000;

/// Most messages one agent may send per minute.
pub const MAX_MESSAGES_PER_MINUTE: usize = 60;

/// The capability an agent's token must grant to message other agents (of its own
/// tenant only). Authorized with the arguments `to` (the recipient) and `tree` (the
/// recipient's root agent), so a token can narrow it with constraints, e.g. to its own
/// tree: `message:send.tree == ROOT`.
pub const MESSAGE_CAPABILITY: &str = "message:send";
impl Inner {
    /// A message from the embedding program: handed to the recipient's actor, whose
    /// bounded inbox drops its oldest message when full.
    pub(crate) fn deliver(&self, envelope: Envelope) -> Result<(), RunError> {
        let to = envelope.to.clone();
        let agent = self.agent_ref(&to)?;
        agent
            .actor()
            .cast(AgentMsg::Deliver {
                envelope,
                from: Sender::Program,
                reply: None,
            })
            .map_err(|_| RunError::NoSuchAgent(to))
    }

    /// The reference to agent `id`.
    fn agent_ref(&self, id: &str) -> Result<AgentRef, RunError> {
        self.agents
            .read_or_recover()
            .get(id)
            .map(|e| e.agent.clone())
            .ok_or_else(|| RunError::NoSuchAgent(id.to_string()))
    }

    /// A message one agent's brain sends another: a granted capability, within the
    /// sender's tenant, rate-limited per sender, and held to a per-sender share of the
    /// recipient's inbox (refused, never evicting others, beyond it).
    pub(crate) async fn send_from_agent(
        &self,
        sender: &Identity,
        envelope: Envelope,
    ) -> Result<(), RunError> {
        let to = envelope.to.clone();
        let refuse = |reason: String| RunError::MessageRefused {
            to: to.clone(),
            reason,
        };
        let local = self
            .agents
            .read_or_recover()
            .get(&envelope.to)
            .map(|e| (e.agent.clone(), e.args.identity.clone()));
        let Some((agent, recipient)) = local else {
            // Hosted elsewhere: the recipient's node checks the capability against
            // the recipient it knows; the rate is this node's to hold.
            let remote = self
                .remote()
                .ok_or_else(|| RunError::NoSuchAgent(envelope.to.clone()))?;
            self.admit_message_rate(&sender.agent).map_err(&refuse)?;
            let creds = crate::tools::CallCredentials {
                token: sender.token.clone(),
                key: sender.key.clone(),
                approval: None,
            };
            return remote
                .message(creds, envelope)
                .await
                .map_err(|e| refuse(e.to_string()));
        };
        self.check_message(&sender.token, &sender.agent, &recipient, &envelope.to)
            .map_err(&refuse)?;
        self.admit_message_rate(&sender.agent).map_err(&refuse)?;
        self.hand_over(agent, envelope).await
    }

    /// A message from an agent on another node, under its verified `sender` token:
    /// the same capability, tenant and inbox rules as a local agent's message; the
    /// rate is the sending node's to hold.
    pub(crate) async fn deliver_from_node(
        &self,
        sender: &bulwark_capabilities::Token,
        envelope: Envelope,
    ) -> Result<(), RunError> {
        let to = envelope.to.clone();
        let refuse = |reason: String| RunError::MessageRefused {
            to: to.clone(),
            reason,
        };
        if envelope.from != sender.agent() {
            return Err(refuse(format!(
                "the message claims to come from `{}`, not the token's agent `{}`",
                envelope.from,
                sender.agent()
            )));
        }
        let (agent, recipient) = {
            let agents = self.agents.read_or_recover();
            let entry = agents
                .get(&envelope.to)
                .ok_or_else(|| RunError::NoSuchAgent(envelope.to.clone()))?;
            (entry.agent.clone(), entry.args.identity.clone())
        };
        self.check_message(sender, sender.agent(), &recipient, &envelope.to)
            .map_err(refuse)?;
        self.hand_over(agent, envelope).await
    }

    /// Whether `sender` (agent `from`) may message `recipient`: the same tenant, and
    /// the messaging capability granted for this recipient at a tier that does not
    /// wait. The reason when not.
    fn check_message(
        &self,
        sender: &bulwark_capabilities::Token,
        from: &str,
        recipient: &Identity,
        to: &str,
    ) -> Result<(), String> {
        if recipient.token.tenant() != sender.tenant() {
            return Err("the recipient belongs to another tenant".into());
        }
        let mut args = bulwark_capabilities::Args::new();
        args.insert(
            "to".into(),
            bulwark_capabilities::ArgValue::Str(to.to_string()),
        );
        args.insert(
            "tree".into(),
            bulwark_capabilities::ArgValue::Str(
                recipient.chain.first().unwrap_or(&recipient.agent).clone(),
            ),
        );
        let request = bulwark_capabilities::Request {
            agent: from.to_string(),
            tool: MESSAGE_CAPABILITY.into(),
            args,
            time: self.clock.now(),
        };
        let authorized = {
            let revoked = self.revocations.read_or_recover();
            sender
                .authorize(&request, &revoked)
                .map_err(|d| d.to_string())?
        };
        if authorized.tier > bulwark_capabilities::Tier::AutoPlus {
            return Err(format!(
                "`{MESSAGE_CAPABILITY}` is at tier {} for this agent; messages do not wait for approval",
                authorized.tier
            ));
        }
        Ok(())
    }

    /// Admits one message of `sender` against its per-minute rate.
    fn admit_message_rate(&self, sender: &str) -> Result<(), String> {
        let now_ms = crate::clock::unix_ms(self.clock.now());
        if self
            .message_rate
            .lock_or_recover()
            .admit(sender, now_ms, MAX_MESSAGES_PER_MINUTE)
        {
            Ok(())
        } else {
            Err(format!(
                "`{sender}` may send at most {MAX_MESSAGES_PER_MINUTE} messages per minute"
            ))
        }
    }

    /// Hands an agent's message to the recipient's actor, which holds the sender to
    /// its share of the inbox.
    async fn hand_over(&self, agent: AgentRef, envelope: Envelope) -> Result<(), RunError> {
        let to = envelope.to.clone();
        let delivered = agent
            .actor()
            .call(
                |reply| AgentMsg::Deliver {
                    envelope,
                    from: Sender::Agent,
                    reply: Some(reply),
                },
                None,
            )
            .await;
        match delivered {
            Ok(ractor::rpc::CallResult::Success(accepted)) => {
                accepted.map_err(|reason| RunError::MessageRefused { to, reason })
            }
            _ => Err(RunError::NoSuchAgent(to)),
        }
    }
}
