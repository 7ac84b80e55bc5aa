//! Layered configuration: the compiled-in `config/default.toml`, an optional
//! file, then `TTS__SECTION__KEY` environment variables.
//!
//! Raw values are deserialized into `Raw*` structs (serde does what it can:
//! enums, addresses, plain numbers) and then validated into [`Settings`],
//! whose fields are already the types the rest of the crate wants
//! (`Duration`, `Url`, `SocketAddr`, a secret key). Validation errors name the
//! key. This module is at the bottom of the crate and imports none of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
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
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
}

/// What to do on an account-level failure (401, 403, 406, or a bucket that
/// refuses us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountPolicy {
    /// Stop consuming, requeue, probe until the account works again.
    Pause,
    /// Fail the job like any other permanent failure.
    Fail,
}

/// How jobs are retried, resumed and paused.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub max_deliveries: u32,
    pub requeue_delay: Duration,
    pub on_account_error: AccountPolicy,
    pub probe_initial: Duration,
    pub probe_max: Duration,
    pub resume_window: Duration,
    pub audio_retries: u32,
    pub min_seconds_per_word: f64,
    /// Finished jobs fetching, checking and uploading their audio at once.
    pub max_transfers: usize,
    /// Pauses one message may cause while the probe says the account works;
    /// past it the message fails with its own code (the refusal concerns
    /// that request, not the account).
    pub max_pause_cycles: u32,
    /// How long a pause keeps the consumer (holding what it received)
    /// before cancelling it and handing its deliveries back.
    pub pause_hold: Duration,
}

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Broker URL; it may hold a password, so it is kept secret.
    pub url: SecretString,
    pub requests_queue: String,
    pub events_exchange: String,
    /// `None` when no default events queue is to be declared.
    pub events_queue: Option<String>,
    pub dead_letter_queue: String,
    /// Bound on in-flight jobs; also the AMQP prefetch count.
    pub max_in_flight: u16,
    pub queue_depth_interval: Duration,
    pub connect_timeout: Duration,
    pub publish_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SegmindSettings {
    pub base_url: Url,
    pub model: String,
    /// `None` is allowed for commands that do not call the API (`submit`).
    pub api_key: Option<SecretString>,
    pub request_timeout: Duration,
    pub job_deadline: Duration,
    pub poll: PollSettings,
    pub retry: RetrySettings,
    /// The account's calls per minute shared by the fleet; `None` = unlimited.
    pub rate_limit_per_minute: Option<u32>,
    /// Which calls that limit counts.
    pub rate_limit_scope: RateScope,
    /// API calls this process has open at once.
    pub max_concurrent_calls: usize,
    pub download_timeout: Duration,
    pub max_audio_bytes: u64,
    /// Lower-cased substrings that classify a FAILED error as a content block.
    pub content_blocked_patterns: Vec<String>,
    /// What to do when a submission's answer is lost after it was sent.
    pub ambiguous_submits: AmbiguousSubmits,
}

/// What to do when a submission may have been accepted but its answer was
/// lost (a timeout after the request was sent, a 502/504 from the gateway).
/// The API has no idempotency key: retrying may pay twice; not retrying may
/// leave a paid request unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmbiguousSubmits {
    /// Retry like any transient error (a second paid request is possible).
    Retry,
    /// Do not retry: the job fails as `submission_unconfirmed`.
    Fail,
}

/// Which Segmind calls count against the account's rate limit; Segmind does
/// not document it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// Every API call (submit, status, result): the safe assumption.
    All,
    /// Only submissions; polls and result fetches are not paced.
    Submits,
}

#[derive(Debug, Clone, Copy)]
pub struct PollSettings {
    /// The latency a fresh process assumes before it has observed any job.
    pub prior_latency: Duration,
    pub prior_spread: Duration,
    /// The mean time a finished job may wait before a poll sees it.
    pub target_lag: Duration,
    /// Longest wait between two polls of a job past what has been learned.
    pub max_interval: Duration,
    /// Status polls one delivery may spend before it is handed back.
    pub max_polls: u32,
    /// A fixed cadence instead of the learned schedule (for comparison).
    pub fixed_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub base: Duration,
    pub max: Duration,
    /// Total attempts of one call, the first included.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<Url>,
    pub region: String,
    /// Prefix of default keys and of the worker's own objects
    /// (`{prefix}_checkpoints/`).
    pub prefix: String,
    /// Prefix every producer-chosen `output_key` is stored under.
    pub output_prefix: String,
    pub force_path_style: bool,
    pub max_attempts: u32,
    /// Bound on one S3 call, the SDK's retries included.
    pub operation_timeout: Duration,
    /// S3 calls this process has open at once.
    pub max_concurrent_requests: usize,
}

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
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_text_chars: 32_000,
            max_metadata_bytes: 8_192,
            max_job_id_len: 128,
            max_output_key_len: 512,
        }
    }
}

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
    telemetry: RawTelemetry,
    shutdown: RawShutdown,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmqp {
    url: String,
    requests_queue: String,
    events_exchange: String,
    events_queue: String,
    dead_letter_queue: String,
    max_in_flight: u32,
    queue_depth_interval: f64,
    connect_timeout: f64,
    publish_timeout: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegmind {
    base_url: String,
    model: String,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    request_timeout: f64,
    job_deadline: f64,
    poll_prior_latency: f64,
    poll_prior_spread: f64,
    poll_target_lag: f64,
    poll_max: f64,
    max_polls_per_job: u32,
    poll_fixed_interval: Option<f64>,
    rate_limit_per_minute: Option<u32>,
    rate_limit_scope: RateScope,
    max_concurrent_calls: u32,
    retry_base: f64,
    retry_max: f64,
    retry_attempts: u32,
    download_timeout: f64,
    max_audio_bytes: u64,
    content_blocked_patterns: Vec<String>,
    ambiguous_submits: AmbiguousSubmits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: String,
    endpoint: Option<String>,
    region: String,
    prefix: String,
    output_prefix: String,
    force_path_style: bool,
    max_attempts: u32,
    operation_timeout: f64,
    max_concurrent_requests: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    max_deliveries: u32,
    requeue_delay: f64,
    on_account_error: AccountPolicy,
    probe_initial: f64,
    probe_max: f64,
    resume_window: f64,
    audio_retries: u32,
    min_seconds_per_word: f64,
    max_transfers: u32,
    max_pause_cycles: u32,
    pause_hold: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    log_format: LogFormat,
    otlp_endpoint: String,
    service_name: String,
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
        // RabbitMQ closes a channel whose delivery stays unacked longer than
        // its consumer_timeout (30 minutes by default).
        if self.segmind.job_deadline >= Duration::from_secs(25 * 60) {
            out.push(format!(
                "segmind.job_deadline is {:?}: close to RabbitMQ's default consumer_timeout (30 min); \
                 a job that long would have its channel closed by the broker",
                self.segmind.job_deadline
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
        if self.jobs.max_deliveries == 1 {
            out.push(
                "jobs.max_deliveries is 1: a worker crash makes its jobs poison messages".into(),
            );
        }
        out
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

fn seconds(key: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(invalid(
            key,
            format!("must be a positive number of seconds, got {value}"),
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| invalid(key, e.to_string()))
}

fn positive(key: &'static str, value: u32) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(value as usize)
}

fn queue_name(key: &'static str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() || value.len() > 255 || value.starts_with("amq.") {
        return Err(invalid(
            key,
            "must be 1 to 255 bytes and not start with `amq.` (reserved by the broker)",
        ));
    }
    Ok(value)
}

fn http_url(key: &'static str, value: &str) -> Result<Url, ConfigError> {
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
        Ok(Settings {
            amqp: self.amqp.validate()?,
            segmind: self.segmind.validate(segmind_env_key)?,
            s3: self.s3.validate()?,
            http: self.http,
            jobs: self.jobs.validate()?,
            limits: validate_limits(self.limits)?,
            telemetry: self.telemetry.validate(otel_env)?,
            shutdown: ShutdownSettings {
                grace_period: seconds("shutdown.grace_period", self.shutdown.grace_period)?,
            },
        })
    }
}

impl RawAmqp {
    fn validate(self) -> Result<AmqpSettings, ConfigError> {
        let scheme_ok = self.url.starts_with("amqp://") || self.url.starts_with("amqps://");
        if !scheme_ok || self.url.parse::<lapin::uri::AMQPUri>().is_err() {
            // Do not echo the URL: it may contain a password.
            return Err(invalid(
                "amqp.url",
                "must be an amqp:// or amqps:// URL (amqp://user:pass@host:port/vhost)",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > u32::from(u16::MAX) {
            return Err(invalid(
                "amqp.max_in_flight",
                format!("must be between 1 and 65535, got {}", self.max_in_flight),
            ));
        }
        let events_queue = if self.events_queue.is_empty() {
            None
        } else {
            Some(queue_name("amqp.events_queue", self.events_queue)?)
        };
        Ok(AmqpSettings {
            url: SecretString::from(self.url),
            requests_queue: queue_name("amqp.requests_queue", self.requests_queue)?,
            events_exchange: queue_name("amqp.events_exchange", self.events_exchange)?,
            events_queue,
            dead_letter_queue: queue_name("amqp.dead_letter_queue", self.dead_letter_queue)?,
            max_in_flight: self.max_in_flight as u16,
            queue_depth_interval: seconds("amqp.queue_depth_interval", self.queue_depth_interval)?,
            connect_timeout: seconds("amqp.connect_timeout", self.connect_timeout)?,
            publish_timeout: seconds("amqp.publish_timeout", self.publish_timeout)?,
        })
    }
}

impl RawSegmind {
    fn validate(self, env_key: Option<String>) -> Result<SegmindSettings, ConfigError> {
        let base_url = http_url("segmind.base_url", &self.base_url)?;
        if base_url.path() != "/" || base_url.query().is_some() {
            return Err(invalid(
                "segmind.base_url",
                "must be an origin without path or query, e.g. https://api.segmind.com",
            ));
        }
        let model_ok = !self.model.is_empty()
            && self.model.len() <= 100
            && self
                .model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !model_ok {
            return Err(invalid(
                "segmind.model",
                "must be a model slug of letters, digits, '-', '.' and '_'",
            ));
        }
        let api_key = match (self.api_key, self.api_key_file) {
            (Some(key), _) if !key.trim().is_empty() => Some(key.trim().to_owned()),
            (_, Some(path)) => {
                let key = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "segmind.api_key_file",
                        format!("cannot be read ({}: {e})", path.display()),
                    )
                })?;
                let key = key.trim().to_owned();
                if key.is_empty() {
                    return Err(invalid("segmind.api_key_file", "holds an empty key"));
                }
                Some(key)
            }
            _ => env_key
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty()),
        };
        if let Some(key) = &api_key
            && key.bytes().any(|b| !(0x21..0x7f).contains(&b))
        {
            return Err(invalid(
                "segmind.api_key",
                "must be printable ASCII without spaces",
            ));
        }
        let poll = PollSettings {
            prior_latency: seconds("segmind.poll_prior_latency", self.poll_prior_latency)?,
            prior_spread: seconds("segmind.poll_prior_spread", self.poll_prior_spread)?,
            target_lag: seconds("segmind.poll_target_lag", self.poll_target_lag)?,
            max_interval: seconds("segmind.poll_max", self.poll_max)?,
            max_polls: self.max_polls_per_job,
            fixed_interval: self
                .poll_fixed_interval
                .map(|s| seconds("segmind.poll_fixed_interval", s))
                .transpose()?,
        };
        if poll.max_polls == 0 {
            return Err(invalid("segmind.max_polls_per_job", "must be at least 1"));
        }
        if poll.max_interval < poll.target_lag {
            return Err(invalid(
                "segmind.poll_max",
                "must not be smaller than segmind.poll_target_lag",
            ));
        }
        if self.rate_limit_per_minute == Some(0) {
            return Err(invalid(
                "segmind.rate_limit_per_minute",
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        let max_concurrent_calls =
            positive("segmind.max_concurrent_calls", self.max_concurrent_calls)?;
        let retry = RetrySettings {
            base: seconds("segmind.retry_base", self.retry_base)?,
            max: seconds("segmind.retry_max", self.retry_max)?,
            attempts: self.retry_attempts,
        };
        if retry.attempts == 0 {
            return Err(invalid("segmind.retry_attempts", "must be at least 1"));
        }
        let job_deadline = seconds("segmind.job_deadline", self.job_deadline)?;
        if job_deadline <= poll.max_interval {
            return Err(invalid(
                "segmind.job_deadline",
                "must be longer than segmind.poll_max",
            ));
        }
        if self.max_audio_bytes == 0 {
            return Err(invalid("segmind.max_audio_bytes", "must be positive"));
        }
        Ok(SegmindSettings {
            base_url,
            model: self.model,
            api_key: api_key.map(SecretString::from),
            request_timeout: seconds("segmind.request_timeout", self.request_timeout)?,
            job_deadline,
            poll,
            retry,
            rate_limit_per_minute: self.rate_limit_per_minute,
            rate_limit_scope: self.rate_limit_scope,
            max_concurrent_calls,
            download_timeout: seconds("segmind.download_timeout", self.download_timeout)?,
            max_audio_bytes: self.max_audio_bytes,
            content_blocked_patterns: self
                .content_blocked_patterns
                .into_iter()
                .map(|p| p.trim().to_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
            ambiguous_submits: self.ambiguous_submits,
        })
    }
}

impl RawS3 {
    fn validate(self) -> Result<S3Settings, ConfigError> {
        // S3 bucket naming rules, the subset every implementation accepts.
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(invalid(
                "s3.bucket",
                "must be 3 to 63 lower-case letters, digits, '-' or '.'",
            ));
        }
        let endpoint = match self.endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(e) => Some(http_url("s3.endpoint", e)?),
        };
        if self.region.trim().is_empty() {
            return Err(invalid("s3.region", "must not be empty"));
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|s| s == "..") {
            return Err(invalid(
                "s3.prefix",
                "must be relative: no leading '/' and no '..' segment",
            ));
        }
        for (key, prefix) in [
            ("s3.prefix", &self.prefix),
            ("s3.output_prefix", &self.output_prefix),
        ] {
            if prefix.starts_with('/')
                || prefix.split('/').any(|s| s == ".." || s == ".")
                || prefix.chars().any(char::is_control)
            {
                return Err(invalid(
                    key,
                    "must be relative: no leading '/', no '.' or '..' segment, no control characters",
                ));
            }
        }
        let reserved = if self.prefix.is_empty() {
            "_"
        } else {
            self.prefix.as_str()
        };
        if self.output_prefix.starts_with(reserved) {
            return Err(invalid(
                "s3.output_prefix",
                format!(
                    "must not lie in the worker's own area {reserved:?} (s3.prefix): every producer key would be refused"
                ),
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("s3.max_attempts", "must be at least 1"));
        }
        Ok(S3Settings {
            bucket: self.bucket,
            endpoint,
            region: self.region,
            prefix: self.prefix,
            output_prefix: self.output_prefix,
            force_path_style: self.force_path_style,
            max_attempts: self.max_attempts,
            operation_timeout: seconds("s3.operation_timeout", self.operation_timeout)?,
            max_concurrent_requests: positive(
                "s3.max_concurrent_requests",
                self.max_concurrent_requests,
            )?,
        })
    }
}

impl RawJobs {
    fn validate(self) -> Result<JobSettings, ConfigError> {
        if self.max_deliveries == 0 {
            return Err(invalid("jobs.max_deliveries", "must be at least 1"));
        }
        if !(0.0..=10.0).contains(&self.min_seconds_per_word) {
            return Err(invalid(
                "jobs.min_seconds_per_word",
                "must be between 0 and 10",
            ));
        }
        let probe_initial = seconds("jobs.probe_initial", self.probe_initial)?;
        let probe_max = seconds("jobs.probe_max", self.probe_max)?;
        if probe_max < probe_initial {
            return Err(invalid(
                "jobs.probe_max",
                "must not be smaller than jobs.probe_initial",
            ));
        }
        let pause_hold = seconds("jobs.pause_hold", self.pause_hold)?;
        if pause_hold > Duration::from_secs(20 * 60) {
            return Err(invalid(
                "jobs.pause_hold",
                "must be at most 1200 s: RabbitMQ closes a channel holding a delivery past its consumer_timeout (30 min by default)",
            ));
        }
        Ok(JobSettings {
            max_deliveries: self.max_deliveries,
            requeue_delay: Duration::try_from_secs_f64(self.requeue_delay)
                .map_err(|e| invalid("jobs.requeue_delay", e.to_string()))?,
            on_account_error: self.on_account_error,
            probe_initial,
            probe_max,
            resume_window: seconds("jobs.resume_window", self.resume_window)?,
            audio_retries: self.audio_retries,
            min_seconds_per_word: self.min_seconds_per_word,
            max_transfers: positive("jobs.max_transfers", self.max_transfers)?,
            max_pause_cycles: positive("jobs.max_pause_cycles", self.max_pause_cycles)? as u32,
            pause_hold,
        })
    }
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
    Ok(limits)
}

/// The standard OpenTelemetry variables that decide where traces go.
#[derive(Debug, Default)]
struct OtelEnv {
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    sdk_disabled: bool,
}

impl OtelEnv {
    fn from_env(env: &[(String, String)]) -> Self {
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
    fn validate(self, otel: OtelEnv) -> Result<TelemetrySettings, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_match_the_documented_contract() {
        let s = Settings::load_from(None, &[]).expect("defaults are valid");
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(s.segmind.base_url.as_str(), "https://api.segmind.com/");
        assert_eq!(s.segmind.model, "gemini-2.5-pro-tts");
        assert_eq!(s.http.addr.to_string(), "0.0.0.0:9090");
        assert_eq!(s.amqp.requests_queue, "tts.requests");
        assert_eq!(s.amqp.events_queue.as_deref(), Some("tts.events"));
        assert!(s.amqp.max_in_flight >= 1000, "thousands of ~45 s waits");
        assert_eq!(s.prefetch(), s.amqp.max_in_flight, "no rate limit: no cap");
        assert!(
            s.segmind.poll.fixed_interval.is_none(),
            "the learned schedule"
        );
        assert_eq!(s.segmind.rate_limit_per_minute, None);
        assert!(s.segmind.api_key.is_none());
        assert!(s.s3.endpoint.is_none());
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("TTS__AMQP__URL", "amqp://u:p@broker:5672/v"),
                ("TTS__S3__BUCKET", "my-bucket"),
                ("TTS__S3__ENDPOINT", "http://127.0.0.1:3900"),
                ("TTS__S3__FORCE_PATH_STYLE", "true"),
                ("TTS__AMQP__MAX_IN_FLIGHT", "64"),
                ("TTS__SEGMIND__CONTENT_BLOCKED_PATTERNS", "Nope, unsafe"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.amqp.url.expose_secret(), "amqp://u:p@broker:5672/v");
        assert_eq!(s.s3.bucket, "my-bucket");
        assert!(s.s3.force_path_style);
        assert_eq!(s.amqp.max_in_flight, 64);
        assert_eq!(s.segmind.content_blocked_patterns, vec!["nope", "unsafe"]);
    }

    #[test]
    fn api_key_precedence_is_config_then_file_then_segmind_env() {
        let dir = std::env::temp_dir().join(format!("tts-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let file_str = file.to_str().unwrap();

        let only_env = Settings::load_from(None, &env(&[("SEGMIND_API_KEY", "from-env")])).unwrap();
        assert_eq!(
            only_env.require_api_key().unwrap().expose_secret(),
            "from-env"
        );

        let file_wins = Settings::load_from(
            None,
            &env(&[
                ("SEGMIND_API_KEY", "from-env"),
                ("TTS__SEGMIND__API_KEY_FILE", file_str),
            ]),
        )
        .unwrap();
        assert_eq!(
            file_wins.require_api_key().unwrap().expose_secret(),
            "from-file"
        );

        let explicit = Settings::load_from(
            None,
            &env(&[
                ("SEGMIND_API_KEY", "from-env"),
                ("TTS__SEGMIND__API_KEY_FILE", file_str),
                ("TTS__SEGMIND__API_KEY", "explicit"),
            ]),
        )
        .unwrap();
        assert_eq!(
            explicit.require_api_key().unwrap().expose_secret(),
            "explicit"
        );

        let none = Settings::load_from(None, &[]).unwrap();
        let err = none.require_api_key().unwrap_err().to_string();
        assert!(
            err.contains("segmind.api_key") && err.contains("SEGMIND_API_KEY"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            ("TTS__AMQP__URL", "http://nope", "amqp.url"),
            ("TTS__SEGMIND__BASE_URL", "ftp://x", "segmind.base_url"),
            (
                "TTS__SEGMIND__BASE_URL",
                "https://api.segmind.com/v2",
                "segmind.base_url",
            ),
            ("TTS__S3__BUCKET", "Bad_Bucket", "s3.bucket"),
            ("TTS__S3__PREFIX", "/abs/", "s3.prefix"),
            (
                "TTS__S3__OUTPUT_PREFIX",
                "tts/producers/",
                "s3.output_prefix",
            ),
            ("TTS__S3__OUTPUT_PREFIX", "../up/", "s3.output_prefix"),
            ("TTS__JOBS__PAUSE_HOLD", "3600", "jobs.pause_hold"),
            ("TTS__JOBS__MAX_PAUSE_CYCLES", "0", "jobs.max_pause_cycles"),
            (
                "TTS__SEGMIND__AMBIGUOUS_SUBMITS",
                "maybe",
                "segmind.ambiguous_submits",
            ),
            ("TTS__HTTP__ADDR", "localhost", "http.addr"),
            ("TTS__AMQP__MAX_IN_FLIGHT", "0", "amqp.max_in_flight"),
            ("TTS__SEGMIND__JOB_DEADLINE", "-1", "segmind.job_deadline"),
            ("TTS__TELEMETRY__LOG_FORMAT", "xml", "telemetry.log_format"),
            (
                "TTS__JOBS__ON_ACCOUNT_ERROR",
                "ignore",
                "jobs.on_account_error",
            ),
            ("TTS__S3__OPERATION_TIMEOUT", "0", "s3.operation_timeout"),
            ("TTS__LIMITS__MAX_JOB_ID_LEN", "4", "limits.max_job_id_len"),
            (
                "TTS__SEGMIND__API_KEY_FILE",
                "/nonexistent/key",
                "segmind.api_key_file",
            ),
            ("TTS__SEGMIND__MODEL", "../x", "segmind.model"),
            (
                "TTS__SEGMIND__RATE_LIMIT_PER_MINUTE",
                "0",
                "segmind.rate_limit_per_minute",
            ),
            (
                "TTS__SEGMIND__RATE_LIMIT_SCOPE",
                "polls",
                "segmind.rate_limit_scope",
            ),
            (
                "TTS__SEGMIND__MAX_POLLS_PER_JOB",
                "0",
                "segmind.max_polls_per_job",
            ),
            (
                "TTS__SEGMIND__POLL_TARGET_LAG",
                "0",
                "segmind.poll_target_lag",
            ),
            ("TTS__SEGMIND__POLL_MAX", "0.5", "segmind.poll_max"),
            ("TTS__JOBS__MAX_TRANSFERS", "0", "jobs.max_transfers"),
            (
                "TTS__S3__MAX_CONCURRENT_REQUESTS",
                "0",
                "s3.max_concurrent_requests",
            ),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, &env(&[(var, value)]))
                .expect_err(var)
                .to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn under_a_rate_limit_a_replica_holds_about_what_its_budget_can_start() {
        let pro = Settings::load_from(None, &env(&[("TTS__SEGMIND__RATE_LIMIT_PER_MINUTE", "50")]))
            .unwrap();
        assert_eq!(pro.prefetch(), 16);
        let free = Settings::load_from(None, &env(&[("TTS__SEGMIND__RATE_LIMIT_PER_MINUTE", "5")]))
            .unwrap();
        assert_eq!(free.prefetch(), 2);
        let small = Settings::load_from(
            None,
            &env(&[
                ("TTS__SEGMIND__RATE_LIMIT_PER_MINUTE", "600"),
                ("TTS__AMQP__MAX_IN_FLIGHT", "100"),
            ]),
        )
        .unwrap();
        assert_eq!(small.prefetch(), 100, "max_in_flight still bounds it");
    }

    #[test]
    fn amqp_url_errors_never_echo_the_password() {
        let err = Settings::load_from(None, &env(&[("TTS__AMQP__URL", "http://u:hunter2@x")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn risky_combinations_are_warned_about() {
        assert!(
            Settings::load_from(None, &[])
                .unwrap()
                .warnings()
                .is_empty(),
            "defaults are safe"
        );
        let s = Settings::load_from(
            None,
            &env(&[
                ("TTS__SEGMIND__JOB_DEADLINE", "1800"),
                ("TTS__JOBS__MAX_DELIVERIES", "1"),
            ]),
        )
        .unwrap();
        let w = s.warnings().join("\n");
        assert!(
            w.contains("consumer_timeout") && w.contains("poison"),
            "{w}"
        );
    }

    #[test]
    fn traces_go_where_the_standard_otel_variables_say() {
        let endpoint = |pairs: &[(&str, &str)]| {
            let mut vars = env(&[("SEGMIND_API_KEY", "k")]);
            vars.extend(env(pairs));
            Settings::load_from(None, &vars)
                .unwrap()
                .telemetry
                .otlp_endpoint
                .map(|u| u.to_string())
        };
        assert_eq!(endpoint(&[]), None, "nothing exported when unset");
        assert_eq!(
            endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:80/otlp/")]).as_deref(),
            Some("http://gw/otlp/v1/traces")
        );
        assert_eq!(
            endpoint(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:4318/custom"
                ),
            ])
            .as_deref(),
            Some("http://traces:4318/custom")
        );
        assert_eq!(
            endpoint(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]),
            None
        );
        assert_eq!(
            endpoint(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("TTS__TELEMETRY__OTLP_ENDPOINT", "http://mine:4318"),
            ])
            .as_deref(),
            Some("http://mine:4318/v1/traces")
        );
    }

    #[test]
    fn unknown_keys_in_a_file_are_rejected() {
        let dir = std::env::temp_dir().join(format!("tts-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[amqp]\nprefech = 3\n").unwrap();
        let err = Settings::load_from(Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefech"), "{err}");
    }
}
