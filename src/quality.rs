//! The quality gate of a part's audio: is it about as long as what its text
//! speaks?
//!
//! Gemini sometimes stops early and reports success: the audio holds only
//! 13–46 % of the text ("silent truncation", billed as a success). How long
//! a text takes is its spoken characters ([`Spoken`]: no direction, no
//! speaker labels, a pause per punctuation run) at its scripts' rates,
//! varying by voice and by take (± 20 %). [`SpeakingRate`] learns each
//! voice's characters a second per script online from delivered audio and
//! [`SpeakingRate::judge`] calls a part truncated when it is shorter than
//! [`TRUNCATION_RATIO`] of what its text should take. A text expected to
//! take under [`MIN_SECONDS_TO_JUDGE`] is not judged: a breath or a leading
//! silence dominates so short a take (the voiced-share check still catches
//! an empty or silent one).
//!
//! Gemini also cuts silently at its output cap (≈ 512 s of audio for one
//! call): a take of [`AT_CAP_SECONDS`] or more is judged
//! [`Verdict::AtCap`] whatever its text, however slow the voice may be:
//! no expectation can tell a complete take of that length from a cut one,
//! so the part is split and its pieces synthesized again (the engine's
//! rule, `worker::pipeline::parts`). Plans keep parts near 200 s of
//! estimated speech, so a take reaches the cap only when the voice speaks
//! much slower than expected.
//!
//! A learned rate is the median of the voice's recent observations in that
//! script, seeded with the script's prior and clamped to a plausible band
//! around it: truncated takes sit in the low tail, so as long as fewer than
//! half the takes are cut (30–40 % in production reports), the median is a
//! normal take and the gate cannot learn to accept truncation; one
//! producer's odd text (a list of numbers) moves it by one observation at
//! most. Keys are a voice (or a pair) and a script, both from closed sets:
//! the map is bounded whatever producers send; styles create no keys.
//!
//! A replica shares what it learned ([`SpeakingRate::snapshot`]: the
//! observations of every key it has made [`SHARE_AFTER`] of its own) and a
//! new one starts from another's ([`SpeakingRate::seed`]), so its first
//! parts are judged like a warm replica's (the fleet stream,
//! `worker::fleet`).
//!
//! Pure and clock-free.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::spoken::{Script, Spoken};

/// A part shorter than this share of its expected duration is truncated.
/// Between the longest truncation reported (46 % of a take up to 20 % slow:
/// 0.55 of the expectation once the voice is learned) and the shortest
/// normal take (80 %), placed so that a voice within ± 10 % of the prior is
/// judged right from its first take (cut at most 0.61 of the prior's
/// expectation, normal at least 0.73).
pub const TRUNCATION_RATIO: f64 = 0.65;

/// A take this long is at Gemini's output cap (≈ 512 s; `audio-facts.md`)
/// or next to it: treated as cut. 12 s under the cap, so a take that ends
/// in its trailing silence (the gate measures speech, not the file) is
/// caught as well.
pub const AT_CAP_SECONDS: f64 = 500.0;

/// Texts expected to take less than this are neither judged nor learned
/// from (≈ 45 characters of English, 14 of Chinese).
pub const MIN_SECONDS_TO_JUDGE: f64 = 3.0;

/// A take is learned from for a script only when that script takes at
/// least this share of its expected time.
const DOMINANT_SHARE: f64 = 0.9;

/// A learned rate stays within this factor of its script's prior either
/// way (the slowest and fastest voices Gemini has are well inside it).
const PLAUSIBLE_BAND: f64 = 1.6;

/// Observations kept per voice and script.
const WINDOW: usize = 63;

/// Prior observations each key starts with (they leave the window as real
/// ones arrive).
const PRIOR_WEIGHT: usize = 5;

/// Observations of its own a key needs before it is shared, and under
/// which a shared one replaces the prior: more than [`PRIOR_WEIGHT`], so
/// its median is a real take.
pub const SHARE_AFTER: u32 = 8;

/// Who speaks: a voice, or the two voices of a dialogue.
pub type Voices = (&'static str, Option<&'static str>);

/// What was learned of one voice (or pair) in one script: its recent
/// observations, characters a second, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedRate {
    pub voices: Voices,
    pub script: Script,
    pub observations: Vec<f64>,
}

/// What the gate says of a part's audio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Long enough for its text, or too short a text to judge.
    Plausible,
    /// Much shorter than its text should take: submit the part again.
    Truncated {
        /// Its duration as a share of the expected one.
        ratio: f64,
        /// The expected duration, in seconds.
        expected: f64,
    },
    /// At Gemini's output cap ([`AT_CAP_SECONDS`]): cut, whatever its text
    /// should take; never learned from.
    AtCap,
}

/// Characters a second per voice and script, learned from delivered audio.
/// Shared by every job of a process.
#[derive(Debug, Default)]
pub struct SpeakingRate {
    rates: Mutex<HashMap<(Voices, Script), Window>>,
}

/// One key's observations.
#[derive(Debug)]
struct Window {
    /// The latest [`WINDOW`] observations, oldest first.
    rates: VecDeque<f64>,
    /// How many of the oldest are the prior's placeholders.
    placeholders: usize,
    /// Observations this process made itself (not seeded).
    own: u32,
}

impl Window {
    fn prior(script: Script) -> Self {
        Window {
            rates: std::iter::repeat_n(script.prior_chars_per_second(), PRIOR_WEIGHT).collect(),
            placeholders: PRIOR_WEIGHT,
            own: 0,
        }
    }

    fn push(&mut self, rate: f64) {
        self.rates.push_back(rate);
        if self.rates.len() > WINDOW {
            self.rates.pop_front();
            self.placeholders = self.placeholders.saturating_sub(1);
        }
    }

    /// The real observations, oldest first.
    fn observed(&self) -> impl Iterator<Item = f64> + '_ {
        self.rates.iter().skip(self.placeholders).copied()
    }
}

impl SpeakingRate {
    pub fn new() -> Self {
        SpeakingRate::default()
    }

    /// The characters a second `voices` are expected to speak `script` at.
    pub fn chars_per_second(&self, voices: Voices, script: Script) -> f64 {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        rates
            .get(&(voices, script))
            .map_or(script.prior_chars_per_second(), |w| {
                clamp(script, median(&w.rates))
            })
    }

    /// The seconds `spoken` is expected to take in `voices`.
    pub fn expected_seconds(&self, voices: Voices, spoken: &Spoken) -> f64 {
        spoken.seconds_at(|script| self.chars_per_second(voices, script))
    }

    /// Judges `seconds` of audio for `spoken` in `voices`, and learns
    /// from it when `learn`.
    pub fn judge(&self, voices: Voices, spoken: &Spoken, seconds: f64, learn: bool) -> Verdict {
        if seconds >= AT_CAP_SECONDS {
            return Verdict::AtCap;
        }
        let expected = self.expected_seconds(voices, spoken);
        if expected < MIN_SECONDS_TO_JUDGE {
            return Verdict::Plausible;
        }
        if learn {
            self.observe(voices, spoken, seconds);
        }
        let ratio = seconds / expected;
        if ratio < TRUNCATION_RATIO {
            Verdict::Truncated { ratio, expected }
        } else {
            Verdict::Plausible
        }
    }

    /// Adds an observation to the dominant script's window (truncated ones
    /// too: the median ignores the low tail they form).
    fn observe(&self, voices: Voices, spoken: &Spoken, seconds: f64) {
        let Some(script) = spoken.dominant(DOMINANT_SHARE) else {
            return;
        };
        if !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        // The script's share of the take, by the priors.
        let share = f64::from(spoken.chars(script))
            / script.prior_chars_per_second()
            / spoken.prior_seconds();
        let rate = f64::from(spoken.chars(script)) / (seconds * share);
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let window = rates
            .entry((voices, script))
            .or_insert_with(|| Window::prior(script));
        window.push(rate);
        window.own = window.own.saturating_add(1);
    }

    /// What this process learned itself: every key it has made at least
    /// [`SHARE_AFTER`] observations of, with its observations (a seeded
    /// key's include what it was seeded with).
    pub fn snapshot(&self) -> Vec<LearnedRate> {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let mut learned: Vec<LearnedRate> = rates
            .iter()
            .filter(|(_, w)| w.own >= SHARE_AFTER)
            .map(|(&(voices, script), w)| LearnedRate {
                voices,
                script,
                observations: w.observed().collect(),
            })
            .collect();
        learned.sort_by(|a, b| (a.voices, a.script).cmp(&(b.voices, b.script)));
        learned
    }

    /// Starts each key this process has observed fewer than
    /// [`SHARE_AFTER`] times from `learned` (another replica's snapshot),
    /// its own observations kept on top. Observations that are not a
    /// rate are dropped; a key with fewer than [`SHARE_AFTER`] left is not
    /// seeded. Returns the keys seeded.
    pub fn seed(&self, learned: &[LearnedRate]) -> usize {
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let mut seeded = 0;
        for l in learned {
            let usable: Vec<f64> = l
                .observations
                .iter()
                .copied()
                .filter(|r| r.is_finite() && *r > 0.0)
                .collect();
            if usable.len() < SHARE_AFTER as usize {
                continue;
            }
            let window = rates
                .entry((l.voices, l.script))
                .or_insert_with(|| Window::prior(l.script));
            if window.own >= SHARE_AFTER {
                continue;
            }
            let own: Vec<f64> = window
                .rates
                .iter()
                .rev()
                .take(window.own as usize)
                .rev()
                .copied()
                .collect();
            let keep = WINDOW - own.len();
            window.rates = usable[usable.len().saturating_sub(keep)..]
                .iter()
                .chain(&own)
                .copied()
                .collect();
            window.placeholders = 0;
            seeded += 1;
        }
        seeded
    }
}

fn clamp(script: Script, rate: f64) -> f64 {
    let prior = script.prior_chars_per_second();
    rate.clamp(prior / PLAUSIBLE_BAND, prior * PLAUSIBLE_BAND)
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

    const KORE: Voices = ("Kore", None);
    const PUCK: Voices = ("Puck", None);

    /// `n` spoken characters of `script`.
    fn text(script: Script, n: usize) -> Spoken {
        let c = match script {
            Script::Latin => "a",
            Script::Han => "中",
            Script::Kana => "か",
            Script::Thai => "ก",
            _ => unreachable!("not used here"),
        };
        Spoken::of(&c.repeat(n), false)
    }

    #[test]
    fn a_text_too_short_to_time_is_not_judged_by_its_rate() {
        let rate = SpeakingRate::new();
        // "Hi there!": a 0.2 s take after a long breath.
        let hi = Spoken::of("Hi there!", false);
        assert_eq!(rate.judge(KORE, &hi, 0.2, true), Verdict::Plausible);
        // "Say cheerfully: your order has shipped!" speaks 24 characters.
        let cheerful = Spoken::of("Say cheerfully: your order has shipped!", false);
        assert_eq!(rate.judge(KORE, &cheerful, 1.1, true), Verdict::Plausible);
        // 3 s of speech is judged: 45 Latin characters, or 14 Han ones.
        assert!(matches!(
            rate.judge(KORE, &text(Script::Latin, 45), 0.2, true),
            Verdict::Truncated { .. }
        ));
        assert!(matches!(
            rate.judge(KORE, &text(Script::Han, 14), 0.2, true),
            Verdict::Truncated { .. }
        ));
    }

    #[test]
    fn an_empty_or_cut_part_is_truncated_a_normal_one_is_not() {
        let rate = SpeakingRate::new();
        // 1,500 characters at 15 c/s: 100 s expected.
        let part = text(Script::Latin, 1_500);
        assert_eq!(rate.judge(KORE, &part, 100.0, true), Verdict::Plausible);
        assert_eq!(rate.judge(KORE, &part, 82.0, true), Verdict::Plausible);
        assert!(matches!(
            rate.judge(KORE, &part, 40.0, true),
            Verdict::Truncated { ratio, expected }
                if (ratio - 0.4).abs() < 0.05 && (expected - 100.0).abs() < 5.0
        ));
        assert!(matches!(
            rate.judge(KORE, &part, 0.0, true),
            Verdict::Truncated { .. }
        ));
    }

    #[test]
    fn a_voice_faster_than_the_prior_is_learned_and_not_flagged() {
        let rate = SpeakingRate::new();
        // A voice at 22 c/s: 1,000 characters take 45 s (0.68 of the prior's
        // 67 s): plausible from the first take, and learned within a few.
        let part = text(Script::Latin, 1_000);
        for _ in 0..10 {
            assert_eq!(rate.judge(PUCK, &part, 45.5, true), Verdict::Plausible);
        }
        assert!((rate.chars_per_second(PUCK, Script::Latin) - 22.0).abs() < 0.5);
        // Now a 46 % take of that voice is caught although it is 31 % of
        // the prior's expectation… and a 60 % one too.
        assert!(matches!(
            rate.judge(PUCK, &part, 45.5 * 0.46, true),
            Verdict::Truncated { .. }
        ));
        assert!(matches!(
            rate.judge(PUCK, &part, 45.5 * 0.55, true),
            Verdict::Truncated { .. }
        ));
        // Other voices, and this voice's other scripts, keep their priors.
        assert_eq!(rate.chars_per_second(KORE, Script::Latin), 15.0);
        assert_eq!(rate.chars_per_second(PUCK, Script::Han), 4.5);
    }

    #[test]
    fn a_seeded_replica_judges_a_fast_voice_like_the_warm_one() {
        // A voice at 27 c/s: 1,000 characters take 37 s, 0.56 of what the
        // prior expects (67 s). A cold replica calls every such take cut.
        let part = text(Script::Latin, 1_000);
        let cold = SpeakingRate::new();
        assert!(matches!(
            cold.judge(PUCK, &part, 37.0, false),
            Verdict::Truncated { .. }
        ));
        let warm = SpeakingRate::new();
        for _ in 0..12 {
            warm.judge(PUCK, &part, 37.0, true);
        }
        assert_eq!(warm.judge(PUCK, &part, 37.0, false), Verdict::Plausible);
        // It shares its 12 observations, not the prior's placeholders.
        let shared = warm.snapshot();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].voices, PUCK);
        assert_eq!(shared[0].script, Script::Latin);
        assert_eq!(shared[0].observations.len(), 12);

        // A new replica seeded with it judges like the warm one: the take
        // passes, a cut one is still caught.
        let new = SpeakingRate::new();
        assert_eq!(new.seed(&shared), 1);
        assert_eq!(new.judge(PUCK, &part, 37.0, false), Verdict::Plausible);
        assert!(matches!(
            new.judge(PUCK, &part, 37.0 * 0.46, false),
            Verdict::Truncated { .. }
        ));
        // What it was seeded with is not its own to share.
        assert!(new.snapshot().is_empty());

        // A replica that learned the voice itself keeps what it learned.
        let own = SpeakingRate::new();
        for _ in 0..SHARE_AFTER {
            own.judge(PUCK, &part, 66.0, true);
        }
        assert_eq!(own.seed(&shared), 0);
        assert!((own.chars_per_second(PUCK, Script::Latin) - 15.2).abs() < 0.1);
        // One that learned a little keeps its takes on top of the seed.
        let little = SpeakingRate::new();
        little.judge(PUCK, &part, 30.0, true);
        assert_eq!(little.seed(&shared), 1);
        let window = &little.rates.lock().unwrap()[&(PUCK, Script::Latin)];
        assert_eq!(window.rates.len(), 13);
        assert!((window.rates[12] - 1_000.0 / 30.0).abs() < 1e-9);
    }

    #[test]
    fn a_snapshot_that_is_not_a_rate_seeds_nothing() {
        let junk = |observations: Vec<f64>| LearnedRate {
            voices: KORE,
            script: Script::Latin,
            observations,
        };
        let rate = SpeakingRate::new();
        let few = junk(vec![30.0; SHARE_AFTER as usize - 1]);
        let mut bad = vec![f64::NAN, f64::INFINITY, -3.0, 0.0];
        bad.extend([30.0; 5]);
        assert_eq!(rate.seed(&[few, junk(bad)]), 0);
        assert_eq!(rate.chars_per_second(KORE, Script::Latin), 15.0);
        // However far off, a seeded rate stays within the band.
        assert_eq!(rate.seed(&[junk(vec![1e9; 40])]), 1);
        assert_eq!(
            rate.chars_per_second(KORE, Script::Latin),
            15.0 * PLAUSIBLE_BAND
        );
    }

    #[test]
    fn a_take_at_the_output_cap_is_cut_whatever_its_text() {
        let rate = SpeakingRate::new();
        // 3,000 Han characters take ≈ 600 s: a take of 512 s would pass as
        // 85 % of it, but it is Gemini's cap, so it is cut.
        let chinese = text(Script::Han, 3_000);
        assert_eq!(rate.judge(KORE, &chinese, 512.0, true), Verdict::AtCap);
        // 7,000 Latin characters take ≈ 467 s; a slow voice's 505 s is at
        // the cap all the same, and is not learned from.
        let latin = text(Script::Latin, 7_000);
        assert_eq!(rate.judge(KORE, &latin, 505.0, true), Verdict::AtCap);
        assert_eq!(rate.chars_per_second(KORE, Script::Latin), 15.0);
        // Just under the cap, a take is judged by its text as before.
        assert_eq!(rate.judge(KORE, &latin, 490.0, false), Verdict::Plausible);
    }

    #[test]
    fn chinese_is_judged_at_its_own_rate_and_does_not_drag_latin_down() {
        let rate = SpeakingRate::new();
        // 2,000 Han characters at 5 c/s: 400 s. A take of 380 s passes;
        // one cut to 200 s does not, although it is what 3,000 Latin
        // characters take.
        let chinese = text(Script::Han, 2_000);
        assert_eq!(rate.judge(KORE, &chinese, 380.0, true), Verdict::Plausible);
        assert!(matches!(
            rate.judge(KORE, &chinese, 200.0, true),
            Verdict::Truncated { .. }
        ));
        // Many Chinese takes later, Latin is still judged at the Latin prior.
        for _ in 0..50 {
            rate.judge(KORE, &text(Script::Han, 1_000), 200.0, true);
        }
        assert!((rate.chars_per_second(KORE, Script::Han) - 5.0).abs() < 0.1);
        assert_eq!(rate.chars_per_second(KORE, Script::Latin), 15.0);
        let latin = text(Script::Latin, 1_500);
        assert_eq!(rate.judge(KORE, &latin, 95.0, true), Verdict::Plausible);
    }

    #[test]
    fn odd_takes_move_a_rate_within_its_band_and_directed_ones_not_at_all() {
        let rate = SpeakingRate::new();
        // A producer's list of numbers spoken at 40 c/s, over and over: the
        // median follows, but no further than the band.
        for _ in 0..100 {
            rate.judge(KORE, &text(Script::Latin, 1_000), 25.0, true);
        }
        let learned = rate.chars_per_second(KORE, Script::Latin);
        assert!((learned - 15.0 * PLAUSIBLE_BAND).abs() < 1e-9, "{learned}");
        // Takes judged without learning ("speak slowly") change nothing.
        for _ in 0..100 {
            rate.judge(PUCK, &text(Script::Latin, 1_000), 200.0, false);
        }
        assert_eq!(rate.chars_per_second(PUCK, Script::Latin), 15.0);
    }

    #[test]
    fn keys_are_bounded_whatever_the_texts() {
        let rate = SpeakingRate::new();
        let mut rng = StdRng::seed_from_u64(3);
        let voices: [Voices; 3] = [KORE, PUCK, ("Kore", Some("Puck"))];
        for _ in 0..2_000 {
            let len = rng.random_range(50..500);
            let said: String = (0..len)
                .map(|_| char::from_u32(rng.random_range(0x20..0x3_0000)).unwrap_or('x'))
                .collect();
            let spoken = Spoken::of(&said, false);
            let v = voices[rng.random_range(0..3)];
            rate.judge(v, &spoken, rng.random_range(1.0..100.0), true);
        }
        let keys = rate.rates.lock().unwrap().len();
        assert!(keys <= 3 * Script::ALL.len(), "{keys} keys");
    }

    /// Runs `takes` takes over `voices` (characters a second) with takes
    /// varying ± 20 % and 30 % of them cut to 13–46 % of their audio;
    /// returns (cut, caught, normal, false alarms), counting only takes
    /// after the first `warm_up` of each voice.
    fn measure(voices: &[f64], takes: usize, warm_up: usize, seed: u64) -> (u32, u32, u32, u32) {
        const NAMES: [&str; 8] = ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7"];
        let mut rng = StdRng::seed_from_u64(seed);
        let rate = SpeakingRate::new();
        let mut seen = vec![0usize; voices.len()];
        let (mut cut, mut caught, mut normal, mut false_alarms) = (0, 0, 0, 0);
        for _ in 0..takes {
            let v = rng.random_range(0..voices.len());
            let chars = rng.random_range(200..3_000);
            let take = chars as f64 / voices[v] * rng.random_range(0.8..=1.2);
            let truncated = rng.random_bool(0.3);
            let seconds = if truncated {
                take * rng.random_range(0.13..=0.46)
            } else {
                take
            };
            let verdict = rate.judge((NAMES[v], None), &text(Script::Latin, chars), seconds, true);
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
