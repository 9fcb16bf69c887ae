//! The runtime's metrics, in a Prometheus registry of its own (never a process-wide
//! one: several runtimes may share a process).
//!
//! This module owns the runtime's metric families and their names:
//!
//! - `bulwark_tool_calls_total{tool, tier, outcome}` (counter) — every call that
//!   reached the gate, once, when the gate answered. `tool` is the registered tool's
//!   name, or `unregistered` for a name no tool has (the name comes from the model, so
//!   it is never a label). `tier` is the effective tier the gate decided (`auto`,
//!   `auto+`, `propose`, `confirm`, `block`), or `none` when the call was refused
//!   before its tier was decided. `outcome` is `allowed`, or the
//!   [`GateErrorKind`](crate::GateErrorKind) of the error in snake case (`refused`,
//!   `needs_approval`, `tool_failure`, `interrupted`, `shutting_down`, `store`).
//! - `bulwark_tool_denials_total{reason}` (counter) — the calls the audit trail
//!   records as `tool.denied`, by [`GateError::reason`] (`token`, `blocked`,
//!   `budget`, `unknown_tool`, `watchdog_rejected`, …: one fixed name per error).
//! - `bulwark_proposals_open` (gauge, read at scrape) — proposals waiting for a
//!   decision or for their run (pending, approved, executing): the count the store's
//!   `max_open` bound applies to.
//! - `bulwark_budget_spent_today_microdollars{tenant}`,
//!   `bulwark_budget_reserved_microdollars{tenant}`,
//!   `bulwark_budget_cap_microdollars{tenant}` (gauges) and
//!   `bulwark_budget_spent_microdollars_total{tenant}` (counter), read at scrape from
//!   the ledger's `tenant:NAME` accounts — one series per tenant (never per agent),
//!   for the tenants with a configured budget and those an agent was spawned for since
//!   the runtime started.
//!
//! The text is the Prometheus exposition format 0.0.4 ([`METRICS_CONTENT_TYPE`]). A
//! labelled counter family appears once it has a series (the first call counted).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bulwark_capabilities::Tier;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::error::GateError;
use crate::journal::Journal;
use crate::ledger::LedgerService;
use crate::sync::LockExt;

/// The `Content-Type` of [`RuntimeMetrics::encode`]'s text: the Prometheus text
/// exposition format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `tool` label of a call whose tool is not registered.
const UNREGISTERED: &str = "unregistered";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    tier: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    reason: &'static str,
}

/// The metrics of one runtime: its own registry with the families it counts, and the
/// figures read from its store and ledger at each scrape. See the [module](self) for
/// the names and labels.
pub struct RuntimeMetrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    tenants: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for RuntimeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeMetrics").finish_non_exhaustive()
    }
}

impl RuntimeMetrics {
    /// The families of a runtime whose proposals are in `journal`'s store and whose
    /// budgets are `ledger`'s, with `tenants` (those with a configured budget)
    /// reported from the start.
    pub(crate) fn new(
        journal: Journal,
        ledger: Arc<dyn LedgerService>,
        tenants: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "bulwark_tool_calls",
            "Tool calls the gate answered, by tool, effective tier and outcome",
            calls.clone(),
        );
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "bulwark_tool_denials",
            "Tool calls refused (audited as tool.denied), by reason",
            denials.clone(),
        );
        let tenants = Arc::new(Mutex::new(tenants.into_iter().collect()));
        registry.register_collector(Box::new(StateCollector {
            journal,
            ledger,
            tenants: tenants.clone(),
        }));
        RuntimeMetrics {
            registry,
            calls,
            denials,
            tenants,
        }
    }

    /// Counts a call the gate answered: `tool` if it is registered, the `tier` the
    /// gate decided (if it got that far), and the result.
    pub(crate) fn tool_call<T>(
        &self,
        tool: &str,
        registered: bool,
        tier: Option<Tier>,
        result: &Result<T, GateError>,
    ) {
        let tool = if registered { tool } else { UNREGISTERED };
        let outcome = match result {
            Ok(_) => "allowed",
            Err(e) => e.kind().as_str(),
        };
        self.calls
            .get_or_create(&CallLabels {
                tool: tool.to_string(),
                tier: tier.map_or("none", Tier::as_str),
                outcome,
            })
            .inc();
        if let Err(e) = result
            && e.is_audited_as_denial()
        {
            self.denials
                .get_or_create(&DenialLabels { reason: e.reason() })
                .inc();
        }
    }

    /// Reports the budget of `tenant` (its `tenant:NAME` account) from now on.
    pub(crate) fn tenant_seen(&self, tenant: &str) {
        let mut tenants = self.tenants.lock_or_recover();
        if !tenants.contains(tenant) {
            tenants.insert(tenant.to_string());
        }
    }

    /// Appends the runtime's metrics to `out` in the Prometheus text format 0.0.4
    /// ([`METRICS_CONTENT_TYPE`]).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }

    /// The runtime's metrics in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String fails only if an encoder does, and ours do not.
        let _ = self.encode(&mut out);
        out
    }
}

/// What is read from the store and the ledger when metrics are scraped.
struct StateCollector {
    journal: Journal,
    ledger: Arc<dyn LedgerService>,
    tenants: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The open-proposal keys hold only an id: counting them decrypts nothing.
        match self.journal.kv_scan(crate::layout::PROPOSAL_OPEN) {
            Ok(open) => {
                let gauge = ConstGauge::new(open.len() as i64);
                gauge.encode(encoder.encode_descriptor(
                    "bulwark_proposals_open",
                    "Proposals waiting for a decision or their run (pending, approved, executing).",
                    None,
                    gauge.metric_type(),
                )?)?;
            }
            Err(e) => tracing::warn!(error = %e, "metrics: the open proposals cannot be counted"),
        }
        let tenants: Vec<String> = self.tenants.lock_or_recover().iter().cloned().collect();
        let accounts: Vec<(&str, crate::ledger::AccountView)> = tenants
            .iter()
            .filter_map(|t| {
                self.ledger
                    .account(&format!("tenant:{t}"))
                    .map(|a| (t.as_str(), a))
            })
            .collect();
        type Read = fn(&crate::ledger::AccountView) -> u64;
        let gauges: [(&str, &str, Read); 3] = [
            (
                "bulwark_budget_spent_today_microdollars",
                "Spent by the tenant's account in the current day, micro-dollars.",
                |a| a.spent_today.micros(),
            ),
            (
                "bulwark_budget_reserved_microdollars",
                "Held by the tenant's open reservations, micro-dollars.",
                |a| a.reserved.micros(),
            ),
            (
                "bulwark_budget_cap_microdollars",
                "The tenant's daily cap, micro-dollars.",
                |a| a.cap.micros(),
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (tenant, account) in &accounts {
                ConstGauge::new(read(account))
                    .encode(family.encode_family(&[("tenant", *tenant)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "bulwark_budget_spent_microdollars",
            "Spent by the tenant's account over all time, micro-dollars.",
            None,
            MetricType::Counter,
        )?;
        for (tenant, account) in &accounts {
            ConstCounter::new(account.total_spent.micros())
                .encode(family.encode_family(&[("tenant", *tenant)])?)?;
        }
        Ok(())
    }
}
