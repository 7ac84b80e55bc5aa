//! Segmind's wire protocol, interpreted without any I/O: what a submit,
//! status or result answer means, where a result's audio is, and which hint
//! a 429 carries. Segmind's JSON never leaves this module; the client
//! ([`super::client`]) only moves bytes.
//!
//! A status body announcing a terminal state (COMPLETED / FAILED) is an
//! answer whatever the HTTP code: Segmind serves FAILED as 422.

use base64::Engine;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;
use url::Url;

use super::error::SegmindError;
use super::retry::server_hint;
use crate::failure::Call;

/// How much of an error body is kept for messages.
const ERROR_BODY_LIMIT: usize = 512;

/// A submission accepted by Segmind, and where to follow it.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub request_id: String,
    pub(crate) status_url: Url,
    pub(crate) response_url: Url,
}

/// The body POSTed to `/v2/{model}`.
#[derive(Serialize)]
pub(crate) struct SubmitBody<'a> {
    pub(crate) text: &'a str,
    pub(crate) temperature: f64,
    pub(crate) voice_1: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) voice_2: Option<&'static str>,
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

/// Reads a submit answer: the request id and where to follow it.
pub(crate) fn parse_submitted(base: &Url, body: &[u8]) -> Result<Submitted, SegmindError> {
    let protocol = |detail: String| SegmindError::Protocol {
        call: Call::Submit,
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
    let status_url = same_origin_or(
        base,
        &status_url,
        &format!("v2/requests/{request_id}/status"),
    );
    let response_url = same_origin_or(base, &response_url, &format!("v2/requests/{request_id}"));
    Ok(Submitted {
        request_id,
        status_url,
        response_url,
    })
}

/// `candidate` if it is on the API origin, else `{base}/{fallback_path}`.
fn same_origin_or(base: &Url, candidate: &str, fallback_path: &str) -> Url {
    match Url::parse(candidate) {
        Ok(url) if url.origin() == base.origin() => url,
        _ => {
            warn!(
                url = Url::parse(candidate)
                    .map_or_else(|_| "(not a URL)".to_owned(), |u| super::media::redacted(&u)),
                "Segmind returned a URL off the API origin; building it from the base URL instead"
            );
            let mut url = base.clone();
            url.set_path(fallback_path);
            url
        }
    }
}

/// A transport error, its URL's query dropped (a media URL's query may be
/// a signature): the error's text goes into logs and failure events.
pub(crate) fn transport(call: Call, source: reqwest::Error) -> SegmindError {
    if let Some(reason) = super::media::MediaRefusal::in_chain(&source) {
        return SegmindError::MediaRefused {
            reason: reason.clone(),
        };
    }
    SegmindError::Transport {
        call,
        timeout: source.is_timeout(),
        url: source.url().map(super::media::redacted),
        source: source.without_url(),
    }
}

pub(crate) fn status_error(
    call: Call,
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
        call,
        status: status.as_u16(),
        body,
        retry_after: server_hint(headers, chrono::Utc::now()),
    }
}

/// What a status answer means: `Ok(true)` COMPLETED, `Ok(false)` still
/// pending. A body announcing a terminal state is an answer whatever the HTTP
/// code (FAILED comes as 422); any other non-2xx is an error of the call.
pub(crate) fn interpret_status(
    request_id: &str,
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<bool, SegmindError> {
    let body: Option<StatusBody> = serde_json::from_slice(bytes).ok();
    match body.as_ref().and_then(|b| b.status.as_deref()) {
        Some("COMPLETED") => Ok(true),
        Some("FAILED") => Err(job_failed(request_id, body.as_ref(), status)),
        _ if !status.is_success() => Err(status_error(Call::Status, status, headers, bytes)),
        Some(_) => Ok(false), // QUEUED, PROCESSING, or a state we do not know yet
        None => Err(SegmindError::Protocol {
            call: Call::Status,
            detail: "a 2xx status answer without a status field".into(),
        }),
    }
}

/// What a result answer means: the `output` and the reported inference time.
/// What a result's `metrics` object reports; every field is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResultMetrics {
    pub inference_time: Option<f64>,
    pub queue_time: Option<f64>,
    pub total_time: Option<f64>,
    pub cost: Option<f64>,
    pub remaining_credits: Option<f64>,
}

impl ResultMetrics {
    fn from_value(metrics: Option<&Value>) -> Self {
        let field = |name: &str| metrics.and_then(|m| m.get(name)).and_then(number);
        ResultMetrics {
            inference_time: field("inference_time"),
            queue_time: field("queue_time"),
            total_time: field("total_time"),
            cost: field("cost"),
            remaining_credits: field("remaining_credits"),
        }
    }

    /// Submit to completion at Segmind, when the metrics tell it.
    pub fn latency(&self) -> Option<f64> {
        self.total_time
            .or(match (self.queue_time, self.inference_time) {
                (Some(q), Some(i)) => Some(q + i),
                _ => None,
            })
    }
}

/// What a result answer means for the worker: where its audio is, and
/// what it reports of the job's time and cost. Segmind's JSON stays here.
pub(crate) fn interpret_result_audio(
    request_id: &str,
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
    max_audio_bytes: u64,
) -> Result<(AudioSource, ResultMetrics), SegmindError> {
    let (output, metrics) = interpret_result(request_id, status, headers, bytes)?;
    Ok((audio_source(&output, max_audio_bytes)?, metrics))
}

fn interpret_result(
    request_id: &str,
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<(Value, ResultMetrics), SegmindError> {
    let body: Option<StatusBody> = serde_json::from_slice(bytes).ok();
    match body {
        Some(b) if b.status.as_deref() == Some("FAILED") => {
            Err(job_failed(request_id, Some(&b), status))
        }
        _ if !status.is_success() => Err(status_error(Call::Result, status, headers, bytes)),
        Some(StatusBody {
            output: Some(output),
            metrics,
            ..
        }) if !output.is_null() => Ok((output, ResultMetrics::from_value(metrics.as_ref()))),
        _ => Err(SegmindError::Protocol {
            call: Call::Result,
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
pub(crate) enum AudioSource {
    Url(Url),
    Inline { bytes: Bytes, mime: Option<String> },
}

/// Finds the audio in a result's `output`: a media URL (likely), a data URI or
/// bare base64; possibly wrapped in a list or an object. Inline audio
/// longer than `max_bytes` is refused before it is decoded.
fn audio_source(output: &Value, max_bytes: u64) -> Result<AudioSource, SegmindError> {
    let protocol = |detail: String| SegmindError::Protocol {
        call: Call::Result,
        detail,
    };
    match output {
        Value::String(s) => audio_source_str(s.trim(), max_bytes)?.ok_or_else(|| {
            let head: String = s.chars().take(40).collect();
            protocol(format!(
                "output is neither a URL, a data URI nor base64 ({head:?}…)"
            ))
        }),
        Value::Array(items) => items
            .first()
            .ok_or_else(|| protocol("output is an empty list".into()))
            .and_then(|o| audio_source(o, max_bytes)),
        Value::Object(map) => ["url", "audio_url", "audio", "output", "data"]
            .iter()
            .find_map(|k| map.get(*k))
            .ok_or_else(|| protocol("output object has no url/audio field".into()))
            .and_then(|o| audio_source(o, max_bytes)),
        other => {
            let shown: String = other.to_string().chars().take(80).collect();
            Err(protocol(format!("output of unexpected type: {shown}")))
        }
    }
}

fn audio_source_str(s: &str, max_bytes: u64) -> Result<Option<AudioSource>, SegmindError> {
    if s.starts_with("https://") || s.starts_with("http://") {
        return Ok(Url::parse(s).ok().map(AudioSource::Url));
    }
    if let Some(rest) = s.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Ok(None);
        };
        let mime = meta
            .split(';')
            .next()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        if !meta.ends_with(";base64") {
            return Ok(None);
        }
        return Ok(decode_base64(data, max_bytes)?.map(|bytes| AudioSource::Inline { bytes, mime }));
    }
    // Bare base64 of some length; short strings are more likely garbage.
    if s.len() >= 16 {
        return Ok(
            decode_base64(s, max_bytes)?.map(|bytes| AudioSource::Inline { bytes, mime: None })
        );
    }
    Ok(None)
}

/// Decodes base64 of any common alphabet, once its decoded size (3 bytes
/// per 4 characters) is known to be within `max_bytes`.
fn decode_base64(data: &str, max_bytes: u64) -> Result<Option<Bytes>, SegmindError> {
    let data = data.trim();
    if (data.len() as u64 / 4).saturating_mul(3) > max_bytes {
        return Err(SegmindError::TooLarge { limit: max_bytes });
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    Ok(engines
        .iter()
        .find_map(|e| e.decode(data).ok())
        .map(Bytes::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const MAX: u64 = 1 << 20;

    #[test]
    fn inline_audio_over_the_cap_is_refused_before_it_is_decoded() {
        let wav = "UklGRgAAAABXQVZF".repeat(8); // 128 characters, 96 bytes
        for output in [
            json!(wav.clone()),
            json!(format!("data:audio/wav;base64,{wav}")),
        ] {
            assert!(matches!(
                audio_source(&output, 95),
                Err(SegmindError::TooLarge { limit: 95 })
            ));
            assert!(matches!(
                audio_source(&output, 96),
                Ok(AudioSource::Inline { .. })
            ));
        }
    }

    #[test]
    fn finds_audio_in_every_plausible_output_shape() {
        let url = AudioSource::Url(Url::parse("https://cdn.segmind.com/a.wav").unwrap());
        assert_eq!(
            audio_source(&json!("https://cdn.segmind.com/a.wav"), MAX).unwrap(),
            url
        );
        assert_eq!(
            audio_source(&json!(["https://cdn.segmind.com/a.wav"]), MAX).unwrap(),
            url
        );
        assert_eq!(
            audio_source(&json!({"audio_url": "https://cdn.segmind.com/a.wav"}), MAX).unwrap(),
            url
        );
        let inline = audio_source(&json!("data:audio/wav;base64,UklGRgAAAABXQVZF"), MAX).unwrap();
        assert_eq!(
            inline,
            AudioSource::Inline {
                bytes: Bytes::from_static(b"RIFF\0\0\0\0WAVE"),
                mime: Some("audio/wav".into())
            }
        );
        let bare = audio_source(&json!("UklGRgAAAABXQVZF"), MAX).unwrap();
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
                matches!(audio_source(&bad, MAX), Err(SegmindError::Protocol { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn follows_status_urls_only_on_the_api_origin() {
        let base = Url::parse("https://api.segmind.com").unwrap();
        let on = same_origin_or(
            &base,
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
            let built = same_origin_or(&base, foreign, "v2/requests/x/status");
            assert_eq!(
                built.as_str(),
                "https://api.segmind.com/v2/requests/x/status",
                "{foreign}"
            );
        }
    }

    #[test]
    fn a_submit_answer_must_name_the_request_and_its_urls() {
        let base = Url::parse("https://api.segmind.com").unwrap();
        let ok = parse_submitted(
                &base,
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
                matches!(
                    parse_submitted(&base, bad),
                    Err(SegmindError::Protocol { .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
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
        let (output, metrics) = interpret_result("r", code, &headers, &body).unwrap();
        assert_eq!(output, serde_json::json!("https://cdn/a.wav"));
        assert_eq!(metrics.inference_time, Some(41.5));
        assert_eq!(metrics.cost, Some(0.1));
        assert_eq!(metrics.latency(), None, "no queue or total time reported");

        let (code, headers, body) = answer(
            200,
            r#"{"status":"COMPLETED","metrics":{"inference_time":40,"queue_time":1.5,"remaining_credits":9.5},"output":"u"}"#,
        );
        let (_, metrics) = interpret_result("r", code, &headers, &body).unwrap();
        assert_eq!(metrics.latency(), Some(41.5));
        assert_eq!(metrics.remaining_credits, Some(9.5));
        let (code, headers, body) = answer(
            200,
            r#"{"status":"COMPLETED","metrics":{"inference_time":40,"queue_time":1.5,"total_time":42},"output":"u"}"#,
        );
        let (_, metrics) = interpret_result("r", code, &headers, &body).unwrap();
        assert_eq!(metrics.latency(), Some(42.0), "total_time wins");

        let (code, headers, body) = answer(
            200,
            r#"{"status":"COMPLETED","metrics":{"inference_time":"12.5"},"output":["x"]}"#,
        );
        assert_eq!(
            interpret_result("r", code, &headers, &body)
                .unwrap()
                .1
                .inference_time,
            Some(12.5)
        );

        let (code, headers, body) = answer(200, r#"{"status":"COMPLETED","output":"u"}"#);
        assert_eq!(
            interpret_result("r", code, &headers, &body).unwrap().1,
            ResultMetrics::default(),
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
            super::super::retry::RATE_LIMIT_RESET_HEADER,
            reset.parse().unwrap(),
        );
        let err = status_error(Call::Submit, StatusCode::TOO_MANY_REQUESTS, &headers, b"{}");
        let hint = err.retry_hint().unwrap();
        assert!(
            hint > Duration::from_secs(18) && hint <= Duration::from_secs(20),
            "{hint:?}"
        );
    }
}
