//! Audio judged by what is spoken, and parts sized by how long they take to
//! speak, in every script: against a simulator that follows directions and
//! speaker labels without speaking them, and speaks each script at its own
//! rate (`segmind_sim::model`).

use std::time::Duration;

use segmind_sim::model::{OUTPUT_CAP, SpeechModel, speech_seconds};
use serde_json::json;

use crate::audio_check::{self, TempFile};
use crate::helpers::{TestApp, spawn_app_with};

async fn realistic_app() -> TestApp {
    spawn_app_with(
        |sim| sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP },
        |_| {},
    )
    .await
}

/// The duration independent decoders read from a delivered object.
async fn probed_seconds(app: &TestApp, key: &str, extension: &str) -> f64 {
    let object = app.storage.get(key).await.expect("the audio is stored");
    let file = TempFile::new(&object.bytes, extension);
    audio_check::ffprobe(file.path()).duration
}

#[tokio::test]
async fn directions_labels_and_short_turns_are_judged_by_what_is_spoken() {
    let app = realistic_app().await;
    // A 20-turn dialogue of short turns: its labels are a third of its
    // characters and are never spoken.
    let replies = [
        "Did you hear?",
        "Hear what?",
        "The mill is open again.",
        "Since when?",
        "Since Monday, I think.",
    ];
    let dialogue: String = (0..20)
        .map(|i| format!("Speaker {}: {}\n", 1 + i % 2, replies[i % replies.len()]))
        .collect();
    let jobs = [
        (
            "seed",
            json!({"text": "Narrate softly: the quick brown fox jumps over the lazy dog.",
                   "voice_1": "Kore", "version": 2, "format": "mp3"}),
        ),
        (
            "cheerful",
            json!({"text": "Say cheerfully: your order has shipped!", "voice_1": "Puck",
                   "temperature": 0.7, "version": 2, "format": "mp3"}),
        ),
        (
            "dialogue",
            json!({"text": dialogue.trim_end(), "voice_1": "Kore", "voice_2": "Puck",
                   "version": 2, "format": "ogg"}),
        ),
    ];
    for (id, body) in &jobs {
        let mut body = body.clone();
        body["job_id"] = json!(id);
        app.publish_json(body).await;
    }
    let queue = app.events_queue().to_owned();
    let mut done = Vec::new();
    for _ in &jobs {
        let received = app
            .next_event_within(&queue, Duration::from_secs(120))
            .await;
        done.push(received.completed().clone());
    }
    let stats = app.sim.stats();
    assert_eq!(
        stats.submits_accepted, 3,
        "each job paid once: {:?}",
        stats.submits_by_text
    );
    let dialogue_data = done.iter().find(|d| d.job_id == "dialogue").unwrap();
    assert_eq!(dialogue_data.audio.content_type, "audio/ogg");
    // What the simulator spoke: the replies, not the labels.
    let said: String = (0..20)
        .map(|i| format!("{}\n", replies[i % replies.len()]))
        .collect();
    let expected = speech_seconds(said.trim_end(), "Kore");
    let probed = probed_seconds(&app, &dialogue_data.audio.key, "ogg").await;
    assert!(
        probed > 0.8 * expected,
        "{probed:.1} s of Ogg for {expected:.1} s of speech"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn chinese_japanese_and_thai_are_planned_by_their_speech_and_delivered_whole() {
    let app = realistic_app().await;
    // 12,000 Chinese characters: ≈ 2,400 s of speech at 5 a second, more
    // than four calls' cap if cut by characters.
    let zh = "我们今天在这里讨论一个很长的故事，它有许多句子。".repeat(500);
    let ja = "今日はとても長い物語を読みます。ゆっくり聞いてください。".repeat(100);
    let th = "ภาษาไทยไม่มีช่องว่างระหว่างคำ จึงต้องตัดที่ขอบเขตของกลุ่มอักขระ ".repeat(50);
    for (id, text) in [("zh", &zh), ("ja", &ja), ("th", &th)] {
        app.publish_json(json!({
            "job_id": id, "text": text, "voice_1": "Kore", "version": 2,
            "captions": ["vtt"],
        }))
        .await;
    }
    let queue = app.events_queue().to_owned();
    let mut done = Vec::new();
    for _ in 0..3 {
        let received = app
            .next_event_within(&queue, Duration::from_secs(300))
            .await;
        done.push(received.completed().clone());
    }
    let stats = app.sim.stats();
    let parts: u32 = done.iter().map(|d| d.parts).sum();
    assert_eq!(
        stats.submits_accepted,
        u64::from(parts),
        "each part paid once"
    );
    for (id, text) in [("zh", &zh), ("ja", &ja), ("th", &th)] {
        let data = done.iter().find(|d| d.job_id == id).unwrap();
        let expected = speech_seconds(text.trim(), "Kore");
        let probed = probed_seconds(&app, &data.audio.key, "wav").await;
        // The whole text, nothing cut at the cap: the parts' speech plus
        // the pauses between them.
        assert!(
            probed > 0.97 * expected && probed < 1.05 * expected + f64::from(data.parts),
            "{id}: {probed:.1} s delivered for {expected:.1} s of speech in {} parts",
            data.parts
        );
        let per_part = expected / f64::from(data.parts);
        assert!(per_part < 300.0, "{id}: {per_part:.0} s a part");
        // Captions stay inside the audio.
        let caption = &data.audio.captions[0];
        let object = app.storage.get(&caption.key).await.unwrap();
        let file = TempFile::new(&object.bytes, "vtt");
        let cues = audio_check::parse_captions(file.path(), "vtt");
        let last = cues.last().expect("cues").1;
        assert!(
            last <= probed + 0.01,
            "{id}: a cue ends at {last} s of {probed}"
        );
    }
    app.cleanup().await;
}
