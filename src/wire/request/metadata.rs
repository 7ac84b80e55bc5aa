//! `metadata`: any JSON object, echoed in the job's event. Kept even for an
//! invalid request whenever it can be, so the failure event can carry it.

use serde_json::{Map, Value};

use super::json::type_name;
use crate::config::RequestLimits;

/// The request's `metadata`: an object of at most `max_metadata_bytes`
/// serialized, or none.
pub(super) fn parse(
    object: &Map<String, Value>,
    limits: &RequestLimits,
    reject: &mut impl FnMut(&str, String),
) -> Option<Map<String, Value>> {
    match object.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > limits.max_metadata_bytes {
                reject(
                    "metadata",
                    format!(
                        "is {size} bytes serialized; at most {} allowed",
                        limits.max_metadata_bytes
                    ),
                );
                None
            } else {
                Some(m.clone())
            }
        }
        Some(other) => {
            reject(
                "metadata",
                format!("must be a JSON object, got {}", type_name(other)),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::wire::request::testing::decode;

    #[test]
    fn metadata_is_kept_for_failure_events() {
        let d = decode(json!({"text": "", "metadata": {"k": 1}}));
        assert!(d.job.is_err());
        assert_eq!(d.metadata.unwrap()["k"], 1);
    }
}
