//! The API as an untrusted upstream (issue 24, item 3): media URLs and their
//! redirects that point at a loopback port nobody listed are never fetched,
//! a server's absurd wait hint is clamped, hostile audio headers are refused
//! before anything is sized by them, and no media URL's query (a signed
//! URL's signature) reaches an event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use segmind_sim::RawAnswer;
use serde_json::json;
use tts_worker::testing::config::RateScope;

use crate::helpers::{TestApp, spawn_app_with};

/// A loopback port that counts the connections made to it: what a service
/// of the pod's network (a metadata endpoint, the broker's management port)
/// would see of a worker that followed a hostile URL.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, count)
}

/// Asserts the job's failure is `media_refused`, names the refusal, and
/// shows no part of the signed URL's query.
async fn assert_media_refused(app: &TestApp, job_id: &str) {
    let received = app.next_event().await;
    assert_eq!(
        received.event.kind, "tts.job.failed",
        "{:?}",
        received.event
    );
    let f = received.failed();
    assert_eq!(f.job_id, job_id);
    assert_eq!(f.error.code, "media_refused", "{}", f.error.message);
    assert!(!f.error.retryable);
    assert!(
        f.error.message.contains("segmind.media_allow_private"),
        "{}",
        f.error.message
    );
    assert!(
        !f.error.message.contains("Signature"),
        "a media URL's query leaked into the event: {}",
        f.error.message
    );
}

#[tokio::test]
async fn a_media_url_on_an_unlisted_loopback_port_is_never_fetched() {
    let (target, connections) = counting_listener().await;
    let app = spawn_app_with(
        |sim| sim.media_public_url = Some(format!("http://{target}")),
        |_| {},
    )
    .await;
    app.publish_json(json!({"text": "Fetch me from anywhere.", "job_id": "ssrf-1"}))
        .await;
    assert_media_refused(&app, "ssrf-1").await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the unlisted port was connected to"
    );
    assert_eq!(app.sim.stats().submits_accepted, 1);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_redirect_to_an_unlisted_loopback_port_is_never_followed() {
    let (target, connections) = counting_listener().await;
    let app = spawn_app_with(|_| {}, |_| {}).await;
    // The listed media host answers with a redirect to the unlisted port.
    app.sim.redirect_media(Some(format!("http://{target}")));
    app.publish_json(json!({"text": "Follow me somewhere else.", "job_id": "ssrf-2"}))
        .await;
    assert_media_refused(&app, "ssrf-2").await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert!(
        app.sim.stats().media_fetches >= 1,
        "the listed media host was asked"
    );
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_retry_after_of_2_pow_64_seconds_is_clamped_and_every_job_completes() {
    let app = spawn_app_with(
        |_| {},
        // The rate budget is only in play under a rate limit; polls are
        // not paced, so the jobs' time is the submissions' pacing after
        // the 429s (a replica's share cut to a fifth of the limit).
        |s| {
            s.segmind.rate_limit_per_minute = Some(600);
            s.segmind.rate_limit_scope = RateScope::Submits;
            // The budget's recovery after the 429s, not the hint, sets the
            // pace (a share cut to a fifth of the limit grows back slowly).
            s.segmind.job_deadline = Duration::from_secs(120);
        },
    )
    .await;
    let started = std::time::Instant::now();
    let forever = RawAnswer {
        status: 429,
        headers: vec![("retry-after".into(), u64::MAX.to_string())],
        body: br#"{"error":"Rate limit exceeded"}"#.to_vec(),
    };
    app.sim.inject_raw(vec![forever; 3]);
    for i in 0..3 {
        app.publish_json(
            json!({"text": format!("Patience number {i}."), "job_id": format!("wait-{i}")}),
        )
        .await;
    }
    let mut done = Vec::new();
    for _ in 0..3 {
        let received = app
            .next_event_within(app.events_queue(), Duration::from_secs(120))
            .await;
        assert_eq!(
            received.event.kind, "tts.job.completed",
            "{:?}",
            received.event
        );
        done.push(received.completed().job_id.clone());
    }
    done.sort();
    assert_eq!(done, ["wait-0", "wait-1", "wait-2"]);
    // Waiting as told would take 5.8 × 10^11 years; clamped to
    // segmind.retry_max (0.5 s here) it takes the budget's own pacing.
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.sim.stats().faults_injected, 3);
    assert_eq!(app.stop().await, 0);
}

/// A 16-bit PCM WAV header claiming `rate` Hz, with a second of samples at
/// 24 kHz behind it.
fn wav_claiming(rate: u32) -> Vec<u8> {
    let data = vec![0x10u8; 48_000];
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&rate.saturating_mul(2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    wav
}

#[tokio::test]
async fn a_wav_claiming_a_billion_hertz_is_refused_and_not_paid_for_again() {
    let app = spawn_app_with(|_| {}, |_| {}).await;
    app.sim
        .serve_media(wav_claiming(1_000_000_000), "audio/wav");
    app.publish_json(json!({"text": "A very high voice.", "job_id": "hz-1"}))
        .await;
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "audio_invalid");
    assert!(
        f.error.message.contains("1000000000 Hz"),
        "{}",
        f.error.message
    );
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "hostile audio is not a reason to pay again"
    );
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn an_mp3_that_decodes_past_the_cap_is_refused() {
    // 700 s of 8 kHz mono MP3 (≈ 1.4 MB), made by ffmpeg: past the 600 s
    // any one call can produce.
    let path = std::env::temp_dir().join(format!("tts-long-{}.mp3", uuid::Uuid::new_v4()));
    let made = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("sine=frequency=220:sample_rate=8000")
        .args(["-t", "700", "-ac", "1", "-b:a", "16k"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(made.success());
    let mp3 = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let app = spawn_app_with(|_| {}, |_| {}).await;
    app.sim.serve_media(mp3, "audio/mpeg");
    app.publish_json(json!({"text": "A very long take.", "job_id": "long-1"}))
        .await;
    let received = app
        .next_event_within(app.events_queue(), Duration::from_secs(60))
        .await;
    let f = received.failed();
    assert_eq!(f.error.code, "audio_invalid");
    assert!(
        f.error.message.contains("longer than 600 s"),
        "{}",
        f.error.message
    );
    assert_eq!(app.sim.stats().submits_accepted, 1);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_media_host_name_that_resolves_to_loopback_is_never_connected() {
    // https and a name nobody listed: the URL passes, the address it
    // resolves to does not (checked in the media client's resolver, so a
    // name cannot point inward after the check).
    let (target, connections) = counting_listener().await;
    let app = spawn_app_with(
        |sim| sim.media_public_url = Some(format!("https://localhost:{}", target.port())),
        |_| {},
    )
    .await;
    app.publish_json(json!({"text": "Resolve me inward.", "job_id": "ssrf-3"}))
        .await;
    assert_media_refused(&app, "ssrf-3").await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the loopback port was connected to"
    );
    assert_eq!(app.stop().await, 0);
}
