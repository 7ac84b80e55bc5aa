//! Audio people can ship: every format the worker writes, at the rate and
//! loudness asked, checked with independent decoders (`audio_check`);
//! seams without long gaps or clicks; caption files and sentence marks; a
//! replay with other options is another deliverable.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audio_check::{self, TempFile};
use crate::helpers::TestApp;
use crate::long_text::long_text_app;

/// Paragraphs of plain prose; sentences of varied length.
fn narration(paragraphs: usize, chars_each: usize) -> String {
    let sentences = [
        "The river bends past the old mill, and the light turns gold over the fields.",
        "Nobody remembers who built the bridge.",
        "In spring the water rises to the third stone, and the children count the days until it falls again.",
        "A heron waits.",
        "By evening the village smells of bread and woodsmoke, and the bells ring twice.",
    ];
    (0..paragraphs)
        .map(|i| {
            let mut p = format!("Paragraph {i} begins here.");
            let mut k = i;
            while p.len() < chars_each {
                p.push(' ');
                p.push_str(sentences[k % sentences.len()]);
                k += 1;
            }
            p
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// What a job asks for and what the checks expect of it.
struct Case {
    format: &'static str,
    rate: u32,
    lufs: f64,
    extra: Value,
}

impl Case {
    fn cases() -> Vec<Case> {
        vec![
            Case {
                format: "wav",
                rate: 16_000,
                lufs: -16.0,
                extra: json!({}),
            },
            Case {
                format: "mp3",
                rate: 44_100,
                lufs: -16.0,
                extra: json!({"bitrate_kbps": 64}),
            },
            Case {
                format: "ogg",
                rate: 48_000,
                lufs: -19.0,
                extra: json!({}),
            },
            Case {
                format: "flac",
                rate: 48_000,
                lufs: -23.0,
                extra: json!({}),
            },
            Case {
                format: "mulaw",
                rate: 8_000,
                lufs: -19.0,
                extra: json!({}),
            },
        ]
    }

    fn request(&self, text: &str, job_id: &str) -> Value {
        let mut r = json!({
            "version": 2,
            "text": text,
            "voice_1": "Kore",
            "job_id": job_id,
            "format": self.format,
            "sample_rate": self.rate,
            "loudness_lufs": self.lufs,
            "captions": ["vtt", "srt"],
        });
        for (k, v) in self.extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    }

    fn extension(&self) -> &'static str {
        match self.format {
            "mulaw" => "wav",
            f => f,
        }
    }

    fn content_type(&self) -> &'static str {
        match self.format {
            "mp3" => "audio/mpeg",
            "ogg" => "audio/ogg",
            "flac" => "audio/flac",
            _ => "audio/wav",
        }
    }

    fn codec(&self) -> &'static str {
        match self.format {
            "wav" => "pcm_s16le",
            "mulaw" => "pcm_mulaw",
            "mp3" => "mp3",
            "ogg" => "opus",
            _ => "flac",
        }
    }
}

/// Runs every case on `text`; returns each case's event data.
async fn deliver_all(
    app: &TestApp,
    text: &str,
    tag: &str,
) -> Vec<tts_worker::testing::wire::CompletedData> {
    let cases = Case::cases();
    for case in &cases {
        app.publish_json(case.request(text, &format!("{tag}-{}", case.format)))
            .await;
    }
    let mut done = Vec::new();
    let queue = app.events_queue().to_owned();
    for _ in &cases {
        let received = app
            .next_event_within(&queue, Duration::from_secs(240))
            .await;
        done.push(received.completed().clone());
    }
    cases
        .iter()
        .map(|case| {
            done.iter()
                .find(|d| d.job_id == format!("{tag}-{}", case.format))
                .unwrap_or_else(|| panic!("an event for {}", case.format))
                .clone()
        })
        .collect()
}

/// The stored object of a completion, checked against its event and by
/// independent decoders: codec, rate, channels, duration, loudness, true
/// peak; returns it as a temporary file.
async fn check_delivered(
    app: &TestApp,
    case: &Case,
    data: &tts_worker::testing::wire::CompletedData,
) -> TempFile {
    let a = &data.audio;
    assert!(
        a.key.ends_with(&format!(".{}", case.extension())),
        "{}: key {}",
        case.format,
        a.key
    );
    assert_eq!(a.content_type, case.content_type());
    let info = app.storage.head(&a.key).await.unwrap().expect("stored");
    assert_eq!(info.content_type.as_deref(), Some(case.content_type()));
    assert_eq!(a.format.as_deref(), Some(case.format));
    assert_eq!(a.sample_rate, Some(case.rate));
    assert_eq!(a.channels, Some(1));
    let object = app.storage.get(&a.key).await.expect("stored");
    assert_eq!(object.bytes.len() as u64, a.size_bytes);
    assert_eq!(hex::encode(Sha256::digest(&object.bytes)), a.sha256);
    let file = TempFile::new(&object.bytes, case.extension());

    let probe = audio_check::ffprobe(file.path());
    assert_eq!(probe.codec, case.codec(), "{}", case.format);
    assert_eq!(probe.channels, 1);
    let container = match case.format {
        "mulaw" => "wav",
        f => f,
    };
    assert_eq!(probe.format_name, container, "{}", case.format);
    // ffmpeg decodes Opus at 48 kHz whatever the input rate (opusinfo
    // reads the original rate below).
    if case.format != "ogg" {
        assert_eq!(probe.sample_rate, case.rate, "{}", case.format);
    }
    let duration = a.duration_seconds.expect("a duration");
    // The container's own duration (from its header or last page; an
    // MP3's from its Info frame: LAME's delay and padding included, as
    // ffprobe counts them for any LAME file).
    let container_slack = if case.format == "mp3" {
        (1_105.0 + 1_727.0) / f64::from(case.rate)
    } else {
        0.03
    };
    assert!(
        (probe.duration - duration).abs() <= container_slack,
        "{}: ffprobe reads {} s, the event says {duration} s",
        case.format,
        probe.duration
    );
    // What ffmpeg decodes: the event's duration (MP3 gapless: LAME's delay
    // and padding trimmed).
    let samples = audio_check::decode(file.path(), case.rate).len();
    let decoded = samples as f64 / f64::from(case.rate);
    assert!(
        (decoded - duration).abs() <= 0.03,
        "{}: ffmpeg decodes {decoded} s, the event says {duration} s",
        case.format
    );
    if case.format == "mp3" {
        // Gapless: exactly the programme's samples, a chapter of several
        // parts as a short text.
        let programme = (duration * f64::from(case.rate)).round() as usize;
        assert_eq!(samples, programme, "mp3: decoded samples");
    }
    match case.format {
        "flac" => audio_check::flac_test(file.path()),
        "ogg" => {
            let report = audio_check::opusinfo(file.path());
            assert!(
                report.contains(&format!("Original sample rate: {} Hz", case.rate)),
                "{report}"
            );
        }
        "wav" | "mulaw" => {
            let info = audio_check::sox_info(file.path());
            assert!(
                info.contains(&format!("Sample Rate    : {}", case.rate)),
                "{info}"
            );
            let encoding = if case.format == "wav" {
                "16-bit Signed Integer PCM"
            } else {
                "u-law"
            };
            assert!(info.contains(encoding), "{info}");
        }
        _ => {}
    }

    // Loudness: on target within ±1 LU by ffmpeg's meter, the ceiling
    // (−1 dBTP by default) held, and the event says what ffmpeg measures.
    let (lufs, peak) = audio_check::ebur128(file.path());
    assert!(
        (lufs - case.lufs).abs() <= 1.0,
        "{}: {lufs} LUFS for a target of {}",
        case.format,
        case.lufs
    );
    assert!(peak <= -1.0 + 0.5, "{}: true peak {peak} dBTP", case.format);
    let said = a.loudness_lufs.expect("the delivered loudness");
    assert!(
        (said - lufs).abs() <= 0.5,
        "{}: the event says {said} LUFS, ffmpeg measures {lufs}",
        case.format
    );
    let said_peak = a.true_peak_db.expect("the delivered true peak");
    assert!(
        (said_peak - peak).abs() <= 0.7,
        "{}: the event says {said_peak} dBTP, ffmpeg measures {peak}",
        case.format
    );
    file
}

/// The caption files of a completion parse with independent parsers, in
/// order, inside the audio.
async fn check_captions(app: &TestApp, data: &tts_worker::testing::wire::CompletedData) -> usize {
    let a = &data.audio;
    assert_eq!(a.captions.len(), 2, "{:?}", a.captions);
    let duration = a.duration_seconds.unwrap();
    let mut counts = Vec::new();
    for caption in &a.captions {
        // Named from the audio's full key: `x.mp3` and `x.ogg` never share
        // a caption file.
        assert_eq!(caption.key, format!("{}.{}", a.key, caption.format));
        let object = app.storage.get(&caption.key).await.expect("caption stored");
        let info = app.storage.head(&caption.key).await.unwrap().unwrap();
        assert_eq!(info.job_id.as_deref(), Some(data.job_id.as_str()));
        assert_eq!(
            info.content_type.as_deref(),
            Some(caption.content_type.as_str())
        );
        let file = TempFile::new(&object.bytes, &caption.format);
        let cues = audio_check::parse_captions(file.path(), &caption.format);
        assert!(!cues.is_empty());
        let mut at = 0.0;
        for (start, end, text) in &cues {
            assert!(*start >= at && end > start, "{start}..{end} after {at}");
            assert!(*end <= duration + 0.001, "{end} s in {duration} s of audio");
            for line in text.lines() {
                assert!(line.chars().count() <= 42, "line {line:?}");
            }
            at = *end;
        }
        counts.push(cues.len());
    }
    assert_eq!(counts[0], counts[1], "vtt and srt hold the same cues");
    counts[0]
}

#[tokio::test]
async fn every_format_of_a_short_text_passes_independent_decoders_on_target() {
    let app = long_text_app(3_000).await;
    let text = "The lighthouse keeper counted the ships that came home. One by one, they rounded the point. \
                By nightfall the harbour was full, and the keeper wrote the last name in his book.";
    let events = deliver_all(&app, text, "short").await;
    for (case, data) in Case::cases().iter().zip(&events) {
        assert_eq!(data.parts, 1);
        check_delivered(&app, case, data).await;
        let cues = check_captions(&app, data).await;
        assert!(
            cues >= 3,
            "{}: {cues} cues for three sentences",
            case.format
        );
    }
    // One paid request a job; the intermediates go once the event is out.
    assert_eq!(app.sim.stats().submits_accepted, 5);
    app.wait_for_no_part_objects(None).await;
    app.cleanup().await;
}

/// The pause the worker puts between two parts, from what separates them
/// in the text.
fn intended_pause(text: &[char], end_of_first: usize, start_of_next: usize) -> f64 {
    // The whitespace between the two parts' words, wherever the ranges
    // put it.
    let mut from = end_of_first.min(text.len());
    while from > 0 && text[from - 1].is_whitespace() {
        from -= 1;
    }
    let mut to = start_of_next.max(from);
    while to < text.len() && text[to].is_whitespace() {
        to += 1;
    }
    let between: String = text[from..to].iter().collect();
    if between.contains("\n\n") {
        0.8
    } else if from > 0 && ['.', '!', '?'].contains(&text[from - 1]) {
        0.4
    } else {
        0.15
    }
}

/// Loud 10 ms windows (peak at −40 dBFS or more) of `pcm`.
fn loud_windows(pcm: &[i16], rate: u32) -> Vec<bool> {
    pcm.chunks((rate / 100) as usize)
        .map(|w| w.iter().any(|s| s.unsigned_abs() >= 328))
        .collect()
}

#[tokio::test]
async fn every_format_of_a_long_narration_has_clean_seams_and_one_loudness() {
    let app = long_text_app(900).await;
    let text = narration(4, 1_300);
    let chars: Vec<char> = text.chars().collect();
    let events = deliver_all(&app, &text, "long").await;
    for (case, data) in Case::cases().iter().zip(&events) {
        assert!(data.parts >= 5, "{}: {} parts", case.format, data.parts);
        let file = check_delivered(&app, case, data).await;
        check_captions(&app, data).await;
        let marks_key = data.audio.marks_key.as_deref().expect("marks");
        let marks: Value =
            serde_json::from_slice(&app.storage.get(marks_key).await.unwrap().bytes).unwrap();
        let parts = marks["parts"].as_array().unwrap();
        let pcm = audio_check::decode(file.path(), case.rate);
        let loud = loud_windows(&pcm, case.rate);
        // Ordinary sample steps of the programme: what a click exceeds.
        let mut steps: Vec<u32> = pcm
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).unsigned_abs())
            .collect();
        steps.sort_unstable();
        let ordinary = steps[steps.len() * 99 / 100];
        for k in 0..parts.len() - 1 {
            let end_ms = parts[k]["end_ms"].as_u64().unwrap();
            let start_ms = parts[k + 1]["start_ms"].as_u64().unwrap();
            let intended = intended_pause(
                &chars,
                parts[k]["chars"][1].as_u64().unwrap() as usize,
                parts[k + 1]["chars"][0].as_u64().unwrap() as usize,
            );
            // The silence around the seam, as ffmpeg decodes the file.
            let middle = ((end_ms + start_ms) / 20) as usize;
            assert!(!loud[middle], "{}: seam {k} is silent", case.format);
            let first_quiet = (0..middle).rev().find(|&w| loud[w]).map_or(0, |w| w + 1);
            let last_quiet = (middle..loud.len())
                .find(|&w| loud[w])
                .unwrap_or(loud.len());
            let gap = (last_quiet - first_quiet) as f64 / 100.0;
            assert!(
                gap <= intended + 0.05 && gap >= intended - 0.1,
                "{}: a {gap} s gap at seam {k} for a {intended} s pause",
                case.format
            );
            // No click where the parts were cut: the steps there are no
            // larger than the programme's ordinary ones.
            let rate = u64::from(case.rate);
            for cut_ms in [end_ms, start_ms] {
                let at = (cut_ms * rate / 1000) as usize;
                let window = &pcm[at.saturating_sub(case.rate as usize / 50)
                    ..(at + case.rate as usize / 50).min(pcm.len())];
                let worst = window
                    .windows(2)
                    .map(|w| (i32::from(w[1]) - i32::from(w[0])).unsigned_abs())
                    .max()
                    .unwrap_or(0);
                assert!(
                    worst <= ordinary,
                    "{}: a step of {worst} at seam {k} ({cut_ms} ms) where ordinary steps are ≤ {ordinary}",
                    case.format
                );
            }
        }
    }
    // Paid once per part, whatever the format.
    let parts: u64 = events.iter().map(|d| u64::from(d.parts)).sum();
    assert_eq!(app.sim.stats().submits_accepted, parts);
    app.cleanup().await;
}

#[tokio::test]
async fn a_replay_with_other_options_never_replaces_the_first_rendering() {
    let app = long_text_app(3_000).await;
    let text = "Your order has shipped. It will arrive tomorrow before noon.";
    let ask = |bitrate: u32, key: Option<&str>| {
        let mut body = json!({"version": 2, "text": text, "job_id": "replay-1", "format": "mp3", "bitrate_kbps": bitrate});
        if let Some(key) = key {
            body["output_key"] = json!(key);
        }
        body
    };
    app.publish_json(ask(64, None)).await;
    let first = app.next_event().await.completed().clone();
    assert_eq!(first.audio.bitrate_kbps, Some(64));
    // The same job again with the same options: the stored object.
    app.publish_json(ask(64, None)).await;
    let same = app.next_event().await.completed().clone();
    assert!(same.served_from_storage);
    assert_eq!(same.audio.sha256, first.audio.sha256);
    // Other options at the same key: refused, the first object kept.
    app.publish_json(ask(32, None)).await;
    let refused = app.next_event().await.failed().clone();
    assert_eq!(refused.error.code, "output_key_taken");
    assert!(!refused.error.retryable);
    assert!(
        refused.error.message.contains("other options"),
        "{}",
        refused.error.message
    );
    let kept = app.storage.get(&first.audio.key).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&kept.bytes)), first.audio.sha256);
    // Other options at another key: rendered there from the same paid
    // request, the first object still as its event said.
    app.publish_json(ask(32, Some("replay-1-32k.mp3"))).await;
    let other = app.next_event().await.completed().clone();
    assert!(!other.served_from_storage);
    assert_ne!(other.audio.key, first.audio.key);
    assert_eq!(other.audio.bitrate_kbps, Some(32));
    assert_ne!(other.audio.sha256, first.audio.sha256);
    assert!(other.audio.size_bytes < first.audio.size_bytes);
    let stored = app.storage.get(&other.audio.key).await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&stored.bytes)),
        other.audio.sha256
    );
    let kept = app.storage.get(&first.audio.key).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&kept.bytes)), first.audio.sha256);
    assert_eq!(app.sim.stats().submits_accepted, 1, "paid once");
    app.cleanup().await;
}

#[tokio::test]
async fn two_formats_of_one_name_keep_their_own_captions() {
    let app = long_text_app(3_000).await;
    let job = |id: &str, format: &str, text: &str| {
        json!({"version": 2, "text": text, "job_id": id, "format": format,
               "output_key": format!("talk.{format}"), "captions": ["vtt"]})
    };
    app.publish_json(job(
        "talk-mp3",
        "mp3",
        "The first talk is about rivers. They run to the sea.",
    ))
    .await;
    let mp3 = app.next_event().await.completed().clone();
    app.publish_json(job(
        "talk-ogg",
        "ogg",
        "The second talk is about mountains and the snow on them. It is longer.",
    ))
    .await;
    let ogg = app.next_event().await.completed().clone();
    let (a, b) = (&mp3.audio.captions[0], &ogg.audio.captions[0]);
    assert_ne!(a.key, b.key, "each event names its own captions");
    for (caption, owner, words) in [(a, "talk-mp3", "rivers"), (b, "talk-ogg", "mountains")] {
        let info = app
            .storage
            .head(&caption.key)
            .await
            .unwrap()
            .expect("caption stored");
        assert_eq!(info.job_id.as_deref(), Some(owner), "{}", caption.key);
        let body = app.storage.get(&caption.key).await.unwrap();
        let body = String::from_utf8(body.bytes.to_vec()).unwrap();
        assert!(body.contains(words), "{}: {body}", caption.key);
    }
    // The marks too, named from the full key.
    assert_ne!(mp3.audio.marks_key, ogg.audio.marks_key);
    app.cleanup().await;
}

#[tokio::test]
async fn a_combination_no_codec_can_do_is_refused_naming_the_field() {
    let app = long_text_app(3_000).await;
    app.publish_json(
        json!({"version": 2, "text": "Hello.", "job_id": "bad-1", "format": "mulaw", "sample_rate": 44_100}),
    )
    .await;
    let received = app.next_event().await;
    let failed = received.failed();
    assert_eq!(failed.error.code, "invalid_request");
    assert!(
        failed.error.message.contains("sample_rate"),
        "{}",
        failed.error.message
    );
    assert!(!failed.error.retryable);
    assert_eq!(app.sim.stats().submits_accepted, 0);
    app.cleanup().await;
}

/// Median and 95th percentile of `errors` (ms).
fn median_p95(mut errors: Vec<u64>) -> (u64, u64) {
    errors.sort_unstable();
    let at = |q: usize| errors[(errors.len() - 1) * q / 100];
    (at(50), at(95))
}

#[tokio::test]
async fn sentence_marks_and_captions_follow_the_delivered_audio_and_the_simulators_truth() {
    let app = long_text_app(1_200).await;
    let text = narration(3, 1_100);
    // MP3 at 16 kHz: resampled; LAME's delay is trimmed by the decoder (the
    // Info frame), so the marks need no shift.
    app.publish_json(json!({
        "version": 2, "text": text, "job_id": "marks-1", "format": "mp3", "sample_rate": 16_000,
        "loudness_lufs": -18, "captions": ["vtt"],
    }))
    .await;
    let queue = app.events_queue().to_owned();
    let received = app
        .next_event_within(&queue, Duration::from_secs(120))
        .await;
    let data = received.completed().clone();
    assert!(data.parts >= 3, "{} parts", data.parts);
    let marks: Value = serde_json::from_slice(
        &app.storage
            .get(data.audio.marks_key.as_deref().unwrap())
            .await
            .unwrap()
            .bytes,
    )
    .unwrap();
    assert_eq!(marks["format"], "mp3");
    assert_eq!(marks["sample_rate"], 16_000);
    let parts = marks["parts"].as_array().unwrap();
    let sentences = marks["sentences"].as_array().unwrap();

    // Ground truth: where the simulator put each sentence in each part's
    // audio, moved to the delivered timeline by the part's mark (its
    // speech starts 40 ms after the mark: the kept margin).
    let mut expected = Vec::new();
    for part in parts {
        let truth = app
            .sim
            .truth(part["request_id"].as_str().unwrap())
            .expect("the simulator's truth for the part");
        let first = truth.sentences[0].start_ms;
        let at = part["start_ms"].as_u64().unwrap() + 40;
        for s in truth.sentences {
            expected.push((s.text, at + s.start_ms - first, at + s.end_ms - first));
        }
    }
    assert_eq!(sentences.len(), expected.len(), "one mark per sentence");
    let mut errors = Vec::new();
    for (mark, (truth_text, start, end)) in sentences.iter().zip(&expected) {
        assert_eq!(mark["text"].as_str().unwrap().trim(), truth_text.trim());
        errors.push(mark["start_ms"].as_u64().unwrap().abs_diff(*start));
        errors.push(mark["end_ms"].as_u64().unwrap().abs_diff(*end));
    }
    let (median, p95) = median_p95(errors);
    println!(
        "sentence boundaries vs the simulator's truth, delivered MP3 timeline: median {median} ms, p95 {p95} ms over {} sentences",
        sentences.len()
    );
    assert!(median < 150, "median {median} ms");
    assert!(p95 < 300, "p95 {p95} ms");

    // Independently of the worker's arithmetic: in what ffmpeg decodes,
    // each sentence starts and ends where its mark says (±50 ms).
    let object = app.storage.get(&data.audio.key).await.unwrap();
    let file = TempFile::new(&object.bytes, "mp3");
    let loud = loud_windows(&audio_check::decode(file.path(), 16_000), 16_000);
    for mark in sentences {
        let start = mark["start_ms"].as_u64().unwrap() as usize / 10;
        let end = mark["end_ms"].as_u64().unwrap() as usize / 10;
        let onset = (start.saturating_sub(5)..loud.len())
            .find(|&w| loud[w])
            .unwrap();
        let offset = (0..(end + 5).min(loud.len()))
            .rev()
            .find(|&w| loud[w])
            .unwrap()
            + 1;
        assert!(
            onset.abs_diff(start) <= 5 && offset.abs_diff(end) <= 5,
            "{mark}: sound from {} ms to {} ms",
            onset * 10,
            offset * 10
        );
    }

    // The captions: cut at sentence starts, inside the audio.
    let vtt = &data.audio.captions[0];
    let object = app.storage.get(&vtt.key).await.unwrap();
    let file = TempFile::new(&object.bytes, "vtt");
    let cues = audio_check::parse_captions(file.path(), "vtt");
    let starts: Vec<f64> = sentences
        .iter()
        .map(|m| m["start_ms"].as_u64().unwrap() as f64 / 1000.0)
        .collect();
    for (start, end, _) in &cues {
        assert!(
            starts.iter().any(|s| (s - start).abs() < 0.002)
                || sentences.iter().any(|m| {
                    let (a, b) = (
                        m["start_ms"].as_u64().unwrap() as f64 / 1000.0,
                        m["end_ms"].as_u64().unwrap() as f64 / 1000.0,
                    );
                    *start > a && *start < b
                }),
            "a cue at {start}..{end} starts at a sentence or inside one"
        );
    }
    assert!(cues.len() >= sentences.len() / 2);
    app.cleanup().await;
}
