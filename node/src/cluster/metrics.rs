//! A node's own metrics, in a registry of its own (several nodes may run in one
//! process), served with its runtime's on the dashboard's `/metrics`.
//!
//! This module owns the node's metric families:
//!
//! - `bulwark_envelope_refusals_total{reason}` (counter) — envelopes from other nodes
//!   refused, by [`EnvelopeError::reason`](super::envelope::EnvelopeError::reason)
//!   (`too_large`, `malformed`, `version`, `redirected`, `stale`, `token`,
//!   `revoked`, `signature`, `replayed`).
//! - `bulwark_heartbeat_lag_seconds{node}` (gauge) — per peer, how long ago its last
//!   heartbeat arrived, as the node last measured it.
//! - `bulwark_nats_reconnects_total` (counter) — connections to NATS made again after
//!   the first one.
//! - `bulwark_nats_connected` (gauge) — 1 while the NATS connection is up, 0 after it
//!   was lost or closed.
//!
//! The runtime's families are listed in [`bulwark_runtime::RuntimeMetrics`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bulwark_runtime::RuntimeMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    node: String,
}

/// The metrics of one node. Cheap to share behind an [`Arc`]; every method takes
/// `&self`.
pub struct NodeMetrics {
    registry: Registry,
    refusals: Family<ReasonLabels, Counter>,
    lag: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    reconnects: Counter,
    connected: Gauge,
    /// Whether a first connection was seen: every later one is a reconnect.
    connected_once: AtomicBool,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// A node's families, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "bulwark_envelope_refusals",
            "Envelopes from other nodes refused, by reason",
            refusals.clone(),
        );
        let lag = Family::<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "bulwark_heartbeat_lag_seconds",
            "Per peer, how long ago its last heartbeat arrived, seconds",
            lag.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "bulwark_nats_reconnects",
            "Connections to NATS made again after the first",
            reconnects.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "bulwark_nats_connected",
            "1 while the connection to NATS is up, 0 once it was lost or closed",
            connected.clone(),
        );
        NodeMetrics {
            registry,
            refusals,
            lag,
            reconnects,
            connected,
            connected_once: AtomicBool::new(false),
        }
    }

    /// Counts an envelope refused for `reason` (an `EnvelopeError::reason`: a fixed
    /// short name, never data from the envelope).
    pub fn envelope_refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records that the last heartbeat of peer `node` arrived `seconds` ago.
    pub fn heartbeat_lag(&self, node: &str, seconds: f64) {
        self.lag
            .get_or_create(&PeerLabels {
                node: node.to_string(),
            })
            .set(seconds);
    }

    /// Stops reporting the heartbeat lag of `node` (it left the cluster).
    pub fn peer_gone(&self, node: &str) {
        self.lag.remove(&PeerLabels {
            node: node.to_string(),
        });
    }

    /// Counts a reconnection to NATS.
    pub fn nats_reconnect(&self) {
        self.reconnects.inc();
    }

    /// Applies a NATS client event: a connection after the first counts as a
    /// reconnect; `bulwark_nats_connected` follows connections and losses.
    pub fn nats_event(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                if self.connected_once.swap(true, Ordering::Relaxed) {
                    self.nats_reconnect();
                }
                self.connected.set(1);
            }
            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                self.connected.set(0);
            }
            _ => {}
        }
    }

    /// `options` with an event callback that feeds [`NodeMetrics::nats_event`] and logs
    /// the event. It replaces any event callback set before.
    pub fn count_events(
        self: &Arc<Self>,
        options: async_nats::ConnectOptions,
    ) -> async_nats::ConnectOptions {
        let metrics = Arc::clone(self);
        options.event_callback(move |event| {
            metrics.nats_event(&event);
            async move {
                tracing::info!(%event, "NATS connection event");
            }
        })
    }

    /// Appends the node's metrics to `out` in the Prometheus text format 0.0.4.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }

    /// The runtime's metrics followed by the node's, in the Prometheus text format
    /// 0.0.4 ([`bulwark_runtime::METRICS_CONTENT_TYPE`]).
    pub fn render(&self, runtime: &RuntimeMetrics) -> String {
        let mut out = String::new();
        // Writing to a String fails only if an encoder does, and ours do not.
        let _ = runtime
            .encode(&mut out)
            .and_then(|()| self.encode(&mut out));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's families as text, alone.
    fn text(m: &NodeMetrics) -> String {
        let mut out = String::new();
        m.encode(&mut out).expect("encode");
        out
    }

    #[test]
    fn the_node_families_render_with_their_labels_and_values() {
        let m = NodeMetrics::new();
        m.envelope_refused("signature");
        m.envelope_refused("signature");
        m.envelope_refused("stale");
        m.heartbeat_lag("node-b", 1.5);
        m.heartbeat_lag("node-c", 0.25);
        m.heartbeat_lag("node-c", 3.0);
        let out = text(&m);
        assert!(
            out.contains("# TYPE bulwark_envelope_refusals_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("bulwark_envelope_refusals_total{reason=\"signature\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("bulwark_envelope_refusals_total{reason=\"stale\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE bulwark_heartbeat_lag_seconds gauge\n"),
            "{out}"
        );
        assert!(
            out.contains("bulwark_heartbeat_lag_seconds{node=\"node-b\"} 1.5\n"),
            "{out}"
        );
        assert!(
            out.contains("bulwark_heartbeat_lag_seconds{node=\"node-c\"} 3.0\n"),
            "{out}"
        );
        assert!(out.contains("bulwark_nats_reconnects_total 0\n"), "{out}");
        m.peer_gone("node-c");
        assert!(!text(&m).contains("node-c"));
    }

    #[test]
    fn only_connections_after_the_first_count_as_reconnects() {
        let m = NodeMetrics::new();
        m.nats_event(&async_nats::Event::Connected);
        let out = text(&m);
        assert!(out.contains("bulwark_nats_reconnects_total 0\n"), "{out}");
        assert!(out.contains("bulwark_nats_connected 1\n"), "{out}");
        m.nats_event(&async_nats::Event::Disconnected);
        assert!(text(&m).contains("bulwark_nats_connected 0\n"));
        m.nats_event(&async_nats::Event::Connected);
        m.nats_event(&async_nats::Event::Disconnected);
        m.nats_event(&async_nats::Event::Connected);
        m.nats_event(&async_nats::Event::LameDuckMode);
        let out = text(&m);
        assert!(out.contains("bulwark_nats_reconnects_total 2\n"), "{out}");
        assert!(out.contains("bulwark_nats_connected 1\n"), "{out}");
    }

    #[test]
    fn two_nodes_in_one_process_count_apart() {
        let a = NodeMetrics::new();
        let b = NodeMetrics::new();
        a.envelope_refused("replayed");
        assert!(text(&a).contains("bulwark_envelope_refusals_total{reason=\"replayed\"} 1\n"));
        assert!(!text(&b).contains("replayed"));
    }
}
