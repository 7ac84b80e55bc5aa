//! Logging and tracing: `tracing` to stderr (text or JSON; colours only when
//! stderr is a terminal), plus an OpenTelemetry OTLP/HTTP exporter when an
//! endpoint is configured.
//!
//! Spans are exported by the SDK's batch processor from its own thread, with
//! the blocking HTTP client: that thread has no Tokio runtime, so the async
//! client cannot be used there.
//!
//! Secrets never reach a span or a log line: the API key and the broker URL
//! are `SecretString`s, and the Segmind client adds the key to requests
//! itself, after any instrumentation sees them.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};

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

/// Installs the global subscriber. Call once, from `main`.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,lapin=warn,aws_config=warn,aws_smithy_runtime=warn")
    });
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let mut url = endpoint.clone();
            if url.path() == "/" {
                url.set_path("v1/traces");
            }
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url.as_str())
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.service_name.clone())
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
