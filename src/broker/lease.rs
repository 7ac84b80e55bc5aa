//! A lease on a job, honoured by every replica: an exclusive queue per job
//! (`{requests_queue}.lease.{job_id}`), declared on the connection of the
//! delivery that works on it. RabbitMQ lets one connection hold an
//! exclusive queue and deletes it when that connection closes, so a lease
//! is released by [`Lease::release`], by a lost connection and by a crash
//! alike — on every broker version and whatever the object store (Garage
//! ignores `If-None-Match`, so a lease object in the bucket would race).
//!
//! Cost: two short-lived channels and two queue operations per leased job.
//! Only jobs of several parts are leased (see README "Long texts").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapin::Connection;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::BrokerError;

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
    /// last release deletes it.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// A job held by this connection until released (or the connection dies).
pub struct Lease {
    leases: Leases,
    name: String,
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
        let name = format!("{}{job_id}", self.prefix);
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
                *self.held().entry(name.clone()).or_default() += 1;
                Ok(Lease {
                    leases: self.clone(),
                    name,
                })
            }
            Err(e) if is_resource_locked(&e) => Err(LeaseError::Held),
            Err(e) => {
                let _ = channel.close(200, "lease failed".into()).await;
                Err(BrokerError::from(e).into())
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // A poisoned lock only means a panic elsewhere while holding it.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lease {
    /// Gives the job back to whichever delivery asks next. A failure is
    /// harmless: the queue goes with the connection.
    pub async fn release(self) {
        let last = {
            let mut held = self.leases.held();
            let count = held.entry(self.name.clone()).or_default();
            *count = count.saturating_sub(1);
            let last = *count == 0;
            if last {
                held.remove(&self.name);
            }
            last
        };
        if !last {
            return;
        }
        if let Ok(channel) = self.leases.connection.create_channel().await {
            if let Err(e) = channel
                .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                tracing::warn!(error = %e, lease = %self.name, "could not release a job's lease; it goes with the connection");
            }
            let _ = channel.close(200, "released".into()).await;
        }
    }
}

/// The broker refused an exclusive queue another connection holds (AMQP
/// 405 RESOURCE_LOCKED).
fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405)
}
