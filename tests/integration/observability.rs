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
    // Ready once it consumes: after it has read the fleet stream up to
    // its start (the day's spending, cancellations).
    wait_for("/readyz", Duration::from_secs(15), || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

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

/// One span as the in-test OTLP/HTTP receiver decoded it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: std::collections::BTreeMap<String, String>,
}

type Received = Arc<Mutex<Vec<ExportedSpan>>>;

async fn receive_traces(State(spans): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut out = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(ExportedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|a| (a.key.clone(), text(&a.value)))
                    .collect(),
            });
        }
    }
    ""
}

/// With OTEL_EXPORTER_OTLP_ENDPOINT set, the worker's spans reach a
/// collector, in the producer's trace: the request's `traceparent` is the
/// job span's parent, every stage is a child of the job span, and the event
/// carries the job's context (AMQP header and CloudEvents attribute).
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
        .spawn_binary(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("OTEL_SERVICE_NAME", "tts-worker-under-test".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test".into(),
            ),
        ])
        .await;
    let producer_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let producer_span = "00f067aa0ba902b7";
    let properties = tts_worker::testing::broker::with_headers(
        lapin::BasicProperties::default().with_message_id("otel-msg-1".into()),
        &[(
            "traceparent",
            &format!("00-{producer_trace}-{producer_span}-01"),
        )],
    );
    worker
        .publish_with(
            &app,
            br#"{"text":"trace me","job_id":"otel-1"}"#,
            properties,
        )
        .await;
    let event = app.next_event().await;
    assert_eq!(event.completed().job_id, "otel-1");
    // Shutting down flushes the batch of spans.
    let (status, logs) = worker.terminate(&app).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(!logs.contains("panicked"), "{logs}");

    let spans = spans.lock().unwrap().clone();
    server.abort();
    let job = spans
        .iter()
        .find(|s| {
            s.name == "job" && s.attributes.get("job_id").map(String::as_str) == Some("otel-1")
        })
        .unwrap_or_else(|| {
            panic!("no `job` span for otel-1 reached the collector; got {spans:?}\nlogs:\n{logs}")
        });
    assert_eq!(
        job.trace_id, producer_trace,
        "the job joins the producer's trace"
    );
    assert_eq!(
        job.parent_span_id, producer_span,
        "the producer's span is its parent"
    );
    assert!(job.attributes.contains_key("request_id"), "{job:?}");
    assert_eq!(
        job.attributes.get("messaging.system").map(String::as_str),
        Some("rabbitmq")
    );
    assert_eq!(
        job.attributes
            .get("messaging.message.id")
            .map(String::as_str),
        Some("otel-msg-1")
    );
    // A short job (one part): its Segmind calls and its upload are children
    // of the job's span (a long job's are children of each part's span).
    for stage in [
        "segmind.submit",
        "segmind.poll",
        "segmind.result",
        "segmind.download",
        "s3.upload",
    ] {
        let span = spans
            .iter()
            .find(|s| s.name == stage && s.trace_id == job.trace_id)
            .unwrap_or_else(|| panic!("no {stage} span in the job's trace: {spans:?}"));
        assert_eq!(
            span.parent_span_id, job.span_id,
            "{stage} is a child of the job: {span:?}"
        );
    }
    let poll = spans.iter().find(|s| s.name == "segmind.poll").unwrap();
    assert_eq!(
        poll.attributes
            .get("http.request.method")
            .map(String::as_str),
        Some("GET")
    );
    assert_eq!(
        poll.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let publish = spans
        .iter()
        .find(|s| s.name.starts_with("publish ") && s.trace_id == job.trace_id)
        .unwrap_or_else(|| panic!("no publish span in the job's trace: {spans:?}"));
    assert_eq!(publish.parent_span_id, job.span_id);
    assert_eq!(
        publish
            .attributes
            .get("messaging.operation.type")
            .map(String::as_str),
        Some("send")
    );
    assert!(
        spans.iter().all(|s| s.service == "tts-worker-under-test"),
        "OTEL_SERVICE_NAME names the service: {spans:?}"
    );
    assert!(
        spans
            .iter()
            .all(|s| !format!("{s:?}").contains(&app.api_key)),
        "the API key is in a span"
    );

    // The event carries the job's context: same trace, the job span's id.
    let expected = format!("00-{producer_trace}-{}-01", job.span_id);
    assert_eq!(
        tts_worker::testing::broker::header_str(&event.properties, "traceparent"),
        Some(expected.as_str())
    );
    let raw: serde_json::Value = serde_json::from_slice(&event.raw).unwrap();
    assert_eq!(
        raw["traceparent"],
        expected.as_str(),
        "CloudEvents tracing extension"
    );
    app.stop().await;
}

/// Without an exporter, the producer's context passes through to the event
/// unchanged, so consumers of the event stay in the producer's trace.
#[tokio::test]
async fn without_an_exporter_the_producers_traceparent_reaches_the_event() {
    let app = spawn_app().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    app.publish_raw(
        br#"{"text":"pass it on","job_id":"tp-1"}"#,
        tts_worker::testing::broker::with_headers(
            lapin::BasicProperties::default(),
            &[("traceparent", traceparent)],
        ),
    )
    .await;
    let event = app.next_event().await;
    assert_eq!(event.completed().job_id, "tp-1");
    assert_eq!(
        tts_worker::testing::broker::header_str(&event.properties, "traceparent"),
        Some(traceparent)
    );
    let raw: serde_json::Value = serde_json::from_slice(&event.raw).unwrap();
    assert_eq!(raw["traceparent"], traceparent);
    app.stop().await;
}

/// `/metrics` passes Prometheus' own linter (`promtool check metrics`, from
/// Debian's prometheus package; scripts/tools.sh installs it).
#[tokio::test]
async fn metrics_pass_promtool_check_metrics() {
    let app = spawn_app().await;
    app.publish_json(json!({"text": "lint my metrics", "job_id": "promtool-1"}))
        .await;
    assert_eq!(app.next_event().await.completed().job_id, "promtool-1");
    let text = app.metrics().await;
    assert!(text.contains("tts_build_info{version=\""), "{text}");
    let promtool = std::env::var("TTS_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{promtool}: {e} (scripts/tools.sh installs it)"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
    app.stop().await;
}

/// `tts-worker submit` starts a trace: it sends a `traceparent`, prints it,
/// and the job's event carries it back (passed through by a worker that
/// exports nothing).
#[tokio::test]
async fn submit_sends_a_traceparent_that_comes_back_in_the_event() {
    let app = spawn_app().await;
    let worker = app.spawn_binary(&[]).await;
    // The worker declares its queue before the producer publishes.
    worker
        .publish(&app, br#"{"text":"warm up","job_id":"tp-warm"}"#)
        .await;
    let mut env = crate::helpers::stack_env();
    env.retain(|(k, _)| !k.starts_with("TTS__AMQP__"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
        .args(["submit", "--text", "follow me", "--job-id", "tp-submit"])
        .args(["--wait", "--print-event", "--timeout", "60"])
        .env_clear()
        .envs(env)
        .env("TTS__AMQP__URL", crate::common::amqp_url())
        .env("TTS__AMQP__REQUESTS_QUEUE", &worker.queue)
        .env(
            "TTS__AMQP__EVENTS_EXCHANGE",
            &app.settings.amqp.events_exchange,
        )
        .env(
            "TTS__AMQP__DEAD_LETTER_QUEUE",
            &app.settings.amqp.dead_letter_queue,
        )
        .env("SEGMIND_API_KEY", &app.api_key)
        .output()
        .await
        .expect("submit runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = stdout
        .split("(traceparent ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no traceparent printed:\n{stdout}"));
    assert!(
        stdout.contains(&format!("\"traceparent\": \"{sent}\"")),
        "the event does not carry {sent}:\n{stdout}"
    );
    let (status, logs) = worker.terminate(&app).await;
    assert!(status.success(), "{logs}");
    app.stop().await;
}
