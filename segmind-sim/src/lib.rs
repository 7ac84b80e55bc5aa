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
//! `[[sim:rai]]` a content/RAI block, `[[sim:fail]]` an inference failure
//! (`[[sim:fail-once]]`: only on the first submission of that text),
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
//! total and per request id), `GET /_sim/truth/{id}` (where each sentence
//! is in that request's audio, with the realistic speech model: the ground
//! truth for sentence alignment; [`SimHandle::truth`]), `POST /_sim/faults`
//! (`{"statuses":[429,502]}`: the next API calls answer these codes;
//! `{"accept_then":[504]}`: the next submissions are accepted, and billed,
//! and then answered with these codes, as a gateway that times out after
//! the API took the request).

mod config;
mod gate;
mod job;
pub mod model;
pub mod mp3;
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
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::{Container, LatencyDist, OutputMode, RateScope, SimConfig};
use gate::{admit, api_json, gate, refuse_this_request, simulated_fault};
use job::{Fate, SimJob, Sound, first_word, new_job, strip_markers, validate};

/// Call counts of one request id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub status_polls: u32,
    pub result_fetches: u32,
    pub media_fetches: u32,
    /// Milliseconds from the job finishing to the first status poll that
    /// reported it finished: the client's polling lag.
    pub lag_ms: Option<u64>,
    /// Milliseconds from its submission to its end: how long Segmind
    /// worked on it.
    #[serde(default)]
    pub latency_ms: Option<u64>,
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

pub(crate) struct Inner {
    pub(crate) config: SimConfig,
    pub(crate) api_base: String,
    pub(crate) media_base: String,
    pub(crate) jobs: HashMap<String, SimJob>,
    pub(crate) injected: VecDeque<u16>,
    pub(crate) accept_then: VecDeque<u16>,
    pub(crate) media_injected: VecDeque<u16>,
    /// Answers the next API calls give as they are (a hostile upstream).
    pub(crate) raw_answers: VecDeque<RawAnswer>,
    /// Bytes (and Content-Type) the next media downloads serve instead of
    /// the job's audio.
    pub(crate) media_bodies: VecDeque<(Vec<u8>, String)>,
    /// When set, the media host redirects every download there.
    pub(crate) media_redirect: Option<String>,
    pub(crate) window: (Instant, u32),
    pub(crate) credits: Option<f64>,
    pub(crate) stats: SimStats,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // A poisoned lock only means a handler panicked mid-update; the counters
    // are still usable for a simulator.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// An API answer given as it is, whatever the request.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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

    /// The next API calls (after the key check) answer these, as they are:
    /// a hostile or broken upstream (absurd headers, huge bodies).
    pub fn inject_raw(&self, answers: Vec<RawAnswer>) {
        lock(&self.shared).raw_answers.extend(answers);
    }

    /// The next media downloads serve these bytes, with this Content-Type,
    /// instead of the job's audio (a hostile media host).
    pub fn serve_media(&self, body: Vec<u8>, content_type: &str) {
        lock(&self.shared)
            .media_bodies
            .push_back((body, content_type.to_owned()));
    }

    /// From now on the media host answers every download with a 302 to
    /// `{base}/media/{file}` (`None`: serves them again).
    pub fn redirect_media(&self, base: Option<String>) {
        lock(&self.shared).media_redirect = base;
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

    /// Where each sentence of request `id` is in the audio it serves (see
    /// [`speech::Truth`]): `None` for an unknown or expired id, or when the
    /// realistic speech model did not speak it.
    pub fn truth(&self, id: &str) -> Option<speech::Truth> {
        lock(&self.shared).jobs.get(id).and_then(SimJob::truth)
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
        raw_answers: VecDeque::new(),
        media_bodies: VecDeque::new(),
        media_redirect: None,
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
        .route("/_sim/truth/{id}", get(truth))
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
    let latency_ms = Some(job.done_at.duration_since(job.created).as_millis() as u64);
    inner.jobs.insert(id.clone(), job);
    let now = Instant::now();
    let in_progress = inner.jobs.values().filter(|j| j.done_at > now).count() as u64;
    inner.stats.peak_in_progress = inner.stats.peak_in_progress.max(in_progress);
    inner.stats.submits_accepted += 1;
    inner.stats.requests.insert(
        id.clone(),
        RequestCounts {
            latency_ms,
            ..RequestCounts::default()
        },
    );
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

async fn render_sound(sound: Sound, espeak: bool) -> Vec<u8> {
    match sound {
        Sound::Silent => speech::empty_wav(),
        Sound::Text { text, two_speakers } => render_blocking(text, two_speakers, espeak).await,
        Sound::Speech {
            text,
            spoken,
            served,
            two_speakers,
            seed,
        } => tokio::task::spawn_blocking(move || {
            speech::render_speech(&text, spoken, served, two_speakers, seed).0
        })
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
            // Signed like a CDN's URL: the query must never be logged.
            "output": format!(
                "{media_base}/media/{id}.{}?Expires=3600&Signature=sim-{}",
                inner.config.container.extension(),
                media_signature(&id)
            ),
        });
        (
            job.sound(),
            inner.config.output_mode,
            (inner.config.espeak, inner.config.container),
            body,
        )
    };
    let (espeak, container) = espeak;
    if mode != OutputMode::Url {
        let audio = contained(render_sound(sound, espeak).await, container).await;
        let b64 = base64::engine::general_purpose::STANDARD.encode(audio);
        body["output"] = match mode {
            OutputMode::DataUri => {
                Value::String(format!("data:{};base64,{b64}", container.content_type()))
            }
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
    let id = file
        .trim_end_matches(".wav")
        .trim_end_matches(".mp3")
        .to_owned();
    let (sound, espeak, container) = {
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
        if let Some(base) = &inner.media_redirect {
            let to = format!("{base}/media/{file}");
            return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
        }
        if let Some((body, content_type)) = inner.media_bodies.pop_front() {
            return ([(header::CONTENT_TYPE, content_type)], body).into_response();
        }
        let espeak = inner.config.espeak;
        let container = inner.config.container;
        expire(&mut inner, &id);
        match inner.jobs.get(&id) {
            Some(job) if job.state(Instant::now()) == "COMPLETED" => {
                (job.sound(), espeak, container)
            }
            _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
        }
    };
    let audio = contained(render_sound(sound, espeak).await, container).await;
    ([(header::CONTENT_TYPE, container.content_type())], audio).into_response()
}

/// The (fake) signature of a media URL: what a leak of the query would show.
pub fn media_signature(id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// `wav` in the configured container.
async fn contained(wav: Vec<u8>, container: Container) -> Vec<u8> {
    match container {
        Container::Wav => wav,
        Container::Mp3 => tokio::task::spawn_blocking(move || mp3::from_wav(&wav))
            .await
            .ok()
            .flatten()
            .unwrap_or_default(),
    }
}

async fn stats(State(shared): State<Shared>) -> Response {
    axum::Json(lock(&shared).stats.clone()).into_response()
}

/// `GET /_sim/truth/{id}`: [`SimHandle::truth`] as JSON
/// (`{"style":null,"sentences":[{"chars":[s,e],"text":…,"start_ms":…,"end_ms":…}]}`).
async fn truth(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let inner = lock(&shared);
    match inner.jobs.get(&id) {
        None => (
            StatusCode::NOT_FOUND,
            format!("Request {id} not found or expired"),
        )
            .into_response(),
        Some(job) => match job.truth() {
            Some(truth) => axum::Json(truth).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                "no sentence timing: only the realistic speech model records it",
            )
                .into_response(),
        },
    }
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
