//! Tracing setup: human-readable logs on stderr, and spans exported over OpenTelemetry
//! (OTLP over HTTP) when an endpoint is configured.
//!
//! The runtime emits `agent_run` spans (agent, token id) and `tool_call` spans (agent,
//! token id, tool, tier, decision); with an endpoint set they reach any OTLP
//! collector. Between processes the W3C trace context travels beside each message
//! ([`trace_headers`] on the sending side, [`follow_trace`] on the receiving one), so
//! one run's spans join across nodes.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where traces go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL of a collector, e.g. `http://127.0.0.1:4318`; none to
    /// export nothing.
    pub otlp_endpoint: Option<String>,
    /// The service name spans carry.
    pub service_name: String,
    /// A `tracing` filter for the stderr log, e.g. `info` or `bulwark_runtime=debug`.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "bulwark".into(),
            log_filter: "warn".into(),
        }
    }
}

impl TelemetryConfig {
    /// Reads `BULWARK_OTLP_ENDPOINT`, `BULWARK_SERVICE_NAME` and `BULWARK_LOG`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let d = TelemetryConfig::default();
        TelemetryConfig {
            otlp_endpoint: var("BULWARK_OTLP_ENDPOINT"),
            service_name: var("BULWARK_SERVICE_NAME").unwrap_or(d.service_name),
            log_filter: var("BULWARK_LOG").unwrap_or(d.log_filter),
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// The log filter does not parse.
    #[error("log filter `{filter}`: {reason}")]
    Filter {
        /// The filter.
        filter: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber is already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes spans not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        if let Some(p) = self.provider {
            p.force_flush()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            p.shutdown()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        }
        Ok(())
    }
}

/// Installs the global subscriber: a log on stderr and, when configured, OTLP export.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter).map_err(|e| {
        TelemetryError::Filter {
            filter: config.log_filter.clone(),
            reason: e.to_string(),
        }
    })?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    // Spans are recorded for export at every level; the filter applies to the log.
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("bulwark")));
    tracing_subscriber::registry()
        .with(otel)
        .with(fmt.with_filter(filter))
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// The W3C trace context (`traceparent`, and `tracestate` when set) of the current
/// span, for a message to another process; empty when the span is not exported.
pub fn trace_headers() -> Vec<(String, String)> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut map = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut map);
    let mut out: Vec<(String, String)> = map.into_iter().collect();
    out.sort();
    out
}

/// Makes `span` a child of the remote span named by `headers` (as
/// [`trace_headers`] wrote them); a missing or malformed context leaves it a root.
pub fn follow_trace(span: &tracing::Span, headers: &std::collections::HashMap<String, String>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    #[test]
    fn a_span_context_crosses_as_traceparent_and_is_adopted_on_the_far_side() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            // No span: nothing to send.
            assert!(trace_headers().is_empty());
            let sender = tracing::info_span!("agent_run");
            let headers = sender.in_scope(trace_headers);
            let sent_trace = sender.context().span().span_context().trace_id();
            let (name, value) = headers.first().expect("a traceparent").clone();
            assert_eq!(name, "traceparent");
            assert!(value.contains(&sent_trace.to_string()), "{value}");

            let receiver = tracing::info_span!("cluster_request");
            follow_trace(&receiver, &headers.into_iter().collect());
            assert_eq!(
                receiver.context().span().span_context().trace_id(),
                sent_trace
            );

            // A forged, malformed context is ignored: the span stays a root.
            let other = tracing::info_span!("cluster_request");
            let junk = [("traceparent".to_string(), "00-zz-yy-01".to_string())];
            follow_trace(&other, &junk.into_iter().collect());
            assert_ne!(other.context().span().span_context().trace_id(), sent_trace);
        });
    }
}
