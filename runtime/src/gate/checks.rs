//! The gate's checks before anything runs: the tool and its arguments, the signed
//! call against the token, argument provenance and the tier it leads to, and the
//! approval path for the tiers that need one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bulwark_capabilities::{Args, Authorized, Request, Tier, Token};
use serde_json::{Value, json};

use super::Identity;
use super::call::{Approvals, CallContext, SignedCall};
use crate::error::GateError;
use crate::guard::Origin;
use crate::proposals::{Proposal, ProposalState};
use crate::runtime::Inner;
use crate::sync::{LockExt, RwLockExt};
use crate::tools::{Registered, ToolManifest, UntrustedPolicy, to_capability_args};

/// The tier a call runs at and why: what provenance found in its arguments.
pub(super) struct Judged {
    /// The effective tier.
    pub tier: Tier,
    /// Each argument's origin, as far as it is known.
    pub origins: BTreeMap<String, Origin>,
    /// Output arguments carrying values seen only in untrusted content.
    pub carried: Vec<Value>,
}

impl Judged {
    /// The detail of the call's `tool.call` intent record.
    pub fn intent(
        &self,
        tool: &str,
        args: &Value,
        manifest: &ToolManifest,
        output_guard: Option<Value>,
    ) -> Value {
        let reserved = manifest.max_cost.micros();
        let mut detail =
            json!({"tool": tool, "args": args, "tier": self.tier, "reserved_micro_usd": reserved});
        if !self.origins.is_empty() {
            detail["provenance"] = json!(self.origins);
        }
        if !self.carried.is_empty() {
            detail["untrusted_values"] = json!(self.carried);
        }
        if let Some(guard) = output_guard {
            detail["output_guard"] = guard;
        }
        detail
    }
}

/// The tier after argument provenance: a sensitive value the model copied from
/// untrusted content is refused (or escalated), whatever the model says about it,
/// and text leaving through the tool that carries a link, an address or an account
/// number seen only in untrusted content needs a person.
pub(super) fn judge(
    ctx: CallContext<'_>,
    tool: &str,
    args: &Value,
    manifest: &ToolManifest,
    authorized: Tier,
) -> Result<Judged, GateError> {
    let mut tier = authorized.max(manifest.tier);
    let origins = ctx
        .provenance
        .map(|p| p.classify_with(args, &manifest.arg_kinds))
        .unwrap_or_default();
    let token_trusted = ctx.who.token.effective().trusted_args.get(tool);
    for (arg, origin) in &origins {
        if *origin != Origin::Untrusted {
            continue;
        }
        if token_trusted.is_some_and(|args| args.contains(arg)) {
            return Err(GateError::UntrustedArgument {
                tool: tool.to_string(),
                arg: arg.clone(),
                rule: "the agent's token".into(),
            });
        }
        match manifest.sensitive_args.get(arg) {
            Some(UntrustedPolicy::Deny) => {
                return Err(GateError::UntrustedArgument {
                    tool: tool.to_string(),
                    arg: arg.clone(),
                    rule: "the tool's manifest".into(),
                });
            }
            Some(UntrustedPolicy::Confirm) => tier = tier.max(Tier::Confirm),
            None => {}
        }
    }
    // Declared-sensitive arguments were judged above by their own policy.
    let mut carried = Vec::new();
    if let (Some(p), Some(out)) = (ctx.provenance, &manifest.output) {
        for name in &out.args {
            if manifest.sensitive_args.contains_key(name) {
                continue;
            }
            if let Some(Value::String(text)) = args.get(name.as_str()) {
                let found = p.untrusted_values(text);
                if !found.is_empty() {
                    tier = tier.max(Tier::Confirm);
                    carried.push(json!({"arg": name, "values": found}));
                }
            }
        }
    }
    Ok(Judged {
        tier,
        origins,
        carried,
    })
}

impl Inner {
    /// The registered tool, once its arguments match its schema.
    pub(super) fn registered_with_valid_args(
        &self,
        tool: &str,
        args: &Value,
    ) -> Result<Arc<Registered>, GateError> {
        let registered = self
            .tools
            .get(tool)
            .ok_or_else(|| GateError::UnknownTool(tool.to_string()))?;
        let errors: Vec<String> = registered
            .validator
            .iter_errors(args)
            .take(3)
            .map(|e| format!("{} at `{}`", e, e.instance_path))
            .collect();
        if !errors.is_empty() {
            return Err(GateError::InvalidArguments {
                tool: tool.to_string(),
                reason: errors.join("; "),
            });
        }
        Ok(registered)
    }

    /// Verifies the signed call (possession, replay, the token) as a remote node
    /// will, and that every secret the tool needs is granted.
    pub(super) fn authorize_call(
        &self,
        who: &Identity,
        call: &SignedCall,
        manifest: &ToolManifest,
        now: SystemTime,
    ) -> Result<Authorized, GateError> {
        if call.agent != who.agent {
            return Err(GateError::Denied(bulwark_capabilities::Denial::Evaluation(
                format!(
                    "the call was signed as `{}`, not `{}`",
                    call.agent, who.agent
                ),
            )));
        }
        let signed = call.request(&who.token)?;
        let authorized = {
            let revoked = self.revocations.read_or_recover();
            let mut replay = self.replay.lock_or_recover();
            who.token
                .authorize_signed(&signed, now, &mut replay, &revoked)?
        };
        self.check_secret_grants(&who.token, &who.agent, &call.tool, &manifest.secrets, now)?;
        Ok(authorized)
    }

    /// Applies the tier: BLOCK never runs; PROPOSE and CONFIRM go through the
    /// watchdog (CONFIRM waits for a person) and are authorized again once decided;
    /// AUTO and AUTO+ pass the operator's rules that cover every call of the tool.
    /// Returns the proposal, now executing, for the tiers that make one.
    pub(super) async fn pass_tier(
        &self,
        ctx: CallContext<'_>,
        tool: &str,
        args: &Value,
        manifest: &ToolManifest,
        judged: &Judged,
        now: SystemTime,
    ) -> Result<Option<Proposal>, GateError> {
        let tier = judged.tier;
        match tier {
            Tier::Block => Err(GateError::Blocked(tool.to_string())),
            Tier::Propose | Tier::Confirm => {
                if ctx.approvals == Approvals::Unavailable {
                    return Err(GateError::ApprovalInSandbox {
                        tool: tool.to_string(),
                        tier,
                    });
                }
                if self.approval.is_none() {
                    return Err(GateError::ApprovalPathNotConfigured {
                        tool: tool.to_string(),
                        tier,
                    });
                }
                // Only an approved (or, for PROPOSE, watchdog-passed) proposal goes on.
                let p = self
                    .open_proposal(ctx, tool, args, tier, &judged.origins)
                    .await?;
                let proposal = Some(p);
                // A decision may have taken hours: the token is checked again now.
                let who = ctx.who;
                if let Err(e) =
                    self.reauthorize(&who.token, &who.agent, tool, args, &manifest.secrets)
                {
                    return self.abandon(&proposal, e).await;
                }
                Ok(proposal)
            }
            // The operator's rules that cover every call of the tool
            // ([`crate::WatchdogRules::every_call`]), not only proposals.
            Tier::Auto | Tier::AutoPlus => {
                if let Some(path) = &self.approval {
                    path.config
                        .rules
                        .check_call(&ctx.who.agent, tool, args, now)
                        .map_err(|failure| GateError::WatchdogRefused {
                            tool: tool.to_string(),
                            failure,
                        })?;
                }
                Ok(None)
            }
        }
    }

    /// Every secret `tool` needs must be granted by `token` (`secret:NAME`) now.
    pub(super) fn check_secret_grants(
        &self,
        token: &Token,
        agent: &str,
        tool: &str,
        secrets: &[String],
        now: SystemTime,
    ) -> Result<(), GateError> {
        let revoked = self.revocations.read_or_recover();
        for secret in secrets {
            let grant = Request {
                agent: agent.to_string(),
                tool: format!("secret:{secret}"),
                args: Args::new(),
                time: now,
            };
            if token.authorize(&grant, &revoked).is_err() {
                return Err(GateError::SecretNotGranted {
                    tool: tool.to_string(),
                    secret: secret.clone(),
                });
            }
        }
        Ok(())
    }

    /// Authorizes a call again at the moment it runs, without a fresh holder
    /// signature (the approval path already verified one): the token's revocation,
    /// expiry, tool grant, argument constraints and secret grants, as of now.
    pub(crate) fn reauthorize(
        &self,
        token: &Token,
        agent: &str,
        tool: &str,
        args: &Value,
        secrets: &[String],
    ) -> Result<(), GateError> {
        let now = self.clock.now();
        let request = Request {
            agent: agent.to_string(),
            tool: tool.to_string(),
            args: to_capability_args(args),
            time: now,
        };
        {
            let revoked = self.revocations.read_or_recover();
            token.authorize(&request, &revoked)?;
        }
        self.check_secret_grants(token, agent, tool, secrets, now)
    }

    /// A proposal's call stopped before its tool ran: the proposal fails with the
    /// reason (it is not left executing), and the error goes back to the caller.
    pub(super) async fn abandon<T>(
        &self,
        proposal: &Option<Proposal>,
        error: GateError,
    ) -> Result<T, GateError> {
        if let Some(p) = proposal {
            let _ = self
                .proposals
                .fail(
                    &p.id,
                    &[ProposalState::Executing],
                    format!("not run: {error}"),
                )
                .await;
        }
        Err(error)
    }
}
