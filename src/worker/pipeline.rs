//! A valid job's work, without the broker: answer from storage when it is
//! already done, else resume or submit at Segmind, check the audio (submitting
//! again on Gemini's silent failure), store it, record that in the
//! checkpoint, and decide what a failure means for the delivery.
//!
//! Nothing here knows AMQP: [`Pipeline::run`] takes a [`TtsJob`] and its
//! delivery attempt and returns a [`JobEnd`], so it can be driven (and tested)
//! without a broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit, watch};

use tracing::{Instrument, Span, info, warn};

mod parts;

use super::pause::{PauseGate, PauseReason, probe};
use crate::audio::{self, Audio, AudioError};
use crate::checkpoint::{self, Checkpoint, Checkpoints, PartRecord, StitchedRecord, StoredRecord};
use crate::config::{AccountPolicy, JobSettings, LongTextSettings, Settings};
use crate::failure::{self, AsFault, Attempt, Class, Disposition, ErrorCode, Fault, Limits};
use crate::job::{
    Completed, Failed, ForbiddenKey, JobId, KeyPolicy, ObjectKey, Outcome, StoredAudio, TtsJob,
};
use crate::metrics::Metrics;
use crate::quality::SpeakingRate;
use crate::segmind::{SegmindClient, SegmindError, Submitted, Synthesis};
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
    /// The submission step ended without an answer (its task panicked or
    /// the runtime is shutting down); whether Segmind accepted it is unknown.
    #[error("the submission step was interrupted: {0}")]
    Interrupted(String),
    /// The producer's `output_key` reaches the worker's own objects.
    #[error(transparent)]
    ForbiddenKey(#[from] ForbiddenKey),
    /// The key already holds an object another job wrote.
    #[error(
        "output_key {key:?} already holds an object of job {owner:?}; it is not overwritten (choose another key)"
    )]
    KeyTaken { key: String, owner: String },
    /// A long job's stored part is gone or shorter than recorded: its
    /// record is cleared so the next delivery produces it again.
    #[error("{detail}")]
    PartGone { index: usize, detail: String },
    /// The worker is shutting down and the job was waiting: its delivery is
    /// handed to another replica, which resumes it from the checkpoint.
    #[error("handed over: the worker is shutting down")]
    HandedOver,
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
            JobError::ForbiddenKey(_) => Fault::OutputKeyForbidden,
            JobError::KeyTaken { .. } => Fault::OutputKeyTaken,
            // Never classified: `run` ends a handed-over job before.
            JobError::HandedOver => Fault::Deadline,
        }
    }
}

/// What became of Segmind's audio.
enum Stored {
    Done(Box<Completed>),
    /// Empty, truncated or not audio: worth submitting again.
    Unusable(AudioError),
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
}

impl HandOverReason {
    /// Label of `tts_handovers_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandOverReason::Shutdown => "shutdown",
            HandOverReason::Paused { .. } => "paused",
            HandOverReason::NewerVersion => "newer_version",
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
    pub storage: Storage,
    pub checkpoints: Checkpoints,
    pub metrics: Metrics,
    /// Paused on account-level failures; the consumer loop watches it.
    pub pause: PauseGate,
    pub jobs: JobSettings,
    /// Where audio may be stored.
    keys: KeyPolicy,
    /// Bound on one delivery's time at Segmind.
    job_deadline: Duration,
    /// Lower-cased substrings marking a FAILED message as a content block.
    block_patterns: Vec<String>,
    /// Slots of the heavy phase (result, download, checks, upload): the only
    /// part of a job that holds audio.
    transfers: Semaphore,
    /// How long texts are cut and synthesized.
    long_text: LongTextSettings,
    /// Each voice's speaking rate, learned from delivered parts: the
    /// quality gate of a long text's parts.
    speaking_rate: SpeakingRate,
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
            block_patterns: settings.segmind.content_blocked_patterns.clone(),
            transfers: Semaphore::new(settings.jobs.max_transfers),
            long_text: settings.long_text,
            speaking_rate: SpeakingRate::new(),
            handover: watch::Sender::new(false),
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

    /// Runs a valid job (its delivery `attempt`) and decides what its
    /// failure, if any, means: a failure event, a requeue, or a hand-over
    /// that pauses consumption.
    pub async fn run(&self, job: &TtsJob, attempt: Attempt) -> JobEnd {
        let deadline = tokio::time::Instant::now() + self.job_deadline;
        let mut calls = 0u32;
        let mut request_id = None;
        let result = self
            .synthesize_and_store(job, attempt.number, deadline, &mut calls, &mut request_id)
            .await
            .map(|mut completed| {
                completed.segmind_calls = calls;
                completed
            });
        if calls > 0 {
            self.metrics.segmind_calls_per_job.observe(f64::from(calls));
        }
        let err = match result {
            Ok(completed) => return JobEnd::Finished(Box::new(Outcome::Completed(completed))),
            Err(JobError::HandedOver) => {
                info!("handing the job over: the worker is shutting down");
                return JobEnd::HandOver(HandOverReason::Shutdown);
            }
            Err(err) => err,
        };
        let failure = failure::classify(&err, &self.block_patterns);
        let request_id = request_id.or_else(|| match &err {
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

    async fn synthesize_and_store(
        &self,
        job: &TtsJob,
        attempt: u32,
        deadline: tokio::time::Instant,
        calls: &mut u32,
        request_id: &mut Option<String>,
    ) -> Result<Completed, JobError> {
        // Storage calls are boxed: their futures are large, and a job's
        // future is as large as its largest state, paid by every waiting job.
        // A text that fits in one part is planned as that one part.
        let long = job.speech.text.chars().count() > self.long_text.part_chars;
        let checkpoint = Box::pin(self.checkpoints.load(&job.id, &job.speech)).await?;
        // A text of several parts is a long job, unless an earlier version
        // of the worker already submitted it whole (its checkpoint says so):
        // that request is resumed or replayed, not paid again as parts.
        // A deliverable other than Segmind's WAV is rendered, which only the
        // parts' path does (a short text is a plan of one part). A
        // whole-text checkpoint of the same job is not used for it: its
        // audio was delivered as served.
        let rendered = !job.deliverable.is_passthrough();
        if (long && checkpoint.is_none()) || rendered {
            let plan = crate::plan::plan(
                &job.speech.text,
                self.long_text.part_chars,
                job.speech.voice_2.is_some(),
            );
            return Box::pin(self.run_parts(job, attempt, &plan, calls)).await;
        }
        if let Some(cp) = &checkpoint
            && let Some(done) = Box::pin(self.replay_from_storage(job, cp, attempt)).await?
        {
            return Ok(done);
        }
        if let Some(key) = &job.output_key {
            // Refused before anything is paid for.
            let key = self.keys.resolve(key)?;
            Box::pin(self.check_owner(job, &key)).await?;
        }
        let mut resume = checkpoint.filter(|cp| self.checkpoints.resumable(cp, chrono::Utc::now()));
        let mut audio_retries_left = self.jobs.audio_retries;
        let text_chars = job.speech.text.chars().count();
        loop {
            let (submitted, submitted_at, resumed) = match resume.take() {
                Some(cp) => {
                    info!(request_id = %cp.request_id, "resuming the Segmind request from the checkpoint");
                    self.metrics.resumed.with_label_values(&["poll"]).inc();
                    (self.segmind.resume(&cp.request_id), cp.submitted_at, true)
                }
                None => {
                    if self.handing_over() {
                        return Err(JobError::HandedOver);
                    }
                    let (submitted, submitted_at) =
                        self.submit_and_checkpoint(job, deadline, calls).await?;
                    (submitted, submitted_at, false)
                }
            };
            *request_id = Some(submitted.request_id.clone());
            Span::current().record("request_id", submitted.request_id.as_str());
            let fetched = Box::pin(self.wait_and_fetch(
                &submitted,
                submitted_at,
                text_chars,
                deadline,
                calls,
            ))
            .await;
            let (synthesis, slot) = match fetched {
                Err(e)
                    if resumed
                        && failure::classify(&e, &self.block_patterns).code
                            == ErrorCode::Expired =>
                {
                    info!("the resumed request has expired at Segmind; submitting again");
                    continue;
                }
                other => other?,
            };
            // Boxed: the audio, the upload and the completion are large
            // states that a waiting job must not carry.
            let stored = Box::pin(self.store(job, attempt, synthesis, slot, submitted_at)).await?;
            match stored {
                Stored::Done(completed) => return Ok(*completed),
                Stored::Unusable(e) if audio_retries_left > 0 => {
                    audio_retries_left -= 1;
                    self.metrics
                        .retries
                        .with_label_values(&["audio_invalid"])
                        .inc();
                    warn!(error = %e, "Segmind returned unusable audio; submitting again");
                }
                Stored::Unusable(e) => return Err(e.into()),
            }
        }
    }

    /// Checks the audio of `synthesis` and, when usable, uploads it under
    /// the job's key (releasing the transfer `slot` as soon as the upload
    /// ends) and records it in the checkpoint.
    async fn store(
        &self,
        job: &TtsJob,
        attempt: u32,
        synthesis: Synthesis,
        slot: Option<SemaphorePermit<'_>>,
        submitted_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Stored, JobError> {
        if let Some(t) = synthesis.inference_time_seconds {
            self.metrics.inference_duration.observe(t);
        }
        let checked =
            Audio::parse(synthesis.audio, synthesis.content_type.as_deref()).and_then(|a| {
                audio::check_plausible(&a, &job.speech.text, self.jobs.min_seconds_per_word)
                    .map(|()| a)
            });
        let audio = match checked {
            Ok(audio) => audio,
            Err(e) => return Ok(Stored::Unusable(e)),
        };
        let key = self.keys.key_for(job, audio.format.extension())?;
        let upload_started = Instant::now();
        let stored = Box::pin(self.upload_exclusive(job, &key, audio, &synthesis.request_id)).await;
        // The audio is gone with the upload: free the slot for the next job.
        drop(slot);
        self.metrics
            .s3_upload
            .observe(upload_started.elapsed().as_secs_f64());
        let stored = stored?;
        self.metrics.audio_bytes.observe(stored.size_bytes as f64);
        let record =
            StoredRecord::from_stored(&stored, synthesis.inference_time_seconds, synthesis.cost);
        self.save_checkpoint(job, &synthesis.request_id, submitted_at, Some(record))
            .await;
        info!(key = %key, bytes = stored.size_bytes, "audio stored");
        Ok(Stored::Done(Box::new(Completed {
            job_id: job.id.clone(),
            audio: stored,
            request_ids: vec![synthesis.request_id.clone()],
            request_id: synthesis.request_id,
            parts: 1,
            marks_key: None,
            delivery: None,
            inference_time_seconds: synthesis.inference_time_seconds,
            segmind_cost: synthesis.cost,
            // Set by `run`, which counts every call of the delivery.
            segmind_calls: 0,
            attempts: attempt,
            metadata: job.metadata.clone(),
            served_from_storage: false,
        })))
    }

    /// Uploads `audio` to `key` unless an object another job wrote is there.
    /// Two guards: the object's `job-id` metadata, read just before (works on
    /// every store), and a conditional write (`If-None-Match: *`) that closes
    /// the window between the two where the store honours it (AWS S3 does;
    /// Garage 2.5 ignores the header, measured). This job's own object (a
    /// re-run whose checkpoint was not updated) is replaced, and so is an
    /// object without a job id at the job's default key.
    async fn upload_exclusive(
        &self,
        job: &TtsJob,
        key: &ObjectKey,
        audio: Audio,
        request_id: &str,
    ) -> Result<StoredAudio, JobError> {
        let absent = self.check_owner(job, key).await?;
        // The `Bytes` clone shares the audio: it copies nothing.
        let again = audio.clone();
        match self
            .storage
            .put(key, audio, &job.id, request_id, absent)
            .await
        {
            // A store without conditional writes that says so: the check
            // above is the guard.
            Err(e) if e.not_implemented() => {}
            // Written since the check above: replaced only if it is ours.
            Err(e) if e.precondition_failed() => {
                self.check_owner(job, key).await?;
            }
            other => return Ok(other?),
        }
        Ok(self
            .storage
            .put(key, again, &job.id, request_id, false)
            .await?)
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
            Err(JobError::KeyTaken {
                key: key.to_string(),
                owner: info.job_id.unwrap_or_default(),
            })
        }
    }

    /// Submits the job and records its request id in the checkpoint, as one
    /// step that outlives the job: it runs in its own task, so a job dropped
    /// mid-way (its broker session was lost, shutdown's grace ran out) still
    /// checkpoints a request Segmind accepted, and its redelivery resumes it
    /// instead of paying again.
    async fn submit_and_checkpoint(
        &self,
        job: &TtsJob,
        deadline: tokio::time::Instant,
        calls: &mut u32,
    ) -> Result<(Submitted, chrono::DateTime<chrono::Utc>), JobError> {
        let segmind = self.segmind.clone();
        let checkpoints = self.checkpoints.clone();
        let (job_id, speech) = (job.id.clone(), job.speech.clone());
        let step = tokio::spawn(
            async move {
                let mut calls = 0;
                let submitted = segmind.submit(&speech, deadline, &mut calls).await;
                let submitted_at = chrono::Utc::now();
                if let Ok(s) = &submitted {
                    let checkpoint = Checkpoint {
                        job_id: job_id.to_string(),
                        request_id: s.request_id.clone(),
                        submitted_at,
                        fingerprint: checkpoint::fingerprint(&speech),
                        stored: None,
                    };
                    save(&checkpoints, &checkpoint).await;
                }
                (submitted.map(|s| (s, submitted_at)), calls)
            }
            // Its spans belong to the job's trace.
            .in_current_span(),
        );
        match step.await {
            Ok((result, used)) => {
                *calls += used;
                Ok(result?)
            }
            Err(e) => Err(JobError::Interrupted(e.to_string())),
        }
    }

    /// Waits for Segmind to finish `submitted` holding nothing but its ids,
    /// then takes a transfer slot and fetches the result and the audio. The
    /// slot is returned with the audio: it is held until the upload is done.
    async fn wait_and_fetch(
        &self,
        submitted: &Submitted,
        submitted_at: chrono::DateTime<chrono::Utc>,
        text_chars: usize,
        deadline: tokio::time::Instant,
        calls: &mut u32,
    ) -> Result<(Synthesis, Option<SemaphorePermit<'_>>), JobError> {
        // The schedule counts from the submission, also for a resumed job.
        let ago = (chrono::Utc::now() - submitted_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let now = tokio::time::Instant::now();
        let since = now.checked_sub(ago).unwrap_or(now);
        let done = tokio::select! {
            biased;
            () = self.handover_requested() => return Err(JobError::HandedOver),
            done = self.segmind.wait_until_done(submitted, since, text_chars, deadline, calls) => done?,
        };
        self.metrics.transfers_waiting.inc();
        // The semaphore is never closed; `None` would only mean no bound.
        let slot = self.transfers.acquire().await.ok();
        self.metrics.transfers_waiting.dec();
        let synthesis = Box::pin(
            self.segmind
                .fetch_audio(submitted, &done, text_chars, deadline, calls),
        )
        .await?;
        Ok((synthesis, slot))
    }

    /// Writes the checkpoint of `job` (see [`save`]).
    async fn save_checkpoint(
        &self,
        job: &TtsJob,
        request_id: &str,
        submitted_at: chrono::DateTime<chrono::Utc>,
        stored: Option<StoredRecord>,
    ) {
        let checkpoint = Checkpoint {
            job_id: job.id.to_string(),
            request_id: request_id.to_owned(),
            submitted_at,
            fingerprint: checkpoint::fingerprint(&job.speech),
            stored,
        };
        save(&self.checkpoints, &checkpoint).await;
    }

    /// Whether `key` still holds the object a checkpoint recorded (`intact`
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
                "stored audio does not match the checkpoint; producing it again"
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

    /// The completion of a job whose audio is already stored: the facts come
    /// from the checkpoint, and the object must still be there, complete and
    /// matching the checksum, size and job id recorded there.
    async fn replay_from_storage(
        &self,
        job: &TtsJob,
        checkpoint: &Checkpoint,
        attempt: u32,
    ) -> Result<Option<Completed>, JobError> {
        let Some(stored) = &checkpoint.stored else {
            return Ok(None);
        };
        let intact = |info: &ObjectInfo| {
            info.sha256.as_deref() == Some(stored.sha256.as_str())
                && info.size_bytes == Some(stored.size_bytes)
                && info.job_id.as_deref() == Some(job.id.as_str())
        };
        if !self.still_stored(&stored.key, intact).await? {
            return Ok(None);
        }
        Ok(Some(Completed {
            job_id: job.id.clone(),
            audio: StoredAudio {
                bucket: self.storage.bucket().to_owned(),
                key: stored.key.clone(),
                content_type: stored.content_type.clone(),
                size_bytes: stored.size_bytes,
                sha256: stored.sha256.clone(),
                duration_seconds: stored.duration_seconds,
            },
            request_id: checkpoint.request_id.clone(),
            request_ids: vec![checkpoint.request_id.clone()],
            parts: 1,
            marks_key: None,
            delivery: None,
            inference_time_seconds: stored.inference_time_seconds,
            segmind_cost: stored.cost,
            segmind_calls: 0,
            attempts: attempt,
            metadata: job.metadata.clone(),
            served_from_storage: true,
        }))
    }
}

/// Writes a long job's part record (see [`save`]).
async fn save_part(checkpoints: &Checkpoints, job_id: &JobId, index: usize, record: &PartRecord) {
    if let Err(e) = checkpoints.save_part(job_id, index, record).await {
        warn!(error = %e, part = index, "could not write the part's checkpoint; a redelivery would submit it again");
    }
}

/// Writes where a long job's stitched audio went (see [`save`]).
async fn save_stitched(checkpoints: &Checkpoints, job_id: &JobId, record: &StitchedRecord) {
    if let Err(e) = checkpoints.save_stitched(job_id, record).await {
        warn!(error = %e, "could not write the stitch's checkpoint; a repeat would stitch again");
    }
}

/// Writes `checkpoint`. A failure is logged, not fatal: the job can still
/// finish; only a crash-resume of this job would be lost.
async fn save(checkpoints: &Checkpoints, checkpoint: &Checkpoint) {
    if let Err(e) = checkpoints.save(checkpoint).await {
        warn!(error = %e, "could not write the checkpoint; a redelivery of this job would submit again");
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
        // What the job holds while Segmind works: the polling state, boxed.
        let submitted = pipeline.segmind.resume("r-1");
        let mut calls = 0;
        let deadline = tokio::time::Instant::now();
        let waiting =
            pipeline.wait_and_fetch(&submitted, chrono::Utc::now(), 11, deadline, &mut calls);
        let waiting_size = std::mem::size_of_val(&waiting);
        // What a job holds while queued for an S3 or API slot: the SDK's and
        // reqwest's futures are allocated only once the slot is taken.
        let load = pipeline.checkpoints.load(&job.id, &job.speech);
        let load_size = std::mem::size_of_val(&load);
        let mut submit_calls = 0;
        let submit = pipeline
            .segmind
            .submit(&job.speech, deadline, &mut submit_calls);
        let submit_size = std::mem::size_of_val(&submit);
        println!(
            "a job's future: {size} bytes; waiting: {waiting_size}; queued for S3: {load_size}; \
             queued to submit: {submit_size}"
        );
        assert!(
            load_size <= 2048,
            "a checkpoint read queued for a slot: {load_size} bytes"
        );
        // 2 KiB, plus the budget priority a submission carries since long
        // texts (a new job's or a further part's): 2,080 bytes measured.
        assert!(
            submit_size <= 2048 + 64,
            "a submission queued for a slot: {submit_size} bytes"
        );
        assert!(size <= 4096, "a job's future is {size} bytes");
        assert!(
            waiting_size <= 4096,
            "the waiting state is {waiting_size} bytes"
        );
    }
}
