//! `[telemetry]`: logs and where traces go (`OTEL_*` honoured).

use serde::Deserialize;
use url::Url;

use super::{ConfigError, http_url};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<Url>,
    pub service_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) log_format: LogFormat,
    pub(super) otlp_endpoint: String,
    pub(super) service_name: String,
}

/// The standard OpenTelemetry variables that decide where traces go.
#[derive(Debug, Default)]
pub(super) struct OtelEnv {
    pub(super) endpoint: Option<String>,
    pub(super) traces_endpoint: Option<String>,
    pub(super) sdk_disabled: bool,
}

impl OtelEnv {
    pub(super) fn from_env(env: &[(String, String)]) -> Self {
        let get = |key: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        OtelEnv {
            endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_endpoint: get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            sdk_disabled: get("OTEL_SDK_DISABLED")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        }
    }
}

impl RawTelemetry {
    /// The traces URL: `telemetry.otlp_endpoint` (a bare host gets
    /// `/v1/traces`), else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is,
    /// else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces` (the OTLP exporter
    /// specification's rules); none when `OTEL_SDK_DISABLED=true`.
    pub(super) fn validate(self, otel: OtelEnv) -> Result<TelemetrySettings, ConfigError> {
        let nonempty = |v: Option<String>| v.filter(|e| !e.trim().is_empty());
        let endpoint = if otel.sdk_disabled {
            None
        } else if let Some(e) = nonempty(Some(self.otlp_endpoint)) {
            let mut url = http_url("telemetry.otlp_endpoint", e.trim())?;
            if url.path() == "/" {
                url.set_path("v1/traces");
            }
            Some(url)
        } else if let Some(e) = nonempty(otel.traces_endpoint) {
            Some(http_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e.trim())?)
        } else if let Some(e) = nonempty(otel.endpoint) {
            let mut url = http_url("OTEL_EXPORTER_OTLP_ENDPOINT", e.trim())?;
            let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
            url.set_path(&path);
            Some(url)
        } else {
            None
        };
        let otlp_endpoint = endpoint;
        Ok(TelemetrySettings {
            log_format: self.log_format,
            otlp_endpoint,
            service_name: self.service_name,
        })
    }
}
