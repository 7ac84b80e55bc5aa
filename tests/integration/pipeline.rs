//! The happy paths: audio lands in S3 and a completed event says where.

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use segmind_sim::OutputMode;
use serde_json::json;
use sha2::{Digest, Sha256};
use tts_worker::testing::audio::{AudioFormat, sniff, wav_duration};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_single_speaker_job_ends_as_audio_in_s3_and_a_completed_event() {
    let app = spawn_app().await;
    app.publish_json(json!({
        "text": "Narrate softly: the quick brown fox jumps over the lazy dog.",
        "voice_1": "puck",
        "job_id": "story-1",
        "metadata": {"tenant": "acme", "n": 7}
    }))
    .await;

    let received = app.next_event().await;
    assert_eq!(received.event.kind, "tts.job.completed");
    assert_eq!(received.event.specversion, "1.0");
    assert_eq!(received.event.subject, "story-1");
    assert_eq!(
        received
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/cloudevents+json")
    );
    let data = received.completed();
    assert_eq!(data.job_id, "story-1");
    assert_eq!(data.attempts, 1);
    assert_eq!(data.metadata.as_ref().unwrap()["tenant"], "acme");
    let prefix = &app.settings.s3.prefix;
    assert_eq!(data.audio.key, format!("{prefix}story-1.wav"));
    assert_eq!(
        data.audio.uri,
        format!("s3://{}/{prefix}story-1.wav", data.audio.bucket)
    );
    assert_eq!(data.audio.content_type, "audio/wav");
    assert!(data.audio.duration_seconds.unwrap() > 1.0);
    assert!(data.segmind.inference_time_seconds.is_some());

    // The object is there, complete, and matches the event.
    let object = app
        .storage
        .get(&data.audio.key)
        .await
        .expect("object stored");
    let sha = hex::encode(Sha256::digest(&object.bytes));
    assert_eq!(sha, data.audio.sha256);
    assert_eq!(
        object.sha256.as_deref(),
        Some(sha.as_str()),
        "checksum in metadata"
    );
    assert_eq!(object.bytes.len() as u64, data.audio.size_bytes);
    assert_eq!(sniff(&object.bytes), Some(AudioFormat::Wav));
    assert_eq!(
        u32::from_le_bytes(object.bytes[24..28].try_into().unwrap()),
        24_000
    );
    assert_eq!(wav_duration(&object.bytes), data.audio.duration_seconds);

    // The simulator saw the v2 flow: one submit, polls, one result, one download.
    let stats = app.sim.stats();
    assert_eq!(stats.submits_accepted, 1);
    let counts = &stats.requests[&data.segmind.request_id];
    assert!(counts.status_polls >= 1);
    assert_eq!(counts.result_fetches, 1);
    assert_eq!(counts.media_fetches, 1);

    assert_eq!(app.stop().await, 0, "the request was acked");
}

#[tokio::test]
async fn a_two_speaker_dialogue_is_stored_at_its_output_key() {
    let app = spawn_app().await;
    app.publish_json(json!({
        "text": "Speaker 1: Did you hear the news today?\nSpeaker 2: No, tell me everything!",
        "voice_1": "Kore",
        "voice_2": "Charon",
        "temperature": 0.7,
        "output_key": "dialogues/2026/ep-1.wav"
    }))
    .await;
    let received = app.next_event().await;
    let data = received.completed();
    assert_eq!(data.audio.key, "dialogues/2026/ep-1.wav");
    let object = app.storage.get("dialogues/2026/ep-1.wav").await.unwrap();
    assert!(wav_duration(&object.bytes).unwrap() > 1.0);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn job_id_falls_back_to_message_id() {
    let app = spawn_app().await;
    app.publish_raw(
        br#"{"text":"hello there"}"#,
        BasicProperties::default().with_message_id("msg-42".into()),
    )
    .await;
    let received = app.next_event().await;
    assert_eq!(received.completed().job_id, "msg-42");
    assert!(received.completed().audio.key.ends_with("msg-42.wav"));
    app.stop().await;
}

#[tokio::test]
async fn the_event_is_also_sent_to_reply_to_with_the_correlation_id() {
    let app = spawn_app().await;
    let reply = app
        .channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.publish_raw(
        br#"{"text":"reply to me","job_id":"r-1"}"#,
        BasicProperties::default()
            .with_reply_to(reply.name().clone())
            .with_correlation_id("corr-9".into()),
    )
    .await;
    let replied = app.next_event_from(reply.name().as_str()).await;
    assert_eq!(replied.completed().job_id, "r-1");
    assert_eq!(
        replied
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-9")
    );
    // The durable events queue has it too.
    let durable = app.next_event().await;
    assert_eq!(durable.event.id, replied.event.id);
    app.stop().await;
}

#[tokio::test]
async fn audio_given_inline_as_data_uri_or_base64_is_stored() {
    for mode in [OutputMode::DataUri, OutputMode::Base64] {
        let app = spawn_app_with(|c| c.output_mode = mode, |_| {}).await;
        app.publish_json(json!({"text": "inline audio please"}))
            .await;
        let received = app.next_event().await;
        let data = received.completed();
        assert_eq!(data.audio.content_type, "audio/wav", "{mode:?}");
        assert_eq!(
            app.sim.stats().media_fetches,
            0,
            "{mode:?}: nothing to download"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn status_urls_off_the_api_origin_are_not_followed() {
    let app = spawn_app_with(|c| c.foreign_urls = true, |_| {}).await;
    app.publish_json(json!({"text": "do not follow foreign links"}))
        .await;
    let received = app.next_event().await;
    let id = &received.completed().segmind.request_id;
    // Polls reached the simulator, so they were rebuilt on the API origin.
    assert!(app.sim.stats().requests[id].status_polls >= 1);
    app.stop().await;
}

#[tokio::test]
async fn many_jobs_run_concurrently() {
    let app = spawn_app_with(
        |c| {
            c.latency_mean = std::time::Duration::from_millis(800);
            c.latency_spread = std::time::Duration::ZERO;
        },
        |_| {},
    )
    .await;
    for i in 0..20 {
        app.publish_json(json!({"text": format!("job number {i}"), "job_id": format!("c-{i}")}))
            .await;
    }
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        ids.insert(app.next_event().await.completed().job_id.clone());
    }
    assert_eq!(ids.len(), 20);
    // Jobs overlapped at Segmind instead of running one after another.
    let peak = app.sim.stats().peak_in_progress;
    assert!(peak >= 10, "at most {peak} jobs were in progress at once");
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn the_completed_event_and_the_metrics_carry_the_jobs_cost_and_calls() {
    let app = spawn_app_with(|c| c.credits = Some(10.0), |_| {}).await;
    app.publish_json(json!({"text": "what did this cost", "job_id": "ledger-1"}))
        .await;
    let received = app.next_event().await;
    let data = received.completed();
    // The simulator bills 0.05 a job and reports it in the result's metrics.
    assert_eq!(data.segmind.cost, Some(0.05));
    let stats = app.sim.stats();
    let counts = &stats.requests[&data.segmind.request_id];
    let calls = 1 + counts.status_polls + counts.result_fetches + counts.media_fetches;
    assert_eq!(
        data.segmind.calls, calls,
        "submit, polls, result and download"
    );
    assert_eq!(
        app.metric("tts_segmind_remaining_credits").await,
        Some(9.95)
    );
    assert_eq!(
        app.metric("tts_segmind_credits_spent_total").await,
        Some(0.05)
    );
}

#[tokio::test]
async fn a_style_is_put_in_front_of_the_text_sent_to_segmind() {
    let app = spawn_app().await;
    app.publish_json(serde_json::json!({
        "text": "your order has shipped!", "style": "Say cheerfully", "job_id": "styled-1"
    }))
    .await;
    app.next_event().await.completed();
    let sent: Vec<String> = app.sim.stats().submits_by_text.into_keys().collect();
    assert_eq!(sent, ["Say cheerfully: your order has shipped!"]);
    app.stop().await;
}
