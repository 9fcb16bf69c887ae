//! Deduplication: tasks, channels, proposals and discovered work.
//!
//! - task: the same title for the same agent within 24 h is refused;
//! - channel: the same content to the same channel within a tool's window is refused;
//! - proposal: the same agent and action while one is pending returns the pending one;
//! - discovery: a new task that already exists in the backlog or in progress is not
//!   created again.
//!
//! State lives in the journal's key-value table, so a restart keeps it. Each layer
//! checks and records under one lock, so two racing callers cannot both pass.

use crate::layout;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::clock::{Clock, unix_ms};
use crate::error::StoreError;
use crate::journal::{Batch, Journal, Mode};

/// How long a task title blocks the same task for the same agent.
pub const TASK_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting.
    Backlog,
    /// Being worked on.
    InProgress,
    /// Finished.
    Done,
}

/// A task on the board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardTask {
    /// Its id.
    pub id: String,
    /// Its title as submitted.
    pub title: String,
    /// Its state.
    pub state: TaskState,
}

/// The result of submitting a discovered task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submission {
    /// A new task was created.
    Created(BoardTask),
    /// The same task is already in the backlog or in progress.
    Exists(BoardTask),
}

/// Titles compare case-insensitively with whitespace collapsed.
pub(crate) fn normalize(title: &str) -> String {
    title
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// SHA-256 (hex) of length-prefixed parts: an unambiguous key for several strings.
pub(crate) fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The deduplication layers.
#[derive(Clone)]
pub struct Dedup {
    journal: Journal,
    clock: Arc<dyn Clock>,
    lock: Arc<Mutex<()>>,
}

impl Dedup {
    pub(crate) fn new(journal: Journal, clock: Arc<dyn Clock>) -> Self {
        Dedup {
            journal,
            clock,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn live_until(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let now = unix_ms(self.clock.now());
        Ok(self
            .journal
            .kv_get(key)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .filter(|until| *until > now))
    }

    /// Writes (or, with `None`, deletes) one entry, visibly. Callers hold `lock`.
    async fn put(&self, key: String, value: Option<Vec<u8>>, mode: Mode) -> Result<(), StoreError> {
        let batch = Batch {
            kv: vec![(key, value)],
            ..Batch::default()
        };
        self.journal.write(batch, mode, self.clock.now()).await
    }

    /// Records `key` for `window` unless it is already live. Returns false if it was.
    async fn claim(&self, key: String, window: Duration) -> Result<bool, StoreError> {
        let _guard = self.lock.lock().await;
        if self.live_until(&key)?.is_some() {
            return Ok(false);
        }
        let until = unix_ms(self.clock.now() + window).to_be_bytes().to_vec();
        self.put(key, Some(until), Mode::Visible).await?;
        Ok(true)
    }

    async fn forget(&self, key: String) -> Result<(), StoreError> {
        let _guard = self.lock.lock().await;
        self.put(key, None, Mode::Visible).await
    }

    fn task_key(agent: &str, title: &str) -> String {
        layout::key(layout::DEDUP_TASK, &digest(&[agent, &normalize(title)]))
    }

    fn channel_key(channel: &str, content: &str) -> String {
        layout::key(layout::DEDUP_CHANNEL, &digest(&[channel, content]))
    }

    fn proposal_key(agent: &str, action: &str) -> String {
        layout::key(layout::DEDUP_PROPOSAL, &digest(&[agent, action]))
    }

    /// Task layer: true if `agent` may start `title` now (and records it).
    pub async fn claim_task(&self, agent: &str, title: &str) -> Result<bool, StoreError> {
        self.claim(Self::task_key(agent, title), TASK_WINDOW).await
    }

    /// Task layer: forgets a claim, so a task that failed can be retried (its circuit
    /// breaker, not deduplication, governs retries).
    pub async fn release_task(&self, agent: &str, title: &str) -> Result<(), StoreError> {
        self.forget(Self::task_key(agent, title)).await
    }

    /// Channel layer: true if `content` may go to `channel` now (and records it).
    pub async fn claim_channel(
        &self,
        channel: &str,
        content: &str,
        window: Duration,
    ) -> Result<bool, StoreError> {
        self.claim(Self::channel_key(channel, content), window)
            .await
    }

    /// Channel layer: forgets a claim whose call did not go out.
    pub(crate) async fn release_channel(
        &self,
        channel: &str,
        content: &str,
    ) -> Result<(), StoreError> {
        self.forget(Self::channel_key(channel, content)).await
    }

    /// Proposal layer: the pending proposal of `agent` for `action`, or records
    /// `new_id` as pending and returns `None`.
    pub async fn pending_proposal(
        &self,
        agent: &str,
        action: &str,
        new_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let _guard = self.lock.lock().await;
        let key = Self::proposal_key(agent, action);
        if let Some(existing) = self.journal.kv_get(&key)? {
            return Ok(Some(String::from_utf8_lossy(&existing).into_owned()));
        }
        self.put(key, Some(new_id.as_bytes().to_vec()), Mode::Visible)
            .await?;
        Ok(None)
    }

    /// Proposal layer: the proposal for `agent` and `action` is no longer pending.
    pub async fn resolve_proposal(&self, agent: &str, action: &str) -> Result<(), StoreError> {
        self.forget(Self::proposal_key(agent, action)).await
    }

    /// Discovery layer: creates a task unless the same one is in the backlog or in
    /// progress.
    pub async fn submit_task(&self, title: &str) -> Result<Submission, StoreError> {
        let _guard = self.lock.lock().await;
        let key = layout::key(layout::BOARD, &digest(&[&normalize(title)]));
        if let Some(raw) = self.journal.kv_get(&key)?
            && let Ok(task) = layout::decode::<BoardTask>(&raw)
            && task.state != TaskState::Done
        {
            return Ok(Submission::Exists(task));
        }
        let task = BoardTask {
            id: format!(
                "task-{}",
                &digest(&[title, &unix_ms(SystemTime::now()).to_string()])[..12]
            ),
            title: title.to_string(),
            state: TaskState::Backlog,
        };
        self.put_task(&key, &task).await?;
        Ok(Submission::Created(task))
    }

    /// Discovery layer: moves a task to `state`.
    pub async fn set_task_state(&self, title: &str, state: TaskState) -> Result<bool, StoreError> {
        let _guard = self.lock.lock().await;
        let key = layout::key(layout::BOARD, &digest(&[&normalize(title)]));
        let Some(raw) = self.journal.kv_get(&key)? else {
            return Ok(false);
        };
        let mut task: BoardTask = layout::decode(&raw)?;
        task.state = state;
        self.put_task(&key, &task).await?;
        Ok(true)
    }

    async fn put_task(&self, key: &str, task: &BoardTask) -> Result<(), StoreError> {
        let bytes = layout::encode(task)?;
        self.put(key.to_string(), Some(bytes), Mode::Durable).await
    }
}
