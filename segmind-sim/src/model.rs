//! The realistic speech model: how long Gemini's audio for a text is.
//!
//! Speech runs at ≈ 15 characters a second, a little faster or slower by
//! voice; one call's output is capped near 512 s (≈ 16k tokens at 32 a
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

/// Seconds of audio a call returns for `chars` characters in `voice`: the
/// whole text up to the cap, then `kept` of that (1.0 unless a truncation
/// fault cuts it).
pub fn audio_seconds(chars: usize, voice: &str, cap: Duration, kept: f64) -> f64 {
    let whole = chars as f64 / chars_per_second(voice);
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
        let one_minute = (60.0 * cps) as usize;
        assert!((audio_seconds(one_minute, "Kore", OUTPUT_CAP, 1.0) - 60.0).abs() < 0.1);
        // 32,000 characters is ≈ 2,100 s of speech: cut at 512 s, silently.
        assert_eq!(audio_seconds(32_000, "Kore", OUTPUT_CAP, 1.0), 512.0);
        assert!((audio_seconds(one_minute, "Kore", OUTPUT_CAP, 0.3) - 18.0).abs() < 0.1);
    }
}
