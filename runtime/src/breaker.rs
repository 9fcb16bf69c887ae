//! Circuit breakers per (agent, task), with exponential backoff, in durable storage.
//!
//! After `threshold` consecutive failures the breaker opens for the next backoff step
//! (default 5 min, 15 min, 60 min, then 60 min again); when the time is up it lets one
//! run through (half-open): success closes it and resets the steps, failure opens it
//! for the next step. State is written durably, so a restarted runtime keeps it.

use crate::audit::AuditKind;
use crate::layout;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::audit::AuditRecord;
use crate::clock::{Clock, unix_ms};
use crate::error::StoreError;
use crate::journal::{Batch, Journal, Mode};

/// When breakers open and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open a breaker.
    pub threshold: u32,
    /// Open durations for the first, second, ... trip; the last repeats.
    pub backoff: Vec<Duration>,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            threshold: 3,
            backoff: vec![
                Duration::from_secs(5 * 60),
                Duration::from_secs(15 * 60),
                Duration::from_secs(60 * 60),
            ],
        }
    }
}

/// One breaker's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerState {
    /// Consecutive failures since the last success or trip.
    pub failures: u32,
    /// Trips since the last success.
    pub trips: u32,
    /// Open until this time (ms since the epoch), if open.
    pub open_until_ms: Option<u64>,
}

#[derive(Clone)]
pub(crate) struct Breakers {
    journal: Journal,
    clock: Arc<dyn Clock>,
    policy: BreakerPolicy,
    lock: Arc<Mutex<()>>,
}

impl Breakers {
    pub fn new(journal: Journal, clock: Arc<dyn Clock>, policy: BreakerPolicy) -> Self {
        Breakers {
            journal,
            clock,
            policy,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn key(agent: &str, task: &str) -> String {
        let mut h = Sha256::new();
        h.update((agent.len() as u64).to_be_bytes());
        h.update(agent.as_bytes());
        h.update(task.as_bytes());
        layout::key(layout::BREAKER, &hex::encode(h.finalize()))
    }

    pub fn state(&self, agent: &str, task: &str) -> Result<BreakerState, StoreError> {
        Ok(self
            .journal
            .kv_get(&Self::key(agent, task))?
            .and_then(|raw| layout::decode(&raw).ok())
            .unwrap_or_default())
    }

    /// `Err(state)` while the breaker is open.
    pub fn check(&self, agent: &str, task: &str) -> Result<Result<(), BreakerState>, StoreError> {
        let state = self.state(agent, task)?;
        let now = unix_ms(self.clock.now());
        Ok(match state.open_until_ms {
            Some(until) if until > now => Err(state),
            _ => Ok(()),
        })
    }

    /// Records a run's result; returns the new state.
    pub async fn record(
        &self,
        agent: &str,
        task: &str,
        success: bool,
    ) -> Result<BreakerState, StoreError> {
        let _guard = self.lock.lock().await;
        let mut state = self.state(agent, task)?;
        let now = self.clock.now();
        let mut audit = Vec::new();
        if success {
            if state.trips > 0 || state.failures > 0 {
                audit.push(AuditRecord::new(
                    AuditKind::BreakerClosed,
                    agent,
                    serde_json::json!({"task": task}),
                ));
            }
            state = BreakerState::default();
        } else {
            state.failures += 1;
            let half_open_failed = state.open_until_ms.is_some();
            if state.failures >= self.policy.threshold || half_open_failed {
                let step = (state.trips as usize).min(self.policy.backoff.len().saturating_sub(1));
                let open_for = self.policy.backoff.get(step).copied().unwrap_or_default();
                state.open_until_ms = Some(unix_ms(now + open_for));
                state.trips += 1;
                state.failures = 0;
                audit.push(AuditRecord::new(
                    AuditKind::BreakerOpen,
                    agent,
                    serde_json::json!({"task": task, "trip": state.trips, "open_secs": open_for.as_secs()}),
                ));
            }
        }
        let bytes = layout::encode(&state)?;
        let batch = Batch {
            audit,
            kv: vec![(Self::key(agent, task), Some(bytes))],
        };
        self.journal.write(batch, Mode::Durable, now).await?;
        Ok(state)
    }
}
