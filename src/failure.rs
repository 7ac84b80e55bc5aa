//! The one place that classifies failures.
//!
//! Every error a job can meet ends here and becomes a [`Failure`]: a stable
//! [`ErrorCode`] for events and metrics, a [`Class`] that decides what happens
//! next (retry the call later, fail the job, or treat it as an account-level
//! problem), and the HTTP status when there was one. The Segmind client's retry
//! layer asks [`classify_segmind`] too, so "what is worth retrying" is decided
//! once.

use serde::Serialize;

use crate::audio::AudioError;
use crate::segmind::{Endpoint, SegmindError};
use crate::storage::StorageError;

/// Stable, documented error codes carried in failure events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request failed validation (or the API answered 400).
    InvalidRequest,
    /// FAILED with an error that mentions a content/RAI/safety block.
    ContentBlocked,
    /// Any other FAILED job (HTTP 422).
    InferenceFailed,
    /// 401: missing or wrong API key.
    Unauthorized,
    /// 403: the key lacks permission.
    Forbidden,
    /// 406: the account is out of credits.
    InsufficientCredits,
    /// 429 that persisted through every retry.
    RateLimited,
    /// 5xx or network errors that persisted through every retry.
    UpstreamUnavailable,
    /// The job's deadline passed before a result arrived.
    Timeout,
    /// The API no longer knows the request (404 on poll; results live 1 h).
    Expired,
    /// 404 on submit or 410: the model does not exist or was retired.
    ModelUnavailable,
    /// The API answered something the protocol does not allow.
    ProtocolError,
    /// The audio could not be stored.
    StorageFailed,
    /// The audio was empty, too large, or not audio.
    AudioInvalid,
    /// The message was delivered more times than allowed without finishing
    /// (it crashed or stalled workers); dead-lettered.
    PoisonMessage,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ContentBlocked => "content_blocked",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Expired => "expired",
            ErrorCode::ModelUnavailable => "model_unavailable",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::AudioInvalid => "audio_invalid",
            ErrorCode::PoisonMessage => "poison_message",
        }
    }
}

/// What a failure means for the work around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying the same call after a backoff.
    Transient,
    /// This job cannot succeed as it is; retrying the call is pointless.
    Permanent,
    /// Nothing will succeed until the account is fixed (key, permission, credits).
    Account,
}

/// A classified failure, as carried by a failure event.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: ErrorCode,
    pub class: Class,
    pub message: String,
    pub http_status: Option<u16>,
}

impl Failure {
    /// Whether the producer may expect the same request to succeed later.
    pub fn retryable(&self) -> bool {
        match self.class {
            Class::Transient | Class::Account => true,
            Class::Permanent => matches!(
                self.code,
                ErrorCode::InferenceFailed
                    | ErrorCode::AudioInvalid
                    | ErrorCode::Expired
                    | ErrorCode::Timeout
            ),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Failure {
            code: ErrorCode::InvalidRequest,
            class: Class::Permanent,
            message: message.into(),
            http_status: None,
        }
    }
}

/// What to do with a delivery whose job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Publish the failure event and ack.
    Fail,
    /// Requeue it: a later delivery will likely succeed (and resume from the
    /// job's checkpoint, so nothing is paid twice).
    Requeue,
    /// Requeue it and stop taking work until the account is fixed.
    Pause,
}

/// What to do on an account-level failure (401, 403, 406).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountPolicy {
    /// Stop consuming, requeue, probe until the account works again.
    Pause,
    /// Fail the job like any other permanent failure.
    Fail,
}

/// Decides a failed job's fate. `attempt` counts deliveries from 1;
/// `max_deliveries` is the limit after which a message is never requeued.
pub fn disposition(
    failure: &Failure,
    attempt: u32,
    max_deliveries: u32,
    policy: AccountPolicy,
) -> Disposition {
    match failure.class {
        Class::Account if policy == AccountPolicy::Pause => Disposition::Pause,
        Class::Transient if attempt < max_deliveries => Disposition::Requeue,
        _ => Disposition::Fail,
    }
}

/// Every error a job's processing can end with.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Segmind(#[from] SegmindError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Maps an HTTP status of the Segmind API to a code and class.
/// `endpoint` matters for 404: on submit the model is missing, on a poll the
/// request expired.
pub fn classify_status(status: u16, endpoint: Endpoint) -> (ErrorCode, Class) {
    match status {
        400 => (ErrorCode::InvalidRequest, Class::Permanent),
        401 => (ErrorCode::Unauthorized, Class::Account),
        403 => (ErrorCode::Forbidden, Class::Account),
        404 if endpoint == Endpoint::Submit => (ErrorCode::ModelUnavailable, Class::Permanent),
        404 => (ErrorCode::Expired, Class::Permanent),
        406 => (ErrorCode::InsufficientCredits, Class::Account),
        410 => (ErrorCode::ModelUnavailable, Class::Permanent),
        422 => (ErrorCode::InferenceFailed, Class::Permanent),
        408 | 500 | 502 | 503 | 504 => (ErrorCode::UpstreamUnavailable, Class::Transient),
        429 => (ErrorCode::RateLimited, Class::Transient),
        s if s >= 500 => (ErrorCode::UpstreamUnavailable, Class::Transient),
        _ => (ErrorCode::ProtocolError, Class::Permanent),
    }
}

/// Whether a FAILED job's error text describes a content/safety block.
pub fn is_content_block(message: &str, patterns: &[String]) -> bool {
    let lower = message.to_lowercase();
    patterns.iter().any(|p| lower.contains(p.as_str()))
}

/// Classifies an error of the Segmind client.
pub fn classify_segmind(err: &SegmindError, block_patterns: &[String]) -> Failure {
    let (code, class, http_status) = match err {
        SegmindError::Status {
            status, endpoint, ..
        } => {
            let (code, class) = match endpoint {
                // The CDN is not the API: its 4xx mean the result is gone or
                // broken, never an account problem.
                Endpoint::Download if *status < 500 && *status != 429 => {
                    (ErrorCode::AudioInvalid, Class::Permanent)
                }
                _ => classify_status(*status, *endpoint),
            };
            (code, class, Some(*status))
        }
        SegmindError::Transport { timeout, .. } => (
            if *timeout {
                ErrorCode::Timeout
            } else {
                ErrorCode::UpstreamUnavailable
            },
            Class::Transient,
            None,
        ),
        SegmindError::Protocol { .. } => (ErrorCode::ProtocolError, Class::Permanent, None),
        SegmindError::JobFailed {
            message,
            http_status,
            ..
        } => {
            let code = if is_content_block(message, block_patterns) {
                ErrorCode::ContentBlocked
            } else {
                ErrorCode::InferenceFailed
            };
            (code, Class::Permanent, *http_status)
        }
        SegmindError::Deadline { .. } => (ErrorCode::Timeout, Class::Permanent, None),
        SegmindError::TooLarge { .. } => (ErrorCode::AudioInvalid, Class::Permanent, None),
    };
    Failure {
        code,
        class,
        message: err.to_string(),
        http_status,
    }
}

/// Classifies any error a job ended with.
pub fn classify(err: &JobError, block_patterns: &[String]) -> Failure {
    match err {
        JobError::Segmind(e) => classify_segmind(e, block_patterns),
        JobError::Audio(e) => Failure {
            code: ErrorCode::AudioInvalid,
            class: Class::Permanent,
            message: e.to_string(),
            http_status: None,
        },
        JobError::Storage(e) => Failure {
            code: ErrorCode::StorageFailed,
            class: Class::Transient,
            message: e.to_string(),
            http_status: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns() -> Vec<String> {
        ["rai", "safety", "blocked", "prohibited", "policy"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn every_documented_status_code_is_classified() {
        use Class::*;
        use ErrorCode::*;
        let table = [
            (400, Endpoint::Submit, InvalidRequest, Permanent),
            (401, Endpoint::Submit, Unauthorized, Account),
            (401, Endpoint::Status, Unauthorized, Account),
            (403, Endpoint::Submit, Forbidden, Account),
            (404, Endpoint::Submit, ModelUnavailable, Permanent),
            (404, Endpoint::Status, Expired, Permanent),
            (404, Endpoint::Result, Expired, Permanent),
            (405, Endpoint::Submit, ProtocolError, Permanent),
            (406, Endpoint::Submit, InsufficientCredits, Account),
            (410, Endpoint::Submit, ModelUnavailable, Permanent),
            (422, Endpoint::Status, InferenceFailed, Permanent),
            (429, Endpoint::Submit, RateLimited, Transient),
            (429, Endpoint::Status, RateLimited, Transient),
            (500, Endpoint::Submit, UpstreamUnavailable, Transient),
            (502, Endpoint::Status, UpstreamUnavailable, Transient),
            (503, Endpoint::Result, UpstreamUnavailable, Transient),
            (504, Endpoint::Submit, UpstreamUnavailable, Transient),
            (599, Endpoint::Submit, UpstreamUnavailable, Transient),
            (418, Endpoint::Submit, ProtocolError, Permanent),
        ];
        for (status, endpoint, code, class) in table {
            assert_eq!(
                classify_status(status, endpoint),
                (code, class),
                "{status} on {endpoint:?}"
            );
        }
    }

    #[test]
    fn failed_jobs_split_into_content_blocks_and_inference_failures() {
        let blocked = SegmindError::JobFailed {
            request_id: "r".into(),
            message: "Request blocked by RAI safety filter".into(),
            http_status: Some(422),
        };
        let f = classify_segmind(&blocked, &patterns());
        assert_eq!(f.code, ErrorCode::ContentBlocked);
        assert_eq!(f.http_status, Some(422));
        assert!(!f.retryable());

        let other = SegmindError::JobFailed {
            request_id: "r".into(),
            message: "Model returned no candidates".into(),
            http_status: Some(422),
        };
        let f = classify_segmind(&other, &patterns());
        assert_eq!(f.code, ErrorCode::InferenceFailed);
        assert!(f.retryable());
    }

    #[test]
    fn content_block_patterns_are_configurable_and_case_insensitive() {
        assert!(is_content_block("PROHIBITED_CONTENT", &patterns()));
        assert!(!is_content_block(
            "PROHIBITED_CONTENT",
            &["nsfw".to_string()]
        ));
        assert!(is_content_block("flagged NSFW", &["nsfw".to_string()]));
    }

    #[test]
    fn download_errors_never_look_like_account_problems() {
        let e = SegmindError::Status {
            endpoint: Endpoint::Download,
            status: 403,
            body: String::new(),
            retry_after: None,
        };
        let f = classify_segmind(&e, &patterns());
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::AudioInvalid, Class::Permanent)
        );
        let e = SegmindError::Status {
            endpoint: Endpoint::Download,
            status: 503,
            body: String::new(),
            retry_after: None,
        };
        assert_eq!(classify_segmind(&e, &patterns()).class, Class::Transient);
    }

    #[test]
    fn deadline_and_transport_errors() {
        let f = classify_segmind(
            &SegmindError::Deadline {
                request_id: Some("r".into()),
                waited: std::time::Duration::from_secs(600),
            },
            &patterns(),
        );
        assert_eq!(f.code, ErrorCode::Timeout);
        assert!(f.retryable(), "a job that timed out may succeed later");
        let f = classify_segmind(
            &SegmindError::Protocol {
                endpoint: Endpoint::Submit,
                detail: "no request_id".into(),
            },
            &patterns(),
        );
        assert_eq!(f.code, ErrorCode::ProtocolError);
        assert!(!f.retryable());
    }

    #[test]
    fn storage_and_audio_errors() {
        let f = classify(&JobError::Audio(AudioError::Empty), &patterns());
        assert_eq!(f.code, ErrorCode::AudioInvalid);
        let f = classify(
            &JobError::Storage(StorageError::Upload {
                key: "k".into(),
                detail: "connection refused".into(),
            }),
            &patterns(),
        );
        assert_eq!(f.code, ErrorCode::StorageFailed);
        assert!(f.retryable());
    }

    #[test]
    fn disposition_is_decided_by_class_attempt_and_policy() {
        let f = |code, class| Failure {
            code,
            class,
            message: String::new(),
            http_status: None,
        };
        let transient = f(ErrorCode::StorageFailed, Class::Transient);
        let permanent = f(ErrorCode::ContentBlocked, Class::Permanent);
        let account = f(ErrorCode::Unauthorized, Class::Account);
        use AccountPolicy as P;
        use Disposition as D;
        let table = [
            (&transient, 1, 5, P::Pause, D::Requeue),
            (&transient, 4, 5, P::Pause, D::Requeue),
            (&transient, 5, 5, P::Pause, D::Fail), // the last allowed delivery ends the job
            (&transient, 9, 5, P::Fail, D::Fail),
            (&permanent, 1, 5, P::Pause, D::Fail),
            (&permanent, 1, 5, P::Fail, D::Fail),
            (&account, 1, 5, P::Pause, D::Pause),
            (&account, 7, 5, P::Pause, D::Pause), // pausing is not the job's fault
            (&account, 1, 5, P::Fail, D::Fail),
        ];
        for (failure, attempt, max, policy, expected) in table {
            assert_eq!(
                disposition(failure, attempt, max, policy),
                expected,
                "{:?} attempt {attempt}/{max} {policy:?}",
                failure.code
            );
        }
    }

    #[test]
    fn codes_serialize_as_their_documented_names() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::ContentBlocked,
            ErrorCode::InsufficientCredits,
            ErrorCode::UpstreamUnavailable,
            ErrorCode::AudioInvalid,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
        }
    }
}
