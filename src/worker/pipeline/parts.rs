//! A long text as one job, in stages: plan (done by the caller) →
//! synthesize the parts in parallel, each resumed from its own checkpoint
//! record → check each part's audio → store it, trimmed, as an intermediate
//! object → stitch the parts as a stream into one WAV with S3 multipart
//! upload → write the timing marks beside it.
//!
//! Paid once, part by part: a part's request id is checkpointed by the same
//! spawned step that submits it, and its audio once stored; a redelivery
//! finds every part where it was: stored parts are not fetched again,
//! running ones are polled, only missing ones are submitted.
//!
//! Fair across jobs: a job has at most one submission at a time (waiting
//! for the rate budget or at Segmind), so every job with parts to submit
//! competes for the next free slot with one submission, whatever its
//! length, and a short job behind a long one waits for a slot or two, not
//! for the long job's parts. Only a job's first part counts as a new job
//! for intake (`Priority::Part` of `segmind::budget`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tracing::{Instrument, info, info_span, warn};

use super::{JobError, Pipeline, save_part, save_stitched};
use crate::align;
use crate::audio::{Audio, AudioError, AudioFormat};
use crate::checkpoint::{PartAudio, PartsCheckpoint, SentenceSpan, StitchedRecord};
use crate::deliverable::Deliverable;
use crate::failure::{self, ErrorCode};
use crate::job::{Completed, Delivery, ObjectKey, Speech, StoredAudio, TtsJob};
use crate::plan::Part;
use crate::quality::Verdict;
use crate::stitch::{self, Layout, PcmFormat};

mod deliver;

/// A part with less speech than this share of its audio is mostly silence.
const MIN_VOICED_SHARE: f64 = 0.2;

/// The shared state of one long job's delivery.
struct LongJob<'a> {
    pipeline: &'a Pipeline,
    job: &'a TtsJob,
    plan: &'a [Part],
    checkpoint: Arc<Mutex<PartsCheckpoint>>,
    /// One submission at a time per job (see the module's doc). The
    /// spawned submission step holds it: whoever takes it next knows no
    /// submission of this job is in flight.
    submit_turn: Arc<Mutex<()>>,
    calls: AtomicU32,
    /// The voice key the speaking rate is learned under.
    voice: String,
}

/// A part's audio as a 16-bit PCM WAV file, whatever Segmind served: a WAV
/// (or raw PCM) as is, an MP3 decoded (off the async threads).
async fn as_wav(
    bytes: bytes::Bytes,
    content_type: Option<&str>,
) -> Result<bytes::Bytes, AudioError> {
    let audio = Audio::parse(bytes, content_type)?;
    match audio.format {
        AudioFormat::Wav => Ok(audio.bytes),
        AudioFormat::Mp3 => {
            let pcm = tokio::task::spawn_blocking(move || crate::audio::decode_mp3(audio.bytes))
                .await
                .map_err(|e| AudioError::Undecodable {
                    format: "mp3",
                    detail: e.to_string(),
                })??;
            let format = PcmFormat {
                sample_rate: pcm.sample_rate,
                channels: pcm.channels,
            };
            let mut wav = Vec::with_capacity(44 + pcm.samples.len());
            wav.extend_from_slice(&stitch::wav_header(format, pcm.samples.len() as u64));
            wav.extend_from_slice(&pcm.samples);
            Ok(bytes::Bytes::from(wav))
        }
        other => Err(AudioError::NotStitchable {
            format: other.extension(),
        }),
    }
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

impl Pipeline {
    /// Runs a job whose text was planned as several parts.
    pub(super) async fn run_parts(
        &self,
        job: &TtsJob,
        attempt: u32,
        plan: &[Part],
        calls: &mut u32,
    ) -> Result<Completed, JobError> {
        let part_chars = self.long_text.part_chars;
        let loaded =
            Box::pin(
                self.checkpoints
                    .load_parts(&job.id, &job.speech, part_chars, plan.len()),
            )
            .await?;
        if let Some(cp) = &loaded
            && let Some(done) = Box::pin(self.replay_stitched(job, cp, attempt)).await?
        {
            return Ok(done);
        }
        let key = self.keys.key_for(job, job.deliverable.format.extension())?;
        // Refused before anything is paid for.
        Box::pin(self.check_owner(job, &key)).await?;
        let checkpoint = match loaded {
            Some(cp) => cp,
            None => {
                let cp = PartsCheckpoint::new(&job.id, &job.speech, part_chars, plan.len());
                // Before anything is paid: a redelivery finds the plan its
                // parts' records belong to.
                Box::pin(self.checkpoints.save_plan(&job.id, &cp.plan)).await?;
                cp
            }
        };
        let long = LongJob {
            pipeline: self,
            job,
            plan,
            checkpoint: Arc::new(Mutex::new(checkpoint)),
            submit_turn: Arc::new(Mutex::new(())),
            calls: AtomicU32::new(0),
            voice: rate_key(&job.speech),
        };
        info!(
            parts = plan.len(),
            parallel = self.long_text.max_parallel_parts,
            "long text: synthesizing its parts"
        );
        let result = Box::pin(long.run(&key, attempt)).await;
        *calls += long.calls.load(Ordering::Relaxed);
        result
    }

    /// The completion of a long job whose stitched audio is already stored
    /// and is still the object written then (size, job id and ETag).
    async fn replay_stitched(
        &self,
        job: &TtsJob,
        checkpoint: &PartsCheckpoint,
        attempt: u32,
    ) -> Result<Option<Completed>, JobError> {
        let Some(stored) = &checkpoint.stored else {
            return Ok(None);
        };
        // Rendered for other options: another deliverable, rendered anew
        // (a record of an earlier version is Segmind's WAV as served).
        let rendered_for = stored
            .deliverable
            .clone()
            .unwrap_or_else(|| Deliverable::default().fingerprint());
        if rendered_for != job.deliverable.fingerprint() {
            info!(stored = %rendered_for, asked = %job.deliverable.fingerprint(), "the stored audio was rendered for other options; rendering again");
            return Ok(None);
        }
        // A multipart object has no `sha256` metadata: its ETag changes if
        // it is written again.
        let intact = |info: &crate::storage::ObjectInfo| {
            info.size_bytes == Some(stored.size_bytes)
                && info.job_id.as_deref() == Some(job.id.as_str())
                && (stored.etag.is_none() || info.etag == stored.etag)
        };
        if !self.still_stored(&stored.key, intact).await? {
            return Ok(None);
        }
        let parts: Vec<&PartAudio> = checkpoint
            .parts
            .iter()
            .filter_map(|p| p.audio.as_ref())
            .collect();
        Ok(Some(completed(
            job,
            StoredAudio {
                bucket: self.storage.bucket().to_owned(),
                key: stored.key.clone(),
                content_type: job.deliverable.format.content_type().to_owned(),
                size_bytes: stored.size_bytes,
                sha256: stored.sha256.clone(),
                duration_seconds: Some(stored.duration_seconds),
            },
            &parts,
            Some(stored.marks_key.clone()),
            stored.delivery.clone().map(Box::new),
            attempt,
            true,
        )))
    }
}

impl LongJob<'_> {
    async fn run(&self, key: &ObjectKey, attempt: u32) -> Result<Completed, JobError> {
        // Stage: synthesize, check and store every part, a few at a time.
        let mut parts = futures_util::stream::iter(0..self.plan.len())
            .map(|index| Box::pin(self.part(index)))
            .buffer_unordered(self.pipeline.long_text.max_parallel_parts);
        let mut failed = None;
        while let Some(done) = parts.next().await {
            if let Err(e) = done {
                failed = Some(e);
                break;
            }
        }
        drop(parts);
        if let Some(e) = failed {
            // The first failure ends the delivery, but not before the
            // submission in flight (its own task) has recorded its request
            // id: the next delivery must find it, not pay for it again.
            let _ = self.submit_turn.clone().lock_owned().await;
            return Err(e);
        }
        let records: Vec<PartAudio> = {
            let cp = self.checkpoint.lock().await;
            cp.parts.iter().filter_map(|p| p.audio.clone()).collect()
        };
        if records.len() != self.plan.len() {
            // Every part future ended well, so every part has its audio.
            return Err(JobError::Interrupted(
                "a part ended without its audio recorded".into(),
            ));
        }
        // Stage: stitch, render and store.
        let layout = self.layout(&records)?;
        self.pipeline.check_owner(self.job, key).await?;
        let slot = self.pipeline.transfers.acquire().await.ok();
        let rendered = Box::pin(self.render(key, &records, &layout)).await;
        let rendered = match rendered {
            Err(JobError::PartGone { index, detail }) => {
                // Forget that part's audio: the next delivery produces it again.
                let mut cp = self.checkpoint.lock().await;
                cp.parts[index].audio = None;
                save_part(
                    &self.pipeline.checkpoints,
                    &self.job.id,
                    index,
                    &cp.parts[index],
                )
                .await;
                return Err(JobError::Interrupted(detail));
            }
            other => other?,
        };
        let marks_key = format!("{key}.marks.json");
        let delivery = self
            .write_marks_and_captions(key, &marks_key, &records, &layout, &rendered)
            .await?;
        drop(slot);
        let stored = rendered.audio;
        let seconds = rendered.delivered.duration_seconds;
        self.pipeline
            .metrics
            .audio_bytes
            .observe(stored.size_bytes as f64);
        {
            let mut cp = self.checkpoint.lock().await;
            let record = StitchedRecord {
                key: stored.key.clone(),
                sha256: stored.sha256.clone(),
                size_bytes: stored.size_bytes,
                etag: rendered.etag,
                duration_seconds: seconds,
                marks_key: marks_key.clone(),
                deliverable: Some(self.job.deliverable.fingerprint()),
                delivery: Some(delivery.clone()),
            };
            save_stitched(&self.pipeline.checkpoints, &self.job.id, &record).await;
            cp.stored = Some(record);
        }
        info!(key = %key, bytes = stored.size_bytes, parts = records.len(), seconds, format = %self.job.deliverable.format, lufs = ?delivery.loudness_lufs, "stitched, rendered and stored");
        let refs: Vec<&PartAudio> = records.iter().collect();
        Ok(completed(
            self.job,
            stored,
            &refs,
            Some(marks_key),
            Some(Box::new(delivery)),
            attempt,
            false,
        ))
    }

    /// One part to its stored audio: kept if already stored, resumed if
    /// submitted, else submitted; its audio checked (resubmitted when
    /// unusable, within `jobs.audio_retries`) and stored trimmed.
    async fn part(&self, index: usize) -> Result<(), JobError> {
        let part = &self.plan[index];
        let span = info_span!("part", index, chars = part.text.chars().count());
        async move {
            let (record, submitted_at) = {
                let cp = self.checkpoint.lock().await;
                let r = &cp.parts[index];
                (r.audio.clone(), r.request_id.clone().zip(r.submitted_at))
            };
            if let Some(audio) = record {
                if self.pipeline.storage.head(&audio.key).await?.is_some() {
                    return Ok(());
                }
                warn!(key = %audio.key, "a stored part is missing; producing it again");
            }
            let speech = Speech {
                text: part.text.clone(),
                ..self.job.speech.clone()
            };
            let chars = part.text.chars().count();
            let mut resume = submitted_at.filter(|(_, at)| {
                self.pipeline.checkpoints.resumable_since(*at, chrono::Utc::now())
            });
            let mut retries_left = self.pipeline.jobs.audio_retries;
            loop {
                let deadline = tokio::time::Instant::now() + self.pipeline.job_deadline;
                let (submitted, submitted_at, resumed) = match resume.take() {
                    Some((request_id, at)) => {
                        info!(request_id = %request_id, "resuming the part's Segmind request");
                        self.pipeline.metrics.resumed.with_label_values(&["poll"]).inc();
                        (self.pipeline.segmind.resume(&request_id), at, true)
                    }
                    None => {
                        if self.pipeline.handing_over() {
                            return Err(JobError::HandedOver);
                        }
                        let (s, at) = self.submit(index, &speech, deadline).await?;
                        (s, at, false)
                    }
                };
                let mut calls = 0;
                let fetched = Box::pin(self.pipeline.wait_and_fetch(
                    &submitted,
                    submitted_at,
                    chars,
                    deadline,
                    &mut calls,
                ))
                .await;
                self.calls.fetch_add(calls, Ordering::Relaxed);
                let (synthesis, slot) = match fetched {
                    Err(e)
                        if resumed
                            && failure::classify(&e, &self.pipeline.block_patterns).code
                                == ErrorCode::Expired =>
                    {
                        info!("the part's resumed request has expired at Segmind; submitting again");
                        continue;
                    }
                    other => other?,
                };
                if let Some(t) = synthesis.inference_time_seconds {
                    self.pipeline.metrics.inference_duration.observe(t);
                }
                let wav = as_wav(synthesis.audio.clone(), synthesis.content_type.as_deref()).await;
                match wav.and_then(|wav| self.checked(wav, part)) {
                    Ok((audio, speech)) => {
                        let sentences = self.sentences(&audio, &speech, part).await;
                        let key = self.pipeline.checkpoints.part_audio_key(&self.job.id, index);
                        // The bytes move into the request: no copy is made.
                        self.pipeline
                            .storage
                            .put_bytes(&key, audio, AudioFormat::Wav.content_type())
                            .await?;
                        drop(slot);
                        let mut cp = self.checkpoint.lock().await;
                        cp.parts[index].audio = Some(PartAudio {
                            key,
                            request_id: synthesis.request_id.clone(),
                            data_offset: speech.data_offset,
                            frames: speech.frames,
                            sentences,
                            sample_rate: speech.format.sample_rate,
                            channels: speech.format.channels,
                            inference_time_seconds: synthesis.inference_time_seconds,
                            cost: synthesis.cost,
                        });
                        save_part(&self.pipeline.checkpoints, &self.job.id, index, &cp.parts[index]).await;
                        return Ok(());
                    }
                    // Audio the worker cannot use whatever the take (a
                    // format it does not stitch) is not paid for again.
                    Err(e) if !worth_resubmitting(&e) => return Err(e.into()),
                    Err(e) if retries_left > 0 => {
                        retries_left -= 1;
                        self.pipeline
                            .metrics
                            .retries
                            .with_label_values(&["audio_invalid"])
                            .inc();
                        warn!(error = %e, request_id = %synthesis.request_id, "the part's audio is unusable; submitting the part again");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Submits a part and records its request id, as one step that outlives
    /// the job (see [`Pipeline::submit_and_checkpoint`]); one at a time per
    /// job.
    async fn submit(
        &self,
        index: usize,
        speech: &Speech,
        deadline: tokio::time::Instant,
    ) -> Result<(crate::segmind::Submitted, chrono::DateTime<chrono::Utc>), JobError> {
        let turn = self.submit_turn.clone().lock_owned().await;
        let job_id = self.job.id.clone();
        let segmind = self.pipeline.segmind.clone();
        let checkpoints = self.pipeline.checkpoints.clone();
        let checkpoint = self.checkpoint.clone();
        let speech = speech.clone();
        let step = tokio::spawn(
            async move {
                let _turn = turn;
                let mut calls = 0;
                // The job's first submission starts it, like any new job;
                // its further parts must not hold back the intake of others.
                let started = {
                    let cp = checkpoint.lock().await;
                    cp.parts.iter().any(|p| p.request_id.is_some())
                };
                let submitted = if started {
                    segmind.submit_part(&speech, deadline, &mut calls).await
                } else {
                    segmind.submit(&speech, deadline, &mut calls).await
                };
                let submitted_at = chrono::Utc::now();
                if let Ok(s) = &submitted {
                    let mut cp = checkpoint.lock().await;
                    let record = &mut cp.parts[index];
                    record.request_id = Some(s.request_id.clone());
                    record.submitted_at = Some(submitted_at);
                    record.submissions += 1;
                    save_part(&checkpoints, &job_id, index, record).await;
                }
                (submitted.map(|s| (s, submitted_at)), calls)
            }
            .in_current_span(),
        );
        match step.await {
            Ok((result, used)) => {
                self.calls.fetch_add(used, Ordering::Relaxed);
                Ok(result?)
            }
            Err(e) => Err(JobError::Interrupted(e.to_string())),
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
    ) -> Result<(bytes::Bytes, SpeechSpan), AudioError> {
        let chars = part.text.chars().count();
        let wav = stitch::parse_wav(&audio).map_err(|e| AudioError::NotStitchable {
            format: if matches!(e, stitch::WavError::NotPcm16 { .. }) {
                "non-16-bit wav"
            } else {
                "wav"
            },
        })?;
        let speech = stitch::speech_bounds(&audio[wav.data.clone()], wav.format);
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
        if let Verdict::Truncated { ratio } =
            self.pipeline
                .speaking_rate
                .judge(&self.voice, chars, seconds)
        {
            return Err(AudioError::Truncated {
                seconds,
                chars,
                percent: ratio * 100.0,
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

impl LongJob<'_> {
    /// Where each part goes in the stitched programme; the parts must share
    /// one mono 16-bit PCM format (Gemini's).
    fn layout(&self, records: &[PartAudio]) -> Result<Layout, JobError> {
        let Some(first) = records.first() else {
            return Err(JobError::Interrupted(
                "a job with no parts to stitch".into(),
            ));
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
            .zip(self.plan)
            .map(|(r, p)| (r.frames, p.join))
            .collect();
        Ok(stitch::layout(format, &shape))
    }
}

/// What a speaking rate is learned under: the voices, and the style (a
/// "speak slowly" must not teach the voice's rate to other jobs, nor be
/// judged by it).
fn rate_key(speech: &Speech) -> String {
    let mut key = speech.voice_1.name().to_owned();
    if let Some(v2) = speech.voice_2 {
        key = format!("{key}+{}", v2.name());
    }
    if let Some(style) = &speech.style {
        key = format!("{key}|{}", style.to_lowercase());
    }
    key
}

/// Whether another take of a part may give usable audio: Gemini's empty,
/// silent or truncated takes, not audio the worker cannot read.
fn worth_resubmitting(e: &AudioError) -> bool {
    !matches!(
        e,
        AudioError::NotStitchable { .. }
            | AudioError::Undecodable { .. }
            | AudioError::MixedFormats { .. }
            | AudioError::Unrecognised { .. }
    )
}

/// A long job's completion from its parts' records.
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
    Completed {
        job_id: job.id.clone(),
        audio,
        request_id: request_ids.first().cloned().unwrap_or_default(),
        parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
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
