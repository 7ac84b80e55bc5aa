//! The body as a whole: UTF-8 text holding one JSON object.

use serde_json::{Map, Value};

use super::InvalidRequest;
use super::json::type_name;

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, InvalidRequest> {
    let text = std::str::from_utf8(body).map_err(|e| {
        InvalidRequest::single(
            "body",
            format!(
                "is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(InvalidRequest::single(
            "body",
            "is empty; expected a JSON object",
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(InvalidRequest::single(
            "body",
            format!("must be a JSON object, got {}", type_name(&other)),
        )),
        Err(e) => Err(InvalidRequest::single(
            "body",
            format!("is not valid JSON ({e})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::request::decode_request;
    use crate::wire::request::testing::{fields, invalid, limits};

    #[test]
    fn malformed_bodies_are_named() {
        for (body, needle) in [
            (&b"\xff\xfe"[..], "UTF-8"),
            (b"", "empty"),
            (b"{\"text\":", "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (b"\"text\"", "JSON object"),
        ] {
            let d = decode_request(body, None, &limits());
            let err = invalid(d.job, "malformed body");
            assert_eq!(fields(&err), vec!["body"]);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
