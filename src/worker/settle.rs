//! One delivery to its end: decode it, run the [`Pipeline`] (or reject it),
//! publish the outcome with confirmation, then ack or requeue.
//!
//! Invariant: a delivery is acked only after its terminal event (and, for a
//! rejected request, its dead-letter copy) is confirmed by the broker, or,
//! when the worker hands it over on shutdown, after its copy is confirmed in
//! the requests queue. If publishing fails, or the job should be tried again
//! later, the delivery is requeued instead (`basic.reject(requeue)`, which
//! counts as a delivery on every supported RabbitMQ version).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tracing::{Instrument, Span, error, field, info, info_span, warn};

use super::pause::jittered;
use super::pipeline::{DeliveryLimit, HandOverReason, JobEnd, Pipeline};
use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::config::RequestLimits;
use crate::failure::{Attempt, Failure};
use crate::job::{Failed, JobId, Outcome};
use crate::telemetry;
use crate::wire::request::RequestError;
use crate::wire::{
    self, DEAD_LETTER_CODE_HEADER, DEAD_LETTER_JOB_HEADER, DEAD_LETTER_MESSAGE_HEADER,
    TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceHeaders,
};

/// What settling a delivery needs: the pipeline, shared by every session,
/// and this broker session's publisher.
pub struct JobContext {
    pub pipeline: Arc<Pipeline>,
    pub publisher: Publisher,
    pub topology: Topology,
    pub limits: RequestLimits,
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
    /// Not finished here through no fault of the job (shutdown, account
    /// pause): a copy goes back to the queue without counting this delivery
    /// (see [`hand_over`]).
    HandOver(HandOverReason),
}

/// Takes one delivery to a confirmed terminal event or a requeue, and
/// settles it; a job still working when `limit` is reached is handed back.
pub async fn process(ctx: &JobContext, delivery: Delivery, limit: DeliveryLimit) -> Settlement {
    let started = Instant::now();
    let metrics = &ctx.pipeline.metrics;
    let _in_flight = metrics.job_in_flight();
    // OpenTelemetry messaging conventions for a consumer's processing span.
    let span = info_span!(
        "job",
        "otel.kind" = "consumer",
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = ctx.topology.requests_queue.as_str(),
        "messaging.message.id" = field::Empty,
        job_id = field::Empty,
        request_id = field::Empty,
        attempt = field::Empty,
        acquired = field::Empty,
        outcome = field::Empty
    );
    if let Some(id) = delivery.properties.message_id() {
        span.record("messaging.message.id", id.as_str());
    }
    let producer = trace_headers(&delivery.properties);
    telemetry::adopt_producer_context(&span, &producer);
    let Settled {
        settlement,
        label,
        forget,
    } = settle(ctx, &delivery, &producer, &limit)
        .instrument(span.clone())
        .await;
    let ack_result = match settlement {
        Settlement::Ack => Box::pin(delivery.acker.ack(BasicAckOptions::default())).await,
        Settlement::Requeue => {
            tokio::time::sleep(ctx.pipeline.jobs.requeue_delay).await;
            Box::pin(delivery.acker.reject(REQUEUE)).await
        }
        Settlement::HandOver(reason) => Box::pin(hand_over(ctx, &delivery, reason)).await,
    };
    match ack_result {
        Err(e) => {
            // The channel is gone: the broker will redeliver the message.
            span.in_scope(
                || warn!(error = %e, "could not settle the delivery; it will be redelivered"),
            );
        }
        Ok(settled) => {
            if let Some(Cleanup::Intermediates {
                job_id,
                request_ids,
            }) = forget.filter(|_| settled)
            {
                // Only after the ack: a crash before it redelivers a job
                // that still has its parts, so nothing is paid twice. A
                // completed job keeps its records (a repeat is answered
                // from storage) but not its intermediate part objects.
                let deleted = Box::pin(
                    ctx.pipeline
                        .checkpoints
                        .delete_part_objects(&job_id, &request_ids),
                )
                .await;
                if let Err(e) = deleted {
                    span.in_scope(
                        || warn!(error = %e, "could not delete a settled job's intermediate parts"),
                    );
                }
            }
        }
    }
    if let Some(label) = label {
        metrics.jobs.with_label_values(&[label]).inc();
        metrics
            .job_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }
    settlement
}

/// What [`settle`] decided.
struct Settled {
    settlement: Settlement,
    /// The outcome label of a finished job.
    label: Option<&'static str>,
    /// What is deleted once the delivery is acked.
    forget: Option<Cleanup>,
}

/// What a settled job leaves to delete once its delivery is acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// A completed job's intermediate part objects (its takes, in the
    /// order of its parts).
    Intermediates {
        job_id: JobId,
        request_ids: Vec<String>,
    },
}

/// What to delete once a finished job's delivery is acked. Pure.
///
/// A failed job keeps its stored parts and records: a resend within
/// `jobs.resume_window` pays only for the parts not stored (a part whose
/// request's result is final was already forgotten by the engine). What it
/// leaves is swept by the worker once the window has passed.
pub fn cleanup_after(outcome: &Outcome) -> Option<Cleanup> {
    match outcome {
        // Every job whose parts were stored apart from its delivered audio
        // (several parts, or one part rendered).
        Outcome::Completed(c) if c.parts > 1 || c.delivery.is_some() => {
            Some(Cleanup::Intermediates {
                job_id: c.job_id.clone(),
                request_ids: c.request_ids.clone(),
            })
        }
        _ => None,
    }
}

impl Settled {
    fn unfinished(settlement: Settlement) -> Self {
        Settled {
            settlement,
            label: None,
            forget: None,
        }
    }
}

/// Runs the job and publishes its outcome; returns the settlement.
async fn settle(
    ctx: &JobContext,
    delivery: &Delivery,
    producer: &TraceHeaders,
    limit: &DeliveryLimit,
) -> Settled {
    let props = &delivery.properties;
    let jobs = &ctx.pipeline.jobs;
    let attempt = Attempt {
        number: broker::delivery_count(props).saturating_add(1),
        pauses: broker::pause_count(props),
    };
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let decoded = wire::decode_request(&delivery.data, message_id, &ctx.limits);
    let span = Span::current();
    span.record("job_id", decoded.job_id.as_str());
    span.record("attempt", attempt.number);
    // RabbitMQ 4.3 also counts every hand-out, uncounted returns included.
    if let Some(acquired) = broker::acquired_count(props) {
        span.record("acquired", acquired);
    }
    if attempt.number > 1 || attempt.pauses > 0 {
        info!(
            delivery_count = attempt.number - 1,
            acquired_count = broker::acquired_count(props),
            pauses = attempt.pauses,
            "redelivered"
        );
    }
    let attempt_number = attempt.number;

    let rejected = |failure: Failure| {
        Outcome::Failed(Failed {
            job_id: decoded.job_id.clone(),
            failure,
            request_id: None,
            attempts: attempt_number,
            metadata: decoded.metadata.clone(),
        })
    };
    let (outcome, dead_letter) = if attempt.number > jobs.max_deliveries {
        warn!(attempt = attempt.number, "dead-lettering a poison message");
        (
            rejected(Failure::poison(attempt.number, jobs.max_deliveries)),
            true,
        )
    } else {
        match &decoded.job {
            Err(RequestError::Invalid(invalid)) => {
                warn!(error = %invalid, "rejecting invalid request");
                (
                    rejected(Failure::invalid_request(invalid.to_string())),
                    true,
                )
            }
            Err(RequestError::NewerVersion { version, known }) => {
                let waited = deferred_for(broker::deferred_since(props), epoch_millis());
                if waited < jobs.unsupported_version_grace {
                    info!(
                        version,
                        known,
                        waited_s = waited.as_secs(),
                        "handing a request of a newer version back for a newer replica"
                    );
                    // Held a moment, so replicas that all know too little do
                    // not pass it around in a tight loop; longer the longer
                    // no replica has taken it.
                    let hold = jittered(
                        handback_hold(jobs.version_handback_delay, waited),
                        &mut rand::rng(),
                    );
                    tokio::select! {
                        () = tokio::time::sleep(hold) => {}
                        () = ctx.pipeline.handover_requested() => {}
                    }
                    return Settled::unfinished(Settlement::HandOver(HandOverReason::NewerVersion));
                }
                warn!(
                    version,
                    known,
                    waited_s = waited.as_secs(),
                    "no replica took a request of a newer version in time; dead-lettering it"
                );
                (
                    rejected(Failure::unsupported_version(*version, *known, waited)),
                    true,
                )
            }
            Ok(job) => match ctx.pipeline.run_delivery(job, attempt, limit).await {
                JobEnd::Finished(outcome) => (*outcome, false),
                JobEnd::HandOver(reason) => {
                    return Settled::unfinished(Settlement::HandOver(reason));
                }
                JobEnd::Requeue(reason) => {
                    ctx.pipeline
                        .metrics
                        .requeues
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    info!(
                        reason = reason.as_str(),
                        "requeueing the job for a later delivery"
                    );
                    return Settled::unfinished(Settlement::Requeue);
                }
            },
        }
    };
    let label = outcome.label();
    span.record("outcome", label);
    let trace = telemetry::traceparent_of(&span, producer);

    // The publishing and S3 futures are large; boxed, they exist only while
    // they run instead of sizing every waiting job's task (see ARCHITECTURE.md
    // "Memory").
    let published = if dead_letter {
        let (a, b) = tokio::join!(
            Box::pin(publish_dead_letter(ctx, delivery, &outcome, &trace)),
            Box::pin(publish_outcome(ctx, props, &outcome, &trace))
        );
        a.and(b)
    } else {
        Box::pin(publish_outcome(ctx, props, &outcome, &trace)).await
    };
    match published {
        Ok(()) => {
            let forget = cleanup_after(&outcome);
            info!(outcome = label, "job finished");
            Settled {
                settlement: Settlement::Ack,
                label: Some(label),
                forget,
            }
        }
        Err(e) => {
            error!(error = %e, "could not publish the terminal event; requeueing");
            ctx.pipeline
                .metrics
                .requeues
                .with_label_values(&["publish_failed"])
                .inc();
            Settled::unfinished(Settlement::Requeue)
        }
    }
}

/// When a request's hand-backs for a newer replica began: its
/// `tts-deferred-since` (ms since the epoch), else now; a date in the future
/// (another replica's clock, or a producer's header) is now too, so it can
/// never keep the request from failing. Pure.
pub fn deferral_start(since: Option<u64>, now: u64) -> u64 {
    since.filter(|since| *since <= now).unwrap_or(now)
}

/// How long a request has been handed back for a newer replica (see
/// [`deferral_start`]). Pure.
pub fn deferred_for(since: Option<u64>, now: u64) -> Duration {
    Duration::from_millis(now - deferral_start(since, now))
}

/// How long to hold a newer-version request before handing it back: the
/// configured delay, growing to an eighth of the time it has been handed
/// back, at most 30 s, so a request no replica takes costs tens of
/// republishes over the grace, not hundreds. Pure.
pub fn handback_hold(delay: Duration, waited: Duration) -> Duration {
    delay.max((waited / 8).min(Duration::from_secs(30)))
}

/// Now, in milliseconds since the Unix epoch.
fn epoch_millis() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// The producer's W3C trace context, from the request's headers.
fn trace_headers(properties: &BasicProperties) -> TraceHeaders {
    TraceHeaders {
        traceparent: broker::header_str(properties, TRACEPARENT_HEADER).map(str::to_owned),
        tracestate: broker::header_str(properties, TRACESTATE_HEADER).map(str::to_owned),
    }
}

/// `properties` with the trace context headers set to `trace`.
fn with_trace(properties: BasicProperties, trace: &TraceHeaders) -> BasicProperties {
    let headers: Vec<(&str, &str)> = [
        (TRACEPARENT_HEADER, trace.traceparent.as_deref()),
        (TRACESTATE_HEADER, trace.tracestate.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    if headers.is_empty() {
        properties
    } else {
        broker::with_headers(properties, &headers)
    }
}

/// A counted return: `basic.reject` raises `x-delivery-count` on RabbitMQ
/// 3.10, 4.0 and 4.3 alike (4.3 no longer counts `basic.nack`).
pub const REQUEUE: BasicRejectOptions = BasicRejectOptions { requeue: true };

/// Gives `delivery` back to the queue without counting it toward the poison
/// limit, and settles it: publishes a byte-identical copy to the requests
/// queue carrying the deliveries that did count
/// ([`broker::COUNTED_DELIVERIES_HEADER`]), waits for the broker's
/// confirmation, then acks the original. A `nack(requeue)` would be simpler
/// but raises the quorum queue's `x-delivery-count`, so every scale-in would
/// bring healthy jobs closer to the dead-letter queue (on RabbitMQ 3.10 and
/// 4.0; on 4.3 a nack no longer counts, and the copy is uncounted there too).
/// A pause this job caused adds one to the copy's [`broker::PAUSES_HEADER`].
///
/// If the copy is not confirmed, the delivery is rejected with requeue (and
/// that delivery counts). If the process dies between the confirmation and the ack, both
/// the copy and the original are delivered: the checkpoint makes the second
/// one a replay, not a second payment, and both carry the same event id.
pub async fn hand_over(
    ctx: &JobContext,
    delivery: &Delivery,
    reason: HandOverReason,
) -> Result<bool, lapin::Error> {
    let counted = broker::delivery_count(&delivery.properties);
    let pauses = broker::pause_count(&delivery.properties)
        + u32::from(reason == HandOverReason::Paused { caused: true });
    // The first hand-back dates the request (see `deferral_start`).
    let deferred_since = (reason == HandOverReason::NewerVersion)
        .then(|| deferral_start(broker::deferred_since(&delivery.properties), epoch_millis()));
    let properties =
        broker::handover_properties(&delivery.properties, counted, pauses, deferred_since);
    let copied = ctx
        .publisher
        .publish(
            "",
            &ctx.topology.requests_queue,
            &delivery.data,
            properties,
            true,
        )
        .await;
    match copied {
        Ok(()) => {
            ctx.pipeline
                .metrics
                .handovers
                .with_label_values(&[reason.as_str()])
                .inc();
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        Err(e) => {
            warn!(error = %e, "could not hand the delivery over; requeueing it");
            delivery.acker.reject(REQUEUE).await
        }
    }
}

/// Publishes the terminal event, plus a copy to `reply_to` when asked.
async fn publish_outcome(
    ctx: &JobContext,
    request: &BasicProperties,
    outcome: &Outcome,
    trace: &TraceHeaders,
) -> Result<(), BrokerError> {
    let metrics = &ctx.pipeline.metrics;
    let event = wire::encode_event(outcome, &ctx.event_source, chrono::Utc::now(), trace);
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
    let properties = with_trace(properties, trace);
    ctx.publisher
        .publish(
            &ctx.topology.events_exchange,
            event.routing_key,
            &event.body,
            properties.clone(),
            true,
        )
        .await?;
    metrics.published.with_label_values(&["event"]).inc();

    if let Some(reply_to) = request.reply_to() {
        // The durable event above is the record; the reply is a courtesy copy
        // to a queue the requester owns, so a vanished reply queue must not
        // block the job.
        match ctx
            .publisher
            .publish("", reply_to.as_str(), &event.body, properties, false)
            .await
        {
            Ok(()) => metrics.published.with_label_values(&["reply"]).inc(),
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
    trace: &TraceHeaders,
) -> Result<(), BrokerError> {
    let Outcome::Failed(failed) = outcome else {
        return Ok(());
    };
    // Header values are capped: a request can carry huge invalid fields.
    let message: String = failed.failure.message.chars().take(1024).collect();
    // Without the worker's own hand-over headers: a copy sent again by an
    // operator starts afresh (its deliveries, pauses and deferral uncounted).
    let properties = broker::with_headers(
        with_trace(broker::without_worker_headers(&delivery.properties), trace),
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
    ctx.pipeline
        .metrics
        .published
        .with_label_values(&["dead_letter"])
        .inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferral_dated_in_the_future_counts_from_now() {
        assert_eq!(deferred_for(None, 10_000), Duration::ZERO);
        assert_eq!(deferred_for(Some(4_000), 10_000), Duration::from_secs(6));
        assert_eq!(deferred_for(Some(99_000), 10_000), Duration::ZERO);
    }

    #[test]
    fn the_hand_back_hold_grows_with_the_wait_up_to_30_s() {
        let delay = Duration::from_secs(2);
        assert_eq!(handback_hold(delay, Duration::ZERO), delay);
        assert_eq!(
            handback_hold(delay, Duration::from_secs(80)),
            Duration::from_secs(10)
        );
        assert_eq!(
            handback_hold(delay, Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
        // Over the default 15-minute grace: a few dozen hand-backs.
        let (mut waited, mut handbacks) = (Duration::ZERO, 0);
        while waited < Duration::from_secs(900) {
            waited += handback_hold(delay, waited);
            handbacks += 1;
        }
        assert!((30..60).contains(&handbacks), "{handbacks}");
    }
    use crate::failure::{ErrorCode, Failure};
    use crate::job::{Completed, StoredAudio};

    fn completed(parts: u32) -> Outcome {
        Outcome::Completed(Completed {
            job_id: JobId::parse("j-1", 64).unwrap(),
            audio: StoredAudio {
                bucket: "b".into(),
                key: "k.wav".into(),
                content_type: "audio/wav".into(),
                size_bytes: 1,
                sha256: "00".into(),
                duration_seconds: None,
            },
            request_id: "r".into(),
            request_ids: vec!["r".into(); parts as usize],
            parts,
            marks_key: None,
            delivery: None,
            inference_time_seconds: None,
            segmind_cost: None,
            segmind_calls: 0,
            attempts: 1,
            metadata: None,
            served_from_storage: false,
        })
    }

    fn failed(code: ErrorCode) -> Outcome {
        let mut failure = Failure::invalid_request("x");
        failure.code = code;
        Outcome::Failed(Failed {
            job_id: JobId::parse("j-1", 64).unwrap(),
            failure,
            request_id: None,
            attempts: 1,
            metadata: None,
        })
    }

    #[test]
    fn after_the_ack_a_completed_jobs_intermediate_parts_go_and_a_failed_jobs_stay() {
        let id = JobId::parse("j-1", 64).unwrap();
        assert_eq!(
            cleanup_after(&completed(5)),
            Some(Cleanup::Intermediates {
                job_id: id,
                request_ids: vec!["r".into(); 5]
            })
        );
        // A one-part job delivered as served has no intermediate object.
        assert_eq!(cleanup_after(&completed(1)), None);
        // A failed job keeps its paid parts for a resend, whatever the code.
        for code in [
            ErrorCode::ContentBlocked,
            ErrorCode::Timeout,
            ErrorCode::InferenceFailed,
            ErrorCode::InvalidRequest,
        ] {
            assert_eq!(cleanup_after(&failed(code)), None, "{code}");
        }
    }
}
