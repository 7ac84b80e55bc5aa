//! The quality gate of a part's audio: is it about as long as its text?
//!
//! Gemini sometimes stops early and reports success: the audio holds only
//! 13–46 % of the text ("silent truncation", billed as a success). Speech
//! runs at ≈ 15 characters a second, varying by voice and by take (± 20 %).
//! [`SpeakingRate`] learns each voice's seconds per character online from
//! delivered audio and [`SpeakingRate::judge`] calls a part truncated when
//! it is shorter than [`TRUNCATION_RATIO`] of what its text should take.
//!
//! The learned rate is the median of a voice's recent observations, seeded
//! with the prior: truncated takes sit in the low tail, so as long as fewer
//! than half the takes are cut (30–40 % in production reports), the median
//! is a normal take and the gate cannot learn to accept truncation. A voice
//! faster or slower than the prior moves the median within a few takes.
//!
//! Pure and clock-free; it imports nothing of the crate.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Characters a second of speech before anything is learned.
pub const PRIOR_CHARS_PER_SECOND: f64 = 15.0;

/// A part shorter than this share of its expected duration is truncated.
/// Between the longest truncation reported (46 % of a take up to 20 % slow:
/// 0.55 of the expectation once the voice is learned) and the shortest
/// normal take (80 %), placed so that a voice within ± 10 % of the prior is
/// judged right from its first take (cut at most 0.61 of the prior's
/// expectation, normal at least 0.73).
pub const TRUNCATION_RATIO: f64 = 0.65;

/// Observations kept per voice.
const WINDOW: usize = 63;

/// Prior observations each voice starts with (they leave the window as
/// real ones arrive).
const PRIOR_WEIGHT: usize = 5;

/// Parts this short say little about a voice's rate (a pause, a breath or
/// a leading silence dominates so short a take): they are neither learned
/// from nor judged by it (the voiced-share check still catches an empty or
/// silent take).
const MIN_CHARS_TO_LEARN: usize = 40;

/// What the gate says of a part's audio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Long enough for its text.
    Plausible,
    /// Much shorter than its text should take: submit the part again.
    Truncated {
        /// Its duration as a share of the expected one.
        ratio: f64,
    },
}

/// Seconds per character per voice, learned from delivered audio. Shared by
/// every job of a process.
#[derive(Debug, Default)]
pub struct SpeakingRate {
    voices: Mutex<HashMap<String, VecDeque<f64>>>,
}

impl SpeakingRate {
    pub fn new() -> Self {
        SpeakingRate::default()
    }

    /// The seconds per character `voice` is expected to take.
    pub fn seconds_per_char(&self, voice: &str) -> f64 {
        let voices = self.voices.lock().unwrap_or_else(|e| e.into_inner());
        voices
            .get(voice)
            .map_or(1.0 / PRIOR_CHARS_PER_SECOND, median)
    }

    /// Judges `seconds` of audio for `chars` characters spoken by `voice`,
    /// and learns from it.
    pub fn judge(&self, voice: &str, chars: usize, seconds: f64) -> Verdict {
        let verdict = self.verdict(voice, chars, seconds);
        self.observe(voice, chars, seconds);
        verdict
    }

    fn verdict(&self, voice: &str, chars: usize, seconds: f64) -> Verdict {
        if chars < MIN_CHARS_TO_LEARN {
            return Verdict::Plausible;
        }
        let expected = chars as f64 * self.seconds_per_char(voice);
        let ratio = if expected > 0.0 {
            seconds / expected
        } else {
            1.0
        };
        if ratio < TRUNCATION_RATIO {
            Verdict::Truncated { ratio }
        } else {
            Verdict::Plausible
        }
    }

    /// Adds an observation (truncated ones too: the median ignores the
    /// low tail they form).
    fn observe(&self, voice: &str, chars: usize, seconds: f64) {
        if chars < MIN_CHARS_TO_LEARN || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        let mut voices = self.voices.lock().unwrap_or_else(|e| e.into_inner());
        let window = voices.entry(voice.to_owned()).or_insert_with(|| {
            std::iter::repeat_n(1.0 / PRIOR_CHARS_PER_SECOND, PRIOR_WEIGHT).collect()
        });
        window.push_back(seconds / chars as f64);
        if window.len() > WINDOW {
            window.pop_front();
        }
    }
}

fn median(window: &VecDeque<f64>) -> f64 {
    let mut sorted: Vec<f64> = window.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_text_too_short_to_time_is_not_judged_by_its_rate() {
        let rate = SpeakingRate::new();
        // "Hi there!": 9 characters, a 0.2 s take after a long breath.
        assert_eq!(rate.judge("Kore", 9, 0.2), Verdict::Plausible);
        assert!(matches!(
            rate.judge("Kore", MIN_CHARS_TO_LEARN, 0.2),
            Verdict::Truncated { .. }
        ));
    }

    #[test]
    fn an_empty_or_cut_part_is_truncated_a_normal_one_is_not() {
        let rate = SpeakingRate::new();
        // 1,500 characters at 15 c/s: 100 s expected.
        assert_eq!(rate.judge("Kore", 1_500, 100.0), Verdict::Plausible);
        assert_eq!(rate.judge("Kore", 1_500, 82.0), Verdict::Plausible);
        assert!(matches!(
            rate.judge("Kore", 1_500, 40.0),
            Verdict::Truncated { ratio } if (ratio - 0.4).abs() < 0.05
        ));
        assert!(matches!(
            rate.judge("Kore", 1_500, 0.0),
            Verdict::Truncated { .. }
        ));
    }

    #[test]
    fn a_voice_faster_than_the_prior_is_learned_and_not_flagged() {
        let rate = SpeakingRate::new();
        // A voice at 22 c/s: 1,000 characters take 45 s (0.68 of the prior's
        // 67 s): plausible from the first take, and learned within a few.
        for _ in 0..10 {
            assert_eq!(rate.judge("Puck", 1_000, 45.5), Verdict::Plausible);
        }
        assert!((1.0 / rate.seconds_per_char("Puck") - 22.0).abs() < 0.5);
        // Now a 46 % take of that voice is caught although it is 31 % of
        // the prior's expectation… and a 60 % one too.
        assert!(matches!(
            rate.judge("Puck", 1_000, 45.5 * 0.46),
            Verdict::Truncated { .. }
        ));
        assert!(matches!(
            rate.judge("Puck", 1_000, 45.5 * 0.55),
            Verdict::Truncated { .. }
        ));
        // Other voices keep the prior.
        assert!((1.0 / rate.seconds_per_char("Kore") - 15.0).abs() < 1e-9);
    }

    /// Runs `takes` takes over `voices` (characters a second) with takes
    /// varying ± 20 % and 30 % of them cut to 13–46 % of their audio;
    /// returns (cut, caught, normal, false alarms), counting only takes
    /// after the first `warm_up` of each voice.
    fn measure(voices: &[f64], takes: usize, warm_up: usize, seed: u64) -> (u32, u32, u32, u32) {
        let mut rng = StdRng::seed_from_u64(seed);
        let rate = SpeakingRate::new();
        let mut seen = vec![0usize; voices.len()];
        let (mut cut, mut caught, mut normal, mut false_alarms) = (0, 0, 0, 0);
        for _ in 0..takes {
            let v = rng.random_range(0..voices.len());
            let voice = format!("v{v}");
            let chars = rng.random_range(200..3_000);
            let take = chars as f64 / voices[v] * rng.random_range(0.8..=1.2);
            let truncated = rng.random_bool(0.3);
            let seconds = if truncated {
                take * rng.random_range(0.13..=0.46)
            } else {
                take
            };
            let verdict = rate.judge(&voice, chars, seconds);
            seen[v] += 1;
            if seen[v] <= warm_up {
                continue;
            }
            let flagged = matches!(verdict, Verdict::Truncated { .. });
            if truncated {
                cut += 1;
                caught += u32::from(flagged);
            } else {
                normal += 1;
                false_alarms += u32::from(flagged);
            }
        }
        (cut, caught, normal, false_alarms)
    }

    /// The measurement the issue asks for. Voices anywhere between 12 and 18
    /// characters a second, once each has spoken 10 parts; and voices
    /// within ± 10 % of the prior from their very first part.
    #[test]
    fn every_truncation_is_caught_and_no_normal_take_is_flagged() {
        let spread: Vec<f64> = (0..8).map(|i| 12.0 + 6.0 * f64::from(i) / 7.0).collect();
        let (cut, caught, normal, false_alarms) = measure(&spread, 20_000, 10, 14);
        println!(
            "12-18 c/s, after 10 parts a voice: truncations caught {caught}/{cut}, false alarms {false_alarms}/{normal}"
        );
        assert_eq!(caught, cut, "every truncation is caught");
        assert_eq!(false_alarms, 0, "no normal take is flagged");

        let near: Vec<f64> = (0..8).map(|i| 13.5 + 3.0 * f64::from(i) / 7.0).collect();
        let (cut, caught, normal, false_alarms) = measure(&near, 20_000, 0, 15);
        println!(
            "13.5-16.5 c/s, from the first part: truncations caught {caught}/{cut}, false alarms {false_alarms}/{normal}"
        );
        assert_eq!(caught, cut, "every truncation is caught");
        assert_eq!(false_alarms, 0, "no normal take is flagged");
    }
}
