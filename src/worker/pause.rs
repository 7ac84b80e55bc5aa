//! Pausing consumption on account-level failures: 401, 403 or 406 from
//! Segmind, or a bucket that is missing or refuses our credentials.
//!
//! Such a failure affects every job, so failing jobs one by one would burn the
//! whole queue. Instead the first job to meet it pauses the gate: the worker
//! cancels its consumer and requeues what it holds, a prober checks what
//! failed (the API for Segmind's codes, the bucket for storage's) with
//! growing intervals, and consumption resumes by itself once it works.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::failure::ErrorCode;
use crate::metrics::Metrics;
use crate::segmind::SegmindClient;
use crate::storage::Storage;

/// Why consumption is paused: the error code that caused it.
pub type PauseReason = ErrorCode;

/// Shared by the worker loop and every job.
#[derive(Clone)]
pub struct PauseGate {
    state: Arc<watch::Sender<Option<PauseReason>>>,
    metrics: Metrics,
}

impl PauseGate {
    pub fn new(metrics: Metrics) -> Self {
        PauseGate {
            state: Arc::new(watch::Sender::new(None)),
            metrics,
        }
    }

    /// Pauses consumption; a no-op when already paused.
    pub fn pause(&self, reason: PauseReason, detail: &str) {
        let changed = self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(reason);
            true
        });
        if changed {
            self.metrics
                .paused
                .with_label_values(&[reason.as_str()])
                .set(1);
            warn!(
                reason = reason.as_str(),
                detail, "account-level failure: pausing consumption until the API accepts us again"
            );
        }
    }

    pub fn resume(&self) {
        if let Some(reason) = self.state.send_replace(None) {
            self.metrics
                .paused
                .with_label_values(&[reason.as_str()])
                .set(0);
            info!(
                reason = reason.as_str(),
                "account works again: resuming consumption"
            );
        }
    }

    pub fn paused(&self) -> Option<PauseReason> {
        *self.state.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<PauseReason>> {
        self.state.subscribe()
    }
}

/// Probes until what paused the gate works again, waiting `initial`, then
/// twice as long each time up to `max`; then resumes the gate. A storage
/// reason probes the bucket, any other reason the Segmind API.
pub async fn probe_until_healthy(
    gate: &PauseGate,
    segmind: &SegmindClient,
    storage: &Storage,
    initial: Duration,
    max: Duration,
) {
    let mut wait = initial;
    loop {
        tokio::time::sleep(wait).await;
        let Some(reason) = gate.paused() else { return };
        let probe = if reason.is_storage() {
            storage.check().await.map_err(|e| e.to_string())
        } else {
            segmind.probe().await
        };
        match probe {
            Ok(()) => {
                gate.resume();
                return;
            }
            Err(error) => {
                warn!(reason = reason.as_str(), %error, next_probe_s = (wait * 2).min(max).as_secs_f64(), "still failing");
            }
        }
        wait = (wait * 2).min(max);
    }
}
