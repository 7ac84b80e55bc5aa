//! The vocabulary of failure, and the one place that decides what a failure
//! means.
//!
//! Adapters (the Segmind client, storage, the audio checks) do not judge their
//! own errors: each reports what happened as a [`Fault`] — an HTTP status on a
//! given [`Call`], a network error, an S3 error kind — through [`AsFault`].
//! [`classify`] alone turns a fault into a [`Failure`]: a stable
//! [`ErrorCode`] for events and metrics, and a [`Class`] saying whether to
//! retry the call, fail the job, or treat it as an account-level problem.
//! [`disposition`] alone decides what a failed job's delivery becomes.
//!
//! This module sits at the bottom of the crate: it imports only
//! configuration, so every adapter can depend on it and none of it depends on
//! an adapter.

use std::fmt;

use crate::config::AccountPolicy;

/// Stable, documented error codes carried in failure events and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request failed validation (or the API answered 400).
    InvalidRequest,
    /// The request says a version no replica of the fleet knew within
    /// `jobs.unsupported_version_grace` (it was handed back meanwhile).
    UnsupportedVersion,
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
    /// The audio could not be stored (storage unreachable, throttling, 5xx,
    /// timeouts).
    StorageFailed,
    /// The bucket refuses our credentials (AccessDenied, InvalidAccessKeyId,
    /// SignatureDoesNotMatch): nothing can be stored until that is fixed.
    StorageAccessDenied,
    /// The configured bucket does not exist (NoSuchBucket).
    StorageBucketMissing,
    /// The audio was empty, too large, or not audio.
    AudioInvalid,
    /// The deliverable could not be rendered (resampled, encoded, metered):
    /// a worker fault, not the audio's; the paid parts are kept.
    RenderFailed,
    /// The message was delivered more times than allowed without finishing
    /// (it crashed or stalled workers); dead-lettered.
    PoisonMessage,
    /// A submission's answer was lost after it was sent (timeout, 502/504)
    /// and `segmind.ambiguous_submits = "fail"`: Segmind may have accepted it.
    SubmissionUnconfirmed,
    /// The store refused this object (400, 409, 412, 413, KeyTooLong,
    /// EntityTooLarge): retrying the same upload cannot succeed.
    StorageRejected,
    /// `output_key` resolves under the worker's own objects.
    OutputKeyForbidden,
    /// `output_key` already holds an object another job wrote.
    OutputKeyTaken,
    /// The API named a media URL the worker does not fetch: not https, or
    /// on a non-public address (loopback, private, link-local, cluster),
    /// itself or after a redirect, and not listed in
    /// `segmind.media_allow_private`. Nothing was fetched; the paid request
    /// is kept (a resend once the origin is listed resumes it).
    MediaRefused,
    /// An invariant of the worker's own broke (a part ended without its
    /// audio, a plan without parts, a step that panicked): a bug, not the
    /// request's fault; retried on a later delivery and counted.
    Internal,
    /// The tenant's credits of the day reached `tenants.daily_credit_cap`
    /// before this job (or its next part) was submitted; nothing more was
    /// paid. Retryable the next UTC day; its paid parts are kept.
    SpendCapReached,
    /// Its producer cancelled the job (a message to the control exchange)
    /// before it was submitted, or between two of its parts: nothing more
    /// was paid. Published as `tts.job.cancelled`; paid parts are kept for a
    /// resend within the resume window.
    Cancelled,
}

impl ErrorCode {
    /// Every code, for documentation checks and exhaustive tests.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::ContentBlocked,
        ErrorCode::InferenceFailed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::InsufficientCredits,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Expired,
        ErrorCode::ModelUnavailable,
        ErrorCode::ProtocolError,
        ErrorCode::StorageFailed,
        ErrorCode::StorageAccessDenied,
        ErrorCode::StorageBucketMissing,
        ErrorCode::AudioInvalid,
        ErrorCode::RenderFailed,
        ErrorCode::PoisonMessage,
        ErrorCode::SubmissionUnconfirmed,
        ErrorCode::StorageRejected,
        ErrorCode::OutputKeyForbidden,
        ErrorCode::OutputKeyTaken,
        ErrorCode::MediaRefused,
        ErrorCode::Internal,
        ErrorCode::SpendCapReached,
        ErrorCode::Cancelled,
    ];

    /// The code's one spelling, in events, dead-letter headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
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
            ErrorCode::StorageAccessDenied => "storage_access_denied",
            ErrorCode::StorageBucketMissing => "storage_bucket_missing",
            ErrorCode::AudioInvalid => "audio_invalid",
            ErrorCode::RenderFailed => "render_failed",
            ErrorCode::PoisonMessage => "poison_message",
            ErrorCode::SubmissionUnconfirmed => "submission_unconfirmed",
            ErrorCode::StorageRejected => "storage_rejected",
            ErrorCode::OutputKeyForbidden => "output_key_forbidden",
            ErrorCode::OutputKeyTaken => "output_key_taken",
            ErrorCode::MediaRefused => "media_refused",
            ErrorCode::Internal => "internal",
            ErrorCode::SpendCapReached => "spend_cap_reached",
            ErrorCode::Cancelled => "cancelled",
        }
    }

    /// Whether this code is about storage rather than Segmind (which decides
    /// what a pause probes).
    pub fn is_storage(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageFailed
                | ErrorCode::StorageAccessDenied
                | ErrorCode::StorageBucketMissing
        )
    }

    /// Whether a job that failed with this code may still get audio from the
    /// Segmind request it already paid for, so its checkpoint is kept: a
    /// resend of the same job id within `jobs.resume_window` resumes that
    /// request instead of paying again. Codes about the request's own result
    /// (it FAILED, expired, gave unusable audio) or about the request as
    /// sent drop the checkpoint, so a resend starts afresh.
    pub fn keeps_paid_request(self) -> bool {
        match self {
            ErrorCode::Timeout
            | ErrorCode::RateLimited
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::InsufficientCredits
            | ErrorCode::StorageFailed
            | ErrorCode::StorageAccessDenied
            | ErrorCode::StorageBucketMissing
            | ErrorCode::StorageRejected
            | ErrorCode::OutputKeyTaken
            | ErrorCode::MediaRefused
            | ErrorCode::RenderFailed
            | ErrorCode::Internal
            | ErrorCode::PoisonMessage
            | ErrorCode::SpendCapReached
            | ErrorCode::Cancelled => true,
            ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::ContentBlocked
            | ErrorCode::InferenceFailed
            | ErrorCode::Expired
            | ErrorCode::ModelUnavailable
            | ErrorCode::ProtocolError
            | ErrorCode::AudioInvalid
            | ErrorCode::SubmissionUnconfirmed
            | ErrorCode::OutputKeyForbidden => false,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failure means for the work around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying the same call after a backoff.
    Transient,
    /// This job cannot succeed as it is; retrying the call is pointless.
    Permanent,
    /// Nothing will succeed until the account is fixed (key, permission,
    /// credits, bucket access).
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

/// Most bytes of a failure's message wherever it leaves the worker: an
/// event's `error.message`, a dead-letter header, a log line. A request can
/// carry huge invalid fields; what describes them must stay small.
pub const MESSAGE_LIMIT: usize = 1024;

/// `message` cut to at most [`MESSAGE_LIMIT`] bytes, at a character
/// boundary, with `…` to say so.
pub fn capped(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MESSAGE_LIMIT {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut end = MESSAGE_LIMIT - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &message[..end]))
}

impl Failure {
    /// The message as it leaves the worker ([`capped`]).
    pub fn short_message(&self) -> std::borrow::Cow<'_, str> {
        capped(&self.message)
    }

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
                    | ErrorCode::SubmissionUnconfirmed
                    // once replicas that know its version run
                    | ErrorCode::UnsupportedVersion
                    // the next UTC day
                    | ErrorCode::SpendCapReached
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

    /// A request of `version`, newer than this replica's `known`, handed
    /// back for `waited` without any replica taking it.
    pub fn unsupported_version(version: u64, known: u32, waited: std::time::Duration) -> Self {
        Failure {
            code: ErrorCode::UnsupportedVersion,
            class: Class::Permanent,
            message: format!(
                "request version {version} is newer than this worker knows (1 to {known}) and no replica took it in {} s; \
                 the original is in the dead-letter queue: send it again once workers that know version {version} run, \
                 or send a version {known} request",
                waited.as_secs()
            ),
            http_status: None,
        }
    }

    /// A message delivered `attempt` times, more than `max_deliveries`.
    pub fn poison(attempt: u32, max_deliveries: u32) -> Self {
        Failure {
            code: ErrorCode::PoisonMessage,
            class: Class::Permanent,
            message: format!(
                "delivered {attempt} times without finishing (limit {max_deliveries}): it crashed, stalled or was interrupted each time"
            ),
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
    /// Stop taking work until the account is fixed, and hand the delivery
    /// back without counting it (the account's fault is not the job's).
    Pause,
}

/// Where a delivery stands when its job fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempt {
    /// The delivery's number, from 1 (deliveries that counted, plus this one).
    pub number: u32,
    /// Pauses this message has already caused (each time the probe then
    /// said the account works, since it was delivered again).
    pub pauses: u32,
}

/// The limits [`disposition`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deliveries after which a message is never requeued.
    pub max_deliveries: u32,
    /// Pauses one message may cause before its account-level failure is
    /// taken as its own.
    pub max_pause_cycles: u32,
    pub policy: AccountPolicy,
}

/// Decides a failed job's fate. An account-level failure pauses
/// consumption, unless this message has already caused
/// `max_pause_cycles` pauses and `account_works` (a probe of the failing
/// call, made just now, passed): then the refusal concerns this request and
/// it fails.
pub fn disposition(
    failure: &Failure,
    attempt: Attempt,
    limits: Limits,
    account_works: bool,
) -> Disposition {
    match failure.class {
        Class::Account
            if limits.policy == AccountPolicy::Pause
                && (attempt.pauses < limits.max_pause_cycles || !account_works) =>
        {
            Disposition::Pause
        }
        Class::Transient if attempt.number < limits.max_deliveries => Disposition::Requeue,
        _ => Disposition::Fail,
    }
}

/// Which call of the Segmind flow something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Submit,
    Status,
    Result,
    /// The audio download from the media host (a CDN, not the API).
    Download,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Submit => "submit",
            Call::Status => "status",
            Call::Result => "result",
            Call::Download => "download",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an S3 call's error was, as the storage adapter reads it from the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// No answer: connection refused or reset, DNS, TLS.
    Unreachable,
    /// The call ran past `s3.operation_timeout` (or the SDK's own timeouts).
    TimedOut,
    /// SlowDown / Throttling / 429 / 503.
    Throttled,
    /// Another 5xx.
    ServerError,
    /// NoSuchBucket.
    NoSuchBucket,
    /// AccessDenied / 403.
    AccessDenied,
    /// An object-level refusal no retry can change: 400, 409, 412, 413,
    /// KeyTooLong, EntityTooLarge.
    Rejected,
    /// InvalidAccessKeyId, SignatureDoesNotMatch, expired or missing credentials.
    InvalidCredentials,
    /// Anything else (an unexpected 4xx, a body that could not be read).
    Other,
}

/// What went wrong, in facts, as an adapter reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault<'a> {
    /// The API (or the media host, for [`Call::Download`]) answered this status.
    Http { call: Call, status: u16 },
    /// No HTTP answer.
    Network { timeout: bool },
    /// The answer broke the protocol.
    Protocol,
    /// Segmind reports the job FAILED with this message.
    JobFailed {
        message: &'a str,
        http_status: Option<u16>,
    },
    /// The job's deadline passed before a result arrived.
    Deadline,
    /// The delivery spent its status polls (`segmind.max_polls_per_job`)
    /// while the request was still pending.
    PollBudget,
    /// A submission's answer was lost after it was sent, and the policy is
    /// not to retry it.
    SubmissionUnconfirmed,
    /// The output key resolves under the worker's own objects.
    OutputKeyForbidden,
    /// The output key holds another job's object.
    OutputKeyTaken,
    /// The media URL (or a redirect) is not one the worker fetches.
    MediaRefused,
    /// A submission was withheld before it was paid: the tenant's cap of
    /// the day is reached, or the job was cancelled.
    Withheld { cancelled: bool },
    /// The audio is empty, too large, truncated or not audio.
    BadAudio,
    /// Rendering the deliverable failed.
    Render,
    /// An invariant of the worker's own broke.
    Internal,
    /// An S3 call failed.
    Storage(StorageFault),
}

/// An error that can say what happened. Its `Display` is the failure message.
pub trait AsFault: fmt::Display {
    fn fault(&self) -> Fault<'_>;
}

/// Decides what an error means. `block_patterns` are lower-cased substrings
/// that mark a FAILED job's message as a content (RAI/safety) block.
pub fn classify(err: &dyn AsFault, block_patterns: &[String]) -> Failure {
    let (code, class, http_status) = match err.fault() {
        Fault::Http {
            call: Call::Download,
            status,
        } if status < 500 && status != 429 => {
            // The CDN is not the API: its 4xx mean the result is gone or
            // broken, never an account problem.
            (ErrorCode::AudioInvalid, Class::Permanent, Some(status))
        }
        Fault::Http { call, status } => {
            let (code, class) = classify_status(status, call);
            (code, class, Some(status))
        }
        Fault::Network { timeout: true } => (ErrorCode::Timeout, Class::Transient, None),
        Fault::Network { timeout: false } => {
            (ErrorCode::UpstreamUnavailable, Class::Transient, None)
        }
        Fault::Protocol => (ErrorCode::ProtocolError, Class::Permanent, None),
        Fault::Internal => (ErrorCode::Internal, Class::Transient, None),
        Fault::JobFailed {
            message,
            http_status,
        } => {
            let code = if is_content_block(message, block_patterns) {
                ErrorCode::ContentBlocked
            } else {
                ErrorCode::InferenceFailed
            };
            (code, Class::Permanent, http_status)
        }
        Fault::Deadline => (ErrorCode::Timeout, Class::Permanent, None),
        // Not the end: the next delivery resumes the same request.
        Fault::PollBudget => (ErrorCode::Timeout, Class::Transient, None),
        Fault::SubmissionUnconfirmed => (ErrorCode::SubmissionUnconfirmed, Class::Permanent, None),
        Fault::OutputKeyForbidden => (ErrorCode::OutputKeyForbidden, Class::Permanent, None),
        Fault::OutputKeyTaken => (ErrorCode::OutputKeyTaken, Class::Permanent, None),
        Fault::BadAudio => (ErrorCode::AudioInvalid, Class::Permanent, None),
        Fault::MediaRefused => (ErrorCode::MediaRefused, Class::Permanent, None),
        Fault::Withheld { cancelled: true } => (ErrorCode::Cancelled, Class::Permanent, None),
        Fault::Withheld { cancelled: false } => {
            (ErrorCode::SpendCapReached, Class::Permanent, None)
        }
        // Retried by redelivery (up to the poison limit) from the stored
        // parts: nothing is paid again.
        Fault::Render => (ErrorCode::RenderFailed, Class::Transient, None),
        Fault::Storage(kind) => {
            let (code, class) = match kind {
                StorageFault::NoSuchBucket => (ErrorCode::StorageBucketMissing, Class::Account),
                StorageFault::AccessDenied | StorageFault::InvalidCredentials => {
                    (ErrorCode::StorageAccessDenied, Class::Account)
                }
                StorageFault::Rejected => (ErrorCode::StorageRejected, Class::Permanent),
                StorageFault::Unreachable
                | StorageFault::TimedOut
                | StorageFault::Throttled
                | StorageFault::ServerError
                | StorageFault::Other => (ErrorCode::StorageFailed, Class::Transient),
            };
            (code, class, None)
        }
    };
    Failure {
        code,
        class,
        message: err.to_string(),
        http_status,
    }
}

/// Maps an HTTP status of the Segmind API to a code and class. `call`
/// matters for 404: on submit the model is missing, later the request expired.
fn classify_status(status: u16, call: Call) -> (ErrorCode, Class) {
    match status {
        400 => (ErrorCode::InvalidRequest, Class::Permanent),
        401 => (ErrorCode::Unauthorized, Class::Account),
        403 => (ErrorCode::Forbidden, Class::Account),
        404 if call == Call::Submit => (ErrorCode::ModelUnavailable, Class::Permanent),
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
fn is_content_block(message: &str, patterns: &[String]) -> bool {
    let lower = message.to_lowercase();
    patterns.iter().any(|p| lower.contains(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_leaves_the_worker_capped_at_a_character_boundary() {
        assert_eq!(capped("short"), "short");
        let long = "é".repeat(2_000);
        let cut = capped(&long);
        assert!(cut.len() <= MESSAGE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.len() > MESSAGE_LIMIT - 8);
        let failure = Failure::invalid_request(long.clone());
        assert_eq!(failure.short_message(), cut);
    }

    fn patterns() -> Vec<String> {
        ["rai", "safety", "blocked", "prohibited", "policy"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A stand-in adapter error reporting a given fault.
    struct Reported(Fault<'static>);

    impl fmt::Display for Reported {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl AsFault for Reported {
        fn fault(&self) -> Fault<'_> {
            self.0
        }
    }

    fn of(fault: Fault<'static>) -> Failure {
        classify(&Reported(fault), &patterns())
    }

    #[test]
    fn every_documented_status_code_is_classified() {
        use Class::*;
        use ErrorCode::*;
        let table = [
            (400, Call::Submit, InvalidRequest, Permanent),
            (401, Call::Submit, Unauthorized, Account),
            (401, Call::Status, Unauthorized, Account),
            (403, Call::Submit, Forbidden, Account),
            (404, Call::Submit, ModelUnavailable, Permanent),
            (404, Call::Status, Expired, Permanent),
            (404, Call::Result, Expired, Permanent),
            (405, Call::Submit, ProtocolError, Permanent),
            (406, Call::Submit, InsufficientCredits, Account),
            (410, Call::Submit, ModelUnavailable, Permanent),
            (422, Call::Status, InferenceFailed, Permanent),
            (429, Call::Submit, RateLimited, Transient),
            (429, Call::Status, RateLimited, Transient),
            (500, Call::Submit, UpstreamUnavailable, Transient),
            (502, Call::Status, UpstreamUnavailable, Transient),
            (503, Call::Result, UpstreamUnavailable, Transient),
            (504, Call::Submit, UpstreamUnavailable, Transient),
            (599, Call::Submit, UpstreamUnavailable, Transient),
            (418, Call::Submit, ProtocolError, Permanent),
        ];
        for (status, call, code, class) in table {
            let f = of(Fault::Http { call, status });
            assert_eq!((f.code, f.class), (code, class), "{status} on {call}");
            assert_eq!(f.http_status, Some(status));
        }
    }

    #[test]
    fn failed_jobs_split_into_content_blocks_and_inference_failures() {
        let f = of(Fault::JobFailed {
            message: "Request blocked by RAI safety filter",
            http_status: Some(422),
        });
        assert_eq!(f.code, ErrorCode::ContentBlocked);
        assert_eq!(f.http_status, Some(422));
        assert!(!f.retryable());

        let f = of(Fault::JobFailed {
            message: "Model returned no candidates",
            http_status: Some(422),
        });
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
        let f = of(Fault::Http {
            call: Call::Download,
            status: 403,
        });
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::AudioInvalid, Class::Permanent)
        );
        for status in [503, 429] {
            let f = of(Fault::Http {
                call: Call::Download,
                status,
            });
            assert_eq!(f.class, Class::Transient, "{status}");
        }
    }

    #[test]
    fn deadline_network_protocol_and_audio_faults() {
        let f = of(Fault::Deadline);
        assert_eq!((f.code, f.class), (ErrorCode::Timeout, Class::Permanent));
        assert!(f.retryable(), "a job that timed out may succeed later");
        let f = of(Fault::PollBudget);
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::Timeout, Class::Transient),
            "a spent poll budget requeues: the next delivery resumes the request"
        );
        let f = of(Fault::SubmissionUnconfirmed);
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::SubmissionUnconfirmed, Class::Permanent)
        );
        assert!(f.retryable(), "the producer decides whether to pay again");
        for (fault, code) in [
            (Fault::OutputKeyForbidden, ErrorCode::OutputKeyForbidden),
            (Fault::OutputKeyTaken, ErrorCode::OutputKeyTaken),
        ] {
            let f = of(fault);
            assert_eq!((f.code, f.class), (code, Class::Permanent));
            assert!(!f.retryable(), "{code}: the same request fails again");
        }
        let f = of(Fault::Network { timeout: true });
        assert_eq!((f.code, f.class), (ErrorCode::Timeout, Class::Transient));
        let f = of(Fault::Network { timeout: false });
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::UpstreamUnavailable, Class::Transient)
        );
        let f = of(Fault::Protocol);
        assert_eq!(f.code, ErrorCode::ProtocolError);
        assert!(!f.retryable());
        let f = of(Fault::BadAudio);
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::AudioInvalid, Class::Permanent)
        );
        assert_eq!(f.message, "BadAudio", "the error's Display is the message");
    }

    #[test]
    fn storage_faults_split_into_transient_and_account_level() {
        use StorageFault::*;
        let table = [
            (Unreachable, ErrorCode::StorageFailed, Class::Transient),
            (TimedOut, ErrorCode::StorageFailed, Class::Transient),
            (Throttled, ErrorCode::StorageFailed, Class::Transient),
            (ServerError, ErrorCode::StorageFailed, Class::Transient),
            (Other, ErrorCode::StorageFailed, Class::Transient),
            (
                NoSuchBucket,
                ErrorCode::StorageBucketMissing,
                Class::Account,
            ),
            (AccessDenied, ErrorCode::StorageAccessDenied, Class::Account),
            (
                InvalidCredentials,
                ErrorCode::StorageAccessDenied,
                Class::Account,
            ),
        ];
        for (kind, code, class) in table {
            let f = of(Fault::Storage(kind));
            assert_eq!((f.code, f.class), (code, class), "{kind:?}");
            assert!(f.retryable(), "{kind:?}: fixable by operators or time");
            assert!(f.code.is_storage());
        }
        let f = of(Fault::Storage(Rejected));
        assert_eq!(
            (f.code, f.class),
            (ErrorCode::StorageRejected, Class::Permanent),
            "an object the store refuses is refused again: never requeued"
        );
        assert!(!f.retryable());
    }

    #[test]
    fn a_failed_job_keeps_its_checkpoint_while_its_paid_request_may_still_give_audio() {
        use ErrorCode::*;
        for code in [
            Timeout,
            RateLimited,
            UpstreamUnavailable,
            StorageFailed,
            Forbidden,
            RenderFailed,
        ] {
            assert!(code.keeps_paid_request(), "{code}");
        }
        for code in [
            ContentBlocked,
            InferenceFailed,
            Expired,
            AudioInvalid,
            InvalidRequest,
        ] {
            assert!(!code.keeps_paid_request(), "{code}");
        }
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
        let bucket = f(ErrorCode::StorageBucketMissing, Class::Account);
        use AccountPolicy as P;
        use Disposition as D;
        // (failure, delivery, pauses caused, max deliveries, policy, whether
        // a probe passes now, expected); at most 3 pause cycles.
        let table = [
            (&transient, 1, 0, 5, P::Pause, true, D::Requeue),
            (&transient, 4, 0, 5, P::Pause, true, D::Requeue),
            (&transient, 5, 0, 5, P::Pause, true, D::Fail), // the last allowed delivery ends the job
            (&transient, 9, 0, 5, P::Fail, true, D::Fail),
            (&permanent, 1, 0, 5, P::Pause, true, D::Fail),
            (&permanent, 1, 0, 5, P::Fail, true, D::Fail),
            (&account, 1, 0, 5, P::Pause, true, D::Pause),
            (&account, 7, 0, 5, P::Pause, true, D::Pause), // pausing is not the job's fault
            (&account, 1, 2, 5, P::Pause, true, D::Pause),
            (&account, 1, 3, 5, P::Pause, true, D::Fail), // it keeps pausing a working account: its own refusal
            (&account, 1, 3, 5, P::Pause, false, D::Pause), // the account is broken: still not the job's fault
            (&account, 1, 0, 5, P::Fail, false, D::Fail),
            (&bucket, 1, 0, 5, P::Pause, true, D::Pause),
            (&bucket, 1, 3, 5, P::Pause, true, D::Fail),
            (&bucket, 1, 3, 5, P::Pause, false, D::Pause),
            (&bucket, 1, 0, 5, P::Fail, true, D::Fail),
        ];
        for (failure, number, pauses, max, policy, works, expected) in table {
            let limits = Limits {
                max_deliveries: max,
                max_pause_cycles: 3,
                policy,
            };
            assert_eq!(
                disposition(failure, Attempt { number, pauses }, limits, works),
                expected,
                "{:?} attempt {number}/{max}, {pauses} pauses, {policy:?}, works {works}",
                failure.code
            );
        }
    }

    #[test]
    fn every_code_has_one_distinct_snake_case_spelling() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "{s} is spelled twice");
            assert_eq!(code.to_string(), s);
        }
    }

    #[test]
    fn every_code_is_documented_in_the_readme_error_table() {
        let readme = include_str!("../README.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` |", code.as_str());
            assert!(readme.contains(&row), "README.md's error table lacks {row}");
        }
    }
}
