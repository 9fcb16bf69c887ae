//! Calls another node's gate already passed: the node hosting the tool checks them
//! again itself, so a compromised caller node cannot make it act beyond a token.
//!
//! Checked here, in order: the tool is hosted here (not forwarded on) and the
//! arguments match its schema; the call is signed by the token's holder for exactly
//! these arguments, inside the time window and never replayed, and the token allows
//! it (chain, expiry, revocation, argument constraints) and grants the tool's
//! secrets; the tier — the stricter of the token's and the manifest's — is not BLOCK,
//! and a PROPOSE or CONFIRM call carries an approval signed by one of this node's
//! operators for exactly these arguments. Then the call's record is written durably,
//! before the tool runs. The caller's node reserved and settles the budget; this node
//! charges nothing.

use bulwark_capabilities::{Approval, Denial, Tier, Token};
use serde_json::json;

use super::SignedCall;
use super::execute::{RunAs, run_handler};
use crate::audit::AuditKind;
use crate::error::GateError;
use crate::journal::{Batch, Mode};
use crate::proposals::Proposal;
use crate::runtime::Inner;
use crate::sync::{LockExt, RwLockExt};
use crate::tools::{ToolInput, ToolOutput};

impl Inner {
    /// Checks and runs `call`, made under `token` and sent by node `from`; see the
    /// module documentation for what is checked.
    pub(crate) async fn serve_remote_call(
        &self,
        token: &Token,
        call: &SignedCall,
        approval: Option<&Approval>,
        from: &str,
    ) -> Result<ToolOutput, GateError> {
        let refuse = |why: String| GateError::Denied(Denial::Evaluation(why));
        let registered = self.registered_with_valid_args(&call.tool, &call.args)?;
        if registered.tool.forwards {
            return Err(GateError::UnknownTool(call.tool.clone()));
        }
        let manifest = &registered.tool.manifest;
        let now = self.clock.now();
        if call.agent != token.agent() {
            return Err(refuse(format!(
                "the call was signed as `{}`, not as the token's agent `{}`",
                call.agent,
                token.agent()
            )));
        }
        let signed = call.request(token)?;
        let authorized = {
            let revoked = self.revocations.read_or_recover();
            let mut replay = self.replay.lock_or_recover();
            token.authorize_signed(&signed, now, &mut replay, &revoked)?
        };
        self.check_secret_grants(token, &call.agent, &call.tool, &manifest.secrets, now)?;
        let tier = authorized.tier.max(manifest.tier);
        let approved = match tier {
            Tier::Block => return Err(GateError::Blocked(call.tool.clone())),
            Tier::Auto | Tier::AutoPlus => None,
            Tier::Propose | Tier::Confirm => {
                let approval = approval.ok_or_else(|| {
                    refuse(format!(
                        "a {tier} call from another node carries no operator approval"
                    ))
                })?;
                let operators = self
                    .approval
                    .as_ref()
                    .map(|p| p.config.operators.as_slice())
                    .unwrap_or_default();
                let approver = approval
                    .verify(
                        &approval.proposal_id,
                        &Proposal::approval_args(&call.args),
                        operators,
                        now,
                    )
                    .map_err(|e| refuse(format!("the approval does not hold here: {e}")))?;
                Some(json!({"proposal": approval.proposal_id, "by": approver.to_hex()}))
            }
        };
        let chain: Vec<String> = token.chain().into_iter().map(|l| l.agent).collect();
        let run_as = RunAs {
            agent: &call.agent,
            token_id: token.id(),
            chain: &chain,
            account: "",
        };
        let tool = call.tool.as_str();
        let intent = run_as.record(
            AuditKind::RemoteCall,
            json!({"tool": tool, "args": call.args, "tier": tier, "from_node": from,
                   "approval": approved}),
        );
        self.journal
            .write(Batch::audit(intent), Mode::Durable, now)
            .await?;
        let input = ToolInput {
            agent: call.agent.clone(),
            args: call.args.clone(),
            secrets: self.decrypt_secrets(&manifest.secrets).map_err(|reason| {
                GateError::ToolFailed {
                    tool: tool.to_string(),
                    reason,
                }
            })?,
            sandbox_limits: token
                .effective()
                .sandbox_limits
                .get(tool)
                .cloned()
                .unwrap_or_default(),
            credentials: None,
        };
        let outcome = run_handler(&registered, input).await;
        let (kind, detail) = match &outcome {
            Ok(out) => (
                AuditKind::ToolResult,
                json!({"tool": tool, "result": out.value, "remote": true}),
            ),
            Err(e) => (
                AuditKind::ToolFailed,
                json!({"tool": tool, "error": e.to_string(), "remote": true}),
            ),
        };
        self.audit_later(run_as.record(kind, detail));
        outcome
    }
}
