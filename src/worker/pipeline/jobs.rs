//! What a process knows of the jobs it works on, across their deliveries:
//! one delivery at a time per job, and each job's submission turn, which a
//! spawned submission step holds until its request id is recorded — so a
//! redelivery (after a lost broker session dropped the first delivery's
//! task) waits for that step instead of paying again. And a delivery's
//! lifetime: when it must give its job back.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, watch};

use super::HandOverReason;
use crate::job::{JobId, Progress};

/// One job's locks in this process.
pub(super) struct JobEntry {
    /// Held by the delivery working on the job.
    pub(super) delivery: Arc<Mutex<()>>,
    /// Held while a submission of the job is in flight (see the module's doc).
    pub(super) submit: Arc<Mutex<()>>,
    /// How far the running delivery has come (a job of several parts).
    pub(super) progress: std::sync::Mutex<Option<Progress>>,
}

/// The jobs this process is working on, by id. An entry lives as long as
/// a delivery or a submission step holds it.
#[derive(Default)]
pub(super) struct JobTable {
    jobs: std::sync::Mutex<Table>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Weak<JobEntry>>,
    /// Entries after the last sweep of dead ones: the next sweep runs when
    /// the table has doubled, so sweeping costs O(1) per entry taken.
    swept_at: usize,
}

impl JobTable {
    /// The entry of `job_id`, shared with every holder of it.
    pub(super) fn entry(&self, job_id: &JobId) -> Arc<JobEntry> {
        // A poisoned lock only means a panic elsewhere while holding it;
        // the map itself is still consistent.
        let mut table = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.entries.get(job_id.as_str()).and_then(Weak::upgrade) {
            return entry;
        }
        if table.entries.len() >= 2 * table.swept_at.max(512) {
            table.entries.retain(|_, e| e.strong_count() > 0);
            table.swept_at = table.entries.len();
        }
        let entry = Arc::new(JobEntry {
            delivery: Arc::new(Mutex::new(())),
            submit: Arc::new(Mutex::new(())),
            progress: std::sync::Mutex::new(None),
        });
        table
            .entries
            .insert(job_id.as_str().to_owned(), Arc::downgrade(&entry));
        entry
    }
}

impl JobTable {
    /// The progress of `job_id` here, if a delivery of it reported any.
    pub(super) fn progress(&self, job_id: &JobId) -> Option<Progress> {
        let table = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.entries.get(job_id.as_str()).and_then(Weak::upgrade)?;
        *entry.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When a delivery must give its job back instead of working on: past its
/// lifetime (`jobs.delivery_lifetime`, below the broker's consumer timeout),
/// or once the broker cancelled the consumer that holds it.
#[derive(Debug, Clone)]
pub struct DeliveryLimit {
    expires: tokio::time::Instant,
    /// Turns true when the consumer is cancelled by the broker.
    consumer: Option<watch::Receiver<bool>>,
}

impl DeliveryLimit {
    /// A delivery that may work for `lifetime` from now.
    pub fn after(lifetime: std::time::Duration) -> Self {
        DeliveryLimit {
            expires: tokio::time::Instant::now() + lifetime,
            consumer: None,
        }
    }

    /// Also ends when `cancelled` turns true.
    pub fn with_consumer(mut self, cancelled: watch::Receiver<bool>) -> Self {
        self.consumer = Some(cancelled);
        self
    }

    /// Why the delivery must end now, if it must.
    pub(super) fn reached(&self) -> Option<HandOverReason> {
        if self.consumer.as_ref().is_some_and(|c| *c.borrow()) {
            return Some(HandOverReason::ConsumerCancelled);
        }
        (tokio::time::Instant::now() >= self.expires).then_some(HandOverReason::Lifetime)
    }

    /// Resolves once the delivery must end.
    pub(super) async fn wait(&self) -> HandOverReason {
        let cancelled = async {
            match self.consumer.clone() {
                Some(mut rx) => {
                    if rx.wait_for(|c| *c).await.is_err() {
                        // The consume loop is gone; the lifetime still runs.
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = cancelled => HandOverReason::ConsumerCancelled,
            () = tokio::time::sleep_until(self.expires) => HandOverReason::Lifetime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deliveries_of_one_job_share_its_entry_while_one_holds_it() {
        let table = JobTable::default();
        let id = JobId::parse("j-1", 64).unwrap();
        let a = table.entry(&id);
        let b = table.entry(&id);
        assert!(Arc::ptr_eq(&a, &b));
        let other = table.entry(&JobId::parse("j-2", 64).unwrap());
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b));
        // Nobody holds it: a later delivery starts a fresh entry.
        let c = table.entry(&id);
        assert!(c.submit.try_lock().is_ok());
    }

    #[test]
    fn dead_entries_are_swept_as_the_table_grows() {
        let table = JobTable::default();
        for n in 0..5_000 {
            let _ = table.entry(&JobId::parse(&format!("j-{n}"), 64).unwrap());
        }
        let len = table.jobs.lock().unwrap().entries.len();
        assert!(len <= 1_024, "{len} entries kept for 5,000 finished jobs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_ends_at_its_lifetime_or_when_its_consumer_is_cancelled() {
        let limit = DeliveryLimit::after(Duration::from_secs(60));
        assert_eq!(limit.reached(), None);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(limit.reached(), None);
        assert_eq!(limit.wait().await, HandOverReason::Lifetime);
        assert_eq!(limit.reached(), Some(HandOverReason::Lifetime));

        let (tx, rx) = watch::channel(false);
        let limit = DeliveryLimit::after(Duration::from_secs(600)).with_consumer(rx);
        assert_eq!(limit.reached(), None);
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.wait().await }
        });
        tokio::time::advance(Duration::from_secs(5)).await;
        tx.send_replace(true);
        assert_eq!(
            waiting.await.unwrap(),
            HandOverReason::ConsumerCancelled,
            "not the lifetime: 595 s were left"
        );
        assert_eq!(limit.reached(), Some(HandOverReason::ConsumerCancelled));
    }
}
