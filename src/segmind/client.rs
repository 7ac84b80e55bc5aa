//! The HTTP side of Segmind's v2 async flow: submit → poll the status URL →
//! fetch the result → download the audio. What the answers mean is
//! [`super::protocol`]'s business; retrying is [`super::retry`]'s.
//!
//! Invariants:
//! - The API key goes only to the configured API origin. Status and result
//!   URLs from the API are followed only when they are on that origin (else
//!   they are rebuilt from the base URL and the request id); the API client
//!   does not follow redirects; the audio is fetched by a separate client that
//!   never carries the key.
//! - The API is an untrusted upstream: media URLs and their redirects are
//!   fetched only under [`MediaPolicy`] (https, public addresses, checked
//!   again on each resolved address); every body is read with a cap
//!   ([`API_BODY_LIMIT`], a result's inline audio, [`ERROR_BODY_READ`] of an
//!   error's); a server's wait hint is clamped to `segmind.retry_max`.
//! - Each call has exactly one retry layer, [`super::retry::with_retry`]; the
//!   HTTP clients never retry.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};
use url::Url;

use super::budget::{Priority, RateBudget};
use super::error::SegmindError;
use super::media::MediaPolicy;
use super::poll::{self, Observation, PollContext, PollSchedule};
use super::protocol::{
    AudioSource, ResultMetrics, SubmitBody, Submitted, interpret_result_audio, interpret_status,
    parse_submitted, status_error, transport,
};
use super::retry::{CallCount, server_hint, with_retry};
use crate::config::{AmbiguousSubmits, RateScope, RetrySettings, SegmindSettings};
use crate::failure::{self, Call, Class};
use crate::job::{Flow, SpeechRequest};
use crate::metrics::Metrics;

const API_KEY_HEADER: &str = "x-api-key";
const REMAINING_CREDITS_HEADER: &str = "x-remaining-credits";
/// Most bytes of a submit or status answer (they are small JSON objects).
const API_BODY_LIMIT: u64 = 1 << 20;
/// Bytes of an error answer's body read (and the rest left unread): enough
/// for its message, whatever the server sends.
const ERROR_BODY_READ: u64 = 16 << 10;
/// The outcome of one synthesis at Segmind.
#[derive(Debug, Clone)]
pub struct Synthesis {
    pub request_id: String,
    pub audio: Bytes,
    /// The media server's Content-Type, or the data URI's type.
    pub content_type: Option<String>,
    pub inference_time_seconds: Option<f64>,
    /// Credits the job cost, from the result's `metrics.cost`.
    pub cost: Option<f64>,
}

/// A submitted job that a poll saw finished; all it holds until its result
/// is fetched.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Since submit: the last poll that saw it pending (if any), and the
    /// poll that saw it done.
    pending_at: Option<Duration>,
    seen_at: Duration,
}

/// Shared by every job: one connection pool per host, reused.
pub struct SegmindClient {
    api: reqwest::Client,
    media: reqwest::Client,
    base: Url,
    submit_url: Url,
    api_key: SecretString,
    retry: RetrySettings,
    schedule: Arc<dyn PollSchedule>,
    max_polls: u32,
    budget: RateBudget,
    rate_scope: RateScope,
    /// Bounds the API calls open at once, hence the connections.
    open_calls: tokio::sync::Semaphore,
    max_audio_bytes: u64,
    media_policy: Arc<MediaPolicy>,
    ambiguous_submits: AmbiguousSubmits,
    metrics: Metrics,
    /// The clock the polling schedule's observations are stamped with.
    started: Instant,
}

impl SegmindClient {
    pub fn new(
        settings: &SegmindSettings,
        api_key: SecretString,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let api = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            // A redirect could carry the key to another origin: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("tts-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let media_policy = Arc::new(MediaPolicy::new(&settings.media_allow_private));
        let media = reqwest::Client::builder()
            .timeout(settings.download_timeout)
            .connect_timeout(Duration::from_secs(10))
            // Each hop is checked like the first URL, and every name is
            // resolved to public addresses only (unless listed).
            .redirect(media_policy.redirect_policy())
            .dns_resolver(media_policy.resolver())
            // A proxy would resolve the host itself: the address check needs
            // a direct connection.
            .no_proxy()
            .user_agent(concat!("tts-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut submit_url = settings.base_url.clone();
        submit_url.set_path(&format!("v2/{}", settings.model));
        Ok(Self {
            api,
            media,
            base: settings.base_url.clone(),
            submit_url,
            api_key,
            retry: settings.retry,
            schedule: poll::from_settings(&settings.poll),
            max_polls: settings.poll.max_polls,
            budget: RateBudget::new(settings.rate_limit_per_minute, metrics.clone()),
            rate_scope: settings.rate_limit_scope,
            open_calls: tokio::sync::Semaphore::new(settings.max_concurrent_calls),
            max_audio_bytes: settings.max_audio_bytes,
            media_policy,
            ambiguous_submits: settings.ambiguous_submits,
            metrics,
            started: Instant::now(),
        })
    }

    /// Puts `gate` before every submission (see [`super::budget::Gate`]).
    pub fn with_gate(mut self, gate: Arc<dyn super::budget::Gate>) -> Self {
        self.budget.set_gate(gate);
        self
    }

    /// Shares the submission slots by lane and tenant weights (see
    /// [`RateBudget::with_shares`]).
    pub fn with_shares(
        mut self,
        lane_weights: Vec<u32>,
        party_weights: std::collections::BTreeMap<String, u32>,
    ) -> Self {
        self.budget.set_shares(lane_weights, party_weights);
        self
    }

    /// Replaces the polling schedule.
    pub fn with_schedule(mut self, schedule: Arc<dyn PollSchedule>) -> Self {
        self.schedule = schedule;
        self
    }

    /// Submits `speech`; `calls` counts the HTTP calls, retries included.
    /// (A plain fn returning the future: no wrapper state is added to what
    /// a job queued for a slot holds.)
    /// `flow` is the job's place in the budget's fair line.
    pub fn submit<'a>(
        &'a self,
        speech: &'a SpeechRequest,
        deadline: Instant,
        calls: &'a CallCount,
        flow: &'a Flow,
    ) -> impl Future<Output = Result<Submitted, SegmindError>> + Send + 'a {
        self.submit_as(Priority::Submit(flow), speech, deadline, calls)
    }

    async fn submit_as(
        &self,
        priority: Priority<'_>,
        speech: &SpeechRequest,
        deadline: Instant,
        calls: &CallCount,
    ) -> Result<Submitted, SegmindError> {
        let started = Instant::now();
        tokio::time::timeout_at(
            deadline,
            self.submit_call(priority, speech, deadline, calls),
        )
        .await
        .map_err(|_| SegmindError::Deadline {
            request_id: None,
            waited: started.elapsed(),
        })?
    }

    /// Follows a request submitted earlier (by this or another worker).
    pub fn resume(&self, request_id: &str) -> Submitted {
        let mut status_url = self.base.clone();
        status_url.set_path(&format!("v2/requests/{request_id}/status"));
        let mut response_url = self.base.clone();
        response_url.set_path(&format!("v2/requests/{request_id}"));
        Submitted {
            request_id: request_id.to_owned(),
            status_url,
            response_url,
        }
    }

    /// The polling schedule (its learning is shared with the fleet).
    pub fn schedule(&self) -> &Arc<dyn PollSchedule> {
        &self.schedule
    }

    /// The rate budget this client's calls go through.
    pub fn budget(&self) -> &RateBudget {
        &self.budget
    }

    /// Polls `job`, submitted at `submitted_at`, until Segmind reports it
    /// done, before `deadline` and within `segmind.max_polls_per_job` polls.
    pub async fn wait_until_done(
        &self,
        job: &Submitted,
        submitted_at: Instant,
        text_chars: usize,
        deadline: Instant,
        calls: &CallCount,
    ) -> Result<Done, SegmindError> {
        // Each poll's HTTP call is boxed: the waiting state, which every
        // waiting job keeps, is then a timer and a few numbers. The deadline
        // is checked before each wait instead of by a second timer; one
        // poll's call is bounded by the request timeout and its retries
        // never sleep past the deadline.
        let started = Instant::now();
        let mut polls = 0u32;
        let mut pending_at = None;
        loop {
            if polls >= self.max_polls {
                return Err(SegmindError::PollLimit {
                    request_id: job.request_id.clone(),
                    polls,
                });
            }
            let wait = self.schedule.next_delay(&PollContext {
                polls_done: polls,
                since_submit: submitted_at.elapsed(),
                text_chars,
            });
            if Instant::now() + wait >= deadline {
                return Err(SegmindError::Deadline {
                    request_id: Some(job.request_id.clone()),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(wait).await;
            polls += 1;
            let done =
                Box::pin(self.retrying(Call::Status, deadline, calls, || self.poll_status(job)))
                    .await?;
            let at = submitted_at.elapsed();
            if done {
                return Ok(Done {
                    pending_at,
                    seen_at: at,
                });
            }
            pending_at = Some(at);
        }
    }

    /// Fetches the result of a job `done` and its audio, before `deadline`;
    /// teaches the polling schedule the job's latency.
    pub async fn fetch_audio(
        &self,
        job: &Submitted,
        done: &Done,
        text_chars: usize,
        deadline: Instant,
        calls: &CallCount,
    ) -> Result<Synthesis, SegmindError> {
        let started = Instant::now();
        let result =
            tokio::time::timeout_at(deadline, self.fetch(job, done, text_chars, deadline, calls))
                .await
                .map_err(|_| SegmindError::Deadline {
                    request_id: Some(job.request_id.clone()),
                    waited: started.elapsed(),
                });
        let (audio, content_type, metrics) = result??;
        Ok(Synthesis {
            request_id: job.request_id.clone(),
            audio,
            content_type,
            inference_time_seconds: metrics.inference_time,
            cost: metrics.cost,
        })
    }

    /// Checks whether the account works again for the kind of call that
    /// failed, with one call that costs nothing: for a submission, a submit
    /// without text (the API checks the key and the model's permission, then
    /// answers 400 without running or billing anything); for a status or
    /// result call, the status of a request id that does not exist (404 means
    /// the key is accepted). `Err` says why it still fails: an answer
    /// [`failure::classify`] calls account-level, or no credits left in
    /// `x-remaining-credits`. Other errors (5xx, network) do not keep
    /// consumption paused: jobs meet and handle them on their own.
    pub async fn probe(&self, call: Call) -> Result<(), String> {
        let (call, request) = match call {
            Call::Submit => (
                Call::Submit,
                self.api
                    .post(self.submit_url.clone())
                    .json(&serde_json::json!({})),
            ),
            Call::Status | Call::Result | Call::Download => {
                let mut url = self.base.clone();
                url.set_path(&format!("v2/requests/{}/status", uuid::Uuid::new_v4()));
                (Call::Status, self.api.get(url))
            }
        };
        let (status, headers, body) = self
            // A probe is never withheld nor reserved: it is not paid.
            .send_api(call, Priority::Paid, request)
            .await
            .map_err(|e| e.to_string())?;
        if call == Call::Submit && status.is_success() {
            // The API is documented to refuse parameters it cannot use (400);
            // an accepted empty submission would be a billed request.
            tracing::error!(
                status = status.as_u16(),
                "the API accepted a submission without text as a probe; report this: probes of submissions assume a 400"
            );
        }
        if !status.is_success() {
            let err = status_error(call, status, &headers, &body);
            if failure::classify(&err, &[]).class == Class::Account {
                return Err(err.to_string());
            }
        }
        let credits = headers
            .get(REMAINING_CREDITS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        if credits.is_some_and(|c| c <= 0.0) {
            return Err("no credits left (x-remaining-credits)".into());
        }
        Ok(())
    }

    /// Fetches the result and the audio.
    async fn fetch(
        &self,
        job: &Submitted,
        done: &Done,
        text_chars: usize,
        deadline: Instant,
        calls: &CallCount,
    ) -> Result<(Bytes, Option<String>, ResultMetrics), SegmindError> {
        let (source, metrics) = self
            .retrying(Call::Result, deadline, calls, || self.fetch_result(job))
            .await?;
        self.learn(done, text_chars, &metrics);
        let (audio, content_type) = match source {
            AudioSource::Inline { bytes, mime } => {
                if bytes.len() as u64 > self.max_audio_bytes {
                    return Err(SegmindError::TooLarge {
                        limit: self.max_audio_bytes,
                    });
                }
                (bytes, mime)
            }
            AudioSource::Url(url) => {
                self.retrying(Call::Download, deadline, calls, || self.download(&url))
                    .await?
            }
        };
        Ok((audio, content_type, metrics))
    }

    /// Records a finished job's latency, cost and the balance: the schedule
    /// learns from Segmind's own timing when the result reports it, else from
    /// the midpoint of the last two polls (only when one saw it pending).
    fn learn(&self, done: &Done, text_chars: usize, metrics: &ResultMetrics) {
        let latency = metrics.latency().or_else(|| {
            done.pending_at
                .map(|p| (p + done.seen_at).as_secs_f64() / 2.0)
        });
        if let Some(latency) = latency.filter(|l| l.is_finite() && *l >= 0.0) {
            self.schedule.observe(&Observation {
                text_chars,
                latency: Duration::from_secs_f64(latency),
                finished_at: self.started.elapsed(),
            });
            let lag = done.seen_at.as_secs_f64() - latency;
            if lag >= 0.0 {
                self.metrics.poll_lag.observe(lag);
            }
        }
        if let Some(cost) = metrics.cost.filter(|c| c.is_finite() && *c > 0.0) {
            self.metrics.credits_spent.inc_by(cost);
        }
        if let Some(credits) = metrics.remaining_credits.filter(|c| c.is_finite()) {
            self.metrics.remaining_credits.set(credits);
        }
    }

    /// Runs one call under this client's retry policy (see [`with_retry`]).
    async fn retrying<T, F, Fut>(
        &self,
        call: Call,
        deadline: Instant,
        calls: &CallCount,
        attempt: F,
    ) -> Result<T, SegmindError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SegmindError>>,
    {
        with_retry(&self.retry, &self.metrics, call, deadline, calls, attempt).await
    }

    /// Sends an API request with the key and records its status.
    /// `submit_priority` is the budget priority of a submission.
    async fn send_api(
        &self,
        call: Call,
        submit_priority: Priority<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, Bytes), SegmindError> {
        match (call, self.rate_scope) {
            (Call::Submit, _) => self
                .budget
                .acquire(submit_priority)
                .await
                .map_err(SegmindError::Withheld)?,
            // A paid call is never withheld.
            (_, RateScope::All) => self.budget.acquire(Priority::Paid).await.unwrap_or(()),
            (_, RateScope::Submits) => {}
        }
        // An admitted submission's reservation against its tenant's cap is
        // given back unless the submission may have been paid: accepted,
        // or sent with its answer lost (a timeout, 502/504). Also when this
        // future is dropped before the POST.
        let mut reserved = match (call, submit_priority) {
            (Call::Submit, Priority::Submit(flow)) => Some(Reserved {
                budget: &self.budget,
                flow,
                keep: false,
            }),
            _ => None,
        };
        // The semaphore is never closed; a closed one would only mean no bound.
        let _open = self.open_calls.acquire().await.ok();
        let request = request.header(API_KEY_HEADER, self.api_key.expose_secret());
        let (client, request) = request.build_split();
        let request = request.map_err(|source| transport(call, source))?;
        let response = match self.execute(&client, call, request).await {
            Ok(response) => response,
            Err(e) => {
                if let Some(r) = reserved.as_mut() {
                    r.keep = e.ambiguous_submission();
                }
                return Err(e);
            }
        };
        let status = response.status();
        if let Some(r) = reserved.as_mut() {
            r.keep = status.is_success() || matches!(status.as_u16(), 502 | 504);
        }
        drop(reserved);
        let headers = response.headers().clone();
        if status == StatusCode::TOO_MANY_REQUESTS {
            // A server's hint is an upstream's word: a one-year reset (or
            // `Retry-After: 2^64-1`) must not freeze the replica's calls.
            let hint = server_hint(&headers, chrono::Utc::now()).map(|h| h.min(self.retry.max));
            self.budget.on_rate_limited(hint);
        } else {
            self.budget.on_success();
        }
        if let Some(credits) = headers
            .get(REMAINING_CREDITS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|c| c.is_finite())
        {
            debug!(remaining_credits = credits, "Segmind balance");
            self.metrics.remaining_credits.set(credits);
        }
        // A result may carry its audio inline, in base64.
        let limit = match call {
            Call::Result => self.max_audio_bytes.saturating_mul(4) / 3 + (64 << 10),
            _ => API_BODY_LIMIT,
        };
        let body = read_body(call, response, limit).await?;
        Ok((status, headers, body))
    }

    /// Sends `request` with `client` inside its HTTP client span (see
    /// [`http_span`]) and counts it. Boxed: callers take their budget and
    /// slot first, so queued calls hold no request future.
    async fn execute(
        &self,
        client: &reqwest::Client,
        call: Call,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, SegmindError> {
        // The span reads the method and URL only: the key is in no span.
        let span = http_span(call, &request);
        let response = self.record(
            call,
            client
                .execute(request)
                .boxed()
                .instrument(span.clone())
                .await,
        )?;
        span.record("http.response.status_code", response.status().as_u16());
        Ok(response)
    }

    fn record(
        &self,
        call: Call,
        result: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, SegmindError> {
        let status_label = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(_) => "error".to_owned(),
        };
        self.metrics
            .segmind_requests
            .with_label_values(&[call.as_str(), &status_label])
            .inc();
        result.map_err(|source| transport(call, source))
    }

    async fn submit_call(
        &self,
        priority: Priority<'_>,
        speech: &SpeechRequest,
        deadline: Instant,
        calls: &CallCount,
    ) -> Result<Submitted, SegmindError> {
        let prompt = speech.prompt();
        let body = SubmitBody {
            text: &prompt,
            temperature: speech.temperature,
            voice_1: speech.voice_1.name(),
            voice_2: speech.voice_2.map(|v| v.name()),
        };
        self.retrying(Call::Submit, deadline, calls, || async {
            let request = self.api.post(self.submit_url.clone()).json(&body);
            let answer = async {
                let (status, headers, bytes) = self.send_api(Call::Submit, priority, request).await?;
                if !status.is_success() {
                    return Err(status_error(Call::Submit, status, &headers, &bytes));
                }
                parse_submitted(&self.base, &bytes)
            }
            .await;
            match answer {
                Err(e) if e.ambiguous_submission() => {
                    // The API has no idempotency key: a retry may pay twice.
                    self.metrics.submit_ambiguous.inc();
                    tracing::warn!(error = %e, policy = ?self.ambiguous_submits, "a submission's answer was lost after it was sent; Segmind may have accepted it");
                    match self.ambiguous_submits {
                        AmbiguousSubmits::Retry => Err(e),
                        AmbiguousSubmits::Fail => Err(SegmindError::Unconfirmed {
                            cause: e.to_string(),
                        }),
                    }
                }
                other => other,
            }
        })
        .await
    }

    /// One status poll: `Ok(true)` when COMPLETED, `Ok(false)` while pending.
    async fn poll_status(&self, job: &Submitted) -> Result<bool, SegmindError> {
        let request = self.api.get(job.status_url.clone());
        let (status, headers, bytes) = self.send_api(Call::Status, Priority::Paid, request).await?;
        interpret_status(&job.request_id, status, &headers, &bytes)
    }

    /// Fetches the result of a COMPLETED job: its `output` and inference time.
    async fn fetch_result(
        &self,
        job: &Submitted,
    ) -> Result<(AudioSource, ResultMetrics), SegmindError> {
        let request = self.api.get(job.response_url.clone());
        let (status, headers, bytes) = self.send_api(Call::Result, Priority::Paid, request).await?;
        interpret_result_audio(
            &job.request_id,
            status,
            &headers,
            &bytes,
            self.max_audio_bytes,
        )
    }

    /// Downloads audio from the media host: no API key, size-capped, and
    /// only from where [`MediaPolicy`] allows.
    async fn download(&self, url: &Url) -> Result<(Bytes, Option<String>), SegmindError> {
        self.media_policy
            .check(url)
            .map_err(|reason| SegmindError::MediaRefused { reason })?;
        let request = self
            .media
            .get(url.clone())
            .build()
            .map_err(|source| transport(Call::Download, source))?;
        let response = self.execute(&self.media, Call::Download, request).await?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = read_head(response, ERROR_BODY_READ).await;
            return Err(status_error(Call::Download, status, &headers, &body));
        }
        let limit = self.max_audio_bytes;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let audio = read_capped(Call::Download, response, limit)
            .await?
            .ok_or(SegmindError::TooLarge { limit })?;
        Ok((audio, content_type))
    }
}

/// An API answer's body: a success's whole, at most `limit` bytes; an
/// error's first [`ERROR_BODY_READ`] bytes. Built by a plain function, so
/// the caller's future holds a pointer, not the read's state.
fn read_body(
    call: Call,
    response: reqwest::Response,
    limit: u64,
) -> futures_util::future::BoxFuture<'static, Result<Bytes, SegmindError>> {
    if response.status().is_success() {
        async move {
            read_capped(call, response, limit)
                .await?
                .ok_or(SegmindError::AnswerTooLarge { call, limit })
        }
        .boxed()
    } else {
        read_head(response, ERROR_BODY_READ).map(Ok).boxed()
    }
}

/// `response`'s body when it has at most `limit` bytes, else `None` (what
/// is past the limit is never read): one buffer, sized once when the length
/// is announced.
async fn read_capped(
    call: Call,
    response: reqwest::Response,
    limit: u64,
) -> Result<Option<Bytes>, SegmindError> {
    let announced = response.content_length();
    if announced.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(0) as usize);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| transport(call, source))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// At most the first `limit` bytes of `response`'s body (an error's
/// message); a body that breaks off is read as far as it came.
async fn read_head(response: reqwest::Response, limit: u64) -> Bytes {
    let mut buf = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = (limit as usize).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() as u64 >= limit {
            break;
        }
    }
    buf.freeze()
}

/// A client span for one HTTP call, with OpenTelemetry's HTTP conventions:
/// method, server, path (never the query, which may carry a signature) and,
/// once answered, the status. Named after the stage: `segmind.submit`,
/// `segmind.poll`, `segmind.result`, `segmind.download`.
fn http_span(call: Call, request: &reqwest::Request) -> tracing::Span {
    let name = match call {
        Call::Submit => "segmind.submit",
        Call::Status => "segmind.poll",
        Call::Result => "segmind.result",
        Call::Download => "segmind.download",
    };
    let url = request.url();
    info_span!(
        "segmind.http",
        "otel.name" = name,
        "otel.kind" = "client",
        "http.request.method" = request.method().as_str(),
        "server.address" = url.host_str().unwrap_or_default(),
        "server.port" = url.port_or_known_default().unwrap_or_default(),
        "url.path" = url.path(),
        "http.response.status_code" = tracing::field::Empty,
    )
}

/// A submission's reservation against its tenant's cap, given back when
/// dropped unless `keep` (see `send_api`).
struct Reserved<'a> {
    budget: &'a RateBudget,
    flow: &'a Flow,
    keep: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.budget.release(self.flow);
        }
    }
}
