//! Logs and traces for every Mailroom process.
//!
//! * Logs: `tracing` with human-readable lines by default, JSON lines as an
//!   option; the filter comes from the configuration (`RUST_LOG` wins).
//! * Traces: when an OTLP endpoint is configured, spans are exported over
//!   OTLP/gRPC (to Jaeger or a collector).
//! * Propagation: W3C trace context (`traceparent`) travels in gRPC metadata,
//!   so a message keeps one trace across MSA → MTA → MDA. Clients add
//!   [`TraceContextInterceptor`] (or call [`inject`]); servers build their
//!   request span with [`grpc_server_span`], which continues the caller's trace.
//! * One trace per message: the accepting session's span is the root; the
//!   queue keeps its `traceparent` ([`current_traceparent`]) so every later
//!   delivery attempt, in whichever process, joins it ([`continue_trace`]).
//! * From a message to its trace: spans that start or continue a trace
//!   declare a `trace_id` field and fill it ([`record_trace_id`]), so every
//!   log line inside them names the trace; the SMTP server writes
//!   [`current_trace_id`] into the `Received` header's comment.
//!
//! Invariant: span fields are identifiers and outcomes (queue id,
//! Message-ID, domain, result), never message content or secrets: every
//! field becomes an exported attribute.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How to set telemetry up (filled from the `[telemetry]` configuration).
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// JSON lines instead of human-readable ones.
    pub json: bool,
    /// `tracing` filter directives, used when `RUST_LOG` is not set.
    pub filter: String,
    /// OTLP/gRPC endpoint; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans.
    pub service_name: String,
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes what is pending.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (call before the process exits).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("telemetry: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber, and the OTLP exporter when configured.
/// Must run inside a tokio runtime (the exporter uses tonic). Fails when a
/// global subscriber is already installed.
pub fn init(options: &TelemetryOptions) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let make_filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&options.filter))
            .map_err(|e| anyhow::anyhow!("telemetry.log_filter: {e}"))
    };
    let filter = make_filter()?;
    let fmt_layer = if options.json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (otel_layer, provider) = match &options.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(options.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("mailroom");
            opentelemetry::global::set_tracer_provider(provider.clone());
            // The same filter as the logs: without one, every span of every
            // library (h2, hyper, sqlx) at every level would be recorded.
            (
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(make_filter()?),
                ),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer.with_filter(filter))
        .try_init()?;
    Ok(Telemetry { provider })
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes `context`'s trace context into gRPC metadata.
pub fn inject_context(context: &opentelemetry::Context, metadata: &mut MetadataMap) {
    TraceContextPropagator::new().inject_context(context, &mut MetadataInjector(metadata));
}

/// Writes the current span's trace context into gRPC metadata.
pub fn inject(metadata: &mut MetadataMap) {
    inject_context(&tracing::Span::current().context(), metadata);
}

/// Reads a trace context from HTTP/2 headers (gRPC metadata).
pub fn extract(headers: &tonic::codegen::http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The current span's `traceparent`, for storing with queued work so that
/// a later delivery attempt continues the same trace.
pub fn current_traceparent() -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// A context continuing a stored `traceparent`.
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the trace a stored `traceparent` names, so work
/// done later (a queue worker's delivery attempt) joins the message's trace,
/// and records the trace id in its `trace_id` field when it has one.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let _ = span.set_parent(context_from_traceparent(traceparent));
    record_trace_id(span);
}

/// The trace id of `span` (32 lowercase hex digits), or `None` when no
/// trace is recorded (no OTLP exporter configured). Starts the span: give it
/// its parent ([`continue_trace`], [`tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`]) first.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The current span's trace id (see [`trace_id`]).
pub fn current_trace_id() -> Option<String> {
    trace_id(&tracing::Span::current())
}

/// Fills `span`'s `trace_id` field (declare it `tracing::field::Empty`)
/// with its trace id, so log lines inside the span carry it. Nothing
/// happens when no trace is recorded or the field is not declared.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id.as_str());
    }
}

/// `Queue.Enqueue` for `/mailroom.queue.v1.Queue/Enqueue`: the span name of
/// a gRPC call (the service's last name segment, then the method).
pub fn grpc_span_name(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}.{method}")
}

/// The span of one incoming gRPC request, a child of the caller's span when
/// the request carries a trace context. Give it to tonic's `Server::trace_fn`.
pub fn grpc_server_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    // `caller_role` is filled in by the internal services' credential check.
    let path = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = %grpc_span_name(path),
        otel.kind = "server",
        path = %path,
        caller_role = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    let _ = span.set_parent(extract(request.headers()));
    record_trace_id(&span);
    span
}

/// A tonic client interceptor that sends the current trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

pub mod metrics_endpoint;

#[cfg(test)]
mod tests {
    #[test]
    fn a_grpc_span_is_named_after_its_service_and_method() {
        assert_eq!(
            super::grpc_span_name("/mailroom.queue.v1.Queue/Enqueue"),
            "Queue.Enqueue"
        );
        assert_eq!(
            super::grpc_span_name("/grpc.health.v1.Health/Check"),
            "Health.Check"
        );
    }
}
