//! Audio the simulator serves: real 24 kHz 16-bit mono WAV. With `espeak-ng`
//! installed it is real speech (a different voice per speaker); otherwise a
//! tone per word, of a plausible duration for the text.

use std::f64::consts::PI;
use std::process::Command;

use crate::wav;

pub const SAMPLE_RATE: u32 = 24_000;

/// Whether `espeak-ng` can be run.
pub fn espeak_available() -> bool {
    Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One line of a transcript and who says it (0 or 1).
fn turns(text: &str, two_speakers: bool) -> Vec<(usize, String)> {
    let mut speaker = 0;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut said = line;
        if two_speakers && let Some((label, rest)) = line.split_once(':') {
            let label = label.trim().to_ascii_lowercase();
            if label.starts_with("speaker") {
                speaker = usize::from(label.ends_with('2'));
                said = rest.trim();
            }
        }
        if !said.is_empty() {
            out.push((speaker, said.to_owned()));
        }
    }
    out
}

/// Renders `text` as a WAV file.
pub fn render(text: &str, two_speakers: bool, use_espeak: bool) -> Vec<u8> {
    let mut pcm: Vec<i16> = Vec::new();
    for (speaker, line) in turns(text, two_speakers) {
        let spoken = if use_espeak {
            espeak(&line, speaker)
        } else {
            None
        };
        pcm.extend(spoken.unwrap_or_else(|| tones(&line, speaker)));
        pcm.extend(std::iter::repeat_n(0, SAMPLE_RATE as usize / 4));
    }
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    wav::from_pcm(&bytes, SAMPLE_RATE)
}

/// `seconds` of tone speech (a burst per ≈ 0.4 s "word", alternating
/// pitch for two speakers) as a WAV file: the realistic model's audio,
/// whose length comes from the text, not from the tones.
pub fn render_seconds(seconds: f64, two_speakers: bool) -> Vec<u8> {
    let total = (seconds.max(0.0) * f64::from(SAMPLE_RATE)) as usize;
    let word = (f64::from(SAMPLE_RATE) * 0.3) as usize;
    let gap = (f64::from(SAMPLE_RATE) * 0.1) as usize;
    let mut bytes = Vec::with_capacity(total * 2);
    let mut i = 0;
    while i < total {
        let n = i / (word + gap);
        let at = i % (word + gap);
        let speaker = usize::from(two_speakers && (n / 12) % 2 == 1);
        let pitch = if speaker == 0 { 180.0 } else { 280.0 } + (n % 7) as f64 * 15.0;
        let sample = if at < word {
            let t = at as f64 / f64::from(SAMPLE_RATE);
            let envelope = (PI * at as f64 / word as f64).sin();
            ((2.0 * PI * pitch * t).sin() * envelope * 8000.0) as i16
        } else {
            0
        };
        bytes.extend_from_slice(&sample.to_le_bytes());
        i += 1;
    }
    wav::from_pcm(&bytes, SAMPLE_RATE)
}

/// A WAV header with no samples: Gemini's "success with empty audio".
pub fn empty_wav() -> Vec<u8> {
    wav::from_pcm(&[], SAMPLE_RATE)
}

fn espeak(line: &str, speaker: usize) -> Option<Vec<i16>> {
    let voice = if speaker == 0 { "en-us+m3" } else { "en-us+f3" };
    let out = Command::new("espeak-ng")
        .args(["--stdout", "-s", "160", "-v", voice, "--"])
        .arg(line)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let (rate, data) = wav::pcm_of(&out.stdout)?;
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(resample(&samples, rate, SAMPLE_RATE))
}

/// Linear-interpolation resampling; good enough for speech.
fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() || from == 0 {
        return samples.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let n = (samples.len() as f64 / ratio) as usize;
    (0..n)
        .map(|i| {
            let x = i as f64 * ratio;
            let j = x as usize;
            let frac = x - j as f64;
            let a = f64::from(samples[j.min(samples.len() - 1)]);
            let b = f64::from(samples[(j + 1).min(samples.len() - 1)]);
            (a + (b - a) * frac) as i16
        })
        .collect()
}

/// A tone burst per word, ~150 words a minute.
fn tones(line: &str, speaker: usize) -> Vec<i16> {
    let base = if speaker == 0 { 180.0 } else { 280.0 };
    let word_len = (SAMPLE_RATE as f64 * 0.3) as usize;
    let gap = (SAMPLE_RATE as f64 * 0.1) as usize;
    let mut out = Vec::new();
    for word in line.split_whitespace() {
        let pitch = base + (word.len() % 7) as f64 * 15.0;
        for i in 0..word_len {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let envelope = (PI * i as f64 / word_len as f64).sin();
            out.push(((2.0 * PI * pitch * t).sin() * envelope * 8000.0) as i16);
        }
        out.extend(std::iter::repeat_n(0, gap));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_audio_is_24khz_wav_of_plausible_length() {
        let wav = render(
            "one two three four five six seven eight nine ten",
            false,
            false,
        );
        let (rate, pcm) = wav::pcm_of(&wav).expect("a WAV file");
        assert_eq!(rate, 24_000);
        let d = pcm.len() as f64 / 48_000.0;
        assert!((3.0..6.0).contains(&d), "{d}");
    }

    #[test]
    fn dialogue_lines_alternate_speakers() {
        let t = turns("Speaker 1: Hi there\nSpeaker 2: Hello\nand more", true);
        assert_eq!(
            t,
            vec![
                (0, "Hi there".to_string()),
                (1, "Hello".to_string()),
                (1, "and more".to_string())
            ]
        );
    }

    #[test]
    fn realistic_audio_has_exactly_the_asked_length() {
        let wav = render_seconds(12.5, true);
        let (rate, pcm) = wav::pcm_of(&wav).expect("a WAV file");
        assert_eq!(rate, 24_000);
        assert_eq!(pcm.len(), 12 * 48_000 + 24_000);
    }

    #[test]
    fn the_empty_fault_has_no_samples() {
        assert_eq!(wav::pcm_of(&empty_wav()), Some((SAMPLE_RATE, &[][..])));
    }
}
