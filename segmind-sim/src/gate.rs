//! What every API call passes: the key, injected and random faults, the
//! account's rate limit and credits, and refusals of one request.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Inner;
use crate::config::RateScope;

pub(crate) fn api_json(inner: &Inner, status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(credits) = inner.credits
        && let Ok(v) = HeaderValue::from_str(&format!("{credits:.4}"))
    {
        response.headers_mut().insert("x-remaining-credits", v);
    }
    response
}

/// Authentication, injected faults and random faults, common to API calls.
pub(crate) fn gate(inner: &mut Inner, headers: &HeaderMap) -> Option<Response> {
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
    if let Some(raw) = inner.raw_answers.pop_front() {
        inner.stats.faults_injected += 1;
        let status = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, raw.body).into_response();
        for (name, value) in raw.headers {
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                r.headers_mut().insert(n, v);
            }
        }
        return Some(r);
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
pub(crate) fn simulated_fault(inner: &mut Inner, code: u16, note: &str) -> Response {
    inner.stats.faults_injected += 1;
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_json(
        inner,
        status,
        json!({"error": format!("simulated {code}{note}")}),
    )
}

pub(crate) fn rate_limited(inner: &mut Inner, reset: Instant) -> Response {
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

/// Counts a call against the account's per-minute window; `Some` is the 429.
pub(crate) fn over_limit(inner: &mut Inner) -> Option<Response> {
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
pub(crate) fn admit(inner: &mut Inner) -> Option<Response> {
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
pub(crate) fn refuse_this_request(inner: &mut Inner, text: &str) -> Option<Response> {
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
