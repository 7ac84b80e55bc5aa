//! One delivery to its end: decode it, decide what it is ([`admit`]), run
//! the [`Pipeline`] (a job of several parts under its lease), decide how it
//! ends ([`conclude`]), publish the outcome with confirmation, then ack,
//! requeue or hand over. The decisions are pure (`decide`); this module only
//! carries them out.
//!
//! Invariant: a delivery is acked only after its terminal event (and, for a
//! rejected request, its dead-letter copy) is confirmed by the broker, or,
//! when the worker hands it over, after its copy is confirmed in the
//! requests queue. If publishing fails, or the job should be tried again
//! later, the delivery is requeued instead (`basic.reject(requeue)`, which
//! counts as a delivery on every supported RabbitMQ version).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tracing::{Instrument, Span, error, field, info, info_span, warn};

pub use super::decide::Settlement;
use super::decide::{
    Admission, Cleanup, Conclusion, DeliveryFacts, Ending, admit, conclude, deferral_start,
    tenant_of,
};
use super::pause::jittered;
use super::pipeline::{DeliveryLimit, HandOverReason, JobEnd, Pipeline};
use super::publish::{publish_dead_letter, publish_outcome, publish_progress, trace_headers};
use crate::broker::{self, Lease, LeaseError, Leases, Publisher, Topology};
use crate::config::{ReplyToPatterns, RequestLimits, TenantIdentity};
use crate::failure::{Attempt, Failure};
use crate::job::{Failed, Flow, Outcome, TtsJob};
use crate::telemetry;
use crate::wire::{self, TraceHeaders};

/// What settling a delivery needs: the pipeline, shared by every session,
/// and this broker session's publisher and leases.
pub struct JobContext {
    pub pipeline: Arc<Pipeline>,
    pub publisher: Publisher,
    /// Leases on jobs of several parts, on this session's connection.
    pub leases: Leases,
    pub topology: Topology,
    pub limits: RequestLimits,
    /// Who a request belongs to (`tenants.identity`).
    pub tenants: TenantIdentity,
    /// Where `reply_to` may point (`amqp.reply_to_pattern`).
    pub reply_to: ReplyToPatterns,
    /// Request bytes admitted at once (`amqp.max_bytes_in_flight`).
    pub max_bytes_in_flight: u64,
    /// CloudEvents `source` of this process.
    pub event_source: String,
}

/// How often a delivery waiting for its job's lease asks again.
const LEASE_RECHECK: Duration = Duration::from_secs(2);

/// Takes one delivery to a confirmed terminal event or a requeue, and
/// settles it; a job still working when `limit` is reached is handed back.
pub async fn process(
    ctx: &JobContext,
    delivery: Delivery,
    limit: DeliveryLimit,
    lane: usize,
) -> Settlement {
    let started = Instant::now();
    let metrics = &ctx.pipeline.metrics;
    let _in_flight = metrics.job_in_flight();
    // OpenTelemetry messaging conventions for a consumer's processing span.
    let span = info_span!(
        "job",
        "otel.kind" = "consumer",
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = ctx.topology.lane(lane),
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
        cleanup,
        lease,
    } = settle(ctx, &delivery, &producer, &limit, lane)
        .instrument(span.clone())
        .await;
    let ack_result = match settlement {
        Settlement::Ack => Box::pin(delivery.acker.ack(BasicAckOptions::default())).await,
        Settlement::Requeue => {
            Box::pin(tokio::time::sleep(ctx.pipeline.jobs.requeue_delay)).await;
            Box::pin(delivery.acker.reject(REQUEUE)).await
        }
        Settlement::HandOver(reason) => Box::pin(hand_over(ctx, &delivery, reason, lane)).await,
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
                objects,
                parts,
            }) = cleanup.filter(|_| settled)
            {
                // Only after the ack: a crash before it redelivers a job
                // that still has its parts, so nothing is paid twice. A
                // completed job keeps its records (a repeat is answered
                // from storage) but not its intermediate part objects.
                let deleted = Box::pin(
                    ctx.pipeline
                        .checkpoints
                        .delete_part_objects(&job_id, &objects, parts),
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
    // Released once the delivery is settled and its parts cleaned up: a
    // resend waiting for the lease never sees parts about to go.
    if let Some(lease) = lease {
        Box::pin(lease.release()).await;
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

/// What [`settle`] carried out.
struct Settled {
    settlement: Settlement,
    /// The outcome label of a finished job.
    label: Option<&'static str>,
    /// What is deleted once the delivery is acked.
    cleanup: Option<Cleanup>,
    /// The job's lease (a job of several parts), held until then.
    lease: Option<Lease>,
}

/// Admits the delivery, runs its job, publishes the outcome; returns the
/// settlement to carry out.
async fn settle(
    ctx: &JobContext,
    delivery: &Delivery,
    producer: &TraceHeaders,
    limit: &DeliveryLimit,
    lane: usize,
) -> Settled {
    let props = &delivery.properties;
    let jobs = &ctx.pipeline.jobs;
    let facts = DeliveryFacts {
        attempt: Attempt {
            number: broker::delivery_count(props).saturating_add(1),
            pauses: broker::pause_count(props),
        },
        deferred_since: broker::deferred_since(props),
        now_ms: epoch_millis(),
    };
    let attempt = facts.attempt;
    let message_id = props.message_id().as_ref().map(|m| m.as_str());
    let mut decoded = wire::decode_request(&delivery.data, message_id, &ctx.limits);
    // With tenants, the job is the tenant's: every key it is known by is in
    // the tenant's namespace from here on.
    let tenancy = tenant_of(ctx.tenants, props.user_id().as_ref().map(|u| u.as_str()));
    if let Ok(Some(tenant)) = &tenancy {
        decoded.job_id = decoded.job_id.within(tenant);
        if let Ok(job) = &mut decoded.job {
            job.id = decoded.job_id.clone();
        }
    }
    // Its submissions are shared by its lane and its tenant.
    if let Ok(job) = &mut decoded.job {
        let tenant = tenancy.as_ref().ok().and_then(Option::as_ref);
        job.flow = Flow::of(lane, &job.id, tenant, job.metadata.as_ref());
    }
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
    let refused = |failure: Failure| {
        Ending::Refused(Box::new(Outcome::Failed(Failed {
            job_id: decoded.job_id.clone(),
            failure,
            request_id: None,
            attempts: attempt.number,
            metadata: decoded.metadata.clone(),
        })))
    };
    let mut lease = None;
    let admission = match tenancy {
        Err(failure) => Admission::Reject(failure),
        Ok(_) => admit(&facts, &decoded.job, jobs),
    };
    let ending = match admission {
        Admission::Poison(failure) => {
            warn!(attempt = attempt.number, "dead-lettering a poison message");
            refused(failure)
        }
        Admission::Reject(failure) => {
            warn!(error = %failure.short_message(), "rejecting invalid request");
            refused(failure)
        }
        Admission::Expire(failure) => {
            warn!(error = %failure.short_message(), "no replica took a request of a newer version in time; dead-lettering it");
            refused(failure)
        }
        Admission::HandBack { hold } => {
            info!(
                hold_ms = hold.as_millis() as u64,
                "handing a request of a newer version back for a newer replica"
            );
            // Held a moment, so replicas that all know too little do not
            // pass it around in a tight loop; longer the longer no replica
            // has taken it.
            Box::pin(async {
                tokio::select! {
                    () = tokio::time::sleep(jittered(hold, &mut rand::rng())) => {}
                    () = ctx.pipeline.handover_requested() => {}
                }
            })
            .await;
            Ending::HandedBack(HandOverReason::NewerVersion)
        }
        Admission::Run(job) => {
            let (end, held) = Box::pin(run_leased(ctx, job, attempt, limit)).await;
            lease = held;
            Ending::Ran(end)
        }
    };
    // Carried out in its own (boxed) future: the event and its publishing
    // are large, and every running job's task would otherwise carry them.
    Box::pin(carry_out(ctx, delivery, producer, ending, lease)).await
}

/// Concludes a delivery's `ending` and carries the conclusion out up to
/// the settlement: publishes its event (and dead letter), counts a requeue.
async fn carry_out(
    ctx: &JobContext,
    delivery: &Delivery,
    producer: &TraceHeaders,
    ending: Ending,
    lease: Option<Lease>,
) -> Settled {
    let props = &delivery.properties;
    let span = Span::current();
    let Conclusion {
        event,
        settlement,
        cleanup,
        requeue_reason,
    } = conclude(ending);
    if let Some(reason) = requeue_reason {
        ctx.pipeline
            .metrics
            .requeues
            .with_label_values(&[reason.as_str()])
            .inc();
        info!(
            reason = reason.as_str(),
            "requeueing the job for a later delivery"
        );
    }
    let Some((outcome, dead_letter)) = event else {
        return Settled {
            settlement,
            label: None,
            cleanup: None,
            lease,
        };
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
            info!(outcome = label, "job finished");
            Settled {
                settlement,
                label: Some(label),
                cleanup,
                lease,
            }
        }
        Err(e) => {
            error!(error = %e, "could not publish the terminal event; requeueing");
            ctx.pipeline
                .metrics
                .requeues
                .with_label_values(&["publish_failed"])
                .inc();
            Settled {
                settlement: Settlement::Requeue,
                label: None,
                cleanup: None,
                lease,
            }
        }
    }
}

/// Runs a valid job; one of several parts under its lease, so that one
/// delivery at a time works on it across the fleet (see
/// [`broker::Leases`]): a second delivery waits for the lease within its
/// own lifetime, then hands itself back. Returns the lease, held until the
/// delivery is settled. A one-part job is not leased: two deliveries of it
/// on two replicas at the same moment may both pay it.
async fn run_leased(
    ctx: &JobContext,
    job: &TtsJob,
    attempt: Attempt,
    limit: &DeliveryLimit,
) -> (JobEnd, Option<Lease>) {
    if !ctx.pipeline.is_long(job) {
        return (ctx.pipeline.run_delivery(job, attempt, limit).await, None);
    }
    let mut waiting = false;
    let lease = loop {
        // Boxed: a short job, which never leases, does not carry the
        // declaration's state.
        match Box::pin(ctx.leases.acquire(job.id.as_str())).await {
            Ok(lease) => break Some(lease),
            Err(LeaseError::Held) => {
                if !waiting {
                    info!("another delivery holds this job's lease; waiting for it");
                    waiting = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(jittered(LEASE_RECHECK, &mut rand::rng())) => {}
                    reason = ctx.pipeline.until_hand_over(limit) => return (JobEnd::HandOver(reason), None),
                }
            }
            Err(LeaseError::Broker(e)) => {
                warn!(error = %e, "could not take the job's lease; running without it");
                break None;
            }
        }
    };
    let run = ctx.pipeline.run_delivery(job, attempt, limit);
    let end = tokio::select! {
        end = run => end,
        never = Box::pin(report_progress(ctx, job)) => match never {},
    };
    (end, lease)
}

/// Publishes the progress of `job` (of several parts) every
/// `jobs.progress_interval` while it runs, when it changed; never returns
/// (dropped with the run).
async fn report_progress(ctx: &JobContext, job: &TtsJob) -> std::convert::Infallible {
    let every = ctx.pipeline.jobs.progress_interval;
    let trace = telemetry::traceparent_of(&Span::current(), &TraceHeaders::default());
    let mut last = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(now) = ctx.pipeline.progress_of(&job.id) else {
            continue;
        };
        if last == Some(now) {
            continue;
        }
        match publish_progress(ctx, job, &now, &trace).await {
            Ok(()) => last = Some(now),
            Err(e) => warn!(error = %e, "could not publish the job's progress"),
        }
    }
}

/// Now, in milliseconds since the Unix epoch.
fn epoch_millis() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// A counted return: `basic.reject` raises `x-delivery-count` on RabbitMQ
/// 3.10, 4.0 and 4.3 alike (4.3 no longer counts `basic.nack`).
/// An uncounted return on RabbitMQ 4.3+ (counted on 3.10 and 4.0, which
/// never cancel a consumer for a timeout).
const UNCOUNTED_ON_4_3: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

pub const REQUEUE: BasicRejectOptions = BasicRejectOptions { requeue: true };

/// Gives `delivery` back to its lane's queue without counting it toward the poison
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
    lane: usize,
) -> Result<bool, lapin::Error> {
    if reason == HandOverReason::ConsumerCancelled {
        // Only RabbitMQ 4.3+ cancels a consumer for a consumer timeout, and
        // there `nack(requeue)` is an uncounted return. The delivery that
        // timed out is already back in the queue (its nack is ignored): a
        // copy would deliver the job twice.
        ctx.pipeline
            .metrics
            .handovers
            .with_label_values(&[reason.as_str()])
            .inc();
        return delivery.acker.nack(UNCOUNTED_ON_4_3).await;
    }
    let counted = broker::delivery_count(&delivery.properties);
    let pauses = broker::pause_count(&delivery.properties)
        + u32::from(reason == HandOverReason::Paused { caused: true });
    // The first hand-back dates the request (see `deferral_start`).
    let deferred_since = (reason == HandOverReason::NewerVersion)
        .then(|| deferral_start(broker::deferred_since(&delivery.properties), epoch_millis()));
    let properties = broker::handover_properties(
        &broker::republishable(&delivery.properties, ctx.tenants == TenantIdentity::UserId),
        counted,
        pauses,
        deferred_since,
    );
    let copied = ctx
        .publisher
        .publish(
            "",
            ctx.topology.lane(lane),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<'a, A: 'a, B, C, F>(_: impl Fn(&'a A, B, C, usize) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size4<'a, A: 'a, B: 'a, C: 'a, D: 'a, F>(
        _: impl Fn(&'a A, &'a B, &'a C, &'a D, usize) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_jobs_task_is_small_while_its_job_waits() {
        fn leased_size<'a, F>(
            _: impl Fn(&'a JobContext, &'a TtsJob, Attempt, &'a DeliveryLimit) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let process = future_size::<JobContext, Delivery, DeliveryLimit, _>(process);
        let settle = future_size4::<JobContext, Delivery, TraceHeaders, DeliveryLimit, _>(settle);
        let leased = leased_size(run_leased);
        println!("a job's task: {process} bytes; settle: {settle}; run_leased: {leased}");
        // Every job holds its task, thousands at once when a backlog
        // arrives: 1,896 bytes measured, its conclusion and publishing boxed.
        assert!(process <= 2048, "a job's task is {process} bytes");
    }
}
