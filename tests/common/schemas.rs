#![allow(dead_code)] // shared by several test binaries, each using a subset

//! The contract's committed JSON Schemas (`contract/schemas/`), as validators:
//! what producers and consumers get, not what the types generate (the
//! library's tests keep those two equal).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

struct Schemas {
    request: jsonschema::Validator,
    /// The request schema's description (the rules it cannot express).
    request_description: String,
    completed: jsonschema::Validator,
    failed: jsonschema::Validator,
    progress: jsonschema::Validator,
    cancelled: jsonschema::Validator,
    marks: jsonschema::Validator,
}

fn read(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("contract/schemas")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("a committed schema is JSON")
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft7::new(schema).expect("a committed schema compiles")
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let request = read("request.schema.json");
        Schemas {
            request: compile(&request),
            request_description: request["description"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            completed: compile(&read("job.completed.schema.json")),
            failed: compile(&read("job.failed.schema.json")),
            progress: compile(&read("job.progress.schema.json")),
            cancelled: compile(&read("job.cancelled.schema.json")),
            marks: compile(&read("marks.schema.json")),
        }
    })
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} (at {})", e, e.instance_path()))
        .collect()
}

/// Panics unless `body` is an event valid against the schema its `type`
/// names, and says that schema in `dataschema`. Every event a test reads
/// passes here.
pub fn assert_valid_event(body: &[u8]) {
    let event: Value = serde_json::from_slice(body).expect("an event is JSON");
    let (validator, id) = match event["type"].as_str() {
        Some("tts.job.completed") => (
            &schemas().completed,
            "urn:tts-worker:schema:tts.job.completed:1",
        ),
        Some("tts.job.failed") => (&schemas().failed, "urn:tts-worker:schema:tts.job.failed:1"),
        Some("tts.job.cancelled") => (
            &schemas().cancelled,
            "urn:tts-worker:schema:tts.job.cancelled:1",
        ),
        Some("tts.job.progress") => (
            &schemas().progress,
            "urn:tts-worker:schema:tts.job.progress:1",
        ),
        other => panic!("an event of unknown type {other:?}: {event}"),
    };
    let problems = errors(validator, &event);
    assert!(
        problems.is_empty(),
        "the event breaks its schema: {problems:?}\n{event}"
    );
    assert_eq!(event["dataschema"], id, "dataschema names the schema");
}

/// Whether `body` is a request the committed request schema accepts (bytes
/// that are not JSON are not).
pub fn request_errors(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(request) => errors(&schemas().request, &request),
        Err(e) => vec![format!("not JSON: {e}")],
    }
}

/// Panics unless `marks` (a `{key}.marks.json` object) is valid against the
/// committed marks schema.
pub fn assert_valid_marks(marks: &Value) {
    let problems = errors(&schemas().marks, marks);
    assert!(
        problems.is_empty(),
        "the marks break their schema: {problems:?}\n{marks}"
    );
}

/// The request schema's description (where the rules it cannot express are listed).
pub fn request_schema_description() -> String {
    schemas().request_description.clone()
}
