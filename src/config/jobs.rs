//! `[jobs]`: retries across deliveries, resumes and pauses.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive, seconds};

/// What to do on an account-level failure (401, 403, 406, or a bucket that
/// refuses us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountPolicy {
    /// Stop consuming, requeue, probe until the account works again.
    Pause,
    /// Fail the job like any other permanent failure.
    Fail,
}

/// How jobs are retried, resumed and paused.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub max_deliveries: u32,
    pub requeue_delay: Duration,
    pub on_account_error: AccountPolicy,
    pub probe_initial: Duration,
    pub probe_max: Duration,
    pub resume_window: Duration,
    pub audio_retries: u32,
    /// Finished jobs fetching, checking and uploading their audio at once.
    pub max_transfers: usize,
    /// Jobs rendering and uploading their deliverable at once.
    pub max_renders: usize,
    /// Jobs starting at once: reading their records and making their first
    /// submission. The others wait before building any of their state.
    pub max_starting: usize,
    /// How long one delivery may work on a job before handing it back.
    pub delivery_lifetime: Duration,
    /// Pauses one message may cause while the probe says the account works;
    /// past it the message fails with its own code (the refusal concerns
    /// that request, not the account).
    pub max_pause_cycles: u32,
    /// How long a pause keeps the consumer (holding what it received)
    /// before cancelling it and handing its deliveries back.
    pub pause_hold: Duration,
    /// Least time between two progress events of a running job of several
    /// parts (`jobs.progress_interval`).
    pub progress_interval: Duration,
    /// How long a request of a version newer than this replica knows is
    /// held before it is handed back.
    pub version_handback_delay: Duration,
    /// How long such a request may keep being handed back before it fails
    /// as `unsupported_version`.
    pub unsupported_version_grace: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobs {
    pub(super) max_deliveries: u32,
    pub(super) requeue_delay: f64,
    pub(super) on_account_error: AccountPolicy,
    pub(super) probe_initial: f64,
    pub(super) probe_max: f64,
    pub(super) resume_window: f64,
    pub(super) audio_retries: u32,
    pub(super) max_transfers: u32,
    pub(super) max_renders: u32,
    pub(super) max_starting: u32,
    pub(super) delivery_lifetime: f64,
    pub(super) max_pause_cycles: u32,
    pub(super) pause_hold: f64,
    pub(super) progress_interval: f64,
    pub(super) version_handback_delay: f64,
    pub(super) unsupported_version_grace: f64,
}

impl RawJobs {
    pub(super) fn validate(self) -> Result<JobSettings, ConfigError> {
        if self.max_deliveries == 0 {
            return Err(invalid("jobs.max_deliveries", "must be at least 1"));
        }
        let probe_initial = seconds("jobs.probe_initial", self.probe_initial)?;
        let probe_max = seconds("jobs.probe_max", self.probe_max)?;
        if probe_max < probe_initial {
            return Err(invalid(
                "jobs.probe_max",
                "must not be smaller than jobs.probe_initial",
            ));
        }
        let pause_hold = seconds("jobs.pause_hold", self.pause_hold)?;
        if pause_hold > Duration::from_secs(20 * 60) {
            return Err(invalid(
                "jobs.pause_hold",
                "must be at most 1200 s: RabbitMQ closes a channel holding a delivery past its consumer_timeout (30 min by default)",
            ));
        }
        let version_handback_delay =
            seconds("jobs.version_handback_delay", self.version_handback_delay)?;
        if version_handback_delay > Duration::from_secs(60) {
            return Err(invalid(
                "jobs.version_handback_delay",
                "must be at most 60 s: the request waits in this replica meanwhile",
            ));
        }
        Ok(JobSettings {
            max_deliveries: self.max_deliveries,
            requeue_delay: Duration::try_from_secs_f64(self.requeue_delay)
                .map_err(|e| invalid("jobs.requeue_delay", e.to_string()))?,
            on_account_error: self.on_account_error,
            probe_initial,
            probe_max,
            resume_window: seconds("jobs.resume_window", self.resume_window)?,
            audio_retries: self.audio_retries,
            max_transfers: positive("jobs.max_transfers", self.max_transfers)?,
            max_renders: positive("jobs.max_renders", self.max_renders)?,
            max_starting: positive("jobs.max_starting", self.max_starting)?,
            delivery_lifetime: seconds("jobs.delivery_lifetime", self.delivery_lifetime)?,
            max_pause_cycles: positive("jobs.max_pause_cycles", self.max_pause_cycles)? as u32,
            pause_hold,
            progress_interval: seconds("jobs.progress_interval", self.progress_interval)?,
            version_handback_delay,
            unsupported_version_grace: seconds(
                "jobs.unsupported_version_grace",
                self.unsupported_version_grace,
            )?,
        })
    }
}
