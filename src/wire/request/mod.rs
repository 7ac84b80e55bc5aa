//! The request message producers publish, decoded into a [`TtsJob`] (or
//! every rule it breaks) here and nowhere else; and the same format as
//! producers write it ([`RequestBody`], used by `tts-worker submit`).
//!
//! One file per field (or group of fields) parses it from the JSON object,
//! rejecting each broken rule under its field; [`decode_request`] calls them
//! in a fixed order, so the errors of a request are listed in that order.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::RequestLimits;
use crate::job::{DEFAULT_VOICE, JobId, SpeechRequest, TtsJob};

mod body;
mod deliverable;
mod fields;
mod job_id;
mod json;
mod metadata;
mod output_key;
mod style;
mod temperature;
mod text;
mod version;
mod voice;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub use style::MAX_STYLE_CHARS;

/// Every request field and the request version it came in. A request says
/// its version in `version` (absent: 1). A field newer than the request's
/// version is refused even by a replica that knows it, so a producer learns
/// to declare the version before a replica that does not know the field
/// would meet it (see [`decode_request`]).
pub const FIELDS: [(&str, u32); 15] = [
    ("version", 1),
    ("text", 1),
    ("style", 1),
    ("voice_1", 1),
    ("voice_2", 1),
    ("temperature", 1),
    ("job_id", 1),
    ("output_key", 1),
    ("metadata", 1),
    ("format", 2),
    ("sample_rate", 2),
    ("bitrate_kbps", 2),
    ("loudness_lufs", 2),
    ("true_peak_db", 2),
    ("captions", 2),
];

/// The newest version a request may use without declaring it: versions 1
/// and 2 predate the `version` field, so a request without it may use their
/// fields (producers written before versions keep working). A field of a
/// later version needs `"version"` declared; a declared version must cover
/// the fields the request uses.
pub const UNDECLARED_UP_TO: u32 = 2;

/// The version a field came in; `None` for a field no version has.
pub fn field_version(field: &str) -> Option<u32> {
    FIELDS.iter().find(|(f, _)| *f == field).map(|(_, v)| *v)
}

/// The fields a replica accepting versions up to `known` knows.
fn known_fields(known: u32) -> impl Iterator<Item = &'static str> {
    FIELDS
        .iter()
        .filter(move |(_, since)| *since <= known)
        .map(|(f, _)| *f)
}

/// A field is used when it is there and not null.
fn used(object: &Map<String, Value>, key: &str) -> bool {
    object.get(key).is_some_and(|v| !v.is_null())
}

/// One broken rule of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON field, `body` for the whole message, or `message_id` for the
    /// AMQP property.
    pub field: String,
    pub rule: String,
}

/// Every broken rule of a rejected request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .errors.iter().map(|e| format!("{}: {}", e.field, e.rule)).collect::<Vec<_>>().join("; "))]
pub struct InvalidRequest {
    pub errors: Vec<FieldError>,
}

/// Why a request does not become a job here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// It breaks the rules of its version.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// It says a version newer than this replica accepts: a newer replica
    /// may take it (its fields are not judged here).
    #[error("request version {version} is newer than this replica knows (1 to {known})")]
    NewerVersion { version: u64, known: u32 },
}

impl InvalidRequest {
    fn single(field: &str, rule: impl Into<String>) -> Self {
        InvalidRequest {
            errors: vec![FieldError {
                field: field.into(),
                rule: rule.into(),
            }],
        }
    }
}

/// A request message, decoded as far as it goes.
///
/// `job_id` and `metadata` are known even for invalid requests whenever they
/// can be, so the failure event can carry them.
#[derive(Debug)]
pub struct DecodedRequest {
    pub job_id: JobId,
    pub metadata: Option<Map<String, Value>>,
    pub job: Result<TtsJob, RequestError>,
}

/// Decodes and validates a request body. Never panics, whatever the bytes.
///
/// The job id is the body's `job_id`, else the AMQP `message_id`, else one
/// derived from the bytes (so a redelivery keeps its id).
///
/// A request whose `version` is newer than `limits.max_request_version` is
/// [`RequestError::NewerVersion`], whatever its other fields; otherwise a
/// field of a version this replica knows but the request does not declare is
/// refused (with the version to declare), and a field of no version it knows
/// is an unknown field (typos such as `voice1` are caught).
pub fn decode_request(
    body: &[u8],
    message_id: Option<&str>,
    limits: &RequestLimits,
) -> DecodedRequest {
    // Before parsing: a body's size is all that is read of one too large.
    if body.len() > limits.body_bytes() {
        return DecodedRequest {
            job_id: job_id::fallback(body, message_id, limits),
            metadata: None,
            job: Err(InvalidRequest::single(
                "body",
                format!(
                    "is {} bytes, over limits.max_body_bytes ({})",
                    body.len(),
                    limits.body_bytes()
                ),
            )
            .into()),
        };
    }
    let object = match body::parse_object(body) {
        Ok(o) => o,
        Err(e) => {
            return DecodedRequest {
                job_id: job_id::fallback(body, message_id, limits),
                metadata: None,
                job: Err(e.into()),
            };
        }
    };

    let mut errors = Vec::new();
    let mut reject = |field: &str, rule: String| {
        errors.push(FieldError {
            field: field.into(),
            rule,
        })
    };

    let job_id = job_id::parse(&object, body, message_id, limits, &mut reject);
    let metadata = metadata::parse(&object, limits, &mut reject);

    let known = limits.max_request_version;
    let version = version::parse(&object, known, &mut reject);
    if version > u64::from(known) {
        return DecodedRequest {
            job_id,
            metadata,
            job: Err(RequestError::NewerVersion { version, known }),
        };
    }
    fields::check(&object, version, known, &mut reject);

    let text = text::parse(&object, limits, &mut reject);
    let voice_1 = voice::parse(&object, "voice_1", &mut reject).unwrap_or(DEFAULT_VOICE);
    let voice_2 = voice::parse(&object, "voice_2", &mut reject);
    if let (Some(text), Some(_)) = (&text, voice_2) {
        text::check_speakers(text, &mut reject);
    }
    let style = style::parse(&object, &mut reject);
    let temperature = temperature::parse(&object, &mut reject);
    let output_key = output_key::parse(&object, limits, &mut reject);
    let deliverable = deliverable::parse(&object, &mut reject);

    let job = match text {
        Some(text) if errors.is_empty() => Ok(TtsJob {
            id: job_id.clone(),
            speech: SpeechRequest {
                text: text.into(),
                voice_1,
                voice_2,
                temperature,
                style,
            },
            output_key,
            flow: crate::job::Flow::of(0, &job_id, None, metadata.as_ref()),
            metadata: metadata.clone(),
            deliverable,
        }),
        _ => Err(InvalidRequest { errors }.into()),
    };
    DecodedRequest {
        job_id,
        metadata,
        job,
    }
}

/// A request body as a producer writes it (used by `tts-worker submit`, and
/// the source of the contract's request schema: `wire::schema`).
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct RequestBody {
    /// The request version: the newest version whose fields the request
    /// uses (2: `format`, `sample_rate`, `bitrate_kbps`, `loudness_lufs`,
    /// `true_peak_db`, `captions`). Without it, the version the fields need,
    /// up to 2; a declared version must cover the fields used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// What to say: not blank. Dialogue starts each speaker's lines with
    /// `Speaker 1:` and `Speaker 2:`. A long text is cut into parts and
    /// delivered as one file.
    pub text: String,
    /// A manner of speaking ("Narrate calmly"), sent before the text (and
    /// before every part of a long text); not blank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// The voice, one of Gemini's 30 (default Kore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_1: Option<String>,
    /// The second speaker's voice, for a two-speaker dialogue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_2: Option<String>,
    /// Sampling temperature, 0 to 2 (default 0.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The job's id (else the AMQP message_id, else one derived from the
    /// bytes): the key of its checkpoint, its event and its default object
    /// key. A resend with the same id resumes instead of paying again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Where to store the audio, a relative key under the worker's
    /// `s3.output_prefix` (default `{s3.prefix}{job_id}.{extension}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// Any JSON object, echoed in the job's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Version 2. The delivered container and codec (default wav: what
    /// Segmind serves, 24 kHz mono).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Version 2. The delivered sample rate in Hz, one the format can be
    /// written at (default 24000; mulaw 8000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Version 2. The bitrate of mp3 or ogg in kbit/s, one the codec offers
    /// at the rate (default: 64/48/24 for mp3, 32/16 for ogg, by rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// Version 2. An integrated loudness target in LUFS (EBU R128); without
    /// it the audio keeps Gemini's level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<f64>,
    /// Version 2. The true-peak ceiling in dBTP for the loudness target
    /// (default -1): a peaky voice ends under its target rather than clip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_peak_db: Option<f64>,
    /// Version 2. Caption files to write beside the audio, cut at sentences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captions: Option<Vec<String>>,
}

impl RequestBody {
    /// This body with `version` set to the lowest version that has every
    /// field it uses (left out when that is 1).
    pub fn versioned(mut self) -> Self {
        let used = serde_json::to_value(&self)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let needed = used
            .keys()
            .filter_map(|k| field_version(k))
            .max()
            .unwrap_or(1);
        self.version = (needed > 1).then_some(needed);
        self
    }
}
