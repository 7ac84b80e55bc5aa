//! The simulator speaks Segmind's protocol as `segmind-api.md` describes it.
//! Timing rules (queueing, completion, retention) are unit-tested on the pure
//! state function in `src/lib.rs`; these tests speak HTTP and wait on
//! conditions, never on fixed sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use segmind_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

const KEY: &str = "sim-key";
const MODEL: &str = "gemini-2.5-pro-tts";

async fn sim(adjust: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut config = SimConfig::fast(KEY);
    config.espeak = false;
    adjust(&mut config);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    segmind_sim::spawn(config, any, any).await.unwrap()
}

async fn post(sim: &SimHandle, path: &str, key: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A WAV file, by its magic numbers.
fn is_wav(bytes: &[u8]) -> bool {
    bytes.len() > 44 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

/// Polls `url` until its body's `status` is terminal or it stops answering
/// 200; returns the last answer's HTTP status and body.
async fn until_terminal(url: &str) -> (u16, Value) {
    for _ in 0..200 {
        let r = get(url).await;
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if code != 200 || ["COMPLETED", "FAILED"].contains(&body["status"].as_str().unwrap_or("")) {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} never reached a terminal state");
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
}

/// Runs `body` through the v2 flow to a success: the request id and the
/// audio served.
async fn synthesize(sim: &SimHandle, body: Value) -> (String, Vec<u8>) {
    let r = post(sim, &format!("/v2/{MODEL}"), KEY, body).await;
    let submitted: Value = r.json().await.unwrap();
    let (code, _) = until_terminal(submitted["status_url"].as_str().unwrap()).await;
    assert_eq!(code, 200);
    let result: Value = get(submitted["response_url"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let audio = reqwest::get(result["output"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    (submitted["request_id"].as_str().unwrap().to_owned(), audio)
}

#[tokio::test]
async fn the_v2_flow_submit_poll_result_download() {
    let sim = sim(|c| c.latency_mean = Duration::from_millis(300)).await;
    let r = post(
        &sim,
        &format!("/v2/{MODEL}"),
        KEY,
        json!({"text": "Hello there"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let submitted: Value = r.json().await.unwrap();
    assert_eq!(submitted["status"], "QUEUED");
    let id = submitted["request_id"].as_str().unwrap();
    for field in ["poll_url", "status_url", "response_url"] {
        assert!(submitted[field].as_str().unwrap().contains(id), "{field}");
    }
    let status_url = submitted["status_url"].as_str().unwrap();
    let first: Value = get(status_url).await.json().await.unwrap();
    assert!(["QUEUED", "PROCESSING"].contains(&first["status"].as_str().unwrap()));
    // The SDK's v1 poll URL answers too.
    assert_eq!(
        get(submitted["poll_url"].as_str().unwrap()).await.status(),
        200
    );

    let (code, done) = until_terminal(status_url).await;
    assert_eq!((code, done["status"].as_str()), (200, Some("COMPLETED")));
    let result = get(submitted["response_url"].as_str().unwrap()).await;
    assert!(result.headers().contains_key("content-type"));
    let result: Value = result.json().await.unwrap();
    assert_eq!(result["status"], "COMPLETED");
    assert!(result["error"].is_null());
    assert!(result["metrics"]["inference_time"].as_f64().unwrap() > 0.0);
    let output = result["output"].as_str().unwrap();
    assert!(
        output.starts_with(&format!("http://{}", sim.media_addr)),
        "media is served from another origin: {output}"
    );
    let audio = reqwest::get(output).await.unwrap();
    assert_eq!(audio.headers()["content-type"], "audio/wav");
    assert!(is_wav(&audio.bytes().await.unwrap()));
}

#[tokio::test]
async fn failed_jobs_are_served_as_422_with_the_error() {
    let sim = sim(|c| c.latency_mean = Duration::from_millis(50)).await;
    let submitted: Value = post(
        &sim,
        &format!("/v2/{MODEL}"),
        KEY,
        json!({"text": "no [[sim:rai]]"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let (code, body) = until_terminal(submitted["status_url"].as_str().unwrap()).await;
    assert_eq!(code, 422);
    assert_eq!(body["status"], "FAILED");
    assert!(body["error"].as_str().unwrap().contains("RAI"));
    assert!(body["metrics"].is_object());
}

#[tokio::test]
async fn parameters_are_checked_like_the_real_model() {
    let sim = sim(|_| {}).await;
    let path = format!("/v2/{MODEL}");
    for bad in [
        json!({}),
        json!({"text": ""}),
        json!({"text": "a", "temperature": 2.5}),
        json!({"text": "a", "voice_1": "kore"}), // the API wants the exact spelling
        json!({"text": "a", "voice_2": "Nobody"}),
    ] {
        let r = post(&sim, &path, KEY, bad.clone()).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    assert_eq!(
        post(&sim, &path, "wrong", json!({"text": "a"}))
            .await
            .status(),
        401
    );
    assert_eq!(
        post(&sim, "/v2/no-such-model", KEY, json!({"text": "a"}))
            .await
            .status(),
        404
    );
    let unknown = format!(
        "{}/v2/requests/00000000-0000-0000-0000-000000000000/status",
        sim.base_url()
    );
    assert_eq!(get(&unknown).await.status(), 404);
    let stats = sim.stats();
    assert_eq!(stats.submits_accepted, 0);
    assert_eq!(stats.unauthorized, 1);
}

#[tokio::test]
async fn an_expired_result_answers_404_on_every_url() {
    // Zero retention: the result is gone as soon as the job is done.
    let sim = sim(|c| {
        c.latency_mean = Duration::from_millis(50);
        c.latency_spread = Duration::ZERO;
        c.retention = Duration::ZERO;
    })
    .await;
    let submitted: Value = post(&sim, &format!("/v2/{MODEL}"), KEY, json!({"text": "brief"}))
        .await
        .json()
        .await
        .unwrap();
    let (code, body) = until_terminal(submitted["status_url"].as_str().unwrap()).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("expired"));
    for url in ["response_url", "poll_url"] {
        assert_eq!(
            get(submitted[url].as_str().unwrap()).await.status(),
            404,
            "{url}"
        );
    }
}

#[tokio::test]
async fn rate_limits_credits_and_injected_faults() {
    let sim = sim(|c| {
        c.rate_limit_per_minute = Some(2);
        c.credits = Some(1.0);
        c.cost_per_job = 0.25;
    })
    .await;
    let path = format!("/v2/{MODEL}");
    for _ in 0..2 {
        let r = post(&sim, &path, KEY, json!({"text": "a"})).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-remaining-credits"));
    }
    let limited = post(&sim, &path, KEY, json!({"text": "a"})).await;
    assert_eq!(limited.status(), 429);
    let reset = limited.headers()["x-rate-limit-reset-at-utc"]
        .to_str()
        .unwrap();
    let reset = chrono::DateTime::parse_from_rfc3339(reset).expect("ISO-8601 reset time");
    assert!(reset > chrono::Utc::now());

    let sim = sim_with_credits(0.3).await;
    assert_eq!(
        post(&sim, &path, KEY, json!({"text": "a"})).await.status(),
        200
    );
    assert_eq!(
        post(&sim, &path, KEY, json!({"text": "a"})).await.status(),
        406
    );

    sim.inject(&[502, 504, 500]);
    for code in [502, 504, 500] {
        assert_eq!(
            post(&sim, &path, KEY, json!({"text": "a"})).await.status(),
            code
        );
    }
}

async fn sim_with_credits(credits: f64) -> SimHandle {
    sim(|c| {
        c.credits = Some(credits);
        c.cost_per_job = 0.25;
    })
    .await
}

#[tokio::test]
async fn v1_answers_the_audio_directly() {
    let sim = sim(|c| c.latency_mean = Duration::from_millis(50)).await;
    let r = post(
        &sim,
        &format!("/v1/{MODEL}"),
        KEY,
        json!({"text": "sync please", "voice_1": "Puck"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    assert!(is_wav(&r.bytes().await.unwrap()));
    let r = post(
        &sim,
        &format!("/v1/{MODEL}"),
        KEY,
        json!({"text": "x [[sim:fail]]"}),
    )
    .await;
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn accept_then_fail_bills_a_request_whose_answer_is_lost() {
    let sim = sim(|_| {}).await;
    sim.inject_accept_then(&[504]);
    let r = post(&sim, &format!("/v2/{MODEL}"), KEY, json!({"text": "hello"})).await;
    assert_eq!(r.status().as_u16(), 504);
    assert_eq!(
        sim.stats().submits_accepted,
        1,
        "accepted, billed, answer lost"
    );
    let r = post(&sim, &format!("/v2/{MODEL}"), KEY, json!({"text": "hello"})).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(sim.stats().submits_accepted, 2);
}

#[tokio::test]
async fn request_specific_refusals_leave_the_account_working() {
    let sim = sim(|_| {}).await;
    let submit = |text: &'static str| {
        let sim = sim.clone();
        async move {
            post(&sim, &format!("/v2/{MODEL}"), KEY, json!({"text": text}))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(submit("not allowed [[sim:forbidden]]").await, 403);
    assert_eq!(submit("too dear [[sim:expensive]]").await, 406);
    assert_eq!(submit("fine").await, 200);
    // A submit without text is refused as invalid, not billed: a free probe.
    assert_eq!(
        post(&sim, &format!("/v2/{MODEL}"), KEY, json!({}))
            .await
            .status()
            .as_u16(),
        400
    );
    let r = post(
        &sim,
        &format!("/v2/{MODEL}"),
        KEY,
        json!({"text": "polls fail [[sim:status-fault=502]]"}),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    let status = get(body["status_url"].as_str().unwrap()).await;
    assert_eq!(status.status().as_u16(), 502);
    assert_eq!(sim.stats().submits_accepted, 2);
}

/// The realistic speech model: audio ≈ characters ÷ the voice's rate, cut
/// silently at Gemini's 512 s cap, a truncation fault keeping a share.
#[tokio::test]
async fn the_realistic_model_gives_audio_as_long_as_the_text_up_to_the_cap() {
    use segmind_sim::model::{OUTPUT_CAP, SpeechModel, chars_per_second};
    let sim = sim(|c| {
        c.latency_mean = Duration::from_millis(50);
        c.speech = SpeechModel::Realistic { cap: OUTPUT_CAP };
    })
    .await;
    let seconds_of = |text: String, voice: &'static str| {
        let sim = sim.clone();
        async move {
            let (_, wav) = synthesize(&sim, json!({"text": text, "voice_1": voice})).await;
            let (rate, pcm) = segmind_sim::wav::pcm_of(&wav).expect("a WAV file");
            pcm.len() as f64 / 2.0 / f64::from(rate)
        }
    };
    let text = "word ".repeat(300); // 1,500 characters
    for voice in ["Kore", "Puck"] {
        let expected = 1_500.0 / chars_per_second(voice);
        let got = seconds_of(text.clone(), voice).await;
        assert!(
            (got - expected).abs() < 0.01,
            "{voice}: {got} s, expected {expected}"
        );
    }
    // ≈ 2,100 s of text: cut at 512 s, and still a success.
    let long = "x".repeat(32_000);
    assert!((seconds_of(long, "Kore").await - 512.0).abs() < 0.01);
    let cut = format!("{text}[[sim:truncate=0.25]]");
    let expected = 1_500.0 / chars_per_second("Kore") * 0.25;
    assert!((seconds_of(cut, "Kore").await - expected).abs() < 0.01);
}

/// With the realistic model each request's sentence timing is served as
/// ground truth (`GET /_sim/truth/{id}`, `SimHandle::truth`), and it matches
/// the audio served: a sentence's words are sound, the pauses between
/// sentences silence. The style in front is no sentence.
#[tokio::test]
async fn the_realistic_model_serves_the_truth_of_each_sentence() {
    use segmind_sim::model::{OUTPUT_CAP, SpeechModel};
    use segmind_sim::speech::Truth;
    let sim = sim(|c| {
        c.latency_mean = Duration::from_millis(50);
        c.speech = SpeechModel::Realistic { cap: OUTPUT_CAP };
    })
    .await;
    let text = "Narrate calmly: The storm broke at dawn. Nobody on the pier, not even the \
                fishermen, had seen it coming.\n\nBy noon the harbour was calm again.";
    let (id, wav) = synthesize(&sim, json!({"text": text})).await;
    let (_, pcm) = segmind_sim::wav::pcm_of(&wav).unwrap();

    let served: Truth = get(&format!("{}/_sim/truth/{id}", sim.base_url()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(Some(served.clone()), sim.truth(&id));
    assert_eq!(served.style, Some([0, 16]));
    let texts: Vec<&str> = served.sentences.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "The storm broke at dawn.",
            "Nobody on the pier, not even the fishermen, had seen it coming.",
            "By noon the harbour was calm again.",
        ]
    );
    let chars: Vec<char> = text.chars().collect();
    let loud = |ms: u64| {
        let at = (ms * 24) as usize * 2;
        pcm[at..at + 480]
            .chunks_exact(2)
            .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() >= 328)
    };
    for s in &served.sentences {
        assert_eq!(chars[s.range()].iter().collect::<String>(), s.text);
        assert!(loud(s.start_ms) && loud(s.end_ms - 10), "{s:?}");
    }
    for pair in served.sentences.windows(2) {
        let (end, start) = (pair[0].end_ms, pair[1].start_ms);
        assert!(start >= end + 250, "{pair:?}");
        assert!(
            (end + 10..start - 10).step_by(10).all(|ms| !loud(ms)),
            "{pair:?}"
        );
    }

    // Unknown ids, and the word model, have no truth.
    assert_eq!(
        get(&format!("{}/_sim/truth/nope", sim.base_url()))
            .await
            .status(),
        404
    );
    let words = self::sim(|_| {}).await;
    let r = post(&words, &format!("/v2/{MODEL}"), KEY, json!({"text": "Hi."})).await;
    let id = r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(words.truth(&id), None);
}
