//! The optional model guard: a classifier model (e.g. Llama Guard) behind an
//! OpenAI-compatible endpoint judges untrusted content before an agent sees it.
//!
//! Fail-closed by default: when the classifier cannot be reached, times out or answers
//! something unparseable, the content is judged unsafe. A deployment that prefers
//! availability sets `fail_open`, and the failure is still reported.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A classifier's judgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardVerdict {
    /// Whether the content may enter an agent's context.
    pub safe: bool,
    /// The categories the classifier named (e.g. `S14`), if any.
    pub categories: Vec<String>,
    /// Why, in words: the classifier's answer, or the failure that decided it.
    pub reason: String,
    /// The classifier's score (0..1), when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// The sentence that decided it, when the classifier points at one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

/// Why a classifier call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The endpoint could not be reached or answered with an error status.
    #[error("the guard model at {url} failed: {reason}")]
    Unavailable {
        /// The endpoint.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The answer was not a chat completion with a verdict.
    #[error("the guard model's answer is not a verdict: {0}")]
    Malformed(String),
    /// The configuration is unusable.
    #[error("guard model configuration: {0}")]
    Config(String),
    /// The local guard model could not judge the text.
    #[error("the local guard model failed: {0}")]
    Local(String),
}

/// A content classifier.
#[async_trait]
pub trait Guard: Send + Sync {
    /// Judges `content` (untrusted text about to enter an agent's context).
    async fn check(&self, content: &str) -> Result<GuardVerdict, GuardError>;

    /// Whether content passes when the classifier fails (default: no, fail closed).
    fn fail_open(&self) -> bool {
        false
    }

    /// The name of the signal it adds when it fires (default `model_guard`).
    fn name(&self) -> &'static str {
        "model_guard"
    }
}

/// How to reach an OpenAI-compatible classifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelGuardConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name, e.g. `meta-llama/Llama-Guard-3-8B`.
    pub model: String,
    /// Bearer token, if the endpoint needs one.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Per-call timeout.
    #[serde(with = "crate::clock::duration_text")]
    pub timeout: Duration,
    /// Let content through when the classifier fails (default: no).
    #[serde(default)]
    pub fail_open: bool,
}

impl ModelGuardConfig {
    /// A config for `model` at `base_url`, 10 s timeout, fail-closed.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ModelGuardConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(10),
            fail_open: false,
        }
    }
}

/// A [`Guard`] calling an OpenAI-compatible chat-completions endpoint that answers
/// in Llama Guard's format: `safe`, or `unsafe` followed by a line of categories.
pub struct ModelGuard {
    config: ModelGuardConfig,
    http: reqwest::Client,
}

impl ModelGuard {
    /// A client for `config`.
    pub fn new(config: ModelGuardConfig) -> Result<Self, GuardError> {
        if config.model.trim().is_empty() {
            return Err(GuardError::Config("the model name is empty".into()));
        }
        reqwest::Url::parse(&config.base_url)
            .map_err(|e| GuardError::Config(format!("base URL `{}`: {e}", config.base_url)))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| GuardError::Config(e.to_string()))?;
        Ok(ModelGuard { config, http })
    }

    /// Judges `content`, turning a failure into a verdict per the fail-open setting.
    pub async fn judge(&self, content: &str) -> GuardVerdict {
        match self.check(content).await {
            Ok(v) => v,
            Err(e) => GuardVerdict {
                safe: self.config.fail_open,
                categories: Vec::new(),
                score: None,
                evidence: None,
                reason: format!(
                    "{e} ({})",
                    if self.config.fail_open {
                        "failing open"
                    } else {
                        "failing closed"
                    }
                ),
            },
        }
    }

    async fn call(&self, content: &str) -> Result<String, GuardError> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let body = json!({
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 32,
            "temperature": 0,
        });
        let mut req = self.http.post(&url).json(&body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let unavailable = |reason: String| GuardError::Unavailable {
            url: url.clone(),
            reason,
        };
        let resp = req.send().await.map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let bytes = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        if bytes.len() > 1 << 20 {
            return Err(GuardError::Malformed("the answer is over 1 MiB".into()));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| GuardError::Malformed(format!("not JSON: {e}")))?;
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| GuardError::Malformed("no choices[0].message.content".into()))
    }
}

/// Parses a Llama-Guard-style answer.
pub fn parse_guard_answer(answer: &str) -> Result<GuardVerdict, GuardError> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_ascii_lowercase();
    match first.as_str() {
        "safe" => Ok(GuardVerdict {
            safe: true,
            categories: Vec::new(),
            reason: "the guard model judged it safe".into(),
            score: None,
            evidence: None,
        }),
        "unsafe" => {
            let categories: Vec<String> = lines
                .next()
                .map(|l| {
                    l.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty() && c.len() <= 16)
                        .collect()
                })
                .unwrap_or_default();
            Ok(GuardVerdict {
                safe: false,
                reason: if categories.is_empty() {
                    "the guard model judged it unsafe".into()
                } else {
                    format!(
                        "the guard model judged it unsafe ({})",
                        categories.join(", ")
                    )
                },
                categories,
                score: None,
                evidence: None,
            })
        }
        _ => Err(GuardError::Malformed(format!(
            "expected `safe` or `unsafe`, got {:?}",
            super::sanitize::excerpt(answer, 60)
        ))),
    }
}

#[async_trait]
impl Guard for ModelGuard {
    async fn check(&self, content: &str) -> Result<GuardVerdict, GuardError> {
        let answer = self.call(content).await?;
        parse_guard_answer(&answer)
    }

    fn fail_open(&self) -> bool {
        self.config.fail_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert!(parse_guard_answer("safe").is_ok_and(|v| v.safe));
        let v = parse_guard_answer("unsafe\nS1, S14\n");
        assert!(
            v.as_ref()
                .is_ok_and(|v| !v.safe && v.categories == ["S1", "S14"]),
            "{v:?}"
        );
        assert!(parse_guard_answer("I think it is fine").is_err());
        assert!(parse_guard_answer("").is_err());
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(ModelGuard::new(ModelGuardConfig::new("not a url", "m")).is_err());
        assert!(ModelGuard::new(ModelGuardConfig::new("http://127.0.0.1:1/v1", " ")).is_err());
    }
}
