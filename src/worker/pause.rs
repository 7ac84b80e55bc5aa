//! Pausing consumption on account-level failures: 401, 403 or 406 from
//! Segmind, or a bucket that is missing or refuses our credentials.
//!
//! Such a failure usually affects every job, so failing jobs one by one would
//! burn the whole queue. Instead the first job to meet it pauses the gate: the
//! worker cancels its consumer and hands back what it holds (uncounted), a
//! prober checks what failed (the same kind of API call, or the bucket for
//! storage's codes) with growing, jittered intervals, and consumption resumes
//! by itself once it works. A refusal that concerns one request only (a
//! policy rule on its text, a cost above the balance) is told apart by the
//! message's own count of pauses: see `jobs.max_pause_cycles`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use rand::Rng;

use crate::failure::{Call, ErrorCode};
use crate::metrics::Metrics;
use crate::segmind::SegmindClient;
use crate::storage::Storage;

/// Why consumption is paused: the error code that caused it and, for
/// Segmind's codes, the call that met it (the probe repeats that kind of call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseReason {
    pub code: ErrorCode,
    pub call: Option<Call>,
}

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

    /// Pauses consumption; a no-op when already paused. Returns whether this
    /// call paused it (a job meeting the failure while already paused did
    /// not cause a pause cycle).
    pub fn pause(&self, reason: PauseReason, detail: &str) -> bool {
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
                .with_label_values(&[reason.code.as_str()])
                .set(1);
            warn!(
                reason = reason.code.as_str(),
                detail, "account-level failure: pausing consumption until the API accepts us again"
            );
        }
        changed
    }

    pub fn resume(&self) {
        if let Some(reason) = self.state.send_replace(None) {
            self.metrics
                .paused
                .with_label_values(&[reason.code.as_str()])
                .set(0);
            info!(
                reason = reason.code.as_str(),
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
/// twice as long each time up to `max`, each wait jittered by ±20 % so a
/// fleet paused together does not probe in lockstep; then resumes the gate.
/// A storage reason probes the bucket, any other reason the Segmind API with
/// the kind of call that failed.
pub async fn probe_until_healthy(
    gate: &PauseGate,
    segmind: &SegmindClient,
    storage: &Storage,
    initial: Duration,
    max: Duration,
) {
    let mut wait = initial;
    loop {
        let wait_now = jittered(wait, &mut rand::rng());
        tokio::time::sleep(wait_now).await;
        let Some(reason) = gate.paused() else { return };
        match probe(segmind, storage, reason).await {
            Ok(()) => {
                gate.resume();
                return;
            }
            Err(error) => {
                warn!(reason = reason.code.as_str(), %error, next_probe_s = (wait * 2).min(max).as_secs_f64(), "still failing");
            }
        }
        wait = (wait * 2).min(max);
    }
}

/// Checks once whether what `reason` names works: the bucket for a storage
/// reason, else the Segmind API with the kind of call that failed.
pub async fn probe(
    segmind: &SegmindClient,
    storage: &Storage,
    reason: PauseReason,
) -> Result<(), String> {
    if reason.code.is_storage() {
        storage.check().await.map_err(|e| e.to_string())
    } else {
        segmind.probe(reason.call.unwrap_or(Call::Status)).await
    }
}

/// `wait` scaled by a random factor in [0.8, 1.2].
pub fn jittered(wait: Duration, rng: &mut impl Rng) -> Duration {
    wait.mul_f64(rng.random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn probe_waits_are_spread_so_a_fleet_does_not_probe_in_lockstep() {
        let mut rng = StdRng::seed_from_u64(7);
        let waits: Vec<Duration> = (0..200)
            .map(|_| jittered(Duration::from_secs(10), &mut rng))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| (8.0..=12.0).contains(&w.as_secs_f64()))
        );
        let distinct: std::collections::BTreeSet<u128> =
            waits.iter().map(|w| w.as_millis()).collect();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
        let spread = waits.iter().map(|w| w.as_secs_f64()).fold(0.0f64, f64::max)
            - waits
                .iter()
                .map(|w| w.as_secs_f64())
                .fold(f64::MAX, f64::min);
        assert!(spread > 3.0, "waits span {spread} s");
    }
}
