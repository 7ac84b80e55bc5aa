//! Audio the simulator serves: real 24 kHz 16-bit mono WAV. With `espeak-ng`
//! installed it is real speech (a different voice per speaker); otherwise a
//! tone per word, of a plausible duration for the text.
//!
//! The realistic model ([`render_speech`]) speaks the text sentence by
//! sentence with the rhythm of read speech, so that the worker's sentence
//! alignment can be measured against known times ([`Truth`]): sentences
//! (UAX #29) each take time in proportion to their characters, give or take
//! [`RATE_JITTER`]; words are tone bursts with short gaps (too short to
//! look like a sentence's pause), commas and semicolons pause briefly, and
//! sentences, lines and paragraphs are followed by longer pauses of varying
//! length. A style instruction in front of the text ("Narrate calmly: …",
//! how the worker sends a job's `style`) and two-speaker labels
//! ("Speaker 1:") are not spoken and are not sentences.
//!
//! The audio's length is asked from outside (what is said — [`said`]: no
//! style, no labels — at its scripts' rates and the voice's pace,
//! [`crate::model`]):
//! the silences are drawn first (100–160 ms at each end, 20–60 ms between
//! words, 120–250 ms at a comma, 250–900 ms after a sentence, 400–1,000 ms
//! after a line, 800–1,500 ms after a paragraph, all from a seed) and the
//! words share the rest by characters. The times are the WAV's; an MP3
//! container adds its codec's delay.

use std::f64::consts::PI;
use std::ops::Range;
use std::process::Command;

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use crate::wav;

pub const SAMPLE_RATE: u32 = 24_000;

/// Whether `espeak-ng` can be run.
pub fn espeak_available() -> bool {
    Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One line of a transcript and who says it (0 or 1).
fn turns(text: &str, two_speakers: bool) -> Vec<(usize, String)> {
    let mut speaker = 0;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut said = line;
        if two_speakers && let Some((label, rest)) = line.split_once(':') {
            let label = label.trim().to_ascii_lowercase();
            if label.starts_with("speaker") {
                speaker = usize::from(label.ends_with('2'));
                said = rest.trim();
            }
        }
        if !said.is_empty() {
            out.push((speaker, said.to_owned()));
        }
    }
    out
}

/// Renders `text` as a WAV file.
pub fn render(text: &str, two_speakers: bool, use_espeak: bool) -> Vec<u8> {
    let mut pcm: Vec<i16> = Vec::new();
    for (speaker, line) in turns(text, two_speakers) {
        let spoken = if use_espeak {
            espeak(&line, speaker)
        } else {
            None
        };
        pcm.extend(spoken.unwrap_or_else(|| tones(&line, speaker)));
        pcm.extend(std::iter::repeat_n(0, SAMPLE_RATE as usize / 4));
    }
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    wav::from_pcm(&bytes, SAMPLE_RATE)
}

/// `seconds` of uniform tone speech (a 0.3 s burst per "word", a 0.1 s
/// gap, alternating pitch for two speakers) as a WAV file: what the
/// realistic model serves for a text without a word to speak.
pub fn render_seconds(seconds: f64, two_speakers: bool) -> Vec<u8> {
    let total = frames_in(seconds);
    let pcm = synthesize(&uniform_bursts(total, two_speakers), total);
    wav::from_pcm(&le_bytes(&pcm), SAMPLE_RATE)
}

/// A WAV header with no samples: Gemini's "success with empty audio".
pub fn empty_wav() -> Vec<u8> {
    wav::from_pcm(&[], SAMPLE_RATE)
}

fn espeak(line: &str, speaker: usize) -> Option<Vec<i16>> {
    let voice = if speaker == 0 { "en-us+m3" } else { "en-us+f3" };
    let out = Command::new("espeak-ng")
        .args(["--stdout", "-s", "160", "-v", voice, "--"])
        .arg(line)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let (rate, data) = wav::pcm_of(&out.stdout)?;
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(resample(&samples, rate, SAMPLE_RATE))
}

/// Linear-interpolation resampling; good enough for speech.
fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() || from == 0 {
        return samples.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let n = (samples.len() as f64 / ratio) as usize;
    (0..n)
        .map(|i| {
            let x = i as f64 * ratio;
            let j = x as usize;
            let frac = x - j as f64;
            let a = f64::from(samples[j.min(samples.len() - 1)]);
            let b = f64::from(samples[(j + 1).min(samples.len() - 1)]);
            (a + (b - a) * frac) as i16
        })
        .collect()
}

/// A tone burst per word, ~150 words a minute.
fn tones(line: &str, speaker: usize) -> Vec<i16> {
    let base = if speaker == 0 { 180.0 } else { 280.0 };
    let word_len = (SAMPLE_RATE as f64 * 0.3) as usize;
    let gap = (SAMPLE_RATE as f64 * 0.1) as usize;
    let mut out = Vec::new();
    for word in line.split_whitespace() {
        let pitch = base + (word.len() % 7) as f64 * 15.0;
        for i in 0..word_len {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let envelope = (PI * i as f64 / word_len as f64).sin();
            out.push(((2.0 * PI * pitch * t).sin() * envelope * 8000.0) as i16);
        }
        out.extend(std::iter::repeat_n(0, gap));
    }
    out
}

/// How much each sentence's speaking rate strays from the text's: ± 15 %.
pub const RATE_JITTER: f64 = 0.15;

/// Silence before the first word and after the last one (seconds): short,
/// as Gemini's is, since the worker trims it.
const LEAD: Range<f64> = 0.10..0.16;
const TRAIL: Range<f64> = 0.10..0.16;
/// Between words: too short to be taken for a sentence's pause.
const WORD_GAP: Range<f64> = 0.02..0.06;
/// After a comma, semicolon, colon or dash inside a sentence.
const CLAUSE_PAUSE: Range<f64> = 0.12..0.25;
/// After a sentence, a line (a dialogue turn) and a paragraph.
const SENTENCE_PAUSE: Range<f64> = 0.25..0.90;
const LINE_PAUSE: Range<f64> = 0.40..1.00;
const PARAGRAPH_PAUSE: Range<f64> = 0.80..1.50;
/// Silence never takes more than this share of the audio: a very short
/// audio for its text squeezes its pauses rather than its words.
const MAX_SILENCE_SHARE: f64 = 0.5;
/// Ramps at the start and end of a burst (seconds): soft edges like a
/// word's, without making a long burst quiet for long.
const RAMP: f64 = 0.03;
const AMPLITUDE: f64 = 8000.0;
/// Longest style instruction recognised in front of a text (the worker
/// accepts styles up to 300 characters).
const MAX_STYLE_CHARS: usize = 300;
/// Abbreviations after which UAX #29 ends a sentence but a reader does not
/// pause ("Dr. Smith").
const ABBREVIATIONS: [&str; 13] = [
    "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "Sr.", "Jr.", "vs.", "e.g.", "i.e.", "No.", "Fig.",
];
/// What ends a clause inside a sentence (a short pause follows).
const CLAUSE_ENDS: [char; 10] = [',', ';', ':', '—', '–', '、', '，', '；', '：', '…'];

/// Where one sentence is in the audio the simulator serves: the ground
/// truth the worker's sentence alignment is measured against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentenceTruth {
    /// Unicode scalar offsets `[start, end)` in the text the simulator
    /// received (with `[[sim:…]]` markers removed): the sentence without
    /// surrounding whitespace or a speaker label.
    pub chars: [usize; 2],
    pub text: String,
    /// Milliseconds from the start of the served WAV to the start of the
    /// sentence's first word and the end of its last word.
    pub start_ms: u64,
    pub end_ms: u64,
}

impl SentenceTruth {
    /// `chars` as a range.
    pub fn range(&self) -> Range<usize> {
        self.chars[0]..self.chars[1]
    }
}

/// The ground truth of one rendered text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// Characters of a style instruction recognised in front of the text
    /// (`"Narrate calmly: "`, colon and space included): followed, not
    /// spoken, not a sentence.
    pub style: Option<[usize; 2]>,
    /// The sentences spoken, in order. When the audio is cut (Gemini's
    /// cap, a truncation fault) only those that start before the cut are
    /// listed, the last one ending at the cut.
    pub sentences: Vec<SentenceTruth>,
}

/// A stable seed for a text (FNV-1a): the same text always gets the same
/// rhythm, so a retried part sounds as the first take did.
pub fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Renders `text` as `seconds` of sentence-shaped tone speech (a WAV file)
/// with its ground truth: the realistic model's audio for tests.
pub fn render_sentences(
    text: &str,
    seconds: f64,
    two_speakers: bool,
    seed: u64,
) -> (Vec<u8>, Vec<SentenceTruth>) {
    let (wav, truth) = render_speech(text, seconds, seconds, two_speakers, seed);
    (wav, truth.sentences)
}

/// Renders `text` spoken over `seconds`, served only up to `served_seconds`
/// (the rest is cut, as Gemini cuts audio past its cap), with its truth.
pub fn render_speech(
    text: &str,
    seconds: f64,
    served_seconds: f64,
    two_speakers: bool,
    seed: u64,
) -> (Vec<u8>, Truth) {
    let timeline = timeline(text, seconds, two_speakers, seed);
    let served = frames_in(served_seconds.min(seconds));
    let pcm = synthesize(&timeline.bursts, served);
    (
        wav::from_pcm(&le_bytes(&pcm), SAMPLE_RATE),
        timeline.truth(served),
    )
}

/// The truth [`render_speech`] would return, without rendering samples.
pub fn truth(
    text: &str,
    seconds: f64,
    served_seconds: f64,
    two_speakers: bool,
    seed: u64,
) -> Truth {
    timeline(text, seconds, two_speakers, seed).truth(frames_in(served_seconds.min(seconds)))
}

/// The bytes of a style instruction in front of `text` (`"Say cheerfully:
/// "`), which Gemini follows and does not speak; the worker sends a job's
/// `style` so. Recognised by shape: the first line's text before its first
/// colon, followed by a space and more text, at most 300 characters,
/// starting with a letter, holding no sentence end and not a speaker label.
/// A heading such as "Chapter One: The Storm" has that shape too and is
/// taken for a style, as Gemini may take it.
pub fn style_prefix(text: &str) -> Option<usize> {
    let line = text.lines().next()?;
    let colon = line.find(':')?;
    let style = line[..colon].trim();
    let after = &text[colon + 1..];
    let shaped = style.chars().next().is_some_and(char::is_alphabetic)
        && style.chars().count() <= MAX_STYLE_CHARS
        && !style.contains(['.', '!', '?', '。', '！', '？'])
        && speaker_label(line).is_none()
        && after.starts_with(char::is_whitespace)
        && !after.trim().is_empty();
    shaped.then(|| text.len() - after.trim_start().len())
}

/// What Gemini says of `text`: without a style in front
/// ([`style_prefix`]) and, with two speakers, without the lines' speaker
/// labels.
pub fn said(text: &str, two_speakers: bool) -> String {
    let body = &text[style_prefix(text).unwrap_or(0)..];
    if !two_speakers {
        return body.to_owned();
    }
    body.split_inclusive('\n')
        .map(|line| {
            let trimmed = line.trim_start();
            match speaker_label(trimmed) {
                Some((len, _)) => &trimmed[len..],
                None => line,
            }
        })
        .collect()
}

/// A "Speaker N:" label at the start of `s`: the bytes it takes (with the
/// spaces after it) and the speaker (0 or 1).
fn speaker_label(s: &str) -> Option<(usize, usize)> {
    let colon = s.find(':').filter(|&c| c <= 16)?;
    let label = s[..colon].trim().to_ascii_lowercase();
    let number = label.strip_prefix("speaker")?.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let rest = &s[colon + 1..];
    Some((
        s.len() - rest.trim_start().len(),
        usize::from(number.ends_with('2')),
    ))
}

/// What separates a sentence from the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    Sentence,
    Line,
    Paragraph,
}

/// A sentence as spoken: its bytes in the text, who says it, what precedes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Said {
    bytes: Range<usize>,
    speaker: usize,
    after: Break,
}

/// The style's byte range and the spoken sentences of `text`.
fn said_sentences(text: &str, two_speakers: bool) -> (Option<Range<usize>>, Vec<Said>) {
    let style = style_prefix(text);
    let base = style.unwrap_or(0);
    let body = &text[base..];
    // UAX #29 segments, merged where one ends with an abbreviation.
    let mut segments: Vec<Range<usize>> = Vec::new();
    let mut open: Option<usize> = None;
    for (i, segment) in body.split_sentence_bound_indices() {
        let start = *open.get_or_insert(base + i);
        let end = base + i + segment.len();
        if !ends_with_abbreviation(segment.trim_end()) {
            segments.push(start..end);
            open = None;
        }
    }
    if let Some(start) = open {
        segments.push(start..text.len());
    }
    let mut said = Vec::new();
    let mut speaker = 0;
    let mut previous_end = base;
    for segment in segments {
        let raw = &text[segment.clone()];
        let mut start = segment.start + (raw.len() - raw.trim_start().len());
        let end = segment.start + raw.trim_end().len();
        if start >= end {
            continue;
        }
        if two_speakers && let Some((label, who)) = speaker_label(&text[start..end]) {
            start += label;
            speaker = who;
        }
        if start >= end {
            continue;
        }
        let between = &text[previous_end..start];
        let breaks = between.matches('\n').count();
        let after = match breaks {
            0 => Break::Sentence,
            1 => Break::Line,
            _ => Break::Paragraph,
        };
        said.push(Said {
            bytes: start..end,
            speaker,
            after,
        });
        previous_end = end;
    }
    (style.map(|s| 0..s), said)
}

fn ends_with_abbreviation(s: &str) -> bool {
    ABBREVIATIONS.iter().any(|a| {
        s.strip_suffix(a).is_some_and(|before| {
            before
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric())
        })
    })
}

/// A tone burst: a word.
#[derive(Debug, Clone, PartialEq)]
struct Burst {
    start: usize,
    len: usize,
    pitch: f64,
}

/// A sentence's place: characters, text and frames.
#[derive(Debug, Clone)]
struct Placed {
    chars: [usize; 2],
    text: String,
    frames: Range<usize>,
}

/// Where every word and sentence of a text goes in its audio.
struct Timeline {
    style: Option<[usize; 2]>,
    bursts: Vec<Burst>,
    sentences: Vec<Placed>,
}

impl Timeline {
    /// The truth of the audio served up to frame `served`.
    fn truth(&self, served: usize) -> Truth {
        let ms = |frames: usize| {
            (frames as u64 * 1_000 + u64::from(SAMPLE_RATE) / 2) / u64::from(SAMPLE_RATE)
        };
        Truth {
            style: self.style,
            sentences: self
                .sentences
                .iter()
                .filter(|s| s.frames.start < served)
                .map(|s| SentenceTruth {
                    chars: s.chars,
                    text: s.text.clone(),
                    start_ms: ms(s.frames.start),
                    end_ms: ms(s.frames.end.min(served)),
                })
                .collect(),
        }
    }
}

/// A small seeded generator (SplitMix64): a stable sequence for a seed,
/// whatever `rand`'s algorithms become.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn within(&mut self, range: Range<f64>) -> f64 {
        range.start + (range.end - range.start) * self.next_f64()
    }
}

/// Plans `text` spoken over `seconds`: sentences in order, each word a
/// burst, pauses between, the silences first and the speaking time shared
/// by characters.
fn timeline(text: &str, seconds: f64, two_speakers: bool, seed: u64) -> Timeline {
    let total = frames_in(seconds);
    let (style, said) = said_sentences(text, two_speakers);
    let chars_at = CharOffsets::new(text);
    let style = style.map(|s| [chars_at.of(s.start), chars_at.of(s.end)]);
    if said.is_empty() {
        return Timeline {
            style,
            bursts: uniform_bursts(total, two_speakers),
            sentences: Vec::new(),
        };
    }
    let mut rng = Rng(seed);
    let lead = rng.within(LEAD);
    let trail = rng.within(TRAIL);
    // Per sentence: the pause before it and its words (weight, gap after).
    let mut plans: Vec<(f64, Vec<(f64, f64)>)> = Vec::with_capacity(said.len());
    let mut silence = lead + trail;
    let mut weight = 0.0;
    for (i, s) in said.iter().enumerate() {
        let factor = 1.0 + rng.within(-RATE_JITTER..RATE_JITTER);
        let pause = match (i, s.after) {
            (0, _) => 0.0,
            (_, Break::Sentence) => rng.within(SENTENCE_PAUSE),
            (_, Break::Line) => rng.within(LINE_PAUSE),
            (_, Break::Paragraph) => rng.within(PARAGRAPH_PAUSE),
        };
        let words: Vec<&str> = text[s.bytes.clone()].split_whitespace().collect();
        let mut planned = Vec::with_capacity(words.len());
        for (j, word) in words.iter().enumerate() {
            let gap = if j + 1 == words.len() {
                0.0
            } else if word.ends_with(CLAUSE_ENDS) {
                rng.within(CLAUSE_PAUSE)
            } else {
                rng.within(WORD_GAP)
            };
            let w = word.chars().count() as f64 * factor;
            weight += w;
            silence += gap;
            planned.push((w, gap));
        }
        silence += pause;
        plans.push((pause, planned));
    }
    let rate = f64::from(SAMPLE_RATE);
    let length = total as f64 / rate;
    let squeeze = if silence > MAX_SILENCE_SHARE * length && silence > 0.0 {
        MAX_SILENCE_SHARE * length / silence
    } else {
        1.0
    };
    let speaking = (length - silence * squeeze).max(0.0);
    let frame = |t: f64| ((t * rate).round() as usize).min(total);
    let mut t = lead * squeeze;
    let mut bursts = Vec::new();
    let mut sentences = Vec::with_capacity(said.len());
    let mut word_index = 0usize;
    for (s, (pause, words)) in said.iter().zip(plans) {
        t += pause * squeeze;
        let first = frame(t);
        for (w, gap) in words {
            let start = frame(t);
            t += speaking * w / weight.max(f64::MIN_POSITIVE);
            let end = frame(t);
            let base = if s.speaker == 0 { 180.0 } else { 280.0 };
            bursts.push(Burst {
                start,
                len: end - start,
                pitch: base + (word_index % 7) as f64 * 15.0,
            });
            word_index += 1;
            t += gap * squeeze;
        }
        let last = bursts.last().map_or(first, |b| b.start + b.len);
        sentences.push(Placed {
            chars: [chars_at.of(s.bytes.start), chars_at.of(s.bytes.end)],
            text: text[s.bytes.clone()].to_owned(),
            frames: first..last,
        });
    }
    Timeline {
        style,
        bursts,
        sentences,
    }
}

/// Byte offsets to character (Unicode scalar) offsets.
struct CharOffsets(Vec<usize>);

impl CharOffsets {
    fn new(text: &str) -> Self {
        CharOffsets(text.char_indices().map(|(i, _)| i).collect())
    }

    /// The character offset of byte `at` (a char boundary, or the end).
    fn of(&self, at: usize) -> usize {
        self.0.partition_point(|&b| b < at)
    }
}

/// Bursts of 0.3 s with 0.1 s gaps over `total` frames, alternating pitch
/// every 12 words for two speakers.
fn uniform_bursts(total: usize, two_speakers: bool) -> Vec<Burst> {
    let word = frames_in(0.3);
    let gap = frames_in(0.1);
    (0..total.div_ceil(word + gap))
        .map(|n| {
            let speaker = usize::from(two_speakers && (n / 12) % 2 == 1);
            Burst {
                start: n * (word + gap),
                len: word.min(total - n * (word + gap)),
                pitch: if speaker == 0 { 180.0 } else { 280.0 } + (n % 7) as f64 * 15.0,
            }
        })
        .collect()
}

/// The samples of `bursts` over `total` frames (bursts past it are cut):
/// each a tone with short raised ramps at its edges.
fn synthesize(bursts: &[Burst], total: usize) -> Vec<i16> {
    let rate = f64::from(SAMPLE_RATE);
    let mut pcm = vec![0i16; total];
    for burst in bursts {
        let ramp = (frames_in(RAMP).min(burst.len / 2)).max(1) as f64;
        let step = 2.0 * PI * burst.pitch / rate;
        let end = (burst.start + burst.len).min(total);
        let Some(samples) = pcm.get_mut(burst.start..end) else {
            continue;
        };
        for (i, sample) in samples.iter_mut().enumerate() {
            let edge = (i.min(burst.len - 1 - i) as f64 + 0.5) / ramp;
            let envelope = (edge.min(1.0) * PI / 2.0).sin();
            *sample = ((step * i as f64).sin() * envelope * AMPLITUDE) as i16;
        }
    }
    pcm
}

fn frames_in(seconds: f64) -> usize {
    (seconds.max(0.0) * f64::from(SAMPLE_RATE)) as usize
}

fn le_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_audio_is_24khz_wav_of_plausible_length() {
        let wav = render(
            "one two three four five six seven eight nine ten",
            false,
            false,
        );
        let (rate, pcm) = wav::pcm_of(&wav).expect("a WAV file");
        assert_eq!(rate, 24_000);
        let d = pcm.len() as f64 / 48_000.0;
        assert!((3.0..6.0).contains(&d), "{d}");
    }

    #[test]
    fn dialogue_lines_alternate_speakers() {
        let t = turns("Speaker 1: Hi there\nSpeaker 2: Hello\nand more", true);
        assert_eq!(
            t,
            vec![
                (0, "Hi there".to_string()),
                (1, "Hello".to_string()),
                (1, "and more".to_string())
            ]
        );
    }

    const STORY: &str = "The tide came in over the flats. The gulls, loud as ever, argued about the light.\n\nDr. Reyes walked on; she did not look back. Night fell.";

    /// Peaks of 10 ms windows: what the worker's silence detector sees.
    fn loud_windows(pcm: &[u8]) -> Vec<bool> {
        pcm.chunks(480)
            .map(|w| {
                w.chunks_exact(2)
                    .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() >= 328)
            })
            .collect()
    }

    /// Runs of silent windows strictly inside the speech, as (start, len) in ms.
    fn pauses(loud: &[bool]) -> Vec<(usize, usize)> {
        let first = loud.iter().position(|&l| l).unwrap();
        let last = loud.iter().rposition(|&l| l).unwrap();
        let mut out = Vec::new();
        let mut i = first;
        while i <= last {
            if loud[i] {
                i += 1;
                continue;
            }
            let j = (i..=last).find(|&j| loud[j]).unwrap();
            out.push((i * 10, (j - i) * 10));
            i = j;
        }
        out
    }

    #[test]
    fn realistic_audio_has_exactly_the_asked_length() {
        // The length is asked (from the text's characters and the voice):
        // the sentences fill it exactly, whatever their pauses.
        for (text, seconds) in [
            (STORY, 12.5),
            ("word ".repeat(300).as_str(), 100.0),
            ("x", 0.07),
        ] {
            let (wav, truth) = render_sentences(text, seconds, true, seed_of(text));
            let (rate, pcm) = wav::pcm_of(&wav).expect("a WAV file");
            assert_eq!(rate, 24_000);
            assert_eq!(pcm.len(), (seconds * 24_000.0) as usize * 2, "{seconds} s");
            assert!(!truth.is_empty());
        }
        let (wav, _) = render_sentences(STORY, 12.5, false, 7);
        assert_eq!(wav::pcm_of(&wav).unwrap().1.len(), 12 * 48_000 + 24_000);
    }

    #[test]
    fn sentences_are_placed_in_order_with_pauses_between_and_their_truth_matches_the_audio() {
        let (wav, truth) = render_sentences(STORY, 12.0, false, seed_of(STORY));
        let texts: Vec<&str> = truth.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "The tide came in over the flats.",
                "The gulls, loud as ever, argued about the light.",
                // No break after a title.
                "Dr. Reyes walked on; she did not look back.",
                "Night fell.",
            ]
        );
        let chars: Vec<char> = STORY.chars().collect();
        for s in &truth {
            let text: String = chars[s.range()].iter().collect();
            assert_eq!(text, s.text);
        }
        let (_, pcm) = wav::pcm_of(&wav).unwrap();
        let loud = loud_windows(pcm);
        let first = loud.iter().position(|&l| l).unwrap() * 10;
        let last = (loud.iter().rposition(|&l| l).unwrap() + 1) * 10;
        // Short silences at both ends.
        assert!((100..=170).contains(&first), "{first} ms before the speech");
        assert!(
            (90..=170).contains(&(12_000 - last)),
            "{} ms after",
            12_000 - last
        );
        assert!(truth[0].start_ms.abs_diff(first as u64) <= 10);
        assert!(truth[3].end_ms.abs_diff(last as u64) <= 10);
        // Each gap between sentences is a silent run of the audio, 250 ms
        // and more (the paragraph's 800 and more); pauses inside sentences
        // are shorter.
        let found = pauses(&loud);
        for (i, pair) in truth.windows(2).enumerate() {
            let gap = pair[1].start_ms - pair[0].end_ms;
            assert!(gap >= if i == 1 { 800 } else { 250 }, "pause {i}: {gap} ms");
            assert!(
                found
                    .iter()
                    .any(|&(at, len)| (at as u64).abs_diff(pair[0].end_ms) <= 10
                        && (len as u64).abs_diff(gap) <= 20),
                "pause {i} at {} ms not in the audio: {found:?}",
                pair[0].end_ms
            );
        }
        let inside: Vec<usize> = found
            .iter()
            .filter(|&&(at, _)| truth.iter().all(|s| (at as u64).abs_diff(s.end_ms) > 10))
            .map(|&(_, len)| len)
            .collect();
        // Two commas and a semicolon: 120–250 ms; word gaps under 100 ms.
        assert_eq!(
            inside.iter().filter(|&&len| len >= 100).count(),
            3,
            "{inside:?}"
        );
        assert!(inside.iter().all(|&len| len <= 270), "{inside:?}");
    }

    #[test]
    fn the_rhythm_is_fixed_by_the_seed() {
        let a = render_sentences(STORY, 9.0, false, 1);
        assert_eq!(a, render_sentences(STORY, 9.0, false, 1));
        assert_ne!(a.1, render_sentences(STORY, 9.0, false, 2).1);
    }

    #[test]
    fn a_style_in_front_and_speaker_labels_are_not_spoken() {
        let text = "Narrate calmly: Speaker 1: Did you hear?\nSpeaker 2: Nope. Tell me!";
        let truth = truth(text, 6.0, 6.0, true, 3);
        assert_eq!(truth.style, Some([0, 16]));
        let said: Vec<(&str, [usize; 2])> = truth
            .sentences
            .iter()
            .map(|s| (s.text.as_str(), s.chars))
            .collect();
        assert_eq!(
            said,
            [
                ("Did you hear?", [27, 40]),
                ("Nope.", [52, 57]),
                ("Tell me!", [58, 66])
            ]
        );
        assert_eq!(style_prefix("Say cheerfully: have a nice day"), Some(16));
        assert_eq!(
            super::said("Say cheerfully: have a nice day", false),
            "have a nice day"
        );
        assert_eq!(
            super::said("Speaker 1: Did you hear?\n  Speaker 2: Nope.", true),
            "Did you hear?\nNope."
        );
        assert_eq!(super::said("Speaker 1: hi", false), "Speaker 1: hi");
        for plain in [
            "Hello there: general Kenobi. Nothing else.",
            "Speaker 1: hi",
            "It is 10:30 now.",
            "Done. Note: more",
            "Say this:",
        ] {
            if plain.starts_with("Hello") {
                // A heading-like first clause is taken for a style.
                assert_eq!(style_prefix(plain), Some(13));
            } else {
                assert_eq!(style_prefix(plain), None, "{plain}");
            }
        }
    }

    #[test]
    fn cut_audio_lists_only_what_was_said_before_the_cut() {
        let (wav, full) = render_speech(STORY, 10.0, 10.0, false, 5);
        let (cut_wav, cut) = render_speech(STORY, 10.0, 4.0, false, 5);
        assert_eq!(wav::pcm_of(&cut_wav).unwrap().1.len(), 4 * 48_000);
        assert_eq!(
            wav::pcm_of(&cut_wav).unwrap().1,
            &wav::pcm_of(&wav).unwrap().1[..4 * 48_000]
        );
        assert!(cut.sentences.len() < full.sentences.len());
        let last = cut.sentences.last().unwrap();
        assert!(last.end_ms <= 4_000);
        assert_eq!(
            cut.sentences[..cut.sentences.len() - 1],
            full.sentences[..cut.sentences.len() - 1]
        );
    }

    #[test]
    fn the_empty_fault_has_no_samples() {
        assert_eq!(wav::pcm_of(&empty_wav()), Some((SAMPLE_RATE, &[][..])));
    }
}
