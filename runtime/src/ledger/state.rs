//! The budget ledger's state: a deterministic state machine, `apply(command) -> outcome`.
//!
//! Accounts form a tree (tenant at the root, then agent subtrees); every account has a
//! daily cap no larger than its parent's, and every reservation must fit under the cap
//! of the account and of each ancestor, so total spend never exceeds a tenant's cap.
//! Calls reserve first, then commit the actual cost (never more than reserved) or
//! release. The state is rebuilt by replaying the command log, so the same commands
//! always give the same state: a later release replicates the log with Raft unchanged.
//!
//! **Invariant:** for every account, `spent + reserved <= cap` in the current day.
//! Spend never decreases within a day.

use std::collections::BTreeMap;

use bulwark_capabilities::MicroUsd;
use serde::{Deserialize, Serialize};

use crate::error::BudgetDenial;

/// Share of the daily cap above which premium models are refused (percent).
pub const ECONOMY_THRESHOLD_PERCENT: u64 = 80;

/// A command to the ledger. Commands carry every input (including the day), so
/// applying them is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LedgerCommand {
    /// Opens an account (idempotent when the same cap and parent are given again).
    Open {
        /// Account id: `tenant:ACME` or `agent:ID`.
        account: String,
        /// The parent account, none for a tenant.
        parent: Option<String>,
        /// Daily cap, micro-dollars.
        cap: u64,
    },
    /// Reserves `amount` for one call.
    Reserve {
        /// Reservation id, unique.
        id: u64,
        /// The paying account.
        account: String,
        /// Micro-dollars.
        amount: u64,
        /// Whether it pays for a premium model call.
        premium: bool,
        /// Day number (days since the Unix epoch).
        day: u64,
    },
    /// Charges the actual cost of a reservation (at most the reserved amount) and
    /// releases the rest.
    Commit {
        /// Reservation id.
        id: u64,
        /// Micro-dollars actually spent.
        actual: u64,
    },
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOutcome {
    /// The account exists.
    Opened,
    /// The reservation is held; `economy` is true at or above the 80 % threshold.
    Reserved {
        /// Whether the account is now in economy mode.
        economy: bool,
    },
    /// The reservation was refused.
    Denied(BudgetDenial),
    /// Charged this many micro-dollars.
    Committed {
        /// Charged.
        charged: u64,
    },
    /// A commit for a reservation that does not exist (already committed): no effect.
    UnknownReservation,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    parent: Option<String>,
    cap: u64,
    day: u64,
    spent: u64,
    reserved: u64,
    /// Spend over all days (never decreases).
    total_spent: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    account: String,
    amount: u64,
    day: u64,
}

/// The ledger's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerState {
    accounts: BTreeMap<String, Account>,
    reservations: BTreeMap<u64, Reservation>,
    /// The highest reservation id ever applied, so ids stay unique across restarts.
    max_id: u64,
}

/// A read-only view of one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountView {
    /// Daily cap.
    pub cap: MicroUsd,
    /// Spent in the current day.
    pub spent_today: MicroUsd,
    /// Held by open reservations.
    pub reserved: MicroUsd,
    /// Spent over all time.
    pub total_spent: MicroUsd,
}

fn usd(micros: u64) -> String {
    MicroUsd::new(micros).map_or_else(|| micros.to_string(), |m| m.to_string())
}

impl LedgerState {
    /// Applies one command.
    pub fn apply(&mut self, cmd: &LedgerCommand) -> LedgerOutcome {
        match cmd {
            LedgerCommand::Open {
                account,
                parent,
                cap,
            } => self.open(account, parent.as_deref(), *cap),
            LedgerCommand::Reserve {
                id,
                account,
                amount,
                premium,
                day,
            } => self.reserve(*id, account, *amount, *premium, *day),
            LedgerCommand::Commit { id, actual } => self.commit(*id, *actual),
        }
    }

    fn open(&mut self, account: &str, parent: Option<&str>, cap: u64) -> LedgerOutcome {
        if let Some(p) = parent {
            let Some(parent_acc) = self.accounts.get(p) else {
                return LedgerOutcome::Denied(BudgetDenial::UnknownAccount(p.to_string()));
            };
            if cap > parent_acc.cap {
                return LedgerOutcome::Denied(BudgetDenial::CapTooLarge {
                    child: usd(cap),
                    parent: usd(parent_acc.cap),
                });
            }
        }
        // An account is bound to the lineage it was opened under: re-opening it under
        // another parent (another tenant's agent, another agent's child of the same
        // name) is refused, so nobody can charge, lower or lock another's account.
        if let Some(existing) = self.accounts.get(account)
            && existing.parent.as_deref() != parent
        {
            return LedgerOutcome::Denied(BudgetDenial::AccountOwnedElsewhere {
                account: account.to_string(),
                owner: existing.parent.clone().unwrap_or_else(|| "(none)".into()),
                requested: parent.unwrap_or("(none)").to_string(),
            });
        }
        // Re-opening keeps the spend: a restarted agent does not get a fresh budget,
        // and its cap can only go down.
        let entry = self.accounts.entry(account.to_string()).or_insert(Account {
            parent: parent.map(str::to_string),
            cap,
            ..Account::default()
        });
        // Lowering takes effect as "nothing more fits" once today's use is above the new
        // cap; the cap never drops below what is already spent and reserved.
        entry.cap = entry.cap.min(cap).max(entry.spent + entry.reserved);
        LedgerOutcome::Opened
    }

    /// The account and its ancestors, the account first.
    fn lineage(&self, account: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = Some(account.to_string());
        while let Some(id) = cur {
            // A cycle cannot be built through `open`, but stop at any repeat anyway.
            if out.contains(&id) || out.len() > 64 {
                break;
            }
            cur = self.accounts.get(&id).and_then(|a| a.parent.clone());
            out.push(id);
        }
        out
    }

    fn roll(acc: &mut Account, day: u64) {
        if day > acc.day {
            acc.day = day;
            acc.spent = 0;
        }
    }

    fn reserve(
        &mut self,
        id: u64,
        account: &str,
        amount: u64,
        premium: bool,
        day: u64,
    ) -> LedgerOutcome {
        self.max_id = self.max_id.max(id);
        if self.reservations.contains_key(&id) {
            return LedgerOutcome::Denied(BudgetDenial::DuplicateReservation(id));
        }
        if !self.accounts.contains_key(account) {
            return LedgerOutcome::Denied(BudgetDenial::UnknownAccount(account.to_string()));
        }
        let lineage = self.lineage(account);
        let mut economy = false;
        for id in &lineage {
            let Some(acc) = self.accounts.get_mut(id) else {
                continue;
            };
            Self::roll(acc, day);
            let used = acc.spent + acc.reserved;
            let at_threshold =
                used.saturating_mul(100) >= acc.cap.saturating_mul(ECONOMY_THRESHOLD_PERCENT);
            if premium && at_threshold {
                return LedgerOutcome::Denied(BudgetDenial::PremiumRefused {
                    account: id.clone(),
                });
            }
            if used.saturating_add(amount) > acc.cap {
                return LedgerOutcome::Denied(BudgetDenial::Exhausted {
                    account: id.clone(),
                    used: usd(used),
                    cap: usd(acc.cap),
                    needed: usd(amount),
                });
            }
            let after = (used + amount).saturating_mul(100);
            economy |= after >= acc.cap.saturating_mul(ECONOMY_THRESHOLD_PERCENT);
        }
        for id in &lineage {
            if let Some(acc) = self.accounts.get_mut(id) {
                acc.reserved += amount;
            }
        }
        self.reservations.insert(
            id,
            Reservation {
                account: account.to_string(),
                amount,
                day,
            },
        );
        LedgerOutcome::Reserved { economy }
    }

    fn commit(&mut self, id: u64, actual: u64) -> LedgerOutcome {
        let Some(res) = self.reservations.remove(&id) else {
            return LedgerOutcome::UnknownReservation;
        };
        // Never beyond what was reserved: the reservation is the authorization.
        let charged = actual.min(res.amount);
        for acc_id in self.lineage(&res.account) {
            if let Some(acc) = self.accounts.get_mut(&acc_id) {
                acc.reserved = acc.reserved.saturating_sub(res.amount);
                // Spend of a reservation made yesterday still counts, in today's window.
                Self::roll(acc, res.day);
                acc.spent += charged;
                acc.total_spent += charged;
            }
        }
        LedgerOutcome::Committed { charged }
    }

    /// Open reservations, oldest first: after a crash their calls may have run.
    pub fn open_reservations(&self) -> Vec<(u64, u64)> {
        self.reservations
            .iter()
            .map(|(id, r)| (*id, r.amount))
            .collect()
    }

    /// The highest reservation id ever used, to continue numbering after a restart.
    pub fn max_reservation_id(&self) -> u64 {
        self.max_id
    }

    /// One account's figures.
    pub fn account(&self, id: &str) -> Option<AccountView> {
        self.accounts.get(id).map(|a| AccountView {
            cap: MicroUsd::new(a.cap).unwrap_or(MicroUsd::ZERO),
            spent_today: MicroUsd::new(a.spent).unwrap_or(MicroUsd::ZERO),
            reserved: MicroUsd::new(a.reserved).unwrap_or(MicroUsd::ZERO),
            total_spent: MicroUsd::new(a.total_spent).unwrap_or(MicroUsd::ZERO),
        })
    }

    /// Checks the invariant for every account; returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, a) in &self.accounts {
            if a.spent + a.reserved > a.cap {
                return Err(format!(
                    "account {id}: spent {} + reserved {} exceeds cap {}",
                    a.spent, a.reserved, a.cap
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
