//! The realistic speech model: how long Gemini's audio for a text is.
//!
//! Speech runs at its script's rate ([`script_chars_per_second`]: ≈ 15
//! characters a second for English, ≈ 5 for Chinese), a little faster or
//! slower by voice; a style in front of the text and speaker labels are not
//! spoken (`crate::speech::said`); one call's output is capped near 512 s (≈ 16k tokens at 32 a
//! second) and anything past the cap is silently cut while the call is
//! billed as a success; a truncation fault returns 13–46 % of the audio
//! (`shared/reference/audio-facts.md`). Pure, so it is tested without HTTP.

use std::time::Duration;

/// How long the simulator's audio is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpeechModel {
    /// A tone per word, ≈ 0.4 s a word (the default; what short-job tests
    /// were written against).
    Words,
    /// Length from the character count and the voice's rate, cut at `cap`;
    /// spoken sentence by sentence with pauses of varying length, each
    /// sentence's times recorded (`crate::speech::render_speech`).
    Realistic { cap: Duration },
}

/// Gemini's output cap for one call.
pub const OUTPUT_CAP: Duration = Duration::from_secs(512);

/// Characters a second of `voice`: 15 ± 10 %, fixed per voice name.
pub fn chars_per_second(voice: &str) -> f64 {
    // FNV-1a: a stable spread over the voices, without a random source.
    let hash = voice.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    15.0 * (0.9 + 0.2 * (hash % 1_000) as f64 / 1_000.0)
}

/// The rate scripts are spoken at, in characters a second for a voice of
/// average pace (English prose ≈ 15; Mandarin ≈ 5, one syllable per Han
/// character at 5.2 syllables a second; Japanese kana ≈ 7.8 morae a second;
/// Korean ≈ 6.5 Hangul blocks: Pellegrino, Coupé & Marsico, Language 87(3),
/// 2011, via `shared/reference/audio-facts.md`; Thai, Arabic, Hebrew,
/// Devanagari, Cyrillic and Greek are estimates from their syllable rates
/// and letters per syllable). Classified by Unicode block, independently
/// of the worker's own script tables.
pub fn script_chars_per_second(c: char) -> f64 {
    match u32::from(c) {
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF => 5.0,
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => 7.8,
        0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => 6.5,
        0x0E00..=0x0E7F => 11.0,
        0x0600..=0x06FF | 0x0750..=0x077F => 12.0,
        0x0590..=0x05FF => 13.0,
        0x0900..=0x097F => 13.0,
        0x0400..=0x04FF => 14.0,
        0x0370..=0x03FF => 14.0,
        _ => 15.0,
    }
}

/// Seconds of speech `said` (what is spoken: no style, no labels) takes at
/// an average voice's pace: each letter or digit at its script's rate, a
/// run of spaces, and a run of punctuation, as one character each of the
/// script before it.
pub fn spoken_seconds(said: &str) -> f64 {
    let mut seconds = 0.0;
    let mut rate = said
        .chars()
        .find(|c| c.is_alphabetic())
        .map_or(15.0, script_chars_per_second);
    // What the last character was: 0 a letter or digit, 1 a space, 2 a
    // punctuation mark (a run of either is one character's time).
    let mut last = 0;
    for c in said.chars() {
        let kind = if c.is_alphanumeric() {
            if c.is_alphabetic() {
                rate = script_chars_per_second(c);
            }
            0
        } else if c.is_whitespace() {
            1
        } else {
            2
        };
        if kind == 0 || kind != last {
            seconds += 1.0 / rate;
        }
        last = kind;
    }
    seconds
}

/// Seconds `voice` takes to speak `said` (what is spoken: no style, no
/// speaker labels): [`spoken_seconds`] at the voice's pace.
pub fn speech_seconds(said: &str, voice: &str) -> f64 {
    spoken_seconds(said) * 15.0 / chars_per_second(voice)
}

/// Seconds of audio a call returns for `whole` seconds of speech: up to the
/// cap, then `kept` of that (1.0 unless a truncation fault cuts it).
pub fn audio_seconds(whole: f64, cap: Duration, kept: f64) -> f64 {
    whole.min(cap.as_secs_f64()) * kept.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_speak_near_15_characters_a_second_each_at_its_own_rate() {
        let rates: Vec<f64> = crate::voices::VOICES
            .iter()
            .map(|v| chars_per_second(v))
            .collect();
        assert!(rates.iter().all(|r| (13.5..=16.5).contains(r)), "{rates:?}");
        let distinct: std::collections::BTreeSet<u64> =
            rates.iter().map(|r| (r * 100.0) as u64).collect();
        assert!(distinct.len() > 20, "voices differ");
        assert_eq!(chars_per_second("Kore"), chars_per_second("Kore"));
    }

    #[test]
    fn long_texts_are_cut_at_the_cap_and_faults_keep_a_share() {
        let cps = chars_per_second("Kore");
        let one_minute = "x".repeat((60.0 * cps) as usize);
        let whole = speech_seconds(&one_minute, "Kore");
        assert!((audio_seconds(whole, OUTPUT_CAP, 1.0) - 60.0).abs() < 0.1);
        // 32,000 characters is ≈ 2,100 s of speech: cut at 512 s, silently.
        let long = speech_seconds(&"x".repeat(32_000), "Kore");
        assert_eq!(audio_seconds(long, OUTPUT_CAP, 1.0), 512.0);
        assert!((audio_seconds(whole, OUTPUT_CAP, 0.3) - 18.0).abs() < 0.1);
    }

    #[test]
    fn each_script_is_spoken_at_its_own_rate() {
        // 1,500 English characters: 100 s; 500 Chinese: 100 s; 780 kana:
        // 100 s; spaces and punctuation runs take one character's time.
        assert!((spoken_seconds(&"a".repeat(1_500)) - 100.0).abs() < 1e-6);
        assert!((spoken_seconds(&"中".repeat(500)) - 100.0).abs() < 1e-6);
        assert!((spoken_seconds(&"か".repeat(780)) - 100.0).abs() < 1e-6);
        assert_eq!(spoken_seconds("a.....b"), spoken_seconds("a.b"));
        assert!((spoken_seconds("中。中") - 3.0 / 5.0).abs() < 1e-9);
    }
}
