//! A job's checkpoint: a small JSON object in the bucket, at
//! `{s3.prefix}_checkpoints/{job_id}.json`.
//!
//! It is written right after Segmind accepts a submission (so a redelivered
//! job resumes polling the same request instead of paying for a second one)
//! and updated once the audio is stored (so a repeated job is answered from
//! storage without calling Segmind at all). The bucket is the one durable
//! store the worker already depends on, and it is shared by every replica,
//! which is what resuming another worker's job needs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::failure::StorageFault;
use crate::job::{Delivery, JobId, SpeechRequest, StoredAudio};
use crate::plan::Part;
use crate::storage::{Storage, StorageError};

/// What a failed checkpoint read means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedRead {
    /// There is no checkpoint: S3 answers 403, not 404, for a missing key
    /// when the credentials lack `s3:ListBucket`, and the marker object
    /// beside the checkpoints reads fine, so the refusal is about a key that
    /// is not there, not about reading.
    Missing,
    /// A real failure, classified as it is.
    Error,
}

/// Decides what a failed checkpoint read means, given whether the marker
/// object (written at start-up beside the checkpoints) could be read right
/// after. Pure: unit-tested without AWS.
pub fn failed_read(fault: StorageFault, marker_readable: bool) -> FailedRead {
    match fault {
        StorageFault::AccessDenied if marker_readable => FailedRead::Missing,
        _ => FailedRead::Error,
    }
}

/// A one-part checkpoint as earlier releases wrote it
/// (`{prefix}_checkpoints/{job_id}.json`); this release reads it as a
/// one-part plan ([`Checkpoints::load_plan`]) and writes plans only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job_id: String,
    /// Segmind's request id of the submission this job is waiting on.
    pub request_id: String,
    pub submitted_at: DateTime<Utc>,
    /// Hash of what was asked; a job id reused for different speech is never
    /// resumed or replayed.
    pub fingerprint: String,
    /// Set once the audio is in the bucket.
    #[serde(default)]
    pub stored: Option<StoredRecord>,
}

/// Where a job's audio went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub key: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub content_type: String,
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    #[serde(default)]
    pub inference_time_seconds: Option<f64>,
    /// Credits the Segmind job cost, when its result reported it.
    #[serde(default)]
    pub cost: Option<f64>,
}

impl StoredRecord {
    pub fn from_stored(
        audio: &StoredAudio,
        inference_time_seconds: Option<f64>,
        cost: Option<f64>,
    ) -> Self {
        StoredRecord {
            key: audio.key.clone(),
            sha256: audio.sha256.clone(),
            size_bytes: audio.size_bytes,
            content_type: audio.content_type.to_owned(),
            duration_seconds: audio.duration_seconds,
            inference_time_seconds,
            cost,
        }
    }
}

/// A stable hash of the speech a job asks for.
pub fn fingerprint(speech: &SpeechRequest) -> String {
    let mut h = Sha256::new();
    h.update(speech.text.as_bytes());
    h.update([0]);
    h.update(speech.voice_1.name().as_bytes());
    h.update([0]);
    h.update(speech.voice_2.map_or("", |v| v.name()).as_bytes());
    h.update([0]);
    h.update(speech.temperature.to_bits().to_le_bytes());
    if let Some(style) = &speech.style {
        // Absent style hashes as before: older checkpoints stay valid.
        h.update([1]);
        h.update(style.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A stable hash of a plan: the speech (text, style, voices, temperature)
/// and where its parts are cut. A record carrying another plan's
/// fingerprint describes other audio and is never used.
pub fn plan_fingerprint(speech: &SpeechRequest, parts: &[Part]) -> String {
    let mut h = Sha256::new();
    h.update(fingerprint(speech).as_bytes());
    for part in parts {
        h.update((part.chars.start as u64).to_le_bytes());
        h.update((part.chars.end as u64).to_le_bytes());
        h.update(part.text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// A job's checkpoint, kept under `{s3.prefix}_parts/{job_id}/`: its
/// plan (`plan.json`), one record per part (`NNNNN.json`, written as the
/// part is submitted and as its audio is stored, so a redelivery resumes
/// every part where it was), the parts' audio (`NNNNN.wav`) and, once
/// stitched, where the object went (`stitched.json`). One object per part:
/// a part's record is written alone, so no writer can overwrite another
/// part's progress with an older copy.
#[derive(Debug, Clone, PartialEq)]
pub struct PartsCheckpoint {
    /// The plan's record as stored (`plan: None` when an earlier release
    /// wrote it: its part records then carry no fingerprint either).
    pub plan: PlanRecord,
    /// This plan's fingerprint ([`plan_fingerprint`]).
    pub fingerprint: String,
    pub parts: Vec<PartRecord>,
    /// Set once the stitched audio is in the bucket.
    pub stored: Option<StitchedRecord>,
}

impl PartsCheckpoint {
    /// How far the job has come by its records: parts whose audio is
    /// stored (a split part once every piece's is), the seconds and credits
    /// of every stored take.
    pub fn progress(&self) -> crate::job::Progress {
        let mut progress = crate::job::Progress {
            parts_total: u32::try_from(self.parts.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let mut take = |audio: &PartAudio| {
            if audio.sample_rate > 0 {
                progress.audio_seconds += audio.frames as f64 / f64::from(audio.sample_rate);
            }
            if let Some(cost) = audio.cost {
                *progress.credits.get_or_insert(0.0) += cost;
            }
        };
        let mut done = 0u32;
        for part in &self.parts {
            if let Some(audio) = &part.audio {
                take(audio);
                done += 1;
            } else if !part.pieces.is_empty() {
                let mut all = true;
                for piece in &part.pieces {
                    match &piece.audio {
                        Some(audio) => take(audio),
                        None => all = false,
                    }
                }
                done += u32::from(all);
            }
        }
        progress.parts_done = done;
        progress
    }
}

/// What a job's parts were planned from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub job_id: String,
    /// The speech's fingerprint ([`fingerprint`]).
    pub fingerprint: String,
    /// The plan's fingerprint ([`plan_fingerprint`]); none in records of an
    /// earlier release, whose part records carry none either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The part size the plan was made with: another size plans other
    /// parts, whose records would not match.
    pub part_chars: usize,
    pub parts: usize,
}

/// Where one part is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The plan it belongs to ([`plan_fingerprint`]); none in records of an
    /// earlier release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Set just before a submission is sent, cleared once it is answered:
    /// another replica finding it fresh waits for that answer instead of
    /// paying for the part again (see [`MARKER_MARGIN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitting_since: Option<DateTime<Utc>>,
    /// The Segmind request of its latest submission.
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub submitted_at: Option<DateTime<Utc>>,
    /// Submissions Segmind accepted for this part (each one paid).
    #[serde(default)]
    pub submissions: u32,
    /// Set once its audio is stored as an intermediate object.
    #[serde(default)]
    pub audio: Option<PartAudio>,
    /// Set when a take of the part came back at Gemini's output cap: the
    /// records of its pieces (`plan::split`), each one Segmind call, whose
    /// audio is delivered in its place. Pieces have no pieces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<PartRecord>,
}

impl PartRecord {
    /// The record of the part itself (`None`) or of its piece `piece`.
    pub fn unit(&self, piece: Option<usize>) -> Option<&PartRecord> {
        match piece {
            None => Some(self),
            Some(j) => self.pieces.get(j),
        }
    }

    /// [`Self::unit`], to write.
    pub fn unit_mut(&mut self, piece: Option<usize>) -> Option<&mut PartRecord> {
        match piece {
            None => Some(self),
            Some(j) => self.pieces.get_mut(j),
        }
    }

    /// The audio delivered for the part: its own, or its pieces' in order;
    /// `None` while any of it is missing.
    pub fn delivered_audio(&self) -> Option<Vec<&PartAudio>> {
        if self.pieces.is_empty() {
            return self.audio.as_ref().map(|a| vec![a]);
        }
        self.pieces.iter().map(|p| p.audio.as_ref()).collect()
    }

    /// Folds in what `stored` (the same part's record as read from the
    /// bucket, perhaps written by another delivery since) knows that this
    /// one does not: its split, and each unit's request or audio where this
    /// one has none. What this one knows is kept, so a stale copy never
    /// erases progress in either direction.
    pub fn merge(&mut self, stored: &PartRecord) {
        if self.pieces.is_empty() && !stored.pieces.is_empty() {
            self.pieces = stored.pieces.clone();
            self.request_id = None;
            self.submitted_at = None;
        }
        let adopt = |mine: &mut PartRecord, theirs: &PartRecord| {
            if mine.audio.is_none() && theirs.audio.is_some() {
                mine.audio = theirs.audio.clone();
            }
            if mine.request_id.is_none() && theirs.request_id.is_some() {
                mine.request_id = theirs.request_id.clone();
                mine.submitted_at = theirs.submitted_at;
            }
            if mine.submitting_since.is_none() {
                mine.submitting_since = theirs.submitting_since;
            }
            mine.submissions = mine.submissions.max(theirs.submissions);
        };
        if self.pieces.len() == stored.pieces.len() {
            for (mine, theirs) in self.pieces.iter_mut().zip(&stored.pieces) {
                adopt(mine, theirs);
            }
        }
        if self.pieces.is_empty() {
            adopt(self, stored);
        }
    }

    /// Every object this record's takes are stored as: its own and its
    /// pieces'.
    pub fn stored_keys(&self) -> impl Iterator<Item = &str> {
        self.audio
            .iter()
            .chain(self.pieces.iter().filter_map(|p| p.audio.as_ref()))
            .map(|a| a.key.as_str())
    }
}

/// A part's audio, stored as Segmind served it (a 16-bit PCM WAV), with
/// where its speech is: `frames` frames from byte `data_offset` (the
/// silence around them is left out of the stitched audio).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartAudio {
    pub key: String,
    /// The Segmind request it came from.
    pub request_id: String,
    pub data_offset: u64,
    pub frames: u64,
    pub sample_rate: u32,
    pub channels: u16,
    #[serde(default)]
    pub inference_time_seconds: Option<f64>,
    #[serde(default)]
    pub cost: Option<f64>,
    /// Where each sentence of the part is in its speech (frames from the
    /// speech's first frame), found when the part was checked; empty in
    /// records of an earlier version (marks then keep to parts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentences: Vec<SentenceSpan>,
    /// Set when the part's object is Segmind's file as served, stored as
    /// the job's delivered audio (a one-part job delivered as served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_served: Option<ServedRecord>,
}

/// Segmind's file as served, delivered as a job's audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedRecord {
    pub content_type: String,
    pub sha256: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub duration_seconds: Option<f64>,
}

impl ServedRecord {
    /// What a delivered file as served is.
    pub fn of(audio: &StoredAudio) -> Self {
        ServedRecord {
            content_type: audio.content_type.clone(),
            sha256: audio.sha256.clone(),
            size_bytes: audio.size_bytes,
            duration_seconds: audio.duration_seconds,
        }
    }
}

impl StitchedRecord {
    /// The delivery record of Segmind's file as served, stored at `key`
    /// for the plan `plan` (and, when known, the deliverable asked).
    pub fn served(
        plan: &str,
        key: &str,
        served: &ServedRecord,
        deliverable: Option<String>,
    ) -> Self {
        StitchedRecord {
            plan: Some(plan.to_owned()),
            key: key.to_owned(),
            sha256: served.sha256.clone(),
            size_bytes: served.size_bytes,
            etag: None,
            duration_seconds: served.duration_seconds,
            marks_key: None,
            content_type: Some(served.content_type.clone()),
            deliverable,
            delivery: None,
        }
    }
}

impl PartAudio {
    /// Whether its speech can be read back as 16-bit PCM frames for a
    /// rendered deliverable: a part delivered as served is only if it was
    /// a WAV and where its speech is was measured.
    pub fn stitchable(&self) -> bool {
        self.frames > 0
            && self.sample_rate > 0
            && self
                .as_served
                .as_ref()
                .is_none_or(|s| s.content_type == "audio/wav")
    }
}

/// A sentence of a part: its characters in the job's text and its frames
/// in the part's speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentenceSpan {
    /// `[start, end)` in characters (Unicode scalar values) of the text.
    pub chars: [usize; 2],
    /// `[start, end)` in frames from the first frame of the part's speech.
    pub frames: [u64; 2],
}

/// Where a job's delivered audio (and its marks) went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchedRecord {
    /// The plan it was delivered from ([`plan_fingerprint`]); none in
    /// records of an earlier release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub key: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// The object's ETag when it was written: it changes if the object is
    /// replaced (a multipart object has no `sha256` metadata to compare).
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// The timing marks beside a rendered deliverable; none for Segmind's
    /// file delivered as served.
    #[serde(default)]
    pub marks_key: Option<String>,
    /// The delivered object's content type; none in records of an earlier
    /// release (the deliverable's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The deliverable it was rendered for ([`crate::deliverable::Deliverable::fingerprint`]);
    /// none in records of an earlier version (Segmind's WAV as served).
    #[serde(default)]
    pub deliverable: Option<String>,
    /// What was delivered, replayed in the completion event.
    #[serde(default)]
    pub delivery: Option<Delivery>,
}

impl PartsCheckpoint {
    /// A fresh checkpoint for `plan`.
    pub fn new(job_id: &JobId, speech: &SpeechRequest, part_chars: usize, plan: &[Part]) -> Self {
        let fingerprint = plan_fingerprint(speech, plan);
        PartsCheckpoint {
            plan: PlanRecord {
                job_id: job_id.to_string(),
                fingerprint: self::fingerprint(speech),
                plan: Some(fingerprint.clone()),
                part_chars,
                parts: plan.len(),
            },
            parts: vec![PartRecord::for_plan(&fingerprint); plan.len()],
            fingerprint,
            stored: None,
        }
    }

    /// The plan's fingerprint, which every record written for it carries.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What this plan's part records are stamped with: its fingerprint, or
    /// none under an earlier release's plan record.
    pub fn stamp(&self) -> Option<&str> {
        self.plan.plan.as_deref()
    }
}

impl PartRecord {
    /// An empty record of the plan `fingerprint`.
    pub fn for_plan(fingerprint: &str) -> Self {
        PartRecord {
            plan: Some(fingerprint.to_owned()),
            ..PartRecord::default()
        }
    }
}

impl PlanRecord {
    /// Whether this plan is for the same speech cut the same way.
    pub fn matches(&self, speech: &SpeechRequest, part_chars: usize, parts: usize) -> bool {
        self.fingerprint == fingerprint(speech)
            && self.part_chars == part_chars
            && self.parts == parts
    }
}

/// How long past a part's deadline and one record write
/// (`s3.operation_timeout`) a `submitting_since` marker is honoured: the
/// submission step it marks ends by its deadline, and its answer is
/// written within one S3 call and this margin.
pub const MARKER_MARGIN: Duration = Duration::from_secs(30);

/// What [`Checkpoints::load_plan`] found.
#[derive(Debug)]
pub enum Loaded {
    /// The plan's records (possibly none yet stored for some parts).
    Found(Box<PartsCheckpoint>),
    /// No record of this plan. `stale`: another plan's record left under
    /// the job id (an earlier text), whose records and part objects are
    /// removed before the new plan is written.
    Fresh { stale: Option<PlanRecord> },
}

/// Reads and writes checkpoints.
#[derive(Clone)]
pub struct Checkpoints {
    storage: Storage,
    prefix: String,
    /// Where long jobs' parts are kept until their job is settled.
    parts_prefix: String,
    /// How long after submission a result can still be fetched (Segmind keeps
    /// results for 1 hour; this is kept below that).
    resume_window: Duration,
}

impl Checkpoints {
    pub fn new(storage: Storage, s3_prefix: &str, resume_window: Duration) -> Self {
        Checkpoints {
            storage,
            prefix: format!("{s3_prefix}_checkpoints/"),
            parts_prefix: format!("{s3_prefix}_parts/"),
            resume_window,
        }
    }

    pub fn key(&self, job_id: &JobId) -> String {
        format!("{}{job_id}.json", self.prefix)
    }

    /// Where a long job's plan, part records, parts and stitch record are.
    pub fn parts_dir(&self, job_id: &JobId) -> String {
        format!("{}{job_id}/", self.parts_prefix)
    }

    /// Where part `index` of a job is stored until the job is settled: one
    /// object per take (its Segmind request), so a record can never
    /// describe another delivery's take.
    pub fn part_audio_key(&self, job_id: &JobId, index: usize, request_id: &str) -> String {
        format!("{}{index:05}.{request_id}.wav", self.parts_dir(job_id))
    }

    /// Where an earlier release stored part `index`, whatever its take.
    fn legacy_part_audio_key(&self, job_id: &JobId, index: usize) -> String {
        format!("{}{index:05}.wav", self.parts_dir(job_id))
    }

    /// Whether `key` is one of the worker's intermediate part objects (not
    /// a delivered one).
    pub fn is_part_object(&self, key: &str) -> bool {
        key.starts_with(&self.parts_prefix)
    }

    /// Where part `index`'s record of the plan stamped `stamp` is: named
    /// after the plan (its fingerprint's first 16 hex digits), so a late
    /// write of another plan's step never overwrites this plan's progress;
    /// an earlier release's records (no stamp) at `NNNNN.json`.
    fn part_record_key(&self, job_id: &JobId, index: usize, stamp: Option<&str>) -> String {
        match stamp {
            Some(plan) => format!(
                "{}{index:05}.{}.json",
                self.parts_dir(job_id),
                plan.get(..16).unwrap_or(plan)
            ),
            None => format!("{}{index:05}.json", self.parts_dir(job_id)),
        }
    }

    pub fn plan_key(&self, job_id: &JobId) -> String {
        format!("{}plan.json", self.parts_dir(job_id))
    }

    fn stitched_key(&self, job_id: &JobId) -> String {
        format!("{}stitched.json", self.parts_dir(job_id))
    }

    /// A known object beside the checkpoints (no job id starts with `.`).
    pub fn marker_key(&self) -> String {
        format!("{}.marker", self.prefix)
    }

    /// Writes the marker object (see [`failed_read`]).
    pub async fn write_marker(&self) -> Result<(), StorageError> {
        self.storage
            .put_bytes(
                &self.marker_key(),
                b"tts-worker checkpoints live here\n".to_vec(),
                "text/plain",
            )
            .await
    }

    /// The one-part checkpoint an earlier release wrote for `job_id`, if it
    /// is for the same `speech`.
    pub async fn load(
        &self,
        job_id: &JobId,
        speech: &SpeechRequest,
    ) -> Result<Option<Checkpoint>, StorageError> {
        let read = match self.storage.get_optional(&self.key(job_id)).await {
            Ok(read) => read,
            Err(e) if e.kind() == StorageFault::AccessDenied => {
                // Boxed: a rare path every read would otherwise carry.
                let marker = Box::pin(self.storage.get_optional(&self.marker_key())).await;
                match failed_read(e.kind(), matches!(marker, Ok(Some(_)))) {
                    FailedRead::Missing => {
                        tracing::warn!(error = %e, "checkpoint read refused while the marker beside it reads fine: taken as missing (grant s3:ListBucket so S3 answers 404)");
                        None
                    }
                    FailedRead::Error => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let Some(bytes) = read else {
            return Ok(None);
        };
        let checkpoint: Checkpoint = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable checkpoint");
                return Ok(None);
            }
        };
        if checkpoint.fingerprint != fingerprint(speech) {
            tracing::warn!("job id reused for different speech; ignoring its checkpoint");
            return Ok(None);
        }
        Ok(Some(checkpoint))
    }

    /// Writes a one-part checkpoint as an earlier release did (the rolling
    /// upgrade tests write them; this release reads them as one-part plans).
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<(), StorageError> {
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_vec(checkpoint).unwrap_or_default();
        let key = format!("{}{}.json", self.prefix, checkpoint.job_id);
        self.storage.put_bytes(&key, body, "application/json").await
    }

    /// The records of `plan` for `job_id`: its plan record, each part's
    /// record and the delivery record, each used only if it carries this
    /// plan's fingerprint. Records of an earlier release (no fingerprint)
    /// are used under their plan record when it matches the speech and the
    /// cut; a one-part checkpoint of an earlier release
    /// (`{prefix}_checkpoints/{job_id}.json`) is read as a one-part plan and
    /// written as one, so a rolling upgrade resumes instead of paying again.
    pub async fn load_plan(
        &self,
        job_id: &JobId,
        speech: &SpeechRequest,
        part_chars: usize,
        plan: &[Part],
    ) -> Result<Loaded, StorageError> {
        let fingerprint = plan_fingerprint(speech, plan);
        let Some(record) = self.read_json::<PlanRecord>(&self.plan_key(job_id)).await? else {
            if plan.len() == 1 {
                // Boxed: a job queued for its first read should not carry
                // the size of these steps.
                return Box::pin(self.load_one_part(job_id, speech, part_chars, plan)).await;
            }
            return Ok(Loaded::Fresh { stale: None });
        };
        let ours = |p: &Option<String>| match (&record.plan, p) {
            (Some(_), Some(p)) => *p == fingerprint,
            // Under a plan record of an earlier release: its own records.
            (None, p) => p.as_ref().is_none_or(|p| *p == fingerprint),
            (Some(_), None) => false,
        };
        let same_plan = match &record.plan {
            Some(p) => *p == fingerprint,
            None => record.matches(speech, part_chars, plan.len()),
        };
        if !same_plan {
            tracing::info!(
                "job id reused for other speech or another cut: its earlier plan's records are replaced"
            );
            return Ok(Loaded::Fresh {
                stale: Some(record),
            });
        }
        let stamp = record.plan.clone();
        let mut parts = Vec::with_capacity(plan.len());
        for index in 0..plan.len() {
            let read = self
                .read_json::<PartRecord>(&self.part_record_key(job_id, index, stamp.as_deref()))
                .await?;
            parts.push(match read {
                Some(r) if ours(&r.plan) => r,
                _ => PartRecord {
                    plan: stamp.clone(),
                    ..PartRecord::default()
                },
            });
        }
        let stored = self
            .read_json::<StitchedRecord>(&self.stitched_key(job_id))
            .await?
            .filter(|s| ours(&s.plan));
        Ok(Loaded::Found(Box::new(PartsCheckpoint {
            plan: record,
            fingerprint,
            parts,
            stored,
        })))
    }

    /// A one-part plan: it has no plan record (one object less per short
    /// job); its part record, named after the plan, is read directly, and
    /// the delivery record once the part is stored. Else an earlier
    /// release's one-part checkpoint of the same speech.
    async fn load_one_part(
        &self,
        job_id: &JobId,
        speech: &SpeechRequest,
        part_chars: usize,
        plan: &[Part],
    ) -> Result<Loaded, StorageError> {
        // Only the key is held while the read waits for its slot.
        let key = self.part_record_key(job_id, 0, Some(&plan_fingerprint(speech, plan)));
        let found = self.read_json::<PartRecord>(&key).await?;
        let mut cp = PartsCheckpoint::new(job_id, speech, part_chars, plan);
        if let Some(part) = found.filter(|r| r.plan.as_deref() == cp.stamp()) {
            // Delivered once its audio (or every piece's, when split) is.
            if part.delivered_audio().is_some() {
                let key = self.stitched_key(job_id);
                cp.stored = Box::pin(self.read_json::<StitchedRecord>(&key))
                    .await?
                    .filter(|s| s.plan.as_deref() == cp.stamp());
            }
            cp.parts[0] = part;
            return Ok(Loaded::Found(Box::new(cp)));
        }
        drop(cp);
        // An earlier release's checkpoint, read here (a new job holds only
        // this read's state); boxed: only a job of an earlier release goes
        // on to these writes, and every new job waits in this function for
        // its reads, thousands at once.
        let Some(old) = self.load(job_id, speech).await? else {
            return Ok(Loaded::Fresh { stale: None });
        };
        let cp = Box::pin(self.adopt_one_part(old, job_id, speech, part_chars, plan)).await?;
        Ok(Loaded::Found(Box::new(cp)))
    }

    /// The size of the future of a one-part plan's first read (for the
    /// memory test of a waiting job).
    #[cfg(test)]
    pub(crate) fn load_one_part_size(
        &self,
        job_id: &JobId,
        speech: &SpeechRequest,
        plan: &[Part],
    ) -> usize {
        std::mem::size_of_val(&self.load_one_part(job_id, speech, 3_000, plan))
    }

    /// An earlier release's one-part checkpoint of the same speech, read as
    /// a one-part plan and written as one (its plan, part and delivery
    /// records): from then on the job is read like any other.
    async fn adopt_one_part(
        &self,
        old: Checkpoint,
        job_id: &JobId,
        speech: &SpeechRequest,
        part_chars: usize,
        plan: &[Part],
    ) -> Result<PartsCheckpoint, StorageError> {
        let mut cp = PartsCheckpoint::new(job_id, speech, part_chars, plan);
        let fingerprint = cp.fingerprint().to_owned();
        let mut stitched = None;
        let part = &mut cp.parts[0];
        part.request_id = Some(old.request_id.clone());
        part.submitted_at = Some(old.submitted_at);
        part.submissions = 1;
        if let Some(stored) = &old.stored {
            // Delivered as served: the record a replay needs. Where its
            // speech is was not measured; a rendered deliverable of the same
            // text produces its part again.
            let served = ServedRecord {
                content_type: stored.content_type.clone(),
                sha256: stored.sha256.clone(),
                size_bytes: stored.size_bytes,
                duration_seconds: stored.duration_seconds,
            };
            stitched = Some(StitchedRecord::served(
                &fingerprint,
                &stored.key,
                &served,
                None,
            ));
            part.audio = Some(PartAudio {
                key: stored.key.clone(),
                request_id: old.request_id.clone(),
                data_offset: 0,
                frames: 0,
                sample_rate: 0,
                channels: 0,
                inference_time_seconds: stored.inference_time_seconds,
                cost: stored.cost,
                sentences: Vec::new(),
                as_served: Some(served),
            });
        }
        cp.stored = stitched;
        tracing::info!(request_id = %old.request_id, "an earlier release's checkpoint: read as a one-part plan");
        self.save_part(job_id, 0, &cp.parts[0]).await?;
        if let Some(stored) = &cp.stored {
            self.save_stitched(job_id, stored).await?;
        }
        self.storage.delete(&self.key(job_id)).await?;
        Ok(cp)
    }

    /// Writes a new plan's record (a plan of several parts: a one-part
    /// plan's record is its part's), after removing what `stale` (another
    /// plan of the same job id) left: its part records, its part objects
    /// and its delivery record (not the delivered audio, which belongs to
    /// the producer's key). Before anything of the new plan is paid.
    pub async fn start_plan(
        &self,
        job_id: &JobId,
        cp: &PartsCheckpoint,
        stale: Option<&PlanRecord>,
    ) -> Result<(), StorageError> {
        if let Some(stale) = stale {
            self.delete_plan(job_id, stale).await?;
        }
        if cp.parts.len() > 1 {
            self.save_plan(job_id, &cp.plan).await?;
        }
        Ok(())
    }

    /// Deletes a plan of `parts` parts: each part's objects and record, the
    /// delivery record and the plan record.
    async fn delete_plan(&self, job_id: &JobId, stale: &PlanRecord) -> Result<(), StorageError> {
        for index in 0..stale.parts {
            let key = self.part_record_key(job_id, index, stale.plan.as_deref());
            if let Some(record) = self.read_json::<PartRecord>(&key).await? {
                for object in record.stored_keys().filter(|k| self.is_part_object(k)) {
                    self.storage.delete(object).await?;
                }
            }
            self.storage
                .delete(&self.legacy_part_audio_key(job_id, index))
                .await?;
            self.storage.delete(&key).await?;
        }
        self.storage.delete(&self.stitched_key(job_id)).await?;
        self.storage.delete(&self.plan_key(job_id)).await
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.storage.get_optional(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::warn!(error = %e, key, "ignoring an unreadable checkpoint");
                Ok(None)
            }
        }
    }

    async fn write_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.storage.put_bytes(key, body, "application/json").await
    }

    /// Records a long job's plan (before any part is submitted).
    pub async fn save_plan(&self, job_id: &JobId, plan: &PlanRecord) -> Result<(), StorageError> {
        self.write_json(&self.plan_key(job_id), plan).await
    }

    /// Part `index`'s record of the plan stamped `stamp`, as stored now
    /// (read again after another step may have written it).
    pub async fn load_part(
        &self,
        job_id: &JobId,
        index: usize,
        stamp: Option<&str>,
    ) -> Result<Option<PartRecord>, StorageError> {
        let record = self
            .read_json::<PartRecord>(&self.part_record_key(job_id, index, stamp))
            .await?;
        Ok(record.filter(|r| r.plan.as_deref() == stamp))
    }

    /// Records one part's progress.
    pub async fn save_part(
        &self,
        job_id: &JobId,
        index: usize,
        record: &PartRecord,
    ) -> Result<(), StorageError> {
        self.write_json(
            &self.part_record_key(job_id, index, record.plan.as_deref()),
            record,
        )
        .await
    }

    /// Records where a long job's stitched audio went.
    pub async fn save_stitched(
        &self,
        job_id: &JobId,
        record: &StitchedRecord,
    ) -> Result<(), StorageError> {
        self.write_json(&self.stitched_key(job_id), record).await
    }

    /// Deletes a completed job's intermediate part objects (`objects`, the
    /// keys its records name; a delivered object is never one) and what an
    /// earlier release stored for its `parts` parts; the records stay, so
    /// a repeat is answered from storage.
    pub async fn delete_part_objects(
        &self,
        job_id: &JobId,
        objects: &[String],
        parts: usize,
    ) -> Result<(), StorageError> {
        for key in objects.iter().filter(|k| self.is_part_object(k)) {
            self.storage.delete(key).await?;
        }
        for index in 0..parts {
            self.storage
                .delete(&self.legacy_part_audio_key(job_id, index))
                .await?;
        }
        Ok(())
    }

    /// Deletes the part objects (audio, not records) written more than
    /// `age` ago: what failed jobs leave for a resend, once their resume
    /// window has passed. Returns how many were deleted.
    pub async fn sweep_parts(
        &self,
        age: Duration,
        now: DateTime<Utc>,
    ) -> Result<usize, StorageError> {
        let mut deleted = 0;
        for (key, modified) in self.storage.list(&self.parts_prefix).await? {
            let old = modified
                .and_then(|m| (now - m).to_std().ok())
                .is_some_and(|a| a > age);
            if key.ends_with(".wav") && old {
                self.storage.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Whether the checkpoint's Segmind result may still exist.
    pub fn resumable(&self, checkpoint: &Checkpoint, now: DateTime<Utc>) -> bool {
        self.resumable_since(checkpoint.submitted_at, now)
    }

    /// Whether a result submitted at `submitted_at` may still exist.
    pub fn resumable_since(&self, submitted_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        (now - submitted_at)
            .to_std()
            .is_ok_and(|age| age < self.resume_window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_copy_of_a_split_parts_record_never_erases_a_siblings_progress() {
        let piece = |request: Option<&str>| PartRecord {
            request_id: request.map(str::to_owned),
            submitted_at: request.map(|_| Utc::now()),
            ..PartRecord::default()
        };
        // This delivery knows piece 0's request; the bucket holds piece 1's,
        // written by another step since.
        let mut mine = PartRecord {
            pieces: vec![piece(Some("r0")), piece(None), piece(None)],
            ..PartRecord::default()
        };
        let stored = PartRecord {
            pieces: vec![piece(None), piece(Some("r1")), piece(None)],
            ..PartRecord::default()
        };
        mine.merge(&stored);
        let requests: Vec<Option<&str>> = mine
            .pieces
            .iter()
            .map(|p| p.request_id.as_deref())
            .collect();
        assert_eq!(requests, vec![Some("r0"), Some("r1"), None]);
        // A record that does not know of the split adopts it (and drops the
        // cut take's request).
        let mut whole = piece(Some("cut"));
        whole.merge(&stored);
        assert_eq!(whole.pieces.len(), 3);
        assert_eq!(whole.request_id, None);
        assert_eq!(whole.pieces[1].request_id.as_deref(), Some("r1"));
    }
    use crate::job::Voice;

    fn speech(text: &str) -> SpeechRequest {
        SpeechRequest {
            text: text.into(),
            voice_1: Voice::parse("Kore").unwrap(),
            voice_2: None,
            temperature: 0.4,
            style: None,
        }
    }

    #[test]
    fn fingerprints_differ_for_any_change_of_speech() {
        let base = fingerprint(&speech("hello"));
        assert_eq!(base, fingerprint(&speech("hello")));
        assert_ne!(base, fingerprint(&speech("hello!")));
        let mut s = speech("hello");
        s.voice_2 = Some(Voice::parse("Puck").unwrap());
        assert_ne!(base, fingerprint(&s));
        let mut s = speech("hello");
        s.temperature = 0.41;
        assert_ne!(base, fingerprint(&s));
        let mut s = speech("hello");
        s.style = Some("Say cheerfully".into());
        assert_ne!(base, fingerprint(&s));
    }

    #[test]
    fn a_refused_read_of_a_missing_checkpoint_does_not_pause_the_fleet() {
        // AWS without s3:ListBucket: a missing key answers 403, while the
        // marker beside it reads fine.
        assert_eq!(
            failed_read(StorageFault::AccessDenied, true),
            FailedRead::Missing
        );
        // The marker is refused too: reading is denied, an account problem.
        assert_eq!(
            failed_read(StorageFault::AccessDenied, false),
            FailedRead::Error
        );
        for other in [
            StorageFault::InvalidCredentials,
            StorageFault::NoSuchBucket,
            StorageFault::Unreachable,
            StorageFault::Throttled,
        ] {
            assert_eq!(failed_read(other, true), FailedRead::Error, "{other:?}");
        }
    }

    #[test]
    fn old_checkpoints_are_not_resumed() {
        let storage = Storage::with_static_credentials(
            &crate::config::Settings::load_from(None, &[]).unwrap().s3,
            "k",
            "s",
        );
        let c = Checkpoints::new(storage, "tts/", Duration::from_secs(3300));
        let now = Utc::now();
        let mut cp = Checkpoint {
            job_id: "j".into(),
            request_id: "r".into(),
            submitted_at: now - chrono::Duration::minutes(10),
            fingerprint: String::new(),
            stored: None,
        };
        assert!(c.resumable(&cp, now));
        cp.submitted_at = now - chrono::Duration::minutes(56);
        assert!(!c.resumable(&cp, now));
        assert_eq!(
            c.key(&JobId::parse("j-1", 64).unwrap()),
            "tts/_checkpoints/j-1.json"
        );
    }
}
