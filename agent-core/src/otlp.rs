//! Optional export of the agents' spans (`node`, `operation`, `step`) to an
//! OpenTelemetry collector over OTLP/gRPC (`otlp_endpoint` in node.toml).
//!
//! Each node exports its own spans; the spans of one operation, on the
//! leader and on every node, share one trace id derived from the operation
//! id ([`join_operation`]), so a trace viewer shows an upgrade as one trace
//! without any context passed between the nodes. The exporter runs on a
//! small runtime of its own (OpenTelemetry's batch processor exports from
//! a plain thread, where tonic would find no reactor), and never holds up
//! the agent: spans are dropped, not waited on, when the collector is away.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{
    Context, KeyValue,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter},
};
use sha2::Digest;

/// The provider, once OTLP export is on: flushed before a reboot.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `otlp_endpoint` is not an `http://` or `https://` URL.
    #[error("otlp_endpoint {0:?}: expected http://HOST:PORT (an OTLP/gRPC receiver, such as a collector on :4317)")]
    Endpoint(String),
    /// The exporter's runtime or client could not be made.
    #[error("cannot set up OTLP export: {0}")]
    Setup(String),
}

/// The layer that exports this agent's spans to `endpoint`, as the service
/// `service` (`molt-controller-agent`), instance `node`.
pub fn layer(endpoint: &str, service: &str, node: &str) -> Result<common::telemetry::Extra, OtlpError> {
    use tracing_subscriber::Layer;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(OtlpError::Endpoint(endpoint.to_owned()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| OtlpError::Setup(e.to_string()))?;
    let exporter = {
        let _in_rt = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| OtlpError::Setup(e.to_string()))?
    };
    let exporter = OnItsRuntime { inner: std::sync::Arc::new(exporter), rt: std::sync::Arc::new(rt) };
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(Duration::from_millis(500)).build())
        .build();
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.instance.id", node.to_owned()))
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(batches).with_resource(resource).build();
    let tracer = provider.tracer("molt");
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer).boxed())
}

/// Exports what is buffered (before a reboot: the spans that led to it).
pub fn flush() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.force_flush()
    {
        tracing::debug!(error = %e, "OTLP flush");
    }
}

/// Makes `span` part of operation `operation_id`'s trace: every node derives
/// the same trace id from the id (and the same remote parent), so the
/// operation's spans, on the leader and on the nodes, form one trace.
/// Without OTLP export this does nothing.
pub fn join_operation(span: &tracing::Span, operation_id: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if operation_id.is_empty() || PROVIDER.get().is_none() {
        return;
    }
    let _ = span.set_parent(operation_context(operation_id));
}

/// The remote parent of an operation's spans: trace id and span id from
/// the SHA-256 of its id.
fn operation_context(operation_id: &str) -> Context {
    let h = sha2::Sha256::digest(operation_id.as_bytes());
    let trace = TraceId::from_bytes(h[..16].try_into().expect("16 bytes"));
    let span = SpanId::from_bytes(h[16..24].try_into().expect("8 bytes"));
    Context::new().with_remote_span_context(SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::NONE))
}

/// The OTLP exporter, run on its own runtime: the batch processor calls it
/// from a thread of its own.
#[derive(Debug)]
struct OnItsRuntime {
    inner: std::sync::Arc<opentelemetry_otlp::SpanExporter>,
    rt: std::sync::Arc<tokio::runtime::Runtime>,
}

impl SpanExporter for OnItsRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self.rt.spawn(async move { inner.export(batch).await }).await {
            Ok(r) => r,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string())),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_has_one_trace_id_on_every_node() {
        let a = operation_context("op-1").span().span_context().clone();
        let b = operation_context("op-1").span().span_context().clone();
        let c = operation_context("op-2").span().span_context().clone();
        assert_eq!(a.trace_id(), b.trace_id());
        assert_ne!(a.trace_id(), c.trace_id());
        assert!(a.is_remote() && a.is_sampled() && a.is_valid());
    }

    #[test]
    fn an_endpoint_that_is_not_a_url_is_refused_with_what_to_give() {
        let e = layer("127.0.0.1:4317", "t", "n").err().expect("refused");
        assert!(e.to_string().contains("expected http://HOST:PORT"), "{e}");
    }
}
