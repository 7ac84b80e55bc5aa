//! A lease on a job, honoured by every replica: an exclusive queue per job
//! (`{requests_queue}.lease.{job_id}`), declared on the connection of the
//! delivery that works on it. RabbitMQ lets one connection hold an
//! exclusive queue and deletes it when that connection closes, so a lease
//! is released by [`Lease::release`], by a lost connection and by a crash
//! alike — on every broker version and whatever the object store (Garage
//! ignores `If-None-Match`, so a lease object in the bucket would race).
//!
//! Cost: two short-lived channels and two queue operations per leased job.
//! Only jobs of several parts are leased (see README "Long texts"). The
//! broker user needs the `configure` permission on these queue names.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::Connection;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::BrokerError;

/// AMQP's limit on a queue name.
const MAX_QUEUE_NAME: usize = 255;

/// Why a lease was not granted.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another connection (another replica, or this one before it lost its
    /// broker session) holds the job.
    #[error("another delivery holds the job's lease")]
    Held,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Leases taken on one broker connection.
#[derive(Clone)]
pub struct Leases {
    connection: Arc<Connection>,
    prefix: String,
    /// Leases this connection holds, by queue name, with their holders: two
    /// deliveries of one job on this replica share the queue (the broker
    /// grants an exclusive queue to its own connection again), and only the
    /// last release deletes it. Held across the declaration and the
    /// deletion, so neither races the other.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// A job held by this connection until released, dropped (released in the
/// background) or the connection dies.
pub struct Lease {
    leases: Leases,
    name: Option<String>,
}

impl Leases {
    pub fn new(connection: Arc<Connection>, requests_queue: &str) -> Self {
        Leases {
            connection,
            prefix: format!("{requests_queue}.lease."),
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes the lease of `job_id`, or says another connection holds it.
    pub async fn acquire(&self, job_id: &str) -> Result<Lease, LeaseError> {
        let name = lease_name(&self.prefix, job_id);
        let mut held = self.held.lock().await;
        if let Some(holders) = held.get_mut(&name) {
            *holders += 1;
            return Ok(self.lease(name));
        }
        // A refused declaration closes its channel: one channel per attempt.
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::from)?;
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    durable: false,
                    auto_delete: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                // The queue belongs to the connection, not the channel.
                let _ = channel.close(200, "leased".into()).await;
                held.insert(name.clone(), 1);
                Ok(self.lease(name))
            }
            Err(e) if is_resource_locked(&e) => Err(LeaseError::Held),
            Err(e) => {
                let _ = channel.close(200, "lease failed".into()).await;
                Err(BrokerError::from(e).into())
            }
        }
    }

    fn lease(&self, name: String) -> Lease {
        Lease {
            leases: self.clone(),
            name: Some(name),
        }
    }

    /// Drops one holder of `name`; the last one deletes the queue.
    async fn release(&self, name: String) {
        let mut held = self.held.lock().await;
        let last = match held.get_mut(&name) {
            Some(holders) if *holders > 1 => {
                *holders -= 1;
                false
            }
            _ => true,
        };
        if !last {
            return;
        }
        held.remove(&name);
        if let Ok(channel) = self.connection.create_channel().await {
            if let Err(e) = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                tracing::warn!(error = %e, lease = %name, "could not release a job's lease; it goes with the connection");
            }
            let _ = channel.close(200, "released".into()).await;
        }
    }
}

impl Lease {
    /// Gives the job back to whichever delivery asks next. A failure is
    /// harmless: the queue goes with the connection.
    pub async fn release(mut self) {
        if let Some(name) = self.name.take() {
            self.leases.release(name).await;
        }
    }
}

impl Drop for Lease {
    /// A lease dropped unreleased (its task panicked or was aborted) is
    /// released in the background, so the job is not held until the
    /// connection closes.
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let leases = self.leases.clone();
            runtime.spawn(async move { leases.release(name).await });
        }
    }
}

/// Whether `queue` is a lease queue of the requests queue `requests_queue`
/// (either form [`lease_name`] gives).
pub(crate) fn is_lease_queue(requests_queue: &str, queue: &str) -> bool {
    queue.starts_with(&format!("{requests_queue}.lease.")) || queue.starts_with(HASHED_PREFIX)
}

/// Prefix of a lease queue whose name would be too long for AMQP.
const HASHED_PREFIX: &str = "tts.lease.";

/// The lease queue of `job_id` under `prefix` (`tts.lease.` and the
/// SHA-256 of that name when it would be too long for AMQP).
fn lease_name(prefix: &str, job_id: &str) -> String {
    let name = format!("{prefix}{job_id}");
    if name.len() <= MAX_QUEUE_NAME {
        name
    } else {
        format!("{HASHED_PREFIX}{}", hex::encode(Sha256::digest(&name)))
    }
}

/// The broker refused an exclusive queue another connection holds (AMQP
/// 405 RESOURCE_LOCKED).
fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_name_fits_amqp_whatever_the_job_id() {
        assert_eq!(lease_name("q.lease.", "j-1"), "q.lease.j-1");
        let prefix = format!("{}.lease.", "q".repeat(200));
        let long = "j".repeat(128);
        let name = lease_name(&prefix, &long);
        assert!(name.len() <= MAX_QUEUE_NAME, "{}", name.len());
        // Distinct jobs keep distinct leases.
        assert_ne!(name, lease_name(&prefix, &"k".repeat(128)));
    }
}
