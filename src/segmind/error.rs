//! What can go wrong talking to Segmind, reported as facts for
//! [`crate::failure::classify`].

use std::time::Duration;

use super::budget::Withheld;
use super::media::MediaRefusal;
use crate::failure::{AsFault, Call, Fault};

#[derive(Debug, thiserror::Error)]
pub enum SegmindError {
    /// The submission was not made: its job's tenant reached its cap of the
    /// day, or the job was cancelled (the budget's gate, before the POST).
    #[error("{0}")]
    Withheld(Withheld),
    #[error("{call} call answered HTTP {status}: {body}")]
    Status {
        call: Call,
        status: u16,
        body: String,
        /// The server's requested wait (Retry-After / rate-limit reset).
        retry_after: Option<Duration>,
    },
    /// `source` carries no URL (it may hold a signed query); `url` is the
    /// URL without its query ([`super::media::redacted`]).
    #[error("{call} call{} failed: {source}", url.as_deref().map(|u| format!(" to {u}")).unwrap_or_default())]
    Transport {
        call: Call,
        timeout: bool,
        url: Option<String>,
        #[source]
        source: reqwest::Error,
    },
    #[error("{reason}")]
    MediaRefused {
        #[source]
        reason: MediaRefusal,
    },
    #[error("the {call} answer is larger than the {limit}-byte limit")]
    AnswerTooLarge { call: Call, limit: u64 },
    #[error("{call} answer breaks the protocol: {detail}")]
    Protocol { call: Call, detail: String },
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
    #[error(
        "Segmind request {request_id} still pending after {polls} polls (segmind.max_polls_per_job); \
         a later delivery resumes it"
    )]
    PollLimit { request_id: String, polls: u32 },
    #[error("the audio is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error(
        "the submission's answer was lost after it was sent ({cause}); Segmind may have accepted \
         (and billed) it, so it is not retried (segmind.ambiguous_submits = \"fail\")"
    )]
    Unconfirmed { cause: String },
}

impl SegmindError {
    /// How long the server asked us to wait before trying again.
    pub(crate) fn retry_hint(&self) -> Option<Duration> {
        match self {
            SegmindError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Label for `tts_retries_total{reason}`.
    pub(crate) fn retry_reason(&self) -> &'static str {
        match self {
            SegmindError::Status { status: 429, .. } => "429",
            SegmindError::Status { .. } => "5xx",
            _ => "network",
        }
    }

    /// Whether a failed submission may nevertheless have been accepted by
    /// Segmind: the request was sent and its answer lost (a timeout or a
    /// connection cut after sending), or the gateway answered 502/504. A
    /// connection that was never made provably sent nothing.
    pub(crate) fn ambiguous_submission(&self) -> bool {
        match self {
            SegmindError::Transport {
                call: Call::Submit,
                source,
                ..
            } => !source.is_connect() && !source.is_builder(),
            SegmindError::Status {
                call: Call::Submit,
                status,
                ..
            } => matches!(status, 502 | 504),
            _ => false,
        }
    }

    /// The call an HTTP answer or transport error came from.
    pub fn call(&self) -> Option<Call> {
        match self {
            SegmindError::Status { call, .. }
            | SegmindError::Transport { call, .. }
            | SegmindError::AnswerTooLarge { call, .. }
            | SegmindError::Protocol { call, .. } => Some(*call),
            SegmindError::MediaRefused { .. } => Some(Call::Download),
            _ => None,
        }
    }

    /// The Segmind request the error is about, when one was accepted.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            SegmindError::JobFailed { request_id, .. } => Some(request_id),
            SegmindError::Deadline { request_id, .. } => request_id.as_deref(),
            SegmindError::PollLimit { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}

impl AsFault for SegmindError {
    fn fault(&self) -> Fault<'_> {
        match self {
            SegmindError::Status { call, status, .. } => Fault::Http {
                call: *call,
                status: *status,
            },
            SegmindError::Transport { timeout, .. } => Fault::Network { timeout: *timeout },
            SegmindError::MediaRefused { .. } => Fault::MediaRefused,
            SegmindError::AnswerTooLarge { .. } => Fault::Protocol,
            SegmindError::Protocol { .. } => Fault::Protocol,
            SegmindError::JobFailed {
                message,
                http_status,
                ..
            } => Fault::JobFailed {
                message,
                http_status: *http_status,
            },
            SegmindError::Deadline { .. } => Fault::Deadline,
            SegmindError::PollLimit { .. } => Fault::PollBudget,
            SegmindError::TooLarge { .. } => Fault::BadAudio,
            SegmindError::Unconfirmed { .. } => Fault::SubmissionUnconfirmed,
            SegmindError::Withheld(w) => Fault::Withheld {
                cancelled: *w == Withheld::Cancelled,
            },
        }
    }
}
