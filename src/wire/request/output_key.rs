//! `output_key`: where to store the audio, a relative object key (its rules
//! are [`ObjectKey::parse`]'s).

use serde_json::{Map, Value};

use super::json::type_name;
use crate::config::RequestLimits;
use crate::job::ObjectKey;

/// The request's `output_key`, or none when it is absent or breaks a rule.
pub(super) fn parse(
    object: &Map<String, Value>,
    limits: &RequestLimits,
    reject: &mut impl FnMut(&str, String),
) -> Option<ObjectKey> {
    match object.get("output_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => ObjectKey::parse(s, limits.max_output_key_len)
            .map_err(|rule| reject("output_key", rule))
            .ok(),
        Some(other) => {
            reject(
                "output_key",
                format!("must be a string, got {}", type_name(other)),
            );
            None
        }
    }
}
