//! Layered configuration: the compiled-in `config/default.toml`, an optional
//! file, then `TTS__SECTION__KEY` environment variables.
//!
//! Raw values are deserialized into `Raw*` structs (serde does what it can:
//! enums, addresses, plain numbers) and then validated into [`Settings`],
//! whose fields are already the types the rest of the crate wants
//! (`Duration`, `Url`, `SocketAddr`, a secret key). Validation errors name the
//! key. One file per section (`amqp`, `segmind`, `s3`, `jobs`, `telemetry`,
//! each with its settings, raw form and validation); the small sections
//! (`http`, `limits`, `shutdown`) and the loading live here. This module is at
//! the bottom of the crate and imports none of it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

mod amqp;
mod jobs;
mod s3;
mod segmind;
mod telemetry;

pub use amqp::{AmqpSettings, Lane, ReplyToPatterns};
pub use jobs::{AccountPolicy, JobSettings};
pub use s3::S3Settings;
pub use segmind::{
    AmbiguousSubmits, MediaOrigin, PollSettings, RateScope, RetrySettings, SegmindSettings,
};
pub use telemetry::{LogFormat, TelemetrySettings};

use amqp::RawAmqp;
use jobs::RawJobs;
use s3::RawS3;
use segmind::RawSegmind;
use telemetry::{OtelEnv, RawTelemetry};

const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

pub(super) fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Validated settings of every component.
#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub segmind: SegmindSettings,
    pub s3: S3Settings,
    pub http: HttpSettings,
    pub jobs: JobSettings,
    pub limits: RequestLimits,
    pub long_text: LongTextSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    pub tenants: TenantSettings,
    pub fleet: FleetSettings,
}

/// What a worker process holds before any job: its runtime, clients,
/// pools and learned state (measured ≈ 30 MiB idle; 64 MiB with margin).
pub const BASE_MEMORY: u64 = 64 << 20;

/// How a long text is cut and synthesized.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongTextSettings {
    /// Most characters in one part (one Segmind call).
    pub part_chars: usize,
    /// Parts of one job at Segmind at once.
    pub max_parallel_parts: usize,
}

/// Bounds of `long_text.part_chars`: below, a part is a phrase and its
/// prosody suffers; above, a slow voice nears Gemini's ≈ 512 s output cap
/// (7,000 characters at 14 a second is 500 s).
pub const PART_CHARS_RANGE: std::ops::RangeInclusive<usize> = 200..=7_000;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

/// Limits applied to incoming requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    pub max_text_chars: usize,
    pub max_metadata_bytes: usize,
    pub max_job_id_len: usize,
    pub max_output_key_len: usize,
    /// Largest accepted request body, in bytes, checked before it is
    /// parsed; by default [`RequestLimits::body_bytes`] derives it from the
    /// other limits.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// The newest request version this replica accepts (see
    /// [`NEWEST_REQUEST_VERSION`]); a newer request is handed back for a
    /// newer replica.
    pub max_request_version: u32,
}

/// The newest request version this build knows: 1 is the original request;
/// 2 adds the deliverable's fields (`format`, `sample_rate`, `bitrate_kbps`,
/// `loudness_lufs`, `true_peak_db`, `captions`). `wire::request` holds the
/// table of which field came in which version.
pub const NEWEST_REQUEST_VERSION: u32 = 2;

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_text_chars: 200_000,
            max_metadata_bytes: 8_192,
            max_job_id_len: 128,
            max_output_key_len: 512,
            max_body_bytes: None,
            max_request_version: NEWEST_REQUEST_VERSION,
        }
    }
}

impl RequestLimits {
    /// The largest body accepted: `max_body_bytes`, else what the largest
    /// valid request can take — every character of the text and the
    /// metadata JSON-escaped (`\uXXXX`: 6 bytes, as Python's `json.dumps`
    /// writes by default), plus 64 KiB for the other fields. 1.3 MB with
    /// the default limits.
    pub fn body_bytes(&self) -> usize {
        self.max_body_bytes.unwrap_or_else(|| {
            self.max_text_chars
                .saturating_mul(6)
                .saturating_add(self.max_metadata_bytes.saturating_mul(6))
                .saturating_add(64 * 1024)
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ShutdownSettings {
    pub grace_period: Duration,
}

// ---- raw, as deserialized ------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    amqp: RawAmqp,
    segmind: RawSegmind,
    s3: RawS3,
    http: HttpSettings,
    jobs: RawJobs,
    limits: RequestLimits,
    long_text: LongTextSettings,
    telemetry: RawTelemetry,
    shutdown: RawShutdown,
    tenants: RawTenants,
    fleet: RawFleet,
}

/// The fleet's shared memory (`[fleet]`): a RabbitMQ stream.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// The stream's name; `None`: no fleet memory (no spend caps, no
    /// cancellation, no shared priors).
    pub stream: Option<String>,
    /// The exchange producers publish cancellations to, bound to the stream.
    pub control_exchange: String,
    /// How far back a starting replica reads learned priors.
    pub replay: Duration,
    /// How often a replica publishes what it learned.
    pub publish_interval: Duration,
    /// How long the stream keeps records (`x-max-age`), whole hours.
    pub retention_hours: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    stream: String,
    control_exchange: String,
    replay: f64,
    publish_interval: f64,
    retention_hours: u32,
}

impl RawFleet {
    fn validate(self) -> Result<FleetSettings, ConfigError> {
        if self.retention_hours < 25 {
            return Err(invalid(
                "fleet.retention_hours",
                format!(
                    "must be at least 25: a replica starting late in a UTC day reads the day's spending back, got {}",
                    self.retention_hours
                ),
            ));
        }
        Ok(FleetSettings {
            stream: if self.stream.is_empty() {
                None
            } else {
                Some(queue_name("fleet.stream", self.stream)?)
            },
            control_exchange: queue_name("fleet.control_exchange", self.control_exchange)?,
            replay: seconds("fleet.replay", self.replay)?,
            publish_interval: seconds("fleet.publish_interval", self.publish_interval)?,
            retention_hours: self.retention_hours,
        })
    }
}

/// Who a request belongs to (`[tenants]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantIdentity {
    /// Every producer is one party.
    None,
    /// The broker-validated `user_id` property names the tenant.
    UserId,
}

#[derive(Debug, Clone)]
pub struct TenantSettings {
    pub identity: TenantIdentity,
    /// Credits a tenant may spend a UTC day across the fleet
    /// (`tenants.daily_credit_cap`); `None`: no cap.
    pub daily_credit_cap: Option<f64>,
    /// Each listed tenant's share within a lane (`tenants.weights`);
    /// unlisted tenants weigh 1.
    pub weights: std::collections::BTreeMap<String, u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    identity: TenantIdentity,
    weights: Vec<String>,
    daily_credit_cap: f64,
}

impl RawTenants {
    fn validate(self) -> Result<TenantSettings, ConfigError> {
        let mut weights = std::collections::BTreeMap::new();
        for entry in self.weights.iter().filter(|e| !e.trim().is_empty()) {
            let (tenant, weight) = amqp::weighted("tenants.weights", entry)?;
            if weights.insert(tenant.clone(), weight).is_some() {
                return Err(invalid(
                    "tenants.weights",
                    format!("{tenant:?} is listed twice"),
                ));
            }
        }
        if !self.daily_credit_cap.is_finite() || self.daily_credit_cap < 0.0 {
            return Err(invalid(
                "tenants.daily_credit_cap",
                format!(
                    "must be 0 (no cap) or a positive number of credits, got {}",
                    self.daily_credit_cap
                ),
            ));
        }
        Ok(TenantSettings {
            identity: self.identity,
            weights,
            daily_credit_cap: (self.daily_credit_cap > 0.0).then_some(self.daily_credit_cap),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_period: f64,
}

impl Settings {
    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &vars)
    }

    /// Like [`Settings::load`] with an explicit environment, so tests do not
    /// have to mutate the process environment.
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let tts_env: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("TTS__"))
            .cloned()
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let raw: RawSettings = builder
            .add_source(
                config::Environment::with_prefix("TTS")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("segmind.content_blocked_patterns")
                    .with_list_parse_key("segmind.media_allow_private")
                    .with_list_parse_key("amqp.reply_to_pattern")
                    .with_list_parse_key("amqp.lanes")
                    .with_list_parse_key("tenants.weights")
                    .try_parsing(true)
                    .source(Some(tts_env)),
            )
            .build()?
            .try_deserialize()?;
        let segmind_env_key = env
            .iter()
            .find(|(k, _)| k == "SEGMIND_API_KEY")
            .map(|(_, v)| v.clone());
        let otel_env = OtelEnv::from_env(env);
        raw.validate(segmind_env_key, otel_env)
    }

    /// Valid but risky combinations, in plain words, for a log line at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        // A delivery hands its job back at jobs.delivery_lifetime, but a
        // fetch under way then finishes first, within segmind.job_deadline:
        // RabbitMQ closes a channel (3.10-4.2) or cancels the consumer (4.3+)
        // whose delivery stays unacked past its consumer_timeout.
        if self.segmind.job_deadline
            >= self
                .amqp
                .consumer_timeout
                .saturating_sub(self.jobs.delivery_lifetime)
            && self.segmind.job_deadline >= Duration::from_secs(25 * 60)
        {
            out.push(format!(
                "segmind.job_deadline is {:?}: a fetch under way when a delivery's lifetime ends could outlast \
                 the broker's consumer_timeout (amqp.consumer_timeout, {:?})",
                self.segmind.job_deadline, self.amqp.consumer_timeout
            ));
        }
        if self.jobs.resume_window >= Duration::from_secs(3600) {
            out.push(
                "jobs.resume_window is 1 hour or more: Segmind drops results after 1 hour, \
                 so such resumes find nothing (harmless, but a wasted call)"
                    .into(),
            );
        }
        if self.segmind.retry.max >= self.segmind.job_deadline {
            out.push("segmind.retry_max is not below segmind.job_deadline: one backoff could use the whole job".into());
        }
        if self.segmind.base_url.scheme() == "http" && self.segmind.allow_http_base_url {
            out.push(format!(
                "segmind.allow_http_base_url: the API key goes to {} in clear; only for a local stack",
                self.segmind.base_url
            ));
        }
        if self.jobs.max_deliveries == 1 {
            out.push(
                "jobs.max_deliveries is 1: a worker crash makes its jobs poison messages".into(),
            );
        }
        out
    }

    /// The most memory these settings let one process hold beyond its base
    /// ([`BASE_MEMORY`]): every transfer slot with the largest audio three
    /// times (as fetched, decoded to PCM, and that PCM as a WAV file; each
    /// held to `segmind.max_audio_bytes`), and the admitted request bytes
    /// three times (the body, the text, and what the plan and the delivery
    /// hold of it).
    pub fn memory_bound(&self) -> u64 {
        let transfers = (self.jobs.max_transfers as u64)
            .saturating_mul(self.segmind.max_audio_bytes)
            .saturating_mul(3);
        transfers
            .saturating_add(self.amqp.max_bytes_in_flight.saturating_mul(3))
            .saturating_add(BASE_MEMORY)
    }

    /// A warning when [`Settings::memory_bound`] does not fit `limit`, the
    /// memory the container is given (none without a limit).
    pub fn memory_warning(&self, limit: Option<u64>) -> Option<String> {
        let limit = limit?;
        let bound = self.memory_bound();
        (bound > limit).then(|| {
            let mib = |b: u64| b / (1 << 20);
            format!(
                "these settings can hold {} MiB (jobs.max_transfers {} × segmind.max_audio_bytes {} MiB × 3, \
                 amqp.max_bytes_in_flight {} MiB × 3, {} MiB base) but the container's memory limit is {} MiB: \
                 lower them or raise the limit, or the process may be killed under load",
                mib(bound),
                self.jobs.max_transfers,
                mib(self.segmind.max_audio_bytes),
                mib(self.amqp.max_bytes_in_flight),
                mib(BASE_MEMORY),
                mib(limit)
            )
        })
    }

    /// Deliveries one process holds: `amqp.max_in_flight`, and under a rate
    /// limit no more than a third of the account's calls per minute (at
    /// least 2): about what one replica keeps in flight at the whole limit
    /// with ~45 s jobs of 3 calls. A replica never holds jobs its budget
    /// could not start soon, and a backlog stays in the queue for replicas
    /// with budget.
    pub fn prefetch(&self) -> u16 {
        let cap = self
            .segmind
            .rate_limit_per_minute
            .map_or(u32::MAX, |l| (l / 3).max(2));
        self.amqp
            .max_in_flight
            .min(u16::try_from(cap).unwrap_or(u16::MAX))
    }

    /// The API key, or an error naming how to provide it.
    pub fn require_api_key(&self) -> Result<&SecretString, ConfigError> {
        self.segmind.api_key.as_ref().ok_or_else(|| {
            invalid(
                "segmind.api_key",
                "is missing: set SEGMIND_API_KEY, TTS__SEGMIND__API_KEY or TTS__SEGMIND__API_KEY_FILE",
            )
        })
    }
}

pub(super) fn seconds(key: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(invalid(
            key,
            format!("must be a positive number of seconds, got {value}"),
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| invalid(key, e.to_string()))
}

pub(super) fn positive(key: &'static str, value: u32) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(value as usize)
}

pub(super) fn queue_name(key: &'static str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() || value.len() > 255 || value.starts_with("amq.") {
        return Err(invalid(
            key,
            "must be 1 to 255 bytes and not start with `amq.` (reserved by the broker)",
        ));
    }
    Ok(value)
}

pub(super) fn http_url(key: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| invalid(key, format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            key,
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(url)
}

impl RawSettings {
    fn validate(
        self,
        segmind_env_key: Option<String>,
        otel_env: OtelEnv,
    ) -> Result<Settings, ConfigError> {
        let amqp = self.amqp.validate()?;
        let jobs = self.jobs.validate()?;
        if jobs.delivery_lifetime >= amqp.consumer_timeout {
            return Err(invalid(
                "jobs.delivery_lifetime",
                format!(
                    "must be below amqp.consumer_timeout ({} s): a delivery held past the broker's consumer timeout closes its channel (RabbitMQ before 4.3) or is taken back while the worker still works on it (4.3+)",
                    amqp.consumer_timeout.as_secs_f64()
                ),
            ));
        }
        Ok(Settings {
            amqp,
            segmind: self.segmind.validate(segmind_env_key)?,
            s3: self.s3.validate()?,
            http: self.http,
            jobs,
            limits: validate_limits(self.limits)?,
            long_text: validate_long_text(self.long_text)?,
            telemetry: self.telemetry.validate(otel_env)?,
            shutdown: ShutdownSettings {
                grace_period: seconds("shutdown.grace_period", self.shutdown.grace_period)?,
            },
            tenants: self.tenants.validate()?,
            fleet: self.fleet.validate()?,
        })
    }
}

fn validate_long_text(long: LongTextSettings) -> Result<LongTextSettings, ConfigError> {
    if !PART_CHARS_RANGE.contains(&long.part_chars) {
        return Err(invalid(
            "long_text.part_chars",
            format!(
                "must be between {} and {} (one Gemini call speaks at most ≈ 512 s)",
                PART_CHARS_RANGE.start(),
                PART_CHARS_RANGE.end()
            ),
        ));
    }
    if !(1..=64).contains(&long.max_parallel_parts) {
        return Err(invalid(
            "long_text.max_parallel_parts",
            "must be between 1 and 64",
        ));
    }
    Ok(long)
}

fn validate_limits(limits: RequestLimits) -> Result<RequestLimits, ConfigError> {
    if limits.max_text_chars == 0 {
        return Err(invalid("limits.max_text_chars", "must be positive"));
    }
    if !(8..=255).contains(&limits.max_job_id_len) {
        return Err(invalid(
            "limits.max_job_id_len",
            "must be between 8 and 255",
        ));
    }
    if !(16..=1024).contains(&limits.max_output_key_len) {
        return Err(invalid(
            "limits.max_output_key_len",
            "must be between 16 and 1024 (S3 keys are at most 1024 bytes)",
        ));
    }
    if limits.max_body_bytes.is_some_and(|b| b < 4_096) {
        return Err(invalid(
            "limits.max_body_bytes",
            "must be at least 4096 (unset, it is derived from the other limits)",
        ));
    }
    if !(1..=NEWEST_REQUEST_VERSION).contains(&limits.max_request_version) {
        return Err(invalid(
            "limits.max_request_version",
            format!("must be 1 to {NEWEST_REQUEST_VERSION} (the versions this build knows)"),
        ));
    }
    Ok(limits)
}

#[cfg(test)]
mod tests;
