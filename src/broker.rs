//! RabbitMQ: connection, topology, confirmed publishing, queue depth.
//!
//! AMQP choices, and why:
//! - Requests live in a durable **quorum** queue: replicated, and it counts
//!   deliveries (`x-delivery-count`), which tells a job its attempt number.
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

use crate::config::AmqpSettings;

/// Binding of the default events queue: every job event.
pub const EVENTS_BINDING: &str = "tts.job.#";

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
    pub events_exchange: String,
    pub events_queue: Option<String>,
    pub dead_letter_queue: String,
}

impl From<&AmqpSettings> for Topology {
    fn from(s: &AmqpSettings) -> Self {
        Topology {
            requests_queue: s.requests_queue.clone(),
            events_exchange: s.events_exchange.clone(),
            events_queue: s.events_queue.clone(),
            dead_letter_queue: s.dead_letter_queue.clone(),
        }
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

/// Declares the topology. Idempotent: declaring what exists with the same
/// arguments is a no-op, so every replica (and `submit`) may call it.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    let durable = QueueDeclareOptions::durable();
    channel
        .queue_declare(
            topology.requests_queue.as_str().into(),
            durable,
            quorum_args(),
        )
        .await?;
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
        channel
            .queue_bind(
                events_queue.as_str().into(),
                topology.events_exchange.as_str().into(),
                EVENTS_BINDING.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
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

/// The number of earlier deliveries of a message, from the quorum queue's
/// `x-delivery-count` header (absent on the first delivery).
pub fn delivery_count(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers().as_ref() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
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
