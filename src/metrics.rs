//! Prometheus metrics of one worker process.
//!
//! Names follow Prometheus conventions: snake_case, base units (`_seconds`,
//! `_bytes`), `_total` only on counters. Labels are low-cardinality: an error
//! code, an endpoint, a status code, a queue name; never a job or request id.

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for waits measured in tens of seconds (inference, end to end).
const SLOW_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0,
];
/// Buckets for storage calls.
const FAST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All metrics; cheap to clone (every field is a handle to shared state).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages ready in a queue, refreshed from the broker.
    pub queue_depth: IntGaugeVec,
    /// Segmind's reported inference time of completed jobs.
    pub inference_duration: Histogram,
    /// Delivery to terminal event, by outcome ("completed" or error code).
    pub job_duration: HistogramVec,
    /// Jobs ended, by outcome ("completed" or error code).
    pub jobs: IntCounterVec,
    /// Jobs currently held by this process.
    pub jobs_in_flight: IntGauge,
    /// HTTP calls to the Segmind API and its media host, by endpoint and status.
    pub segmind_requests: IntCounterVec,
    /// Segmind HTTP calls per job, observed once per finished job.
    pub segmind_calls_per_job: Histogram,
    /// Retries, by reason: a Segmind call retried after a `429`, a `5xx` or a
    /// `network` error, or a job resubmitted after `audio_invalid` audio.
    pub retries: IntCounterVec,
    /// Duration of S3 uploads, the SDK's own retries included.
    pub s3_upload: Histogram,
    /// Size of stored audio objects.
    pub audio_bytes: Histogram,
    /// Messages published with confirmation, by kind: `event`, `reply`
    /// (the courtesy copy to `reply_to`), `dead_letter` or `progress`.
    pub published: IntCounterVec,
    /// Records read from the fleet stream and its usage exchange, by kind:
    /// `spend`, `priors`, `usage`, `hello`, `cancel`, or `ignored`
    /// (another's user wrote it, or unreadable).
    pub fleet_records: IntCounterVec,
    /// 1 while consumption is paused for an account-level reason (error code).
    pub paused: IntGaugeVec,
    /// Deliveries requeued instead of finished, by reason (an error code, or
    /// `publish_failed`).
    pub requeues: IntCounterVec,
    /// Deliveries handed to another replica without counting toward the
    /// poison limit, by reason: `shutdown` or `paused`.
    pub handovers: IntCounterVec,
    /// Always 1; its labels say which build is running.
    pub build_info: IntGaugeVec,
    /// Jobs that reused earlier work, by kind: `poll` (resumed a Segmind
    /// request from its checkpoint) or `storage` (answered from the bucket).
    pub resumed: IntCounterVec,
    /// The account's balance, from `x-remaining-credits` and result metrics.
    pub remaining_credits: Gauge,
    /// Credits spent, from each result's `metrics.cost`.
    pub credits_spent: Counter,
    /// This replica's share of the account's rate limit (calls per minute).
    pub rate_share: Gauge,
    /// Time from a job finishing at Segmind to a poll seeing it.
    pub poll_lag: Histogram,
    /// Jobs finished at Segmind waiting for a transfer slot.
    pub transfers_waiting: IntGauge,
    /// Bytes of the requests admitted and not yet settled.
    pub request_bytes_in_flight: IntGauge,
    /// Submissions whose answer was lost after they were sent (a timeout
    /// after sending, 502/504): Segmind may have accepted and billed them.
    pub submit_ambiguous: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "tts_queue_depth",
                    "Messages ready in a queue, as reported by the broker",
                ),
                &["queue"],
            )
            .expect("static metric definition"),
            inference_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tts_inference_duration_seconds",
                    "Inference time Segmind reports for completed jobs",
                )
                .buckets(SLOW_BUCKETS.to_vec()),
            )
            .expect("static metric definition"),
            job_duration: HistogramVec::new(
                HistogramOpts::new(
                    "tts_job_duration_seconds",
                    "Time from delivery to confirmed terminal event, by outcome",
                )
                .buckets(SLOW_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect("static metric definition"),
            jobs: IntCounterVec::new(
                Opts::new(
                    "tts_jobs_total",
                    "Jobs ended, by outcome (completed or error code)",
                ),
                &["outcome"],
            )
            .expect("static metric definition"),
            jobs_in_flight: IntGauge::new("tts_jobs_in_flight", "Jobs this process holds now")
                .expect("static metric definition"),
            segmind_requests: IntCounterVec::new(
                Opts::new(
                    "tts_segmind_requests_total",
                    "HTTP calls to Segmind, by endpoint and HTTP status (or 'error')",
                ),
                &["endpoint", "status"],
            )
            .expect("static metric definition"),
            segmind_calls_per_job: Histogram::with_opts(
                HistogramOpts::new(
                    "tts_segmind_calls_per_job",
                    "Segmind HTTP calls one job needed (submit, polls, result, download)",
                )
                .buckets(vec![
                    3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0,
                ]),
            )
            .expect("static metric definition"),
            retries: IntCounterVec::new(
                Opts::new("tts_retries_total", "Retried calls, by reason"),
                &["reason"],
            )
            .expect("static metric definition"),
            s3_upload: Histogram::with_opts(
                HistogramOpts::new("tts_s3_upload_seconds", "Duration of S3 uploads")
                    .buckets(FAST_BUCKETS.to_vec()),
            )
            .expect("static metric definition"),
            audio_bytes: Histogram::with_opts(
                HistogramOpts::new("tts_audio_bytes", "Size of stored audio objects").buckets(
                    prometheus::exponential_buckets(16_384.0, 4.0, 8)
                        .expect("static bucket definition"),
                ),
            )
            .expect("static metric definition"),
            published: IntCounterVec::new(
                Opts::new(
                    "tts_published_total",
                    "Messages published with broker confirmation, by kind",
                ),
                &["kind"],
            )
            .expect("static metric definition"),
            fleet_records: IntCounterVec::new(
                Opts::new(
                    "tts_fleet_records_total",
                    "Records read from the fleet stream, by kind",
                ),
                &["kind"],
            )
            .expect("static metric definition"),
            paused: IntGaugeVec::new(
                Opts::new(
                    "tts_consumption_paused",
                    "1 while consumption is paused, by reason (an account-level error code)",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            requeues: IntCounterVec::new(
                Opts::new(
                    "tts_requeues_total",
                    "Deliveries requeued instead of finished, by reason",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            handovers: IntCounterVec::new(
                Opts::new(
                    "tts_handovers_total",
                    "Deliveries handed to another replica without counting toward the poison limit, by reason",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "tts_build_info",
                    "Always 1; labelled with the running build's version",
                ),
                &["version"],
            )
            .expect("static metric definition"),
            resumed: IntCounterVec::new(
                Opts::new(
                    "tts_jobs_resumed_total",
                    "Jobs that reused earlier work: resumed polling or served from storage",
                ),
                &["kind"],
            )
            .expect("static metric definition"),
            remaining_credits: Gauge::new(
                "tts_segmind_remaining_credits",
                "Segmind account balance last reported (x-remaining-credits or result metrics)",
            )
            .expect("static metric definition"),
            credits_spent: Counter::new(
                "tts_segmind_credits_spent_total",
                "Segmind credits spent, from each result's metrics.cost",
            )
            .expect("static metric definition"),
            rate_share: Gauge::new(
                "tts_segmind_rate_share_per_minute",
                "This replica's current share of the account's rate limit, calls per minute",
            )
            .expect("static metric definition"),
            poll_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "tts_segmind_poll_lag_seconds",
                    "Time from a job finishing at Segmind to the poll that saw it",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]),
            )
            .expect("static metric definition"),
            transfers_waiting: IntGauge::new(
                "tts_jobs_waiting_transfer",
                "Jobs finished at Segmind waiting for a slot to fetch and store their audio",
            )
            .expect("static metric definition"),
            request_bytes_in_flight: IntGauge::new(
                "tts_request_bytes_in_flight",
                "Bytes of the request bodies this process has admitted (amqp.max_bytes_in_flight bounds it)",
            )
            .expect("static metric definition"),
            submit_ambiguous: IntCounter::new(
                "tts_segmind_submit_ambiguous_total",
                "Submissions whose answer was lost after they were sent (timeout, 502/504): Segmind may have accepted and billed them",
            )
            .expect("static metric definition"),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: [Box<dyn prometheus::core::Collector>; 24] = [
            Box::new(m.submit_ambiguous.clone()),
            Box::new(m.handovers.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.remaining_credits.clone()),
            Box::new(m.credits_spent.clone()),
            Box::new(m.rate_share.clone()),
            Box::new(m.poll_lag.clone()),
            Box::new(m.transfers_waiting.clone()),
            Box::new(m.request_bytes_in_flight.clone()),
            Box::new(m.paused.clone()),
            Box::new(m.requeues.clone()),
            Box::new(m.resumed.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.inference_duration.clone()),
            Box::new(m.job_duration.clone()),
            Box::new(m.jobs.clone()),
            Box::new(m.jobs_in_flight.clone()),
            Box::new(m.segmind_requests.clone()),
            Box::new(m.segmind_calls_per_job.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.s3_upload.clone()),
            Box::new(m.audio_bytes.clone()),
            Box::new(m.published.clone()),
            Box::new(m.fleet_records.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .expect("metric names are unique within the registry");
        }
        m
    }

    /// Counts a job in `tts_jobs_in_flight` until the returned guard is
    /// dropped: when the job ends, or when its task is aborted (a broker loss
    /// drops every task of the session), so the gauge cannot drift.
    pub fn job_in_flight(&self) -> InFlight {
        self.jobs_in_flight.inc();
        InFlight(self.jobs_in_flight.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A job counted in `tts_jobs_in_flight`; see [`Metrics::job_in_flight`].
#[must_use = "the job stops counting as in flight when this is dropped"]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's metric table: name → (type, labels).
    fn documented() -> std::collections::BTreeMap<String, (String, Vec<String>)> {
        let readme = include_str!("../README.md");
        let start = readme
            .find("| metric | type | labels | meaning |")
            .expect("metric table");
        readme[start..]
            .lines()
            .skip(2)
            .map(str::trim)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let ticked = |c: &str| -> Vec<String> {
                    c.split('`').skip(1).step_by(2).map(str::to_owned).collect()
                };
                let name = ticked(cells[1]).remove(0);
                (name, (cells[2].to_owned(), ticked(cells[3])))
            })
            .collect()
    }

    #[test]
    fn every_metric_is_registered_exposed_and_documented() {
        let m = Metrics::new();
        // Labelled metrics appear once a label set is used.
        m.queue_depth.with_label_values(&["tts.requests"]).set(3);
        m.jobs.with_label_values(&["completed"]).inc();
        m.job_duration
            .with_label_values(&["completed"])
            .observe(1.0);
        m.segmind_requests
            .with_label_values(&["submit", "200"])
            .inc();
        m.retries.with_label_values(&["429"]).inc();
        m.published.with_label_values(&["event"]).inc();
        m.paused.with_label_values(&["unauthorized"]).set(0);
        m.requeues.with_label_values(&["storage_failed"]).inc();
        m.resumed.with_label_values(&["poll"]).inc();
        m.handovers.with_label_values(&["shutdown"]).inc();
        m.fleet_records.with_label_values(&["spend"]).inc();
        let registered: std::collections::BTreeMap<String, (String, Vec<String>)> = m
            .registry
            .gather()
            .iter()
            .map(|f| {
                let kind = format!("{:?}", f.get_field_type()).to_lowercase();
                let labels = f.get_metric()[0]
                    .get_label()
                    .iter()
                    .map(|l| l.name().to_owned())
                    .collect();
                (f.name().to_owned(), (kind, labels))
            })
            .collect();
        assert_eq!(registered.len(), 24, "{registered:?}");
        assert_eq!(
            registered,
            documented(),
            "README.md's metric table (name, type, labels) and the registry differ"
        );
        let text = m.render();
        for name in registered.keys() {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} is not exposed in\n{text}"
            );
        }
        for sample in [
            "tts_queue_depth{queue=\"tts.requests\"} 3",
            "tts_jobs_total{outcome=\"completed\"} 1",
            "tts_jobs_in_flight 0",
            "tts_segmind_requests_total{endpoint=\"submit\",status=\"200\"} 1",
            "tts_retries_total{reason=\"429\"} 1",
        ] {
            assert!(text.contains(sample), "missing {sample} in\n{text}");
        }
    }

    #[tokio::test]
    async fn an_aborted_job_stops_counting_as_in_flight() {
        let m = Metrics::new();
        let held = m.job_in_flight();
        let metrics = m.clone();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _in_flight = metrics.job_in_flight();
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started_rx.await.unwrap();
        assert_eq!(m.jobs_in_flight.get(), 2);
        task.abort();
        let _ = task.await;
        assert_eq!(m.jobs_in_flight.get(), 1, "the aborted job was uncounted");
        drop(held);
        assert_eq!(m.jobs_in_flight.get(), 0);
    }
}
