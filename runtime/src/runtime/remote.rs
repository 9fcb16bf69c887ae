//! The seam to agents on other nodes.
//!
//! A runtime alone has none: every agent is local. A cluster node implements
//! [`Remote`] and hands it to [`Runtime::set_remote`]; from then on a brain's spawn
//! action that names another node, a message to an agent hosted elsewhere, and
//! [`AgentHandle`]s of such agents go through it, each carrying the caller's
//! credentials (its token and holder key) so the far node verifies the request
//! again. The far node's answer is what the caller sees; what it ran is recorded
//! there.

use futures::future::BoxFuture;

use crate::agent::{AgentStatus, Outcome};
use crate::brain::SpawnRequest;
use crate::tools::CallCredentials;

use super::Envelope;

/// Why a request to another node did not go through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No node answered.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The far node refused, with its reason.
    #[error("refused by the far node: {0}")]
    Refused(String),
}

/// What a request to another node returns.
pub type RemoteFuture<'a, T> = BoxFuture<'a, Result<T, RemoteError>>;

/// How a runtime reaches agents on other nodes.
pub trait Remote: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &str;

    /// Spawns on `node` a child of the agent holding `parent`, narrowed as
    /// `request` says; the far node generates the child's key. Returns the child's
    /// holder public key (hex).
    fn spawn<'a>(
        &'a self,
        parent: CallCredentials,
        node: &'a str,
        request: &'a SpawnRequest,
    ) -> RemoteFuture<'a, String>;

    /// Runs `task` on `agent` (wherever it runs), directed by `director`, a holder
    /// of a token above the agent's in its chain; `pass` is the context handed over.
    fn run<'a>(
        &'a self,
        director: CallCredentials,
        agent: &'a str,
        task: &'a str,
        pass: Vec<String>,
    ) -> RemoteFuture<'a, Outcome>;

    /// What `agent` is doing.
    fn status<'a>(
        &'a self,
        director: CallCredentials,
        agent: &'a str,
    ) -> RemoteFuture<'a, AgentStatus>;

    /// Cancels `agent`'s run; whether one was in progress.
    fn cancel<'a>(
        &'a self,
        director: CallCredentials,
        agent: &'a str,
        reason: &'a str,
    ) -> RemoteFuture<'a, bool>;

    /// Puts revocation `id`, made here by [`Runtime::revoke`](super::Runtime::revoke),
    /// in force on the other nodes (which accept only an operator's signature).
    fn revoke(&self, id: Vec<u8>) -> RemoteFuture<'_, ()>;

    /// Delivers `envelope` (from the agent holding `sender`) to an agent this node
    /// does not host, wherever it runs; it arrives marked untrusted.
    fn message(&self, sender: CallCredentials, envelope: Envelope) -> RemoteFuture<'_, ()>;
}
