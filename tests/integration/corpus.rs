//! The bad-input corpus: every malformed request ends as an
//! `invalid_request` failure event naming the problem, plus a byte-identical
//! dead-letter copy, with zero Segmind calls.

use lapin::BasicProperties;
use tts_worker::broker::header_str;

use crate::helpers::spawn_app;

/// (bytes, a word the error message must contain)
fn corpus() -> Vec<(Vec<u8>, &'static str)> {
    let j = |s: &str| s.as_bytes().to_vec();
    let mut cases = vec![
        // Not JSON, not UTF-8, not an object.
        (j(""), "empty"),
        (j("   \n\t "), "empty"),
        (j("{"), "not valid JSON"),
        (j("{\"text\": \"a\",}"), "not valid JSON"),
        (j("{'text': 'single quotes'}"), "not valid JSON"),
        (j("text=hello"), "not valid JSON"),
        (j("<xml>hello</xml>"), "not valid JSON"),
        (j("{\"text\": \"a\"} trailing"), "not valid JSON"),
        (j("null"), "JSON object"),
        (j("true"), "JSON object"),
        (j("42"), "JSON object"),
        (j("\"just a string\""), "JSON object"),
        (j("[{\"text\": \"a\"}]"), "JSON object"),
        (vec![0xff, 0xfe, 0xfd], "UTF-8"),
        (vec![b'{', b'"', b't', 0xc3, 0x28, b'"', b'}'], "UTF-8"),
        (vec![0xef, 0xbb, 0xbf, b'{', b'}'], "JSON"), // BOM then JSON
        // Wrong types.
        (j(r#"{"text": 42}"#), "text: must be a string"),
        (j(r#"{"text": ["a"]}"#), "text: must be a string"),
        (j(r#"{"text": {"en": "a"}}"#), "text: must be a string"),
        (j(r#"{"text": true}"#), "text: must be a string"),
        (
            j(r#"{"text": "a", "voice_1": 1}"#),
            "voice_1: must be a string",
        ),
        (
            j(r#"{"text": "a", "voice_2": ["Puck"]}"#),
            "voice_2: must be a string",
        ),
        (
            j(r#"{"text": "a", "temperature": "0.4"}"#),
            "temperature: must be a number",
        ),
        (
            j(r#"{"text": "a", "temperature": true}"#),
            "temperature: must be a number",
        ),
        (
            j(r#"{"text": "a", "job_id": 12}"#),
            "job_id: must be a string",
        ),
        (
            j(r#"{"text": "a", "output_key": 1}"#),
            "output_key: must be a string",
        ),
        (
            j(r#"{"text": "a", "metadata": "x"}"#),
            "metadata: must be a JSON object",
        ),
        (
            j(r#"{"text": "a", "metadata": [1, 2]}"#),
            "metadata: must be a JSON object",
        ),
        // Missing or blank text.
        (j("{}"), "text: is required"),
        (j(r#"{"text": null}"#), "text: is required"),
        (j(r#"{"text": ""}"#), "text: must not be blank"),
        (j(r#"{"text": " \n\t "}"#), "text: must not be blank"),
        // Unknown fields.
        (
            j(r#"{"text": "a", "voice1": "Puck"}"#),
            "did you mean \"voice_1\"",
        ),
        (
            j(r#"{"text": "a", "Voice_1": "Puck"}"#),
            "did you mean \"voice_1\"",
        ),
        (
            j(r#"{"text": "a", "temp": 0.3}"#),
            "did you mean \"temperature\"",
        ),
        (j(r#"{"text": "a", "speed": 1.2}"#), "unknown field"),
        (j(r#"{"Text": "a"}"#), "did you mean \"text\""),
        (
            j(r#"{"text": "a", "jobId": "x"}"#),
            "did you mean \"job_id\"",
        ),
        // Bad voices.
        (j(r#"{"text": "a", "voice_1": "Alexa"}"#), "unknown voice"),
        (j(r#"{"text": "a", "voice_1": "Sulafar"}"#), "Sulafat"),
        (j(r#"{"text": "a", "voice_1": "Callirhoe"}"#), "Callirrhoe"),
        (j(r#"{"text": "a", "voice_1": ""}"#), "unknown voice"),
        (
            j(r#"{"text": "a", "voice_2": "Kore "}"#.replace("Kore ", "Ko re").as_str()),
            "unknown voice",
        ),
        // Bad temperatures.
        (
            j(r#"{"text": "a", "temperature": -0.01}"#),
            "between 0 and 2",
        ),
        (
            j(r#"{"text": "a", "temperature": 2.01}"#),
            "between 0 and 2",
        ),
        (
            j(r#"{"text": "a", "temperature": 1e308}"#),
            "between 0 and 2",
        ),
        (
            j(r#"{"text": "a", "temperature": -1e-300}"#),
            "between 0 and 2",
        ),
        // Hostile job ids.
        (
            j(r#"{"text": "a", "job_id": "../../etc/passwd"}"#),
            "job_id",
        ),
        (j(r#"{"text": "a", "job_id": "/abs"}"#), "job_id"),
        (j(r#"{"text": "a", "job_id": "a\u0000b"}"#), "job_id"),
        (j(r#"{"text": "a", "job_id": "line\nbreak"}"#), "job_id"),
        (j(r#"{"text": "a", "job_id": ""}"#), "job_id"),
        (j(r#"{"text": "a", "job_id": ".hidden"}"#), "job_id"),
        (j(r#"{"text": "a", "job_id": "spa ce"}"#), "job_id"),
        (j(r#"{"text": "a", "job_id": "ünï"}"#), "job_id"),
        // Hostile output keys.
        (
            j(r#"{"text": "a", "output_key": "../x.wav"}"#),
            "output_key",
        ),
        (
            j(r#"{"text": "a", "output_key": "a/../../x.wav"}"#),
            "output_key",
        ),
        (
            j(r#"{"text": "a", "output_key": "/etc/passwd"}"#),
            "output_key",
        ),
        (
            j(r#"{"text": "a", "output_key": "a//b.wav"}"#),
            "output_key",
        ),
        (j(r#"{"text": "a", "output_key": "./a.wav"}"#), "output_key"),
        (
            j(r#"{"text": "a", "output_key": "a\u0007.wav"}"#),
            "output_key",
        ),
        (
            j(r#"{"text": "a", "output_key": "a\\b.wav"}"#),
            "output_key",
        ),
        (j(r#"{"text": "a", "output_key": ""}"#), "output_key"),
    ];
    // Huge text and metadata, and a long key.
    cases.push((
        format!(r#"{{"text": "{}"}}"#, "word ".repeat(40_001)).into_bytes(),
        "at most",
    ));
    cases.push((
        format!(
            r#"{{"text": "a", "metadata": {{"blob": "{}"}}}}"#,
            "x".repeat(10_000)
        )
        .into_bytes(),
        "metadata: is",
    ));
    cases.push((
        format!(r#"{{"text": "a", "output_key": "{}"}}"#, "k".repeat(600)).into_bytes(),
        "output_key",
    ));
    cases.push((
        format!(r#"{{"text": "a", "job_id": "{}"}}"#, "j".repeat(200)).into_bytes(),
        "job_id",
    ));
    cases
}

#[tokio::test]
async fn every_bad_request_in_the_corpus_is_rejected_cleanly() {
    let cases = corpus();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let app = spawn_app().await;
    for (i, (body, needle)) in cases.iter().enumerate() {
        app.publish_raw(
            body,
            BasicProperties::default().with_message_id(format!("corpus-{i}").into()),
        )
        .await;
        let received = app.next_event().await;
        let f = received.failed();
        assert_eq!(f.job_id, format!("corpus-{i}"), "case {i}");
        assert_eq!(f.error.code, "invalid_request", "case {i}");
        assert!(
            f.error.message.contains(needle),
            "case {i} ({}): {:?} lacks {needle:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            f.error.message
        );
        let dead = app.next_dead_letter().await;
        assert_eq!(
            dead.delivery.data, *body,
            "case {i}: byte-identical dead letter"
        );
        assert_eq!(
            header_str(&dead.delivery.properties, "x-tts-error-code"),
            Some("invalid_request")
        );
    }
    let stats = app.sim.stats();
    assert_eq!(
        stats.submits_accepted + stats.submits_rejected + stats.unauthorized,
        0,
        "no Segmind call"
    );
    assert_eq!(app.stop().await, 0);
}
