//! The last stage of a rendered job: its parts' speech read back in order
//! with the pause after each ([`PcmReader`]), measured for loudness over the
//! whole programme when a target is asked (pass 1), then rendered —
//! resampled, given one gain, encoded — and uploaded as a stream in S3
//! multipart parts (pass 2); the timing marks and caption files are written
//! beside it.
//!
//! The DSP is synchronous and CPU-bound: it runs on a blocking thread
//! ([`OffThread`]) fed through a bounded channel, so memory holds a few
//! chunks of PCM and one upload part whatever the audio's length, and the
//! async threads never encode.

use tracing::info;

use super::JobRun;
use crate::captions;
use crate::checkpoint::{PartAudio, StitchedRecord};
use crate::deliverable::{CaptionFormat, SOURCE_RATE};
use crate::job::{Caption, Delivery, ObjectKey, StoredAudio};
use crate::plan::Part;
use crate::render::{self, Delivered, Meter, Render, RenderSpec};
use crate::stitch::Layout;
use crate::storage::{ObjectStream, Storage};
use crate::wire::marks::{Marks, PartMark, SentenceMark};
use crate::worker::pipeline::JobError;

mod offthread;

use offthread::{OffThread, Sink};

/// Frames of silence handed to the DSP thread at a time (one second; speech
/// goes in the chunks S3 reads give): with the chunks queued for the DSP
/// thread, the PCM in memory.
const CHUNK_FRAMES: u64 = SOURCE_RATE as u64;

/// What the stage delivered.
pub(super) struct Rendered {
    pub audio: StoredAudio,
    pub etag: Option<String>,
    pub delivered: Delivered,
}

impl JobRun<'_> {
    /// Renders the stitched parts into the deliverable and uploads it under
    /// `key`, its SHA-256 computed on the way.
    pub(super) async fn render(
        &self,
        key: &ObjectKey,
        records: &[PartAudio],
        layout: &Layout,
    ) -> Result<Rendered, JobError> {
        let deliverable = &self.job.deliverable;
        let storage = &self.pipeline.storage;
        let input_rate = layout.format.sample_rate;
        let gain_db = match deliverable.loudness {
            None => 0.0,
            Some(target) => {
                // Pass 1: the whole programme at the output rate.
                let output_rate = deliverable.sample_rate;
                let meter = OffThread::spawn(move || Meter::new(input_rate, output_rate));
                let measured =
                    Box::pin(drive(PcmReader::new(storage, records, layout), meter, None)).await?;
                let format = deliverable.format;
                let ceiling = render::ceiling_db(&target, format);
                let mut gain = render::gain_db(&measured, &target, format);
                info!(
                    measured_lufs = ?measured.integrated_lufs,
                    true_peak_db = ?measured.true_peak_db,
                    target_lufs = target.lufs,
                    gain_db = gain,
                    "loudness measured over the whole programme"
                );
                // The limiter takes some loudness with the peaks it shaves:
                // measured again through it, the gain makes up for that
                // (only when it limits at all; a read pass each).
                let mut tried = Vec::new();
                for _ in 0..render::MAKE_UP_PASSES {
                    if !render::limits(&measured, gain, ceiling) {
                        break;
                    }
                    let meter = OffThread::spawn(move || {
                        Meter::limited(input_rate, output_rate, gain, ceiling)
                    });
                    let through =
                        Box::pin(drive(PcmReader::new(storage, records, layout), meter, None))
                            .await?;
                    let limited_lufs = through.integrated_lufs;
                    tried.push((gain, through));
                    let Some(next) = render::made_up_gain(&measured, &tried, &target, format)
                    else {
                        break;
                    };
                    info!(
                        ?limited_lufs,
                        gain_db = next,
                        "the limiter took loudness off the peaks; making it up"
                    );
                    gain = next;
                }
                gain
            }
        };
        let spec = RenderSpec {
            format: deliverable.format,
            input_rate,
            output_rate: deliverable.sample_rate,
            bitrate_kbps: deliverable.bitrate_kbps,
            gain_db,
            // A loudness target is met under its true-peak ceiling by the
            // limiter, not by holding the whole programme down.
            ceiling_db: deliverable
                .loudness
                .map(|t| render::ceiling_db(&t, deliverable.format)),
            input_frames: layout.frames,
        };
        let mut upload = storage
            .start_multipart(
                key,
                deliverable.format.content_type(),
                &self.job.id,
                &[
                    ("parts", records.len().to_string()),
                    ("deliverable", deliverable.fingerprint()),
                ],
            )
            .await?;
        // Pass 2: render and upload.
        let written = {
            let encoder = OffThread::spawn(move || Render::new(spec));
            let mut sink = Sink::new(&mut upload);
            match Box::pin(drive(
                PcmReader::new(storage, records, layout),
                encoder,
                Some(&mut sink),
            ))
            .await
            {
                Ok(delivered) => sink
                    .finish()
                    .await
                    .map(|(sha, size)| (delivered, sha, size)),
                Err(e) => Err(e),
            }
        };
        // The render took a while: the key must still be free or ours, and
        // the object is assembled only if it still is (conditionally where
        // the store honours it: the same guarded write as every object).
        let completed = match written {
            Ok(w) => self
                .pipeline
                .write_exclusive(self.job, key, |absent| upload.complete(absent))
                .await
                .map(|etag| (w, etag)),
            Err(e) => Err(e),
        };
        let ((delivered, sha256, size_bytes), etag) = match completed {
            Ok(done) => done,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        Ok(Rendered {
            audio: StoredAudio {
                bucket: storage.bucket().to_owned(),
                key: key.to_string(),
                content_type: deliverable.format.content_type().to_owned(),
                size_bytes,
                sha256,
                duration_seconds: Some(delivered.duration_seconds),
            },
            etag,
            delivered,
        })
    }

    /// Writes the timing marks (parts and sentences, in the delivered
    /// file's timeline) and the caption files asked for; returns what the
    /// completion event says of the delivery.
    pub(super) async fn write_marks_and_captions(
        &self,
        key: &ObjectKey,
        marks_key: &ObjectKey,
        records: &[PartAudio],
        plan: &[Part],
        layout: &Layout,
        rendered: &Rendered,
    ) -> Result<Delivery, JobError> {
        let timeline = Timeline {
            input_rate: layout.format.sample_rate,
        };
        // Sentences come in the text's order: one forward walk slices them
        // all, with no copy or index of the whole text.
        let mut slicer = CharSlicer::new(&self.job.speech.text);
        let mut text_of = |[s, e]: [usize; 2]| -> String { slicer.slice(s, e).to_owned() };
        let mut sentences = Vec::new();
        for (((index, record), placed), part) in
            records.iter().enumerate().zip(&layout.parts).zip(plan)
        {
            if record.sentences.is_empty() {
                // A part recorded by an earlier version: one span.
                let chars = [part.chars.start, part.chars.end];
                sentences.push(SentenceMark {
                    part: index,
                    chars,
                    text: text_of(chars).trim().to_owned(),
                    start_ms: timeline.millis(placed.start),
                    end_ms: timeline.millis(placed.end),
                });
            }
            for s in &record.sentences {
                sentences.push(SentenceMark {
                    part: index,
                    chars: s.chars,
                    text: text_of(s.chars),
                    start_ms: timeline.millis(placed.start + s.frames[0]),
                    end_ms: timeline.millis(placed.start + s.frames[1]),
                });
            }
        }
        let marks = Marks {
            job_id: self.job.id.to_string(),
            audio_key: key.to_string(),
            format: self.job.deliverable.format.as_str().to_owned(),
            sample_rate: rendered.delivered.sample_rate,
            duration_ms: (rendered.delivered.duration_seconds * 1_000.0).round() as u64,
            parts: plan
                .iter()
                .zip(records)
                .zip(&layout.parts)
                .enumerate()
                .map(|(index, ((part, record), placed))| PartMark {
                    index,
                    chars: [part.chars.start, part.chars.end],
                    start_ms: timeline.millis(placed.start),
                    end_ms: timeline.millis(placed.end),
                    request_id: record.request_id.clone(),
                })
                .collect(),
            sentences,
        };
        // Serializing strings and numbers cannot fail.
        let body = serde_json::to_vec_pretty(&marks).unwrap_or_default();
        let pipeline = self.pipeline;
        Box::pin(pipeline.write_derived(self.job, marks_key, body.into(), "application/json"))
            .await?;
        let mut captions_written = Vec::new();
        if !self.job.deliverable.captions.is_empty() {
            let timed: Vec<(&str, u64, u64)> = marks
                .sentences
                .iter()
                .map(|s| (s.text.as_str(), s.start_ms, s.end_ms))
                .collect();
            // Inside the delivered audio: a short last sentence's cue is
            // held no later than the end.
            let end_ms = marks.duration_ms;
            let cues: Vec<captions::Cue> = captions::cues(&timed)
                .into_iter()
                .filter(|c| c.start_ms < end_ms)
                .map(|mut c| {
                    c.end_ms = c.end_ms.min(end_ms);
                    c
                })
                .collect();
            for &format in &self.job.deliverable.captions {
                let body = match format {
                    CaptionFormat::Vtt => captions::to_vtt(&cues),
                    CaptionFormat::Srt => captions::to_srt(&cues),
                };
                let caption_key = caption_key(key, format);
                Box::pin(pipeline.write_derived(
                    self.job,
                    &caption_key,
                    body.into_bytes().into(),
                    format.content_type(),
                ))
                .await?;
                captions_written.push(Caption {
                    format,
                    key: caption_key.to_string(),
                });
            }
        }
        let d = &rendered.delivered;
        Ok(Delivery {
            format: self.job.deliverable.format,
            sample_rate: d.sample_rate,
            channels: d.channels,
            bitrate_kbps: d.bitrate_kbps,
            loudness_lufs: d.loudness_lufs,
            true_peak_db: d.true_peak_db,
            captions: captions_written,
        })
    }
}

impl JobRun<'_> {
    /// Copies a rendered delivery (`stored`, still intact) to `key`: the
    /// audio as a stream, the marks rewritten to name it, the caption files
    /// beside it; records it. `None` when the audio went meanwhile.
    pub(super) async fn move_delivery(
        &self,
        stored: &StitchedRecord,
        key: &ObjectKey,
        plan: &str,
    ) -> Result<Option<StitchedRecord>, JobError> {
        let pipeline = self.pipeline;
        let storage = &pipeline.storage;
        pipeline.check_owner(self.job, key).await?;
        let content_type = stored
            .content_type
            .clone()
            .unwrap_or_else(|| self.job.deliverable.format.content_type().to_owned());
        let started = std::time::Instant::now();
        let Some((etag, size_bytes)) = storage
            .copy_streamed(
                &stored.key,
                key,
                &content_type,
                &self.job.id,
                &[("deliverable", self.job.deliverable.fingerprint())],
            )
            .await?
        else {
            return Ok(None);
        };
        pipeline
            .metrics
            .s3_upload
            .observe(started.elapsed().as_secs_f64());
        let marks_key = key.derived(MARKS_SUFFIX);
        if let Some(old) = &stored.marks_key
            && let Some(bytes) = storage.get_optional(old).await?
            && let Ok(mut marks) = serde_json::from_slice::<Marks>(&bytes)
        {
            marks.audio_key = key.to_string();
            // Serializing strings and numbers cannot fail.
            let body = serde_json::to_vec_pretty(&marks).unwrap_or_default();
            Box::pin(pipeline.write_derived(self.job, &marks_key, body.into(), "application/json"))
                .await?;
        }
        let mut delivery = stored.delivery.clone();
        if let Some(delivery) = delivery.as_mut() {
            for caption in &mut delivery.captions {
                let to = caption_key(key, caption.format);
                if let Some(bytes) = storage.get_optional(&caption.key).await? {
                    Box::pin(pipeline.write_derived(
                        self.job,
                        &to,
                        bytes,
                        caption.format.content_type(),
                    ))
                    .await?;
                }
                caption.key = to.to_string();
            }
        }
        info!(from = %stored.key, to = %key, "a rendered delivery copied to the key asked now");
        let record = StitchedRecord {
            plan: Some(plan.to_owned()),
            key: key.to_string(),
            sha256: stored.sha256.clone(),
            size_bytes,
            etag,
            duration_seconds: stored.duration_seconds,
            marks_key: Some(marks_key.to_string()),
            content_type: Some(content_type),
            deliverable: stored.deliverable.clone(),
            delivery,
        };
        super::save_stitched(&pipeline.checkpoints, &self.job.id, &record).await;
        Ok(Some(record))
    }
}

/// The suffix of a delivery's timing marks (`talk.mp3.marks.json`).
pub(super) const MARKS_SUFFIX: &str = ".marks.json";

/// A caption file's key: the audio's full key and the caption's extension
/// (`talk.mp3` → `talk.mp3.vtt`), so that two formats of one name (two jobs'
/// `talk.mp3` and `talk.ogg`) never write the same caption file.
fn caption_key(audio: &ObjectKey, format: CaptionFormat) -> ObjectKey {
    audio.derived(&format!(".{}", format.extension()))
}

/// Maps a frame of the stitched programme (at the parts' rate) to the
/// delivered file's timeline: the same instant, whatever the output rate
/// (the resampler keeps time) and the format (no codec delay reaches a
/// decoder: MP3 carries its Info frame, Opus its pre-skip).
struct Timeline {
    input_rate: u32,
}

impl Timeline {
    fn millis(&self, frame: u64) -> u64 {
        let seconds = frame as f64 / f64::from(self.input_rate.max(1));
        (seconds * 1_000.0).round() as u64
    }
}

/// The stitched programme as 16-bit mono PCM chunks: each part's speech,
/// streamed from its stored object, then the pause after it.
struct PcmReader<'a> {
    storage: &'a Storage,
    records: &'a [PartAudio],
    layout: &'a Layout,
    /// The part being read (or whose pause is being written).
    index: usize,
    stream: Option<ObjectStream>,
    skip: u64,
    left: u64,
    pause_left: u64,
    pcm: Le16,
    opened: usize,
}

impl<'a> PcmReader<'a> {
    fn new(storage: &'a Storage, records: &'a [PartAudio], layout: &'a Layout) -> Self {
        PcmReader {
            storage,
            records,
            layout,
            index: 0,
            stream: None,
            skip: 0,
            left: 0,
            pause_left: 0,
            pcm: Le16::default(),
            opened: 0,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<i16>>, JobError> {
        loop {
            if let Some(stream) = &mut self.stream {
                if self.left == 0 {
                    self.stream = None;
                    continue;
                }
                let Some(chunk) = stream.next_chunk().await? else {
                    return Err(JobError::PartGone {
                        index: self.index,
                        detail: format!(
                            "the stored part {} is shorter than recorded; the next delivery produces it again",
                            self.records[self.index].key
                        ),
                    });
                };
                let s = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.skip -= s as u64;
                let body = &chunk[s..];
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(body.len());
                self.left -= take as u64;
                let samples = self.pcm.samples(&body[..take]);
                if !samples.is_empty() {
                    return Ok(Some(samples));
                }
            } else if self.pause_left > 0 {
                let n = self.pause_left.min(CHUNK_FRAMES);
                self.pause_left -= n;
                return Ok(Some(vec![0; n as usize]));
            } else if self.opened < self.records.len() {
                let index = self.opened;
                let record = &self.records[index];
                let Some(stream) = self.storage.read_stream(&record.key).await? else {
                    return Err(JobError::PartGone {
                        index,
                        detail: format!(
                            "the stored part {} is gone; the next delivery produces it again",
                            record.key
                        ),
                    });
                };
                self.index = index;
                self.opened += 1;
                self.stream = Some(stream);
                self.skip = record.data_offset;
                self.left = record.frames * 2;
                self.pcm = Le16::default();
                self.pause_left = self.layout.parts.get(index).map_or(0, |p| p.pause);
            } else {
                return Ok(None);
            }
        }
    }
}

/// 16-bit little-endian samples from chunks of any length (an S3 body's
/// chunks may end inside a sample).
#[derive(Debug, Default)]
struct Le16 {
    /// The odd byte of a chunk that ended inside a sample.
    carry: Option<u8>,
}

impl Le16 {
    /// The samples of `bytes`, with the odd byte of the previous chunk in
    /// front.
    fn samples(&mut self, mut bytes: &[u8]) -> Vec<i16> {
        let mut out = Vec::with_capacity(bytes.len() / 2 + 1);
        if bytes.is_empty() {
            return out;
        }
        if let Some(low) = self.carry.take() {
            out.push(i16::from_le_bytes([low, bytes[0]]));
            bytes = &bytes[1..];
        }
        let pairs = bytes.chunks_exact(2);
        if let [odd] = pairs.remainder() {
            self.carry = Some(*odd);
        }
        out.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
        out
    }
}

/// Feeds the programme to `work`, writing what it produces to `sink`.
async fn drive<D: Send + 'static>(
    mut reader: PcmReader<'_>,
    work: OffThread<D>,
    mut sink: Option<&mut Sink<'_>>,
) -> Result<D, JobError> {
    let OffThread {
        input,
        mut output,
        done,
    } = work;
    while let Some(pcm) = reader.next().await? {
        if input.send(pcm).await.is_err() {
            // The thread ended early: its error is in `done`.
            break;
        }
        while let Ok(bytes) = output.try_recv() {
            if let Some(sink) = sink.as_deref_mut() {
                sink.write(&bytes).await?;
            }
        }
    }
    drop(input);
    while let Some(bytes) = output.recv().await {
        if let Some(sink) = sink.as_deref_mut() {
            sink.write(&bytes).await?;
        }
    }
    match done.await {
        Ok(result) => Ok(result?),
        Err(e) => Err(JobError::Interrupted(format!(
            "the audio render stopped: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ObjectKey {
        ObjectKey::parse(s, 1024).expect("a key")
    }

    #[test]
    fn caption_files_are_named_after_the_audio() {
        let named = |audio: &str, format| caption_key(&key(audio), format).to_string();
        assert_eq!(named("tts/j-1.mp3", CaptionFormat::Vtt), "tts/j-1.mp3.vtt");
        assert_eq!(named("a.b/talk", CaptionFormat::Srt), "a.b/talk.srt");
        // Two formats of one name: two caption files.
        assert_ne!(
            named("talk.mp3", CaptionFormat::Vtt),
            named("talk.ogg", CaptionFormat::Vtt)
        );
    }

    #[test]
    fn samples_split_across_chunks_of_any_length_are_kept_whole() {
        let samples: Vec<i16> = (0..1_000).map(|i| (i * 37 - 9_000) as i16).collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut pcm = Le16::default();
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        // Odd lengths, and empty chunks while a byte is carried.
        for len in [1, 0, 3, 0, 0, 7, 2, 5].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*len).min(rest.len()));
            got.extend(pcm.samples(chunk));
            rest = tail;
        }
        assert_eq!(got, samples);
    }

    #[test]
    fn marks_follow_the_delivered_timeline() {
        let t = Timeline { input_rate: 24_000 };
        assert_eq!(t.millis(24_000), 1_000);
        assert_eq!(t.millis(36), 2);
    }
}

/// Slices a text by character offsets, walking forward from the last
/// offset asked (an earlier one walks again from the start).
struct CharSlicer<'a> {
    text: &'a str,
    char_at: usize,
    byte_at: usize,
}

impl<'a> CharSlicer<'a> {
    fn new(text: &'a str) -> Self {
        CharSlicer {
            text,
            char_at: 0,
            byte_at: 0,
        }
    }

    /// The byte offset of character `c` (the text's end past it).
    fn byte_of(&mut self, c: usize) -> usize {
        if c < self.char_at {
            (self.char_at, self.byte_at) = (0, 0);
        }
        let rest = &self.text[self.byte_at..];
        match rest.char_indices().nth(c - self.char_at) {
            Some((b, _)) => {
                self.byte_at += b;
                self.char_at = c;
            }
            None => {
                self.char_at += rest.chars().count();
                self.byte_at = self.text.len();
            }
        }
        self.byte_at
    }

    /// Characters `s..e` (clamped to the text).
    fn slice(&mut self, s: usize, e: usize) -> &'a str {
        let start = self.byte_of(s.min(e));
        let end = self.byte_of(e);
        &self.text[start..end]
    }
}

#[cfg(test)]
mod slicer_tests {
    use super::CharSlicer;

    #[test]
    fn slices_by_characters_forward_and_back() {
        let text = "Grüße, 世界! 👩‍👩‍👧 end";
        let chars: Vec<char> = text.chars().collect();
        let by_vec = |s: usize, e: usize| {
            chars[s.min(e).min(chars.len())..e.min(chars.len())]
                .iter()
                .collect::<String>()
        };
        let mut slicer = CharSlicer::new(text);
        for (s, e) in [
            (0, 5),
            (5, 9),
            (9, 20),
            (2, 4),
            (0, 0),
            (17, 40),
            (40, 50),
            (3, 3),
        ] {
            assert_eq!(slicer.slice(s, e), by_vec(s, e), "{s}..{e}");
        }
    }
}
