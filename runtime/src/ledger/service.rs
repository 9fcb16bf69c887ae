//! The ledger service: the one seam between the runtime and its budgets.
//!
//! It owns what surrounds the pure state machine: the lock, reservation ids,
//! journaling each command beside its audit record, replay at start, and the recovery
//! of reservations a crash left open. Callers fix every input of a command (ids,
//! the day) before handing it over, and nothing is read from a clock on apply.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::json;

use super::state::{AccountView, LedgerCommand, LedgerOutcome, LedgerState};
use crate::audit::{AuditKind, AuditRecord};
use crate::error::{BudgetDenial, StoreError};
use crate::journal::{Batch, Durable, Journal, Mode};
use crate::sync::LockExt;

/// What applying a command did, and when its journal write is durable.
pub(crate) struct Applied {
    /// The state machine's answer.
    pub outcome: LedgerOutcome,
    /// Resolves once the command and its record are written as asked; `None` when the
    /// command was denied (nothing was journaled) or journaled deferred.
    pub durable: Option<Durable>,
}

/// The budget ledger as the runtime sees it.
pub(crate) trait LedgerService: Send + Sync {
    /// A fresh reservation id, unique for the ledger's life (restarts included).
    fn next_id(&self) -> u64;

    /// Applies `cmd` and, unless it was denied, journals `record` carrying it, as
    /// `mode`, in the order of application.
    fn apply(&self, cmd: LedgerCommand, record: AuditRecord, mode: Mode, at: SystemTime)
    -> Applied;

    /// One account's figures.
    fn account(&self, id: &str) -> Option<AccountView>;
}

/// The ledger of one process: the state under a lock, journaled to its redb file.
pub(crate) struct LocalLedger {
    state: Mutex<LedgerState>,
    next_id: AtomicU64,
    journal: Journal,
}

impl LocalLedger {
    /// The ledger rebuilt by replaying the commands carried by the (verified) audit
    /// trail, its invariant checked. Reservations a crash left open are charged in
    /// full, once (their calls may have run): no spend is lost
    /// and none is counted twice.
    pub async fn recover(journal: Journal, now: SystemTime) -> Result<Self, StoreError> {
        let mut state = LedgerState::default();
        journal.each_audit_entry(|entry| {
            if let Some(cmd) = &entry.record.ledger {
                state.apply(cmd);
            }
        })?;
        state
            .check_invariants()
            .map_err(|e| StoreError::Db(format!("ledger invariant broken on disk: {e}")))?;
        let open = state.open_reservations();
        if !open.is_empty() {
            let mut batch = Batch::default();
            for (id, amount) in open {
                let cmd = LedgerCommand::Commit { id, actual: amount };
                state.apply(&cmd);
                batch.audit.push(
                    AuditRecord::new(
                        AuditKind::BudgetRecovered,
                        "runtime",
                        json!({"reservation": id, "charged_micro_usd": amount,
                               "why": "open at restart; the call may have run"}),
                    )
                    .with_ledger(cmd),
                );
            }
            journal.write(batch, Mode::Durable, now).await?;
        }
        Ok(LocalLedger {
            next_id: AtomicU64::new(state.max_reservation_id() + 1),
            state: Mutex::new(state),
            journal,
        })
    }
}

impl LedgerService for LocalLedger {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn apply(
        &self,
        cmd: LedgerCommand,
        record: AuditRecord,
        mode: Mode,
        at: SystemTime,
    ) -> Applied {
        // The lock is held while queuing, so the journal's order is the order of
        // application.
        let mut state = self.state.lock_or_recover();
        let outcome = state.apply(&cmd);
        debug_assert_eq!(state.check_invariants(), Ok(()), "after {cmd:?}");
        if matches!(outcome, LedgerOutcome::Denied(_)) {
            return Applied {
                outcome,
                durable: None,
            };
        }
        let batch = Batch::audit(record.with_ledger(cmd));
        let durable = match mode {
            Mode::Deferred => {
                self.journal.defer(batch, at);
                None
            }
            mode => Some(self.journal.submit(batch, mode, at)),
        };
        Applied { outcome, durable }
    }

    fn account(&self, id: &str) -> Option<AccountView> {
        self.state.lock_or_recover().account(id)
    }
}

/// A reservation made and its intent queued for a durable write.
pub(crate) struct Reservation {
    /// Its id, for the commit.
    pub id: u64,
    /// Resolves once the intent is durable.
    pub durable: Durable,
}

impl dyn LedgerService {
    /// Reserves `amount` on `account` with `intent` journaled durably beside it. A
    /// denial is recorded (deferred: it has no effect to protect) by `denied`.
    pub(crate) fn reserve(
        &self,
        account: &str,
        amount: u64,
        premium: bool,
        intent: AuditRecord,
        at: SystemTime,
    ) -> Result<Reservation, BudgetDenial> {
        let id = self.next_id();
        let cmd = LedgerCommand::Reserve {
            id,
            account: account.to_string(),
            amount,
            premium,
            day: day_of(at),
        };
        match self.apply(cmd, intent, Mode::Durable, at) {
            Applied {
                outcome: LedgerOutcome::Reserved { .. },
                durable: Some(durable),
            } => Ok(Reservation { id, durable }),
            Applied {
                outcome: LedgerOutcome::Denied(denial),
                ..
            } => Err(denial),
            Applied { outcome, .. } => Err(BudgetDenial::UnknownAccount(format!(
                "{account} (unexpected ledger outcome {outcome:?})"
            ))),
        }
    }

    /// Commits the actual cost of reservation `id` and records `done`, deferred: the
    /// reservation's durable intent already covers the effect, and the next durable
    /// commit persists this. Returns what was charged.
    pub(crate) fn settle(&self, id: u64, actual: u64, done: AuditRecord, at: SystemTime) -> u64 {
        let cmd = LedgerCommand::Commit { id, actual };
        match self.apply(cmd, done, Mode::Deferred, at).outcome {
            LedgerOutcome::Committed { charged } => charged,
            _ => 0,
        }
    }

    /// Opens `account` under `parent` with a daily `cap` (idempotent for the same
    /// parent and cap), recorded deferred: the account is only ever charged by a
    /// reservation, whose durable write comes later in the same queue.
    pub(crate) fn open(
        &self,
        account: &str,
        parent: Option<&str>,
        cap: u64,
        at: SystemTime,
    ) -> Result<(), BudgetDenial> {
        let cmd = LedgerCommand::Open {
            account: account.to_string(),
            parent: parent.map(str::to_string),
            cap,
        };
        let record = AuditRecord::new(
            AuditKind::BudgetOpen,
            account,
            json!({"parent": parent, "cap_micro_usd": cap}),
        );
        match self.apply(cmd, record, Mode::Deferred, at).outcome {
            LedgerOutcome::Opened => Ok(()),
            LedgerOutcome::Denied(d) => Err(d),
            other => Err(BudgetDenial::UnknownAccount(format!(
                "{account}: {other:?}"
            ))),
        }
    }
}

/// The day number (days since the Unix epoch) of `t`.
pub(crate) fn day_of(t: SystemTime) -> u64 {
    crate::clock::unix_ms(t) / 86_400_000
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::{LedgerService, LocalLedger};
    use crate::audit::{AuditConfig, AuditKind, AuditRecord};
    use crate::error::BudgetDenial;
    use crate::journal::Journal;
    use crate::ledger::LedgerCommand;

    fn note(agent: &str) -> AuditRecord {
        AuditRecord::new(AuditKind::ToolCall, agent, json!({}))
    }

    /// The ledger commands in the trail, in order.
    fn journaled(journal: &Journal) -> Vec<LedgerCommand> {
        let mut out = Vec::new();
        journal
            .each_audit_entry(|e| out.extend(e.record.ledger))
            .expect("read the trail");
        out
    }

    #[tokio::test]
    async fn commands_are_journaled_in_order_denials_are_not_and_a_restart_replays_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 20_000);
        let journal = Journal::open(dir.path(), &AuditConfig::default()).expect("open");
        let ledger = LocalLedger::recover(journal.clone(), now)
            .await
            .expect("new");
        let service: &dyn LedgerService = &ledger;
        service
            .open("tenant:acme", None, 1_000, now)
            .expect("tenant");
        service
            .open("agent:a", Some("tenant:acme"), 600, now)
            .expect("agent");
        let held = service
            .reserve("agent:a", 500, false, note("a"), now)
            .expect("fits");
        held.durable.await.expect("writer").expect("durable");
        let refused = service.reserve("agent:a", 200, false, note("a"), now);
        assert!(
            matches!(refused, Err(BudgetDenial::Exhausted { .. })),
            "{:?}",
            refused.err()
        );
        // Another account cannot be opened under a parent it does not belong to.
        assert!(
            service
                .open("agent:a", Some("tenant:other"), 10, now)
                .is_err()
        );
        let commands = journaled(&journal);
        assert_eq!(commands.len(), 3, "open, open, reserve: {commands:?}");
        assert!(matches!(
            &commands[2],
            LedgerCommand::Reserve { id, amount: 500, .. } if *id == held.id
        ));

        // A restart replays the trail; the reservation a crash left open is charged in
        // full, once, and ids continue past it.
        journal.close().await;
        drop((ledger, journal));
        let journal = Journal::open(dir.path(), &AuditConfig::default()).expect("reopen");
        let ledger = LocalLedger::recover(journal.clone(), now)
            .await
            .expect("replay");
        let view = ledger.account("agent:a").expect("account");
        assert_eq!(view.spent_today.micros(), 500);
        assert_eq!(view.reserved.micros(), 0);
        assert!(ledger.next_id() > held.id);
        let again = journaled(&journal);
        assert!(matches!(
            again.last(),
            Some(LedgerCommand::Commit { id, actual: 500 }) if *id == held.id
        ));
    }
}
