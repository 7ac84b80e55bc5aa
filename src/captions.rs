//! Caption files (WebVTT and SRT) from timed sentences.
//!
//! Cues are cut at sentence boundaries, so a caption never shows the end of
//! one sentence with the start of the next unless both are short enough to
//! read together. Readability follows common subtitling guidance (BBC,
//! Netflix timed-text style guides): at most [`MAX_LINES`] lines of
//! [`MAX_LINE_CHARS`] characters (characters, not bytes: captions are read
//! in any script; [`MAX_WIDE_LINE_CHARS`] for Chinese and Japanese), lines
//! broken at spaces — between words (UAX #29) in scripts written without
//! spaces (Chinese, Japanese, Thai), never inside a grapheme cluster — and
//! balanced, a cue on screen for
//! at least [`MIN_CUE_MS`] when the next one leaves room and at most
//! [`MAX_CUE_MS`]. A sentence longer than that is split into several cues at
//! spaces, their times shared out by characters.
//!
//! Pure: layer 2, it imports only `spoken` (the script of a character).

use std::fmt::Write as _;

use crate::spoken::Script;

/// Characters on a caption line.
pub const MAX_LINE_CHARS: usize = 42;
/// Characters on a line of Chinese or Japanese (full-width characters:
/// Netflix's Chinese guide says 16, its Japanese one 13 for vertical text).
pub const MAX_WIDE_LINE_CHARS: usize = 16;
/// Lines in a cue.
pub const MAX_LINES: usize = 2;
/// A shorter cue is held on screen longer when the next one leaves room,
/// or shares its cue with the next short sentence.
pub const MIN_CUE_MS: u64 = 700;
/// A longer cue is split (a sentence's pieces last at most this long).
pub const MAX_CUE_MS: u64 = 7_000;

/// One caption: shown from `start_ms` to `end_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Its lines joined with `\n`; unescaped (the writers escape).
    pub text: String,
}

/// The cues of `sentences` (each its text, start and end in milliseconds
/// of the delivered audio, in order). Whitespace is normalised (line
/// breaks in the text become spaces); empty sentences are left out. Cues
/// are in order and never overlap.
pub fn cues(sentences: &[(&str, u64, u64)]) -> Vec<Cue> {
    // Pieces of sentences: (words, start, end).
    let mut pieces: Vec<(Vec<Word>, u64, u64)> = Vec::new();
    let mut floor = 0;
    for &(text, start, end) in sentences {
        let words = words_of(text);
        if words.is_empty() {
            continue;
        }
        let start = start.max(floor);
        let end = end.max(start);
        floor = end;
        let pieces_of = split_sentence(&words, end - start);
        // Times by characters, spaces included.
        let total = joined_len(&words) as u64;
        let mut done = 0;
        for piece in pieces_of {
            let from = start + (end - start) * done / total.max(1);
            done += joined_len(&piece) as u64 + 1;
            let to = (start + (end - start) * done.min(total) / total.max(1)).max(from);
            pieces.push((piece, from, to));
        }
    }
    // Short pieces share a cue with the next when both fit in one and
    // follow closely.
    let mut merged: Vec<(Vec<Word>, u64, u64)> = Vec::new();
    for (words, start, end) in pieces {
        if let Some((last_words, last_start, last_end)) = merged.last_mut() {
            // Only across a short gap: a cue is not held through a silence.
            let short = (*last_end - *last_start < MIN_CUE_MS || end - start < MIN_CUE_MS)
                && start - *last_end <= MIN_CUE_MS;
            let mut both = last_words.clone();
            both.extend(words.iter().cloned());
            if short && end - *last_start <= MAX_CUE_MS && lines(&both).is_some() {
                *last_words = both;
                *last_end = end;
                continue;
            }
        }
        merged.push((words, start, end));
    }
    // A cue shorter than the minimum stays until the minimum, or the next cue.
    let next_starts: Vec<Option<u64>> = merged
        .iter()
        .skip(1)
        .map(|(_, s, _)| Some(*s))
        .chain(std::iter::once(None))
        .collect();
    merged
        .into_iter()
        .zip(next_starts)
        .map(|((words, start, end), next)| {
            let wanted = end.max(start + MIN_CUE_MS);
            let end = next.map_or(wanted, |n| wanted.min(n.max(end)));
            Cue {
                start_ms: start,
                end_ms: end,
                text: lines(&words)
                    .unwrap_or_else(|| vec![join(&words)])
                    .join("\n"),
            }
        })
        .collect()
}

/// A word of a caption, and whether it follows the one before without a
/// space (scripts written without spaces).
#[derive(Debug, Clone, PartialEq)]
struct Word {
    text: String,
    glued: bool,
    /// Chinese or Japanese: its line holds [`MAX_WIDE_LINE_CHARS`].
    wide: bool,
}

/// The words of `text`: whitespace-separated, and UAX #29 words inside a
/// run of a script written without spaces; a word longer than a line cut
/// into line-long runs of grapheme clusters.
fn words_of(text: &str) -> Vec<Word> {
    use unicode_segmentation::UnicodeSegmentation;
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        let unspaced = token
            .chars()
            .any(|c| c.is_alphabetic() && Script::of(c).is_some_and(Script::unspaced));
        let wide = token
            .chars()
            .any(|c| matches!(Script::of(c), Some(Script::Han | Script::Kana)));
        let max = if wide {
            MAX_WIDE_LINE_CHARS
        } else {
            MAX_LINE_CHARS
        };
        let segments: Vec<&str> = if unspaced {
            token.split_word_bounds().collect()
        } else {
            vec![token]
        };
        for (i, segment) in segments.into_iter().enumerate() {
            let mut run = String::new();
            let mut first = true;
            for g in segment.graphemes(true) {
                if run.chars().count() + g.chars().count() > max && !run.is_empty() {
                    out.push(Word {
                        text: std::mem::take(&mut run),
                        glued: i > 0 || !first,
                        wide,
                    });
                    first = false;
                }
                run.push_str(g);
            }
            if !run.is_empty() {
                out.push(Word {
                    text: run,
                    glued: i > 0 || !first,
                    wide,
                });
            }
        }
    }
    out
}

/// Characters on a line of `words`.
fn line_max(words: &[Word]) -> usize {
    if words.iter().any(|w| w.wide) {
        MAX_WIDE_LINE_CHARS
    } else {
        MAX_LINE_CHARS
    }
}

/// `words` as they read: a space before each but the first, unless glued.
fn join(words: &[Word]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 && !w.glued {
            out.push(' ');
        }
        out.push_str(&w.text);
    }
    out
}

/// Characters of `words` as joined.
fn joined_len(words: &[Word]) -> usize {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| w.text.chars().count() + usize::from(i > 0 && !w.glued))
        .sum()
}

/// `words` laid out as at most [`MAX_LINES`] (two) lines of at most
/// [`line_max`] characters, the break placed where the two lines are most
/// even; `None` when they do not fit.
fn lines(words: &[Word]) -> Option<Vec<String>> {
    let max = line_max(words);
    if joined_len(words) <= max {
        return Some(vec![join(words)]);
    }
    (1..words.len())
        .map(|cut| (joined_len(&words[..cut]), joined_len(&words[cut..]), cut))
        .filter(|&(a, b, _)| a <= max && b <= max)
        // Most even; on a tie the shorter line on top.
        .min_by_key(|&(a, b, _)| (a.abs_diff(b), a > b))
        .map(|(_, _, cut)| vec![join(&words[..cut]), join(&words[cut..])])
}

/// A sentence's words as the fewest pieces of even length that each fit a
/// cue's lines and last at most [`MAX_CUE_MS`] of the sentence's
/// `duration_ms` (shared by characters).
fn split_sentence(words: &[Word], duration_ms: u64) -> Vec<Vec<Word>> {
    let total = joined_len(words);
    let by_time = duration_ms.div_ceil(MAX_CUE_MS) as usize;
    let by_text = total.div_ceil(MAX_LINES * line_max(words));
    let mut count = by_time.max(by_text).clamp(1, words.len());
    loop {
        let pieces = even_pieces(words, count);
        let fits = pieces.iter().all(|p| {
            lines(p).is_some()
                && (count == words.len()
                    || duration_ms * (joined_len(p) as u64) / (total as u64).max(1) <= MAX_CUE_MS)
        });
        if fits || count >= words.len() {
            return pieces;
        }
        count += 1;
    }
}

/// `words` in `count` consecutive non-empty pieces, cut at the spaces
/// nearest to even shares of the characters.
fn even_pieces(words: &[Word], count: usize) -> Vec<Vec<Word>> {
    let total = joined_len(words);
    // Character offset at which each word starts.
    let mut starts = Vec::with_capacity(words.len());
    let mut at = 0;
    for (i, w) in words.iter().enumerate() {
        at += usize::from(i > 0 && !w.glued);
        starts.push(at);
        at += w.text.chars().count();
    }
    let mut cuts = Vec::with_capacity(count + 1);
    cuts.push(0);
    for i in 1..count {
        // The even cut is at total × i / count characters.
        let target = total * i;
        let low = cuts[cuts.len() - 1] + 1;
        // Leave at least one word for each piece still to come.
        let high = words.len() - (count - i);
        let cut = (low..=high)
            .min_by_key(|&w| (starts[w] * count).abs_diff(target))
            .unwrap_or(low);
        cuts.push(cut);
    }
    cuts.push(words.len());
    cuts.windows(2)
        .map(|c| words[c[0]..c[1]].to_vec())
        .collect()
}

/// `ms` as `HH:MM:SS` + `separator` + `mmm` (hours grow past two digits).
fn timestamp(ms: u64, separator: char) -> String {
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000
    )
}

/// A WebVTT timestamp: `01:02:03.456`.
pub fn vtt_timestamp(ms: u64) -> String {
    timestamp(ms, '.')
}

/// An SRT timestamp: `01:02:03,456`.
pub fn srt_timestamp(ms: u64) -> String {
    timestamp(ms, ',')
}

/// `text` escaped for a WebVTT cue: `&`, `<` and `>` as character
/// references (a `<` would open a tag, and `-->` must not appear).
fn escape_vtt(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A WebVTT file: the `WEBVTT` header, then each cue's timing line and
/// text, cues separated by a blank line; LF line ends.
pub fn to_vtt(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\n");
    for cue in cues {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "\n{} --> {}\n{}\n",
            vtt_timestamp(cue.start_ms),
            vtt_timestamp(cue.end_ms),
            escape_vtt(&cue.text)
        );
    }
    out
}

/// An SRT file: numbered cues (from 1), `HH:MM:SS,mmm` times, a blank line
/// after each; LF line ends. SRT has no escaping.
pub fn to_srt(cues: &[Cue]) -> String {
    let mut out = String::new();
    for (i, cue) in cues.iter().enumerate() {
        let _ = write!(
            out,
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            srt_timestamp(cue.start_ms),
            srt_timestamp(cue.end_ms),
            cue.text
        );
    }
    out
}

#[cfg(test)]
mod tests;
