//! Text that leaves through a tool: its channel's output guard, and channel
//! deduplication.

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::GateError;
use crate::guard::Guards;
use crate::runtime::Inner;
use crate::tools::ToolManifest;

/// The arguments after the output guard.
pub(super) struct Guarded {
    /// The rewritten arguments, when the guard changed any.
    pub args: Option<Value>,
    /// What it changed, for the intent record.
    pub record: Option<Value>,
}

/// Passes each output argument of `manifest` through its channel's output guard:
/// personal data and secrets redacted, data-carrying links removed.
pub(super) fn guard(guards: &Guards, manifest: &ToolManifest, args: &Value) -> Guarded {
    let unchanged = Guarded {
        args: None,
        record: None,
    };
    let Some(out) = &manifest.output else {
        return unchanged;
    };
    let mut rewritten = args.clone();
    let mut redacted = Vec::new();
    let mut removed = Vec::new();
    for name in &out.args {
        if let Some(Value::String(text)) = rewritten.get(name.as_str()) {
            let g = guards.output(&out.channel, text);
            if g.changed() {
                redacted.extend(
                    g.redactions
                        .iter()
                        .map(|f| json!({"arg": name, "kind": f.kind, "hash": f.hash})),
                );
                removed.extend(
                    g.removed
                        .iter()
                        .map(|r| json!({"arg": name, "host": r.host, "kind": r.kind})),
                );
                rewritten[name.as_str()] = Value::String(g.text);
            }
        }
    }
    if redacted.is_empty() && removed.is_empty() {
        return unchanged;
    }
    Guarded {
        args: Some(rewritten),
        record: Some(
            json!({"channel": out.channel, "redacted": redacted, "removed_urls": removed}),
        ),
    }
}

impl Inner {
    /// Claims the call's channel for its content when the tool deduplicates: the same
    /// content to the same channel within the window is refused. Returns the claim,
    /// to release if the call cannot pay.
    pub(super) async fn claim_channel(
        &self,
        tool: &str,
        manifest: &ToolManifest,
        args: &Value,
    ) -> Result<Option<(String, String)>, GateError> {
        let Some(d) = &manifest.channel_dedup else {
            return Ok(None);
        };
        let channel = args
            .get(&d.channel_arg)
            .map(Value::to_string)
            .unwrap_or_default();
        let content: Vec<String> = d
            .content_args
            .iter()
            .map(|a| args.get(a).map(Value::to_string).unwrap_or_default())
            .collect();
        let key = format!("{tool}:{channel}");
        let content = content.join("\u{0}");
        let fresh = self
            .dedup
            .claim_channel(&key, &content, Duration::from_secs(d.window_secs))
            .await?;
        if !fresh {
            return Err(GateError::DuplicateOnChannel {
                channel,
                window_secs: d.window_secs,
            });
        }
        Ok(Some((key, content)))
    }
}
