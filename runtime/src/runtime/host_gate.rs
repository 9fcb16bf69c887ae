//! The runtime's gate as sandboxed tools' host functions see it.

use crate::gate::CallContext;
use crate::sync::RwLockExt;
use std::sync::{Arc, Weak};

use crate::error::GateErrorKind;
use crate::gate::Identity;

use super::*;

/// The runtime's gate, for sandbox host functions.
pub(super) struct RuntimeGate(pub(super) Weak<Inner>);

impl RuntimeGate {
    fn identity(&self, agent: &str) -> Option<(Arc<Inner>, Arc<Identity>)> {
        let inner = self.0.upgrade()?;
        let identity = inner
            .agents
            .read_or_recover()
            .get(agent)
            .map(|e| e.args.identity.clone())?;
        Some((inner, identity))
    }
}

impl crate::sandbox::HostGate for RuntimeGate {
    fn tier(&self, agent: &str, tool: &str) -> Option<bulwark_capabilities::Tier> {
        self.identity(agent)
            .and_then(|(_, who)| who.token.effective().tools.get(tool).copied())
    }

    fn call(
        &self,
        agent: &str,
        tool: &str,
        args: serde_json::Value,
        within: std::time::Duration,
    ) -> Result<serde_json::Value, crate::sandbox::HostCallError> {
        use crate::sandbox::HostCallError;
        let (inner, who) = self
            .identity(agent)
            .ok_or_else(|| HostCallError::Denied(format!("no agent `{agent}`")))?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| HostCallError::Failed("no async runtime for the host call".into()))?;
        // The call runs as its own task: when the sandboxed call's deadline comes
        // first, the guest stops and the call still settles its budget and audit
        // (it is bounded by its tool's own timeout).
        let tool = tool.to_string();
        let call = handle.spawn(async move {
            let ctx = CallContext::new(&who).in_sandbox();
            inner.sign_and_call(ctx, &tool, args).await
        });
        match handle.block_on(tokio::time::timeout(within, call)) {
            Ok(Ok(Ok(r))) => Ok(r.value),
            Ok(Ok(Err(e))) => Err(match e.kind() {
                GateErrorKind::NeedsApproval => HostCallError::NeedsApproval(e.to_string()),
                GateErrorKind::ToolFailure => HostCallError::Failed(e.to_string()),
                _ => HostCallError::Denied(e.to_string()),
            }),
            Ok(Err(join)) => Err(HostCallError::Failed(join.to_string())),
            Err(_) => Err(HostCallError::TimedOut),
        }
    }
}
