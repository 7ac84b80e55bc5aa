//! The engine every job runs on, in stages: plan (a short text is a plan
//! of one part) → synthesize the parts in parallel, each resumed from its
//! own record → check each part's audio (the one quality gate) → store it →
//! deliver: Segmind's file as served for a one-part job that asks for it
//! ([`JobRun::deliver_as_served`]), else the parts stitched, rendered and
//! uploaded as one stream ([`deliver`]).
//!
//! Paid once, part by part: a part's request id is recorded by the same
//! spawned step that submits it (after a `submitting_since` marker written
//! before the POST), and its audio once stored; a redelivery finds every
//! part where it was: stored parts are not fetched again, running ones are
//! polled, only missing ones are submitted. Every record carries the plan's
//! fingerprint: a record of another text or cut is never used.
//!
//! Fair across jobs: a job has at most one submission at a time (waiting
//! for the rate budget or at Segmind), so every job with parts to submit
//! competes for the next free slot with one submission, whatever its
//! length, and a short job behind a long one waits for a slot or two, not
//! for the long job's parts. Between tenants and lanes the rate budget's
//! line is fair (`segmind::budget`, the job's `Flow`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tracing::{Instrument, Span, info, info_span, warn};

use super::jobs::{DeliveryLimit, JobEntry};
use super::{JobError, Pipeline, save_part, save_stitched};
use crate::align;
use crate::audio::{Audio, AudioError, AudioFormat};
use crate::checkpoint::{
    Loaded, PartAudio, PartsCheckpoint, SentenceSpan, ServedRecord, StitchedRecord,
};
use crate::deliverable::Deliverable;
use crate::failure::{self, ErrorCode};
use crate::job::{Completed, Delivery, ObjectKey, SpeechRequest, StoredAudio, TtsJob, Voice};
use crate::pcm::{self, PcmFormat};
use crate::plan::Part;
use crate::quality::{Verdict, Voices};
use crate::segmind::{CallCount, Submitted};
use crate::spoken::Spoken;
use crate::stitch::{self, Layout};

mod deliver;

/// A part with less speech than this share of its audio is mostly silence.
const MIN_VOICED_SHARE: f64 = 0.2;

/// How often a part marked as being submitted elsewhere is read again.
const MARKER_RECHECK: Duration = Duration::from_secs(1);

/// Pieces a part is split into when its take comes back at Gemini's
/// output cap (`quality::AT_CAP_SECONDS`): a part planned at ≈ 200 s of
/// speech that reaches 500 s speaks at under 40 % of the expected pace,
/// so each third is again well under the cap unless the voice is slower
/// than a third of that. A piece at the cap fails the job
/// (`audio_invalid`): one split, never a cascade of paid takes.
const PIECES_OF_A_CUT_PART: usize = 3;

/// What one Segmind call synthesizes: a part of the plan, or a piece of a
/// part whose take came back cut at the output cap. Its record is the
/// part's, or the piece's inside the part's (one object per part either
/// way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    part: usize,
    piece: Option<usize>,
}

impl Unit {
    fn part(index: usize) -> Self {
        Unit {
            part: index,
            piece: None,
        }
    }
}

/// How a unit's synthesis ended well.
enum Took {
    /// Its audio is stored.
    Stored,
    /// Its take was at the output cap (a part's, never a piece's): the
    /// part is to be split.
    AtCap,
}

/// Unit `u`'s record in `cp`.
fn record(cp: &PartsCheckpoint, u: Unit) -> Option<&crate::checkpoint::PartRecord> {
    cp.parts.get(u.part)?.unit(u.piece)
}

/// Unit `u`'s record in `cp`, to write.
fn record_mut(cp: &mut PartsCheckpoint, u: Unit) -> Option<&mut crate::checkpoint::PartRecord> {
    cp.parts.get_mut(u.part)?.unit_mut(u.piece)
}

/// Applies `change` to unit `u`'s record and saves its part's record. The
/// pieces of a split part share their part's record object, so for a piece
/// the stored record is read first and what another delivery wrote since
/// (a sibling's request or audio) is merged in (`PartRecord::merge`): a
/// stale copy never erases a paid request. A part's record is its own and
/// is written as it is (no extra read per short job).
async fn update_unit(
    checkpoints: &crate::checkpoint::Checkpoints,
    checkpoint: &Mutex<PartsCheckpoint>,
    job_id: &crate::job::JobId,
    u: Unit,
    change: impl FnOnce(&mut crate::checkpoint::PartRecord),
) {
    let mut cp = checkpoint.lock().await;
    if u.piece.is_some() {
        let stamp = cp.stamp().map(str::to_owned);
        if let Ok(Some(stored)) = checkpoints
            .load_part(job_id, u.part, stamp.as_deref())
            .await
            && let Some(part) = cp.parts.get_mut(u.part)
        {
            part.merge(&stored);
        }
    }
    if let Some(r) = record_mut(&mut cp, u) {
        change(r);
    }
    if let Some(part) = cp.parts.get(u.part) {
        save_part(checkpoints, job_id, u.part, part).await;
    }
}

/// One delivery of one job: what every stage reads (the job, its plan, its
/// records) and what the delivery accumulates (calls, request ids).
pub(super) struct JobRun<'a> {
    pipeline: &'a Pipeline,
    job: &'a TtsJob,
    attempt: u32,
    limit: &'a DeliveryLimit,
    /// This job's locks in the process (its submission turn).
    entry: Arc<JobEntry>,
    plan: Vec<Part>,
    /// Segmind's file is delivered as served (a one-part plan asking for
    /// it, unless that part was split: see [`Self::as_served`]).
    as_served: bool,
    /// A part of the plan was split into pieces (its take was at the cap).
    split: std::sync::atomic::AtomicBool,
    /// The plan's records; shared with the spawned submission steps.
    checkpoint: Arc<Mutex<PartsCheckpoint>>,
    /// Shared with the spawned submission steps, which count into it.
    calls: Arc<CallCount>,
    /// The Segmind request this delivery last submitted or resumed (named
    /// in a failure event).
    last_request: std::sync::Mutex<Option<String>>,
    /// Who speaks: the key speaking rates are learned under.
    voices: Voices,
    /// The delivery's `job` span (its `request_id` field is set here).
    span: Span,
    /// The job's start slot (`jobs.max_starting`), released once it has
    /// started: a request submitted or resumed, or every part stored.
    starting: std::sync::Mutex<Option<tokio::sync::SemaphorePermit<'a>>>,
}

/// What a submission turn found.
enum Submission {
    /// Submitted now: the request, when, and its deadline.
    Sent(
        Submitted,
        chrono::DateTime<chrono::Utc>,
        tokio::time::Instant,
    ),
    /// Another step recorded a request for the part meanwhile: resumed.
    Found(String, chrono::DateTime<chrono::Utc>),
    /// Another delivery stored the part meanwhile.
    Stored,
    /// Another delivery split the part meanwhile (its take was at the cap).
    Split,
}

/// A part's audio as a 16-bit PCM WAV file, whatever Segmind served: a WAV
/// (or raw PCM) as is, an MP3 decoded (off the async threads).
async fn as_wav(audio: Audio, max_bytes: u64) -> Result<bytes::Bytes, AudioError> {
    match audio.format {
        AudioFormat::Wav => Ok(audio.bytes),
        AudioFormat::Mp3 => {
            let pcm = tokio::task::spawn_blocking(move || {
                crate::audio::decode_mp3(audio.bytes, max_bytes)
            })
            .await
            .map_err(|e| AudioError::Undecodable {
                format: "mp3",
                detail: e.to_string(),
            })??;
            let format = PcmFormat {
                sample_rate: pcm.sample_rate,
                channels: pcm.channels,
            };
            let wav = pcm::wav_of(&pcm.samples, format).map_err(|e| AudioError::Undecodable {
                format: "mp3",
                detail: e.to_string(),
            })?;
            Ok(bytes::Bytes::from(wav))
        }
        other => Err(AudioError::NotStitchable {
            format: other.extension(),
        }),
    }
}

/// The plan as delivered: each split part's pieces in its place, and where
/// each entry's record is (the stitch, the marks and the captions follow
/// it).
struct DeliveredPlan {
    plan: Vec<Part>,
    units: Vec<Unit>,
}

/// Where a part's speech is in its WAV file.
struct SpeechSpan {
    /// Byte range of the samples in the file, and the frames of speech.
    data: std::ops::Range<usize>,
    kept: std::ops::Range<u64>,
    format: PcmFormat,
    /// Byte offset of its first frame.
    data_offset: u64,
    frames: u64,
}

impl<'a> JobRun<'a> {
    pub(super) fn new(
        pipeline: &'a Pipeline,
        job: &'a TtsJob,
        attempt: u32,
        limit: &'a DeliveryLimit,
        entry: Arc<JobEntry>,
        starting: Option<tokio::sync::SemaphorePermit<'a>>,
    ) -> Self {
        let part_chars = pipeline.long_text.part_chars;
        let plan = crate::plan::plan_of(&job.speech.text, part_chars, job.speech.voice_2.is_some());
        let as_served = plan.len() == 1 && job.deliverable.is_passthrough();
        let checkpoint = PartsCheckpoint::new(&job.id, &job.speech, part_chars, &plan);
        JobRun {
            pipeline,
            job,
            attempt,
            limit,
            entry,
            plan,
            as_served,
            split: std::sync::atomic::AtomicBool::new(false),
            checkpoint: Arc::new(Mutex::new(checkpoint)),
            calls: Arc::default(),
            last_request: std::sync::Mutex::new(None),
            voices: (
                job.speech.voice_1.name(),
                job.speech.voice_2.map(Voice::name),
            ),
            span: Span::current(),
            starting: std::sync::Mutex::new(starting),
        }
    }

    /// The job has started: its start slot goes to the next job.
    fn started(&self) {
        drop(
            self.starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    /// The sizes of the futures a waiting job holds: its stages, one part
    /// and its unit's work, the stage that synthesizes every part (for the
    /// memory test).
    #[cfg(test)]
    pub(super) fn future_sizes(&self) -> [usize; 6] {
        [
            std::mem::size_of_val(&self.execute()),
            std::mem::size_of_val(&self.part(0)),
            std::mem::size_of_val(&self.unit(Unit::part(0))),
            std::mem::size_of_val(&self.synthesize_parts()),
            std::mem::size_of_val(&self.submit(Unit::part(0))),
            std::mem::size_of_val(&self.recheck(Unit::part(0), (None, false))),
        ]
    }

    /// Segmind calls this delivery made (retries included).
    pub(super) fn calls(&self) -> u32 {
        self.calls.get()
    }

    /// The Segmind request this delivery last submitted or resumed.
    pub(super) fn last_request_id(&self) -> Option<String> {
        self.last_request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_request(&self, request_id: &str) {
        self.span.record("request_id", request_id);
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Some(request_id.to_owned());
    }

    /// The stages: plan → synthesize and check the parts → deliver. Each
    /// is its own (boxed) future, so a job waiting on Segmind holds only the
    /// synthesis's state, not the plan's reads nor the delivery's.
    pub(super) async fn execute(&self) -> Result<Completed, JobError> {
        if let Some(done) = Box::pin(self.prepare()).await? {
            return Ok(done);
        }
        if self.plan.len() > 1 {
            info!(
                parts = self.plan.len(),
                parallel = self.pipeline.long_text.max_parallel_parts,
                "long text: synthesizing its parts"
            );
        }
        // Stage: synthesize, check and store every part.
        Box::pin(self.synthesize_parts()).await?;
        // Stage: deliver.
        self.started();
        Box::pin(self.deliver()).await
    }

    /// Stage: the plan and its records. A job already delivered is
    /// answered from storage (`Some`); otherwise the plan is recorded (a new
    /// plan replaces another's records) once the producer's key is known to
    /// be free for this job.
    async fn prepare(&self) -> Result<Option<Completed>, JobError> {
        let pipeline = self.pipeline;
        let job = self.job;
        let loaded = Box::pin(pipeline.checkpoints.load_plan(
            &job.id,
            &job.speech,
            pipeline.long_text.part_chars,
            &self.plan,
        ))
        .await?;
        let stale = match loaded {
            Loaded::Found(cp) => {
                if let Some(done) = Box::pin(self.replay(&cp)).await? {
                    return Ok(Some(done));
                }
                *self.checkpoint.lock().await = *cp;
                None
            }
            Loaded::Fresh { stale } => Some(stale),
        };
        // A producer's key held by another job is refused before anything
        // is paid for (a default key is the job's own: no other job can
        // write under the worker's prefix).
        let key = pipeline
            .keys
            .key_for(job, job.deliverable.format.extension())?;
        if job.output_key.is_some() {
            Box::pin(pipeline.check_owner(job, &key)).await?;
        }
        if let Some(stale) = stale {
            let cp = self.checkpoint.lock().await.clone();
            Box::pin(
                pipeline
                    .checkpoints
                    .start_plan(&job.id, &cp, stale.as_ref()),
            )
            .await?;
        }
        Ok(None)
    }

    /// Stage: every part's audio, stored, delivered as one object.
    async fn deliver(&self) -> Result<Completed, JobError> {
        let (delivered, records) = {
            let cp = self.checkpoint.lock().await;
            let (plan, units) = self.delivered_plan(&cp)?;
            let records: Option<Vec<PartAudio>> = units
                .iter()
                .map(|u| record(&cp, *u).and_then(|r| r.audio.clone()))
                .collect();
            (DeliveredPlan { plan, units }, records)
        };
        // Every part future ended well, so every part (or each of its
        // pieces) has its audio.
        let Some(records) = records else {
            return Err(JobError::Invariant(
                "a part ended without its audio recorded".into(),
            ));
        };
        if self.as_served() {
            Box::pin(self.deliver_as_served(&records)).await
        } else {
            let key = self
                .pipeline
                .keys
                .key_for(self.job, self.job.deliverable.format.extension())?;
            Box::pin(self.deliver_rendered(&key, &records, &delivered)).await
        }
    }

    /// The completion of a job whose delivered audio is already stored: the
    /// record is of this plan, rendered for the same options, at the key
    /// asked now, and the object is still the one written then.
    async fn replay(&self, cp: &PartsCheckpoint) -> Result<Option<Completed>, JobError> {
        let in_place = self.served_in_place(cp);
        let Some(stored) = cp.stored.as_ref().or(in_place.as_ref()) else {
            return Ok(None);
        };
        let job = self.job;
        // Rendered for other options: another deliverable, rendered anew
        // (a record of an earlier version is Segmind's WAV as served).
        let rendered_for = stored
            .deliverable
            .clone()
            .unwrap_or_else(|| Deliverable::default().fingerprint());
        // A multipart object has no `sha256` metadata: its ETag changes if
        // it is written again.
        let intact = |info: &crate::storage::ObjectInfo| {
            info.size_bytes == Some(stored.size_bytes)
                && info.job_id.as_deref() == Some(job.id.as_str())
                && (stored.etag.is_none() || info.etag == stored.etag)
                && info
                    .sha256
                    .as_deref()
                    .is_none_or(|sha| sha == stored.sha256)
        };
        if rendered_for != job.deliverable.fingerprint() {
            // Another deliverable. At the key its event named, still as
            // written, it is kept: never silently replaced by a rendering
            // with other options (its event's sha256 would lie).
            let asked = self
                .pipeline
                .keys
                .key_for(job, job.deliverable.format.extension())?;
            if asked.as_str() == stored.key
                && self.pipeline.still_stored(&stored.key, intact).await?
            {
                return Err(JobError::RenderedOtherwise {
                    key: stored.key.clone(),
                    options: rendered_for,
                });
            }
            info!(stored = %rendered_for, asked = %job.deliverable.fingerprint(), "the stored audio was rendered for other options; delivering under the key asked");
            return Ok(None);
        }
        let content_type = stored
            .content_type
            .clone()
            .unwrap_or_else(|| job.deliverable.format.content_type().to_owned());
        let asked = self
            .pipeline
            .keys
            .key_for(job, extension_of(&content_type, &job.deliverable))?;
        let moved = asked.as_str() != stored.key;
        // Segmind's file as served is delivered again by its part (stored
        // under the earlier key): `deliver_as_served` copies it.
        if moved && stored.marks_key.is_none() {
            info!(stored = %stored.key, asked = %asked, "the stored audio is at another key than asked now; delivering again");
            return Ok(None);
        }
        if !self.pipeline.still_stored(&stored.key, intact).await? {
            return Ok(None);
        }
        let parts: Vec<&PartAudio> = cp
            .parts
            .iter()
            .filter_map(|p| p.delivered_audio())
            .flatten()
            .collect();
        if moved {
            // A rendered delivery asked under another key: copied there
            // (audio, marks, captions), not rendered nor paid again.
            let Some(moved) = Box::pin(self.move_delivery(stored, &asked, &cp.fingerprint)).await?
            else {
                return Ok(None);
            };
            return Ok(Some(completed(
                job,
                StoredAudio {
                    bucket: self.pipeline.storage.bucket().to_owned(),
                    key: moved.key.clone(),
                    content_type,
                    size_bytes: moved.size_bytes,
                    sha256: moved.sha256.clone(),
                    duration_seconds: moved.duration_seconds,
                },
                &parts,
                moved.marks_key.clone(),
                moved.delivery.clone().map(Box::new),
                self.attempt,
                true,
            )));
        }
        Ok(Some(completed(
            job,
            StoredAudio {
                bucket: self.pipeline.storage.bucket().to_owned(),
                key: stored.key.clone(),
                content_type,
                size_bytes: stored.size_bytes,
                sha256: stored.sha256.clone(),
                duration_seconds: stored.duration_seconds,
            },
            &parts,
            stored.marks_key.clone(),
            stored.delivery.clone().map(Box::new),
            self.attempt,
            true,
        )))
    }

    /// The delivery record of a one-part job delivered as served under the
    /// job's key: its part's record says it all (no delivery record is
    /// written for it).
    fn served_in_place(&self, cp: &PartsCheckpoint) -> Option<StitchedRecord> {
        let part = cp.parts.first()?;
        if !self.as_served || !part.pieces.is_empty() {
            return None;
        }
        let audio = part.audio.as_ref()?;
        let served = audio.as_served.as_ref()?;
        Some(StitchedRecord::served(
            cp.fingerprint(),
            &audio.key,
            served,
            Some(Deliverable::default().fingerprint()),
        ))
    }

    /// Synthesizes, checks and stores every part, a few at a time. A part
    /// that fails in a way a resend may not ([`finish_the_others`]) lets the
    /// other parts finish, so that a resend pays only for it; any other
    /// failure ends the stage at once (the next delivery resumes every
    /// part), but not before the submission in flight (its own task) has
    /// recorded its request id.
    async fn synthesize_parts(&self) -> Result<(), JobError> {
        if self.plan.len() == 1 {
            // One part: no stream to keep (a short job's memory, times
            // thousands waiting).
            return match Box::pin(self.part(0)).await {
                Err(e) => Err(Box::pin(self.after_failure(e)).await),
                Ok(()) => Ok(()),
            };
        }
        Box::pin(self.synthesize_several()).await
    }

    /// The parts' stage of a plan of several parts: up to
    /// `long_text.max_parallel_parts` at once.
    async fn synthesize_several(&self) -> Result<(), JobError> {
        self.report_progress().await;
        // Each part reports progress from its own future: awaiting the
        // record's lock here, between two polls of the stream, would wait
        // for a part that holds it and is not polled meanwhile.
        let mut parts = futures_util::stream::iter(0..self.plan.len())
            .map(|index| {
                Box::pin(async move {
                    let done = self.part(index).await;
                    if done.is_ok() {
                        self.report_progress().await;
                    }
                    done
                })
            })
            .buffer_unordered(self.pipeline.long_text.max_parallel_parts);
        let mut failed: Option<JobError> = None;
        while let Some(done) = parts.next().await {
            let Err(e) = done else { continue };
            let go_on = self.others_go_on_after(&e);
            if failed.is_none() {
                failed = Some(e);
            }
            if !go_on {
                break;
            }
            info!(
                "a part failed for good; the other parts finish so that a resend pays only for it"
            );
        }
        drop(parts);
        match failed {
            Some(e) => Err(self.after_failure(e).await),
            None => Ok(()),
        }
    }

    /// Notes how far the job has come, for its progress events (read by
    /// `Pipeline::progress_of`).
    async fn report_progress(&self) {
        let progress = self.checkpoint.lock().await.progress();
        *self
            .entry
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(progress);
    }

    /// What ends the parts' stage with `e`: handed over, nothing to wait for
    /// (the submission in flight, its own task, records its request on its
    /// own; a redelivery here waits for the job's turn, one elsewhere for
    /// the part's marker); else the submission in flight is waited for,
    /// within the delivery's lifetime, so the failure names its request.
    async fn after_failure(&self, e: JobError) -> JobError {
        if !matches!(e, JobError::HandedOver(_)) {
            tokio::select! {
                _ = self.entry.submit.clone().lock_owned() => {}
                _ = self.pipeline.hand_over_requested(self.limit) => {}
            }
        }
        e
    }

    /// Whether the job's other parts (or a split part's other pieces) go on
    /// after one ended with `e`: not after a hand-over, else as
    /// [`finish_the_others`] decides.
    fn others_go_on_after(&self, e: &JobError) -> bool {
        !matches!(e, JobError::HandedOver(_))
            && finish_the_others(&failure::classify(e, &self.pipeline.block_patterns))
    }

    /// Whether a stored part's audio serves this delivery: read back as PCM
    /// for a rendered deliverable, or as it is for one delivered as served.
    fn usable(&self, audio: &PartAudio) -> bool {
        self.as_served() || audio.stitchable()
    }

    /// Whether Segmind's file is delivered as served: asked for, and its
    /// one part not split (pieces are stitched like a long job's parts).
    fn as_served(&self) -> bool {
        self.as_served && !self.split.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pieces part `index` is split into ([`crate::plan::split`]).
    fn pieces_of(&self, index: usize) -> Vec<Part> {
        crate::plan::split(
            &self.job.speech.text,
            &self.plan[index],
            PIECES_OF_A_CUT_PART,
            self.job.speech.voice_2.is_some(),
        )
    }

    /// What unit `u` speaks.
    fn unit_part(&self, u: Unit) -> Result<std::borrow::Cow<'_, Part>, JobError> {
        match u.piece {
            None => Ok(std::borrow::Cow::Borrowed(&self.plan[u.part])),
            Some(j) => self
                .pieces_of(u.part)
                .into_iter()
                .nth(j)
                .map(std::borrow::Cow::Owned)
                .ok_or_else(|| {
                    JobError::Invariant(format!(
                        "part {} has no piece {j}: its split changed since it was recorded",
                        u.part
                    ))
                }),
        }
    }

    /// The plan as delivered, with each split part's pieces in its place,
    /// and where each entry's record is.
    fn delivered_plan(&self, cp: &PartsCheckpoint) -> Result<(Vec<Part>, Vec<Unit>), JobError> {
        let mut plan = Vec::with_capacity(self.plan.len());
        let mut units = Vec::with_capacity(self.plan.len());
        for (index, part) in self.plan.iter().enumerate() {
            let pieces = cp.parts.get(index).map_or(0, |r| r.pieces.len());
            if pieces == 0 {
                plan.push(part.clone());
                units.push(Unit::part(index));
            } else {
                let split = self.pieces_of(index);
                if split.len() != pieces {
                    return Err(JobError::Invariant(format!(
                        "part {index} was recorded as {pieces} pieces but splits into {}",
                        split.len()
                    )));
                }
                plan.extend(split);
                units.extend((0..pieces).map(|j| Unit {
                    part: index,
                    piece: Some(j),
                }));
            }
        }
        Ok((plan, units))
    }

    /// One part to its stored audio ([`Self::unit`]). A part whose take
    /// comes back at Gemini's output cap is split: its pieces are recorded
    /// in its record, then synthesized one after the other like parts,
    /// and delivered in its place.
    async fn part(&self, index: usize) -> Result<(), JobError> {
        let part = &self.plan[index];
        // A span per part of a long job; a short job's steps are the job
        // span's own children (a span costs memory, times thousands).
        let span = if self.plan.len() > 1 {
            info_span!("part", index, chars = part.text.chars().count())
        } else {
            Span::none()
        };
        async move {
            let split = {
                let cp = self.checkpoint.lock().await;
                cp.parts.get(index).is_some_and(|r| !r.pieces.is_empty())
            };
            // Not boxed: the part's own unit is what a waiting job holds,
            // in the part's allocation.
            if !split && let Took::Stored = self.unit(Unit::part(index)).await? {
                return Ok(());
            }
            Box::pin(self.pieces(index)).await
        }
        .instrument(span)
        .await
    }

    /// Part `index` as pieces: split now (its take was at the cap) unless a
    /// delivery did already, then each piece synthesized in turn.
    async fn pieces(&self, index: usize) -> Result<(), JobError> {
        let recorded = {
            let cp = self.checkpoint.lock().await;
            cp.parts.get(index).map_or(0, |r| r.pieces.len())
        };
        let pieces = match recorded {
            0 => self.split_part(index).await?,
            n => n,
        };
        self.split.store(true, std::sync::atomic::Ordering::Relaxed);
        // Like the parts: a piece that fails in a way a resend may not lets
        // the others finish, so that the resend pays only for it.
        let mut failed = None;
        for j in 0..pieces {
            let piece = Unit {
                part: index,
                piece: Some(j),
            };
            match Box::pin(self.unit(piece).instrument(info_span!("piece", index = j))).await {
                Ok(Took::Stored) => {}
                Ok(Took::AtCap) => {
                    return Err(JobError::Invariant(
                        "a piece's take at the cap was not failed".into(),
                    ));
                }
                Err(e) => {
                    if !self.others_go_on_after(&e) {
                        return Err(e);
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Records part `index` as split into pieces (its take came back at
    /// the output cap): the pieces' empty records in the part's, before
    /// any piece is paid. Returns how many pieces.
    async fn split_part(&self, index: usize) -> Result<usize, JobError> {
        let pieces = self.pieces_of(index).len();
        if pieces < 2 {
            return Err(AudioError::AtOutputCap {
                seconds: crate::quality::AT_CAP_SECONDS,
            }
            .into());
        }
        warn!(
            pieces,
            "the part's take is at Gemini's output cap, so cut: splitting the part and synthesizing its pieces"
        );
        self.pipeline
            .metrics
            .retries
            .with_label_values(&["output_cap"])
            .inc();
        let mut cp = self.checkpoint.lock().await;
        let stamp = cp.stamp().map(str::to_owned);
        // Another delivery may have split it already: its pieces are kept.
        let stored = self
            .pipeline
            .checkpoints
            .load_part(&self.job.id, index, stamp.as_deref())
            .await?;
        let record = &mut cp.parts[index];
        if let Some(stored) = stored.filter(|r| !r.pieces.is_empty()) {
            record.merge(&stored);
            return Ok(record.pieces.len());
        }
        record.request_id = None;
        record.submitted_at = None;
        record.pieces = vec![
            crate::checkpoint::PartRecord {
                plan: stamp,
                ..Default::default()
            };
            pieces
        ];
        save_part(&self.pipeline.checkpoints, &self.job.id, index, record).await;
        Ok(pieces)
    }

    /// One unit (a part, or a piece of one) to its stored audio: kept if
    /// already stored, resumed if submitted, else submitted; its audio
    /// checked (resubmitted when unusable, within `jobs.audio_retries`) and
    /// stored. A part's take at the output cap ends it as [`Took::AtCap`];
    /// a piece's fails it.
    async fn unit(&self, u: Unit) -> Result<Took, JobError> {
        let (record, request) = {
            let cp = self.checkpoint.lock().await;
            let r = record(&cp, u)
                .ok_or_else(|| JobError::Invariant("a unit of the plan has no record".into()))?;
            (r.audio.clone(), r.request_id.clone().zip(r.submitted_at))
        };
        if let Some(audio) = record.filter(|a| self.usable(a)) {
            let info = Box::pin(self.pipeline.storage.head(&audio.key)).await?;
            if info
                .as_ref()
                .is_some_and(|info| still_the_take(&audio, info))
            {
                return Ok(Took::Stored);
            }
            warn!(key = %audio.key, "a stored part is missing or replaced; producing it again");
        }
        let chars = self.unit_part(u)?.text.chars().count();
        let mut resume = request.filter(|(_, at)| {
            self.pipeline
                .checkpoints
                .resumable_since(*at, chrono::Utc::now())
        });
        let mut retries_left = self.pipeline.jobs.audio_retries;
        loop {
            let (submitted, submitted_at, resumed, deadline) = match resume.take() {
                Some((request_id, at)) => {
                    info!(request_id = %request_id, "resuming the part's Segmind request");
                    self.pipeline
                        .metrics
                        .resumed
                        .with_label_values(&["poll"])
                        .inc();
                    let deadline = tokio::time::Instant::now() + self.pipeline.job_deadline;
                    (
                        self.pipeline.segmind.resume(&request_id),
                        at,
                        true,
                        deadline,
                    )
                }
                None => {
                    if let Some(reason) = self.pipeline.must_hand_over(self.limit) {
                        return Err(JobError::HandedOver(reason));
                    }
                    // Boxed, like every step but the wait: a part's
                    // future is what a waiting job holds.
                    match Box::pin(self.submit(u)).await? {
                        Submission::Sent(s, at, deadline) => (s, at, false, deadline),
                        Submission::Found(request_id, at) => {
                            resume = Some((request_id, at));
                            continue;
                        }
                        Submission::Stored => return Ok(Took::Stored),
                        Submission::Split => return Ok(Took::AtCap),
                    }
                }
            };
            self.note_request(&submitted.request_id);
            self.started();
            let fetched = Box::pin(self.pipeline.wait_and_fetch(
                &submitted,
                submitted_at,
                chars,
                deadline,
                self.limit,
                &self.calls,
            ))
            .await;
            let (synthesis, slot) = match fetched {
                Err(JobError::HandedOver(reason)) => return Err(JobError::HandedOver(reason)),
                Err(e) => {
                    let code = failure::classify(&e, &self.pipeline.block_patterns).code;
                    if resumed && code == ErrorCode::Expired {
                        info!(
                            "the part's resumed request has expired at Segmind; submitting again"
                        );
                        continue;
                    }
                    if !code.keeps_paid_request() {
                        // Its result is final: never resumed again.
                        Box::pin(self.forget_request(u)).await;
                    }
                    return Err(e);
                }
                Ok(fetched) => fetched,
            };
            // Paid: booked for the tenant's cap across the fleet.
            if let Some(cost) = synthesis.cost {
                self.pipeline.fleet.book(&self.job.flow, cost);
            }
            // Checked and stored in its own (boxed) future: a part
            // waiting on Segmind does not carry the audio's state.
            let request_id = synthesis.request_id.clone();
            let unusable = Box::pin(self.keep_take(u, synthesis, slot)).await?;
            match unusable {
                None => return Ok(Took::Stored),
                // A part's take at the cap: the part is split (its
                // request is replaced by its pieces').
                Some(AudioError::AtOutputCap { .. }) if u.piece.is_none() => {
                    return Ok(Took::AtCap);
                }
                // Audio the worker cannot use whatever the take (a
                // format it does not read, a piece at the cap) is not
                // paid for again.
                Some(e) if !worth_resubmitting(&e) => {
                    Box::pin(self.forget_request(u)).await;
                    return Err(e.into());
                }
                Some(e) if retries_left > 0 => {
                    retries_left -= 1;
                    self.pipeline
                        .metrics
                        .retries
                        .with_label_values(&["audio_invalid"])
                        .inc();
                    warn!(error = %e, request_id = %request_id, "the part's audio is unusable; submitting the part again");
                }
                Some(e) => {
                    Box::pin(self.forget_request(u)).await;
                    return Err(e.into());
                }
            }
        }
    }

    /// Checks a fetched take of unit `u` and stores it with its record;
    /// `Ok(Some(e))` when its audio is unusable (nothing stored). The
    /// transfer `slot` is released once the audio is stored.
    async fn keep_take(
        &self,
        u: Unit,
        synthesis: crate::segmind::Synthesis,
        slot: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Result<Option<AudioError>, JobError> {
        if let Some(t) = synthesis.inference_time_seconds {
            self.pipeline.metrics.inference_duration.observe(t);
        }
        let joined = self.stitch_format().await;
        let part = self.unit_part(u)?;
        let part = part.as_ref();
        let checked = match Audio::parse(synthesis.audio.clone(), synthesis.content_type.as_deref())
        {
            Ok(served) => Box::pin(as_wav(served.clone(), self.pipeline.max_audio_bytes))
                .await
                .and_then(|wav| self.checked(wav, part, joined))
                .map(|(wav, speech)| (served, wav, speech)),
            Err(e) => Err(e),
        };
        let (served, wav, speech) = match checked {
            Ok(checked) => checked,
            Err(e) => return Ok(Some(e)),
        };
        let record = if self.as_served() {
            Box::pin(self.store_as_served(served, &speech, &synthesis)).await?
        } else {
            drop(served);
            Box::pin(self.store_part(u.part, wav, &speech, part, &synthesis)).await?
        };
        drop(slot);
        Box::pin(update_unit(
            &self.pipeline.checkpoints,
            &self.checkpoint,
            &self.job.id,
            u,
            |r| r.audio = Some(record),
        ))
        .await;
        Ok(None)
    }

    /// Forgets unit `u`'s request: its result is final (it failed, or its
    /// audio is unusable), so no later delivery resumes it.
    async fn forget_request(&self, u: Unit) {
        let known = {
            let cp = self.checkpoint.lock().await;
            record(&cp, u).is_some_and(|r| r.request_id.is_some())
        };
        if known {
            update_unit(
                &self.pipeline.checkpoints,
                &self.checkpoint,
                &self.job.id,
                u,
                |r| {
                    r.request_id = None;
                    r.submitted_at = None;
                },
            )
            .await;
        }
    }

    /// Stores a part's checked audio (a WAV) as an intermediate object
    /// named after its take, with where its sentences are.
    async fn store_part(
        &self,
        index: usize,
        audio: bytes::Bytes,
        speech: &SpeechSpan,
        part: &Part,
        synthesis: &crate::segmind::Synthesis,
    ) -> Result<PartAudio, JobError> {
        let sentences = self.sentences(&audio, speech, part).await;
        let key =
            self.pipeline
                .checkpoints
                .part_audio_key(&self.job.id, index, &synthesis.request_id);
        let started = std::time::Instant::now();
        // The bytes move into the request: no copy is made.
        self.pipeline
            .storage
            .put_bytes(&key, audio, AudioFormat::Wav.content_type())
            .await?;
        self.pipeline
            .metrics
            .s3_upload
            .observe(started.elapsed().as_secs_f64());
        Ok(PartAudio {
            key,
            request_id: synthesis.request_id.clone(),
            data_offset: speech.data_offset,
            frames: speech.frames,
            sentences,
            sample_rate: speech.format.sample_rate,
            channels: speech.format.channels,
            inference_time_seconds: synthesis.inference_time_seconds,
            cost: synthesis.cost,
            as_served: None,
        })
    }

    /// Stores Segmind's file as served under the job's key: the part's
    /// object is the delivered audio.
    async fn store_as_served(
        &self,
        served: Audio,
        speech: &SpeechSpan,
        synthesis: &crate::segmind::Synthesis,
    ) -> Result<PartAudio, JobError> {
        let key = self
            .pipeline
            .keys
            .key_for(self.job, served.format.extension())?;
        let stored = self
            .pipeline
            .upload_exclusive(self.job, &key, served, &synthesis.request_id)
            .await?;
        info!(key = %key, bytes = stored.size_bytes, "audio stored as served");
        Ok(PartAudio {
            key: stored.key.clone(),
            request_id: synthesis.request_id.clone(),
            data_offset: speech.data_offset,
            frames: speech.frames,
            sentences: Vec::new(),
            sample_rate: speech.format.sample_rate,
            channels: speech.format.channels,
            inference_time_seconds: synthesis.inference_time_seconds,
            cost: synthesis.cost,
            as_served: Some(ServedRecord::of(&stored)),
        })
    }

    /// Takes the job's submission turn and submits part `index`, recording
    /// its request id, as one step that outlives the delivery: it runs in
    /// its own task, so a delivery dropped mid-way (its broker session was
    /// lost, shutdown's grace ran out) still records a request Segmind
    /// accepted, and the redelivery resumes it instead of paying again.
    /// The part's deadline starts once the turn is granted.
    async fn submit(&self, u: Unit) -> Result<Submission, JobError> {
        let (turn, contended) = match self.entry.submit.clone().try_lock_owned() {
            Ok(turn) => (turn, false),
            Err(_) => tokio::select! {
                turn = self.entry.submit.clone().lock_owned() => (turn, true),
                reason = self.pipeline.hand_over_requested(self.limit) => {
                    return Err(JobError::HandedOver(reason));
                }
            },
        };
        // Read again only when another step may have written the record
        // (boxed: the common case holds none of the reading's state).
        if let Some(known) = self.needs_recheck(u, contended).await
            && let Some(found) = Box::pin(self.recheck(u, known)).await?
        {
            return Ok(found);
        }
        let deadline = tokio::time::Instant::now() + self.pipeline.job_deadline;
        // The step keeps the job's entry alive: a redelivery in this process
        // finds the same turn, held, and waits for it.
        let entry = self.entry.clone();
        let job_id = self.job.id.clone();
        let segmind = self.pipeline.segmind.clone();
        let checkpoints = self.pipeline.checkpoints.clone();
        let checkpoint = self.checkpoint.clone();
        let calls = self.calls.clone();
        let flow = self.job.flow.clone();
        // Built for the step only: a part waiting on Segmind does not hold
        // a second copy of its text.
        let speech = SpeechRequest {
            text: std::sync::Arc::from(&*self.unit_part(u)?.text),
            ..self.job.speech.clone()
        };
        let step = tokio::spawn(
            async move {
                let _held = (entry, turn);
                // Before the POST: another replica finding this part waits
                // for its answer instead of paying again.
                Box::pin(update_unit(&checkpoints, &checkpoint, &job_id, u, |r| {
                    r.submitting_since = Some(chrono::Utc::now());
                }))
                .await;
                // Boxed, like the writes: a step queued for a storage slot
                // (thousands at once when a backlog arrives) holds a few
                // hundred bytes, not the submission's state.
                let submitted = Box::pin(segmind.submit(&speech, deadline, &calls, &flow)).await;
                let submitted_at = chrono::Utc::now();
                let request_id = submitted.as_ref().ok().map(|s| s.request_id.clone());
                Box::pin(update_unit(
                    &checkpoints,
                    &checkpoint,
                    &job_id,
                    u,
                    |record| {
                        record.submitting_since = None;
                        if let Some(request_id) = request_id {
                            record.request_id = Some(request_id);
                            record.submitted_at = Some(submitted_at);
                            record.submissions += 1;
                        }
                    },
                ))
                .await;
                submitted.map(|s| (s, submitted_at))
            }
            .in_current_span(),
        );
        match step.await {
            Ok(result) => {
                let (submitted, at) = result?;
                Ok(Submission::Sent(submitted, at, deadline))
            }
            // Its record says whether Segmind accepted it.
            Err(e) if e.is_panic() => Err(JobError::Invariant(format!(
                "the submission step panicked: {e}"
            ))),
            Err(e) => Err(JobError::Interrupted(e.to_string())),
        }
    }

    /// Whether a `submitting_since` marker is younger than its bound.
    fn marker_live(&self, since: Option<chrono::DateTime<chrono::Utc>>) -> bool {
        since.is_some_and(|s| {
            (chrono::Utc::now() - s)
                .to_std()
                .map_or(true, |age| age < self.pipeline.marker_bound)
        })
    }

    /// What [`Self::recheck`] starts from — the request id known and whether
    /// the part is marked as being submitted — or `None` when nothing needs
    /// reading again (the turn was free and no marker is live).
    async fn needs_recheck(&self, u: Unit, contended: bool) -> Option<(Option<String>, bool)> {
        let cp = self.checkpoint.lock().await;
        let r = record(&cp, u)?;
        let marked = self.marker_live(r.submitting_since);
        (contended || marked).then(|| (r.request_id.clone(), marked))
    }

    /// Before submitting part `index`: reads its record again when another
    /// step may have written it since it was loaded (the turn was held by
    /// another delivery's step, or the record says a submission is under
    /// way, perhaps on another replica). A fresh `submitting_since` marker
    /// is waited on until it resolves or ages out (the part's deadline plus
    /// `s3.operation_timeout` plus [`crate::checkpoint::MARKER_MARGIN`]).
    async fn recheck(
        &self,
        u: Unit,
        (mut known, mut marked): (Option<String>, bool),
    ) -> Result<Option<Submission>, JobError> {
        let live = |since| self.marker_live(since);
        let stamp = self.checkpoint.lock().await.stamp().map(str::to_owned);
        loop {
            let fresh = self
                .pipeline
                .checkpoints
                .load_part(&self.job.id, u.part, stamp.as_deref())
                .await?;
            // The part's record as stored, and this unit's in it (a piece
            // of a split another delivery has not recorded: nothing to
            // read).
            let Some(whole) = fresh else {
                return Ok(None);
            };
            // What another delivery wrote is kept, whatever this unit does
            // next; and a part it split goes on as pieces.
            self.checkpoint.lock().await.parts[u.part].merge(&whole);
            if u.piece.is_none() && !whole.pieces.is_empty() {
                return Ok(Some(Submission::Split));
            }
            let Some(fresh) = whole.unit(u.piece).cloned() else {
                return Ok(None);
            };
            if fresh.audio.as_ref().is_some_and(|a| self.usable(a)) {
                let mut cp = self.checkpoint.lock().await;
                if let Some(r) = record_mut(&mut cp, u) {
                    r.audio = fresh.audio.clone();
                }
                return Ok(Some(Submission::Stored));
            }
            if let Some((request_id, at)) = fresh.request_id.clone().zip(fresh.submitted_at)
                && fresh.request_id != known
                && self
                    .pipeline
                    .checkpoints
                    .resumable_since(at, chrono::Utc::now())
            {
                info!(request_id = %request_id, "another step submitted this part meanwhile; resuming its request");
                let mut cp = self.checkpoint.lock().await;
                if let Some(r) = record_mut(&mut cp, u) {
                    r.request_id = Some(request_id.clone());
                    r.submitted_at = Some(at);
                }
                return Ok(Some(Submission::Found(request_id, at)));
            }
            if !live(fresh.submitting_since) {
                return Ok(None);
            }
            if !marked {
                info!("this part is being submitted elsewhere; waiting for its answer");
            }
            known = fresh.request_id.clone();
            marked = true;
            tokio::select! {
                () = tokio::time::sleep(MARKER_RECHECK) => {}
                reason = self.pipeline.hand_over_requested(self.limit) => {
                    return Err(JobError::HandedOver(reason));
                }
            }
        }
    }

    /// Checks a part's audio and returns it (as a WAV file) with where its
    /// speech is; `Err` when it is unusable: not a 16-bit PCM WAV, empty,
    /// mostly silence, or much shorter than its text should take (Gemini's
    /// silent truncation).
    fn checked(
        &self,
        audio: bytes::Bytes,
        part: &Part,
        joined: Option<(u32, u16)>,
    ) -> Result<(bytes::Bytes, SpeechSpan), AudioError> {
        let wav = pcm::parse_wav(&audio).map_err(|e| AudioError::NotStitchable {
            format: if matches!(e, pcm::WavError::NotPcm16 { .. }) {
                "non-16-bit wav"
            } else {
                "wav"
            },
        })?;
        let speech = pcm::speech_bounds(&audio[wav.data.clone()], wav.format);
        let frames = speech.kept.end - speech.kept.start;
        if frames == 0 {
            return Err(AudioError::NoSamples);
        }
        if speech.voiced_share() < MIN_VOICED_SHARE {
            return Err(AudioError::MostlySilence {
                voiced_percent: speech.voiced_share() * 100.0,
            });
        }
        let seconds = frames as f64 / f64::from(wav.format.sample_rate.max(1));
        let spoken = Spoken::of(&part.text, self.job.speech.voice_2.is_some());
        // A directed take ("speak slowly") is judged, not learned from: it
        // must not teach the voice's rate to other producers' jobs.
        let learn = self.job.speech.style.is_none() && !spoken.directed();
        match self
            .pipeline
            .speaking_rate
            .judge(self.voices, &spoken, seconds, learn)
        {
            Verdict::Plausible => {}
            Verdict::Truncated { ratio, expected } => {
                return Err(AudioError::Truncated {
                    seconds,
                    expected,
                    percent: ratio * 100.0,
                });
            }
            Verdict::AtCap => return Err(AudioError::AtOutputCap { seconds }),
        }
        // Caught before it is stored: a part the others cannot be joined to
        // (the stitch reads mono 16-bit PCM of one rate).
        if !self.as_served() && wav.format.channels != 1 {
            return Err(AudioError::NotStitchable {
                format: "multichannel wav",
            });
        }
        if let Some((rate, channels)) = joined
            && (rate, channels) != (wav.format.sample_rate, wav.format.channels)
        {
            return Err(AudioError::MixedFormats {
                first: format!("{rate} Hz × {channels}"),
                other: format!("{} Hz × {}", wav.format.sample_rate, wav.format.channels),
            });
        }
        let span = SpeechSpan {
            format: wav.format,
            data_offset: wav.data.start as u64 + speech.kept.start * wav.format.frame_bytes(),
            frames,
            data: wav.data.clone(),
            kept: speech.kept.clone(),
        };
        Ok((audio, span))
    }

    /// Where each sentence of `part` is in its speech ([`sentence_spans`]),
    /// found on a blocking thread: it reads every sample of the part.
    async fn sentences(
        &self,
        audio: &bytes::Bytes,
        span: &SpeechSpan,
        part: &Part,
    ) -> Vec<SentenceSpan> {
        let audio = audio.clone();
        let text = self.job.speech.text.clone();
        let (data, kept, format, chars) = (
            span.data.clone(),
            span.kept.clone(),
            span.format,
            part.chars.clone(),
        );
        tokio::task::spawn_blocking(move || {
            sentence_spans(&audio[data], format, kept, &text, chars)
        })
        .await
        .unwrap_or_default()
    }

    /// The format the stored parts share (a rendered job's parts are joined
    /// into one stream); none before the first is stored.
    async fn stitch_format(&self) -> Option<(u32, u16)> {
        if self.as_served() {
            return None;
        }
        let cp = self.checkpoint.lock().await;
        cp.parts
            .iter()
            .flat_map(|p| {
                p.audio
                    .iter()
                    .chain(p.pieces.iter().filter_map(|q| q.audio.as_ref()))
            })
            .find(|a| a.stitchable())
            .map(|a| (a.sample_rate, a.channels))
    }

    /// Delivers the one part of a job as Segmind served it: stored under
    /// the job's key by the part stage, or (a changed `output_key`, a part
    /// stored for another deliverable) copied there now.
    async fn deliver_as_served(&self, records: &[PartAudio]) -> Result<Completed, JobError> {
        let part = &records[0];
        let pipeline = self.pipeline;
        let in_place = part.as_served.as_ref().filter(|s| {
            pipeline
                .keys
                .key_for(
                    self.job,
                    extension_of(&s.content_type, &self.job.deliverable),
                )
                .is_ok_and(|k| k.as_str() == part.key)
        });
        // The part's record is the delivery's: nothing more to write.
        if let Some(s) = in_place {
            pipeline.metrics.audio_bytes.observe(s.size_bytes as f64);
            let audio = StoredAudio {
                bucket: pipeline.storage.bucket().to_owned(),
                key: part.key.clone(),
                content_type: s.content_type.clone(),
                size_bytes: s.size_bytes,
                sha256: s.sha256.clone(),
                duration_seconds: s.duration_seconds,
            };
            return Ok(completed(
                self.job,
                audio,
                &[part],
                None,
                None,
                self.attempt,
                false,
            ));
        }
        let stored = {
            let _slot = pipeline.transfers.acquire().await.ok();
            let object = pipeline.storage.get(&part.key).await?;
            let audio = Audio::parse(object.bytes, None)?;
            let key = pipeline.keys.key_for(self.job, audio.format.extension())?;
            info!(from = %part.key, to = %key, "delivering the stored take under the key asked now");
            pipeline
                .upload_exclusive(self.job, &key, audio, &part.request_id)
                .await?
        };
        pipeline
            .metrics
            .audio_bytes
            .observe(stored.size_bytes as f64);
        let record = StitchedRecord::served(
            self.checkpoint.lock().await.fingerprint(),
            &stored.key,
            &ServedRecord::of(&stored),
            Some(self.job.deliverable.fingerprint()),
        );
        save_stitched(&pipeline.checkpoints, &self.job.id, &record).await;
        self.checkpoint.lock().await.stored = Some(record);
        Ok(completed(
            self.job,
            stored,
            &[part],
            None,
            None,
            self.attempt,
            false,
        ))
    }

    /// Stitches, renders and stores the parts under `key` in a render slot
    /// (`jobs.max_renders`), then writes the marks and captions beside it.
    async fn deliver_rendered(
        &self,
        key: &ObjectKey,
        records: &[PartAudio],
        delivered: &DeliveredPlan,
    ) -> Result<Completed, JobError> {
        let pipeline = self.pipeline;
        let layout = self.layout(records, &delivered.plan)?;
        pipeline.check_owner(self.job, key).await?;
        // Waiting for a render slot is given up at the delivery's end; a
        // render once started runs to its end (see README "A delivery's
        // lifetime").
        let slot = tokio::select! {
            slot = pipeline.renders.acquire() => slot.ok(),
            reason = pipeline.hand_over_requested(self.limit) => {
                return Err(JobError::HandedOver(reason));
            }
        };
        if let Some(reason) = pipeline.must_hand_over(self.limit) {
            return Err(JobError::HandedOver(reason));
        }
        let started = std::time::Instant::now();
        let rendered = Box::pin(self.render(key, records, &layout)).await;
        let rendered = match rendered {
            Err(JobError::PartGone { index, detail }) => {
                // Forget that part's audio: the next delivery produces it again.
                let mut cp = self.checkpoint.lock().await;
                if let Some(u) = delivered.units.get(index).copied()
                    && let Some(r) = record_mut(&mut cp, u)
                {
                    r.audio = None;
                    save_part(
                        &pipeline.checkpoints,
                        &self.job.id,
                        u.part,
                        &cp.parts[u.part],
                    )
                    .await;
                }
                return Err(JobError::Interrupted(detail));
            }
            other => other?,
        };
        pipeline
            .metrics
            .s3_upload
            .observe(started.elapsed().as_secs_f64());
        let marks_key = key.derived(deliver::MARKS_SUFFIX);
        let delivery = self
            .write_marks_and_captions(
                key,
                &marks_key,
                records,
                &delivered.plan,
                &layout,
                &rendered,
            )
            .await?;
        drop(slot);
        let stored = rendered.audio;
        let seconds = rendered.delivered.duration_seconds;
        pipeline
            .metrics
            .audio_bytes
            .observe(stored.size_bytes as f64);
        {
            let mut cp = self.checkpoint.lock().await;
            let record = StitchedRecord {
                plan: Some(cp.fingerprint().to_owned()),
                key: stored.key.clone(),
                sha256: stored.sha256.clone(),
                size_bytes: stored.size_bytes,
                etag: rendered.etag,
                duration_seconds: Some(seconds),
                marks_key: Some(marks_key.to_string()),
                content_type: Some(stored.content_type.clone()),
                deliverable: Some(self.job.deliverable.fingerprint()),
                delivery: Some(delivery.clone()),
            };
            save_stitched(&pipeline.checkpoints, &self.job.id, &record).await;
            cp.stored = Some(record);
        }
        info!(key = %key, bytes = stored.size_bytes, parts = records.len(), seconds, format = %self.job.deliverable.format, lufs = ?delivery.loudness_lufs, "stitched, rendered and stored");
        let refs: Vec<&PartAudio> = records.iter().collect();
        Ok(completed(
            self.job,
            stored,
            &refs,
            Some(marks_key.to_string()),
            Some(Box::new(delivery)),
            self.attempt,
            false,
        ))
    }
}

/// The extension of a delivered object of `content_type` (Segmind's WAV or
/// MP3 as served), else the deliverable's.
fn extension_of(content_type: &str, deliverable: &Deliverable) -> &'static str {
    [
        AudioFormat::Wav,
        AudioFormat::Mp3,
        AudioFormat::Ogg,
        AudioFormat::Flac,
    ]
    .into_iter()
    .find(|f| f.content_type() == content_type)
    .map_or(deliverable.format.extension(), AudioFormat::extension)
}

/// Where each sentence of the text's `chars` is in a part's speech (`pcm`,
/// whose speech is the frames `kept`), in frames from the first kept frame
/// ([`crate::align`]). None for audio of several channels.
fn sentence_spans(
    pcm: &[u8],
    format: PcmFormat,
    kept: std::ops::Range<u64>,
    text: &str,
    chars: std::ops::Range<usize>,
) -> Vec<SentenceSpan> {
    let ranges = align::sentences(text, chars);
    if ranges.is_empty() || format.channels != 1 {
        return Vec::new();
    }
    let weights = align::spoken_weights(text, &ranges);
    let samples: Vec<i16> = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    align::align(&samples, format.sample_rate, kept.clone(), &weights)
        .into_iter()
        .zip(&ranges)
        .map(|(frames, chars)| SentenceSpan {
            chars: [chars.start, chars.end],
            frames: [
                frames.start.saturating_sub(kept.start),
                frames.end.saturating_sub(kept.start),
            ],
        })
        .collect()
}

impl JobRun<'_> {
    /// Where each part goes in the stitched programme; the parts must share
    /// one mono 16-bit PCM format (Gemini's).
    fn layout(&self, records: &[PartAudio], plan: &[Part]) -> Result<Layout, JobError> {
        let Some(first) = records.first() else {
            return Err(JobError::Invariant("a job with no parts to stitch".into()));
        };
        let format = PcmFormat {
            sample_rate: first.sample_rate,
            channels: first.channels,
        };
        if let Some(other) = records
            .iter()
            .find(|r| r.sample_rate != format.sample_rate || r.channels != format.channels)
        {
            return Err(AudioError::MixedFormats {
                first: format!("{} Hz × {}", format.sample_rate, format.channels),
                other: format!("{} Hz × {}", other.sample_rate, other.channels),
            }
            .into());
        }
        if format.channels != 1 {
            return Err(AudioError::NotStitchable {
                format: "multichannel wav",
            }
            .into());
        }
        let shape: Vec<(u64, crate::plan::Join)> = records
            .iter()
            .zip(plan)
            .map(|(r, p)| (r.frames, p.join))
            .collect();
        Ok(stitch::layout(format, &shape))
    }
}

/// Whether the object `info` describes is still the take `audio` records:
/// a part delivered as served has the checksum and size recorded (anyone
/// may overwrite a producer's key); an intermediate part is the worker's own
/// (a shortened one is caught when it is read back).
fn still_the_take(audio: &PartAudio, info: &crate::storage::ObjectInfo) -> bool {
    audio.as_served.as_ref().is_none_or(|served| {
        info.sha256.as_deref() == Some(served.sha256.as_str())
            && info.size_bytes == Some(served.size_bytes)
    })
}

/// Whether the other parts of a job go on after one part failed with
/// `failure`: when the job will fail but the producer may resend it
/// (`inference_failed`, `audio_invalid`), the others are stored for that
/// resend; a failure of the request itself (`content_blocked`: the resend
/// carries another text, another plan) or one a later delivery retries
/// anyway (transient, account-level) stops them. Pure.
fn finish_the_others(failure: &failure::Failure) -> bool {
    failure.class == failure::Class::Permanent && failure.retryable()
}

/// Whether another take of a part may give usable audio: Gemini's empty,
/// silent or truncated takes, not audio the worker cannot read nor a take
/// at the output cap (the same text is cut again).
fn worth_resubmitting(e: &AudioError) -> bool {
    !matches!(
        e,
        AudioError::AtOutputCap { .. }
            | AudioError::NotStitchable { .. }
            | AudioError::Undecodable { .. }
            | AudioError::MixedFormats { .. }
            | AudioError::Unrecognised { .. }
            | AudioError::Unsupported(_)
            | AudioError::TooLong
            | AudioError::DecodedTooLarge { .. }
    )
}

/// A job's completion from its parts' records.
fn completed(
    job: &TtsJob,
    audio: StoredAudio,
    parts: &[&PartAudio],
    marks_key: Option<String>,
    delivery: Option<Box<Delivery>>,
    attempt: u32,
    served_from_storage: bool,
) -> Completed {
    let sum = |f: fn(&PartAudio) -> Option<f64>| {
        let known: Vec<f64> = parts.iter().filter_map(|p| f(p)).collect();
        (!known.is_empty()).then(|| known.iter().sum())
    };
    let request_ids: Vec<String> = parts.iter().map(|p| p.request_id.clone()).collect();
    let part_objects = parts.iter().map(|p| p.key.clone()).collect();
    Completed {
        job_id: job.id.clone(),
        audio,
        parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
        part_objects,
        request_ids,
        marks_key,
        delivery,
        inference_time_seconds: sum(|p| p.inference_time_seconds),
        segmind_cost: sum(|p| p.cost),
        // Set by `run`, which counts every call of the delivery.
        segmind_calls: 0,
        attempts: attempt,
        metadata: job.metadata.clone(),
        served_from_storage,
    }
}
