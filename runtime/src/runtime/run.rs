//! Running a task on an agent.

use crate::sync::RwLockExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::agent::{AgentMsg, Outcome, RunScope};
use crate::brain::ContextItem;
use crate::error::RunError;

use super::*;

impl Inner {
    pub(crate) async fn run(
        self: &Arc<Self>,
        agent: &str,
        task: &str,
        passed: Vec<String>,
    ) -> Result<Outcome, RunError> {
        self.run_scoped(agent, task, passed, None, None).await
    }

    /// Runs a task; `scope` is the root's work when a parent runs a child, and
    /// `inherited` what the parent's brain had seen when it wrote the task.
    pub(crate) async fn run_scoped(
        self: &Arc<Self>,
        agent: &str,
        task: &str,
        passed: Vec<String>,
        scope: Option<RunScope>,
        inherited: Option<Box<crate::guard::Provenance>>,
    ) -> Result<Outcome, RunError> {
        if let Err(state) = self.breakers.check(agent, task)? {
            return Err(RunError::BreakerOpen {
                agent: agent.to_string(),
                task: task.to_string(),
                until: humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_millis(state.open_until_ms.unwrap_or(0)),
                )
                .to_string(),
                trips: state.trips,
            });
        }
        if !self.dedup.claim_task(agent, task).await? {
            return Err(RunError::DuplicateTask {
                agent: agent.to_string(),
                title: task.to_string(),
            });
        }
        let actor = self
            .agents
            .read_or_recover()
            .get(agent)
            .map(|e| e.agent.actor().clone())
            .ok_or_else(|| RunError::NoSuchAgent(agent.to_string()))?;
        let mut context = vec![ContextItem::Task {
            text: task.to_string(),
        }];
        context.extend(passed.into_iter().map(|text| ContextItem::Passed { text }));
        let scope = scope.unwrap_or_else(|| RunScope {
            root_agent: agent.to_string(),
            root_task: task.to_string(),
        });
        let result = actor
            .call(
                |reply| AgentMsg::Run {
                    context,
                    scope,
                    inherited,
                    reply,
                },
                None,
            )
            .await;
        let outcome = match result {
            Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
            _ => Outcome::failed(agent, "the agent failed during the run and was restarted"),
        };
        // A cancelled run says nothing about the agent's health.
        if !matches!(outcome.status, crate::agent::Status::Cancelled(_)) {
            self.breakers
                .record(agent, task, outcome.succeeded())
                .await?;
        }
        if !outcome.succeeded() {
            self.dedup.release_task(agent, task).await?;
        }
        Ok(outcome)
    }
}
