//! `job_id`: the body's, else the AMQP `message_id`, else one derived from
//! the bytes (so a redelivery keeps its id). Resolved even for an invalid
//! request, so its failure event can carry it.

use serde_json::{Map, Value};

use super::json::type_name;
use crate::config::RequestLimits;
use crate::job::JobId;

/// The job id of a request whose body is a JSON object; a broken rule of
/// `job_id` (or of `message_id`, when it stands in) is rejected and the id
/// falls back as in [`fallback`].
pub(super) fn parse(
    object: &Map<String, Value>,
    body: &[u8],
    message_id: Option<&str>,
    limits: &RequestLimits,
    reject: &mut impl FnMut(&str, String),
) -> JobId {
    match object.get("job_id") {
        None | Some(Value::Null) => {
            match message_id.map(|m| JobId::parse(m, limits.max_job_id_len)) {
                Some(Ok(id)) => id,
                Some(Err(rule)) => {
                    reject("message_id", format!("used as job id: {rule}"));
                    JobId::derive_from_body(body)
                }
                None => JobId::derive_from_body(body),
            }
        }
        Some(Value::String(s)) => JobId::parse(s, limits.max_job_id_len).unwrap_or_else(|rule| {
            reject("job_id", rule);
            fallback(body, message_id, limits)
        }),
        Some(other) => {
            reject(
                "job_id",
                format!("must be a string, got {}", type_name(other)),
            );
            fallback(body, message_id, limits)
        }
    }
}

/// The job id when the body gives none: the AMQP `message_id` if it is a
/// valid id, else one derived from the bytes.
pub(super) fn fallback(body: &[u8], message_id: Option<&str>, limits: &RequestLimits) -> JobId {
    match message_id.map(|m| JobId::parse(m, limits.max_job_id_len)) {
        Some(Ok(id)) => id,
        _ => JobId::derive_from_body(body),
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::request::decode_request;
    use crate::wire::request::testing::{fields, invalid, limits};

    #[test]
    fn job_id_comes_from_body_then_message_id_then_bytes() {
        let body = br#"{"text":"a","job_id":"from-body"}"#;
        assert_eq!(
            decode_request(body, Some("from-msg"), &limits())
                .job_id
                .as_str(),
            "from-body"
        );
        let body = br#"{"text":"a"}"#;
        assert_eq!(
            decode_request(body, Some("from-msg"), &limits())
                .job_id
                .as_str(),
            "from-msg"
        );
        let a = decode_request(body, None, &limits()).job_id;
        let b = decode_request(body, None, &limits()).job_id;
        assert_eq!(a, b, "a redelivery keeps its derived id");
        // An invalid body still gets an id for its failure event.
        let d = decode_request(b"garbage", Some("m-1"), &limits());
        assert_eq!(d.job_id.as_str(), "m-1");
        // A hostile message_id is rejected, not used.
        let d = decode_request(body, Some("../../x"), &limits());
        assert!(fields(&invalid(d.job, "hostile message_id")).contains(&"message_id"));
    }
}
