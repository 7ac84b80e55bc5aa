//! The contract's JSON Schemas (draft-07), generated from the wire types.
//!
//! `contract/schemas/` holds this module's output and `contract/asyncapi.yaml`
//! refers to it; a test fails when the committed files and the types differ
//! (`TTS_UPDATE_CONTRACT=1 cargo test --lib wire::schema` rewrites them).
//! The derive gives each schema its structure, types and descriptions (the
//! doc comments of [`RequestBody`] and the event types); [`request_rules`]
//! and [`event_rules`] add the rules the decoder and the encoder keep, read
//! from the same constants they use, so a rule changed in the code changes
//! the schema.
//!
//! Draft-07 rather than 2020-12: it is the dialect AsyncAPI's own schema
//! format extends, so the AsyncAPI parser validates these schemas instead of
//! skipping an unknown `schemaFormat`, and every common validator knows it.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::event::{
    CANCELLED_SCHEMA_ID, CANCELLED_TYPE, COMPLETED_SCHEMA_ID, COMPLETED_TYPE, CloudEvent,
    CompletedData, FAILED_SCHEMA_ID, FAILED_TYPE, FailedData, PROGRESS_SCHEMA_ID, PROGRESS_TYPE,
    ProgressData,
};
use super::marks::{MARKS_SCHEMA_ID, Marks};
use super::request::{FIELDS, MAX_STYLE_CHARS, RequestBody, UNDECLARED_UP_TO};
use crate::config::{NEWEST_REQUEST_VERSION, RequestLimits};
use crate::deliverable::{CaptionFormat, Format, LOUDNESS_RANGE, SOURCE_RATE, TRUE_PEAK_RANGE};
use crate::failure::ErrorCode;
use crate::job::{TEMPERATURE_RANGE, VOICES};
use crate::plan::SPEAKER_LABELS;

/// `$id` of the request schema: its version is the newest request version.
pub const REQUEST_SCHEMA_ID: &str = "urn:tts-worker:schema:request:2";

/// One schema of the contract and the file it is committed as.
#[derive(Debug, Clone)]
pub struct ContractSchema {
    /// File name under `contract/schemas/`.
    pub file: &'static str,
    pub id: &'static str,
    pub schema: Value,
}

/// Every schema of the contract.
pub fn contract_schemas() -> [ContractSchema; 6] {
    [
        ContractSchema {
            file: "request.schema.json",
            id: REQUEST_SCHEMA_ID,
            schema: request_schema(),
        },
        ContractSchema {
            file: "job.completed.schema.json",
            id: COMPLETED_SCHEMA_ID,
            schema: completed_schema(),
        },
        ContractSchema {
            file: "job.failed.schema.json",
            id: FAILED_SCHEMA_ID,
            schema: failed_schema(),
        },
        ContractSchema {
            file: "job.cancelled.schema.json",
            id: CANCELLED_SCHEMA_ID,
            schema: cancelled_schema(),
        },
        ContractSchema {
            file: "job.progress.schema.json",
            id: PROGRESS_SCHEMA_ID,
            schema: progress_schema(),
        },
        ContractSchema {
            file: "marks.schema.json",
            id: MARKS_SCHEMA_ID,
            schema: marks_schema(),
        },
    ]
}

/// The timing marks object beside a rendered deliverable (not a message:
/// an object in the bucket, named by the completion event's `marks_key`).
pub fn marks_schema() -> Value {
    let mut schema = generate::<Marks>();
    if let Some(root) = schema.as_object_mut() {
        root.insert("$id".into(), json!(MARKS_SCHEMA_ID));
        root.insert("title".into(), json!("tts-worker timing marks"));
        root.insert(
            "description".into(),
            json!(
                "The timing marks written beside a rendered deliverable ({key}.marks.json; the completion \
                 event's marks_key names it): where each part and each sentence of the text is in the \
                 delivered audio, in milliseconds of the delivered file's timeline. Readers must ignore \
                 fields they do not know: fields may be added within a schema version."
            ),
        );
        if let Some(format) = root
            .get_mut("properties")
            .and_then(|p| p.get_mut("format"))
            .and_then(Value::as_object_mut)
        {
            let formats: Vec<Value> = Format::ALL.iter().map(|f| json!(f.as_str())).collect();
            format.insert("enum".into(), Value::Array(formats));
        }
    }
    schema
}

/// The request message's body.
pub fn request_schema() -> Value {
    let mut schema = generate::<RequestBody>();
    request_rules(&mut schema, &RequestLimits::default());
    schema
}

/// A `tts.job.completed` event, envelope and data.
pub fn completed_schema() -> Value {
    let mut schema = generate::<CloudEvent<CompletedData>>();
    event_rules(&mut schema, COMPLETED_TYPE, COMPLETED_SCHEMA_ID);
    schema
}

/// A `tts.job.failed` event, envelope and data.
pub fn failed_schema() -> Value {
    let mut schema = generate::<CloudEvent<FailedData>>();
    event_rules(&mut schema, FAILED_TYPE, FAILED_SCHEMA_ID);
    schema
}

/// A `tts.job.cancelled` event: a failure's data, its code `cancelled`.
pub fn cancelled_schema() -> Value {
    let mut schema = generate::<CloudEvent<FailedData>>();
    event_rules(&mut schema, CANCELLED_TYPE, CANCELLED_SCHEMA_ID);
    schema
}

/// A `tts.job.progress` event, envelope and data.
pub fn progress_schema() -> Value {
    let mut schema = generate::<CloudEvent<ProgressData>>();
    event_rules(&mut schema, PROGRESS_TYPE, PROGRESS_SCHEMA_ID);
    schema
}

fn generate<T: JsonSchema>() -> Value {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    tidy(&mut schema);
    schema
}

/// Drops the Rust integer widths schemars marks (`"format": "uint32"`: not
/// draft-07 formats, and strict validators such as Ajv refuse unknown
/// formats), and joins the doc comments' wrapped lines in descriptions.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let standard = map
                .get("format")
                .and_then(Value::as_str)
                .is_none_or(|f| matches!(f, "date-time" | "uri" | "uuid" | "email"));
            if !standard {
                map.remove("format");
            }
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = text
                    .split("\n\n")
                    .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// What the request schema cannot say, in its description (the corpus test
/// checks each of these against the decoder).
pub const REQUEST_SCHEMA_EXCEPTIONS: [&str; 8] = [
    "voice_1, voice_2, format and captions are accepted in any letter case and with surrounding spaces (\"puck\", \" MP3 \"), and captions also as \"webvtt\"; the schema lists the canonical spellings",
    "metadata must be at most limits.max_metadata_bytes (8192 by default) bytes once serialized as JSON",
    "output_key is limited to limits.max_output_key_len (512 by default) bytes of UTF-8, not characters",
    "the lengths here are the defaults of limits.max_text_chars, limits.max_job_id_len and limits.max_output_key_len; an operator may change them",
    "output_key must not lead into the worker's own area (under s3.prefix, or '_' when that is empty): such a job fails as output_key_forbidden",
    "without job_id, the AMQP message_id property is the job id and follows job_id's rules",
    "text must hold a letter or a digit (zero-width characters, punctuation and symbols alone are refused) and no grapheme cluster of more than 200 characters",
    "output_key must have no blank segment and no invisible, bidi or line-separator character (Unicode format characters such as U+200B and U+202E, and U+2028/U+2029)",
];

/// What Rust's `str::trim` (Unicode White_Space) removes, as a character
/// class spelled out: `\s` differs between regex engines (ECMAScript counts
/// U+FEFF, Rust and Python U+0085, Python U+001C–U+001F).
const WHITE_SPACE: &str =
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// The decoder's rules ([`super::decode_request`]) as schema keywords.
fn request_rules(schema: &mut Value, limits: &RequestLimits) {
    let voices: Vec<Value> = VOICES
        .iter()
        .map(|v| json!(v))
        .chain([Value::Null])
        .collect();
    let formats: Vec<Value> = Format::ALL
        .iter()
        .map(|f| json!(f.as_str()))
        .chain([Value::Null])
        .collect();
    let all_rates: Vec<u32> = {
        let mut r: Vec<u32> = Format::ALL
            .iter()
            .flat_map(|f| f.rates())
            .copied()
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    };
    let caption_names = [CaptionFormat::Vtt, CaptionFormat::Srt].map(|c| c.as_str());
    let not_blank = format!("[^{WHITE_SPACE}]");

    let description = format!(
        "A text-to-speech request: publish it as JSON to the default exchange with the requests queue's name as routing key. \
         Version {NEWEST_REQUEST_VERSION}: a request that uses a field newer than version 1 should say its version in `version` \
         (without it, the version its fields need, up to {UNDECLARED_UP_TO}); a declared version must cover the fields used. \
         Rules this schema cannot express (the worker checks them): {}.",
        REQUEST_SCHEMA_EXCEPTIONS.join("; ")
    );
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    root.insert("$id".into(), json!(REQUEST_SCHEMA_ID));
    root.insert("title".into(), json!("tts-worker request"));
    root.insert("description".into(), json!(description));
    root.insert("additionalProperties".into(), json!(false));

    let Some(props) = properties(root) else {
        return;
    };
    refine(props, "version", |p| {
        p.insert("type".into(), json!(["integer", "null"]));
        p.insert("minimum".into(), json!(1));
        p.insert("maximum".into(), json!(NEWEST_REQUEST_VERSION));
    });
    refine(props, "text", |p| {
        p.insert("minLength".into(), json!(1));
        p.insert("maxLength".into(), json!(limits.max_text_chars));
        p.insert("pattern".into(), json!(not_blank));
    });
    refine(props, "style", |p| {
        p.insert("maxLength".into(), json!(MAX_STYLE_CHARS));
        p.insert("pattern".into(), json!(not_blank));
    });
    for voice in ["voice_1", "voice_2"] {
        refine(props, voice, |p| {
            p.remove("type");
            p.insert("enum".into(), json!(voices));
        });
    }
    refine(props, "temperature", |p| {
        p.insert("minimum".into(), json!(TEMPERATURE_RANGE.start()));
        p.insert("maximum".into(), json!(TEMPERATURE_RANGE.end()));
    });
    refine(props, "job_id", |p| {
        p.insert("minLength".into(), json!(1));
        p.insert("maxLength".into(), json!(limits.max_job_id_len));
        p.insert("pattern".into(), json!("^[A-Za-z0-9_-][A-Za-z0-9._-]*$"));
    });
    refine(props, "output_key", |p| {
        // Relative; no empty, "." or ".." segment; no control character or
        // backslash (what `job::ObjectKey::parse` refuses).
        let ok = r"[^/\\\u0000-\u001f\u007f-\u009f]";
        let ok_not_dot = r"[^./\\\u0000-\u001f\u007f-\u009f]";
        let segment = format!(r"(?:{ok_not_dot}{ok}*|\.{ok_not_dot}{ok}*|\.\.{ok}+)");
        p.insert("minLength".into(), json!(1));
        p.insert("maxLength".into(), json!(limits.max_output_key_len));
        p.insert(
            "pattern".into(),
            json!(format!("^{segment}(?:/{segment})*$")),
        );
    });
    refine(props, "format", |p| {
        p.remove("type");
        p.insert("enum".into(), json!(formats));
    });
    refine(props, "sample_rate", |p| {
        p.insert(
            "enum".into(),
            json!(
                all_rates
                    .iter()
                    .map(|r| json!(r))
                    .chain([Value::Null])
                    .collect::<Vec<_>>()
            ),
        );
    });
    refine(props, "loudness_lufs", |p| {
        p.insert("minimum".into(), json!(LOUDNESS_RANGE.start()));
        p.insert("maximum".into(), json!(LOUDNESS_RANGE.end()));
    });
    refine(props, "true_peak_db", |p| {
        p.insert("minimum".into(), json!(TRUE_PEAK_RANGE.start()));
        p.insert("maximum".into(), json!(TRUE_PEAK_RANGE.end()));
    });
    refine(props, "captions", |p| {
        p.insert("items".into(), json!({"enum": caption_names}));
    });

    let mut rules = Vec::new();
    // A declared version covers the fields used (null is not used).
    for version in 1..NEWEST_REQUEST_VERSION {
        let later: Map<String, Value> = FIELDS
            .iter()
            .filter(|(_, since)| *since > version)
            .map(|(f, _)| ((*f).to_owned(), json!({"type": "null"})))
            .collect();
        rules.push(json!({
            "if": {"required": ["version"], "properties": {"version": {"const": version}}},
            "then": {"properties": later}
        }));
    }
    // A field of a version later than the undeclared ones needs declaring.
    for (field, since) in FIELDS.iter().filter(|(_, since)| *since > UNDECLARED_UP_TO) {
        let mut not_null = Map::new();
        not_null.insert((*field).to_owned(), json!({"not": {"type": "null"}}));
        rules.push(json!({
            "if": {"required": [field], "properties": not_null},
            "then": {"required": ["version"], "properties": {"version": {"type": "number", "minimum": since}}}
        }));
    }
    // Dialogue: a second voice needs both speakers' lines.
    rules.push(json!({
        "if": {"required": ["voice_2"], "properties": {"voice_2": {"type": "string"}}},
        "then": {"properties": {"text": {"allOf": SPEAKER_LABELS.iter()
            .map(|l| json!({"pattern": format!(r"(^|\n)[{WHITE_SPACE}]*{l}")}))
            .collect::<Vec<_>>()}}}
    }));
    // A true-peak ceiling bounds a loudness target.
    rules.push(json!({
        "if": {"required": ["true_peak_db"], "properties": {"true_peak_db": {"type": "number"}}},
        "then": {"required": ["loudness_lufs"], "properties": {"loudness_lufs": {"type": "number"}}}
    }));
    // What each format can be written at, and coded with.
    for format in Format::ALL {
        let is_format = if format == Format::Wav {
            // No format (or null) is WAV.
            json!({"anyOf": [
                {"not": {"required": ["format"]}},
                {"properties": {"format": {"enum": [format.as_str(), null]}}}
            ]})
        } else {
            json!({"required": ["format"], "properties": {"format": {"const": format.as_str()}}})
        };
        let rates: Vec<Value> = format
            .rates()
            .iter()
            .map(|r| json!(r))
            .chain([Value::Null])
            .collect();
        let mut then = json!({"properties": {"sample_rate": {"enum": rates}}});
        let by_rate = bitrate_rule(format);
        if let Some(rule) = by_rate {
            then = json!({"allOf": [then, rule]});
        }
        rules.push(json!({"if": is_format, "then": then}));
    }
    root.insert("allOf".into(), Value::Array(rules));
}

/// The bitrates `format` may be asked for, which depend on the rate (the
/// asked one, else the format's default).
fn bitrate_rule(format: Format) -> Option<Value> {
    let no_bitrate = json!({"properties": {"bitrate_kbps": {"type": "null"}}});
    let distinct: Vec<(Vec<u32>, Option<&'static [u32]>)> = {
        let mut groups: Vec<(Vec<u32>, Option<&'static [u32]>)> = Vec::new();
        for &rate in format.rates() {
            let allowed = format.bitrates(rate);
            match groups.iter_mut().find(|(_, a)| *a == allowed) {
                Some((rates, _)) => rates.push(rate),
                None => groups.push((vec![rate], allowed)),
            }
        }
        groups
    };
    let allowed_json = |allowed: Option<&[u32]>| match allowed {
        None => no_bitrate.clone(),
        Some(list) => json!({"properties": {"bitrate_kbps": {
            "enum": list.iter().map(|b| json!(b)).chain([Value::Null]).collect::<Vec<_>>()
        }}}),
    };
    if let [(_, allowed)] = distinct.as_slice() {
        return Some(allowed_json(*allowed));
    }
    let default_rate = format.default_rate();
    let rules: Vec<Value> = distinct
        .iter()
        .map(|(rates, allowed)| {
            let mut when = vec![json!({"required": ["sample_rate"], "properties": {"sample_rate": {"enum": rates}}})];
            if rates.contains(&default_rate) {
                when.push(json!({"not": {"required": ["sample_rate"]}}));
                when.push(json!({"properties": {"sample_rate": {"type": "null"}}}));
            }
            json!({"if": {"anyOf": when}, "then": allowed_json(*allowed)})
        })
        .collect();
    Some(json!({"allOf": rules}))
}

/// The encoder's constants as schema keywords ([`super::encode_event`]).
fn event_rules(schema: &mut Value, kind: &str, id: &str) {
    let error_codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let codes_described = format!(
        "The error's code. Known codes: {}. New codes may appear within a schema version: \
         treat an unknown code by `retryable`.",
        error_codes.join(", ")
    );
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    root.insert("$id".into(), json!(id));
    root.insert("title".into(), json!(format!("tts-worker {kind} event")));
    root.insert(
        "description".into(),
        json!(format!(
            "A CloudEvents 1.0 event in structured JSON mode (content type application/cloudevents+json), \
             published to the events exchange with routing key {kind}, and to the request's reply_to queue when asked. \
             Its dataschema is this schema's $id. Consumers must ignore fields they do not know: fields may be added within a schema version."
        )),
    );
    if let Some(required) = root.get_mut("required").and_then(Value::as_array_mut) {
        required.push(json!("dataschema"));
    }
    if let Some(props) = properties(root) {
        envelope_rules(props, kind, id);
    }
    let Some(defs) = root.get_mut("definitions").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(props) = defs.get_mut("ErrorData").and_then(properties_of) {
        refine(props, "code", |p| {
            p.insert("description".into(), json!(codes_described));
            p.insert("pattern".into(), json!("^[a-z][a-z_]*$"));
        });
    }
    if let Some(props) = defs.get_mut("AudioData").and_then(properties_of) {
        audio_rules(props);
    }
    if let Some(props) = defs.get_mut("CaptionData").and_then(properties_of) {
        refine(props, "format", |p| {
            p.insert("enum".into(), json!(["vtt", "srt"]));
        });
    }
}

/// The CloudEvents attributes the encoder sets.
fn envelope_rules(props: &mut Map<String, Value>, kind: &str, id: &str) {
    refine(props, "specversion", |p| {
        p.insert("const".into(), json!("1.0"));
    });
    refine(props, "type", |p| {
        p.insert("const".into(), json!(kind));
    });
    refine(props, "id", |p| {
        p.insert("format".into(), json!("uuid"));
    });
    refine(props, "time", |p| {
        p.insert("format".into(), json!("date-time"));
    });
    refine(props, "datacontenttype", |p| {
        p.insert("const".into(), json!("application/json"));
    });
    refine(props, "dataschema", |p| {
        p.insert("type".into(), json!("string"));
        p.insert("const".into(), json!(id));
    });
    refine(props, "traceparent", |p| {
        p.insert(
            "pattern".into(),
            json!("^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"),
        );
    });
}

/// What a completion says of its audio.
fn audio_rules(props: &mut Map<String, Value>) {
    refine(props, "sha256", |p| {
        p.insert("pattern".into(), json!("^[0-9a-f]{64}$"));
    });
    refine(props, "uri", |p| {
        p.insert("pattern".into(), json!("^s3://"));
    });
    refine(props, "format", |p| {
        let formats: Vec<Value> = Format::ALL
            .iter()
            .map(|f| json!(f.as_str()))
            .chain([Value::Null])
            .collect();
        p.remove("type");
        p.insert("enum".into(), json!(formats));
    });
    refine(props, "sample_rate", |p| {
        p.insert("minimum".into(), json!(Format::Mulaw.default_rate()));
        p.insert("maximum".into(), json!(SOURCE_RATE * 2));
    });
}

/// The `properties` of a struct's schema.
fn properties(schema: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    schema.get_mut("properties")?.as_object_mut()
}

fn properties_of(schema: &mut Value) -> Option<&mut Map<String, Value>> {
    properties(schema.as_object_mut()?)
}

/// Applies `f` to the schema of property `name` (the tests check that every
/// rule lands: each is exercised by a case the decoder refuses).
fn refine(props: &mut Map<String, Value>, name: &str, f: impl FnOnce(&mut Map<String, Value>)) {
    if let Some(p) = props.get_mut(name).and_then(Value::as_object_mut) {
        f(p);
    }
}

#[cfg(test)]
mod tests;
