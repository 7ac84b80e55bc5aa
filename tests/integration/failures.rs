//! Jobs that end in failure events: content blocks, inference failures,
//! invalid input (with byte-identical dead-letter copies), upstream errors.

use lapin::BasicProperties;
use serde_json::json;
use tts_worker::testing::broker::header_str;
use tts_worker::testing::config::AccountPolicy;

use crate::helpers::{spawn_app, spawn_app_with, wait_for};

#[tokio::test]
async fn an_rai_block_ends_as_content_blocked() {
    let app = spawn_app().await;
    app.publish_json(
        json!({"text": "Something unsafe [[sim:rai]]", "job_id": "bad-1", "metadata": {"k": "v"}}),
    )
    .await;
    let received = app.next_event().await;
    assert_eq!(received.event.kind, "tts.job.failed");
    let f = received.failed();
    assert_eq!(f.job_id, "bad-1");
    assert_eq!(f.error.code, "content_blocked");
    assert_eq!(f.error.http_status, Some(422));
    assert!(!f.error.retryable);
    assert!(f.error.message.contains("RAI"), "{}", f.error.message);
    assert!(f.segmind.is_some(), "the Segmind request id is reported");
    assert_eq!(f.metadata.as_ref().unwrap()["k"], "v");
    // A valid request is not dead-lettered, and nothing was stored.
    let dead = app
        .get_from(
            &app.settings.amqp.dead_letter_queue,
            std::time::Duration::from_millis(300),
        )
        .await;
    assert!(dead.is_none());
    let key = format!("{}bad-1.wav", app.settings.s3.prefix);
    assert!(app.storage.get(&key).await.is_err());
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn other_failed_jobs_end_as_inference_failed() {
    let app = spawn_app().await;
    app.publish_json(json!({"text": "This will break [[sim:fail]]"}))
        .await;
    let f = app.next_event().await;
    let f = f.failed();
    assert_eq!(f.error.code, "inference_failed");
    assert_eq!(f.error.http_status, Some(422));
    assert!(f.error.retryable);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn content_block_patterns_are_configurable() {
    // With patterns that do not match the simulator's RAI message, the same
    // failure is an ordinary inference failure.
    let app = spawn_app_with(
        |_| {},
        |s| s.segmind.content_blocked_patterns = vec!["nsfw".into()],
    )
    .await;
    app.publish_json(json!({"text": "x [[sim:rai]]"})).await;
    assert_eq!(
        app.next_event().await.failed().error.code,
        "inference_failed"
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_requests_fail_with_a_byte_identical_dead_letter_and_no_api_call() {
    let app = spawn_app().await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"text":"hi","voice1":"Puck"}"#.to_vec(), "voice1"),
        (br#"{"text":"hi","voice_1":"Sulafar"}"#.to_vec(), "Sulafat"),
        (br#"{"text":"hi","temperature":3}"#.to_vec(), "temperature"),
        (br#"{"voice_1":"Kore"}"#.to_vec(), "text: is required"),
        (br#"{"text":"   "}"#.to_vec(), "text: must not be blank"),
        (
            br#"{"text":"hi","output_key":"../../etc/passwd"}"#.to_vec(),
            "output_key",
        ),
        (br#"{"text":"hi","job_id":"a/b"}"#.to_vec(), "job_id"),
        (br#"{"text":"hi","metadata":"nope"}"#.to_vec(), "metadata"),
        (
            format!(r#"{{"text":"{}"}}"#, "a".repeat(200_001)).into_bytes(),
            "at most",
        ),
        (b"{\"text\": \"unterminated".to_vec(), "not valid JSON"),
        (b"\xff\xfe\x00garbage".to_vec(), "UTF-8"),
        (b"[\"not\", \"an object\"]".to_vec(), "JSON object"),
        (Vec::new(), "empty"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let props = BasicProperties::default()
            .with_message_id(format!("bad-{i}").into())
            .with_content_type("application/json".into());
        app.publish_raw(body, props).await;
        let received = app.next_event().await;
        let f = received.failed();
        assert_eq!(f.error.code, "invalid_request", "case {i}");
        assert!(
            f.error.message.contains(needle),
            "case {i}: {}",
            f.error.message
        );
        assert_eq!(
            f.job_id,
            format!("bad-{i}"),
            "case {i}: message_id names the job"
        );
        assert!(!f.error.retryable);

        let dead = app.next_dead_letter().await;
        assert_eq!(
            dead.delivery.data, *body,
            "case {i}: dead letter is byte-identical"
        );
        let props = &dead.delivery.properties;
        assert_eq!(
            header_str(props, "x-tts-error-code"),
            Some("invalid_request")
        );
        assert!(
            header_str(props, "x-tts-error-message")
                .unwrap()
                .contains(needle),
            "case {i}"
        );
        assert_eq!(
            props.message_id().as_ref().map(|m| m.as_str()),
            Some(format!("bad-{i}").as_str())
        );
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json"),
            "original properties are kept"
        );
    }
    let stats = app.sim.stats();
    assert_eq!(
        stats.submits_accepted + stats.submits_rejected + stats.unauthorized,
        0,
        "no API call"
    );
    assert_eq!(stats.status_polls, 0);
    assert_eq!(app.stop().await, 0);
}

/// A body of ≈ 1.5 MiB of unknown keys (over the derived
/// `limits.max_body_bytes`) is refused by its size before it is parsed,
/// and one of unknown keys under the size is named by count: both end in
/// a small event and a byte-identical dead letter, and the next job runs.
#[tokio::test]
async fn a_flood_of_unknown_keys_ends_in_a_small_event_and_the_worker_goes_on() {
    let app = spawn_app().await;
    let body_of = |bytes: usize| {
        let mut body = String::from(r#"{"text":"hi""#);
        let mut i = 0;
        while body.len() < bytes {
            body.push_str(&format!(r#","key{i:07}":1"#));
            i += 1;
        }
        body.push('}');
        body.into_bytes()
    };
    let cases = [
        (body_of(1_572_864), "over limits.max_body_bytes"),
        (body_of(512 * 1024), "more unknown fields"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let props = BasicProperties::default().with_message_id(format!("flood-{i}").into());
        app.publish_raw(body, props).await;
        let received = app.next_event().await;
        assert!(
            received.raw.len() <= 64 * 1024,
            "case {i}: a {}-byte event",
            received.raw.len()
        );
        let f = received.failed();
        assert_eq!(f.error.code, "invalid_request", "case {i}");
        assert_eq!(f.job_id, format!("flood-{i}"));
        assert!(
            f.error.message.contains(needle),
            "case {i}: {}",
            f.error.message
        );
        assert!(
            f.error.message.len() <= 1024,
            "case {i}: {}",
            f.error.message.len()
        );
        let dead = app.next_dead_letter().await;
        assert_eq!(
            dead.delivery.data, *body,
            "case {i}: dead letter is byte-identical"
        );
    }
    // The worker goes on: the next job completes on its first delivery.
    app.publish_json(json!({"text": "after the flood", "job_id": "after-flood"}))
        .await;
    let received = app.next_event().await;
    let done = received.completed();
    assert_eq!(done.job_id, "after-flood");
    assert_eq!(done.attempts, 1);
    assert_eq!(app.sim.stats().submits_accepted, 1);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn empty_audio_fails_as_audio_invalid() {
    let app = spawn_app().await;
    app.publish_json(json!({"text": "say nothing [[sim:empty]]"}))
        .await;
    let f = app.next_event().await;
    assert_eq!(f.failed().error.code, "audio_invalid");
    assert!(
        f.failed().error.message.contains("no samples"),
        "{}",
        f.failed().error.message
    );
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_api_key_fails_as_unauthorized_when_configured_to_fail() {
    let app = spawn_app_with(
        |c| c.api_key = "the-real-key".into(),
        |s| s.jobs.on_account_error = AccountPolicy::Fail,
    )
    .await;
    app.publish_json(json!({"text": "hello"})).await;
    let f = app.next_event().await;
    let f = f.failed();
    assert_eq!(f.error.code, "unauthorized");
    assert_eq!(f.error.http_status, Some(401));
    assert!(
        f.error.retryable,
        "an account problem, not a problem of the job"
    );
    app.stop().await;
}

#[tokio::test]
async fn exhausted_credits_fail_as_insufficient_credits_when_configured_to_fail() {
    let app = spawn_app_with(
        |c| c.credits = Some(0.0),
        |s| s.jobs.on_account_error = AccountPolicy::Fail,
    )
    .await;
    app.publish_json(json!({"text": "hello"})).await;
    let f = app.next_event().await;
    assert_eq!(f.failed().error.code, "insufficient_credits");
    assert_eq!(f.failed().error.http_status, Some(406));
    app.stop().await;
}

#[tokio::test]
async fn a_result_gone_before_it_is_fetched_fails_as_expired() {
    let app = spawn_app_with(|c| c.retention = std::time::Duration::ZERO, |_| {}).await;
    app.publish_json(json!({"text": "gone too soon"})).await;
    let f = app.next_event().await;
    assert_eq!(f.failed().error.code, "expired");
    assert_eq!(f.failed().error.http_status, Some(404));
    app.stop().await;
}

#[tokio::test]
async fn past_its_deadline_a_job_fails_as_timeout_and_a_resend_resumes_the_paid_request() {
    // As a new user would: a 2 s deadline, a 4 s job; the producer resends
    // the same request once Segmind has finished it.
    let app = spawn_app_with(
        |_| {},
        |s| s.segmind.job_deadline = std::time::Duration::from_secs(2),
    )
    .await;
    let request = json!({"text": "very slow [[sim:latency=4]]", "job_id": "slow-1"});
    app.publish_json(request.clone()).await;
    let f = app.next_event().await;
    let f = f.failed();
    assert_eq!(f.error.code, "timeout");
    assert!(f.error.retryable);
    let request_id = f
        .segmind
        .as_ref()
        .expect("the request id is reported so the result can be recovered")
        .request_id
        .clone();
    // Segmind goes on with the paid request; the producer resends after it is done.
    let status_url = format!("{}/v2/requests/{request_id}/status", app.sim.base_url());
    wait_for(
        "Segmind to finish the request",
        std::time::Duration::from_secs(20),
        || async {
            let r = reqwest::Client::new()
                .get(&status_url)
                .header("x-api-key", &app.api_key)
                .send()
                .await;
            match r {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|b| b["status"] == "COMPLETED"),
                Err(_) => false,
            }
        },
    )
    .await;
    app.publish_json(request).await;
    let done = app.next_event().await;
    let c = done.completed();
    assert_eq!(c.segmind.request_id, request_id, "the same Segmind request");
    assert_eq!(app.sim.stats().submits_accepted, 1, "no second submission");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_model_fails_as_model_unavailable() {
    let app = spawn_app_with(|_| {}, |s| s.segmind.model = "gemini-9-tts".into()).await;
    app.publish_json(json!({"text": "hello"})).await;
    let f = app.next_event().await;
    assert_eq!(f.failed().error.code, "model_unavailable");
    app.stop().await;
}

#[tokio::test]
async fn a_request_whose_event_cannot_be_confirmed_is_requeued_not_acked() {
    // No events queue and nothing bound: every event is unroutable (returned
    // by the broker), so the worker must not ack.
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.amqp.events_queue = None;
            s.jobs.requeue_delay = std::time::Duration::from_millis(100);
        },
    )
    .await;
    app.publish_json(json!({"text": ""})).await;
    // The worker consumed it, failed to publish, requeued it, and met it again.
    wait_for(
        "two failed publishes of the event",
        std::time::Duration::from_secs(15),
        || async {
            app.metric("tts_requeues_total{reason=\"publish_failed\"}")
                .await
                .is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    let metrics = app.metrics().await;
    assert!(
        !metrics.contains("tts_jobs_total{"),
        "no job may count as finished:\n{metrics}"
    );
    assert_eq!(app.stop().await, 1, "the request is back in the queue");
}
