//! Rolling upgrades: a request of a version newer than a replica knows is
//! handed back (uncounted) until a newer replica takes it, and fails as
//! `unsupported_version` (dead-lettered) only when none does in time.
//!
//! The "older" replica is this build with `limits.max_request_version = 1`:
//! it knows version 1's fields only, as a release before the deliverable
//! fields did.

use std::time::Duration;

use lapin::BasicProperties;
use serde_json::json;
use tts_worker::testing::broker::header_str;

use crate::helpers::{spawn_app_with, wait_for};

const HANDED_BACK: &str = "tts_handovers_total{reason=\"newer_version\"}";

#[tokio::test]
async fn a_newer_version_request_passes_an_older_replica_without_being_dead_lettered() {
    // Only the older replica runs at first.
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.limits.max_request_version = 1;
            s.jobs.version_handback_delay = Duration::from_millis(100);
        },
    )
    .await;
    let newer = json!({"version": 2, "text": "Hello from the future.", "job_id": "v2-1",
                       "format": "mp3", "captions": ["vtt"]});
    app.publish_raw(
        newer.to_string().as_bytes(),
        BasicProperties::default().with_correlation_id("corr-v2".into()),
    )
    .await;
    app.publish_json(json!({"text": "Hello from the past.", "job_id": "v1-1"}))
        .await;

    // The older replica does what it knows and hands the other back, again
    // and again, without an event or a dead-letter copy.
    let old = app.next_event().await;
    assert_eq!(old.completed().job_id, "v1-1");
    wait_for("three hand-backs", Duration::from_secs(20), || async {
        app.metric(HANDED_BACK).await.unwrap_or(0.0) >= 3.0
    })
    .await;
    let early = app
        .get_from(app.events_queue(), Duration::from_millis(300))
        .await;
    assert!(early.is_none(), "no event while a newer replica may come");
    let dead = app
        .get_from(
            &app.settings.amqp.dead_letter_queue,
            Duration::from_millis(300),
        )
        .await;
    assert!(dead.is_none(), "not dead-lettered");

    // A replica of the new release joins: the request is done there, as
    // its first counted delivery.
    let upgraded = app
        .start_replica(|s| s.limits.max_request_version = 2)
        .await;
    let done = app.next_event().await;
    let c = done.completed();
    assert_eq!(c.job_id, "v2-1");
    assert_eq!(c.attempts, 1, "hand-backs do not count as deliveries");
    assert_eq!(c.audio.format.as_deref(), Some("mp3"));
    assert_eq!(c.audio.captions.len(), 1);
    assert_eq!(
        done.properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-v2"),
        "the hand-backs kept the request's properties"
    );
    // Counted once the delivery is settled (acked, its lease released),
    // which may be a moment after its event.
    wait_for(
        "the newer replica to count the job",
        Duration::from_secs(10),
        || async {
            upgraded
                .metric("tts_jobs_total{outcome=\"completed\"}")
                .await
                == Some(1.0)
        },
    )
    .await;
    assert_eq!(
        app.metric("tts_jobs_total{outcome=\"completed\"}").await,
        Some(1.0),
        "the older replica completed only the version 1 request"
    );
    let dead = app
        .get_from(
            &app.settings.amqp.dead_letter_queue,
            Duration::from_millis(300),
        )
        .await;
    assert!(dead.is_none(), "nothing dead-lettered");
    assert_eq!(app.sim.stats().submits_accepted, 2, "each paid once");
    upgraded.stop().await;
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_newer_version_request_no_replica_takes_fails_as_unsupported_version_after_the_grace() {
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.limits.max_request_version = 1;
            s.jobs.version_handback_delay = Duration::from_millis(100);
            s.jobs.unsupported_version_grace = Duration::from_secs(1);
        },
    )
    .await;
    let body = json!({"version": 2, "text": "Nobody here knows me.", "job_id": "v2-lost",
                      "format": "ogg"})
    .to_string();
    app.publish_raw(body.as_bytes(), BasicProperties::default())
        .await;
    let event = app.next_event().await;
    let f = event.failed();
    assert_eq!(f.job_id, "v2-lost");
    assert_eq!(f.error.code, "unsupported_version");
    assert!(
        f.error.retryable,
        "it can succeed once the fleet is upgraded"
    );
    assert!(
        f.error.message.contains("version 2") && f.error.message.contains("dead-letter"),
        "{}",
        f.error.message
    );
    assert_eq!(f.attempts, 1, "the hand-backs were not counted");
    assert!(app.metric(HANDED_BACK).await.unwrap_or(0.0) >= 1.0);
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.delivery.data, body.as_bytes(), "byte-identical");
    assert_eq!(
        header_str(&dead.delivery.properties, "x-tts-error-code"),
        Some("unsupported_version")
    );
    assert_eq!(app.sim.stats().submits_accepted, 0, "never paid");
    assert_eq!(app.stop().await, 0);
}
