//! The bad-input corpus: every malformed request ends as an
//! `invalid_request` failure event naming the problem, plus a byte-identical
//! dead-letter copy, with zero Segmind calls. And the request schema
//! (`contract/schemas/request.schema.json`) agrees with the worker on every
//! case, bad or good, except the rules its description lists as beyond it.

use lapin::BasicProperties;
use serde_json::{Value, json};
use tts_worker::testing::broker::header_str;
use tts_worker::testing::config::RequestLimits;
use tts_worker::testing::wire::RequestError;
use tts_worker::testing::wire::decode_request;

use crate::helpers::spawn_app;
use crate::schemas::{request_errors, request_schema_description};

fn bytes(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

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
        format!(r#"{{"text": "a", "output_key": "{}"}}"#, "k".repeat(600)).into_bytes(),
        "output_key",
    ));
    cases.push((
        format!(r#"{{"text": "a", "job_id": "{}"}}"#, "j".repeat(200)).into_bytes(),
        "job_id",
    ));
    // Versions, and the fields of version 2 (the deliverable).
    let v2 = |extra: Value| {
        let mut body = json!({"version": 2, "text": "a"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        bytes(body)
    };
    cases.extend([
        (
            bytes(json!({"version": 1, "text": "a", "format": "mp3"})),
            "format: came in request version 2",
        ),
        (
            bytes(json!({"version": 1, "text": "a", "captions": ["vtt"]})),
            "send \"version\": 2",
        ),
        (
            bytes(json!({"version": 0, "text": "a"})),
            "version: must be",
        ),
        (
            bytes(json!({"version": 1.5, "text": "a"})),
            "version: must be",
        ),
        (
            bytes(json!({"version": "2", "text": "a"})),
            "version: must be",
        ),
        (v2(json!({"format": "aac"})), "unknown format"),
        (v2(json!({"format": 3})), "format: must be a string"),
        (
            v2(json!({"format": "mulaw", "sample_rate": 44_100})),
            "sample_rate",
        ),
        (
            v2(json!({"format": "ogg", "sample_rate": 44_100})),
            "sample_rate",
        ),
        (v2(json!({"sample_rate": 96_000})), "sample_rate"),
        (v2(json!({"sample_rate": -1})), "sample_rate"),
        (v2(json!({"sample_rate": 16_000.5})), "sample_rate"),
        (v2(json!({"bitrate_kbps": 64})), "no bitrate"),
        (
            v2(json!({"format": "flac", "bitrate_kbps": 64})),
            "no bitrate",
        ),
        (
            v2(json!({"format": "mp3", "sample_rate": 44_100, "bitrate_kbps": 8})),
            "cannot be coded",
        ),
        (
            v2(json!({"format": "mp3", "bitrate_kbps": 320})),
            "cannot be coded",
        ),
        (
            v2(json!({"format": "ogg", "bitrate_kbps": 7})),
            "cannot be coded",
        ),
        (v2(json!({"loudness_lufs": -40})), "loudness_lufs"),
        (v2(json!({"loudness_lufs": -5})), "loudness_lufs"),
        (v2(json!({"loudness_lufs": "-16"})), "loudness_lufs"),
        (
            v2(json!({"loudness_lufs": -16, "true_peak_db": 1})),
            "true_peak_db",
        ),
        (v2(json!({"true_peak_db": -1})), "give loudness_lufs too"),
        (v2(json!({"captions": ["ass"]})), "captions"),
        (v2(json!({"captions": "vtt"})), "captions"),
        (v2(json!({"captions": [1]})), "captions"),
        // Dialogue and style.
        (
            bytes(json!({"text": "Hello there", "voice_2": "Puck"})),
            "Speaker 1:",
        ),
        (
            bytes(json!({"text": "Speaker 1: Hi", "voice_2": "Puck"})),
            "Speaker 1:",
        ),
        (bytes(json!({"text": "a", "style": " \n "})), "style"),
        // What Rust's trim calls white space, which regex engines disagree on.
        (
            bytes(json!({"text": "\u{85}\u{2003} "})),
            "text: must not be blank",
        ),
        (
            bytes(json!({"text": "a", "style": "s".repeat(301)})),
            "style",
        ),
        (bytes(json!({"text": "a", "style": 3})), "style"),
    ]);
    cases.extend(
        schema_cannot_refuse()
            .into_iter()
            .map(|(b, needle, _)| (b, needle)),
    );
    cases
}

/// Bad requests the schema accepts, each with the error's word and the
/// part of the schema's description that says why the schema cannot refuse it.
fn schema_cannot_refuse() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    vec![
        (
            bytes(json!({"text": "a", "metadata": {"blob": "x".repeat(10_000)}})),
            "metadata: is",
            "bytes once serialized",
        ),
        (
            bytes(json!({"text": "a", "output_key": "é".repeat(300)})),
            "output_key",
            "bytes of UTF-8, not characters",
        ),
        (
            bytes(json!({"text": "\u{200B}\u{200D}\u{FEFF}"})),
            "nothing to speak",
            "text must hold a letter or a digit",
        ),
        (
            bytes(json!({"text": format!("a{}", "\u{0301}".repeat(300))})),
            "grapheme cluster of 301",
            "no grapheme cluster of more than 200 characters",
        ),
        (
            bytes(json!({"text": "a", "output_key": " "})),
            "blank",
            "output_key must have no blank segment",
        ),
        (
            bytes(json!({"text": "a", "output_key": "invoice\u{202E}vaw.exe"})),
            "U+202E",
            "no invisible, bidi or line-separator character",
        ),
    ]
}

/// Good requests: the worker takes them, the schema says they are valid.
fn accepted() -> Vec<Value> {
    vec![
        json!({"text": "a"}),
        json!({"text": "a".repeat(200_000)}),
        json!({"text": "Say cheerfully: hello", "voice_1": "Puck", "temperature": 0.7,
               "job_id": "order-1234", "output_key": "orders/1234.wav", "metadata": {"tenant": "acme"}}),
        json!({"text": "a", "temperature": 0}),
        json!({"text": "a", "temperature": 2}),
        json!({"text": "a", "style": "Narrate calmly"}),
        json!({"text": "a", "style": null, "voice_1": null, "voice_2": null, "temperature": null,
               "job_id": null, "output_key": null, "metadata": null, "version": null}),
        json!({"text": "Speaker 1: Hi!\nSpeaker 2: Hello!", "voice_1": "Puck", "voice_2": "Charon"}),
        json!({"text": "Intro.\n  Speaker 1: Hi!\r\n\tSpeaker 2: Hello!", "voice_2": "Kore"}),
        json!({"text": "a", "job_id": "A.b_c-1"}),
        json!({"text": "a", "output_key": "a/b/c.d.wav"}),
        json!({"text": "a", "output_key": ".hidden/..x/ü.wav"}),
        json!({"version": 1, "text": "a"}),
        json!({"version": 2, "text": "a"}),
        json!({"version": 2, "text": "a", "format": null, "captions": null}),
        json!({"version": 1, "text": "a", "format": null}),
        // Producers written before versions: version 2's fields undeclared.
        json!({"text": "a", "format": "mp3", "captions": ["vtt"]}),
        json!({"text": "a", "format": null}),
        // Whole numbers written as floats (Python's json writes 24000.0).
        json!({"version": 2.0, "text": "a", "format": "mp3", "sample_rate": 24_000.0, "bitrate_kbps": 64.0}),
        json!({"version": 2, "text": "a", "format": "mp3"}),
        json!({"version": 2, "text": "a", "format": "mp3", "sample_rate": 44_100, "bitrate_kbps": 320}),
        json!({"version": 2, "text": "a", "format": "mp3", "bitrate_kbps": 24}),
        json!({"version": 2, "text": "a", "format": "mp3", "sample_rate": 16_000, "bitrate_kbps": 144}),
        json!({"version": 2, "text": "a", "format": "ogg", "sample_rate": 48_000, "bitrate_kbps": 64}),
        json!({"version": 2, "text": "a", "format": "ogg", "bitrate_kbps": 6}),
        json!({"version": 2, "text": "a", "format": "flac", "sample_rate": 16_000}),
        json!({"version": 2, "text": "a", "format": "mulaw"}),
        json!({"version": 2, "text": "a", "format": "mulaw", "sample_rate": 8_000}),
        json!({"version": 2, "text": "a", "format": "wav", "sample_rate": 8_000}),
        json!({"version": 2, "text": "a", "sample_rate": 48_000}),
        json!({"version": 2, "text": "a", "loudness_lufs": -16}),
        json!({"version": 2, "text": "a", "loudness_lufs": -23, "true_peak_db": -2.5}),
        json!({"version": 2, "text": "a", "loudness_lufs": -36, "true_peak_db": 0}),
        json!({"version": 2, "text": "a", "captions": ["vtt", "srt"]}),
        json!({"version": 2, "text": "a", "captions": ["srt", "srt"]}),
        json!({"version": 2, "text": "a", "captions": []}),
    ]
}

/// Good requests the schema refuses: the worker is lenient where a schema
/// would need a pattern per spelling. Each names the description's words.
fn schema_cannot_accept() -> Vec<(Value, &'static str)> {
    vec![
        (json!({"text": "a", "voice_1": "puck"}), "any letter case"),
        (
            json!({"text": "a", "voice_1": " Puck "}),
            "surrounding spaces",
        ),
        (
            json!({"version": 2, "text": "a", "format": "MP3"}),
            "any letter case",
        ),
        (
            json!({"version": 2, "text": "a", "captions": ["WebVTT"]}),
            "\"webvtt\"",
        ),
    ]
}

#[test]
fn the_request_schema_agrees_with_the_worker_on_every_case() {
    let limits = RequestLimits::default();
    let described = request_schema_description();
    let worker = |body: &[u8]| decode_request(body, None, &limits).job;
    let refusable: Vec<Vec<u8>> = schema_cannot_refuse().into_iter().map(|c| c.0).collect();
    for (i, (body, _)) in corpus().iter().enumerate() {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert!(worker(body).is_err(), "case {i} ({shown}) is accepted");
        if refusable.contains(body) {
            continue;
        }
        assert!(
            !request_errors(body).is_empty(),
            "case {i} ({shown}): the worker refuses it, the schema accepts it"
        );
    }
    for (body, _, why) in schema_cannot_refuse() {
        assert!(
            request_errors(&body).is_empty(),
            "the schema can refuse this after all: {why}"
        );
        assert!(described.contains(why), "the schema does not say {why:?}");
    }
    for request in accepted() {
        let body = bytes(request.clone());
        assert!(
            worker(&body).is_ok(),
            "the worker refuses {request}: {:?}",
            worker(&body).err()
        );
        assert_eq!(
            request_errors(&body),
            Vec::<String>::new(),
            "the schema refuses {request}"
        );
    }
    for (request, why) in schema_cannot_accept() {
        let body = bytes(request.clone());
        assert!(worker(&body).is_ok(), "the worker refuses {request}");
        assert!(
            !request_errors(&body).is_empty(),
            "the schema accepts {request} after all"
        );
        assert!(described.contains(why), "the schema does not say {why:?}");
    }
    // A newer version is not the worker's to judge here (it is handed back,
    // then fails as unsupported_version); the schema of version 2 refuses it.
    let newer = bytes(json!({"version": 3, "text": "a", "speed": 2}));
    assert!(matches!(
        worker(&newer),
        Err(RequestError::NewerVersion { version: 3, .. })
    ));
    assert!(!request_errors(&newer).is_empty());
}

#[tokio::test]
async fn every_bad_request_in_the_corpus_is_rejected_cleanly() {
    let cases = corpus();
    assert!(cases.len() >= 95, "{} cases", cases.len());
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
