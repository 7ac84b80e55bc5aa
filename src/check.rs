//! `tts-worker check`: validates the configuration and probes the broker,
//! the bucket and the API (with the key), reporting each in plain words.

use std::time::Duration;

use crate::broker;
use crate::config::Settings;
use crate::failure::Call;
use crate::metrics::Metrics;
use crate::segmind::SegmindClient;
use crate::storage::Storage;

/// Prints one line per check; returns whether all passed.
pub async fn run(settings: &Settings) -> bool {
    let mut ok = true;
    let mut report = |passed: bool, what: &str, detail: String| {
        ok &= passed;
        println!("{} {what}: {detail}", if passed { "ok  " } else { "FAIL" });
    };

    report(true, "configuration", "loaded and valid".into());
    for warning in settings.warnings() {
        println!("warn configuration: {warning}");
    }
    match settings.require_api_key() {
        Ok(_) => report(true, "api key", "set (not shown)".into()),
        Err(e) => report(false, "api key", e.to_string()),
    }

    let amqp = &settings.amqp;
    match broker::connect(&amqp.url, amqp.connect_timeout, "tts-worker check").await {
        Ok(conn) => {
            let queue = &amqp.requests_queue;
            let depth = match conn.create_channel().await {
                Ok(ch) => {
                    let depth = broker::queue_depth(&ch, queue).await.ok();
                    // A failed passive declare has closed the channel already.
                    if ch.status().connected() {
                        let _ = ch.close(200, "check done".into()).await;
                    }
                    depth
                }
                Err(_) => None,
            };
            let detail = match depth {
                Some(n) => format!("connected; queue {queue} holds {n} ready messages"),
                None => {
                    format!("connected; queue {queue} does not exist yet (the worker declares it)")
                }
            };
            report(true, "broker", detail);
            let _ = conn.close(200, "check done".into()).await;
        }
        Err(e) => report(
            false,
            "broker",
            format!("{e} (check amqp.url, credentials and network)"),
        ),
    }

    let storage = Storage::new(&settings.s3).await;
    match tokio::time::timeout(Duration::from_secs(20), storage.check()).await {
        Ok(Ok(())) => report(true, "bucket", format!("{} reachable", settings.s3.bucket)),
        Ok(Err(e)) => report(
            false,
            "bucket",
            format!("{e} (check s3.endpoint, s3.bucket and AWS credentials)"),
        ),
        Err(_) => report(false, "bucket", "no answer within 20 s".into()),
    }

    // The worker's own client and probe: the key is sent, so a wrong key or
    // a missing permission fails here, not at the first job.
    let base = &settings.segmind.base_url;
    match settings.require_api_key() {
        Ok(key) => match SegmindClient::new(&settings.segmind, key.clone(), Metrics::new()) {
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(30), client.probe(Call::Submit))
                    .await
                {
                    Ok(Ok(())) => report(
                        true,
                        "segmind api",
                        format!("{base} accepts the key for {}", settings.segmind.model),
                    ),
                    Ok(Err(e)) => report(false, "segmind api", format!("{base}: {e}")),
                    Err(_) => report(
                        false,
                        "segmind api",
                        format!("{base}: no answer within 30 s"),
                    ),
                }
            }
            Err(e) => report(
                false,
                "segmind api",
                format!("cannot build an HTTP client: {e}"),
            ),
        },
        Err(_) => report(false, "segmind api", "not probed: no API key".into()),
    }
    ok
}
