//! RabbitMQ: connection, topology, confirmed publishing, queue depth.
//!
//! AMQP choices, and why:
//! - Requests live in a durable **quorum** queue: replicated, and it counts
//!   deliveries (`x-delivery-count`), which tells a job its attempt number.
//!   Its delivery limit and dead-letter target are declared explicitly
//!   (`x-delivery-limit`, `x-dead-letter-*`): RabbitMQ 4 gives quorum queues a
//!   default limit of 20 and *drops* messages past it when no target is set,
//!   3.10 has no default; declared, both versions behave alike.
//! - A delivery the worker gives back because of the job (a transient
//!   failure) is requeued with `basic.reject(requeue=true)`, which raises the
//!   quorum queue's `x-delivery-count` on every supported version. RabbitMQ
//!   4.3 no longer counts `basic.nack(requeue=true)` (only a new
//!   `x-acquired-count` grows), so a nack would requeue a failing job forever
//!   and the queue's `x-delivery-limit` would never fire.
//! - A delivery the worker hands back without it being the job's fault
//!   (shutdown, an account-level pause) is republished, confirmed, then
//!   acked, carrying the count of deliveries that did count in
//!   [`COUNTED_DELIVERIES_HEADER`]. Simpler on 4.3 alone (a nack no longer
//!   counts there), but on 3.10 and 4.0 any return counts; the republish is
//!   uncounted on all three.
//! - Consumption uses manual acks with a prefetch (`basic.qos`) equal to the
//!   worker's in-flight bound, so the broker never hands one process more
//!   unacked jobs than it runs (AMQP 0-9-1 §1.8.3.13, basic.qos).
//! - Every publish is confirmed (`confirm.select`, RabbitMQ publisher
//!   confirms): a terminal event or dead-letter copy counts as sent only once
//!   the broker has taken responsibility for it. Events are published
//!   `mandatory`, so an event no queue would receive comes back as an error
//!   instead of vanishing.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use crate::config::{AmqpSettings, Settings};

mod lease;

pub use lease::{Lease, LeaseError, Leases};

/// Bindings of the default events queue: every terminal event (tenants'
/// too), not progress events (a consumer follows those on a queue of its
/// own, bound to `tts.job.progress.#`).
pub const EVENTS_BINDINGS: [&str; 3] = [
    "tts.job.completed.#",
    "tts.job.failed.#",
    "tts.job.cancelled.#",
];

/// The default events queue's binding before progress events existed; it
/// would have them pile up in a queue nobody reads for them.
const LEGACY_EVENTS_BINDING: &str = "tts.job.#";

/// Header of a handed-over copy: the deliveries of the original that counted
/// toward the poison limit (the broker's count restarts with the copy).
pub const COUNTED_DELIVERIES_HEADER: &str = "tts-counted-deliveries";

/// Header of a handed-over copy: the pauses this message has caused (see
/// `jobs.max_pause_cycles`).
pub const PAUSES_HEADER: &str = "tts-pause-cycles";

/// Header of a request handed back because its version is newer than the
/// replica knew: when that first happened, in milliseconds since the Unix
/// epoch (see `jobs.unsupported_version_grace`). Kept by later hand-overs.
pub const DEFERRED_SINCE_HEADER: &str = "tts-deferred-since";

/// The broker's own count of a message's earlier deliveries that counted
/// (reject with requeue, a closed channel; on 3.10 and 4.0 a nack too).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// RabbitMQ 4.3+: every earlier hand-out of the message, returns of any kind
/// included.
const ACQUIRED_COUNT_HEADER: &str = "x-acquired-count";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not connect to the broker within {0:?}")]
    ConnectTimeout(Duration),
    /// Shown in the message rather than as a source: log lines print errors
    /// with `Display`, and lapin's own error already carries its cause.
    #[error("AMQP error: {0}")]
    Amqp(lapin::Error),
    #[error("the broker refused (nacked) the message")]
    Nacked,
    #[error(
        "no queue is bound to receive the message (exchange {exchange:?}, routing key {routing_key:?})"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker did not confirm the message within {0:?}")]
    ConfirmTimeout(Duration),
    #[error(
        "tenants.identity = \"user_id\" needs the worker's RabbitMQ user to have the `impersonator` tag \
         (rabbitmqctl set_user_tags <user> ... impersonator): a handed-over or dead-lettered request keeps its \
         producer's user_id, which RabbitMQ refuses from another user without it"
    )]
    NoImpersonation,
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::Amqp(e)
    }
}

/// Names of everything the worker declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub requests_queue: String,
    /// Every lane's queue (`amqp.lanes`), `requests_queue` among them; a
    /// delivery's lane is its index here.
    pub lanes: Vec<String>,
    pub events_exchange: String,
    pub events_queue: Option<String>,
    pub dead_letter_queue: String,
    /// The broker's delivery limit on the requests queue (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// The fleet's stream, its control exchange and retention (hours), if
    /// any (`[fleet]`).
    pub fleet: Option<(String, String, u32)>,
}

impl Topology {
    /// The queue of `lane` (the requests queue for an index it does not
    /// know).
    pub fn lane(&self, lane: usize) -> &str {
        self.lanes.get(lane).unwrap_or(&self.requests_queue)
    }

    /// Whether `queue` is one of the worker's own: the requests, events and
    /// dead-letter queues, or a job's lease.
    pub fn owns(&self, queue: &str) -> bool {
        queue == self.requests_queue
            || self.lanes.iter().any(|l| l == queue)
            || queue == self.dead_letter_queue
            || self.events_queue.as_deref() == Some(queue)
            || self
                .fleet
                .as_ref()
                .is_some_and(|(stream, _, _)| stream == queue)
            || lease::is_lease_queue(&self.requests_queue, queue)
    }

    /// The topology of `amqp`, for a worker that dead-letters a message itself
    /// after `max_deliveries`. The broker's limit is one higher, so the worker
    /// always gets the delivery on which it publishes the `poison` failure
    /// event; the broker's own dead-lettering is the backstop for a message
    /// that kills the process every time.
    pub fn new(amqp: &AmqpSettings, max_deliveries: u32) -> Self {
        Topology {
            requests_queue: amqp.requests_queue.clone(),
            lanes: amqp.lanes.iter().map(|l| l.queue.clone()).collect(),
            events_exchange: amqp.events_exchange.clone(),
            events_queue: amqp.events_queue.clone(),
            dead_letter_queue: amqp.dead_letter_queue.clone(),
            delivery_limit: max_deliveries.saturating_add(1),
            fleet: None,
        }
    }
}

impl From<&Settings> for Topology {
    fn from(s: &Settings) -> Self {
        let mut topology = Topology::new(&s.amqp, s.jobs.max_deliveries);
        topology.fleet = s.fleet.stream.clone().map(|stream| {
            (
                stream,
                s.fleet.control_exchange.clone(),
                s.fleet.retention_hours,
            )
        });
        topology
    }
}

/// Connects with a timeout and a connection name shown in the management UI.
pub async fn connect(
    url: &SecretString,
    timeout: Duration,
    name: &str,
) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    tokio::time::timeout(
        timeout,
        Connection::connect(url.expose_secret(), properties),
    )
    .await
    .map_err(|_| BrokerError::ConnectTimeout(timeout))?
    .map_err(BrokerError::from)
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// The requests queue: quorum, with the delivery limit and its dead-letter
/// target spelled out (see the module docs).
fn requests_args(topology: &Topology) -> FieldTable {
    let mut args = quorum_args();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(topology.dead_letter_queue.as_str().into()),
    );
    args
}

/// Declares the topology, on a channel of its own. Idempotent: declaring
/// what exists with the same arguments is a no-op, so every replica (and
/// `submit`) may call it.
///
/// A requests queue declared earlier with other arguments (by a version that
/// did not set the delivery limit, or with another `max_deliveries`) is used
/// as it is, with a warning: failing would stop every replica of an upgraded
/// fleet. The operator sets the limit by policy or deletes the empty queue.
pub async fn declare(connection: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    let durable = QueueDeclareOptions::durable();
    let mut channel = connection.create_channel().await?;
    // Every lane is a requests queue, the delivery limit and dead-letter
    // target spelled out the same.
    let lanes = std::iter::once(&topology.requests_queue).chain(
        topology
            .lanes
            .iter()
            .filter(|l| **l != topology.requests_queue),
    );
    for requests in lanes {
        let requests = requests.as_str();
        match channel
            .queue_declare(requests.into(), durable, requests_args(topology))
            .await
        {
            Ok(_) => {}
            Err(e) if is_precondition_failed(&e) => {
                tracing::warn!(
                    queue = requests,
                    error = %e,
                    "the requests queue exists with other arguments; using it as it is. Its delivery limit and dead-letter target may differ from jobs.max_deliveries: set them by policy, or delete the queue when it is empty"
                );
                // The broker closed that channel.
                channel = connection.create_channel().await?;
                channel
                    .queue_declare(requests.into(), durable.passive(), FieldTable::default())
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            durable,
            quorum_args(),
        )
        .await?;
    channel
        .exchange_declare(
            topology.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if let Some(events_queue) = &topology.events_queue {
        channel
            .queue_declare(events_queue.as_str().into(), durable, quorum_args())
            .await?;
        for binding in EVENTS_BINDINGS {
            channel
                .queue_bind(
                    events_queue.as_str().into(),
                    topology.events_exchange.as_str().into(),
                    binding.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        // Removing a binding that does not exist is a no-op for RabbitMQ.
        channel
            .queue_unbind(
                events_queue.as_str().into(),
                topology.events_exchange.as_str().into(),
                LEGACY_EVENTS_BINDING.into(),
                FieldTable::default(),
            )
            .await?;
    }
    if let Some((stream, control, hours)) = &topology.fleet {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{hours}h").into()),
        );
        channel
            .queue_declare(stream.as_str().into(), durable, args)
            .await?;
        channel
            .exchange_declare(
                control.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                stream.as_str().into(),
                control.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    // Best effort: the connection's end closes it anyway.
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// The broker refused a declaration whose arguments differ from the
/// existing object's (AMQP 406 PRECONDITION_FAILED).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// Messages ready in `queue` (not counting unacked ones), via a passive declare.
/// A missing queue closes the channel, so use a channel dedicated to this.
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, BrokerError> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// How often [`closed`] looks at a channel's state.
const CHANNEL_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves once `channel` is closed (by us, by the broker on a channel
/// error, or with its connection).
pub async fn closed(channel: &Channel) {
    while channel.status().connected() {
        tokio::time::sleep(CHANNEL_CHECK_INTERVAL).await;
    }
}

/// Publishes with publisher confirms on one channel shared by every task.
///
/// The broker closes a channel on some errors (publishing to an exchange that
/// was deleted, for one) while the connection stays up. A closed publishing
/// channel makes every job fail to settle, so the session must end:
/// [`Publisher::closed`] resolves when that happens.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

impl Publisher {
    /// Puts `channel` in confirm mode.
    pub async fn new(channel: Channel, timeout: Duration) -> Result<Self, BrokerError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel, timeout })
    }

    /// Resolves once the publishing channel is closed.
    pub async fn closed(&self) {
        closed(&self.channel).await
    }

    /// Publishes and waits for the broker's confirmation. With `mandatory`, a
    /// message no queue receives is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        // The default exchange routes to the queue the key names.
        let destination = if exchange.is_empty() {
            routing_key
        } else {
            exchange
        };
        let span = tracing::info_span!(
            "amqp.publish",
            "otel.name" = %format_args!("publish {destination}"),
            "otel.kind" = "producer",
            "messaging.system" = "rabbitmq",
            "messaging.operation.type" = "send",
            "messaging.destination.name" = destination,
            "messaging.rabbitmq.destination.routing_key" = routing_key,
        );
        async move {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?;
            let confirmation = tokio::time::timeout(self.timeout, confirm)
                .await
                .map_err(|_| BrokerError::ConfirmTimeout(self.timeout))??;
            match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                }),
                Confirmation::Nack(_) => Err(BrokerError::Nacked),
            }
        }
        .instrument(span)
        .await
    }
}

/// Reads a string header of a message.
pub fn header_str<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The number of earlier deliveries of a message that count toward the
/// poison limit: the quorum queue's `x-delivery-count` (0 on 3.10's first
/// delivery, absent on 4.0's) plus, for a handed-over copy, the deliveries of
/// the original that counted ([`COUNTED_DELIVERIES_HEADER`]).
pub fn delivery_count(properties: &BasicProperties) -> u32 {
    header_u32(properties, DELIVERY_COUNT_HEADER)
        .saturating_add(header_u32(properties, COUNTED_DELIVERIES_HEADER))
}

/// The pauses this message has caused ([`PAUSES_HEADER`]).
pub fn pause_count(properties: &BasicProperties) -> u32 {
    header_u32(properties, PAUSES_HEADER)
}

/// Every earlier hand-out of this message as the broker counts them
/// (`x-acquired-count`, RabbitMQ 4.3+); `None` on brokers that do not say.
/// For logs: it includes uncounted returns, so it never decides anything.
pub fn acquired_count(properties: &BasicProperties) -> Option<u32> {
    properties
        .headers()
        .as_ref()?
        .inner()
        .contains_key(ACQUIRED_COUNT_HEADER)
        .then(|| header_u32(properties, ACQUIRED_COUNT_HEADER))
}

/// When this request was first handed back for a newer replica
/// ([`DEFERRED_SINCE_HEADER`], ms since the epoch); `None` before that.
pub fn deferred_since(properties: &BasicProperties) -> Option<u64> {
    header_u64(properties, DEFERRED_SINCE_HEADER)
}

/// `properties` without the headers the worker sets on its own copies
/// ([`COUNTED_DELIVERIES_HEADER`], [`PAUSES_HEADER`],
/// [`DEFERRED_SINCE_HEADER`]).
pub fn without_worker_headers(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in properties.headers().iter().flat_map(|h| h.inner()) {
        if ![
            COUNTED_DELIVERIES_HEADER,
            PAUSES_HEADER,
            DEFERRED_SINCE_HEADER,
        ]
        .contains(&k.as_str())
        {
            headers.insert(k.clone(), v.clone());
        }
    }
    properties.clone().with_headers(headers)
}

/// `properties` as the worker may republish them (a hand-over, a
/// dead-letter copy): the producer's `user_id` only when `keep_user_id`.
/// RabbitMQ refuses a `user_id` other than the publishing connection's user
/// (it closes the channel, 406) unless that user has the `impersonator` tag:
/// with tenants the worker's user must have it ([`check_impersonation`]) so
/// a handed-over request keeps its tenant; without tenants the property is
/// dropped.
pub fn republishable(properties: &BasicProperties, keep_user_id: bool) -> BasicProperties {
    if keep_user_id || properties.user_id().is_none() {
        return properties.clone();
    }
    let p = properties;
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $with:ident),* $(,)?) => {
            $(if let Some(v) = p.$get() {
                out = out.$with(v.clone());
            })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        expiration => with_expiration,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    out
}

/// Checks that the connection's user may publish with another user's
/// `user_id` (RabbitMQ's `impersonator` tag), which tenants need: a
/// request handed over or dead-lettered keeps its producer's identity. A
/// probe message with a foreign `user_id`, to no queue: the broker closes
/// the probe's channel if the user may not.
pub async fn check_impersonation(connection: &Connection) -> Result<(), BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let published = async {
        channel
            .basic_publish(
                "".into(),
                "tts-worker.impersonation-check".into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default().with_user_id("tts-worker-impersonation-check".into()),
            )
            .await?
            .await
    };
    let confirm = tokio::time::timeout(Duration::from_secs(10), published).await;
    let open = channel.status().connected();
    if open {
        let _ = channel.close(200, "impersonation checked".into()).await;
    }
    match confirm {
        Ok(Ok(confirmation)) if open && confirmation.is_ack() => Ok(()),
        Err(_) => Err(BrokerError::ConfirmTimeout(Duration::from_secs(10))),
        _ => Err(BrokerError::NoImpersonation),
    }
}

fn header_u32(properties: &BasicProperties, name: &str) -> u32 {
    header_u64(properties, name).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A whole-number header (negative and unreadable values read as 0).
fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    table_u64(properties.headers().as_ref()?, name)
}

fn table_u64(headers: &FieldTable, name: &str) -> Option<u64> {
    let value = headers.inner().get(name)?;
    Some(match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).unwrap_or(0),
        AMQPValue::LongInt(n) => u64::try_from(*n).unwrap_or(0),
        AMQPValue::LongUInt(n) => u64::from(*n),
        AMQPValue::ShortInt(n) => u64::try_from(*n).unwrap_or(0),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).unwrap_or(0),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    })
}

/// The properties of a handed-over copy of a delivery with `properties`:
/// everything kept (message id, correlation id, reply-to, trace context,
/// headers) but the broker's counts, which become
/// [`COUNTED_DELIVERIES_HEADER`] = `counted`, and [`PAUSES_HEADER`] = `pauses`
/// (when not 0); [`DEFERRED_SINCE_HEADER`] is set to `deferred_since` when
/// given and the message has none yet or a later one.
pub fn handover_properties(
    properties: &BasicProperties,
    counted: u32,
    pauses: u32,
    deferred_since: Option<u64>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    let replaced = [
        DELIVERY_COUNT_HEADER,
        ACQUIRED_COUNT_HEADER,
        COUNTED_DELIVERIES_HEADER,
        PAUSES_HEADER,
    ];
    for (k, v) in properties.headers().iter().flat_map(|h| h.inner()) {
        if !replaced.contains(&k.as_str()) {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers.insert(
        COUNTED_DELIVERIES_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(counted)),
    );
    if pauses > 0 {
        headers.insert(
            PAUSES_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(pauses)),
        );
    }
    if let Some(since) = deferred_since {
        if table_u64(&headers, DEFERRED_SINCE_HEADER).is_none_or(|kept| kept > since) {
            headers.insert(
                DEFERRED_SINCE_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(since).unwrap_or(i64::MAX)),
            );
        }
    }
    properties.clone().with_headers(headers)
}

/// Returns `properties` with extra string headers added.
pub fn with_headers(properties: BasicProperties, extra: &[(&str, &str)]) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(*v)),
        );
    }
    properties.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_own_queues_are_known_whatever_their_form() {
        let t = Topology {
            requests_queue: "tts.requests".into(),
            lanes: vec!["tts.requests".into(), "tts.requests.bulk".into()],
            events_exchange: "tts.events".into(),
            events_queue: Some("tts.events".into()),
            dead_letter_queue: "tts.requests.dead".into(),
            delivery_limit: 6,
            fleet: Some(("tts.fleet".into(), "tts.control".into(), 48)),
        };
        for own in [
            "tts.requests",
            "tts.requests.bulk",
            "tts.fleet",
            "tts.events",
            "tts.requests.dead",
            "tts.requests.lease.alice/order-7",
            "tts.lease.9f86d081884c7d659a2feaa0c55ad015",
        ] {
            assert!(t.owns(own), "{own}");
        }
        for other in [
            "amq.gen-1",
            "alice.replies",
            "tts.requestsx",
            "tts.events.alice",
        ] {
            assert!(!t.owns(other), "{other}");
        }
    }

    #[test]
    fn a_republished_copy_keeps_the_producers_user_id_only_when_asked() {
        let original = BasicProperties::default()
            .with_user_id("orders".into())
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_reply_to("amq.gen-1".into())
            .with_delivery_mode(2)
            .with_headers(FieldTable::from(std::collections::BTreeMap::from([(
                ShortString::from("traceparent"),
                AMQPValue::LongString(LongString::from("00-1-2-01")),
            )])));
        let dropped = republishable(&original, false);
        assert_eq!(dropped.user_id(), &None);
        assert_eq!(dropped.message_id(), original.message_id());
        assert_eq!(dropped.correlation_id(), original.correlation_id());
        assert_eq!(dropped.reply_to(), original.reply_to());
        assert_eq!(dropped.delivery_mode(), original.delivery_mode());
        assert_eq!(dropped.headers(), original.headers());
        assert_eq!(republishable(&original, true), original);
    }

    fn with_count(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn the_first_delivery_counts_zero_on_both_broker_versions() {
        // RabbitMQ 4.0: no header on the first delivery; 3.10: 0.
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        let v310 = with_count(&[("x-delivery-count", AMQPValue::LongLongInt(0))]);
        assert_eq!(delivery_count(&v310), 0);
        let third = with_count(&[("x-delivery-count", AMQPValue::LongLongInt(2))]);
        assert_eq!(delivery_count(&third), 2);
    }

    #[test]
    fn a_handed_over_copy_keeps_the_counted_deliveries_and_drops_the_brokers_count() {
        let original = with_count(&[
            ("x-delivery-count", AMQPValue::LongLongInt(3)),
            ("traceparent", AMQPValue::LongString("00-abc-def-01".into())),
        ])
        .with_message_id("m-1".into())
        .with_correlation_id("c-1".into());
        let counted = delivery_count(&original);
        let copy = handover_properties(&original, counted, 0, None);
        assert_eq!(pause_count(&copy), 0);
        assert_eq!(delivery_count(&copy), 3, "the copy's first delivery");
        // Redelivered twice more by the broker: 3 + 2.
        let mut headers = copy.headers().clone().unwrap_or_default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        assert_eq!(delivery_count(&copy.clone().with_headers(headers)), 5);
        // Handed over again: the count does not grow.
        assert_eq!(delivery_count(&handover_properties(&copy, 3, 0, None)), 3);
        // Handed over by a pause this message caused: its own pause count grows.
        let paused = handover_properties(&copy, 3, pause_count(&copy) + 1, None);
        assert_eq!((delivery_count(&paused), pause_count(&paused)), (3, 1));
        let again = handover_properties(&paused, 3, pause_count(&paused) + 1, None);
        assert_eq!(pause_count(&again), 2);
        assert_eq!(header_str(&copy, "traceparent"), Some("00-abc-def-01"));
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(
            copy.correlation_id().as_ref().map(|m| m.as_str()),
            Some("c-1")
        );
    }

    #[test]
    fn the_first_hand_back_for_a_newer_replica_dates_every_later_copy() {
        let original = BasicProperties::default();
        assert_eq!(deferred_since(&original), None);
        let first = handover_properties(&original, 0, 0, Some(1_000));
        assert_eq!(deferred_since(&first), Some(1_000));
        // Later hand-backs (and a shutdown's) keep the first date.
        let later = handover_properties(&first, 0, 0, Some(9_000));
        assert_eq!(deferred_since(&later), Some(1_000));
        let shutdown = handover_properties(&later, 2, 0, None);
        assert_eq!(deferred_since(&shutdown), Some(1_000));
        // A date in the future (a skewed clock, a producer's header) gives way.
        let future = handover_properties(&original, 0, 0, Some(50_000));
        assert_eq!(
            deferred_since(&handover_properties(&future, 0, 0, Some(2_000))),
            Some(2_000)
        );
        // A dead-letter copy sent again starts afresh.
        let fresh = without_worker_headers(&handover_properties(&shutdown, 2, 1, None));
        assert_eq!(
            (
                delivery_count(&fresh),
                pause_count(&fresh),
                deferred_since(&fresh)
            ),
            (0, 0, None)
        );
    }

    #[test]
    fn rabbitmq_43s_acquired_count_is_read_but_never_counts_toward_poison() {
        assert_eq!(acquired_count(&BasicProperties::default()), None);
        let v43 = with_count(&[
            ("x-acquired-count", AMQPValue::LongLongInt(5)),
            ("x-delivery-count", AMQPValue::LongLongInt(1)),
        ]);
        assert_eq!(acquired_count(&v43), Some(5));
        assert_eq!(delivery_count(&v43), 1);
        let copy = handover_properties(&v43, 1, 0, None);
        assert_eq!(acquired_count(&copy), None, "the copy starts its own count");
    }

    #[test]
    fn the_broker_gives_the_worker_its_poison_delivery() {
        let amqp = crate::config::Settings::load_from(None, &[])
            .map(|s| s.amqp)
            .expect("default settings");
        let topology = Topology::new(&amqp, 5);
        assert_eq!(topology.delivery_limit, 6);
        let args = requests_args(&topology);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(6)));
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString(
                amqp.dead_letter_queue.as_str().into()
            ))
        );
    }
}
