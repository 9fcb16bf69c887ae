//! Content guards: what crosses the boundary between an agent and the world.
//!
//! - [`Sanitizer`]: everything from outside is normalized, stripped of invisible
//!   characters and role markers, its hidden text surfaced, scored for injection and
//!   [`spotlight`]ed as data before a model sees it.
//! - [`Provenance`]: which values an agent saw in untrusted content, so the gate can
//!   refuse a sensitive argument the model copied from an attacker's email.
//! - [`Redactor`]: personal data and secrets are replaced by keyed hashes in output,
//!   log lines and audit text.
//! - [`ExfilGuard`]: every URL resolved as a browser would; images from hosts not
//!   allow-listed, script URLs, and links that carry data (strict) or personal data
//!   and secrets (answers) to such hosts are removed from output.
//! - [`Guard`]: optional classifier models, fail-closed: the [`LocalGuard`] in the
//!   process, or a [`ModelGuard`] behind an OpenAI-compatible endpoint.
//!
//! This module owns detection and rewriting only. What the runtime does with a
//! verdict — deny, escalate, redact — is decided in the gate and the agent loop, and
//! none of it relies on the score: the token decides what any text can cause.

pub mod encoder;
mod exfil;
pub mod local;
mod model;
mod patterns;
mod provenance;
mod redact;
mod sanitize;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use exfil::{Defanged, ExfilGuard, LinkPolicy, RemovedUrl, Target, resolve};
pub use local::{Assessment, EncoderKind, Head, LocalGuard, LocalModelConfig, LocalModelError};
pub use model::{
    Guard, GuardError, GuardVerdict, ModelGuard, ModelGuardConfig, parse_guard_answer,
};
pub use provenance::{ArgKind, Origin, Provenance, UntrustedValue};
pub use redact::{Finding, PiiKind, Redacted, Redactor};
pub use sanitize::{
    GuardNote, Sanitizer, SanitizerConfig, Scan, Signal, Verdict, spotlight, spotlight_text,
};

/// How output to one channel is guarded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputPolicy {
    /// What is redacted.
    pub redact: Vec<PiiKind>,
    /// Hosts links and images may point to.
    pub allow_hosts: Vec<String>,
    /// How links to other hosts are judged (images are removed either way).
    pub links: LinkPolicy,
}

impl Default for OutputPolicy {
    /// Everything redacted; no host allowed for data-carrying links or images.
    fn default() -> Self {
        OutputPolicy {
            redact: PiiKind::ALL.to_vec(),
            allow_hosts: Vec::new(),
            links: LinkPolicy::Strict,
        }
    }
}

impl OutputPolicy {
    /// Only secrets redacted (API keys, private keys); personal data passes.
    pub fn secrets_only() -> Self {
        OutputPolicy {
            redact: PiiKind::SECRETS.to_vec(),
            allow_hosts: Vec::new(),
            links: LinkPolicy::Strict,
        }
    }

    /// The answer to whoever asked: only secrets redacted, and links kept unless
    /// they carry personal data or secrets to a host not allow-listed.
    pub fn answer() -> Self {
        OutputPolicy::secrets_only().with_links(LinkPolicy::KeepUnlessSensitive)
    }

    /// Judges links by `links`.
    pub fn with_links(mut self, links: LinkPolicy) -> Self {
        self.links = links;
        self
    }
}

/// The runtime's guard settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// The untrusted-input pipeline.
    pub sanitizer: SanitizerConfig,
    /// Output to channels without a policy of their own.
    pub default_output: OutputPolicy,
    /// Per channel: a tool's output channel, or [`ANSWER_CHANNEL`].
    pub channels: BTreeMap<String, OutputPolicy>,
    /// Redact the audit trail's text (arguments, results, answers).
    pub redact_audit: bool,
    /// What an agent's final answer shows of a link, address or account number that
    /// it saw only in untrusted content.
    pub answer_provenance: AnswerProvenance,
    /// The local guard model, when set: untrusted content it judges an injection is
    /// withheld. The runtime does not start when it is set but cannot load.
    pub local_model: Option<LocalModelConfig>,
}

/// How a final answer treats values seen only in untrusted content. A link in an
/// answer is not fetched by itself (unlike an image), so the default marks it with its
/// source and lets the person decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerProvenance {
    /// Keep the value and mark it: `https://x.test [unverified: from tool read_inbox]`.
    #[default]
    Mark,
    /// Replace it: `[withheld: url from tool read_inbox]`.
    Withhold,
    /// Leave the answer as the model wrote it.
    Off,
}

/// The channel of an agent's final answer.
pub const ANSWER_CHANNEL: &str = "answer";

impl Default for GuardConfig {
    fn default() -> Self {
        let mut channels = BTreeMap::new();
        // The answer goes back to whoever asked; personal data in it is theirs, and so
        // are the links they asked for.
        channels.insert(ANSWER_CHANNEL.to_string(), OutputPolicy::answer());
        GuardConfig {
            sanitizer: SanitizerConfig::default(),
            default_output: OutputPolicy::default(),
            channels,
            redact_audit: true,
            answer_provenance: AnswerProvenance::Mark,
            local_model: None,
        }
    }
}

/// Output after the output guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardedOutput {
    /// The text to send.
    pub text: String,
    /// Values redacted.
    pub redactions: Vec<Finding>,
    /// Links and images removed.
    pub removed: Vec<RemovedUrl>,
}

impl GuardedOutput {
    /// Whether the guard changed anything.
    pub fn changed(&self) -> bool {
        !self.redactions.is_empty() || !self.removed.is_empty()
    }
}

/// The guards of one runtime, built from a [`GuardConfig`] and the redaction key.
#[derive(Clone)]
pub struct Guards {
    config: GuardConfig,
    sanitizer: Sanitizer,
    key: [u8; 32],
    audit: Redactor,
    models: Vec<Arc<dyn Guard>>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("config", &self.config)
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

impl Guards {
    /// Guards for `config`, hashing redacted values under `key`.
    pub fn new(config: GuardConfig, key: [u8; 32]) -> Self {
        Guards {
            sanitizer: Sanitizer::new(config.sanitizer.clone()),
            audit: Redactor::new(key),
            key,
            config,
            models: Vec::new(),
        }
    }

    /// Adds a classifier model that judges untrusted content too.
    pub fn with_model(mut self, model: Arc<dyn Guard>) -> Self {
        self.models.push(model);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// The untrusted-input pipeline.
    pub fn sanitizer(&self) -> &Sanitizer {
        &self.sanitizer
    }

    /// The classifier models, in the order they judge.
    pub fn models(&self) -> &[Arc<dyn Guard>] {
        &self.models
    }

    /// The redactor for audit text and log lines.
    pub fn audit_redactor(&self) -> Option<&Redactor> {
        self.config.redact_audit.then_some(&self.audit)
    }

    /// The policy of `channel`.
    pub fn policy(&self, channel: &str) -> &OutputPolicy {
        self.config
            .channels
            .get(channel)
            .unwrap_or(&self.config.default_output)
    }

    /// Guards output to `channel`: exfiltrating links and images first (a redaction
    /// inside a URL would hide the host), then personal data and secrets.
    pub fn output(&self, channel: &str, text: &str) -> GuardedOutput {
        let policy = self.policy(channel);
        let defanged = ExfilGuard::allowing(policy.allow_hosts.iter().cloned())
            .with_links(policy.links)
            .defang(text);
        let redacted = Redactor::new(self.key)
            .with_kinds(policy.redact.iter().copied())
            .keeping_link_tokens(policy.links == LinkPolicy::KeepUnlessSensitive)
            .redact(&defanged.text);
        GuardedOutput {
            text: redacted.text,
            redactions: redacted.findings,
            removed: defanged.removed,
        }
    }
}

/// A `tracing-subscriber` writer factory that redacts each log line before it is
/// written: `fmt().with_writer(RedactingMakeWriter::new(std::io::stderr, redactor))`.
pub struct RedactingMakeWriter<M> {
    inner: M,
    redactor: Arc<Redactor>,
}

impl<M> RedactingMakeWriter<M> {
    /// Wraps `inner`, redacting with `redactor`.
    pub fn new(inner: M, redactor: Redactor) -> Self {
        RedactingMakeWriter {
            inner,
            redactor: Arc::new(redactor),
        }
    }
}

/// One log event being written: buffered, then redacted and written when dropped.
pub struct RedactingWriter<W: std::io::Write> {
    inner: W,
    redactor: Arc<Redactor>,
    buf: Vec<u8>,
}

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return self.inner.flush();
        }
        let text = String::from_utf8_lossy(&self.buf);
        let out = self.redactor.redact(&text).text;
        self.buf.clear();
        self.inner.write_all(out.as_bytes())?;
        self.inner.flush()
    }
}

impl<W: std::io::Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

impl<'a, M> tracing_subscriber::fmt::MakeWriter<'a> for RedactingMakeWriter<M>
where
    M: tracing_subscriber::fmt::MakeWriter<'a>,
{
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            redactor: self.redactor.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::LockExt;

    #[test]
    fn channels_get_their_own_policy() {
        let guards = Guards::new(GuardConfig::default(), [1; 32]);
        let text =
            "Reach ana@example.com, key AKIAIOSFODNN7EXAMPLE ![p](https://evil.test/p.png?d=1)";
        let answer = guards.output(ANSWER_CHANNEL, text);
        assert!(
            answer
                .text
                .starts_with("Reach ana@example.com, key [REDACTED:api_key:")
        );
        assert_eq!(answer.removed.len(), 1);
        let email = guards.output("send_email", text);
        assert!(email.text.starts_with("Reach [REDACTED:email:"));
        assert!(email.changed());
    }

    /// The reset link the user asked for survives the answer whole (token included);
    /// an image and a link carrying an email to another host do not. Text a tool sends
    /// on judges links strictly and loses the reset link too.
    #[test]
    fn the_answer_keeps_the_links_asked_for_and_loses_the_exfiltrating_ones() {
        let guards = Guards::new(GuardConfig::default(), [1; 32]);
        let reset =
            "https://accounts.shop.test/reset?token=9f8e7d6c5b4a39281706f5e4d3c2b1a0aa&uid=48213";
        let text = format!(
            "Your reset link: {reset}\n![s](https://evil.test/s.png) [more](//evil.test/?u=ana%40example.com)"
        );
        let answer = guards.output(ANSWER_CHANNEL, &text);
        assert!(answer.text.contains(reset), "{}", answer.text);
        assert!(answer.redactions.is_empty(), "{:?}", answer.redactions);
        assert_eq!(answer.removed.len(), 2, "{:?}", answer.removed);
        assert!(!answer.text.contains("evil.test/"), "{}", answer.text);
        let forum = guards.output("public_forum", &text);
        assert!(!forum.text.contains("token="), "{}", forum.text);
        assert_eq!(forum.removed.len(), 3, "{:?}", forum.removed);
        // Configured per channel.
        let policy: OutputPolicy =
            serde_json::from_str(r#"{"links": "keep_unless_sensitive"}"#).unwrap_or_default();
        assert_eq!(policy.links, LinkPolicy::KeepUnlessSensitive);
    }

    mod robustness {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn output_is_idempotent_on_every_channel(s in "[a-z@/:?=&#.\\ \\[\\]()!<>\"'0-9]{0,60}") {
                let guards = Guards::new(GuardConfig::default(), [1; 32]);
                for channel in [ANSWER_CHANNEL, "public_forum"] {
                    let once = guards.output(channel, &s);
                    let twice = guards.output(channel, &once.text);
                    prop_assert_eq!(&twice.text, &once.text, "{:?}", s);
                }
            }
        }
    }

    #[test]
    fn log_lines_are_redacted_before_they_are_written() {
        use std::sync::Mutex;
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock_or_recover().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let captured = sink.clone();
        let make = RedactingMakeWriter::new(move || sink.clone(), Redactor::new([3; 32]));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(make)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                user = "ana@example.com",
                "paid with card 4111 1111 1111 1111"
            );
        });
        let text = String::from_utf8(captured.0.lock_or_recover().clone()).unwrap_or_default();
        assert!(text.contains("[REDACTED:email:"), "{text}");
        assert!(text.contains("[REDACTED:card:"), "{text}");
        assert!(
            !text.contains("ana@example.com") && !text.contains("4111"),
            "{text}"
        );
        let _ = RedactingMakeWriter::new(std::io::sink, Redactor::new([0; 32])).make_writer();
    }
}
