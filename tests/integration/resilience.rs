//! Transient upstream errors are retried with backoff and the job succeeds.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, wait_for};

#[tokio::test]
async fn bursts_of_429_and_5xx_still_end_in_success() {
    let app = spawn_app().await;
    // Submit meets 429, 502, 504 and 500 before it is accepted; later calls
    // meet more.
    app.sim.inject(&[429, 502, 504, 500]);
    app.publish_json(json!({"text": "persistence pays off"}))
        .await;
    let received = app.next_event().await;
    received.completed();
    let stats = app.sim.stats();
    assert_eq!(stats.faults_injected, 4);
    assert_eq!(
        stats.submits_accepted, 1,
        "a submit refused before acceptance is retried, not duplicated"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tts_retries_total{reason=\"429\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tts_retries_total{reason=\"5xx\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tts_segmind_requests_total{endpoint=\"submit\",status=\"429\"} 1"));
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn errors_while_polling_are_retried_too() {
    let app = spawn_app_with(
        |c| c.latency_mean = std::time::Duration::from_millis(600),
        |_| {},
    )
    .await;
    app.publish_json(json!({"text": "poll through the storm"}))
        .await;
    // Let the submit through, then break the next polls.
    wait_for("the submit", std::time::Duration::from_secs(10), || async {
        app.sim.stats().submits_accepted == 1
    })
    .await;
    app.sim.inject(&[502, 503, 429]);
    app.next_event().await.completed();
    assert_eq!(app.sim.stats().faults_injected, 3);
    // The faults met status polls, which were retried, not the submit.
    let m = app.metrics().await;
    for status in [502, 503, 429] {
        let sample =
            format!("tts_segmind_requests_total{{endpoint=\"status\",status=\"{status}\"}} 1");
        assert!(m.contains(&sample), "missing {sample} in\n{m}");
    }
    assert_eq!(app.sim.stats().submits_accepted, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limit_window_is_waited_out_from_its_reset_header() {
    // One submit a minute: the second job must wait for the window reported
    // in x-rate-limit-reset-at-utc, and retry_max caps that wait. With a cap
    // shorter than the window and few attempts, the job ends rate_limited.
    let app = spawn_app_with(
        |c| c.rate_limit_per_minute = Some(1),
        |s| {
            s.segmind.retry.attempts = 3;
            s.jobs.max_deliveries = 1;
        },
    )
    .await;
    app.publish_json(json!({"text": "first", "job_id": "first"}))
        .await;
    app.next_event().await.completed();
    app.publish_json(json!({"text": "second", "job_id": "second"}))
        .await;
    let f = app.next_event().await;
    assert_eq!(f.failed().error.code, "rate_limited");
    assert_eq!(f.failed().error.http_status, Some(429));
    assert!(f.failed().error.retryable);
    assert!(app.sim.stats().rate_limited >= 3);
    app.stop().await;
}

#[tokio::test]
async fn broken_audio_downloads_are_retried() {
    let app = spawn_app().await;
    app.sim.inject_media(&[502, 503, 504]);
    app.publish_json(json!({"text": "the CDN is flaky today"}))
        .await;
    let received = app.next_event().await;
    let id = received.completed().segmind.request_id.clone();
    assert_eq!(
        app.sim.stats().requests[&id].media_fetches,
        4,
        "three failures, then the audio"
    );
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "a download retry is not a new submission"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tts_segmind_requests_total{endpoint=\"download\",status=\"502\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_download_that_keeps_failing_is_requeued_and_resumed_without_paying_again() {
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.segmind.retry.attempts = 2;
            s.jobs.requeue_delay = std::time::Duration::from_millis(100);
        },
    )
    .await;
    // Two failures exhaust the first delivery's download attempts.
    app.sim.inject_media(&[502, 502]);
    app.publish_json(json!({"text": "download me eventually", "job_id": "dl-1"}))
        .await;
    let received = app.next_event().await;
    let data = received.completed();
    assert_eq!(data.attempts, 2, "completed on the redelivery");
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "resumed from the checkpoint"
    );
    assert!(
        app.metrics()
            .await
            .contains("tts_requeues_total{reason=\"upstream_unavailable\"} 1")
    );
    app.stop().await;
}

#[tokio::test]
async fn truncated_audio_is_submitted_again_and_the_retry_succeeds() {
    let app = spawn_app().await;
    app.publish_json(json!({
        "text": "this sentence has quite a few words in it so one word of audio is too short [[sim:truncated-once]]"
    }))
    .await;
    let received = app.next_event().await;
    let data = received.completed();
    assert!(
        data.audio.duration_seconds.unwrap() > 3.0,
        "the full audio was stored"
    );
    assert_eq!(app.sim.stats().submits_accepted, 2);
    assert!(
        app.metrics()
            .await
            .contains("tts_retries_total{reason=\"audio_invalid\"} 1")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_submission_accepted_then_answered_504_is_not_paid_twice_when_so_configured() {
    // The gateway answers 504 after the API took (and billed) the request.
    let app = spawn_app_with(
        |_| {},
        |s| s.segmind.ambiguous_submits = tts_worker::testing::config::AmbiguousSubmits::Fail,
    )
    .await;
    app.sim.inject_accept_then(&[504]);
    app.publish_json(json!({"text": "accepted, answer lost", "job_id": "amb-1"}))
        .await;
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "submission_unconfirmed");
    assert!(
        f.error.retryable,
        "the producer decides whether to pay again"
    );
    assert_eq!(app.sim.stats().submits_accepted, 1, "not duplicated");
    assert_eq!(
        app.metric("tts_segmind_submit_ambiguous_total").await,
        Some(1.0)
    );
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn requests_are_admitted_by_their_bytes_not_only_by_their_count() {
    // A budget of 1 MiB and bodies of 600 KB (short texts padded with JSON
    // whitespace): one request at a time, whatever the count allows.
    let app = spawn_app_with(
        |sim| {
            sim.latency_mean = std::time::Duration::from_millis(800);
            sim.latency_spread = std::time::Duration::from_millis(50);
        },
        |s| s.amqp.max_bytes_in_flight = 1 << 20,
    )
    .await;
    for i in 0..3 {
        let mut body =
            json!({"text": format!("Heavy request number {i}."), "job_id": format!("heavy-{i}")})
                .to_string()
                .into_bytes();
        body.splice(1..1, std::iter::repeat_n(b' ', 600_000));
        app.publish_raw(&body, lapin::BasicProperties::default())
            .await;
    }
    let mut most_in_flight = 0.0f64;
    let mut most_bytes = 0.0f64;
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while done < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heavy requests did not finish"
        );
        most_in_flight = most_in_flight.max(app.metric("tts_jobs_in_flight").await.unwrap_or(0.0));
        most_bytes = most_bytes.max(
            app.metric("tts_request_bytes_in_flight")
                .await
                .unwrap_or(0.0),
        );
        if let Some(m) = app
            .get_from(app.events_queue(), std::time::Duration::from_millis(50))
            .await
        {
            crate::schemas::assert_valid_event(&m.delivery.data);
            let event = tts_worker::testing::wire::decode_event(&m.delivery.data).unwrap();
            assert_eq!(event.kind, "tts.job.completed", "{:?}", event.data);
            done += 1;
        }
    }
    assert_eq!(
        most_in_flight, 1.0,
        "more than one 600 KB request was admitted within 1 MiB"
    );
    assert!(
        most_bytes > 600_000.0 && most_bytes <= f64::from(1 << 20),
        "{most_bytes}"
    );
    // Released once each task ends (after its ack).
    wait_for(
        "the admitted bytes released",
        std::time::Duration::from_secs(10),
        || async { app.metric("tts_request_bytes_in_flight").await == Some(0.0) },
    )
    .await;
    assert_eq!(app.stop().await, 0);
}
