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
    /// Bound on the request bytes admitted at once (`amqp.max_bytes_in_flight`).
    pub max_bytes_in_flight: u64,
    pub queue_depth_interval: Duration,
    pub connect_timeout: Duration,
    pub publish_timeout: Duration,
    /// The broker's consumer timeout, as stated (see `jobs.delivery_lifetime`).
    pub consumer_timeout: Duration,
    /// Where `reply_to` may point (`amqp.reply_to_pattern`).
    pub reply_to: ReplyToPatterns,
    /// The queues requests arrive on, each with its weight (`amqp.lanes`);
    /// the first is `requests_queue`'s lane unless listed otherwise. Never
    /// empty.
    pub lanes: Vec<Lane>,
}

/// A queue requests arrive on and its share of new submissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub queue: String,
    /// Relative share of the submission slots while other lanes wait too
    /// (1–1000).
    pub weight: u32,
}

/// Parses `name:weight` (or `name`, weight 1) as written in `key`.
pub(super) fn weighted(key: &'static str, entry: &str) -> Result<(String, u32), ConfigError> {
    let entry = entry.trim();
    let (name, weight) = match entry.rsplit_once(':') {
        Some((name, weight)) => {
            let weight = weight
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=1000).contains(w));
            let Some(weight) = weight else {
                return Err(invalid(
                    key,
                    format!(
                        "{entry:?}: the weight after ':' must be a whole number from 1 to 1000"
                    ),
                ));
            };
            (name.trim(), weight)
        }
        None => (entry, 1),
    };
    if name.is_empty() {
        return Err(invalid(
            key,
            format!("{entry:?}: a name is missing before ':'"),
        ));
    }
    Ok((name.to_owned(), weight))
}

/// The queue names a request's `reply_to` may name: `*` matches any run of
/// characters; `{tenant}` stands for the request's tenant (a pattern with
/// it matches nothing for a request without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyToPatterns(Vec<String>);

impl ReplyToPatterns {
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// Whether `queue` may receive the reply of a request of `tenant`.
    pub fn allows(&self, queue: &str, tenant: Option<&str>) -> bool {
        self.0.iter().any(|pattern| {
            if pattern.contains("{tenant}") {
                tenant.is_some_and(|t| glob(&pattern.replace("{tenant}", t), queue))
            } else {
                glob(pattern, queue)
            }
        })
    }
}

/// `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no '*': an exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
    pub(super) max_bytes_in_flight: u64,
    pub(super) queue_depth_interval: f64,
    pub(super) connect_timeout: f64,
    pub(super) publish_timeout: f64,
    pub(super) consumer_timeout: f64,
    pub(super) reply_to_pattern: Vec<String>,
    pub(super) lanes: Vec<String>,
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
        if self.max_bytes_in_flight < 1 << 20 {
            return Err(invalid(
                "amqp.max_bytes_in_flight",
                format!(
                    "must be at least 1 MiB (1048576), got {}",
                    self.max_bytes_in_flight
                ),
            ));
        }
        let events_queue = if self.events_queue.is_empty() {
            None
        } else {
            Some(queue_name("amqp.events_queue", self.events_queue)?)
        };
        let requests_queue = queue_name("amqp.requests_queue", self.requests_queue)?;
        let mut lanes = Vec::new();
        for entry in self.lanes.iter().filter(|e| !e.trim().is_empty()) {
            let (queue, weight) = weighted("amqp.lanes", entry)?;
            let queue = queue_name("amqp.lanes", queue)?;
            if lanes.iter().any(|l: &Lane| l.queue == queue) {
                return Err(invalid("amqp.lanes", format!("{queue:?} is listed twice")));
            }
            lanes.push(Lane { queue, weight });
        }
        if lanes.is_empty() {
            lanes.push(Lane {
                queue: requests_queue.clone(),
                weight: 1,
            });
        } else if !lanes.iter().any(|l| l.queue == requests_queue) {
            return Err(invalid(
                "amqp.lanes",
                format!(
                    "must list amqp.requests_queue ({requests_queue:?}), the lane existing producers publish to"
                ),
            ));
        }
        Ok(AmqpSettings {
            url: SecretString::from(self.url),
            requests_queue,
            lanes,
            events_exchange: queue_name("amqp.events_exchange", self.events_exchange)?,
            events_queue,
            dead_letter_queue: queue_name("amqp.dead_letter_queue", self.dead_letter_queue)?,
            max_in_flight: self.max_in_flight as u16,
            max_bytes_in_flight: self.max_bytes_in_flight,
            queue_depth_interval: seconds("amqp.queue_depth_interval", self.queue_depth_interval)?,
            connect_timeout: seconds("amqp.connect_timeout", self.connect_timeout)?,
            publish_timeout: seconds("amqp.publish_timeout", self.publish_timeout)?,
            consumer_timeout: seconds("amqp.consumer_timeout", self.consumer_timeout)?,
            reply_to: ReplyToPatterns::new(
                self.reply_to_pattern
                    .into_iter()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_to_goes_only_to_server_named_queues_and_the_tenants_own() {
        let p = ReplyToPatterns::new(vec![
            "amq.gen-*".into(),
            "amq.rabbitmq.reply-to*".into(),
            "{tenant}.*".into(),
        ]);
        assert!(p.allows("amq.gen-Xy12", None));
        assert!(p.allows("amq.rabbitmq.reply-to", None));
        assert!(p.allows("amq.rabbitmq.reply-to.g1h2AA==", Some("bob")));
        assert!(p.allows("bob.replies", Some("bob")));
        assert!(
            !p.allows("bob.replies", None),
            "no tenant, no tenant pattern"
        );
        assert!(!p.allows("alice.replies", Some("bob")));
        assert!(!p.allows("tts.events", Some("bob")));
        assert!(!p.allows("bob", Some("bob")));
        assert!(!p.allows("xamq.gen-1", None));
        assert!(glob("a*b*c", "aXXbYYc") && !glob("a*b*c", "aXXc") && glob("abc", "abc"));
        assert!(!glob("a*a", "a"), "the prefix and suffix may not overlap");
    }
}
