//! How the simulator answers: latency, limits, credits, faults, output and
//! speech model, with presets.

use std::time::Duration;

use crate::{model, speech};

/// How the simulator answers.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The only accepted `x-api-key`.
    pub api_key: String,
    /// Model slugs served (others answer 404).
    pub models: Vec<String>,
    /// Time a job spends QUEUED before PROCESSING.
    pub queue_time: Duration,
    /// Mean and spread of a job's latency: the half-width of a uniform
    /// spread, or the standard deviation of a normal one (`latency_dist`).
    pub latency_mean: Duration,
    pub latency_spread: Duration,
    pub latency_dist: LatencyDist,
    /// Added to a job's latency per character of its text (0 = none).
    pub latency_per_char: Duration,
    /// How long finished results are kept before ids answer 404.
    pub retention: Duration,
    /// Calls per minute (a window opened by the first call) before 429;
    /// `None` = unlimited. `rate_limit_scope` says which calls count.
    pub rate_limit_per_minute: Option<u32>,
    pub rate_limit_scope: RateScope,

    /// Credit balance; `None` = unlimited. Each accepted submit costs `cost_per_job`.
    pub credits: Option<f64>,
    pub cost_per_job: f64,
    /// Probability that any API call answers a random 500/502/504.
    pub fault_rate: f64,
    pub output_mode: OutputMode,
    /// Return status/response URLs on a foreign origin (the worker must not follow them).
    pub foreign_urls: bool,
    /// Use espeak-ng for real speech when installed.
    pub espeak: bool,
    /// Time between accepting a submission and sending its answer.
    pub submit_delay: Duration,
    /// Base URL of the media host as clients reach it (behind a proxy or in
    /// a container network); default `http://{media_addr}`.
    pub media_public_url: Option<String>,
    /// How long the audio is: a tone per word (default) or the realistic
    /// model (length from characters and voice, cut at Gemini's cap).
    pub speech: model::SpeechModel,
    /// With the realistic model: probability that a job's audio is silently
    /// truncated to 13–46 % (Gemini's `finishReason: OTHER`), still billed.
    pub truncation_rate: f64,
    /// With the realistic model: how fast voices speak, as a share of their
    /// usual pace (1.0). Gemini follows directions such as "read slowly",
    /// which can halve it; a part planned for ≈ 450 s then runs past the
    /// output cap and is cut.
    pub pace: f64,
    /// The container results are served in.
    pub container: Container,
}

/// What Segmind wraps Gemini's PCM in (unknown for the real API: both are
/// served, and the worker sniffs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Wav,
    Mp3,
}

impl Container {
    pub fn extension(self) -> &'static str {
        match self {
            Container::Wav => "wav",
            Container::Mp3 => "mp3",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Container::Wav => "audio/wav",
            Container::Mp3 => "audio/mpeg",
        }
    }
}

/// The shape of the latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyDist {
    Uniform,
    Normal,
}

/// Which calls the account's rate limit counts (Segmind does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// Only submissions.
    Submits,
    /// Every API call: submissions, status polls and result fetches.
    AllCalls,
}

/// How the result's `output` carries the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Url,
    DataUri,
    Base64,
}

impl SimConfig {
    /// Near the real service: ~43.5 s per job.
    pub fn realistic(api_key: &str) -> Self {
        SimConfig {
            queue_time: Duration::from_millis(1500),
            latency_mean: Duration::from_millis(42_000),
            latency_spread: Duration::from_secs(8),
            ..Self::fast(api_key)
        }
    }

    /// For the demo: a few seconds per job.
    pub fn demo(api_key: &str) -> Self {
        SimConfig {
            queue_time: Duration::from_millis(500),
            latency_mean: Duration::from_secs(3),
            latency_spread: Duration::from_secs(1),
            rate_limit_per_minute: Some(50),
            ..Self::fast(api_key)
        }
    }

    /// For tests: sub-second jobs, no limits.
    pub fn fast(api_key: &str) -> Self {
        SimConfig {
            api_key: api_key.to_owned(),
            models: vec!["gemini-2.5-pro-tts".into()],
            queue_time: Duration::from_millis(50),
            latency_mean: Duration::from_millis(200),
            latency_spread: Duration::from_millis(100),
            latency_dist: LatencyDist::Uniform,
            latency_per_char: Duration::ZERO,
            retention: Duration::from_secs(3600),
            rate_limit_per_minute: None,
            rate_limit_scope: RateScope::Submits,

            credits: None,
            cost_per_job: 0.05,
            fault_rate: 0.0,
            output_mode: OutputMode::Url,
            speech: model::SpeechModel::Words,
            truncation_rate: 0.0,
            pace: 1.0,
            container: Container::Wav,
            foreign_urls: false,
            espeak: speech::espeak_available(),
            submit_delay: Duration::ZERO,
            media_public_url: None,
        }
    }
}
