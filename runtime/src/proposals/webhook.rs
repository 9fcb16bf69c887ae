//! Announcing proposals to a webhook, through its output guard, with retries.

use crate::audit::AuditKind;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::audit::AuditRecord;
use crate::journal::Batch;
use crate::runtime::Inner;

impl Inner {
    /// Posts a Slack-compatible message about `p` to the webhook, retrying with
    /// backoff; the outcome is audited. Runs in the background: a slow receiver never
    /// holds up the runtime.
    ///
    /// The receiver is a third party: the arguments (keys and values) pass the output
    /// guard of the `webhook` channel first (by default every kind of
    /// personal data and secret redacted, data-carrying links removed). The proposal
    /// itself keeps the real values; its `args_hash` names them without revealing them.
    pub(super) fn announce(&self, hook: WebhookConfig, p: &Proposal) {
        const CHANNEL: &str = "webhook";
        fn guarded(guards: &crate::guard::Guards, value: &Value) -> Value {
            match value {
                Value::String(s) => Value::String(guards.output(CHANNEL, s).text),
                Value::Array(items) => {
                    Value::Array(items.iter().map(|v| guarded(guards, v)).collect())
                }
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| (guards.output(CHANNEL, k).text, guarded(guards, v)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        let args = guarded(&self.guards, &p.args);
        let where_ = hook
            .dashboard_url
            .as_deref()
            .map(|u| format!(" Decide at {u}"))
            .unwrap_or_default();
        let expires = p.expires_ms.map(rfc3339).unwrap_or_default();
        let text = format!(
            "Bulwark: agent `{}` asks to run `{}` ({}), proposal `{}`, expires {expires}. Arguments: {args}.{where_}",
            p.agent, p.tool, p.tier, p.id
        );
        let body = json!({"text": text, "proposal": p.id, "agent": p.agent, "tool": p.tool,
                          "tier": p.tier, "args": args, "args_hash": p.args_hash,
                          "expires_at": expires});
        let journal = self.journal.clone();
        let clock = self.clock.clone();
        let (agent, id) = (p.agent.clone(), p.id.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let mut delay = hook.backoff;
            let mut last = String::from("no attempt made");
            let mut delivered = false;
            let mut attempts = 0;
            if let Ok(client) = client {
                for attempt in 1..=hook.attempts.max(1) {
                    attempts = attempt;
                    match client.post(&hook.url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            delivered = true;
                            break;
                        }
                        Ok(r) => last = format!("HTTP {}", r.status()),
                        Err(e) => last = e.to_string(),
                    }
                    if attempt < hook.attempts {
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2);
                    }
                }
            }
            let detail = if delivered {
                json!({"proposal": id, "delivered": true, "attempts": attempts})
            } else {
                json!({"proposal": id, "delivered": false, "attempts": attempts, "error": last})
            };
            journal.defer(
                Batch::audit(AuditRecord::new(AuditKind::ProposalWebhook, &agent, detail)),
                clock.now(),
            );
        });
    }
}
