//! Retrying one Segmind call: [`with_retry`] is the only retry layer around
//! every API and media call (the HTTP clients never retry). Backoff is
//! exponential with full jitter, capped, and honours the server's own hint
//! (`Retry-After`, `x-rate-limit-reset-at-utc`). Across deliveries, the
//! worker's requeue is a separate, coarser layer decided by
//! [`crate::failure::disposition`].

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tracing::warn;

use super::error::SegmindError;
use crate::config::RetrySettings;
use crate::failure::{self, Call, Class};
use crate::metrics::Metrics;

/// Header Segmind sets on 429 answers: when the rate-limit window resets (UTC).
pub const RATE_LIMIT_RESET_HEADER: &str = "x-rate-limit-reset-at-utc";

/// The Segmind calls a job made, retries included: counted where each call
/// is made, read by the job's run context (shared, so stages count into it
/// without out-parameters).
#[derive(Debug, Default)]
pub struct CallCount(AtomicU32);

impl CallCount {
    /// One more call.
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The calls counted so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `call` with backoff on transient errors, at most `policy.attempts`
/// times and never sleeping past `deadline`. `calls` counts every attempt.
/// What is transient is [`failure::classify`]'s decision, not this loop's.
pub(crate) async fn with_retry<T, F, Fut>(
    policy: &RetrySettings,
    metrics: &Metrics,
    kind: Call,
    deadline: Instant,
    calls: &CallCount,
    mut call: F,
) -> Result<T, SegmindError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SegmindError>>,
{
    let mut retry = 0u32;
    loop {
        calls.add();
        let err = match call().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let transient = failure::classify(&err, &[]).class == Class::Transient;
        if !transient || retry + 1 >= policy.attempts {
            return Err(err);
        }
        let delay = backoff_delay(policy, retry, err.retry_hint(), &mut rand::rng());
        if Instant::now() + delay >= deadline {
            return Err(err);
        }
        metrics
            .retries
            .with_label_values(&[err.retry_reason()])
            .inc();
        warn!(call = %kind, retry = retry + 1, delay_ms = delay.as_millis() as u64, error = %err, "retrying Segmind call");
        tokio::time::sleep(delay).await;
        retry += 1;
    }
}

/// The delay before retry number `retry` (0 for the first retry).
///
/// Without a hint the delay is uniform in `[0, min(max, base * 2^retry)]`
/// ("full jitter"). With a hint the delay is the hint (capped at `max`) plus a
/// jitter of up to `base`, so a fleet told the same reset time does not stampede.
pub fn backoff_delay(
    policy: &RetrySettings,
    retry: u32,
    hint: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let max = policy.max.as_secs_f64();
    match hint {
        Some(hint) => {
            let jitter = rng.random_range(0.0..=policy.base.as_secs_f64());
            Duration::from_secs_f64((hint.as_secs_f64() + jitter).min(max))
        }
        None => {
            let ceiling = (policy.base.as_secs_f64() * 2f64.powi(retry.min(30) as i32)).min(max);
            Duration::from_secs_f64(rng.random_range(0.0..=ceiling))
        }
    }
}

/// How long the server asks us to wait, from `Retry-After` (seconds or an HTTP
/// date) and `x-rate-limit-reset-at-utc` (ISO-8601). The longer one wins.
pub fn server_hint(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let reset_at = headers
        .get(RATE_LIMIT_RESET_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_reset_at(v, now));
    match (retry_after, reset_at) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at: DateTime<Utc> = httpdate::parse_http_date(value).ok()?.into();
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn parse_reset_at(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let at = DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            // Seen without an offset; the header's name says it is UTC.
            NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .ok()?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use reqwest::header::HeaderValue;

    fn policy() -> RetrySettings {
        RetrySettings {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: 8,
        }
    }

    fn status(code: u16, retry_after: Option<Duration>) -> SegmindError {
        SegmindError::Status {
            call: Call::Submit,
            status: code,
            body: String::new(),
            retry_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_honouring_the_reset_header() {
        let metrics = Metrics::new();
        let start = Instant::now();
        let mut n = 0;
        let calls = CallCount::default();
        let result = with_retry(
            &policy(),
            &metrics,
            Call::Submit,
            start + Duration::from_secs(600),
            &calls,
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
        assert_eq!(calls.get(), 4);
        // Three waits of the 10 s hint plus up to retry_base (1 s) jitter each.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited <= Duration::from_secs(33),
            "{waited:?}"
        );
        let text = metrics.render();
        assert!(
            text.contains("tts_retries_total{reason=\"429\"} 3"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_without_a_hint_is_bounded_by_the_exponential_ceiling() {
        let metrics = Metrics::new();
        let start = Instant::now();
        let calls = CallCount::default();
        let result: Result<(), _> = with_retry(
            &policy(),
            &metrics,
            Call::Status,
            start + Duration::from_secs(3600),
            &calls,
            || async { Err(status(502, None)) },
        )
        .await;
        assert!(matches!(
            result,
            Err(SegmindError::Status { status: 502, .. })
        ));
        // retry_attempts = 8 calls; the 7 waits are at most 1+2+4+8+16+32+60 s.
        assert_eq!(calls.get(), 8);
        assert!(
            start.elapsed() <= Duration::from_secs(123),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let metrics = Metrics::new();
        for code in [400, 401, 403, 404, 406, 410, 422] {
            let calls = CallCount::default();
            let start = Instant::now();
            let result: Result<(), _> = with_retry(
                &policy(),
                &metrics,
                Call::Submit,
                start + Duration::from_secs(600),
                &calls,
                || async move { Err(status(code, None)) },
            )
            .await;
            assert!(result.is_err());
            assert_eq!(calls.get(), 1, "HTTP {code} must not be retried");
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_never_sleep_past_the_deadline() {
        let metrics = Metrics::new();
        let start = Instant::now();
        let calls = CallCount::default();
        let result: Result<(), _> = with_retry(
            &policy(),
            &metrics,
            Call::Submit,
            start + Duration::from_secs(5),
            &calls,
            || async { Err(status(429, Some(Duration::from_secs(30)))) },
        )
        .await;
        assert!(matches!(
            result,
            Err(SegmindError::Status { status: 429, .. })
        ));
        assert_eq!(calls.get(), 1, "a 30 s wait does not fit in a 5 s deadline");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for retry in 0..10 {
            let ceiling = (2f64.powi(retry as i32)).min(60.0);
            let mut seen_max: f64 = 0.0;
            for _ in 0..500 {
                let d = backoff_delay(&policy(), retry, None, &mut rng).as_secs_f64();
                assert!((0.0..=ceiling).contains(&d), "retry {retry}: {d}");
                seen_max = seen_max.max(d);
            }
            // Full jitter spreads over the whole range, not just near zero.
            assert!(
                seen_max > ceiling * 0.8,
                "retry {retry}: max seen {seen_max}"
            );
        }
    }

    #[test]
    fn a_server_hint_is_honoured_and_capped() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = backoff_delay(&policy(), 0, Some(Duration::from_secs(20)), &mut rng);
        assert!(
            d >= Duration::from_secs(20) && d <= Duration::from_secs(21),
            "{d:?}"
        );
        let d = backoff_delay(&policy(), 0, Some(Duration::from_secs(3600)), &mut rng);
        assert_eq!(d, Duration::from_secs(60));
    }

    #[test]
    fn parses_rate_limit_reset_and_retry_after() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(
            RATE_LIMIT_RESET_HEADER,
            HeaderValue::from_static("2026-11-24T10:00:30Z"),
        );
        assert_eq!(server_hint(&h, now), Some(Duration::from_secs(30)));

        let mut h = HeaderMap::new();
        h.insert(
            RATE_LIMIT_RESET_HEADER,
            HeaderValue::from_static("2026-11-24T10:00:12.500"),
        );
        assert_eq!(server_hint(&h, now), Some(Duration::from_millis(12_500)));

        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(server_hint(&h, now), Some(Duration::from_secs(7)));

        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Tue, 24 Nov 2026 10:01:00 GMT"),
        );
        assert_eq!(server_hint(&h, now), Some(Duration::from_secs(60)));

        // Both present: the longer wait wins.
        h.insert(
            RATE_LIMIT_RESET_HEADER,
            HeaderValue::from_static("2026-11-24T10:05:00Z"),
        );
        assert_eq!(server_hint(&h, now), Some(Duration::from_secs(300)));
    }

    #[test]
    fn past_or_garbage_hints() {
        let now = Utc::now();
        let mut h = HeaderMap::new();
        h.insert(
            RATE_LIMIT_RESET_HEADER,
            HeaderValue::from_static("2000-01-01T00:00:00Z"),
        );
        assert_eq!(server_hint(&h, now), Some(Duration::ZERO));
        let mut h = HeaderMap::new();
        h.insert(RATE_LIMIT_RESET_HEADER, HeaderValue::from_static("soon"));
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("-3"));
        assert_eq!(server_hint(&h, now), None);
        assert_eq!(server_hint(&HeaderMap::new(), now), None);
    }
}
