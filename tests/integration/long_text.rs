//! Long texts as one job: cut into parts, synthesized in parallel, each
//! part paid once, stitched into one WAV that an independent decoder reads,
//! with timing marks beside it.

use std::collections::HashSet;

use segmind_sim::model::{OUTPUT_CAP, SpeechModel, chars_per_second};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audio_check::{self, TempFile};
use crate::helpers::{TestApp, spawn_app_with};

/// Paragraphs of plain prose, each starting with its number so the
/// simulator's per-text counts tell the parts apart.
pub(crate) fn narration(paragraphs: usize, chars_each: usize) -> String {
    let sentence = "The river bends past the old mill, and the light turns gold over the fields. ";
    (0..paragraphs)
        .map(|i| {
            let mut p = format!("Paragraph {i} begins here. ");
            while p.len() < chars_each {
                p.push_str(sentence);
            }
            p.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A worker whose simulator speaks at a realistic rate (≈ 15 characters a
/// second by voice, cut at Gemini's 512 s cap), with parts of `part_chars`.
pub async fn long_text_app(part_chars: usize) -> TestApp {
    spawn_app_with(
        |sim| sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP },
        |s| {
            s.long_text.part_chars = part_chars;
            s.long_text.max_parallel_parts = 3;
        },
    )
    .await
}

/// The duration `ffprobe` (Debian's ffmpeg, not our code) reads from
/// `bytes`, which must be Gemini's PCM format.
fn ffprobe_seconds(bytes: &[u8]) -> f64 {
    let file = TempFile::new(bytes, "wav");
    let probe = audio_check::ffprobe(file.path());
    assert_eq!(probe.codec, "pcm_s16le");
    assert_eq!(probe.sample_rate, 24_000);
    assert_eq!(probe.channels, 1);
    probe.duration
}

/// A mark's character count and seconds of audio.
fn span_of(mark: &Value) -> (u64, f64) {
    let chars = mark["chars"][1].as_u64().unwrap() - mark["chars"][0].as_u64().unwrap();
    let ms = mark["end_ms"].as_u64().unwrap() - mark["start_ms"].as_u64().unwrap();
    (chars, ms as f64 / 1000.0)
}

/// The stored object of a completion: its size and SHA-256 are the
/// event's, and ffprobe reads the event's duration from it.
async fn check_object(app: &TestApp, data: &tts_worker::testing::wire::CompletedData) {
    let object = app.storage.get(&data.audio.key).await.expect("stored");
    assert_eq!(object.bytes.len() as u64, data.audio.size_bytes);
    assert_eq!(
        hex::encode(Sha256::digest(&object.bytes)),
        data.audio.sha256
    );
    let duration = data.audio.duration_seconds.expect("a duration");
    let probed = ffprobe_seconds(&object.bytes);
    assert!(
        (probed - duration).abs() < 0.01,
        "ffprobe {probed} s, event {duration} s"
    );
}

async fn marks_of(app: &TestApp, key: &str) -> Value {
    let object = app.storage.get(key).await.expect("marks stored");
    let marks: Value = serde_json::from_slice(&object.bytes).expect("marks are JSON");
    // What a consumer of the marks reads: valid by the committed schema.
    crate::schemas::assert_valid_marks(&marks);
    marks
}

#[tokio::test]
async fn a_long_narration_ends_as_one_stitched_object_with_its_marks() {
    let app = long_text_app(1_000).await;
    let text = narration(12, 700);
    let total_chars = text.chars().count();
    app.publish_json(json!({
        "text": text,
        "voice_1": "Charon",
        "style": "Narrate calmly",
        "job_id": "chapter-1",
    }))
    .await;

    let received = app.next_event().await;
    assert_eq!(received.event.kind, "tts.job.completed");
    let data = received.completed().clone();
    let stats = app.sim.stats();
    // One event, one object, one paid request per part.
    assert!(data.parts >= 9, "{} parts", data.parts);
    assert_eq!(stats.submits_accepted, u64::from(data.parts));
    assert_eq!(data.segmind.request_ids.len(), data.parts as usize);
    let distinct: HashSet<&String> = data.segmind.request_ids.iter().collect();
    assert_eq!(distinct.len(), data.parts as usize);
    assert_eq!(data.segmind.request_id, data.segmind.request_ids[0]);
    assert!(data.segmind.calls >= 3 * data.parts);
    // Every part was sent with the style in front.
    assert!(
        stats
            .submits_by_text
            .keys()
            .all(|t| t.starts_with("Narrate calmly: Paragraph")),
        "{:?}",
        stats.submits_by_text.keys()
    );

    // The object: what the event says, decodable by ffprobe, as long as
    // the event and the marks say.
    assert_eq!(
        data.audio.key,
        format!("{}chapter-1.wav", app.settings.s3.prefix)
    );
    check_object(&app, &data).await;
    let duration = data.audio.duration_seconds.unwrap();

    let marks_key = data.audio.marks_key.clone().expect("a marks object");
    assert_eq!(marks_key, format!("{}.marks.json", data.audio.key));
    let marks = marks_of(&app, &marks_key).await;
    let parts = marks["parts"].as_array().unwrap();
    assert_eq!(parts.len(), data.parts as usize);
    assert_eq!(
        marks["duration_ms"].as_u64().unwrap(),
        (duration * 1000.0) as u64
    );
    // Character ranges cover the text in order; audio spans follow each
    // other with a pause between; each part is as long as its text at the
    // voice's rate (the simulator's model), give or take the trimmed edges.
    let cps = chars_per_second("Charon");
    let mut chars_at = 0;
    let mut audio_at = 0;
    let mut spoken = 0.0;
    for (i, mark) in parts.iter().enumerate() {
        let [from, to] = [
            mark["chars"][0].as_u64().unwrap(),
            mark["chars"][1].as_u64().unwrap(),
        ];
        let (start, end) = (
            mark["start_ms"].as_u64().unwrap(),
            mark["end_ms"].as_u64().unwrap(),
        );
        assert!(
            from >= chars_at && to > from,
            "part {i}: chars {from}..{to}"
        );
        assert!(start > audio_at || i == 0, "part {i} starts after a pause");
        assert_eq!(mark["request_id"], data.segmind.request_ids[i].as_str());
        let text = &text
            .chars()
            .skip(from as usize)
            .take((to - from) as usize)
            .collect::<String>();
        // The style in front of every part is followed, not spoken.
        let expected = text.trim().chars().count() as f64 / cps;
        let seconds = (end - start) as f64 / 1000.0;
        assert!(
            (seconds - expected).abs() < 0.3,
            "part {i}: {seconds} s for {expected} s of text"
        );
        spoken += seconds;
        chars_at = to;
        audio_at = end;
    }
    assert!(chars_at as usize >= total_chars - 1);
    // The audio is the parts plus short pauses, nothing lost or doubled.
    let pauses = duration - spoken;
    assert!(
        pauses > 0.1 * f64::from(data.parts - 1) && pauses < 1.0 * f64::from(data.parts),
        "{pauses} s of pauses for {} joins",
        data.parts - 1
    );

    // Once the event is confirmed the intermediate parts (one object per
    // take, named after its request) are removed; the records stay.
    app.wait_for_no_part_objects(Some("chapter-1")).await;
    let dir = format!("{}_parts/chapter-1/", app.settings.s3.prefix);
    let left = app.storage.list(&dir).await.unwrap();
    assert!(left.iter().any(|(k, _)| k.ends_with(".json")), "{left:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_long_dialogue_keeps_both_speakers_and_their_labels_in_every_part() {
    let app = long_text_app(600).await;
    let mut text = String::new();
    for turn in 0..24 {
        let speaker = 1 + turn % 2;
        text.push_str(&format!(
            "Speaker {speaker}: Turn {turn} of the interview, where we talk about rivers, mills and the light over the fields in autumn.\n"
        ));
    }
    // A turn longer than a part is cut inside and keeps its label.
    text.push_str("Speaker 1: ");
    for _ in 0..12 {
        text.push_str("This closing turn goes on, sentence after sentence, about the harvest. ");
    }
    app.publish_json(json!({
        "text": text.trim_end(),
        "voice_1": "Kore",
        "voice_2": "Puck",
        "job_id": "interview-1",
    }))
    .await;
    let received = app.next_event().await;
    let data = received.completed().clone();
    assert!(data.parts >= 5, "{} parts", data.parts);
    let stats = app.sim.stats();
    assert_eq!(stats.submits_accepted, u64::from(data.parts));
    assert!(
        stats
            .submits_by_text
            .keys()
            .all(|t| t.starts_with("Speaker 1:") || t.starts_with("Speaker 2:")),
        "every part starts with a speaker's label: {:?}",
        stats.submits_by_text.keys()
    );
    check_object(&app, &data).await;
    let marks = marks_of(&app, data.audio.marks_key.as_deref().unwrap()).await;
    assert_eq!(
        marks["parts"].as_array().unwrap().len(),
        data.parts as usize
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_silently_truncated_part_is_submitted_again_alone() {
    let app = long_text_app(800).await;
    let mut text = narration(6, 700);
    // The simulator truncates the third paragraph's first take to 30 %.
    let third = text.find("Paragraph 2 begins").unwrap();
    text.insert_str(
        third + "Paragraph 2 begins".len(),
        " [[sim:truncated-once]]",
    );
    app.publish_json(json!({"text": text, "voice_1": "Kore", "job_id": "cut-1"}))
        .await;
    let received = app.next_event().await;
    let data = received.completed().clone();
    let stats = app.sim.stats();
    // Only the truncated part was paid twice.
    assert_eq!(stats.submits_accepted, u64::from(data.parts) + 1);
    let twice: Vec<&String> = stats
        .submits_by_text
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| t)
        .collect();
    assert_eq!(twice.len(), 1, "{:?}", stats.submits_by_text);
    assert!(twice[0].starts_with("Paragraph 2 begins"), "{twice:?}");
    // The stitched audio holds the whole part, not the cut take.
    let marks = marks_of(&app, data.audio.marks_key.as_deref().unwrap()).await;
    let cps = chars_per_second("Kore");
    for (i, mark) in marks["parts"].as_array().unwrap().iter().enumerate() {
        let (chars, seconds) = span_of(mark);
        assert!(
            seconds > 0.8 * chars as f64 / cps,
            "part {i}: {seconds} s for {chars} characters"
        );
    }
    let retries = app
        .metric("tts_retries_total{reason=\"audio_invalid\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(retries, 1.0);
    app.cleanup().await;
}

/// A voice far slower than the plan expects (a "read slowly" direction at
/// 40 % of its pace): a part planned at ≈ 400 s of speech runs to ≈ 1,000 s,
/// and the simulator cuts its take at Gemini's 512 s cap, billed as a
/// success. The cut take is never delivered: the part is split into
/// pieces, each paid once, and the file holds the whole text.
#[tokio::test]
async fn a_take_cut_at_the_output_cap_is_split_and_never_delivered() {
    const PACE: f64 = 0.4;
    let app = spawn_app_with(
        |sim| {
            sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP };
            sim.pace = PACE;
        },
        |s| {
            s.long_text.part_chars = 7_000;
            s.long_text.max_parallel_parts = 3;
        },
    )
    .await;
    // Five paragraphs of ≈ 1,500 characters: the first four make one part
    // (≈ 400 s at the usual pace), the fifth another.
    let text = narration(5, 1_500);
    app.publish_json(json!({"text": text, "voice_1": "Kore", "job_id": "slow-1"}))
        .await;
    let received = app.next_event().await;
    assert_eq!(
        received.event.kind, "tts.job.completed",
        "{:?}",
        received.event
    );
    let data = received.completed().clone();
    let stats = app.sim.stats();
    // The cut take is the only one paid and not delivered: the first part
    // became its pieces (one a paragraph), the second stayed whole.
    assert!(data.parts >= 4, "{} parts delivered", data.parts);
    assert_eq!(stats.submits_accepted, u64::from(data.parts) + 1);
    let distinct: HashSet<&String> = data.segmind.request_ids.iter().collect();
    assert_eq!(distinct.len(), data.parts as usize);
    let cut = app
        .metric("tts_retries_total{reason=\"output_cap\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(cut, 1.0);
    // Independent decoders: ffprobe reads the event's duration, which is
    // what the whole text takes at that pace, not the cap's 512 s plus the
    // last part.
    check_object(&app, &data).await;
    let cps = chars_per_second("Kore") * PACE;
    let expected = text.chars().count() as f64 / cps;
    let duration = data.audio.duration_seconds.unwrap();
    assert!(
        duration > 0.9 * expected && duration < 1.3 * expected,
        "{duration} s delivered for ≈ {expected} s of speech"
    );
    // Every delivered take is whole: none at the cap, each as long as its
    // characters take.
    let marks = marks_of(&app, data.audio.marks_key.as_deref().unwrap()).await;
    let parts = marks["parts"].as_array().unwrap();
    assert_eq!(parts.len(), data.parts as usize);
    for (i, mark) in parts.iter().enumerate() {
        let (chars, seconds) = span_of(mark);
        assert!(seconds < 500.0, "part {i}: {seconds} s, at the cap");
        assert!(
            seconds > 0.8 * chars as f64 / cps,
            "part {i}: {seconds} s for {chars} characters"
        );
    }
    // Once acked, no intermediate object is left: the pieces' included.
    app.wait_for_no_part_objects(Some("slow-1")).await;
    app.cleanup().await;
}

#[tokio::test]
async fn parts_served_as_mp3_are_decoded_and_stitched_into_one_wav() {
    let app = spawn_app_with(
        |sim| {
            sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP };
            sim.container = segmind_sim::Container::Mp3;
        },
        |s| s.long_text.part_chars = 800,
    )
    .await;
    let text = narration(4, 700);
    app.publish_json(json!({"text": text, "voice_1": "Kore", "job_id": "mp3-1"}))
        .await;
    let received = app.next_event().await;
    let data = received.completed().clone();
    assert!(data.parts >= 4, "{} parts", data.parts);
    assert_eq!(app.sim.stats().submits_accepted, u64::from(data.parts));
    assert_eq!(data.audio.content_type, "audio/wav");
    check_object(&app, &data).await;
    // Each part is as long as its text at the voice's rate: the MP3's
    // encoder delay and padding were trimmed with the silence.
    let marks = marks_of(&app, data.audio.marks_key.as_deref().unwrap()).await;
    let cps = chars_per_second("Kore");
    for (i, mark) in marks["parts"].as_array().unwrap().iter().enumerate() {
        let [from, to] = [
            mark["chars"][0].as_u64().unwrap(),
            mark["chars"][1].as_u64().unwrap(),
        ];
        let part: String = text
            .chars()
            .skip(from as usize)
            .take((to - from) as usize)
            .collect();
        let expected = part.trim().chars().count() as f64 / cps;
        let (_, seconds) = span_of(mark);
        assert!(
            (seconds - expected).abs() < 0.3,
            "part {i}: {seconds} s for {expected} s"
        );
    }
    app.cleanup().await;
}
