//! `style`: a manner of speaking, sent before the text; not blank, at most
//! [`MAX_STYLE_CHARS`] characters, trimmed.

use serde_json::{Map, Value};

use super::json::type_name;

/// Longest accepted `style` instruction, in characters: a manner of
/// speaking ("Narrate calmly, like a bedtime story"), not a second text.
pub const MAX_STYLE_CHARS: usize = 300;

/// The request's `style`, trimmed, or none when it is absent or breaks a rule.
pub(super) fn parse(
    object: &Map<String, Value>,
    reject: &mut impl FnMut(&str, String),
) -> Option<String> {
    match object.get("style") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            reject("style", "must not be blank (leave it out instead)".into());
            None
        }
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars > MAX_STYLE_CHARS {
                reject(
                    "style",
                    format!("is {chars} characters; at most {MAX_STYLE_CHARS} allowed"),
                );
                None
            } else {
                Some(s.trim().to_owned())
            }
        }
        Some(other) => {
            reject(
                "style",
                format!("must be a string, got {}", type_name(other)),
            );
            None
        }
    }
}
