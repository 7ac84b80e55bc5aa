//! `text`: what to say; required, with something to speak (a letter or a
//! digit: zero-width characters and punctuation alone would be paid for as
//! silence), at most `max_text_chars` characters, no grapheme cluster a
//! part cannot hold. A dialogue for two voices names its speakers.

use serde_json::{Map, Value};
use unicode_segmentation::UnicodeSegmentation;

use super::json::type_name;
use crate::config::RequestLimits;
use crate::plan::SPEAKER_LABELS;

/// Most characters in one grapheme cluster: a text is cut into parts between
/// clusters, never inside one, and the smallest part
/// (`long_text.part_chars`' lower bound) must hold it. No script needs more
/// than a handful; hundreds are an attack ("Zalgo" text).
pub const MAX_GRAPHEME_CHARS: usize = *crate::config::PART_CHARS_RANGE.start();

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
                return None;
            }
            if !s.chars().any(char::is_alphanumeric) {
                reject(
                    "text",
                    "has nothing to speak: no letter or digit (zero-width characters, punctuation and symbols alone are not spoken)".into(),
                );
                return None;
            }
            let widest = s
                .graphemes(true)
                .map(|g| g.chars().count())
                .max()
                .unwrap_or(0);
            if widest > MAX_GRAPHEME_CHARS {
                reject(
                    "text",
                    format!(
                        "holds a grapheme cluster of {widest} characters (a letter with its combining marks); at most {MAX_GRAPHEME_CHARS}, as the smallest part must hold one"
                    ),
                );
                return None;
            }
            Some(s.clone())
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
