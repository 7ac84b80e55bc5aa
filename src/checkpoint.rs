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
use crate::job::{Delivery, JobId, Speech, StoredAudio};
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

/// The persisted form of a checkpoint (versioned by its fields' defaults).
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
pub fn fingerprint(speech: &Speech) -> String {
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

/// A long job's checkpoint, kept under `{s3.prefix}_parts/{job_id}/`: its
/// plan (`plan.json`), one record per part (`NNNNN.json`, written as the
/// part is submitted and as its audio is stored, so a redelivery resumes
/// every part where it was), the parts' audio (`NNNNN.wav`) and, once
/// stitched, where the object went (`stitched.json`). One object per part:
/// a part's record is written alone, so no writer can overwrite another
/// part's progress with an older copy.
#[derive(Debug, Clone, PartialEq)]
pub struct PartsCheckpoint {
    pub plan: PlanRecord,
    pub parts: Vec<PartRecord>,
    /// Set once the stitched audio is in the bucket.
    pub stored: Option<StitchedRecord>,
}

/// What a long job's parts were planned from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub job_id: String,
    pub fingerprint: String,
    /// The part size the plan was made with: another size plans other
    /// parts, whose records would not match.
    pub part_chars: usize,
    pub parts: usize,
}

/// Where one part is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
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

/// Where a long job's stitched audio and its marks went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StitchedRecord {
    pub key: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// The object's ETag when it was written: it changes if the object is
    /// replaced (a multipart object has no `sha256` metadata to compare).
    #[serde(default)]
    pub etag: Option<String>,
    pub duration_seconds: f64,
    pub marks_key: String,
    /// The deliverable it was rendered for ([`crate::deliverable::Deliverable::fingerprint`]);
    /// none in records of an earlier version (Segmind's WAV as served).
    #[serde(default)]
    pub deliverable: Option<String>,
    /// What was delivered, replayed in the completion event.
    #[serde(default)]
    pub delivery: Option<Delivery>,
}

impl PartsCheckpoint {
    /// A fresh checkpoint for a plan of `parts` parts.
    pub fn new(job_id: &JobId, speech: &Speech, part_chars: usize, parts: usize) -> Self {
        PartsCheckpoint {
            plan: PlanRecord {
                job_id: job_id.to_string(),
                fingerprint: fingerprint(speech),
                part_chars,
                parts,
            },
            parts: vec![PartRecord::default(); parts],
            stored: None,
        }
    }
}

impl PlanRecord {
    /// Whether this plan is for the same speech cut the same way.
    pub fn matches(&self, speech: &Speech, part_chars: usize, parts: usize) -> bool {
        self.fingerprint == fingerprint(speech)
            && self.part_chars == part_chars
            && self.parts == parts
    }
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
    fn parts_dir(&self, job_id: &JobId) -> String {
        format!("{}{job_id}/", self.parts_prefix)
    }

    /// Where part `index` of a long job is stored until the job is settled.
    pub fn part_audio_key(&self, job_id: &JobId, index: usize) -> String {
        format!("{}{index:05}.wav", self.parts_dir(job_id))
    }

    fn part_record_key(&self, job_id: &JobId, index: usize) -> String {
        format!("{}{index:05}.json", self.parts_dir(job_id))
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

    /// The checkpoint of `job_id` if it is for the same `speech`.
    pub async fn load(
        &self,
        job_id: &JobId,
        speech: &Speech,
    ) -> Result<Option<Checkpoint>, StorageError> {
        let read = match self.storage.get_optional(&self.key(job_id)).await {
            Ok(read) => read,
            Err(e) if e.kind() == StorageFault::AccessDenied => {
                let marker = self.storage.get_optional(&self.marker_key()).await;
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

    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<(), StorageError> {
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_vec(checkpoint).unwrap_or_default();
        let key = format!("{}{}.json", self.prefix, checkpoint.job_id);
        self.storage.put_bytes(&key, body, "application/json").await
    }

    pub async fn delete(&self, job_id: &JobId) -> Result<(), StorageError> {
        self.delete_parts(job_id, false).await?;
        self.storage.delete(&self.key(job_id)).await
    }

    /// A long job's checkpoint if it is for the same speech cut the same way.
    pub async fn load_parts(
        &self,
        job_id: &JobId,
        speech: &Speech,
        part_chars: usize,
        parts: usize,
    ) -> Result<Option<PartsCheckpoint>, StorageError> {
        let Some(plan) = self.read_json::<PlanRecord>(&self.plan_key(job_id)).await? else {
            return Ok(None);
        };
        if !plan.matches(speech, part_chars, parts) {
            tracing::warn!(
                "job id reused for different speech or another part size; ignoring its checkpoint"
            );
            return Ok(None);
        }
        let mut records = Vec::with_capacity(parts);
        for index in 0..parts {
            let record = self
                .read_json::<PartRecord>(&self.part_record_key(job_id, index))
                .await?;
            records.push(record.unwrap_or_default());
        }
        let stored = self.read_json(&self.stitched_key(job_id)).await?;
        Ok(Some(PartsCheckpoint {
            plan,
            parts: records,
            stored,
        }))
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

    /// Records one part's progress.
    pub async fn save_part(
        &self,
        job_id: &JobId,
        index: usize,
        record: &PartRecord,
    ) -> Result<(), StorageError> {
        self.write_json(&self.part_record_key(job_id, index), record)
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

    /// Deletes a long job's intermediate parts, and its records too unless
    /// `keep_records` (a completed job keeps them, to answer a repeat from
    /// storage). Nothing to do for a job of one part.
    pub async fn delete_parts(
        &self,
        job_id: &JobId,
        keep_records: bool,
    ) -> Result<(), StorageError> {
        let Some(plan) = self.read_json::<PlanRecord>(&self.plan_key(job_id)).await? else {
            return Ok(());
        };
        for index in 0..plan.parts {
            self.storage
                .delete(&self.part_audio_key(job_id, index))
                .await?;
            if !keep_records {
                self.storage
                    .delete(&self.part_record_key(job_id, index))
                    .await?;
            }
        }
        if !keep_records {
            self.storage.delete(&self.stitched_key(job_id)).await?;
            self.storage.delete(&self.plan_key(job_id)).await?;
        }
        Ok(())
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
    use crate::job::Voice;

    fn speech(text: &str) -> Speech {
        Speech {
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
