//! A faithful stand-in for Segmind's serverless API, for tests, the demo and
//! benchmarks (the real API is never called from them).
//!
//! What it reproduces (see `shared/reference/segmind-api.md`):
//! - v2: `POST /v2/{model}` → `{request_id, status, poll_url, status_url,
//!   response_url}`; `GET /v2/requests/{id}/status`; `GET /v2/requests/{id}`;
//!   `GET /v1/requests/{id}` (the SDK's poll URL). v1: `POST /v1/{model}`
//!   answers the audio bytes directly.
//! - 400 on invalid parameters (the model's rules), 401 on a wrong
//!   `x-api-key`, 404 on unknown or expired ids (retention, default 1 h), 406
//!   when credits run out, FAILED served as **422** with an `error`, 429 with
//!   `x-rate-limit-reset-at-utc` over the per-minute limit, injected 500/502/504,
//!   and `x-remaining-credits` on every API answer.
//! - `output` is a URL on a separate media listener (another origin, like a
//!   CDN), or a data URI / bare base64 when so configured.
//!
//! Markers in the text trigger outcomes (they are not spoken):
//! `[[sim:rai]]` a content/RAI block, `[[sim:fail]]` an inference failure,
//! `[[sim:empty]]` a COMPLETED job with empty audio, `[[sim:truncated]]` one
//! with only the first word of audio (`[[sim:truncated-once]]`: only on the
//! first submission of that text), `[[sim:latency=S]]` a job taking S seconds,
//! `[[sim:truncate=F]]` (realistic speech model) audio cut to the share F,
//! `[[sim:forbidden]]` a 403 on its submission (a policy rule on this text:
//! the account works for others), `[[sim:expensive]]` a 406 on its
//! submission (its cost is above the balance), `[[sim:status-fault=N]]`
//! every status poll of that request answers HTTP N.
//!
//! Test hooks, not part of Segmind's API: `GET /_sim/stats` (call counts, in
//! total and per request id), `POST /_sim/faults` (`{"statuses":[429,502]}`:
//! the next API calls answer these codes; `{"accept_then":[504]}`: the next
//! submissions are accepted, and billed, and then answered with these codes,
//! as a gateway that times out after the API took the request).

pub mod model;
pub mod speech;
pub mod voices;
pub mod wav;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::voices::is_voice;

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
            foreign_urls: false,
            espeak: speech::espeak_available(),
            submit_delay: Duration::ZERO,
            media_public_url: None,
        }
    }
}

/// Call counts of one request id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub status_polls: u32,
    pub result_fetches: u32,
    pub media_fetches: u32,
    /// Milliseconds from the job finishing to the first status poll that
    /// reported it finished: the client's polling lag.
    pub lag_ms: Option<u64>,
}

/// Call counts of the whole simulator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimStats {
    pub submits_accepted: u64,
    pub submits_rejected: u64,
    pub v1_calls: u64,
    pub status_polls: u64,
    pub result_fetches: u64,
    pub media_fetches: u64,
    /// Media requests that carried an `x-api-key` header (must stay 0).
    pub media_requests_with_api_key: u64,
    pub unauthorized: u64,
    /// Every call to the API (not the media host), rejected ones included.
    pub api_calls: u64,
    pub rate_limited: u64,
    pub faults_injected: u64,
    /// The most jobs queued or processing at once.
    pub peak_in_progress: u64,
    /// Accepted submissions per text (markers removed, first 80 characters):
    /// tells how many times one job was paid for.
    pub submits_by_text: HashMap<String, u32>,
    pub requests: HashMap<String, RequestCounts>,
}

enum Fate {
    Complete,
    Fail(String),
    Empty,
    /// Success with only the first word of audio (Gemini's silent truncation).
    Truncated,
}

struct SimJob {
    text: String,
    /// With the realistic model: the audio's length in seconds.
    audio_seconds: Option<f64>,
    /// Every status poll answers this (`[[sim:status-fault=N]]`).
    status_fault: Option<u16>,
    two_speakers: bool,
    created: Instant,
    queue_until: Instant,
    done_at: Instant,
    fate: Fate,
}

impl SimJob {
    /// What a status poll at `now` reports. Pure, so the timing rules are
    /// tested without a clock.
    fn state(&self, now: Instant) -> &'static str {
        if now < self.queue_until {
            "QUEUED"
        } else if now < self.done_at {
            "PROCESSING"
        } else if matches!(self.fate, Fate::Fail(_)) {
            "FAILED"
        } else {
            "COMPLETED"
        }
    }

    /// Whether the result is gone at `now`: it is kept `retention` after the
    /// job finished (Segmind: 1 hour), then its id answers 404.
    fn expired(&self, now: Instant, retention: Duration) -> bool {
        now >= self.done_at + retention
    }
}

struct Inner {
    config: SimConfig,
    api_base: String,
    media_base: String,
    jobs: HashMap<String, SimJob>,
    injected: VecDeque<u16>,
    accept_then: VecDeque<u16>,
    media_injected: VecDeque<u16>,
    window: (Instant, u32),
    credits: Option<f64>,
    stats: SimStats,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // A poisoned lock only means a handler panicked mid-update; the counters
    // are still usable for a simulator.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator.
#[derive(Clone)]
pub struct SimHandle {
    pub api_addr: SocketAddr,
    pub media_addr: SocketAddr,
    shared: Shared,
}

impl SimHandle {
    /// The API origin, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.shared).stats.clone()
    }

    /// The next API calls answer these HTTP statuses, in order.
    pub fn inject(&self, statuses: &[u16]) {
        lock(&self.shared).injected.extend(statuses.iter().copied());
    }

    /// The next submissions are accepted (and billed), then answered with
    /// these HTTP statuses: the answer is lost, the request is not.
    pub fn inject_accept_then(&self, statuses: &[u16]) {
        lock(&self.shared)
            .accept_then
            .extend(statuses.iter().copied());
    }

    /// The next media (audio download) requests answer these HTTP statuses.
    pub fn inject_media(&self, statuses: &[u16]) {
        lock(&self.shared)
            .media_injected
            .extend(statuses.iter().copied());
    }

    /// Changes the accepted API key (to break or fix the "account").
    pub fn set_api_key(&self, key: &str) {
        lock(&self.shared).config.api_key = key.to_owned();
    }

    /// Changes the latency of jobs submitted from now on.
    pub fn set_latency(&self, mean: Duration, spread: Duration) {
        let mut inner = lock(&self.shared);
        inner.config.latency_mean = mean;
        inner.config.latency_spread = spread;
    }

    pub fn set_credits(&self, credits: Option<f64>) {
        lock(&self.shared).credits = credits;
    }
}

/// Starts the API on `api_addr` and the media host on `media_addr` (port 0
/// picks free ports) and serves them in background tasks.
pub async fn spawn(
    config: SimConfig,
    api_addr: SocketAddr,
    media_addr: SocketAddr,
) -> std::io::Result<SimHandle> {
    let api = TcpListener::bind(api_addr).await?;
    let media = TcpListener::bind(media_addr).await?;
    let (api_addr, media_addr) = (api.local_addr()?, media.local_addr()?);
    let shared: Shared = Arc::new(Mutex::new(Inner {
        api_base: format!("http://{api_addr}"),
        media_base: config
            .media_public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{media_addr}")),
        credits: config.credits,
        config,
        jobs: HashMap::new(),
        injected: VecDeque::new(),
        accept_then: VecDeque::new(),
        media_injected: VecDeque::new(),
        window: (Instant::now(), 0),
        stats: SimStats::default(),
    }));
    let api_router = Router::new()
        .route("/v2/{model}", post(submit_v2))
        .route("/v1/{model}", post(submit_v1))
        .route("/v2/requests/{id}/status", get(status))
        .route("/v1/requests/{id}", get(status))
        .route("/v2/requests/{id}", get(result))
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", post(faults))
        .with_state(shared.clone());
    let media_router = Router::new()
        .route("/media/{file}", get(media_file))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(api, api_router).await });
    tokio::spawn(async move { axum::serve(media, media_router).await });
    Ok(SimHandle {
        api_addr,
        media_addr,
        shared,
    })
}

fn api_json(inner: &Inner, status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(credits) = inner.credits
        && let Ok(v) = HeaderValue::from_str(&format!("{credits:.4}"))
    {
        response.headers_mut().insert("x-remaining-credits", v);
    }
    response
}

/// Authentication, injected faults and random faults, common to API calls.
fn gate(inner: &mut Inner, headers: &HeaderMap) -> Option<Response> {
    let key_ok = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == inner.config.api_key);
    inner.stats.api_calls += 1;
    if !key_ok {
        inner.stats.unauthorized += 1;
        return Some(api_json(
            inner,
            StatusCode::UNAUTHORIZED,
            json!({"error": "Invalid or missing API key"}),
        ));
    }
    if inner.config.rate_limit_scope == RateScope::AllCalls
        && let Some(r) = over_limit(inner)
    {
        return Some(r);
    }
    let injected = inner.injected.pop_front().or_else(|| {
        (inner.config.fault_rate > 0.0 && rand::rng().random_bool(inner.config.fault_rate.min(1.0)))
            .then(|| [500, 502, 504][rand::rng().random_range(0..3)])
    });
    let code = injected?;
    if code == 429 {
        inner.stats.faults_injected += 1;
        return Some(rate_limited(inner, Instant::now() + Duration::from_secs(1)));
    }
    Some(simulated_fault(inner, code, ""))
}

/// An injected fault's answer, counted.
fn simulated_fault(inner: &mut Inner, code: u16, note: &str) -> Response {
    inner.stats.faults_injected += 1;
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_json(
        inner,
        status,
        json!({"error": format!("simulated {code}{note}")}),
    )
}

fn rate_limited(inner: &mut Inner, reset: Instant) -> Response {
    inner.stats.rate_limited += 1;
    let wait = reset.saturating_duration_since(Instant::now());
    let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    let mut r = api_json(
        inner,
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "Rate limit exceeded"}),
    );
    if let Ok(v) = HeaderValue::from_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
        r.headers_mut().insert("x-rate-limit-reset-at-utc", v);
    }
    r
}

/// The model's parameter rules; `Err` is the 400 message.
fn validate(body: &Bytes, headers: &HeaderMap) -> Result<Submission, (StatusCode, String)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !is_json {
        return Err((
            StatusCode::NOT_ACCEPTABLE,
            "Content-Type must be application/json".into(),
        ));
    }
    let bad = |m: &str| Err((StatusCode::BAD_REQUEST, m.to_owned()));
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return bad("Request body must be a JSON object");
    };
    let text = match obj.get("text") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        _ => return bad("'text' is required and must be a non-empty string"),
    };
    match obj.get("temperature") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) => {}
        _ => return bad("'temperature' must be a number between 0 and 2"),
    }
    match obj.get("voice_1") {
        None => {}
        Some(Value::String(v)) if is_voice(v) => {}
        _ => return bad("'voice_1' must be one of the supported voices"),
    }
    let two_speakers = match obj.get("voice_2") {
        None | Some(Value::Null) => false,
        Some(Value::String(v)) if is_voice(v) => true,
        _ => return bad("'voice_2' must be null or one of the supported voices"),
    };
    let voice = obj
        .get("voice_1")
        .and_then(Value::as_str)
        .unwrap_or("Kore")
        .to_owned();
    Ok(Submission {
        text,
        two_speakers,
        voice,
    })
}

/// What a valid submission asks for.
struct Submission {
    text: String,
    two_speakers: bool,
    voice: String,
}

/// Counts a call against the account's per-minute window; `Some` is the 429.
fn over_limit(inner: &mut Inner) -> Option<Response> {
    let limit = inner.config.rate_limit_per_minute?;
    let now = Instant::now();
    let window = Duration::from_secs(60);
    if now.duration_since(inner.window.0) >= window {
        inner.window = (now, 0);
    }
    if inner.window.1 >= limit {
        let reset = inner.window.0 + window;
        return Some(rate_limited(inner, reset));
    }
    inner.window.1 += 1;
    None
}

/// Rate limit and credits of an accepted-looking submit.
fn admit(inner: &mut Inner) -> Option<Response> {
    if inner.config.rate_limit_scope == RateScope::Submits
        && let Some(r) = over_limit(inner)
    {
        inner.stats.submits_rejected += 1;
        return Some(r);
    }
    if let Some(credits) = inner.credits {
        if credits < inner.config.cost_per_job {
            inner.stats.submits_rejected += 1;
            return Some(api_json(
                inner,
                StatusCode::NOT_ACCEPTABLE,
                json!({"error": "Insufficient credits"}),
            ));
        }
        inner.credits = Some(credits - inner.config.cost_per_job);
    }
    None
}

/// Refusals that concern one request, by marker: the account works for others.
fn refuse_this_request(inner: &mut Inner, text: &str) -> Option<Response> {
    let (status, message) = if text.contains("[[sim:forbidden]]") {
        (
            StatusCode::FORBIDDEN,
            "Forbidden: this input is not permitted by the account's policy",
        )
    } else if text.contains("[[sim:expensive]]") {
        (
            StatusCode::NOT_ACCEPTABLE,
            "Insufficient credits for this request",
        )
    } else {
        return None;
    };
    inner.stats.submits_rejected += 1;
    Some(api_json(inner, status, json!({"error": message})))
}

/// The status every poll of a job with `[[sim:status-fault=N]]` answers.
fn marker_status_fault(text: &str) -> Option<u16> {
    let start = text.find("[[sim:status-fault=")? + "[[sim:status-fault=".len();
    let end = text[start..].find("]]")? + start;
    text[start..end].parse().ok()
}

/// The share of the audio a `[[sim:truncate=F]]` job keeps.
fn marker_truncate(text: &str) -> Option<f64> {
    let start = text.find("[[sim:truncate=")? + "[[sim:truncate=".len();
    let end = text[start..].find("]]")? + start;
    text[start..end].parse().ok()
}

fn marker_latency(text: &str) -> Option<Duration> {
    let start = text.find("[[sim:latency=")? + "[[sim:latency=".len();
    let end = text[start..].find("]]")? + start;
    text[start..end]
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("[[sim:") {
        out.push_str(&rest[..i]);
        match rest[i..].find("]]") {
            Some(j) => rest = &rest[i + j + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn first_word(text: &str) -> String {
    text.split_whitespace().next().unwrap_or("").to_owned()
}

fn new_job(config: &SimConfig, submission: Submission, first_of_its_text: bool) -> SimJob {
    let Submission {
        text,
        two_speakers,
        voice,
    } = submission;
    let now = Instant::now();
    let latency = marker_latency(&text).unwrap_or_else(|| {
        let mean = config.latency_mean.as_secs_f64()
            + config.latency_per_char.as_secs_f64() * strip_markers(&text).chars().count() as f64;
        let spread = config.latency_spread.as_secs_f64();
        let mut rng = rand::rng();
        let noise = match config.latency_dist {
            LatencyDist::Uniform if spread > 0.0 => rng.random_range(-spread..=spread),
            LatencyDist::Normal => {
                // Box–Muller.
                let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                spread * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
            LatencyDist::Uniform => 0.0,
        };
        Duration::from_secs_f64((mean + noise).max(0.05))
    });
    let fate = if text.contains("[[sim:rai]]") {
        Fate::Fail(
            "Content blocked: the input was flagged by RAI safety filters (PROHIBITED_CONTENT)"
                .into(),
        )
    } else if text.contains("[[sim:fail]]") {
        Fate::Fail(
            "Inference failed: the model returned no candidates (finishReason: OTHER)".into(),
        )
    } else if text.contains("[[sim:empty]]") {
        Fate::Empty
    } else if text.contains("[[sim:truncated]]")
        || (text.contains("[[sim:truncated-once]]") && first_of_its_text)
    {
        Fate::Truncated
    } else {
        Fate::Complete
    };
    let queue_until = now + config.queue_time.min(latency);
    let spoken = strip_markers(&text);
    let audio_seconds = match config.speech {
        model::SpeechModel::Words => None,
        model::SpeechModel::Realistic { cap } => {
            let kept = marker_truncate(&text).unwrap_or_else(|| {
                let mut rng = rand::rng();
                if config.truncation_rate > 0.0 && rng.random_bool(config.truncation_rate.min(1.0))
                {
                    rng.random_range(0.13..=0.46)
                } else {
                    1.0
                }
            });
            Some(model::audio_seconds(
                spoken.chars().count(),
                &voice,
                cap,
                kept,
            ))
        }
    };
    SimJob {
        status_fault: marker_status_fault(&text),
        audio_seconds,
        text: spoken,
        two_speakers,
        created: now,
        queue_until,
        done_at: now + latency,
        fate,
    }
}

async fn submit_v2(
    State(shared): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = accept_v2(&shared, model, headers, body);
    let delay = lock(&shared).config.submit_delay;
    if !delay.is_zero() {
        // The job is accepted (and billed) before the answer leaves: a client
        // that gives up meanwhile has paid without knowing its request id.
        tokio::time::sleep(delay).await;
    }
    response
}

fn accept_v2(shared: &Shared, model: String, headers: HeaderMap, body: Bytes) -> Response {
    let mut inner = lock(shared);
    if let Some(r) = gate(&mut inner, &headers) {
        return r;
    }
    if !inner.config.models.contains(&model) {
        inner.stats.submits_rejected += 1;
        return api_json(
            &inner,
            StatusCode::NOT_FOUND,
            json!({"error": format!("Model {model} not found")}),
        );
    }
    let submission = match validate(&body, &headers) {
        Ok(v) => v,
        Err((status, message)) => {
            inner.stats.submits_rejected += 1;
            return api_json(&inner, status, json!({"error": message}));
        }
    };
    if let Some(r) = refuse_this_request(&mut inner, &submission.text) {
        return r;
    }
    if let Some(r) = admit(&mut inner) {
        return r;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let text_key: String = strip_markers(&submission.text).chars().take(80).collect();
    let earlier = inner
        .stats
        .submits_by_text
        .get(&text_key)
        .copied()
        .unwrap_or(0);
    let job = new_job(&inner.config, submission, earlier == 0);
    *inner.stats.submits_by_text.entry(text_key).or_default() += 1;
    inner.jobs.insert(id.clone(), job);
    let now = Instant::now();
    let in_progress = inner.jobs.values().filter(|j| j.done_at > now).count() as u64;
    inner.stats.peak_in_progress = inner.stats.peak_in_progress.max(in_progress);
    inner.stats.submits_accepted += 1;
    inner
        .stats
        .requests
        .insert(id.clone(), RequestCounts::default());
    if let Some(code) = inner.accept_then.pop_front() {
        // Accepted and billed above; the answer is lost on the way back.
        return simulated_fault(&mut inner, code, " after accepting");
    }
    let base = if inner.config.foreign_urls {
        "http://foreign.invalid".to_owned()
    } else {
        inner.api_base.clone()
    };
    api_json(
        &inner,
        StatusCode::OK,
        json!({
            "request_id": id,
            "status": "QUEUED",
            "poll_url": format!("{base}/v1/requests/{id}"),
            "status_url": format!("{base}/v2/requests/{id}/status"),
            "response_url": format!("{base}/v2/requests/{id}"),
        }),
    )
}

async fn submit_v1(
    State(shared): State<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (job, use_espeak) = {
        let mut inner = lock(&shared);
        if let Some(r) = gate(&mut inner, &headers) {
            return r;
        }
        inner.stats.v1_calls += 1;
        if !inner.config.models.contains(&model) {
            return api_json(
                &inner,
                StatusCode::NOT_FOUND,
                json!({"error": format!("Model {model} not found")}),
            );
        }
        let submission = match validate(&body, &headers) {
            Ok(v) => v,
            Err((status, message)) => return api_json(&inner, status, json!({"error": message})),
        };
        if let Some(r) = admit(&mut inner) {
            return r;
        }
        (
            new_job(&inner.config, submission, true),
            inner.config.espeak,
        )
    };
    tokio::time::sleep_until(job.done_at).await;
    match job.fate {
        Fate::Fail(message) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": message})),
        )
            .into_response(),
        Fate::Empty => wav_response(speech::empty_wav()),
        Fate::Truncated => {
            wav_response(render_blocking(first_word(&job.text), false, use_espeak).await)
        }
        Fate::Complete => {
            let wav = render_blocking(job.text, job.two_speakers, use_espeak).await;
            wav_response(wav)
        }
    }
}

fn wav_response(wav: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "audio/wav")], wav).into_response()
}

/// What a finished job's audio is made of.
enum Sound {
    Silent,
    Text { text: String, two_speakers: bool },
    Seconds { seconds: f64, two_speakers: bool },
}

impl SimJob {
    /// The audio a COMPLETED job serves.
    fn sound(&self) -> Sound {
        match (&self.fate, self.audio_seconds) {
            (Fate::Empty | Fate::Fail(_), _) => Sound::Silent,
            (Fate::Truncated, None) => Sound::Text {
                text: first_word(&self.text),
                two_speakers: false,
            },
            (Fate::Truncated, Some(seconds)) => Sound::Seconds {
                seconds: seconds * 0.3,
                two_speakers: self.two_speakers,
            },
            (Fate::Complete, None) => Sound::Text {
                text: self.text.clone(),
                two_speakers: self.two_speakers,
            },
            (Fate::Complete, Some(seconds)) => Sound::Seconds {
                seconds,
                two_speakers: self.two_speakers,
            },
        }
    }
}

async fn render_sound(sound: Sound, espeak: bool) -> Vec<u8> {
    match sound {
        Sound::Silent => speech::empty_wav(),
        Sound::Text { text, two_speakers } => render_blocking(text, two_speakers, espeak).await,
        Sound::Seconds {
            seconds,
            two_speakers,
        } => tokio::task::spawn_blocking(move || speech::render_seconds(seconds, two_speakers))
            .await
            .unwrap_or_else(|_| speech::empty_wav()),
    }
}

async fn render_blocking(text: String, two_speakers: bool, espeak: bool) -> Vec<u8> {
    tokio::task::spawn_blocking(move || speech::render(&text, two_speakers, espeak))
        .await
        .unwrap_or_else(|_| speech::empty_wav())
}

/// Drops the result of `id` once it is past retention.
fn expire(inner: &mut Inner, id: &str) {
    let retention = inner.config.retention;
    let now = Instant::now();
    let expired = inner
        .jobs
        .get(id)
        .is_some_and(|j| j.expired(now, retention));
    if expired {
        inner.jobs.remove(id);
    }
}

fn metrics_json(job: &SimJob, inner: &Inner) -> Value {
    let queue = job.queue_until.duration_since(job.created).as_secs_f64();
    let total = job.done_at.duration_since(job.created).as_secs_f64();
    json!({
        "inference_time": ((total - queue) * 1000.0).round() / 1000.0,
        "queue_time": (queue * 1000.0).round() / 1000.0,
        "total_time": (total * 1000.0).round() / 1000.0,
        "cost": inner.config.cost_per_job,
        "remaining_credits": inner.credits,
    })
}

fn not_found(inner: &Inner, id: &str) -> Response {
    api_json(
        inner,
        StatusCode::NOT_FOUND,
        json!({"error": format!("Request {id} not found or expired")}),
    )
}

async fn status(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&shared);
    if let Some(r) = gate(&mut inner, &headers) {
        return r;
    }
    inner.stats.status_polls += 1;
    if let Some(c) = inner.stats.requests.get_mut(&id) {
        c.status_polls += 1;
    }
    expire(&mut inner, &id);
    let Some(job) = inner.jobs.get(&id) else {
        return not_found(&inner, &id);
    };
    if let Some(code) = job.status_fault {
        return simulated_fault(&mut inner, code, "");
    }
    let now = Instant::now();
    let state = job.state(now);
    let done_at = job.done_at;
    if matches!(state, "COMPLETED" | "FAILED")
        && let Some(c) = inner.stats.requests.get_mut(&id)
        && c.lag_ms.is_none()
    {
        c.lag_ms = Some(now.duration_since(done_at).as_millis() as u64);
    }
    let Some(job) = inner.jobs.get(&id) else {
        return not_found(&inner, &id);
    };
    let (code, body) = match (&job.fate, state) {
        (Fate::Fail(message), "FAILED") => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"request_id": id, "status": "FAILED", "error": message, "metrics": metrics_json(job, &inner)}),
        ),
        _ => (StatusCode::OK, json!({"request_id": id, "status": state})),
    };
    api_json(&inner, code, body)
}

async fn result(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (sound, mode, espeak, mut body) = {
        let mut inner = lock(&shared);
        if let Some(r) = gate(&mut inner, &headers) {
            return r;
        }
        inner.stats.result_fetches += 1;
        if let Some(c) = inner.stats.requests.get_mut(&id) {
            c.result_fetches += 1;
        }
        let media_base = inner.media_base.clone();
        expire(&mut inner, &id);
        let Some(job) = inner.jobs.get(&id) else {
            return not_found(&inner, &id);
        };
        let state = job.state(Instant::now());
        match (&job.fate, state) {
            (Fate::Fail(message), "FAILED") => {
                let body = json!({"request_id": id, "status": "FAILED", "error": message, "metrics": metrics_json(job, &inner), "output": null});
                return api_json(&inner, StatusCode::UNPROCESSABLE_ENTITY, body);
            }
            (_, "COMPLETED") => {}
            _ => {
                return api_json(
                    &inner,
                    StatusCode::OK,
                    json!({"request_id": id, "status": state, "output": null}),
                );
            }
        }
        let body = json!({
            "request_id": id, "status": "COMPLETED", "error": null,
            "metrics": metrics_json(job, &inner),
            "output": format!("{media_base}/media/{id}.wav"),
        });
        (
            job.sound(),
            inner.config.output_mode,
            inner.config.espeak,
            body,
        )
    };
    if mode != OutputMode::Url {
        let wav = render_sound(sound, espeak).await;
        let b64 = base64::engine::general_purpose::STANDARD.encode(wav);
        body["output"] = match mode {
            OutputMode::DataUri => Value::String(format!("data:audio/wav;base64,{b64}")),
            _ => Value::String(b64),
        };
    }
    let inner = lock(&shared);
    api_json(&inner, StatusCode::OK, body)
}

async fn media_file(
    State(shared): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = file.trim_end_matches(".wav").to_owned();
    let (sound, espeak) = {
        let mut inner = lock(&shared);
        inner.stats.media_fetches += 1;
        if headers.contains_key("x-api-key") {
            inner.stats.media_requests_with_api_key += 1;
        }
        if let Some(c) = inner.stats.requests.get_mut(&id) {
            c.media_fetches += 1;
        }
        if let Some(code) = inner.media_injected.pop_front() {
            inner.stats.faults_injected += 1;
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            return (status, "simulated media fault").into_response();
        }
        let espeak = inner.config.espeak;
        expire(&mut inner, &id);
        match inner.jobs.get(&id) {
            Some(job) if job.state(Instant::now()) == "COMPLETED" => (job.sound(), espeak),
            _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
        }
    };
    wav_response(render_sound(sound, espeak).await)
}

async fn stats(State(shared): State<Shared>) -> Response {
    axum::Json(lock(&shared).stats.clone()).into_response()
}

#[derive(Deserialize)]
struct FaultRequest {
    #[serde(default)]
    statuses: Vec<u16>,
    #[serde(default)]
    accept_then: Vec<u16>,
}

async fn faults(
    State(shared): State<Shared>,
    axum::Json(req): axum::Json<FaultRequest>,
) -> Response {
    let mut inner = lock(&shared);
    inner.injected.extend(req.statuses);
    inner.accept_then.extend(req.accept_then);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_at(created: Instant, queued: u64, latency: u64, fate: Fate) -> SimJob {
        SimJob {
            text: "t".into(),
            audio_seconds: None,
            status_fault: None,
            two_speakers: false,
            created,
            queue_until: created + Duration::from_millis(queued),
            done_at: created + Duration::from_millis(latency),
            fate,
        }
    }

    #[test]
    fn a_job_is_queued_then_processing_then_terminal() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let ok = job_at(t0, 100, 1_000, Fate::Complete);
        assert_eq!(ok.state(t0), "QUEUED");
        assert_eq!(ok.state(ms(99)), "QUEUED");
        assert_eq!(ok.state(ms(100)), "PROCESSING");
        assert_eq!(ok.state(ms(999)), "PROCESSING");
        assert_eq!(ok.state(ms(1_000)), "COMPLETED");
        let failed = job_at(t0, 100, 1_000, Fate::Fail("x".into()));
        assert_eq!(failed.state(ms(500)), "PROCESSING");
        assert_eq!(failed.state(ms(1_000)), "FAILED");
    }

    #[test]
    fn results_expire_exactly_one_retention_after_the_job_finished() {
        let t0 = Instant::now();
        let job = job_at(t0, 10, 50, Fate::Complete);
        let hour = Duration::from_secs(3600);
        assert!(!job.expired(t0 + Duration::from_millis(50), hour));
        assert!(!job.expired(t0 + Duration::from_millis(49) + hour, hour));
        assert!(job.expired(t0 + Duration::from_millis(50) + hour, hour));
        // Zero retention: gone the moment it is done.
        assert!(job.expired(t0 + Duration::from_millis(50), Duration::ZERO));
        assert!(!job.expired(t0 + Duration::from_millis(49), Duration::ZERO));
    }

    #[test]
    fn markers_are_stripped_and_parsed() {
        assert_eq!(strip_markers("Hi [[sim:rai]]there"), "Hi there");
        assert_eq!(
            marker_latency("x [[sim:latency=2.5]]"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(marker_latency("x"), None);
        assert_eq!(marker_status_fault("x [[sim:status-fault=502]]"), Some(502));
        assert_eq!(marker_status_fault("x"), None);
        assert_eq!(marker_truncate("x [[sim:truncate=0.25]]"), Some(0.25));
        assert_eq!(strip_markers("x [[sim:truncate=0.25]]"), "x ");
    }
}
