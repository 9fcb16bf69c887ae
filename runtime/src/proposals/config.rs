//! How proposals are decided: the approval configuration, the webhook, the path the
//! gate sends risky calls to.

use std::time::Duration;

use super::*;
use crate::dedup::digest;

/// How risky actions get approved: the watchdog's rules, the operators whose keys
/// count, and how long a CONFIRM waits.
#[derive(Clone, Debug)]
pub struct ApprovalConfig {
    /// The watchdog's business rules.
    pub rules: crate::watchdog::WatchdogRules,
    /// Operator public keys whose approvals and decisions are accepted.
    pub operators: Vec<bulwark_capabilities::PublicKey>,
    /// How long a CONFIRM proposal waits for a decision.
    pub confirm_expiry: Duration,
    /// Where new proposals that need a person are announced (Slack-compatible JSON).
    pub webhook: Option<WebhookConfig>,
    /// Most proposals undecided or running at once (default [`MAX_OPEN_PROPOSALS`]).
    pub max_open: usize,
    /// Most proposals one agent tree may make per hour, rejected ones included
    /// (default [`MAX_PROPOSALS_PER_TREE_PER_HOUR`]).
    pub max_per_tree_per_hour: usize,
}

/// A webhook told of every proposal that needs a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The URL posted to, e.g. a Slack incoming webhook.
    pub url: String,
    /// Attempts before giving up (default 5).
    pub attempts: u32,
    /// The first retry's delay; each retry doubles it (default 500 ms).
    pub backoff: Duration,
    /// Where operators decide, named in the message (e.g. the dashboard's URL).
    pub dashboard_url: Option<String>,
}

impl WebhookConfig {
    /// Posts to `url`, 5 attempts, backoff from 500 ms.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            attempts: 5,
            backoff: Duration::from_millis(500),
            dashboard_url: None,
        }
    }
}

impl ApprovalConfig {
    /// Approvals by `operators`, no business rules yet, 24 h to decide.
    pub fn new(operators: Vec<bulwark_capabilities::PublicKey>) -> Self {
        ApprovalConfig {
            rules: crate::watchdog::WatchdogRules::default(),
            operators,
            confirm_expiry: DEFAULT_CONFIRM_EXPIRY,
            webhook: None,
            max_open: MAX_OPEN_PROPOSALS,
            max_per_tree_per_hour: MAX_PROPOSALS_PER_TREE_PER_HOUR,
        }
    }

    /// Bounds the proposal store: at most `open` undecided or running proposals, and
    /// `per_tree_per_hour` new ones per agent tree per hour. Beyond either, calls that
    /// need a proposal are refused and nothing is stored.
    pub fn limits(mut self, open: usize, per_tree_per_hour: usize) -> Self {
        self.max_open = open;
        self.max_per_tree_per_hour = per_tree_per_hour;
        self
    }

    /// Announces proposals that need a person to a webhook.
    pub fn webhook(mut self, webhook: WebhookConfig) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// Sets the watchdog's rules.
    pub fn rules(mut self, rules: crate::watchdog::WatchdogRules) -> Self {
        self.rules = rules;
        self
    }

    /// Sets how long a CONFIRM waits.
    pub fn confirm_expiry(mut self, expiry: Duration) -> Self {
        self.confirm_expiry = expiry;
        self
    }
}

/// A running approval path.
pub(crate) struct ApprovalPath {
    pub watchdog: ractor::ActorRef<crate::watchdog::WatchdogMsg>,
    pub config: ApprovalConfig,
}

/// The group of proposals made by one root agent's work on one task with one tool.
pub(crate) fn group_id(root_agent: &str, task: Option<&str>, tool: &str) -> String {
    let mut id = digest(&["group", root_agent, task.unwrap_or("\u{0}direct"), tool]);
    id.truncate(16);
    id
}

pub(super) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
