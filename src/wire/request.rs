//! The request message producers publish, decoded into a [`TtsJob`] (or
//! every rule it breaks) here and nowhere else; and the same format as
//! producers write it ([`RequestBody`], used by `tts-worker submit`).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::RequestLimits;
use crate::deliverable::{Asked, Deliverable};
use crate::job::{
    DEFAULT_TEMPERATURE, DEFAULT_VOICE, JobId, ObjectKey, Speech, TEMPERATURE_RANGE, TtsJob, Voice,
};
use crate::plan::SPEAKER_LABELS;

/// Longest accepted `style` instruction, in characters: a manner of
/// speaking ("Narrate calmly, like a bedtime story"), not a second text.
pub const MAX_STYLE_CHARS: usize = 300;

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
    let fallback_id = || match message_id.map(|m| JobId::parse(m, limits.max_job_id_len)) {
        Some(Ok(id)) => id,
        _ => JobId::derive_from_body(body),
    };
    let object = match parse_object(body) {
        Ok(o) => o,
        Err(e) => {
            return DecodedRequest {
                job_id: fallback_id(),
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

    let job_id = match object.get("job_id") {
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
            fallback_id()
        }),
        Some(other) => {
            reject(
                "job_id",
                format!("must be a string, got {}", type_name(other)),
            );
            fallback_id()
        }
    };

    let metadata = match object.get("metadata") {
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
    };

    let known = limits.max_request_version;
    let declared = match object.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match whole_number(n) {
            Some(v) if v >= 1 => Some(v),
            _ => {
                reject(
                    "version",
                    format!(
                        "must be a whole number from 1 (this replica knows 1 to {known}), got {n}"
                    ),
                );
                None
            }
        },
        Some(other) => {
            reject(
                "version",
                format!("must be a whole number, got {}", type_name(other)),
            );
            None
        }
    };
    // A field is used when it is there and not null.
    let used = |key: &str| object.get(key).is_some_and(|v| !v.is_null());
    // Undeclared, a request is the version its fields need, up to the
    // versions that predate the `version` field (their producers cannot
    // have declared it); a later field must be declared.
    let version = declared.unwrap_or_else(|| {
        let needed = FIELDS
            .iter()
            .filter(|(field, since)| *since <= known && used(field))
            .map(|(_, since)| *since)
            .max()
            .unwrap_or(1);
        u64::from(needed.min(UNDECLARED_UP_TO))
    });
    if version > u64::from(known) {
        return DecodedRequest {
            job_id,
            metadata,
            job: Err(RequestError::NewerVersion { version, known }),
        };
    }

    for key in object.keys() {
        match field_version(key) {
            Some(since) if since <= known => {
                if u64::from(since) > version && used(key) {
                    reject(
                        key,
                        format!(
                            "came in request version {since}: send \"version\": {since} to use it (this request is version {version})"
                        ),
                    );
                }
            }
            _ => {
                let shown: String = key.chars().take(64).collect();
                let rule = match suggest_field(key, known) {
                    Some(field) => format!("unknown field {shown:?} (did you mean {field:?}?)"),
                    None => format!(
                        "unknown field {shown:?}; allowed: {}",
                        known_fields(known).collect::<Vec<_>>().join(", ")
                    ),
                };
                reject(key_label(key), rule);
            }
        }
    }

    let text = match object.get("text") {
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
    };

    let mut voice = |field: &str| -> Option<Voice> {
        match object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Voice::parse(s).map_err(|rule| reject(field, rule)).ok(),
            Some(other) => {
                reject(field, format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    };
    let voice_1 = voice("voice_1").unwrap_or(DEFAULT_VOICE);
    let voice_2 = voice("voice_2");
    if let (Some(text), Some(_)) = (&text, voice_2) {
        let speaks = |label: &str| text.lines().any(|l| l.trim_start().starts_with(label));
        if !SPEAKER_LABELS.iter().all(|l| speaks(l)) {
            reject(
                "text",
                "names a second voice (voice_2) but not the speakers the voices speak for: start the lines of the dialogue with \"Speaker 1:\" and \"Speaker 2:\"".into(),
            );
        }
    }

    let style = match object.get("style") {
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
    };

    let temperature = match object.get("temperature") {
        None | Some(Value::Null) => DEFAULT_TEMPERATURE,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if TEMPERATURE_RANGE.contains(&t) => t,
            _ => {
                reject("temperature", format!("must be between 0 and 2, got {n}"));
                DEFAULT_TEMPERATURE
            }
        },
        Some(other) => {
            reject(
                "temperature",
                format!("must be a number, got {}", type_name(other)),
            );
            DEFAULT_TEMPERATURE
        }
    };

    let output_key = match object.get("output_key") {
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
    };

    let deliverable = match Deliverable::new(&asked(&object, &mut reject)) {
        Ok(d) => d,
        Err(refusals) => {
            for r in refusals {
                reject(r.field, r.message);
            }
            Deliverable::default()
        }
    };

    let job = match text {
        Some(text) if errors.is_empty() => Ok(TtsJob {
            id: job_id.clone(),
            speech: Speech {
                text,
                voice_1,
                voice_2,
                temperature,
                style,
            },
            output_key,
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

/// The deliverable's fields as given, each of the JSON type it must be
/// (a wrong type is reported here; the values' rules in [`Deliverable::new`]).
fn asked(object: &Map<String, Value>, reject: &mut impl FnMut(&str, String)) -> Asked {
    let mut string = |field: &str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            reject(field, format!("must be a string, got {}", type_name(other)));
            None
        }
    };
    let format = string("format");
    let mut whole = |field: &str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match whole_number(n).and_then(|n| u32::try_from(n).ok()) {
            Some(v) => Some(v),
            None => {
                reject(field, format!("must be a positive whole number, got {n}"));
                None
            }
        },
        Some(other) => {
            reject(field, format!("must be a number, got {}", type_name(other)));
            None
        }
    };
    let sample_rate = whole("sample_rate");
    let bitrate_kbps = whole("bitrate_kbps");
    let mut number = |field: &str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            reject(field, format!("must be a number, got {}", type_name(other)));
            None
        }
    };
    let loudness_lufs = number("loudness_lufs");
    let true_peak_db = number("true_peak_db");
    let captions = match object.get("captions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => names.push(s.clone()),
                    other => reject(
                        "captions",
                        format!(
                            "must list strings (\"vtt\", \"srt\"), got {}",
                            type_name(other)
                        ),
                    ),
                }
            }
            Some(names)
        }
        Some(other) => {
            reject(
                "captions",
                format!("must be a list such as [\"vtt\"], got {}", type_name(other)),
            );
            None
        }
    };
    Asked {
        format,
        sample_rate,
        bitrate_kbps,
        loudness_lufs,
        true_peak_db,
        captions,
    }
}

/// A JSON number that is a whole number ≥ 0, written `64` or `64.0` (JSON
/// Schema and many serializers treat both as the integer 64).
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // 2^53: past it an f64 no longer holds every whole number.
        (f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0).then_some(f as u64)
    })
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, InvalidRequest> {
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

/// Field names in error messages are cut and cleaned, so a hostile key cannot
/// flood a log line or an AMQP header.
fn key_label(key: &str) -> &str {
    if key.len() <= 64 && key.chars().all(|c| !c.is_control()) {
        key
    } else {
        "(unknown field)"
    }
}

fn suggest_field(key: &str, known: u32) -> Option<&'static str> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let wanted = norm(key);
    known_fields(known).find(|k| {
        let k = norm(k);
        k == wanted
            || (wanted == "voice" && k == "voice1")
            || (wanted == "temp" && k == "temperature")
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> RequestLimits {
        RequestLimits::default()
    }

    fn decode(v: Value) -> DecodedRequest {
        decode_request(v.to_string().as_bytes(), None, &limits())
    }

    fn rejected(v: Value) -> InvalidRequest {
        invalid(decode(v.clone()).job, &v.to_string())
    }

    fn invalid(job: Result<TtsJob, RequestError>, what: &str) -> InvalidRequest {
        match job {
            Err(RequestError::Invalid(e)) => e,
            other => panic!("{what}: expected an invalid request, got {other:?}"),
        }
    }

    fn fields(e: &InvalidRequest) -> Vec<&str> {
        e.errors.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn a_minimal_request_gets_the_defaults() {
        let job = decode(json!({"text": "Hello"})).job.unwrap();
        assert_eq!(job.speech.text, "Hello");
        assert_eq!(job.speech.voice_1.name(), "Kore");
        assert_eq!(job.speech.voice_2, None);
        assert_eq!(job.speech.temperature, 0.4);
        assert_eq!(job.output_key, None);
    }

    #[test]
    fn a_full_request_is_decoded_with_canonical_voices() {
        let job = decode(json!({
            "text": "Speaker 1: Hi\nSpeaker 2: Hello",
            "voice_1": "puck", "voice_2": "CHARON", "temperature": 1.2,
            "job_id": "order-7", "output_key": "dialogues/7.wav",
            "metadata": {"tenant": "acme"}
        }))
        .job
        .unwrap();
        assert_eq!(job.id.as_str(), "order-7");
        assert_eq!(job.speech.voice_1.name(), "Puck");
        assert_eq!(job.speech.voice_2.map(|v| v.name()), Some("Charon"));
        assert_eq!(job.speech.temperature, 1.2);
        assert_eq!(job.output_key.unwrap().as_str(), "dialogues/7.wav");
        assert_eq!(job.metadata.unwrap()["tenant"], "acme");
    }

    #[test]
    fn every_rule_names_its_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!({}), "text", "required"),
            (json!({"text": "   "}), "text", "blank"),
            (json!({"text": 5}), "text", "string"),
            (json!({"text": "x".repeat(200_001)}), "text", "at most"),
            (
                json!({"text": "a", "voice_1": "Alexa"}),
                "voice_1",
                "unknown voice",
            ),
            (json!({"text": "a", "voice_1": 3}), "voice_1", "string"),
            (json!({"text": "a", "style": "  "}), "style", "blank"),
            (
                json!({"text": "a", "style": "s".repeat(MAX_STYLE_CHARS + 1)}),
                "style",
                "at most",
            ),
            (json!({"text": "a", "style": ["calm"]}), "style", "string"),
            (
                json!({"text": "Hi there", "voice_2": "Puck"}),
                "text",
                "Speaker 1:",
            ),
            (
                json!({"text": "Speaker 1: Hi\nand more", "voice_2": "Puck"}),
                "text",
                "Speaker 2:",
            ),
            (
                json!({"text": "a", "voice_2": "Sulafar"}),
                "voice_2",
                "Sulafat",
            ),
            (
                json!({"text": "a", "temperature": 2.5}),
                "temperature",
                "between 0 and 2",
            ),
            (
                json!({"text": "a", "temperature": -0.1}),
                "temperature",
                "between 0 and 2",
            ),
            (
                json!({"text": "a", "temperature": "hot"}),
                "temperature",
                "number",
            ),
            (
                json!({"text": "a", "job_id": "../x"}),
                "job_id",
                "must not start",
            ),
            (
                json!({"text": "a", "job_id": "a/b"}),
                "job_id",
                "only ASCII",
            ),
            (json!({"text": "a", "job_id": 7}), "job_id", "string"),
            (
                json!({"text": "a", "output_key": "/etc/passwd"}),
                "output_key",
                "relative",
            ),
            (
                json!({"text": "a", "output_key": "a/../../b"}),
                "output_key",
                "'..'",
            ),
            (json!({"text": "a", "metadata": [1]}), "metadata", "object"),
            (
                json!({"text": "a", "metadata": {"x": "y".repeat(9000)}}),
                "metadata",
                "at most",
            ),
            (
                json!({"text": "a", "voice1": "Puck"}),
                "voice1",
                "did you mean \"voice_1\"",
            ),
            (json!({"text": "a", "speed": 2}), "speed", "unknown field"),
        ];
        for (body, field, needle) in cases {
            let err = rejected(body.clone());
            assert!(fields(&err).contains(&field), "{body}: {err}");
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let err = rejected(json!({"voice1": "x", "temperature": 9}));
        assert_eq!(fields(&err), vec!["voice1", "text", "temperature"]);
    }

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

    fn older(known: u32) -> RequestLimits {
        RequestLimits {
            max_request_version: known,
            ..limits()
        }
    }

    #[test]
    fn a_declared_version_must_cover_the_fields_it_uses() {
        let e = rejected(json!({"version": 1, "text": "a", "format": "mp3", "sample_rate": 16000}));
        assert_eq!(fields(&e), ["format", "sample_rate"]);
        assert!(
            e.to_string()
                .contains("came in request version 2: send \"version\": 2"),
            "{e}"
        );
        let job = decode(json!({"version": 2, "text": "a", "format": "mp3"}))
            .job
            .unwrap();
        assert_eq!(job.deliverable.format.extension(), "mp3");
        // A version-1 request may say so; a null field is not used.
        assert!(decode(json!({"version": 1, "text": "a"})).job.is_ok());
        assert!(
            decode(json!({"version": 1, "text": "a", "format": null}))
                .job
                .is_ok()
        );
    }

    #[test]
    fn an_undeclared_version_is_what_its_fields_need_up_to_the_versions_before_the_field() {
        // Producers written before `version` existed keep working.
        let job = decode(json!({"text": "a", "format": "ogg", "captions": ["vtt"]}))
            .job
            .unwrap();
        assert_eq!(job.deliverable.format.extension(), "ogg");
        assert_eq!(
            UNDECLARED_UP_TO, 2,
            "a field of version 3 will need declaring"
        );
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let job = decode(json!({"version": 2.0, "text": "a", "format": "mp3",
                                "sample_rate": 44100.0, "bitrate_kbps": 128.0}))
        .job
        .unwrap();
        assert_eq!(job.deliverable.sample_rate, 44_100);
        assert_eq!(job.deliverable.bitrate_kbps, Some(128));
        let e = rejected(json!({"version": 2, "text": "a", "sample_rate": 16000.5}));
        assert_eq!(fields(&e), ["sample_rate"]);
    }

    #[test]
    fn a_newer_version_is_not_judged_here() {
        // Whatever its fields: a newer replica knows them.
        let d = decode(json!({"version": 3, "text": "a", "speed": 1.5, "job_id": "j-3"}));
        assert_eq!(d.job_id.as_str(), "j-3");
        assert_eq!(
            d.job.unwrap_err(),
            RequestError::NewerVersion {
                version: 3,
                known: 2
            }
        );
        // A replica that knows only version 1 hands version 2 back...
        let d = decode_request(
            br#"{"version": 2, "text": "a", "format": "mp3"}"#,
            None,
            &older(1),
        );
        assert_eq!(
            d.job.unwrap_err(),
            RequestError::NewerVersion {
                version: 2,
                known: 1
            }
        );
        // ...and calls version 2's fields unknown in a request that does
        // not declare it, as before versions existed.
        let d = decode_request(br#"{"text": "a", "format": "mp3"}"#, None, &older(1));
        let e = invalid(d.job, "an undeclared field older replicas do not know");
        assert!(e.to_string().contains("unknown field \"format\""), "{e}");
        assert!(
            !e.to_string().contains("captions"),
            "lists only what it knows: {e}"
        );
    }

    #[test]
    fn typos_are_caught_in_every_version() {
        for (limits, body) in [
            (limits(), json!({"text": "a", "voice1": "Puck"})),
            (
                limits(),
                json!({"version": 2, "text": "a", "voice1": "Puck"}),
            ),
            (older(1), json!({"text": "a", "voice1": "Puck"})),
        ] {
            let d = decode_request(body.to_string().as_bytes(), None, &limits);
            let e = invalid(d.job, &body.to_string());
            assert!(e.to_string().contains("did you mean \"voice_1\""), "{e}");
        }
        let e = rejected(json!({"version": 2, "text": "a", "Captions": ["vtt"]}));
        assert!(e.to_string().contains("did you mean \"captions\""), "{e}");
    }

    #[test]
    fn a_malformed_version_is_refused() {
        for bad in [json!(0), json!(-1), json!(1.5), json!("2"), json!([2])] {
            let e = rejected(json!({"version": bad, "text": "a"}));
            assert_eq!(fields(&e), ["version"], "{bad}");
        }
    }

    #[test]
    fn a_body_says_the_version_its_fields_need() {
        let plain = RequestBody {
            text: "a".into(),
            ..RequestBody::default()
        }
        .versioned();
        assert_eq!(plain.version, None);
        let mp3 = RequestBody {
            text: "a".into(),
            format: Some("mp3".into()),
            ..RequestBody::default()
        }
        .versioned();
        assert_eq!(mp3.version, Some(2));
        let bytes = serde_json::to_vec(&mp3).unwrap();
        assert!(decode_request(&bytes, None, &limits()).job.is_ok());
    }

    #[test]
    fn metadata_is_kept_for_failure_events() {
        let d = decode(json!({"text": "", "metadata": {"k": 1}}));
        assert!(d.job.is_err());
        assert_eq!(d.metadata.unwrap()["k"], 1);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// What every decode must guarantee, whatever the input.
        fn check_invariants(d: &DecodedRequest, limits: &RequestLimits) {
            assert!(JobId::parse(d.job_id.as_str(), limits.max_job_id_len).is_ok());
            match &d.job {
                Ok(job) => {
                    assert!(!job.speech.text.trim().is_empty());
                    assert!(job.speech.text.chars().count() <= limits.max_text_chars);
                    assert!(TEMPERATURE_RANGE.contains(&job.speech.temperature));
                    assert_eq!(job.id, d.job_id);
                    if let Some(k) = &job.output_key {
                        assert!(ObjectKey::parse(k.as_str(), limits.max_output_key_len).is_ok());
                    }
                }
                Err(RequestError::Invalid(e)) => {
                    assert!(!e.errors.is_empty(), "a rejection names at least one rule")
                }
                Err(RequestError::NewerVersion { version, known }) => {
                    assert!(*version > u64::from(*known))
                }
            }
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                any::<i64>().prop_map(|i| Value::Number(i.into())),
                ".{0,40}".prop_map(Value::String),
                prop::sample::select(crate::job::VOICES.to_vec())
                    .prop_map(|v| Value::String(v.into())),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn request_object() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                prop::sample::select(FIELDS.map(|(f, _)| f).to_vec()).prop_map(str::to_owned),
                ".{0,12}",
            ];
            prop::collection::btree_map(key, json_value(), 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512),
                                           message_id in prop::option::of(".{0,40}")) {
                let limits = RequestLimits::default();
                let d = decode_request(&bytes, message_id.as_deref(), &limits);
                check_invariants(&d, &limits);
            }

            #[test]
            fn arbitrary_json_objects_never_panic(obj in request_object()) {
                let limits = RequestLimits::default();
                let bytes = serde_json::to_vec(&obj).unwrap();
                let d = decode_request(&bytes, None, &limits);
                check_invariants(&d, &limits);
                // Unknown keys are always rejected.
                let unknown = obj.as_object().unwrap().keys().any(|k| field_version(k).is_none());
                if unknown {
                    prop_assert!(d.job.is_err());
                }
            }

            #[test]
            fn valid_requests_are_accepted_as_written(
                text in "[a-zA-Z][a-zA-Z ,.!?]{0,200}",
                voice in prop::sample::select(crate::job::VOICES.to_vec()),
                temperature in 0.0f64..=2.0,
                job_id in "[a-z0-9][a-z0-9_-]{0,40}",
            ) {
                let limits = RequestLimits::default();
                let body = serde_json::json!({
                    "text": text, "voice_1": voice.to_lowercase(), "temperature": temperature, "job_id": job_id
                });
                let job = decode_request(body.to_string().as_bytes(), None, &limits).job.unwrap();
                prop_assert_eq!(job.speech.text, text);
                prop_assert_eq!(job.speech.voice_1.name(), voice);
                prop_assert_eq!(job.speech.temperature, temperature);
                prop_assert_eq!(job.id.as_str(), job_id.as_str());
            }
        }
    }
}
