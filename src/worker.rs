//! The worker: one public step, [`process`], that takes a delivery to its end,
//! and a loop, [`run`], that feeds deliveries to it under a concurrency bound.
//!
//! Invariant: a delivery is acked only after its terminal event (and, for a
//! rejected request, its dead-letter copy) is confirmed by the broker. If
//! publishing fails, or the job should be tried again later, the delivery is
//! requeued instead. A redelivered job resumes from its checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, Span, error, field, info, info_span, warn};

use crate::audio::{self, Audio};
use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::checkpoint::{self, Checkpoint, Checkpoints, StoredRecord};
use crate::config::{JobSettings, RequestLimits};
use crate::failure::{self, Class, Disposition, ErrorCode, Failure, JobError};
use crate::job::{Completed, Failed, ObjectKey, Outcome, StoredAudio, TtsJob};
use crate::metrics::Metrics;
use crate::pause::{self, PauseGate};
use crate::segmind::{SegmindClient, SegmindError};
use crate::storage::Storage;
use crate::wire::{
    self, DEAD_LETTER_CODE_HEADER, DEAD_LETTER_JOB_HEADER, DEAD_LETTER_MESSAGE_HEADER,
};

/// Everything a job needs, shared by all in-flight jobs of one broker session.
pub struct JobContext {
    pub segmind: Arc<SegmindClient>,
    pub storage: Storage,
    pub checkpoints: Checkpoints,
    pub publisher: Publisher,
    pub metrics: Metrics,
    pub pause: PauseGate,
    pub topology: Topology,
    pub limits: RequestLimits,
    pub jobs: JobSettings,
    /// Prefix of default storage keys.
    pub s3_prefix: String,
    /// Bound on one delivery's time at Segmind.
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
    /// Not finished here; the broker redelivers it.
    Requeue,
}

/// How a job's processing ended.
enum JobEnd {
    Finished(Box<Outcome>),
    /// Try again on a later delivery; the reason is an error code.
    Requeue(ErrorCode),
}

/// Takes one delivery to a confirmed terminal event or a requeue, and settles it.
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
    let (settlement, label) = settle(ctx, &delivery).instrument(span.clone()).await;
    let ack_result = match settlement {
        Settlement::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Settlement::Requeue => {
            tokio::time::sleep(ctx.jobs.requeue_delay).await;
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
    if let Some(label) = label {
        ctx.metrics.jobs.with_label_values(&[label]).inc();
        ctx.metrics
            .job_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }
    settlement
}

/// Runs the job and publishes its outcome; returns the settlement and, for a
/// finished job, its outcome label.
async fn settle(ctx: &JobContext, delivery: &Delivery) -> (Settlement, Option<&'static str>) {
    let props = &delivery.properties;
    let attempt = broker::delivery_count(props).saturating_add(1);
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let decoded = wire::decode_request(&delivery.data, message_id, &ctx.limits);
    let span = Span::current();
    span.record("job_id", decoded.job_id.as_str());
    span.record("attempt", attempt);

    let rejected = |failure: Failure| {
        Outcome::Failed(Failed {
            job_id: decoded.job_id.clone(),
            failure,
            request_id: None,
            attempts: attempt,
            metadata: decoded.metadata.clone(),
        })
    };
    let (outcome, dead_letter) = if attempt > ctx.jobs.max_deliveries {
        let failure = Failure {
            code: ErrorCode::PoisonMessage,
            class: Class::Permanent,
            message: format!(
                "delivered {attempt} times without finishing (limit {}): it crashed, stalled or was interrupted each time",
                ctx.jobs.max_deliveries
            ),
            http_status: None,
        };
        warn!(attempt, "dead-lettering a poison message");
        (rejected(failure), true)
    } else {
        match &decoded.job {
            Err(invalid) => {
                warn!(error = %invalid, "rejecting invalid request");
                (
                    rejected(Failure::invalid_request(invalid.to_string())),
                    true,
                )
            }
            Ok(job) => match run_job(ctx, job, attempt).await {
                JobEnd::Finished(outcome) => (*outcome, false),
                JobEnd::Requeue(reason) => {
                    ctx.metrics
                        .requeues
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    info!(
                        reason = reason.as_str(),
                        "requeueing the job for a later delivery"
                    );
                    return (Settlement::Requeue, None);
                }
            },
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
            if let (Outcome::Failed(f), Ok(_)) = (&outcome, &decoded.job) {
                // A failed job starts afresh if it is ever sent again.
                if let Err(e) = ctx.checkpoints.delete(&f.job_id).await {
                    warn!(error = %e, "could not delete the checkpoint of a failed job");
                }
            }
            info!(outcome = label, "job finished");
            (Settlement::Ack, Some(label))
        }
        Err(e) => {
            error!(error = %e, "could not publish the terminal event; requeueing");
            ctx.metrics
                .requeues
                .with_label_values(&["publish_failed"])
                .inc();
            (Settlement::Requeue, None)
        }
    }
}

/// Runs a valid job and decides what its failure, if any, means.
async fn run_job(ctx: &JobContext, job: &TtsJob, attempt: u32) -> JobEnd {
    let deadline = tokio::time::Instant::now() + ctx.job_deadline;
    let mut calls = 0u32;
    let mut request_id = None;
    let result =
        synthesize_and_store(ctx, job, attempt, deadline, &mut calls, &mut request_id).await;
    if calls > 0 {
        ctx.metrics.segmind_calls_per_job.observe(f64::from(calls));
    }
    let err = match result {
        Ok(completed) => return JobEnd::Finished(Box::new(Outcome::Completed(completed))),
        Err(err) => err,
    };
    let failure = failure::classify(&err, &ctx.block_patterns);
    let request_id = request_id.or_else(|| failed_request_id(&err));
    if let Some(id) = &request_id {
        Span::current().record("request_id", id.as_str());
    }
    match failure::disposition(
        &failure,
        attempt,
        ctx.jobs.max_deliveries,
        ctx.jobs.on_account_error,
    ) {
        Disposition::Fail => {
            warn!(code = failure.code.as_str(), error = %err, "job failed");
            JobEnd::Finished(Box::new(Outcome::Failed(Failed {
                job_id: job.id.clone(),
                failure,
                request_id,
                attempts: attempt,
                metadata: job.metadata.clone(),
            })))
        }
        Disposition::Requeue => {
            warn!(code = failure.code.as_str(), error = %err, "transient failure");
            JobEnd::Requeue(failure.code)
        }
        Disposition::Pause => {
            ctx.pause.pause(failure.code, &failure.message);
            JobEnd::Requeue(failure.code)
        }
    }
}

/// The job's work: answer from storage if it is already done, else resume or
/// submit at Segmind, check the audio (submitting again on Gemini's silent
/// failure), store it and record that in the checkpoint.
async fn synthesize_and_store(
    ctx: &JobContext,
    job: &TtsJob,
    attempt: u32,
    deadline: tokio::time::Instant,
    calls: &mut u32,
    request_id: &mut Option<String>,
) -> Result<Completed, JobError> {
    let checkpoint = ctx.checkpoints.load(&job.id, &job.speech).await?;
    if let Some(cp) = &checkpoint
        && let Some(done) = replay_from_storage(ctx, job, cp, attempt).await?
    {
        return Ok(done);
    }
    let mut resume = checkpoint.filter(|cp| ctx.checkpoints.resumable(cp, chrono::Utc::now()));
    let mut audio_retries_left = ctx.jobs.audio_retries;
    loop {
        let (submitted, submitted_at, resumed) = match resume.take() {
            Some(cp) => {
                info!(request_id = %cp.request_id, "resuming the Segmind request from the checkpoint");
                ctx.metrics.resumed.with_label_values(&["poll"]).inc();
                (ctx.segmind.resume(&cp.request_id), cp.submitted_at, true)
            }
            None => {
                let submitted = ctx.segmind.submit(&job.speech, deadline, calls).await?;
                let submitted_at = chrono::Utc::now();
                save_checkpoint(ctx, job, &submitted.request_id, submitted_at, None).await;
                (submitted, submitted_at, false)
            }
        };
        *request_id = Some(submitted.request_id.clone());
        Span::current().record("request_id", submitted.request_id.as_str());
        let synthesis = match ctx
            .segmind
            .wait_for_audio(&submitted, deadline, calls)
            .await
        {
            Err(e)
                if resumed
                    && failure::classify_segmind(&e, &ctx.block_patterns).code
                        == ErrorCode::Expired =>
            {
                info!("the resumed request has expired at Segmind; submitting again");
                continue;
            }
            other => other?,
        };
        if let Some(t) = synthesis.inference_time_seconds {
            ctx.metrics.inference_duration.observe(t);
        }
        let checked =
            Audio::parse(synthesis.audio, synthesis.content_type.as_deref()).and_then(|a| {
                audio::check_plausible(&a, &job.speech.text, ctx.jobs.min_seconds_per_word)
                    .map(|()| a)
            });
        let audio = match checked {
            Ok(audio) => audio,
            Err(e) if audio_retries_left > 0 => {
                audio_retries_left -= 1;
                ctx.metrics
                    .retries
                    .with_label_values(&["audio_invalid"])
                    .inc();
                warn!(error = %e, "Segmind returned unusable audio; submitting again");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let key = match &job.output_key {
            Some(key) => key.clone(),
            None => ObjectKey::default_for(&ctx.s3_prefix, &job.id, audio.format.extension()),
        };
        let upload_started = Instant::now();
        let stored = ctx
            .storage
            .put(&key, &audio, &job.id, &synthesis.request_id)
            .await;
        ctx.metrics
            .s3_upload
            .observe(upload_started.elapsed().as_secs_f64());
        let stored = stored?;
        ctx.metrics.audio_bytes.observe(stored.size_bytes as f64);
        let record = StoredRecord::from_stored(&stored, synthesis.inference_time_seconds);
        save_checkpoint(ctx, job, &synthesis.request_id, submitted_at, Some(record)).await;
        info!(key = %key, bytes = stored.size_bytes, http_calls = *calls, "audio stored");
        return Ok(Completed {
            job_id: job.id.clone(),
            audio: stored,
            request_id: synthesis.request_id,
            inference_time_seconds: synthesis.inference_time_seconds,
            attempts: attempt,
            metadata: job.metadata.clone(),
            served_from_storage: false,
        });
    }
}

/// Writes the checkpoint. A failure is logged, not fatal: the job can still
/// finish; only a crash-resume of this job would be lost.
async fn save_checkpoint(
    ctx: &JobContext,
    job: &TtsJob,
    request_id: &str,
    submitted_at: chrono::DateTime<chrono::Utc>,
    stored: Option<StoredRecord>,
) {
    let checkpoint = Checkpoint {
        job_id: job.id.to_string(),
        request_id: request_id.to_owned(),
        submitted_at,
        fingerprint: checkpoint::fingerprint(&job.speech),
        stored,
    };
    if let Err(e) = ctx.checkpoints.save(&checkpoint).await {
        warn!(error = %e, "could not write the checkpoint; a redelivery of this job would submit again");
    }
}

/// The completion of a job whose audio is already stored, if the object is
/// there, complete and matching its recorded checksum.
async fn replay_from_storage(
    ctx: &JobContext,
    job: &TtsJob,
    checkpoint: &Checkpoint,
    attempt: u32,
) -> Result<Option<Completed>, JobError> {
    let Some(stored) = &checkpoint.stored else {
        return Ok(None);
    };
    let Some(info) = ctx.storage.head(&stored.key).await? else {
        return Ok(None);
    };
    let intact = info.sha256.as_deref() == Some(stored.sha256.as_str())
        && info.size_bytes == Some(stored.size_bytes)
        && info.job_id.as_deref() == Some(job.id.as_str());
    if !intact {
        warn!(key = %stored.key, "stored audio does not match the checkpoint; producing it again");
        return Ok(None);
    }
    ctx.metrics.resumed.with_label_values(&["storage"]).inc();
    info!(key = %stored.key, "audio already stored; replaying the completion without calling Segmind");
    Ok(Some(Completed {
        job_id: job.id.clone(),
        audio: StoredAudio {
            bucket: ctx.storage.bucket().to_owned(),
            key: stored.key.clone(),
            content_type: stored.content_type.clone(),
            size_bytes: stored.size_bytes,
            sha256: stored.sha256.clone(),
            duration_seconds: stored.duration_seconds,
        },
        request_id: checkpoint.request_id.clone(),
        inference_time_seconds: stored.inference_time_seconds,
        attempts: attempt,
        metadata: job.metadata.clone(),
        served_from_storage: true,
    }))
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

/// The channel requests are consumed on, able to start and cancel consumers
/// (consumption is cancelled while paused).
pub struct Consuming {
    pub channel: Channel,
    pub queue: String,
    pub tag: String,
}

impl Consuming {
    async fn start(&self) -> Result<lapin::Consumer, lapin::Error> {
        self.channel
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Cancels `consumer` and hands back what it had buffered but not started.
    async fn stop(&self, mut consumer: lapin::Consumer) {
        if let Err(e) = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel the consumer");
            return;
        }
        let drain = async {
            while let Some(Ok(delivery)) = consumer.next().await {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                let _ = delivery.acker.nack(requeue).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }
}

/// Why [`run`] returned.
#[derive(Debug)]
pub enum Stopped {
    /// Shutdown was asked and in-flight jobs were drained (or abandoned).
    Shutdown,
    /// The broker connection or channel failed; in-flight deliveries are dead
    /// and will be redelivered.
    BrokerLost(lapin::Error),
}

async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: nobody can ask for shutdown any more.
        std::future::pending::<()>().await;
    }
}

/// Consumes until shutdown is asked or the broker fails, running at most
/// `max_in_flight` jobs at once, pausing while the account is failing.
///
/// The semaphore and the AMQP prefetch bound the same thing: prefetch keeps
/// the broker from sending more, the semaphore keeps this loop from starting
/// more, whatever the broker does.
pub async fn run(
    ctx: Arc<JobContext>,
    consuming: &Consuming,
    max_in_flight: usize,
    ready: &AtomicBool,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Stopped {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    let mut pause_changes = ctx.pause.subscribe();
    let mut consumer: Option<lapin::Consumer> = None;
    let mut prober: Option<tokio::task::JoinHandle<()>> = None;
    let stopped = loop {
        while tasks.try_join_next().is_some() {}
        if ctx.pause.paused().is_some() {
            ready.store(false, Ordering::Relaxed);
            if let Some(c) = consumer.take() {
                consuming.stop(c).await;
            }
            if prober.as_ref().is_none_or(|p| p.is_finished()) {
                let (gate, segmind, jobs) =
                    (ctx.pause.clone(), ctx.segmind.clone(), ctx.jobs.clone());
                prober = Some(tokio::spawn(async move {
                    pause::probe_until_healthy(&gate, &segmind, jobs.probe_initial, jobs.probe_max)
                        .await;
                }));
            }
            tokio::select! {
                _ = shutdown_requested(&mut shutdown) => break Stopped::Shutdown,
                _ = pause_changes.changed() => continue,
            }
        }
        let current = match consumer.as_mut() {
            Some(c) => c,
            None => match consuming.start().await {
                Ok(c) => {
                    ready.store(true, Ordering::Relaxed);
                    consumer.insert(c)
                }
                Err(e) => break Stopped::BrokerLost(e),
            },
        };
        let permit = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break Stopped::Shutdown,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Stopped::Shutdown, // the semaphore is never closed
            },
        };
        let next = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break Stopped::Shutdown,
            _ = pause_changes.changed() => continue,
            next = current.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    process(&ctx, delivery).await
                });
            }
            Some(Err(e)) => break Stopped::BrokerLost(e),
            None => {
                warn!("the broker cancelled the consumer; consuming again");
                consumer = None;
            }
        }
    };
    ready.store(false, Ordering::Relaxed);
    if let Some(p) = prober {
        p.abort();
    }
    match &stopped {
        Stopped::Shutdown => {
            if let Some(c) = consumer.take() {
                consuming.stop(c).await;
            }
            while tasks.try_join_next().is_some() {}
            info!(
                in_flight = tasks.len(),
                grace_s = grace.as_secs_f64(),
                "stopping: waiting for in-flight jobs"
            );
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                warn!(
                    abandoned = tasks.len(),
                    "grace period over; unfinished deliveries return to the queue and resume from their checkpoints"
                );
            }
        }
        Stopped::BrokerLost(e) => {
            warn!(error = %e, in_flight = tasks.len(), "broker lost; in-flight deliveries will be redelivered");
        }
    }
    tasks.abort_all();
    stopped
}
