//! `[segmind]`: the API, its polling, retries and rate budget.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::{ConfigError, http_url, invalid, positive, seconds};

#[derive(Debug, Clone)]
pub struct SegmindSettings {
    pub base_url: Url,
    /// An `http://` base URL off loopback was allowed (a local stack).
    pub allow_http_base_url: bool,
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
    /// Media origins fetched whatever their scheme and address
    /// (`segmind.media_allow_private`); any other must be https and public.
    pub media_allow_private: Vec<MediaOrigin>,
    /// Lower-cased substrings that classify a FAILED error as a content block.
    pub content_blocked_patterns: Vec<String>,
    /// What to do when a submission's answer is lost after it was sent.
    pub ambiguous_submits: AmbiguousSubmits,
}

/// A media origin, `host:port`, as listed in `segmind.media_allow_private`:
/// the host lower-cased (an IPv6 address without brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaOrigin {
    pub host: String,
    pub port: u16,
}

impl MediaOrigin {
    /// `url`'s host as origins are listed: lower case, an IPv6 address
    /// without brackets.
    pub fn host_of(url: &Url) -> Option<String> {
        Some(match url.host()? {
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => a.to_string(),
        })
    }

    fn parse(value: &str) -> Result<Self, ConfigError> {
        let key = "segmind.media_allow_private";
        let value = value.trim();
        let bad = || {
            invalid(
                key,
                format!(
                    "{value:?} is not host:port (e.g. 127.0.0.1:8091, media-proxy:8080, [::1]:8091)"
                ),
            )
        };
        // Parsed as a URL's authority, so hosts are normalised as URLs' are.
        let url = Url::parse(&format!("http://{value}/")).map_err(|_| bad())?;
        let host = Self::host_of(&url).ok_or_else(bad)?;
        // An explicit port, even the scheme's default (url drops it).
        let explicit = value
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let port = url
            .port_or_known_default()
            .filter(|_| explicit)
            .ok_or_else(bad)?;
        if url.path() != "/" || !url.username().is_empty() || value.contains(['/', '?', '#']) {
            return Err(bad());
        }
        Ok(MediaOrigin { host, port })
    }
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
    /// Learn from whole cohorts (`segmind.poll_learn = "cohorts"`): a
    /// finished job's latency enters the window only once every job
    /// submitted with it has had its chance to finish; `false` learns from
    /// each job as it finishes (the earlier releases', kept for comparison).
    pub learn_cohorts: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub base: Duration,
    pub max: Duration,
    /// Total attempts of one call, the first included.
    pub attempts: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegmind {
    pub(super) base_url: String,
    pub(super) allow_http_base_url: bool,
    pub(super) model: String,
    pub(super) api_key: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) request_timeout: f64,
    pub(super) job_deadline: f64,
    pub(super) poll_prior_latency: f64,
    pub(super) poll_prior_spread: f64,
    pub(super) poll_target_lag: f64,
    pub(super) poll_max: f64,
    pub(super) max_polls_per_job: u32,
    pub(super) poll_fixed_interval: Option<f64>,
    pub(super) poll_learn: String,
    pub(super) rate_limit_per_minute: Option<u32>,
    pub(super) rate_limit_scope: RateScope,
    pub(super) max_concurrent_calls: u32,
    pub(super) retry_base: f64,
    pub(super) retry_max: f64,
    pub(super) retry_attempts: u32,
    pub(super) download_timeout: f64,
    pub(super) max_audio_bytes: u64,
    pub(super) media_allow_private: Vec<String>,
    pub(super) content_blocked_patterns: Vec<String>,
    pub(super) ambiguous_submits: AmbiguousSubmits,
}

impl RawSegmind {
    pub(super) fn validate(self, env_key: Option<String>) -> Result<SegmindSettings, ConfigError> {
        let base_url = http_url("segmind.base_url", &self.base_url)?;
        if base_url.path() != "/" || base_url.query().is_some() {
            return Err(invalid(
                "segmind.base_url",
                "must be an origin without path or query, e.g. https://api.segmind.com",
            ));
        }
        let loopback = match base_url.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if base_url.scheme() != "https" && !loopback && !self.allow_http_base_url {
            return Err(invalid(
                "segmind.base_url",
                "must be https (the API key would cross the network in clear); http is only \
                 accepted on a loopback address, or with segmind.allow_http_base_url for a local stack",
            ));
        }
        let media_allow_private = self
            .media_allow_private
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| MediaOrigin::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
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
            learn_cohorts: match self.poll_learn.as_str() {
                "cohorts" => true,
                "finishes" => false,
                other => {
                    return Err(invalid(
                        "segmind.poll_learn",
                        format!("must be \"cohorts\" or \"finishes\", got {other:?}"),
                    ));
                }
            },
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
            allow_http_base_url: self.allow_http_base_url && base_url.scheme() == "http",
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
            media_allow_private,
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
