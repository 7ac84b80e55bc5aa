use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::job::{Completed, Delivery, Failed, JobId, Outcome, StoredAudio};
use crate::wire::{TraceHeaders, encode_event};

fn contract_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contract/schemas")
}

fn pretty(schema: &Value) -> String {
    // Serializing a Value cannot fail.
    serde_json::to_string_pretty(schema).unwrap_or_default() + "\n"
}

/// The committed schemas are what the types generate. With
/// `TTS_UPDATE_CONTRACT=1` the files are rewritten and the test still fails
/// (so an update is never taken for a check): run it again without it.
#[test]
fn the_committed_schemas_are_what_the_types_generate() {
    let update = std::env::var("TTS_UPDATE_CONTRACT").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for s in contract_schemas() {
        let path = contract_dir().join(s.file);
        let generated = pretty(&s.schema);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(s.file);
            if update {
                std::fs::create_dir_all(contract_dir()).unwrap();
                std::fs::write(&path, &generated).unwrap();
            }
        }
    }
    assert!(
        !update || stale.is_empty(),
        "rewrote contract/schemas/{stale:?}: check and commit them, then run the test again without TTS_UPDATE_CONTRACT"
    );
    assert!(
        stale.is_empty(),
        "contract/schemas/{stale:?} differ from the wire types: run \
         `TTS_UPDATE_CONTRACT=1 cargo test --lib wire::schema` and commit the result \
         (and bump the schema's version in its $id when a change is not backward compatible)"
    );
}

#[test]
fn each_schema_is_valid_draft_07_with_its_id() {
    for s in contract_schemas() {
        assert_eq!(
            s.schema["$schema"], "http://json-schema.org/draft-07/schema#",
            "{}",
            s.file
        );
        assert_eq!(s.schema["$id"], s.id, "{}", s.file);
        assert!(
            jsonschema::draft7::meta::is_valid(&s.schema),
            "{} is not a valid draft-07 schema",
            s.file
        );
    }
    assert!(REQUEST_SCHEMA_ID.ends_with(&format!(":{NEWEST_REQUEST_VERSION}")));
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft7::new(schema).unwrap()
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    validator(schema)
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn completed(delivery: Option<Box<Delivery>>) -> Outcome {
    Outcome::Completed(Completed {
        job_id: JobId::parse("j-1", 128).unwrap(),
        audio: StoredAudio {
            bucket: "b".into(),
            key: "tts/j-1.mp3".into(),
            content_type: "audio/mpeg".into(),
            size_bytes: 10,
            sha256: "ab".repeat(32),
            duration_seconds: Some(1.5),
        },
        request_ids: vec!["r-1".into()],
        part_objects: Vec::new(),
        inference_time_seconds: Some(2.0),
        segmind_cost: Some(0.01),
        segmind_calls: 3,
        attempts: 1,
        metadata: Some(json!({"tenant": "acme"}).as_object().unwrap().clone()),
        served_from_storage: false,
        parts: 1,
        marks_key: Some("tts/j-1.marks.json".into()),
        delivery,
    })
}

fn event_json(outcome: &Outcome) -> Value {
    let trace = TraceHeaders {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    };
    let event = encode_event(outcome, "tts-worker/test", chrono::Utc::now(), &trace);
    serde_json::from_slice(&event.body).unwrap()
}

#[test]
fn encoded_events_are_valid_and_name_their_schema() {
    let delivery = Delivery {
        format: Format::Mp3,
        sample_rate: 44_100,
        channels: 1,
        bitrate_kbps: Some(64),
        loudness_lufs: Some(-16.2),
        true_peak_db: Some(-1.4),
        captions: vec![crate::job::Caption {
            format: CaptionFormat::Vtt,
            key: "tts/j-1.vtt".into(),
        }],
    };
    let completed_schema = completed_schema();
    for outcome in [completed(None), completed(Some(Box::new(delivery)))] {
        let event = event_json(&outcome);
        assert_eq!(errors(&completed_schema, &event), Vec::<String>::new());
        assert_eq!(event["dataschema"], COMPLETED_SCHEMA_ID);
        // It is not a failure.
        assert!(!errors(&failed_schema(), &event).is_empty());
    }
    let failed_schema = failed_schema();
    for code in ErrorCode::ALL {
        let outcome = Outcome::Failed(Failed {
            job_id: JobId::parse("j-2", 128).unwrap(),
            failure: crate::failure::Failure {
                code,
                class: crate::failure::Class::Permanent,
                message: "why".into(),
                http_status: Some(422),
            },
            request_id: Some("r-2".into()),
            attempts: 2,
            metadata: None,
        });
        let event = event_json(&outcome);
        // A cancellation has its own type and schema (a failure's data).
        let (schema, id) = if code == ErrorCode::Cancelled {
            (cancelled_schema(), CANCELLED_SCHEMA_ID)
        } else {
            (failed_schema.clone(), FAILED_SCHEMA_ID)
        };
        assert_eq!(errors(&schema, &event), Vec::<String>::new(), "{code}");
        assert_eq!(event["dataschema"], id);
    }
}

#[test]
fn the_event_schemas_refuse_what_the_worker_never_sends() {
    let schema = completed_schema();
    let good = event_json(&completed(None));
    let broken = [
        ("/type", json!("tts.job.failed")),
        ("/specversion", json!("0.3")),
        ("/dataschema", json!("urn:other")),
        ("/traceparent", json!("not-a-traceparent")),
        ("/data/audio/sha256", json!("xyz")),
        ("/data/audio/size_bytes", json!(-1)),
        ("/data/job_id", json!(7)),
    ];
    for (pointer, value) in broken {
        let mut event = good.clone();
        *event.pointer_mut(pointer).unwrap() = value;
        assert!(!errors(&schema, &event).is_empty(), "{pointer} accepted");
    }
    let mut no_audio = good.clone();
    no_audio["data"].as_object_mut().unwrap().remove("audio");
    assert!(!errors(&schema, &no_audio).is_empty());

    let failed = failed_schema();
    let mut event = event_json(&Outcome::Failed(Failed {
        job_id: JobId::parse("j-3", 128).unwrap(),
        failure: crate::failure::Failure::invalid_request("text: is required"),
        request_id: None,
        attempts: 1,
        metadata: None,
    }));
    assert_eq!(errors(&failed, &event), Vec::<String>::new());
    event["data"]["error"]["code"] = json!("No Such Code");
    assert!(!errors(&failed, &event).is_empty());
}

#[test]
fn versioned_request_bodies_are_valid() {
    let schema = request_schema();
    let bodies = [
        RequestBody {
            text: "Hello.".into(),
            ..RequestBody::default()
        },
        RequestBody {
            text: "Speaker 1: Hi!\nSpeaker 2: Hello!".into(),
            voice_1: Some("Puck".into()),
            voice_2: Some("Charon".into()),
            format: Some("mp3".into()),
            sample_rate: Some(44_100),
            bitrate_kbps: Some(128),
            loudness_lufs: Some(-16.0),
            true_peak_db: Some(-1.5),
            captions: Some(vec!["vtt".into(), "srt".into()]),
            ..RequestBody::default()
        },
    ];
    for body in bodies {
        let body = serde_json::to_value(body.versioned()).unwrap();
        assert_eq!(errors(&schema, &body), Vec::<String>::new(), "{body}");
    }
}
