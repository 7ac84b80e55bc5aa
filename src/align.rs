//! Sentence timing inside a part's audio: which frames speak which
//! sentence, for sentence marks and captions.
//!
//! Gemini returns audio without timing, so sentences are located in the
//! audio itself. Speech pauses between sentences; it also pauses, more
//! briefly, at commas, and barely between words. [`align`] finds the pauses
//! (runs of silence, as [`crate::stitch::speech_bounds`] hears it, of at
//! least [`MIN_PAUSE`]) and matches the sentence ends of the text to them,
//! in order: where a boundary is expected comes from the sentences' spoken
//! weights ([`spoken_weights`]), measured in *voiced* time (the audio with
//! its pauses removed), so that long pauses do not push the expectations
//! off; among pauses near an expectation the longer ones win, since a
//! sentence's pause is usually longer than a comma's. A boundary that finds
//! no pause falls back to its expected position, moved to the nearest gap
//! between words.
//!
//! Pure: text and samples in, ranges out. [`sentences`] uses the plan's
//! sentence rules ([`crate::plan::sentence_ends`]), so marks and parts agree.

use std::ops::Range;

use crate::plan::{SPEAKER_LABELS, sentence_ends};

/// A pause shorter than this is a gap between words, not a candidate for a
/// sentence's end: read speech pauses ≈ 250 ms and more between sentences,
/// 100–250 ms at a comma, and a few tens of ms between words.
pub const MIN_PAUSE_MS: u64 = 120;

/// [`MIN_PAUSE_MS`] as a duration.
pub const MIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(MIN_PAUSE_MS);

/// A sample under this peak (−40 dBFS) is silence: the threshold
/// [`crate::stitch::speech_bounds`] trims with, so that what is trimmed and
/// what is a pause agree.
const SILENCE_PEAK: u16 = 328;

/// Cost of leaving a pause unused, per second of its length, in units of
/// one mean sentence of distance: a long pause inside a sentence is
/// unlikely, so the matching prefers to end sentences at long pauses. At 2,
/// a pause 0.4 s longer than another may be 0.8 sentence further from its
/// expected place and still be chosen.
const SKIP_PER_SECOND: f64 = 2.0;

/// Cost of a boundary matched to no pause, in units of one mean sentence of
/// distance: a pause further off than this (plus what leaving it would
/// cost) is not taken.
const MISS: f64 = 0.75;

/// The sentences of `text` within the characters `chars` (Unicode scalar
/// offsets, as [`crate::plan::Part::chars`]): character ranges in the whole
/// text, in order, cut by the plan's rules (UAX #29, not after common
/// abbreviations). Whitespace around a sentence and a dialogue's speaker
/// label ("Speaker 1:"), which Gemini does not speak, are left out; a
/// sentence with nothing else is dropped. A part cut inside a sentence
/// starts or ends with the piece it speaks.
pub fn sentences(text: &str, chars: Range<usize>) -> Vec<Range<usize>> {
    let bytes = CharBytes::new(text).range(chars.clone());
    let slice = &text[bytes];
    let mut out = Vec::new();
    let mut start = 0;
    let mut char_at = chars.start.min(chars.end);
    for end in sentence_ends(slice) {
        let piece = &slice[start..end];
        // Bytes of `piece` that are said: trimmed, without a speaker label.
        let trimmed = piece.trim();
        let mut from = piece.len() - piece.trim_start().len();
        let to = from + trimmed.len();
        if let Some(label) = SPEAKER_LABELS.iter().find(|l| trimmed.starts_with(**l)) {
            from = to - trimmed[label.len()..].trim_start().len();
        }
        if from < to {
            let first = char_at + piece[..from].chars().count();
            out.push(first..first + piece[from..to].chars().count());
        }
        char_at += piece.chars().count();
        start = end;
    }
    out
}

/// How long each sentence (character ranges of `text`) takes to say,
/// relatively: its letters and digits, plus one for each gap between
/// words. Spaces and punctuation are not spoken, and the pauses they make
/// are measured in the audio, not guessed from the text.
pub fn spoken_weights(text: &str, sentences: &[Range<usize>]) -> Vec<usize> {
    let bytes = CharBytes::new(text);
    sentences
        .iter()
        .map(|range| spoken_weight(&text[bytes.range(range.clone())]))
        .collect()
}

/// [`spoken_weights`] of one sentence.
pub fn spoken_weight(sentence: &str) -> usize {
    let words = sentence.split_whitespace().count();
    let letters = sentence.chars().filter(|c| c.is_alphanumeric()).count();
    letters + words.saturating_sub(1)
}

/// Each sentence's frames in a part's audio: `pcm` (mono 16-bit samples at
/// `sample_rate`), `speech` the frames [`crate::stitch::speech_bounds`]
/// kept, `weights` each sentence's spoken weight ([`spoken_weights`]).
/// Returns one range per weight, in frames of `pcm`, in order, not
/// overlapping, inside `speech`: a sentence starts at its first sound and
/// ends at its last (the pause between two sentences belongs to neither).
/// Without any sound in `speech`, `speech` is shared out by weight.
pub fn align(
    pcm: &[i16],
    sample_rate: u32,
    speech: Range<u64>,
    weights: &[usize],
) -> Vec<Range<u64>> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let end = speech.end.min(pcm.len() as u64);
    let speech = speech.start.min(end)..end;
    let window = u64::from(sample_rate / 100).max(1);
    let Some(heard) = Heard::find(pcm, speech.clone(), window) else {
        return proportional(speech, weights);
    };
    if n == 1 {
        return vec![heard.voiced];
    }
    let min_pause = u64::from(sample_rate) * MIN_PAUSE_MS / 1_000;
    let pauses: Vec<Range<u64>> = heard
        .gaps
        .iter()
        .filter(|g| g.end - g.start >= min_pause)
        .cloned()
        .collect();
    let voiced = Voiced::new(heard.voiced.clone(), &pauses);
    let total: usize = weights.iter().sum();
    let expected: Vec<f64> = (1..n)
        .map(|k| {
            let share = if total == 0 {
                k as f64 / n as f64
            } else {
                weights[..k].iter().sum::<usize>() as f64 / total as f64
            };
            voiced.length as f64 * share
        })
        .collect();
    let matched = match_pauses(
        &expected,
        &pauses,
        &voiced,
        voiced.length as f64 / n as f64,
        f64::from(sample_rate),
    );
    // Each boundary as (end of the sentence before, start of the next).
    let mut boundaries: Vec<(u64, u64)> = Vec::with_capacity(n - 1);
    for k in 0..n - 1 {
        if let Some(p) = matched[k] {
            boundaries.push((pauses[p].start, pauses[p].end));
            continue;
        }
        let low = boundaries.last().map_or(heard.voiced.start, |b| b.1);
        let high = matched[k + 1..]
            .iter()
            .flatten()
            .next()
            .map_or(heard.voiced.end, |&p| pauses[p].start)
            .max(low);
        let at = voiced.frame_at(expected[k]).clamp(low, high);
        // The gap between words nearest the expected place, if any.
        let gap = heard
            .gaps
            .iter()
            .filter(|g| g.start >= low && g.end <= high)
            .min_by_key(|g| g.start.abs_diff(at).min(g.end.abs_diff(at)));
        boundaries.push(gap.map_or((at, at), |g| (g.start, g.end)));
    }
    (0..n)
        .map(|i| {
            let start = if i == 0 {
                heard.voiced.start
            } else {
                boundaries[i - 1].1
            };
            let end = if i + 1 == n {
                heard.voiced.end
            } else {
                boundaries[i].0
            };
            start..end.max(start)
        })
        .collect()
}

/// What the silence detector hears inside the kept speech.
struct Heard {
    /// From the first sound to the last, to the sample.
    voiced: Range<u64>,
    /// Every silent run strictly inside `voiced`, to the sample, in order.
    gaps: Vec<Range<u64>>,
}

impl Heard {
    /// Reads `speech` of `pcm` in windows of `window` frames; `None` when
    /// no window holds sound.
    fn find(pcm: &[i16], speech: Range<u64>, window: u64) -> Option<Heard> {
        let loud = |at: u64| pcm[at as usize].unsigned_abs() >= SILENCE_PEAK;
        let windows: Vec<Range<u64>> = (speech.start..speech.end)
            .step_by(window as usize)
            .map(|s| s..(s + window).min(speech.end))
            .collect();
        let is_loud: Vec<bool> = windows.iter().map(|w| w.clone().any(loud)).collect();
        let first = is_loud.iter().position(|&l| l)?;
        let last = is_loud.iter().rposition(|&l| l)?;
        let first_sound = |w: &Range<u64>| w.clone().find(|&at| loud(at)).unwrap_or(w.start);
        let after_last_sound = |w: &Range<u64>| {
            w.clone()
                .rev()
                .find(|&at| loud(at))
                .map_or(w.end, |at| at + 1)
        };
        let mut gaps = Vec::new();
        let mut i = first;
        while i < last {
            if is_loud[i + 1] {
                i += 1;
                continue;
            }
            // Windows i+1.. are silent up to the next loud one.
            let next = (i + 1..=last).find(|&j| is_loud[j]).unwrap_or(last);
            gaps.push(after_last_sound(&windows[i])..first_sound(&windows[next]));
            i = next;
        }
        Some(Heard {
            voiced: first_sound(&windows[first])..after_last_sound(&windows[last]),
            gaps,
        })
    }
}

/// Voiced time: frames of sound from the first, the pauses left out. A
/// sentence's share of it follows its words, whatever its pauses.
struct Voiced {
    start: u64,
    /// Each pause's frame range and the voiced frames before it.
    pauses: Vec<(Range<u64>, u64)>,
    /// Voiced frames in all.
    length: u64,
}

impl Voiced {
    fn new(voiced: Range<u64>, pauses: &[Range<u64>]) -> Self {
        let mut silent = 0;
        let placed = pauses
            .iter()
            .map(|p| {
                let before = p.start - voiced.start - silent;
                silent += p.end - p.start;
                (p.clone(), before)
            })
            .collect();
        Voiced {
            start: voiced.start,
            pauses: placed,
            length: voiced.end - voiced.start - silent,
        }
    }

    /// The voiced frames before pause `i`.
    fn before(&self, i: usize) -> u64 {
        self.pauses[i].1
    }

    /// The frame at `v` voiced frames (at a pause, its start).
    fn frame_at(&self, v: f64) -> u64 {
        let v = v.max(0.0) as u64;
        let mut frame = self.start + v;
        for (pause, before) in &self.pauses {
            if *before >= v {
                break;
            }
            frame += pause.end - pause.start;
        }
        frame
    }
}

/// Which pause ends each sentence: for boundaries expected at `expected`
/// voiced frames, the pauses (in order) each boundary takes, or `None`.
/// Dynamic programming over (boundary, pause): a match costs its distance
/// in voiced time (in mean sentences, `sentence` frames), a pause left
/// unused costs by its length ([`SKIP_PER_SECOND`]), a boundary left
/// unmatched [`MISS`]; matches keep their order.
fn match_pauses(
    expected: &[f64],
    pauses: &[Range<u64>],
    voiced: &Voiced,
    sentence: f64,
    rate: f64,
) -> Vec<Option<usize>> {
    let (k_max, m) = (expected.len(), pauses.len());
    let sentence = sentence.max(1.0);
    let skip = |j: usize| SKIP_PER_SECOND * (pauses[j].end - pauses[j].start) as f64 / rate;
    let distance = |k: usize, j: usize| (voiced.before(j) as f64 - expected[k]).abs() / sentence;
    #[derive(Clone, Copy)]
    enum Step {
        Skip,
        Match,
        Miss,
    }
    let width = m + 1;
    let mut cost = vec![f64::INFINITY; (k_max + 1) * width];
    let mut step = vec![Step::Skip; (k_max + 1) * width];
    cost[0] = 0.0;
    for k in 0..=k_max {
        for j in 0..=m {
            let at = k * width + j;
            if k == 0 && j == 0 {
                continue;
            }
            let mut best = (f64::INFINITY, Step::Skip);
            if j > 0 {
                let c = cost[at - 1] + skip(j - 1);
                if c < best.0 {
                    best = (c, Step::Skip);
                }
            }
            if k > 0 && j > 0 {
                let c = cost[at - width - 1] + distance(k - 1, j - 1);
                if c < best.0 {
                    best = (c, Step::Match);
                }
            }
            if k > 0 {
                let c = cost[at - width] + MISS;
                if c < best.0 {
                    best = (c, Step::Miss);
                }
            }
            cost[at] = best.0;
            step[at] = best.1;
        }
    }
    let mut matched = vec![None; k_max];
    let (mut k, mut j) = (k_max, m);
    while k > 0 || j > 0 {
        match step[k * width + j] {
            Step::Skip => j -= 1,
            Step::Match => {
                matched[k - 1] = Some(j - 1);
                k -= 1;
                j -= 1;
            }
            Step::Miss => k -= 1,
        }
    }
    matched
}

/// `span` shared out by `weights` (equally when they are all zero).
fn proportional(span: Range<u64>, weights: &[usize]) -> Vec<Range<u64>> {
    let total: usize = weights.iter().sum();
    let len = u128::from(span.end - span.start);
    // Where each sentence ends, as a share (done / of) of the span.
    let (mut done, of) = (0usize, if total == 0 { weights.len() } else { total });
    let mut at = span.start;
    weights
        .iter()
        .map(|&w| {
            done += if total == 0 { 1 } else { w };
            let end = span.start + (len * done as u128 / of as u128) as u64;
            let range = at..end;
            at = end;
            range
        })
        .collect()
}

/// Character offsets to byte offsets of one text.
struct CharBytes {
    /// The byte at which each character starts, then the text's length.
    starts: Vec<usize>,
}

impl CharBytes {
    fn new(text: &str) -> Self {
        let starts = text
            .char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .collect();
        CharBytes { starts }
    }

    /// The bytes of characters `chars` (clamped to the text).
    fn range(&self, chars: Range<usize>) -> Range<usize> {
        let last = self.starts.len() - 1;
        let start = self.starts[chars.start.min(last)];
        start..self.starts[chars.end.min(last)].max(start)
    }
}

#[cfg(test)]
mod tests;
