//! Transient upstream errors are retried with backoff and the job succeeds.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

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
        "a rejected submit is retried, not duplicated"
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
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    app.sim.inject(&[502, 503, 429]);
    app.next_event().await.completed();
    assert_eq!(app.sim.stats().faults_injected, 3);
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
