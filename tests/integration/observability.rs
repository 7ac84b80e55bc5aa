//! Metrics, health, and secrets staying secret.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::helpers::{spawn_app, stack_env};

#[tokio::test]
async fn metrics_and_health_are_served() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.ops_addr);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    app.publish_json(json!({"text": "count me"})).await;
    app.next_event().await.completed();
    app.publish_json(json!({"nope": 1})).await;
    app.next_event().await.failed();
    // The queue-depth refresher runs every 0.2 s in tests.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m = app.metrics().await;
    let q = app.requests_queue().to_owned();
    for needle in [
        "tts_jobs_total{outcome=\"completed\"} 1".to_string(),
        "tts_jobs_total{outcome=\"invalid_request\"} 1".to_string(),
        "tts_inference_duration_seconds_count 1".to_string(),
        "tts_job_duration_seconds_count{outcome=\"completed\"} 1".to_string(),
        "tts_jobs_in_flight 0".to_string(),
        "tts_segmind_requests_total{endpoint=\"submit\",status=\"200\"} 1".to_string(),
        "tts_segmind_requests_total{endpoint=\"result\",status=\"200\"} 1".to_string(),
        "tts_segmind_requests_total{endpoint=\"download\",status=\"200\"} 1".to_string(),
        "tts_s3_upload_seconds_count 1".to_string(),
        format!("tts_queue_depth{{queue=\"{q}\"}} 0"),
        "tts_published_total{kind=\"dead_letter\"} 1".to_string(),
        "tts_segmind_calls_per_job_count 1".to_string(),
    ] {
        assert!(m.contains(&needle), "missing {needle} in\n{m}");
    }
    app.stop().await;
}

/// Runs the real binary with debug logs and checks the key appears nowhere:
/// not in its logs, not in events, not in the request to the media host.
#[tokio::test]
async fn the_api_key_stays_secret() {
    let app = spawn_app().await;
    let mut env = stack_env();
    env.retain(|(k, _)| !k.starts_with("TTS__") && k != "SEGMIND_API_KEY" && k != "RUST_LOG");
    env.extend(
        stack_env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("TTS__S3__")),
    );
    let amqp = &app.settings.amqp;
    let vars = [
        ("SEGMIND_API_KEY", app.api_key.clone()),
        ("RUST_LOG", "debug".to_owned()),
        ("TTS__SEGMIND__BASE_URL", app.sim.base_url()),
        ("TTS__SEGMIND__POLL_INITIAL", "0.05".into()),
        (
            "TTS__AMQP__REQUESTS_QUEUE",
            format!("{}.bin", amqp.requests_queue),
        ),
        ("TTS__AMQP__EVENTS_EXCHANGE", amqp.events_exchange.clone()),
        (
            "TTS__AMQP__EVENTS_QUEUE",
            amqp.events_queue.clone().unwrap(),
        ),
        (
            "TTS__AMQP__DEAD_LETTER_QUEUE",
            amqp.dead_letter_queue.clone(),
        ),
        ("TTS__HTTP__ADDR", "127.0.0.1:0".into()),
        ("TTS__S3__PREFIX", app.settings.s3.prefix.clone()),
    ];
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
        .arg("run")
        .env_clear()
        .envs(env)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    // Read both pipes as the binary writes: a full pipe would block it.
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let logs_task = tokio::spawn(async move {
        let (mut err, mut out) = (String::new(), String::new());
        let _ = tokio::join!(
            stderr.read_to_string(&mut err),
            stdout.read_to_string(&mut out)
        );
        err + &out
    });

    // Wait for the binary to declare its queue, then give it a job.
    let queue = format!("{}.bin", amqp.requests_queue);
    let mut declared = false;
    for _ in 0..100 {
        if app
            .publisher
            .publish(
                "",
                &queue,
                br#"{"text":"keep my secret","job_id":"secret-1"}"#,
                Default::default(),
                true,
            )
            .await
            .is_ok()
        {
            declared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(declared, "the binary declared its queue");
    let events = app.events_queue().to_owned();
    if app
        .get_from(&events, Duration::from_secs(0))
        .await
        .is_some()
    {
        panic!("an event arrived before the job was processed");
    }
    let received = match tokio::time::timeout(Duration::from_secs(30), app.next_event()).await {
        Ok(r) => r,
        Err(_) => {
            let _ = child.start_kill();
            let logs = logs_task.await.unwrap();
            panic!("no event from the binary; its logs:\n{logs}");
        }
    };
    assert_eq!(received.completed().job_id, "secret-1");
    assert!(!String::from_utf8_lossy(&received.raw).contains(&app.api_key));

    // SIGTERM: the binary drains and exits 0.
    let pid = child.id().expect("pid") as i32;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let logs = logs_task.await.unwrap();
    assert!(
        logs.contains("secret-1"),
        "debug logs were captured:\n{logs}"
    );
    assert!(
        !logs.contains(&app.api_key),
        "the API key leaked into the logs"
    );
    assert!(
        !logs.contains("guest:guest"),
        "the broker password leaked into the logs"
    );

    let stats = app.sim.stats();
    assert!(stats.media_fetches >= 1);
    assert_eq!(
        stats.media_requests_with_api_key, 0,
        "the key was sent to the media host"
    );
    let _ = app
        .channel
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    app.stop().await;
}
