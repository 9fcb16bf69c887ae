//! Tools: manifests, the registry, and native tools written as async Rust functions.
//!
//! A manifest fixes what the gate needs before anything runs: the JSON schema the
//! arguments must match, the tier, the most a call may cost, the secrets it needs,
//! an optional compensation, and how calls are deduplicated on a channel.

use crate::sync::RwLockExt;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bulwark_capabilities::{ArgValue, Args, MicroUsd, Tier, validate_name};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::guard::ArgKind;

/// Channel deduplication: the same content to the same channel within a window is
/// refused (e.g. the same email body to the same recipient twice in ten minutes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDedup {
    /// The argument naming the channel (a recipient, a chat channel).
    pub channel_arg: String,
    /// The arguments whose values make up the content.
    pub content_args: Vec<String>,
    /// The window, seconds.
    pub window_secs: u64,
}

/// What the gate does when a sensitive argument's value came from untrusted content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UntrustedPolicy {
    /// Refuse the call.
    Deny,
    /// Escalate the call to CONFIRM: a person must approve it.
    Confirm,
}

/// Arguments whose text leaves the system through a channel: the output guard of
/// that channel (redaction, exfiltration guard) rewrites them before the tool runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputArgs {
    /// The channel whose [`crate::guard::OutputPolicy`] applies.
    pub channel: String,
    /// The arguments guarded.
    pub args: Vec<String>,
}

/// What a tool is and how the gate treats it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolManifest {
    /// Unique name.
    pub name: String,
    /// What it does, for people and models.
    pub description: String,
    /// JSON schema of the arguments (an object schema).
    pub args_schema: Value,
    /// The tool's own tier; the effective tier is the stricter of this and the token's.
    pub tier: Tier,
    /// The most one call may cost; reserved before the call.
    pub max_cost: MicroUsd,
    /// Secrets the tool receives; the caller's token must grant `secret:NAME` for each.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The tool that undoes this one, if any.
    #[serde(default)]
    pub compensation: Option<String>,
    /// Channel deduplication, if any.
    #[serde(default)]
    pub channel_dedup: Option<ChannelDedup>,
    /// Longest a call may run, milliseconds.
    pub timeout_ms: u64,
    /// Arguments that must not come from untrusted content (a recipient, an IBAN, a
    /// URL, an amount), and what happens when one does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_args: BTreeMap<String, UntrustedPolicy>,
    /// What kind of value an argument holds (a link, an address, an IBAN…): its value
    /// and what the agent saw are normalized by kind before provenance compares them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arg_kinds: BTreeMap<String, ArgKind>,
    /// Arguments guarded as output, if the tool sends text out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputArgs>,
    /// PROPOSE: how long after it ran the action can be cancelled, seconds (default
    /// 15 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_window_secs: Option<u64>,
    /// CONFIRM: whether an operator may approve or reject this tool's pending
    /// proposals of one group with a single decision (off by default; meant for
    /// low-risk actions that arrive many at a time).
    #[serde(default)]
    pub batch_approval: bool,
}

impl ToolManifest {
    /// A manifest with an object schema accepting anything, tier auto, free, 10 s.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        ToolManifest {
            name: name.into(),
            description: description.into(),
            args_schema: serde_json::json!({"type": "object"}),
            tier: Tier::Auto,
            max_cost: MicroUsd::ZERO,
            secrets: Vec::new(),
            compensation: None,
            channel_dedup: None,
            timeout_ms: 10_000,
            sensitive_args: BTreeMap::new(),
            arg_kinds: BTreeMap::new(),
            output: None,
            rollback_window_secs: None,
            batch_approval: false,
        }
    }

    /// Lets an operator decide this tool's pending proposals of one group together.
    pub fn batch_approval(mut self) -> Self {
        self.batch_approval = true;
        self
    }

    /// PROPOSE: how long after it ran the action can be cancelled.
    pub fn rollback_window(mut self, window: Duration) -> Self {
        self.rollback_window_secs = Some(window.as_secs());
        self
    }

    /// Declares `arg` sensitive: its value must not come from untrusted content.
    pub fn sensitive(mut self, arg: impl Into<String>, policy: UntrustedPolicy) -> Self {
        self.sensitive_args.insert(arg.into(), policy);
        self
    }

    /// Declares `arg` sensitive and of `kind`: `https://evil.test/x` then matches an
    /// `evil.test/x` seen in an e-mail, `Bob <b@x.test>` matches `mailto:b@x.test`.
    pub fn sensitive_as(
        mut self,
        arg: impl Into<String>,
        kind: ArgKind,
        policy: UntrustedPolicy,
    ) -> Self {
        let arg = arg.into();
        self.arg_kinds.insert(arg.clone(), kind);
        self.sensitive_args.insert(arg, policy);
        self
    }

    /// Guards `args` with the output policy of `channel` before the tool runs. A
    /// guarded argument that carries a link, an address or an account number seen
    /// only in untrusted content is treated as that value: it gets the argument's
    /// [`UntrustedPolicy`] if declared sensitive, CONFIRM otherwise.
    pub fn output<I, S>(mut self, channel: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.output = Some(OutputArgs {
            channel: channel.into(),
            args: args.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Sets the argument schema.
    pub fn schema(mut self, schema: Value) -> Self {
        self.args_schema = schema;
        self
    }

    /// Sets the tier.
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// Sets the most a call may cost.
    pub fn max_cost(mut self, cost: MicroUsd) -> Self {
        self.max_cost = cost;
        self
    }

    /// Adds a secret the tool needs.
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Sets the compensating tool.
    pub fn compensation(mut self, tool: impl Into<String>) -> Self {
        self.compensation = Some(tool.into());
        self
    }

    /// Deduplicates calls on a channel.
    pub fn channel_dedup(mut self, dedup: ChannelDedup) -> Self {
        self.channel_dedup = Some(dedup);
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = timeout.as_millis() as u64;
        self
    }
}

/// What a tool receives.
#[derive(Clone, Debug)]
pub struct ToolInput {
    /// The calling agent.
    pub agent: String,
    /// The validated arguments.
    pub args: Value,
    /// The secrets the manifest names, granted by the caller's token.
    pub secrets: BTreeMap<String, String>,
    /// Sandbox limits the caller's token sets for this tool (limit → value; see
    /// `bulwark_capabilities::SANDBOX_LIMITS`); a sandboxed tool tightens its own
    /// limits with them.
    pub sandbox_limits: BTreeMap<String, u64>,
    /// For a tool that forwards calls to another node ([`Tool::forwarding`]) only:
    /// what that node needs to verify the call again.
    pub credentials: Option<CallCredentials>,
}

/// What a forwarding tool carries to the node that runs the call: the caller's token,
/// its holder key (to sign the message as the caller) and the operator's approval the
/// call runs under, if its tier needed one. Only tools built with
/// [`Tool::forwarding`] receive it.
#[derive(Clone)]
pub struct CallCredentials {
    /// The caller's token.
    pub token: bulwark_capabilities::Token,
    /// The caller's holder key.
    pub key: bulwark_capabilities::KeyPair,
    /// The approval of the proposal the call serves.
    pub approval: Option<bulwark_capabilities::Approval>,
}

impl std::fmt::Debug for CallCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCredentials")
            .field("token", &self.token.id())
            .field("approval", &self.approval.as_ref().map(|a| &a.proposal_id))
            .finish_non_exhaustive()
    }
}

/// What a tool returns.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOutput {
    /// The result, which re-enters the agent's context marked untrusted.
    pub value: Value,
    /// What the call actually cost (charged up to the manifest's `max_cost`).
    pub cost: MicroUsd,
}

impl ToolOutput {
    /// A free result.
    pub fn new(value: Value) -> Self {
        ToolOutput {
            value,
            cost: MicroUsd::ZERO,
        }
    }

    /// A result with its cost.
    pub fn with_cost(value: Value, cost: MicroUsd) -> Self {
        ToolOutput { value, cost }
    }
}

/// A tool's own failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

type Handler =
    Arc<dyn Fn(ToolInput) -> BoxFuture<'static, Result<ToolOutput, ToolError>> + Send + Sync>;

/// A tool: its manifest and its code.
#[derive(Clone)]
pub struct Tool {
    pub(crate) manifest: ToolManifest,
    pub(crate) handler: Handler,
    pub(crate) forwards: bool,
}

impl Tool {
    /// A native tool: an async Rust function.
    pub fn native<F, Fut>(manifest: ToolManifest, f: F) -> Self
    where
        F: Fn(ToolInput) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
    {
        Tool {
            manifest,
            handler: Arc::new(move |input| Box::pin(f(input))),
            forwards: false,
        }
    }

    /// A tool whose calls another node runs: the gate decides here as for any tool,
    /// then the handler receives [`ToolInput::credentials`] (the caller's token and
    /// holder key) to send the call, signed as the caller, to the node hosting the
    /// code, which verifies it again. A node never serves a forwarding tool to others.
    pub fn forwarding<F, Fut>(manifest: ToolManifest, f: F) -> Self
    where
        F: Fn(ToolInput) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
    {
        Tool {
            forwards: true,
            ..Tool::native(manifest, f)
        }
    }

    /// Whether its calls run on another node.
    pub fn forwards(&self) -> bool {
        self.forwards
    }

    /// The manifest.
    pub fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
}

/// Why a tool could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A tool of that name exists.
    #[error("a tool named `{0}` is already registered")]
    Duplicate(String),
    /// The schema is not a valid JSON schema.
    #[error("tool `{tool}` has an invalid argument schema: {reason}")]
    BadSchema {
        /// The tool.
        tool: String,
        /// Why.
        reason: String,
    },
    /// A PROPOSE tool without compensation, or another manifest problem.
    #[error("tool `{tool}`: {reason}")]
    BadManifest {
        /// The tool.
        tool: String,
        /// Why.
        reason: String,
    },
}

pub(crate) struct Registered {
    pub tool: Tool,
    pub validator: jsonschema::Validator,
}

/// The tools a runtime knows.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Arc<RwLock<BTreeMap<String, Arc<Registered>>>>,
}

impl ToolRegistry {
    /// Registers a tool. Its schema is compiled now, so bad schemas fail here.
    pub fn register(&self, tool: Tool) -> Result<(), RegisterError> {
        let m = &tool.manifest;
        let bad = |reason: String| RegisterError::BadManifest {
            tool: m.name.clone(),
            reason,
        };
        validate_name("tool", &m.name).map_err(|e| bad(e.to_string()))?;
        if m.tier == Tier::Propose && m.compensation.is_none() {
            return Err(bad(
                "a PROPOSE tool needs a compensation to undo it within its rollback window".into(),
            ));
        }
        for s in &m.secrets {
            validate_name("secret", s).map_err(|e| bad(e.to_string()))?;
        }
        let validator =
            jsonschema::validator_for(&m.args_schema).map_err(|e| RegisterError::BadSchema {
                tool: m.name.clone(),
                reason: e.to_string(),
            })?;
        let mut tools = self.tools.write_or_recover();
        if tools.contains_key(&m.name) {
            return Err(RegisterError::Duplicate(m.name.clone()));
        }
        tools.insert(m.name.clone(), Arc::new(Registered { tool, validator }));
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Registered>> {
        self.tools.read_or_recover().get(name).cloned()
    }

    /// The manifest of tool `name`, if it is registered.
    pub fn get_manifest(&self, name: &str) -> Option<ToolManifest> {
        self.get(name).map(|r| r.tool.manifest.clone())
    }

    /// The manifests of the tools whose code runs here (not [`Tool::forwarding`]).
    pub fn hosted(&self) -> Vec<ToolManifest> {
        self.tools
            .read_or_recover()
            .values()
            .filter(|r| !r.tool.forwards)
            .map(|r| r.tool.manifest.clone())
            .collect()
    }

    /// The manifests of the named tools that are registered.
    pub fn manifests(&self) -> Vec<ToolManifest> {
        self.tools
            .read_or_recover()
            .values()
            .map(|r| r.tool.manifest.clone())
            .collect()
    }
}

/// A JSON list of short strings and integers as a list argument.
fn list_arg(items: &[Value]) -> Option<ArgValue> {
    if items.len() > bulwark_capabilities::MAX_LIST_LEN {
        return None;
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(s) if s.len() <= MAX_AUTH_STRING => Some(ArgValue::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(ArgValue::Int),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(ArgValue::List)
}

/// Longest string argument passed to authorization as is; longer values take part as
/// their SHA-256 (constraints on them can then only match exactly).
const MAX_AUTH_STRING: usize = 4096;

/// The arguments as the capability layer sees them: strings and integers as they are,
/// a list of at most [`bulwark_capabilities::MAX_LIST_LEN`] strings and integers as a
/// list, anything else as its canonical JSON text.
pub(crate) fn to_capability_args(args: &Value) -> Args {
    let mut out = Args::new();
    if let Value::Object(map) = args {
        for (k, v) in map {
            let value = match v {
                Value::String(s) if s.len() <= MAX_AUTH_STRING => ArgValue::Str(s.clone()),
                Value::String(s) => {
                    use sha2::Digest;
                    ArgValue::Str(format!(
                        "sha256:{}",
                        hex::encode(sha2::Sha256::digest(s.as_bytes()))
                    ))
                }
                Value::Number(n) => match n.as_i64() {
                    Some(i) => ArgValue::Int(i),
                    None => ArgValue::Str(n.to_string()),
                },
                Value::Array(items) => list_arg(items)
                    .unwrap_or_else(|| ArgValue::Str(Value::Array(items.clone()).to_string())),
                other => ArgValue::Str(other.to_string()),
            };
            out.insert(k.clone(), value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_capabilities::Constraint;
    use serde_json::json;

    #[test]
    fn json_lists_reach_each_constraints_as_lists_and_other_shapes_stay_text() {
        let args = to_capability_args(&json!({
            "to": ["a@acme.example", "b@acme.example"],
            "bad": ["a@acme.example", "x@evil.test"],
            "mixed": ["a", 1],
            "nested": [["a@acme.example"]],
            "amount": 100.5,
        }));
        assert_eq!(
            args["to"],
            ArgValue::List(vec!["a@acme.example".into(), "b@acme.example".into()])
        );
        assert_eq!(args["mixed"], ArgValue::List(vec!["a".into(), 1.into()]));
        assert_eq!(
            args["nested"],
            ArgValue::Str(r#"[["a@acme.example"]]"#.into())
        );
        assert_eq!(args["amount"], ArgValue::Str("100.5".into()));
        let each = |arg: &str| {
            format!("t.{arg} each ends_with @acme.example")
                .parse::<Constraint>()
                .unwrap()
        };
        assert!(each("to").allows(&args));
        assert!(!each("bad").allows(&args));
        assert!(!each("nested").allows(&args));
        let amount: Constraint = "t.amount le 100.50".parse().unwrap();
        assert!(amount.allows(&args));
    }
}
