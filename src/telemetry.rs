//! Logging and tracing: `tracing` to stderr (text or JSON; colours only when
//! stderr is a terminal), plus an OpenTelemetry OTLP/HTTP exporter when an
//! endpoint is configured.
//!
//! Spans are exported by the SDK's batch processor from its own thread, with
//! the blocking HTTP client: that thread has no Tokio runtime, so the async
//! client cannot be used there.
//!
//! The standard variables apply: `OTEL_EXPORTER_OTLP_ENDPOINT` (and
//! `_TRACES_ENDPOINT`, `OTEL_SDK_DISABLED`, read by the config),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER`
//! (`_ARG`), read by the SDK.
//!
//! W3C trace context crosses the queue ([`adopt_producer_context`],
//! [`traceparent_of`]): a request's `traceparent` header becomes the parent
//! of its job span, and what the worker publishes carries the job's.
//!
//! Secrets never reach a span or a log line: the API key and the broker URL
//! are `SecretString`s, and the Segmind client adds the key to requests
//! itself, after any instrumentation sees them.

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};
use crate::wire::TraceHeaders;

/// Flushes pending spans when dropped or shut down.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush traces: {e}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,lapin=warn,aws_config=warn,aws_smithy_runtime=warn")
    });
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.as_str())
                .build()?;
            // The default detectors read OTEL_SERVICE_NAME and
            // OTEL_RESOURCE_ATTRIBUTES; the configured name applies only
            // when neither names the service.
            let mut resource = opentelemetry_sdk::Resource::builder();
            if !service_named_by_env() {
                resource = resource.with_service_name(settings.service_name.clone());
            }
            let resource = resource.build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer(settings.service_name.clone()))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // Escape codes are for terminals; in a file or a pipe they are noise.
    let ansi = std::io::stderr().is_terminal();
    match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(TelemetryGuard { provider })
}

fn service_named_by_env() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        })
}

/// Makes the producer's span (from its `traceparent`) the parent of `span`.
/// Call before `span` is first entered. Without an exporter there is no
/// OpenTelemetry span to parent, and this does nothing.
pub fn adopt_producer_context(span: &Span, headers: &TraceHeaders) {
    let Some(traceparent) = &headers.traceparent else {
        return;
    };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.clone());
    if let Some(state) = &headers.tracestate {
        carrier.insert("tracestate".to_owned(), state.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed.
        let _ = span.set_parent(parent);
    }
}

/// The trace context to send on behalf of `span`: its own when spans are
/// exported, else the producer's, passed through unchanged so that the
/// consumers of the event stay in the producer's trace.
pub fn traceparent_of(span: &Span, producer: &TraceHeaders) -> TraceHeaders {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return producer.clone();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    TraceHeaders {
        traceparent: carrier.remove("traceparent"),
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    }
}

/// A fresh `traceparent` (sampled) for a producer with no trace of its own,
/// such as `tts-worker submit`.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_the_producers_context_passes_through() {
        let producer = TraceHeaders {
            traceparent: Some(new_traceparent()),
            tracestate: Some("vendor=1".into()),
        };
        let span = tracing::info_span!("job");
        adopt_producer_context(&span, &producer);
        assert_eq!(traceparent_of(&span, &producer), producer);
    }

    #[test]
    fn with_an_exporter_the_job_span_joins_the_producers_trace() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let producer = TraceHeaders {
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                tracestate: None,
            };
            let span = tracing::info_span!("job");
            adopt_producer_context(&span, &producer);
            let ours = traceparent_of(&span, &producer).traceparent.unwrap();
            let parts: Vec<&str> = ours.split('-').collect();
            assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c", "same trace");
            assert_ne!(parts[2], "b7ad6b7169203331", "the job's own span id");
            assert_eq!(parts[3], "01", "sampled, as the producer asked");
        });
    }

    #[test]
    fn a_new_traceparent_is_well_formed() {
        let tp = new_traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_ne!(tp, new_traceparent());
    }
}
