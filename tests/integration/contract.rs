//! The worker and the simulator keep separate lists of what the API accepts,
//! and both are compared with the API reference's own list (a fixture), so a
//! mistake on either side shows up here instead of being shared. And the
//! hand-written AsyncAPI document is held to the names the code uses.

use std::net::SocketAddr;

use segmind_sim::SimConfig;
use serde_json::json;
use tts_worker::testing::job::{VOICES, Voice};
use tts_worker::testing::{broker, wire};

#[tokio::test]
async fn every_voice_the_worker_accepts_is_accepted_by_the_simulator() {
    let mut config = SimConfig::fast("k");
    config.espeak = false;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = segmind_sim::spawn(config, any, any).await.unwrap();
    let http = reqwest::Client::new();
    for voice in VOICES {
        // What the worker would send: the canonical spelling of a parsed voice.
        let name = Voice::parse(&voice.to_lowercase()).unwrap().name();
        let r = http
            .post(format!("{}/v2/gemini-2.5-pro-tts", sim.base_url()))
            .header("x-api-key", "k")
            .json(&json!({"text": "hi", "voice_1": name, "voice_2": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the simulator rejects {name}");
    }
}

/// The API's own list, from its reference (a fixture neither side generates).
fn api_voices() -> Vec<&'static str> {
    include_str!("../fixtures/segmind-voices.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect()
}

#[test]
fn every_voice_of_the_api_is_accepted_by_the_worker_in_its_exact_spelling() {
    let api = api_voices();
    assert_eq!(api.len(), 30);
    assert_eq!(VOICES.len(), api.len(), "the worker knows other voices");
    for voice in &api {
        assert_eq!(
            Voice::parse(voice).map(Voice::name),
            Ok(*voice),
            "the worker does not know {voice}"
        );
    }
}

#[test]
fn the_simulator_knows_exactly_the_apis_voices() {
    let mut api = api_voices();
    let mut sim: Vec<&str> = segmind_sim::voices::VOICES.to_vec();
    api.sort_unstable();
    sim.sort_unstable();
    assert_eq!(sim, api);
}

/// The AsyncAPI document is written by hand: it must say what the code
/// does, name for name.
#[test]
fn the_asyncapi_document_names_what_the_code_uses() {
    let doc = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contract/asyncapi.yaml"),
    )
    .unwrap();
    let settings = tts_worker::testing::config::Settings::load_from(None, &[]).unwrap();
    let amqp = &settings.amqp;
    let named = [
        amqp.requests_queue.clone(),
        amqp.events_exchange.clone(),
        amqp.events_queue.clone().unwrap_or_default(),
        amqp.dead_letter_queue.clone(),
        broker::EVENTS_BINDINGS[0].to_owned(),
        broker::EVENTS_BINDINGS[1].to_owned(),
        broker::EVENTS_BINDINGS[2].to_owned(),
        wire::CANCELLED_TYPE.to_owned(),
        "./schemas/job.cancelled.schema.json".to_owned(),
        "spend_cap_reached".to_owned(),
        "tts.control".to_owned(),
        "tts.fleet".to_owned(),
        wire::PROGRESS_TYPE.to_owned(),
        "./schemas/job.progress.schema.json".to_owned(),
        wire::COMPLETED_TYPE.to_owned(),
        wire::FAILED_TYPE.to_owned(),
        broker::COUNTED_DELIVERIES_HEADER.to_owned(),
        broker::PAUSES_HEADER.to_owned(),
        broker::DEFERRED_SINCE_HEADER.to_owned(),
        wire::DEAD_LETTER_CODE_HEADER.to_owned(),
        wire::DEAD_LETTER_MESSAGE_HEADER.to_owned(),
        wire::DEAD_LETTER_JOB_HEADER.to_owned(),
        wire::TRACEPARENT_HEADER.to_owned(),
        wire::TRACESTATE_HEADER.to_owned(),
        wire::EVENT_CONTENT_TYPE.to_owned(),
        format!("x-delivery-limit: {}", settings.jobs.max_deliveries + 1),
        "./schemas/request.schema.json".to_owned(),
        "./schemas/job.completed.schema.json".to_owned(),
        "./schemas/job.failed.schema.json".to_owned(),
        "unsupported_version".to_owned(),
        "invalid_request".to_owned(),
    ];
    for name in named {
        assert!(
            doc.contains(&name),
            "contract/asyncapi.yaml does not mention {name:?}"
        );
    }
}
