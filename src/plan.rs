//! Planning a long text as parts: where to cut it so that each part is one
//! Segmind call that Gemini can speak whole.
//!
//! One Gemini TTS call speaks at most ≈ 8.5 minutes (≈ 7,000–8,000
//! characters at ≈ 15 characters a second) and silently cuts anything
//! longer, and Google advises splitting long text because quality drifts
//! after a few minutes of audio. [`DEFAULT_PART_CHARS`] is chosen from both.
//!
//! Parts are sized by how long they take to speak, not by their characters:
//! the size counts characters of Latin prose (≈ 15 a second), and a
//! character of another script weighs what it takes to speak
//! ([`crate::spoken::latin_equivalent`]): 3,000 characters are ≈ 200 s of
//! English but ≈ 670 s of Chinese, past the cap, so a Chinese part holds
//! ≈ 900. Every part is ≈ 200 s of speech or less, in every script.
//!
//! The plan is a pure function of the text and the part size, so a
//! redelivered job finds the same parts (and resumes them by index). Parts
//! are contiguous character ranges that cover the text exactly; cuts are made
//! at the coarsest boundary that keeps every part under the size: paragraph,
//! then sentence (UAX #29), then clause (after `,` `;` `:` and their CJK
//! forms), then word (UAX #29: every ideograph is a word, so CJK splits
//! cleanly), then grapheme cluster. A cut never falls inside a grapheme
//! cluster, whatever the script. Two-speaker dialogue is cut between turns;
//! a turn longer than a part is cut inside and every piece keeps its
//! speaker's label.
//!
//! This module is pure text handling; it imports only [`crate::spoken`].

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use unicode_segmentation::UnicodeSegmentation;

/// Characters in a part by default: ≈ 200 s of speech at 15 characters a
/// second — a few minutes, as Google's quality advice asks, and well under
/// the ≈ 512 s output cap of one call even for a voice at 10 characters a
/// second (300 s). The default of `long_text.part_chars` is set in
/// `config/default.toml`; a test checks the two agree.
#[cfg(test)]
pub const DEFAULT_PART_CHARS: usize = 3_000;

pub use crate::spoken::SPEAKER_LABELS;

/// What separates a part from the next one, which decides the pause put
/// between their audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Join {
    /// The part ends inside a sentence (a clause, word or grapheme cut).
    Within,
    /// The part ends a sentence.
    Sentence,
    /// The part ends a paragraph (or, in a dialogue, a speaker's turn).
    Paragraph,
    /// The last part.
    End,
}

/// One part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The characters of the original text this part speaks (Unicode scalar
    /// offsets, as `limits.max_text_chars` counts them).
    pub chars: Range<usize>,
    /// What is sent for it: the original slice, trimmed, with the speaker's
    /// label in front when a dialogue turn was cut inside.
    pub text: PartText,
    /// What follows it.
    pub join: Join,
}

/// A part's text: a slice of the job's text, shared with it and every
/// other part (a 200,000-character chapter is held once, not once more per
/// part), or its own when a speaker's label is put in front.
#[derive(Clone)]
pub struct PartText(Repr);

#[derive(Clone)]
enum Repr {
    Shared {
        source: Arc<str>,
        bytes: Range<usize>,
    },
    Own(Box<str>),
}

impl PartText {
    /// `source[bytes]` without its surrounding whitespace, shared.
    fn trimmed(source: &Arc<str>, bytes: Range<usize>) -> Self {
        let slice = &source[bytes.clone()];
        let start = bytes.start + (slice.len() - slice.trim_start().len());
        let end = bytes.start + slice.trim_end().len();
        PartText(Repr::Shared {
            source: Arc::clone(source),
            bytes: start..end.max(start),
        })
    }

    pub fn as_str(&self) -> &str {
        self
    }
}

impl Deref for PartText {
    type Target = str;

    fn deref(&self) -> &str {
        match &self.0 {
            Repr::Shared { source, bytes } => &source[bytes.clone()],
            Repr::Own(text) => text,
        }
    }
}

impl fmt::Debug for PartText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for PartText {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for PartText {}

impl PartialEq<str> for PartText {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for PartText {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl PartialEq<String> for PartText {
    fn eq(&self, other: &String) -> bool {
        **self == **other
    }
}

impl From<&str> for PartText {
    fn from(text: &str) -> Self {
        PartText(Repr::Own(text.into()))
    }
}

impl From<String> for PartText {
    fn from(text: String) -> Self {
        PartText(Repr::Own(text.into()))
    }
}

/// Cut levels, coarsest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Paragraph,
    Sentence,
    Clause,
    Word,
    Grapheme,
}

impl Level {
    fn finer(self) -> Option<Level> {
        match self {
            Level::Paragraph => Some(Level::Sentence),
            Level::Sentence => Some(Level::Clause),
            Level::Clause => Some(Level::Word),
            Level::Word => Some(Level::Grapheme),
            Level::Grapheme => None,
        }
    }

    fn join(self) -> Join {
        match self {
            Level::Paragraph => Join::Paragraph,
            Level::Sentence => Join::Sentence,
            Level::Clause | Level::Word | Level::Grapheme => Join::Within,
        }
    }
}

/// Plans `text` as parts of at most `max_chars` characters of Latin prose
/// or their time in other scripts (at least 16).
/// A text that fits is one part. Dialogue (lines starting with
/// [`SPEAKER_LABELS`]) is planned by [`plan_dialogue`] when `dialogue`.
pub fn plan(text: &str, max_chars: usize, dialogue: bool) -> Vec<Part> {
    plan_of(&Arc::from(text), max_chars, dialogue)
}

/// [`plan`] of a shared text: the parts' texts are slices of it.
pub fn plan_of(text: &Arc<str>, max_chars: usize, dialogue: bool) -> Vec<Part> {
    let max_chars = max_chars.max(16);
    if dialogue {
        return dialogue_of(text, max_chars);
    }
    let mut cuts = Vec::new();
    pack(text, 0..text.len(), Level::Paragraph, max_chars, &mut cuts);
    parts_from_cuts(text, &cuts, |_, r| PartText::trimmed(text, r))
}

/// Cuts `part` of the plan of `text` into about `pieces` pieces of equal
/// speech, by the plan's own rules (coarsest boundary first; a
/// dialogue's pieces keep their speaker's label). For a part whose take
/// came back cut at Gemini's output cap: deterministic, so a redelivery
/// finds the same pieces. The pieces cover the part's characters exactly;
/// the last ends as the part does. One piece when the part cannot be cut.
pub fn split(text: &str, part: &Part, pieces: usize, dialogue: bool) -> Vec<Part> {
    // A tenth of slack, so that whole sentences make `pieces` pieces
    // rather than one more holding a remainder.
    let max = (1.1 * weight(&part.text) / pieces.max(2) as f64).ceil() as usize;
    let sub = plan(&part.text, max, dialogue);
    // The part's text is its characters trimmed, perhaps after a speaker's
    // label: offsets in it map back past that prefix and the leading space.
    let slice: String = text
        .chars()
        .skip(part.chars.start)
        .take(part.chars.len())
        .collect();
    let lead = slice.chars().take_while(|c| c.is_whitespace()).count();
    let prefix = chars_in(&part.text).saturating_sub(chars_in(slice.trim()));
    let last = sub.len().saturating_sub(1);
    let mut start = part.chars.start;
    sub.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let end = if i == last {
                part.chars.end
            } else {
                (part.chars.start + lead + p.chars.end.saturating_sub(prefix))
                    .clamp(start, part.chars.end)
            };
            let piece = Part {
                chars: start..end,
                text: p.text,
                join: if i == last { part.join } else { p.join },
            };
            start = end;
            piece
        })
        .collect()
}

/// Plans a two-speaker dialogue: parts hold whole turns where they fit; a
/// turn longer than a part is cut inside at the finer levels, and each piece
/// after the first carries the turn's label again.
#[cfg(test)]
pub fn plan_dialogue(text: &str, max_chars: usize) -> Vec<Part> {
    dialogue_of(&Arc::from(text), max_chars)
}

fn dialogue_of(text: &Arc<str>, max_chars: usize) -> Vec<Part> {
    let max_chars = max_chars.max(16);
    let turns = turns(text);
    // Units are turns; a turn that does not fit is cut inside, its pieces
    // remembering the label to repeat.
    let mut pieces: Vec<(Range<usize>, Join, Option<&str>)> = Vec::new();
    for (range, label) in turns {
        if weight(&text[range.clone()]) <= max_chars as f64 {
            pieces.push((range, Join::Paragraph, None));
            continue;
        }
        let label_len = label.map_or(0, |l| chars_in(l) + 1);
        let mut cuts = Vec::new();
        pack(
            text,
            range.clone(),
            Level::Sentence,
            max_chars.saturating_sub(label_len).max(8),
            &mut cuts,
        );
        let count = cuts.len();
        for (i, (r, join)) in cuts.into_iter().enumerate() {
            let join = if i + 1 == count {
                Join::Paragraph
            } else {
                join
            };
            // The first piece starts with the label already.
            pieces.push((r, join, if i == 0 { None } else { label }));
        }
    }
    // Greedily group pieces into parts: a piece that starts a turn may join
    // the part before it when that part ends a turn and both fit.
    let mut cuts: Vec<(Range<usize>, Join)> = Vec::new();
    let mut labels: Vec<Option<&str>> = Vec::new();
    for (range, join, label) in pieces {
        let label_len = |l: Option<&str>| l.map_or(0, |l| chars_in(l) + 1);
        if let (Some((last, last_join)), Some(last_label)) = (cuts.last_mut(), labels.last())
            && label.is_none()
            && *last_join == Join::Paragraph
            && weight(&text[last.start..range.end]) + label_len(*last_label) as f64
                <= max_chars as f64
        {
            last.end = range.end;
            *last_join = join;
            continue;
        }
        cuts.push((range, join));
        labels.push(label);
    }
    parts_from_cuts(text, &cuts, |i, r| match labels[i] {
        Some(label) => format!("{label} {}", text[r].trim()).into(),
        None => PartText::trimmed(text, r),
    })
}

/// The dialogue's turns: byte ranges starting at each line that begins with
/// a speaker label (text before the first label is a turn of its own), with
/// that label.
fn turns(text: &str) -> Vec<(Range<usize>, Option<&'static str>)> {
    let mut starts: Vec<(usize, Option<&'static str>)> = vec![(0, None)];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(label) = SPEAKER_LABELS.iter().find(|l| trimmed.starts_with(**l)) {
            let at = offset + (line.len() - trimmed.len());
            if at == 0 {
                starts[0].1 = Some(label);
            } else {
                starts.push((at, Some(label)));
            }
        }
        offset += line.len();
    }
    let mut out = Vec::with_capacity(starts.len());
    for (i, (start, label)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(text.len(), |(s, _)| *s);
        if end > *start {
            out.push((*start..end, *label));
        }
    }
    out
}

/// Packs `range` of `text` into cuts of at most `max` characters, cutting at
/// `level` and finer where a unit does not fit. Appends contiguous byte
/// ranges with the join that ends each.
fn pack(
    text: &str,
    range: Range<usize>,
    level: Level,
    max: usize,
    out: &mut Vec<(Range<usize>, Join)>,
) {
    let units = units(text, range, level);
    let limit = max as f64;
    let mut current: Option<Range<usize>> = None;
    for unit in units {
        if let Some(cur) = current.as_mut() {
            // Weighed whole: a character of no script takes the script
            // around it.
            if weight(&text[cur.start..unit.end]) <= limit {
                cur.end = unit.end;
                continue;
            }
            out.push((cur.clone(), level.join()));
            current = None;
        }
        if weight(&text[unit.clone()]) <= limit {
            current = Some(unit);
        } else if let Some(finer) = level.finer() {
            pack(text, unit, finer, max, out);
            // The finer pass ends where this unit ends: at this level.
            if let Some(last) = out.last_mut() {
                last.1 = last.1.max(level.join());
            }
        } else {
            // A single grapheme cluster longer than a part: kept whole.
            out.push((unit, level.join()));
        }
    }
    if let Some(cur) = current {
        out.push((cur, level.join()));
    }
}

/// `range` of `text` as consecutive units of `level`, covering it exactly.
fn units(text: &str, range: Range<usize>, level: Level) -> Vec<Range<usize>> {
    let base = range.start;
    let slice = &text[range];
    let ends: Vec<usize> = match level {
        Level::Paragraph => paragraph_ends(slice),
        Level::Sentence => sentence_ends(slice),
        Level::Clause => clause_ends(slice),
        Level::Word => slice
            .split_word_bound_indices()
            .map(|(i, w)| i + w.len())
            .collect(),
        Level::Grapheme => slice
            .grapheme_indices(true)
            .map(|(i, g)| i + g.len())
            .collect(),
    };
    let mut out = Vec::with_capacity(ends.len());
    let mut start = 0;
    for end in ends {
        if end > start {
            out.push(base + start..base + end);
            start = end;
        }
    }
    if start < slice.len() {
        out.push(base + start..base + slice.len());
    }
    out
}

/// Ends of paragraphs: after each run of line breaks that holds a blank line.
fn paragraph_ends(s: &str) -> Vec<usize> {
    let bytes = s.as_bytes();
    let mut ends = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            // A run of whitespace containing two or more line breaks.
            let mut j = i;
            let mut breaks = 0;
            while j < bytes.len()
                && (bytes[j] == b'\n' || bytes[j] == b'\r' || bytes[j] == b' ' || bytes[j] == b'\t')
            {
                breaks += usize::from(bytes[j] == b'\n');
                j += 1;
            }
            if breaks >= 2 {
                ends.push(j);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    ends
}

/// Abbreviations after which UAX #29 would wrongly end a sentence.
const ABBREVIATIONS: [&str; 14] = [
    "Dr.", "Mr.", "Mrs.", "Ms.", "Prof.", "St.", "Sr.", "Jr.", "vs.", "e.g.", "i.e.", "etc.",
    "No.", "Fig.",
];

/// Ends of sentences (UAX #29), not after a known abbreviation: byte
/// offsets in `s`, the last one `s.len()` (none for an empty `s`). Public so
/// that sentence timing (`align`) finds the very sentences the plan cuts at.
pub fn sentence_ends(s: &str) -> Vec<usize> {
    s.split_sentence_bound_indices()
        .filter(|(i, sentence)| {
            let end = i + sentence.len();
            let before = s[..end].trim_end();
            end == s.len() || !ABBREVIATIONS.iter().any(|a| before.ends_with(a))
        })
        .map(|(i, sentence)| i + sentence.len())
        .collect()
}

/// Ends of clauses: after clause punctuation and the spaces that follow.
fn clause_ends(s: &str) -> Vec<usize> {
    const CLAUSE: [char; 10] = [',', ';', ':', '—', '–', '、', '，', '；', '：', '…'];
    let mut ends = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if CLAUSE.contains(&c) {
            let mut end = i + c.len_utf8();
            while let Some(&(j, next)) = chars.peek() {
                if next.is_whitespace() {
                    end = j + next.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            // Only where the punctuation ends a grapheme cluster.
            if is_grapheme_boundary(s, end) {
                ends.push(end);
            }
        }
    }
    ends
}

fn is_grapheme_boundary(s: &str, at: usize) -> bool {
    let mut cursor = unicode_segmentation::GraphemeCursor::new(at, s.len(), true);
    matches!(cursor.is_boundary(s, 0), Ok(true))
}

fn chars_in(s: &str) -> usize {
    s.chars().count()
}

/// What a part is sized by: how long `s` takes to speak, in characters of
/// Latin prose ([`crate::spoken::latin_equivalent`]: a Han character weighs
/// 3⅓ of them).
fn weight(s: &str) -> f64 {
    crate::spoken::latin_equivalent(s)
}

/// Turns byte-range cuts into parts with character ranges and the text to
/// send (`text_of(index, byte range)`).
fn parts_from_cuts(
    text: &str,
    cuts: &[(Range<usize>, Join)],
    text_of: impl Fn(usize, Range<usize>) -> PartText,
) -> Vec<Part> {
    let mut parts = Vec::with_capacity(cuts.len());
    let mut char_at = 0;
    for (i, (range, join)) in cuts.iter().enumerate() {
        let slice = &text[range.clone()];
        let len = chars_in(slice);
        let join = if i + 1 == cuts.len() {
            Join::End
        } else {
            *join
        };
        parts.push(Part {
            chars: char_at..char_at + len,
            text: text_of(i, range.clone()),
            join,
        });
        char_at += len;
    }
    parts
}

#[cfg(test)]
mod tests;
