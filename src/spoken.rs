//! What of a text Gemini speaks, in which scripts, and about how long it
//! takes: the measure the plan cuts parts by and the quality gate judges
//! takes by.
//!
//! Not spoken (`shared/reference/audio-facts.md`): a leading direction —
//! the first line's text up to its first colon when it reads as an
//! instruction ("Say cheerfully: Have a wonderful day!" speaks only the
//! words after the colon) — the `Speaker N:` labels of a dialogue, and runs
//! of punctuation beyond their first character (one pause). The request's
//! `style` is sent in front of the text the same way and is never counted.
//!
//! Speaking rate differs by script far more than by voice: English prose
//! runs at ≈ 15 characters a second, Mandarin at 4–5 Han characters (one
//! syllable each), Japanese at 5–7 (kana ≈ 7.8 morae a second, a kanji
//! about two), Korean at 6–7 Hangul blocks (Pellegrino, Coupé & Marsico,
//! Language 87(3), 2011). [`Script::prior_chars_per_second`] holds the
//! priors; the gate learns each voice's own rate per script from there.
//! Characters of no script (digits, spaces, punctuation) are spoken in the
//! script around them.
//!
//! Pure; it imports nothing of the crate.

use unicode_script::{Script as Ucd, UnicodeScript};

/// The scripts speech is timed by. A closed set: keys built from it are
/// bounded whatever producers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
    /// Han ideographs (Chinese, and the kanji of Japanese).
    Han,
    /// Hiragana and katakana.
    Kana,
    Hangul,
    /// Any other script.
    Other,
}

impl Script {
    pub const ALL: [Script; 11] = [
        Script::Latin,
        Script::Cyrillic,
        Script::Greek,
        Script::Arabic,
        Script::Hebrew,
        Script::Devanagari,
        Script::Thai,
        Script::Han,
        Script::Kana,
        Script::Hangul,
        Script::Other,
    ];

    /// The script of a character, `None` for characters of no script of
    /// their own (digits, spaces, punctuation, combining marks).
    pub fn of(c: char) -> Option<Script> {
        Some(match c.script() {
            Ucd::Common | Ucd::Inherited | Ucd::Unknown => return None,
            Ucd::Latin => Script::Latin,
            Ucd::Cyrillic => Script::Cyrillic,
            Ucd::Greek => Script::Greek,
            Ucd::Arabic => Script::Arabic,
            Ucd::Hebrew => Script::Hebrew,
            Ucd::Devanagari => Script::Devanagari,
            Ucd::Thai => Script::Thai,
            Ucd::Han => Script::Han,
            Ucd::Hiragana | Ucd::Katakana => Script::Kana,
            Ucd::Hangul => Script::Hangul,
            _ => Script::Other,
        })
    }

    /// Characters a second of speech before anything is learned: the
    /// sources above, for the characters this module counts (spaces and a
    /// pause per punctuation run included).
    pub fn prior_chars_per_second(self) -> f64 {
        match self {
            Script::Latin => 15.0,
            Script::Cyrillic | Script::Greek => 14.0,
            Script::Arabic | Script::Hebrew | Script::Devanagari => 13.0,
            Script::Thai => 12.0,
            Script::Han => 4.5,
            Script::Kana => 7.5,
            Script::Hangul => 6.5,
            Script::Other => 12.0,
        }
    }

    /// Its name on the wire (the fleet stream's records).
    pub fn name(self) -> &'static str {
        match self {
            Script::Latin => "latin",
            Script::Cyrillic => "cyrillic",
            Script::Greek => "greek",
            Script::Arabic => "arabic",
            Script::Hebrew => "hebrew",
            Script::Devanagari => "devanagari",
            Script::Thai => "thai",
            Script::Han => "han",
            Script::Kana => "kana",
            Script::Hangul => "hangul",
            Script::Other => "other",
        }
    }

    /// The script [`Script::name`] names.
    pub fn from_name(name: &str) -> Option<Script> {
        Script::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Written without spaces between words (Chinese, Japanese, Thai).
    pub fn unspaced(self) -> bool {
        matches!(self, Script::Han | Script::Kana | Script::Thai)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The spoken characters of a text, per script.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spoken {
    chars: [u32; Script::ALL.len()],
    /// The text opens with a direction ("Say slowly: …").
    directed: bool,
}

impl Spoken {
    /// What of `text` is spoken: without a leading direction, without the
    /// speaker labels when `dialogue`, punctuation runs counted once.
    pub fn of(text: &str, dialogue: bool) -> Spoken {
        let mut spoken = Spoken::default();
        let said = without_direction(text);
        spoken.directed = said.len() < text.len();
        let text = said;
        // Characters of no script take the script around them: the last
        // one seen, or the text's first.
        let mut current = text.chars().find_map(Script::of).unwrap_or(Script::Latin);
        let (mut in_punctuation, mut in_space) = (false, false);
        for line in text.split_inclusive('\n') {
            let line = if dialogue { without_label(line) } else { line };
            for c in line.chars() {
                let counted = if let Some(script) = Script::of(c) {
                    current = script;
                    in_punctuation = false;
                    in_space = false;
                    true
                } else if c.is_whitespace() {
                    let first = !in_space;
                    in_space = true;
                    first
                } else if c.is_alphanumeric() {
                    // Digits and letters of no script: one each.
                    in_punctuation = false;
                    in_space = false;
                    true
                } else if c.script() == Ucd::Inherited || is_invisible(c) {
                    // Combining marks and zero-width characters add no time.
                    false
                } else {
                    let first = !in_punctuation;
                    in_punctuation = true;
                    first
                };
                if counted {
                    spoken.chars[current.index()] += 1;
                }
            }
        }
        spoken
    }

    /// Whether the text opens with a direction.
    pub fn directed(&self) -> bool {
        self.directed
    }

    /// Spoken characters in `script`.
    pub fn chars(&self, script: Script) -> u32 {
        self.chars[script.index()]
    }

    /// Spoken characters in all.
    #[cfg(test)]
    pub fn total_chars(&self) -> u32 {
        self.chars.iter().sum()
    }

    /// Seconds of speech at `chars_per_second` of each script.
    pub fn seconds_at(&self, chars_per_second: impl Fn(Script) -> f64) -> f64 {
        Script::ALL
            .iter()
            .filter(|s| self.chars(**s) > 0)
            .map(|s| f64::from(self.chars(*s)) / chars_per_second(*s))
            .sum()
    }

    /// Seconds of speech at the priors.
    pub fn prior_seconds(&self) -> f64 {
        self.seconds_at(Script::prior_chars_per_second)
    }

    /// The script that takes at least `share` of the speech's time, if one
    /// does (what a take's rate can be learned for).
    pub fn dominant(&self, share: f64) -> Option<Script> {
        let total = self.prior_seconds();
        if total <= 0.0 {
            return None;
        }
        Script::ALL
            .iter()
            .copied()
            .find(|s| f64::from(self.chars(*s)) / s.prior_chars_per_second() >= share * total)
    }
}

/// How long `text` takes to speak at the priors, in characters of Latin
/// prose (a Han character weighs 15 / 4.5 = 3⅓ of them, a Latin one exactly
/// 1), its direction, labels and punctuation all counted: what the plan
/// sizes parts by, so that a part's speech, not its characters, stays under
/// one call's cap in every script. Never less than the gate expects.
pub fn latin_equivalent(text: &str) -> f64 {
    let latin = Script::Latin.prior_chars_per_second();
    let mut current = text.chars().find_map(Script::of).unwrap_or(Script::Latin);
    let mut weight = 0.0;
    for c in text.chars() {
        if let Some(s) = Script::of(c) {
            current = s;
        }
        weight += latin / current.prior_chars_per_second();
    }
    weight
}

/// Words a leading direction may have ("Say cheerfully", "Read this in a
/// calm, warm voice").
const MAX_DIRECTION_WORDS: usize = 8;

/// `text` without a leading direction: the first line's text up to its
/// first colon, when that reads as an instruction (a few words, no sentence
/// ended inside, no digits, more text after the colon) and is not a
/// speaker label.
pub fn without_direction(text: &str) -> &str {
    let first_line = text.lines().next().unwrap_or("");
    let Some(colon) = first_line.find([':', '：']) else {
        return text;
    };
    let head = &first_line[..colon];
    let words = head.split_whitespace().count();
    let reads_as_instruction = (1..=MAX_DIRECTION_WORDS).contains(&words)
        && !head.contains(['.', '!', '?', '。', '！', '？'])
        && !head.chars().any(|c| c.is_ascii_digit())
        && label_of(first_line).is_none();
    let colon_len = first_line[colon..].chars().next().map_or(1, char::len_utf8);
    let rest = text[colon + colon_len..].trim_start();
    if reads_as_instruction && !rest.is_empty() {
        rest
    } else {
        text
    }
}

/// Speaker labels of two-speaker dialogue, as the model expects them: they
/// select the voice and are not spoken.
pub const SPEAKER_LABELS: [&str; 2] = ["Speaker 1:", "Speaker 2:"];

/// The [`SPEAKER_LABELS`] entry `line` starts with, if any.
fn label_of(line: &str) -> Option<&'static str> {
    SPEAKER_LABELS
        .iter()
        .copied()
        .find(|l| line.trim_start().starts_with(l))
}

/// `line` without a leading speaker label.
fn without_label(line: &str) -> &str {
    match label_of(line) {
        Some(label) => line.trim_start()[label.len()..].trim_start(),
        None => line,
    }
}

/// Zero-width and format characters: nothing to say.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_direction_is_not_spoken_a_heading_sentence_or_time_is() {
        assert_eq!(
            without_direction("Say cheerfully: Have a wonderful day!"),
            "Have a wonderful day!"
        );
        assert_eq!(
            without_direction("Read this in a calm, warm voice: Once upon a time."),
            "Once upon a time."
        );
        assert_eq!(without_direction("用温柔的语气说：晚安。"), "晚安。");
        for spoken in [
            "The meeting moved. New time: 10:30.",
            "At 10:30: coffee.",
            "Speaker 1: Hello there.",
            "Note:",
            "No colon here, only words.",
            "This line is far too long to be a direction because it has many words: yes.",
        ] {
            assert_eq!(without_direction(spoken), spoken, "{spoken}");
        }
    }

    #[test]
    fn labels_punctuation_runs_and_invisible_characters_are_not_spoken() {
        let plain = Spoken::of("Did you hear? Nope. Tell me!", true);
        let dialogue = Spoken::of("Speaker 1: Did you hear?\nSpeaker 2: Nope. Tell me!", true);
        // A line break is a pause like the space it replaces.
        assert_eq!(dialogue, plain);
        // Outside a dialogue a label is text like any other.
        assert!(Spoken::of("Speaker 1: Hi", false).total_chars() > 3);
        assert_eq!(
            Spoken::of("Wait...... what?!?!", false).total_chars(),
            Spoken::of("Wait. what?", false).total_chars()
        );
        assert_eq!(
            Spoken::of("\u{200B}\u{200B}\u{FEFF}", false).total_chars(),
            0
        );
        assert_eq!(Spoken::of("e\u{301}", false).total_chars(), 1);
    }

    #[test]
    fn each_script_is_timed_at_its_own_rate() {
        // 1,500 Latin characters: 100 s; 450 Han: 100 s; mixed: the sum.
        let latin = Spoken::of(&"a".repeat(1_500), false);
        assert!((latin.prior_seconds() - 100.0).abs() < 1e-9);
        let chinese = Spoken::of(&"中".repeat(450), false);
        assert!((chinese.prior_seconds() - 100.0).abs() < 1e-9);
        let mixed = Spoken::of(&format!("{}{}", "a".repeat(1_500), "中".repeat(450)), false);
        assert!((mixed.prior_seconds() - 200.0).abs() < 1e-9);
        assert_eq!(mixed.dominant(0.9), None);
        assert_eq!(mixed.dominant(0.5), Some(Script::Latin));
        // Punctuation and digits are spoken in the script around them.
        let s = Spoken::of("今天是2026年12月7日。", false);
        assert_eq!(s.chars(Script::Han), s.total_chars());
        assert_eq!(Script::of('ก'), Some(Script::Thai));
        assert_eq!(Script::of('カ'), Some(Script::Kana));
        assert_eq!(Script::of('한'), Some(Script::Hangul));
        assert_eq!(Script::of('ж'), Some(Script::Cyrillic));
        assert_eq!(Script::of('7'), None);
    }

    #[test]
    fn the_plans_measure_counts_everything_at_its_scripts_rate() {
        assert_eq!(latin_equivalent(&"a".repeat(3_000)), 3_000.0);
        assert!((latin_equivalent(&"中".repeat(900)) - 3_000.0).abs() < 1e-6);
        // Never less than what is spoken.
        let text = "Say softly: ... hello, world!!!";
        assert!(latin_equivalent(text) / 15.0 >= Spoken::of(text, false).prior_seconds());
    }
}
