//! What the decoder's tests share: decoding a JSON value with the default
//! limits, and reading a rejection.

use serde_json::Value;

use super::{DecodedRequest, InvalidRequest, RequestError, decode_request};
use crate::config::RequestLimits;
use crate::job::TtsJob;

pub(super) fn limits() -> RequestLimits {
    RequestLimits::default()
}

/// The limits of a replica that accepts request versions up to `known`.
pub(super) fn older(known: u32) -> RequestLimits {
    RequestLimits {
        max_request_version: known,
        ..limits()
    }
}

pub(super) fn decode(v: Value) -> DecodedRequest {
    decode_request(v.to_string().as_bytes(), None, &limits())
}

pub(super) fn rejected(v: Value) -> InvalidRequest {
    invalid(decode(v.clone()).job, &v.to_string())
}

pub(super) fn invalid(job: Result<TtsJob, RequestError>, what: &str) -> InvalidRequest {
    match job {
        Err(RequestError::Invalid(e)) => e,
        other => panic!("{what}: expected an invalid request, got {other:?}"),
    }
}

pub(super) fn fields(e: &InvalidRequest) -> Vec<&str> {
    e.errors.iter().map(|f| f.field.as_str()).collect()
}
