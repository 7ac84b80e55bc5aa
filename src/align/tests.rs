use segmind_sim::speech::{SentenceTruth, render_sentences, seed_of};

use super::*;
use crate::pcm::{PcmFormat, speech_bounds};
use crate::plan::plan;

const RATE: u32 = 24_000;

fn frames(ms: u64) -> u64 {
    ms * u64::from(RATE) / 1_000
}

fn ms(frames: u64) -> u64 {
    frames * 1_000 / u64::from(RATE)
}

/// Audio from (is it sound?, milliseconds) runs: a 200 Hz tone or silence.
fn audio(runs: &[(bool, u64)]) -> Vec<i16> {
    let mut pcm = Vec::new();
    for &(sound, ms) in runs {
        for i in 0..frames(ms) {
            let t = i as f64 / f64::from(RATE);
            let s = (2.0 * std::f64::consts::PI * 200.0 * t).sin() * 8_000.0;
            pcm.push(if sound { s as i16 } else { 0 });
        }
    }
    pcm
}

/// Sound of `words` words of 300 ms with 40 ms gaps.
fn said(words: usize) -> Vec<(bool, u64)> {
    let mut runs = Vec::new();
    for i in 0..words {
        if i > 0 {
            runs.push((false, 40));
        }
        runs.push((true, 300));
    }
    runs
}

fn kept(pcm: &[i16]) -> Range<u64> {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    speech_bounds(&bytes, PcmFormat::GEMINI).kept
}

fn in_ms(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    ranges.iter().map(|r| ms(r.start)..ms(r.end)).collect()
}

fn close(got: &[Range<u64>], want: &[Range<u64>], tolerance: u64) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g.start.abs_diff(w.start) <= tolerance && g.end.abs_diff(w.end) <= tolerance
        })
}

fn texts(text: &str, ranges: &[Range<usize>]) -> Vec<String> {
    ranges
        .iter()
        .map(|r| text.chars().skip(r.start).take(r.len()).collect())
        .collect()
}

#[test]
fn sentences_are_the_plans_without_whitespace_or_speaker_labels() {
    let text = "  Dr. Smith came home.  It was late!\n\nWas it? Ünïcödé ends here.  ";
    let all = sentences(text, 0..text.chars().count());
    assert_eq!(
        texts(text, &all),
        [
            "Dr. Smith came home.",
            "It was late!",
            "Was it?",
            "Ünïcödé ends here."
        ]
    );
    // A part's characters: offsets stay in the whole text; a piece of a
    // sentence is the part's own.
    let part = sentences(text, 24..56);
    assert_eq!(
        texts(text, &part),
        ["It was late!", "Was it?", "Ünïcödé en"]
    );
    assert_eq!(part, [24..36, 38..45, 46..56]);

    let dialogue = "Speaker 1: Hello there. How are you?\nSpeaker 2: Fine.\nSpeaker 1:   \n";
    let turns = sentences(dialogue, 0..dialogue.chars().count());
    assert_eq!(
        texts(dialogue, &turns),
        ["Hello there.", "How are you?", "Fine."]
    );
    assert_eq!(turns[0], 11..23);
    assert!(sentences("   ", 0..3).is_empty());
    assert!(sentences(text, 5..5).is_empty());
}

#[test]
fn spoken_weight_counts_letters_and_word_gaps() {
    assert_eq!(spoken_weight("Hi, you!"), 5 + 1);
    assert_eq!(spoken_weight("Speaker"), 7);
    assert_eq!(spoken_weight("…"), 0);
    let text = "One two. Three!";
    assert_eq!(spoken_weights(text, &[0..8, 9..15]), vec![7, 5]);
}

#[test]
fn two_sentences_split_at_their_pause() {
    // 200 ms lead, 4 words, 500 ms pause, 2 words, 200 ms tail.
    let mut runs = vec![(false, 200)];
    runs.extend(said(4));
    runs.push((false, 500));
    runs.extend(said(2));
    runs.push((false, 200));
    let pcm = audio(&runs);
    let got = align(&pcm, RATE, kept(&pcm), &[20, 10]);
    // 200 + 4 × 300 + 3 × 40 = 1,520; then 500 of pause.
    assert!(
        close(&in_ms(&got), &[200..1_520, 2_020..2_660], 2),
        "{:?}",
        in_ms(&got)
    );
    // One sentence: all of the speech; none: nothing.
    let one = align(&pcm, RATE, kept(&pcm), &[30]);
    assert_eq!(one.len(), 1);
    assert!(
        ms(one[0].start).abs_diff(200) <= 2 && ms(one[0].end).abs_diff(2_660) <= 2,
        "{:?}",
        in_ms(&one)
    );
    assert!(align(&pcm, RATE, kept(&pcm), &[]).is_empty());
}

#[test]
fn a_comma_pause_is_not_taken_over_a_longer_sentence_pause_nearby() {
    // Sentence one: 3 words, a 180 ms comma pause, 3 words; a 600 ms
    // pause; sentence two: 6 words. The weights (as a text's may) put the
    // boundary far nearer the comma (120 ms of voice away) than the
    // sentence's pause (860 ms away): the longer pause still wins.
    let mut runs = said(3);
    runs.push((false, 180));
    runs.extend(said(3));
    runs.push((false, 600));
    runs.extend(said(6));
    let pcm = audio(&runs);
    let got = in_ms(&align(&pcm, RATE, kept(&pcm), &[5, 13]));
    // 980 + 180 + 980 = 2,140; 6 words are 2,000.
    assert!(close(&got, &[0..2_140, 2_740..4_740], 2), "{got:?}");
}

#[test]
fn fewer_pauses_than_sentences_fall_back_to_places_by_weight() {
    // Three sentences of 4 words, but only the second boundary pauses; the
    // first falls between words, where its weight puts it.
    let mut runs = said(4);
    runs.push((false, 40));
    runs.extend(said(4));
    runs.push((false, 400));
    runs.extend(said(4));
    let pcm = audio(&runs);
    let got = in_ms(&align(&pcm, RATE, kept(&pcm), &[10, 10, 10]));
    let word_end = 4 * 300 + 3 * 40;
    assert!(
        close(
            &got,
            &[
                0..word_end,
                word_end + 40..2 * word_end + 40,
                2 * word_end + 440..3 * word_end + 440
            ],
            2
        ),
        "{got:?}"
    );
    // No pause at all: in order, inside the speech, not overlapping.
    let pcm = audio(&said(12));
    let speech = kept(&pcm);
    let got = align(&pcm, RATE, speech.clone(), &[1, 2, 3, 0]);
    assert_eq!(got.len(), 4);
    assert!(got.windows(2).all(|w| w[0].end <= w[1].start));
    assert!(
        got.iter()
            .all(|r| r.start <= r.end && r.start >= speech.start && r.end <= speech.end)
    );
    // Silence only: the kept range is shared by weight.
    let silent = vec![0i16; 24_000];
    assert_eq!(
        align(&silent, RATE, 0..24_000, &[1, 3]),
        vec![0..6_000, 6_000..24_000]
    );
}

/// A narration of `paragraphs` paragraphs: varied sentences (3 to 30
/// words, some with commas or a semicolon, some questions, a few titles
/// that do not end a sentence), from a seeded generator.
fn narration(paragraphs: usize) -> String {
    const WORDS: [&str; 48] = [
        "the",
        "river",
        "carried",
        "old",
        "lanterns",
        "past",
        "a",
        "quiet",
        "mill",
        "where",
        "children",
        "waited",
        "for",
        "morning",
        "light",
        "and",
        "nobody",
        "remembered",
        "how",
        "winter",
        "had",
        "ended",
        "so",
        "suddenly",
        "between",
        "two",
        "harvests",
        "of",
        "uncertain",
        "weather",
        "she",
        "wrote",
        "letters",
        "to",
        "distant",
        "cousins",
        "about",
        "bread",
        "ships",
        "bells",
        "in",
        "every",
        "harbour",
        "we",
        "walked",
        "slowly",
        "home",
        "extraordinarily",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut text = Vec::new();
    for _ in 0..paragraphs {
        let mut paragraph = Vec::new();
        for _ in 0..3 + next(6) {
            let words = 3 + next(28);
            let mut sentence = String::new();
            if next(12) == 0 {
                sentence.push_str("Dr. Ellis said that ");
            }
            for w in 0..words {
                let word = WORDS[next(WORDS.len())];
                if w == 0 && sentence.is_empty() {
                    let mut c = word.chars();
                    let first = c.next().unwrap_or('x').to_uppercase().collect::<String>();
                    sentence.push_str(&first);
                    sentence.push_str(c.as_str());
                } else {
                    sentence.push_str(word);
                }
                if w + 1 < words {
                    if w > 2 && w + 3 < words && next(7) == 0 {
                        sentence.push_str(if next(5) == 0 { ";" } else { "," });
                    }
                    sentence.push(' ');
                }
            }
            sentence.push_str([".", ".", ".", "?", "!"][next(5)]);
            paragraph.push(sentence);
        }
        text.push(paragraph.join(" "));
    }
    text.join("\n\n")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Boundary errors (ms) of a long narration, as the worker would speak it:
/// planned into parts of 3,000 characters, each sent with a style in front
/// and rendered by the simulator's realistic model, trimmed by
/// `speech_bounds`, its sentences aligned; compared with the simulator's
/// truth. Returns (sentences, errors at boundaries inside parts, errors at
/// every boundary).
fn narration_errors() -> (usize, Vec<u64>, Vec<u64>) {
    let text = narration(60);
    let style = "Narrate calmly: ";
    let (mut count, mut inside, mut all) = (0, Vec::new(), Vec::new());
    for part in plan(&text, 3_000, false) {
        let sent = format!("{style}{}", part.text.as_str());
        // The simulator's rate (15 characters a second), style included.
        let seconds = sent.chars().count() as f64 / 15.0;
        let (wav, truth) = render_sentences(&sent, seconds, false, seed_of(&sent));
        let (rate, bytes) = segmind_sim::wav::pcm_of(&wav).expect("a WAV file");
        assert_eq!(rate, RATE);
        let pcm: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let speech = speech_bounds(bytes, PcmFormat::GEMINI).kept;
        let ranges = sentences(&text, part.chars.clone());
        // The truth's characters are the sent text's: move them to the job's.
        let slice: String = text
            .chars()
            .skip(part.chars.start)
            .take(part.chars.len())
            .collect();
        let lead = slice.chars().count() - slice.trim_start().chars().count();
        let shift = |s: &SentenceTruth| {
            s.chars[0] + part.chars.start + lead - style.len()
                ..s.chars[1] + part.chars.start + lead - style.len()
        };
        let truth_ranges: Vec<Range<usize>> = truth.iter().map(shift).collect();
        assert_eq!(
            ranges, truth_ranges,
            "the worker and the simulator cut the same sentences"
        );
        let got = align(&pcm, RATE, speech, &spoken_weights(&text, &ranges));
        assert_eq!(got.len(), truth.len());
        let n = got.len();
        for (i, (g, t)) in got.iter().zip(&truth).enumerate() {
            let start = ms(g.start).abs_diff(t.start_ms);
            let end = ms(g.end).abs_diff(t.end_ms);
            if start.max(end) > 300 {
                // Visible with --nocapture: which sentences went astray.
                println!(
                    "part {:?} sentence {i}/{n}: got {:?} truth {}..{} {:?}",
                    part.chars,
                    ms(g.start)..ms(g.end),
                    t.start_ms,
                    t.end_ms,
                    t.text
                );
            }
            all.extend([start, end]);
            if i > 0 {
                inside.push(start);
            }
            if i + 1 < n {
                inside.push(end);
            }
        }
        count += n;
    }
    inside.sort_unstable();
    all.sort_unstable();
    (count, inside, all)
}

/// The aim: a median boundary error under 150 ms over a long
/// narration. Measured here (310 sentences, 594 boundaries inside parts):
/// median 1 ms, p95 2 ms, worst 3 ms — the simulator's pauses are clean
/// silence. The bounds below leave room for a harsher simulator but fail
/// when sentences are matched to the wrong pauses: with positions by weight
/// only (no pauses) the median is ≈ 870 ms and p95 ≈ 3 s; matching
/// positions instead of durations left 2 % of boundaries seconds off.
#[test]
fn sentences_of_a_long_narration_are_found_within_150_ms() {
    let (count, inside, all) = narration_errors();
    let (median, p95, p99) = (
        percentile(&inside, 0.5),
        percentile(&inside, 0.95),
        percentile(&inside, 0.99),
    );
    println!(
        "alignment over {count} sentences: boundaries inside parts ({}): median {median} ms, p95 {p95} ms, p99 {p99} ms, max {} ms; all boundaries ({}): median {} ms, p95 {} ms",
        inside.len(),
        inside[inside.len() - 1],
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.95),
    );
    assert!(count >= 300, "{count} sentences");
    assert!(median < 150, "median {median} ms");
    assert!(p95 < 100, "p95 {p95} ms");
    assert!(p99 < 300, "p99 {p99} ms");
}
