//! `[amqp]`: the broker, its queues and the in-flight bound.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, invalid, queue_name, seconds};

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Broker URL; it may hold a password, so it is kept secret.
    pub url: SecretString,
    pub requests_queue: String,
    pub events_exchange: String,
    /// `None` when no default events queue is to be declared.
    pub events_queue: Option<String>,
    pub dead_letter_queue: String,
    /// Bound on in-flight jobs; also the AMQP prefetch count.
    pub max_in_flight: u16,
    pub queue_depth_interval: Duration,
    pub connect_timeout: Duration,
    pub publish_timeout: Duration,
    /// The broker's consumer timeout, as stated (see `jobs.delivery_lifetime`).
    pub consumer_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAmqp {
    pub(super) url: String,
    pub(super) requests_queue: String,
    pub(super) events_exchange: String,
    pub(super) events_queue: String,
    pub(super) dead_letter_queue: String,
    pub(super) max_in_flight: u32,
    pub(super) queue_depth_interval: f64,
    pub(super) connect_timeout: f64,
    pub(super) publish_timeout: f64,
    pub(super) consumer_timeout: f64,
}

impl RawAmqp {
    pub(super) fn validate(self) -> Result<AmqpSettings, ConfigError> {
        let scheme_ok = self.url.starts_with("amqp://") || self.url.starts_with("amqps://");
        if !scheme_ok || self.url.parse::<lapin::uri::AMQPUri>().is_err() {
            // Do not echo the URL: it may contain a password.
            return Err(invalid(
                "amqp.url",
                "must be an amqp:// or amqps:// URL (amqp://user:pass@host:port/vhost)",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > u32::from(u16::MAX) {
            return Err(invalid(
                "amqp.max_in_flight",
                format!("must be between 1 and 65535, got {}", self.max_in_flight),
            ));
        }
        let events_queue = if self.events_queue.is_empty() {
            None
        } else {
            Some(queue_name("amqp.events_queue", self.events_queue)?)
        };
        Ok(AmqpSettings {
            url: SecretString::from(self.url),
            requests_queue: queue_name("amqp.requests_queue", self.requests_queue)?,
            events_exchange: queue_name("amqp.events_exchange", self.events_exchange)?,
            events_queue,
            dead_letter_queue: queue_name("amqp.dead_letter_queue", self.dead_letter_queue)?,
            max_in_flight: self.max_in_flight as u16,
            queue_depth_interval: seconds("amqp.queue_depth_interval", self.queue_depth_interval)?,
            connect_timeout: seconds("amqp.connect_timeout", self.connect_timeout)?,
            publish_timeout: seconds("amqp.publish_timeout", self.publish_timeout)?,
            consumer_timeout: seconds("amqp.consumer_timeout", self.consumer_timeout)?,
        })
    }
}
