//! Sentence timing inside a part's audio: which frames speak which
//! sentence, for sentence marks and captions.
//!
//! Gemini returns audio without timing, so sentences are located in the
//! audio itself. Speech pauses between sentences; it also pauses, more
//! briefly, at commas, and barely between words. [`align`] finds the pauses
//! (runs of silence, as [`crate::pcm::speech_bounds`] hears it, of at
//! least [`MIN_PAUSE_MS`]) and cuts the speech at some of them, one
//! sentence after another, by dynamic programming: each sentence should
//! last, in *voiced* time (the audio with its pauses removed, so a long
//! pause does not count as speech), the share of the part that its spoken
//! weight ([`spoken_weights`]) gives it; pauses left inside a sentence cost
//! by their length, so a sentence's (usually longer) pause wins over a
//! comma's nearby. Comparing each sentence's duration, rather than where
//! each boundary should be, keeps one sentence spoken faster than the rest
//! from shifting every boundary after it. Sentences whose pause was not
//! heard share a span, cut where their weights put the boundary, at the
//! nearest gap between words.
//!
//! Pure: text and samples in, ranges out. [`sentences`] uses the plan's
//! sentence rules ([`crate::plan::sentence_ends`]), so marks and parts agree.

use std::ops::Range;

use crate::plan::{SPEAKER_LABELS, sentence_ends};

/// A pause shorter than this is a gap between words, not a candidate for a
/// sentence's end: read speech pauses ≈ 250 ms and more between sentences,
/// 100–250 ms at a comma, and a few tens of ms between words.
pub const MIN_PAUSE_MS: u64 = 120;

/// A sample under this peak (−40 dBFS) is silence: the threshold
/// [`crate::pcm::speech_bounds`] trims with, so that what is trimmed and
/// what is a pause agree.
const SILENCE_PEAK: u16 = 328;

/// Cost of leaving a pause unused, per second of its length: a long pause
/// inside a sentence is unlikely, so sentences end at long pauses rather
/// than short ones. At 6, preferring a 600 ms pause over a 200 ms one is
/// worth a sentence ≈ 2.2 deviations off its expected length.
const SKIP_PER_SECOND: f64 = 6.0;

/// Cost of a boundary that takes no pause (its sentences share a span):
/// about a sentence 2.5 deviations off its expected length.
const MISS: f64 = 3.0;

/// Most sentences sharing one span.
const MAX_GROUP: usize = 6;

/// How far a sentence's voiced duration strays from the share its weight
/// gives it: speaking rates vary from sentence to sentence (≈ ± 15 %), and
/// letters are only a proxy for sounds.
const DURATION_SPREAD: f64 = 0.15;
/// The least deviation, in seconds: a short sentence's length is ruled
/// by its words' own rhythm.
const DURATION_FLOOR: f64 = 0.3;
/// A span this badly off is not considered (a bound on the search).
const MAX_DURATION_COST: f64 = 30.0;

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
/// `sample_rate`), `speech` the frames [`crate::pcm::speech_bounds`]
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
    let groups = segment(weights, &pauses, &voiced, f64::from(sample_rate));
    // Each boundary as (end of the sentence before, start of the next).
    let mut boundaries: Vec<(u64, u64)> = Vec::with_capacity(n - 1);
    let mut from = 0;
    for group in &groups {
        // Boundaries inside a group have no pause of their own: each goes
        // where its weight puts it within the group, moved to the nearest
        // gap between words.
        let (v_from, v_to) = (voiced.at_point(from), voiced.at_point(group.to));
        let high = voiced.point_start(group.to, heard.voiced.end);
        let weight = |r: Range<usize>| weights[r].iter().sum::<usize>();
        let group_weight = weight(group.sentences.clone());
        for s in group.sentences.start + 1..group.sentences.end {
            let share = if group_weight == 0 {
                (s - group.sentences.start) as f64 / group.sentences.len() as f64
            } else {
                weight(group.sentences.start..s) as f64 / group_weight as f64
            };
            let low = boundaries.last().map_or(heard.voiced.start, |b| b.1);
            let at = voiced
                .frame_at(v_from + (v_to - v_from) * share)
                .clamp(low, high.max(low));
            let gap = heard
                .gaps
                .iter()
                .filter(|g| g.start >= low && g.end <= high)
                .min_by_key(|g| g.start.abs_diff(at).min(g.end.abs_diff(at)));
            boundaries.push(gap.map_or((at, at), |g| (g.start, g.end)));
        }
        if group.to <= pauses.len() && group.sentences.end < n {
            let pause = &pauses[group.to - 1];
            boundaries.push((pause.start, pause.end));
        }
        from = group.to;
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

    /// Voiced frames before point `p`: 0 the start of the speech, 1..=m
    /// the pauses, m + 1 its end.
    fn at_point(&self, p: usize) -> f64 {
        match p {
            0 => 0.0,
            p if p <= self.pauses.len() => self.pauses[p - 1].1 as f64,
            _ => self.length as f64,
        }
    }

    /// The frame at which point `p` starts (`end` for the end of the speech).
    fn point_start(&self, p: usize, end: u64) -> u64 {
        match p {
            0 => self.start,
            p if p <= self.pauses.len() => self.pauses[p - 1].0.start,
            _ => end,
        }
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

/// Sentences that end together at a point: one sentence, or several
/// whose boundaries found no pause.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    sentences: Range<usize>,
    /// The point it ends at: a pause (1-based index into the pauses), or
    /// one past the last pause for the end of the speech. It starts where
    /// the group before it ended (point 0: the start of the speech).
    to: usize,
}

/// Cuts the speech into sentences at pauses: dynamic programming over
/// (sentences said, the pause they end at). A sentence from one point to a
/// later one costs by how far its voiced duration is from what its weight
/// expects ([`duration_cost`]); each pause inside it costs by its length
/// ([`SKIP_PER_SECOND`]); a few sentences may share a span when a pause
/// between them was not heard, each boundary without a pause costing
/// [`MISS`]. Durations, not positions, are compared, so an error in one
/// sentence's expected length does not shift every later one.
fn segment(weights: &[usize], pauses: &[Range<u64>], voiced: &Voiced, rate: f64) -> Vec<Group> {
    let (n, m) = (weights.len(), pauses.len());
    let points = m + 2;
    let all = vec![Group {
        sentences: 0..n,
        to: m + 1,
    }];
    // Weight shares (equal when the weights are all zero).
    let total: usize = weights.iter().sum();
    let mut cumulative = vec![0.0; n + 1];
    for (i, &w) in weights.iter().enumerate() {
        cumulative[i + 1] = cumulative[i] + if total == 0 { 1.0 } else { w as f64 };
    }
    let length = voiced.length as f64;
    let expected =
        |r: Range<usize>| length * (cumulative[r.end] - cumulative[r.start]) / cumulative[n];
    // skipped[p]: the cost of leaving pauses 1..=p unused.
    let mut skipped = vec![0.0; points];
    for (p, pause) in pauses.iter().enumerate() {
        skipped[p + 1] = skipped[p] + SKIP_PER_SECOND * (pause.end - pause.start) as f64 / rate;
    }
    skipped[m + 1] = skipped[m];
    let inside = |i: usize, j: usize| skipped[j - 1] - skipped[i];
    let at = |p: usize| voiced.at_point(p);
    let mut cost = vec![f64::INFINITY; (n + 1) * points];
    let mut back = vec![(0usize, 0usize); (n + 1) * points];
    cost[0] = 0.0;
    for k in 1..=n {
        // Only the last sentence ends at the end of the speech.
        let ends = if k == n { m + 1..m + 2 } else { 1..m + 1 };
        for j in ends {
            let mut best = (f64::INFINITY, (0, 0));
            for r in 1..=k.min(MAX_GROUP) {
                let x = expected(k - r..k);
                for i in (0..j).rev() {
                    let before = cost[(k - r) * points + i];
                    let d = at(j) - at(i);
                    let fit = duration_cost(d, x, rate);
                    if fit > MAX_DURATION_COST && d > x {
                        // Earlier points only make it longer.
                        break;
                    }
                    if !before.is_finite() {
                        continue;
                    }
                    let c = before + fit + inside(i, j) + (r - 1) as f64 * MISS;
                    if c < best.0 {
                        best = (c, (k - r, i));
                    }
                }
            }
            cost[k * points + j] = best.0;
            back[k * points + j] = best.1;
        }
    }
    if !cost[n * points + m + 1].is_finite() {
        return all;
    }
    let mut groups = Vec::new();
    let (mut k, mut j) = (n, m + 1);
    while k > 0 {
        let (k0, i) = back[k * points + j];
        groups.push(Group {
            sentences: k0..k,
            to: j,
        });
        (k, j) = (k0, i);
    }
    groups.reverse();
    groups
}

/// The cost of a sentence (or group) lasting `d` voiced frames when its
/// weight expects `x`: half the square of the error in deviations up to
/// two, then linear (one odd sentence must not outweigh all the others).
/// The deviation grows with the length ([`DURATION_SPREAD`]) from a floor
/// ([`DURATION_FLOOR`]).
fn duration_cost(d: f64, x: f64, rate: f64) -> f64 {
    let sigma = DURATION_SPREAD * x + DURATION_FLOOR * rate;
    let z = (d - x).abs() / sigma;
    if z <= 2.0 { z * z / 2.0 } else { 2.0 * z - 2.0 }
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
