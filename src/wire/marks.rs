//! The timing marks written beside a rendered deliverable
//! (`{key}.marks.json`): where each part and each sentence of the text is in
//! the delivered audio, in milliseconds of the delivered file's timeline
//! (after resampling and the codec's delay). Its JSON Schema is generated
//! from these types into `contract/schemas/marks.schema.json`
//! ([`super::schema::marks_schema`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `$id` of the marks schema (`wire::schema`, test-only).
#[cfg(test)]
pub const MARKS_SCHEMA_ID: &str = "urn:tts-worker:schema:marks:1";

/// A delivered file's timing marks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Marks {
    /// The job the audio is for.
    pub job_id: String,
    /// The delivered audio's key in the bucket.
    pub audio_key: String,
    /// The delivered format (`wav`, `mp3`, `ogg`, `flac`, `mulaw`).
    pub format: String,
    /// The delivered audio's sample rate (Hz).
    pub sample_rate: u32,
    /// The delivered audio's length (ms).
    pub duration_ms: u64,
    /// Every part of the plan, in the order of the text.
    pub parts: Vec<PartMark>,
    /// Every sentence of the text, in order.
    pub sentences: Vec<SentenceMark>,
}

/// Where one part of the plan is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartMark {
    /// The part's index in the plan, from 0.
    pub index: usize,
    /// Character range `[start, end)` of the text (Unicode scalar values).
    pub chars: [usize; 2],
    /// Where its speech starts in the delivered audio (ms).
    pub start_ms: u64,
    /// Where its speech ends (ms).
    pub end_ms: u64,
    /// The Segmind request whose take it is.
    pub request_id: String,
}

/// Where one sentence of the text is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SentenceMark {
    /// The index of the part it is spoken in.
    pub part: usize,
    /// Character range `[start, end)` of the text (Unicode scalar values).
    pub chars: [usize; 2],
    /// The sentence as written.
    pub text: String,
    /// Where it starts in the delivered audio (ms).
    pub start_ms: u64,
    /// Where it ends (ms).
    pub end_ms: u64,
}
