//! Client of Segmind's serverless API, v2 async flow:
//! submit → poll the status URL → fetch the result → download the audio.
//!
//! Invariants:
//! - The API key goes only to the configured API origin. Status and result
//!   URLs from the API are followed only when they are on that origin (else
//!   they are rebuilt from the base URL and the request id); the API client
//!   does not follow redirects; the audio is fetched by a separate client that
//!   never carries the key.
//! - Each call has exactly one retry layer (here); the HTTP clients never retry.
//! - A status body announcing a terminal state (COMPLETED / FAILED) is an
//!   answer whatever the HTTP code: Segmind serves FAILED as 422.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

use crate::config::{RetrySettings, SegmindSettings};
use crate::failure::{Class, classify_segmind};
use crate::job::Speech;
use crate::metrics::Metrics;
use crate::poll::{ExponentialPoll, PollSchedule};
use crate::retry::{backoff_delay, server_hint};

const API_KEY_HEADER: &str = "x-api-key";
const REMAINING_CREDITS_HEADER: &str = "x-remaining-credits";
/// How much of an error body is kept for messages.
const ERROR_BODY_LIMIT: usize = 512;

/// Which call of the flow an error or metric belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Submit,
    Status,
    Result,
    Download,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Submit => "submit",
            Endpoint::Status => "status",
            Endpoint::Result => "result",
            Endpoint::Download => "download",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SegmindError {
    #[error("{endpoint} call answered HTTP {status}: {body}")]
    Status {
        endpoint: Endpoint,
        status: u16,
        body: String,
        /// The server's requested wait (Retry-After / rate-limit reset).
        retry_after: Option<Duration>,
    },
    #[error("{endpoint} call failed: {source}")]
    Transport {
        endpoint: Endpoint,
        timeout: bool,
        #[source]
        source: reqwest::Error,
    },
    #[error("{endpoint} answer breaks the protocol: {detail}")]
    Protocol { endpoint: Endpoint, detail: String },
    #[error("Segmind request {request_id} FAILED: {message}")]
    JobFailed {
        request_id: String,
        message: String,
        http_status: Option<u16>,
    },
    #[error("no result after {waited:?} (Segmind request {request_id:?}); the job deadline passed")]
    Deadline {
        request_id: Option<String>,
        waited: Duration,
    },
    #[error("the audio is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
}

impl SegmindError {
    fn retry_hint(&self) -> Option<Duration> {
        match self {
            SegmindError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Label for `tts_retries_total{reason}`.
    fn retry_reason(&self) -> &'static str {
        match self {
            SegmindError::Status { status: 429, .. } => "429",
            SegmindError::Status { .. } => "5xx",
            _ => "network",
        }
    }
}

/// The outcome of one synthesis at Segmind.
#[derive(Debug, Clone)]
pub struct Synthesis {
    pub request_id: String,
    pub audio: Bytes,
    /// The media server's Content-Type, or the data URI's type.
    pub content_type: Option<String>,
    pub inference_time_seconds: Option<f64>,
}

/// A submission accepted by Segmind, and where to follow it.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub request_id: String,
    status_url: Url,
    response_url: Url,
}

/// What probing the account said.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The key is accepted (and credits, when reported, are left).
    Healthy,
    /// Still failing, with the error to report.
    Failing(String),
}

/// The body POSTed to `/v2/{model}`.
#[derive(Serialize)]
struct SubmitBody<'a> {
    text: &'a str,
    temperature: f64,
    voice_1: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    voice_2: Option<&'static str>,
}

#[derive(Deserialize)]
struct SubmitResponse {
    request_id: Option<String>,
    status_url: Option<String>,
    response_url: Option<String>,
}

/// What a status or result body says, whatever else it holds.
#[derive(Deserialize)]
struct StatusBody {
    status: Option<String>,
    error: Option<Value>,
    output: Option<Value>,
    metrics: Option<Value>,
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
    max_audio_bytes: u64,
    block_patterns: Vec<String>,
    metrics: Metrics,
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
        let media = reqwest::Client::builder()
            .timeout(settings.download_timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(5))
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
            schedule: Arc::new(ExponentialPoll::new(settings.poll)),
            max_audio_bytes: settings.max_audio_bytes,
            block_patterns: settings.content_blocked_patterns.clone(),
            metrics,
        })
    }

    /// Replaces the polling schedule.
    pub fn with_schedule(mut self, schedule: Arc<dyn PollSchedule>) -> Self {
        self.schedule = schedule;
        self
    }

    /// Submits `speech`; `calls` counts the HTTP calls, retries included.
    pub async fn submit(
        &self,
        speech: &Speech,
        deadline: Instant,
        calls: &mut u32,
    ) -> Result<Submitted, SegmindError> {
        let started = Instant::now();
        tokio::time::timeout_at(deadline, self.submit_call(speech, deadline, calls))
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

    /// Polls `job` until it is done, fetches the result and the audio, all
    /// before `deadline`.
    pub async fn wait_for_audio(
        &self,
        job: &Submitted,
        deadline: Instant,
        calls: &mut u32,
    ) -> Result<Synthesis, SegmindError> {
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, self.finish(job, started, deadline, calls))
            .await
            .map_err(|_| SegmindError::Deadline {
                request_id: Some(job.request_id.clone()),
                waited: started.elapsed(),
            });
        let (audio, content_type, inference_time_seconds) = result??;
        Ok(Synthesis {
            request_id: job.request_id.clone(),
            audio,
            content_type,
            inference_time_seconds,
        })
    }

    /// Checks whether the account works again, with one cheap call: the
    /// status of a request id that does not exist. 404 means the key is
    /// accepted; `x-remaining-credits`, when sent, must be positive.
    pub async fn probe(&self) -> Probe {
        let mut url = self.base.clone();
        url.set_path(&format!("v2/requests/{}/status", uuid::Uuid::new_v4()));
        match self.send_api(Endpoint::Status, self.api.get(url)).await {
            Ok((status, headers, body)) => {
                let credits = headers
                    .get(REMAINING_CREDITS_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok());
                match status.as_u16() {
                    401 | 403 | 406 => Probe::Failing(
                        status_error(Endpoint::Status, status, &headers, &body).to_string(),
                    ),
                    _ if credits.is_some_and(|c| c <= 0.0) => {
                        Probe::Failing("no credits left (x-remaining-credits)".into())
                    }
                    _ => Probe::Healthy,
                }
            }
            Err(e) => Probe::Failing(e.to_string()),
        }
    }

    /// Polls until the job is done, fetches the result and the audio.
    async fn finish(
        &self,
        job: &Submitted,
        submitted_at: Instant,
        deadline: Instant,
        calls: &mut u32,
    ) -> Result<(Bytes, Option<String>, Option<f64>), SegmindError> {
        let mut polls = 0u32;
        loop {
            let wait = self.schedule.next_delay(polls, submitted_at.elapsed());
            tokio::time::sleep(wait).await;
            polls += 1;
            let done = self
                .with_retry(Endpoint::Status, deadline, calls, || self.poll_status(job))
                .await?;
            if done {
                break;
            }
        }
        let (output, inference_time) = self
            .with_retry(Endpoint::Result, deadline, calls, || self.fetch_result(job))
            .await?;
        let (audio, content_type) = match audio_source(&output)? {
            AudioSource::Inline { bytes, mime } => {
                if bytes.len() as u64 > self.max_audio_bytes {
                    return Err(SegmindError::TooLarge {
                        limit: self.max_audio_bytes,
                    });
                }
                (bytes, mime)
            }
            AudioSource::Url(url) => {
                self.with_retry(Endpoint::Download, deadline, calls, || self.download(&url))
                    .await?
            }
        };
        Ok((audio, content_type, inference_time))
    }

    /// Runs `call` with backoff on transient errors, at most `retry.attempts`
    /// times and never sleeping past `deadline`.
    async fn with_retry<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        deadline: Instant,
        calls: &mut u32,
        mut call: F,
    ) -> Result<T, SegmindError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SegmindError>>,
    {
        let mut retry = 0u32;
        loop {
            *calls += 1;
            let err = match call().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let transient = classify_segmind(&err, &self.block_patterns).class == Class::Transient;
            if !transient || retry + 1 >= self.retry.attempts {
                return Err(err);
            }
            let delay = backoff_delay(&self.retry, retry, err.retry_hint(), &mut rand::rng());
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            self.metrics
                .retries
                .with_label_values(&[err.retry_reason()])
                .inc();
            warn!(%endpoint, retry = retry + 1, delay_ms = delay.as_millis() as u64, error = %err, "retrying Segmind call");
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// Sends an API request with the key and records its status.
    async fn send_api(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, Bytes), SegmindError> {
        let request = request.header(API_KEY_HEADER, self.api_key.expose_secret());
        let response = self.record(endpoint, request.send().await)?;
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(credits) = headers
            .get(REMAINING_CREDITS_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            debug!(remaining_credits = credits, "Segmind balance");
        }
        let body = response
            .bytes()
            .await
            .map_err(|source| transport(endpoint, source))?;
        Ok((status, headers, body))
    }

    fn record(
        &self,
        endpoint: Endpoint,
        result: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, SegmindError> {
        let status_label = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(_) => "error".to_owned(),
        };
        self.metrics
            .segmind_requests
            .with_label_values(&[endpoint.as_str(), &status_label])
            .inc();
        result.map_err(|source| transport(endpoint, source))
    }

    async fn submit_call(
        &self,
        speech: &Speech,
        deadline: Instant,
        calls: &mut u32,
    ) -> Result<Submitted, SegmindError> {
        let body = SubmitBody {
            text: &speech.text,
            temperature: speech.temperature,
            voice_1: speech.voice_1.name(),
            voice_2: speech.voice_2.map(|v| v.name()),
        };
        self.with_retry(Endpoint::Submit, deadline, calls, || async {
            let request = self.api.post(self.submit_url.clone()).json(&body);
            let (status, headers, bytes) = self.send_api(Endpoint::Submit, request).await?;
            if !status.is_success() {
                return Err(status_error(Endpoint::Submit, status, &headers, &bytes));
            }
            self.parse_submitted(&bytes)
        })
        .instrument(info_span!("segmind.submit"))
        .await
    }

    fn parse_submitted(&self, body: &[u8]) -> Result<Submitted, SegmindError> {
        let protocol = |detail: String| SegmindError::Protocol {
            endpoint: Endpoint::Submit,
            detail,
        };
        let parsed: SubmitResponse = serde_json::from_slice(body)
            .map_err(|e| protocol(format!("the body is not the expected JSON ({e})")))?;
        let (Some(request_id), Some(status_url), Some(response_url)) =
            (parsed.request_id, parsed.status_url, parsed.response_url)
        else {
            return Err(protocol(
                "a 2xx answer must carry request_id, status_url and response_url".into(),
            ));
        };
        let id_ok = !request_id.is_empty()
            && request_id.len() <= 128
            && request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(protocol(format!("unusable request_id {request_id:?}")));
        }
        let status_url =
            self.same_origin_or(&status_url, &format!("v2/requests/{request_id}/status"));
        let response_url = self.same_origin_or(&response_url, &format!("v2/requests/{request_id}"));
        Ok(Submitted {
            request_id,
            status_url,
            response_url,
        })
    }

    /// `candidate` if it is on the API origin, else `{base}/{fallback_path}`.
    fn same_origin_or(&self, candidate: &str, fallback_path: &str) -> Url {
        match Url::parse(candidate) {
            Ok(url) if url.origin() == self.base.origin() => url,
            _ => {
                warn!(
                    url = candidate,
                    "Segmind returned a URL off the API origin; building it from the base URL instead"
                );
                let mut url = self.base.clone();
                url.set_path(fallback_path);
                url
            }
        }
    }

    /// One status poll: `Ok(true)` when COMPLETED, `Ok(false)` while pending.
    async fn poll_status(&self, job: &Submitted) -> Result<bool, SegmindError> {
        let request = self.api.get(job.status_url.clone());
        let (status, headers, bytes) = self.send_api(Endpoint::Status, request).await?;
        interpret_status(&job.request_id, status, &headers, &bytes)
    }

    /// Fetches the result of a COMPLETED job: its `output` and inference time.
    async fn fetch_result(&self, job: &Submitted) -> Result<(Value, Option<f64>), SegmindError> {
        let request = self.api.get(job.response_url.clone());
        let (status, headers, bytes) = self.send_api(Endpoint::Result, request).await?;
        interpret_result(&job.request_id, status, &headers, &bytes)
    }

    /// Downloads audio from the media host: no API key, size-capped.
    async fn download(&self, url: &Url) -> Result<(Bytes, Option<String>), SegmindError> {
        let response = self.record(Endpoint::Download, self.media.get(url.clone()).send().await)?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            return Err(status_error(Endpoint::Download, status, &headers, &body));
        }
        let limit = self.max_audio_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(SegmindError::TooLarge { limit });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut buf = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| transport(Endpoint::Download, source))?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(SegmindError::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok((buf.freeze(), content_type))
    }
}

fn transport(endpoint: Endpoint, source: reqwest::Error) -> SegmindError {
    SegmindError::Transport {
        endpoint,
        timeout: source.is_timeout(),
        source,
    }
}

fn status_error(
    endpoint: Endpoint,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> SegmindError {
    let text = String::from_utf8_lossy(body);
    let mut body: String = text.chars().take(ERROR_BODY_LIMIT).collect();
    if text.chars().count() > ERROR_BODY_LIMIT {
        body.push('…');
    }
    SegmindError::Status {
        endpoint,
        status: status.as_u16(),
        body,
        retry_after: server_hint(headers, chrono::Utc::now()),
    }
}

/// What a status answer means: `Ok(true)` COMPLETED, `Ok(false)` still
/// pending. A body announcing a terminal state is an answer whatever the HTTP
/// code (FAILED comes as 422); any other non-2xx is an error of the call.
fn interpret_status(
    request_id: &str,
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<bool, SegmindError> {
    let body: Option<StatusBody> = serde_json::from_slice(bytes).ok();
    match body.as_ref().and_then(|b| b.status.as_deref()) {
        Some("COMPLETED") => Ok(true),
        Some("FAILED") => Err(job_failed(request_id, body.as_ref(), status)),
        _ if !status.is_success() => Err(status_error(Endpoint::Status, status, headers, bytes)),
        Some(_) => Ok(false), // QUEUED, PROCESSING, or a state we do not know yet
        None => Err(SegmindError::Protocol {
            endpoint: Endpoint::Status,
            detail: "a 2xx status answer without a status field".into(),
        }),
    }
}

/// What a result answer means: the `output` and the reported inference time.
fn interpret_result(
    request_id: &str,
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<(Value, Option<f64>), SegmindError> {
    let body: Option<StatusBody> = serde_json::from_slice(bytes).ok();
    match body {
        Some(b) if b.status.as_deref() == Some("FAILED") => {
            Err(job_failed(request_id, Some(&b), status))
        }
        _ if !status.is_success() => Err(status_error(Endpoint::Result, status, headers, bytes)),
        Some(StatusBody {
            output: Some(output),
            metrics,
            ..
        }) if !output.is_null() => {
            let inference = metrics
                .as_ref()
                .and_then(|m| m.get("inference_time"))
                .and_then(number);
            Ok((output, inference))
        }
        _ => Err(SegmindError::Protocol {
            endpoint: Endpoint::Result,
            detail: "a completed result without output".into(),
        }),
    }
}

fn job_failed(request_id: &str, body: Option<&StatusBody>, status: StatusCode) -> SegmindError {
    let message = match body.and_then(|b| b.error.as_ref()) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Null) | None => "the job FAILED without an error message".into(),
        Some(other) => other.to_string(),
    };
    SegmindError::JobFailed {
        request_id: request_id.to_owned(),
        message,
        http_status: Some(status.as_u16()),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Where a result's audio is.
#[derive(Debug, PartialEq)]
enum AudioSource {
    Url(Url),
    Inline { bytes: Bytes, mime: Option<String> },
}

/// Finds the audio in a result's `output`: a media URL (likely), a data URI or
/// bare base64; possibly wrapped in a list or an object.
fn audio_source(output: &Value) -> Result<AudioSource, SegmindError> {
    let protocol = |detail: String| SegmindError::Protocol {
        endpoint: Endpoint::Result,
        detail,
    };
    match output {
        Value::String(s) => audio_source_str(s.trim()).ok_or_else(|| {
            let head: String = s.chars().take(40).collect();
            protocol(format!(
                "output is neither a URL, a data URI nor base64 ({head:?}…)"
            ))
        }),
        Value::Array(items) => items
            .first()
            .ok_or_else(|| protocol("output is an empty list".into()))
            .and_then(audio_source),
        Value::Object(map) => ["url", "audio_url", "audio", "output", "data"]
            .iter()
            .find_map(|k| map.get(*k))
            .ok_or_else(|| protocol("output object has no url/audio field".into()))
            .and_then(audio_source),
        other => Err(protocol(format!("output of unexpected type: {other}"))),
    }
}

fn audio_source_str(s: &str) -> Option<AudioSource> {
    if s.starts_with("https://") || s.starts_with("http://") {
        return Url::parse(s).ok().map(AudioSource::Url);
    }
    if let Some(rest) = s.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let mime = meta
            .split(';')
            .next()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        if !meta.ends_with(";base64") {
            return None;
        }
        return decode_base64(data).map(|bytes| AudioSource::Inline { bytes, mime });
    }
    // Bare base64 of some length; short strings are more likely garbage.
    if s.len() >= 16 {
        return decode_base64(s).map(|bytes| AudioSource::Inline { bytes, mime: None });
    }
    None
}

fn decode_base64(data: &str) -> Option<Bytes> {
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(data.trim()).ok())
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_audio_in_every_plausible_output_shape() {
        let url = AudioSource::Url(Url::parse("https://cdn.segmind.com/a.wav").unwrap());
        assert_eq!(
            audio_source(&json!("https://cdn.segmind.com/a.wav")).unwrap(),
            url
        );
        assert_eq!(
            audio_source(&json!(["https://cdn.segmind.com/a.wav"])).unwrap(),
            url
        );
        assert_eq!(
            audio_source(&json!({"audio_url": "https://cdn.segmind.com/a.wav"})).unwrap(),
            url
        );
        let inline = audio_source(&json!("data:audio/wav;base64,UklGRgAAAABXQVZF")).unwrap();
        assert_eq!(
            inline,
            AudioSource::Inline {
                bytes: Bytes::from_static(b"RIFF\0\0\0\0WAVE"),
                mime: Some("audio/wav".into())
            }
        );
        let bare = audio_source(&json!("UklGRgAAAABXQVZF")).unwrap();
        assert!(matches!(bare, AudioSource::Inline { mime: None, .. }));
    }

    #[test]
    fn rejects_outputs_without_audio() {
        for bad in [
            json!(""),
            json!([]),
            json!({"x": 1}),
            json!(42),
            json!("not base64!"),
        ] {
            assert!(
                matches!(audio_source(&bad), Err(SegmindError::Protocol { .. })),
                "{bad}"
            );
        }
    }

    fn client(base: &str) -> SegmindClient {
        let mut settings = crate::config::Settings::load_from(None, &[])
            .unwrap()
            .segmind;
        settings.base_url = Url::parse(base).unwrap();
        SegmindClient::new(&settings, SecretString::from("k"), Metrics::new()).unwrap()
    }

    #[test]
    fn follows_status_urls_only_on_the_api_origin() {
        let c = client("https://api.segmind.com");
        let on = c.same_origin_or(
            "https://api.segmind.com/v2/requests/x/status",
            "v2/requests/x/status",
        );
        assert_eq!(on.as_str(), "https://api.segmind.com/v2/requests/x/status");
        for foreign in [
            "https://evil.example/v2/requests/x/status",
            "http://api.segmind.com/v2/requests/x/status",
            "https://api.segmind.com:8443/v2/requests/x/status",
            "not a url",
        ] {
            let built = c.same_origin_or(foreign, "v2/requests/x/status");
            assert_eq!(
                built.as_str(),
                "https://api.segmind.com/v2/requests/x/status",
                "{foreign}"
            );
        }
    }

    #[test]
    fn a_submit_answer_must_name_the_request_and_its_urls() {
        let c = client("https://api.segmind.com");
        let ok = c
            .parse_submitted(
                br#"{"request_id":"abc-1","status":"QUEUED","status_url":"https://api.segmind.com/v2/requests/abc-1/status","response_url":"https://api.segmind.com/v2/requests/abc-1"}"#,
            )
            .unwrap();
        assert_eq!(ok.request_id, "abc-1");
        assert_eq!(
            ok.response_url.as_str(),
            "https://api.segmind.com/v2/requests/abc-1"
        );
        for bad in [
            &br#"{"request_id":"abc","status":"QUEUED"}"#[..],
            br#"{"status_url":"x","response_url":"y"}"#,
            br#"{"request_id":"../x","status_url":"x","response_url":"y"}"#,
            b"<html>",
        ] {
            assert!(
                matches!(c.parse_submitted(bad), Err(SegmindError::Protocol { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn status(code: u16, retry_after: Option<Duration>) -> SegmindError {
        SegmindError::Status {
            endpoint: Endpoint::Submit,
            status: code,
            body: String::new(),
            retry_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_honouring_the_reset_header() {
        let c = client("https://api.segmind.com");
        let start = Instant::now();
        let mut n = 0;
        let mut calls = 0;
        let result = c
            .with_retry(
                Endpoint::Submit,
                start + Duration::from_secs(600),
                &mut calls,
                || {
                    n += 1;
                    let attempt = n;
                    async move {
                        match attempt {
                            1..=3 => Err(status(429, Some(Duration::from_secs(10)))),
                            _ => Ok(attempt),
                        }
                    }
                },
            )
            .await;
        assert_eq!(result.unwrap(), 4);
        assert_eq!(calls, 4);
        // Three waits of the 10 s hint plus up to retry_base (1 s) jitter each.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited <= Duration::from_secs(33),
            "{waited:?}"
        );
        let text = c.metrics.render();
        assert!(
            text.contains("tts_retries_total{reason=\"429\"} 3"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_without_a_hint_is_bounded_by_the_exponential_ceiling() {
        let c = client("https://api.segmind.com");
        let start = Instant::now();
        let mut calls = 0;
        let result: Result<(), _> = c
            .with_retry(
                Endpoint::Status,
                start + Duration::from_secs(3600),
                &mut calls,
                || async { Err(status(502, None)) },
            )
            .await;
        assert!(matches!(
            result,
            Err(SegmindError::Status { status: 502, .. })
        ));
        // retry_attempts = 8 calls; the 7 waits are at most 1+2+4+8+16+32+60 s.
        assert_eq!(calls, 8);
        assert!(
            start.elapsed() <= Duration::from_secs(123),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let c = client("https://api.segmind.com");
        for code in [400, 401, 403, 404, 406, 410, 422] {
            let mut calls = 0;
            let start = Instant::now();
            let result: Result<(), _> = c
                .with_retry(
                    Endpoint::Submit,
                    start + Duration::from_secs(600),
                    &mut calls,
                    || async move { Err(status(code, None)) },
                )
                .await;
            assert!(result.is_err());
            assert_eq!(calls, 1, "HTTP {code} must not be retried");
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_never_sleep_past_the_deadline() {
        let c = client("https://api.segmind.com");
        let start = Instant::now();
        let mut calls = 0;
        let result: Result<(), _> = c
            .with_retry(
                Endpoint::Submit,
                start + Duration::from_secs(5),
                &mut calls,
                || async { Err(status(429, Some(Duration::from_secs(30)))) },
            )
            .await;
        assert!(matches!(
            result,
            Err(SegmindError::Status { status: 429, .. })
        ));
        assert_eq!(calls, 1, "a 30 s wait does not fit in a 5 s deadline");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    fn answer(code: u16, body: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        (
            StatusCode::from_u16(code).unwrap(),
            HeaderMap::new(),
            body.as_bytes().to_vec(),
        )
    }

    #[test]
    fn every_status_body_shape_is_interpreted() {
        let pending = [
            answer(200, r#"{"status":"QUEUED"}"#),
            answer(200, r#"{"status":"PROCESSING","request_id":"r"}"#),
            answer(200, r#"{"status":"STARTING"}"#), // unknown non-terminal: keep polling
        ];
        for (code, headers, body) in &pending {
            assert!(!interpret_status("r", *code, headers, body).unwrap());
        }
        let (code, headers, body) = answer(200, r#"{"status":"COMPLETED","extra":[1]}"#);
        assert!(interpret_status("r", code, &headers, &body).unwrap());

        // FAILED is an answer whatever the code: 422 (Segmind's quirk) or 200.
        for code in [422, 200] {
            let (code, headers, body) = answer(
                code,
                r#"{"status":"FAILED","error":"PROHIBITED_CONTENT","request_id":"r"}"#,
            );
            match interpret_status("r", code, &headers, &body) {
                Err(SegmindError::JobFailed {
                    message,
                    http_status,
                    request_id,
                }) => {
                    assert_eq!(message, "PROHIBITED_CONTENT");
                    assert_eq!(http_status, Some(code.as_u16()));
                    assert_eq!(request_id, "r");
                }
                other => panic!("{other:?}"),
            }
        }
        // FAILED without a message, or with a structured one.
        let (code, headers, body) = answer(422, r#"{"status":"FAILED","error":null}"#);
        assert!(matches!(
            interpret_status("r", code, &headers, &body),
            Err(SegmindError::JobFailed { message, .. }) if message.contains("without an error message")
        ));
        let (code, headers, body) =
            answer(422, r#"{"status":"FAILED","error":{"reason":"safety"}}"#);
        assert!(matches!(
            interpret_status("r", code, &headers, &body),
            Err(SegmindError::JobFailed { message, .. }) if message.contains("safety")
        ));
        // Non-terminal bodies with an error code are errors of the call.
        for (code, body) in [
            (404, r#"{"error":"not found"}"#),
            (502, "<html>bad gateway</html>"),
            (429, ""),
        ] {
            let (code, headers, bytes) = answer(code, body);
            assert!(matches!(
                interpret_status("r", code, &headers, &bytes),
                Err(SegmindError::Status { status, .. }) if status == code.as_u16()
            ));
        }
        // A 2xx that says nothing is a protocol error, not a pending job.
        for body in ["{}", "not json", r#"{"state":"DONE"}"#] {
            let (code, headers, bytes) = answer(200, body);
            assert!(matches!(
                interpret_status("r", code, &headers, &bytes),
                Err(SegmindError::Protocol { .. })
            ));
        }
    }

    #[test]
    fn every_result_body_shape_is_interpreted() {
        let (code, headers, body) = answer(
            200,
            r#"{"status":"COMPLETED","error":null,"metrics":{"inference_time":41.5,"cost":0.1},"output":"https://cdn/a.wav","seed":7}"#,
        );
        let (output, inference) = interpret_result("r", code, &headers, &body).unwrap();
        assert_eq!(output, serde_json::json!("https://cdn/a.wav"));
        assert_eq!(inference, Some(41.5));

        let (code, headers, body) = answer(
            200,
            r#"{"status":"COMPLETED","metrics":{"inference_time":"12.5"},"output":["x"]}"#,
        );
        assert_eq!(
            interpret_result("r", code, &headers, &body).unwrap().1,
            Some(12.5)
        );

        let (code, headers, body) = answer(200, r#"{"status":"COMPLETED","output":"u"}"#);
        assert_eq!(
            interpret_result("r", code, &headers, &body).unwrap().1,
            None,
            "metrics are optional"
        );

        let (code, headers, body) = answer(422, r#"{"status":"FAILED","error":"blocked"}"#);
        assert!(matches!(
            interpret_result("r", code, &headers, &body),
            Err(SegmindError::JobFailed { .. })
        ));

        let (code, headers, body) = answer(404, r#"{"error":"expired"}"#);
        assert!(matches!(
            interpret_result("r", code, &headers, &body),
            Err(SegmindError::Status { status: 404, .. })
        ));

        for body in [
            r#"{"status":"COMPLETED","output":null}"#,
            r#"{"status":"COMPLETED"}"#,
            "garbage",
        ] {
            let (code, headers, bytes) = answer(200, body);
            assert!(
                matches!(
                    interpret_result("r", code, &headers, &bytes),
                    Err(SegmindError::Protocol { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn rate_limit_headers_become_the_retry_hint() {
        let mut headers = HeaderMap::new();
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(20))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        headers.insert(
            crate::retry::RATE_LIMIT_RESET_HEADER,
            reset.parse().unwrap(),
        );
        let err = status_error(
            Endpoint::Submit,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"{}",
        );
        let hint = err.retry_hint().unwrap();
        assert!(
            hint > Duration::from_secs(18) && hint <= Duration::from_secs(20),
            "{hint:?}"
        );
    }
}
