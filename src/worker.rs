//! The worker: one public step, [`process`], that takes a delivery to its end,
//! and a loop, [`run`], that feeds deliveries to it under a concurrency bound.
//!
//! Invariant: a delivery is acked only after its terminal event (and, for a
//! rejected request, its dead-letter copy) is confirmed by the broker. If
//! publishing fails, the delivery is requeued instead.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, Span, error, field, info, info_span, warn};

use crate::audio::Audio;
use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::config::RequestLimits;
use crate::failure::{self, Failure, JobError};
use crate::job::{Completed, Failed, ObjectKey, Outcome, TtsJob};
use crate::metrics::Metrics;
use crate::segmind::{SegmindClient, SegmindError};
use crate::storage::Storage;
use crate::wire::{
    self, DEAD_LETTER_CODE_HEADER, DEAD_LETTER_JOB_HEADER, DEAD_LETTER_MESSAGE_HEADER,
};

/// Wait before requeueing a delivery whose event could not be published, so a
/// broker-side problem (an unroutable events exchange, a full disk) does not
/// become a tight redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Everything a job needs, shared by all in-flight jobs.
pub struct JobContext {
    pub segmind: SegmindClient,
    pub storage: Storage,
    pub publisher: Publisher,
    pub metrics: Metrics,
    pub topology: Topology,
    pub limits: RequestLimits,
    /// Prefix of default storage keys.
    pub s3_prefix: String,
    /// Bound on one job's time at Segmind.
    pub job_deadline: Duration,
    pub block_patterns: Vec<String>,
    /// CloudEvents `source` of this process.
    pub event_source: String,
}

/// How a delivery was settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Terminal event confirmed; the delivery is done.
    Ack,
    /// The terminal event could not be confirmed; the broker redelivers.
    Requeue,
}

/// Takes one delivery to a confirmed terminal event, and settles it.
pub async fn process(ctx: &JobContext, delivery: Delivery) -> Settlement {
    let started = Instant::now();
    ctx.metrics.jobs_in_flight.inc();
    let span = info_span!(
        "job",
        job_id = field::Empty,
        request_id = field::Empty,
        attempt = field::Empty,
        outcome = field::Empty
    );
    let settlement = settle(ctx, &delivery).instrument(span.clone()).await;
    let ack_result = match settlement.0 {
        Settlement::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Settlement::Requeue => {
            tokio::time::sleep(REQUEUE_PAUSE).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
    };
    if let Err(e) = ack_result {
        // The channel is gone: the broker will redeliver the message.
        span.in_scope(
            || warn!(error = %e, "could not settle the delivery; it will be redelivered"),
        );
    }
    ctx.metrics.jobs_in_flight.dec();
    if let (Settlement::Ack, Some(label)) = settlement {
        ctx.metrics.jobs.with_label_values(&[label]).inc();
        ctx.metrics
            .job_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }
    settlement.0
}

/// Runs the job and publishes its outcome; returns the settlement and the
/// outcome label.
async fn settle(ctx: &JobContext, delivery: &Delivery) -> (Settlement, Option<&'static str>) {
    let props = &delivery.properties;
    let attempt = broker::delivery_count(props).saturating_add(1);
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let decoded = wire::decode_request(&delivery.data, message_id, &ctx.limits);
    let span = Span::current();
    span.record("job_id", decoded.job_id.as_str());
    span.record("attempt", attempt);

    let (outcome, dead_letter) = match decoded.job {
        Ok(job) => (run_job(ctx, &job, attempt).await, false),
        Err(invalid) => {
            warn!(error = %invalid, "rejecting invalid request");
            let failed = Failed {
                job_id: decoded.job_id,
                failure: Failure::invalid_request(invalid.to_string()),
                request_id: None,
                attempts: attempt,
                metadata: decoded.metadata,
            };
            (Outcome::Failed(failed), true)
        }
    };
    let label = outcome.label();
    span.record("outcome", label);

    let published = if dead_letter {
        let (a, b) = tokio::join!(
            publish_dead_letter(ctx, delivery, &outcome),
            publish_outcome(ctx, props, &outcome)
        );
        a.and(b)
    } else {
        publish_outcome(ctx, props, &outcome).await
    };
    match published {
        Ok(()) => {
            info!(outcome = label, "job finished");
            (Settlement::Ack, Some(label))
        }
        Err(e) => {
            error!(error = %e, "could not publish the terminal event; requeueing");
            (Settlement::Requeue, None)
        }
    }
}

/// Synthesizes, checks and stores the audio of a valid job.
async fn run_job(ctx: &JobContext, job: &TtsJob, attempt: u32) -> Outcome {
    let deadline = tokio::time::Instant::now() + ctx.job_deadline;
    let mut request_id = None;
    let result: Result<Completed, JobError> = async {
        let synthesis = ctx.segmind.synthesize(&job.speech, deadline).await?;
        request_id = Some(synthesis.request_id.clone());
        Span::current().record("request_id", synthesis.request_id.as_str());
        if let Some(t) = synthesis.inference_time_seconds {
            ctx.metrics.inference_duration.observe(t);
        }
        let audio = Audio::parse(synthesis.audio, synthesis.content_type.as_deref())?;
        let key = match &job.output_key {
            Some(key) => key.clone(),
            None => ObjectKey::default_for(&ctx.s3_prefix, &job.id, audio.format.extension()),
        };
        let upload_started = Instant::now();
        let stored = ctx.storage.put(&key, &audio, &job.id).await;
        ctx.metrics
            .s3_upload
            .observe(upload_started.elapsed().as_secs_f64());
        let stored = stored?;
        ctx.metrics.audio_bytes.observe(stored.size_bytes as f64);
        info!(
            key = %key,
            bytes = stored.size_bytes,
            http_calls = synthesis.http_calls,
            "audio stored"
        );
        Ok(Completed {
            job_id: job.id.clone(),
            audio: stored,
            request_id: synthesis.request_id,
            inference_time_seconds: synthesis.inference_time_seconds,
            attempts: attempt,
            metadata: job.metadata.clone(),
        })
    }
    .await;
    match result {
        Ok(completed) => Outcome::Completed(completed),
        Err(err) => {
            let failure = failure::classify(&err, &ctx.block_patterns);
            let request_id = request_id.or_else(|| failed_request_id(&err));
            if let Some(id) = &request_id {
                Span::current().record("request_id", id.as_str());
            }
            warn!(code = failure.code.as_str(), error = %err, "job failed");
            Outcome::Failed(Failed {
                job_id: job.id.clone(),
                failure,
                request_id,
                attempts: attempt,
                metadata: job.metadata.clone(),
            })
        }
    }
}

fn failed_request_id(err: &JobError) -> Option<String> {
    match err {
        JobError::Segmind(SegmindError::JobFailed { request_id, .. }) => Some(request_id.clone()),
        JobError::Segmind(SegmindError::Deadline { request_id, .. }) => request_id.clone(),
        _ => None,
    }
}

/// Publishes the terminal event, plus a copy to `reply_to` when asked.
async fn publish_outcome(
    ctx: &JobContext,
    request: &BasicProperties,
    outcome: &Outcome,
) -> Result<(), BrokerError> {
    let event = wire::encode_event(outcome, &ctx.event_source, chrono::Utc::now());
    let mut properties = BasicProperties::default()
        .with_content_type(wire::EVENT_CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_message_id(event.id.as_str().into())
        .with_type(event.routing_key.into())
        .with_app_id("tts-worker".into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    if let Some(correlation_id) = request.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    ctx.publisher
        .publish(
            &ctx.topology.events_exchange,
            event.routing_key,
            &event.body,
            properties.clone(),
            true,
        )
        .await?;
    ctx.metrics.published.with_label_values(&["event"]).inc();

    if let Some(reply_to) = request.reply_to() {
        // The durable event above is the record; the reply is a courtesy copy
        // to a queue the requester owns, so a vanished reply queue must not
        // block the job.
        match ctx
            .publisher
            .publish("", reply_to.as_str(), &event.body, properties, false)
            .await
        {
            Ok(()) => ctx.metrics.published.with_label_values(&["reply"]).inc(),
            Err(e) => {
                warn!(error = %e, reply_to = reply_to.as_str(), "could not send the reply copy")
            }
        }
    }
    Ok(())
}

/// Publishes the original bytes, byte-identical, to the dead-letter queue with
/// headers saying why.
async fn publish_dead_letter(
    ctx: &JobContext,
    delivery: &Delivery,
    outcome: &Outcome,
) -> Result<(), BrokerError> {
    let Outcome::Failed(failed) = outcome else {
        return Ok(());
    };
    // Header values are capped: a request can carry huge invalid fields.
    let message: String = failed.failure.message.chars().take(1024).collect();
    let properties = broker::with_headers(
        delivery.properties.clone(),
        &[
            (DEAD_LETTER_CODE_HEADER, failed.failure.code.as_str()),
            (DEAD_LETTER_MESSAGE_HEADER, &message),
            (DEAD_LETTER_JOB_HEADER, failed.job_id.as_str()),
        ],
    );
    ctx.publisher
        .publish(
            "",
            &ctx.topology.dead_letter_queue,
            &delivery.data,
            properties,
            true,
        )
        .await?;
    ctx.metrics
        .published
        .with_label_values(&["dead_letter"])
        .inc();
    Ok(())
}

/// Consumes until `shutdown` resolves or the consumer ends, running at most
/// `max_in_flight` jobs at once; then waits up to `grace` for in-flight jobs.
///
/// The semaphore and the AMQP prefetch bound the same thing: prefetch keeps
/// the broker from sending more, the semaphore keeps this loop from starting
/// more, whatever the broker does.
pub async fn run(
    ctx: Arc<JobContext>,
    mut consumer: lapin::Consumer,
    max_in_flight: usize,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), lapin::Error> {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    ready.store(true, Ordering::Relaxed);
    let result = loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()), // the semaphore is never closed
            },
        };
        let next = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    process(&ctx, delivery).await
                });
            }
            Some(Err(e)) => break Err(e),
            None => {
                warn!("the broker cancelled the consumer");
                break Ok(());
            }
        }
    };
    ready.store(false, Ordering::Relaxed);
    info!(
        in_flight = tasks.len(),
        grace_s = grace.as_secs_f64(),
        "stopping: waiting for in-flight jobs"
    );
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            abandoned = tasks.len(),
            "grace period over; unfinished deliveries return to the queue"
        );
        tasks.abort_all();
    }
    result
}
