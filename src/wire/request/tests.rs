//! The decoder as a whole: whole requests, every rule naming its field, all
//! errors reported at once, the version a producer's body says, and what
//! holds whatever the input (property tests).

use serde_json::{Value, json};

use super::testing::{decode, fields, invalid, limits, rejected};
use super::{MAX_STYLE_CHARS, RequestBody, decode_request};
use crate::config::RequestLimits;

#[test]
fn a_minimal_request_gets_the_defaults() {
    let job = decode(json!({"text": "Hello"})).job.unwrap();
    assert_eq!(&*job.speech.text, "Hello");
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

mod properties {
    use super::*;
    use proptest::prelude::*;

    use crate::config::RequestLimits;
    use crate::job::{JobId, ObjectKey, TEMPERATURE_RANGE};
    use crate::wire::request::{DecodedRequest, FIELDS, RequestError, field_version};

    /// What every decode must guarantee, whatever the input.
    fn check_invariants(d: &DecodedRequest, limits: &RequestLimits) {
        assert!(JobId::parse(d.job_id.as_str(), limits.max_job_id_len).is_ok());
        match &d.job {
            Ok(job) => {
                assert!(job.speech.text.chars().any(char::is_alphanumeric));
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
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            ".{0,40}".prop_map(Value::String),
            prop::sample::select(crate::job::VOICES.to_vec()).prop_map(|v| Value::String(v.into())),
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

    /// Text a hostile producer might send: zero-width and bidi characters,
    /// runs of combining marks, CJK, emoji, line separators, control
    /// characters, and long runs of any of them.
    fn hostile_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\u{200B}".to_owned()),
            Just("\u{202E}".to_owned()),
            Just("\u{2028}".to_owned()),
            Just("\u{FEFF}".to_owned()),
            Just("\u{0301}".repeat(300)),
            Just("語".to_owned()),
            Just("👩‍👩‍👧‍👦".to_owned()),
            Just("\u{0000}".to_owned()),
            Just(" ".to_owned()),
            Just("/".to_owned()),
            Just("..".to_owned()),
            "[a-z]{1,8}",
            ".{0,16}",
        ];
        prop::collection::vec(piece, 0..64).prop_map(|v| v.concat())
    }

    fn hostile_request() -> impl Strategy<Value = Value> {
        (
            hostile_text(),
            prop::option::of(hostile_text()),
            prop::option::of(hostile_text()),
            prop::option::of(hostile_text()),
            prop::collection::btree_map(".{0,12}", json_value(), 0..4),
        )
            .prop_map(|(text, key, job_id, style, extra)| {
                let mut m: serde_json::Map<String, Value> = extra.into_iter().collect();
                m.insert("text".into(), Value::String(text));
                for (k, v) in [("output_key", key), ("job_id", job_id), ("style", style)] {
                    if let Some(v) = v {
                        m.insert(k.into(), Value::String(v));
                    }
                }
                Value::Object(m)
            })
    }

    proptest! {
        // The request decoder's fuzz target: `PROPTEST_CASES=100000 cargo
        // test --lib wire::request::tests::properties` (README "Tests").
        #[test]
        fn hostile_requests_never_panic_and_their_errors_stay_small(obj in hostile_request()) {
            let limits = RequestLimits::default();
            let bytes = serde_json::to_vec(&obj).unwrap();
            let d = decode_request(&bytes, None, &limits);
            check_invariants(&d, &limits);
            if let Err(e) = &d.job {
                let message = crate::failure::capped(&e.to_string()).into_owned();
                prop_assert!(message.len() <= crate::failure::MESSAGE_LIMIT);
            }
            if let Ok(job) = &d.job
                && let Some(key) = &job.output_key
            {
                prop_assert!(!key.as_str().chars().any(crate::job::invisible));
                prop_assert!(key.as_str().split('/').all(|seg| !seg.trim().is_empty()));
            }
        }

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
            prop_assert_eq!(&*job.speech.text, text.as_str());
            prop_assert_eq!(job.speech.voice_1.name(), voice);
            prop_assert_eq!(job.speech.temperature, temperature);
            prop_assert_eq!(job.id.as_str(), job_id.as_str());
        }
    }
}

#[test]
fn a_body_over_the_size_limit_is_refused_before_it_is_parsed() {
    let limits = RequestLimits {
        max_body_bytes: Some(4_096),
        ..limits()
    };
    let body = format!(r#"{{"text":"{}"}}"#, "a".repeat(5_000));
    let d = decode_request(body.as_bytes(), Some("m-1"), &limits);
    let err = invalid(d.job, "too large");
    assert_eq!(fields(&err), vec!["body"]);
    assert!(
        err.to_string()
            .contains("over limits.max_body_bytes (4096)"),
        "{err}"
    );
    assert_eq!(d.job_id.as_str(), "m-1");
    // At the limit it is parsed as usual.
    let body = format!(r#"{{"text":"{}"}}"#, "a".repeat(4_000));
    assert!(decode_request(body.as_bytes(), None, &limits).job.is_ok());
    // Derived: every character of the longest text JSON-escaped fits.
    let defaults = RequestLimits::default();
    let escaped = format!(
        r#"{{"text":"{}"}}"#,
        "\\u4e2d".repeat(defaults.max_text_chars)
    );
    assert!(escaped.len() <= defaults.body_bytes());
    assert!(
        decode_request(escaped.as_bytes(), None, &defaults)
            .job
            .is_ok()
    );
}

#[test]
fn unknown_fields_are_named_up_to_three_then_counted() {
    let mut object = serde_json::Map::new();
    object.insert("text".into(), json!("hi"));
    for i in 0..10_000 {
        object.insert(format!("key{i:05}"), json!(1));
    }
    let err = rejected(Value::Object(object));
    assert_eq!(err.errors.len(), 4, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("9997 more unknown fields (10000 in all)"),
        "{message}"
    );
    assert!(message.len() < 1_024, "{} bytes", message.len());
}

#[test]
fn text_must_hold_something_to_speak_in_clusters_a_part_can_hold() {
    for (text, needle) in [
        ("\u{200B}\u{200B}\u{200D}", "nothing to speak"),
        ("... !!! ?", "nothing to speak"),
        ("\u{FEFF}", "nothing to speak"),
    ] {
        let err = rejected(json!({ "text": text }));
        assert_eq!(fields(&err), vec!["text"]);
        assert!(err.to_string().contains(needle), "{text:?}: {err}");
    }
    // One letter with 300 combining marks: one grapheme cluster of 301.
    let zalgo = format!("a{}", "\u{0301}".repeat(300));
    let err = rejected(json!({ "text": zalgo }));
    assert!(
        err.to_string()
            .contains("grapheme cluster of 301 characters"),
        "{err}"
    );
    // A few marks, digits alone, and other scripts are speakable.
    for text in ["e\u{0301}\u{0323}", "42", "日本語", "ไทย", "!!! a"] {
        assert!(decode(json!({ "text": text })).job.is_ok(), "{text:?}");
    }
}
