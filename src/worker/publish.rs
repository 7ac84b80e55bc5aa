//! Publishing a delivery's outcome with confirmation: the terminal event
//! (plus a courtesy copy to `reply_to`) and the dead-letter copy of the
//! original bytes; the W3C trace context they carry.

use lapin::BasicProperties;
use lapin::message::Delivery;
use tracing::warn;

use super::settle::JobContext;
use crate::broker::{self, BrokerError};
use crate::config::TenantIdentity;
use crate::job::Outcome;
use crate::wire::{
    self, DEAD_LETTER_CODE_HEADER, DEAD_LETTER_JOB_HEADER, DEAD_LETTER_MESSAGE_HEADER,
    TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceHeaders,
};

/// The producer's W3C trace context, from the request's headers.
pub(super) fn trace_headers(properties: &BasicProperties) -> TraceHeaders {
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

/// Publishes a running job's progress (not `mandatory`: no queue need
/// follow progress; confirmed, so a lost channel is noticed).
pub(super) async fn publish_progress(
    ctx: &JobContext,
    job: &crate::job::TtsJob,
    progress: &crate::job::Progress,
    trace: &TraceHeaders,
) -> Result<(), BrokerError> {
    let event = wire::encode_progress(
        &job.id,
        progress,
        job.metadata.as_ref(),
        &ctx.event_source,
        chrono::Utc::now(),
        trace,
    );
    let properties = BasicProperties::default()
        .with_content_type(wire::EVENT_CONTENT_TYPE.into())
        .with_delivery_mode(1)
        .with_message_id(event.id.as_str().into())
        .with_type(event.kind.into())
        .with_app_id("tts-worker".into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    ctx.publisher
        .publish(
            &ctx.topology.events_exchange,
            &event.routing_key,
            &event.body,
            with_trace(properties, trace),
            false,
        )
        .await?;
    ctx.pipeline
        .metrics
        .published
        .with_label_values(&["progress"])
        .inc();
    Ok(())
}

/// Publishes the terminal event, plus a copy to `reply_to` when asked.
pub(super) async fn publish_outcome(
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
        .with_type(event.kind.into())
        .with_app_id("tts-worker".into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    if let Some(correlation_id) = request.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    let properties = with_trace(properties, trace);
    ctx.publisher
        .publish(
            &ctx.topology.events_exchange,
            &event.routing_key,
            &event.body,
            properties.clone(),
            true,
        )
        .await?;
    metrics.published.with_label_values(&["event"]).inc();

    let tenant = outcome.job_id().tenant();
    let reply_to = request.reply_to().as_ref().filter(|queue| {
        // Never the worker's own queues, whatever the patterns allow.
        let allowed =
            !ctx.topology.owns(queue.as_str()) && ctx.reply_to.allows(queue.as_str(), tenant);
        if !allowed {
            warn!(
                reply_to = queue.as_str(),
                "reply_to is not a queue this request may reply to (amqp.reply_to_pattern); the reply is skipped, the event went to the events exchange"
            );
        }
        allowed
    });
    if let Some(reply_to) = reply_to {
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
pub(super) async fn publish_dead_letter(
    ctx: &JobContext,
    delivery: &Delivery,
    outcome: &Outcome,
    trace: &TraceHeaders,
) -> Result<(), BrokerError> {
    let Outcome::Failed(failed) = outcome else {
        return Ok(());
    };
    // Header values are capped: a request can carry huge invalid fields.
    let message = failed.failure.short_message();
    // Without the worker's own hand-over headers: a copy sent again by an
    // operator starts afresh (its deliveries, pauses and deferral uncounted).
    let properties = broker::with_headers(
        with_trace(
            broker::without_worker_headers(&broker::republishable(
                &delivery.properties,
                ctx.tenants == TenantIdentity::UserId,
            )),
            trace,
        ),
        &[
            (DEAD_LETTER_CODE_HEADER, failed.failure.code.as_str()),
            (DEAD_LETTER_MESSAGE_HEADER, message.as_ref()),
            (DEAD_LETTER_JOB_HEADER, failed.job_id.producer()),
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
