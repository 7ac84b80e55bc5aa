//! `voice_1` and `voice_2`: one of Gemini's 30 voices, any case, in its
//! canonical spelling.

use serde_json::{Map, Value};

use super::json::type_name;
use crate::job::Voice;

/// The voice named in `field`, or none when it is absent or breaks a rule.
pub(super) fn parse(
    object: &Map<String, Value>,
    field: &str,
    reject: &mut impl FnMut(&str, String),
) -> Option<Voice> {
    match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Voice::parse(s).map_err(|rule| reject(field, rule)).ok(),
        Some(other) => {
            reject(field, format!("must be a string, got {}", type_name(other)));
            None
        }
    }
}
