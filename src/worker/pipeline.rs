//! A valid job's work, without the broker: one engine for every job. A job
//! is a plan of parts (a short text is a plan of one part), run in stages
//! by [`parts`]: plan → synthesize each part (resumed from its record, else
//! submitted; checked by the one quality gate) → deliver (Segmind's file as
//! served for a one-part job that asks for it, else rendered) — and the
//! failure's meaning for the delivery.
//!
//! Nothing here knows AMQP: [`Pipeline::run`] takes a [`TtsJob`] and its
//! delivery attempt and returns a [`JobEnd`], so it can be driven (and tested)
//! without a broker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit, watch};

use tracing::{Span, info, warn};

mod jobs;
mod parts;

pub use jobs::DeliveryLimit;
use jobs::{JobEntry, JobTable};

use super::pause::{PauseGate, PauseReason, probe};
use crate::audio::{Audio, AudioError};
use crate::checkpoint::{Checkpoints, PartRecord, StitchedRecord};
use crate::config::{AccountPolicy, JobSettings, LongTextSettings, Settings};
use crate::failure::{self, AsFault, Attempt, Class, Disposition, ErrorCode, Fault, Limits};
use crate::job::{Failed, ForbiddenKey, JobId, KeyPolicy, ObjectKey, Outcome, StoredAudio, TtsJob};
use crate::metrics::Metrics;
use crate::quality::SpeakingRate;
use crate::segmind::{CallCount, SegmindClient, SegmindError, Submitted, Synthesis};
use crate::storage::{ObjectInfo, Storage, StorageError};

/// Every error a job's work can end with.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Segmind(#[from] SegmindError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Rendering the deliverable (resampling, encoding, metering) failed.
    #[error("rendering the audio failed: {0}")]
    Render(#[from] crate::render::RenderError),
    /// The submission step ended without an answer (the runtime is shutting
    /// down); whether Segmind accepted it is unknown.
    #[error("the submission step was interrupted: {0}")]
    Interrupted(String),
    /// An invariant of the worker's own broke (a bug): retried on a later
    /// delivery as `internal`, counted.
    #[error("internal error: {0}")]
    Invariant(String),
    /// The producer's `output_key` reaches the worker's own objects.
    #[error(transparent)]
    ForbiddenKey(#[from] ForbiddenKey),
    /// The key already holds an object another job wrote.
    #[error(
        "output_key {key:?} already holds an object of another job; it is not overwritten (choose another key)"
    )]
    KeyTaken { key: String },
    /// The key holds this job's audio rendered with other options: the
    /// object its event named is kept.
    #[error(
        "output_key {key:?} already holds this job's audio rendered with other options ({options}); it is not overwritten (ask for another output_key to have both)"
    )]
    RenderedOtherwise { key: String, options: String },
    /// A stored part is gone or shorter than recorded: its record is
    /// cleared so the next delivery produces it again.
    #[error("{detail}")]
    PartGone { index: usize, detail: String },
    /// The delivery gives its job back (shutdown, its lifetime, its consumer
    /// cancelled): another delivery resumes it from storage. An outcome,
    /// not a failure: `run` ends the job with [`JobEnd::HandOver`].
    #[error("handed over: {}", .0.as_str())]
    HandedOver(HandOverReason),
}

impl AsFault for JobError {
    fn fault(&self) -> Fault<'_> {
        match self {
            JobError::Segmind(e) => e.fault(),
            JobError::Audio(e) => e.fault(),
            JobError::Storage(e) => e.fault(),
            JobError::Render(_) => Fault::Render,
            // Like a lost answer: the next delivery resumes the request if
            // the step checkpointed it, else submits.
            JobError::Interrupted(_) | JobError::PartGone { .. } => {
                Fault::Network { timeout: false }
            }
            JobError::Invariant(_) => Fault::Internal,
            JobError::ForbiddenKey(_) => Fault::OutputKeyForbidden,
            JobError::KeyTaken { .. } | JobError::RenderedOtherwise { .. } => Fault::OutputKeyTaken,
            // Never classified: `run` ends a handed-over job before.
            JobError::HandedOver(_) => Fault::Deadline,
        }
    }
}

/// How a job's processing ended.
#[derive(Debug)]
pub enum JobEnd {
    /// A terminal outcome to publish.
    Finished(Box<Outcome>),
    /// Try again on a later delivery; the reason is an error code.
    Requeue(ErrorCode),
    /// Give the delivery to another replica (or a later delivery) without
    /// counting it toward the poison limit: it did not fail by its own fault.
    HandOver(HandOverReason),
}

/// Why a delivery is handed over instead of finished or requeued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOverReason {
    /// The worker is shutting down (scale-in, rollout, drain).
    Shutdown,
    /// Consumption paused on an account-level failure (API key, credits,
    /// bucket): the account's fault, not the job's. `caused` when this job
    /// met the failure: the message's own count of pauses grows (see
    /// `jobs.max_pause_cycles`); jobs merely held alongside are not charged.
    Paused { caused: bool },
    /// The request says a version newer than this replica knows: a newer
    /// replica may take it (see `jobs.unsupported_version_grace`).
    NewerVersion,
    /// The delivery reached `jobs.delivery_lifetime`: given back before the
    /// broker's consumer timeout takes it (and, on RabbitMQ before 4.3,
    /// every other delivery of the channel with it).
    Lifetime,
    /// The broker cancelled the consumer that holds the delivery (RabbitMQ
    /// 4.3+'s consumer timeout sends `basic.cancel`).
    ConsumerCancelled,
    /// The request's bytes did not fit `amqp.max_bytes_in_flight` within
    /// `jobs.pause_hold`: the consumer stops until they do, and what it
    /// holds goes back for replicas with room.
    Saturated,
}

impl HandOverReason {
    /// Label of `tts_handovers_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandOverReason::Shutdown => "shutdown",
            HandOverReason::Paused { .. } => "paused",
            HandOverReason::NewerVersion => "newer_version",
            HandOverReason::Lifetime => "lifetime",
            HandOverReason::ConsumerCancelled => "consumer_cancelled",
            HandOverReason::Saturated => "saturated",
        }
    }
}

/// What every job of the process shares: the adapters and the settings that
/// shape a job's work. Built once; broker sessions come and go around it.
/// The adapters and the job settings are public (settlement, the consume
/// loop and the pause prober use them); what only shapes a job's work is
/// private to the pipeline and its stages.
pub struct Pipeline {
    pub segmind: Arc<SegmindClient>,
    /// The fleet's shared memory: paid parts are booked in it.
    pub fleet: Arc<super::fleet::Fleet>,
    pub storage: Storage,
    pub checkpoints: Checkpoints,
    pub metrics: Metrics,
    /// Paused on account-level failures; the consumer loop watches it.
    pub pause: PauseGate,
    pub jobs: JobSettings,
    /// Where audio may be stored.
    keys: KeyPolicy,
    /// Bound on one Segmind request of one part: from its submission (or
    /// resume) to its audio fetched. Waiting for the job's turn or a slot
    /// does not count.
    job_deadline: Duration,
    /// `segmind.max_audio_bytes`: a part's audio, served or decoded.
    pub(crate) max_audio_bytes: u64,
    /// How long a part's `submitting_since` marker is honoured: the
    /// submission's deadline, plus the time its record's write may take
    /// (`s3.operation_timeout`), plus a margin.
    marker_bound: Duration,
    /// Lower-cased substrings marking a FAILED message as a content block.
    block_patterns: Vec<String>,
    /// Slots of the heavy phase of a part (result, download, checks,
    /// upload): the only part of a job's synthesis that holds audio.
    transfers: Semaphore,
    /// Slots of the delivery stage of a rendered job (read back, render,
    /// upload): minutes each for a long text, apart from `transfers` so
    /// that a finished short job never waits behind them.
    renders: Semaphore,
    /// Slots of a job's start (its records read, its first submission
    /// made): a backlog of thousands waits before building any state.
    starting: Semaphore,
    /// How texts are cut and synthesized.
    long_text: LongTextSettings,
    /// Each voice's speaking rate, learned from delivered parts: the
    /// quality gate of every part of every job.
    speaking_rate: Arc<SpeakingRate>,
    /// The jobs this process is working on (one delivery at a time each,
    /// and each job's submission turn).
    jobs_here: JobTable,
    /// Set once on shutdown: waiting jobs hand their deliveries over.
    handover: watch::Sender<bool>,
}

impl Pipeline {
    pub fn new(
        settings: &Settings,
        segmind: Arc<SegmindClient>,
        storage: Storage,
        metrics: Metrics,
        pause: PauseGate,
    ) -> Self {
        Pipeline {
            fleet: super::fleet::Fleet::new(
                settings,
                format!("pipeline-{}", uuid::Uuid::new_v4().simple()),
                &metrics,
            ),
            checkpoints: Checkpoints::new(
                storage.clone(),
                &settings.s3.prefix,
                settings.jobs.resume_window,
            ),
            segmind,
            storage,
            metrics,
            pause,
            jobs: settings.jobs.clone(),
            keys: KeyPolicy {
                prefix: settings.s3.prefix.clone(),
                output_prefix: settings.s3.output_prefix.clone(),
            },
            job_deadline: settings.segmind.job_deadline,
            max_audio_bytes: settings.segmind.max_audio_bytes,
            marker_bound: settings.segmind.job_deadline
                + settings.s3.operation_timeout
                + crate::checkpoint::MARKER_MARGIN,
            block_patterns: settings.segmind.content_blocked_patterns.clone(),
            transfers: Semaphore::new(settings.jobs.max_transfers),
            renders: Semaphore::new(settings.jobs.max_renders),
            starting: Semaphore::new(settings.jobs.max_starting),
            long_text: settings.long_text,
            speaking_rate: Arc::new(SpeakingRate::new()),
            jobs_here: JobTable::default(),
            handover: watch::Sender::new(false),
        }
    }

    /// Books paid parts in `fleet` (the one the Segmind client's gate reads).
    pub fn with_fleet(mut self, fleet: Arc<super::fleet::Fleet>) -> Self {
        self.fleet = fleet;
        self
    }

    /// What this process learns and shares with the fleet: its polling,
    /// its rate budget and its voices' speaking rates.
    pub fn learning(&self) -> super::fleet::Learning {
        super::fleet::Learning {
            client: self.segmind.clone(),
            rates: self.speaking_rate.clone(),
        }
    }

    /// Asks every job that is waiting on Segmind, or has yet to submit, to
    /// end with [`JobEnd::HandOver`]. Jobs submitting or moving audio finish
    /// that step first: a submission is never abandoned unrecorded, and
    /// audio already downloaded is not fetched twice.
    pub fn hand_over_waiting_jobs(&self) {
        self.handover.send_replace(true);
    }

    fn handing_over(&self) -> bool {
        *self.handover.borrow()
    }

    /// Resolves once [`Pipeline::hand_over_waiting_jobs`] is asked.
    pub async fn handover_requested(&self) {
        let mut rx = self.handover.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = rx.wait_for(|asked| *asked).await;
    }

    /// Why a delivery under `limit` must give its job back now, if it must.
    fn must_hand_over(&self, limit: &DeliveryLimit) -> Option<HandOverReason> {
        if self.handing_over() {
            return Some(HandOverReason::Shutdown);
        }
        limit.reached()
    }

    /// Whether `job`'s text is planned as several parts (a long job).
    pub fn is_long(&self, job: &TtsJob) -> bool {
        job.speech.text.chars().count() > self.long_text.part_chars
    }

    /// Resolves with the reason once a delivery under `limit` must give its
    /// job back (the worker's shutdown, the limit).
    pub async fn until_hand_over(&self, limit: &DeliveryLimit) -> HandOverReason {
        self.hand_over_requested(limit).await
    }

    async fn hand_over_requested(&self, limit: &DeliveryLimit) -> HandOverReason {
        tokio::select! {
            () = self.handover_requested() => HandOverReason::Shutdown,
            reason = limit.wait() => reason,
        }
    }

    /// Waits for the job's delivery turn held by another delivery here, or
    /// for this one's hand-over.
    async fn delivery_turn(
        &self,
        entry: &JobEntry,
        limit: &DeliveryLimit,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, HandOverReason> {
        tokio::select! {
            biased;
            turn = entry.delivery.clone().lock_owned() => Ok(turn),
            reason = self.hand_over_requested(limit) => Err(reason),
        }
    }

    /// Waits for a start slot (`jobs.max_starting`), or for this
    /// delivery's hand-over. `None` if the semaphore were ever closed.
    async fn start_slot(
        &self,
        limit: &DeliveryLimit,
    ) -> Result<Option<SemaphorePermit<'_>>, HandOverReason> {
        tokio::select! {
            biased;
            slot = self.starting.acquire() => Ok(slot.ok()),
            reason = self.hand_over_requested(limit) => Err(reason),
        }
    }

    /// Runs a valid job (its delivery `attempt`) within
    /// `jobs.delivery_lifetime`; see [`Pipeline::run_delivery`].
    pub async fn run(&self, job: &TtsJob, attempt: Attempt) -> JobEnd {
        let limit = DeliveryLimit::after(self.jobs.delivery_lifetime);
        self.run_delivery(job, attempt, &limit).await
    }

    /// Runs a valid job (its delivery `attempt`, to be given back when
    /// `limit` is reached) and decides what its failure, if any, means: a
    /// failure event, a requeue, or a hand-over. One delivery of a job
    /// works at a time in this process: a second one waits for the first
    /// (and is then mostly answered from storage).
    /// How far a job of several parts running here has come.
    pub fn progress_of(&self, job_id: &JobId) -> Option<crate::job::Progress> {
        self.jobs_here.progress(job_id)
    }

    pub async fn run_delivery(
        &self,
        job: &TtsJob,
        attempt: Attempt,
        limit: &DeliveryLimit,
    ) -> JobEnd {
        let entry = self.jobs_here.entry(&job.id);
        // Waiting for another delivery of the job is boxed: the common case
        // (no other) holds none of its state while the job runs.
        let turn = match entry.delivery.clone().try_lock_owned() {
            Ok(turn) => turn,
            Err(_) => match Box::pin(self.delivery_turn(&entry, limit)).await {
                Ok(turn) => turn,
                Err(reason) => {
                    info!(
                        reason = reason.as_str(),
                        "another delivery of this job is running here; handing this one back"
                    );
                    return JobEnd::HandOver(reason);
                }
            },
        };
        // A start slot, held until the job's first submission is made (or
        // its request resumed, or its parts found stored): boxed, waited
        // for only when every slot is taken.
        let starting = match self.starting.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => match Box::pin(self.start_slot(limit)).await {
                Ok(slot) => slot,
                Err(reason) => return JobEnd::HandOver(reason),
            },
        };
        let run = parts::JobRun::new(self, job, attempt.number, limit, entry.clone(), starting);
        let result = Box::pin(run.execute()).await;
        // Its progress ends with it: a later delivery reports its own.
        *entry.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(turn);
        let calls = run.calls();
        if calls > 0 {
            self.metrics.segmind_calls_per_job.observe(f64::from(calls));
        }
        let err = match result {
            Ok(mut completed) => {
                completed.segmind_calls = calls;
                return JobEnd::Finished(Box::new(Outcome::Completed(completed)));
            }
            Err(JobError::HandedOver(reason)) => {
                info!(
                    reason = reason.as_str(),
                    "handing the job over; its progress is in storage"
                );
                return JobEnd::HandOver(reason);
            }
            Err(err) => err,
        };
        // Decided in its own (boxed) future: a job waiting on Segmind does
        // not carry the failure's state.
        Box::pin(self.failed(job, attempt, err, run.last_request_id())).await
    }

    /// What a job's failure means (see [`failure::disposition`]): a failure
    /// event, a requeue, or a hand-over while consumption pauses.
    async fn failed(
        &self,
        job: &TtsJob,
        attempt: Attempt,
        err: JobError,
        last_request: Option<String>,
    ) -> JobEnd {
        let failure = failure::classify(&err, &self.block_patterns);
        let request_id = last_request.or_else(|| match &err {
            JobError::Segmind(e) => e.request_id().map(str::to_owned),
            _ => None,
        });
        if let Some(id) = &request_id {
            Span::current().record("request_id", id.as_str());
        }
        let limits = Limits {
            max_deliveries: self.jobs.max_deliveries,
            max_pause_cycles: self.jobs.max_pause_cycles,
            policy: self.jobs.on_account_error,
        };
        let reason = PauseReason {
            code: failure.code,
            call: match &err {
                JobError::Segmind(e) => e.call(),
                _ => None,
            },
        };
        // A message that has caused its share of pauses is failed only if
        // the account works for that call right now (another replica may
        // have counted a pause without a probe passing).
        let account_works = failure.class == Class::Account
            && limits.policy == AccountPolicy::Pause
            && attempt.pauses >= limits.max_pause_cycles
            && Box::pin(probe(&self.segmind, &self.storage, reason))
                .await
                .is_ok();
        match failure::disposition(&failure, attempt, limits, account_works) {
            Disposition::Fail => {
                let mut failure = failure;
                if account_works {
                    failure.message = format!(
                        "{} (refused again after {} pauses while the account works for other requests: the refusal concerns this request)",
                        failure.message, attempt.pauses
                    );
                }
                warn!(code = failure.code.as_str(), error = %err, "job failed");
                JobEnd::Finished(Box::new(Outcome::Failed(Failed {
                    job_id: job.id.clone(),
                    failure,
                    request_id,
                    attempts: attempt.number,
                    metadata: job.metadata.clone(),
                })))
            }
            Disposition::Requeue => {
                warn!(code = failure.code.as_str(), error = %err, "transient failure");
                JobEnd::Requeue(failure.code)
            }
            Disposition::Pause => {
                let caused = self.pause.pause(reason, &failure.message);
                warn!(code = failure.code.as_str(), error = %err, caused, pauses = attempt.pauses + u32::from(caused), "account-level failure; handing the job back while consumption pauses");
                JobEnd::HandOver(HandOverReason::Paused { caused })
            }
        }
    }

    /// Uploads `audio` to `key` under [`Pipeline::write_exclusive`]'s rules,
    /// timed in `tts_s3_upload_seconds`.
    async fn upload_exclusive(
        &self,
        job: &TtsJob,
        key: &ObjectKey,
        audio: Audio,
        request_id: &str,
    ) -> Result<StoredAudio, JobError> {
        let started = std::time::Instant::now();
        // The `Bytes` clone shares the audio: it copies nothing.
        let stored = self
            .write_exclusive(job, key, |absent| {
                self.storage
                    .put(key, audio.clone(), &job.id, request_id, absent)
            })
            .await?;
        self.metrics
            .s3_upload
            .observe(started.elapsed().as_secs_f64());
        Ok(stored)
    }

    /// Writes an object derived from `job`'s audio (marks, captions) to
    /// `key` under the audio's rules ([`Pipeline::write_exclusive`]).
    async fn write_derived(
        &self,
        job: &TtsJob,
        key: &ObjectKey,
        bytes: bytes::Bytes,
        content_type: &str,
    ) -> Result<(), JobError> {
        self.write_exclusive(job, key, |absent| {
            self.storage
                .put_derived(key, bytes.clone(), content_type, &job.id, absent)
        })
        .await
    }

    /// Writes `key` with `write(only_if_absent)` unless an object another
    /// job wrote is there. Two guards: the object's `job-id` metadata, read
    /// just before (works on every store), and a conditional write
    /// (`If-None-Match: *`) that closes the window between the two where the
    /// store honours it (AWS S3 does; Garage 2.5 ignores the header,
    /// measured). This job's own object (a re-run whose checkpoint was not
    /// updated) is replaced, and so is an object without a job id at the
    /// job's default key.
    async fn write_exclusive<T, Write, Fut>(
        &self,
        job: &TtsJob,
        key: &ObjectKey,
        write: Write,
    ) -> Result<T, JobError>
    where
        Write: Fn(bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let absent = Box::pin(self.check_owner(job, key)).await?;
        match Box::pin(write(absent)).await {
            // A store without conditional writes that says so: the check
            // above is the guard.
            Err(e) if e.not_implemented() => {}
            // Written since the check above: replaced only if it is ours.
            Err(e) if e.precondition_failed() => {
                Box::pin(self.check_owner(job, key)).await?;
            }
            other => return Ok(other?),
        }
        Ok(Box::pin(write(false)).await?)
    }

    /// Fails with [`JobError::KeyTaken`] when `key` holds an object that is
    /// not this job's; returns whether the key is free. A default key is the
    /// job's own by construction: an object there without a job id (tampered
    /// with, or written by hand) is the job's to replace. A producer's key is
    /// another matter: only an object with this job's id is.
    async fn check_owner(&self, job: &TtsJob, key: &ObjectKey) -> Result<bool, JobError> {
        let Some(info) = self.storage.head(key.as_str()).await? else {
            return Ok(true);
        };
        let ours = match info.job_id.as_deref() {
            Some(owner) => owner == job.id.as_str(),
            None => job.output_key.is_none(),
        };
        if ours {
            Ok(false)
        } else {
            // The owner is for the operator's log, never for the producer.
            info!(key = %key, owner = info.job_id.as_deref().unwrap_or("?"), "output_key holds another job's object");
            Err(JobError::KeyTaken {
                key: key.to_string(),
            })
        }
    }

    /// Waits for Segmind to finish `submitted` holding nothing but its ids,
    /// then takes a transfer slot and fetches the result and the audio. The
    /// slot is returned with the audio: it is held until the upload is done.
    /// The time spent waiting for the slot is added to `deadline`: a fetch's
    /// deadline starts when its slot is granted.
    async fn wait_and_fetch(
        &self,
        submitted: &Submitted,
        submitted_at: chrono::DateTime<chrono::Utc>,
        text_chars: usize,
        deadline: tokio::time::Instant,
        limit: &DeliveryLimit,
        calls: &CallCount,
    ) -> Result<(Synthesis, Option<SemaphorePermit<'_>>), JobError> {
        // The schedule counts from the submission, also for a resumed job.
        let ago = (chrono::Utc::now() - submitted_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let now = tokio::time::Instant::now();
        let since = now.checked_sub(ago).unwrap_or(now);
        let done = tokio::select! {
            biased;
            reason = self.hand_over_requested(limit) => return Err(JobError::HandedOver(reason)),
            done = self.segmind.wait_until_done(submitted, since, text_chars, deadline, calls) => done?,
        };
        self.metrics.transfers_waiting.inc();
        let asked = tokio::time::Instant::now();
        // The semaphore is never closed; `None` would only mean no bound.
        let slot = self.transfers.acquire().await.ok();
        self.metrics.transfers_waiting.dec();
        let deadline = deadline + asked.elapsed();
        let synthesis = Box::pin(
            self.segmind
                .fetch_audio(submitted, &done, text_chars, deadline, calls),
        )
        .await?;
        Ok((synthesis, slot))
    }

    /// Whether `key` still holds the object a record describes (`intact`
    /// says what must match); a replay from storage is counted and logged.
    async fn still_stored(
        &self,
        key: &str,
        intact: impl FnOnce(&ObjectInfo) -> bool,
    ) -> Result<bool, JobError> {
        let Some(info) = self.storage.head(key).await? else {
            return Ok(false);
        };
        if !intact(&info) {
            warn!(
                key,
                "stored audio does not match its record; producing it again"
            );
            return Ok(false);
        }
        self.metrics.resumed.with_label_values(&["storage"]).inc();
        info!(
            key,
            "audio already stored; replaying the completion without calling Segmind"
        );
        Ok(true)
    }
}

/// Writes a part record (see [`save_stitched`]).
async fn save_part(checkpoints: &Checkpoints, job_id: &JobId, index: usize, record: &PartRecord) {
    if let Err(e) = checkpoints.save_part(job_id, index, record).await {
        warn!(error = %e, part = index, "could not write the part's checkpoint; a redelivery would submit it again");
    }
}

/// Writes where a job's delivered audio went. A failure is logged, not
/// fatal: the job can still finish; only a replay of it would be lost.
async fn save_stitched(checkpoints: &Checkpoints, job_id: &JobId, record: &StitchedRecord) {
    if let Err(e) = checkpoints.save_stitched(job_id, record).await {
        warn!(error = %e, "could not write the delivery's checkpoint; a repeat would deliver again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::wire;

    /// A waiting job's memory is mostly its future, which is as large as its
    /// largest state: the S3 and heavy-phase futures are boxed so that a job
    /// waiting on Segmind does not carry their size.
    #[tokio::test]
    async fn a_jobs_future_stays_small_while_it_waits() {
        let env = [("SEGMIND_API_KEY".to_owned(), "k".to_owned())];
        let settings = Settings::load_from(None, &env).unwrap();
        let metrics = Metrics::new();
        let storage = Storage::with_static_credentials(&settings.s3, "a", "b");
        let segmind = SegmindClient::new(
            &settings.segmind,
            settings.require_api_key().unwrap().clone(),
            metrics.clone(),
        )
        .unwrap();
        let pipeline = Pipeline::new(
            &settings,
            Arc::new(segmind),
            storage,
            metrics.clone(),
            PauseGate::new(metrics),
        );
        let job = wire::decode_request(br#"{"text":"hello there"}"#, None, &settings.limits)
            .job
            .unwrap();
        let future = pipeline.run(
            &job,
            Attempt {
                number: 1,
                pauses: 0,
            },
        );
        let size = std::mem::size_of_val(&future);
        let limit = DeliveryLimit::after(Duration::from_secs(60));
        let entry = pipeline.jobs_here.entry(&job.id);
        let run = parts::JobRun::new(&pipeline, &job, 1, &limit, entry, None);
        let [execute, part, unit, stage, submit, recheck] = run.future_sizes();
        println!(
            "stages: {execute} bytes; one part: {part}, its unit's work: {unit}; the parts' stage: {stage}; \
             a part's submission: {submit}; its recheck: {recheck}"
        );
        let delivery = std::mem::size_of_val(&pipeline.run_delivery(
            &job,
            Attempt {
                number: 1,
                pauses: 0,
            },
            &limit,
        ));
        let hand_over = std::mem::size_of_val(&pipeline.hand_over_requested(&limit));
        println!(
            "a delivery: {delivery} bytes; its hand-over watch: {hand_over}; a Delivery: {}; a job: {}",
            std::mem::size_of::<lapin::message::Delivery>(),
            std::mem::size_of::<TtsJob>()
        );
        // The levels a queued job holds at once (see ARCHITECTURE.md
        // "Memory"), each kept to its waiting state: 624, 112, 1,192 (its
        // unit of work inline: 1,096) and 824 bytes measured.
        assert!(delivery <= 1024, "a delivery is {delivery} bytes");
        assert!(stage <= 256, "a one-part plan's stage is {stage} bytes");
        assert!(part <= 1280, "a part is {part} bytes");
        assert!(unit <= 1152, "a part's unit of work is {unit} bytes");
        assert!(submit <= 1024, "a part's submission is {submit} bytes");
        // What the job holds while Segmind works: the polling state, boxed.
        let submitted = pipeline.segmind.resume("r-1");
        let calls = CallCount::default();
        let deadline = tokio::time::Instant::now();
        let limit = DeliveryLimit::after(Duration::from_secs(60));
        let waiting =
            pipeline.wait_and_fetch(&submitted, chrono::Utc::now(), 11, deadline, &limit, &calls);
        let waiting_size = std::mem::size_of_val(&waiting);
        // What a job holds while queued for an S3 or API slot: the SDK's and
        // reqwest's futures are allocated only once the slot is taken.
        let plan = crate::plan::plan(&job.speech.text, 3_000, false);
        let load = pipeline
            .checkpoints
            .load_plan(&job.id, &job.speech, 3_000, &plan);
        let load_size = std::mem::size_of_val(&load);
        let first_read = pipeline
            .checkpoints
            .load_one_part_size(&job.id, &job.speech, &plan);
        let submit_calls = CallCount::default();
        let submit = pipeline
            .segmind
            .submit(&job.speech, deadline, &submit_calls, &job.flow);
        let submit_size = std::mem::size_of_val(&submit);
        println!(
            "a job's future: {size} bytes; waiting: {waiting_size}; queued for S3: {load_size}; \
             queued to submit: {submit_size}"
        );
        assert!(
            load_size <= 2048,
            "a checkpoint read queued for a slot: {load_size} bytes"
        );
        // What every new job holds while its first read waits for a slot,
        // thousands at once when a backlog arrives.
        println!("a one-part plan's first read: {first_read} bytes");
        assert!(
            first_read <= 2048,
            "a one-part plan's first read queued for a slot: {first_read} bytes"
        );
        // 2 KiB, plus the budget priority a submission carries since long
        // texts (2,080 bytes measured) and its place in the fair line since
        // lanes and tenants (its flow and ticket: 2,120 measured).
        assert!(
            submit_size <= 2048 + 96,
            "a submission queued for a slot: {submit_size} bytes"
        );
        assert!(size <= 4096, "a job's future is {size} bytes");
        assert!(
            waiting_size <= 4096,
            "the waiting state is {waiting_size} bytes"
        );
    }
}
