//! Storage failures are classified by kind: a missing bucket or refused
//! credentials are account-level (consumption pauses with that reason, or the
//! job fails with it when so configured); outages and hung endpoints are
//! transient and bounded by `s3.operation_timeout`.

use std::time::Duration;

use serde_json::json;
use tts_worker::testing::config::AccountPolicy;
use tts_worker::testing::storage::Storage;

use crate::helpers::{env_value, spawn_app_with, spawn_app_with_storage, stack_env, wait_for};

/// Runs the local stack's `garage` CLI (an operator's hands).
fn garage(args: &[&str]) {
    let dir = std::env::var("TTS_STACK_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/tts-worker",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let home = std::env::var("HOME").unwrap_or_default();
    let status = std::process::Command::new(format!("{home}/.cargo/bin/garage"))
        .arg("-c")
        .arg(format!("{dir}/garage/garage.toml"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("the garage CLI runs");
    assert!(status.success(), "garage {args:?} failed");
}

#[tokio::test]
async fn a_missing_bucket_pauses_consumption_until_it_exists() {
    let bucket = format!(
        "no-such-bucket-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.s3.bucket = bucket.clone();
            s.jobs.probe_initial = Duration::from_millis(200);
            s.jobs.probe_max = Duration::from_millis(400);
        },
    )
    .await;
    app.publish_json(json!({"text": "where does it go", "job_id": "nobucket-1"}))
        .await;
    let paused = "tts_consumption_paused{reason=\"storage_bucket_missing\"}";
    wait_for(
        "the storage_bucket_missing pause",
        Duration::from_secs(15),
        || async { app.metric(paused).await == Some(1.0) },
    )
    .await;
    // The consume loop notices the pause a moment after the gate closes.
    wait_for("not ready while paused", Duration::from_secs(5), || async {
        app.ready().await == 503
    })
    .await;
    // The gate closes before the hand-over's copy is confirmed: wait for it.
    wait_for(
        "the job handed back uncounted, not failed",
        Duration::from_secs(10),
        || async { app.metric("tts_handovers_total{reason=\"paused\"}").await == Some(1.0) },
    )
    .await;
    assert_eq!(app.sim.stats().submits_accepted, 0, "nothing was paid for");

    // An operator creates the bucket: the bucket probe notices and the job runs.
    garage(&["bucket", "create", &bucket]);
    let key_id = env_value(&stack_env(), "AWS_ACCESS_KEY_ID");
    garage(&[
        "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key_id,
    ]);
    let received = app.next_event().await;
    let done = received.completed();
    assert_eq!(done.audio.bucket, bucket);
    assert_eq!(app.metric(paused).await, Some(0.0));
    assert_eq!(app.ready().await, 200);

    // Leave no bucket behind.
    let key = done.audio.key.clone();
    app.storage.delete(&key).await.unwrap();
    for (key, _) in app.storage.list(&app.settings.s3.prefix).await.unwrap() {
        app.storage.delete(&key).await.unwrap();
    }
    assert_eq!(app.stop().await, 0);
    garage(&["bucket", "delete", "--yes", &bucket]);
}

#[tokio::test]
async fn refused_credentials_fail_as_storage_access_denied_when_configured_to_fail() {
    let app = spawn_app_with_storage(
        |_| {},
        |s| s.jobs.on_account_error = AccountPolicy::Fail,
        |settings| {
            let env = stack_env();
            Storage::with_static_credentials(
                &settings.s3,
                &env_value(&env, "AWS_ACCESS_KEY_ID"),
                "not-the-secret-key",
            )
        },
    )
    .await;
    app.publish_json(json!({"text": "let me in", "job_id": "denied-1"}))
        .await;
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "storage_access_denied", "{}", f.error.message);
    assert!(f.error.retryable, "fixable by an operator");
    assert_eq!(app.sim.stats().submits_accepted, 0, "nothing was paid for");
    app.stop().await;
}

#[tokio::test]
async fn a_hung_storage_endpoint_is_cut_off_by_the_operation_timeout() {
    // Accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.s3.endpoint = Some(endpoint.parse().unwrap());
            s.s3.max_attempts = 1;
            s.s3.operation_timeout = Duration::from_secs(1);
            s.jobs.max_deliveries = 1;
        },
    )
    .await;
    app.publish_json(json!({"text": "hello?", "job_id": "hung-1"}))
        .await;
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "storage_failed");
    assert!(
        f.error.message.to_lowercase().contains("timeout")
            || f.error.message.to_lowercase().contains("timed out"),
        "{}",
        f.error.message
    );
    app.stop().await;
}
