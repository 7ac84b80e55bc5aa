//! Metrics, health, traces, logs, and secrets staying secret.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

use crate::helpers::{spawn_app, wait_for};

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
    let q = app.requests_queue().to_owned();
    let depth = format!("tts_queue_depth{{queue=\"{q}\"}}");
    wait_for(
        "the queue depth to be reported",
        Duration::from_secs(10),
        || async { app.metric(&depth).await == Some(0.0) },
    )
    .await;

    let m = app.metrics().await;
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
    let worker = app.spawn_binary(&[("RUST_LOG", "debug".into())]).await;
    worker
        .publish(&app, br#"{"text":"keep my secret","job_id":"secret-1"}"#)
        .await;
    let received = tokio::time::timeout(Duration::from_secs(30), app.next_event())
        .await
        .expect("an event from the binary");
    assert_eq!(received.completed().job_id, "secret-1");
    assert!(!String::from_utf8_lossy(&received.raw).contains(&app.api_key));

    // SIGTERM: the binary drains and exits 0.
    let (status, logs) = worker.terminate(&app).await;
    assert!(status.success(), "{status:?}\n{logs}");
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
    app.stop().await;
}

/// Logs written to a pipe or a file are plain text: colours are for terminals.
#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let app = spawn_app().await;
    let worker = app.spawn_binary(&[]).await;
    worker
        .publish(&app, br#"{"text":"plain logs please","job_id":"plain-1"}"#)
        .await;
    assert_eq!(app.next_event().await.completed().job_id, "plain-1");
    let (status, logs) = worker.terminate(&app).await;
    assert!(status.success(), "{status:?}");
    assert!(logs.contains("job finished"), "logs were captured:\n{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escape codes in piped logs:\n{logs:?}"
    );
    app.stop().await;
}

/// What the in-test OTLP/HTTP receiver got: (service.name, span name,
/// job_id attribute) per span.
type Received = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

async fn receive_traces(State(spans): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    let mut out = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| text(&a.value))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let job_id = span
                .attributes
                .iter()
                .find(|a| a.key == "job_id")
                .and_then(|a| text(&a.value));
            out.push((service.clone(), span.name, job_id));
        }
    }
    ""
}

/// With OTEL_EXPORTER_OTLP_ENDPOINT set, the worker's spans reach a collector.
#[tokio::test]
async fn spans_reach_an_otlp_collector() {
    let app = spawn_app().await;
    let spans: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/v1/traces", post(receive_traces))
        .with_state(spans.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let worker = app
        .spawn_binary(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector)])
        .await;
    worker
        .publish(&app, br#"{"text":"trace me","job_id":"otel-1"}"#)
        .await;
    assert_eq!(app.next_event().await.completed().job_id, "otel-1");
    // Shutting down flushes the batch of spans.
    let (status, logs) = worker.terminate(&app).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(!logs.contains("panicked"), "{logs}");

    let spans = spans.lock().unwrap().clone();
    server.abort();
    let job = spans
        .iter()
        .find(|(_, name, job_id)| name == "job" && job_id.as_deref() == Some("otel-1"));
    assert!(
        job.is_some(),
        "no `job` span for otel-1 reached the collector; got {spans:?}\nlogs:\n{logs}"
    );
    assert!(
        spans.iter().any(|(_, name, _)| name == "segmind.submit"),
        "{spans:?}"
    );
    assert!(
        spans.iter().all(|(service, _, _)| service == "tts-worker"),
        "{spans:?}"
    );
    app.stop().await;
}
