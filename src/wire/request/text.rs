//! `text`: what to say; required, not blank, at most `max_text_chars`
//! characters. A dialogue for two voices names its speakers.

use serde_json::{Map, Value};

use super::json::type_name;
use crate::config::RequestLimits;
use crate::plan::SPEAKER_LABELS;

/// The request's `text`, or none when it breaks a rule (it is required).
pub(super) fn parse(
    object: &Map<String, Value>,
    limits: &RequestLimits,
    reject: &mut impl FnMut(&str, String),
) -> Option<String> {
    match object.get("text") {
        None | Some(Value::Null) => {
            reject("text", "is required".into());
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            reject("text", "must not be blank".into());
            None
        }
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars > limits.max_text_chars {
                reject(
                    "text",
                    format!(
                        "is {chars} characters; at most {} allowed",
                        limits.max_text_chars
                    ),
                );
                None
            } else {
                Some(s.clone())
            }
        }
        Some(other) => {
            reject(
                "text",
                format!("must be a string, got {}", type_name(other)),
            );
            None
        }
    }
}

/// A text for two voices (`voice_2` given) starts the lines of the dialogue
/// with every speaker's label (`Speaker 1:`, `Speaker 2:`).
pub(super) fn check_speakers(text: &str, reject: &mut impl FnMut(&str, String)) {
    let speaks = |label: &str| text.lines().any(|l| l.trim_start().starts_with(label));
    if !SPEAKER_LABELS.iter().all(|l| speaks(l)) {
        reject(
            "text",
            "names a second voice (voice_2) but not the speakers the voices speak for: start the lines of the dialogue with \"Speaker 1:\" and \"Speaker 2:\"".into(),
        );
    }
}
