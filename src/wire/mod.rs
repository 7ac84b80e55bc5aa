//! Wire formats: the request message producers publish ([`request`]), the
//! CloudEvents the worker emits ([`event`]) and the timing marks it writes
//! beside rendered audio ([`marks`]). Bytes become domain types
//! (`crate::job`) here and nowhere else; the rest of the crate never sees
//! JSON of these formats.

pub mod event;
pub mod marks;
pub mod request;
// The JSON Schemas of the contract, generated from these types: only the
// tests use them (they check `contract/schemas/` is what the types say).
#[cfg(test)]
pub mod schema;

pub use event::{
    CANCELLED_TYPE, COMPLETED_TYPE, CloudEvent, CompletedData, EVENT_CONTENT_TYPE, EventData,
    FAILED_TYPE, FailedData, PROGRESS_TYPE, ProgressData, decode_event, encode_event,
    encode_progress,
};
pub use request::{RequestBody, decode_request};

/// Dead-letter copy headers: why the request was rejected.
pub const DEAD_LETTER_CODE_HEADER: &str = "x-tts-error-code";
pub const DEAD_LETTER_MESSAGE_HEADER: &str = "x-tts-error-message";
pub const DEAD_LETTER_JOB_HEADER: &str = "x-tts-job-id";

/// W3C trace context headers (AMQP application properties, and CloudEvents
/// distributed-tracing extension attributes of the same names).
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";

/// W3C trace context as it travels with a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}
