//! The 30 Gemini TTS voices the model accepts, in Google's exact spelling.
//!
//! Kept separately from the worker's own list on purpose: the simulator is the
//! API's stand-in, so a typo on either side makes the worker's contract test
//! (every voice the worker accepts is accepted here) fail instead of both
//! sides agreeing on the same mistake.

pub const VOICES: [&str; 30] = [
    "Zephyr",
    "Puck",
    "Charon",
    "Kore",
    "Fenrir",
    "Leda",
    "Orus",
    "Aoede",
    "Callirrhoe",
    "Autonoe",
    "Enceladus",
    "Iapetus",
    "Umbriel",
    "Algieba",
    "Despina",
    "Erinome",
    "Algenib",
    "Rasalgethi",
    "Laomedeia",
    "Achernar",
    "Alnilam",
    "Schedar",
    "Gacrux",
    "Pulcherrima",
    "Achird",
    "Zubenelgenubi",
    "Vindemiatrix",
    "Sadachbia",
    "Sadaltager",
    "Sulafat",
];

/// Whether the API accepts `name` as a voice: exact spelling only.
pub fn is_voice(name: &str) -> bool {
    VOICES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_distinct_voices_and_exact_spelling_only() {
        let distinct: std::collections::BTreeSet<_> = VOICES.iter().collect();
        assert_eq!(distinct.len(), 30);
        assert!(is_voice("Kore"));
        assert!(!is_voice("kore"), "the API wants the exact spelling");
        assert!(!is_voice("Sulafar"));
    }
}
